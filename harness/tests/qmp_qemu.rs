//! Real-QEMU tests for the QMP client, process guards and QEMU launcher.
//! No mocks: every test starts real `qemu-system-x86_64` processes with TCG.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::qmp::{MigrationStatus, QmpError, RunState};
use harness::vm::procs::{self, ChildGuard, PathGuard};
use harness::vm::qemu::{vm_args, QemuBinary, QemuVm, VmConfig};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

/// Is `pid` alive (exists and is not a zombie)?
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // state is the field after the parenthesised comm
            let state = s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// Assert that nothing created for these VMs survived.
fn assert_cleaned(pids: &[u32], paths: &[PathBuf]) {
    for &pid in pids {
        assert!(!alive(pid), "process {pid} still alive after cleanup");
    }
    for p in paths {
        assert!(!p.exists(), "{} still exists after cleanup", p.display());
    }
}

struct Vm {
    vm: QemuVm,
    pids: Vec<u32>,
    paths: Vec<PathBuf>,
}

async fn start(tag: &str, dir: &Path, mem: u64, f: impl FnOnce(&mut VmConfig)) -> Vm {
    let bin = QemuBinary::system().expect("qemu binary");
    let mut cfg = VmConfig::new(tag, mem);
    cfg.serial_log = Some(dir.join(format!("{tag}-serial.log")));
    f(&mut cfg);
    let paths = vec![cfg.mem_path.clone(), cfg.qmp_socket.clone()];
    let log = dir.join(format!("{tag}-qemu.log"));
    let t = Instant::now();
    let vm = QemuVm::start(&bin, cfg, log).await.expect("start QEMU");
    eprintln!("[{tag}] QEMU pid {} up + QMP connected in {:?}", vm.pid(), t.elapsed());
    Vm { pids: vec![vm.pid()], paths, vm }
}

#[test]
fn version_and_args() {
    let bin = QemuBinary::system().unwrap();
    let (maj, min, mic) = bin.version().unwrap();
    eprintln!("QEMU {maj}.{min}.{mic} at {}", bin.path.display());
    assert!(maj >= 7);

    let mut cfg = VmConfig::new("args", 128 * MIB);
    cfg.incoming = Some("tcp:127.0.0.1:4444".into());
    cfg.paused = true;
    cfg.disk = Some("/tmp/disk.img".into());
    let a = vm_args(&cfg);
    let s = a.join(" ");
    assert!(s.starts_with("-accel tcg -machine q35,memory-backend=mem0 -m 128M -object memory-backend-file,id=mem0,size=134217728,mem-path=/dev/shm/args-"), "{s}");
    assert!(s.contains("-nodefaults -display none -serial null -drive file=/tmp/disk.img,format=raw,if=ide -qmp unix:"), "{s}");
    assert!(s.contains("-incoming tcp:127.0.0.1:4444 -S -name args-"), "{s}");
    assert_eq!(
        harness::vm::qemu::parse_qemu_version(
            "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1)\n"
        ),
        Some((10, 0, 2))
    );
    assert_eq!(
        harness::vm::qemu::parse_qemu_version("QEMU emulator version 7.2.15\n"),
        Some((7, 2, 15))
    );
}

