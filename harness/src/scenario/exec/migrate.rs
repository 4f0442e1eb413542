//! The `migrate` step (optionally through the harness's proxy) and the
//! `wait` step (statuses, RAM passes, time, serial text).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::Ctx;
use crate::drive::proxy::{Proxy, ProxyPlan};
use crate::qmp::MigrationStatus;
use crate::scenario::steps::{ProxyOpts, Side, WaitFor};
use crate::vm::procs::free_tcp_port;

/// `migrate-incoming` on the destination, `migrate` on the source (through a
/// proxy with this plan, if any).
pub(super) async fn migrate(ctx: &mut Ctx, proxy: Option<&ProxyOpts>) -> Result<String> {
    let port = free_tcp_port();
    let uri = format!("tcp:127.0.0.1:{port}");
    ctx.dst
        .execute("migrate-incoming", json!({ "uri": uri }))
        .await
        .context("destination migrate-incoming")?;
    let mut src_uri = uri.clone();
    if let Some(p) = proxy {
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
        let px = Proxy::start("127.0.0.1:0", ([127, 0, 0, 1], port).into(), plan).await?;
        src_uri = px.uri();
        ctx.proxy_handle = Some(px.handle());
        ctx.proxy = Some(px);
        ctx.use_proxy = true;
    }
    ctx.t0 = Instant::now();
    ctx.src.execute("migrate", json!({ "uri": src_uri })).await.context("source migrate")?;
    Ok(format!("source → {src_uri}"))
}

fn joined(s: &[MigrationStatus]) -> String {
    s.iter().map(MigrationStatus::as_str).collect::<Vec<_>>().join("|")
}

/// Wait for `what` (statuses on `side`), at most `limit`.
pub(super) async fn wait(
    ctx: &mut Ctx,
    what: &WaitFor,
    side: Side,
    limit: Duration,
) -> Result<String> {
    let deadline = Instant::now() + limit;
    match what {
        WaitFor::Time(t) => {
            tokio::time::sleep(*t).await;
            ctx.sample().await;
            return Ok(String::new());
        }
        WaitFor::Serial(m) => {
            let s = ctx.src.wait_serial(|s| s.contains(m.as_str()), limit).await?;
            return Ok(format!("{} serial bytes", s.len()));
        }
        WaitFor::Status(_) | WaitFor::Passes(_) => {}
    }
    loop {
        let (s, d) = ctx.sample().await;
        let (ss, ds) = (MigrationStatus::of(&s), MigrationStatus::of(&d));
        match what {
            WaitFor::Status(wants) => {
                let done = match side {
                    Side::Source => wants.contains(&ss),
                    Side::Dest => wants.contains(&ds),
                    Side::Both => wants.contains(&ss) && wants.contains(&ds),
                };
                if done {
                    return Ok(format!("source {ss}, destination {ds}"));
                }
                // A side that failed without failure being awaited ends the wait.
                if !wants.contains(&MigrationStatus::Failed) {
                    for one in side.each() {
                        let (st, v) = if one == Side::Source { (&ss, &s) } else { (&ds, &d) };
                        if *st == MigrationStatus::Failed {
                            bail!(
                                "{} failed while waiting for {}: {}",
                                one.noun(),
                                joined(wants),
                                v.get("error-desc").cloned().unwrap_or(Value::Null)
                            );
                        }
                    }
                }
            }
            WaitFor::Passes(n) => {
                let sync = s["ram"]["dirty-sync-count"].as_u64().unwrap_or(0);
                let done = ctx.first_sync.map(|f| sync.saturating_sub(f)).unwrap_or(0);
                if done >= *n {
                    return Ok(format!("{done} pass(es) (dirty-sync-count {sync})"));
                }
                if ss != MigrationStatus::Active && ss != MigrationStatus::Setup {
                    bail!("source left precopy ({ss}) after {done} of {n} passes");
                }
            }
            WaitFor::Time(_) | WaitFor::Serial(_) => unreachable!("handled above"),
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?}: source {ss}, destination {ds}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
