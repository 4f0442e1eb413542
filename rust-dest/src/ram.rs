//! Guest RAM: the table of RAMBlocks announced by the source's MEM_SIZE list,
//! each backed by a [`Mapping`], with a per-target-page "received" bitmap.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::mem::Mapping;
use wire::digest;

pub use wire::TARGET_PAGE_SIZE;

/// A `-object memory-backend-file` (or `memory-backend-ram`) from the
/// command line: the RAMBlock with this id lives in this file.
#[derive(Clone, Debug)]
pub struct Backend {
    pub id: String,
    pub size: u64,
    pub mem_path: Option<PathBuf>,
    pub share: bool,
}

/// A bitmap with atomic bit operations (one bit per target page).
pub struct AtomicBitmap {
    words: Vec<AtomicU64>,
    nbits: u64,
}

impl AtomicBitmap {
    pub fn new(nbits: u64) -> AtomicBitmap {
        let n = nbits.div_ceil(64) as usize;
        AtomicBitmap { words: (0..n).map(|_| AtomicU64::new(0)).collect(), nbits }
    }
    pub fn len(&self) -> u64 {
        self.nbits
    }
    pub fn is_empty(&self) -> bool {
        self.nbits == 0
    }
    /// Set a bit; returns its previous value.
    pub fn set(&self, i: u64) -> bool {
        let m = 1u64 << (i % 64);
        self.words[(i / 64) as usize].fetch_or(m, Ordering::AcqRel) & m != 0
    }
    pub fn clear(&self, i: u64) {
        let m = 1u64 << (i % 64);
        self.words[(i / 64) as usize].fetch_and(!m, Ordering::AcqRel);
    }
    pub fn get(&self, i: u64) -> bool {
        self.words[(i / 64) as usize].load(Ordering::Acquire) & (1u64 << (i % 64)) != 0
    }
    /// Clear the bits `from..end` (`end` at most [`AtomicBitmap::len`]),
    /// whole words at a time where the range covers them.
    pub fn clear_range(&self, from: u64, end: u64) {
        let end = end.min(self.nbits);
        let mut i = from;
        while i < end {
            let (w, lo) = ((i / 64) as usize, i % 64);
            let hi = (end - (i - lo)).min(64);
            let mask = if hi - lo == 64 { u64::MAX } else { ((1u64 << (hi - lo)) - 1) << lo };
            self.words[w].fetch_and(!mask, Ordering::AcqRel);
            i += hi - lo;
        }
    }
    /// The first bit in `from..end` (`end` at most [`AtomicBitmap::len`])
    /// whose value is `value`, a word at a time.
    pub fn next_with(&self, value: bool, from: u64, end: u64) -> Option<u64> {
        let end = end.min(self.nbits);
        let mut i = from;
        while i < end {
            let w = self.words[(i / 64) as usize].load(Ordering::Acquire);
            let w = if value { w } else { !w } >> (i % 64);
            if w != 0 {
                let at = i + w.trailing_zeros() as u64;
                return (at < end).then_some(at);
            }
            i = (i / 64 + 1) * 64;
        }
        None
    }
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| w.load(Ordering::Relaxed).count_ones() as u64).sum()
    }
    /// The bitmap as little-endian 64-bit words (QEMU's recv-bitmap layout).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.words.len() * 8);
        for w in &self.words {
            out.extend_from_slice(&w.load(Ordering::Acquire).to_le_bytes());
        }
        out
    }
}

/// One RAMBlock.
pub struct RamBlock {
    pub name: String,
    pub used_length: u64,
    /// The block's page size: the host page size for normal RAM, the huge
    /// page size for memory on hugetlbfs (QEMU's `RAMBlock.page_size`).
    /// Postcopy requests, places and discards whole pages of this size.
    pub page_size: u64,
    pub mapping: Mapping,
    pub received: AtomicBitmap,
}

impl std::fmt::Debug for RamBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RamBlock")
            .field("name", &self.name)
            .field("used_length", &self.used_length)
            .finish()
    }
}

impl RamBlock {
    pub fn pages(&self) -> u64 {
        self.used_length / TARGET_PAGE_SIZE
    }

    /// Target pages per page of this block (1 for normal RAM, 512 for
    /// 2 MiB huge pages).
    pub fn target_pages_per_page(&self) -> u64 {
        self.page_size / TARGET_PAGE_SIZE
    }

    /// Whether the block is in huge pages (placed whole, never zero-paged).
    pub fn is_huge(&self) -> bool {
        self.page_size > TARGET_PAGE_SIZE && self.mapping.is_huge()
    }

    /// Mark the target pages of `[offset, offset + len)` received.
    pub fn set_received(&self, offset: u64, len: u64) {
        for p in offset / TARGET_PAGE_SIZE..(offset + len) / TARGET_PAGE_SIZE {
            self.received.set(p);
        }
    }

    pub fn backing_path(&self) -> Option<&std::path::Path> {
        self.mapping.file_path()
    }

