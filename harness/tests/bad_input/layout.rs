//! The layout of the recorded stream: the structural offsets the damage
//! cases aim at, found by walking the recording with `wire::walk::Walker`.

use wire::ramrec::{BlockRef, RamRecord};
use wire::stream::{SectionKind, TopRecord};
use wire::vmdesc;
use wire::walk::{Item, Mode, Walker};
use wire::DecodeError;

/// One page record found in the stream.
#[derive(Clone, Debug)]
pub struct PageRec {
    pub off: u64,
    /// Whole record length (word, optional name, body).
    pub len: u64,
    /// Flag bits (low 12 bits of the word), e.g. 0x08 PAGE, 0x02 ZERO, 0x20 CONTINUE.
    pub flags: u64,
    pub addr: u64,
    /// The block it is in (resolved through CONTINUE).
    pub block: String,
    /// Carries its block name (no CONTINUE).
    pub named: bool,
}

#[derive(Debug)]
pub struct Layout {
    pub len: u64,
    /// First byte after magic, version and the configuration section.
    pub header_end: u64,
    pub machine: String,
    pub ram_id: u32,
    /// The START "ram" section header.
    pub ram_start: u64,
    /// The MEM_SIZE record (first record of the START section).
    pub mem_size: u64,
    pub mem_total: u64,
    /// MEM_SIZE entries: (offset of the entry, name, used_length).
    pub blocks: Vec<(u64, String, u64)>,
    /// First byte after the START section's footer (a record boundary).
    pub start_footer_end: u64,
    /// First page record of the stream (ZERO or PAGE; always named).
    pub first_page: PageRec,
    /// First PAGE (raw data) record.
    pub first_data_page: PageRec,
    /// Top-level commands: (offset, cmd).
    pub commands: Vec<(u64, u16)>,
    pub ram_sections: usize,
    /// First FULL (device state) section.
    pub first_full: u64,
    /// The EOF byte (0x00); the vmdesc (0x06, be32 len, JSON) follows.
    pub eof: u64,
}

impl Layout {
    pub fn block_len(&self, name: &str) -> u64 {
        self.blocks
            .iter()
            .find(|b| b.1 == name)
            .map(|b| b.2)
            .unwrap_or_else(|| panic!("block {name:?} not in MEM_SIZE"))
    }
}

/// What the walker was reading when it stopped on an error.
fn reading(mode: Mode) -> &'static str {
    match mode {
        Mode::Header { .. } => "header",
        Mode::Ram { .. } | Mode::Bare => "ram record",
        Mode::Footer { .. } => "section footer",
        Mode::Top | Mode::Package { .. } | Mode::AfterEof | Mode::Done => "top-level record",
    }
}

pub fn parse_layout(data: &[u8]) -> Result<Layout, String> {
    let mut recs = Walker::main(true, true).spans(data);
    let (mut header_end, mut machine) = (0, String::new());
    let (mut ram_id, mut ram_start, mut mem_size, mut mem_total) = (None, 0, 0, 0);
    let mut blocks = Vec::new();
    let mut start_footer_end = 0;
    let (mut first_page, mut first_data_page) = (None::<PageRec>, None::<PageRec>);
    let mut commands = Vec::new();
    let mut ram_sections = 0;
    let mut last_block = String::new();
    let first_full = loop {
        let (range, item) = match recs.next() {
            Some(Ok(r)) => r,
            Some(Err(err)) => {
                let what = reading(recs.walker().mode());
                return Err(format!("parsing the recorded stream ({what}): {err}"));
            }
            // Ends on a record boundary: one more byte was needed.
            None => {
                let err = DecodeError::Incomplete { at: recs.position() as u64, needed: 1 };
                return Err(format!("parsing the recorded stream (top-level record): {err}"));
            }
        };
        let off = range.start;
        let rec = match item {
            Item::Header(hdr) => {
                header_end = range.end;
                machine = hdr.configuration.map(|c| c.machine).unwrap_or_default();
                continue;
            }
            Item::Ram(rec) => rec,
            Item::Footer { .. } => {
                if start_footer_end == 0 {
                    start_footer_end = range.end;
                }
                continue;
            }
            Item::Top(TopRecord::SectionOpen { kind: SectionKind::Full, .. }) => break off,
            Item::Top(TopRecord::Command(rc)) => {
                commands.push((off, rc.cmd));
                continue;
            }
            Item::Top(rec @ (TopRecord::SectionOpen { .. } | TopRecord::SectionCont { .. })) => {
                match rec {
                    TopRecord::SectionOpen {
                        kind: SectionKind::Start,
                        section_id,
                        idstr: "ram",
                        instance_id: 0,
                        ..
                    } => {
                        if ram_id.is_some() {
                            return Err(format!("second START \"ram\" at {off}"));
                        }
                        ram_id = Some(section_id);
                        ram_start = off;
                    }
                    TopRecord::SectionCont { section_id, .. } if Some(section_id) == ram_id => {}
                    other => return Err(format!("unexpected record at {off}: {other:?}")),
                }
                ram_sections += 1;
                continue;
            }
            Item::Top(TopRecord::Eof) => {
                return Err(format!("EOF at {off} before any device state"))
            }
            Item::Top(TopRecord::VmDescription { .. }) => {
                return Err(format!("VMDESCRIPTION at {off} before EOF"))
            }
            other @ (Item::Package(_) | Item::VmDesc(_)) => {
                return Err(format!("unexpected record at {off}: {other:?}"))
            }
        };
        // A RAM record of the START or a PART "ram" section.
        let (roff, rlen) = (off, range.end - range.start);
        let flags =
            u64::from_be_bytes(data[roff as usize..roff as usize + 8].try_into().unwrap()) & 0xfff;
        let (addr, block) = match rec {
            RamRecord::MemSize { total, blocks: bl } => {
                mem_size = roff;
                mem_total = total;
                let mut eo = roff + 8;
                for b in bl {
                    blocks.push((eo, b.name.clone(), b.used_length));
                    eo += 1 + b.name.len() as u64 + 8;
                }
                continue;
            }
            RamRecord::Eos => continue,
            RamRecord::Page { addr, block, .. } | RamRecord::Zero { addr, block, .. } => {
                (addr, block)
            }
            other => return Err(format!("unexpected ram record at {roff}: {other:?}")),
        };
        let named = matches!(block, BlockRef::Named(_));
        if let BlockRef::Named(n) = block {
            last_block = n.to_string();
        }
        let pr = PageRec { off: roff, len: rlen, flags, addr, block: last_block.clone(), named };
        if first_page.is_none() {
            first_page = Some(pr.clone());
        }
        if first_data_page.is_none() && flags & 0x08 != 0 {
            first_data_page = Some(pr);
        }
    };
    let (eof_pos, _) =
        vmdesc::find_vmdesc_tail(&data[first_full as usize..]).ok_or("no vmdesc tail found")?;
    Ok(Layout {
        len: data.len() as u64,
        header_end,
        machine,
        ram_id: ram_id.ok_or("no ram section")?,
        ram_start,
        mem_size,
        mem_total,
        blocks,
        start_footer_end,
        first_page: first_page.ok_or("no page record")?,
        first_data_page: first_data_page.ok_or("no PAGE record")?,
        commands,
        ram_sections,
        first_full,
        eof: first_full + eof_pos as u64,
    })
}
