//! The incremental top-level record walker (sans-I/O): feed it the bytes
//! available so far, get the next record of the stream or `NeedMore`.
//!
//! It knows the stream's framing (`docs/wire-format.md`; QEMU's
//! `migration/savevm.c` load loop and `migration/ram.c` section bodies): the
//! header, top-level records, the RAM records inside a RAM section up to EOS,
//! the section footer, the blob after `MIG_CMD_PACKAGED`, and the vmdesc after
//! EOF. It decides nothing else: checking what a record means is the caller's
//! job. The same walker serves a network reader (window by window), a
//! recorded stream held in memory ([`Walker::records`]), and tests.

use std::ops::Range;

use crate::consts::*;
use crate::cursor::{Cursor, DecodeError};
use crate::ramrec::{
    decode_mapped_ram_block, decode_mapped_ram_record, decode_ram_record, RamContext, RamRecord,
};
use crate::stream::{decode_footer, decode_header, decode_top, Header, SectionKind, TopRecord};

/// What the walker expects next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The stream header (magic, version, configuration if `expect_cfg`).
    Header { expect_cfg: bool },
    /// A top-level record.
    Top,
    /// RAM records of the RAM section `section_id`, up to EOS.
    Ram { section_id: u32 },
    /// The footer closing `section_id`.
    Footer { section_id: u32 },
    /// The blob of `len` bytes following `MIG_CMD_PACKAGED`.
    Package { len: u32 },
    /// After EOF: the VMDESCRIPTION record.
    AfterEof,
    /// A bare sequence of RAM records (the postcopy-preempt channel).
    Bare,
    /// Nothing more is expected (after EOS on a bare channel, after vmdesc).
    Done,
}

