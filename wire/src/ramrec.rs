//! Records of the `ram` section (version 4) and of the postcopy-preempt
//! channel: the MEM_SIZE block list, PAGE, ZERO, XBZRLE, COMPRESS_PAGE, EOS,
//! MULTIFD_FLUSH, and the CONTINUE naming rule.
//!
//! ```text
//! be64 word = addr | flags           flags = word & (TPS-1), addr = word & !(TPS-1)
//!   MEM_SIZE 0x004  addr = total bytes; then until the lengths add up to it:
//!                   counted name, be64 used_length, [be64 page_size], [be64 gpa]
//!   ZERO     0x002  [counted name] u8 fill (0)
//!   PAGE     0x008  [counted name] TPS bytes
//!   XBZRLE   0x040  [counted name] u8 0x01, be16 len, len bytes of delta
//!   COMPRESS 0x100  [counted name] be32 len, len bytes of zlib (QEMU <= 9.0)
//!   EOS      0x010  end of the section's RAM data (word is exactly 0x10)
//!   MULTIFD_FLUSH 0x200  multifd sync point (QEMU 8.0+)
//!   CONTINUE 0x020  ORed into a page record: the name is omitted, the block is
//!                   the last one named on this channel
//! ```
//!
//! The optional MEM_SIZE fields are present by configuration, not by marker:
//! `page_size` for hugepage-backed blocks when postcopy-ram is on, `gpa` with
//! x-ignore-shared. [`RamContext`] carries that configuration. QEMU:
//! `migration/ram.c` (`save_page_header()`, `ram_save_setup()`,
//! `ram_load_precopy()`, `ram_load_postcopy()`, `parse_ramblocks()`,
//! `ram_block_from_stream()`), `migration/xbzrle.c: xbzrle_decode_buffer()`.
//! Details: `docs/wire-format.md`, section 7.
//!
//! A PAGE record at offset `0x2000` of block `pc.ram`, then the next page of
//! the same block with CONTINUE:
//!
//! ```
//! use wire::ramrec::{decode_ram_record, BlockRef, RamContext, RamRecord};
//! use wire::Cursor;
//!
//! let mut bytes = vec![0, 0, 0, 0, 0, 0, 0x20, 0x08, 6, b'p', b'c', b'.', b'r', b'a', b'm'];
//! bytes.extend_from_slice(&[0xab; 4096]);
//! bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x30, 0x28]);
//! bytes.extend_from_slice(&[0xcd; 4096]);
//!
//! let ctx = RamContext::x86();
//! let mut c = Cursor::new(&bytes, 0);
//! match decode_ram_record(&mut c, &ctx).unwrap() {
//!     RamRecord::Page { addr, block, data } => {
//!         assert_eq!((addr, block), (0x2000, BlockRef::Named("pc.ram")));
//!         assert_eq!(data, &[0xab; 4096][..]);
//!     }
//!     other => panic!("{other:?}"),
//! }
//! let r = decode_ram_record(&mut c, &ctx).unwrap();
//! assert!(matches!(r, RamRecord::Page { addr: 0x3000, block: BlockRef::Continue, .. }));
//! ```

use super::consts::*;
use super::cursor::{Cursor, DecodeError, Encoder, Result};

/// One entry of the MEM_SIZE block list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockEntry {
    pub name: String,
    pub used_length: u64,
    /// Present only for blocks whose page size differs from the host base
    /// page size when postcopy-ram is on (hugepage blocks).
    pub page_size: Option<u64>,
    /// Present only with x-ignore-shared.
    pub gpa: Option<u64>,
}

/// What the decoder must know to parse a MEM_SIZE list (fields that are
/// present by configuration, not by markers).
#[derive(Clone, Debug, Default)]
pub struct RamContext {
    /// Names of blocks that carry the extra `page_size` field (hugepage
    /// blocks with postcopy-ram on). Empty for normal RAM.
    pub hugepage_blocks: Vec<String>,
    /// x-ignore-shared is on: every entry carries a gpa.
    pub ignore_shared: bool,
    /// Target page size (4096 on x86-64).
    pub target_page_size: u64,
}

impl RamContext {
    pub fn x86() -> RamContext {
        RamContext { hugepage_blocks: vec![], ignore_shared: false, target_page_size: 4096 }
    }
}

