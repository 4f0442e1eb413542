//! The QMP server: serves the QEMU Machine Protocol the way a QEMU incoming
//! (destination) process does, so any QMP client can drive rust-dest.
//!
//! Protocol facts followed here (see QEMU's `docs/interop/qmp-spec`):
//! - on connect the server sends a greeting `{"QMP": {"version", "capabilities"}}`;
//! - until `qmp_capabilities` succeeds, every other command fails with class
//!   `CommandNotFound`; events are not sent before negotiation;
//! - requests are JSON objects with `execute` (or `exec-oob`, once the `oob`
//!   capability was enabled), optional `arguments` object and optional `id`
//!   (any JSON value, echoed back);
//! - replies are `{"return": ...}` or `{"error": {"class", "desc"}}`;
//!   events are `{"event", "data", "timestamp": {"seconds", "microseconds"}}`;
//! - every message is one line terminated by `\r\n`.
//!
//! Threading: [`spawn`] binds (or connects) synchronously, then runs a
//! current-thread tokio runtime on a dedicated thread. Each client connection
//! gets its own negotiation state, an in-band command queue executed in
//! order, out-of-band commands executed immediately, and an event forwarder
//! fed from [`Shared::subscribe`]. Slow work (RAM digests, dumps) runs on the
//! blocking pool so other clients stay responsive.

use std::io;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::ram::TARGET_PAGE_SIZE;
use crate::state::{Event, MigStatus, RunState, Shared, KNOWN_CAPABILITIES};
use wire::digest;

// ---------------------------------------------------------------------------
// Address specification (`-qmp` argument)
// ---------------------------------------------------------------------------

/// Where the QMP monitor lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QmpEndpoint {
    /// A filesystem unix socket.
    Unix(PathBuf),
    /// A Linux abstract-namespace unix socket (`abstract=on`); the name
    /// excludes the leading NUL.
    UnixAbstract(String),
    /// A TCP socket; `host` has no IPv6 brackets and may be empty (= any).
    Tcp { host: String, port: u16 },
}

/// A parsed `-qmp` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QmpAddr {
    pub endpoint: QmpEndpoint,
    /// Listen (`server=on`) or connect out to a listening client (QEMU's
    /// default chardev socket mode is client).
    pub server: bool,
    /// With `server`: block in [`spawn`] until the first client connects
    /// (QEMU's default `wait=on`).
    pub wait: bool,
}

use crate::cli::split_opts;

fn parse_bool_opt(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(format!("Parameter '{key}' expects 'on' or 'off'")),
    }
}

/// Parse a QEMU `-qmp` socket chardev specification:
/// `unix:PATH[,server=on|,server][,wait=off|,nowait][,abstract=on]` or
/// `tcp:[HOST]:PORT[,server=on][,wait=off]` (IPv6 hosts in brackets).
/// Without `server`, the monitor connects out, as QEMU does.
pub fn parse_spec(spec: &str) -> Result<QmpAddr, String> {
    let parts = split_opts(spec);
    let (kind, rest) = parts[0].split_once(':').ok_or_else(|| {
        format!("invalid QMP address '{spec}': expected unix:PATH or tcp:HOST:PORT")
    })?;
    let mut server: Option<bool> = None;
    let mut wait: Option<bool> = None;
    let mut abstract_ns = false;
    for opt in &parts[1..] {
        if opt.is_empty() {
            continue;
        }
        let (key, val) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt.as_str(), None),
        };
        // Bare `flag` means flag=on, bare `noflag` means flag=off (legacy
        // QemuOpts syntax, e.g. `server,nowait`).
        let flag = |name: &str| -> Result<Option<bool>, String> {
            match val {
                Some(v) if key == name => parse_bool_opt(name, v).map(Some),
                None if key == name => Ok(Some(true)),
                None if key.strip_prefix("no") == Some(name) => Ok(Some(false)),
                _ => Ok(None),
            }
        };
        if let Some(b) = flag("server")? {
            server = Some(b);
        } else if let Some(b) = flag("wait")? {
            wait = Some(b);
        } else if let Some(b) = flag("abstract")? {
            abstract_ns = b;
        } else if let Some(b) = flag("telnet")? {
            if b {
                return Err("telnet QMP sockets are not supported".into());
            }
        } else if let Some(b) = flag("websocket")? {
            if b {
                return Err("websocket QMP sockets are not supported".into());
            }
        } else if ["tight", "nodelay", "ipv4", "ipv6", "keep-alive"]
            .iter()
            .any(|n| matches!(flag(n), Ok(Some(_))))
        {
            // accepted and irrelevant here
        } else if val.is_some()
            && ["id", "to", "reconnect", "reconnect-ms", "logfile", "logappend"].contains(&key)
        {
            // accepted and ignored
        } else {
            return Err(format!("Invalid parameter '{key}'"));
        }
    }
    let server = server.unwrap_or(false);
    if wait.is_some() && !server {
        return Err("'wait' option is incompatible with socket in client connect mode".into());
    }
    let wait = wait.unwrap_or(true) && server;
    let endpoint = match kind {
        "unix" => {
            if rest.is_empty() {
                return Err(format!("invalid QMP address '{spec}': empty unix socket path"));
            }
            if abstract_ns {
                QmpEndpoint::UnixAbstract(rest.to_string())
            } else {
                QmpEndpoint::Unix(PathBuf::from(rest))
            }
        }
        "tcp" => {
            if abstract_ns {
                return Err("'abstract' is only valid for unix sockets".into());
            }
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("invalid QMP address '{spec}': expected tcp:HOST:PORT"))?;
            let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
            let port: u16 = port
                .parse()
                .map_err(|_| format!("invalid QMP address '{spec}': bad port '{port}'"))?;
            QmpEndpoint::Tcp { host: host.to_string(), port }
        }
        other => {
            return Err(format!(
            "unsupported QMP chardev backend '{other}' (rust-dest supports unix: and tcp: sockets)"
        ))
        }
    };
    Ok(QmpAddr { endpoint, server, wait })
}