/// One record, borrowed from the window it was decoded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item<'a> {
    Header(Header),
    Top(TopRecord<'a>),
    Ram(RamRecord<'a>),
    /// The footer of `section_id` (already checked to name it).
    Footer {
        section_id: u32,
    },
    /// The PACKAGED blob.
    Package(&'a [u8]),
    /// The vmdesc JSON after EOF.
    VmDesc(&'a [u8]),
}

/// The result of one step.
#[derive(Debug, PartialEq, Eq)]
pub enum Walked<'a> {
    /// A record starting at absolute offset `offset`, `len` bytes long. The
    /// caller must consume exactly `len` bytes before the next step.
    Record { item: Item<'a>, offset: u64, len: usize },
    /// The window ends inside the record starting at `at`; at least `needed`
    /// more bytes are required. Nothing was consumed.
    NeedMore { at: u64, needed: usize },
    /// Mode [`Mode::Done`]: the walker expects nothing more.
    End,
}

/// The walker state.
#[derive(Clone, Debug)]
pub struct Walker {
    mode: Mode,
    footers: bool,
    ctx: RamContext,
    ram_ids: Vec<u32>,
    /// The `mapped-ram` capability is on (MEM_SIZE lists change).
    mapped_ram: bool,
    /// Bytes of RAM whose mapped-ram block entries are still to come.
    mapped_left: u64,
}

impl Walker {
    /// A main channel starting with the header.
    pub fn main(expect_cfg: bool, footers: bool) -> Walker {
        Walker::with_mode(Mode::Header { expect_cfg }, footers)
    }
    /// A channel of top-level records without a header (postcopy recovery).
    pub fn headerless(footers: bool) -> Walker {
        Walker::with_mode(Mode::Top, footers)
    }
    /// A bare sequence of RAM records (the postcopy-preempt channel).
    pub fn bare() -> Walker {
        Walker::with_mode(Mode::Bare, false)
    }
    pub fn with_mode(mode: Mode, footers: bool) -> Walker {
        Walker {
            mode,
            footers,
            ctx: RamContext::x86(),
            ram_ids: Vec::new(),
            mapped_ram: false,
            mapped_left: 0,
        }
    }
    pub fn mode(&self) -> Mode {
        self.mode
    }
    pub fn ram_context(&self) -> &RamContext {
        &self.ctx
    }
    /// The configuration announced `x-ignore-shared` (RAM records change).
    pub fn set_ignore_shared(&mut self, on: bool) {
        self.ctx.ignore_shared = on;
    }
    /// The `mapped-ram` capability is on: MEM_SIZE is followed by one
    /// [`RamRecord::MappedRamBlock`] per block, after each of which the
    /// caller continues at the file offset the record names
    /// ([`crate::mapped_ram`]).
    pub fn set_mapped_ram(&mut self, on: bool) {
        self.mapped_ram = on;
    }
    /// Blocks whose MEM_SIZE entry carries a page size (the destination's
    /// own blocks of another page size than the host's, once postcopy-ram
    /// was advised; `migration/ram.c: parse_ramblock()`).
    pub fn set_hugepage_blocks(&mut self, names: Vec<String>) {
        self.ctx.hugepage_blocks = names;
    }
    /// Continue the same stream on a new channel (recovery): the RAM section
    /// ids stay known.
    pub fn resume_headerless(&mut self) {
        self.mode = Mode::Top;
    }
    /// Whether `section_id` was opened as a RAM section.
    pub fn is_ram_section(&self, section_id: u32) -> bool {
        self.ram_ids.contains(&section_id)
    }

    /// Decode the next record from `window`, whose first byte sits at
    /// absolute offset `base`. Protocol violations are `Err`.
    pub fn next<'a>(&mut self, window: &'a [u8], base: u64) -> Result<Walked<'a>, DecodeError> {
        let mut c = Cursor::new(window, base);
        let offset = base;
        let (item, next) = match self.mode {
            Mode::Done => return Ok(Walked::End),
            Mode::Header { expect_cfg } => match decode_header(&mut c, expect_cfg) {
                Ok(h) => (Item::Header(h), Mode::Top),
                Err(DecodeError::Incomplete { at, needed }) => {
                    return Ok(Walked::NeedMore { at, needed })
                }
                Err(e) => return Err(e),
            },
            Mode::Top => {
                let r = match decode_top(&mut c) {
                    Ok(r) => r,
                    Err(DecodeError::Incomplete { at, needed }) => {
                        return Ok(Walked::NeedMore { at, needed })
                    }
                    Err(e) => return Err(e),
                };
                let next = match &r {
                    TopRecord::SectionOpen {
                        kind: SectionKind::Start,
                        section_id,
                        idstr: "ram",
                        instance_id: 0,
                        ..
                    } => {
                        self.ram_ids.push(*section_id);
                        Mode::Ram { section_id: *section_id }
                    }
                    TopRecord::SectionCont { section_id, .. }
                        if self.ram_ids.contains(section_id) =>
                    {
                        Mode::Ram { section_id: *section_id }
                    }
                    TopRecord::Command(rc)
                        if rc.cmd == MIG_CMD_PACKAGED && rc.payload.len() == 4 =>
                    {
                        let len = u32::from_be_bytes(rc.payload.try_into().expect("4 bytes"));
                        Mode::Package { len }
                    }
                    TopRecord::Eof => Mode::AfterEof,
                    _ => Mode::Top,
                };
                (Item::Top(r), next)
            }
            Mode::Ram { section_id } => match self.decode_ram(&mut c, offset) {
                Ok(r) => {
                    let next = match r {
                        RamRecord::Eos if self.footers => Mode::Footer { section_id },
                        RamRecord::Eos => Mode::Top,
                        _ => self.mode,
                    };
                    (Item::Ram(r), next)
                }
                Err(DecodeError::Incomplete { at, needed }) => {
                    return Ok(Walked::NeedMore { at, needed })
                }
                Err(e) => return Err(e),
            },
            Mode::Bare => match decode_ram_record(&mut c, &self.ctx) {
                Ok(r) => {
                    let next = if matches!(r, RamRecord::Eos) { Mode::Done } else { Mode::Bare };
                    (Item::Ram(r), next)
                }
                Err(DecodeError::Incomplete { at, needed }) => {
                    return Ok(Walked::NeedMore { at, needed })
                }
                Err(e) => return Err(e),
            },
            Mode::Footer { section_id } => match decode_footer(&mut c, section_id) {
                Ok(()) => (Item::Footer { section_id }, Mode::Top),
                Err(DecodeError::Incomplete { at, needed }) => {
                    return Ok(Walked::NeedMore { at, needed })
                }
                Err(e) => return Err(e),
            },
            Mode::Package { len } => match c.bytes(len as usize, offset) {
                Ok(b) => (Item::Package(b), Mode::Top),
                Err(DecodeError::Incomplete { at, needed }) => {
                    return Ok(Walked::NeedMore { at, needed })
                }
                Err(e) => return Err(e),
            },
            Mode::AfterEof => match decode_vmdesc(&mut c) {
                Ok(j) => (Item::VmDesc(j), Mode::Done),
                Err(DecodeError::Incomplete { at, needed }) => {
                    return Ok(Walked::NeedMore { at, needed })
                }
                Err(e) => return Err(e),
            },
        };
        self.mode = next;
        Ok(Walked::Record { item, offset, len: c.pos() })
    }

    /// A RAM record of a RAM section, with the mapped-ram block list.
    fn decode_ram<'a>(
        &mut self,
        c: &mut Cursor<'a>,
        offset: u64,
    ) -> Result<RamRecord<'a>, DecodeError> {
        if self.mapped_left > 0 {
            let r = decode_mapped_ram_block(c, &self.ctx)?;
            if let RamRecord::MappedRamBlock { entry, .. } = &r {
                if entry.used_length > self.mapped_left {
                    return Err(DecodeError::invalid(offset, format!(
                        "MEM_SIZE: block {:?} (length {:#x}) takes the sum past the announced total ({:#x} left)",
                        entry.name, entry.used_length, self.mapped_left
                    )));
                }
                self.mapped_left -= entry.used_length;
            }
            return Ok(r);
        }
        if !self.mapped_ram {
            return decode_ram_record(c, &self.ctx);
        }
        let r = decode_mapped_ram_record(c, &self.ctx)?;
        if let RamRecord::MappedRamSize { total } = r {
            self.mapped_left = total;
        }
        Ok(r)
    }

    /// Walk a whole stream held in memory: every record with its offset, then
    /// `Err(Incomplete)` if the bytes end inside a record, or the protocol
    /// error that stopped the walk. Ends after `Done` or at the end of the
    /// bytes on a record boundary.
    pub fn records<'a>(self, bytes: &'a [u8]) -> Records<'a> {
        Records { w: self, bytes, pos: 0, stopped: false, pending: None }
    }

    /// Like [`Walker::records`], with each record's byte range
    /// (`start..end`, absolute offsets) instead of its start alone.
    pub fn spans<'a>(self, bytes: &'a [u8]) -> Spans<'a> {
        Spans(self.records(bytes))
    }
}

