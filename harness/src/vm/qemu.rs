//! Starting real QEMU processes with a file-backed (shareable) guest RAM.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;

use crate::qmp::{Qmp, DEFAULT_CONNECT_RETRY};
use crate::vm::procs::{file_tail, unique_name, ChildGuard, PathGuard};

/// How long [`QemuVm::start`] waits for the QMP socket.
pub const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of the process log included in error messages.
const LOG_TAIL: usize = 4096;

/// A QEMU system emulator binary and how to run it.
#[derive(Debug, Clone)]
pub struct QemuBinary {
    pub path: PathBuf,
    /// Firmware/data directories, each passed as `-L <dir>`.
    pub data_dirs: Vec<PathBuf>,
    /// `(ld.so, library path)`: run as `ld.so --library-path LIB <path> ...`
    /// (for binaries extracted into a private root).
    pub loader: Option<(PathBuf, PathBuf)>,
}

impl QemuBinary {
    pub fn new(path: impl Into<PathBuf>) -> QemuBinary {
        QemuBinary { path: path.into(), data_dirs: Vec::new(), loader: None }
    }

    /// `$CROSSMIG_QEMU` if set, else `qemu-system-x86_64` from `$PATH`.
    pub fn system() -> Result<QemuBinary> {
        if let Some(p) = std::env::var_os("CROSSMIG_QEMU").filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            if !p.exists() {
                bail!("CROSSMIG_QEMU={} does not exist", p.display());
            }
            return Ok(QemuBinary::new(p));
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        for dir in std::env::split_paths(&path) {
            let cand = dir.join("qemu-system-x86_64");
            if is_executable(&cand) {
                return Ok(QemuBinary::new(cand));
            }
        }
        bail!("qemu-system-x86_64 not found on PATH (set CROSSMIG_QEMU)")
    }

    /// A `Command` for this binary with loader and `-L` arguments applied.
    pub fn command(&self) -> Command {
        let mut cmd = match &self.loader {
            Some((ld, lib)) => {
                let mut c = Command::new(ld);
                c.arg("--library-path").arg(lib).arg(&self.path);
                c
            }
            None => Command::new(&self.path),
        };
        for d in &self.data_dirs {
            cmd.arg("-L").arg(d);
        }
        cmd
    }

