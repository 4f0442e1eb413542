//! The `mapped-ram` file layout (QEMU 9.0+, `migration/ram.c`:
//! `mapped_ram_setup_ramblock()`, `mapped_ram_read_header()`,
//! `parse_ramblock_mapped_ram()`, `read_ramblock_mapped_ram()`,
//! `ram_save_file_bmap()`). Pure: no I/O; the caller reads the bytes.
//!
//! With the `mapped-ram` capability a `migrate file:` stream is no longer one
//! sequence of bytes. In the `ram` section's MEM_SIZE list, each block entry
//! (counted name, be64 used_length, [be64 gpa with x-ignore-shared]) is
//! followed by a 28-byte header, and the stream then *continues at another
//! file offset*:
//!
//! ```text
//! header (packed, big-endian):
//!   be32 version          1 (a reader refuses anything newer)
//!   be64 page_size        the target page size (4096 on x86-64)
//!   be64 bitmap_offset    file offset of the block's page bitmap (the byte after this header)
//!   be64 pages_offset     file offset of page 0 of the block, rounded up to 1 MiB
//!                         past the bitmap when QEMU writes it; a reader only
//!                         requires target-page alignment
//! bitmap: BITS_TO_LONGS(used_length / page_size) host `unsigned long`s
//!         (little-endian 64-bit words on x86-64): bit i set = page i is in
//!         the file at pages_offset + i * page_size. Written once, at the end
//!         of the migration; a page that became zero was cleared again.
//! pages:  used_length bytes at pages_offset (sparse: pages never written
//!         are holes); the next block's entry, and after the last block the
//!         rest of the stream (EOS, device state), starts at
//!         pages_offset + used_length.
//! ```
//!
//! All offsets are absolute file offsets (including a `file:PATH,offset=N`
//! start). Pages whose bit is clear are not touched by the destination
//! (QEMU sends no zero pages with mapped-ram; fresh guest RAM reads zero).
//! The destination reads each run of set bits in pieces of at most
//! [`LOAD_BUF_SIZE`] (1 MiB), on the main channel or, with multifd, spread
//! over the channels, which all read the same file in parallel.
//! `docs/mapped-ram.md` has the details and what rust-dest checks.

use crate::cursor::{Cursor, Encoder, Result};

/// The only header version (QEMU's `MAPPED_RAM_HDR_VERSION`).
pub const HEADER_VERSION: u32 = 1;
/// `sizeof(MappedRamHeader)`: be32 + 3 × be64, packed.
pub const HEADER_LEN: usize = 28;
/// Where QEMU puts each block's pages: rounded up to this past the bitmap
/// (`MAPPED_RAM_FILE_OFFSET_ALIGNMENT`). Readers do not require it.
pub const FILE_OFFSET_ALIGNMENT: u64 = 0x10_0000;
/// The largest single read of page data (`MAPPED_RAM_LOAD_BUF_SIZE`).
pub const LOAD_BUF_SIZE: u64 = 0x10_0000;

/// A block's mapped-ram header, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub page_size: u64,
    pub bitmap_offset: u64,
    pub pages_offset: u64,
}

impl Header {
    /// Decode the 28 bytes (no checks; see [`Header::layout`]). On
    /// Incomplete the cursor is unchanged.
    pub fn decode(c: &mut Cursor<'_>, start: u64) -> Result<Header> {
        let save = c.pos();
        let r = (|| {
            Ok(Header {
                version: c.be32(start)?,
                page_size: c.be64(start)?,
                bitmap_offset: c.be64(start)?,
                pages_offset: c.be64(start)?,
            })
        })();
        if r.is_err() {
            c.set_pos(save);
        }
        r
    }

    pub fn encode(&self, e: &mut Encoder) {
        e.be32(self.version).be64(self.page_size).be64(self.bitmap_offset).be64(self.pages_offset);
    }

    /// The header QEMU writes for a block whose header starts at file offset
    /// `at`: the bitmap right after the header, the pages at the next 1 MiB
    /// boundary after the bitmap.
    pub fn written_at(at: u64, used_length: u64, page_size: u64) -> Header {
        let bitmap_offset = at + HEADER_LEN as u64;
        let end = bitmap_offset + bitmap_len(used_length, page_size);
        Header {
            version: HEADER_VERSION,
            page_size,
            bitmap_offset,
            pages_offset: end.div_ceil(FILE_OFFSET_ALIGNMENT) * FILE_OFFSET_ALIGNMENT,
        }
    }

