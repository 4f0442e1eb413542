//! QEMU's option-argument syntaxes: `key=value,...` property lists (QemuOpts
//! and keyval, `,,` escapes a comma, an optional implied first key) and the
//! JSON object syntax that `-object`, `-device`, `-blockdev` and `-netdev`
//! also accept (QEMU's `qobject_input_visitor_new_str()`, `util/keyval.c`).

use serde_json::{Map, Value};

use super::CliError;

/// Split a QemuOpts-style string on `,`, where `,,` is a literal comma.
pub fn split_opts(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Split a QEMU property list `a,b=c,d=e` into (first bare value, pairs).
/// `,,` escapes a comma; a later bare `flag` means `flag=on`.
pub fn parse_props(s: &str) -> (Option<String>, Vec<(String, String)>) {
    let items = split_opts(s);
    let mut first = None;
    let mut pairs = Vec::new();
    for (i, it) in items.into_iter().enumerate() {
        match it.split_once('=') {
            Some((k, v)) => pairs.push((k.to_string(), v.to_string())),
            None if i == 0 => first = Some(it),
            None => pairs.push((it, "on".into())),
        }
    }
    (first, pairs)
}

/// QEMU's boolean words.
pub fn on_off(v: &str) -> Option<bool> {
    match v {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

/// One option's argument as properties, from either syntax. Values from the
/// `key=value` syntax are JSON strings; JSON keeps its types.
#[derive(Clone, Debug, Default)]
pub struct Props {
    /// Where the argument came from: `-object ARG`, for error messages.
    pub opt: String,
    pub map: Map<String, Value>,
    /// The argument was JSON (types are checked strictly, as QEMU does).
    pub json: bool,
}

impl Props {
    /// Parse `arg` of option `-name`: JSON if it starts with `{`, otherwise
    /// `key=value,...` where a leading bare word is `implied`'s value.
    pub fn parse(name: &str, arg: &str, implied: Option<&str>) -> Result<Props, CliError> {
        let opt = format!("-{name} {arg}");
        if arg.trim_start().starts_with('{') {
            return match serde_json::from_str::<Value>(arg) {
                Ok(Value::Object(map)) => Ok(Props { opt, map, json: true }),
                Ok(_) => Err(CliError::arg(&opt, "JSON object expected")),
                Err(e) => {
                    let msg = e.to_string();
                    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                    Err(CliError::arg(&opt, format!("JSON parse error, {msg}")))
                }
            };
        }
        let (first, pairs) = parse_props(arg);
        let mut map = Map::new();
        if let Some(f) = first {
            match implied {
                Some(k) => {
                    map.insert(k.to_string(), Value::String(f));
                }
                None if f.is_empty() => {}
                None => {
                    return Err(CliError::arg(&opt, format!("Invalid parameter '{f}'")));
                }
            }
        }
        for (k, v) in pairs {
            map.insert(k, Value::String(v));
        }
        Ok(Props { opt, map, json: false })
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// An error about this option's argument.
    pub fn err(&self, msg: impl Into<String>) -> CliError {
        CliError::arg(&self.opt, msg)
    }

    /// A string property (JSON: must be a string).
    pub fn str(&self, key: &str) -> Result<Option<String>, CliError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => {
                Err(self.err(format!("Invalid parameter type for '{key}', expected: string")))
            }
        }
    }

    pub fn req_str(&self, key: &str) -> Result<String, CliError> {
        self.str(key)?.ok_or_else(|| self.err(format!("Parameter '{key}' is missing")))
    }

    /// A boolean property (`on`/`off` words, or a JSON boolean).
    pub fn bool(&self, key: &str) -> Result<Option<bool>, CliError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) if self.json => Ok(Some(*b)),
            Some(Value::String(s)) if !self.json => on_off(s)
                .map(Some)
                .ok_or_else(|| self.err(format!("Parameter '{key}' expects 'on' or 'off'"))),
            Some(_) => {
                Err(self.err(format!("Invalid parameter type for '{key}', expected: boolean")))
            }
        }
    }

    /// A size property: QEMU's suffixed size in `key=value`, a non-negative
    /// JSON integer in JSON.
    pub fn size(&self, key: &str) -> Result<Option<u64>, CliError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) if self.json => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.err(format!("Parameter '{key}' expects uint64"))),
            Some(Value::String(s)) if !self.json => {
                wire::units::parse_size(s).map(Some).map_err(|_| self.size_err(key))
            }
            Some(_) => Err(self.err(format!("Parameter '{key}' expects uint64"))),
        }
    }

    /// QEMU's text for a malformed size.
    pub fn size_err(&self, key: &str) -> CliError {
        self.err(format!(
            "Parameter '{key}' expects a non-negative number below 2^64\n\
             Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
             and exabytes, respectively."
        ))
    }

    /// An unsigned number property.
    pub fn num(&self, key: &str) -> Result<Option<u64>, CliError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) if self.json => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.err(format!("Parameter '{key}' expects uint64"))),
            Some(Value::String(s)) if !self.json => s
                .parse()
                .map(Some)
                .map_err(|_| self.err(format!("Parameter '{key}' expects a number"))),
            Some(_) => Err(self.err(format!("Parameter '{key}' expects a number"))),
        }
    }

    /// A string property restricted to `allowed`.
    pub fn choice(&self, key: &str, allowed: &[&str]) -> Result<Option<String>, CliError> {
        match self.str(key)? {
            Some(v) if !allowed.contains(&v.as_str()) => {
                Err(self.err(format!("Parameter '{key}' does not accept value '{v}'")))
            }
            v => Ok(v),
        }
    }

    /// Fail on any key not in `known`, the way QEMU does for this syntax.
    pub fn only(&self, known: &[&str]) -> Result<(), CliError> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) if self.json => Err(self.err(format!("Parameter '{k}' is unexpected"))),
            Some(k) => Err(self.err(format!("Invalid parameter '{k}'"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn props_escape() {
        let (f, kv) = parse_props("memory-backend-file,id=a,mem-path=/x,,y");
        assert_eq!(f.as_deref(), Some("memory-backend-file"));
        assert_eq!(kv[1], ("mem-path".to_string(), "/x,y".to_string()));
    }

    #[test]
    fn both_syntaxes() {
        let p =
            Props::parse("object", "memory-backend-ram,id=m,size=1G", Some("qom-type")).unwrap();
        assert_eq!(p.req_str("qom-type").unwrap(), "memory-backend-ram");
        assert_eq!(p.size("size").unwrap(), Some(1 << 30));
        let j = Props::parse(
            "object",
            r#"{"qom-type":"memory-backend-ram","id":"m","size":1073741824,"share":true}"#,
            None,
        )
        .unwrap();
        assert_eq!(j.size("size").unwrap(), Some(1 << 30));
        assert_eq!(j.bool("share").unwrap(), Some(true));
        // JSON keeps types: a string size is refused, as by QEMU.
        let j = Props::parse("object", r#"{"qom-type":"x","size":"1G"}"#, None).unwrap();
        assert_eq!(
            j.size("size").unwrap_err().to_string(),
            r#"-object {"qom-type":"x","size":"1G"}: Parameter 'size' expects uint64"#
        );
        let e = Props::parse("object", "{bad json", None).unwrap_err().to_string();
        assert!(e.starts_with("-object {bad json: JSON parse error, "), "{e}");
    }
}
