//! Starting a migration destination: rust-dest or a real QEMU, with the same
//! QEMU-style command line and driven through the same QMP client.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};

use crate::qmp::MigrationStatus;
use crate::vm::qemu::{LaunchOpts, QemuBinary, QemuVm, VmConfig};

/// Which destination receives the migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestKind {
    Rust,
    Qemu,
}

impl DestKind {
    pub fn name(self) -> &'static str {
        match self {
            DestKind::Rust => "rust",
            DestKind::Qemu => "qemu",
        }
    }
}

impl std::str::FromStr for DestKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rust" | "rust-dest" => Ok(DestKind::Rust),
            "qemu" => Ok(DestKind::Qemu),
            o => Err(format!("unknown destination {o:?} (expected rust or qemu)")),
        }
    }
}

impl std::fmt::Display for DestKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Locate the rust-dest binary: `$CROSSMIG_RUST_DEST`, else next to the
/// running executable (target/<profile>/ or target/<profile>/deps/..).
pub fn rust_dest_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("CROSSMIG_RUST_DEST") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("CROSSMIG_RUST_DEST={} does not exist", p.display());
    }
    let exe = std::env::current_exe()?;
    let mut dirs = Vec::new();
    if let Some(d) = exe.parent() {
        dirs.push(d.to_path_buf());
        if let Some(dd) = d.parent() {
            dirs.push(dd.to_path_buf());
        }
    }
    for d in &dirs {
        let c = d.join("rust-dest");
        if c.is_file() {
            return Ok(c);
        }
    }
    bail!(
        "rust-dest binary not found next to {} (build it with `cargo build -p rust-dest`, or set CROSSMIG_RUST_DEST)",
        exe.display()
    )
}

/// The binary to run for a destination kind (`qemu` is the QEMU binary
/// used for QEMU destinations).
pub fn dest_binary(kind: DestKind, qemu: &QemuBinary) -> Result<QemuBinary> {
    Ok(match kind {
        DestKind::Qemu => qemu.clone(),
        DestKind::Rust => QemuBinary::new(rust_dest_binary()?),
    })
}

/// Start a destination with `-incoming defer -S` (capabilities are set
/// before `migrate-incoming`, as QEMU requires for some of them).
pub async fn start_dest(
    kind: DestKind,
    qemu: &QemuBinary,
    cfg: VmConfig,
    log: PathBuf,
) -> Result<QemuVm> {
    start_dest_with(kind, qemu, cfg, LaunchOpts::new(log)).await
}

/// [`start_dest`] with explicit [`LaunchOpts`].
pub async fn start_dest_with(
    kind: DestKind,
    qemu: &QemuBinary,
    mut cfg: VmConfig,
    opts: LaunchOpts,
) -> Result<QemuVm> {
    cfg.incoming = Some("defer".into());
    cfg.paused = true;
    cfg.disk = None;
    cfg.serial_log = None;
    let bin = match (&opts.rust_dest, kind) {
        (Some(p), DestKind::Rust) => QemuBinary::new(p),
        _ => dest_binary(kind, qemu)?,
    };
    let mut opts = opts;
    if kind == DestKind::Rust {
        opts.extra_args.extend(rust_dest_version_args(qemu));
    }
    Ok(QemuVm::launch(&bin, cfg, opts).await?)
}

/// rust-dest's options to behave as the QEMU version of `qemu` (the one a
/// differential run compares with, or the destination version a migration
/// stands in for): `--compat-version` and, when one is checked in,
/// `--device-catalogue` (docs/device-catalogue.md).
pub fn rust_dest_version_args(qemu: &QemuBinary) -> Vec<String> {
    let Ok((major, minor, _)) = qemu.version() else {
        tracing::warn!(
            "{}: unknown QEMU version; rust-dest uses its defaults",
            qemu.path.display()
        );
        return Vec::new();
    };
    let mut a = vec!["--compat-version".to_string(), format!("{major}.{minor}")];
    match crate::provision::catalogue::catalogue_for(qemu) {
        Some(p) => a.extend(["--device-catalogue".to_string(), p.display().to_string()]),
        None => tracing::warn!("no device catalogue for QEMU {major}.{minor}; rust-dest does not check device sections"),
    }
    a
}

/// `migrate-incoming tcp:127.0.0.1:0` on a destination: the kernel picks a
/// free port while the destination binds it, and the destination reports
/// it in `query-migrate`'s `socket-address` (as QEMU's own migration tests
/// read it); returns that port. No port is chosen beforehand, so no other
/// process can take it between the choice and the bind (a QEMU 10.0
/// destination once failed "Address already in use" on a port
/// `vm::procs::free_tcp_port` had found free a moment before).
pub async fn listen_tcp(vm: &QemuVm) -> Result<u16> {
    match incoming(vm, None).await {
        Incoming::Listening(port) => Ok(port),
        Incoming::Idle(err) | Incoming::Failed(err) => Err(err),
    }
}