    /// Check the header of block `block` (`used_length` bytes) against a
    /// destination with target page size `tps` and a file of `file_len`
    /// bytes, as QEMU's destination does before it reads (version, pages
    /// alignment) and beyond (regions past the end of the file, which QEMU
    /// finds as short reads, a page size it would divide by).
    pub fn layout(
        &self,
        block: &str,
        used_length: u64,
        tps: u64,
        file_len: u64,
    ) -> std::result::Result<Layout, LayoutError> {
        let block = block.to_string();
        if self.version > HEADER_VERSION {
            return Err(LayoutError::Version { block, got: self.version });
        }
        if self.page_size != tps {
            return Err(LayoutError::PageSize { block, page_size: self.page_size, tps });
        }
        if !self.pages_offset.is_multiple_of(tps) {
            return Err(LayoutError::PagesAlignment { block, pages_offset: self.pages_offset });
        }
        let num_pages = used_length / tps;
        let blen = bitmap_len(used_length, tps);
        let past = |what: Region, offset: u64, len: u64| {
            let end = offset.checked_add(len);
            if end.is_none_or(|e| e > file_len) {
                return Err(LayoutError::PastEnd {
                    block: block.clone(),
                    what,
                    offset,
                    len,
                    file_len,
                });
            }
            Ok(())
        };
        past(Region::Bitmap, self.bitmap_offset, blen)?;
        past(Region::Pages, self.pages_offset, used_length)?;
        Ok(Layout {
            num_pages,
            bitmap_offset: self.bitmap_offset,
            bitmap_len: blen,
            pages_offset: self.pages_offset,
            used_length,
            page_size: tps,
        })
    }
}

/// Which region of a block a [`LayoutError::PastEnd`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    Bitmap,
    Pages,
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Region::Bitmap => "bitmap",
            Region::Pages => "pages region",
        })
    }
}

/// A mapped-ram header a destination cannot use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// QEMU's text (`mapped_ram_read_header()`), with the block.
    #[error("Migration mapped-ram capability version not supported (expected <= {HEADER_VERSION}, got {got}) (block {block})")]
    Version { block: String, got: u32 },
    #[error("mapped-ram header of block {block}: page size {page_size:#x}, but the target page size is {tps:#x}")]
    PageSize { block: String, page_size: u64, tps: u64 },
    /// QEMU's text (`parse_ramblock_mapped_ram()`), with the offset.
    #[error("Error reading ramblock {block} pages, region has bad alignment (pages offset {pages_offset:#x})")]
    PagesAlignment { block: String, pages_offset: u64 },
    #[error("mapped-ram block {block}: {what} at file offset {offset:#x} ({len:#x} bytes) lies past the end of the file ({file_len:#x} bytes)")]
    PastEnd { block: String, what: Region, offset: u64, len: u64, file_len: u64 },
}

/// Where a block's data lies in the file (a checked [`Header`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub num_pages: u64,
    pub bitmap_offset: u64,
    pub bitmap_len: u64,
    pub pages_offset: u64,
    pub used_length: u64,
    pub page_size: u64,
}

impl Layout {
    /// Where the stream continues after this block (the next block's entry,
    /// or after the last block the rest of the stream).
    pub fn next_offset(&self) -> u64 {
        self.pages_offset + self.used_length
    }

    /// The reads that load this block given its bitmap: each run of set
    /// bits, in pieces of at most [`LOAD_BUF_SIZE`], in address order.
    pub fn reads<'a>(&self, bitmap: &'a [u8]) -> impl Iterator<Item = PageRead> + 'a {
        let (ps, po) = (self.page_size, self.pages_offset);
        let max = (LOAD_BUF_SIZE / ps).max(1);
        runs(bitmap, self.num_pages).flat_map(move |(first, count)| {
            (0..count.div_ceil(max)).map(move |i| {
                let p = first + i * max;
                let n = max.min(first + count - p);
                PageRead { addr: p * ps, file_offset: po + p * ps, len: n * ps }
            })
        })
    }
}

/// One read of page data: `len` bytes at `file_offset` into the block at
/// `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRead {
    pub addr: u64,
    pub file_offset: u64,
    pub len: u64,
}

/// The size of a block's bitmap (`BITS_TO_LONGS(pages) * sizeof(long)`).
pub fn bitmap_len(used_length: u64, page_size: u64) -> u64 {
    (used_length / page_size).div_ceil(64) * 8
}

/// Whether page `i` is set in a bitmap of little-endian 64-bit words.
pub fn bit(bitmap: &[u8], i: u64) -> bool {
    bitmap.get((i / 8) as usize).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// Set page `i` (for writers and tests).
pub fn set_bit(bitmap: &mut [u8], i: u64) {
    bitmap[(i / 8) as usize] |= 1 << (i % 8);
}

/// Runs of set bits among the first `num_pages`: (first page, count).
pub fn runs(bitmap: &[u8], num_pages: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut i = 0u64;
    std::iter::from_fn(move || {
        while i < num_pages {
            let byte = bitmap.get((i / 8) as usize).copied().unwrap_or(0);
            if byte == 0 && i.is_multiple_of(8) {
                i += 8;
                continue;
            }
            if bit(bitmap, i) {
                let first = i;
                while i < num_pages && bit(bitmap, i) {
                    i += 1;
                }
                return Some((first, i - first));
            }
            i += 1;
        }
        None
    })
}

/// The number of set pages among the first `num_pages`.
pub fn count(bitmap: &[u8], num_pages: u64) -> u64 {
    runs(bitmap, num_pages).map(|(_, n)| n).sum()
}

#[cfg(test)]
mod tests;
