//! rust-dest's command line: QEMU's syntax (single- or double-dash options,
//! `key=value,...` property lists or JSON objects), so that the command line
//! a management stack writes for a QEMU destination can be reused as is.
//!
//! Options that decide where guest RAM lives (`memory`) or how rust-dest is
//! controlled (`monitor`, `-incoming`) are honoured or refused with an error;
//! options that only describe the guest are checked like QEMU checks them
//! (`misc`) and accepted with one warning line each; unknown or malformed
//! options fail with QEMU's kind of message (`CliError`).

use std::path::PathBuf;

use crate::compat::QemuVersion;
use crate::postcopy::{Pattern, VcpuConfig};
use crate::ram::Backend;

mod compat;
mod memory;
mod misc;
mod monitor;
mod props;

pub use compat::MachineCompat;
pub use memory::MemOpts;
pub use misc::Smp;
pub use props::{parse_props, split_opts, Props};
pub use wire::units::parse_size;

/// Why a command line was refused. Displayed like QEMU's messages
/// (`-opt ARG: what`), after the program name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    #[error("{0}: invalid option")]
    InvalidOption(String),
    #[error("{0}: requires an argument")]
    MissingArgument(String),
    /// Something wrong in one option's argument.
    #[error("{opt}: {msg}")]
    Arg { opt: String, msg: String },
    /// Options that do not fit together (QEMU prints these without an option).
    #[error("{0}")]
    Config(String),
    #[error("{0}: unexpected argument (QEMU-style options start with '-')")]
    Positional(String),
}

impl CliError {
    pub fn arg(opt: &str, msg: impl Into<String>) -> CliError {
        CliError::Arg { opt: opt.to_string(), msg: msg.into() }
    }
}

pub const USAGE: &str = "\
rust-dest: a QEMU-compatible live-migration destination (precopy, postcopy, multifd)

Usage: rust-dest [QEMU-style options] [rust-dest options]

