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
