//! `crossmig soak`: postcopy cut and recovered again and again at random
//! points, each cycle one verified migration of the one flow
//! ([`super::migrate::migrate`]) with a random interruption plan. Counts
//! completions, stalls (a bounded wait expired: [`WaitExpired`]), RAM
//! mismatches (a page compare failed) and other failures; prints a summary
//! and writes a JSON report. A run is clean when every cycle completed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;

use super::migrate::{migrate, Interrupt, Interruption, MigrateOpts, Mode};
use super::session::WaitExpired;
use crate::vm::dest::DestKind;
use crate::vm::qemu::QemuBinary;

/// Whether cycles run with `postcopy-preempt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PreemptChoice {
    /// Alternate: even cycles without, odd cycles with preempt.
    Both,
    On,
    Off,
}

/// What `crossmig soak` was asked to do.
#[derive(Clone, Debug)]
pub struct SoakOpts {
    pub cycles: u32,
    /// QEMU series (`10.0`, `11.1`, ...) the cycles go round.
    pub versions: Vec<String>,
    pub preempt: PreemptChoice,
    pub seed: u64,
    pub mem_bytes: u64,
    /// Per cycle: how long until both sides must have completed.
    pub cycle_timeout: Duration,
    /// Stop starting cycles after this long (the cycles run so far count).
    pub time_limit: Option<Duration>,
    pub json: PathBuf,
}

/// How one cycle ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Both sides completed and every check passed.
    Completed,
    /// A bounded wait expired (statuses stuck).
    Stall,
    /// A page of some RAMBlock differs from the source.
    Mismatch,
    /// Anything else: a side failed, a check other than a page compare
    /// failed, the run could not be carried out.
    Failed,
}

/// One cycle of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Cycle {
    pub index: u32,
    pub qemu: String,
    pub preempt: bool,
    pub plan: Vec<Interruption>,
    pub verdict: Verdict,
    pub recoveries: u32,
    pub ms: u64,
    /// The error or the failed checks (empty when completed).
    pub detail: String,
}

/// The JSON report.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    pub seed: u64,
    pub cycles_asked: u32,
    pub cycles_run: u32,
    pub completed: u32,
    pub stalls: u32,
    pub mismatches: u32,
    pub failed: u32,
    /// Recoveries carried out in all (cut or paused, then recovered).
    pub recoveries: u32,
    /// Completed cycles whose postcopy ended before the whole plan ran
    /// (fewer recoveries than interruptions planned).
    pub short_plans: u32,
    pub total_ms: u64,
    pub ms_per_cycle: u64,
    pub cycles: Vec<Cycle>,
}

impl SoakReport {
    /// No stall, no mismatch, no failure, and at least one cycle.
    pub fn clean(&self) -> bool {
        self.cycles_run > 0 && self.completed == self.cycles_run
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "soak: {} of {} cycle(s) run (seed {}): {} completed, {} stall(s), {} RAM mismatch(es), {} other failure(s); {} recoveries ({} cycle(s) completed before their whole plan); {:.1} s per cycle, {:.1} min in all\n",
            self.cycles_run,
            self.cycles_asked,
            self.seed,
            self.completed,
            self.stalls,
            self.mismatches,
            self.failed,
            self.recoveries,
            self.short_plans,
            self.ms_per_cycle as f64 / 1000.0,
            self.total_ms as f64 / 60_000.0
        );
        for c in self.cycles.iter().filter(|c| c.verdict != Verdict::Completed) {
            s += &format!(
                "  cycle {} (QEMU {}, preempt {}): {:?}: {}\n",
                c.index,
                c.qemu,
                c.preempt,
                c.verdict,
                c.detail.lines().next().unwrap_or("")
            );
        }
        s
    }
}

/// splitmix64: a small deterministic generator (a seed replays a run's plan,
/// and `crossmig fuzz`'s mutants).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The interruptions of one cycle: 1 to 3, mostly cuts through the proxy
/// (some `migrate-pause` on either side, some network partitions), each
/// 0–1500 ms into postcopy.
pub fn plan(rng: &mut Rng) -> Vec<Interruption> {
    let n = 1 + rng.below(3) as usize;
    (0..n)
        .map(|_| Interruption {
            how: match rng.below(10) {
                0 | 1 => Interrupt::PauseSource,
                2 => Interrupt::PauseDest,
                3 => Interrupt::Partition,
                _ => Interrupt::Cut,
            },
            after: Duration::from_millis(rng.below(1501)),
        })
        .collect()
}

/// Classify a cycle's result.
fn judge(r: &Result<super::migrate::MigrateReport>) -> (Verdict, u32, String) {
    match r {
        Ok(rep) if rep.ok() => (Verdict::Completed, rep.recoveries, String::new()),
        Ok(rep) => {
            let failed: Vec<String> =
                rep.checks.iter().filter(|c| !c.ok).map(|c| c.to_string()).collect();
            let v = if rep.blocks.iter().any(|b| !b.ok()) {
                Verdict::Mismatch
            } else {
                Verdict::Failed
            };
            (v, rep.recoveries, failed.join("; "))
        }
        Err(e) => {
            let v = if e.chain().any(|c| c.downcast_ref::<WaitExpired>().is_some()) {
                Verdict::Stall
            } else {
                Verdict::Failed
            };
            (v, 0, format!("{e:#}"))
        }
    }
}

