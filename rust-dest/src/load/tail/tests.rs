//! The end of a precopy stream without QEMU: device state delimited through
//! EOF with no vmdesc, a vmdesc cut short, garbage after EOF,
//! `suppress-vmdesc` with the stream left open, and DISCARD lookups.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::tests::{load, recorded, RECORDED};
use super::super::{Config, Loader};
use crate::channel::RecordingSink;
use crate::postcopy::{Pattern, VcpuConfig};
use crate::ram::RamTable;
use crate::state::{MigStatus, Shared};
use wire::command::Command;
use wire::ramrec::{encode_ram_record, BlockEntry, RamContext, RamRecord};
use wire::stream::*;
use wire::Encoder;

/// Device data with a fake footer of its own section id followed by 0x00
/// (a fake EOF) and a byte that is not 0x06.
const TRICKY: &[u8] = &[1, 0x7e, 0, 0, 0, 3, 0x00, 0x41, 0x7e, 0, 0, 0, 3];

/// Header, RAM (one block, no pages), `timer` (TRICKY data) and
/// `globalstate` FULL sections, EOF. Returns the bytes and where EOF is.
fn tail_stream() -> (Vec<u8>, usize) {
    let ctx = RamContext::x86();
    let mut e = Encoder::new();
    let cfg = Configuration { machine: "pc-q35-10.0".into(), ..Default::default() };
    encode_header(&mut e, &Header { version: 3, configuration: Some(cfg) });
    encode_section_open(&mut e, SectionKind::Start, 2, "ram", 0, 4);
    let blocks =
        vec![BlockEntry { name: "pc.ram".into(), used_length: 4096, page_size: None, gpa: None }];
    encode_ram_record(&mut e, &RamRecord::MemSize { total: 4096, blocks }, &ctx);
    encode_ram_record(&mut e, &RamRecord::Eos, &ctx);
    encode_footer(&mut e, 2);
    encode_section_open(&mut e, SectionKind::Full, 3, "timer", 0, 2);
    e.bytes(TRICKY);
    encode_footer(&mut e, 3);
    encode_section_open(&mut e, SectionKind::Full, 4, "globalstate", 0, 1);
    let mut gs = 8u32.to_be_bytes().to_vec();
    gs.extend_from_slice(b"running\0");
    e.bytes(&gs);
    encode_footer(&mut e, 4);
    let eof = e.buf.len();
    encode_eof(&mut e);
    (e.buf, eof)
}

fn assert_devices(shared: &Shared) {
    let g = shared.lock();
    assert_eq!(g.status, MigStatus::Completed);
    let names: Vec<&str> = g.devices.iter().map(|d| d.idstr.as_str()).collect();
    assert_eq!(names, ["timer", "globalstate"]);
    assert_eq!(g.devices[0].data, TRICKY);
    assert_eq!(g.globalstate.as_deref(), Some("running"));
}

#[test]
fn stream_ending_right_after_eof_completes() {
    let (b, _) = tail_stream();
    let (shared, _, res) = load(&b, false);
    res.unwrap();
    assert_devices(&shared);
    assert!(shared.lock().vmdesc.is_none());
}

#[test]
fn garbage_or_a_cut_vmdesc_after_eof_completes() {
    let (b, _) = tail_stream();
    let json = br#"{"page_size":4096,"devices":[]}"#;
    let mut with_vmdesc = b.clone();
    with_vmdesc.push(0x06);
    with_vmdesc.extend_from_slice(&(json.len() as u32).to_be_bytes());
    with_vmdesc.extend_from_slice(json);
    // A vmdesc that does not describe the sections is still kept, and the
    // footers delimit them.
    let (shared, _, res) = load(&with_vmdesc, false);
    res.unwrap();
    assert_devices(&shared);
    assert!(shared.lock().vmdesc.is_some());
    for cut in b.len() + 1..with_vmdesc.len() {
        let (shared, _, res) = load(&with_vmdesc[..cut], false);
        res.unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        assert_devices(&shared);
    }
    for garbage in [&b"\xff\xff"[..], b"\x06\xff\xff\xff\xffabc", b"\x00", b"\x04xyz"] {
        let mut g = b.clone();
        g.extend_from_slice(garbage);
        let (shared, _, res) = load(&g, false);
        res.unwrap_or_else(|e| panic!("{garbage:?}: {e}"));
        assert_devices(&shared);
    }
}

#[test]
fn eof_without_device_state_then_anything_completes() {
    // EOF right after the header (no RAM, no device), then nothing, a huge
    // declared vmdesc length, or garbage.
    let mut e = Encoder::new();
    let cfg = Configuration { machine: "pc-q35-10.0".into(), ..Default::default() };
    encode_header(&mut e, &Header { version: 3, configuration: Some(cfg) });
    encode_eof(&mut e);
    for after in [&b""[..], b"\x06\xff\xff\xff\xffab", b"\x06\x00", b"junk"] {
        let mut b = e.buf.clone();
        b.extend_from_slice(after);
        let (shared, _, res) = load(&b, false);
        res.unwrap_or_else(|e| panic!("{after:?}: {e}"));
        assert_eq!(shared.lock().status, MigStatus::Completed);
    }
}