// ---------------------------------------------------------------------------
// Version
// ---------------------------------------------------------------------------

/// The version rust-dest reports in the greeting and `query-version`: it
/// presents itself as QEMU 10.0.0 so clients enable the matching feature set.
pub fn version() -> Value {
    json!({
        "qemu": { "major": 10, "minor": 0, "micro": 0 },
        "package": concat!(" (rust-dest ", env!("CARGO_PKG_VERSION"), ")"),
    })
}

fn greeting() -> Value {
    json!({ "QMP": { "version": version(), "capabilities": ["oob"] } })
}

// ---------------------------------------------------------------------------
// Spawning
// ---------------------------------------------------------------------------

enum Listener {
    Unix(StdUnixListener),
    Tcp(std::net::TcpListener),
}

enum Conn {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

fn bind_unix(path: &std::path::Path) -> io::Result<StdUnixListener> {
    use std::os::unix::fs::FileTypeExt;
    // Remove a stale socket left by a previous process (never other files).
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if md.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    StdUnixListener::bind(path)
}

fn abstract_addr(name: &str) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

fn tcp_host(host: &str) -> &str {
    if host.is_empty() {
        "0.0.0.0"
    } else {
        host
    }
}

/// Start the QMP server described by `spec` (a QEMU `-qmp` argument).
///
/// The socket is bound (or, in client mode, connected) before this returns,
/// so clients may connect immediately. With `server=on` and the default
/// `wait=on`, this blocks until the first client connects, like QEMU.
/// The server then runs on its own thread for the life of the process.
pub fn spawn(shared: Shared, spec: &str) -> io::Result<std::thread::JoinHandle<()>> {
    let addr = parse_spec(spec).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (listener, first) = if addr.server {
        let l = match &addr.endpoint {
            QmpEndpoint::Unix(p) => Listener::Unix(bind_unix(p)?),
            QmpEndpoint::UnixAbstract(n) => {
                Listener::Unix(StdUnixListener::bind_addr(&abstract_addr(n)?)?)
            }
            QmpEndpoint::Tcp { host, port } => {
                Listener::Tcp(std::net::TcpListener::bind((tcp_host(host), *port))?)
            }
        };
        match &l {
            Listener::Unix(u) => tracing::info!("QMP listening on {:?}", u.local_addr()?),
            Listener::Tcp(t) => tracing::info!("QMP listening on tcp:{}", t.local_addr()?),
        }
        let first = if addr.wait {
            tracing::info!("QMP: waiting for a client to connect (wait=on)");
            Some(match &l {
                Listener::Unix(u) => Conn::Unix(u.accept()?.0),
                Listener::Tcp(t) => Conn::Tcp(t.accept()?.0),
            })
        } else {
            None
        };
        (Some(l), first)
    } else {
        let c = match &addr.endpoint {
            QmpEndpoint::Unix(p) => Conn::Unix(std::os::unix::net::UnixStream::connect(p)?),
            QmpEndpoint::UnixAbstract(n) => {
                Conn::Unix(std::os::unix::net::UnixStream::connect_addr(&abstract_addr(n)?)?)
            }
            QmpEndpoint::Tcp { host, port } => {
                Conn::Tcp(std::net::TcpStream::connect((tcp_host(host), *port))?)
            }
        };
        (None, Some(c))
    };
    match &listener {
        Some(Listener::Unix(u)) => u.set_nonblocking(true)?,
        Some(Listener::Tcp(t)) => t.set_nonblocking(true)?,
        None => {}
    }
    match &first {
        Some(Conn::Unix(s)) => s.set_nonblocking(true)?,
        Some(Conn::Tcp(s)) => s.set_nonblocking(true)?,
        None => {}
    }
    std::thread::Builder::new().name("qmp".into()).spawn(move || {
        rt.block_on(async move {
            if let Some(c) = first {
                start_conn(&shared, c);
            }
            match listener {
                Some(Listener::Unix(l)) => match tokio::net::UnixListener::from_std(l) {
                    Ok(l) => loop {
                        match l.accept().await {
                            Ok((s, _)) => {
                                tokio::spawn(serve_conn(shared.clone(), s));
                            }
                            Err(e) => accept_error(e).await,
                        }
                    },
                    Err(e) => tracing::error!("QMP: cannot register listener: {e}"),
                },
                Some(Listener::Tcp(l)) => match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => loop {
                        match l.accept().await {
                            Ok((s, _)) => {
                                let _ = s.set_nodelay(true);
                                tokio::spawn(serve_conn(shared.clone(), s));
                            }
                            Err(e) => accept_error(e).await,
                        }
                    },
                    Err(e) => tracing::error!("QMP: cannot register listener: {e}"),
                },
                None => {
                    // Client mode: serve the single outgoing connection until
                    // it closes (spawned tasks finish on this runtime).
                    std::future::pending::<()>().await;
                }
            }
        })
    })
}

