//! The options that decide where guest RAM lives: `-object memory-backend-*`
//! (either syntax), `-m size=...,slots=...,maxmem=...`, `-machine
//! memory-backend=` and `-numa node,memdev=`. rust-dest honours every backend
//! (the RAMBlock named by its id lives in it) or refuses the command line;
//! none is ever ignored. Checks and texts follow QEMU's (`system/vl.c`,
//! `hw/core/numa.c`, `backends/hostmem*.c`), verified on the 10.0 binary.

use std::path::PathBuf;

use super::props::Props;
use super::CliError;
use crate::ram::Backend;

/// The memory backend types rust-dest can place RAM in.
pub const BACKEND_TYPES: &[&str] =
    &["memory-backend-file", "memory-backend-ram", "memory-backend-memfd"];

/// Properties of memory backends that do not change where the bytes live
/// (NUMA policy, preallocation, dump/merge advice): accepted, one warning.
const ADVISORY: &[&str] = &[
    "prealloc",
    "prealloc-threads",
    "prealloc-context",
    "host-nodes",
    "policy",
    "merge",
    "dump",
    "reserve",
    "discard-data",
    "align",
    "offset",
    "pmem",
    "hugetlbsize",
    "seal",
];

/// `-object memory-backend-*` in either syntax → a [`Backend`].
/// `warnings` gets one line naming advisory properties that are not modelled.
pub fn backend(p: &Props, ty: &str, warnings: &mut Vec<String>) -> Result<Backend, CliError> {
    let mut known = vec!["qom-type", "id", "size", "share", "x-use-canonical-path-for-ramblock-id"];
    known.extend_from_slice(ADVISORY);
    match ty {
        "memory-backend-file" => known.extend_from_slice(&["mem-path", "readonly", "rom"]),
        "memory-backend-memfd" => known.push("hugetlb"),
        _ => {}
    }
    p.only(&known)?;
    let id = p.req_str("id")?;
    let size = p.size("size")?.ok_or_else(|| p.err("Parameter 'size' is missing"))?;
    if size == 0 {
        return Err(p.err("can't create backend with size 0"));
    }
    let mem_path = match ty {
        "memory-backend-file" => Some(PathBuf::from(p.req_str("mem-path")?)),
        _ => None,
    };
    let share = p.bool("share")?.unwrap_or(false);
    // These change the RAMBlock's name or how its pages may be written:
    // rust-dest does not model them, so it refuses rather than misplace RAM.
    for key in ["x-use-canonical-path-for-ramblock-id", "readonly", "hugetlb"] {
        if p.bool(key)? == Some(true) {
            return Err(p.err(format!("{key}=on is not supported by rust-dest")));
        }
    }
    if let Some(rom) = p.str("rom")?.or_else(|| p.bool("rom").ok().flatten().map(|b| b.to_string()))
    {
        if !matches!(rom.as_str(), "off" | "false" | "auto") {
            return Err(p.err(format!("rom={rom} is not supported by rust-dest")));
        }
    }
    if ty == "memory-backend-file" && !share {
        warnings.push(format!(
            "-object {ty},id={id}: share=off; rust-dest maps the file shared anyway so it holds the guest RAM"
        ));
    }
    let advisory: Vec<&str> = ADVISORY.iter().copied().filter(|k| p.has(k)).collect();
    if !advisory.is_empty() {
        warnings
            .push(format!("-object {ty},id={id}: {} not modelled (ignored)", advisory.join(", ")));
    }
    Ok(Backend { id, size, mem_path, share })
}

/// `-m [size=]SIZE[,slots=N][,maxmem=SIZE]`; a bare number means MiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemOpts {
    pub size: Option<u64>,
    pub slots: Option<u64>,
    pub maxmem: Option<u64>,
}

pub fn parse_m(arg: &str) -> Result<MemOpts, CliError> {
    let p = Props::parse("m", arg, Some("size"))?;
    p.only(&["size", "slots", "maxmem"])?;
    let size = match p.str("size")? {
        None => None,
        Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            let mib: u64 = s.parse().map_err(|_| p.size_err("size"))?;
            Some(mib.checked_mul(1 << 20).ok_or_else(|| p.size_err("size"))?)
        }
        Some(_) => p.size("size")?,
    };
    let slots = p.num("slots")?;
    let maxmem = p.size("maxmem")?;
    if let (Some(s), Some(m)) = (size, maxmem) {
        if m < s {
            return Err(CliError::Config(format!(
                "invalid value of maxmem: maximum memory size (0x{m:x}) must be at least the initial memory size (0x{s:x})"
            )));
        }
    }
    Ok(MemOpts { size, slots, maxmem })
}

/// One `-numa node,...` with a memory device.
#[derive(Clone, Debug)]
pub struct NumaNode {
    pub opt: String,
    pub memdev: Option<String>,
}