QEMU-style options (same syntax as qemu-system-x86_64):
  -incoming tcp:HOST:PORT | unix:PATH | file:PATH[,offset=N] | fd:N
            | exec:COMMAND | defer
                        where to accept the migration ('file:' reads a
                        saved stream from an offset, also /dev/fdset/N of
                        add-fd; 'fd:' an inherited descriptor or one passed
                        with getfd; 'exec:' the stdout of a /bin/sh -c
                        command; 'defer': wait for migrate-incoming)
  -add-fd fd=N,set=S[,opaque=TEXT]
                        put inherited descriptor N in descriptor set S
                        (for file:/dev/fdset/S)
  -qmp unix:PATH,server=on,wait=off | tcp:HOST:PORT,server=on,wait=off
                        QMP monitor (may be given several times)
  -chardev socket,id=ID,path=PATH|host=H,port=P|fd=N,server=on,wait=off
  -mon chardev=ID,mode=control
                        QMP monitor as management stacks give it (fd=N: an
                        inherited socket); a readline (HMP) monitor is refused
  -machine TYPE[,memory-backend=ID][,suppress-vmdesc=on|off][,...]
                        machine type; a versioned type (pc-q35-10.0) must match
                        the stream's, an alias (q35, pc) its family
  -m [size=]SIZE[,slots=N][,maxmem=SIZE]
                        guest RAM size (checked against the memory backends;
                        the stream's RAMBlock list decides the real layout)
  -object memory-backend-file,id=ID,size=SIZE,mem-path=PATH[,share=on]
  -object memory-backend-ram|memory-backend-memfd,id=ID,size=SIZE
  -object {\"qom-type\":\"memory-backend-file\",\"id\":ID,\"size\":N,...} (JSON)
                        the RAMBlock named ID lives in this backend, byte for
                        byte from block offset 0 (-machine memory-backend=,
                        -numa node,memdev= and -device pc-dimm,memdev= must
                        name one)
  -numa node,memdev=ID,...
  -S                    stay paused after the migration until QMP 'cont'
  -uuid UUID            the VM's UUID; multifd channels must announce it (an
                        all-zero UUID is expected without -uuid, as in QEMU)
  -name [guest=]NAME[,debug-threads=on]   -smp N[,sockets=,dies=,cores=,threads=]
                        reported by query-name and query-cpus-fast
  -global migration.send-configuration=off | migration.send-section-footer=off
                        old-machine-type stream variants
  Options that only describe the guest (-accel, -cpu, -device, -blockdev,
  -netdev, -drive, -serial, -rtc, -boot, -overcommit, -sandbox, -msg, other
  -object types, ...) are checked like QEMU checks them (key=value or JSON)
  and accepted with one warning line each. -mem-path and -monitor (HMP) are
  refused; -incoming defer without a QMP monitor is refused.

rust-dest options:
  --max-ram SIZE        refuse streams announcing more RAM than this
                        (default 64G); checked before any allocation
  --vcpu-pattern P      postcopy guest simulation: random (default; the random
                        test guest's order), sweep (address order, like the
                        sweep test guest), hot, none
  --vcpu-range S-E      walk only bytes [S, E) of the largest RAMBlock (q35
                        pc.ram: guest-physical), e.g. 1M-100M like the guest
  --vcpu-threads N      simulated vCPU threads (default 1)
  --vcpu-rate N         page touches per second per thread (default 50000;
                        0 = unlimited)
  --postcopy-window SIZE
                        from POSTCOPY_LISTEN on, the main channel's receive
                        buffer and largest read (default 256K; 0 = leave the
                        kernel's autotuning): without postcopy-preempt a
                        requested page waits behind what is in flight there
  --sched-stats         profile postcopy faults: how much of each stage the
                        fault thread and the vCPU spent waiting for a CPU
                        (x-crossmig fault-stages-us runq-*; reads
                        /proc/thread-self/schedstat, ~1-2 us per read,
                        outside the timed intervals)
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
    /// Every QMP monitor, as a `-qmp` spec (`-mon` chardevs converted,
    /// `fd:N` for an inherited descriptor).
    pub qmp: Vec<String>,
    /// For each of `qmp`, the option it came from (`-qmp ARG`, `-chardev
    /// ARG`), for start-up errors.
    pub qmp_from: Vec<String>,
    pub machine: Option<String>,
    pub suppress_vmdesc: bool,
    pub mem_size: Option<u64>,
    /// `-m` as given (size, slots, maxmem).
    pub mem: MemOpts,
    pub backends: Vec<Backend>,
    /// `-machine memory-backend=ID`.
    pub machine_backend: Option<String>,
    pub start_paused: bool,
    pub send_configuration: bool,
    pub send_section_footer: bool,
    pub max_ram: u64,
    pub vcpu: VcpuConfig,
    pub log: String,
    pub warnings: Vec<String>,
    pub pidfile: Option<PathBuf>,
    /// `-add-fd`: descriptors put in descriptor sets at start-up.
    pub add_fds: Vec<misc::AddFd>,
    /// `-uuid`: the raw 16 bytes (checked against multifd initial packets).
    pub uuid: Option<[u8; 16]>,
    /// `-name guest=NAME`.
    pub name: Option<String>,
    /// `-smp`: the vCPUs `query-cpus-fast` reports.
    pub smp: Smp,
    /// `--device-catalogue FILE`.
    pub device_catalogue: Option<PathBuf>,
    /// `--compat-version V`.
    pub compat_version: Option<QemuVersion>,
    /// `-nodefaults` was given (no default devices).
    pub nodefaults: bool,
    /// `--sched-stats`: the fault-path run-queue profile (`state::sched`).
    pub sched_stats: bool,
    /// `--postcopy-window SIZE` (0: leave the kernel's autotuning).
    pub postcopy_window: usize,
    /// Options that add, remove or change devices (so the device instances
    /// are not those of a catalogue's reference configuration).
    pub device_changes: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            incoming: None,
            qmp: Vec::new(),
            qmp_from: Vec::new(),
            machine: None,
            suppress_vmdesc: false,
            mem_size: None,
            mem: MemOpts::default(),
            backends: Vec::new(),
            machine_backend: None,
            start_paused: false,
            send_configuration: true,
            send_section_footer: true,
            max_ram: 64 << 30,
            vcpu: VcpuConfig::default(),
            log: "info".into(),
            warnings: Vec::new(),
            pidfile: None,
            add_fds: Vec::new(),
            uuid: None,
            name: None,
            smp: Smp::default(),
            device_catalogue: None,
            compat_version: None,
            nodefaults: false,
            sched_stats: false,
            postcopy_window: crate::load::POSTCOPY_WINDOW,
            device_changes: Vec::new(),
        }
    }
}

pub enum Parsed {
    Run(Box<Options>),
    Help,
    Version,
}

