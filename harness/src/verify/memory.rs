//! Guest-memory verification by page digests.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use wire::digest;

pub const PAGE: usize = 4096;

/// Page digests of a file (memory-backend file in /dev/shm).
pub fn file_page_digests(path: &Path) -> Result<Vec<u64>> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let mut n = 0;
        while n < buf.len() {
            let r = f.read(&mut buf[n..])?;
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 {
            break;
        }
        out.extend(digest::page_digests(&buf[..n], PAGE));
        if n < buf.len() {
            break;
        }
    }
    Ok(out)
}

/// One page that differs.
#[derive(Clone, Debug, Serialize)]
pub struct PageMismatch {
    pub offset: u64,
    pub source: String,
    pub dest: String,
}

/// Result of comparing one RAMBlock.
#[derive(Clone, Debug, Serialize)]
pub struct BlockCompare {
    pub block: String,
    pub pages: u64,
    pub mismatched: u64,
    /// First mismatches (at most 32).
    pub mismatches: Vec<PageMismatch>,
    pub how: String,
}

impl BlockCompare {
    pub fn ok(&self) -> bool {
        self.mismatched == 0
    }
}

impl std::fmt::Display for BlockCompare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ok() {
            write!(f, "{}: {} pages identical ({})", self.block, self.pages, self.how)
        } else {
            write!(
                f,
                "{}: {} of {} pages differ ({})",
                self.block, self.mismatched, self.pages, self.how
            )?;
            for m in &self.mismatches {
                write!(f, "\n    offset {:#x}: source {} dest {}", m.offset, m.source, m.dest)?;
            }
            Ok(())
        }
    }
}

/// Compare two digest lists (different lengths count the extra pages as
/// mismatches).
pub fn compare_digests(block: &str, src: &[u64], dst: &[u64], how: &str) -> BlockCompare {
    let n = src.len().max(dst.len());
    let mut mismatched = 0u64;
    let mut mismatches = Vec::new();
    for i in 0..n {
        let (a, b) = (src.get(i), dst.get(i));
        if a != b {
            mismatched += 1;
            if mismatches.len() < 32 {
                let fmt = |x: Option<&u64>| {
                    x.map(|v| format!("{v:016x}")).unwrap_or_else(|| "(missing)".into())
                };
                mismatches.push(PageMismatch {
                    offset: (i * PAGE) as u64,
                    source: fmt(a),
                    dest: fmt(b),
                });
            }
        }
    }
    BlockCompare {
        block: block.to_string(),
        pages: n as u64,
        mismatched,
        mismatches,
        how: how.into(),
    }
}

/// Compare two memory-backend files page by page.
pub fn compare_files(block: &str, src: &Path, dst: &Path) -> Result<BlockCompare> {
    let a = file_page_digests(src)?;
    let b = file_page_digests(dst)?;
    Ok(compare_digests(block, &a, &b, "source file vs destination file, xxh3 per page"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_differences() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let mut x = vec![0u8; 5 * PAGE];
        std::fs::write(&a, &x).unwrap();
        x[3 * PAGE + 7] = 1;
        std::fs::write(&b, &x).unwrap();
        let c = compare_files("mem0", &a, &b).unwrap();
        assert!(!c.ok());
        assert_eq!(c.mismatched, 1);
        assert_eq!(c.mismatches[0].offset, 3 * PAGE as u64);
        std::fs::write(&b, &x[..4 * PAGE]).unwrap();
        assert_eq!(compare_files("mem0", &a, &a).unwrap().mismatched, 0);
        assert_eq!(compare_files("mem0", &a, &b).unwrap().mismatched, 2);
    }
}
