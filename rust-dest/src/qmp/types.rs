//! The argument, return and event types of rust-dest's QMP commands, named
//! after QEMU's QAPI types (`qapi/migration.json`, `qapi/machine.json`,
//! `qapi/run-state.json`, `qapi/control.json`, `qapi/misc.json`) and holding
//! the members rust-dest reads or answers.

use super::schema::{opt, req, EnumTy, EventDef, ObjTy, Ty, EMPTY};
use crate::state::KNOWN_CAPABILITIES;

use Ty::{Any, Bool, Int, Str, U32, U64, U8};

const fn obj(o: &'static ObjTy) -> Ty {
    Ty::Obj(o)
}

pub static RUN_STATE: EnumTy = EnumTy {
    values: &[
        "debug",
        "inmigrate",
        "internal-error",
        "io-error",
        "paused",
        "postmigrate",
        "prelaunch",
        "finish-migrate",
        "restore-vm",
        "running",
        "save-vm",
        "shutdown",
        "suspended",
        "watchdog",
        "guest-panicked",
        "colo",
    ],
};
pub static MIGRATION_STATUS: EnumTy = EnumTy {
    values: &[
        "none",
        "setup",
        "cancelling",
        "cancelled",
        "active",
        "postcopy-active",
        "postcopy-paused",
        "postcopy-recover-setup",
        "postcopy-recover",
        "completed",
        "failed",
        "colo",
        "pre-switchover",
        "device",
        "wait-unplug",
    ],
};
/// Every capability name, plus QEMU 9.0's legacy `compress`: the schema
/// describes every version rust-dest can behave as; `compress` is refused at
/// run time unless the machine type is QEMU 9.0 or older
/// (`qmp/migration.rs`, `state::compress_exists`).
static CAPABILITY_NAMES: [&str; 23] = {
    let mut out = ["compress"; 23];
    let mut i = 0;
    while i < 22 {
        out[i] = KNOWN_CAPABILITIES[i];
        i += 1;
    }
    out
};
pub static CAPABILITY: EnumTy = EnumTy { values: &CAPABILITY_NAMES };
pub static SYS_EMU_TARGET: EnumTy = EnumTy { values: &["x86_64"] };
pub static QMP_CAPABILITY: EnumTy = EnumTy { values: &["oob"] };
pub static SHUTDOWN_CAUSE: EnumTy = EnumTy {
    values: &[
        "none",
        "host-error",
        "host-qmp-quit",
        "host-qmp-system-reset",
        "host-signal",
        "host-ui",
        "guest-shutdown",
        "guest-reset",
        "guest-panic",
        "subsystem-reset",
        "snapshot-load",
    ],
};
pub static COMPRESSION: EnumTy =
    EnumTy { values: &["none", "zlib", "zstd", "qatzip", "qpl", "uadk"] };
pub static MIG_MODE: EnumTy = EnumTy { values: &["normal", "cpr-reboot", "cpr-transfer"] };
pub static ZERO_PAGE: EnumTy = EnumTy { values: &["none", "legacy", "multifd"] };
pub static CHANNEL_TYPE: EnumTy = EnumTy { values: &["main", "cpr"] };

/// `StrOrNull`.
pub static STR_OR_NULL: [Ty; 2] = [Str, Ty::Null];

pub static QMP_CAPABILITIES_ARGS: ObjTy =
    ObjTy { members: &[opt("enable", Ty::Array(&Ty::Enum(&QMP_CAPABILITY)))] };

static VERSION_TRIPLE: ObjTy =
    ObjTy { members: &[req("major", Int), req("minor", Int), req("micro", Int)] };
pub static VERSION_INFO: ObjTy =
    ObjTy { members: &[req("qemu", obj(&VERSION_TRIPLE)), req("package", Str)] };
static COMMAND_INFO: ObjTy = ObjTy { members: &[req("name", Str)] };
pub static COMMAND_LIST: Ty = Ty::Array(&obj(&COMMAND_INFO));
pub static STATUS_INFO: ObjTy =
    ObjTy { members: &[req("running", Bool), req("status", Ty::Enum(&RUN_STATE))] };
