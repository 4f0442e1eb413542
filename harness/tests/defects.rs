//! The fast subset of the seeded-defects catalogue (`fast = true` in
//! `harness/defects/*.toml`) against real QEMU 10.0: the precopy control run
//! passes every check, and every fast defect is caught by crossmig's default
//! checks, into rust-dest and into QEMU's destination. The whole catalogue:
//! `crossmig defects`.

use harness::defects::catalogue::{default_dir, load_dir};
use harness::defects::runner::{control_passed, controls, run_defect, RunConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_defects_are_caught() {
    let cfg = RunConfig::default();
    let ctl = controls().into_iter().find(|d| d.migration.name() == "precopy").expect("control");
    let r = run_defect(&ctl, &cfg).await;
    assert!(control_passed(&r), "control run failed: {r:#?}");
    let fast: Vec<_> = load_dir(&default_dir())
        .expect("catalogue")
        .into_iter()
        .filter(|d| d.fast && d.side == harness::defects::catalogue::Side::Source)
        .collect();
    assert!(!fast.is_empty());
    for d in &fast {
        let r = run_defect(d, &cfg).await;
        println!(
            "{}: rust {:?} / qemu {:?}",
            d.name,
            r.rust.as_ref().map(|o| &o.failed),
            r.qemu.as_ref().map(|o| &o.failed)
        );
        assert!(r.crossmig_caught(), "{} not caught: {r:#?}", d.name);
    }
}
