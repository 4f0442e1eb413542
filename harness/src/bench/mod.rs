//! `crossmig bench`: rust-dest against QEMU's own destination, side by side.
//!
//! Every measured scenario runs A B A B: rust-dest, then a QEMU destination,
//! each on a freshly started but identical source, for several repetitions.
//! The output is a table (medians, min–max, rust-dest/QEMU ratio per pair),
//! `bench.json` and a self-contained `bench.html` (inline SVG, no scripts).
//!
//! Parts:
//! 1. `precopy`: stopped Fill guest, max-bandwidth effectively unlimited:
//!    migration time, MiB/s, destination CPU seconds and peak RSS.
//! 2. `postcopy`: live Sweep guest on the source, postcopy switched on right
//!    after `migrate`; the destination runs (rust-dest: simulated vCPU touching
//!    all RAM in random order, unlimited rate; QEMU: the migrated sweep guest):
//!    fault latency p50/p99/max, pages placed per second, postcopy time.
//! 3. `ingest`: a stream recorded once from a real QEMU source into a file,
//!    loaded with `-incoming file:` (no network): GB/s, next to the
//!    machine's memcpy rate.
//! 4. `overhead`: the harness's own cost per scenario (start-up, QMP
//!    handshake, guest boot until its serial marker, teardown).

use crate::sys::Mapping;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::images::Workload;
use crate::qmp::{migrate_status_of, Qmp};
use crate::vm::dest::{rust_dest_binary, DestKind};
use crate::vm::procs::{file_tail, free_tcp_port, unique_name, ChildGuard, PathGuard};
use crate::vm::qemu::{vm_args, QemuBinary, VmConfig};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAGE: u64 = 4096;
/// "Unlimited" max-bandwidth: 100 GB/s (QEMU has no explicit 'unlimited'
/// for max-bandwidth; guestperf uses 125000 MiB/s the same way).
const UNLIMITED_BW: u64 = 100_000_000_000;
/// query-migrate sampling period during TCP migrations (as guestperf).
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// query-migrate polling period while waiting for a file ingest.
const INGEST_POLL: Duration = Duration::from_millis(2);
/// Pages compared between source and destination after a precopy/ingest run.
const VERIFY_PAGES: u64 = 512;
/// rust-dest log filter that enables its per-fault latency trace lines.
const RUST_FAULT_TRACE: &str = "info,fault_latency=trace";
/// Marker of rust-dest's per-fault trace line (see rust-dest/src/fault.rs).
const RUST_FAULT_MARK: &str = "fault-latency-us=";

const RUST_COLOR: &str = "#d9480f";
const QEMU_COLOR: &str = "#1c7ed6";

// ---------------------------------------------------------------------------
// command line

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Precopy,
    Postcopy,
    Ingest,
    Overhead,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Precopy, Part::Postcopy, Part::Ingest, Part::Overhead];
    pub fn name(self) -> &'static str {
        match self {
            Part::Precopy => "precopy",
            Part::Postcopy => "postcopy",
            Part::Ingest => "ingest",
            Part::Overhead => "overhead",
        }
    }
}

/// `crossmig bench`: rust-dest against QEMU's own destination, side by side
/// (A B A B, medians, min–max and rust-dest/QEMU ratios).
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Short run: 1 GiB guest instead of 2 GiB, 1 repetition per side
    /// instead of 3, postcopy with half the guest RAM.
    #[arg(long)]
    pub quick: bool,
    /// Repetitions per destination (default 3, or 1 with --quick).
    #[arg(long)]
    pub reps: Option<u32>,
    /// Guest RAM for precopy and ingest (default 2G, or 1G with --quick).
    #[arg(long, value_parser = parse_size)]
    pub mem: Option<u64>,
    /// Guest RAM for postcopy (default: --mem, or half of it with --quick).
    #[arg(long, value_parser = parse_size)]
    pub postcopy_mem: Option<u64>,
    /// Output directory (bench.json, bench.html).
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// QEMU binary for the sources and the QEMU destination
    /// (default: $CROSSMIG_QEMU or qemu-system-x86_64 on PATH).
    #[arg(long)]
    pub qemu: Option<PathBuf>,
    /// rust-dest binary (default: $CROSSMIG_RUST_DEST, else next to this
    /// executable). Use a release build for meaningful numbers.
    #[arg(long)]
    pub rust_dest: Option<PathBuf>,
    /// Run only these parts (repeatable or comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// Machine type for every VM.
    #[arg(long, default_value = "q35")]
    pub machine: String,
    /// Size of the buffer copied for the memcpy reference rate.
    #[arg(long, value_parser = parse_size, default_value = "1G")]
    pub memcpy_size: u64,
    /// Keep every process log (and QEMU/rust-dest traces) in OUT/logs.
    #[arg(long)]
    pub keep_logs: bool,
    /// Postcopy: rust-dest's simulated vCPU access pattern (random = all
    /// RAM in random order, as specified; sweep = address order, like
    /// QEMU's destination running the sweep guest).
    #[arg(long, default_value = "random", value_parser = ["random", "sweep", "hot"])]
    pub rust_vcpu_pattern: String,
}

use wire::units::parse_size;

#[derive(clap::Parser)]
#[command(name = "crossmig-bench")]
struct BenchCli {
    #[command(flatten)]
    args: BenchArgs,
}

/// Parse bench arguments (without the program name), e.g. for tests.
pub fn parse_args<I, T>(args: I) -> std::result::Result<BenchArgs, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    use clap::Parser;
    let mut v: Vec<OsString> = vec!["crossmig-bench".into()];
    v.extend(args.into_iter().map(Into::into));
    BenchCli::try_parse_from(v).map(|c| c.args)
}

/// Resolved configuration.
#[derive(Clone, Debug, Serialize)]
pub struct BenchConfig {
    pub quick: bool,
    pub reps: u32,
    pub mem_bytes: u64,
    pub postcopy_mem_bytes: u64,
    pub parts: Vec<Part>,
    pub machine: String,
    pub memcpy_bytes: u64,
    pub out: PathBuf,
    pub rust_vcpu_pattern: String,
}

impl BenchConfig {
    pub fn from_args(a: &BenchArgs) -> Result<BenchConfig> {
        let mem = a.mem.unwrap_or(if a.quick { GIB } else { 2 * GIB });
        if mem < 32 * MIB || !mem.is_multiple_of(MIB) {
            bail!("--mem must be a whole number of MiB, at least 32M");
        }
        let pc = a.postcopy_mem.unwrap_or(if a.quick { (mem / 2).max(64 * MIB) } else { mem });
        if pc < 32 * MIB || !pc.is_multiple_of(MIB) {
            bail!("--postcopy-mem must be a whole number of MiB, at least 32M");
        }
        let mut parts = if a.only.is_empty() { Part::ALL.to_vec() } else { a.only.clone() };
        parts.sort();
        parts.dedup();
        let reps = a.reps.unwrap_or(if a.quick { 1 } else { 3 });
        if reps == 0 {
            bail!("--reps must be at least 1");
        }
        Ok(BenchConfig {
            quick: a.quick,
            reps,
            mem_bytes: mem,
            postcopy_mem_bytes: pc,
            parts,
            machine: a.machine.clone(),
            memcpy_bytes: a.memcpy_size.max(MIB),
            out: a.out.clone(),
            rust_vcpu_pattern: a.rust_vcpu_pattern.clone(),
        })
    }
    fn has(&self, p: Part) -> bool {
        self.parts.contains(&p)
    }
}

// ---------------------------------------------------------------------------
// processes

/// A QEMU or rust-dest process with a connected QMP monitor. Like
/// [`crate::vm::qemu::QemuVm`], but started here so that start-up can be timed
/// precisely (1 ms socket polling instead of 20 ms).
struct Vm {
    child: ChildGuard,
    qmp: Qmp,
    cfg: VmConfig,
    log: PathBuf,
    /// Spawn → QMP handshake done.
    startup: Duration,
    _guards: Vec<PathGuard>,
}

impl Vm {
    async fn start(bin: &QemuBinary, cfg: VmConfig, log: PathBuf, timeout: Duration) -> Result<Vm> {
        let guards = vec![PathGuard::new(&cfg.mem_path), PathGuard::new(&cfg.qmp_socket)];
        let mut cmd = bin.command();
        cmd.args(vm_args(&cfg));
        let cmdline = format!("{cmd:?}");
        let t = Instant::now();
        let mut child = ChildGuard::spawn(cmd, &log)?;
        let deadline = t + timeout;
        let fail = |child: &mut ChildGuard, what: String| {
            child.kill();
            anyhow!("{what}\ncommand: {cmdline}\nlog {}:\n{}", log.display(), file_tail(&log, 4096))
        };
        loop {
            if cfg.qmp_socket.exists() {
                break;
            }
            if !child.is_running() {
                let st = child.wait_exit_async(Duration::from_millis(200)).await;
                return Err(fail(&mut child, format!("process exited during start-up ({st:?})")));
            }
            if Instant::now() > deadline {
                return Err(fail(&mut child, format!("no QMP socket after {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let remaining =
            deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5));
        let qmp = match Qmp::connect(&cfg.qmp_socket, remaining).await {
            Ok(q) => q,
            Err(e) => return Err(fail(&mut child, format!("QMP connection failed: {e:#}"))),
        };
        let startup = t.elapsed();
        qmp.set_timeout(Duration::from_secs(120));
        Ok(Vm { child, qmp, cfg, log, startup, _guards: guards })
    }

    fn pid(&self) -> u32 {
        self.child.pid()
    }

    async fn execute(&self, cmd: &str, args: Value) -> Result<Value> {
        self.qmp
            .execute(cmd, args)
            .await
            .with_context(|| format!("QMP {cmd} on {}", self.cfg.vm_name()))
    }

    async fn status(&self) -> Result<Value> {
        self.qmp.query_migrate().await
    }

    /// Poll the serial log every 5 ms until it contains `marker`.
    async fn wait_serial(&self, marker: char, timeout: Duration) -> Result<()> {
        let p = self.cfg.serial_log.clone().ok_or_else(|| anyhow!("no serial log"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if std::fs::read(&p).map(|b| b.contains(&(marker as u8))).unwrap_or(false) {
                return Ok(());
            }
            if !self.child.is_running() {
                bail!(
                    "QEMU exited while waiting for serial {marker:?}; log:\n{}",
                    file_tail(&self.log, 2048)
                );
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for serial {marker:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// QMP quit, wait up to 10 s, then SIGKILL; removes RAM file and socket.
    async fn quit(self) {
        let Vm { mut child, qmp, _guards, .. } = self;
        if child.is_running() {
            let _ = qmp.execute_timeout("quit", Value::Null, Duration::from_secs(5)).await;
        }
        if child.wait_exit_async(Duration::from_secs(10)).await.is_none() {
            child.kill();
        }
        drop(qmp);
        drop(child);
        drop(_guards);
    }
}

/// utime+stime of a process (all threads), seconds.
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime = field 14, stime = field 15.
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    let hz = crate::sys::clock_ticks_per_second() as f64;
    Some((ut + st) as f64 / hz)
}

/// Memory figures of /proc/<pid>/status (KiB).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcMem {
    pub vm_hwm_kib: u64,
    pub vm_rss_kib: u64,
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    pub rss_shmem_kib: u64,
}

pub fn proc_mem(pid: u32) -> Option<ProcMem> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut m = ProcMem::default();
    for l in s.lines() {
        let mut it = l.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let v: u64 = v.parse().unwrap_or(0);
        match k {
            "VmHWM:" => m.vm_hwm_kib = v,
            "VmRSS:" => m.vm_rss_kib = v,
            "RssAnon:" => m.rss_anon_kib = v,
            "RssFile:" => m.rss_file_kib = v,
            "RssShmem:" => m.rss_shmem_kib = v,
            _ => {}
        }
    }
    Some(m)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn u64_at(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64().unwrap_or(0)
}

/// `ram.normal + ram.duplicate` of a source query-migrate reply.
fn src_pages(v: &Value) -> u64 {
    u64_at(v, &["ram", "normal"]) + u64_at(v, &["ram", "duplicate"])
}

/// When this side's first `MIGRATION {status}` event at or after `after`
/// was received by the harness.
fn event_time(qmp: &Qmp, status: &str, after: Instant) -> Option<Instant> {
    qmp.events()
        .into_iter()
        .find(|e| {
            e.name == "MIGRATION" && e.data_str("status") == Some(status) && e.received >= after
        })
        .map(|e| e.received)
}

fn side_label(k: DestKind) -> &'static str {
    match k {
        DestKind::Rust => "rust-dest",
        DestKind::Qemu => "QEMU",
    }
}

/// Deterministic page indices spread over `[lo, hi)`.
fn sample_pages(lo: u64, hi: u64, n: u64) -> Vec<u64> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let span = hi.saturating_sub(lo).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lo + x % span
        })
        .collect()
}

/// Read pages (by index) from a RAM file.
fn read_pages(path: &Path, pages: &[u64]) -> Result<Vec<Vec<u8>>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    pages
        .iter()
        .map(|&p| {
            let mut b = vec![0u8; PAGE as usize];
            f.read_exact_at(&mut b, p * PAGE)?;
            Ok(b)
        })
        .collect()
}

/// Compare sampled pages; returns the number of mismatches.
fn compare_pages(path: &Path, pages: &[u64], want: &[Vec<u8>]) -> Result<u64> {
    let got = read_pages(path, pages)?;
    Ok(got.iter().zip(want).filter(|(a, b)| a != b).count() as u64)
}

// ---------------------------------------------------------------------------
// records

/// One `query-migrate` sample of a TCP migration.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Seconds since `migrate`.
    pub t: f64,
    pub src_status: String,
    pub dst_status: String,
    /// Source `ram.transferred`.
    pub src_transferred: u64,
    /// Source `ram.normal + ram.duplicate`.
    pub src_pages: u64,
}

