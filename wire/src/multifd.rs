//! Multifd channels: the 64-byte initial packet and the RAM packet header in
//! both layouts (QEMU 7.2–8.2 and 9.0+), with typed validation errors.
//!
//! ```text
//! multifd connection (source → destination; the destination never writes)
//!   initial packet, 64 bytes:
//!     be32 magic 0x11223344, be32 version 1, uuid[16], u8 id, 39 zero bytes
//!   then RAM packets until the source closes the connection:
//!     0   be32 magic           4   be32 version        8   be32 flags
//!     12  be32 pages_alloc     16  be32 normal_pages   20  be32 next_packet_size
//!     24  be64 packet_num      32  be32 zero_pages (V9; unused in V7)
//!     36  28 reserved bytes    64  ramblock[256], NUL padded
//!     320 be64 offset[page_count]   page_count = 512 KiB / page size
//!     payload: only when normal_pages > 0 (see RamPacket::payload_len)
//! ```
//!
//! QEMU: `migration/multifd.c` (`multifd_send_initial_packet()`,
//! `multifd_recv_initial_packet()`, `multifd_recv_unfill_packet()`),
//! `migration/multifd-nocomp.c: multifd_ram_unfill_packet()` (9.0+),
//! `migration/multifd.h`. Details and per-version behaviour: the
//! repository's `docs/multifd.md`. Payloads (pages, compressed data) are
//! not decoded here: the caller reads [`RamPacket::payload_len`] bytes.

use thiserror::Error;

use crate::consts::MULTIFD_MAGIC;
use crate::cursor::{Cursor, DecodeError, Encoder};

/// The only multifd protocol version (`MULTIFD_VERSION`).
pub const MULTIFD_VERSION: u32 = 1;
/// Length of the initial packet (`MultiFDInit_t`).
pub const INIT_PACKET_LEN: usize = 64;
/// Bytes of guest RAM one packet can describe (`MULTIFD_PACKET_SIZE`).
pub const MULTIFD_PACKET_SIZE: u32 = 512 * 1024;
/// Length of the RAM packet header before the offset array.
pub const RAM_HEADER_LEN: usize = 320;
/// Size of the NUL-padded RAMBlock name field.
pub const RAMBLOCK_NAME_LEN: usize = 256;
/// Largest compressed payload accepted (QEMU's receive buffers are twice
/// [`MULTIFD_PACKET_SIZE`]).
pub const MAX_COMPRESSED_PAYLOAD: u32 = 2 * MULTIFD_PACKET_SIZE;
/// Flag: this packet ends the channel's part of a sync point.
pub const FLAG_SYNC: u32 = 1;
/// Flag: a device-state packet (10.0+, VFIO only; a different layout).
pub const FLAG_DEVICE_STATE: u32 = 0x40;

/// Which RAM packet layout a channel uses, named by the QEMU version that
/// introduced it. Not visible on the wire: the destination is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketLayout {
    /// QEMU 7.2 to 8.2: bytes 32..64 unused (zero), compression bits `0x0e`.
    V7,
    /// QEMU 9.0 and later: be32 `zero_pages` at byte 32, compression bits
    /// `0x3e`.
    V9,
}

impl PacketLayout {
    /// The flag bits that name the compression method.
    pub fn compression_mask(self) -> u32 {
        match self {
            PacketLayout::V7 => 0x7 << 1,
            PacketLayout::V9 => 0x1f << 1,
        }
    }
}

/// The packet format of one migration: layout and target page size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketFormat {
    pub layout: PacketLayout,
    pub page_size: u32,
}

impl PacketFormat {
    /// x86 (4 KiB target pages) with the given layout.
    pub fn x86(layout: PacketLayout) -> PacketFormat {
        PacketFormat { layout, page_size: crate::units::TARGET_PAGE_SIZE as u32 }
    }
    /// Entries of the offset array (128 for 4 KiB pages).
    pub fn page_count(&self) -> u32 {
        MULTIFD_PACKET_SIZE / self.page_size
    }
    /// Bytes of every RAM packet header, offset array included (1344 for
    /// 4 KiB pages), whatever it carries.
    pub fn packet_len(&self) -> usize {
        RAM_HEADER_LEN + 8 * self.page_count() as usize
    }
}

/// Compression method (`multifd-compression`), from the packet flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zlib,
    Zstd,
    /// 9.1+, Intel IAA.
    Qpl,
    /// 9.1+, HiSilicon UADK.
    Uadk,
    /// 9.2+, Intel QAT.
    Qatzip,
}

