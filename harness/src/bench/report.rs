//! The whole bench report as written to `bench.json` ([`BenchReport`]),
//! and the method notes shown with it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::args::BenchConfig;
use super::memcpy::MemcpyResult;
use super::metrics::{Histogram, MetricSummary, RunRecord};

/// A binary under test: path, build profile, version.
#[derive(Clone, Debug, Serialize)]
pub struct BinaryInfo {
    pub path: String,
    pub profile: String,
    pub version: String,
}

/// Everything `bench.json` holds.
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

/// The method notes: (title, text), shown per part in the HTML.
pub(super) fn notes() -> Vec<(String, String)> {
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
        n("Multifd", "As precopy (stopped fill guest, same bandwidth and downtime settings), with the multifd capability and 4 channels on both sides, multifd-compression none, then zstd (default level); scenario multifd_none / multifd_zstd. The guest RAM is --mem (2 GiB by default, 1 GiB with --quick). CPU and RSS are measured as for precopy; CPU per GiB divides the destination's CPU by the source's ram.transferred. The source's CPU is measured too: on a machine with few cores the source and the destination share them, so (source + destination CPU) / cores is the shortest migration time possible there (cpu_floor_ms); a destination that uses less CPU shortens the migration by half of what it saves on 2 cores. rust-dest receives uncompressed pages straight into guest RAM and decompresses with one zstd stream per channel, QEMU with its recv threads."),
        n("Noise", "Numbers come from one machine where other work may run; the load average at start and end is recorded. Timings use the harness's monotonic clock."),
    ]
}
