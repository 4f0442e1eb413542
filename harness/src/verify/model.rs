//! The guest RAM a synthetic source's script defines (pages sent, discarded,
//! re-sent) and the check of a destination's RAM against it.
//!
//! A page discarded (POSTCOPY_RAM_DISCARD) and never re-sent reads as zero:
//! QEMU's destination drops the page (`ram_discard_range` in
//! `migration/ram.c` punches it out of the memory backend) and nothing
//! fills it until a page for it arrives, in the stream or on request.
//! Verified with real QEMU 7.2, 10.0 and 11.1 destinations by
//! `scenarios/stream-discard-never-resent.toml`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, Result};
use wire::digest::page_digest;
use wire::units::TARGET_PAGE_SIZE as PAGE_SIZE;

/// Content of a page the script sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Content {
    /// A deterministic non-zero pattern derived from (block, page, version).
    Pattern(u8),
    /// A ZERO record (fill 0).
    Zero,
    /// A ZERO record with a non-zero fill byte (pre-10.x semantics: the
    /// whole page holds that byte; QEMU 10.x rejects it).
    Fill(u8),
}

/// The bytes of a page: a pattern page starts with `b"SYNTH"`, the page
/// index (be64), the version and the block name, and is filled with a
/// non-zero byte sequence derived from all three.
pub fn content_bytes(block: &str, index: u64, c: Content) -> Vec<u8> {
    let mut p = vec![0u8; PAGE_SIZE as usize];
    if let Content::Fill(v) = c {
        p.fill(v);
    }
    if let Content::Pattern(v) = c {
        let mut key = block.as_bytes().to_vec();
        key.extend_from_slice(&index.to_be_bytes());
        key.push(v);
        let h = xxhash_rust::xxh3::xxh3_64(&key);
        let (a, b) = ((h as u8) | 1, (h >> 8) as u8 | 1);
        for (i, x) in p.iter_mut().enumerate() {
            *x = a.wrapping_add((i as u8).wrapping_mul(b)) | 0x01;
        }
        let mut hdr = b"SYNTH".to_vec();
        hdr.extend_from_slice(&index.to_be_bytes());
        hdr.push(v);
        hdr.extend_from_slice(block.as_bytes());
        let n = hdr.len().min(p.len());
        p[..n].copy_from_slice(&hdr[..n]);
    }
    p
}

/// State of one page in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    Defined(Content),
    /// Discarded and not re-sent: the destination holds zero until a page
    /// arrives. `last` is what the source sent before (what it serves on
    /// request).
    Discarded {
        last: Option<Content>,
    },
}

/// What a page of the destination must contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    Digest(u64),
    Zero,
    /// Discarded and never re-sent: zero as well, counted apart.
    DiscardedZero,
}

/// Model of the guest RAM the script defines.
#[derive(Clone, Debug, Default)]
pub struct RamModel {
    pub pages: BTreeMap<(String, u64), PageState>,
}

impl RamModel {
    /// A page the source sent with `content`.
    pub fn set(&mut self, block: &str, index: u64, content: Content) {
        self.pages.insert((block.to_string(), index), PageState::Defined(content));
    }

    /// Every page touched by the byte range becomes discarded.
    pub fn discard(&mut self, block: &str, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = start / PAGE_SIZE;
        let end = start.saturating_add(len).div_ceil(PAGE_SIZE);
        // Bound the loop: ranges far beyond any block are malformed anyway.
        for i in first..end.min(first + (1 << 20)) {
            let k = (block.to_string(), i);
            let last = match self.pages.get(&k) {
                Some(PageState::Defined(c)) => Some(*c),
                Some(PageState::Discarded { last }) => *last,
                None => None,
            };
            self.pages.insert(k, PageState::Discarded { last });
        }
    }

    pub fn state(&self, block: &str, index: u64) -> Option<PageState> {
        self.pages.get(&(block.to_string(), index)).copied()
    }

    pub fn expected(&self, block: &str, index: u64) -> Expected {
        match self.state(block, index) {
            None | Some(PageState::Defined(Content::Zero | Content::Fill(0))) => Expected::Zero,
            Some(PageState::Defined(c)) => {
                Expected::Digest(page_digest(&content_bytes(block, index, c)))
            }
            Some(PageState::Discarded { .. }) => Expected::DiscardedZero,
        }
    }

