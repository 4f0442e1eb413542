//! Running one variant: its time limit, its kind's runner, its outcome.

use std::time::Instant;

use super::file::Variant;
use super::migration::run_migration;
use super::outcome::Outcome;
use super::spec::Body;
use super::stream::run_stream;

/// Run one variant with its time limit. Never panics; all processes and
/// files it started are gone when it returns.
pub async fn run_variant(v: &Variant) -> Outcome {
    let limit = v.spec.timeout;
    let t0 = Instant::now();
    let mut out = Outcome {
        name: v.name(),
        file: v.file.display().to_string(),
        ok: false,
        error: None,
        ms: 0,
        steps: vec![],
        samples: vec![],
        destinations: vec![],
        retry: None,
    };
    let res = tokio::time::timeout(limit, async {
        match &v.spec.body {
            Body::Migration { steps } => run_migration(v, steps, &mut out).await,
            Body::Stream { records, expect } => run_stream(v, records, expect, &mut out).await,
        }
    })
    .await;
    match res {
        Ok(Ok(())) => out.ok = out.steps.iter().all(|s| s.ok),
        Ok(Err(e)) => out.error = Some(format!("{e:#}")),
        Err(_) => out.error = Some(format!("time limit of {limit:?} exceeded")),
    }
    if out.error.is_none() && !out.ok {
        let s = out.steps.iter().find(|s| !s.ok).unwrap();
        out.error = Some(format!("step {} ({}) failed: {}", s.index, s.step, s.detail));
    }
    out.ms = t0.elapsed().as_millis() as u64;
    out.clean_text();
    out
}
