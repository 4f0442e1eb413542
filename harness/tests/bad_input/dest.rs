//! A fresh destination (rust-dest or the QEMU oracle) per case: replay
//! bytes into it and check how it failed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::qmp::{MigrationStatus, RunState};
use harness::vm::dest::{start_dest, DestKind};
use harness::vm::procs::free_tcp_port;
use harness::vm::qemu::{QemuVm, VmConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

use crate::record::{qemu, MEM, WAIT};

/// Does `desc` contain "byte offset N" (not followed by more digits)?
pub fn names_offset(desc: &str, n: u64) -> bool {
    let pat = format!("byte offset {n}");
    desc.match_indices(&pat)
        .any(|(i, _)| !desc[i + pat.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

pub struct Dest {
    pub kind: DestKind,
    pub vm: QemuVm,
    pub port: u16,
    paths: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

/// How a destination ended up after a replay.
#[derive(Debug)]
pub struct Outcome {
    /// `failed`, `completed`, or `exited` (the process is gone).
    pub status: String,
    pub desc: String,
    pub exit: Option<String>,
    /// Bytes the destination sent back on the migration socket.
    pub rp: Vec<u8>,
    /// The destination closed the socket.
    pub rp_closed: bool,
    /// From the last byte written to the final status.
    pub detect: Duration,
    pub log: String,
}

impl Dest {
    pub async fn start(kind: DestKind, name: &str) -> Dest {
        Self::start_with(kind, name, false).await
    }

    /// `qemu_exit_on_error`: QEMU's default (exit the process on a failed
    /// incoming migration); otherwise QEMU stays up and shows the error in
    /// query-migrate. rust-dest always stays up.
    pub async fn start_with(kind: DestKind, name: &str, qemu_exit_on_error: bool) -> Dest {
        let dir = tempfile::Builder::new().prefix("badin-").tempdir().unwrap();
        let cfg = VmConfig::new(&format!("badin-{name}-{}", kind.name()), MEM);
        let paths = vec![cfg.mem_path.clone(), cfg.qmp_socket.clone()];
        let vm = start_dest(kind, &qemu(), cfg, dir.path().join("dest.log"))
            .await
            .expect("starting the destination");
        let port = free_tcp_port();
        let mut args = json!({"uri": format!("tcp:127.0.0.1:{port}")});
        if kind == DestKind::Qemu && !qemu_exit_on_error {
            // keep QEMU up after a failure so query-migrate shows its error
            args["exit-on-error"] = json!(false);
        }
        vm.execute("migrate-incoming", args).await.expect("migrate-incoming");
        vm.qmp
            .wait_migration_status(&[MigrationStatus::Setup], &[MigrationStatus::Failed], WAIT)
            .await
            .expect("destination in setup");
        Dest { kind, vm, port, paths, _dir: dir }
    }

    pub async fn connect(&self) -> TcpStream {
        for _ in 0..100 {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", self.port)).await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("cannot connect to the {} destination on port {}", self.kind, self.port)
    }

    /// Poll until the incoming migration is failed/completed or the
    /// process exited; `None` on timeout (a hang).
    pub async fn wait_end(
        &mut self,
        timeout: Duration,
    ) -> Option<(String, String, Option<String>)> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.vm.child.is_running() {
                let st = self.vm.child.wait_exit_async(Duration::from_secs(2)).await;
                return Some(("exited".into(), String::new(), st.map(|s| s.to_string())));
            }
            if let Ok(v) = self.vm.qmp.query_migrate().await {
                let s = MigrationStatus::of(&v);
                if matches!(s, MigrationStatus::Failed | MigrationStatus::Completed) {
                    return Some((
                        s.to_string(),
                        v["error-desc"].as_str().unwrap_or("").to_string(),
                        None,
                    ));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }

    pub fn log(&self) -> String {
        self.vm.log_tail(64 * 1024)
    }

    /// rust-dest must still answer QMP after the failure and must not have
    /// panicked.
    pub async fn check_alive(&self, ctx: &str) {
        if self.kind != DestKind::Rust {
            return;
        }
        let st = self.vm.execute("query-status", Value::Null).await;
        let ver = self.vm.execute("query-version", Value::Null).await;
        assert!(
            st.is_ok() && ver.is_ok(),
            "{ctx}: rust-dest stopped answering QMP: {st:?} {ver:?}\nlog:\n{}",
            self.log()
        );
        let rs = RunState::from(st.unwrap()["status"].as_str().unwrap_or(""));
        assert!(
            matches!(rs, RunState::Postmigrate | RunState::Inmigrate),
            "{ctx}: run state after a failed migration is {rs:?}"
        );
        assert!(self.vm.child.is_running(), "{ctx}: rust-dest exited");
        let log = self.log();
        assert!(!log.contains("panicked"), "{ctx}: rust-dest panicked:\n{log}");
    }

    /// Quit and check nothing is left behind.
    pub async fn finish(self) {
        let paths = self.paths.clone();
        self.vm.quit().await;
        for p in paths {
            assert!(!p.exists(), "{} left behind", p.display());
        }
    }
}

/// Write `bytes` to a fresh connection to `d`, then shut down the write side
/// (`close`) or keep the connection open, and wait for the outcome.
pub async fn replay_into(d: &mut Dest, bytes: &[u8], close: bool) -> (Outcome, OwnedWriteHalf) {
    let sock = d.connect().await;
    let (mut r, mut w) = sock.into_split();
    let mut reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        let closed = loop {
            match r.read(&mut buf).await {
                Ok(0) => break true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => break true,
            }
        };
        (got, closed)
    });
    // The destination may stop reading (and close) early: a write error
    // is fine, blocking forever is not.
    let wr = tokio::time::timeout(Duration::from_secs(30), w.write_all(bytes)).await;
    assert!(wr.is_ok(), "{} destination stopped reading but kept the connection open", d.kind);
    if close {
        let _ = w.shutdown().await;
    }
    let t = Instant::now();
    let end = d.wait_end(WAIT).await;
    let detect = t.elapsed();
    let (status, desc, exit) = end.unwrap_or_else(|| {
        panic!(
            "HANG: {} destination did not fail within {WAIT:?} after {} bytes ({}); log:\n{}",
            d.kind,
            bytes.len(),
            if close { "write side shut down" } else { "connection kept open" },
            d.log()
        )
    });
    // The destination closes the socket after a failure.
    let (rp, rp_closed) = match tokio::time::timeout(Duration::from_secs(3), &mut reader).await {
        Ok(j) => j.unwrap(),
        Err(_) => {
            reader.abort();
            (Vec::new(), false)
        }
    };
    (Outcome { status, desc, exit, rp, rp_closed, detect, log: d.log() }, w)
}

/// Replay into rust-dest and check the clean-failure contract; returns the
/// outcome for extra checks.
pub async fn rust_case(
    name: &str,
    bytes: &[u8],
    close: bool,
    expect: &[&str],
    offset: u64,
) -> Outcome {
    let t0 = Instant::now();
    let mut d = Dest::start(DestKind::Rust, name).await;
    let (o, sock) = replay_into(&mut d, bytes, close).await;
    let ctx = format!(
        "case {name} ({} bytes, {})",
        bytes.len(),
        if close { "closed" } else { "kept open" }
    );
    assert_eq!(o.status, "failed", "{ctx}: expected status failed, got {o:?}");
    for e in expect {
        assert!(o.desc.contains(e), "{ctx}: error-desc {:?} does not mention {e:?}", o.desc);
    }
    assert!(
        names_offset(&o.desc, offset),
        "{ctx}: error-desc {:?} does not name byte offset {offset}",
        o.desc
    );
    assert!(o.rp_closed, "{ctx}: rust-dest did not close the migration socket after failing");
    assert!(
        o.rp.is_empty(),
        "{ctx}: rust-dest wrote {:02x?} on the socket without a return path",
        o.rp
    );
    d.check_alive(&ctx).await;
    drop(sock);
    d.finish().await;
    eprintln!(
        "[{name}] rust-dest: failed in {:?} after the last byte ({:?} total): {}",
        o.detect,
        t0.elapsed(),
        o.desc
    );
    o
}

/// Replay into a real QEMU destination (the oracle): it must reject the
/// stream too (status failed, or the process exited).
pub async fn qemu_case(name: &str, bytes: &[u8], close: bool) -> Outcome {
    qemu_case_with(name, bytes, close, false).await
}

pub async fn qemu_case_with(name: &str, bytes: &[u8], close: bool, exit_on_error: bool) -> Outcome {
    let t0 = Instant::now();
    let mut d = Dest::start_with(DestKind::Qemu, name, exit_on_error).await;
    let (o, sock) = replay_into(&mut d, bytes, close).await;
    let said: Vec<&str> = o.log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        o.status == "failed" || o.status == "exited",
        "oracle {name}: QEMU did not reject the stream: {o:?}\nQEMU said:\n{}",
        said.join("\n")
    );
    drop(sock);
    d.finish().await;
    eprintln!(
        "[{name}] QEMU oracle: {} in {:?} ({:?} total){}{}; QEMU log: {:?}",
        o.status,
        o.detect,
        t0.elapsed(),
        if o.desc.is_empty() { String::new() } else { format!(", error-desc {:?}", o.desc) },
        o.exit.as_ref().map(|e| format!(", exit {e}")).unwrap_or_default(),
        said
    );
    o
}
