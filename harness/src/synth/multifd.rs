//! The synthetic source's multifd channels: the scripted elements written on
//! channel k ([`MultifdStep`]) and their encoding with `wire::multifd`
//! (docs/multifd.md sections 2, 3, 6 and 7): compressed payloads come from
//! one zlib or zstd stream per channel, flushed at every packet's end, like
//! `migration/multifd-zlib.c` and `migration/multifd-zstd.c`.

use std::collections::HashMap;

use wire::consts::MULTIFD_MAGIC;
use wire::multifd::{
    Compression, InitPacket, PacketFormat, PacketLayout, RamPacket, FLAG_SYNC, MULTIFD_VERSION,
};
use wire::Encoder;

use super::layout::PAGE_SIZE;
use super::page::Page;
use crate::verify::model::{Content, RamModel};

/// How a compressed payload is damaged on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// Bytes that are not zlib / zstd data (0xff…) of the true length.
    Garbage,
    /// Valid compressed data of only the first half of the pages (at least
    /// one page short of `normal_pages`).
    Short,
}

impl Corruption {
    pub fn parse(s: &str) -> Option<Corruption> {
        match s {
            "garbage" => Some(Corruption::Garbage),
            "short" => Some(Corruption::Short),
            _ => None,
        }
    }
}

/// The compressor of each multifd channel: one stream per channel for the
/// whole migration, flushed (not finished) at each packet's end.
#[derive(Default)]
pub struct Compressors {
    zlib: HashMap<u8, flate2::write::ZlibEncoder<Vec<u8>>>,
    zstd: HashMap<u8, zstd::stream::write::Encoder<'static, Vec<u8>>>,
}

impl Compressors {
    /// The compressed form of `data` on `channel`'s stream, up to a flush.
    fn compress(&mut self, channel: u8, method: Compression, data: &[u8]) -> Vec<u8> {
        fn take<W: std::io::Write>(
            w: &mut W,
            data: &[u8],
            out: impl FnOnce(&mut W) -> Vec<u8>,
        ) -> Vec<u8> {
            // Writing into a Vec cannot fail.
            w.write_all(data).expect("compressing into memory");
            w.flush().expect("flushing into memory");
            out(w)
        }
        match method {
            Compression::Zlib => {
                let z = self.zlib.entry(channel).or_insert_with(|| {
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast())
                });
                take(z, data, |z| std::mem::take(z.get_mut()))
            }
            Compression::Zstd => {
                let z = self.zstd.entry(channel).or_insert_with(|| {
                    zstd::stream::write::Encoder::new(Vec::new(), 1).expect("zstd encoder")
                });
                take(z, data, |z| std::mem::take(z.get_mut()))
            }
            _ => data.to_vec(),
        }
    }
}

/// One scripted element of a multifd channel (or the action of opening it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MultifdStep {
    /// Open channel `channel`: a new TCP connection to the destination.
    Connect { channel: u8 },
    /// The 64-byte initial packet; every field can be wrong on purpose.
    Init { channel: u8, magic: u32, version: u32, uuid: [u8; 16], id: u8 },
    /// One RAM packet with `pages` (all of one block; normal pages first in
    /// the offset array, then the zero pages), followed by the normal pages'
    /// contents. `normal_pages` / `pages_alloc` override the counts written
    /// in the header (None: the true count / the page count of a packet).
    Ram {
        channel: u8,
        pages: Vec<Page>,
        sync: bool,
        normal_pages: Option<u32>,
        pages_alloc: Option<u32>,
        packet_num: u64,
        /// Compress the normal pages (`Compression::None`: raw pages).
        compression: Compression,
        /// Damage the compressed payload on purpose.
        corrupt: Option<Corruption>,
    },
    /// A sync packet as 9.0+ sends it: `SYNC`, all counts 0, no block name.
    Sync { channel: u8, packet_num: u64 },
    /// Recorded bytes of a whole channel (initial packet included), written
    /// by a task of their own while the script goes on, so a destination
    /// that reads the channels in any order gets them all (`crossmig fuzz`
    /// replays a recorded multifd stream this way).
    Raw { channel: u8, bytes: Vec<u8> },
}

