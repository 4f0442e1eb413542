//! Every provisioned QEMU version, for real (see `harness::provision`):
//!
//! * (a) `--version` of the installed binary matches its manifest and series;
//! * (b) a QEMU(V) source migrates a live sweeping guest into rust-dest,
//!   precopy and postcopy, with identical RAM (machine `pc-q35-7.2` for 7.2,
//!   `q35` otherwise);
//! * (c) QEMU→QEMU across versions, both directions, precopy, identical RAM:
//!   7.2↔10.0 (`pc-q35-7.2`) and 10.0↔11.1 (`pc-q35-10.0`);
//! * (d) `migrate-incoming` on a port that is taken: what each version's
//!   state allows afterwards (`harness::vm::dest::listen_tcp`).
//!
//! Versions that are not installed are skipped with a message, except when
//! `CI=true`: then a missing version fails (run `crossmig qemu install`),
//! unless `CROSSMIG_VERSIONS` (e.g. `10.0` or `7.2,10.0`) is set, in which
//! case only the versions listed there are required. A test that needs a
//! version that is neither installed nor required passes after printing
//! `SKIPPED`.
//!
//! Migrations run one at a time (each uses two TCG vCPU threads at full
//! speed), so the printed timings are comparable.
//!
//! Run: `cargo build -p rust-dest && cargo test -p harness --test versions -- --nocapture`

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use harness::drive::migrate::{migrate, MigrateOpts, MigrateReport, Mode};
use harness::provision::{self, series_matches, Installed, Status, KNOWN_VERSIONS};
use harness::vm::dest::{listen_tcp_on, start_dest, DestKind};
use harness::vm::procs::free_tcp_port;
use harness::vm::qemu::{parse_qemu_version, QemuBinary, VmConfig};

/// One migration at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Status of every known series, computed once per test process.
fn statuses() -> &'static BTreeMap<String, Status> {
    static S: OnceLock<BTreeMap<String, Status>> = OnceLock::new();
    S.get_or_init(|| {
        let m: BTreeMap<String, Status> =
            KNOWN_VERSIONS.iter().map(|v| (v.to_string(), provision::status(v))).collect();
        println!("QEMU versions (cache {}):", provision::cache_dir().display());
        for (v, st) in &m {
            match st {
                Status::Complete(i) => println!(
                    "  {v}: QEMU {} ({})",
                    i.manifest.qemu_version, i.manifest.version_line
                ),
                st => println!("  {v}: {}", st.reason().unwrap_or_default()),
            }
        }
        m
    })
}

fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Required versions: in CI all known ones, or those in `$CROSSMIG_VERSIONS`.
fn required(series: &str) -> bool {
    if !in_ci() {
        return false;
    }
    match std::env::var("CROSSMIG_VERSIONS") {
        Ok(list) if !list.trim().is_empty() => {
            list.split(|c: char| c == ',' || c.is_whitespace()).any(|v| v == series)
        }
        _ => true,
    }
}

/// The installs `test` needs, or `None` (after printing why) to skip it.
/// Panics when a needed version is missing but required.
fn need(test: &str, series: &[&str]) -> Option<Vec<Installed>> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for s in series {
        match &statuses()[*s] {
            Status::Complete(i) => out.push(i.clone()),
            st => missing.push((s.to_string(), st.reason().unwrap_or_default())),
        }
    }
    if missing.is_empty() {
        return Some(out);
    }
    let what: Vec<String> = missing.iter().map(|(s, r)| format!("QEMU {s} {r}")).collect();
    let req: Vec<&str> = missing.iter().map(|(s, _)| s.as_str()).filter(|s| required(s)).collect();
    if !req.is_empty() {
        panic!(
            "{test}: {} — required because CI=true{}: run `crossmig qemu install {}` (or set CROSSMIG_VERSIONS to the versions this machine must test)",
            what.join("; "),
            std::env::var("CROSSMIG_VERSIONS").map(|v| format!(" and CROSSMIG_VERSIONS={v}")).unwrap_or_default(),
            req.join(" ")
        );
    }
    println!(
        "SKIPPED {test}: {} (install with `crossmig qemu install {}`{})",
        what.join("; "),
        missing.iter().map(|m| m.0.as_str()).collect::<Vec<_>>().join(" "),
        if in_ci() { "; not required by CROSSMIG_VERSIONS" } else { "; not CI, so not required" }
    );
    None
}

/// Machine type for a migration whose oldest side is `series`.
fn machine_for(series: &str) -> String {
    match series {
        "7.2" => "pc-q35-7.2".into(),
        _ => "q35".into(),
    }
}

