//! Migration commands on one monitor: `query-migrate` and `query-status` as
//! types, capabilities and parameters, and the wait for a migration status.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::client::Qmp;
use super::status::{MigrationStatus, RunState};

/// How often [`Qmp::wait_migration_status`] polls `query-migrate`.
pub const STATUS_POLL: Duration = Duration::from_millis(15);

/// What a wait for a migration status is for: the statuses that end it
/// successfully (`goals`) and those that end it with an error (`fail_on`).
/// Judged the same way by [`Qmp::wait_migration_status`] (one monitor) and
/// the two-sided sampler in `drive::session`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusWait {
    pub goals: Vec<MigrationStatus>,
    pub fail_on: Vec<MigrationStatus>,
}

impl StatusWait {
    /// Wait for any of `goals`; `failed` ends the wait unless it is a goal.
    pub fn until(goals: impl IntoIterator<Item = MigrationStatus>) -> StatusWait {
        let goals: Vec<MigrationStatus> = goals.into_iter().collect();
        let fail_on = if goals.contains(&MigrationStatus::Failed) {
            Vec::new()
        } else {
            vec![MigrationStatus::Failed]
        };
        StatusWait { goals, fail_on }
    }

    /// Replace the statuses that end the wait with an error.
    pub fn failing_on(mut self, fail_on: impl IntoIterator<Item = MigrationStatus>) -> StatusWait {
        self.fail_on = fail_on.into_iter().collect();
        self
    }

    /// Parse `"a|b|c"` (scenario files) strictly.
    pub fn parse_any(alternatives: &str) -> Result<StatusWait, String> {
        let goals = alternatives
            .split('|')
            .map(|s| s.trim().parse::<MigrationStatus>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StatusWait::until(goals))
    }

    pub fn reached(&self, st: &MigrationStatus) -> bool {
        self.goals.contains(st)
    }

    pub fn failed(&self, st: &MigrationStatus) -> bool {
        self.fail_on.contains(st)
    }

    /// A status from which no goal can be reached any more: one the
    /// migration does not leave by itself (completed, failed, cancelled)
    /// that is neither a goal nor a failure of this wait.
    pub fn dead_end(&self, st: &MigrationStatus) -> bool {
        st.is_terminal() && !self.reached(st) && !self.failed(st)
    }

    /// The goals as QEMU spells them (`["postcopy-active", "completed"]`).
    pub fn goal_names(&self) -> Vec<&str> {
        self.goals.iter().map(MigrationStatus::as_str).collect()
    }
}

/// How far the source's RAM passes got, from one source `query-migrate`
/// reply: the pages it has dealt with so far (`ram.normal` + `ram.duplicate`,
/// counted from the start of the migration) against the pages of all its
/// RAMBlocks (`ram.total` / `ram.page-size`).
///
/// [`passes`](Self::passes) is `floor(pages / ram_pages)`. A pass (one round
/// of the source's dirty-page search over every RAMBlock, `migration/ram.c`)
/// deals with each page at most once, so N × `ram_pages` pages mean at least
/// N complete passes on every version: exactly one for N = 1, and for N > 1
/// more real passes when later passes resend only part of RAM. The source's
/// `ram.dirty-sync-count` is no pass count: 11.1 with `postcopy-ram` syncs
/// the dirty bitmap about every 100 ms within the first pass (see
/// `docs/qemu-versions-verified.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassProgress {
    /// `ram.normal` + `ram.duplicate`.
    pub pages: u64,
    /// `ram.total` / `ram.page-size` (0 before the source reports it).
    pub ram_pages: u64,
    /// `ram.dirty-sync-count`, for reports only.
    pub dirty_sync_count: u64,
}

impl PassProgress {
    pub fn of(source: &Value) -> PassProgress {
        let ram = &source["ram"];
        let n = |k: &str| ram[k].as_u64().unwrap_or(0);
        let page_size = n("page-size").max(1);
        PassProgress {
            pages: n("normal") + n("duplicate"),
            ram_pages: n("total") / page_size,
            dirty_sync_count: n("dirty-sync-count"),
        }
    }

    /// Complete passes (0 while `ram.total` is unknown).
    pub fn passes(&self) -> u64 {
        self.pages.checked_div(self.ram_pages).unwrap_or(0)
    }
}

impl std::fmt::Display for PassProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} pages sent of {} per pass, dirty-sync-count {}",
            self.pages, self.ram_pages, self.dirty_sync_count
        )
    }
}

/// `error-desc` of a `query-migrate` reply, if any.
pub fn error_desc(v: &Value) -> Option<&str> {
    v.get("error-desc").and_then(Value::as_str)
}

impl Qmp {
    /// `query-migrate`, untyped (tolerant of unknown status values).
    pub async fn query_migrate(&self) -> Result<Value> {
        Ok(self.execute("query-migrate", Value::Null).await?)
    }

    /// The `status` member of `query-migrate` (`none` if absent).
    pub async fn migration_status(&self) -> Result<MigrationStatus> {
        Ok(MigrationStatus::of(&self.query_migrate().await?))
    }

