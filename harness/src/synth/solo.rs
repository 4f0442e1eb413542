//! One script against rust-dest alone, with its simulated vCPUs running after
//! POSTCOPY_RUN (`cont` before `migrate-incoming`, a `--vcpu-pattern`): the
//! vCPUs fault on missing pages, rust-dest requests them on the return path,
//! the player answers from the RAM model, and the served pages enter the
//! model. There is no QEMU oracle here: a QEMU destination would run a real
//! guest from the synthetic RAM, which is no guest at all. Such a run is
//! judged against the script's model and expectation alone
//! ([`Solo::problems`]).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::differential::{dest_problems, run_script, DestRun, Expectation, Problem, RunOpts};
use super::layout::SourceLayout;
use super::step::Step;
use crate::vm::dest::DestKind;
use crate::vm::qemu::QemuBinary;

/// Why a run has no QEMU oracle (said in reports).
pub const NO_ORACLE: &str = "judged against the model alone: a QEMU destination cannot run a \
                             guest from synthetic RAM, so only rust-dest's simulated vCPUs \
                             request pages";

/// rust-dest's result for one script, judged alone.
#[derive(Debug)]
pub struct Solo {
    pub name: String,
    pub expect: Expectation,
    pub rust: DestRun,
    pub total: Duration,
}

impl Solo {
    /// Everything that differs from the expectation (verdict, error text,
    /// memory against the model including the pages served on request,
    /// page requests, return path, run state and limits).
    pub fn problems(&self) -> Vec<Problem> {
        dest_problems(&self.expect, &self.rust)
    }
}

/// Run `script` on rust-dest with autostart (`cont` before
/// `migrate-incoming`), so the vCPUs that `opts.rust_args` configure
/// (`--vcpu-pattern ...`) run as soon as POSTCOPY_RUN arrives.
pub async fn solo(
    name: &str,
    qemu: &QemuBinary,
    layout: &SourceLayout,
    script: &[Step],
    expect: impl Into<Expectation>,
    opts: &RunOpts,
    workdir: &Path,
) -> Result<Solo> {
    let t0 = Instant::now();
    let mut opts = opts.clone();
    opts.autostart = true;
    let rust = run_script(DestKind::Rust, qemu, layout, script, &opts, workdir, name)
        .await
        .context("rust-dest")?;
    Ok(Solo { name: name.into(), expect: expect.into(), rust, total: t0.elapsed() })
}
