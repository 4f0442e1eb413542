//! The `migrate` step (optionally through the harness's proxy, over unix
//! sockets, or saved and restored, `drive::transport`) and the
//! `wait` step (statuses, RAM passes, time, serial text), on the session's
//! one status sampler.

use std::time::Duration;

use anyhow::Result;

use crate::drive::proxy::ProxyPlan;
use crate::drive::recorder::Route;
use crate::drive::session::Migration;
use crate::drive::transport::save_restore;
use crate::scenario::steps::{ProxyOpts, Side, Via, WaitFor};

/// `migrate-incoming` on the destination, `migrate` on the source (through a
/// proxy with this plan, if any; a recovery then goes through a proxy too).
pub(super) async fn migrate(
    m: &mut Migration,
    proxy: Option<&ProxyOpts>,
    via: &Via,
) -> Result<String> {
    match via {
        Via::Tcp => {}
        Via::Unix => m.unix = true,
        Via::Saved(p) => return save_restore(m, p).await,
    }
    if let Some(p) = proxy {
        m.route = Route::proxy(plan(p));
    }
    let uri = m.migrate(false).await?;
    Ok(format!("source → {uri}"))
}

/// The proxy plan of a `migrate` step's `proxy` table.
fn plan(p: &ProxyOpts) -> ProxyPlan {
    let mut plan = ProxyPlan::new();
    if let Some((at, dur)) = p.stall {
        plan = plan.stall(at, dur);
    }
    if let Some(t) = p.throttle {
        plan = plan.throttle(t);
    }
    if let Some(c) = p.cut_at {
        plan = plan.cut_at(c);
    }
    plan
}

/// Wait for `what` (statuses on `side`), at most `limit`.
pub(super) async fn wait(
    m: &mut Migration,
    what: &WaitFor,
    side: Side,
    limit: Duration,
) -> Result<String> {
    match what {
        WaitFor::Time(t) => {
            tokio::time::sleep(*t).await;
            m.sample().await;
            Ok(String::new())
        }
        WaitFor::Serial(text) => {
            let s = m.src.wait_serial(|s| s.contains(text.as_str()), limit).await?;
            Ok(format!("{} serial bytes", s.len()))
        }
        WaitFor::Status(w) => Ok(m.wait_until(side, Some(w), None, limit).await?.to_string()),
        WaitFor::Passes(n) => Ok(m.wait_passes(*n, limit).await?.to_string()),
    }
}