/// QEMU options that take an argument, describe the guest or the host
/// process only, and are accepted with a warning.
const IGNORED_WITH_ARG: &[&str] = &[
    "accel",
    "display",
    "serial",
    "drive",
    "cpu",
    "vga",
    "net",
    "bios",
    "L",
    "d",
    "D",
    "trace",
    "k",
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
    "add-fd",
    "iscsi",
    "device-ignored",
];
/// QEMU flags without an argument that rust-dest accepts with a warning.
const IGNORED_FLAGS: &[&str] = &[
    "nographic",
    "no-reboot",
    "no-shutdown",
    "enable-kvm",
    "no-hpet",
    "no-acpi",
    "snapshot",
    "daemonize",
    "preconfig",
    "usb",
    "no-fd-bootchk",
    "full-screen",
    "s",
];
/// Flags that change nothing for a destination: accepted silently.
const NEUTRAL_FLAGS: &[&str] = &["no-user-config"];
/// `-mem-path`/`-mem-prealloc` decide where RAM lives without a backend id:
/// refused (use `-object memory-backend-file`).
const REFUSED: &[&str] = &["mem-path"];

/// Everything read from the line before the whole-line checks.
#[derive(Default)]
struct Pending {
    chardevs: Vec<monitor::Chardev>,
    mons: Vec<monitor::Mon>,
    numa: Vec<memory::NumaNode>,
    dimm_memdevs: Vec<(String, String)>,
    devices: compat::DeviceChanges,
    /// Set explicitly (`-machine suppress-vmdesc=`, `-global migration.*`):
    /// they override what the machine type implies.
    suppress_vmdesc: Option<bool>,
    send_configuration: Option<bool>,
    send_section_footer: Option<bool>,
}

pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Parsed, CliError> {
    let mut o = Options::default();
    let mut pend = Pending::default();
    let mut it = args.into_iter().peekable();
    while let Some(a) = it.next() {
        if !a.starts_with('-') || a == "-" {
            return Err(CliError::Positional(a));
        }
        let name_full = a.trim_start_matches('-');
        let (name, inline) = match name_full.split_once('=') {
            Some((n, v)) if a.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (name_full.to_string(), None),
        };
        let val = |it: &mut std::iter::Peekable<I::IntoIter>| -> Result<String, CliError> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            it.next().ok_or_else(|| CliError::MissingArgument(format!("-{name}")))
        };
        match name.as_str() {
            "h" | "help" => return Ok(Parsed::Help),
            "V" | "version" => return Ok(Parsed::Version),
            "incoming" => o.incoming = Some(val(&mut it)?),
            "qmp" => o.qmp.push(val(&mut it)?),
            "qmp-pretty" => {
                o.qmp.push(val(&mut it)?);
                o.warnings.push("-qmp-pretty: replies are not pretty-printed".into());
            }
            "chardev" => pend.chardevs.push(monitor::parse_chardev(&val(&mut it)?)?),
            "mon" => pend.mons.push(monitor::parse_mon(&val(&mut it)?)?),
            "monitor" => monitor::check_monitor(&val(&mut it)?)?,
            "S" => o.start_paused = true,
            "m" => {
                o.mem = memory::parse_m(&val(&mut it)?)?;
                o.mem_size = o.mem.size;
            }
            "uuid" => {
                let v = val(&mut it)?;
                o.uuid = Some(parse_uuid(&v).ok_or_else(|| {
                    CliError::arg(
                        &format!("-uuid {v}"),
                        "failed to parse UUID string: wrong format",
                    )
                })?);
            }
            "name" => o.name = misc::parse_name(&val(&mut it)?)?,
            "smp" => {
                let v = val(&mut it)?;
                pend.devices.option("smp", &v);
                o.smp = misc::parse_smp(&v)?
            }
            "numa" => {
                let v = val(&mut it)?;
                pend.devices.option("numa", &v);
                pend.numa.extend(memory::parse_numa(&v)?)
            }
            "machine" | "M" => machine(&mut o, &mut pend, &val(&mut it)?)?,
            "object" => object(&mut o, &val(&mut it)?)?,
            "global" => {
                let v = val(&mut it)?;
                let (driver, prop, x) = misc::parse_global(&v)?;
                let b = |x: &str| {
                    props::on_off(x).ok_or_else(|| {
                        CliError::arg(
                            &format!("-global {v}"),
                            format!("Parameter '{prop}' expects 'on' or 'off'"),
                        )
                    })
                };
                match (driver.as_str(), prop.as_str()) {
                    ("migration", "send-configuration") => pend.send_configuration = Some(b(&x)?),
                    ("migration", "send-section-footer") => pend.send_section_footer = Some(b(&x)?),
                    _ => o.warnings.push(format!("-global {v}: not modelled, ignored")),
                }
            }
            "pidfile" => o.pidfile = Some(PathBuf::from(val(&mut it)?)),
            "add-fd" => o.add_fds.push(misc::parse_add_fd(&val(&mut it)?)?),
            "max-ram" => {
                let v = val(&mut it)?;
                o.max_ram = parse_size(&v).map_err(|e| CliError::arg("--max-ram", e.to_string()))?
            }
            "vcpu-pattern" => {
                o.vcpu.pattern = val(&mut it)?
                    .parse::<Pattern>()
                    .map_err(|e| CliError::arg("--vcpu-pattern", e))?
            }
            "vcpu-range" => {
                o.vcpu.range = Some(
                    crate::postcopy::vcpu::parse_range(&val(&mut it)?)
                        .map_err(|e| CliError::arg("--vcpu-range", e))?,
                )
            }
            "vcpu-threads" => {
                o.vcpu.threads = val(&mut it)?
                    .parse()
                    .map_err(|_| CliError::arg("--vcpu-threads", "expected a number"))?
            }
            "vcpu-rate" => {
                o.vcpu.rate = val(&mut it)?
                    .parse()
                    .map_err(|_| CliError::arg("--vcpu-rate", "expected a number"))?
            }
            "log" => o.log = val(&mut it)?,
            "device-catalogue" => o.device_catalogue = Some(PathBuf::from(val(&mut it)?)),
            "compat-version" => {
                o.compat_version =
                    Some(val(&mut it)?.parse().map_err(|e: crate::compat::VersionError| {
                        CliError::arg("--compat-version", e.to_string())
                    })?)
            }
            "nodefaults" => o.nodefaults = true,
            "sched-stats" => o.sched_stats = true,
            "postcopy-window" => {
                let v = val(&mut it)?;
                o.postcopy_window = parse_size(&v)
                    .map_err(|e| CliError::arg("--postcopy-window", e.to_string()))?
                    as usize
            }
            n if REFUSED.contains(&n) => {
                return Err(CliError::arg(
                    &format!("-{n}"),
                    "not supported by rust-dest: give guest RAM as -object memory-backend-file",
                ))
            }
            "mem-prealloc" => o.warnings.push("option -mem-prealloc not modelled, ignored".into()),
            n @ ("rtc" | "boot" | "msg" | "sandbox" | "overcommit" | "device" | "blockdev"
            | "netdev") => {
                let v = val(&mut it)?;
                pend.devices.option(n, &v);
                misc::check_guest_option(n, &v)?;
                if n == "device" {
                    pend.dimm_memdevs.extend(misc::device_memdev(&v)?);
                }
                o.warnings.push(format!("-{n} {v}: not modelled, ignored"));
            }
            n if IGNORED_WITH_ARG.contains(&n) => {
                let v = val(&mut it)?;
                pend.devices.option(n, &v);
                o.warnings.push(format!("-{n} {v}: not modelled, ignored"));
            }
            n if IGNORED_FLAGS.contains(&n) => {
                pend.devices.flag(n);
                o.warnings.push(format!("-{n}: not modelled, ignored"))
            }
            n if NEUTRAL_FLAGS.contains(&n) => {}
            other => return Err(CliError::InvalidOption(format!("-{other}"))),
        }
    }
    finish(o, pend).map(|o| Parsed::Run(Box::new(o)))
}

/// Properties of QEMU 10.0's x86 machine types (`-machine pc-q35-10.0,help`,
/// plus those QEMU accepts without listing them); the first part of an
/// indexed key (`cxl-fmw.0.targets.0`) counts.
const MACHINE_PROPS: &[&str] = &[
    "acpi",
    "append",
    "aux-ram-share",
    "boot",
    "bus-lock-ratelimit",
    "confidential-guest-support",
    "default-bus-bypass-iommu",
    "dt-compatible",
    "dtb",
    "dump-guest-core",
    "dumpdtb",
    "fd-bootchk",
    "firmware",
    "graphics",
    "hpet",
    "i8042",
    "initrd",
    "kernel",
    "max-fw-size",
    "max-ram-below-4g",
    "mem-merge",
    "memory",
    "memory-encryption",
    "phandle-start",
    "pic",
    "pit",
    "sata",
    "sgx-epc",
    "shim",
    "smbios-entry-point-type",
    "smbus",
    "smm",
    "smp",
    "smp-cache",
    "usb",
    "vmport",
    "x-oem-id",
    "x-oem-table-id",
    "x-south-bridge",
    "kernel-irqchip",
    "kernel_irqchip",
    "kvm-shadow-mem",
    "pflash0",
    "pflash1",
    "nvdimm",
    "nvdimm-persistence",
    "hmat",
    "cxl",
    "cxl-fmw",
    "igd-passthru",
];

