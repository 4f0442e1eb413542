//! Loader tests driven from memory (no QEMU, no sockets): synthetic streams
//! built with wire's encoder, and the real streams recorded from QEMU 7.2,
//! 10.0 and 11.1 in `wire/tests/streams/`.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;

use super::{Config, LoadError, Loader};
use crate::channel::RecordingSink;
use crate::postcopy::{Pattern, VcpuConfig};
use crate::ram::RamTable;
use crate::state::{Capability, MigStatus, Shared};
use wire::command::Command;
use wire::ramrec::{encode_ram_record, BlockEntry, BlockRef, RamContext, RamRecord};
use wire::stream::*;
use wire::walk::{Item, Mode, Walker};
use wire::{DecodeError, Encoder};

const PAGE: usize = 4096;

/// Load `bytes` from memory; the shared state, the return-path bytes and
/// the outcome.
pub(super) fn load(bytes: &[u8], postcopy: bool) -> (Shared, RecordingSink, Result<(), LoadError>) {
    let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
    if postcopy {
        shared.lock().capabilities.set(Capability::PostcopyRam, true);
    }
    let cfg = Config {
        vcpu: VcpuConfig { pattern: Pattern::None, threads: 1, rate: 0, range: None },
        ..Config::default()
    };
    let sink = RecordingSink::default();
    let src = std::io::Cursor::new(bytes.to_vec());
    let res = Loader::new(shared.clone(), cfg, Box::new(sink.clone())).run(Box::new(src));
    (shared, sink, res)
}

fn page(b: u8) -> Vec<u8> {
    (0..PAGE).map(|i| (i as u8).wrapping_mul(7).wrapping_add(b)).collect()
}

/// Offsets of the parts of the synthetic stream the tests damage.
struct Synth {
    bytes: Vec<u8>,
    /// The type byte of the first PART section.
    part_at: usize,
    /// The name bytes of the first PAGE record's block.
    page_name_at: usize,
}

/// header, configuration, RAM START (MEM_SIZE), PART (pages, CONTINUE pages,
/// zero page, a second block), END, a device section, EOF, vmdesc.
fn synthetic() -> Synth {
    let ctx = RamContext::x86();
    let mut e = Encoder::new();
    let cfg = Configuration { machine: "pc-q35-10.0".into(), ..Default::default() };
    encode_header(&mut e, &Header { version: 3, configuration: Some(cfg) });
    encode_section_open(&mut e, SectionKind::Start, 2, "ram", 0, 4);
    let blocks = vec![
        BlockEntry { name: "pc.ram".into(), used_length: 16 * 4096, page_size: None, gpa: None },
        BlockEntry { name: "x".into(), used_length: 2 * 4096, page_size: None, gpa: None },
    ];
    encode_ram_record(&mut e, &RamRecord::MemSize { total: 18 * 4096, blocks }, &ctx);
    encode_ram_record(&mut e, &RamRecord::Eos, &ctx);
    encode_footer(&mut e, 2);
    let part_at = e.buf.len();
    encode_section_cont(&mut e, SectionKind::Part, 2);
    let (a, b, c) = (page(1), page(2), page(3));
    // flags (8 bytes) and the name length byte come before the name.
    let page_name_at = e.buf.len() + 9;
    let recs = [
        RamRecord::Page { addr: 0, block: BlockRef::Named("pc.ram"), data: &a },
        RamRecord::Page { addr: 4096, block: BlockRef::Continue, data: &b },
        RamRecord::Zero { addr: 8192, block: BlockRef::Continue, fill: 0 },
        RamRecord::Page { addr: 4096, block: BlockRef::Named("x"), data: &c },
        RamRecord::Eos,
    ];
    for r in &recs {
        encode_ram_record(&mut e, r, &ctx);
    }
    encode_footer(&mut e, 2);
    encode_section_cont(&mut e, SectionKind::End, 2);
    let d = page(4);
    let p = RamRecord::Page { addr: 15 * 4096, block: BlockRef::Named("pc.ram"), data: &d };
    encode_ram_record(&mut e, &p, &ctx);
    encode_ram_record(&mut e, &RamRecord::Eos, &ctx);
    encode_footer(&mut e, 2);
    encode_section_open(&mut e, SectionKind::Full, 3, "timer", 0, 1);
    e.bytes(&[9u8; 8]);
    encode_footer(&mut e, 3);
    encode_eof(&mut e);
    let desc = json!({"page_size": 4096, "devices": [
        {"name": "timer", "instance_id": 0, "vmsd_name": "timer", "version": 1,
         "fields": [{"name": "a", "type": "int64", "size": 8}]}]});
    encode_vmdesc(&mut e, &serde_json::to_vec(&desc).unwrap());
    Synth { bytes: e.buf, part_at, page_name_at }
}

