//! Multifd loads fed from memory: the real multifd recordings of QEMU 7.2,
//! 10.0 and 11.1 in `wire/tests/streams/` (every channel, one thread each),
//! and damaged variants of them.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use serde_json::{json, Value};

use super::{ChannelError, MultifdConfig, MultifdRecv};
use crate::channel::{RecordingSink, Sock};
use crate::load::{Config, LoadError, Loader};
use crate::postcopy::{Pattern, VcpuConfig};
use crate::ram::RamTable;
use crate::state::{Capability, MigStatus, Shared};
use wire::multifd::{Compression, PacketFormat, PacketLayout, RamPacket};

const RECORDINGS: &[&str] = &[
    "qemu-7.2-multifd2",
    "qemu-10.0-multifd2",
    "qemu-10.0-multifd2-zlib",
    "qemu-10.0-multifd2-zstd",
    "qemu-11.1-multifd2",
    "qemu-11.1-multifd2-pc-q35-7.2",
];

const PAGE: usize = 4096;

struct Recording {
    facts: Value,
    main: Vec<u8>,
    /// The multifd connections, in accept order.
    channels: Vec<Vec<u8>>,
}

fn dir() -> String {
    format!("{}/../wire/tests/streams", env!("CARGO_MANIFEST_DIR"))
}

fn recording(base: &str) -> Option<Recording> {
    let facts: Value =
        serde_json::from_slice(&std::fs::read(format!("{}/{base}.json", dir())).ok()?).ok()?;
    let mut main = Vec::new();
    let mut channels = Vec::new();
    for c in facts["channels"].as_array()? {
        let b = std::fs::read(format!("{}/{}", dir(), c["file"].as_str()?)).ok()?;
        match c["role"].as_str()? {
            "main" => main = b,
            _ => channels.push(b),
        }
    }
    Some(Recording { facts, main, channels })
}

struct Outcome {
    shared: Shared,
    main: Result<(), LoadError>,
    channels: Vec<Result<(), ChannelError>>,
}

/// Load `main` and `channels` concurrently, like rust-dest does with real
/// connections, with the destination parameters `params`.
fn load(main: &[u8], channels: &[Vec<u8>], params: &Value, uuid: [u8; 16]) -> Outcome {
    load_via(main, channels, params, uuid, false)
}

/// [`load`], the channels either read from memory or (`sockets`) sent over
/// unix socket pairs and received like real connections: uncompressed
/// pages straight into guest RAM.
fn load_via(
    main: &[u8],
    channels: &[Vec<u8>],
    params: &Value,
    uuid: [u8; 16],
    sockets: bool,
) -> Outcome {
    let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
    {
        let mut g = shared.lock();
        g.capabilities.set(Capability::Multifd, true);
        for (k, v) in params.as_object().unwrap() {
            g.parameters.insert(k.clone(), v.clone());
        }
    }
    let mf = MultifdRecv::new(shared.clone(), MultifdConfig::from_shared(&shared, uuid));
    let threads: Vec<_> = channels
        .iter()
        .map(|c| {
            let (mf, c) = (mf.clone(), c.clone());
            if !sockets {
                return std::thread::spawn(move || {
                    mf.run_channel(Box::new(std::io::Cursor::new(c)))
                });
            }
            let (mut w, r) = UnixStream::pair().unwrap();
            std::thread::spawn(move || {
                // The reader may stop early (a failed migration).
                let _ = w.write_all(&c);
            });
            let direct = Some(Sock::Unix(r.try_clone().unwrap()));
            std::thread::spawn(move || mf.run_channel_direct(Box::new(Sock::Unix(r)), direct))
        })
        .collect();
    let cfg = Config {
        vcpu: VcpuConfig { pattern: Pattern::None, threads: 1, rate: 0, range: None },
        ..Config::default()
    };
    let sink = RecordingSink::default();
    let main = Loader::new(shared.clone(), cfg, Box::new(sink))
        .with_multifd(mf)
        .run(Box::new(std::io::Cursor::new(main.to_vec())));
    let channels = threads.into_iter().map(|t| t.join().unwrap()).collect();
    Outcome { shared, main, channels }
}

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

