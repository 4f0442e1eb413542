//! A TCP proxy owned by the harness, placed between a migration source and
//! its destination: it forwards every accepted connection to an upstream
//! address and can record or damage the source→destination direction.
//!
//! * Every accepted connection gets its own upstream connection, made in
//!   accept order (so the destination accepts them in the source's order);
//!   connections are numbered 0, 1, 2, … in that order (a source may open
//!   several: main channel, multifd, postcopy-preempt).
//! * A [`ProxyPlan`] applies to the source→destination ("forward") direction
//!   of one connection ([`ProxyPlan::conn`], default 0): record the forwarded
//!   bytes, XOR bytes at given offsets, truncate or cut at an offset, stall
//!   once, throttle. The destination→source direction (the return path) is
//!   always forwarded untouched. Connections without a plan are forwarded
//!   untouched.
//! * [`ProxyHandle`] gives runtime control and statistics: bytes forwarded
//!   per direction per connection, how each connection ended, and
//!   [`ProxyHandle::cut_now`].
//! * Dropping the [`Proxy`] aborts every task and closes every socket.
//!
//! Offsets are byte offsets in the forward byte stream of that connection
//! (0 = the first byte the source sent on it).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

/// How long a truncated connection keeps draining the destination's side
/// (so the destination sees a clean FIN after the last byte, not a reset).
const TRUNCATE_DRAIN: Duration = Duration::from_secs(10);
/// How long a cut waits for the forwarded bytes to leave the send queue
/// before resetting the connection.
const CUT_FLUSH: Duration = Duration::from_millis(500);
/// How long [`ProxyHandle::partition_now`] waits for every connection to
/// stop forwarding.
const PARTITION_ACK: Duration = Duration::from_secs(10);
/// Read/forward chunk size.
const CHUNK: usize = 64 * 1024;

/// What to do with the source→destination direction of one connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyPlan {
    /// Index of the connection (accept order) this plan applies to.
    pub conn: usize,
    /// Write every forwarded byte (after `flip`, i.e. exactly what the
    /// destination is sent) to this file. Each chunk is written to the file
    /// before it is sent upstream, so the file is complete as soon as the
    /// destination has the bytes (if sending fails, the file may hold one
    /// chunk more than was delivered). The file is created (truncated) by
    /// [`Proxy::start`].
    pub record: Option<PathBuf>,
    /// Write every byte of the other direction (destination → source: the
    /// return path) to this file, created like `record`.
    pub record_return: Option<PathBuf>,
    /// `(offset, xor)`: XOR the byte at `offset` with `xor` on the way.
    pub flip: Vec<(u64, u8)>,
    /// Forward exactly this many bytes, then close both directions: the
    /// destination gets a FIN right after the last byte (it sees a
    /// truncated stream), the source's socket is closed.
    pub truncate_at: Option<u64>,
    /// Forward exactly this many bytes, then "cut the network": both
    /// sockets are reset (RST). The proxy waits up to 500 ms for the bytes
    /// to leave its send queue first, so the destination normally receives
    /// all of them and then a reset. See also [`ProxyHandle::cut_now`].
    pub cut_at: Option<u64>,
    /// Once `at_offset` bytes have been forwarded, pause forwarding (this
    /// direction) for the given time.
    pub stall: Option<(u64, Duration)>,
    /// Forward at most this many bytes per second (this direction).
    pub throttle: Option<u64>,
}

impl ProxyPlan {
    /// A plan for connection 0 that changes nothing.
    pub fn new() -> ProxyPlan {
        ProxyPlan::default()
    }
    pub fn on_connection(mut self, conn: usize) -> Self {
        self.conn = conn;
        self
    }
    pub fn record(mut self, path: impl Into<PathBuf>) -> Self {
        self.record = Some(path.into());
        self
    }
    pub fn record_return(mut self, path: impl Into<PathBuf>) -> Self {
        self.record_return = Some(path.into());
        self
    }
    pub fn flip(mut self, offset: u64, xor: u8) -> Self {
        self.flip.push((offset, xor));
        self
    }
    pub fn truncate_at(mut self, n: u64) -> Self {
        self.truncate_at = Some(n);
        self
    }
    pub fn cut_at(mut self, n: u64) -> Self {
        self.cut_at = Some(n);
        self
    }
    pub fn stall(mut self, at: u64, d: Duration) -> Self {
        self.stall = Some((at, d));
        self
    }
    pub fn throttle(mut self, bytes_per_sec: u64) -> Self {
        self.throttle = Some(bytes_per_sec);
        self
    }
}

