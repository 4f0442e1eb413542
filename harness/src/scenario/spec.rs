//! The typed scenario spec, parsed once per variant from its TOML document:
//! durations, sizes, statuses, kinds and verdicts as types, steps and records
//! parsed (errors say where: see [`At`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use toml::Value as TomlValue;

use super::cases;
use super::expect::{DestExpect, RawExpect};
use super::records;
use super::steps::{self, StepSpec};
use crate::images::Workload;
use crate::synth::{self, Expect};
use crate::vm::dest::DestKind;
use wire::units::parse_size;

/// Default per-variant time limit.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);
/// Default guest RAM of a migration scenario.
pub const DEFAULT_MEMORY: u64 = 256 << 20;

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

/// The TOML shape of one variant (unknown keys rejected).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDoc {
    pub name: Option<String>,
    pub description: Option<String>,
    #[serde(default = "default_kind")]
    pub kind: Kind,
    pub timeout: Option<String>,
    #[serde(default)]
    pub axes: BTreeMap<String, Vec<TomlValue>>,
    #[serde(default)]
    pub exclude: Vec<BTreeMap<String, TomlValue>>,
    /// Axis values of the representative default run (the rest only with
    /// `CROSSMIG_FULL_MATRIX=1`); applied by the file loader.
    #[serde(default)]
    pub default_matrix: BTreeMap<String, Vec<TomlValue>>,
    #[serde(default)]
    pub capabilities: BTreeMap<String, bool>,
    #[serde(default)]
    pub source: RawSource,
    #[serde(default)]
    pub dest: RawDest,
    #[serde(default)]
    pub steps: Vec<toml::Table>,
    #[serde(default)]
    pub records: Vec<toml::Table>,
    /// `[expect]` or `[[expect]]` (merged per variant: `cases::merge_expect`).
    pub expect: Option<TomlValue>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSource {
    pub qemu: Option<String>,
    pub machine: Option<String>,
    pub memory: Option<String>,
    pub hugepages: Option<String>,
    pub workload: Option<String>,
    #[serde(default)]
    pub stopped: bool,
    #[serde(default)]
    pub capabilities: BTreeMap<String, bool>,
    #[serde(default)]
    pub parameters: toml::Table,
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDest {
    pub kind: Option<String>,
    pub qemu: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Added to `args` when the destination is rust-dest.
    #[serde(default)]
    pub rust_args: Vec<String>,
    #[serde(default)]
    pub capabilities: BTreeMap<String, bool>,
    #[serde(default)]
    pub parameters: toml::Table,
    /// Stream scenarios: run rust-dest's simulated vCPUs (judged against the
    /// model alone).
    pub vcpus: Option<RawVcpus>,
}

/// `[dest.vcpus]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawVcpus {
    pub pattern: String,
    pub threads: Option<u32>,
    pub rate: Option<u64>,
}

/// rust-dest's simulated vCPUs (`rust-dest/src/postcopy/vcpu.rs`): after
/// POSTCOPY_RUN they touch guest RAM in `pattern`, so missing pages fault
/// and are requested from the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vcpus {
    /// `sweep`, `random` or `hot` (rust-dest's `--vcpu-pattern`).
    pub pattern: String,
    pub threads: u32,
    /// Page touches per second per thread (0: as fast as possible).
    pub rate: u64,
}

impl Vcpus {
    fn from_raw(r: &RawVcpus) -> Result<Vcpus, String> {
        if !["sweep", "random", "hot"].contains(&r.pattern.as_str()) {
            return Err(format!(
                "dest.vcpus.pattern must be \"sweep\", \"random\" or \"hot\", not {:?}",
                r.pattern
            ));
        }
        let threads = r.threads.unwrap_or(1);
        if !(1..=64).contains(&threads) {
            return Err(format!("dest.vcpus.threads must be 1..=64, not {threads}"));
        }
        Ok(Vcpus { pattern: r.pattern.clone(), threads, rate: r.rate.unwrap_or(50_000) })
    }

