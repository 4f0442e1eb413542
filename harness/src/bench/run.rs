//! The TCP scenarios (precopy, postcopy, and the minimal overhead-only one):
//! one run of one side, from starting the source to the teardown.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};
use wire::units::TARGET_PAGE_SIZE;

use super::ctx::{launch, Ctx, UNLIMITED_BW};
use super::host::{proc_cpu_seconds, proc_mem, ForeignCpu};
use super::metrics::{percentiles, RunRecord};
use super::poller::Poller;
use super::postcopy::{record_own_figures, POSTCOPY_CAP};
use super::probe::{
    compare_pages, event_time, ms, page_digests, sample_pages, src_pages, VERIFY_PAGES,
};
use super::trace::{parse_qemu_fault_trace, parse_rust_fault_trace, RUST_FAULT_TRACE};
use crate::drive::session::{u64_at, Migration, Side};
use crate::images::Workload;
use crate::qmp::{MigrationStatus, StatusWait};
use crate::vm::dest::DestKind;
use crate::vm::hugepages::{HugeTlb, POOL_WAIT};
use crate::vm::procs::{file_tail, unique_name, PathGuard};
use crate::vm::qemu::VmConfig;

const MIB: u64 = 1 << 20;

#[derive(Clone, Copy, Debug)]
pub(super) struct TcpScenario {
    pub(super) name: &'static str,
    pub(super) postcopy: bool,
    pub(super) workload: Workload,
    pub(super) mem: u64,
    /// Multifd with [`MULTIFD_CHANNELS`] channels and this
    /// `multifd-compression` on both sides.
    pub(super) multifd: Option<&'static str>,
    /// Postcopy: postcopy-preempt on both sides.
    pub(super) preempt: bool,
    /// Postcopy: `max-postcopy-bandwidth` at [`POSTCOPY_CAP`] (else 0, unlimited).
    pub(super) capped: bool,
    /// Guest RAM of both sides on hugetlbfs with pages of this size.
    pub(super) hugepages: Option<u64>,
}

impl TcpScenario {
    /// A precopy scenario (no postcopy variant fields).
    pub(super) fn precopy(name: &'static str, workload: Workload, mem: u64) -> TcpScenario {
        TcpScenario {
            name,
            postcopy: false,
            workload,
            mem,
            multifd: None,
            preempt: false,
            capped: false,
            hugepages: None,
        }
    }
}

/// Channels of the multifd scenarios.
pub(super) const MULTIFD_CHANNELS: u32 = 4;

/// One run of one side; failures end up in the record, with log tails.
pub(super) async fn run_tcp(ctx: &Ctx, sc: TcpScenario, side: DestKind, rep: u32) -> RunRecord {
    let mut rec = RunRecord::new(sc.name, side, rep);
    let tag = unique_name(&format!("{}-{}-r{rep}", sc.name, side.name()));
    let (slog, dlog) = (ctx.log(&format!("{tag}-src")), ctx.log(&format!("{tag}-dst")));
    if let Err(e) = tcp_inner(ctx, sc, side, &tag, &slog, &dlog, &mut rec).await {
        rec.ok = false;
        rec.error = Some(format!(
            "{e:#}\n--- source log tail ---\n{}\n--- destination ({}) log tail ---\n{}",
            file_tail(&slog, 1500),
            side.name(),
            file_tail(&dlog, 3000)
        ));
    }
    rec
}

