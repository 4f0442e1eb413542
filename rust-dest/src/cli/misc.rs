//! Options that describe the guest rather than the migration: checked the
//! way QEMU checks them (so a malformed line fails as it would with QEMU) and
//! then kept where rust-dest reports them (`-name`, `-smp` for `query-name`
//! and `query-cpus-fast`) or accepted with a warning. Texts verified on the
//! QEMU 10.0 binary (`system/vl.c`, `hw/core/machine-smp.c`).

use super::props::split_opts;
use super::props::Props;
use super::CliError;

/// `-name [guest=]NAME[,process=P][,debug-threads=on|off]` → the guest name.
pub fn parse_name(arg: &str) -> Result<Option<String>, CliError> {
    let p = Props::parse("name", arg, Some("guest"))?;
    p.only(&["guest", "process", "debug-threads"])?;
    p.bool("debug-threads")?;
    p.str("guest")
}

/// The vCPU topology of `-smp` (x86: sockets, dies, modules, cores, threads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Smp {
    pub cpus: u64,
    pub sockets: u64,
    pub dies: u64,
    pub modules: u64,
    pub cores: u64,
    pub threads: u64,
    pub maxcpus: u64,
}

impl Default for Smp {
    fn default() -> Self {
        Smp { cpus: 1, sockets: 1, dies: 1, modules: 1, cores: 1, threads: 1, maxcpus: 1 }
    }
}

impl Smp {
    /// (socket, die, module, core, thread) ids of vCPU `index`.
    pub fn ids(&self, index: u64) -> (u64, u64, u64, u64, u64) {
        let t = index % self.threads;
        let c = (index / self.threads) % self.cores;
        let m = (index / (self.threads * self.cores)) % self.modules;
        let d = (index / (self.threads * self.cores * self.modules)) % self.dies;
        let s = index / (self.threads * self.cores * self.modules * self.dies);
        (s, d, m, c, t)
    }
}

/// `-smp [cpus=]N[,maxcpus=][,sockets=][,dies=][,clusters=][,modules=][,cores=][,threads=]`,
/// missing values computed preferring cores (machine types 6.2 and later).
pub fn parse_smp(arg: &str) -> Result<Smp, CliError> {
    let p = Props::parse("smp", arg, Some("cpus"))?;
    p.only(&[
        "cpus", "maxcpus", "sockets", "dies", "clusters", "modules", "books", "drawers", "cores",
        "threads",
    ])?;
    let g = |k: &str| -> Result<u64, CliError> { Ok(p.num(k)?.unwrap_or(0)) };
    let (cpus, mut maxcpus) = (g("cpus")?, g("maxcpus")?);
    let (mut sockets, mut cores, mut threads) = (g("sockets")?, g("cores")?, g("threads")?);
    let dies = g("dies")?.max(1);
    let modules = g("modules")?.max(1);
    let clusters = g("clusters")?.max(1);
    let (books, drawers) = (g("books")?.max(1), g("drawers")?.max(1));
    if clusters > 1 || books > 1 || drawers > 1 {
        return Err(CliError::Config("Invalid CPU topology: clusters, books or drawers not supported by this machine's CPU topology".into()));
    }
    if cpus == 0 && maxcpus == 0 && sockets == 0 && cores == 0 && threads == 0 {
        return Ok(Smp::default());
    }
    let max = if maxcpus > 0 { maxcpus } else { cpus };
    if max > 0 || sockets * cores * threads == 0 {
        sockets = if sockets > 0 { sockets } else { 1 };
        threads = if threads > 0 { threads } else { 1 };
        if cores == 0 {
            cores = max / (sockets * dies * modules * threads);
        }
    }
    let total = sockets * dies * modules * cores * threads;
    if maxcpus == 0 {
        maxcpus = if cpus > 0 { cpus } else { total };
    }
    let cpus = if cpus > 0 { cpus } else { maxcpus };
    if total != maxcpus {
        return Err(CliError::Config(format!(
            "Invalid CPU topology: product of the hierarchy must match maxcpus: sockets ({sockets}) * dies ({dies}) * modules ({modules}) * cores ({cores}) * threads ({threads}) != maxcpus ({maxcpus})"
        )));
    }
    if maxcpus < cpus {
        return Err(CliError::Config(format!(
            "Invalid CPU topology: maxcpus must be equal to or greater than smp: sockets ({sockets}) * dies ({dies}) * modules ({modules}) * cores ({cores}) * threads ({threads}) == maxcpus ({maxcpus}) < smp_cpus ({cpus})"
        )));
    }
    Ok(Smp { cpus, sockets, dies, modules, cores, threads, maxcpus })
}

