//! The checks on the precopy streams recorded from QEMU 7.2, 10.0 and 11.1
//! (`wire/tests/streams/`): every section of a real stream passes, and one
//! changed byte at a subsection marker, a subsection version, a section
//! header's version or a `pci irq state` is found and named.

use super::super::{find_vmdesc_tail, split_with_vmdesc, SplitSection};
use super::*;
use crate::stream::{SectionKind, TopRecord};
use crate::walk::{Item, Walker};

/// Main channels with a vmdesc: precopy and the multifd recordings.
const RECORDED: [&str; 6] = [
    "qemu-7.2-precopy",
    "qemu-10.0-precopy",
    "qemu-11.1-precopy",
    "qemu-7.2-multifd2.ch0",
    "qemu-10.0-multifd2.ch0",
    "qemu-11.1-multifd2.ch0",
];

fn recorded(name: &str) -> Vec<u8> {
    let p = format!("{}/tests/streams/{name}.bin", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// The device sections of a recorded stream and the offset of the first.
fn sections(bytes: &[u8]) -> (usize, Vec<SplitSection>) {
    for r in Walker::main(true, true).records(bytes) {
        let (off, item) = r.expect("the recording decodes");
        if let Item::Top(TopRecord::SectionOpen { kind: SectionKind::Full, .. }) = item {
            let f = off as usize;
            let (eof, json) = find_vmdesc_tail(&bytes[f..]).expect("a vmdesc");
            return (f, split_with_vmdesc(&bytes[f..f + eof], 0, &json).expect("split"));
        }
    }
    panic!("no device section")
}

fn check_all(bytes: &[u8]) -> Vec<Checked> {
    let (f, secs) = sections(bytes);
    secs.iter().map(|s| check_section(&bytes[f..], s, f as u64)).collect()
}

fn first_failure(bytes: &[u8]) -> CheckError {
    check_all(bytes)
        .into_iter()
        .find_map(|c| match c {
            Checked::Failed(e) => Some(*e),
            _ => None,
        })
        .expect("a failed check")
}

/// The stream offset of the subsection header `name` (0x05, length, name).
fn subsection_at(bytes: &[u8], name: &str) -> usize {
    let mut pat = vec![QEMU_VM_SUBSECTION, name.len() as u8];
    pat.extend_from_slice(name.as_bytes());
    bytes.windows(pat.len()).position(|w| w == pat).unwrap_or_else(|| panic!("{name}"))
}

#[test]
fn real_streams_pass_every_check() {
    for name in RECORDED {
        let bytes = recorded(name);
        let checked = check_all(&bytes);
        assert!(checked.len() > 20, "{name}: {} sections", checked.len());
        for (i, c) in checked.iter().enumerate() {
            assert_eq!(c, &Checked::Ok, "{name}: section {i}");
        }
    }
}

#[test]
fn changed_subsection_marker_name_and_version_are_named() {
    for v in ["7.2", "10.0", "11.1"] {
        let real = recorded(&format!("qemu-{v}-precopy"));
        let p = subsection_at(&real, "pckbd/extended_state");
        let mut b = real.clone();
        b[p] = 0x04;
        let e = first_failure(&b);
        assert_eq!(e.section, "pckbd", "{v}");
        assert_eq!(e.field, "pckbd/kbd/pckbd/extended_state", "{v}: {e}");
        assert_eq!(e.at, p as u64);
        assert_eq!(
            e.violation,
            Violation::SubsectionMarker { name: "pckbd/extended_state".into(), found: 4 }
        );
        let mut b = real.clone();
        b[p + 2] = b'P';
        let e = first_failure(&b);
        assert!(
            matches!(&e.violation, Violation::SubsectionName { found, .. } if found == "Pckbd/extended_state"),
            "{e}"
        );
        let mut b = real.clone();
        let vat = p + 2 + "pckbd/extended_state".len() + 3;
        b[vat] ^= 0xff;
        let e = first_failure(&b);
        assert_eq!(e.at, vat as u64 - 3);
        assert!(matches!(e.violation, Violation::SubsectionVersion { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("device section \"pckbd\"") && msg.contains("pckbd/extended_state"),
            "{msg}"
        );
    }
}

#[test]
fn section_version_and_pci_irq_state() {
    let real = recorded("qemu-10.0-precopy");
    let (f, secs) = sections(&real);
    let mch = secs.iter().find(|s| s.idstr == "0000:00:00.0/mch").expect("mch");
    // The header's version is the last 4 bytes before the data.
    let mut b = real.clone();
    b[f + mch.data.start - 1] = 2;
    let e = first_failure(&b);
    assert_eq!(e.violation, Violation::SectionVersion { header: 2, described: 1 });
    assert_eq!(e.section, "0000:00:00.0/mch");
    // The irq_state field of the PCI device inside mch.
    let irq = mch.vmdesc.as_ref().unwrap()["fields"][0]["struct"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .take_while(|fd| fd["type"] != "pci irq state")
        .map(|fd| fd["size"].as_u64().unwrap() as usize)
        .sum::<usize>();
    let at = f + mch.data.start + irq;
    assert_eq!(&real[at..at + 16], &[0; 16]);
    let mut b = real.clone();
    b[at + 7] = 2;
    let e = first_failure(&b);
    assert_eq!(e.violation, Violation::PciIrqState { value: 2 });
    assert_eq!(e.at, at as u64 + 4);
    assert!(e.field.ends_with("/irq_state"), "{}", e.field);
}

#[test]
fn a_description_that_does_not_add_up_checks_nothing() {
    let real = recorded("qemu-11.1-precopy");
    let (f, mut secs) = sections(&real);
    let s = secs.iter_mut().find(|s| s.idstr == "pckbd").unwrap();
    // Move 1 byte from the nested struct's first field to the top level:
    // the total stays right, the struct no longer adds up.
    let d = s.vmdesc.as_mut().unwrap();
    let inner = &mut d["fields"][0]["struct"]["fields"][0]["size"];
    *inner = serde_json::json!(inner.as_u64().unwrap() + 1);
    assert!(matches!(check_section(&real[f..], s, f as u64), Checked::Undescribed(_)));
}

/// A damaged description (a huge `array_len` of a zero-sized field, sizes
/// near `usize::MAX`) is "undescribed" or passes, quickly, never a panic.
#[test]
fn damaged_descriptions_do_not_panic_or_spin() {
    let real = recorded("qemu-10.0-precopy");
    let (f, secs) = sections(&real);
    let s = secs.iter().find(|s| s.idstr == "pckbd").unwrap().clone();
    for (len, size) in [(u64::MAX, 0u64), (2, u64::MAX / 2 + 1), (1, u64::MAX)] {
        let mut t = s.clone();
        let d = t.vmdesc.as_mut().unwrap();
        d["fields"][0]["struct"]["fields"][0]["array_len"] = serde_json::json!(len);
        d["fields"][0]["struct"]["fields"][0]["size"] = serde_json::json!(size);
        let c = check_section(&real[f..], &t, f as u64);
        assert!(matches!(c, Checked::Undescribed(_)), "{len} x {size}: {c:?}");
    }
}
