//! The QMP connection: line-delimited JSON over a unix socket, commands
//! matched to replies by `id`, and an event log with a cursor.
//!
//! Design notes
//! ------------
//! The `qapi` crate (0.15) is used for the *typed* parts of the protocol:
//! the greeting is decoded as [`qapi::qmp::QapiCapabilities`], typed commands
//! can be sent through [`Qmp::execute_typed`] (serialized with
//! [`qapi::Execute`], result decoded into `C::Ok`), and events can be
//! converted to the generated [`qapi::qmp::Event`] enum with
//! [`QmpEvent::typed`].
//!
//! The transport itself is a small line-delimited JSON client over
//! `tokio::net::UnixStream`, because qapi's async service cannot do what this
//! harness needs:
//! * `qapi_spec::Command::NAME` is an associated `const &'static str`, and
//!   `Execute<C>` serializes the command name from it, so a command name that
//!   is only known at run time cannot be expressed; the JSON-lines codec
//!   that would allow bypassing this is a private module.
//! * `QmpStreamTokio` decodes every line as `QmpMessage<Any>`, an untagged enum
//!   of the *closed* generated `Event` enum and a response. An event (or an
//!   enum value inside it, e.g. MIGRATION `status: "postcopy-device"`) from a
//!   QEMU newer than the bundled schema fails to decode, which turns into an
//!   I/O error that terminates the whole stream.
//! * `qapi_spec::ErrorClass` is a closed enum as well.
//!
//! Every message is therefore handled as `serde_json::Value`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};

use super::status::MigrationStatus;

/// Default timeout for a single QMP command.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How often [`Qmp::connect`] retries a socket that is not there yet.
pub const DEFAULT_CONNECT_RETRY: Duration = Duration::from_millis(20);
/// Events accepted ahead of the greeting before the peer is refused as not
/// a QMP monitor (QEMU sends at most the few emitted while a connection is
/// being opened).
const MAX_EVENTS_BEFORE_GREETING: usize = 16;

/// Error of a single QMP command.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// QEMU answered with `{"error": {"class": ..., "desc": ...}}`.
    #[error("QMP command '{cmd}' failed: {class}: {desc}")]
    Command { cmd: String, class: String, desc: String },
    /// No answer within the timeout.
    #[error("QMP command '{cmd}' timed out after {timeout:?}")]
    Timeout { cmd: String, timeout: Duration },
    /// The monitor connection is gone (QEMU exited or closed the socket).
    #[error("QMP connection closed while executing '{cmd}'{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Disconnected { cmd: String, reason: Option<String> },
    /// Writing the command failed.
    #[error("QMP I/O error while executing '{cmd}': {source}")]
    Io {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    /// Malformed request or reply.
    #[error("QMP protocol error for '{cmd}': {msg}")]
    Protocol { cmd: String, msg: String },
}

impl QmpError {
    /// The QMP error class (`GenericError`, `CommandNotFound`, ...), if QEMU
    /// returned an error reply.
    pub fn class(&self) -> Option<&str> {
        match self {
            QmpError::Command { class, .. } => Some(class),
            _ => None,
        }
    }

    /// The QMP error description, if QEMU returned an error reply.
    pub fn desc(&self) -> Option<&str> {
        match self {
            QmpError::Command { desc, .. } => Some(desc),
            _ => None,
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, QmpError::Timeout { .. })
    }

    pub fn is_disconnected(&self) -> bool {
        matches!(self, QmpError::Disconnected { .. })
    }
}

/// One asynchronous QMP event as received.
#[derive(Debug, Clone)]
pub struct QmpEvent {
    /// Event name, e.g. `"STOP"`, `"MIGRATION"`.
    pub name: String,
    /// The `data` member (`Value::Null` if absent).
    pub data: Value,
    /// QEMU's timestamp (`seconds`/`microseconds` since the epoch), if valid.
    pub timestamp: Option<SystemTime>,
    /// When the harness read the event.
    pub received: Instant,
    /// Position in the connection's event log (0-based).
    pub seq: usize,
}

