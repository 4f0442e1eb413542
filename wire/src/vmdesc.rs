//! Delimiting device sections, whose data carries no length
//! (`migration/vmstate.c` writes fields without tags or sizes).
//!
//! Two pure strategies:
//! - precopy: the stream ends with `00 06 <be32 L> <L bytes of JSON>` (EOF,
//!   then the VMDESCRIPTION record). [`find_vmdesc_tail`] finds it at the end
//!   of a buffered tail and [`split_with_vmdesc`] walks the buffered FULL
//!   sections, sizing each from the JSON's field sizes, as QEMU's
//!   `scripts/analyze-migration.py` does;
//! - postcopy (no vmdesc): the device sections travel in the PACKAGED blob.
//!   [`package_section_ends`] finds the one parse of the whole blob (commands
//!   and FULL sections ending at `7e <be32 id>` footers) that ends exactly with
//!   POSTCOPY_RUN; [`split_one_by_footer`] is the fallback that takes the first
//!   footer followed by a plausible record, and [`split_exact`] builds a section
//!   whose bounds are known.
//!
//! Details: `docs/wire-format.md`, section 5.

use serde_json::Value;

pub mod check;

use super::consts::*;
use super::cursor::{Cursor, DecodeError, Result};

/// Where the vmdesc tail starts in `buf`: returns `(eof_pos, json)` where
/// `buf[eof_pos] == 0x00` (EOF), `buf[eof_pos+1] == 0x06`, and the JSON
/// (which must parse) ends exactly at the end of `buf`.
pub fn find_vmdesc_tail(buf: &[u8]) -> Option<(usize, Value)> {
    if buf.last() != Some(&b'}') || buf.len() < 7 {
        return None;
    }
    // The JSON holds no NUL byte (JSON allows none outside a string and
    // serde_json none inside one), so the last NUL of the buffer lies in
    // the record's head: the EOF byte or one of the length's four bytes.
    // The 0x06 byte p is therefore within z - 4 ..= z + 1, and each such
    // 0x06 preceded by 0x00 is tried, backwards (no need to scan, or
    // parse, anything before).
    let z = memchr::memrchr(QEMU_VM_EOF, buf)?;
    let lo = z.saturating_sub(4).max(1);
    let hi = (z + 1).min(buf.len() - 6);
    for p in (lo..=hi).rev() {
        if buf[p] == QEMU_VM_VMDESCRIPTION && buf[p - 1] == QEMU_VM_EOF {
            let l = u32::from_be_bytes(buf[p + 1..p + 5].try_into().unwrap()) as usize;
            if p + 5 + l == buf.len() {
                if let Ok(v) = serde_json::from_slice::<Value>(&buf[p + 5..]) {
                    return Some((p - 1, v));
                }
            }
        }
    }
    None
}

/// A FULL section delimited in a buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitSection {
    pub section_id: u32,
    pub idstr: String,
    pub instance_id: u32,
    pub version_id: u32,
    /// Offset of the header within the buffer.
    pub header_pos: usize,
    /// Range of the device data within the buffer.
    pub data: std::ops::Range<usize>,
    pub vmdesc: Option<Value>,
}

/// Byte size of a vmdesc description (fields + subsections), as written.
pub fn described_size(desc: &Value) -> std::result::Result<usize, String> {
    let mut total = 0usize;
    if let Some(fields) = desc.get("fields").and_then(|f| f.as_array()) {
        for f in fields {
            let size = f
                .get("size")
                .and_then(|s| s.as_u64())
                .ok_or_else(|| format!("field without size: {f}"))? as usize;
            let n = f.get("array_len").and_then(|s| s.as_u64()).unwrap_or(1) as usize;
            total += size * n;
        }
    } else if let Some(s) = desc.get("size").and_then(|s| s.as_u64()) {
        return Ok(s as usize);
    }
    if let Some(subs) = desc.get("subsections").and_then(|s| s.as_array()) {
        for s in subs {
            let name = s
                .get("vmsd_name")
                .and_then(|n| n.as_str())
                .ok_or("subsection without vmsd_name")?;
            // 0x05, counted name, be32 version_id, then the data.
            total += 1 + 1 + name.len() + 4 + described_size(s)?;
        }
    }
    Ok(total)
}

