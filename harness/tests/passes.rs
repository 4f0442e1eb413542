//! `wait passes = N` against every provisioned QEMU version (issue 18, bug 1):
//! with `postcopy-ram` on, a live sweeping guest and rust-dest as the
//! destination, the pass wait may only return once the source really sent
//! N passes:
//!
//! * after 1 pass, the destination has received every page of every
//!   RAMBlock at least once (its own `x-crossmig-query-ramblocks` received bitmap,
//!   independent of the source's counters);
//! * after N passes, the destination has loaded at least N × the source's
//!   RAM pages, and the source synced its dirty bitmap at least N times
//!   (every pass ends with a sync, on every version).
//!
//! 11.1 syncs every ~100 ms with postcopy-ram, so counting syncs returned
//! after ~70 ms with ~10% of RAM sent; this test failed on 11.1 then.
//!
//! Run: `cargo build -p rust-dest && cargo test -p harness --test passes -- --nocapture`

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use harness::drive::session::{Migration, Side};
use harness::images::Workload;
use harness::qmp::PassProgress;
use harness::scenario::{common_machine, resolve_qemu};
use harness::vm::dest::{start_dest, DestKind};
use harness::vm::procs::{unique_name, PathGuard};
use harness::vm::qemu::{QemuVm, VmConfig};

const MEM: u64 = 256 << 20;

fn versions() -> Vec<String> {
    harness::scenario::file::matrix_versions()
}

/// `(received pages, pages)` over all of rust-dest's RAMBlocks.
async fn received(m: &Migration) -> (u64, u64) {
    let v = m
        .dst
        .execute("x-crossmig-query-ramblocks", Value::Null)
        .await
        .expect("x-crossmig-query-ramblocks");
    let blocks = v.as_array().expect("ramblock list");
    let n = |b: &Value, k: &str| b[k].as_u64().unwrap_or(0);
    let got = blocks.iter().map(|b| n(b, "received-pages")).sum();
    let all = blocks.iter().map(|b| n(b, "used-length") / n(b, "page-size").max(1)).sum();
    (got, all)
}

/// Pages rust-dest has loaded (`ram.normal` + `ram.duplicate`).
fn loaded(dest: &Value) -> u64 {
    dest["ram"]["normal"].as_u64().unwrap_or(0) + dest["ram"]["duplicate"].as_u64().unwrap_or(0)
}

async fn passes_on(series: &str) {
    let qemu = resolve_qemu(Some(series)).expect("QEMU");
    let machine = common_machine(&qemu, &qemu);
    let dir = std::env::temp_dir();
    let tag = unique_name("passes");
    let disk = dir.join(format!("{tag}.img"));
    std::fs::copy(Workload::Sweep.image_path(), &disk).unwrap();
    let _disk = PathGuard::new(&disk);
    let (slog, dlog) = (dir.join(format!("{tag}-src.log")), dir.join(format!("{tag}-dst.log")));
    let (_l1, _l2) = (PathGuard::new(&slog), PathGuard::new(&dlog));
    let serial = dir.join(format!("{tag}-src.serial"));
    let _serial = PathGuard::new(&serial);
    let mut scfg = VmConfig::new("passes-src", MEM);
    scfg.machine = machine.clone();
    scfg.disk = Some(disk.clone());
    scfg.serial_log = Some(serial);
    let src = QemuVm::start(&qemu, scfg, slog).await.expect("source");
    src.wait_serial(|s| s.contains('B'), Duration::from_secs(60)).await.expect("guest booted");
    let mut dcfg = VmConfig::new("passes-dst", MEM);
    dcfg.machine = machine;
    let dst = start_dest(DestKind::Rust, &qemu, dcfg, dlog).await.expect("rust-dest");
    let mut m = Migration::new(src, dst, DestKind::Rust);
    let res = async {
        let caps = [("events", true), ("postcopy-ram", true)];
        m.set_capabilities(Side::Both, &caps).await?;
        let p = json!({"max-bandwidth": 256u64 << 20, "downtime-limit": 1});
        m.set_parameters(Side::Source, &p).await?;
        m.migrate(true).await?;
        let t0 = Instant::now();
        let first_sync = loop {
            let (s, _) = m.sample().await;
            if let Some(n) = s["ram"]["dirty-sync-count"].as_u64().filter(|n| *n > 0) {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        for n in [1u64, 3] {
            let done = m.wait_passes(n, Duration::from_secs(60)).await?;
            let (s, _) = m.sample().await;
            let p = PassProgress::of(&s);
            println!("{series}: wait passes = {n} after {:?}: {done}", t0.elapsed());
            let (got, all) = received(&m).await;
            anyhow::ensure!(
                got == all,
                "{series}: after {n} pass(es) rust-dest has {got} of {all} pages"
            );
            // What the source sent before the wait returned has arrived soon after.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let (_, d) = m.sample().await;
                if loaded(&d) >= n * p.ram_pages {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{series}: rust-dest loaded {} pages, less than {n} × {}",
                    loaded(&d),
                    p.ram_pages
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::ensure!(
                p.dirty_sync_count >= first_sync + n,
                "{series}: {n} passes but only {} syncs after the first ({first_sync})",
                p.dirty_sync_count
            );
        }
        m.cancel().await
    }
    .await;
    m.quit().await;
    if let Err(e) = res {
        panic!("{e:#}");
    }
}

#[tokio::test]
async fn passes_are_complete_on_every_version() {
    for v in versions() {
        passes_on(&v).await;
    }
}
