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

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::vm::qemu::{parse_qemu_version, QemuBinary};

/// Environment variable naming the cache folder.
pub const CACHE_ENV: &str = "CROSSMIG_CACHE";
/// Cache folder used when `$CROSSMIG_CACHE` is not set.
pub const DEFAULT_CACHE: &str = "/var/cache/crossmig";
/// Name of the manifest written last into each version's folder.
pub const MANIFEST_NAME: &str = "crossmig-install.json";
/// The series this module knows how to provision, oldest first.
pub const KNOWN_VERSIONS: [&str; 3] = ["7.2", "10.0", "11.1"];
/// Debian mirror used for the sid root (override: `$CROSSMIG_DEBIAN_MIRROR`).
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// The host's QEMU (the `10.0` series).
pub const HOST_QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// Packages whose versions are recorded for every series.
const RECORDED_PACKAGES: [&str; 5] =
    ["qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios", "ipxe-qemu"];
/// How long the TCG smoke test may take.
const SMOKE_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Does a `(major, minor)` reported by a binary satisfy `series`?
/// `7.2` and `10.0` must match exactly; `11.1` accepts any `11.x`.
pub fn series_matches(series: &str, got: (u32, u32, u32)) -> bool {
    let (maj, min, _) = got;
    match series {
        "11.1" => maj == 11,
        s => {
            let mut it = s.split('.').map(|x| x.parse::<u32>().ok());
            matches!((it.next().flatten(), it.next().flatten()), (Some(a), Some(b)) if a == maj && b == min)
        }
    }
}

// ---------------------------------------------------------------------------
// verification

/// Result of checking a binary: (`major.minor.micro`, first `--version` line).
fn version_of(bin: &QemuBinary) -> Result<(String, String)> {
    let mut cmd = bin.command();
    cmd.arg("--version");
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let (a, b, c) = parse_qemu_version(&text)
        .ok_or_else(|| anyhow!("cannot parse the QEMU version from {text:?}"))?;
    Ok((format!("{a}.{b}.{c}"), text.lines().next().unwrap_or("").to_string()))
}

/// Start `-accel tcg -machine q35 -S` with QMP on stdio, ask for the run
/// state and quit. Proves the TCG accelerator (a module in some Debian
/// builds) loads and the machine's firmware is found.
pub fn smoke_test_tcg(bin: &QemuBinary) -> Result<()> {
    let mut cmd = bin.command();
    cmd.args([
        "-accel",
        "tcg",
        "-machine",
        "q35",
        "-m",
        "64M",
        "-display",
        "none",
        "-nodefaults",
        "-S",
        "-qmp",
        "stdio",
    ]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("starting {desc}"))?;
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        // QEMU reads these after its greeting; a closed pipe afterwards is fine.
        let _ = stdin.write_all(
            b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\"}\n{\"execute\":\"quit\"}\n",
        );
    }
    let mut so = child.stdout.take().expect("piped stdout");
    let mut se = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + SMOKE_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill(); // our own child, by pid
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = t_out.join().unwrap_or_default();
    let err = t_err.join().unwrap_or_default();
    let Some(status) = status else {
        bail!("TCG smoke test timed out after {SMOKE_TIMEOUT:?}: {desc}\nstdout: {out}\nstderr: {err}");
    };
    let run_state = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["return"]["status"].as_str().map(str::to_string));
    match (status.success(), run_state.as_deref()) {
        (true, Some("prelaunch")) | (true, Some("paused")) => Ok(()),
        _ => bail!(
            "TCG smoke test failed ({status}, run state {run_state:?}): {desc}\nstdout: {}\nstderr: {}",
            out.trim(),
            err.trim()
        ),
    }
}

/// Full check of a manifest: files present, `--version` in the series, TCG works.
fn verify_manifest(series: &str, m: &Manifest) -> Result<QemuBinary> {
    if m.series != series {
        bail!("manifest is for series {:?}, not {series:?}", m.series);
    }
    if !m.binary.is_file() {
        bail!("{} is missing", m.binary.display());
    }
    if let Some(l) = &m.loader {
        for p in [&l.ld_so, &l.library_path] {
            if !p.exists() {
                bail!("{} is missing", p.display());
            }
        }
    }
    for d in &m.data_dirs {
        if !d.is_dir() {
            bail!("firmware folder {} is missing", d.display());
        }
    }
    let bin = m.qemu_binary();
    let (ver, _) = version_of(&bin)?;
    if ver != m.qemu_version {
        bail!("--version says {ver}, the manifest recorded {}", m.qemu_version);
    }
    let parsed = parse_qemu_version(&format!("version {ver}")).unwrap_or_default();
    if !series_matches(series, parsed) {
        bail!("--version says {ver}, which is not QEMU {series}");
    }
    smoke_test_tcg(&bin)?;
    Ok(bin)
}

