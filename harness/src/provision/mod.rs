//! Several QEMU versions side by side, without touching the host's apt
//! sources beyond bookworm-backports.
//!
//! # Versions
//!
//! | series | where it comes from | how it runs |
//! |--------|---------------------|-------------|
//! | `7.2`  | bookworm's own `qemu-system-x86`, `-common`, `-data`, `seabios`, `ipxe-qemu` `.deb`s, fetched with `apt-get download` (host sources) and unpacked with `dpkg -x` into `qemu-7.2/root` | directly; `-L` points into the unpacked root. Its libraries are bookworm sonames, i.e. the host's. |
//! | `10.0` | the host's `/usr/bin/qemu-system-x86_64` from bookworm-backports (installed with `apt-get install -t bookworm-backports --no-install-recommends qemu-system-x86` if missing) | directly |
//! | `11.1` | Debian sid: a `debootstrap --variant=minbase sid` root in `qemu-11.1/root`, `qemu-system-x86` installed inside it with `chroot … apt-get` | from the host through sid's own loader: `ld-linux-x86-64.so.2 --library-path <root>/usr/lib/x86_64-linux-gnu <root>/usr/bin/qemu-system-x86_64 -L …` |
//!
//! Package versions are looked up (`apt-cache madison`, `dpkg-query`), never
//! hard-coded. For `11.1` whatever sid ships is taken; any `11.x` is
//! accepted (the manifest records the exact version and a note when it is
//! not 11.1). The host's apt sources are never changed here: only
//! bookworm-backports is expected there (`ci/install.sh`), and sid is only
//! ever used inside the private root.
//!
//! # Cache folder
//!
//! `$CROSSMIG_CACHE` if set (and not empty), else `/var/cache/crossmig`:
//!
//! ```text
//! $CROSSMIG_CACHE/
//!   qemu-7.2/   root/ (dpkg -x of the debs)  debs/  install.log  crossmig-install.json
//!   qemu-10.0/  crossmig-install.json        (records the host binary)
//!   qemu-11.1/  root/ (the sid root)          install.log  crossmig-install.json
//!   .lock-<series>                            (flock held while installing)
//! ```
//!
//! `crossmig-install.json` ([`Manifest`]) is written last, atomically. An
//! install counts as complete only if the manifest is there, the binary
//! answers `--version` with the expected series, and a `-accel tcg -machine
//! q35 -S` VM starts and quits over QMP. Anything less is redone by
//! [`install`]; a second [`install`] of a complete version only re-verifies
//! (well under a second).
//!
//! The sid root is only ever removed after checking that nothing is
//! mounted below it (`/proc` and `/dev` are mounted only while apt runs
//! inside it, and unmounted by a guard, even on errors).
//!
//! # Other binaries
//!
//! Any other QEMU binary can be used without provisioning: pass its path
//! (`crossmig migrate --qemu PATH`, or [`QemuBinary::new`] in code); set
//! `data_dirs`/`loader` on the [`QemuBinary`] if it lives in a private root.
//!
//! Layout: `record` (the install record) ← `verify` ← the strategies
//! `debs` (7.2), `host` (10.0), `debootstrap` (11.1), on `apt`
//! (commands, apt/dpkg look-ups) and `tree` (mounts, private roots);
//! this file holds the install/list API; [`cli`] is the command-line front end.

mod apt;
pub mod catalogue;
pub mod cli;
mod debootstrap;
mod debs;
mod host;
mod record;
mod tree;
mod verify;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::vm::qemu::QemuBinary;

pub use debootstrap::DEFAULT_MIRROR;
pub use host::HOST_QEMU;
pub use record::{InstallSource, LoaderSpec, Manifest, PackageRef, MANIFEST_NAME};
pub use verify::{series_matches, smoke_test_tcg};

use debootstrap::install_sid;
use debs::install_bookworm_72;
use host::{host_manifest, install_host};
use record::{read_manifest, write_manifest};
use verify::verify_manifest;

