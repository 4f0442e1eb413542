//! Scenario files: loading, axis expansion into variants, validation.
//!
//! Axes are expanded by substituting `${axis}` into the file *text* for each
//! variant (a quoted `"${axis}"` becomes the value's TOML literal, so
//! numbers stay numbers; `${axis}` inside a longer string becomes its plain
//! text), then the text is parsed into typed structures with unknown keys
//! rejected. Substitution never changes line numbers, so every error names
//! the file, the line and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Value;

/// A validation or parse error: file, line and message.
#[derive(Debug, Clone)]
pub struct FileError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub msg: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file.display(), l, self.msg),
            None => write!(f, "{}: {}", self.file.display(), self.msg),
        }
    }
}

impl std::error::Error for FileError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A real QEMU source driven through QMP.
    Migration,
    /// A scripted record sequence from the synthetic source.
    Stream,
}

fn default_kind() -> Kind {
    Kind::Migration
}

/// The typed top level of one variant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ScenarioDoc {
    pub name: Option<String>,
    pub description: Option<String>,
    #[serde(default = "default_kind")]
    pub kind: Kind,
    /// Per-variant time limit, e.g. "120s" (default 180s).
    pub timeout: Option<String>,
    #[serde(default)]
    pub axes: BTreeMap<String, Vec<Value>>,
    /// Variants matching every key of one of these tables are dropped.
    #[serde(default)]
    pub exclude: Vec<BTreeMap<String, Value>>,
    /// Capabilities set on both sides.
    #[serde(default)]
    pub capabilities: BTreeMap<String, bool>,
    #[serde(default)]
    pub source: SourceSpec,
    #[serde(default)]
    pub dest: DestSpec,
    #[serde(default)]
    pub steps: Vec<toml::Table>,
    #[serde(default)]
    pub records: Vec<toml::Table>,
    pub expect: Option<StreamExpect>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SourceSpec {
    /// "system" (default), an installed version ("7.2", "10.0", "11.1") or a binary path.
    pub qemu: Option<String>,
    pub machine: Option<String>,
    /// Guest RAM, e.g. "256M".
    pub memory: Option<String>,
    /// "sweep" (default) or "fill".
    pub workload: Option<String>,
    /// Stop the guest before the first step.
    #[serde(default)]
    pub stopped: bool,
    #[serde(default)]
    pub capabilities: BTreeMap<String, bool>,
    #[serde(default)]
    pub parameters: toml::Table,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DestSpec {
    /// "rust" or "qemu" (default "rust").
    pub kind: Option<String>,
    /// QEMU binary for a QEMU destination (like `source.qemu`; default: the source's).
    pub qemu: Option<String>,
    /// Extra command-line arguments.
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub capabilities: BTreeMap<String, bool>,
    #[serde(default)]
    pub parameters: toml::Table,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StreamExpect {
    /// "completed", "failed" or "postcopy-paused" (the destination waits for
    /// recovery: QEMU pauses on any load error once postcopy runs).
    pub verdict: String,
    /// Regex the error text must match on both destinations.
    pub error: Option<String>,
    pub rust_error: Option<String>,
    pub qemu_error: Option<String>,
    /// On completion, compare mem0 with the script's model (default true).
    pub memory: Option<bool>,
    /// Expected PONG values, in order.
    pub pongs: Option<Vec<u32>>,
    /// Expected SHUT value.
    pub shut: Option<u32>,
}

/// One expanded variant.
#[derive(Debug, Clone)]
pub struct Variant {
    pub scenario: String,
    /// Axis values, in axis order.
    pub values: Vec<(String, Value)>,
    pub doc: ScenarioDoc,
    pub file: PathBuf,
    pub text: String,
}

impl Variant {
    /// `scenario[axis=value,...]` (or just the scenario name).
    pub fn name(&self) -> String {
        if self.values.is_empty() {
            self.scenario.clone()
        } else {
            let v: Vec<String> =
                self.values.iter().map(|(k, v)| format!("{k}={}", plain(v))).collect();
            format!("{}[{}]", self.scenario, v.join(","))
        }
    }

    pub fn value(&self, axis: &str) -> Option<&Value> {
        self.values.iter().find(|(k, _)| k == axis).map(|(_, v)| v)
    }

    /// Line of the `n`-th `[[steps]]` (or `[[records]]`) header.
    pub fn table_line(&self, array: &str, n: usize) -> Option<usize> {
        let hdr = format!("[[{array}]]");
        self.text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.trim_start().starts_with(&hdr))
            .nth(n)
            .map(|(i, _)| i + 1)
    }

    pub fn err(&self, line: Option<usize>, msg: impl Into<String>) -> FileError {
        FileError { file: self.file.clone(), line, msg: msg.into() }
    }

    /// Does `when` (a table of axis → value or [values]) match this variant?
    pub fn matches(&self, when: &toml::Table) -> bool {
        when.iter().all(|(k, want)| match self.value(k) {
            Some(v) => match want {
                Value::Array(a) => a.iter().any(|w| same(w, v)),
                w => same(w, v),
            },
            None => false,
        })
    }
}

fn same(a: &Value, b: &Value) -> bool {
    plain(a) == plain(b)
}

/// A value as plain text (strings without quotes).
pub fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> Option<usize> {
    span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
}

/// Substitute `${axis}` for one variant.
pub fn substitute(text: &str, values: &[(String, Value)]) -> String {
    let mut out = text.to_string();
    for (k, v) in values {
        let quoted = format!("\"${{{k}}}\"");
        let lit = match v {
            Value::String(s) => format!("{:?}", s),
            other => other.to_string(),
        };
        out = out.replace(&quoted, &lit);
        out = out.replace(&format!("${{{k}}}"), &plain(v));
    }
    out
}

/// Load a scenario file and expand it into variants. Errors name the file
/// and line.
pub fn load(path: &Path) -> Result<Vec<Variant>, FileError> {
    let text = std::fs::read_to_string(path).map_err(|e| FileError {
        file: path.into(),
        line: None,
        msg: format!("cannot read: {e}"),
    })?;
    load_str(path, &text)
}

pub fn load_str(path: &Path, text: &str) -> Result<Vec<Variant>, FileError> {
    let ferr = |line, msg: String| FileError { file: path.into(), line, msg };
    // Axes first, from the unexpanded text (every ${} is inside a string).
    let raw: toml::Table =
        toml::from_str(text).map_err(|e| ferr(line_of(text, e.span()), e.message().to_string()))?;
    let mut axes: Vec<(String, Vec<Value>)> = Vec::new();
    if let Some(a) = raw.get("axes") {
        let t = a
            .as_table()
            .ok_or_else(|| ferr(find_key_line(text, "axes"), "`axes` must be a table".into()))?;
        for (k, v) in t {
            let arr = v.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
                ferr(
                    find_key_line(text, k),
                    format!("axis `{k}` must be a non-empty list of values"),
                )
            })?;
            if arr.iter().any(|x| x.is_table() || x.is_array()) {
                return Err(ferr(
                    find_key_line(text, k),
                    format!("axis `{k}`: values must be strings, numbers or booleans"),
                ));
            }
            axes.push((k.clone(), arr.clone()));
        }
    }
    // The QEMU version is an implicit axis: every provisioned version (or
    // $CROSSMIG_QEMU_VERSIONS), unless the scenario has its own `qemu` axis
    // or fixes `source.qemu`.
    let fixed_qemu = raw.get("source").and_then(|s| s.get("qemu")).is_some();
    if !fixed_qemu && !axes.iter().any(|(k, _)| k == "qemu") {
        axes.push(("qemu".into(), matrix_versions().into_iter().map(Value::String).collect()));
    }
    let excludes: Vec<toml::Table> = match raw.get("exclude") {
        None => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_table().cloned().ok_or_else(|| {
                    ferr(find_key_line(text, "exclude"), "`exclude` entries must be tables".into())
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ferr(
                find_key_line(text, "exclude"),
                "`exclude` must be an array of tables ([[exclude]])".into(),
            ))
        }
    };
    for ex in &excludes {
        for k in ex.keys() {
            if !axes.iter().any(|(a, _)| a == k) {
                return Err(ferr(
                    find_key_line(text, "exclude"),
                    format!("exclude names `{k}`, which is not an axis"),
                ));
            }
        }
    }
    let scenario =
        raw.get("name").and_then(|n| n.as_str()).map(String::from).unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "scenario".into())
        });
    // Cartesian product.
    let mut combos: Vec<Vec<(String, Value)>> = vec![vec![]];
    for (k, vals) in &axes {
        let mut next = Vec::new();
        for c in &combos {
            for v in vals {
                let mut c2 = c.clone();
                c2.push((k.clone(), v.clone()));
                next.push(c2);
            }
        }
        combos = next;
    }
    let mut out = Vec::new();
    for values in combos {
        let stub = Variant {
            scenario: scenario.clone(),
            values: values.clone(),
            doc: empty_doc(),
            file: path.into(),
            text: String::new(),
        };
        if excludes.iter().any(|ex| stub.matches(ex)) {
            continue;
        }
        let vtext = substitute(text, &values);
        if let Some(p) = vtext.find("${") {
            let name: String = vtext[p + 2..].chars().take_while(|c| *c != '}').collect();
            return Err(ferr(
                line_of(&vtext, Some(p..p)),
                format!("`${{{name}}}` is not an axis of this scenario"),
            ));
        }
        let doc: ScenarioDoc = toml::from_str(&vtext).map_err(|e| {
            ferr(line_of(&vtext, e.span()), format!("{}{}", e.message(), variant_note(&stub)))
        })?;
        let v = Variant { scenario: scenario.clone(), values, doc, file: path.into(), text: vtext };
        validate(&v)?;
        out.push(v);
    }
    Ok(out)
}

