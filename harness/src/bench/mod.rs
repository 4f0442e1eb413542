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
//!
//! Layout: `args` (command line) → `run` / `ingest` / `memcpy`
//! (the measurements, on `ctx`, `poller`, `probe`, `trace`, `host`)
//! → `metrics` (the data model) and `catalog` (which metrics exist) →
//! `report` → `text`, `svg`, `html` (the outputs). This file only
//! orchestrates.

mod args;
mod catalog;
mod ctx;
mod host;
mod html;
mod ingest;
mod memcpy;
mod metrics;
mod poller;
mod postcopy;
mod probe;
mod report;
mod run;
mod svg;
mod text;
mod trace;

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use serde_json::json;

use crate::images::Workload;
use crate::vm::dest::{rust_dest_binary, DestKind};

pub use args::{parse_args, BenchArgs, BenchConfig, Part};
pub use host::{proc_cpu_seconds, proc_mem, ProcMem};
pub use html::render_html;
pub use memcpy::{measure_memcpy, MemcpyResult};
pub use metrics::{
    histogram, median, percentiles, Better, Histogram, MetricDef, MetricSummary, Percentiles,
    RunRecord, Sample, SideStats,
};
pub use report::{BenchReport, BinaryInfo};
pub use svg::{svg_hbars, svg_histogram, svg_lines, svg_stacked, Series};
pub use text::{fmt_num, render_table};
pub use trace::{parse_qemu_fault_trace, parse_rust_fault_trace};

use catalog::metric_defs;
use ctx::Ctx;
use host::{build_profile, host_info, loadavg};
use ingest::{record_stream, run_ingest};
use metrics::summarize;
use report::notes;
use run::{run_tcp, TcpScenario};

/// The multifd part's scenarios: name (metric prefix), compression.
const MULTIFD_SCENARIOS: [(&str, &str); 2] = [("multifd_none", "none"), ("multifd_zstd", "zstd")];
use text::side_label;

/// Run the benchmark; prints the table, writes OUT/bench.json and
/// OUT/bench.html. Returns whether every run succeeded.
pub async fn run_bench(args: BenchArgs) -> Result<bool> {
    let cfg = BenchConfig::from_args(&args)?;
    let started = Instant::now();
    let mut host = host_info();
    let started_unix =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let qemu = crate::scenario::qemu::resolve_qemu(args.qemu.as_deref())?;
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
        let head = format!("{} rep {} {:<9}", r.scenario, r.rep + 1, side_label(r.side));
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
        tcp.push(TcpScenario::precopy("precopy", Workload::Fill, cfg.mem_bytes));
    }
    if cfg.has(Part::Postcopy) {
        for pc in postcopy::selected(cfg.postcopy_matrix) {
            if let Some(hp) = pc.hugepages {
                let pages = 2 * cfg.postcopy_mem_bytes / hp;
                if let Some(why) = crate::vm::hugepages::unavailable(hp, pages) {
                    eprintln!("bench: skipping {}: {why}", pc.name);
                    continue;
                }
            }
            tcp.push(TcpScenario {
                postcopy: true,
                preempt: pc.preempt,
                capped: pc.capped,
                hugepages: pc.hugepages,
                ..TcpScenario::precopy(pc.name, pc.workload, cfg.postcopy_mem_bytes)
            });
        }
    }
    if cfg.has(Part::Multifd) {
        // A stopped fill guest of --mem, like precopy (2 GiB by default, as
        // issue 11 asks; 1 GiB with --quick).
        for (name, comp) in MULTIFD_SCENARIOS {
            tcp.push(TcpScenario {
                multifd: Some(comp),
                ..TcpScenario::precopy(name, Workload::Fill, cfg.mem_bytes)
            });
        }
    }
    if cfg.has(Part::Overhead) && tcp.is_empty() {
        // Overhead alone: a minimal scenario (stopped sweep guest, precopy).
        tcp.push(TcpScenario::precopy("minimal", Workload::Sweep, cfg.mem_bytes));
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
        // One histogram per scenario and side: never two patterns together.
        for pc in postcopy::selected(cfg.postcopy_matrix) {
            for side in sides {
                let all: Vec<u64> = runs
                    .iter()
                    .filter(|r| r.scenario == pc.name && r.side == side)
                    .flat_map(|r| r.latencies_us.iter().copied())
                    .collect();
                hists.insert(format!("{}/{}", pc.name, side.name()), histogram(&all));
            }
        }
    }
    // Another process competing for the CPU makes timings meaningless.
    let competed: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            let f = r.details.get("foreign_cpu_s")?.as_f64()?;
            let wall = r.details.get("measured_wall_s")?.as_f64()?;
            (f > 0.1 * wall.max(0.1)).then(|| {
                format!(
                    "{} rep {} {} ({f:.2} s in {wall:.2} s)",
                    r.scenario,
                    r.rep + 1,
                    r.side.name()
                )
            })
        })
        .collect();
    if !competed.is_empty() {
        warnings.push(format!(
            "other processes used the CPU during {} run(s) (more than 10% of a core): {}; their figures are not trustworthy",
            competed.len(),
            competed.join(", ")
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_future_is_send() {
        fn send<T: Send>(_: &T) {}
        let f = run_bench(parse_args(["--quick"]).unwrap());
        send(&f);
    }
}