    /// What the source sends when the destination requests this page.
    pub fn content_for_request(&self, block: &str, index: u64) -> Content {
        match self.state(block, index) {
            Some(PageState::Defined(c)) => c,
            Some(PageState::Discarded { last }) => last.unwrap_or(Content::Zero),
            None => Content::Zero,
        }
    }

    /// Expected digests of the non-zero pages the script defined in `block`.
    pub fn defined_digests(&self, block: &str) -> BTreeMap<u64, u64> {
        self.pages
            .iter()
            .filter(|((b, _), _)| b == block)
            .filter_map(|((b, i), s)| match s {
                PageState::Defined(c @ (Content::Pattern(_) | Content::Fill(1..))) => {
                    Some((*i, page_digest(&content_bytes(b, *i, *c))))
                }
                _ => None,
            })
            .collect()
    }

    /// Pages of `block` in the model, with their states.
    pub fn block_pages(&self, block: &str) -> Vec<(u64, PageState)> {
        self.pages.iter().filter(|((b, _), _)| b == block).map(|((_, i), s)| (*i, *s)).collect()
    }
}

#[derive(Clone, Debug, Default)]
pub struct MemCheck {
    pub block: String,
    pub pages: u64,
    /// Pages with a defined non-zero content that matched.
    pub matched_defined: u64,
    /// Discarded, never re-sent pages that read zero.
    pub discarded_zero: u64,
    pub mismatched: u64,
    /// First mismatches.
    pub mismatches: Vec<String>,
}

impl MemCheck {
    pub fn ok(&self) -> bool {
        self.mismatched == 0
    }
}

impl std::fmt::Display for MemCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} pages, {} defined matched, {} discarded read zero, {} mismatched",
            self.block, self.pages, self.matched_defined, self.discarded_zero, self.mismatched
        )?;
        if !self.mismatches.is_empty() {
            write!(f, " [{}]", self.mismatches.join("; "))?;
        }
        Ok(())
    }
}

/// Compare the pages of `block` held in `data` with the model: defined pages
/// must match their digests; discarded, never re-sent ones and all others
/// must be zero.
pub fn check_pages(model: &RamModel, block: &str, data: &[u8]) -> MemCheck {
    let mut r = MemCheck { block: block.into(), ..Default::default() };
    for (i, page) in data.chunks(PAGE_SIZE as usize).enumerate() {
        let i = i as u64;
        r.pages += 1;
        let bad = match model.expected(block, i) {
            e @ (Expected::Zero | Expected::DiscardedZero) => {
                if page.iter().all(|&b| b == 0) {
                    if e == Expected::DiscardedZero {
                        r.discarded_zero += 1;
                    }
                    None
                } else {
                    Some(format!(
                        "page {i} ({:#x}) should be zero{}, has digest {:016x}",
                        i * PAGE_SIZE,
                        if e == Expected::DiscardedZero {
                            " (discarded, never re-sent)"
                        } else {
                            ""
                        },
                        page_digest(page)
                    ))
                }
            }
            Expected::Digest(d) => {
                let got = page_digest(page);
                if got == d {
                    r.matched_defined += 1;
                    None
                } else {
                    let what = if page.iter().all(|&b| b == 0) {
                        "zero".to_string()
                    } else {
                        format!("{got:016x}")
                    };
                    Some(format!("page {i} ({:#x}) expected {d:016x}, got {what}", i * PAGE_SIZE))
                }
            }
        };
        if let Some(m) = bad {
            r.mismatched += 1;
            if r.mismatches.len() < 8 {
                r.mismatches.push(m);
            }
        }
    }
    // Pages defined beyond the data (a short file) are mismatches too.
    let n = r.pages;
    for (i, _) in model.defined_digests(block).range(n..) {
        r.mismatched += 1;
        if r.mismatches.len() < 8 {
            r.mismatches.push(format!("page {i} is beyond the {n} pages of the file"));
        }
    }
    r
}

/// [`check_pages`] on a memory-backend file.
pub fn check_memory(model: &RamModel, block: &str, file: &Path) -> Result<MemCheck> {
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(check_pages(model, block, &data))
}
