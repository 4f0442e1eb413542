//! A test-local walker over a whole recorded migration stream, built only on
//! the wire crate's public decoders: it lists every top-level record with its
//! byte range and replays the RAM records into per-block buffers.

use std::collections::BTreeMap;
use std::ops::Range;

use serde_json::Value;
use wire::command::Command;
use wire::ramrec::{decode_ram_record, BlockEntry, BlockRef, RamContext, RamRecord};
use wire::stream::{decode_footer, decode_header, decode_top, SectionKind, TopRecord};
use wire::vmdesc::{find_vmdesc_tail, package_section_ends, split_exact, split_with_vmdesc};
use wire::{Cursor, DecodeError, TARGET_PAGE_SIZE};

/// One top-level record (or a run the codec delimits as one unit).
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// Magic, version and configuration section.
    Header {
        machine: String,
    },
    /// A "ram" section: header, RAM records up to EOS, footer.
    Ram {
        kind: SectionKind,
        section_id: u32,
        records: usize,
    },
    /// A FULL device section (header, data, footer).
    Device {
        idstr: String,
        instance_id: u32,
        data_len: usize,
    },
    Command(Command),
    /// MIG_CMD_PACKAGED and the nested stream it carries.
    Package(Vec<Item>),
    Eof,
    VmDescription,
}

/// What the walk saw, in stream order.
#[derive(Default, Debug)]
pub struct Walk {
    /// Top-level items with their absolute byte ranges.
    pub items: Vec<(Range<u64>, Item)>,
    /// The MEM_SIZE list (first one seen).
    pub mem_size: Option<(u64, Vec<BlockEntry>)>,
    /// Replayed block contents (pages and zero pages written, discards zeroed).
    pub blocks: BTreeMap<String, Vec<u8>>,
    /// Per block, per target page: covered by a PAGE or ZERO record.
    pub covered: BTreeMap<String, Vec<bool>>,
    pub pages: u64,
    pub zero_pages: u64,
    /// PAGE/ZERO records that came after POSTCOPY_RUN (postcopy phase).
    pub pages_after_run: u64,
    /// The vmdesc JSON (precopy).
    pub vmdesc: Option<Value>,
    /// Absolute offsets of MULTIFD_FLUSH records (multifd sync points).
    pub flushes: Vec<u64>,
    /// Replay page contents into `blocks` (off: only decode and track coverage).
    replay: bool,
    run_seen: bool,
    last_block: Option<String>,
    ram_id: Option<u32>,
}

const TPS: usize = TARGET_PAGE_SIZE as usize;

impl Walk {
    fn apply(&mut self, rec: RamRecord, at: u64) -> Result<bool, DecodeError> {
        let mut block_name = |b: BlockRef| match b {
            BlockRef::Named(n) => {
                self.last_block = Some(n.to_string());
                Ok(n.to_string())
            }
            BlockRef::Continue => self
                .last_block
                .clone()
                .ok_or_else(|| DecodeError::invalid(at, "CONTINUE without a previous block")),
        };
        let (name, addr, fill, data) = match rec {
            RamRecord::MemSize { total, blocks } => {
                for b in &blocks {
                    let pages = b.used_length as usize / TPS;
                    if self.replay {
                        self.blocks.entry(b.name.clone()).or_insert_with(|| vec![0; pages * TPS]);
                    }
                    self.covered.entry(b.name.clone()).or_insert_with(|| vec![false; pages]);
                }
                self.mem_size.get_or_insert((total, blocks));
                return Ok(false);
            }
            RamRecord::Eos => return Ok(true),
            RamRecord::MultifdFlush => {
                self.flushes.push(at);
                return Ok(false);
            }
            RamRecord::Page { addr, block, data } => (block_name(block)?, addr, 0, Some(data)),
            RamRecord::Zero { addr, block, fill } => (block_name(block)?, addr, fill, None),
            other => {
                return Err(DecodeError::invalid(at, format!("unexpected RAM record {other:?}")))
            }
        };
        let cov = self
            .covered
            .get_mut(&name)
            .ok_or_else(|| DecodeError::invalid(at, format!("page for unknown block {name:?}")))?;
        let a = addr as usize;
        *cov.get_mut(a / TPS).ok_or_else(|| {
            DecodeError::invalid(at, format!("page {addr:#x} past block {name:?}"))
        })? = true;
        let mem = self.blocks.get_mut(&name).filter(|_| self.replay);
        match data {
            Some(d) => {
                if let Some(mem) = mem {
                    mem[a..a + TPS].copy_from_slice(d);
                }
                self.pages += 1;
            }
            None => {
                if let Some(mem) = mem {
                    mem[a..a + TPS].fill(fill);
                }
                self.zero_pages += 1;
            }
        }
        if self.run_seen {
            self.pages_after_run += 1;
        }
        Ok(false)
    }

    /// RAM records up to EOS, then the footer of `id`.
    fn ram_body(&mut self, c: &mut Cursor, id: u32) -> Result<usize, DecodeError> {
        let ctx = RamContext::x86();
        let mut n = 0;
        loop {
            let at = c.offset();
            let rec = decode_ram_record(c, &ctx)?;
            n += 1;
            if self.apply(rec, at)? {
                decode_footer(c, id)?;
                return Ok(n);
            }
        }
    }

