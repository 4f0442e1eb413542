//! The harness's only `unsafe` code: raw system calls that no safe wrapper
//! covers (signal-handler plumbing, a socket ioctl, and plain memory
//! mappings for the memcpy reference of the benchmarks).

use std::os::fd::RawFd;

/// Write one byte to `fd` from a signal handler (async-signal-safe).
pub fn signal_safe_write_byte(fd: RawFd, b: u8) {
    // SAFETY: write(2) is async-signal-safe; the buffer is a live local byte.
    unsafe {
        libc::write(fd, &b as *const u8 as *const libc::c_void, 1);
    }
}

/// Clock ticks per second (for /proc/<pid>/stat times).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}

/// Install `action` for `sig`.
pub fn sigaction(
    sig: nix::sys::signal::Signal,
    action: &nix::sys::signal::SigAction,
) -> nix::Result<()> {
    // SAFETY: the handlers installed by the harness only call
    // async-signal-safe functions (signal_safe_write_byte).
    unsafe { nix::sys::signal::sigaction(sig, action).map(|_| ()) }
}

/// Bytes in the kernel send queue of a socket not yet acknowledged by the
/// peer (SIOCOUTQ), or None.
pub fn socket_send_queue(fd: RawFd) -> Option<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one c_int to the pointer we pass.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    (r == 0).then_some(n)
}

/// A private anonymous or shared file mapping, unmapped on drop (for the
/// memcpy reference rate only; guest RAM is rust-dest's business).
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    pub fn anonymous(len: usize) -> std::io::Result<Mapping> {
        // SAFETY: a fresh private anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        Self::from_raw(p, len)
    }

    pub fn shared_file(f: &std::fs::File, len: usize) -> std::io::Result<Mapping> {
        use std::os::fd::AsRawFd;
        // SAFETY: a shared mapping of a file the caller owns.
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
        Self::from_raw(p, len)
    }

    fn from_raw(p: *mut libc::c_void, len: usize) -> std::io::Result<Mapping> {
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p as *mut u8, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn fill(&mut self, byte: u8) {
        // SAFETY: the mapping is `len` bytes long and exclusively ours.
        unsafe { std::ptr::write_bytes(self.ptr, byte, self.len) };
    }

    /// Copy all of `src` (at most our length) into this mapping.
    pub fn copy_from(&mut self, src: &Mapping) {
        let n = src.len.min(self.len);
        // SAFETY: two distinct live mappings of at least n bytes each.
        unsafe { std::ptr::copy_nonoverlapping(src.ptr, self.ptr, n) };
        std::hint::black_box(self.ptr);
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping this value created; nothing else uses it.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}
