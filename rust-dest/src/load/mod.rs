//! The incoming-migration loader (QEMU's `migration/savevm.c` load side):
//! walks the main channel with [`wire::walk::Walker`], dispatches each record
//! (header, sections, commands, package, device state) and finishes or fails
//! the migration.
//!
//! Threads: one loader thread per main connection; during postcopy the
//! fault thread and simulated vCPUs ([`crate::postcopy`]) and the preempt
//! reader ([`preempt`]).

use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use crate::catalogue::DeviceCheck;
use crate::channel::session::{
    PreemptEnd, POSTCOPY_SILENCE_LIMIT, PREEMPT_STOP_TIMEOUT, RP_WRITE_TIMEOUT,
};
use crate::channel::{Incoming, ReadError, Reader, ReturnPath, Session, Sock};
use crate::compat::QemuVersion;
use crate::defects::{self, Defect};
use crate::postcopy::{PcState, PostcopyRuntime, RuntimeSlot, VcpuConfig};
use crate::ram::RamBlock;
use crate::state::{Capability, Counters, MigStatus, RunState, Shared};
use wire::command::Command;
use wire::ramrec::RamRecord;
use wire::rp::RpMessage;
use wire::stream::{SectionKind, TopRecord};
use wire::walk::{Item, Mode, Walker};

mod commands;
mod config;
mod device;
mod error;
#[cfg(test)]
mod fuzz_tests;
mod header;
pub mod mapped_ram;
pub mod multifd;
mod package;
pub mod preempt;
mod ram;
mod tail;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod version_tests;

pub use error::LoadError;
use mapped_ram::MappedRamFile;
use multifd::{MultifdConfig, MultifdRecv};

/// Default `--postcopy-window`: 256 KiB (the kernel doubles `SO_RCVBUF`).
/// Without it the kernel autotunes the main channel's window to many MiB
/// once rust-dest reads in large chunks, and a requested page waits behind
/// all of it (docs/postcopy-latency.md).
pub const POSTCOPY_WINDOW: usize = 256 << 10;

/// Loader configuration (from the command line).
#[derive(Clone, Debug)]
pub struct Config {
    /// Expect a configuration section after the header (QEMU's default).
    pub expect_configuration: bool,
    /// Section footers are present (QEMU's default).
    pub section_footers: bool,
    /// `-machine suppress-vmdesc=on`: no vmdesc after EOF.
    pub suppress_vmdesc: bool,
    /// `-machine TYPE` as given (checked against the stream's machine).
    pub machine: Option<String>,
    /// Cap on buffered device state (bytes).
    pub max_device_state: usize,
    pub vcpu: VcpuConfig,
    /// `-uuid`: what multifd channels' initial packets must carry (all
    /// zero without one, as in QEMU).
    pub uuid: [u8; 16],
    /// The QEMU version whose rules apply where versions differ.
    pub compat: QemuVersion,
    /// Device sections are checked against this catalogue, if any.
    pub devices: Option<DeviceCheck>,
    /// `--postcopy-window`: from POSTCOPY_LISTEN on, the main channel's
    /// receive buffer and the most one read takes (0: unchanged).
    pub postcopy_window: usize,
    /// The least the main channel's reads ask for
    /// ([`crate::channel::reader::READ_CHUNK`]; smaller when fed from memory).
    pub read_chunk: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            expect_configuration: true,
            section_footers: true,
            suppress_vmdesc: false,
            machine: None,
            max_device_state: 64 << 20,
            vcpu: VcpuConfig::default(),
            postcopy_window: POSTCOPY_WINDOW,
            uuid: [0; 16],
            compat: QemuVersion::NEWEST,
            devices: None,
            read_chunk: crate::channel::reader::READ_CHUNK,
        }
    }
}

/// The loader side of a session: what runs on the channels the session
/// classifies.
pub struct Dest {
    cfg: Config,
    slot: Arc<RuntimeSlot>,
    /// The multifd receive side, made from the parameters when the first
    /// channel of a multifd migration connects.
    multifd: OnceLock<Arc<MultifdRecv>>,
}

impl Dest {
    pub fn new(cfg: Config) -> Arc<Dest> {
        Arc::new(Dest { cfg, slot: Arc::new(RuntimeSlot::default()), multifd: OnceLock::new() })
    }

