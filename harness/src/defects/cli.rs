//! `crossmig defects`: load the catalogue, run it (or one entry), print
//! progress and the table, write JSON; false when crossmig missed any.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Result};

use super::catalogue::{default_dir, load_dir};
use super::runner::{control_passed, controls_for, default_jobs, run_all, RunConfig};
use super::table::{markdown, row, totals, Report};

/// What `crossmig defects` was asked.
#[derive(Clone, Debug, Default)]
pub struct DefectsRequest {
    /// Only the defect of this name.
    pub only: Option<String>,
    /// Only the fast subset.
    pub fast: bool,
    pub json: Option<PathBuf>,
    /// Catalogue folder (default: `harness/defects/`).
    pub dir: Option<PathBuf>,
    /// Migrations at once (None: [`default_jobs`]).
    pub jobs: Option<usize>,
}

pub async fn run_defects(req: DefectsRequest) -> Result<bool> {
    let dir = req.dir.clone().unwrap_or_else(default_dir);
    let mut all = load_dir(&dir)?;
    if let Some(n) = &req.only {
        all.retain(|d| &d.name == n);
        if all.is_empty() {
            bail!("no defect named {n:?} in {}", dir.display());
        }
    }
    if req.fast {
        all.retain(|d| d.fast);
    }
    let cfg = RunConfig { jobs: req.jobs.unwrap_or_else(default_jobs), ..RunConfig::default() };
    println!("{} defect(s), {} migration(s) at once", all.len(), cfg.jobs.max(1));
    let t = std::time::Instant::now();
    // Controls first: no defect, every check must pass.
    let ctl = run_all(&controls_for(&all), &cfg, |_| {}).await;
    let mut controls_ok = true;
    for r in &ctl {
        let ok = control_passed(r);
        controls_ok &= ok;
        let why: Vec<String> = [&r.rust, &r.qemu]
            .into_iter()
            .flatten()
            .filter(|o| o.caught())
            .map(|o| o.detail.clone())
            .chain(r.error.clone())
            .collect();
        println!(
            "{:<28} {}{}",
            r.defect.name,
            match (ok, &r.defect.scenario) {
                (true, None) => "ok: every check passed into rust-dest and QEMU".to_string(),
                (true, Some(sc)) => format!("ok: {sc} passes into rust-dest and QEMU"),
                (false, _) => "FAILED".to_string(),
            },
            if why.is_empty() { String::new() } else { format!(": {}", why.join("; ")) }
        );
    }
    let results = run_all(&all, &cfg, |r| {
        let w = row(r);
        let ms: u64 = [&r.rust, &r.qemu].into_iter().flatten().map(|o| o.ms).sum();
        println!(
            "{:<28} a: {} | b: {} | c: {} | d: {}{} ({ms} ms)",
            w.name,
            w.a_crossmig_rust_dest,
            w.b_crossmig_qemu_dest,
            w.c_qemu_dest_alone,
            w.d_invariant_only,
            w.error.map(|e| format!(" | ERROR: {e}")).unwrap_or_default()
        );
        let _ = std::io::stdout().flush();
    })
    .await;
    println!("\n{}", markdown(&results));
    println!("catalogue ran in {:.1} s", t.elapsed().as_secs_f64());
    if let Some(p) = &req.json {
        let rep = Report {
            rows: results.iter().map(row).collect(),
            totals: totals(&results),
            results: &results,
        };
        std::fs::write(p, serde_json::to_string_pretty(&rep)?)?;
    }
    Ok(controls_ok && results.iter().all(|r| r.crossmig_caught()))
}