fn start_conn(shared: &Shared, c: Conn) {
    match c {
        Conn::Unix(s) => match tokio::net::UnixStream::from_std(s) {
            Ok(s) => drop(tokio::spawn(serve_conn(shared.clone(), s))),
            Err(e) => tracing::error!("QMP: cannot register connection: {e}"),
        },
        Conn::Tcp(s) => match tokio::net::TcpStream::from_std(s) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                drop(tokio::spawn(serve_conn(shared.clone(), s)))
            }
            Err(e) => tracing::error!("QMP: cannot register connection: {e}"),
        },
    }
}

async fn accept_error(e: io::Error) {
    tracing::warn!("QMP accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

// ---------------------------------------------------------------------------
// Errors and argument access
// ---------------------------------------------------------------------------

/// A QMP error reply: `{"error": {"class": class, "desc": desc}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QmpErr {
    pub class: &'static str,
    pub desc: String,
}

impl QmpErr {
    pub fn generic(desc: impl Into<String>) -> QmpErr {
        QmpErr { class: "GenericError", desc: desc.into() }
    }
    pub fn not_found(desc: impl Into<String>) -> QmpErr {
        QmpErr { class: "CommandNotFound", desc: desc.into() }
    }
    fn to_json(&self) -> Value {
        json!({ "class": self.class, "desc": self.desc })
    }
}

impl std::fmt::Display for QmpErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.desc)
    }
}

type QResult<T> = Result<T, QmpErr>;

fn invalid_type(name: &str, expected: &str) -> QmpErr {
    QmpErr::generic(format!("Invalid parameter type for '{name}', expected: {expected}"))
}

fn not_accepted(name: &str, value: &str) -> QmpErr {
    QmpErr::generic(format!("Parameter '{name}' does not accept value '{value}'"))
}

/// Command arguments, consumed member by member; [`Args::finish`] rejects
/// leftovers. Error texts name the full member path (`a[0].b`) like QEMU.
struct Args {
    map: Map<String, Value>,
    path: String,
}

impl Args {
    fn new(map: Map<String, Value>) -> Args {
        Args { map, path: String::new() }
    }

    fn full(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key)
    }

    fn missing(&self, key: &str) -> QmpErr {
        QmpErr::generic(format!("Parameter '{}' is missing", self.full(key)))
    }

    fn opt_str(&mut self, key: &str) -> QResult<Option<String>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid_type(&self.full(key), "string")),
        }
    }

    fn str(&mut self, key: &str) -> QResult<String> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_bool(&mut self, key: &str) -> QResult<Option<bool>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(invalid_type(&self.full(key), "boolean")),
        }
    }

    fn bool(&mut self, key: &str) -> QResult<bool> {
        self.opt_bool(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_u64(&mut self, key: &str) -> QResult<Option<u64>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(x) => Ok(Some(x)),
                None if n.is_i64() => {
                    Err(QmpErr::generic(format!("Parameter '{}' expects uint64", self.full(key))))
                }
                None => Err(invalid_type(&self.full(key), "integer")),
            },
            Some(_) => Err(invalid_type(&self.full(key), "integer")),
        }
    }

    fn opt_array(&mut self, key: &str) -> QResult<Option<Vec<Value>>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(invalid_type(&self.full(key), "array")),
        }
    }

    fn array(&mut self, key: &str) -> QResult<Vec<Value>> {
        self.opt_array(key)?.ok_or_else(|| self.missing(key))
    }

    /// A nested object member.
    fn object(&mut self, key: &str) -> QResult<Args> {
        match self.take(key) {
            None => Err(self.missing(key)),
            Some(Value::Object(m)) => Ok(Args { map: m, path: self.full(key) }),
            Some(_) => Err(invalid_type(&self.full(key), "object")),
        }
    }

    /// A string member restricted to `allowed` values.
    fn enum_str(&mut self, key: &str, allowed: &[&str]) -> QResult<String> {
        let s = self.str(key)?;
        if allowed.contains(&s.as_str()) {
            Ok(s)
        } else {
            Err(not_accepted(&self.full(key), &s))
        }
    }

    /// Members `keys` are accepted and ignored.
    fn ignore(&mut self, keys: &[&str]) {
        for k in keys {
            self.map.remove(*k);
        }
    }

    fn finish(self) -> QResult<()> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(k) => Err(QmpErr::generic(format!("Parameter '{}' is unexpected", self.full(k)))),
        }
    }
}

