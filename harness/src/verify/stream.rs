//! Expected RAMBlock contents reconstructed offline from recorded wire bytes.
//!
//! The source keeps its ROM blocks (pc.bios, ACPI tables, ...) in process
//! memory, so unlike guest RAM they cannot be read from a file. The harness
//! records what the source sent (main channel, multifd channels and, with
//! postcopy-preempt, the preempt channel) through its proxy, and this module
//! replays the recording with the codec's record walker (`wire::walk`) and
//! `wire::multifd` (child module `multifd`), independently of rust-dest's
//! loader: pages and zero pages overwrite, discards zero, everything else is
//! skipped. The result is the RAM a correct destination must hold.
//!
//! Multifd order (docs/multifd.md §6): the main channel's sync markers
//! (MULTIFD_FLUSH, or every RAM section's EOS in per-section mode, told
//! apart by the START section) and each channel's SYNC packets cut the
//! migration into epochs. A channel's packets before its `k`-th SYNC are
//! applied when the main channel reaches its `k`-th marker, so main-channel
//! records after that marker win over them, and they win over the main
//! channel's records before it. Within one epoch a page is sent at most once
//! (once per dirty-page scan), so the order inside an epoch does not matter.
//! Packets after a channel's last SYNC are applied after the main channels,
//! before the preempt channels.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};

use wire::command::Command;
use wire::ramrec::{BlockRef, RamRecord};
use wire::stream::{SectionKind, TopRecord};
use wire::walk::{Item, Mode, Spans, Walker};

mod multifd;

use crate::verify::memory::{compare_digests, BlockCompare, BlockDigests};
use crate::verify::report::Check;

/// Reconstructed RAM: block name → bytes.
#[derive(Default, Debug)]
pub struct Replay {
    pub blocks: BTreeMap<String, Vec<u8>>,
    /// Records applied (for reporting).
    pub pages: u64,
    pub zero_pages: u64,
    pub discarded_pages: u64,
    /// Of `pages` / `zero_pages`: those from multifd packets.
    pub multifd_pages: u64,
    pub multifd_zero_pages: u64,
    /// Non-empty recorded connections.
    pub recorded: usize,
    /// Decoded multifd channels, applied epoch by epoch.
    channels: Vec<multifd::Channel>,
    /// Sync markers seen on the main channel(s).
    markers: usize,
    /// Per-round (MULTIFD_FLUSH) or per-section (EOS) sync, once known.
    per_round: Option<bool>,
    /// The walker of the last main channel: a recovery channel continues
    /// it (the RAM section ids stay valid).
    walker: Option<Walker>,
}

impl Replay {
    fn apply(&mut self, rec: RamRecord, last: &mut Option<String>, off: u64) -> Result<()> {
        let mut name = |b: BlockRef| -> Result<String> {
            match b {
                BlockRef::Named(n) => {
                    *last = Some(n.to_string());
                    Ok(n.to_string())
                }
                BlockRef::Continue => {
                    last.clone().ok_or_else(|| anyhow!("CONTINUE without a block at {off}"))
                }
            }
        };
        match rec {
            RamRecord::MemSize { blocks, .. } => {
                for b in blocks {
                    self.blocks.entry(b.name).or_insert_with(|| vec![0; b.used_length as usize]);
                }
            }
            RamRecord::Page { addr, block, data } => {
                let n = name(block)?;
                let b = self
                    .blocks
                    .get_mut(&n)
                    .ok_or_else(|| anyhow!("page for unknown block {n:?} at {off}"))?;
                b[addr as usize..addr as usize + data.len()].copy_from_slice(data);
                self.pages += 1;
            }
            RamRecord::Zero { addr, block, fill } => {
                let n = name(block)?;
                let b = self
                    .blocks
                    .get_mut(&n)
                    .ok_or_else(|| anyhow!("zero page for unknown block {n:?} at {off}"))?;
                b[addr as usize..addr as usize + 4096].fill(fill);
                self.zero_pages += 1;
            }
            RamRecord::Eos | RamRecord::MultifdFlush => {}
            RamRecord::Xbzrle { addr, block, data } => {
                let n = name(block)?;
                let b = self
                    .blocks
                    .get_mut(&n)
                    .ok_or_else(|| anyhow!("xbzrle page for unknown block {n:?}"))?;
                wire::ramrec::xbzrle_decode(
                    data,
                    &mut b[addr as usize..addr as usize + 4096],
                    off,
                )?;
            }
            RamRecord::CompressPage { .. } => bail!("compressed pages are not supported in replay"),
            RamRecord::MappedRamSize { .. } | RamRecord::MappedRamBlock { .. } => {
                bail!("mapped-ram files are not replayed from recorded wire bytes")
            }
        }
        Ok(())
    }