/// Environment variable naming the cache folder.
pub const CACHE_ENV: &str = "CROSSMIG_CACHE";
/// Cache folder used when `$CROSSMIG_CACHE` is not set.
pub const DEFAULT_CACHE: &str = "/var/cache/crossmig";
/// The series this module knows how to provision, oldest first.
pub const KNOWN_VERSIONS: [&str; 3] = ["7.2", "10.0", "11.1"];

/// `$CROSSMIG_CACHE` or `/var/cache/crossmig`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os(CACHE_ENV).filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(DEFAULT_CACHE),
    }
}

/// Folder of one series (`<cache>/qemu-<series>`).
pub fn version_dir(series: &str) -> PathBuf {
    cache_dir().join(format!("qemu-{series}"))
}

/// A complete, verified install.
#[derive(Clone, Debug)]
pub struct Installed {
    pub series: String,
    /// The version's folder in the cache.
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// False when the manifest was synthesized (10.0 present on the host
    /// but not yet recorded with `crossmig qemu install 10.0`).
    pub recorded: bool,
    pub binary: QemuBinary,
}

/// State of one series in the cache.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Status {
    Complete(Installed),
    /// Nothing there (no manifest, no partial files).
    Missing,
    /// Something is there but it does not verify; `install` redoes it.
    Broken(String),
}

/// Check that `series` is one of [`KNOWN_VERSIONS`] (accepts `"11"` etc. only exactly).
fn check_series(series: &str) -> Result<()> {
    if KNOWN_VERSIONS.contains(&series) {
        Ok(())
    } else {
        bail!(
            "unknown QEMU version {series:?}: crossmig can provision {}",
            KNOWN_VERSIONS.join(", ")
        )
    }
}

/// The state of `series` in the cache, fully verified (runs the binary
/// twice, well under a second). Never writes anything.
pub fn status(series: &str) -> Status {
    if let Err(e) = check_series(series) {
        return Status::Broken(format!("{e:#}"));
    }
    let dir = version_dir(series);
    match read_manifest(&dir) {
        Ok(Some(m)) => match verify_manifest(series, &m) {
            Ok(binary) => Status::Complete(Installed {
                series: series.into(),
                dir,
                manifest: m,
                recorded: true,
                binary,
            }),
            Err(e) => Status::Broken(format!(
                "{} does not verify: {e:#}",
                dir.join(MANIFEST_NAME).display()
            )),
        },
        Ok(None) if series == "10.0" => match host_manifest(0.0) {
            // The host's QEMU is there: usable even before it is recorded.
            Ok(m) => match verify_manifest(series, &m) {
                Ok(binary) => Status::Complete(Installed {
                    series: series.into(),
                    dir,
                    manifest: m,
                    recorded: false,
                    binary,
                }),
                Err(e) => Status::Broken(format!("host QEMU does not verify: {e:#}")),
            },
            Err(e) => Status::Broken(format!("{e:#}")).missing_if_absent(Path::new(HOST_QEMU)),
        },
        Ok(None) => {
            if dir.exists() {
                Status::Broken(format!(
                    "{} exists but has no {MANIFEST_NAME} (interrupted install?)",
                    dir.display()
                ))
            } else {
                Status::Missing
            }
        }
        Err(e) => Status::Broken(format!("{e:#}")),
    }
}

impl Status {
    fn missing_if_absent(self, p: &Path) -> Status {
        if p.exists() {
            self
        } else {
            Status::Missing
        }
    }
    /// The install, if complete.
    pub fn installed(self) -> Option<Installed> {
        match self {
            Status::Complete(i) => Some(i),
            _ => None,
        }
    }
    /// Why it is not complete (`None` if it is).
    pub fn reason(&self) -> Option<String> {
        match self {
            Status::Complete(_) => None,
            Status::Missing => Some("not installed".into()),
            Status::Broken(r) => Some(format!("incomplete or broken: {r}")),
        }
    }
}

/// Series present in the cache besides the known ones (`qemu-*` folders).
fn cached_series() -> Vec<String> {
    let mut v: Vec<String> = KNOWN_VERSIONS.iter().map(|s| s.to_string()).collect();
    if let Ok(rd) = fs::read_dir(cache_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(s) = name.strip_prefix("qemu-") {
                if !v.iter().any(|x| x == s) && e.path().join(MANIFEST_NAME).is_file() {
                    v.push(s.to_string());
                }
            }
        }
    }
    v
}

