//! The main channel (and recovery main channels): one walk with
//! `wire::walk::Walker`, driven window by window so device sections (whose
//! data carries no length) can be delimited here: with the vmdesc, decoding
//! them field by field (`vmstate`), else by their footers (`wire::tail` in
//! precopy, `wire::vmdesc::package_section_ends` in the PACKAGED blob).

use std::collections::HashMap;
use std::path::Path;

use wire::command::Command;
use wire::consts::*;
use wire::ramrec::{BlockRef, RamRecord};
use wire::stream::{SectionKind, TopRecord};
use wire::walk::{Item, Mode, Walked, Walker};
use wire::{Cursor, DecodeError};

use super::ram::{PageKind, Ram, Source};
use super::{mapped_ram, pyjson, vmstate};
use super::{Analysis, Damage, Device, DiscardInfo, Event, EventKind, HeaderInfo, RamChunk};

/// What carries over from one main channel to the next (recovery).
#[derive(Default)]
pub struct MainState {
    walker: Option<Walker>,
    /// Section id → (name, instance) of every opened section.
    sections: HashMap<u32, (String, u32)>,
    mapped_ram: bool,
    ignore_shared: bool,
}

/// The vmdesc record at the very end of a stream: (EOF position, JSON).
pub fn vmdesc_at_end(b: &[u8]) -> Option<(usize, &[u8])> {
    let (eof, _) = wire::vmdesc::find_vmdesc_tail(b)?;
    Some((eof, &b[eof + 6..]))
}

struct Walk<'a> {
    a: &'a mut Analysis,
    ram: &'a mut Ram,
    st: &'a mut MainState,
    /// Last block named on this channel (CONTINUE).
    last: Option<String>,
    /// The RAM section event being filled.
    open_ram: Option<usize>,
    /// Where events go (the main channel's list, or the package's).
    events: Vec<Event>,
    in_package: bool,
    /// Device-section ends found by a footer parse of the tail.
    tail_ends: HashMap<u64, u64>,
}

/// Walk one main channel into `a`. A damaged channel stops at the damage,
/// which is recorded; what came before stays.
pub fn walk(
    a: &mut Analysis,
    ram: &mut Ram,
    st: &mut MainState,
    path: &Path,
    bytes: &[u8],
    recovery: bool,
) {
    if !recovery && a.vmdesc.is_none() {
        if let Some((_, json)) = vmdesc_at_end(bytes) {
            a.vmdesc = pyjson::parse(json).ok();
        }
    }
    let mut w = if recovery {
        let mut w = st.walker.take().unwrap_or_else(|| Walker::headerless(true));
        w.resume_headerless();
        w
    } else {
        // Streams without a configuration section (send-configuration=off).
        let with_cfg = Walker::main(true, true).next(bytes, 0);
        let cfg = !matches!(&with_cfg, Err(DecodeError::Invalid { what, .. })
            if what.starts_with("configuration section missing"));
        Walker::main(cfg, true)
    };
    let events = std::mem::take(&mut a.events);
    let mut wk = Walk {
        a,
        ram,
        st,
        last: None,
        open_ram: None,
        events,
        in_package: false,
        tail_ends: HashMap::new(),
    };
    if recovery {
        wk.push(0, 0, EventKind::Channel { path: path.to_path_buf() });
    }
    if let Err(e) = wk.run(&mut w, bytes, 0) {
        let mut d = Damage::from_decode(path, &e);
        d.expected = format!("expected {}: {}", expecting(w.mode()), d.expected);
        wk.a.damage.push(d);
    }
    wk.st.walker = Some(w);
    wk.a.events = std::mem::take(&mut wk.events);
}

