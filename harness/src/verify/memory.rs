//! Guest-memory verification by page digests.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use wire::digest;

use crate::qmp::Qmp;
use crate::verify::report::Check;

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

/// Source file vs destination file for the guest RAM block, as a check
/// named `name` plus the comparison (for the report's block list).
pub fn check_files(
    name: &str,
    block: &str,
    src: &Path,
    dst: &Path,
) -> Result<(Check, BlockCompare)> {
    let c = compare_files(block, src, dst)?;
    Ok((Check::new(name, c.ok(), c.to_string()), c))
}

/// One RAMBlock as rust-dest reports it (`x-crossmig-ram-digests`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockDigests {
    pub name: String,
    pub used_length: u64,
    /// Per-page digests (empty when the reply carried none).
    pub digests: Vec<u64>,
}

/// Decode an `x-crossmig-ram-digests` reply.
pub fn parse_block_digests(reply: &Value) -> Vec<BlockDigests> {
    reply["blocks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| BlockDigests {
                    name: b["name"].as_str().unwrap_or("?").to_string(),
                    used_length: b["used-length"].as_u64().unwrap_or(0),
                    digests: digest::from_hex(b["page-digests"].as_str().unwrap_or(""))
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// rust-dest's own view of its RAMBlocks over QMP, with page digests
/// (every block, or only `block`).
pub async fn query_block_digests(qmp: &Qmp, block: Option<&str>) -> Result<Vec<BlockDigests>> {
    let mut args = json!({"pages": true});
    if let Some(b) = block {
        args["block"] = json!(b);
    }
    let reply = qmp.execute("x-crossmig-ram-digests", args).await?;
    Ok(parse_block_digests(&reply))
}

/// The source's memory-backend file (block `block`) against the digests a
/// destination reports for that block; `None` if it reports no such block.
pub fn check_block_digests(
    name: &str,
    src_mem: &Path,
    block: &str,
    blocks: &[BlockDigests],
    how: &str,
) -> Result<Option<(Check, BlockCompare)>> {
    let Some(b) = blocks.iter().find(|b| b.name == block) else {
        return Ok(None);
    };
    let src = file_page_digests(src_mem)?;
    let c = compare_digests(&b.name, &src, &b.digests, how);
    Ok(Some((Check::new(name, c.ok(), c.to_string()), c)))
}

/// Which RAMBlocks a destination created from the stream (fails if none).
pub fn check_blocks_created(blocks: &[BlockDigests]) -> Check {
    let names: Vec<String> =
        blocks.iter().map(|b| format!("{} ({} KiB)", b.name, b.used_length >> 10)).collect();
    Check::new("RAMBlocks created from the stream", !names.is_empty(), names.join(", "))
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
        let (chk, _) = check_files("files", "mem0", &a, &a).unwrap();
        assert!(chk.ok);
    }

    #[test]
    fn block_digests() {
        let reply = json!({"blocks": [{"name": "mem0", "used-length": 8192, "page-digests": ""}]});
        let b = parse_block_digests(&reply);
        assert_eq!(b[0].name, "mem0");
        assert_eq!(check_blocks_created(&b).detail, "mem0 (8 KiB)");
        assert!(!check_blocks_created(&[]).ok);
    }
}
