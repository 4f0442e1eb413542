//! Shared, thread-safe view of one incoming migration: status, counters,
//! capabilities/parameters, kept device state, and the event bus that the QMP
//! server turns into QEMU-style `MIGRATION`/`STOP`/`RESUME` events.
//!
//! The loader thread(s) write here; the QMP server reads and (for
//! capabilities, parameters, run state) writes.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde_json::{json, Value};

use crate::ram::RamTable;

mod caps;
mod counters;
mod devices;
mod events;
pub mod fault_stats;
mod guest;
pub mod sched;
mod status;

pub use caps::{
    compress_exists, machine_version, Capabilities, Capability, ComboError, KNOWN_CAPABILITIES,
};
pub use counters::{Counters, MultifdChannelStats};
pub use devices::DeviceSection;
pub use events::Event;
pub use fault_stats::FaultStats;
pub use guest::{GuestInfo, VcpuIds};
pub use status::{MigStatus, PcState, RunState};

/// Callback used by `migrate-incoming` (with `-incoming defer`) and
/// `migrate-recover` to start listening on a URI. Returns where it listens,
/// or a QMP-style error text.
pub type IncomingStarter = Box<dyn Fn(&str) -> Result<ListenAddr, String> + Send + Sync>;

/// Where the incoming migration listens: what `query-migrate` reports in
/// `socket-address` (QEMU lists the bound listener's address, so a TCP
/// port 0 shows as the port the kernel chose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Inet(std::net::SocketAddr),
    Unix(std::path::PathBuf),
    /// `file:`, `fd:` or `exec:`: no socket to report.
    NoSocket,
}

/// Callback used by `migrate-pause`: shut the incoming main channel down.
pub type PauseHandler = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

pub struct Inner {
    pub status: MigStatus,
    pub error_desc: Option<String>,
    pub run_state: RunState,
    /// `-S` was given: stay paused after migration until `cont`.
    pub start_paused: bool,
    /// Migration capabilities and their values.
    pub capabilities: Capabilities,
    /// Migration parameters (QEMU names), as JSON values.
    pub parameters: serde_json::Map<String, Value>,
    /// Where we listen (after `-incoming` or `migrate-incoming`).
    pub incoming: Option<ListenAddr>,
    /// True once a listener was started (a second migrate-incoming is refused).
    pub incoming_started: bool,
    pub started_at: Option<Instant>,
    pub finished_at: Option<Instant>,
    pub devices: Vec<DeviceSection>,
    /// The machine type named in the stream's configuration section.
    pub stream_machine: Option<String>,
    /// Our `-machine` type as given (a versioned one selects the QEMU
    /// version whose capability checks `migrate-set-capabilities` applies).
    pub machine: Option<String>,
    /// Decoded `globalstate` runstate (e.g. "running").
    pub globalstate: Option<String>,
    /// The whole vmdesc JSON, if one was received.
    pub vmdesc: Option<Value>,
    /// Postcopy incoming state.
    pub postcopy_state: PcState,
    /// Latencies of served faults in microseconds (for percentiles).
    pub fault_latencies_us: Vec<u64>,
    /// Per multifd channel statistics, by channel id.
    pub multifd_channels: std::collections::BTreeMap<u8, MultifdChannelStats>,
    /// `-name`, `-uuid`, `-smp` (for the QMP queries).
    pub guest: GuestInfo,
}

/// The shared state. Cheap to clone (`Arc`).
#[derive(Clone)]
pub struct Shared(Arc<SharedInner>);

