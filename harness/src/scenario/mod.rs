//! The scenario engine: scenario files (see `scenarios/README.md`) expanded
//! into variants and run against real QEMU.
//!
//! - `kind = "migration"`: a real QEMU source with a test guest, a
//!   destination (rust-dest or QEMU), and a list of steps (migrate, waits,
//!   postcopy switch, stop/cont, parameters, cancel, faults through the
//!   harness's proxy, pause/recover, expectations, memory checks).
//! - `kind = "stream"`: a scripted record sequence from the synthetic source,
//!   played into a real QEMU destination (the oracle) *and* rust-dest; both
//!   verdicts must match the expectation and each other.

pub mod file;
pub mod records;
pub mod runner;
pub mod steps;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::drive::migrate::Sample;
use crate::drive::proxy::{Proxy, ProxyHandle, ProxyPlan};
use crate::images::{self, Workload};
use crate::synth;
use crate::verify::guest;
use crate::verify::memory;
use crate::vm::dest::{start_dest, DestKind};
use crate::vm::procs::{free_tcp_port, unique_name, PathGuard};
use crate::vm::qemu::{QemuBinary, QemuVm, VmConfig};
pub use file::{load, FileError, Kind, Variant};
use steps::{FaultKind, Side, Step};

/// Default per-variant time limit.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);

/// Scenario files under a directory (sorted), or the given files.
pub fn find_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            v.sort();
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Resolve a `qemu` setting: none/"system" → the host QEMU (or
/// `$CROSSMIG_QEMU`), a version series → the provisioned build, else a path.
pub fn resolve_qemu(spec: Option<&str>) -> Result<QemuBinary> {
    match spec {
        None | Some("system") => QemuBinary::system(),
        Some(v) if v.chars().next().is_some_and(|c| c.is_ascii_digit()) && !v.contains('/') => {
            if let Ok(sys) = QemuBinary::system() {
                if let Ok(got) = sys.version() {
                    if crate::provision::series_matches(v, got) {
                        return Ok(sys);
                    }
                }
            }
            crate::provision::binary(v).with_context(|| {
                format!("QEMU {v} is not installed (run `crossmig qemu install {v}`)")
            })
        }
        Some(p) => {
            let b = QemuBinary::new(p);
            if !b.path.exists() {
                bail!("QEMU binary {p} does not exist");
            }
            Ok(b)
        }
    }
}

/// The source QEMU of a variant: `source.qemu`, else the `qemu` axis.
pub fn source_qemu(v: &Variant) -> Option<String> {
    v.doc.source.qemu.clone().or_else(|| v.value("qemu").map(file::plain))
}

/// A machine type both binaries agree on: the oldest versioned q35 type
/// when the versions differ or 7.2 is involved, else the `q35` alias.
pub fn common_machine(a: &QemuBinary, b: &QemuBinary) -> String {
    let (va, vb) = (a.version().ok(), b.version().ok());
    match (va, vb) {
        (Some(x), Some(y)) => {
            let old = x.min(y);
            if x != y || (old.0, old.1) == (7, 2) {
                format!("pc-q35-{}.{}", old.0, old.1)
            } else {
                "q35".into()
            }
        }
        _ => "q35".into(),
    }
}

/// Why a variant cannot run here (a QEMU it names is missing), if so.
pub fn missing_prerequisite(v: &Variant) -> Option<String> {
    let d = &v.doc;
    let src = source_qemu(v);
    for q in [src.as_deref(), d.dest.qemu.as_deref()] {
        if let Err(e) = resolve_qemu(q) {
            return Some(format!("{e:#}"));
        }
    }
    None
}

/// One executed step.
#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub index: usize,
    pub step: String,
    pub ok: bool,
    pub ms: u64,
    pub detail: String,
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
}

