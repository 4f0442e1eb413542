//! One function per `MIG_CMD_*` (QEMU's `migration/savevm.c`
//! `loadvm_process_command` and its `loadvm_*_handle_*` helpers). Lengths
//! are checked against wire's command length table when the command is
//! parsed ([`wire::command::Command::parse`]).

use std::sync::Arc;

use super::header::machine_at_least;
use super::{LoadError, Loader};
use crate::compat::Rule;
use crate::defects::{self, Defect};
use crate::postcopy::{self, Action, PcState, PostcopyRuntime};
use crate::ram::TARGET_PAGE_SIZE;
use crate::state::{Capability, Counters, MigStatus, RunState};
use wire::command::{Command, Discard};
use wire::consts::MIGRATION_RESUME_ACK_VALUE;
use wire::rp::RpMessage;
use wire::Encoder;

fn rp_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LoadError {
    let what = what.into();
    move |source| LoadError::ReturnPath { what, source }
}

impl Loader {
    /// Handle a command (`in_package` when inside PACKAGED).
    pub(super) fn command(
        &mut self,
        c: Command,
        off: u64,
        in_package: bool,
    ) -> Result<(), LoadError> {
        tracing::debug!(cmd = c.name(), off, "command");
        match c {
            Command::OpenReturnPath => self.open_return_path(),
            Command::Ping(v) => self.ping(v, off),
            Command::PostcopyAdvise(_) => self.postcopy_advise(&c, off),
            Command::PostcopyListen => self.postcopy_listen(off, in_package),
            Command::PostcopyRun => self.postcopy_run(off),
            Command::PostcopyRamDiscard(ref d) => self.postcopy_ram_discard(&c, d, off),
            Command::Packaged(_) => self.packaged_cmd(off, in_package),
            Command::EnableColo => self.enable_colo(off),
            Command::PostcopyResume => self.postcopy_resume(off),
            Command::RecvBitmap(ref b) => self.recv_bitmap(b, off),
            Command::SwitchoverStart => self.switchover_start(off),
        }
    }

    /// OPEN_RETURN_PATH.
    fn open_return_path(&mut self) -> Result<(), LoadError> {
        if self.rp_open {
            return Ok(());
        }
        self.open_rp(true);
        if !self.rp_open {
            return Err(LoadError::Protocol {
                at: None,
                msg: "return path writer unavailable".into(),
            });
        }
        // switchover-ack: up to machine type 11.0 the destination acks as
        // soon as the return path opens (when no device delays it; rust-dest
        // has none). From pc-*-11.1 on, QEMU (verified on 11.1.3) only acks
        // for devices that asked, and an unsolicited ack underflows the
        // source's pending count and stalls it: rust-dest then sends none.
        if self.shared.has(Capability::SwitchoverAck)
            && !machine_at_least(self.stream_machine.as_deref(), (11, 1))
        {
            self.ack_pending = true;
            self.send_ack()?;
        }
        Ok(())
    }

    fn send_ack(&mut self) -> Result<(), LoadError> {
        if self.ack_pending {
            if let Some(rp) = self.rp() {
                rp.send(&RpMessage::SwitchoverAck).map_err(rp_err("SWITCHOVER_ACK"))?;
                self.ack_pending = false;
            }
        }
        Ok(())
    }

    /// PING: answer PONG on the return path.
    fn ping(&mut self, v: u32, off: u64) -> Result<(), LoadError> {
        let rp = self.rp().ok_or_else(|| {
            LoadError::protocol(
                off,
                format!("PING ({v:#x}) received with no return path open at byte offset {off}"),
            )
        })?;
        rp.send(&RpMessage::Pong(v)).map_err(rp_err(format!("PONG {v:#x}")))?;
        Counters::add(&self.shared.counters().pings, 1);
        Ok(())
    }

