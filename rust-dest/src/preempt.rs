//! The postcopy-preempt channel: a bare sequence of RAM page records (no
//! sections, no commands) carrying urgent pages, read concurrently with the
//! main channel and with its own CONTINUE state. 7.2-style sources connect
//! it at setup and end it with an EOS record; 8.0+ sources connect it at
//! postcopy start and just close it.

use std::sync::Arc;

use crate::incoming::{check_page_addr, resolve_block, Reader, CH_PREEMPT};
use crate::ram::RamBlock;
use crate::session::{Session, Sock};
use crate::state::MigStatus;
use wire::ramrec::{decode_ram_record, RamContext, RamRecord};
use wire::{Cursor, DecodeError};

pub fn run(session: Arc<Session>, sock: Sock) {
    let res = read_channel(&session, sock);
    session.preempt_closed();
    match res {
        Ok(()) => tracing::info!("postcopy-preempt channel ended"),
        Err(e) => {
            let st = session.shared.lock().status;
            if st.is_terminal()
                || matches!(st, MigStatus::PostcopyPaused | MigStatus::PostcopyRecover)
            {
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
                                let b = resolve_block(&shared, &mut last, block, off)
                                    .map_err(|e| format!("preempt channel: {e}"))?;
                                check_page_addr(&b, addr, off)
                                    .map_err(|e| format!("preempt channel: {e}"))?;
                                if rt.is_none() {
                                    rt = session.wait_runtime();
                                }
                                let pc =
                                    rt.as_ref().ok_or("preempt page after the migration ended")?;
                                pc.place(&b, addr, Some(data), CH_PREEMPT)?;
                                crate::state::Counters::add(&shared.counters().preempt_pages, 1);
                            }
                            RamRecord::Zero { addr, block, fill } => {
                                let b = resolve_block(&shared, &mut last, block, off)
                                    .map_err(|e| format!("preempt channel: {e}"))?;
                                check_page_addr(&b, addr, off)
                                    .map_err(|e| format!("preempt channel: {e}"))?;
                                if fill != 0 {
                                    return Err(format!("preempt channel: zero page with fill {fill:#04x} at byte offset {off}"));
                                }
                                if rt.is_none() {
                                    rt = session.wait_runtime();
                                }
                                let pc =
                                    rt.as_ref().ok_or("preempt page after the migration ended")?;
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
            Ok(false) => {
                return Err(format!("preempt channel closed inside a record at byte offset {at}"))
            }
            Err(e) => return Err(format!("preempt channel read error at byte offset {at}: {e}")),
        }
    }
}