/// Which block a page record is in: named, or the previous one on this
/// channel (CONTINUE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockRef<'a> {
    Named(&'a str),
    Continue,
}

/// One RAM record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RamRecord<'a> {
    MemSize {
        total: u64,
        blocks: Vec<BlockEntry>,
    },
    Zero {
        addr: u64,
        block: BlockRef<'a>,
        fill: u8,
    },
    Page {
        addr: u64,
        block: BlockRef<'a>,
        data: &'a [u8],
    },
    Xbzrle {
        addr: u64,
        block: BlockRef<'a>,
        data: &'a [u8],
    },
    CompressPage {
        addr: u64,
        block: BlockRef<'a>,
        data: &'a [u8],
    },
    Eos,
    MultifdFlush,
    /// MEM_SIZE of a `mapped-ram` stream: the total alone; one
    /// [`RamRecord::MappedRamBlock`] per block follows (`crate::mapped_ram`).
    MappedRamSize {
        total: u64,
    },
    /// One block entry of a `mapped-ram` MEM_SIZE list with its header. The
    /// stream continues at file offset `header.pages_offset +
    /// entry.used_length`, not after this record.
    MappedRamBlock {
        entry: BlockEntry,
        header: crate::mapped_ram::Header,
    },
}

/// Decode one RAM record. On Incomplete the cursor is unchanged.
pub fn decode_ram_record<'a>(c: &mut Cursor<'a>, ctx: &RamContext) -> Result<RamRecord<'a>> {
    let save = c.pos();
    let r = decode_inner(c, ctx);
    if r.is_err() {
        c.set_pos(save);
    }
    r
}

fn decode_inner<'a>(c: &mut Cursor<'a>, ctx: &RamContext) -> Result<RamRecord<'a>> {
    let start = c.offset();
    let tps = ctx.target_page_size;
    let word = c.be64(start)?;
    let flags = word & (tps - 1);
    let addr = word & !(tps - 1);
    let base = flags & !RAM_SAVE_FLAG_CONTINUE;
    let cont = flags & RAM_SAVE_FLAG_CONTINUE != 0;
    let block_ref = |c: &mut Cursor<'a>| -> Result<BlockRef<'a>> {
        if cont {
            Ok(BlockRef::Continue)
        } else {
            Ok(BlockRef::Named(c.counted_str(start, "RAMBlock name")?))
        }
    };
    match base {
        RAM_SAVE_FLAG_MEM_SIZE => {
            if cont {
                return Err(DecodeError::invalid(start, "RAM record: MEM_SIZE with CONTINUE flag"));
            }
            let total = addr;
            let mut blocks = Vec::new();
            let mut sum: u64 = 0;
            while sum < total {
                let eoff = c.offset();
                let name = c.counted_str(start, "RAMBlock name")?.to_string();
                if name.is_empty() {
                    return Err(DecodeError::invalid(eoff, "MEM_SIZE: empty RAMBlock name"));
                }
                let used_length = c.be64(start)?;
                let page_size =
                    if ctx.hugepage_blocks.contains(&name) { Some(c.be64(start)?) } else { None };
                let gpa = if ctx.ignore_shared { Some(c.be64(start)?) } else { None };
                sum = sum.checked_add(used_length).ok_or_else(|| {
                    DecodeError::invalid(
                        eoff,
                        format!(
                            "MEM_SIZE: block {name:?} length {used_length:#x} overflows the total"
                        ),
                    )
                })?;
                if sum > total {
                    return Err(DecodeError::invalid(
                        eoff,
                        format!("MEM_SIZE: block {name:?} (length {used_length:#x}) takes the sum past the announced total {total:#x}"),
                    ));
                }
                blocks.push(BlockEntry { name, used_length, page_size, gpa });
            }
            Ok(RamRecord::MemSize { total, blocks })
        }
        RAM_SAVE_FLAG_ZERO => {
            let block = block_ref(c)?;
            let fill = c.u8(start)?;
            Ok(RamRecord::Zero { addr, block, fill })
        }
        RAM_SAVE_FLAG_PAGE => {
            let block = block_ref(c)?;
            let data = c.bytes(tps as usize, start)?;
            Ok(RamRecord::Page { addr, block, data })
        }
        RAM_SAVE_FLAG_XBZRLE => {
            let block = block_ref(c)?;
            let eoff = c.offset();
            let enc = c.u8(start)?;
            if enc != ENCODING_FLAG_XBZRLE {
                return Err(DecodeError::invalid(
                    eoff,
                    format!("XBZRLE page: bad encoding flag {enc:#04x}"),
                ));
            }
            let loff = c.offset();
            let len = c.be16(start)? as u64;
            if len > tps {
                return Err(DecodeError::invalid(
                    loff,
                    format!("XBZRLE page: encoded length {len} exceeds the page size"),
                ));
            }
            let data = c.bytes(len as usize, start)?;
            Ok(RamRecord::Xbzrle { addr, block, data })
        }
        RAM_SAVE_FLAG_COMPRESS_PAGE => {
            let block = block_ref(c)?;
            let loff = c.offset();
            let len = c.be32(start)? as u64;
            if len > tps + tps / 1000 + 64 {
                return Err(DecodeError::invalid(
                    loff,
                    format!("compressed page: length {len} is implausible"),
                ));
            }
            let data = c.bytes(len as usize, start)?;
            Ok(RamRecord::CompressPage { addr, block, data })
        }
        RAM_SAVE_FLAG_EOS if !cont && addr == 0 => Ok(RamRecord::Eos),
        RAM_SAVE_FLAG_MULTIFD_FLUSH if !cont => Ok(RamRecord::MultifdFlush),
        RAM_SAVE_FLAG_HOOK => Err(DecodeError::invalid(
            start,
            "RAM record: HOOK flag (RDMA) is not supported on this transport",
        )),
        _ => Err(DecodeError::invalid(
            start,
            format!("RAM record: unknown flag combination {flags:#x} (word {word:#018x})"),
        )),
    }
}