/// How a proxied connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnEnd {
    /// Both directions ended with EOF and were shut down in turn.
    Closed,
    /// `truncate_at` reached.
    Truncated,
    /// `cut_at` reached or [`ProxyHandle::cut_now`]/[`ProxyHandle::cut_conn`].
    Cut,
    /// [`ProxyHandle::partition_now`]: nothing forwarded any more, both
    /// sockets held open (silent) until the proxy is dropped.
    Partitioned,
    /// Connecting upstream failed, or a socket error.
    Error(String),
}

/// Runtime statistics of one proxied connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnStats {
    /// Accept order, from 0.
    pub index: usize,
    /// The source's address.
    pub peer: SocketAddr,
    /// Bytes forwarded source → destination (written upstream).
    pub src_to_dst: u64,
    /// Bytes forwarded destination → source.
    pub dst_to_src: u64,
    /// `None` while the connection is open.
    pub end: Option<ConnEnd>,
}

struct ConnState {
    index: usize,
    peer: SocketAddr,
    up: AtomicU64,
    down: AtomicU64,
    end: Mutex<Option<ConnEnd>>,
    cut: Notify,
    partition: Notify,
}

impl ConnState {
    fn finish(&self, e: ConnEnd) {
        let mut g = self.end.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            tracing::debug!(conn = self.index, end = ?e, "proxy connection ended");
            *g = Some(e);
        }
    }
    fn ended(&self) -> bool {
        self.end.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
    fn stats(&self) -> ConnStats {
        ConnStats {
            index: self.index,
            peer: self.peer,
            src_to_dst: self.up.load(Ordering::Relaxed),
            dst_to_src: self.down.load(Ordering::Relaxed),
            end: self.end.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

struct Inner {
    upstream: SocketAddr,
    plans: Vec<ProxyPlan>,
    /// Record files created at start, taken by their connection.
    records: Mutex<HashMap<usize, File>>,
    /// Return-path record files, taken by their connection.
    return_records: Mutex<HashMap<usize, File>>,
    conns: Mutex<Vec<Arc<ConnState>>>,
    tasks: Mutex<Vec<AbortHandle>>,
    /// Signalled on every accept and every connection end.
    changed: Notify,
}

/// Runtime control of a [`Proxy`] (cheap to clone). Does nothing once the
/// proxy is dropped.
#[derive(Clone)]
pub struct ProxyHandle(Arc<Inner>);

impl ProxyHandle {
    /// Statistics of every connection accepted so far, in accept order.
    pub fn stats(&self) -> Vec<ConnStats> {
        self.0.conns.lock().unwrap().iter().map(|c| c.stats()).collect()
    }

    /// Statistics of connection `i`, if it was accepted.
    pub fn conn(&self, i: usize) -> Option<ConnStats> {
        self.0.conns.lock().unwrap().get(i).map(|c| c.stats())
    }

    /// `(src_to_dst, dst_to_src)` bytes of connection `i` (zeros if not accepted).
    pub fn bytes(&self, i: usize) -> (u64, u64) {
        self.conn(i).map(|s| (s.src_to_dst, s.dst_to_src)).unwrap_or((0, 0))
    }

    /// Number of connections accepted so far.
    pub fn connections(&self) -> usize {
        self.0.conns.lock().unwrap().len()
    }

    /// Cut (reset) every open connection now; how many were open.
    /// Connections accepted later are forwarded normally.
    pub fn cut_now(&self) -> usize {
        let conns = self.0.conns.lock().unwrap();
        let open: Vec<_> = conns.iter().filter(|c| !c.ended()).collect();
        for c in &open {
            c.cut.notify_one();
        }
        open.len()
    }

    /// Cut (reset) connection `i` now, if it is open.
    pub fn cut_conn(&self, i: usize) {
        if let Some(c) = self.0.conns.lock().unwrap().get(i) {
            if !c.ended() {
                c.cut.notify_one();
            }
        }
    }

    /// Partition every open connection now ("the network goes silent"):
    /// nothing more is forwarded in either direction and neither end is
    /// closed or reset, so each side learns of it only by its own means
    /// (a timeout, or `migrate-pause`), as after a real network partition.
    /// Returns once every one of them has stopped forwarding (so a close
    /// that a side makes afterwards is not passed on); returns the number
    /// of connections partitioned. The sockets stay open until the proxy is
    /// dropped; connections accepted later are forwarded normally.
    pub async fn partition_now(&self) -> Result<usize> {
        let open: Vec<usize> = {
            let conns = self.0.conns.lock().unwrap();
            conns
                .iter()
                .filter(|c| !c.ended())
                .map(|c| {
                    c.partition.notify_one();
                    c.index
                })
                .collect()
        };
        self.wait_for(
            "the partitioned connections to stop forwarding",
            |s| open.iter().all(|&i| s[i].end.is_some()),
            PARTITION_ACK,
        )
        .await?;
        Ok(open.len())
    }

    /// Wait until `pred(stats)` holds (re-checked on every accept and every
    /// connection end, and every 50 ms). Fails on timeout.
    pub async fn wait_for(
        &self,
        what: &str,
        pred: impl Fn(&[ConnStats]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<ConnStats>> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.0.changed.notified();
            let s = self.stats();
            if pred(&s) {
                return Ok(s);
            }
            let now = Instant::now();
            if now >= deadline {
                anyhow::bail!(
                    "proxy: timed out after {timeout:?} waiting for {what}; connections: {s:?}"
                );
            }
            let _ = tokio::time::timeout((deadline - now).min(Duration::from_millis(50)), notified)
                .await;
        }
    }

    /// Wait until connection `i` was accepted and has ended.
    pub async fn wait_ended(&self, i: usize, timeout: Duration) -> Result<ConnStats> {
        let s = self
            .wait_for(
                &format!("connection {i} to end"),
                |s| s.get(i).is_some_and(|c| c.end.is_some()),
                timeout,
            )
            .await?;
        Ok(s[i].clone())
    }
}

/// A running proxy. Dropping it stops everything.
pub struct Proxy {
    addr: SocketAddr,
    handle: ProxyHandle,
    accept: AbortHandle,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("upstream", &self.handle.0.upstream)
            .finish()
    }
}

impl Proxy {
    /// Listen on `listen` (e.g. `"127.0.0.1:0"`) and forward to `upstream`
    /// with `plan` applied to connection `plan.conn`. Must be called inside
    /// a tokio runtime.
    pub async fn start(listen: &str, upstream: SocketAddr, plan: ProxyPlan) -> Result<Proxy> {
        Self::start_plans(listen, upstream, vec![plan]).await
    }

    /// Like [`start`](Self::start) with one plan per connection (each
    /// names its connection; at most one plan per connection).
    pub async fn start_plans(
        listen: &str,
        upstream: SocketAddr,
        plans: Vec<ProxyPlan>,
    ) -> Result<Proxy> {
        let mut records = HashMap::new();
        let mut return_records = HashMap::new();
        for (i, p) in plans.iter().enumerate() {
            if plans[..i].iter().any(|q| q.conn == p.conn) {
                anyhow::bail!("proxy: two plans for connection {}", p.conn);
            }
            if let Some(path) = &p.record {
                let f = File::create(path)
                    .with_context(|| format!("proxy: creating record file {}", path.display()))?;
                records.insert(p.conn, f);
            }
            if let Some(path) = &p.record_return {
                let f = File::create(path)
                    .with_context(|| format!("proxy: creating record file {}", path.display()))?;
                return_records.insert(p.conn, f);
            }
        }
        let listener =
            TcpListener::bind(listen).await.with_context(|| format!("proxy: binding {listen}"))?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            upstream,
            plans,
            records: Mutex::new(records),
            return_records: Mutex::new(return_records),
            conns: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            changed: Notify::new(),
        });
        let accept = tokio::spawn(accept_loop(listener, inner.clone())).abort_handle();
        tracing::debug!(%addr, %upstream, "proxy started");
        Ok(Proxy { addr, handle: ProxyHandle(inner), accept })
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `tcp:HOST:PORT` URI of [`addr`](Self::addr), for QMP `migrate`.
    pub fn uri(&self) -> String {
        format!("tcp:{}", self.addr)
    }

    pub fn upstream(&self) -> SocketAddr {
        self.handle.0.upstream
    }

    pub fn handle(&self) -> ProxyHandle {
        self.handle.clone()
    }

    pub fn stats(&self) -> Vec<ConnStats> {
        self.handle.stats()
    }

    /// [`ProxyHandle::cut_now`].
    pub fn cut_now(&self) -> usize {
        self.handle.cut_now()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for t in self.handle.0.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("proxy accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let st = {
            let mut conns = inner.conns.lock().unwrap();
            let st = Arc::new(ConnState {
                index: conns.len(),
                peer,
                up: AtomicU64::new(0),
                down: AtomicU64::new(0),
                end: Mutex::new(None),
                cut: Notify::new(),
                partition: Notify::new(),
            });
            conns.push(st.clone());
            st
        };
        let plan = inner.plans.iter().find(|p| p.conn == st.index).cloned().unwrap_or_default();
        let record = inner.records.lock().unwrap().remove(&st.index);
        let record_back = inner.return_records.lock().unwrap().remove(&st.index);
        // Upstream connections are made here, one after the other, so the
        // destination accepts them in the order the source opened them: a
        // QEMU 7.2 destination tells its main and preempt channels apart by
        // that order alone (docs/wire-format.md section 8.6).
        let up = connect_upstream(inner.upstream).await;
        let inner2 = inner.clone();
        let t = tokio::spawn(async move {
            run_conn(sock, up, &st, &plan, [record, record_back]).await;
            inner2.changed.notify_waiters();
        });
        inner.tasks.lock().unwrap().push(t.abort_handle());
        inner.changed.notify_waiters();
    }
}

/// Result of the forward pump.
enum Fwd {
    Eof,
    Truncated,
    Cut,
    Error(String),
}

/// How long connecting to the destination may take.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect_upstream(upstream: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("connecting upstream {upstream}: {e}")),
        Err(_) => Err(format!(
            "connecting upstream {upstream}: timed out after {UPSTREAM_CONNECT_TIMEOUT:?}"
        )),
    }
}

