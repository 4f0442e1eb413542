//! The install record `crossmig-install.json` ([`Manifest`]): what was
//! installed from where; read, and written last and atomically.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::vm::qemu::QemuBinary;

/// Name of the manifest written last into each version's folder.
pub const MANIFEST_NAME: &str = "crossmig-install.json";
/// Packages whose versions are recorded for every series.
pub(super) const RECORDED_PACKAGES: [&str; 5] =
    ["qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios", "ipxe-qemu"];

/// One package a version was installed from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackageRef {
    pub name: String,
    pub version: String,
}

/// Where a version came from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstallSource {
    /// `"bookworm debs (dpkg -x)"`, `"host (bookworm-backports)"`, `"debian sid root (debootstrap)"`.
    pub kind: String,
    pub packages: Vec<PackageRef>,
    /// Anything worth knowing (e.g. "sid ships 11.2, accepted for 11.1").
    #[serde(default)]
    pub note: Option<String>,
}

/// `(ld.so, library path)` for binaries in a private root.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoaderSpec {
    pub ld_so: PathBuf,
    pub library_path: PathBuf,
}

/// Contents of `crossmig-install.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// The series asked for: `"7.2"`, `"10.0"`, `"11.1"`.
    pub series: String,
    /// `major.minor.micro` reported by `--version`, e.g. `"7.2.22"`.
    pub qemu_version: String,
    /// First line of `--version`.
    pub version_line: String,
    pub binary: PathBuf,
    /// `-L` folders, in order.
    pub data_dirs: Vec<PathBuf>,
    pub loader: Option<LoaderSpec>,
    pub source: InstallSource,
    /// Unix time (seconds) the install finished.
    pub installed_at: u64,
    /// Wall-clock seconds the install took (0 when only recorded).
    pub install_seconds: f64,
}

impl Manifest {
    pub fn qemu_binary(&self) -> QemuBinary {
        QemuBinary {
            path: self.binary.clone(),
            data_dirs: self.data_dirs.clone(),
            loader: self.loader.as_ref().map(|l| (l.ld_so.clone(), l.library_path.clone())),
        }
    }
}

pub(super) fn read_manifest(dir: &Path) -> Result<Option<Manifest>> {
    let p = dir.join(MANIFEST_NAME);
    match fs::read(&p) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("parsing {}", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

pub(super) fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    let p = dir.join(MANIFEST_NAME);
    let tmp = dir.join(format!(".{MANIFEST_NAME}.tmp"));
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(m)?)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, &p)
        .with_context(|| format!("renaming {} to {}", tmp.display(), p.display()))?;
    Ok(())
}
