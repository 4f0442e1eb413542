//! The ingest part: a stream recorded once from a real QEMU source into a
//! file, then loaded by each destination with `-incoming file:`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use wire::units::TARGET_PAGE_SIZE;

use super::ctx::{launch, Ctx, UNLIMITED_BW};
use super::host::{proc_cpu_seconds, proc_mem};
use super::metrics::RunRecord;
use super::probe::{compare_pages, ms, page_digests, sample_pages, VERIFY_PAGES};
use crate::images::Workload;
use crate::qmp::{MigrationStatus, StatusWait};
use crate::vm::dest::DestKind;
use crate::vm::procs::{file_tail, unique_name, PathGuard};
use crate::vm::qemu::{QemuVm, VmConfig};

/// query-migrate polling period while waiting for a file ingest.
const INGEST_POLL: Duration = Duration::from_millis(2);

/// The stream recorded once from a real QEMU source.
pub(super) struct Recorded {
    path: PathBuf,
    pub(super) bytes: u64,
    mem: u64,
    pages: Vec<u64>,
    /// Digests of the sampled pages on the source.
    digests: Vec<u64>,
    pub(super) info: Value,
}

/// Record the stream once: a stopped fill guest migrated to `file:` in `dir`.
pub(super) async fn record_stream(ctx: &Ctx, mem: u64, dir: &Path) -> Result<Recorded> {
    let tag = unique_name("record");
    let path = dir.join(format!("{tag}.stream"));
    let disk = ctx.workdir.join(format!("{tag}.img"));
    std::fs::copy(Workload::Fill.image_path(), &disk)?;
    let _disk = PathGuard::new(&disk);
    let mut scfg = VmConfig::new("bench-rec", mem);
    scfg.machine = ctx.machine.clone();
    scfg.disk = Some(disk.clone());
    let serial = ctx.workdir.join(format!("{tag}.serial"));
    scfg.serial_log = Some(serial.clone());
    let _serial = PathGuard::new(&serial);
    let src = launch(&ctx.qemu, scfg, ctx.log(&tag), Duration::from_secs(60)).await?;
    let t = Instant::now();
    src.wait_serial(|s| s.contains('F'), Duration::from_secs(300)).await?;
    let boot_ms = ms(t.elapsed());
    src.execute("stop", Value::Null).await.context("QMP stop")?;
    src.qmp.set_capabilities(&[("events", true)]).await?;
    src.qmp.set_parameters(json!({"max-bandwidth": UNLIMITED_BW})).await?;
    let t = Instant::now();
    src.execute("migrate", json!({"uri": format!("file:{}", path.display())}))
        .await
        .context("QMP migrate")?;
    let done = StatusWait::until([MigrationStatus::Completed])
        .failing_on([MigrationStatus::Failed, MigrationStatus::Cancelled]);
    let fin = src.qmp.wait_for(&done, Duration::from_secs(600)).await?;
    let record_ms = ms(t.elapsed());
    let pages = sample_pages(0, mem / TARGET_PAGE_SIZE, VERIFY_PAGES);
    let digests = page_digests(&src.cfg.mem_path, &pages)?;
    src.quit().await;
    let bytes = std::fs::metadata(&path)?.len();
    // Read it once, so every ingest finds it in the page cache.
    let p2 = path.clone();
    let warm_s = tokio::task::spawn_blocking(move || -> Result<f64> {
        use std::io::Read;
        let mut f = std::fs::File::open(&p2)?;
        let mut buf = vec![0u8; 4 << 20];
        let t = Instant::now();
        while f.read(&mut buf)? > 0 {}
        Ok(t.elapsed().as_secs_f64())
    })
    .await??;
    let info = json!({
        "bytes": bytes,
        "guest_ram_bytes": mem,
        "guest_boot_ms": boot_ms,
        "record_ms": record_ms,
        "source_total_time_ms": fin.get("total-time"),
        "page_cache_read_gb_s": bytes as f64 / warm_s / 1e9,
        "location": path.display().to_string(),
    });
    Ok(Recorded { path, bytes, mem, pages, digests, info })
}

