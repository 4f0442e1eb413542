//! One incoming migration session: which connection is which (main,
//! postcopy-preempt, recovery main), and the hand-off of a recovery
//! connection to the loader. What runs on a channel is not decided here: the
//! session hands each classified channel to its [`Incoming`] handler.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::file::IncomingFile;
use crate::state::{Capability, Shared};

/// How long a connection of a multifd migration may stay silent before it
/// is taken for the (possibly silent) postcopy-preempt channel.
pub const CLASSIFY_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the main channel may stay silent while postcopy places pages
/// before the destination pauses (`postcopy-paused`, error-desc naming the
/// silence): a source in postcopy sends until EOF without pause, so silence
/// this long means the connection is lost without an error.
pub const POSTCOPY_SILENCE_LIMIT: Duration = Duration::from_secs(60);

/// How long a return-path write may block (the source does not read its
/// return path) before it fails; a failed write pauses a postcopy.
pub const RP_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a pause waits for the preempt reader to stop (QEMU's
/// `postcopy_pause_incoming()` shuts the preempt channel and waits for its
/// thread before reporting `postcopy-paused`).
pub const PREEMPT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How [`Session::end_preempt`] ends the preempt channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreemptEnd {
    /// At a pause: shut the channel down now, so that no page of the
    /// interrupted connection is placed after it (the received bitmap sent
    /// at recovery must be final).
    Cut,
    /// At the end of postcopy, for a source that writes EOS on the preempt
    /// channel after the main channel's EOF (machine types up to 7.2): read
    /// up to that EOS.
    AwaitEos,
    /// At the end of postcopy, for a source that writes nothing after EOF:
    /// reading is shut down, so the reader gets what has already arrived,
    /// then end-of-stream.
    Drain,
}

/// What runs on the channels a session classifies (the loader implements
/// it; the session never calls the loader directly).
pub trait Incoming: Send + Sync + 'static {
    /// The main channel: `r` to read the stream, `w` for the return path.
    /// Called on a fresh thread; returns when the migration is over.
    fn main_channel(
        &self,
        session: Arc<Session>,
        r: Box<dyn Read + Send>,
        w: Box<dyn Write + Send>,
    );
    /// The postcopy-preempt channel. Called on a fresh thread.
    fn preempt_channel(&self, session: Arc<Session>, r: Box<dyn Read + Send>);
    /// A multifd channel: `r` reads it from its first byte, `sock` is a
    /// handle to shut it down. Called on a fresh thread.
    fn multifd_channel(&self, session: Arc<Session>, r: Box<dyn Read + Send>, sock: Sock);
    /// A stream in a file (`file:`): `f` is positioned at the stream's
    /// first byte, file offset `base`; no return path. Read like a main
    /// channel unless the implementation needs the file itself (mapped-ram).
    fn file_channel(&self, session: Arc<Session>, f: std::fs::File, _base: u64) {
        self.main_channel(session, Box::new(f), Box::new(io::sink()))
    }
}

/// A connected stream socket.
pub enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    pub fn try_clone(&self) -> io::Result<Sock> {
        Ok(match self {
            Sock::Tcp(s) => Sock::Tcp(s.try_clone()?),
            Sock::Unix(s) => Sock::Unix(s.try_clone()?),
        })
    }
    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.set_read_timeout(d),
            Sock::Unix(s) => s.set_read_timeout(d),
        }
    }
    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.set_write_timeout(d),
            Sock::Unix(s) => s.set_write_timeout(d),
        }
    }
    /// Limit the socket's receive buffer to `bytes` (`SO_RCVBUF`; the
    /// kernel doubles it and stops autotuning it).
    pub fn set_recv_buffer(&self, bytes: usize) -> io::Result<()> {
        use nix::sys::socket::{setsockopt, sockopt::RcvBuf};
        match self {
            Sock::Tcp(s) => setsockopt(s, RcvBuf, &bytes),
            Sock::Unix(s) => setsockopt(s, RcvBuf, &bytes),
        }
        .map_err(io::Error::from)
    }
    pub fn shutdown(&self) {
        self.shutdown_how(Shutdown::Both);
    }
    /// The connection failed (e.g. reset by the peer), even if received
    /// bytes still wait to be read; nothing is read or cleared.
    pub fn error_pending(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let fd = match self {
            Sock::Tcp(s) => s.as_fd(),
            Sock::Unix(s) => s.as_fd(),
        };
        let mut fds = [PollFd::new(fd, PollFlags::empty())];
        matches!(nix::poll::poll(&mut fds, PollTimeout::ZERO), Ok(1))
            && fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLERR))
    }
    /// Reads return what is already received, then end-of-stream.
    pub fn shutdown_read(&self) {
        self.shutdown_how(Shutdown::Read);
    }
    fn shutdown_how(&self, how: Shutdown) {
        let _ = match self {
            Sock::Tcp(s) => s.shutdown(how),
            Sock::Unix(s) => s.shutdown(how),
        };
    }
}