#[allow(clippy::too_many_arguments)]
async fn tcp_inner(
    ctx: &Ctx,
    sc: TcpScenario,
    side: DestKind,
    tag: &str,
    slog: &Path,
    dlog: &Path,
    rec: &mut RunRecord,
) -> Result<()> {
    let t_scn = Instant::now();
    let ov = |k: &str| format!("overhead.{}.{k}", sc.name);

    // --- source: start, boot until the serial marker ---
    let disk = ctx.workdir.join(format!("{tag}.img"));
    std::fs::copy(sc.workload.image_path(), &disk).context("copying the guest image")?;
    let _disk = PathGuard::new(&disk);
    // Huge pages outlive both VMs (declared before them, dropped after).
    let huge = match sc.hugepages {
        Some(hp) => {
            let h = HugeTlb::setup_waiting(hp, 2 * sc.mem / hp, POOL_WAIT)
                .await
                .context("huge pages")?;
            // Both sides get pages the host has backed (`HugeTlb::prefault`).
            h.prefault().context("prefaulting the huge pages")?;
            Some(h)
        }
        None => None,
    };
    let mut scfg = VmConfig::new("bench-src", sc.mem);
    if let Some(h) = &huge {
        scfg.mem_path = h.file(&format!("{tag}-src.ram"));
    }
    scfg.machine = ctx.machine.clone();
    scfg.disk = Some(disk.clone());
    let serial = ctx.workdir.join(format!("{tag}-src.serial"));
    scfg.serial_log = Some(serial.clone());
    let _serial = PathGuard::new(&serial);
    let src = launch(&ctx.qemu, scfg, slog.to_path_buf(), Duration::from_secs(60))
        .await
        .context("starting the source")?;
    rec.set(&ov("src_start_ms"), ms(src.startup));
    let t = Instant::now();
    let marker = sc.workload.ready_marker();
    src.wait_serial(|s| s.contains(marker), Duration::from_secs(300))
        .await
        .context("waiting for the guest")?;
    rec.set(&ov("guest_boot_ms"), ms(t.elapsed()));
    if !sc.postcopy {
        src.execute("stop", Value::Null).await.context("source stop")?;
    }

    // --- destination ---
    let mut dcfg = ctx.dest_cfg(side, sc.mem, "defer");
    if let Some(h) = &huge {
        dcfg.mem_path = h.file(&format!("{tag}-dst.ram"));
    }
    if sc.postcopy {
        match side {
            DestKind::Rust => {
                // The same access order as the guest QEMU's destination runs.
                dcfg.extra.extend(sc.workload.rust_vcpu_args(sc.mem, &[]));
                // --sched-stats: how much of each stage was run-queue wait
                // (read outside the timed intervals).
                dcfg.extra.extend(
                    ["--vcpu-rate", "0", "--sched-stats", "--log", RUST_FAULT_TRACE]
                        .map(String::from),
                )
            }
            DestKind::Qemu => dcfg.extra.extend(
                [
                    "-trace",
                    "enable=postcopy_page_req_add",
                    "-trace",
                    "enable=postcopy_page_req_del",
                    "-msg",
                    "timestamp=on",
                ]
                .map(String::from),
            ),
        }
    }
    let dst = launch(&ctx.dest_bin(side), dcfg, dlog.to_path_buf(), Duration::from_secs(60))
        .await
        .context("starting the destination")?;
    rec.set(&ov("dest_start_ms"), ms(dst.startup));
    let mut m = Migration::new(src, dst, side);

    // --- setup ---
    let t = Instant::now();
    let mut caps = vec![("events", true)];
    if sc.postcopy {
        caps.push(("postcopy-ram", true));
        if sc.preempt {
            caps.push(("postcopy-preempt", true));
        }
    }
    if sc.multifd.is_some() {
        caps.push(("multifd", true));
    }
    m.set_capabilities(Side::Source, &caps).await?;
    if sc.postcopy {
        caps.push(("postcopy-blocktime", true));
    }
    m.set_capabilities(Side::Dest, &caps).await?;
    if let Some(comp) = sc.multifd {
        let p = json!({"multifd-channels": MULTIFD_CHANNELS, "multifd-compression": comp});
        m.set_parameters(Side::Source, &p).await?;
        m.set_parameters(Side::Dest, &p).await?;
    }
    m.set_parameters(
        Side::Source,
        &json!({
            "max-bandwidth": UNLIMITED_BW,
            "downtime-limit": 300,
            "max-postcopy-bandwidth": if sc.capped { POSTCOPY_CAP } else { 0 },
        }),
    )
    .await?;
    if sc.postcopy {
        // Both destinations run as soon as postcopy runs: `cont` while
        // incoming sets QEMU's autostart (its guest starts at POSTCOPY_RUN);
        // rust-dest starts its simulated vCPUs then.
        m.cont(Side::Dest).await?;
    }
    let port = m.listen().await?;
    m.wait_status(
        Side::Dest,
        &StatusWait::until([MigrationStatus::Setup]),
        Duration::from_secs(10),
    )
    .await
    .context("destination listening")?;
    rec.set(&ov("setup_ms"), ms(t.elapsed()));

    // --- migrate ---
    let (dst_pid, src_pid) = (m.dst.pid(), m.src.pid());
    let cpu0 = proc_cpu_seconds(dst_pid);
    let src_cpu0 = proc_cpu_seconds(src_pid);
    let foreign = ForeignCpu::start(&[dst_pid, src_pid]);
    let t0 = Instant::now();
    rec.set(&ov("to_migration_ms"), ms(t0 - t_scn));
    m.start(&format!("tcp:127.0.0.1:{port}")).await?;
    if sc.postcopy {
        m.start_postcopy().await?;
    }
    let poll = Poller::new(t0, Duration::from_secs(600), dst_pid, sc.postcopy);
    let (sv, dv) = poll.run(&m).await?;
    let Poller { samples, peak_nonshmem_kib, dst_done_poll, pc_seen, pc_pages_before, .. } = poll;
    rec.samples = samples.into_inner().map_err(|_| anyhow!("poisoned"))?;
    let (peak_nonshmem_kib, dst_done_poll) =
        (peak_nonshmem_kib.into_inner()?, dst_done_poll.into_inner()?);
    let (pc_seen, pc_pages_before) = (pc_seen.into_inner()?, pc_pages_before.into_inner()?);
    if let Some(f) = foreign.end() {
        rec.detail("foreign_cpu_s", json!(f));
        rec.detail("measured_wall_s", json!(t0.elapsed().as_secs_f64()));
    }
    let cpu1 = proc_cpu_seconds(dst_pid);
    let src_cpu1 = proc_cpu_seconds(src_pid);
    let pm = proc_mem(dst_pid).unwrap_or_default();
    // The destination's own completion event is precise; polling is the fallback.
    let t_done = event_time(&m.dst.qmp, MigrationStatus::Completed, t0)
        .or(dst_done_poll)
        .unwrap_or_else(Instant::now);
    let migration = t_done.saturating_duration_since(t0);
    rec.set(&ov("migration_ms"), ms(migration));
    let p = sc.name;
    rec.set(&format!("{p}.migration_ms"), ms(migration));
    let transferred = u64_at(&sv, &["ram", "transferred"]);
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        rec.set(&format!("{p}.dest_cpu_s"), b - a);
        if sc.multifd.is_some() && transferred > 0 {
            // CPU per byte: robust where wall-clock time is not (a loaded
            // machine shares its cores with the source and others).
            let gib = transferred as f64 / (1u64 << 30) as f64;
            rec.set(&format!("{p}.dest_cpu_s_per_gib"), (b - a) / gib);
        }
    }
    if let (Some(a), Some(b), true) = (src_cpu0, src_cpu1, sc.multifd.is_some()) {
        // The source shares the machine's cores: (source + destination CPU)
        // / cores is the shortest migration time the machine allows.
        rec.set(&format!("{p}.src_cpu_s"), b - a);
        if let (Some(d0), Some(d1)) = (cpu0, cpu1) {
            let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            rec.set(&format!("{p}.cpu_floor_ms"), (b - a + d1 - d0) / cores as f64 * 1000.0);
        }
    }
    rec.detail("source_final", sv.clone());
    rec.detail("dest_final", dv.clone());
    rec.detail("dest_proc_status_at_end", serde_json::to_value(pm)?);
    rec.detail("dest_peak_rss_anon_plus_file_kib_sampled", json!(peak_nonshmem_kib));
    rec.detail("dest_pid", json!(dst_pid));
    if !sc.postcopy {
        rec.set(
            &format!("{p}.throughput_mib_s"),
            transferred as f64 / MIB as f64 / migration.as_secs_f64().max(1e-9),
        );
        rec.set(
            &format!("{p}.dest_rss_beyond_mib"),
            (pm.vm_hwm_kib as f64 * 1024.0 - sc.mem as f64) / MIB as f64,
        );
        rec.set(&format!("{p}.dest_vmhwm_mib"), pm.vm_hwm_kib as f64 / 1024.0);
        rec.set(&format!("{p}.dest_anon_file_peak_mib"), peak_nonshmem_kib as f64 / 1024.0);
        // Sanity: sampled pages identical on both sides.
        let pages = sample_pages(0, sc.mem / TARGET_PAGE_SIZE, VERIFY_PAGES);
        let want = page_digests(&m.src.cfg.mem_path, &pages)?;
        let bad = compare_pages(&m.dst.cfg.mem_path, &pages, &want)?;
        rec.detail("verify_sampled_pages", json!({"pages": VERIFY_PAGES, "mismatched": bad}));
        if bad > 0 {
            bail!("{bad} of {VERIFY_PAGES} sampled pages differ between source and destination");
        }
    } else {
        let (t_pc_poll, pages_at_pc) = pc_seen.unwrap_or((t0, pc_pages_before));
        let t_pc = event_time(&m.src.qmp, MigrationStatus::PostcopyActive, t0).unwrap_or(t_pc_poll);
        let pc = t_done.saturating_duration_since(t_pc);
        // Pages sent before the switch (the first sample in postcopy may be a
        // little late; the last precopy sample is the better lower bound).
        let before =
            if pc_pages_before > 0 { pc_pages_before.min(pages_at_pc) } else { pages_at_pc };
        let placed = src_pages(&sv).saturating_sub(before);
        rec.set(&format!("{p}.postcopy_ms"), ms(pc));
        rec.set(&format!("{p}.pages_per_s"), placed as f64 / pc.as_secs_f64().max(1e-9));
        rec.detail("pages_placed_in_postcopy", json!(placed));
        rec.detail("source_postcopy_requests", json!(u64_at(&sv, &["ram", "postcopy-requests"])));
        record_own_figures(rec, p, &dv);
    }

    // --- teardown ---
    let t = Instant::now();
    let dst_log = m.dst.log.clone();
    m.quit().await;
    rec.set(&ov("teardown_ms"), ms(t.elapsed()));
    rec.set(&ov("total_ms"), ms(t_scn.elapsed()));

    if sc.postcopy {
        let p = sc.name;
        let traced = match side {
            DestKind::Rust => parse_rust_fault_trace(&dst_log),
            DestKind::Qemu => parse_qemu_fault_trace(&dst_log),
        };
        rec.detail("trace_latency_us", json!(percentiles(&traced)));
        let (p50, p99, max, n) = match side {
            // rust-dest's own measurement (fault read → page placed).
            DestKind::Rust => {
                let x = &dv["x-crossmig"];
                rec.detail("x_crossmig", x.clone());
                let f = &x["fault-latency-us"];
                (f["p50"].as_f64(), f["p99"].as_f64(), f["max"].as_f64(), f["count"].as_f64())
            }
            // QEMU 10.0 has no per-fault latency statistics: from its own
            // trace points (page request queued → requested page placed).
            DestKind::Qemu => {
                let s = percentiles(&traced);
                if traced.is_empty() {
                    (None, None, None, Some(0.0))
                } else {
                    (
                        Some(s.p50 as f64),
                        Some(s.p99 as f64),
                        Some(s.max as f64),
                        Some(s.count as f64),
                    )
                }
            }
        };
        for (k, v) in
            [("fault_p50_us", p50), ("fault_p99_us", p99), ("fault_max_us", max), ("faults", n)]
        {
            if let Some(v) = v {
                rec.set(&format!("{p}.{k}"), v);
            }
        }
        rec.latencies_us = traced;
    }
    Ok(())
}
