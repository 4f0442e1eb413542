//! A multifd channel cut mid-packet (the harness's proxy resets that one
//! connection) fails a precopy migration cleanly, on rust-dest as on a QEMU
//! 10.0 destination: both end `failed`, the source too, and rust-dest's
//! `error-desc` names the channel.
//!
//! Run: `cargo build --workspace --bins && cargo test -p harness --test multifd_faults -- --nocapture`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use harness::drive::proxy::{Proxy, ProxyPlan};
use harness::images::Workload;
use harness::qmp::MigrationStatus;
use harness::vm::dest::{start_dest, DestKind};
use harness::vm::procs::{free_tcp_port, PathGuard};
use harness::vm::qemu::{QemuBinary, QemuVm, VmConfig};

const MEM: u64 = 128 << 20;
const CHANNELS: u32 = 2;
/// Forward this many bytes of the first multifd connection, then reset it:
/// inside the payload of its first RAM packet (the initial packet is 64
/// bytes, a header about 1 KiB, a payload 512 KiB of guest data).
const CUT: u64 = 200_000;

/// One migration at a time (2 cores).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Outcome {
    source: Value,
    dest: Value,
    /// Bytes the proxy forwarded on each connection (source → destination).
    forwarded: Vec<u64>,
}

fn qemu() -> QemuBinary {
    QemuBinary::system().unwrap_or_else(|e| panic!("real QEMU 10.0 is required: {e:#}"))
}

async fn multifd_on(vm: &QemuVm) {
    vm.qmp.set_capabilities(&[("multifd", true)]).await.unwrap();
    vm.qmp.set_parameters(json!({"multifd-channels": CHANNELS})).await.unwrap();
}

/// A stopped fill guest migrates with 2 multifd channels through the proxy,
/// which resets connection 1 (the first multifd channel; 0 is the main
/// channel) after [`CUT`] bytes.
async fn cut_first_multifd_channel(kind: DestKind) -> Outcome {
    let _g = SERIAL.lock().await;
    let tag = format!("mfcut-{}", kind.name());
    let dir = tempfile::Builder::new().prefix(&format!("{tag}-")).tempdir().unwrap();
    let disk = dir.path().join("fill.img");
    std::fs::copy(Workload::Fill.image_path(), &disk).unwrap();
    let _disk = PathGuard::new(&disk);
    let mut cfg = VmConfig::new(&format!("{tag}-src"), MEM);
    cfg.disk = Some(disk.clone());
    cfg.serial_log = Some(dir.path().join("src.serial"));
    let src = QemuVm::start(&qemu(), cfg, dir.path().join("src.log")).await.unwrap();
    src.wait_serial(|s| s.contains('F'), Duration::from_secs(60)).await.unwrap();
    src.execute("stop", Value::Null).await.unwrap();
    multifd_on(&src).await;
    src.qmp.set_parameters(json!({"max-bandwidth": 10u64 << 30})).await.unwrap();

    let dst = start_dest(
        kind,
        &qemu(),
        VmConfig::new(&format!("{tag}-dst"), MEM),
        dir.path().join("dst.log"),
    )
    .await
    .unwrap();
    multifd_on(&dst).await;
    let port = free_tcp_port();
    // QEMU's destination stays up with the status `failed` (it exits by
    // default); rust-dest stays up anyway.
    let uri = format!("tcp:127.0.0.1:{port}");
    dst.execute("migrate-incoming", json!({"uri": uri, "exit-on-error": false})).await.unwrap();
    let upstream: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let plan = ProxyPlan::new().on_connection(1).cut_at(CUT);
    let proxy = Proxy::start_plans("127.0.0.1:0", upstream, vec![plan]).await.unwrap();
    src.execute("migrate", json!({"uri": proxy.uri()})).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let (source, dest) = loop {
        let s = src.qmp.query_migrate().await.unwrap();
        let d = dst.qmp.query_migrate().await.unwrap();
        let done = |v: &Value| MigrationStatus::of(v).is_terminal();
        if done(&s) && done(&d) {
            break (s, d);
        }
        assert!(
            Instant::now() < deadline,
            "{tag}: no final status after 60 s: source {s}, destination {d}\n{}",
            dst.log_tail(4000)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let forwarded = proxy.stats().iter().map(|c| c.src_to_dst).collect();
    drop(proxy);
    let mems = [src.cfg.mem_path.clone(), dst.cfg.mem_path.clone()];
    src.quit().await;
    dst.quit().await;
    for p in mems {
        assert!(!p.exists(), "{tag}: {} left behind", p.display());
    }
    Outcome { source, dest, forwarded }
}

fn desc(v: &Value) -> &str {
    v["error-desc"].as_str().unwrap_or("")
}

#[tokio::test]
async fn cut_multifd_channel_fails_like_qemu() {
    let q = cut_first_multifd_channel(DestKind::Qemu).await;
    println!(
        "QEMU 10.0 destination: {} ({:?}); source {} ({:?}); forwarded {:?}",
        MigrationStatus::of(&q.dest),
        desc(&q.dest),
        MigrationStatus::of(&q.source),
        desc(&q.source),
        q.forwarded
    );
    let r = cut_first_multifd_channel(DestKind::Rust).await;
    println!(
        "rust-dest: {} ({:?}); source {} ({:?}); forwarded {:?}",
        MigrationStatus::of(&r.dest),
        desc(&r.dest),
        MigrationStatus::of(&r.source),
        desc(&r.source),
        r.forwarded
    );
    for (who, o) in [("QEMU destination", &q), ("rust-dest", &r)] {
        assert_eq!(o.forwarded.get(1), Some(&CUT), "{who}: the cut connection {:?}", o.forwarded);
        assert_eq!(MigrationStatus::of(&o.dest), MigrationStatus::Failed, "{who}: {}", o.dest);
        assert_eq!(MigrationStatus::of(&o.source), MigrationStatus::Failed, "{who}: {}", o.source);
    }
    let d = desc(&r.dest);
    assert!(d.starts_with("multifd channel "), "rust-dest error-desc: {d}");
    assert!(d.contains("byte offset"), "rust-dest error-desc: {d}");
}
