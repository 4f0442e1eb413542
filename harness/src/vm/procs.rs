//! Child processes and files that always get cleaned up.
//!
//! * [`ChildGuard`] runs a command in its own process group; dropping it
//!   SIGKILLs the whole group and reaps the leader.
//! * [`PathGuard`] removes a file/socket/directory on drop.
//! * Both register themselves in a process-wide registry so that
//!   [`install_signal_cleanup`] can clean up on SIGINT/SIGTERM.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

// ---------------------------------------------------------------------------
// registry

#[derive(Default)]
struct Registry {
    pgids: HashSet<i32>,
    /// path -> number of live guards for it
    paths: HashMap<PathBuf, usize>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn with_registry<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut g = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(Registry::default))
}

/// Process groups currently registered (live [`ChildGuard`]s).
pub fn registered_pgids() -> Vec<i32> {
    with_registry(|r| r.pgids.iter().copied().collect())
}

/// Paths currently registered (live [`PathGuard`]s).
pub fn registered_paths() -> Vec<PathBuf> {
    with_registry(|r| r.paths.keys().cloned().collect())
}

/// Further cleanups run by [`cleanup_all`] (e.g. huge page pools).
static HOOKS: Mutex<Vec<fn()>> = Mutex::new(Vec::new());

/// Run `f` in [`cleanup_all`], after the processes are killed.
pub fn on_cleanup(f: fn()) {
    HOOKS.lock().unwrap_or_else(|e| e.into_inner()).push(f);
}

/// Kill every registered process group and remove every registered path.
/// Used by the signal handler; may also be called explicitly.
pub fn cleanup_all() {
    let (pgids, paths) = with_registry(|r| {
        (r.pgids.drain().collect::<Vec<_>>(), r.paths.drain().map(|(p, _)| p).collect::<Vec<_>>())
    });
    for pg in pgids {
        let _ = killpg(Pid::from_raw(pg), Signal::SIGKILL);
    }
    for p in paths {
        remove_path(&p);
    }
    let hooks = HOOKS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for f in hooks {
        f();
    }
}

static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // async-signal-safe: just write the signal number to the self-pipe
    let fd = SIGNAL_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        crate::sys::signal_safe_write_byte(fd, sig as u8);
    }
}

/// Install SIGINT/SIGTERM handlers that kill all registered process groups,
/// remove all registered paths and exit with status 130. Idempotent.
pub fn install_signal_cleanup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let (r, w): (OwnedFd, OwnedFd) = match nix::unistd::pipe() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("install_signal_cleanup: pipe failed: {e}");
                return;
            }
        };
        // the write end lives for the rest of the process
        SIGNAL_FD.store(std::os::fd::IntoRawFd::into_raw_fd(w), Ordering::SeqCst);
        std::thread::Builder::new()
            .name("crossmig-signal-cleanup".into())
            .spawn(move || {
                let mut f = File::from(r);
                let mut b = [0u8; 1];
                loop {
                    match f.read(&mut b) {
                        Ok(1) => break,
                        Ok(_) => return,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => return,
                    }
                }
                eprintln!("crossmig: caught signal {}, cleaning up", b[0]);
                cleanup_all();
                std::process::exit(130);
            })
            .expect("spawning signal cleanup thread");
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_signal),
            nix::sys::signal::SaFlags::SA_RESTART,
            nix::sys::signal::SigSet::empty(),
        );
        for sig in [Signal::SIGINT, Signal::SIGTERM] {
            if let Err(e) = crate::sys::sigaction(sig, &action) {
                tracing::warn!("install_signal_cleanup: sigaction({sig}) failed: {e}");
            }
        }
    });
}

// ---------------------------------------------------------------------------
// ChildGuard

/// A child process running in its own process group, with stdout+stderr
/// redirected to a log file. Dropping the guard SIGKILLs the whole group and
/// reaps the leader.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    pid: u32,
    log: PathBuf,
    status: Option<ExitStatus>,
    registered: bool,
}