/// mem0 and pc.bios as the sidecar describes them.
fn check_ram(base: &str, shared: &Shared, facts: &Value) {
    let mem0 = shared.ram().get("mem0").unwrap().read_all();
    let nonzero = facts["mem0_nonzero_pages_crc32"].as_object().unwrap();
    for (i, page) in mem0.chunks(PAGE).enumerate() {
        let key = format!("{:#x}", i * PAGE);
        match nonzero.get(&key) {
            Some(crc) => {
                assert_eq!(format!("{:08x}", crc32(page)), crc.as_str().unwrap(), "{base} {key}")
            }
            None => assert!(page.iter().all(|&b| b == 0), "{base}: mem0 page {key} not zero"),
        }
    }
    let bios = shared.ram().get("pc.bios").unwrap().read_all();
    assert_eq!(format!("{:08x}", crc32(&bios)), facts["pc_bios_crc32"].as_str().unwrap(), "{base}");
}

#[test]
fn recorded_multifd_streams_load_completely() {
    recorded_streams_load(false);
}

#[test]
fn recorded_multifd_streams_load_completely_over_sockets() {
    recorded_streams_load(true);
}

fn recorded_streams_load(sockets: bool) {
    let mut n = 0;
    for base in RECORDINGS {
        let Some(rec) = recording(base) else { continue };
        n += 1;
        let o = load_via(&rec.main, &rec.channels, &rec.facts["parameters"], [0; 16], sockets);
        o.main.unwrap_or_else(|e| panic!("{base}: {e}"));
        for c in &o.channels {
            c.as_ref().unwrap_or_else(|e| panic!("{base}: {e}"));
        }
        assert_eq!(o.shared.lock().status, MigStatus::Completed, "{base}");
        check_ram(base, &o.shared, &rec.facts);
        let mf_bytes: u64 = rec.channels.iter().map(|c| c.len() as u64).sum();
        let c = o.shared.counters();
        let counted = c.multifd_bytes.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(counted, mf_bytes, "{base}");
        // 7.2 sources do not count the two initial packets.
        let source = rec.facts["source_ram_stats"]["multifd-bytes"].as_u64().unwrap();
        let init = if base.starts_with("qemu-7.2") { 2 * 64 } else { 0 };
        assert_eq!(counted, source + init, "{base}: the source's multifd-bytes");
        let g = o.shared.lock();
        assert_eq!(g.multifd_channels.len(), 2, "{base}");
        let per: u64 = g.multifd_channels.values().map(|s| s.bytes).sum();
        assert_eq!(per, mf_bytes, "{base}");
        let syncs: Vec<u64> = g.multifd_channels.values().map(|s| s.syncs).collect();
        assert!(syncs[0] > 0 && syncs[0] == syncs[1], "{base}: {syncs:?}");
    }
    eprintln!("{n} multifd recording(s) loaded");
}

#[test]
fn truncated_channel_fails_cleanly() {
    for base in ["qemu-10.0-multifd2", "qemu-7.2-multifd2", "qemu-10.0-multifd2-zstd"] {
        let Some(rec) = recording(base) else { continue };
        let big = (0..rec.channels.len()).max_by_key(|&i| rec.channels[i].len()).unwrap();
        for cut in [10, 64 + 100, rec.channels[big].len() / 2, rec.channels[big].len() - 1] {
            let mut chans = rec.channels.clone();
            chans[big].truncate(cut);
            let sockets = cut % 2 == 1;
            let o = load_via(&rec.main, &chans, &rec.facts["parameters"], [0; 16], sockets);
            assert!(o.main.is_err(), "{base} cut {cut}");
            let g = o.shared.lock();
            assert_eq!(g.status, MigStatus::Failed, "{base} cut {cut}");
            let desc = g.error_desc.clone().unwrap();
            assert!(desc.starts_with("multifd channel "), "{base} cut {cut}: {desc}");
            assert!(desc.contains("byte offset"), "{base} cut {cut}: {desc}");
            assert!(desc.contains("closed"), "{base} cut {cut}: {desc}");
        }
    }
}

