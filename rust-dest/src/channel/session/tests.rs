//! Connections beyond what the capabilities call for are refused (closed
//! at once, nothing read), as QEMU's destination ignores them.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Incoming, Session, Sock};
use crate::ram::RamTable;
use crate::state::{Capability, Shared};

/// Which handlers got a channel, and their readers (kept open).
type Channels = (Vec<&'static str>, Vec<Box<dyn Read + Send>>);

/// Records which handler got a channel and keeps its reader open.
#[derive(Default)]
struct Seen(Mutex<Channels>);

impl Incoming for Seen {
    fn main_channel(&self, _: Arc<Session>, r: Box<dyn Read + Send>, _: Box<dyn Write + Send>) {
        let mut g = self.0.lock().unwrap();
        g.0.push("main");
        g.1.push(r);
    }
    fn preempt_channel(&self, _: Arc<Session>, r: Box<dyn Read + Send>) {
        let mut g = self.0.lock().unwrap();
        g.0.push("preempt");
        g.1.push(r);
    }
    fn multifd_channel(&self, _: Arc<Session>, r: Box<dyn Read + Send>, _: Sock) {
        let mut g = self.0.lock().unwrap();
        g.0.push("multifd");
        g.1.push(r);
    }
}

fn session(multifd: bool) -> (Arc<Session>, Arc<Seen>) {
    let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 20)), false);
    if multifd {
        let mut g = shared.lock();
        g.capabilities.set(Capability::Multifd, true);
        g.parameters.insert("multifd-channels".into(), 1.into());
    }
    let seen = Arc::new(Seen::default());
    (Session::new(shared, seen.clone()), seen)
}

/// Connect a peer that sends `first`; the peer's end.
fn connect(s: &Arc<Session>, first: &[u8]) -> UnixStream {
    let (mut peer, ours) = UnixStream::pair().unwrap();
    peer.write_all(first).unwrap();
    s.on_connection(Sock::Unix(ours));
    peer
}

fn wait_seen(seen: &Seen, n: usize) -> Vec<&'static str> {
    let t = Instant::now();
    while seen.0.lock().unwrap().0.len() < n && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    seen.0.lock().unwrap().0.clone()
}

/// The peer of a refused connection reads end-of-stream at once.
fn assert_refused(mut peer: UnixStream) {
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 1];
    // Closed with the peer's bytes unread: end-of-stream or a reset.
    match peer.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection closed, got {other:?}"),
    }
}

#[test]
fn extra_connection_without_multifd_is_refused() {
    let (s, seen) = session(false);
    let _main = connect(&s, b"QEVM");
    assert_eq!(wait_seen(&seen, 1), ["main"]);
    assert_refused(connect(&s, b"QEVM"));
    assert_eq!(wait_seen(&seen, 2), ["main"]);
    s.end();
}

#[test]
fn connection_beyond_the_multifd_channels_is_refused() {
    let (s, seen) = session(true);
    let _main = connect(&s, b"QEVM");
    let _mf = connect(&s, &wire::consts::MULTIFD_MAGIC.to_be_bytes());
    let mut got = wait_seen(&seen, 2);
    got.sort();
    assert_eq!(got, ["main", "multifd"]);
    // Every channel is there: a third multifd channel (which QEMU's
    // destination ignores) is closed unread instead of failing the migration
    // as a duplicate channel id.
    assert_refused(connect(&s, &wire::consts::MULTIFD_MAGIC.to_be_bytes()));
    assert_eq!(wait_seen(&seen, 3).len(), 2);
    assert!(!s.shared.lock().status.is_terminal());
    s.end();
}
