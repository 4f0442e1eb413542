//! Incoming migration URIs as QEMU parses them (`migrate_uri_parse()` in
//! `migration/migration.c`, `file_parse_offset()` in `migration/file.c`):
//! `tcp:`, `unix:`, `file:PATH[,offset=N]`, `fd:NAME`, `exec:COMMAND` and
//! `defer`. Pure parsing, no I/O: [`super::listen`] opens what is parsed.

use std::path::PathBuf;

use crate::state::{Capabilities, Capability};

/// Why a URI could not be parsed. The texts are QEMU's where QEMU has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("invalid tcp address {0:?} (expected HOST:PORT)")]
    TcpAddress(String),
    #[error("file: URI without a path")]
    FileWithoutPath,
    #[error("unix: URI without a path")]
    UnixWithoutPath,
    #[error("fd: URI without a descriptor name")]
    FdWithoutName,
    /// `file_parse_offset()`: the text after `,offset=` and errno's text
    /// (`Invalid argument` or `Numerical result out of range`).
    #[error("file URI has bad offset {text}: {}", .why.text())]
    BadOffset { text: String, why: SizeError },
    #[error("unknown migration protocol: {0}")]
    UnknownProtocol(String),
}

/// Why a size (`qemu_strtosz()`) is not one: QEMU's errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeError {
    /// EINVAL.
    Invalid,
    /// ERANGE (negative, or above 2^64 - 1).
    Range,
}

impl SizeError {
    pub fn text(self) -> &'static str {
        match self {
            SizeError::Invalid => "Invalid argument",
            SizeError::Range => "Numerical result out of range",
        }
    }
}

/// A parsed incoming URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IncomingUri {
    Tcp(String),
    Unix(PathBuf),
    /// `file:PATH[,offset=N]`: the stream starts `offset` bytes into the file
    /// (a path under `/dev/fdset/` names a descriptor set of `add-fd`).
    File {
        path: PathBuf,
        offset: u64,
    },
    /// `fd:NAME`: a descriptor passed with `getfd`, or (a name starting
    /// with a digit) a descriptor number inherited by the process.
    Fd(String),
    /// `exec:COMMAND`: run through `/bin/sh -c`; its stdout is the stream,
    /// its stdin the return path.
    Exec(String),
    Defer,
}

impl IncomingUri {
    /// A transport that carries more than one channel (QEMU's
    /// `transport_supports_multi_channels()`; `file:` only with mapped-ram).
    pub fn multi_channel(&self, mapped_ram: bool) -> bool {
        match self {
            IncomingUri::Tcp(_) | IncomingUri::Unix(_) => true,
            IncomingUri::File { .. } => mapped_ram,
            _ => false,
        }
    }

    /// A transport that can seek (QEMU's `transport_supports_seeking()`).
    pub fn seekable(&self) -> bool {
        matches!(self, IncomingUri::File { .. })
    }

    /// Whether this transport can carry a migration with these
    /// capabilities, checked before anything listens
    /// (`migration_channels_and_transport_compatible()` in
    /// `migration/migration.c`).
    pub fn check_transport(&self, caps: &Capabilities) -> Result<(), TransportError> {
        let mapped_ram = caps.get(Capability::MappedRam);
        if mapped_ram && !self.seekable() {
            return Err(TransportError::Seekable);
        }
        let multi = caps.get(Capability::Multifd) || caps.get(Capability::PostcopyPreempt);
        if multi && !self.multi_channel(mapped_ram) {
            return Err(TransportError::MultiChannel);
        }
        Ok(())
    }
}

/// An incoming URI the capabilities rule out (QEMU's texts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// `mapped-ram` needs a file.
    #[error("Migration requires seekable transport (e.g. file)")]
    Seekable,
    /// `multifd` and `postcopy-preempt` need several connections (tcp:,
    /// unix:) or, with mapped-ram, a file.
    #[error("Migration requires multi-channel URIs (e.g. tcp)")]
    MultiChannel,
}

pub fn parse_uri(uri: &str) -> Result<IncomingUri, UriError> {
    if uri == "defer" {
        return Ok(IncomingUri::Defer);
    }
    if let Some(rest) = uri.strip_prefix("tcp:") {
        let addr = rest.split(',').next().unwrap_or("");
        let addr = if addr.starts_with(':') { format!("0.0.0.0{addr}") } else { addr.to_string() };
        if !addr.contains(':') {
            return Err(UriError::TcpAddress(rest.to_string()));
        }
        return Ok(IncomingUri::Tcp(addr));
    }
    if let Some(spec) = uri.strip_prefix("file:") {
        let (path, offset) = match spec.find(",offset=") {
            Some(i) => {
                let text = &spec[i + ",offset=".len()..];
                let off = parse_size(text)
                    .map_err(|why| UriError::BadOffset { text: text.to_string(), why })?;
                (&spec[..i], off)
            }
            None => (spec, 0),
        };
        if path.is_empty() {
            return Err(UriError::FileWithoutPath);
        }
        return Ok(IncomingUri::File { path: PathBuf::from(path), offset });
    }
    if let Some(p) = uri.strip_prefix("unix:") {
        if p.is_empty() {
            return Err(UriError::UnixWithoutPath);
        }
        return Ok(IncomingUri::Unix(PathBuf::from(p)));
    }
    if let Some(name) = uri.strip_prefix("fd:") {
        if name.is_empty() {
            return Err(UriError::FdWithoutName);
        }
        return Ok(IncomingUri::Fd(name.to_string()));
    }
    if let Some(cmd) = uri.strip_prefix("exec:") {
        return Ok(IncomingUri::Exec(cmd.to_string()));
    }
    Err(UriError::UnknownProtocol(uri.to_string()))
}