#[test]
fn synthetic_precopy_completes_with_the_pages_sent() {
    let s = synthetic();
    let (shared, sink, res) = load(&s.bytes, false);
    res.unwrap();
    assert_eq!(shared.lock().status, MigStatus::Completed);
    let ram = shared.ram().get("pc.ram").unwrap().read_all();
    assert_eq!(&ram[..PAGE], &page(1)[..]);
    assert_eq!(&ram[PAGE..2 * PAGE], &page(2)[..]);
    assert!(ram[2 * PAGE..15 * PAGE].iter().all(|&b| b == 0));
    assert_eq!(&ram[15 * PAGE..], &page(4)[..]);
    let x = shared.ram().get("x").unwrap().read_all();
    assert_eq!(&x[PAGE..], &page(3)[..]);
    let g = shared.lock();
    assert_eq!(g.devices.len(), 1);
    assert_eq!(g.devices[0].idstr, "timer");
    assert_eq!(g.devices[0].data, vec![9u8; 8]);
    assert_eq!(g.stream_machine.as_deref(), Some("pc-q35-10.0"));
    // No return path was opened: nothing written to it.
    assert!(sink.bytes().is_empty());
}

#[test]
fn synthetic_precopy_truncated_anywhere_fails_cleanly() {
    let s = synthetic();
    // The device state (one section: 19 header bytes, 8 data, 5 footer)
    // is buffered through EOF: any cut after its start and before EOF is
    // truncated device state. A cut after EOF (no vmdesc, or a vmdesc cut
    // short) completes, as on QEMU.
    let (eof_at, _) = wire::vmdesc::find_vmdesc_tail(&s.bytes).unwrap();
    let device_at = eof_at - 32;
    for cut in eof_at + 1..s.bytes.len() {
        let (shared, _, res) = load(&s.bytes[..cut], false);
        res.unwrap_or_else(|e| panic!("cut {cut} after EOF: {e}"));
        let g = shared.lock();
        assert_eq!(g.status, MigStatus::Completed, "cut {cut}");
        assert_eq!(g.devices.len(), 1, "cut {cut}");
        assert_eq!(g.devices[0].data, vec![9u8; 8], "cut {cut}");
        assert!(g.vmdesc.is_none(), "cut {cut}");
    }
    for cut in 0..=eof_at {
        let (shared, _, res) = load(&s.bytes[..cut], false);
        let e = res.expect_err("a truncated stream must fail");
        assert!(e.is_truncation(), "cut {cut}: {e:?}");
        let g = shared.lock();
        assert_eq!(g.status, MigStatus::Failed, "cut {cut}");
        let desc = g.error_desc.clone().unwrap();
        assert!(desc.contains("byte offset"), "cut {cut}: {desc}");
        match e.root() {
            LoadError::Truncated { at, .. } => assert!(*at as usize <= cut, "cut {cut}: {e}"),
            LoadError::TruncatedAfterHeader { at } => assert_eq!(*at as usize, cut),
            LoadError::TruncatedDeviceState { at, start } => {
                assert_eq!(*at as usize, cut);
                assert_eq!(*start as usize, device_at, "cut {cut}");
            }
            other => panic!("cut {cut}: {other:?}"),
        }
    }
}

