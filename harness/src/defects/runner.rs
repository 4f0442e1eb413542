//! Running the catalogue: each source-side defect into rust-dest and into
//! QEMU's destination (the same mutation on the same kind of migration),
//! each destination-side defect into rust-dest's `seeded-defects` build;
//! what caught it is recorded per column of the table (`table.rs`):
//! (a) crossmig against rust-dest, (b) crossmig against QEMU's destination,
//! (c) QEMU's destination on its own (does the migration fail), (d) the
//! guest's own invariant alone (the sweep guest's pattern, as QEMU's qtest
//! checks memory; a migration that does not complete counts as caught there
//! too, since such a test notices that). Destination-side entries with a
//! `scenario` play a stream script instead (`stream.rs`). [`run_all`] runs
//! up to `jobs` migrations at once (a source-side defect's two runs, into
//! rust-dest and QEMU, side by side).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tokio::sync::Semaphore;

use super::catalogue::{Defect, MigrationKind, Side};
use super::channel::Shared;
use super::mutation::Mutation;
pub use super::outcome::{
    default_jobs, defect_rust_dest, DefectResult, RunConfig, RunOutcome, NOT_COMPLETED,
};
use crate::drive::migrate::{migrate, MigrateOpts, MigrateReport, Mode};
use crate::scenario::qemu::resolve_qemu;
use crate::vm::dest::{rust_dest_binary, DestKind};

/// Guest RAM of every defect run (small: the catalogue runs in minutes).
const MEM: u64 = 64 << 20;
/// A defect that hangs a migration is caught by this timeout.
const TIMEOUT: Duration = Duration::from_secs(25);
fn mode_of(d: &Defect) -> Result<(Mode, Vec<(String, bool)>)> {
    Ok(match d.migration {
        MigrationKind::Precopy => (Mode::Precopy, Vec::new()),
        MigrationKind::Postcopy => (Mode::Postcopy, Vec::new()),
        MigrationKind::PostcopyPreempt => (Mode::Postcopy, vec![("postcopy-preempt".into(), true)]),
        MigrationKind::Multifd => (Mode::Precopy, vec![("multifd".into(), true)]),
        MigrationKind::PostcopyRecovery => (Mode::Postcopy, Vec::new()),
    })
}

/// Precopy mutations of pages sent once run with a stopped guest (every
/// page is sent exactly once, so a changed page is never re-sent), and so
/// do destination-side multifd defects (a page misplaced in one pass would
/// otherwise be repaired when a live guest redirties it, so whether the
/// defect shows depended on timing); the others need a live guest
/// (re-sent pages, discards, page requests).
fn stopped(d: &Defect) -> bool {
    let source_page = d.migration == MigrationKind::Precopy
        && d.side == Side::Source
        && d.mutation()
            .is_ok_and(|m| !matches!(m, Mutation::StaleRedirtiedPage | Mutation::Nothing));
    source_page || (d.migration == MigrationKind::Multifd && d.side == Side::Dest)
}

/// The control runs: no defect, live precopy and postcopy, into both
/// destinations. Every check must pass there, or the table's "caught"
/// means nothing.
pub fn controls() -> Vec<Defect> {
    live_controls(&[MigrationKind::Precopy, MigrationKind::Postcopy])
}

fn live_controls(kinds: &[MigrationKind]) -> Vec<Defect> {
    kinds
        .iter()
        .map(|&k| Defect {
            name: format!("control-{}", k.name()),
            side: Side::Source,
            inject: Mutation::Nothing.name().into(),
            class: "none (control: every check must pass)".into(),
            reference: String::new(),
            migration: k,
            qemu: "10.0".into(),
            fast: true,
            scenario: None,
        })
        .collect()
}

/// The controls of `defects`: [`controls`], one more live control for
/// every other kind of migration they run (postcopy-preempt, recovery,
/// multifd), and for every stream scenario they play, the same script into
/// the normal rust-dest and QEMU (every judgement must pass there).
pub fn controls_for(defects: &[Defect]) -> Vec<Defect> {
    let mut kinds = vec![MigrationKind::Precopy, MigrationKind::Postcopy];
    for d in defects.iter().filter(|d| d.scenario.is_none()) {
        if !kinds.contains(&d.migration) {
            kinds.push(d.migration);
        }
    }
    let mut c = live_controls(&kinds);
    for d in defects {
        let Some(sc) = &d.scenario else { continue };
        if c.iter().any(|x| x.scenario.as_ref() == Some(sc) && x.qemu == d.qemu) {
            continue;
        }
        c.push(Defect {
            name: format!("control-{sc}"),
            side: Side::Source,
            inject: Mutation::Nothing.name().into(),
            class: "none (control: the stream scenario passes into the normal rust-dest)".into(),
            reference: String::new(),
            migration: d.migration,
            qemu: d.qemu.clone(),
            fast: true,
            scenario: Some(sc.clone()),
        });
    }
    c
}

/// A control run passed: it ran, and no check failed anywhere.
pub fn control_passed(r: &DefectResult) -> bool {
    // A stream control has no separate QEMU run: its oracle must meet the
    // script's expectation, or the run is an error.
    let qemu_ran = r.defect.scenario.is_none();
    r.error.is_none()
        && r.rust.as_ref().is_some_and(|o| !o.caught())
        && (!qemu_ran || r.qemu.as_ref().is_some_and(|o| !o.caught()))
}

