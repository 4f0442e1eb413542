//! One multifd channel's receive loop (QEMU's `multifd_recv_thread()`): the
//! initial packet, then RAM packets (header, payload), decompressed and
//! placed into the RAMBlocks, with a pause at every SYNC packet until the
//! main channel reaches the same sync point.

use std::io::{self, Read};

use super::decomp::{DecompressError, Decompressor};
use super::MultifdRecv;
use crate::channel::Reader;
use crate::postcopy::PlaceError;
use crate::ram::TARGET_PAGE_SIZE;
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

/// Make `n` bytes available in `r`'s window. `Ok(false)`: the channel
/// ended with fewer (`r.window()` has what came).
fn want(r: &mut Reader, n: usize) -> io::Result<bool> {
    while r.window().0.len() < n {
        let need = n - r.window().0.len();
        if !r.fill(need)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Read and check the initial packet; the channel id.
fn initial(mf: &MultifdRecv, r: &mut Reader) -> Result<u8, ChannelError> {
    let ch = || "(id not yet known)".to_string();
    let ok = want(r, INIT_PACKET_LEN).map_err(|source| ChannelError::Io {
        ch: ch(),
        at: r.offset(),
        source,
    })?;
    let (win, base) = r.window();
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
    r.consume(INIT_PACKET_LEN);
    let (id, cfg) = (p.id, mf.config());
    if p.uuid != cfg.uuid {
        let (found, expected) = (uuid_text(&p.uuid), uuid_text(&cfg.uuid));
        return Err(ChannelError::Uuid { id, at: base + 8, found, expected });
    }
    if u32::from(id) >= cfg.channels {
        return Err(ChannelError::IdOutOfRange { id, at: base + 24, channels: cfg.channels });
    }
    if !mf.connect(id) {
        return Err(ChannelError::Duplicate { id, at: base + 24 });
    }
    Ok(id)
}

/// The whole channel: initial packet, then packets until the source closes
/// it between two packets.
pub(super) fn run(mf: &MultifdRecv, src: Box<dyn Read + Send>) -> Result<(), ChannelError> {
    let shared = mf.shared.clone();
    let mut r = Reader::new(src, shared.clone());
    let id = initial(mf, &mut r)?;
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

fn packets(mf: &MultifdRecv, r: &mut Reader, id: u8) -> Result<(), ChannelError> {
    let shared = mf.shared.clone();
    // A V9 reader reads V7 packets too (the zero_pages field was zero).
    let fmt = PacketFormat::x86(PacketLayout::V9);
    let hlen = fmt.packet_len();
    let compression = mf.config().compression;
    let mut dec = Decompressor::new(compression).map_err(|source| ChannelError::Decompress {
        id,
        at: r.offset(),
        source,
    })?;
    let io_err = |at, source| ChannelError::Io { ch: id.to_string(), at, source };
    loop {
        let at = r.offset();
        let ok = want(r, hlen).map_err(|e| io_err(at, e))?;
        if !ok {
            let have = r.window().0.len();
            if have == 0 {
                tracing::info!(id, "multifd channel closed by the source");
                return Ok(());
            }
            return Err(ChannelError::Truncated { id, at, needed: hlen - have });
        }
        let p = {
            let (win, base) = r.window();
            RamPacket::decode(&mut Cursor::new(win, base), &fmt)
                .map_err(|source| ChannelError::Packet { id, source })?
        };
        let plen = p
            .payload_len(&fmt, compression, at)
            .map_err(|source| ChannelError::Packet { id, source })?;
        if !want(r, hlen + plen).map_err(|e| io_err(at, e))? {
            let have = r.window().0.len();
            return Err(ChannelError::Truncated { id, at, needed: hlen + plen - have });
        }
        apply(mf, r, id, &p, &fmt, plen, &mut dec)?;
        r.consume(hlen + plen);
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

/// Place a packet's pages: normal pages from the payload, then zero pages
/// (in precopy zeroed only if received before: fresh memory is zero; once
/// postcopy listens both through the postcopy runtime).
fn apply(
    mf: &MultifdRecv,
    r: &Reader,
    id: u8,
    p: &RamPacket,
    fmt: &PacketFormat,
    plen: usize,
    dec: &mut Decompressor,
) -> Result<(), ChannelError> {
    if p.offsets.is_empty() {
        return Ok(());
    }
    let (win, at) = r.window();
    let hlen = fmt.packet_len();
    if !mf.wait_blocks() {
        return Err(ChannelError::Ended { id, at });
    }
    let Some(b) = mf.shared.ram().get(&p.ramblock) else {
        return Err(ChannelError::UnknownBlock { id, at, name: p.ramblock.clone() });
    };
    p.check_offsets(fmt, b.used_length, at)
        .map_err(|source| ChannelError::Packet { id, source })?;
    let ps = TARGET_PAGE_SIZE as usize;
    let normal = p.normal_offsets();
    let raw = &win[hlen..hlen + plen];
    let data = if normal.is_empty() {
        std::borrow::Cow::Borrowed(raw)
    } else {
        match dec {
            Decompressor::None => std::borrow::Cow::Borrowed(raw),
            d => std::borrow::Cow::Owned(
                d.decompress(raw, normal.len() * ps)
                    .map_err(|source| ChannelError::Decompress { id, at, source })?,
            ),
        }
    };
    let placement = mf.placement();
    if let Some(pc) = placement.as_ref() {
        // Postcopy listens: every page goes in atomically (UFFDIO_COPY /
        // UFFDIO_ZEROPAGE), sets the received bit and wakes a thread
        // faulting on it.
        let place = |off: u64, d: Option<&[u8]>| {
            pc.place(&b, off, d).map_err(|source| ChannelError::Place { id, at, source })
        };
        for (i, &off) in normal.iter().enumerate() {
            place(off, Some(&data[i * ps..(i + 1) * ps]))?;
        }
        for &off in p.zero_offsets() {
            place(off, None)?;
        }
    } else {
        for (i, &off) in normal.iter().enumerate() {
            b.mapping.write(off as usize, &data[i * ps..(i + 1) * ps]);
            b.received.set(off / TARGET_PAGE_SIZE);
        }
        for &off in p.zero_offsets() {
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
