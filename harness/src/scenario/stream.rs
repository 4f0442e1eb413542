//! Stream scenarios: the synthetic source plays the records into a real QEMU
//! destination (the oracle) and rust-dest; both outcomes are compared with
//! the expectation by [`synth::Differential::problems`].

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use super::file::Variant;
use super::outcome::{Outcome, StepResult};
use super::qemu::{resolve_qemu, source_qemu};
use super::spec::StreamExpect;
use crate::synth;
use crate::vm::dest::DestKind;
use crate::vm::procs::unique_name;

/// What playing a stream variant needs: the source QEMU (the oracle's
/// version), its layout, the script with its vmdesc filled in, and the
/// destinations' options from the variant's `[capabilities]` and `[dest]`.
pub struct StreamSetup {
    pub qemu: crate::vm::qemu::QemuBinary,
    pub layout: std::sync::Arc<synth::SourceLayout>,
    pub script: Vec<synth::Step>,
    pub opts: synth::RunOpts,
}

/// Prepare a stream variant's `records` for playing ([`StreamSetup`]).
pub async fn stream_setup(
    v: &Variant,
    records: &[synth::Step],
    exp: &StreamExpect,
) -> Result<StreamSetup> {
    let qemu = resolve_qemu(source_qemu(v).as_deref())?;
    let layout = synth::source_layout(&qemu, synth::GUEST_MEM).await?;
    // A `vmdesc` record describes this script's device sections.
    let desc = synth::vmdesc_for(&layout, records);
    let mut script = records.to_vec();
    for s in script.iter_mut() {
        if let synth::Step::Vmdesc { desc: vv, .. } = s {
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
        // `source.machine`: the destinations' machine (the header's machine
        // name is the real source's unless the `header` record sets one).
        machine: v.spec.source.machine.clone(),
        capabilities,
        parameters: parameters.map(|p| serde_json::Value::Object(p.clone())),
        ..Default::default()
    };
    Ok(StreamSetup { qemu, layout, script, opts })
}

/// Run a stream variant's `records`, recording one step result in `out`.
pub async fn run_stream(
    v: &Variant,
    records: &[synth::Step],
    exp: &StreamExpect,
    out: &mut Outcome,
) -> Result<()> {
    let StreamSetup { qemu, layout, script, mut opts } = stream_setup(v, records, exp).await?;
    let workdir = tempfile::Builder::new().prefix("crossmig-stream-").tempdir()?;
    let tag = unique_name("s");
    if let Some(vcpus) = &v.spec.dest.vcpus {
        opts.rust_args = vcpus.args();
        let s =
            synth::solo(&tag, &qemu, &layout, &script, exp.expectation(), &opts, workdir.path())
                .await
                .context("playing the records")?;
        let problems: Vec<String> = s.problems().iter().map(ToString::to_string).collect();
        out.destinations.push(dest_json(&s.rust, Some(synth::NO_ORACLE)));
        out.steps.push(StepResult {
            index: 0,
            step: format!(
                "play {} record(s) into rust-dest with vCPUs running ({})",
                script.len(),
                vcpus.pattern
            ),
            ok: problems.is_empty(),
            ms: s.rust.total.as_millis() as u64,
            detail: format!(
                "{}; {}\n  rust: {}",
                if problems.is_empty() {
                    format!("{}", s.rust.verdict.kind())
                } else {
                    problems.join("; ")
                },
                synth::NO_ORACLE,
                s.rust.summary()
            ),
        });
        return Ok(());
    }
    let t0 = Instant::now();
    let (q, r) =
        synth::differential_parts(&tag, &qemu, &layout, &script, &opts, workdir.path()).await;
    record(out, &tag, script.len(), exp.expectation(), q, r, t0.elapsed());
    Ok(())
}

/// Record both destinations' runs in `out`: each verdict (also when the
/// other destination could not run, or a check after the verdict failed)
/// and one step judged by [`synth::Differential::problems`].
fn record(
    out: &mut Outcome,
    tag: &str,
    records: usize,
    expect: synth::Expectation,
    q: Result<synth::DestRun>,
    r: Result<synth::DestRun>,
    total: Duration,
) {
    for (kind, run) in [(DestKind::Qemu, &q), (DestKind::Rust, &r)] {
        out.destinations.push(match run {
            Ok(run) => dest_json(run, None),
            Err(e) => json!({
                "destination": kind.name(),
                "verdict": null,
                "error": format!("{e:#}"),
            }),
        });
    }
    let step = format!("play {records} record(s) into qemu and rust-dest");
    let (q, r) = match (q, r) {
        (Ok(q), Ok(r)) => (q, r),
        (q, r) => {
            let e = |x: &Result<synth::DestRun>| match x {
                Ok(run) => run.summary(),
                Err(e) => format!("{e:#}"),
            };
            out.steps.push(StepResult {
                index: 0,
                step,
                ok: false,
                ms: total.as_millis() as u64,
                detail: format!(
                    "a destination could not run\n  qemu: {}\n  rust: {}",
                    e(&q),
                    e(&r)
                ),
            });
            return;
        }
    };
    let d = synth::Differential { name: tag.into(), expect, qemu: q, rust: r, total };
    let problems: Vec<String> = d.problems().iter().map(ToString::to_string).collect();
    let side_by_side = format!("\n  qemu: {}\n  rust: {}", d.qemu.summary(), d.rust.summary());
    out.steps.push(StepResult {
        index: 0,
        step,
        ok: problems.is_empty(),
        ms: d.qemu.total.max(d.rust.total).as_millis() as u64,
        detail: if problems.is_empty() {
            format!("both {}{side_by_side}", d.rust.verdict.kind())
        } else {
            format!("{}{side_by_side}", problems.join("; "))
        },
    });
}

/// One destination's entry in the report: verdict, error, measurements,
/// and (for runs without the QEMU oracle) how it was judged.
fn dest_json(run: &synth::DestRun, judged: Option<&str>) -> serde_json::Value {
    let mut j = json!({
        "destination": run.kind.name(),
        "verdict": run.verdict.kind().as_str(),
        // The status it was stuck in, "crashed", ...
        "observed": run.observed().to_string(),
        "error": run.verdict.error(),
        "ms": run.total.as_millis() as u64,
        "measured": run.measured,
    });
    if let Some(p) = &run.play {
        j["page-requests-served"] = p.page_requests_served.into();
        j["pages-served"] = p.pages_served.into();
    }
    if let Some(m) = &run.memory {
        j["memory"] = m.to_string().into();
    }
    if let Some(e) = &run.check_error {
        j["check-error"] = e.as_str().into();
    }
    if let Some(how) = judged {
        j["judged"] = how.into();
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{DestRun, Expect, Verdict};

    fn run(kind: DestKind, check_error: Option<&str>) -> DestRun {
        DestRun {
            kind,
            verdict: Verdict::Completed,
            play: None,
            play_error: None,
            memory: None,
            rust_blocks: None,
            check_error: check_error.map(String::from),
            log_tail: String::new(),
            total: Duration::from_millis(5),
            measured: Default::default(),
            pid: 0,
            paths: vec![],
        }
    }

    fn outcome() -> Outcome {
        Outcome {
            name: "s".into(),
            file: "s.toml".into(),
            ok: false,
            error: None,
            ms: 0,
            steps: vec![],
            samples: vec![],
            destinations: vec![],
            retry: None,
        }
    }

    /// QEMU 11.1 can send SHUT(1) and stay in `postcopy-device`: it failed
    /// (docs/qemu-bugs.md), and agrees with a failed rust-dest.
    #[test]
    fn a_destination_that_sent_shut_1_failed_whatever_its_status() {
        use crate::qmp::MigrationStatus;
        use wire::rp::RpMessage;
        let judge = |shut: bool| {
            let mut q = run(DestKind::Qemu, None);
            q.verdict =
                Verdict::Stuck { status: Some(MigrationStatus::PostcopyDevice), detail: "".into() };
            q.play = shut.then(|| crate::synth::PlayResult {
                rp_messages: vec![RpMessage::Pong(1), RpMessage::Shut(1)],
                ..Default::default()
            });
            let mut r = run(DestKind::Rust, None);
            r.verdict = Verdict::Failed("DISCARD in state listening".into());
            let mut out = outcome();
            record(&mut out, "s", 3, Expect::Failed.into(), Ok(q), Ok(r), Duration::ZERO);
            out.steps.remove(0)
        };
        let s = judge(true);
        assert!(s.ok, "{s:?}");
        // Without SHUT(1) it is stuck: a disagreement.
        let s = judge(false);
        assert!(!s.ok && s.detail.contains("DISAGREEMENT"), "{s:?}");
    }

    /// A check after the comparison failed (reading rust-dest's RAM file):
    /// both verdicts stay in the report, the step fails and says why.
    #[test]
    fn failures_after_the_verdict_keep_both_verdicts() {
        let mut out = outcome();
        let q = Ok(run(DestKind::Qemu, None));
        let r = Ok(run(DestKind::Rust, Some("reading /dev/shm/x: No such file or directory")));
        record(&mut out, "s", 3, Expect::Completed.into(), q, r, Duration::ZERO);
        assert_eq!(out.destinations.len(), 2);
        assert_eq!(out.destinations[0]["verdict"], "completed");
        assert_eq!(out.destinations[1]["verdict"], "completed");
        assert!(out.destinations[1]["check-error"].as_str().unwrap().contains("/dev/shm/x"));
        assert_eq!(out.steps.len(), 1);
        assert!(!out.steps[0].ok);
        assert!(out.steps[0].detail.contains("check after the verdict failed"), "{:?}", out.steps);
        // One destination could not run at all: the other's verdict is kept.
        let mut out = outcome();
        let q = Err(anyhow::anyhow!("QEMU destination: could not start"));
        record(
            &mut out,
            "s",
            3,
            Expect::Completed.into(),
            q,
            Ok(run(DestKind::Rust, None)),
            Duration::ZERO,
        );
        assert_eq!(out.destinations[0]["verdict"], serde_json::Value::Null);
        assert!(out.destinations[0]["error"].as_str().unwrap().contains("could not start"));
        assert_eq!(out.destinations[1]["verdict"], "completed");
        assert!(!out.steps[0].ok && out.steps[0].detail.contains("could not run"));
    }
}
