//! Accepting incoming connections (`-incoming tcp:…|unix:…`) and handing the
//! main channel to the loader.

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use super::session::{Session, Sock};
use crate::state::MigStatus;

/// A parsed incoming URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IncomingUri {
    Tcp(String),
    Unix(PathBuf),
    /// A recorded stream file (`file:PATH`): read once, no return path.
    File(PathBuf),
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
    if let Some(p) = uri.strip_prefix("file:") {
        let p = p.split(',').next().unwrap_or("");
        if p.is_empty() {
            return Err("file: URI without a path".into());
        }
        return Ok(IncomingUri::File(PathBuf::from(p)));
    }
    if let Some(p) = uri.strip_prefix("unix:") {
        if p.is_empty() {
            return Err("unix: URI without a path".into());
        }
        return Ok(IncomingUri::Unix(PathBuf::from(p)));
    }
    Err(format!(
        "unknown migration protocol: {uri:?} (rust-dest supports tcp:, unix:, file: and defer)"
    ))
}

/// Bind the listener now (so errors are reported to the caller) and accept
/// connections on a background thread. Marks the incoming migration started
/// (status `setup`).
pub fn start(session: Arc<Session>, uri: &str) -> Result<(), String> {
    {
        let g = session.shared.lock();
        if g.incoming_started {
            return Err("The incoming migration has already been started".into());
        }
    }
    bind(session.clone(), uri)?;
    {
        let mut g = session.shared.lock();
        g.incoming_started = true;
        g.incoming_uri = Some(uri.to_string());
    }
    session.shared.set_status(MigStatus::Setup);
    Ok(())
}

/// Bind another listener for the same session (`migrate-recover URI`).
pub fn bind(session: Arc<Session>, uri: &str) -> Result<(), String> {
    match parse_uri(uri)? {
        IncomingUri::Defer => Err("'defer' cannot be used here".into()),
        IncomingUri::File(p) => {
            let f = std::fs::File::open(&p)
                .map_err(|e| format!("Failed to open file {}: {e}", p.display()))?;
            session.on_file(f);
            Ok(())
        }
        IncomingUri::Tcp(addr) => {
            let l = TcpListener::bind(&addr)
                .map_err(|e| format!("Failed to bind socket {addr}: {e}"))?;
            std::thread::Builder::new()
                .name("incoming-accept".into())
                .spawn(move || {
                    for s in l.incoming() {
                        match s {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                session.on_connection(Sock::Tcp(s));
                            }
                            Err(e) => tracing::warn!("accept: {e}"),
                        }
                    }
                })
                .map_err(|e| e.to_string())?;
            Ok(())
        }
        IncomingUri::Unix(p) => {
            let _ = std::fs::remove_file(&p);
            let l = UnixListener::bind(&p)
                .map_err(|e| format!("Failed to bind socket {}: {e}", p.display()))?;
            std::thread::Builder::new()
                .name("incoming-accept".into())
                .spawn(move || {
                    for s in l.incoming() {
                        match s {
                            Ok(s) => session.on_connection(Sock::Unix(s)),
                            Err(e) => tracing::warn!("accept: {e}"),
                        }
                    }
                })
                .map_err(|e| e.to_string())?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn uris() {
        assert_eq!(
            parse_uri("tcp:127.0.0.1:4444").unwrap(),
            IncomingUri::Tcp("127.0.0.1:4444".into())
        );
        assert_eq!(parse_uri("tcp::4444").unwrap(), IncomingUri::Tcp("0.0.0.0:4444".into()));
        assert_eq!(parse_uri("unix:/tmp/x").unwrap(), IncomingUri::Unix("/tmp/x".into()));
        assert_eq!(parse_uri("defer").unwrap(), IncomingUri::Defer);
        assert!(parse_uri("exec:cat").unwrap_err().contains("unknown migration protocol"));
    }
}
