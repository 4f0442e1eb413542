//! rust-dest binary: QEMU-style command line → listener + QMP server.

use std::sync::Arc;

use rust_dest::catalogue::{Catalogue, DeviceCheck};
use rust_dest::channel::{listen, Session};
use rust_dest::cli::{self, Parsed};
use rust_dest::compat::QemuVersion;
use rust_dest::defects::{self, Startup};
use rust_dest::load::{Config, Dest};
use rust_dest::qmp;
use rust_dest::ram::RamTable;
use rust_dest::state::{ListenAddr, Shared};

fn main() {
    // Seeded defects (issue 13): refused when unknown in a `seeded-defects`
    // build, ignored (with a warning) in a normal one.
    match rust_dest::defects::init() {
        Ok(Startup::None) => {}
        Ok(Startup::Ignored(v)) => eprintln!(
            "rust-dest: warning: {}={v} ignored: this build has no seeded defects (feature seeded-defects is off)",
            defects::ENV
        ),
        Ok(Startup::Active(d)) => {
            eprintln!("rust-dest: warning: SEEDED DEFECT ACTIVE: {} (this build is for testing crossmig's checks)", d.name())
        }
        Err(e) => {
            eprintln!("rust-dest: {e}");
            std::process::exit(1);
        }
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match cli::parse(args) {
        Ok(Parsed::Run(o)) => *o,
        Ok(Parsed::Help) => {
            print!("{}", cli::USAGE);
            return;
        }
        Ok(Parsed::Version) => {
            println!(
                "rust-dest {} (speaks the QEMU 7.2-10.x migration stream)",
                env!("CARGO_PKG_VERSION")
            );
            return;
        }
        Err(e) => {
            // QEMU's form: `qemu-system-x86_64: -opt ARG: what`.
            eprintln!("rust-dest: {e}");
            std::process::exit(1);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_DEST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&opts.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    if opts.sched_stats {
        rust_dest::state::sched::enable();
    }
    for w in &opts.warnings {
        tracing::warn!("{w}");
    }
    // Block SIGINT/SIGTERM in every thread; one thread waits for them.
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGINT);
    set.add(nix::sys::signal::Signal::SIGTERM);
    let _ = set.thread_block();

    let compat = QemuVersion::resolve(opts.compat_version, opts.machine.as_deref());
    let devices = match &opts.device_catalogue {
        Some(p) => match Catalogue::load(p) {
            Ok(c) => {
                let instances_known = opts.nodefaults
                    && opts.device_changes.is_empty()
                    && c.is_reference_machine(opts.machine.as_deref());
                tracing::info!(
                    "{c}; instances {}",
                    if instances_known {
                        "checked (reference configuration)".to_string()
                    } else {
                        format!(
                            "unchecked (not the reference configuration: {:?})",
                            opts.device_changes
                        )
                    }
                );
                Some(DeviceCheck { catalogue: Arc::new(c), instances_known })
            }
            Err(e) => {
                eprintln!("rust-dest: --device-catalogue: {e}");
                std::process::exit(1);
            }
        },
        None => None,
    };
    tracing::info!("following the rules of QEMU {compat} where versions differ");
    let ram = Arc::new(RamTable::new(opts.backends.clone(), opts.max_ram));
    // Like QEMU, every memory backend exists from start-up (its file too).
    if let Err(e) = ram.create_backends() {
        eprintln!("rust-dest: {e}");
        std::process::exit(1);
    }
    let shared = Shared::new(ram, opts.start_paused);
    {
        let mut g = shared.lock();
        g.machine = opts.machine.clone();
        let smp = opts.smp;
        g.guest = rust_dest::state::GuestInfo {
            name: opts.name.clone(),
            uuid: opts.uuid,
            vcpus: (0..smp.cpus)
                .map(|i| {
                    let (socket, die, module, core, thread) = smp.ids(i);
                    rust_dest::state::VcpuIds { socket, die, module, core, thread }
                })
                .collect(),
            dies: smp.dies,
            modules: smp.modules,
        };
    }
    let (qtx, qrx) = std::sync::mpsc::channel();
    shared.set_quit_sender(qtx.clone());
    let cfg = Config {
        expect_configuration: opts.send_configuration,
        section_footers: opts.send_section_footer,
        suppress_vmdesc: opts.suppress_vmdesc,
        machine: opts.machine.clone(),
        vcpu: opts.vcpu.clone(),
        uuid: opts.uuid.unwrap_or([0; 16]),
        compat,
        devices,
        postcopy_window: opts.postcopy_window,
        ..Config::default()
    };
    for a in &opts.add_fds {
        let added = rust_dest::mem::adopt_inherited_fd(a.fd)
            .map_err(|_| "fd is not valid or already in use".to_string())
            .and_then(|fd| {
                rust_dest::channel::fds::add_fd(Some(a.set), a.opaque.clone(), fd)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = added {
            eprintln!("rust-dest: -add-fd fd={},set={}: {e}", a.fd, a.set);
            std::process::exit(1);
        }
    }
    let deferred = opts.incoming.as_deref() == Some("defer");
    let session = Session::new(shared.clone(), Dest::new(cfg));
    let _ = session.compat.set(compat);
    {
        let se = session.clone();
        shared.set_incoming_starter(Box::new(move |uri: &str| {
            if !deferred {
                return Err("The incoming migration has already been started (or -incoming defer was not given)".into());
            }
            listen::start(se.clone(), uri).map_err(|e| e.to_string())
        }));
        let se = session.clone();
        shared.set_recover_handler(Box::new(move |uri: &str| {
            listen::bind(se.clone(), uri).map_err(|e| e.to_string())
        }));
    }
    for (q, from) in opts.qmp.iter().zip(&opts.qmp_from) {
        if let Err(e) = qmp::spawn(shared.clone(), q) {
            eprintln!("rust-dest: {from}: {e}");
            std::process::exit(1);
        }
    }
    if let Some(p) = &opts.pidfile {
        let _ = std::fs::write(p, format!("{}\n", std::process::id()));
    }
    if let Some(uri) = &opts.incoming {
        if !deferred {
            if let Err(e) = listen::start(session.clone(), uri) {
                eprintln!("rust-dest: -incoming {uri}: {e}");
                std::process::exit(1);
            }
        }
    }
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            tracing::info!("terminating on signal {sig:?}");
            let _ = qtx.send(());
        }
    });
    let _ = qrx.recv();
    // Remove sockets we created (QEMU removes its QMP unix sockets on exit).
    for q in &opts.qmp {
        if let Ok(a) = qmp::parse_spec(q) {
            if let qmp::QmpEndpoint::Unix(p) = a.endpoint {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    if let Some(ListenAddr::Unix(p)) = shared.lock().incoming.clone() {
        let _ = std::fs::remove_file(p);
    }
    if let Some(p) = &opts.pidfile {
        let _ = std::fs::remove_file(p);
    }
    std::process::exit(0);
}
