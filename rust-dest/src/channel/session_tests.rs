//! The session's preempt-channel hand-over around a postcopy pause, with
//! socket pairs and a recording [`Incoming`].

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::ram::RamTable;
use crate::state::Shared;

/// Counts preempt channels started and ended; a preempt reader reads until
/// its channel ends (EOF or error), like the real one.
#[derive(Default)]
struct Probe {
    started: AtomicUsize,
    ended: AtomicUsize,
    /// Bytes the preempt readers read.
    read: AtomicUsize,
}

impl Incoming for Probe {
    fn main_channel(
        &self,
        _s: Arc<Session>,
        mut r: Box<dyn Read + Send>,
        _w: Box<dyn Write + Send>,
    ) {
        let mut b = [0u8; 64];
        while matches!(r.read(&mut b), Ok(n) if n > 0) {}
    }
    fn preempt_channel(&self, _s: Arc<Session>, mut r: Box<dyn Read + Send>) {
        self.started.fetch_add(1, Ordering::SeqCst);
        let mut b = [0u8; 64];
        while let Ok(n @ 1..) = r.read(&mut b) {
            self.read.fetch_add(n, Ordering::SeqCst);
        }
        self.ended.fetch_add(1, Ordering::SeqCst);
    }
    fn multifd_channel(&self, _s: Arc<Session>, _r: Box<dyn Read + Send>, _k: Sock) {}
}

fn session() -> (Arc<Session>, Arc<Probe>) {
    let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
    shared.lock().capabilities.set(Capability::PostcopyPreempt, true);
    let probe = Arc::new(Probe::default());
    (Session::new(shared, probe.clone()), probe)
}

/// A connection as the session gets it, and the source's end.
fn connect() -> (Sock, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    (Sock::Unix(a), b)
}

fn until(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(5), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A session with its main channel and a running preempt reader; the
/// source's ends of both channels.
fn with_preempt() -> (Arc<Session>, Arc<Probe>, UnixStream, UnixStream) {
    let (s, p) = session();
    let (main, m) = connect();
    s.on_connection(main);
    let (pre, src) = connect();
    s.on_connection(pre);
    until("the preempt reader", || p.started.load(Ordering::SeqCst) == 1);
    (s, p, m, src)
}

/// QEMU's `postcopy_pause_incoming()` closes the preempt channel: the pause
/// must stop its reader even though the source keeps its end open, so that
/// nothing of the old connection is placed after the pause.
#[test]
fn a_pause_stops_the_preempt_reader() {
    let (s, p, _m, _p_src) = with_preempt();
    assert!(
        s.end_preempt(PreemptEnd::Cut, Duration::from_secs(5)),
        "the preempt reader did not stop"
    );
    assert_eq!(p.ended.load(Ordering::SeqCst), 1);
    s.end();
}

/// After a recovery, a new preempt connection is read even when the old
/// reader lingers: ignoring it would block the source writing to it (both
/// sides stuck in postcopy-active).
#[test]
fn a_new_preempt_channel_replaces_a_lingering_one() {
    let (s, p, _m, _p1) = with_preempt();
    // Paused without stopping the reader (as if it had not noticed yet).
    s.begin_pause();
    let (rec, _r) = connect();
    s.on_connection(rec);
    assert!(s.wait_recovery().is_some());
    let (pre2, mut p2) = connect();
    s.on_connection(pre2);
    until("the second preempt reader", || p.started.load(Ordering::SeqCst) == 2);
    until("the first reader's end", || p.ended.load(Ordering::SeqCst) == 1);
    // The new channel is the current one: closing it ends its reader, and
    // a pause then finds nothing running.
    p2.write_all(b"x").unwrap();
    drop(p2);
    until("the second reader's end", || p.ended.load(Ordering::SeqCst) == 2);
    assert!(s.end_preempt(PreemptEnd::Cut, Duration::from_millis(100)));
    s.end();
}

/// At the end of postcopy the loader waits for the preempt reader without
/// cutting the channel: the reader still running holds the wait, its end
/// (the source's EOS, or the channel closing) releases it.
#[test]
fn the_end_of_postcopy_waits_for_the_preempt_reader() {
    let (s, p, _m, mut src) = with_preempt();
    assert!(
        !s.end_preempt(PreemptEnd::AwaitEos, Duration::from_millis(200)),
        "returned while the reader ran"
    );
    assert_eq!(p.ended.load(Ordering::SeqCst), 0, "the wait must not shut the channel");
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        src.write_all(b"last").unwrap();
        drop(src);
    });
    assert!(
        s.end_preempt(PreemptEnd::AwaitEos, Duration::from_secs(5)),
        "the reader's end did not release the wait"
    );
    assert_eq!(p.ended.load(Ordering::SeqCst), 1);
    closer.join().unwrap();
    s.end();
}

/// A source that sends no EOS keeps its preempt channel open after the
/// main channel's EOF: the end of postcopy reads what has arrived on it
/// (the reader still gets the queued bytes) and then stops the reader.
#[test]
fn the_end_of_postcopy_drains_a_preempt_channel_without_eos() {
    let (s, p, _m, mut src) = with_preempt();
    src.write_all(&[7u8; 300]).unwrap();
    assert!(s.end_preempt(PreemptEnd::Drain, Duration::from_secs(5)), "the reader did not stop");
    assert_eq!(p.ended.load(Ordering::SeqCst), 1);
    assert_eq!(p.read.load(Ordering::SeqCst), 300, "bytes queued before the end were not all read");
    s.end();
}