/// One ingest run of one side (both loads, see the notes).
pub(super) async fn run_ingest(ctx: &Ctx, r: &Recorded, side: DestKind, rep: u32) -> RunRecord {
    let mut rec = RunRecord::new("ingest", side, rep);
    let tag = unique_name(&format!("ingest-{}-r{rep}", side.name()));
    let (la, lb) = (ctx.log(&format!("{tag}-defer")), ctx.log(&format!("{tag}-file")));
    if let Err(e) = ingest_inner(ctx, r, side, &la, &lb, &mut rec).await {
        rec.ok = false;
        rec.error = Some(format!(
            "{e:#}\n--- log tails ---\n{}\n{}",
            file_tail(&la, 2000),
            file_tail(&lb, 2000)
        ));
    }
    rec
}

/// Poll query-migrate until `completed`; returns when that reply arrived.
async fn wait_completed(vm: &QemuVm, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let v = vm.qmp.query_migrate().await?;
        let now = Instant::now();
        match MigrationStatus::of(&v) {
            MigrationStatus::Completed => return Ok(now),
            MigrationStatus::Failed | MigrationStatus::Cancelled => bail!(
                "incoming migration failed: {}",
                v.get("error-desc").cloned().unwrap_or_default()
            ),
            _ => {}
        }
        if now > deadline {
            bail!("ingest timed out after {timeout:?}");
        }
        tokio::time::sleep(INGEST_POLL).await;
    }
}

async fn ingest_inner(
    ctx: &Ctx,
    r: &Recorded,
    side: DestKind,
    la: &Path,
    lb: &Path,
    rec: &mut RunRecord,
) -> Result<()> {
    let uri = format!("file:{}", r.path.display());
    let to = Duration::from_secs(600);
    // (a) start-up on its own (-incoming defer), then a QMP-triggered ingest.
    let vm = launch(
        &ctx.dest_bin(side),
        ctx.dest_cfg(side, r.mem, "defer"),
        la.to_path_buf(),
        Duration::from_secs(60),
    )
    .await?;
    let startup = vm.startup;
    let cpu0 = proc_cpu_seconds(vm.pid());
    let t1 = Instant::now();
    vm.execute("migrate-incoming", json!({ "uri": uri })).await.context("QMP migrate-incoming")?;
    let t2 = wait_completed(&vm, to).await?;
    let cpu1 = proc_cpu_seconds(vm.pid());
    let pm = proc_mem(vm.pid()).unwrap_or_default();
    let bad_a = compare_pages(&vm.cfg.mem_path, &r.pages, &r.digests)?;
    vm.quit().await;
    // (b) end to end: a process started with -incoming file:PATH.
    let t_spawn = Instant::now();
    let vm =
        launch(&ctx.dest_bin(side), ctx.dest_cfg(side, r.mem, &uri), lb.to_path_buf(), to).await?;
    let t_done = wait_completed(&vm, to).await?;
    let bad_b = compare_pages(&vm.cfg.mem_path, &r.pages, &r.digests)?;
    vm.quit().await;
    if bad_a + bad_b > 0 {
        bail!("sampled pages differ from the source after ingest ({bad_a} and {bad_b} of {VERIFY_PAGES})");
    }
    let e2e = t_done - t_spawn;
    let ingest = e2e.saturating_sub(startup);
    let qmp_ingest = t2 - t1;
    rec.set("ingest.startup_ms", ms(startup));
    rec.set("ingest.e2e_ms", ms(e2e));
    rec.set("ingest.ingest_ms", ms(ingest));
    rec.set("ingest.gb_s", r.bytes as f64 / ingest.as_secs_f64().max(1e-9) / 1e9);
    rec.set("ingest.qmp_ingest_ms", ms(qmp_ingest));
    rec.set("ingest.gb_s_qmp", r.bytes as f64 / qmp_ingest.as_secs_f64().max(1e-9) / 1e9);
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        rec.set("ingest.dest_cpu_s", b - a);
    }
    rec.detail("dest_proc_status_at_end", serde_json::to_value(pm)?);
    rec.detail("verify_sampled_pages", json!({"pages": VERIFY_PAGES * 2, "mismatched": 0}));
    Ok(())
}
