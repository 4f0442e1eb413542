//! A synthetic migration SOURCE: plays scripted protocol sequences into a
//! destination under test (a real QEMU or rust-dest), keeps a model of the
//! guest RAM it sent, and judges the destination's verdict.
//!
//! * [`SourceLayout`]: the RAMBlock list and machine type a *real* q35 source
//!   with the harness's standard configuration announces (a real QEMU
//!   destination rejects unknown blocks and wrong lengths), learned at run
//!   time from a real QEMU source ([`probe_layout`], cached per process by
//!   [`source_layout`]).
//! * [`Step`]: one scripted protocol element, encoded with the rust-dest wire
//!   codec ([`rust_dest::codec`]).
//! * [`RamModel`]: what the guest RAM of the destination must contain after
//!   the script (pages sent, discarded, re-sent).
//! * [`play`]: connect, write the steps in order (flushing each), read the
//!   return path concurrently, answer page requests from the model.
//! * [`await_verdict`] / [`check_memory`] / [`run_script`]: judge the
//!   destination afterwards.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use wire::command::{discard_payload, Advise, Command};
use wire::consts::{MIG_CMD_POSTCOPY_ADVISE, MIG_CMD_POSTCOPY_RAM_DISCARD};
use wire::digest::page_digest;
use wire::ramrec::{
    decode_ram_record, encode_ram_record, BlockEntry, BlockRef, RamContext, RamRecord,
};
use wire::rp::{decode_rp, RpMessage};
use wire::stream::{self, Configuration, Header, SectionKind, TopRecord};
use wire::{vmdesc, Cursor, DecodeError, Encoder};

use crate::vm::dest::{start_dest, DestKind};
use crate::vm::procs::free_tcp_port;
use crate::vm::qemu::{QemuBinary, QemuVm, VmConfig};

/// Target page size (x86-64).
pub const PAGE_SIZE: u64 = 4096;
/// Guest RAM of the standard synthetic-source configuration.
pub const GUEST_MEM: u64 = 128 << 20;
/// Section id the synthetic source uses for "ram" (any id is legal; a real
/// QEMU 10.0 q35 source happens to use 1).
pub const RAM_SECTION_ID: u32 = 2;
/// Longest wait of one [`Step::ExpectRp`] (also bounded by the play timeout).
pub const EXPECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First section id for FULL device sections.
pub const FIRST_DEVICE_SECTION_ID: u32 = 0x20;

// ---------------------------------------------------------------------------
// The RAMBlock layout of a real source

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
    let (globalstate_desc, configuration_desc) = match vmdesc::find_vmdesc_tail(buf) {
        Some((_, v)) => (
            v["devices"]
                .as_array()
                .and_then(|d| d.iter().find(|d| d["name"] == "globalstate").cloned()),
            v.get("configuration").cloned(),
        ),
        None => (None, None),
    };
    Ok(SourceLayout {
        machine,
        blocks: blocks
            .into_iter()
            .map(|BlockEntry { name, used_length, .. }| BlockInfo { name, used_length })
            .collect(),
        globalstate_desc,
        configuration_desc,
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
        vm.qmp
            .wait_migration_status(
                &["completed"],
                &["failed", "cancelled"],
                Duration::from_secs(30),
            )
            .await?;
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

/// [`probe_layout`] once per (binary, memory size) per process.
pub async fn source_layout(qemu: &QemuBinary, mem_bytes: u64) -> Result<Arc<SourceLayout>> {
    static CACHE: tokio::sync::Mutex<Option<HashMap<(PathBuf, u64), Arc<SourceLayout>>>> =
        tokio::sync::Mutex::const_new(None);
    let mut g = CACHE.lock().await;
    let key = (qemu.path.clone(), mem_bytes);
    if let Some(l) = g.get_or_insert_with(HashMap::new).get(&key) {
        return Ok(l.clone());
    }
    let l = Arc::new(probe_layout(qemu, mem_bytes).await?);
    g.as_mut().unwrap().insert(key, l.clone());
    Ok(l)
}

// ---------------------------------------------------------------------------
// Pages and the RAM model

/// Content of a page the script sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Content {
    /// A deterministic non-zero pattern derived from (block, page, version).
    Pattern(u8),
    /// A ZERO record (fill 0).
    Zero,
    /// A ZERO record with a non-zero fill byte (pre-10.x semantics: the
    /// whole page holds that byte; QEMU 10.x rejects it).
    Fill(u8),
}

/// One page record of a RAM section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub block: String,
    /// Target-page index within the block.
    pub index: u64,
    pub content: Content,
}

impl Page {
    pub fn pattern(block: &str, index: u64, version: u8) -> Page {
        Page { block: block.into(), index, content: Content::Pattern(version) }
    }
    pub fn zero(block: &str, index: u64) -> Page {
        Page { block: block.into(), index, content: Content::Zero }
    }
    pub fn bytes(&self) -> Vec<u8> {
        content_bytes(&self.block, self.index, self.content)
    }
}

/// Pattern pages `range` of `block`, all with `version`.
pub fn pattern_pages(block: &str, range: std::ops::Range<u64>, version: u8) -> Vec<Page> {
    range.map(|i| Page::pattern(block, i, version)).collect()
}

/// The bytes of a page: a pattern page starts with `b"SYNTH"`, the page
/// index (be64), the version and the block name, and is filled with a
/// non-zero byte sequence derived from all three.
pub fn content_bytes(block: &str, index: u64, c: Content) -> Vec<u8> {
    let mut p = vec![0u8; PAGE_SIZE as usize];
    if let Content::Fill(v) = c {
        p.fill(v);
    }
    if let Content::Pattern(v) = c {
        let mut key = block.as_bytes().to_vec();
        key.extend_from_slice(&index.to_be_bytes());
        key.push(v);
        let h = xxhash_rust::xxh3::xxh3_64(&key);
        let (a, b) = ((h as u8) | 1, (h >> 8) as u8 | 1);
        for (i, x) in p.iter_mut().enumerate() {
            *x = a.wrapping_add((i as u8).wrapping_mul(b)) | 0x01;
        }
        let mut hdr = b"SYNTH".to_vec();
        hdr.extend_from_slice(&index.to_be_bytes());
        hdr.push(v);
        hdr.extend_from_slice(block.as_bytes());
        let n = hdr.len().min(p.len());
        p[..n].copy_from_slice(&hdr[..n]);
    }
    p
}

/// State of one page in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    Defined(Content),
    /// Discarded and not re-sent: the destination's content is unspecified.
    /// `last` is what the source sent before (what it serves on request).
    Unknown {
        last: Option<Content>,
    },
}

/// What a page of the destination must contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    Digest(u64),
    Zero,
    Unknown,
}