    /// rust-dest's command-line arguments for these vCPUs.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--vcpu-pattern".into(),
            self.pattern.clone(),
            "--vcpu-threads".into(),
            self.threads.to_string(),
            "--vcpu-rate".into(),
            self.rate.to_string(),
        ]
    }
}

/// Where in the file a spec error is (resolved to a line by `file`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum At {
    /// No particular line.
    Nowhere,
    /// The first line assigning one of these keys (in this order).
    Key(&'static [&'static str]),
    /// The `n`-th `[[array]]` header.
    Table(&'static str, usize),
}

/// A spec that does not validate.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{msg}")]
pub struct SpecError {
    pub at: At,
    pub msg: String,
}

fn err(at: At, msg: impl Into<String>) -> SpecError {
    SpecError { at, msg: msg.into() }
}

/// `[source]`, typed.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// "system", a version series or a binary path (None: the `qemu` axis).
    pub qemu: Option<String>,
    pub machine: Option<String>,
    pub memory: u64,
    /// Guest RAM of both sides in huge pages of this size (hugetlbfs).
    pub hugepages: Option<u64>,
    pub workload: Workload,
    pub stopped: bool,
    pub capabilities: BTreeMap<String, bool>,
    /// `migrate-set-parameters` arguments (empty object: none).
    pub parameters: Value,
    /// Extra source command-line arguments (e.g. `["-uuid", "..."]`).
    pub args: Vec<String>,
}

/// `[dest]`, typed.
#[derive(Debug, Clone)]
pub struct DestSpec {
    pub kind: DestKind,
    pub qemu: Option<String>,
    /// Extra command-line arguments (for rust-dest, `rust-args` included).
    pub args: Vec<String>,
    pub capabilities: BTreeMap<String, bool>,
    pub parameters: Value,
    /// Stream scenarios: rust-dest's simulated vCPUs run after RUN (no QEMU
    /// oracle: judged against the model alone).
    pub vcpus: Option<Vcpus>,
}

/// `[expect]` of a stream scenario, typed.
#[derive(Debug, Clone)]
pub struct StreamExpect {
    /// Completed, Failed, PostcopyPaused or Stuck.
    pub verdict: Expect,
    /// The QEMU destination's verdict when a documented QEMU bug makes it
    /// differ (also Hang or Crash), with the `docs/` reference.
    pub qemu_verdict: Option<Expect>,
    pub qemu_bug: Option<String>,
    /// Regexes on the error text: `error` applies to both unless overridden.
    pub qemu_error: Option<regex::Regex>,
    pub rust_error: Option<regex::Regex>,
    /// On completion, compare mem0 with the script's model.
    pub memory: bool,
    pub pongs: Option<Vec<u32>>,
    pub shut: Option<u32>,
    /// At least this many page requests served (needs `[dest.vcpus]`).
    pub min_page_requests: Option<u64>,
    /// Run state and limits of the QEMU destination and of rust-dest.
    pub qemu: DestExpect,
    pub rust: DestExpect,
}

impl StreamExpect {
    /// The synthetic source's form of this expectation.
    pub fn expectation(&self) -> synth::Expectation {
        synth::Expectation {
            verdict: self.verdict,
            qemu_verdict: self.qemu_verdict,
            qemu_bug: self.qemu_bug.clone(),
            qemu_error: self.qemu_error.clone(),
            rust_error: self.rust_error.clone(),
            pongs: self.pongs.clone(),
            shut: self.shut,
            min_page_requests: self.min_page_requests,
            qemu: self.qemu.clone(),
            rust: self.rust.clone(),
        }
    }
}

/// What the variant does.
#[derive(Debug, Clone)]
pub enum Body {
    Migration { steps: Vec<StepSpec> },
    Stream { records: Vec<synth::Step>, expect: Box<StreamExpect> },
}

