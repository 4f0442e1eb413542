//! The `multifd` region of `crossmig fuzz`: the packets of the multifd
//! channels of a recorded multifd stream (`qemu-<ver>-multifd2.ch<k>.bin`,
//! `wire/tests/streams/README.md`), replayed with each channel written by a
//! task of its own ([`MultifdStep::Raw`]) so the destination can read the
//! channels in whatever order its sync points need (docs/multifd.md §6).
//!
//! The multifd channels are mutated as one buffer, channel 1 then channel
//! 2 (`ch1‖ch2`; offsets count from its start), split back at the
//! recording's boundary: a mutant changes one byte (never a length), so the
//! split stays right.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use wire::multifd::{Compression, InitPacket, PacketFormat, PacketLayout, RamPacket};
use wire::Cursor;

use super::{Region, Span};
use crate::scenario::qemu::resolve_qemu;
use crate::synth::{differential_parts, DestRun, MultifdStep, RunOpts, SourceLayout, Step};

/// A recorded multifd stream: the main channel and the multifd channels
/// (in connection order), from the recording's `.json` sidecar.
pub struct MultifdRecording {
    pub main: Vec<u8>,
    pub channels: Vec<Vec<u8>>,
    /// `ch1‖ch2…`, what mutants change.
    pub joined: Vec<u8>,
    pub spans: Vec<Span>,
}

/// The recording `qemu-<v>-multifd2` in `dir`.
pub fn load(dir: &Path, v: &str) -> Result<MultifdRecording> {
    let side = dir.join(format!("qemu-{v}-multifd2.json"));
    let j: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&side).with_context(|| format!("reading {}", side.display()))?,
    )?;
    let mut main = None;
    let mut channels = Vec::new();
    for c in j["channels"].as_array().context("sidecar without \"channels\"")? {
        let f: PathBuf = dir.join(c["file"].as_str().context("channel without \"file\"")?);
        let b = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        match c["role"].as_str() {
            Some("main") => main = Some(b),
            _ => channels.push(b),
        }
    }
    let main = main.context("sidecar names no main channel")?;
    let mut joined = Vec::new();
    let mut spans = Vec::new();
    for (k, ch) in channels.iter().enumerate() {
        let base = joined.len() as u64;
        spans.extend(channel_spans(ch, k).into_iter().map(|mut s| {
            s.start += base;
            s.end += base;
            s
        }));
        joined.extend_from_slice(ch);
    }
    anyhow::ensure!(!spans.is_empty(), "{}: no multifd packet", side.display());
    Ok(MultifdRecording { main, channels, joined, spans })
}

impl MultifdRecording {
    /// Split a mutated `ch1‖ch2…` back into channels.
    pub fn split(&self, joined: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut p = 0;
        for ch in &self.channels {
            let end = (p + ch.len()).min(joined.len());
            out.push(joined[p.min(end)..end].to_vec());
            p += ch.len();
        }
        out
    }
}

/// The spans of one multifd channel `k`: the initial packet, each RAM
/// packet's header (with its offset array) and each payload.
pub fn channel_spans(b: &[u8], k: usize) -> Vec<Span> {
    let fmt = PacketFormat { layout: PacketLayout::V9, page_size: wire::TARGET_PAGE_SIZE as u32 };
    let mut out = Vec::new();
    let mut c = Cursor::new(b, 0);
    if InitPacket::decode(&mut c).is_err() {
        return out;
    }
    let span =
        |start: u64, end: u64, what: String| Span { region: Region::Multifd, start, end, what };
    out.push(span(0, c.offset(), format!("channel {k} initial packet")));
    let mut n = 0;
    while c.remaining() > 0 {
        let at = c.offset();
        let Ok(p) = RamPacket::decode(&mut c, &fmt) else { break };
        let Ok(len) = p.payload_len(&fmt, Compression::None, at) else { break };
        let kind = if p.is_sync() { "SYNC packet" } else { "packet" };
        out.push(span(at, c.offset(), format!("channel {k} {kind} {n} header")));
        if len > 0 && c.remaining() >= len {
            out.push(span(
                c.offset(),
                c.offset() + len as u64,
                format!("channel {k} packet {n} pages"),
            ));
        }
        c.set_pos(c.pos() + len.min(c.remaining()));
        n += 1;
    }
    out
}

/// Feed a multifd recording (main channel, multifd channels) to a QEMU
/// destination of `version` and to rust-dest, both with `multifd` on and as
/// many channels.
pub async fn run_multifd(
    version: &str,
    main: Vec<u8>,
    channels: Vec<Vec<u8>>,
    verdict_timeout: Duration,
    tag: &str,
) -> Result<(DestRun, DestRun)> {
    let qemu = resolve_qemu(Some(version))?;
    let opts = RunOpts {
        check_memory: false,
        guest_mem: Some(super::RECORDED_MEM),
        verdict_timeout,
        capabilities: vec![("multifd".into(), true)],
        parameters: Some(serde_json::json!({ "multifd-channels": channels.len() })),
        ..RunOpts::default()
    };
    let mut steps = Vec::new();
    for (k, bytes) in channels.into_iter().enumerate() {
        steps.push(Step::Multifd(MultifdStep::Connect { channel: k as u8 }));
        steps.push(Step::Multifd(MultifdStep::Raw { channel: k as u8, bytes }));
    }
    steps.push(Step::Raw(main));
    let layout = SourceLayout::qemu_10_0_q35_128m();
    let dir = tempfile::Builder::new().prefix("crossmig-fuzz-").tempdir()?;
    let (q, r) = differential_parts(tag, &qemu, &layout, &steps, &opts, dir.path()).await;
    Ok((q?, r?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_of_recorded_multifd_streams() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wire/tests/streams");
        for v in ["10.0", "11.1"] {
            let r = load(&dir, v).unwrap();
            assert_eq!(r.channels.len(), 2, "{v}");
            assert_eq!(r.split(&r.joined), r.channels, "{v}");
            // Every byte of both channels is in exactly one span, in order.
            let mut end = 0;
            for s in &r.spans {
                assert_eq!(s.start, end, "{v}: {}", s.what);
                end = s.end;
            }
            assert_eq!(end, r.joined.len() as u64, "{v}");
            let syncs = r.spans.iter().filter(|s| s.what.contains("SYNC")).count();
            assert!(syncs >= 2, "{v}: {syncs} SYNC packets");
            assert!(r.spans.iter().any(|s| s.what.ends_with("pages")), "{v}");
            // A mutant changes one byte of one channel; the split keeps lengths.
            for i in 0..10 {
                let m = super::super::mutate(&r.joined, &r.spans, Region::Multifd, 3, i).unwrap();
                let chans = r.split(&m.bytes);
                let changed: Vec<usize> = (0..2).filter(|&k| chans[k] != r.channels[k]).collect();
                assert_eq!(changed.len(), 1, "{v} mutant {i}: {}", m.change);
                assert_eq!(chans[changed[0]].len(), r.channels[changed[0]].len());
            }
        }
    }
}
