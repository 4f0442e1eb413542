//! QEMU's own Python QMP library (`qemu.qmp`, what QEMU's iotests and
//! functional tests use) drives a QEMU 10.0 destination and rust-dest with
//! the same script (`qmp_transcript.py`): management queries, refused
//! arguments, capabilities, `migrate-incoming`, a real QEMU source's
//! precopy, postcopy, and postcopy with a pause and a recovery. The reply
//! shapes, error classes, HMP texts and the destination's event sequence
//! must match. One deliberate difference is allowed: rust-dest's
//! `query-migrate` also reports `ram` and `total-time` (QEMU's destination
//! reports only its status).
//!
//! Skipped only when no Python is found; CI installs `qemu.qmp` into
//! `target/pyvenv` (`ci/install.sh`), and a Python without it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use harness::vm::dest::rust_dest_binary;
use harness::vm::qemu::QemuBinary;
use serde_json::Value;

fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CROSSMIG_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyvenv/bin/python");
    if venv.is_file() {
        return Some(venv);
    }
    Command::new("python3").arg("--version").output().ok().map(|_| PathBuf::from("python3"))
}

fn transcript(py: &Path, mode: &str, qemu: &Path, dest: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/qmp_transcript.py");
    let out = Command::new(py)
        .arg(&script)
        .args([mode.as_ref(), qemu.as_os_str(), dest.as_os_str()])
        .output()
        .expect("running the transcript script");
    assert!(
        out.status.success(),
        "{mode} with destination {}: {}\n{}",
        dest.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("transcript JSON")
}

/// `r` (rust-dest) answers like `q` (QEMU), values aside: same members;
/// a list's element shapes are among QEMU's (the number of machine types
/// and vCPUs are values).
fn compatible(q: &Value, r: &Value) -> bool {
    match (q, r) {
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, x)| b.get(k).is_some_and(|y| compatible(x, y)))
        }
        (Value::Array(a), Value::Array(b)) => {
            a.is_empty() == b.is_empty() && b.iter().all(|y| a.iter().any(|x| compatible(x, y)))
        }
        _ => q == r,
    }
}

fn compare(mode: &str) {
    let Some(py) = python() else {
        eprintln!("SKIPPED: no Python found (ci/install.sh installs it with qemu.qmp)");
        return;
    };
    let ok = Command::new(&py).args(["-c", "import qemu.qmp"]).status();
    assert!(
        ok.is_ok_and(|s| s.success()),
        "{} lacks QEMU's QMP library: run ci/install.sh (pip install qemu.qmp into target/pyvenv)",
        py.display()
    );
    let qemu = QemuBinary::system().expect("real QEMU (ci/install.sh)").path;
    let q = transcript(&py, mode, &qemu, &qemu);
    let mut r = transcript(&py, mode, &qemu, &rust_dest_binary().unwrap());
    assert_eq!(q["events"], r["events"], "{mode}: destination events differ");
    let (qc, rc) = (q["commands"].as_array().unwrap(), r["commands"].as_array_mut().unwrap());
    assert_eq!(qc.len(), rc.len(), "{mode}: transcripts differ in length");
    for (a, b) in qc.iter().zip(rc.iter_mut()) {
        if b["cmd"] == "query-migrate" {
            if let Some(ret) = b["return"].as_object_mut() {
                // The deliberate difference (README, "Deliberate differences").
                ret.remove("ram");
                ret.remove("total-time");
            }
        }
        assert!(
            compatible(a, b),
            "{mode}: the destinations answered differently\nQEMU:      {a}\nrust-dest: {b}"
        );
    }
    println!(
        "{mode}: {} commands and {} events answered alike",
        qc.len(),
        q["events"].as_array().unwrap().len()
    );
}

#[test]
fn transcript_precopy() {
    compare("precopy");
}

#[test]
fn transcript_postcopy() {
    compare("postcopy");
}

#[test]
fn transcript_postcopy_pause_recover() {
    compare("recover");
}