/// Model of the guest RAM the script defines.
#[derive(Clone, Debug, Default)]
pub struct RamModel {
    pub pages: BTreeMap<(String, u64), PageState>,
}

impl RamModel {
    pub fn set(&mut self, p: &Page) {
        self.pages.insert((p.block.clone(), p.index), PageState::Defined(p.content));
    }

    /// Every page touched by the byte range becomes unknown.
    pub fn discard(&mut self, block: &str, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = start / PAGE_SIZE;
        let end = start.saturating_add(len).div_ceil(PAGE_SIZE);
        // Bound the loop: ranges far beyond any block are malformed anyway.
        for i in first..end.min(first + (1 << 20)) {
            let k = (block.to_string(), i);
            let last = match self.pages.get(&k) {
                Some(PageState::Defined(c)) => Some(*c),
                Some(PageState::Unknown { last }) => *last,
                None => None,
            };
            self.pages.insert(k, PageState::Unknown { last });
        }
    }

    pub fn state(&self, block: &str, index: u64) -> Option<PageState> {
        self.pages.get(&(block.to_string(), index)).copied()
    }

    pub fn expected(&self, block: &str, index: u64) -> Expected {
        match self.state(block, index) {
            None | Some(PageState::Defined(Content::Zero | Content::Fill(0))) => Expected::Zero,
            Some(PageState::Defined(c)) => {
                Expected::Digest(page_digest(&content_bytes(block, index, c)))
            }
            Some(PageState::Unknown { .. }) => Expected::Unknown,
        }
    }

    /// What the source sends when the destination requests this page.
    pub fn content_for_request(&self, block: &str, index: u64) -> Content {
        match self.state(block, index) {
            Some(PageState::Defined(c)) => c,
            Some(PageState::Unknown { last }) => last.unwrap_or(Content::Zero),
            None => Content::Zero,
        }
    }

    /// Expected digests of the non-zero pages the script defined in `block`.
    pub fn defined_digests(&self, block: &str) -> BTreeMap<u64, u64> {
        self.pages
            .iter()
            .filter(|((b, _), _)| b == block)
            .filter_map(|((b, i), s)| match s {
                PageState::Defined(c @ (Content::Pattern(_) | Content::Fill(1..))) => {
                    Some((*i, page_digest(&content_bytes(b, *i, *c))))
                }
                _ => None,
            })
            .collect()
    }

    /// Pages of `block` in the model, with their states.
    pub fn block_pages(&self, block: &str) -> Vec<(u64, PageState)> {
        self.pages.iter().filter(|((b, _), _)| b == block).map(|((_, i), s)| (*i, *s)).collect()
    }
}

// ---------------------------------------------------------------------------
// Script

/// Which return-path message an [`Step::ExpectRp`] waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RpMatcher {
    Pong(u32),
    AnyPong,
    Shut(u32),
    AnyShut,
    PageRequest,
    Any,
}

impl RpMatcher {
    pub fn matches(&self, m: &RpMessage) -> bool {
        match (self, m) {
            (RpMatcher::Pong(v), RpMessage::Pong(x)) | (RpMatcher::Shut(v), RpMessage::Shut(x)) => {
                v == x
            }
            (RpMatcher::AnyPong, RpMessage::Pong(_)) | (RpMatcher::AnyShut, RpMessage::Shut(_)) => {
                true
            }
            (RpMatcher::PageRequest, RpMessage::ReqPages { .. } | RpMessage::ReqPagesId { .. }) => {
                true
            }
            (RpMatcher::Any, _) => true,
            _ => false,
        }
    }
}

/// One scripted element of the main stream (or an action of the source).
#[derive(Clone, Debug)]
pub enum Step {
    /// Magic, version 3, configuration with `machine` (None = the layout's).
    Header {
        machine: Option<String>,
    },
    OpenReturnPath,
    Ping(u32),
    /// POSTCOPY_ADVISE with the two be64 values.
    Advise {
        summary: u64,
        tps: u64,
    },
    /// POSTCOPY_ADVISE with an arbitrary payload.
    AdviseRaw(Vec<u8>),
    /// POSTCOPY_RAM_DISCARD built with [`discard_payload`] (any version byte,
    /// optional terminator). Marks the ranges unknown in the model.
    Discard {
        block: String,
        ranges: Vec<(u64, u64)>,
        version: u8,
        terminator: Option<u8>,
    },
    Listen,
    Run,
    /// PACKAGED whose length is computed from the encoded inner steps.
    Packaged(Vec<Step>),
    /// PACKAGED declaring `declared` bytes, followed by the inner steps.
    PackagedRawLen {
        declared: u32,
        inner: Vec<Step>,
    },
    /// START section "ram": MEM_SIZE of every layout block, EOS, footer.
    RamStart,
    /// PART section "ram" with PAGE/ZERO records, EOS, footer.
    RamPart(Vec<Page>),
    /// END section "ram" with PAGE/ZERO records, EOS, footer.
    RamEnd(Vec<Page>),
    /// FULL section with raw device data and footer.
    DeviceFull {
        idstr: String,
        instance: u32,
        version: u32,
        data: Vec<u8>,
    },
    SwitchoverStart,
    Eof,
    /// VMDESCRIPTION (0x06, be32 len, JSON).
    Vmdesc(Value),
    /// Any command with an arbitrary payload.
    Command {
        cmd: u16,
        payload: Vec<u8>,
    },
    /// Raw bytes.
    Raw(Vec<u8>),
    /// Wait for a matching return-path message (in order: messages before an
    /// earlier match are not considered again).
    ExpectRp(RpMatcher),
    /// From now until the `Eof` step: answer REQ_PAGES(_ID) with the page
    /// from the model in a PART section.
    ServePageRequests,
    Sleep(u64),
}

impl Step {
    /// A well-formed discard (version 0, NUL terminator).
    pub fn discard(block: &str, ranges: Vec<(u64, u64)>) -> Step {
        Step::Discard { block: block.into(), ranges, version: 0, terminator: Some(0) }
    }

    /// Advise with the x86 4 KiB values.
    pub fn advise() -> Step {
        Step::Advise { summary: PAGE_SIZE, tps: PAGE_SIZE }
    }

    pub fn header() -> Step {
        Step::Header { machine: None }
    }