fn section_header(c: &mut Cursor, start: u64) -> Result<(u32, String, u32, u32)> {
    let t = c.u8(start)?;
    if t != QEMU_VM_SECTION_FULL {
        return Err(DecodeError::invalid(
            start,
            format!("expected a FULL section (0x04), found type {t:#04x}"),
        ));
    }
    let id = c.be32(start)?;
    let name = c.counted_str(start, "section idstr")?.to_string();
    let inst = c.be32(start)?;
    let ver = c.be32(start)?;
    Ok((id, name, inst, ver))
}

/// Split `buf` (a run of FULL sections with footers, ending exactly at
/// `buf.len()`) using the vmdesc `devices` list. `base` is `buf[0]`'s
/// absolute stream offset (for errors).
pub fn split_with_vmdesc(buf: &[u8], base: u64, vmdesc: &Value) -> Result<Vec<SplitSection>> {
    split_impl(buf, base, vmdesc, &mut None)
}

/// A footer marker (0x7e) right where the vmdesc says a device section ends,
/// naming another section: QEMU's destination, which reads the device's
/// fields, fails there ("Mismatched section id in footer", in
/// `migration/savevm.c`), so a destination that delimits with the vmdesc
/// must too.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("device section {name:?} (id {expected}) at byte offset {section_at}: mismatched section id in footer at byte offset {at}: read {read}, expected {expected}")]
pub struct FooterMismatch {
    pub section_at: u64,
    pub at: u64,
    pub name: String,
    pub read: u32,
    pub expected: u32,
}

/// Walk `buf` as [`split_with_vmdesc`] does and return the first footer
/// mismatch, if that is where the walk stops.
pub fn footer_mismatch(buf: &[u8], base: u64, vmdesc: &Value) -> Option<FooterMismatch> {
    let mut m = None;
    match split_impl(buf, base, vmdesc, &mut m) {
        Ok(_) => None,
        Err(_) => m,
    }
}

fn split_impl(
    buf: &[u8],
    base: u64,
    vmdesc: &Value,
    mismatch: &mut Option<FooterMismatch>,
) -> Result<Vec<SplitSection>> {
    let devices = vmdesc
        .get("devices")
        .and_then(|d| d.as_array())
        .ok_or_else(|| DecodeError::invalid(base, "vmdesc JSON has no \"devices\" array"))?;
    let mut c = Cursor::new(buf, base);
    let mut out = Vec::new();
    let mut di = 0usize;
    while c.remaining() > 0 {
        let header_pos = c.pos();
        let start = c.offset();
        let (id, name, inst, ver) =
            section_header(&mut c, start).map_err(|e| e.context("device state"))?;
        // Find the description: devices are in stream order; early-setup
        // devices described earlier are skipped by name match. The instance
        // id is not compared: QEMU's destination never reads the vmdesc, so
        // a header whose instance id differs from its description (another
        // instance of the same device) still loads there.
        let mut found = None;
        while di < devices.len() {
            let d = &devices[di];
            di += 1;
            if d.get("name").and_then(|n| n.as_str()) == Some(name.as_str()) {
                found = Some(d.clone());
                break;
            }
        }
        let desc = found.ok_or_else(|| {
            DecodeError::invalid(
                start,
                format!("device section {name:?} instance {inst} is not described in the vmdesc (no further description of {name:?})"),
            )
        })?;
        let size = described_size(&desc)
            .map_err(|e| DecodeError::invalid(start, format!("vmdesc for {name:?}: {e}")))?;
        let dstart = c.pos();
        c.bytes(size, start).map_err(|_| {
            DecodeError::invalid(start, format!("device section {name:?}: vmdesc size {size} runs past the buffered device state"))
        })?;
        let dend = c.pos();
        if let [QEMU_VM_SECTION_FOOTER, a, b, cc, d, ..] = buf[dend..] {
            let read = u32::from_be_bytes([a, b, cc, d]);
            if read != id {
                let (at, expected) = (base + dend as u64, id);
                *mismatch = Some(FooterMismatch {
                    section_at: start,
                    at,
                    name: name.clone(),
                    read,
                    expected,
                });
            }
        }
        super::stream::decode_footer(&mut c, id)
            .map_err(|e| e.context(&format!("device section {name:?} (vmdesc size {size})")))?;
        out.push(SplitSection {
            section_id: id,
            idstr: name,
            instance_id: inst,
            version_id: ver,
            header_pos,
            data: dstart..dend,
            vmdesc: Some(desc),
        });
    }
    Ok(out)
}