impl Compression {
    /// The value of the compression bits in the packet flags.
    pub fn flag(self) -> u32 {
        match self {
            Compression::None => 0,
            Compression::Zlib => 1 << 1,
            Compression::Zstd => 2 << 1,
            Compression::Qpl => 4 << 1,
            Compression::Uadk => 8 << 1,
            Compression::Qatzip => 16 << 1,
        }
    }
    /// The method named by `flags` under `layout`, if it is a known one.
    pub fn from_flags(flags: u32, layout: PacketLayout) -> Option<Compression> {
        let bits = flags & layout.compression_mask();
        [
            Compression::None,
            Compression::Zlib,
            Compression::Zstd,
            Compression::Qpl,
            Compression::Uadk,
            Compression::Qatzip,
        ]
        .into_iter()
        // 7.2–8.2 know only none, zlib and zstd.
        .take(if layout == PacketLayout::V7 { 3 } else { 6 })
        .find(|c| c.flag() == bits)
    }
    /// The `multifd-compression` parameter value.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zlib => "zlib",
            Compression::Zstd => "zstd",
            Compression::Qpl => "qpl",
            Compression::Uadk => "uadk",
            Compression::Qatzip => "qatzip",
        }
    }
    /// The method a `multifd-compression` value names.
    pub fn from_name(name: &str) -> Option<Compression> {
        [
            Compression::None,
            Compression::Zlib,
            Compression::Zstd,
            Compression::Qpl,
            Compression::Uadk,
            Compression::Qatzip,
        ]
        .into_iter()
        .find(|c| c.name() == name)
    }
}

/// What is wrong with a multifd packet. Every variant but `Incomplete`
/// names the absolute stream offset of the offending field.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum MultifdError {
    #[error("multifd packet at byte offset {at} needs {needed} more byte(s)")]
    Incomplete { at: u64, needed: usize },
    #[error("multifd: bad magic {found:#010x}, expected 0x11223344 (at byte offset {at})")]
    BadMagic { at: u64, found: u32 },
    #[error("multifd: unsupported version {found}, expected 1 (at byte offset {at})")]
    UnsupportedVersion { at: u64, found: u32 },
    #[error("multifd: channel id {id} but only {channels} channel(s) (at byte offset {at})")]
    IdOutOfRange { at: u64, id: u8, channels: u32 },
    #[error("multifd: source uuid {found} differs from ours {expected} (at byte offset {at})")]
    UuidMismatch { at: u64, found: String, expected: String },
    #[error(
        "multifd: device-state packet (flags {flags:#x}) is not supported (at byte offset {at})"
    )]
    DeviceState { at: u64, flags: u32 },
    #[error("multifd: pages_alloc {pages_alloc} exceeds {page_count} pages per packet (at byte offset {at})")]
    AllocTooLarge { at: u64, pages_alloc: u32, page_count: u32 },
    #[error("multifd: {normal} normal + {zero} zero pages exceed pages_alloc {alloc} (at byte offset {at})")]
    PagesBeyondAlloc { at: u64, normal: u32, zero: u32, alloc: u32 },
    #[error("multifd: zero_pages {zero} in a packet of the 7.2 layout (at byte offset {at})")]
    ZeroPagesInV7 { at: u64, zero: u32 },
    #[error("multifd: {offsets} page offsets for {normal} normal + {zero} zero pages (at byte offset {at})")]
    OffsetCount { at: u64, offsets: usize, normal: u32, zero: u32 },
    #[error(
        "multifd: RAMBlock name has no NUL within {RAMBLOCK_NAME_LEN} bytes (at byte offset {at})"
    )]
    BlockNameUnterminated { at: u64 },
    #[error("multifd: RAMBlock name is {len} bytes, at most 255 fit (at byte offset {at})")]
    BlockNameTooLong { at: u64, len: usize },
    #[error("multifd: RAMBlock name is not UTF-8 (at byte offset {at})")]
    BlockNameNotUtf8 { at: u64 },
    #[error("multifd: unknown compression bits in flags {flags:#x} (at byte offset {at})")]
    UnknownCompression { at: u64, flags: u32 },
    #[error("multifd: packet compressed with {found:?}, channel configured for {expected:?} (at byte offset {at})")]
    CompressionMismatch { at: u64, found: Compression, expected: Compression },
    #[error("multifd: next_packet_size {size} exceeds {max} (at byte offset {at})")]
    PayloadTooLarge { at: u64, size: u32, max: u32 },
    #[error("multifd: page offset {offset:#x} (entry {index}) is not a page of a {used_length:#x}-byte block (at byte offset {at})")]
    OffsetOutsideBlock { at: u64, index: usize, offset: u64, used_length: u64 },
}