/// One run of one side.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    pub scenario: String,
    pub side: String,
    pub rep: u32,
    pub ok: bool,
    pub error: Option<String>,
    /// Metric key → value (see the metric table).
    pub metrics: BTreeMap<String, f64>,
    pub samples: Vec<Sample>,
    /// Free-form details (final query-migrate fields, /proc figures, ...).
    pub details: Value,
    /// Per-fault latencies (postcopy), µs; summarised as histograms in JSON.
    #[serde(skip)]
    pub latencies_us: Vec<u64>,
}

impl RunRecord {
    fn new(scenario: &str, side: DestKind, rep: u32) -> RunRecord {
        RunRecord {
            scenario: scenario.into(),
            side: side.name().into(),
            rep,
            ok: true,
            error: None,
            metrics: BTreeMap::new(),
            samples: Vec::new(),
            details: json!({}),
            latencies_us: Vec::new(),
        }
    }
    fn set(&mut self, k: &str, v: f64) {
        if v.is_finite() {
            self.metrics.insert(k.into(), v);
        }
    }
    fn detail(&mut self, k: &str, v: Value) {
        self.details[k] = v;
    }
}

/// Everything the scenarios share.
struct Ctx {
    rust_vcpu_pattern: String,
    qemu: QemuBinary,
    rust_dest: PathBuf,
    machine: String,
    workdir: PathBuf,
}

impl Ctx {
    fn dest_bin(&self, side: DestKind) -> QemuBinary {
        match side {
            DestKind::Rust => QemuBinary::new(&self.rust_dest),
            DestKind::Qemu => self.qemu.clone(),
        }
    }
    fn log(&self, tag: &str) -> PathBuf {
        self.workdir.join(format!("{tag}.log"))
    }
    fn dest_cfg(&self, side: DestKind, mem: u64, incoming: &str) -> VmConfig {
        let mut c = VmConfig::new(&format!("bench-dst-{}", side.name()), mem);
        c.machine = self.machine.clone();
        c.incoming = Some(incoming.into());
        c.paused = true;
        c
    }
}

// ---------------------------------------------------------------------------
// TCP scenarios: precopy, postcopy, and the minimal overhead-only scenario

#[derive(Clone, Copy, Debug)]
struct TcpScenario {
    name: &'static str,
    postcopy: bool,
    workload: Workload,
    mem: u64,
}

async fn run_tcp(ctx: &Ctx, sc: TcpScenario, side: DestKind, rep: u32) -> RunRecord {
    let mut rec = RunRecord::new(sc.name, side, rep);
    let tag = unique_name(&format!("{}-{}-r{rep}", sc.name, side.name()));
    let (slog, dlog) = (ctx.log(&format!("{tag}-src")), ctx.log(&format!("{tag}-dst")));
    if let Err(e) = tcp_inner(ctx, sc, side, &tag, &slog, &dlog, &mut rec).await {
        rec.ok = false;
        rec.error = Some(format!(
            "{e:#}\n--- source log tail ---\n{}\n--- destination ({}) log tail ---\n{}",
            file_tail(&slog, 1500),
            side.name(),
            file_tail(&dlog, 3000)
        ));
    }
    rec
}

#[allow(clippy::too_many_arguments)]
async fn tcp_inner(
    ctx: &Ctx,
    sc: TcpScenario,
    side: DestKind,
    tag: &str,
    slog: &Path,
    dlog: &Path,
    rec: &mut RunRecord,
) -> Result<()> {
    let t_scn = Instant::now();
    let ov = |k: &str| format!("overhead.{}.{k}", sc.name);

    // --- source: start, boot until the serial marker ---
    let disk = ctx.workdir.join(format!("{tag}.img"));
    std::fs::copy(sc.workload.image_path(), &disk).context("copying the guest image")?;
    let _disk = PathGuard::new(&disk);
    let mut scfg = VmConfig::new("bench-src", sc.mem);
    scfg.machine = ctx.machine.clone();
    scfg.disk = Some(disk.clone());
    let serial = ctx.workdir.join(format!("{tag}-src.serial"));
    scfg.serial_log = Some(serial.clone());
    let _serial = PathGuard::new(&serial);
    let src = Vm::start(&ctx.qemu, scfg, slog.to_path_buf(), Duration::from_secs(60))
        .await
        .context("starting the source")?;
    rec.set(&ov("src_start_ms"), ms(src.startup));
    let t = Instant::now();
    let marker = match sc.workload {
        Workload::Sweep => 'B',
        Workload::Fill => 'F',
    };
    src.wait_serial(marker, Duration::from_secs(300)).await.context("waiting for the guest")?;
    rec.set(&ov("guest_boot_ms"), ms(t.elapsed()));
    if !sc.postcopy {
        src.execute("stop", Value::Null).await?;
    }

    // --- destination ---
    let mut dcfg = ctx.dest_cfg(side, sc.mem, "defer");
    if sc.postcopy {
        match side {
            DestKind::Rust => dcfg.extra.extend(
                [
                    "--vcpu-pattern",
                    ctx.rust_vcpu_pattern.as_str(),
                    "--vcpu-rate",
                    "0",
                    "--log",
                    RUST_FAULT_TRACE,
                ]
                .map(String::from),
            ),
            DestKind::Qemu => dcfg.extra.extend(
                [
                    "-trace",
                    "enable=postcopy_page_req_add",
                    "-trace",
                    "enable=postcopy_page_req_del",
                    "-msg",
                    "timestamp=on",
                ]
                .map(String::from),
            ),
        }
    }
    let dst = Vm::start(&ctx.dest_bin(side), dcfg, dlog.to_path_buf(), Duration::from_secs(60))
        .await
        .context("starting the destination")?;
    rec.set(&ov("dest_start_ms"), ms(dst.startup));

    // --- setup ---
    let t = Instant::now();
    let mut caps = vec![("events", true)];
    if sc.postcopy {
        caps.push(("postcopy-ram", true));
    }
    src.qmp.set_capabilities(&caps).await.context("source capabilities")?;
    if sc.postcopy {
        caps.push(("postcopy-blocktime", true));
    }
    dst.qmp.set_capabilities(&caps).await.context("destination capabilities")?;
    src.qmp
        .set_parameters(json!({"max-bandwidth": UNLIMITED_BW, "downtime-limit": 300, "max-postcopy-bandwidth": 0}))
        .await
        .context("source parameters")?;
    if sc.postcopy {
        // Both destinations run as soon as postcopy runs: `cont` while
        // incoming sets QEMU's autostart (its guest starts at POSTCOPY_RUN);
        // rust-dest starts its simulated vCPUs then.
        dst.execute("cont", Value::Null).await?;
    }
    let uri = format!("tcp:127.0.0.1:{}", free_tcp_port());
    dst.execute("migrate-incoming", json!({ "uri": uri })).await?;
    dst.qmp.wait_migration_status(&["setup"], &["failed"], Duration::from_secs(10)).await?;
    rec.set(&ov("setup_ms"), ms(t.elapsed()));

    // --- migrate ---
    let cpu0 = proc_cpu_seconds(dst.pid());
    let t0 = Instant::now();
    rec.set(&ov("to_migration_ms"), ms(t0 - t_scn));
    src.execute("migrate", json!({ "uri": uri })).await?;
    if sc.postcopy {
        src.execute("migrate-start-postcopy", Value::Null).await?;
    }
    let poll = Poller::new(t0, Duration::from_secs(600), dst.pid(), sc.postcopy);
    let (sv, dv) = poll.run(&src, &dst).await?;
    let Poller { samples, peak_nonshmem_kib, dst_done_poll, pc_seen, pc_pages_before, .. } = poll;
    rec.samples = samples.into_inner().map_err(|_| anyhow!("poisoned"))?;
    let (peak_nonshmem_kib, dst_done_poll) =
        (peak_nonshmem_kib.into_inner()?, dst_done_poll.into_inner()?);
    let (pc_seen, pc_pages_before) = (pc_seen.into_inner()?, pc_pages_before.into_inner()?);
    let cpu1 = proc_cpu_seconds(dst.pid());
    let pm = proc_mem(dst.pid()).unwrap_or_default();
    // The destination's own completion event is precise; polling is the fallback.
    let t_done =
        event_time(&dst.qmp, "completed", t0).or(dst_done_poll).unwrap_or_else(Instant::now);
    let migration = t_done.saturating_duration_since(t0);
    rec.set(&ov("migration_ms"), ms(migration));
    let p = sc.name;
    rec.set(&format!("{p}.migration_ms"), ms(migration));
    let transferred = u64_at(&sv, &["ram", "transferred"]);
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        rec.set(&format!("{p}.dest_cpu_s"), b - a);
    }
    rec.detail("source_final", sv.clone());
    rec.detail("dest_final", dv.clone());
    rec.detail("dest_proc_status_at_end", serde_json::to_value(pm)?);
    rec.detail("dest_peak_rss_anon_plus_file_kib_sampled", json!(peak_nonshmem_kib));
    rec.detail("dest_pid", json!(dst.pid()));
    if !sc.postcopy {
        rec.set(
            &format!("{p}.throughput_mib_s"),
            transferred as f64 / MIB as f64 / migration.as_secs_f64().max(1e-9),
        );
        rec.set(
            &format!("{p}.dest_rss_beyond_mib"),
            (pm.vm_hwm_kib as f64 * 1024.0 - sc.mem as f64) / MIB as f64,
        );
        rec.set(&format!("{p}.dest_vmhwm_mib"), pm.vm_hwm_kib as f64 / 1024.0);
        rec.set(&format!("{p}.dest_anon_file_peak_mib"), peak_nonshmem_kib as f64 / 1024.0);
        // Sanity: sampled pages identical on both sides.
        let pages = sample_pages(0, sc.mem / PAGE, VERIFY_PAGES);
        let want = read_pages(&src.cfg.mem_path, &pages)?;
        let bad = compare_pages(&dst.cfg.mem_path, &pages, &want)?;
        rec.detail("verify_sampled_pages", json!({"pages": VERIFY_PAGES, "mismatched": bad}));
        if bad > 0 {
            bail!("{bad} of {VERIFY_PAGES} sampled pages differ between source and destination");
        }
    } else {
        let (t_pc_poll, pages_at_pc) = pc_seen.unwrap_or((t0, pc_pages_before));
        let t_pc = event_time(&src.qmp, "postcopy-active", t0).unwrap_or(t_pc_poll);
        let pc = t_done.saturating_duration_since(t_pc);
        // Pages sent before the switch (the first sample in postcopy may be a
        // little late; the last precopy sample is the better lower bound).
        let before =
            if pc_pages_before > 0 { pc_pages_before.min(pages_at_pc) } else { pages_at_pc };
        let placed = src_pages(&sv).saturating_sub(before);
        rec.set(&format!("{p}.postcopy_ms"), ms(pc));
        rec.set(&format!("{p}.pages_per_s"), placed as f64 / pc.as_secs_f64().max(1e-9));
        rec.detail("pages_placed_in_postcopy", json!(placed));
        rec.detail("source_postcopy_requests", json!(u64_at(&sv, &["ram", "postcopy-requests"])));
        if let Some(bt) = dv.get("postcopy-blocktime").and_then(Value::as_f64) {
            rec.set(&format!("{p}.blocktime_ms"), bt);
        }
        rec.detail(
            "postcopy_blocktime",
            dv.get("postcopy-blocktime").cloned().unwrap_or(Value::Null),
        );
        rec.detail(
            "postcopy_vcpu_blocktime",
            dv.get("postcopy-vcpu-blocktime").cloned().unwrap_or(Value::Null),
        );
    }

    // --- teardown ---
    let t = Instant::now();
    let dst_log = dst.log.clone();
    dst.quit().await;
    src.quit().await;
    rec.set(&ov("teardown_ms"), ms(t.elapsed()));
    rec.set(&ov("total_ms"), ms(t_scn.elapsed()));

    if sc.postcopy {
        let p = sc.name;
        let traced = match side {
            DestKind::Rust => parse_rust_fault_trace(&dst_log),
            DestKind::Qemu => parse_qemu_fault_trace(&dst_log),
        };
        rec.detail("trace_latency_us", json!(percentiles(&traced)));
        let (p50, p99, max, n) = match side {
            // rust-dest's own measurement (fault read → page placed).
            DestKind::Rust => {
                let x = &dv["x-crossmig"];
                rec.detail("x_crossmig", x.clone());
                let f = &x["fault-latency-us"];
                (f["p50"].as_f64(), f["p99"].as_f64(), f["max"].as_f64(), f["count"].as_f64())
            }
            // QEMU 10.0 has no per-fault latency statistics: from its own
            // trace points (page request queued → requested page placed).
            DestKind::Qemu => {
                let s = percentiles(&traced);
                if traced.is_empty() {
                    (None, None, None, Some(0.0))
                } else {
                    (
                        Some(s.p50 as f64),
                        Some(s.p99 as f64),
                        Some(s.max as f64),
                        Some(s.count as f64),
                    )
                }
            }
        };
        for (k, v) in
            [("fault_p50_us", p50), ("fault_p99_us", p99), ("fault_max_us", max), ("faults", n)]
        {
            if let Some(v) = v {
                rec.set(&format!("{p}.{k}"), v);
            }
        }
        rec.latencies_us = traced;
    }
    Ok(())
}

