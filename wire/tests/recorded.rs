//! Decodes migration streams recorded from real QEMU 7.2, 10.0 and 11.1
//! (precopy and postcopy; `tests/streams/README.md` says how they were made)
//! end to end with the wire crate, and checks them against the facts the
//! recorder read from the source QEMU (`tests/streams/*.json`).

#[path = "recorded/walk.rs"]
mod walk;

use serde_json::Value;
use walk::{walk, Item};
use wire::command::Command;
use wire::stream::SectionKind;
use wire::{DecodeError, TARGET_PAGE_SIZE};

const MIB: u64 = 1 << 20;

fn load(name: &str) -> (Vec<u8>, Value) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/streams/");
    let bin = std::fs::read(format!("{dir}{name}.bin")).expect("recorded stream");
    let facts = std::fs::read(format!("{dir}{name}.json")).expect("recorded facts");
    (bin, serde_json::from_slice(&facts).expect("facts JSON"))
}

/// CRC-32 (IEEE, as Python's `zlib.crc32`), which the recorder stores.
fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
        *t = c;
    }
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// Commands of the stream in order, package contents flattened in place
/// (the PACKAGED command itself comes first).
fn commands(items: &[Item]) -> Vec<Command> {
    let mut out = Vec::new();
    for it in items {
        match it {
            Item::Command(c) => out.push(c.clone()),
            Item::Package(inner) => {
                out.push(Command::Packaged(0));
                out.extend(commands(inner));
            }
            _ => {}
        }
    }
    out
}