    fn multifd(&self, shared: &Shared) -> Arc<MultifdRecv> {
        self.multifd
            .get_or_init(|| {
                MultifdRecv::new(shared.clone(), MultifdConfig::from_shared(shared, self.cfg.uuid))
            })
            .clone()
    }
}

impl Incoming for Dest {
    fn main_channel(
        &self,
        session: Arc<Session>,
        r: Box<dyn Read + Send>,
        w: Box<dyn Write + Send>,
    ) {
        let mut l = Loader::new(session.shared.clone(), self.cfg.clone(), w);
        if session.shared.has(Capability::Multifd) {
            let mf = self.multifd(&session.shared);
            // Not a byte of the main channel before every multifd channel
            // is there (docs/multifd.md section 11); a failure meanwhile is
            // in the shared status, which `run` checks first.
            let _ = mf.wait_all_connected();
            l = l.with_multifd(mf);
        }
        // The outcome is in the shared state (status, error-desc).
        let _ = l.with_session(session, self.slot.clone()).run(r);
    }

    fn file_channel(&self, session: Arc<Session>, f: std::fs::File, base: u64) {
        let shared = session.shared.clone();
        if !shared.has(Capability::MappedRam) {
            return self.main_channel(session, Box::new(f), Box::new(std::io::sink()));
        }
        let opened = f
            .try_clone()
            .map_err(|source| mapped_ram::MappedRamError::Open {
                channel: 0,
                direct: false,
                source,
            })
            .and_then(|dup| MappedRamFile::open(Arc::new(dup), base, &shared));
        match opened {
            Ok(m) => {
                let l = Loader::new(shared, self.cfg.clone(), Box::new(std::io::sink()));
                // The outcome is in the shared state (status, error-desc).
                let _ =
                    l.with_mapped_ram(m).with_session(session, self.slot.clone()).run(Box::new(f));
            }
            Err(e) => {
                shared.fail(e.to_string());
                session.end();
            }
        }
    }

    fn preempt_channel(&self, session: Arc<Session>, r: Box<dyn Read + Send>) {
        // The session notes the end (`Session::start_preempt`).
        preempt::run(&session.shared, &self.slot, r);
    }

    fn multifd_channel(&self, session: Arc<Session>, r: Box<dyn Read + Send>, sock: Sock) {
        let mf = self.multifd(&session.shared);
        // Pages are received straight from the socket into guest RAM.
        let direct = sock.try_clone().ok();
        mf.add_socket(sock);
        // The outcome is in the shared state (a failure fails the migration).
        let _ = mf.run_channel_direct(r, direct);
    }
}

/// Why reading the next record stopped (before it is given a context).
enum Stop {
    Read(ReadError),
    Load(LoadError),
}

impl From<ReadError> for Stop {
    fn from(e: ReadError) -> Stop {
        Stop::Read(e)
    }
}

impl From<LoadError> for Stop {
    fn from(e: LoadError) -> Stop {
        Stop::Load(e)
    }
}

/// What the record loop does after a record.
enum Flow {
    Continue,
    /// The configuration announced `x-ignore-shared`.
    IgnoreShared,
    /// A FULL section at top level: switch to buffering device state.
    DeviceTail,
    /// EOF read.
    Eof,
    /// mapped-ram: the stream goes on at this file offset.
    Seek(u64),
}

/// Per-connection loader state.
pub struct Loader {
    /// The session (recovery connections); `None` when loading from memory.
    session: Option<Arc<Session>>,
    slot: Arc<RuntimeSlot>,
    shared: Shared,
    cfg: Config,
    rp: Option<Arc<ReturnPath>>,
    rp_writer: Option<Box<dyn Write + Send>>,
    rp_open: bool,
    /// The main channel's last RAMBlock (for CONTINUE).
    last_block: Option<Arc<RamBlock>>,
    pc_state: PcState,
    postcopy: Option<Arc<PostcopyRuntime>>,
    /// RAM is registered with userfaultfd and placed atomically (from
    /// LISTEN until END). Kept apart from the legality state, which QEMU can
    /// leave at DISCARD after a LISTEN (see postcopy/rules.rs).
    placing: bool,
    /// SWITCHOVER_ACK still to be sent.
    ack_pending: bool,
    /// Set by POSTCOPY_ADVISE: the blocks whose MEM_SIZE entry carries a
    /// page size, for the walker (applied after the record).
    sized_blocks: Option<Vec<String>>,
    /// The main channel's huge page being assembled (postcopy).
    tmp_page: crate::postcopy::TmpPage,
    /// Machine type named by the stream's configuration section.
    stream_machine: Option<String>,
    /// The PACKAGED command whose blob comes next: (length, offset).
    package: Option<(u32, u64)>,
    /// The multifd receive side, when the `multifd` capability is on.
    multifd: Option<Arc<MultifdRecv>>,
    /// The file of a `mapped-ram` stream (its own readers for multifd).
    mapped: Option<MappedRamFile>,
}

