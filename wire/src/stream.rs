//! Main-stream framing: the header with its configuration section, the
//! top-level records (section headers, commands, EOF, VMDESCRIPTION) and
//! section footers. Section *bodies* are not decoded here: RAM data is
//! [`crate::ramrec`], device data is opaque (see [`crate::vmdesc`]).
//!
//! ```text
//! header        51 45 56 4d  00 00 00 03                 "QEVM", version 3
//! configuration 07  be32 len  machine-name               if send-configuration=on
//!               { 05  counted "configuration/..."  be32 version  body }*
//! START / FULL  01|04  be32 section_id  counted idstr  be32 instance_id  be32 version_id
//! PART / END    02|03  be32 section_id
//!   ...section data (no length on the wire)...
//! footer        7e  be32 section_id                       if send-section-footer=on
//! command       08  be16 cmd  be16 len  payload
//! EOF           00
//! vmdesc        06  be32 len  JSON                        after EOF, precopy only
//! ```
//!
//! QEMU: `migration/savevm.c` (`qemu_savevm_state_header()` /
//! `qemu_loadvm_state_header()`, `save_section_header()`,
//! `save_section_footer()` / `check_section_footer()`,
//! `qemu_savevm_command_send()`, and the dispatch loop
//! `qemu_loadvm_state_main()`).
//!
//! Two rules a parser must know: whether the configuration section and the
//! footers are present is configuration on both ends, not negotiated (hence
//! `expect_configuration` in [`decode_header`]); and a configuration
//! subsection list ends at the first byte that is not `0x05` followed by a name
//! starting with `configuration/`, so [`decode_header`] must see the bytes after
//! the configuration before it returns. Details and the record order of a
//! whole migration: `docs/wire-format.md`, sections 3 and 4.
//!
//! A START section header of `ram` (id 2, instance 0, version 4), its footer,
//! and a PART header:
//!
//! ```
//! use wire::stream::{decode_footer, decode_top, SectionKind, TopRecord};
//! use wire::Cursor;
//!
//! let b = [
//!     0x01, 0, 0, 0, 2, 3, b'r', b'a', b'm', 0, 0, 0, 0, 0, 0, 0, 4, // START
//!     0x7e, 0, 0, 0, 2, // footer
//!     0x02, 0, 0, 0, 2, // PART
//! ];
//! let mut c = Cursor::new(&b, 0);
//! let open = decode_top(&mut c).unwrap();
//! let want = TopRecord::SectionOpen {
//!     kind: SectionKind::Start,
//!     section_id: 2,
//!     idstr: "ram",
//!     instance_id: 0,
//!     version_id: 4,
//! };
//! assert_eq!(open, want);
//! decode_footer(&mut c, 2).unwrap();
//! let part = decode_top(&mut c).unwrap();
//! assert_eq!(part, TopRecord::SectionCont { kind: SectionKind::Part, section_id: 2 });
//! ```

use super::consts::*;
use super::cursor::{Cursor, DecodeError, Encoder, Result};

/// The configuration section (`QEMU_VM_CONFIGURATION`) and its subsections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Configuration {
    pub machine: String,
    pub target_page_bits: Option<u32>,
    /// Validated capabilities announced by the source (e.g. `x-ignore-shared`).
    pub capabilities: Option<Vec<String>>,
    pub uuid: Option<[u8; 16]>,
}

/// Stream header: magic, version, optional configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub configuration: Option<Configuration>,
}