pub static NAME_INFO: ObjTy = ObjTy { members: &[opt("name", Str)] };
pub static UUID_INFO: ObjTy = ObjTy { members: &[req("UUID", Str)] };
pub static KVM_INFO: ObjTy = ObjTy { members: &[req("enabled", Bool), req("present", Bool)] };
pub static TARGET_INFO: ObjTy = ObjTy { members: &[req("arch", Ty::Enum(&SYS_EMU_TARGET))] };
static CPU_PROPS: ObjTy = ObjTy {
    members: &[
        opt("node-id", Int),
        opt("socket-id", Int),
        opt("die-id", Int),
        opt("module-id", Int),
        opt("core-id", Int),
        opt("thread-id", Int),
    ],
};
static CPU_INFO_FAST: ObjTy = ObjTy {
    members: &[
        req("cpu-index", Int),
        req("qom-path", Str),
        req("thread-id", Int),
        opt("props", obj(&CPU_PROPS)),
        req("target", Ty::Enum(&SYS_EMU_TARGET)),
    ],
};
pub static CPU_LIST: Ty = Ty::Array(&obj(&CPU_INFO_FAST));
pub static MACHINES_ARGS: ObjTy = ObjTy { members: &[opt("compat-props", Bool)] };
static MACHINE_INFO: ObjTy = ObjTy {
    members: &[
        req("name", Str),
        opt("alias", Str),
        opt("is-default", Bool),
        req("cpu-max", Int),
        req("hotpluggable-cpus", Bool),
        req("numa-mem-supported", Bool),
        req("deprecated", Bool),
        opt("default-cpu-type", Str),
        opt("default-ram-id", Str),
        req("acpi", Bool),
    ],
};
pub static MACHINE_LIST: Ty = Ty::Array(&obj(&MACHINE_INFO));
pub static HMP_ARGS: ObjTy = ObjTy { members: &[req("command-line", Str), opt("cpu-index", Int)] };

// --- migration -----------------------------------------------------------

static MIGRATION_STATS: ObjTy = ObjTy {
    members: &[
        req("transferred", Int),
        req("remaining", Int),
        req("total", Int),
        req("duplicate", Int),
        req("normal", Int),
        req("normal-bytes", Int),
        req("dirty-pages-rate", Int),
        req("mbps", Ty::Number),
        req("dirty-sync-count", Int),
        req("postcopy-requests", Int),
        req("page-size", Int),
        req("multifd-bytes", Int),
        req("pages-per-second", Int),
        req("precopy-bytes", Int),
        req("downtime-bytes", Int),
        req("postcopy-bytes", Int),
        req("dirty-sync-missed-zero-copy", Int),
    ],
};
pub static MIGRATION_INFO: ObjTy = ObjTy {
    members: &[
        opt("status", Ty::Enum(&MIGRATION_STATUS)),
        opt("ram", obj(&MIGRATION_STATS)),
        opt("total-time", Int),
        opt("error-desc", Str),
        opt("postcopy-blocktime", Int),
        opt("postcopy-vcpu-blocktime", Ty::Array(&Int)),
        opt("postcopy-latency", Int),
        opt("postcopy-latency-dist", Ty::Array(&Int)),
        opt("postcopy-vcpu-latency", Ty::Array(&Int)),
        opt("postcopy-non-vcpu-latency", Int),
        opt("socket-address", Ty::Array(&Any)),
        // rust-dest's postcopy and multifd metrics.
        opt("x-crossmig", Any),
    ],
};
static CAPABILITY_STATUS: ObjTy =
    ObjTy { members: &[req("capability", Ty::Enum(&CAPABILITY)), req("state", Bool)] };
pub static CAPABILITY_LIST: Ty = Ty::Array(&obj(&CAPABILITY_STATUS));
pub static SET_CAPABILITIES_ARGS: ObjTy =
    ObjTy { members: &[req("capabilities", Ty::Array(&obj(&CAPABILITY_STATUS)))] };

