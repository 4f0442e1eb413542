//! The scripted protocol elements of the synthetic source ([`Step`], [`Page`],
//! [`RpMatcher`]) and their encoding with the `wire` crate.

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, Result};
use serde_json::{json, Value};

use wire::command::{discard_payload, Advise, Command};
use wire::consts::{MIG_CMD_POSTCOPY_ADVISE, MIG_CMD_POSTCOPY_RAM_DISCARD};
use wire::multifd::{PacketFormat, PacketLayout};
use wire::ramrec::{encode_ram_record, BlockEntry, BlockRef, RamContext, RamRecord};
use wire::rp::RpMessage;
use wire::stream::{self, Configuration, Header, SectionKind};
use wire::{vmdesc, Encoder};

use super::layout::{SourceLayout, PAGE_SIZE};
use super::multifd::{Compressors, Corruption, MultifdStep};

/// One complete zlib stream of `data` (a page of the legacy `compress`
/// capability, `migration/ram.c` in 7.2: deflate reset and finished per page).
fn zlib_page(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(data).expect("compressing into memory");
    z.finish().expect("compressing into memory")
}
pub use super::page::{pattern_pages, Page};
use crate::verify::model::{Content, RamModel};

/// Section id the synthetic source uses for "ram" (any id is legal; a real
/// QEMU 10.0 q35 source happens to use 1).
pub const RAM_SECTION_ID: u32 = 2;
/// First section id for FULL device sections.
pub const FIRST_DEVICE_SECTION_ID: u32 = 0x20;

/// Why a step or a page request cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{0} is an action of the source, not stream data")]
    NotStreamData(String),
    #[error("inside a package: {0}")]
    InPackage(Box<EncodeError>),
    #[error("page request for unknown RAMBlock {0:?}")]
    UnknownBlock(String),
    #[error("page request {block:?} start {start:#x} length {len:#x} is invalid (block length {block_len:#x})")]
    BadPageRequest { block: String, start: u64, len: u32, block_len: u64 },
}

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
    /// PART section "ram" whose non-zero pages are COMPRESS_PAGE records
    /// (QEMU 7.2's legacy `compress`: one complete zlib stream per page),
    /// optionally damaged.
    RamCompressed(Vec<Page>, Option<Corruption>),
    /// FULL section with raw device data and footer.
    DeviceFull {
        idstr: String,
        instance: u32,
        version: u32,
        data: Vec<u8>,
        /// The instance id the `Vmdesc` step describes this section with
        /// (default: `instance`); a different value stands for a header
        /// whose instance id was changed after the vmdesc was written.
        vmdesc_instance: Option<u32>,
    },
    SwitchoverStart,
    Eof,
    /// VMDESCRIPTION (0x06, be32 len, JSON); with `cut`, only the record's
    /// first `cut` bytes (a vmdesc cut short: the stream ends inside it).
    Vmdesc {
        desc: Value,
        cut: Option<usize>,
    },
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
    /// An element of a multifd channel (written on that channel's own
    /// connection; `Connect` opens it).
    Multifd(MultifdStep),
    /// PART section "ram" holding only a MULTIFD_FLUSH record (the main
    /// channel's sync-point marker in per-round mode), EOS, footer.
    MultifdFlush,
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
            vmdesc_instance: None,
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
            Step::RamCompressed(p, c) => format!("RamCompressed({} pages, {c:?})", p.len()),
            Step::DeviceFull { idstr, .. } => format!("DeviceFull({idstr})"),
            Step::SwitchoverStart => "SwitchoverStart".into(),
            Step::Eof => "Eof".into(),
            Step::Vmdesc { cut: None, .. } => "Vmdesc".into(),
            Step::Vmdesc { cut: Some(n), .. } => format!("Vmdesc(cut at {n})"),
            Step::Command { cmd, payload } => format!("Command({cmd}, {} bytes)", payload.len()),
            Step::Raw(b) => format!("Raw({} bytes)", b.len()),
            Step::ExpectRp(m) => format!("ExpectRp({m:?})"),
            Step::ServePageRequests => "ServePageRequests".into(),
            Step::Sleep(ms) => format!("Sleep({ms})"),
            Step::Multifd(m) => m.name(),
            Step::MultifdFlush => "MultifdFlush".into(),
        }
    }
}

