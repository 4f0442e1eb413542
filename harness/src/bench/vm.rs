//! The processes of a bench run: a QEMU or rust-dest started with its QMP
//! monitor, timed precisely ([`Vm`]), and what every scenario shares ([`Ctx`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;

use crate::qmp::Qmp;
use crate::vm::dest::DestKind;
use crate::vm::procs::{file_tail, ChildGuard, PathGuard};
use crate::vm::qemu::{vm_args, QemuBinary, VmConfig};

/// "Unlimited" max-bandwidth: 100 GB/s (QEMU has no explicit 'unlimited'
/// for max-bandwidth; guestperf uses 125000 MiB/s the same way).
pub(super) const UNLIMITED_BW: u64 = 100_000_000_000;

/// A QEMU or rust-dest process with a connected QMP monitor. Like
/// [`crate::vm::qemu::QemuVm`], but started here so that start-up can be timed
/// precisely (1 ms socket polling instead of 20 ms).
pub(super) struct Vm {
    child: ChildGuard,
    pub(super) qmp: Qmp,
    pub(super) cfg: VmConfig,
    pub(super) log: PathBuf,
    /// Spawn → QMP handshake done.
    pub(super) startup: Duration,
    _guards: Vec<PathGuard>,
}

impl Vm {
    pub(super) async fn start(
        bin: &QemuBinary,
        cfg: VmConfig,
        log: PathBuf,
        timeout: Duration,
    ) -> Result<Vm> {
        let guards = vec![PathGuard::new(&cfg.mem_path), PathGuard::new(&cfg.qmp_socket)];
        let mut cmd = bin.command();
        cmd.args(vm_args(&cfg));
        let cmdline = format!("{cmd:?}");
        let t = Instant::now();
        let mut child = ChildGuard::spawn(cmd, &log)?;
        let deadline = t + timeout;
        let fail = |child: &mut ChildGuard, what: String| {
            child.kill();
            anyhow!("{what}\ncommand: {cmdline}\nlog {}:\n{}", log.display(), file_tail(&log, 4096))
        };
        loop {
            if cfg.qmp_socket.exists() {
                break;
            }
            if !child.is_running() {
                let st = child.wait_exit_async(Duration::from_millis(200)).await;
                return Err(fail(&mut child, format!("process exited during start-up ({st:?})")));
            }
            if Instant::now() > deadline {
                return Err(fail(&mut child, format!("no QMP socket after {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let remaining =
            deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5));
        let qmp = match Qmp::connect(&cfg.qmp_socket, remaining).await {
            Ok(q) => q,
            Err(e) => return Err(fail(&mut child, format!("QMP connection failed: {e:#}"))),
        };
        let startup = t.elapsed();
        qmp.set_timeout(Duration::from_secs(120));
        Ok(Vm { child, qmp, cfg, log, startup, _guards: guards })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub(super) async fn execute(&self, cmd: &str, args: Value) -> Result<Value> {
        self.qmp
            .execute(cmd, args)
            .await
            .with_context(|| format!("QMP {cmd} on {}", self.cfg.vm_name()))
    }

    pub(super) async fn status(&self) -> Result<Value> {
        self.qmp.query_migrate().await
    }

    /// Poll the serial log every 5 ms until it contains `marker`.
    pub(super) async fn wait_serial(&self, marker: char, timeout: Duration) -> Result<()> {
        let p = self.cfg.serial_log.clone().ok_or_else(|| anyhow!("no serial log"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if std::fs::read(&p).map(|b| b.contains(&(marker as u8))).unwrap_or(false) {
                return Ok(());
            }
            if !self.child.is_running() {
                bail!(
                    "QEMU exited while waiting for serial {marker:?}; log:\n{}",
                    file_tail(&self.log, 2048)
                );
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for serial {marker:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// QMP quit, wait up to 10 s, then SIGKILL; removes RAM file and socket.
    pub(super) async fn quit(self) {
        let Vm { mut child, qmp, _guards, .. } = self;
        if child.is_running() {
            let _ = qmp.execute_timeout("quit", Value::Null, Duration::from_secs(5)).await;
        }
        if child.wait_exit_async(Duration::from_secs(10)).await.is_none() {
            child.kill();
        }
        drop(qmp);
        drop(child);
        drop(_guards);
    }
}

/// Everything the scenarios share.
pub(super) struct Ctx {
    pub(super) rust_vcpu_pattern: String,
    pub(super) qemu: QemuBinary,
    pub(super) rust_dest: PathBuf,
    pub(super) machine: String,
    pub(super) workdir: PathBuf,
}

impl Ctx {
    pub(super) fn dest_bin(&self, side: DestKind) -> QemuBinary {
        match side {
            DestKind::Rust => QemuBinary::new(&self.rust_dest),
            DestKind::Qemu => self.qemu.clone(),
        }
    }
    pub(super) fn log(&self, tag: &str) -> PathBuf {
        self.workdir.join(format!("{tag}.log"))
    }
    pub(super) fn dest_cfg(&self, side: DestKind, mem: u64, incoming: &str) -> VmConfig {
        let mut c = VmConfig::new(&format!("bench-dst-{}", side.name()), mem);
        c.machine = self.machine.clone();
        c.incoming = Some(incoming.into());
        c.paused = true;
        c
    }
}
