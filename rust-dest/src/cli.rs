//! rust-dest's command line: QEMU's syntax (single- or double-dash options,
//! `key=value,...` property lists), so that a QEMU destination's command line
//! can be reused as is. Options rust-dest has no use for are accepted and
//! ignored with one warning each.

use std::path::PathBuf;

use crate::compat::QemuVersion;
use crate::postcopy::{Pattern, VcpuConfig};
use crate::ram::Backend;

pub const USAGE: &str = "\
rust-dest: a QEMU-compatible live-migration destination (precopy, postcopy, multifd)

Usage: rust-dest [QEMU-style options] [rust-dest options]

QEMU-style options (same syntax as qemu-system-x86_64):
  -incoming tcp:HOST:PORT | unix:PATH | file:PATH | defer
                        where to accept the migration ('file:' reads a
                        recorded stream; 'defer': wait for the QMP command
                        migrate-incoming)
  -qmp unix:PATH,server=on,wait=off | tcp:HOST:PORT,server=on,wait=off
                        QMP monitor (may be given several times)
  -machine TYPE[,memory-backend=ID][,suppress-vmdesc=on|off]
                        machine type; a versioned type (pc-q35-10.0) must match
                        the stream's, an alias (q35, pc) its family
  -m SIZE               guest RAM size (accepted; the stream's RAMBlock list
                        decides the real layout)
  -object memory-backend-file,id=ID,size=SIZE,mem-path=PATH[,share=on]
  -object memory-backend-ram,id=ID,size=SIZE
                        the RAMBlock named ID lives in this file, byte for byte
                        from block offset 0
  -S                    stay paused after the migration until QMP 'cont'
  -uuid UUID            the VM's UUID; multifd channels must announce it (an
                        all-zero UUID is expected without -uuid, as in QEMU)
  -global migration.send-configuration=off | migration.send-section-footer=off
                        old-machine-type stream variants
  Other QEMU options (-accel, -nodefaults, -display, -serial, -drive, -name,
  -device, -cpu, -smp, ...) are accepted and ignored with a warning.

rust-dest options:
  --max-ram SIZE        refuse streams announcing more RAM than this
                        (default 64G); checked before any allocation
  --vcpu-pattern P      postcopy guest simulation: random (default), sweep
                        (address order, like the test guest), hot, none
  --vcpu-threads N      simulated vCPU threads (default 1)
  --vcpu-rate N         page touches per second per thread (default 50000;
                        0 = unlimited)
  --device-catalogue FILE
                        refuse device sections the QEMU version described by
                        FILE refuses (unknown names, versions out of range,
                        instances of the reference configuration); made by
                        `crossmig qemu catalogue` (docs/device-catalogue.md)
  --compat-version V    behave as QEMU V (e.g. 7.2, 10.0, 11.1) where versions
                        differ (default: the -machine type's version, else the
                        newest known)
  --log LEVEL           error, warn, info (default), debug, trace
  -h, --help            this text
  -V, --version         print version

SIZE takes QEMU's suffixes: K, M, G, T (a bare -m number means MiB).
";

#[derive(Clone, Debug)]
pub struct Options {
    pub incoming: Option<String>,
    pub qmp: Vec<String>,
    pub machine: Option<String>,
    pub suppress_vmdesc: bool,
    pub mem_size: Option<u64>,
    pub backends: Vec<Backend>,
    pub start_paused: bool,
    pub send_configuration: bool,
    pub send_section_footer: bool,
    pub max_ram: u64,
    pub vcpu: VcpuConfig,
    pub log: String,
    pub warnings: Vec<String>,
    pub pidfile: Option<PathBuf>,
    /// `-uuid`: the raw 16 bytes (checked against multifd initial packets).
    pub uuid: Option<[u8; 16]>,
    /// `--device-catalogue FILE`.
    pub device_catalogue: Option<PathBuf>,
    /// `--compat-version V`.
    pub compat_version: Option<QemuVersion>,
    /// `-nodefaults` was given (no default devices).
    pub nodefaults: bool,
    /// Options that add, remove or change devices (so the device instances
    /// are not those of a catalogue's reference configuration).
    pub device_changes: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            incoming: None,
            qmp: Vec::new(),
            machine: None,
            suppress_vmdesc: false,
            mem_size: None,
            backends: Vec::new(),
            start_paused: false,
            send_configuration: true,
            send_section_footer: true,
            max_ram: 64 << 30,
            vcpu: VcpuConfig::default(),
            log: "info".into(),
            warnings: Vec::new(),
            pidfile: None,
            uuid: None,
            device_catalogue: None,
            compat_version: None,
            nodefaults: false,
            device_changes: Vec::new(),
        }
    }
}

