//! One migration between a source and a destination VM, as primitives shared
//! by the verified flow, scenarios and the bench: capabilities, parameters,
//! start, the one status sampler (recording [`Sample`]s), postcopy, pause,
//! recover, cancel.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::drive::recorder::Route;
use crate::qmp::{MigrationStatus, PassProgress, StatusWait};
use crate::vm::dest::{listen_tcp, recover_tcp, DestKind};
use crate::vm::procs::{free_tcp_port, unique_name, PathGuard};
use crate::vm::qemu::QemuVm;

/// How often the sampler queries both sides.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// Default time limit of pause/recover waits.
pub const RECOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// The status a sample carries when `query-migrate` failed on a live process.
pub const QUERY_FAILED: &str = "unknown";

/// Which VM(s) a command goes to (also the `side` of scenario steps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    Source,
    Dest,
    Both,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Dest => "destination",
            Side::Both => "both",
        }
    }

    /// The single sides this one stands for (`both` = source, then destination).
    pub fn each(self) -> Vec<Side> {
        match self {
            Side::Both => vec![Side::Source, Side::Dest],
            s => vec![s],
        }
    }
}

/// A `query-migrate` sample of both sides.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub t_ms: u64,
    pub source: Value,
    pub dest: Value,
}

/// A deliberately failed first recovery attempt before the real one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoverFault {
    /// A junk connection to the destination's recovery address: the
    /// destination must fall back to `postcopy-paused`.
    Handshake,
    /// `migrate resume=true` to a dead address: the source must fall back.
    Reconnect,
}

impl RecoverFault {
    /// The name scenario files use (`recover` step, `fail = "..."`).
    pub fn as_str(self) -> &'static str {
        match self {
            RecoverFault::Handshake => "handshake",
            RecoverFault::Reconnect => "reconnect",
        }
    }
}

/// A bounded wait on both sides' statuses expired: the migration stalled
/// (neither reached what was awaited nor failed). Typed so that callers
/// (`crossmig soak`, the suite's retry rule) tell a stall from a failure.
#[derive(Clone, Debug, thiserror::Error)]
#[error("timed out after {timeout:?}: source {source_status}, destination {dest_status}")]
pub struct WaitExpired {
    pub timeout: Duration,
    pub source_status: MigrationStatus,
    pub dest_status: MigrationStatus,
}

/// A status wait that can no longer succeed: an awaited side stayed for
/// [`DEAD_END_GRACE`] in a status the migration does not leave by itself
/// (e.g. `completed` while `postcopy-paused` is awaited: a fault that came
/// after the migration ended). Ends the wait at once instead of at its
/// timeout; typed so that it is never taken for a stall.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{side} stayed {status} while waiting for {want}, which it cannot reach any more (source {source_status}, destination {dest_status})")]
pub struct WaitDeadEnd {
    pub side: &'static str,
    pub status: MigrationStatus,
    pub want: String,
    pub source_status: MigrationStatus,
    pub dest_status: MigrationStatus,
}

/// How long an awaited side must stay in a dead-end status before a wait
/// gives up ([`WaitDeadEnd`]); a new `migrate` leaves `completed` or
/// `cancelled` well within it.
pub const DEAD_END_GRACE: Duration = Duration::from_secs(2);

/// What ended a [`Migration::wait_until`].
#[derive(Clone, Debug)]
pub enum WaitDone {
    Status { source: MigrationStatus, dest: MigrationStatus },
    Passes { done: u64, progress: PassProgress },
}

impl fmt::Display for WaitDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitDone::Status { source, dest } => write!(f, "source {source}, destination {dest}"),
            WaitDone::Passes { done, progress } => write!(f, "{done} pass(es) ({progress})"),
        }
    }
}

fn desc_or_null(v: &Value) -> Value {
    v.get("error-desc").cloned().unwrap_or(Value::Null)
}

/// Did the sampler fail to query this side (its process still running)?
pub fn query_failed(v: &Value) -> bool {
    MigrationStatus::of(v) == QUERY_FAILED
}

