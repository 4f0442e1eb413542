//! `crossmig migrate` behind its arguments: one verified migration with a
//! header line, live progress on stderr, the summary and an optional JSON report.

use std::path::Path;

use anyhow::Result;

use super::migrate::{migrate, MigrateOpts, Mode};

/// Run one migration as `crossmig migrate` shows it. True when every check passed.
pub async fn run_one(o: &MigrateOpts, json: Option<&Path>) -> Result<bool> {
    eprintln!(
        "crossmig: {} {} migration, {} MiB {} guest, into {}",
        if o.stopped { "stopped" } else { "live" },
        match o.mode {
            Mode::Precopy => "precopy",
            Mode::Postcopy => "postcopy",
        },
        o.mem_bytes >> 20,
        o.workload.name(),
        o.dest
    );
    let report = migrate(o, |p| {
        eprintln!(
            "  {:>6.2}s  source {:<16} pass {:<3} {:>8} MiB sent | destination {}",
            p.t.as_secs_f64(),
            p.source_status,
            p.passes,
            p.transferred >> 20,
            p.dest_status
        );
    })
    .await?;
    print!("{}", report.summary());
    if let Some(j) = json {
        std::fs::write(j, serde_json::to_vec_pretty(&report)?)?;
        eprintln!("report written to {}", j.display());
    }
    Ok(report.ok())
}