pub enum Parsed {
    Run(Box<Options>),
    Help,
    Version,
}

/// QEMU options that take an argument and that rust-dest ignores.
const IGNORED_WITH_ARG: &[&str] = &[
    "accel",
    "display",
    "serial",
    "drive",
    "name",
    "device",
    "cpu",
    "smp",
    "chardev",
    "mon",
    "monitor",
    "vga",
    "net",
    "netdev",
    "boot",
    "bios",
    "L",
    "rtc",
    "d",
    "D",
    "trace",
    "overcommit",
    "msg",
    "k",
    "sandbox",
    "numa",
    "blockdev",
    "fsdev",
    "hda",
    "hdb",
    "cdrom",
    "kernel",
    "initrd",
    "append",
    "icount",
    "audiodev",
    "parallel",
    "smbios",
    "action",
    "run-with",
    "cpu-throttle",
    "fw_cfg",
    "mem-path",
    "usbdevice",
    "watchdog-action",
    "vnc",
    "spice",
    "qtest",
    "qtest-log",
    "tpmdev",
    "plugin",
    "semihosting-config",
    "compat",
    "object-ignored",
];
/// Ignored options that add or change devices, unless their value is one of
/// the listed ones (what the device catalogue's reference configuration
/// uses).
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
/// Ignored flags that add or remove devices.
const DEVICE_FLAGS: &[&str] = &["usb", "no-hpet", "no-acpi", "enable-kvm"];

/// QEMU flags without an argument that rust-dest ignores.
const IGNORED_FLAGS: &[&str] = &[
    "nodefaults",
    "nographic",
    "no-user-config",
    "no-reboot",
    "no-shutdown",
    "enable-kvm",
    "no-hpet",
    "no-acpi",
    "mem-prealloc",
    "snapshot",
    "daemonize",
    "preconfig",
    "usb",
    "no-fd-bootchk",
    "full-screen",
    "s",
];

pub use wire::units::parse_size;

/// Split a QemuOpts-style string on `,`, where `,,` is a literal comma.
pub fn split_opts(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Split a QEMU property list `a,b=c,d=e` into (first bare value, pairs).
/// `,,` escapes a comma.
pub fn parse_props(s: &str) -> (Option<String>, Vec<(String, String)>) {
    let items = split_opts(s);
    let mut first = None;
    let mut pairs = Vec::new();
    for (i, it) in items.into_iter().enumerate() {
        match it.split_once('=') {
            Some((k, v)) => pairs.push((k.to_string(), v.to_string())),
            None if i == 0 => first = Some(it),
            None => pairs.push((it, "on".into())),
        }
    }
    (first, pairs)
}

fn on_off(v: &str, what: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(format!("{what}: expected on or off, got {v:?}")),
    }
}

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

pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Parsed, String> {
    let mut o = Options::default();
    // Set explicitly (`-machine suppress-vmdesc=`, `-global migration.*`):
    // they override what the machine type implies.
    let (mut suppress, mut send_cfg, mut footers) = (None, None, None);
    let mut serials = 0usize;
    let mut it = args.into_iter().peekable();
    while let Some(a) = it.next() {
        if !a.starts_with('-') || a == "-" {
            return Err(format!("unexpected argument {a:?} (QEMU-style options start with '-')"));
        }
        let name_full = a.trim_start_matches('-');
        let (name, inline) = match name_full.split_once('=') {
            Some((n, v)) if a.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (name_full.to_string(), None),
        };
        let val = |it: &mut std::iter::Peekable<I::IntoIter>| -> Result<String, String> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            it.next().ok_or_else(|| format!("option -{name} requires an argument"))
        };
        match name.as_str() {
            "h" | "help" => return Ok(Parsed::Help),
            "V" | "version" => return Ok(Parsed::Version),
            "incoming" => o.incoming = Some(val(&mut it)?),
            "qmp" => o.qmp.push(val(&mut it)?),
            "S" => o.start_paused = true,
            "m" => {
                let v = val(&mut it)?;
                let (first, pairs) = parse_props(&v);
                let sz = match first {
                    Some(f) => f,
                    None => pairs
                        .iter()
                        .find(|(k, _)| k == "size")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default(),
                };
                let bytes = if sz.chars().all(|c| c.is_ascii_digit()) {
                    sz.parse::<u64>().map_err(|_| format!("-m: invalid size {sz:?}"))? << 20
                } else {
                    parse_size(&sz).map_err(|e| format!("-m: {e}"))?
                };
                o.mem_size = Some(bytes);
            }
            "uuid" => {
                let v = val(&mut it)?;
                o.uuid = Some(parse_uuid(&v).ok_or_else(|| format!("-uuid: invalid UUID {v:?}"))?);
            }
            "machine" | "M" => {
                let v = val(&mut it)?;
                let (first, pairs) = parse_props(&v);
                let mut ty = first;
                for (k, v) in pairs {
                    match k.as_str() {
                        "type" => ty = Some(v),
                        "suppress-vmdesc" => {
                            suppress = Some(on_off(&v, "-machine suppress-vmdesc")?)
                        }
                        "memory-backend" => {}
                        "accel" if v == "tcg" => {}
                        other => {
                            o.device_changes.push(format!("-machine {other}={v}"));
                            o.warnings.push(format!("-machine property {other}={v} ignored"))
                        }
                    }
                }
                o.machine = ty;
            }
            "object" => {
                let v = val(&mut it)?;
                let (first, pairs) = parse_props(&v);
                let qom = first.or_else(|| {
                    pairs.iter().find(|(k, _)| k == "qom-type").map(|(_, v)| v.clone())
                });
                match qom.as_deref() {
                    Some(
                        t @ ("memory-backend-file" | "memory-backend-ram" | "memory-backend-memfd"),
                    ) => {
                        let get =
                            |k: &str| pairs.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
                        let id = get("id").ok_or_else(|| format!("-object {t}: missing id"))?;
                        let size = parse_size(
                            &get("size")
                                .ok_or_else(|| format!("-object {t},id={id}: missing size"))?,
                        )
                        .map_err(|e| format!("-object {t},id={id}: {e}"))?;
                        let mem_path =
                            if t == "memory-backend-file" {
                                Some(PathBuf::from(get("mem-path").ok_or_else(|| {
                                    format!("-object {t},id={id}: missing mem-path")
                                })?))
                            } else {
                                None
                            };
                        let share =
                            get("share").map(|s| on_off(&s, "share")).transpose()?.unwrap_or(false);
                        if t == "memory-backend-file" && !share {
                            o.warnings.push(format!(
                                "-object {t},id={id}: share=off; rust-dest maps the file shared anyway so it holds the guest RAM"
                            ));
                        }
                        if o.backends.iter().any(|b| b.id == id) {
                            return Err(format!("-object: duplicate id {id:?}"));
                        }
                        o.backends.push(Backend { id, size, mem_path, share });
                    }
                    Some(other) => o.warnings.push(format!("-object {other} ignored")),
                    None => return Err("-object: missing object type".into()),
                }
            }
            "global" => {
                let v = val(&mut it)?;
                match v.split_once('=') {
                    Some(("migration.send-configuration", x)) => {
                        send_cfg = Some(on_off(x, "-global")?)
                    }
                    Some(("migration.send-section-footer", x)) => {
                        footers = Some(on_off(x, "-global")?)
                    }
                    _ => o.warnings.push(format!("-global {v} ignored")),
                }
            }
            "pidfile" => o.pidfile = Some(PathBuf::from(val(&mut it)?)),
            "max-ram" => {
                o.max_ram = parse_size(&val(&mut it)?).map_err(|e| format!("--max-ram: {e}"))?
            }
            "vcpu-pattern" => o.vcpu.pattern = val(&mut it)?.parse::<Pattern>()?,
            "vcpu-threads" => {
                o.vcpu.threads = val(&mut it)?
                    .parse()
                    .map_err(|_| "--vcpu-threads: expected a number".to_string())?
            }
            "vcpu-rate" => {
                o.vcpu.rate = val(&mut it)?
                    .parse()
                    .map_err(|_| "--vcpu-rate: expected a number".to_string())?
            }
            "log" => o.log = val(&mut it)?,
            "device-catalogue" => o.device_catalogue = Some(PathBuf::from(val(&mut it)?)),
            "compat-version" => {
                o.compat_version =
                    Some(val(&mut it)?.parse().map_err(|e| format!("--compat-version: {e}"))?)
            }
            n if IGNORED_WITH_ARG.contains(&n) => {
                let v = val(&mut it)?;
                let changes = match DEVICE_OPTIONS.iter().find(|(d, _)| *d == n) {
                    Some((_, same)) => !same.contains(&v.as_str()),
                    // A second serial port is a second device.
                    None if n == "serial" => {
                        serials += 1;
                        serials > 1
                    }
                    None => false,
                };
                if changes {
                    o.device_changes.push(format!("-{n} {v}"));
                }
                o.warnings.push(format!("option -{n} {v} ignored"));
            }
            "nodefaults" => o.nodefaults = true,
            n if IGNORED_FLAGS.contains(&n) => {
                if DEVICE_FLAGS.contains(&n) {
                    o.device_changes.push(format!("-{n}"));
                }
                o.warnings.push(format!("option -{n} ignored"))
            }
            other => return Err(format!("-{other}: invalid option (see --help)")),
        }
    }
    let compat = o.machine.as_deref().map(MachineCompat::of).unwrap_or_default();
    o.suppress_vmdesc = suppress.unwrap_or(compat.suppress_vmdesc);
    o.send_configuration = send_cfg.unwrap_or(compat.send_configuration);
    o.send_section_footer = footers.unwrap_or(compat.send_section_footer);
    if o.qmp.is_empty() && o.incoming.is_none() {
        return Err("nothing to do: give -incoming and/or -qmp (see --help)".into());
    }
    Ok(Parsed::Run(Box::new(o)))
}

