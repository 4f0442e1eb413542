//! Huge pages for guest RAM: a private hugetlbfs mount and enough pages in
//! the kernel's pool (`/sys/kernel/mm/hugepages/hugepages-<kB>kB/nr_hugepages`)
//! for the memory-backend files of a source and its destination.
//!
//! [`HugeTlb::setup`] raises the pool by the pages it needs and mounts
//! hugetlbfs with that page size on a fresh directory; dropping it unmounts
//! and lowers the pool by the same number, so the machine's previous
//! `nr_hugepages` is back once every user is gone (also when the variant
//! failed, and on SIGINT/SIGTERM through [`super::procs::cleanup_all`]).
//! Changes of the pool are relative and made under a lock file, so that
//! parallel variants (and parallel test processes) add up instead of
//! overwriting each other. [`unavailable`] says, without changing anything,
//! why a machine cannot provide them (no such page size, no hugetlbfs, not
//! root and too few free pages).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::procs::{on_cleanup, unique_name};

/// Serialises pool changes between processes.
const LOCK_FILE: &str = "/tmp/crossmig-hugepages.lock";

/// Why huge pages could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HugePageError {
    #[error("huge pages of {} are not available on this machine: {reason}", size_name(*size))]
    Unavailable { size: u64, reason: String },
    #[error("the machine cannot provide {wanted} huge pages of {} (the pool grew by {got} only; memory is too fragmented or too small)", size_name(*size))]
    TooFew { size: u64, wanted: u64, got: u64 },
    #[error("huge page pool {path}: {source}")]
    Pool { path: PathBuf, source: std::io::Error },
    #[error("mounting hugetlbfs (pagesize {}) on {dir}: {msg}", size_name(*size))]
    Mount { size: u64, dir: PathBuf, msg: String },
}

/// "2M", "1G", or bytes.
pub fn size_name(size: u64) -> String {
    match size {
        s if s >= 1 << 30 && s.is_multiple_of(1 << 30) => format!("{}G", s >> 30),
        s if s >= 1 << 20 && s.is_multiple_of(1 << 20) => format!("{}M", s >> 20),
        s => format!("{s} bytes"),
    }
}

fn pool_dir(size: u64) -> PathBuf {
    PathBuf::from(format!("/sys/kernel/mm/hugepages/hugepages-{}kB", size >> 10))
}

fn read_num(p: &Path) -> std::io::Result<u64> {
    std::fs::read_to_string(p)?
        .trim()
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e}")))
}

/// Gigantic pages (1 GiB) rarely fit in a machine's fragmented memory:
/// from this size on [`unavailable`] asks the kernel once per process.
const TRIAL_FROM: u64 = 1 << 30;

/// Why `pages` huge pages of `size` bytes cannot be had here, or `None`.
/// For 2 MiB pages this changes nothing (whether the kernel finds that much
/// contiguous memory is known when [`HugeTlb::setup`] asks for it); for
/// gigantic pages, which a fragmented machine usually cannot provide, it
/// grows the pool once per process and size and gives the pages back at
/// once, so that such a machine skips the variant instead of failing it.
pub fn unavailable(size: u64, pages: u64) -> Option<String> {
    if let Some(why) = unavailable_static(size, pages) {
        return Some(why);
    }
    if size < TRIAL_FROM {
        return None;
    }
    static TRIED: Mutex<Vec<(u64, u64, Option<String>)>> = Mutex::new(Vec::new());
    let mut tried = TRIED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((.., why)) = tried.iter().find(|(s, p, _)| (*s, *p) == (size, pages)) {
        return why.clone();
    }
    let why = match change_pool(size, pages as i64) {
        Ok(got) if got >= pages as i64 => {
            let _ = change_pool(size, -got);
            None
        }
        Ok(got) => Some(format!(
            "the machine cannot provide {pages} huge pages of {} now (tried: the pool grew by {} only; memory is too fragmented)",
            size_name(size),
            got.max(0)
        )),
        Err(e) => Some(e.to_string()),
    };
    tried.push((size, pages, why.clone()));
    why
}