/// Every complete, verified install (known series, oldest first).
pub fn installed() -> Vec<Installed> {
    KNOWN_VERSIONS.iter().filter_map(|s| status(s).installed()).collect()
}

/// The verified binary of an installed series (with `-L` folders and the
/// loader filled in). Fails with a hint to `crossmig qemu install` otherwise.
pub fn binary(series: &str) -> Result<QemuBinary> {
    check_series(series)?;
    match status(series) {
        Status::Complete(i) => Ok(i.binary),
        st => bail!(
            "QEMU {series} is {} (cache {}); run `crossmig qemu install {series}`",
            st.reason().unwrap_or_default(),
            cache_dir().display()
        ),
    }
}

/// `(series, binary)` for every installed series, oldest first.
pub fn all_binaries() -> Vec<(String, QemuBinary)> {
    installed().into_iter().map(|i| (i.series, i.binary)).collect()
}

/// Install (or verify and record) `series`, printing progress to stderr.
pub fn install(series: &str) -> Result<Installed> {
    install_with_progress(series, &mut |m| eprintln!("[qemu {series}] {m}"))
}

/// Install `series`; `progress` receives one line per step. Idempotent:
/// returns quickly when the series is complete, redoes a partial install.
/// Concurrent installs of the same series serialize on a lock file.
pub fn install_with_progress(series: &str, progress: &mut dyn FnMut(&str)) -> Result<Installed> {
    check_series(series)?;
    let cache = cache_dir();
    fs::create_dir_all(&cache)
        .with_context(|| format!("creating the cache folder {}", cache.display()))?;
    let lock_path = cache.join(format!(".lock-{series}"));
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let _lock =
        match nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((f, _)) => {
                progress(&format!(
                    "waiting for another install of QEMU {series} ({})",
                    lock_path.display()
                ));
                nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
                    .map_err(|(_, e)| anyhow!("locking {}: {e}", lock_path.display()))?
            }
        };

    match status(series) {
        Status::Complete(i) if i.recorded => {
            progress(&format!(
                "already installed: QEMU {} ({}), verified",
                i.manifest.qemu_version,
                i.binary.path.display()
            ));
            return Ok(i);
        }
        Status::Complete(_) => {}
        Status::Missing => {}
        Status::Broken(why) => progress(&format!("redoing: {why}")),
    }
    let dir = version_dir(series);
    fs::create_dir_all(&dir)?;
    // The manifest goes first, so an interrupted install is never complete.
    let _ = fs::remove_file(dir.join(MANIFEST_NAME));
    let t0 = Instant::now();
    let mut m = match series {
        "7.2" => install_bookworm_72(&dir, progress)?,
        "10.0" => install_host(progress)?,
        "11.1" => {
            // A bootstrapped root left by an earlier run is reused; if the
            // result does not verify, start again from an empty folder.
            let reusable = dir.join(".debootstrap-done").is_file();
            match install_sid(&dir, progress, true)
                .and_then(|m| verify_manifest(series, &m).map(|_| m))
            {
                Ok(m) => m,
                Err(e) if reusable => {
                    progress(&format!("the reused sid root failed ({e:#}); starting from scratch"));
                    install_sid(&dir, progress, false)?
                }
                Err(e) => return Err(e),
            }
        }
        _ => unreachable!(),
    };
    m.install_seconds = (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    m.installed_at = now_secs();
    progress(&format!("verifying {} (--version, TCG q35 smoke test)", m.binary.display()));
    let binary = verify_manifest(series, &m)?;
    write_manifest(&dir, &m)?;
    progress(&format!(
        "installed QEMU {} in {:.1} s ({})",
        m.qemu_version,
        m.install_seconds,
        dir.join(MANIFEST_NAME).display()
    ));
    Ok(Installed { series: series.into(), dir, manifest: m, recorded: true, binary })
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
