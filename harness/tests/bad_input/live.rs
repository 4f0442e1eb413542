//! Damage on the way: a live QEMU source migrating through a proxy that
//! flips a byte.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use harness::drive::proxy::{Proxy, ProxyPlan};
use harness::qmp::MigrationStatus;
use harness::vm::dest::DestKind;
use serde_json::{json, Value};

use crate::damage::be64_at;
use crate::dest::{names_offset, Dest};
use crate::record::{recorded, start_source};

/// Live: a real QEMU source migrates through the proxy, which flips the flag
/// byte of the first PAGE record; both sides must end `failed`.
#[tokio::test]
async fn flipped_on_the_way_from_a_live_source() {
    let r = recorded();
    let p = r.layout.first_data_page.clone();
    let flag_byte = p.off + 7;
    assert_eq!(r.data[flag_byte as usize] as u64, p.flags & 0xff);
    let t0 = Instant::now();
    let dir = tempfile::Builder::new().prefix("badin-live-").tempdir().unwrap();
    let (src, _disk) = start_source(dir.path(), "live").await.expect("source");
    let d = Dest::start(DestKind::Rust, "live-flip").await;
    let rec = dir.path().join("live.bin");
    let upstream: SocketAddr = format!("127.0.0.1:{}", d.port).parse().unwrap();
    // PAGE (0x08) -> 0x0b: PAGE|ZERO|FULL, an invalid flag combination
    let proxy =
        Proxy::start("127.0.0.1:0", upstream, ProxyPlan::new().flip(flag_byte, 0x03).record(&rec))
            .await
            .unwrap();
    src.execute("migrate", json!({"uri": proxy.uri()})).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (sv, dv) = loop {
        let sv = src.qmp.query_migrate().await.unwrap();
        let dv = d.vm.qmp.query_migrate().await.unwrap();
        let done = |v: &Value| MigrationStatus::of(v).is_terminal();
        if done(&sv) && done(&dv) {
            break (sv, dv);
        }
        assert!(
            Instant::now() < deadline,
            "no final status after 20 s: source {sv}, destination {dv}\ndestination log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let desc = dv["error-desc"].as_str().unwrap_or("");
    // the byte really was flipped, at a PAGE record of the live stream too
    let live = std::fs::read(&rec).unwrap();
    let live_word = be64_at(&live, p.off);
    assert_eq!(
        live_word & 0xfff,
        (p.flags ^ 0x03) & 0xfff,
        "live stream layout differs from the recording"
    );
    assert_eq!(MigrationStatus::of(&dv), MigrationStatus::Failed, "destination: {dv}");
    assert!(
        desc.contains("unknown flag combination 0xb") && names_offset(desc, p.off),
        "destination error-desc: {desc}"
    );
    assert_eq!(MigrationStatus::of(&sv), MigrationStatus::Failed, "source: {sv}");
    d.check_alive("live-flip").await;
    eprintln!(
        "[live-flip] source failed ({}), destination failed ({desc}) in {:?}; proxy {:?}",
        sv["error-desc"],
        t0.elapsed(),
        proxy.stats()
    );
    drop(proxy);
    let paths = vec![src.cfg.mem_path.clone()];
    src.quit().await;
    d.finish().await;
    for p in paths {
        assert!(!p.exists());
    }
}
