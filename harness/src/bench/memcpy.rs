//! The machine's single-thread memcpy rate, the reference next to the
//! ingest rates (warm, into fresh anonymous pages, into fresh /dev/shm pages).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::sys::Mapping;
use crate::vm::procs::{unique_name, PathGuard};

/// The machine's single-thread memcpy rate.
#[derive(Clone, Debug, Serialize)]
pub struct MemcpyResult {
    pub bytes: u64,
    /// Warm (both buffers resident), median of the copies, GB/s.
    pub warm_gb_s: f64,
    pub warm_best_gb_s: f64,
    pub warm_runs_gb_s: Vec<f64>,
    /// First copy into fresh anonymous memory (page faults included).
    pub fresh_anon_gb_s: f64,
    /// First copy into a fresh shared /dev/shm mapping: what a destination
    /// writing a memory-backend-file does.
    pub fresh_shmem_gb_s: Option<f64>,
}

fn copy_gb_s(src: &Mapping, dst: &mut Mapping) -> f64 {
    let t = Instant::now();
    dst.copy_from(src);
    src.len() as f64 / t.elapsed().as_secs_f64() / 1e9
}

pub fn measure_memcpy(bytes: u64, warm_runs: usize) -> Result<MemcpyResult> {
    let n = bytes as usize;
    let mut src = Mapping::anonymous(n)?;
    src.fill(0x5a);
    let mut dst = Mapping::anonymous(n)?;
    let fresh_anon = copy_gb_s(&src, &mut dst);
    let mut warm: Vec<f64> = (0..warm_runs.max(1)).map(|_| copy_gb_s(&src, &mut dst)).collect();
    drop(dst);
    let shm = (|| -> Result<f64> {
        let path = PathBuf::from(format!("/dev/shm/{}.memcpy", unique_name("bench")));
        let _g = PathGuard::new(&path);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        f.set_len(bytes)?;
        let mut m =
            Mapping::shared_file(&f, n).map_err(|e| anyhow::anyhow!("mmap /dev/shm: {e}"))?;
        Ok(copy_gb_s(&src, &mut m))
    })();
    let runs = warm.clone();
    warm.sort_by(|a, b| a.total_cmp(b));
    Ok(MemcpyResult {
        bytes,
        warm_gb_s: warm[warm.len() / 2],
        warm_best_gb_s: *warm.last().unwrap(),
        warm_runs_gb_s: runs,
        fresh_anon_gb_s: fresh_anon,
        fresh_shmem_gb_s: shm.ok(),
    })
}