    /// `query-status` → the run state (`running`, `paused`, `postmigrate`, ...).
    pub async fn run_state(&self) -> Result<RunState> {
        let v = self.execute("query-status", Value::Null).await?;
        Ok(RunState::from(v.get("status").and_then(Value::as_str).unwrap_or("unknown")))
    }

    /// Poll `query-migrate` every 15 ms until its status is one of `goals`
    /// (returns the reply), or one of `fail_on` (error), or `timeout`
    /// expires (error). Errors name the last status and `error-desc`.
    /// Accepts [`MigrationStatus`] values or QEMU's spelling.
    pub async fn wait_migration_status<G, F>(
        &self,
        goals: &[G],
        fail_on: &[F],
        timeout: Duration,
    ) -> Result<Value>
    where
        G: Clone + Into<MigrationStatus>,
        F: Clone + Into<MigrationStatus>,
    {
        let wait = StatusWait {
            goals: goals.iter().cloned().map(Into::into).collect(),
            fail_on: fail_on.iter().cloned().map(Into::into).collect(),
        };
        self.wait_for(&wait, timeout).await
    }

    /// [`wait_migration_status`](Self::wait_migration_status) for a [`StatusWait`].
    pub async fn wait_for(&self, wait: &StatusWait, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let goals = wait.goal_names();
        loop {
            let v = self.query_migrate().await?;
            let status = MigrationStatus::of(&v);
            if wait.reached(&status) {
                return Ok(v);
            }
            let desc = error_desc(&v);
            if wait.failed(&status) {
                bail!(
                    "migration on {} reached status '{status}' (waiting for {goals:?}){}",
                    self.path().display(),
                    desc.map(|d| format!(": {d}")).unwrap_or_default()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for migration status {goals:?} on {}; last status '{status}'{}",
                    self.path().display(),
                    desc.map(|d| format!(", error-desc: {d}")).unwrap_or_default()
                );
            }
            tokio::time::sleep(STATUS_POLL).await;
        }
    }

    /// `migrate-set-capabilities` with `[(name, state)]`.
    pub async fn set_capabilities(&self, caps: &[(&str, bool)]) -> Result<()> {
        let caps: Vec<Value> =
            caps.iter().map(|(c, s)| json!({ "capability": c, "state": s })).collect();
        self.execute("migrate-set-capabilities", json!({ "capabilities": caps })).await?;
        Ok(())
    }

    /// `migrate-set-parameters` with the given object.
    pub async fn set_parameters(&self, params: Value) -> Result<()> {
        self.execute("migrate-set-parameters", params).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_wait() {
        let w = StatusWait::parse_any("postcopy-active | completed").unwrap();
        assert!(w.reached(&MigrationStatus::Completed));
        assert!(w.failed(&MigrationStatus::Failed));
        assert_eq!(w.goal_names(), ["postcopy-active", "completed"]);
        assert!(StatusWait::until([MigrationStatus::Failed]).fail_on.is_empty());
        assert!(StatusWait::parse_any("done").is_err());
    }

    /// The hang of issue 14 (hugepage recovery from 11.1): the cut came
    /// after both sides completed, and the wait for `postcopy-paused` ran
    /// into its 120 s timeout. `completed` is a dead end for that wait.
    #[test]
    fn dead_ends() {
        use MigrationStatus as S;
        let paused = StatusWait::until([S::PostcopyPaused]);
        assert!(paused.dead_end(&S::Completed));
        assert!(paused.dead_end(&S::Cancelled));
        // `failed` ends the wait as a failure, not as a dead end.
        assert!(!paused.dead_end(&S::Failed) && paused.failed(&S::Failed));
        for st in [S::PostcopyActive, S::PostcopyDevice, S::PostcopyRecover, S::Active, S::None] {
            assert!(!paused.dead_end(&st), "{st}");
        }
        // A goal is never a dead end.
        assert!(!StatusWait::until([S::Completed]).dead_end(&S::Completed));
        assert!(!StatusWait::until([S::Failed]).dead_end(&S::Failed));
    }

    /// A QEMU 11.1.3 source with `postcopy-ram`, 256 MiB guest, 67 ms into
    /// the first pass: dirty-sync-count already went 2 → 3 (it counted as
    /// one pass before), with 36 MB of 268 MB sent.
    #[test]
    fn passes_count_pages_not_syncs() {
        let early = json!({"status": "active", "ram": {"dirty-sync-count": 3, "normal": 8927,
            "duplicate": 223, "page-size": 4096, "total": 268967936u64, "transferred": 36511446}});
        let p = PassProgress::of(&early);
        assert_eq!((p.pages, p.ram_pages, p.passes()), (9150, 65666, 0));
        // The end of the first pass (sync 9, 11.1; sync 2 on 7.2 and 10.0).
        let one = json!({"ram": {"dirty-sync-count": 9, "normal": 30517, "duplicate": 40205,
            "page-size": 4096, "total": 268967936u64}});
        assert_eq!(PassProgress::of(&one).passes(), 1);
        let five = json!({"ram": {"normal": 255926, "duplicate": 72405, "page-size": 4096,
            "total": 268967936u64}});
        assert_eq!(PassProgress::of(&five).passes(), 5);
        // Setup: nothing reported yet.
        assert_eq!(PassProgress::of(&json!({"status": "setup"})).passes(), 0);
    }
}
