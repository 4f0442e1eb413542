//! One verified migration: start a real QEMU source with a test guest, a
//! destination (rust-dest or QEMU), migrate (precopy or postcopy), and check
//! statuses, run states and guest memory page by page.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::defects::channel::Shared;
use crate::defects::mutation::Mutation;
use crate::drive::recorder::{Recorder, Route};
use crate::drive::session::{
    desc_suffix, query_failed, u64_at, Migration, Side, WaitExpired, RECOVER_TIMEOUT, SAMPLE_EVERY,
};
use crate::images::Workload;
use crate::qmp::{error_desc, MigrationStatus, RunState};
use crate::verify::memory::{self, BlockCompare};
use crate::verify::{devices, guest, stream, Check};
use crate::vm::dest::{start_dest_with, DestKind};
use crate::vm::procs::{unique_name, PathGuard};
use crate::vm::qemu::{LaunchOpts, QemuBinary, QemuVm, VmConfig};

pub use crate::drive::session::{wait_incoming_listening, Sample};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Precopy,
    Postcopy,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "precopy" => Ok(Mode::Precopy),
            "postcopy" => Ok(Mode::Postcopy),
            o => Err(format!("unknown mode {o:?} (expected precopy or postcopy)")),
        }
    }
}

/// How a recovery cycle interrupts postcopy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Interrupt {
    /// `migrate-pause` on the source.
    PauseSource,
    /// `migrate-pause` on the destination.
    PauseDest,
    /// Reset every connection through the harness's proxy ("the network
    /// breaks"); needs a proxy route (recording, the default into rust-dest).
    Cut,
    /// A network partition: every connection through the proxy goes silent
    /// (nothing forwarded, nothing closed), then `migrate-pause` on both
    /// sides, as an operator recovers from one. Needs a proxy route.
    Partition,
}

/// One planned interruption: how, and how long after postcopy (re)started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Interruption {
    pub how: Interrupt,
    #[serde(serialize_with = "ser_ms")]
    pub after: Duration,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// A live precopy that has sent this many passes' worth of RAM without
/// converging gets a 30 s downtime limit, as QEMU's own tests force
/// convergence (`tests/qtest/migration/migration-qmp.c:
/// migrate_ensure_converge()`). The sweeping guest redirties nearly all of
/// a small guest each pass, so with a 300 ms limit precopy ends only while
/// the measured bandwidth stays above about 210 MB/s (64 MiB guest); on a
/// loaded machine it can stay below that for good (a defects control run
/// timed out after 25 s in CI on 2026-12-01). Unloaded, precopy converges
/// within 2 passes.
pub const CONVERGE_AFTER_PASSES: u64 = 8;