/// Iterator returned by [`Walker::records`].
pub struct Records<'a> {
    w: Walker,
    bytes: &'a [u8],
    pos: usize,
    stopped: bool,
    /// An error to report after the record just returned.
    pending: Option<DecodeError>,
}

impl Records<'_> {
    /// The walker (its mode tells where the walk stopped).
    pub fn walker(&self) -> &Walker {
        &self.w
    }
    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<(u64, Item<'a>), DecodeError>;
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending.take() {
            self.stopped = true;
            return Some(Err(e));
        }
        if self.stopped {
            return None;
        }
        let rest = &self.bytes[self.pos..];
        match self.w.next(rest, self.pos as u64) {
            Ok(Walked::Record { item, offset, len }) => {
                self.pos += len;
                // mapped-ram: the stream goes on after the block's pages.
                if let Item::Ram(RamRecord::MappedRamBlock { entry, header }) = &item {
                    match header.pages_offset.checked_add(entry.used_length) {
                        Some(n) if n <= self.bytes.len() as u64 => self.pos = n as usize,
                        n => {
                            self.pos = self.bytes.len();
                            self.pending = Some(DecodeError::invalid(offset, format!(
                                "mapped-ram block {:?}: the stream continues at offset {} past the end ({} bytes)",
                                entry.name,
                                n.map_or("(overflow)".to_string(), |n| format!("{n:#x}")),
                                self.bytes.len()
                            )));
                        }
                    }
                }
                Some(Ok((offset, item)))
            }
            Ok(Walked::End) => None,
            Ok(Walked::NeedMore { .. }) if rest.is_empty() => None,
            Ok(Walked::NeedMore { at, needed }) => {
                self.stopped = true;
                Some(Err(DecodeError::Incomplete { at, needed }))
            }
            Err(e) => {
                self.stopped = true;
                Some(Err(e))
            }
        }
    }
}

