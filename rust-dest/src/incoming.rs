//! The incoming-migration loader: reads the main channel, decodes it with
//! [`crate::codec`], places RAM, keeps device state, answers on the return
//! path, and drives the postcopy state machine.
//!
//! Threads: one loader thread per main connection (this module); during
//! postcopy the fault thread and simulated vCPUs ([`crate::fault`]).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::fault::{PostcopyRuntime, VcpuConfig};
use crate::postcopy::{self, Action, PcState};
use crate::ram::{RamBlock, TARGET_PAGE_SIZE};
use crate::session::Session;
use crate::state::{DeviceSection, MigStatus, RunState, Shared};
use wire::command::Command;
use wire::consts::*;
use wire::ramrec::{decode_ram_record, xbzrle_decode, BlockRef, RamContext, RamRecord};
use wire::rp::RpMessage;
use wire::stream::{decode_footer, decode_header, decode_top, SectionKind, TopRecord};
use wire::{vmdesc, Cursor, DecodeError, Encoder};

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
        }
    }
}

/// The return path: the write half of the main connection.
pub struct ReturnPath {
    w: Mutex<Option<Box<dyn Write + Send>>>,
}

impl ReturnPath {
    pub fn new(w: Box<dyn Write + Send>) -> ReturnPath {
        ReturnPath { w: Mutex::new(Some(w)) }
    }
    pub fn send(&self, m: &RpMessage) -> io::Result<()> {
        let mut g = self.w.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_mut() {
            Some(w) => {
                w.write_all(&m.to_bytes())?;
                w.flush()
            }
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "return path closed")),
        }
    }
    /// Send raw bytes (RECV_BITMAP data follows its message).
    pub fn send_raw(&self, b: &[u8]) -> io::Result<()> {
        let mut g = self.w.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_mut() {
            Some(w) => {
                w.write_all(b)?;
                w.flush()
            }
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "return path closed")),
        }
    }
    pub fn close(&self) {
        *self.w.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Buffered reader that tracks the absolute stream offset.
pub struct Reader {
    src: Box<dyn Read + Send>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Absolute offset of buf[0].
    base: u64,
    shared: Shared,
    /// The connection failed or was closed (as opposed to a protocol error).
    pub io_failed: bool,
}

const READ_CHUNK: usize = 1 << 20;

impl Reader {
    pub fn new(src: Box<dyn Read + Send>, shared: Shared) -> Reader {
        Reader {
            src,
            buf: vec![0; 4 * READ_CHUNK],
            start: 0,
            end: 0,
            base: 0,
            shared,
            io_failed: false,
        }
    }
    pub fn window(&self) -> (&[u8], u64) {
        (&self.buf[self.start..self.end], self.base + self.start as u64)
    }
    pub fn offset(&self) -> u64 {
        self.base + self.start as u64
    }
    pub fn consume(&mut self, n: usize) {
        assert!(self.start + n <= self.end);
        self.start += n;
    }
    /// Read more bytes (at least one, and room for `need` more). Returns
    /// false on end of stream.
    pub fn fill(&mut self, need: usize) -> io::Result<bool> {
        let avail = self.end - self.start;
        let want_cap = avail + need.max(READ_CHUNK);
        if self.start > 0 && (self.buf.len() - self.end < need.max(READ_CHUNK / 4)) {
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < want_cap {
            self.buf.resize(want_cap, 0);
        }
        loop {
            match self.src.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.io_failed = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    crate::state::Counters::add(&self.shared.counters().transferred, n as u64);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.io_failed = true;
                    return Err(e);
                }
            }
        }
    }
    /// Take exactly `n` bytes as an owned vector.
    pub fn take_vec(&mut self, n: usize) -> Result<Vec<u8>, String> {
        let at = self.offset();
        while self.end - self.start < n {
            let need = n - (self.end - self.start);
            if !self.fill(need).map_err(|e| io_err(e, self.offset()))? {
                return Err(truncated(at, need));
            }
        }
        let v = self.buf[self.start..self.start + n].to_vec();
        self.start += n;
        Ok(v)
    }
}

fn truncated(at: u64, needed: usize) -> String {
    format!("stream truncated: connection closed by the source inside the record at byte offset {at} ({needed} more byte(s) needed)")
}

fn io_err(e: io::Error, at: u64) -> String {
    format!("read error on the main channel at byte offset {at}: {e}")
}

/// The configuration section carries no length, so at the very end of the
/// stream the header decoder cannot tell a complete header from one whose
/// subsections are missing and reports a truncation at the header's start.
/// If the bytes received form a complete header, say the stream ended there.
fn header_error(r: &Reader, expect_cfg: bool, e: String) -> String {
    if !e.starts_with("stream truncated") {
        return e;
    }
    let (w, base) = r.window();
    let mut probe = w.to_vec();
    probe.push(QEMU_VM_EOF);
    let mut c = Cursor::new(&probe, base);
    match decode_header(&mut c, expect_cfg) {
        Ok(_) if c.pos() == w.len() => format!(
            "stream truncated: connection closed by the source right after the stream header, at byte offset {} (no section or command followed)",
            base + w.len() as u64
        ),
        _ => e,
    }
}

