//! `crossmig`: run verified QEMU migrations into rust-dest or QEMU.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use harness::drive::console::run_one;
use harness::drive::migrate::{MigrateOpts, Mode};
use harness::images::Workload;
use harness::scenario::runner::{run_files, RunRequest};
use harness::vm::dest::DestKind;
use harness::vm::qemu::QemuBinary;
use wire::units::parse_size;

#[derive(Parser)]
#[command(
    name = "crossmig",
    version,
    about = "QEMU live-migration interop test harness: real QEMU sources, rust-dest or QEMU destinations, memory verified page by page"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Read a migration stream at rest (file:, exec:, mapped-ram, or the harness's recordings of every channel) and summarise it.
    Analyze(harness::analyze::cli::AnalyzeArgs),
    /// Benchmarks: rust-dest against QEMU's own destination, side by side (A B A B), with ratios, JSON and an HTML report.
    Bench(harness::bench::BenchArgs),
    /// Differential fuzzing: mutate recorded real streams one region at a time, feed each mutant to QEMU's destination and to rust-dest, report verdict agreement per region.
    Fuzz(harness::fuzz::run::FuzzArgs),
    /// Provision and list QEMU builds (7.2, 10.0, 11.1) side by side in a cache folder.
    #[command(subcommand)]
    Qemu(harness::provision::cli::QemuCmd),
    /// Run the seeded-defects catalogue (harness/defects/*.toml) after its control runs: each source-side defect into rust-dest and QEMU's destination, each destination-side one into the seeded-defects rust-dest (a live migration or a stream scenario), with what caught it.
    Defects {
        /// Only the defect of this name.
        #[arg(long)]
        only: Option<String>,
        /// Only the fast subset (`fast = true`).
        #[arg(long)]
        fast: bool,
        /// Write the results as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Catalogue folder (default: the harness's defects/).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Migrations run at once (default: the available cores, at most 4).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Run scenario files (or directories of them): every variant, with live progress and a result table.
    Run {
        /// Scenario files or directories (default: scenarios/).
        files: Vec<PathBuf>,
        /// Only variants whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// List the variants and exit.
        #[arg(long)]
        list: bool,
        /// Check the files (parse, expand, validate) and exit.
        #[arg(long)]
        check: bool,
        /// Write a JSON report (steps with timings, query-migrate samples of both sides, verdicts).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Run one verified migration from a real QEMU source with a live test guest.
    Migrate {
        /// Destination: rust (rust-dest) or qemu (a real QEMU destination).
        #[arg(long, default_value = "rust")]
        dest: DestKind,
        /// precopy or postcopy.
        #[arg(long, default_value = "precopy")]
        mode: Mode,
        /// Stop the source guest before migrating (non-live).
        #[arg(long)]
        stopped: bool,
        /// Guest RAM size (e.g. 256M, 1G).
        #[arg(long, default_value = "256M", value_parser = parse_size)]
        mem: u64,
        /// Guest workload: sweep (rewrites a page range continuously) or fill (random data, then idle).
        #[arg(long, default_value = "sweep")]
        workload: Workload,
        /// Postcopy: switch after this many RAM passes.
        #[arg(long, default_value_t = 1)]
        postcopy_after: u32,
        /// QEMU binary for the source (default: qemu-system-x86_64 on PATH or $CROSSMIG_QEMU).
        #[arg(long)]
        qemu: Option<PathBuf>,
        /// Machine type for both sides.
        #[arg(long, default_value = "q35")]
        machine: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
        /// Keep logs in this directory (default: a temporary directory, removed).
        #[arg(long)]
        logs: Option<PathBuf>,
        /// Write the full report (checks, query-migrate samples of both sides) as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Extra migration capability on both sides (repeatable), e.g. postcopy-preempt, switchover-ack, return-path.
        #[arg(long = "capability", value_name = "NAME")]
        capabilities: Vec<String>,
        /// Postcopy: pause and recover this many times during postcopy (migrate-pause, migrate-recover, resume).
        #[arg(long, default_value_t = 0)]
        recover: u32,
        /// Do not route the migration through the recording proxy (rust-dest's ROM blocks are then
        /// not checked against the wire bytes); use for timings comparable with a QEMU destination.
        #[arg(long)]
        no_record: bool,
        /// Record every connection (both directions) and keep the recordings in DIR for `crossmig analyze DIR`.
        #[arg(long, value_name = "DIR")]
        keep_recording: Option<PathBuf>,
    },
    /// Postcopy cut, paused or partitioned and recovered again and again at random points (rust-dest destination): counts
    /// completions, stalls and RAM mismatches; exits 1 on any of them.
    Soak {
        /// Number of cycles (verified migrations, each cut and recovered 1-3 times).
        #[arg(long, default_value_t = 20)]
        cycles: u32,
        /// QEMU series the cycles go round, comma-separated.
        #[arg(long, default_value = "10.0,11.1", value_delimiter = ',')]
        qemu: Vec<String>,
        /// postcopy-preempt: both (alternating), on or off.
        #[arg(long, value_enum, default_value = "both")]
        preempt: harness::drive::soak::PreemptChoice,
        /// Seed of the random interruption plans (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Guest RAM size per cycle.
        #[arg(long, default_value = "256M", value_parser = parse_size)]
        mem: u64,
        /// Seconds a cycle may take until both sides completed (longer = a stall).
        #[arg(long, default_value_t = 120)]
        cycle_timeout: u64,
        /// Start no new cycle after this many minutes.
        #[arg(long)]
        minutes: Option<u64>,
        /// Where the JSON report goes.
        #[arg(long, default_value = "soak-report.json")]
        json: PathBuf,
    },
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CROSSMIG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    harness::vm::procs::install_signal_cleanup();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = match rt.block_on(run(cli)) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("crossmig: {e:#}");
            2
        }
    };
    drop(rt);
    harness::vm::procs::cleanup_all();
    std::process::exit(code);
}