/// The members of `MigrateSetParameters` (`tls_*` as `StrOrNull`) or of
/// `MigrationParameters` (all strings).
macro_rules! parameters {
    ($tls:expr) => {
        &[
            opt("announce-initial", U64),
            opt("announce-max", U64),
            opt("announce-rounds", U64),
            opt("announce-step", U64),
            opt("throttle-trigger-threshold", U8),
            opt("cpu-throttle-initial", U8),
            opt("cpu-throttle-increment", U8),
            opt("cpu-throttle-tailslow", Bool),
            opt("tls-creds", $tls),
            opt("tls-hostname", $tls),
            opt("tls-authz", $tls),
            opt("max-bandwidth", U64),
            opt("avail-switchover-bandwidth", U64),
            opt("downtime-limit", U64),
            opt("x-checkpoint-delay", U32),
            opt("multifd-channels", U8),
            opt("xbzrle-cache-size", U64),
            opt("max-postcopy-bandwidth", U64),
            opt("max-cpu-throttle", U8),
            opt("multifd-compression", Ty::Enum(&COMPRESSION)),
            opt("multifd-zlib-level", U8),
            opt("multifd-qatzip-level", U8),
            opt("multifd-zstd-level", U8),
            opt("block-bitmap-mapping", Ty::Array(&Any)),
            opt("x-vcpu-dirty-limit-period", U64),
            opt("vcpu-dirty-limit", U64),
            opt("mode", Ty::Enum(&MIG_MODE)),
            opt("zero-page-detection", Ty::Enum(&ZERO_PAGE)),
            opt("direct-io", Bool),
            // QEMU 9.0 and older (legacy `compress`): refused at run time
            // for newer machine types (`qmp/params.rs`).
            opt("compress-level", U8),
            opt("compress-threads", U8),
            opt("decompress-threads", U8),
            opt("compress-wait-thread", Bool),
        ]
    };
}
pub static SET_PARAMETERS_ARGS: ObjTy = ObjTy { members: parameters!(Ty::Alt(&STR_OR_NULL)) };
pub static PARAMETERS: ObjTy = ObjTy { members: parameters!(Str) };

static MIGRATION_CHANNEL: ObjTy =
    ObjTy { members: &[req("channel-type", Ty::Enum(&CHANNEL_TYPE)), req("addr", Any)] };
pub static INCOMING_ARGS: ObjTy = ObjTy {
    members: &[
        opt("uri", Str),
        opt("channels", Ty::Array(&obj(&MIGRATION_CHANNEL))),
        opt("exit-on-error", Bool),
    ],
};
pub static RECOVER_ARGS: ObjTy = ObjTy { members: &[req("uri", Str)] };

// --- descriptors (monitor/fds.c) ----------------------------------------------

pub static FDNAME_ARGS: ObjTy = ObjTy { members: &[req("fdname", Str)] };
pub static ADD_FD_ARGS: ObjTy = ObjTy { members: &[opt("fdset-id", Int), opt("opaque", Str)] };
pub static ADDFD_INFO: ObjTy = ObjTy { members: &[req("fdset-id", Int), req("fd", Int)] };
pub static REMOVE_FD_ARGS: ObjTy = ObjTy { members: &[req("fdset-id", Int), opt("fd", Int)] };
static FDSET_FD_INFO: ObjTy = ObjTy { members: &[req("fd", Int), opt("opaque", Str)] };
static FDSET_INFO: ObjTy =
    ObjTy { members: &[req("fdset-id", Int), req("fds", Ty::Array(&obj(&FDSET_FD_INFO)))] };
pub static FDSET_LIST: Ty = Ty::Array(&obj(&FDSET_INFO));

// --- x-crossmig ------------------------------------------------------------

pub static DIGESTS_ARGS: ObjTy = ObjTy { members: &[opt("block", Str), opt("pages", Bool)] };
pub static DUMP_ARGS: ObjTy = ObjTy { members: &[req("block", Str), req("file", Str)] };
pub static DEVICE_DATA_ARGS: ObjTy =
    ObjTy { members: &[req("idstr", Str), opt("instance-id", Int)] };

// --- events ----------------------------------------------------------------

static MIGRATION_EVENT: ObjTy = ObjTy { members: &[req("status", Ty::Enum(&MIGRATION_STATUS))] };
static SHUTDOWN_EVENT: ObjTy =
    ObjTy { members: &[req("guest", Bool), req("reason", Ty::Enum(&SHUTDOWN_CAUSE))] };

/// Every event rust-dest emits.
pub static EVENTS: &[EventDef] = &[
    EventDef { name: "MIGRATION", data: &MIGRATION_EVENT },
    EventDef { name: "STOP", data: &EMPTY },
    EventDef { name: "RESUME", data: &EMPTY },
    EventDef { name: "SHUTDOWN", data: &SHUTDOWN_EVENT },
];
