//! What the command line says about the stream and the devices beyond where
//! RAM lives: the stream format old machine types imply, and whether the
//! device instances are those of a device catalogue's reference
//! configuration (docs/device-catalogue.md).

/// What a machine type implies for the stream (QEMU's compat properties of
/// old machine types, `hw/i386/pc_piix.c`; observed on QEMU 7.2, the last
/// version with these types, docs/qemu-versions-verified.md): up to
/// `pc-i440fx-2.3` no configuration section and no section footers; up to
/// `pc-i440fx-2.2` also no vmdesc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MachineCompat {
    pub suppress_vmdesc: bool,
    pub send_configuration: bool,
    pub send_section_footer: bool,
}

impl Default for MachineCompat {
    fn default() -> Self {
        MachineCompat {
            suppress_vmdesc: false,
            send_configuration: true,
            send_section_footer: true,
        }
    }
}

impl MachineCompat {
    pub fn of(machine: &str) -> MachineCompat {
        let version = machine
            .strip_prefix("pc-i440fx-")
            .and_then(|v| v.split_once('.'))
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
        match version {
            Some(v) if v <= (2, 3) => MachineCompat {
                suppress_vmdesc: v <= (2, 2),
                send_configuration: false,
                send_section_footer: false,
            },
            _ => MachineCompat::default(),
        }
    }
}

/// Options that add or change devices, unless their value is one of the
/// listed ones (what the device catalogue's reference configuration uses).
const DEVICE_OPTIONS: &[(&str, &[&str])] = &[
    ("device", &[]),
    ("drive", &[]),
    ("net", &[]),
    ("vga", &["none"]),
    ("usbdevice", &[]),
    ("numa", &[]),
    ("hda", &[]),
    ("hdb", &[]),
    ("cdrom", &[]),
    ("parallel", &["none"]),
    ("smp", &["1", "cpus=1"]),
    ("accel", &["tcg"]),
];

/// Flags that add or remove devices.
const DEVICE_FLAGS: &[&str] = &["usb", "no-hpet", "no-acpi", "enable-kvm"];

/// Collects the options that change the device set.
#[derive(Default)]
pub struct DeviceChanges {
    pub changes: Vec<String>,
    serials: usize,
}

impl DeviceChanges {
    /// `-NAME VALUE`.
    pub fn option(&mut self, name: &str, value: &str) {
        let changes = match DEVICE_OPTIONS.iter().find(|(d, _)| *d == name) {
            Some((_, same)) => !same.contains(&value),
            // A second serial port is a second device.
            None if name == "serial" => {
                self.serials += 1;
                self.serials > 1
            }
            None => false,
        };
        if changes {
            self.changes.push(format!("-{name} {value}"));
        }
    }

    /// `-NAME` without a value.
    pub fn flag(&mut self, name: &str) {
        if DEVICE_FLAGS.contains(&name) {
            self.changes.push(format!("-{name}"));
        }
    }

    /// A `-machine` property other than the type, the backend, `accel=tcg`
    /// and `suppress-vmdesc`.
    pub fn machine_property(&mut self, key: &str) {
        self.changes.push(format!("-machine {key}=..."));
    }
}