/// One variant's scenario, typed.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: Option<String>,
    pub description: Option<String>,
    pub timeout: Duration,
    /// Capabilities set on both sides.
    pub capabilities: BTreeMap<String, bool>,
    pub source: SourceSpec,
    pub dest: DestSpec,
    pub body: Body,
    /// Migration scenarios: what the destination must have done by the end
    /// (`[expect]`: run state, peak memory, time).
    pub dest_expect: DestExpect,
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self.body {
            Body::Migration { .. } => Kind::Migration,
            Body::Stream { .. } => Kind::Stream,
        }
    }

    /// Validate and type a parsed document of the variant with these axis
    /// values (for `when` in `[[expect]]` and `expect-error`).
    pub fn from_raw(d: RawDoc, values: &[(String, TomlValue)]) -> Result<Spec, SpecError> {
        let expect = match &d.expect {
            Some(e) => cases::merge_expect(e, values).map_err(|m| err(At::Key(&["expect"]), m))?,
            None => None,
        };
        let timeout = match &d.timeout {
            Some(t) => steps::duration(t)
                .map_err(|e| err(At::Key(&["timeout"]), format!("timeout: {e}")))?,
            None => DEFAULT_TIMEOUT,
        };
        let (body, dest_expect) = match d.kind {
            Kind::Migration => migration_body(&d, expect.as_ref(), values)?,
            Kind::Stream => (stream_body(&d, expect.as_ref())?, DestExpect::default()),
        };
        let vcpus = match (&d.dest.vcpus, d.kind) {
            (None, _) => None,
            (Some(v), Kind::Stream) => {
                Some(Vcpus::from_raw(v).map_err(|m| err(At::Key(&["vcpus", "pattern"]), m))?)
            }
            (Some(_), Kind::Migration) => {
                return Err(err(
                    At::Key(&["vcpus"]),
                    "dest.vcpus belongs to kind = \"stream\" scenarios (migration scenarios: \
                     dest.args = [\"--vcpu-pattern\", ...] and a `cont` step on the destination)",
                ))
            }
        };
        let dest_kind = match &d.dest.kind {
            Some(k) => k
                .parse::<DestKind>()
                .map_err(|e| err(At::Key(&["kind"]), format!("dest.kind: {e}")))?,
            None => DestKind::Rust,
        };
        if let (Body::Stream { expect, .. }, None) = (&body, &vcpus) {
            if expect.min_page_requests.is_some() {
                return Err(err(
                    At::Key(&["min-page-requests"]),
                    "expect.min-page-requests needs [dest.vcpus] (nothing else requests pages)",
                ));
            }
        }
        let memory = match &d.source.memory {
            Some(m) => parse_size(m)
                .map_err(|e| err(At::Key(&["memory"]), format!("source.memory: {e}")))?,
            None => DEFAULT_MEMORY,
        };
        let hugepages = match &d.source.hugepages {
            Some(h) => {
                let at = || At::Key(&["hugepages"]);
                let hp = parse_size(h).map_err(|e| err(at(), format!("source.hugepages: {e}")))?;
                if !hp.is_power_of_two() || hp < 2 << 20 {
                    return Err(err(
                        at(),
                        format!("source.hugepages: {h:?} is not a huge page size (\"2M\", \"1G\")"),
                    ));
                }
                if !memory.is_multiple_of(hp) {
                    return Err(err(
                        at(),
                        format!(
                        "source.memory ({memory} bytes) is not a multiple of source.hugepages ({h})"
                    ),
                    ));
                }
                Some(hp)
            }
            None => None,
        };
        let workload = match &d.source.workload {
            Some(w) => w
                .parse::<Workload>()
                .map_err(|e| err(At::Key(&["workload"]), format!("source.workload: {e}")))?,
            None => Workload::Sweep,
        };
        let params = |t: &toml::Table, side: &str| {
            steps::params_json(t)
                .map_err(|e| err(At::Key(&["parameters"]), format!("{side}.parameters: {e}")))
        };
        Ok(Spec {
            name: d.name,
            description: d.description,
            timeout,
            capabilities: d.capabilities,
            source: SourceSpec {
                qemu: d.source.qemu,
                machine: d.source.machine,
                memory,
                hugepages,
                workload,
                stopped: d.source.stopped,
                args: d.source.args.clone(),
                capabilities: d.source.capabilities,
                parameters: params(&d.source.parameters, "source")?,
            },
            dest: DestSpec {
                kind: dest_kind,
                qemu: d.dest.qemu,
                args: match dest_kind {
                    DestKind::Rust => [d.dest.args, d.dest.rust_args].concat(),
                    DestKind::Qemu => d.dest.args,
                },
                capabilities: d.dest.capabilities,
                parameters: params(&d.dest.parameters, "dest")?,
                vcpus,
            },
            body,
            dest_expect,
        })
    }
}

