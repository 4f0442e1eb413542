//! Unit tests of the mapped-ram layout: the header, the bitmap, the reads,
//! and the walker over a synthetic file and a file saved by real QEMU 10.0
//! (`wire/tests/streams/`).

use super::*;
use crate::ramrec::{BlockEntry, RamRecord};
use crate::walk::{Item, Walker};
use crate::Cursor;

#[test]
fn header_round_trip_and_qemu_layout() {
    let h = Header::written_at(0x95, 0x8000_0000, 4096);
    assert_eq!(h.bitmap_offset, 0x95 + 28);
    // 524288 pages: a 64 KiB bitmap, pages at the next 1 MiB boundary.
    assert_eq!(bitmap_len(0x8000_0000, 4096), 0x1_0000);
    assert_eq!(h.pages_offset, 0x10_0000);
    let mut e = Encoder::new();
    h.encode(&mut e);
    let b = e.finish();
    assert_eq!(b.len(), HEADER_LEN);
    assert_eq!(&b[..4], &[0, 0, 0, 1]);
    let mut c = Cursor::new(&b, 0);
    assert_eq!(Header::decode(&mut c, 0).unwrap(), h);
    // Short: Incomplete, cursor unchanged.
    let mut c = Cursor::new(&b[..20], 0);
    assert!(Header::decode(&mut c, 0).is_err());
    assert_eq!(c.pos(), 0);
}

#[test]
fn layout_checks() {
    let ok = Header { version: 1, page_size: 4096, bitmap_offset: 100, pages_offset: 0x10_0000 };
    let l = ok.layout("pc.ram", 0x4000, 4096, 0x10_4000).unwrap();
    assert_eq!((l.num_pages, l.bitmap_len, l.next_offset()), (4, 8, 0x10_4000));
    let bad = Header { version: 2, ..ok };
    let e = bad.layout("pc.ram", 0x4000, 4096, 1 << 30).unwrap_err();
    assert!(e.to_string().contains("version not supported (expected <= 1, got 2)"), "{e}");
    let e = Header { page_size: 0, ..ok }.layout("pc.ram", 0x4000, 4096, 1 << 30).unwrap_err();
    assert!(matches!(e, LayoutError::PageSize { page_size: 0, .. }), "{e}");
    let e = Header { pages_offset: 0x10_0200, ..ok }.layout("b", 0x4000, 4096, 1 << 30);
    assert!(e.unwrap_err().to_string().contains("bad alignment (pages offset 0x100200)"));
    let e = Header { bitmap_offset: 0x20_0000, ..ok }.layout("b", 0x4000, 4096, 0x10_4000);
    assert!(matches!(e, Err(LayoutError::PastEnd { what: Region::Bitmap, offset: 0x20_0000, .. })));
    let e = ok.layout("b", 0x4000, 4096, 0x10_3fff).unwrap_err();
    assert!(matches!(e, LayoutError::PastEnd { what: Region::Pages, .. }));
    assert!(e.to_string().contains("pages region at file offset 0x100000"), "{e}");
    let e = Header { bitmap_offset: u64::MAX, ..ok }.layout("b", 0x4000, 4096, 1 << 40);
    assert!(matches!(e, Err(LayoutError::PastEnd { .. })));
}

#[test]
fn bitmap_runs_and_reads() {
    let mut bm = vec![0u8; 64];
    for i in [0, 1, 2, 9, 63, 64, 65, 300] {
        set_bit(&mut bm, i);
    }
    assert!(bit(&bm, 9) && !bit(&bm, 8));
    let r: Vec<_> = runs(&bm, 512).collect();
    assert_eq!(r, vec![(0, 3), (9, 1), (63, 3), (300, 1)]);
    assert_eq!(count(&bm, 512), 8);
    // Pages beyond num_pages are ignored (QEMU scans num_pages bits).
    assert_eq!(runs(&bm, 64).collect::<Vec<_>>(), vec![(0, 3), (9, 1), (63, 1)]);
    // A run of 600 pages is read in 1 MiB (256-page) pieces.
    let mut bm = vec![0u8; 128];
    for i in 10..610 {
        set_bit(&mut bm, i);
    }
    let l = Layout {
        num_pages: 1024,
        bitmap_offset: 0,
        bitmap_len: 128,
        pages_offset: 0x20_0000,
        used_length: 1024 * 4096,
        page_size: 4096,
    };
    let reads: Vec<_> = l.reads(&bm).collect();
    assert_eq!(reads.len(), 3);
    assert_eq!(
        reads[0],
        PageRead { addr: 10 * 4096, file_offset: 0x20_0000 + 10 * 4096, len: 256 * 4096 }
    );
    assert_eq!(reads[2].len, 88 * 4096);
    assert_eq!(reads.iter().map(|r| r.len).sum::<u64>(), 600 * 4096);
}