async fn run(cli: Cli) -> Result<bool> {
    match cli.cmd {
        Cmd::Analyze(a) => harness::analyze::cli::run(&a),
        Cmd::Bench(a) => harness::bench::run_bench(a).await,
        Cmd::Fuzz(a) => harness::fuzz::run::run_cli(&a).await,
        Cmd::Qemu(c) => {
            harness::provision::cli::run_qemu_cmd(c).await?;
            Ok(true)
        }
        Cmd::Defects { only, fast, json, dir, jobs } => {
            let req = harness::defects::cli::DefectsRequest { only, fast, json, dir, jobs };
            harness::defects::cli::run_defects(req).await
        }
        Cmd::Run { files, filter, list, check, json } => {
            run_files(RunRequest { files, filter, list, check, json }).await
        }
        Cmd::Migrate {
            dest,
            mode,
            stopped,
            mem,
            workload,
            postcopy_after,
            qemu,
            machine,
            timeout,
            logs,
            json,
            capabilities,
            recover,
            no_record,
            keep_recording,
        } => {
            let qemu = match qemu {
                Some(p) => QemuBinary::new(p),
                None => QemuBinary::system()?,
            };
            let mut o = MigrateOpts::new(dest, mode, qemu);
            o.stopped = stopped;
            o.mem_bytes = mem;
            o.workload = workload;
            o.postcopy_after_passes = postcopy_after;
            o.machine = machine;
            o.timeout = Duration::from_secs(timeout);
            o.workdir = logs;
            o.extra_caps = capabilities.into_iter().map(|c| (c, true)).collect();
            o.recover_cuts = recover;
            if no_record {
                o.record = false;
            }
            o.keep_recording = keep_recording;
            // A seeded defect named in our environment goes to rust-dest
            // only (every launch drops CROSSMIG_DEFECT otherwise, so no QEMU
            // and no other run inherits it; docs/seeded-defects.md).
            if let Some(d) = std::env::var("CROSSMIG_DEFECT").ok().filter(|d| !d.is_empty()) {
                if dest == DestKind::Rust {
                    o.dest_env.push(("CROSSMIG_DEFECT".into(), d));
                }
            }
            run_one(&o, json.as_deref()).await
        }
        Cmd::Soak { cycles, qemu, preempt, seed, mem, cycle_timeout, minutes, json } => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
            let o = harness::drive::soak::SoakOpts {
                cycles,
                versions: qemu,
                preempt,
                seed,
                mem_bytes: mem,
                cycle_timeout: Duration::from_secs(cycle_timeout),
                time_limit: minutes.map(|m| Duration::from_secs(m * 60)),
                json,
            };
            eprintln!(
                "crossmig soak: {cycles} cycle(s), QEMU {}, preempt {preempt:?}, seed {seed}",
                o.versions.join(",")
            );
            let rep = harness::drive::soak::soak(&o).await?;
            print!("{}", rep.summary());
            eprintln!("report written to {}", o.json.display());
            Ok(rep.clean())
        }
    }
}