pub struct SharedInner {
    inner: Mutex<Inner>,
    pub counters: Counters,
    /// Postcopy fault stages, blocktime and latency (kept after postcopy).
    pub fault_stats: FaultStats,
    events: tokio::sync::broadcast::Sender<Event>,
    /// Guest RAM, once the RAMBlock list has been received (or pre-created
    /// from `-object memory-backend-file`).
    pub ram: Arc<RamTable>,
    starter: Mutex<Option<IncomingStarter>>,
    /// `migrate-recover URI`: listen for the recovery channel.
    recover: Mutex<Option<IncomingStarter>>,
    /// `migrate-pause`: shut the incoming main channel down.
    pause: Mutex<Option<PauseHandler>>,
    /// Signals process exit (`quit`).
    quit: Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

impl Shared {
    pub fn new(ram: Arc<RamTable>, start_paused: bool) -> Shared {
        let (tx, _) = tokio::sync::broadcast::channel(1024);
        Shared(Arc::new(SharedInner {
            inner: Mutex::new(Inner {
                status: MigStatus::None,
                error_desc: None,
                run_state: RunState::InMigrate,
                start_paused,
                capabilities: Capabilities::default(),
                parameters: default_parameters(),
                incoming: None,
                incoming_started: false,
                started_at: None,
                finished_at: None,
                devices: Vec::new(),
                stream_machine: None,
                machine: None,
                globalstate: None,
                vmdesc: None,
                postcopy_state: PcState::None,
                fault_latencies_us: Vec::new(),
                multifd_channels: Default::default(),
                guest: GuestInfo::default(),
            }),
            counters: Counters::default(),
            fault_stats: FaultStats::default(),
            events: tx,
            ram,
            starter: Mutex::new(None),
            recover: Mutex::new(None),
            pause: Mutex::new(None),
            quit: Mutex::new(None),
        }))
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn counters(&self) -> &Counters {
        &self.0.counters
    }

    /// Postcopy fault statistics ([`FaultStats`]).
    pub fn fault_stats(&self) -> &FaultStats {
        &self.0.fault_stats
    }

    pub fn ram(&self) -> &Arc<RamTable> {
        &self.0.ram
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.0.events.subscribe()
    }

    pub fn emit(&self, name: &'static str, data: Value) {
        let _ = self.0.events.send(Event { name, data });
    }

    /// Whether capability `c` is on.
    pub fn has(&self, c: Capability) -> bool {
        self.lock().capabilities.get(c)
    }

    /// Whether the capability named `name` (QEMU name) is on; unknown names
    /// are off.
    pub fn capability(&self, name: &str) -> bool {
        Capability::parse(name).is_some_and(|c| self.has(c))
    }

    /// Change the migration status and emit a `MIGRATION` event when the
    /// `events` capability is on (as QEMU's `migrate_set_state()`; observed
    /// on a 10.0 destination: no event without it).
    pub fn set_status(&self, st: MigStatus) {
        let events = {
            let mut g = self.lock();
            if g.status == st {
                return;
            }
            g.status = st;
            if st == MigStatus::Setup || (st == MigStatus::Active && g.started_at.is_none()) {
                g.started_at.get_or_insert_with(Instant::now);
            }
            if st.is_terminal() {
                g.finished_at = Some(Instant::now());
            }
            g.capabilities.get(Capability::Events)
        };
        tracing::info!(status = st.as_str(), "migration status");
        if events {
            self.emit("MIGRATION", json!({ "status": st.as_str() }));
        }
    }

    /// Fail the migration with a message (kept as `error-desc`).
    pub fn fail(&self, msg: String) {
        tracing::error!("incoming migration failed: {msg}");
        {
            let mut g = self.lock();
            if g.status.is_terminal() {
                return;
            }
            g.error_desc = Some(msg);
            g.run_state = RunState::PostMigrate;
        }
        self.set_status(MigStatus::Failed);
    }

    /// Set the run state, emitting `STOP`/`RESUME` as QEMU does.
    pub fn set_run_state(&self, rs: RunState) {
        let old = {
            let mut g = self.lock();
            std::mem::replace(&mut g.run_state, rs)
        };
        if old == rs {
            return;
        }
        match rs {
            RunState::Running => self.emit("RESUME", json!({})),
            RunState::Paused if old == RunState::Running => self.emit("STOP", json!({})),
            _ => {}
        }
    }

    pub fn set_incoming_starter(&self, f: IncomingStarter) {
        *self.0.starter.lock().unwrap() = Some(f);
    }

    /// Start listening on `uri` (used by `migrate-incoming`).
    pub fn start_incoming(&self, uri: &str) -> Result<ListenAddr, String> {
        let g = self.0.starter.lock().unwrap();
        match g.as_ref() {
            Some(f) => f(uri),
            None => Err("incoming migration is not available".into()),
        }
    }

    pub fn set_recover_handler(&self, f: IncomingStarter) {
        *self.0.recover.lock().unwrap() = Some(f);
    }

    /// `migrate-recover URI` (only in postcopy-paused). The new listener
    /// replaces the old one in `socket-address`, as in QEMU (which releases
    /// the old transport first: `qmp_migrate_recover()` in
    /// `migration/migration.c`).
    pub fn recover(&self, uri: &str) -> Result<(), String> {
        if self.lock().status != MigStatus::PostcopyPaused {
            return Err("Migrate recover can only be run when postcopy is paused.".into());
        }
        let addr = match self.0.recover.lock().unwrap().as_ref() {
            Some(f) => f(uri)?,
            None => return Err("postcopy recovery is not available".into()),
        };
        self.lock().incoming = Some(addr);
        Ok(())
    }

    pub fn set_pause_handler(&self, f: PauseHandler) {
        *self.0.pause.lock().unwrap() = Some(f);
    }

    /// `migrate-pause` on the destination: only during postcopy.
    pub fn pause(&self) -> Result<(), String> {
        let st = self.lock().status;
        if st != MigStatus::PostcopyActive && st != MigStatus::PostcopyRecover {
            return Err(format!("migrate-pause is currently only supported during postcopy-active or postcopy-recover state (current: {})", st.as_str()));
        }
        let g = self.0.pause.lock().unwrap();
        match g.as_ref() {
            Some(f) => f(),
            None => Err("no incoming migration to pause".into()),
        }
    }

    pub fn set_quit_sender(&self, tx: std::sync::mpsc::Sender<()>) {
        *self.0.quit.lock().unwrap() = Some(tx);
    }

    /// Ask the process to exit (QMP `quit`).
    pub fn request_quit(&self) {
        if let Some(tx) = self.0.quit.lock().unwrap().as_ref() {
            let _ = tx.send(());
        }
    }
}

fn default_parameters() -> serde_json::Map<String, Value> {
    let v = json!({
        "announce-initial": 50,
        "announce-max": 550,
        "announce-rounds": 5,
        "announce-step": 100,
        "throttle-trigger-threshold": 50,
        "cpu-throttle-initial": 20,
        "cpu-throttle-increment": 10,
        "cpu-throttle-tailslow": false,
        "tls-creds": "",
        "tls-hostname": "",
        "tls-authz": "",
        "max-bandwidth": 134217728u64,
        "avail-switchover-bandwidth": 0,
        "downtime-limit": 300,
        "x-checkpoint-delay": 20000,
        "multifd-channels": 2,
        "xbzrle-cache-size": 67108864u64,
        "max-postcopy-bandwidth": 0,
        "max-cpu-throttle": 99,
        "multifd-compression": "none",
        "multifd-zlib-level": 1,
        "multifd-zstd-level": 1,
        "multifd-qatzip-level": 1,
        "x-vcpu-dirty-limit-period": 1000,
        "vcpu-dirty-limit": 1,
        "mode": "normal",
        "zero-page-detection": "multifd",
        "direct-io": false
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}
