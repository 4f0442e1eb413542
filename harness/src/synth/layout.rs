//! The RAMBlock layout and machine type a real q35 source announces, learned
//! from a real QEMU source at run time (cached per process).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};

use wire::ramrec::{decode_ram_record, BlockEntry, RamContext, RamRecord};
use wire::stream::{self, SectionKind, TopRecord};
use wire::{vmdesc, Cursor};

use crate::qmp::{MigrationStatus, StatusWait};
use crate::vm::qemu::{QemuBinary, QemuVm, VmConfig};

/// Target page size (x86-64).
pub const PAGE_SIZE: u64 = wire::units::TARGET_PAGE_SIZE;
/// Guest RAM of the standard synthetic-source configuration.
pub const GUEST_MEM: u64 = 128 << 20;

/// What a real QEMU 10.0.2 source started as
/// `qemu-system-x86_64 -accel tcg -machine q35,memory-backend=mem0 -m 128M
/// -object memory-backend-file,id=mem0,size=128M,... -nodefaults -S`
/// announces in its MEM_SIZE record, in stream order. Obtained by running
/// that source with `migrate exec:cat > FILE` and decoding the stream (what
/// [`probe_layout`] does at run time; the tests use the probed layout and
/// compare it with this table only as a sanity check).
pub const QEMU_10_0_Q35_128M_BLOCKS: &[(&str, u64)] = &[
    ("mem0", 0x800_0000),
    ("/rom@etc/acpi/tables", 0x2_0000),
    ("pc.bios", 0x4_0000),
    ("pc.rom", 0x2_0000),
    ("/rom@etc/table-loader", 0x1000),
    ("/rom@etc/acpi/rsdp", 0x1000),
];
/// Machine type name QEMU 10.0 writes in the configuration section for `-machine q35`.
pub const QEMU_10_0_Q35_MACHINE: &str = "pc-q35-10.0";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    pub name: String,
    pub used_length: u64,
}

impl BlockInfo {
    pub fn pages(&self) -> u64 {
        self.used_length / PAGE_SIZE
    }
}

/// The RAMBlocks and machine type a real source announces.
#[derive(Clone, Debug)]
pub struct SourceLayout {
    /// Machine type as written in the configuration section.
    pub machine: String,
    /// RAMBlocks in MEM_SIZE order.
    pub blocks: Vec<BlockInfo>,
    /// The vmdesc `devices` entry of "globalstate" in the real stream (its
    /// field sizes), used to describe our globalstate section.
    pub globalstate_desc: Option<Value>,
    /// The vmdesc `configuration` object of the real stream.
    pub configuration_desc: Option<Value>,
    /// Every device section the vmdesc describes: (idstr, instance, version).
    pub sections: Vec<(String, u32, u32)>,
    /// How the layout was obtained.
    pub origin: String,
}

impl SourceLayout {
    /// The hard-coded QEMU 10.0 q35/128M layout (see [`QEMU_10_0_Q35_128M_BLOCKS`]).
    pub fn qemu_10_0_q35_128m() -> SourceLayout {
        SourceLayout {
            machine: QEMU_10_0_Q35_MACHINE.into(),
            blocks: QEMU_10_0_Q35_128M_BLOCKS
                .iter()
                .map(|(n, l)| BlockInfo { name: n.to_string(), used_length: *l })
                .collect(),
            globalstate_desc: None,
            configuration_desc: None,
            sections: Vec::new(),
            origin: "hard-coded QEMU 10.0 table".into(),
        }
    }

    pub fn block(&self, name: &str) -> Option<&BlockInfo> {
        self.blocks.iter().find(|b| b.name == name)
    }

    pub fn total(&self) -> u64 {
        self.blocks.iter().map(|b| b.used_length).sum()
    }

    /// `name (0xlen)` list for messages.
    pub fn describe(&self) -> String {
        let b: Vec<String> =
            self.blocks.iter().map(|b| format!("{} ({:#x})", b.name, b.used_length)).collect();
        format!("machine {} blocks [{}] ({})", self.machine, b.join(", "), self.origin)
    }
}

