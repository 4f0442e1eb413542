//! `crossmig analyze` on streams saved by real QEMU sources at test time:
//! `migrate file:` and `exec:cat > FILE` from 7.2, 10.0 and 11.1 (compared
//! byte for byte with QEMU's `scripts/analyze-migration.py`, and RAM
//! extracted equal to the source's), and `mapped-ram` files (with and
//! without 4 multifd channels) from 10.0 and 11.1, which the script cannot
//! read. Versions that are not provisioned are skipped with a message
//! (`crossmig qemu install`); in CI (`CI=true`) a missing version fails. The
//! script is found as in `tests/analyze.rs` (`ci/fetch-analyze-migration.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use harness::analyze::analyze;
use harness::vm::qemu::{QemuVm, VmConfig};

const MEM: u64 = 64 << 20;

/// Pages written into the source's RAM file before saving.
const PAGES: [(u64, u8); 4] = [(0x1000, 0x11), (0x2000, 0x5a), (0x100000, 0x7f), (0x3fff000, 0xff)];

fn script(stream_version: &str) -> Option<PathBuf> {
    let v = if stream_version == "11.1" { "10.2" } else { stream_version };
    let dir = std::env::var_os("CROSSMIG_QEMU_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/crossmig/qemu-src"));
    let p = dir.join(v).join("analyze-migration.py");
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("CROSSMIG_REQUIRE_ANALYZE_SCRIPT").is_some() {
        panic!("{} is missing: run ci/fetch-analyze-migration.sh", p.display());
    }
    eprintln!("SKIP (script comparison): {} not found", p.display());
    None
}

async fn source(series: &str, dir: &Path) -> Option<QemuVm> {
    let bin = match harness::provision::binary(series) {
        Ok(b) => b,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("QEMU {series} is not provisioned: {e:#}");
            }
            eprintln!("SKIPPED: QEMU {series} is not provisioned ({e:#})");
            return None;
        }
    };
    let mut cfg = VmConfig::new(&format!("an{}", series.replace('.', "")), MEM);
    cfg.paused = true;
    let vm = QemuVm::start(&bin, cfg, dir.join(format!("src-{series}.log"))).await.unwrap();
    // A few recognisable pages in guest RAM (the guest never runs).
    let mut ram = std::fs::OpenOptions::new().write(true).open(&vm.cfg.mem_path).unwrap();
    for (addr, b) in PAGES {
        use std::io::{Seek, SeekFrom, Write};
        ram.seek(SeekFrom::Start(addr)).unwrap();
        ram.write_all(&[b; 4096]).unwrap();
    }
    Some(vm)
}

async fn save(vm: &QemuVm, uri: &str, caps: &[&str], params: serde_json::Value) {
    // 7.2 has neither capability (and needs none here).
    if vm.qmp.qemu_version().is_some_and(|v| v.0 >= 9) {
        let caps: Vec<_> = ["mapped-ram", "multifd"]
            .iter()
            .map(|c| json!({"capability": c, "state": caps.contains(c)}))
            .collect();
        vm.qmp.execute("migrate-set-capabilities", json!({ "capabilities": caps })).await.unwrap();
    }
    if params != serde_json::Value::Null {
        vm.qmp.execute("migrate-set-parameters", params).await.unwrap();
    }
    vm.qmp.execute("migrate", json!({ "uri": uri })).await.unwrap();
    vm.qmp
        .wait_migration_status(&["completed"], &["failed", "cancelled"], Duration::from_secs(60))
        .await
        .unwrap();
}

fn mem0(vm: &QemuVm) -> Vec<u8> {
    std::fs::read(&vm.cfg.mem_path).unwrap()
}

fn crossmig(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_crossmig")).arg("analyze").args(args).output().unwrap()
}