/// Samples both sides of a TCP migration in two independent loops (a QEMU
/// destination answers late while its main loop loads, which must not
/// thin out the source's samples), until both report `completed`.
type M<T> = std::sync::Mutex<T>;

struct Poller {
    t0: Instant,
    deadline: Instant,
    dst_pid: u32,
    postcopy: bool,
    samples: M<Vec<Sample>>,
    src_status: M<String>,
    dst_status: M<String>,
    peak_nonshmem_kib: M<u64>,
    dst_done_poll: M<Option<Instant>>,
    pc_seen: M<Option<(Instant, u64)>>,
    pc_pages_before: M<u64>,
    stop: M<bool>,
}

impl Poller {
    fn new(t0: Instant, timeout: Duration, dst_pid: u32, postcopy: bool) -> Poller {
        Poller {
            t0,
            deadline: t0 + timeout,
            dst_pid,
            postcopy,
            samples: Default::default(),
            src_status: M::new("none".into()),
            dst_status: M::new("none".into()),
            peak_nonshmem_kib: Default::default(),
            dst_done_poll: Default::default(),
            pc_seen: Default::default(),
            pc_pages_before: Default::default(),
            stop: Default::default(),
        }
    }

    fn both_done(&self) -> bool {
        *self.src_status.lock().unwrap() == "completed"
            && *self.dst_status.lock().unwrap() == "completed"
    }

    fn check(&self, who: &str, v: &Value) -> Result<()> {
        let st = migrate_status_of(v);
        if ["failed", "cancelled"].contains(&st) {
            *self.stop.lock().unwrap() = true;
            bail!(
                "migration failed on the {who}: {st}{}",
                v.get("error-desc").map(|e| format!(" ({e})")).unwrap_or_default()
            );
        }
        if Instant::now() > self.deadline {
            *self.stop.lock().unwrap() = true;
            bail!(
                "timed out: source {}, destination {}",
                self.src_status.lock().unwrap(),
                self.dst_status.lock().unwrap()
            );
        }
        Ok(())
    }

