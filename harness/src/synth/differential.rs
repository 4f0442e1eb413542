//! Running one script against one destination ([`run_script`]) or against a
//! real QEMU destination and rust-dest at once ([`differential`]), and the one
//! comparison of both outcomes with the script's expectation
//! ([`Differential::problems`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use serde_json::{json, Value};

use super::layout::{BlockInfo, SourceLayout, GUEST_MEM};
use super::multifd::layout_for_version;
use super::player::{play_with, PlayResult};
use super::step::Step;
use super::verdict::{await_verdict, Verdict, VerdictKind};
use crate::qmp::MigrationStatus;
use crate::verify::model::{check_memory, MemCheck};
use crate::vm::dest::{start_dest_with, DestKind};
use crate::vm::procs::free_tcp_port;
use crate::vm::qemu::{LaunchOpts, QemuBinary, QemuVm, VmConfig};
use wire::multifd::PacketLayout;

/// Per-command QMP timeout of a synthetic-source destination.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run a script against one destination.
#[derive(Clone, Debug)]
pub struct RunOpts {
    /// Set `postcopy-ram` before `migrate-incoming`.
    pub postcopy_ram: bool,
    /// Bound for [`play`].
    pub play_timeout: Duration,
    /// Bound for [`await_verdict`].
    pub verdict_timeout: Duration,
    /// Compare the backend file with the model on completion.
    pub check_memory: bool,
    /// QMP `cont` before `migrate-incoming`: the guest runs as soon as it
    /// can (after POSTCOPY_RUN in postcopy), so it touches RAM and faults.
    pub autostart: bool,
    /// Further capabilities set before `migrate-incoming` (e.g. `multifd`).
    pub capabilities: Vec<(String, bool)>,
    /// `migrate-set-parameters` arguments (e.g. `multifd-channels`), if any.
    pub parameters: Option<Value>,
    /// The destinations' `-machine` type (None: the `q35` alias).
    pub machine: Option<String>,
}

impl Default for RunOpts {
    fn default() -> Self {
        RunOpts {
            postcopy_ram: false,
            play_timeout: Duration::from_secs(20),
            verdict_timeout: Duration::from_secs(10),
            check_memory: true,
            autostart: false,
            capabilities: Vec::new(),
            parameters: None,
            machine: None,
        }
    }
}

/// Everything observed on one destination.
#[derive(Debug)]
pub struct DestRun {
    pub kind: DestKind,
    pub verdict: Verdict,
    pub play: Option<PlayResult>,
    /// Why play could not run (connect failure, bad script).
    pub play_error: Option<String>,
    /// mem0 file vs model (only when completed and requested).
    pub memory: Option<MemCheck>,
    /// rust-dest only, on completion: the RAMBlocks it created from the
    /// stream (`x-crossmig-query-ramblocks`).
    pub rust_blocks: Option<Vec<BlockInfo>>,
    pub log_tail: String,
    /// The signal that ended the destination process during the run (a
    /// crash), seen before it was asked to quit.
    pub exit_signal: Option<nix::sys::signal::Signal>,
    pub total: Duration,
    /// For cleanup checks.
    pub pid: u32,
    pub paths: Vec<PathBuf>,
}

impl DestRun {
    pub fn summary(&self) -> String {
        let mut s = format!("{:<4} {}", self.kind.name(), self.verdict);
        if let Some(p) = &self.play {
            s += &format!("\n       play: {}", p.summary());
        }
        if let Some(e) = &self.play_error {
            s += &format!("\n       play error: {e}");
        }
        if let Some(m) = &self.memory {
            s += &format!("\n       memory: {m}");
        }
        s
    }
}

/// Start a destination of `kind` (`vm::dest::start_dest_with`: `-incoming
/// defer -S`, 10 s per QMP command), set capabilities, `migrate-incoming tcp:127.0.0.1:PORT`,
/// play `script`, judge the verdict and (on completion) memory. The
/// destination is always shut down and its files removed before returning.
pub async fn run_script(
    kind: DestKind,
    qemu: &QemuBinary,
    layout: &SourceLayout,
    script: &[Step],
    opts: &RunOpts,
    workdir: &Path,
    tag: &str,
) -> Result<DestRun> {
    let t0 = Instant::now();
    let mut cfg = VmConfig::new(&format!("synth-{tag}-{}", kind.name()), GUEST_MEM);
    if let Some(m) = &opts.machine {
        cfg.machine = m.clone();
    }
    let paths = vec![cfg.mem_path.clone(), cfg.qmp_socket.clone()];
    let log = workdir.join(format!("{}.log", cfg.vm_name()));
    let launch = LaunchOpts { command_timeout: Some(QMP_TIMEOUT), ..LaunchOpts::new(log) };
    let vm = start_dest_with(kind, qemu, cfg, launch).await?;
    let pid = vm.pid();
    // The destination reads multifd packets in its own version's layout.
    let packet_layout = match qemu.version() {
        Ok((major, minor, _)) => layout_for_version(major, minor),
        Err(_) => PacketLayout::V9,
    };
    let r = drive(kind, &vm, layout, script, opts, packet_layout).await;
    let log_tail = vm.log_tail(6000);
    let exit_signal = vm.child.exit_signal();
    vm.quit().await;
    let (verdict, play, play_error, memory, rust_blocks) =
        r.map_err(|e| anyhow!("{e:#}\n--- {} log ---\n{log_tail}", kind.name()))?;
    Ok(DestRun {
        kind,
        verdict,
        play,
        play_error,
        memory,
        rust_blocks,
        log_tail,
        exit_signal,
        total: t0.elapsed(),
        pid,
        paths,
    })
}