/// Run one variant with its time limit. Never panics; all processes and
/// files it started are gone when it returns.
pub async fn run_variant(v: &Variant) -> Outcome {
    let limit = v
        .doc
        .timeout
        .as_deref()
        .map(|t| file::parse_duration(t).unwrap_or(DEFAULT_TIMEOUT))
        .unwrap_or(DEFAULT_TIMEOUT);
    let t0 = Instant::now();
    let mut out = Outcome {
        name: v.name(),
        file: v.file.display().to_string(),
        ok: false,
        error: None,
        ms: 0,
        steps: vec![],
        samples: vec![],
        destinations: vec![],
    };
    let res = tokio::time::timeout(limit, async {
        match v.doc.kind {
            Kind::Migration => run_migration(v, &mut out).await,
            Kind::Stream => run_stream(v, &mut out).await,
        }
    })
    .await;
    match res {
        Ok(Ok(())) => out.ok = out.steps.iter().all(|s| s.ok),
        Ok(Err(e)) => out.error = Some(format!("{e:#}")),
        Err(_) => out.error = Some(format!("time limit of {limit:?} exceeded")),
    }
    if out.error.is_none() && !out.ok {
        let s = out.steps.iter().find(|s| !s.ok).unwrap();
        out.error = Some(format!("step {} ({}) failed: {}", s.index, s.step, s.detail));
    }
    out.ms = t0.elapsed().as_millis() as u64;
    out
}

// ---------------------------------------------------------------------------
// Migration scenarios

struct Ctx<'a> {
    v: &'a Variant,
    src: QemuVm,
    dst: QemuVm,
    dest_kind: DestKind,
    workload: Workload,
    mem: u64,
    proxy: Option<Proxy>,
    proxy_handle: Option<ProxyHandle>,
    use_proxy: bool,
    t0: Instant,
    first_sync: Option<u64>,
    samples: Vec<Sample>,
    _disk: PathGuard,
}

async fn run_migration(v: &Variant, out: &mut Outcome) -> Result<()> {
    let d = &v.doc;
    let qemu = resolve_qemu(source_qemu(v).as_deref())?;
    let dq = match &d.dest.qemu {
        Some(q) => resolve_qemu(Some(q))?,
        None => qemu.clone(),
    };
    let dest_kind: DestKind =
        d.dest.kind.as_deref().unwrap_or("rust").parse().map_err(|e: String| anyhow!(e))?;
    let mem = d
        .source
        .memory
        .as_deref()
        .map(wire::units::parse_size)
        .transpose()
        .map_err(|e| anyhow!(e))?
        .unwrap_or(256 << 20);
    let workload: Workload =
        d.source.workload.as_deref().unwrap_or("sweep").parse().map_err(|e| anyhow!("{e:?}"))?;
    let machine = d.source.machine.clone().unwrap_or_else(|| common_machine(&qemu, &dq));
    let workdir = std::env::temp_dir();
    let tag = unique_name("scn");
    let disk = workdir.join(format!("{tag}.img"));
    std::fs::copy(workload.image_path(), &disk)?;
    let disk_guard = PathGuard::new(&disk);
    let mut scfg = VmConfig::new("scn-src", mem);
    scfg.machine = machine.clone();
    scfg.disk = Some(disk.clone());
    let serial = workdir.join(format!("{tag}-src.serial"));
    let _serial_guard = PathGuard::new(&serial);
    scfg.serial_log = Some(serial);
    let src_log = workdir.join(format!("{tag}-src.log"));
    let _l1 = PathGuard::new(&src_log);
    let src = QemuVm::start(&qemu, scfg, src_log).await?;
    let marker = if workload == Workload::Fill { 'F' } else { 'B' };
    src.wait_serial(|s| s.contains(marker), Duration::from_secs(60)).await?;
    if d.source.stopped {
        src.execute("stop", Value::Null).await?;
    }
    let mut dcfg = VmConfig::new(&format!("scn-dst-{}", dest_kind.name()), mem);
    dcfg.machine = machine;
    dcfg.extra = d.dest.args.clone();
    let dst_log = workdir.join(format!("{tag}-dst.log"));
    let _l2 = PathGuard::new(&dst_log);
    let dst = start_dest(dest_kind, &dq, dcfg, dst_log).await?;
    // Capabilities: common, then per side; parameters per side.
    let caps = |side: &std::collections::BTreeMap<String, bool>| -> Vec<(String, bool)> {
        let mut c: Vec<(String, bool)> = vec![("events".into(), true)];
        c.extend(d.capabilities.iter().map(|(k, v)| (k.clone(), *v)));
        c.extend(side.iter().map(|(k, v)| (k.clone(), *v)));
        c
    };
    let sc = caps(&d.source.capabilities);
    let dc = caps(&d.dest.capabilities);
    src.qmp
        .set_capabilities(&sc.iter().map(|(a, b)| (a.as_str(), *b)).collect::<Vec<_>>())
        .await
        .context("source capabilities")?;
    dst.qmp
        .set_capabilities(&dc.iter().map(|(a, b)| (a.as_str(), *b)).collect::<Vec<_>>())
        .await
        .context("destination capabilities")?;
    if !d.source.parameters.is_empty() {
        src.qmp
            .set_parameters(params_json(&d.source.parameters)?)
            .await
            .context("source parameters")?;
    }
    if !d.dest.parameters.is_empty() {
        dst.qmp
            .set_parameters(params_json(&d.dest.parameters)?)
            .await
            .context("destination parameters")?;
    }
    let mut ctx = Ctx {
        v,
        src,
        dst,
        dest_kind,
        workload,
        mem,
        proxy: None,
        proxy_handle: None,
        use_proxy: false,
        t0: Instant::now(),
        first_sync: None,
        samples: Vec::new(),
        _disk: disk_guard,
    };
    let res = run_steps(&mut ctx, out).await;
    out.samples = std::mem::take(&mut ctx.samples);
    let Ctx { src, dst, proxy, .. } = ctx;
    drop(proxy);
    let _ = dst.quit().await;
    let _ = src.quit().await;
    res
}