    /// `(major, minor, micro)` parsed from `--version`.
    pub fn version(&self) -> Result<(u32, u32, u32)> {
        let mut cmd = self.command();
        let out = cmd.arg("--version").output().with_context(|| format!("running {cmd:?}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "{cmd:?} failed ({}): {}{}",
                out.status,
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse_qemu_version(&text).ok_or_else(|| anyhow!("cannot parse QEMU version from {text:?}"))
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Parse `"QEMU emulator version 10.0.2 (Debian ...)"`.
pub fn parse_qemu_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = &text[text.find("version ")? + "version ".len()..];
    let ver: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let mut it = ver.split('.').filter(|s| !s.is_empty()).map(|s| s.parse::<u32>().ok());
    let major = it.next()??;
    let minor = it.next().flatten().unwrap_or(0);
    let micro = it.next().flatten().unwrap_or(0);
    Some((major, minor, micro))
}

/// Configuration of one VM (source or destination).
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Machine type, e.g. `"q35"` or `"pc-q35-8.2"`.
    pub machine: String,
    pub mem_bytes: u64,
    /// File for `memory-backend-file` (normally in /dev/shm).
    pub mem_path: PathBuf,
    /// Memory backend object id, e.g. `"mem0"`.
    pub backend_id: String,
    /// Raw boot image (IDE).
    pub disk: Option<PathBuf>,
    /// Serial console log (`-serial file:`); `None` → `-serial none`.
    pub serial_log: Option<PathBuf>,
    pub qmp_socket: PathBuf,
    /// `-incoming` URI: `"tcp:127.0.0.1:4444"`, `"unix:/path"`, `"defer"`.
    pub incoming: Option<String>,
    /// Start with `-S`.
    pub paused: bool,
    /// Appended verbatim at the end of the command line.
    pub extra: Vec<String>,
}

impl VmConfig {
    /// A q35 config with unique names: RAM file `/dev/shm/<tag>-....ram`,
    /// QMP socket `$TMPDIR/<tag>-....qmp`, backend `mem0`, no disk, no serial.
    pub fn new(tag: &str, mem_bytes: u64) -> VmConfig {
        let name = unique_name(tag);
        VmConfig {
            machine: "q35".into(),
            mem_bytes,
            mem_path: PathBuf::from(format!("/dev/shm/{name}.ram")),
            backend_id: "mem0".into(),
            disk: None,
            serial_log: None,
            qmp_socket: std::env::temp_dir().join(format!("{name}.qmp")),
            incoming: None,
            paused: false,
            extra: Vec::new(),
        }
    }

    /// Name passed to `-name` (file stem of `mem_path`, or of the QMP socket).
    pub fn vm_name(&self) -> String {
        self.mem_path
            .file_stem()
            .or_else(|| self.qmp_socket.file_stem())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "crossmig".into())
    }
}

/// Escape a value for QEMU's `key=value,...` option syntax.
fn opt_escape(s: &str) -> String {
    s.replace(',', ",,")
}

fn mem_arg(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes.is_multiple_of(MIB) {
        format!("{}M", bytes / MIB)
    } else {
        format!("{bytes}B")
    }
}

/// QEMU command line (without the binary) for `cfg`. Standard QEMU syntax
/// only, so it can also be handed to a QEMU-compatible destination.
pub fn vm_args(cfg: &VmConfig) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(&["-accel", "tcg"]);
    push(&["-machine", &format!("{},memory-backend={}", cfg.machine, cfg.backend_id)]);
    push(&["-m", &mem_arg(cfg.mem_bytes)]);
    push(&[
        "-object",
        &format!(
            "memory-backend-file,id={},size={},mem-path={},share=on",
            cfg.backend_id,
            cfg.mem_bytes,
            opt_escape(&cfg.mem_path.to_string_lossy())
        ),
    ]);
    push(&["-nodefaults", "-display", "none"]);
    match &cfg.serial_log {
        Some(p) => push(&["-serial", &format!("file:{}", p.display())]),
        // A serial device must exist on both sides (its state migrates).
        None => push(&["-serial", "null"]),
    }
    if let Some(d) = &cfg.disk {
        push(&["-drive", &format!("file={},format=raw,if=ide", opt_escape(&d.to_string_lossy()))]);
    }
    push(&["-qmp", &format!("unix:{},server=on,wait=off", cfg.qmp_socket.display())]);
    if let Some(uri) = &cfg.incoming {
        push(&["-incoming", uri]);
    }
    if cfg.paused {
        push(&["-S"]);
    }
    push(&["-name", &cfg.vm_name()]);
    a.extend(cfg.extra.iter().cloned());
    a
}

/// How [`QemuVm::launch`] starts a process and connects to it.
#[derive(Clone, Debug)]
pub struct LaunchOpts {
    /// stdout+stderr of the process.
    pub log: PathBuf,
    /// Remove the log when the VM is dropped (default: keep it).
    pub remove_log: bool,
    /// How long to wait for the QMP socket and handshake.
    pub connect_timeout: Duration,
    /// How often to retry the QMP socket while it is not there yet
    /// (20 ms; the bench times start-up with 1 ms).
    pub connect_poll: Duration,
    /// Per-command QMP timeout (default [`crate::qmp::DEFAULT_COMMAND_TIMEOUT`]).
    pub command_timeout: Option<Duration>,
    /// How often [`QemuVm::wait_serial`] reads the serial log.
    pub serial_poll: Duration,
    /// Appended to the command line after [`vm_args`].
    pub extra_args: Vec<String>,
    /// A whole command line used instead of [`vm_args`] (e.g. one written
    /// the way a management stack writes it). It must put the QMP monitor
    /// on `cfg.qmp_socket`; `cfg.mem_path` is still removed on drop.
    pub argv: Option<Vec<String>>,
    /// Environment variables set for the process. `CROSSMIG_DEFECT` (the
    /// seeded-defects build's switch) is never inherited, only set here.
    pub env: Vec<(String, String)>,
    /// A destination: this rust-dest binary instead of the usual one.
    pub rust_dest: Option<PathBuf>,
}