/// Encode a record. `Named` writes the counted name; `Continue` sets the flag.
pub fn encode_ram_record(e: &mut Encoder, r: &RamRecord, ctx: &RamContext) {
    fn hdr(e: &mut Encoder, addr: u64, flag: u64, b: &BlockRef) {
        match b {
            BlockRef::Continue => {
                e.be64(addr | flag | RAM_SAVE_FLAG_CONTINUE);
            }
            BlockRef::Named(n) => {
                e.be64(addr | flag).counted(n.as_bytes());
            }
        }
    }
    match r {
        RamRecord::MemSize { total, blocks } => {
            e.be64(total | RAM_SAVE_FLAG_MEM_SIZE);
            for b in blocks {
                e.counted(b.name.as_bytes()).be64(b.used_length);
                if ctx.hugepage_blocks.contains(&b.name) {
                    e.be64(b.page_size.unwrap_or(ctx.target_page_size));
                }
                if ctx.ignore_shared {
                    e.be64(b.gpa.unwrap_or(0));
                }
            }
        }
        RamRecord::Zero { addr, block, fill } => {
            hdr(e, *addr, RAM_SAVE_FLAG_ZERO, block);
            e.u8(*fill);
        }
        RamRecord::Page { addr, block, data } => {
            hdr(e, *addr, RAM_SAVE_FLAG_PAGE, block);
            e.bytes(data);
        }
        RamRecord::Xbzrle { addr, block, data } => {
            hdr(e, *addr, RAM_SAVE_FLAG_XBZRLE, block);
            e.u8(ENCODING_FLAG_XBZRLE).be16(data.len() as u16).bytes(data);
        }
        RamRecord::CompressPage { addr, block, data } => {
            hdr(e, *addr, RAM_SAVE_FLAG_COMPRESS_PAGE, block);
            e.be32(data.len() as u32).bytes(data);
        }
        RamRecord::Eos => {
            e.be64(RAM_SAVE_FLAG_EOS);
        }
        RamRecord::MultifdFlush => {
            e.be64(RAM_SAVE_FLAG_MULTIFD_FLUSH);
        }
        RamRecord::MappedRamSize { total } => {
            e.be64(total | RAM_SAVE_FLAG_MEM_SIZE);
        }
        RamRecord::MappedRamBlock { entry: b, header } => {
            e.counted(b.name.as_bytes()).be64(b.used_length);
            if ctx.hugepage_blocks.contains(&b.name) {
                e.be64(b.page_size.unwrap_or(ctx.target_page_size));
            }
            if ctx.ignore_shared {
                e.be64(b.gpa.unwrap_or(0));
            }
            header.encode(e);
        }
    }
}

