//! Accepting incoming connections (`-incoming tcp:…|unix:…`) and handing the
//! main channel to the loader.

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use crate::incoming::{Config, Loader};
use crate::state::{MigStatus, Shared};

/// A parsed incoming URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IncomingUri {
    Tcp(String),
    Unix(PathBuf),
    Defer,
}

pub fn parse_uri(uri: &str) -> Result<IncomingUri, String> {
    if uri == "defer" {
        return Ok(IncomingUri::Defer);
    }
    if let Some(rest) = uri.strip_prefix("tcp:") {
        let addr = rest.split(',').next().unwrap_or("");
        let addr = if addr.starts_with(':') { format!("0.0.0.0{addr}") } else { addr.to_string() };
        if !addr.contains(':') {
            return Err(format!("invalid tcp address {rest:?} (expected HOST:PORT)"));
        }
        return Ok(IncomingUri::Tcp(addr));
    }
    if let Some(p) = uri.strip_prefix("unix:") {
        if p.is_empty() {
            return Err("unix: URI without a path".into());
        }
        return Ok(IncomingUri::Unix(PathBuf::from(p)));
    }
    Err(format!("unknown migration protocol: {uri:?} (rust-dest supports tcp:, unix: and defer)"))
}

/// Bind the listener now (so errors are reported to the caller) and accept
/// connections on a background thread.
pub fn start(shared: Shared, cfg: Arc<Config>, uri: &str) -> Result<(), String> {
    let u = parse_uri(uri)?;
    {
        let g = shared.lock();
        if g.incoming_started {
            return Err("The incoming migration has already been started".into());
        }
    }
    match u {
        IncomingUri::Defer => return Err("'defer' cannot be used with migrate-incoming".into()),
        IncomingUri::Tcp(addr) => {
            let l = TcpListener::bind(&addr).map_err(|e| format!("Failed to bind socket {addr}: {e}"))?;
            mark_started(&shared, uri);
            let sh = shared.clone();
            std::thread::Builder::new()
                .name("incoming-accept".into())
                .spawn(move || accept_tcp(sh, cfg, l))
                .map_err(|e| e.to_string())?;
        }
        IncomingUri::Unix(p) => {
            let _ = std::fs::remove_file(&p);
            let l = UnixListener::bind(&p).map_err(|e| format!("Failed to bind socket {}: {e}", p.display()))?;
            mark_started(&shared, uri);
            let sh = shared.clone();
            std::thread::Builder::new()
                .name("incoming-accept".into())
                .spawn(move || accept_unix(sh, cfg, l, p))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn mark_started(shared: &Shared, uri: &str) {
    {
        let mut g = shared.lock();
        g.incoming_started = true;
        g.incoming_uri = Some(uri.to_string());
    }
    shared.set_status(MigStatus::Setup);
}

fn accept_tcp(shared: Shared, cfg: Arc<Config>, l: TcpListener) {
    let mut main_taken = false;
    for s in l.incoming() {
        match s {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                if main_taken {
                    tracing::warn!("extra incoming connection from {:?} ignored (no multifd/preempt configured)", s.peer_addr());
                    continue;
                }
                main_taken = true;
                let w = match s.try_clone() {
                    Ok(w) => w,
                    Err(e) => {
                        shared.fail(format!("cannot clone the main channel socket: {e}"));
                        continue;
                    }
                };
                let sh = shared.clone();
                let c = (*cfg).clone();
                let _ = std::thread::Builder::new()
                    .name("incoming-main".into())
                    .spawn(move || Loader::new(sh, c, Box::new(w)).run(Box::new(s)));
            }
            Err(e) => tracing::warn!("accept: {e}"),
        }
    }
}

fn accept_unix(shared: Shared, cfg: Arc<Config>, l: UnixListener, path: PathBuf) {
    let mut main_taken = false;
    for s in l.incoming() {
        match s {
            Ok(s) => {
                if main_taken {
                    tracing::warn!("extra incoming connection on {} ignored", path.display());
                    continue;
                }
                main_taken = true;
                // QEMU removes nothing here; the socket file stays until exit.
                let w = match s.try_clone() {
                    Ok(w) => w,
                    Err(e) => {
                        shared.fail(format!("cannot clone the main channel socket: {e}"));
                        continue;
                    }
                };
                let sh = shared.clone();
                let c = (*cfg).clone();
                let _ = std::thread::Builder::new()
                    .name("incoming-main".into())
                    .spawn(move || Loader::new(sh, c, Box::new(w)).run(Box::new(s)));
            }
            Err(e) => tracing::warn!("accept: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn uris() {
        assert_eq!(parse_uri("tcp:127.0.0.1:4444").unwrap(), IncomingUri::Tcp("127.0.0.1:4444".into()));
        assert_eq!(parse_uri("tcp::4444").unwrap(), IncomingUri::Tcp("0.0.0.0:4444".into()));
        assert_eq!(parse_uri("unix:/tmp/x").unwrap(), IncomingUri::Unix("/tmp/x".into()));
        assert_eq!(parse_uri("defer").unwrap(), IncomingUri::Defer);
        assert!(parse_uri("exec:cat").unwrap_err().contains("unknown migration protocol"));
    }
}
