//! mapped-ram loading from a real file (no QEMU): a synthetic file laid out
//! as QEMU lays it out (`wire::mapped_ram::Header::written_at`), loaded with
//! and without multifd readers, and damaged: header version, offsets past
//! the file, misaligned pages, a short file, records mapped-ram forbids, the
//! capability on one side only.

use std::io::Write;
use std::sync::Arc;

use super::MappedRamFile;
use crate::load::{Config, LoadError, Loader};
use crate::postcopy::{Pattern, VcpuConfig};
use crate::ram::RamTable;
use crate::state::{Capability, MigStatus, Shared};
use wire::mapped_ram::{bitmap_len, set_bit, Header};
use wire::ramrec::{encode_ram_record, BlockEntry, BlockRef, RamContext, RamRecord};
use wire::stream::*;
use wire::Encoder;

const PAGE: u64 = 4096;

fn page(block: usize, p: u64) -> Vec<u8> {
    (0..PAGE).map(|i| (i as u8).wrapping_mul(13).wrapping_add(p as u8 ^ block as u8) | 1).collect()
}

/// Blocks (name, pages, set pages); offsets of each block's header.
struct Built {
    bytes: Vec<u8>,
    headers: Vec<usize>,
}

fn build(blocks: &[(&str, u64, &[u64])], extra: Option<RamRecord>) -> Built {
    let ctx = RamContext::x86();
    let mut e = Encoder::new();
    let cfg = Configuration {
        machine: "pc-q35-10.0".into(),
        capabilities: Some(vec!["mapped-ram".into()]),
        ..Default::default()
    };
    encode_header(&mut e, &wire::stream::Header { version: 3, configuration: Some(cfg) });
    encode_section_open(&mut e, SectionKind::Start, 2, "ram", 0, 4);
    let total = blocks.iter().map(|b| b.1 * PAGE).sum();
    encode_ram_record(&mut e, &RamRecord::MappedRamSize { total }, &ctx);
    let mut bytes = e.finish();
    let mut headers = Vec::new();
    for (i, (name, pages, set)) in blocks.iter().enumerate() {
        let len = pages * PAGE;
        let at = bytes.len() as u64 + 1 + name.len() as u64 + 8;
        let h = Header::written_at(at, len, PAGE);
        let mut e = Encoder::new();
        let entry =
            BlockEntry { name: name.to_string(), used_length: len, page_size: None, gpa: None };
        encode_ram_record(&mut e, &RamRecord::MappedRamBlock { entry, header: h }, &ctx);
        bytes.extend_from_slice(&e.finish());
        headers.push(at as usize);
        bytes.resize((h.pages_offset + len) as usize, 0);
        let mut bm = vec![0u8; bitmap_len(len, PAGE) as usize];
        for &p in *set {
            set_bit(&mut bm, p);
            let o = (h.pages_offset + p * PAGE) as usize;
            bytes[o..o + PAGE as usize].copy_from_slice(&page(i, p));
        }
        let bo = h.bitmap_offset as usize;
        bytes[bo..bo + bm.len()].copy_from_slice(&bm);
    }
    let mut e = Encoder::new();
    if let Some(r) = extra {
        encode_ram_record(&mut e, &r, &ctx);
    }
    encode_ram_record(&mut e, &RamRecord::Eos, &ctx);
    encode_footer(&mut e, 2);
    e.u8(wire::consts::QEMU_VM_EOF);
    bytes.extend_from_slice(&e.finish());
    Built { bytes, headers }
}

/// Load `bytes` from a temporary file with these capabilities (and
/// `channels` multifd readers when multifd is among them).
fn load(bytes: &[u8], caps: &[Capability], channels: u64) -> (Shared, Result<(), LoadError>) {
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    tmp.write_all(bytes).unwrap();
    let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
    for c in caps {
        shared.lock().capabilities.set(*c, true);
    }
    shared.lock().parameters.insert("multifd-channels".into(), channels.into());
    let cfg = Config {
        vcpu: VcpuConfig { pattern: Pattern::None, threads: 1, rate: 0, range: None },
        ..Config::default()
    };
    let f = std::fs::File::open(tmp.path()).unwrap();
    let mut l = Loader::new(shared.clone(), cfg, Box::new(std::io::sink()));
    if caps.contains(&Capability::MappedRam) {
        let m = MappedRamFile::open(Arc::new(f.try_clone().unwrap()), 0, &shared).unwrap();
        l = l.with_mapped_ram(m);
    }
    let res = l.run(Box::new(f));
    (shared, res)
}

const BLOCKS: &[(&str, u64, &[u64])] =
    &[("pc.ram", 600, &[0, 1, 2, 5, 300, 301, 599]), ("vga.vram", 3, &[]), ("rom", 2, &[1])];

fn check_ram(shared: &Shared) {
    for (i, (name, pages, set)) in BLOCKS.iter().enumerate() {
        let b = shared.ram().get(name).expect("block");
        let ram = b.read_all();
        for p in 0..*pages {
            let got = &ram[(p * PAGE) as usize..][..PAGE as usize];
            if set.contains(&p) {
                assert_eq!(got, &page(i, p)[..], "{name} page {p}");
            } else {
                assert!(got.iter().all(|&x| x == 0), "{name} page {p} not zero");
            }
        }
    }
    assert_eq!(shared.lock().status, MigStatus::Completed);
}

