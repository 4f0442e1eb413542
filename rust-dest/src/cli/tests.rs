//! Whole command lines: QEMU's destination line as the harness writes it,
//! a libvirt-style line, and refusals with QEMU's kind of message.

use super::*;

fn p(s: &str) -> Result<Options, String> {
    pv(s.split_whitespace().map(String::from).collect())
}

fn pv(v: Vec<String>) -> Result<Options, String> {
    match parse(v).map_err(|e| e.to_string())? {
        Parsed::Run(o) => Ok(*o),
        _ => Err("help".into()),
    }
}

#[test]
fn uuid() {
    let u = parse_uuid("01234567-89ab-cdef-0011-223344556677").unwrap();
    assert_eq!(u[0], 0x01);
    assert_eq!(u[15], 0x77);
    assert!(parse_uuid("0123456789abcdef0011223344556677").is_none());
    assert!(parse_uuid("01234567-89ab-cdef-0011-22334455667g").is_none());
    assert_eq!(
        p("-uuid zzz -incoming tcp:0:1").unwrap_err(),
        "-uuid zzz: failed to parse UUID string: wrong format"
    );
}

#[test]
fn qemu_destination_line() {
    let o = p("-accel tcg -machine q35,memory-backend=mem0 -m 256M -object memory-backend-file,id=mem0,size=256M,mem-path=/dev/shm/x,share=on -nodefaults -display none -serial none -qmp unix:/tmp/q.sock,server=on,wait=off -incoming tcp:127.0.0.1:4444 -S -name dst").unwrap();
    assert_eq!(o.incoming.as_deref(), Some("tcp:127.0.0.1:4444"));
    assert_eq!(o.machine.as_deref(), Some("q35"));
    assert_eq!(o.mem_size, Some(256 << 20));
    assert_eq!(o.backends.len(), 1);
    assert_eq!(o.backends[0].id, "mem0");
    assert_eq!(o.backends[0].size, 256 << 20);
    assert_eq!(o.name.as_deref(), Some("dst"));
    assert!(o.start_paused);
    assert_eq!(o.warnings.len(), 3, "{:?}", o.warnings);
}