/// Decode the header, the MEM_SIZE record and the trailing vmdesc of a real
/// precopy stream (as written by `migrate exec:cat > FILE`).
pub fn decode_layout(buf: &[u8]) -> Result<SourceLayout> {
    let mut c = Cursor::new(buf, 0);
    let h = stream::decode_header(&mut c, true).map_err(|e| anyhow!("stream header: {e}"))?;
    let machine =
        h.configuration.map(|c| c.machine).ok_or_else(|| anyhow!("no configuration section"))?;
    let blocks = loop {
        match stream::decode_top(&mut c).map_err(|e| anyhow!("top-level record: {e}"))? {
            TopRecord::Command(_) => continue,
            TopRecord::SectionOpen { kind: SectionKind::Start, idstr: "ram", .. } => {
                match decode_ram_record(&mut c, &RamContext::x86())
                    .map_err(|e| anyhow!("MEM_SIZE: {e}"))?
                {
                    RamRecord::MemSize { blocks, .. } => break blocks,
                    other => {
                        bail!("first record of the ram START section is {other:?}, not MEM_SIZE")
                    }
                }
            }
            other => bail!("unexpected record before the ram START section: {other:?}"),
        }
    };
    let (globalstate_desc, configuration_desc, sections) = match vmdesc::find_vmdesc_tail(buf) {
        Some((_, v)) => {
            let devices = v["devices"].as_array().cloned().unwrap_or_default();
            let sections = devices
                .iter()
                .filter_map(|d| {
                    let n = |k: &str| d[k].as_u64().map(|x| x as u32);
                    Some((d["name"].as_str()?.to_string(), n("instance_id")?, n("version")?))
                })
                .collect();
            (
                devices.iter().find(|d| d["name"] == "globalstate").cloned(),
                v.get("configuration").cloned(),
                sections,
            )
        }
        None => (None, None, Vec::new()),
    };
    Ok(SourceLayout {
        machine,
        blocks: blocks
            .into_iter()
            .map(|BlockEntry { name, used_length, .. }| BlockInfo { name, used_length })
            .collect(),
        globalstate_desc,
        configuration_desc,
        sections,
        origin: "probed".into(),
    })
}

/// Learn the layout from a real source: start `qemu` with the standard
/// config (`-S`, no disk), `migrate` it to `exec:cat > FILE`, decode FILE.
pub async fn probe_layout(qemu: &QemuBinary, mem_bytes: u64) -> Result<SourceLayout> {
    let t0 = Instant::now();
    let dir = tempfile::Builder::new().prefix("synth-probe-").tempdir()?;
    let mut cfg = VmConfig::new("synth-probe", mem_bytes);
    cfg.paused = true;
    let vm = QemuVm::start(qemu, cfg, dir.path().join("probe.log")).await?;
    let out = dir.path().join("stream.bin");
    let r: Result<()> = async {
        vm.execute("migrate", json!({ "uri": format!("exec:cat > {}", out.display()) })).await?;
        let done = StatusWait::until([MigrationStatus::Completed])
            .failing_on([MigrationStatus::Failed, MigrationStatus::Cancelled]);
        vm.qmp.wait_for(&done, Duration::from_secs(30)).await?;
        Ok(())
    }
    .await;
    let tail = vm.log_tail(2000);
    vm.quit().await;
    r.with_context(|| format!("probing the RAMBlock layout of a real source; log:\n{tail}"))?;
    let buf = std::fs::read(&out)?;
    let mut l = decode_layout(&buf)?;
    let v = qemu.version().map(|(a, b, c)| format!("{a}.{b}.{c}")).unwrap_or_else(|_| "?".into());
    l.origin = format!("probed from a real QEMU {v} source in {:?}", t0.elapsed());
    Ok(l)
}

/// Probed layouts by (QEMU binary, guest memory size).
type LayoutCache = HashMap<(PathBuf, u64), Arc<SourceLayout>>;

/// [`probe_layout`] once per (binary, memory size) per process.
pub async fn source_layout(qemu: &QemuBinary, mem_bytes: u64) -> Result<Arc<SourceLayout>> {
    static CACHE: tokio::sync::Mutex<Option<LayoutCache>> = tokio::sync::Mutex::const_new(None);
    let mut g = CACHE.lock().await;
    let key = (qemu.path.clone(), mem_bytes);
    if let Some(l) = g.get_or_insert_with(HashMap::new).get(&key) {
        return Ok(l.clone());
    }
    let l = Arc::new(probe_layout(qemu, mem_bytes).await?);
    g.as_mut().unwrap().insert(key, l.clone());
    Ok(l)
}
