//! How a failed command's error is printed: each cause once, and a hint
//! when the kernel refused for want of privilege.

use std::io::ErrorKind;

/// `err` with its causes, `outer: inner: innermost`, leaving out a cause
/// whose text an outer message already quotes (many errors put their
/// source's text in their own message and also return it as the source).
pub fn describe(err: &anyhow::Error, touches_kernel: bool) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if message.is_empty() || text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    if touches_kernel && (lacks_privilege(err) || !is_root()) && !text.contains("needs root") {
        text.push_str(
            "\n  hint: this command needs root (CAP_BPF and CAP_NET_ADMIN): run it with sudo",
        );
    }
    text
}

/// Not everything a refusal looks like keeps its errno (aya's "`BPF_OBJ_GET`
/// failed" does not say why), so a kernel command that fails for a user
/// other than root gets the hint whatever the error.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The error is the kernel (or bpffs) saying EPERM or EACCES.
fn lacks_privilege(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let io = cause.downcast_ref::<std::io::Error>().is_some_and(|e| {
            e.kind() == ErrorKind::PermissionDenied
                || matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        });
        // Some libraries keep only the text of the system error.
        let text = cause.to_string();
        io || text.contains("(os error 1)") || text.contains("(os error 13)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    /// An error that quotes its source and also returns it as the source.
    #[derive(Debug)]
    struct Quoting {
        path: String,
        source: std::io::Error,
    }

    impl std::fmt::Display for Quoting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}: {}", self.path, self.source)
        }
    }

    impl std::error::Error for Quoting {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    fn not_found() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::ENOENT)
    }

    #[test]
    fn a_cause_quoted_by_its_error_is_printed_once() {
        let err = anyhow::Error::new(Quoting {
            path: "/x.pcap".into(),
            source: not_found(),
        })
        .context("cannot replay /x.pcap");
        assert_eq!(
            describe(&err, false),
            "cannot replay /x.pcap: /x.pcap: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn causes_that_are_not_quoted_are_all_printed() {
        let err = Err::<(), _>(not_found())
            .context("cannot read p.fsm")
            .unwrap_err();
        assert_eq!(
            describe(&err, false),
            "cannot read p.fsm: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn eperm_from_a_kernel_command_gets_the_root_hint() {
        let eperm = || {
            Err::<(), _>(std::io::Error::from_raw_os_error(libc::EPERM))
                .context("failed to create map `counters`")
                .unwrap_err()
        };
        assert!(describe(&eperm(), true).contains("needs root (CAP_BPF"));
        // Not for a command that only reads and writes files.
        assert!(!describe(&eperm(), false).contains("needs root"));
        // Nor for another error, when root runs it.
        let enoent = anyhow::Error::new(not_found());
        assert_eq!(describe(&enoent, true).contains("needs root"), !is_root());
    }
}
