//! Applying RAM records (QEMU's `migration/ram.c` load side): the MEM_SIZE
//! block list, full pages, zero pages, XBZRLE pages, zlib pages of the
//! legacy `compress` capability; placed directly in
//! precopy, atomically through userfaultfd once postcopy listens.

use std::sync::Arc;

use super::error::LoadError;
use super::multifd::flush_after_each_section;
use super::Loader;
use crate::compat::Rule;
use crate::defects::{self, Defect};
use crate::ram::{RamBlock, TARGET_PAGE_SIZE};
use crate::state::{compress_exists, machine_version, Capability, Counters, Shared};
use wire::ramrec::{xbzrle_decode, BlockRef, RamRecord};

impl Loader {
    fn runtime(&self) -> Arc<crate::postcopy::PostcopyRuntime> {
        self.postcopy.clone().expect("postcopy runtime exists while placing")
    }

    pub(super) fn apply_ram(&mut self, rec: RamRecord, off: u64) -> Result<(), LoadError> {
        let counters = self.shared.counters();
        if self.shared.has(Capability::MappedRam) {
            // QEMU's `ram_load_precopy()`: these flags are invalid with
            // mapped-ram (EOS, and MEM_SIZE with its block entries, remain).
            let flags = match &rec {
                RamRecord::Page { .. } => Some(wire::consts::RAM_SAVE_FLAG_PAGE),
                RamRecord::Zero { .. } => Some(wire::consts::RAM_SAVE_FLAG_ZERO),
                RamRecord::Xbzrle { .. } => Some(wire::consts::RAM_SAVE_FLAG_XBZRLE),
                RamRecord::CompressPage { .. } => Some(wire::consts::RAM_SAVE_FLAG_COMPRESS_PAGE),
                RamRecord::MultifdFlush => Some(wire::consts::RAM_SAVE_FLAG_MULTIFD_FLUSH),
                _ => None,
            };
            if let Some(f) = flags {
                return Err(self.mapped_ram_refuses(f, off));
            }
        }
        match rec {
            RamRecord::MappedRamSize { total } => self.mapped_ram_size(total, off)?,
            // Handled by the loader (the stream continues elsewhere).
            RamRecord::MappedRamBlock { .. } => {
                return Err(LoadError::protocol(
                    off,
                    format!("mapped-ram block entry out of place at byte offset {off}"),
                ));
            }
            RamRecord::MemSize { total, blocks } => {
                let ram = self.shared.ram();
                if !ram.blocks().is_empty() {
                    return Err(LoadError::protocol(
                        off,
                        format!("second MEM_SIZE block list at byte offset {off}"),
                    ));
                }
                if total > ram.max_ram() {
                    return Err(LoadError::unsupported(off, format!(
                        "MEM_SIZE: the source announces {total:#x} bytes of RAM, more than the configured cap (--max-ram) of {:#x} bytes at byte offset {off}",
                        ram.max_ram()
                    )));
                }
                for b in blocks {
                    let blk = ram
                        .add(&b.name, b.used_length)
                        .map_err(|source| LoadError::Ram { at: off, source })?;
                    // Present for our blocks of another page size than the
                    // host's once postcopy-ram was advised; both sides must
                    // agree (QEMU's `parse_ramblock()`, `migration/ram.c`).
                    if let Some(ps) = b.page_size {
                        if ps != blk.page_size {
                            return Err(LoadError::protocol(off, format!(
                                "MEM_SIZE: mismatched RAM page size of block {:?}: {:#x} (local) != {ps:#x} (source) at byte offset {off}",
                                b.name, blk.page_size
                            )));
                        }
                    }
                }
                if let Some(mf) = &self.multifd {
                    mf.blocks_ready();
                }
            }
            RamRecord::Page { addr, block, data } => {
                let b = resolve_block(&self.shared, &mut self.last_block, block, off)?;
                check_page_addr(&b, addr, off)?;
                if self.placing {
                    self.runtime().place(&mut self.tmp_page, &b, addr, Some(data))?;
                } else {
                    b.mapping.write(defects::precopy_page_offset(addr) as usize, data);
                    b.received.set(addr / TARGET_PAGE_SIZE);
                }
                Counters::add(&counters.normal_pages, 1);
            }
            RamRecord::Zero { addr, block, fill } => {
                let b = resolve_block(&self.shared, &mut self.last_block, block, off)?;
                check_page_addr(&b, addr, off)?;
                // From 9.0 QEMU refuses a non-zero fill byte; before, it
                // filled the page with it (docs/wire-format.md).
                if fill != 0 && self.cfg.compat.has(Rule::ZeroFillMustBeZero) {
                    let phase = if self.placing { " during postcopy" } else { "" };
                    return Err(LoadError::protocol(off, format!(
                        "zero page record with fill byte {fill:#04x}{phase} at byte offset {off} (only 0 is valid from QEMU 9.0; rules of QEMU {})",
                        self.cfg.compat
                    )));
                }
                if self.placing {
                    if fill != 0 {
                        let page = vec![fill; TARGET_PAGE_SIZE as usize];
                        self.runtime().place(&mut self.tmp_page, &b, addr, Some(&page))?;
                    } else {
                        self.runtime().place(&mut self.tmp_page, &b, addr, None)?;
                    }
                } else {
                    let was = b.received.set(addr / TARGET_PAGE_SIZE);
                    if (was && !defects::active(Defect::ZeroKeepsStale)) || fill != 0 {
                        b.mapping.fill(addr as usize, TARGET_PAGE_SIZE as usize, fill);
                    }
                }
                Counters::add(&counters.zero_pages, 1);
            }
            RamRecord::Xbzrle { addr, block, data } => {
                let b = resolve_block(&self.shared, &mut self.last_block, block, off)?;
                check_page_addr(&b, addr, off)?;
                if self.placing {
                    return Err(LoadError::protocol(
                        off,
                        format!("XBZRLE page during postcopy at byte offset {off}"),
                    ));
                }
                let mut page = vec![0u8; TARGET_PAGE_SIZE as usize];
                b.mapping.read(addr as usize, &mut page);
                xbzrle_decode(data, &mut page, off)?;
                b.mapping.write(addr as usize, &page);
                b.received.set(addr / TARGET_PAGE_SIZE);
                Counters::add(&counters.normal_pages, 1);
            }
            RamRecord::CompressPage { addr, block, data } => {
                let b = resolve_block(&self.shared, &mut self.last_block, block, off)?;
                check_page_addr(&b, addr, off)?;
                let mut page = self.inflate_compressed_page(data, off)?;
                if self.placing {
                    // A short page is completed with zeros (placement is
                    // by whole pages).
                    page.resize(TARGET_PAGE_SIZE as usize, 0);
                    self.runtime().place(&mut self.tmp_page, &b, addr, Some(&page))?;
                } else {
                    // Like QEMU 7.2, a stream of less than a page overwrites
                    // only the start of the page (verified:
                    // scenarios/stream-compress-short.toml).
                    b.mapping.write(addr as usize, &page);
                    b.received.set(addr / TARGET_PAGE_SIZE);
                }
                Counters::add(&counters.normal_pages, 1);
            }
            // QEMU's `ram_load_precopy()`: a FLUSH is always a sync point,
            // an EOS only in per-section mode (machine types <= 8.0).
            RamRecord::MultifdFlush => self.multifd_sync(off)?,
            RamRecord::Eos if self.multifd_per_section() => self.multifd_sync(off)?,
            RamRecord::Eos => {}
        }
        Ok(())
    }
}