#[tokio::test]
async fn qmp_basics() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let Vm { vm, pids, paths } = start("qmpbasic", dir.path(), 64 * MIB, |c| c.paused = true).await;
    let qmp = &vm.qmp;
    let w = Duration::from_secs(10);

    assert!(vm.cfg.mem_path.exists(), "RAM backend file exists");
    assert_eq!(std::fs::metadata(&vm.cfg.mem_path).unwrap().len(), 64 * MIB);

    // query-version
    let v = qmp.execute("query-version", Value::Null).await.unwrap();
    let major = v["qemu"]["major"].as_u64().unwrap();
    assert!(major >= 7, "{v}");
    assert_eq!(qmp.qemu_version().unwrap().0, major);
    assert!(qmp.capabilities().is_some(), "greeting decodes with qapi types");

    // query-status while -S
    let st = qmp.execute("query-status", Value::Null).await.unwrap();
    assert_eq!(st["running"], json!(false), "{st}");
    assert!(matches!(st["status"].as_str(), Some("prelaunch") | Some("paused")), "{st}");
    // typed command via qapi's generated schema
    let typed = qmp.execute_typed(qapi::qmp::query_status {}).await.unwrap();
    assert!(!typed.running);

    // cont / stop / cont with events
    qmp.execute("cont", json!({})).await.unwrap();
    let e = qmp.wait_event_named("RESUME", w).await.unwrap();
    assert!(e.timestamp.is_some());
    assert_eq!(qmp.run_state().await.unwrap(), RunState::Running);
    qmp.execute("stop", Value::Null).await.unwrap();
    let stop = qmp.wait_event(|e| e.name == "STOP", w).await.unwrap();
    assert!(stop.seq > e.seq);
    assert!(matches!(stop.typed(), Some(qapi::qmp::Event::STOP { .. })), "typed STOP");
    assert_eq!(qmp.run_state().await.unwrap(), RunState::Paused);
    qmp.execute("cont", Value::Null).await.unwrap();
    // Early events: sleep so RESUME is already in the log before waiting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let e2 = qmp.wait_event_named("RESUME", Duration::from_millis(1)).await.unwrap();
    assert!(e2.seq > stop.seq);
    // cursor moved past everything: another RESUME must not match the old one
    let err = qmp.wait_event_named("RESUME", Duration::from_millis(200)).await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err:#}");
    // but the explicit-start variant still sees all events
    let first = qmp.wait_event_from(0, |e| e.name == "RESUME", w).await.unwrap();
    assert_eq!(first.seq, e.seq);
    let names: Vec<String> = qmp.events().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["RESUME", "STOP", "RESUME"], "{names:?}");

    // unknown command
    let err = qmp.execute("no-such-command-xyz", Value::Null).await.unwrap_err();
    assert_eq!(err.class(), Some("CommandNotFound"), "{err}");
    assert!(err.desc().unwrap().contains("no-such-command-xyz"), "{err}");
    // bad arguments
    let err = qmp.execute("query-status", json!({"bogus": 1})).await.unwrap_err();
    assert_eq!(err.class(), Some("GenericError"), "{err}");
    let err = qmp.execute("query-status", json!([1])).await.unwrap_err();
    assert!(matches!(err, QmpError::Protocol { .. }), "{err}");

    // query-migrate, untyped
    let m = qmp.query_migrate().await.unwrap();
    assert!(m.is_object(), "{m}");
    assert_eq!(qmp.migration_status().await.unwrap(), MigrationStatus::of(&m));
    eprintln!("query-migrate before any migration: {m}");

    // capabilities / parameters helpers
    qmp.set_capabilities(&[("events", true)]).await.unwrap();
    qmp.set_parameters(json!({"max-bandwidth": 1_000_000_000u64})).await.unwrap();
    let caps = qmp.execute("query-migrate-capabilities", Value::Null).await.unwrap();
    assert!(caps
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["capability"] == "events" && c["state"] == true));
    let p = qmp.execute("query-migrate-parameters", Value::Null).await.unwrap();
    assert_eq!(p["max-bandwidth"], json!(1_000_000_000u64));

    // concurrent commands on one connection
    let (a, b, c) = tokio::join!(
        qmp.execute("query-name", Value::Null),
        qmp.execute("query-kvm", Value::Null),
        qmp.execute("query-version", Value::Null)
    );
    assert_eq!(a.unwrap()["name"].as_str().unwrap(), vm.cfg.vm_name());
    assert_eq!(b.unwrap()["enabled"], json!(false));
    assert!(c.unwrap()["qemu"].is_object());

    // a command timeout does not break the connection
    let r = qmp.execute_timeout("query-status", Value::Null, Duration::from_nanos(1)).await;
    if let Err(e) = &r {
        assert!(e.is_timeout(), "{e}");
    }
    assert!(qmp.execute("query-status", Value::Null).await.is_ok());

    let st = vm.quit().await;
    assert!(st.is_some_and(|s| s.success()), "clean exit: {st:?}");
    assert_cleaned(&pids, &paths);
    eprintln!("qmp_basics took {:?}", t0.elapsed());
}