/// Device data of vmsd "globalstate" v1 as QEMU 10.x writes it: be32 size
/// (strlen(runstate)+1), runstate[32] NUL-padded, u8 has_vm_was_suspended,
/// u8 vm_was_suspended, 66 unused bytes (104 bytes; docs/wire-format.md §5.1, QEMU migration/global_state.c).
/// A run state of 32 bytes fills the buffer without NUL, as only a broken or
/// malicious source writes it; longer ones are cut to 32 bytes (scenario
/// files reject them).
pub fn globalstate_data(runstate: &str) -> Vec<u8> {
    let mut d = Vec::with_capacity(104);
    d.extend_from_slice(&(runstate.len() as u32).saturating_add(1).to_be_bytes());
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
        if let Step::DeviceFull { idstr, instance, version, data, vmdesc_instance } = s {
            let instance = vmdesc_instance.unwrap_or(*instance);
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
pub(super) struct Enc<'a> {
    layout: &'a SourceLayout,
    ctx: RamContext,
    pub(super) model: RamModel,
    last_block: Option<String>,
    dev_ids: HashMap<(String, u32), u32>,
    listening: bool,
    /// Pages served on request after LISTEN: later RamPart/RamEnd steps skip
    /// them, like a real source whose dirty bit was cleared by the send.
    served: HashSet<(String, u64)>,
    /// The packet format of multifd RAM packets.
    pub(super) multifd_fmt: PacketFormat,
    /// Each multifd channel's compression stream.
    multifd_comp: Compressors,
}

impl<'a> Enc<'a> {
    pub(super) fn new(layout: &'a SourceLayout) -> Enc<'a> {
        Enc {
            layout,
            ctx: RamContext::x86(),
            model: RamModel::default(),
            last_block: None,
            dev_ids: HashMap::new(),
            listening: false,
            served: HashSet::new(),
            multifd_fmt: PacketFormat::x86(PacketLayout::V9),
            multifd_comp: Compressors::default(),
        }
    }

    pub(super) fn encode(&mut self, step: &Step, e: &mut Encoder) -> Result<(), EncodeError> {
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
                    self.encode(s, &mut ie).map_err(|m| EncodeError::InPackage(Box::new(m)))?;
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
            Step::RamCompressed(pages, corrupt) => {
                stream::encode_section_cont(e, SectionKind::Part, RAM_SECTION_ID);
                self.last_block = None;
                for p in pages {
                    if !matches!(p.content, Content::Pattern(_)) {
                        self.page_record(p, e);
                        continue;
                    }
                    let addr = p.index * PAGE_SIZE;
                    let block = if self.last_block.as_deref() == Some(p.block.as_str()) {
                        BlockRef::Continue
                    } else {
                        BlockRef::Named(p.block.as_str())
                    };
                    let raw = p.bytes();
                    let data = match corrupt {
                        None => zlib_page(&raw),
                        Some(Corruption::Garbage) => vec![0xff; 64],
                        Some(Corruption::Short) => zlib_page(&raw[..raw.len() / 2]),
                    };
                    encode_ram_record(
                        e,
                        &RamRecord::CompressPage { addr, block, data: &data },
                        &self.ctx,
                    );
                    self.last_block = Some(p.block.clone());
                    if corrupt.is_none() {
                        self.model.set(&p.block, p.index, p.content);
                    }
                }
                encode_ram_record(e, &RamRecord::Eos, &self.ctx);
                stream::encode_footer(e, RAM_SECTION_ID);
            }
            Step::DeviceFull { idstr, instance, version, data, .. } => {
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
            Step::Vmdesc { desc, cut } => {
                let mut rec = Encoder::new();
                stream::encode_vmdesc(&mut rec, &serde_json::to_vec(desc).expect("JSON"));
                let n = cut.unwrap_or(rec.buf.len()).min(rec.buf.len());
                e.bytes(&rec.buf[..n]);
            }
            Step::Command { cmd, payload } => stream::encode_command(e, *cmd, payload),
            Step::Raw(b) => {
                e.bytes(b);
            }
            Step::MultifdFlush => {
                stream::encode_section_cont(e, SectionKind::Part, RAM_SECTION_ID);
                self.last_block = None;
                encode_ram_record(e, &RamRecord::MultifdFlush, &self.ctx);
                encode_ram_record(e, &RamRecord::Eos, &self.ctx);
                stream::encode_footer(e, RAM_SECTION_ID);
            }
            // The bytes of a multifd channel; the player writes them on
            // that channel, not on the main one.
            Step::Multifd(m) => {
                m.encode(e, &self.multifd_fmt, &mut self.model, &mut self.multifd_comp)
            }
            Step::ExpectRp(_) | Step::ServePageRequests | Step::Sleep(_) => {
                return Err(EncodeError::NotStreamData(step.name()))
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
        self.model.set(&p.block, p.index, p.content);
    }

    /// A PART section answering a page request. Returns the number of pages.
    pub(super) fn serve(
        &mut self,
        block: &str,
        start: u64,
        len: u32,
        e: &mut Encoder,
    ) -> Result<u64, EncodeError> {
        let b = self.layout.block(block).ok_or_else(|| EncodeError::UnknownBlock(block.into()))?;
        if !start.is_multiple_of(PAGE_SIZE)
            || !(len as u64).is_multiple_of(PAGE_SIZE)
            || len == 0
            || start + len as u64 > b.used_length
        {
            return Err(EncodeError::BadPageRequest {
                block: block.into(),
                start,
                len,
                block_len: b.used_length,
            });
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

/// The bytes `script` writes on the main channel (no page requests), for
/// inspection.
pub fn encode_script(layout: &SourceLayout, script: &[Step]) -> Result<Vec<u8>> {
    let mut enc = Enc::new(layout);
    let mut e = Encoder::new();
    for (i, s) in script.iter().enumerate() {
        match s {
            Step::ExpectRp(_) | Step::ServePageRequests | Step::Sleep(_) | Step::Multifd(_) => {}
            _ => enc.encode(s, &mut e).map_err(|m| anyhow!("step {i}: {m}"))?,
        }
    }
    Ok(e.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::model::{check_pages, content_bytes, Expected, PageState};
    use wire::ramrec::decode_ram_record;
    use wire::stream::TopRecord;
    use wire::Cursor;

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
        assert_eq!(m2.expected("mem0", 0), Expected::DiscardedZero);
        assert_eq!(m2.content_for_request("mem0", 0), Content::Pattern(1));
        // A discarded page never re-sent must read zero, not its old content.
        page_data[3 * 4096] = 0;
        let c = check_pages(&m2, "mem0", &page_data);
        assert_eq!((c.mismatched, c.discarded_zero), (1, 0), "{c}");
        assert!(c.mismatches[0].contains("discarded"), "{c}");
        page_data[..4096].fill(0);
        let c = check_pages(&m2, "mem0", &page_data);
        assert_eq!((c.mismatched, c.discarded_zero), (0, 1), "{c}");
    }
}