impl Walk<'_> {
    fn push(&mut self, offset: u64, len: u64, kind: EventKind) -> usize {
        self.events.push(Event { offset, len, kind });
        self.events.len() - 1
    }

    /// Walk `bytes` (at absolute offset `base`) to its end or to an error.
    fn run(&mut self, w: &mut Walker, bytes: &[u8], base: u64) -> Result<(), DecodeError> {
        let mut pos = 0usize;
        loop {
            let r = w.next(&bytes[pos..], base + pos as u64)?;
            let (item, offset, len) = match r {
                Walked::End => return Ok(()),
                Walked::NeedMore { .. } if pos == bytes.len() => return Ok(()),
                Walked::NeedMore { at, needed } => {
                    return Err(DecodeError::Incomplete { at, needed })
                }
                Walked::Record { item, offset, len } => (item, offset, len),
            };
            pos += len;
            let end = offset + len as u64;
            match item {
                Item::Header(h) => {
                    let mut hi = HeaderInfo { version: h.version, ..Default::default() };
                    if let Some(c) = h.configuration {
                        let caps = c.capabilities.clone().unwrap_or_default();
                        self.st.ignore_shared = caps.iter().any(|c| c == "x-ignore-shared");
                        w.set_ignore_shared(self.st.ignore_shared);
                        self.st.mapped_ram = caps.iter().any(|c| c == "mapped-ram");
                        hi.machine = Some(c.machine);
                        hi.target_page_bits = c.target_page_bits;
                        hi.capabilities = c.capabilities;
                        hi.uuid = c.uuid.map(|u| u.iter().map(|b| format!("{b:02x}")).collect());
                    }
                    self.a.header = Some(hi);
                    self.push(offset, len as u64, EventKind::Header { version: h.version });
                }
                Item::Ram(rec) => self.ram_record(rec, offset, end)?,
                Item::Footer { .. } => {
                    if let Some(i) = self.open_ram.take() {
                        let e = &mut self.events[i];
                        e.len = end - e.offset;
                    }
                }
                Item::Package(blob) => self.package(blob, offset)?,
                Item::VmDesc(j) => {
                    self.a.vmdesc_len = Some(j.len() as u64);
                    self.push(offset, len as u64, EventKind::Vmdesc { len: j.len() as u64 });
                }
                Item::Top(t) => {
                    if let Some(skip) = self.top(w, t, offset, end, bytes, base)? {
                        pos = (skip - base) as usize;
                    }
                }
            }
            if self.st.mapped_ram && matches!(w.mode(), Mode::Ram { .. }) && self.needs_mem_size() {
                let m = mapped_ram::mem_size(bytes, base, pos, self.st.ignore_shared)?;
                let n = m.blocks.len();
                for (b, present) in m.blocks {
                    self.ram.block(&b.name, b.used_length);
                    self.ram.mapped_pages(&b.name, present.into_iter());
                    self.a.mapped_ram.push(b);
                }
                if let Some(ch) = self.ram_chunk() {
                    ch.mem_size_blocks = n;
                }
                pos = (m.next - base) as usize;
            }
        }
    }

    /// A RAM section START was just opened and no MEM_SIZE read yet.
    fn needs_mem_size(&self) -> bool {
        let Some(i) = self.open_ram else { return false };
        matches!(&self.events[i].kind,
            EventKind::Section { kind: "START", ram: Some(c), .. } if c.mem_size_blocks == 0)
    }

    fn ram_chunk(&mut self) -> Option<&mut RamChunk> {
        let i = self.open_ram?;
        match &mut self.events[i].kind {
            EventKind::Section { ram, .. } => ram.as_mut(),
            _ => None,
        }
    }

    fn block_name(&mut self, b: BlockRef, at: u64) -> Result<String, DecodeError> {
        match b {
            BlockRef::Named(n) => {
                self.last = Some(n.to_string());
                Ok(n.to_string())
            }
            BlockRef::Continue => self.last.clone().ok_or_else(|| {
                DecodeError::invalid(at, "RAM record with CONTINUE but no block named before")
            }),
        }
    }

    fn ram_record(&mut self, rec: RamRecord, offset: u64, end: u64) -> Result<(), DecodeError> {
        let (name, addr, kind) = match rec {
            RamRecord::MemSize { blocks, .. } => {
                for b in &blocks {
                    self.ram.block(&b.name, b.used_length);
                }
                if let Some(c) = self.ram_chunk() {
                    c.mem_size_blocks = blocks.len();
                }
                return Ok(());
            }
            RamRecord::Page { addr, block, .. } => (block, addr, PageKind::Normal),
            RamRecord::Zero { addr, block, .. } => (block, addr, PageKind::Zero),
            RamRecord::Xbzrle { addr, block, .. } => (block, addr, PageKind::Xbzrle),
            RamRecord::CompressPage { addr, block, .. } => (block, addr, PageKind::Normal),
            RamRecord::Eos => {
                if let Some(i) = self.open_ram {
                    let e = &mut self.events[i];
                    e.len = end - e.offset;
                }
                return Ok(());
            }
            RamRecord::MultifdFlush => {
                if let Some(c) = self.ram_chunk() {
                    c.multifd_flushes += 1;
                }
                return Ok(());
            }
            // Only a walker told about mapped-ram yields these; mapped-ram
            // files are read by `analyze::mapped_ram`.
            RamRecord::MappedRamSize { .. } | RamRecord::MappedRamBlock { .. } => return Ok(()),
        };
        let name = self.block_name(name, offset)?;
        if !self.ram.page(&name, addr, kind, Source::Main) {
            return Err(DecodeError::invalid(
                offset,
                format!("page at {addr:#x} of block {name:?}: no such block (or beyond its end) in MEM_SIZE"),
            ));
        }
        if self.ram.listening {
            self.a.postcopy.get_or_insert_with(Default::default).main_pages_after_listen += 1;
        }
        if let Some(c) = self.ram_chunk() {
            match kind {
                PageKind::Normal => c.pages += 1,
                PageKind::Zero => c.zero_pages += 1,
                PageKind::Xbzrle => c.xbzrle_pages += 1,
            }
        }
        Ok(())
    }

    /// A top-level record; returns where to continue when this consumed a
    /// device section's body.
    fn top(
        &mut self,
        w: &Walker,
        t: TopRecord,
        offset: u64,
        end: u64,
        bytes: &[u8],
        base: u64,
    ) -> Result<Option<u64>, DecodeError> {
        let len = end - offset;
        match t {
            TopRecord::SectionOpen { kind, section_id, idstr, instance_id, version_id } => {
                self.st.sections.insert(section_id, (idstr.to_string(), instance_id));
                if matches!(w.mode(), Mode::Ram { .. }) {
                    self.last = None;
                    let i = self.push(
                        offset,
                        len,
                        section_ev(kind, section_id, idstr, Some((instance_id, version_id)), true),
                    );
                    self.open_ram = Some(i);
                    return Ok(None);
                }
                let dev =
                    (kind, section_id, idstr.to_string(), Some(instance_id), Some(version_id));
                self.device(dev, offset, end, bytes, base).map(Some)
            }
            TopRecord::SectionCont { kind, section_id } => {
                let (name, _) =
                    self.st.sections.get(&section_id).cloned().unwrap_or(("?".into(), 0));
                if matches!(w.mode(), Mode::Ram { .. }) {
                    let i = self.push(offset, len, section_ev(kind, section_id, &name, None, true));
                    self.open_ram = Some(i);
                    return Ok(None);
                }
                let dev = (kind, section_id, name, None, None);
                self.device(dev, offset, end, bytes, base).map(Some)
            }
            TopRecord::Command(rc) => {
                let cmd = Command::parse(&rc)?;
                let detail = self.command(&cmd, offset);
                self.push(offset, len, EventKind::Command { name: cmd.name().to_string(), detail });
                Ok(None)
            }
            TopRecord::Eof => {
                self.push(offset, len, EventKind::Eof);
                Ok(None)
            }
            TopRecord::VmDescription { json } => {
                self.push(offset, len, EventKind::Vmdesc { len: json.len() as u64 });
                Ok(None)
            }
        }
    }

    fn pc(&mut self) -> &mut super::Postcopy {
        self.a.postcopy.get_or_insert_with(Default::default)
    }

    fn command(&mut self, cmd: &Command, offset: u64) -> Option<String> {
        Some(match cmd {
            Command::Ping(v) => format!("{v:#x}"),
            Command::PostcopyAdvise(a) => {
                self.pc().advise = Some(offset);
                match a {
                    Some(a) => format!(
                        "page-size summary {:#x}, target page size {}",
                        a.ram_pagesize_summary, a.target_page_size
                    ),
                    None => "no RAM (dirty bitmaps only)".into(),
                }
            }
            Command::PostcopyRamDiscard(d) => {
                let mut pages = 0;
                for &(_, l) in &d.ranges {
                    pages += self.ram.discard(&d.block, l);
                }
                let ranges = d.ranges.len();
                self.pc().discards.push(DiscardInfo {
                    offset,
                    block: d.block.clone(),
                    ranges,
                    pages,
                });
                format!("{}: {ranges} range(s), {pages} page(s)", d.block)
            }
            Command::PostcopyListen => {
                self.pc().listen = Some(offset);
                self.ram.listening = true;
                self.last = None;
                return None;
            }
            Command::PostcopyRun => {
                self.pc().run = Some(offset);
                return None;
            }
            Command::PostcopyResume => {
                self.pc().resumes.push(offset);
                self.last = None;
                return None;
            }
            Command::Packaged(n) => {
                self.pc().package = Some((offset, *n));
                format!("{n} bytes")
            }
            Command::RecvBitmap(b) => b.clone(),
            _ => return None,
        })
    }

    /// The PACKAGED blob: a nested stream of commands and FULL sections.
    fn package(&mut self, blob: &[u8], offset: u64) -> Result<(), DecodeError> {
        let ends = wire::vmdesc::package_section_ends(blob).unwrap_or_default();
        let saved_tail = std::mem::replace(
            &mut self.tail_ends,
            ends.into_iter().map(|(s, e)| (offset + s as u64, offset + e as u64)).collect(),
        );
        let outer = std::mem::take(&mut self.events);
        let was = std::mem::replace(&mut self.in_package, true);
        let mut w = Walker::headerless(true);
        let r = self.run(&mut w, blob, offset);
        let inner = std::mem::replace(&mut self.events, outer);
        self.in_package = was;
        self.tail_ends = saved_tail;
        self.push(
            offset,
            blob.len() as u64,
            EventKind::Package { len: blob.len() as u32, events: inner },
        );
        r.map_err(|e| e.context("inside the PACKAGED blob"))
    }

    /// A device section whose header ends at `hdr_end`: delimit and decode
    /// its data; returns the offset after its footer.
    fn device(
        &mut self,
        (kind, section_id, name, instance_id, version_id): (
            SectionKind,
            u32,
            String,
            Option<u32>,
            Option<u32>,
        ),
        offset: u64,
        hdr_end: u64,
        bytes: &[u8],
        base: u64,
    ) -> Result<u64, DecodeError> {
        let rel = |o: u64| (o - base) as usize;
        let mut fields = None;
        let mut decode_error = None;
        let mut data_end = None;
        let desc = self.a.vmdesc.as_ref().and_then(|v| describe(v, &name, instance_id));
        if let Some(desc) = desc {
            let mut c = Cursor::new(&bytes[rel(hdr_end)..], hdr_end);
            match vmstate::decode_device(&mut c, &desc) {
                Ok(v) if footer_at(bytes, rel(c.offset()), section_id) => {
                    fields = Some(v);
                    data_end = Some(c.offset());
                }
                Ok(_) => {
                    decode_error = Some(format!(
                        "no footer after the {} bytes the vmdesc describes",
                        c.offset() - hdr_end
                    ))
                }
                Err(e) => decode_error = Some(e.to_string()),
            }
        }
        let data_end = match data_end {
            Some(e) => e,
            None => self.footer_end(kind, section_id, offset, hdr_end, bytes, base)? - 5,
        };
        let index = self.a.devices.len();
        self.a.devices.push(Device {
            kind: kind.name(),
            section_id,
            name,
            instance_id,
            version_id,
            offset,
            size: data_end - hdr_end,
            in_package: self.in_package,
            fields,
            decode_error,
            data: bytes[rel(hdr_end)..rel(data_end)].to_vec(),
        });
        self.push(offset, data_end + 5 - offset, EventKind::Device { index });
        Ok(data_end + 5)
    }

    /// The end (after its footer) of the section at `offset`, by footers.
    fn footer_end(
        &mut self,
        kind: SectionKind,
        id: u32,
        offset: u64,
        hdr_end: u64,
        bytes: &[u8],
        base: u64,
    ) -> Result<u64, DecodeError> {
        if let Some(&e) = self.tail_ends.get(&offset) {
            return Ok(e);
        }
        let rel = (offset - base) as usize;
        if kind == SectionKind::Full {
            if let Some(t) = wire::tail::parse_tail(&bytes[rel..]) {
                for (s, e) in t.sections {
                    self.tail_ends.insert(offset + s as u64, offset + e as u64);
                }
                if let Some(&e) = self.tail_ends.get(&offset) {
                    return Ok(e);
                }
            }
        }
        // An iterative device section: the first footer naming it that is
        // followed by a record type byte or the end.
        let from = (hdr_end - base) as usize;
        let f = [&[QEMU_VM_SECTION_FOOTER][..], &id.to_be_bytes()].concat();
        let mut p = from;
        while let Some(q) = bytes[p..].windows(5).position(|x| x == f.as_slice()) {
            let at = p + q;
            if bytes.get(at + 5).is_none_or(|&b| b <= QEMU_VM_COMMAND) {
                return Ok(base + at as u64 + 5);
            }
            p = at + 1;
        }
        Err(DecodeError::invalid(
            hdr_end,
            format!(
                "device section {id}: its footer (0x7e, be32 {id}) followed by a record or EOF"
            ),
        ))
    }
}

