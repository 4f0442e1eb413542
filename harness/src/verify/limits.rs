//! What a destination must have done by the end of a variant, besides its
//! migration status: its run state (`query-status`), its peak resident
//! memory (VmHWM of `/proc/PID/status`, sampled while it runs, see
//! [`RssProbe`]) and the time its migration took ([`DestExpect`],
//! [`Measured`], [`check_end`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::qmp::RunState;
use wire::units::{parse_duration, parse_size};

/// What a destination must have done by the end of a variant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestExpect {
    /// `query-status` once the variant is over.
    pub run_state: Option<RunState>,
    /// Peak resident memory (VmHWM of /proc/PID/status), bytes.
    pub max_rss: Option<u64>,
    /// From `migrate-incoming` to the destination's final migration status.
    pub max_time: Option<Duration>,
}

impl DestExpect {
    pub fn parse(
        run_state: Option<&str>,
        max_rss: Option<&str>,
        max_time: Option<&str>,
    ) -> Result<DestExpect, String> {
        let run_state = run_state
            .map(|s| match RunState::from(s) {
                RunState::Other(o) => Err(format!(
                    "run-state: unknown run state {o:?} (running, paused, postmigrate, inmigrate, prelaunch, ...)"
                )),
                r => Ok(r),
            })
            .transpose()?;
        let max_rss = max_rss.map(parse_size).transpose().map_err(|e| format!("max-rss: {e}"))?;
        let max_time =
            max_time.map(parse_duration).transpose().map_err(|e| format!("max-time: {e}"))?;
        Ok(DestExpect { run_state, max_rss, max_time })
    }

    pub fn is_empty(&self) -> bool {
        self == &DestExpect::default()
    }
}

/// What was measured of a destination.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Measured {
    /// `query-status` at the end (None: the process was gone).
    pub run_state: Option<RunState>,
    /// Peak resident memory in bytes (None: never read).
    pub peak_rss: Option<u64>,
    /// From `migrate-incoming` to the final migration status (None: it never
    /// reached one while observed).
    #[serde(serialize_with = "ms")]
    pub time: Option<Duration>,
}

fn ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_millis() as u64)),
        None => s.serialize_none(),
    }
}

/// One way a destination missed a [`DestExpect`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndProblem {
    #[error("run state {} but expected {want}", got.as_ref().map(RunState::as_str).unwrap_or("unknown (the process is gone)"))]
    RunState { got: Option<RunState>, want: RunState },
    #[error("peak RSS {} exceeds max-rss {}", mib(*got), mib(*max))]
    Rss { got: u64, max: u64 },
    #[error("peak RSS could not be measured (max-rss {})", mib(*max))]
    RssUnknown { max: u64 },
    #[error("migration took {got:?}, more than max-time {max:?}")]
    Time { got: Duration, max: Duration },
    #[error("the migration never reached a final status while observed (max-time {max:?})")]
    TimeUnknown { max: Duration },
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// Every way `got` misses `want`.
pub fn check_end(want: &DestExpect, got: &Measured) -> Vec<EndProblem> {
    let mut p = Vec::new();
    if let Some(w) = &want.run_state {
        if got.run_state.as_ref() != Some(w) {
            p.push(EndProblem::RunState { got: got.run_state.clone(), want: w.clone() });
        }
    }
    if let Some(max) = want.max_rss {
        match got.peak_rss {
            Some(r) if r > max => p.push(EndProblem::Rss { got: r, max }),
            Some(_) => {}
            None => p.push(EndProblem::RssUnknown { max }),
        }
    }
    if let Some(max) = want.max_time {
        match got.time {
            Some(t) if t > max => p.push(EndProblem::Time { got: t, max }),
            Some(_) => {}
            None => p.push(EndProblem::TimeUnknown { max }),
        }
    }
    p
}

/// Measured values as one line.
impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rs = self.run_state.as_ref().map(RunState::as_str).unwrap_or("?");
        let rss = self.peak_rss.map(mib).unwrap_or_else(|| "?".into());
        let t = self.time.map(|t| format!("{t:.1?}")).unwrap_or_else(|| "?".into());
        write!(f, "run state {rs}, peak RSS {rss}, migration time {t}")
    }
}

/// VmHWM (peak resident set) of a `/proc/PID/status` text, in bytes.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let l = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut it = l["VmHWM:".len()..].split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    match it.next() {
        Some("kB") => Some(n * 1024),
        _ => None,
    }
}

/// VmHWM of a live process, in bytes.
pub fn vm_hwm(pid: u32) -> Option<u64> {
    parse_vm_hwm(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Samples a process's VmHWM every 20 ms while it lives (VmHWM only grows,
/// so the last value read is the peak, also when the process exits between
/// samples: at most 20 ms of growth are missed then).
pub struct RssProbe {
    pid: u32,
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssProbe {
    /// Start sampling `pid` (on the current tokio runtime).
    pub fn start(pid: u32) -> RssProbe {
        let peak = Arc::new(AtomicU64::new(vm_hwm(pid).unwrap_or(0)));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                match vm_hwm(pid) {
                    Some(v) => {
                        p.fetch_max(v, Ordering::Relaxed);
                    }
                    None => return,
                }
            }
        });
        RssProbe { pid, peak, task }
    }

    /// Read once more (if the process still lives), stop, and return the
    /// peak (None: never read).
    pub fn finish(self) -> Option<u64> {
        if let Some(v) = vm_hwm(self.pid) {
            self.peak.fetch_max(v, Ordering::Relaxed);
        }
        self.task.abort();
        Some(self.peak.load(Ordering::Relaxed)).filter(|v| *v > 0)
    }
}

impl Drop for RssProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_of_status_text() {
        let s = "Name:\tqemu\nVmPeak:\t  900 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_vm_hwm(s), Some(12345 * 1024));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM: lots kB\n"), None);
        // Our own process has a peak.
        assert!(vm_hwm(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn end_checks() {
        let want = DestExpect::parse(Some("postmigrate"), Some("512M"), Some("5s")).unwrap();
        let good = Measured {
            run_state: Some(RunState::Postmigrate),
            peak_rss: Some(100 << 20),
            time: Some(Duration::from_millis(300)),
        };
        assert!(check_end(&want, &good).is_empty());
        let bad = Measured {
            run_state: Some(RunState::Paused),
            peak_rss: Some(600 << 20),
            time: Some(Duration::from_secs(6)),
        };
        let p = check_end(&want, &bad);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].to_string().contains("paused"), "{}", p[0]);
        assert!(p[1].to_string().contains("600.0 MiB"), "{}", p[1]);
        let p = check_end(&want, &Measured::default());
        assert!(matches!(
            p.as_slice(),
            [
                EndProblem::RunState { got: None, .. },
                EndProblem::RssUnknown { .. },
                EndProblem::TimeUnknown { .. }
            ]
        ));
        assert!(check_end(&DestExpect::default(), &Measured::default()).is_empty());
    }

    #[tokio::test]
    async fn probe_reads_a_live_process() {
        let probe = RssProbe::start(std::process::id());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(probe.finish().unwrap() > 1 << 20);
    }
}
