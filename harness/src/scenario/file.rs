//! Scenario files: loading, axis expansion into variants, `${axis}`
//! substitution, and turning spec errors into file:line errors.
//!
//! Axes are expanded by substituting `${axis}` into the file *text* for each
//! variant (a quoted `"${axis}"` becomes the value's TOML literal, so
//! numbers stay numbers; `${axis}` inside a longer string becomes its plain
//! text), then the text is parsed into the typed [`Spec`] with unknown keys
//! rejected. Substitution never changes line numbers, so every error names
//! the file, the line and the key.

use std::path::{Path, PathBuf};

use toml::Value;

use super::spec::{At, RawDoc, Spec, SpecError};

/// A validation or parse error: file, line and message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}{}: {msg}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct FileError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub msg: String,
}

/// Scenario files under a directory (sorted), or the given files.
pub fn find_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            v.sort();
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// One expanded variant.
#[derive(Debug, Clone)]
pub struct Variant {
    pub scenario: String,
    /// Axis values, in axis order.
    pub values: Vec<(String, Value)>,
    pub spec: Spec,
    pub file: PathBuf,
    pub text: String,
}

impl Variant {
    /// `scenario[axis=value,...]` (or just the scenario name).
    pub fn name(&self) -> String {
        variant_name(&self.scenario, &self.values)
    }

    pub fn value(&self, axis: &str) -> Option<&Value> {
        value_of(&self.values, axis)
    }

    /// Line of the `n`-th `[[steps]]` (or `[[records]]`) header.
    pub fn table_line(&self, array: &str, n: usize) -> Option<usize> {
        table_line(&self.text, array, n)
    }

    /// Does `when` (a table of axis → value or [values]) match this variant?
    pub fn matches(&self, when: &toml::Table) -> bool {
        values_match(&self.values, when)
    }
}

/// `scenario[axis=value,...]` (or just the scenario name).
fn variant_name(scenario: &str, values: &[(String, Value)]) -> String {
    if values.is_empty() {
        scenario.to_string()
    } else {
        let v: Vec<String> = values.iter().map(|(k, v)| format!("{k}={}", plain(v))).collect();
        format!("{scenario}[{}]", v.join(","))
    }
}

fn value_of<'a>(values: &'a [(String, Value)], axis: &str) -> Option<&'a Value> {
    values.iter().find(|(k, _)| k == axis).map(|(_, v)| v)
}

fn values_match(values: &[(String, Value)], when: &toml::Table) -> bool {
    when.iter().all(|(k, want)| match value_of(values, k) {
        Some(v) => match want {
            Value::Array(a) => a.iter().any(|w| same(w, v)),
            w => same(w, v),
        },
        None => false,
    })
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

/// Substitute `${axis}` in the string values of `text` for one variant
/// (see [`subst`](super::subst); `$${...}` is a literal `${...}`).
pub use super::subst::substitute;

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
    restrict_to_default_matrix(&raw, &mut axes, text).map_err(|(line, msg)| ferr(line, msg))?;
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
        if excludes.iter().any(|ex| values_match(&values, ex)) {
            continue;
        }
        let vtext = substitute(text, &values).map_err(|u| {
            ferr(
                line_of(text, Some(u.offset..u.offset)),
                format!("`${{{}}}` is not an axis of this scenario (`$${{...}}` is a literal `${{...}}`)", u.name),
            )
        })?;
        let note = if values.is_empty() {
            String::new()
        } else {
            format!(" (in variant {})", variant_name(&scenario, &values))
        };
        let doc: RawDoc = toml::from_str(&vtext)
            .map_err(|e| ferr(line_of(&vtext, e.span()), format!("{}{note}", e.message())))?;
        let spec = Spec::from_raw(doc, &values).map_err(|SpecError { at, msg }| {
            let line = match at {
                At::Nowhere => None,
                At::Key(keys) => keys.iter().find_map(|k| find_key_line(&vtext, k)),
                At::Table(array, n) => table_line(&vtext, array, n),
            };
            ferr(line, format!("{msg}{note}"))
        })?;
        out.push(Variant {
            scenario: scenario.clone(),
            values,
            spec,
            file: path.into(),
            text: vtext,
        });
    }
    Ok(out)
}