/// One migration with the defect into `dest`.
async fn run_one(d: &Defect, dest: DestKind, cfg: &RunConfig) -> Result<RunOutcome> {
    let qemu = resolve_qemu(Some(&d.qemu))?;
    let (mode, caps) = mode_of(d)?;
    let mut o = MigrateOpts::new(dest, mode, qemu);
    o.mem_bytes = MEM;
    o.timeout = TIMEOUT;
    o.stopped = stopped(d);
    o.extra_caps = caps;
    o.record = true;
    if d.migration == MigrationKind::PostcopyRecovery {
        // One pause and recovery during postcopy (`crossmig migrate --recover 1`).
        o.recover_cuts = 1;
    }
    let shared = Arc::new(Shared::default());
    match d.side {
        Side::Source => o.mutation = Some((d.mutation()?, shared.clone())),
        Side::Dest => {
            let bin = super::outcome::seeded_binary(cfg)?;
            o.rust_dest = Some(bin);
            o.dest_env = vec![("CROSSMIG_DEFECT".into(), d.inject.clone())];
        }
    }
    if o.rust_dest.is_none() {
        // Every other run uses the normal rust-dest, never the defects build.
        let normal = rust_dest_binary()?;
        if normal.components().any(|c| c.as_os_str() == "defects") {
            bail!("the normal rust-dest {} looks like the seeded-defects build", normal.display());
        }
    }
    let t = Instant::now();
    let r: Result<MigrateReport> = migrate(&o, |_| {}).await;
    let ms = t.elapsed().as_millis() as u64;
    let applied = shared.applied();
    Ok(match r {
        Ok(rep) => {
            let failed: Vec<&crate::verify::Check> = rep.checks.iter().filter(|c| !c.ok).collect();
            RunOutcome {
                completed: true,
                failed: failed.iter().map(|c| c.name.clone()).collect(),
                guest: true,
                invariant_ok: rep
                    .checks
                    .iter()
                    .find(|c| c.name.contains("invariant"))
                    .map(|c| c.ok),
                applied,
                detail: failed
                    .iter()
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect::<Vec<_>>()
                    .join("; "),
                ms,
            }
        }
        Err(e) => RunOutcome {
            completed: false,
            failed: vec![NOT_COMPLETED.into()],
            invariant_ok: None,
            guest: true,
            applied,
            detail: format!("{e:#}").lines().next().unwrap_or_default().to_string(),
            ms,
        },
    })
}

/// Run one catalogue entry: into rust-dest, and for source-side defects
/// into QEMU's destination too (up to `cfg.jobs` migrations at once).
pub async fn run_defect(d: &Defect, cfg: &RunConfig) -> DefectResult {
    run_defect_in(d, cfg, &Semaphore::new(cfg.jobs.max(1))).await
}

/// [`run_defect`], each migration holding one permit of `limit`.
async fn run_defect_in(d: &Defect, cfg: &RunConfig, limit: &Semaphore) -> DefectResult {
    let mut res = DefectResult { defect: d.clone(), rust: None, qemu: None, error: None };
    let one = |dest: DestKind| async move {
        let _permit = limit.acquire().await.context("the job limit is closed")?;
        match (&d.scenario, dest) {
            (Some(_), _) => super::stream::run_stream_defect(d, cfg).await,
            (None, dest) => run_one(d, dest, cfg).await,
        }
    };
    let (rust, qemu) = if d.side == Side::Source && d.scenario.is_none() {
        let (r, q) = tokio::join!(one(DestKind::Rust), one(DestKind::Qemu));
        (r, Some(q))
    } else {
        (one(DestKind::Rust).await, None)
    };
    for (slot, r) in [(&mut res.rust, Some(rust)), (&mut res.qemu, qemu)] {
        match r {
            Some(Ok(o)) => *slot = Some(o),
            Some(Err(e)) => {
                res.error.get_or_insert_with(|| format!("{e:#}"));
            }
            None => {}
        }
    }
    if res.error.is_some() {
        return res;
    }
    if d.side == Side::Source && d.scenario.is_none() {
        let not_injected =
            [&res.rust, &res.qemu].into_iter().flatten().filter(|o| o.applied.is_empty()).count();
        let control = d.mutation().is_ok_and(|m| m == Mutation::Nothing);
        if not_injected > 0 && !control {
            res.error = Some(format!(
                "the mutation found nothing to change in {not_injected} of 2 runs (not injected)"
            ));
        }
    }
    res
}

/// Run `defects`, up to `cfg.jobs` migrations at once, calling `each` with
/// every result in catalogue order; the results in catalogue order.
pub async fn run_all(
    defects: &[Defect],
    cfg: &RunConfig,
    mut each: impl FnMut(&DefectResult),
) -> Vec<DefectResult> {
    let limit = Arc::new(Semaphore::new(cfg.jobs.max(1)));
    let handles: Vec<_> = defects
        .iter()
        .map(|d| {
            let (d, cfg, limit) = (d.clone(), cfg.clone(), limit.clone());
            tokio::spawn(async move { run_defect_in(&d, &cfg, &limit).await })
        })
        .collect();
    let mut out = Vec::new();
    for (d, h) in defects.iter().zip(handles) {
        let r = h.await.unwrap_or_else(|e| DefectResult {
            defect: d.clone(),
            rust: None,
            qemu: None,
            error: Some(format!("the run of {} panicked: {e}", d.name)),
        });
        each(&r);
        out.push(r);
    }
    out
}