#[tokio::test]
async fn qemu_to_qemu_precopy() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let port = procs::free_tcp_port();
    let uri = format!("tcp:127.0.0.1:{port}");

    let mut src = start("mig-src", dir.path(), 128 * MIB, |_| {}).await;
    let dst_uri = uri.clone();
    let dst = start("mig-dst", dir.path(), 128 * MIB, move |c| {
        c.incoming = Some(dst_uri);
        c.paused = true;
    })
    .await;

    for vm in [&src.vm, &dst.vm] {
        vm.qmp.set_capabilities(&[("events", true)]).await.unwrap();
    }
    assert_eq!(src.vm.qmp.run_state().await.unwrap(), RunState::Running);
    assert_eq!(dst.vm.qmp.run_state().await.unwrap(), RunState::Inmigrate);
    // let the source run a bit so SeaBIOS has dirtied RAM
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t = Instant::now();
    src.vm.qmp.execute("migrate", json!({ "uri": uri })).await.unwrap();
    let fail = [MigrationStatus::Failed, MigrationStatus::Cancelled];
    let timeout = Duration::from_secs(60);
    let (s, d) = tokio::join!(
        src.vm.qmp.wait_migration_status(&[MigrationStatus::Completed], &fail, timeout),
        dst.vm.qmp.wait_migration_status(&[MigrationStatus::Completed], &fail, timeout)
    );
    let (s, d) = (s.unwrap(), d.unwrap());
    eprintln!("migration completed in {:?}", t.elapsed());
    eprintln!("source query-migrate: {s}");
    eprintln!("destination query-migrate: {d}");
    assert!(s["ram"]["total"].as_u64().unwrap() >= 128 * MIB, "{s}");

    // MIGRATION events (tolerantly parsed) on both sides
    for vm in [&src.vm, &dst.vm] {
        vm.qmp
            .wait_event_from(
                0,
                |e| e.migration_status() == Some(MigrationStatus::Completed),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let statuses: Vec<String> = src
        .vm
        .qmp
        .events()
        .iter()
        .filter(|e| e.name == "MIGRATION")
        .map(|e| e.data_str("status").unwrap_or("?").to_owned())
        .collect();
    eprintln!("source MIGRATION events: {statuses:?}");
    src.vm.qmp.wait_event_from(0, |e| e.name == "STOP", Duration::from_secs(5)).await.unwrap();
    assert_eq!(src.vm.qmp.run_state().await.unwrap(), RunState::Postmigrate);
    assert_eq!(dst.vm.qmp.run_state().await.unwrap(), RunState::Paused);

    // both guests are stopped: RAM files must be identical
    let t = Instant::now();
    compare_files(&src.vm.cfg.mem_path, &dst.vm.cfg.mem_path);
    eprintln!("128 MiB compare in {:?}", t.elapsed());

    let (mut pids, mut paths) = (std::mem::take(&mut src.pids), std::mem::take(&mut src.paths));
    pids.extend(&dst.pids);
    paths.extend(dst.paths.iter().cloned());
    let (a, b) = tokio::join!(src.vm.quit(), dst.vm.quit());
    assert!(a.is_some() && b.is_some(), "{a:?} {b:?}");
    assert_cleaned(&pids, &paths);
    eprintln!("qemu_to_qemu_precopy took {:?}", t0.elapsed());
}

fn compare_files(a: &Path, b: &Path) {
    let (ma, mb) = (std::fs::metadata(a).unwrap(), std::fs::metadata(b).unwrap());
    assert_eq!(ma.len(), mb.len(), "sizes differ");
    let mut fa = std::fs::File::open(a).unwrap();
    let mut fb = std::fs::File::open(b).unwrap();
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut off = 0u64;
    let mut nonzero = 0u64;
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            break;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            let i = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y).unwrap();
            panic!("RAM differs at offset {:#x}", off + i as u64);
        }
        nonzero += ba[..n].chunks(4096).filter(|p| p.iter().any(|&x| x != 0)).count() as u64;
        off += n as u64;
    }
    assert_eq!(off, ma.len());
    eprintln!("RAM identical ({off} bytes, {nonzero} non-zero 4K pages)");
    assert!(nonzero > 0, "expected some non-zero guest pages");
}

