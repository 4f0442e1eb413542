//! End-to-end migrations from a real QEMU source into rust-dest and, for
//! comparison, into a real QEMU destination: precopy (live sweeping guest,
//! stopped 1 GiB guest) and postcopy (switch after 0, 1 and 3 passes).
//! Every RAM page is compared between the source's and the destination's
//! memory-backend files.

use std::time::Duration;

use harness::drive::migrate::{migrate, MigrateOpts, MigrateReport, Mode};
use harness::images::Workload;
use harness::vm::dest::DestKind;
use harness::vm::qemu::QemuBinary;

fn qemu() -> QemuBinary {
    match QemuBinary::system() {
        Ok(q) => q,
        Err(e) => {
            panic!("real QEMU is required for these tests (install it with ci/install.sh): {e:#}")
        }
    }
}

async fn run(o: MigrateOpts) -> MigrateReport {
    let r = migrate(&o, |_| {})
        .await
        .unwrap_or_else(|e| panic!("migration into {} failed: {e:#}", o.dest));
    println!("{}", r.summary());
    assert!(r.ok(), "checks failed:\n{}", r.summary());
    r
}

fn opts(dest: DestKind, mode: Mode) -> MigrateOpts {
    let mut o = MigrateOpts::new(dest, mode, qemu());
    o.timeout = Duration::from_secs(120);
    o
}

fn dest_x(r: &MigrateReport, key: &str) -> u64 {
    r.dest_final["x-crossmig"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("dest query-migrate lacks x-crossmig.{key}: {}", r.dest_final))
}

async fn live_precopy(dest: DestKind) {
    let r = run(opts(dest, Mode::Precopy)).await;
    // The sweeping guest redirties ~99 MiB continuously: the source needed
    // more than one RAM pass (the first sync is at setup, the last at the end).
    let syncs = r.source_final["ram"]["dirty-sync-count"].as_u64().unwrap();
    assert!(syncs >= 3, "expected several precopy passes, dirty-sync-count = {syncs}");
    let normal = r.source_final["ram"]["normal"].as_u64().unwrap();
    assert!(normal > 25344 + 1000, "pages were resent across passes: normal = {normal}");
}

#[tokio::test]
async fn precopy_live_sweep_into_rust() {
    live_precopy(DestKind::Rust).await;
}

#[tokio::test]
async fn precopy_live_sweep_into_qemu() {
    live_precopy(DestKind::Qemu).await;
}

async fn stopped_1g(dest: DestKind) -> MigrateReport {
    let mut o = opts(dest, Mode::Precopy);
    o.stopped = true;
    o.mem_bytes = 1 << 30;
    o.workload = Workload::Fill;
    let r = run(o).await;
    let normal = r.source_final["ram"]["normal"].as_u64().unwrap();
    assert!(
        normal > 250_000,
        "the fill guest's ~1 GiB of random data was sent as full pages: normal = {normal}"
    );
    eprintln!("stopped 1 GiB precopy into {}: {} ms", dest, r.migration_ms);
    r
}

#[tokio::test]
async fn precopy_stopped_1g_into_rust() {
    stopped_1g(DestKind::Rust).await;
}

#[tokio::test]
async fn precopy_stopped_1g_into_qemu() {
    stopped_1g(DestKind::Qemu).await;
}

async fn postcopy(dest: DestKind, passes: u32) -> MigrateReport {
    let mut o = opts(dest, Mode::Postcopy);
    o.postcopy_after_passes = passes;
    let r = run(o).await;
    assert!(r.passes_at_postcopy.unwrap() >= passes as u64);
    if dest == DestKind::Rust {
        // rust-dest's simulated vCPUs fault on missing pages: the source
        // served page requests, and rust-dest placed pages on request.
        assert!(
            r.source_postcopy_requests() > 0,
            "source served no page requests: {}",
            r.source_final
        );
        assert_eq!(
            dest_x(&r, "page-requests"),
            r.source_postcopy_requests(),
            "requests sent vs served"
        );
        assert!(dest_x(&r, "pages-placed-requested") > 0);
        assert!(dest_x(&r, "faults") > 0);
        assert!(r.dest_final["x-crossmig"]["postcopy-state"] == "end");
        if passes > 0 {
            // Pages sent in a completed pass and redirtied since are discarded.
            assert!(dest_x(&r, "discard-commands") > 0, "no discard commands received");
            assert!(dest_x(&r, "discarded-pages") > 0);
        }
    }
    r
}

#[tokio::test]
async fn postcopy_after_0_passes_into_rust() {
    postcopy(DestKind::Rust, 0).await;
}

#[tokio::test]
async fn postcopy_after_1_pass_into_rust() {
    postcopy(DestKind::Rust, 1).await;
}

#[tokio::test]
async fn postcopy_after_3_passes_into_rust() {
    postcopy(DestKind::Rust, 3).await;
}

#[tokio::test]
async fn postcopy_after_0_passes_into_qemu() {
    postcopy(DestKind::Qemu, 0).await;
}

#[tokio::test]
async fn postcopy_after_1_pass_into_qemu() {
    postcopy(DestKind::Qemu, 1).await;
}

#[tokio::test]
async fn postcopy_after_3_passes_into_qemu() {
    postcopy(DestKind::Qemu, 3).await;
}
