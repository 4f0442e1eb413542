//! The self-contained `bench.html`: the tables, inline SVG charts and
//! method notes per part.

use std::fmt::Write as _;

use super::args::Part;
use super::metrics::RunRecord;
use super::report::BenchReport;
use super::svg::{
    esc, svg_hbars, svg_histogram, svg_lines, svg_stacked, Series, QEMU_COLOR, RUST_COLOR,
};
use super::text::{fmt_ratio, fmt_side, side_label};
use crate::vm::dest::DestKind;

const MIB: u64 = 1 << 20;

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
            let rust = r.side == DestKind::Rust;
            Series {
                label: format!("{} rep {}", side_label(r.side), r.rep + 1),
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
        let arrow = m.def.better.arrow();
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

/// The whole `bench.html` (`table` is the text summary, embedded as is).
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
        for (key, hist) in &r.latency_histograms {
            let (scenario, side) = key.split_once('/').unwrap_or((key.as_str(), ""));
            let (color, label) =
                if side == "rust" { (RUST_COLOR, "rust-dest") } else { (QEMU_COLOR, "QEMU") };
            h += &svg_histogram(
                &format!("hist-{}", key.replace('/', "-")),
                &format!("Postcopy fault latency, {scenario}: {label}"),
                hist,
                color,
            );
        }
        let runs: Vec<&RunRecord> =
            r.runs.iter().filter(|x| x.scenario.starts_with("postcopy") && x.ok).collect();
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
                (format!("{} rep {} {}", x.scenario, x.rep + 1, side_label(x.side)), vals)
            })
            .collect();
        h += &svg_stacked("overhead-bars", "Where a scenario's wall time goes", &rows, &phases);
        h += &note("Overhead");
    }
    if c.has(Part::Multifd) {
        let _ = write!(h, "<h2>5. Multifd precopy</h2>{}", html_metric_rows(r, "multifd"));
        let runs: Vec<&RunRecord> =
            r.runs.iter().filter(|x| x.scenario.starts_with("multifd") && x.ok).collect();
        h += &svg_lines(
            "tput-multifd",
            "Multifd: throughput over time (source ram.transferred, 50 ms samples)",
            "seconds since migrate",
            "MiB/s",
            &throughput_series(&runs),
        );
        h += &note("Multifd");
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
            side_label(x.side),
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