    async fn src_loop(&self, src: &Vm) -> Result<Value> {
        loop {
            let sv = src.status().await.context("source query-migrate");
            let sv = match sv {
                Ok(v) => v,
                Err(e) => {
                    *self.stop.lock().unwrap() = true;
                    return Err(e);
                }
            };
            let now = Instant::now();
            let ss = migrate_status_of(&sv).to_string();
            *self.src_status.lock().unwrap() = ss.clone();
            if let Some(m) = proc_mem(self.dst_pid) {
                {
                    let mut p = self.peak_nonshmem_kib.lock().unwrap();
                    *p = (*p).max(m.rss_anon_kib + m.rss_file_kib);
                }
            }
            self.samples.lock().unwrap().push(Sample {
                t: (now - self.t0).as_secs_f64(),
                src_status: ss.clone(),
                dst_status: self.dst_status.lock().unwrap().clone(),
                src_transferred: u64_at(&sv, &["ram", "transferred"]),
                src_pages: src_pages(&sv),
            });
            if self.postcopy && self.pc_seen.lock().unwrap().is_none() {
                if ss == "postcopy-active" {
                    *self.pc_seen.lock().unwrap() = Some((now, src_pages(&sv)));
                } else {
                    *self.pc_pages_before.lock().unwrap() = src_pages(&sv);
                }
            }
            self.check("source", &sv)?;
            if self.both_done() || *self.stop.lock().unwrap() {
                return Ok(sv);
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    async fn dst_loop(&self, dst: &Vm) -> Result<Value> {
        loop {
            let dv = match dst.status().await.context("destination query-migrate") {
                Ok(v) => v,
                Err(e) => {
                    *self.stop.lock().unwrap() = true;
                    return Err(e);
                }
            };
            let ds = migrate_status_of(&dv).to_string();
            if ds == "completed" {
                self.dst_done_poll.lock().unwrap().get_or_insert_with(Instant::now);
            }
            *self.dst_status.lock().unwrap() = ds;
            self.check("destination", &dv)?;
            if self.both_done() || *self.stop.lock().unwrap() {
                return Ok(dv);
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    async fn run(&self, src: &Vm, dst: &Vm) -> Result<(Value, Value)> {
        let (a, b) = tokio::join!(self.src_loop(src), self.dst_loop(dst));
        let (sv, dv) = (a?, b?);
        if !self.both_done() {
            bail!(
                "sampling stopped: source {}, destination {}",
                self.src_status.lock().unwrap(),
                self.dst_status.lock().unwrap()
            );
        }
        Ok((sv, dv))
    }
}

/// Per-fault latencies from rust-dest's `fault_latency` trace lines.
pub fn parse_rust_fault_trace(log: &Path) -> Vec<u64> {
    let Ok(s) = std::fs::read(log) else {
        return Vec::new();
    };
    let s = String::from_utf8_lossy(&s);
    s.lines()
        .filter_map(|l| {
            let i = l.find(RUST_FAULT_MARK)? + RUST_FAULT_MARK.len();
            let d: String = l[i..].chars().take_while(|c| c.is_ascii_digit()).collect();
            d.parse().ok()
        })
        .collect()
}

/// Per-fault latencies from QEMU's `postcopy_page_req_add` (a missing page
/// is requested from the source; emitted by the fault thread) and
/// `postcopy_page_req_del` (that page has been placed) trace points, with
/// `-msg timestamp=on` (`pid@sec.usec:event ...`).
pub fn parse_qemu_fault_trace(log: &Path) -> Vec<u64> {
    let Ok(s) = std::fs::read(log) else {
        return Vec::new();
    };
    let s = String::from_utf8_lossy(&s);
    let mut open: HashMap<u64, u64> = HashMap::new();
    let mut out = Vec::new();
    for l in s.lines() {
        let Some(i) = l.find(":postcopy_page_req_") else {
            continue;
        };
        let is_add = l[i..].starts_with(":postcopy_page_req_add");
        let is_del = l[i..].starts_with(":postcopy_page_req_del");
        if !is_add && !is_del {
            continue;
        }
        let Some(ts) = l[..i].rsplit('@').next() else {
            continue;
        };
        let Some((sec, usec)) = ts.split_once('.') else {
            continue;
        };
        let (Ok(sec), Ok(usec)) = (sec.parse::<u64>(), usec.parse::<u64>()) else {
            continue;
        };
        let t = sec * 1_000_000 + usec;
        let Some(j) = l[i..].find("0x") else { continue };
        let hex: String = l[i + j + 2..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        let Ok(addr) = u64::from_str_radix(&hex, 16) else {
            continue;
        };
        if is_add {
            open.entry(addr).or_insert(t);
        } else if let Some(t0) = open.remove(&addr) {
            out.push(t.saturating_sub(t0));
        }
    }
    out
}

/// Nearest-rank percentiles (as rust-dest computes them).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

pub fn percentiles(v: &[u64]) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let n = s.len() as u64;
    let pick = |p: u64| s[((p * n).div_ceil(100).max(1) - 1) as usize];
    Percentiles { count: s.len(), p50: pick(50), p99: pick(99), max: s[s.len() - 1] }
}

// ---------------------------------------------------------------------------
// ingest: a recorded stream from a file

/// The stream recorded once from a real QEMU source.
struct Recorded {
    path: PathBuf,
    bytes: u64,
    mem: u64,
    pages: Vec<u64>,
    contents: Vec<Vec<u8>>,
    info: Value,
}

async fn record_stream(ctx: &Ctx, mem: u64, dir: &Path) -> Result<Recorded> {
    let tag = unique_name("record");
    let path = dir.join(format!("{tag}.stream"));
    let disk = ctx.workdir.join(format!("{tag}.img"));
    std::fs::copy(Workload::Fill.image_path(), &disk)?;
    let _disk = PathGuard::new(&disk);
    let mut scfg = VmConfig::new("bench-rec", mem);
    scfg.machine = ctx.machine.clone();
    scfg.disk = Some(disk.clone());
    let serial = ctx.workdir.join(format!("{tag}.serial"));
    scfg.serial_log = Some(serial.clone());
    let _serial = PathGuard::new(&serial);
    let src = Vm::start(&ctx.qemu, scfg, ctx.log(&tag), Duration::from_secs(60)).await?;
    let t = Instant::now();
    src.wait_serial('F', Duration::from_secs(300)).await?;
    let boot_ms = ms(t.elapsed());
    src.execute("stop", Value::Null).await?;
    src.qmp.set_capabilities(&[("events", true)]).await?;
    src.qmp.set_parameters(json!({"max-bandwidth": UNLIMITED_BW})).await?;
    let t = Instant::now();
    src.execute("migrate", json!({"uri": format!("file:{}", path.display())})).await?;
    let fin = src
        .qmp
        .wait_migration_status(&["completed"], &["failed", "cancelled"], Duration::from_secs(600))
        .await?;
    let record_ms = ms(t.elapsed());
    let pages = sample_pages(0, mem / PAGE, VERIFY_PAGES);
    let contents = read_pages(&src.cfg.mem_path, &pages)?;
    src.quit().await;
    let bytes = std::fs::metadata(&path)?.len();
    // Read it once, so every ingest finds it in the page cache.
    let p2 = path.clone();
    let warm_s = tokio::task::spawn_blocking(move || -> Result<f64> {
        use std::io::Read;
        let mut f = std::fs::File::open(&p2)?;
        let mut buf = vec![0u8; 4 << 20];
        let t = Instant::now();
        while f.read(&mut buf)? > 0 {}
        Ok(t.elapsed().as_secs_f64())
    })
    .await??;
    let info = json!({
        "bytes": bytes,
        "guest_ram_bytes": mem,
        "guest_boot_ms": boot_ms,
        "record_ms": record_ms,
        "source_total_time_ms": fin.get("total-time"),
        "page_cache_read_gb_s": bytes as f64 / warm_s / 1e9,
        "location": path.display().to_string(),
    });
    Ok(Recorded { path, bytes, mem, pages, contents, info })
}

async fn run_ingest(ctx: &Ctx, r: &Recorded, side: DestKind, rep: u32) -> RunRecord {
    let mut rec = RunRecord::new("ingest", side, rep);
    let tag = unique_name(&format!("ingest-{}-r{rep}", side.name()));
    let (la, lb) = (ctx.log(&format!("{tag}-defer")), ctx.log(&format!("{tag}-file")));
    if let Err(e) = ingest_inner(ctx, r, side, &la, &lb, &mut rec).await {
        rec.ok = false;
        rec.error = Some(format!(
            "{e:#}\n--- log tails ---\n{}\n{}",
            file_tail(&la, 2000),
            file_tail(&lb, 2000)
        ));
    }
    rec
}

/// Poll query-migrate until `completed`; returns when that reply arrived.
async fn wait_completed(vm: &Vm, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let v = vm.status().await?;
        let now = Instant::now();
        match migrate_status_of(&v) {
            "completed" => return Ok(now),
            "failed" | "cancelled" => bail!(
                "incoming migration failed: {}",
                v.get("error-desc").cloned().unwrap_or_default()
            ),
            _ => {}
        }
        if now > deadline {
            bail!("ingest timed out after {timeout:?}");
        }
        tokio::time::sleep(INGEST_POLL).await;
    }
}

async fn ingest_inner(
    ctx: &Ctx,
    r: &Recorded,
    side: DestKind,
    la: &Path,
    lb: &Path,
    rec: &mut RunRecord,
) -> Result<()> {
    let uri = format!("file:{}", r.path.display());
    let to = Duration::from_secs(600);
    // (a) start-up on its own (-incoming defer), then a QMP-triggered ingest.
    let vm = Vm::start(
        &ctx.dest_bin(side),
        ctx.dest_cfg(side, r.mem, "defer"),
        la.to_path_buf(),
        Duration::from_secs(60),
    )
    .await?;
    let startup = vm.startup;
    let cpu0 = proc_cpu_seconds(vm.pid());
    let t1 = Instant::now();
    vm.execute("migrate-incoming", json!({ "uri": uri })).await?;
    let t2 = wait_completed(&vm, to).await?;
    let cpu1 = proc_cpu_seconds(vm.pid());
    let pm = proc_mem(vm.pid()).unwrap_or_default();
    let bad_a = compare_pages(&vm.cfg.mem_path, &r.pages, &r.contents)?;
    vm.quit().await;
    // (b) end to end: a process started with -incoming file:PATH.
    let t_spawn = Instant::now();
    let vm = Vm::start(&ctx.dest_bin(side), ctx.dest_cfg(side, r.mem, &uri), lb.to_path_buf(), to)
        .await?;
    let t_done = wait_completed(&vm, to).await?;
    let bad_b = compare_pages(&vm.cfg.mem_path, &r.pages, &r.contents)?;
    vm.quit().await;
    if bad_a + bad_b > 0 {
        bail!("sampled pages differ from the source after ingest ({bad_a} and {bad_b} of {VERIFY_PAGES})");
    }
    let e2e = t_done - t_spawn;
    let ingest = e2e.saturating_sub(startup);
    let qmp_ingest = t2 - t1;
    rec.set("ingest.startup_ms", ms(startup));
    rec.set("ingest.e2e_ms", ms(e2e));
    rec.set("ingest.ingest_ms", ms(ingest));
    rec.set("ingest.gb_s", r.bytes as f64 / ingest.as_secs_f64().max(1e-9) / 1e9);
    rec.set("ingest.qmp_ingest_ms", ms(qmp_ingest));
    rec.set("ingest.gb_s_qmp", r.bytes as f64 / qmp_ingest.as_secs_f64().max(1e-9) / 1e9);
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        rec.set("ingest.dest_cpu_s", b - a);
    }
    rec.detail("dest_proc_status_at_end", serde_json::to_value(pm)?);
    rec.detail("verify_sampled_pages", json!({"pages": VERIFY_PAGES * 2, "mismatched": 0}));
    Ok(())
}

// ---------------------------------------------------------------------------
// memcpy reference

/// The machine's single-thread memcpy rate.
#[derive(Clone, Debug, Serialize)]
pub struct MemcpyResult {
    pub bytes: u64,
    /// Warm (both buffers resident), median of the copies, GB/s.
    pub warm_gb_s: f64,
    pub warm_best_gb_s: f64,
    pub warm_runs_gb_s: Vec<f64>,
    /// First copy into fresh anonymous memory (page faults included).
    pub fresh_anon_gb_s: f64,
    /// First copy into a fresh shared /dev/shm mapping: what a destination
    /// writing a memory-backend-file does.
    pub fresh_shmem_gb_s: Option<f64>,
}

fn copy_gb_s(src: &Mapping, dst: &mut Mapping) -> f64 {
    let t = Instant::now();
    dst.copy_from(src);
    src.len() as f64 / t.elapsed().as_secs_f64() / 1e9
}

pub fn measure_memcpy(bytes: u64, warm_runs: usize) -> Result<MemcpyResult> {
    let n = bytes as usize;
    let mut src = Mapping::anonymous(n)?;
    src.fill(0x5a);
    let mut dst = Mapping::anonymous(n)?;
    let fresh_anon = copy_gb_s(&src, &mut dst);
    let mut warm: Vec<f64> = (0..warm_runs.max(1)).map(|_| copy_gb_s(&src, &mut dst)).collect();
    drop(dst);
    let shm = (|| -> Result<f64> {
        let path = PathBuf::from(format!("/dev/shm/{}.memcpy", unique_name("bench")));
        let _g = PathGuard::new(&path);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        f.set_len(bytes)?;
        let mut m =
            Mapping::shared_file(&f, n).map_err(|e| anyhow::anyhow!("mmap /dev/shm: {e}"))?;
        Ok(copy_gb_s(&src, &mut m))
    })();
    let runs = warm.clone();
    warm.sort_by(|a, b| a.total_cmp(b));
    Ok(MemcpyResult {
        bytes,
        warm_gb_s: warm[warm.len() / 2],
        warm_best_gb_s: *warm.last().unwrap(),
        warm_runs_gb_s: runs,
        fresh_anon_gb_s: fresh_anon,
        fresh_shmem_gb_s: shm.ok(),
    })
}

// ---------------------------------------------------------------------------
// metrics and summaries

#[derive(Clone, Debug, Serialize)]
pub struct MetricDef {
    pub key: String,
    pub part: &'static str,
    pub label: String,
    pub unit: &'static str,
    /// "lower", "higher" (is better) or "info".
    pub better: &'static str,
}

fn def(
    key: &str,
    part: &'static str,
    label: &str,
    unit: &'static str,
    better: &'static str,
) -> MetricDef {
    MetricDef { key: key.into(), part, label: label.into(), unit, better }
}

fn metric_defs(cfg: &BenchConfig, overhead_scenarios: &[&str]) -> Vec<MetricDef> {
    let mut d = Vec::new();
    if cfg.has(Part::Precopy) {
        d.push(def(
            "precopy.migration_ms",
            "precopy",
            "total migration time (migrate → destination completed)",
            "ms",
            "lower",
        ));
        d.push(def(
            "precopy.throughput_mib_s",
            "precopy",
            "throughput (source ram.transferred / time)",
            "MiB/s",
            "higher",
        ));
        d.push(def("precopy.dest_cpu_s", "precopy", "destination CPU, user+sys", "s", "lower"));
        d.push(def(
            "precopy.dest_rss_beyond_mib",
            "precopy",
            "destination peak RSS beyond guest RAM (VmHWM − guest RAM)",
            "MiB",
            "lower",
        ));
        d.push(def("precopy.dest_vmhwm_mib", "precopy", "destination VmHWM (raw)", "MiB", "info"));
        d.push(def(
            "precopy.dest_anon_file_peak_mib",
            "precopy",
            "destination peak RssAnon+RssFile (sampled)",
            "MiB",
            "lower",
        ));
    }
    if cfg.has(Part::Postcopy) {
        d.push(def("postcopy.fault_p50_us", "postcopy", "fault latency p50", "µs", "lower"));
        d.push(def("postcopy.fault_p99_us", "postcopy", "fault latency p99", "µs", "lower"));
        d.push(def("postcopy.fault_max_us", "postcopy", "fault latency max", "µs", "lower"));
        d.push(def("postcopy.faults", "postcopy", "faults measured", "", "info"));
        d.push(def(
            "postcopy.blocktime_ms",
            "postcopy",
            "postcopy-blocktime (see notes)",
            "ms",
            "info",
        ));
        d.push(def(
            "postcopy.pages_per_s",
            "postcopy",
            "pages placed per second (postcopy phase)",
            "pages/s",
            "higher",
        ));
        d.push(def(
            "postcopy.postcopy_ms",
            "postcopy",
            "total postcopy time (postcopy-active → destination completed)",
            "ms",
            "lower",
        ));
        d.push(def(
            "postcopy.migration_ms",
            "postcopy",
            "migrate → destination completed",
            "ms",
            "lower",
        ));
        d.push(def(
            "postcopy.dest_cpu_s",
            "postcopy",
            "destination CPU, user+sys (incl. its guest/vCPUs)",
            "s",
            "info",
        ));
    }
    if cfg.has(Part::Ingest) {
        d.push(def(
            "ingest.gb_s",
            "ingest",
            "ingest rate: stream bytes / ((spawn → completed) − start-up)",
            "GB/s",
            "higher",
        ));
        d.push(def(
            "ingest.ingest_ms",
            "ingest",
            "ingest time ((spawn → completed) − start-up)",
            "ms",
            "lower",
        ));
        d.push(def(
            "ingest.e2e_ms",
            "ingest",
            "spawn with -incoming file: → completed",
            "ms",
            "lower",
        ));
        d.push(def(
            "ingest.startup_ms",
            "ingest",
            "start-up (spawn → QMP ready, -incoming defer)",
            "ms",
            "lower",
        ));
        d.push(def(
            "ingest.gb_s_qmp",
            "ingest",
            "ingest rate, cross-check: migrate-incoming → completed",
            "GB/s",
            "higher",
        ));
        d.push(def(
            "ingest.memcpy_fraction",
            "ingest",
            "ingest rate / warm memcpy rate",
            "×",
            "higher",
        ));
        d.push(def(
            "ingest.dest_cpu_s",
            "ingest",
            "destination CPU, user+sys (QMP-triggered ingest)",
            "s",
            "lower",
        ));
    }
    if cfg.has(Part::Overhead) {
        for sc in overhead_scenarios {
            let k = |x: &str| format!("overhead.{sc}.{x}");
            d.push(def(
                &k("src_start_ms"),
                "overhead",
                &format!("{sc}: source QEMU start-up + QMP handshake"),
                "ms",
                "info",
            ));
            d.push(def(
                &k("guest_boot_ms"),
                "overhead",
                &format!("{sc}: guest boot until serial marker"),
                "ms",
                "info",
            ));
            d.push(def(
                &k("dest_start_ms"),
                "overhead",
                &format!("{sc}: destination start-up + QMP handshake"),
                "ms",
                "lower",
            ));
            d.push(def(
                &k("setup_ms"),
                "overhead",
                &format!("{sc}: capabilities, parameters, migrate-incoming"),
                "ms",
                "info",
            ));
            d.push(def(
                &k("to_migration_ms"),
                "overhead",
                &format!("{sc}: scenario start → migrate"),
                "ms",
                "info",
            ));
            d.push(def(
                &k("teardown_ms"),
                "overhead",
                &format!("{sc}: teardown (quit both)"),
                "ms",
                "info",
            ));
            d.push(def(&k("total_ms"), "overhead", &format!("{sc}: scenario total"), "ms", "info"));
        }
    }
    d
}

#[derive(Clone, Debug, Serialize)]
pub struct SideStats {
    /// Value per repetition (null where the run failed).
    pub values: Vec<Option<f64>>,
    pub median: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MetricSummary {
    #[serde(flatten)]
    pub def: MetricDef,
    pub rust: SideStats,
    pub qemu: SideStats,
    /// rust-dest / QEMU for each repetition pair.
    pub ratio_per_pair: Vec<Option<f64>>,
    pub ratio_median: Option<f64>,
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 })
}

fn stats(values: Vec<Option<f64>>) -> SideStats {
    let got: Vec<f64> = values.iter().flatten().copied().collect();
    SideStats {
        median: median(&got),
        min: got.iter().copied().reduce(f64::min),
        max: got.iter().copied().reduce(f64::max),
        values,
    }
}

fn summarize(defs: &[MetricDef], runs: &[RunRecord], reps: u32) -> Vec<MetricSummary> {
    defs.iter()
        .map(|d| {
            let per_side = |side: DestKind| -> Vec<Option<f64>> {
                (0..reps)
                    .map(|r| {
                        runs.iter()
                            .filter(|x| x.side == side.name() && x.rep == r && x.ok)
                            .find_map(|x| x.metrics.get(&d.key).copied())
                    })
                    .collect()
            };
            let (a, b) = (per_side(DestKind::Rust), per_side(DestKind::Qemu));
            let ratios: Vec<Option<f64>> = a
                .iter()
                .zip(&b)
                .map(|(x, y)| match (x, y) {
                    (Some(x), Some(y)) if *y != 0.0 => Some(x / y),
                    _ => None,
                })
                .collect();
            let rm = median(&ratios.iter().flatten().copied().collect::<Vec<_>>());
            MetricSummary {
                def: d.clone(),
                rust: stats(a),
                qemu: stats(b),
                ratio_per_pair: ratios,
                ratio_median: rm,
            }
        })
        .collect()
}

/// A latency histogram with log-spaced bins (5 per decade, 1 µs … 10 s).
#[derive(Clone, Debug, Serialize)]
pub struct Histogram {
    pub edges_us: Vec<f64>,
    pub counts: Vec<u64>,
    pub total: u64,
    pub percentiles: Percentiles,
}

pub fn histogram(v: &[u64]) -> Histogram {
    let edges: Vec<f64> = (0..=35).map(|k| 10f64.powf(k as f64 / 5.0)).collect();
    let mut counts = vec![0u64; edges.len() - 1];
    for &x in v {
        let x = (x as f64).max(1.0);
        let i = ((x.log10() * 5.0).floor() as usize).min(counts.len() - 1);
        counts[i] += 1;
    }
    Histogram { edges_us: edges, counts, total: v.len() as u64, percentiles: percentiles(v) }
}

// ---------------------------------------------------------------------------
// the report

#[derive(Clone, Debug, Serialize)]
pub struct BinaryInfo {
    pub path: String,
    pub profile: String,
    pub version: String,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub schema: &'static str,
    pub started_unix: u64,
    pub duration_s: f64,
    pub config: BenchConfig,
    pub host: Value,
    pub rust_dest: BinaryInfo,
    pub qemu: BinaryInfo,
    pub warnings: Vec<String>,
    pub notes: Vec<(String, String)>,
    pub memcpy: Option<MemcpyResult>,
    pub recorded_stream: Option<Value>,
    pub metrics: Vec<MetricSummary>,
    /// Per destination, all postcopy runs together.
    pub latency_histograms: BTreeMap<String, Histogram>,
    pub runs: Vec<RunRecord>,
    pub ok: bool,
}

fn notes() -> Vec<(String, String)> {
    let n = |a: &str, b: &str| (a.to_string(), b.to_string());
    vec![
        n("Order", "Every scenario runs A B A B: rust-dest, then a QEMU destination, per repetition, each with a freshly started, identical source. Medians and min–max are over repetitions; the ratio is rust-dest / QEMU for each repetition pair (its median is shown). Both destinations run with the same command line (QEMU syntax), memory-backend-file in /dev/shm, share=on, -S."),
        n("Precopy", "Source: the fill guest (images/, Workload::Fill: pseudo-random data in all RAM above 1 MiB), stopped after it prints F. max-bandwidth 100 GB/s (QEMU has no 'unlimited' for max-bandwidth; this never throttles), downtime-limit 300 ms, TCP on 127.0.0.1. Time: from issuing `migrate` to the destination's MIGRATION 'completed' event (harness receive time). MiB/s = source ram.transferred / that time. A sample of pages is compared between source and destination RAM files after every run."),
        n("CPU", "Destination CPU = utime+stime of the destination process (all threads) from /proc/<pid>/stat, read right before `migrate` and right after completion (clock-tick resolution, usually 10 ms). It includes answering the harness's query-migrate polls (every 50 ms), which both destinations get alike."),
        n("RSS", "Peak RSS beyond guest RAM = VmHWM (peak resident set, /proc/<pid>/status, read right after completion) − guest RAM size (-m). Both destinations map guest RAM from a shared /dev/shm file; every guest page they write is resident in their address space and counts in VmHWM (as RssShmem), so the guest RAM size is subtracted. The raw VmHWM and the peak of RssAnon+RssFile sampled every 50 ms during the migration (which excludes the shared guest RAM) are shown too."),
        n("Postcopy", "Source: the sweep guest (live, running; waits for its first B), postcopy-ram on both sides, postcopy-blocktime on the destination, `migrate-start-postcopy` right after `migrate`, max-postcopy-bandwidth unlimited. Both destinations get `cont` before migrate-incoming, so they run from POSTCOPY_RUN on. rust-dest runs --vcpu-pattern random --vcpu-rate 0 (one simulated vCPU touching all RAM in random order, as fast as possible). QEMU's destination only faults if its guest runs: its guest is the migrated sweep guest, which touches RAM in address order (first 100 MiB) — the closest equivalent, not the same access pattern."),
        n("Fault latency", "rust-dest: its own measurement (x-crossmig fault-latency-us in query-migrate: from reading the fault off userfaultfd to placing the page). QEMU 10.0 has no per-fault statistic (postcopy-latency and its distribution arrived in 10.1), so its latency comes from its own trace points postcopy_page_req_add (fault thread queues the page request) → postcopy_page_req_del (that page placed), with -msg timestamp=on (µs). Histograms: rust-dest's from its per-fault 'fault_latency' trace lines, QEMU's from those trace points; all postcopy runs of a side together. Tracing is on for both destinations in the postcopy runs only."),
        n("postcopy-blocktime", "Shown as reported. QEMU 10.0: total time (ms) during which all vCPUs were blocked on faults at once (its guest has 1 vCPU). rust-dest: the sum of its fault latencies (ms). Not the same definition; informative only."),
        n("Pages placed per second", "Pages the source sent during postcopy (source ram.normal + ram.duplicate at completion minus at the switch) / postcopy time. Postcopy time: source MIGRATION 'postcopy-active' event → destination 'completed' event."),
        n("Ingest", "The stream is recorded once from a real QEMU source: fill guest, stopped, max-bandwidth raised to 100 GB/s, `migrate file:PATH` (no mapped-ram), kept on disk and read once so it sits in the page cache. Each destination then loads it twice: (a) started with -incoming defer: start-up = spawn → QMP handshake done; then migrate-incoming file:PATH → query-migrate 'completed' (2 ms polling) is the cross-check rate; (b) started with -incoming file:PATH: spawn → 'completed'. Ingest time = (b) − start-up; GB/s = stream file bytes / ingest time (GB = 10^9 B). No network and no return path."),
        n("memcpy", "The machine's single-thread memcpy (std::ptr::copy_nonoverlapping) over a 1 GiB buffer: 'warm' = both buffers resident (median of 4 copies), the physical limit; 'fresh anon' and 'fresh /dev/shm' = first copy into newly mapped memory, page faults included, the latter being what a destination writing a shared memory-backend-file pays."),
        n("Overhead", "Per scenario run: source spawn → QMP handshake done; guest boot until its serial marker (F for the fill guest, B for the sweep guest); destination spawn → QMP handshake; capabilities + parameters + migrate-incoming; scenario start → `migrate`; teardown (QMP quit both); scenario total."),
        n("Noise", "Numbers come from one machine where other work may run; the load average at start and end is recorded. Timings use the harness's monotonic clock."),
    ]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn host_info() -> Value {
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|x| x.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "kernel": kernel,
        "mem_total_kib": mem_total,
        "loadavg_start": loadavg(),
    })
}

/// Release or debug build, from the path (target/<profile>/...).
fn build_profile(p: &Path) -> String {
    let comps: Vec<String> =
        p.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if comps.iter().any(|c| c == "release") {
        "release".into()
    } else if comps.iter().any(|c| c == "debug") {
        "debug".into()
    } else {
        "unknown".into()
    }
}

/// Run the benchmark; prints the table, writes OUT/bench.json and
/// OUT/bench.html. Returns whether every run succeeded.
pub async fn run_bench(args: BenchArgs) -> Result<bool> {
    let cfg = BenchConfig::from_args(&args)?;
    let started = Instant::now();
    let mut host = host_info();
    let started_unix =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let qemu = match &args.qemu {
        Some(p) => QemuBinary::new(p),
        None => QemuBinary::system()?,
    };
    let rust_dest = match &args.rust_dest {
        Some(p) => p.clone(),
        None => rust_dest_binary()?,
    };
    let rust_dest = std::fs::canonicalize(&rust_dest).unwrap_or(rust_dest);
    let qv = qemu
        .version()
        .map(|(a, b, c)| format!("{a}.{b}.{c}"))
        .unwrap_or_else(|e| format!("? ({e})"));
    let rv = std::process::Command::new(&rust_dest)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut warnings = Vec::new();
    let profile = build_profile(&rust_dest);
    if profile != "release" {
        warnings.push(format!(
            "rust-dest binary {} is a {profile} build: numbers are not representative (cargo build --release --workspace --bins, or --rust-dest PATH)",
            rust_dest.display()
        ));
    }
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    let tmp = tempfile::Builder::new().prefix("crossmig-bench-").tempdir()?;
    let workdir = if args.keep_logs {
        let d = cfg.out.join("logs");
        std::fs::create_dir_all(&d)?;
        d
    } else {
        tmp.path().to_path_buf()
    };
    let ctx = Ctx {
        rust_vcpu_pattern: cfg.rust_vcpu_pattern.clone(),
        qemu: qemu.clone(),
        rust_dest: rust_dest.clone(),
        machine: cfg.machine.clone(),
        workdir,
    };
    let say = |s: String| eprintln!("bench: {s}");
    say(format!(
        "rust-dest {} ({profile}) vs QEMU {qv} destination; {} MiB guest (postcopy {} MiB), {} rep(s) per side; parts: {}",
        rust_dest.display(),
        cfg.mem_bytes >> 20,
        cfg.postcopy_mem_bytes >> 20,
        cfg.reps,
        cfg.parts.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
    ));
    for w in &warnings {
        say(format!("WARNING: {w}"));
    }

    let mut runs: Vec<RunRecord> = Vec::new();
    let mut overhead_scenarios: Vec<&str> = Vec::new();
    let sides = [DestKind::Rust, DestKind::Qemu];
    let report_run = |r: &RunRecord| {
        let head = format!(
            "{} rep {} {:<9}",
            r.scenario,
            r.rep + 1,
            side_label(if r.side == "rust" { DestKind::Rust } else { DestKind::Qemu })
        );
        if !r.ok {
            eprintln!(
                "bench: {head} FAILED: {}",
                r.error.as_deref().unwrap_or("?").lines().next().unwrap_or("")
            );
            return;
        }
        let m: Vec<String> = r
            .metrics
            .iter()
            .filter(|(k, _)| !k.starts_with("overhead."))
            .map(|(k, v)| format!("{}={}", k.split('.').nth(1).unwrap_or(k), fmt_num(*v)))
            .collect();
        eprintln!("bench: {head} {}", m.join(" "));
    };

    let mut tcp: Vec<TcpScenario> = Vec::new();
    if cfg.has(Part::Precopy) {
        tcp.push(TcpScenario {
            name: "precopy",
            postcopy: false,
            workload: Workload::Fill,
            mem: cfg.mem_bytes,
        });
    }
    if cfg.has(Part::Postcopy) {
        tcp.push(TcpScenario {
            name: "postcopy",
            postcopy: true,
            workload: Workload::Sweep,
            mem: cfg.postcopy_mem_bytes,
        });
    }
    if cfg.has(Part::Overhead) && tcp.is_empty() {
        // Overhead alone: a minimal scenario (stopped sweep guest, precopy).
        tcp.push(TcpScenario {
            name: "minimal",
            postcopy: false,
            workload: Workload::Sweep,
            mem: cfg.mem_bytes,
        });
    }
    for sc in &tcp {
        overhead_scenarios.push(sc.name);
        for rep in 0..cfg.reps {
            for side in sides {
                let r = run_tcp(&ctx, *sc, side, rep).await;
                report_run(&r);
                runs.push(r);
            }
        }
    }

    let mut memcpy = None;
    let mut recorded_info = None;
    if cfg.has(Part::Ingest) {
        let b = cfg.memcpy_bytes;
        say(format!("memcpy reference: {} MiB buffer", b >> 20));
        match tokio::task::spawn_blocking(move || measure_memcpy(b, 4)).await? {
            Ok(m) => {
                say(format!(
                    "memcpy: warm {:.2} GB/s (best {:.2}), fresh anon {:.2} GB/s, fresh /dev/shm {} GB/s",
                    m.warm_gb_s,
                    m.warm_best_gb_s,
                    m.fresh_anon_gb_s,
                    m.fresh_shmem_gb_s.map(|x| format!("{x:.2}")).unwrap_or("?".into())
                ));
                memcpy = Some(m);
            }
            Err(e) => warnings.push(format!("memcpy measurement failed: {e:#}")),
        }
        let sdir = tempfile::Builder::new().prefix("crossmig-bench-stream-").tempdir()?;
        say(format!("recording a {} MiB stream with QEMU (migrate to file:)", cfg.mem_bytes >> 20));
        match record_stream(&ctx, cfg.mem_bytes, sdir.path()).await {
            Ok(rs) => {
                say(format!("recorded {} bytes: {}", rs.bytes, rs.info));
                recorded_info = Some(rs.info.clone());
                for rep in 0..cfg.reps {
                    for side in sides {
                        let mut r = run_ingest(&ctx, &rs, side, rep).await;
                        if let (Some(m), Some(g)) = (&memcpy, r.metrics.get("ingest.gb_s").copied())
                        {
                            r.set("ingest.memcpy_fraction", g / m.warm_gb_s);
                        }
                        report_run(&r);
                        runs.push(r);
                    }
                }
            }
            Err(e) => {
                let mut r = RunRecord::new("ingest", DestKind::Qemu, 0);
                r.ok = false;
                r.error = Some(format!("recording the stream failed: {e:#}"));
                report_run(&r);
                runs.push(r);
            }
        }
        drop(sdir);
    }

    // --- summaries ---
    let defs = metric_defs(&cfg, &overhead_scenarios);
    let metrics = summarize(&defs, &runs, cfg.reps);
    let mut hists = BTreeMap::new();
    if cfg.has(Part::Postcopy) {
        for side in sides {
            let all: Vec<u64> = runs
                .iter()
                .filter(|r| r.scenario == "postcopy" && r.side == side.name())
                .flat_map(|r| r.latencies_us.iter().copied())
                .collect();
            hists.insert(side.name().to_string(), histogram(&all));
        }
    }
    let ok = runs.iter().all(|r| r.ok) && !runs.is_empty();
    host["loadavg_end"] = json!(loadavg());
    let report = BenchReport {
        schema: "crossmig-bench/1",
        started_unix,
        duration_s: started.elapsed().as_secs_f64(),
        config: cfg.clone(),
        host,
        rust_dest: BinaryInfo { path: rust_dest.display().to_string(), profile, version: rv },
        qemu: BinaryInfo {
            path: qemu.path.display().to_string(),
            profile: "system".into(),
            version: qv,
        },
        warnings,
        notes: notes(),
        memcpy,
        recorded_stream: recorded_info,
        metrics,
        latency_histograms: hists,
        runs,
        ok,
    };
    let table = render_table(&report);
    println!("{table}");
    let jp = cfg.out.join("bench.json");
    std::fs::write(&jp, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", jp.display()))?;
    let hp = cfg.out.join("bench.html");
    std::fs::write(&hp, render_html(&report, &table))
        .with_context(|| format!("writing {}", hp.display()))?;
    say(format!("wrote {} and {}", jp.display(), hp.display()));
    drop(tmp);
    Ok(ok)
}

// ---------------------------------------------------------------------------
// text table

pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_side(s: &SideStats) -> String {
    match (s.median, s.min, s.max) {
        (Some(m), Some(a), Some(b)) if (a - b).abs() > f64::EPSILON => {
            format!("{} ({}–{})", fmt_num(m), fmt_num(a), fmt_num(b))
        }
        (Some(m), _, _) => fmt_num(m),
        _ => "—".into(),
    }
}

fn fmt_ratio(m: &MetricSummary) -> String {
    let Some(r) = m.ratio_median else {
        return "—".into();
    };
    let mut s = format!("{r:.2}");
    if m.ratio_per_pair.len() > 1 {
        let pp: Vec<String> = m
            .ratio_per_pair
            .iter()
            .map(|x| x.map(|x| format!("{x:.2}")).unwrap_or("—".into()))
            .collect();
        s += &format!(" [{}]", pp.join(" "));
    }
    s
}

pub fn render_table(r: &BenchReport) -> String {
    let mut o = String::new();
    let c = &r.config;
    let _ = writeln!(
        o,
        "crossmig bench: rust-dest vs QEMU {} destination; {} MiB guest (postcopy {} MiB), {} rep(s) per side, A B A B",
        r.qemu.version,
        c.mem_bytes >> 20,
        c.postcopy_mem_bytes >> 20,
        c.reps
    );
    let _ = writeln!(
        o,
        "rust-dest binary: {} ({} build) {}",
        r.rust_dest.path, r.rust_dest.profile, r.rust_dest.version
    );
    for w in &r.warnings {
        let _ = writeln!(o, "WARNING: {w}");
    }
    let rows: Vec<[String; 5]> = r
        .metrics
        .iter()
        .map(|m| {
            let better = match m.def.better {
                "lower" => " ↓",
                "higher" => " ↑",
                _ => "",
            };
            [
                format!("{}{better}", m.def.label),
                m.def.unit.to_string(),
                fmt_side(&m.rust),
                fmt_side(&m.qemu),
                fmt_ratio(m),
            ]
        })
        .collect();
    let head = [
        "metric (↓ lower / ↑ higher is better)".to_string(),
        "unit".into(),
        "rust-dest median (min–max)".into(),
        "QEMU median (min–max)".into(),
        "rust/QEMU".into(),
    ];
    let mut w = [0usize; 5];
    for row in rows.iter().chain(std::iter::once(&head)) {
        for (i, x) in row.iter().enumerate() {
            w[i] = w[i].max(x.chars().count());
        }
    }
    let line = |o: &mut String, row: &[String; 5]| {
        let mut s = String::new();
        for (i, x) in row.iter().enumerate() {
            let pad = w[i] - x.chars().count();
            if i >= 2 {
                s += &" ".repeat(pad);
                s += x;
            } else {
                s += x;
                s += &" ".repeat(pad);
            }
            s += "  ";
        }
        let _ = writeln!(o, "{}", s.trim_end());
    };
    let mut part = "";
    for (m, row) in r.metrics.iter().zip(&rows) {
        if m.def.part != part {
            part = m.def.part;
            let _ = writeln!(o, "\n[{part}]");
            line(&mut o, &head);
        }
        line(&mut o, row);
    }
    if let Some(m) = &r.memcpy {
        let _ = writeln!(
            o,
            "\nmemcpy (1 thread, {} MiB): warm {:.2} GB/s (best {:.2}); into fresh anonymous pages {:.2} GB/s; into fresh /dev/shm pages {}",
            m.bytes >> 20,
            m.warm_gb_s,
            m.warm_best_gb_s,
            m.fresh_anon_gb_s,
            m.fresh_shmem_gb_s.map(|x| format!("{x:.2} GB/s")).unwrap_or("?".into())
        );
    }
    if let Some(s) = &r.recorded_stream {
        let _ = writeln!(
            o,
            "recorded stream: {} bytes, recorded in {:.0} ms, page-cache read {:.2} GB/s",
            s["bytes"],
            s["record_ms"].as_f64().unwrap_or(0.0),
            s["page_cache_read_gb_s"].as_f64().unwrap_or(0.0)
        );
    }
    for (side, h) in &r.latency_histograms {
        let _ = writeln!(
            o,
            "postcopy fault latency from traces ({}): {} faults, p50 {} µs, p99 {} µs, max {} µs",
            side, h.total, h.percentiles.p50, h.percentiles.p99, h.percentiles.max
        );
    }
    let failed: Vec<&RunRecord> = r.runs.iter().filter(|x| !x.ok).collect();
    if !failed.is_empty() {
        let _ = writeln!(o, "\nFAILED runs:");
        for f in failed {
            let _ = writeln!(
                o,
                "  {} rep {} {}: {}",
                f.scenario,
                f.rep + 1,
                f.side,
                f.error.as_deref().unwrap_or("?").lines().next().unwrap_or("")
            );
        }
    }
    let _ = writeln!(
        o,
        "\nload average: start {}, end {}",
        r.host["loadavg_start"].as_str().unwrap_or("?"),
        r.host["loadavg_end"].as_str().unwrap_or("?")
    );
    o
}

// ---------------------------------------------------------------------------
// HTML with inline SVG

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// 1-2-5 tick step for a range.
fn nice_step(range: f64, target: usize) -> f64 {
    if range <= 0.0 || !range.is_finite() {
        return 1.0;
    }
    let raw = range / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn tick_label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e6 {
        format!("{:.0}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

pub struct Series {
    pub label: String,
    pub color: &'static str,
    pub dashed: bool,
    pub pts: Vec<(f64, f64)>,
}

const W: f64 = 760.0;
const H: f64 = 300.0;
const ML: f64 = 64.0;
const MR: f64 = 16.0;
const MT: f64 = 30.0;
const MB: f64 = 44.0;

fn svg_open(id: &str, title: &str, h: f64) -> String {
    format!(
        "<svg id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\" font-family=\"sans-serif\" font-size=\"11\">\
<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/><text x=\"{}\" y=\"18\" font-size=\"13\" font-weight=\"bold\">{}</text>",
        ML,
        esc(title)
    )
}

/// A line chart; x and y from 0.
pub fn svg_lines(id: &str, title: &str, xlabel: &str, ylabel: &str, series: &[Series]) -> String {
    let mut s = svg_open(id, title, H);
    let xmax = series.iter().flat_map(|x| x.pts.iter().map(|p| p.0)).fold(0.0, f64::max).max(1e-9);
    let ymax = series.iter().flat_map(|x| x.pts.iter().map(|p| p.1)).fold(0.0, f64::max).max(1e-9);
    let (xs, ys) = (nice_step(xmax, 8), nice_step(ymax, 5));
    let (xmax, ymax) = ((xmax / xs).ceil() * xs, (ymax / ys).ceil() * ys);
    let (pw, ph) = (W - ML - MR, H - MT - MB);
    let px = |x: f64| ML + x / xmax * pw;
    let py = |y: f64| MT + ph - y / ymax * ph;
    axes(&mut s, xmax, xs, ymax, ys, &px, &py, pw, ph, xlabel, ylabel, false);
    for se in series {
        if se.pts.is_empty() {
            continue;
        }
        let pts: Vec<String> =
            se.pts.iter().map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y))).collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\"{} points=\"{}\"/>",
            se.color,
            if se.dashed { " stroke-dasharray=\"5,3\"" } else { "" },
            pts.join(" ")
        );
    }
    legend(&mut s, series.iter().map(|x| (x.label.as_str(), x.color, x.dashed)));
    s + "</svg>"
}

#[allow(clippy::too_many_arguments)]
fn axes(
    s: &mut String,
    xmax: f64,
    xs: f64,
    ymax: f64,
    ys: f64,
    px: &dyn Fn(f64) -> f64,
    py: &dyn Fn(f64) -> f64,
    pw: f64,
    ph: f64,
    xlabel: &str,
    ylabel: &str,
    xlog: bool,
) {
    let _ = write!(s, "<rect x=\"{ML}\" y=\"{MT}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>");
    let mut y = 0.0;
    while y <= ymax + ys * 0.01 {
        let yy = py(y);
        let _ = write!(
            s,
            "<line x1=\"{ML}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            ML + pw,
            ML - 4.0,
            yy + 4.0,
            tick_label(y)
        );
        y += ys;
    }
    if xlog {
        // decades (x values are log10)
        let mut d = 0.0;
        while d <= xmax + 1e-9 {
            let xx = px(d);
            let lab = match d as i32 {
                0 => "1µs".to_string(),
                1 => "10µs".into(),
                2 => "100µs".into(),
                3 => "1ms".into(),
                4 => "10ms".into(),
                5 => "100ms".into(),
                6 => "1s".into(),
                7 => "10s".into(),
                n => format!("1e{n}µs"),
            };
            let _ = write!(
                s,
                "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{MT}\" y2=\"{:.1}\" stroke=\"#eee\"/><text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{lab}</text>",
                MT + ph,
                MT + ph + 14.0
            );
            d += 1.0;
        }
    } else {
        let mut x = 0.0;
        while x <= xmax + xs * 0.01 {
            let xx = px(x);
            let _ = write!(
                s,
                "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{MT}\" y2=\"{:.1}\" stroke=\"#eee\"/><text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                MT + ph,
                MT + ph + 14.0,
                tick_label(x)
            );
            x += xs;
        }
    }
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text><text transform=\"translate(14,{:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        ML + pw / 2.0,
        MT + ph + 32.0,
        esc(xlabel),
        MT + ph / 2.0,
        esc(ylabel)
    );
}

fn legend<'a>(s: &mut String, items: impl Iterator<Item = (&'a str, &'a str, bool)>) {
    let mut seen: Vec<String> = Vec::new();
    let mut y = MT + 12.0;
    for (label, color, dashed) in items {
        if seen.iter().any(|x| x == label) {
            continue;
        }
        seen.push(label.to_string());
        let x = W - MR - 170.0;
        let _ = write!(
            s,
            "<line x1=\"{x}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"{color}\" stroke-width=\"2.5\"{}/><text x=\"{}\" y=\"{}\">{}</text>",
            x + 22.0,
            if dashed { " stroke-dasharray=\"5,3\"" } else { "" },
            x + 28.0,
            y + 4.0,
            esc(label)
        );
        y += 15.0;
    }
}