/// `migrate-incoming tcp:127.0.0.1:PORT` on the ports `next_port` hands
/// out, in turn; returns the port.
///
/// A failed `migrate-incoming` is not simply repeated: QEMU 8.0 and later
/// move the incoming state to `setup` before binding and leave it there when
/// the bind fails, so a second `migrate-incoming` on the same QEMU answers
/// "Illegal migration incoming state: setup" and hides the first error
/// (`migration_incoming_state_setup()` in QEMU's migration/migration.c).
/// Only a destination still in state `none` (QEMU 7.2, rust-dest) is tried
/// on another port, at most three times.
pub async fn listen_tcp_on(vm: &QemuVm, mut next_port: impl FnMut() -> u16) -> Result<u16> {
    for attempt in 1.. {
        match incoming(vm, Some(next_port())).await {
            Incoming::Listening(port) => return Ok(port),
            Incoming::Idle(err) if attempt < 3 => {
                tracing::warn!("{err:#}; retrying on another port");
            }
            Incoming::Idle(err) | Incoming::Failed(err) => {
                return Err(err.context(format!("attempt {attempt}")))
            }
        }
    }
    unreachable!("the loop returns")
}

/// `migrate-recover tcp:127.0.0.1:0` on a paused postcopy destination;
/// returns the port it listens on for the recovery channel. The destination
/// releases its old listener first and lists the new one first in
/// `socket-address` (`qmp_migrate_recover()` and `migrate_add_address()` in
/// QEMU's migration/migration.c), so, as with [`listen_tcp`], no port is
/// chosen before the bind.
pub async fn recover_tcp(vm: &QemuVm) -> Result<u16> {
    let uri = "tcp:127.0.0.1:0";
    vm.execute("migrate-recover", json!({ "uri": uri })).await?;
    let v = query_migrate(vm).await.context(format!("after migrate-recover {uri}"))?;
    let port = inet_ports(&v).next();
    port.ok_or_else(|| anyhow!("migrate-recover {uri}: no TCP port in `socket-address`: {v}"))
}

/// The destination's `query-migrate` reply, asked after a listening command.
async fn query_migrate(vm: &QemuVm) -> Result<Value> {
    if !vm.child.is_running() {
        bail!("the destination exited");
    }
    vm.qmp
        .execute_timeout("query-migrate", Value::Null, Duration::from_secs(30))
        .await
        .map_err(|e| anyhow!("query-migrate after it: {e}"))
}

/// How one `migrate-incoming` ended.
enum Incoming {
    /// The destination listens on this port.
    Listening(u16),
    /// Refused, and the destination is still in state `none`: it can be
    /// asked again.
    Idle(anyhow::Error),
    /// Anything else; the error names the command's error and what the
    /// destination reports.
    Failed(anyhow::Error),
}

/// `migrate-incoming` on `port` (`None`: port 0, the kernel's choice), then
/// `query-migrate`. After an error the destination's report decides: a
/// destination that lists the port in `socket-address` took the command
/// and only answered late (a command timeout on a loaded machine).
async fn incoming(vm: &QemuVm, port: Option<u16>) -> Incoming {
    let uri = format!("tcp:127.0.0.1:{}", port.unwrap_or(0));
    let res = vm.execute("migrate-incoming", json!({ "uri": uri })).await;
    let state = query_migrate(vm).await;
    let listening = state.as_ref().ok().and_then(|v| {
        let mut ports = inet_ports(v);
        match port {
            Some(p) => ports.any(|q| q == p).then_some(p),
            None => ports.next(),
        }
    });
    if let Some(p) = listening {
        if let Err(err) = &res {
            tracing::warn!("migrate-incoming {uri}: {err:#}; the destination listens anyway");
        }
        return Incoming::Listening(p);
    }
    match (res, state, port) {
        // A destination that does not list an explicit port: the command's
        // answer is enough then.
        (Ok(_), _, Some(p)) => Incoming::Listening(p),
        (Ok(_), Ok(v), None) => Incoming::Failed(anyhow!(
            "migrate-incoming {uri}: no TCP port in `socket-address`: {v}"
        )),
        (Ok(_), Err(e), None) => Incoming::Failed(e.context(format!("migrate-incoming {uri}"))),
        (Err(err), Ok(v), _) => {
            let err =
                err.context(format!("migrate-incoming {uri}; the destination then reports {v}"));
            match MigrationStatus::of(&v) == MigrationStatus::None {
                true => Incoming::Idle(err),
                false => Incoming::Failed(err),
            }
        }
        (Err(err), Err(e), _) => {
            Incoming::Failed(err.context(format!("migrate-incoming {uri}; {e:#}")))
        }
    }
}

/// The TCP ports of the `inet` entries of a `query-migrate` reply's
/// `socket-address`, in order.
fn inet_ports(v: &Value) -> impl Iterator<Item = u16> + '_ {
    let list = v.get("socket-address").and_then(Value::as_array).map(Vec::as_slice);
    list.unwrap_or_default()
        .iter()
        .filter(|a| a.get("type").and_then(Value::as_str) == Some("inet"))
        .filter_map(|a| match a.get("port")? {
            Value::String(p) => p.parse().ok(),
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ports_are_read_from_socket_address() {
        let v = json!({"status": "setup", "socket-address": [
            {"type": "unix", "path": "/x"}, {"type": "inet", "host": "127.0.0.1", "port": "41234"},
            {"type": "inet", "host": "::1", "port": 7}]});
        assert_eq!(inet_ports(&v).collect::<Vec<_>>(), [41234, 7]);
        assert_eq!(inet_ports(&json!({"status": "setup"})).next(), None);
        assert_eq!(
            inet_ports(&json!({"socket-address": [{"type": "inet", "port": "x"}]})).next(),
            None
        );
    }
}