    /// SWITCHOVER_START: the final-phase marker; no device here needs it.
    /// Versions before it existed refuse command 0xb as unknown.
    fn switchover_start(&mut self, off: u64) -> Result<(), LoadError> {
        if !self.cfg.compat.has(Rule::SwitchoverStartCommand) {
            return Err(LoadError::protocol(off, format!(
                "MIG_CMD 0xb unknown (len 0x0) at byte offset {off}: SWITCHOVER_START does not exist in QEMU {}",
                self.cfg.compat
            )));
        }
        Ok(())
    }

    /// ENABLE_COLO: not supported.
    fn enable_colo(&mut self, off: u64) -> Result<(), LoadError> {
        Err(LoadError::unsupported(
            off,
            format!("ENABLE_COLO at byte offset {off}: COLO is not supported"),
        ))
    }

    /// PACKAGED: the blob follows; the walker delivers it next.
    fn packaged_cmd(&mut self, off: u64, in_package: bool) -> Result<(), LoadError> {
        if in_package {
            return Err(LoadError::protocol(
                off,
                format!("PACKAGED nested inside a package at byte offset {off}"),
            ));
        }
        Ok(())
    }

    /// POSTCOPY_RESUME (recovery): ack and re-request missing pages.
    fn postcopy_resume(&mut self, off: u64) -> Result<(), LoadError> {
        if self.shared.lock().status != MigStatus::PostcopyRecover {
            tracing::warn!("POSTCOPY_RESUME outside postcopy recovery ignored (byte offset {off})");
            return Ok(());
        }
        self.shared.lock().error_desc = None;
        self.shared.set_status(MigStatus::PostcopyActive);
        let rp = self
            .rp()
            .ok_or(LoadError::Protocol {
                at: Some(off),
                msg: "POSTCOPY_RESUME without a return path".into(),
            })?
            .clone();
        rp.send(&RpMessage::ResumeAck(MIGRATION_RESUME_ACK_VALUE)).map_err(rp_err("RESUME_ACK"))?;
        // Page requests go out again only now, as from QEMU's destination,
        // whose fault thread waits for the resume while paused
        // (`migration/postcopy-ram.c`, `migration/savevm.c:
        // loadvm_postcopy_handle_resume()`). A source with postcopy-preempt
        // re-connects its preempt channel after the RECV_BITMAP exchange and
        // before it sends RESUME; a request before that aborts an 11.1.3
        // source (`ram_save_queue_pages: Assertion 'pss->pss_channel'
        // failed`, docs/qemu-bugs.md).
        if let Some(pc) = &self.postcopy {
            pc.set_rp(Some(rp));
            pc.resend_outstanding();
        }
        Ok(())
    }

    /// RECV_BITMAP (recovery): send the block's received bitmap.
    fn recv_bitmap(&mut self, b: &str, off: u64) -> Result<(), LoadError> {
        if self.shared.lock().status != MigStatus::PostcopyRecover {
            tracing::warn!(
                "RECV_BITMAP for {b:?} outside postcopy recovery ignored (byte offset {off})"
            );
            return Ok(());
        }
        let blk = self.shared.ram().get(b).ok_or_else(|| {
            LoadError::protocol(
                off,
                format!("RECV_BITMAP for unknown RAMBlock {b:?} at byte offset {off}"),
            )
        })?;
        let rp = self
            .rp()
            .ok_or(LoadError::Protocol {
                at: Some(off),
                msg: "RECV_BITMAP without a return path".into(),
            })?
            .clone();
        let mut e = Encoder::new();
        RpMessage::RecvBitmap { block: b.to_string() }.encode(&mut e);
        let mut bitmap = blk.received.to_le_bytes();
        if defects::active(Defect::RecvBitmapShift) {
            defects::shift_bitmap_le(&mut bitmap);
        }
        wire::rp::encode_recv_bitmap_data(&mut e, &bitmap);
        rp.send_raw(&e.buf).map_err(rp_err(format!("the received bitmap of {b:?}")))
    }