/// A histogram with log-x bins, y = % of faults, with percentile markers.
pub fn svg_histogram(id: &str, title: &str, h: &Histogram, color: &str) -> String {
    let mut s = svg_open(id, title, H);
    let total = h.total.max(1) as f64;
    let pct: Vec<f64> = h.counts.iter().map(|c| *c as f64 * 100.0 / total).collect();
    let ymax0 = pct.iter().copied().fold(0.0, f64::max).max(1.0);
    let ys = nice_step(ymax0, 5);
    let ymax = (ymax0 / ys).ceil() * ys;
    let xmax = 7.0; // 1 µs .. 10 s in log10(µs)
    let (pw, ph) = (W - ML - MR, H - MT - MB);
    let px = |x: f64| ML + x / xmax * pw;
    let py = |y: f64| MT + ph - y / ymax * ph;
    axes(
        &mut s,
        xmax,
        1.0,
        ymax,
        ys,
        &px,
        &py,
        pw,
        ph,
        "fault latency (log scale)",
        "% of faults",
        true,
    );
    for (i, p) in pct.iter().enumerate() {
        if *p <= 0.0 {
            continue;
        }
        let (a, b) = (h.edges_us[i].log10(), h.edges_us[i + 1].log10());
        let (x0, x1) = (px(a), px(b));
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\" fill-opacity=\"0.75\"><title>{}–{} µs: {} faults ({:.1}%)</title></rect>",
            x0 + 0.5,
            py(*p),
            (x1 - x0 - 1.0).max(0.5),
            MT + ph - py(*p),
            tick_label(h.edges_us[i].round()),
            tick_label(h.edges_us[i + 1].round()),
            h.counts[i],
            p
        );
    }
    if h.total > 0 {
        let pc = &h.percentiles;
        for (lab, v) in [("p50", pc.p50), ("p99", pc.p99), ("max", pc.max)] {
            let x = px((v.max(1) as f64).log10().min(xmax));
            let _ = write!(
                s,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{MT}\" y2=\"{:.1}\" stroke=\"#222\" stroke-dasharray=\"3,3\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{lab} {v} µs</text>",
                MT + ph,
                x + 3.0,
                MT + 12.0 + if lab == "p99" { 12.0 } else if lab == "max" { 24.0 } else { 0.0 }
            );
        }
    } else {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">no per-fault data</text>",
            ML + pw / 2.0,
            MT + ph / 2.0
        );
    }
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"18\" text-anchor=\"end\">{} faults</text>",
        W - MR,
        h.total
    );
    s + "</svg>"
}

