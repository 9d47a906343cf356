//! The C baselines in `bench/c`: finding clang and compiling them with
//! `clang -O2 -g -target bpf`, as an expert would.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Names tried, in order, on `PATH`.
const CANDIDATES: [&str; 7] = [
    "clang", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14",
];

/// The C baselines: `(file stem in bench/c, XDP program name)`.
pub const BASELINES: [(&str, &str); 5] = [
    ("bare", "bare_pass"),
    ("pk_seed", "pk_seed"),
    ("pk_careful", "pk_careful"),
    ("tb_seed", "tb_seed"),
    ("tb_careful", "tb_careful"),
];

/// What to tell a user without clang.
pub const INSTALL_HINT: &str = "clang is needed to build the C baselines in bench/c: \
     install it with `apt-get install -y clang libbpf-dev` (libbpf-dev provides \
     <bpf/bpf_helpers.h>), or set CLANG=/path/to/clang";

/// The directory of the C baselines: `bench/c` at the workspace root.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/c")
}

/// The clang to use: `$CLANG` if set, else the first of [`CANDIDATES`]
/// found on `PATH`.
pub fn find() -> Option<PathBuf> {
    if let Some(explicit) = std::env::var_os("CLANG") {
        return Some(PathBuf::from(explicit));
    }
    let path = std::env::var_os("PATH")?;
    CANDIDATES.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Where Debian-style systems keep `<asm/types.h>`, which `<linux/bpf.h>`
/// includes; a BPF target does not look there by itself.
fn multiarch_include() -> Option<PathBuf> {
    let dir = PathBuf::from(format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH));
    dir.is_dir().then_some(dir)
}

/// The arguments of `clang` compiling `source` to the BPF object `output`.
pub fn arguments(source: &Path, output: &Path, include: Option<&Path>) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"]
        .into_iter()
        .map(OsString::from)
        .collect();
    if let Some(dir) = include {
        args.push("-I".into());
        args.push(dir.into());
    }
    args.push("-c".into());
    args.push(source.into());
    args.push("-o".into());
    args.push(output.into());
    args
}

/// Compiles `source` with `clang` into `output`; the error carries
/// clang's own messages.
pub fn compile(clang: &Path, source: &Path, output: &Path) -> Result<(), String> {
    let include = multiarch_include();
    let result = Command::new(clang)
        .args(arguments(source, output, include.as_deref()))
        .output()
        .map_err(|e| format!("running {}: {e}", clang.display()))?;
    if result.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed on {} ({}):\n{}",
            clang.display(),
            source.display(),
            result.status,
            String::from_utf8_lossy(&result.stderr)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_target_bpf_with_optimisation_and_btf() {
        let args = arguments(Path::new("a.c"), Path::new("a.o"), Some(Path::new("/inc")));
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-I", "/inc", "-c", "a.c", "-o",
                "a.o"
            ]
        );
    }

    #[test]
    fn every_baseline_the_benchmark_loads_is_in_bench_c() {
        // The benchmark loads these programs by name; checked here so a
        // rename breaks a test, not the benchmark run.
        for (stem, program) in BASELINES {
            let path = source_dir().join(format!("{stem}.c"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                text.contains(&format!("SEC(\"xdp\")\nint {program}(struct xdp_md *ctx)")),
                "{stem}.c lacks its xdp program {program}"
            );
        }
    }
}