/// Element `i` of list member `list` (at `parent`'s path) as a struct.
fn list_elem(parent: &Args, list: &str, i: usize, v: Value) -> QResult<Args> {
    let path = format!("{}[{i}]", parent.full(list));
    match v {
        Value::Object(m) => Ok(Args { map: m, path }),
        _ => Err(invalid_type(&path, "object")),
    }
}

// ---------------------------------------------------------------------------
// Command table and dispatch
// ---------------------------------------------------------------------------

/// Every command this server knows (what `query-commands` lists).
pub const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-version",
    "query-commands",
    "query-status",
    "query-migrate",
    "migrate-set-capabilities",
    "query-migrate-capabilities",
    "migrate-set-parameters",
    "query-migrate-parameters",
    "migrate-incoming",
    "migrate-pause",
    "migrate-recover",
    "cont",
    "stop",
    "quit",
    "x-crossmig-query-ramblocks",
    "x-crossmig-ram-digests",
    "x-crossmig-dump-ramblock",
    "x-crossmig-query-devices",
    "x-crossmig-device-data",
];

/// Commands that may be sent with `exec-oob` (as in QEMU, only the
/// migration recovery commands).
pub const OOB_COMMANDS: &[&str] = &["migrate-pause", "migrate-recover"];

/// Execute one command (after negotiation). `qmp_capabilities` is handled by
/// the connection, not here. Add new commands to the `match` and to
/// [`COMMANDS`].
async fn dispatch(shared: &Shared, name: &str, args: Map<String, Value>) -> QResult<Value> {
    let a = Args::new(args);
    let no_args = |a: Args| a.finish();
    Ok(match name {
        "query-version" => no_args(a).map(|_| version())?,
        "query-commands" => {
            no_args(a)?;
            Value::Array(COMMANDS.iter().map(|c| json!({ "name": c })).collect())
        }
        "query-status" => no_args(a).map(|_| query_status(shared))?,
        "query-migrate" => no_args(a).map(|_| query_migrate(shared))?,
        "migrate-set-capabilities" => set_capabilities(shared, a)?,
        "query-migrate-capabilities" => {
            no_args(a)?;
            let g = shared.lock();
            Value::Array(
                KNOWN_CAPABILITIES
                    .iter()
                    .map(|c| json!({ "capability": c, "state": g.capabilities.get(*c).copied().unwrap_or(false) }))
                    .collect(),
            )
        }
        "migrate-set-parameters" => set_parameters(shared, a)?,
        "query-migrate-parameters" => {
            no_args(a).map(|_| Value::Object(shared.lock().parameters.clone()))?
        }
        "migrate-incoming" => migrate_incoming(shared, a)?,
        "cont" => {
            no_args(a)?;
            cont(shared)?
        }
        "stop" => {
            no_args(a)?;
            stop(shared);
            json!({})
        }
        // The connection asks the process to quit after sending the reply.
        "quit" => no_args(a).map(|_| json!({}))?,
        "migrate-pause" => {
            no_args(a)?;
            shared.pause().map_err(QmpErr::generic)?;
            json!({})
        }
        "migrate-recover" => {
            let mut a = a;
            let uri = a.str("uri")?;
            a.finish()?;
            shared.recover(&uri).map_err(QmpErr::generic)?;
            json!({})
        }
        "x-crossmig-query-ramblocks" => no_args(a).map(|_| ramblocks(shared))?,
        "x-crossmig-ram-digests" => ram_digests(shared, a).await?,
        "x-crossmig-dump-ramblock" => dump_ramblock(shared, a).await?,
        "x-crossmig-query-devices" => no_args(a).map(|_| query_devices(shared))?,
        "x-crossmig-device-data" => device_data(shared, a)?,
        _ => return Err(QmpErr::not_found(format!("The command {name} has not been found"))),
    })
}

fn query_status(shared: &Shared) -> Value {
    let rs = shared.lock().run_state;
    json!({ "status": rs.as_str(), "running": rs == RunState::Running, "singlestep": false })
}

/// `tcp:H:P` / `unix:PATH` → QAPI `SocketAddress` (for `socket-address`).
fn uri_socket_address(uri: &str) -> Option<Value> {
    if let Some(rest) = uri.strip_prefix("tcp:") {
        let (host, port) = rest.split(',').next()?.rsplit_once(':')?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        Some(json!({ "type": "inet", "host": host, "port": port }))
    } else if let Some(path) = uri.strip_prefix("unix:") {
        Some(json!({ "type": "unix", "path": path }))
    } else {
        uri.strip_prefix("vsock:")
            .and_then(|r| r.split_once(':'))
            .map(|(cid, port)| json!({ "type": "vsock", "cid": cid, "port": port }))
    }
}

fn percentiles(lat: &[u64]) -> Value {
    if lat.is_empty() {
        return json!({ "count": 0, "p50": 0, "p99": 0, "max": 0 });
    }
    let mut v = lat.to_vec();
    v.sort_unstable();
    // Nearest-rank percentile.
    let pick = |p: u64| -> u64 {
        let n = v.len() as u64;
        let rank = (p * n).div_ceil(100).max(1);
        v[(rank - 1) as usize]
    };
    json!({ "count": v.len(), "p50": pick(50), "p99": pick(99), "max": v[v.len() - 1] })
}

