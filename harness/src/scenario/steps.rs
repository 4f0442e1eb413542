//! Steps of migration scenarios: `[[steps]]` tables parsed once into the
//! typed [`Step`] (durations, sizes, statuses, sides and kinds as types).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::drive::transport::{SaveRestore, Transport};
use crate::qmp::{MigrationStatus, StatusWait};
use wire::units::parse_size;

/// Which side a step acts on (the one `Side` of `drive::session`).
pub use crate::drive::session::Side;

fn source() -> Side {
    Side::Source
}
fn both() -> Side {
    Side::Both
}

/// Connection faults injected through the harness's proxy, or process kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Reset every proxied connection now.
    Cut,
    /// Every proxied connection goes silent now (no byte, no close, either
    /// way) and stays so until the migration ends: a network partition,
    /// which each side notices only through `migrate-pause`.
    Partition,
    /// SIGKILL the process of `side`.
    Kill,
}

/// The failing attempt a `recover` step makes first (`fail = "handshake"`:
/// the recovery connection to the destination sends one command byte and
/// closes; `"reconnect"`: the source resumes towards an address where
/// nothing listens).
pub use crate::drive::session::RecoverFault;

/// A comparison of an `expect` counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    const ALL: [(&'static str, CmpOp); 6] = [
        ("==", CmpOp::Eq),
        ("!=", CmpOp::Ne),
        (">", CmpOp::Gt),
        (">=", CmpOp::Ge),
        ("<", CmpOp::Lt),
        ("<=", CmpOp::Le),
    ];

    pub fn as_str(self) -> &'static str {
        CmpOp::ALL.iter().find(|(_, o)| *o == self).map(|(n, _)| *n).unwrap_or("?")
    }

    pub fn holds(self, got: i64, want: i64) -> bool {
        match self {
            CmpOp::Eq => got == want,
            CmpOp::Ne => got != want,
            CmpOp::Gt => got > want,
            CmpOp::Ge => got >= want,
            CmpOp::Lt => got < want,
            CmpOp::Le => got <= want,
        }
    }
}

impl std::str::FromStr for CmpOp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        CmpOp::ALL
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, o)| *o)
            .ok_or_else(|| format!("expect: unknown op {s:?} (== != > >= < <=)"))
    }
}

/// Proxy options of a `migrate` step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyOpts {
    /// Pause forwarding (source→destination) once this many bytes passed,
    /// for that long.
    pub stall: Option<(u64, Duration)>,
    /// Forward at most this many bytes per second.
    pub throttle: Option<u64>,
    /// Cut the main connection after this many bytes.
    pub cut_at: Option<u64>,
}

/// What a `wait` step waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitFor {
    /// One of these statuses on `side` (`failed` ends the wait unless awaited).
    Status(StatusWait),
    /// This many completed RAM passes on the source.
    Passes(u64),
    /// A plain sleep.
    Time(Duration),
    /// Text on the source's serial console.
    Serial(String),
}

/// An assertion on a `query-migrate` counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterCheck {
    /// Dotted path into query-migrate, e.g. "ram.postcopy-requests".
    pub path: String,
    pub op: CmpOp,
    pub value: i64,
}

/// How a `migrate` step reaches the destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    Tcp,
    /// Unix sockets (also for multifd, preempt and recovery).
    Unix,
    /// Saved by the source, then restored (`drive::transport`).
    Saved(SaveRestore),
}

