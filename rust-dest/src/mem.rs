//! The only module with `unsafe` code: guest-RAM mappings (mmap), page
//! placement, discards, and userfaultfd ioctls.
//!
//! A [`Mapping`] owns one contiguous mapping of a RAMBlock: anonymous private
//! memory, or a shared mapping of a file (`-object memory-backend-file`), so
//! that the file holds the block byte for byte from offset 0.
//!
//! Concurrency model: guest RAM is shared between the loader thread(s), the
//! simulated vCPU readers and the QMP server (digests, dumps). Exactly like a
//! VMM's guest memory, it is accessed through raw pointers with copy
//! semantics (`ptr::copy_nonoverlapping`), never through long-lived Rust
//! references, so concurrent readers may observe a page mid-update but no
//! reference aliasing rules are violated. The mapping stays valid for the
//! lifetime of the `Mapping` (unmapped on drop only).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

/// How often a placement is retried while the kernel says EAGAIN (the
/// address space is changing) before it is reported as an error.
const EAGAIN_RETRIES: u32 = 10_000;

/// Most ranges [`Mapping::recv_into`] fills in one call (a multifd packet
/// has at most 128 pages of 4 KiB).
pub const RECV_IOV_MAX: usize = 128;

/// One mmap'd region holding a RAMBlock.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    file: Option<(File, PathBuf)>,
    /// The unit the kernel maps this memory in: the host's base page size,
    /// or the huge page size of a file on hugetlbfs (QEMU's
    /// `qemu_fd_getpagesize()`, `util/oslib-posix.c`).
    page_size: usize,
}