impl MultifdStep {
    /// A well-formed initial packet for channel `k` (magic, version 1, zero
    /// uuid, id `k`).
    pub fn init(k: u8) -> MultifdStep {
        MultifdStep::Init {
            channel: k,
            magic: MULTIFD_MAGIC,
            version: MULTIFD_VERSION,
            uuid: [0; 16],
            id: k,
        }
    }

    /// The channel this element belongs to.
    pub fn channel(&self) -> u8 {
        match self {
            MultifdStep::Connect { channel }
            | MultifdStep::Init { channel, .. }
            | MultifdStep::Ram { channel, .. }
            | MultifdStep::Sync { channel, .. }
            | MultifdStep::Raw { channel, .. } => *channel,
        }
    }

    pub fn name(&self) -> String {
        match self {
            MultifdStep::Connect { channel } => format!("MultifdConnect({channel})"),
            MultifdStep::Init { channel, magic, version, id, .. } => {
                format!("MultifdInit({channel}: magic {magic:#x}, version {version}, id {id})")
            }
            MultifdStep::Ram { channel, pages, sync, .. } => format!(
                "MultifdRam({channel}: {} pages{})",
                pages.len(),
                if *sync { ", SYNC" } else { "" }
            ),
            MultifdStep::Sync { channel, .. } => format!("MultifdSync({channel})"),
            MultifdStep::Raw { channel, bytes } => {
                format!("MultifdRaw({channel}: {} bytes)", bytes.len())
            }
        }
    }

    /// Append the bytes of this element (nothing for `Connect`) and record
    /// the pages it carries in `model` (not those of a corrupted payload).
    pub fn encode(
        &self,
        e: &mut Encoder,
        fmt: &PacketFormat,
        model: &mut RamModel,
        comp: &mut Compressors,
    ) {
        match self {
            MultifdStep::Connect { .. } => {}
            MultifdStep::Init { magic, version, uuid, id, .. } => {
                let mut ie = Encoder::new();
                InitPacket { uuid: *uuid, id: *id }.encode(&mut ie);
                ie.buf[0..4].copy_from_slice(&magic.to_be_bytes());
                ie.buf[4..8].copy_from_slice(&version.to_be_bytes());
                e.bytes(&ie.buf);
            }
            MultifdStep::Ram {
                channel,
                pages,
                sync,
                normal_pages,
                pages_alloc,
                packet_num,
                compression,
                corrupt,
            } => {
                let (normal, zero): (Vec<&Page>, Vec<&Page>) =
                    pages.iter().partition(|p| p.content != Content::Zero);
                // The V7 layout has no zero pages: they travel as normal pages.
                let (normal, zero) = if fmt.layout == PacketLayout::V7 {
                    (pages.iter().collect::<Vec<_>>(), Vec::new())
                } else {
                    (normal, zero)
                };
                let raw: Vec<u8> = normal.iter().flat_map(|pg| pg.bytes()).collect();
                let payload = match (compression, corrupt) {
                    (Compression::None, _) => raw,
                    (c, None) => comp.compress(*channel, *c, &raw),
                    (c, Some(Corruption::Garbage)) => {
                        vec![0xff; comp.compress(*channel, *c, &raw).len().max(16)]
                    }
                    (c, Some(Corruption::Short)) => {
                        let half = (normal.len() / 2) * PAGE_SIZE as usize;
                        comp.compress(*channel, *c, &raw[..half])
                    }
                };
                let p = RamPacket {
                    flags: if *sync { FLAG_SYNC } else { 0 } | compression.flag(),
                    pages_alloc: pages_alloc.unwrap_or(fmt.page_count()),
                    normal_pages: normal_pages.unwrap_or(normal.len() as u32),
                    zero_pages: zero.len() as u32,
                    next_packet_size: payload.len() as u32,
                    packet_num: *packet_num,
                    ramblock: pages.first().map(|p| p.block.clone()).unwrap_or_default(),
                    offsets: normal.iter().chain(&zero).map(|p| p.index * PAGE_SIZE).collect(),
                };
                p.encode(e, fmt);
                e.bytes(&payload);
                if corrupt.is_none() {
                    for pg in pages {
                        model.set(&pg.block, pg.index, pg.content);
                    }
                }
            }
            MultifdStep::Sync { packet_num, .. } => {
                let p =
                    RamPacket { flags: FLAG_SYNC, packet_num: *packet_num, ..Default::default() };
                p.encode(e, fmt);
            }
            MultifdStep::Raw { bytes, .. } => {
                e.bytes(bytes);
            }
        }
    }
}

