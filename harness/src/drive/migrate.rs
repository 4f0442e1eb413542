//! One verified migration: start a real QEMU source with a test guest, a
//! destination (rust-dest or QEMU), migrate (precopy or postcopy), and check
//! statuses, run states and guest memory page by page.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::drive::proxy::{Proxy, ProxyPlan};
use crate::images::{self, Workload};
use crate::verify::guest;
use crate::verify::memory::{self, BlockCompare};
use crate::vm::dest::{start_dest, DestKind};
use crate::vm::procs::{free_tcp_port, unique_name, PathGuard};
use crate::vm::qemu::{QemuBinary, QemuVm, VmConfig};

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
    /// Postcopy: pause (cut) and recover this many times.
    pub recover_cuts: u32,
    /// Issue `migrate-pause` on the destination instead of the source.
    pub pause_on_dest: bool,
    /// Postcopy bandwidth cap on the source (bytes/s, 0 = unlimited;
    /// default 64 MiB/s so the postcopy phase lasts long enough for
    /// demand faults). 16 MiB/s while recovery cuts are pending.
    pub postcopy_bandwidth: u64,
    /// Route every connection through the harness's proxy and record what
    /// the source sent, so that every RAMBlock (also ROMs, which the source
    /// keeps in process memory) can be checked against a replay of the wire
    /// bytes. Default: on for rust-dest.
    pub record: bool,
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
            recover_cuts: 0,
            pause_on_dest: false,
            postcopy_bandwidth: if mode == Mode::Postcopy { 64 << 20 } else { 0 },
            record: dest == DestKind::Rust,
        }
    }
}

/// One named check of the summary.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// A `query-migrate` sample of both sides.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub t_ms: u64,
    pub source: Value,
    pub dest: Value,
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
        self.checks.iter().all(|c| c.ok)
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
                .unwrap_or_default(),
            self.mem_bytes >> 20,
            self.workload,
            self.qemu_version,
            if self.ok() { "PASSED" } else { "FAILED" },
            self.migration_ms
        );
        for c in &self.checks {
            s += &format!("  [{}] {}: {}\n", if c.ok { " ok " } else { "FAIL" }, c.name, c.detail);
        }
        s
    }
}

/// Progress callback payload.
#[derive(Clone, Debug)]
pub struct Progress {
    pub t: Duration,
    pub source_status: String,
    pub dest_status: String,
    pub passes: u64,
    pub transferred: u64,
}

fn status_of(v: &Value) -> String {
    v.get("status").and_then(|s| s.as_str()).unwrap_or("none").to_string()
}