    /// Replay a recorded main channel.
    pub fn main_channel(&mut self, bytes: &[u8]) -> Result<()> {
        self.channel(bytes, Walker::main(true, true))
    }

    /// Replay a postcopy recovery main channel (no stream header). It
    /// continues the stream of the last main channel: the RAM section ids
    /// stay known.
    pub fn recovery_channel(&mut self, bytes: &[u8]) -> Result<()> {
        let mut w = self.walker.take().unwrap_or_else(|| Walker::headerless(true));
        w.resume_headerless();
        self.channel(bytes, w)
    }

    /// Walk one main channel with the codec's record walker and apply its
    /// RAM records and discards; a recording that ends (cut) inside a record
    /// ends the replay of this channel.
    fn channel(&mut self, bytes: &[u8], w: Walker) -> Result<()> {
        let mut recs = w.spans(bytes);
        let r = self.walk_channel(&mut recs);
        self.walker = Some(recs.walker().clone());
        r
    }

    fn walk_channel(&mut self, recs: &mut Spans) -> Result<()> {
        let mut last: Option<String> = None;
        while let Some(r) = recs.next() {
            let (range, item) = match r {
                Ok(x) => x,
                // The recording ends inside a record (e.g. cut), but not
                // inside the stream header.
                Err(e)
                    if e.is_incomplete()
                        && !matches!(recs.walker().mode(), Mode::Header { .. }) =>
                {
                    return Ok(())
                }
                Err(e) => bail!("replay: {e}"),
            };
            let rec = match item {
                Item::Ram(rec) => {
                    self.sync_marker(&rec)?;
                    self.apply(rec, &mut last, range.start)?;
                    continue;
                }
                Item::Header(_) | Item::Footer { .. } | Item::Package(_) => continue,
                Item::VmDesc(_) => return Ok(()),
                Item::Top(rec) => rec,
            };
            match rec {
                TopRecord::SectionOpen { section_id, .. }
                | TopRecord::SectionCont { section_id, .. }
                    if recs.walker().is_ram_section(section_id)
                        && matches!(recs.walker().mode(), Mode::Ram { .. }) => {}
                // Device state: no RAM after it in precopy.
                TopRecord::SectionOpen { kind: SectionKind::Full, .. } => return Ok(()),
                TopRecord::SectionOpen { .. } | TopRecord::SectionCont { .. } => {
                    bail!("replay: unsupported live section before offset {}", range.end)
                }
                TopRecord::Command(rc) => {
                    let cmd = Command::parse(&rc).map_err(|e| anyhow!("replay: {e}"))?;
                    match cmd {
                        Command::PostcopyRamDiscard(d) => {
                            if let Some(b) = self.blocks.get_mut(&d.block) {
                                for (s, l) in d.ranges {
                                    b[s as usize..(s + l) as usize].fill(0);
                                    self.discarded_pages += l / 4096;
                                }
                            }
                        }
                        // The walker steps over the packaged blob.
                        Command::PostcopyListen | Command::PostcopyResume => {
                            // A new channel segment names its first block.
                            last = None;
                        }
                        _ => {}
                    }
                }
                TopRecord::Eof | TopRecord::VmDescription { .. } => return Ok(()),
            }
        }
        Ok(()) // the recording ends on a record boundary
    }