async fn run_conn(
    client: TcpStream,
    up: Result<TcpStream, String>,
    st: &ConnState,
    plan: &ProxyPlan,
    [mut record, mut record_back]: [Option<File>; 2],
) {
    let _ = client.set_nodelay(true);
    let up = match up {
        Ok(s) => s,
        Err(e) => {
            st.finish(ConnEnd::Error(e));
            return;
        }
    };
    let _ = up.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();

    let end = {
        let fwd = pump_forward(&mut cr, &mut uw, plan, st, &mut record);
        let back = pump_plain(&mut ur, &mut cw, &st.down, &mut record_back);
        tokio::pin!(fwd);
        tokio::pin!(back);
        let (mut fwd_eof, mut back_eof) = (false, false);
        loop {
            // A cut or partition wins over bytes that became ready at the
            // same time: nothing is forwarded once it was asked for.
            tokio::select! {
                biased;
                _ = st.cut.notified() => break ConnEnd::Cut,
                _ = st.partition.notified() => break ConnEnd::Partitioned,
                r = &mut fwd, if !fwd_eof => match r {
                    Fwd::Eof => {
                        fwd_eof = true;
                        if back_eof { break ConnEnd::Closed; }
                    }
                    Fwd::Truncated => break ConnEnd::Truncated,
                    Fwd::Cut => break ConnEnd::Cut,
                    Fwd::Error(e) => break ConnEnd::Error(e),
                },
                r = &mut back, if !back_eof => match r {
                    Ok(()) => {
                        back_eof = true;
                        if fwd_eof { break ConnEnd::Closed; }
                    }
                    Err(e) => break ConnEnd::Error(e),
                },
            }
        }
    };
    for f in [record.as_mut(), record_back.as_mut()].into_iter().flatten() {
        let _ = f.flush();
    }
    match &end {
        ConnEnd::Truncated => {
            // FIN to the destination right after the last forwarded byte,
            // close the source's side, and drain what the destination still
            // sends until it closes (closing with unread data would reset).
            let _ = uw.shutdown().await;
            drop((cr, cw));
            st.finish(ConnEnd::Truncated);
            let mut sink = vec![0u8; CHUNK];
            let _ = tokio::time::timeout(TRUNCATE_DRAIN, async {
                while let Ok(n) = ur.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }
        ConnEnd::Cut => {
            wait_send_queue_empty(uw.as_ref(), CUT_FLUSH).await;
            // Reunite the halves: dropping an OwnedWriteHalf would send a
            // FIN first (shutdown on drop); closing with zero linger sends
            // only a RST. The destination's side first: it learns of the
            // reset before the source can react to it (e.g. by closing its
            // other connections).
            for s in [ur.reunite(uw), cr.reunite(cw)].into_iter().flatten() {
                let _ = s.set_zero_linger();
                drop(s);
            }
            st.finish(ConnEnd::Cut);
        }
        ConnEnd::Partitioned => {
            st.finish(ConnEnd::Partitioned);
            // Hold all four halves, unread and unwritten, until the proxy
            // is dropped (which aborts this task and closes them).
            let _held = (cr, cw, ur, uw);
            std::future::pending::<()>().await;
        }
        ConnEnd::Closed => st.finish(ConnEnd::Closed),
        ConnEnd::Error(e) => st.finish(ConnEnd::Error(e.clone())),
    }
}

/// Wait (polling) until the kernel send queue of `s` is empty, at most `max`.
async fn wait_send_queue_empty(s: &TcpStream, max: Duration) {
    let deadline = Instant::now() + max;
    loop {
        // SIOCOUTQ: bytes not yet acknowledged by the peer.
        let q = crate::sys::socket_send_queue(s.as_raw_fd());
        if q.is_none_or(|n| n == 0) || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The forward direction with the plan applied.
async fn pump_forward(
    r: &mut OwnedReadHalf,
    w: &mut OwnedWriteHalf,
    plan: &ProxyPlan,
    st: &ConnState,
    record: &mut Option<File>,
) -> Fwd {
    let mut buf = vec![0u8; CHUNK];
    let mut off: u64 = 0;
    let mut stalled = false;
    // Throttle: the earliest time the next chunk may start.
    let mut next_slot = Instant::now();
    loop {
        if let Some((at, d)) = plan.stall {
            if !stalled && off >= at {
                stalled = true;
                tokio::time::sleep(d).await;
            }
        }
        if plan.truncate_at.is_some_and(|n| off >= n) {
            return Fwd::Truncated;
        }
        if plan.cut_at.is_some_and(|n| off >= n) {
            return Fwd::Cut;
        }
        // Never read past the next event offset, so events happen exactly.
        let mut max = buf.len() as u64;
        let stall_at = plan.stall.filter(|_| !stalled).map(|(a, _)| a);
        for l in [plan.truncate_at, plan.cut_at, stall_at].into_iter().flatten() {
            if l > off {
                max = max.min(l - off);
            }
        }
        if let Some(rate) = plan.throttle {
            max = max.min((rate / 20).max(1));
        }
        let n = match r.read(&mut buf[..max as usize]).await {
            Ok(0) => {
                let _ = w.shutdown().await;
                return Fwd::Eof;
            }
            Ok(n) => n,
            Err(e) => {
                return Fwd::Error(format!("reading from the source at byte offset {off}: {e}"))
            }
        };
        let chunk = &mut buf[..n];
        for &(fo, x) in &plan.flip {
            if fo >= off && fo < off + n as u64 {
                chunk[(fo - off) as usize] ^= x;
            }
        }
        if let Some(rate) = plan.throttle {
            let start = next_slot.max(Instant::now());
            next_slot = start + Duration::from_secs_f64(n as f64 / rate.max(1) as f64);
            tokio::time::sleep_until(next_slot.into()).await;
        }
        if let Some(f) = record.as_mut() {
            if let Err(e) = f.write_all(chunk) {
                tracing::warn!("proxy: writing the record file: {e}");
                *record = None;
            }
        }
        if let Err(e) = w.write_all(chunk).await {
            return Fwd::Error(format!("writing to the destination at byte offset {off}: {e}"));
        }
        off += n as u64;
        st.up.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Forward untouched until EOF (then shut down the write side).
async fn pump_plain(
    r: &mut OwnedReadHalf,
    w: &mut OwnedWriteHalf,
    count: &AtomicU64,
    record: &mut Option<File>,
) -> std::result::Result<(), String> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => {
                let _ = w.shutdown().await;
                return Ok(());
            }
            Ok(n) => n,
            Err(e) => return Err(format!("reading from the destination: {e}")),
        };
        if let Some(f) = record.as_mut() {
            if let Err(e) = f.write_all(&buf[..n]) {
                tracing::warn!("proxy: writing the return-path record file: {e}");
                *record = None;
            }
        }
        w.write_all(&buf[..n]).await.map_err(|e| format!("writing to the source: {e}"))?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
