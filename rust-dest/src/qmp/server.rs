//! One QMP connection: greeting, capabilities negotiation, in-band command
//! queue, out-of-band commands, and the event forwarder.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::args::{invalid_type, not_accepted, Args, QResult, QmpErr};
use super::commands::{self, dispatch, version};
use super::fdpass::{with_fds, PassedFds};
use crate::state::{Event, Shared};

fn greeting() -> Value {
    json!({ "QMP": { "version": version(), "capabilities": ["oob"] } })
}

/// Largest incomplete request kept while waiting for its end.
const MAX_REQUEST: usize = 64 << 20;

enum Out {
    Line(String),
    /// Acknowledged once every line queued before it has been written.
    Flush(oneshot::Sender<()>),
}

type OutTx = mpsc::UnboundedSender<Out>;

fn send(out: &OutTx, v: &Value) {
    let mut s = serde_json::to_string(v).unwrap_or_else(|_| "{}".into());
    s.push_str("\r\n");
    let _ = out.send(Out::Line(s));
}

fn reply(ret: QResult<Value>, id: Option<Value>) -> Value {
    let mut m = Map::new();
    match ret {
        Ok(v) => m.insert("return".into(), v),
        Err(e) => m.insert("error".into(), e.to_json()),
    };
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    Value::Object(m)
}

fn timestamp() -> Value {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    json!({ "seconds": d.as_secs(), "microseconds": d.subsec_micros() })
}

/// QEMU events without arguments carry no `data` member.
fn event_json(ev: &Event) -> Value {
    let mut m = Map::new();
    m.insert("event".into(), json!(ev.name));
    let no_data = ev.data.is_null()
        || (ev.data.as_object().is_some_and(|o| o.is_empty())
            && matches!(ev.name, "STOP" | "RESUME" | "POWERDOWN" | "SUSPEND" | "WAKEUP"));
    if !no_data {
        m.insert("data".into(), ev.data.clone());
    }
    m.insert("timestamp".into(), timestamp());
    Value::Object(m)
}

async fn writer_task<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::UnboundedReceiver<Out>) {
    while let Some(o) = rx.recv().await {
        match o {
            Out::Line(l) => {
                if w.write_all(l.as_bytes()).await.is_err() {
                    break;
                }
            }
            Out::Flush(ack) => {
                let _ = w.flush().await;
                let _ = ack.send(());
            }
        }
    }
    let _ = w.shutdown().await;
}