    /// At a main-channel sync marker, apply the multifd packets before it.
    fn sync_marker(&mut self, rec: &RamRecord) -> Result<()> {
        if self.channels.is_empty() {
            return Ok(());
        }
        let marker = match rec {
            RamRecord::MultifdFlush => {
                self.per_round = Some(true);
                true
            }
            // Per-round mode always has a FLUSH before the first EOS.
            RamRecord::Eos => !*self.per_round.get_or_insert(false),
            _ => false,
        };
        if marker {
            self.markers += 1;
            self.apply_multifd(Some(self.markers))?;
        }
        Ok(())
    }

    /// Apply the multifd epochs before `upto` (all with `None`).
    fn apply_multifd(&mut self, upto: Option<usize>) -> Result<()> {
        for ch in &mut self.channels {
            let (n, z) = ch.apply(upto, &mut self.blocks)?;
            self.pages += n;
            self.zero_pages += z;
            self.multifd_pages += n;
            self.multifd_zero_pages += z;
        }
        Ok(())
    }

    /// Decode a recorded multifd channel; its pages are applied at the main
    /// channel's sync markers (replay the main channels after this).
    pub fn multifd_channel(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.channels.push(multifd::Channel::decode(bytes)?);
        Ok(())
    }

    /// Replay a recorded postcopy-preempt channel (bare page records).
    pub fn preempt_channel(&mut self, bytes: &[u8]) -> Result<()> {
        let mut last = None;
        for r in Walker::bare().records(bytes) {
            match r {
                // Up to EOS, after which the walker ends.
                Ok((off, Item::Ram(rec))) => {
                    self.apply(rec, &mut last, off)?;
                }
                Ok((off, other)) => bail!("replay preempt: unexpected {other:?} at {off}"),
                Err(e) if e.is_incomplete() => return Ok(()),
                Err(e) => bail!("replay preempt: {e}"),
            }
        }
        Ok(())
    }

    pub fn page_digests(&self, block: &str) -> Option<Vec<u64>> {
        self.blocks.get(block).map(|b| wire::digest::page_digests(b, 4096))
    }

    /// Replay recorded connections (empty or missing files are skipped),
    /// classified by their first bytes: multifd channels (decoded first),
    /// main channels (the first with the stream header, recovery channels
    /// starting with a command) with the multifd packets applied at their
    /// sync markers, then the multifd packets after the last marker, then
    /// preempt channels.
    pub fn from_recordings(files: &[PathBuf]) -> Result<Replay> {
        let mut r = Replay::default();
        let mut mains = Vec::new();
        let mut preempt = Vec::new();
        for f in files {
            let b = match std::fs::read(f) {
                Ok(b) if !b.is_empty() => b,
                _ => continue,
            };
            r.recorded += 1;
            if multifd::is_multifd(&b) {
                r.multifd_channel(b)?;
            } else if b.starts_with(b"QEVM") || b[0] == wire::consts::QEMU_VM_COMMAND {
                mains.push(b);
            } else {
                preempt.push(b);
            }
        }
        for b in mains {
            if b.starts_with(b"QEVM") {
                r.main_channel(&b)?;
            } else {
                r.recovery_channel(&b)?;
            }
        }
        r.apply_multifd(None)?;
        for b in preempt {
            r.preempt_channel(&b)?;
        }
        Ok(r)
    }

