//! Simulated vCPUs: threads that touch guest RAM after POSTCOPY_RUN so that
//! missing pages fault and get requested, like a running guest would.
//!
//! The patterns reproduce the harness's test guests (`images/guest.S`), so
//! that rust-dest and QEMU's destination (which runs the migrated guest)
//! fault in the same order: `sweep` walks pages in address order, `random`
//! walks them in the random guest's order (a full-period LCG over the page
//! indices, the same every pass), `hot` mixes a small hot set with a slow
//! sweep. `--vcpu-range` limits the walk to the byte range of the largest
//! RAMBlock the guest workload touches (for q35's `pc.ram`, offsets are
//! guest-physical addresses).
//!
//! Each thread reports the time it waits for a missing page to
//! [`crate::state::FaultStats`] (blocktime, latency, the fault's stages).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ram::{RamBlock, TARGET_PAGE_SIZE};
use crate::state::sched::{self, ThreadRunq};
use crate::state::{RunState, Shared};

/// Multiplier and increment of the random test guest's LCG
/// (`images/guest.S`, MODE 2).
pub const RAND_A: u64 = 1_664_525;
pub const RAND_C: u64 = 1_013_904_223;

/// How the simulated vCPUs touch guest RAM after POSTCOPY_RUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Address order, over and over (like the sweep test guest).
    Sweep,
    /// Every page once per pass in the random test guest's order.
    Random,
    /// A small hot set (the first 256 pages of the range) plus a slow sweep.
    Hot,
    /// No accesses.
    None,
}

impl std::str::FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sweep" => Ok(Pattern::Sweep),
            "random" => Ok(Pattern::Random),
            "hot" => Ok(Pattern::Hot),
            "none" => Ok(Pattern::None),
            o => Err(format!("unknown vCPU pattern {o:?} (expected sweep, random, hot or none)")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct VcpuConfig {
    pub pattern: Pattern,
    pub threads: usize,
    /// Page touches per second per thread (0 = as fast as possible).
    pub rate: u64,
    /// Byte range `[start, end)` of the largest RAMBlock to walk (`None`:
    /// every page of every block).
    pub range: Option<(u64, u64)>,
}

impl Default for VcpuConfig {
    fn default() -> Self {
        VcpuConfig { pattern: Pattern::Random, threads: 1, rate: 50_000, range: None }
    }
}

/// Parse `--vcpu-range START-END` (sizes like `1M`, `0x100000`, `104857600`).
pub fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once('-').ok_or_else(|| format!("{s:?}: expected START-END"))?;
    let num = |t: &str| -> Result<u64, String> {
        let t = t.trim();
        match t.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).map_err(|e| format!("{t:?}: {e}")),
            None => wire::units::parse_size(t).map_err(|e| format!("{t:?}: {e}")),
        }
    };
    let (a, b) = (num(a)?, num(b)?);
    if a >= b || a % TARGET_PAGE_SIZE != 0 || b % TARGET_PAGE_SIZE != 0 {
        return Err(format!("{s:?}: need START < END, both multiples of {TARGET_PAGE_SIZE}"));
    }
    Ok((a, b))
}

/// What a vCPU thread sees of the guest.
pub(super) struct Guest {
    pub shared: Shared,
    pub blocks: Vec<Arc<RamBlock>>,
    /// Set when postcopy ends or fails.
    pub stop: Arc<AtomicBool>,
    /// The page this vCPU is reading right now (index over all blocks, + 1;
    /// 0 between reads), so the end of postcopy can tell a vCPU blocked on
    /// a page that was placed but never woken ([`blocked_on_placed`]).
    pub inflight: Arc<AtomicU64>,
}