/// True if `b[p..]` starts with something that may follow a FULL section:
/// another FULL header with a printable idstr, a known command, EOF, or the
/// end of the buffer.
fn plausible_next(b: &[u8], p: usize) -> bool {
    if p == b.len() {
        return true;
    }
    match b[p] {
        QEMU_VM_SECTION_FULL => {
            if p + 6 > b.len() {
                return false;
            }
            let n = b[p + 5] as usize;
            if n == 0 || p + 6 + n + 8 > b.len() {
                return false;
            }
            b[p + 6..p + 6 + n].iter().all(|&ch| (0x20..0x7f).contains(&ch))
        }
        QEMU_VM_COMMAND => {
            if p + 5 > b.len() {
                return false;
            }
            let cmd = u16::from_be_bytes([b[p + 1], b[p + 2]]);
            let len = u16::from_be_bytes([b[p + 3], b[p + 4]]) as usize;
            cmd > 0 && cmd < MIG_CMD_MAX && p + 5 + len <= b.len()
        }
        QEMU_VM_EOF => true,
        _ => false,
    }
}

/// Delimit the FULL section starting at `buf[pos]` by its footer (heuristic:
/// the first `0x7e <be32 id>` followed by a plausible next record). Returns
/// the section and the position after its footer.
pub fn split_one_by_footer(buf: &[u8], pos: usize, base: u64) -> Result<(SplitSection, usize)> {
    let mut c = Cursor::new(buf, base);
    c.set_pos(pos);
    let start = c.offset();
    let (id, name, inst, ver) = section_header(&mut c, start)?;
    let dstart = c.pos();
    let mut pat = [QEMU_VM_SECTION_FOOTER, 0, 0, 0, 0];
    pat[1..].copy_from_slice(&id.to_be_bytes());
    let mut q = dstart;
    while q + 5 <= buf.len() {
        if buf[q..q + 5] == pat && plausible_next(buf, q + 5) {
            return Ok((
                SplitSection {
                    section_id: id,
                    idstr: name,
                    instance_id: inst,
                    version_id: ver,
                    header_pos: pos,
                    data: dstart..q,
                    vmdesc: None,
                },
                q + 5,
            ));
        }
        q += 1;
    }
    Err(DecodeError::invalid(
        start,
        format!("device section {name:?} (id {id}): no footer found before the end of the data"),
    ))
}

/// The FULL section at `pos` whose footer ends at `end` (known boundaries).
pub fn split_exact(buf: &[u8], pos: usize, end: usize, base: u64) -> Result<(SplitSection, usize)> {
    let mut c = Cursor::new(&buf[..end], base);
    c.set_pos(pos);
    let start = c.offset();
    let (id, name, inst, ver) = section_header(&mut c, start)?;
    let dstart = c.pos();
    let mut f = Cursor::new(buf, base);
    f.set_pos(end - 5);
    super::stream::decode_footer(&mut f, id)?;
    Ok((
        SplitSection {
            section_id: id,
            idstr: name,
            instance_id: inst,
            version_id: ver,
            header_pos: pos,
            data: dstart..end - 5,
            vmdesc: None,
        },
        end,
    ))
}