impl Read for Sock {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(b),
            Sock::Unix(s) => s.read(b),
        }
    }
}

impl Read for &Sock {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => (&*s).read(b),
            Sock::Unix(s) => (&*s).read(b),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(b),
            Sock::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.flush(),
            Sock::Unix(s) => s.flush(),
        }
    }
}

#[derive(Default)]
struct St {
    main_taken: bool,
    /// A shutdown handle for the current main channel (migrate-pause).
    main_sock: Option<Sock>,
    preempt_active: bool,
    /// The current preempt channel: its number and a shutdown handle.
    preempt: Option<(u64, Sock)>,
    /// Preempt channels started so far.
    preempt_started: u64,
    /// Multifd channels classified so far.
    multifd_seen: u32,
    /// Connections of a multifd migration still being classified.
    classifying: u32,
    /// The loader is in postcopy-paused and waits for a new main channel.
    awaiting_recovery: bool,
    recovery: Option<Sock>,
    ended: bool,
    /// The file of a `file:` migration.
    file: Option<IncomingFile>,
}

/// Shared by the accept loops, the loader and the preempt reader.
pub struct Session {
    pub shared: Shared,
    /// The QEMU version whose rules apply (set once by `main`; unset: the
    /// newest).
    pub compat: std::sync::OnceLock<crate::compat::QemuVersion>,
    incoming: Arc<dyn Incoming>,
    st: Mutex<St>,
    cv: Condvar,
}

