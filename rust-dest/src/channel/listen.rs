//! Accepting incoming connections (`-incoming tcp:…|unix:…`), opening
//! `file:`, `fd:` and `exec:` sources, and handing the
//! main channel to the loader.

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use super::fds::FdError;
use super::session::{Session, Sock};
use super::uri::{TransportError, UriError};
use crate::state::{ListenAddr, MigStatus};

/// Why an incoming URI could not be listened on. The texts are what
/// `migrate-incoming` / `migrate-recover` report.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{0}")]
    Uri(#[from] UriError),
    #[error("The incoming migration has already been started")]
    AlreadyStarted,
    #[error("'defer' cannot be used here")]
    Defer,
    #[error("Failed to open file {path}: {source}")]
    Open { path: String, source: std::io::Error },
    /// `qio_channel_io_seek()` (QEMU prints the offset as a signed number).
    #[error("Unable to seek to offset {} whence 0 in file: {source}", *.offset as i64)]
    Seek { offset: u64, source: std::io::Error },
    #[error("{0}")]
    Fd(#[from] FdError),
    #[error("Failed to bind socket {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("Failed to spawn exec command {cmd:?}: {source}")]
    Exec { cmd: String, source: std::io::Error },
    #[error("{0}")]
    Transport(#[from] TransportError),
    #[error("fd: migration to a file is not supported. Use file: instead.")]
    FdFile,
    #[error("{0}")]
    Thread(std::io::Error),
}

pub use super::uri::{parse_uri, IncomingUri};

pub use super::file::IncomingFile;

/// Open `file:PATH[,offset=N]` for reading, positioned at the offset.
pub fn open_file(path: &std::path::Path, offset: u64) -> Result<IncomingFile, ListenError> {
    use std::io::{Seek, SeekFrom};
    let p = path.display().to_string();
    let mut file = match super::fds::open_fdset_read(&p) {
        Some(r) => r?,
        None => std::fs::File::open(path)
            .map_err(|source| ListenError::Open { path: p.clone(), source })?,
    };
    if offset != 0 {
        if offset > i64::MAX as u64 {
            let source = std::io::Error::from_raw_os_error(libc::EINVAL);
            return Err(ListenError::Seek { offset, source });
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(|source| ListenError::Seek { offset, source })?;
    }
    Ok(IncomingFile { file, offset, path: path.to_path_buf() })
}

/// `fd:` takes sockets and pipes; any other descriptor (a file) is refused
/// by QEMU 11 and deprecated before (`migration/fd.c`).
fn check_fd_kind(session: &Session, fd: &std::os::fd::OwnedFd) -> Result<(), ListenError> {
    use crate::compat::{QemuVersion, Rule};
    use nix::sys::stat::{fstat, SFlag};
    use std::os::fd::AsRawFd;
    let Ok(st) = fstat(fd.as_raw_fd()) else { return Ok(()) };
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind == SFlag::S_IFSOCK || kind == SFlag::S_IFIFO {
        return Ok(());
    }
    let compat = session.compat.get().copied().unwrap_or(QemuVersion::NEWEST);
    if compat.has(Rule::FdFileRefused) {
        return Err(ListenError::FdFile);
    }
    tracing::warn!("fd: migration to a file is deprecated. Use file: instead.");
    Ok(())
}

/// Bind the listener now (so errors are reported to the caller) and accept
/// connections on a background thread. Marks the incoming migration started
/// (status `setup`); returns where it listens.
pub fn start(session: Arc<Session>, uri: &str) -> Result<ListenAddr, ListenError> {
    {
        let g = session.shared.lock();
        if g.incoming_started {
            return Err(ListenError::AlreadyStarted);
        }
    }
    let bound = bind(session.clone(), uri)?;
    {
        let mut g = session.shared.lock();
        g.incoming_started = true;
        g.incoming = Some(bound.clone());
    }
    session.shared.set_status(MigStatus::Setup);
    Ok(bound)
}

/// Bind a listener for the session (also another one, for
/// `migrate-recover URI`); returns where it listens.
pub fn bind(session: Arc<Session>, raw: &str) -> Result<ListenAddr, ListenError> {
    let uri = parse_uri(raw)?;
    let caps = session.shared.lock().capabilities;
    uri.check_transport(&caps)?;
    match uri {
        IncomingUri::Defer => Err(ListenError::Defer),
        IncomingUri::File { path, offset } => {
            session.on_file(open_file(&path, offset)?);
            Ok(ListenAddr::NoSocket)
        }
        IncomingUri::Fd(name) => {
            let fd = super::fds::take_fd_param(&name)?;
            check_fd_kind(&session, &fd)?;
            session.on_fd(fd);
            Ok(ListenAddr::NoSocket)
        }
        IncomingUri::Exec(cmd) => {
            let child = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&cmd)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .map_err(|source| ListenError::Exec { cmd: cmd.clone(), source })?;
            session.on_exec(cmd, child);
            Ok(ListenAddr::NoSocket)
        }
        IncomingUri::Tcp(addr) => {
            let l = TcpListener::bind(&addr)
                .map_err(|source| ListenError::Bind { addr: addr.clone(), source })?;
            let bound = l
                .local_addr()
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
            Ok(ListenAddr::Inet(bound))
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
            Ok(ListenAddr::Unix(p))
        }
    }
}