fn query_migrate(shared: &Shared) -> Value {
    use crate::state::Counters as C;
    let c = shared.counters();
    // Taken before the state lock (never hold both).
    let ram_total = shared.ram().total();
    let g = shared.lock();
    let mut out = Map::new();
    if let Some(sa) = g.incoming_uri.as_deref().and_then(uri_socket_address) {
        out.insert("socket-address".into(), json!([sa]));
    }
    if g.status == MigStatus::None && g.started_at.is_none() {
        return Value::Object(out);
    }
    out.insert("status".into(), json!(g.status.as_str()));
    if let Some(e) = &g.error_desc {
        out.insert("error-desc".into(), json!(e));
    }
    let elapsed = g
        .started_at
        .map(|s| g.finished_at.unwrap_or_else(Instant::now).saturating_duration_since(s));
    if let Some(d) = elapsed {
        out.insert("total-time".into(), json!(d.as_millis() as u64));
    }
    let transferred = C::get(&c.transferred);
    let normal = C::get(&c.normal_pages);
    let secs = elapsed.map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let mbps = if secs > 0.0 { transferred as f64 * 8.0 / secs / 1e6 } else { 0.0 };
    out.insert(
        "ram".into(),
        json!({
            "transferred": transferred,
            "remaining": 0,
            "total": ram_total,
            "duplicate": C::get(&c.zero_pages),
            "normal": normal,
            "normal-bytes": normal * TARGET_PAGE_SIZE,
            "dirty-pages-rate": 0,
            "mbps": mbps,
            "dirty-sync-count": C::get(&c.ram_sections),
            "postcopy-requests": C::get(&c.page_requests),
            "page-size": TARGET_PAGE_SIZE,
            "multifd-bytes": 0,
            "pages-per-second": 0,
            "precopy-bytes": transferred,
            "downtime-bytes": 0,
            "postcopy-bytes": 0,
            "dirty-sync-missed-zero-copy": 0,
        }),
    );
    let faults = C::get(&c.faults);
    let lat_total_us = C::get(&c.fault_latency_us_total);
    if faults > 0 && g.capabilities.get("postcopy-blocktime").copied().unwrap_or(false) {
        out.insert(
            "postcopy-blocktime".into(),
            json!((lat_total_us / 1000).min(u32::MAX as u64) as u32),
        );
        out.insert("postcopy-latency".into(), json!(lat_total_us.saturating_mul(1000) / faults));
    }
    out.insert(
        "x-crossmig".into(),
        json!({
            "postcopy-state": g.postcopy_state,
            "faults": faults,
            "page-requests": C::get(&c.page_requests),
            "pages-placed-stream": C::get(&c.pages_placed_stream),
            "pages-placed-requested": C::get(&c.pages_placed_requested),
            "zero-pages-on-fault": C::get(&c.zero_pages_on_fault),
            "preempt-pages": C::get(&c.preempt_pages),
            "discard-commands": C::get(&c.discard_commands),
            "discarded-pages": C::get(&c.discarded_pages),
            "pings": C::get(&c.pings),
            "fault-latency-us": percentiles(&g.fault_latencies_us),
        }),
    );
    Value::Object(out)
}

fn set_capabilities(shared: &Shared, mut a: Args) -> QResult<Value> {
    let list = a.array("capabilities")?;
    let mut changes = Vec::with_capacity(list.len());
    for (i, v) in list.into_iter().enumerate() {
        let mut e = list_elem(&a, "capabilities", i, v)?;
        let cap = e.enum_str("capability", KNOWN_CAPABILITIES)?;
        let state = e.bool("state")?;
        e.finish()?;
        changes.push((cap, state));
    }
    a.finish()?;
    let mut g = shared.lock();
    if !matches!(g.status, MigStatus::None | MigStatus::Setup) {
        return Err(QmpErr::generic("There's a migration process in progress"));
    }
    let mut caps = g.capabilities.clone();
    for (cap, state) in changes {
        caps.insert(cap, state);
    }
    let on = |n: &str| caps.get(n).copied().unwrap_or(false);
    if on("postcopy-preempt") && !on("postcopy-ram") {
        return Err(QmpErr::generic("Postcopy preempt requires postcopy-ram"));
    }
    if on("switchover-ack") && !on("return-path") {
        return Err(QmpErr::generic(
            "Capability 'switchover-ack' requires capability 'return-path'",
        ));
    }
    g.capabilities = caps;
    Ok(json!({}))
}

/// Types of migration parameters (QEMU's `MigrateSetParameters`).
#[derive(Clone, Copy)]
enum ParamKind {
    /// Unsigned integer in an inclusive range.
    UInt(u64, u64),
    Bool,
    /// String, or null meaning "" (QEMU's `StrOrNull`).
    StrOrNull,
    Enum(&'static [&'static str]),
    /// Stored as given (e.g. `block-bitmap-mapping`).
    Array,
}