fn unavailable_static(size: u64, pages: u64) -> Option<String> {
    let dir = pool_dir(size);
    if !dir.is_dir() {
        return Some(format!(
            "huge pages of {} are not available ({} missing)",
            size_name(size),
            dir.display()
        ));
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs.lines().any(|l| l.split_whitespace().last() == Some("hugetlbfs")) {
        return Some("the kernel has no hugetlbfs (/proc/filesystems)".into());
    }
    // Opening for writing changes nothing, and fails unless root.
    if OpenOptions::new().write(true).open(dir.join("nr_hugepages")).is_err() {
        return Some(format!(
            "{} is not writable here (setting up huge pages needs root)",
            dir.join("nr_hugepages").display()
        ));
    }
    // The pool grows from free memory: it must at least be there.
    let avail_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let free = read_num(&dir.join("free_hugepages")).unwrap_or(0);
    let need_kib = pages.saturating_sub(free).saturating_mul(size >> 10);
    if need_kib > avail_kib {
        return Some(format!(
            "{pages} huge pages of {} need {} MiB; {} MiB available",
            size_name(size),
            need_kib >> 10,
            avail_kib >> 10
        ));
    }
    None
}

/// How often [`HugeTlb::setup_waiting`] tries again.
const POOL_RETRY: Duration = Duration::from_millis(250);

/// How long a variant waits for huge pages that other variants hold.
pub const POOL_WAIT: Duration = Duration::from_secs(180);

/// How long [`HugeTlb::setup_waiting`] tries again even when no pages are
/// held: memory a variant just gave back (its QEMU processes exiting) takes
/// a moment to be whole again; seen in a suite run, where the variant that
/// tried right after another ended got one 1 GiB page of two, and the two
/// variants that started seconds later got theirs.
const POOL_SETTLE: Duration = Duration::from_secs(20);

/// Whether pages of `size` are held: by live setups of this process, or in
/// the pool at all, persistent or surplus (a setup that has just grown the
/// pool is not yet in [`LIVE`]; pages given back while an exiting QEMU
/// still maps them stay as surplus pages until it is gone; a pool the
/// machine keeps for itself only makes a failing variant fail later).
fn pool_in_use(size: u64) -> bool {
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|(_, s, _)| *s == size);
    let held = |f: &str| read_num(&pool_dir(size).join(f)).is_ok_and(|n| n > 0);
    live || held("nr_hugepages") || held("surplus_hugepages")
}

/// Live setups, undone by [`undo_all`] on a signal.
static LIVE: Mutex<Vec<(PathBuf, u64, u64)>> = Mutex::new(Vec::new());

/// Undo every live setup (signal cleanup; drops do it otherwise).
fn undo_all() {
    // The lock is held until everything is undone: a variant ending on
    // the main thread meanwhile (its processes were just killed) waits in
    // `HugeTlb::drop` instead of letting the process exit mid-unmount.
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    for (dir, size, pages) in live.drain(..) {
        unmount(&dir);
        let _ = change_pool(size, -(pages as i64));
    }
}

/// Add `delta` pages to the pool of `size` (under the lock file); returns
/// how much it actually changed.
fn change_pool(size: u64, delta: i64) -> Result<i64, HugePageError> {
    let nr = pool_dir(size).join("nr_hugepages");
    let err = |source| HugePageError::Pool { path: nr.clone(), source };
    let lock = OpenOptions::new().create(true).append(true).open(LOCK_FILE).map_err(err)?;
    let _g = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| err(e.into()))?;
    let before = read_num(&nr).map_err(err)?;
    let want = (before as i64 + delta).max(0) as u64;
    std::fs::write(&nr, want.to_string()).map_err(err)?;
    let after = read_num(&nr).map_err(err)?;
    if delta > 0 && after < want {
        // Not enough: give back what was had and report it.
        std::fs::write(&nr, before.to_string()).map_err(err)?;
    }
    Ok(after as i64 - before as i64)
}

fn unmount(dir: &Path) {
    // Files left behind would keep their pages: remove them first.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    // After a signal the processes mapping the files were just SIGKILLed
    // and may not have exited yet (EBUSY): retry for a while.
    for _ in 0..50 {
        let out = Command::new("umount").arg(dir).stderr(std::process::Stdio::null()).status();
        if out.is_ok_and(|s| s.success()) || !mounted(dir) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir(dir);
}

/// Whether `dir` is a mount point (`/proc/self/mounts`).
fn mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let d = dir.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*d))
}