/// What the walker was reading, for damage reports.
fn expecting(m: Mode) -> String {
    match m {
        Mode::Header { expect_cfg: true } => "the stream header and configuration section".into(),
        Mode::Header { .. } => "the stream header".into(),
        Mode::Top => "a section, command or EOF (or device data)".into(),
        Mode::Ram { section_id } => format!("a RAM record of section {section_id}"),
        Mode::Footer { section_id } => format!("the footer of section {section_id}"),
        Mode::Package { len } => format!("the PACKAGED blob of {len} bytes"),
        Mode::AfterEof => "the vmdesc record after EOF".into(),
        Mode::Bare => "a RAM record".into(),
        Mode::Done => "nothing more".into(),
    }
}

fn section_ev(k: SectionKind, id: u32, name: &str, iv: Option<(u32, u32)>, ram: bool) -> EventKind {
    EventKind::Section {
        kind: k.name(),
        section_id: id,
        name: name.to_string(),
        instance_id: iv.map(|x| x.0),
        version_id: iv.map(|x| x.1),
        ram: ram.then(RamChunk::default),
    }
}

fn footer_at(b: &[u8], p: usize, id: u32) -> bool {
    b.get(p) == Some(&QEMU_VM_SECTION_FOOTER) && b.get(p + 1..p + 5) == Some(&id.to_be_bytes()[..])
}

/// The vmdesc entry of a device (the last with its name and instance, as
/// the script's dictionary keeps it).
fn describe(v: &pyjson::J, name: &str, instance: Option<u32>) -> Option<pyjson::J> {
    let devs = v.get("devices")?.as_arr()?;
    devs.iter()
        .rev()
        .find(|d| {
            d.get("name").and_then(pyjson::J::as_str) == Some(name)
                && instance.is_none_or(|i| {
                    d.get("instance_id").and_then(pyjson::J::as_u64) == Some(i as u64)
                })
        })
        .cloned()
}
