//! The return path: PONG on PING, and `SHUT(1)` before closing after a
//! failure (rust-dest, with a real QEMU destination as the oracle).

use harness::vm::dest::DestKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dest::{names_offset, Dest};
use crate::record::{recorded, WAIT};

/// What came back on the return path and how the migration ended.
#[derive(Debug)]
struct RpOutcome {
    pong: Vec<u8>,
    /// Everything after the PONG until the destination closed the socket.
    after: Vec<u8>,
    status: String,
    desc: String,
    log: String,
}

/// Open the return path (OPEN_RETURN_PATH, PING 7) right after the header,
/// check the PONG, then send `damage` (and shut down the write side if
/// `close`). Returns the offset where the damage starts and the outcome.
async fn rp_replay(kind: DestKind, name: &str, damage: &[u8], close: bool) -> (u64, RpOutcome) {
    let r = recorded();
    let h = r.layout.header_end as usize;
    let mut d = Dest::start(kind, name).await;
    let mut s = d.connect().await;
    let mut b = r.data[..h].to_vec();
    b.extend_from_slice(&[0x08, 0x00, 0x01, 0x00, 0x00]); // OPEN_RETURN_PATH
    b.extend_from_slice(&[0x08, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x07]); // PING 7
    s.write_all(&b).await.unwrap();
    let mut pong = vec![0u8; 8];
    let got = tokio::time::timeout(WAIT, s.read_exact(&mut pong)).await;
    assert!(
        matches!(got, Ok(Ok(_))),
        "{name}: no PONG from {kind} within {WAIT:?}: {got:?}\nlog:\n{}",
        d.log()
    );
    let bad_at = b.len() as u64;
    s.write_all(damage).await.unwrap();
    if close {
        s.shutdown().await.unwrap();
    }
    let mut after = Vec::new();
    let rd = tokio::time::timeout(WAIT, s.read_to_end(&mut after)).await;
    assert!(
        rd.is_ok(),
        "HANG: {name}: {kind} did not close the socket within {WAIT:?}; got {after:02x?}\nlog:\n{}",
        d.log()
    );
    let (status, desc, _) = d
        .wait_end(WAIT)
        .await
        .unwrap_or_else(|| panic!("HANG: {name}: {kind} did not fail\nlog:\n{}", d.log()));
    if kind == DestKind::Rust {
        d.check_alive(name).await;
    }
    let log = d.log();
    drop(s);
    d.finish().await;
    (bad_at, RpOutcome { pong, after, status, desc, log })
}

const PONG_7: [u8; 8] = [0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x07];
const SHUT_1: [u8; 8] = [0x00, 0x01, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01];

/// With the return path open the destination answers PING with PONG, and
/// on a failure sends SHUT(1) before closing (damage: an unknown record
/// type, socket kept open).
#[tokio::test]
async fn shut_1_when_the_return_path_is_open() {
    let (bad_at, o) = rp_replay(DestKind::Rust, "rp-shut", &[0x09, 0, 0, 0, 0], false).await;
    assert_eq!(o.pong, PONG_7, "PONG 7");
    assert_eq!(o.after, SHUT_1, "exactly SHUT(1), then EOF");
    assert_eq!(o.status, "failed");
    assert!(
        o.desc.contains("unknown section type 0x09") && names_offset(&o.desc, bad_at),
        "{}",
        o.desc
    );
    eprintln!("[rp-shut] rust-dest: PONG 7, SHUT(1), failed: {}", o.desc);
    // the oracle: what QEMU sends back in the same situation
    let (_, q) = rp_replay(DestKind::Qemu, "rp-shut", &[0x09, 0, 0, 0, 0], false).await;
    assert_eq!(q.pong, PONG_7, "QEMU PONG");
    assert!(q.status == "failed" || q.status == "exited", "QEMU: {q:?}");
    assert_eq!(q.after, SHUT_1, "QEMU sends SHUT(1) too");
    eprintln!(
        "[rp-shut] QEMU oracle: return path after PONG {:02x?}, {} ({}); QEMU log: {:?}",
        q.after,
        q.status,
        q.desc,
        q.log.lines().collect::<Vec<_>>()
    );
}

/// Same with a truncation: the source shuts down its side inside a command;
/// the return path still carries SHUT(1).
#[tokio::test]
async fn shut_1_after_a_truncation_with_the_return_path_open() {
    let (bad_at, o) =
        rp_replay(DestKind::Rust, "rp-trunc", &[0x08, 0x00, 0x02, 0x00, 0x04, 0x00], true).await;
    assert_eq!(o.pong, PONG_7, "PONG 7");
    assert_eq!(o.after, SHUT_1, "exactly SHUT(1), then EOF");
    assert_eq!(o.status, "failed");
    assert!(o.desc.contains("truncated") && names_offset(&o.desc, bad_at), "{}", o.desc);
    eprintln!("[rp-trunc] rust-dest: PONG 7, SHUT(1), failed: {}", o.desc);
}
