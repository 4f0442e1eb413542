//! What running a variant produced: one [`StepResult`] per executed step and
//! the variant's [`Outcome`] (serialized into JSON reports), with terminal
//! escape codes (from logs) removed by [`Outcome::clean_text`].

use serde::Serialize;
use serde_json::Value;

use crate::drive::session::Sample;

/// One executed step.
#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub index: usize,
    pub step: String,
    pub ok: bool,
    pub ms: u64,
    pub detail: String,
}

/// A retry (of a variant whose first run failed on a known QEMU bug,
/// `known_bugs.rs`), as the test summary and the JSON report list it.
#[derive(Clone, Debug, Serialize)]
pub struct Retry {
    pub variant: String,
    /// `docs/qemu-bugs.md#<anchor>`.
    pub known_bug: String,
    pub first_error: String,
    pub passed_on_retry: bool,
}

/// The result of one variant.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub name: String,
    pub file: String,
    pub ok: bool,
    pub error: Option<String>,
    pub ms: u64,
    pub steps: Vec<StepResult>,
    /// `query-migrate` of both sides over time (migration scenarios).
    pub samples: Vec<Sample>,
    /// Stream scenarios: each destination's verdict and details.
    pub destinations: Vec<Value>,
    /// Set when this is the second run of a variant whose first run failed
    /// on a known QEMU bug (`known_bugs.rs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

/// `s` without terminal escape sequences (ANSI colours from log tails: CSI
/// `ESC [ ... final`, OSC `ESC ] ... BEL|ESC \\`, two-byte `ESC x`) and
/// without other control characters than newline and tab.
pub fn strip_escapes(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\u{1b}' => match it.next() {
                Some('[') => {
                    // Parameters and intermediates, then one final byte.
                    for c in it.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    while let Some(c) = it.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && it.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\n' | '\t' => o.push(c),
            c if c.is_control() => {}
            c => o.push(c),
        }
    }
    o
}

fn clean_value(v: &mut Value) {
    match v {
        Value::String(s) => *s = strip_escapes(s),
        Value::Array(a) => a.iter_mut().for_each(clean_value),
        Value::Object(o) => o.values_mut().for_each(clean_value),
        _ => {}
    }
}

impl Outcome {
    /// Remove escape codes from every text: the error, step details and the
    /// destinations' entries (QMP samples are QEMU's own JSON, left as is).
    pub fn clean_text(&mut self) {
        if let Some(e) = &mut self.error {
            *e = strip_escapes(e);
        }
        for s in &mut self.steps {
            s.detail = strip_escapes(&s.detail);
        }
        self.destinations.iter_mut().for_each(clean_value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_removed() {
        let t = "\u{1b}[2m2026-11-30T16:00:00Z\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m load: \
                 bad\u{1b}]0;title\u{7} end\r\n\tnext";
        assert_eq!(strip_escapes(t), "2026-11-30T16:00:00Z ERROR load: bad end\n\tnext");
        let mut o = Outcome {
            name: "n".into(),
            file: "f".into(),
            ok: false,
            error: Some("\u{1b}[1mx\u{1b}[0m".into()),
            ms: 0,
            steps: vec![],
            samples: vec![],
            destinations: vec![serde_json::json!({"error": "\u{1b}[33my\u{1b}[0m", "ms": 1})],
            retry: None,
        };
        o.clean_text();
        assert_eq!(o.error.as_deref(), Some("x"));
        assert_eq!(o.destinations[0]["error"], "y");
        assert!(!serde_json::to_string(&o).unwrap().contains("\\u001b"));
    }
}
