//! Decodes multifd migrations recorded from real QEMU 7.2, 10.0 and 11.1
//! (`tests/streams/README.md`): every multifd channel completely with
//! `wire::multifd`, the main channel with the walker of `recorded.rs`, and
//! rebuilds guest RAM from both, checked against the recorder's sidecar.

#[path = "recorded/walk.rs"]
mod walk;

use std::collections::BTreeSet;

use serde_json::Value;
use walk::{walk, Item};
use wire::multifd::{Compression, InitPacket, PacketFormat, PacketLayout, RamPacket};
use wire::stream::SectionKind;
use wire::{Cursor, TARGET_PAGE_SIZE};

const TPS: usize = TARGET_PAGE_SIZE as usize;
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/streams/");

/// CRC-32 (IEEE, as Python's `zlib.crc32`), which the recorder stores.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { 0xedb8_8320 ^ (crc >> 1) } else { crc >> 1 };
        }
    }
    !crc
}

/// One multifd channel, decoded to its end.
struct Channel {
    id: u8,
    packets: Vec<(u64, RamPacket)>,
    /// Payload of each packet (empty without normal pages).
    payloads: Vec<Vec<u8>>,
}

fn decode_channel(name: &str, buf: &[u8], fmt: &PacketFormat, comp: Compression) -> Channel {
    let mut c = Cursor::new(buf, 0);
    let init = InitPacket::decode(&mut c).unwrap_or_else(|e| panic!("{name}: {e}"));
    init.check(0, &[0; 16], 2).unwrap_or_else(|e| panic!("{name}: {e}"));
    let (mut packets, mut payloads) = (Vec::new(), Vec::new());
    while c.remaining() > 0 {
        let at = c.offset();
        let p = RamPacket::decode(&mut c, fmt).unwrap_or_else(|e| panic!("{name}: {e}"));
        let len = p.payload_len(fmt, comp, at).unwrap_or_else(|e| panic!("{name}: {e}"));
        let data = c.bytes(len, at).unwrap_or_else(|e| panic!("{name}: payload: {e}"));
        packets.push((at, p));
        payloads.push(data.to_vec());
    }
    Channel { id: init.id, packets, payloads }
}

/// What each recording is expected to show (see `docs/multifd.md`).
struct Expect {
    layout: PacketLayout,
    comp: Compression,
    /// MULTIFD_FLUSH records on the main channel (per-round sync) rather
    /// than a sync at every RAM section's EOS.
    per_round_sync: bool,
    /// Zero pages travel in multifd packets (`zero-page-detection=multifd`).
    multifd_zero: bool,
}