    fn command(&mut self, cmd: &Command) {
        match cmd {
            Command::PostcopyRamDiscard(d) => {
                if let Some(mem) = self.blocks.get_mut(&d.block) {
                    for &(s, l) in &d.ranges {
                        mem[s as usize..(s + l) as usize].fill(0);
                    }
                }
            }
            // The destination starts a new "last block" after LISTEN: the
            // source names the block of its next page again.
            Command::PostcopyListen => self.last_block = None,
            Command::PostcopyRun => self.run_seen = true,
            _ => {}
        }
    }

    /// The nested stream of a PACKAGED blob: commands and FULL sections,
    /// delimited with the codec's whole-blob parse.
    fn package(&mut self, blob: &[u8], base: u64) -> Result<Vec<Item>, DecodeError> {
        let ends = package_section_ends(blob)
            .ok_or_else(|| DecodeError::invalid(base, "package has no complete parse"))?;
        let mut c = Cursor::new(blob, base);
        let mut items = Vec::new();
        while c.remaining() > 0 {
            let pos = c.pos();
            match decode_top(&mut c)? {
                TopRecord::Command(rc) => {
                    let cmd = Command::parse(&rc)?;
                    self.command(&cmd);
                    items.push(Item::Command(cmd));
                }
                TopRecord::SectionOpen { kind: SectionKind::Full, .. } => {
                    let end = *ends.get(&pos).ok_or_else(|| {
                        DecodeError::invalid(base + pos as u64, "section not delimited")
                    })?;
                    let (s, next) = split_exact(blob, pos, end, base)?;
                    items.push(Item::Device {
                        idstr: s.idstr,
                        instance_id: s.instance_id,
                        data_len: s.data.len(),
                    });
                    c.set_pos(next);
                }
                other => {
                    return Err(DecodeError::invalid(
                        base + pos as u64,
                        format!("unexpected record in package: {other:?}"),
                    ))
                }
            }
        }
        Ok(items)
    }

    /// The run of FULL device sections of a precopy completion: delimited
    /// with the vmdesc JSON at the stream's end, so the walk needs the tail.
    fn device_run(&mut self, c: &mut Cursor) -> Result<(), DecodeError> {
        let at = c.offset();
        let rest = c.rest();
        let (eof_pos, json) =
            find_vmdesc_tail(rest).ok_or(DecodeError::Incomplete { at, needed: 1 })?;
        let secs = split_with_vmdesc(&rest[..eof_pos], at, &json)?;
        let pos0 = c.pos();
        for s in secs {
            // split_with_vmdesc checked the 5-byte footer after the data.
            let range = at + s.header_pos as u64..at + (s.data.end + 5) as u64;
            let item =
                Item::Device { idstr: s.idstr, instance_id: s.instance_id, data_len: s.data.len() };
            self.items.push((range, item));
        }
        c.set_pos(pos0 + eof_pos);
        self.vmdesc = Some(json);
        Ok(())
    }

    fn top(&mut self, c: &mut Cursor) -> Result<bool, DecodeError> {
        let start = c.offset();
        let pos = c.pos();
        let rec = decode_top(c)?;
        let item = match rec {
            TopRecord::SectionOpen {
                kind: SectionKind::Start, section_id, idstr: "ram", ..
            } => {
                self.ram_id = Some(section_id);
                let records = self.ram_body(c, section_id)?;
                Item::Ram { kind: SectionKind::Start, section_id, records }
            }
            TopRecord::SectionCont { kind, section_id } if Some(section_id) == self.ram_id => {
                let records = self.ram_body(c, section_id)?;
                Item::Ram { kind, section_id, records }
            }
            TopRecord::SectionOpen { kind: SectionKind::Full, .. } => {
                c.set_pos(pos);
                self.device_run(c)?;
                return Ok(false);
            }
            TopRecord::Command(rc) => {
                let cmd = Command::parse(&rc)?;
                self.command(&cmd);
                if let Command::Packaged(len) = cmd {
                    let blob_at = c.offset();
                    let blob = c.bytes(len as usize, start)?;
                    Item::Package(self.package(blob, blob_at)?)
                } else {
                    Item::Command(cmd)
                }
            }
            TopRecord::Eof => Item::Eof,
            TopRecord::VmDescription { json } => {
                let v: Value = serde_json::from_slice(json)
                    .map_err(|e| DecodeError::invalid(start, format!("vmdesc JSON: {e}")))?;
                if self.vmdesc.as_ref() != Some(&v) {
                    return Err(DecodeError::invalid(start, "vmdesc differs from the tail"));
                }
                Item::VmDescription
            }
            other => {
                return Err(DecodeError::invalid(start, format!("unexpected record {other:?}")))
            }
        };
        let done = matches!(item, Item::Eof | Item::VmDescription) && c.remaining() == 0;
        self.items.push((start..c.offset(), item));
        Ok(done)
    }
}

/// Walk `buf` from its header to the end, replaying RAM contents if
/// `replay`. The error, if any, is the first one met; `Walk` holds
/// everything decoded before it.
pub fn walk(buf: &[u8], replay: bool) -> (Walk, Result<(), DecodeError>) {
    let mut w = Walk { replay, ..Walk::default() };
    let mut c = Cursor::new(buf, 0);
    let r = (|| {
        let h = decode_header(&mut c, true)?;
        let machine = h.configuration.map(|cfg| cfg.machine).unwrap_or_default();
        w.items.push((0..c.offset(), Item::Header { machine }));
        while !w.top(&mut c)? {}
        Ok(())
    })();
    (w, r)
}
