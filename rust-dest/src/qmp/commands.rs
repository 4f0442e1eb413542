//! The QMP command table: ONE list of name, argument type, return type and
//! handler, which dispatches (after checking the arguments against their
//! type), answers `query-commands` and generates `query-qmp-schema`, and
//! says which commands allow `exec-oob`.

use std::future::Future;
use std::pin::Pin;

use serde_json::{json, Map, Value};

use super::args::{Args, QResult, QmpErr};
use super::schema::{self, ObjTy, Ty, EMPTY};
use super::types as t;
use super::{crossmig, fdcmds, info, migration, params};
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
    /// The arguments it takes (checked before the handler runs).
    pub args: &'static ObjTy,
    /// What it returns.
    pub ret: Ty,
    pub run: Run,
}

const OK: Ty = Ty::Obj(&EMPTY);

const fn sync(name: &'static str, args: &'static ObjTy, ret: Ty, f: SyncFn) -> CommandDef {
    CommandDef { name, oob: false, args, ret, run: Run::Sync(f) }
}

/// A command without arguments.
const fn query(name: &'static str, ret: Ty, f: SyncFn) -> CommandDef {
    sync(name, &EMPTY, ret, f)
}

const fn oob(name: &'static str, args: &'static ObjTy, f: SyncFn) -> CommandDef {
    CommandDef { name, oob: true, args, ret: OK, run: Run::Sync(f) }
}

const fn slow(name: &'static str, args: &'static ObjTy, f: AsyncFn) -> CommandDef {
    CommandDef { name, oob: false, args, ret: Ty::Any, run: Run::Async(f) }
}

/// Every command this server knows, in `query-commands` order. Adding a
/// command means adding one line here.
pub const COMMANDS: &[CommandDef] = &[
    CommandDef {
        name: "qmp_capabilities",
        oob: false,
        args: &t::QMP_CAPABILITIES_ARGS,
        ret: OK,
        run: Run::Negotiation,
    },
    query("query-version", Ty::Obj(&t::VERSION_INFO), |_, a| a.finish().map(|_| version())),
    query("query-commands", t::COMMAND_LIST, |_, a| a.finish().map(|_| query_commands())),
    query("query-qmp-schema", Ty::Array(&Ty::Any), |_, a| {
        a.finish().map(|_| schema::introspect(COMMANDS, t::EVENTS))
    }),
    query("query-status", Ty::Obj(&t::STATUS_INFO), |s, a| a.finish().map(|_| query_status(s))),
    query("query-name", Ty::Obj(&t::NAME_INFO), |s, a| a.finish().map(|_| info::name(s))),
    query("query-uuid", Ty::Obj(&t::UUID_INFO), |s, a| a.finish().map(|_| info::uuid(s))),
    query("query-kvm", Ty::Obj(&t::KVM_INFO), |_, a| {
        a.finish().map(|_| json!({ "enabled": false, "present": false }))
    }),
    query("query-cpus-fast", t::CPU_LIST, |s, a| a.finish().map(|_| info::cpus_fast(s))),
    sync("query-machines", &t::MACHINES_ARGS, t::MACHINE_LIST, info::machines),
    query("query-target", Ty::Obj(&t::TARGET_INFO), |_, a| {
        a.finish().map(|_| json!({ "arch": "x86_64" }))
    }),
    sync("human-monitor-command", &t::HMP_ARGS, Ty::Str, info::hmp),
    query("query-migrate", Ty::Obj(&t::MIGRATION_INFO), |s, a| {
        a.finish().map(|_| migration::query_migrate(s))
    }),
    sync("migrate-set-capabilities", &t::SET_CAPABILITIES_ARGS, OK, migration::set_capabilities),
    query("query-migrate-capabilities", t::CAPABILITY_LIST, |s, a| {
        a.finish().map(|_| migration::query_capabilities(s))
    }),
    sync("migrate-set-parameters", &t::SET_PARAMETERS_ARGS, OK, params::set_parameters),
    query("query-migrate-parameters", Ty::Obj(&t::PARAMETERS), |s, a| {
        a.finish().map(|_| Value::Object(s.lock().parameters.clone()))
    }),
    sync("migrate-incoming", &t::INCOMING_ARGS, OK, migration::migrate_incoming),
    oob("migrate-pause", &EMPTY, |s, a| {
        a.finish()?;
        s.pause().map_err(QmpErr::generic)?;
        Ok(json!({}))
    }),
    oob("migrate-recover", &t::RECOVER_ARGS, |s, mut a| {
        let uri = a.str("uri")?;
        a.finish()?;
        s.recover(&uri).map_err(QmpErr::generic)?;
        Ok(json!({}))
    }),
    sync("getfd", &t::FDNAME_ARGS, OK, fdcmds::getfd),
    sync("closefd", &t::FDNAME_ARGS, OK, fdcmds::closefd),
    sync("add-fd", &t::ADD_FD_ARGS, Ty::Obj(&t::ADDFD_INFO), fdcmds::add_fd),
    sync("remove-fd", &t::REMOVE_FD_ARGS, OK, fdcmds::remove_fd),
    query("query-fdsets", t::FDSET_LIST, fdcmds::query_fdsets),
    query("cont", OK, |s, a| {
        a.finish()?;
        cont(s)
    }),
    query("stop", OK, |s, a| {
        a.finish()?;
        stop(s);
        Ok(json!({}))
    }),
    // The connection asks the process to quit after sending the reply.
    query("quit", OK, |_, a| a.finish().map(|_| json!({}))),
    query("x-crossmig-query-ramblocks", Ty::Any, |s, a| a.finish().map(|_| crossmig::ramblocks(s))),
    slow("x-crossmig-ram-digests", &t::DIGESTS_ARGS, |s, a| Box::pin(crossmig::ram_digests(s, a))),
    slow("x-crossmig-dump-ramblock", &t::DUMP_ARGS, |s, a| Box::pin(crossmig::dump_ramblock(s, a))),
    query("x-crossmig-query-devices", Ty::Any, |s, a| {
        a.finish().map(|_| crossmig::query_devices(s))
    }),
    sync("x-crossmig-device-data", &t::DEVICE_DATA_ARGS, Ty::Any, crossmig::device_data),
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
    let Some(c) = find(name) else { return Err(not_found(name)) };
    if matches!(c.run, Run::Negotiation) {
        return Err(not_found(name));
    }
    // Members, types and enum values as declared: the same declaration
    // `query-qmp-schema` publishes.
    schema::check_object(&args, c.args, "")?;
    let a = Args::new(args);
    match c.run {
        Run::Sync(f) => f(shared, a),
        Run::Async(f) => f(shared.clone(), a).await,
        Run::Negotiation => Err(not_found(name)),
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
    json!({ "status": rs.as_str(), "running": rs == RunState::Running })
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
