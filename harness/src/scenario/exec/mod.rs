//! Executing migration-scenario steps: the live context of a variant
//! ([`Ctx`]) and one function per step kind, dispatched by [`exec_step`].
//! Each returns the step's detail text or an error.

mod check;
mod migrate;
mod recover;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{anyhow, Result};
use serde_json::{json, Value};

use super::steps::{FaultKind, Side, Step};
use crate::drive::migrate::Sample;
use crate::drive::proxy::{Proxy, ProxyHandle};
use crate::images::Workload;
use crate::qmp::MigrationStatus;
use crate::vm::dest::DestKind;
use crate::vm::qemu::QemuVm;

/// Everything a running migration variant holds.
pub struct Ctx {
    pub src: QemuVm,
    pub dst: QemuVm,
    pub dest_kind: DestKind,
    pub workload: Workload,
    /// Guest RAM size.
    pub mem: u64,
    pub proxy: Option<Proxy>,
    pub proxy_handle: Option<ProxyHandle>,
    /// The migration goes through the proxy (so does a recovery).
    pub use_proxy: bool,
    /// When `migrate` was issued.
    pub t0: Instant,
    /// `dirty-sync-count` of the first `active` sample.
    pub first_sync: Option<u64>,
    pub samples: Vec<Sample>,
}

impl Ctx {
    /// `query-migrate` on a side; a destination process that exited (QEMU's
    /// exit-on-error) reads as `failed` with its log tail as error-desc.
    pub async fn query(&self, side: Side) -> Value {
        let vm = if side == Side::Dest { &self.dst } else { &self.src };
        match vm.qmp.query_migrate().await {
            Ok(v) => v,
            Err(e) => {
                if !vm.child.is_running() {
                    json!({"status": "failed", "error-desc": format!("process exited: {}", vm.log_tail(600).trim())})
                } else {
                    json!({"status": "unknown", "error-desc": format!("query-migrate: {e:#}")})
                }
            }
        }
    }

    /// Query both sides and record the sample.
    pub async fn sample(&mut self) -> (Value, Value) {
        let s = self.query(Side::Source).await;
        let d = self.query(Side::Dest).await;
        if self.first_sync.is_none() && MigrationStatus::of(&s) == MigrationStatus::Active {
            self.first_sync = s["ram"]["dirty-sync-count"].as_u64();
        }
        self.samples.push(Sample {
            t_ms: self.t0.elapsed().as_millis() as u64,
            source: s.clone(),
            dest: d.clone(),
        });
        (s, d)
    }

    fn vms(&self, side: Side) -> Vec<&QemuVm> {
        match side {
            Side::Source => vec![&self.src],
            Side::Dest => vec![&self.dst],
            Side::Both => vec![&self.src, &self.dst],
        }
    }
}

/// Run one step.
pub async fn exec_step(ctx: &mut Ctx, step: &Step) -> Result<String> {
    match step {
        Step::Migrate { proxy } => migrate::migrate(ctx, proxy.as_ref()).await,
        Step::Wait { what, side, timeout } => migrate::wait(ctx, what, *side, *timeout).await,
        Step::StartPostcopy => start_postcopy(ctx).await,
        Step::Stop { side } => qmp_on(ctx, *side, "stop").await,
        Step::Cont { side } => qmp_on(ctx, *side, "cont").await,
        Step::SetParameters { side, parameters } => set_parameters(ctx, *side, parameters).await,
        Step::SetCapabilities { side, capabilities } => {
            set_capabilities(ctx, *side, capabilities).await
        }
        Step::Cancel => cancel(ctx).await,
        Step::Fault { fault, side } => fault_now(ctx, *fault, *side),
        Step::Pause { side } => qmp_on(ctx, *side, "migrate-pause").await,
        Step::Recover { fail } => recover::recover(ctx, *fail).await,
        Step::Expect { side, status, error, counter } => {
            check::expect(ctx, *side, status.as_deref(), error.as_ref(), counter.as_ref()).await
        }
        Step::CheckMemory { invariant } => check::check_memory(ctx, *invariant).await,
    }
}

/// `migrate-start-postcopy` on the source.
async fn start_postcopy(ctx: &Ctx) -> Result<String> {
    ctx.src.execute("migrate-start-postcopy", Value::Null).await?;
    Ok(String::new())
}

/// An argument-less QMP command (`stop`, `cont`, `migrate-pause`) on `side`.
async fn qmp_on(ctx: &Ctx, side: Side, cmd: &str) -> Result<String> {
    for vm in ctx.vms(side) {
        vm.execute(cmd, Value::Null).await?;
    }
    Ok(String::new())
}

async fn set_parameters(ctx: &Ctx, side: Side, parameters: &Value) -> Result<String> {
    for vm in ctx.vms(side) {
        vm.qmp.set_parameters(parameters.clone()).await?;
    }
    Ok(parameters.to_string())
}

async fn set_capabilities(
    ctx: &Ctx,
    side: Side,
    capabilities: &BTreeMap<String, bool>,
) -> Result<String> {
    let c: Vec<(&str, bool)> = capabilities.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    for vm in ctx.vms(side) {
        vm.qmp.set_capabilities(&c).await?;
    }
    Ok(String::new())
}

/// `migrate_cancel` on the source.
async fn cancel(ctx: &Ctx) -> Result<String> {
    ctx.src.execute("migrate_cancel", Value::Null).await?;
    Ok(String::new())
}

/// Cut every proxied connection, or SIGKILL the process(es) of `side`.
fn fault_now(ctx: &mut Ctx, fault: FaultKind, side: Side) -> Result<String> {
    match fault {
        FaultKind::Cut => {
            let h = ctx
                .proxy_handle
                .as_ref()
                .ok_or_else(|| anyhow!("fault cut needs `migrate` with a proxy table"))?;
            h.cut_now();
            Ok(format!("{} connection(s) cut", h.connections()))
        }
        FaultKind::Kill => {
            if side != Side::Dest {
                ctx.src.child.kill();
            }
            if side != Side::Source {
                ctx.dst.child.kill();
            }
            Ok(String::new())
        }
    }
}
