//! The bench data model: samples and run records, percentiles, medians,
//! min–max, rust-dest/QEMU ratios per metric, latency histograms.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use crate::qmp::MigrationStatus;
use crate::vm::dest::DestKind;

/// One `query-migrate` sample of a TCP migration.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Seconds since `migrate`.
    pub t: f64,
    pub src_status: MigrationStatus,
    pub dst_status: MigrationStatus,
    /// Source `ram.transferred`.
    pub src_transferred: u64,
    /// Source `ram.normal + ram.duplicate`.
    pub src_pages: u64,
}

/// One run of one side.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    pub scenario: String,
    /// Serialized as `"rust"` or `"qemu"`.
    #[serde(serialize_with = "dest_name")]
    pub side: DestKind,
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
    pub(super) fn new(scenario: &str, side: DestKind, rep: u32) -> RunRecord {
        RunRecord {
            scenario: scenario.into(),
            side,
            rep,
            ok: true,
            error: None,
            metrics: BTreeMap::new(),
            samples: Vec::new(),
            details: json!({}),
            latencies_us: Vec::new(),
        }
    }
    pub(super) fn set(&mut self, k: &str, v: f64) {
        if v.is_finite() {
            self.metrics.insert(k.into(), v);
        }
    }
    pub(super) fn detail(&mut self, k: &str, v: Value) {
        self.details[k] = v;
    }
}

fn dest_name<S: serde::Serializer>(d: &DestKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.name())
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

/// Which direction of a metric is better (`lower`, `higher`), or `info`
/// (shown, not judged).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Lower,
    Higher,
    Info,
}

impl Better {
    /// The arrow shown after a metric's label.
    pub fn arrow(self) -> &'static str {
        match self {
            Better::Lower => " ↓",
            Better::Higher => " ↑",
            Better::Info => "",
        }
    }
}

/// One metric: its key in [`RunRecord::metrics`], part, label and unit.
#[derive(Clone, Debug, Serialize)]
pub struct MetricDef {
    pub key: String,
    pub part: &'static str,
    pub label: String,
    pub unit: &'static str,
    pub better: Better,
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

pub(super) fn summarize(defs: &[MetricDef], runs: &[RunRecord], reps: u32) -> Vec<MetricSummary> {
    defs.iter()
        .map(|d| {
            let per_side = |side: DestKind| -> Vec<Option<f64>> {
                (0..reps)
                    .map(|r| {
                        runs.iter()
                            .filter(|x| x.side == side && x.rep == r && x.ok)
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
    fn json_spellings_unchanged() {
        let mut r = RunRecord::new("precopy", DestKind::Rust, 0);
        r.samples.push(Sample {
            t: 0.0,
            src_status: MigrationStatus::PostcopyActive,
            dst_status: MigrationStatus::None,
            src_transferred: 0,
            src_pages: 0,
        });
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["side"], "rust");
        assert_eq!(v["samples"][0]["src_status"], "postcopy-active");
        assert_eq!(v["samples"][0]["dst_status"], "none");
        let d = MetricDef {
            key: "k".into(),
            part: "precopy",
            label: "l".into(),
            unit: "ms",
            better: Better::Lower,
        };
        assert_eq!(serde_json::to_value(&d).unwrap()["better"], "lower");
    }
}
