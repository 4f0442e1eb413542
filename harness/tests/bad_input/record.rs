//! The real stream every case damages: a QEMU 10.0 source migrated once per
//! test binary through the harness proxy into rust-dest, recorded.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use harness::drive::proxy::{Proxy, ProxyPlan};
use harness::images::Workload;
use harness::qmp::MigrationStatus;
use harness::vm::dest::{start_dest, DestKind};
use harness::vm::procs::{free_tcp_port, PathGuard};
use harness::vm::qemu::{QemuBinary, QemuVm, VmConfig};
use serde_json::{json, Value};

use crate::layout::{parse_layout, Layout};

pub const MIB: u64 = 1 << 20;
pub const MEM: u64 = 128 * MIB;
/// Longest a destination may take to notice damage (after the last byte).
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Recorded {
    pub data: Vec<u8>,
    pub layout: Layout,
}

/// The recorded stream (recorded once per test binary; failures are
/// remembered, so every test reports the same recording error).
pub fn recorded() -> &'static Recorded {
    static REC: OnceLock<Result<Recorded, String>> = OnceLock::new();
    let r = REC.get_or_init(|| {
        // Its own runtime on its own thread: callers are inside (different)
        // test runtimes.
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(record_stream()).map_err(|e| format!("{e:#}"))
        })
        .join()
        .unwrap_or_else(|_| Err("recording thread panicked".into()))
    });
    match r {
        Ok(r) => r,
        Err(e) => panic!("recording a real stream failed: {e}"),
    }
}

pub fn qemu() -> QemuBinary {
    QemuBinary::system().expect("qemu-system-x86_64")
}

/// A QEMU 10.0 source running the sweep guest, stopped after its first
/// serial 'B'.
pub async fn start_source(dir: &std::path::Path, tag: &str) -> anyhow::Result<(QemuVm, PathGuard)> {
    let disk = dir.join(format!("{tag}-sweep.img"));
    std::fs::copy(Workload::Sweep.image_path(), &disk)?;
    let disk_guard = PathGuard::new(&disk);
    let mut cfg = VmConfig::new(&format!("badin-{tag}-src"), MEM);
    cfg.disk = Some(disk);
    cfg.serial_log = Some(dir.join(format!("{tag}-src.serial")));
    let src = QemuVm::start(&qemu(), cfg, dir.join(format!("{tag}-src.log"))).await?;
    src.wait_serial(|s| s.contains('B'), Duration::from_secs(60)).await?;
    src.execute("stop", Value::Null).await?;
    src.qmp.set_parameters(json!({"max-bandwidth": 10u64 << 30, "downtime-limit": 300})).await?;
    Ok((src, disk_guard))
}

async fn record_stream() -> anyhow::Result<Recorded> {
    let t0 = Instant::now();
    let dir = tempfile::Builder::new().prefix("badin-rec-").tempdir()?;
    let (src, _disk) = start_source(dir.path(), "rec").await?;
    let t_boot = t0.elapsed();
    let dst = start_dest(
        DestKind::Rust,
        &qemu(),
        VmConfig::new("badin-rec-dst", MEM),
        dir.path().join("rec-dst.log"),
    )
    .await?;
    let port = free_tcp_port();
    dst.execute("migrate-incoming", json!({"uri": format!("tcp:127.0.0.1:{port}")})).await?;
    dst.qmp
        .wait_migration_status(&[MigrationStatus::Setup], &[MigrationStatus::Failed], WAIT)
        .await?;
    let file = dir.path().join("stream.bin");
    let upstream: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let proxy = Proxy::start("127.0.0.1:0", upstream, ProxyPlan::new().record(&file)).await?;
    src.execute("migrate", json!({"uri": proxy.uri()})).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = src.qmp.query_migrate().await?;
        let d = dst.qmp.query_migrate().await?;
        let (ss, ds) = (MigrationStatus::of(&s), MigrationStatus::of(&d));
        if ss == MigrationStatus::Completed && ds == MigrationStatus::Completed {
            break;
        }
        if ss == MigrationStatus::Failed
            || ds == MigrationStatus::Failed
            || Instant::now() > deadline
        {
            anyhow::bail!(
                "recording migration did not complete: source {s}, destination {d}\nsource log: {}\ndestination log: {}",
                src.log_tail(2000),
                dst.log_tail(4000)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = proxy.handle().wait_ended(0, WAIT).await?;
    let data = std::fs::read(&file)?;
    anyhow::ensure!(
        data.len() as u64 == st.src_to_dst,
        "record file has {} bytes, proxy forwarded {}",
        data.len(),
        st.src_to_dst
    );
    anyhow::ensure!(
        proxy.handle().connections() == 1,
        "source opened {} connections",
        proxy.handle().connections()
    );
    drop(proxy);
    let paths = [src.cfg.mem_path.clone(), dst.cfg.mem_path.clone()];
    dst.quit().await;
    src.quit().await;
    for p in &paths {
        anyhow::ensure!(!p.exists(), "{} left behind", p.display());
    }
    if let Some(keep) = std::env::var_os("CROSSMIG_KEEP_STREAM") {
        std::fs::copy(&file, &keep)?;
    }
    let layout = parse_layout(&data).map_err(anyhow::Error::msg)?;
    eprintln!(
        "recorded {} bytes in {:?} (source up + 'B' in {t_boot:?}); layout: header_end {} machine {:?} ram START {} MEM_SIZE {} (total {:#x}, {} blocks) \
         first page {:?} first PAGE {:?} commands {:?} ram sections {} first FULL {} EOF {}",
        data.len(),
        t0.elapsed(),
        layout.header_end,
        layout.machine,
        layout.ram_start,
        layout.mem_size,
        layout.mem_total,
        layout.blocks.len(),
        layout.first_page,
        layout.first_data_page,
        layout.commands,
        layout.ram_sections,
        layout.first_full,
        layout.eof
    );
    Ok(Recorded { data, layout })
}