fn u64_at(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64().unwrap_or(0)
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
    // The guest prints 'A' once set up; the sweep guest 'B' every 64 passes.
    let want = match opts.workload {
        Workload::Sweep => 'B',
        Workload::Fill => 'F',
    };
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
    if opts.dest == DestKind::Rust
        && opts.recover_cuts > 0
        && !dcfg.extra.iter().any(|a| a == "--vcpu-rate")
    {
        // Requested pages bypass the postcopy bandwidth cap: slower simulated
        // vCPUs keep the postcopy phase long enough to cut it.
        dcfg.extra.extend(["--vcpu-rate".to_string(), "5000".to_string()]);
    }
    let dq = opts.dest_qemu.clone().unwrap_or_else(|| opts.qemu.clone());
    let dst = start_dest(
        opts.dest,
        &dq,
        dcfg,
        workdir.join(format!("{tag}-dst-{}.log", opts.dest.name())),
    )
    .await?;
    dst.qmp.set_timeout(Duration::from_secs(30));

    let mut rec = Recorder {
        dir: workdir.clone(),
        tag: tag.clone(),
        enabled: opts.record,
        proxies: Vec::new(),
        files: Vec::new(),
    };
    let run = run_migration(opts, &src, &dst, &mut rec, &mut progress).await;
    let (migration_ms, passes_at_postcopy, recoveries, samples, src_final, dst_final) = match run {
        Ok(v) => v,
        Err(e) => {
            let msg = format!(
                "{e:#}\n--- source log tail ---\n{}\n--- destination ({}) log tail ---\n{}",
                src.log_tail(2000),
                opts.dest.name(),
                dst.log_tail(4000)
            );
            let _ = dst.quit().await;
            let _ = src.quit().await;
            return Err(anyhow!(msg));
        }
    };

    // --- checks ---
    let mut checks = Vec::new();
    let mut push =
        |name: &str, ok: bool, detail: String| checks.push(Check { name: name.into(), ok, detail });
    let ss = status_of(&src_final);
    let ds = status_of(&dst_final);
    push("source status", ss == "completed", format!("{ss}"));
    push(
        "destination status",
        ds == "completed",
        format!(
            "{ds}{}",
            dst_final.get("error-desc").map(|e| format!(" ({e})")).unwrap_or_default()
        ),
    );
    let src_rs = src.qmp.run_state().await.unwrap_or_else(|e| format!("? ({e})"));
    push("source run state", src_rs == "postmigrate", src_rs);
    let dst_rs = dst.qmp.run_state().await.unwrap_or_else(|e| format!("? ({e})"));
    let (want_rs, why) = if opts.dest == DestKind::Rust && opts.mode == Mode::Postcopy {
        ("running", "started with -S, cont before postcopy")
    } else {
        ("paused", "started with -S")
    };
    push("destination run state", dst_rs == want_rs, format!("{dst_rs} ({why})"));
    if opts.mode == Mode::Postcopy {
        let reqs = u64_at(&src_final, &["ram", "postcopy-requests"]);
        let x = &dst_final["x-crossmig"];
        let lat = if x.is_object() {
            format!(
                "; rust-dest: {} faults, fault latency p50 {} us, p99 {} us, max {} us, {} pages placed from the stream, {} on request, {} on the preempt channel",
                x["faults"], x["fault-latency-us"]["p50"], x["fault-latency-us"]["p99"], x["fault-latency-us"]["max"],
                x["pages-placed-stream"], x["pages-placed-requested"], x["preempt-pages"]
            )
        } else {
            String::new()
        };
        push("postcopy page requests served by the source", true, format!("{reqs}{lat}"));
    }

    // Memory: the guest RAM block lives in both memory-backend files.
    let mut blocks = Vec::new();
    let cmp = memory::compare_files(&src.cfg.backend_id, &src.cfg.mem_path, &dst.cfg.mem_path)?;
    push("guest RAM identical (mem0 files)", cmp.ok(), cmp.to_string());
    blocks.push(cmp);
    if opts.dest == DestKind::Rust {
        // rust-dest's own view of every RAMBlock over QMP.
        let d = dst.execute("x-crossmig-ram-digests", json!({"pages": true})).await?;
        let src_digests = memory::file_page_digests(&src.cfg.mem_path)?;
        let mut names = Vec::new();
        for b in d["blocks"].as_array().cloned().unwrap_or_default() {
            let name = b["name"].as_str().unwrap_or("?").to_string();
            if name == src.cfg.backend_id {
                let pd = wire::digest::from_hex(b["page-digests"].as_str().unwrap_or(""))
                    .unwrap_or_default();
                let c = memory::compare_digests(
                    &name,
                    &src_digests,
                    &pd,
                    "source file vs rust-dest QMP page digests",
                );
                push("rust-dest QMP digests match the source (mem0)", c.ok(), c.to_string());
                blocks.push(c);
            }
            names.push(format!("{name} ({} KiB)", b["used-length"].as_u64().unwrap_or(0) >> 10));
        }
        push("RAMBlocks created from the stream", !names.is_empty(), names.join(", "));
        if opts.record {
            // Every RAMBlock against an offline replay of the recorded wire bytes.
            let replay = rec.replay()?;
            let mut bad = Vec::new();
            let mut n = 0;
            for b in d["blocks"].as_array().cloned().unwrap_or_default() {
                let name = b["name"].as_str().unwrap_or("?").to_string();
                let pd = wire::digest::from_hex(b["page-digests"].as_str().unwrap_or(""))
                    .unwrap_or_default();
                let want = replay.page_digests(&name).unwrap_or_default();
                let c = memory::compare_digests(
                    &name,
                    &want,
                    &pd,
                    "replay of the recorded stream vs rust-dest QMP page digests",
                );
                n += 1;
                if !c.ok() {
                    bad.push(c.to_string());
                }
                blocks.push(c);
            }
            let missing: Vec<_> = replay
                .blocks
                .keys()
                .filter(|k| {
                    !d["blocks"].as_array().is_some_and(|a| a.iter().any(|b| b["name"] == **k))
                })
                .cloned()
                .collect();
            push(
                "every RAMBlock matches the recorded stream",
                bad.is_empty() && missing.is_empty() && n > 0,
                if bad.is_empty() && missing.is_empty() {
                    format!(
                        "{n} blocks, {} connection(s) recorded, {} pages + {} zero pages replayed",
                        rec.files.len(),
                        replay.pages,
                        replay.zero_pages
                    )
                } else {
                    format!(
                        "{}{}",
                        bad.join("; "),
                        if missing.is_empty() {
                            String::new()
                        } else {
                            format!(" missing on rust-dest: {missing:?}")
                        }
                    )
                },
            );
        }
    }
    drop(rec);
    // The guest's own invariant on the destination's copy.
    let dram = std::fs::read(&dst.cfg.mem_path)?;
    match opts.workload {
        Workload::Sweep => {
            let end = images::sweep_end(opts.mem_bytes);
            let c = guest::check_sweep_invariant(&dram, images::SWEEP_START, end);
            push("sweep guest invariant on the destination", c.ok(), c.to_string());
        }
        Workload::Fill => {
            let c = guest::check_fill(&dram, images::SWEEP_START, images::fill_end(opts.mem_bytes));
            push("fill guest data on the destination", c.ok(), c.to_string());
        }
    }
    drop(dram);

    let _ = dst.quit().await;
    let _ = src.quit().await;
    Ok(MigrateReport {
        dest: opts.dest.name().into(),
        mode: opts.mode,
        stopped: opts.stopped,
        mem_bytes: opts.mem_bytes,
        workload: opts.workload.name().into(),
        qemu_version: qv,
        checks,
        migration_ms,
        passes_at_postcopy,
        recoveries,
        source_final: src_final,
        dest_final: dst_final,
        blocks,
        samples,
        workdir: workdir.display().to_string(),
    })
}