fn valid_datetime(s: &str) -> bool {
    let digits = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_digit());
    let date = |d: &str| {
        let v: Vec<&str> = d.split('-').collect();
        v.len() == 3 && digits(v[0], 4) && digits(v[1], 2) && digits(v[2], 2)
    };
    match s.split_once('T') {
        None => date(s),
        Some((d, t)) => {
            let v: Vec<&str> = t.split(':').collect();
            date(d) && v.len() == 3 && v.iter().all(|x| digits(x, 2))
        }
    }
}

/// Guest-only options: validated like QEMU, then accepted (`Ok(true)`: the
/// caller warns that they are not modelled). `Ok(false)`: not one of these.
pub fn check_guest_option(name: &str, arg: &str) -> Result<bool, CliError> {
    match name {
        "rtc" => {
            let p = Props::parse(name, arg, None)?;
            p.only(&["base", "clock", "driftfix"])?;
            if let Some(b) = p.str("base")? {
                if b != "utc" && b != "localtime" && !valid_datetime(&b) {
                    return Err(CliError::Config(
                        "invalid datetime format\nvalid formats: '2006-06-17T16:01:21' or '2006-06-17'".into(),
                    ));
                }
            }
            p.choice("clock", &["host", "rt", "vm"])?;
            p.choice("driftfix", &["none", "slew"])?;
        }
        "boot" => {
            let p = Props::parse(name, arg, Some("order"))?;
            p.only(&[
                "order",
                "once",
                "menu",
                "splash",
                "splash-time",
                "reboot-timeout",
                "strict",
            ])?;
            for k in ["menu", "strict"] {
                if let Some(v) = p.str(k)? {
                    if super::props::on_off(&v).is_none() {
                        return Err(CliError::Config(format!(
                            "Parameter 'boot.{k}' expects 'on' or 'off'"
                        )));
                    }
                }
            }
        }
        "msg" => {
            let p = Props::parse(name, arg, None)?;
            p.only(&["timestamp", "guest-name"])?;
            p.bool("timestamp")?;
            p.bool("guest-name")?;
        }
        "sandbox" => {
            let p = Props::parse(name, arg, Some("enable"))?;
            p.only(&["enable", "obsolete", "elevateprivileges", "spawn", "resourcecontrol"])?;
            p.bool("enable")?;
            for k in ["obsolete", "elevateprivileges", "spawn", "resourcecontrol"] {
                p.choice(k, &["allow", "deny", "children"])?;
            }
        }
        "overcommit" => {
            let p = Props::parse(name, arg, None)?;
            p.only(&["mem-lock", "cpu-pm"])?;
            p.choice("mem-lock", &["on", "off", "on-fault"])?;
            p.bool("cpu-pm")?;
        }
        "device" => {
            let p = Props::parse(name, arg, Some("driver"))?;
            p.req_str("driver")?;
        }
        "blockdev" => {
            let p = Props::parse(name, arg, None)?;
            p.req_str("driver")?;
        }
        "netdev" => {
            let p = Props::parse(name, arg, Some("type"))?;
            p.req_str("type")?;
            p.req_str("id")?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// `-device` properties that name a memory backend (`pc-dimm,memdev=`,
/// `virtio-mem`, `nvdimm`): the backends must exist.
pub fn device_memdev(arg: &str) -> Result<Option<(String, String)>, CliError> {
    let p = Props::parse("device", arg, Some("driver"))?;
    Ok(p.str("memdev")?.map(|m| (p.opt.clone(), m)))
}

/// `-global DRIVER.PROP=VALUE` or `-global driver=D,property=P,value=V` →
/// (driver, property, value).
pub fn parse_global(arg: &str) -> Result<(String, String, String), CliError> {
    let opt = format!("-global {arg}");
    if let Some((dp, v)) = arg.split_once('=') {
        if let Some((d, p)) = dp.split_once('.') {
            if !dp.contains(',') {
                return Ok((d.into(), p.into(), v.into()));
            }
        }
    }
    let p = Props::parse("global", arg, None)?;
    p.only(&["driver", "property", "value"])?;
    match (p.str("driver")?, p.str("property")?, p.str("value")?) {
        (Some(d), Some(pr), Some(v)) => Ok((d, pr, v)),
        _ => Err(CliError::arg(&opt, format!("Invalid parameter '{arg}'"))),
    }
}

/// One `-add-fd fd=N,set=S[,opaque=TEXT]` (QEMU's `system/vl.c`): an
/// inherited descriptor put in a descriptor set at start-up. The texts are
/// QEMU 10.0's; whether `fd` is open is checked when it is adopted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddFd {
    pub fd: i32,
    pub set: i64,
    pub opaque: Option<String>,
}

pub fn parse_add_fd(v: &str) -> Result<AddFd, CliError> {
    let opt = format!("-add-fd {v}");
    let err = |m: &str| CliError::arg(&opt, m);
    let (mut fd, mut set, mut opaque) = (None, None, None);
    for kv in split_opts(v) {
        let (k, val) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        let num = |val: &str| {
            val.parse::<i64>().map_err(|_| err(&format!("Parameter '{k}' expects a number")))
        };
        match k {
            "fd" => fd = Some(num(val)?),
            "set" => set = Some(num(val)?),
            "opaque" => opaque = Some(val.to_string()),
            _ => return Err(err(&format!("Invalid parameter '{k}'"))),
        }
    }
    let fd = fd
        .filter(|f| (0..=i64::from(i32::MAX)).contains(f))
        .ok_or_else(|| err("fd option is required and must be non-negative"))?;
    let set = set
        .filter(|s| *s >= 0)
        .ok_or_else(|| err("set option is required and must be non-negative"))?;
    if fd <= 2 {
        return Err(err("fd cannot be a standard I/O stream"));
    }
    Ok(AddFd { fd: fd as i32, set, opaque })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smp() {
        let s = parse_smp("4,sockets=1,dies=1,cores=2,threads=2").unwrap();
        assert_eq!((s.cpus, s.maxcpus, s.cores, s.threads), (4, 4, 2, 2));
        assert_eq!(s.ids(3), (0, 0, 0, 1, 1));
        assert_eq!(parse_smp("2").unwrap().cores, 2);
        assert_eq!(
            parse_smp("2,sockets=3").unwrap_err().to_string(),
            "Invalid CPU topology: product of the hierarchy must match maxcpus: sockets (3) * dies (1) * modules (1) * cores (0) * threads (1) != maxcpus (2)"
        );
        assert!(parse_smp("cpus=4,sockets=2,cores=2,threads=1,maxcpus=8").is_err());
        assert_eq!(parse_smp("cpus=2,sockets=2,cores=2,threads=1,maxcpus=4").unwrap().maxcpus, 4);
    }

    #[test]
    fn guest_options() {
        assert_eq!(parse_name("guest=vm1,debug-threads=on").unwrap().as_deref(), Some("vm1"));
        assert_eq!(parse_name("vm2").unwrap().as_deref(), Some("vm2"));
        assert!(parse_name("guest=a,debug-threads=x")
            .unwrap_err()
            .to_string()
            .ends_with("Parameter 'debug-threads' expects 'on' or 'off'"));
        assert!(check_guest_option("rtc", "base=utc,driftfix=slew").unwrap());
        assert!(check_guest_option("rtc", "base=2006-06-17T16:01:21").unwrap());
        assert!(check_guest_option("rtc", "base=foo")
            .unwrap_err()
            .to_string()
            .starts_with("invalid datetime format"));
        assert!(check_guest_option("boot", "strict=on").unwrap());
        assert_eq!(
            check_guest_option("boot", "strict=maybe").unwrap_err().to_string(),
            "Parameter 'boot.strict' expects 'on' or 'off'"
        );
        assert!(check_guest_option("overcommit", "bogus=on")
            .unwrap_err()
            .to_string()
            .ends_with("Invalid parameter 'bogus'"));
        assert!(check_guest_option(
            "sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        )
        .unwrap());
        assert!(check_guest_option("msg", "timestamp=on").unwrap());
        assert!(check_guest_option("device", r#"{"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0","bus":"pci.1","addr":"0x0"}"#).unwrap());
        assert!(check_guest_option("device", r#"{"driver":"virtio-foo""#)
            .unwrap_err()
            .to_string()
            .contains("JSON parse error"));
        assert!(check_guest_option("blockdev", r#"{"node-name":"x"}"#)
            .unwrap_err()
            .to_string()
            .ends_with("Parameter 'driver' is missing"));
        assert!(!check_guest_option("cpu", "host").unwrap());
        assert_eq!(
            parse_global("migration.send-configuration=off").unwrap().1,
            "send-configuration"
        );
        assert_eq!(parse_global("driver=migration,property=x,value=1").unwrap().2, "1");
        assert!(parse_global("foo").is_err());
    }
}
