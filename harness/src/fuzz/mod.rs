//! `crossmig fuzz`: differential fuzzing of recorded real streams. A stream
//! (`wire/tests/streams/`) is cut into regions ([`Region`]) with the
//! analyzer's record offsets ([`crate::analyze`]); each mutant changes one
//! byte (or cuts the stream) inside one region, deterministically from the
//! seed ([`mutate`]); [`run`] feeds it to a QEMU destination and to rust-dest
//! and compares their verdicts (docs/differential-fuzz.md).

pub mod multifd;
pub mod run;

use std::path::Path;

use serde::Serialize;
use wire::walk::{Item, Mode, Walked, Walker};

use crate::analyze::{analyze, EventKind};

/// Guest RAM of the recordings in `wire/tests/streams/` (its README).
pub const RECORDED_MEM: u64 = 64 << 20;

/// A part of a stream a mutant is aimed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Region {
    /// Stream header, section headers and footers, commands (other than
    /// postcopy's), EOF and the vmdesc.
    Framing,
    /// RAM record headers (address and flags, block names, MEM_SIZE, the
    /// ZERO fill byte).
    RamHeader,
    /// The 4 KiB of a PAGE record.
    RamData,
    /// Device-state payload (between a device section's header and footer).
    Device,
    /// The postcopy commands (ADVISE, DISCARD, LISTEN, RUN, PACKAGED) and
    /// everything inside the package.
    Postcopy,
    /// The multifd channels of a multifd recording: initial packets, RAM
    /// and SYNC packet headers (offset arrays included), page payloads.
    Multifd,
}

impl Region {
    pub const ALL: [Region; 6] = [
        Region::Framing,
        Region::RamHeader,
        Region::RamData,
        Region::Device,
        Region::Postcopy,
        Region::Multifd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Region::Framing => "framing",
            Region::RamHeader => "ram-header",
            Region::RamData => "ram-data",
            Region::Device => "device",
            Region::Postcopy => "postcopy",
            Region::Multifd => "multifd",
        }
    }
}

impl std::str::FromStr for Region {
    type Err = String;
    fn from_str(s: &str) -> Result<Region, String> {
        Region::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            let all: Vec<_> = Region::ALL.iter().map(|r| r.as_str()).collect();
            format!("unknown region {s:?} (one of {})", all.join(", "))
        })
    }
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A byte range `[start, end)` of a stream and its region; `what` names the
/// record (for the reproducer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Span {
    pub region: Region,
    pub start: u64,
    pub end: u64,
    pub what: String,
}

/// Errors locating the regions of a stream.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("{0}")]
    Analyze(#[from] crate::analyze::AnalyzeError),
    #[error("{path}: the recorded stream does not decode: {what}")]
    Damaged { path: String, what: String },
}

/// Header length of a section record: START/FULL carry the idstr, instance
/// and version (docs/wire-format.md), PART/END only the section id.
fn section_header_len(kind: &str, name: &str) -> u64 {
    match kind {
        "START" | "FULL" => 1 + 4 + 1 + name.len() as u64 + 4 + 4,
        _ => 1 + 4,
    }
}

/// The regions of the main-channel recording at `path` (whose bytes are
/// `bytes`).
pub fn regions(path: &Path, bytes: &[u8]) -> Result<Vec<Span>, RegionError> {
    let a = analyze(&[path.to_path_buf()], None)?;
    if let Some(d) = a.damage.first() {
        return Err(RegionError::Damaged { path: path.display().to_string(), what: d.to_string() });
    }
    let mut out = Vec::new();
    let mut push = |region, start: u64, end: u64, what: String| {
        if end > start {
            out.push(Span { region, start, end, what });
        }
    };
    spans_of(&a, bytes, &a.events, false, &mut push);
    Ok(out)
}

