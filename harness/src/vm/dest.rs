//! Starting a migration destination: rust-dest or a real QEMU, with the same
//! QEMU-style command line and driven through the same QMP client.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

use crate::qmp::MigrationStatus;
use crate::vm::procs::free_tcp_port;
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

/// `migrate-incoming tcp:127.0.0.1:PORT` on a destination, on a port from
/// [`free_tcp_port`]; returns the port.
///
/// A failed `migrate-incoming` is not simply repeated: QEMU 8.0 and later
/// move the incoming state to `setup` before binding and leave it there when
/// the bind fails, so a second `migrate-incoming` on the same QEMU answers
/// "Illegal migration incoming state: setup" and hides the first error
/// (`migration_incoming_state_setup()` in QEMU's migration/migration.c). So
/// after an error the destination is asked (`query-migrate`) what it did:
/// * it lists our port in `socket-address`: the command took effect and only
///   its answer was late (a command timeout on a loaded machine); go on;
/// * it is still in state `none` (QEMU 7.2, rust-dest): try another port,
///   at most three times;
/// * anything else: fail with the first error and what the destination
///   reports.
pub async fn listen_tcp(vm: &QemuVm) -> Result<u16> {
    listen_tcp_on(vm, free_tcp_port).await
}

/// [`listen_tcp`] on the ports `next_port` hands out, in turn.
pub async fn listen_tcp_on(vm: &QemuVm, mut next_port: impl FnMut() -> u16) -> Result<u16> {
    for attempt in 1.. {
        let port = next_port();
        let uri = format!("tcp:127.0.0.1:{port}");
        let err = match vm.execute("migrate-incoming", json!({ "uri": uri })).await {
            Ok(_) => return Ok(port),
            Err(e) => e,
        };
        let state = match vm.child.is_running() {
            true => vm
                .qmp
                .execute_timeout("query-migrate", Value::Null, Duration::from_secs(30))
                .await
                .map_err(|e| anyhow!("query-migrate after it: {e}")),
            false => Err(anyhow!("the destination exited")),
        };
        match &state {
            Ok(v) if listens_on(v, port) => {
                tracing::warn!("migrate-incoming {uri}: {err:#}; the destination listens anyway");
                return Ok(port);
            }
            Ok(v) if MigrationStatus::of(v) == MigrationStatus::None && attempt < 3 => {
                tracing::warn!("migrate-incoming {uri}: {err:#}; retrying on another port");
            }
            Ok(v) => {
                return Err(err.context(format!(
                    "migrate-incoming {uri} (attempt {attempt}); the destination then reports {v}"
                )))
            }
            Err(e) => return Err(err.context(format!("migrate-incoming {uri}; {e:#}"))),
        }
    }
    unreachable!("the loop returns")
}

/// Does a destination's `query-migrate` reply list a socket on `port`?
fn listens_on(v: &Value, port: u16) -> bool {
    let port = port.to_string();
    v.get("socket-address").and_then(Value::as_array).is_some_and(|list| {
        list.iter().any(|a| match a.get("port") {
            Some(Value::String(p)) => *p == port,
            Some(Value::Number(n)) => n.to_string() == port,
            _ => false,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_address_names_the_port() {
        let v = json!({"status": "setup", "socket-address": [
            {"type": "inet", "host": "127.0.0.1", "port": "20001"}]});
        assert!(listens_on(&v, 20001));
        assert!(!listens_on(&v, 20002));
        assert!(!listens_on(&json!({"status": "setup"}), 20001));
    }
}
