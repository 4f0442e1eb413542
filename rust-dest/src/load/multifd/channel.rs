//! One multifd channel's receive loop (QEMU's `multifd_recv_thread()`): the
//! initial packet, then RAM packets (header, payload), decompressed and
//! placed into the RAMBlocks, with a pause at every SYNC packet until the
//! main channel reaches the same sync point.

use std::io::{self, Read};
use std::sync::Arc;

use super::decomp::{DecompressError, Decompressor};
use super::recv::{runs, ChanReader};
use super::MultifdRecv;
use crate::channel::Sock;
use crate::defects::{self, Defect};
use crate::postcopy::{PlaceError, TmpPage};
use crate::ram::{RamBlock, TARGET_PAGE_SIZE};
use crate::state::{Counters, MultifdChannelStats};
use wire::consts::MULTIFD_MAGIC;
use wire::multifd::{
    InitPacket, MultifdError, PacketFormat, PacketLayout, RamPacket, INIT_PACKET_LEN,
    MULTIFD_VERSION,
};
use wire::Cursor;

/// Why a multifd channel failed. The texts of the initial-packet checks are
/// QEMU's (`multifd_recv_initial_packet()`), followed by the byte offset.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("multifd channel {ch}: multifd: received packet magic {found:x} expected {MULTIFD_MAGIC:x} (at byte offset {at})")]
    InitMagic { ch: String, at: u64, found: u32 },
    #[error("multifd channel {ch}: multifd: received packet version {found} expected {MULTIFD_VERSION} (at byte offset {at})")]
    InitVersion { ch: String, at: u64, found: u32 },
    #[error("multifd channel {id}: multifd: received uuid '{found}' and expected uuid '{expected}' for channel {id} (at byte offset {at})")]
    Uuid { id: u8, at: u64, found: String, expected: String },
    #[error("multifd channel {id}: multifd: received channel id {id} is greater than number of channels {channels} (at byte offset {at})")]
    IdOutOfRange { id: u8, at: u64, channels: u32 },
    #[error("multifd channel {id}: multifd: received channel id {id} twice: channel already set up (at byte offset {at})")]
    Duplicate { id: u8, at: u64 },
    #[error("multifd channel {ch}: closed inside the initial packet at byte offset {at} ({needed} more byte(s) needed)")]
    InitTruncated { ch: String, at: u64, needed: usize },
    #[error("multifd channel {id}: {source}")]
    Packet { id: u8, source: MultifdError },
    #[error(
        "multifd channel {id}: multifd: unknown ram block {name} (packet at byte offset {at})"
    )]
    UnknownBlock { id: u8, at: u64, name: String },
    #[error("multifd channel {id}: {source} (packet at byte offset {at})")]
    Place { id: u8, at: u64, source: PlaceError },
    #[error("multifd channel {id}: {source} (packet at byte offset {at})")]
    Decompress { id: u8, at: u64, source: DecompressError },
    #[error("multifd channel {id}: closed inside the packet at byte offset {at} ({needed} more byte(s) needed)")]
    Truncated { id: u8, at: u64, needed: usize },
    #[error("multifd channel {id}: the migration ended before the packet at byte offset {at} could be applied")]
    Ended { id: u8, at: u64 },
    #[error("multifd channel {ch}: read error at byte offset {at}: {source}")]
    Io { ch: String, at: u64, source: io::Error },
}

