//! Running one script against one destination ([`run_script`]) or against a
//! real QEMU destination and rust-dest at once ([`differential`]), and the one
//! comparison of both outcomes with the script's expectation
//! ([`Differential::problems`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use serde_json::Value;

use super::layout::{BlockInfo, SourceLayout, GUEST_MEM};
use super::multifd::layout_for_version;
use super::player::{play_with, PlayResult};
use super::step::Step;
use super::verdict::{await_verdict, Verdict, VerdictKind};
use crate::qmp::MigrationStatus;
use crate::verify::limits::{check_end, DestExpect, EndProblem, Measured, RssProbe};
use crate::verify::model::{check_memory, MemCheck};
use crate::vm::dest::{listen_tcp, start_dest_with, DestKind};
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
    /// The destinations' `-machine` type and properties (None: `q35`).
    pub machine: Option<String>,
    /// QMP `cont` before `migrate-incoming`: the guest runs as soon as it
    /// can (after POSTCOPY_RUN in postcopy), so it touches RAM and faults.
    pub autostart: bool,
    /// Further capabilities set before `migrate-incoming` (e.g. `multifd`).
    pub capabilities: Vec<(String, bool)>,
    /// `migrate-set-parameters` arguments (e.g. `multifd-channels`), if any.
    pub parameters: Option<Value>,
    /// Extra command-line arguments of a rust-dest destination (e.g. its
    /// simulated vCPUs: `--vcpu-pattern sweep`).
    pub rust_args: Vec<String>,
    /// The destinations' guest RAM size (None: [`GUEST_MEM`]); a replayed
    /// recording needs the size it was recorded with.
    pub guest_mem: Option<u64>,
    /// rust-dest: this binary instead of the usual one, with this
    /// environment (the `seeded-defects` build and its `CROSSMIG_DEFECT`;
    /// `crossmig defects`).
    pub rust_dest: Option<PathBuf>,
    pub rust_env: Vec<(String, String)>,
}

