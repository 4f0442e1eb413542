//! The QAPI-style types of rust-dest's commands and events, the generic
//! argument check every command goes through before its handler, and
//! `query-qmp-schema` in QEMU's introspection format (`SchemaInfo` list, see
//! QEMU's `qapi/introspect.json`): built from the same command table that
//! dispatches and answers `query-commands`, so the three cannot disagree.
//!
//! As in QEMU's generated introspection (type names masked), every
//! non-builtin type is named by a number in order of first use; integer
//! types all appear as the builtin `int`; arrays are named `[T]`.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Map, Value};

use super::args::{invalid_type, not_accepted, QResult, QmpErr};

/// A QAPI type.
#[derive(Clone, Copy, Debug)]
pub enum Ty {
    Str,
    /// `int`/`int64`.
    Int,
    /// `uint64`/`size`: QEMU's input visitor takes any JSON integer and
    /// wraps negatives (`-1` is 2^64-1).
    U64,
    /// `uint32`, `uint8`: as `U64`, then range-checked.
    U32,
    U8,
    Bool,
    Number,
    Null,
    Any,
    Enum(&'static EnumTy),
    Obj(&'static ObjTy),
    Array(&'static Ty),
    /// An alternate of branches told apart by JSON type (`StrOrNull`).
    Alt(&'static [Ty]),
}

#[derive(Debug)]
pub struct EnumTy {
    pub values: &'static [&'static str],
}

#[derive(Debug)]
pub struct ObjTy {
    pub members: &'static [Member],
}

#[derive(Debug)]
pub struct Member {
    pub name: &'static str,
    pub ty: Ty,
    pub optional: bool,
}

/// A required member.
pub const fn req(name: &'static str, ty: Ty) -> Member {
    Member { name, ty, optional: false }
}

/// An optional member.
pub const fn opt(name: &'static str, ty: Ty) -> Member {
    Member { name, ty, optional: true }
}

/// The empty object (no arguments, `{}` returned).
pub static EMPTY: ObjTy = ObjTy { members: &[] };

/// One event this server emits: name and data.
pub struct EventDef {
    pub name: &'static str,
    pub data: &'static ObjTy,
}

/// The name QEMU's visitor uses for a type in "expected: X" errors.
fn expected(ty: &Ty) -> &'static str {
    match ty {
        Ty::Str | Ty::Enum(_) => "string",
        Ty::Int | Ty::U64 | Ty::U32 | Ty::U8 => "integer",
        Ty::Bool => "boolean",
        Ty::Number => "number",
        Ty::Null => "null",
        Ty::Obj(_) => "object",
        Ty::Array(_) => "array",
        Ty::Any | Ty::Alt(_) => "value",
    }
}

/// Check `v` (at member path `path`) against `ty`, with QEMU's texts.
pub fn check_value(v: &Value, ty: &Ty, path: &str) -> QResult<()> {
    let ok = match (ty, v) {
        (Ty::Any, _) => true,
        (Ty::Str, Value::String(_)) | (Ty::Bool, Value::Bool(_)) | (Ty::Null, Value::Null) => true,
        (Ty::Int, Value::Number(n)) => n.is_i64() || n.is_u64(),
        (Ty::U64 | Ty::U32 | Ty::U8, v) => {
            let (max, what) = match ty {
                Ty::U8 => (u8::MAX as u64, "uint8_t"),
                Ty::U32 => (u32::MAX as u64, "uint32_t"),
                _ => (u64::MAX, "uint64"),
            };
            return match as_wrapped_u64(v) {
                Some(x) if x <= max => Ok(()),
                Some(_) => Err(QmpErr::generic(format!("Parameter '{path}' expects {what}"))),
                None => Err(QmpErr::generic(format!("Parameter '{path}' expects uint64"))),
            };
        }
        (Ty::Number, Value::Number(_)) => true,
        (Ty::Enum(e), Value::String(s)) => {
            if !e.values.contains(&s.as_str()) {
                // QEMU names the member alone here, not its path.
                let leaf = path.rsplit('.').next().unwrap_or(path);
                return Err(not_accepted(leaf, s));
            }
            true
        }
        (Ty::Obj(o), Value::Object(m)) => return check_object(m, o, path),
        (Ty::Array(t), Value::Array(a)) => {
            for (i, x) in a.iter().enumerate() {
                check_value(x, t, &format!("{path}[{i}]"))?;
            }
            true
        }
        (Ty::Alt(branches), v) => {
            for b in branches.iter() {
                if check_value(v, b, path).is_ok() {
                    return Ok(());
                }
            }
            return Err(QmpErr::generic(format!(
                "Invalid parameter type for '{path}', expected: {}",
                alt_expected(branches)
            )));
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(invalid_type(path, expected(ty)))
    }
}

/// QEMU names the alternate type in its error: rust-dest has one, `StrOrNull`.
fn alt_expected(_branches: &[Ty]) -> String {
    "StrOrNull".into()
}

/// A JSON integer as QEMU's `uint64` input visitor reads it (negatives
/// wrap); `None` for anything else.
pub fn as_wrapped_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| n.as_i64().map(|i| i as u64)),
        _ => None,
    }
}

