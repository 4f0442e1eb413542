//! Postcopy fault statistics: where the time of each fault goes, and the
//! blocktime and latency figures QEMU's destination reports with the
//! `postcopy-blocktime` capability (QEMU 10.1+: `migration/postcopy-ram.c`,
//! fields documented in `qapi/migration.json`), measured so that the same
//! field means the same thing on both destinations.
//!
//! A fault's path through rust-dest, each step timestamped:
//!
//! ```text
//! read      the fault thread read the uffd event
//! request   the page request was written to the return path
//! received  the page's bytes were handed to placement (loader or preempt)
//! placed    UFFDIO_COPY / UFFDIO_ZEROPAGE returned (this also wakes)
//! woken     the faulting simulated vCPU's access returned
//! ```
//!
//! The destination's own share of a fault is (request - read) +
//! (woken - received); the rest is the network and the source.
//!
//! Blocktime follows QEMU's definition: per vCPU, the sum of the intervals
//! during which it waited for a missing page; in total, the time during
//! which every vCPU was waiting at once. The simulated vCPUs
//! (`postcopy::vcpu`) report their own waits, so no thread-id mapping is
//! needed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Buckets of the latency distribution: bucket N counts faults resolved in
/// [2^N µs, 2^(N+1) µs) (bucket 0 also takes everything below 1 µs), as in
/// QEMU's `postcopy-latency-dist`.
pub const LATENCY_BUCKETS: usize = 24;

/// Key of a fault: (RAMBlock index, target page).
pub type FaultKey = (usize, u64);

#[derive(Clone, Copy, Debug)]
struct Pending {
    read: Instant,
    request: Option<Instant>,
    /// µs the fault thread waited on a run queue between read and request.
    request_runq: u64,
}

#[derive(Clone, Copy, Debug)]
struct Placed {
    read: Instant,
    request: Option<Instant>,
    request_runq: u64,
    received: Instant,
    placed: Instant,
}

/// Durations (µs) of one fully observed stage sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageSample {
    pub read_to_request: u64,
    pub request_to_received: u64,
    pub received_to_placed: u64,
    pub placed_to_woken: u64,
    /// Of `read_to_request`, µs the fault thread waited for a CPU
    /// (`--sched-stats`; 0 without it).
    pub read_to_request_runq: u64,
    /// Of `placed_to_woken`, µs the woken vCPU waited for a CPU.
    pub placed_to_woken_runq: u64,
}

impl StageSample {
    /// The destination's own share: read → request written, plus
    /// received → woken.
    pub fn own(&self) -> u64 {
        self.read_to_request + self.received_to_placed + self.placed_to_woken
    }
    pub fn total(&self) -> u64 {
        self.own() + self.request_to_received
    }
    /// Run-queue wait inside the own share.
    pub fn own_runq(&self) -> u64 {
        self.read_to_request_runq + self.placed_to_woken_runq
    }
    /// The own share without the time spent waiting for a CPU: what
    /// rust-dest's code and its system calls cost.
    pub fn own_excl_runq(&self) -> u64 {
        self.own().saturating_sub(self.own_runq())
    }
}

#[derive(Default)]
struct Blocked {
    /// vCPUs waiting right now.
    waiting: usize,
    /// Since when every vCPU has been waiting.
    all_since: Option<Instant>,
    all_total: Duration,
    per_vcpu: Vec<Duration>,
}

#[derive(Default)]
struct Latency {
    /// (sum ns, count) per vCPU, and for faults no vCPU reported.
    per_vcpu: Vec<(u128, u64)>,
    buckets: [u64; LATENCY_BUCKETS],
    sum_ns: u128,
    count: u64,
}

