//! The inputs of `crossmig analyze`: stream files, recorded connection
//! files, and recording directories (as the harness's recorder writes them:
//! `<tag>-rec<k>-conn<c>.bin` for what the source sent on a connection,
//! `<tag>-rec<k>-conn<c>.rp.bin` for what the destination sent back, see
//! `drive/recorder.rs`). Each file's role is told by its first bytes.

use std::path::{Path, PathBuf};

use super::{AnalyzeError, Input, Role};

/// Suffix of a recorded return path.
pub const RETURN_PATH_SUFFIX: &str = ".rp.bin";

pub fn read(path: &Path) -> Result<Vec<u8>, AnalyzeError> {
    std::fs::read(path).map_err(|source| AnalyzeError::Io { path: path.to_path_buf(), source })
}

/// The role of a file from its name and first bytes.
pub fn role_of(path: &Path, head: &[u8]) -> Role {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.ends_with(RETURN_PATH_SUFFIX) {
        Role::ReturnPath
    } else if head.starts_with(b"QEVM") {
        Role::Main
    } else if head.starts_with(&wire::consts::MULTIFD_MAGIC.to_be_bytes()) {
        Role::Multifd
    } else if head.first() == Some(&wire::consts::QEMU_VM_COMMAND) {
        Role::Recovery
    } else if head.is_empty() {
        // An empty file given by name: read as a (truncated) main channel.
        Role::Main
    } else {
        Role::Preempt
    }
}

/// Numbers in a file name, for ordering `conn2` before `conn10`.
fn natural_key(p: &Path) -> Vec<(String, u64)> {
    let s = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut out = Vec::new();
    let mut text = String::new();
    let mut num: Option<u64> = None;
    for ch in s.chars() {
        if let Some(d) = ch.to_digit(10) {
            num = Some(num.unwrap_or(0).saturating_mul(10).saturating_add(d as u64));
        } else {
            if let Some(n) = num.take() {
                out.push((std::mem::take(&mut text), n));
            }
            text.push(ch);
        }
    }
    out.push((text, num.unwrap_or(0)));
    out
}

fn head(path: &Path) -> Result<(Vec<u8>, u64), AnalyzeError> {
    use std::io::Read;
    let io = |source| AnalyzeError::Io { path: path.to_path_buf(), source };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut b = vec![0u8; 8];
    let mut n = 0;
    while n < b.len() {
        let k = f.read(&mut b[n..]).map_err(io)?;
        if k == 0 {
            break;
        }
        n += k;
    }
    b.truncate(n);
    Ok((b, len))
}

/// Every input file with its role: directories are expanded to their
/// non-empty `*.bin` files in natural order; main channels come first, then
/// recovery channels, then the rest in order.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<Input>, AnalyzeError> {
    if paths.is_empty() {
        return Err(AnalyzeError::NoInput);
    }
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let rd = std::fs::read_dir(p)
                .map_err(|source| AnalyzeError::Io { path: p.clone(), source })?;
            let mut found: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "bin") && f.is_file())
                .collect();
            found.sort_by_key(|f| natural_key(f));
            let mut any = false;
            for f in found {
                let (h, len) = head(&f)?;
                if len > 0 {
                    any = true;
                    files.push(Input { role: role_of(&f, &h), path: f, bytes: len });
                }
            }
            if !any {
                return Err(AnalyzeError::EmptyDir(p.clone()));
            }
        } else {
            let (h, len) = head(p)?;
            files.push(Input { role: role_of(p, &h), path: p.clone(), bytes: len });
        }
    }
    let rank = |r: Role| match r {
        Role::Main => 0,
        Role::Recovery => 1,
        _ => 2,
    };
    files.sort_by_key(|f| rank(f.role)); // stable: keeps the natural order
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_order() {
        assert_eq!(role_of(Path::new("a-conn0.bin"), b"QEVM\0\0\0\x03"), Role::Main);
        assert_eq!(role_of(Path::new("a-conn0.rp.bin"), b"\0\x03"), Role::ReturnPath);
        assert_eq!(role_of(Path::new("x"), &[0x11, 0x22, 0x33, 0x44]), Role::Multifd);
        assert_eq!(role_of(Path::new("x"), &[0x08, 0, 0x0b]), Role::Recovery);
        assert_eq!(role_of(Path::new("x"), &[0, 0, 0, 0]), Role::Preempt);
        let mut v = [PathBuf::from("t-rec0-conn10.bin"), PathBuf::from("t-rec0-conn2.bin")];
        v.sort_by_key(|f| natural_key(f));
        assert_eq!(v[0], PathBuf::from("t-rec0-conn2.bin"));
    }
}