fn params_json(t: &toml::Table) -> Result<Value> {
    let mut m = serde_json::Map::new();
    for (k, v) in t {
        let j = match v {
            // Sizes may be written "256M".
            toml::Value::String(s) if k.ends_with("bandwidth") || k.ends_with("-size") => {
                json!(wire::units::parse_size(s).map_err(|e| anyhow!("parameter {k}: {e}"))?)
            }
            other => serde_json::to_value(other)?,
        };
        m.insert(k.clone(), j);
    }
    Ok(Value::Object(m))
}

async fn run_steps(ctx: &mut Ctx<'_>, out: &mut Outcome) -> Result<()> {
    let specs: Vec<_> = ctx
        .v
        .doc
        .steps
        .iter()
        .map(steps::parse_step)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!(e))?;
    for (i, spec) in specs.into_iter().enumerate() {
        if let Some(w) = &spec.when {
            if !ctx.v.matches(w) {
                continue;
            }
        }
        let t = Instant::now();
        let label = spec.step.label();
        let r = exec_step(ctx, &spec.step).await;
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(e) => (false, format!("{e:#}")),
        };
        out.steps.push(StepResult {
            index: i,
            step: label,
            ok,
            ms: t.elapsed().as_millis() as u64,
            detail,
        });
        if !ok {
            let tail = format!(
                "\n--- source log ---\n{}\n--- destination ({}) log ---\n{}",
                ctx.src.log_tail(1500),
                ctx.dest_kind.name(),
                ctx.dst.log_tail(3000)
            );
            out.steps.last_mut().unwrap().detail += &tail;
            return Ok(());
        }
    }
    Ok(())
}

fn status_of(v: &Value) -> String {
    v.get("status").and_then(|s| s.as_str()).unwrap_or("none").to_string()
}

impl Ctx<'_> {
    /// `query-migrate` on a side; a destination process that exited (QEMU's
    /// exit-on-error) reads as `failed` with its log tail as error-desc.
    async fn query(&self, side: Side) -> Value {
        let vm = if side == Side::Dest { &self.dst } else { &self.src };
        match vm.qmp.query_migrate().await {
            Ok(v) => v,
            Err(e) => {
                if !vm.child.is_running() {
                    json!({"status": "failed", "error-desc": format!("process exited: {}", vm.log_tail(600).trim())})
                } else {
                    json!({"status": "unknown", "error-desc": format!("query-migrate: {e:#}")})
                }
            }
        }
    }

    async fn sample(&mut self) -> (Value, Value) {
        let s = self.query(Side::Source).await;
        let d = self.query(Side::Dest).await;
        if self.first_sync.is_none() && status_of(&s) == "active" {
            self.first_sync = s["ram"]["dirty-sync-count"].as_u64();
        }
        self.samples.push(Sample {
            t_ms: self.t0.elapsed().as_millis() as u64,
            source: s.clone(),
            dest: d.clone(),
        });
        (s, d)
    }

    fn vms(&self, side: Side) -> Vec<&QemuVm> {
        match side {
            Side::Source => vec![&self.src],
            Side::Dest => vec![&self.dst],
            Side::Both => vec![&self.src, &self.dst],
        }
    }
}