impl QmpEvent {
    /// An event message (`{"event": NAME, "data": ..., "timestamp": ...}`)
    /// as the `seq`-th event of its connection; `None` if `v` is not one.
    fn parse(v: &Value, seq: usize) -> Option<QmpEvent> {
        let name = v.get("event")?.as_str()?;
        let timestamp = v.get("timestamp").and_then(|t| {
            let s = t.get("seconds")?.as_i64()?;
            let us = t.get("microseconds")?.as_i64()?;
            if s < 0 || us < 0 {
                return None;
            }
            Some(UNIX_EPOCH + Duration::from_secs(s as u64) + Duration::from_micros(us as u64))
        });
        Some(QmpEvent {
            name: name.to_owned(),
            data: v.get("data").cloned().unwrap_or(Value::Null),
            timestamp,
            received: Instant::now(),
            seq,
        })
    }

    /// Convenience: `data[key]` as a string.
    pub fn data_str(&self, key: &str) -> Option<&str> {
        self.data.get(key).and_then(Value::as_str)
    }

    /// The `status` of a `MIGRATION` event (`None` for other events).
    pub fn migration_status(&self) -> Option<MigrationStatus> {
        (self.name == "MIGRATION").then(|| MigrationStatus::of(&self.data))
    }

    /// Try to decode the event into qapi's generated (closed) event enum.
    /// Returns `None` for events or values unknown to the bundled schema.
    pub fn typed(&self) -> Option<qapi::qmp::Event> {
        let mut v = json!({ "event": self.name, "data": self.data });
        if self.data.is_null() {
            v.as_object_mut().unwrap().remove("data");
        }
        // The generated enum wants a timestamp.
        let (s, us) = match self.timestamp.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
            Some(d) => (d.as_secs(), d.subsec_micros() as u64),
            None => (0, 0),
        };
        v["timestamp"] = json!({ "seconds": s, "microseconds": us });
        serde_json::from_value(v).ok()
    }
}

type Pending = HashMap<u64, oneshot::Sender<std::result::Result<Value, (String, String)>>>;

struct Shared {
    pending: Mutex<Pending>,
    events: Mutex<Vec<QmpEvent>>,
    /// Incremented on each event and on disconnect.
    notify: watch::Sender<u64>,
    closed: AtomicBool,
    close_reason: Mutex<Option<String>>,
}

impl Shared {
    fn close(&self, reason: String) {
        {
            let mut r = self.close_reason.lock().unwrap();
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.closed.store(true, Ordering::SeqCst);
        // dropping the senders wakes all waiters with an error
        self.pending.lock().unwrap().clear();
        self.notify.send_modify(|v| *v += 1);
    }
}

/// A connected QMP monitor.
///
/// Commands can be issued concurrently from several tasks (`&self`);
/// responses are matched by `id`. Events are logged for the lifetime of the
/// connection. Dropping the `Qmp` closes the connection.
pub struct Qmp {
    path: PathBuf,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    timeout_ms: AtomicU64,
    cursor: Mutex<usize>,
    greeting: Value,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Qmp {
    /// Connect to a QMP unix socket, retrying every 20 ms until it exists and
    /// accepts (up to `timeout`), read the greeting and negotiate capabilities.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        Self::connect_every(path, timeout, DEFAULT_CONNECT_RETRY).await
    }

