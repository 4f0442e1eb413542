//! The `expect` step (assertions on `query-migrate`) and the `check-memory`
//! step (guest RAM page by page, and the sweep guest's invariant), with the
//! checks of `verify/`.

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use super::Ctx;
use crate::drive::session::Migration;
use crate::images::Workload;
use crate::qmp::MigrationStatus;
use crate::scenario::steps::{CounterCheck, Side};
use crate::verify::{guest, memory};
use crate::vm::dest::DestKind;

/// Assert on `query-migrate` of `side`: status one of `status`, `error-desc`
/// matching `error`, a counter comparison.
pub(super) async fn expect(
    m: &Migration,
    side: Side,
    status: Option<&[MigrationStatus]>,
    error: Option<&regex::Regex>,
    counter: Option<&CounterCheck>,
) -> Result<String> {
    let mut detail = Vec::new();
    for s in side.each() {
        let q = m.query(s).await;
        let name = s.name();
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

/// Evidence that postcopy really ran, from `query-migrate` replies of the
/// source and the destination (the sampler's and a last one): a postcopy
/// status on either side (`postcopy-active`, `-paused`, `-recover`, ...; a
/// destination enters it at POSTCOPY_LISTEN, which a source sends only once
/// it switched), or on the source `ram.postcopy-bytes > 0` or
/// `ram.postcopy-requests > 0` (7.2, 10.0 and 11.1 report both counters).
/// `None`: precopy completed on its own and a `migrate-start-postcopy`
/// (which QEMU still accepts) switched nothing.
pub fn postcopy_evidence<'a>(
    source: impl IntoIterator<Item = &'a Value>,
    dest: impl IntoIterator<Item = &'a Value>,
) -> Option<String> {
    let mut status = None;
    let (mut bytes, mut requests) = (0, 0);
    for q in source {
        let st = MigrationStatus::of(q);
        if status.is_none() && st.is_postcopy() {
            status = Some(format!("source status {st}, "));
        }
        bytes = bytes.max(q["ram"]["postcopy-bytes"].as_u64().unwrap_or(0));
        requests = requests.max(q["ram"]["postcopy-requests"].as_u64().unwrap_or(0));
    }
    if status.is_none() {
        let st = dest.into_iter().map(MigrationStatus::of).find(MigrationStatus::is_postcopy);
        status = st.map(|st| format!("destination status {st}, "));
    }
    if status.is_none() && bytes == 0 && requests == 0 {
        return None;
    }
    let seen = status.unwrap_or_default();
    Some(format!("{seen}ram.postcopy-bytes {bytes}, ram.postcopy-requests {requests}"))
}

/// Every page of guest RAM: the source's file against the destination's (on
/// rust-dest also its QMP page digests); with the sweep guest and
/// `invariant`, the guest's own invariant on the destination's copy.
pub(super) async fn check_memory(ctx: &Ctx, invariant: bool) -> Result<String> {
    let (src, dst) = (&ctx.m.src.cfg, &ctx.m.dst.cfg);
    let block = src.backend_id.as_str();
    let (c, _) = memory::check_files("guest RAM", block, &src.mem_path, &dst.mem_path)?;
    if !c.ok {
        bail!("{}", c.detail);
    }
    let mut detail = c.detail;
    if ctx.m.dest_kind == DestKind::Rust {
        let how = "rust-dest QMP digests";
        let blocks = memory::query_block_digests(&ctx.m.dst.qmp, Some(block)).await?;
        match memory::check_block_digests(how, &src.mem_path, block, &blocks, how)? {
            None => bail!("rust-dest reports no RAMBlock {block} (x-crossmig-ram-digests)"),
            Some((c, _)) if !c.ok => bail!("{}", c.detail),
            Some(_) => {}
        }
    }
    if invariant && ctx.workload != Workload::Fill {
        let ram = std::fs::read(&dst.mem_path)?;
        let c = guest::check_workload(ctx.workload, &ram, ctx.mem);
        if !c.ok {
            bail!("{}", c.detail);
        }
        detail += &format!("; {}", c.detail);
    }
    Ok(detail)
}

#[cfg(test)]
mod tests {
    use super::postcopy_evidence;
    use serde_json::json;

    /// An idle guest's precopy completed before `migrate-start-postcopy`
    /// (observed shape of a 10.0 source's replies): no evidence.
    #[test]
    fn postcopy_that_never_ran() {
        let replies = [
            json!({"status": "active", "ram": {"postcopy-bytes": 0, "postcopy-requests": 0}}),
            json!({"status": "completed", "ram": {"postcopy-bytes": 0, "postcopy-requests": 0}}),
        ];
        let dest = [json!({"status": "active"}), json!({"status": "completed"})];
        assert_eq!(postcopy_evidence(&replies, &dest), None);
        let ran = [json!({"status": "postcopy-active", "ram": {"postcopy-bytes": 0}})];
        assert!(postcopy_evidence(&ran, &dest).unwrap().contains("source status postcopy-active"));
        let done = [json!({"status": "completed", "ram": {"postcopy-bytes": 4096}})];
        assert!(postcopy_evidence(&done, &dest).unwrap().contains("postcopy-bytes 4096"));
        // The source killed right after the switch: only the destination saw it.
        let killed = [json!({"status": "failed", "error-desc": "process exited"})];
        assert_eq!(postcopy_evidence(&killed, &dest), None);
        let paused = [json!({"status": "postcopy-active"}), json!({"status": "postcopy-paused"})];
        let e = postcopy_evidence(&killed, &paused).unwrap();
        assert!(e.contains("destination status postcopy-active"), "{e}");
    }
}
