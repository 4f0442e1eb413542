//! Playing a script into a destination: write the steps in order, read the
//! return path concurrently, answer page requests from the RAM model.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use wire::multifd::{PacketFormat, PacketLayout};
use wire::rp::{decode_rp, RpMessage};
use wire::{Cursor, DecodeError, Encoder};

use super::layout::SourceLayout;
use super::multifd::MultifdStep;
use super::step::{Enc, RpMatcher, Step};
use crate::verify::model::RamModel;

/// Longest wait of one [`Step::ExpectRp`] (also bounded by the play timeout).
pub const EXPECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What happened while playing.
#[derive(Clone, Debug, Default)]
pub struct PlayResult {
    /// Every return-path message, in arrival order.
    pub rp_messages: Vec<RpMessage>,
    /// How the return path ended (None: still open when play stopped).
    pub rp_end: Option<String>,
    /// Page requests answered / pages sent in answers.
    pub page_requests_served: u64,
    pub pages_served: u64,
    /// Problems with page requests (unknown block, short form without a
    /// previous block, ...).
    pub page_request_errors: Vec<String>,
    pub bytes_sent: u64,
    /// Steps completed (all of them unless aborted).
    pub steps_done: usize,
    /// Why writing stopped early (destination closed the connection, ...).
    pub aborted: Option<String>,
    /// `ExpectRp` steps that were not satisfied.
    pub expect_failures: Vec<String>,
    /// The guest RAM the destination must hold if it completed.
    pub model: RamModel,
    pub elapsed: Duration,
}

impl PlayResult {
    pub fn pongs(&self) -> Vec<u32> {
        self.rp_messages
            .iter()
            .filter_map(|m| if let RpMessage::Pong(v) = m { Some(*v) } else { None })
            .collect()
    }
    pub fn shuts(&self) -> Vec<u32> {
        self.rp_messages
            .iter()
            .filter_map(|m| if let RpMessage::Shut(v) = m { Some(*v) } else { None })
            .collect()
    }
    /// One-line summary.
    pub fn summary(&self) -> String {
        let rp: Vec<String> = self.rp_messages.iter().take(20).map(|m| format!("{m:?}")).collect();
        format!(
            "{} steps, {} bytes sent{}; rp [{}]{}{}{}",
            self.steps_done,
            self.bytes_sent,
            self.aborted.as_deref().map(|a| format!(", aborted: {a}")).unwrap_or_default(),
            rp.join(", "),
            self.rp_end.as_deref().map(|e| format!(" ({e})")).unwrap_or_default(),
            if self.page_requests_served > 0 {
                format!(
                    ", {} page requests served ({} pages)",
                    self.page_requests_served, self.pages_served
                )
            } else {
                String::new()
            },
            if self.expect_failures.is_empty() {
                String::new()
            } else {
                format!("; unmet: {}", self.expect_failures.join("; "))
            },
        )
    }
}

/// Write `b` on a multifd channel, within `deadline`.
async fn write_all(
    s: &mut TcpStream,
    b: &[u8],
    deadline: tokio::time::Instant,
) -> std::result::Result<(), String> {
    match tokio::time::timeout_at(deadline, s.write_all(b)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err("write timed out (destination not reading)".into()),
    }
}

enum RpEvent {
    Msg(RpMessage),
    Closed(String),
}

#[derive(Default)]
struct RpState {
    msgs: Vec<RpMessage>,
    cursor: usize,
    closed: Option<String>,
    pending: VecDeque<(String, u64, u32)>,
    last_req_block: Option<String>,
    req_errors: Vec<String>,
}

impl RpState {
    fn absorb(&mut self, ev: Option<RpEvent>) {
        match ev {
            Some(RpEvent::Msg(m)) => {
                match &m {
                    RpMessage::ReqPagesId { start, len, block } => {
                        self.pending.push_back((block.clone(), *start, *len));
                        self.last_req_block = Some(block.clone());
                    }
                    RpMessage::ReqPages { start, len } => match &self.last_req_block {
                        Some(b) => self.pending.push_back((b.clone(), *start, *len)),
                        None => self.req_errors.push(format!(
                            "REQ_PAGES {start:#x}+{len:#x} without a previous REQ_PAGES_ID"
                        )),
                    },
                    _ => {}
                }
                self.msgs.push(m);
            }
            Some(RpEvent::Closed(r)) => {
                if self.closed.is_none() {
                    self.closed = Some(r)
                }
            }
            None => {
                if self.closed.is_none() {
                    self.closed = Some("return-path reader ended".into())
                }
            }
        }
    }
    fn drain(&mut self, rx: &mut mpsc::UnboundedReceiver<RpEvent>) {
        while let Ok(ev) = rx.try_recv() {
            self.absorb(Some(ev));
        }
    }
    fn find(&self, m: &RpMatcher) -> Option<usize> {
        (self.cursor..self.msgs.len()).find(|&i| m.matches(&self.msgs[i]))
    }
}