impl ChildGuard {
    /// Spawn `cmd` in a new process group, stdin from /dev/null, stdout and
    /// stderr written to `log` (created or truncated).
    ///
    /// Because the child is in its own process group, a terminal's Ctrl-C
    /// does not reach it; the first spawn therefore calls
    /// [`install_signal_cleanup`].
    pub fn spawn(mut cmd: Command, log: &Path) -> Result<ChildGuard> {
        install_signal_cleanup();
        let out =
            File::create(log).with_context(|| format!("creating log file {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().with_context(|| format!("spawning {:?}", cmd))?;
        let pid = child.id();
        with_registry(|r| r.pgids.insert(pid as i32));
        Ok(ChildGuard { child, pid, log: log.to_owned(), status: None, registered: true })
    }

    /// PID of the child (= its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `n_bytes` of the log (lossy UTF-8).
    pub fn log_tail(&self, n_bytes: usize) -> String {
        file_tail(&self.log, n_bytes)
    }

    /// Exit status if the child has been reaped already.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Whether the group leader is still alive (exited-but-unreaped counts
    /// as not running). Does not reap.
    pub fn is_running(&self) -> bool {
        if self.status.is_some() {
            return false;
        }
        matches!(
            waitid(
                Id::Pid(Pid::from_raw(self.pid as i32)),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT
            ),
            Ok(WaitStatus::StillAlive)
        )
    }

    /// The signal the leader died of, if it has died of one (a crash such
    /// as SIGABRT, or a kill). Does not reap.
    pub fn killed_by(&self) -> Option<Signal> {
        if let Some(st) = self.status {
            return st.signal().and_then(|s| Signal::try_from(s).ok());
        }
        match waitid(
            Id::Pid(Pid::from_raw(self.pid as i32)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        ) {
            Ok(WaitStatus::Signaled(_, sig, _)) => Some(sig),
            _ => None,
        }
    }

    /// Non-blocking: if the leader has exited, kill the rest of its group
    /// (while the zombie still pins the pgid), reap it and return the status.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        if self.is_running() {
            return None;
        }
        self.kill_group();
        match self.child.wait() {
            Ok(st) => self.finish(st),
            Err(_) => self.finish(ExitStatus::from_raw(0x7f00)), // should not happen
        }
        self.status
    }

    /// Wait (blocking, polling every 10 ms) up to `timeout` for the child to
    /// exit. Returns `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Like [`wait_exit`](Self::wait_exit) but sleeps on the tokio timer.
    pub async fn wait_exit_async(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Send a signal to the whole process group.
    pub fn signal_group(&self, sig: Signal) -> Result<()> {
        if self.status.is_some() {
            anyhow::bail!("process {} already reaped", self.pid);
        }
        killpg(Pid::from_raw(self.pid as i32), sig)?;
        Ok(())
    }

    /// SIGKILL the whole group and reap the leader.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.kill_group();
            if let Ok(st) = self.child.wait() {
                self.finish(st);
            }
        }
        self.status
    }