/// One step of a migration scenario.
#[derive(Clone, Debug)]
pub enum Step {
    /// `migrate-incoming` on the destination, `migrate` on the source
    /// (through the harness's proxy with `proxy`).
    Migrate {
        proxy: Option<ProxyOpts>,
        via: Via,
    },
    /// Save the source to a file (`migrate file:PATH`, waiting until the
    /// source completes), then `migrate-incoming file:PATH` on the
    /// destination; the file is in `dir` (default: the system temp dir).
    SaveRestore {
        dir: Option<String>,
        timeout: Duration,
    },
    /// Wait on `side` (statuses) for `what`, at most `timeout`.
    Wait {
        what: WaitFor,
        side: Side,
        timeout: Duration,
    },
    /// `migrate-start-postcopy`; unless `precopy_may_win`, the variant fails
    /// when postcopy never ran (see `exec::check::postcopy_evidence`).
    StartPostcopy {
        precopy_may_win: bool,
    },
    Stop {
        side: Side,
    },
    Cont {
        side: Side,
    },
    /// `migrate-set-parameters` with this object (sizes already in bytes).
    SetParameters {
        side: Side,
        parameters: Value,
    },
    SetCapabilities {
        side: Side,
        capabilities: BTreeMap<String, bool>,
    },
    /// `migrate_cancel` on the source.
    Cancel,
    Fault {
        fault: FaultKind,
        side: Side,
    },
    /// `migrate-pause` on `side` (postcopy).
    Pause {
        side: Side,
    },
    /// `migrate-recover` + `migrate resume=true`, optionally after a failing attempt.
    Recover {
        fail: Option<RecoverFault>,
    },
    /// Assert on `query-migrate` of `side`.
    Expect {
        side: Side,
        status: Option<Vec<MigrationStatus>>,
        /// Regex on `error-desc`.
        error: Option<regex::Regex>,
        counter: Option<CounterCheck>,
    },
    /// Compare guest RAM page by page and (with `invariant`) the sweep
    /// guest's own invariant.
    CheckMemory {
        invariant: bool,
    },
}

/// A parsed step with its `when` filter.
#[derive(Clone, Debug)]
pub struct StepSpec {
    pub step: Step,
    pub when: Option<toml::Table>,
    /// This variant's `expect-error`: the step must be refused with an
    /// error matching it (see `cases`).
    pub expect_error: Option<regex::Regex>,
}