/// Everything that defines one migration run.
#[derive(Clone, Debug)]
pub struct MigrateOpts {
    pub dest: DestKind,
    pub mode: Mode,
    /// Stop the source guest before migrating (non-live).
    pub stopped: bool,
    pub mem_bytes: u64,
    pub workload: Workload,
    /// Postcopy: switch after this many completed RAM passes.
    pub postcopy_after_passes: u32,
    /// Source QEMU (and the QEMU destination, unless `dest_qemu`).
    pub qemu: QemuBinary,
    pub dest_qemu: Option<QemuBinary>,
    pub machine: String,
    pub timeout: Duration,
    /// Where logs go (a temporary directory when None).
    pub workdir: Option<PathBuf>,
    /// Extra arguments for the destination command line.
    pub dest_extra: Vec<String>,
    /// Capabilities set on both sides on top of the defaults.
    pub extra_caps: Vec<(String, bool)>,
    /// Parameters set on both sides (e.g. `multifd-channels`,
    /// `multifd-compression`), after the capabilities; null for none.
    pub parameters: Value,
    /// Postcopy: pause (cut) and recover this many times.
    pub recover_cuts: u32,
    /// Issue `migrate-pause` on the destination instead of the source.
    pub pause_on_dest: bool,
    /// How (and when) each recovery cycle interrupts postcopy; a cycle
    /// without an entry here pauses (per `pause_on_dest`) 50 ms into
    /// postcopy.
    pub interruptions: Vec<Interruption>,
    /// The recovery cycles are carried out as far as postcopy lasts: a
    /// postcopy that completes before the last of them is verified as
    /// usual (the report's `recoveries` says how many ran) instead of
    /// failing (`crossmig soak`, whose random plans may not fit).
    pub recoveries_best_effort: bool,
    /// Postcopy bandwidth cap on the source (bytes/s, 0 = unlimited;
    /// default 64 MiB/s so the postcopy phase lasts long enough for
    /// demand faults). 16 MiB/s while recovery cuts are pending.
    pub postcopy_bandwidth: u64,
    /// Route every connection through the harness's proxy and record what
    /// the source sent, so that every RAMBlock (also ROMs, which the source
    /// keeps in process memory) can be checked against a replay of the wire
    /// bytes. Default: on for rust-dest.
    pub record: bool,
    /// Keep the recordings (every connection, and its return path) in this
    /// directory for `crossmig analyze`, instead of removing them.
    pub keep_recording: Option<PathBuf>,
    /// A seeded source-side defect: route through a defect proxy applying
    /// this mutation (the recording is taken before it; `crossmig defects`).
    pub mutation: Option<(Mutation, Arc<Shared>)>,
    /// rust-dest: this binary instead of the usual one, with this
    /// environment (the `seeded-defects` build and its `CROSSMIG_DEFECT`).
    pub rust_dest: Option<PathBuf>,
    pub dest_env: Vec<(String, String)>,
}

impl MigrateOpts {
    pub fn new(dest: DestKind, mode: Mode, qemu: QemuBinary) -> MigrateOpts {
        MigrateOpts {
            dest,
            mode,
            stopped: false,
            mem_bytes: 256 << 20,
            workload: Workload::Sweep,
            postcopy_after_passes: 1,
            qemu,
            dest_qemu: None,
            machine: "q35".into(),
            timeout: Duration::from_secs(120),
            workdir: None,
            dest_extra: Vec::new(),
            extra_caps: Vec::new(),
            parameters: Value::Null,
            recover_cuts: 0,
            pause_on_dest: false,
            interruptions: Vec::new(),
            recoveries_best_effort: false,
            postcopy_bandwidth: if mode == Mode::Postcopy { 64 << 20 } else { 0 },
            record: dest == DestKind::Rust,
            keep_recording: None,
            mutation: None,
            rust_dest: None,
            dest_env: Vec::new(),
        }
    }
}

