//! Migration scenarios: start the real QEMU source with its test guest and the
//! destination, set capabilities and parameters on the shared migration
//! session (`drive::session::Migration`), then run the steps in order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;

use super::cases::judge;
use super::exec::check::postcopy_evidence;
use super::exec::{check_dest_end, exec_step, Ctx};
use super::file::Variant;
use super::outcome::{Outcome, StepResult};
use super::qemu::{common_machine, resolve_qemu, source_qemu};
use super::spec::Spec;
use super::steps::{Side, Step, StepSpec};
use crate::drive::session::Migration;

use crate::qmp::MigrationStatus;
use crate::verify::limits::RssProbe;
use crate::vm::dest::{start_dest, DestKind};
use crate::vm::hugepages::{HugeTlb, POOL_WAIT};
use crate::vm::procs::{unique_name, PathGuard};
use crate::vm::qemu::{QemuVm, VmConfig};

/// Run a migration variant's `steps`, recording each in `out`.
pub async fn run_migration(v: &Variant, steps: &[StepSpec], out: &mut Outcome) -> Result<()> {
    let d = &v.spec;
    let qemu = resolve_qemu(source_qemu(v).as_deref())?;
    let dq = match &d.dest.qemu {
        Some(q) => resolve_qemu(Some(q))?,
        None => qemu.clone(),
    };
    let (dest_kind, mem, workload) = (d.dest.kind, d.source.memory, d.source.workload);
    let machine = d.source.machine.clone().unwrap_or_else(|| common_machine(&qemu, &dq));
    let workdir = std::env::temp_dir();
    let tag = unique_name("scn");
    let disk = workdir.join(format!("{tag}.img"));
    std::fs::copy(workload.image_path(), &disk)?;
    let disk_guard = PathGuard::new(&disk);
    // Huge pages outlive both VMs (declared before them, dropped after).
    let huge = match d.source.hugepages {
        Some(hp) => Some(HugeTlb::setup_waiting(hp, 2 * mem / hp, POOL_WAIT).await?),
        None => None,
    };
    let mut scfg = VmConfig::new("scn-src", mem);
    if let Some(h) = &huge {
        scfg.mem_path = h.file(&format!("{tag}-src.ram"));
    }
    scfg.machine = machine.clone();
    scfg.disk = Some(disk.clone());
    scfg.extra = d.source.args.clone();
    let serial = workdir.join(format!("{tag}-src.serial"));
    let _serial_guard = PathGuard::new(&serial);
    scfg.serial_log = Some(serial);
    let src_log = workdir.join(format!("{tag}-src.log"));
    let _l1 = PathGuard::new(&src_log);
    let src = QemuVm::start(&qemu, scfg, src_log.clone()).await?;
    let marker = workload.ready_marker();
    src.wait_serial(|s| s.contains(marker), Duration::from_secs(60)).await?;
    if d.source.stopped {
        src.execute("stop", Value::Null).await?;
    }
    let mut dcfg = VmConfig::new(&format!("scn-dst-{}", dest_kind.name()), mem);
    if let Some(h) = &huge {
        dcfg.mem_path = h.file(&format!("{tag}-dst.ram"));
    }
    dcfg.machine = machine;
    dcfg.extra = d.dest.args.clone();
    if dest_kind == DestKind::Rust {
        let vcpu = workload.rust_vcpu_args(mem, &dcfg.extra);
        dcfg.extra.extend(vcpu);
    }
    let dst_log = workdir.join(format!("{tag}-dst.log"));
    let _l2 = PathGuard::new(&dst_log);
    let dst = start_dest(dest_kind, &dq, dcfg, dst_log.clone()).await?;
    let probe = RssProbe::start(dst.pid());
    let mut ctx = Ctx { m: Migration::new(src, dst, dest_kind), workload, mem, files: Vec::new() };
    let res = match setup(d, &ctx.m).await {
        Ok(()) => run_steps(v, &mut ctx, steps, out).await,
        Err(e) => Err(e),
    };
    // `[expect]` of the destination, once every step passed.
    let peak_rss = probe.finish();
    if res.is_ok() && !d.dest_expect.is_empty() && out.steps.iter().all(|s| s.ok) {
        let t = Instant::now();
        let (ok, detail) = match check_dest_end(&ctx, &d.dest_expect, peak_rss).await {
            Ok(d) => (true, d),
            Err(e) => (false, format!("{e:#}")),
        };
        out.steps.push(StepResult {
            index: steps.len(),
            step: "expect (end of the variant)".into(),
            ok,
            ms: t.elapsed().as_millis() as u64,
            detail,
        });
    }
    out.samples = ctx.m.take_samples();
    ctx.m.quit().await;
    if res.is_err() || out.steps.iter().any(|s| !s.ok) {
        keep_logs(&[&src_log, &dst_log]);
    }
    drop(disk_guard);
    res
}