fn check_stream(ver: &str, mode: &str) {
    let name = format!("qemu-{ver}-{mode}");
    let (buf, facts) = load(&name);
    assert_eq!(buf.len() as u64, facts["stream_bytes"].as_u64().unwrap(), "{name}: size");
    let (w, r) = walk(&buf, true);
    r.unwrap_or_else(|e| panic!("{name}: {e}"));
    let items: Vec<&Item> = w.items.iter().map(|(_, i)| i).collect();

    // Header: the configuration names the versioned q35 machine type.
    let Item::Header { machine } = items[0] else { panic!("{name}: no header") };
    assert!(machine.starts_with(&format!("pc-q35-{ver}")), "{name}: machine {machine}");
    assert_eq!(machine, facts["machine"].as_str().unwrap(), "{name}");

    // MEM_SIZE: exactly the source's RAMBlocks (HMP `info ramblock`).
    let (total, blocks) = w.mem_size.as_ref().expect("MEM_SIZE");
    let got: Vec<(&str, u64)> = blocks.iter().map(|b| (b.name.as_str(), b.used_length)).collect();
    let want: Vec<(&str, u64)> = facts["ramblocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap(), b["used_length"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, want, "{name}: MEM_SIZE block list");
    assert_eq!(*total, got.iter().map(|b| b.1).sum::<u64>());
    assert!(got.contains(&("mem0", 64 * MIB)), "{name}: {got:?}");
    for rom in ["pc.bios", "/rom@etc/acpi/tables", "/rom@etc/table-loader", "/rom@etc/acpi/rsdp"] {
        assert!(got.iter().any(|b| b.0 == rom), "{name}: no {rom} in {got:?}");
    }

    // Every page of every block was sent (PAGE or ZERO) at least once.
    for (block, cov) in &w.covered {
        let missing = cov.iter().filter(|c| !**c).count();
        assert_eq!(missing, 0, "{name}: {missing} pages of {block} never sent");
    }
    assert_eq!(w.covered["mem0"].len() as u64, 64 * MIB / TARGET_PAGE_SIZE);

    // The RAM section opens first, is continued by PARTs, and is closed by
    // exactly one END, after which no RAM follows.
    let ram: Vec<SectionKind> = items
        .iter()
        .filter_map(|i| if let Item::Ram { kind, .. } = i { Some(*kind) } else { None })
        .collect();
    assert_eq!(ram.first(), Some(&SectionKind::Start), "{name}");
    assert_eq!(ram.last(), Some(&SectionKind::End), "{name}");
    assert!(ram[1..ram.len() - 1].iter().all(|k| *k == SectionKind::Part), "{name}: {ram:?}");
    let end_at = items.iter().position(|i| matches!(i, Item::Ram { kind: SectionKind::End, .. }));
    let eof_at = items.iter().position(|i| **i == Item::Eof).expect("EOF");
    assert!(end_at.unwrap() < eof_at, "{name}: RAM END after EOF");

    // Replayed guest RAM equals the source's memory-backend file at the end.
    let mem0 = &w.blocks["mem0"];
    let nonzero: &serde_json::Map<String, Value> =
        facts["mem0_nonzero_pages_crc32"].as_object().unwrap();
    let mut seen_nonzero = 0;
    for (i, page) in mem0.chunks(TARGET_PAGE_SIZE as usize).enumerate() {
        let key = format!("{:#x}", i as u64 * TARGET_PAGE_SIZE);
        match nonzero.get(&key) {
            Some(crc) => {
                assert_eq!(format!("{:08x}", crc32(page)), crc.as_str().unwrap(), "{name} {key}");
                seen_nonzero += 1;
            }
            None => assert!(page.iter().all(|b| *b == 0), "{name}: page {key} not zero"),
        }
    }
    assert_eq!(seen_nonzero, nonzero.len(), "{name}");
    assert!(seen_nonzero >= 4, "{name}: the recorder's pattern pages are missing");
    let bios = format!("{:08x}", crc32(&w.blocks["pc.bios"]));
    assert_eq!(bios, facts["pc_bios_crc32"].as_str().unwrap(), "{name}: pc.bios");

    let cmds = commands(&items.iter().map(|i| (*i).clone()).collect::<Vec<_>>());
    let summary: Vec<String> = items
        .iter()
        .map(|i| match i {
            Item::Header { .. } => "H".into(),
            Item::Ram { kind, records, .. } => format!("{}{records}", kind.name()),
            Item::Device { idstr, .. } => format!("[{idstr}]"),
            Item::Command(c) => c.name().to_string(),
            Item::Package(p) => format!("PKG({})", p.len()),
            Item::Eof => "EOF".into(),
            Item::VmDescription => "VMDESC".into(),
        })
        .collect();
    println!(
        "{name}: {} records, {} pages, {} zero pages ({} after RUN): {}",
        items.len(),
        w.pages,
        w.zero_pages,
        w.pages_after_run,
        summary.join(" ")
    );
    let (eof_range, _) = w.items.iter().find(|(_, i)| *i == Item::Eof).unwrap();
    // QEMU 9.2 and later announce the switchover (MIG_CMD_SWITCHOVER_START,
    // `migration/savevm.c`) on machine types that enable it.
    let switchover = ver != "7.2";
    let at = (eof_range.start, buf.len() as u64);
    if mode == "precopy" {
        check_precopy(&name, &w, &items, &cmds, at, switchover);
    } else {
        check_postcopy(&name, &w, &items, &cmds, at, switchover);
    }
}

fn check_precopy(
    name: &str,
    w: &walk::Walk,
    items: &[&Item],
    cmds: &[Command],
    (eof, len): (u64, u64),
    switchover: bool,
) {
    // After RAM END: device sections, EOF, and the vmdesc that ends the stream.
    let n = items.len();
    assert_eq!(items[n - 1], &Item::VmDescription, "{name}");
    assert_eq!(items[n - 2], &Item::Eof, "{name}");
    let (vm_range, _) = &w.items[n - 1];
    assert_eq!((vm_range.start, vm_range.end), (eof + 1, len), "{name}: vmdesc placement");
    let end_at = items.iter().position(|i| matches!(i, Item::Ram { kind: SectionKind::End, .. }));
    let devices: Vec<&str> = items[end_at.unwrap() + 1..n - 2]
        .iter()
        .map(|i| match i {
            Item::Device { idstr, .. } => idstr.as_str(),
            o => panic!("{name}: {o:?} among the device sections"),
        })
        .collect();
    for d in ["timer", "cpu_common", "cpu", "globalstate"] {
        assert!(devices.contains(&d), "{name}: no {d} section in {devices:?}");
    }
    let desc = w.vmdesc.as_ref().unwrap();
    assert_eq!(desc["page_size"].as_u64(), Some(TARGET_PAGE_SIZE), "{name}");
    let described = desc["devices"].as_array().unwrap().len();
    assert_eq!(described, devices.len(), "{name}: vmdesc describes every device section");
    let want: &[Command] = if switchover { &[Command::SwitchoverStart] } else { &[] };
    assert_eq!(cmds, want, "{name}: commands of a precopy stream");
}

fn check_postcopy(
    name: &str,
    w: &walk::Walk,
    items: &[&Item],
    cmds: &[Command],
    (eof, len): (u64, u64),
    switchover: bool,
) {
    // EOF is the last byte: postcopy sends no vmdesc.
    assert_eq!(eof, len - 1, "{name}: EOF offset");
    assert_eq!(items.last(), Some(&&Item::Eof), "{name}");
    assert!(w.vmdesc.is_none(), "{name}");
    // ADVISE -> DISCARD* -> PACKAGED[LISTEN, devices, RUN]; the return path
    // opens first.
    let seq: Vec<&str> = cmds
        .iter()
        .filter(|c| !matches!(c, Command::Ping(_)))
        .map(|c| match c {
            Command::PostcopyRamDiscard(_) => "DISCARD",
            Command::PostcopyAdvise(_) => "ADVISE",
            Command::PostcopyListen => "LISTEN",
            Command::PostcopyRun => "RUN",
            Command::Packaged(_) => "PACKAGED",
            Command::OpenReturnPath => "OPEN_RETURN_PATH",
            other => other.name(),
        })
        .collect();
    let mut it = seq.iter().copied().peekable();
    assert_eq!(it.next(), Some("OPEN_RETURN_PATH"), "{name}: {seq:?}");
    assert_eq!(it.next(), Some("ADVISE"), "{name}: {seq:?}");
    if switchover {
        assert_eq!(it.next(), Some("SWITCHOVER_START"), "{name}: {seq:?}");
    }
    while it.peek() == Some(&"DISCARD") {
        it.next();
    }
    let rest: Vec<&str> = it.collect();
    assert_eq!(rest, ["PACKAGED", "LISTEN", "RUN"], "{name}: {seq:?}");
    assert!(seq.contains(&"DISCARD"), "{name}: postcopy started with nothing to discard");
    let Some(Command::PostcopyAdvise(Some(adv))) =
        cmds.iter().find(|c| matches!(c, Command::PostcopyAdvise(_)))
    else {
        panic!("{name}: ADVISE without RAM page sizes")
    };
    assert_eq!((adv.ram_pagesize_summary, adv.target_page_size), (4096, 4096), "{name}");

    // The package is a nested stream: LISTEN first, the device state, RUN last.
    let pkg =
        items.iter().find_map(|i| if let Item::Package(p) = i { Some(p) } else { None }).unwrap();
    assert_eq!(pkg.first(), Some(&Item::Command(Command::PostcopyListen)), "{name}");
    assert_eq!(pkg.last(), Some(&Item::Command(Command::PostcopyRun)), "{name}");
    let devices: Vec<&str> = pkg
        .iter()
        .filter_map(
            |i| if let Item::Device { idstr, .. } = i { Some(idstr.as_str()) } else { None },
        )
        .collect();
    for d in ["timer", "cpu_common", "cpu", "globalstate"] {
        assert!(devices.contains(&d), "{name}: no {d} section in the package: {devices:?}");
    }
    // Postcopy really happened: RAM moved after RUN.
    assert!(w.pages_after_run > 1000, "{name}: only {} pages after RUN", w.pages_after_run);
}

/// Cut the stream at every top-level record boundary, one byte into each
/// record, in its middle and one byte before its end: the walk must stop
/// with `Incomplete` (never another error or a panic), and everything it
/// decoded before must be exactly the full walk's records.
fn check_truncation(ver: &str, mode: &str) {
    let name = format!("qemu-{ver}-{mode}");
    let (buf, _) = load(&name);
    let (full, r) = walk(&buf, false);
    r.unwrap();
    // Precopy device sections are only delimited once the vmdesc tail is
    // there, so cuts after the first one decode nothing past it.
    let streamable = full
        .items
        .iter()
        .position(|(_, i)| matches!(i, Item::Device { .. }) && mode == "precopy")
        .unwrap_or(full.items.len());
    let mut cuts: Vec<u64> = Vec::new();
    for (r, i) in &full.items {
        cuts.extend([(r.start + r.end) / 2, r.end - 1]);
        // Every byte of the header and of the RAM setup (MEM_SIZE list);
        // elsewhere inside the framing (type, section id or command code and
        // length) and the first RAM record header of a section.
        let dense = matches!(i, Item::Header { .. } | Item::Ram { kind: SectionKind::Start, .. });
        if dense {
            cuts.extend(r.start..r.end);
        } else {
            cuts.extend(
                [0, 1, 2, 3, 5, 6, 9, 13].map(|d| r.start + d).into_iter().filter(|c| *c < r.end),
            );
        }
    }
    cuts.retain(|c| *c < buf.len() as u64);
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts {
        let (w, r) = walk(&buf[..cut as usize], false);
        // The record reported incomplete is the first one the walk missed.
        let missing = &full.items[w.items.len().min(full.items.len() - 1)].0;
        match r {
            Err(DecodeError::Incomplete { at, needed }) => assert!(
                missing.start <= at && at <= cut && needed > 0,
                "{name} cut {cut}: Incomplete at {at}, first missing record {missing:?}"
            ),
            other => panic!("{name}: cut at {cut} gave {other:?}"),
        }
        // The header needs one byte past its end (it looks for more
        // configuration subsections).
        let whole = |(r, i): &&(std::ops::Range<u64>, Item)| {
            r.end < cut || (r.end == cut && !matches!(i, Item::Header { .. }))
        };
        let done = full.items.iter().take(streamable).take_while(whole).count();
        assert!(w.items.len() >= done, "{name} cut {cut}: {} < {done} records", w.items.len());
        assert!(
            w.items.iter().zip(&full.items).all(|(a, b)| a == b),
            "{name} cut {cut}: a record differs from the full walk"
        );
        assert!(w.items.len() < full.items.len(), "{name} cut {cut}: nothing missing?");
    }
}

macro_rules! recorded {
    ($($test:ident, $trunc:ident: $ver:literal $mode:literal;)*) => {$(
        #[test]
        fn $test() {
            check_stream($ver, $mode);
        }
        #[test]
        fn $trunc() {
            check_truncation($ver, $mode);
        }
    )*};
}

recorded! {
    qemu_7_2_precopy, qemu_7_2_precopy_truncated: "7.2" "precopy";
    qemu_7_2_postcopy, qemu_7_2_postcopy_truncated: "7.2" "postcopy";
    qemu_10_0_precopy, qemu_10_0_precopy_truncated: "10.0" "precopy";
    qemu_10_0_postcopy, qemu_10_0_postcopy_truncated: "10.0" "postcopy";
    qemu_11_1_precopy, qemu_11_1_precopy_truncated: "11.1" "precopy";
    qemu_11_1_postcopy, qemu_11_1_postcopy_truncated: "11.1" "postcopy";
}