/// Decode the stream header. With `expect_configuration` (QEMU's default
/// `send-configuration=on`) a missing configuration section is an error.
pub fn decode_header(c: &mut Cursor, expect_configuration: bool) -> Result<Header> {
    let start = c.offset();
    let save = c.pos();
    let r = (|| {
        let magic = c.be32(start)?;
        if magic != QEMU_VM_FILE_MAGIC {
            return Err(DecodeError::invalid(
                start,
                format!(
                    "bad stream magic {magic:#010x} (expected {QEMU_VM_FILE_MAGIC:#010x} \"QEVM\")"
                ),
            ));
        }
        let voff = c.offset();
        let version = c.be32(start)?;
        if version == QEMU_VM_FILE_VERSION_COMPAT {
            return Err(DecodeError::invalid(
                voff,
                "stream version 2 (pre-QEMU-1.x compat format) is not supported",
            ));
        }
        if version != QEMU_VM_FILE_VERSION {
            return Err(DecodeError::invalid(
                voff,
                format!("unsupported stream version {version} (expected 3)"),
            ));
        }
        let mut configuration = None;
        if expect_configuration {
            let off = c.offset();
            let t = c.u8(start)?;
            if t != QEMU_VM_CONFIGURATION {
                return Err(DecodeError::invalid(
                    off,
                    format!("configuration section missing: expected type 0x07, found {t:#04x}"),
                ));
            }
            configuration = Some(decode_configuration_body(c, start)?);
        }
        Ok(Header { version, configuration })
    })();
    if r.is_err() {
        c.set_pos(save);
    }
    r
}

fn decode_configuration_body(c: &mut Cursor, start: u64) -> Result<Configuration> {
    let loff = c.offset();
    let len = c.be32(start)? as usize;
    if len > 256 {
        return Err(DecodeError::invalid(
            loff,
            format!("configuration: machine name length {len} is implausible"),
        ));
    }
    let noff = c.offset();
    let name = c.bytes(len, start)?;
    let machine = String::from_utf8(name.to_vec())
        .map_err(|_| DecodeError::invalid(noff, "configuration: machine name is not UTF-8"))?;
    let mut cfg = Configuration { machine, ..Default::default() };
    // Subsections: 0x05, counted name starting with "configuration/", be32 version.
    loop {
        if c.remaining() < 2 {
            // Need at least the type byte and the name length to decide; if
            // the stream is at its end this is a truncation.
            if c.remaining() == 0 || c.peek_u8() == Some(QEMU_VM_SUBSECTION) {
                return Err(DecodeError::Incomplete { at: start, needed: 2 - c.remaining() });
            }
            break;
        }
        if c.peek_u8() != Some(QEMU_VM_SUBSECTION) {
            break;
        }
        let sub_off = c.offset();
        let save = c.pos();
        c.u8(start)?;
        let nm = c.counted(start)?;
        if !nm.starts_with(b"configuration/") {
            // Not ours: the 0x05 belongs to whatever follows.
            c.set_pos(save);
            break;
        }
        let ver = c.be32(start)?;
        match nm {
            b"configuration/target-page-bits" => cfg.target_page_bits = Some(c.be32(start)?),
            b"configuration/capabilities" => {
                let n = c.be32(start)?;
                if n > 64 {
                    return Err(DecodeError::invalid(
                        sub_off,
                        format!("configuration/capabilities: count {n} is implausible"),
                    ));
                }
                let mut caps = Vec::new();
                for _ in 0..n {
                    caps.push(c.counted_str(start, "capability name")?.to_string());
                }
                cfg.capabilities = Some(caps);
            }
            b"configuration/uuid" => {
                let b = c.bytes(16, start)?;
                cfg.uuid = Some(b.try_into().unwrap());
            }
            other => {
                return Err(DecodeError::invalid(
                    sub_off,
                    format!(
                        "unknown configuration subsection {:?} (version {ver})",
                        String::from_utf8_lossy(other)
                    ),
                ))
            }
        }
    }
    Ok(cfg)
}

