//! Expected RAMBlock contents reconstructed offline from recorded wire bytes.
//!
//! The source keeps its ROM blocks (pc.bios, ACPI tables, ...) in process
//! memory, so unlike guest RAM they cannot be read from a file. The harness
//! records what the source sent (main channel and, with postcopy-preempt,
//! the preempt channel) through its proxy, and this module replays the
//! recording with the codec, independently of rust-dest's loader: pages and
//! zero pages overwrite, discards zero, everything else is skipped. The
//! result is the RAM a correct destination must hold.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};

use wire::command::Command;
use wire::ramrec::{decode_ram_record, BlockRef, RamContext, RamRecord};
use wire::stream::{decode_header, decode_top, SectionKind, TopRecord};
use wire::Cursor;

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
    /// Section ids of "ram" (they stay valid on recovery channels).
    ram_ids: Vec<u32>,
}

impl Replay {
    fn apply(&mut self, rec: RamRecord, last: &mut Option<String>, off: u64) -> Result<bool> {
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
            RamRecord::Eos => return Ok(true),
            RamRecord::MultifdFlush => {}
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
        }
        Ok(false)
    }

    /// Replay a recorded main channel.
    pub fn main_channel(&mut self, bytes: &[u8]) -> Result<()> {
        self.channel(bytes, true)
    }

    /// Replay a postcopy recovery main channel (no stream header).
    pub fn recovery_channel(&mut self, bytes: &[u8]) -> Result<()> {
        self.channel(bytes, false)
    }

    fn channel(&mut self, bytes: &[u8], header: bool) -> Result<()> {
        let ctx = RamContext::x86();
        let mut c = Cursor::new(bytes, 0);
        if header {
            decode_header(&mut c, true).map_err(|e| anyhow!("replay: {e}"))?;
        }
        let mut last: Option<String> = None;
        loop {
            if c.remaining() == 0 {
                return Ok(()); // recording ends (e.g. cut)
            }
            let rec = match decode_top(&mut c) {
                Ok(r) => r,
                Err(e) if e.is_incomplete() => return Ok(()),
                Err(e) => bail!("replay: {e}"),
            };
            match rec {
                TopRecord::SectionOpen { kind, section_id, idstr, .. }
                    if idstr == "ram" && kind == SectionKind::Start =>
                {
                    self.ram_ids.push(section_id);
                    if !self.ram_section(&mut c, &ctx, &mut last)? || c.bytes(5, 0).is_err() {
                        return Ok(()); // the recording ends inside the section
                    }
                }
                TopRecord::SectionCont { section_id, .. } if self.ram_ids.contains(&section_id) => {
                    if !self.ram_section(&mut c, &ctx, &mut last)? || c.bytes(5, 0).is_err() {
                        return Ok(()); // the recording ends inside the section
                    }
                }
                // Device state: no RAM after it in precopy.
                TopRecord::SectionOpen { kind: SectionKind::Full, .. } => return Ok(()),
                TopRecord::SectionOpen { .. } | TopRecord::SectionCont { .. } => {
                    bail!("replay: unsupported live section before offset {}", c.offset())
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
                        Command::Packaged(len) if c.bytes(len as usize, 0).is_err() => {
                            return Ok(());
                        }
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
    }

    /// Returns false if the recording ends inside the section.
    fn ram_section(
        &mut self,
        c: &mut Cursor,
        ctx: &RamContext,
        last: &mut Option<String>,
    ) -> Result<bool> {
        loop {
            let off = c.offset();
            let rec = match decode_ram_record(c, ctx) {
                Ok(r) => r,
                // A recording cut inside a section (postcopy recovery).
                Err(e) if e.is_incomplete() => return Ok(false),
                Err(e) => bail!("replay: {e}"),
            };
            if self.apply(rec, last, off)? {
                return Ok(true);
            }
        }
    }

    /// Replay a recorded postcopy-preempt channel (bare page records).
    pub fn preempt_channel(&mut self, bytes: &[u8]) -> Result<()> {
        let ctx = RamContext::x86();
        let mut c = Cursor::new(bytes, 0);
        let mut last = None;
        while c.remaining() > 0 {
            let off = c.offset();
            match decode_ram_record(&mut c, &ctx) {
                Ok(rec) => {
                    if self.apply(rec, &mut last, off)? {
                        return Ok(());
                    }
                }
                Err(e) if e.is_incomplete() => return Ok(()),
                Err(e) => bail!("replay preempt: {e}"),
            }
        }
        Ok(())
    }

    pub fn page_digests(&self, block: &str) -> Option<Vec<u64>> {
        self.blocks.get(block).map(|b| wire::digest::page_digests(b, 4096))
    }

    /// Replay recorded connections (empty or missing files are skipped):
    /// main channels (the first with the stream header, recovery channels
    /// starting with a command), then preempt channels.
    pub fn from_recordings(files: &[PathBuf]) -> Result<Replay> {
        let mut r = Replay::default();
        let mut preempt = Vec::new();
        for f in files {
            let b = match std::fs::read(f) {
                Ok(b) if !b.is_empty() => b,
                _ => continue,
            };
            if b.starts_with(b"QEVM") {
                r.main_channel(&b)?;
            } else if b[0] == wire::consts::QEMU_VM_COMMAND {
                r.recovery_channel(&b)?;
            } else {
                preempt.push(b);
            }
        }
        for b in preempt {
            r.preempt_channel(&b)?;
        }
        Ok(r)
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
    let n = blocks.len();
    let missing: Vec<_> =
        replay.blocks.keys().filter(|k| !blocks.iter().any(|b| &b.name == *k)).cloned().collect();
    let ok = bad.is_empty() && missing.is_empty() && n > 0;
    let detail = if bad.is_empty() && missing.is_empty() {
        format!(
            "{n} blocks, {connections} connection(s) recorded, {} pages + {} zero pages replayed",
            replay.pages, replay.zero_pages
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
    use wire::ramrec::{encode_ram_record, BlockEntry};
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
}
