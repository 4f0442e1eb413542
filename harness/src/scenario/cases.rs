//! Values that differ per variant without an extra axis: `when` tables
//! matched against a variant's axis values (the implicit `qemu` axis
//! included), for a step's `expect-error` and for `[[expect]]` entries.
//!
//! - `expect-error = "regex"` (every variant), `{ when = {...}, error = "regex" }`
//!   or a list of such tables: the first entry whose `when` matches applies;
//!   a variant that matches none must see the step succeed.
//! - `[expect]` or `[[expect]]`: every entry whose `when` matches (no `when`:
//!   all) is laid over the previous ones, key by key, in file order.
//!
//! A `when` key that is not an axis is an error (a typo would otherwise
//! silently never match).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use serde::Deserialize;
use toml::Value;

use super::expect::RawExpect;

/// How deeply a scenario's regex may nest groups and classes, as the regex
/// parser counts (a group with alternatives counts two levels). The
/// patterns in `scenarios/` stay far below; the regex parser's cost grows
/// with nesting (a fuzzed 3.7 KB case-insensitive pattern nesting classes
/// about 20 deep took 0.2 s to compile, 11.5 s under the fuzzer's
/// instrumentation: `fuzz/README.md`, fourth campaign).
pub const PATTERN_NEST_LIMIT: u32 = 16;

/// Compile a scenario's regex (`error`, `rust-error`, `qemu-error`,
/// `expect-error`, a step's `error`), nesting at most
/// [`PATTERN_NEST_LIMIT`] levels. Every variant of a file checks the same
/// patterns, so each distinct pattern is compiled once per process (a
/// `Regex` clone shares the compiled program); the cache is emptied when it
/// holds [`PATTERN_CACHE_SIZE`] patterns.
pub fn pattern(re: &str) -> Result<regex::Regex, regex::Error> {
    static CACHE: LazyLock<Mutex<HashMap<String, regex::Regex>>> = LazyLock::new(Mutex::default);
    let cache = || CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = cache().get(re) {
        return Ok(r.clone());
    }
    let r = regex::RegexBuilder::new(re).nest_limit(PATTERN_NEST_LIMIT).build()?;
    let mut map = cache();
    if map.len() >= PATTERN_CACHE_SIZE {
        map.clear();
    }
    map.insert(re.to_owned(), r.clone());
    Ok(r)
}

/// How many compiled patterns [`pattern`] keeps.
const PATTERN_CACHE_SIZE: usize = 512;

/// Check that every key of `when` is an axis, then match it.
pub fn when_matches(when: &toml::Table, values: &[(String, Value)]) -> Result<bool, String> {
    if let Some(k) = when.keys().find(|k| !values.iter().any(|(a, _)| a == *k)) {
        let axes: Vec<&str> = values.iter().map(|(a, _)| a.as_str()).collect();
        return Err(format!(
            "`when` names `{k}`, which is not an axis (axes: {})",
            axes.join(", ")
        ));
    }
    Ok(when.iter().all(|(k, want)| {
        let got = values.iter().find(|(a, _)| a == k).map(|(_, v)| text(v));
        match want {
            Value::Array(a) => a.iter().any(|w| Some(text(w)) == got),
            w => Some(text(w)) == got,
        }
    }))
}

/// A value as plain text (strings without quotes), as `file` compares
/// axis values in `when` and `[[exclude]]`.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One `{ when, error }` entry of `expect-error`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorCase {
    when: Option<toml::Table>,
    error: String,
}

/// The regex a step's `expect-error` asks for in this variant (None: the
/// step must succeed).
pub fn expect_error(
    raw: &Value,
    values: &[(String, Value)],
) -> Result<Option<regex::Regex>, String> {
    let cases: Vec<ErrorCase> = match raw {
        Value::String(s) => vec![ErrorCase { when: None, error: s.clone() }],
        Value::Table(_) => vec![case(raw)?],
        Value::Array(a) => a.iter().map(case).collect::<Result<_, _>>()?,
        _ => {
            return Err(
                "expect-error must be a regex, a table { when, error } or a list of them".into()
            )
        }
    };
    let mut chosen = None;
    for c in cases {
        let hit = match &c.when {
            Some(w) => when_matches(w, values)?,
            None => true,
        };
        let re =
            pattern(&c.error).map_err(|e| format!("expect-error: bad regex {:?}: {e}", c.error))?;
        if hit && chosen.is_none() {
            chosen = Some(re);
        }
    }
    Ok(chosen)
}

fn case(v: &Value) -> Result<ErrorCase, String> {
    ErrorCase::deserialize(v.clone()).map_err(|e| format!("expect-error: {}", e.message()))
}