pub fn encode_header(e: &mut Encoder, h: &Header) {
    e.be32(QEMU_VM_FILE_MAGIC).be32(h.version);
    if let Some(cfg) = &h.configuration {
        e.u8(QEMU_VM_CONFIGURATION);
        e.be32(cfg.machine.len() as u32).bytes(cfg.machine.as_bytes());
        if let Some(bits) = cfg.target_page_bits {
            e.u8(QEMU_VM_SUBSECTION).counted(b"configuration/target-page-bits").be32(1).be32(bits);
        }
        if let Some(caps) = &cfg.capabilities {
            e.u8(QEMU_VM_SUBSECTION)
                .counted(b"configuration/capabilities")
                .be32(1)
                .be32(caps.len() as u32);
            for cap in caps {
                e.counted(cap.as_bytes());
            }
        }
        if let Some(u) = &cfg.uuid {
            e.u8(QEMU_VM_SUBSECTION).counted(b"configuration/uuid").be32(1).bytes(u);
        }
    }
}

/// The kind of a section header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectionKind {
    Start,
    Part,
    End,
    Full,
}

impl SectionKind {
    pub fn type_byte(self) -> u8 {
        match self {
            SectionKind::Start => QEMU_VM_SECTION_START,
            SectionKind::Part => QEMU_VM_SECTION_PART,
            SectionKind::End => QEMU_VM_SECTION_END,
            SectionKind::Full => QEMU_VM_SECTION_FULL,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Start => "START",
            SectionKind::Part => "PART",
            SectionKind::End => "END",
            SectionKind::Full => "FULL",
        }
    }
}

/// A command as framed on the wire (type 0x08, be16 cmd, be16 len, payload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawCommand<'a> {
    pub cmd: u16,
    pub payload: &'a [u8],
    /// Absolute offset of the payload's first byte.
    pub payload_offset: u64,
}

/// One top-level record of the main stream. Section bodies are not part of
/// it: the caller decodes them with the handler for the section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopRecord<'a> {
    /// START or FULL: the header announces a handler.
    SectionOpen {
        kind: SectionKind,
        section_id: u32,
        idstr: &'a str,
        instance_id: u32,
        version_id: u32,
    },
    /// PART or END of a previously opened section.
    SectionCont {
        kind: SectionKind,
        section_id: u32,
    },
    Command(RawCommand<'a>),
    Eof,
    /// The byte 0x06 (only legal after EOF; the caller decides).
    VmDescription {
        json: &'a [u8],
    },
}

/// Decode one top-level record. On `Incomplete` the cursor is unchanged.
pub fn decode_top<'a>(c: &mut Cursor<'a>) -> Result<TopRecord<'a>> {
    let save = c.pos();
    let r = decode_top_inner(c);
    if r.is_err() {
        c.set_pos(save);
    }
    r
}

fn decode_top_inner<'a>(c: &mut Cursor<'a>) -> Result<TopRecord<'a>> {
    let start = c.offset();
    let t = c.u8(start)?;
    match t {
        QEMU_VM_SECTION_START | QEMU_VM_SECTION_FULL => {
            let kind =
                if t == QEMU_VM_SECTION_START { SectionKind::Start } else { SectionKind::Full };
            let section_id = c.be32(start)?;
            let idstr = c.counted_str(start, "section idstr")?;
            let instance_id = c.be32(start)?;
            let version_id = c.be32(start)?;
            Ok(TopRecord::SectionOpen { kind, section_id, idstr, instance_id, version_id })
        }
        QEMU_VM_SECTION_PART | QEMU_VM_SECTION_END => {
            let kind = if t == QEMU_VM_SECTION_PART { SectionKind::Part } else { SectionKind::End };
            let section_id = c.be32(start)?;
            Ok(TopRecord::SectionCont { kind, section_id })
        }
        QEMU_VM_COMMAND => {
            let cmd = c.be16(start)?;
            let len = c.be16(start)? as usize;
            let payload_offset = c.offset();
            let payload = c.bytes(len, start)?;
            Ok(TopRecord::Command(RawCommand { cmd, payload, payload_offset }))
        }
        QEMU_VM_EOF => Ok(TopRecord::Eof),
        QEMU_VM_VMDESCRIPTION => {
            let len = c.be32(start)? as usize;
            let json = c.bytes(len, start)?;
            Ok(TopRecord::VmDescription { json })
        }
        QEMU_VM_CONFIGURATION => Err(DecodeError::invalid(
            start,
            "configuration section (0x07) is only allowed right after the stream header",
        )),
        QEMU_VM_SECTION_FOOTER => {
            Err(DecodeError::invalid(start, "section footer (0x7e) outside of a section"))
        }
        QEMU_VM_SUBSECTION => {
            Err(DecodeError::invalid(start, "subsection marker (0x05) outside of device data"))
        }
        other => Err(DecodeError::invalid(start, format!("unknown section type {other:#04x}"))),
    }
}

