//! QMP errors and command-argument access: members taken one by one, with
//! QEMU's error texts naming the full member path (`a[0].b`).

use serde_json::{json, Map, Value};

/// A QMP error reply: `{"error": {"class": class, "desc": desc}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QmpErr {
    pub class: &'static str,
    pub desc: String,
}

impl QmpErr {
    pub fn generic(desc: impl Into<String>) -> QmpErr {
        QmpErr { class: "GenericError", desc: desc.into() }
    }
    pub fn not_found(desc: impl Into<String>) -> QmpErr {
        QmpErr { class: "CommandNotFound", desc: desc.into() }
    }
    pub(super) fn to_json(&self) -> Value {
        json!({ "class": self.class, "desc": self.desc })
    }
}

impl std::fmt::Display for QmpErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.desc)
    }
}

pub type QResult<T> = Result<T, QmpErr>;

pub(super) fn invalid_type(name: &str, expected: &str) -> QmpErr {
    QmpErr::generic(format!("Invalid parameter type for '{name}', expected: {expected}"))
}

pub(super) fn not_accepted(name: &str, value: &str) -> QmpErr {
    QmpErr::generic(format!("Parameter '{name}' does not accept value '{value}'"))
}

/// Command arguments, consumed member by member; [`Args::finish`] rejects
/// leftovers. Error texts name the full member path (`a[0].b`) like QEMU.
pub struct Args {
    pub(super) map: Map<String, Value>,
    path: String,
}

impl Args {
    pub(super) fn new(map: Map<String, Value>) -> Args {
        Args { map, path: String::new() }
    }

    pub(super) fn full(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(super) fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key)
    }

    pub(super) fn missing(&self, key: &str) -> QmpErr {
        QmpErr::generic(format!("Parameter '{}' is missing", self.full(key)))
    }

    pub(super) fn opt_str(&mut self, key: &str) -> QResult<Option<String>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid_type(&self.full(key), "string")),
        }
    }

    pub(super) fn str(&mut self, key: &str) -> QResult<String> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    pub(super) fn opt_bool(&mut self, key: &str) -> QResult<Option<bool>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(invalid_type(&self.full(key), "boolean")),
        }
    }

    pub(super) fn bool(&mut self, key: &str) -> QResult<bool> {
        self.opt_bool(key)?.ok_or_else(|| self.missing(key))
    }

    pub(super) fn opt_u64(&mut self, key: &str) -> QResult<Option<u64>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(x) => Ok(Some(x)),
                None if n.is_i64() => {
                    Err(QmpErr::generic(format!("Parameter '{}' expects uint64", self.full(key))))
                }
                None => Err(invalid_type(&self.full(key), "integer")),
            },
            Some(_) => Err(invalid_type(&self.full(key), "integer")),
        }
    }

    pub(super) fn opt_array(&mut self, key: &str) -> QResult<Option<Vec<Value>>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(invalid_type(&self.full(key), "array")),
        }
    }

    pub(super) fn array(&mut self, key: &str) -> QResult<Vec<Value>> {
        self.opt_array(key)?.ok_or_else(|| self.missing(key))
    }

    /// A nested object member.
    pub(super) fn object(&mut self, key: &str) -> QResult<Args> {
        match self.take(key) {
            None => Err(self.missing(key)),
            Some(Value::Object(m)) => Ok(Args { map: m, path: self.full(key) }),
            Some(_) => Err(invalid_type(&self.full(key), "object")),
        }
    }

    /// A string member restricted to `allowed` values.
    pub(super) fn enum_str(&mut self, key: &str, allowed: &[&str]) -> QResult<String> {
        let s = self.str(key)?;
        if allowed.contains(&s.as_str()) {
            Ok(s)
        } else {
            // QEMU's enum visitor names the member alone, not its path.
            Err(not_accepted(key, &s))
        }
    }

    /// Members `keys` are accepted and ignored.
    pub(super) fn ignore(&mut self, keys: &[&str]) {
        for k in keys {
            self.map.remove(*k);
        }
    }

    pub(super) fn finish(self) -> QResult<()> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(k) => Err(QmpErr::generic(format!("Parameter '{}' is unexpected", self.full(k)))),
        }
    }
}

/// Element `i` of list member `list` (at `parent`'s path) as a struct.
pub(super) fn list_elem(parent: &Args, list: &str, i: usize, v: Value) -> QResult<Args> {
    let path = format!("{}[{i}]", parent.full(list));
    match v {
        Value::Object(m) => Ok(Args { map: m, path }),
        _ => Err(invalid_type(&path, "object")),
    }
}