    /// Check a postcopy command against the rules for the current state.
    fn postcopy_step(&self, c: &Command, off: u64) -> Result<(PcState, Action), LoadError> {
        let hps = crate::mem::host_page_size() as u64;
        let summary = self.shared.ram().backend_page_sizes().iter().fold(hps, |s, (_, ps)| s | ps);
        let local = postcopy::Local {
            postcopy_ram: self.shared.has(Capability::PostcopyRam),
            ram_pagesize_summary: summary,
            target_page_size: TARGET_PAGE_SIZE,
        };
        postcopy::rules::step(self.pc_state, c, &local)
            .map_err(|source| LoadError::Postcopy { at: off, source })
    }

    /// POSTCOPY_ADVISE. With postcopy-ram on, the source's MEM_SIZE list
    /// that follows carries the page size of every block whose page size
    /// is not the host's: the walker learns which blocks those are here
    /// (QEMU's `parse_ramblock()`, `migration/ram.c`, reads the field for
    /// its own RAMBlocks of another page size once advised).
    fn postcopy_advise(&mut self, c: &Command, off: u64) -> Result<(), LoadError> {
        let (ns, _) = self.postcopy_step(c, off)?;
        self.set_pc_state(ns);
        if matches!(c, Command::PostcopyAdvise(Some(_))) && self.shared.has(Capability::PostcopyRam)
        {
            let hps = crate::mem::host_page_size().max(TARGET_PAGE_SIZE as usize) as u64;
            let huge: Vec<String> = self
                .shared
                .ram()
                .backend_page_sizes()
                .into_iter()
                .filter(|(_, ps)| *ps != hps)
                .map(|(id, _)| id)
                .collect();
            self.sized_blocks = Some(huge);
        }
        Ok(())
    }

    /// POSTCOPY_RAM_DISCARD: drop pages the source will send again.
    fn postcopy_ram_discard(
        &mut self,
        c: &Command,
        d: &Discard,
        off: u64,
    ) -> Result<(), LoadError> {
        let (ns, _) = self.postcopy_step(c, off)?;
        self.discard(d, off)?;
        self.set_pc_state(ns);
        Ok(())
    }

    /// POSTCOPY_LISTEN: register RAM with userfaultfd, start the fault thread.
    fn postcopy_listen(&mut self, off: u64, in_package: bool) -> Result<(), LoadError> {
        let (ns, _) = self.postcopy_step(&Command::PostcopyListen, off)?;
        if !in_package {
            tracing::warn!("POSTCOPY_LISTEN outside a package at byte offset {off}");
        }
        self.set_pc_state(ns);
        self.shared.set_status(MigStatus::PostcopyActive);
        // Multifd channels place nothing while RAM is being registered, and
        // through the runtime afterwards.
        let mf = self.multifd.clone();
        let mut placement = mf.as_ref().map(|mf| mf.placement_mut());
        let rt =
            PostcopyRuntime::start(self.shared.clone(), self.rp.clone(), self.cfg.vcpu.clone())
                .map_err(|source| LoadError::Userfaultfd { at: off, source })?;
        let rt = Arc::new(rt);
        if let Some(p) = placement.as_mut() {
            **p = Some(rt.clone());
        }
        drop(placement);
        self.slot.set(Some(rt.clone()));
        self.postcopy = Some(rt);
        self.placing = true;
        // From now on a silent main channel is a lost connection (pause).
        if let Some(s) = &self.session {
            s.set_main_read_timeout(Some(crate::channel::session::POSTCOPY_SILENCE_LIMIT));
            if self.cfg.postcopy_window > 0 {
                s.set_main_recv_buffer(self.cfg.postcopy_window);
            }
        }
        Ok(())
    }

