//! Limits of the QMP server: who may connect (the unix socket's mode, the
//! address a `tcp:` server binds without a host) and how large a request
//! may grow before it is refused.

use std::os::unix::fs::PermissionsExt;

use super::{bind_tcp, bind_unix, parse_input};

/// The socket file is created with mode 0600 whatever the umask (QEMU leaves
/// it to the umask: 0755 with the usual 022).
#[test]
fn unix_socket_is_created_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let l = bind_unix(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    // Still usable by its owner.
    let c = std::os::unix::net::UnixStream::connect(&path).unwrap();
    l.accept().unwrap();
    drop(c);
}

/// `-qmp tcp::PORT,server=on` binds loopback only; an address given is
/// bound as given.
#[test]
fn tcp_without_a_host_binds_loopback() {
    let l = bind_tcp("", 0).unwrap();
    let a = l.local_addr().unwrap();
    assert!(a.ip().is_loopback(), "bound {a}");
    let l = bind_tcp("0.0.0.0", 0).unwrap();
    assert!(l.local_addr().unwrap().ip().is_unspecified());
}

/// A request that grows past 64 MiB without ending is refused with an
/// error, its buffer freed, and the next line is read as a new request.
/// It arrives in 64 KiB reads as from a socket: each read is scanned once
/// (the parser is not rerun on the whole request per read, which took
/// minutes of CPU before).
#[test]
fn a_request_larger_than_the_limit_is_refused() {
    let mut big = b"{\"execute\": \"query-status\", \"arguments\": {\"a\": \"".to_vec();
    big.resize(big.len() + (65 << 20), b'A');
    big.extend_from_slice(b"\"}}\n{\"execute\": \"query-status\"}\n");
    let mut buf = Vec::new();
    let (mut skip, mut out) = (super::server::InputState::default(), Vec::new());
    for part in big.chunks(64 << 10) {
        buf.extend_from_slice(part);
        super::server::drain_values_for_tests(&mut buf, &mut skip, &mut out);
        assert!(buf.len() <= (64 << 20) + (64 << 10), "buffer grew to {}", buf.len());
    }
    assert_eq!(
        out.len(),
        2,
        "{:?}",
        out.iter().map(|r| r.as_ref().map(|_| ())).collect::<Vec<_>>()
    );
    assert_eq!(out[0].as_ref().unwrap_err(), "JSON parse error, request too large");
    assert!(out[1].is_ok());
    assert_eq!(parse_input(b"{\"execute\": \"query-status\"}\n", 3), 1);
}

/// Braces and quotes inside strings, escapes, scalars and several values in
/// one read: split at every byte, the same values come out.
#[test]
fn values_split_at_any_byte_come_out_whole() {
    let input: &[u8] = b"{\"execute\": \"x\", \"arguments\": {\"a\": \"}\\\"]{\"}}\n 12 \"s\" [1, {\"b\": []}]{\"execute\": \"y\"}\n";
    let whole = {
        let (mut buf, mut st, mut out) =
            (input.to_vec(), super::server::InputState::default(), vec![]);
        super::server::drain_values_for_tests(&mut buf, &mut st, &mut out);
        out
    };
    assert_eq!(whole.len(), 5, "{whole:?}");
    for chunk in 1..input.len() {
        let (mut buf, mut st, mut out) = (Vec::new(), super::server::InputState::default(), vec![]);
        for part in input.chunks(chunk) {
            buf.extend_from_slice(part);
            super::server::drain_values_for_tests(&mut buf, &mut st, &mut out);
        }
        assert_eq!(out, whole, "reads of {chunk} byte(s)");
    }
    assert_eq!(parse_input(input, 1), 2);
}