/// A migration from `src` into `dst` (both owned; dropped = killed).
pub struct Migration {
    pub src: QemuVm,
    pub dst: QemuVm,
    pub dest_kind: DestKind,
    pub route: Route,
    /// Listen on unix sockets instead of TCP (`migrate`, `recover`).
    pub unix: bool,
    /// Files of this migration (unix sockets, saved streams), removed when
    /// it is dropped.
    pub guards: Vec<PathGuard>,
    t0: Instant,
    samples: Vec<Sample>,
}

impl Migration {
    pub fn new(src: QemuVm, dst: QemuVm, dest_kind: DestKind) -> Migration {
        Migration {
            src,
            dst,
            dest_kind,
            route: Route::Direct,
            unix: false,
            guards: Vec::new(),
            t0: Instant::now(),
            samples: Vec::new(),
        }
    }

    pub fn vms(&self, side: Side) -> Vec<&QemuVm> {
        match side {
            Side::Source => vec![&self.src],
            Side::Dest => vec![&self.dst],
            Side::Both => vec![&self.src, &self.dst],
        }
    }

    fn vm(&self, side: Side) -> &QemuVm {
        if side == Side::Dest {
            &self.dst
        } else {
            &self.src
        }
    }

    /// Run a QMP command on one or both sides.
    pub async fn execute(&self, side: Side, cmd: &str, args: Value) -> Result<()> {
        for s in side.each() {
            self.vm(s)
                .execute(cmd, args.clone())
                .await
                .with_context(|| format!("{} {cmd}", s.name()))?;
        }
        Ok(())
    }

    /// `migrate-set-capabilities` on one or both sides.
    pub async fn set_capabilities(&self, side: Side, caps: &[(&str, bool)]) -> Result<()> {
        for s in side.each() {
            self.vm(s)
                .qmp
                .set_capabilities(caps)
                .await
                .with_context(|| format!("{} migrate-set-capabilities", s.name()))?;
        }
        Ok(())
    }

    /// `migrate-set-parameters` on one or both sides.
    pub async fn set_parameters(&self, side: Side, params: &Value) -> Result<()> {
        for s in side.each() {
            self.vm(s)
                .qmp
                .set_parameters(params.clone())
                .await
                .with_context(|| format!("{} migrate-set-parameters", s.name()))?;
        }
        Ok(())
    }

    pub async fn stop(&self, side: Side) -> Result<()> {
        self.execute(side, "stop", Value::Null).await
    }

    pub async fn cont(&self, side: Side) -> Result<()> {
        self.execute(side, "cont", Value::Null).await
    }

    /// `migrate-incoming tcp:127.0.0.1:<free port>` on the destination.
    pub async fn listen(&self) -> Result<u16> {
        listen_tcp(&self.dst).await.context("destination migrate-incoming")
    }

    /// Wait until the destination listens (see [`wait_incoming_listening`]).
    pub async fn wait_listening(&self) -> Result<()> {
        wait_incoming_listening(&self.dst).await
    }

    /// `migrate` on the source to `uri`; the sampler's clock starts here.
    pub async fn start(&mut self, uri: &str) -> Result<()> {
        self.t0 = Instant::now();
        self.src.execute("migrate", json!({ "uri": uri })).await.context("source migrate")?;
        Ok(())
    }

    /// `migrate-incoming URI` on the destination (a stream saved to a
    /// file); the sampler's clock restarts here.
    pub async fn incoming(&mut self, uri: &str) -> Result<()> {
        self.t0 = Instant::now();
        self.dst
            .execute("migrate-incoming", json!({ "uri": uri }))
            .await
            .context("destination migrate-incoming")?;
        Ok(())
    }

    /// Restart the sampler's clock (a migration started by other means).
    pub fn reset_clock(&mut self) {
        self.t0 = Instant::now();
    }

    /// A new unix socket path for the destination to listen on (removed
    /// with the migration).
    pub fn unix_uri(&mut self) -> String {
        let p = std::env::temp_dir().join(format!("{}.sock", unique_name("mig")));
        self.guards.push(PathGuard::new(&p));
        format!("unix:{}", p.display())
    }

