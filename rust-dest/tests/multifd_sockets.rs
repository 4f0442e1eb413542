//! Multifd over real sockets, in process: a session listening on a unix
//! socket gets the recorded QEMU multifd connections (wire/tests/streams) in
//! any order and classifies them by their first bytes; a connection with an
//! unknown magic fails the migration.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_dest::channel::{listen, Session};
use rust_dest::load::{Config, Dest};
use rust_dest::postcopy::{Pattern, VcpuConfig};
use rust_dest::ram::RamTable;
use rust_dest::state::{Capability, MigStatus, Shared};
use serde_json::Value;

fn streams() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../wire/tests/streams")
}

/// A recorded connection: its role (`main`, `multifd`) and bytes.
type Conn = (String, Vec<u8>);

/// The recording's facts and connections, in accept order.
fn recording(base: &str) -> Option<(Value, Vec<Conn>)> {
    let facts: Value =
        serde_json::from_slice(&std::fs::read(streams().join(format!("{base}.json"))).ok()?)
            .ok()?;
    let mut conns = Vec::new();
    for c in facts["channels"].as_array()? {
        let b = std::fs::read(streams().join(c["file"].as_str()?)).ok()?;
        conns.push((c["role"].as_str()?.to_string(), b));
    }
    Some((facts, conns))
}

struct Dst {
    shared: Shared,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

fn start(channels: u64, compression: &str) -> Dst {
    let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
    {
        let mut g = shared.lock();
        g.capabilities.set(Capability::Multifd, true);
        g.parameters.insert("multifd-channels".into(), channels.into());
        g.parameters.insert("multifd-compression".into(), compression.into());
    }
    let cfg = Config {
        vcpu: VcpuConfig { pattern: Pattern::None, threads: 1, rate: 0, range: None },
        ..Config::default()
    };
    let session = Session::new(shared.clone(), Dest::new(cfg));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mig.sock");
    listen::start(session, &format!("unix:{}", path.display())).unwrap();
    Dst { shared, path, _dir: dir }
}

fn wait_terminal(shared: &Shared) -> MigStatus {
    let t = Instant::now();
    loop {
        let st = shared.lock().status;
        if st.is_terminal() || t.elapsed() > Duration::from_secs(20) {
            return st;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connect every connection first (in `order`), then write each in full
/// from its own thread and close it.
fn send(d: &Dst, conns: &[Conn], order: &[usize]) -> Vec<UnixStream> {
    let socks: Vec<UnixStream> =
        order.iter().map(|_| UnixStream::connect(&d.path).unwrap()).collect();
    let mut keep = Vec::new();
    let threads: Vec<_> = order
        .iter()
        .zip(socks)
        .map(|(&i, s)| {
            keep.push(s.try_clone().unwrap());
            let b = conns[i].1.clone();
            std::thread::spawn(move || {
                let mut s = s;
                let _ = s.write_all(&b);
                let _ = s.shutdown(std::net::Shutdown::Write);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    keep
}

#[test]
fn recorded_multifd_connections_in_any_order_complete() {
    for base in ["qemu-10.0-multifd2", "qemu-7.2-multifd2", "qemu-10.0-multifd2-zstd"] {
        let Some((facts, conns)) = recording(base) else { continue };
        let comp = facts["parameters"]["multifd-compression"].as_str().unwrap().to_string();
        // Multifd channels before the main channel, and the recorded order.
        for order in [vec![2, 1, 0], vec![0, 1, 2]] {
            let d = start(2, &comp);
            let _keep = send(&d, &conns, &order);
            let st = wait_terminal(&d.shared);
            let g = d.shared.lock();
            assert_eq!(st, MigStatus::Completed, "{base} {order:?}: {:?}", g.error_desc);
            assert_eq!(g.multifd_channels.len(), 2, "{base}");
            drop(g);
            let mem0 = d.shared.ram().get("mem0").unwrap().read_all();
            let nonzero = facts["mem0_nonzero_pages_crc32"].as_object().unwrap();
            let nz = mem0.chunks(4096).filter(|p| p.iter().any(|&b| b != 0)).count();
            assert_eq!(nz, nonzero.len(), "{base}: non-zero pages of mem0");
        }
    }
}

#[test]
fn unknown_channel_magic_fails_the_migration() {
    let Some((_, conns)) = recording("qemu-10.0-multifd2") else { return };
    let d = start(2, "none");
    let mut bad = conns.clone();
    bad[1].1[..4].copy_from_slice(b"XXXX");
    let _keep = send(&d, &bad, &[0, 1, 2]);
    assert_eq!(wait_terminal(&d.shared), MigStatus::Failed);
    let desc = d.shared.lock().error_desc.clone().unwrap();
    assert!(desc.contains("unknown channel magic 0x58585858"), "{desc}");
}