/// `-numa node|dist|cpu|hmat-lb|hmat-cache,...`: nodes are kept (their
/// `memdev` must name a backend); the rest concerns the guest's view only.
pub fn parse_numa(arg: &str) -> Result<Option<NumaNode>, CliError> {
    let p = Props::parse("numa", arg, Some("type"))?;
    match p.choice("type", &["node", "dist", "cpu", "hmat-lb", "hmat-cache"])?.as_deref() {
        Some("node") => {
            p.only(&["type", "nodeid", "cpus", "memdev", "mem", "initiator"])?;
            if p.has("mem") {
                return Err(p.err(
                    "Parameter -numa node,mem is not supported by this machine type\nUse -numa node,memdev instead",
                ));
            }
            Ok(Some(NumaNode { opt: p.opt.clone(), memdev: p.str("memdev")? }))
        }
        Some(_) => Ok(None),
        None => Err(p.err("Parameter 'type' is missing")),
    }
}

/// Whole-line checks once every option is read (QEMU's order: backends
/// named by NUMA nodes, then the machine's memory backend).
pub fn check(
    backends: &[Backend],
    mem: &MemOpts,
    machine_backend: Option<&str>,
    numa: &[NumaNode],
) -> Result<(), CliError> {
    let find = |id: &str| backends.iter().find(|b| b.id == id);
    let mut numa_total = 0u64;
    for n in numa {
        if let Some(id) = &n.memdev {
            let b = find(id)
                .ok_or_else(|| CliError::arg(&n.opt, format!("memdev={id} is ambiguous")))?;
            numa_total += b.size;
        }
    }
    if let Some(id) = machine_backend {
        let b =
            find(id).ok_or_else(|| CliError::Config(format!("Memory backend '{id}' not found")))?;
        if mem.size.is_some_and(|s| s != b.size) {
            return Err(CliError::Config(
                "Machine memory size does not match the size of the memory backend".into(),
            ));
        }
    } else if numa.iter().any(|n| n.memdev.is_some()) {
        let ram = mem.size.unwrap_or(128 << 20);
        if numa_total != ram {
            return Err(CliError::Config(format!(
                "total memory for NUMA nodes (0x{numa_total:x}) should equal RAM size (0x{ram:x})"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m_forms() {
        assert_eq!(parse_m("512").unwrap().size, Some(512 << 20));
        let m = parse_m("size=1048576k,slots=16,maxmem=4G").unwrap();
        assert_eq!(m, MemOpts { size: Some(1 << 30), slots: Some(16), maxmem: Some(4 << 30) });
        let e = parse_m("size=1G,maxmem=foo").unwrap_err().to_string();
        assert!(
            e.starts_with("-m size=1G,maxmem=foo: Parameter 'maxmem' expects a non-negative"),
            "{e}"
        );
        assert!(parse_m("1G,bogus=1")
            .unwrap_err()
            .to_string()
            .ends_with("Invalid parameter 'bogus'"));
    }

    #[test]
    fn backends_json_and_keyval_agree() {
        let mut w = Vec::new();
        let k = Props::parse(
            "object",
            "memory-backend-file,id=m,size=1G,mem-path=/dev/shm/x,share=on",
            Some("qom-type"),
        )
        .unwrap();
        let j = Props::parse("object", r#"{"qom-type":"memory-backend-file","id":"m","mem-path":"/dev/shm/x","share":true,"size":1073741824}"#, None).unwrap();
        let (a, b) = (
            backend(&k, "memory-backend-file", &mut w).unwrap(),
            backend(&j, "memory-backend-file", &mut w).unwrap(),
        );
        assert_eq!((a.id, a.size, a.mem_path, a.share), (b.id, b.size, b.mem_path, b.share));
        assert!(w.is_empty(), "{w:?}");
        let j = Props::parse(
            "object",
            r#"{"qom-type":"memory-backend-ram","id":"m","size":1,"bogus":1}"#,
            None,
        )
        .unwrap();
        assert!(backend(&j, "memory-backend-ram", &mut w)
            .unwrap_err()
            .to_string()
            .ends_with("Parameter 'bogus' is unexpected"));
        let j = Props::parse(
            "object",
            r#"{"qom-type":"memory-backend-file","id":"m","size":4096}"#,
            None,
        )
        .unwrap();
        assert!(backend(&j, "memory-backend-file", &mut w)
            .unwrap_err()
            .to_string()
            .ends_with("Parameter 'mem-path' is missing"));
    }

    #[test]
    fn whole_line() {
        let b = |id: &str, size| Backend { id: id.into(), size, mem_path: None, share: false };
        let m = MemOpts { size: Some(256 << 20), ..Default::default() };
        let node =
            |id: &str| NumaNode { opt: format!("-numa node,memdev={id}"), memdev: Some(id.into()) };
        assert!(check(&[b("a", 128 << 20), b("b", 128 << 20)], &m, None, &[node("a"), node("b")])
            .is_ok());
        let e = check(&[b("a", 128 << 20)], &m, None, &[node("a")]).unwrap_err().to_string();
        assert_eq!(e, "total memory for NUMA nodes (0x8000000) should equal RAM size (0x10000000)");
        assert_eq!(
            check(&[], &m, None, &[node("x")]).unwrap_err().to_string(),
            "-numa node,memdev=x: memdev=x is ambiguous"
        );
        assert_eq!(
            check(&[], &m, Some("x"), &[]).unwrap_err().to_string(),
            "Memory backend 'x' not found"
        );
        assert!(check(&[b("a", 1 << 30)], &m, Some("a"), &[]).is_err());
    }
}