impl MultifdError {
    /// The absolute stream offset the error names.
    pub fn at(&self) -> u64 {
        use MultifdError::*;
        match self {
            Incomplete { at, .. }
            | BadMagic { at, .. }
            | UnsupportedVersion { at, .. }
            | IdOutOfRange { at, .. }
            | UuidMismatch { at, .. }
            | DeviceState { at, .. }
            | AllocTooLarge { at, .. }
            | PagesBeyondAlloc { at, .. }
            | ZeroPagesInV7 { at, .. }
            | OffsetCount { at, .. }
            | BlockNameUnterminated { at }
            | BlockNameTooLong { at, .. }
            | BlockNameNotUtf8 { at }
            | UnknownCompression { at, .. }
            | CompressionMismatch { at, .. }
            | PayloadTooLarge { at, .. }
            | OffsetOutsideBlock { at, .. } => *at,
        }
    }
}

impl From<MultifdError> for DecodeError {
    fn from(e: MultifdError) -> DecodeError {
        match e {
            MultifdError::Incomplete { at, needed } => DecodeError::Incomplete { at, needed },
            other => {
                let at = other.at();
                let what = other.to_string();
                let what = what.strip_suffix(&format!(" (at byte offset {at})")).unwrap_or(&what);
                DecodeError::invalid(at, what)
            }
        }
    }
}

type Result<T> = std::result::Result<T, MultifdError>;

/// Take `n` bytes for a record starting at the cursor, or report how many
/// are missing (the cursor does not move).
fn take<'a>(c: &mut Cursor<'a>, n: usize) -> Result<(u64, &'a [u8])> {
    let at = c.offset();
    if c.remaining() < n {
        return Err(MultifdError::Incomplete { at, needed: n - c.remaining() });
    }
    let b = c.bytes(n, at).map_err(|_| MultifdError::Incomplete { at, needed: n })?;
    Ok((at, b))
}

fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], i: usize) -> u64 {
    u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"))
}

fn check_magic_version(b: &[u8], at: u64) -> Result<()> {
    match (be32(b, 0), be32(b, 4)) {
        (MULTIFD_MAGIC, MULTIFD_VERSION) => Ok(()),
        (MULTIFD_MAGIC, found) => Err(MultifdError::UnsupportedVersion { at: at + 4, found }),
        (found, _) => Err(MultifdError::BadMagic { at, found }),
    }
}

fn uuid_text(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// The first 64 bytes of a multifd connection (`MultiFDInit_t`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitPacket {
    /// The source's `qemu_uuid` (all zero without `-uuid`).
    pub uuid: [u8; 16],
    /// Channel number, 0..N-1.
    pub id: u8,
}

impl InitPacket {
    /// Magic, version 1, uuid, id, zero padding.
    pub fn encode(&self, e: &mut Encoder) {
        e.be32(MULTIFD_MAGIC).be32(MULTIFD_VERSION).bytes(&self.uuid).u8(self.id);
        e.bytes(&[0; INIT_PACKET_LEN - 25]);
    }

    /// Decode and check magic and version. The padding is not checked
    /// (QEMU ignores it).
    pub fn decode(c: &mut Cursor) -> Result<InitPacket> {
        let start = c.pos();
        let (at, b) = take(c, INIT_PACKET_LEN)?;
        check_magic_version(b, at).inspect_err(|_| c.set_pos(start))?;
        Ok(InitPacket { uuid: b[8..24].try_into().expect("16 bytes"), id: b[24] })
    }

    /// What a destination with `channels` channels and its own `uuid`
    /// requires of a packet decoded at `at`: the same uuid and `id < channels`.
    pub fn check(&self, at: u64, uuid: &[u8; 16], channels: u32) -> Result<()> {
        if self.uuid != *uuid {
            let (found, expected) = (uuid_text(&self.uuid), uuid_text(uuid));
            return Err(MultifdError::UuidMismatch { at: at + 8, found, expected });
        }
        if u32::from(self.id) >= channels {
            return Err(MultifdError::IdOutOfRange { at: at + 24, id: self.id, channels });
        }
        Ok(())
    }
}