    /// A correct "globalstate" FULL section (QEMU 10.x layout).
    pub fn globalstate(runstate: &str) -> Step {
        Step::DeviceFull {
            idstr: "globalstate".into(),
            instance: 0,
            version: 1,
            data: globalstate_data(runstate),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Step::Header { .. } => "Header".into(),
            Step::OpenReturnPath => "OpenReturnPath".into(),
            Step::Ping(v) => format!("Ping({v})"),
            Step::Advise { summary, tps } => format!("Advise({summary:#x}, {tps:#x})"),
            Step::AdviseRaw(p) => format!("AdviseRaw({} bytes)", p.len()),
            Step::Discard { block, ranges, version, terminator } => {
                format!(
                    "Discard({block:?}, {} ranges, v{version}, term {terminator:?})",
                    ranges.len()
                )
            }
            Step::Listen => "Listen".into(),
            Step::Run => "Run".into(),
            Step::Packaged(i) => {
                format!("Packaged[{}]", i.iter().map(|s| s.name()).collect::<Vec<_>>().join(", "))
            }
            Step::PackagedRawLen { declared, inner } => {
                format!("PackagedRawLen({declared}, {} steps)", inner.len())
            }
            Step::RamStart => "RamStart".into(),
            Step::RamPart(p) => format!("RamPart({} pages)", p.len()),
            Step::RamEnd(p) => format!("RamEnd({} pages)", p.len()),
            Step::DeviceFull { idstr, .. } => format!("DeviceFull({idstr})"),
            Step::SwitchoverStart => "SwitchoverStart".into(),
            Step::Eof => "Eof".into(),
            Step::Vmdesc(_) => "Vmdesc".into(),
            Step::Command { cmd, payload } => format!("Command({cmd}, {} bytes)", payload.len()),
            Step::Raw(b) => format!("Raw({} bytes)", b.len()),
            Step::ExpectRp(m) => format!("ExpectRp({m:?})"),
            Step::ServePageRequests => "ServePageRequests".into(),
            Step::Sleep(ms) => format!("Sleep({ms})"),
        }
    }
}

/// Device data of vmsd "globalstate" v1 as QEMU 10.x writes it: be32 size
/// (strlen(runstate)+1), runstate[32] NUL-padded, u8 has_vm_was_suspended,
/// u8 vm_was_suspended, 66 unused bytes (104 bytes; wire-format §10.7).
pub fn globalstate_data(runstate: &str) -> Vec<u8> {
    assert!(runstate.len() < 32);
    let mut d = Vec::with_capacity(104);
    d.extend_from_slice(&(runstate.len() as u32 + 1).to_be_bytes());
    let mut rs = runstate.as_bytes().to_vec();
    rs.resize(32, 0);
    d.extend_from_slice(&rs);
    d.push(1); // has_vm_was_suspended (what a 10.0 source writes)
    d.push(0); // vm_was_suspended
    d.extend_from_slice(&[0u8; 66]);
    d
}

/// A vmdesc JSON describing the top-level FULL sections of `script` (what
/// rust-dest needs to delimit them; QEMU reads and ignores it).
pub fn vmdesc_for(layout: &SourceLayout, script: &[Step]) -> Value {
    let mut devices = Vec::new();
    for s in script {
        if let Step::DeviceFull { idstr, instance, version, data } = s {
            let desc = match &layout.globalstate_desc {
                Some(d)
                    if idstr == "globalstate"
                        && vmdesc::described_size(d).ok() == Some(data.len()) =>
                {
                    d.clone()
                }
                _ if idstr == "globalstate" && data.len() == 104 => json!({
                    "name": "globalstate", "instance_id": instance, "vmsd_name": "globalstate", "version": version,
                    "fields": [
                        {"name": "size", "type": "uint32", "size": 4},
                        {"name": "runstate", "type": "buffer", "size": 32},
                        {"name": "has_vm_was_suspended", "type": "uint8", "size": 1},
                        {"name": "vm_was_suspended", "type": "uint8", "size": 1},
                        {"name": "unused", "type": "buffer", "size": 66}
                    ]
                }),
                _ => json!({
                    "name": idstr, "instance_id": instance, "vmsd_name": idstr, "version": version,
                    "fields": [{"name": "data", "type": "buffer", "size": data.len()}]
                }),
            };
            devices.push(desc);
        }
    }
    let configuration = layout.configuration_desc.clone().unwrap_or_else(|| {
        json!({"vmsd_name": "configuration", "version": 1, "fields": [
            {"name": "len", "type": "uint32", "size": 4},
            {"name": "name", "type": "buffer", "size": layout.machine.len()}
        ]})
    });
    json!({ "configuration": configuration, "page_size": PAGE_SIZE, "devices": devices })
}

/// Encoder state: section ids, CONTINUE tracking, the RAM model.
struct Enc<'a> {
    layout: &'a SourceLayout,
    ctx: RamContext,
    model: RamModel,
    last_block: Option<String>,
    dev_ids: HashMap<(String, u32), u32>,
    listening: bool,
    /// Pages served on request after LISTEN: later RamPart/RamEnd steps skip
    /// them, like a real source whose dirty bit was cleared by the send.
    served: HashSet<(String, u64)>,
}

