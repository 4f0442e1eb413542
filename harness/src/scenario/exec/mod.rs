//! Executing migration-scenario steps on the shared migration session
//! ([`Migration`]): the live context of a variant ([`Ctx`]) and one function
//! per step kind, dispatched by [`exec_step`]. Each returns the step's detail
//! text or an error.

pub mod check;
mod end;
mod migrate;
mod save;

use std::collections::BTreeMap;

use anyhow::Result;

use super::steps::{FaultKind, Side, Step};
use crate::drive::session::Migration;
use crate::images::Workload;

pub use end::check_dest_end;

/// Everything a running migration variant holds.
pub struct Ctx {
    /// The source, the destination, the route between them and the sampler.
    pub m: Migration,
    pub workload: Workload,
    /// Guest RAM size.
    pub mem: u64,
    /// Files the variant wrote (saved streams), removed when it ends.
    pub files: Vec<crate::vm::procs::PathGuard>,
}

/// Run one step.
pub async fn exec_step(ctx: &mut Ctx, step: &Step) -> Result<String> {
    let m = &mut ctx.m;
    match step {
        Step::SaveRestore { dir, timeout } => {
            save::save_restore(&mut ctx.m, &mut ctx.files, dir.as_deref(), *timeout).await
        }
        Step::Migrate { proxy, via } => migrate::migrate(m, proxy.as_ref(), via).await,
        Step::Wait { what, side, timeout } => migrate::wait(m, what, *side, *timeout).await,
        Step::StartPostcopy { .. } => m.start_postcopy().await.map(|()| String::new()),
        Step::Stop { side } => m.stop(*side).await.map(|()| String::new()),
        Step::Cont { side } => m.cont(*side).await.map(|()| String::new()),
        Step::SetParameters { side, parameters } => {
            m.set_parameters(*side, parameters).await?;
            Ok(parameters.to_string())
        }
        Step::SetCapabilities { side, capabilities } => {
            m.set_capabilities(*side, &caps(capabilities)).await?;
            Ok(String::new())
        }
        Step::Cancel => m.cancel().await.map(|()| String::new()),
        Step::Fault { fault, side } => fault_now(m, *fault, *side).await,
        Step::Pause { side } => m.pause(*side).await.map(|()| String::new()),
        Step::Recover { fail } => m.recover(*fail).await,
        Step::Expect { side, status, error, counter } => {
            check::expect(m, *side, status.as_deref(), error.as_ref(), counter.as_ref()).await
        }
        Step::CheckMemory { invariant } => check::check_memory(ctx, *invariant).await,
    }
}

/// `[(name, state)]` borrowed from a capability table.
fn caps(c: &BTreeMap<String, bool>) -> Vec<(&str, bool)> {
    c.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

/// Cut or partition every proxied connection, or SIGKILL the process(es)
/// of `side`.
async fn fault_now(m: &mut Migration, fault: FaultKind, side: Side) -> Result<String> {
    match fault {
        FaultKind::Cut => Ok(format!("{} connection(s) cut", m.route.cut_now()?)),
        FaultKind::Partition => {
            Ok(format!("{} connection(s) partitioned", m.route.partition_now().await?))
        }
        FaultKind::Kill => {
            m.kill(side);
            Ok(String::new())
        }
    }
}
