//! The postcopy-preempt channel reader: a bare sequence of RAM page records
//! (no sections, no commands) carrying urgent pages, read concurrently with
//! the main channel and with its own CONTINUE state. 7.2-style sources
//! (QEMU 7.2, or a machine type up to 7.2) connect it at setup and end it
//! with one EOS record written after the main channel's EOF
//! (`postcopy_preempt_shutdown_file()`, migration/ram.c); the reader stops
//! there, and the loader waits for that before it unregisters guest RAM (a
//! 7.2 destination joins its preempt thread in
//! `postcopy_ram_incoming_cleanup()`, migration/postcopy-ram.c), so an
//! urgent page sent just before the end is placed, not lost. 8.0+ sources
//! connect it at postcopy start and send no EOS; the channel just closes.

use std::io::Read;
use std::sync::Arc;

use super::error::LoadError;
use super::ram::{check_page_addr, resolve_block};
use crate::channel::{ReadError, Reader};
use crate::defects::{self, Defect};
use crate::postcopy::{PostcopyRuntime, RuntimeSlot, TmpPage};
use crate::ram::RamBlock;
use crate::state::{Counters, MigStatus, Shared};
use wire::ramrec::RamRecord;
use wire::walk::{Item, Walker};

/// Why the preempt channel stopped.
#[derive(Debug, thiserror::Error)]
pub enum PreemptError {
    #[error("preempt channel closed inside a record at byte offset {at}")]
    Truncated { at: u64 },
    #[error("preempt channel read error at byte offset {at}: {source}")]
    Io { at: u64, source: std::io::Error },
    #[error("preempt channel: {0}")]
    Decode(wire::DecodeError),
    #[error("preempt channel: {0}")]
    Record(LoadError),
    #[error("preempt channel: unexpected RAM record at byte offset {at}")]
    Unexpected { at: u64 },
    #[error("preempt channel: zero page with fill {fill:#04x} at byte offset {at}")]
    Fill { at: u64, fill: u8 },
    #[error("preempt page after the migration ended")]
    Ended,
    /// Placing failed (not prefixed, as the main channel reports it).
    #[error("{0}")]
    Place(LoadError),
}

/// The channel ended cleanly between records.
struct Closed;

enum Stop {
    Closed(Closed),
    Err(PreemptError),
}

impl From<ReadError> for Stop {
    fn from(e: ReadError) -> Stop {
        match e {
            ReadError::Truncated { empty: true, .. } => Stop::Closed(Closed),
            ReadError::Truncated { at, .. } => Stop::Err(PreemptError::Truncated { at }),
            ReadError::Io { at, source } => Stop::Err(PreemptError::Io { at, source }),
            ReadError::Decode(d) => Stop::Err(PreemptError::Decode(d)),
        }
    }
}

impl From<PreemptError> for Stop {
    fn from(e: PreemptError) -> Stop {
        Stop::Err(e)
    }
}

/// Read the preempt channel `src` until it ends; log how it ended.
pub fn run(shared: &Shared, slot: &RuntimeSlot, src: Box<dyn Read + Send>) {
    match read_channel(shared, slot, src) {
        Ok(()) => tracing::info!("postcopy-preempt channel ended (EOS or closed)"),
        Err(e) => {
            let st = shared.lock().status;
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

fn read_channel(
    shared: &Shared,
    slot: &RuntimeSlot,
    src: Box<dyn Read + Send>,
) -> Result<(), PreemptError> {
    let mut r = Reader::new(src, shared.clone());
    let mut w = Walker::bare();
    let mut last: Option<Arc<RamBlock>> = None;
    let mut rt: Option<Arc<PostcopyRuntime>> = None;
    // This channel's own huge page under assembly (QEMU keeps one per
    // postcopy channel, `mis->postcopy_tmp_pages`).
    let mut tmp = TmpPage::default();
    loop {
        let res = r.next_record(&mut w, |item, off, _| {
            let Item::Ram(rec) = item else {
                return Err(PreemptError::Unexpected { at: off }.into());
            };
            if matches!(rec, RamRecord::Eos) {
                return Ok::<_, Stop>((true, true));
            }
            place(shared, slot, &mut last, &mut rt, &mut tmp, rec, off).map_err(Stop::Err)?;
            Ok::<_, Stop>((false, true))
        });
        match res {
            // The source's last record on this channel.
            Ok(Some(true)) => return Ok(()),
            Ok(Some(false)) => {}
            Ok(None) | Err(Stop::Closed(_)) => return Ok(()),
            Err(Stop::Err(e)) => return Err(e),
        }
    }
}

fn place(
    shared: &Shared,
    slot: &RuntimeSlot,
    last: &mut Option<Arc<RamBlock>>,
    rt: &mut Option<Arc<PostcopyRuntime>>,
    tmp: &mut TmpPage,
    rec: RamRecord,
    off: u64,
) -> Result<(), PreemptError> {
    let (addr, block, data) = match rec {
        RamRecord::Page { addr, block, data } => (addr, block, Some(data)),
        RamRecord::Zero { addr, block, fill } => {
            if fill != 0 {
                return Err(PreemptError::Fill { at: off, fill });
            }
            (addr, block, None)
        }
        _ => return Err(PreemptError::Unexpected { at: off }),
    };
    let b = resolve_block(shared, last, block, off).map_err(PreemptError::Record)?;
    check_page_addr(&b, addr, off).map_err(PreemptError::Record)?;
    if rt.is_none() {
        *rt = slot.wait();
    }
    let pc = rt.as_ref().ok_or(PreemptError::Ended)?;
    if data.is_some() && defects::nth(Defect::PreemptDropPage, 3) {
        // Seeded defect: the page was read off the channel, then lost.
        return Ok(());
    }
    pc.place(tmp, &b, addr, data).map_err(|e| PreemptError::Place(e.into()))?;
    Counters::add(&shared.counters().preempt_pages, 1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::ram::RamTable;

    /// The source writes EOS after the main channel's EOF and keeps the
    /// channel open until the destination's SHUT: the reader must return at
    /// EOS (the loader waits for it before unregistering RAM), not at close.
    #[test]
    fn the_reader_stops_at_eos_with_the_channel_still_open() {
        let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 20)), false);
        let slot = RuntimeSlot::default();
        let (mut src, ours) = UnixStream::pair().unwrap();
        // EOS, then bytes that are not a record: never read.
        src.write_all(&0x10u64.to_be_bytes()).unwrap();
        src.write_all(&[0xff; 8]).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ =
                tx.send(read_channel(&shared, &slot, Box::new(ours)).map_err(|e| e.to_string()));
        });
        let got = rx.recv_timeout(Duration::from_secs(5)).expect("reader still running after EOS");
        assert_eq!(got, Ok(()));
        drop(src);
    }
}