impl<'a> Enc<'a> {
    fn new(layout: &'a SourceLayout) -> Enc<'a> {
        Enc {
            layout,
            ctx: RamContext::x86(),
            model: RamModel::default(),
            last_block: None,
            dev_ids: HashMap::new(),
            listening: false,
            served: HashSet::new(),
        }
    }

    fn encode(&mut self, step: &Step, e: &mut Encoder) -> std::result::Result<(), String> {
        match step {
            Step::Header { machine } => {
                let machine = machine.clone().unwrap_or_else(|| self.layout.machine.clone());
                stream::encode_header(
                    e,
                    &Header {
                        version: 3,
                        configuration: Some(Configuration { machine, ..Default::default() }),
                    },
                );
            }
            Step::OpenReturnPath => Command::OpenReturnPath.encode(e),
            Step::Ping(v) => Command::Ping(*v).encode(e),
            Step::Advise { summary, tps } => Command::PostcopyAdvise(Some(Advise {
                ram_pagesize_summary: *summary,
                target_page_size: *tps,
            }))
            .encode(e),
            Step::AdviseRaw(p) => stream::encode_command(e, MIG_CMD_POSTCOPY_ADVISE, p),
            Step::Discard { block, ranges, version, terminator } => {
                stream::encode_command(
                    e,
                    MIG_CMD_POSTCOPY_RAM_DISCARD,
                    &discard_payload(*version, block.as_bytes(), *terminator, ranges),
                );
                for &(s, l) in ranges {
                    self.model.discard(block, s, l);
                }
            }
            Step::Listen => {
                Command::PostcopyListen.encode(e);
                self.listening = true;
            }
            Step::Run => Command::PostcopyRun.encode(e),
            Step::Packaged(inner) | Step::PackagedRawLen { inner, .. } => {
                let mut ie = Encoder::new();
                for s in inner {
                    self.encode(s, &mut ie).map_err(|m| format!("inside a package: {m}"))?;
                }
                let len = match step {
                    Step::PackagedRawLen { declared, .. } => *declared,
                    _ => ie.buf.len() as u32,
                };
                Command::Packaged(len).encode(e);
                e.bytes(&ie.buf);
            }
            Step::RamStart => {
                stream::encode_section_open(e, SectionKind::Start, RAM_SECTION_ID, "ram", 0, 4);
                let blocks = self
                    .layout
                    .blocks
                    .iter()
                    .map(|b| BlockEntry {
                        name: b.name.clone(),
                        used_length: b.used_length,
                        page_size: None,
                        gpa: None,
                    })
                    .collect();
                encode_ram_record(
                    e,
                    &RamRecord::MemSize { total: self.layout.total(), blocks },
                    &self.ctx,
                );
                encode_ram_record(e, &RamRecord::Eos, &self.ctx);
                stream::encode_footer(e, RAM_SECTION_ID);
            }
            Step::RamPart(pages) | Step::RamEnd(pages) => {
                let kind = if matches!(step, Step::RamPart(_)) {
                    SectionKind::Part
                } else {
                    SectionKind::End
                };
                stream::encode_section_cont(e, kind, RAM_SECTION_ID);
                // The first record of every section names its block.
                self.last_block = None;
                for p in pages {
                    if self.listening && self.served.contains(&(p.block.clone(), p.index)) {
                        continue;
                    }
                    self.page_record(p, e);
                }
                encode_ram_record(e, &RamRecord::Eos, &self.ctx);
                stream::encode_footer(e, RAM_SECTION_ID);
            }
            Step::DeviceFull { idstr, instance, version, data } => {
                let n = self.dev_ids.len() as u32;
                let id = *self
                    .dev_ids
                    .entry((idstr.clone(), *instance))
                    .or_insert(FIRST_DEVICE_SECTION_ID + n);
                stream::encode_section_open(e, SectionKind::Full, id, idstr, *instance, *version);
                e.bytes(data);
                stream::encode_footer(e, id);
            }
            Step::SwitchoverStart => Command::SwitchoverStart.encode(e),
            Step::Eof => stream::encode_eof(e),
            Step::Vmdesc(v) => stream::encode_vmdesc(e, &serde_json::to_vec(v).expect("JSON")),
            Step::Command { cmd, payload } => stream::encode_command(e, *cmd, payload),
            Step::Raw(b) => {
                e.bytes(b);
            }
            Step::ExpectRp(_) | Step::ServePageRequests | Step::Sleep(_) => {
                return Err(format!("{} is an action of the source, not stream data", step.name()))
            }
        }
        Ok(())
    }

    fn page_record(&mut self, p: &Page, e: &mut Encoder) {
        let addr = p.index * PAGE_SIZE;
        let block = if self.last_block.as_deref() == Some(p.block.as_str()) {
            BlockRef::Continue
        } else {
            BlockRef::Named(p.block.as_str())
        };
        match p.content {
            Content::Zero => {
                encode_ram_record(e, &RamRecord::Zero { addr, block, fill: 0 }, &self.ctx)
            }
            Content::Fill(fill) => {
                encode_ram_record(e, &RamRecord::Zero { addr, block, fill }, &self.ctx)
            }
            Content::Pattern(_) => {
                let data = p.bytes();
                encode_ram_record(e, &RamRecord::Page { addr, block, data: &data }, &self.ctx)
            }
        }
        self.last_block = Some(p.block.clone());
        self.model.set(p);
    }

    /// A PART section answering a page request. Returns the number of pages.
    fn serve(
        &mut self,
        block: &str,
        start: u64,
        len: u32,
        e: &mut Encoder,
    ) -> std::result::Result<u64, String> {
        let b = self
            .layout
            .block(block)
            .ok_or_else(|| format!("page request for unknown RAMBlock {block:?}"))?;
        if start % PAGE_SIZE != 0
            || len as u64 % PAGE_SIZE != 0
            || len == 0
            || start + len as u64 > b.used_length
        {
            return Err(format!(
                "page request {block:?} start {start:#x} length {len:#x} is invalid (block length {:#x})",
                b.used_length
            ));
        }
        stream::encode_section_cont(e, SectionKind::Part, RAM_SECTION_ID);
        self.last_block = None;
        let mut n = 0;
        for i in start / PAGE_SIZE..(start + len as u64) / PAGE_SIZE {
            let p = Page {
                block: block.into(),
                index: i,
                content: self.model.content_for_request(block, i),
            };
            self.page_record(&p, e);
            self.served.insert((block.into(), i));
            n += 1;
        }
        encode_ram_record(e, &RamRecord::Eos, &self.ctx);
        stream::encode_footer(e, RAM_SECTION_ID);
        Ok(n)
    }
}

/// The RAM model `script` produces if every step is written (no page requests).
pub fn model_of(layout: &SourceLayout, script: &[Step]) -> RamModel {
    let mut enc = Enc::new(layout);
    for s in script {
        let _ = enc.encode(s, &mut Encoder::new());
    }
    enc.model
}

/// The bytes `script` writes (no page requests), for inspection.
pub fn encode_script(layout: &SourceLayout, script: &[Step]) -> Result<Vec<u8>> {
    let mut enc = Enc::new(layout);
    let mut e = Encoder::new();
    for (i, s) in script.iter().enumerate() {
        match s {
            Step::ExpectRp(_) | Step::ServePageRequests | Step::Sleep(_) => {}
            _ => enc.encode(s, &mut e).map_err(|m| anyhow!("step {i}: {m}"))?,
        }
    }
    Ok(e.finish())
}

// ---------------------------------------------------------------------------
// Playing a script

/// What happened while playing.
#[derive(Clone, Debug, Default)]
pub struct PlayResult {
    /// Every return-path message, in arrival order.
    pub rp_messages: Vec<RpMessage>,
    /// How the return path ended (None: still open when play stopped).
    pub rp_end: Option<String>,
    /// Page requests answered / pages sent in answers.
    pub page_requests_served: u64,
    pub pages_served: u64,
    /// Problems with page requests (unknown block, short form without a
    /// previous block, ...).
    pub page_request_errors: Vec<String>,
    pub bytes_sent: u64,
    /// Steps completed (all of them unless aborted).
    pub steps_done: usize,
    /// Why writing stopped early (destination closed the connection, ...).
    pub aborted: Option<String>,
    /// `ExpectRp` steps that were not satisfied.
    pub expect_failures: Vec<String>,
    /// The guest RAM the destination must hold if it completed.
    pub model: RamModel,
    pub elapsed: Duration,
}

impl PlayResult {
    pub fn pongs(&self) -> Vec<u32> {
        self.rp_messages
            .iter()
            .filter_map(|m| if let RpMessage::Pong(v) = m { Some(*v) } else { None })
            .collect()
    }
    pub fn shuts(&self) -> Vec<u32> {
        self.rp_messages
            .iter()
            .filter_map(|m| if let RpMessage::Shut(v) = m { Some(*v) } else { None })
            .collect()
    }
    /// One-line summary.
    pub fn summary(&self) -> String {
        let rp: Vec<String> = self.rp_messages.iter().take(20).map(|m| format!("{m:?}")).collect();
        format!(
            "{} steps, {} bytes sent{}; rp [{}]{}{}{}",
            self.steps_done,
            self.bytes_sent,
            self.aborted.as_deref().map(|a| format!(", aborted: {a}")).unwrap_or_default(),
            rp.join(", "),
            self.rp_end.as_deref().map(|e| format!(" ({e})")).unwrap_or_default(),
            if self.page_requests_served > 0 {
                format!(
                    ", {} page requests served ({} pages)",
                    self.page_requests_served, self.pages_served
                )
            } else {
                String::new()
            },
            if self.expect_failures.is_empty() {
                String::new()
            } else {
                format!("; unmet: {}", self.expect_failures.join("; "))
            },
        )
    }
}

enum RpEvent {
    Msg(RpMessage),
    Closed(String),
}

#[derive(Default)]
struct RpState {
    msgs: Vec<RpMessage>,
    cursor: usize,
    closed: Option<String>,
    pending: VecDeque<(String, u64, u32)>,
    last_req_block: Option<String>,
    req_errors: Vec<String>,
}

impl RpState {
    fn absorb(&mut self, ev: Option<RpEvent>) {
        match ev {
            Some(RpEvent::Msg(m)) => {
                match &m {
                    RpMessage::ReqPagesId { start, len, block } => {
                        self.pending.push_back((block.clone(), *start, *len));
                        self.last_req_block = Some(block.clone());
                    }
                    RpMessage::ReqPages { start, len } => match &self.last_req_block {
                        Some(b) => self.pending.push_back((b.clone(), *start, *len)),
                        None => self.req_errors.push(format!(
                            "REQ_PAGES {start:#x}+{len:#x} without a previous REQ_PAGES_ID"
                        )),
                    },
                    _ => {}
                }
                self.msgs.push(m);
            }
            Some(RpEvent::Closed(r)) => {
                if self.closed.is_none() {
                    self.closed = Some(r)
                }
            }
            None => {
                if self.closed.is_none() {
                    self.closed = Some("return-path reader ended".into())
                }
            }
        }
    }
    fn drain(&mut self, rx: &mut mpsc::UnboundedReceiver<RpEvent>) {
        while let Ok(ev) = rx.try_recv() {
            self.absorb(Some(ev));
        }
    }
    fn find(&self, m: &RpMatcher) -> Option<usize> {
        (self.cursor..self.msgs.len()).find(|&i| m.matches(&self.msgs[i]))
    }
}

async fn connect_retry(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e)
                if Instant::now() < deadline
                    && e.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => {
                return Err(anyhow!(e))
                    .with_context(|| format!("connecting to the destination at {addr}"))
            }
        }
    }
}