/// The TOML shape of a `[[steps]]` table (see `scenarios/README.md`).
#[derive(Clone, Debug, Deserialize)]
#[serde(
    tag = "do",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case",
    deny_unknown_fields
)]
enum RawStep {
    Migrate {
        #[serde(default)]
        proxy: Option<RawProxy>,
        transport: Option<String>,
        save: Option<String>,
        offset: Option<u64>,
        #[serde(default)]
        channels: bool,
    },
    SaveRestore {
        dir: Option<String>,
        timeout: Option<String>,
    },
    Wait {
        status: Option<String>,
        #[serde(default = "both")]
        side: Side,
        passes: Option<u64>,
        time: Option<String>,
        serial: Option<String>,
        timeout: Option<String>,
    },
    StartPostcopy {
        #[serde(default)]
        precopy_may_win: bool,
    },
    Stop {
        #[serde(default = "source")]
        side: Side,
    },
    Cont {
        #[serde(default = "source")]
        side: Side,
    },
    SetParameters {
        #[serde(default = "source")]
        side: Side,
        parameters: toml::Table,
    },
    SetCapabilities {
        #[serde(default = "both")]
        side: Side,
        capabilities: BTreeMap<String, bool>,
    },
    Cancel {},
    Fault {
        fault: FaultKind,
        #[serde(default = "source")]
        side: Side,
    },
    Pause {
        #[serde(default = "source")]
        side: Side,
    },
    Recover {
        fail: Option<String>,
    },
    Expect {
        #[serde(default = "both")]
        side: Side,
        status: Option<String>,
        error: Option<String>,
        counter: Option<String>,
        op: Option<String>,
        value: Option<i64>,
    },
    CheckMemory {
        invariant: Option<bool>,
    },
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawProxy {
    stall_at: Option<String>,
    stall_for: Option<String>,
    throttle: Option<String>,
    cut_at: Option<String>,
}

/// The longest duration a scenario may write (one day).
pub const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// A scenario duration (`"500ms"`, `"2s"`, `"3m"`, seconds), at most
/// [`MAX_DURATION`] (so that deadlines computed from it never overflow).
pub fn duration(s: &str) -> Result<Duration, String> {
    let d = wire::units::parse_duration(s)?;
    if d > MAX_DURATION {
        return Err(format!("duration {s:?} is longer than one day"));
    }
    Ok(d)
}

/// Default limit of a `wait` step.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(120);

/// "a|b" → statuses (strictly: unknown names are errors).
pub fn parse_statuses(s: &str) -> Result<Vec<MigrationStatus>, String> {
    s.split('|').map(|w| w.trim().parse::<MigrationStatus>()).collect()
}

/// `migrate-set-parameters` arguments from a TOML table; bandwidths and
/// `*-size` may be written as sizes ("256M").
pub fn params_json(t: &toml::Table) -> Result<Value, String> {
    let mut m = serde_json::Map::new();
    for (k, v) in t {
        let j = match v {
            toml::Value::String(s) if k.ends_with("bandwidth") || k.ends_with("-size") => {
                Value::from(parse_size(s).map_err(|e| format!("parameter {k}: {e}"))?)
            }
            other => serde_json::to_value(other).map_err(|e| format!("parameter {k}: {e}"))?,
        };
        m.insert(k.clone(), j);
    }
    Ok(Value::Object(m))
}

/// Parse one `[[steps]]` table.
pub fn parse_step(t: &toml::Table) -> Result<StepSpec, String> {
    let mut t = t.clone();
    let when = match t.remove("when") {
        None => None,
        Some(toml::Value::Table(w)) => Some(w),
        Some(_) => return Err("`when` must be a table of axis = value".into()),
    };
    let raw = RawStep::deserialize(toml::Value::Table(t)).map_err(|e| e.message().to_string())?;
    Ok(StepSpec { step: typed(raw)?, when, expect_error: None })
}

fn typed(raw: RawStep) -> Result<Step, String> {
    Ok(match raw {
        RawStep::SaveRestore { dir, timeout } => Step::SaveRestore {
            dir,
            timeout: timeout.as_deref().map(duration).transpose()?.unwrap_or(DEFAULT_WAIT),
        },
        RawStep::Migrate { proxy, transport, save, offset, channels } => {
            let via = via(transport, save, offset, channels)?;
            if proxy.is_some() && via != Via::Tcp {
                return Err("`proxy` only works with transport \"tcp\"".into());
            }
            Step::Migrate { proxy: proxy.map(proxy_opts).transpose()?, via }
        }
        RawStep::Wait { status, side, passes, time, serial, timeout } => {
            let what = match (status, passes, time, serial) {
                (Some(s), None, None, None) => WaitFor::Status(StatusWait::parse_any(&s)?),
                (None, Some(n), None, None) => WaitFor::Passes(n),
                (None, None, Some(t), None) => WaitFor::Time(duration(&t)?),
                (None, None, None, Some(m)) => WaitFor::Serial(m),
                _ => return Err("wait needs exactly one of status, passes, time, serial".into()),
            };
            let timeout = timeout.as_deref().map(duration).transpose()?.unwrap_or(DEFAULT_WAIT);
            Step::Wait { what, side, timeout }
        }
        RawStep::StartPostcopy { precopy_may_win } => Step::StartPostcopy { precopy_may_win },
        RawStep::Stop { side } => Step::Stop { side },
        RawStep::Cont { side } => Step::Cont { side },
        RawStep::SetParameters { side, parameters } => {
            Step::SetParameters { side, parameters: params_json(&parameters)? }
        }
        RawStep::SetCapabilities { side, capabilities } => {
            Step::SetCapabilities { side, capabilities }
        }
        RawStep::Cancel {} => Step::Cancel,
        RawStep::Fault { fault, side } => Step::Fault { fault, side },
        RawStep::Pause { side } => Step::Pause { side },
        RawStep::Recover { fail } => Step::Recover {
            fail: match fail.as_deref() {
                None => None,
                Some("handshake") => Some(RecoverFault::Handshake),
                Some("reconnect") => Some(RecoverFault::Reconnect),
                Some(f) => {
                    return Err(format!(
                        "recover: fail must be \"handshake\" or \"reconnect\", not {f:?}"
                    ))
                }
            },
        },
        RawStep::Expect { side, status, error, counter, op, value } => {
            if status.is_none() && error.is_none() && counter.is_none() {
                return Err("expect needs status, error or counter".into());
            }
            if counter.is_some() && (op.is_none() || value.is_none()) {
                return Err("expect with counter needs op and value".into());
            }
            let op = op.as_deref().map(str::parse::<CmpOp>).transpose()?;
            let error = error
                .map(|e| {
                    super::cases::pattern(&e).map_err(|er| format!("expect: bad regex {e:?}: {er}"))
                })
                .transpose()?;
            let counter = match (counter, op, value) {
                (Some(path), Some(op), Some(value)) => Some(CounterCheck { path, op, value }),
                _ => None,
            };
            let status = status.as_deref().map(parse_statuses).transpose()?;
            Step::Expect { side, status, error, counter }
        }
        RawStep::CheckMemory { invariant } => {
            Step::CheckMemory { invariant: invariant.unwrap_or(true) }
        }
    })
}

/// The `migrate` step's `transport`, `save`, `offset` and `channels`.
fn via(
    transport: Option<String>,
    save: Option<String>,
    offset: Option<u64>,
    channels: bool,
) -> Result<Via, String> {
    let t = transport.as_deref().map(Transport::parse).transpose()?.unwrap_or(Transport::Tcp);
    let save = save.as_deref().map(Transport::parse).transpose()?;
    match t {
        Transport::Tcp | Transport::Unix if save.is_some() || offset.is_some() || channels => Err(
            format!("`save`, `offset` and `channels` need a saving transport, not {:?}", t.name()),
        ),
        Transport::Tcp => Ok(Via::Tcp),
        Transport::Unix => Ok(Via::Unix),
        _ => Ok(Via::Saved(SaveRestore::new(save.unwrap_or(t), t, offset.unwrap_or(0), channels)?)),
    }
}

fn proxy_opts(p: RawProxy) -> Result<ProxyOpts, String> {
    let size = |s: &Option<String>| s.as_deref().map(parse_size).transpose();
    let (stall_at, throttle, cut_at) = (size(&p.stall_at)?, size(&p.throttle)?, size(&p.cut_at)?);
    let stall_for = p.stall_for.as_deref().map(duration).transpose()?;
    let stall = match (stall_at, stall_for) {
        (Some(a), Some(f)) => Some((a, f)),
        (None, None) => None,
        _ => return Err("proxy: stall-at and stall-for go together".into()),
    };
    Ok(ProxyOpts { stall, throttle, cut_at })
}

fn statuses_text(s: &[MigrationStatus]) -> String {
    s.iter().map(MigrationStatus::as_str).collect::<Vec<_>>().join("|")
}

impl Step {
    /// A short description for results.
    pub fn label(&self) -> String {
        match self {
            Step::Migrate { proxy, via } => {
                let how = match via {
                    Via::Tcp => "",
                    Via::Unix => " (unix)",
                    Via::Saved(p) => &format!(
                        " (save {}, restore {}{})",
                        p.save.name(),
                        p.restore.name(),
                        if p.offset != 0 { format!(" at {}", p.offset) } else { String::new() }
                    ),
                };
                format!("migrate{}{how}", if proxy.is_some() { " (proxy)" } else { "" })
            }
            Step::SaveRestore { dir, .. } => match dir {
                Some(d) => format!("save-restore (file in {d})"),
                None => "save-restore".into(),
            },
            Step::Wait { what: WaitFor::Status(w), side, .. } => {
                format!("wait {side:?} status {}", w.goal_names().join("|"))
            }
            Step::Wait { what: WaitFor::Passes(p), .. } => format!("wait {p} pass(es)"),
            Step::Wait { what: WaitFor::Time(t), .. } => format!("wait {t:?}"),
            Step::Wait { what: WaitFor::Serial(m), .. } => format!("wait serial {m:?}"),
            Step::StartPostcopy { precopy_may_win: false } => "start-postcopy".into(),
            Step::StartPostcopy { precopy_may_win: true } => {
                "start-postcopy (precopy may win)".into()
            }
            Step::Stop { side } => format!("stop {side:?}"),
            Step::Cont { side } => format!("cont {side:?}"),
            Step::SetParameters { side, .. } => format!("set-parameters {side:?}"),
            Step::SetCapabilities { side, .. } => format!("set-capabilities {side:?}"),
            Step::Cancel => "cancel".into(),
            Step::Fault { fault, side } => format!("fault {fault:?} {side:?}"),
            Step::Pause { side } => format!("pause {side:?}"),
            Step::Recover { fail: None } => "recover".into(),
            Step::Recover { fail: Some(f) } => format!("recover (after a failed {})", f.as_str()),
            Step::Expect { side, status, error, counter } => {
                let mut s = format!("expect {side:?}");
                if let Some(st) = status {
                    s += &format!(" status {}", statuses_text(st));
                }
                if let Some(e) = error {
                    s += &format!(" error ~ {:?}", e.as_str());
                }
                if let Some(c) = counter {
                    s += &format!(" {} {} {}", c.path, c.op.as_str(), c.value);
                }
                s
            }
            Step::CheckMemory { .. } => "check-memory".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(s: &str) -> Result<StepSpec, String> {
        parse_step(&toml::from_str(s).unwrap())
    }

    #[test]
    fn typed_steps() {
        let s = step("do = \"wait\"\nstatus = \"completed | failed\"\ntimeout = \"2s\"").unwrap();
        match s.step {
            Step::Wait { what: WaitFor::Status(w), side: Side::Both, timeout } => {
                assert_eq!(w.goals, vec![MigrationStatus::Completed, MigrationStatus::Failed]);
                assert!(w.fail_on.is_empty());
                assert_eq!(timeout, Duration::from_secs(2));
            }
            o => panic!("{o:?}"),
        }
        assert!(step("do = \"wait\"\nstatus = \"complete\"").unwrap_err().contains("complete"));
        assert!(step("do = \"wait\"\npasses = 1\ntime = \"1s\"").unwrap_err().contains("exactly"));
        let s =
            step("do = \"migrate\"\nproxy = { stall-at = \"1M\", stall-for = \"2s\" }").unwrap();
        match s.step {
            Step::Migrate { proxy: Some(p), .. } => {
                assert_eq!(p.stall, Some((1 << 20, Duration::from_secs(2))))
            }
            o => panic!("{o:?}"),
        }
        assert!(step("do = \"migrate\"\nproxy = { stall-at = \"1M\" }").is_err());
        let s = step("do = \"migrate\"\ntransport = \"fd\"\nsave = \"file\"").unwrap();
        match s.step {
            Step::Migrate { via: Via::Saved(p), .. } => {
                assert_eq!((p.save, p.restore, p.offset), (Transport::File, Transport::Fd, 0))
            }
            o => panic!("{o:?}"),
        }
        let s = step("do = \"migrate\"\ntransport = \"unix\"").unwrap();
        assert!(matches!(s.step, Step::Migrate { via: Via::Unix, .. }));
        assert!(step("do = \"migrate\"\ntransport = \"unix\"\noffset = 4096").is_err());
        assert!(step("do = \"migrate\"\ntransport = \"exec\"\noffset = 4096").is_err());
        assert!(step("do = \"migrate\"\ntransport = \"file\"\nproxy = {}").is_err());
        assert!(step("do = \"expect\"\ncounter = \"a.b\"\nop = \"=~\"\nvalue = 1").is_err());
        assert!(step("do = \"recover\"\nfail = \"x\"").is_err());
        // Durations that overflowed a deadline or Duration itself.
        let e = step("do = \"wait\"\ntime = \"99999999999999999999999\"").unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = step("do = \"wait\"\nstatus = \"completed\"\ntimeout = \"100000000\"").unwrap_err();
        assert!(e.contains("longer than one day"), "{e}");
        let s = step("do = \"save-restore\"\ndir = \"/var/tmp\"\ntimeout = \"30s\"").unwrap();
        match s.step {
            Step::SaveRestore { dir: Some(d), timeout } => {
                assert_eq!((d.as_str(), timeout), ("/var/tmp", Duration::from_secs(30)))
            }
            o => panic!("{o:?}"),
        }
        assert!(step("do = \"save-restore\"\nmapped-ram = true").is_err());
        let s = step("do = \"start-postcopy\"\nprecopy-may-win = true").unwrap();
        assert!(matches!(s.step, Step::StartPostcopy { precopy_may_win: true }));
        let s = step("do = \"start-postcopy\"").unwrap();
        assert!(matches!(s.step, Step::StartPostcopy { precopy_may_win: false }));
        let s = step("do = \"set-parameters\"\nparameters = { max-bandwidth = \"1K\" }").unwrap();
        match s.step {
            Step::SetParameters { parameters, .. } => {
                assert_eq!(parameters["max-bandwidth"], 1024)
            }
            o => panic!("{o:?}"),
        }
    }
}