/// One RAM packet header (`MultiFDPacket_t`) with its used offsets.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RamPacket {
    pub flags: u32,
    /// The sender's capacity; 10.0+ writes 0 in SYNC packets, 7.2 its
    /// allocation (128).
    pub pages_alloc: u32,
    pub normal_pages: u32,
    /// Always 0 in the V7 layout.
    pub zero_pages: u32,
    /// Payload bytes for compressed packets. 7.2 leaves a stale value in
    /// packets without pages: see [`RamPacket::payload_len`].
    pub next_packet_size: u32,
    /// Sequence number over all channels (diagnostic only).
    pub packet_num: u64,
    /// RAMBlock idstr (empty in 10.0+ SYNC packets; stale in 7.2 ones).
    pub ramblock: String,
    /// The first `normal_pages + zero_pages` entries of the offset array:
    /// byte offsets in `ramblock` of the normal pages, then the zero pages.
    pub offsets: Vec<u64>,
}

impl RamPacket {
    pub fn is_sync(&self) -> bool {
        self.flags & FLAG_SYNC != 0
    }
    /// Offsets of the pages whose contents follow in the payload.
    pub fn normal_offsets(&self) -> &[u64] {
        &self.offsets[..self.normal_pages as usize]
    }
    /// Offsets of the pages to be zeroed (9.0+).
    pub fn zero_offsets(&self) -> &[u64] {
        &self.offsets[self.normal_pages as usize..]
    }

    /// Check what [`RamPacket::encode`] cannot express: name length, offset
    /// count, zero pages in the V7 layout, counts against `pages_alloc`.
    /// `at` is where the packet will start.
    pub fn validate(&self, fmt: &PacketFormat, at: u64) -> Result<()> {
        if self.ramblock.len() >= RAMBLOCK_NAME_LEN {
            return Err(MultifdError::BlockNameTooLong { at: at + 64, len: self.ramblock.len() });
        }
        if fmt.layout == PacketLayout::V7 && self.zero_pages != 0 {
            return Err(MultifdError::ZeroPagesInV7 { at: at + 32, zero: self.zero_pages });
        }
        check_counts(self, fmt, at)?;
        let (normal, zero) = (self.normal_pages, self.zero_pages);
        if self.offsets.len() as u64 != u64::from(normal) + u64::from(zero) {
            return Err(MultifdError::OffsetCount {
                at,
                offsets: self.offsets.len(),
                normal,
                zero,
            });
        }
        Ok(())
    }

    /// Append the header and the whole offset array (unused entries zero).
    /// Infallible: a name longer than 255 bytes is cut at 256 bytes with no
    /// NUL, extra offsets are dropped, so it also builds malformed packets.
    /// The V7 layout writes no `zero_pages`.
    pub fn encode(&self, e: &mut Encoder, fmt: &PacketFormat) {
        e.be32(MULTIFD_MAGIC).be32(MULTIFD_VERSION).be32(self.flags).be32(self.pages_alloc);
        e.be32(self.normal_pages).be32(self.next_packet_size).be64(self.packet_num);
        let zero = if fmt.layout == PacketLayout::V9 { self.zero_pages } else { 0 };
        e.be32(zero).bytes(&[0; 28]);
        let mut name = [0u8; RAMBLOCK_NAME_LEN];
        let n = self.ramblock.len().min(RAMBLOCK_NAME_LEN);
        name[..n].copy_from_slice(&self.ramblock.as_bytes()[..n]);
        e.bytes(&name);
        let count = fmt.page_count() as usize;
        for i in 0..count {
            e.be64(self.offsets.get(i).copied().unwrap_or(0));
        }
    }

    /// Decode one packet header of `fmt` and check magic, version, counts
    /// and the block name. On any error the cursor does not move.
    pub fn decode(c: &mut Cursor, fmt: &PacketFormat) -> Result<RamPacket> {
        let start = c.pos();
        let r = Self::decode_inner(c, fmt);
        if r.is_err() {
            c.set_pos(start);
        }
        r
    }