    /// xxh3-64 digest of every target page, in order.
    pub fn page_digests(&self) -> Vec<u64> {
        let mut buf = vec![0u8; TARGET_PAGE_SIZE as usize];
        (0..self.pages())
            .map(|p| {
                self.mapping.read((p * TARGET_PAGE_SIZE) as usize, &mut buf);
                digest::page_digest(&buf)
            })
            .collect()
    }

    /// Copy the whole block into `out`.
    pub fn read_all(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.used_length as usize];
        self.mapping.read(0, &mut v);
        v
    }
}

/// Errors creating RAMBlocks.
#[derive(Debug, thiserror::Error)]
pub enum RamError {
    #[error("RAMBlock {name:?}: used length {len:#x} is not a multiple of the target page size")]
    Unaligned { name: String, len: u64 },
    #[error("RAM total {total:#x} bytes exceeds the configured cap (--max-ram) of {cap:#x} bytes (block {name:?})")]
    OverCap { name: String, total: u64, cap: u64 },
    #[error("RAMBlock {name:?}: length {len:#x} does not match memory backend size {backend:#x}")]
    BackendSize { name: String, len: u64, backend: u64 },
    #[error("RAMBlock {name:?} announced twice")]
    Duplicate { name: String },
    #[error("RAMBlock {name:?}: cannot map memory: {err}")]
    Map { name: String, err: std::io::Error },
    #[error("memory backend {id:?}: cannot create its memory: {err}")]
    Backend { id: String, err: std::io::Error },
}

/// The RAMBlock table. Blocks are added while the stream announces them;
/// the memory of every backend exists from start-up ([`RamTable::create_backends`]).
pub struct RamTable {
    blocks: RwLock<Vec<Arc<RamBlock>>>,
    backends: Vec<Backend>,
    /// Backend memory created at start-up, not yet announced by a stream.
    created: Mutex<HashMap<String, Mapping>>,
    max_ram: u64,
}

impl RamTable {
    pub fn new(backends: Vec<Backend>, max_ram: u64) -> RamTable {
        RamTable {
            blocks: RwLock::new(Vec::new()),
            backends,
            created: Mutex::new(HashMap::new()),
            max_ram,
        }
    }