#[test]
fn bad_initial_packets_give_qemus_errors() {
    let Some(rec) = recording("qemu-10.0-multifd2") else { return };
    let params = &rec.facts["parameters"];
    // The channel's error (the migration fails with it, unless the main
    // channel already completed with the other channels).
    let fail = |chans: Vec<Vec<u8>>, params: &Value, uuid: [u8; 16]| {
        let o = load(&rec.main, &chans, params, uuid);
        let errs: Vec<String> =
            o.channels.iter().filter_map(|c| c.as_ref().err()).map(|e| e.to_string()).collect();
        assert!(!errs.is_empty());
        let g = o.shared.lock();
        if o.main.is_err() {
            assert_eq!(g.status, MigStatus::Failed);
            assert!(errs.contains(g.error_desc.as_ref().unwrap()), "{errs:?} {:?}", g.error_desc);
        }
        errs.join("; ")
    };
    let mut chans = rec.channels.clone();
    chans[0][0] = 0x12;
    let d = fail(chans, params, [0; 16]);
    assert!(d.contains("multifd: received packet magic 12223344 expected 11223344"), "{d}");
    assert!(d.contains("at byte offset 0"), "{d}");
    let mut chans = rec.channels.clone();
    chans[1][7] = 2;
    let d = fail(chans, params, [0; 16]);
    assert!(d.contains("multifd: received packet version 2 expected 1"), "{d}");
    assert!(d.contains("at byte offset 4"), "{d}");
    let d = fail(rec.channels.clone(), params, [1; 16]);
    assert!(
        d.contains("received uuid '00000000-0000-0000-0000-000000000000' and expected uuid '01010101-0101-0101-0101-010101010101' for channel"),
        "{d}"
    );
    assert!(d.contains("at byte offset 8"), "{d}");
    let one = json!({"multifd-channels": 1, "multifd-compression": "none"});
    let d = fail(rec.channels.clone(), &one, [0; 16]);
    assert!(d.contains("is greater than number of channels 1"), "{d}");
    assert!(d.contains("at byte offset 24"), "{d}");
    let mut chans = rec.channels.clone();
    let id0 = chans[0][24];
    chans[1][24] = id0;
    let d = fail(chans, params, [0; 16]);
    assert!(d.contains(&format!("received channel id {id0} twice")), "{d}");
}

#[test]
fn compression_mismatch_and_damaged_payloads_fail() {
    let Some(rec) = recording("qemu-10.0-multifd2-zlib") else { return };
    // The destination expects no compression.
    let none = json!({"multifd-channels": 2, "multifd-compression": "none"});
    let o = load(&rec.main, &rec.channels, &none, [0; 16]);
    assert!(o.main.is_err());
    let d = o.shared.lock().error_desc.clone().unwrap();
    assert!(d.contains("compressed with Zlib"), "{d}");
    // Garbage in the first payload of a channel.
    let mut chans = rec.channels.clone();
    let fmt = PacketFormat::x86(PacketLayout::V9);
    let mut at = 64;
    let payload = loop {
        let mut c = wire::Cursor::new(&chans[0][at..], at as u64);
        let p = RamPacket::decode(&mut c, &fmt).unwrap();
        let n = p.payload_len(&fmt, Compression::Zlib, at as u64).unwrap();
        at += fmt.packet_len();
        if n > 0 {
            break at;
        }
    };
    for b in &mut chans[0][payload + 2..payload + 40] {
        *b ^= 0x5a;
    }
    let o = load(&rec.main, &chans, &rec.facts["parameters"], [0; 16]);
    assert!(o.main.is_err());
    let d = o.shared.lock().error_desc.clone().unwrap();
    assert!(d.contains("zlib"), "{d}");
    assert!(d.contains(&format!("byte offset {}", payload - fmt.packet_len())), "{d}");
}

#[test]
fn sync_mode_follows_the_machine_type() {
    use super::flush_after_each_section as f;
    assert_eq!(f("pc-q35-7.2"), Some(true));
    assert_eq!(f("pc-i440fx-8.0"), Some(true));
    assert_eq!(f("pc-q35-8.1"), Some(false));
    assert_eq!(f("pc-q35-11.1"), Some(false));
    assert_eq!(f("q35"), None);
    assert_eq!(f("pc"), None);
}