    /// POSTCOPY_RUN: the guest may start.
    fn postcopy_run(&mut self, off: u64) -> Result<(), LoadError> {
        let (ns, _) = self.postcopy_step(&Command::PostcopyRun, off)?;
        self.set_pc_state(ns);
        let paused = self.shared.lock().start_paused || defects::active(Defect::RunStaysPaused);
        if let Some(pc) = &self.postcopy {
            self.shared.set_run_state(if paused { RunState::Paused } else { RunState::Running });
            pc.run();
        }
        Ok(())
    }

    fn discard(&mut self, d: &Discard, off: u64) -> Result<(), LoadError> {
        // QEMU requires at least one range's worth of payload: version, name
        // length, name, NUL, 16 bytes (len >= 20; docs/wire-format.md §6.3).
        let plen = 3 + d.block.len() + 16 * d.ranges.len();
        if plen < 20 {
            return Err(LoadError::protocol(off, format!(
                "POSTCOPY_RAM_DISCARD {:?}: invalid length {plen} (at least 20 expected) at byte offset {off}",
                d.block
            )));
        }
        Counters::add(&self.shared.counters().discard_commands, 1);
        for &(start, len) in &d.ranges {
            // Looked up per range, as QEMU's `ram_discard_range()` does: a
            // DISCARD without ranges names no block that must exist.
            let b = self.shared.ram().get(&d.block).ok_or_else(|| {
                LoadError::protocol(
                    off,
                    format!(
                        "POSTCOPY_RAM_DISCARD for unknown RAMBlock {:?} at byte offset {off}",
                        d.block
                    ),
                )
            })?;
            // Whole pages of the block: huge pages on hugetlbfs (QEMU's
            // `ram_block_discard_range()` refuses anything else).
            let ps = b.page_size;
            if start % ps != 0 || len % ps != 0 {
                return Err(LoadError::protocol(off, format!(
                    "POSTCOPY_RAM_DISCARD {:?}: range start {start:#x} length {len:#x} is not aligned to the block's page size {ps:#x} at byte offset {off}",
                    d.block
                )));
            }
            if start.checked_add(len).is_none_or(|e| e > b.used_length) {
                return Err(LoadError::protocol(off, format!(
                    "POSTCOPY_RAM_DISCARD {:?}: range start {start:#x} length {len:#x} is outside the block (length {:#x}) at byte offset {off}",
                    d.block, b.used_length
                )));
            }
            if defects::active(Defect::SkipDiscard) {
                continue;
            }
            // Seeded defect: one host page too many (when the block has it).
            let dlen = match defects::active(Defect::DiscardOverrun) {
                true if start + len + ps <= b.used_length => len + ps,
                _ => len,
            };
            b.mapping.discard(start as usize, dlen as usize).map_err(|e| LoadError::Protocol {
                at: Some(off),
                msg: format!(
                    "POSTCOPY_RAM_DISCARD {:?}: discarding {start:#x}+{len:#x}: {e}",
                    d.block
                ),
            })?;
            b.received.clear_range(start / TARGET_PAGE_SIZE, (start + len) / TARGET_PAGE_SIZE);
            Counters::add(&self.shared.counters().discarded_pages, len / TARGET_PAGE_SIZE);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use wire::command::Command;
    use wire::consts::*;
    use wire::stream::RawCommand;

    /// Every command of wire's table parses with its fixed length (and so
    /// reaches exactly one handler above); unknown codes do not.
    #[test]
    fn every_command_in_the_length_table_has_a_handler() {
        for code in 1..MIG_CMD_MAX {
            let len = command_fixed_len(code).unwrap_or(0) as usize;
            let payload = vec![0u8; len];
            let rc = RawCommand { cmd: code, payload: &payload, payload_offset: 5 };
            if let Ok(c) = Command::parse(&rc) {
                assert_eq!(c.code(), code);
            } else {
                assert!(command_fixed_len(code).is_none(), "{}", command_name(code));
            }
        }
        let rc = RawCommand { cmd: MIG_CMD_MAX, payload: &[], payload_offset: 5 };
        assert!(Command::parse(&rc).is_err());
    }
}