type DriveOut =
    (Verdict, Option<PlayResult>, Option<String>, Option<MemCheck>, Option<Vec<BlockInfo>>);

async fn drive(
    kind: DestKind,
    vm: &QemuVm,
    layout: &SourceLayout,
    script: &[Step],
    opts: &RunOpts,
    packet_layout: PacketLayout,
) -> Result<DriveOut> {
    let mut caps: Vec<(&str, bool)> =
        opts.capabilities.iter().map(|(c, on)| (c.as_str(), *on)).collect();
    if opts.postcopy_ram {
        caps.insert(0, ("postcopy-ram", true));
    }
    if !caps.is_empty() {
        vm.qmp.set_capabilities(&caps).await.context("migrate-set-capabilities")?;
    }
    if let Some(p) = &opts.parameters {
        vm.qmp.set_parameters(p.clone()).await.context("migrate-set-parameters")?;
    }
    if opts.autostart {
        vm.execute("cont", Value::Null).await.context("cont (autostart)")?;
    }
    let mut attempt = 0;
    let addr: SocketAddr = loop {
        let port = free_tcp_port();
        let uri = format!("tcp:127.0.0.1:{port}");
        match vm.execute("migrate-incoming", json!({ "uri": uri })).await {
            Ok(_) => break format!("127.0.0.1:{port}").parse().unwrap(),
            Err(e) if attempt < 3 && vm.child.is_running() => {
                tracing::warn!("migrate-incoming {uri}: {e:#}; retrying");
                attempt += 1;
            }
            Err(e) => return Err(e.context("migrate-incoming")),
        }
    };
    let (play, play_error) =
        match play_with(addr, layout, script, opts.play_timeout, packet_layout).await {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
    let verdict = await_verdict(vm, opts.verdict_timeout).await;
    let mut memory = None;
    let mut rust_blocks = None;
    if verdict == Verdict::Completed {
        if let (true, Some(p)) = (opts.check_memory, &play) {
            memory = Some(check_memory(&p.model, &vm.cfg.backend_id, &vm.cfg.mem_path)?);
        }
        if kind == DestKind::Rust {
            let v = vm.execute("x-crossmig-query-ramblocks", Value::Null).await?;
            rust_blocks = Some(
                v.as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|b| BlockInfo {
                        name: b["name"].as_str().unwrap_or("?").into(),
                        used_length: b["used-length"].as_u64().unwrap_or(0),
                    })
                    .collect(),
            );
        }
    }
    Ok((verdict, play, play_error, memory, rust_blocks))
}

// ---------------------------------------------------------------------------
// Expectations and the comparison

/// What a script must lead to on both destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Completed,
    Failed,
    /// Neither: the destination waits (e.g. in postcopy-paused after a load
    /// error once postcopy runs, as QEMU does).
    Stuck,
    /// Stuck in `postcopy-paused` precisely (QEMU pauses instead of failing
    /// on a load error once postcopy runs).
    PostcopyPaused,
    /// Stuck with a monitor that never answers `query-migrate` (a QEMU
    /// destination whose main loop is blocked): only for a documented QEMU
    /// bug (`qemu-verdict`).
    Hang,
    /// The process died of a signal (SIGSEGV, SIGABRT): only for a
    /// documented QEMU bug (`qemu-verdict`).
    Crash,
}