async fn run_checked(test: &str, o: MigrateOpts) -> MigrateReport {
    let _g = SERIAL.lock().await;
    let t = Instant::now();
    let r = migrate(&o, |_| {}).await.unwrap_or_else(|e| panic!("{test}: migration failed: {e:#}"));
    println!("{test}:\n{}", r.summary());
    assert!(r.ok(), "{test}: checks failed:\n{}", r.summary());
    println!(
        "RESULT {test}: migration {} ms (harness wall time {:.1} s){}",
        r.migration_ms,
        t.elapsed().as_secs_f64(),
        r.passes_at_postcopy
            .map(|p| format!(
                ", postcopy after {p} pass(es), {} page requests",
                r.source_postcopy_requests()
            ))
            .unwrap_or_default()
    );
    r
}

// ---------------------------------------------------------------------------
// (a) --version

fn check_version(series: &str) {
    let test = format!("version_{series}");
    let Some(i) = need(&test, &[series]) else {
        return;
    };
    let i = &i[0];
    let got = i.binary.version().unwrap_or_else(|e| panic!("{test}: {e:#}"));
    let got_s = format!("{}.{}.{}", got.0, got.1, got.2);
    assert_eq!(got_s, i.manifest.qemu_version, "{test}: --version differs from the manifest");
    assert!(series_matches(series, got), "{test}: QEMU {got_s} is not series {series}");
    assert_eq!(parse_qemu_version(&i.manifest.version_line), Some(got));
    if series == "11.1" && got.1 != 1 {
        println!("NOTE {test}: sid ships QEMU {got_s}; accepted for 11.1");
    }
    println!(
        "RESULT {test}: {} ({}), binary {}, -L {:?}, loader {:?}",
        got_s,
        i.manifest.version_line,
        i.binary.path.display(),
        i.binary.data_dirs,
        i.binary.loader
    );
}

#[test]
fn version_7_2() {
    check_version("7.2");
}

#[test]
fn version_10_0() {
    check_version("10.0");
}

#[test]
fn version_11_1() {
    check_version("11.1");
}

// ---------------------------------------------------------------------------
// (b) QEMU(V) → rust-dest

fn into_rust_opts(qemu: QemuBinary, series: &str, mode: Mode) -> MigrateOpts {
    let mut o = MigrateOpts::new(DestKind::Rust, mode, qemu);
    o.machine = machine_for(series);
    o.timeout = Duration::from_secs(120);
    o
}

async fn precopy_into_rust(series: &str) {
    let test = format!("precopy_{series}_into_rust");
    let Some(i) = need(&test, &[series]) else {
        return;
    };
    let r = run_checked(&test, into_rust_opts(i[0].binary.clone(), series, Mode::Precopy)).await;
    // A live sweep redirties pages all the time: several passes were needed.
    let syncs = r.source_final["ram"]["dirty-sync-count"].as_u64().unwrap_or(0);
    assert!(syncs >= 3, "{test}: expected several precopy passes, dirty-sync-count = {syncs}");
}

async fn postcopy_into_rust(series: &str) {
    let test = format!("postcopy_{series}_into_rust");
    let Some(i) = need(&test, &[series]) else {
        return;
    };
    let r = run_checked(&test, into_rust_opts(i[0].binary.clone(), series, Mode::Postcopy)).await;
    assert!(r.passes_at_postcopy.unwrap_or(0) >= 1, "{test}: switched to postcopy too early");
    // rust-dest's simulated vCPUs fault on missing pages.
    assert!(
        r.source_postcopy_requests() > 0,
        "{test}: the source served no page requests: {}",
        r.source_final
    );
}

#[tokio::test]
async fn precopy_7_2_into_rust() {
    precopy_into_rust("7.2").await;
}

#[tokio::test]
async fn postcopy_7_2_into_rust() {
    postcopy_into_rust("7.2").await;
}

#[tokio::test]
async fn precopy_10_0_into_rust() {
    precopy_into_rust("10.0").await;
}

#[tokio::test]
async fn postcopy_10_0_into_rust() {
    postcopy_into_rust("10.0").await;
}

#[tokio::test]
async fn precopy_11_1_into_rust() {
    precopy_into_rust("11.1").await;
}

#[tokio::test]
async fn postcopy_11_1_into_rust() {
    postcopy_into_rust("11.1").await;
}

// ---------------------------------------------------------------------------
// (c) QEMU(A) → QEMU(B)

