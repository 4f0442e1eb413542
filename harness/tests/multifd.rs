//! Multifd precopy from real QEMU sources into rust-dest (and, as the
//! reference, into a QEMU destination): capability `multifd` on both sides,
//! `multifd-channels` and `multifd-compression` set on both sides, a live
//! sweeping guest, every RAM page compared with the source's memory file.
//!
//! 10.0 (the system QEMU) with 1, 2, 4 and 8 channels, with zlib and zstd
//! (fill guest: they cannot keep up with the sweeping one);
//! 7.2 (machine `pc-q35-7.2`: per-section sync, legacy zero pages) and 11.1
//! (multifd zero pages, MULTIFD_FLUSH) with 2 channels when provisioned
//! (skipped with a message otherwise); 11.1 also with postcopy, with and
//! without postcopy-preempt. Migrations run one at a time. Into rust-dest,
//! every RAMBlock is also checked against the replay of the recorded
//! channels (main, multifd, preempt).
//!
//! Run: `cargo build --workspace --bins && cargo test -p harness --test multifd -- --nocapture`

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use harness::drive::migrate::{migrate, MigrateOpts, MigrateReport, Mode};
use harness::images::Workload;
use harness::provision::{self, Status};
use harness::vm::dest::DestKind;
use harness::vm::qemu::QemuBinary;

/// One migration at a time (timings stay comparable, 2 cores).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn system_qemu() -> QemuBinary {
    QemuBinary::system().unwrap_or_else(|e| {
        panic!("real QEMU is required for these tests (install it with ci/install.sh): {e:#}")
    })
}

/// A provisioned QEMU series, or `None` (after saying so) when it is not
/// installed and CI does not require it.
fn provisioned(test: &str, series: &str) -> Option<QemuBinary> {
    match provision::status(series) {
        Status::Complete(i) => Some(i.binary),
        st => {
            let why = st.reason().unwrap_or_default();
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            let listed = std::env::var("CROSSMIG_VERSIONS")
                .map(|l| l.split([',', ' ']).any(|v| v == series))
                .unwrap_or(true);
            assert!(!(ci && listed), "{test}: QEMU {series} {why} (required because CI=true)");
            println!("SKIPPED {test}: QEMU {series} {why}");
            None
        }
    }
}

fn opts(dest: DestKind, qemu: QemuBinary, channels: u32, compression: &str) -> MigrateOpts {
    let mut o = MigrateOpts::new(dest, Mode::Precopy, qemu);
    o.timeout = Duration::from_secs(120);
    o.mem_bytes = 128 << 20;
    o.extra_caps = vec![("multifd".into(), true)];
    o.parameters = json!({
        "multifd-channels": channels,
        "multifd-compression": compression,
    });
    // Into rust-dest every connection is recorded (the default): every
    // RAMBlock is also checked against the replay of the main, multifd and
    // preempt channels.
    o
}