/// Decode a section footer and check it closes `section_id`.
pub fn decode_footer(c: &mut Cursor, section_id: u32) -> Result<()> {
    let start = c.offset();
    let save = c.pos();
    let r = (|| {
        let t = c.u8(start)?;
        if t != QEMU_VM_SECTION_FOOTER {
            return Err(DecodeError::invalid(
                start,
                format!("section {section_id}: expected footer 0x7e, found {t:#04x} (section data longer or shorter than expected)"),
            ));
        }
        let id = c.be32(start)?;
        if id != section_id {
            return Err(DecodeError::invalid(
                start,
                format!("section footer names section {id}, expected {section_id}"),
            ));
        }
        Ok(())
    })();
    if r.is_err() {
        c.set_pos(save);
    }
    r
}

pub fn encode_section_open(
    e: &mut Encoder,
    kind: SectionKind,
    section_id: u32,
    idstr: &str,
    instance_id: u32,
    version_id: u32,
) {
    e.u8(kind.type_byte())
        .be32(section_id)
        .counted(idstr.as_bytes())
        .be32(instance_id)
        .be32(version_id);
}

pub fn encode_section_cont(e: &mut Encoder, kind: SectionKind, section_id: u32) {
    e.u8(kind.type_byte()).be32(section_id);
}

pub fn encode_footer(e: &mut Encoder, section_id: u32) {
    e.u8(QEMU_VM_SECTION_FOOTER).be32(section_id);
}

/// Frame a command with an arbitrary payload (the length field is the
/// payload's length; use [`encode_command_with_len`] to lie about it).
pub fn encode_command(e: &mut Encoder, cmd: u16, payload: &[u8]) {
    encode_command_with_len(e, cmd, payload.len() as u16, payload);
}

pub fn encode_command_with_len(e: &mut Encoder, cmd: u16, len: u16, payload: &[u8]) {
    e.u8(QEMU_VM_COMMAND).be16(cmd).be16(len).bytes(payload);
}

pub fn encode_eof(e: &mut Encoder) {
    e.u8(QEMU_VM_EOF);
}

