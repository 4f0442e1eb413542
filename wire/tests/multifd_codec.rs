//! Unit tests of `wire::multifd`: round trips of the initial packet and of
//! RAM packets in both layouts, and every validation error.

use wire::multifd::{
    Compression, InitPacket, MultifdError, PacketFormat, PacketLayout, RamPacket, FLAG_SYNC,
    INIT_PACKET_LEN, MAX_COMPRESSED_PAYLOAD,
};
use wire::{Cursor, DecodeError, Encoder};

type Result<T> = std::result::Result<T, MultifdError>;

const V7: PacketFormat = PacketFormat { layout: PacketLayout::V7, page_size: 4096 };
const V9: PacketFormat = PacketFormat { layout: PacketLayout::V9, page_size: 4096 };

fn data_packet() -> RamPacket {
    RamPacket {
        flags: 0,
        pages_alloc: 128,
        normal_pages: 2,
        zero_pages: 3,
        next_packet_size: 8192,
        packet_num: 7,
        ramblock: "mem0".into(),
        offsets: vec![0x1000, 0x3000, 0x0, 0x2000, 0x5000],
    }
}

fn bytes(p: &RamPacket, fmt: &PacketFormat) -> Vec<u8> {
    let mut e = Encoder::new();
    p.encode(&mut e, fmt);
    e.finish()
}

fn decode_at(b: &[u8], fmt: &PacketFormat) -> Result<RamPacket> {
    let mut c = Cursor::new(b, 1000);
    let r = RamPacket::decode(&mut c, fmt);
    if r.is_err() {
        assert_eq!(c.offset(), 1000, "cursor moved on error");
    }
    r
}

#[test]
fn init_round_trip_and_checks() {
    let p = InitPacket { uuid: [0x11; 16], id: 1 };
    let mut e = Encoder::new();
    p.encode(&mut e);
    let b = e.finish();
    assert_eq!(b.len(), INIT_PACKET_LEN);
    assert_eq!(&b[..8], &[0x11, 0x22, 0x33, 0x44, 0, 0, 0, 1]);
    let mut c = Cursor::new(&b, 0);
    assert_eq!(InitPacket::decode(&mut c).unwrap(), p);
    assert_eq!(c.remaining(), 0);
    assert_eq!(p.check(0, &[0x11; 16], 2), Ok(()));
    let e = p.check(0, &[0x11; 16], 1).unwrap_err();
    assert_eq!(e, MultifdError::IdOutOfRange { at: 24, id: 1, channels: 1 });
    let e = p.check(100, &[0; 16], 2).unwrap_err();
    assert!(matches!(e, MultifdError::UuidMismatch { at: 108, .. }), "{e}");
    assert!(e.to_string().contains("00000000-0000-0000-0000-000000000000"), "{e}");

    let mut c = Cursor::new(&b[..63], 5);
    let e = InitPacket::decode(&mut c).unwrap_err();
    assert_eq!(e, MultifdError::Incomplete { at: 5, needed: 1 });
    assert_eq!(c.pos(), 0);
    let mut bad = b.clone();
    bad[0] = b'Q';
    let e = InitPacket::decode(&mut Cursor::new(&bad, 0)).unwrap_err();
    assert_eq!(e, MultifdError::BadMagic { at: 0, found: 0x5122_3344 });
    let mut bad = b.clone();
    bad[7] = 2;
    let mut c = Cursor::new(&bad, 0);
    let e = InitPacket::decode(&mut c).unwrap_err();
    assert_eq!((e, c.pos()), (MultifdError::UnsupportedVersion { at: 4, found: 2 }, 0));
}