async fn reader_task(mut rd: tokio::net::tcp::OwnedReadHalf, tx: mpsc::UnboundedSender<RpEvent>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut base = 0u64;
    let mut chunk = vec![0u8; 16384];
    loop {
        match rd.read(&mut chunk).await {
            Ok(0) => {
                let why = if buf.is_empty() {
                    "closed by the destination".to_string()
                } else {
                    format!("closed by the destination with {} undecoded byte(s)", buf.len())
                };
                let _ = tx.send(RpEvent::Closed(why));
                return;
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    let mut c = Cursor::new(&buf, base);
                    match decode_rp(&mut c) {
                        Ok(m) => {
                            let used = c.pos();
                            buf.drain(..used);
                            base += used as u64;
                            let _ = tx.send(RpEvent::Msg(m));
                        }
                        Err(DecodeError::Incomplete { .. }) => break,
                        Err(e) => {
                            let _ = tx.send(RpEvent::Closed(format!(
                                "undecodable return-path data: {e}"
                            )));
                            return;
                        }
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(RpEvent::Closed(format!("read error: {e}")));
                return;
            }
        }
    }
}

/// Play `script` into the destination listening at `dest_addr`.
///
/// Errors only if the connection cannot be made or the script is not
/// encodable; protocol outcomes (write failures, unmet expectations) are in
/// the result. `timeout` bounds the whole play; after the last step the
/// write side is shut down and the return path is read until the
/// destination closes it (at most 5 s, within `timeout`).
pub async fn play(
    dest_addr: SocketAddr,
    layout: &SourceLayout,
    script: &[Step],
    timeout: Duration,
) -> Result<PlayResult> {
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let stream = connect_retry(dest_addr, timeout.min(Duration::from_secs(5))).await?;
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(reader_task(rd, tx));

    let mut enc = Enc::new(layout);
    let mut st = RpState::default();
    let mut res = PlayResult::default();
    let mut serving = false;
    let tdeadline = tokio::time::Instant::from_std(deadline);

    async fn write(
        wr: &mut tokio::net::tcp::OwnedWriteHalf,
        b: &[u8],
        deadline: tokio::time::Instant,
    ) -> std::result::Result<(), String> {
        match tokio::time::timeout_at(deadline, async {
            wr.write_all(b).await?;
            wr.flush().await
        })
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write failed: {e}")),
            Err(_) => Err("write timed out (destination not reading)".into()),
        }
    }

    // Answer all pending page requests.
    macro_rules! serve_pending {
        () => {{
            let mut err: Option<String> = None;
            while let Some((b, s, l)) = st.pending.pop_front() {
                let mut e = Encoder::new();
                match enc.serve(&b, s, l, &mut e) {
                    Ok(n) => {
                        if let Err(m) = write(&mut wr, &e.buf, tdeadline).await {
                            err = Some(format!("serving page request {b:?} {s:#x}: {m}"));
                            break;
                        }
                        res.bytes_sent += e.buf.len() as u64;
                        res.page_requests_served += 1;
                        res.pages_served += n;
                    }
                    Err(m) => res.page_request_errors.push(m),
                }
            }
            err
        }};
    }

    'steps: for (i, step) in script.iter().enumerate() {
        st.drain(&mut rx);
        if serving {
            if let Some(e) = serve_pending!() {
                res.aborted = Some(e);
                break 'steps;
            }
        }
        match step {
            Step::ExpectRp(m) => {
                let until = tdeadline.min(tokio::time::Instant::now() + EXPECT_TIMEOUT);
                loop {
                    if let Some(idx) = st.find(m) {
                        st.cursor = idx + 1;
                        break;
                    }
                    if let Some(r) = &st.closed {
                        res.expect_failures
                            .push(format!("step {i}: {m:?} not received; return path {r}"));
                        break;
                    }
                    tokio::select! {
                        ev = rx.recv() => st.absorb(ev),
                        _ = tokio::time::sleep_until(until) => {
                            res.expect_failures.push(format!("step {i}: timed out waiting for {m:?}"));
                            break;
                        }
                    }
                    if serving {
                        if let Some(e) = serve_pending!() {
                            res.aborted = Some(e);
                            break 'steps;
                        }
                    }
                }
            }
            Step::Sleep(ms) => {
                let until = tokio::time::Instant::now() + Duration::from_millis(*ms);
                loop {
                    tokio::select! {
                        ev = rx.recv(), if st.closed.is_none() => st.absorb(ev),
                        _ = tokio::time::sleep_until(until) => break,
                    }
                    if serving {
                        if let Some(e) = serve_pending!() {
                            res.aborted = Some(e);
                            break 'steps;
                        }
                    }
                }
            }
            Step::ServePageRequests => serving = true,
            _ => {
                if matches!(step, Step::Eof) {
                    serving = false;
                }
                let mut e = Encoder::new();
                enc.encode(step, &mut e).map_err(|m| anyhow!("step {i} ({}): {m}", step.name()))?;
                if let Err(m) = write(&mut wr, &e.buf, tdeadline).await {
                    res.aborted = Some(format!("step {i} ({}): {m}", step.name()));
                    break 'steps;
                }
                res.bytes_sent += e.buf.len() as u64;
            }
        }
        res.steps_done = i + 1;
    }

    // Half-close: the destination sees the end of the stream after our data;
    // keep reading the return path until it closes.
    let _ = wr.shutdown().await;
    let linger = tokio::time::Instant::now() + Duration::from_secs(5);
    let until = linger.min(tdeadline.max(tokio::time::Instant::now() + Duration::from_millis(200)));
    while st.closed.is_none() {
        tokio::select! {
            ev = rx.recv() => st.absorb(ev),
            _ = tokio::time::sleep_until(until) => break,
        }
    }
    reader.abort();
    st.drain(&mut rx);
    drop(wr);
    res.rp_messages = st.msgs;
    res.rp_end = st.closed;
    res.page_request_errors.extend(st.req_errors);
    res.model = enc.model;
    res.elapsed = t0.elapsed();
    Ok(res)
}

