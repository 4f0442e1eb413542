//! Steps of migration scenarios: the typed form of `[[steps]]` tables.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Which side a step acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    Source,
    Dest,
    Both,
}

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
    /// SIGKILL the process of `side`.
    Kill,
}

/// Proxy options of a `migrate` step.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProxyOpts {
    /// Pause forwarding (source→destination) once this many bytes passed, e.g. "64M".
    pub stall_at: Option<String>,
    /// How long the stall lasts, e.g. "2s".
    pub stall_for: Option<String>,
    /// Forward at most this many bytes per second, e.g. "20M".
    pub throttle: Option<String>,
    /// Cut the main connection after this many bytes, e.g. "100M".
    pub cut_at: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(
    tag = "do",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case",
    deny_unknown_fields
)]
pub enum Step {
    /// `migrate-incoming` on the destination, `migrate` on the source.
    Migrate {
        /// Route through the harness's proxy (needed for `fault` steps).
        #[serde(default)]
        proxy: Option<ProxyOpts>,
    },
    /// Wait for a status, a number of RAM passes, a time, or a serial marker.
    Wait {
        /// One status or several separated by `|`.
        status: Option<String>,
        #[serde(default = "both")]
        side: Side,
        passes: Option<u64>,
        time: Option<String>,
        serial: Option<String>,
        timeout: Option<String>,
    },
    StartPostcopy {},
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
    /// `migrate_cancel` on the source.
    Cancel {},
    Fault {
        fault: FaultKind,
        #[serde(default = "source")]
        side: Side,
    },
    /// `migrate-pause` on `side` (postcopy).
    Pause {
        #[serde(default = "source")]
        side: Side,
    },
    /// `migrate-recover` on the destination and `migrate resume=true` on the
    /// source; waits until both are back in postcopy-active (or completed).
    /// With `fail`, a failing attempt comes first, as in QEMU's own
    /// double-failure tests: "handshake" (the recovery connection to the
    /// destination sends one command byte and closes) or "reconnect" (the
    /// source resumes towards an address where nothing listens); both sides
    /// must be `postcopy-paused` again before the real recovery.
    Recover {
        fail: Option<String>,
    },
    /// Assert on `query-migrate` of `side`.
    Expect {
        #[serde(default = "both")]
        side: Side,
        status: Option<String>,
        /// Regex on `error-desc`.
        error: Option<String>,
        /// Dotted path into query-migrate, e.g. "ram.postcopy-requests" or
        /// "x-crossmig.discard-commands".
        counter: Option<String>,
        /// One of == != > >= < <=.
        op: Option<String>,
        value: Option<i64>,
    },
    /// Compare guest RAM page by page (source file vs destination file; on
    /// rust-dest also its QMP digests), and the guest's own invariant.
    CheckMemory {
        /// Check the sweep guest's invariant on the destination copy (default true).
        invariant: Option<bool>,
    },
}

/// A parsed step with its `when` filter.
#[derive(Clone, Debug)]
pub struct StepSpec {
    pub step: Step,
    pub when: Option<toml::Table>,
}

pub fn parse_step(t: &toml::Table) -> Result<StepSpec, String> {
    let mut t = t.clone();
    let when = match t.remove("when") {
        None => None,
        Some(toml::Value::Table(w)) => Some(w),
        Some(_) => return Err("`when` must be a table of axis = value".into()),
    };
    let step = Step::deserialize(toml::Value::Table(t)).map_err(|e| e.message().to_string())?;
    match &step {
        Step::Wait { status, passes, time, serial, .. } => {
            let n = [status.is_some(), passes.is_some(), time.is_some(), serial.is_some()]
                .iter()
                .filter(|x| **x)
                .count();
            if n != 1 {
                return Err("wait needs exactly one of status, passes, time, serial".into());
            }
            if let Some(t) = time {
                super::file::parse_duration(t)?;
            }
        }
        Step::Expect { status, error, counter, op, value, .. } => {
            if status.is_none() && error.is_none() && counter.is_none() {
                return Err("expect needs status, error or counter".into());
            }
            if counter.is_some() && (op.is_none() || value.is_none()) {
                return Err("expect with counter needs op and value".into());
            }
            if let Some(o) = op {
                if !["==", "!=", ">", ">=", "<", "<="].contains(&o.as_str()) {
                    return Err(format!("expect: unknown op {o:?} (== != > >= < <=)"));
                }
            }
            if let Some(e) = error {
                regex::Regex::new(e).map_err(|er| format!("expect: bad regex {e:?}: {er}"))?;
            }
        }
        Step::Recover { fail: Some(f) } if f != "handshake" && f != "reconnect" => {
            return Err(format!("recover: fail must be \"handshake\" or \"reconnect\", not {f:?}"));
        }
        Step::Migrate { proxy: Some(p) } => {
            for s in [&p.stall_at, &p.throttle, &p.cut_at].into_iter().flatten() {
                wire::units::parse_size(s)?;
            }
            if let Some(d) = &p.stall_for {
                super::file::parse_duration(d)?;
            }
            if p.stall_at.is_some() != p.stall_for.is_some() {
                return Err("proxy: stall-at and stall-for go together".into());
            }
        }
        _ => {}
    }
    Ok(StepSpec { step, when })
}

impl Step {
    pub fn label(&self) -> String {
        match self {
            Step::Migrate { proxy } => {
                format!("migrate{}", if proxy.is_some() { " (proxy)" } else { "" })
            }
            Step::Wait { status: Some(s), side, .. } => format!("wait {side:?} status {s}"),
            Step::Wait { passes: Some(p), .. } => format!("wait {p} pass(es)"),
            Step::Wait { time: Some(t), .. } => format!("wait {t}"),
            Step::Wait { serial: Some(m), .. } => format!("wait serial {m:?}"),
            Step::Wait { .. } => "wait".into(),
            Step::StartPostcopy {} => "start-postcopy".into(),
            Step::Stop { side } => format!("stop {side:?}"),
            Step::Cont { side } => format!("cont {side:?}"),
            Step::SetParameters { side, .. } => format!("set-parameters {side:?}"),
            Step::SetCapabilities { side, .. } => format!("set-capabilities {side:?}"),
            Step::Cancel {} => "cancel".into(),
            Step::Fault { fault, side } => format!("fault {fault:?} {side:?}"),
            Step::Pause { side } => format!("pause {side:?}"),
            Step::Recover { fail: None } => "recover".into(),
            Step::Recover { fail: Some(f) } => format!("recover (after a failed {f})"),
            Step::Expect { side, status, error, counter, op, value } => {
                let mut s = format!("expect {side:?}");
                if let Some(st) = status {
                    s += &format!(" status {st}");
                }
                if let Some(e) = error {
                    s += &format!(" error ~ {e:?}");
                }
                if let (Some(c), Some(o), Some(v)) = (counter, op, value) {
                    s += &format!(" {c} {o} {v}");
                }
                s
            }
            Step::CheckMemory { .. } => "check-memory".into(),
        }
    }
}