/// Horizontal bars.
pub fn svg_hbars(id: &str, title: &str, unit: &str, bars: &[(String, f64, &str)]) -> String {
    let row = 26.0;
    let h = MT + bars.len() as f64 * row + 40.0;
    let mut s = svg_open(id, title, h);
    let lw = 250.0;
    let pw = W - lw - MR - 60.0;
    let vmax = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-9);
    for (i, (label, v, color)) in bars.iter().enumerate() {
        let y = MT + i as f64 * row;
        let w = v / vmax * pw;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><rect x=\"{lw}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\">{} {}</text>",
            lw - 6.0,
            y + row * 0.6,
            esc(label),
            y + 3.0,
            row - 8.0,
            lw + w + 4.0,
            y + row * 0.6,
            fmt_num(*v),
            esc(unit)
        );
    }
    s + "</svg>"
}

/// Stacked horizontal bars (phases), one row per run.
pub fn svg_stacked(
    id: &str,
    title: &str,
    rows: &[(String, Vec<f64>)],
    phases: &[(&str, &str)],
) -> String {
    let row = 22.0;
    let h = MT + rows.len() as f64 * row + 60.0;
    let mut s = svg_open(id, title, h);
    let lw = 190.0;
    let pw = W - lw - MR - 60.0;
    let vmax = rows.iter().map(|r| r.1.iter().sum::<f64>()).fold(0.0, f64::max).max(1e-9);
    for (i, (label, vals)) in rows.iter().enumerate() {
        let y = MT + i as f64 * row;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            lw - 6.0,
            y + row * 0.6,
            esc(label)
        );
        let mut x = lw;
        for (j, v) in vals.iter().enumerate() {
            let w = v / vmax * pw;
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {} ms</title></rect>",
                y + 3.0,
                row - 6.0,
                phases[j].1,
                esc(phases[j].0),
                fmt_num(*v)
            );
            x += w;
        }
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\">{} ms</text>",
            x + 4.0,
            y + row * 0.6,
            fmt_num(vals.iter().sum())
        );
    }
    let mut x = ML;
    let y = MT + rows.len() as f64 * row + 24.0;
    for (name, color) in phases {
        let _ = write!(s, "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{y:.1}\">{}</text>", y - 9.0, x + 14.0, esc(name));
        x += 14.0 + name.chars().count() as f64 * 6.2 + 14.0;
    }
    s + "</svg>"
}