/// Delimit every FULL section of a PACKAGED blob at once: find the one
/// parse of the whole blob as commands and FULL sections (each ending at a
/// `0x7e <be32 id>` footer) that ends exactly at the blob's end with
/// POSTCOPY_RUN, trying footer candidates with backtracking. Device data can
/// contain footer-like bytes; only the parse that consumes the whole blob is
/// right. Returns section start → position after its footer, or None when no
/// such parse exists (the caller then falls back to [`split_one_by_footer`]).
pub fn package_section_ends(buf: &[u8]) -> Option<std::collections::HashMap<usize, usize>> {
    package_parse(buf, false)
}

/// The package's sections as [`package_section_ends`] finds them, unless
/// the parse that takes any `0x7e <be32>` as a footer finds more sections
/// (the strict parse then ran past a changed footer to a later footer-like
/// pattern of the same id, swallowing whole sections) or is the only one:
/// then that parse, with its first footer naming another section than its
/// header. QEMU's destination, which reads each device with its model,
/// fails there ("Mismatched section id in footer", `migration/savevm.c`;
/// differential fuzzing, docs/differential-fuzz.md). `base` is `buf[0]`'s
/// stream offset.
#[allow(clippy::type_complexity)]
pub fn package_sections(
    buf: &[u8],
    base: u64,
) -> Option<(std::collections::HashMap<usize, usize>, Option<FooterMismatch>)> {
    let strict = package_parse(buf, false);
    let Some(lenient) = package_parse(buf, true) else { return strict.map(|m| (m, None)) };
    if strict.as_ref().is_some_and(|s| s.len() >= lenient.len()) {
        return strict.map(|m| (m, None));
    }
    let mut ends: Vec<_> = lenient.iter().map(|(&s, &e)| (s, e)).collect();
    ends.sort();
    let mismatches: Vec<FooterMismatch> = ends
        .into_iter()
        .filter_map(|(s, e)| {
            let mut c = Cursor::new(buf, base);
            c.set_pos(s);
            let (id, name, _, _) = section_header(&mut c, base + s as u64).ok()?;
            let read = u32::from_be_bytes(buf[e - 4..e].try_into().ok()?);
            (read != id).then(|| FooterMismatch {
                section_at: base + s as u64,
                at: base + (e - 5) as u64,
                name,
                read,
                expected: id,
            })
        })
        .collect();
    match (strict, mismatches.len()) {
        (Some(s), n) if n != 1 => Some((s, None)),
        _ => Some((lenient, mismatches.into_iter().next())),
    }
}

