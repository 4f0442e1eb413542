//! Smoke check of `crossmig bench`: a short run of all five parts at a small
//! guest size; asserts the JSON and HTML reports exist and carry every metric
//! for both destinations. No thresholds on timings.
//!
//! `CROSSMIG_BENCH_ARGS="--quick --out DIR"` runs a real bench instead (the
//! same checks apply; with `--out` the reports are kept).

use std::path::Path;

use harness::bench::{parse_args, run_bench};
use serde_json::Value;

/// Metrics every full run must report for both destinations.
const REQUIRED: &[&str] = &[
    "precopy.migration_ms",
    "precopy.throughput_mib_s",
    "precopy.dest_cpu_s",
    "precopy.dest_rss_beyond_mib",
    "postcopy_sweep.fault_p50_us",
    "postcopy_sweep.fault_p99_us",
    "postcopy_sweep.fault_max_us",
    "postcopy_sweep.pages_per_s",
    "postcopy_sweep.postcopy_ms",
    "postcopy_random.fault_p50_us",
    "postcopy_random.pages_per_s",
    "postcopy_random.postcopy_ms",
    "ingest.gb_s",
    "ingest.startup_ms",
    "ingest.e2e_ms",
    "overhead.precopy.to_migration_ms",
    "overhead.precopy.guest_boot_ms",
    "overhead.precopy.total_ms",
    "overhead.postcopy_sweep.total_ms",
    "overhead.postcopy_random.total_ms",
    "multifd_none.migration_ms",
    "multifd_none.dest_cpu_s",
    "multifd_none.dest_rss_beyond_mib",
    "multifd_zstd.migration_ms",
    "multifd_zstd.dest_cpu_s",
    "multifd_zstd.dest_rss_beyond_mib",
];

fn leftovers(pid: u32) -> Vec<String> {
    let tag = format!("-{pid}-");
    let mut out = Vec::new();
    for dir in [Path::new("/dev/shm").to_path_buf(), std::env::temp_dir()] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.contains(&tag) {
                    out.push(e.path().display().to_string());
                }
            }
        }
    }
    out
}

fn metrics_of<'a>(j: &'a Value, key: &str) -> &'a Value {
    j["metrics"].as_array().unwrap().iter().find(|m| m["key"] == key).unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_quick_smoke() {
    if let Err(e) = harness::vm::qemu::QemuBinary::system() {
        panic!("real QEMU is required for this test (install it with ci/install.sh): {e:#}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut argv: Vec<String> = match std::env::var("CROSSMIG_BENCH_ARGS") {
        Ok(s) if !s.trim().is_empty() => s.split_whitespace().map(String::from).collect(),
        _ => "--quick --mem 256M --postcopy-mem 128M --reps 1"
            .split_whitespace()
            .map(String::from)
            .collect(),
    };
    if !argv.iter().any(|a| a == "--out" || a.starts_with("--out=")) {
        argv.push("--out".into());
        argv.push(tmp.path().display().to_string());
    }
    let args = parse_args(&argv).expect("bench arguments");
    let out = args.out.clone();
    let t = std::time::Instant::now();
    let ok = run_bench(args).await.expect("bench run");
    eprintln!("bench took {:.1} s", t.elapsed().as_secs_f64());

    let json_path = out.join("bench.json");
    let html_path = out.join("bench.html");
    assert!(json_path.is_file(), "{} missing", json_path.display());
    assert!(html_path.is_file(), "{} missing", html_path.display());
    let j: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let html = std::fs::read_to_string(&html_path).unwrap();
    let failed: Vec<String> = j["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["ok"] != Value::Bool(true))
        .map(|r| {
            format!(
                "{} {} {}: {}",
                r["scenario"],
                r["side"],
                r["rep"],
                r["error"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert!(ok && failed.is_empty(), "bench runs failed:\n{}", failed.join("\n\n"));

    let parts: Vec<&str> =
        j["config"]["parts"].as_array().unwrap().iter().filter_map(|p| p.as_str()).collect();
    let wanted = |key: &str| {
        let mut it = key.split('.');
        // The multifd part's scenarios are multifd_<compression>.
        let first = it.next().unwrap().split('_').next().unwrap();
        // overhead.<scenario>.<phase> needs both the overhead part and the scenario.
        let scenario_part = |s: &str| s.split('_').next().unwrap().to_string();
        parts.contains(&first)
            && (first != "overhead" || parts.contains(&scenario_part(it.next().unwrap()).as_str()))
    };
    let metrics = j["metrics"].as_array().unwrap();
    for key in REQUIRED.iter().filter(|k| wanted(k)) {
        let m = metrics
            .iter()
            .find(|m| m["key"] == *key)
            .unwrap_or_else(|| panic!("metric {key} missing from bench.json"));
        for side in ["rust", "qemu"] {
            assert!(m[side]["median"].is_number(), "metric {key} has no value for {side}: {m}");
        }
        assert!(m["ratio_median"].is_number(), "metric {key} has no rust/QEMU ratio: {m}");
        assert!(html.contains(key), "bench.html lacks metric {key}");
    }
    // Histograms and plots for both destinations; memcpy reference.
    if parts.contains(&"postcopy") {
        // One histogram per scenario and side (never two patterns in one).
        for sc in ["postcopy_sweep", "postcopy_random"] {
            for side in ["rust", "qemu"] {
                let h = &j["latency_histograms"][format!("{sc}/{side}")];
                assert!(
                    h["total"].as_u64().unwrap_or(0) > 0,
                    "no per-fault latencies for {sc} {side}: {h}"
                );
                assert!(
                    html.contains(&format!("id=\"hist-{sc}-{side}\"")),
                    "no histogram for {sc} {side} in bench.html"
                );
            }
        }
        // rust-dest breaks its faults into stages.
        let stages = metrics_of(&j, "postcopy_random.stage_own_p50_us");
        assert!(stages["rust"]["median"].is_number(), "no fault stages from rust-dest: {stages}");
    }
    for (part, id) in [
        ("precopy", "tput-precopy"),
        ("postcopy", "tput-postcopy"),
        ("ingest", "ingest-bars"),
        ("overhead", "overhead-bars"),
        ("multifd", "tput-multifd"),
    ] {
        if parts.contains(&part) {
            assert!(html.contains(&format!("<svg id=\"{id}\"")), "bench.html lacks plot {id}");
        }
    }
    if parts.contains(&"ingest") {
        assert!(j["memcpy"]["warm_gb_s"].as_f64().unwrap() > 0.0);
    }
    assert!(j["rust_dest"]["path"].as_str().is_some_and(|p| !p.is_empty()));
    assert!(!html.contains("<script"), "the report must not need scripts");

    // Clean-up: no processes, RAM files or sockets left behind.
    assert!(
        harness::vm::procs::registered_pgids().is_empty(),
        "processes left: {:?}",
        harness::vm::procs::registered_pgids()
    );
    assert!(
        harness::vm::procs::registered_paths().is_empty(),
        "paths left: {:?}",
        harness::vm::procs::registered_paths()
    );
    let left = leftovers(std::process::id());
    assert!(left.is_empty(), "files left behind: {left:?}");
}