#[tokio::test]
async fn startup_failure_reports_log() {
    let dir = tempfile::tempdir().unwrap();
    let bin = QemuBinary::system().unwrap();
    let mut cfg = VmConfig::new("badstart", 32 * MIB);
    cfg.extra.push("-this-option-does-not-exist".into());
    let paths = [cfg.mem_path.clone(), cfg.qmp_socket.clone()];
    let t = Instant::now();
    let err = QemuVm::start(&bin, cfg, dir.path().join("bad.log")).await.unwrap_err();
    let msg = format!("{err:#}");
    eprintln!("startup failure detected in {:?}: {msg}", t.elapsed());
    assert!(msg.contains("this-option-does-not-exist"), "{msg}");
    assert!(msg.contains("exited during startup"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_cleaned(&[], &paths);
}

#[tokio::test]
async fn drop_without_quit_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let Vm { vm, pids, paths } = start("dropvm", dir.path(), 32 * MIB, |_| {}).await;
    assert!(alive(pids[0]));
    let qmp_sock = vm.cfg.qmp_socket.clone();
    assert!(qmp_sock.exists());
    // simulate a panic unwinding through a test holding the VM
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _vm = vm;
        panic!("boom");
    }));
    assert!(r.is_err());
    assert_cleaned(&pids, &paths);
}

#[test]
fn child_guard_kills_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sh.log");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 300 & echo child=$!; echo to-stderr >&2; wait"]);
    let g = ChildGuard::spawn(cmd, &log).unwrap();
    let leader = g.pid();
    let deadline = Instant::now() + Duration::from_secs(10);
    let grandchild: u32 = loop {
        let s = g.log_tail(4096);
        if let Some(l) = s.lines().find_map(|l| l.strip_prefix("child=")) {
            if s.contains("to-stderr") {
                break l.trim().parse().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "no output: {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(g.is_running());
    assert!(procs::registered_pgids().contains(&(leader as i32)));
    assert!(alive(grandchild));
    drop(g);
    std::thread::sleep(Duration::from_millis(100)); // grandchild reaping by init
    assert!(!alive(leader));
    assert!(!alive(grandchild), "grandchild {grandchild} survived");
    assert!(!procs::registered_pgids().contains(&(leader as i32)));

    // wait_exit / exit status
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "exit 3"]);
    let mut g = ChildGuard::spawn(cmd, &log).unwrap();
    let st = g.wait_exit(Duration::from_secs(5)).unwrap();
    assert_eq!(st.code(), Some(3));
    assert!(!g.is_running());
    let mut g = ChildGuard::spawn(Command::new("sleep").tap_arg("300"), &log).unwrap();
    assert!(g.wait_exit(Duration::from_millis(50)).is_none());
    assert!(g.is_running());
}

trait TapArg {
    fn tap_arg(self, a: &str) -> Self;
}
impl TapArg for Command {
    fn tap_arg(mut self, a: &str) -> Self {
        self.arg(a);
        self
    }
}