#[test]
fn damaged_bytes_give_the_right_error() {
    let s = synthetic();
    // Bad magic.
    let mut b = s.bytes.clone();
    b[0] = b'X';
    let e = load(&b, false).2.unwrap_err();
    assert!(matches!(e.root(), LoadError::Decode(DecodeError::Invalid { offset: 0, .. })), "{e}");
    assert!(e.to_string().contains("bad stream magic"), "{e}");
    // Bad section type.
    let mut b = s.bytes.clone();
    b[s.part_at] = 0x09;
    let e = load(&b, false).2.unwrap_err();
    assert!(e.to_string().contains("unknown section type 0x09"), "{e}");
    assert_eq!(e.offset(), Some(s.part_at as u64));
    // Unknown block.
    let mut b = s.bytes.clone();
    assert_eq!(&b[s.page_name_at..s.page_name_at + 6], b"pc.ram");
    b[s.page_name_at + 3] = b'x';
    let e = load(&b, false).2.unwrap_err();
    match e.root() {
        LoadError::UnknownBlock { name, .. } => assert_eq!(name, "pc.xam"),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().starts_with("section 'ram' (id 2): "), "{e}");
    // Page beyond its block: the END page at 15 pages, in a 2-page block.
    let mut b = s.bytes.clone();
    let end_page = b.windows(6).rposition(|w| w == b"pc.ram").unwrap();
    b[end_page..end_page + 6].copy_from_slice(b"x\0\0\0\0\0");
    b[end_page - 1] = 1;
    let e = load(&b, false).2.unwrap_err();
    assert!(matches!(e.root(), LoadError::PageOutsideBlock { .. } | LoadError::Decode(_)), "{e:?}");
}