    fn kill_group(&self) {
        // Only valid while the leader is not yet reaped (it pins the pgid).
        if self.status.is_none() {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }

    fn finish(&mut self, st: ExitStatus) {
        self.status = Some(st);
        if self.registered {
            with_registry(|r| r.pgids.remove(&(self.pid as i32)));
            self.registered = false;
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
        if self.registered {
            with_registry(|r| r.pgids.remove(&(self.pid as i32)));
            self.registered = false;
        }
    }
}

/// The last `n_bytes` of a file (lossy UTF-8), or an empty string.
pub fn file_tail(path: &Path, n_bytes: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(n_bytes as u64);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(n_bytes as u64).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

// ---------------------------------------------------------------------------
// PathGuard

/// Removes a file, socket or directory (recursively) when dropped;
/// a missing path is not an error.
#[derive(Debug)]
pub struct PathGuard(PathBuf);

impl PathGuard {
    pub fn new(path: impl Into<PathBuf>) -> PathGuard {
        let p = path.into();
        with_registry(|r| *r.paths.entry(p.clone()).or_insert(0) += 1);
        PathGuard(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Stop guarding: the path is kept and returned.
    pub fn keep(self) -> PathBuf {
        let p = self.0.clone();
        unregister_path(&p);
        std::mem::forget(self);
        p
    }
}

fn unregister_path(p: &Path) {
    with_registry(|r| {
        if let Some(n) = r.paths.get_mut(p) {
            *n -= 1;
            if *n == 0 {
                r.paths.remove(p);
            }
        }
    });
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        remove_path(&self.0);
        unregister_path(&self.0);
    }
}

impl AsRef<Path> for PathGuard {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

fn remove_path(p: &Path) {
    let res = match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) => Err(e),
    };
    if let Err(e) = res {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("removing {}: {e}", p.display());
        }
    }
}

// ---------------------------------------------------------------------------
// names and ports

/// A name unique across processes and threads:
/// `<prefix>-<pid>-<counter>-<random hex>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}-{:08x}", std::process::id(), random_u32())
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    match std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
    {
        Ok(()) => u32::from_ne_bytes(b),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            t.subsec_nanos() ^ std::process::id()
        }
    }
}

/// Ports handed out by [`free_tcp_port`] when the kernel's ephemeral range
/// is Linux's default (32768-60999): below it, so no outgoing connection of
/// a parallel test can be given the port between our check and QEMU's bind.
const PORT_RANGE: std::ops::Range<u32> = 20000..32000;

/// The ports [`free_tcp_port`] walks: [`PORT_RANGE`] unless this machine's
/// ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`) overlaps it;
/// then the larger stretch of 10000..65536 outside the ephemeral range, if
/// it holds at least 2000 ports (else [`PORT_RANGE`] all the same).
fn port_range() -> std::ops::Range<u32> {
    let eph = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| parse_port_range(&s));
    port_range_outside(eph)
}

fn parse_port_range(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split_whitespace().map(str::parse::<u32>);
    match (it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

fn port_range_outside(ephemeral: Option<(u32, u32)>) -> std::ops::Range<u32> {
    let Some((lo, hi)) = ephemeral else { return PORT_RANGE };
    if hi < PORT_RANGE.start || lo >= PORT_RANGE.end {
        return PORT_RANGE;
    }
    let below = 10000..lo.max(10000);
    let above = (hi + 1).max(10000)..65536;
    let best = if below.len() >= above.len() { below } else { above };
    if best.len() >= 2000 {
        best
    } else {
        PORT_RANGE
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process
/// has not handed out before.
///
/// Asking the kernel for port 0 is not enough: it returns an ephemeral port,
/// and once our probe socket closes, any test's outgoing connection may be
/// given that same port as its local end before QEMU binds it ("Address
/// already in use", seen in CI). Instead each process walks its own stretch
/// of a range outside the ephemeral one ([`port_range`]), starting at a
/// random point, and skips ports it cannot bind.
pub fn free_tcp_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static RANGE: OnceLock<std::ops::Range<u32>> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let range = RANGE.get_or_init(port_range);
    let span = range.end - range.start;
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let _ = NEXT.compare_exchange(
            u32::MAX,
            random_u32() % span,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (range.start + n % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Does a process with this pid exist (including zombies)?
pub fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_stay_outside_the_ephemeral_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range(""), None);
        // Linux's default, or no /proc: the fixed range.
        assert_eq!(port_range_outside(Some((32768, 60999))), PORT_RANGE);
        assert_eq!(port_range_outside(None), PORT_RANGE);
        // A container that made almost every port ephemeral.
        assert_eq!(port_range_outside(Some((1024, 65000))), PORT_RANGE);
        // Overlapping from below: the ports above it.
        assert_eq!(port_range_outside(Some((15000, 40000))), 40001..65536);
        // Overlapping from above: the ports below it.
        assert_eq!(port_range_outside(Some((25000, 64000))), 10000..25000);
    }
}
