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
        n("Postcopy", "Like for like: each postcopy scenario names one guest workload and both destinations fault in its order. Source: the sweep guest (address order over [1 MiB, 100 MiB)) or the random guest (every page of low RAM once per pass in a fixed pseudo-random order; images/README.md), live, waiting for its first B; postcopy-ram on both sides (postcopy-preempt too in the _preempt scenarios), postcopy-blocktime on the destination, `migrate-start-postcopy` right after `migrate`, max-postcopy-bandwidth unlimited (64 MiB/s in the _capped scenarios). Both destinations get `cont` before migrate-incoming and run from POSTCOPY_RUN on. QEMU's destination runs the migrated guest; rust-dest's simulated vCPU walks the same pages in the same order (--vcpu-pattern sweep|random with --vcpu-range of the guest's range, --vcpu-rate 0). A ratio never mixes two patterns. Remaining difference: between faults the TCG guest touches a present page in about 2.5 µs, rust-dest's vCPU in nanoseconds, so rust-dest reaches its next fault sooner."),
        n("Fault latency", "rust-dest: its own measurement (x-crossmig fault-latency-us in query-migrate: from reading the fault off userfaultfd to placing the page). QEMU 10.0 has no per-fault statistic, so its latency comes from its trace points postcopy_page_req_add (fault thread queues the page request) → postcopy_page_req_del (that page placed), with -msg timestamp=on (µs). QEMU 10.1+ also reports postcopy-latency (average remote-fault latency, ns) and postcopy-latency-dist (log2 µs buckets) itself; rust-dest reports the same fields with the same definitions (remote faults: those that needed a page request; fault read → faulting vCPU woken), shown as latency_avg_us and latency_dist_p50/p99_us (bucket floors). Histograms per scenario and side; tracing is on for both destinations in the postcopy runs only."),
        n("Fault stages", "rust-dest timestamps each remote fault: uffd event read → page request written → page bytes handed to placement → UFFDIO_COPY returned → faulting vCPU's access returned (x-crossmig fault-stages-us: p50/p99/max per stage). Its own share is (read → request) + (received → woken); request → received is the network and the source. With --sched-stats (the bench passes it) each thread also reads its run-queue wait (/proc/thread-self/schedstat) before and after its timed interval: 'waiting for a CPU' is the part of the own share the fault thread or the woken vCPU spent runnable but not running, and 'without run-queue wait' is what rust-dest's code and system calls cost."),
        n("postcopy-blocktime", "QEMU's definition on both destinations: the time (ms) during which every vCPU was blocked on a missing page at once. rust-dest's simulated vCPUs report each wait (from noticing the page is missing to their access returning); with one vCPU this equals its per-vCPU blocktime (postcopy-vcpu-blocktime, in the run details)."),
        n("Pages placed per second", "Pages the source sent during postcopy (source ram.normal + ram.duplicate at completion minus at the switch) / postcopy time. Postcopy time: source MIGRATION 'postcopy-active' event → destination 'completed' event."),
        n("Ingest", "The stream is recorded once from a real QEMU source: fill guest, stopped, max-bandwidth raised to 100 GB/s, `migrate file:PATH` (no mapped-ram), kept on disk and read once so it sits in the page cache. Each destination then loads it twice: (a) started with -incoming defer: start-up = spawn → QMP handshake done; then migrate-incoming file:PATH → query-migrate 'completed' (2 ms polling) is the cross-check rate; (b) started with -incoming file:PATH: spawn → 'completed'. Ingest time = (b) − start-up; GB/s = stream file bytes / ingest time (GB = 10^9 B). No network and no return path."),
        n("memcpy", "The machine's single-thread memcpy (std::ptr::copy_nonoverlapping) over a 1 GiB buffer: 'warm' = both buffers resident (median of 4 copies), the physical limit; 'fresh anon' and 'fresh /dev/shm' = first copy into newly mapped memory, page faults included, the latter being what a destination writing a shared memory-backend-file pays."),
        n("Overhead", "Per scenario run: source spawn → QMP handshake done; guest boot until its serial marker (F for the fill guest, B for the sweep guest); destination spawn → QMP handshake; capabilities + parameters + migrate-incoming; scenario start → `migrate`; teardown (QMP quit both); scenario total."),
        n("Multifd", "As precopy (stopped fill guest, same bandwidth and downtime settings), with the multifd capability and 4 channels on both sides, multifd-compression none, then zstd (default level); scenario multifd_none / multifd_zstd. The guest RAM is --mem (2 GiB by default, 1 GiB with --quick). CPU and RSS are measured as for precopy; CPU per GiB divides the destination's CPU by the source's ram.transferred. The source's CPU is measured too: on a machine with few cores the source and the destination share them, so (source + destination CPU) / cores is the shortest migration time possible there (cpu_floor_ms); a destination that uses less CPU shortens the migration by half of what it saves on 2 cores. rust-dest receives uncompressed pages straight into guest RAM and decompresses with one zstd stream per channel, QEMU with its recv threads."),
        n("Noise", "Numbers come from one machine where other work may run; the load average at start and end is recorded, and for every run the CPU time other processes used (machine busy time from /proc/stat minus the source's, the destination's and the harness's own) is in the run details as foreign_cpu_s; a warning names every run where it exceeded 10% of a core. Timings use the harness's monotonic clock. Every figure is a median of at least 3 rust-dest/QEMU pairs run alternately, with min–max; ratios are computed pair by pair."),
    ]
}