/// A channel with its initial packet and `packets` (pages of 0xaN for page N).
fn channel_bytes(packets: &[(Vec<u64>, Vec<u64>)]) -> Vec<u8> {
    let fmt = PacketFormat::x86(PacketLayout::V9);
    let mut e = wire::Encoder::new();
    wire::multifd::InitPacket { uuid: [0; 16], id: 0 }.encode(&mut e);
    for (n, (normal, zero)) in packets.iter().enumerate() {
        let p = RamPacket {
            pages_alloc: fmt.page_count(),
            normal_pages: normal.len() as u32,
            zero_pages: zero.len() as u32,
            packet_num: n as u64,
            ramblock: "mem0".into(),
            offsets: normal.iter().chain(zero).map(|&pg| pg * PAGE as u64).collect(),
            ..RamPacket::default()
        };
        p.encode(&mut e, &fmt);
        for &pg in normal {
            e.bytes(&[0xa0 | pg as u8; PAGE]);
        }
    }
    e.finish()
}

#[test]
fn pages_after_listen_are_placed_through_userfaultfd() {
    use crate::postcopy::PostcopyRuntime;
    use std::sync::atomic::Ordering::Relaxed;
    let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
    {
        let mut g = shared.lock();
        g.capabilities.set(Capability::Multifd, true);
        g.parameters.insert("multifd-channels".into(), json!(1));
    }
    let b = shared.ram().add("mem0", 16 * PAGE as u64).unwrap();
    // Page 1 came in precopy.
    b.mapping.write(PAGE, &[0x11; PAGE]);
    b.received.set(1);
    let mf = MultifdRecv::new(shared.clone(), MultifdConfig::from_shared(&shared, [0; 16]));
    mf.blocks_ready();
    let vcpu = VcpuConfig { pattern: Pattern::None, threads: 1, rate: 0, range: None };
    let rt = match PostcopyRuntime::start(shared.clone(), None, vcpu) {
        Ok(rt) => Arc::new(rt),
        Err(e) => return eprintln!("skipped: no userfaultfd here ({e})"),
    };
    *mf.placement_mut() = Some(rt.clone());
    // A thread faults on page 3 before any channel delivers it.
    let b2 = b.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; PAGE];
        b2.mapping.read(3 * PAGE, &mut buf);
        buf
    });
    let c = shared.counters();
    let t0 = std::time::Instant::now();
    while c.faults.load(Relaxed) == 0 {
        assert!(t0.elapsed().as_secs() < 10, "the reader never faulted");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(!reader.is_finished());
    // Pages 3, 4 with contents, 5, 6 zero; then page 4 again.
    let bytes = channel_bytes(&[(vec![3, 4], vec![5, 6]), (vec![4], vec![])]);
    let second = 64 + PacketFormat::x86(PacketLayout::V9).packet_len() + 2 * PAGE;
    let res = mf.run_channel(Box::new(std::io::Cursor::new(bytes)));
    assert_eq!(reader.join().unwrap(), vec![0xa3; PAGE], "the faulting thread woke with the page");
    for pg in [1, 3, 4, 5, 6] {
        assert!(b.received.get(pg), "page {pg} received");
    }
    assert!(!b.received.get(7));
    let mut buf = vec![0u8; PAGE];
    b.mapping.read(4 * PAGE, &mut buf);
    assert_eq!(buf, vec![0xa4; PAGE]);
    b.mapping.read(5 * PAGE, &mut buf);
    assert!(buf.iter().all(|&x| x == 0));
    b.mapping.read(PAGE, &mut buf);
    assert_eq!(buf, vec![0x11; PAGE], "the precopy page stays");
    assert_eq!(c.pages_placed_requested.load(Relaxed), 1);
    assert_eq!(c.pages_placed_stream.load(Relaxed), 3);
    // Placed atomically: a page sent twice fails like on the main channel.
    let e = res.expect_err("page 4 placed twice").to_string();
    assert_eq!(
        e,
        format!("multifd channel 0: page 0x4000 of RAMBlock \"mem0\" arrived but is already present (placed twice) (packet at byte offset {second})")
    );
    assert_eq!(shared.lock().status, MigStatus::Failed);
    mf.end();
    rt.shutdown();
}

/// The initial packet of channel `id` (zero uuid), optionally with a wrong
/// version.
fn init_packet(id: u8, version: u32) -> Vec<u8> {
    let mut e = wire::Encoder::new();
    wire::multifd::InitPacket { uuid: [0; 16], id }.encode(&mut e);
    e.buf[4..8].copy_from_slice(&version.to_be_bytes());
    e.buf
}

