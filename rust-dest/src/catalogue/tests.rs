//! The catalogue checks against the checked-in catalogues of the real 7.2,
//! 10.0 and 11.1 binaries, with the texts those destinations print
//! (`scenarios/stream-device-*.toml` compares them live).

use super::*;

const CATALOGUES: [(&str, &str); 3] = [
    ("7.2", include_str!("../../catalogues/qemu-7.2.devices")),
    ("10.0", include_str!("../../catalogues/qemu-10.0.devices")),
    ("11.1", include_str!("../../catalogues/qemu-11.1.devices")),
];

fn each() -> impl Iterator<Item = (QemuVersion, Catalogue)> {
    CATALOGUES.iter().map(|(v, t)| (v.parse().unwrap(), Catalogue::parse(t).unwrap()))
}

fn dc(c: &Catalogue, instances_known: bool) -> DeviceCheck {
    DeviceCheck { catalogue: std::sync::Arc::new(c.clone()), instances_known }
}

#[test]
fn checked_in_catalogues_parse() {
    for (v, c) in each() {
        assert!(c.qemu.starts_with(&format!("{v}.")), "{}", c.qemu);
        assert_eq!(c.machine.as_ref().unwrap().0, "q35");
        assert!(c.is_reference_machine(Some("q35")));
        assert!(c.is_reference_machine(Some(&format!("pc-q35-{v}"))));
        assert!(!c.is_reference_machine(Some("pc-q35-6.2")));
        assert!(!c.is_reference_machine(None));
    }
}

#[test]
fn the_reference_stream_passes() {
    // Every section a real source of the reference configuration sends.
    for (_, c) in each() {
        for ((idstr, inst), ver) in &c.sections {
            assert_eq!(c.check(idstr, *inst, *ver, true), Ok(()), "{idstr} {inst}");
        }
    }
}

#[test]
fn unknown_section_with_qemus_text() {
    for (v, c) in each() {
        let e = dc(&c, false).check("nosuchdevice", 0, 1, v).unwrap_err();
        let want = if v < QemuVersion::new(11, 1) {
            "Unknown savevm section or instance 'nosuchdevice' 0. Make sure"
        } else {
            "Unknown section or instance 'nosuchdevice' 0. Make sure"
        };
        assert!(e.to_string().starts_with(want), "{v}: {e}");
    }
}

#[test]
fn versions_out_of_range_with_qemus_text() {
    for (v, c) in each() {
        let d = dc(&c, true);
        let e = d.check("timer", 0, 99, v).unwrap_err().to_string();
        let savevm = if v < QemuVersion::new(11, 1) { "savevm: " } else { "" };
        assert_eq!(e, format!("{savevm}unsupported version 99 for 'timer' v2"));
        // i8254 (isa-pit): version 3, minimum 2 on every version.
        let e = d.check("i8254", 0, 1, v).unwrap_err().to_string();
        let sp = if v < QemuVersion::new(11, 1) { "  " } else { " " };
        assert_eq!(
            e,
            format!("i8254: incoming version_id 1 is too old for local minimum version_id{sp}2")
        );
        assert_eq!(d.check("i8254", 0, 2, v), Ok(()));
        assert_eq!(d.check("i8254", 0, 3, v), Ok(()));
        // qdev idstrs: the VMState name after the path.
        assert!(d.check("0000:00:1f.0/ICH9LPC", 0, 2, v).is_err());
        assert_eq!(d.check("0000:00:1f.0/ICH9LPC", 0, 1, v), Ok(()));
    }
}

#[test]
fn instances_checked_only_for_the_reference_configuration() {
    for (v, c) in each() {
        // Two PICs on q35: instances 0 and 1 exist, 5 does not.
        let known = dc(&c, true);
        assert_eq!(known.check("i8259", 1, 1, v), Ok(()));
        let e = known.check("i8259", 5, 1, v).unwrap_err();
        assert_eq!(e.error, SectionError::Unknown { idstr: "i8259".into(), instance: 5 });
        // Another configuration (other devices, -smp): the instance is unchecked.
        assert_eq!(dc(&c, false).check("i8259", 5, 1, v), Ok(()));
        // A device class this QEMU has that the reference does not use.
        assert_eq!(
            known.check("0000:00:02.0/e1000", 0, 1, v).is_ok(),
            c.vmsds.contains_key("e1000")
        );
    }
}

#[test]
fn malformed_catalogues_name_the_line() {
    let e = Catalogue::parse("qemu 10.0.2\nvmsd timer two 1\n").unwrap_err();
    assert_eq!(e.line, 2);
    let e = Catalogue::parse("# c\n\nsection a 0\n").unwrap_err();
    assert_eq!(e.line, 3);
    assert!(Catalogue::parse("bogus\n").is_err());
}
