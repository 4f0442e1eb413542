//! Device state decoded field by field from its vmdesc description, with the
//! value rendering of QEMU's `scripts/analyze-migration.py` (integers as
//! zero-padded hex, negative ones followed by their decimal value, buffers
//! as space-separated hex bytes, booleans as JSON booleans, arrays unfolded
//! from `array_len`, subsections after the fields). The layout rules come
//! from `migration/vmstate.c` (`vmstate_save_state()`, subsections written
//! as `0x05`, counted name, be32 version) and `migration/savevm.c`
//! (`vmstate_save()` writing the vmdesc).

use wire::consts::QEMU_VM_SUBSECTION;
use wire::{Cursor, DecodeError};

use super::pyjson::J;

/// How a field type is read and shown.
enum Reader {
    Bool,
    Int,
    UInt,
    Struct,
    Capability,
    Null,
    Generic,
}

fn reader(ty: &str) -> Reader {
    match ty {
        "bool" => Reader::Bool,
        "int8" | "int16" | "int32" | "int32 equal" | "int32 le" | "int64" | "int64 equal"
        | "uint8 equal" | "uint16 equal" => Reader::Int,
        "uint8" | "uint16" | "uint32" | "uint32 equal" | "uint64" => Reader::UInt,
        "struct" => Reader::Struct,
        "capability" => Reader::Capability,
        "nullptr" => Reader::Null,
        _ => Reader::Generic,
    }
}

fn hex_bytes(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 3);
    for (i, x) in b.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// An integer field as the script shows it: `0x` and the big-endian bytes
/// in hex (zero-padded to the field size); a negative signed value is
/// followed by ` (<decimal>)`.
fn int_repr(b: &[u8], signed: bool) -> String {
    let mut s = String::from("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    if signed && b.first().is_some_and(|&x| x & 0x80 != 0) && b.len() <= 16 {
        let mut v: i128 = -1;
        for &x in b {
            v = (v << 8) | x as i128;
        }
        s.push_str(&format!(" ({v})"));
    }
    s
}

/// Decode one device section's data (`c` at its first byte) with its
/// vmdesc `device` entry; returns the fields as the script's dictionary.
pub fn decode_device(c: &mut Cursor, device: &J) -> Result<J, DecodeError> {
    read_struct(c, device, 0)
}

fn field_size(f: &J, at: u64) -> Result<usize, DecodeError> {
    f.get("size").and_then(J::as_u64).map(|s| s as usize).ok_or_else(|| {
        DecodeError::invalid(at, format!("vmdesc field {:?} has no size", field_name(f)))
    })
}

fn field_name(f: &J) -> String {
    f.get("name").and_then(J::as_str).unwrap_or("?").to_string()
}

fn read_struct(c: &mut Cursor, desc: &J, depth: usize) -> Result<J, DecodeError> {
    let at = c.offset();
    if depth > 64 {
        return Err(DecodeError::invalid(at, "vmdesc structs nested too deep"));
    }
    let fields = desc
        .get("fields")
        .and_then(J::as_arr)
        .ok_or_else(|| DecodeError::invalid(at, "vmdesc struct has no \"fields\""))?;
    // Values by field name; one occurrence is shown bare, more as a list.
    let mut data: Vec<(String, Vec<J>)> = Vec::new();
    for f in fields {
        let n = f.get("array_len").and_then(J::as_u64).unwrap_or(1);
        let name = field_name(f);
        for _ in 0..n {
            let v = read_field(c, f, depth)?;
            match data.iter_mut().find(|(k, _)| *k == name) {
                Some((_, vs)) => vs.push(v),
                None => data.push((name.clone(), vec![v])),
            }
        }
    }
    let mut out: Vec<(String, J)> = data
        .into_iter()
        .map(|(k, mut vs)| (k, if vs.len() == 1 { vs.pop().expect("one") } else { J::Arr(vs) }))
        .collect();
    if let Some(subs) = desc.get("subsections").and_then(J::as_arr) {
        for sub in subs {
            let at = c.offset();
            let want = sub.get("vmsd_name").and_then(J::as_str).unwrap_or("?");
            let t = c.u8(at)?;
            if t != QEMU_VM_SUBSECTION {
                return Err(DecodeError::invalid(
                    at,
                    format!("expected subsection {want:?} (0x05), found {t:#04x}"),
                ));
            }
            let name = c.counted_str(at, "subsection name")?.to_string();
            let _version = c.be32(at)?;
            let v = read_struct(c, sub, depth + 1)?;
            J::insert(&mut out, name, v);
        }
    }
    Ok(J::Obj(out))
}

fn read_field(c: &mut Cursor, f: &J, depth: usize) -> Result<J, DecodeError> {
    let at = c.offset();
    let ty = f.get("type").and_then(J::as_str).unwrap_or("unknown");
    let what = |e: DecodeError| e.context(&format!("field {:?} ({ty})", field_name(f)));
    Ok(match reader(ty) {
        Reader::Struct => {
            let s = f.get("struct").ok_or_else(|| {
                DecodeError::invalid(
                    at,
                    format!("struct field {:?} without \"struct\"", field_name(f)),
                )
            })?;
            read_struct(c, s, depth + 1)?
        }
        Reader::Capability => {
            let s = c.counted_str(at, "capability").map_err(what)?;
            J::str(s)
        }
        r => {
            let size = field_size(f, at)?;
            let b = c.bytes(size, at).map_err(what)?;
            match r {
                Reader::Bool => J::Bool(b.first().is_some_and(|&x| x != 0)),
                Reader::Int if size > 0 => J::Str(int_repr(b, true)),
                Reader::UInt if size > 0 => J::Str(int_repr(b, false)),
                Reader::Null => {
                    if b != b"0" {
                        return Err(DecodeError::invalid(
                            at,
                            format!("nullptr field {:?}: expected the marker '0'", field_name(f)),
                        ));
                    }
                    J::str("nullptr")
                }
                _ => J::Str(hex_bytes(b)),
            }
        }
    })
}

/// Hex bytes as the script shows a buffer (for device data without a
/// description).
pub fn hex(b: &[u8]) -> String {
    hex_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::super::pyjson::parse;
    use super::*;

    #[test]
    fn fields_arrays_and_subsections() {
        let desc = parse(
            br#"{"name":"d","fields":[{"name":"a","type":"int16","size":2},
            {"name":"r","type":"uint8","size":1,"array_len":2},
            {"name":"b","type":"bool","size":1},{"name":"x","type":"buffer","size":3}],
            "subsections":[{"vmsd_name":"d/s","fields":[{"name":"u","type":"uint32","size":4}]}]}"#,
        )
        .unwrap();
        let mut data = vec![0xff, 0xfe, 1, 2, 1, 9, 8, 7, 5, 3];
        data.extend_from_slice(b"d/s");
        data.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 42]);
        let mut c = Cursor::new(&data, 100);
        let v = decode_device(&mut c, &desc).unwrap();
        let want = r#"{"a":"0xfffe (-2)","r":["0x01","0x02"],"b":true,"x":"09 08 07","d/s":{"u":"0x0000002a"}}"#;
        assert_eq!(serde_json::to_string(&v).unwrap(), want);
        assert_eq!(c.remaining(), 0);
        // Cut inside the subsection: an error naming where.
        let mut c = Cursor::new(&data[..12], 100);
        let e = decode_device(&mut c, &desc).unwrap_err();
        assert!(e.to_string().contains("108"), "{e}");
    }
}