fn param_kind(name: &str, current: Option<&Value>) -> Option<ParamKind> {
    use ParamKind::*;
    const U8: u64 = u8::MAX as u64;
    const U32: u64 = u32::MAX as u64;
    Some(match name {
        "throttle-trigger-threshold" => UInt(1, 100),
        "cpu-throttle-initial" | "cpu-throttle-increment" | "max-cpu-throttle" => UInt(1, 99),
        "multifd-channels" => UInt(1, U8),
        "multifd-zlib-level" => UInt(0, 9),
        "multifd-zstd-level" => UInt(0, 20),
        "x-checkpoint-delay" => UInt(0, U32),
        "downtime-limit" => UInt(0, 2_000_000),
        "x-vcpu-dirty-limit-period" => UInt(1, 1000),
        "vcpu-dirty-limit" => UInt(1, u64::MAX),
        "cpu-throttle-tailslow" | "direct-io" => Bool,
        "tls-creds" | "tls-hostname" | "tls-authz" => StrOrNull,
        "multifd-compression" => Enum(&["none", "zlib", "zstd", "qatzip", "qpl", "uadk"]),
        "mode" => Enum(&["normal", "cpr-reboot", "cpr-transfer"]),
        "zero-page-detection" => Enum(&["none", "legacy", "multifd"]),
        "block-bitmap-mapping" => Array,
        _ => match current? {
            Value::Number(_) => UInt(0, u64::MAX),
            Value::Bool(_) => Bool,
            Value::String(_) => StrOrNull,
            Value::Array(_) => Array,
            _ => return None,
        },
    })
}

fn check_param(name: &str, kind: ParamKind, v: Value) -> QResult<Value> {
    match (kind, v) {
        (ParamKind::UInt(lo, hi), Value::Number(n)) => {
            let x = n.as_u64().ok_or_else(|| {
                if n.is_i64() {
                    QmpErr::generic(format!(
                        "Parameter '{name}' expects an integer in the range of {lo} to {hi}"
                    ))
                } else {
                    invalid_type(name, "integer")
                }
            })?;
            if x < lo || x > hi {
                return Err(QmpErr::generic(format!(
                    "Parameter '{name}' expects an integer in the range of {lo} to {hi}"
                )));
            }
            Ok(json!(x))
        }
        (ParamKind::UInt(..), _) => Err(invalid_type(name, "integer")),
        (ParamKind::Bool, v @ Value::Bool(_)) => Ok(v),
        (ParamKind::Bool, _) => Err(invalid_type(name, "boolean")),
        (ParamKind::StrOrNull, Value::Null) => Ok(json!("")),
        (ParamKind::StrOrNull, v @ Value::String(_)) => Ok(v),
        (ParamKind::StrOrNull, _) => Err(invalid_type(name, "string")),
        (ParamKind::Enum(allowed), Value::String(s)) => {
            if allowed.contains(&s.as_str()) {
                Ok(Value::String(s))
            } else {
                Err(not_accepted(name, &s))
            }
        }
        (ParamKind::Enum(_), _) => Err(invalid_type(name, "string")),
        (ParamKind::Array, v @ Value::Array(_)) => Ok(v),
        (ParamKind::Array, _) => Err(invalid_type(name, "array")),
    }
}

fn set_parameters(shared: &Shared, a: Args) -> QResult<Value> {
    let mut g = shared.lock();
    let mut updates = Vec::with_capacity(a.map.len());
    for (k, v) in a.map {
        let kind = param_kind(&k, g.parameters.get(&k))
            .filter(|_| g.parameters.contains_key(&k) || k == "block-bitmap-mapping")
            .ok_or_else(|| QmpErr::generic(format!("Parameter '{k}' is unexpected")))?;
        let v = check_param(&k, kind, v)?;
        updates.push((k, v));
    }
    for (k, v) in updates {
        g.parameters.insert(k, v);
    }
    Ok(json!({}))
}

/// Serializes `migrate-incoming` across clients (QEMU runs commands under
/// its big lock; without this, two clients could both start a listener).
static INCOMING_LOCK: Mutex<()> = Mutex::new(());