fn read_manifest(dir: &Path) -> Result<Option<Manifest>> {
    let p = dir.join(MANIFEST_NAME);
    match fs::read(&p) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("parsing {}", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
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

// ---------------------------------------------------------------------------
// install

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

/// Run a command, appending its output to `log` (if any). On failure the
/// error carries the command and the tail of its output.
fn run_logged(cmd: &mut Command, log: Option<&Path>) -> Result<String> {
    let desc = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {desc}"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if let Some(l) = log {
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(l) {
            let _ = writeln!(f, "$ {desc}\n{text}\n[{}]", out.status);
        }
    }
    if !out.status.success() {
        let tail = &text[text.len().saturating_sub(3000)..];
        bail!("{desc} failed ({}):\n{tail}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cmd(prog: &str, args: &[&str]) -> Command {
    let mut c = Command::new(prog);
    c.args(args).env("LC_ALL", "C").env("DEBIAN_FRONTEND", "noninteractive");
    c
}

/// `dpkg --compare-versions a gt b`.
fn dpkg_version_gt(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Candidates from `apt-cache madison` (binary packages only):
/// `(version, origin)`.
fn madison(pkg: &str) -> Result<Vec<(String, String)>> {
    let out = run_logged(&mut cmd("apt-cache", &["madison", pkg]), None)?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            (f.len() == 3 && f[0] == pkg && f[2].ends_with("Packages"))
                .then(|| (f[1].to_string(), f[2].to_string()))
        })
        .collect())
}

/// Highest version of `pkg` in the host's apt lists that is not from
/// backports and satisfies `want`.
fn pick_version(pkg: &str, want: &dyn Fn(&str) -> bool) -> Result<Option<String>> {
    let mut best: Option<String> = None;
    for (v, origin) in madison(pkg)? {
        if origin.contains("backports") || !want(&v) {
            continue;
        }
        if best.as_ref().is_none_or(|b| dpkg_version_gt(&v, b)) {
            best = Some(v);
        }
    }
    Ok(best)
}

/// Upstream part of a Debian version: `1:7.2+dfsg-7` → `7.2+dfsg`.
fn upstream(v: &str) -> &str {
    let v = v.split_once(':').map(|x| x.1).unwrap_or(v);
    v.rsplit_once('-').map(|x| x.0).unwrap_or(v)
}

fn is_upstream_series(v: &str, series: &str) -> bool {
    let u = upstream(v);
    u.strip_prefix(series).is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// Paths mounted at or below `dir` (from /proc/self/mountinfo), deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(&dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(((b[i + 1] - b'0') << 6) | ((b[i + 2] - b'0') << 3) | (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmount everything below `dir` (deepest first); fail if anything stays.
fn unmount_all_under(dir: &Path) -> Result<()> {
    for m in mounts_under(dir) {
        let ok = Command::new("umount").arg(&m).status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
    let left = mounts_under(dir);
    if !left.is_empty() {
        bail!("still mounted below {}: {left:?}", dir.display());
    }
    Ok(())
}

/// Remove a folder, after making sure nothing is mounted below it.
fn remove_tree(dir: &Path) -> Result<()> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    unmount_all_under(dir)?;
    if !mounts_under(dir).is_empty() {
        bail!("refusing to remove {}: something is still mounted below it", dir.display());
    }
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Follow symlinks inside a private root: absolute targets are taken
/// relative to `root`. Returns the final path (inside `root`).
fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    let mut cur = path.to_path_buf();
    for _ in 0..40 {
        let md = match fs::symlink_metadata(&cur) {
            Ok(m) => m,
            Err(e) => return Err(e).with_context(|| format!("{}", cur.display())),
        };
        if !md.file_type().is_symlink() {
            return Ok(cur);
        }
        let target = fs::read_link(&cur)?;
        cur = if target.is_absolute() {
            let rel: PathBuf =
                target.components().filter(|c| !matches!(c, Component::RootDir)).collect();
            root.join(rel)
        } else {
            let mut p = cur.parent().unwrap_or(root).to_path_buf();
            for c in target.components() {
                match c {
                    Component::ParentDir => {
                        if p != root {
                            p.pop();
                        }
                    }
                    Component::CurDir => {}
                    other => p.push(other),
                }
            }
            p
        };
    }
    bail!("too many symlinks resolving {}", path.display())
}

/// Absolute symlinks in `dirs` (they would point at the host's files).
fn absolute_symlinks(dirs: &[PathBuf]) -> Vec<String> {
    let mut v = Vec::new();
    for d in dirs {
        for e in fs::read_dir(d).into_iter().flatten().flatten() {
            if let Ok(t) = fs::read_link(e.path()) {
                if t.is_absolute() {
                    v.push(format!("{} -> {}", e.path().display(), t.display()));
                }
            }
        }
    }
    v
}

// --- 7.2: bookworm debs unpacked ------------------------------------------

fn install_bookworm_72(dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<Manifest> {
    let log = dir.join("install.log");
    let _ = fs::remove_file(&log);
    let root = dir.join("root");
    let debs = dir.join("debs");
    remove_tree(&root)?;
    remove_tree(&debs)?;
    fs::create_dir_all(&debs)?;

    let is72 = |v: &str| is_upstream_series(v, "7.2");
    let any = |_: &str| true;
    type Want<'a> = (&'a str, &'a dyn Fn(&str) -> bool);
    let wants: [Want; 5] = [
        ("qemu-system-x86", &is72),
        ("qemu-system-common", &is72),
        ("qemu-system-data", &is72),
        ("seabios", &any),
        ("ipxe-qemu", &any),
    ];
    progress("looking up bookworm package versions (apt-cache madison)");
    let resolve = || -> Result<Vec<PackageRef>> {
        let mut v = Vec::new();
        for (name, want) in &wants {
            if let Some(version) = pick_version(name, *want)? {
                v.push(PackageRef { name: name.to_string(), version });
            }
        }
        Ok(v)
    };
    let mut pkgs = resolve()?;
    if pkgs.len() < wants.len() {
        progress("not all found in the apt lists: apt-get update");
        run_logged(&mut cmd("apt-get", &["update"]), Some(&log))?;
        pkgs = resolve()?;
    }
    if pkgs.len() < wants.len() {
        let missing: Vec<&str> =
            wants.iter().map(|w| w.0).filter(|n| !pkgs.iter().any(|p| p.name == *n)).collect();
        bail!("no bookworm version of {missing:?} in the host's apt sources (`apt-cache madison`)");
    }
    let specs: Vec<String> = pkgs.iter().map(|p| format!("{}={}", p.name, p.version)).collect();
    progress(&format!("apt-get download {}", specs.join(" ")));
    let mut c = cmd("apt-get", &["download"]);
    c.args(&specs).current_dir(&debs);
    run_logged(&mut c, Some(&log))?;

    progress(&format!("unpacking into {} (dpkg -x)", root.display()));
    fs::create_dir_all(&root)?;
    let mut files: Vec<PathBuf> = fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    files.sort();
    if files.len() != pkgs.len() {
        bail!("expected {} .deb files in {}, found {files:?}", pkgs.len(), debs.display());
    }
    for f in &files {
        let mut c = Command::new("dpkg");
        c.arg("-x").arg(f).arg(&root);
        run_logged(&mut c, Some(&log))?;
    }
    let binary = root.join("usr/bin/qemu-system-x86_64");
    if !binary.is_file() {
        bail!("{} not found after unpacking", binary.display());
    }

    // Its libraries come from the host (bookworm sonames): install missing ones.
    let missing = ldd_missing(&binary, Some(&log))?;
    if !missing.is_empty() {
        let deb = files.iter().find(|f| {
            f.file_name().is_some_and(|n| n.to_string_lossy().starts_with("qemu-system-x86_"))
        });
        let libs = match deb {
            Some(d) => lib_depends(d)?,
            None => Vec::new(),
        };
        let absent: Vec<String> = libs.into_iter().filter(|l| !dpkg_installed(l)).collect();
        progress(&format!(
            "host lacks {missing:?}: apt-get install --no-install-recommends {}",
            absent.join(" ")
        ));
        if !absent.is_empty() {
            let mut c = cmd("apt-get", &["install", "-y", "--no-install-recommends"]);
            c.args(&absent);
            run_logged(&mut c, Some(&log))?;
        }
        let still = ldd_missing(&binary, Some(&log))?;
        if !still.is_empty() {
            bail!("{} still cannot find {still:?}", binary.display());
        }
    }
    let _ = remove_tree(&debs);

    // seabios and ipxe first: if a file in usr/share/qemu is an absolute
    // symlink it would otherwise resolve to the host's copy.
    let data_dirs: Vec<PathBuf> = ["usr/share/seabios", "usr/lib/ipxe/qemu", "usr/share/qemu"]
        .iter()
        .map(|d| root.join(d))
        .filter(|d| d.is_dir())
        .collect();
    let bin = QemuBinary { path: binary.clone(), data_dirs: data_dirs.clone(), loader: None };
    let (qemu_version, version_line) = version_of(&bin)?;
    let abs = absolute_symlinks(&data_dirs);
    Ok(Manifest {
        series: "7.2".into(),
        qemu_version,
        version_line,
        binary,
        data_dirs,
        loader: None,
        source: InstallSource {
            kind: "bookworm debs (apt-get download + dpkg -x); host libraries".into(),
            packages: pkgs,
            note: (!abs.is_empty())
                .then(|| format!("absolute symlinks in firmware folders: {}", abs.join(", "))),
        },
        installed_at: 0,
        install_seconds: 0.0,
    })
}

fn ldd_missing(binary: &Path, log: Option<&Path>) -> Result<Vec<String>> {
    let out = run_logged(Command::new("ldd").arg(binary), log)?;
    Ok(out.lines().filter(|l| l.contains("not found")).map(|l| l.trim().to_string()).collect())
}

/// `lib*` package names in a .deb's Depends.
fn lib_depends(deb: &Path) -> Result<Vec<String>> {
    let out = run_logged(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Depends"), None)?;
    Ok(out
        .split(',')
        .filter_map(|d| d.split('|').next())
        .map(|d| d.trim().split([' ', '(', ':']).next().unwrap_or("").to_string())
        .filter(|n| n.starts_with("lib"))
        .collect())
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", pkg])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "installed")
        .unwrap_or(false)
}

/// `name → version` of installed packages in a dpkg database.
fn dpkg_versions(admindir: Option<&Path>, pkgs: &[&str]) -> BTreeMap<String, String> {
    let mut c = Command::new("dpkg-query");
    if let Some(a) = admindir {
        c.arg(format!("--admindir={}", a.display()));
    }
    c.args(["-W", "-f=${Package}\t${Version}\t${db:Status-Status}\n"]).args(pkgs);
    let out =
        c.output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 3 && f[2] == "installed").then(|| (f[0].to_string(), f[1].to_string()))
        })
        .collect()
}

// --- 10.0: the host's QEMU from bookworm-backports ------------------------

fn host_manifest(install_seconds: f64) -> Result<Manifest> {
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

fn install_host(progress: &mut dyn FnMut(&str)) -> Result<Manifest> {
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

// --- 11.1: Debian sid root --------------------------------------------------

/// `/proc` and `/dev` mounted in a chroot; unmounted on drop.
struct ChrootMounts {
    mounted: Vec<PathBuf>,
}

impl ChrootMounts {
    fn mount(root: &Path, log: &Path) -> Result<ChrootMounts> {
        let mut g = ChrootMounts { mounted: Vec::new() };
        let proc_ = root.join("proc");
        let dev = root.join("dev");
        fs::create_dir_all(&proc_)?;
        fs::create_dir_all(&dev)?;
        run_logged(Command::new("mount").args(["-t", "proc", "proc"]).arg(&proc_), Some(log))?;
        g.mounted.push(proc_);
        run_logged(Command::new("mount").arg("--bind").arg("/dev").arg(&dev), Some(log))?;
        g.mounted.push(dev);
        Ok(g)
    }
}

impl Drop for ChrootMounts {
    fn drop(&mut self) {
        for m in self.mounted.drain(..).rev() {
            let ok = Command::new("umount").arg(&m).status().map(|s| s.success()).unwrap_or(false);
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&m).status();
            }
        }
    }
}

fn chroot_cmd(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("chroot");
    c.arg(root).args(args);
    c.env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .env("HOME", "/root")
        .env("DEBIAN_FRONTEND", "noninteractive");
    c
}

fn install_sid(dir: &Path, progress: &mut dyn FnMut(&str), allow_reuse: bool) -> Result<Manifest> {
    let log = dir.join("install.log");
    let root = dir.join("root");
    let bootstrapped = dir.join(".debootstrap-done");
    // Leftovers of an interrupted run: unmount before anything else.
    unmount_all_under(dir)?;

    if !dpkg_installed("debootstrap") {
        progress("apt-get install debootstrap (host)");
        if run_logged(
            &mut cmd("apt-get", &["install", "-y", "--no-install-recommends", "debootstrap"]),
            Some(&log),
        )
        .is_err()
        {
            run_logged(&mut cmd("apt-get", &["update"]), Some(&log))?;
            run_logged(
                &mut cmd("apt-get", &["install", "-y", "--no-install-recommends", "debootstrap"]),
                Some(&log),
            )?;
        }
    }

    let mirror = std::env::var("CROSSMIG_DEBIAN_MIRROR")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_MIRROR.into());
    if allow_reuse && bootstrapped.is_file() && root.join("usr/bin/apt-get").is_file() {
        progress(&format!("reusing the bootstrapped sid root {}", root.display()));
    } else {
        let _ = fs::remove_file(&bootstrapped);
        remove_tree(&root)?;
        progress(&format!("debootstrap --variant=minbase sid {} {mirror}", root.display()));
        let t = Instant::now();
        let mut c = cmd("debootstrap", &["--variant=minbase", "sid"]);
        c.arg(&root).arg(&mirror);
        let r = run_logged(&mut c, Some(&log));
        // debootstrap mounts /proc and /sys in the target itself: make sure
        // nothing is left mounted, whatever happened.
        unmount_all_under(dir)?;
        r?;
        File::create(&bootstrapped)?;
        progress(&format!("debootstrap done in {:.1} s", t.elapsed().as_secs_f64()));
    }

    // No services started by maintainer scripts; name resolution as the host.
    let prc = root.join("usr/sbin/policy-rc.d");
    fs::write(&prc, "#!/bin/sh\nexit 101\n")?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&prc, fs::Permissions::from_mode(0o755))?;
    }
    if let Ok(rc) = fs::read("/etc/resolv.conf") {
        let dst = root.join("etc/resolv.conf");
        let _ = fs::remove_file(&dst);
        fs::write(&dst, rc)?;
    }

    {
        let mounts = ChrootMounts::mount(&root, &log)?;
        progress("apt-get update inside the sid root");
        run_logged(
            &mut chroot_cmd(
                &root,
                &["apt-get", "-o", "Acquire::Check-Valid-Until=false", "update"],
            ),
            Some(&log),
        )?;
        progress("apt-get install --no-install-recommends qemu-system-x86 inside the sid root");
        let t = Instant::now();
        run_logged(
            &mut chroot_cmd(
                &root,
                &[
                    "apt-get",
                    "-o",
                    "Acquire::Check-Valid-Until=false",
                    "install",
                    "-y",
                    "--no-install-recommends",
                    "qemu-system-x86",
                ],
            ),
            Some(&log),
        )?;
        progress(&format!("installed inside the root in {:.1} s", t.elapsed().as_secs_f64()));
        let _ = run_logged(&mut chroot_cmd(&root, &["apt-get", "clean"]), Some(&log));
        drop(mounts);
    }
    unmount_all_under(dir)?;

    let binary = root.join("usr/bin/qemu-system-x86_64");
    if !binary.is_file() {
        bail!("{} not found after installing qemu-system-x86 in the sid root", binary.display());
    }
    let ld_so = resolve_in_root(&root, &root.join("usr/lib64/ld-linux-x86-64.so.2"))
        .context("sid's dynamic loader")?;
    let library_path = root.join("usr/lib/x86_64-linux-gnu");
    // Every library must come from the root, none from the host.
    let out = run_logged(
        Command::new(&ld_so).arg("--list").arg("--library-path").arg(&library_path).arg(&binary),
        Some(&log),
    )?;
    let root_c = root.canonicalize()?;
    let mut outside = Vec::new();
    for l in out.lines() {
        if l.contains("not found") {
            outside.push(l.trim().to_string());
            continue;
        }
        if let Some(p) = l.split("=>").nth(1).and_then(|r| r.split_whitespace().next()) {
            let pc = Path::new(p).canonicalize().unwrap_or_else(|_| PathBuf::from(p));
            if p.starts_with('/') && !pc.starts_with(&root_c) {
                outside.push(l.trim().to_string());
            }
        }
    }
    if !outside.is_empty() {
        bail!("sid's QEMU would load libraries from outside its root: {outside:?}");
    }

    let data_dirs: Vec<PathBuf> = ["usr/share/seabios", "usr/lib/ipxe/qemu", "usr/share/qemu"]
        .iter()
        .map(|d| root.join(d))
        .filter(|d| d.is_dir())
        .collect();
    let bin = QemuBinary {
        path: binary.clone(),
        data_dirs: data_dirs.clone(),
        loader: Some((ld_so.clone(), library_path.clone())),
    };
    let (qemu_version, version_line) = version_of(&bin)?;
    let parsed = parse_qemu_version(&format!("version {qemu_version}")).unwrap_or_default();
    if parsed.0 != 11 {
        bail!("Debian sid ships QEMU {qemu_version}, not 11.x ({version_line})");
    }
    let mut notes = Vec::new();
    if parsed.1 != 1 {
        notes
            .push(format!("sid ships QEMU {qemu_version}, accepted for series 11.1 (any 11.x is)"));
    }
    let abs = absolute_symlinks(&data_dirs);
    if !abs.is_empty() {
        notes.push(format!("absolute symlinks in firmware folders: {}", abs.join(", ")));
    }
    let mut want: Vec<&str> = RECORDED_PACKAGES.to_vec();
    want.push("libc6");
    let vs = dpkg_versions(Some(&root.join("var/lib/dpkg")), &want);
    Ok(Manifest {
        series: "11.1".into(),
        qemu_version,
        version_line,
        binary,
        data_dirs,
        loader: Some(LoaderSpec { ld_so, library_path }),
        source: InstallSource {
            kind: format!("debian sid root (debootstrap --variant=minbase, {mirror}), run through sid's ld.so"),
            packages: vs.into_iter().map(|(name, version)| PackageRef { name, version }).collect(),
            note: (!notes.is_empty()).then(|| notes.join("; ")),
        },
        installed_at: 0,
        install_seconds: 0.0,
    })
}