/// A `mapped-ram` stream's RAM record where a MEM_SIZE word may come: the
/// word alone as [`RamRecord::MappedRamSize`], any other record as
/// [`decode_ram_record`] reads it. On Incomplete the cursor is unchanged.
pub fn decode_mapped_ram_record<'a>(c: &mut Cursor<'a>, ctx: &RamContext) -> Result<RamRecord<'a>> {
    let save = c.pos();
    let start = c.offset();
    let word = c.be64(start)?;
    let flags = word & (ctx.target_page_size - 1);
    if flags == RAM_SAVE_FLAG_MEM_SIZE {
        return Ok(RamRecord::MappedRamSize { total: word & !(ctx.target_page_size - 1) });
    }
    c.set_pos(save);
    decode_ram_record(c, ctx)
}

/// One block entry of a `mapped-ram` MEM_SIZE list and its header. On
/// Incomplete the cursor is unchanged.
pub fn decode_mapped_ram_block<'a>(c: &mut Cursor<'a>, ctx: &RamContext) -> Result<RamRecord<'a>> {
    let save = c.pos();
    let start = c.offset();
    let r = (|| {
        let name = c.counted_str(start, "RAMBlock name")?.to_string();
        if name.is_empty() {
            return Err(DecodeError::invalid(start, "MEM_SIZE: empty RAMBlock name"));
        }
        let used_length = c.be64(start)?;
        let page_size =
            if ctx.hugepage_blocks.contains(&name) { Some(c.be64(start)?) } else { None };
        let gpa = if ctx.ignore_shared { Some(c.be64(start)?) } else { None };
        let header = crate::mapped_ram::Header::decode(c, start)?;
        Ok(RamRecord::MappedRamBlock {
            entry: BlockEntry { name, used_length, page_size, gpa },
            header,
        })
    })();
    if r.is_err() {
        c.set_pos(save);
    }
    r
}