pub fn encode_vmdesc(e: &mut Encoder, json: &[u8]) {
    e.u8(QEMU_VM_VMDESCRIPTION).be32(json.len() as u32).bytes(json);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn spec_header_example() {
        // docs/wire-format.md §11: magic, version 3, configuration "pc-q35-10.2".
        let b = hex("51 45 56 4d 00 00 00 03 07 00 00 00 0b 70 63 2d 71 33 35 2d 31 30 2e 32 08");
        let mut c = Cursor::new(&b, 0);
        let h = decode_header(&mut c, true).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.configuration.as_ref().unwrap().machine, "pc-q35-10.2");
        assert_eq!(c.offset(), 24);
        let mut e = Encoder::new();
        encode_header(&mut e, &h);
        assert_eq!(e.buf, b[..24]);
    }

    #[test]
    fn header_roundtrip_with_subsections() {
        let h = Header {
            version: 3,
            configuration: Some(Configuration {
                machine: "pc-q35-7.2".into(),
                target_page_bits: Some(12),
                capabilities: Some(vec!["x-ignore-shared".into(), "mapped-ram".into()]),
                uuid: Some([7; 16]),
            }),
        };
        let mut e = Encoder::new();
        encode_header(&mut e, &h);
        e.u8(0); // EOF after, so subsection detection can look ahead
        let mut c = Cursor::new(&e.buf, 0);
        assert_eq!(decode_header(&mut c, true).unwrap(), h);
        assert_eq!(c.remaining(), 1);
    }

    #[test]
    fn bad_magic_and_version() {
        let b = hex("51 45 56 4e 00 00 00 03");
        let e = decode_header(&mut Cursor::new(&b, 0), false).unwrap_err();
        assert!(e.to_string().contains("bad stream magic 0x5145564e"), "{e}");
        assert!(e.to_string().contains("offset 0"));
        let b = hex("51 45 56 4d 00 00 00 04");
        let e = decode_header(&mut Cursor::new(&b, 0), false).unwrap_err();
        assert!(e.to_string().contains("unsupported stream version 4"), "{e}");
        assert!(e.to_string().contains("offset 4"), "{e}");
        let b = hex("51 45 56 4d 00 00 00 02");
        assert!(decode_header(&mut Cursor::new(&b, 0), false)
            .unwrap_err()
            .to_string()
            .contains("version 2"));
        let b = hex("51 45 56 4d 00 00 00 03 04");
        let e = decode_header(&mut Cursor::new(&b, 0), true).unwrap_err();
        assert!(e.to_string().contains("configuration section missing"), "{e}");
        let b = hex("51 45 56 4d 00 00");
        assert!(decode_header(&mut Cursor::new(&b, 0), true).unwrap_err().is_incomplete());
    }

    #[test]
    fn top_records_roundtrip() {
        let mut e = Encoder::new();
        encode_section_open(&mut e, SectionKind::Start, 2, "ram", 0, 4);
        encode_section_cont(&mut e, SectionKind::Part, 2);
        encode_section_open(&mut e, SectionKind::Full, 9, "globalstate", 0, 1);
        encode_command(&mut e, MIG_CMD_PING, &1u32.to_be_bytes());
        encode_eof(&mut e);
        encode_vmdesc(&mut e, b"{}");
        let mut c = Cursor::new(&e.buf, 10);
        assert_eq!(
            decode_top(&mut c).unwrap(),
            TopRecord::SectionOpen {
                kind: SectionKind::Start,
                section_id: 2,
                idstr: "ram",
                instance_id: 0,
                version_id: 4
            }
        );
        assert_eq!(
            decode_top(&mut c).unwrap(),
            TopRecord::SectionCont { kind: SectionKind::Part, section_id: 2 }
        );
        assert!(matches!(
            decode_top(&mut c).unwrap(),
            TopRecord::SectionOpen { idstr: "globalstate", .. }
        ));
        match decode_top(&mut c).unwrap() {
            TopRecord::Command(rc) => {
                assert_eq!(rc.cmd, MIG_CMD_PING);
                assert_eq!(rc.payload, &[0, 0, 0, 1]);
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(decode_top(&mut c).unwrap(), TopRecord::Eof);
        assert_eq!(decode_top(&mut c).unwrap(), TopRecord::VmDescription { json: b"{}" });
        assert_eq!(c.remaining(), 0);
    }

    #[test]
    fn unknown_type_and_footer() {
        let b = [0x09u8];
        let e = decode_top(&mut Cursor::new(&b, 77)).unwrap_err();
        assert_eq!(e, DecodeError::invalid(77, "unknown section type 0x09"));
        let b = hex("7e 00 00 00 03");
        assert!(decode_footer(&mut Cursor::new(&b, 0), 3).is_ok());
        assert!(decode_footer(&mut Cursor::new(&b, 0), 2)
            .unwrap_err()
            .to_string()
            .contains("expected 2"));
        let b = hex("01 00 00 00 02 03 72 61");
        let mut c = Cursor::new(&b, 0);
        assert!(decode_top(&mut c).unwrap_err().is_incomplete());
        assert_eq!(c.pos(), 0);
    }
}