/// Throughput over time (MiB/s from successive source ram.transferred samples).
fn throughput_series(runs: &[&RunRecord]) -> Vec<Series> {
    runs.iter()
        .map(|r| {
            let mut pts = vec![(0.0, 0.0)];
            for w in r.samples.windows(2) {
                let dt = w[1].t - w[0].t;
                if dt > 0.0 {
                    pts.push((
                        w[1].t,
                        w[1].src_transferred.saturating_sub(w[0].src_transferred) as f64
                            / MIB as f64
                            / dt,
                    ));
                }
            }
            let rust = r.side == "rust";
            Series {
                label: format!("{} rep {}", if rust { "rust-dest" } else { "QEMU" }, r.rep + 1),
                color: if rust { RUST_COLOR } else { QEMU_COLOR },
                dashed: r.rep % 2 == 1,
                pts,
            }
        })
        .collect()
}

fn html_metric_rows(r: &BenchReport, part: &str) -> String {
    let mut o = String::new();
    for m in r.metrics.iter().filter(|m| m.def.part == part) {
        let arrow = match m.def.better {
            "lower" => " ↓",
            "higher" => " ↑",
            _ => "",
        };
        let _ = write!(
            o,
            "<tr><td>{}{arrow}<br><code>{}</code></td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
            esc(&m.def.label),
            esc(&m.def.key),
            esc(m.def.unit),
            esc(&fmt_side(&m.rust)),
            esc(&fmt_side(&m.qemu)),
            esc(&fmt_ratio(m))
        );
    }
    if o.is_empty() {
        return o;
    }
    format!("<table><tr><th>metric</th><th>unit</th><th>rust-dest median (min–max)</th><th>QEMU median (min–max)</th><th>rust-dest / QEMU</th></tr>{o}</table>")
}

