//! QEMU 10.0: the host's `/usr/bin/qemu-system-x86_64` from
//! bookworm-backports (installed with apt if missing), recorded as is.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

use anyhow::{bail, Result};

use super::apt::{cmd, dpkg_versions, run_logged};
use super::record::{InstallSource, Manifest, PackageRef, RECORDED_PACKAGES};
use super::verify::{series_matches, version_of};
use crate::vm::qemu::QemuBinary;

/// The host's QEMU (the `10.0` series).
pub const HOST_QEMU: &str = "/usr/bin/qemu-system-x86_64";

pub(super) fn host_manifest(install_seconds: f64) -> Result<Manifest> {
    let binary = PathBuf::from(HOST_QEMU);
    if !binary.is_file() {
        bail!("{HOST_QEMU} is not installed");
    }
    let bin = QemuBinary::new(&binary);
    let (qemu_version, version_line) = version_of(&bin)?;
    let vs = dpkg_versions(None, &RECORDED_PACKAGES);
    let installed_at = fs::metadata("/var/lib/dpkg/info/qemu-system-x86.list")
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(Manifest {
        series: "10.0".into(),
        qemu_version,
        version_line,
        binary,
        data_dirs: Vec::new(),
        loader: None,
        source: InstallSource {
            kind: "host (apt, bookworm-backports)".into(),
            packages: vs.into_iter().map(|(name, version)| PackageRef { name, version }).collect(),
            note: None,
        },
        installed_at,
        install_seconds,
    })
}

fn host_is_10_0() -> bool {
    let bin = QemuBinary::new(HOST_QEMU);
    Path::new(HOST_QEMU).is_file()
        && bin.version().map(|v| series_matches("10.0", v)).unwrap_or(false)
}

pub(super) fn install_host(progress: &mut dyn FnMut(&str)) -> Result<Manifest> {
    if !host_is_10_0() {
        let has_bpo = Command::new("grep")
            .args([
                "-rqs",
                "bookworm-backports",
                "/etc/apt/sources.list",
                "/etc/apt/sources.list.d/",
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !has_bpo {
            bail!("QEMU 10.0 comes from bookworm-backports, which is not in the host's apt sources: run ci/install.sh");
        }
        progress("apt-get update; apt-get install -t bookworm-backports --no-install-recommends qemu-system-x86");
        run_logged(&mut cmd("apt-get", &["update"]), None)?;
        run_logged(
            &mut cmd(
                "apt-get",
                &[
                    "install",
                    "-y",
                    "-t",
                    "bookworm-backports",
                    "--no-install-recommends",
                    "qemu-system-x86",
                ],
            ),
            None,
        )?;
        if !host_is_10_0() {
            let v = QemuBinary::new(HOST_QEMU)
                .version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_else(|e| format!("{e:#}"));
            bail!("after installing from bookworm-backports, {HOST_QEMU} is {v}, not 10.0");
        }
    } else {
        progress(&format!("{HOST_QEMU} is QEMU 10.0: recording it"));
    }
    host_manifest(0.0)
}