impl Expect {
    pub fn as_str(self) -> &'static str {
        match self {
            Expect::Completed => "completed",
            Expect::Failed => "failed",
            Expect::Stuck => "stuck",
            Expect::PostcopyPaused => "postcopy-paused",
            Expect::Hang => "hang",
            Expect::Crash => "crash",
        }
    }

    /// Is `o` what this expectation asks for?
    pub fn met_by(self, o: &Observed) -> bool {
        match (self, o) {
            (Expect::Completed, Observed::Completed)
            | (Expect::Failed, Observed::Failed)
            // A destination that dies of a signal has failed the migration
            // too (QEMU 7.2 aborts on an assertion while cleaning up after
            // some load errors, e.g. stream-listen-twice); only `Crash`
            // insists on the signal.
            | (Expect::Failed, Observed::Crashed(_))
            | (Expect::Stuck, Observed::Stuck(_)) => true,
            (Expect::PostcopyPaused, Observed::Stuck(s)) => {
                s.as_ref() == Some(&MigrationStatus::PostcopyPaused)
            }
            (Expect::Hang, Observed::Stuck(None)) | (Expect::Crash, Observed::Crashed(_)) => true,
            _ => false,
        }
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a destination ended, in the terms an [`Expect`] is stated in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    Completed,
    Failed,
    /// Waiting in this status (None: the monitor never answered).
    Stuck(Option<MigrationStatus>),
    /// The process died of this signal.
    Crashed(nix::sys::signal::Signal),
}

impl std::fmt::Display for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Observed::Completed => f.write_str("completed"),
            Observed::Failed => f.write_str("failed"),
            Observed::Stuck(s) => {
                f.write_str(s.as_ref().map(MigrationStatus::as_str).unwrap_or("?"))
            }
            Observed::Crashed(sig) => write!(f, "crashed ({sig})"),
        }
    }
}

impl DestRun {
    /// The verdict as an expectation sees it.
    pub fn observed(&self) -> Observed {
        match &self.verdict {
            Verdict::Completed => Observed::Completed,
            Verdict::Failed(_) if self.exit_signal.is_some() => {
                Observed::Crashed(self.exit_signal.expect("checked"))
            }
            Verdict::Failed(_) => Observed::Failed,
            // QEMU's monitor can stop answering while its migration is
            // paused; its own log line then says so.
            Verdict::Stuck { status: None, .. } if self.log_tail.contains("Migration paused") => {
                Observed::Stuck(Some(MigrationStatus::PostcopyPaused))
            }
            // A destination that told the source SHUT(non-zero) has failed,
            // even if its status lags (seen with QEMU 11.1 in postcopy-device).
            Verdict::Stuck { .. }
                if self.play.as_ref().is_some_and(|p| p.shuts().iter().any(|v| *v != 0)) =>
            {
                Observed::Failed
            }
            Verdict::Stuck { status, .. } => Observed::Stuck(status.clone()),
        }
    }
}

/// Everything a script expects of both destinations.
#[derive(Clone, Debug)]
pub struct Expectation {
    /// What both destinations must do (rust-dest always).
    pub verdict: Expect,
    /// What the QEMU destination does instead, because of a QEMU bug
    /// written down in `qemu_bug` (a `docs/` reference): no disagreement is
    /// reported then, each destination is held to its own verdict.
    pub qemu_verdict: Option<Expect>,
    pub qemu_bug: Option<String>,
    /// A regex the failure text (or the log) of the QEMU destination must
    /// match when it failed.
    pub qemu_error: Option<regex::Regex>,
    /// The same for rust-dest.
    pub rust_error: Option<regex::Regex>,
    /// PONG values, in order.
    pub pongs: Option<Vec<u32>>,
    /// The SHUT value on completion.
    pub shut: Option<u32>,
}

impl From<Expect> for Expectation {
    fn from(verdict: Expect) -> Self {
        Expectation {
            verdict,
            qemu_verdict: None,
            qemu_bug: None,
            qemu_error: None,
            rust_error: None,
            pongs: None,
            shut: None,
        }
    }
}