/// A destination line in the shape libvirt 9.x writes for a q35 guest.
fn libvirt_line() -> Vec<String> {
    let v = [
        "-name",
        "guest=vm1,debug-threads=on",
        "-S",
        "-object",
        r#"{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/libvirt/qemu/domain-1-vm1/master-key.aes"}"#,
        "-machine",
        "pc-q35-10.0,usb=off,vmport=off,dump-guest-core=off,memory-backend=pc.ram,hpet=off,acpi=on",
        "-accel",
        "tcg",
        "-cpu",
        "qemu64",
        "-m",
        "size=262144k",
        "-object",
        r#"{"qom-type":"memory-backend-file","id":"pc.ram","mem-path":"/dev/shm/vm1.ram","share":true,"x-use-canonical-path-for-ramblock-id":false,"prealloc":false,"size":268435456}"#,
        "-overcommit",
        "mem-lock=off",
        "-smp",
        "2,sockets=2,dies=1,cores=1,threads=1",
        "-uuid",
        "c7a5fdbd-cdaf-9455-926a-d65c16db1809",
        "-no-user-config",
        "-nodefaults",
        "-chardev",
        "socket,id=charmonitor,path=/tmp/vm1.monitor,server=on,wait=off",
        "-mon",
        "chardev=charmonitor,id=monitor,mode=control",
        "-rtc",
        "base=utc,driftfix=slew",
        "-global",
        "kvm-pit.lost_tick_policy=delay",
        "-no-shutdown",
        "-global",
        "ICH9-LPC.disable_s3=1",
        "-boot",
        "strict=on",
        "-device",
        r#"{"driver":"pcie-root-port","port":16,"chassis":1,"id":"pci.1","bus":"pcie.0","multifunction":true,"addr":"0x2"}"#,
        "-blockdev",
        r#"{"driver":"file","filename":"/var/lib/libvirt/images/vm1.qcow2","node-name":"libvirt-1-storage","read-only":false}"#,
        "-device",
        r#"{"driver":"virtio-blk-pci","bus":"pci.1","addr":"0x0","drive":"libvirt-1-storage","id":"virtio-disk0","bootindex":1}"#,
        "-netdev",
        r#"{"type":"user","id":"hostnet0"}"#,
        "-chardev",
        "pty,id=charserial0",
        "-device",
        r#"{"driver":"isa-serial","chardev":"charserial0","id":"serial0","index":0}"#,
        "-audiodev",
        r#"{"id":"audio1","driver":"none"}"#,
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-msg",
        "timestamp=on",
        "-incoming",
        "defer",
    ];
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn libvirt_style_line() {
    let o = pv(libvirt_line()).unwrap();
    assert_eq!(o.qmp, vec!["unix:/tmp/vm1.monitor,server=on,wait=off"]);
    assert_eq!(o.machine.as_deref(), Some("pc-q35-10.0"));
    assert_eq!(o.machine_backend.as_deref(), Some("pc.ram"));
    assert_eq!(o.backends.len(), 1);
    let b = &o.backends[0];
    assert_eq!((b.id.as_str(), b.size, b.share), ("pc.ram", 256 << 20, true));
    assert_eq!(b.mem_path.as_deref(), Some(std::path::Path::new("/dev/shm/vm1.ram")));
    assert_eq!(o.name.as_deref(), Some("vm1"));
    assert_eq!(o.smp.cpus, 2);
    assert_eq!(o.mem_size, Some(256 << 20));
    assert!(o.uuid.is_some() && o.start_paused);
    // One line per option not modelled, none for what rust-dest honours.
    let about_ram: Vec<_> =
        o.warnings.iter().filter(|w| w.starts_with("-object memory-backend-file")).collect();
    assert!(
        about_ram.iter().all(|w| w.ends_with(": prealloc not modelled (ignored)")),
        "{about_ram:?}"
    );
    assert!(o.warnings.iter().any(|w| w.contains("charserial0")), "{:?}", o.warnings);
}

#[test]
fn monitor_and_ram_are_never_ignored() {
    // Without the -mon, -incoming defer could never be started.
    let mut v = libvirt_line();
    let i = v.iter().position(|a| a == "-mon").unwrap();
    v.drain(i..i + 2);
    assert!(pv(v).unwrap_err().starts_with("-incoming defer needs a QMP monitor"));
    // A backend named by -machine must exist, in either syntax.
    let mut v = libvirt_line();
    let i = v.iter().position(|a| a.contains("memory-backend-file")).unwrap();
    v.drain(i - 1..i + 1);
    assert_eq!(pv(v).unwrap_err(), "Memory backend 'pc.ram' not found");
    assert!(p("-object memory-backend-epc,id=x,size=1M -incoming tcp:0:1")
        .unwrap_err()
        .contains("not supported"));
    assert!(p("-mem-path /dev/hugepages -incoming tcp:0:1").is_err());
    assert!(p("-monitor stdio -incoming tcp:0:1").is_err());
}

#[test]
fn numa_backends() {
    let o = p("-m 256M -object memory-backend-ram,id=ram-node0,size=128M -object {\"qom-type\":\"memory-backend-memfd\",\"id\":\"ram-node1\",\"size\":134217728} -numa node,nodeid=0,cpus=0,memdev=ram-node0 -numa node,nodeid=1,cpus=1,memdev=ram-node1 -numa dist,src=0,dst=1,val=20 -smp 2 -incoming tcp:0:1").unwrap();
    assert_eq!(
        o.backends.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
        ["ram-node0", "ram-node1"]
    );
    assert_eq!(
        p("-m 256M -object memory-backend-ram,id=a,size=128M -numa node,memdev=a -incoming tcp:0:1").unwrap_err(),
        "total memory for NUMA nodes (0x8000000) should equal RAM size (0x10000000)"
    );
}

#[test]
fn sizes_and_errors() {
    assert_eq!(parse_size("1G").unwrap(), 1 << 30);
    assert_eq!(parse_size("512k").unwrap(), 512 << 10);
    assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert!(parse_size("12X").is_err());
    assert_eq!(p("-bogus").unwrap_err(), "-bogus: invalid option");
    assert_eq!(p("-incoming").unwrap_err(), "-incoming: requires an argument");
    assert_eq!(p("-S -m").unwrap_err(), "-m: requires an argument");
    let q = "-qmp unix:/tmp/x,server=on,wait=off";
    assert!(p(&format!("--max-ram 2G {q}")).unwrap().max_ram == 2 << 30);
    assert!(p(&format!("--max-ram=2G {q}")).unwrap().max_ram == 2 << 30);
    assert_eq!(p(&format!("-m 128 {q}")).unwrap().mem_size, Some(128 << 20));
    assert!(p(&format!("-machine pc-q35-10.0,suppress-vmdesc=on {q}")).unwrap().suppress_vmdesc);
    assert!(p(&format!("--vcpu-pattern zigzag {q}")).is_err());
    assert_eq!(p(q).unwrap().postcopy_window, crate::load::POSTCOPY_WINDOW);
    assert_eq!(p(&format!("--postcopy-window 1M {q}")).unwrap().postcopy_window, 1 << 20);
    assert_eq!(p(&format!("--postcopy-window 0 {q}")).unwrap().postcopy_window, 0);
    assert!(p(&format!("--postcopy-window lots {q}")).is_err());
    assert!(!p(q).unwrap().sched_stats);
    assert!(p(&format!("--sched-stats {q}")).unwrap().sched_stats);
    assert_eq!(
        p(&format!("-machine pc-q35-10.0,bogus=on {q}")).unwrap_err(),
        "Property 'pc-q35-10.0-machine.bogus' not found"
    );
    assert!(
        p(&format!("-machine q35,pflash0=fw,kernel-irqchip=split,cxl-fmw.0.size=4G {q}")).is_ok()
    );
    assert!(p(&format!("-m foo {q}"))
        .unwrap_err()
        .starts_with("-m foo: Parameter 'size' expects a non-negative number"));
    assert_eq!(
        p(&format!(
            "-object memory-backend-ram,id=m,size=1G -object memory-backend-ram,id=m,size=1G {q}"
        ))
        .unwrap_err(),
        "-object memory-backend-ram,id=m,size=1G: Duplicate ID 'm' for object"
    );
    assert_eq!(p("x").unwrap_err(), "x: unexpected argument (QEMU-style options start with '-')");
}

const QMP: &str = "-qmp unix:/tmp/q.sock,server=on,wait=off";

#[test]
fn device_catalogue_options() {
    let o = p(&format!("-incoming defer {QMP} --device-catalogue /x.devices --compat-version 7.2"))
        .unwrap();
    assert_eq!(o.device_catalogue.as_deref(), Some(std::path::Path::new("/x.devices")));
    assert_eq!(o.compat_version, Some(QemuVersion::new(7, 2)));
    assert!(p(&format!("-incoming defer {QMP} --compat-version seven"))
        .unwrap_err()
        .contains("--compat-version"));
    // What changes the device instances of the reference configuration.
    let o =
        p(&format!("-incoming defer {QMP} -nodefaults -smp 1 -accel tcg -serial null -vga none"))
            .unwrap();
    assert!(o.nodefaults && o.device_changes.is_empty(), "{:?}", o.device_changes);
    for extra in [
        "-smp 2",
        "-device e1000",
        "-drive file=x,if=ide",
        "-enable-kvm",
        "-machine q35,hpet=off",
        "-serial null -serial null",
    ] {
        let o = p(&format!("-incoming defer {QMP} -nodefaults {extra}")).unwrap();
        assert!(!o.device_changes.is_empty(), "{extra}");
    }
}

#[test]
fn old_machine_types_imply_their_stream_format() {
    let o = p(&format!("-machine pc-i440fx-2.2 -incoming defer {QMP}")).unwrap();
    assert!(o.suppress_vmdesc && !o.send_configuration && !o.send_section_footer);
    let o = p(&format!("-machine pc-i440fx-2.3 -incoming defer {QMP}")).unwrap();
    assert!(!o.suppress_vmdesc && !o.send_configuration && !o.send_section_footer);
    for m in ["pc-i440fx-2.4", "pc-i440fx-2.12", "q35", "pc-q35-7.2", "pc-i440fx-10.0"] {
        assert_eq!(MachineCompat::of(m), MachineCompat::default(), "{m}");
    }
    // Explicit settings win, in any order.
    let o = p(&format!("-machine pc-i440fx-2.2,suppress-vmdesc=off -global migration.send-section-footer=on -incoming defer {QMP}")).unwrap();
    assert!(!o.suppress_vmdesc && o.send_section_footer && !o.send_configuration);
}

#[test]
fn add_fd() {
    use super::misc::{parse_add_fd, AddFd};
    assert_eq!(
        parse_add_fd("fd=5,set=2,opaque=x").unwrap(),
        AddFd { fd: 5, set: 2, opaque: Some("x".into()) }
    );
    // QEMU 10.0's texts.
    for (a, e) in [
        ("set=1", "fd option is required and must be non-negative"),
        ("fd=3", "set option is required and must be non-negative"),
        ("fd=x,set=1", "Parameter 'fd' expects a number"),
        ("fd=3,set=-1", "set option is required and must be non-negative"),
        ("fd=1,set=1", "fd cannot be a standard I/O stream"),
        ("fd=3,set=1,bogus=2", "Invalid parameter 'bogus'"),
    ] {
        assert_eq!(parse_add_fd(a).unwrap_err().to_string(), format!("-add-fd {a}: {e}"));
    }
}