impl Latency {
    fn add(&mut self, vcpu: Option<usize>, d: Duration) {
        let ns = d.as_nanos();
        self.sum_ns += ns;
        self.count += 1;
        let us = (ns / 1000) as u64;
        let b = if us == 0 { 0 } else { (63 - us.leading_zeros()) as usize };
        self.buckets[b.min(LATENCY_BUCKETS - 1)] += 1;
        if let Some(v) = vcpu {
            if self.per_vcpu.len() <= v {
                self.per_vcpu.resize(v + 1, (0, 0));
            }
            self.per_vcpu[v].0 += ns;
            self.per_vcpu[v].1 += 1;
        }
    }
}

#[derive(Default)]
struct Inner {
    pending: HashMap<FaultKey, Pending>,
    placed: HashMap<FaultKey, Placed>,
    samples: Vec<StageSample>,
    blocked: Blocked,
    latency: Latency,
    vcpus: usize,
}

/// Fault statistics of this destination process (kept after postcopy ends
/// so `query-migrate` still reports them).
#[derive(Default)]
pub struct FaultStats {
    inner: Mutex<Inner>,
}

impl FaultStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Postcopy starts with `vcpus` simulated vCPUs (0: none run).
    pub fn start(&self, vcpus: usize) {
        let mut g = self.lock();
        g.vcpus = vcpus;
        if g.blocked.per_vcpu.len() < vcpus {
            g.blocked.per_vcpu.resize(vcpus, Duration::ZERO);
        }
    }

    /// The fault thread read a fault on a missing page.
    pub fn read(&self, key: FaultKey, at: Instant) {
        self.lock().pending.entry(key).or_insert(Pending {
            read: at,
            request: None,
            request_runq: 0,
        });
    }

    /// Its page request went out on the return path (the first one counts;
    /// a request re-sent after a recovery does not move it).
    /// `runq_us`: how long the fault thread waited for a CPU since the read.
    pub fn requested(&self, key: FaultKey, at: Instant, runq_us: u64) {
        if let Some(p) = self.lock().pending.get_mut(&key) {
            if p.request.is_none() {
                p.request = Some(at);
                p.request_runq = runq_us;
            }
        }
    }

    /// A page that a fault was waiting for has been placed: `received` when
    /// its bytes reached placement, `placed` when the ioctl returned.
    pub fn placed(&self, key: FaultKey, received: Instant, placed: Instant) {
        let mut g = self.lock();
        if let Some(p) = g.pending.remove(&key) {
            let request_runq = p.request_runq;
            g.placed.insert(
                key,
                Placed { read: p.read, request: p.request, request_runq, received, placed },
            );
        }
    }

    /// vCPU `vcpu` begins to wait for a missing page.
    pub fn vcpu_blocked(&self, at: Instant) {
        let mut g = self.lock();
        g.blocked.waiting += 1;
        if g.vcpus > 0 && g.blocked.waiting >= g.vcpus && g.blocked.all_since.is_none() {
            g.blocked.all_since = Some(at);
        }
    }

    /// vCPU `vcpu`, which waited since `since`, runs again at `at`; `key`
    /// is the page it waited for; `runq_us`: how long it waited for a CPU
    /// after being woken.
    pub fn vcpu_woken(
        &self,
        vcpu: usize,
        key: FaultKey,
        since: Instant,
        at: Instant,
        runq_us: u64,
    ) {
        let mut g = self.lock();
        g.blocked.waiting = g.blocked.waiting.saturating_sub(1);
        if let Some(s) = g.blocked.all_since.take() {
            g.blocked.all_total += at.saturating_duration_since(s);
        }
        if g.blocked.per_vcpu.len() <= vcpu {
            g.blocked.per_vcpu.resize(vcpu + 1, Duration::ZERO);
        }
        g.blocked.per_vcpu[vcpu] += at.saturating_duration_since(since);
        if let Some(p) = g.placed.remove(&key) {
            if let Some(req) = p.request {
                g.latency.add(Some(vcpu), at.saturating_duration_since(p.read));
                let us = |a: Instant, b: Instant| b.saturating_duration_since(a).as_micros() as u64;
                g.samples.push(StageSample {
                    read_to_request: us(p.read, req),
                    request_to_received: us(req, p.received),
                    received_to_placed: us(p.received, p.placed),
                    placed_to_woken: us(p.placed, at),
                    read_to_request_runq: p.request_runq,
                    placed_to_woken_runq: runq_us,
                });
            }
        }
    }

    /// `query-migrate`'s blocktime and latency members (QEMU's names and
    /// units: blocktime in ms, latencies in ns).
    pub fn qmp_members(&self) -> Vec<(&'static str, Value)> {
        let g = self.lock();
        // Remote faults placed but never reported woken by a vCPU: another
        // thread touched the page (QEMU's "non-vCPU" faults).
        let mut non: (u128, u64) = (0, 0);
        for p in g.placed.values().filter(|p| p.request.is_some()) {
            non.0 += p.placed.saturating_duration_since(p.read).as_nanos();
            non.1 += 1;
        }
        let mut all = g.blocked.all_total;
        if let Some(s) = g.blocked.all_since {
            all += s.elapsed();
        }
        let ms = |d: Duration| d.as_millis().min(u32::MAX as u128) as u64;
        let avg = |(s, n): (u128, u64)| if n == 0 { 0 } else { (s / n as u128) as u64 };
        let mut lat = g.latency.per_vcpu.clone();
        lat.resize(g.blocked.per_vcpu.len().max(lat.len()), (0, 0));
        let total_lat = {
            let n = g.latency.count + non.1;
            avg((g.latency.sum_ns + non.0, n))
        };
        vec![
            ("postcopy-blocktime", json!(ms(all))),
            (
                "postcopy-vcpu-blocktime",
                json!(g.blocked.per_vcpu.iter().map(|d| ms(*d)).collect::<Vec<_>>()),
            ),
            ("postcopy-latency", json!(total_lat)),
            ("postcopy-latency-dist", json!(g.latency.buckets.to_vec())),
            ("postcopy-vcpu-latency", json!(lat.into_iter().map(avg).collect::<Vec<_>>())),
            ("postcopy-non-vcpu-latency", json!(avg(non))),
        ]
    }

    /// Per-stage percentiles (µs) for the crossmig extension of
    /// `query-migrate`.
    pub fn stages_json(&self) -> Value {
        let g = self.lock();
        let col = |f: fn(&StageSample) -> u64| -> Value {
            percentiles(&g.samples.iter().map(f).collect::<Vec<_>>())
        };
        json!({
            "count": g.samples.len(),
            "read-to-request": col(|s| s.read_to_request),
            "request-to-received": col(|s| s.request_to_received),
            "received-to-placed": col(|s| s.received_to_placed),
            "placed-to-woken": col(|s| s.placed_to_woken),
            "own": col(StageSample::own),
            "total": col(StageSample::total),
            "runq-read-to-request": col(|s| s.read_to_request_runq),
            "runq-placed-to-woken": col(|s| s.placed_to_woken_runq),
            "own-runq": col(StageSample::own_runq),
            "own-excl-runq": col(StageSample::own_excl_runq),
        })
    }
}