impl LaunchOpts {
    pub fn new(log: impl Into<PathBuf>) -> LaunchOpts {
        LaunchOpts {
            log: log.into(),
            remove_log: false,
            connect_timeout: QMP_CONNECT_TIMEOUT,
            connect_poll: DEFAULT_CONNECT_RETRY,
            command_timeout: None,
            serial_poll: Duration::from_millis(50),
            extra_args: Vec::new(),
            argv: None,
            env: Vec::new(),
            rust_dest: None,
        }
    }
}

/// Why [`QemuVm::launch`] failed. Every variant carries the command line
/// and the tail of the process log.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("starting QEMU failed: {source:#}\ncommand: {cmdline}")]
    Spawn { cmdline: String, source: anyhow::Error },
    #[error("starting QEMU failed: QEMU exited during startup ({status})\ncommand: {cmdline}\nlog {}:\n{tail}", log.display())]
    Exited { status: String, cmdline: String, log: PathBuf, tail: String },
    #[error("starting QEMU failed: {source:#}\ncommand: {cmdline}\nlog {}:\n{tail}", log.display())]
    Qmp { cmdline: String, log: PathBuf, tail: String, source: anyhow::Error },
}

/// A running QEMU (or rust-dest) with a connected QMP monitor: the one
/// launcher of the harness.
///
/// Dropping it kills the process group and removes the RAM file and the QMP
/// socket (fields drop in declaration order: process first, files last).
pub struct QemuVm {
    pub child: ChildGuard,
    pub qmp: Qmp,
    pub cfg: VmConfig,
    /// The process log.
    pub log: PathBuf,
    /// Spawn → QMP handshake done.
    pub startup: Duration,
    serial_poll: Duration,
    _guards: Vec<PathGuard>,
}

impl std::fmt::Debug for QemuVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuVm").field("pid", &self.child.pid()).field("cfg", &self.cfg).finish()
    }
}

impl QemuVm {
    /// Spawn `bin` with [`vm_args`]`(&cfg)`, output to `log`, and connect
    /// to QMP with the default [`LaunchOpts`].
    pub async fn start(bin: &QemuBinary, cfg: VmConfig, log: PathBuf) -> Result<QemuVm> {
        Ok(Self::launch(bin, cfg, LaunchOpts::new(log)).await?)
    }