async fn exec_step(ctx: &mut Ctx<'_>, step: &Step) -> Result<String> {
    match step {
        Step::Migrate { proxy } => {
            let port = free_tcp_port();
            let uri = format!("tcp:127.0.0.1:{port}");
            ctx.dst
                .execute("migrate-incoming", json!({ "uri": uri }))
                .await
                .context("destination migrate-incoming")?;
            let mut src_uri = uri.clone();
            if let Some(p) = proxy {
                let mut plan = ProxyPlan::new();
                if let (Some(a), Some(f)) = (&p.stall_at, &p.stall_for) {
                    plan = plan.stall(
                        wire::units::parse_size(a).map_err(|e| anyhow!(e))?,
                        file::parse_duration(f).map_err(|e| anyhow!(e))?,
                    );
                }
                if let Some(t) = &p.throttle {
                    plan = plan.throttle(wire::units::parse_size(t).map_err(|e| anyhow!(e))?);
                }
                if let Some(c) = &p.cut_at {
                    plan = plan.cut_at(wire::units::parse_size(c).map_err(|e| anyhow!(e))?);
                }
                let px = Proxy::start("127.0.0.1:0", ([127, 0, 0, 1], port).into(), plan).await?;
                src_uri = px.uri();
                ctx.proxy_handle = Some(px.handle());
                ctx.proxy = Some(px);
                ctx.use_proxy = true;
            }
            ctx.t0 = Instant::now();
            ctx.src
                .execute("migrate", json!({ "uri": src_uri }))
                .await
                .context("source migrate")?;
            Ok(format!("source → {src_uri}"))
        }
        Step::Wait { status, side, passes, time, serial, timeout } => {
            let limit = timeout
                .as_deref()
                .map(file::parse_duration)
                .transpose()
                .map_err(|e| anyhow!(e))?
                .unwrap_or(Duration::from_secs(120));
            let deadline = Instant::now() + limit;
            if let Some(t) = time {
                tokio::time::sleep(file::parse_duration(t).map_err(|e| anyhow!(e))?).await;
                ctx.sample().await;
                return Ok(String::new());
            }
            if let Some(m) = serial {
                let s = ctx.src.wait_serial(|s| s.contains(m.as_str()), limit).await?;
                return Ok(format!("{} serial bytes", s.len()));
            }
            loop {
                let (s, d) = ctx.sample().await;
                if let Some(want) = status {
                    let wants: Vec<&str> = want.split('|').map(str::trim).collect();
                    let hit = |v: &Value| wants.contains(&status_of(v).as_str());
                    let done = match side {
                        Side::Source => hit(&s),
                        Side::Dest => hit(&d),
                        Side::Both => hit(&s) && hit(&d),
                    };
                    if done {
                        return Ok(format!(
                            "source {}, destination {}",
                            status_of(&s),
                            status_of(&d)
                        ));
                    }
                    // A side that failed without failure being awaited ends the wait.
                    if !wants.contains(&"failed") {
                        let awaited: Vec<(&str, &Value)> = match side {
                            Side::Source => vec![("source", &s)],
                            Side::Dest => vec![("destination", &d)],
                            Side::Both => vec![("source", &s), ("destination", &d)],
                        };
                        for (n, v) in awaited {
                            if status_of(v) == "failed" {
                                bail!(
                                    "{n} failed while waiting for {want}: {}",
                                    v.get("error-desc").cloned().unwrap_or(Value::Null)
                                );
                            }
                        }
                    }
                }
                if let Some(n) = passes {
                    let sync = s["ram"]["dirty-sync-count"].as_u64().unwrap_or(0);
                    let done = ctx.first_sync.map(|f| sync.saturating_sub(f)).unwrap_or(0);
                    if done >= *n {
                        return Ok(format!("{done} pass(es) (dirty-sync-count {sync})"));
                    }
                    let st = status_of(&s);
                    if st != "active" && st != "setup" {
                        bail!("source left precopy ({st}) after {done} of {n} passes");
                    }
                }
                if Instant::now() > deadline {
                    bail!(
                        "timed out after {limit:?}: source {}, destination {}",
                        status_of(&s),
                        status_of(&d)
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Step::StartPostcopy {} => {
            ctx.src.execute("migrate-start-postcopy", Value::Null).await?;
            Ok(String::new())
        }
        Step::Stop { side } => {
            for vm in ctx.vms(*side) {
                vm.execute("stop", Value::Null).await?;
            }
            Ok(String::new())
        }
        Step::Cont { side } => {
            for vm in ctx.vms(*side) {
                vm.execute("cont", Value::Null).await?;
            }
            Ok(String::new())
        }
        Step::SetParameters { side, parameters } => {
            let p = params_json(parameters)?;
            for vm in ctx.vms(*side) {
                vm.qmp.set_parameters(p.clone()).await?;
            }
            Ok(p.to_string())
        }
        Step::SetCapabilities { side, capabilities } => {
            let c: Vec<(&str, bool)> = capabilities.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            for vm in ctx.vms(*side) {
                vm.qmp.set_capabilities(&c).await?;
            }
            Ok(String::new())
        }
        Step::Cancel {} => {
            ctx.src.execute("migrate_cancel", Value::Null).await?;
            Ok(String::new())
        }
        Step::Fault { fault, side } => match fault {
            FaultKind::Cut => {
                let h = ctx
                    .proxy_handle
                    .as_ref()
                    .ok_or_else(|| anyhow!("fault cut needs `migrate` with a proxy table"))?;
                h.cut_now();
                Ok(format!("{} connection(s) cut", h.connections()))
            }
            FaultKind::Kill => {
                if *side != Side::Dest {
                    ctx.src.child.kill();
                }
                if *side != Side::Source {
                    ctx.dst.child.kill();
                }
                Ok(String::new())
            }
        },
        Step::Pause { side } => {
            for vm in ctx.vms(*side) {
                vm.execute("migrate-pause", Value::Null).await?;
            }
            Ok(String::new())
        }
        Step::Recover { fail } => {
            let to = Duration::from_secs(30);
            let mut detail = String::new();
            match fail.as_deref() {
                Some("handshake") => {
                    let port = free_tcp_port();
                    ctx.dst
                        .execute(
                            "migrate-recover",
                            json!({ "uri": format!("tcp:127.0.0.1:{port}") }),
                        )
                        .await?;
                    let cursor = ctx.dst.qmp.event_cursor();
                    {
                        use tokio::io::AsyncWriteExt;
                        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                        s.write_all(&[wire::consts::QEMU_VM_COMMAND]).await?;
                    }
                    // The destination must take the connection as its
                    // recovery channel (postcopy-recover) and fall back.
                    // (QEMU 11.1 never adopts a connection that sends a
                    // single byte, so for a QEMU destination this is optional.)
                    let adopted = ctx
                        .dst
                        .qmp
                        .wait_event_from(
                            cursor,
                            |e| {
                                e.name == "MIGRATION"
                                    && e.data_str("status") == Some("postcopy-recover")
                            },
                            if ctx.dest_kind == DestKind::Rust {
                                to
                            } else {
                                Duration::from_secs(3)
                            },
                        )
                        .await;
                    if ctx.dest_kind == DestKind::Rust {
                        adopted.context(
                            "destination taking the junk connection as its recovery channel",
                        )?;
                    } else if adopted.is_err() {
                        detail += "(QEMU did not adopt the junk connection) ";
                    }
                    ctx.dst
                        .qmp
                        .wait_migration_status(&["postcopy-paused"], &["failed", "completed"], to)
                        .await
                        .context(
                            "destination back in postcopy-paused after the failed handshake",
                        )?;
                    detail += "destination paused again after a failed handshake; ";
                }
                Some("reconnect") => {
                    let dead = free_tcp_port();
                    ctx.src
                        .execute(
                            "migrate",
                            json!({ "uri": format!("tcp:127.0.0.1:{dead}"), "resume": true }),
                        )
                        .await
                        .ok();
                    ctx.src
                        .qmp
                        .wait_migration_status(&["postcopy-paused"], &["failed", "completed"], to)
                        .await
                        .context("source back in postcopy-paused after the failed reconnect")?;
                    detail += "source paused again after a failed reconnect; ";
                }
                _ => {}
            }
            let port = free_tcp_port();
            ctx.dst
                .execute("migrate-recover", json!({ "uri": format!("tcp:127.0.0.1:{port}") }))
                .await?;
            let mut uri = format!("tcp:127.0.0.1:{port}");
            if ctx.use_proxy {
                let px =
                    Proxy::start("127.0.0.1:0", ([127, 0, 0, 1], port).into(), ProxyPlan::new())
                        .await?;
                uri = px.uri();
                ctx.proxy_handle = Some(px.handle());
                ctx.proxy = Some(px);
            }
            ctx.src.execute("migrate", json!({ "uri": uri, "resume": true })).await?;
            ctx.src
                .qmp
                .wait_migration_status(&["postcopy-active", "completed"], &["failed"], to)
                .await?;
            ctx.dst
                .qmp
                .wait_migration_status(&["postcopy-active", "completed"], &["failed"], to)
                .await?;
            Ok(format!("{detail}resumed via {uri}"))
        }
        Step::Expect { side, status, error, counter, op, value } => {
            let mut detail = Vec::new();
            for s in match side {
                Side::Both => vec![Side::Source, Side::Dest],
                s => vec![*s],
            } {
                let q = ctx.query(s).await;
                let name = if s == Side::Source { "source" } else { "destination" };
                if let Some(want) = status {
                    let got = status_of(&q);
                    if !want.split('|').any(|w| w.trim() == got) {
                        bail!(
                            "{name} status is {got}, expected {want} (error-desc: {})",
                            q.get("error-desc").cloned().unwrap_or(Value::Null)
                        );
                    }
                    detail.push(format!("{name} {got}"));
                }
                if let Some(re) = error {
                    let e = q.get("error-desc").and_then(|e| e.as_str()).unwrap_or("");
                    let rx = regex::Regex::new(re)?;
                    if !rx.is_match(e) {
                        bail!("{name} error-desc {e:?} does not match /{re}/");
                    }
                    detail.push(format!("{name} error ok"));
                }
                if let (Some(c), Some(o), Some(want)) = (counter, op, value) {
                    let mut x = &q;
                    for part in c.split('.') {
                        x = &x[part];
                    }
                    let got = x
                        .as_i64()
                        .ok_or_else(|| anyhow!("{name} query-migrate has no number at {c}: {q}"))?;
                    let ok = match o.as_str() {
                        "==" => got == *want,
                        "!=" => got != *want,
                        ">" => got > *want,
                        ">=" => got >= *want,
                        "<" => got < *want,
                        _ => got <= *want,
                    };
                    if !ok {
                        bail!("{name} {c} = {got}, expected {o} {want}");
                    }
                    detail.push(format!("{name} {c} = {got}"));
                }
            }
            Ok(detail.join(", "))
        }
        Step::CheckMemory { invariant } => {
            let c = memory::compare_files(
                &ctx.src.cfg.backend_id,
                &ctx.src.cfg.mem_path,
                &ctx.dst.cfg.mem_path,
            )?;
            if !c.ok() {
                bail!("{c}");
            }
            let mut detail = c.to_string();
            if ctx.dest_kind == DestKind::Rust {
                let d = ctx
                    .dst
                    .execute(
                        "x-crossmig-ram-digests",
                        json!({"block": ctx.src.cfg.backend_id, "pages": true}),
                    )
                    .await?;
                let pd =
                    wire::digest::from_hex(d["blocks"][0]["page-digests"].as_str().unwrap_or(""))
                        .unwrap_or_default();
                let sd = memory::file_page_digests(&ctx.src.cfg.mem_path)?;
                let c2 = memory::compare_digests("mem0", &sd, &pd, "rust-dest QMP digests");
                if !c2.ok() {
                    bail!("{c2}");
                }
            }
            if invariant.unwrap_or(true) && ctx.workload == Workload::Sweep {
                let ram = std::fs::read(&ctx.dst.cfg.mem_path)?;
                let r = guest::check_sweep_invariant(
                    &ram,
                    images::SWEEP_START,
                    images::sweep_end(ctx.mem),
                );
                if !r.ok() {
                    bail!("{r}");
                }
                detail += &format!("; {r}");
            }
            Ok(detail)
        }
    }
}

// ---------------------------------------------------------------------------
// Stream scenarios

async fn run_stream(v: &Variant, out: &mut Outcome) -> Result<()> {
    let d = &v.doc;
    let exp = d.expect.as_ref().ok_or_else(|| anyhow!("stream scenario without [expect]"))?;
    let qemu = resolve_qemu(source_qemu(v).as_deref())?;
    let mut script: Vec<synth::Step> = d
        .records
        .iter()
        .map(records::parse_record)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!(e))?;
    let layout = synth::source_layout(&qemu, synth::GUEST_MEM).await?;
    // A `vmdesc` record describes this script's device sections.
    let desc = synth::vmdesc_for(&layout, &script);
    for s in script.iter_mut() {
        if let synth::Step::Vmdesc(vv) = s {
            if vv.is_null() {
                *vv = desc.clone();
            }
        }
    }
    let opts = synth::RunOpts {
        postcopy_ram: d.capabilities.get("postcopy-ram").copied().unwrap_or(false),
        check_memory: exp.memory.unwrap_or(true),
        ..Default::default()
    };
    let workdir = tempfile::Builder::new().prefix("crossmig-stream-").tempdir()?;
    let tag = unique_name("s");
    let (tq, tr) = (format!("{tag}q"), format!("{tag}r"));
    let (q, r) = tokio::join!(
        synth::run_script(DestKind::Qemu, &qemu, &layout, &script, &opts, workdir.path(), &tq),
        synth::run_script(DestKind::Rust, &qemu, &layout, &script, &opts, workdir.path(), &tr),
    );
    let q = q.context("QEMU destination")?;
    let r = r.context("rust-dest")?;
    let mut problems = Vec::new();
    for (run, re) in [
        (&q, exp.qemu_error.as_ref().or(exp.error.as_ref())),
        (&r, exp.rust_error.as_ref().or(exp.error.as_ref())),
    ] {
        let name = run.kind.name();
        let got = match &run.verdict {
            // QEMU's monitor can stop answering while its migration is
            // paused; its own log line then says so.
            synth::Verdict::Stuck { status, .. }
                if status == "?" && run.log_tail.contains("Migration paused") =>
            {
                "postcopy-paused".to_string()
            }
            // A destination that told the source SHUT(non-zero) has failed,
            // even if its status lags (seen with QEMU 11.1 in postcopy-device).
            synth::Verdict::Stuck { .. }
                if run.play.as_ref().is_some_and(|p| p.shuts().iter().any(|v| *v != 0)) =>
            {
                "failed".to_string()
            }
            synth::Verdict::Stuck { status, .. } => status.clone(),
            v => v.kind().to_string(),
        };
        if got != exp.verdict {
            problems.push(format!("{name}: verdict {got} but the script expects {}", exp.verdict));
        }
        if let (Some(re), "failed") = (re, run.verdict.kind()) {
            let rx = regex::Regex::new(re)?;
            // QEMU's specific message may be several log lines above the last.
            if !rx.is_match(run.verdict.error()) && !rx.is_match(&run.log_tail) {
                problems.push(format!("{name}: error does not match /{re}/"));
            }
        }
        if let Some(m) = &run.memory {
            if !m.ok() {
                problems.push(format!("{name}: memory differs from the script's model: {m}"));
            }
        }
        if let Some(p) = &run.play {
            if let Some(want) = &exp.pongs {
                let got = p.pongs();
                if &got != want {
                    problems.push(format!("{name}: PONGs {got:?}, expected {want:?}"));
                }
            }
            if let (Some(want), "completed") = (exp.shut, run.verdict.kind()) {
                if !p.shuts().contains(&want) {
                    problems
                        .push(format!("{name}: no SHUT({want}) received (got {:?})", p.shuts()));
                }
            }
        }
        out.destinations.push(json!({
            "destination": name,
            "verdict": run.verdict.kind(),
            "error": run.verdict.error(),
            "ms": run.total.as_millis() as u64,
        }));
    }
    if q.verdict.kind() != r.verdict.kind() {
        problems.insert(0, "verdicts differ between QEMU (the oracle) and rust-dest".into());
    }
    let side_by_side = format!("\n  qemu: {}\n  rust: {}", q.summary(), r.summary());
    out.steps.push(StepResult {
        index: 0,
        step: format!("play {} record(s) into qemu and rust-dest", script.len()),
        ok: problems.is_empty(),
        ms: q.total.max(r.total).as_millis() as u64,
        detail: if problems.is_empty() {
            format!("both {}{side_by_side}", r.verdict.kind())
        } else {
            format!("{}{side_by_side}", problems.join("; "))
        },
    });
    Ok(())
}

/// Load every variant of every file; load errors are returned per file.
pub fn load_all(files: &[PathBuf]) -> Vec<Result<Vec<Variant>, FileError>> {
    files.iter().map(|f| load(Path::new(f))).collect()
}