/// zlib's `compressBound(TARGET_PAGE_SIZE)` (len + len/4096 + len/16384 +
/// len/2^25 + 13 = 4110): the longest compressed page QEMU 7.2's destination
/// accepts (`migration/ram.c: ram_load_precopy()`).
const COMPRESSED_PAGE_MAX: usize = {
    let len = TARGET_PAGE_SIZE as usize;
    len + (len >> 12) + (len >> 14) + (len >> 25) + 13
};

impl Loader {
    /// One page of the legacy `compress` capability (QEMU 9.0 and older,
    /// `migration/ram-compress.c` / 7.2's `migration/ram.c`): a complete
    /// zlib stream per page, inflated to at most one page (QEMU 7.2 only
    /// requires the stream to end within the page). Only when the
    /// capability exists for our machine type and is on.
    fn inflate_compressed_page(&self, data: &[u8], off: u64) -> Result<Vec<u8>, LoadError> {
        let version = self.cfg.machine.as_deref().and_then(machine_version);
        if !compress_exists(version) {
            return Err(LoadError::unsupported(off, format!(
                "compressed page at byte offset {off}: the 'compress' capability does not exist for this machine type (removed in QEMU 9.1)"
            )));
        }
        if !self.shared.has(Capability::Compress) {
            return Err(LoadError::protocol(
                off,
                format!(
                    "compressed page at byte offset {off} but the 'compress' capability is off"
                ),
            ));
        }
        if data.len() > COMPRESSED_PAGE_MAX {
            return Err(LoadError::protocol(off, format!(
                "Invalid compressed data length: {} (at most {COMPRESSED_PAGE_MAX}) at byte offset {off}",
                data.len()
            )));
        }
        let mut page = vec![0u8; TARGET_PAGE_SIZE as usize + 1];
        let mut z = flate2::Decompress::new(true);
        let st = z.decompress(data, &mut page, flate2::FlushDecompress::Finish).map_err(|e| {
            LoadError::protocol(off, format!("compressed page at byte offset {off}: zlib: {e}"))
        })?;
        let (used, got) = (z.total_in() as usize, z.total_out() as usize);
        if st != flate2::Status::StreamEnd || got > TARGET_PAGE_SIZE as usize || used != data.len()
        {
            return Err(LoadError::protocol(off, format!(
                "compressed page at byte offset {off}: {} bytes inflated to {got} bytes ({used} used, stream {}), expected at most one page of {TARGET_PAGE_SIZE}",
                data.len(),
                if st == flate2::Status::StreamEnd { "complete" } else { "incomplete" }
            )));
        }
        page.truncate(got);
        Ok(page)
    }

