//! Figures of the host and of processes: /proc CPU time and memory of a
//! destination, host description, load average, build profile of a binary.

use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

/// utime+stime of a process (all threads), seconds.
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime = field 14, stime = field 15.
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    let hz = crate::sys::clock_ticks_per_second() as f64;
    Some((ut + st) as f64 / hz)
}

/// Memory figures of /proc/<pid>/status (KiB).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcMem {
    pub vm_hwm_kib: u64,
    pub vm_rss_kib: u64,
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    pub rss_shmem_kib: u64,
}

pub fn proc_mem(pid: u32) -> Option<ProcMem> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut m = ProcMem::default();
    for l in s.lines() {
        let mut it = l.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let v: u64 = v.parse().unwrap_or(0);
        match k {
            "VmHWM:" => m.vm_hwm_kib = v,
            "VmRSS:" => m.vm_rss_kib = v,
            "RssAnon:" => m.rss_anon_kib = v,
            "RssFile:" => m.rss_file_kib = v,
            "RssShmem:" => m.rss_shmem_kib = v,
            _ => {}
        }
    }
    Some(m)
}

/// CPU seconds the whole machine spent busy (every CPU: user, nice,
/// system, irq, softirq, steal) since boot, from /proc/stat.
pub fn system_busy_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7)?;
    Some(busy as f64 / crate::sys::clock_ticks_per_second() as f64)
}

/// CPU seconds that neither the bench's own processes (`pids`, this
/// process) used between two readings: other work competing for the CPU.
#[derive(Clone, Debug)]
pub(super) struct ForeignCpu {
    busy0: Option<f64>,
    own0: Option<f64>,
    pids: Vec<u32>,
}

impl ForeignCpu {
    pub(super) fn start(pids: &[u32]) -> ForeignCpu {
        let pids: Vec<u32> = pids.iter().copied().chain([std::process::id()]).collect();
        ForeignCpu { busy0: system_busy_seconds(), own0: own_cpu(&pids), pids }
    }
    /// Foreign CPU seconds since [`ForeignCpu::start`].
    pub(super) fn end(&self) -> Option<f64> {
        let busy = system_busy_seconds()? - self.busy0?;
        let own = own_cpu(&self.pids)? - self.own0?;
        Some((busy - own).max(0.0))
    }
}

fn own_cpu(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|p| proc_cpu_seconds(*p)).sum()
}

pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(super) fn host_info() -> Value {
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|x| x.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "kernel": kernel,
        "mem_total_kib": mem_total,
        "loadavg_start": loadavg(),
    })
}

/// Release or debug build, from the path (target/<profile>/...).
pub(super) fn build_profile(p: &Path) -> String {
    let comps: Vec<String> =
        p.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if comps.iter().any(|c| c == "release") {
        "release".into()
    } else if comps.iter().any(|c| c == "debug") {
        "debug".into()
    } else {
        "unknown".into()
    }
}