/// Line of the `n`-th `[[array]]` header.
fn table_line(text: &str, array: &str, n: usize) -> Option<usize> {
    let hdr = format!("[[{array}]]");
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with(&hdr))
        .nth(n)
        .map(|(i, _)| i + 1)
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

/// Whether every variant runs (`CROSSMIG_FULL_MATRIX=1`) or, for files with
/// a `[default-matrix]`, only its representative subset.
pub fn full_matrix() -> bool {
    std::env::var("CROSSMIG_FULL_MATRIX").is_ok_and(|v| v == "1" || v == "true")
}

/// `[default-matrix]`: unless [`full_matrix`], keep only the listed values
/// of each named axis (the implicit `qemu` axis included). Values no
/// provisioned version offers are ignored; if none is left the axis keeps
/// its first value, so a file always runs somewhere.
fn restrict_to_default_matrix(
    raw: &toml::Table,
    axes: &mut [(String, Vec<Value>)],
    text: &str,
) -> Result<(), (Option<usize>, String)> {
    let Some(dm) = raw.get("default-matrix") else { return Ok(()) };
    let line = find_key_line(text, "default-matrix");
    let t = dm.as_table().ok_or((line, "`default-matrix` must be a table".to_string()))?;
    for (k, v) in t {
        let keep = v
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or((line, format!("default-matrix.{k} must be a non-empty list of values")))?;
        let Some((_, vals)) = axes.iter_mut().find(|(a, _)| a == k) else {
            return Err((line, format!("default-matrix names `{k}`, which is not an axis")));
        };
        if full_matrix() {
            continue;
        }
        let kept: Vec<Value> =
            vals.iter().filter(|x| keep.iter().any(|y| same(x, y))).cloned().collect();
        *vals = if kept.is_empty() { vals[..1].to_vec() } else { kept };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::spec::Body;
    use crate::scenario::steps::{Step, WaitFor};
    use wire::units::parse_duration;

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
        let Body::Migration { steps } = &r5.spec.body else { panic!("not a migration") };
        assert!(
            matches!(steps[1].step, Step::Wait { what: WaitFor::Passes(5), .. }),
            "numbers stay numbers: {:?}",
            steps[1].step
        );
        assert_eq!(r5.spec.dest.kind, crate::vm::dest::DestKind::Rust);
    }

    #[test]
    fn default_matrix_keeps_the_representative_values() {
        let f = F.replace(
            "[dest]\nkind",
            "[default-matrix]\npasses = [1, 7]\n[source]\nqemu = \"system\"\n[dest]\nkind",
        );
        let names = |f: &str| -> Vec<String> {
            load_str(Path::new("demo.toml"), f).unwrap().iter().map(|x| x.name()).collect()
        };
        if !full_matrix() {
            assert_eq!(names(&f), vec!["demo[dest=rust,passes=1]", "demo[dest=qemu,passes=1]"]);
        }
        // No listed value exists: the axis keeps its first value.
        let g = f.replace("passes = [1, 7]", "passes = [9]");
        if !full_matrix() {
            assert_eq!(names(&g), vec!["demo[dest=rust,passes=0]", "demo[dest=qemu,passes=0]"]);
        }
        let bad = f.replace("passes = [1, 7]", "pases = [1]");
        let e = load_str(Path::new("demo.toml"), &bad).unwrap_err().to_string();
        assert!(e.contains("`pases`, which is not an axis"), "{e}");
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
    fn stream_errors_name_line_and_key() {
        let f = "kind = \"stream\"\n[source]\nqemu = \"system\"\n[expect]\nverdict = \"done\"\n[[records]]\nop = \"header\"\n";
        let e = load_str(Path::new("s.toml"), f).unwrap_err().to_string();
        assert!(e.starts_with("s.toml:5: expect.verdict"), "{e}");
        let f = f.replace("\"done\"", "\"failed\"") + "[[records]]\nop = \"lisen\"\n";
        let e = load_str(Path::new("s.toml"), &f).unwrap_err().to_string();
        assert!(e.starts_with("s.toml:8: records[1]:") && e.contains("lisen"), "{e}");
        let e = load_str(Path::new("s.toml"), &format!("timeout = \"2h\"\n{f}"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("s.toml:1: timeout:"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert_eq!(parse_duration("2").unwrap().as_secs(), 2);
        assert_eq!(parse_duration("1m").unwrap().as_secs(), 60);
        assert!(parse_duration("2h").is_err());
    }
}