    /// [`connect`](Self::connect) retrying every `retry` (the bench times
    /// start-up with 1 ms).
    pub async fn connect_every(path: &Path, timeout: Duration, retry: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) => {
                    let transient = matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    );
                    if !transient || Instant::now() >= deadline {
                        return Err(anyhow!(e)).with_context(|| {
                            format!(
                                "connecting to QMP socket {} (timeout {timeout:?})",
                                path.display()
                            )
                        });
                    }
                    tokio::time::sleep(retry).await;
                }
            }
        };
        let remaining =
            deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5));
        tokio::time::timeout(remaining, Self::handshake(path, stream))
            .await
            .map_err(|_| anyhow!("QMP handshake on {} timed out", path.display()))?
    }

    async fn handshake(path: &Path, stream: UnixStream) -> Result<Qmp> {
        let (rd, wr) = stream.into_split();
        let mut lines = BufReader::new(rd).lines();
        // QEMU can write an event ahead of the greeting: until a connection's
        // open event has been handled, the monitor is not yet in capability
        // negotiation mode (`mon->commands` is still NULL, monitor/qmp.c
        // `monitor_qmp_event`), so `monitor_qapi_event_emit`
        // (monitor/monitor.c) sends events to it, and the monitor's chardev
        // runs in its own thread. A source started without -S emits RESUME
        // at start-up, and a connect at that moment reads it first. Such
        // events are kept in the event log; anything else is refused.
        let mut early = Vec::new();
        let greeting = loop {
            let line =
                lines.next_line().await.context("reading QMP greeting")?.ok_or_else(|| {
                    anyhow!("QMP socket {} closed before greeting", path.display())
                })?;
            let v: Value = serde_json::from_str(&line)
                .with_context(|| format!("parsing QMP greeting {line:?}"))?;
            if v.get("QMP").is_some() {
                break v;
            }
            match QmpEvent::parse(&v, early.len()) {
                Some(ev) if early.len() < MAX_EVENTS_BEFORE_GREETING => {
                    tracing::debug!(target: "qmp", "event before the greeting: {line}");
                    early.push(ev);
                }
                _ => bail!("unexpected QMP greeting: {line}"),
            }
        };

        let (notify, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            events: Mutex::new(early),
            notify,
            closed: AtomicBool::new(false),
            close_reason: Mutex::new(None),
        });
        let reader = tokio::spawn(reader_task(lines, shared.clone()));
        let qmp = Qmp {
            path: path.to_owned(),
            writer: tokio::sync::Mutex::new(wr),
            shared,
            next_id: AtomicU64::new(1),
            timeout_ms: AtomicU64::new(DEFAULT_COMMAND_TIMEOUT.as_millis() as u64),
            cursor: Mutex::new(0),
            greeting,
            reader,
        };
        qmp.execute("qmp_capabilities", Value::Null)
            .await
            .context("QMP capabilities negotiation")?;
        Ok(qmp)
    }

    /// The socket path this monitor is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw greeting (`{"QMP": {"version": ..., "capabilities": [...]}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// The greeting decoded by qapi (version info, capabilities).
    pub fn capabilities(&self) -> Option<qapi::qmp::QapiCapabilities> {
        serde_json::from_value(self.greeting.clone()).ok()
    }

    /// QEMU version from the greeting as (major, minor, micro).
    pub fn qemu_version(&self) -> Option<(u64, u64, u64)> {
        let q = self.greeting.pointer("/QMP/version/qemu")?;
        Some((q.get("major")?.as_u64()?, q.get("minor")?.as_u64()?, q.get("micro")?.as_u64()?))
    }

    /// Set the per-command timeout (default 30 s).
    pub fn set_timeout(&self, timeout: Duration) {
        self.timeout_ms.store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    /// True once the connection has been closed by the peer.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Execute any QMP command with the configured timeout. `args` must be an
    /// object, or `Value::Null` for no arguments. Returns the `return` value.
    pub async fn execute(&self, cmd: &str, args: Value) -> std::result::Result<Value, QmpError> {
        self.execute_timeout(cmd, args, self.timeout()).await
    }

    /// Execute any QMP command with an explicit timeout.
    pub async fn execute_timeout(
        &self,
        cmd: &str,
        args: Value,
        timeout: Duration,
    ) -> std::result::Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "execute": cmd, "id": id });
        match args {
            Value::Null => {}
            Value::Object(ref m) if m.is_empty() => {}
            Value::Object(_) => msg["arguments"] = args,
            other => {
                return Err(QmpError::Protocol {
                    cmd: cmd.into(),
                    msg: format!("arguments must be a JSON object, got {other}"),
                })
            }
        }
        self.send_and_wait(cmd, id, msg, timeout, None).await
    }

    /// Execute a command with descriptor `fd` attached (SCM_RIGHTS), as
    /// `getfd` and `add-fd` need. The receiver gets its own copy; `fd` stays
    /// open here.
    pub async fn execute_with_fd(
        &self,
        cmd: &str,
        args: Value,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> std::result::Result<Value, QmpError> {
        use std::os::fd::AsRawFd;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let msg = json!({ "execute": cmd, "id": id, "arguments": args });
        self.send_and_wait(cmd, id, msg, self.timeout(), Some(fd.as_raw_fd())).await
    }

    /// Execute a typed command from qapi's generated schema
    /// (e.g. `qapi::qmp::query_status {}`), decoding the reply into `C::Ok`.
    pub async fn execute_typed<C>(&self, command: C) -> std::result::Result<C::Ok, QmpError>
    where
        C: qapi::qmp::QmpCommand,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let msg =
            serde_json::to_value(qapi::Execute::<C, u64>::with_id(command, id)).map_err(|e| {
                QmpError::Protocol { cmd: C::NAME.into(), msg: format!("serializing: {e}") }
            })?;
        let ret = self.send_and_wait(C::NAME, id, msg, self.timeout(), None).await?;
        serde_json::from_value(ret).map_err(|e| QmpError::Protocol {
            cmd: C::NAME.into(),
            msg: format!("decoding reply: {e}"),
        })
    }

    async fn send_and_wait(
        &self,
        cmd: &str,
        id: u64,
        msg: Value,
        timeout: Duration,
        fd: Option<std::os::fd::RawFd>,
    ) -> std::result::Result<Value, QmpError> {
        let disconnected = |shared: &Shared| QmpError::Disconnected {
            cmd: cmd.into(),
            reason: shared.close_reason.lock().unwrap().clone(),
        };
        if self.is_closed() {
            return Err(disconnected(&self.shared));
        }
        let (tx, rx) = oneshot::channel();
        self.shared.pending.lock().unwrap().insert(id, tx);
        struct Unregister<'a>(&'a Shared, u64);
        impl Drop for Unregister<'_> {
            fn drop(&mut self) {
                self.0.pending.lock().unwrap().remove(&self.1);
            }
        }
        let _unreg = Unregister(&self.shared, id);
        // re-check after registering: close() clears the map
        if self.is_closed() {
            return Err(disconnected(&self.shared));
        }

        let mut line = serde_json::to_vec(&msg).expect("serializing JSON value");
        line.push(b'\n');
        tracing::trace!(target: "qmp", "-> {}", String::from_utf8_lossy(&line).trim_end());

        let fut = async {
            {
                let mut w = self.writer.lock().await;
                let io_err = |e| QmpError::Io { cmd: cmd.into(), source: e };
                let sent = match fd {
                    Some(fd) => send_with_fd(w.as_ref(), &line, fd).await.map_err(io_err)?,
                    None => 0,
                };
                w.write_all(&line[sent..]).await.map_err(io_err)?;
                w.flush().await.map_err(|e| QmpError::Io { cmd: cmd.into(), source: e })?;
            }
            match rx.await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err((class, desc))) => Err(QmpError::Command { cmd: cmd.into(), class, desc }),
                Err(_) => Err(disconnected(&self.shared)),
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(QmpError::Timeout { cmd: cmd.into(), timeout }),
        }
    }

    // ------------------------------------------------------------------
    // events

    /// All events received so far on this connection.
    pub fn events(&self) -> Vec<QmpEvent> {
        self.shared.events.lock().unwrap().clone()
    }

    /// Number of events received so far (the `seq` the next event will get).
    pub fn event_count(&self) -> usize {
        self.shared.events.lock().unwrap().len()
    }

    /// Current cursor of [`wait_event`](Self::wait_event).
    pub fn event_cursor(&self) -> usize {
        *self.cursor.lock().unwrap()
    }

    /// Move the cursor: subsequent `wait_event` calls only consider events
    /// with `seq >= pos`. `set_event_cursor(qmp.event_count())` ignores
    /// everything received so far.
    pub fn set_event_cursor(&self, pos: usize) {
        *self.cursor.lock().unwrap() = pos;
    }

    /// Wait for the first event at or after the cursor that matches `pred`
    /// (events that arrived before this call are considered too). On success
    /// the cursor moves just past the matched event, so consecutive calls
    /// consume events in order.
    pub async fn wait_event(
        &self,
        pred: impl Fn(&QmpEvent) -> bool,
        timeout: Duration,
    ) -> Result<QmpEvent> {
        let start = self.event_cursor();
        let ev = self.wait_event_from(start, pred, timeout).await?;
        let mut c = self.cursor.lock().unwrap();
        *c = (*c).max(ev.seq + 1);
        Ok(ev)
    }

    /// Convenience: wait for an event by name (see [`wait_event`](Self::wait_event)).
    pub async fn wait_event_named(&self, name: &str, timeout: Duration) -> Result<QmpEvent> {
        self.wait_event(|e| e.name == name, timeout).await
    }

    /// Wait for the first event with `seq >= start` matching `pred`, without
    /// touching the cursor.
    pub async fn wait_event_from(
        &self,
        start: usize,
        pred: impl Fn(&QmpEvent) -> bool,
        timeout: Duration,
    ) -> Result<QmpEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.notify.subscribe();
        let mut scanned = start;
        loop {
            {
                let evs = self.shared.events.lock().unwrap();
                if let Some(e) = evs.iter().skip(scanned).find(|e| pred(e)) {
                    return Ok(e.clone());
                }
                scanned = scanned.max(evs.len());
            }
            if self.is_closed() {
                bail!(
                    "QMP connection {} closed while waiting for event ({}); events seen: [{}]",
                    self.path.display(),
                    self.shared.close_reason.lock().unwrap().clone().unwrap_or_default(),
                    self.event_summary(start)
                );
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("QMP event channel closed"),
                Err(_) => bail!(
                    "timed out after {timeout:?} waiting for QMP event on {}; events seen since #{start}: [{}]",
                    self.path.display(),
                    self.event_summary(start)
                ),
            }
        }
    }

    fn event_summary(&self, start: usize) -> String {
        let evs = self.shared.events.lock().unwrap();
        evs.iter()
            .skip(start)
            .map(
                |e| {
                    if e.data.is_null() {
                        e.name.clone()
                    } else {
                        format!("{} {}", e.name, e.data)
                    }
                },
            )
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn reader_task(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    shared: Arc<Shared>,
) {
    let reason = loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => break "EOF".to_owned(),
            Err(e) => break format!("read error: {e}"),
        };
        if line.trim().is_empty() {
            continue;
        }
        tracing::trace!(target: "qmp", "<- {line}");
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(target: "qmp", "unparsable QMP line {line:?}: {e}");
                continue;
            }
        };
        if v.get("event").is_some() {
            let mut evs = shared.events.lock().unwrap();
            let seq = evs.len();
            match QmpEvent::parse(&v, seq) {
                Some(ev) => evs.push(ev),
                None => tracing::warn!(target: "qmp", "malformed QMP event {line}"),
            }
            drop(evs);
            shared.notify.send_modify(|n| *n += 1);
            continue;
        }
        let id = v.get("id").and_then(Value::as_u64);
        let result = if let Some(r) = v.get("return") {
            Ok(r.clone())
        } else if let Some(e) = v.get("error") {
            Err((
                e.get("class").and_then(Value::as_str).unwrap_or("Unknown").to_owned(),
                e.get("desc").and_then(Value::as_str).unwrap_or("").to_owned(),
            ))
        } else {
            tracing::warn!(target: "qmp", "unexpected QMP message {line}");
            continue;
        };
        match id.and_then(|id| shared.pending.lock().unwrap().remove(&id)) {
            Some(tx) => {
                let _ = tx.send(result);
            }
            None => tracing::debug!(target: "qmp", "QMP reply without waiter (timed out?): {line}"),
        }
    };
    tracing::debug!(target: "qmp", "QMP reader finished: {reason}");
    shared.close(reason);
}

/// Write (the start of) `line` with `fd` attached as SCM_RIGHTS; returns
/// how many bytes went out (the rest is written normally).
async fn send_with_fd(
    sock: &UnixStream,
    line: &[u8],
    fd: std::os::fd::RawFd,
) -> std::io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let raw = sock.as_raw_fd();
    loop {
        sock.writable().await?;
        let r = sock.try_io(tokio::io::Interest::WRITABLE, || {
            let iov = [std::io::IoSlice::new(line)];
            let fds = [fd];
            sendmsg::<()>(raw, &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
                .map_err(std::io::Error::from)
        });
        match r {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}