/// Decode with `f` from the reader's window, reading more as needed.
fn decode_with<T>(
    r: &mut Reader,
    mut f: impl FnMut(&mut Cursor) -> Result<T, DecodeError>,
) -> Result<T, String> {
    loop {
        let (w, base) = r.window();
        let mut c = Cursor::new(w, base);
        match f(&mut c) {
            Ok(v) => {
                let n = c.pos();
                r.consume(n);
                return Ok(v);
            }
            Err(DecodeError::Incomplete { at, needed }) => {
                if !r.fill(needed).map_err(|e| io_err(e, r.offset()))? {
                    return Err(truncated(at, needed));
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// What a section id refers to.
#[derive(Clone, Debug)]
enum Handler {
    Ram,
}

/// RAM channel index for CONTINUE tracking.
pub const CH_MAIN: usize = 0;
pub const CH_PREEMPT: usize = 1;

/// Per-connection loader state.
pub struct Loader {
    session: Arc<Session>,
    shared: Shared,
    cfg: Config,
    rp: Option<Arc<ReturnPath>>,
    rp_writer: Option<Box<dyn Write + Send>>,
    rp_open: bool,
    sections: HashMap<u32, Handler>,
    last_block: [Option<Arc<RamBlock>>; 2],
    ram_ctx: RamContext,
    pc_state: PcState,
    postcopy: Option<Arc<PostcopyRuntime>>,
    /// RAM is registered with userfaultfd and placed atomically (from
    /// LISTEN until END). Kept apart from the legality state, which QEMU can
    /// leave at DISCARD after a LISTEN (see postcopy.rs).
    placing: bool,
    /// SWITCHOVER_ACK still to be sent.
    ack_pending: bool,
    /// Machine type named by the stream's configuration section.
    stream_machine: Option<String>,
}

/// Outcome of processing one top-level record.
enum Flow {
    Continue,
    /// A FULL section at top level: switch to buffering device state.
    DeviceTail,
    /// EOF read.
    Eof,
}

impl Loader {
    pub fn new(session: Arc<Session>, rp_writer: Box<dyn Write + Send>) -> Loader {
        Loader {
            shared: session.shared.clone(),
            cfg: (*session.cfg).clone(),
            session,
            rp: None,
            rp_writer: Some(rp_writer),
            rp_open: false,
            sections: HashMap::new(),
            last_block: [None, None],
            ram_ctx: RamContext::x86(),
            pc_state: PcState::None,
            postcopy: None,
            placing: false,
            ack_pending: false,
            stream_machine: None,
        }
    }

    /// Run the whole incoming migration on `src`. Marks the migration
    /// completed or failed; never panics on bad input. A connection lost
    /// while postcopy runs pauses the migration (`postcopy-paused`) until a
    /// recovery connection arrives (`migrate-recover`).
    pub fn run(mut self, src: Box<dyn Read + Send>) {
        self.shared.set_status(MigStatus::Active);
        let mut r = Reader::new(src, self.shared.clone());
        let mut with_header = true;
        loop {
            let res = self.load(&mut r, with_header);
            match res {
                Ok(()) => break,
                // Like QEMU: any load error once postcopy runs (the guest
                // runs here and the source no longer can) pauses instead of
                // failing, so the migration can be recovered.
                Err(msg)
                    if self.pc_state == PcState::Running
                        && self.shared.capability("postcopy-ram") =>
                {
                    tracing::warn!("postcopy paused: {msg}");
                    self.pause(msg);
                    match self.session.wait_recovery() {
                        Some(sock) => {
                            let w = match sock.try_clone() {
                                Ok(w) => w,
                                Err(e) => {
                                    self.fail(format!("recovery channel: {e}"));
                                    break;
                                }
                            };
                            self.shared.set_status(MigStatus::PostcopyRecover);
                            self.rp_writer = Some(Box::new(w));
                            r = Reader::new(Box::new(sock), self.shared.clone());
                            // The source opens the return path itself on the
                            // recovery channel (no OPEN_RETURN_PATH command).
                            self.open_rp();
                            with_header = false;
                        }
                        None => break,
                    }
                }
                Err(msg) => {
                    self.fail(msg);
                    break;
                }
            }
        }
        self.session.set_runtime(None);
        self.session.end();
        if let Some(pc) = self.postcopy.take() {
            pc.shutdown();
        }
    }

    /// Postcopy-paused: drop the channel and return path; RAM stays
    /// registered, faulting readers wait, requests are kept for resending.
    fn pause(&mut self, msg: String) {
        self.shared.lock().error_desc = Some(format!("postcopy paused: {msg}"));
        if let Some(rp) = &self.rp {
            rp.close();
        }
        self.rp = None;
        self.rp_open = false;
        self.last_block = [None, None];
        if let Some(pc) = &self.postcopy {
            pc.set_rp(None);
        }
        self.session.begin_pause();
        self.shared.set_status(MigStatus::PostcopyPaused);
    }

    fn open_rp(&mut self) {
        if let Some(w) = self.rp_writer.take() {
            let rp = Arc::new(ReturnPath::new(w));
            self.rp = Some(rp.clone());
            self.rp_open = true;
            if let Some(pc) = &self.postcopy {
                pc.set_rp(Some(rp));
            }
        }
    }

    fn fail(&mut self, msg: String) {
        self.shared.lock().postcopy_state = self.pc_state.name();
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
        self.shared.lock().postcopy_state = s.name();
    }

    fn load(&mut self, r: &mut Reader, with_header: bool) -> Result<(), String> {
        if with_header {
            self.load_header(r)?;
        }
        self.load_records(r)
    }

    fn load_header(&mut self, r: &mut Reader) -> Result<(), String> {
        let expect_cfg = self.cfg.expect_configuration;
        let hdr = match decode_with(r, |c| decode_header(c, expect_cfg)) {
            Ok(h) => h,
            Err(e) => return Err(header_error(r, expect_cfg, e)),
        };
        if let Some(cfg) = &hdr.configuration {
            self.check_machine(&cfg.machine)?;
            self.shared.lock().stream_machine = Some(cfg.machine.clone());
            self.stream_machine = Some(cfg.machine.clone());
            if let Some(caps) = &cfg.capabilities {
                if caps.iter().any(|c| c == "x-ignore-shared") {
                    self.ram_ctx.ignore_shared = true;
                }
                if let Some(c) = caps.iter().find(|c| *c == "mapped-ram") {
                    return Err(format!("configuration: capability {c} (file migration) is not supported by rust-dest"));
                }
            }
            if let Some(bits) = cfg.target_page_bits {
                if 1u64 << bits != TARGET_PAGE_SIZE {
                    return Err(format!(
                        "configuration: target page bits {bits} do not match the destination's 12"
                    ));
                }
            }
        }
        Ok(())
    }

    fn load_records(&mut self, r: &mut Reader) -> Result<(), String> {
        loop {
            let rec_off = r.offset();
            let flow = {
                let (w, base) = r.window();
                let mut c = Cursor::new(w, base);
                match decode_top(&mut c) {
                    Ok(TopRecord::SectionOpen { kind: SectionKind::Full, .. }) if !self.placing => {
                        // Device state without lengths: buffer up to the vmdesc.
                        Some(Flow::DeviceTail)
                    }
                    Ok(rec) => {
                        let n = c.pos();
                        let owned = OwnedTop::from(&rec);
                        r.consume(n);
                        Some(self.top(owned, rec_off, r)?)
                    }
                    Err(DecodeError::Incomplete { at, needed }) => {
                        if !r.fill(needed).map_err(|e| io_err(e, r.offset()))? {
                            if self.placing && needed > 0 && r.window().0.is_empty() {
                                return Err(format!(
                                    "main channel closed by the source during postcopy at byte offset {at} (postcopy state {})",
                                    self.pc_state.name()
                                ));
                            }
                            return Err(truncated(at, needed));
                        }
                        None
                    }
                    Err(e) => return Err(e.to_string()),
                }
            };
            match flow {
                None | Some(Flow::Continue) => continue,
                Some(Flow::DeviceTail) => return self.device_tail(r),
                Some(Flow::Eof) => return self.finish_after_eof(r),
            }
        }
    }

    fn check_machine(&self, stream: &str) -> Result<(), String> {
        let Some(local) = &self.cfg.machine else {
            return Ok(());
        };
        let family = |m: &str| -> String {
            if m == "q35" || m.starts_with("pc-q35") {
                "q35".into()
            } else if m == "pc" || m.starts_with("pc-i440fx") {
                "pc".into()
            } else {
                m.into()
            }
        };
        let versioned = local.starts_with("pc-");
        if (versioned && local != stream) || (!versioned && family(local) != family(stream)) {
            return Err(format!("configuration: machine type received is '{stream}' but the destination was started with '{local}'"));
        }
        Ok(())
    }

    /// Process one (owned) top-level record.
    fn top(&mut self, rec: OwnedTop, off: u64, r: &mut Reader) -> Result<Flow, String> {
        match rec {
            OwnedTop::SectionOpen { kind, section_id, idstr, instance_id, version_id } => {
                if idstr == "ram" && instance_id == 0 {
                    if version_id != 4 {
                        return Err(format!(
                            "section 'ram' (id {section_id}): unsupported version {version_id} (expected 4) at byte offset {off}"
                        ));
                    }
                    if kind != SectionKind::Start {
                        return Err(format!(
                            "section 'ram' (id {section_id}) opened with {} at byte offset {off}",
                            kind.name()
                        ));
                    }
                    self.sections.insert(section_id, Handler::Ram);
                    crate::state::Counters::add(&self.shared.counters().ram_sections, 1);
                    self.ram_section(r, section_id, CH_MAIN)?;
                    self.footer(r, section_id)?;
                    Ok(Flow::Continue)
                } else if kind == SectionKind::Full {
                    // Device state arrives in the precopy tail or the package,
                    // never as a bare FULL section once postcopy runs.
                    Err(format!(
                        "device section '{idstr}' (FULL, id {section_id}) at byte offset {off} outside the device-state phase"
                    ))
                } else {
                    Err(format!(
                        "unsupported live section '{idstr}' instance {instance_id} ({}, id {section_id}) at byte offset {off}: rust-dest only migrates RAM iteratively",
                        kind.name()
                    ))
                }
            }
            OwnedTop::SectionCont { kind, section_id } => match self.sections.get(&section_id) {
                Some(Handler::Ram) => {
                    crate::state::Counters::add(&self.shared.counters().ram_sections, 1);
                    self.ram_section(r, section_id, CH_MAIN)?;
                    self.footer(r, section_id)?;
                    Ok(Flow::Continue)
                }
                None => Err(format!(
                    "{} section for unknown section id {section_id} at byte offset {off}",
                    kind.name()
                )),
            },
            OwnedTop::Command { cmd, payload, payload_offset } => {
                let rc = wire::stream::RawCommand { cmd, payload: &payload, payload_offset };
                let c = Command::parse(&rc).map_err(|e| e.to_string())?;
                self.command(c, off, r, false)?;
                Ok(Flow::Continue)
            }
            OwnedTop::Eof => Ok(Flow::Eof),
            OwnedTop::VmDescription => {
                Err(format!("VMDESCRIPTION (0x06) before EOF at byte offset {off}"))
            }
        }
    }

    fn send_ack(&mut self) -> Result<(), String> {
        if self.ack_pending {
            if let Some(rp) = self.rp() {
                rp.send(&RpMessage::SwitchoverAck)
                    .map_err(|e| format!("return path: sending SWITCHOVER_ACK: {e}"))?;
                self.ack_pending = false;
            }
        }
        Ok(())
    }

    fn footer(&mut self, r: &mut Reader, section_id: u32) -> Result<(), String> {
        if self.cfg.section_footers {
            decode_with(r, |c| decode_footer(c, section_id))?;
        }
        Ok(())
    }

    fn rp(&self) -> Option<&Arc<ReturnPath>> {
        if self.rp_open {
            self.rp.as_ref()
        } else {
            None
        }
    }

    /// Handle a command at top level (`in_package` when inside PACKAGED).
    fn command(
        &mut self,
        c: Command,
        off: u64,
        r: &mut Reader,
        in_package: bool,
    ) -> Result<(), String> {
        tracing::debug!(cmd = c.name(), off, "command");
        match &c {
            Command::OpenReturnPath => {
                if !self.rp_open {
                    self.open_rp();
                    if !self.rp_open {
                        return Err("return path writer unavailable".into());
                    }
                    // switchover-ack: up to machine type 11.0 the destination
                    // acks as soon as the return path opens (when no device
                    // delays it; rust-dest has none). From pc-*-11.1 on, QEMU
                    // (verified on 11.1.3) only acks for devices that asked,
                    // and an unsolicited ack underflows the source's pending
                    // count and stalls it: rust-dest then sends none.
                    if self.shared.capability("switchover-ack")
                        && !machine_at_least(self.stream_machine.as_deref(), (11, 1))
                    {
                        self.ack_pending = true;
                        self.send_ack()?;
                    }
                }
            }
            Command::Ping(v) => {
                let rp = self.rp().ok_or_else(|| {
                    format!("PING ({v:#x}) received with no return path open at byte offset {off}")
                })?;
                rp.send(&RpMessage::Pong(*v))
                    .map_err(|e| format!("return path: sending PONG {v:#x}: {e}"))?;
                crate::state::Counters::add(&self.shared.counters().pings, 1);
            }
            // The final-phase marker: nothing to do (no device needs it).
            Command::SwitchoverStart => {}
            Command::EnableColo => {
                return Err(format!("ENABLE_COLO at byte offset {off}: COLO is not supported"))
            }
            Command::PostcopyResume => {
                if self.shared.lock().status != MigStatus::PostcopyRecover {
                    tracing::warn!(
                        "POSTCOPY_RESUME outside postcopy recovery ignored (byte offset {off})"
                    );
                } else {
                    self.shared.lock().error_desc = None;
                    self.shared.set_status(MigStatus::PostcopyActive);
                    let rp = self.rp().ok_or("POSTCOPY_RESUME without a return path")?.clone();
                    rp.send(&RpMessage::ResumeAck(MIGRATION_RESUME_ACK_VALUE))
                        .map_err(|e| format!("return path: sending RESUME_ACK: {e}"))?;
                    if let Some(pc) = &self.postcopy {
                        pc.resend_outstanding();
                    }
                }
            }
            Command::RecvBitmap(b) => {
                if self.shared.lock().status != MigStatus::PostcopyRecover {
                    tracing::warn!("RECV_BITMAP for {b:?} outside postcopy recovery ignored (byte offset {off})");
                } else {
                    let blk = self.shared.ram().get(b).ok_or_else(|| {
                        format!("RECV_BITMAP for unknown RAMBlock {b:?} at byte offset {off}")
                    })?;
                    let rp = self.rp().ok_or("RECV_BITMAP without a return path")?.clone();
                    let mut e = Encoder::new();
                    RpMessage::RecvBitmap { block: b.clone() }.encode(&mut e);
                    wire::rp::encode_recv_bitmap_data(&mut e, &blk.received.to_le_bytes());
                    rp.send_raw(&e.buf).map_err(|e| {
                        format!("return path: sending the received bitmap of {b:?}: {e}")
                    })?;
                }
            }
            Command::Packaged(len) => {
                if in_package {
                    return Err(format!("PACKAGED nested inside a package at byte offset {off}"));
                }
                return self.packaged(*len, off, r);
            }
            Command::PostcopyAdvise(_)
            | Command::PostcopyRamDiscard(_)
            | Command::PostcopyListen
            | Command::PostcopyRun => {
                let local = postcopy::Local {
                    postcopy_ram: self.shared.capability("postcopy-ram"),
                    host_page_size: crate::mem::host_page_size() as u64,
                    target_page_size: TARGET_PAGE_SIZE,
                };
                let (ns, act) = postcopy::step(self.pc_state, &c, &local)
                    .map_err(|e| format!("{e} at byte offset {off}"))?;
                match act {
                    Action::Discard { .. } => {
                        let Command::PostcopyRamDiscard(d) = &c else { unreachable!() };
                        self.discard(d, off)?;
                    }
                    Action::Listen { .. } => {
                        if !in_package {
                            tracing::warn!(
                                "POSTCOPY_LISTEN outside a package at byte offset {off}"
                            );
                        }
                        self.set_pc_state(ns);
                        self.shared.set_status(MigStatus::PostcopyActive);
                        let rt = PostcopyRuntime::start(self.shared.clone(), self.rp.clone(), self.cfg.vcpu.clone())
                            .map_err(|e| format!("POSTCOPY_LISTEN at byte offset {off}: cannot set up userfaultfd: {e}"))?;
                        let rt = Arc::new(rt);
                        self.session.set_runtime(Some(rt.clone()));
                        self.postcopy = Some(rt);
                        self.placing = true;
                        return Ok(());
                    }
                    Action::Run => {
                        self.set_pc_state(ns);
                        let paused = self.shared.lock().start_paused;
                        if let Some(pc) = &self.postcopy {
                            if paused {
                                self.shared.set_run_state(RunState::Paused);
                            } else {
                                self.shared.set_run_state(RunState::Running);
                            }
                            pc.run();
                        }
                        return Ok(());
                    }
                    Action::Advised | Action::None => {}
                }
                self.set_pc_state(ns);
            }
        }
        Ok(())
    }

    fn discard(&mut self, d: &wire::command::Discard, off: u64) -> Result<(), String> {
        // QEMU requires at least one range's worth of payload: version, name
        // length, name, NUL, 16 bytes (len >= 20; wire-format §3.2).
        let plen = 3 + d.block.len() + 16 * d.ranges.len();
        if plen < 20 {
            return Err(format!("POSTCOPY_RAM_DISCARD {:?}: invalid length {plen} (at least 20 expected) at byte offset {off}", d.block));
        }
        let b = self.shared.ram().get(&d.block).ok_or_else(|| {
            format!("POSTCOPY_RAM_DISCARD for unknown RAMBlock {:?} at byte offset {off}", d.block)
        })?;
        crate::state::Counters::add(&self.shared.counters().discard_commands, 1);
        let hps = crate::mem::host_page_size() as u64;
        for &(start, len) in &d.ranges {
            if start % hps != 0 || len % hps != 0 {
                return Err(format!(
                    "POSTCOPY_RAM_DISCARD {:?}: range start {start:#x} length {len:#x} is not aligned to the host page size {hps:#x} at byte offset {off}",
                    d.block
                ));
            }
            if start.checked_add(len).is_none_or(|e| e > b.used_length) {
                return Err(format!(
                    "POSTCOPY_RAM_DISCARD {:?}: range start {start:#x} length {len:#x} is outside the block (length {:#x}) at byte offset {off}",
                    d.block, b.used_length
                ));
            }
            b.mapping.discard(start as usize, len as usize).map_err(|e| {
                format!("POSTCOPY_RAM_DISCARD {:?}: discarding {start:#x}+{len:#x}: {e}", d.block)
            })?;
            for p in start / TARGET_PAGE_SIZE..(start + len) / TARGET_PAGE_SIZE {
                b.received.clear(p);
            }
            crate::state::Counters::add(
                &self.shared.counters().discarded_pages,
                len / TARGET_PAGE_SIZE,
            );
        }
        Ok(())
    }

    /// PACKAGED: read the blob, then process it as a nested stream.
    fn packaged(&mut self, len: u32, off: u64, r: &mut Reader) -> Result<(), String> {
        let blob_off = r.offset();
        let blob = r
            .take_vec(len as usize)
            .map_err(|e| format!("PACKAGED (length {len}) at byte offset {off}: {e}"))?;
        // Where each device section ends, from the one parse of the whole
        // blob that ends with RUN (robust against footer-like device bytes).
        let ends = vmdesc::package_section_ends(&blob);
        let mut pos = 0usize;
        while pos < blob.len() {
            let mut c = Cursor::new(&blob, blob_off);
            c.set_pos(pos);
            let rec_off = blob_off + pos as u64;
            let rec = match decode_top(&mut c) {
                Ok(r) => r,
                Err(DecodeError::Incomplete { .. }) => {
                    return Err(format!(
                        "PACKAGED at byte offset {off}: record at byte offset {rec_off} runs past the end of the package (length {len})"
                    ))
                }
                Err(e) => return Err(format!("PACKAGED at byte offset {off}: {e}")),
            };
            match rec {
                TopRecord::SectionOpen { kind: SectionKind::Full, .. } => {
                    let (s, next) = match ends.as_ref().and_then(|m| m.get(&pos)) {
                        Some(&end) => vmdesc::split_exact(&blob, pos, end, blob_off),
                        None => vmdesc::split_one_by_footer(&blob, pos, blob_off),
                    }
                    .map_err(|e| format!("PACKAGED at byte offset {off}: {e}"))?;
                    self.keep_device(&blob, &s, blob_off, true);
                    pos = next;
                }
                TopRecord::Command(rc) => {
                    let cmd = Command::parse(&rc).map_err(|e| format!("PACKAGED: {e}"))?;
                    pos = c.pos();
                    let is_run = matches!(cmd, Command::PostcopyRun);
                    self.command(cmd, rec_off, r, true)?;
                    if is_run {
                        // RUN ends the package (QEMU quits all nested load
                        // loops); whatever follows inside it is not processed.
                        if pos != blob.len() {
                            tracing::warn!(
                                "PACKAGED at byte offset {off}: {} byte(s) after POSTCOPY_RUN inside the package ignored",
                                blob.len() - pos
                            );
                        }
                        return Ok(());
                    }
                }
                TopRecord::Eof => {
                    // EOF ends the current level of the stream: the package
                    // (QEMU ignores the rest of the blob and goes on with the
                    // main stream).
                    if c.pos() != blob.len() {
                        tracing::warn!(
                            "PACKAGED at byte offset {off}: {} byte(s) after EOF inside the package ignored",
                            blob.len() - c.pos()
                        );
                    }
                    return Ok(());
                }
                other => {
                    return Err(format!(
                        "PACKAGED at byte offset {off}: unexpected record {other:?} inside the package at byte offset {rec_off}"
                    ))
                }
            }
        }
        // The record loop runs until RUN or EOF; running off the end of the
        // blob is a read past its end (QEMU: I/O error).
        Err(format!(
            "PACKAGED at byte offset {off}: the package (length {len}) ends without POSTCOPY_RUN or EOF"
        ))
    }

    fn keep_device(&mut self, buf: &[u8], s: &vmdesc::SplitSection, base: u64, in_package: bool) {
        let data = buf[s.data.clone()].to_vec();
        let mut g = self.shared.lock();
        if s.idstr == "globalstate" && data.len() >= 4 {
            let n = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
            let rs = &data[4..data.len().min(4 + 100)];
            let end = rs.iter().position(|&b| b == 0).unwrap_or(rs.len()).min(n);
            g.globalstate = Some(String::from_utf8_lossy(&rs[..end]).into_owned());
        }
        g.devices.push(DeviceSection {
            section_id: s.section_id,
            idstr: s.idstr.clone(),
            instance_id: s.instance_id,
            version_id: s.version_id,
            data,
            stream_offset: base + s.header_pos as u64,
            in_package,
            vmdesc: s.vmdesc.clone(),
        });
    }

    /// Decode RAM records until EOS.
    fn ram_section(&mut self, r: &mut Reader, section_id: u32, ch: usize) -> Result<(), String> {
        loop {
            let mut eos = false;
            let consumed;
            // bytes still missing from the record at the end of the window
            let mut need = 1usize;
            {
                let (w, base) = r.window();
                let mut c = Cursor::new(w, base);
                let mut done = 0usize;
                loop {
                    let rec_off = c.offset();
                    match decode_ram_record(&mut c, &self.ram_ctx) {
                        Ok(rec) => {
                            let is_eos = matches!(rec, RamRecord::Eos);
                            self.apply_ram(rec, rec_off, ch)
                                .map_err(|e| format!("section 'ram' (id {section_id}): {e}"))?;
                            done = c.pos();
                            if is_eos {
                                eos = true;
                                break;
                            }
                        }
                        Err(DecodeError::Incomplete { needed, .. }) => {
                            need = needed;
                            break;
                        }
                        Err(e) => return Err(format!("section 'ram' (id {section_id}): {e}")),
                    }
                }
                consumed = done;
            }
            r.consume(consumed);
            if eos {
                return Ok(());
            }
            let at = r.offset();
            if !r.fill(64).map_err(|e| io_err(e, at))? {
                if self.placing {
                    return Err(format!(
                        "main channel closed by the source during postcopy inside section 'ram' (id {section_id}) at byte offset {at}"
                    ));
                }
                return Err(format!("section 'ram' (id {section_id}): {}", truncated(at, need)));
            }
        }
    }

    fn apply_ram(&mut self, rec: RamRecord, off: u64, ch: usize) -> Result<(), String> {
        let counters = self.shared.counters();
        match rec {
            RamRecord::MemSize { total, blocks } => {
                if !self.shared.ram().blocks().is_empty() {
                    return Err(format!("second MEM_SIZE block list at byte offset {off}"));
                }
                if total > self.shared.ram().max_ram() {
                    return Err(format!(
                        "MEM_SIZE: the source announces {total:#x} bytes of RAM, more than the configured cap (--max-ram) of {:#x} bytes at byte offset {off}",
                        self.shared.ram().max_ram()
                    ));
                }
                for b in blocks {
                    if let Some(ps) = b.page_size {
                        return Err(format!("MEM_SIZE: block {:?} has page size {ps:#x}: hugepage blocks are not supported", b.name));
                    }
                    self.shared
                        .ram()
                        .add(&b.name, b.used_length, TARGET_PAGE_SIZE)
                        .map_err(|e| format!("MEM_SIZE at byte offset {off}: {e}"))?;
                }
            }
            RamRecord::Page { addr, block, data } => {
                let b = resolve_block(&self.shared, &mut self.last_block[ch], block, off)?;
                check_page_addr(&b, addr, off)?;
                if self.placing {
                    self.postcopy.as_ref().expect("postcopy runtime").place(&b, addr, Some(data), ch)?;
                } else {
                    b.mapping.write(addr as usize, data);
                    b.received.set(addr / TARGET_PAGE_SIZE);
                }
                crate::state::Counters::add(&counters.normal_pages, 1);
            }
            RamRecord::Zero { addr, block, fill } => {
                let b = resolve_block(&self.shared, &mut self.last_block[ch], block, off)?;
                check_page_addr(&b, addr, off)?;
                if self.placing {
                    if fill != 0 {
                        return Err(format!("zero page record with fill byte {fill:#04x} during postcopy at byte offset {off}"));
                    }
                    self.postcopy.as_ref().expect("postcopy runtime").place(&b, addr, None, ch)?;
                } else {
                    if fill != 0 {
                        // QEMU 10 rejects it too; modern sources always send 0.
                        return Err(format!("zero page record with fill byte {fill:#04x} at byte offset {off} (only 0 is valid)"));
                    }
                    let was = b.received.set(addr / TARGET_PAGE_SIZE);
                    if was {
                        b.mapping.fill(addr as usize, TARGET_PAGE_SIZE as usize, fill);
                    }
                }
                crate::state::Counters::add(&counters.zero_pages, 1);
            }
            RamRecord::Xbzrle { addr, block, data } => {
                let b = resolve_block(&self.shared, &mut self.last_block[ch], block, off)?;
                check_page_addr(&b, addr, off)?;
                if self.placing {
                    return Err(format!("XBZRLE page during postcopy at byte offset {off}"));
                }
                let mut page = vec![0u8; TARGET_PAGE_SIZE as usize];
                b.mapping.read(addr as usize, &mut page);
                xbzrle_decode(data, &mut page, off).map_err(|e| e.to_string())?;
                b.mapping.write(addr as usize, &page);
                b.received.set(addr / TARGET_PAGE_SIZE);
                crate::state::Counters::add(&counters.normal_pages, 1);
            }
            RamRecord::CompressPage { .. } => {
                return Err(format!("compressed page (legacy 'compress' capability) at byte offset {off} is not supported"))
            }
            RamRecord::Eos | RamRecord::MultifdFlush => {}
        }
        Ok(())
    }

    /// Precopy final phase: buffer everything until `EOF 0x06 len JSON`.
    fn device_tail(&mut self, r: &mut Reader) -> Result<(), String> {
        if self.cfg.suppress_vmdesc {
            return Err(format!(
                "device state at byte offset {} cannot be delimited with suppress-vmdesc=on (rust-dest needs the vmdesc)",
                r.offset()
            ));
        }
        let tail_base = r.offset();
        let mut tail: Vec<u8> = Vec::new();
        loop {
            {
                let (w, _) = r.window();
                tail.extend_from_slice(w);
            }
            let n = r.window().0.len();
            r.consume(n);
            if tail.len() > self.cfg.max_device_state {
                return Err(format!(
                    "device state starting at byte offset {tail_base} exceeds {} bytes without a vmdesc",
                    self.cfg.max_device_state
                ));
            }
            if let Some((eof_pos, json)) = vmdesc::find_vmdesc_tail(&tail) {
                let secs = vmdesc::split_with_vmdesc(&tail[..eof_pos], tail_base, &json)
                    .map_err(|e| e.to_string())?;
                for s in &secs {
                    self.keep_device(&tail, s, tail_base, false);
                }
                self.shared.lock().vmdesc = Some(json);
                return self.complete();
            }
            let at = r.offset();
            if !r.fill(1).map_err(|e| io_err(e, at))? {
                return Err(format!(
                    "stream truncated: connection closed by the source at byte offset {at} while reading device state (started at byte offset {tail_base}); no complete vmdesc was received"
                ));
            }
        }
    }

    fn finish_after_eof(&mut self, r: &mut Reader) -> Result<(), String> {
        if self.placing {
            self.set_pc_state(PcState::End);
            self.placing = false;
            return self.complete();
        }
        if !self.cfg.suppress_vmdesc {
            // The vmdesc follows the EOF in precopy.
            let rec = decode_with(r, |c| {
                let start = c.offset();
                let t = c.u8(start)?;
                if t != QEMU_VM_VMDESCRIPTION {
                    return Err(DecodeError::invalid(
                        start,
                        format!("expected VMDESCRIPTION (0x06) after EOF, found {t:#04x}"),
                    ));
                }
                let l = c.be32(start)? as usize;
                Ok(c.bytes(l, start)?.to_vec())
            });
            match rec {
                Ok(j) => {
                    let v: Value = serde_json::from_slice(&j)
                        .map_err(|e| format!("vmdesc JSON is invalid: {e}"))?;
                    self.shared.lock().vmdesc = Some(v);
                }
                Err(e) => tracing::warn!("no vmdesc after EOF: {e}"),
            }
        }
        self.complete()
    }

    fn complete(&mut self) -> Result<(), String> {
        if let Some(pc) = self.postcopy.take() {
            pc.finish();
        }
        for b in self.shared.ram().blocks() {
            let _ = b.mapping.sync();
        }
        let (paused, gs) = {
            let g = self.shared.lock();
            (g.start_paused, g.globalstate.clone())
        };
        let run = !paused && gs.as_deref().is_none_or(|s| s == "running");
        // Run state first, so a client that sees `completed` also sees it.
        if self.shared.lock().run_state == RunState::InMigrate {
            self.shared.set_run_state(if run { RunState::Running } else { RunState::Paused });
        }
        self.shared.set_status(MigStatus::Completed);
        if let Some(rp) = self.rp() {
            rp.send(&RpMessage::Shut(0))
                .map_err(|e| format!("return path: sending SHUT(0): {e}"))?;
            rp.close();
        }
        Ok(())
    }
}

/// The RAMBlock a page record refers to: named (and remembered as the
/// channel's last block), or the channel's last block for CONTINUE.
pub fn resolve_block(
    shared: &Shared,
    last: &mut Option<Arc<RamBlock>>,
    b: BlockRef,
    off: u64,
) -> Result<Arc<RamBlock>, String> {
    match b {
        BlockRef::Continue => last.clone().ok_or_else(|| {
            format!("RAM record with CONTINUE flag but no previous block at byte offset {off}")
        }),
        BlockRef::Named(n) => {
            let blk = shared.ram().get(n).ok_or_else(|| {
                format!("RAM record names unknown RAMBlock {n:?} at byte offset {off}")
            })?;
            *last = Some(blk.clone());
            Ok(blk)
        }
    }
}

/// A page address must lie inside its block.
pub fn check_page_addr(b: &RamBlock, addr: u64, off: u64) -> Result<(), String> {
    if addr.checked_add(TARGET_PAGE_SIZE).is_none_or(|e| e > b.used_length) {
        return Err(format!(
            "page address {addr:#x} is outside RAMBlock {:?} (length {:#x}) at byte offset {off}",
            b.name, b.used_length
        ));
    }
    Ok(())
}

/// The version of a versioned machine type (`pc-q35-10.0` → (10, 0)).
pub fn machine_version(m: &str) -> Option<(u32, u32)> {
    let v = m.rsplit('-').next()?;
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn machine_at_least(m: Option<&str>, v: (u32, u32)) -> bool {
    m.and_then(machine_version).is_some_and(|mv| mv >= v)
}

#[cfg(test)]
mod machine_tests {
    #[test]
    fn machine_versions() {
        assert_eq!(super::machine_version("pc-q35-10.0"), Some((10, 0)));
        assert_eq!(super::machine_version("pc-i440fx-7.2"), Some((7, 2)));
        assert_eq!(super::machine_version("q35"), None);
        assert!(super::machine_at_least(Some("pc-q35-11.1"), (11, 1)));
        assert!(!super::machine_at_least(Some("pc-q35-11.0"), (11, 1)));
        assert!(!super::machine_at_least(None, (11, 1)));
    }
}

/// An owned copy of a top-level record (so the reader can move on).
enum OwnedTop {
    SectionOpen {
        kind: SectionKind,
        section_id: u32,
        idstr: String,
        instance_id: u32,
        version_id: u32,
    },
    SectionCont {
        kind: SectionKind,
        section_id: u32,
    },
    Command {
        cmd: u16,
        payload: Vec<u8>,
        payload_offset: u64,
    },
    Eof,
    VmDescription,
}

impl OwnedTop {
    fn from(r: &TopRecord) -> OwnedTop {
        match r {
            TopRecord::SectionOpen { kind, section_id, idstr, instance_id, version_id } => {
                OwnedTop::SectionOpen {
                    kind: *kind,
                    section_id: *section_id,
                    idstr: idstr.to_string(),
                    instance_id: *instance_id,
                    version_id: *version_id,
                }
            }
            TopRecord::SectionCont { kind, section_id } => {
                OwnedTop::SectionCont { kind: *kind, section_id: *section_id }
            }
            TopRecord::Command(rc) => OwnedTop::Command {
                cmd: rc.cmd,
                payload: rc.payload.to_vec(),
                payload_offset: rc.payload_offset,
            },
            TopRecord::Eof => OwnedTop::Eof,
            TopRecord::VmDescription { .. } => OwnedTop::VmDescription,
        }
    }
}
