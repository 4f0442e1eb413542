//! The postcopy-preempt channel: a bare sequence of RAM page records (no
//! sections, no commands) carrying urgent pages, read concurrently with the
//! main channel and with its own CONTINUE state. 7.2-style sources connect
//! it at setup and end it with an EOS record; 8.0+ sources connect it at
//! postcopy start and just close it.

use std::sync::Arc;

use crate::codec::ramrec::{decode_ram_record, BlockRef, RamContext, RamRecord};
use crate::codec::{Cursor, DecodeError};
use crate::incoming::{Reader, CH_PREEMPT};
use crate::ram::{RamBlock, TARGET_PAGE_SIZE};
use crate::session::{Session, Sock};
use crate::state::MigStatus;

pub fn run(session: Arc<Session>, sock: Sock) {
    let res = read_channel(&session, sock);
    session.preempt_closed();
    match res {
        Ok(()) => tracing::info!("postcopy-preempt channel ended"),
        Err(e) => {
            let st = session.shared.lock().status;
            if st.is_terminal() || matches!(st, MigStatus::PostcopyPaused | MigStatus::PostcopyRecover) {
                tracing::info!("postcopy-preempt channel closed: {e}");
            } else {
                // A lost preempt channel alone does not lose pages: the main
                // channel and page requests still deliver them.
                tracing::warn!("postcopy-preempt channel: {e}");
            }
        }
    }
}

fn read_channel(session: &Arc<Session>, sock: Sock) -> Result<(), String> {
    let shared = session.shared.clone();
    let mut r = Reader::new(Box::new(sock), shared.clone());
    let ctx = RamContext::x86();
    let mut last: Option<Arc<RamBlock>> = None;
    let mut rt = None;
    loop {
        let mut eos = false;
        let consumed;
        {
            let (w, base) = r.window();
            let mut c = Cursor::new(w, base);
            let mut done = 0;
            loop {
                let off = c.offset();
                match decode_ram_record(&mut c, &ctx) {
                    Ok(rec) => {
                        match rec {
                            RamRecord::Eos => {
                                eos = true;
                                done = c.pos();
                                break;
                            }
                            RamRecord::Page { addr, block, data } => {
                                let b = resolve(&shared, &mut last, block, off)?;
                                check(&b, addr, off)?;
                                if rt.is_none() {
                                    rt = session.wait_runtime();
                                }
                                let pc = rt.as_ref().ok_or("preempt page after the migration ended")?;
                                pc.place(&b, addr, Some(data), CH_PREEMPT)?;
                                crate::state::Counters::add(&shared.counters().preempt_pages, 1);
                            }
                            RamRecord::Zero { addr, block, fill } => {
                                let b = resolve(&shared, &mut last, block, off)?;
                                check(&b, addr, off)?;
                                if fill != 0 {
                                    return Err(format!("preempt channel: zero page with fill {fill:#04x} at byte offset {off}"));
                                }
                                if rt.is_none() {
                                    rt = session.wait_runtime();
                                }
                                let pc = rt.as_ref().ok_or("preempt page after the migration ended")?;
                                pc.place(&b, addr, None, CH_PREEMPT)?;
                                crate::state::Counters::add(&shared.counters().preempt_pages, 1);
                            }
                            other => {
                                return Err(format!(
                                    "preempt channel: unexpected RAM record {:?} at byte offset {off}",
                                    std::mem::discriminant(&other)
                                ))
                            }
                        }
                        done = c.pos();
                    }
                    Err(DecodeError::Incomplete { .. }) => break,
                    Err(e) => return Err(format!("preempt channel: {e}")),
                }
            }
            consumed = done;
        }
        r.consume(consumed);
        if eos {
            return Ok(());
        }
        let at = r.offset();
        match r.fill(64) {
            Ok(true) => {}
            Ok(false) if r.window().0.is_empty() => return Ok(()),
            Ok(false) => return Err(format!("preempt channel closed inside a record at byte offset {at}")),
            Err(e) => return Err(format!("preempt channel read error at byte offset {at}: {e}")),
        }
    }
}

fn resolve(
    shared: &crate::state::Shared,
    last: &mut Option<Arc<RamBlock>>,
    b: BlockRef,
    off: u64,
) -> Result<Arc<RamBlock>, String> {
    match b {
        BlockRef::Continue => {
            last.clone().ok_or_else(|| format!("preempt channel: CONTINUE with no previous block at byte offset {off}"))
        }
        BlockRef::Named(n) => {
            let blk = shared
                .ram()
                .get(n)
                .ok_or_else(|| format!("preempt channel: unknown RAMBlock {n:?} at byte offset {off}"))?;
            *last = Some(blk.clone());
            Ok(blk)
        }
    }
}

fn check(b: &RamBlock, addr: u64, off: u64) -> Result<(), String> {
    if addr.checked_add(TARGET_PAGE_SIZE).is_none_or(|e| e > b.used_length) {
        return Err(format!(
            "preempt channel: page address {addr:#x} outside RAMBlock {:?} (length {:#x}) at byte offset {off}",
            b.name, b.used_length
        ));
    }
    Ok(())
}