/// The spans of `events`; inside the package (`pkg`) the framing is the
/// postcopy region's, device payload stays [`Region::Device`].
fn spans_of(
    a: &crate::analyze::Analysis,
    bytes: &[u8],
    events: &[crate::analyze::Event],
    pkg: bool,
    push: &mut impl FnMut(Region, u64, u64, String),
) {
    let framing = if pkg { Region::Postcopy } else { Region::Framing };
    for e in events {
        let (off, end) = (e.offset, e.offset + e.len);
        match &e.kind {
            EventKind::Header { .. } => push(framing, off, end, "header".into()),
            EventKind::Section { kind, section_id, name, ram: Some(_), .. } => {
                let hl = section_header_len(kind, name);
                push(framing, off, off + hl, format!("{kind} ram header"));
                push(framing, end - 5, end, format!("{kind} ram footer"));
                ram_records(bytes, *section_id, off + hl, end - 5, push);
            }
            EventKind::Section { kind, name, .. } => {
                push(framing, off, end, format!("{kind} {name}"));
            }
            EventKind::Device { index } => {
                let d = &a.devices[*index];
                let hl = section_header_len(d.kind, &d.name);
                let what = format!("{} {}", d.kind, d.name);
                push(framing, d.offset, d.offset + hl, format!("{what} header"));
                let data = d.offset + hl;
                push(Region::Device, data, data + d.size, what.clone());
                push(framing, data + d.size, end, format!("{what} footer"));
            }
            EventKind::Command { name, .. } => {
                let r = if is_postcopy_command(name) { Region::Postcopy } else { framing };
                push(r, off, end, format!("command {name}"));
            }
            EventKind::Package { events, .. } => spans_of(a, bytes, events, true, push),
            EventKind::Eof => push(framing, off, end, "EOF".into()),
            EventKind::Vmdesc { .. } => push(framing, off, end, "vmdesc".into()),
            EventKind::Channel { .. } => {}
        }
    }
}

fn is_postcopy_command(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    n.contains("POSTCOPY") || n.contains("PACKAGED")
}

/// Split the RAM records of `bytes[start..end)` into header and page data.
fn ram_records(
    bytes: &[u8],
    section_id: u32,
    start: u64,
    end: u64,
    push: &mut impl FnMut(Region, u64, u64, String),
) {
    let mut w = Walker::with_mode(Mode::Ram { section_id }, false);
    let mut pos = start;
    while pos < end {
        let Ok(Walked::Record { item, offset, len }) =
            w.next(&bytes[pos as usize..end as usize], pos)
        else {
            break;
        };
        let rec_end = offset + len as u64;
        match item {
            Item::Ram(wire::ramrec::RamRecord::Page { data, .. }) => {
                let d = rec_end - data.len() as u64;
                push(Region::RamHeader, offset, d, "PAGE record header".into());
                push(Region::RamData, d, rec_end, "PAGE data".into());
            }
            Item::Ram(r) => push(Region::RamHeader, offset, rec_end, ram_kind(&r).into()),
            _ => break,
        }
        pos = rec_end;
    }
}

fn ram_kind(r: &wire::ramrec::RamRecord) -> &'static str {
    use wire::ramrec::RamRecord as R;
    match r {
        R::MemSize { .. } => "MEM_SIZE record",
        R::Zero { .. } => "ZERO record",
        R::Eos => "EOS",
        _ => "RAM record",
    }
}

/// The same deterministic generator as the soak's (splitmix64): the same
/// seed gives the same mutants on every machine.
pub use crate::drive::soak::Rng;

/// What a mutant did to the original stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Change {
    /// The byte at `offset` became `new` (was `old`).
    Byte { offset: u64, old: u8, new: u8 },
    /// The stream ends before `offset` (the byte there was `old`).
    Cut { offset: u64, old: u8 },
}

impl Change {
    pub fn offset(&self) -> u64 {
        match self {
            Change::Byte { offset, .. } | Change::Cut { offset, .. } => *offset,
        }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Byte { offset, old, new } => {
                write!(f, "byte {offset:#x} {old:#04x} -> {new:#04x}")
            }
            Change::Cut { offset, old } => write!(f, "cut at {offset:#x} (byte there {old:#04x})"),
        }
    }
}

/// One mutant: where, what, and the bytes.
#[derive(Clone, Debug)]
pub struct Mutant {
    pub span: Span,
    pub change: Change,
    pub bytes: Vec<u8>,
}

