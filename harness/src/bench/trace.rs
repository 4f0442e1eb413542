//! Per-fault postcopy latencies from the destinations' own traces: rust-dest's
//! `fault_latency` lines and QEMU's `postcopy_page_req_*` trace points.

use std::collections::HashMap;
use std::path::Path;

/// rust-dest log filter that enables its per-fault latency trace lines.
pub(super) const RUST_FAULT_TRACE: &str = "info,fault_latency=trace";
/// Marker of rust-dest's per-fault trace line (see rust-dest/src/postcopy/runtime.rs).
const RUST_FAULT_MARK: &str = "fault-latency-us=";

/// Per-fault latencies from rust-dest's `fault_latency` trace lines.
pub fn parse_rust_fault_trace(log: &Path) -> Vec<u64> {
    let Ok(s) = std::fs::read(log) else {
        return Vec::new();
    };
    let s = String::from_utf8_lossy(&s);
    s.lines()
        .filter_map(|l| {
            let i = l.find(RUST_FAULT_MARK)? + RUST_FAULT_MARK.len();
            let d: String = l[i..].chars().take_while(|c| c.is_ascii_digit()).collect();
            d.parse().ok()
        })
        .collect()
}

/// Per-fault latencies from QEMU's `postcopy_page_req_add` (a missing page
/// is requested from the source; emitted by the fault thread) and
/// `postcopy_page_req_del` (that page has been placed) trace points, with
/// `-msg timestamp=on` (`pid@sec.usec:event ...`).
pub fn parse_qemu_fault_trace(log: &Path) -> Vec<u64> {
    let Ok(s) = std::fs::read(log) else {
        return Vec::new();
    };
    let s = String::from_utf8_lossy(&s);
    let mut open: HashMap<u64, u64> = HashMap::new();
    let mut out = Vec::new();
    for l in s.lines() {
        let Some(i) = l.find(":postcopy_page_req_") else {
            continue;
        };
        let is_add = l[i..].starts_with(":postcopy_page_req_add");
        let is_del = l[i..].starts_with(":postcopy_page_req_del");
        if !is_add && !is_del {
            continue;
        }
        let Some(ts) = l[..i].rsplit('@').next() else {
            continue;
        };
        let Some((sec, usec)) = ts.split_once('.') else {
            continue;
        };
        let (Ok(sec), Ok(usec)) = (sec.parse::<u64>(), usec.parse::<u64>()) else {
            continue;
        };
        let t = sec * 1_000_000 + usec;
        let Some(j) = l[i..].find("0x") else { continue };
        let hex: String = l[i + j + 2..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        let Ok(addr) = u64::from_str_radix(&hex, 16) else {
            continue;
        };
        if is_add {
            open.entry(addr).or_insert(t);
        } else if let Some(t0) = open.remove(&addr) {
            out.push(t.saturating_sub(t0));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_trace_parsing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("q.log");
        std::fs::write(
            &p,
            "123@1700000000.000100:postcopy_page_req_add new page req 0x7f0000001000 total 1\n\
             noise\n\
             123@1700000000.000150:postcopy_page_req_add new page req 0x7f0000002000 total 2\n\
             124@1700000000.000400:postcopy_page_req_del resolved page req 0x7f0000001000 total 1\n\
             124@1700000001.000150:postcopy_page_req_del resolved page req 0x7f0000002000 total 0\n\
             124@1700000001.000150:postcopy_page_req_del resolved page req 0x7f0000003000 total 0\n",
        )
        .unwrap();
        assert_eq!(parse_qemu_fault_trace(&p), vec![300, 1_000_000]);
        std::fs::write(&p, "2026-01-01T00:00:00Z TRACE fault-latency-us=42 block=0 page=0x10\nx fault-latency-us=7\n").unwrap();
        assert_eq!(parse_rust_fault_trace(&p), vec![42, 7]);
    }
}
