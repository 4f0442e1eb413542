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

use harness::images::Workload;
use harness::qmp::QmpError;
use harness::vm::dest::{rust_dest_binary, start_dest_with, DestKind};
use harness::vm::qemu::{LaunchOpts, QemuBinary, VmConfig};
use serde_json::{json, Value};

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
        .arg(Workload::Sweep.image_path())
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

/// JSON types and member names (values aside), like the Python script's.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with("x-crossmig"))
                .map(|(k, x)| (k.clone(), shape(x)))
                .collect(),
        ),
        Value::Array(a) => {
            let mut s: Vec<Value> = Vec::new();
            for x in a.iter().map(shape) {
                if !s.contains(&x) {
                    s.push(x);
                }
            }
            Value::Array(s)
        }
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::Null => json!("null"),
        Value::String(_) => json!("str"),
    }
}

/// The same queries and refused arguments through the harness's own QMP
/// client: reply shapes, and for errors the class and QEMU's exact text.
#[tokio::test]
async fn harness_client_same_answers() {
    let qemu = QemuBinary::system().expect("real QEMU (ci/install.sh)");
    let requests: Vec<(&str, Value)> = vec![
        ("query-version", json!({})),
        ("query-status", json!({})),
        ("query-name", json!({})),
        ("query-uuid", json!({})),
        ("query-kvm", json!({})),
        ("query-target", json!({})),
        ("query-cpus-fast", json!({})),
        ("query-machines", json!({})),
        ("query-migrate", json!({})),
        ("query-migrate-capabilities", json!({})),
        ("query-migrate-parameters", json!({})),
        ("human-monitor-command", json!({"command-line": "info migrate_capabilities"})),
        ("human-monitor-command", json!({"command-line": "info migrate_parameters"})),
        ("human-monitor-command", json!({})),
        ("no-such-command", json!({})),
        ("query-status", json!({"bogus": 1})),
        ("migrate-set-parameters", json!({"max-bandwidth": "x"})),
        ("migrate-set-parameters", json!({"max-bandwidth": 1.5})),
        ("migrate-set-parameters", json!({"no-such-parameter": 1})),
        ("migrate-set-parameters", json!({"downtime-limit": 3_000_000})),
        ("migrate-set-parameters", json!({"multifd-channels": 0})),
        ("migrate-set-parameters", json!({"multifd-channels": 256})),
        ("migrate-set-parameters", json!({"cpu-throttle-initial": 100})),
        ("migrate-set-parameters", json!({"xbzrle-cache-size": 1000})),
        ("migrate-set-parameters", json!({"tls-creds": 1})),
        ("migrate-set-parameters", json!({"multifd-compression": "lzma"})),
        ("migrate-set-parameters", json!({"max-bandwidth": -1, "tls-creds": null})),
        ("query-migrate-parameters", json!({})),
        (
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "no-such-cap", "state": true}]}),
        ),
        ("migrate-set-capabilities", json!({"capabilities": [{"capability": "events"}]})),
        ("migrate-set-capabilities", json!({"capabilities": {}})),
        ("migrate-incoming", json!({"uri": 1})),
        ("migrate-recover", json!({})),
    ];
    let mut answers = Vec::new();
    for kind in [DestKind::Qemu, DestKind::Rust] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = VmConfig::new("transcript", 64 << 20);
        cfg.machine = "pc-q35-10.0".into();
        let mut o = LaunchOpts::new(dir.path().join("log"));
        o.extra_args =
            ["-name", "guest=t1", "-uuid", "c7a5fdbd-cdaf-9455-926a-d65c16db1809", "-smp", "2"]
                .map(String::from)
                .to_vec();
        let vm = start_dest_with(kind, &qemu, cfg, o).await.unwrap();
        let mut got = Vec::new();
        for (cmd, args) in &requests {
            got.push(match vm.qmp.execute(cmd, args.clone()).await {
                Ok(v) if cmd.starts_with("human") => v,
                Ok(v) => shape(&v),
                Err(QmpError::Command { class, desc, .. }) => {
                    json!({ "class": class, "desc": desc })
                }
                Err(e) => panic!("{kind} {cmd}: {e}"),
            });
        }
        vm.quit().await;
        answers.push(got);
    }
    for ((cmd, args), (q, r)) in requests.iter().zip(answers[0].iter().zip(&answers[1])) {
        let mut r = r.clone();
        if *cmd == "query-migrate" {
            if let Some(m) = r.as_object_mut() {
                m.remove("ram");
                m.remove("total-time");
            }
        }
        assert!(compatible(q, &r), "{cmd} {args}:\nQEMU:      {q}\nrust-dest: {r}");
    }
}
