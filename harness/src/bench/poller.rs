//! Sampling both sides of a TCP migration with query-migrate (50 ms) until
//! both report completed: the samples, peak RSS and the postcopy switch.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::Value;

use super::host::proc_mem;
use super::metrics::Sample;
use super::probe::src_pages;
use crate::drive::session::{desc_suffix, query_failed, u64_at, Migration, Side};
use crate::qmp::MigrationStatus;

/// query-migrate sampling period during TCP migrations (as guestperf).
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

type M<T> = std::sync::Mutex<T>;

/// Samples both sides of a TCP migration in two independent loops (a QEMU
/// destination answers late while its main loop loads, which must not
/// thin out the source's samples), until both report `completed`. Queries
/// go through [`Migration::query`]; the destination's /proc is read too.
pub(super) struct Poller {
    t0: Instant,
    deadline: Instant,
    dst_pid: u32,
    postcopy: bool,
    pub(super) samples: M<Vec<Sample>>,
    src_status: M<MigrationStatus>,
    dst_status: M<MigrationStatus>,
    /// Peak RssAnon+RssFile of the destination, sampled.
    pub(super) peak_nonshmem_kib: M<u64>,
    /// When the destination's query-migrate first said `completed`.
    pub(super) dst_done_poll: M<Option<Instant>>,
    /// First source sample in postcopy-active: (time, pages sent).
    pub(super) pc_seen: M<Option<(Instant, u64)>>,
    /// Pages sent at the last source sample before postcopy.
    pub(super) pc_pages_before: M<u64>,
    stop: M<bool>,
}

impl Poller {
    pub(super) fn new(t0: Instant, timeout: Duration, dst_pid: u32, postcopy: bool) -> Poller {
        Poller {
            t0,
            deadline: t0 + timeout,
            dst_pid,
            postcopy,
            samples: Default::default(),
            src_status: Default::default(),
            dst_status: Default::default(),
            peak_nonshmem_kib: Default::default(),
            dst_done_poll: Default::default(),
            pc_seen: Default::default(),
            pc_pages_before: Default::default(),
            stop: Default::default(),
        }
    }

    fn both_done(&self) -> bool {
        *self.src_status.lock().unwrap() == MigrationStatus::Completed
            && *self.dst_status.lock().unwrap() == MigrationStatus::Completed
    }

    /// A query that failed on a live process ends the sampling.
    fn answered(&self, who: &str, v: &Value) -> Result<()> {
        if query_failed(v) {
            *self.stop.lock().unwrap() = true;
            bail!("{who} query-migrate failed{}", desc_suffix(v));
        }
        Ok(())
    }

    fn check(&self, who: &str, v: &Value) -> Result<()> {
        let st = MigrationStatus::of(v);
        if matches!(st, MigrationStatus::Failed | MigrationStatus::Cancelled) {
            *self.stop.lock().unwrap() = true;
            bail!("migration failed on the {who}: {st}{}", desc_suffix(v));
        }
        if Instant::now() > self.deadline {
            *self.stop.lock().unwrap() = true;
            bail!(
                "timed out: source {}, destination {}",
                self.src_status.lock().unwrap(),
                self.dst_status.lock().unwrap()
            );
        }
        Ok(())
    }

    async fn src_loop(&self, m: &Migration) -> Result<Value> {
        loop {
            let sv = m.query(Side::Source).await;
            self.answered("source", &sv)?;
            let now = Instant::now();
            let ss = MigrationStatus::of(&sv);
            *self.src_status.lock().unwrap() = ss.clone();
            if let Some(m) = proc_mem(self.dst_pid) {
                {
                    let mut p = self.peak_nonshmem_kib.lock().unwrap();
                    *p = (*p).max(m.rss_anon_kib + m.rss_file_kib);
                }
            }
            self.samples.lock().unwrap().push(Sample {
                t: (now - self.t0).as_secs_f64(),
                src_status: ss.clone(),
                dst_status: self.dst_status.lock().unwrap().clone(),
                src_transferred: u64_at(&sv, &["ram", "transferred"]),
                src_pages: src_pages(&sv),
            });
            if self.postcopy && self.pc_seen.lock().unwrap().is_none() {
                if ss == MigrationStatus::PostcopyActive {
                    *self.pc_seen.lock().unwrap() = Some((now, src_pages(&sv)));
                } else {
                    *self.pc_pages_before.lock().unwrap() = src_pages(&sv);
                }
            }
            self.check("source", &sv)?;
            if self.both_done() || *self.stop.lock().unwrap() {
                return Ok(sv);
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    async fn dst_loop(&self, m: &Migration) -> Result<Value> {
        loop {
            let dv = m.query(Side::Dest).await;
            self.answered("destination", &dv)?;
            let ds = MigrationStatus::of(&dv);
            if ds == MigrationStatus::Completed {
                self.dst_done_poll.lock().unwrap().get_or_insert_with(Instant::now);
            }
            *self.dst_status.lock().unwrap() = ds;
            self.check("destination", &dv)?;
            if self.both_done() || *self.stop.lock().unwrap() {
                return Ok(dv);
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    pub(super) async fn run(&self, m: &Migration) -> Result<(Value, Value)> {
        let (a, b) = tokio::join!(self.src_loop(m), self.dst_loop(m));
        let (sv, dv) = (a?, b?);
        if !self.both_done() {
            bail!(
                "sampling stopped: source {}, destination {}",
                self.src_status.lock().unwrap(),
                self.dst_status.lock().unwrap()
            );
        }
        Ok((sv, dv))
    }
}
