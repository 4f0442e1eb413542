//! Loading a `mapped-ram` file (QEMU 9.0+, `migration/ram.c`:
//! `parse_ramblock_mapped_ram()`, `read_ramblock_mapped_ram()`;
//! `migration/file.c`: `file_create_incoming_channels()`,
//! `multifd_file_recv_data()`; layout in [`wire::mapped_ram`] and
//! `docs/mapped-ram.md`).
//!
//! Each MEM_SIZE block entry carries a header; the loader checks it, reads
//! the block's bitmap, and reads every run of set pages with `pread()`
//! straight into guest RAM, in pieces of at most 1 MiB: on the main channel's
//! descriptor, or with `multifd` spread over `multifd-channels` threads,
//! each with its own descriptor of the same file (opened `O_DIRECT` when the
//! `direct-io` parameter is on, as QEMU opens its multifd file channels).
//! The main stream then continues after the block's pages. With multifd the
//! loader waits for every read at the end of the list, like QEMU's
//! `multifd_recv_sync_main()` after `parse_ramblocks()`. Pages whose bit is
//! clear are left alone: fresh guest RAM reads zero, and QEMU writes no zero
//! pages with mapped-ram.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub(super) mod error;

pub use error::MappedRamError;

use super::error::LoadError;
use super::Loader;
use crate::ram::{RamBlock, TARGET_PAGE_SIZE};
use crate::state::{Capability, Counters, Shared};
use wire::mapped_ram::{Header, PageRead};
use wire::ramrec::BlockEntry;

/// The capability check of the configuration section for `mapped-ram`
/// (QEMU's `migration/savevm.c: configuration_validate_capabilities()`,
/// QEMU's text).
pub fn check_capability(stream_has: bool, dest_has: bool) -> Result<(), LoadError> {
    if stream_has == dest_has {
        return Ok(());
    }
    let s = |b: bool| if b { "on" } else { "off" };
    Err(LoadError::Protocol {
        at: None,
        msg: format!(
            "Capability mapped-ram is {}, but received capability is {}",
            s(dest_has),
            s(stream_has)
        ),
    })
}

/// One read for a multifd reader thread.
struct Job {
    block: Arc<RamBlock>,
    read: PageRead,
}

/// The multifd file channels: threads reading pieces in parallel.
struct Pool {
    tx: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    error: Arc<Mutex<Option<MappedRamError>>>,
}

impl Pool {
    fn start(files: Vec<File>, shared: &Shared) -> Pool {
        let (tx, rx) = sync_channel::<Job>(files.len() * 2);
        let rx = Arc::new(Mutex::new(rx));
        let error = Arc::new(Mutex::new(None));
        let threads = files
            .into_iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let (rx, error, shared) = (rx.clone(), error.clone(), shared.clone());
                std::thread::Builder::new()
                    .name(format!("mapped-ram-{i}"))
                    .spawn(move || reader_thread(&f, &rx, &error, &shared))
                    .ok()
            })
            .collect();
        Pool { tx: Some(tx), threads, error }
    }

    /// Wait until every queued read is done; the first error, if any.
    fn sync(&mut self) -> Result<(), MappedRamError> {
        self.tx = None;
        let lost = self.threads.drain(..).map(|t| t.join().is_err()).fold(false, |a, b| a | b);
        if let Some(e) = self.error.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(e);
        }
        if lost {
            return Err(MappedRamError::ReaderLost);
        }
        Ok(())
    }
}

fn reader_thread(
    f: &File,
    rx: &Mutex<Receiver<Job>>,
    error: &Mutex<Option<MappedRamError>>,
    shared: &Shared,
) {
    loop {
        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        if error.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            continue;
        }
        if let Err(e) = read_pages(f, &job.block, job.read, shared) {
            error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
        }
    }
}

/// One piece: `pread()` into guest RAM, then mark the pages received.
fn read_pages(f: &File, b: &RamBlock, rd: PageRead, shared: &Shared) -> Result<(), MappedRamError> {
    let fail = |what: String| MappedRamError::Pages {
        block: b.name.clone(),
        addr: rd.addr,
        offset: rd.file_offset,
        what,
    };
    let got = b
        .mapping
        .pread_into(f.as_fd(), rd.file_offset, rd.addr as usize, rd.len as usize)
        .map_err(|e| fail(e.to_string()))?;
    if got as u64 != rd.len {
        return Err(fail(format!("Partial read of size {got:#x}, expected {:#x}", rd.len)));
    }
    let first = rd.addr / TARGET_PAGE_SIZE;
    for p in first..first + rd.len / TARGET_PAGE_SIZE {
        b.received.set(p);
    }
    let c = shared.counters();
    Counters::add(&c.normal_pages, rd.len / TARGET_PAGE_SIZE);
    Counters::add(&c.transferred, rd.len);
    Ok(())
}

