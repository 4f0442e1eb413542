//! `crossmig run` behind its arguments: load scenario files, filter, list or
//! check them, run every variant with live progress, print the result table.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;

use super::{find_files, load, machine_lacks, missing_prerequisite, run_variant};

/// What `crossmig run` was asked to do.
#[derive(Clone, Debug, Default)]
pub struct RunRequest {
    /// Scenario files or directories (empty: `scenarios/`).
    pub files: Vec<PathBuf>,
    /// Only variants whose name contains this text.
    pub filter: Option<String>,
    /// List the variants and stop.
    pub list: bool,
    /// Check the files (parse, expand, validate) and stop.
    pub check: bool,
    /// Write a JSON report of the outcomes here.
    pub json: Option<PathBuf>,
}

/// Run a [`RunRequest`], printing progress to stderr and the result table to
/// stdout. True when every variant passed and every file loaded.
pub async fn run_files(req: RunRequest) -> Result<bool> {
    let RunRequest { files, filter, list, check, json } = req;
    let files = if files.is_empty() { vec![PathBuf::from("scenarios")] } else { files };
    let files = find_files(&files)?;
    let mut variants = Vec::new();
    let mut load_errors = 0;
    for f in &files {
        match load(f) {
            Ok(v) => variants.extend(v),
            Err(e) => {
                eprintln!("error: {e}");
                load_errors += 1;
            }
        }
    }
    if let Some(fl) = &filter {
        variants.retain(|v| v.name().contains(fl.as_str()));
    }
    if list || check {
        for v in &variants {
            println!("{}", v.name());
        }
        eprintln!(
            "{} file(s), {} variant(s), {} load error(s)",
            files.len(),
            variants.len(),
            load_errors
        );
        return Ok(load_errors == 0);
    }
    let mut outcomes = Vec::new();
    let t0 = Instant::now();
    for (i, v) in variants.iter().enumerate() {
        eprint!("[{}/{}] {} ... ", i + 1, variants.len(), v.name());
        let o = if let Some(m) = missing_prerequisite(v).or_else(|| machine_lacks(v)) {
            eprintln!("SKIPPED ({m})");
            continue;
        } else {
            run_variant(v).await
        };
        eprintln!("{} ({} ms)", if o.ok { "ok" } else { "FAILED" }, o.ms);
        if !o.ok {
            eprintln!("    {}", o.error.clone().unwrap_or_default().replace('\n', "\n    "));
        }
        outcomes.push(o);
    }
    println!("\n{:<60} {:>8} {:>9}", "variant", "result", "time");
    for o in &outcomes {
        println!("{:<60} {:>8} {:>7}ms", o.name, if o.ok { "ok" } else { "FAILED" }, o.ms);
    }
    let passed = outcomes.iter().filter(|o| o.ok).count();
    println!(
        "{} passed, {} failed ({} load errors) in {:.1}s",
        passed,
        outcomes.len() - passed,
        load_errors,
        t0.elapsed().as_secs_f64()
    );
    if let Some(j) = json {
        std::fs::write(&j, serde_json::to_vec_pretty(&outcomes)?)?;
        eprintln!("report written to {}", j.display());
    }
    Ok(passed == outcomes.len() && load_errors == 0)
}