// ---------------------------------------------------------------------------
// Verdict and memory

/// How the destination ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Completed,
    /// `query-migrate` said failed, or the process exited; the error text.
    Failed(String),
    /// Neither within the timeout (e.g. `postcopy-paused`, or still waiting).
    Stuck {
        status: String,
        detail: String,
    },
}

impl Verdict {
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Completed => "completed",
            Verdict::Failed(_) => "failed",
            Verdict::Stuck { .. } => "stuck",
        }
    }
    pub fn error(&self) -> &str {
        match self {
            Verdict::Completed => "",
            Verdict::Failed(e) => e,
            Verdict::Stuck { detail, .. } => detail,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Completed => write!(f, "COMPLETED"),
            Verdict::Failed(e) => write!(f, "FAILED: {e}"),
            Verdict::Stuck { status, detail } => write!(f, "STUCK in '{status}': {detail}"),
        }
    }
}

/// Remove ANSI escape sequences (rust-dest's coloured tracing output).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            if it.peek() == Some(&'[') {
                it.next();
                for d in it.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The last `n` non-empty lines of a destination log, joined with " | ".
pub fn log_lines(tail: &str, n: usize) -> String {
    let t = strip_ansi(tail);
    let l: Vec<&str> = t.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    l[l.len().saturating_sub(n)..].join(" | ")
}

/// The last `n` log lines that mention an error.
pub fn log_error_lines(tail: &str, n: usize) -> String {
    let t = strip_ansi(tail);
    let l: Vec<&str> =
        t.lines().map(str::trim).filter(|l| l.to_lowercase().contains("error")).collect();
    l[l.len().saturating_sub(n)..].join(" | ")
}

