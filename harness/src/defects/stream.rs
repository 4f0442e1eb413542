//! Destination-side defects that only a stream scenario shows (a live
//! migration of the test guests ends with the same RAM: see
//! `docs/seeded-defects.md`): the catalogue entry's `scenario` is played by
//! the synthetic source into the seeded-defects rust-dest and into QEMU's
//! destination (the oracle) at once, and judged exactly as the stream
//! scenario suite judges it (`synth::Differential::problems`: the verdicts
//! agree, each meets the script's expectation, memory equals the script's
//! model). The oracle must meet the expectation, or the run proves nothing.

use std::time::Instant;

use anyhow::{anyhow, bail, Context as _, Result};

use super::catalogue::{scenarios_dir, Defect, Side};
use super::mutation::Mutation;
use super::outcome::{RunConfig, RunOutcome, NOT_COMPLETED};
use crate::scenario::file::load;
use crate::scenario::qemu::source_qemu;
use crate::scenario::spec::Body;
use crate::scenario::stream::{stream_setup, StreamSetup};
use crate::synth::differential::{dest_problems, differential_parts, Problem};
use crate::synth::VerdictKind;
use crate::vm::dest::rust_dest_binary;
use crate::vm::procs::unique_name;

/// The check a stream problem stands for (the name in the table).
fn check_name(p: &Problem) -> &'static str {
    match p {
        Problem::Disagreement { .. } => "verdict same as QEMU's destination",
        Problem::Verdict { .. } | Problem::BugVerdict { .. } => "verdict as the script expects",
        Problem::ErrorText { .. } => "error text as the script expects",
        Problem::PlayError { .. } | Problem::Aborted { .. } => "script played to its end",
        Problem::Memory { .. } => "memory equals the script's model",
        Problem::Pongs { .. } => "PONGs as the script expects",
        Problem::Shut { .. } => "SHUT as the script expects",
        Problem::UnmetRp { .. } => "return-path expectations met",
        Problem::End { .. } => "end-of-run limits",
        Problem::PageRequests { .. } | Problem::PageRequestErrors { .. } => {
            "page requests as the script expects"
        }
        Problem::CheckError { .. } => "checks after the verdict ran",
    }
}

/// Play `d.scenario` (its variant for `d.qemu`) into rust-dest (the defect
/// build with `CROSSMIG_DEFECT`, or for a control the normal build) and
/// QEMU's destination. Err: the run proves nothing (no such variant, a
/// destination could not start, the oracle missed the expectation).
pub async fn run_stream_defect(d: &Defect, cfg: &RunConfig) -> Result<RunOutcome> {
    let sc = d.scenario.as_deref().context("not a stream-scenario defect")?;
    let path = scenarios_dir().join(format!("{sc}.toml"));
    let variants = load(&path).map_err(|e| anyhow!("{e}"))?;
    let v = variants
        .into_iter()
        .find(|v| source_qemu(v).as_deref() == Some(d.qemu.as_str()))
        .with_context(|| format!("{}: no variant for QEMU {}", path.display(), d.qemu))?;
    let Body::Stream { records, expect } = &v.spec.body else {
        bail!("{}: not a stream scenario", path.display());
    };
    if v.spec.dest.vcpus.is_some() {
        bail!("{}: [dest.vcpus] scripts have no QEMU oracle; not usable here", path.display());
    }
    let StreamSetup { qemu, layout, script, mut opts } = stream_setup(&v, records, expect).await?;
    match d.side {
        Side::Dest => {
            let bin = super::outcome::seeded_binary(cfg)?;
            opts.rust_dest = Some(bin);
            opts.rust_env = vec![("CROSSMIG_DEFECT".into(), d.inject.clone())];
        }
        Side::Source if d.mutation().is_ok_and(|m| m == Mutation::Nothing) => {
            let normal = rust_dest_binary()?;
            if normal.components().any(|c| c.as_os_str() == "defects") {
                bail!(
                    "the normal rust-dest {} looks like the seeded-defects build",
                    normal.display()
                );
            }
        }
        Side::Source => bail!("a source-side mutation cannot run in a stream scenario"),
    }
    let workdir = tempfile::Builder::new().prefix("crossmig-defect-").tempdir()?;
    let tag = unique_name("d");
    let t = Instant::now();
    let played = tokio::time::timeout(
        v.spec.timeout,
        differential_parts(&tag, &qemu, &layout, &script, &opts, workdir.path()),
    )
    .await;
    let ms = t.elapsed().as_millis() as u64;
    let Ok((q, r)) = played else {
        return Ok(RunOutcome {
            completed: false,
            failed: vec![NOT_COMPLETED.into()],
            invariant_ok: None,
            guest: false,
            applied: Vec::new(),
            detail: format!("{sc}: time limit of {:?} exceeded", v.spec.timeout),
            ms,
        });
    };
    let (q, r) = (q?, r?);
    let x = expect.expectation();
    let oracle = dest_problems(&x, &q);
    if !oracle.is_empty() {
        let o: Vec<String> = oracle.iter().map(ToString::to_string).collect();
        bail!(
            "{sc}: QEMU's destination (the oracle) misses the script's expectation: {}",
            o.join("; ")
        );
    }
    let mut problems = Vec::new();
    if x.qemu_verdict.is_none() && q.verdict.kind() != r.verdict.kind() {
        problems.push(Problem::Disagreement { qemu: q.verdict.kind(), rust: r.verdict.kind() });
    }
    problems.extend(dest_problems(&x, &r));
    let mut failed: Vec<String> = Vec::new();
    for p in &problems {
        let n = format!("{sc}: {}", check_name(p));
        if !failed.contains(&n) {
            failed.push(n);
        }
    }
    Ok(RunOutcome {
        completed: r.verdict.kind() == VerdictKind::Completed,
        failed,
        invariant_ok: None,
        guest: false,
        applied: Vec::new(),
        detail: problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        ms,
    })
}
