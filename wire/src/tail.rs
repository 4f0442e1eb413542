//! The end of a precopy stream: the device-state tail (FULL sections, each
//! ending at its `0x7e <be32 id>` footer), the EOF byte, and whatever
//! follows EOF (normally the vmdesc record, which is optional).
//!
//! QEMU's destination parses each device section with its own device model
//! and so knows where EOF is; after EOF it reads the vmdesc only to discard it
//! and never fails for its absence or for garbage in its place
//! (`migration/savevm.c: qemu_loadvm_state()`). A destination that does not
//! model devices finds EOF by delimiting the sections through their footers:
//! [`parse_tail`] searches every parse of the buffered tail as FULL sections
//! followed by an EOF byte and ranks them (a complete vmdesc ending exactly at
//! the end of the data first, then the latest EOF). Details:
//! `docs/wire-format.md`, section 5.4.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

use super::consts::*;

/// What follows the EOF byte of a tail parse.
#[derive(Clone, Debug, PartialEq)]
pub enum AfterEof {
    /// Nothing (yet).
    Nothing,
    /// A complete VMDESCRIPTION record ending at `end`; `json` when its bytes
    /// parse as JSON.
    Vmdesc { end: usize, json: Option<Value> },
    /// `0x06` and a vmdesc record whose declared length (if known) runs past
    /// the end of the data.
    VmdescPartial { declared: Option<u32>, have: usize },
    /// Another byte where the vmdesc would be (QEMU warns and ignores it).
    Other(u8),
}

/// One parse of a device-state tail up to an EOF byte.
#[derive(Clone, Debug, PartialEq)]
pub struct TailParse {
    /// Each section: position of its header, position after its footer.
    pub sections: Vec<(usize, usize)>,
    /// Position of the EOF byte.
    pub eof_pos: usize,
    pub after: AfterEof,
    /// The whole data also parses as FULL sections ending exactly at its end,
    /// with no EOF: what a stream cut right before its EOF looks like (the
    /// EOF found is then a footer-like pattern and `0x00` inside device data).
    pub sections_reach_end: bool,
}

impl TailParse {
    /// A complete vmdesc record ends exactly at `len` (the data received).
    pub fn vmdesc_ends_at(&self, len: usize) -> bool {
        matches!(self.after, AfterEof::Vmdesc { end, json: Some(_) } if end == len)
    }
}

/// A FULL section header at `p`: its section id and where its data starts.
pub(crate) fn full_header(b: &[u8], p: usize) -> Option<(u32, usize)> {
    if p + 6 > b.len() || b[p] != QEMU_VM_SECTION_FULL {
        return None;
    }
    let id = u32::from_be_bytes(b[p + 1..p + 5].try_into().ok()?);
    let n = b[p + 5] as usize;
    let after = p + 6 + n + 8;
    if n == 0 || after > b.len() || !b[p + 6..p + 6 + n].iter().all(|&c| (0x20..0x7f).contains(&c))
    {
        return None;
    }
    Some((id, after))
}

fn after_eof(buf: &[u8], eof_pos: usize) -> AfterEof {
    let r = &buf[eof_pos + 1..];
    match r.first() {
        None => AfterEof::Nothing,
        Some(&b) if b != QEMU_VM_VMDESCRIPTION => AfterEof::Other(b),
        Some(_) if r.len() < 5 => AfterEof::VmdescPartial { declared: None, have: r.len() },
        Some(_) => {
            let l = u32::from_be_bytes(r[1..5].try_into().expect("4 bytes"));
            if r.len() - 5 < l as usize {
                AfterEof::VmdescPartial { declared: Some(l), have: r.len() - 5 }
            } else {
                let end = eof_pos + 1 + 5 + l as usize;
                let json = serde_json::from_slice(&buf[eof_pos + 6..end]).ok();
                AfterEof::Vmdesc { end, json }
            }
        }
    }
}