// ---------------------------------------------------------------------------
// CLI

/// `crossmig qemu ...`: manage side-by-side QEMU versions.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum QemuCmd {
    /// Install (or verify) QEMU versions into the cache ($CROSSMIG_CACHE or
    /// /var/cache/crossmig): 7.2 (bookworm debs), 10.0 (host, bookworm-backports),
    /// 11.1 (Debian sid root). No versions = all of them.
    Install {
        /// Versions to install: 7.2, 10.0, 11.1 (or "all").
        versions: Vec<String>,
    },
    /// List the installed versions (verified), with firmware folders and source packages.
    List,
}

/// Run a `crossmig qemu` subcommand.
pub fn run_qemu_cmd(cmd: QemuCmd) -> Result<()> {
    match cmd {
        QemuCmd::Install { versions } => {
            let versions: Vec<String> =
                if versions.is_empty() || versions.iter().any(|v| v == "all") {
                    KNOWN_VERSIONS.iter().map(|s| s.to_string()).collect()
                } else {
                    versions
                };
            for v in &versions {
                check_series(v)?;
            }
            eprintln!("crossmig qemu install: cache {}", cache_dir().display());
            let mut failed = Vec::new();
            for v in &versions {
                let t = Instant::now();
                match install(v) {
                    Ok(i) => eprintln!(
                        "[qemu {v}] ok: QEMU {} ({:.1} s){}",
                        i.manifest.qemu_version,
                        t.elapsed().as_secs_f64(),
                        i.manifest
                            .source
                            .note
                            .as_ref()
                            .map(|n| format!(" — note: {n}"))
                            .unwrap_or_default()
                    ),
                    Err(e) => {
                        eprintln!("[qemu {v}] FAILED: {e:#}");
                        failed.push(v.clone());
                    }
                }
            }
            if !failed.is_empty() {
                bail!("installing QEMU {} failed", failed.join(", "));
            }
            Ok(())
        }
        QemuCmd::List => {
            print!("{}", list_table());
            Ok(())
        }
    }
}