/// Mutant `index` of the stream `orig` aimed at `region`, from `seed`: a
/// record of that region is picked uniformly (so small framing records are
/// hit as often as big ones), then a byte in it; the byte is flipped in one
/// bit, replaced by a random value, or set to 0x00/0xff; framing and postcopy
/// mutants are sometimes a cut instead (the stream ends there). `None` when
/// the stream has no such region.
pub fn mutate(
    orig: &[u8],
    spans: &[Span],
    region: Region,
    seed: u64,
    index: u64,
) -> Option<Mutant> {
    let mine: Vec<&Span> = spans.iter().filter(|s| s.region == region).collect();
    if mine.is_empty() {
        return None;
    }
    let mut rng = Rng::new(seed ^ index.wrapping_mul(0xa076_1d64_78bd_642f) ^ region as u64);
    let span = mine[rng.below(mine.len() as u64) as usize].clone();
    let offset = span.start + rng.below(span.end - span.start);
    let old = orig[offset as usize];
    let op = rng.below(8);
    let cuttable = matches!(region, Region::Framing | Region::Postcopy);
    let (change, bytes) = if cuttable && op == 7 {
        (Change::Cut { offset, old }, orig[..offset as usize].to_vec())
    } else {
        let new = match op % 4 {
            0 | 1 => old ^ (1 << rng.below(8)),
            2 => loop {
                let b = rng.below(256) as u8;
                if b != old {
                    break b;
                }
            },
            _ if old == 0 => 0xff,
            _ => 0,
        };
        let mut b = orig.to_vec();
        b[offset as usize] = new;
        (Change::Byte { offset, old, new }, b)
    };
    Some(Mutant { span, change, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(name: &str) -> (std::path::PathBuf, Vec<u8>) {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wire/tests/streams").join(name);
        let b = std::fs::read(&p).unwrap();
        (p, b)
    }

    #[test]
    fn regions_of_recorded_streams() {
        for (name, postcopy) in [("qemu-10.0-precopy.bin", false), ("qemu-11.1-postcopy.bin", true)]
        {
            let (p, b) = stream(name);
            let spans = regions(&p, &b).unwrap();
            for r in Region::ALL {
                let n = spans.iter().filter(|s| s.region == r).count();
                let want = r != Region::Multifd && (r != Region::Postcopy || postcopy);
                assert_eq!(n > 0, want, "{name}: {r}: {n} spans");
            }
            // Spans do not overlap and stay inside the stream.
            let mut v: Vec<_> = spans.iter().map(|s| (s.start, s.end)).collect();
            v.sort();
            for w in v.windows(2) {
                assert!(w[0].1 <= w[1].0, "{name}: overlapping spans {w:?}");
            }
            assert!(v.last().unwrap().1 <= b.len() as u64);
            // PAGE data spans are whole pages; the vmdesc is the last span.
            assert!(spans
                .iter()
                .filter(|s| s.region == Region::RamData)
                .all(|s| s.end - s.start == 4096));
            if !postcopy {
                let last = spans.iter().max_by_key(|s| s.end).unwrap();
                assert_eq!((last.what.as_str(), last.end), ("vmdesc", b.len() as u64));
            }
        }
    }

    #[test]
    fn mutants_are_deterministic_and_inside_their_region() {
        let (p, b) = stream("qemu-10.0-postcopy.bin");
        let spans = regions(&p, &b).unwrap();
        // The multifd region has its own recording (fuzz::multifd's test).
        for r in Region::ALL.into_iter().filter(|r| *r != Region::Multifd) {
            for i in 0..20 {
                let m = mutate(&b, &spans, r, 7, i).unwrap();
                let again = mutate(&b, &spans, r, 7, i).unwrap();
                assert_eq!((&m.change, &m.bytes), (&again.change, &again.bytes));
                let off = m.change.offset();
                assert!(m.span.region == r && m.span.start <= off && off < m.span.end);
                match m.change {
                    Change::Byte { old, new, .. } => {
                        assert_ne!(old, new);
                        assert_eq!(m.bytes.len(), b.len());
                    }
                    Change::Cut { .. } => assert_eq!(m.bytes.len() as u64, off),
                }
            }
        }
    }
}
