//! Simulated vCPUs: threads that touch guest RAM after POSTCOPY_RUN so that
//! missing pages fault and get requested, like a running guest would.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::ram::{RamBlock, TARGET_PAGE_SIZE};
use crate::state::{RunState, Shared};

/// How the simulated vCPUs touch guest RAM after POSTCOPY_RUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Address order through every block, over and over (like the test guest).
    Sweep,
    /// Uniformly random pages.
    Random,
    /// A small hot set (the first 256 pages of the largest block) plus a slow sweep.
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
}

impl Default for VcpuConfig {
    fn default() -> Self {
        VcpuConfig { pattern: Pattern::Random, threads: 1, rate: 50_000 }
    }
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

pub(super) fn vcpu_thread(guest: Guest, cfg: VcpuConfig, idx: usize) {
    let blocks = guest.blocks;
    let total: u64 = blocks.iter().map(|b| b.pages()).sum();
    if total == 0 {
        return;
    }
    let largest =
        blocks.iter().enumerate().max_by_key(|(_, b)| b.used_length).map(|(i, _)| i).unwrap_or(0);
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15 ^ (idx as u64 + 1);
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    // Sleep once per batch of 64 touches to honour the rate.
    let interval = (64u64 * 1_000_000_000).checked_div(cfg.rate).map(Duration::from_nanos);
    // Sweep threads start at different offsets of the RAM.
    let mut cursor: u64 = (total / cfg.threads.max(1) as u64) * idx as u64;
    let mut sink = 0u8;
    let mut touched: u64 = 0;
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
                Pattern::Random => next(total),
                Pattern::Hot => {
                    if touched.is_multiple_of(8) {
                        cursor = (cursor + 1) % total;
                        cursor
                    } else {
                        let hot = blocks[largest].pages().min(256);
                        let base: u64 = blocks[..largest].iter().map(|b| b.pages()).sum();
                        base + next(hot.max(1))
                    }
                }
                Pattern::None => return,
            };
            touched += 1;
            let mut rem = g;
            for b in &blocks {
                if rem < b.pages() {
                    guest.inflight.store(g + 1, Ordering::Release);
                    sink ^= b.mapping.touch((rem * TARGET_PAGE_SIZE) as usize);
                    guest.inflight.store(0, Ordering::Release);
                    break;
                }
                rem -= b.pages();
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