    /// Whether multifd syncs at every RAM section's EOS: decided by the
    /// machine type like QEMU's destination (its own `-machine`, or the
    /// stream's when ours is unversioned or absent).
    fn multifd_per_section(&self) -> bool {
        if self.multifd.is_none() {
            return false;
        }
        let ours = self.cfg.machine.as_deref().and_then(flush_after_each_section);
        let theirs = self.stream_machine.as_deref().and_then(flush_after_each_section);
        ours.or(theirs).unwrap_or(false)
    }

    /// A sync point on the main channel: wait for every multifd channel.
    fn multifd_sync(&mut self, off: u64) -> Result<(), LoadError> {
        match &self.multifd {
            Some(mf) => mf.sync_main().map_err(|source| LoadError::Multifd { at: off, source }),
            None => Ok(()),
        }
    }
}

/// The RAMBlock a page record refers to: named (and remembered as the
/// channel's last block), or the channel's last block for CONTINUE.
pub fn resolve_block(
    shared: &Shared,
    last: &mut Option<Arc<RamBlock>>,
    b: BlockRef,
    off: u64,
) -> Result<Arc<RamBlock>, LoadError> {
    match b {
        BlockRef::Continue if defects::active(Defect::ContinueFirstBlock) => {
            shared.ram().blocks().first().cloned().ok_or(LoadError::NoPreviousBlock { at: off })
        }
        BlockRef::Continue => last.clone().ok_or(LoadError::NoPreviousBlock { at: off }),
        BlockRef::Named(n) => {
            let blk = shared
                .ram()
                .get(n)
                .ok_or_else(|| LoadError::UnknownBlock { at: off, name: n.to_string() })?;
            *last = Some(blk.clone());
            Ok(blk)
        }
    }
}

/// A page address must lie inside its block.
pub fn check_page_addr(b: &RamBlock, addr: u64, off: u64) -> Result<(), LoadError> {
    if addr.checked_add(TARGET_PAGE_SIZE).is_none_or(|e| e > b.used_length) {
        return Err(LoadError::PageOutsideBlock {
            at: off,
            addr,
            block: b.name.clone(),
            len: b.used_length,
        });
    }
    Ok(())
}