fn uuid_text(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Read and check the initial packet; the channel id. `probe`: a second
/// handle on the channel's socket ([`MultifdRecv::reset_channel`]).
fn initial(mf: &MultifdRecv, r: &mut ChanReader, probe: Option<Sock>) -> Result<u8, ChannelError> {
    let ch = || "(id not yet known)".to_string();
    let base = r.offset();
    let got = r.read_header(INIT_PACKET_LEN).map_err(|source| ChannelError::Io {
        ch: ch(),
        at: base,
        source,
    })?;
    let ok = got == INIT_PACKET_LEN;
    let win = r.header();
    let mut c = Cursor::new(win, base);
    let p = match InitPacket::decode(&mut c) {
        Ok(p) => p,
        Err(MultifdError::BadMagic { at, found }) => {
            return Err(ChannelError::InitMagic { ch: ch(), at, found })
        }
        Err(MultifdError::UnsupportedVersion { at, found }) => {
            return Err(ChannelError::InitVersion { ch: ch(), at, found })
        }
        Err(_) if !ok => {
            let needed = INIT_PACKET_LEN - win.len();
            return Err(ChannelError::InitTruncated { ch: ch(), at: base, needed });
        }
        Err(e) => return Err(ChannelError::Packet { id: 0, source: e }),
    };
    let (id, cfg) = (p.id, mf.config());
    if p.uuid != cfg.uuid {
        let (found, expected) = (uuid_text(&p.uuid), uuid_text(&cfg.uuid));
        return Err(ChannelError::Uuid { id, at: base + 8, found, expected });
    }
    if u32::from(id) >= cfg.channels {
        return Err(ChannelError::IdOutOfRange { id, at: base + 24, channels: cfg.channels });
    }
    if !mf.connect(id, probe) {
        return Err(ChannelError::Duplicate { id, at: base + 24 });
    }
    Ok(id)
}

/// The whole channel: initial packet, then packets until the source closes
/// it between two packets.
pub(super) fn run(
    mf: &MultifdRecv,
    src: Box<dyn Read + Send>,
    direct: Option<Sock>,
) -> Result<(), ChannelError> {
    let shared = mf.shared.clone();
    let probe = direct.as_ref().and_then(|s| s.try_clone().ok());
    let mut r = ChanReader::new(src, direct, shared.clone());
    let id = initial(mf, &mut r, probe)?;
    tracing::info!(id, "multifd channel connected");
    // `multifd-bytes` counts every byte of the channel, as 8.0+ sources do
    // (7.2 sources leave the initial packets out).
    Counters::add(&shared.counters().multifd_bytes, INIT_PACKET_LEN as u64);
    mf.progress(id, INIT_PACKET_LEN as u64);
    shared.lock().multifd_channels.insert(
        id,
        MultifdChannelStats { id, bytes: INIT_PACKET_LEN as u64, ..Default::default() },
    );
    let res = packets(mf, &mut r, id);
    if res.is_ok() {
        // A failure is reported by the caller (it fails the migration
        // before anyone sees the channel closed).
        mf.closed(id, r.offset());
    }
    res
}

fn packets(mf: &MultifdRecv, r: &mut ChanReader, id: u8) -> Result<(), ChannelError> {
    let shared = mf.shared.clone();
    // A V9 reader reads V7 packets too (the zero_pages field was zero).
    let fmt = PacketFormat::x86(PacketLayout::V9);
    let hlen = fmt.packet_len();
    let compression = mf.config().compression;
    let dec = Decompressor::new(compression).map_err(|source| ChannelError::Decompress {
        id,
        at: r.offset(),
        source,
    })?;
    let io_err = |at, source| ChannelError::Io { ch: id.to_string(), at, source };
    let mut st =
        Placing { dec, block: None, runs: Vec::new(), out: Vec::new(), tmp: TmpPage::default() };
    loop {
        let at = r.offset();
        let got = r.read_header(hlen).map_err(|e| io_err(at, e))?;
        if got < hlen {
            if got == 0 {
                tracing::info!(id, "multifd channel closed by the source");
                return Ok(());
            }
            return Err(ChannelError::Truncated { id, at, needed: hlen - got });
        }
        let p = RamPacket::decode(&mut Cursor::new(r.header(), at), &fmt)
            .map_err(|source| ChannelError::Packet { id, source })?;
        let plen = p
            .payload_len(&fmt, compression, at)
            .map_err(|source| ChannelError::Packet { id, source })?;
        apply(mf, r, id, at, &p, &fmt, plen, &mut st)?;
        let n = (hlen + plen) as u64;
        Counters::add(&shared.counters().multifd_bytes, n);
        mf.progress(id, n);
        {
            let mut g = shared.lock();
            let s = g.multifd_channels.entry(id).or_default();
            s.id = id;
            s.bytes += n;
            s.packets += 1;
            s.normal_pages += u64::from(p.normal_pages);
            s.zero_pages += u64::from(p.zero_pages);
            s.syncs += u64::from(p.is_sync());
            if compression != wire::multifd::Compression::None {
                s.compressed_bytes += plen as u64;
            }
        }
        // Pages first, then the SYNC (docs/multifd.md section 3).
        if p.is_sync() && !mf.channel_synced(id) {
            return Ok(());
        }
    }
}

/// Runs of consecutive pages at least this long are mapped with
/// [`crate::mem::Mapping::populate_write`] before they are written.
const POPULATE_MIN: usize = 16 * TARGET_PAGE_SIZE as usize;

/// A channel's reused state for placing packets.
struct Placing {
    dec: Decompressor,
    /// The block of the last packet (most packets name the same).
    block: Option<Arc<RamBlock>>,
    /// The last packet's normal pages as runs of consecutive pages.
    runs: Vec<(usize, usize)>,
    /// Decompressed pages that do not go straight into guest RAM.
    out: Vec<u8>,
    /// The huge page this channel assembles once postcopy listens.
    tmp: TmpPage,
}

/// Read a packet's payload and place its pages: normal pages from the
/// payload, then zero pages (in precopy zeroed only if received before:
/// fresh memory is zero; once postcopy listens both through the postcopy
/// runtime). In precopy uncompressed pages are received straight into
/// guest RAM and a compressed run of consecutive pages is decompressed
/// straight into it; nothing is allocated per packet.
#[allow(clippy::too_many_arguments)]
fn apply(
    mf: &MultifdRecv,
    r: &mut ChanReader,
    id: u8,
    at: u64,
    p: &RamPacket,
    fmt: &PacketFormat,
    plen: usize,
    st: &mut Placing,
) -> Result<(), ChannelError> {
    let truncated = |got: usize| ChannelError::Truncated { id, at, needed: plen - got };
    let io_err = |source| ChannelError::Io { ch: id.to_string(), at, source };
    if p.offsets.is_empty() {
        // No pages: a payload (none in QEMU's packets) is read and dropped.
        let got = r.read_payload(plen).map_err(io_err)?;
        return if got < plen { Err(truncated(got)) } else { Ok(()) };
    }
    if !mf.wait_blocks() {
        return Err(ChannelError::Ended { id, at });
    }
    let b = match &st.block {
        Some(b) if b.name == p.ramblock => b.clone(),
        _ => {
            let Some(b) = mf.shared.ram().get(&p.ramblock) else {
                return Err(ChannelError::UnknownBlock { id, at, name: p.ramblock.clone() });
            };
            st.block = Some(b.clone());
            b
        }
    };
    p.check_offsets(fmt, b.used_length, at)
        .map_err(|source| ChannelError::Packet { id, source })?;
    let ps = TARGET_PAGE_SIZE as usize;
    let shifted: Vec<u64>;
    let normal = if defects::nth(Defect::MultifdOffsetShift, 3) {
        // Seeded defect: every page of this packet one page too high.
        let top = b.used_length - TARGET_PAGE_SIZE;
        shifted = p
            .normal_offsets()
            .iter()
            .map(|&o| if o < top { o + TARGET_PAGE_SIZE } else { o })
            .collect();
        &shifted[..]
    } else {
        p.normal_offsets()
    };
    let want = normal.len() * ps;
    let compressed = !matches!(st.dec, Decompressor::None);
    let decomp_err = |source| ChannelError::Decompress { id, at, source };
    // Held while the pages are read and placed: postcopy cannot start
    // listening in between (see `MultifdRecv::placement`). The wait is
    // bounded by the source delivering the packet it started, or by the
    // socket's shutdown when the migration fails or ends.
    let placement = mf.placement();
    if let Some(pc) = placement.as_ref() {
        // Postcopy listens: every page goes in atomically (UFFDIO_COPY /
        // UFFDIO_ZEROPAGE), sets the received bit and wakes a thread
        // faulting on it.
        let got = r.read_payload(plen).map_err(io_err)?;
        if got < plen {
            return Err(truncated(got));
        }
        let data = if compressed && want > 0 {
            st.out.resize(want, 0);
            st.dec.decompress_into(r.payload(plen), &mut st.out).map_err(decomp_err)?;
            &st.out[..]
        } else {
            r.payload(plen)
        };
        let tmp = &mut st.tmp;
        let mut place = |off: u64, d: Option<&[u8]>| {
            pc.place(tmp, &b, off, d).map_err(|source| ChannelError::Place { id, at, source })
        };
        for (i, &off) in normal.iter().enumerate() {
            place(off, Some(&data[i * ps..(i + 1) * ps]))?;
        }
        for &off in p.zero_offsets() {
            place(off, None)?;
        }
    } else {
        runs(normal, ps, &mut st.runs);
        // Fresh guest RAM would otherwise take one page fault per page
        // while it is written (most of the receive cost on a shmem-backed
        // guest): map longer runs in one call first.
        for &(off, len) in &st.runs {
            if len >= POPULATE_MIN {
                b.mapping.populate_write(off, len);
            }
        }
        if !compressed {
            // Straight from the socket into guest RAM.
            let got = r.read_into(&b.mapping, &st.runs).map_err(io_err)?;
            if got < plen {
                return Err(truncated(got));
            }
        } else if want > 0 {
            let got = r.read_payload(plen).map_err(io_err)?;
            if got < plen {
                return Err(truncated(got));
            }
            let input = r.payload(plen);
            if let [(off, len)] = st.runs[..] {
                // One run of consecutive pages: decompressed in place.
                b.mapping
                    .with_mut_slice(off, len, |s| st.dec.decompress_into(input, s))
                    .map_err(decomp_err)?;
            } else {
                st.out.resize(want, 0);
                st.dec.decompress_into(input, &mut st.out).map_err(decomp_err)?;
                for (i, &off) in normal.iter().enumerate() {
                    b.mapping.write(off as usize, &st.out[i * ps..(i + 1) * ps]);
                }
            }
        }
        for &off in normal {
            b.received.set(off / TARGET_PAGE_SIZE);
        }
        // Seeded defect: the packet's zero-page list is dropped.
        let zeros = match defects::active(Defect::MultifdDropZeroList) {
            true => &[][..],
            false => p.zero_offsets(),
        };
        for &off in zeros {
            if b.received.set(off / TARGET_PAGE_SIZE) {
                b.mapping.fill(off as usize, ps, 0);
            }
        }
    }
    drop(placement);
    let c = mf.shared.counters();
    Counters::add(&c.normal_pages, normal.len() as u64);
    Counters::add(&c.zero_pages, p.zero_offsets().len() as u64);
    Ok(())
}