// SAFETY: the mapping is plain memory owned by this struct; all access goes
// through raw-pointer copies (see module docs), so sharing across threads is
// sound in the same way as any VMM guest memory.
unsafe impl Send for Mapping {}
// SAFETY: see above; no method hands out references into the mapping.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Anonymous, private, zero-filled memory of `len` bytes (no reservation:
    /// pages are allocated on first touch).
    pub fn anonymous(len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "zero-length RAMBlock"));
        }
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(p as *mut u8).expect("mmap returned null"),
            len,
            file: None,
            page_size: host_page_size(),
        })
    }

    /// A shared mapping of `path`, created if missing and truncated/extended
    /// to exactly `len` bytes (like QEMU's memory-backend-file with share=on).
    /// Existing contents are discarded so the block starts zeroed. A file on
    /// hugetlbfs is mapped in huge pages; `len` must be a multiple of them.
    pub fn file_shared(path: &Path, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "zero-length RAMBlock"));
        }
        let f =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let page_size = fd_page_size(&f)?;
        if !len.is_multiple_of(page_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "size {len:#x} is not a multiple of the file system's page size {page_size:#x}"
                ),
            ));
        }
        f.set_len(0)?;
        f.set_len(len as u64)?;
        // SAFETY: maps a file we own an fd to, at a fresh address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(p as *mut u8).expect("mmap returned null"),
            len,
            file: Some((f, path.to_path_buf())),
            page_size,
        })
    }

    /// The page size the memory is mapped in (see the field).
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Huge pages (hugetlbfs): no UFFDIO_ZEROPAGE, whole-page placement.
    pub fn is_huge(&self) -> bool {
        self.page_size > host_page_size()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn file_path(&self) -> Option<&Path> {
        self.file.as_ref().map(|(_, p)| p.as_path())
    }

    pub fn host_addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    fn check(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= self.len),
            "guest RAM access out of range: offset {offset:#x} len {len:#x} block len {:#x}",
            self.len
        );
    }

    /// Copy `data` into the mapping at `offset` (panics if out of range:
    /// callers validate offsets against the block first).
    pub fn write(&self, offset: usize, data: &[u8]) {
        self.check(offset, data.len());
        // SAFETY: range checked above; the mapping is live for &self; source
        // and destination cannot overlap (data is not inside guest RAM).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len())
        }
    }

    /// Receive from the stream socket `fd` straight into the mapping, like
    /// QEMU's multifd receiver reads pages with `recvmsg()` into guest RAM
    /// (`migration/multifd-nocomp.c`, `qio_channel_readv_all()`): `segs`
    /// are (offset, length) ranges filled in order by one `recvmsg()` with
    /// `MSG_WAITALL` (at most [`RECV_IOV_MAX`] of them). Returns the bytes
    /// received: all of them unless the stream ended (0: nothing came) or
    /// the socket was shut down. Panics if a range is out of the mapping
    /// (callers validate offsets against the block first).
    pub fn recv_into(&self, fd: BorrowedFd<'_>, segs: &[(usize, usize)]) -> io::Result<usize> {
        let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; RECV_IOV_MAX];
        let n = segs.len().min(RECV_IOV_MAX);
        for (v, &(offset, len)) in iov.iter_mut().zip(&segs[..n]) {
            self.check(offset, len);
            // SAFETY: range checked above, so the pointer stays inside the
            // live mapping (no reference is created; the kernel writes the
            // bytes like any other write to guest RAM, see module docs).
            let base = unsafe { self.ptr.as_ptr().add(offset) };
            *v = libc::iovec { iov_base: base as *mut _, iov_len: len };
        }
        // SAFETY: all-zero is a valid msghdr (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = n as _;
        loop {
            // SAFETY: `msg` points at `n` iovecs, each inside this mapping
            // (checked above), valid for `&self`; `fd` is a borrowed open fd.
            let r = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_WAITALL) };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Read `len` bytes of the file `fd` at `file_offset` straight into the
    /// mapping at `offset` with `pread()`, as QEMU's mapped-ram loader does
    /// (`migration/ram.c: read_ramblock_mapped_ram()`, `migration/file.c:
    /// multifd_file_recv_data()`); works with `O_DIRECT` descriptors when
    /// offset, length and file offset are block-aligned (guest RAM is
    /// page-aligned). Returns the bytes read: fewer than `len` only at the
    /// end of the file. Panics if the range is out of the mapping (callers
    /// validate it against the block first).
    pub fn pread_into(
        &self,
        fd: BorrowedFd<'_>,
        file_offset: u64,
        offset: usize,
        len: usize,
    ) -> io::Result<usize> {
        self.check(offset, len);
        let mut done = 0usize;
        while done < len {
            // SAFETY: range checked above, so `base..base + len - done`
            // stays inside the live mapping; the kernel writes the bytes like
            // any other write to guest RAM (module docs); `fd` is open.
            let r = unsafe {
                let base = self.ptr.as_ptr().add(offset + done);
                libc::pread(
                    fd.as_raw_fd(),
                    base as *mut _,
                    len - done,
                    (file_offset + done as u64) as libc::off_t,
                )
            };
            match r {
                0 => break,
                n if n > 0 => done += n as usize,
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(done)
    }

    /// Let `f` write the `len` bytes at `offset` through a slice (a
    /// decompressor's output). Panics if out of range.
    pub fn with_mut_slice<R>(
        &self,
        offset: usize,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        self.check(offset, len);
        // SAFETY: range checked above; the mapping is live for `&self`. The
        // slice does not outlive `f`. Its pages are written only by the
        // caller during `f` (one multifd packet's pages, which no other
        // channel writes in the same sync round); other threads only copy
        // out of guest RAM through raw pointers, racing exactly like they
        // do with `write` or with the kernel's `recv_into` (module docs).
        let s = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset), len) };
        f(s)
    }

    /// Allocate and map the pages of a range for writing in one call
    /// (`MADV_POPULATE_WRITE`, Linux 5.14+) instead of one page fault per
    /// page when they are first written. Returns false when the kernel
    /// cannot (the pages then fault in as usual).
    pub fn populate_write(&self, offset: usize, len: usize) -> bool {
        self.check(offset, len);
        // SAFETY: range checked; populating pages of our own mapping does
        // not change their contents (pages already present stay as they are).
        let r = unsafe {
            libc::madvise(self.ptr.as_ptr().add(offset) as *mut _, len, libc::MADV_POPULATE_WRITE)
        };
        r == 0
    }

    /// Fill `len` bytes at `offset` with `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) {
        self.check(offset, len);
        // SAFETY: range checked above; mapping live for &self.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(offset), byte, len) }
    }

    /// Copy out of the mapping into `buf`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        self.check(offset, buf.len());
        // SAFETY: range checked above; mapping live for &self.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            )
        }
    }

    /// True if the `len` bytes at `offset` are all zero (reads without
    /// copying the whole range at once).
    pub fn is_zero(&self, offset: usize, len: usize) -> bool {
        self.check(offset, len);
        let mut buf = [0u8; 4096];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len());
            self.read(offset + done, &mut buf[..n]);
            if buf[..n].iter().any(|&b| b != 0) {
                return false;
            }
            done += n;
        }
        true
    }

    /// Drop the pages of a range so that they read as zero again and, once
    /// registered with userfaultfd, fault on next access: MADV_DONTNEED for
    /// anonymous memory, hole punching for file-backed memory.
    pub fn discard(&self, offset: usize, len: usize) -> io::Result<()> {
        self.check(offset, len);
        match &self.file {
            None => {
                // SAFETY: range checked; DONTNEED on our own private anonymous
                // mapping only drops its pages (they read back as zero).
                let r = unsafe {
                    libc::madvise(self.ptr.as_ptr().add(offset) as *mut _, len, libc::MADV_DONTNEED)
                };
                if r != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Some((f, _)) => {
                // SAFETY: plain syscall on our own fd.
                let r = unsafe {
                    libc::fallocate(
                        f.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        offset as libc::off_t,
                        len as libc::off_t,
                    )
                };
                if r != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }

    /// Register the whole mapping with `uffd` in MISSING mode.
    pub fn uffd_register(&self, uffd: &userfaultfd::Uffd) -> io::Result<()> {
        uffd.register(self.ptr.as_ptr() as *mut libc::c_void, self.len)
            .map(|_| ())
            .map_err(|e| io::Error::other(format!("userfaultfd register: {e}")))
    }

    pub fn uffd_unregister(&self, uffd: &userfaultfd::Uffd) -> io::Result<()> {
        uffd.unregister(self.ptr.as_ptr() as *mut libc::c_void, self.len)
            .map_err(|e| io::Error::other(format!("userfaultfd unregister: {e}")))
    }

    /// Atomically place a page with UFFDIO_COPY. Returns Ok(false) if the
    /// page was already present (EEXIST), which callers treat as success.
    pub fn uffd_copy(
        &self,
        uffd: &userfaultfd::Uffd,
        offset: usize,
        data: &[u8],
    ) -> io::Result<bool> {
        self.uffd_copy_wake(uffd, offset, data, true)
    }

    /// [`Mapping::uffd_copy`], waking the faulting threads only if `wake`
    /// (`UFFDIO_COPY_MODE_DONTWAKE` otherwise).
    pub fn uffd_copy_wake(
        &self,
        uffd: &userfaultfd::Uffd,
        offset: usize,
        data: &[u8],
        wake: bool,
    ) -> io::Result<bool> {
        self.check(offset, data.len());
        let mut retries = 0;
        loop {
            // SAFETY: destination range checked and registered with this uffd;
            // the source buffer is valid for data.len() bytes.
            let r = unsafe {
                uffd.copy(
                    data.as_ptr() as *const libc::c_void,
                    self.ptr.as_ptr().add(offset) as *mut libc::c_void,
                    data.len(),
                    wake,
                )
            };
            match r {
                Ok(_) => return Ok(true),
                Err(userfaultfd::Error::CopyFailed(e)) if e as i32 == libc::EEXIST => {
                    return Ok(false)
                }
                Err(userfaultfd::Error::CopyFailed(e))
                    if e as i32 == libc::EAGAIN && retries < EAGAIN_RETRIES =>
                {
                    retries += 1;
                    std::thread::yield_now();
                    continue;
                }
                Err(e) => return Err(io::Error::other(format!("UFFDIO_COPY at {offset:#x}: {e}"))),
            }
        }
    }

    /// Atomically place a zero page with UFFDIO_ZEROPAGE (Ok(false) on EEXIST).
    pub fn uffd_zero(
        &self,
        uffd: &userfaultfd::Uffd,
        offset: usize,
        len: usize,
    ) -> io::Result<bool> {
        self.uffd_zero_wake(uffd, offset, len, true)
    }

    /// [`Mapping::uffd_zero`], waking the faulting threads only if `wake`.
    pub fn uffd_zero_wake(
        &self,
        uffd: &userfaultfd::Uffd,
        offset: usize,
        len: usize,
        wake: bool,
    ) -> io::Result<bool> {
        self.check(offset, len);
        let mut retries = 0;
        loop {
            // SAFETY: range checked and registered with this uffd.
            let r = unsafe {
                uffd.zeropage(self.ptr.as_ptr().add(offset) as *mut libc::c_void, len, wake)
            };
            match r {
                Ok(_) => return Ok(true),
                Err(userfaultfd::Error::ZeropageFailed(e)) if e as i32 == libc::EEXIST => {
                    return Ok(false)
                }
                Err(userfaultfd::Error::ZeropageFailed(e))
                    if e as i32 == libc::EAGAIN && retries < EAGAIN_RETRIES =>
                {
                    retries += 1;
                    std::thread::yield_now();
                    continue;
                }
                Err(e) => {
                    return Err(io::Error::other(format!("UFFDIO_ZEROPAGE at {offset:#x}: {e}")))
                }
            }
        }
    }

    /// Wake threads waiting on a range (after a page arrived by another path).
    pub fn uffd_wake(&self, uffd: &userfaultfd::Uffd, offset: usize, len: usize) -> io::Result<()> {
        self.check(offset, len);
        // SAFETY: range checked and registered with this uffd.
        unsafe { uffd.wake(self.ptr.as_ptr().add(offset) as *mut libc::c_void, len) }
            .map_err(|e| io::Error::other(format!("UFFDIO_WAKE: {e}")))
    }

    /// Read one byte through a volatile load, so that on a
    /// userfaultfd-registered range a missing page really faults (used by the
    /// simulated vCPUs).
    pub fn touch(&self, offset: usize) -> u8 {
        self.check(offset, 1);
        // SAFETY: range checked; volatile read of a byte of our mapping.
        unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(offset)) }
    }

    /// Flush a file-backed mapping to its file (no-op for anonymous memory).
    pub fn sync(&self) -> io::Result<()> {
        if self.file.is_some() {
            // SAFETY: msync of our own mapping.
            let r = unsafe { libc::msync(self.ptr.as_ptr() as *mut _, self.len, libc::MS_SYNC) };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own this mapping; nothing references it after drop.
        unsafe {
            libc::munmap(self.ptr.as_ptr() as *mut _, self.len);
        }
    }
}

/// The page size of the file system holding `f`: its block size on
/// hugetlbfs (the huge page size of the mount), else the host's base page
/// size, as QEMU's `qemu_fd_getpagesize()` (`util/oslib-posix.c`).
fn fd_page_size(f: &File) -> io::Result<usize> {
    // SAFETY: all-zero is a valid statfs (plain integers).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `f` is an open fd for the call; `st` is a valid out pointer.
    let r = unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.f_type as i64 == libc::HUGETLBFS_MAGIC && st.f_bsize > 0 {
        Ok(st.f_bsize as usize)
    } else {
        Ok(host_page_size())
    }
}

/// The host's base page size.
pub fn host_page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let r = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if r <= 0 {
        4096
    } else {
        r as usize
    }
}