impl Loader {
    /// A loader writing its return path to `rp_writer`. Without
    /// [`Loader::with_session`] it cannot be recovered: a postcopy failure
    /// leaves it `postcopy-paused`.
    pub fn new(shared: Shared, cfg: Config, rp_writer: Box<dyn Write + Send>) -> Loader {
        Loader {
            session: None,
            slot: Arc::new(RuntimeSlot::default()),
            shared,
            cfg,
            rp: None,
            rp_writer: Some(rp_writer),
            rp_open: false,
            last_block: None,
            pc_state: PcState::None,
            postcopy: None,
            placing: false,
            ack_pending: false,
            sized_blocks: None,
            tmp_page: crate::postcopy::TmpPage::default(),
            stream_machine: None,
            package: None,
            multifd: None,
            mapped: None,
        }
    }

    /// Sync with these multifd channels (QEMU's sync points on the main
    /// channel: MULTIFD_FLUSH records or RAM EOS).
    pub fn with_multifd(mut self, mf: Arc<MultifdRecv>) -> Loader {
        self.multifd = Some(mf);
        self
    }

    /// Load a `mapped-ram` stream from this file (`load/mapped_ram.rs`).
    pub fn with_mapped_ram(mut self, f: MappedRamFile) -> Loader {
        self.mapped = Some(f);
        self
    }

    /// Attach to a session (recovery connections) and the runtime slot the
    /// preempt reader waits on.
    pub fn with_session(mut self, session: Arc<Session>, slot: Arc<RuntimeSlot>) -> Loader {
        self.session = Some(session);
        self.slot = slot;
        self
    }

    /// Run the whole incoming migration on `src`. Marks the migration
    /// completed or failed; never panics on bad input. A connection lost
    /// while postcopy runs pauses the migration (`postcopy-paused`) until a
    /// recovery connection arrives (`migrate-recover`). Returns the error
    /// that failed (or paused, when no recovery came) the migration.
    pub fn run(mut self, src: Box<dyn Read + Send>) -> Result<(), LoadError> {
        // A multifd channel may have failed the migration already.
        if self.shared.lock().status.is_terminal() {
            let msg = self.shared.lock().error_desc.clone().unwrap_or_default();
            self.run_end();
            return Err(LoadError::Protocol { at: None, msg });
        }
        self.shared.set_status(MigStatus::Active);
        let mut outcome = Ok(());
        let mut r = Reader::with_chunk(src, self.shared.clone(), self.cfg.read_chunk);
        let mut w = Walker::main(self.cfg.expect_configuration, self.cfg.section_footers);
        w.set_mapped_ram(self.shared.has(Capability::MappedRam));
        if let Some(m) = &self.mapped {
            r.set_seekable(m.file().clone(), m.base());
        }
        loop {
            match self.load(&mut r, &mut w) {
                Ok(()) => break,
                // Like QEMU: any load error once postcopy runs (the guest
                // runs here and the source no longer can) pauses instead of
                // failing, so the migration can be recovered.
                Err(e)
                    if self.pc_state == PcState::Running
                        && self.shared.has(Capability::PostcopyRam) =>
                {
                    if defects::active(Defect::ErrorReportsCompleted) {
                        // Seeded defect: the error is swallowed.
                        self.shared.set_status(MigStatus::Completed);
                        break;
                    }
                    tracing::warn!("postcopy paused: {e}");
                    self.pause(&e);
                    let Some(sock) = self.session.as_ref().and_then(|s| s.wait_recovery()) else {
                        outcome = Err(e);
                        break;
                    };
                    let wr = match sock.try_clone() {
                        Ok(wr) => {
                            let _ = wr.set_write_timeout(Some(RP_WRITE_TIMEOUT));
                            wr
                        }
                        Err(io) => {
                            self.fail(format!("recovery channel: {io}"));
                            outcome = Err(e);
                            break;
                        }
                    };
                    self.shared.set_status(MigStatus::PostcopyRecover);
                    self.rp_writer = Some(Box::new(wr));
                    r = Reader::with_chunk(
                        Box::new(sock),
                        self.shared.clone(),
                        self.cfg.read_chunk,
                    );
                    // The source opens the return path itself on the
                    // recovery channel (no OPEN_RETURN_PATH command). Page
                    // requests wait for POSTCOPY_RESUME (`commands.rs`).
                    self.open_rp(false);
                    w.resume_headerless();
                    if let Some(s) = &self.session {
                        s.set_main_read_timeout(Some(POSTCOPY_SILENCE_LIMIT));
                        if self.cfg.postcopy_window > 0 {
                            s.set_main_recv_buffer(self.cfg.postcopy_window);
                        }
                    }
                }
                Err(e) => {
                    let e = self.blame_reset_channel(e);
                    self.fail(e.to_string());
                    outcome = Err(e);
                    break;
                }
            }
        }
        self.run_end();
        outcome
    }

