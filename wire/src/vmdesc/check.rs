//! Device-state checks a destination can do from the source's vmdesc
//! without emulating devices (docs/differential-fuzz.md, "What rust-dest
//! checks from the vmdesc").
//!
//! The vmdesc (`migration/vmstate.c`, `vmstate_save_state_v()` and
//! `vmsd_desc_field_start()`/`_end()`) describes every field as written:
//! its type name, its byte `size` (per element; `array_len` for arrays whose
//! elements share one description, one entry per element with `index`
//! otherwise), a nested description for `struct` fields (under `"struct"`)
//! and for `tmp`/`vstruct` fields (inline `"fields"`), and a `subsections`
//! list holding only the subsections that were sent. QEMU's destination
//! reads the fields with its own device models; what it checks that does
//! not depend on the destination device's state:
//!
//! - a subsection starts with 0x05, the counted name and a be32 version
//!   (`vmstate_subsection_load()`): a subsection the vmdesc lists must be
//!   there with that name, and its version must be the described one (the
//!   version the source's code wrote; any other one is "too new", "too old"
//!   or another layout for QEMU, which then misses the section footer);
//! - the section header's version is the described version
//!   (`vmstate_load_state()` is called with the header's version);
//! - `pci irq state` (`hw/pci/pci.c`): four be32 values, each 0 or 1;
//! - `int32 le` (`migration/vmstate-types.c`): a value below 0 is refused
//!   whatever the destination holds;
//! - `nullptr` (`migration/vmstate-types.c`): the byte 0x30.
//!
//! Not checkable: `int32 equal`/`uint32 equal`/`uint8 equal`/… and the upper
//! bound of `int32 le` compare with the destination device's own value, and
//! PCI config bytes with its masks; a changed count or length field changes
//! how many bytes QEMU reads, which the vmdesc (sizes as written) cannot
//! show. A description whose sizes do not add up (a damaged vmdesc, which
//! QEMU never reads) disables the checks for its section instead of failing
//! it.

use serde_json::Value;

use super::SplitSection;
use crate::consts::QEMU_VM_SUBSECTION;

/// What a device section's bytes break.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("expected subsection {name:?} (marker 0x05), found byte {found:#04x}")]
    SubsectionMarker { name: String, found: u8 },
    #[error("expected subsection {expected:?}, found name {found:?}")]
    SubsectionName { expected: String, found: String },
    #[error("subsection {name:?} has version {found}, the vmdesc describes version {described}")]
    SubsectionVersion { name: String, found: u32, described: u32 },
    #[error("the section header says version {header}, the vmdesc describes version {described}")]
    SectionVersion { header: u32, described: u64 },
    #[error("pci irq state {value}: must be 0 or 1")]
    PciIrqState { value: u32 },
    #[error("int32 le value {value}: must not be negative")]
    NegativeLe { value: i32 },
    #[error("nullptr field: expected the marker 0x30, found {found:#04x}")]
    NullptrMarker { found: u8 },
}

/// A [`Violation`] in a device section, with the section and field it is in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("device section {section:?} (id {section_id}) at byte offset {section_at}: field {field} at byte offset {at}: {violation}")]
pub struct CheckError {
    pub section: String,
    pub section_id: u32,
    pub section_at: u64,
    /// Path of the field (`vmsd/field/…`, subsections by their name).
    pub field: String,
    pub at: u64,
    pub violation: Violation,
}

/// The result of checking one section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checked {
    Ok,
    /// The description's sizes do not add up (why): nothing was checked.
    Undescribed(String),
    Failed(Box<CheckError>),
}

/// Check the device section `s` of `buf` (`base` = `buf[0]`'s stream
/// offset) against its vmdesc description, if it has one.
pub fn check_section(buf: &[u8], s: &SplitSection, base: u64) -> Checked {
    let Some(desc) = &s.vmdesc else { return Checked::Ok };
    let data = &buf[s.data.clone()];
    let mut w = Walk { data, base: base + s.data.start as u64, found: Vec::new() };
    let name = desc.get("vmsd_name").and_then(Value::as_str).unwrap_or(&s.idstr).to_string();
    match w.desc(desc, 0, data.len(), &name) {
        Ok(n) if n == data.len() => {}
        Ok(n) => return Checked::Undescribed(format!("described {n} of {} bytes", data.len())),
        Err(why) => return Checked::Undescribed(why),
    }
    let header_pos = base + s.header_pos as u64;
    let mut found = w.found;
    if let Some(v) = desc.get("version").and_then(Value::as_u64) {
        if v != u64::from(s.version_id) && desc.get("vmsd_name").is_some() {
            found.insert(
                0,
                (
                    name.clone(),
                    header_pos,
                    Violation::SectionVersion { header: s.version_id, described: v },
                ),
            );
        }
    }
    match found.into_iter().next() {
        None => Checked::Ok,
        Some((field, at, violation)) => Checked::Failed(Box::new(CheckError {
            section: s.idstr.clone(),
            section_id: s.section_id,
            section_at: header_pos,
            field,
            at,
            violation,
        })),
    }
}

