//! Destination-side seeded defects (issue 13, `harness/defects/dest.toml`):
//! builds rust-dest with `--features seeded-defects` into `target/defects`
//! and checks that `crossmig migrate` catches two of them with its default
//! checks: a page written at the wrong offset (the page-by-page RAM
//! comparison) and a faulting vCPU never woken in postcopy (the check added
//! for it, `verify/postcopy.rs`); and that `crossmig defects` catches one
//! that only a stream scenario shows (a page left stale by a ZERO record).
//! The whole catalogue runs under `crossmig defects`; this test only keeps
//! the defect build and the harness's view of it honest. Needs real QEMU
//! (ci/install.sh).
//!
//! Not in the default run: the second build of rust-dest and its
//! dependencies takes over 4 minutes of the 30 a fresh-clone CI run may
//! take on 2 cores. `CROSSMIG_FULL_MATRIX=1 ci/run-tests` runs it, or
//! `cargo test -p harness --test defects_dest -- --ignored`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// `$CROSSMIG_DEFECT_RUST_DEST`, else `cargo build -p rust-dest --features
/// seeded-defects --target-dir target/defects` (incremental after the first).
fn defect_binary() -> PathBuf {
    if let Ok(p) = std::env::var("CROSSMIG_DEFECT_RUST_DEST") {
        return PathBuf::from(p);
    }
    let root = workspace();
    let status = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args(["build", "-p", "rust-dest", "--features", "seeded-defects", "--target-dir"])
        .arg(root.join("target/defects"))
        .current_dir(&root)
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the seeded-defects rust-dest failed");
    root.join("target/defects/debug/rust-dest")
}

/// One `crossmig migrate` into the defect build; returns the exit code and
/// the JSON report (when the migration ran to its checks).
fn migrate(bin: &Path, defect: &str, args: &[&str], tag: &str) -> (Option<i32>, Option<Value>) {
    let json =
        std::env::temp_dir().join(format!("crossmig-defect-{}-{tag}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_crossmig"))
        .arg("migrate")
        .args(args)
        .args(["--timeout", "120", "--json"])
        .arg(&json)
        .env("CROSSMIG_RUST_DEST", bin)
        .env("CROSSMIG_DEFECT", defect)
        .output()
        .expect("run crossmig");
    eprintln!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let report = std::fs::read(&json).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let _ = std::fs::remove_file(&json);
    (out.status.code(), report)
}

fn failed_checks(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .expect("report has checks")
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
#[ignore = "builds a second rust-dest (4 min): CROSSMIG_FULL_MATRIX=1 ci/run-tests"]
fn seeded_dest_defects_are_caught() {
    let bin = defect_binary();

    // A page at the wrong offset: the RAM comparison fails.
    let (code, report) = migrate(&bin, "hugepage-offset", &["--mode", "precopy"], "offset");
    assert_eq!(code, Some(1), "a check must fail (exit 1)");
    let failed = failed_checks(&report.expect("report written"));
    assert!(
        failed.iter().any(|n| n.starts_with("guest RAM identical")),
        "failed checks: {failed:?}"
    );

    // A vCPU never woken: RAM is right; only the wake-up check sees it.
    let (code, report) = migrate(&bin, "never-wake", &["--mode", "postcopy"], "wake");
    assert_eq!(code, Some(1), "a check must fail (exit 1)");
    let failed = failed_checks(&report.expect("report written"));
    assert_eq!(failed, ["faulting vCPUs were woken"], "failed checks");
}

/// A defect only a stream script shows (a zero record after the page was
/// received, left stale): `crossmig defects` plays its scenario into the
/// defect build and QEMU's destination, after the controls (the same script
/// into the normal rust-dest), and catches it with the model comparison.
#[test]
#[ignore = "builds a second rust-dest (4 min): CROSSMIG_FULL_MATRIX=1 ci/run-tests"]
fn stream_scenario_dest_defect_is_caught() {
    let bin = defect_binary();
    let json = std::env::temp_dir().join(format!("crossmig-defects-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_crossmig"))
        .args(["defects", "--only", "dest-zero-keeps-stale", "--json"])
        .arg(&json)
        .env("CROSSMIG_DEFECT_RUST_DEST", &bin)
        .output()
        .expect("run crossmig");
    eprintln!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("json");
    let _ = std::fs::remove_file(&json);
    assert_eq!(out.status.code(), Some(0), "controls pass and the defect is caught");
    let row = &report["rows"][0];
    assert_eq!(row["name"], "dest-zero-keeps-stale");
    let a = row["a_crossmig_rust_dest"].as_str().expect("column a");
    assert!(a.contains("memory equals the script's model"), "{a}");
}
