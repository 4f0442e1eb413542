//! The `recover` step: `migrate-recover` on the destination and `migrate
//! resume=true` on the source, optionally after a deliberately failing attempt.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use super::Ctx;
use crate::drive::proxy::{Proxy, ProxyPlan};
use crate::scenario::steps::RecoverFailure;
use crate::vm::dest::DestKind;
use crate::vm::procs::free_tcp_port;

const RECOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// Recover a paused postcopy migration; waits until both sides are back in
/// postcopy-active (or completed).
pub(super) async fn recover(ctx: &mut Ctx, fail: Option<RecoverFailure>) -> Result<String> {
    let to = RECOVER_TIMEOUT;
    let mut detail = String::new();
    match fail {
        Some(RecoverFailure::Handshake) => detail += &failed_handshake(ctx).await?,
        Some(RecoverFailure::Reconnect) => detail += &failed_reconnect(ctx).await?,
        None => {}
    }
    let port = free_tcp_port();
    ctx.dst.execute("migrate-recover", json!({ "uri": format!("tcp:127.0.0.1:{port}") })).await?;
    let mut uri = format!("tcp:127.0.0.1:{port}");
    if ctx.use_proxy {
        let px =
            Proxy::start("127.0.0.1:0", ([127, 0, 0, 1], port).into(), ProxyPlan::new()).await?;
        uri = px.uri();
        ctx.proxy_handle = Some(px.handle());
        ctx.proxy = Some(px);
    }
    ctx.src.execute("migrate", json!({ "uri": uri, "resume": true })).await?;
    ctx.src.qmp.wait_migration_status(&["postcopy-active", "completed"], &["failed"], to).await?;
    ctx.dst.qmp.wait_migration_status(&["postcopy-active", "completed"], &["failed"], to).await?;
    Ok(format!("{detail}resumed via {uri}"))
}

/// The recovery connection to the destination sends one command byte and
/// closes; the destination must return to postcopy-paused.
async fn failed_handshake(ctx: &Ctx) -> Result<String> {
    let to = RECOVER_TIMEOUT;
    let mut detail = String::new();
    let port = free_tcp_port();
    ctx.dst.execute("migrate-recover", json!({ "uri": format!("tcp:127.0.0.1:{port}") })).await?;
    let cursor = ctx.dst.qmp.event_cursor();
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(&[wire::consts::QEMU_VM_COMMAND]).await?;
    }
    // The destination must take the connection as its recovery channel
    // (postcopy-recover) and fall back. (QEMU 11.1 never adopts a connection
    // that sends a single byte, so for a QEMU destination this is optional.)
    let rust = ctx.dest_kind == DestKind::Rust;
    let adopted = ctx
        .dst
        .qmp
        .wait_event_from(
            cursor,
            |e| e.name == "MIGRATION" && e.data_str("status") == Some("postcopy-recover"),
            if rust { to } else { Duration::from_secs(3) },
        )
        .await;
    if rust {
        adopted.context("destination taking the junk connection as its recovery channel")?;
    } else if adopted.is_err() {
        detail += "(QEMU did not adopt the junk connection) ";
    }
    ctx.dst
        .qmp
        .wait_migration_status(&["postcopy-paused"], &["failed", "completed"], to)
        .await
        .context("destination back in postcopy-paused after the failed handshake")?;
    detail += "destination paused again after a failed handshake; ";
    Ok(detail)
}

/// The source resumes towards an address where nothing listens; it must
/// return to postcopy-paused.
async fn failed_reconnect(ctx: &Ctx) -> Result<String> {
    let dead = free_tcp_port();
    ctx.src
        .execute("migrate", json!({ "uri": format!("tcp:127.0.0.1:{dead}"), "resume": true }))
        .await
        .ok();
    ctx.src
        .qmp
        .wait_migration_status(&["postcopy-paused"], &["failed", "completed"], RECOVER_TIMEOUT)
        .await
        .context("source back in postcopy-paused after the failed reconnect")?;
    Ok("source paused again after a failed reconnect; ".into())
}
