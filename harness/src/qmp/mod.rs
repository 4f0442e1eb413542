//! Async QMP client (tokio): the connection, commands and events
//! ([`client`]), migration commands and waits ([`migration`]), and QEMU's
//! migration status and run state as types ([`status`]).

pub mod client;
pub mod migration;
pub mod status;

pub use client::{Qmp, QmpError, QmpEvent, DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_RETRY};
pub use migration::{error_desc, StatusWait};
pub use status::{MigrationStatus, RunState};

/// `status` of a `query-migrate` reply as QEMU spells it; `"none"` if missing.
/// Prefer [`MigrationStatus::of`]; kept for callers not yet converted
/// (`bench/`, `synth/`).
pub fn migrate_status_of(v: &serde_json::Value) -> &str {
    v.get("status").and_then(serde_json::Value::as_str).unwrap_or("none")
}