/// The `[expect]` of this variant: one table, or the `[[expect]]` entries
/// whose `when` matches, laid over each other in order. None when the file
/// has no `[expect]` or no entry matches.
pub fn merge_expect(raw: &Value, values: &[(String, Value)]) -> Result<Option<RawExpect>, String> {
    let entries: Vec<&Value> = match raw {
        Value::Table(_) => vec![raw],
        Value::Array(a) => a.iter().collect(),
        _ => return Err("`expect` must be a table ([expect]) or tables ([[expect]])".into()),
    };
    let mut out: Option<RawExpect> = None;
    for (i, e) in entries.into_iter().enumerate() {
        let e = RawExpect::deserialize(e.clone())
            .map_err(|er| format!("expect[{i}]: {}", er.message()))?;
        let hit = match &e.when {
            Some(w) => when_matches(w, values).map_err(|m| format!("expect[{i}]: {m}"))?,
            None => true,
        };
        if hit {
            out = Some(match out {
                None => e,
                Some(base) => base.overlay(e),
            });
        }
    }
    Ok(out)
}

/// What a step's result means given its `expect-error`: `(ok, detail)`.
pub fn judge(
    result: Result<String, String>,
    expect_error: Option<&regex::Regex>,
) -> (bool, String) {
    match (result, expect_error) {
        (Ok(d), None) => (true, d),
        (Err(e), None) => (false, e),
        (Ok(d), Some(re)) => (
            false,
            format!(
                "the step succeeded but was expected to be refused with an error matching /{}/{}",
                re.as_str(),
                if d.is_empty() { String::new() } else { format!(" ({d})") }
            ),
        ),
        (Err(e), Some(re)) if re.is_match(&e) => (true, format!("refused as expected: {e}")),
        (Err(e), Some(re)) => {
            (false, format!("refused, but the error does not match /{}/: {e}", re.as_str()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(q: &str) -> Vec<(String, Value)> {
        vec![("dest".into(), Value::from("rust")), ("qemu".into(), Value::from(q))]
    }

    fn val(s: &str) -> Value {
        let t: toml::Table = toml::from_str(&format!("x = {s}")).unwrap();
        t["x"].clone()
    }

    #[test]
    fn expect_error_per_version() {
        let raw = val(r#"[{ when = { qemu = ["10.0", "11.1"] }, error = "cannot cancel" },
                { when = { qemu = "9.9" }, error = "other" }]"#);
        assert_eq!(expect_error(&raw, &vals("10.0")).unwrap().unwrap().as_str(), "cannot cancel");
        assert_eq!(expect_error(&raw, &vals("9.9")).unwrap().unwrap().as_str(), "other");
        assert!(expect_error(&raw, &vals("7.2")).unwrap().is_none());
        assert_eq!(expect_error(&val("\"x+\""), &vals("7.2")).unwrap().unwrap().as_str(), "x+");
        let one = val(r#"{ when = { dest = "rust" }, error = "e" }"#);
        assert!(expect_error(&one, &vals("7.2")).unwrap().is_some());
        let typo = val(r#"{ when = { qmeu = "7.2" }, error = "e" }"#);
        assert!(expect_error(&typo, &vals("7.2")).unwrap_err().contains("qmeu"));
        assert!(expect_error(&val("\"(\""), &vals("7.2")).unwrap_err().contains("bad regex"));
        let extra = val(r#"{ error = "e", eror = "f" }"#);
        assert!(expect_error(&extra, &vals("7.2")).unwrap_err().contains("eror"));
        assert!(expect_error(&val("3"), &vals("7.2")).is_err());
    }

    #[test]
    fn judging_refusals() {
        let re = regex::Regex::new("cannot cancel").unwrap();
        assert!(judge(Ok("d".into()), None).0);
        assert!(!judge(Err("x".into()), None).0);
        let (ok, d) = judge(Ok(String::new()), Some(&re));
        assert!(!ok && d.contains("succeeded"), "{d}");
        let (ok, d) =
            judge(Err("Postcopy migration in progress, cannot cancel.".into()), Some(&re));
        assert!(ok && d.contains("refused as expected"), "{d}");
        let (ok, d) = judge(Err("something else".into()), Some(&re));
        assert!(!ok && d.contains("does not match"), "{d}");
    }

    #[test]
    fn expect_entries_merge_in_order() {
        let raw = val(r#"[{ verdict = "failed", error = "a" },
                { when = { qemu = "7.2" }, verdict = "completed", run-state = "paused" },
                { when = { dest = "qemu" }, error = "never" }]"#);
        let e = merge_expect(&raw, &vals("7.2")).unwrap().unwrap();
        assert_eq!(e.verdict.as_deref(), Some("completed"));
        assert_eq!(e.error.as_deref(), Some("a"));
        assert_eq!(e.run_state.as_deref(), Some("paused"));
        let e = merge_expect(&raw, &vals("10.0")).unwrap().unwrap();
        assert_eq!(e.verdict.as_deref(), Some("failed"));
        assert!(e.run_state.is_none());
        let one = val(r#"{ when = { qemu = "7.2" }, verdict = "stuck" }"#);
        assert!(merge_expect(&one, &vals("10.0")).unwrap().is_none());
        let bad = val(r#"[{ verdit = "failed" }]"#);
        assert!(merge_expect(&bad, &vals("10.0")).unwrap_err().contains("verdit"));
        let bad = val(r#"[{ when = { version = "1" }, verdict = "failed" }]"#);
        assert!(merge_expect(&bad, &vals("10.0")).unwrap_err().contains("not an axis"));
    }
}