/// One way the destinations did not do what the script expects.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Problem {
    #[error(
        "DISAGREEMENT: verdicts differ between QEMU (the oracle, {qemu}) and rust-dest ({rust})"
    )]
    Disagreement { qemu: VerdictKind, rust: VerdictKind },
    #[error("{dest}: verdict {got} but the script expects {want}")]
    Verdict { dest: &'static str, got: Observed, want: Expect },
    #[error("qemu: verdict {got} but the script expects {want} (QEMU bug {bug}): fixed in this QEMU? update the script")]
    BugVerdict { got: Observed, want: Expect, bug: String },
    #[error("{dest}: error does not match /{re}/")]
    ErrorText { dest: &'static str, re: String },
    #[error("{dest}: play error: {error}")]
    PlayError { dest: &'static str, error: String },
    #[error("{dest}: memory differs from the script's model: {check}")]
    Memory { dest: &'static str, check: MemCheck },
    #[error("{dest}: PONGs {got:?}, expected {want:?}")]
    Pongs { dest: &'static str, got: Vec<u32>, want: Vec<u32> },
    #[error("{dest}: no SHUT({want}) received (got {got:?})")]
    Shut { dest: &'static str, want: u32, got: Vec<u32> },
    #[error("{dest}: unmet return-path expectations: {}", unmet.join("; "))]
    UnmetRp { dest: &'static str, unmet: Vec<String> },
    #[error("{dest}: play aborted: {why}")]
    Aborted { dest: &'static str, why: String },
}

/// Both destinations' results for one script.
#[derive(Debug)]
pub struct Differential {
    pub name: String,
    pub expect: Expectation,
    pub qemu: DestRun,
    pub rust: DestRun,
    pub total: Duration,
}

impl Differential {
    /// Both verdicts side by side.
    pub fn side_by_side(&self) -> String {
        format!(
            "script '{}' (expected {}{}), {:.1}s\n  {}\n  {}",
            self.name,
            self.expect.verdict,
            self.expect
                .qemu_verdict
                .map(|q| format!(
                    ", QEMU {q} (bug {})",
                    self.expect.qemu_bug.as_deref().unwrap_or("?")
                ))
                .unwrap_or_default(),
            self.total.as_secs_f64(),
            self.qemu.summary(),
            self.rust.summary()
        )
    }

    /// Everything that differs from the expectation: the verdict kinds of
    /// the two destinations differ; a verdict is not the expected one; a
    /// failure text does not match; play could not run; memory differs from
    /// the model; PONGs or SHUT differ; on an expected completion, unmet
    /// return-path expectations or an aborted play.
    pub fn problems(&self) -> Vec<Problem> {
        let x = &self.expect;
        let mut p = Vec::new();
        if x.qemu_verdict.is_none() && self.qemu.verdict.kind() != self.rust.verdict.kind() {
            p.push(Problem::Disagreement {
                qemu: self.qemu.verdict.kind(),
                rust: self.rust.verdict.kind(),
            });
        }
        let qemu_want = x.qemu_verdict.unwrap_or(x.verdict);
        for (d, re, want) in
            [(&self.qemu, &x.qemu_error, qemu_want), (&self.rust, &x.rust_error, x.verdict)]
        {
            let dest = d.kind.name();
            let got = d.observed();
            if !want.met_by(&got) {
                p.push(match (&x.qemu_bug, d.kind) {
                    (Some(bug), DestKind::Qemu) if x.qemu_verdict.is_some() => {
                        Problem::BugVerdict { got, want, bug: bug.clone() }
                    }
                    _ => Problem::Verdict { dest, got, want },
                });
            }
            if let (Some(re), VerdictKind::Failed) = (re, d.verdict.kind()) {
                // QEMU's specific message may be several log lines above the last.
                if !re.is_match(d.verdict.error()) && !re.is_match(&d.log_tail) {
                    p.push(Problem::ErrorText { dest, re: re.as_str().into() });
                }
            }
            if let Some(e) = &d.play_error {
                p.push(Problem::PlayError { dest, error: e.clone() });
            }
            if let Some(m) = &d.memory {
                if !m.ok() {
                    p.push(Problem::Memory { dest, check: m.clone() });
                }
            }
            let Some(pl) = &d.play else { continue };
            if let Some(want) = &x.pongs {
                let got = pl.pongs();
                if &got != want {
                    p.push(Problem::Pongs { dest, got, want: want.clone() });
                }
            }
            if let (Some(want), VerdictKind::Completed) = (x.shut, d.verdict.kind()) {
                if !pl.shuts().contains(&want) {
                    p.push(Problem::Shut { dest, want, got: pl.shuts() });
                }
            }
            if want == Expect::Completed {
                if !pl.expect_failures.is_empty() {
                    p.push(Problem::UnmetRp { dest, unmet: pl.expect_failures.clone() });
                }
                if let Some(a) = &pl.aborted {
                    p.push(Problem::Aborted { dest, why: a.clone() });
                }
            }
        }
        p
    }
}

/// Run `script` on a QEMU and a rust-dest destination concurrently.
pub async fn differential(
    name: &str,
    qemu: &QemuBinary,
    layout: &SourceLayout,
    script: &[Step],
    expect: impl Into<Expectation>,
    opts: &RunOpts,
    workdir: &Path,
) -> Result<Differential> {
    let t0 = Instant::now();
    let (q, r) = tokio::join!(
        run_script(DestKind::Qemu, qemu, layout, script, opts, workdir, name),
        run_script(DestKind::Rust, qemu, layout, script, opts, workdir, name),
    );
    Ok(Differential {
        name: name.into(),
        expect: expect.into(),
        qemu: q.context("QEMU destination")?,
        rust: r.context("rust-dest")?,
        total: t0.elapsed(),
    })
}
