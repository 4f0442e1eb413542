//! The multifd receive side (QEMU's `migration/multifd.c` destination):
//! [`MultifdRecv`] is shared by the main channel's loader and one thread per
//! multifd channel ([`channel`]); it holds the channel configuration and the
//! sync points that keep pages of different rounds in order
//! (docs/multifd.md section 6).

use std::io::Read;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::channel::Sock;
use crate::postcopy::PostcopyRuntime;
use crate::state::Shared;
use wire::multifd::Compression;

pub mod channel;
pub mod decomp;
mod recv;
#[cfg(test)]
mod tests;

pub use channel::ChannelError;

/// How long a sync point may wait without any multifd channel making
/// progress before the migration fails.
pub const SYNC_STALL: Duration = Duration::from_secs(60);
/// How often a waiter re-checks for failure.
const TICK: Duration = Duration::from_millis(100);

/// Why the main channel could not pass a sync point.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A channel failed (its error is already the migration's error).
    #[error("{0}")]
    ChannelFailed(String),
    #[error("multifd channel {id} closed at byte offset {at} before its sync packet {want} (it sent {got})")]
    Closed { id: u8, at: u64, want: u64, got: u64 },
    #[error("multifd: {missing} of {channels} channel(s) never connected, waiting for sync point {want}")]
    NotConnected { missing: u32, channels: u32, want: u64 },
    #[error("multifd: no channel progressed for {secs} s while waiting for sync point {want} (channels synced: {synced:?})")]
    Stalled { secs: u64, want: u64, synced: Vec<u64> },
    #[error("multifd: the migration ended while waiting for sync point {want}")]
    Ended { want: u64 },
}

/// The source's multifd setup as the destination knows it (parameters set
/// on the destination, never sent on the wire).
#[derive(Clone, Debug)]
pub struct MultifdConfig {
    pub channels: u32,
    pub compression: Compression,
    /// Our `-uuid` (all zero without one, as QEMU's `qemu_uuid`).
    pub uuid: [u8; 16],
}

impl MultifdConfig {
    /// From the destination's migration parameters (`multifd-channels`,
    /// `multifd-compression`).
    pub fn from_shared(shared: &Shared, uuid: [u8; 16]) -> MultifdConfig {
        let g = shared.lock();
        let channels = g.parameters.get("multifd-channels").and_then(|v| v.as_u64()).unwrap_or(2);
        let compression = g
            .parameters
            .get("multifd-compression")
            .and_then(|v| v.as_str())
            .and_then(Compression::from_name)
            .unwrap_or(Compression::None);
        MultifdConfig { channels: channels.clamp(1, 255) as u32, compression, uuid }
    }
}

#[derive(Default)]
struct ChanState {
    connected: bool,
    /// SYNC packets fully applied.
    synced: u64,
    /// Closed (cleanly or not) at this byte offset.
    closed_at: Option<u64>,
    /// Bytes read so far (progress for the stall timeout).
    bytes: u64,
    /// A second handle on the channel's socket, to see a reset the
    /// channel's thread has not read yet ([`MultifdRecv::reset_channel`]).
    probe: Option<Sock>,
}

#[derive(Default)]
struct St {
    chans: Vec<ChanState>,
    /// Sync points the main channel has passed (channels may go on past
    /// their SYNC packet number `released`).
    released: u64,
    failed: Option<String>,
    ended: bool,
    /// The main channel has created the RAMBlocks (MEM_SIZE list).
    blocks_ready: bool,
    /// Sockets to shut down when the migration fails or ends.
    socks: Vec<Sock>,
}

/// How a channel places pages: `None` writes them directly (precopy);
/// once postcopy listens, the runtime places them atomically through
/// userfaultfd, like the main channel.
pub type Placement = Option<Arc<PostcopyRuntime>>;

/// Shared between the main channel's loader and the channel threads.
pub struct MultifdRecv {
    shared: Shared,
    cfg: MultifdConfig,
    st: Mutex<St>,
    cv: Condvar,
    /// Channels hold it for reading while they place a packet's pages; the
    /// loader holds it for writing while it registers RAM with userfaultfd
    /// at POSTCOPY_LISTEN, so no page is written directly into memory that
    /// is being registered (it would be discarded yet marked received).
    placement: RwLock<Placement>,
}

impl MultifdRecv {
    pub fn new(shared: Shared, cfg: MultifdConfig) -> Arc<MultifdRecv> {
        let chans = (0..cfg.channels).map(|_| ChanState::default()).collect();
        Arc::new(MultifdRecv {
            shared,
            cfg,
            st: Mutex::new(St { chans, ..St::default() }),
            cv: Condvar::new(),
            placement: RwLock::new(None),
        })
    }

