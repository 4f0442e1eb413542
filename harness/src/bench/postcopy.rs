//! The postcopy part's scenarios and figures.
//!
//! Like for like: each scenario names one guest workload (sequential sweep
//! or random order), QEMU's destination runs that migrated guest and
//! rust-dest's simulated vCPUs reproduce the same order over the same range
//! (`Workload::rust_vcpu_args`), so every ratio compares one access
//! pattern on both destinations. Variants: postcopy-preempt on or off,
//! postcopy bandwidth capped ([`POSTCOPY_CAP`]) or not, guest RAM on 2 MiB
//! huge pages (hugetlbfs, both sides) or not.
//!
//! Figures per run: fault latency p50/p99/max (rust-dest: fault read →
//! placed; QEMU: its trace points, page request queued → placed), the
//! figures QEMU 10.1+ reports itself with `postcopy-blocktime` (blocktime,
//! average remote-fault latency and its log2 distribution; rust-dest
//! reports the same fields with the same definitions), and rust-dest's
//! per-stage breakdown of a fault (`x-crossmig.fault-stages-us`).

use serde_json::Value;

use super::metrics::{Better, MetricDef, RunRecord};
use crate::images::Workload;

/// `max-postcopy-bandwidth` of the capped variants (bytes/s): the headline
/// job's 64 MiB/s.
pub(super) const POSTCOPY_CAP: u64 = 64 << 20;

/// One postcopy scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PostcopyScenario {
    pub(super) name: &'static str,
    pub(super) workload: Workload,
    pub(super) preempt: bool,
    pub(super) capped: bool,
    /// Guest RAM on hugetlbfs with pages of this size, on both sides.
    pub(super) hugepages: Option<u64>,
}

const fn pc(name: &'static str, w: Workload, preempt: bool, capped: bool) -> PostcopyScenario {
    PostcopyScenario { name, workload: w, preempt, capped, hugepages: None }
}

/// A scenario on 2 MiB huge pages (uncapped).
const fn huge(name: &'static str, w: Workload, preempt: bool) -> PostcopyScenario {
    PostcopyScenario { name, workload: w, preempt, capped: false, hugepages: Some(2 << 20) }
}

/// Every postcopy scenario; the first two run by default, all of them with
/// `--postcopy-matrix`.
pub(super) const ALL: [PostcopyScenario; 10] = [
    pc("postcopy_sweep", Workload::Sweep, false, false),
    pc("postcopy_random", Workload::Random, false, false),
    pc("postcopy_sweep_preempt", Workload::Sweep, true, false),
    pc("postcopy_random_preempt", Workload::Random, true, false),
    pc("postcopy_sweep_capped", Workload::Sweep, false, true),
    pc("postcopy_random_capped", Workload::Random, false, true),
    pc("postcopy_sweep_preempt_capped", Workload::Sweep, true, true),
    pc("postcopy_random_preempt_capped", Workload::Random, true, true),
    huge("postcopy_random_huge2m", Workload::Random, false),
    huge("postcopy_random_preempt_huge2m", Workload::Random, true),
];

/// The scenarios a run measures.
pub(super) fn selected(matrix: bool) -> &'static [PostcopyScenario] {
    if matrix {
        &ALL
    } else {
        &ALL[..2]
    }
}

impl PostcopyScenario {
    /// e.g. "random order, preempt, capped 64 MiB/s".
    pub(super) fn describe(&self) -> String {
        let order = match self.workload {
            Workload::Sweep => "address order",
            Workload::Random => "random order",
            Workload::Fill => "fill",
        };
        let mut s = order.to_string();
        s += if self.preempt { ", preempt" } else { ", no preempt" };
        if self.capped {
            s += &format!(", capped {} MiB/s", POSTCOPY_CAP >> 20);
        }
        if let Some(hp) = self.hugepages {
            s += &format!(", {} huge pages", crate::vm::hugepages::size_name(hp));
        }
        s
    }

