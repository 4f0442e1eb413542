//! Migration scenarios: start the real QEMU source with its test guest and the
//! destination, set capabilities and parameters, then run the steps in order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use super::exec::{exec_step, Ctx};
use super::file::Variant;
use super::outcome::{Outcome, StepResult};
use super::qemu::{common_machine, resolve_qemu, source_qemu};
use super::steps::StepSpec;
use crate::images::Workload;
use crate::vm::dest::start_dest;
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
    let mut scfg = VmConfig::new("scn-src", mem);
    scfg.machine = machine.clone();
    scfg.disk = Some(disk.clone());
    let serial = workdir.join(format!("{tag}-src.serial"));
    let _serial_guard = PathGuard::new(&serial);
    scfg.serial_log = Some(serial);
    let src_log = workdir.join(format!("{tag}-src.log"));
    let _l1 = PathGuard::new(&src_log);
    let src = QemuVm::start(&qemu, scfg, src_log).await?;
    let marker = if workload == Workload::Fill { 'F' } else { 'B' };
    src.wait_serial(|s| s.contains(marker), Duration::from_secs(60)).await?;
    if d.source.stopped {
        src.execute("stop", Value::Null).await?;
    }
    let mut dcfg = VmConfig::new(&format!("scn-dst-{}", dest_kind.name()), mem);
    dcfg.machine = machine;
    dcfg.extra = d.dest.args.clone();
    let dst_log = workdir.join(format!("{tag}-dst.log"));
    let _l2 = PathGuard::new(&dst_log);
    let dst = start_dest(dest_kind, &dq, dcfg, dst_log).await?;
    // Capabilities: common, then per side; parameters per side.
    let caps = |side: &BTreeMap<String, bool>| -> Vec<(String, bool)> {
        let mut c: Vec<(String, bool)> = vec![("events".into(), true)];
        c.extend(d.capabilities.iter().map(|(k, v)| (k.clone(), *v)));
        c.extend(side.iter().map(|(k, v)| (k.clone(), *v)));
        c
    };
    let sc = caps(&d.source.capabilities);
    let dc = caps(&d.dest.capabilities);
    src.qmp
        .set_capabilities(&sc.iter().map(|(a, b)| (a.as_str(), *b)).collect::<Vec<_>>())
        .await
        .context("source capabilities")?;
    dst.qmp
        .set_capabilities(&dc.iter().map(|(a, b)| (a.as_str(), *b)).collect::<Vec<_>>())
        .await
        .context("destination capabilities")?;
    if !is_empty(&d.source.parameters) {
        src.qmp.set_parameters(d.source.parameters.clone()).await.context("source parameters")?;
    }
    if !is_empty(&d.dest.parameters) {
        dst.qmp
            .set_parameters(d.dest.parameters.clone())
            .await
            .context("destination parameters")?;
    }
    let mut ctx = Ctx {
        src,
        dst,
        dest_kind,
        workload,
        mem,
        proxy: None,
        proxy_handle: None,
        use_proxy: false,
        t0: Instant::now(),
        first_sync: None,
        samples: Vec::new(),
    };
    let res = run_steps(v, &mut ctx, steps, out).await;
    out.samples = std::mem::take(&mut ctx.samples);
    let Ctx { src, dst, proxy, .. } = ctx;
    drop(proxy);
    let _ = dst.quit().await;
    let _ = src.quit().await;
    drop(disk_guard);
    res
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
    for (i, spec) in steps.iter().enumerate() {
        if let Some(w) = &spec.when {
            if !v.matches(w) {
                continue;
            }
        }
        let t = Instant::now();
        let r = exec_step(ctx, &spec.step).await;
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(e) => (false, format!("{e:#}")),
        };
        out.steps.push(StepResult {
            index: i,
            step: spec.step.label(),
            ok,
            ms: t.elapsed().as_millis() as u64,
            detail,
        });
        if !ok {
            let tail = format!(
                "\n--- source log ---\n{}\n--- destination ({}) log ---\n{}",
                ctx.src.log_tail(1500),
                ctx.dest_kind.name(),
                ctx.dst.log_tail(3000)
            );
            out.steps.last_mut().unwrap().detail += &tail;
            return Ok(());
        }
    }
    Ok(())
}
