//! Refusing an output path that names an input, or another output, before
//! anything is written: `--write-pass` onto the capture being replayed
//! would truncate it before it is read.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::bail;

/// A path given on the command line and the option (or argument) that
/// named it.
pub struct Named<'a> {
    pub what: &'a str,
    pub path: &'a Path,
}

/// Fails when an output is the same file as an input or as another output:
/// the same path, or the same file through links (same device and inode).
pub fn refuse_same_files(inputs: &[Named<'_>], outputs: &[Named<'_>]) -> anyhow::Result<()> {
    for (i, out) in outputs.iter().enumerate() {
        let earlier = inputs
            .iter()
            .map(|n| ("input", n))
            .chain(outputs[..i].iter().map(|n| ("output", n)));
        for (role, other) in earlier {
            if same_file(out.path, other.path) {
                bail!(
                    "{} {} is the same file as the {role} {} {}: writing it would destroy \
                     that {role}; nothing was written. Choose another path for {}",
                    out.what,
                    out.path.display(),
                    other.what,
                    other.path.display(),
                    out.what,
                );
            }
        }
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return ma.dev() == mb.dev() && ma.ino() == mb.ino();
    }
    // One does not exist yet: the same place by name (`./x` is `x`, and
    // a linked directory leads to the same place).
    match (resolved(a), resolved(b)) {
        (Some(ra), Some(rb)) => ra == rb,
        _ => a == b,
    }
}

/// The path with its directory resolved (links, `.`, `..`), or `None`
/// when the directory does not exist.
fn resolved(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(dir).ok()?.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch() -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "flowstate-clobber-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    }

    fn named<'a>(what: &'a str, path: &'a Path) -> Named<'a> {
        Named { what, path }
    }

    #[test]
    fn same_file_by_path_by_link_and_by_hard_link() {
        let s = scratch();
        let input = s.0.join("in.pcap");
        std::fs::write(&input, b"x").unwrap();
        let symlink = s.0.join("link.pcap");
        std::os::unix::fs::symlink(&input, &symlink).unwrap();
        let hard = s.0.join("hard.pcap");
        std::fs::hard_link(&input, &hard).unwrap();
        let dotted = s.0.join(".").join("in.pcap");
        for out in [&input, &symlink, &hard, &dotted] {
            let err = refuse_same_files(&[named("capture", &input)], &[named("--write-pass", out)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("same file as the input capture"), "{err}");
        }
        let other = s.0.join("out.pcap");
        refuse_same_files(
            &[named("capture", &input)],
            &[named("--write-pass", &other)],
        )
        .unwrap();
    }

    #[test]
    fn two_outputs_that_do_not_exist_yet_are_compared_by_place() {
        let s = scratch();
        let a = s.0.join("out.pcap");
        let b = s.0.join("sub").join("..").join("out.pcap");
        std::fs::create_dir(s.0.join("sub")).unwrap();
        let err = refuse_same_files(&[], &[named("--write-pass", &a), named("--write-drop", &b)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("same file as the output --write-pass"),
            "{err}"
        );
        assert!(!a.exists());
    }
}
