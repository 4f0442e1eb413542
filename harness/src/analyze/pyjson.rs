//! JSON that keeps its key order, written the way Python's `json` module
//! writes it with `indent=4, separators=(',', ': ')` and `ensure_ascii` (what
//! QEMU's `scripts/analyze-migration.py` prints). The vmdesc is parsed into
//! it so `--desc` reprints it key for key; decoded device state is built in it.

use std::fmt::Write as _;

/// A JSON value with object keys in their original order.
#[derive(Clone, Debug, PartialEq)]
pub enum J {
    Null,
    Bool(bool),
    /// A number, kept as its source text (vmdesc numbers are integers).
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    pub fn str(s: impl Into<String>) -> J {
        J::Str(s.into())
    }
    /// The member `key` of an object (the last one, as Python's dict keeps).
    pub fn get(&self, key: &str) -> Option<&J> {
        match self {
            J::Obj(m) => m.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            J::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            J::Num(n) => n.parse().ok(),
            _ => None,
        }
    }
    pub fn as_arr(&self) -> Option<&[J]> {
        match self {
            J::Arr(a) => Some(a),
            _ => None,
        }
    }
    /// Insert like a Python dict: an existing key keeps its position.
    pub fn insert(m: &mut Vec<(String, J)>, key: String, v: J) {
        match m.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = v,
            None => m.push((key, v)),
        }
    }

    /// Python's `json.dumps(v, indent=4, separators=(',', ': '))`.
    pub fn to_python(&self) -> String {
        let mut s = String::new();
        self.write_py(&mut s, 0);
        s
    }

    fn write_py(&self, s: &mut String, depth: usize) {
        match self {
            J::Null => s.push_str("null"),
            J::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => s.push_str(n),
            J::Str(t) => py_str(s, t),
            J::Arr(a) if a.is_empty() => s.push_str("[]"),
            J::Obj(m) if m.is_empty() => s.push_str("{}"),
            J::Arr(a) => {
                s.push('[');
                for (i, v) in a.iter().enumerate() {
                    s.push_str(if i == 0 { "\n" } else { ",\n" });
                    indent(s, depth + 1);
                    v.write_py(s, depth + 1);
                }
                s.push('\n');
                indent(s, depth);
                s.push(']');
            }
            J::Obj(m) => {
                s.push('{');
                for (i, (k, v)) in m.iter().enumerate() {
                    s.push_str(if i == 0 { "\n" } else { ",\n" });
                    indent(s, depth + 1);
                    py_str(s, k);
                    s.push_str(": ");
                    v.write_py(s, depth + 1);
                }
                s.push('\n');
                indent(s, depth);
                s.push('}');
            }
        }
    }
}

impl serde::Serialize for J {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            J::Null => ser.serialize_unit(),
            J::Bool(b) => ser.serialize_bool(*b),
            J::Num(n) => match n.parse::<i64>() {
                Ok(i) => ser.serialize_i64(i),
                Err(_) => match n.parse::<u64>() {
                    Ok(u) => ser.serialize_u64(u),
                    Err(_) => ser.serialize_str(n),
                },
            },
            J::Str(t) => ser.serialize_str(t),
            J::Arr(a) => {
                let mut s = ser.serialize_seq(Some(a.len()))?;
                for v in a {
                    s.serialize_element(v)?;
                }
                s.end()
            }
            J::Obj(m) => {
                let mut s = ser.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    s.serialize_entry(k, v)?;
                }
                s.end()
            }
        }
    }
}

fn indent(s: &mut String, depth: usize) {
    for _ in 0..depth * 4 {
        s.push(' ');
    }
}