#[test]
fn path_guard_and_names() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join(procs::unique_name("pg"));
    std::fs::write(&f, b"x").unwrap();
    let d = dir.path().join("subdir");
    std::fs::create_dir_all(d.join("a/b")).unwrap();
    {
        let _g = PathGuard::new(&f);
        let _h = PathGuard::new(&d);
        let _missing = PathGuard::new(dir.path().join("never-created"));
        assert!(procs::registered_paths().contains(&f));
    }
    assert!(!f.exists() && !d.exists());
    assert!(!procs::registered_paths().contains(&f));
    let kept = PathGuard::new(&f).keep();
    std::fs::write(&kept, b"y").unwrap();
    assert!(kept.exists());

    let names: std::collections::HashSet<String> =
        (0..1000).map(|_| procs::unique_name("x")).collect();
    assert_eq!(names.len(), 1000);
    assert!(names.iter().all(|n| n.starts_with(&format!("x-{}-", std::process::id()))));
    let p = procs::free_tcp_port();
    assert!(p > 0);
    std::net::TcpListener::bind(("127.0.0.1", p)).expect("port is free");
}

/// Helper run in a child process by `signal_cleanup_kills_and_removes`.
#[test]
fn signal_helper() {
    let Ok(file) = std::env::var("CROSSMIG_SIGNAL_HELPER") else {
        return;
    };
    procs::install_signal_cleanup();
    let log = PathBuf::from(format!("{file}.log"));
    let g = ChildGuard::spawn(Command::new("sleep").tap_arg("300"), &log).unwrap();
    std::fs::write(&file, b"x").unwrap();
    let pg = PathGuard::new(&file);
    let lg = PathGuard::new(&log);
    println!("READY {}", g.pid());
    std::thread::sleep(Duration::from_secs(60));
    drop((g, pg, lg));
    panic!("signal did not arrive");
}

#[test]
fn signal_cleanup_kills_and_removes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sigfile");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "signal_helper", "--nocapture", "--test-threads=1"])
        .env("CROSSMIG_SIGNAL_HELPER", &file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let sleeper: u32 = loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "helper ended early");
        // libtest prints "test signal_helper ... " on the same line
        if let Some((_, p)) = line.trim().split_once("READY ") {
            break p.parse().unwrap();
        }
    };
    assert!(alive(sleeper) && file.exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(130), "{st:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(!alive(sleeper), "sleep {sleeper} survived");
    assert!(!file.exists(), "file survived");
    assert!(!PathBuf::from(format!("{}.log", file.display())).exists());
}