fn migration_body(
    d: &RawDoc,
    expect: Option<&RawExpect>,
    values: &[(String, TomlValue)],
) -> Result<(Body, DestExpect), SpecError> {
    if d.steps.is_empty() {
        return Err(err(At::Nowhere, "a migration scenario needs at least one [[steps]] entry"));
    }
    if !d.records.is_empty() {
        return Err(err(
            At::Key(&["records"]),
            "[[records]] belong to kind = \"stream\" scenarios",
        ));
    }
    let dest_expect = match expect {
        None => DestExpect::default(),
        Some(e) => {
            let stream_only = e.stream_only_keys();
            if !stream_only.is_empty() {
                return Err(err(
                    At::Key(&["expect"]),
                    format!(
                        "expect: {} belong(s) to kind = \"stream\" scenarios (a migration scenario's \
                         [expect] has run-state, max-rss, max-time)",
                        stream_only.join(", ")
                    ),
                ));
            }
            e.dest(false).map_err(|m| err(At::Key(&["expect"]), format!("expect: {m}")))?
        }
    };
    let steps = d
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let at = |e: String| err(At::Table("steps", i), format!("steps[{i}]: {e}"));
            let mut s = s.clone();
            let expect_error = s.remove("expect-error");
            let mut spec = steps::parse_step(&s).map_err(at)?;
            if let Some(w) = &spec.when {
                cases::when_matches(w, values).map_err(at)?;
            }
            if let Some(raw) = expect_error {
                spec.expect_error = cases::expect_error(&raw, values).map_err(at)?;
            }
            Ok(spec)
        })
        .collect::<Result<_, _>>()?;
    Ok((Body::Migration { steps }, dest_expect))
}