/// Poll `query-migrate` until `completed`/`failed` or the process exits.
pub async fn await_verdict(vm: &QemuVm, timeout: Duration) -> Verdict {
    let deadline = Instant::now() + timeout;
    let mut last_status = String::from("?");
    let mut last_desc: String;
    let exited = |vm: &QemuVm| {
        let tail = vm.log_tail(4000);
        Verdict::Failed(format!("destination process exited: {}", log_lines(&tail, 6)))
    };
    loop {
        if !vm.child.is_running() {
            return exited(vm);
        }
        match vm.qmp.execute_timeout("query-migrate", Value::Null, Duration::from_secs(3)).await {
            Ok(v) => {
                last_status = crate::qmp::migrate_status_of(&v).to_string();
                last_desc = v.get("error-desc").and_then(Value::as_str).unwrap_or("").to_string();
                match last_status.as_str() {
                    "completed" => return Verdict::Completed,
                    "failed" => {
                        let logs = log_error_lines(&vm.log_tail(4000), 3);
                        return Verdict::Failed(if logs.is_empty() {
                            last_desc
                        } else {
                            format!("{last_desc} [log: {logs}]")
                        });
                    }
                    _ => {}
                }
            }
            Err(e) => {
                // QMP gone: the process is exiting.
                for _ in 0..50 {
                    if !vm.child.is_running() {
                        return exited(vm);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                last_desc = format!("query-migrate: {e}");
            }
        }
        if Instant::now() >= deadline {
            return Verdict::Stuck {
                status: last_status,
                detail: format!("{last_desc} [log: {}]", log_lines(&vm.log_tail(2000), 3)),
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Result of comparing a destination's RAMBlock file with the model.
#[derive(Clone, Debug, Default)]
pub struct MemCheck {
    pub block: String,
    pub pages: u64,
    /// Pages with a defined non-zero content that matched.
    pub matched_defined: u64,
    pub unknown_skipped: u64,
    pub mismatched: u64,
    /// First mismatches.
    pub mismatches: Vec<String>,
}

impl MemCheck {
    pub fn ok(&self) -> bool {
        self.mismatched == 0
    }
}

impl std::fmt::Display for MemCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} pages, {} defined matched, {} unknown skipped, {} mismatched",
            self.block, self.pages, self.matched_defined, self.unknown_skipped, self.mismatched
        )?;
        if !self.mismatches.is_empty() {
            write!(f, " [{}]", self.mismatches.join("; "))?;
        }
        Ok(())
    }
}

/// Compare the pages of `block` held in `data` with the model: defined pages
/// must match their digests, unknown ones are skipped, all others are zero.
pub fn check_pages(model: &RamModel, block: &str, data: &[u8]) -> MemCheck {
    let mut r = MemCheck { block: block.into(), ..Default::default() };
    for (i, page) in data.chunks(PAGE_SIZE as usize).enumerate() {
        let i = i as u64;
        r.pages += 1;
        let bad = match model.expected(block, i) {
            Expected::Unknown => {
                r.unknown_skipped += 1;
                None
            }
            Expected::Zero => {
                if page.iter().all(|&b| b == 0) {
                    None
                } else {
                    Some(format!(
                        "page {i} ({:#x}) should be zero, has digest {:016x}",
                        i * PAGE_SIZE,
                        page_digest(page)
                    ))
                }
            }
            Expected::Digest(d) => {
                let got = page_digest(page);
                if got == d {
                    r.matched_defined += 1;
                    None
                } else {
                    let what = if page.iter().all(|&b| b == 0) {
                        "zero".to_string()
                    } else {
                        format!("{got:016x}")
                    };
                    Some(format!("page {i} ({:#x}) expected {d:016x}, got {what}", i * PAGE_SIZE))
                }
            }
        };
        if let Some(m) = bad {
            r.mismatched += 1;
            if r.mismatches.len() < 8 {
                r.mismatches.push(m);
            }
        }
    }
    // Pages defined beyond the data (a short file) are mismatches too.
    let n = r.pages;
    for (i, _) in model.defined_digests(block).range(n..) {
        r.mismatched += 1;
        if r.mismatches.len() < 8 {
            r.mismatches.push(format!("page {i} is beyond the {n} pages of the file"));
        }
    }
    r
}

/// [`check_pages`] on a memory-backend file.
pub fn check_memory(model: &RamModel, block: &str, file: &Path) -> Result<MemCheck> {
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(check_pages(model, block, &data))
}

// ---------------------------------------------------------------------------
// One destination, one script

/// How to run a script against one destination.
#[derive(Clone, Debug)]
pub struct RunOpts {
    /// Set `postcopy-ram` before `migrate-incoming`.
    pub postcopy_ram: bool,
    /// Bound for [`play`].
    pub play_timeout: Duration,
    /// Bound for [`await_verdict`].
    pub verdict_timeout: Duration,
    /// Compare the backend file with the model on completion.
    pub check_memory: bool,
    /// QMP `cont` before `migrate-incoming`: the guest runs as soon as it
    /// can (after POSTCOPY_RUN in postcopy), so it touches RAM and faults.
    pub autostart: bool,
}

impl Default for RunOpts {
    fn default() -> Self {
        RunOpts {
            postcopy_ram: false,
            play_timeout: Duration::from_secs(20),
            verdict_timeout: Duration::from_secs(10),
            check_memory: true,
            autostart: false,
        }
    }
}

/// Everything observed on one destination.
#[derive(Debug)]
pub struct DestRun {
    pub kind: DestKind,
    pub verdict: Verdict,
    pub play: Option<PlayResult>,
    /// Why play could not run (connect failure, bad script).
    pub play_error: Option<String>,
    /// mem0 file vs model (only when completed and requested).
    pub memory: Option<MemCheck>,
    /// rust-dest only, on completion: the RAMBlocks it created from the
    /// stream (`x-crossmig-query-ramblocks`).
    pub rust_blocks: Option<Vec<BlockInfo>>,
    pub log_tail: String,
    pub total: Duration,
    /// For cleanup checks.
    pub pid: u32,
    pub paths: Vec<PathBuf>,
}

impl DestRun {
    pub fn summary(&self) -> String {
        let mut s = format!("{:<4} {}", self.kind.name(), self.verdict);
        if let Some(p) = &self.play {
            s += &format!("\n       play: {}", p.summary());
        }
        if let Some(e) = &self.play_error {
            s += &format!("\n       play error: {e}");
        }
        if let Some(m) = &self.memory {
            s += &format!("\n       memory: {m}");
        }
        s
    }
}

/// Start a destination of `kind` (harness::vm::dest::start_dest: `-incoming
/// defer -S`), set capabilities, `migrate-incoming tcp:127.0.0.1:PORT`,
/// play `script`, judge the verdict and (on completion) memory. The
/// destination is always shut down and its files removed before returning.
pub async fn run_script(
    kind: DestKind,
    qemu: &QemuBinary,
    layout: &SourceLayout,
    script: &[Step],
    opts: &RunOpts,
    workdir: &Path,
    tag: &str,
) -> Result<DestRun> {
    let t0 = Instant::now();
    let cfg = VmConfig::new(&format!("synth-{tag}-{}", kind.name()), GUEST_MEM);
    let paths = vec![cfg.mem_path.clone(), cfg.qmp_socket.clone()];
    let log = workdir.join(format!("{}.log", cfg.vm_name()));
    let vm = start_dest(kind, qemu, cfg, log).await?;
    let pid = vm.pid();
    let r = drive(kind, &vm, layout, script, opts).await;
    let log_tail = vm.log_tail(6000);
    vm.quit().await;
    let (verdict, play, play_error, memory, rust_blocks) =
        r.map_err(|e| anyhow!("{e:#}\n--- {} log ---\n{log_tail}", kind.name()))?;
    Ok(DestRun {
        kind,
        verdict,
        play,
        play_error,
        memory,
        rust_blocks,
        log_tail,
        total: t0.elapsed(),
        pid,
        paths,
    })
}

type DriveOut =
    (Verdict, Option<PlayResult>, Option<String>, Option<MemCheck>, Option<Vec<BlockInfo>>);

async fn drive(
    kind: DestKind,
    vm: &QemuVm,
    layout: &SourceLayout,
    script: &[Step],
    opts: &RunOpts,
) -> Result<DriveOut> {
    vm.qmp.set_timeout(Duration::from_secs(10));
    if opts.postcopy_ram {
        vm.qmp
            .set_capabilities(&[("postcopy-ram", true)])
            .await
            .context("migrate-set-capabilities")?;
    }
    if opts.autostart {
        vm.execute("cont", Value::Null).await.context("cont (autostart)")?;
    }
    let mut attempt = 0;
    let addr: SocketAddr = loop {
        let port = free_tcp_port();
        let uri = format!("tcp:127.0.0.1:{port}");
        match vm.execute("migrate-incoming", json!({ "uri": uri })).await {
            Ok(_) => break format!("127.0.0.1:{port}").parse().unwrap(),
            Err(e) if attempt < 3 && vm.child.is_running() => {
                tracing::warn!("migrate-incoming {uri}: {e:#}; retrying");
                attempt += 1;
            }
            Err(e) => return Err(e.context("migrate-incoming")),
        }
    };
    let (play, play_error) = match play(addr, layout, script, opts.play_timeout).await {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let verdict = await_verdict(vm, opts.verdict_timeout).await;
    let mut memory = None;
    let mut rust_blocks = None;
    if verdict == Verdict::Completed {
        if let (true, Some(p)) = (opts.check_memory, &play) {
            memory = Some(check_memory(&p.model, &vm.cfg.backend_id, &vm.cfg.mem_path)?);
        }
        if kind == DestKind::Rust {
            let v = vm.execute("x-crossmig-query-ramblocks", Value::Null).await?;
            rust_blocks = Some(
                v.as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|b| BlockInfo {
                        name: b["name"].as_str().unwrap_or("?").into(),
                        used_length: b["used-length"].as_u64().unwrap_or(0),
                    })
                    .collect(),
            );
        }
    }
    Ok((verdict, play, play_error, memory, rust_blocks))
}

// ---------------------------------------------------------------------------
// Differential runs

/// What a script must lead to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Completed,
    Failed,
    /// Neither: the destination waits (e.g. in postcopy-paused after a load
    /// error once postcopy runs, as QEMU does).
    Stuck,
}

impl Expect {
    pub fn kind(self) -> &'static str {
        match self {
            Expect::Completed => "completed",
            Expect::Failed => "failed",
            Expect::Stuck => "stuck",
        }
    }
}

