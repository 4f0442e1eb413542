//! Run-queue wait of the calling thread, for the fault-path profile
//! (`--sched-stats`): how much of a fault stage a thread spent runnable but
//! not running, i.e. waiting for a CPU rather than doing rust-dest's work.
//!
//! The kernel keeps it per thread in `/proc/thread-self/schedstat` (second
//! field: nanoseconds spent on a run queue; needs `CONFIG_SCHED_INFO`). A
//! thread opens its own file once and re-reads it with `pread` (~1-2 µs);
//! callers read it outside the intervals they time.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turn the profile on for the whole process (`--sched-stats`).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// The calling thread's schedstat, opened by that thread.
pub struct ThreadRunq(Option<File>);

impl ThreadRunq {
    /// Open the calling thread's schedstat when the profile is on (and the
    /// kernel has it); otherwise every read gives `None`.
    pub fn for_current_thread() -> ThreadRunq {
        if !ENABLED.load(Ordering::Relaxed) {
            return ThreadRunq(None);
        }
        ThreadRunq(File::open("/proc/thread-self/schedstat").ok())
    }

    /// Nanoseconds this thread has waited on a run queue so far.
    pub fn wait_ns(&self) -> Option<u64> {
        let f = self.0.as_ref()?;
        let mut buf = [0u8; 96];
        let n = f.read_at(&mut buf, 0).ok()?;
        parse_run_delay(&buf[..n])
    }
}

/// The second field of a schedstat line (`on-cpu-ns wait-ns timeslices`).
fn parse_run_delay(line: &[u8]) -> Option<u64> {
    std::str::from_utf8(line).ok()?.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Microseconds of run-queue wait between two readings (either missing: 0).
pub fn delta_us(before: Option<u64>, after: Option<u64>) -> u64 {
    match (before, after) {
        (Some(a), Some(b)) => b.saturating_sub(a) / 1000,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_wait_field() {
        assert_eq!(parse_run_delay(b"873234 8098903 2\n"), Some(8_098_903));
        assert_eq!(parse_run_delay(b"873234\n"), None);
        assert_eq!(parse_run_delay(b""), None);
        assert_eq!(delta_us(Some(1_000), Some(26_500)), 25);
        assert_eq!(delta_us(None, Some(26_500)), 0);
    }

    #[test]
    fn reads_this_threads_wait_when_enabled() {
        assert!(ThreadRunq(None).wait_ns().is_none());
        let Ok(f) = File::open("/proc/thread-self/schedstat") else {
            return; // kernel without CONFIG_SCHED_INFO: nothing to read
        };
        let r = ThreadRunq(Some(f));
        let a = r.wait_ns().expect("schedstat has a wait field");
        // Give the scheduler a chance to run others and us to queue again.
        for _ in 0..100 {
            std::thread::yield_now();
        }
        let b = r.wait_ns().unwrap();
        assert!(b >= a, "run-queue wait went backwards: {a} -> {b}");
    }
}
