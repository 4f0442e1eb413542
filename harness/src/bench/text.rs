//! The text table printed at the end of a bench run (and embedded in the
//! HTML report): medians, min–max and rust-dest/QEMU ratios per part.

use std::fmt::Write as _;

use super::metrics::{MetricSummary, RunRecord, SideStats};
use super::report::BenchReport;
use crate::vm::dest::DestKind;

/// How a destination is named in the outputs.
pub(super) fn side_label(k: DestKind) -> &'static str {
    match k {
        DestKind::Rust => "rust-dest",
        DestKind::Qemu => "QEMU",
    }
}

/// A number with 3 or 4 significant digits.
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

pub(super) fn fmt_side(s: &SideStats) -> String {
    match (s.median, s.min, s.max) {
        (Some(m), Some(a), Some(b)) if (a - b).abs() > f64::EPSILON => {
            format!("{} ({}–{})", fmt_num(m), fmt_num(a), fmt_num(b))
        }
        (Some(m), _, _) => fmt_num(m),
        _ => "—".into(),
    }
}

pub(super) fn fmt_ratio(m: &MetricSummary) -> String {
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

/// The text table: one section per part, then memcpy, stream, latency and failures.
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
            let better = m.def.better.arrow();
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
