//! Stream scenarios: the synthetic source plays the records into a real QEMU
//! destination (the oracle) and rust-dest; both outcomes are compared with
//! the expectation by [`synth::Differential::problems`].

use anyhow::{Context, Result};
use serde_json::json;

use super::file::Variant;
use super::outcome::{Outcome, StepResult};
use super::qemu::{resolve_qemu, source_qemu};
use super::spec::StreamExpect;
use crate::synth;
use crate::vm::procs::unique_name;

/// Run a stream variant's `records`, recording one step result in `out`.
pub async fn run_stream(
    v: &Variant,
    records: &[synth::Step],
    exp: &StreamExpect,
    out: &mut Outcome,
) -> Result<()> {
    let qemu = resolve_qemu(source_qemu(v).as_deref())?;
    let layout = synth::source_layout(&qemu, synth::GUEST_MEM).await?;
    // A `vmdesc` record describes this script's device sections.
    let desc = synth::vmdesc_for(&layout, records);
    let mut script = records.to_vec();
    for s in script.iter_mut() {
        if let synth::Step::Vmdesc(vv) = s {
            if vv.is_null() {
                *vv = desc.clone();
            }
        }
    }
    // `[capabilities]` and `[dest] capabilities` / `parameters` go to both
    // destinations (e.g. `multifd` and `multifd-channels`).
    let capabilities = v
        .spec
        .capabilities
        .iter()
        .chain(&v.spec.dest.capabilities)
        .filter(|(c, _)| c.as_str() != "postcopy-ram")
        .map(|(c, on)| (c.clone(), *on))
        .collect();
    let parameters = v.spec.dest.parameters.as_object().filter(|p| !p.is_empty());
    let opts = synth::RunOpts {
        postcopy_ram: v.spec.capabilities.get("postcopy-ram").copied().unwrap_or(false),
        check_memory: exp.memory,
        capabilities,
        parameters: parameters.map(|p| serde_json::Value::Object(p.clone())),
        // `[source] machine`: the machine type of the synthetic source, which
        // both destinations are started with (e.g. a versioned one for
        // capabilities that only exist for old machine types).
        machine: v.spec.source.machine.clone(),
        ..Default::default()
    };
    let workdir = tempfile::Builder::new().prefix("crossmig-stream-").tempdir()?;
    let tag = unique_name("s");
    let d = synth::differential(
        &tag,
        &qemu,
        &layout,
        &script,
        exp.expectation(),
        &opts,
        workdir.path(),
    )
    .await
    .context("playing the records")?;
    let problems: Vec<String> = d.problems().iter().map(ToString::to_string).collect();
    for run in [&d.qemu, &d.rust] {
        out.destinations.push(json!({
            "destination": run.kind.name(),
            "verdict": run.verdict.kind().as_str(),
            // The status it was stuck in, "crashed (SIGSEGV)", ...
            "observed": run.observed().to_string(),
            "error": run.verdict.error(),
            "ms": run.total.as_millis() as u64,
        }));
    }
    let side_by_side = format!("\n  qemu: {}\n  rust: {}", d.qemu.summary(), d.rust.summary());
    out.steps.push(StepResult {
        index: 0,
        step: format!("play {} record(s) into qemu and rust-dest", script.len()),
        ok: problems.is_empty(),
        ms: d.qemu.total.max(d.rust.total).as_millis() as u64,
        detail: if problems.is_empty() {
            format!("both {}{side_by_side}", d.rust.verdict.kind())
        } else {
            format!("{}{side_by_side}", problems.join("; "))
        },
    });
    Ok(())
}