    pub fn config(&self) -> &MultifdConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Exclusive access to the placement: hold it while postcopy starts
    /// listening and store the runtime in it, so later multifd pages are
    /// placed like the main channel's (`migration/postcopy-ram.c`
    /// `postcopy_place_page()`).
    pub fn placement_mut(&self) -> RwLockWriteGuard<'_, Placement> {
        self.placement.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The placement for one packet's pages.
    fn placement(&self) -> RwLockReadGuard<'_, Placement> {
        self.placement.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep a handle of a channel's socket, shut down when the migration
    /// fails or ends (so a channel thread blocked on a read returns).
    pub fn add_socket(&self, s: Sock) {
        let mut g = self.lock();
        if g.ended || g.failed.is_some() {
            s.shutdown();
        } else {
            g.socks.push(s);
        }
    }

    /// Run one multifd channel to its end on the calling thread. The outcome
    /// is also in the shared state (a failure fails the migration).
    pub fn run_channel(&self, src: Box<dyn Read + Send>) -> Result<(), ChannelError> {
        self.run_channel_direct(src, None)
    }

    /// [`MultifdRecv::run_channel`] on a socket: `src` reads the channel
    /// from its first byte, `direct` is the same socket, from which
    /// uncompressed pages are received straight into guest RAM.
    pub fn run_channel_direct(
        &self,
        src: Box<dyn Read + Send>,
        direct: Option<Sock>,
    ) -> Result<(), ChannelError> {
        let res = channel::run(self, src, direct);
        if let Err(ChannelError::Ended { .. }) = &res {
            tracing::info!("multifd channel stopped: the migration ended");
        } else if let Err(e @ (ChannelError::Io { .. } | ChannelError::Truncated { .. })) = &res {
            if self.placement().is_some() {
                // Once postcopy listens the channels carry nothing more
                // (docs/multifd.md section 11): losing one is part of a
                // network failure the main channel pauses and recovers from;
                // QEMU's destination only ends the channel's thread
                // (`multifd_recv_thread()`), the migration goes on.
                tracing::warn!("{e}; postcopy runs, the migration goes on without the channel");
            } else {
                tracing::error!("{e}");
                self.fail(e.to_string());
            }
        } else if let Err(e) = &res {
            let msg = e.to_string();
            tracing::error!("{msg}");
            self.fail(msg);
        }
        res
    }

    /// A channel failed: fail the migration with its error and wake every
    /// waiter.
    pub fn fail(&self, msg: String) {
        self.shared.fail(msg.clone());
        let mut g = self.lock();
        g.failed.get_or_insert(msg);
        for s in g.socks.drain(..) {
            s.shutdown();
        }
        g.chans.iter_mut().for_each(|c| c.probe = None);
        self.cv.notify_all();
    }

    /// The migration ended (completed or failed on the main channel).
    pub fn end(&self) {
        {
            let mut g = self.lock();
            g.ended = true;
            // First: a channel blocked reading a packet's pages holds the
            // placement (it returns once its socket is shut down).
            for s in g.socks.drain(..) {
                s.shutdown();
            }
            g.chans.iter_mut().for_each(|c| c.probe = None);
            self.cv.notify_all();
        }
        *self.placement_mut() = None;
    }

    /// A channel whose connection was reset, though its thread may still
    /// be reading what arrived before the reset: its id and the byte offset
    /// of the last packet it applied. When the main channel then closes
    /// inside a record, the source gave up because of that reset, and the
    /// reset is the migration's error, not the main channel's end.
    pub fn reset_channel(&self) -> Option<(u8, u64)> {
        let g = self.lock();
        g.chans.iter().enumerate().find_map(|(id, c)| {
            c.probe.as_ref().filter(|s| s.error_pending()).map(|_| (id as u8, c.bytes))
        })
    }

    /// The main channel created the RAMBlocks of the MEM_SIZE list: packets
    /// naming them can be applied.
    pub fn blocks_ready(&self) {
        self.lock().blocks_ready = true;
        self.cv.notify_all();
    }