/// A plain stream file: the script's output, ours, and the extracted RAM.
fn check_plain(series: &str, file: &Path, ram: &[u8]) {
    let a = analyze(&[file.to_path_buf()], None).unwrap();
    assert!(a.damage.is_empty(), "{series}: {:?}", a.damage);
    assert!(a.devices.iter().all(|d| d.fields.is_some()), "{series}: every device decoded");
    let mem = a.blocks.iter().find(|b| b.name == "mem0").unwrap();
    assert_eq!(mem.pages, PAGES.len() as u64, "{series}");
    assert_eq!(mem.never_sent_pages, 0);
    let dir = tempfile::tempdir().unwrap();
    harness::analyze::extract::extract(&a, dir.path()).unwrap();
    assert!(std::fs::read(dir.path().join("mem0")).unwrap() == ram, "{series}: extracted mem0");
    if let Some(sc) = script(series) {
        for (d, extra) in [("state", None), ("desc", Some("--desc"))] {
            let want = Command::new("python3")
                .arg(&sc)
                .arg("-f")
                .arg(file)
                .args(["-d", d])
                .output()
                .unwrap();
            assert!(want.status.success(), "{}", String::from_utf8_lossy(&want.stderr));
            let mut args =
                vec!["--format".as_ref(), "analyze-migration".as_ref(), file.as_os_str()];
            args.extend(extra.map(std::ffi::OsStr::new));
            let got = crossmig(&args);
            assert!(
                got.stdout == want.stdout,
                "{series} {}: -d {d} differs from the script",
                file.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn file_and_exec_saves_equal_the_script() {
    for series in ["7.2", "10.0", "11.1"] {
        let tmp = tempfile::tempdir().unwrap();
        // `file:` exists from QEMU 8.2 on; `exec:` everywhere. A source
        // saves once (it stays paused after a completed migration).
        let uris: &[&str] = if series == "7.2" { &["exec"] } else { &["file", "exec"] };
        for kind in uris {
            let Some(vm) = source(series, tmp.path()).await else { return };
            let ram = mem0(&vm);
            let f = tmp.path().join(format!("{kind}.bin"));
            let uri = match *kind {
                "file" => format!("file:{}", f.display()),
                _ => format!("exec:cat > {}", f.display()),
            };
            save(&vm, &uri, &[], serde_json::Value::Null).await;
            vm.quit().await;
            check_plain(series, &f, &ram);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mapped_ram_files() {
    for series in ["10.0", "11.1"] {
        let tmp = tempfile::tempdir().unwrap();
        for (name, caps, params) in [
            ("mapped.bin", &["mapped-ram"][..], serde_json::Value::Null),
            ("mapped-mf4.bin", &["mapped-ram", "multifd"][..], json!({"multifd-channels": 4})),
        ] {
            let Some(vm) = source(series, tmp.path()).await else { return };
            let ram = mem0(&vm);
            let f = tmp.path().join(name);
            save(&vm, &format!("file:{}", f.display()), caps, params).await;
            vm.quit().await;
            let a = analyze(std::slice::from_ref(&f), None).unwrap();
            assert!(a.damage.is_empty(), "{series} {name}: {:?}", a.damage);
            let caps = a.header.as_ref().unwrap().capabilities.clone().unwrap_or_default();
            assert!(caps.iter().any(|c| c == "mapped-ram"), "{series}: {caps:?}");
            assert_eq!(a.mapped_ram.len(), a.blocks.len());
            let m = a.mapped_ram.iter().find(|b| b.name == "mem0").unwrap();
            assert_eq!((m.version, m.page_size), (1, 4096));
            assert_eq!(m.pages_offset % 4096, 0);
            // Zero pages are not written: the bitmap has the others.
            assert_eq!(m.pages_present, PAGES.len() as u64, "{series} {name}");
            assert!(a.devices.iter().all(|d| d.fields.is_some()), "{series} {name}");
            let dir = tempfile::tempdir().unwrap();
            harness::analyze::extract::extract(&a, dir.path()).unwrap();
            assert!(
                std::fs::read(dir.path().join("mem0")).unwrap() == ram,
                "{series} {name}: mem0"
            );
            let out = crossmig(&[f.as_os_str()]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success() && text.contains("mapped-ram mem0"), "{text}");
            if let Some(sc) = script(series) {
                let r = Command::new("python3")
                    .arg(&sc)
                    .arg("-f")
                    .arg(&f)
                    .args(["-d", "state"])
                    .output()
                    .unwrap();
                assert!(
                    !r.status.success(),
                    "{series}: the script was expected to fail on mapped-ram"
                );
                // Ours keeps the script's shape.
                let got =
                    crossmig(&["--format".as_ref(), "analyze-migration".as_ref(), f.as_os_str()]);
                let j: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
                assert_eq!(j.as_object().unwrap().len(), 1 + a.devices.len());
            }
        }
    }
}

/// A live postcopy migration (10.0 source, sweeping guest, postcopy-preempt)
/// into rust-dest, every connection recorded with its return path
/// (`crossmig migrate --keep-recording`), then analysed: the timeline, the
/// preempt channel's pages, and every page request answered.
#[tokio::test(flavor = "multi_thread")]
async fn recorded_postcopy_with_return_path() {
    use harness::drive::migrate::{migrate, MigrateOpts, Mode};
    use harness::vm::dest::DestKind;
    let Ok(qemu) = harness::provision::binary("10.0") else {
        eprintln!("SKIPPED: QEMU 10.0 is not provisioned");
        return;
    };
    let keep = tempfile::tempdir().unwrap();
    let mut o = MigrateOpts::new(DestKind::Rust, Mode::Postcopy, qemu);
    o.mem_bytes = 128 << 20;
    o.timeout = Duration::from_secs(120);
    o.extra_caps = vec![("postcopy-preempt".into(), true)];
    o.keep_recording = Some(keep.path().to_path_buf());
    let r = migrate(&o, |_| {}).await.unwrap();
    assert!(r.ok(), "{}", r.summary());
    let a = analyze(&[keep.path().to_path_buf()], None).unwrap();
    assert!(a.damage.is_empty(), "{:?}", a.damage);
    let roles: Vec<_> = a.inputs.iter().map(|i| i.role).collect();
    use harness::analyze::Role;
    assert_eq!(roles, [Role::Main, Role::ReturnPath, Role::Preempt], "{:?}", a.inputs);
    let p = a.postcopy.as_ref().unwrap();
    assert!(p.advise.is_some() && p.listen.is_some() && p.run.is_some() && !p.discards.is_empty());
    let req = p.requests.as_ref().expect("page requests on the recorded return path");
    assert!(req.pages > 0, "{req:?}");
    assert_eq!(req.answered_pages, req.pages, "every requested page was sent after LISTEN");
    assert_eq!(a.return_path[0].shut, Some(0));
    assert!(p.preempt_pages > 0);
    for b in &a.blocks {
        assert_eq!(b.never_sent_pages, 0, "{}", b.name);
    }
    let text = harness::analyze::text::summary(&a, false);
    println!("{text}");
    assert!(text.contains("of them sent after LISTEN"), "{text}");
}

/// A postcopy migration paused and recovered once: the recovery channel
/// continues the stream (RECV_BITMAP, POSTCOPY_RESUME, the rest of RAM).
#[tokio::test(flavor = "multi_thread")]
async fn recorded_postcopy_recovery() {
    use harness::analyze::{EventKind, Role};
    use harness::drive::migrate::{migrate, MigrateOpts, Mode};
    use harness::vm::dest::DestKind;
    let Ok(qemu) = harness::provision::binary("10.0") else {
        eprintln!("SKIPPED: QEMU 10.0 is not provisioned");
        return;
    };
    let keep = tempfile::tempdir().unwrap();
    let mut o = MigrateOpts::new(DestKind::Rust, Mode::Postcopy, qemu);
    o.mem_bytes = 128 << 20;
    o.timeout = Duration::from_secs(120);
    o.recover_cuts = 1;
    o.keep_recording = Some(keep.path().to_path_buf());
    let r = migrate(&o, |_| {}).await.unwrap();
    assert!(r.ok(), "{}", r.summary());
    let a = analyze(&[keep.path().to_path_buf()], None).unwrap();
    assert!(a.damage.is_empty(), "{:?}", a.damage);
    assert!(a.inputs.iter().any(|i| i.role == Role::Recovery), "{:?}", a.inputs);
    let p = a.postcopy.as_ref().unwrap();
    assert_eq!(p.resumes.len(), 1);
    assert!(a.events.iter().any(|e| matches!(e.kind, EventKind::Channel { .. })));
    assert!(a
        .return_path
        .iter()
        .any(|r| r.recv_bitmaps == a.blocks.len() as u64 && r.resume_acks == 1));
    assert!(a.events.last().is_some_and(|e| matches!(e.kind, EventKind::Eof)));
    for b in &a.blocks {
        assert_eq!(b.never_sent_pages, 0, "{}", b.name);
    }
}