/// A synthetic mapped-ram file: header, MEM_SIZE with two blocks laid out as
/// QEMU lays them out, EOS, then EOF right after the last block's pages.
fn synthetic() -> (Vec<u8>, Vec<(String, u64, Header)>) {
    let mut e = Encoder::new();
    e.be32(0x5145_564d).be32(3); // magic, version (no configuration)
    e.u8(1).be32(2).counted(b"ram").be32(0).be32(4); // START section "ram"
    let blocks = [("pc.ram", 8u64 * 4096), ("vga.vram", 4 * 4096)];
    e.be64(((8 + 4) * 4096) | 4); // MEM_SIZE
    let mut bytes = e.finish();
    let mut out = Vec::new();
    for (name, len) in blocks {
        let mut e = Encoder::new();
        e.counted(name.as_bytes()).be64(len);
        let at = (bytes.len() + e.finish().len()) as u64;
        let h = Header::written_at(at, len, 4096);
        let mut e = Encoder::new();
        e.counted(name.as_bytes()).be64(len);
        h.encode(&mut e);
        bytes.extend_from_slice(&e.finish());
        bytes.resize((h.pages_offset + len) as usize, 0);
        let mut bm = vec![0u8; bitmap_len(len, 4096) as usize];
        set_bit(&mut bm, 1);
        set_bit(&mut bm, 2);
        let bo = h.bitmap_offset as usize;
        bytes[bo..bo + bm.len()].copy_from_slice(&bm);
        for p in [1u64, 2] {
            let o = (h.pages_offset + p * 4096) as usize;
            bytes[o..o + 4096].fill(p as u8 + name.len() as u8);
        }
        out.push((name.to_string(), len, h));
    }
    bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x10]); // EOS
    bytes.push(0x00); // EOF (no footers in this walk)
    (bytes, out)
}

#[test]
fn walker_follows_the_file_layout() {
    let (bytes, blocks) = synthetic();
    let mut w = Walker::main(false, false);
    w.set_mapped_ram(true);
    let items: Vec<_> = w.records(&bytes).collect::<std::result::Result<Vec<_>, _>>().unwrap();
    let mut seen = Vec::new();
    let mut total = None;
    for (_, it) in &items {
        match it {
            Item::Ram(RamRecord::MappedRamSize { total: t }) => total = Some(*t),
            Item::Ram(RamRecord::MappedRamBlock { entry, header }) => {
                let BlockEntry { name, used_length, .. } = entry;
                let l = header.layout(name, *used_length, 4096, bytes.len() as u64).unwrap();
                let bm = &bytes[l.bitmap_offset as usize..][..l.bitmap_len as usize];
                let reads: Vec<_> = l.reads(bm).collect();
                assert_eq!(reads.len(), 1);
                assert_eq!((reads[0].addr, reads[0].len), (4096, 8192));
                seen.push((name.clone(), *used_length, *header));
            }
            _ => {}
        }
    }
    assert_eq!(total, Some(12 * 4096));
    assert_eq!(seen, blocks);
    assert!(matches!(items.last().unwrap().1, Item::Top(crate::stream::TopRecord::Eof)));
    // The same file read without mapped-ram is a bad MEM_SIZE list.
    let plain: std::result::Result<Vec<_>, _> =
        Walker::main(false, false).records(&bytes).collect();
    assert!(plain.is_err());
}

#[test]
fn walker_reports_a_jump_past_the_end() {
    let (bytes, blocks) = synthetic();
    // Cut inside the second block's pages region.
    let cut = (blocks[1].2.pages_offset + 4096) as usize;
    let mut w = Walker::main(false, false);
    w.set_mapped_ram(true);
    let r: Vec<_> = w.records(&bytes[..cut]).collect();
    let err = r.last().unwrap().as_ref().unwrap_err().to_string();
    assert!(err.contains("mapped-ram block \"vga.vram\": the stream continues at offset"), "{err}");
}