/// QEMU 10.0 cannot emit values newer than its own schema, so tolerance of
/// unknown events / enum values (e.g. MIGRATION status "postcopy-device"
/// from QEMU >= 10.1) is checked against a scripted QMP peer on a real unix
/// socket. This is the only test in this file that does not talk to QEMU.
#[tokio::test]
async fn tolerant_of_unknown_events_and_statuses() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fake.qmp");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        let mut lines = tokio::io::BufReader::new(r).lines();
        w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 9, \"major\": 99}, \"package\": \"\"}, \"capabilities\": [\"oob\", \"future-cap\"]}}\r\n").await.unwrap();
        let mut n = 0;
        while let Some(l) = lines.next_line().await.unwrap() {
            let v: Value = serde_json::from_str(&l).unwrap();
            let id = v["id"].clone();
            let reply = match v["execute"].as_str().unwrap() {
                "qmp_capabilities" => json!({"return": {}, "id": id}),
                "query-migrate" => {
                    n += 1;
                    let ev = json!({"event": "MIGRATION", "data": {"status": "postcopy-device"},
                                    "timestamp": {"seconds": 1700000000, "microseconds": 5}});
                    let ev2 = json!({"event": "SOME_FUTURE_EVENT", "data": {"x": [1, 2]},
                                     "timestamp": {"seconds": -1, "microseconds": -1}});
                    w.write_all(format!("{ev}\r\n{ev2}\r\n").as_bytes()).await.unwrap();
                    let st = if n < 3 { "postcopy-active" } else { "postcopy-device" };
                    json!({"return": {"status": st, "some-new-field": true}, "id": id})
                }
                other => {
                    json!({"error": {"class": "FutureErrorClass", "desc": format!("no {other}")}, "id": id})
                }
            };
            w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
        }
    });
    let qmp = harness::qmp::Qmp::connect(&sock, Duration::from_secs(5)).await.unwrap();
    assert_eq!(qmp.qemu_version(), Some((99, 9, 0)));
    let v = qmp
        .wait_migration_status(
            &[MigrationStatus::PostcopyDevice],
            &[MigrationStatus::Failed],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(v["some-new-field"], json!(true));
    let e = qmp
        .wait_event(|e| e.data_str("status") == Some("postcopy-device"), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(e.timestamp.is_some());
    assert!(e.typed().is_none(), "qapi's closed enum cannot represent this");
    let f = qmp.wait_event_named("SOME_FUTURE_EVENT", Duration::from_secs(5)).await.unwrap();
    assert_eq!(f.data["x"], json!([1, 2]));
    assert!(f.timestamp.is_none());
    let err = qmp.execute("frobnicate", Value::Null).await.unwrap_err();
    assert_eq!((err.class(), err.desc()), (Some("FutureErrorClass"), Some("no frobnicate")));
    let err = qmp
        .wait_migration_status(&["completed"], &["postcopy-device"], Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("postcopy-device"), "{err}");
    drop(qmp);
    server.await.unwrap();
}

/// A fake monitor that writes `before` (lines) ahead of its greeting, then
/// answers `qmp_capabilities`.
fn fake_monitor(sock: &Path, before: Vec<Value>) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let listener = tokio::net::UnixListener::bind(sock).unwrap();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        for v in before {
            w.write_all(format!("{v}\r\n").as_bytes()).await.unwrap();
        }
        w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n").await.unwrap();
        let mut lines = tokio::io::BufReader::new(r).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let v: Value = serde_json::from_str(&l).unwrap();
            let reply = json!({"return": {}, "id": v["id"]});
            if w.write_all(format!("{reply}\r\n").as_bytes()).await.is_err() {
                break;
            }
        }
    })
}

/// QEMU writes events to a monitor whose connection it has accepted but not
/// yet greeted (monitor/qmp.c sets negotiation mode only when it handles the
/// open event); a source started without -S can so send RESUME first. The
/// client keeps such events and connects.
#[tokio::test]
async fn an_event_ahead_of_the_greeting_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("early.qmp");
    let resume =
        json!({"timestamp": {"seconds": 1796134345, "microseconds": 124610}, "event": "RESUME"});
    let server = fake_monitor(&sock, vec![resume]);
    let qmp = harness::qmp::Qmp::connect(&sock, Duration::from_secs(5)).await.unwrap();
    assert_eq!(qmp.qemu_version(), Some((10, 0, 2)));
    let ev = qmp.wait_event_named("RESUME", Duration::from_secs(1)).await.unwrap();
    assert_eq!(ev.seq, 0);
    assert!(ev.timestamp.is_some());
    assert_eq!(qmp.event_count(), 1);
    drop(qmp);
    server.await.unwrap();
}

/// A peer whose first line is neither a greeting nor an event is not a QMP
/// monitor, and neither is one that sends events without end.
#[tokio::test]
async fn a_peer_that_never_greets_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("reply.qmp");
    let server = fake_monitor(&sock, vec![json!({"return": {}})]);
    let err = harness::qmp::Qmp::connect(&sock, Duration::from_secs(5)).await.unwrap_err();
    assert!(err.to_string().contains(r#"unexpected QMP greeting: {"return":{}}"#), "{err}");
    server.abort();

    let sock = dir.path().join("chatty.qmp");
    let stop = json!({"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}});
    let server = fake_monitor(&sock, vec![stop; 100]);
    let err = harness::qmp::Qmp::connect(&sock, Duration::from_secs(5)).await.unwrap_err();
    assert!(
        err.to_string().contains("unexpected QMP greeting") && err.to_string().contains("STOP"),
        "{err}"
    );
    server.abort();
}
