//! A destination started with the command line a management stack (libvirt)
//! writes for a q35 guest: JSON `-object`/`-device`/`-blockdev`/`-netdev`,
//! two NUMA nodes each on its own `memory-backend-file`, `-m
//! size=...k,slots=,maxmem=`, the QMP monitor as `-chardev socket` + `-mon
//! mode=control`, and the usual guest-only options. The same line (plus
//! `-incoming defer`) starts a QEMU 10.0 destination and rust-dest; a real
//! source started with the same line (booting the sweep guest from the
//! virtio disk) migrates into each; both NUMA backends must be identical
//! page by page on each destination.

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::drive::session::{Migration, Side};
use harness::images::Workload;
use harness::qmp::{MigrationStatus, StatusWait};
use harness::verify::{guest, memory};
use harness::vm::dest::{dest_binary, DestKind};
use harness::vm::procs::{unique_name, PathGuard};
use harness::vm::qemu::{LaunchOpts, QemuBinary, QemuVm, VmConfig};
use serde_json::json;

const NODE: u64 = 128 << 20;

fn qemu() -> QemuBinary {
    QemuBinary::system().unwrap_or_else(|e| {
        panic!("real QEMU is required for these tests (install it with ci/install.sh): {e:#}")
    })
}

/// Files of one side.
struct Files {
    nodes: [PathBuf; 2],
    monitor: PathBuf,
    serial: Option<PathBuf>,
}

/// The line, written the way libvirt 9.x writes it for a q35 guest with two
/// NUMA nodes (only paths differ between the source and the destination).
fn libvirt_line(name: &str, s: &Files, disk: &Path, incoming: bool) -> Vec<String> {
    let backend = |i: usize| {
        json!({"qom-type": "memory-backend-file", "id": format!("ram-node{i}"),
               "mem-path": s.nodes[i], "share": true, "prealloc": false, "size": NODE})
        .to_string()
    };
    let serial = match &s.serial {
        Some(p) => format!("file,id=charserial0,path={}", p.display()),
        None => "null,id=charserial0".to_string(),
    };
    let mut v: Vec<String> = vec![
        "-name".into(),
        format!("guest={name},debug-threads=on"),
        "-machine".into(),
        "pc-q35-10.0,usb=off,vmport=off,dump-guest-core=off,hpet=off,acpi=on".into(),
        "-accel".into(),
        "tcg".into(),
        "-cpu".into(),
        "qemu64".into(),
        "-m".into(),
        format!("size={}k,slots=4,maxmem={}k", 2 * NODE / 1024, 4 * NODE / 1024),
        "-overcommit".into(),
        "mem-lock=off".into(),
        "-smp".into(),
        "2,sockets=2,dies=1,cores=1,threads=1".into(),
        "-object".into(),
        backend(0),
        "-numa".into(),
        "node,nodeid=0,cpus=0,memdev=ram-node0".into(),
        "-object".into(),
        backend(1),
        "-numa".into(),
        "node,nodeid=1,cpus=1,memdev=ram-node1".into(),
        "-uuid".into(),
        "c7a5fdbd-cdaf-9455-926a-d65c16db1809".into(),
        "-display".into(),
        "none".into(),
        "-no-user-config".into(),
        "-nodefaults".into(),
        "-chardev".into(),
        format!("socket,id=charmonitor,path={},server=on,wait=off", s.monitor.display()),
        "-mon".into(),
        "chardev=charmonitor,id=monitor,mode=control".into(),
        "-rtc".into(),
        "base=utc,driftfix=slew".into(),
        "-global".into(),
        "ICH9-LPC.disable_s3=1".into(),
        "-no-shutdown".into(),
        "-boot".into(),
        "strict=on".into(),
    ];
    let devices = [
        json!({"driver":"pcie-root-port","port":16,"chassis":1,"id":"pci.1","bus":"pcie.0","multifunction":true,"addr":"0x2"}),
        json!({"driver":"pcie-root-port","port":17,"chassis":2,"id":"pci.2","bus":"pcie.0","addr":"0x2.0x1"}),
        json!({"driver":"pcie-root-port","port":18,"chassis":3,"id":"pci.3","bus":"pcie.0","addr":"0x2.0x2"}),
    ];
    for d in devices {
        v.extend(["-device".into(), d.to_string()]);
    }
    let rest = [
        (
            "-blockdev",
            json!({"driver":"file","filename":disk,"node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"}),
        ),
        (
            "-blockdev",
            json!({"node-name":"libvirt-1-format","read-only":false,"driver":"raw","file":"libvirt-1-storage"}),
        ),
        (
            "-device",
            json!({"driver":"virtio-blk-pci","bus":"pci.1","addr":"0x0","drive":"libvirt-1-format","id":"virtio-disk0","bootindex":1}),
        ),
        ("-netdev", json!({"type":"user","id":"hostnet0"})),
        (
            "-device",
            json!({"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0","mac":"52:54:00:12:34:56","bus":"pci.2","addr":"0x0"}),
        ),
    ];
    for (o, j) in rest {
        v.extend([o.to_string(), j.to_string()]);
    }
    v.extend(["-chardev".into(), serial]);
    for (o, a) in [
        (
            "-device",
            json!({"driver":"isa-serial","chardev":"charserial0","id":"serial0","index":0})
                .to_string(),
        ),
        (
            "-device",
            json!({"driver":"virtio-balloon-pci","id":"balloon0","bus":"pci.3","addr":"0x0"})
                .to_string(),
        ),
        ("-audiodev", json!({"id":"audio1","driver":"none"}).to_string()),
        (
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
        ),
        ("-msg", "timestamp=on".into()),
    ] {
        v.extend([o.to_string(), a]);
    }
    if incoming {
        v.extend(["-S".into(), "-incoming".into(), "defer".into()]);
    }
    v
}

