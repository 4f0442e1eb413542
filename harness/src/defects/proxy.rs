//! The defect proxy: a TCP proxy between a real QEMU source and the
//! destination that applies one [`Mutation`] to the main channel as it
//! passes (`channel.rs`), records every connection exactly as the source
//! sent it (BEFORE any change: the reference the checks compare the
//! destination with), and reads the return path for page requests (which
//! [`Mutation::WrongPageAnswer`] answers wrongly). Other connections
//! (multifd, preempt) are forwarded untouched.

use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use wire::cursor::{Cursor, DecodeError};
use wire::rp::{decode_rp, RpMessage};

use super::channel::{ChannelMutator, Shared};
use super::mutation::Mutation;

const CHUNK: usize = 64 * 1024;

/// A running defect proxy; dropping it closes every connection.
pub struct DefectProxy {
    addr: SocketAddr,
    accept: AbortHandle,
    tasks: Arc<std::sync::Mutex<Vec<AbortHandle>>>,
    /// The main channel's forwarding ended (the source closed it, or it
    /// failed): the delivered recording is complete.
    main_done: Arc<std::sync::atomic::AtomicBool>,
}

impl DefectProxy {
    /// Listen on a free local port and forward to `upstream`; connection
    /// `i` is recorded (unchanged) to `files[i]` when there is one, and the
    /// main channel as delivered (changed) to `delivered`.
    pub async fn start(
        upstream: SocketAddr,
        m: Mutation,
        shared: Arc<Shared>,
        files: Vec<PathBuf>,
        delivered: PathBuf,
    ) -> Result<DefectProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("defect proxy: bind")?;
        let addr = listener.local_addr()?;
        let tasks: Arc<std::sync::Mutex<Vec<AbortHandle>>> = Arc::default();
        let t2 = tasks.clone();
        let main_done: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let done2 = main_done.clone();
        let accept = tokio::spawn(async move {
            let mut i = 0usize;
            while let Ok((sock, _)) = listener.accept().await {
                let rec = match files.get(i).map(File::create) {
                    Some(Ok(f)) => Some(f),
                    Some(Err(e)) => {
                        tracing::warn!("defect proxy: record file: {e}");
                        None
                    }
                    None => None,
                };
                let out = if i == 0 { File::create(&delivered).ok() } else { None };
                let mutator = if i == 0 {
                    ChannelMutator::main(m, shared.clone())
                } else {
                    ChannelMutator::passthrough(m, shared.clone())
                };
                let sh = shared.clone();
                let done = (i == 0).then(|| done2.clone());
                let t = tokio::spawn(async move {
                    if let Err(e) = run_conn(sock, upstream, mutator, [rec, out], sh, i == 0).await
                    {
                        tracing::debug!("defect proxy connection {i}: {e:#}");
                    }
                    if let Some(d) = done {
                        d.store(true, std::sync::atomic::Ordering::Release);
                    }
                });
                t2.lock().unwrap_or_else(|e| e.into_inner()).push(t.abort_handle());
                i += 1;
            }
        })
        .abort_handle();
        Ok(DefectProxy { addr, accept, tasks, main_done })
    }

    /// Wait (at most `limit`) until the main channel's forwarding has ended,
    /// so its delivered recording holds everything the destination got and
    /// everything the proxy still held. Returns whether it ended.
    pub async fn main_settled(&self, limit: std::time::Duration) -> bool {
        let t0 = std::time::Instant::now();
        while !self.main_done.load(std::sync::atomic::Ordering::Acquire) {
            if t0.elapsed() >= limit {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    pub fn uri(&self) -> String {
        format!("tcp:{}", self.addr)
    }
}

impl Drop for DefectProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
    }
}

async fn run_conn(
    client: TcpStream,
    upstream: SocketAddr,
    mutator: ChannelMutator,
    rec: [Option<File>; 2],
    shared: Arc<Shared>,
    main: bool,
) -> Result<()> {
    let _ = client.set_nodelay(true);
    let up = TcpStream::connect(upstream).await.context("connecting upstream")?;
    let _ = up.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = up.into_split();
    let fwd = forward(cr, uw, mutator, rec);
    let back = back(ur, cw, shared, main);
    let (a, b) = tokio::join!(fwd, back);
    a.and(b)
}

async fn forward(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    mut m: ChannelMutator,
    rec: [Option<File>; 2],
) -> Result<()> {
    let [mut rec, mut delivered] = rec;
    let mut buf = vec![0u8; CHUNK];
    let mut out = Vec::with_capacity(CHUNK * 2);
    loop {
        let n = r.read(&mut buf).await.context("reading from the source")?;
        out.clear();
        if n == 0 {
            m.finish(&mut out);
            if let Some(f) = delivered.as_mut() {
                f.write_all(&out)?;
                f.flush()?;
            }
            w.write_all(&out).await.context("writing to the destination")?;
            let _ = w.shutdown().await;
            if let Some(f) = rec.as_mut() {
                f.flush()?;
            }
            return Ok(());
        }
        if let Some(f) = rec.as_mut() {
            f.write_all(&buf[..n])?;
        }
        m.feed(&buf[..n], &mut out);
        if let Some(f) = delivered.as_mut() {
            f.write_all(&out)?;
        }
        w.write_all(&out).await.context("writing to the destination")?;
    }
}

/// The return path, forwarded untouched; page requests noted in `shared`.
async fn back(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    shared: Arc<Shared>,
    main: bool,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut pending: Vec<u8> = Vec::new();
    let mut parse = main;
    loop {
        let n = r.read(&mut buf).await.context("reading from the destination")?;
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        if parse {
            pending.extend_from_slice(&buf[..n]);
            let mut c = Cursor::new(&pending, 0);
            loop {
                match decode_rp(&mut c) {
                    Ok(RpMessage::ReqPages { start, .. }) => shared
                        .requested
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back((None, start)),
                    Ok(RpMessage::ReqPagesId { start, block, .. }) => shared
                        .requested
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back((Some(block), start)),
                    // RECV_BITMAP data follows outside the message: stop.
                    Ok(RpMessage::RecvBitmap { .. }) | Err(DecodeError::Invalid { .. }) => {
                        parse = false;
                        break;
                    }
                    Ok(_) => {}
                    Err(DecodeError::Incomplete { .. }) => break,
                }
            }
            let used = c.pos();
            pending.drain(..used);
        }
        w.write_all(&buf[..n]).await.context("writing to the source")?;
    }
}