type RunOut = (u64, Option<u64>, u32, Vec<Sample>, Value, Value);

/// Wait until a destination listens after `migrate-incoming`: status
/// `setup` (QEMU 8+, rust-dest), or QEMU 7.2's status-less reply that only
/// lists its `socket-address`.
pub async fn wait_incoming_listening(dst: &QemuVm) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = dst.qmp.query_migrate().await?;
        let st = status_of(&v);
        if st == "setup" || (st == "none" && v.get("socket-address").is_some()) {
            return Ok(());
        }
        if st == "failed" {
            bail!("destination failed after migrate-incoming: {v}");
        }
        if Instant::now() > deadline {
            bail!("destination is not listening 10 s after migrate-incoming: {v}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Optional recording proxies in front of the destination.
pub struct Recorder {
    pub dir: PathBuf,
    pub tag: String,
    pub enabled: bool,
    pub proxies: Vec<Proxy>,
    pub files: Vec<PathBuf>,
}

impl Recorder {
    /// The URI the source should connect to for a destination listening on
    /// `port` (a new recording proxy when enabled).
    pub async fn uri_for(&mut self, port: u16) -> Result<String> {
        if !self.enabled {
            return Ok(format!("tcp:127.0.0.1:{port}"));
        }
        let k = self.proxies.len();
        let plans: Vec<ProxyPlan> = (0..4)
            .map(|c| {
                let f = self.dir.join(format!("{}-rec{k}-conn{c}.bin", self.tag));
                self.files.push(f.clone());
                ProxyPlan::new().on_connection(c).record(f)
            })
            .collect();
        let p = Proxy::start_plans("127.0.0.1:0", ([127, 0, 0, 1], port).into(), plans).await?;
        let uri = p.uri();
        self.proxies.push(p);
        Ok(uri)
    }

    /// Replay everything recorded: main channels (the first with the stream
    /// header, recovery channels without), then preempt channels.
    pub fn replay(&self) -> Result<crate::verify::stream::Replay> {
        let mut r = crate::verify::stream::Replay::default();
        let mut preempt = Vec::new();
        for f in &self.files {
            let b = match std::fs::read(f) {
                Ok(b) if !b.is_empty() => b,
                _ => continue,
            };
            if b.starts_with(b"QEVM") {
                r.main_channel(&b)?;
            } else if b[0] == wire::consts::QEMU_VM_COMMAND {
                r.recovery_channel(&b)?;
            } else {
                preempt.push(b);
            }
        }
        for b in preempt {
            r.preempt_channel(&b)?;
        }
        Ok(r)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.proxies.clear();
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

async fn run_migration(
    opts: &MigrateOpts,
    src: &QemuVm,
    dst: &QemuVm,
    rec: &mut Recorder,
    progress: &mut impl FnMut(&Progress),
) -> Result<RunOut> {
    let mut caps: Vec<(String, bool)> = vec![("events".into(), true)];
    if opts.mode == Mode::Postcopy {
        caps.push(("postcopy-ram".into(), true));
    }
    caps.extend(opts.extra_caps.iter().cloned());
    let capr: Vec<(&str, bool)> = caps.iter().map(|(a, b)| (a.as_str(), *b)).collect();
    src.qmp.set_capabilities(&capr).await.context("source migrate-set-capabilities")?;
    dst.qmp.set_capabilities(&capr).await.context("destination migrate-set-capabilities")?;
    let params = match (opts.mode, opts.stopped) {
        // Converge quickly.
        (Mode::Precopy, _) | (Mode::Postcopy, true) => {
            json!({"max-bandwidth": 10u64 << 30, "downtime-limit": 300})
        }
        // Never converge in precopy: a pass takes a fraction of a second and
        // the sweeping guest redirties ~99 MiB per pass.
        (Mode::Postcopy, false) => json!({"max-bandwidth": 256u64 << 20, "downtime-limit": 1}),
    };
    src.qmp.set_parameters(params).await.context("source migrate-set-parameters")?;
    let pc_bw = if opts.recover_cuts > 0 { 16u64 << 20 } else { opts.postcopy_bandwidth };
    if opts.mode == Mode::Postcopy && pc_bw > 0 {
        src.qmp.set_parameters(json!({ "max-postcopy-bandwidth": pc_bw })).await?;
    }

    if opts.dest == DestKind::Rust && opts.mode == Mode::Postcopy {
        // Like libvirt: let the destination run as soon as postcopy starts,
        // so rust-dest's simulated vCPUs fault on missing pages. (rust-dest's
        // vCPUs only read, so its RAM stays comparable; a QEMU destination
        // stays paused because its real guest would diverge.)
        dst.execute("cont", Value::Null).await.context("destination cont")?;
    }
    let port = free_tcp_port();
    let dst_uri = format!("tcp:127.0.0.1:{port}");
    dst.execute("migrate-incoming", json!({ "uri": dst_uri }))
        .await
        .context("destination migrate-incoming")?;
    wait_incoming_listening(dst).await?;
    let uri = rec.uri_for(port).await?;

    let t0 = Instant::now();
    src.execute("migrate", json!({ "uri": uri })).await.context("source migrate")?;
    let deadline = t0 + opts.timeout;
    let mut samples = Vec::new();
    let mut first_sync: Option<u64> = None;
    let mut passes_at_postcopy = None;
    let mut recoveries = 0u32;
    let mut postcopy_since: Option<Instant> = None;
    let mut last_progress = Instant::now() - Duration::from_secs(1);
    let (sv, dv) = loop {
        let sv = src.qmp.query_migrate().await.context("source query-migrate")?;
        let dv = dst.qmp.query_migrate().await.context("destination query-migrate")?;
        let (ss, ds) = (status_of(&sv), status_of(&dv));
        let sync = u64_at(&sv, &["ram", "dirty-sync-count"]);
        if ss == "active" && first_sync.is_none() && sync > 0 {
            first_sync = Some(sync);
        }
        let passes = first_sync.map(|f| sync.saturating_sub(f)).unwrap_or(0);
        samples.push(Sample {
            t_ms: t0.elapsed().as_millis() as u64,
            source: sv.clone(),
            dest: dv.clone(),
        });
        if last_progress.elapsed() >= Duration::from_millis(250) {
            last_progress = Instant::now();
            progress(&Progress {
                t: t0.elapsed(),
                source_status: ss.clone(),
                dest_status: ds.clone(),
                passes,
                transferred: u64_at(&sv, &["ram", "transferred"]),
            });
        }
        if ["failed", "cancelled"].contains(&ss.as_str()) || ds == "failed" {
            bail!(
                "migration failed: source {ss}{}, destination {ds}{}",
                sv.get("error-desc").map(|e| format!(" ({e})")).unwrap_or_default(),
                dv.get("error-desc").map(|e| format!(" ({e})")).unwrap_or_default()
            );
        }
        if opts.mode == Mode::Postcopy
            && passes_at_postcopy.is_none()
            && ss == "active"
            && (opts.stopped || passes >= opts.postcopy_after_passes as u64)
        {
            src.execute("migrate-start-postcopy", Value::Null)
                .await
                .context("migrate-start-postcopy")?;
            passes_at_postcopy = Some(passes);
        }
        if ss == "postcopy-active" && postcopy_since.is_none() {
            postcopy_since = Some(Instant::now());
        }
        if recoveries < opts.recover_cuts
            && ss == "postcopy-active"
            && ds == "postcopy-active"
            && postcopy_since.is_some_and(|t| t.elapsed() >= Duration::from_millis(50))
        {
            recover_once(src, dst, opts.pause_on_dest, rec)
                .await
                .with_context(|| format!("recovery #{}", recoveries + 1))?;
            recoveries += 1;
            postcopy_since = None;
            if recoveries == opts.recover_cuts {
                src.qmp
                    .set_parameters(json!({ "max-postcopy-bandwidth": opts.postcopy_bandwidth }))
                    .await?;
            }
            continue;
        }
        if ss == "completed" && ds == "completed" {
            break (sv, dv);
        }
        if Instant::now() > deadline {
            bail!("timed out after {:?}: source {ss}, destination {ds}", opts.timeout);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ms = t0.elapsed().as_millis() as u64;
    if opts.mode == Mode::Postcopy && passes_at_postcopy.is_none() {
        bail!("precopy completed before postcopy could be started");
    }
    if recoveries < opts.recover_cuts {
        bail!("postcopy completed after {recoveries} of {} recovery cycles", opts.recover_cuts);
    }
    Ok((ms, passes_at_postcopy, recoveries, samples, sv, dv))
}

/// Pause a running postcopy (migrate-pause on one side), wait until both
/// sides are `postcopy-paused`, then recover: `migrate-recover` on the
/// destination (a new listening address, sent out-of-band like QEMU's own
/// tests and libvirt do) and `migrate resume=true` on the source.
pub async fn recover_once(
    src: &QemuVm,
    dst: &QemuVm,
    pause_on_dest: bool,
    rec: &mut Recorder,
) -> Result<()> {
    let who = if pause_on_dest { dst } else { src };
    who.execute("migrate-pause", Value::Null).await.context("migrate-pause")?;
    let to = Duration::from_secs(30);
    src.qmp
        .wait_migration_status(&["postcopy-paused"], &["failed", "completed"], to)
        .await
        .context("source pausing")?;
    dst.qmp
        .wait_migration_status(&["postcopy-paused"], &["failed", "completed"], to)
        .await
        .context("destination pausing")?;
    let port = free_tcp_port();
    dst.execute("migrate-recover", json!({ "uri": format!("tcp:127.0.0.1:{port}") }))
        .await
        .context("destination migrate-recover")?;
    let uri = rec.uri_for(port).await?;
    src.execute("migrate", json!({ "uri": uri, "resume": true }))
        .await
        .context("source migrate resume=true")?;
    src.qmp
        .wait_migration_status(&["postcopy-active", "completed"], &["failed"], to)
        .await
        .context("source resuming")?;
    dst.qmp
        .wait_migration_status(&["postcopy-active", "completed"], &["failed"], to)
        .await
        .context("destination resuming")?;
    Ok(())
}
