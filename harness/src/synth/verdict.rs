//! How a destination ended ([`Verdict`]): polled from its `query-migrate`
//! and its log after a script was played.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::qmp::{error_desc, MigrationStatus};
use crate::vm::qemu::QemuVm;

/// The three ways a destination ends: what destinations are compared on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VerdictKind {
    Completed,
    Failed,
    /// The process died of a signal (an abort or a crash), not a clean
    /// migration failure.
    Crashed,
    /// Neither within the timeout.
    Stuck,
}

impl VerdictKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Completed => "completed",
            VerdictKind::Failed => "failed",
            VerdictKind::Crashed => "crashed",
            VerdictKind::Stuck => "stuck",
        }
    }
}

impl std::fmt::Display for VerdictKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the destination ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Completed,
    /// `query-migrate` said failed, or the process exited; the error text.
    Failed(String),
    /// The process was killed by a signal it did not get from the harness
    /// (e.g. SIGABRT from a failed assertion in QEMU).
    Crashed {
        /// The signal's name, e.g. "SIGABRT".
        signal: String,
        /// The last lines of its log.
        detail: String,
    },
    /// Neither within the timeout (e.g. `postcopy-paused`, or still waiting).
    Stuck {
        /// The last status `query-migrate` reported (None: it never answered).
        status: Option<MigrationStatus>,
        detail: String,
    },
}

impl Verdict {
    pub fn kind(&self) -> VerdictKind {
        match self {
            Verdict::Completed => VerdictKind::Completed,
            Verdict::Failed(_) => VerdictKind::Failed,
            Verdict::Crashed { .. } => VerdictKind::Crashed,
            Verdict::Stuck { .. } => VerdictKind::Stuck,
        }
    }
    pub fn error(&self) -> &str {
        match self {
            Verdict::Completed => "",
            Verdict::Failed(e) => e,
            Verdict::Crashed { detail, .. } => detail,
            Verdict::Stuck { detail, .. } => detail,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Completed => write!(f, "COMPLETED"),
            Verdict::Failed(e) => write!(f, "FAILED: {e}"),
            Verdict::Crashed { signal, detail } => write!(f, "CRASHED ({signal}): {detail}"),
            Verdict::Stuck { status, detail } => {
                let status = status.as_ref().map(MigrationStatus::as_str).unwrap_or("?");
                write!(f, "STUCK in '{status}': {detail}")
            }
        }
    }
}

/// Remove ANSI escape sequences (rust-dest's coloured tracing output).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            if it.peek() == Some(&'[') {
                it.next();
                for d in it.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The last `n` non-empty lines of a destination log, joined with " | ".
pub fn log_lines(tail: &str, n: usize) -> String {
    let t = strip_ansi(tail);
    let l: Vec<&str> = t.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    l[l.len().saturating_sub(n)..].join(" | ")
}

/// The last `n` log lines that mention an error.
pub fn log_error_lines(tail: &str, n: usize) -> String {
    let t = strip_ansi(tail);
    let l: Vec<&str> =
        t.lines().map(str::trim).filter(|l| l.to_lowercase().contains("error")).collect();
    l[l.len().saturating_sub(n)..].join(" | ")
}

/// Poll `query-migrate` until `completed`/`failed` or the process exits.
pub async fn await_verdict(vm: &QemuVm, timeout: Duration) -> Verdict {
    let deadline = Instant::now() + timeout;
    let mut last_status: Option<MigrationStatus> = None;
    let mut last_desc: String;
    let exited = |vm: &QemuVm| {
        let tail = vm.log_tail(4000);
        match vm.child.killed_by() {
            Some(sig) => {
                Verdict::Crashed { signal: sig.as_str().into(), detail: log_lines(&tail, 6) }
            }
            None => Verdict::Failed(format!("destination process exited: {}", log_lines(&tail, 6))),
        }
    };
    loop {
        if !vm.child.is_running() {
            return exited(vm);
        }
        match vm.qmp.execute_timeout("query-migrate", Value::Null, Duration::from_secs(3)).await {
            Ok(v) => {
                let status = MigrationStatus::of(&v);
                last_desc = error_desc(&v).unwrap_or("").to_string();
                match status {
                    MigrationStatus::Completed => return Verdict::Completed,
                    MigrationStatus::Failed => {
                        let logs = log_error_lines(&vm.log_tail(4000), 3);
                        return Verdict::Failed(if logs.is_empty() {
                            last_desc
                        } else {
                            format!("{last_desc} [log: {logs}]")
                        });
                    }
                    _ => {}
                }
                last_status = Some(status);
            }
            Err(e) => {
                // QMP gone: the process is exiting.
                for _ in 0..50 {
                    if !vm.child.is_running() {
                        return exited(vm);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                last_desc = format!("query-migrate: {e}");
            }
        }
        if Instant::now() >= deadline {
            return Verdict::Stuck {
                status: last_status,
                detail: format!("{last_desc} [log: {}]", log_lines(&vm.log_tail(2000), 3)),
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