fn files(tag: &str, serial: bool) -> Files {
    let n = unique_name(tag);
    Files {
        nodes: [0, 1].map(|i| PathBuf::from(format!("/dev/shm/{n}-node{i}.ram"))),
        monitor: std::env::temp_dir().join(format!("{n}.monitor")),
        serial: serial.then(|| std::env::temp_dir().join(format!("{n}.serial"))),
    }
}

async fn launch(bin: &QemuBinary, name: &str, s: &Files, disk: &Path, dest: bool) -> QemuVm {
    let mut cfg = VmConfig::new(name, 2 * NODE);
    cfg.mem_path = s.nodes[0].clone();
    cfg.qmp_socket = s.monitor.clone();
    cfg.serial_log = s.serial.clone();
    let log = std::env::temp_dir().join(format!("{}.log", unique_name(name)));
    let mut o = LaunchOpts::new(&log);
    o.remove_log = true;
    o.argv = Some(libvirt_line(name, s, disk, dest));
    QemuVm::launch(bin, cfg, o).await.unwrap_or_else(|e| panic!("{name}: {e}"))
}

async fn management_line_into(kind: DestKind) {
    let q = qemu();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("sweep.img");
    std::fs::copy(Workload::Sweep.image_path(), &disk).unwrap();
    let (sf, df) = (files("mgmt-src", true), files(&format!("mgmt-dst-{kind}"), false));
    // Node 1's files and the serial log (node 0's are guarded by the launcher).
    let serial = sf.serial.clone().unwrap();
    let _g = [PathGuard::new(&sf.nodes[1]), PathGuard::new(&df.nodes[1]), PathGuard::new(&serial)];
    let src = launch(&q, "mgmt-src", &sf, &disk, false).await;
    src.wait_serial(|s| s.contains('B'), Duration::from_secs(60)).await.expect("guest runs");
    let dst = launch(&dest_binary(kind, &q).unwrap(), "mgmt-dst", &df, &disk, true).await;
    // What the destination reports about itself comes from the same line.
    let name = dst.execute("query-name", json!({})).await;
    let mut m = Migration::new(src, dst, kind);
    m.set_capabilities(Side::Both, &[("events", true)]).await.unwrap();
    m.set_parameters(Side::Source, &json!({"max-bandwidth": 10u64 << 30, "downtime-limit": 300}))
        .await
        .unwrap();
    m.migrate(true).await.unwrap();
    let w = StatusWait::until([MigrationStatus::Completed])
        .failing_on([MigrationStatus::Failed, MigrationStatus::Cancelled]);
    let done = m.wait_status(Side::Both, &w, Duration::from_secs(120)).await;
    let tails = m.log_tails(2000, 4000);
    let mut checks = Vec::new();
    for i in 0..2 {
        let (c, _) = memory::check_files(
            &format!("ram-node{i} identical"),
            &format!("ram-node{i}"),
            &sf.nodes[i],
            &df.nodes[i],
        )
        .unwrap();
        checks.push(c);
    }
    let node0 = std::fs::read(&df.nodes[0]).unwrap();
    checks.push(guest::check_workload(Workload::Sweep, &node0, 2 * NODE));
    m.quit().await;
    done.unwrap_or_else(|e| panic!("migration into {kind}: {e:#}\n{tails}"));
    for c in &checks {
        println!("{kind}: {c}");
    }
    assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
    assert_eq!(name.unwrap(), json!({"name": "mgmt-dst"}));
}

#[tokio::test]
async fn management_line_into_qemu() {
    management_line_into(DestKind::Qemu).await;
}

#[tokio::test]
async fn management_line_into_rust() {
    management_line_into(DestKind::Rust).await;
}