/// A UUID in its text form (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = s.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuid() {
        let u = parse_uuid("01234567-89ab-cdef-0011-223344556677").unwrap();
        assert_eq!(u[0], 0x01);
        assert_eq!(u[15], 0x77);
        assert!(parse_uuid("0123456789abcdef0011223344556677").is_none());
        assert!(parse_uuid("01234567-89ab-cdef-0011-22334455667g").is_none());
    }

    use super::*;

    fn p(s: &str) -> Result<Options, String> {
        match parse(s.split_whitespace().map(String::from))? {
            Parsed::Run(o) => Ok(*o),
            _ => Err("help".into()),
        }
    }

    #[test]
    fn qemu_destination_line() {
        let o = p("-accel tcg -machine q35,memory-backend=mem0 -m 256M -object memory-backend-file,id=mem0,size=256M,mem-path=/dev/shm/x,share=on -nodefaults -display none -serial none -qmp unix:/tmp/q.sock,server=on,wait=off -incoming tcp:127.0.0.1:4444 -S -name dst").unwrap();
        assert_eq!(o.incoming.as_deref(), Some("tcp:127.0.0.1:4444"));
        assert_eq!(o.machine.as_deref(), Some("q35"));
        assert_eq!(o.mem_size, Some(256 << 20));
        assert_eq!(o.backends.len(), 1);
        assert_eq!(o.backends[0].id, "mem0");
        assert_eq!(o.backends[0].size, 256 << 20);
        assert!(o.start_paused);
        assert_eq!(o.warnings.len(), 4, "{:?}", o.warnings);
        assert!(o.nodefaults && o.device_changes.is_empty(), "{:?}", o.device_changes);
    }

    #[test]
    fn device_catalogue_options() {
        let o = p("-incoming defer --device-catalogue /x.devices --compat-version 7.2").unwrap();
        assert_eq!(o.device_catalogue.as_deref(), Some(std::path::Path::new("/x.devices")));
        assert_eq!(o.compat_version, Some(QemuVersion::new(7, 2)));
        assert!(p("-incoming defer --compat-version seven")
            .unwrap_err()
            .contains("--compat-version"));
        // What changes the device instances of the reference configuration.
        let o = p("-incoming defer -nodefaults -smp 1 -accel tcg -serial null -vga none").unwrap();
        assert!(o.device_changes.is_empty(), "{:?}", o.device_changes);
        for extra in [
            "-smp 2",
            "-device e1000",
            "-drive file=x,if=ide",
            "-enable-kvm",
            "-machine q35,hpet=off",
            "-serial null -serial null",
        ] {
            let o = p(&format!("-incoming defer -nodefaults {extra}")).unwrap();
            assert!(!o.device_changes.is_empty(), "{extra}");
        }
    }

    #[test]
    fn sizes_and_errors() {
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12X").is_err());
        assert!(p("-bogus").unwrap_err().contains("invalid option"));
        assert!(p("-incoming").unwrap_err().contains("requires an argument"));
        assert!(p("--max-ram 2G -incoming defer").unwrap().max_ram == 2 << 30);
        assert!(p("--max-ram=2G -incoming defer").unwrap().max_ram == 2 << 30);
        assert_eq!(p("-m 128 -incoming defer").unwrap().mem_size, Some(128 << 20));
        assert!(
            p("-machine pc-q35-10.0,suppress-vmdesc=on -incoming defer").unwrap().suppress_vmdesc
        );
        assert!(p("--vcpu-pattern zigzag -incoming defer").is_err());
    }

    #[test]
    fn old_machine_types_imply_their_stream_format() {
        let o = p("-machine pc-i440fx-2.2 -incoming defer").unwrap();
        assert!(o.suppress_vmdesc && !o.send_configuration && !o.send_section_footer);
        let o = p("-machine pc-i440fx-2.3 -incoming defer").unwrap();
        assert!(!o.suppress_vmdesc && !o.send_configuration && !o.send_section_footer);
        for m in ["pc-i440fx-2.4", "pc-i440fx-2.12", "q35", "pc-q35-7.2", "pc-i440fx-10.0"] {
            assert_eq!(MachineCompat::of(m), MachineCompat::default(), "{m}");
        }
        // Explicit settings win, in any order.
        let o = p("-machine pc-i440fx-2.2,suppress-vmdesc=off -global migration.send-section-footer=on -incoming defer").unwrap();
        assert!(!o.suppress_vmdesc && o.send_section_footer && !o.send_configuration);
    }

    #[test]
    fn props_escape() {
        let (f, kv) = parse_props("memory-backend-file,id=a,mem-path=/x,,y");
        assert_eq!(f.as_deref(), Some("memory-backend-file"));
        assert_eq!(kv[1], ("mem-path".to_string(), "/x,y".to_string()));
    }
}