impl MigrateOpts {
    /// The interruption of recovery cycle `i` (0-based).
    pub fn interruption(&self, i: u32) -> Interruption {
        self.interruptions.get(i as usize).copied().unwrap_or(Interruption {
            how: if self.pause_on_dest { Interrupt::PauseDest } else { Interrupt::PauseSource },
            after: Duration::from_millis(50),
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct MigrateReport {
    pub dest: String,
    pub mode: Mode,
    pub stopped: bool,
    pub mem_bytes: u64,
    pub workload: String,
    pub qemu_version: String,
    pub checks: Vec<Check>,
    /// Migration time as seen by the harness (migrate → both completed).
    pub migration_ms: u64,
    /// RAM passes completed when postcopy was switched on.
    pub passes_at_postcopy: Option<u64>,
    /// Live precopy: RAM passes sent when the harness raised the downtime
    /// limit because precopy had not converged ([`CONVERGE_AFTER_PASSES`]).
    pub converge_forced_at: Option<u64>,
    /// Postcopy pause/recover cycles completed.
    pub recoveries: u32,
    pub source_final: Value,
    pub dest_final: Value,
    pub blocks: Vec<BlockCompare>,
    pub samples: Vec<Sample>,
    pub workdir: String,
}

impl MigrateReport {
    pub fn ok(&self) -> bool {
        crate::verify::report::all_ok(&self.checks)
    }
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
    /// Source `ram.postcopy-requests`.
    pub fn source_postcopy_requests(&self) -> u64 {
        self.source_final["ram"]["postcopy-requests"].as_u64().unwrap_or(0)
    }
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} migration into {} ({}{}, {} MiB, {} guest, QEMU {}): {} in {} ms\n",
            match self.mode {
                Mode::Precopy => "precopy",
                Mode::Postcopy => "postcopy",
            },
            self.dest,
            if self.stopped { "stopped" } else { "live" },
            self.passes_at_postcopy
                .map(|p| format!(", switched after {p} pass(es)"))
                .or(self.converge_forced_at.map(|p| format!(", converge forced after {p} passes")))
                .unwrap_or_default(),
            self.mem_bytes >> 20,
            self.workload,
            self.qemu_version,
            if self.ok() { "PASSED" } else { "FAILED" },
            self.migration_ms
        );
        for c in &self.checks {
            s += &format!("  {c}\n");
        }
        s
    }
}

/// Progress callback payload.
#[derive(Clone, Debug)]
pub struct Progress {
    pub t: Duration,
    pub source_status: MigrationStatus,
    pub dest_status: MigrationStatus,
    pub passes: u64,
    pub transferred: u64,
}

/// What the migration itself produced (before the checks).
struct RunOut {
    migration_ms: u64,
    passes_at_postcopy: Option<u64>,
    converge_forced_at: Option<u64>,
    recoveries: u32,
    source_final: Value,
    dest_final: Value,
}

/// Run one verified migration. All processes and files are cleaned up when
/// this returns (or unwinds).
pub async fn migrate(
    opts: &MigrateOpts,
    mut progress: impl FnMut(&Progress),
) -> Result<MigrateReport> {
    let tmp;
    let workdir = match &opts.workdir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("crossmig-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let qv =
        opts.qemu.version().map(|(a, b, c)| format!("{a}.{b}.{c}")).unwrap_or_else(|_| "?".into());
    let tag = unique_name("mig");

    // --- source ---
    let disk = workdir.join(format!("{tag}-{}.img", opts.workload.name()));
    std::fs::copy(opts.workload.image_path(), &disk).context("copying the guest image")?;
    let _disk_guard = PathGuard::new(&disk);
    let mut scfg = VmConfig::new("src", opts.mem_bytes);
    scfg.machine = opts.machine.clone();
    scfg.disk = Some(disk.clone());
    scfg.serial_log = Some(workdir.join(format!("{tag}-src.serial")));
    let src = QemuVm::start(&opts.qemu, scfg, workdir.join(format!("{tag}-src.log"))).await?;
    src.qmp.set_timeout(Duration::from_secs(30));
    // The guest prints 'A' once set up, then its workload's ready marker.
    let want = opts.workload.ready_marker();
    src.wait_serial(|s| s.contains(want), Duration::from_secs(60))
        .await
        .context("waiting for the guest to run")?;
    if opts.stopped {
        src.execute("stop", Value::Null).await?;
    }

    // --- destination ---
    let mut dcfg = VmConfig::new(&format!("dst-{}", opts.dest.name()), opts.mem_bytes);
    dcfg.machine = opts.machine.clone();
    dcfg.extra = opts.dest_extra.clone();
    if opts.dest == DestKind::Rust {
        let vcpu = opts.workload.rust_vcpu_args(opts.mem_bytes, &dcfg.extra);
        dcfg.extra.extend(vcpu);
    }
    if opts.dest == DestKind::Rust
        && opts.recover_cuts > 0
        && !dcfg.extra.iter().any(|a| a == "--vcpu-rate")
    {
        // Requested pages bypass the postcopy bandwidth cap: slower simulated
        // vCPUs keep the postcopy phase long enough to cut it.
        dcfg.extra.extend(["--vcpu-rate".to_string(), "5000".to_string()]);
    }
    let dq = opts.dest_qemu.clone().unwrap_or_else(|| opts.qemu.clone());
    let mut launch = LaunchOpts::new(workdir.join(format!("{tag}-dst-{}.log", opts.dest.name())));
    launch.rust_dest = opts.rust_dest.clone();
    launch.env = opts.dest_env.clone();
    let dst = start_dest_with(opts.dest, &dq, dcfg, launch).await?;
    dst.qmp.set_timeout(Duration::from_secs(30));

    let mut m = Migration::new(src, dst, opts.dest);
    if let Some((mu, sh)) = &opts.mutation {
        m.route = Route::mutate(&workdir, &tag, *mu, sh.clone());
    } else if opts.record || opts.keep_recording.is_some() {
        let mut r = Recorder::new(&workdir, &tag);
        r.keep = opts.keep_recording.clone();
        m.route = Route::Record(r);
    }
    let run = match run(opts, &mut m, &mut progress).await {
        Ok(v) => v,
        Err(e) => {
            let msg = format!("{e:#}\n{}", m.log_tails(2000, 4000));
            m.quit().await;
            return Err(anyhow!(msg));
        }
    };
    let checked = check(opts, &m, &run, &workdir, &tag).await;
    let samples = m.take_samples();
    m.quit().await;
    let (checks, blocks) = checked?;
    Ok(MigrateReport {
        dest: opts.dest.name().into(),
        mode: opts.mode,
        stopped: opts.stopped,
        mem_bytes: opts.mem_bytes,
        workload: opts.workload.name().into(),
        qemu_version: qv,
        checks,
        migration_ms: run.migration_ms,
        passes_at_postcopy: run.passes_at_postcopy,
        converge_forced_at: run.converge_forced_at,
        recoveries: run.recoveries,
        source_final: run.source_final,
        dest_final: run.dest_final,
        blocks,
        samples,
        workdir: workdir.display().to_string(),
    })
}

/// Set up both sides, migrate, switch to postcopy and cut/recover as asked,
/// until both sides completed.
async fn run(
    opts: &MigrateOpts,
    m: &mut Migration,
    progress: &mut impl FnMut(&Progress),
) -> Result<RunOut> {
    let mut caps: Vec<(String, bool)> = vec![("events".into(), true)];
    if opts.mode == Mode::Postcopy {
        caps.push(("postcopy-ram".into(), true));
    }
    caps.extend(opts.extra_caps.iter().cloned());
    let capr: Vec<(&str, bool)> = caps.iter().map(|(a, b)| (a.as_str(), *b)).collect();
    m.set_capabilities(Side::Both, &capr).await?;
    if opts.parameters.as_object().is_some_and(|p| !p.is_empty()) {
        m.set_parameters(Side::Both, &opts.parameters).await?;
    }
    let params = match (opts.mode, opts.stopped) {
        // Converge quickly.
        (Mode::Precopy, _) | (Mode::Postcopy, true) => {
            json!({"max-bandwidth": 10u64 << 30, "downtime-limit": 300})
        }
        // Never converge in precopy: a pass takes a fraction of a second and
        // the sweeping guest redirties ~99 MiB per pass.
        (Mode::Postcopy, false) => json!({"max-bandwidth": 256u64 << 20, "downtime-limit": 1}),
    };
    m.set_parameters(Side::Source, &params).await?;
    let pc_bw = if opts.recover_cuts > 0 { 16u64 << 20 } else { opts.postcopy_bandwidth };
    if opts.mode == Mode::Postcopy && pc_bw > 0 {
        m.set_parameters(Side::Source, &json!({ "max-postcopy-bandwidth": pc_bw })).await?;
    }
    if opts.dest == DestKind::Rust && opts.mode == Mode::Postcopy {
        // Like libvirt: let the destination run as soon as postcopy starts,
        // so rust-dest's simulated vCPUs fault on missing pages. (rust-dest's
        // vCPUs only read, so its RAM stays comparable; a QEMU destination
        // stays paused because its real guest would diverge.)
        m.cont(Side::Dest).await?;
    }
    m.migrate(true).await?;

    let deadline = Instant::now() + opts.timeout;
    let mut passes_at_postcopy = None;
    let mut converge_forced_at = None;
    let mut recoveries = 0u32;
    let mut postcopy_since: Option<Instant> = None;
    let mut last_progress = Instant::now() - Duration::from_secs(1);
    let (sv, dv) = loop {
        let (sv, dv) = m.sample().await;
        for (n, v) in [("source", &sv), ("destination", &dv)] {
            if query_failed(v) {
                bail!("{n} {}", error_desc(v).unwrap_or("query-migrate failed"));
            }
        }
        let (ss, ds) = (MigrationStatus::of(&sv), MigrationStatus::of(&dv));
        let passes = m.passes(&sv);
        if last_progress.elapsed() >= Duration::from_millis(250) {
            last_progress = Instant::now();
            progress(&Progress {
                t: m.elapsed(),
                source_status: ss.clone(),
                dest_status: ds.clone(),
                passes,
                transferred: u64_at(&sv, &["ram", "transferred"]),
            });
        }
        if matches!(ss, MigrationStatus::Failed | MigrationStatus::Cancelled)
            || ds == MigrationStatus::Failed
        {
            bail!(
                "migration failed: source {ss}{}, destination {ds}{}",
                desc_suffix(&sv),
                desc_suffix(&dv)
            );
        }
        // Recoveries pause and resume within one iteration: a destination
        // seen paused here paused on its own (a load error during postcopy).
        if ds == MigrationStatus::PostcopyPaused {
            bail!(
                "destination paused postcopy on its own: source {ss}{}, destination {ds}{}",
                desc_suffix(&sv),
                desc_suffix(&dv)
            );
        }
        if opts.mode == Mode::Postcopy
            && passes_at_postcopy.is_none()
            && ss == MigrationStatus::Active
            && (opts.stopped || passes >= opts.postcopy_after_passes as u64)
        {
            m.start_postcopy().await?;
            passes_at_postcopy = Some(passes);
        }
        if opts.mode == Mode::Precopy
            && !opts.stopped
            && converge_forced_at.is_none()
            && ss == MigrationStatus::Active
            && passes >= CONVERGE_AFTER_PASSES
        {
            tracing::info!("precopy not converged after {passes} passes: downtime limit raised");
            m.set_parameters(Side::Source, &json!({ "downtime-limit": 30_000 })).await?;
            converge_forced_at = Some(passes);
        }
        let in_postcopy = ss == MigrationStatus::PostcopyActive;
        if in_postcopy && postcopy_since.is_none() {
            postcopy_since = Some(Instant::now());
        }
        let plan = opts.interruption(recoveries);
        if recoveries < opts.recover_cuts
            && in_postcopy
            && ds == MigrationStatus::PostcopyActive
            && postcopy_since.is_some_and(|t| t.elapsed() >= plan.after)
            && dest_postcopy_runs(opts, m).await
        {
            async {
                match plan.how {
                    Interrupt::PauseSource => m.pause(Side::Source).await?,
                    Interrupt::PauseDest => m.pause(Side::Dest).await?,
                    Interrupt::Cut => m.route.cut_now().map(drop)?,
                    Interrupt::Partition => {
                        m.route.partition_now().await?;
                        m.pause(Side::Source).await?;
                        m.pause(Side::Dest).await?;
                    }
                }
                m.wait_paused(RECOVER_TIMEOUT).await.context("pausing")?;
                m.recover(None).await
            }
            .await
            .with_context(|| format!("recovery #{}", recoveries + 1))?;
            recoveries += 1;
            postcopy_since = None;
            if recoveries == opts.recover_cuts {
                let p = json!({ "max-postcopy-bandwidth": opts.postcopy_bandwidth });
                m.set_parameters(Side::Source, &p).await?;
            }
            continue;
        }
        if ss == MigrationStatus::Completed && ds == MigrationStatus::Completed {
            break (sv, dv);
        }
        if Instant::now() > deadline {
            let e = WaitExpired { timeout: opts.timeout, source_status: ss, dest_status: ds };
            return Err(anyhow::Error::new(e).context("waiting for both sides to complete"));
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    };
    let migration_ms = m.elapsed().as_millis() as u64;
    if opts.mode == Mode::Postcopy && passes_at_postcopy.is_none() {
        bail!("precopy completed before postcopy could be started");
    }
    if recoveries < opts.recover_cuts && !opts.recoveries_best_effort {
        bail!("postcopy completed after {recoveries} of {} recovery cycles", opts.recover_cuts);
    }
    Ok(RunOut {
        migration_ms,
        passes_at_postcopy,
        converge_forced_at,
        recoveries,
        source_final: sv,
        dest_final: dv,
    })
}

/// Whether the destination processed POSTCOPY_RUN, so an interruption now
/// pauses it: until RUN (device state still loading), QEMU's destination and
/// rust-dest fail on a lost connection instead (`migration/savevm.c`:
/// only POSTCOPY_INCOMING_RUNNING is recoverable). rust-dest runs once RUN
/// is processed (it was `cont`-ed before); a QEMU destination stays paused,
/// so for it the status alone decides.
async fn dest_postcopy_runs(opts: &MigrateOpts, m: &Migration) -> bool {
    opts.dest != DestKind::Rust || matches!(m.dst.qmp.run_state().await, Ok(RunState::Running))
}

/// Statuses, run states and memory after a completed migration.
async fn check(
    opts: &MigrateOpts,
    m: &Migration,
    run: &RunOut,
    workdir: &std::path::Path,
    tag: &str,
) -> Result<(Vec<Check>, Vec<BlockCompare>)> {
    let (src, dst) = (&m.src, &m.dst);
    let mut checks = Vec::new();
    let ss = MigrationStatus::of(&run.source_final);
    let ds = MigrationStatus::of(&run.dest_final);
    checks.push(Check::new("source status", ss == MigrationStatus::Completed, ss.to_string()));
    checks.push(Check::new(
        "destination status",
        ds == MigrationStatus::Completed,
        format!("{ds}{}", desc_suffix(&run.dest_final)),
    ));
    let show = |r: &Result<RunState>| match r {
        Ok(s) => s.to_string(),
        Err(e) => format!("? ({e})"),
    };
    let src_rs = src.qmp.run_state().await;
    let ok = matches!(src_rs, Ok(RunState::Postmigrate));
    checks.push(Check::new("source run state", ok, show(&src_rs)));
    let dst_rs = dst.qmp.run_state().await;
    let (want_rs, why) = if opts.dest == DestKind::Rust && opts.mode == Mode::Postcopy {
        (RunState::Running, "started with -S, cont before postcopy")
    } else {
        (RunState::Paused, "started with -S")
    };
    let ok = dst_rs.as_ref().is_ok_and(|s| *s == want_rs);
    checks.push(Check::new("destination run state", ok, format!("{} ({why})", show(&dst_rs))));
    if opts.mode == Mode::Postcopy {
        let reqs = u64_at(&run.source_final, &["ram", "postcopy-requests"]);
        let x = &run.dest_final["x-crossmig"];
        let lat = if x.is_object() {
            format!(
                "; rust-dest: {} faults, fault latency p50 {} us, p99 {} us, max {} us, {} pages placed from the stream, {} on request, {} on the preempt channel",
                x["faults"], x["fault-latency-us"]["p50"], x["fault-latency-us"]["p99"], x["fault-latency-us"]["max"],
                x["pages-placed-stream"], x["pages-placed-requested"], x["preempt-pages"]
            )
        } else {
            String::new()
        };
        checks.push(Check::info(
            "postcopy page requests served by the source",
            format!("{reqs}{lat}"),
        ));
        if opts.dest == DestKind::Rust {
            checks.extend(crate::verify::postcopy::rust_dest_checks(
                &run.source_final,
                &run.dest_final,
                run.recoveries,
            ));
        }
    }

    // Memory: the guest RAM block lives in both memory-backend files.
    let mut blocks = Vec::new();
    let (c, cmp) = memory::check_files(
        "guest RAM identical (mem0 files)",
        &src.cfg.backend_id,
        &src.cfg.mem_path,
        &dst.cfg.mem_path,
    )?;
    checks.push(c);
    blocks.push(cmp);
    if opts.dest == DestKind::Rust {
        // rust-dest's own view of every RAMBlock over QMP.
        let d = memory::query_block_digests(&dst.qmp, None).await?;
        if let Some((c, cmp)) = memory::check_block_digests(
            "rust-dest QMP digests match the source (mem0)",
            &src.cfg.mem_path,
            &src.cfg.backend_id,
            &d,
            "source file vs rust-dest QMP page digests",
        )? {
            checks.push(c);
            blocks.push(cmp);
        }
        checks.push(memory::check_blocks_created(&d));
        if let Some(rec) = m.route.recorder() {
            // Every RAMBlock against an offline replay of the recorded wire bytes.
            let replay = rec.replay()?;
            let (c, cmps) = stream::check_replay(&replay, &d, rec.files.len());
            checks.push(c);
            blocks.extend(cmps);
        }
    }
    checks.extend(check_devices(opts, m, workdir, tag).await?);
    // The guest's own invariant on the destination's copy.
    let dram = std::fs::read(&dst.cfg.mem_path)?;
    checks.push(guest::check_workload(opts.workload, &dram, opts.mem_bytes));
    Ok((checks, blocks))
}

/// Device state against what the source sent, and the delivered sections
/// against the vmdesc (`verify/devices.rs`), when the stream was recorded.
async fn check_devices(
    opts: &MigrateOpts,
    m: &Migration,
    workdir: &std::path::Path,
    tag: &str,
) -> Result<Vec<Check>> {
    let (Some(rec), Some(delivered)) = (m.route.recorder(), m.route.delivered_main()) else {
        return Ok(Vec::new());
    };
    let Some(main) = rec.files.first() else { return Ok(Vec::new()) };
    // The source closes the main channel once it has completed; only then
    // has the proxy written everything it delivered (or still held).
    m.route.settle_delivery(Duration::from_secs(10)).await;
    let sent_bytes = std::fs::read(main)?;
    let (sent, vmdesc) = devices::sections_of_stream(&sent_bytes);
    let delivered = std::fs::read(delivered)?;
    let (got, _) = devices::sections_of_stream(&delivered);
    let mut checks = Vec::new();
    checks.extend(devices::check_package_order(&delivered));
    if let Some(mut c) = devices::check_order(&got, vmdesc.as_ref()) {
        if !c.ok {
            // Say what was compared, so a failure can be told from a cut recording.
            c.detail += &format!(
                " (delivered main channel {} bytes, the source's recording {} bytes; {})",
                delivered.len(),
                sent_bytes.len(),
                devices::describe_walk(&delivered, &sent_bytes)
            );
        }
        checks.push(c);
    }
    let c = if opts.dest == DestKind::Rust {
        let received = devices::rust_dest_sections(&m.dst.qmp).await?;
        let how = "recorded from the source vs rust-dest's kept sections";
        devices::check_device_state(&sent, &received, vmdesc.as_ref(), &[], how)
    } else {
        // QEMU keeps no copy of what it loaded: it saves its state again
        // (paused, so nothing changed since the load) and that is compared.
        let path = workdir.join(format!("{tag}-dst.resave"));
        match devices::resave_sections(&m.dst.qmp, &path).await {
            // Postcopy sends no vmdesc: the destination's own then decodes fields.
            Ok((d, dvm)) => devices::check_device_state(
                &sent,
                &d,
                vmdesc.as_ref().or(dvm.as_ref()),
                devices::QEMU_RESAVE_VOLATILE,
                "recorded from the source vs the QEMU destination's state saved again",
            ),
            Err(e) => Check::new(
                devices::DEVICE_STATE,
                false,
                format!("saving the destination's state again failed: {e:#}"),
            ),
        }
    };
    checks.push(c);
    Ok(checks)
}
