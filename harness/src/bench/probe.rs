//! Reading figures off a run: query-migrate fields, MIGRATION event times,
//! and digests of guest pages sampled from the RAM files of both sides.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::Value;
use wire::units::TARGET_PAGE_SIZE;

use crate::drive::session::u64_at;
use crate::qmp::{MigrationStatus, Qmp};
use crate::verify::memory::compare_digests;

/// Pages compared between source and destination after a precopy/ingest run.
pub(super) const VERIFY_PAGES: u64 = 512;

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `ram.normal + ram.duplicate` of a source query-migrate reply.
pub(super) fn src_pages(v: &Value) -> u64 {
    u64_at(v, &["ram", "normal"]) + u64_at(v, &["ram", "duplicate"])
}

/// When this side's first `MIGRATION {status}` event at or after `after`
/// was received by the harness.
pub(super) fn event_time(qmp: &Qmp, status: MigrationStatus, after: Instant) -> Option<Instant> {
    qmp.events()
        .into_iter()
        .find(|e| e.migration_status().as_ref() == Some(&status) && e.received >= after)
        .map(|e| e.received)
}

/// Deterministic page indices spread over `[lo, hi)`.
pub(super) fn sample_pages(lo: u64, hi: u64, n: u64) -> Vec<u64> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let span = hi.saturating_sub(lo).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lo + x % span
        })
        .collect()
}

/// xxh3 digests of pages (by index) of a RAM file.
pub(super) fn page_digests(path: &Path, pages: &[u64]) -> Result<Vec<u64>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut b = vec![0u8; TARGET_PAGE_SIZE as usize];
    pages
        .iter()
        .map(|&p| {
            f.read_exact_at(&mut b, p * TARGET_PAGE_SIZE)?;
            Ok(wire::digest::page_digest(&b))
        })
        .collect()
}

/// Compare sampled pages with their digests `want` (taken by
/// [`page_digests`] on the source); returns the number of mismatches.
pub(super) fn compare_pages(path: &Path, pages: &[u64], want: &[u64]) -> Result<u64> {
    let got = page_digests(path, pages)?;
    Ok(compare_digests("sampled pages", want, &got, "xxh3 per sampled page").mismatched)
}
