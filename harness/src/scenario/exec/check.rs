//! The `expect` step (assertions on `query-migrate`) and the `check-memory`
//! step (guest RAM page by page, and the sweep guest's invariant).

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

use super::Ctx;
use crate::images::{self, Workload};
use crate::qmp::MigrationStatus;
use crate::scenario::steps::{CounterCheck, Side};
use crate::verify::{guest, memory};
use crate::vm::dest::DestKind;

/// Assert on `query-migrate` of `side`: status one of `status`, `error-desc`
/// matching `error`, a counter comparison.
pub(super) async fn expect(
    ctx: &Ctx,
    side: Side,
    status: Option<&[MigrationStatus]>,
    error: Option<&regex::Regex>,
    counter: Option<&CounterCheck>,
) -> Result<String> {
    let mut detail = Vec::new();
    for s in side.each() {
        let q = ctx.query(s).await;
        let name = s.noun();
        if let Some(want) = status {
            let got = MigrationStatus::of(&q);
            if !want.contains(&got) {
                let want: Vec<&str> = want.iter().map(MigrationStatus::as_str).collect();
                bail!(
                    "{name} status is {got}, expected {} (error-desc: {})",
                    want.join("|"),
                    q.get("error-desc").cloned().unwrap_or(Value::Null)
                );
            }
            detail.push(format!("{name} {got}"));
        }
        if let Some(rx) = error {
            let e = q.get("error-desc").and_then(|e| e.as_str()).unwrap_or("");
            if !rx.is_match(e) {
                bail!("{name} error-desc {e:?} does not match /{}/", rx.as_str());
            }
            detail.push(format!("{name} error ok"));
        }
        if let Some(CounterCheck { path, op, value }) = counter {
            let mut x = &q;
            for part in path.split('.') {
                x = &x[part];
            }
            let got = x
                .as_i64()
                .ok_or_else(|| anyhow!("{name} query-migrate has no number at {path}: {q}"))?;
            if !op.holds(got, *value) {
                bail!("{name} {path} = {got}, expected {} {value}", op.as_str());
            }
            detail.push(format!("{name} {path} = {got}"));
        }
    }
    Ok(detail.join(", "))
}

/// Every page of guest RAM: the source's file against the destination's (on
/// rust-dest also its QMP page digests); with the sweep guest and
/// `invariant`, the guest's own invariant on the destination's copy.
pub(super) async fn check_memory(ctx: &Ctx, invariant: bool) -> Result<String> {
    let c = memory::compare_files(
        &ctx.src.cfg.backend_id,
        &ctx.src.cfg.mem_path,
        &ctx.dst.cfg.mem_path,
    )?;
    if !c.ok() {
        bail!("{c}");
    }
    let mut detail = c.to_string();
    if ctx.dest_kind == DestKind::Rust {
        let d = ctx
            .dst
            .execute(
                "x-crossmig-ram-digests",
                json!({"block": ctx.src.cfg.backend_id, "pages": true}),
            )
            .await?;
        let pd = wire::digest::from_hex(d["blocks"][0]["page-digests"].as_str().unwrap_or(""))
            .unwrap_or_default();
        let sd = memory::file_page_digests(&ctx.src.cfg.mem_path)?;
        let c2 = memory::compare_digests("mem0", &sd, &pd, "rust-dest QMP digests");
        if !c2.ok() {
            bail!("{c2}");
        }
    }
    if invariant && ctx.workload == Workload::Sweep {
        let ram = std::fs::read(&ctx.dst.cfg.mem_path)?;
        let r = guest::check_sweep_invariant(&ram, images::SWEEP_START, images::sweep_end(ctx.mem));
        if !r.ok() {
            bail!("{r}");
        }
        detail += &format!("; {r}");
    }
    Ok(detail)
}