    fn decode_inner(c: &mut Cursor, fmt: &PacketFormat) -> Result<RamPacket> {
        // Magic, version and flags first: a device-state packet is shorter.
        let at = c.offset();
        let head = c.rest().get(..12).ok_or_else(|| MultifdError::Incomplete {
            at,
            needed: fmt.packet_len() - c.remaining(),
        })?;
        check_magic_version(head, at)?;
        let flags = be32(head, 8);
        if flags & FLAG_DEVICE_STATE != 0 {
            return Err(MultifdError::DeviceState { at: at + 8, flags });
        }
        let (at, b) = take(c, fmt.packet_len())?;
        let mut p = RamPacket {
            flags,
            pages_alloc: be32(b, 12),
            normal_pages: be32(b, 16),
            next_packet_size: be32(b, 20),
            packet_num: be64(b, 24),
            zero_pages: if fmt.layout == PacketLayout::V9 { be32(b, 32) } else { 0 },
            ..RamPacket::default()
        };
        check_counts(&p, fmt, at)?;
        let name = &b[64..RAM_HEADER_LEN];
        let len = name
            .iter()
            .position(|&x| x == 0)
            .ok_or(MultifdError::BlockNameUnterminated { at: at + 64 })?;
        p.ramblock = std::str::from_utf8(&name[..len])
            .map_err(|_| MultifdError::BlockNameNotUtf8 { at: at + 64 })?
            .to_string();
        let used = (p.normal_pages + p.zero_pages) as usize;
        p.offsets = (0..used).map(|i| be64(b, RAM_HEADER_LEN + 8 * i)).collect();
        Ok(p)
    }

    /// The compression method the flags name (meaningful only in packets
    /// with normal pages: 9.0+ SYNC packets carry no compression bits).
    pub fn compression(&self, fmt: &PacketFormat, at: u64) -> Result<Compression> {
        Compression::from_flags(self.flags, fmt.layout)
            .ok_or(MultifdError::UnknownCompression { at: at + 8, flags: self.flags })
    }

    /// Bytes that follow this header on the channel. Nothing follows a
    /// packet without normal pages (7.2 leaves a stale `next_packet_size` in
    /// its SYNC packets). Otherwise: no compression → `normal_pages` pages;
    /// compressed → `next_packet_size`, after checking the method is
    /// `expected` (the channel's configuration) and the size is sane.
    pub fn payload_len(&self, fmt: &PacketFormat, expected: Compression, at: u64) -> Result<usize> {
        if self.normal_pages == 0 {
            return Ok(0);
        }
        let found = self.compression(fmt, at)?;
        if found != expected {
            return Err(MultifdError::CompressionMismatch { at: at + 8, found, expected });
        }
        match found {
            Compression::None => Ok(self.normal_pages as usize * fmt.page_size as usize),
            _ if self.next_packet_size > MAX_COMPRESSED_PAYLOAD => {
                Err(MultifdError::PayloadTooLarge {
                    at: at + 20,
                    size: self.next_packet_size,
                    max: MAX_COMPRESSED_PAYLOAD,
                })
            }
            _ => Ok(self.next_packet_size as usize),
        }
    }

    /// Every used offset must be a page inside a block of `used_length`
    /// bytes (QEMU checks `offset <= used_length - page size`; this also
    /// requires page alignment).
    pub fn check_offsets(&self, fmt: &PacketFormat, used_length: u64, at: u64) -> Result<()> {
        let ps = u64::from(fmt.page_size);
        for (index, &offset) in self.offsets.iter().enumerate() {
            if offset % ps != 0 || offset.checked_add(ps).is_none_or(|end| end > used_length) {
                let at = at + (RAM_HEADER_LEN + 8 * index) as u64;
                return Err(MultifdError::OffsetOutsideBlock { at, index, offset, used_length });
            }
        }
        Ok(())
    }
}

/// `pages_alloc <= page_count` and `normal + zero <= pages_alloc`
/// (`multifd_ram_unfill_packet()`).
fn check_counts(p: &RamPacket, fmt: &PacketFormat, at: u64) -> Result<()> {
    let page_count = fmt.page_count();
    if p.pages_alloc > page_count {
        let pages_alloc = p.pages_alloc;
        return Err(MultifdError::AllocTooLarge { at: at + 12, pages_alloc, page_count });
    }
    if u64::from(p.normal_pages) + u64::from(p.zero_pages) > u64::from(p.pages_alloc) {
        let (normal, zero, alloc) = (p.normal_pages, p.zero_pages, p.pages_alloc);
        return Err(MultifdError::PagesBeyondAlloc { at: at + 16, normal, zero, alloc });
    }
    Ok(())
}