fn package_parse(buf: &[u8], lenient: bool) -> Option<std::collections::HashMap<usize, usize>> {
    fn full_header(b: &[u8], p: usize) -> Option<(u32, usize)> {
        if p + 6 > b.len() || b[p] != QEMU_VM_SECTION_FULL {
            return None;
        }
        let id = u32::from_be_bytes(b[p + 1..p + 5].try_into().unwrap());
        let n = b[p + 5] as usize;
        let after = p + 6 + n + 8;
        if n == 0
            || after > b.len()
            || !b[p + 6..p + 6 + n].iter().all(|&c| (0x20..0x7f).contains(&c))
        {
            return None;
        }
        Some((id, after))
    }
    // Iterative DFS with memoised dead ends. Each frame: (position, next
    // footer candidate to try when the position is a FULL section).
    let len = buf.len();
    let mut dead = std::collections::HashSet::new();
    let mut stack: Vec<(usize, usize)> = vec![(0, 0)];
    let mut chosen: Vec<(usize, usize)> = Vec::new(); // (section start, end) along the path
    let mut steps = 0usize;
    while let Some(&(p, cand)) = stack.last() {
        steps += 1;
        if steps > 1_000_000 {
            return None;
        }
        if dead.contains(&p) && cand == 0 {
            stack.pop();
            continue;
        }
        let next: Option<(usize, usize)> = if p < len && buf[p] == QEMU_VM_COMMAND && cand == 0 {
            // A command: one way forward.
            if p + 5 > len {
                None
            } else {
                let cmd = u16::from_be_bytes([buf[p + 1], buf[p + 2]]);
                let l = u16::from_be_bytes([buf[p + 3], buf[p + 4]]) as usize;
                let fixed_ok = command_fixed_len(cmd).is_none_or(|f| f as usize == l);
                let end = p + 5 + l;
                if cmd == 0
                    || cmd >= MIG_CMD_MAX
                    || cmd == MIG_CMD_PACKAGED
                    || !fixed_ok
                    || end > len
                {
                    None
                } else if cmd == MIG_CMD_POSTCOPY_RUN {
                    if end == len {
                        let mut m = std::collections::HashMap::new();
                        for (s, e) in &chosen {
                            m.insert(*s, *e);
                        }
                        return Some(m);
                    }
                    None
                } else {
                    Some((end, usize::MAX)) // marker: a command step
                }
            }
        } else if let Some((id, dstart)) = full_header(buf, p) {
            // Next footer candidate at or after max(dstart, cand).
            let mut q = dstart.max(cand);
            let mut found = None;
            while q + 5 <= len {
                if buf[q] == QEMU_VM_SECTION_FOOTER
                    && (lenient || buf[q + 1..q + 5] == id.to_be_bytes())
                {
                    found = Some(q);
                    break;
                }
                q += 1;
            }
            found.map(|q| (q + 5, q + 1))
        } else {
            None
        };
        match next {
            Some((np, resume)) => {
                // Remember where to resume this frame if the branch fails.
                stack.last_mut().unwrap().1 =
                    if resume == usize::MAX { usize::MAX } else { resume };
                if resume != usize::MAX {
                    chosen.push((p, np));
                }
                stack.push((np, 0));
            }
            None => {
                dead.insert(p);
                stack.pop();
                // Backtrack into the parent: if it was a FULL section, drop
                // its chosen end and try its next candidate (its frame keeps
                // the resume point); if it was a command, it is dead too.
                while let Some(&(pp, pc)) = stack.last() {
                    if pc == usize::MAX {
                        dead.insert(pp);
                        stack.pop();
                        continue;
                    }
                    if chosen.last().is_some_and(|(s, _)| *s == pp) {
                        chosen.pop();
                    }
                    break;
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::cursor::Encoder;
    use super::super::stream::*;
    use super::*;
    use serde_json::json;

    fn full(e: &mut Encoder, id: u32, name: &str, data: &[u8]) {
        encode_section_open(e, SectionKind::Full, id, name, 0, 1);
        e.bytes(data);
        encode_footer(e, id);
    }

    #[test]
    fn tail_and_split() {
        let desc = json!({"page_size": 4096, "devices": [
            {"name": "timer", "instance_id": 0, "vmsd_name": "timer", "version": 2,
             "fields": [{"name": "a", "type": "int64", "size": 8}, {"name": "b", "array_len": 3, "type": "uint8", "size": 1}],
             "subsections": [{"vmsd_name": "timer/dticks", "version": 1, "fields": [{"name": "c", "type": "int64", "size": 8}]}]},
            {"name": "globalstate", "instance_id": 0, "vmsd_name": "globalstate", "version": 1,
             "fields": [{"name": "size", "type": "uint32", "size": 4}, {"name": "runstate", "type": "buffer", "size": 100}]}
        ]});
        let mut e = Encoder::new();
        let mut timer = vec![0x7eu8; 11]; // contains footer-like bytes on purpose
        timer.push(5);
        timer.push(12);
        timer.extend_from_slice(b"timer/dticks");
        timer.extend_from_slice(&1u32.to_be_bytes());
        timer.extend_from_slice(&[1; 8]);
        full(&mut e, 3, "timer", &timer);
        let mut gs = 8u32.to_be_bytes().to_vec();
        let mut rs = b"running".to_vec();
        rs.resize(100, 0);
        gs.extend_from_slice(&rs);
        full(&mut e, 9, "globalstate", &gs);
        let dev_len = e.buf.len();
        encode_eof(&mut e);
        let js = serde_json::to_vec(&desc).unwrap();
        encode_vmdesc(&mut e, &js);
        let (eofp, v) = find_vmdesc_tail(&e.buf).unwrap();
        assert_eq!(eofp, dev_len);
        assert_eq!(v, desc);
        let secs = split_with_vmdesc(&e.buf[..eofp], 1000, &v).unwrap();
        assert_eq!(secs.len(), 2);
        assert_eq!(&e.buf[secs[0].data.clone()], &timer[..]);
        assert_eq!(&e.buf[secs[1].data.clone()], &gs[..]);
        // Not yet complete: no tail.
        assert!(find_vmdesc_tail(&e.buf[..e.buf.len() - 1]).is_none());
        // Wrong description size → footer mismatch error naming the device.
        let mut bad = desc.clone();
        bad["devices"][1]["fields"][1]["size"] = json!(99);
        let err = split_with_vmdesc(&e.buf[..eofp], 1000, &bad).unwrap_err().to_string();
        assert!(err.contains("globalstate"), "{err}");
    }

    /// Headers whose instance ids differ from the vmdesc's (QEMU's
    /// destination never reads the vmdesc): described by name, in order.
    #[test]
    fn split_ignores_changed_instance_ids() {
        let pic = |i: u32| {
            json!({"name": "i8259", "instance_id": i, "vmsd_name": "i8259", "version": 1,
            "fields": [{"name": "d", "type": "buffer", "size": 16}]})
        };
        let desc = json!({"devices": [pic(0), pic(1)]});
        let mut e = Encoder::new();
        for (id, inst) in [(4u32, 1u32), (5, 1)] {
            encode_section_open(&mut e, SectionKind::Full, id, "i8259", inst, 1);
            e.bytes(&[inst as u8; 16]);
            encode_footer(&mut e, id);
        }
        let secs = split_with_vmdesc(&e.buf, 0, &desc).unwrap();
        assert_eq!(secs.iter().map(|s| s.instance_id).collect::<Vec<_>>(), [1, 1]);
        assert_eq!(secs[1].data.len(), 16);
        // A third section has no description left.
        encode_section_open(&mut e, SectionKind::Full, 6, "i8259", 0, 1);
        e.bytes(&[0; 16]);
        encode_footer(&mut e, 6);
        let err = split_with_vmdesc(&e.buf, 0, &desc).unwrap_err().to_string();
        assert!(err.contains("not described"), "{err}");
    }

    #[test]
    fn package_parse_backtracks_over_fake_footers() {
        use super::super::command::Command;
        // Device data with a fake footer for its own id followed by 0x00 (an
        // "EOF") and by a plausible FULL header: the sequential heuristic
        // stops early, the whole-blob parse does not.
        let mut e = Encoder::new();
        Command::PostcopyListen.encode(&mut e);
        let mut d = vec![1u8, 2, 0x7e, 0, 0, 0, 5, 0x00, 9, 9];
        d.extend_from_slice(&[
            0x7e, 0, 0, 0, 5, 0x04, 0, 0, 0, 9, 3, b'a', b'b', b'c', 0, 0, 0, 0, 0, 0, 0, 1, 7,
        ]);
        let s1 = e.buf.len();
        full(&mut e, 5, "dev", &d);
        let e1 = e.buf.len();
        let s2 = e.buf.len();
        full(&mut e, 6, "globalstate", &[0, 0, 0, 8, b'r']);
        let e2 = e.buf.len();
        Command::Ping(3).encode(&mut e);
        Command::PostcopyRun.encode(&mut e);
        let m = package_section_ends(&e.buf).expect("a full parse exists");
        assert_eq!(m[&s1], e1);
        assert_eq!(m[&s2], e2);
        // The sequential heuristic is fooled by the first fake footer.
        let (s, _) = split_one_by_footer(&e.buf, s1, 0).unwrap();
        assert_ne!(s.data.end + 5, e1);
        // No RUN at the end: no full parse.
        assert!(package_section_ends(&e.buf[..e.buf.len() - 5]).is_none());
    }

    #[test]
    fn footer_split() {
        let mut e = Encoder::new();
        let mut d = vec![0x7e, 0, 0, 0, 4, 0x99]; // a fake footer not followed by a plausible record
        d.extend_from_slice(&[1, 2, 3]);
        full(&mut e, 4, "dev", &d);
        Command::PostcopyRun.encode(&mut e);
        let (s, next) = split_one_by_footer(&e.buf, 0, 0).unwrap();
        assert_eq!(&e.buf[s.data.clone()], &d[..]);
        assert_eq!(e.buf[next], QEMU_VM_COMMAND);
        use super::super::command::Command;
    }

    /// The search of every position `find_vmdesc_tail` replaced: each
    /// 0x06 preceded by 0x00 whose length ends the buffer and whose JSON
    /// parses, the last such one.
    fn find_vmdesc_tail_scan(buf: &[u8]) -> Option<(usize, Value)> {
        if buf.last() != Some(&b'}') || buf.len() < 7 {
            return None;
        }
        (1..=buf.len() - 6).rev().find_map(|p| {
            if buf[p] != QEMU_VM_VMDESCRIPTION || buf[p - 1] != QEMU_VM_EOF {
                return None;
            }
            let l = u32::from_be_bytes(buf[p + 1..p + 5].try_into().unwrap()) as usize;
            (p + 5 + l == buf.len())
                .then(|| serde_json::from_slice::<Value>(&buf[p + 5..]).ok().map(|v| (p - 1, v)))
                .flatten()
        })
    }

    #[test]
    fn vmdesc_tail_found_from_the_last_nul() {
        // JSON lengths whose be32 has its last NUL at each place (0x100:
        // 00 00 01 00; 0x10000: 00 01 00 00; 0x1234: 00 00 12 34), after
        // device bytes with EOF-and-0x06 decoys.
        for len in [0x100usize, 0x200, 0x1234, 0x10000, 9] {
            let mut js = b"{\"a\": \"".to_vec();
            js.resize(len - 2, b'x');
            js.extend_from_slice(b"\"}");
            assert_eq!(js.len(), len);
            let mut e = Encoder::new();
            e.bytes(&[0x00, 0x06, 0, 0, 0, 2, b'{', b'}', 0x7e, 0x00, 0x06]);
            let eof = e.buf.len();
            encode_eof(&mut e);
            encode_vmdesc(&mut e, &js);
            let got = find_vmdesc_tail(&e.buf);
            assert_eq!(got.as_ref().map(|g| g.0), Some(eof), "length {len:#x}");
            assert_eq!(got, find_vmdesc_tail_scan(&e.buf));
            // Every cut and every byte changed to 0x00 or 0x06 near the
            // head agrees with the full scan.
            for cut in 0..eof + 8 {
                assert_eq!(find_vmdesc_tail(&e.buf[cut..]), find_vmdesc_tail_scan(&e.buf[cut..]));
            }
            for i in eof.saturating_sub(4)..eof + 8 {
                for v in [0x00, 0x06, 0x7d] {
                    let mut b = e.buf.clone();
                    b[i] = v;
                    assert_eq!(find_vmdesc_tail(&b), find_vmdesc_tail_scan(&b), "byte {i} = {v}");
                }
            }
        }
        // A NUL inside the JSON string: no vmdesc either way.
        let mut e = Encoder::new();
        encode_eof(&mut e);
        encode_vmdesc(&mut e, b"{\"a\": \"\x00\"}");
        assert!(find_vmdesc_tail(&e.buf).is_none());
        assert!(find_vmdesc_tail_scan(&e.buf).is_none());
    }
}