/// Take ownership of descriptor `fd` inherited from the parent process
/// (`-chardev socket,fd=N`), flagged close-on-exec. The caller checked that
/// it is an open socket meant for rust-dest.
pub fn adopt_inherited_fd(fd: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(std::io::Error::from)?;
    // SAFETY: `fd` is open (fcntl succeeded) and was handed to this process
    // on its command line for this one use; nothing else in the process
    // owns or closes it, so the OwnedFd is its only owner.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Take ownership of a descriptor just received with SCM_RIGHTS
/// (`qmp::fdpass`).
pub fn adopt_received_fd(fd: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: the kernel installed `fd` in this process's table for this
    // recvmsg() call alone; no other code knows its number, so the OwnedFd
    // is its only owner.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anon_write_read_discard() {
        let m = Mapping::anonymous(1 << 20).unwrap();
        m.write(4096, &[7u8; 4096]);
        let mut b = [0u8; 4096];
        m.read(4096, &mut b);
        assert!(b.iter().all(|&x| x == 7));
        assert!(!m.is_zero(4096, 4096));
        m.discard(4096, 4096).unwrap();
        assert!(m.is_zero(4096, 4096));
    }

    #[test]
    fn file_backed_matches_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ram");
        let m = Mapping::file_shared(&p, 64 << 10).unwrap();
        m.write(8192, b"hello");
        m.sync().unwrap();
        let f = std::fs::read(&p).unwrap();
        assert_eq!(f.len(), 64 << 10);
        assert_eq!(&f[8192..8197], b"hello");
        m.discard(8192, 4096).unwrap();
        let f = std::fs::read(&p).unwrap();
        assert!(f[8192..12288].iter().all(|&x| x == 0));
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn out_of_range_panics() {
        let m = Mapping::anonymous(4096).unwrap();
        m.write(4095, &[1, 2]);
    }
}
