//! Accepting incoming connections (`-incoming tcp:…|unix:…`), opening
//! `file:`, `fd:` and `exec:` sources, and handing the
//! main channel to the loader.

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use super::fds::FdError;
use super::session::{Session, Sock};
use super::uri::UriError;
use crate::state::{Capability, MigStatus};

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
    /// `migration_channels_and_transport_compatible()` in
    /// `migration/migration.c`.
    #[error("Migration requires multi-channel URIs (e.g. tcp)")]
    NeedsMultiChannel,
    #[error("Migration requires seekable transport (e.g. file)")]
    NeedsSeekable,
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

/// QEMU's transport check before listening: multifd and postcopy-preempt
/// need a multi-channel transport, mapped-ram a seekable one.
fn check_transport(session: &Session, uri: &IncomingUri) -> Result<(), ListenError> {
    let mapped_ram = session.shared.has(Capability::MappedRam);
    if mapped_ram && !uri.seekable() {
        return Err(ListenError::NeedsSeekable);
    }
    let multi =
        session.shared.has(Capability::Multifd) || session.shared.has(Capability::PostcopyPreempt);
    if multi && !uri.multi_channel(mapped_ram) {
        return Err(ListenError::NeedsMultiChannel);
    }
    Ok(())
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
    let bound = bind(session.clone(), uri)?;
    {
        let mut g = session.shared.lock();
        g.incoming_started = true;
        g.incoming_uri = Some(bound);
    }
    session.shared.set_status(MigStatus::Setup);
    Ok(())
}

/// Bind another listener for the same session (`migrate-recover URI`).
/// The URI as bound: a TCP port 0 becomes the port the kernel chose, as
/// QEMU's `socket-address` reports it.
pub fn bind(session: Arc<Session>, raw: &str) -> Result<String, ListenError> {
    let uri = parse_uri(raw)?;
    check_transport(&session, &uri)?;
    match uri {
        IncomingUri::Defer => Err(ListenError::Defer),
        IncomingUri::File { path, offset } => {
            session.on_file(open_file(&path, offset)?);
            Ok(raw.to_string())
        }
        IncomingUri::Fd(name) => {
            let fd = super::fds::take_fd_param(&name)?;
            check_fd_kind(&session, &fd)?;
            session.on_fd(fd);
            Ok(raw.to_string())
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
            Ok(raw.to_string())
        }
        IncomingUri::Tcp(addr) => {
            let l = TcpListener::bind(&addr)
                .map_err(|source| ListenError::Bind { addr: addr.clone(), source })?;
            let bound = match l.local_addr() {
                Ok(a) => with_port(raw, a.port()),
                Err(_) => raw.to_string(),
            };
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
            Ok(bound)
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
            Ok(raw.to_string())
        }
    }
}

/// `tcp:HOST:0[,OPTS]` with the port the kernel chose; any other URI as is.
fn with_port(raw: &str, port: u16) -> String {
    let Some(rest) = raw.strip_prefix("tcp:") else { return raw.to_string() };
    let (addr, opts) = rest.split_at(rest.find(',').unwrap_or(rest.len()));
    match addr.rsplit_once(':') {
        Some((host, "0")) => format!("tcp:{host}:{port}{opts}"),
        _ => raw.to_string(),
    }
}
