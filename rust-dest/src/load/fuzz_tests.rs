//! Mutants of the recorded streams (`wire/tests/streams/`) found by
//! `crossmig fuzz` where rust-dest and QEMU's destination disagreed
//! (docs/differential-fuzz.md), loaded from memory.

use super::tests::{load, recorded};
use super::LoadError;

/// `crossmig fuzz --qemu 10.0 --seed 1`, mutant 0: the section id in the
/// footer of the first i8259 section (byte 0x61cd8) changed from 0x10 to
/// 0x0b. QEMU 10.0.2: "Mismatched section id in footer for i8259 - read 0xb
/// expected 0x10", failed; rust-dest used to complete.
#[test]
fn footer_naming_another_section_fails() {
    let mut b = recorded("qemu-10.0-precopy").expect("wire/tests/streams/qemu-10.0-precopy.bin");
    assert_eq!(&b[0x61cd4..0x61cd9], &[0x7e, 0, 0, 0, 0x10]);
    b[0x61cd8] = 0x0b;
    let (_, _, res) = load(&b, false);
    let err = res.expect_err("a footer naming section 11 after section 16 must fail");
    assert!(matches!(err, LoadError::Decode(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("mismatched section id in footer"), "{msg}");
    assert!(msg.contains("\"i8259\"") && msg.contains("read 11, expected 16"), "{msg}");
    assert!(msg.contains(&format!("byte offset {}", 0x61cd4)), "{msg}");
}

/// `crossmig fuzz --qemu 10.0 --seed 2`, mutant 111: byte 0x5d066 (the
/// first be32 of the `irq_state` of `0000:00:00.0/mch`) 0x00 → 0x28. QEMU
/// 10.0.2: "irq state 671088640: must be 0 or 1", failed; rust-dest used to
/// complete. The vmdesc types the field `pci irq state`.
#[test]
fn pci_irq_state_other_than_0_or_1_fails() {
    let mut b = recorded("qemu-10.0-precopy").expect("wire/tests/streams/qemu-10.0-precopy.bin");
    assert_eq!(b[0x5d066], 0);
    b[0x5d066] = 0x28;
    let (_, _, res) = load(&b, false);
    let err = res.expect_err("an irq state of 0x28000000 must fail");
    assert!(matches!(err, LoadError::DeviceCheck(_)), "{err:?}");
    assert_eq!(err.offset(), Some(0x5d066));
    let msg = err.to_string();
    assert!(
        msg.contains("\"0000:00:00.0/mch\"") && msg.contains("mch/parent_obj/irq_state"),
        "{msg}"
    );
    assert!(msg.contains("pci irq state 671088640: must be 0 or 1"), "{msg}");
}

/// The subsection marker of `pckbd/extended_state` (listed in the vmdesc)
/// changed: QEMU stops reading subsections there and misses the section
/// footer; rust-dest fails naming the subsection, on 7.2, 10.0 and 11.1.
#[test]
fn missing_subsection_marker_fails() {
    for v in ["7.2", "10.0", "11.1"] {
        let name = format!("qemu-{v}-precopy");
        let real = recorded(&name).expect("a recorded precopy stream");
        let pat = b"\x05\x14pckbd/extended_state";
        let p = real.windows(pat.len()).position(|w| w == pat).expect("the subsection");
        let mut b = real.clone();
        b[p] = 0x7e;
        let (_, _, res) = load(&b, false);
        let msg = res.expect_err("a changed subsection marker must fail").to_string();
        assert!(msg.contains("device section \"pckbd\""), "{v}: {msg}");
        assert!(
            msg.contains(
                "expected subsection \"pckbd/extended_state\" (marker 0x05), found byte 0x7e"
            ),
            "{v}: {msg}"
        );
        // The unchanged recording still completes.
        let (_, _, res) = load(&real, false);
        res.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// `crossmig fuzz --qemu 10.0 --seed 3`, mutants 58 and 118: the section id
/// in the footer of a device section inside the postcopy package changed
/// (`i2c_bus`, byte 0x12eb5 0x1b → 0x19; `kvm-tpr-opt`, byte 0xba3a 0x05 →
/// 0x00). QEMU 10.0.2: "Mismatched section id in footer for i2c_bus - read
/// 0x19 expected 0x1b", failed; rust-dest used to complete (its package
/// parse found no parse ending with RUN and fell back to the first footer
/// of the right id further on).
#[test]
fn package_footer_naming_another_section_fails() {
    let real = recorded("qemu-10.0-postcopy").expect("wire/tests/streams/qemu-10.0-postcopy.bin");
    for (at, old, new, name, read, expected) in
        [(0x12eb5, 0x1b, 0x19, "i2c_bus", 0x19, 0x1b), (0xba3a, 0x05, 0x00, "kvm-tpr-opt", 0, 5)]
    {
        let mut b = real.clone();
        assert_eq!(b[at], old);
        b[at] = new;
        let (_, _, res) = load(&b, true);
        let msg = res.expect_err("a footer naming another section must fail").to_string();
        assert!(msg.contains("PACKAGED at byte offset"), "{msg}");
        let want = format!("{name:?} (id {expected}) at byte offset");
        assert!(msg.contains(&want), "{msg}");
        let want = format!(
            "mismatched section id in footer at byte offset {}: read {read}, expected {expected}",
            at - 4
        );
        assert!(msg.contains(&want), "{msg}");
    }
}