#[test]
fn page_outside_block_is_refused() {
    let ctx = RamContext::x86();
    let mut e = Encoder::new();
    encode_header(&mut e, &Header { version: 3, configuration: Some(Default::default()) });
    encode_section_open(&mut e, SectionKind::Start, 2, "ram", 0, 4);
    let blocks =
        vec![BlockEntry { name: "pc.ram".into(), used_length: 4096, page_size: None, gpa: None }];
    encode_ram_record(&mut e, &RamRecord::MemSize { total: 4096, blocks }, &ctx);
    let at = e.buf.len() as u64;
    let p = page(0);
    let r = RamRecord::Page { addr: 4096, block: BlockRef::Named("pc.ram"), data: &p };
    encode_ram_record(&mut e, &r, &ctx);
    let err = load(&e.buf, false).2.unwrap_err();
    match err.root() {
        LoadError::PageOutsideBlock { at: a, addr: 4096, .. } => assert_eq!(*a, at),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ping_is_answered_on_the_return_path() {
    let mut e = Encoder::new();
    encode_header(&mut e, &Header { version: 3, configuration: Some(Default::default()) });
    Command::OpenReturnPath.encode(&mut e);
    Command::Ping(0x42).encode(&mut e);
    encode_eof(&mut e);
    let (shared, sink, res) = load(&e.buf, false);
    res.unwrap();
    assert_eq!(shared.lock().status, MigStatus::Completed);
    let rp = sink.bytes();
    let mut c = wire::Cursor::new(&rp, 0);
    assert_eq!(wire::rp::decode_rp(&mut c).unwrap(), wire::rp::RpMessage::Pong(0x42));
    assert_eq!(wire::rp::decode_rp(&mut c).unwrap(), wire::rp::RpMessage::Shut(0));
}

// ---------------------------------------------------------------------------
// Recorded streams
// ---------------------------------------------------------------------------

pub(super) const RECORDED: &[&str] = &[
    "qemu-7.2-precopy",
    "qemu-7.2-postcopy",
    "qemu-10.0-precopy",
    "qemu-10.0-postcopy",
    "qemu-11.1-precopy",
    "qemu-11.1-postcopy",
];

pub(super) fn recorded(name: &str) -> Option<Vec<u8>> {
    let p = format!("{}/../wire/tests/streams/{name}.bin", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(p).ok()
}

/// Per block, each page's last content (`None`: never sent).
type Pages = HashMap<String, Vec<Option<Vec<u8>>>>;

/// What the stream carried: per block, the last content sent for each page
/// (discards zero a page), and the offsets of the top-level records.
fn replay(bytes: &[u8]) -> (Pages, Vec<u64>) {
    let mut pages = Pages::new();
    let mut tops = Vec::new();
    let mut last: Option<String> = None;
    let mut w = Walker::main(true, true).records(bytes);
    let mut mode = w.walker().mode();
    while let Some(r) = w.next() {
        let (off, item) = r.unwrap();
        if matches!(mode, Mode::Top | Mode::Header { .. }) {
            tops.push(off);
        }
        match item {
            Item::Top(TopRecord::SectionOpen { kind: SectionKind::Full, .. }) => {
                // Precopy device state: no lengths; its sections and the EOF
                // are delimited with the vmdesc that ends the stream.
                let f = off as usize;
                let (eof, json) = wire::vmdesc::find_vmdesc_tail(&bytes[f..]).unwrap();
                let secs = wire::vmdesc::split_with_vmdesc(&bytes[f..f + eof], off, &json).unwrap();
                tops.extend(secs.iter().skip(1).map(|s| off + s.header_pos as u64));
                tops.push(off + eof as u64);
                break;
            }
            Item::Ram(RamRecord::MemSize { blocks, .. }) => {
                for b in blocks {
                    pages.insert(b.name, vec![None; b.used_length as usize / PAGE]);
                }
            }
            Item::Ram(RamRecord::Page { addr, block, data }) => {
                let name = match block {
                    BlockRef::Named(n) => n.to_string(),
                    BlockRef::Continue => last.clone().unwrap(),
                };
                pages.get_mut(&name).unwrap()[addr as usize / PAGE] = Some(data.to_vec());
                last = Some(name);
            }
            Item::Ram(RamRecord::Zero { addr, block, .. }) => {
                let name = match block {
                    BlockRef::Named(n) => n.to_string(),
                    BlockRef::Continue => last.clone().unwrap(),
                };
                pages.get_mut(&name).unwrap()[addr as usize / PAGE] = Some(vec![0; PAGE]);
                last = Some(name);
            }
            Item::Top(TopRecord::Command(rc)) => {
                if let Ok(Command::PostcopyRamDiscard(d)) = Command::parse(&rc) {
                    let b = pages.get_mut(&d.block).unwrap();
                    for (s, l) in d.ranges {
                        for p in &mut b[s as usize / PAGE..(s + l) as usize / PAGE] {
                            *p = Some(vec![0; PAGE]);
                        }
                    }
                }
                if let Ok(Command::PostcopyListen) = Command::parse(&rc) {
                    last = None;
                }
            }
            _ => {}
        }
        mode = w.walker().mode();
    }
    (pages, tops)
}

#[test]
fn recorded_streams_load_completely() {
    let mut n = 0;
    for name in RECORDED {
        let Some(bytes) = recorded(name) else { continue };
        n += 1;
        let postcopy = name.ends_with("postcopy");
        let (shared, _, res) = load(&bytes, postcopy);
        res.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(shared.lock().status, MigStatus::Completed, "{name}");
        let (expected, _) = replay(&bytes);
        assert_eq!(expected.len(), shared.ram().blocks().len(), "{name}");
        for (block, want) in &expected {
            let got = shared.ram().get(block).unwrap().read_all();
            for (i, p) in want.iter().enumerate() {
                let have = &got[i * PAGE..(i + 1) * PAGE];
                match p {
                    Some(d) => assert!(have == &d[..], "{name}: {block} page {i:#x} differs"),
                    None => assert!(have.iter().all(|&b| b == 0), "{name}: {block} page {i:#x}"),
                }
            }
        }
        if !postcopy {
            assert!(!shared.lock().devices.is_empty(), "{name}: device sections kept");
        }
    }
    eprintln!("{n} recorded stream(s) loaded");
}

#[test]
fn recorded_streams_truncated_at_every_top_level_record_fail_cleanly() {
    for name in RECORDED {
        let Some(bytes) = recorded(name) else { continue };
        let postcopy = name.ends_with("postcopy");
        let (_, tops) = replay(&bytes);
        for &cut in &tops {
            let cut = cut as usize;
            let (shared, _, res) = load(&bytes[..cut], postcopy);
            let e = res.expect_err("truncated");
            assert!(e.is_truncation(), "{name} cut {cut}: {e}");
            assert!(e.offset().is_some_and(|o| o as usize <= cut), "{name} cut {cut}: {e}");
            let st = shared.lock().status;
            assert!(
                matches!(st, MigStatus::Failed | MigStatus::PostcopyPaused),
                "{name} cut {cut}: {st:?}"
            );
            let desc = shared.lock().error_desc.clone().unwrap_or_default();
            assert!(desc.contains(&format!("byte offset {}", e.offset().unwrap())), "{desc}");
        }
    }
}

/// A COMPRESS_PAGE stream (legacy `compress`): header, MEM_SIZE, one page
/// compressed as a complete zlib stream (or `data` as given), EOS.
fn compressed_stream(machine: &str, data: Option<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    use std::io::Write as _;
    let ctx = RamContext::x86();
    let mut e = Encoder::new();
    let cfg = Configuration { machine: machine.into(), ..Default::default() };
    encode_header(&mut e, &Header { version: 3, configuration: Some(cfg) });
    encode_section_open(&mut e, SectionKind::Start, 2, "ram", 0, 4);
    let blocks =
        vec![BlockEntry { name: "pc.ram".into(), used_length: 4096, page_size: None, gpa: None }];
    encode_ram_record(&mut e, &RamRecord::MemSize { total: 4096, blocks }, &ctx);
    let p = page(5);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&p).unwrap();
    let good = z.finish().unwrap();
    let data = data.unwrap_or(&good);
    let r = RamRecord::CompressPage { addr: 0, block: BlockRef::Named("pc.ram"), data };
    encode_ram_record(&mut e, &r, &ctx);
    encode_ram_record(&mut e, &RamRecord::Eos, &ctx);
    encode_footer(&mut e, 2);
    (e.buf, p)
}

/// Load `bytes` with `-machine machine` and `compress` on or off; the error
/// text, if loading failed before the (absent) end of the stream.
fn load_compressed(bytes: &[u8], machine: &str, compress: bool) -> (Shared, String) {
    let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
    shared.lock().capabilities.set(Capability::Compress, compress);
    let cfg = Config {
        vcpu: VcpuConfig { pattern: Pattern::None, threads: 1, rate: 0, range: None },
        machine: Some(machine.into()),
        ..Config::default()
    };
    let src = std::io::Cursor::new(bytes.to_vec());
    let res =
        Loader::new(shared.clone(), cfg, Box::new(RecordingSink::default())).run(Box::new(src));
    (shared, res.map_or_else(|e| e.to_string(), |_| String::new()))
}

#[test]
fn legacy_compressed_pages_follow_machine_and_capability() {
    let (bytes, p) = compressed_stream("pc-q35-7.2", None);
    // 7.2 machine, capability on: the page is inflated (the stream then
    // ends without EOF, which fails after the page was placed).
    let (shared, err) = load_compressed(&bytes, "pc-q35-7.2", true);
    assert!(!err.contains("compressed"), "{err}");
    assert_eq!(shared.ram().get("pc.ram").unwrap().read_all(), p);
    let (_, err) = load_compressed(&bytes, "pc-q35-7.2", false);
    assert!(err.contains("'compress' capability is off"), "{err}");
    let (bytes10, _) = compressed_stream("pc-q35-10.0", None);
    let (_, err) = load_compressed(&bytes10, "pc-q35-10.0", true);
    assert!(err.contains("removed in QEMU 9.1"), "{err}");
    let (bad, _) = compressed_stream("pc-q35-7.2", Some(&[0xff; 64]));
    let (_, err) = load_compressed(&bad, "pc-q35-7.2", true);
    assert!(err.contains("zlib"), "{err}");
    // A complete zlib stream of half a page: accepted like QEMU 7.2, it
    // overwrites the first half of the page only.
    let half = {
        use std::io::Write as _;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&p[..2048]).unwrap();
        z.finish().unwrap()
    };
    let (short, _) = compressed_stream("pc-q35-7.2", Some(&half));
    let (shared, err) = load_compressed(&short, "pc-q35-7.2", true);
    assert!(!err.contains("compressed"), "{err}");
    let got = shared.ram().get("pc.ram").unwrap().read_all();
    assert_eq!(&got[..2048], &p[..2048]);
    assert!(got[2048..].iter().all(|&b| b == 0));
    // More than a page is refused.
    let long = {
        use std::io::Write as _;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&[7u8; 5000]).unwrap();
        z.finish().unwrap()
    };
    let (long, _) = compressed_stream("pc-q35-7.2", Some(&long));
    let (_, err) = load_compressed(&long, "pc-q35-7.2", true);
    assert!(err.contains("expected at most one page"), "{err}");
}