async fn connect_retry(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e)
                if Instant::now() < deadline
                    && e.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => {
                return Err(anyhow!(e))
                    .with_context(|| format!("connecting to the destination at {addr}"))
            }
        }
    }
}

async fn reader_task(mut rd: tokio::net::tcp::OwnedReadHalf, tx: mpsc::UnboundedSender<RpEvent>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut base = 0u64;
    let mut chunk = vec![0u8; 16384];
    loop {
        match rd.read(&mut chunk).await {
            Ok(0) => {
                let why = if buf.is_empty() {
                    "closed by the destination".to_string()
                } else {
                    format!("closed by the destination with {} undecoded byte(s)", buf.len())
                };
                let _ = tx.send(RpEvent::Closed(why));
                return;
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    let mut c = Cursor::new(&buf, base);
                    match decode_rp(&mut c) {
                        Ok(m) => {
                            let used = c.pos();
                            buf.drain(..used);
                            base += used as u64;
                            let _ = tx.send(RpEvent::Msg(m));
                        }
                        Err(DecodeError::Incomplete { .. }) => break,
                        Err(e) => {
                            let _ = tx.send(RpEvent::Closed(format!(
                                "undecodable return-path data: {e}"
                            )));
                            return;
                        }
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(RpEvent::Closed(format!("read error: {e}")));
                return;
            }
        }
    }
}

/// Play `script` into the destination listening at `dest_addr`.
///
/// Errors only if the connection cannot be made or the script is not
/// encodable; protocol outcomes (write failures, unmet expectations) are in
/// the result. `timeout` bounds the whole play; after the last step the
/// write side is shut down and the return path is read until the
/// destination closes it (at most 5 s, within `timeout`).
pub async fn play(
    dest_addr: SocketAddr,
    layout: &SourceLayout,
    script: &[Step],
    timeout: Duration,
) -> Result<PlayResult> {
    play_with(dest_addr, layout, script, timeout, PacketLayout::V9).await
}

/// [`play`], writing multifd RAM packets in `packet_layout` (the layout the
/// destination's QEMU version expects). Each [`MultifdStep::Connect`] opens
/// a new connection to `dest_addr`; the channels are shut down after the
/// last step.
pub async fn play_with(
    dest_addr: SocketAddr,
    layout: &SourceLayout,
    script: &[Step],
    timeout: Duration,
    packet_layout: PacketLayout,
) -> Result<PlayResult> {
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let stream = connect_retry(dest_addr, timeout.min(Duration::from_secs(5))).await?;
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(reader_task(rd, tx));

    let mut enc = Enc::new(layout);
    enc.multifd_fmt = PacketFormat::x86(packet_layout);
    let mut channels: HashMap<u8, TcpStream> = HashMap::new();
    let mut writers = Vec::new();
    let mut st = RpState::default();
    let mut res = PlayResult::default();
    let mut serving = false;
    let tdeadline = tokio::time::Instant::from_std(deadline);

    async fn write(
        wr: &mut tokio::net::tcp::OwnedWriteHalf,
        b: &[u8],
        deadline: tokio::time::Instant,
    ) -> std::result::Result<(), String> {
        match tokio::time::timeout_at(deadline, async {
            wr.write_all(b).await?;
            wr.flush().await
        })
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write failed: {e}")),
            Err(_) => Err("write timed out (destination not reading)".into()),
        }
    }

    // Answer all pending page requests.
    macro_rules! serve_pending {
        () => {{
            let mut err: Option<String> = None;
            while let Some((b, s, l)) = st.pending.pop_front() {
                let mut e = Encoder::new();
                match enc.serve(&b, s, l, &mut e) {
                    Ok(n) => {
                        if let Err(m) = write(&mut wr, &e.buf, tdeadline).await {
                            err = Some(format!("serving page request {b:?} {s:#x}: {m}"));
                            break;
                        }
                        res.bytes_sent += e.buf.len() as u64;
                        res.page_requests_served += 1;
                        res.pages_served += n;
                    }
                    Err(m) => res.page_request_errors.push(m.to_string()),
                }
            }
            err
        }};
    }

    'steps: for (i, step) in script.iter().enumerate() {
        st.drain(&mut rx);
        if serving {
            if let Some(e) = serve_pending!() {
                res.aborted = Some(e);
                break 'steps;
            }
        }
        match step {
            Step::ExpectRp(m) => {
                let until = tdeadline.min(tokio::time::Instant::now() + EXPECT_TIMEOUT);
                loop {
                    if let Some(idx) = st.find(m) {
                        st.cursor = idx + 1;
                        break;
                    }
                    if let Some(r) = &st.closed {
                        res.expect_failures
                            .push(format!("step {i}: {m:?} not received; return path {r}"));
                        break;
                    }
                    tokio::select! {
                        ev = rx.recv() => st.absorb(ev),
                        _ = tokio::time::sleep_until(until) => {
                            res.expect_failures.push(format!("step {i}: timed out waiting for {m:?}"));
                            break;
                        }
                    }
                    if serving {
                        if let Some(e) = serve_pending!() {
                            res.aborted = Some(e);
                            break 'steps;
                        }
                    }
                }
            }
            Step::Sleep(ms) => {
                let until = tokio::time::Instant::now() + Duration::from_millis(*ms);
                loop {
                    tokio::select! {
                        ev = rx.recv(), if st.closed.is_none() => st.absorb(ev),
                        _ = tokio::time::sleep_until(until) => break,
                    }
                    if serving {
                        if let Some(e) = serve_pending!() {
                            res.aborted = Some(e);
                            break 'steps;
                        }
                    }
                }
            }
            Step::ServePageRequests => serving = true,
            Step::Multifd(MultifdStep::Connect { channel }) => {
                match connect_retry(dest_addr, timeout.min(Duration::from_secs(5))).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        channels.insert(*channel, s);
                    }
                    Err(e) => {
                        res.aborted = Some(format!("step {i} ({}): {e:#}", step.name()));
                        break 'steps;
                    }
                }
            }
            Step::Multifd(MultifdStep::Raw { channel, bytes }) => {
                let Some(mut ch) = channels.remove(channel) else {
                    res.aborted = Some(format!(
                        "step {i} ({}): multifd channel {channel} is not connected",
                        step.name()
                    ));
                    break 'steps;
                };
                let b = bytes.clone();
                res.bytes_sent += b.len() as u64;
                writers.push(tokio::spawn(async move {
                    let r = write_all(&mut ch, &b, tdeadline).await;
                    let _ = ch.shutdown().await;
                    (ch, r)
                }));
            }
            Step::Multifd(m) => {
                let mut e = Encoder::new();
                enc.encode(step, &mut e).map_err(|m| anyhow!("step {i} ({}): {m}", step.name()))?;
                let Some(ch) = channels.get_mut(&m.channel()) else {
                    res.aborted = Some(format!(
                        "step {i} ({}): multifd channel {} is not connected",
                        step.name(),
                        m.channel()
                    ));
                    break 'steps;
                };
                if let Err(m) = write_all(ch, &e.buf, tdeadline).await {
                    res.aborted = Some(format!("step {i} ({}): {m}", step.name()));
                    break 'steps;
                }
                res.bytes_sent += e.buf.len() as u64;
            }
            _ => {
                if matches!(step, Step::Eof) {
                    serving = false;
                }
                let mut e = Encoder::new();
                enc.encode(step, &mut e).map_err(|m| anyhow!("step {i} ({}): {m}", step.name()))?;
                if let Err(m) = write(&mut wr, &e.buf, tdeadline).await {
                    res.aborted = Some(format!("step {i} ({}): {m}", step.name()));
                    break 'steps;
                }
                res.bytes_sent += e.buf.len() as u64;
            }
        }
        res.steps_done = i + 1;
    }

    // Channels written by their own task (MultifdStep::Raw): wait until all
    // their bytes are out or the destination stopped reading (the deadline).
    let mut kept = Vec::new();
    for w in writers {
        match w.await {
            Ok((ch, r)) => {
                if let (Err(m), None) = (r, &res.aborted) {
                    res.aborted = Some(format!("multifd channel: {m}"));
                }
                kept.push(ch);
            }
            Err(e) => res.aborted = Some(format!("multifd channel writer: {e}")),
        }
    }
    // Half-close: the destination sees the end of the stream after our data;
    // keep reading the return path until it closes.
    let _ = wr.shutdown().await;
    for ch in channels.values_mut() {
        let _ = ch.shutdown().await;
    }
    let linger = tokio::time::Instant::now() + Duration::from_secs(5);
    let until = linger.min(tdeadline.max(tokio::time::Instant::now() + Duration::from_millis(200)));
    while st.closed.is_none() {
        tokio::select! {
            ev = rx.recv() => st.absorb(ev),
            _ = tokio::time::sleep_until(until) => break,
        }
    }
    reader.abort();
    st.drain(&mut rx);
    drop(wr);
    drop(channels);
    drop(kept);
    res.rp_messages = st.msgs;
    res.rp_end = st.closed;
    res.page_request_errors.extend(st.req_errors);
    res.model = enc.model;
    res.elapsed = t0.elapsed();
    Ok(res)
}
