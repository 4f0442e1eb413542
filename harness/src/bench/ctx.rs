//! What every bench scenario shares ([`Ctx`]) and how it starts its QEMU and
//! rust-dest processes: the harness's one launcher, with the bench's polling.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::vm::dest::DestKind;
use crate::vm::qemu::{LaunchOpts, QemuBinary, QemuVm, VmConfig};

/// "Unlimited" max-bandwidth: 100 GB/s (QEMU has no explicit 'unlimited'
/// for max-bandwidth; guestperf uses 125000 MiB/s the same way).
pub(super) const UNLIMITED_BW: u64 = 100_000_000_000;

/// QMP socket polling while starting: start-up is timed (spawn → QMP
/// handshake done, [`QemuVm::startup`]) to the millisecond.
const CONNECT_POLL: Duration = Duration::from_millis(1);
/// Serial log polling while waiting for the guest's marker.
const SERIAL_POLL: Duration = Duration::from_millis(5);
/// Per-command QMP timeout (a QEMU destination answers late while loading).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Start `bin` with `cfg` (output to `log`) through [`QemuVm::launch`] with
/// the bench's polling; `timeout` bounds the wait for the QMP handshake.
pub(super) async fn launch(
    bin: &QemuBinary,
    cfg: VmConfig,
    log: PathBuf,
    timeout: Duration,
) -> Result<QemuVm> {
    let mut opts = LaunchOpts::new(log);
    opts.connect_timeout = timeout;
    opts.connect_poll = CONNECT_POLL;
    opts.serial_poll = SERIAL_POLL;
    opts.command_timeout = Some(COMMAND_TIMEOUT);
    Ok(QemuVm::launch(bin, cfg, opts).await?)
}

/// Everything the scenarios share.
pub(super) struct Ctx {
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