#[test]
fn packet_round_trips_both_layouts() {
    let p = data_packet();
    let b = bytes(&p, &V9);
    assert_eq!(b.len(), 1344);
    assert_eq!(V9.packet_len(), 1344);
    p.validate(&V9, 0).unwrap();
    let mut c = Cursor::new(&b, 0);
    let d = RamPacket::decode(&mut c, &V9).unwrap();
    assert_eq!((&d, c.remaining()), (&p, 0));
    assert_eq!(d.normal_offsets(), &[0x1000, 0x3000]);
    assert_eq!(d.zero_offsets(), &[0x0, 0x2000, 0x5000]);
    assert_eq!(d.payload_len(&V9, Compression::None, 0), Ok(8192));

    // V7: no zero pages; the bytes at 32 are ignored by its decoder.
    let p7 = RamPacket { zero_pages: 0, offsets: vec![0x1000, 0x3000], ..p.clone() };
    let b7 = bytes(&p7, &V7);
    assert_eq!(decode_at(&b7, &V7).unwrap(), p7);
    assert_eq!(p.validate(&V7, 0), Err(MultifdError::ZeroPagesInV7 { at: 32, zero: 3 }));
    let mut nonzero = b7.clone();
    nonzero[35] = 9;
    assert_eq!(decode_at(&nonzero, &V7).unwrap(), p7);
    assert_eq!(decode_at(&nonzero, &V9).unwrap().zero_pages, 9);

    // A 9.0+ SYNC packet, and a 7.2 one with stale fields and no payload.
    let sync = RamPacket { flags: FLAG_SYNC, packet_num: 9, ..RamPacket::default() };
    let d = decode_at(&bytes(&sync, &V9), &V9).unwrap();
    assert!(d.is_sync());
    assert_eq!(d.payload_len(&V9, Compression::Zstd, 0), Ok(0));
    let stale = RamPacket {
        flags: FLAG_SYNC,
        pages_alloc: 128,
        next_packet_size: 12288,
        ramblock: "mem0".into(),
        ..RamPacket::default()
    };
    let d = decode_at(&bytes(&stale, &V7), &V7).unwrap();
    assert_eq!(d.payload_len(&V7, Compression::None, 0), Ok(0));

    // 64 KiB pages: 8 offsets.
    let big = PacketFormat { layout: PacketLayout::V9, page_size: 65536 };
    assert_eq!((big.page_count(), big.packet_len()), (8, 384));
}

#[test]
fn compression_flags_and_payloads() {
    for (c, f) in [(Compression::Zlib, 2), (Compression::Zstd, 4), (Compression::Qatzip, 32)] {
        assert_eq!(c.flag(), f);
        assert_eq!(Compression::from_flags(f | FLAG_SYNC, PacketLayout::V9), Some(c));
    }
    assert_eq!(Compression::from_flags(0x20, PacketLayout::V7), Some(Compression::None));
    assert_eq!(Compression::from_flags(0x06, PacketLayout::V9), None);
    assert_eq!(Compression::from_flags(0x08, PacketLayout::V7), None);
    assert_eq!(Compression::from_flags(0x08, PacketLayout::V9), Some(Compression::Qpl));
    let p = RamPacket { flags: 2, next_packet_size: 777, ..data_packet() };
    assert_eq!(p.payload_len(&V9, Compression::Zlib, 0), Ok(777));
    let e = p.payload_len(&V9, Compression::None, 50).unwrap_err();
    let want = MultifdError::CompressionMismatch {
        at: 58,
        found: Compression::Zlib,
        expected: Compression::None,
    };
    assert_eq!(e, want);
    let p = RamPacket { flags: 6, ..data_packet() };
    let e = p.payload_len(&V9, Compression::Zlib, 0).unwrap_err();
    assert_eq!(e, MultifdError::UnknownCompression { at: 8, flags: 6 });
    let p = RamPacket { flags: 4, next_packet_size: MAX_COMPRESSED_PAYLOAD + 1, ..data_packet() };
    let e = p.payload_len(&V9, Compression::Zstd, 0).unwrap_err();
    assert!(matches!(e, MultifdError::PayloadTooLarge { at: 20, .. }), "{e}");
}