impl Default for RunOpts {
    fn default() -> Self {
        RunOpts {
            postcopy_ram: false,
            play_timeout: Duration::from_secs(20),
            verdict_timeout: Duration::from_secs(10),
            check_memory: true,
            machine: None,
            autostart: false,
            capabilities: Vec::new(),
            parameters: None,
            rust_args: Vec::new(),
            guest_mem: None,
            rust_dest: None,
            rust_env: Vec::new(),
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
    /// A check after the verdict that could not run (reading the RAM file,
    /// querying rust-dest's RAMBlocks); the verdict is kept.
    pub check_error: Option<String>,
    pub log_tail: String,
    pub total: Duration,
    /// Run state at the end, peak RSS, migration time.
    pub measured: Measured,
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
        s += &format!("\n       {}", self.measured);
        if let Some(e) = &self.check_error {
            s += &format!("\n       check error: {e}");
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
    let mut cfg =
        VmConfig::new(&format!("synth-{tag}-{}", kind.name()), opts.guest_mem.unwrap_or(GUEST_MEM));
    if let Some(m) = &opts.machine {
        cfg.machine = m.clone();
    }
    if kind == DestKind::Rust {
        cfg.extra = opts.rust_args.clone();
    }
    let paths = vec![cfg.mem_path.clone(), cfg.qmp_socket.clone()];
    let log = workdir.join(format!("{}.log", cfg.vm_name()));
    let mut launch = LaunchOpts { command_timeout: Some(QMP_TIMEOUT), ..LaunchOpts::new(log) };
    if kind == DestKind::Rust {
        launch.rust_dest = opts.rust_dest.clone();
        launch.env = opts.rust_env.clone();
    }
    let vm = start_dest_with(kind, qemu, cfg, launch).await?;
    let pid = vm.pid();
    // The destination reads multifd packets in its own version's layout.
    let packet_layout = match qemu.version() {
        Ok((major, minor, _)) => layout_for_version(major, minor),
        Err(_) => PacketLayout::V9,
    };
    let probe = RssProbe::start(pid);
    let r = drive(kind, &vm, layout, script, opts, packet_layout).await;
    // A monitor that never answered (a hung QEMU main loop) will not answer
    // `query-status` or `quit` either: kill it instead of waiting for both.
    let hung = matches!(&r, Ok(d) if matches!(d.verdict, Verdict::Stuck { status: None, .. }));
    let run_state = match vm.child.is_running() && !hung {
        true => vm.qmp.run_state().await.ok(),
        false => None,
    };
    let peak_rss = probe.finish();
    let log_tail = vm.log_tail(6000);
    if hung {
        vm.kill();
    } else {
        vm.quit().await;
    }
    let DriveOut { verdict, play, play_error, memory, rust_blocks, check_error, time } =
        r.map_err(|e| anyhow!("{e:#}\n--- {} log ---\n{log_tail}", kind.name()))?;
    Ok(DestRun {
        kind,
        verdict,
        play,
        play_error,
        memory,
        rust_blocks,
        check_error,
        log_tail,
        total: t0.elapsed(),
        measured: Measured { run_state, peak_rss, time },
        pid,
        paths,
    })
}

/// What [`drive`] observed (see [`DestRun`]).
struct DriveOut {
    verdict: Verdict,
    play: Option<PlayResult>,
    play_error: Option<String>,
    memory: Option<MemCheck>,
    rust_blocks: Option<Vec<BlockInfo>>,
    check_error: Option<String>,
    /// The migration time: until the verdict, if it is a final status.
    time: Option<Duration>,
}

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
    let port = listen_tcp(vm).await?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let t_incoming = Instant::now();
    let (play, play_error) =
        match play_with(addr, layout, script, opts.play_timeout, packet_layout).await {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
    let verdict = await_verdict(vm, opts.verdict_timeout).await;
    // The migration time: until the verdict, if it is a final status.
    let time = (verdict.kind() != VerdictKind::Stuck).then(|| t_incoming.elapsed());
    let mut out = DriveOut {
        verdict,
        play,
        play_error,
        memory: None,
        rust_blocks: None,
        check_error: None,
        time,
    };
    if out.verdict == Verdict::Completed {
        // Checks after the verdict: a failure is recorded, the verdict kept.
        if let Err(e) = after_completion(kind, vm, opts, &mut out).await {
            out.check_error = Some(format!("{e:#}"));
        }
    }
    Ok(out)
}

/// On completion: memory against the model, rust-dest's RAMBlocks.
async fn after_completion(
    kind: DestKind,
    vm: &QemuVm,
    opts: &RunOpts,
    out: &mut DriveOut,
) -> Result<()> {
    if let (true, Some(p)) = (opts.check_memory, &out.play) {
        let m = check_memory(&p.model, &vm.cfg.backend_id, &vm.cfg.mem_path)
            .with_context(|| format!("memory check of {}", vm.cfg.mem_path.display()))?;
        out.memory = Some(m);
    }
    if kind == DestKind::Rust {
        let v = vm.execute("x-crossmig-query-ramblocks", Value::Null).await?;
        out.rust_blocks = Some(
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
    Ok(())
}

// ---------------------------------------------------------------------------
// Expectations and the comparison

/// What a script must lead to on both destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Completed,
    Failed,
    /// The destination process died of a signal (a known QEMU crash, e.g. an
    /// abort on a failed assertion): kept as a scenario so that a fixed QEMU
    /// shows up as a change.
    Crashed,
    /// Either (a crash that does not happen on every run, e.g. QEMU 7.2's
    /// `qemu_thread_join` abort, docs/qemu-bugs.md).
    FailedOrCrashed,
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
}

impl Expect {
    pub fn as_str(self) -> &'static str {
        match self {
            Expect::Completed => "completed",
            Expect::Failed => "failed",
            Expect::Crashed => "crashed",
            Expect::FailedOrCrashed => "failed-or-crashed",
            Expect::Stuck => "stuck",
            Expect::PostcopyPaused => "postcopy-paused",
            Expect::Hang => "hang",
        }
    }

    /// Is `o` what this expectation asks for?
    pub fn met_by(self, o: &Observed) -> bool {
        match (self, o) {
            (Expect::Completed, Observed::Completed)
            | (Expect::Failed, Observed::Failed)
            | (Expect::Crashed, Observed::Crashed)
            | (Expect::FailedOrCrashed, Observed::Failed | Observed::Crashed)
            | (Expect::Stuck, Observed::Stuck(_)) => true,
            (Expect::PostcopyPaused, Observed::Stuck(s)) => {
                s.as_ref() == Some(&MigrationStatus::PostcopyPaused)
            }
            (Expect::Hang, Observed::Stuck(None)) => true,
            _ => false,
        }
    }
}

impl std::str::FromStr for Expect {
    type Err = String;
    fn from_str(s: &str) -> Result<Expect, String> {
        Ok(match s {
            "completed" => Expect::Completed,
            "failed" => Expect::Failed,
            "crashed" => Expect::Crashed,
            "failed-or-crashed" => Expect::FailedOrCrashed,
            "postcopy-paused" => Expect::PostcopyPaused,
            "stuck" => Expect::Stuck,
            "hang" => Expect::Hang,
            v => {
                return Err(format!(
                    "must be \"completed\", \"failed\", \"crashed\", \"failed-or-crashed\", \"postcopy-paused\", \"stuck\" or \"hang\", not {v:?}"
                ))
            }
        })
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
    /// Died of a signal.
    Crashed,
    /// Waiting in this status (None: the monitor never answered).
    Stuck(Option<MigrationStatus>),
}

impl std::fmt::Display for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Observed::Completed => f.write_str("completed"),
            Observed::Failed => f.write_str("failed"),
            Observed::Crashed => f.write_str("crashed"),
            Observed::Stuck(s) => {
                f.write_str(s.as_ref().map(MigrationStatus::as_str).unwrap_or("?"))
            }
        }
    }
}

impl DestRun {
    /// The verdict as an expectation sees it.
    pub fn observed(&self) -> Observed {
        match &self.verdict {
            Verdict::Completed => Observed::Completed,
            Verdict::Failed(_) => Observed::Failed,
            Verdict::Crashed { .. } => Observed::Crashed,
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
    /// At least this many page requests served (rust-dest's vCPUs).
    pub min_page_requests: Option<u64>,
    /// Run state and limits of the QEMU destination and of rust-dest.
    pub qemu: DestExpect,
    pub rust: DestExpect,
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
            min_page_requests: None,
            qemu: DestExpect::default(),
            rust: DestExpect::default(),
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
    #[error("{dest}: {problem}")]
    End { dest: &'static str, problem: EndProblem },
    #[error("{dest}: {got} page request(s) served, expected at least {want}")]
    PageRequests { dest: &'static str, got: u64, want: u64 },
    #[error("{dest}: bad page requests: {}", errors.join("; "))]
    PageRequestErrors { dest: &'static str, errors: Vec<String> },
    #[error("{dest}: check after the verdict failed: {error}")]
    CheckError { dest: &'static str, error: String },
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
        // Judged on what was observed: a QEMU that sent SHUT(1) has failed
        // even while its status lags (`DestRun::observed`).
        let (qo, ro) = (self.qemu.observed(), self.rust.observed());
        if x.qemu_verdict.is_none() && std::mem::discriminant(&qo) != std::mem::discriminant(&ro) {
            p.push(Problem::Disagreement {
                qemu: self.qemu.verdict.kind(),
                rust: self.rust.verdict.kind(),
            });
        }
        p.extend(dest_problems(x, &self.qemu));
        p.extend(dest_problems(x, &self.rust));
        p
    }
}

/// Everything that differs from the expectation on one destination (see
/// [`Differential::problems`]; also the whole judgement of a destination
/// judged against the model alone, [`super::solo`]).
pub fn dest_problems(x: &Expectation, d: &DestRun) -> Vec<Problem> {
    let mut p = Vec::new();
    let (re, end) = match d.kind {
        DestKind::Qemu => (&x.qemu_error, &x.qemu),
        DestKind::Rust => (&x.rust_error, &x.rust),
    };
    let dest = d.kind.name();
    let got = d.observed();
    let want = match d.kind {
        DestKind::Qemu => x.qemu_verdict.unwrap_or(x.verdict),
        DestKind::Rust => x.verdict,
    };
    if !want.met_by(&got) {
        p.push(match (&x.qemu_bug, d.kind) {
            (Some(bug), DestKind::Qemu) if x.qemu_verdict.is_some() => {
                Problem::BugVerdict { got, want, bug: bug.clone() }
            }
            _ => Problem::Verdict { dest, got, want },
        });
    }
    if let (Some(re), VerdictKind::Failed | VerdictKind::Crashed) = (re, d.verdict.kind()) {
        // QEMU's specific message may be several log lines above the last.
        if !re.is_match(d.verdict.error()) && !re.is_match(&d.log_tail) {
            p.push(Problem::ErrorText { dest, re: re.as_str().into() });
        }
    }
    if let Some(e) = &d.play_error {
        p.push(Problem::PlayError { dest, error: e.clone() });
    }
    if let Some(e) = &d.check_error {
        p.push(Problem::CheckError { dest, error: e.clone() });
    }
    if let Some(m) = &d.memory {
        if !m.ok() {
            p.push(Problem::Memory { dest, check: m.clone() });
        }
    }
    p.extend(check_end(end, &d.measured).into_iter().map(|problem| Problem::End { dest, problem }));
    let Some(pl) = &d.play else { return p };
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
    if let Some(want) = x.min_page_requests {
        if pl.page_requests_served < want {
            let got = pl.page_requests_served;
            p.push(Problem::PageRequests { dest, got, want });
        }
    }
    if !pl.page_request_errors.is_empty() {
        let errors = pl.page_request_errors.clone();
        p.push(Problem::PageRequestErrors { dest, errors });
    }
    p
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
    let (q, r) = differential_parts(name, qemu, layout, script, opts, workdir).await;
    Ok(Differential {
        name: name.into(),
        expect: expect.into(),
        qemu: q?,
        rust: r?,
        total: t0.elapsed(),
    })
}

/// Both destinations' runs of [`differential`], each on its own: one that
/// could not run does not hide the other's verdict.
pub async fn differential_parts(
    name: &str,
    qemu: &QemuBinary,
    layout: &SourceLayout,
    script: &[Step],
    opts: &RunOpts,
    workdir: &Path,
) -> (Result<DestRun>, Result<DestRun>) {
    let (q, r) = tokio::join!(
        run_script(DestKind::Qemu, qemu, layout, script, opts, workdir, name),
        run_script(DestKind::Rust, qemu, layout, script, opts, workdir, name),
    );
    (q.context("QEMU destination"), r.context("rust-dest"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_parse_and_match() {
        for e in [
            Expect::Completed,
            Expect::Failed,
            Expect::Crashed,
            Expect::FailedOrCrashed,
            Expect::Stuck,
            Expect::PostcopyPaused,
            Expect::Hang,
        ] {
            assert_eq!(e.as_str().parse::<Expect>(), Ok(e));
        }
        assert!("crash".parse::<Expect>().unwrap_err().contains("failed-or-crashed"));
        // A crash is not a clean failure, and the other way round.
        assert!(!Expect::Failed.met_by(&Observed::Crashed));
        assert!(!Expect::Crashed.met_by(&Observed::Failed));
        assert!(Expect::Crashed.met_by(&Observed::Crashed));
        assert!(Expect::FailedOrCrashed.met_by(&Observed::Crashed));
        assert!(Expect::FailedOrCrashed.met_by(&Observed::Failed));
        assert!(!Expect::FailedOrCrashed.met_by(&Observed::Completed));
    }
}