async fn event_task(mut rx: broadcast::Receiver<Event>, out: OutTx) {
    loop {
        match rx.recv().await {
            Ok(ev) => {
                if out.is_closed() {
                    break;
                }
                send(&out, &event_json(&ev));
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("QMP client lagged: {n} events dropped");
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// Per-connection negotiation state.
#[derive(Default)]
struct Session {
    negotiated: AtomicBool,
    oob: AtomicBool,
}

struct Request {
    name: String,
    args: Map<String, Value>,
    id: Option<Value>,
}

enum Work {
    /// A reply decided while parsing (kept in order with commands).
    Reply(Value),
    Cmd(Request),
}

/// Validate the shape of one request object. `Err` carries the reply.
fn parse_request(v: Value, oob_enabled: bool) -> Result<(Request, bool), Value> {
    let Value::Object(mut m) = v else {
        return Err(reply(Err(QmpErr::generic("QMP input must be a JSON object")), None));
    };
    let id = m.remove("id");
    let fail = |desc: String, id: Option<Value>| reply(Err(QmpErr::generic(desc)), id);
    let mut exec = None;
    let mut exec_oob = None;
    let mut args = Map::new();
    for (k, v) in m {
        match (k.as_str(), v) {
            ("execute", Value::String(s)) => exec = Some(s),
            ("exec-oob", Value::String(s)) if oob_enabled => exec_oob = Some(s),
            ("exec-oob", _) if !oob_enabled => {
                return Err(fail(format!("QMP input member '{k}' is unexpected"), id))
            }
            ("execute" | "exec-oob", _) => {
                return Err(fail(format!("QMP input member '{k}' must be a string"), id))
            }
            ("arguments", Value::Object(a)) => args = a,
            ("arguments", _) => {
                return Err(fail("QMP input member 'arguments' must be an object".into(), id))
            }
            _ => return Err(fail(format!("QMP input member '{k}' is unexpected"), id)),
        }
    }
    match (exec, exec_oob) {
        (Some(name), None) => Ok((Request { name, args, id }, false)),
        (None, Some(name)) => Ok((Request { name, args, id }, true)),
        (None, None) => Err(fail("QMP input lacks member 'execute'".into(), id)),
        (Some(_), Some(_)) => {
            Err(fail("QMP input must not contain both 'execute' and 'exec-oob'".into(), id))
        }
    }
}

/// Where the input of one connection stands between reads: inside a line
/// being discarded after a syntax error, and how far the bytes of a request
/// not yet complete were scanned. The scan follows strings and nesting, so
/// the JSON parser runs only when a top-level value may have ended: each
/// read costs its own bytes, not the whole request again (a 64 MiB request
/// arriving in 64 KiB reads would otherwise be parsed a thousand times).
#[derive(Default)]
pub(super) struct InputState {
    skip_line: bool,
    pos: usize,
    depth: usize,
    in_str: bool,
    esc: bool,
    /// Inside a top-level number or literal.
    scalar: bool,
}

impl InputState {
    /// Scan `buf` from where the last scan stopped; true when a top-level
    /// value may have ended (or a byte only the parser can judge came).
    fn scan(&mut self, buf: &[u8]) -> bool {
        let mut maybe = false;
        for &b in &buf[self.pos.min(buf.len())..] {
            if self.in_str {
                match b {
                    _ if self.esc => self.esc = false,
                    b'\\' => self.esc = true,
                    b'"' => {
                        self.in_str = false;
                        maybe |= self.depth == 0;
                    }
                    _ => {}
                }
                continue;
            }
            let scalar =
                !matches!(b, b'"' | b'{' | b'[' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n');
            if self.depth == 0 && !scalar && std::mem::take(&mut self.scalar) {
                // A top-level number or literal ends at the next delimiter.
                maybe = true;
            }
            match b {
                b'"' => self.in_str = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    maybe |= self.depth <= 1;
                    self.depth = self.depth.saturating_sub(1);
                }
                _ if scalar && self.depth == 0 => self.scalar = true,
                _ => {}
            }
        }
        self.pos = buf.len();
        maybe
    }

    /// The bytes scanned so far were consumed or dropped.
    fn rescan(&mut self) {
        let skip_line = self.skip_line;
        *self = InputState { skip_line, ..InputState::default() };
    }
}

/// Split complete JSON values off the front of `buf`. Incomplete input stays
/// in `buf`; after a syntax error the rest of that line is discarded.
fn drain_values(buf: &mut Vec<u8>, st: &mut InputState, out: &mut Vec<Result<Value, String>>) {
    loop {
        if st.skip_line {
            match buf.iter().position(|&b| b == b'\n') {
                Some(p) => {
                    buf.drain(..=p);
                    st.skip_line = false;
                    st.rescan();
                }
                None => {
                    buf.clear();
                    st.rescan();
                    return;
                }
            }
        }
        if !st.scan(buf) {
            too_large(buf, st, out);
            return;
        }
        let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
        match it.next() {
            None => {
                buf.clear();
                st.rescan();
                return;
            }
            Some(Ok(v)) => {
                let off = it.byte_offset();
                buf.drain(..off);
                st.rescan();
                out.push(Ok(v));
            }
            Some(Err(e)) if e.is_eof() => {
                too_large(buf, st, out);
                return;
            }
            Some(Err(e)) => {
                // Drop input up to the end of the line holding the error.
                let mut line_start = 0;
                for _ in 1..e.line() {
                    match buf[line_start..].iter().position(|&b| b == b'\n') {
                        Some(p) => line_start += p + 1,
                        None => break,
                    }
                }
                let at = (line_start + e.column().saturating_sub(1)).min(buf.len());
                buf.drain(..at);
                let msg = e.to_string();
                let msg = msg.split(" at line ").next().unwrap_or(&msg);
                out.push(Err(format!("JSON parse error, {msg}")));
                st.skip_line = true;
                st.rescan();
            }
        }
    }
}

/// An incomplete request above [`MAX_REQUEST`] is refused and dropped up to
/// its line's end.
fn too_large(buf: &mut Vec<u8>, st: &mut InputState, out: &mut Vec<Result<Value, String>>) {
    if buf.len() > MAX_REQUEST {
        out.push(Err("JSON parse error, request too large".into()));
        buf.clear();
        st.skip_line = true;
        st.rescan();
    }
}

/// The input side of one connection without its socket (for the fuzz
/// targets, `crate::fuzzing`): `data` arrives in reads of `chunk` bytes, is
/// split into JSON values and each checked as a request (with `oob` once a
/// request asked for it). Returns how many requests were well-formed.
pub(crate) fn parse_input(data: &[u8], chunk: usize) -> usize {
    let (mut buf, mut values, mut ok, mut oob) = (Vec::new(), Vec::new(), 0, false);
    let mut skip_line = InputState::default();
    for part in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(part);
        drain_values(&mut buf, &mut skip_line, &mut values);
        for v in values.drain(..).flatten() {
            if let Ok((req, _)) = parse_request(v, oob) {
                oob |= req.name == "qmp_capabilities";
                ok += 1;
            }
        }
    }
    ok
}

#[cfg(test)]
pub(super) fn drain_values_for_tests(
    buf: &mut Vec<u8>,
    st: &mut InputState,
    out: &mut Vec<Result<Value, String>>,
) {
    drain_values(buf, st, out)
}

/// Handle `qmp_capabilities` (the only command before negotiation).
fn capabilities_cmd(session: &Session, args: Map<String, Value>) -> QResult<Value> {
    if session.negotiated.load(Ordering::Acquire) {
        return Err(QmpErr::not_found(
            "Capabilities negotiation is already complete, command ignored",
        ));
    }
    let mut a = Args::new(args);
    let enable = a.opt_array("enable")?.unwrap_or_default();
    let mut oob = false;
    for (i, v) in enable.into_iter().enumerate() {
        let name = format!("{}[{i}]", a.full("enable"));
        match v {
            Value::String(s) if s == "oob" => oob = true,
            Value::String(s) => return Err(not_accepted(&name, &s)),
            _ => return Err(invalid_type(&name, "string")),
        }
    }
    a.finish()?;
    session.oob.store(oob, Ordering::Release);
    session.negotiated.store(true, Ordering::Release);
    Ok(json!({}))
}

async fn worker_task(
    shared: Shared,
    session: Arc<Session>,
    mut rx: mpsc::UnboundedReceiver<Work>,
    out: OutTx,
    fds: PassedFds,
) {
    let mut events: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(w) = rx.recv().await {
        let req = match w {
            Work::Reply(v) => {
                send(&out, &v);
                continue;
            }
            Work::Cmd(r) => r,
        };
        let negotiated = session.negotiated.load(Ordering::Acquire);
        let ret = if req.name == "qmp_capabilities" {
            let r = capabilities_cmd(&session, req.args);
            if r.is_ok() {
                // Subscribe before the reply is queued: no event emitted after
                // the client sees the reply can be missed.
                events = Some(tokio::spawn(event_task(shared.subscribe(), out.clone())));
            }
            r
        } else if !negotiated {
            Err(QmpErr::not_found("Expecting capabilities negotiation with 'qmp_capabilities'"))
        } else {
            with_fds(fds.clone(), dispatch(&shared, &req.name, req.args)).await
        };
        let quit = req.name == "quit" && ret.is_ok();
        send(&out, &reply(ret, req.id));
        if quit {
            let (tx, rx) = oneshot::channel();
            let _ = out.send(Out::Flush(tx));
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
            shared.emit("SHUTDOWN", json!({ "guest": false, "reason": "host-qmp-quit" }));
            shared.request_quit();
        }
    }
    if let Some(h) = events {
        h.abort();
    }
}

pub(super) async fn serve_conn<S: AsyncRead + AsyncWrite + Send + 'static>(
    shared: Shared,
    stream: S,
    fds: PassedFds,
) {
    let (mut rd, wr) = tokio::io::split(stream);
    let (out, out_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(writer_task(wr, out_rx));
    send(&out, &greeting());
    let session = Arc::new(Session::default());
    let (work_tx, work_rx) = mpsc::unbounded_channel();
    let worker =
        tokio::spawn(worker_task(shared.clone(), session.clone(), work_rx, out.clone(), fds));

    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut skip_line = InputState::default();
    let mut values = Vec::new();
    loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        drain_values(&mut buf, &mut skip_line, &mut values);
        for v in values.drain(..) {
            let v = match v {
                Ok(v) => v,
                Err(e) => {
                    let _ = work_tx.send(Work::Reply(reply(Err(QmpErr::generic(e)), None)));
                    continue;
                }
            };
            match parse_request(v, session.oob.load(Ordering::Acquire)) {
                Err(r) => {
                    let _ = work_tx.send(Work::Reply(r));
                }
                Ok((req, false)) => {
                    let _ = work_tx.send(Work::Cmd(req));
                }
                Ok((req, true)) => {
                    // Out-of-band: answered immediately, ahead of queued
                    // in-band commands.
                    match commands::check_oob(&req.name) {
                        Err(e) => send(&out, &reply(Err(e), req.id)),
                        Ok(()) => {
                            let (shared, out) = (shared.clone(), out.clone());
                            tokio::spawn(async move {
                                let r = dispatch(&shared, &req.name, req.args).await;
                                send(&out, &reply(r, req.id));
                            });
                        }
                    }
                }
            }
        }
    }
    // Commands already received still run (e.g. a `quit` followed by EOF).
    drop(work_tx);
    let _ = worker.await;
    drop(out);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(input: &[&[u8]]) -> Vec<Result<Value, String>> {
        let mut buf = Vec::new();
        let mut skip = InputState::default();
        let mut out = Vec::new();
        for chunk in input {
            buf.extend_from_slice(chunk);
            drain_values(&mut buf, &mut skip, &mut out);
        }
        out
    }

    #[test]
    fn stream_split_and_joined() {
        let r = drain(&[b"{\"a\":1}{\"b\"", b":2}\n {\"c\":", b"3}\r\n"]);
        let vals: Vec<Value> = r.into_iter().map(|x| x.unwrap()).collect();
        assert_eq!(vals, vec![json!({"a":1}), json!({"b":2}), json!({"c":3})]);
    }

    #[test]
    fn stream_error_resyncs_at_line_end() {
        let r =
            drain(&[b"{\"a\": nope, \"x\": 1}\n{\"b\":2}\n", b"{\"c\":\n", b"} junk\n{\"d\":4}\n"]);
        assert_eq!(r.len(), 4, "{r:?}");
        assert!(r[0].as_ref().unwrap_err().starts_with("JSON parse error, "), "{r:?}");
        assert_eq!(r[1].as_ref().unwrap(), &json!({"b":2}));
        assert!(r[2].is_err(), "{r:?}");
        assert_eq!(r[3].as_ref().unwrap(), &json!({"d":4}));
    }
}