/// Which of `inflight` are blocked on a page already received, after
/// `grace` for them to move on: the vCPUs never woken (QEMU's faulting vCPU
/// waits in the kernel until placement wakes it, `migration/postcopy-ram.c`).
pub(super) fn blocked_on_placed(
    blocks: &[Arc<RamBlock>],
    inflight: &[Arc<AtomicU64>],
    grace: Duration,
) -> usize {
    let received = |g: u64| {
        let mut rem = g;
        for b in blocks {
            if rem < b.pages() {
                return b.received.get(rem);
            }
            rem -= b.pages();
        }
        false
    };
    let seen: Vec<u64> = inflight.iter().map(|a| a.load(Ordering::Acquire)).collect();
    let stuck = |i: usize| {
        let v = inflight[i].load(Ordering::Acquire);
        v != 0 && v == seen[i] && received(v - 1)
    };
    let t0 = std::time::Instant::now();
    loop {
        let n = (0..inflight.len()).filter(|&i| stuck(i)).count();
        if n == 0 || t0.elapsed() >= grace {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pages a thread walks: (block index, first page, page count) runs,
/// addressed as one sequence.
struct Walk {
    runs: Vec<(usize, u64, u64)>,
    total: u64,
}

impl Walk {
    fn new(blocks: &[Arc<RamBlock>], range: Option<(u64, u64)>) -> Walk {
        let runs: Vec<(usize, u64, u64)> = match range {
            None => blocks.iter().enumerate().map(|(i, b)| (i, 0, b.pages())).collect(),
            Some((s, e)) => {
                let largest = blocks
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, b)| b.used_length)
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                let n = blocks.get(largest).map(|b| b.pages()).unwrap_or(0);
                let first = (s / TARGET_PAGE_SIZE).min(n);
                let last = (e / TARGET_PAGE_SIZE).min(n);
                vec![(largest, first, last - first)]
            }
        };
        let total = runs.iter().map(|r| r.2).sum();
        Walk { runs, total }
    }

    /// (block index, page in block) of the `g`-th page of the walk.
    fn locate(&self, mut g: u64) -> Option<(usize, u64)> {
        for &(bi, first, n) in &self.runs {
            if g < n {
                return Some((bi, first + g));
            }
            g -= n;
        }
        None
    }
}

/// The random guest's order: state of `x -> (A*x + C) mod 2^k`, skipping
/// states past `total` (2^k = `total` rounded up to a power of two).
struct Lcg {
    x: u64,
    mask: u64,
    total: u64,
}

impl Lcg {
    fn new(total: u64, start: u64) -> Lcg {
        let mask = total.max(1).next_power_of_two() - 1;
        Lcg { x: start & mask, mask, total }
    }
    fn next(&mut self) -> u64 {
        loop {
            self.x = (self.x.wrapping_mul(RAND_A).wrapping_add(RAND_C)) & self.mask;
            if self.x < self.total {
                return self.x;
            }
        }
    }
}

pub(super) fn vcpu_thread(guest: Guest, cfg: VcpuConfig, idx: usize) {
    let walk = Walk::new(&guest.blocks, cfg.range);
    let total = walk.total;
    if total == 0 {
        return;
    }
    // Thread 0 walks exactly like the guest; others start elsewhere.
    let phase = (total / cfg.threads.max(1) as u64) * idx as u64;
    let mut lcg = Lcg::new(total, if idx == 0 { 0 } else { phase.wrapping_mul(0x9e37_79b9) });
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15 ^ (idx as u64 + 1);
    let mut hot_pick = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    // Sleep once per batch of 64 touches to honour the rate.
    let interval = (64u64 * 1_000_000_000).checked_div(cfg.rate).map(Duration::from_nanos);
    // Sweep threads start at different offsets of the range.
    let mut cursor: u64 = phase.wrapping_sub(1) % total;
    let mut sink = 0u8;
    let mut touched: u64 = 0;
    let stats = guest.shared.fault_stats();
    let runq = ThreadRunq::for_current_thread();
    while !guest.stop.load(Ordering::Acquire) {
        if guest.shared.lock().run_state != RunState::Running {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        // A batch between checks of the stop flag.
        for _ in 0..64 {
            let g = match cfg.pattern {
                Pattern::Sweep => {
                    cursor = (cursor + 1) % total;
                    cursor
                }
                Pattern::Random => lcg.next(),
                Pattern::Hot => {
                    if touched.is_multiple_of(8) {
                        cursor = (cursor + 1) % total;
                        cursor
                    } else {
                        hot_pick(total.min(256))
                    }
                }
                Pattern::None => return,
            };
            touched += 1;
            if let Some((bi, page)) = walk.locate(g) {
                let b = &guest.blocks[bi];
                let missing = !b.received.get(page);
                // Run-queue wait read outside the timed access.
                let runq0 = if missing { runq.wait_ns() } else { None };
                let t0 = Instant::now();
                if missing {
                    stats.vcpu_blocked(t0);
                }
                let global: u64 = guest.blocks[..bi].iter().map(|b| b.pages()).sum::<u64>() + page;
                guest.inflight.store(global + 1, Ordering::Release);
                sink ^= b.mapping.touch((page * TARGET_PAGE_SIZE) as usize);
                guest.inflight.store(0, Ordering::Release);
                if missing {
                    let at = Instant::now();
                    let waited = sched::delta_us(runq0, runq.wait_ns());
                    // A fault is keyed by the block's page (a whole huge
                    // page on hugetlbfs), as the fault thread requests it.
                    let per = (b.page_size / TARGET_PAGE_SIZE).max(1);
                    stats.vcpu_woken(idx, (bi, page - page % per), t0, at, waited);
                }
            }
            if guest.stop.load(Ordering::Relaxed) {
                break;
            }
        }
        if let Some(iv) = interval {
            std::thread::sleep(iv);
        }
    }
    std::hint::black_box(sink);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcg_matches_the_random_guest_order() {
        // The harness's `images::random_order` documents the same sequence:
        // for 8 pages, x -> (A*x + C) mod 8 from 0.
        let mut l = Lcg::new(8, 0);
        let got: Vec<u64> = (0..8).map(|_| l.next()).collect();
        let mut x = 0u64;
        let want: Vec<u64> = (0..8)
            .map(|_| {
                x = (x * RAND_A + RAND_C) % 8;
                x
            })
            .collect();
        assert_eq!(got, want);
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, (0..8).collect::<Vec<_>>());
        // Pages past the count are skipped, every page still once a pass.
        let mut l = Lcg::new(5, 0);
        let mut seen: Vec<u64> = (0..5).map(|_| l.next()).collect();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("1M-100M"), Ok((1 << 20, 100 << 20)));
        assert_eq!(parse_range("0x100000-0x6400000"), Ok((1 << 20, 100 << 20)));
        assert!(parse_range("100M-1M").is_err());
        assert!(parse_range("1M").is_err());
        assert!(parse_range("4097-8192").is_err());
    }
}