    /// The metrics of this scenario.
    pub(super) fn metric_defs(&self) -> Vec<MetricDef> {
        let d = self.describe();
        let def = |k: &str, label: &str, unit: &'static str, better: Better| MetricDef {
            key: format!("{}.{k}", self.name),
            part: "postcopy",
            label: format!("{d}: {label}"),
            unit,
            better,
        };
        vec![
            def("fault_p50_us", "fault latency p50 (see notes)", "µs", Better::Lower),
            def("fault_p99_us", "fault latency p99", "µs", Better::Lower),
            def("fault_max_us", "fault latency max", "µs", Better::Lower),
            def("faults", "faults measured", "", Better::Info),
            def(
                "latency_avg_us",
                "postcopy-latency (own report, remote faults)",
                "µs",
                Better::Lower,
            ),
            def(
                "latency_dist_p50_us",
                "postcopy-latency-dist p50 (bucket floor)",
                "µs",
                Better::Lower,
            ),
            def(
                "latency_dist_p99_us",
                "postcopy-latency-dist p99 (bucket floor)",
                "µs",
                Better::Lower,
            ),
            def("blocktime_ms", "postcopy-blocktime (all vCPUs blocked)", "ms", Better::Lower),
            def(
                "stage_read_to_request_p50_us",
                "rust-dest stage: fault read → request written, p50",
                "µs",
                Better::Info,
            ),
            def(
                "stage_read_to_request_p99_us",
                "rust-dest stage: fault read → request written, p99",
                "µs",
                Better::Info,
            ),
            def(
                "stage_request_to_received_p50_us",
                "rust-dest stage: request → page received (network + source), p50",
                "µs",
                Better::Info,
            ),
            def(
                "stage_received_to_placed_p50_us",
                "rust-dest stage: received → placed, p50",
                "µs",
                Better::Info,
            ),
            def(
                "stage_placed_to_woken_p50_us",
                "rust-dest stage: placed → vCPU woken, p50",
                "µs",
                Better::Info,
            ),
            def(
                "stage_own_p50_us",
                "rust-dest's own share per fault (read → request + received → woken), p50",
                "µs",
                Better::Info,
            ),
            def("stage_own_p99_us", "rust-dest's own share per fault, p99", "µs", Better::Info),
            def(
                "stage_own_runq_p50_us",
                "of the own share: waiting for a CPU (run queue), p50",
                "µs",
                Better::Info,
            ),
            def(
                "stage_own_runq_p99_us",
                "of the own share: waiting for a CPU (run queue), p99",
                "µs",
                Better::Info,
            ),
            def(
                "stage_own_excl_runq_p50_us",
                "rust-dest's own share without run-queue wait, p50",
                "µs",
                Better::Info,
            ),
            def(
                "stage_own_excl_runq_p99_us",
                "rust-dest's own share without run-queue wait, p99",
                "µs",
                Better::Info,
            ),
            def("stage_total_p50_us", "fault read → vCPU woken, p50", "µs", Better::Info),
            def("stage_total_p99_us", "fault read → vCPU woken, p99", "µs", Better::Info),
            def(
                "pages_per_s",
                "pages placed per second (postcopy phase)",
                "pages/s",
                Better::Higher,
            ),
            def("postcopy_ms", "postcopy-active → destination completed", "ms", Better::Lower),
            def("migration_ms", "migrate → destination completed", "ms", Better::Lower),
            def(
                "dest_cpu_s",
                "destination CPU, user+sys (incl. its guest/vCPUs)",
                "s",
                Better::Info,
            ),
        ]
    }
}

/// Lower bound (µs) of the bucket holding percentile `p` of a QEMU-style
/// log2 latency distribution (bucket N = [2^N µs, 2^(N+1) µs)).
pub(super) fn dist_percentile_us(dist: &[u64], p: u64) -> Option<f64> {
    let n: u64 = dist.iter().sum();
    if n == 0 {
        return None;
    }
    let rank = (p * n).div_ceil(100).max(1);
    let mut seen = 0;
    for (i, c) in dist.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(if i == 0 { 0.0 } else { (1u64 << i) as f64 });
        }
    }
    None
}