/// A reader that gives `bytes`, then fails as a socket whose read timeout
/// expired (`POSTCOPY_SILENCE_LIMIT` on the main channel) would.
struct ThenSilent(std::io::Cursor<Vec<u8>>);

impl std::io::Read for ThenSilent {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.read(buf)? {
            0 => Err(std::io::Error::new(std::io::ErrorKind::WouldBlock, "read timed out")),
            n => Ok(n),
        }
    }
}

/// The bound on the main channel (issue 14): a read timeout once postcopy
/// places pages pauses (`postcopy-paused`, error-desc naming the silence),
/// so that the migration can be recovered; in precopy the same error fails
/// the migration (no bound is set there: a source may wait, as QEMU's
/// destination lets it).
#[test]
fn a_silent_main_channel_pauses_postcopy_and_fails_precopy() {
    for name in RECORDED.iter().filter(|n| n.ends_with("postcopy")) {
        let Some(bytes) = recorded(name) else { continue };
        let (_, tops) = replay(&bytes);
        // The last top-level record (EOF) comes after LISTEN and RUN; the
        // second is the first after the header, still precopy.
        for (cut, want) in
            [(tops[tops.len() - 1], MigStatus::PostcopyPaused), (tops[1], MigStatus::Failed)]
        {
            let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
            shared.lock().capabilities.set(Capability::PostcopyRam, true);
            let cfg = Config {
                vcpu: VcpuConfig { pattern: Pattern::None, threads: 1, rate: 0, range: None },
                ..Config::default()
            };
            let src = ThenSilent(std::io::Cursor::new(bytes[..cut as usize].to_vec()));
            let res = Loader::new(shared.clone(), cfg, Box::new(RecordingSink::default()))
                .run(Box::new(src));
            let e = res.expect_err("silent");
            let (st, desc) = {
                let g = shared.lock();
                (g.status, g.error_desc.clone().unwrap_or_default())
            };
            assert_eq!(st, want, "{name} cut {cut}: {e}");
            let silent = matches!(e, LoadError::Silent { at, .. } if at == cut);
            assert_eq!(silent, want == MigStatus::PostcopyPaused, "{name} cut {cut}: {e}");
            if silent {
                assert!(desc.contains("main channel silent for 60 s during postcopy"), "{desc}");
            }
        }
    }
}