    /// The main channel's truncation, or, when a multifd channel's
    /// connection was reset before, that reset (its cause).
    fn blame_reset_channel(&self, e: LoadError) -> LoadError {
        let mf = self.multifd.as_ref().filter(|_| e.is_truncation());
        match mf.and_then(|mf| mf.reset_channel()) {
            Some((id, at)) => LoadError::ChannelReset { id, at, main: Box::new(e) },
            None => e,
        }
    }

    /// Release what waits on this loader: the runtime slot, the session,
    /// the multifd channels, the postcopy runtime.
    fn run_end(&mut self) {
        self.slot.set(None);
        self.slot.end();
        if let Some(mf) = &self.multifd {
            mf.end();
        }
        if let Some(s) = &self.session {
            s.end();
        }
        if let Some(pc) = self.postcopy.take() {
            pc.shutdown();
        }
    }

    /// Postcopy-paused: drop the channel and return path; RAM stays
    /// registered, faulting readers wait, requests are kept for resending.
    fn pause(&mut self, e: &LoadError) {
        self.shared.lock().error_desc = Some(format!("postcopy paused: {e}"));
        if let Some(rp) = &self.rp {
            rp.close();
        }
        self.rp = None;
        self.rp_open = false;
        self.last_block = None;
        // A huge page half received is lost, as in QEMU's
        // `postcopy_pause_incoming()`: its target pages are not marked
        // received, so the source sends them again after recovery.
        self.tmp_page.reset();
        if let Some(pc) = &self.postcopy {
            pc.set_rp(None);
        }
        if let Some(s) = &self.session {
            // Like QEMU's `postcopy_pause_incoming()`: the preempt channel
            // goes too, and its reader stops before `postcopy-paused`.
            if !s.end_preempt(PreemptEnd::Cut, PREEMPT_STOP_TIMEOUT) {
                tracing::warn!(
                    "postcopy-preempt reader still running {PREEMPT_STOP_TIMEOUT:?} after the pause"
                );
            }
            s.begin_pause();
        }
        self.shared.set_status(MigStatus::PostcopyPaused);
    }

    /// Open the return path; `requests`: page requests of the postcopy
    /// runtime may go out on it at once (not on a recovery channel, see
    /// `postcopy_resume()`).
    fn open_rp(&mut self, requests: bool) {
        if let Some(w) = self.rp_writer.take() {
            let rp = Arc::new(ReturnPath::new(w));
            self.rp = Some(rp.clone());
            self.rp_open = true;
            if let Some(pc) = self.postcopy.as_ref().filter(|_| requests) {
                pc.set_rp(Some(rp));
            }
        }
    }

    fn fail(&mut self, msg: String) {
        self.shared.lock().postcopy_state = self.pc_state;
        self.shared.fail(msg);
        if self.rp_open {
            if let Some(rp) = &self.rp {
                let _ = rp.send(&RpMessage::Shut(1));
                rp.close();
            }
        }
    }

    fn set_pc_state(&mut self, s: PcState) {
        self.pc_state = s;
        self.shared.lock().postcopy_state = s;
    }

