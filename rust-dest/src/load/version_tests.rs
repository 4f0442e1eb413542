//! Loader tests of the per-version behaviour (no QEMU): the device catalogue,
//! the globalstate run state and the version rules, on the streams recorded
//! from QEMU 7.2, 10.0 and 11.1 (`wire/tests/streams/`) and on small
//! synthetic streams. The live comparison with QEMU is in
//! `scenarios/stream-device-*.toml`, `stream-globalstate-*.toml`,
//! `stream-switchover-start.toml` and `stream-zero-fill.toml`.

use std::sync::Arc;

use super::{Config, LoadError, Loader};
use crate::catalogue::{Catalogue, DeviceCheck};
use crate::channel::RecordingSink;
use crate::compat::QemuVersion;
use crate::postcopy::{Pattern, VcpuConfig};
use crate::ram::RamTable;
use crate::state::{Capability, MigStatus, Shared};
use wire::consts::MIG_CMD_SWITCHOVER_START;
use wire::ramrec::{encode_ram_record, BlockEntry, BlockRef, RamContext, RamRecord};
use wire::stream::*;
use wire::Encoder;

const VERSIONS: [&str; 3] = ["7.2", "10.0", "11.1"];

fn catalogue(v: &str) -> Catalogue {
    let p = format!("{}/catalogues/qemu-{v}.devices", env!("CARGO_MANIFEST_DIR"));
    Catalogue::load(std::path::Path::new(&p)).unwrap()
}

fn recorded(name: &str) -> Option<Vec<u8>> {
    std::fs::read(format!("{}/../wire/tests/streams/{name}.bin", env!("CARGO_MANIFEST_DIR"))).ok()
}

/// Load `bytes` as QEMU `v` would, with its catalogue (instances known).
fn load_as(v: &str, bytes: &[u8], postcopy: bool) -> (Shared, Result<(), LoadError>) {
    let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
    if postcopy {
        shared.lock().capabilities.set(Capability::PostcopyRam, true);
    }
    let cfg = Config {
        vcpu: VcpuConfig { pattern: Pattern::None, threads: 1, rate: 0, range: None },
        compat: v.parse().unwrap(),
        devices: Some(DeviceCheck { catalogue: Arc::new(catalogue(v)), instances_known: true }),
        ..Config::default()
    };
    let src = std::io::Cursor::new(bytes.to_vec());
    let res =
        Loader::new(shared.clone(), cfg, Box::new(RecordingSink::default())).run(Box::new(src));
    (shared, res)
}

/// Position of the section header of `idstr` (its counted name).
fn section_name_at(bytes: &[u8], idstr: &str) -> usize {
    let mut pat = vec![idstr.len() as u8];
    pat.extend_from_slice(idstr.as_bytes());
    bytes.windows(pat.len()).position(|w| w == pat).expect("section present")
}

#[test]
fn real_streams_pass_their_own_catalogue() {
    for v in VERSIONS {
        for (kind, postcopy) in [("precopy", false), ("postcopy", true)] {
            let Some(bytes) = recorded(&format!("qemu-{v}-{kind}")) else { continue };
            let (shared, res) = load_as(v, &bytes, postcopy);
            res.unwrap_or_else(|e| panic!("{v} {kind}: {e}"));
            assert_eq!(shared.lock().status, MigStatus::Completed, "{v} {kind}");
        }
    }
}

#[test]
fn a_device_version_out_of_range_fails_with_qemus_text() {
    for v in VERSIONS {
        let Some(mut bytes) = recorded(&format!("qemu-{v}-precopy")) else { continue };
        // timer: be32 instance, be32 version after the name.
        let at = section_name_at(&bytes, "timer") + 1 + 5 + 4;
        bytes[at..at + 4].copy_from_slice(&99u32.to_be_bytes());
        let (shared, res) = load_as(v, &bytes, false);
        let e = res.unwrap_err().to_string();
        let savevm = if v == "11.1" { "" } else { "savevm: " };
        assert!(e.contains(&format!("{savevm}unsupported version 99 for 'timer' v2")), "{v}: {e}");
        assert_eq!(shared.lock().status, MigStatus::Failed);
    }
}