/// Iterator returned by [`Walker::spans`].
pub struct Spans<'a>(Records<'a>);

impl Spans<'_> {
    /// The walker (its mode tells where the walk stopped, or which part of
    /// the stream an error came from).
    pub fn walker(&self) -> &Walker {
        self.0.walker()
    }
    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.0.position()
    }
}

impl<'a> Iterator for Spans<'a> {
    type Item = Result<(Range<u64>, Item<'a>), DecodeError>;
    fn next(&mut self) -> Option<Self::Item> {
        Some(self.0.next()?.map(|(start, item)| (start..self.0.position() as u64, item)))
    }
}

/// `0x06 be32 len JSON` (the vmdesc after EOF).
fn decode_vmdesc<'a>(c: &mut Cursor<'a>) -> Result<&'a [u8], DecodeError> {
    let start = c.offset();
    let save = c.pos();
    let r = (|| {
        let t = c.u8(start)?;
        if t != QEMU_VM_VMDESCRIPTION {
            return Err(DecodeError::invalid(
                start,
                format!("expected VMDESCRIPTION (0x06) after EOF, found {t:#04x}"),
            ));
        }
        let l = c.be32(start)? as usize;
        c.bytes(l, start)
    })();
    if r.is_err() {
        c.set_pos(save);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::ramrec::{encode_ram_record, BlockEntry, BlockRef};
    use crate::stream::*;
    use crate::Encoder;

    fn stream() -> Vec<u8> {
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
            name: "pc.ram".into(),
            used_length: 8192,
            page_size: None,
            gpa: None,
        }];
        encode_ram_record(&mut e, &RamRecord::MemSize { total: 8192, blocks }, &ctx);
        encode_ram_record(&mut e, &RamRecord::Eos, &ctx);
        encode_footer(&mut e, 2);
        encode_section_cont(&mut e, SectionKind::Part, 2);
        let page = [7u8; 4096];
        let p = RamRecord::Page { addr: 4096, block: BlockRef::Named("pc.ram"), data: &page };
        encode_ram_record(&mut e, &p, &ctx);
        encode_ram_record(&mut e, &RamRecord::Eos, &ctx);
        encode_footer(&mut e, 2);
        let mut pkg = Encoder::new();
        encode_eof(&mut pkg);
        Command::Packaged(pkg.buf.len() as u32).encode(&mut e);
        e.bytes(&pkg.buf);
        encode_eof(&mut e);
        encode_vmdesc(&mut e, b"{}");
        e.buf
    }

    #[test]
    fn walks_everything_in_memory() {
        let s = stream();
        let recs: Vec<_> = Walker::main(true, true).records(&s).collect::<Result<_, _>>().unwrap();
        let kinds: Vec<&str> = recs
            .iter()
            .map(|(_, i)| match i {
                Item::Header(_) => "hdr",
                Item::Top(_) => "top",
                Item::Ram(RamRecord::Eos) => "eos",
                Item::Ram(_) => "ram",
                Item::Footer { .. } => "foot",
                Item::Package(_) => "pkg",
                Item::VmDesc(_) => "vmdesc",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "hdr", "top", "ram", "eos", "foot", "top", "ram", "eos", "foot", "top", "pkg",
                "top", "vmdesc"
            ]
        );
    }

    #[test]
    fn every_cut_needs_more_and_byte_by_byte_feeding_works() {
        let s = stream();
        let all: Vec<_> = Walker::main(true, true).records(&s).map(|r| r.unwrap().0).collect();
        for cut in 1..s.len() {
            let last = Walker::main(true, true).records(&s[..cut]).last().unwrap();
            // The configuration carries no length: at the very end of the
            // bytes the header decoder cannot know no subsection follows.
            if cut as u64 == all[1] {
                continue;
            }
            if all.contains(&(cut as u64)) {
                assert!(last.is_ok(), "cut {cut}");
            } else {
                assert!(matches!(last, Err(DecodeError::Incomplete { .. })), "cut {cut}: {last:?}");
            }
        }
        // Growing window, as a reader would feed it.
        let mut w = Walker::main(true, true);
        let (mut pos, mut end, mut n) = (0usize, 0usize, 0);
        loop {
            match w.next(&s[pos..end], pos as u64).unwrap() {
                Walked::Record { len, .. } => {
                    pos += len;
                    n += 1;
                }
                Walked::NeedMore { at, .. } => {
                    assert_eq!(at, pos as u64);
                    end += 1;
                }
                Walked::End => break,
            }
        }
        assert_eq!(n, all.len());
    }

    #[test]
    fn spans_tile_the_stream() {
        let s = stream();
        let mut spans = Walker::main(true, true).spans(&s);
        let mut end = 0;
        let mut n = 0;
        for r in spans.by_ref() {
            let (range, item) = r.unwrap();
            assert_eq!(range.start, end, "records are contiguous");
            assert!(range.end > range.start);
            if let Item::Ram(RamRecord::Page { .. }) = item {
                // word + counted name + the page
                assert_eq!(range.end - range.start, 8 + 1 + 6 + 4096);
            }
            end = range.end;
            n += 1;
        }
        assert_eq!(end, s.len() as u64);
        assert_eq!(spans.position(), s.len());
        assert_eq!(spans.walker().mode(), Mode::Done);
        assert_eq!(n, Walker::main(true, true).records(&s).count());
        // A cut inside the page: the walk stops there, in RAM mode, with
        // the position at the page's start.
        let page = Walker::main(true, true)
            .spans(&s)
            .map(|r| r.unwrap())
            .find(|(_, i)| matches!(i, Item::Ram(RamRecord::Page { .. })))
            .unwrap()
            .0;
        let cut = (page.start + 100) as usize;
        let mut spans = Walker::main(true, true).spans(&s[..cut]);
        let err = spans.by_ref().find_map(|r| r.err());
        assert!(matches!(err, Some(DecodeError::Incomplete { .. })), "{err:?}");
        assert_eq!(spans.position() as u64, page.start);
        assert_eq!(spans.walker().mode(), Mode::Ram { section_id: 2 });
        // The bare (postcopy-preempt) channel: RAM records up to EOS.
        let ctx = RamContext::x86();
        let mut e = crate::Encoder::new();
        let page = [1u8; 4096];
        let p = RamRecord::Page { addr: 0, block: BlockRef::Named("pc.ram"), data: &page };
        encode_ram_record(&mut e, &p, &ctx);
        encode_ram_record(&mut e, &RamRecord::Eos, &ctx);
        let spans: Vec<_> = Walker::bare().spans(&e.buf).collect::<Result<_, _>>().unwrap();
        let ranges: Vec<_> = spans.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(ranges, [0..8 + 1 + 6 + 4096, 8 + 1 + 6 + 4096..e.buf.len() as u64]);
    }

    #[test]
    fn bad_bytes_are_errors() {
        let mut s = stream();
        s[0] = 0;
        assert!(matches!(
            Walker::main(true, true).records(&s).next(),
            Some(Err(DecodeError::Invalid { .. }))
        ));
        let mut w = Walker::headerless(true);
        assert!(w
            .next(&[0x09], 100)
            .unwrap_err()
            .to_string()
            .contains("unknown section type 0x09"));
    }
}