/// A hugetlbfs mount with its pages reserved in the pool; undone on drop.
#[derive(Debug)]
pub struct HugeTlb {
    dir: PathBuf,
    size: u64,
    pages: u64,
}

impl HugeTlb {
    /// Grow the pool of `size`-byte pages by `pages` and mount hugetlbfs
    /// with that page size.
    pub fn setup(size: u64, pages: u64) -> Result<HugeTlb, HugePageError> {
        if let Some(reason) = unavailable(size, pages) {
            return Err(HugePageError::Unavailable { size, reason });
        }
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| on_cleanup(undo_all));
        let got = change_pool(size, pages as i64)?;
        if got < pages as i64 {
            return Err(HugePageError::TooFew { size, wanted: pages, got: got.max(0) as u64 });
        }
        let dir = std::env::temp_dir().join(unique_name("crossmig-hugetlbfs"));
        let mounted = std::fs::create_dir(&dir).map_err(|e| e.to_string()).and_then(|()| {
            let out = Command::new("mount")
                .args(["-t", "hugetlbfs", "-o", &format!("pagesize={size},mode=0700"), "none"])
                .arg(&dir)
                .output()
                .map_err(|e| format!("running mount: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
        });
        if let Err(msg) = mounted {
            let _ = std::fs::remove_dir(&dir);
            let _ = change_pool(size, -(pages as i64));
            return Err(HugePageError::Mount { size, dir, msg });
        }
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).push((dir.clone(), size, pages));
        Ok(HugeTlb { dir, size, pages })
    }

    /// [`setup`](Self::setup), waiting up to `wait` while the pool is short
    /// and other setups hold pages of the same size:
    /// parallel variants each take their pages, and a machine that finds
    /// gigantic pages for one pair of VMs may not find them for four at
    /// once (seen in a suite run: the pool grew by one 1 GiB page only).
    /// They give their pages back when they end. With no pages of that size
    /// held at all the shortage is the machine's, and the error comes after
    /// [`POOL_SETTLE`].
    pub async fn setup_waiting(
        size: u64,
        pages: u64,
        wait: Duration,
    ) -> Result<HugeTlb, HugePageError> {
        let start = Instant::now();
        loop {
            match Self::setup(size, pages) {
                Err(HugePageError::TooFew { .. })
                    if start.elapsed() < wait
                        && (pool_in_use(size) || start.elapsed() < POOL_SETTLE) =>
                {
                    tokio::time::sleep(POOL_RETRY).await;
                }
                r => return r,
            }
        }
    }

    /// A file name in the mount (for a memory-backend file).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn page_size(&self) -> u64 {
        self.size
    }

    /// Allocate (and so zero) this mount's share of the pool once, in a
    /// file deleted again at once: the pages stay in the pool, backed. On a
    /// virtual machine whose host backs guest memory lazily and takes back
    /// what the guest frees (free page reporting), the first process to
    /// write fresh pool pages otherwise pays the host's page faults (about
    /// 5 ms per 2 MiB page measured here, against 0.25 ms warm), so a
    /// benchmark would charge it to whichever side ran first.
    pub fn prefault(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let p = self.dir.join(".crossmig-prefault");
        let f = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&p)?;
        let len = (self.size * self.pages) as i64;
        let r = nix::fcntl::fallocate(f.as_raw_fd(), nix::fcntl::FallocateFlags::empty(), 0, len);
        drop(f);
        std::fs::remove_file(&p)?;
        r.map_err(std::io::Error::from)
    }
}

impl Drop for HugeTlb {
    fn drop(&mut self) {
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = live.iter().position(|(d, ..)| d == &self.dir) else { return };
        live.remove(i);
        drop(live);
        unmount(&self.dir);
        if let Err(e) = change_pool(self.size, -(self.pages as i64)) {
            tracing::warn!("giving back {} huge pages: {e}", self.pages);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(size_name(2 << 20), "2M");
        assert_eq!(size_name(1 << 30), "1G");
        assert_eq!(size_name(4096), "4096 bytes");
        assert!(unavailable(3 << 20, 1).unwrap().contains("3M"));
    }
}