#[test]
fn globalstate_run_states() {
    for v in VERSIONS {
        let Some(bytes) = recorded(&format!("qemu-{v}-precopy")) else { continue };
        let rs = section_name_at(&bytes, "globalstate") + 1 + 11 + 8 + 4;
        // The recorded name ("running", or "prelaunch" for 7.2's stopped source).
        assert!(bytes[rs].is_ascii_lowercase(), "{v}");
        for (name, want) in [
            ("bogus", Some("invalid parameter value: bogus")),
            ("", Some("invalid parameter value: ")),
            ("debug", Some("invalid runstate transition: 'inmigrate' -> 'debug'")),
            ("paused", None),
        ] {
            let mut b = bytes.clone();
            let mut n = name.as_bytes().to_vec();
            n.resize(10, 0);
            b[rs..rs + 10].copy_from_slice(&n);
            let (shared, res) = load_as(v, &b, false);
            match want {
                Some(w) => {
                    let e = res.unwrap_err().to_string();
                    assert!(e.contains(w), "{v}: {e}");
                }
                None => {
                    res.unwrap();
                    assert_eq!(shared.lock().globalstate.as_deref(), Some("paused"));
                }
            }
        }
    }
}

/// header, RAM START with one 4-page block, a PART with `recs`, EOF and an
/// empty vmdesc; `cmd` (a command) between the RAM and EOF.
fn small_stream(fill: u8, cmd: Option<u16>) -> Vec<u8> {
    let ctx = RamContext::x86();
    let mut e = Encoder::new();
    let cfg = Configuration { machine: "pc-q35-7.2".into(), ..Default::default() };
    encode_header(&mut e, &Header { version: 3, configuration: Some(cfg) });
    encode_section_open(&mut e, SectionKind::Start, 2, "ram", 0, 4);
    let blocks =
        vec![BlockEntry { name: "b".into(), used_length: 4 * 4096, page_size: None, gpa: None }];
    encode_ram_record(&mut e, &RamRecord::MemSize { total: 4 * 4096, blocks }, &ctx);
    encode_ram_record(&mut e, &RamRecord::Eos, &ctx);
    encode_footer(&mut e, 2);
    encode_section_cont(&mut e, SectionKind::End, 2);
    let page = [7u8; 4096];
    for r in [
        RamRecord::Page { addr: 0, block: BlockRef::Named("b"), data: &page },
        RamRecord::Zero { addr: 0, block: BlockRef::Continue, fill },
        RamRecord::Zero { addr: 8192, block: BlockRef::Continue, fill },
        RamRecord::Eos,
    ] {
        encode_ram_record(&mut e, &r, &ctx);
    }
    encode_footer(&mut e, 2);
    if let Some(c) = cmd {
        encode_command(&mut e, c, &[]);
    }
    encode_eof(&mut e);
    encode_vmdesc(&mut e, br#"{"page_size": 4096, "devices": []}"#);
    e.buf
}

#[test]
fn zero_fill_byte_per_version() {
    let bytes = small_stream(0x5a, None);
    let (shared, res) = load_as("7.2", &bytes, false);
    res.unwrap();
    let ram = shared.ram().get("b").unwrap().read_all();
    // Both the page sent before and the page never sent are filled.
    assert!(ram[..4096].iter().all(|&b| b == 0x5a));
    assert!(ram[4096..8192].iter().all(|&b| b == 0));
    assert!(ram[8192..12288].iter().all(|&b| b == 0x5a));
    for v in ["10.0", "11.1"] {
        let e = load_as(v, &bytes, false).1.unwrap_err().to_string();
        assert!(e.contains("fill byte 0x5a"), "{v}: {e}");
    }
    // A zero fill byte clears a page sent before, on every version.
    for v in VERSIONS {
        let (shared, res) = load_as(v, &small_stream(0, None), false);
        res.unwrap();
        assert!(shared.ram().get("b").unwrap().read_all().iter().all(|&b| b == 0), "{v}");
    }
}

#[test]
fn switchover_start_per_version() {
    let bytes = small_stream(0, Some(MIG_CMD_SWITCHOVER_START));
    let e = load_as("7.2", &bytes, false).1.unwrap_err().to_string();
    assert!(e.contains("MIG_CMD 0xb unknown (len 0x0)"), "{e}");
    for v in ["10.0", "11.1"] {
        load_as(v, &bytes, false).1.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
    assert!(QemuVersion::resolve(None, Some("pc-q35-7.2")) < QemuVersion::new(10, 0));
}
