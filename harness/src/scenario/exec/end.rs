//! The end of a migration variant: what `[expect]` asks of the destination
//! once every step ran (its run state, peak RSS and migration time, see
//! `verify::limits`).

use std::time::Duration;

use anyhow::{bail, Result};

use super::Ctx;
use crate::qmp::MigrationStatus;
use crate::verify::limits::{check_end, DestExpect, Measured};

/// Measure the destination and check it against `want`; `peak_rss` comes
/// from the probe that sampled it since it started.
pub async fn check_dest_end(ctx: &Ctx, want: &DestExpect, peak_rss: Option<u64>) -> Result<String> {
    let dst = &ctx.m.dst;
    let run_state = match dst.child.is_running() {
        true => dst.qmp.run_state().await.ok(),
        false => None,
    };
    // The first sample (every 20 ms while a step waits) in which the
    // destination reports a final status, counted from the `migrate` step.
    let time = ctx
        .m
        .samples()
        .iter()
        .find(|s| {
            matches!(
                MigrationStatus::of(&s.dest),
                MigrationStatus::Completed | MigrationStatus::Failed
            )
        })
        .map(|s| Duration::from_millis(s.t_ms));
    let got = Measured { run_state, peak_rss, time };
    let problems = check_end(want, &got);
    if !problems.is_empty() {
        let p: Vec<String> = problems.iter().map(ToString::to_string).collect();
        bail!("destination: {} ({got})", p.join("; "));
    }
    Ok(format!("destination: {got}"))
}