#[test]
fn loads_without_and_with_multifd() {
    let f = build(BLOCKS, None);
    let (s, r) = load(&f.bytes, &[Capability::MappedRam], 0);
    r.unwrap();
    check_ram(&s);
    assert_eq!(s.counters().normal_pages.load(std::sync::atomic::Ordering::Relaxed), 8);
    let (s, r) = load(&f.bytes, &[Capability::MappedRam, Capability::Multifd], 3);
    r.unwrap();
    check_ram(&s);
}

fn fails(bytes: &[u8], caps: &[Capability], want: &str) -> LoadError {
    let (s, r) = load(bytes, caps, 2);
    let e = r.expect_err("must fail");
    assert!(e.to_string().contains(want), "{e}");
    assert_eq!(s.lock().status, MigStatus::Failed);
    assert!(s.lock().error_desc.as_deref().unwrap_or("").contains(want));
    e
}

/// Overwrite the header of block `i` (be32 version, be64 page size, bitmap
/// offset, pages offset).
fn patch(f: &Built, i: usize, field: usize, v: u64) -> Vec<u8> {
    let mut b = f.bytes.clone();
    let at = f.headers[i];
    if field == 0 {
        b[at..at + 4].copy_from_slice(&(v as u32).to_be_bytes());
    } else {
        let o = at + 4 + (field - 1) * 8;
        b[o..o + 8].copy_from_slice(&v.to_be_bytes());
    }
    b
}

#[test]
fn bad_headers_fail_with_the_offset() {
    let f = build(BLOCKS, None);
    let mr = [Capability::MappedRam];
    let e = fails(&patch(&f, 1, 0, 2), &mr, "version not supported (expected <= 1, got 2)");
    assert_eq!(e.offset(), Some(f.headers[1] as u64 - 1 - 8 - 8));
    fails(&patch(&f, 0, 1, 0), &mr, "page size 0x0");
    fails(&patch(&f, 0, 2, 1 << 40), &mr, "bitmap at file offset 0x10000000000");
    fails(&patch(&f, 2, 3, u64::MAX - 4095), &mr, "pages region at file offset");
    fails(
        &patch(&f, 0, 3, 0x10_0000 + 512),
        &mr,
        "region has bad alignment (pages offset 0x100200)",
    );
    // A pages offset that lands inside the file but elsewhere: the stream
    // goes on at a wrong place and fails there, never panics.
    let (s, r) = load(&patch(&f, 0, 3, 0), &mr, 0);
    assert!(r.is_err() && s.lock().status == MigStatus::Failed);
}

#[test]
fn short_file_and_stray_records() {
    let f = build(BLOCKS, None);
    let mr = [Capability::MappedRam];
    let cut = f.headers[2] + 28 + 100;
    fails(&f.bytes[..cut], &mr, "lies past the end of the file");
    for mf in [0, 3] {
        let caps =
            if mf > 0 { vec![Capability::MappedRam, Capability::Multifd] } else { mr.to_vec() };
        let (s, r) = load(&f.bytes[..f.headers[1]], &caps, mf);
        assert!(r.is_err(), "cut after the first block");
        assert_eq!(s.lock().status, MigStatus::Failed);
    }
    let p = page(0, 0);
    let stray = RamRecord::Page { addr: 0, block: BlockRef::Named("pc.ram"), data: &p };
    fails(&build(BLOCKS, Some(stray)).bytes, &mr, "Unexpected RAM flags: 8");
    fails(&build(BLOCKS, Some(RamRecord::MultifdFlush)).bytes, &mr, "Unexpected RAM flags: 512");
}

#[test]
fn capability_on_one_side_only() {
    let f = build(BLOCKS, None);
    fails(&f.bytes, &[], "Capability mapped-ram is off, but received capability is on");
}

/// With `direct-io` (and multifd), the file channels are opened with
/// `O_DIRECT`, as QEMU opens its multifd file channels; the load still
/// succeeds (pages are read page-aligned straight into guest RAM).
#[test]
fn direct_io_channels_use_o_direct() {
    let f = build(BLOCKS, None);
    let mut tmp = tempfile::NamedTempFile::new_in(std::env::temp_dir()).unwrap();
    tmp.write_all(&f.bytes).unwrap();
    let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
    shared.lock().capabilities.set(Capability::MappedRam, true);
    shared.lock().capabilities.set(Capability::Multifd, true);
    shared.lock().parameters.insert("multifd-channels".into(), 2.into());
    shared.lock().parameters.insert("direct-io".into(), true.into());
    let file = std::fs::File::open(tmp.path()).unwrap();
    let m = match MappedRamFile::open(Arc::new(file.try_clone().unwrap()), 0, &shared) {
        Ok(m) => m,
        // A filesystem without O_DIRECT: the open fails as QEMU's does.
        Err(e) => return assert!(e.to_string().contains("with O_DIRECT"), "{e}"),
    };
    assert_eq!(m.channels.len(), 2);
    for c in &m.channels {
        use std::os::fd::AsRawFd;
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", c.as_raw_fd())).unwrap();
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim();
        let flags = i64::from_str_radix(flags, 8).unwrap();
        assert_ne!(flags & libc::O_DIRECT as i64, 0, "{info}");
    }
    let cfg = Config {
        vcpu: VcpuConfig { pattern: Pattern::None, threads: 1, rate: 0, range: None },
        ..Config::default()
    };
    let l = Loader::new(shared.clone(), cfg, Box::new(std::io::sink())).with_mapped_ram(m);
    l.run(Box::new(file)).unwrap();
    check_ram(&shared);
}