    /// [`listen`](Self::listen), optionally [`wait_listening`](Self::wait_listening),
    /// then [`start`](Self::start) through the [`Route`] (with
    /// [`unix`](Self::unix): straight to a unix socket). Returns the
    /// source's URI.
    pub async fn migrate(&mut self, wait_listening: bool) -> Result<String> {
        if self.unix {
            let uri = self.unix_uri();
            self.dst
                .execute("migrate-incoming", json!({ "uri": uri }))
                .await
                .context("destination migrate-incoming")?;
            if wait_listening {
                self.wait_listening().await?;
            }
            self.start(&uri).await?;
            return Ok(uri);
        }
        let port = self.listen().await?;
        if wait_listening {
            self.wait_listening().await?;
        }
        let uri = self.route.uri_for(port).await?;
        self.start(&uri).await?;
        Ok(uri)
    }

    pub async fn start_postcopy(&self) -> Result<()> {
        self.src
            .execute("migrate-start-postcopy", Value::Null)
            .await
            .context("migrate-start-postcopy")?;
        Ok(())
    }

    /// `migrate_cancel` on the source.
    pub async fn cancel(&self) -> Result<()> {
        self.src.execute("migrate_cancel", Value::Null).await?;
        Ok(())
    }

    /// SIGKILL one or both processes.
    pub fn kill(&mut self, side: Side) {
        if side != Side::Dest {
            self.src.child.kill();
        }
        if side != Side::Source {
            self.dst.child.kill();
        }
    }

    /// `migrate-pause` on one or both sides.
    pub async fn pause(&self, side: Side) -> Result<()> {
        self.execute(side, "migrate-pause", Value::Null).await
    }

    // ------------------------------------------------------------------
    // the sampler

    /// Time since [`start`](Self::start).
    pub fn elapsed(&self) -> Duration {
        self.t0.elapsed()
    }

    /// `query-migrate` on a side; a process that exited (QEMU's
    /// exit-on-error) reads as `failed` with its log tail as error-desc, a
    /// failed query on a live process as [`QUERY_FAILED`].
    pub async fn query(&self, side: Side) -> Value {
        let vm = self.vm(side);
        match vm.qmp.query_migrate().await {
            Ok(v) => v,
            Err(e) => {
                if !vm.child.is_running() {
                    json!({"status": "failed", "error-desc": format!("process exited: {}", vm.log_tail(600).trim())})
                } else {
                    json!({"status": QUERY_FAILED, "error-desc": format!("query-migrate: {e:#}")})
                }
            }
        }
    }

    /// Query both sides and record the [`Sample`].
    pub async fn sample(&mut self) -> (Value, Value) {
        let s = self.query(Side::Source).await;
        let d = self.query(Side::Dest).await;
        self.samples.push(Sample {
            t_ms: self.t0.elapsed().as_millis() as u64,
            source: s.clone(),
            dest: d.clone(),
        });
        (s, d)
    }