/// Nearest-rank p50/p99/max of `v` (µs).
pub fn percentiles(v: &[u64]) -> Value {
    if v.is_empty() {
        return json!({ "count": 0, "p50": 0, "p99": 0, "max": 0 });
    }
    let mut v = v.to_vec();
    v.sort_unstable();
    let n = v.len() as u64;
    let pick = |p: u64| v[((p * n).div_ceil(100).max(1) - 1) as usize];
    json!({ "count": n, "p50": pick(50), "p99": pick(99), "max": v[v.len() - 1] })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, us: u64) -> Instant {
        base + Duration::from_micros(us)
    }

    #[test]
    fn one_remote_fault_through_every_stage() {
        let s = FaultStats::default();
        let t = Instant::now();
        s.start(1);
        s.vcpu_blocked(at(t, 0));
        s.read((0, 7), at(t, 5));
        s.requested((0, 7), at(t, 8), 2);
        s.placed((0, 7), at(t, 100), at(t, 104));
        s.vcpu_woken(0, (0, 7), at(t, 0), at(t, 110), 5);
        let st = s.stages_json();
        assert_eq!(st["count"], 1);
        assert_eq!(st["read-to-request"]["p50"], 3);
        assert_eq!(st["request-to-received"]["p50"], 92);
        assert_eq!(st["received-to-placed"]["p50"], 4);
        assert_eq!(st["placed-to-woken"]["p50"], 6);
        assert_eq!(st["own"]["p50"], 13);
        assert_eq!(st["total"]["p50"], 105);
        // Of the own 13 µs, 2 + 5 were spent waiting for a CPU.
        assert_eq!(st["runq-read-to-request"]["p50"], 2);
        assert_eq!(st["runq-placed-to-woken"]["p50"], 5);
        assert_eq!(st["own-runq"]["p50"], 7);
        assert_eq!(st["own-excl-runq"]["p50"], 6);
        let m: HashMap<_, _> = s.qmp_members().into_iter().collect();
        assert_eq!(m["postcopy-latency"], 105_000);
        assert_eq!(m["postcopy-vcpu-latency"], json!([105_000]));
        assert_eq!(m["postcopy-non-vcpu-latency"], 0);
        // 105 µs falls into [64, 128) µs: bucket 6.
        assert_eq!(m["postcopy-latency-dist"][6], 1);
        assert_eq!(m["postcopy-vcpu-blocktime"], json!([0]));
    }

    #[test]
    fn blocktime_counts_only_when_all_vcpus_wait() {
        let s = FaultStats::default();
        let t = Instant::now();
        s.start(2);
        // vCPU 0 waits 0..40 ms, vCPU 1 waits 10..30 ms: all blocked 20 ms.
        s.vcpu_blocked(at(t, 0));
        s.vcpu_blocked(at(t, 10_000));
        s.vcpu_woken(1, (0, 1), at(t, 10_000), at(t, 30_000), 0);
        s.vcpu_woken(0, (0, 2), at(t, 0), at(t, 40_000), 0);
        let m: HashMap<_, _> = s.qmp_members().into_iter().collect();
        assert_eq!(m["postcopy-blocktime"], 20);
        assert_eq!(m["postcopy-vcpu-blocktime"], json!([40, 20]));
        // No page request was involved: no latency sample.
        assert_eq!(m["postcopy-latency"], 0);
        assert_eq!(s.stages_json()["count"], 0);
    }

    #[test]
    fn a_fault_no_vcpu_reports_is_non_vcpu() {
        let s = FaultStats::default();
        let t = Instant::now();
        s.start(1);
        s.read((1, 3), at(t, 0));
        s.requested((1, 3), at(t, 1), 0);
        s.placed((1, 3), at(t, 50), at(t, 51));
        let m: HashMap<_, _> = s.qmp_members().into_iter().collect();
        assert_eq!(m["postcopy-non-vcpu-latency"], 51_000);
        assert_eq!(m["postcopy-latency"], 51_000);
    }

    #[test]
    fn latency_buckets_are_log2_microseconds() {
        let mut l = Latency::default();
        for us in [0u64, 1, 2, 3, 4, 1023, 1024, u32::MAX as u64 * 1000] {
            l.add(None, Duration::from_micros(us));
        }
        assert_eq!(l.buckets[0], 2); // 0 and 1 µs
        assert_eq!(l.buckets[1], 2); // 2, 3
        assert_eq!(l.buckets[2], 1); // 4
        assert_eq!(l.buckets[9], 1); // 1023
        assert_eq!(l.buckets[10], 1); // 1024
        assert_eq!(l.buckets[LATENCY_BUCKETS - 1], 1); // clamped
    }
}