/// The best parse of `buf` (the bytes from the first FULL section of the
/// device state on) as FULL sections delimited by footers and an EOF byte,
/// or None when no parse reaches an EOF byte in the data so far.
///
/// Device data may contain bytes that look like its own footer followed by
/// `0x00`; every parse is considered and the best kept: one whose complete
/// vmdesc (with valid JSON) ends exactly at the end of the data, else the
/// one whose EOF comes last.
pub fn parse_tail(buf: &[u8]) -> Option<TailParse> {
    // Footer-like positions by the section id they name.
    // (memchr: device data is mostly bytes that are no footer marker.)
    let mut footers: HashMap<u32, Vec<usize>> = HashMap::new();
    let scan = &buf[..buf.len().saturating_sub(4)];
    for q in memchr::memchr_iter(QEMU_VM_SECTION_FOOTER, scan) {
        let id = u32::from_be_bytes(buf[q + 1..q + 5].try_into().expect("4 bytes"));
        footers.entry(id).or_default().push(q);
    }
    // Breadth-first over the positions where a record can start; `pred`
    // remembers the section that led to each.
    let mut pred: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([0usize]);
    let mut seen = std::collections::HashSet::from([0usize]);
    let mut eofs = Vec::new();
    while let Some(p) = queue.pop_front() {
        if p >= buf.len() {
            continue;
        }
        if buf[p] == QEMU_VM_EOF {
            eofs.push(p);
            continue;
        }
        let Some((id, dstart)) = full_header(buf, p) else { continue };
        let Some(qs) = footers.get(&id) else { continue };
        let first = qs.partition_point(|&q| q < dstart);
        for &q in &qs[first..] {
            let next = q + 5;
            if seen.insert(next) {
                pred.insert(next, p);
                queue.push_back(next);
            }
        }
    }
    let best = eofs.into_iter().map(|e| (e, after_eof(buf, e))).max_by_key(|(e, a)| {
        let exact = matches!(a, AfterEof::Vmdesc { end, json: Some(_) } if *end == buf.len());
        (exact, *e)
    })?;
    let (eof_pos, after) = best;
    let mut sections = Vec::new();
    let mut at = eof_pos;
    while let Some(&p) = pred.get(&at) {
        sections.push((p, at));
        at = p;
    }
    sections.reverse();
    let sections_reach_end = !buf.is_empty() && seen.contains(&buf.len());
    Some(TailParse { sections, eof_pos, after, sections_reach_end })
}

#[cfg(test)]
mod tests {
    use super::super::cursor::Encoder;
    use super::super::stream::*;
    use super::*;

    fn full(e: &mut Encoder, id: u32, name: &str, data: &[u8]) -> (usize, usize) {
        let s = e.buf.len();
        encode_section_open(e, SectionKind::Full, id, name, 0, 1);
        e.bytes(data);
        encode_footer(e, id);
        (s, e.buf.len())
    }

    /// Two sections, the first with a fake footer of its own id followed
    /// by 0x00 (a fake EOF) inside its data.
    fn two_sections() -> (Encoder, Vec<(usize, usize)>) {
        let mut e = Encoder::new();
        let a = full(&mut e, 3, "timer", &[1, 0x7e, 0, 0, 0, 3, 0x00, 0x41, 2]);
        let b = full(&mut e, 9, "globalstate", &[0, 0, 0, 8, b'r', b'u', b'n']);
        (e, vec![a, b])
    }

    #[test]
    fn eof_without_vmdesc() {
        let (mut e, secs) = two_sections();
        let eof = e.buf.len();
        encode_eof(&mut e);
        let p = parse_tail(&e.buf).unwrap();
        assert_eq!(p.sections, secs);
        assert_eq!(p.eof_pos, eof);
        assert_eq!(p.after, AfterEof::Nothing);
        // Before EOF arrives, only the fake EOF inside the first section
        // parses.
        let early = parse_tail(&e.buf[..eof]).unwrap();
        assert!(early.eof_pos < secs[0].1);
        // ... and the data also parses as whole sections: cut before EOF.
        assert!(early.sections_reach_end);
        assert!(!p.sections_reach_end);
    }

    #[test]
    fn vmdesc_complete_cut_and_garbage() {
        let (mut e, secs) = two_sections();
        let eof = e.buf.len();
        encode_eof(&mut e);
        let base = e.buf.clone();
        encode_vmdesc(&mut e, br#"{"devices":[]}"#);
        let p = parse_tail(&e.buf).unwrap();
        assert_eq!(p.sections, secs);
        assert!(p.vmdesc_ends_at(e.buf.len()), "{p:?}");
        // Cut inside the JSON, inside the length, right after 0x06.
        for cut in [e.buf.len() - 3, eof + 3, eof + 2] {
            let p = parse_tail(&e.buf[..cut]).unwrap();
            assert_eq!(p.eof_pos, eof);
            assert!(matches!(p.after, AfterEof::VmdescPartial { .. }), "{cut}: {p:?}");
        }
        // A complete record whose bytes are not JSON.
        let mut g = base.clone();
        g.extend_from_slice(&[0x06, 0, 0, 0, 2, b'x', b'x']);
        let p = parse_tail(&g).unwrap();
        assert_eq!(p.after, AfterEof::Vmdesc { end: g.len(), json: None });
        // Garbage after EOF.
        let mut g = base.clone();
        g.extend_from_slice(b"\xffgarbage");
        let p = parse_tail(&g).unwrap();
        assert_eq!((p.eof_pos, p.after), (eof, AfterEof::Other(0xff)));
    }

    #[test]
    fn no_eof_yet_or_not_device_state() {
        let (e, secs) = two_sections();
        // The second section is not followed by EOF yet: only the fake EOF.
        let p = parse_tail(&e.buf).unwrap();
        assert!(p.eof_pos < secs[0].1);
        assert!(parse_tail(&e.buf[..secs[0].0 + 4]).is_none());
        assert!(parse_tail(b"\x02\x00\x00\x00\x01").is_none());
        // An empty tail: EOF right away.
        let p = parse_tail(&[0]).unwrap();
        assert_eq!((p.sections.len(), p.eof_pos), (0, 0));
    }
}