    /// RAM passes completed, by a source reply (see [`PassProgress`]).
    pub fn passes(&self, source: &Value) -> u64 {
        PassProgress::of(source).passes()
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    pub fn take_samples(&mut self) -> Vec<Sample> {
        std::mem::take(&mut self.samples)
    }

    /// Sample every 20 ms until `status` holds on `side` (both, for
    /// [`Side::Both`]) or the source completed `passes` RAM passes. A side
    /// reaching one of `status.fail_on` ends the wait with an error, as does
    /// the source leaving precopy before the passes are done.
    pub async fn wait_until(
        &mut self,
        side: Side,
        status: Option<&StatusWait>,
        passes: Option<u64>,
        timeout: Duration,
    ) -> Result<WaitDone> {
        let deadline = Instant::now() + timeout;
        // Since when each side (source, destination) sits in a dead end.
        let mut dead_since: [Option<Instant>; 2] = [None, None];
        loop {
            let (s, d) = self.sample().await;
            let (ss, ds) = (MigrationStatus::of(&s), MigrationStatus::of(&d));
            if let Some(w) = status {
                let done = match side {
                    Side::Source => w.reached(&ss),
                    Side::Dest => w.reached(&ds),
                    Side::Both => w.reached(&ss) && w.reached(&ds),
                };
                if done {
                    return Ok(WaitDone::Status { source: ss, dest: ds });
                }
                let awaited: Vec<(&str, &MigrationStatus, &Value)> = match side {
                    Side::Source => vec![("source", &ss, &s)],
                    Side::Dest => vec![("destination", &ds, &d)],
                    Side::Both => vec![("source", &ss, &s), ("destination", &ds, &d)],
                };
                let want = w.goal_names().join("|");
                for (n, st, v) in awaited {
                    if w.failed(st) {
                        if *st == MigrationStatus::Failed {
                            bail!("{n} failed while waiting for {want}: {}", desc_or_null(v));
                        }
                        bail!("{n} reached {st} while waiting for {want}: {}", desc_or_null(v));
                    }
                    let since = &mut dead_since[usize::from(n != "source")];
                    if !w.dead_end(st) {
                        *since = None;
                    } else if since.get_or_insert_with(Instant::now).elapsed() >= DEAD_END_GRACE {
                        return Err(WaitDeadEnd {
                            side: n,
                            status: st.clone(),
                            want,
                            source_status: ss,
                            dest_status: ds,
                        }
                        .into());
                    }
                }
            }
            if let Some(n) = passes {
                let progress = PassProgress::of(&s);
                let done = progress.passes();
                if done >= n {
                    return Ok(WaitDone::Passes { done, progress });
                }
                if ss != MigrationStatus::Active && ss != MigrationStatus::Setup {
                    bail!("source left precopy ({ss}) after {done} of {n} passes ({progress})");
                }
            }
            if Instant::now() > deadline {
                return Err(WaitExpired { timeout, source_status: ss, dest_status: ds }.into());
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    /// [`wait_until`](Self::wait_until) a status.
    pub async fn wait_status(
        &mut self,
        side: Side,
        status: &StatusWait,
        timeout: Duration,
    ) -> Result<WaitDone> {
        self.wait_until(side, Some(status), None, timeout).await
    }

    /// [`wait_until`](Self::wait_until) `n` RAM passes.
    pub async fn wait_passes(&mut self, n: u64, timeout: Duration) -> Result<WaitDone> {
        self.wait_until(Side::Source, None, Some(n), timeout).await
    }

    // ------------------------------------------------------------------
    // postcopy recovery

    /// Wait until both sides are `postcopy-paused` (after [`pause`](Self::pause)).
    pub async fn wait_paused(&mut self, timeout: Duration) -> Result<WaitDone> {
        let w = StatusWait::until([MigrationStatus::PostcopyPaused])
            .failing_on([MigrationStatus::Failed, MigrationStatus::Completed]);
        self.wait_status(Side::Both, &w, timeout).await
    }

    /// Recover a paused postcopy: `migrate-recover` on the destination (a
    /// new listening address, sent out-of-band like QEMU's own tests and
    /// libvirt do), `migrate resume=true` on the source through the
    /// [`Route`], and wait until both run again. `fault` first makes one
    /// recovery attempt fail on purpose. Returns a detail line.
    pub async fn recover(&mut self, fault: Option<RecoverFault>) -> Result<String> {
        let to = RECOVER_TIMEOUT;
        let mut detail = String::new();
        let paused = StatusWait::until([MigrationStatus::PostcopyPaused])
            .failing_on([MigrationStatus::Failed, MigrationStatus::Completed]);
        match fault {
            Some(RecoverFault::Handshake) => {
                let port = recover_tcp(&self.dst).await.context("destination migrate-recover")?;
                let cursor = self.dst.qmp.event_cursor();
                {
                    use tokio::io::AsyncWriteExt;
                    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                    s.write_all(&[wire::consts::QEMU_VM_COMMAND]).await?;
                }
                // The destination must take the connection as its recovery
                // channel (postcopy-recover) and fall back. (QEMU 11.1 never
                // adopts a connection that sends a single byte, so for a QEMU
                // destination this is optional.)
                let rust = self.dest_kind == DestKind::Rust;
                let adopted = self
                    .dst
                    .qmp
                    .wait_event_from(
                        cursor,
                        |e| e.migration_status() == Some(MigrationStatus::PostcopyRecover),
                        if rust { to } else { Duration::from_secs(3) },
                    )
                    .await;
                if rust {
                    adopted.context(
                        "destination taking the junk connection as its recovery channel",
                    )?;
                } else if adopted.is_err() {
                    detail += "(QEMU did not adopt the junk connection) ";
                }
                self.wait_status(Side::Dest, &paused, to)
                    .await
                    .context("destination back in postcopy-paused after the failed handshake")?;
                detail += "destination paused again after a failed handshake; ";
            }
            Some(RecoverFault::Reconnect) => {
                let dead = free_tcp_port();
                self.src
                    .execute(
                        "migrate",
                        json!({ "uri": format!("tcp:127.0.0.1:{dead}"), "resume": true }),
                    )
                    .await
                    .ok();
                self.wait_status(Side::Source, &paused, to)
                    .await
                    .context("source back in postcopy-paused after the failed reconnect")?;
                detail += "source paused again after a failed reconnect; ";
            }
            None => {}
        }
        if self.unix {
            if fault.is_some() {
                bail!("a failing recovery attempt is only scripted over tcp");
            }
            let uri = self.unix_uri();
            self.dst
                .execute("migrate-recover", json!({ "uri": uri }))
                .await
                .context("destination migrate-recover")?;
            self.src
                .execute("migrate", json!({ "uri": uri, "resume": true }))
                .await
                .context("source migrate resume=true")?;
            let resumed =
                StatusWait::until([MigrationStatus::PostcopyActive, MigrationStatus::Completed]);
            self.wait_status(Side::Both, &resumed, to).await.context("resuming")?;
            return Ok(format!("{detail}resumed via {uri}"));
        }
        let port = recover_tcp(&self.dst).await.context("destination migrate-recover")?;
        let uri = self.route.uri_for(port).await?;
        self.src
            .execute("migrate", json!({ "uri": uri, "resume": true }))
            .await
            .context("source migrate resume=true")?;
        let resumed =
            StatusWait::until([MigrationStatus::PostcopyActive, MigrationStatus::Completed]);
        self.wait_status(Side::Both, &resumed, to).await.context("resuming")?;
        Ok(format!("{detail}resumed via {uri}"))
    }

    /// Log tails of both processes, for error messages.
    pub fn log_tails(&self, src_bytes: usize, dst_bytes: usize) -> String {
        format!(
            "--- source log tail ---\n{}\n--- destination ({}) log tail ---\n{}",
            self.src.log_tail(src_bytes),
            self.dest_kind.name(),
            self.dst.log_tail(dst_bytes)
        )
    }

    /// QMP `quit` both (destination first); files are removed.
    pub async fn quit(self) {
        let Migration { src, dst, route, .. } = self;
        drop(route);
        let _ = dst.quit().await;
        let _ = src.quit().await;
    }
}

/// Wait until a destination listens after `migrate-incoming`: status
/// `setup` (QEMU 8+, rust-dest), or QEMU 7.2's status-less reply that only
/// lists its `socket-address`.
pub async fn wait_incoming_listening(dst: &QemuVm) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = dst.qmp.query_migrate().await?;
        let st = MigrationStatus::of(&v);
        if st == MigrationStatus::Setup
            || (st == MigrationStatus::None && v.get("socket-address").is_some())
        {
            return Ok(());
        }
        if st == MigrationStatus::Failed {
            bail!("destination failed after migrate-incoming: {v}");
        }
        if Instant::now() > deadline {
            bail!("destination is not listening 10 s after migrate-incoming: {v}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `error-desc` of a reply formatted as ` ("…")`, or nothing.
pub fn desc_suffix(v: &Value) -> String {
    v.get("error-desc").map(|e| format!(" ({e})")).unwrap_or_default()
}

/// The number at `path` in a QMP reply (`u64_at(v, &["ram", "transferred"])`),
/// 0 where it is absent or not a number.
pub fn u64_at(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |x, p| &x[*p]).as_u64().unwrap_or(0)
}