impl Session {
    pub fn new(shared: Shared, incoming: Arc<dyn Incoming>) -> Arc<Session> {
        let s = Arc::new(Session {
            shared: shared.clone(),
            compat: std::sync::OnceLock::new(),
            incoming,
            st: Mutex::new(St::default()),
            cv: Condvar::new(),
        });
        let s2 = s.clone();
        shared.set_pause_handler(Box::new(move || {
            let g = s2.st.lock().unwrap();
            match &g.main_sock {
                Some(sock) => {
                    sock.shutdown();
                    Ok(())
                }
                None => Err("no incoming main channel to pause".into()),
            }
        }));
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Classify a new connection. Without multifd, by order (as QEMU does:
    /// the preempt channel sends no magic): the first is the main channel;
    /// while paused, the next one is the recovery main channel; with
    /// postcopy-preempt, the next one is the preempt channel. With multifd,
    /// by its first four bytes like QEMU 8.0+ (see [`Session::classify`]).
    ///
    /// Once every channel the capabilities call for is connected, a further
    /// connection (other than a recovery while paused) is refused: closed at
    /// once, nothing read (QEMU's `socket_accept_incoming_migration()`:
    /// "Extra incoming migration connection; ignoring"). Connections still
    /// being classified are bounded by the number of channels expected.
    pub fn on_connection(self: &Arc<Session>, sock: Sock) {
        if self.shared.has(Capability::Multifd) {
            let channels = self.multifd_channels();
            let preempt = self.shared.has(Capability::PostcopyPreempt);
            {
                let mut g = self.lock();
                if !g.awaiting_recovery {
                    let all = g.main_taken
                        && g.multifd_seen >= channels
                        && (!preempt || g.preempt_active);
                    // main + multifd + preempt, and one spare for a
                    // connection that closes without a byte.
                    let expected = 2 + channels + u32::from(preempt);
                    if all || g.classifying >= expected {
                        tracing::warn!(
                            "extra incoming migration connection refused: {} ({} channel(s) being classified, {channels} multifd channel(s) expected)",
                            if all { "every channel is connected" } else { "too many unclassified connections" },
                            g.classifying
                        );
                        return;
                    }
                }
                g.classifying += 1;
            }
            let me = self.clone();
            let _ = std::thread::Builder::new().name("incoming-classify".into()).spawn(move || {
                me.classify(sock);
                me.lock().classifying -= 1;
            });
            return;
        }
        let mut g = self.lock();
        if !g.main_taken {
            drop(g);
            self.start_main(sock, Box::new(io::empty()));
        } else if g.awaiting_recovery && g.recovery.is_none() {
            tracing::info!("recovery connection accepted as the new main channel");
            g.recovery = Some(sock);
            self.cv.notify_all();
        } else if self.shared.has(Capability::PostcopyPreempt) {
            if let Some((_, old)) = g.preempt.take() {
                // A new preempt channel (after a recovery) replaces one whose
                // reader has not noticed its end yet: never leave the new one
                // unread (the source would block writing to it).
                tracing::warn!("new postcopy-preempt channel replaces the previous one");
                old.shutdown();
            }
            drop(g);
            self.start_preempt(sock, Box::new(io::empty()));
        } else {
            tracing::warn!("extra incoming migration connection refused (no multifd; preempt channel already connected or not enabled)");
        }
    }

    /// Classify a connection of a multifd migration (QEMU's
    /// `migration_ioc_process_incoming()`, 8.0+): a recovery connection
    /// while paused; the preempt channel when the main and every multifd
    /// channel are there (it may be silent, so nothing is read); otherwise
    /// by the first four bytes: `QEVM` the main channel, 0x11223344 a
    /// multifd channel. A connection that stays silent for
    /// [`CLASSIFY_TIMEOUT`] is the preempt channel when one is expected.
    fn classify(self: &Arc<Session>, sock: Sock) {
        let channels = self.multifd_channels();
        {
            let mut g = self.lock();
            if g.awaiting_recovery && g.recovery.is_none() {
                tracing::info!("recovery connection accepted as the new main channel");
                g.recovery = Some(sock);
                self.cv.notify_all();
                return;
            }
            if g.main_taken
                && g.multifd_seen >= channels
                && self.shared.has(Capability::PostcopyPreempt)
                && !g.preempt_active
            {
                drop(g);
                self.start_preempt(sock, Box::new(io::empty()));
                return;
            }
        }
        let mut head = [0u8; 4];
        let mut n = 0;
        let _ = sock.set_read_timeout(Some(CLASSIFY_TIMEOUT));
        let res = loop {
            if n == head.len() {
                break Ok(());
            }
            match (&sock).read(&mut head[n..]) {
                Ok(0) => break Err(None),
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(Some(e)),
            }
        };
        let _ = sock.set_read_timeout(None);
        let prefix: Box<dyn Read + Send> = Box::new(io::Cursor::new(head[..n].to_vec()));
        let magic = u32::from_be_bytes(head);
        match res {
            Ok(()) if magic == wire::consts::QEMU_VM_FILE_MAGIC => {
                if std::mem::replace(&mut self.lock().main_taken, true) {
                    tracing::warn!("second main channel (QEVM) ignored");
                    return;
                }
                self.start_main(sock, prefix);
            }
            Ok(()) if magic == wire::consts::MULTIFD_MAGIC => {
                self.lock().multifd_seen += 1;
                let handle = match sock.try_clone() {
                    Ok(h) => h,
                    Err(e) => {
                        self.shared.fail(format!("cannot clone a multifd channel socket: {e}"));
                        return;
                    }
                };
                let me = self.clone();
                let r: Box<dyn Read + Send> = Box::new(prefix.chain(sock));
                let _ = std::thread::Builder::new()
                    .name("incoming-multifd".into())
                    .spawn(move || me.incoming.clone().multifd_channel(me, r, handle));
            }
            Err(Some(e))
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
                    && self.shared.has(Capability::PostcopyPreempt)
                    && !self.lock().preempt_active =>
            {
                self.start_preempt(sock, prefix);
            }
            Err(None) if n == 0 => {
                tracing::warn!("incoming connection closed before sending anything; ignored")
            }
            Err(Some(e)) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                // QEMU would wait for the bytes; nothing is lost by not
                // using a connection that says nothing.
                tracing::warn!("incoming connection silent for {CLASSIFY_TIMEOUT:?} ({n} byte(s)) and no preempt channel expected; ignored")
            }
            Err(e) => {
                let why = e.map_or("closed".to_string(), |e| e.to_string());
                self.shared.fail(format!(
                    "incoming connection: cannot read its first 4 bytes to classify it ({n} read: {why})"
                ));
            }
            Ok(()) => self.shared.fail(format!(
                "incoming connection with unknown channel magic {magic:#010x} (expected QEVM or the multifd magic 0x11223344)"
            )),
        }
    }

    /// The `multifd-channels` parameter.
    fn multifd_channels(&self) -> u32 {
        let g = self.shared.lock();
        g.parameters.get("multifd-channels").and_then(|v| v.as_u64()).unwrap_or(2) as u32
    }

    /// Start the main channel on `sock`, reading `prefix` first.
    fn start_main(self: &Arc<Session>, sock: Sock, prefix: Box<dyn Read + Send>) {
        let (w, h) = match (sock.try_clone(), sock.try_clone()) {
            (Ok(w), Ok(h)) => {
                let _ = w.set_write_timeout(Some(RP_WRITE_TIMEOUT));
                (w, h)
            }
            (Err(e), _) | (_, Err(e)) => {
                self.shared.fail(format!("cannot clone the main channel socket: {e}"));
                return;
            }
        };
        {
            let mut g = self.lock();
            g.main_taken = true;
            g.main_sock = Some(h);
        }
        let me = self.clone();
        let r: Box<dyn Read + Send> = Box::new(prefix.chain(sock));
        let _ = std::thread::Builder::new()
            .name("incoming-main".into())
            .spawn(move || me.incoming.clone().main_channel(me, r, Box::new(w)));
    }

    fn start_preempt(self: &Arc<Session>, sock: Sock, prefix: Box<dyn Read + Send>) {
        let n = {
            let mut g = self.lock();
            g.preempt_active = true;
            g.preempt_started += 1;
            let n = g.preempt_started;
            g.preempt = sock.try_clone().ok().map(|h| (n, h));
            n
        };
        tracing::info!("postcopy-preempt channel connected");
        let me = self.clone();
        let r: Box<dyn Read + Send> = Box::new(prefix.chain(sock));
        let _ = std::thread::Builder::new().name("incoming-preempt".into()).spawn(move || {
            me.incoming.clone().preempt_channel(me.clone(), r);
            me.preempt_ended(n);
        });
    }

    /// Preempt channel `n`'s reader returned.
    fn preempt_ended(&self, n: u64) {
        let mut g = self.lock();
        if g.preempt_started == n {
            g.preempt_active = false;
        }
        if g.preempt.as_ref().is_some_and(|(k, _)| *k == n) {
            g.preempt = None;
        }
        self.cv.notify_all();
    }

    /// Stop the preempt reader and wait (at most `timeout`) until it has
    /// returned; `how` says what it may still read (see [`PreemptEnd`]).
    /// False when the reader did not stop in time.
    pub fn end_preempt(&self, how: PreemptEnd, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut g = self.lock();
        if let Some((_, s)) = &g.preempt {
            match how {
                PreemptEnd::Cut => s.shutdown(),
                PreemptEnd::Drain => s.shutdown_read(),
                PreemptEnd::AwaitEos => {}
            }
        }
        while g.preempt_active {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self.cv.wait_timeout(g, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    /// Bound reads of the current main channel (`None`: block).
    pub fn set_main_read_timeout(&self, d: Option<Duration>) {
        if let Some(s) = &self.lock().main_sock {
            let _ = s.set_read_timeout(d);
        }
    }

    /// Postcopy's receive window on the main channel (`--postcopy-window`):
    /// without preempt a requested page queues behind everything in flight
    /// on this channel, so keep that short.
    pub fn set_main_recv_buffer(&self, bytes: usize) {
        if let Some(s) = &self.lock().main_sock {
            if let Err(e) = s.set_recv_buffer(bytes) {
                tracing::warn!("main channel: cannot set the postcopy receive buffer: {e}");
            }
        }
    }

    /// A stream from a file (`file:PATH[,offset=N]`, `file:/dev/fdset/N`):
    /// the main channel reads from the offset, no return path (writes go
    /// nowhere). The file stays reachable through [`Session::incoming_file`].
    pub fn on_file(self: &Arc<Session>, f: IncomingFile) {
        let reader = match f.file.try_clone() {
            Ok(r) => r,
            Err(e) => {
                self.shared
                    .fail(format!("cannot clone the incoming file {}: {e}", f.path.display()));
                return;
            }
        };
        let base = f.offset;
        {
            let mut g = self.lock();
            g.main_taken = true;
            g.file = Some(f);
        }
        // Read like a main channel from `base`, unless the loader needs the
        // file itself (mapped-ram: pages at fixed offsets).
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("incoming-file".into())
            .spawn(move || me.incoming.clone().file_channel(me, reader, base));
    }

    /// The file of a `file:` migration (a clone: its own descriptor, the
    /// same open file). `None` for other transports.
    pub fn incoming_file(&self) -> Option<IncomingFile> {
        self.lock().file.as_ref().and_then(|f| f.try_clone().ok())
    }

    /// `fd:NAME`: a connected socket is a connection like any accepted one
    /// (return path included); any other descriptor (a file, a pipe) is read
    /// as the main channel without a return path.
    pub fn on_fd(self: &Arc<Session>, fd: std::os::fd::OwnedFd) {
        use nix::sys::socket::{getsockname, AddressFamily, SockaddrLike, SockaddrStorage};
        use std::os::fd::AsRawFd;
        let family = getsockname::<SockaddrStorage>(fd.as_raw_fd()).ok().and_then(|a| a.family());
        match family {
            Some(AddressFamily::Unix) => self.on_connection(Sock::Unix(UnixStream::from(fd))),
            Some(AddressFamily::Inet | AddressFamily::Inet6) => {
                self.on_connection(Sock::Tcp(TcpStream::from(fd)))
            }
            _ => {
                self.lock().main_taken = true;
                let f = std::fs::File::from(fd);
                self.start_stream("incoming-fd", Box::new(f), Box::new(io::sink()));
            }
        }
    }

    /// `exec:COMMAND`: the command's stdout is the main channel, its stdin
    /// the return path. The command is reaped when it exits; its exit status
    /// is logged only (the stream itself decides the outcome).
    pub fn on_exec(self: &Arc<Session>, cmd: String, mut child: std::process::Child) {
        let (Some(out), Some(inp)) = (child.stdout.take(), child.stdin.take()) else {
            self.shared.fail(format!("exec command {cmd:?}: no pipes"));
            return;
        };
        self.lock().main_taken = true;
        self.start_stream("incoming-exec", Box::new(out), Box::new(inp));
        let _ =
            std::thread::Builder::new().name("incoming-exec-wait".into()).spawn(
                move || match child.wait() {
                    Ok(st) if st.success() => tracing::info!("exec command {cmd:?} exited"),
                    Ok(st) => tracing::warn!("exec command {cmd:?} exited: {st}"),
                    Err(e) => tracing::warn!("exec command {cmd:?}: wait: {e}"),
                },
            );
    }

    fn start_stream(
        self: &Arc<Session>,
        name: &str,
        r: Box<dyn Read + Send>,
        w: Box<dyn Write + Send>,
    ) {
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || me.incoming.clone().main_channel(me, r, w));
    }

    /// Enter postcopy-paused: forget the old main channel, accept the next
    /// connection as the recovery main channel.
    pub fn begin_pause(&self) {
        let mut g = self.lock();
        g.main_sock = None;
        g.awaiting_recovery = true;
        g.recovery = None;
    }

    /// Block until a recovery connection arrives (or the session ends).
    pub fn wait_recovery(&self) -> Option<Sock> {
        let mut g = self.lock();
        loop {
            if let Some(s) = g.recovery.take() {
                g.awaiting_recovery = false;
                if let Ok(h) = s.try_clone() {
                    g.main_sock = Some(h);
                }
                return Some(s);
            }
            if g.ended {
                return None;
            }
            g = self
                .cv
                .wait_timeout(g, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn end(&self) {
        let mut g = self.lock();
        g.ended = true;
        g.main_sock = None;
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
#[path = "session_tests.rs"]
mod recovery_tests;