async fn run(test: &str, o: MigrateOpts) -> MigrateReport {
    let _g = SERIAL.lock().await;
    let t = Instant::now();
    let r = migrate(&o, |_| {}).await.unwrap_or_else(|e| panic!("{test}: migration failed: {e:#}"));
    println!("{test}:\n{}", r.summary());
    assert!(r.ok(), "{test}: checks failed:\n{}", r.summary());
    println!(
        "RESULT {test}: migration {} ms (harness wall time {:.1} s), source multifd-bytes {}",
        r.migration_ms,
        t.elapsed().as_secs_f64(),
        r.source_final["ram"]["multifd-bytes"]
    );
    r
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// rust-dest's multifd counters agree with what the source sent.
/// `recorded`: the migration went through the recording proxies.
fn check_rust_counters(test: &str, r: &MigrateReport, channels: u32, recorded: bool) {
    let chans = r.dest_final["x-crossmig"]["multifd-channels"]
        .as_array()
        .unwrap_or_else(|| panic!("{test}: no x-crossmig.multifd-channels: {}", r.dest_final));
    assert_eq!(chans.len(), channels as usize, "{test}: {chans:?}");
    let dest_bytes = u(&r.dest_final["ram"]["multifd-bytes"]);
    let per: u64 = chans.iter().map(|c| u(&c["bytes"])).sum();
    assert_eq!(dest_bytes, per, "{test}: multifd-bytes vs per-channel bytes");
    let src = u(&r.source_final["ram"]["multifd-bytes"]);
    // 7.2 sources leave the 64-byte initial packets out of their count. A
    // 7.2 source's last SYNC packet (a bare 1344-byte header) may still be in
    // flight when the destination reports completed (seen 2 in 6 runs through
    // the recording proxy), so one header per channel may be missing.
    let ch = u64::from(channels);
    let counted = dest_bytes.checked_sub(64 * ch).unwrap_or(dest_bytes);
    assert!(
        dest_bytes == src || counted == src || (src > counted && src - counted <= 1344 * ch),
        "{test}: rust-dest multifd-bytes {dest_bytes}, source {src}"
    );
    // Every channel syncs at every sync point; the sample is taken when the
    // destination reports completed, and a channel's last SYNC may still be
    // in flight then if the main channel had no reason to wait for it
    // (seen once with a 7.2 source under load), so allow one behind.
    let syncs: Vec<u64> = chans.iter().map(|c| u(&c["syncs"])).collect();
    let (lo, hi) = (syncs.iter().min().copied(), syncs.iter().max().copied());
    assert!(
        lo.is_some_and(|lo| lo > 0) && hi.zip(lo).is_some_and(|(hi, lo)| hi - lo <= 1),
        "{test}: sync packets {syncs:?}"
    );
    let pages: u64 = chans.iter().map(|c| u(&c["normal-pages"])).sum();
    assert!(pages > 1000, "{test}: {pages} normal pages through multifd");
    if r.check("every RAMBlock matches the recorded stream").is_some() || recorded {
        check_replayed(test, r, channels);
    }
}

/// The replay of the recorded channels covered the multifd channels.
fn check_replayed(test: &str, r: &MigrateReport, channels: u32) {
    let c = r
        .check("every RAMBlock matches the recorded stream")
        .unwrap_or_else(|| panic!("{test}: no replay check:\n{}", r.summary()));
    let want = format!("{channels} multifd channel(s)");
    assert!(c.ok && c.detail.contains(&want), "{test}: replay check: {}", c.detail);
}

async fn into_rust(test: &str, qemu: QemuBinary, machine: &str, channels: u32, comp: &str) {
    let mut o = opts(DestKind::Rust, qemu, channels, comp);
    o.machine = machine.into();
    // zstd with the sweeping guest: through the recording proxy ~4600
    // rounds (900 MB of zstd, a ~100 s replay), and without it it timed out
    // unconverged once on the loaded machine. The fill guest makes both
    // compressed cases one pass.
    if comp == "zlib" || comp == "zstd" {
        // zlib on the source cannot keep up with the sweeping guest on this
        // machine (a QEMU destination does not converge either): the fill
        // guest writes its RAM once, live, then idles.
        o.workload = Workload::Fill;
    }
    let recorded = o.record;
    let r = run(test, o).await;
    check_rust_counters(test, &r, channels, recorded);
}

#[tokio::test]
async fn qemu10_channels_1_2_4_8_into_rust() {
    for n in [1, 2, 4, 8] {
        into_rust(&format!("qemu10_{n}ch_into_rust"), system_qemu(), "q35", n, "none").await;
    }
}

#[tokio::test]
async fn qemu10_zlib_into_rust() {
    into_rust("qemu10_zlib_into_rust", system_qemu(), "q35", 2, "zlib").await;
}

#[tokio::test]
async fn qemu10_zstd_into_rust() {
    into_rust("qemu10_zstd_into_rust", system_qemu(), "q35", 2, "zstd").await;
}

#[tokio::test]
async fn qemu72_into_rust() {
    let Some(q) = provisioned("qemu72_into_rust", "7.2") else { return };
    // Not recorded: through the recording proxy, rust-dest's multifd-bytes
    // came out one 1344-byte packet header short of the 7.2 source's count
    // in 2 of 6 runs (never without the proxy). Per-section sync replay is
    // covered by qemu111_machine_72_into_rust.
    let test = "qemu72_into_rust";
    let mut o = opts(DestKind::Rust, q, 2, "none");
    o.machine = "pc-q35-7.2".into();
    o.record = false;
    let r = run(test, o).await;
    check_rust_counters(test, &r, 2, false);
}

#[tokio::test]
async fn qemu111_into_rust() {
    let Some(q) = provisioned("qemu111_into_rust", "11.1") else { return };
    into_rust("qemu111_into_rust", q, "q35", 2, "none").await;
}

#[tokio::test]
async fn qemu111_machine_72_into_rust() {
    // A new source on an old machine type: per-section sync.
    let Some(q) = provisioned("qemu111_machine_72_into_rust", "11.1") else { return };
    into_rust("qemu111_machine_72_into_rust", q, "pc-q35-7.2", 2, "none").await;
}

#[tokio::test]
async fn qemu10_into_qemu_reference() {
    let r = run("qemu10_2ch_into_qemu", opts(DestKind::Qemu, system_qemu(), 2, "none")).await;
    assert!(u(&r.source_final["ram"]["multifd-bytes"]) > 0);
}

#[tokio::test]
async fn qemu10_zlib_into_qemu_reference() {
    let mut o = opts(DestKind::Qemu, system_qemu(), 2, "zlib");
    o.workload = Workload::Fill;
    run("qemu10_zlib_into_qemu", o).await;
}

#[tokio::test]
async fn qemu111_postcopy_into_rust() {
    let test = "qemu111_postcopy_into_rust";
    let Some(q) = provisioned(test, "11.1") else { return };
    let mut o = opts(DestKind::Rust, q, 2, "none");
    o.mode = Mode::Postcopy;
    o.postcopy_bandwidth = 64 << 20;
    let r = run(test, o).await;
    check_rust_counters(test, &r, 2, true);
}

#[tokio::test]
async fn qemu111_postcopy_preempt_into_rust() {
    let test = "qemu111_postcopy_preempt_into_rust";
    let Some(q) = provisioned(test, "11.1") else { return };
    let mut o = opts(DestKind::Rust, q, 2, "none");
    o.mode = Mode::Postcopy;
    o.postcopy_bandwidth = 64 << 20;
    o.extra_caps.push(("postcopy-preempt".into(), true));
    let r = run(test, o).await;
    check_rust_counters(test, &r, 2, true);
}

/// A destination whose `-uuid` differs from the source's (none) refuses the
/// multifd channels; rust-dest with QEMU's words. The failure text (the
/// report, or migrate's error with both sides' logs).
async fn uuid_mismatch(dest: DestKind) -> String {
    let mut o = opts(dest, system_qemu(), 2, "none");
    o.dest_extra = vec!["-uuid".into(), "01234567-89ab-cdef-0123-456789abcdef".into()];
    o.timeout = Duration::from_secs(30);
    let _g = SERIAL.lock().await;
    match migrate(&o, |_| {}).await {
        Ok(r) => {
            assert!(!r.ok(), "{dest}: a uuid mismatch must fail:\n{}", r.summary());
            r.summary()
        }
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn uuid_mismatch_fails_like_qemu() {
    let want = "multifd: received uuid '00000000-0000-0000-0000-000000000000' and expected uuid '01234567-89ab-cdef-0123-456789abcdef' for channel";
    let rust = uuid_mismatch(DestKind::Rust).await;
    println!("rust-dest: {rust}");
    assert!(rust.contains(want), "{rust}");
    // QEMU reports it in its log and exits.
    let qemu = uuid_mismatch(DestKind::Qemu).await;
    println!("QEMU: {qemu}");
    assert!(qemu.contains(want), "{qemu}");
}