pub fn render_html(r: &BenchReport, table: &str) -> String {
    let mut h = String::new();
    let c = &r.config;
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>crossmig bench: rust-dest vs QEMU</title><style>\
body{{font-family:sans-serif;max-width:1000px;margin:1.5em auto;color:#222;padding:0 1em}}\
table{{border-collapse:collapse;margin:.6em 0;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 7px;vertical-align:top}}\
th{{background:#f3f3f3}}td.n{{text-align:right;white-space:nowrap}}code{{color:#777;font-size:11px}}\
.warn{{background:#fff3bf;border:1px solid #f08c00;padding:.5em}}.fail{{background:#ffe3e3}}\
pre{{background:#f8f8f8;padding:.6em;overflow-x:auto;font-size:12px}}svg{{display:block;margin:.8em 0;border:1px solid #ddd}}\
.key span{{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}}</style></head><body>"
    );
    let _ = write!(
        h,
        "<h1>crossmig bench: rust-dest vs QEMU's destination</h1><p>QEMU {} (<code>{}</code>) · rust-dest <code>{}</code> (<b>{} build</b>) {} · guest {} MiB, postcopy {} MiB · {} repetition(s) per side, A B A B · machine {} · host: {} CPUs, {}, kernel {} · load average {} → {} · run took {:.0} s</p>",
        esc(&r.qemu.version),
        esc(&r.qemu.path),
        esc(&r.rust_dest.path),
        esc(&r.rust_dest.profile),
        esc(&r.rust_dest.version),
        c.mem_bytes >> 20,
        c.postcopy_mem_bytes >> 20,
        c.reps,
        esc(&c.machine),
        r.host["cpus"],
        esc(r.host["cpu_model"].as_str().unwrap_or("")),
        esc(r.host["kernel"].as_str().unwrap_or("")),
        esc(r.host["loadavg_start"].as_str().unwrap_or("")),
        esc(r.host["loadavg_end"].as_str().unwrap_or("")),
        r.duration_s
    );
    let _ = write!(h, "<p class=key>Colours:<span style=\"background:{RUST_COLOR}\"></span>rust-dest<span style=\"background:{QEMU_COLOR}\"></span>QEMU</p>");
    for w in &r.warnings {
        let _ = write!(h, "<p class=warn>⚠ {}</p>", esc(w));
    }
    if !r.ok {
        let _ =
            write!(h, "<p class=\"warn fail\">Some runs failed; see the run list at the end.</p>");
    }
    let note = |k: &str| {
        r.notes
            .iter()
            .find(|n| n.0 == k)
            .map(|n| format!("<p><b>{}.</b> {}</p>", esc(&n.0), esc(&n.1)))
            .unwrap_or_default()
    };

    if c.has(Part::Precopy) {
        let _ = write!(h, "<h2>1. Precopy throughput</h2>{}", html_metric_rows(r, "precopy"));
        let runs: Vec<&RunRecord> =
            r.runs.iter().filter(|x| x.scenario == "precopy" && x.ok).collect();
        h += &svg_lines(
            "tput-precopy",
            "Precopy: throughput over time (source ram.transferred, 50 ms samples)",
            "seconds since migrate",
            "MiB/s",
            &throughput_series(&runs),
        );
        h += &note("Precopy");
        h += &note("CPU");
        h += &note("RSS");
    }
    if c.has(Part::Postcopy) {
        let _ = write!(h, "<h2>2. Postcopy demand paging</h2>{}", html_metric_rows(r, "postcopy"));
        for (side, color, label) in
            [("rust", RUST_COLOR, "rust-dest"), ("qemu", QEMU_COLOR, "QEMU")]
        {
            if let Some(hist) = r.latency_histograms.get(side) {
                h += &svg_histogram(
                    &format!("hist-{side}"),
                    &format!("Postcopy fault latency: {label}"),
                    hist,
                    color,
                );
            }
        }
        let runs: Vec<&RunRecord> =
            r.runs.iter().filter(|x| x.scenario == "postcopy" && x.ok).collect();
        h += &svg_lines(
            "tput-postcopy",
            "Postcopy: source throughput over time (50 ms samples)",
            "seconds since migrate",
            "MiB/s",
            &throughput_series(&runs),
        );
        h += &note("Postcopy");
        h += &note("Fault latency");
        h += &note("postcopy-blocktime");
        h += &note("Pages placed per second");
    }
    if c.has(Part::Ingest) {
        let _ = write!(
            h,
            "<h2>3. The codec's ceiling: ingest of a recorded stream</h2>{}",
            html_metric_rows(r, "ingest")
        );
        let mut bars: Vec<(String, f64, &str)> = Vec::new();
        for m in r
            .metrics
            .iter()
            .filter(|m| m.def.key == "ingest.gb_s" || m.def.key == "ingest.gb_s_qmp")
        {
            let what = if m.def.key == "ingest.gb_s" { "ingest" } else { "ingest (QMP-triggered)" };
            if let Some(v) = m.rust.median {
                bars.push((format!("rust-dest {what}"), v, RUST_COLOR));
            }
            if let Some(v) = m.qemu.median {
                bars.push((format!("QEMU {what}"), v, QEMU_COLOR));
            }
        }
        if let Some(m) = &r.memcpy {
            bars.push(("memcpy, warm (physical limit)".into(), m.warm_gb_s, "#495057"));
            bars.push(("memcpy into fresh anonymous pages".into(), m.fresh_anon_gb_s, "#868e96"));
            if let Some(x) = m.fresh_shmem_gb_s {
                bars.push(("memcpy into fresh /dev/shm pages".into(), x, "#adb5bd"));
            }
        }
        if let Some(s) = &r.recorded_stream {
            if let Some(x) = s["page_cache_read_gb_s"].as_f64() {
                bars.push(("read(2) of the stream from page cache".into(), x, "#ced4da"));
            }
        }
        h += &svg_hbars("ingest-bars", "Ingest rate (medians) against memcpy", "GB/s", &bars);
        if let Some(s) = &r.recorded_stream {
            let _ = write!(h, "<p>Recorded stream: <code>{}</code></p>", esc(&s.to_string()));
        }
        h += &note("Ingest");
        h += &note("memcpy");
    }
    if c.has(Part::Overhead) {
        let _ =
            write!(h, "<h2>4. The suite's own overhead</h2>{}", html_metric_rows(r, "overhead"));
        let phases = [
            ("source start-up", "#74c0fc"),
            ("guest boot", "#4dabf7"),
            ("destination start-up", "#ffa94d"),
            ("setup", "#ffd43b"),
            ("migration", "#69db7c"),
            ("teardown", "#ced4da"),
        ];
        let keys = [
            "src_start_ms",
            "guest_boot_ms",
            "dest_start_ms",
            "setup_ms",
            "migration_ms",
            "teardown_ms",
        ];
        let rows: Vec<(String, Vec<f64>)> = r
            .runs
            .iter()
            .filter(|x| x.ok && x.metrics.keys().any(|k| k.starts_with("overhead.")))
            .map(|x| {
                let vals = keys
                    .iter()
                    .map(|k| {
                        x.metrics
                            .get(&format!("overhead.{}.{k}", x.scenario))
                            .copied()
                            .unwrap_or(0.0)
                    })
                    .collect();
                (
                    format!(
                        "{} rep {} {}",
                        x.scenario,
                        x.rep + 1,
                        if x.side == "rust" { "rust-dest" } else { "QEMU" }
                    ),
                    vals,
                )
            })
            .collect();
        h += &svg_stacked("overhead-bars", "Where a scenario's wall time goes", &rows, &phases);
        h += &note("Overhead");
    }
    let _ = write!(h, "<h2>Text summary</h2><pre>{}</pre>", esc(table));
    let _ = write!(h, "<h2>Runs</h2><table><tr><th>scenario</th><th>rep</th><th>destination</th><th>result</th></tr>");
    for x in &r.runs {
        let _ = write!(
            h,
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if x.ok { "" } else { " class=fail" },
            esc(&x.scenario),
            x.rep + 1,
            if x.side == "rust" { "rust-dest" } else { "QEMU" },
            if x.ok {
                "ok".to_string()
            } else {
                format!("<pre>{}</pre>", esc(x.error.as_deref().unwrap_or("?")))
            }
        );
    }
    h += "</table><h2>Method</h2>";
    for (k, v) in &r.notes {
        let _ = write!(h, "<p><b>{}.</b> {}</p>", esc(k), esc(v));
    }
    h += "<p>Generated by <code>crossmig bench</code>; all data is in <code>bench.json</code> next to this file.</p></body></html>\n";
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_histogram() {
        let v: Vec<u64> = (1..=100).collect();
        let p = percentiles(&v);
        assert_eq!((p.count, p.p50, p.p99, p.max), (100, 50, 99, 100));
        let h = histogram(&[1, 5, 10, 100, 1_000_000, 100_000_000_000]);
        assert_eq!(h.counts.iter().sum::<u64>(), 6);
        assert_eq!(h.counts[0], 1); // 1 µs
        assert_eq!(h.counts[5], 1); // 10 µs
        assert_eq!(*h.counts.last().unwrap(), 1); // clamped
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn qemu_trace_parsing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("q.log");
        std::fs::write(
            &p,
            "123@1700000000.000100:postcopy_page_req_add new page req 0x7f0000001000 total 1\n\
             noise\n\
             123@1700000000.000150:postcopy_page_req_add new page req 0x7f0000002000 total 2\n\
             124@1700000000.000400:postcopy_page_req_del resolved page req 0x7f0000001000 total 1\n\
             124@1700000001.000150:postcopy_page_req_del resolved page req 0x7f0000002000 total 0\n\
             124@1700000001.000150:postcopy_page_req_del resolved page req 0x7f0000003000 total 0\n",
        )
        .unwrap();
        assert_eq!(parse_qemu_fault_trace(&p), vec![300, 1_000_000]);
        std::fs::write(&p, "2026-01-01T00:00:00Z TRACE fault-latency-us=42 block=0 page=0x10\nx fault-latency-us=7\n").unwrap();
        assert_eq!(parse_rust_fault_trace(&p), vec![42, 7]);
    }

    #[test]
    fn args() {
        let a = parse_args([
            "--quick",
            "--only",
            "precopy,ingest",
            "--only",
            "overhead",
            "--mem",
            "256M",
        ])
        .unwrap();
        let c = BenchConfig::from_args(&a).unwrap();
        assert_eq!(c.parts, vec![Part::Precopy, Part::Ingest, Part::Overhead]);
        assert_eq!((c.reps, c.mem_bytes, c.postcopy_mem_bytes), (1, 256 << 20, 128 << 20));
        let c = BenchConfig::from_args(&parse_args(Vec::<String>::new()).unwrap()).unwrap();
        assert_eq!((c.reps, c.mem_bytes, c.parts.len()), (3, 2 << 30, 4));
        assert_eq!(c.out, PathBuf::from("bench-out"));
    }

    #[test]
    fn bench_future_is_send() {
        fn send<T: Send>(_: &T) {}
        let f = run_bench(parse_args(["--quick"]).unwrap());
        send(&f);
    }

    #[test]
    fn svg_is_well_formed_enough() {
        let s = svg_lines(
            "x",
            "t<",
            "x",
            "y",
            &[Series {
                label: "a".into(),
                color: RUST_COLOR,
                dashed: false,
                pts: vec![(0.0, 0.0), (1.0, 5.0)],
            }],
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>") && s.contains("t&lt;"));
        let h = svg_histogram("h", "t", &histogram(&[10, 20, 3000]), QEMU_COLOR);
        assert!(h.contains("<rect") && h.contains("p99"));
    }
}