fn check(base: &str, x: Expect) {
    let facts: Value =
        serde_json::from_slice(&std::fs::read(format!("{DIR}{base}.json")).unwrap()).unwrap();
    let fmt = PacketFormat::x86(x.layout);
    let conns = facts["channels"].as_array().unwrap();
    assert_eq!(conns.len(), 3, "{base}: main + 2 multifd connections");
    assert_eq!(facts["parameters"]["multifd-compression"].as_str(), Some(x.comp.name()));
    let zpd = facts["parameters"]["zero-page-detection"].as_str();
    assert_eq!(zpd == Some("multifd"), x.multifd_zero, "{base}: zero-page-detection {zpd:?}");

    let mut main = None;
    let mut channels = Vec::new();
    for conn in conns {
        let file = conn["file"].as_str().unwrap();
        let buf = std::fs::read(format!("{DIR}{file}")).unwrap();
        assert_eq!(buf.len() as u64, conn["bytes"].as_u64().unwrap(), "{file}");
        match conn["role"].as_str().unwrap() {
            "main" => main = Some(buf),
            _ => {
                let ch = decode_channel(file, &buf, &fmt, x.comp);
                assert_eq!(u64::from(ch.id), conn["multifd_id"].as_u64().unwrap(), "{file}");
                channels.push(ch);
            }
        }
    }
    let ids: BTreeSet<u8> = channels.iter().map(|c| c.id).collect();
    assert_eq!(ids, BTreeSet::from([0, 1]), "{base}: channel ids");

    // packet_num numbers all packets of all channels once.
    let nums: BTreeSet<u64> =
        channels.iter().flat_map(|c| c.packets.iter().map(|(_, p)| p.packet_num)).collect();
    let total: usize = channels.iter().map(|c| c.packets.len()).sum();
    assert_eq!(nums, (0..total as u64).collect(), "{base}: packet_num sequence");

    // Main channel: the existing walker (it records MULTIFD_FLUSH offsets).
    let main = main.expect("main channel");
    let (mut w, r) = walk(&main, true);
    r.unwrap_or_else(|e| panic!("{base} main: {e}"));
    let ram_sections: Vec<SectionKind> = w
        .items
        .iter()
        .filter_map(|(_, i)| if let Item::Ram { kind, .. } = i { Some(*kind) } else { None })
        .collect();
    let Some((_, Item::Header { machine })) = w.items.first() else { panic!("{base}: header") };
    assert_eq!(machine, facts["machine"].as_str().unwrap(), "{base}");

    // Sync points: each channel sends exactly one SYNC packet per sync point;
    // per-round mode marks them with MULTIFD_FLUSH, legacy mode with every
    // RAM section's EOS.
    let syncs: Vec<usize> =
        channels.iter().map(|c| c.packets.iter().filter(|(_, p)| p.is_sync()).count()).collect();
    let markers = if x.per_round_sync { w.flushes.len() } else { ram_sections.len() };
    if !x.per_round_sync {
        assert!(w.flushes.is_empty(), "{base}: MULTIFD_FLUSH in legacy sync mode");
    }
    assert!(markers >= 2, "{base}: {markers} sync markers");
    // Which RAM section each FLUSH sits in: per-round mode always flushes
    // once at the end of setup, i.e. inside the START section.
    let flush_in: Vec<&str> = w
        .flushes
        .iter()
        .map(|at| {
            let (_, item) = w.items.iter().find(|(r, _)| r.contains(at)).unwrap();
            let Item::Ram { kind, .. } = item else { panic!("{base}: FLUSH outside RAM") };
            kind.name()
        })
        .collect();
    if x.per_round_sync {
        assert_eq!(flush_in.first().copied(), Some(SectionKind::Start.name()), "{base}");
    }
    assert_eq!(syncs, vec![markers; 2], "{base}: SYNC packets per channel vs main markers");
    println!(
        "{base}: RAM sections {ram_sections:?}, FLUSH in {flush_in:?}, SYNC per channel {syncs:?}, packets {:?}",
        channels.iter().map(|c| c.packets.len()).collect::<Vec<_>>()
    );

    let mut multifd_normal = 0;
    let mut multifd_zero = 0;
    for ch in &channels {
        let mut first_data = true;
        for ((at, p), data) in ch.packets.iter().zip(&ch.payloads) {
            multifd_normal += p.normal_pages as usize;
            multifd_zero += p.zero_pages as usize;
            if p.normal_pages + p.zero_pages == 0 {
                assert!(p.is_sync(), "{base} ch{} @{at}: empty packet without SYNC", ch.id);
                continue;
            }
            if x.layout == PacketLayout::V9 {
                // 9.0+ sends its SYNC packets on their own.
                assert!(!p.is_sync(), "{base} ch{} @{at}: SYNC with pages", ch.id);
                assert_eq!(p.pages_alloc, fmt.page_count(), "{base} @{at}");
            }
            let blocks = &w.mem_size.as_ref().unwrap().1;
            let block = blocks.iter().find(|b| b.name == p.ramblock).unwrap();
            p.check_offsets(&fmt, block.used_length, *at).unwrap();
            if p.normal_pages == 0 {
                continue;
            }
            match x.comp {
                Compression::None => {
                    assert_eq!(p.next_packet_size as usize, data.len(), "{base} @{at}");
                }
                // One compression stream per channel for the whole
                // migration: only its first payload starts with a header.
                Compression::Zlib if first_data => assert_eq!(data[0] & 0x0f, 8, "{base}"),
                Compression::Zstd => {
                    let magic = data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
                    assert_eq!(magic, first_data, "{base} ch{} @{at}: zstd frame magic", ch.id);
                }
                _ => {}
            }
            first_data = false;
        }
    }
    if x.multifd_zero {
        assert!(multifd_zero > 16000, "{base}: {multifd_zero} multifd zero pages");
        assert_eq!(w.zero_pages, 0, "{base}: ZERO records on main");
    } else {
        assert_eq!(multifd_zero, 0, "{base}");
        assert!(w.zero_pages > 16000, "{base}: {} ZERO records on main", w.zero_pages);
    }
    let stats = &facts["source_ram_stats"];
    assert_eq!(multifd_normal as u64 + w.pages, stats["normal"].as_u64().unwrap(), "{base}");

    // Replay the multifd pages over what the main channel delivered.
    for ch in &channels {
        for ((_, p), data) in ch.packets.iter().zip(&ch.payloads) {
            if p.offsets.is_empty() {
                continue;
            }
            let cov = w.covered.get_mut(&p.ramblock).unwrap();
            for &off in &p.offsets {
                cov[off as usize / TPS] = true;
            }
            if x.comp != Compression::None {
                continue;
            }
            let mem = w.blocks.get_mut(&p.ramblock).unwrap();
            for (i, &off) in p.normal_offsets().iter().enumerate() {
                mem[off as usize..][..TPS].copy_from_slice(&data[i * TPS..][..TPS]);
            }
            for &off in p.zero_offsets() {
                mem[off as usize..][..TPS].fill(0);
            }
        }
    }
    for (block, cov) in &w.covered {
        let missing = cov.iter().filter(|c| !**c).count();
        assert_eq!(missing, 0, "{base}: {missing} pages of {block} never sent");
    }
    if x.comp != Compression::None {
        return;
    }
    let nonzero = facts["mem0_nonzero_pages_crc32"].as_object().unwrap();
    let mut seen = 0;
    for (i, page) in w.blocks["mem0"].chunks(TPS).enumerate() {
        let key = format!("{:#x}", i * TPS);
        match nonzero.get(&key) {
            Some(crc) => {
                assert_eq!(format!("{:08x}", crc32(page)), crc.as_str().unwrap(), "{base} {key}");
                seen += 1;
            }
            None => assert!(page.iter().all(|b| *b == 0), "{base}: page {key} not zero"),
        }
    }
    assert_eq!((seen, nonzero.len() >= 4), (nonzero.len(), true), "{base}");
    let bios = format!("{:08x}", crc32(&w.blocks["pc.bios"]));
    assert_eq!(bios, facts["pc_bios_crc32"].as_str().unwrap(), "{base}: pc.bios");
}

macro_rules! recorded {
    ($($test:ident: $base:literal $layout:ident $comp:ident per_round=$pr:literal multifd_zero=$mz:literal;)*) => {$(
        #[test]
        fn $test() {
            let x = Expect {
                layout: PacketLayout::$layout,
                comp: Compression::$comp,
                per_round_sync: $pr,
                multifd_zero: $mz,
            };
            check($base, x);
        }
    )*};
}

recorded! {
    qemu_7_2_multifd2: "qemu-7.2-multifd2" V7 None per_round=false multifd_zero=false;
    qemu_10_0_multifd2: "qemu-10.0-multifd2" V9 None per_round=true multifd_zero=true;
    qemu_10_0_multifd2_zlib: "qemu-10.0-multifd2-zlib" V9 Zlib per_round=true multifd_zero=true;
    qemu_10_0_multifd2_zstd: "qemu-10.0-multifd2-zstd" V9 Zstd per_round=true multifd_zero=true;
    qemu_11_1_multifd2: "qemu-11.1-multifd2" V9 None per_round=true multifd_zero=true;
    qemu_11_1_multifd2_machine_7_2:
        "qemu-11.1-multifd2-pc-q35-7.2" V9 None per_round=false multifd_zero=false;
}