/// `CROSSMIG_KEEP_LOGS=DIR`: a failed variant's process logs (source and
/// destination, e.g. rust-dest's with `RUST_DEST_LOG=debug`) are copied
/// into DIR before they are removed.
fn keep_logs(logs: &[&std::path::Path]) {
    let Some(dir) = std::env::var_os("CROSSMIG_KEEP_LOGS") else { return };
    let dir = std::path::PathBuf::from(dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!("CROSSMIG_KEEP_LOGS: {}: {e}", dir.display());
        return;
    }
    for l in logs {
        if let Some(name) = l.file_name() {
            if let Err(e) = std::fs::copy(l, dir.join(name)) {
                tracing::warn!("CROSSMIG_KEEP_LOGS: copying {}: {e}", l.display());
            }
        }
    }
}

/// Capabilities (`events`, the common ones, then each side's) and each
/// side's parameters.
async fn setup(d: &Spec, m: &Migration) -> Result<()> {
    fn caps<'a>(d: &'a Spec, side: &'a BTreeMap<String, bool>) -> Vec<(&'a str, bool)> {
        let mut c = vec![("events", true)];
        c.extend(d.capabilities.iter().map(|(k, v)| (k.as_str(), *v)));
        c.extend(side.iter().map(|(k, v)| (k.as_str(), *v)));
        c
    }
    m.set_capabilities(Side::Source, &caps(d, &d.source.capabilities)).await?;
    m.set_capabilities(Side::Dest, &caps(d, &d.dest.capabilities)).await?;
    if !is_empty(&d.source.parameters) {
        m.set_parameters(Side::Source, &d.source.parameters).await?;
    }
    if !is_empty(&d.dest.parameters) {
        m.set_parameters(Side::Dest, &d.dest.parameters).await?;
    }
    Ok(())
}

fn is_empty(params: &Value) -> bool {
    params.as_object().is_none_or(|m| m.is_empty())
}

async fn run_steps(
    v: &Variant,
    ctx: &mut Ctx,
    steps: &[StepSpec],
    out: &mut Outcome,
) -> Result<()> {
    let mut postcopy_asked = false;
    for (i, spec) in steps.iter().enumerate() {
        if let Some(w) = &spec.when {
            if !v.matches(w) {
                continue;
            }
        }
        let t = Instant::now();
        let r = exec_step(ctx, &spec.step).await.map_err(|e| format!("{e:#}"));
        let (ok, detail) = judge(r, spec.expect_error.as_ref());
        out.steps.push(StepResult {
            index: i,
            step: match &spec.expect_error {
                Some(re) => format!("{} (must be refused: /{}/)", spec.step.label(), re.as_str()),
                None => spec.step.label(),
            },
            ok,
            ms: t.elapsed().as_millis() as u64,
            detail,
        });
        if !ok {
            let tail = format!("\n{}", ctx.m.log_tails(1500, 3000));
            out.steps.last_mut().unwrap().detail += &tail;
            return Ok(());
        }
        if matches!(spec.step, Step::StartPostcopy { precopy_may_win: false }) {
            postcopy_asked = true;
        }
    }
    if postcopy_asked {
        out.steps.push(postcopy_ran(ctx, steps.len()).await);
    }
    Ok(())
}

/// The implied check of a `start-postcopy` step without `precopy-may-win`:
/// postcopy really ran (by the source's replies, see [`postcopy_evidence`]).
async fn postcopy_ran(ctx: &mut Ctx, index: usize) -> StepResult {
    let t = Instant::now();
    let (last, last_dest) = (ctx.m.query(Side::Source).await, ctx.m.query(Side::Dest).await);
    let samples = ctx.m.samples();
    let source = samples.iter().map(|s| &s.source).chain([&last]);
    let dest = samples.iter().map(|s| &s.dest).chain([&last_dest]);
    let (ok, detail) = match postcopy_evidence(source, dest) {
        Some(e) => (true, e),
        None => {
            let st = MigrationStatus::of(&last);
            let first =
                if st == MigrationStatus::Completed { ": precopy finished first" } else { "" };
            let detail = format!(
                "postcopy never ran{first} (source {st}, ram.postcopy-bytes {}, \
                 ram.postcopy-requests {}; destination {}); set `precopy-may-win = true` on \
                 start-postcopy if that is allowed",
                last["ram"]["postcopy-bytes"],
                last["ram"]["postcopy-requests"],
                MigrationStatus::of(&last_dest)
            );
            (false, detail)
        }
    };
    let ms = t.elapsed().as_millis() as u64;
    StepResult { index, step: "postcopy ran (implied by start-postcopy)".into(), ok, ms, detail }
}