fn variant_note(v: &Variant) -> String {
    if v.values.is_empty() {
        String::new()
    } else {
        format!(" (in variant {})", v.name())
    }
}

fn empty_doc() -> ScenarioDoc {
    toml::from_str("").expect("empty doc")
}

fn find_key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .find(|(_, l)| {
            let t = l.trim_start();
            t.starts_with(&format!("{key} "))
                || t.starts_with(&format!("{key}="))
                || t.starts_with(&format!("[{key}]"))
                || t.starts_with(&format!("[[{key}]]"))
        })
        .map(|(i, _)| i + 1)
}

/// Check what serde cannot: steps and records parse, values are sane.
fn validate(v: &Variant) -> Result<(), FileError> {
    let d = &v.doc;
    if let Some(t) = &d.timeout {
        parse_duration(t)
            .map_err(|e| v.err(find_key_line(&v.text, "timeout"), format!("timeout: {e}")))?;
    }
    match d.kind {
        Kind::Migration => {
            if d.steps.is_empty() {
                return Err(v.err(None, "a migration scenario needs at least one [[steps]] entry"));
            }
            if !d.records.is_empty() || d.expect.is_some() {
                return Err(v.err(
                    find_key_line(&v.text, "records").or(find_key_line(&v.text, "expect")),
                    "[[records]] and [expect] belong to kind = \"stream\" scenarios",
                ));
            }
            for (i, s) in d.steps.iter().enumerate() {
                super::steps::parse_step(s)
                    .map_err(|e| v.err(v.table_line("steps", i), format!("steps[{i}]: {e}")))?;
            }
            if let Some(k) = &d.dest.kind {
                k.parse::<crate::vm::dest::DestKind>().map_err(|e| {
                    v.err(find_key_line(&v.text, "kind"), format!("dest.kind: {e}"))
                })?;
            }
            if let Some(m) = &d.source.memory {
                wire::units::parse_size(m).map_err(|e| {
                    v.err(find_key_line(&v.text, "memory"), format!("source.memory: {e}"))
                })?;
            }
            if let Some(w) = &d.source.workload {
                w.parse::<crate::images::Workload>().map_err(|e| {
                    v.err(find_key_line(&v.text, "workload"), format!("source.workload: {e}"))
                })?;
            }
        }
        Kind::Stream => {
            if d.records.is_empty() {
                return Err(v.err(None, "a stream scenario needs at least one [[records]] entry"));
            }
            if !d.steps.is_empty() {
                return Err(v.err(
                    find_key_line(&v.text, "steps"),
                    "[[steps]] belong to kind = \"migration\" scenarios",
                ));
            }
            let e = d
                .expect
                .as_ref()
                .ok_or_else(|| v.err(None, "a stream scenario needs an [expect] table"))?;
            if !["completed", "failed", "postcopy-paused"].contains(&e.verdict.as_str()) {
                return Err(v.err(
                    find_key_line(&v.text, "verdict"),
                    format!("expect.verdict must be \"completed\", \"failed\" or \"postcopy-paused\", not {:?}", e.verdict),
                ));
            }
            for re in [&e.error, &e.rust_error, &e.qemu_error].into_iter().flatten() {
                regex::Regex::new(re).map_err(|er| {
                    v.err(find_key_line(&v.text, "error"), format!("bad regex {re:?}: {er}"))
                })?;
            }
            for (i, r) in d.records.iter().enumerate() {
                super::records::parse_record(r)
                    .map_err(|e| v.err(v.table_line("records", i), format!("records[{i}]: {e}")))?;
            }
        }
    }
    Ok(())
}