    /// Create the memory of every backend now, as QEMU does when it creates
    /// its `-object memory-backend-*` (the file of a `memory-backend-file`
    /// exists with its size whether or not a stream ever names the block).
    /// The `--max-ram` cap applies to what a stream announces, not here.
    pub fn create_backends(&self) -> Result<(), RamError> {
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        for be in &self.backends {
            if created.contains_key(&be.id) {
                continue;
            }
            let m = match &be.mem_path {
                Some(p) => Mapping::file_shared(p, be.size as usize),
                None => Mapping::anonymous(be.size as usize),
            }
            .map_err(|err| RamError::Backend { id: be.id.clone(), err })?;
            created.insert(be.id.clone(), m);
        }
        Ok(())
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The page size of every backend's memory created at start-up or
    /// announced since (by id): what QEMU's destination knows of its own
    /// RAMBlocks before the stream's MEM_SIZE (`ram_pagesize_summary()`).
    pub fn backend_page_sizes(&self) -> Vec<(String, u64)> {
        let created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(String, u64)> =
            created.iter().map(|(id, m)| (id.clone(), m.page_size() as u64)).collect();
        v.extend(
            self.blocks()
                .iter()
                .filter(|b| self.backends.iter().any(|be| be.id == b.name))
                .map(|b| (b.name.clone(), b.page_size)),
        );
        v.sort();
        v
    }

    pub fn max_ram(&self) -> u64 {
        self.max_ram
    }

    pub fn blocks(&self) -> Vec<Arc<RamBlock>> {
        self.blocks.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<RamBlock>> {
        self.blocks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|b| b.name == name)
            .cloned()
    }

    pub fn total(&self) -> u64 {
        self.blocks().iter().map(|b| b.used_length).sum()
    }

    /// Create a RAMBlock. A block whose name is a memory backend's id lives in
    /// that backend's file; others are anonymous memory.
    /// The block's page size is its memory's ([`Mapping::page_size`]).
    pub fn add(&self, name: &str, used_length: u64) -> Result<Arc<RamBlock>, RamError> {
        if !used_length.is_multiple_of(TARGET_PAGE_SIZE) || used_length == 0 {
            return Err(RamError::Unaligned { name: name.into(), len: used_length });
        }
        let mut blocks = self.blocks.write().unwrap_or_else(|e| e.into_inner());
        if blocks.iter().any(|b| b.name == name) {
            return Err(RamError::Duplicate { name: name.into() });
        }
        let total: u64 =
            blocks.iter().map(|b| b.used_length).sum::<u64>().saturating_add(used_length);
        if total > self.max_ram {
            return Err(RamError::OverCap { name: name.into(), total, cap: self.max_ram });
        }
        let backend = self.backends.iter().find(|b| b.id == name);
        let mapping = match backend {
            Some(be) => {
                if be.size != used_length {
                    return Err(RamError::BackendSize {
                        name: name.into(),
                        len: used_length,
                        backend: be.size,
                    });
                }
                let made = self.created.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
                match (made, &be.mem_path) {
                    (Some(m), _) => Ok(m),
                    (None, Some(p)) => Mapping::file_shared(p, used_length as usize),
                    (None, None) => Mapping::anonymous(used_length as usize),
                }
            }
            None => Mapping::anonymous(used_length as usize),
        }
        .map_err(|err| RamError::Map { name: name.into(), err })?;
        let page_size = (mapping.page_size() as u64).max(TARGET_PAGE_SIZE);
        let b = Arc::new(RamBlock {
            name: name.into(),
            used_length,
            page_size,
            mapping,
            received: AtomicBitmap::new(used_length / TARGET_PAGE_SIZE),
        });
        blocks.push(b.clone());
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_enforced_before_allocation() {
        let t = RamTable::new(vec![], 1 << 20);
        t.add("a", 512 << 10).unwrap();
        let e = t.add("b", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("exceeds the configured cap"), "{e}");
        assert!(t.get("b").is_none());
    }

    #[test]
    fn duplicate_and_unaligned() {
        let t = RamTable::new(vec![], 1 << 30);
        t.add("a", 8192).unwrap();
        assert!(matches!(t.add("a", 8192), Err(RamError::Duplicate { .. })));
        assert!(matches!(t.add("c", 100), Err(RamError::Unaligned { .. })));
    }

    #[test]
    fn backend_file_holds_block() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("mem0");
        let t = RamTable::new(
            vec![Backend {
                id: "mem0".into(),
                size: 1 << 20,
                mem_path: Some(p.clone()),
                share: true,
            }],
            1 << 30,
        );
        assert!(matches!(t.add("mem0", 2 << 20), Err(RamError::BackendSize { .. })));
        let b = t.add("mem0", 1 << 20).unwrap();
        b.mapping.write(4096, b"xyz");
        assert_eq!(&std::fs::read(&p).unwrap()[4096..4099], b"xyz");
        assert_eq!(b.backing_path(), Some(p.as_path()));
    }

    #[test]
    fn backends_exist_from_start_up() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("mem0");
        let be = |id: &str, size, mem_path| Backend { id: id.into(), size, mem_path, share: true };
        let t = RamTable::new(
            vec![be("mem0", 1 << 20, Some(p.clone())), be("ram1", 1 << 20, None)],
            1 << 30,
        );
        t.create_backends().unwrap();
        // The file exists with the backend's size before any stream.
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1 << 20);
        assert!(t.blocks().is_empty());
        // A stream's size mismatch is still refused; the right size gets
        // the memory created at start-up.
        assert!(matches!(t.add("mem0", 2 << 20), Err(RamError::BackendSize { .. })));
        let b = t.add("mem0", 1 << 20).unwrap();
        b.mapping.write(0, b"abc");
        assert_eq!(&std::fs::read(&p).unwrap()[..3], b"abc");
        assert_eq!(t.add("ram1", 1 << 20).unwrap().used_length, 1 << 20);
        // A backend whose file cannot be created fails at start-up.
        let bad = RamTable::new(vec![be("m", 4096, Some(d.path().join("no/such/dir")))], 1 << 30);
        assert!(matches!(bad.create_backends(), Err(RamError::Backend { .. })));
    }

    #[test]
    fn bitmap_next_with_matches_bit_by_bit() {
        let bm = AtomicBitmap::new(200);
        for i in [0u64, 1, 2, 63, 64, 65, 127, 130, 131, 132, 199] {
            bm.set(i);
        }
        for value in [false, true] {
            for from in 0..=201 {
                for end in [0u64, 1, 64, 65, 128, 131, 199, 200, 300] {
                    let naive = (from..end.min(200)).find(|&i| bm.get(i) == value);
                    assert_eq!(bm.next_with(value, from, end), naive, "{value} {from}..{end}");
                }
            }
        }
    }

    #[test]
    fn bitmap_clear_range_matches_bit_by_bit() {
        for (from, end) in
            [(0u64, 0u64), (0, 1), (3, 64), (0, 64), (63, 65), (5, 190), (64, 128), (70, 300)]
        {
            let bm = AtomicBitmap::new(190);
            for i in 0..190 {
                bm.set(i);
            }
            bm.clear_range(from, end);
            for i in 0..190 {
                assert_eq!(bm.get(i), !(from..end).contains(&i), "{from}..{end}: bit {i}");
            }
        }
    }

    #[test]
    fn bitmap_le_layout() {
        let bm = AtomicBitmap::new(70);
        bm.set(0);
        bm.set(9);
        bm.set(69);
        let b = bm.to_le_bytes();
        assert_eq!(b.len(), 16);
        assert_eq!(b[0], 1);
        assert_eq!(b[1], 2);
        assert_eq!(b[8], 0x20);
        assert_eq!(bm.count(), 3);
        assert!(bm.set(9));
        bm.clear(9);
        assert!(!bm.get(9));
    }
}