/// Feed `bytes` through a socket left open; the status after `wait`.
fn load_open(bytes: &[u8], suppress_vmdesc: bool, wait: Duration) -> MigStatus {
    let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
    let cfg = Config {
        suppress_vmdesc,
        vcpu: VcpuConfig { pattern: Pattern::None, threads: 1, rate: 0, range: None },
        ..Config::default()
    };
    let (mut tx, rx) = UnixStream::pair().unwrap();
    tx.write_all(bytes).unwrap();
    let l = Loader::new(shared.clone(), cfg, Box::new(RecordingSink::default()));
    let t = std::thread::spawn(move || l.run(Box::new(rx)));
    let until = Instant::now() + wait;
    while Instant::now() < until && shared.lock().status != MigStatus::Completed {
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = shared.lock().status;
    drop(tx);
    t.join().unwrap().unwrap();
    assert_eq!(shared.lock().status, MigStatus::Completed);
    status
}

#[test]
fn open_stream_after_eof_completes_only_with_suppress_vmdesc() {
    let (b, _) = tail_stream();
    // suppress-vmdesc: QEMU reads nothing after EOF; neither does rust-dest.
    assert_eq!(load_open(&b, true, Duration::from_secs(5)), MigStatus::Completed);
    // Otherwise QEMU waits for the vmdesc byte: so does rust-dest (until the
    // stream ends, which load_open does after the wait).
    assert_ne!(load_open(&b, false, Duration::from_millis(300)), MigStatus::Completed);
    // A complete vmdesc ends the wait at once.
    let mut v = b.clone();
    v.extend_from_slice(&[0x06, 0, 0, 0, 2, b'{', b'}']);
    assert_eq!(load_open(&v, false, Duration::from_secs(5)), MigStatus::Completed);
}

/// Real device state (QEMU 7.2, 10.0, 11.1 precopy recordings): without
/// its vmdesc, or with garbage in its place, the footer parse delimits the
/// same sections as the vmdesc does.
#[test]
fn recorded_device_state_delimited_without_the_vmdesc() {
    let key = |shared: &Shared| -> Vec<(String, u32, Vec<u8>)> {
        let g = shared.lock();
        g.devices.iter().map(|d| (d.idstr.clone(), d.instance_id, d.data.clone())).collect()
    };
    let mut n = 0;
    for name in RECORDED.iter().filter(|n| n.ends_with("precopy")) {
        let Some(bytes) = recorded(name) else { continue };
        n += 1;
        let (eof, _) = wire::vmdesc::find_vmdesc_tail(&bytes).expect("a recorded vmdesc");
        let (shared, _, res) = load(&bytes, false);
        res.unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = key(&shared);
        assert!(want.len() > 5, "{name}: {} device sections", want.len());
        let mut garbage = bytes[..=eof].to_vec();
        garbage.extend_from_slice(b"\x7e\x00\x00\x00\x01junk");
        for (what, b) in [("no vmdesc", &bytes[..=eof]), ("garbage", &garbage[..])] {
            let (shared, _, res) = load(b, false);
            res.unwrap_or_else(|e| panic!("{name} ({what}): {e}"));
            assert!(key(&shared) == want, "{name} ({what}): device sections differ");
        }
    }
    eprintln!("{n} recorded precopy stream(s) checked");
}

#[test]
fn discard_looks_the_block_up_per_range() {
    let stream = |block: &str, ranges: Vec<(u64, u64)>| {
        let mut e = Encoder::new();
        let cfg = Configuration { machine: "pc-q35-10.0".into(), ..Default::default() };
        encode_header(&mut e, &Header { version: 3, configuration: Some(cfg) });
        let ps = crate::mem::host_page_size() as u64;
        let a = wire::command::Advise { ram_pagesize_summary: ps, target_page_size: 4096 };
        Command::PostcopyAdvise(Some(a)).encode(&mut e);
        let d = wire::command::Discard { block: block.into(), ranges };
        Command::PostcopyRamDiscard(d).encode(&mut e);
        encode_eof(&mut e);
        e.buf
    };
    // No range: the unknown name is never looked up (QEMU completes).
    let (shared, _, res) = load(&stream("no-such-block-0123456", vec![]), true);
    res.unwrap();
    assert_eq!(shared.lock().status, MigStatus::Completed);
    // One range: unknown RAMBlock, as QEMU's "Failed to find block".
    let (shared, _, res) = load(&stream("nosuchblock", vec![(0, 4096)]), true);
    let e = res.unwrap_err().to_string();
    assert!(e.contains("unknown RAMBlock \"nosuchblock\""), "{e}");
    assert_eq!(shared.lock().status, MigStatus::Failed);
}

/// A vmdesc above what rust-dest keeps (16 MiB) is read to its end, as QEMU
/// reads it, and not kept: the migration completes without it.
#[test]
fn a_vmdesc_above_the_kept_limit_is_read_not_kept() {
    let mut e = Encoder::new();
    let cfg = Configuration { machine: "pc-q35-10.0".into(), ..Default::default() };
    encode_header(&mut e, &Header { version: 3, configuration: Some(cfg) });
    encode_eof(&mut e);
    let mut json = br#"{"page_size":4096,"devices":[],"pad":""#.to_vec();
    json.resize(json.len() + super::MAX_VMDESC_KEPT, b'x');
    json.extend_from_slice(br#""}"#);
    let mut b = e.buf.clone();
    b.push(0x06);
    b.extend_from_slice(&(json.len() as u32).to_be_bytes());
    b.extend_from_slice(&json);
    let (shared, _, res) = load(&b, false);
    res.unwrap();
    assert_eq!(shared.lock().status, MigStatus::Completed);
    assert!(shared.lock().vmdesc.is_none(), "a vmdesc above the limit was kept");
    // The same JSON within the limit is kept.
    let small = br#"{"page_size":4096,"devices":[]}"#;
    let mut b = e.buf.clone();
    b.push(0x06);
    b.extend_from_slice(&(small.len() as u32).to_be_bytes());
    b.extend_from_slice(small);
    let (shared, _, res) = load(&b, false);
    res.unwrap();
    assert!(shared.lock().vmdesc.is_some());
}