struct Walk<'a> {
    data: &'a [u8],
    base: u64,
    found: Vec<(String, u64, Violation)>,
}

impl Walk<'_> {
    fn flag(&mut self, path: &str, pos: usize, v: Violation) {
        self.found.push((path.to_string(), self.base + pos as u64, v));
    }

    /// Walk a description (fields, then subsections) from `pos`, not past
    /// `end`; the bytes it covers, or why the description does not fit.
    fn desc(&mut self, d: &Value, pos: usize, end: usize, path: &str) -> Result<usize, String> {
        let mut p = pos;
        for f in d.get("fields").and_then(Value::as_array).into_iter().flatten() {
            let fname = f.get("name").and_then(Value::as_str).unwrap_or("?");
            let fpath = format!("{path}/{fname}");
            let size =
                f.get("size").and_then(Value::as_u64).ok_or_else(|| format!("{fpath}: no size"))?
                    as usize;
            let n = f.get("array_len").and_then(Value::as_u64).unwrap_or(1) as usize;
            let total = size.checked_mul(n).filter(|t| p.checked_add(*t).is_some_and(|e| e <= end));
            let total =
                total.ok_or_else(|| format!("{fpath}: {n} x {size} bytes run past {end}"))?;
            let nested = f.get("struct").or_else(|| f.get("fields").map(|_| f));
            // Zero-sized elements hold nothing to check (and a damaged
            // `array_len` must not make this loop long).
            for i in 0..if size == 0 { 0 } else { n } {
                let at = p + i * size;
                match nested {
                    Some(sub) => {
                        let got = self.desc(sub, at, at + size, &fpath)?;
                        if got != size {
                            return Err(format!("{fpath}: described {got} of {size} bytes"));
                        }
                    }
                    None => self.value(f, at, size, &fpath),
                }
            }
            p += total;
        }
        for sub in d.get("subsections").and_then(Value::as_array).into_iter().flatten() {
            let name = sub
                .get("vmsd_name")
                .and_then(Value::as_str)
                .ok_or("subsection without vmsd_name")?;
            let version = sub.get("version").and_then(Value::as_u64);
            let spath = format!("{path}/{name}");
            let hdr = 1 + 1 + name.len() + 4;
            if p + hdr > end {
                return Err(format!("{spath}: subsection header runs past {end}"));
            }
            let b = &self.data[p..p + hdr];
            if b[0] != QEMU_VM_SUBSECTION {
                self.flag(
                    &spath,
                    p,
                    Violation::SubsectionMarker { name: name.into(), found: b[0] },
                );
            } else if b[1] as usize != name.len() || &b[2..2 + name.len()] != name.as_bytes() {
                let n = (b[1] as usize).min(end - p - 2);
                let found = String::from_utf8_lossy(&self.data[p + 2..p + 2 + n]).into_owned();
                self.flag(&spath, p, Violation::SubsectionName { expected: name.into(), found });
            } else {
                let v = u32::from_be_bytes(b[hdr - 4..].try_into().expect("4 bytes"));
                if version.is_some_and(|d| d != u64::from(v)) {
                    let described = version.unwrap_or_default() as u32;
                    self.flag(
                        &spath,
                        p + hdr - 4,
                        Violation::SubsectionVersion { name: name.into(), found: v, described },
                    );
                }
            }
            p += hdr;
            p += self.desc(sub, p, end, &spath)?;
        }
        Ok(p - pos)
    }

    /// Value checks by type name for one element of `size` bytes at `at`.
    fn value(&mut self, f: &Value, at: usize, size: usize, path: &str) {
        let b = &self.data[at..at + size];
        match f.get("type").and_then(Value::as_str) {
            Some("pci irq state") if size.is_multiple_of(4) => {
                for (i, w) in b.chunks_exact(4).enumerate() {
                    let value = u32::from_be_bytes(w.try_into().expect("4 bytes"));
                    if value > 1 {
                        self.flag(path, at + 4 * i, Violation::PciIrqState { value });
                        break;
                    }
                }
            }
            Some("int32 le") if size == 4 => {
                let value = i32::from_be_bytes(b.try_into().expect("4 bytes"));
                if value < 0 {
                    self.flag(path, at, Violation::NegativeLe { value });
                }
            }
            Some("nullptr") if size == 1 && b[0] != 0x30 => {
                self.flag(path, at, Violation::NullptrMarker { found: b[0] })
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
