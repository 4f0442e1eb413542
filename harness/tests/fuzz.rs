//! `crossmig fuzz` against real destinations: a handful of mutants of the
//! QEMU 10.0 recordings fed to QEMU 10.0's destination and to rust-dest
//! (docs/differential-fuzz.md). Seed 1's first mutant changes the section id
//! in the footer of an i8259 section, which both must reject.

use harness::fuzz::run::{fuzz, FuzzArgs};
use harness::fuzz::{Change, Region};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handful_of_mutants_agree() {
    let out = tempfile::tempdir().unwrap();
    let a = FuzzArgs {
        count: 6,
        seed: 1,
        region: None,
        qemu: vec!["10.0".into()],
        streams: concat!(env!("CARGO_MANIFEST_DIR"), "/../wire/tests/streams").into(),
        mode: None,
        out: out.path().into(),
        verdict_timeout: 8,
        json: false,
        replay: None,
    };
    let rep = fuzz(&a, |c| eprintln!("{}", harness::fuzz::run::case_line(c))).await.unwrap();
    eprint!("{}", rep.table());
    assert_eq!(rep.cases.len(), 6);
    let first = &rep.cases[0];
    assert_eq!(first.region, Region::Framing);
    assert_eq!(first.change, Change::Byte { offset: 0x61cd8, old: 0x10, new: 0x0b });
    assert_eq!((first.qemu_verdict.as_str(), first.rust_verdict.as_str()), ("failed", "failed"));
    assert!(first.rust_error.contains("mismatched section id in footer"), "{}", first.rust_error);
    for c in &rep.cases {
        assert!(c.agree, "disagreement: {c:?}");
    }
    // Round robin over (recording, region): the six mutants reach at least four regions.
    assert!(rep.regions.len() >= 4, "{:?}", rep.regions.keys());
}