/// `-machine [type=]TYPE[,memory-backend=ID][,suppress-vmdesc=on|off][,...]`.
fn machine(o: &mut Options, pend: &mut Pending, v: &str) -> Result<(), CliError> {
    let p = Props::parse("machine", v, Some("type"))?;
    let mut ignored = Vec::new();
    for k in p.map.keys() {
        match k.as_str() {
            "type" | "memory-backend" | "suppress-vmdesc" => {}
            "accel" => {
                if p.str("accel")?.as_deref() != Some("tcg") {
                    pend.devices.machine_property("accel");
                }
            }
            other if MACHINE_PROPS.contains(&other.split('.').next().unwrap_or(other)) => {
                pend.devices.machine_property(other);
                ignored.push(other.to_string())
            }
            other => {
                let ty = match p.str("type")?.as_deref() {
                    Some("q35") | None => "pc-q35-10.0".to_string(),
                    Some("pc") => "pc-i440fx-10.0".to_string(),
                    Some(t) => t.to_string(),
                };
                return Err(CliError::Config(format!("Property '{ty}-machine.{other}' not found")));
            }
        }
    }
    if let Some(b) = p.bool("suppress-vmdesc")? {
        pend.suppress_vmdesc = Some(b);
    }
    if let Some(id) = p.str("memory-backend")? {
        o.machine_backend = Some(id);
    }
    if let Some(t) = p.str("type")? {
        o.machine = Some(t);
    }
    if !ignored.is_empty() {
        o.warnings
            .push(format!("-machine {v}: properties {} not modelled, ignored", ignored.join(", ")));
    }
    Ok(())
}

/// `-object` in either syntax: memory backends are honoured, other objects
/// (secrets, iothreads, RNG sources, ...) accepted with a warning.
fn object(o: &mut Options, v: &str) -> Result<(), CliError> {
    let p = Props::parse("object", v, Some("qom-type"))?;
    let ty = p.req_str("qom-type")?;
    if memory::BACKEND_TYPES.contains(&ty.as_str()) {
        let b = memory::backend(&p, &ty, &mut o.warnings)?;
        if o.backends.iter().any(|x| x.id == b.id) {
            return Err(p.err(format!("Duplicate ID '{}' for object", b.id)));
        }
        o.backends.push(b);
    } else if ty.starts_with("memory-backend-") {
        return Err(p.err(format!("{ty}: memory backend type not supported by rust-dest")));
    } else {
        p.req_str("id")?;
        o.warnings.push(format!("-object {v}: not modelled, ignored"));
    }
    Ok(())
}

/// Whole-line checks: monitors resolved, memory backends cross-checked, and
/// a line that nothing could ever start refused.
fn finish(mut o: Options, pend: Pending) -> Result<Options, CliError> {
    let implied = o.machine.as_deref().map(MachineCompat::of).unwrap_or_default();
    o.suppress_vmdesc = pend.suppress_vmdesc.unwrap_or(implied.suppress_vmdesc);
    o.send_configuration = pend.send_configuration.unwrap_or(implied.send_configuration);
    o.send_section_footer = pend.send_section_footer.unwrap_or(implied.send_section_footer);
    o.device_changes = pend.devices.changes.clone();
    o.qmp_from = o.qmp.iter().map(|q| format!("-qmp {q}")).collect();
    for (spec, from) in monitor::resolve(&pend.chardevs, &pend.mons, &mut o.warnings)? {
        o.qmp.push(spec);
        o.qmp_from.push(from);
    }
    memory::check(&o.backends, &o.mem, o.machine_backend.as_deref(), &pend.numa)?;
    for (opt, id) in &pend.dimm_memdevs {
        if !o.backends.iter().any(|b| &b.id == id) {
            return Err(CliError::arg(opt, format!("can't find memory backend '{id}'")));
        }
    }
    if o.qmp.is_empty() {
        match o.incoming.as_deref() {
            None => {
                return Err(CliError::Config(
                    "nothing to do: give -incoming and/or a QMP monitor (see --help)".into(),
                ))
            }
            Some("defer") => {
                return Err(CliError::Config(
                    "-incoming defer needs a QMP monitor (-qmp, or -chardev with -mon mode=control) to receive migrate-incoming".into(),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(o)
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
mod tests;
