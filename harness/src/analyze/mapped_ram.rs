//! The mapped-ram layout (`migrate file:` with the `mapped-ram`
//! capability, QEMU 9.0+; `migration/ram.c`: `mapped_ram_setup_ramblock()`,
//! `parse_ramblock_mapped_ram()`): each MEM_SIZE entry is followed by a
//! packed header (be32 version, be64 page size, be64 bitmap offset, be64
//! pages offset); the block's pages sit at `pages_offset + page index *
//! page size`, present where the bitmap (host-endian longs, written at the
//! end of the migration) has a bit set; the stream goes on after the last
//! block's page area. Parsed here on its own so `crossmig analyze` does not
//! depend on the loader's support for it.

use wire::consts::RAM_SAVE_FLAG_MEM_SIZE;
use wire::{Cursor, DecodeError};

use super::MappedRamBlock;

/// The MEM_SIZE list of a mapped-ram stream: each block's header, the
/// indices of the pages its bitmap marks present, and where the stream
/// continues.
pub struct MemSize {
    pub blocks: Vec<(MappedRamBlock, Vec<usize>)>,
    pub next: u64,
}

/// Decode the MEM_SIZE record at `pos` of a mapped-ram stream.
pub fn mem_size(
    bytes: &[u8],
    base: u64,
    pos: usize,
    ignore_shared: bool,
) -> Result<MemSize, DecodeError> {
    let mut c = Cursor::new(&bytes[pos..], base + pos as u64);
    let start = c.offset();
    let word = c.be64(start)?;
    if word & RAM_SAVE_FLAG_MEM_SIZE == 0 {
        return Err(DecodeError::invalid(
            start,
            format!("expected MEM_SIZE (flags 0x4) first in the RAM section, found {word:#x}"),
        ));
    }
    let total = word & !0xfff;
    let mut left = total;
    let mut next = c.offset();
    let mut blocks = Vec::new();
    while left > 0 {
        let at = c.offset();
        let name = c.counted_str(at, "RAMBlock name")?.to_string();
        let len = c.be64(at)?;
        if ignore_shared {
            c.be64(at)?;
        }
        let hoff = c.offset();
        let version = c.be32(at)?;
        let page_size = c.be64(at)?;
        let bitmap_offset = c.be64(at)?;
        let pages_offset = c.be64(at)?;
        if page_size == 0 || pages_offset % page_size != 0 {
            return Err(DecodeError::invalid(hoff, format!("mapped-ram header of {name:?}: page size {page_size}, pages offset {pages_offset:#x} (expected page-aligned)")));
        }
        let npages = len.div_ceil(page_size) as usize;
        let words = npages.div_ceil(64);
        let bm = bytes.get(bitmap_offset as usize..bitmap_offset as usize + words * 8).ok_or_else(|| {
            DecodeError::invalid(hoff, format!("mapped-ram bitmap of {name:?} at {bitmap_offset:#x} ({} bytes) is beyond the end of the file", words * 8))
        })?;
        let present: Vec<usize> =
            (0..npages).filter(|&i| bm[i / 8] & (1 << (i % 8)) != 0).collect();
        let block = MappedRamBlock {
            name,
            used_length: len,
            header_offset: hoff,
            version,
            page_size,
            bitmap_offset,
            pages_offset,
            pages_present: present.len() as u64,
        };
        blocks.push((block, present));
        left = left.saturating_sub(len);
        next = pages_offset + len;
        // The next entry follows the page area.
        let rel = next
            .checked_sub(base)
            .map(|r| r as usize)
            .filter(|&r| r <= bytes.len())
            .ok_or_else(|| {
                DecodeError::invalid(
                    hoff,
                    format!("mapped-ram page area ends at {next:#x}, beyond the end of the file"),
                )
            })?;
        c = Cursor::new(&bytes[rel..], next);
    }
    Ok(MemSize { blocks, next })
}

/// The pages of a mapped-ram block as the bitmap says: (page index, bytes).
pub fn pages<'a>(
    bytes: &'a [u8],
    b: &MappedRamBlock,
) -> impl Iterator<Item = (usize, &'a [u8])> + 'a {
    let ps = b.page_size as usize;
    let npages = b.used_length.div_ceil(b.page_size) as usize;
    let bm = bytes.get(b.bitmap_offset as usize..).unwrap_or(&[]);
    let po = b.pages_offset as usize;
    (0..npages).filter_map(move |i| {
        let set = bm.get(i / 8).is_some_and(|x| x & (1 << (i % 8)) != 0);
        if !set {
            return None;
        }
        bytes.get(po + i * ps..po + (i + 1) * ps).map(|p| (i, p))
    })
}
