//! Postcopy-preempt, postcopy recovery and switchover-ack against a real QEMU
//! 10.0 source, into rust-dest and (for comparison) into QEMU.

use std::time::Duration;

use harness::drive::migrate::{migrate, MigrateOpts, MigrateReport, Mode};
use harness::vm::dest::DestKind;
use harness::vm::qemu::QemuBinary;

fn qemu() -> QemuBinary {
    QemuBinary::system().unwrap_or_else(|e| panic!("real QEMU is required (ci/install.sh): {e:#}"))
}

async fn run(o: MigrateOpts) -> MigrateReport {
    let r = migrate(&o, |_| {})
        .await
        .unwrap_or_else(|e| panic!("migration into {} failed: {e:#}", o.dest));
    println!("{}", r.summary());
    assert!(r.ok(), "checks failed:\n{}", r.summary());
    r
}

fn x(r: &MigrateReport, key: &str) -> u64 {
    r.dest_final["x-crossmig"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no x-crossmig.{key} in {}", r.dest_final))
}

fn postcopy_opts(dest: DestKind) -> MigrateOpts {
    let mut o = MigrateOpts::new(dest, Mode::Postcopy, qemu());
    o.timeout = Duration::from_secs(120);
    o.postcopy_after_passes = 1;
    o
}

#[tokio::test]
async fn preempt_into_rust() {
    let mut o = postcopy_opts(DestKind::Rust);
    o.extra_caps = vec![("postcopy-preempt".into(), true)];
    let r = run(o).await;
    assert!(r.source_postcopy_requests() > 0);
    // Requested pages come back on the preempt channel (8.0+ sources write
    // the requested host page there directly from the return-path thread).
    assert!(x(&r, "preempt-pages") > 0, "no page arrived on the preempt channel: {}", r.dest_final);
    eprintln!("preempt fault latency: {}", r.dest_final["x-crossmig"]["fault-latency-us"]);
}

#[tokio::test]
async fn preempt_into_qemu() {
    let mut o = postcopy_opts(DestKind::Qemu);
    o.extra_caps = vec![("postcopy-preempt".into(), true)];
    run(o).await;
}

#[tokio::test]
async fn recovery_pause_on_source_into_rust() {
    let mut o = postcopy_opts(DestKind::Rust);
    o.recover_cuts = 2;
    let r = run(o).await;
    assert_eq!(r.recoveries, 2);
}

#[tokio::test]
async fn recovery_pause_on_dest_into_rust() {
    let mut o = postcopy_opts(DestKind::Rust);
    o.recover_cuts = 1;
    o.pause_on_dest = true;
    let r = run(o).await;
    assert_eq!(r.recoveries, 1);
}

#[tokio::test]
async fn recovery_with_preempt_into_rust() {
    let mut o = postcopy_opts(DestKind::Rust);
    o.recover_cuts = 1;
    o.extra_caps = vec![("postcopy-preempt".into(), true)];
    let r = run(o).await;
    assert_eq!(r.recoveries, 1);
}

#[tokio::test]
async fn recovery_pause_on_source_into_qemu() {
    let mut o = postcopy_opts(DestKind::Qemu);
    o.recover_cuts = 2;
    let r = run(o).await;
    assert_eq!(r.recoveries, 2);
}

async fn switchover_ack(dest: DestKind) {
    let mut o = MigrateOpts::new(dest, Mode::Precopy, qemu());
    o.extra_caps = vec![("return-path".into(), true), ("switchover-ack".into(), true)];
    run(o).await;
}

#[tokio::test]
async fn switchover_ack_precopy_into_rust() {
    switchover_ack(DestKind::Rust).await;
}

#[tokio::test]
async fn switchover_ack_precopy_into_qemu() {
    switchover_ack(DestKind::Qemu).await;
}