/// A string as Python's `json` writes it with `ensure_ascii=True`.
fn py_str(s: &mut String, t: &str) {
    s.push('"');
    for ch in t.chars() {
        match ch {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            '\u{8}' => s.push_str("\\b"),
            '\u{c}' => s.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    let _ = write!(s, "\\u{u:04x}");
                }
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

/// A JSON syntax error at a byte position of the text.
#[derive(Debug, thiserror::Error)]
#[error("invalid JSON at byte {pos} of the vmdesc: {what}")]
pub struct JsonError {
    pub pos: usize,
    pub what: &'static str,
}

/// Parse JSON text, keeping object keys in order.
pub fn parse(text: &[u8]) -> Result<J, JsonError> {
    let mut p = Parser { b: text, i: 0 };
    let v = p.value(0)?;
    p.ws();
    if p.i != p.b.len() {
        return Err(p.err("trailing bytes after the JSON value"));
    }
    Ok(v)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &'static str) -> JsonError {
        JsonError { pos: self.i, what }
    }
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\n' | b'\r' | b'\t') {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> Result<(), JsonError> {
        self.ws();
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err("unexpected character"))
        }
    }
    fn value(&mut self, depth: usize) -> Result<J, JsonError> {
        if depth > 200 {
            return Err(self.err("nesting too deep"));
        }
        self.ws();
        match self.b.get(self.i) {
            None => Err(self.err("unexpected end")),
            Some(b'{') => {
                self.i += 1;
                let mut m = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(J::Obj(m));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.eat(b':')?;
                    let v = self.value(depth + 1)?;
                    J::insert(&mut m, k, v);
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(J::Obj(m));
                        }
                        _ => return Err(self.err("expected ',' or '}'")),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(J::Arr(a));
                }
                loop {
                    a.push(self.value(depth + 1)?);
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(J::Arr(a));
                        }
                        _ => return Err(self.err("expected ',' or ']'")),
                    }
                }
            }
            Some(b'"') => Ok(J::Str(self.string()?)),
            Some(b't') if self.b[self.i..].starts_with(b"true") => {
                self.i += 4;
                Ok(J::Bool(true))
            }
            Some(b'f') if self.b[self.i..].starts_with(b"false") => {
                self.i += 5;
                Ok(J::Bool(false))
            }
            Some(b'n') if self.b[self.i..].starts_with(b"null") => {
                self.i += 4;
                Ok(J::Null)
            }
            Some(c) if *c == b'-' || c.is_ascii_digit() => {
                let s = self.i;
                while self.i < self.b.len()
                    && matches!(self.b[self.i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.b[s..self.i]).expect("ASCII");
                Ok(J::Num(t.to_string()))
            }
            Some(_) => Err(self.err("unexpected character")),
        }
    }
    fn string(&mut self) -> Result<String, JsonError> {
        if self.b.get(self.i) != Some(&b'"') {
            return Err(self.err("expected a string"));
        }
        self.i += 1;
        let mut out: Vec<u16> = Vec::new();
        let mut s = String::new();
        loop {
            let Some(&c) = self.b.get(self.i) else {
                return Err(self.err("unterminated string"));
            };
            match c {
                b'"' => {
                    self.i += 1;
                    flush_utf16(&mut out, &mut s);
                    return Ok(s);
                }
                b'\\' => {
                    let e = *self.b.get(self.i + 1).ok_or_else(|| self.err("bad escape"))?;
                    self.i += 2;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let h = self
                                .b
                                .get(self.i..self.i + 4)
                                .ok_or_else(|| self.err("bad \\u"))?;
                            let h = std::str::from_utf8(h).map_err(|_| self.err("bad \\u"))?;
                            let u = u16::from_str_radix(h, 16).map_err(|_| self.err("bad \\u"))?;
                            self.i += 4;
                            out.push(u);
                            continue;
                        }
                        _ => return Err(self.err("bad escape")),
                    };
                    flush_utf16(&mut out, &mut s);
                    s.push(ch);
                }
                _ => {
                    flush_utf16(&mut out, &mut s);
                    let len = utf8_len(c);
                    let chunk = self
                        .b
                        .get(self.i..self.i + len)
                        .and_then(|x| std::str::from_utf8(x).ok())
                        .ok_or_else(|| self.err("invalid UTF-8"))?;
                    s.push_str(chunk);
                    self.i += len;
                }
            }
        }
    }
}

fn flush_utf16(out: &mut Vec<u16>, s: &mut String) {
    if !out.is_empty() {
        s.push_str(&String::from_utf16_lossy(out));
        out.clear();
    }
}

fn utf8_len(c: u8) -> usize {
    match c {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_pythons_layout() {
        let v = parse(br#"{"b": [1, {"x": "\u00e9\n"}], "a": {}, "c": [], "d": true}"#).unwrap();
        let want = "{\n    \"b\": [\n        1,\n        {\n            \"x\": \"\\u00e9\\n\"\n        }\n    ],\n    \"a\": {},\n    \"c\": [],\n    \"d\": true\n}";
        assert_eq!(v.to_python(), want);
        assert!(parse(b"{\"a\": }").is_err());
        assert!(parse(b"[1] x").is_err());
    }
}