    /// Spawn `bin` with [`vm_args`]`(&cfg)` and `opts.extra_args`, and
    /// connect to QMP. If the process dies or QMP does not come up, the error
    /// contains the command line and the tail of the log.
    pub async fn launch(
        bin: &QemuBinary,
        cfg: VmConfig,
        opts: LaunchOpts,
    ) -> Result<QemuVm, LaunchError> {
        // Guards first, so the files are removed whatever happens below.
        let mut guards = vec![PathGuard::new(&cfg.mem_path), PathGuard::new(&cfg.qmp_socket)];
        if opts.remove_log {
            guards.push(PathGuard::new(&opts.log));
        }
        let log = opts.log.clone();
        let mut cmd = bin.command();
        match &opts.argv {
            Some(argv) => cmd.args(argv),
            None => cmd.args(vm_args(&cfg)),
        };
        cmd.args(&opts.extra_args);
        cmd.env_remove("CROSSMIG_DEFECT");
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        let cmdline = format!("{cmd:?}");
        tracing::debug!("starting QEMU: {cmdline}");
        let t = Instant::now();
        let mut child = match ChildGuard::spawn(cmd, &log) {
            Ok(c) => c,
            Err(source) => return Err(LaunchError::Spawn { cmdline, source }),
        };

        let sock = cfg.qmp_socket.clone();
        let connect = Qmp::connect_every(&sock, opts.connect_timeout, opts.connect_poll);
        tokio::pin!(connect);
        let liveness = opts.connect_poll.max(Duration::from_millis(50));
        enum Failed {
            Exited(String),
            Qmp(anyhow::Error),
        }
        let res: Result<Qmp, Failed> = loop {
            tokio::select! {
                r = &mut connect => break r.map_err(Failed::Qmp),
                _ = tokio::time::sleep(liveness) => {
                    if !child.is_running() {
                        // give the log a moment to be complete
                        let st = child.wait_exit_async(Duration::from_millis(200)).await;
                        break Err(Failed::Exited(
                            st.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
                        ));
                    }
                }
            }
        };
        match res {
            Ok(qmp) => {
                if let Some(t) = opts.command_timeout {
                    qmp.set_timeout(t);
                }
                Ok(QemuVm {
                    child,
                    qmp,
                    cfg,
                    log,
                    startup: t.elapsed(),
                    serial_poll: opts.serial_poll,
                    _guards: guards,
                })
            }
            Err(f) => {
                child.kill();
                let tail = file_tail(&log, LOG_TAIL);
                Err(match f {
                    Failed::Exited(status) => LaunchError::Exited { status, cmdline, log, tail },
                    Failed::Qmp(source) => LaunchError::Qmp { cmdline, log, tail, source },
                })
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Tail of the QEMU process log (stdout+stderr).
    pub fn log_tail(&self, n_bytes: usize) -> String {
        self.child.log_tail(n_bytes)
    }

    /// Stop guarding the RAM file and the socket (they will not be removed
    /// on drop); returns their paths.
    pub fn keep_files(&mut self) -> Vec<PathBuf> {
        self._guards.drain(..).map(PathGuard::keep).collect()
    }

    /// Whole serial log so far (empty if none).
    pub fn serial_contents(&self) -> String {
        match &self.cfg.serial_log {
            Some(p) => std::fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
            None => String::new(),
        }
    }

    /// Poll the serial log (every 50 ms unless [`LaunchOpts::serial_poll`]) until `pred(contents)` holds.
    /// Returns the contents; fails on timeout or if QEMU exits.
    pub async fn wait_serial(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        if self.cfg.serial_log.is_none() {
            bail!("VM has no serial log configured");
        }
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.serial_contents();
            if pred(&s) {
                return Ok(s);
            }
            let tail = |s: &str| s[s.len().saturating_sub(2048)..].to_owned();
            if !self.child.is_running() {
                bail!(
                    "QEMU (pid {}) exited while waiting for serial output; serial tail:\n{}\nlog tail:\n{}",
                    self.pid(),
                    tail(&s),
                    self.log_tail(LOG_TAIL)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for serial output; serial tail:\n{}",
                    tail(&s)
                );
            }
            tokio::time::sleep(self.serial_poll).await;
        }
    }

    /// Convenience for `self.qmp.execute(..)` returning `anyhow::Result`.
    pub async fn execute(&self, cmd: &str, args: Value) -> Result<Value> {
        Ok(self.qmp.execute(cmd, args).await?)
    }

    /// QMP `quit`, wait up to 10 s for exit, otherwise SIGKILL. Removes the
    /// RAM file and socket. Returns the exit status if QEMU exited by itself.
    pub async fn quit(self) -> Option<ExitStatus> {
        let QemuVm { mut child, qmp, _guards, .. } = self;
        if child.is_running() {
            // QEMU may close the socket before replying; ignore errors.
            let _ = qmp.execute_timeout("quit", Value::Null, Duration::from_secs(5)).await;
        }
        let st = child.wait_exit_async(Duration::from_secs(10)).await;
        if st.is_none() {
            tracing::warn!("QEMU pid {} did not exit after quit; killing", child.pid());
            child.kill();
        }
        drop(qmp);
        drop(child);
        drop(_guards);
        st
    }

    /// SIGKILL now and clean up.
    pub fn kill(self) {
        drop(self)
    }
}
