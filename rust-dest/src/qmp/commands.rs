//! The QMP command table: ONE name → handler list, which also answers
//! `query-commands` and says which commands allow `exec-oob`.

use std::future::Future;
use std::pin::Pin;

use serde_json::{json, Map, Value};

use super::args::{Args, QResult, QmpErr};
use super::{crossmig, migration};
use crate::state::{MigStatus, RunState, Shared};

/// A synchronous handler.
type SyncFn = fn(&Shared, Args) -> QResult<Value>;
/// A handler that runs slow work on the blocking pool.
type AsyncFn = fn(Shared, Args) -> Pin<Box<dyn Future<Output = QResult<Value>> + Send>>;

/// How a command runs.
#[derive(Clone, Copy)]
pub enum Run {
    /// `qmp_capabilities`: handled by the connection (negotiation state).
    Negotiation,
    Sync(SyncFn),
    Async(AsyncFn),
}

/// One QMP command.
pub struct CommandDef {
    pub name: &'static str,
    /// May be sent with `exec-oob` (as in QEMU, only the migration recovery
    /// commands).
    pub oob: bool,
    pub run: Run,
}

const fn sync(name: &'static str, f: SyncFn) -> CommandDef {
    CommandDef { name, oob: false, run: Run::Sync(f) }
}

const fn oob(name: &'static str, f: SyncFn) -> CommandDef {
    CommandDef { name, oob: true, run: Run::Sync(f) }
}

/// Every command this server knows, in `query-commands` order. Adding a
/// command means adding one line here.
pub const COMMANDS: &[CommandDef] = &[
    CommandDef { name: "qmp_capabilities", oob: false, run: Run::Negotiation },
    sync("query-version", |_, a| a.finish().map(|_| version())),
    sync("query-commands", |_, a| a.finish().map(|_| query_commands())),
    sync("query-status", |s, a| a.finish().map(|_| query_status(s))),
    sync("query-migrate", |s, a| a.finish().map(|_| migration::query_migrate(s))),
    sync("migrate-set-capabilities", migration::set_capabilities),
    sync("query-migrate-capabilities", |s, a| a.finish().map(|_| migration::query_capabilities(s))),
    sync("migrate-set-parameters", migration::set_parameters),
    sync("query-migrate-parameters", |s, a| {
        a.finish().map(|_| Value::Object(s.lock().parameters.clone()))
    }),
    sync("migrate-incoming", migration::migrate_incoming),
    oob("migrate-pause", |s, a| {
        a.finish()?;
        s.pause().map_err(QmpErr::generic)?;
        Ok(json!({}))
    }),
    oob("migrate-recover", |s, mut a| {
        let uri = a.str("uri")?;
        a.finish()?;
        s.recover(&uri).map_err(QmpErr::generic)?;
        Ok(json!({}))
    }),
    sync("cont", |s, a| {
        a.finish()?;
        cont(s)
    }),
    sync("stop", |s, a| {
        a.finish()?;
        stop(s);
        Ok(json!({}))
    }),
    // The connection asks the process to quit after sending the reply.
    sync("quit", |_, a| a.finish().map(|_| json!({}))),
    sync("x-crossmig-query-ramblocks", |s, a| a.finish().map(|_| crossmig::ramblocks(s))),
    CommandDef {
        name: "x-crossmig-ram-digests",
        oob: false,
        run: Run::Async(|s, a| Box::pin(crossmig::ram_digests(s, a))),
    },
    CommandDef {
        name: "x-crossmig-dump-ramblock",
        oob: false,
        run: Run::Async(|s, a| Box::pin(crossmig::dump_ramblock(s, a))),
    },
    sync("x-crossmig-query-devices", |s, a| a.finish().map(|_| crossmig::query_devices(s))),
    sync("x-crossmig-device-data", crossmig::device_data),
];

/// The command named `name`.
pub fn find(name: &str) -> Option<&'static CommandDef> {
    COMMANDS.iter().find(|c| c.name == name)
}

fn not_found(name: &str) -> QmpErr {
    QmpErr::not_found(format!("The command {name} has not been found"))
}

/// Execute one command (after negotiation).
pub(super) async fn dispatch(
    shared: &Shared,
    name: &str,
    args: Map<String, Value>,
) -> QResult<Value> {
    let a = Args::new(args);
    match find(name).map(|c| c.run) {
        Some(Run::Sync(f)) => f(shared, a),
        Some(Run::Async(f)) => f(shared.clone(), a).await,
        Some(Run::Negotiation) | None => Err(not_found(name)),
    }
}

/// Whether `name` may run out of band: `Err` is the reply when not.
pub(super) fn check_oob(name: &str) -> QResult<()> {
    match find(name) {
        None => Err(not_found(name)),
        Some(c) if !c.oob => {
            Err(QmpErr::generic(format!("The command {name} does not support OOB")))
        }
        Some(_) => Ok(()),
    }
}

/// The version rust-dest reports in the greeting and `query-version`: it
/// presents itself as QEMU 10.0.0 so clients enable the matching feature set.
pub fn version() -> Value {
    json!({
        "qemu": { "major": 10, "minor": 0, "micro": 0 },
        "package": concat!(" (rust-dest ", env!("CARGO_PKG_VERSION"), ")"),
    })
}

fn query_commands() -> Value {
    Value::Array(COMMANDS.iter().map(|c| json!({ "name": c.name })).collect())
}

fn query_status(shared: &Shared) -> Value {
    let rs = shared.lock().run_state;
    json!({ "status": rs.as_str(), "running": rs == RunState::Running, "singlestep": false })
}

fn cont(shared: &Shared) -> QResult<Value> {
    let (status, rs) = {
        let mut g = shared.lock();
        let (status, rs) = (g.status, g.run_state);
        if status == MigStatus::Failed || rs == RunState::PostMigrate {
            return Err(QmpErr::generic("Cannot continue: the incoming migration failed"));
        }
        if rs == RunState::InMigrate {
            // Like QEMU's autostart: run as soon as the migration completes.
            g.start_paused = false;
        }
        (status, rs)
    };
    match rs {
        RunState::InMigrate if status == MigStatus::Completed => {
            shared.set_run_state(RunState::Running)
        }
        RunState::Paused => shared.set_run_state(RunState::Running),
        _ => {}
    }
    Ok(json!({}))
}

fn stop(shared: &Shared) {
    let rs = {
        let mut g = shared.lock();
        if g.run_state == RunState::InMigrate {
            // Stay paused once the incoming migration completes.
            g.start_paused = true;
        }
        g.run_state
    };
    if rs == RunState::Running {
        shared.set_run_state(RunState::Paused);
    }
}