/// The `crossmig qemu list` table.
pub fn list_table() -> String {
    let mut rows: Vec<[String; 5]> = vec![[
        "VERSION".into(),
        "QEMU".into(),
        "INSTALLED AT (UTC)".into(),
        "BINARY".into(),
        "STATUS".into(),
    ]];
    let mut details: Vec<Vec<String>> = vec![Vec::new()];
    for s in cached_series() {
        match status(&s) {
            Status::Complete(i) => {
                let m = &i.manifest;
                rows.push([
                    s.clone(),
                    m.qemu_version.clone(),
                    if m.installed_at > 0 { fmt_utc(m.installed_at) } else { "?".into() },
                    m.binary.display().to_string(),
                    if i.recorded {
                        "ok".into()
                    } else {
                        "ok (host, not recorded: `crossmig qemu install 10.0`)".into()
                    },
                ]);
                let mut d = Vec::new();
                let fw: Vec<String> = m.data_dirs.iter().map(|p| p.display().to_string()).collect();
                d.push(format!(
                    "firmware (-L): {}",
                    if fw.is_empty() { "(built-in paths)".into() } else { fw.join(" ") }
                ));
                if let Some(l) = &m.loader {
                    d.push(format!(
                        "loader: {} --library-path {}",
                        l.ld_so.display(),
                        l.library_path.display()
                    ));
                }
                let pk: Vec<String> =
                    m.source.packages.iter().map(|p| format!("{}={}", p.name, p.version)).collect();
                d.push(format!("source: {}: {}", m.source.kind, pk.join(", ")));
                if m.install_seconds > 0.0 {
                    d.push(format!("install took {:.1} s", m.install_seconds));
                }
                if let Some(n) = &m.source.note {
                    d.push(format!("note: {n}"));
                }
                details.push(d);
            }
            st => {
                // One line in the table, the full reason below it.
                let reason = st.reason().unwrap_or_default();
                let first = reason.lines().next().unwrap_or("").to_string();
                let short = if first.chars().count() > 100 {
                    format!("{}…", first.chars().take(100).collect::<String>())
                } else {
                    first
                };
                rows.push([s.clone(), "-".into(), "-".into(), "-".into(), short]);
                details.push(if reason.contains('\n') || reason.chars().count() > 100 {
                    reason.lines().map(|l| format!("| {l}")).collect()
                } else {
                    Vec::new()
                });
            }
        }
    }
    let mut w = [0usize; 4];
    for r in &rows {
        for (i, c) in r.iter().take(4).enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = format!("cache: {}\n", cache_dir().display());
    for (r, d) in rows.iter().zip(&details) {
        out += &format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}\n",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
        for l in d {
            out += &format!("    {l}\n");
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for a Unix time.
pub fn fmt_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_matching() {
        assert!(series_matches("7.2", (7, 2, 22)));
        assert!(!series_matches("7.2", (7, 1, 0)));
        assert!(series_matches("10.0", (10, 0, 2)));
        assert!(!series_matches("10.0", (10, 2, 0)));
        assert!(series_matches("11.1", (11, 1, 3)));
        assert!(series_matches("11.1", (11, 2, 0)));
        assert!(!series_matches("11.1", (12, 0, 0)));
    }

    #[test]
    fn upstream_series() {
        assert!(is_upstream_series("1:7.2+dfsg-7+deb12u18+b3", "7.2"));
        assert!(!is_upstream_series("1:7.20+dfsg-1", "7.2"));
        assert!(!is_upstream_series("1:10.0.2+ds-2+deb13u1~bpo12+1", "7.2"));
        assert!(is_upstream_series("1:10.0.2+ds-2", "10.0"));
    }

    #[test]
    fn utc() {
        assert_eq!(fmt_utc(0), "1970-01-01 00:00:00");
        assert_eq!(fmt_utc(1_700_000_000), "2023-11-14 22:13:20");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn resolve_symlinks_in_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("usr/lib/x86_64-linux-gnu")).unwrap();
        fs::create_dir_all(root.join("usr/lib64")).unwrap();
        fs::write(root.join("usr/lib/x86_64-linux-gnu/ld.so"), b"").unwrap();
        std::os::unix::fs::symlink("/usr/lib/x86_64-linux-gnu/ld.so", root.join("usr/lib64/abs"))
            .unwrap();
        std::os::unix::fs::symlink("../lib/x86_64-linux-gnu/ld.so", root.join("usr/lib64/rel"))
            .unwrap();
        let want = root.join("usr/lib/x86_64-linux-gnu/ld.so");
        assert_eq!(resolve_in_root(root, &root.join("usr/lib64/abs")).unwrap(), want);
        assert_eq!(resolve_in_root(root, &root.join("usr/lib64/rel")).unwrap(), want);
    }
}
