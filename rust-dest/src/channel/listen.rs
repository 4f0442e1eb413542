//! Accepting incoming connections (`-incoming tcp:…|unix:…`) and handing the
//! main channel to the loader.

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use super::session::{Session, Sock};
use crate::state::MigStatus;

/// Why an incoming URI could not be listened on. The texts are what
/// `migrate-incoming` / `migrate-recover` report.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("invalid tcp address {0:?} (expected HOST:PORT)")]
    TcpAddress(String),
    #[error("file: URI without a path")]
    FileWithoutPath,
    #[error("unix: URI without a path")]
    UnixWithoutPath,
    #[error("unknown migration protocol: {0:?} (rust-dest supports tcp:, unix:, file: and defer)")]
    UnknownProtocol(String),
    #[error("The incoming migration has already been started")]
    AlreadyStarted,
    #[error("'defer' cannot be used here")]
    Defer,
    #[error("Failed to open file {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("Failed to bind socket {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("{0}")]
    Thread(std::io::Error),
}

/// A parsed incoming URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IncomingUri {
    Tcp(String),
    Unix(PathBuf),
    /// A recorded stream file (`file:PATH`): read once, no return path.
    File(PathBuf),
    Defer,
}

pub fn parse_uri(uri: &str) -> Result<IncomingUri, ListenError> {
    if uri == "defer" {
        return Ok(IncomingUri::Defer);
    }
    if let Some(rest) = uri.strip_prefix("tcp:") {
        let addr = rest.split(',').next().unwrap_or("");
        let addr = if addr.starts_with(':') { format!("0.0.0.0{addr}") } else { addr.to_string() };
        if !addr.contains(':') {
            return Err(ListenError::TcpAddress(rest.to_string()));
        }
        return Ok(IncomingUri::Tcp(addr));
    }
    if let Some(p) = uri.strip_prefix("file:") {
        let p = p.split(',').next().unwrap_or("");
        if p.is_empty() {
            return Err(ListenError::FileWithoutPath);
        }
        return Ok(IncomingUri::File(PathBuf::from(p)));
    }
    if let Some(p) = uri.strip_prefix("unix:") {
        if p.is_empty() {
            return Err(ListenError::UnixWithoutPath);
        }
        return Ok(IncomingUri::Unix(PathBuf::from(p)));
    }
    Err(ListenError::UnknownProtocol(uri.to_string()))
}

/// Bind the listener now (so errors are reported to the caller) and accept
/// connections on a background thread. Marks the incoming migration started
/// (status `setup`).
pub fn start(session: Arc<Session>, uri: &str) -> Result<(), ListenError> {
    {
        let g = session.shared.lock();
        if g.incoming_started {
            return Err(ListenError::AlreadyStarted);
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
pub fn bind(session: Arc<Session>, uri: &str) -> Result<(), ListenError> {
    match parse_uri(uri)? {
        IncomingUri::Defer => Err(ListenError::Defer),
        IncomingUri::File(p) => {
            let f = std::fs::File::open(&p)
                .map_err(|source| ListenError::Open { path: p.display().to_string(), source })?;
            session.on_file(f);
            Ok(())
        }
        IncomingUri::Tcp(addr) => {
            let l = TcpListener::bind(&addr)
                .map_err(|source| ListenError::Bind { addr: addr.clone(), source })?;
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
                .map_err(ListenError::Thread)?;
            Ok(())
        }
        IncomingUri::Unix(p) => {
            let _ = std::fs::remove_file(&p);
            let l = UnixListener::bind(&p)
                .map_err(|source| ListenError::Bind { addr: p.display().to_string(), source })?;
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
                .map_err(ListenError::Thread)?;
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
        assert!(matches!(parse_uri("exec:cat"), Err(ListenError::UnknownProtocol(_))));
        assert!(parse_uri("exec:cat")
            .unwrap_err()
            .to_string()
            .contains("unknown migration protocol"));
    }
}