/// The file a mapped-ram stream is loaded from.
pub struct MappedRamFile {
    /// The main channel's file (the loader's reader reads a duplicate of
    /// it, sharing the file position).
    file: Arc<File>,
    /// The file offset of the stream's first byte (`file:PATH,offset=N`).
    base: u64,
    /// Descriptors of the multifd file channels, until the pool starts.
    channels: Vec<File>,
    pool: Option<Pool>,
    /// RAM bytes whose block entries are still to come.
    left: u64,
}

impl MappedRamFile {
    /// For the main channel's `file` whose stream starts at file offset
    /// `base`: with `multifd`, opens `multifd-channels` more descriptors
    /// of the same file (`O_DIRECT` with `direct-io`), as QEMU's
    /// `file_create_incoming_channels()` does.
    pub fn open(file: Arc<File>, base: u64, shared: &Shared) -> Result<Self, MappedRamError> {
        let mut channels = Vec::new();
        if shared.has(Capability::Multifd) {
            let (n, direct) = {
                let g = shared.lock();
                let n = g.parameters.get("multifd-channels").and_then(|v| v.as_u64()).unwrap_or(2);
                let d = g.parameters.get("direct-io").and_then(|v| v.as_bool()).unwrap_or(false);
                (n as usize, d)
            };
            // Reopen rather than dup: O_DIRECT is per open file description.
            let path = format!("/proc/self/fd/{}", file.as_raw_fd());
            for channel in 0..n.max(1) {
                let flags = if direct { libc::O_DIRECT } else { 0 };
                let f = OpenOptions::new()
                    .read(true)
                    .custom_flags(flags)
                    .open(&path)
                    .map_err(|source| MappedRamError::Open { channel, direct, source })?;
                channels.push(f);
            }
        }
        Ok(MappedRamFile { file, base, channels, pool: None, left: 0 })
    }

    /// The file offset of stream byte 0.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The main channel's file.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }
}

impl Loader {
    fn mapped(&mut self, off: u64) -> Result<&mut MappedRamFile, LoadError> {
        self.mapped
            .as_mut()
            .ok_or(LoadError::MappedRam { at: off, source: MappedRamError::NotAFile })
    }

    /// MEM_SIZE of a mapped-ram stream: the total (checked as for a plain
    /// MEM_SIZE); starts the multifd readers.
    pub(super) fn mapped_ram_size(&mut self, total: u64, off: u64) -> Result<(), LoadError> {
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
        let shared = self.shared.clone();
        let m = self.mapped(off)?;
        m.left = total;
        if !m.channels.is_empty() {
            m.pool = Some(Pool::start(std::mem::take(&mut m.channels), &shared));
        }
        Ok(())
    }

    /// One block entry: create the block, check the header, read the bitmap
    /// and the pages. Returns the file offset where the stream goes on.
    pub(super) fn mapped_ram_block(
        &mut self,
        entry: &BlockEntry,
        header: &Header,
        off: u64,
    ) -> Result<u64, LoadError> {
        let err = |source| LoadError::MappedRam { at: off, source };
        if let Some(ps) = entry.page_size {
            return Err(err(MappedRamError::Hugepage { block: entry.name.clone(), page_size: ps }));
        }
        let b = self
            .shared
            .ram()
            .add(&entry.name, entry.used_length)
            .map_err(|source| LoadError::Ram { at: off, source })?;
        let shared = self.shared.clone();
        let m = self.mapped(off)?;
        let file_len = m.file.metadata().map(|md| md.len()).unwrap_or(0);
        let layout = header
            .layout(&entry.name, entry.used_length, TARGET_PAGE_SIZE, file_len)
            .map_err(|e| err(e.into()))?;
        let mut bitmap = vec![0u8; layout.bitmap_len as usize];
        m.file.read_exact_at(&mut bitmap, layout.bitmap_offset).map_err(|source| {
            err(MappedRamError::Bitmap {
                block: entry.name.clone(),
                offset: layout.bitmap_offset,
                len: layout.bitmap_len,
                source,
            })
        })?;
        for read in layout.reads(&bitmap) {
            match &m.pool {
                Some(p) => {
                    let tx = p.tx.as_ref().expect("the pool is open until the last block");
                    if tx.send(Job { block: b.clone(), read }).is_err() {
                        return Err(err(MappedRamError::ReaderLost));
                    }
                }
                None => read_pages(&m.file, &b, read, &shared).map_err(err)?,
            }
        }
        m.left -= entry.used_length.min(m.left);
        if m.left == 0 {
            if let Some(mut p) = m.pool.take() {
                p.sync().map_err(err)?;
            }
        }
        Ok(layout.next_offset())
    }

    /// A RAM record that has no place in a mapped-ram stream (QEMU's
    /// `ram_load_precopy()` refuses these flags with mapped-ram).
    pub(super) fn mapped_ram_refuses(&self, flags: u64, off: u64) -> LoadError {
        LoadError::MappedRam { at: off, source: MappedRamError::UnexpectedFlags(flags) }
    }
}

#[cfg(test)]
mod tests;