/// A `MigrationChannel`'s `addr` (QAPI `MigrationAddress`) as a URI string.
fn channel_addr_uri(mut addr: Args) -> QResult<String> {
    let transport = addr.enum_str("transport", &["socket", "exec", "rdma", "file"])?;
    let host_port = |addr: &mut Args| -> QResult<String> {
        let host = addr.str("host")?;
        let port = addr.str("port")?;
        addr.ignore(&[
            "numeric",
            "to",
            "ipv4",
            "ipv6",
            "keep-alive",
            "keep-alive-count",
            "keep-alive-idle",
            "keep-alive-interval",
            "mptcp",
        ]);
        Ok(if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") })
    };
    let uri = match transport.as_str() {
        "socket" => match addr.enum_str("type", &["inet", "unix", "vsock", "fd"])?.as_str() {
            "inet" => format!("tcp:{}", host_port(&mut addr)?),
            "unix" => {
                let path = addr.str("path")?;
                if addr.opt_bool("abstract")?.unwrap_or(false) {
                    return Err(QmpErr::generic(
                        "abstract unix sockets are not supported for migration",
                    ));
                }
                addr.opt_bool("tight")?;
                format!("unix:{path}")
            }
            "vsock" => {
                let cid = addr.str("cid")?;
                let port = addr.str("port")?;
                format!("vsock:{cid}:{port}")
            }
            _ => format!("fd:{}", addr.str("str")?),
        },
        "exec" => {
            let args = addr.array("args")?;
            let mut words = Vec::with_capacity(args.len());
            for (i, w) in args.into_iter().enumerate() {
                match w {
                    Value::String(s) => words.push(s),
                    _ => {
                        return Err(invalid_type(&format!("{}[{i}]", addr.full("args")), "string"))
                    }
                }
            }
            format!("exec:{}", words.join(" "))
        }
        "rdma" => format!("rdma:{}", host_port(&mut addr)?),
        _ => {
            let f = addr.str("filename")?;
            match addr.opt_u64("offset")? {
                Some(off) if off != 0 => format!("file:{f},offset={off}"),
                _ => format!("file:{f}"),
            }
        }
    };
    addr.finish()?;
    Ok(uri)
}

fn migrate_incoming(shared: &Shared, mut a: Args) -> QResult<Value> {
    let uri = a.opt_str("uri")?;
    let channels = a.opt_array("channels")?;
    // Accepted; rust-dest always reports failures through query-migrate and
    // the process keeps running.
    a.opt_bool("exit-on-error")?;
    let uri = match (uri, channels) {
        (Some(_), Some(_)) => {
            return Err(QmpErr::generic(
                "'uri' and 'channels' arguments are mutually exclusive; exactly one of the two should be present",
            ))
        }
        (None, None) => {
            return Err(QmpErr::generic("Parameter 'uri' is missing (need either 'uri' or 'channels')"));
        }
        (Some(u), None) => u,
        (None, Some(chs)) => {
            let mut main = None;
            for (i, v) in chs.into_iter().enumerate() {
                let mut ch = list_elem(&a, "channels", i, v)?;
                let ty = ch.enum_str("channel-type", &["main", "cpr"])?;
                let uri = channel_addr_uri(ch.object("addr")?)?;
                ch.finish()?;
                if ty == "main" {
                    if main.is_some() {
                        return Err(QmpErr::generic("Channel list has more than one main entry"));
                    }
                    main = Some(uri);
                }
            }
            main.ok_or_else(|| QmpErr::generic("Channel list has no main entry"))?
        }
    };
    a.finish()?;
    let _serial = INCOMING_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if shared.lock().incoming_started {
        return Err(QmpErr::generic("The incoming migration has already been started"));
    }
    shared.start_incoming(&uri).map_err(QmpErr::generic)?;
    let mut g = shared.lock();
    g.incoming_started = true;
    if g.incoming_uri.is_none() {
        g.incoming_uri = Some(uri);
    }
    Ok(json!({}))
}

fn cont(shared: &Shared) -> QResult<Value> {
    let (status, rs) = {
        let mut g = shared.lock();
        let (status, rs) = (g.status, g.run_state);
        if status == MigStatus::Failed || rs == RunState::PostMigrate {
            return Err(QmpErr::generic("Cannot continue: the incoming migration failed"));
        }
        if rs == RunState::InMigrate {
            // Like QEMU's autostart: run as soon as the migration completes.
            g.start_paused = false;
        }
        (status, rs)
    };
    match rs {
        RunState::InMigrate if status == MigStatus::Completed => {
            shared.set_run_state(RunState::Running)
        }
        RunState::Paused => shared.set_run_state(RunState::Running),
        _ => {}
    }
    Ok(json!({}))
}

fn stop(shared: &Shared) {
    let rs = {
        let mut g = shared.lock();
        if g.run_state == RunState::InMigrate {
            // Stay paused once the incoming migration completes.
            g.start_paused = true;
        }
        g.run_state
    };
    if rs == RunState::Running {
        shared.set_run_state(RunState::Paused);
    }
}

fn ramblocks(shared: &Shared) -> Value {
    Value::Array(
        shared
            .ram()
            .blocks()
            .iter()
            .map(|b| {
                json!({
                    "name": b.name,
                    "used-length": b.used_length,
                    "page-size": b.page_size,
                    "backing": b.backing_path().map(|p| p.display().to_string()),
                    "received-pages": b.received.count(),
                })
            })
            .collect(),
    )
}

fn block_not_found(name: &str) -> QmpErr {
    QmpErr::generic(format!("RAMBlock '{name}' not found"))
}

async fn ram_digests(shared: &Shared, mut a: Args) -> QResult<Value> {
    let only = a.opt_str("block")?;
    let pages = a.opt_bool("pages")?.unwrap_or(false);
    a.finish()?;
    let blocks = match &only {
        Some(n) => vec![shared.ram().get(n).ok_or_else(|| block_not_found(n))?],
        None => shared.ram().blocks(),
    };
    let blocks = tokio::task::spawn_blocking(move || {
        blocks
            .iter()
            .map(|b| {
                let d = b.page_digests();
                let bytes: Vec<u8> = d.iter().flat_map(|x| x.to_le_bytes()).collect();
                let mut o = json!({
                    "name": b.name,
                    "used-length": b.used_length,
                    "digest": digest::to_hex(&[digest::page_digest(&bytes)]),
                });
                if pages {
                    o["page-digests"] = json!(digest::to_hex(&d));
                }
                o
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| QmpErr::generic(format!("digest computation failed: {e}")))?;
    Ok(json!({ "algorithm": digest::ALGORITHM, "page-size": TARGET_PAGE_SIZE, "blocks": blocks }))
}

async fn dump_ramblock(shared: &Shared, mut a: Args) -> QResult<Value> {
    let name = a.str("block")?;
    let file = a.str("file")?;
    a.finish()?;
    let b = shared.ram().get(&name).ok_or_else(|| block_not_found(&name))?;
    tokio::task::spawn_blocking(move || -> io::Result<u64> {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0u64;
        while off < b.used_length {
            let n = (b.used_length - off).min(buf.len() as u64) as usize;
            b.mapping.read(off as usize, &mut buf[..n]);
            f.write_all(&buf[..n])?;
            off += n as u64;
        }
        f.flush()?;
        Ok(off)
    })
    .await
    .map_err(|e| QmpErr::generic(format!("dump failed: {e}")))?
    .map(|n| json!({ "bytes": n }))
    .map_err(|e| QmpErr::generic(format!("Cannot write RAMBlock '{name}': {e}")))
}

fn query_devices(shared: &Shared) -> Value {
    let g = shared.lock();
    let sections: Vec<Value> = g
        .devices
        .iter()
        .map(|d| {
            json!({
                "section-id": d.section_id,
                "idstr": d.idstr,
                "instance-id": d.instance_id,
                "version-id": d.version_id,
                "size": d.data.len(),
                "stream-offset": d.stream_offset,
                "in-package": d.in_package,
                "vmdesc": d.vmdesc.clone(),
            })
        })
        .collect();
    json!({ "machine": g.stream_machine, "globalstate": g.globalstate, "sections": sections })
}

fn hex(data: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        s.push(H[(b >> 4) as usize] as char);
        s.push(H[(b & 15) as usize] as char);
    }
    s
}

fn device_data(shared: &Shared, mut a: Args) -> QResult<Value> {
    let idstr = a.str("idstr")?;
    let inst = a.opt_u64("instance-id")?;
    a.finish()?;
    let data = {
        let g = shared.lock();
        g.devices
            .iter()
            .find(|d| d.idstr == idstr && inst.is_none_or(|i| u64::from(d.instance_id) == i))
            .map(|d| d.data.clone())
    };
    match data {
        Some(d) => Ok(json!({ "data": hex(&d) })),
        None => Err(QmpErr::generic(match inst {
            Some(i) => format!("Device section '{idstr}' instance {i} not found"),
            None => format!("Device section '{idstr}' not found"),
        })),
    }
}

// ---------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------

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

/// Split complete JSON values off the front of `buf`. Incomplete input stays
/// in `buf`; after a syntax error the rest of that line is discarded.
fn drain_values(buf: &mut Vec<u8>, skip_line: &mut bool, out: &mut Vec<Result<Value, String>>) {
    loop {
        if *skip_line {
            match buf.iter().position(|&b| b == b'\n') {
                Some(p) => {
                    buf.drain(..=p);
                    *skip_line = false;
                }
                None => {
                    buf.clear();
                    return;
                }
            }
        }
        let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
        match it.next() {
            None => {
                buf.clear();
                return;
            }
            Some(Ok(v)) => {
                let off = it.byte_offset();
                buf.drain(..off);
                out.push(Ok(v));
            }
            Some(Err(e)) if e.is_eof() => {
                if buf.len() > MAX_REQUEST {
                    out.push(Err("JSON parse error, request too large".into()));
                    buf.clear();
                    *skip_line = true;
                }
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
                *skip_line = true;
            }
        }
    }
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
            dispatch(&shared, &req.name, req.args).await
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

async fn serve_conn<S: AsyncRead + AsyncWrite + Send + 'static>(shared: Shared, stream: S) {
    let (mut rd, wr) = tokio::io::split(stream);
    let (out, out_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(writer_task(wr, out_rx));
    send(&out, &greeting());
    let session = Arc::new(Session::default());
    let (work_tx, work_rx) = mpsc::unbounded_channel();
    let worker = tokio::spawn(worker_task(shared.clone(), session.clone(), work_rx, out.clone()));

    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut skip_line = false;
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
                    let ret = if !COMMANDS.contains(&req.name.as_str()) {
                        Err(QmpErr::not_found(format!(
                            "The command {} has not been found",
                            req.name
                        )))
                    } else if !OOB_COMMANDS.contains(&req.name.as_str()) {
                        Err(QmpErr::generic(format!(
                            "The command {} does not support OOB",
                            req.name
                        )))
                    } else {
                        Ok(())
                    };
                    match ret {
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
        let mut skip = false;
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

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentiles(&v), json!({"count":100,"p50":50,"p99":99,"max":100}));
        assert_eq!(percentiles(&[7]), json!({"count":1,"p50":7,"p99":7,"max":7}));
    }
}