#[test]
fn main_channel_waits_for_every_channel() {
    let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
    let mf = MultifdRecv::new(shared.clone(), MultifdConfig::from_shared(&shared, [0; 16]));
    let waiter = {
        let mf = mf.clone();
        std::thread::spawn(move || mf.wait_all_connected())
    };
    let run = |id: u8, version: u32| {
        let (mf, b) = (mf.clone(), init_packet(id, version));
        std::thread::spawn(move || mf.run_channel(Box::new(std::io::Cursor::new(b))))
    };
    // Channel 1 alone (it then waits for the RAMBlocks, then ends).
    let c1 = run(1, 1);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!waiter.is_finished(), "the main channel must wait for channel 0");
    let c0 = run(0, 1);
    assert!(waiter.join().unwrap(), "both channels connected");
    mf.end();
    let _ = (c0.join().unwrap(), c1.join().unwrap());

    // A bad initial packet fails the migration and releases the waiter.
    let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
    let mf = MultifdRecv::new(shared.clone(), MultifdConfig::from_shared(&shared, [0; 16]));
    let bad = {
        let mf = mf.clone();
        std::thread::spawn(move || {
            mf.run_channel(Box::new(std::io::Cursor::new(init_packet(0, 2))))
        })
    };
    assert!(!mf.wait_all_connected());
    assert!(bad.join().unwrap().is_err());
    assert_eq!(shared.lock().status, MigStatus::Failed);
}

/// Channel 0 arrives over TCP and is reset (a RST, zero linger) inside its
/// first packet's pages; its thread waits for the RAMBlocks with the rest
/// unread. The main channel then closes inside a record: the migration's
/// error is the reset, not the main channel's end (the source gave up
/// because of the reset).
#[test]
fn a_reset_channel_is_blamed_before_the_main_channels_end() {
    use nix::sys::socket::{setsockopt, sockopt::Linger};
    use std::net::{TcpListener, TcpStream};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut src = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (dst, _) = l.accept().unwrap();
    let bytes = channel_bytes(&[(vec![3, 4], vec![])]);
    src.write_all(&bytes[..bytes.len() - PAGE]).unwrap();
    setsockopt(&src, Linger, &libc::linger { l_onoff: 1, l_linger: 0 }).unwrap();
    drop(src);
    let probe = Sock::Tcp(dst.try_clone().unwrap());
    let t0 = std::time::Instant::now();
    while !probe.error_pending() {
        assert!(t0.elapsed().as_secs() < 10, "the reset never arrived");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }

    let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
    shared.lock().capabilities.set(Capability::Multifd, true);
    shared.lock().parameters.insert("multifd-channels".into(), json!(1));
    let mf = MultifdRecv::new(shared.clone(), MultifdConfig::from_shared(&shared, [0; 16]));
    let chan = {
        let mf = mf.clone();
        let direct = Some(Sock::Tcp(dst.try_clone().unwrap()));
        std::thread::spawn(move || mf.run_channel_direct(Box::new(Sock::Tcp(dst)), direct))
    };
    // As the session does before it reads the main channel.
    assert!(mf.wait_all_connected());
    // The stream header and half the configuration section's header.
    let main = recording("qemu-10.0-multifd2").map(|r| r.main[..12].to_vec());
    let main = main.unwrap_or_else(|| vec![0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3, 7, 0]);
    let res = Loader::new(shared.clone(), Config::default(), Box::new(RecordingSink::default()))
        .with_multifd(mf)
        .run(Box::new(std::io::Cursor::new(main)));
    let e = res.expect_err("the main channel was truncated");
    assert!(
        matches!(&e, LoadError::ChannelReset { id: 0, at: 64, main } if main.is_truncation()),
        "{e:?}"
    );
    let desc = shared.lock().error_desc.clone().unwrap();
    assert!(
        desc.starts_with(
            "multifd channel 0: connection reset after byte offset 64; then stream truncated"
        ),
        "{desc}"
    );
    assert_eq!(shared.lock().status, MigStatus::Failed);
    assert!(matches!(chan.join().unwrap(), Err(ChannelError::Ended { id: 0, .. })));
}