/// Both destinations' results for one script.
#[derive(Debug)]
pub struct Differential {
    pub name: String,
    pub expect: Expect,
    pub qemu: DestRun,
    pub rust: DestRun,
    pub total: Duration,
}

impl Differential {
    /// Both verdicts side by side.
    pub fn side_by_side(&self) -> String {
        format!(
            "script '{}' (expected {}), {:.1}s\n  {}\n  {}",
            self.name,
            self.expect.kind(),
            self.total.as_secs_f64(),
            self.qemu.summary(),
            self.rust.summary()
        )
    }

    /// Problems: verdict kinds differ, differ from the expectation, memory
    /// mismatches, unmet return-path expectations on a completing run.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.qemu.verdict.kind() != self.rust.verdict.kind() {
            p.push(format!(
                "DISAGREEMENT: qemu {} vs rust-dest {}",
                self.qemu.verdict.kind(),
                self.rust.verdict.kind()
            ));
        }
        for d in [&self.qemu, &self.rust] {
            if d.verdict.kind() != self.expect.kind() {
                p.push(format!(
                    "{}: verdict {} but the script expects {}",
                    d.kind.name(),
                    d.verdict.kind(),
                    self.expect.kind()
                ));
            }
            if let Some(e) = &d.play_error {
                p.push(format!("{}: play error: {e}", d.kind.name()));
            }
            if let Some(m) = &d.memory {
                if !m.ok() {
                    p.push(format!("{}: memory differs from the model: {m}", d.kind.name()));
                }
            }
            if self.expect == Expect::Completed {
                if let Some(pl) = &d.play {
                    if !pl.expect_failures.is_empty() {
                        p.push(format!(
                            "{}: unmet return-path expectations: {}",
                            d.kind.name(),
                            pl.expect_failures.join("; ")
                        ));
                    }
                    if let Some(a) = &pl.aborted {
                        p.push(format!("{}: play aborted: {a}", d.kind.name()));
                    }
                }
            }
        }
        p
    }
}

/// Run `script` on a QEMU and a rust-dest destination concurrently.
pub async fn differential(
    name: &str,
    qemu: &QemuBinary,
    layout: &SourceLayout,
    script: &[Step],
    expect: Expect,
    opts: &RunOpts,
    workdir: &Path,
) -> Result<Differential> {
    let t0 = Instant::now();
    let (q, r) = tokio::join!(
        run_script(DestKind::Qemu, qemu, layout, script, opts, workdir, name),
        run_script(DestKind::Rust, qemu, layout, script, opts, workdir, name),
    );
    Ok(Differential { name: name.into(), expect, qemu: q?, rust: r?, total: t0.elapsed() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globalstate_layout() {
        let d = globalstate_data("running");
        assert_eq!(d.len(), 104);
        assert_eq!(&d[..4], &8u32.to_be_bytes());
        assert_eq!(&d[4..11], b"running");
    }

    #[test]
    fn encode_and_model() {
        let l = SourceLayout::qemu_10_0_q35_128m();
        let script = vec![
            Step::header(),
            Step::RamStart,
            Step::RamPart(vec![
                Page::pattern("mem0", 0, 1),
                Page::pattern("mem0", 1, 1),
                Page::zero("pc.bios", 3),
            ]),
            Step::discard("mem0", vec![(4096, 4096)]),
            Step::Packaged(vec![Step::Listen, Step::Run]),
            Step::RamEnd(vec![Page::pattern("mem0", 1, 2)]),
            Step::Eof,
        ];
        let b = encode_script(&l, &script).unwrap();
        // Decode it back with the codec.
        let mut c = Cursor::new(&b, 0);
        let h = stream::decode_header(&mut c, true).unwrap();
        assert_eq!(h.configuration.unwrap().machine, "pc-q35-10.0");
        assert!(matches!(
            stream::decode_top(&mut c).unwrap(),
            TopRecord::SectionOpen { idstr: "ram", .. }
        ));
        match decode_ram_record(&mut c, &RamContext::x86()).unwrap() {
            RamRecord::MemSize { total, blocks } => {
                assert_eq!(total, l.total());
                assert_eq!(blocks.len(), 6);
            }
            o => panic!("{o:?}"),
        }
        let m = model_of(&l, &script);
        assert!(matches!(m.expected("mem0", 0), Expected::Digest(_)));
        assert_eq!(m.expected("mem0", 2), Expected::Zero);
        assert_eq!(m.expected("pc.bios", 3), Expected::Zero);
        assert_eq!(m.state("mem0", 1), Some(PageState::Defined(Content::Pattern(2))));
        let mut page_data = vec![0u8; 4 * 4096];
        page_data[..4096].copy_from_slice(&content_bytes("mem0", 0, Content::Pattern(1)));
        page_data[4096..8192].copy_from_slice(&content_bytes("mem0", 1, Content::Pattern(2)));
        assert!(check_pages(&m, "mem0", &page_data).ok());
        page_data[3 * 4096] = 1;
        assert_eq!(check_pages(&m, "mem0", &page_data).mismatched, 1);
        let mut m2 = m.clone();
        m2.discard("mem0", 0, 4096);
        assert_eq!(m2.expected("mem0", 0), Expected::Unknown);
        assert_eq!(m2.content_for_request("mem0", 0), Content::Pattern(1));
    }
}
