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
use std::time::Duration;

use crate::state::Shared;

mod args;
mod commands;
mod crossmig;
mod fdcmds;
mod fdpass;
mod info;
mod migration;
mod params;
pub mod schema;
mod server;
pub mod types;

pub use args::{QResult, QmpErr};
pub use commands::{version, CommandDef, COMMANDS};
pub(crate) use server::parse_input;
use server::serve_conn;

#[cfg(test)]
mod limit_tests;

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
    /// A TCP socket; `host` has no IPv6 brackets and may be empty (=
    /// loopback).
    Tcp { host: String, port: u16 },
    /// An inherited descriptor (`-chardev socket,fd=N`): a listening socket
    /// with `server`, a connected one without; unix or TCP.
    Fd(i32),
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
        "fd" => {
            let n: i32 = rest
                .parse()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| format!("Unable to parse FD number {rest}"))?;
            QmpEndpoint::Fd(n)
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
    let l = StdUnixListener::bind(path)?;
    // Only this user may connect (connect(2) needs write permission on the
    // socket file): the monitor can stop, quit or redirect the migration.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Bind a `-qmp tcp:` server. Without a host (`tcp::PORT`) it binds the
/// loopback address only (QEMU would bind every address): a monitor is
/// reachable from other machines only when an address is given.
fn bind_tcp(host: &str, port: u16) -> io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind((tcp_host(host), port))
}

fn abstract_addr(name: &str) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

/// Take ownership of inherited descriptor `fd`, which must be a unix or
/// TCP socket (`true`: unix). QEMU's text when it is not a socket.
fn inherited(fd: i32) -> io::Result<(std::os::fd::OwnedFd, bool)> {
    use nix::sys::socket::{getsockname, AddressFamily, SockaddrLike, SockaddrStorage};
    let not_socket = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("File descriptor '{fd}' is not a socket"),
        )
    };
    let addr = getsockname::<SockaddrStorage>(fd).map_err(|_| not_socket())?;
    let unix = match addr.family() {
        Some(AddressFamily::Unix) => true,
        Some(AddressFamily::Inet | AddressFamily::Inet6) => false,
        _ => return Err(not_socket()),
    };
    Ok((crate::mem::adopt_inherited_fd(fd)?, unix))
}

/// The host a `tcp:` endpoint names; loopback when none is given.
fn tcp_host(host: &str) -> &str {
    if host.is_empty() {
        "127.0.0.1"
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
            QmpEndpoint::Tcp { host, port } => Listener::Tcp(bind_tcp(host, *port)?),
            QmpEndpoint::Fd(fd) => match inherited(*fd)? {
                (fd, true) => Listener::Unix(StdUnixListener::from(fd)),
                (fd, false) => Listener::Tcp(std::net::TcpListener::from(fd)),
            },
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
            QmpEndpoint::Fd(fd) => match inherited(*fd)? {
                (fd, true) => Conn::Unix(std::os::unix::net::UnixStream::from(fd)),
                (fd, false) => Conn::Tcp(std::net::TcpStream::from(fd)),
            },
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
                                tokio::spawn(serve_unix(shared.clone(), s));
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
                                tokio::spawn(serve_conn(shared.clone(), s, Default::default()));
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
            Ok(s) => drop(tokio::spawn(serve_unix(shared.clone(), s))),
            Err(e) => tracing::error!("QMP: cannot register connection: {e}"),
        },
        Conn::Tcp(s) => match tokio::net::TcpStream::from_std(s) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                drop(tokio::spawn(serve_conn(shared.clone(), s, Default::default())))
            }
            Err(e) => tracing::error!("QMP: cannot register connection: {e}"),
        },
    }
}

/// A unix connection: descriptors sent with SCM_RIGHTS are kept for
/// `getfd` / `add-fd`.
async fn serve_unix(shared: Shared, s: tokio::net::UnixStream) {
    let fds = fdpass::PassedFds::default();
    serve_conn(shared, fdpass::FdStream::new(s, fds.clone()), fds).await
}

async fn accept_error(e: io::Error) {
    tracing::warn!("QMP accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