    fn rp(&self) -> Option<&Arc<ReturnPath>> {
        if self.rp_open {
            self.rp.as_ref()
        } else {
            None
        }
    }

    /// The record loop: until EOF (then the vmdesc, if any) or the device
    /// state (`tail.rs`).
    fn load(&mut self, r: &mut Reader, w: &mut Walker) -> Result<(), LoadError> {
        loop {
            let mode = w.mode();
            let flow = r
                .next_record(w, |item, off, w| self.record(item, off, mode, w))
                .map_err(|e| self.stopped(e, r, w))?;
            if let Some(names) = self.sized_blocks.take() {
                w.set_hugepage_blocks(names);
            }
            if self.placing && self.cfg.postcopy_window > 0 {
                r.set_max_read(self.cfg.postcopy_window);
            }
            match flow {
                None | Some(Flow::Continue) => {}
                Some(Flow::IgnoreShared) => w.set_ignore_shared(true),
                Some(Flow::DeviceTail) => return self.device_tail(r),
                Some(Flow::Eof) => return self.finish_after_eof(r),
                Some(Flow::Seek(to)) => {
                    r.seek_file(to).map_err(|source| LoadError::Io { at: to, source })?
                }
            }
        }
    }

    /// Give a read failure its context (which part of the stream was being
    /// read, and whether postcopy runs).
    fn stopped(&self, e: Stop, r: &Reader, w: &Walker) -> LoadError {
        let e = match e {
            Stop::Load(e) => return e,
            Stop::Read(e) => e,
        };
        match e {
            ReadError::Io { at, source }
                if self.placing
                    && matches!(
                        source.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
            {
                LoadError::Silent { at, secs: POSTCOPY_SILENCE_LIMIT.as_secs() }
            }
            ReadError::Io { at, source } => LoadError::Io { at, source },
            ReadError::Truncated { at, needed, empty, mode } => match mode {
                Mode::Header { expect_cfg } => self.header_truncated(r, expect_cfg, at, needed),
                Mode::Ram { section_id } if self.placing => {
                    LoadError::ClosedDuringPostcopyRam { at, section_id }
                }
                Mode::Ram { section_id } => {
                    LoadError::Truncated { at, needed }.in_ram_section(section_id)
                }
                Mode::Top if self.placing && needed > 0 && empty => {
                    LoadError::ClosedDuringPostcopy { at, state: self.pc_state }
                }
                Mode::Package { len } => {
                    let off = self.package.map_or(0, |p| p.1);
                    LoadError::Truncated { at, needed }
                        .within(format!("PACKAGED (length {len}) at byte offset {off}"))
                }
                _ => LoadError::Truncated { at, needed },
            },
            ReadError::Decode(d) => match w.mode() {
                Mode::Ram { section_id } => LoadError::Decode(d).in_ram_section(section_id),
                _ => LoadError::Decode(d),
            },
        }
    }

    /// Handle one record; `mode` is what the walker was reading, `w` the
    /// walker after it.
    fn record(
        &mut self,
        item: Item<'_>,
        off: u64,
        mode: Mode,
        w: &Walker,
    ) -> Result<(Flow, bool), Stop> {
        let flow = match item {
            Item::Header(h) => self.header(&h)?,
            Item::Top(TopRecord::SectionOpen { kind: SectionKind::Full, .. }) if !self.placing => {
                // Device state without lengths: buffer it through EOF.
                return Ok((Flow::DeviceTail, false));
            }
            Item::Top(t) => self.top(t, off, w)?,
            Item::Ram(RamRecord::MappedRamBlock { entry, header }) => {
                let sid = if let Mode::Ram { section_id } = mode { section_id } else { 0 };
                let to = self
                    .mapped_ram_block(&entry, &header, off)
                    .map_err(|e| e.in_ram_section(sid))?;
                Flow::Seek(to)
            }
            Item::Ram(rec) => {
                if let Mode::Ram { section_id } = mode {
                    self.apply_ram(rec, off).map_err(|e| e.in_ram_section(section_id))?;
                }
                Flow::Continue
            }
            Item::Footer { .. } => Flow::Continue,
            Item::Package(blob) => {
                let (len, cmd_off) = self.package.take().unwrap_or((blob.len() as u32, off));
                self.packaged(blob, off, len, cmd_off)?;
                Flow::Continue
            }
            Item::VmDesc(_) => {
                return Err(LoadError::protocol(off, "unexpected VMDESCRIPTION").into());
            }
        };
        Ok((flow, true))
    }

    /// One top-level record (QEMU's `qemu_loadvm_state_main`).
    fn top(&mut self, rec: TopRecord<'_>, off: u64, w: &Walker) -> Result<Flow, LoadError> {
        match rec {
            TopRecord::SectionOpen { kind, section_id, idstr, instance_id, version_id } => {
                if idstr == "ram" && instance_id == 0 {
                    if version_id != 4 {
                        return Err(LoadError::unsupported(off, format!(
                            "section 'ram' (id {section_id}): unsupported version {version_id} (expected 4) at byte offset {off}"
                        )));
                    }
                    if kind != SectionKind::Start {
                        return Err(LoadError::protocol(
                            off,
                            format!(
                                "section 'ram' (id {section_id}) opened with {} at byte offset {off}",
                                kind.name()
                            ),
                        ));
                    }
                    Counters::add(&self.shared.counters().ram_sections, 1);
                    Ok(Flow::Continue)
                } else if kind == SectionKind::Full {
                    // Device state arrives in the precopy tail or the package,
                    // never as a bare FULL section once postcopy runs.
                    Err(LoadError::protocol(off, format!(
                        "device section '{idstr}' (FULL, id {section_id}) at byte offset {off} outside the device-state phase"
                    )))
                } else {
                    Err(LoadError::unsupported(off, format!(
                        "unsupported live section '{idstr}' instance {instance_id} ({}, id {section_id}) at byte offset {off}: rust-dest only migrates RAM iteratively",
                        kind.name()
                    )))
                }
            }
            TopRecord::SectionCont { kind, section_id } => {
                if !w.is_ram_section(section_id) {
                    return Err(LoadError::protocol(
                        off,
                        format!(
                            "{} section for unknown section id {section_id} at byte offset {off}",
                            kind.name()
                        ),
                    ));
                }
                Counters::add(&self.shared.counters().ram_sections, 1);
                Ok(Flow::Continue)
            }
            TopRecord::Command(rc) => {
                let c = Command::parse(&rc)?;
                if let Command::Packaged(len) = c {
                    self.package = Some((len, off));
                }
                self.command(c, off, false)?;
                Ok(Flow::Continue)
            }
            TopRecord::Eof => Ok(Flow::Eof),
            TopRecord::VmDescription { .. } => Err(LoadError::protocol(
                off,
                format!("VMDESCRIPTION (0x06) before EOF at byte offset {off}"),
            )),
        }
    }

    fn complete(&mut self) -> Result<(), LoadError> {
        if let Some(pc) = self.postcopy.take() {
            // Urgent pages sent just before the end may still be on the
            // preempt channel (module `preempt`): place them first.
            let how = if header::preempt_ends_with_eos(self.stream_machine.as_deref()) {
                PreemptEnd::AwaitEos
            } else {
                PreemptEnd::Drain
            };
            if let Some(s) = &self.session {
                if !s.end_preempt(how, PREEMPT_STOP_TIMEOUT) {
                    tracing::warn!("postcopy-preempt channel still read {PREEMPT_STOP_TIMEOUT:?} after the main channel's EOF ({how:?}); pages still on it are lost");
                }
            }
            pc.finish();
        }
        for b in self.shared.ram().blocks() {
            let _ = b.mapping.sync();
        }
        self.check_final_runstate()?;
        let (paused, gs) = {
            let g = self.shared.lock();
            (g.start_paused, g.globalstate.clone())
        };
        let run = (!paused || defects::active(Defect::IgnoreStartPaused))
            && gs.as_deref().is_none_or(|s| s == "running");
        // Run state first, so a client that sees `completed` also sees it.
        if self.shared.lock().run_state == RunState::InMigrate {
            self.shared.set_run_state(if run { RunState::Running } else { RunState::Paused });
        }
        self.shared.set_status(MigStatus::Completed);
        if let Some(rp) = self.rp() {
            rp.send(&RpMessage::Shut(0))
                .map_err(|source| LoadError::ReturnPath { what: "SHUT(0)".into(), source })?;
            rp.close();
        }
        Ok(())
    }
}
