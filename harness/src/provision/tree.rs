//! Folders of private roots: mounts below them (found, unmounted), safe
//! removal, and symlinks resolved inside the root.

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// Paths mounted at or below `dir` (from /proc/self/mountinfo), deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(&dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(((b[i + 1] - b'0') << 6) | ((b[i + 2] - b'0') << 3) | (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmount everything below `dir` (deepest first); fail if anything stays.
pub(super) fn unmount_all_under(dir: &Path) -> Result<()> {
    for m in mounts_under(dir) {
        let ok = Command::new("umount").arg(&m).status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
    let left = mounts_under(dir);
    if !left.is_empty() {
        bail!("still mounted below {}: {left:?}", dir.display());
    }
    Ok(())
}

/// Remove a folder, after making sure nothing is mounted below it.
pub(super) fn remove_tree(dir: &Path) -> Result<()> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    unmount_all_under(dir)?;
    if !mounts_under(dir).is_empty() {
        bail!("refusing to remove {}: something is still mounted below it", dir.display());
    }
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Follow symlinks inside a private root: absolute targets are taken
/// relative to `root`. Returns the final path (inside `root`).
pub(super) fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    let mut cur = path.to_path_buf();
    for _ in 0..40 {
        let md = match fs::symlink_metadata(&cur) {
            Ok(m) => m,
            Err(e) => return Err(e).with_context(|| format!("{}", cur.display())),
        };
        if !md.file_type().is_symlink() {
            return Ok(cur);
        }
        let target = fs::read_link(&cur)?;
        cur = if target.is_absolute() {
            let rel: PathBuf =
                target.components().filter(|c| !matches!(c, Component::RootDir)).collect();
            root.join(rel)
        } else {
            let mut p = cur.parent().unwrap_or(root).to_path_buf();
            for c in target.components() {
                match c {
                    Component::ParentDir => {
                        if p != root {
                            p.pop();
                        }
                    }
                    Component::CurDir => {}
                    other => p.push(other),
                }
            }
            p
        };
    }
    bail!("too many symlinks resolving {}", path.display())
}

/// Absolute symlinks in `dirs` (they would point at the host's files).
pub(super) fn absolute_symlinks(dirs: &[PathBuf]) -> Vec<String> {
    let mut v = Vec::new();
    for d in dirs {
        for e in fs::read_dir(d).into_iter().flatten().flatten() {
            if let Ok(t) = fs::read_link(e.path()) {
                if t.is_absolute() {
                    v.push(format!("{} -> {}", e.path().display(), t.display()));
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn resolve_symlinks_in_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("usr/lib/x86_64-linux-gnu")).unwrap();
        fs::create_dir_all(root.join("usr/lib64")).unwrap();
        fs::write(root.join("usr/lib/x86_64-linux-gnu/ld.so"), b"").unwrap();
        std::os::unix::fs::symlink("/usr/lib/x86_64-linux-gnu/ld.so", root.join("usr/lib64/abs"))
            .unwrap();
        std::os::unix::fs::symlink("../lib/x86_64-linux-gnu/ld.so", root.join("usr/lib64/rel"))
            .unwrap();
        let want = root.join("usr/lib/x86_64-linux-gnu/ld.so");
        assert_eq!(resolve_in_root(root, &root.join("usr/lib64/abs")).unwrap(), want);
        assert_eq!(resolve_in_root(root, &root.join("usr/lib64/rel")).unwrap(), want);
    }
}
