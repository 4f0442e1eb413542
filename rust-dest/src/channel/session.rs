//! One incoming migration session: which connection is which (main,
//! postcopy-preempt, recovery main), and the hand-off of a recovery
//! connection to the loader. What runs on a channel is not decided here: the
//! session hands each classified channel to its [`Incoming`] handler.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::state::{Capability, Shared};

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
    fn preempt_channel(&self, session: Arc<Session>, sock: Sock);
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
    pub fn shutdown(&self) {
        let _ = match self {
            Sock::Tcp(s) => s.shutdown(Shutdown::Both),
            Sock::Unix(s) => s.shutdown(Shutdown::Both),
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
    /// The loader is in postcopy-paused and waits for a new main channel.
    awaiting_recovery: bool,
    recovery: Option<Sock>,
    ended: bool,
}

/// Shared by the accept loops, the loader and the preempt reader.
pub struct Session {
    pub shared: Shared,
    incoming: Arc<dyn Incoming>,
    st: Mutex<St>,
    cv: Condvar,
}

impl Session {
    pub fn new(shared: Shared, incoming: Arc<dyn Incoming>) -> Arc<Session> {
        let s = Arc::new(Session {
            shared: shared.clone(),
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

    /// Classify a new connection (by order, as QEMU does for non-multifd
    /// setups: the preempt channel sends no magic): the first is the main
    /// channel; while paused, the next one is the recovery main channel;
    /// with postcopy-preempt, the next one is the preempt channel.
    pub fn on_connection(self: &Arc<Session>, sock: Sock) {
        let mut g = self.lock();
        if !g.main_taken {
            g.main_taken = true;
            let (r, w, h) = match (sock.try_clone(), sock.try_clone()) {
                (Ok(w), Ok(h)) => (sock, w, h),
                (Err(e), _) | (_, Err(e)) => {
                    drop(g);
                    self.shared.fail(format!("cannot clone the main channel socket: {e}"));
                    return;
                }
            };
            g.main_sock = Some(h);
            drop(g);
            let me = self.clone();
            let _ = std::thread::Builder::new()
                .name("incoming-main".into())
                .spawn(move || me.incoming.clone().main_channel(me, Box::new(r), Box::new(w)));
        } else if g.awaiting_recovery && g.recovery.is_none() {
            tracing::info!("recovery connection accepted as the new main channel");
            g.recovery = Some(sock);
            self.cv.notify_all();
        } else if self.shared.has(Capability::PostcopyPreempt) && !g.preempt_active {
            g.preempt_active = true;
            drop(g);
            tracing::info!("postcopy-preempt channel connected");
            let me = self.clone();
            let _ = std::thread::Builder::new()
                .name("incoming-preempt".into())
                .spawn(move || me.incoming.clone().preempt_channel(me, sock));
        } else {
            tracing::warn!("extra incoming connection ignored (no multifd; preempt channel already connected or not enabled)");
        }
    }

    /// A recorded stream from a file: the main channel, no return path
    /// (writes go nowhere).
    pub fn on_file(self: &Arc<Session>, f: std::fs::File) {
        self.lock().main_taken = true;
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("incoming-file".into())
            .spawn(move || me.incoming.clone().main_channel(me, Box::new(f), Box::new(io::sink())));
    }

    pub fn preempt_closed(&self) {
        self.lock().preempt_active = false;
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