/// The QEMU versions every scenario runs against: `$CROSSMIG_QEMU_VERSIONS`
/// (comma separated, e.g. "10.0,11.1"), else every provisioned version
/// (`crossmig qemu list`), else the host's QEMU ("system").
pub fn matrix_versions() -> Vec<String> {
    if let Ok(v) = std::env::var("CROSSMIG_QEMU_VERSIONS") {
        let v: Vec<String> =
            v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        if !v.is_empty() {
            return v;
        }
    }
    static CACHE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    CACHE
        .get_or_init(|| {
            let mut v: Vec<String> =
                crate::provision::installed().into_iter().map(|i| i.series).collect();
            v.sort_by_key(|s| {
                s.split('.').map(|x| x.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>()
            });
            v.dedup();
            if v.is_empty() {
                vec!["system".into()]
            } else {
                v
            }
        })
        .clone()
}

pub use wire::units::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    const F: &str = r#"
name = "demo"
kind = "migration"
[axes]
dest = ["rust", "qemu"]
passes = [0, 1, 5]
[[exclude]]
dest = "qemu"
passes = 5
[dest]
kind = "${dest}"
[[steps]]
do = "migrate"
[[steps]]
do = "wait"
passes = "${passes}"
[[steps]]
do = "wait"
status = "completed"
"#;

    #[test]
    fn expands_axes_with_filters() {
        let f = F.replace("[dest]\nkind", "[source]\nqemu = \"system\"\n[dest]\nkind");
        let v = load_str(Path::new("demo.toml"), &f).unwrap();
        let names: Vec<_> = v.iter().map(|x| x.name()).collect();
        assert_eq!(names.len(), 5, "{names:?}");
        assert!(names.contains(&"demo[dest=rust,passes=5]".to_string()));
        assert!(!names.contains(&"demo[dest=qemu,passes=5]".to_string()));
        let r5 = v.iter().find(|x| x.name() == "demo[dest=rust,passes=5]").unwrap();
        assert_eq!(r5.doc.steps[1]["passes"].as_integer(), Some(5), "numbers stay numbers");
        assert_eq!(r5.doc.dest.kind.as_deref(), Some("rust"));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let bad = F.replace("[dest]\nkind", "[dest]\nknd");
        // (the implicit qemu axis adds no lines)
        let e = load_str(Path::new("demo.toml"), &bad).unwrap_err().to_string();
        assert!(e.starts_with("demo.toml:11:"), "{e}");
        assert!(e.contains("knd"), "{e}");
        let bad = F.replace("passes = \"${passes}\"", "passes = \"${pases}\"");
        let e = load_str(Path::new("demo.toml"), &bad).unwrap_err().to_string();
        assert!(e.contains("pases") && e.contains(":16:"), "{e}");
        let bad = F.replace("do = \"wait\"\npasses", "do = \"wiat\"\npasses");
        let e = load_str(Path::new("demo.toml"), &bad).unwrap_err().to_string();
        assert!(e.contains("demo.toml:14:") && e.contains("steps[1]") && e.contains("wiat"), "{e}");
        let e = load_str(Path::new("x.toml"), "name = [").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:1:"), "{e}");
        let e = load_str(Path::new("x.toml"), "[[exclude]]\nfoo = 1\n[[steps]]\ndo=\"migrate\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an axis"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert_eq!(parse_duration("2").unwrap().as_secs(), 2);
        assert_eq!(parse_duration("1m").unwrap().as_secs(), 60);
        assert!(parse_duration("2h").is_err());
    }
}