    /// Wait until the RAMBlocks exist (a channel may deliver pages before
    /// the main channel's MEM_SIZE list is loaded: QEMU's destination has
    /// its RAMBlocks from the start, rust-dest creates them from the
    /// stream). False when the migration ended or failed meanwhile.
    fn wait_blocks(&self) -> bool {
        let mut g = self.lock();
        loop {
            if g.blocks_ready {
                return true;
            }
            if g.failed.is_some() || g.ended || self.shared.lock().status.is_terminal() {
                return false;
            }
            g = self.cv.wait_timeout(g, TICK).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Wait until every channel has connected and passed its initial
    /// packet: like QEMU's destination, which starts loading the main
    /// channel only then (`migration/migration.c:
    /// migration_has_all_channels()`), so until then the status stays
    /// `setup` and the main channel is not read. False when the migration
    /// failed (e.g. a bad initial packet) or ended meanwhile.
    pub fn wait_all_connected(&self) -> bool {
        let mut g = self.lock();
        loop {
            if g.chans.iter().all(|c| c.connected) {
                return true;
            }
            if g.failed.is_some() || g.ended || self.shared.lock().status.is_terminal() {
                return false;
            }
            g = self.cv.wait_timeout(g, TICK).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Register channel `id` and its socket's `probe` (false: already
    /// connected).
    fn connect(&self, id: u8, probe: Option<Sock>) -> bool {
        let mut g = self.lock();
        let first = !std::mem::replace(&mut g.chans[id as usize].connected, true);
        if first && !g.ended && g.failed.is_none() {
            g.chans[id as usize].probe = probe;
        }
        self.cv.notify_all();
        first
    }

    fn progress(&self, id: u8, bytes: u64) {
        self.lock().chans[id as usize].bytes += bytes;
    }

    fn closed(&self, id: u8, at: u64) {
        let mut g = self.lock();
        g.chans[id as usize].closed_at = Some(at);
        self.cv.notify_all();
    }

    /// Channel `id` applied everything up to its next SYNC packet: record
    /// it and wait until the main channel reaches the same sync point
    /// (QEMU's `multifd_recv_thread()` waiting on `sem_sync`). False when
    /// the migration ended or failed meanwhile.
    fn channel_synced(&self, id: u8) -> bool {
        let mut g = self.lock();
        g.chans[id as usize].synced += 1;
        let mine = g.chans[id as usize].synced;
        self.cv.notify_all();
        loop {
            if g.failed.is_some() || g.ended || self.shared.lock().status.is_terminal() {
                return false;
            }
            if g.released >= mine {
                return true;
            }
            g = self.cv.wait_timeout(g, TICK).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// The main channel reached a sync point (a MULTIFD_FLUSH record, or a
    /// RAM section's EOS in per-section mode): wait until every channel has
    /// applied its pages up to its next SYNC packet, then let them go on
    /// (QEMU's `multifd_recv_sync_main()`).
    pub fn sync_main(&self) -> Result<(), SyncError> {
        let mut g = self.lock();
        let want = g.released + 1;
        let mut last_bytes: u64 = g.chans.iter().map(|c| c.bytes).sum();
        let mut last_progress = Instant::now();
        loop {
            if let Some(f) = &g.failed {
                return Err(SyncError::ChannelFailed(f.clone()));
            }
            if g.ended {
                return Err(SyncError::Ended { want });
            }
            if g.chans.iter().all(|c| c.synced >= want) {
                g.released = want;
                self.cv.notify_all();
                return Ok(());
            }
            for (id, c) in g.chans.iter().enumerate() {
                if let (Some(at), true) = (c.closed_at, c.synced < want) {
                    let (id, got) = (id as u8, c.synced);
                    return Err(SyncError::Closed { id, at, want, got });
                }
            }
            let bytes: u64 = g.chans.iter().map(|c| c.bytes).sum();
            if bytes != last_bytes {
                last_bytes = bytes;
                last_progress = Instant::now();
            } else if last_progress.elapsed() >= SYNC_STALL {
                let missing = g.chans.iter().filter(|c| !c.connected).count() as u32;
                if missing > 0 {
                    let channels = self.cfg.channels;
                    return Err(SyncError::NotConnected { missing, channels, want });
                }
                let synced = g.chans.iter().map(|c| c.synced).collect();
                return Err(SyncError::Stalled { secs: SYNC_STALL.as_secs(), want, synced });
            }
            g = self.cv.wait_timeout(g, TICK).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// Whether a machine type syncs multifd at every RAM section's EOS rather
/// than at MULTIFD_FLUSH records: the compat property
/// `multifd-flush-after-each-section` is on for machine types up to 8.0
/// (`hw/core/machine.c: hw_compat_8_0`). Unversioned names (aliases such as
/// `q35`) are the newest machine type. `None` when `machine` has no version.
pub fn flush_after_each_section(machine: &str) -> Option<bool> {
    let ver = machine.rsplit('-').next()?;
    let (maj, min) = ver.split_once('.')?;
    let (maj, min): (u32, u32) = (maj.parse().ok()?, min.parse().ok()?);
    Some((maj, min) <= (8, 0))
}