    /// Multifd channels and their SYNC packets, for reporting.
    pub fn multifd_summary(&self) -> Option<String> {
        if self.channels.is_empty() {
            return None;
        }
        let syncs: Vec<usize> = self.channels.iter().map(|c| c.syncs()).collect();
        Some(format!(
            "{} multifd channel(s) ({} + {} zero pages, SYNC packets {syncs:?}, {} {} marker(s) on main)",
            self.channels.len(),
            self.multifd_pages,
            self.multifd_zero_pages,
            self.markers,
            if self.per_round == Some(true) { "MULTIFD_FLUSH" } else { "EOS" },
        ))
    }
}

/// Every RAMBlock a destination reports against the replay of the recorded
/// stream: one check ("every RAMBlock matches the recorded stream") and the
/// per-block comparisons. `connections` is how many were recorded.
pub fn check_replay(
    replay: &Replay,
    blocks: &[BlockDigests],
    connections: usize,
) -> (Check, Vec<BlockCompare>) {
    let mut bad = Vec::new();
    let mut compares = Vec::new();
    for b in blocks {
        let want = replay.page_digests(&b.name).unwrap_or_default();
        let c = compare_digests(
            &b.name,
            &want,
            &b.digests,
            "replay of the recorded stream vs rust-dest QMP page digests",
        );
        if !c.ok() {
            bad.push(c.to_string());
        }
        compares.push(c);
    }
    // Connections that carried bytes, when known.
    let connections = if replay.recorded > 0 { replay.recorded } else { connections };
    let n = blocks.len();
    let missing: Vec<_> =
        replay.blocks.keys().filter(|k| !blocks.iter().any(|b| &b.name == *k)).cloned().collect();
    let ok = bad.is_empty() && missing.is_empty() && n > 0;
    let detail = if bad.is_empty() && missing.is_empty() {
        format!(
            "{n} blocks, {connections} connection(s) recorded, {} pages + {} zero pages replayed{}",
            replay.pages,
            replay.zero_pages,
            replay.multifd_summary().map(|m| format!(", of which {m}")).unwrap_or_default()
        )
    } else {
        format!(
            "{}{}",
            bad.join("; "),
            if missing.is_empty() {
                String::new()
            } else {
                format!(" missing on rust-dest: {missing:?}")
            }
        )
    };
    (Check::new("every RAMBlock matches the recorded stream", ok, detail), compares)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::command::Discard;
    use wire::ramrec::{encode_ram_record, BlockEntry, RamContext};
    use wire::stream::*;
    use wire::Encoder;

    #[test]
    fn replays_pages_zero_and_discards() {
        let ctx = RamContext::x86();
        let mut e = Encoder::new();
        encode_header(
            &mut e,
            &Header {
                version: 3,
                configuration: Some(Configuration {
                    machine: "pc-q35-10.0".into(),
                    ..Default::default()
                }),
            },
        );
        encode_section_open(&mut e, SectionKind::Start, 2, "ram", 0, 4);
        let blocks = vec![BlockEntry {
            name: "a".into(),
            used_length: 4 * 4096,
            page_size: None,
            gpa: None,
        }];
        encode_ram_record(&mut e, &RamRecord::MemSize { total: 4 * 4096, blocks }, &ctx);
        encode_ram_record(&mut e, &RamRecord::Eos, &ctx);
        encode_footer(&mut e, 2);
        encode_section_cont(&mut e, SectionKind::Part, 2);
        let p1 = vec![1u8; 4096];
        let p2 = vec![2u8; 4096];
        encode_ram_record(
            &mut e,
            &RamRecord::Page { addr: 0, block: BlockRef::Named("a"), data: &p1 },
            &ctx,
        );
        encode_ram_record(
            &mut e,
            &RamRecord::Page { addr: 4096, block: BlockRef::Continue, data: &p2 },
            &ctx,
        );
        encode_ram_record(
            &mut e,
            &RamRecord::Page { addr: 8192, block: BlockRef::Continue, data: &p2 },
            &ctx,
        );
        encode_ram_record(&mut e, &RamRecord::Eos, &ctx);
        encode_footer(&mut e, 2);
        Command::PostcopyRamDiscard(Discard { block: "a".into(), ranges: vec![(4096, 4096)] })
            .encode(&mut e);
        encode_section_cont(&mut e, SectionKind::Part, 2);
        encode_ram_record(
            &mut e,
            &RamRecord::Zero { addr: 0, block: BlockRef::Named("a"), fill: 0 },
            &ctx,
        );
        encode_ram_record(&mut e, &RamRecord::Eos, &ctx);
        encode_footer(&mut e, 2);
        encode_eof(&mut e);
        let mut r = Replay::default();
        r.main_channel(&e.buf).unwrap();
        let b = &r.blocks["a"];
        assert!(b[..4096].iter().all(|&x| x == 0), "zero page overwrote page 0");
        assert!(b[4096..8192].iter().all(|&x| x == 0), "discarded");
        assert!(b[8192..12288].iter().all(|&x| x == 2));
        assert_eq!((r.pages, r.zero_pages, r.discarded_pages), (3, 1, 1));
        // The preempt channel: bare records.
        let mut p = Encoder::new();
        encode_ram_record(
            &mut p,
            &RamRecord::Page { addr: 4096, block: BlockRef::Named("a"), data: &p1 },
            &ctx,
        );
        r.preempt_channel(&p.buf).unwrap();
        assert!(r.blocks["a"][4096..8192].iter().all(|&x| x == 1));
    }

    #[test]
    fn recovery_channel_continues_the_main_channel() {
        let ctx = RamContext::x86();
        let hdr = Header {
            version: 3,
            configuration: Some(Configuration {
                machine: "pc-q35-10.0".into(),
                ..Default::default()
            }),
        };
        let mut e = Encoder::new();
        encode_header(&mut e, &hdr);
        encode_section_open(&mut e, SectionKind::Start, 5, "ram", 0, 4);
        let blocks =
            vec![BlockEntry { name: "a".into(), used_length: 8192, page_size: None, gpa: None }];
        encode_ram_record(&mut e, &RamRecord::MemSize { total: 8192, blocks }, &ctx);
        encode_ram_record(&mut e, &RamRecord::Eos, &ctx);
        encode_footer(&mut e, 5);
        encode_section_cont(&mut e, SectionKind::Part, 5);
        let p = vec![3u8; 4096];
        encode_ram_record(
            &mut e,
            &RamRecord::Page { addr: 0, block: BlockRef::Named("a"), data: &p },
            &ctx,
        );
        // The connection broke in the middle of the next page.
        let cut = e.buf.len() + 20;
        encode_ram_record(
            &mut e,
            &RamRecord::Page { addr: 4096, block: BlockRef::Continue, data: &p },
            &ctx,
        );
        let mut r = Replay::default();
        r.main_channel(&e.buf[..cut]).unwrap();
        assert_eq!(r.pages, 1);
        // The recovery channel: commands, then a part of the same RAM section.
        let mut rec = Encoder::new();
        Command::PostcopyResume.encode(&mut rec);
        encode_section_cont(&mut rec, SectionKind::Part, 5);
        encode_ram_record(
            &mut rec,
            &RamRecord::Page { addr: 4096, block: BlockRef::Named("a"), data: &p },
            &ctx,
        );
        encode_ram_record(&mut rec, &RamRecord::Eos, &ctx);
        encode_footer(&mut rec, 5);
        r.recovery_channel(&rec.buf).unwrap();
        assert_eq!(r.pages, 2);
        assert!(r.blocks["a"].iter().all(|&x| x == 3));
        // Without the main channel the section is unknown.
        let err = Replay::default().recovery_channel(&rec.buf).unwrap_err().to_string();
        assert!(err.contains("unsupported live section"), "{err}");
        // A recording cut inside the stream header is an error.
        let err = Replay::default().main_channel(&e.buf[..6]).unwrap_err().to_string();
        assert!(err.starts_with("replay: "), "{err}");
    }
}