/// The packet layout a QEMU destination of version `major.minor` writes
/// and expects (docs/multifd.md section 3): V7 before 9.0, else V9.
pub fn layout_for_version(major: u32, minor: u32) -> PacketLayout {
    if (major, minor) < (9, 0) {
        PacketLayout::V7
    } else {
        PacketLayout::V9
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::Cursor;

    #[test]
    fn packets_decode_back() {
        let fmt = PacketFormat::x86(PacketLayout::V9);
        let mut m = RamModel::default();
        let mut e = Encoder::new();
        MultifdStep::init(1).encode(&mut e, &fmt, &mut m, &mut Compressors::default());
        let step = MultifdStep::Ram {
            channel: 1,
            pages: vec![Page::pattern("mem0", 3, 1), Page::zero("mem0", 5)],
            sync: false,
            normal_pages: None,
            pages_alloc: None,
            packet_num: 7,
            compression: Compression::None,
            corrupt: None,
        };
        step.encode(&mut e, &fmt, &mut m, &mut Compressors::default());
        let b = e.finish();
        let mut c = Cursor::new(&b, 0);
        assert_eq!(InitPacket::decode(&mut c).unwrap().id, 1);
        let p = RamPacket::decode(&mut c, &fmt).unwrap();
        assert_eq!((p.normal_pages, p.zero_pages, p.packet_num), (1, 1, 7));
        assert_eq!(p.offsets, vec![3 * PAGE_SIZE, 5 * PAGE_SIZE]);
        assert_eq!(b.len(), 64 + fmt.packet_len() + PAGE_SIZE as usize);
        assert!(m.state("mem0", 5).is_some());
    }

    #[test]
    fn bad_magic_is_written() {
        let fmt = PacketFormat::x86(PacketLayout::V7);
        let mut e = Encoder::new();
        let s = MultifdStep::Init { channel: 0, magic: 1, version: 1, uuid: [0; 16], id: 0 };
        s.encode(&mut e, &fmt, &mut RamModel::default(), &mut Compressors::default());
        assert_eq!(&e.buf[..4], &[0, 0, 0, 1]);
        assert_eq!(layout_for_version(7, 2), PacketLayout::V7);
        assert_eq!(layout_for_version(10, 0), PacketLayout::V9);
    }

    #[test]
    fn compressed_packets_inflate_per_channel() {
        let fmt = PacketFormat::x86(PacketLayout::V9);
        let mut m = RamModel::default();
        let mut comp = Compressors::default();
        let ram = |i: u64, corrupt| MultifdStep::Ram {
            channel: 0,
            pages: vec![Page::pattern("mem0", i, 1), Page::pattern("mem0", i + 1, 1)],
            sync: false,
            normal_pages: None,
            pages_alloc: None,
            packet_num: i,
            compression: Compression::Zlib,
            corrupt,
        };
        let mut inflate = flate2::Decompress::new(true);
        for (i, corrupt) in [(0, None), (2, None), (4, Some(Corruption::Short))] {
            let mut e = Encoder::new();
            ram(i, corrupt).encode(&mut e, &fmt, &mut m, &mut comp);
            let b = e.finish();
            let mut c = Cursor::new(&b, 0);
            let p = RamPacket::decode(&mut c, &fmt).unwrap();
            assert_eq!(p.flags, Compression::Zlib.flag());
            let payload = &b[fmt.packet_len()..];
            assert_eq!(payload.len(), p.next_packet_size as usize);
            let mut out = vec![0u8; 3 * PAGE_SIZE as usize];
            inflate.decompress(payload, &mut out, flate2::FlushDecompress::Sync).unwrap();
            let want = if corrupt.is_some() { 1 } else { 2 };
            assert_eq!(
                inflate.total_out() as usize,
                (i as usize / 2 * 2 + want) * PAGE_SIZE as usize
            );
            assert_eq!(&out[..PAGE_SIZE as usize], &Page::pattern("mem0", i, 1).bytes()[..]);
        }
        // The corrupted packet's pages are not in the model.
        assert!(m.state("mem0", 4).is_none());
    }
}