/// Record the destination's own postcopy figures from its final
/// `query-migrate` (`dv`): QEMU 10.1+ fields on either side, rust-dest's
/// stage breakdown on rust-dest.
pub(super) fn record_own_figures(rec: &mut RunRecord, p: &str, dv: &Value) {
    if let Some(bt) = dv.get("postcopy-blocktime").and_then(Value::as_f64) {
        rec.set(&format!("{p}.blocktime_ms"), bt);
    }
    if let Some(ns) = dv.get("postcopy-latency").and_then(Value::as_f64) {
        rec.set(&format!("{p}.latency_avg_us"), ns / 1000.0);
    }
    if let Some(d) = dv.get("postcopy-latency-dist").and_then(Value::as_array) {
        let dist: Vec<u64> = d.iter().filter_map(Value::as_u64).collect();
        rec.set(&format!("{p}.remote_faults"), dist.iter().sum::<u64>() as f64);
        for (k, q) in [("latency_dist_p50_us", 50), ("latency_dist_p99_us", 99)] {
            if let Some(v) = dist_percentile_us(&dist, q) {
                rec.set(&format!("{p}.{k}"), v);
            }
        }
    }
    for k in [
        "postcopy-blocktime",
        "postcopy-vcpu-blocktime",
        "postcopy-latency",
        "postcopy-latency-dist",
        "postcopy-vcpu-latency",
        "postcopy-non-vcpu-latency",
    ] {
        rec.detail(&k.replace('-', "_"), dv.get(k).cloned().unwrap_or(Value::Null));
    }
    let st = &dv["x-crossmig"]["fault-stages-us"];
    if st.is_object() {
        rec.detail("fault_stages_us", st.clone());
        for (stage, pct) in [
            ("read-to-request", "p50"),
            ("read-to-request", "p99"),
            ("request-to-received", "p50"),
            ("received-to-placed", "p50"),
            ("placed-to-woken", "p50"),
            ("own", "p50"),
            ("own", "p99"),
            ("own-runq", "p50"),
            ("own-runq", "p99"),
            ("own-excl-runq", "p50"),
            ("own-excl-runq", "p99"),
            ("total", "p50"),
            ("total", "p99"),
        ] {
            if st[stage]["count"].as_u64().unwrap_or(0) == 0 {
                continue;
            }
            if let Some(v) = st[stage][pct].as_f64() {
                rec.set(&format!("{p}.stage_{}_{pct}_us", stage.replace('-', "_")), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::dest::DestKind;
    use serde_json::json;

    #[test]
    fn scenarios_never_mix_patterns() {
        assert_eq!(selected(false).len(), 2);
        assert_eq!(selected(true).len(), 10);
        let mut names: Vec<_> = ALL.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 10);
        assert_eq!(ALL[9].describe(), "random order, preempt, 2M huge pages");
        for s in ALL {
            let w = if s.name.contains("random") { Workload::Random } else { Workload::Sweep };
            assert_eq!(s.workload, w, "{}", s.name);
            assert_eq!(s.preempt, s.name.contains("preempt"));
            assert_eq!(s.capped, s.name.contains("capped"));
            assert!(s.metric_defs().iter().all(|d| d.key.starts_with(s.name)));
        }
    }

    #[test]
    fn dist_percentiles() {
        assert_eq!(dist_percentile_us(&[], 50), None);
        assert_eq!(dist_percentile_us(&[0, 0, 0], 50), None);
        // 10 faults in [0,2) µs, 90 in [64,128) µs.
        let mut d = vec![0u64; 24];
        d[0] = 10;
        d[6] = 90;
        assert_eq!(dist_percentile_us(&d, 5), Some(0.0));
        assert_eq!(dist_percentile_us(&d, 50), Some(64.0));
        assert_eq!(dist_percentile_us(&d, 99), Some(64.0));
    }

    #[test]
    fn own_figures_from_query_migrate() {
        let mut r = RunRecord::new("postcopy_random", DestKind::Rust, 0);
        let mut dist = vec![0u64; 24];
        dist[5] = 3;
        let dv = json!({
            "postcopy-blocktime": 12,
            "postcopy-latency": 45_000,
            "postcopy-latency-dist": dist,
            "x-crossmig": {"fault-stages-us": {
                "count": 3,
                "read-to-request": {"count": 3, "p50": 4, "p99": 9, "max": 9},
                "own": {"count": 3, "p50": 7, "p99": 20, "max": 20},
                "own-excl-runq": {"count": 3, "p50": 5, "p99": 8, "max": 8},
                "total": {"count": 0, "p50": 0, "p99": 0, "max": 0},
            }},
        });
        record_own_figures(&mut r, "postcopy_random", &dv);
        assert_eq!(r.metrics["postcopy_random.blocktime_ms"], 12.0);
        assert_eq!(r.metrics["postcopy_random.latency_avg_us"], 45.0);
        assert_eq!(r.metrics["postcopy_random.latency_dist_p50_us"], 32.0);
        assert_eq!(r.metrics["postcopy_random.stage_read_to_request_p99_us"], 9.0);
        assert_eq!(r.metrics["postcopy_random.stage_own_p50_us"], 7.0);
        assert_eq!(r.metrics["postcopy_random.stage_own_excl_runq_p99_us"], 8.0);
        assert!(!r.metrics.contains_key("postcopy_random.stage_total_p50_us"));
    }
}
