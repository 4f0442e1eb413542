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

/// The multifd region's replay: the recorded 10.0 and 11.1 multifd streams,
/// each channel written by its own task, complete on both destinations; a
/// page offset outside mem0 in a packet of channel 0 makes rust-dest fail
/// the channel, while QEMU hangs at the sync point (the known QEMU bug of
/// docs/multifd.md) or fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multifd_recordings_replay_on_both() {
    use harness::fuzz::multifd::{load, run_multifd};
    use harness::synth::Observed;
    use std::time::Duration;
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../wire/tests/streams"));
    for v in ["10.0", "11.1"] {
        let rec = load(dir, v).unwrap();
        let t = Duration::from_secs(8);
        let (q, r) =
            run_multifd(v, rec.main.clone(), rec.channels.clone(), t, "fzm").await.unwrap();
        assert_eq!(q.observed().to_string(), "completed", "{v}: qemu {}", q.verdict.error());
        assert_eq!(r.observed().to_string(), "completed", "{v}: rust-dest {}", r.verdict.error());
        // The first RAM packet of channel 0 (SYNC packets carry no pages):
        // the top byte of its first page offset.
        let first = rec
            .spans
            .iter()
            .find(|s| s.what.starts_with("channel 0 packet") && s.what.ends_with("header"))
            .unwrap();
        let mut chans = rec.channels.clone();
        let off = first.start as usize + 64 + 256;
        chans[0][off] = 0xff;
        let (q, r) = run_multifd(v, rec.main.clone(), chans, t, "fzm").await.unwrap();
        assert_eq!(r.observed().to_string(), "failed", "{v}");
        assert!(r.verdict.error().contains("multifd channel 0"), "{v}: {}", r.verdict.error());
        assert!(
            matches!(q.observed(), Observed::Stuck(_)) || q.observed().to_string() == "failed",
            "{v}: qemu {}",
            q.observed()
        );
    }
}

/// The QEMU bug of docs/qemu-bugs.md ("Abort on an ACPI table size in
/// fw_cfg/acpi_mr too large for its RAMBlock"): `crossmig fuzz --qemu 10.0
/// --seed 3` mutant 203 made `table_mr_size` 0x20000020000; QEMU's
/// destination aborts in `qemu_ram_resize()`. rust-dest, which does not
/// model fw_cfg, completes (docs/differential-fuzz.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fw_cfg_acpi_table_size_aborts_qemu() {
    use harness::fuzz::run::run_bytes;
    use std::time::Duration;
    for v in ["10.0", "11.1"] {
        let p =
            format!("{}/../wire/tests/streams/qemu-{v}-precopy.bin", env!("CARGO_MANIFEST_DIR"));
        let mut b = std::fs::read(p).unwrap();
        let pat = b"\x05\x0efw_cfg/acpi_mr\x00\x00\x00\x01";
        let at = b.windows(pat.len()).position(|w| w == pat).unwrap() + pat.len();
        assert_eq!(&b[at..at + 8], &0x20000u64.to_be_bytes(), "{v}: table_mr_size");
        b[at + 2] = 0x02;
        let (q, r) = run_bytes(v, b, false, Duration::from_secs(8), "fzc").await.unwrap();
        assert_eq!(q.observed().to_string(), "crashed", "{v}: {}", q.verdict.error());
        assert!(q.verdict.error().contains("Size too large: /rom@etc/acpi/tables"), "{v}");
        assert_eq!(r.observed().to_string(), "completed", "{v}: {}", r.verdict.error());
    }
}