async fn cross(src: &str, dst: &str, machine: &str) {
    let test = format!("cross_{src}_to_{dst}");
    let Some(i) = need(&test, &[src, dst]) else {
        return;
    };
    let mut o = MigrateOpts::new(DestKind::Qemu, Mode::Precopy, i[0].binary.clone());
    o.dest_qemu = Some(i[1].binary.clone());
    o.machine = machine.into();
    o.timeout = Duration::from_secs(120);
    let r = run_checked(&test, o).await;
    let v = |j: &serde_json::Value| harness::qmp::MigrationStatus::of(j);
    println!(
        "RESULT {test}: QEMU {} -> QEMU {} ({machine}): source {}, destination {}",
        i[0].manifest.qemu_version,
        i[1].manifest.qemu_version,
        v(&r.source_final),
        v(&r.dest_final)
    );
}

#[tokio::test]
async fn cross_7_2_to_10_0() {
    cross("7.2", "10.0", "pc-q35-7.2").await;
}

// QEMU 7.2 as a destination reports no status after migrate-incoming
// (only socket-address); harness::drive::session::wait_incoming_listening accepts it.
#[tokio::test]
async fn cross_10_0_to_7_2() {
    cross("10.0", "7.2", "pc-q35-7.2").await;
}

#[tokio::test]
async fn cross_10_0_to_11_1() {
    cross("10.0", "11.1", "pc-q35-10.0").await;
}

#[tokio::test]
async fn cross_11_1_to_10_0() {
    cross("11.1", "10.0", "pc-q35-10.0").await;
}

// ---------------------------------------------------------------------------
// the provisioning API itself

#[test]
fn installed_versions_are_consistent() {
    let all = provision::all_binaries();
    println!(
        "installed: {:?}",
        all.iter().map(|(v, b)| format!("{v} = {}", b.path.display())).collect::<Vec<_>>()
    );
    for (v, b) in &all {
        let again = provision::binary(v).unwrap_or_else(|e| panic!("binary({v}): {e:#}"));
        assert_eq!(again.path, b.path);
        assert_eq!(again.data_dirs, b.data_dirs);
        assert_eq!(again.loader, b.loader);
        if let Some((ld, lib)) = &b.loader {
            assert!(ld.is_file() && lib.is_dir(), "{v}: loader {ld:?} / {lib:?}");
        }
    }
    assert!(provision::binary("6.0").is_err());
}

// ---------------------------------------------------------------------------
// (d) migrate-incoming on a port that is taken

/// `listen_tcp_on` when the first port is already bound: QEMU 7.2 (and
/// rust-dest) stay in state `none` and listen on the next port; QEMU 8.0+
/// stay in `setup`, so the error must name the first failure (the bind),
/// not the "Illegal migration incoming state" of a blind retry.
async fn listen_on_a_taken_port(series: &str, kind: DestKind) {
    let test = format!("listen_on_a_taken_port_{series}_{}", kind.name());
    let Some(i) = need(&test, &[series]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = VmConfig::new(&format!("taken-{}", kind.name()), 64 << 20);
    let vm = start_dest(kind, &i[0].binary, cfg, dir.path().join("dest.log")).await.unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut ports = [taken.local_addr().unwrap().port(), free_tcp_port()].into_iter();
    let second = [ports.clone().nth(1).unwrap()];
    let r = listen_tcp_on(&vm, || ports.next().expect("at most two attempts")).await;
    vm.quit().await;
    let retries = series == "7.2" || kind == DestKind::Rust;
    match r {
        Ok(p) if retries => assert_eq!([p], second, "{test}"),
        Err(e) if !retries => {
            let e = format!("{e:#}");
            assert!(e.contains("Address already in use"), "{test}: {e}");
            assert!(e.contains("\"setup\""), "{test}: {e}");
        }
        r => panic!("{test}: {r:?}"),
    }
}

#[tokio::test]
async fn listen_on_a_taken_port_7_2() {
    listen_on_a_taken_port("7.2", DestKind::Qemu).await;
}

#[tokio::test]
async fn listen_on_a_taken_port_10_0() {
    listen_on_a_taken_port("10.0", DestKind::Qemu).await;
}

#[tokio::test]
async fn listen_on_a_taken_port_11_1() {
    listen_on_a_taken_port("11.1", DestKind::Qemu).await;
}

#[tokio::test]
async fn listen_on_a_taken_port_rust() {
    listen_on_a_taken_port("10.0", DestKind::Rust).await;
}
