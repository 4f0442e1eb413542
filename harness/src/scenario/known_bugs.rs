//! Known QEMU bugs that may make a variant fail on its own (timing-dependent
//! crashes of a real QEMU process): the only failures the suite retries.
//! Every entry is written down in `docs/qemu-bugs.md` (its heading is the
//! anchor) with a reproducer scenario, and matches a variant's first failure
//! on typed facts ([`FirstFailure`]), never on error text. Any other first
//! failure fails the test at once.

use super::file::Variant;
use super::outcome::Outcome;
use crate::synth::VerdictKind;

/// The facts of a failed run that known bugs are matched on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirstFailure {
    /// The scenario's name (its file stem).
    pub scenario: String,
    /// The variant's QEMU series (the implicit `qemu` axis), e.g. "7.2".
    pub qemu: Option<String>,
    /// Stream scenarios: the QEMU destination's verdict.
    pub qemu_dest: Option<VerdictKind>,
    /// Stream scenarios: rust-dest's verdict.
    pub rust_dest: Option<VerdictKind>,
}

fn verdict_kind(s: &str) -> Option<VerdictKind> {
    [VerdictKind::Completed, VerdictKind::Failed, VerdictKind::Crashed, VerdictKind::Stuck]
        .into_iter()
        .find(|k| k.as_str() == s)
}

impl FirstFailure {
    pub fn of(v: &Variant, out: &Outcome) -> FirstFailure {
        let verdict = |dest: &str| {
            out.destinations
                .iter()
                .find(|d| d["destination"] == dest)
                .and_then(|d| d["verdict"].as_str())
                .and_then(verdict_kind)
        };
        FirstFailure {
            scenario: v.scenario.clone(),
            qemu: v
                .values
                .iter()
                .find(|(k, _)| k == "qemu")
                .and_then(|(_, x)| x.as_str())
                .map(String::from),
            qemu_dest: verdict("qemu"),
            rust_dest: verdict("rust"),
        }
    }
}

/// A QEMU bug written down in `docs/qemu-bugs.md`.
pub struct KnownBug {
    /// The heading's anchor in `docs/qemu-bugs.md`.
    pub anchor: &'static str,
    /// The scenario that reproduces it.
    pub reproducer: &'static str,
    /// The QEMU series it was seen on.
    pub versions: &'static [&'static str],
    /// QEMU's destination ended like this (and rust-dest did not fail).
    pub qemu_dest: VerdictKind,
}

impl KnownBug {
    pub fn matches(&self, f: &FirstFailure) -> bool {
        f.scenario == self.reproducer
            && f.qemu.as_deref().is_some_and(|q| self.versions.contains(&q))
            && f.qemu_dest == Some(self.qemu_dest)
            && f.rust_dest != Some(VerdictKind::Crashed)
    }
}

/// Every known bug a variant may be retried for.
pub const KNOWN_BUGS: &[KnownBug] = &[
    KnownBug {
        anchor: "intermittent-abort-on-advise-after-listen-in-the-package-7222-1002",
        reproducer: "stream-advise-after-listen-in-package",
        versions: &["7.2", "10.0"],
        qemu_dest: VerdictKind::Crashed,
    },
    // The same race once left 10.0's monitor hung instead (2026-12-01).
    KnownBug {
        anchor: "intermittent-abort-on-advise-after-listen-in-the-package-7222-1002",
        reproducer: "stream-advise-after-listen-in-package",
        versions: &["10.0"],
        qemu_dest: VerdictKind::Stuck,
    },
    KnownBug {
        anchor: "intermittent-abort-after-refusing-a-second-listen-7222-1002",
        reproducer: "stream-listen-twice",
        versions: &["7.2", "10.0"],
        qemu_dest: VerdictKind::Crashed,
    },
    KnownBug {
        anchor: "intermittent-crash-after-refusing-run-before-listen-7222-1002",
        reproducer: "stream-postcopy-no-discard",
        versions: &["7.2", "10.0"],
        qemu_dest: VerdictKind::Crashed,
    },
];

/// The known bug a failed run matches, if any.
pub fn known_bug(v: &Variant, out: &Outcome) -> Option<&'static KnownBug> {
    let f = FirstFailure::of(v, out);
    KNOWN_BUGS.iter().find(|b| b.matches(&f))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's anchor of a Markdown heading.
    fn slug(h: &str) -> String {
        h.trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect()
    }

    #[test]
    fn every_known_bug_is_written_down_with_its_reproducer() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let doc = std::fs::read_to_string(format!("{root}/docs/qemu-bugs.md")).unwrap();
        let anchors: Vec<String> =
            doc.lines().filter_map(|l| l.strip_prefix("## ")).map(slug).collect();
        for b in KNOWN_BUGS {
            assert!(anchors.iter().any(|a| a == b.anchor), "{} not in docs/qemu-bugs.md", b.anchor);
            let p = format!("{root}/scenarios/{}.toml", b.reproducer);
            assert!(std::path::Path::new(&p).exists(), "{p} missing");
            assert!(doc.contains(&format!("scenarios/{}.toml", b.reproducer)));
        }
    }

    fn failure(scenario: &str, qemu: &str, q: Option<VerdictKind>) -> FirstFailure {
        FirstFailure {
            scenario: scenario.into(),
            qemu: Some(qemu.into()),
            qemu_dest: q,
            rust_dest: Some(VerdictKind::Failed),
        }
    }

    #[test]
    fn only_a_documented_crash_matches() {
        let m = |f: &FirstFailure| KNOWN_BUGS.iter().any(|b| b.matches(f));
        assert!(m(&failure("stream-listen-twice", "10.0", Some(VerdictKind::Crashed))));
        // Another version, another verdict, another scenario: no retry.
        assert!(!m(&failure("stream-listen-twice", "11.1", Some(VerdictKind::Crashed))));
        assert!(!m(&failure("stream-listen-twice", "10.0", Some(VerdictKind::Stuck))));
        assert!(!m(&failure("postcopy-recovery-cut", "10.0", Some(VerdictKind::Crashed))));
        assert!(!m(&failure("stream-listen-twice", "10.0", None)));
        // rust-dest crashing is never QEMU's bug.
        let mut f = failure("stream-listen-twice", "10.0", Some(VerdictKind::Crashed));
        f.rust_dest = Some(VerdictKind::Crashed);
        assert!(!m(&f));
    }

    #[test]
    fn verdict_names_round_trip() {
        for k in
            [VerdictKind::Completed, VerdictKind::Failed, VerdictKind::Crashed, VerdictKind::Stuck]
        {
            assert_eq!(verdict_kind(k.as_str()), Some(k));
        }
        assert_eq!(verdict_kind("crash"), None);
    }
}
