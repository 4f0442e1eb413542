//! `[expect]` of a scenario: its TOML shape ([`RawExpect`], one entry of
//! `[expect]` / `[[expect]]`, merged per variant by [`super::cases`]) and
//! what a destination must have done by the end ([`DestExpect`]: its run
//! state, its peak memory, its migration time), for both kinds of scenario.

use serde::Deserialize;

pub use crate::verify::limits::DestExpect;

/// One `[expect]` entry (unknown keys rejected). Stream-only keys are
/// rejected for migration scenarios by the spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawExpect {
    /// Axis values this entry applies to (None: every variant).
    pub when: Option<toml::Table>,
    pub verdict: Option<String>,
    /// The QEMU destination's verdict when it differs (a known QEMU bug).
    pub qemu_verdict: Option<String>,
    /// The `docs/` reference of the QEMU bug behind `qemu_verdict`.
    pub qemu_bug: Option<String>,
    pub error: Option<String>,
    pub rust_error: Option<String>,
    pub qemu_error: Option<String>,
    pub memory: Option<bool>,
    pub pongs: Option<Vec<u32>>,
    pub shut: Option<u32>,
    pub min_page_requests: Option<u64>,
    pub run_state: Option<String>,
    pub rust_run_state: Option<String>,
    pub qemu_run_state: Option<String>,
    pub max_rss: Option<String>,
    pub rust_max_rss: Option<String>,
    pub qemu_max_rss: Option<String>,
    pub max_time: Option<String>,
    pub rust_max_time: Option<String>,
    pub qemu_max_time: Option<String>,
}

impl RawExpect {
    /// `top`'s keys laid over `self`'s.
    pub fn overlay(self, top: RawExpect) -> RawExpect {
        RawExpect {
            when: top.when.or(self.when),
            verdict: top.verdict.or(self.verdict),
            qemu_verdict: top.qemu_verdict.or(self.qemu_verdict),
            qemu_bug: top.qemu_bug.or(self.qemu_bug),
            error: top.error.or(self.error),
            rust_error: top.rust_error.or(self.rust_error),
            qemu_error: top.qemu_error.or(self.qemu_error),
            memory: top.memory.or(self.memory),
            pongs: top.pongs.or(self.pongs),
            shut: top.shut.or(self.shut),
            min_page_requests: top.min_page_requests.or(self.min_page_requests),
            run_state: top.run_state.or(self.run_state),
            rust_run_state: top.rust_run_state.or(self.rust_run_state),
            qemu_run_state: top.qemu_run_state.or(self.qemu_run_state),
            max_rss: top.max_rss.or(self.max_rss),
            rust_max_rss: top.rust_max_rss.or(self.rust_max_rss),
            qemu_max_rss: top.qemu_max_rss.or(self.qemu_max_rss),
            max_time: top.max_time.or(self.max_time),
            rust_max_time: top.rust_max_time.or(self.rust_max_time),
            qemu_max_time: top.qemu_max_time.or(self.qemu_max_time),
        }
    }

    /// The keys only stream scenarios may use, that this entry sets.
    pub fn stream_only_keys(&self) -> Vec<&'static str> {
        let mut k = Vec::new();
        let mut add = |set: bool, name| {
            if set {
                k.push(name)
            }
        };
        add(self.verdict.is_some(), "verdict");
        add(self.qemu_verdict.is_some(), "qemu-verdict");
        add(self.qemu_bug.is_some(), "qemu-bug");
        add(self.error.is_some(), "error");
        add(self.rust_error.is_some(), "rust-error");
        add(self.qemu_error.is_some(), "qemu-error");
        add(self.memory.is_some(), "memory");
        add(self.pongs.is_some(), "pongs");
        add(self.shut.is_some(), "shut");
        add(self.min_page_requests.is_some(), "min-page-requests");
        add(self.rust_run_state.is_some(), "rust-run-state");
        add(self.qemu_run_state.is_some(), "qemu-run-state");
        add(self.rust_max_rss.is_some(), "rust-max-rss");
        add(self.qemu_max_rss.is_some(), "qemu-max-rss");
        add(self.rust_max_time.is_some(), "rust-max-time");
        add(self.qemu_max_time.is_some(), "qemu-max-time");
        k
    }

    /// The destination expectation with the `rust-` (`rust = true`) or
    /// `qemu-` keys overriding the plain ones.
    pub fn dest(&self, rust: bool) -> Result<DestExpect, String> {
        let pick = |plain: &Option<String>, r: &Option<String>, q: &Option<String>| {
            if rust { r.clone() } else { q.clone() }.or_else(|| plain.clone())
        };
        let run_state = pick(&self.run_state, &self.rust_run_state, &self.qemu_run_state);
        let max_rss = pick(&self.max_rss, &self.rust_max_rss, &self.qemu_max_rss);
        let max_time = pick(&self.max_time, &self.rust_max_time, &self.qemu_max_time);
        DestExpect::parse(run_state.as_deref(), max_rss.as_deref(), max_time.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmp::RunState;
    use std::time::Duration;

    #[test]
    fn per_destination_overrides() {
        let e = RawExpect {
            run_state: Some("paused".into()),
            rust_run_state: Some("running".into()),
            max_rss: Some("512M".into()),
            qemu_max_rss: Some("1G".into()),
            max_time: Some("5s".into()),
            ..Default::default()
        };
        let r = e.dest(true).unwrap();
        assert_eq!(r.run_state, Some(RunState::Running));
        assert_eq!(r.max_rss, Some(512 << 20));
        assert_eq!(r.max_time, Some(Duration::from_secs(5)));
        let q = e.dest(false).unwrap();
        assert_eq!(q.run_state, Some(RunState::Paused));
        assert_eq!(q.max_rss, Some(1 << 30));
        assert!(DestExpect::parse(Some("runing"), None, None).unwrap_err().contains("runing"));
        assert!(DestExpect::parse(None, Some("lots"), None).unwrap_err().contains("max-rss"));
        assert!(DestExpect::parse(None, None, Some("soon")).unwrap_err().contains("max-time"));
        assert!(DestExpect::default().is_empty());
        assert_eq!(e.stream_only_keys(), vec!["rust-run-state", "qemu-max-rss"]);
    }
}