#[test]
fn header_errors() {
    let good = bytes(&data_packet(), &V9);
    let patch = |at: usize, v: &[u8]| {
        let mut b = good.clone();
        b[at..at + v.len()].copy_from_slice(v);
        decode_at(&b, &V9).unwrap_err()
    };
    assert_eq!(patch(0, &[0, 0, 0, 0]), MultifdError::BadMagic { at: 1000, found: 0 });
    assert_eq!(patch(4, &[0, 0, 0, 3]), MultifdError::UnsupportedVersion { at: 1004, found: 3 });
    assert_eq!(patch(8, &[0, 0, 0, 0x40]), MultifdError::DeviceState { at: 1008, flags: 0x40 });
    let e = patch(12, &[0, 0, 0, 129]);
    assert_eq!(e, MultifdError::AllocTooLarge { at: 1012, pages_alloc: 129, page_count: 128 });
    let e = patch(16, &[0, 0, 0, 129]);
    let want = MultifdError::PagesBeyondAlloc { at: 1016, normal: 129, zero: 3, alloc: 128 };
    assert_eq!(e, want);
    let e = patch(32, &[0, 0, 0, 127]);
    let want = MultifdError::PagesBeyondAlloc { at: 1016, normal: 2, zero: 127, alloc: 128 };
    assert_eq!(e, want);
    let e = patch(32, &[0xff, 0xff, 0xff, 0xff]);
    assert!(matches!(e, MultifdError::PagesBeyondAlloc { .. }), "{e}");
    assert_eq!(patch(64, &[b'x'; 256]), MultifdError::BlockNameUnterminated { at: 1064 });
    assert_eq!(patch(64, &[0xff, 0]), MultifdError::BlockNameNotUtf8 { at: 1064 });
    for cut in [0, 5, 12, 1343] {
        let e = decode_at(&good[..cut], &V9).unwrap_err();
        assert_eq!(e, MultifdError::Incomplete { at: 1000, needed: 1344 - cut }, "cut {cut}");
    }
    // Errors convert to the crate's DecodeError with the same offset.
    let d: DecodeError = patch(0, &[0, 0, 0, 0]).into();
    assert_eq!(
        d.to_string(),
        "multifd: bad magic 0x00000000, expected 0x11223344 (at byte offset 1000)"
    );
    let d: DecodeError = MultifdError::Incomplete { at: 3, needed: 4 }.into();
    assert!(d.is_incomplete());
}

#[test]
fn validate_and_offsets() {
    let long = RamPacket { ramblock: "b".repeat(256), ..data_packet() };
    assert_eq!(long.validate(&V9, 10), Err(MultifdError::BlockNameTooLong { at: 74, len: 256 }));
    // The encoder still writes it, without NUL: the decoder rejects it.
    let e = decode_at(&bytes(&long, &V9), &V9).unwrap_err();
    assert_eq!(e, MultifdError::BlockNameUnterminated { at: 1064 });
    let short = RamPacket { offsets: vec![0], ..data_packet() };
    let e = short.validate(&V9, 0).unwrap_err();
    assert_eq!(e, MultifdError::OffsetCount { at: 0, offsets: 1, normal: 2, zero: 3 });
    let over = RamPacket { pages_alloc: 4, ..data_packet() };
    assert!(matches!(over.validate(&V9, 0), Err(MultifdError::PagesBeyondAlloc { .. })));

    let p = data_packet();
    assert_eq!(p.check_offsets(&V9, 0x6000, 0), Ok(()));
    let e = p.check_offsets(&V9, 0x5000, 100).unwrap_err();
    let want = MultifdError::OffsetOutsideBlock {
        at: 100 + 320 + 32,
        index: 4,
        offset: 0x5000,
        used_length: 0x5000,
    };
    assert_eq!(e, want);
    let odd = RamPacket { offsets: vec![0x1000, 0x3001, 0, 0, 0], ..data_packet() };
    assert!(matches!(
        odd.check_offsets(&V9, 1 << 20, 0),
        Err(MultifdError::OffsetOutsideBlock { index: 1, .. })
    ));
    let huge = RamPacket { offsets: vec![!0xfff, 0, 0, 0, 0], ..data_packet() };
    assert!(huge.check_offsets(&V9, u64::MAX, 0).is_err());
}