/// A size as QEMU's `qemu_strtosz()` reads it (checked against QEMU 10.0's
/// `-incoming file:…,offset=`): optional leading blanks, a decimal number
/// (a fraction only with a unit suffix) or a `0x` hexadecimal one (no
/// suffix), an optional suffix `B K M G T P E` (either case, powers of
/// 1024); nothing may follow. Negative numbers and values above 2^64 - 1
/// are out of range.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let s = text.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    if s.starts_with('-') {
        return Err(SizeError::Range);
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SizeError::Invalid);
        }
        return u64::from_str_radix(hex, 16).map_err(|_| SizeError::Range);
    }
    let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
    if int_len == 0 {
        return Err(SizeError::Invalid);
    }
    let (int, rest) = s.split_at(int_len);
    let (frac, rest) = match rest.strip_prefix('.') {
        Some(r) => {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            (Some(&r[..n]), &r[n..])
        }
        None => (None, rest),
    };
    let shift = match rest {
        "" | "B" | "b" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        "P" | "p" => 50,
        "E" | "e" => 60,
        _ => return Err(SizeError::Invalid),
    };
    if frac.is_some() && shift == 0 {
        return Err(SizeError::Invalid);
    }
    let int: u64 = int.parse().map_err(|_| SizeError::Range)?;
    let whole = int.checked_mul(1u64 << shift).ok_or(SizeError::Range)?;
    let Some(frac) = frac.filter(|f| !f.is_empty()) else { return Ok(whole) };
    let f: f64 = format!("0.{frac}").parse().map_err(|_| SizeError::Invalid)?;
    let part = (f * (1u64 << shift) as f64) as u64;
    whole.checked_add(part).ok_or(SizeError::Range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_the_capabilities_allow() {
        let check = |c: &Capabilities, uri: &str| parse_uri(uri).unwrap().check_transport(c);
        let mut c = Capabilities::default();
        c.set(Capability::MappedRam, true);
        assert_eq!(check(&c, "file:/x"), Ok(()));
        assert_eq!(check(&c, "tcp:1.2.3.4:5"), Err(TransportError::Seekable));
        c.set(Capability::Multifd, true);
        assert_eq!(check(&c, "file:/x,offset=4096"), Ok(()));
        c.set(Capability::MappedRam, false);
        assert_eq!(check(&c, "file:/x"), Err(TransportError::MultiChannel));
        assert_eq!(check(&c, "unix:/s"), Ok(()));
        assert_eq!(check(&c, "tcp:1.2.3.4:5"), Ok(()));
        assert_eq!(check(&c, "exec:cat"), Err(TransportError::MultiChannel));
        assert_eq!(check(&c, "fd:mig"), Err(TransportError::MultiChannel));
        c.set(Capability::Multifd, false);
        c.set(Capability::PostcopyPreempt, true);
        assert_eq!(check(&c, "exec:cat"), Err(TransportError::MultiChannel));
        assert_eq!(check(&Capabilities::default(), "exec:cat"), Ok(()));
        assert_eq!(
            TransportError::Seekable.to_string(),
            "Migration requires seekable transport (e.g. file)"
        );
    }

    #[test]
    fn uris() {
        assert_eq!(
            parse_uri("tcp:127.0.0.1:4444").unwrap(),
            IncomingUri::Tcp("127.0.0.1:4444".into())
        );
        assert_eq!(parse_uri("tcp::4444").unwrap(), IncomingUri::Tcp("0.0.0.0:4444".into()));
        assert_eq!(parse_uri("unix:/tmp/x").unwrap(), IncomingUri::Unix("/tmp/x".into()));
        assert_eq!(parse_uri("defer").unwrap(), IncomingUri::Defer);
        assert_eq!(parse_uri("exec:cat f").unwrap(), IncomingUri::Exec("cat f".into()));
        assert_eq!(parse_uri("fd:mig").unwrap(), IncomingUri::Fd("mig".into()));
        assert_eq!(parse_uri("fd:"), Err(UriError::FdWithoutName));
        assert_eq!(
            parse_uri("rdma:1.2.3.4:5").unwrap_err().to_string(),
            "unknown migration protocol: rdma:1.2.3.4:5"
        );
    }

    #[test]
    fn file_offsets() {
        let f = |u: &str| parse_uri(u);
        assert_eq!(f("file:/a").unwrap(), IncomingUri::File { path: "/a".into(), offset: 0 });
        assert_eq!(
            f("file:/a,offset=0x1000").unwrap(),
            IncomingUri::File { path: "/a".into(), offset: 4096 }
        );
        assert_eq!(
            f("file:/a,b,offset=1.5K").unwrap(),
            IncomingUri::File { path: "/a,b".into(), offset: 1536 }
        );
        assert_eq!(f("file:,offset=1"), Err(UriError::FileWithoutPath));
        // Texts as QEMU 10.0 prints them.
        for (o, why) in [
            ("abc", "Invalid argument"),
            ("1.5", "Invalid argument"),
            ("", "Invalid argument"),
            ("0x10K", "Invalid argument"),
            ("-1", "Numerical result out of range"),
            ("16E", "Numerical result out of range"),
            ("99999999999999999999", "Numerical result out of range"),
        ] {
            assert_eq!(
                f(&format!("file:/a,offset={o}")).unwrap_err().to_string(),
                format!("file URI has bad offset {o}: {why}")
            );
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size(" 12"), Ok(12));
        assert_eq!(parse_size("12B"), Ok(12));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("8E"), Ok(8 << 60));
        assert_eq!(parse_size("0.5M"), Ok(512 << 10));
        assert_eq!(parse_size("1x"), Err(SizeError::Invalid));
        assert_eq!(parse_size("0x"), Err(SizeError::Invalid));
    }
}