/// Run the soak. Returns the report (also written to `opts.json`).
pub async fn soak(opts: &SoakOpts) -> Result<SoakReport> {
    if opts.versions.is_empty() {
        bail!("no QEMU version to soak (--qemu)");
    }
    let bins: Vec<(String, QemuBinary)> = opts
        .versions
        .iter()
        .map(|v| crate::scenario::qemu::resolve_qemu(Some(v)).map(|b| (v.clone(), b)))
        .collect::<Result<_>>()?;
    let mut rng = Rng::new(opts.seed);
    let t0 = Instant::now();
    let mut cycles = Vec::new();
    for i in 0..opts.cycles {
        if opts.time_limit.is_some_and(|l| t0.elapsed() >= l) {
            eprintln!("soak: time limit reached after {i} cycle(s)");
            break;
        }
        let (ver, qemu) = &bins[i as usize % bins.len()];
        let preempt = match opts.preempt {
            PreemptChoice::On => true,
            PreemptChoice::Off => false,
            PreemptChoice::Both => (i / bins.len() as u32) % 2 == 1,
        };
        let plan = plan(&mut rng);
        let mut o = MigrateOpts::new(DestKind::Rust, Mode::Postcopy, qemu.clone());
        o.mem_bytes = opts.mem_bytes;
        o.timeout = opts.cycle_timeout;
        o.recover_cuts = plan.len() as u32;
        o.interruptions = plan.clone();
        o.recoveries_best_effort = true;
        if preempt {
            o.extra_caps = vec![("postcopy-preempt".into(), true)];
        }
        let t = Instant::now();
        let r = migrate(&o, |_| {}).await;
        let (verdict, recoveries, detail) = judge(&r);
        let c = Cycle {
            index: i,
            qemu: ver.clone(),
            preempt,
            plan,
            verdict,
            recoveries,
            ms: t.elapsed().as_millis() as u64,
            detail,
        };
        let how: Vec<String> =
            c.plan.iter().map(|p| format!("{:?}@{}ms", p.how, p.after.as_millis())).collect();
        eprintln!(
            "[{}/{}] QEMU {} preempt={} {}: {:?} ({} ms){}",
            i + 1,
            opts.cycles,
            c.qemu,
            c.preempt,
            how.join(","),
            c.verdict,
            c.ms,
            if c.detail.is_empty() { String::new() } else { format!("\n    {}", c.detail) }
        );
        cycles.push(c);
    }
    let count = |v: Verdict| cycles.iter().filter(|c| c.verdict == v).count() as u32;
    let run = cycles.len() as u32;
    let total_ms = t0.elapsed().as_millis() as u64;
    let rep = SoakReport {
        seed: opts.seed,
        cycles_asked: opts.cycles,
        cycles_run: run,
        completed: count(Verdict::Completed),
        stalls: count(Verdict::Stall),
        mismatches: count(Verdict::Mismatch),
        failed: count(Verdict::Failed),
        recoveries: cycles.iter().map(|c| c.recoveries).sum(),
        short_plans: cycles
            .iter()
            .filter(|c| c.verdict == Verdict::Completed && (c.recoveries as usize) < c.plan.len())
            .count() as u32,
        total_ms,
        ms_per_cycle: total_ms.checked_div(run as u64).unwrap_or(0),
        cycles,
    };
    std::fs::write(&opts.json, serde_json::to_vec_pretty(&rep)?)?;
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_plans() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..50 {
            let (pa, pb) = (plan(&mut a), plan(&mut b));
            assert_eq!(pa, pb);
            assert!((1..=3).contains(&pa.len()));
            assert!(pa.iter().all(|p| p.after <= Duration::from_millis(1500)));
        }
        let hows: Vec<Interrupt> = (0..200).flat_map(|_| plan(&mut a)).map(|p| p.how).collect();
        for h in
            [Interrupt::Cut, Interrupt::PauseSource, Interrupt::PauseDest, Interrupt::Partition]
        {
            assert!(hows.contains(&h), "{h:?} never planned");
        }
    }

    #[test]
    fn a_stall_is_told_from_a_failure() {
        use crate::qmp::MigrationStatus;
        let stall = WaitExpired {
            timeout: Duration::from_secs(1),
            source_status: MigrationStatus::PostcopyActive,
            dest_status: MigrationStatus::PostcopyActive,
        };
        let e = anyhow::Error::new(stall).context("waiting").context("recovery #1");
        assert_eq!(judge(&Err(e)).0, Verdict::Stall);
        assert_eq!(judge(&Err(anyhow::anyhow!("migration failed"))).0, Verdict::Failed);
    }
}