/// Check an object's members in declaration order, then leftovers (QEMU's
/// `visit_check_struct`).
pub fn check_object(m: &Map<String, Value>, o: &ObjTy, path: &str) -> QResult<()> {
    let full = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    for mem in o.members {
        match m.get(mem.name) {
            None if mem.optional => {}
            None => {
                return Err(QmpErr::generic(format!("Parameter '{}' is missing", full(mem.name))))
            }
            Some(v) => check_value(v, &mem.ty, &full(mem.name))?,
        }
    }
    match m.keys().find(|k| !o.members.iter().any(|mem| mem.name == k.as_str())) {
        Some(k) => Err(QmpErr::generic(format!("Parameter '{}' is unexpected", full(k)))),
        None => Ok(()),
    }
}

/// Makes one SchemaInfo entry, given the generator and the type's name.
type Entry = Box<dyn FnOnce(&mut Gen, &str) -> Value>;

/// Builds the SchemaInfo list, naming types as they are first used.
#[derive(Default)]
struct Gen {
    out: Vec<Value>,
    /// Type identity (address) → its masked name.
    names: HashMap<usize, String>,
    /// Array types already listed.
    arrays: HashSet<String>,
}

impl Gen {
    fn name(&mut self, ty: &Ty) -> String {
        let (key, entry): (usize, Entry) = match *ty {
            Ty::Str => return "str".into(),
            Ty::Int | Ty::U64 | Ty::U32 | Ty::U8 => return "int".into(),
            Ty::Bool => return "bool".into(),
            Ty::Number => return "number".into(),
            Ty::Null => return "null".into(),
            Ty::Any => return "any".into(),
            Ty::Enum(e) => (
                e as *const _ as usize,
                Box::new(move |_, n| {
                    json!({ "name": n, "meta-type": "enum", "values": e.values,
                        "members": e.values.iter().map(|v| json!({ "name": v })).collect::<Vec<_>>() })
                }),
            ),
            Ty::Obj(o) => (o as *const _ as usize, Box::new(move |g, n| g.object(n, o))),
            Ty::Array(t) => {
                let el = self.name(t);
                let n = format!("[{el}]");
                if self.arrays.insert(n.clone()) {
                    self.out.push(json!({ "name": n, "meta-type": "array", "element-type": el }));
                }
                return n;
            }
            Ty::Alt(bs) => (
                bs.as_ptr() as usize,
                Box::new(move |g, n| {
                    let members: Vec<Value> =
                        bs.iter().map(|b| json!({ "type": g.name(b) })).collect();
                    json!({ "name": n, "meta-type": "alternate", "members": members })
                }),
            ),
        };
        if let Some(n) = self.names.get(&key) {
            return n.clone();
        }
        let n = self.names.len().to_string();
        self.names.insert(key, n.clone());
        let at = self.out.len();
        self.out.push(Value::Null);
        let e = entry(self, &n);
        self.out[at] = e;
        n
    }

    fn object(&mut self, n: &str, o: &ObjTy) -> Value {
        let members: Vec<Value> = o
            .members
            .iter()
            .map(|m| {
                let mut e = json!({ "name": m.name, "type": self.name(&m.ty) });
                if m.optional {
                    e["default"] = Value::Null;
                }
                e
            })
            .collect();
        json!({ "name": n, "meta-type": "object", "members": members })
    }
}

/// `query-qmp-schema`: commands, events, then the types they use, then
/// the builtins.
pub fn introspect(commands: &[super::CommandDef], events: &[EventDef]) -> Value {
    let mut g = Gen::default();
    // The empty object first, as "0", like QEMU's.
    g.name(&Ty::Obj(&EMPTY));
    let mut entries = Vec::new();
    for c in commands {
        let mut e = json!({ "name": c.name, "meta-type": "command",
                            "arg-type": g.name(&Ty::Obj(c.args)), "ret-type": g.name(&c.ret) });
        if c.oob {
            e["allow-oob"] = json!(true);
        }
        entries.push(e);
    }
    for ev in events {
        entries.push(
            json!({ "name": ev.name, "meta-type": "event", "arg-type": g.name(&Ty::Obj(ev.data)) }),
        );
    }
    entries.append(&mut g.out);
    for (n, j) in [
        ("str", "string"),
        ("any", "value"),
        ("bool", "boolean"),
        ("int", "int"),
        ("null", "null"),
        ("number", "number"),
    ] {
        entries.push(json!({ "name": n, "meta-type": "builtin", "json-type": j }));
    }
    Value::Array(entries)
}