/// Apply an XBZRLE delta in place on `page` (the destination's current copy).
pub fn xbzrle_decode(enc: &[u8], page: &mut [u8], offset: u64) -> Result<()> {
    fn uleb(enc: &[u8], i: &mut usize, offset: u64) -> Result<usize> {
        let b0 = *enc
            .get(*i)
            .ok_or_else(|| DecodeError::invalid(offset, "XBZRLE: truncated run length"))?;
        *i += 1;
        if b0 & 0x80 == 0 {
            return Ok(b0 as usize);
        }
        let b1 = *enc
            .get(*i)
            .ok_or_else(|| DecodeError::invalid(offset, "XBZRLE: truncated run length"))?;
        *i += 1;
        if b1 & 0x80 != 0 {
            return Err(DecodeError::invalid(offset, "XBZRLE: run length longer than 2 bytes"));
        }
        Ok((b0 & 0x7f) as usize | ((b1 as usize) << 7))
    }
    let (mut i, mut d) = (0usize, 0usize);
    let mut first = true;
    while i < enc.len() {
        if enc.len() - i < 2 {
            return Err(DecodeError::invalid(offset, "XBZRLE: trailing byte"));
        }
        let zrun = uleb(enc, &mut i, offset)?;
        if zrun == 0 && !first {
            return Err(DecodeError::invalid(offset, "XBZRLE: zero-length unchanged run"));
        }
        first = false;
        d += zrun;
        if d > page.len() {
            return Err(DecodeError::invalid(offset, "XBZRLE: unchanged run past the page end"));
        }
        if i >= enc.len() {
            break;
        }
        let nzrun = uleb(enc, &mut i, offset)?;
        if nzrun == 0 || d + nzrun > page.len() || i + nzrun > enc.len() {
            return Err(DecodeError::invalid(
                offset,
                "XBZRLE: changed run is empty or runs past the page or input",
            ));
        }
        page[d..d + nzrun].copy_from_slice(&enc[i..i + nzrun]);
        i += nzrun;
        d += nzrun;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(r: RamRecord, ctx: &RamContext) {
        let mut e = Encoder::new();
        encode_ram_record(&mut e, &r, ctx);
        let mut c = Cursor::new(&e.buf, 0);
        assert_eq!(decode_ram_record(&mut c, ctx).unwrap(), r);
        assert_eq!(c.remaining(), 0);
    }

    #[test]
    fn records_roundtrip() {
        let ctx = RamContext::x86();
        let page = vec![0xabu8; 4096];
        rt(
            RamRecord::MemSize {
                total: 0x1000_0000 + 0x40000,
                blocks: vec![
                    BlockEntry {
                        name: "mem0".into(),
                        used_length: 0x1000_0000,
                        page_size: None,
                        gpa: None,
                    },
                    BlockEntry {
                        name: "pc.bios".into(),
                        used_length: 0x40000,
                        page_size: None,
                        gpa: None,
                    },
                ],
            },
            &ctx,
        );
        rt(RamRecord::Zero { addr: 0x1000, block: BlockRef::Continue, fill: 0 }, &ctx);
        rt(RamRecord::Zero { addr: 0x1000, block: BlockRef::Named("pc.ram"), fill: 7 }, &ctx);
        rt(RamRecord::Page { addr: 0x2000, block: BlockRef::Named("pc.ram"), data: &page }, &ctx);
        rt(RamRecord::Page { addr: 0x3000, block: BlockRef::Continue, data: &page }, &ctx);
        rt(RamRecord::Xbzrle { addr: 0x3000, block: BlockRef::Continue, data: &[1, 1, 9] }, &ctx);
        rt(
            RamRecord::CompressPage { addr: 0, block: BlockRef::Named("x"), data: &[1, 2, 3] },
            &ctx,
        );
        rt(RamRecord::Eos, &ctx);
        rt(RamRecord::MultifdFlush, &ctx);
        let hctx = RamContext {
            hugepage_blocks: vec!["huge".into()],
            ignore_shared: true,
            target_page_size: 4096,
        };
        rt(
            RamRecord::MemSize {
                total: 0x400000,
                blocks: vec![BlockEntry {
                    name: "huge".into(),
                    used_length: 0x400000,
                    page_size: Some(0x200000),
                    gpa: Some(0x1000_0000),
                }],
            },
            &hctx,
        );
    }

    #[test]
    fn spec_examples() {
        // docs/wire-format.md §11: ZERO|CONTINUE at 0x1000 fill 0; EOS.
        let b = [0u8, 0, 0, 0, 0, 0, 0x10, 0x22, 0x00, 0, 0, 0, 0, 0, 0, 0, 0x10];
        let mut c = Cursor::new(&b, 0);
        let ctx = RamContext::x86();
        assert_eq!(
            decode_ram_record(&mut c, &ctx).unwrap(),
            RamRecord::Zero { addr: 0x1000, block: BlockRef::Continue, fill: 0 }
        );
        assert_eq!(decode_ram_record(&mut c, &ctx).unwrap(), RamRecord::Eos);
    }

    #[test]
    fn errors_and_truncation() {
        let ctx = RamContext::x86();
        let b = 0x1000u64.wrapping_add(0x3).to_be_bytes(); // ZERO|FULL
        let e = decode_ram_record(&mut Cursor::new(&b, 50), &ctx).unwrap_err();
        assert!(e.to_string().contains("unknown flag combination 0x3"), "{e}");
        assert!(e.to_string().contains("offset 50"), "{e}");
        // MEM_SIZE whose blocks overshoot the total
        let mut e2 = Encoder::new();
        e2.be64(0x1000 | RAM_SAVE_FLAG_MEM_SIZE).counted(b"a").be64(0x2000);
        let e = decode_ram_record(&mut Cursor::new(&e2.buf, 0), &ctx).unwrap_err();
        assert!(e.to_string().contains("past the announced total"), "{e}");
        // truncated page
        let mut e3 = Encoder::new();
        e3.be64(RAM_SAVE_FLAG_PAGE).counted(b"a").bytes(&[0; 100]);
        let mut c = Cursor::new(&e3.buf, 0);
        assert!(decode_ram_record(&mut c, &ctx).unwrap_err().is_incomplete());
        assert_eq!(c.pos(), 0);
    }

    #[test]
    fn xbzrle() {
        let mut page = vec![0u8; 16];
        // skip 2, write 3 bytes, skip 4, write 1 byte
        xbzrle_decode(&[2, 3, 1, 2, 3, 4, 1, 9], &mut page, 0).unwrap();
        assert_eq!(&page[..10], &[0, 0, 1, 2, 3, 0, 0, 0, 0, 9]);
        assert!(xbzrle_decode(&[20, 1, 1], &mut page, 0).is_err());
    }
}
