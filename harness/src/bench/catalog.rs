//! The metric catalogue: which metrics each part reports, with label, unit
//! and which direction is better.

use super::args::{BenchConfig, Part};
use super::metrics::{Better, MetricDef};

fn def(
    key: &str,
    part: &'static str,
    label: &str,
    unit: &'static str,
    better: Better,
) -> MetricDef {
    MetricDef { key: key.into(), part, label: label.into(), unit, better }
}

/// The metrics of the parts in `cfg` (overhead: per TCP scenario run).
pub(super) fn metric_defs(cfg: &BenchConfig, overhead_scenarios: &[&str]) -> Vec<MetricDef> {
    let mut d = Vec::new();
    if cfg.has(Part::Precopy) {
        d.push(def(
            "precopy.migration_ms",
            "precopy",
            "total migration time (migrate → destination completed)",
            "ms",
            Better::Lower,
        ));
        d.push(def(
            "precopy.throughput_mib_s",
            "precopy",
            "throughput (source ram.transferred / time)",
            "MiB/s",
            Better::Higher,
        ));
        d.push(def(
            "precopy.dest_cpu_s",
            "precopy",
            "destination CPU, user+sys",
            "s",
            Better::Lower,
        ));
        d.push(def(
            "precopy.dest_rss_beyond_mib",
            "precopy",
            "destination peak RSS beyond guest RAM (VmHWM − guest RAM)",
            "MiB",
            Better::Lower,
        ));
        d.push(def(
            "precopy.dest_vmhwm_mib",
            "precopy",
            "destination VmHWM (raw)",
            "MiB",
            Better::Info,
        ));
        d.push(def(
            "precopy.dest_anon_file_peak_mib",
            "precopy",
            "destination peak RssAnon+RssFile (sampled)",
            "MiB",
            Better::Lower,
        ));
    }
    if cfg.has(Part::Postcopy) {
        for pc in super::postcopy::selected(cfg.postcopy_matrix) {
            d.extend(pc.metric_defs());
        }
    }
    if cfg.has(Part::Multifd) {
        for (sc, comp) in super::MULTIFD_SCENARIOS {
            let k = |x: &str| format!("{sc}.{x}");
            let ch = super::run::MULTIFD_CHANNELS;
            d.push(def(
                &k("migration_ms"),
                "multifd",
                &format!("{ch} channels, {comp}: total migration time"),
                "ms",
                Better::Lower,
            ));
            d.push(def(
                &k("throughput_mib_s"),
                "multifd",
                &format!("{ch} channels, {comp}: throughput (source ram.transferred / time)"),
                "MiB/s",
                Better::Higher,
            ));
            d.push(def(
                &k("dest_cpu_s"),
                "multifd",
                &format!("{ch} channels, {comp}: destination CPU, user+sys"),
                "s",
                Better::Lower,
            ));
            d.push(def(
                &k("dest_cpu_s_per_gib"),
                "multifd",
                &format!("{ch} channels, {comp}: destination CPU per GiB transferred"),
                "s/GiB",
                Better::Lower,
            ));
            d.push(def(
                &k("src_cpu_s"),
                "multifd",
                &format!("{ch} channels, {comp}: source CPU, user+sys"),
                "s",
                Better::Info,
            ));
            d.push(def(
                &k("cpu_floor_ms"),
                "multifd",
                &format!("{ch} channels, {comp}: (source + destination CPU) / cores"),
                "ms",
                Better::Info,
            ));
            d.push(def(
                &k("dest_rss_beyond_mib"),
                "multifd",
                &format!("{ch} channels, {comp}: destination peak RSS beyond guest RAM"),
                "MiB",
                Better::Lower,
            ));
        }
    }
    if cfg.has(Part::Ingest) {
        d.push(def(
            "ingest.gb_s",
            "ingest",
            "ingest rate: stream bytes / ((spawn → completed) − start-up)",
            "GB/s",
            Better::Higher,
        ));
        d.push(def(
            "ingest.ingest_ms",
            "ingest",
            "ingest time ((spawn → completed) − start-up)",
            "ms",
            Better::Lower,
        ));
        d.push(def(
            "ingest.e2e_ms",
            "ingest",
            "spawn with -incoming file: → completed",
            "ms",
            Better::Lower,
        ));
        d.push(def(
            "ingest.startup_ms",
            "ingest",
            "start-up (spawn → QMP ready, -incoming defer)",
            "ms",
            Better::Lower,
        ));
        d.push(def(
            "ingest.gb_s_qmp",
            "ingest",
            "ingest rate, cross-check: migrate-incoming → completed",
            "GB/s",
            Better::Higher,
        ));
        d.push(def(
            "ingest.memcpy_fraction",
            "ingest",
            "ingest rate / warm memcpy rate",
            "×",
            Better::Higher,
        ));
        d.push(def(
            "ingest.dest_cpu_s",
            "ingest",
            "destination CPU, user+sys (QMP-triggered ingest)",
            "s",
            Better::Lower,
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
                Better::Info,
            ));
            d.push(def(
                &k("guest_boot_ms"),
                "overhead",
                &format!("{sc}: guest boot until serial marker"),
                "ms",
                Better::Info,
            ));
            d.push(def(
                &k("dest_start_ms"),
                "overhead",
                &format!("{sc}: destination start-up + QMP handshake"),
                "ms",
                Better::Lower,
            ));
            d.push(def(
                &k("setup_ms"),
                "overhead",
                &format!("{sc}: capabilities, parameters, migrate-incoming"),
                "ms",
                Better::Info,
            ));
            d.push(def(
                &k("to_migration_ms"),
                "overhead",
                &format!("{sc}: scenario start → migrate"),
                "ms",
                Better::Info,
            ));
            d.push(def(
                &k("teardown_ms"),
                "overhead",
                &format!("{sc}: teardown (quit both)"),
                "ms",
                Better::Info,
            ));
            d.push(def(
                &k("total_ms"),
                "overhead",
                &format!("{sc}: scenario total"),
                "ms",
                Better::Info,
            ));
        }
    }
    d
}