fn stream_body(d: &RawDoc, e: Option<&RawExpect>) -> Result<Body, SpecError> {
    if d.records.is_empty() {
        return Err(err(At::Nowhere, "a stream scenario needs at least one [[records]] entry"));
    }
    if !d.steps.is_empty() {
        return Err(err(At::Key(&["steps"]), "[[steps]] belong to kind = \"migration\" scenarios"));
    }
    let e = e.ok_or_else(|| match d.expect {
        Some(_) => err(At::Key(&["expect"]), "no [[expect]] entry applies to this variant"),
        None => err(At::Nowhere, "a stream scenario needs an [expect] table"),
    })?;
    let verdict = e
        .verdict
        .as_deref()
        .ok_or_else(|| err(At::Key(&["expect"]), "expect.verdict is missing (for this variant)"))?
        .parse::<Expect>()
        .map_err(|m| err(At::Key(&["verdict"]), format!("expect.verdict {m}")))?;
    // rust-dest must fail cleanly: it is never expected to crash or hang.
    if matches!(verdict, Expect::Crashed | Expect::FailedOrCrashed | Expect::Hang) {
        return Err(err(
            At::Key(&["verdict"]),
            format!("expect.verdict must be a verdict rust-dest may give (completed, failed, postcopy-paused, stuck), not {:?}; a QEMU crash or hang goes in qemu-verdict", verdict.as_str()),
        ));
    }
    let qemu_verdict = e
        .qemu_verdict
        .as_deref()
        .map(|v| v.parse::<Expect>())
        .transpose()
        .map_err(|m| err(At::Key(&["qemu-verdict"]), format!("expect.qemu-verdict {m}")))?;
    // A QEMU destination that does something else than rust-dest must be a
    // QEMU bug, written down.
    let differs = qemu_verdict.is_some_and(|q| q != verdict);
    let qemu_bug = match (differs, &e.qemu_bug) {
        (true, Some(b)) if b.starts_with("docs/") => Some(b.clone()),
        (true, _) => {
            return Err(err(
                At::Key(&["qemu-verdict"]),
                "expect.qemu-verdict needs qemu-bug = \"docs/FILE.md#anchor\" (the QEMU bug it documents)",
            ))
        }
        (false, Some(_)) if qemu_verdict.is_none() => {
            return Err(err(At::Key(&["qemu-bug"]), "expect.qemu-bug goes with qemu-verdict"));
        }
        (false, b) => b.clone(),
    };
    let re = |r: Option<&String>| {
        r.map(|re| {
            super::cases::pattern(re)
                .map_err(|er| err(At::Key(&["error"]), format!("bad regex {re:?}: {er}")))
        })
        .transpose()
    };
    let (error, rust_error, qemu_error) =
        (re(e.error.as_ref())?, re(e.rust_error.as_ref())?, re(e.qemu_error.as_ref())?);
    let records = d
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            records::parse_record(r)
                .map_err(|e| err(At::Table("records", i), format!("records[{i}]: {e}")))
        })
        .collect::<Result<_, _>>()?;
    Ok(Body::Stream {
        records,
        expect: Box::new(StreamExpect {
            verdict,
            qemu_verdict,
            qemu_bug,
            qemu_error: qemu_error.or_else(|| error.clone()),
            rust_error: rust_error.or(error),
            memory: e.memory.unwrap_or(true),
            pongs: e.pongs.clone(),
            shut: e.shut,
            min_page_requests: e.min_page_requests,
            qemu: e.dest(false).map_err(|m| err(At::Key(&["expect"]), format!("expect: {m}")))?,
            rust: e.dest(true).map_err(|m| err(At::Key(&["expect"]), format!("expect: {m}")))?,
        }),
    })
}

#[cfg(test)]
mod qemu_bug_tests {
    use std::path::Path;

    use super::super::file::load_str;

    const F: &str = "kind = \"stream\"\n[source]\nqemu = \"system\"\n[expect]\nverdict = \"failed\"\nQV\n[[records]]\nop = \"header\"\n";

    #[test]
    fn qemu_verdict_needs_a_documented_bug() {
        let load = |qv: &str| load_str(Path::new("s.toml"), &F.replace("QV", qv));
        let ok = load("qemu-verdict = \"hang\"\nqemu-bug = \"docs/multifd.md#x\"").unwrap();
        assert_eq!(ok.len(), 1);
        let e = load("qemu-verdict = \"crashed\"").unwrap_err().to_string();
        assert!(e.contains("needs qemu-bug"), "{e}");
        let e = load("qemu-verdict = \"hang\"\nqemu-bug = \"somewhere\"").unwrap_err().to_string();
        assert!(e.contains("needs qemu-bug"), "{e}");
        let e = load("qemu-bug = \"docs/x.md\"").unwrap_err().to_string();
        assert!(e.contains("goes with qemu-verdict"), "{e}");
        let e =
            load("qemu-verdict = \"melted\"\nqemu-bug = \"docs/x.md\"").unwrap_err().to_string();
        assert!(e.contains("qemu-verdict must be"), "{e}");
        // rust-dest itself may never be expected to hang or crash.
        let e =
            load_str(Path::new("s.toml"), &F.replace("\"failed\"", "\"hang\"").replace("QV", ""))
                .unwrap_err()
                .to_string();
        assert!(e.contains("expect.verdict must be"), "{e}");
    }
}
