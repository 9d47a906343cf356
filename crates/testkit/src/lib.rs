//! flowstate-testkit: how a test that cannot run on this machine says so.
//!
//! Kernel and live tests need root, bpffs, network namespaces or tools.
//! Where those are missing a test cannot prove anything, so it must not
//! count as a pass without a trace:
//!
//! - under CI (`CI` set to anything but `false`/`0`/empty) a skip is a
//!   failure: the test panics with the reason, because CI machines can run
//!   every test and a skip there means the suite tested less than it says;
//! - elsewhere the test prints `SKIP <test>: <reason>` and, when
//!   `FLOWSTATE_SKIP_LOG` names a file, appends the same line to it, so
//!   the README's test command (`.ci/test`) can count the skips and say
//!   why in its summary (cargo hides a passing test's output).

use std::fmt::Display;
use std::io::Write;

/// The environment variable naming the file that collects skip lines.
pub const SKIP_LOG: &str = "FLOWSTATE_SKIP_LOG";

/// Whether this run is under CI, where every test must run.
pub fn under_ci() -> bool {
    match std::env::var("CI") {
        Ok(value) => !matches!(value.trim(), "" | "0" | "false" | "False" | "FALSE"),
        Err(_) => false,
    }
}

/// Records that `test` cannot run here because of `reason` and returns
/// `true`, so a test reads `if skip(name, why) { return; }`. Under CI it
/// panics instead.
pub fn skip(test: &str, reason: impl Display) -> bool {
    let line = format!("SKIP {test}: {reason}");
    if under_ci() {
        panic!("{line} (CI=true: a test that cannot run fails the run)");
    }
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG) {
        // One write of a whole line with O_APPEND: lines from test
        // threads and processes running at once never interleave.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            eprintln!(
                "flowstate-testkit: cannot append to {}: {e}",
                path.to_string_lossy()
            );
        }
    }
    true
}

/// `Some(reason)` when this process lacks root (the kernel tests need
/// CAP_BPF and CAP_NET_ADMIN, which root has here).
pub fn not_root() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    (euid != 0).then(|| "needs root (CAP_BPF, CAP_NET_ADMIN)".to_string())
}

/// [`skip`] when `reason` is `Some`.
pub fn skip_if(test: &str, reason: Option<impl Display>) -> bool {
    match reason {
        Some(reason) => skip(test, reason),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // These tests change process-wide environment variables: one test
    // does it all, so no other test in this binary sees them half-set.
    #[test]
    fn ci_detection_logging_and_panics() {
        let log =
            std::env::temp_dir().join(format!("flowstate-testkit-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let ci_before = std::env::var_os("CI");

        // SAFETY: this binary's only test; nothing else reads the
        // environment concurrently.
        unsafe {
            std::env::set_var("CI", "false");
            std::env::set_var(SKIP_LOG, &log);
        }
        assert!(!under_ci());
        assert!(skip("first", "no bpffs"));
        assert!(skip_if("second", Some("needs 2 CPUs")));
        assert!(!skip_if("third", None::<String>));
        let logged = std::fs::read_to_string(&log).unwrap();
        assert_eq!(logged, "SKIP first: no bpffs\nSKIP second: needs 2 CPUs\n");

        unsafe { std::env::set_var("CI", "true") };
        assert!(under_ci());
        let caught = std::panic::catch_unwind(|| skip("fourth", "no root"));
        let message = caught.unwrap_err();
        let message = message
            .downcast_ref::<String>()
            .expect("panic message is a String");
        assert!(message.contains("SKIP fourth: no root"), "{message}");
        assert!(message.contains("CI=true"), "{message}");
        // A skip that panics is not logged as a skip.
        assert_eq!(std::fs::read_to_string(&log).unwrap(), logged);

        unsafe {
            match ci_before {
                Some(value) => std::env::set_var("CI", value),
                None => std::env::remove_var("CI"),
            }
            std::env::remove_var(SKIP_LOG);
        }
        let _ = std::fs::remove_file(&log);
    }
}
