//! A `mapped-ram` file saved by real QEMU 10.0 (`migrate file:` with the
//! capability; `wire/tests/streams/qemu-10.0-mapped-ram.bin.gz`, recorded by
//! `record.py --mapped-ram`), decoded with `wire::walk` and
//! `wire::mapped_ram` alone: the configuration announces the capability, each
//! MEM_SIZE entry's header sits where QEMU puts it (bitmap right after the
//! header, pages at a 1 MiB boundary), the walk follows the file layout to
//! the device state, and the pages rebuilt from bitmaps and page regions
//! equal the source's RAM (zero pages are not in the bitmap).

use std::io::Read;

use wire::mapped_ram::{self, Header, FILE_OFFSET_ALIGNMENT, HEADER_VERSION};
use wire::ramrec::RamRecord;
use wire::stream::{SectionKind, TopRecord};
use wire::walk::{Item, Walker};

fn load() -> (Vec<u8>, serde_json::Value) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/streams/");
    let gz = std::fs::read(format!("{dir}qemu-10.0-mapped-ram.bin.gz")).expect("recorded file");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut bytes).expect("gzip");
    let facts = std::fs::read(format!("{dir}qemu-10.0-mapped-ram.json")).expect("facts");
    (bytes, serde_json::from_slice(&facts).expect("facts JSON"))
}

/// CRC-32 (IEEE, as Python's `zlib.crc32`), which the recorder stores.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { 0xedb8_8320 ^ (crc >> 1) } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn qemu_10_0_mapped_ram_file() {
    let (bytes, facts) = load();
    assert_eq!(bytes.len() as u64, facts["file_bytes"].as_u64().unwrap());
    let expect_blocks: Vec<(String, u64)> = facts["ramblocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap().to_string(), b["used_length"].as_u64().unwrap()))
        .collect();
    let mut w = Walker::main(true, true);
    w.set_mapped_ram(true);
    let mut blocks = Vec::new();
    let mut total = None;
    let mut reached_devices = false;
    for r in w.records(&bytes) {
        let (off, item) = r.expect("the walk follows the mapped-ram layout");
        match item {
            Item::Header(h) => {
                let cfg = h.configuration.expect("configuration section");
                assert_eq!(cfg.machine, facts["machine"].as_str().unwrap());
                assert_eq!(cfg.capabilities, Some(vec!["mapped-ram".to_string()]));
            }
            Item::Ram(RamRecord::MappedRamSize { total: t }) => total = Some(t),
            Item::Ram(RamRecord::MappedRamBlock { entry, header }) => {
                let at = off + 1 + entry.name.len() as u64 + 8;
                assert_eq!(
                    header,
                    Header::written_at(at, entry.used_length, 4096),
                    "{}",
                    entry.name
                );
                assert_eq!(header.version, HEADER_VERSION);
                assert_eq!(header.pages_offset % FILE_OFFSET_ALIGNMENT, 0);
                let l = header.layout(&entry.name, entry.used_length, 4096, bytes.len() as u64);
                blocks.push((entry.name.clone(), entry.used_length, l.expect("layout")));
            }
            Item::Ram(RamRecord::MemSize { .. }) => panic!("plain MEM_SIZE in a mapped-ram file"),
            Item::Ram(RamRecord::Page { .. } | RamRecord::Zero { .. }) => {
                panic!("page record at {off} in a mapped-ram file")
            }
            Item::Top(TopRecord::SectionOpen { kind: SectionKind::Full, .. }) => {
                reached_devices = true;
                break;
            }
            _ => {}
        }
    }
    assert!(reached_devices, "the walk reaches the device state after the RAM");
    let names: Vec<(String, u64)> = blocks.iter().map(|(n, l, _)| (n.clone(), *l)).collect();
    assert_eq!(names, expect_blocks);
    assert_eq!(total, Some(expect_blocks.iter().map(|b| b.1).sum()));

    // Rebuild each block from its bitmap and pages.
    let mut mem0_pages = 0;
    for (name, len, l) in &blocks {
        let bm = &bytes[l.bitmap_offset as usize..][..l.bitmap_len as usize];
        let mut ram = vec![0u8; *len as usize];
        for rd in l.reads(bm) {
            let src = &bytes[rd.file_offset as usize..][..rd.len as usize];
            ram[rd.addr as usize..][..rd.len as usize].copy_from_slice(src);
        }
        if name == "mem0" {
            mem0_pages = mapped_ram::count(bm, l.num_pages);
            let nonzero = facts["mem0_nonzero_pages_crc32"].as_object().unwrap();
            for (i, page) in ram.chunks(4096).enumerate() {
                let key = format!("{:#x}", i * 4096);
                match nonzero.get(&key) {
                    Some(crc) => assert_eq!(format!("{:08x}", crc32(page)), crc.as_str().unwrap()),
                    None => assert!(page.iter().all(|&b| b == 0), "mem0 page {key} not zero"),
                }
            }
        }
        if name == "pc.bios" {
            assert_eq!(format!("{:08x}", crc32(&ram)), facts["pc_bios_crc32"].as_str().unwrap());
        }
    }
    // Only the four written pages are in mem0's bitmap: QEMU leaves zero
    // pages out of a mapped-ram file.
    assert_eq!(mem0_pages, 4);
}
