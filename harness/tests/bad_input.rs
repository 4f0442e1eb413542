//! Damaged migration streams must fail cleanly: real QEMU 10.0 source, real
//! rust-dest (and a real QEMU destination as the oracle).
//!
//! Once per test binary a real precopy stream (128 MiB q35 guest running
//! the sweep workload, stopped) is migrated through the harness proxy into
//! rust-dest and recorded byte for byte. The recording is parsed with
//! rust-dest's codec to find structural offsets; every test then replays a
//! damaged copy (or a synthetic prefix built from its header) into a fresh
//! destination over TCP and checks that the destination
//! * reaches `failed` (no hang: within 10 s, also when the socket is kept
//!   open after damage that needs no EOF to be detected),
//! * reports an `error-desc` naming what was wrong and `byte offset N`,
//! * sends `SHUT(1)` when the return path is open,
//! * keeps answering QMP and did not panic.
//!
//! `CROSSMIG_KEEP_STREAM=/path` keeps a copy of the recorded stream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use harness::drive::proxy::{Proxy, ProxyPlan};
use harness::images::Workload;
use harness::qmp::{MigrationStatus, RunState};
use harness::vm::dest::{start_dest, DestKind};
use harness::vm::procs::{free_tcp_port, PathGuard};
use harness::vm::qemu::{QemuBinary, QemuVm, VmConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use wire::ramrec::{decode_ram_record, BlockRef, RamContext, RamRecord};
use wire::stream::{decode_footer, decode_header, decode_top, SectionKind, TopRecord};
use wire::{vmdesc, Cursor};

const MIB: u64 = 1 << 20;
const MEM: u64 = 128 * MIB;
/// Longest a destination may take to notice damage (after the last byte).
const WAIT: Duration = Duration::from_secs(10);
/// Bytes kept after the damaged spot in "keep the socket open" cases.
const TAIL: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// the recorded stream and its layout

/// One page record found in the stream.
#[derive(Clone, Debug)]
struct PageRec {
    off: u64,
    /// Whole record length (word, optional name, body).
    len: u64,
    /// Flag bits (low 12 bits of the word), e.g. 0x08 PAGE, 0x02 ZERO, 0x20 CONTINUE.
    flags: u64,
    addr: u64,
    /// The block it is in (resolved through CONTINUE).
    block: String,
    /// Carries its block name (no CONTINUE).
    named: bool,
}

#[derive(Debug)]
struct Layout {
    len: u64,
    /// First byte after magic, version and the configuration section.
    header_end: u64,
    machine: String,
    ram_id: u32,
    /// The START "ram" section header.
    ram_start: u64,
    /// The MEM_SIZE record (first record of the START section).
    mem_size: u64,
    mem_total: u64,
    /// MEM_SIZE entries: (offset of the entry, name, used_length).
    blocks: Vec<(u64, String, u64)>,
    /// First byte after the START section's footer (a record boundary).
    start_footer_end: u64,
    /// First page record of the stream (ZERO or PAGE; always named).
    first_page: PageRec,
    /// First PAGE (raw data) record.
    first_data_page: PageRec,
    /// Top-level commands: (offset, cmd).
    commands: Vec<(u64, u16)>,
    ram_sections: usize,
    /// First FULL (device state) section.
    first_full: u64,
    /// The EOF byte (0x00); the vmdesc (0x06, be32 len, JSON) follows.
    eof: u64,
}

impl Layout {
    fn block_len(&self, name: &str) -> u64 {
        self.blocks
            .iter()
            .find(|b| b.1 == name)
            .map(|b| b.2)
            .unwrap_or_else(|| panic!("block {name:?} not in MEM_SIZE"))
    }
}

fn parse_layout(data: &[u8]) -> Result<Layout, String> {
    fn e(what: &'static str) -> impl Fn(wire::DecodeError) -> String {
        move |err| format!("parsing the recorded stream ({what}): {err}")
    }
    let mut c = Cursor::new(data, 0);
    let hdr = decode_header(&mut c, true).map_err(e("header"))?;
    let header_end = c.offset();
    let machine = hdr.configuration.map(|c| c.machine).unwrap_or_default();
    let ctx = RamContext::x86();
    let (mut ram_id, mut ram_start, mut mem_size, mut mem_total) = (None, 0, 0, 0);
    let mut blocks = Vec::new();
    let mut start_footer_end = 0;
    let (mut first_page, mut first_data_page) = (None::<PageRec>, None::<PageRec>);
    let mut commands = Vec::new();
    let mut ram_sections = 0;
    let mut last_block = String::new();
    let first_full = loop {
        let off = c.offset();
        match decode_top(&mut c).map_err(e("top-level record"))? {
            TopRecord::SectionOpen { kind: SectionKind::Full, .. } => break off,
            TopRecord::Command(rc) => commands.push((off, rc.cmd)),
            rec @ (TopRecord::SectionOpen { .. } | TopRecord::SectionCont { .. }) => {
                let id = match rec {
                    TopRecord::SectionOpen {
                        kind: SectionKind::Start,
                        section_id,
                        idstr: "ram",
                        instance_id: 0,
                        ..
                    } => {
                        if ram_id.is_some() {
                            return Err(format!("second START \"ram\" at {off}"));
                        }
                        ram_id = Some(section_id);
                        ram_start = off;
                        section_id
                    }
                    TopRecord::SectionCont { section_id, .. } if Some(section_id) == ram_id => {
                        section_id
                    }
                    other => return Err(format!("unexpected record at {off}: {other:?}")),
                };
                ram_sections += 1;
                loop {
                    let roff = c.offset();
                    let rec = decode_ram_record(&mut c, &ctx).map_err(e("ram record"))?;
                    let rlen = c.offset() - roff;
                    let flags = u64::from_be_bytes(
                        data[roff as usize..roff as usize + 8].try_into().unwrap(),
                    ) & 0xfff;
                    let (addr, block) = match rec {
                        RamRecord::MemSize { total, blocks: bl } => {
                            mem_size = roff;
                            mem_total = total;
                            let mut eo = roff + 8;
                            for b in bl {
                                blocks.push((eo, b.name.clone(), b.used_length));
                                eo += 1 + b.name.len() as u64 + 8;
                            }
                            continue;
                        }
                        RamRecord::Eos => break,
                        RamRecord::Page { addr, block, .. }
                        | RamRecord::Zero { addr, block, .. } => (addr, block),
                        other => return Err(format!("unexpected ram record at {roff}: {other:?}")),
                    };
                    let named = matches!(block, BlockRef::Named(_));
                    if let BlockRef::Named(n) = block {
                        last_block = n.to_string();
                    }
                    let pr = PageRec {
                        off: roff,
                        len: rlen,
                        flags,
                        addr,
                        block: last_block.clone(),
                        named,
                    };
                    if first_page.is_none() {
                        first_page = Some(pr.clone());
                    }
                    if first_data_page.is_none() && flags & 0x08 != 0 {
                        first_data_page = Some(pr);
                    }
                }
                decode_footer(&mut c, id).map_err(e("section footer"))?;
                if start_footer_end == 0 {
                    start_footer_end = c.offset();
                }
            }
            TopRecord::Eof => return Err(format!("EOF at {off} before any device state")),
            TopRecord::VmDescription { .. } => {
                return Err(format!("VMDESCRIPTION at {off} before EOF"))
            }
        }
    };
    let (eof_pos, _) =
        vmdesc::find_vmdesc_tail(&data[first_full as usize..]).ok_or("no vmdesc tail found")?;
    Ok(Layout {
        len: data.len() as u64,
        header_end,
        machine,
        ram_id: ram_id.ok_or("no ram section")?,
        ram_start,
        mem_size,
        mem_total,
        blocks,
        start_footer_end,
        first_page: first_page.ok_or("no page record")?,
        first_data_page: first_data_page.ok_or("no PAGE record")?,
        commands,
        ram_sections,
        first_full,
        eof: first_full + eof_pos as u64,
    })
}

struct Recorded {
    data: Vec<u8>,
    layout: Layout,
}

/// The recorded stream (recorded once per test binary; failures are
/// remembered, so every test reports the same recording error).
fn recorded() -> &'static Recorded {
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

fn qemu() -> QemuBinary {
    QemuBinary::system().expect("qemu-system-x86_64")
}

/// A QEMU 10.0 source running the sweep guest, stopped after its first
/// serial 'B'.
async fn start_source(dir: &std::path::Path, tag: &str) -> anyhow::Result<(QemuVm, PathGuard)> {
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

// ---------------------------------------------------------------------------
// building damaged streams

fn be64_at(d: &[u8], off: u64) -> u64 {
    u64::from_be_bytes(d[off as usize..off as usize + 8].try_into().unwrap())
}

fn set_be64(d: &mut [u8], off: u64, v: u64) {
    d[off as usize..off as usize + 8].copy_from_slice(&v.to_be_bytes());
}

/// `data[..at] ++ insert ++ data[at + remove..]`, cut `TAIL` bytes after
/// the spliced spot (the rest is not needed to detect the damage).
fn splice(data: &[u8], at: u64, remove: usize, insert: &[u8]) -> Vec<u8> {
    let at = at as usize;
    let mut v = data[..at].to_vec();
    v.extend_from_slice(insert);
    let rest = &data[at + remove..];
    v.extend_from_slice(&rest[..rest.len().min(TAIL)]);
    v
}

/// Does `desc` contain "byte offset N" (not followed by more digits)?
fn names_offset(desc: &str, n: u64) -> bool {
    let pat = format!("byte offset {n}");
    desc.match_indices(&pat)
        .any(|(i, _)| !desc[i + pat.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

// ---------------------------------------------------------------------------
// destinations and replay

struct Dest {
    kind: DestKind,
    vm: QemuVm,
    port: u16,
    paths: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

/// How a destination ended up after a replay.
#[derive(Debug)]
struct Outcome {
    /// `failed`, `completed`, or `exited` (the process is gone).
    status: String,
    desc: String,
    exit: Option<String>,
    /// Bytes the destination sent back on the migration socket.
    rp: Vec<u8>,
    /// The destination closed the socket.
    rp_closed: bool,
    /// From the last byte written to the final status.
    detect: Duration,
    log: String,
}

impl Dest {
    async fn start(kind: DestKind, name: &str) -> Dest {
        Self::start_with(kind, name, false).await
    }

    /// `qemu_exit_on_error`: QEMU's default (exit the process on a failed
    /// incoming migration); otherwise QEMU stays up and shows the error in
    /// query-migrate. rust-dest always stays up.
    async fn start_with(kind: DestKind, name: &str, qemu_exit_on_error: bool) -> Dest {
        let dir = tempfile::Builder::new().prefix("badin-").tempdir().unwrap();
        let cfg = VmConfig::new(&format!("badin-{name}-{}", kind.name()), MEM);
        let paths = vec![cfg.mem_path.clone(), cfg.qmp_socket.clone()];
        let vm = start_dest(kind, &qemu(), cfg, dir.path().join("dest.log"))
            .await
            .expect("starting the destination");
        let port = free_tcp_port();
        let mut args = json!({"uri": format!("tcp:127.0.0.1:{port}")});
        if kind == DestKind::Qemu && !qemu_exit_on_error {
            // keep QEMU up after a failure so query-migrate shows its error
            args["exit-on-error"] = json!(false);
        }
        vm.execute("migrate-incoming", args).await.expect("migrate-incoming");
        vm.qmp
            .wait_migration_status(&[MigrationStatus::Setup], &[MigrationStatus::Failed], WAIT)
            .await
            .expect("destination in setup");
        Dest { kind, vm, port, paths, _dir: dir }
    }

    async fn connect(&self) -> TcpStream {
        for _ in 0..100 {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", self.port)).await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("cannot connect to the {} destination on port {}", self.kind, self.port)
    }

    /// Poll until the incoming migration is failed/completed or the
    /// process exited; `None` on timeout (a hang).
    async fn wait_end(&mut self, timeout: Duration) -> Option<(String, String, Option<String>)> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.vm.child.is_running() {
                let st = self.vm.child.wait_exit_async(Duration::from_secs(2)).await;
                return Some(("exited".into(), String::new(), st.map(|s| s.to_string())));
            }
            if let Ok(v) = self.vm.qmp.query_migrate().await {
                let s = MigrationStatus::of(&v);
                if matches!(s, MigrationStatus::Failed | MigrationStatus::Completed) {
                    return Some((
                        s.to_string(),
                        v["error-desc"].as_str().unwrap_or("").to_string(),
                        None,
                    ));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }

    fn log(&self) -> String {
        self.vm.log_tail(64 * 1024)
    }

    /// rust-dest must still answer QMP after the failure and must not have
    /// panicked.
    async fn check_alive(&self, ctx: &str) {
        if self.kind != DestKind::Rust {
            return;
        }
        let st = self.vm.execute("query-status", Value::Null).await;
        let ver = self.vm.execute("query-version", Value::Null).await;
        assert!(
            st.is_ok() && ver.is_ok(),
            "{ctx}: rust-dest stopped answering QMP: {st:?} {ver:?}\nlog:\n{}",
            self.log()
        );
        let rs = RunState::from(st.unwrap()["status"].as_str().unwrap_or(""));
        assert!(
            matches!(rs, RunState::Postmigrate | RunState::Inmigrate),
            "{ctx}: run state after a failed migration is {rs:?}"
        );
        assert!(self.vm.child.is_running(), "{ctx}: rust-dest exited");
        let log = self.log();
        assert!(!log.contains("panicked"), "{ctx}: rust-dest panicked:\n{log}");
    }

    /// Quit and check nothing is left behind.
    async fn finish(self) {
        let paths = self.paths.clone();
        self.vm.quit().await;
        for p in paths {
            assert!(!p.exists(), "{} left behind", p.display());
        }
    }
}

/// Write `bytes` to a fresh connection to `d`, then shut down the write side
/// (`close`) or keep the connection open, and wait for the outcome.
async fn replay_into(d: &mut Dest, bytes: &[u8], close: bool) -> (Outcome, OwnedWriteHalf) {
    let sock = d.connect().await;
    let (mut r, mut w) = sock.into_split();
    let mut reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        let closed = loop {
            match r.read(&mut buf).await {
                Ok(0) => break true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => break true,
            }
        };
        (got, closed)
    });
    // The destination may stop reading (and close) early: a write error
    // is fine, blocking forever is not.
    let wr = tokio::time::timeout(Duration::from_secs(30), w.write_all(bytes)).await;
    assert!(wr.is_ok(), "{} destination stopped reading but kept the connection open", d.kind);
    if close {
        let _ = w.shutdown().await;
    }
    let t = Instant::now();
    let end = d.wait_end(WAIT).await;
    let detect = t.elapsed();
    let (status, desc, exit) = end.unwrap_or_else(|| {
        panic!(
            "HANG: {} destination did not fail within {WAIT:?} after {} bytes ({}); log:\n{}",
            d.kind,
            bytes.len(),
            if close { "write side shut down" } else { "connection kept open" },
            d.log()
        )
    });
    // The destination closes the socket after a failure.
    let (rp, rp_closed) = match tokio::time::timeout(Duration::from_secs(3), &mut reader).await {
        Ok(j) => j.unwrap(),
        Err(_) => {
            reader.abort();
            (Vec::new(), false)
        }
    };
    (Outcome { status, desc, exit, rp, rp_closed, detect, log: d.log() }, w)
}

/// Replay into rust-dest and check the clean-failure contract; returns the
/// outcome for extra checks.
async fn rust_case(name: &str, bytes: &[u8], close: bool, expect: &[&str], offset: u64) -> Outcome {
    let t0 = Instant::now();
    let mut d = Dest::start(DestKind::Rust, name).await;
    let (o, sock) = replay_into(&mut d, bytes, close).await;
    let ctx = format!(
        "case {name} ({} bytes, {})",
        bytes.len(),
        if close { "closed" } else { "kept open" }
    );
    assert_eq!(o.status, "failed", "{ctx}: expected status failed, got {o:?}");
    for e in expect {
        assert!(o.desc.contains(e), "{ctx}: error-desc {:?} does not mention {e:?}", o.desc);
    }
    assert!(
        names_offset(&o.desc, offset),
        "{ctx}: error-desc {:?} does not name byte offset {offset}",
        o.desc
    );
    assert!(o.rp_closed, "{ctx}: rust-dest did not close the migration socket after failing");
    assert!(
        o.rp.is_empty(),
        "{ctx}: rust-dest wrote {:02x?} on the socket without a return path",
        o.rp
    );
    d.check_alive(&ctx).await;
    drop(sock);
    d.finish().await;
    eprintln!(
        "[{name}] rust-dest: failed in {:?} after the last byte ({:?} total): {}",
        o.detect,
        t0.elapsed(),
        o.desc
    );
    o
}

/// Replay into a real QEMU destination (the oracle): it must reject the
/// stream too (status failed, or the process exited).
async fn qemu_case(name: &str, bytes: &[u8], close: bool) -> Outcome {
    qemu_case_with(name, bytes, close, false).await
}

async fn qemu_case_with(name: &str, bytes: &[u8], close: bool, exit_on_error: bool) -> Outcome {
    let t0 = Instant::now();
    let mut d = Dest::start_with(DestKind::Qemu, name, exit_on_error).await;
    let (o, sock) = replay_into(&mut d, bytes, close).await;
    let said: Vec<&str> = o.log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        o.status == "failed" || o.status == "exited",
        "oracle {name}: QEMU did not reject the stream: {o:?}\nQEMU said:\n{}",
        said.join("\n")
    );
    drop(sock);
    d.finish().await;
    eprintln!(
        "[{name}] QEMU oracle: {} in {:?} ({:?} total){}{}; QEMU log: {:?}",
        o.status,
        o.detect,
        t0.elapsed(),
        if o.desc.is_empty() { String::new() } else { format!(", error-desc {:?}", o.desc) },
        o.exit.as_ref().map(|e| format!(", exit {e}")).unwrap_or_default(),
        said
    );
    o
}

// ---------------------------------------------------------------------------
// the cases

#[tokio::test]
async fn layout_of_the_recorded_stream() {
    let r = recorded();
    let l = &r.layout;
    assert_eq!(&r.data[..8], &[0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3]);
    assert!(l.machine.starts_with("pc-q35-"), "{}", l.machine);
    assert_eq!(
        l.ram_start, l.header_end,
        "ram START is the first record (no return path in plain precopy)"
    );
    assert_eq!(l.mem_size, l.ram_start + 1 + 4 + 1 + 3 + 4 + 4);
    assert_eq!(l.blocks.iter().map(|b| b.2).sum::<u64>(), l.mem_total);
    assert_eq!(l.block_len("mem0"), MEM);
    assert!(l.first_page.named);
    // QEMU 10.0 with a 10.0 machine type sends SWITCHOVER_START before END
    assert!(l.commands.iter().any(|&(_, c)| c == 11), "commands {:?}", l.commands);
    assert_eq!(r.data[l.eof as usize], 0x00);
    assert_eq!(r.data[l.eof as usize + 1], 0x06);
    assert!(l.len > 90 * MIB, "the sweep guest dirtied ~99 MiB: {} bytes", l.len);
}

#[tokio::test]
async fn bad_magic() {
    let r = recorded();
    let mut b = r.data[..TAIL].to_vec();
    b[3] ^= 0x03; // "QEVM" -> "QEVN"
    rust_case("bad-magic", &b, false, &["bad stream magic 0x5145564e"], 0).await;
    let o = qemu_case("bad-magic", &b, false).await;
    assert!(o.log.contains("Not a migration stream"), "QEMU: {o:?}");
    // QEMU's default: the destination process exits
    let o = qemu_case_with("bad-magic-exit", &b, false, true).await;
    assert_eq!(o.status, "exited", "QEMU with exit-on-error: {o:?}");
    assert!(o.log.contains("Not a migration stream"), "QEMU: {o:?}");
}

#[tokio::test]
async fn version_2() {
    let r = recorded();
    let mut b = r.data[..TAIL].to_vec();
    b[4..8].copy_from_slice(&2u32.to_be_bytes());
    rust_case("version-2", &b, false, &["stream version 2", "not supported"], 4).await;
    qemu_case("version-2", &b, false).await;
}

#[tokio::test]
async fn version_4() {
    let r = recorded();
    let mut b = r.data[..TAIL].to_vec();
    b[4..8].copy_from_slice(&4u32.to_be_bytes());
    rust_case("version-4", &b, false, &["unsupported stream version 4"], 4).await;
    qemu_case("version-4", &b, false).await;
}

#[tokio::test]
async fn unknown_section_type() {
    let r = recorded();
    let h = r.layout.header_end;
    let mut b = r.data[..h as usize + TAIL].to_vec();
    assert_eq!(b[h as usize], 0x01, "START expected after the header");
    b[h as usize] = 0x09;
    rust_case("unknown-section-type", &b, false, &["unknown section type 0x09"], h).await;
    qemu_case("unknown-section-type", &b, false).await;
}

#[tokio::test]
async fn unknown_command() {
    let r = recorded();
    let h = r.layout.header_end;
    let b = splice(&r.data, h, 0, &[0x08, 0x00, 0x63, 0x00, 0x00]);
    rust_case("unknown-command", &b, false, &["unknown migration command 99"], h).await;
    qemu_case("unknown-command", &b, false).await;
}

#[tokio::test]
async fn command_length_past_the_end() {
    let r = recorded();
    let h = r.layout.header_end as usize;
    // PING announcing 4 payload bytes, only 2 follow, then the stream ends
    let mut b = r.data[..h].to_vec();
    b.extend_from_slice(&[0x08, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00]);
    rust_case("command-past-end", &b, true, &["truncated", "2 more byte(s)"], h as u64).await;
    qemu_case("command-past-end", &b, true).await;
}

#[tokio::test]
async fn page_address_outside_its_block() {
    let r = recorded();
    let l = &r.layout;
    let p = &l.first_data_page;
    let blen = l.block_len(&p.block);
    assert!(p.addr < blen);
    let mut b = r.data[..(p.off + p.len) as usize + TAIL].to_vec();
    set_be64(&mut b, p.off, blen | p.flags);
    let want = format!("page address {blen:#x} is outside RAMBlock {:?}", p.block);
    rust_case("page-outside-block", &b, false, &[&want], p.off).await;
    let o = qemu_case("page-outside-block", &b, false).await;
    assert!(o.log.contains("Illegal RAM offset"), "QEMU: {o:?}");
}

#[tokio::test]
async fn continue_without_previous_block() {
    let r = recorded();
    let p = &r.layout.first_page;
    assert!(p.named);
    let name_len = r.data[p.off as usize + 8] as usize;
    let word = be64_at(&r.data, p.off) | 0x20;
    // the word with CONTINUE, without the counted name
    let b = splice(&r.data, p.off, 8 + 1 + name_len, &word.to_be_bytes());
    rust_case("continue-no-block", &b, false, &["CONTINUE flag but no previous block"], p.off)
        .await;
    qemu_case("continue-no-block", &b, false).await;
}

#[tokio::test]
async fn mem_size_total_flipped() {
    let r = recorded();
    let l = &r.layout;
    // flip the top set byte of the total: the blocks overshoot it
    let total = l.mem_total;
    let top_byte = 7 - (63 - total.leading_zeros() as u64) / 8; // index in the be64
    let hi = r.data[(l.mem_size + top_byte) as usize];
    let mut b = r.data[..l.start_footer_end as usize + TAIL].to_vec();
    b[(l.mem_size + top_byte) as usize] ^= hi;
    let flipped = be64_at(&b, l.mem_size) & !0xfff;
    assert!(flipped < total);
    let mut sum = 0;
    let bad = l.blocks.iter().find(|e| {
        sum += e.2;
        sum > flipped
    });
    let (eoff, name, _) = bad.unwrap();
    let want = format!("MEM_SIZE: block {name:?}");
    rust_case("mem-size-flipped", &b, false, &[&want, "past the announced total"], *eoff).await;
    qemu_case("mem-size-flipped", &b, false).await;
}

#[tokio::test]
async fn truncated_inside_header() {
    let r = recorded();
    let b = r.data[..6].to_vec();
    rust_case("trunc-header", &b, true, &["truncated"], 0).await;
    qemu_case("trunc-header", &b, true).await;
}

#[tokio::test]
async fn truncated_after_header() {
    let r = recorded();
    let h = r.layout.header_end;
    rust_case(
        "trunc-after-header",
        &r.data[..h as usize],
        true,
        &["truncated", "right after the stream header"],
        h,
    )
    .await;
    qemu_case("trunc-after-header", &r.data[..h as usize], true).await;
}

#[tokio::test]
async fn truncated_inside_section_header() {
    let r = recorded();
    let h = r.layout.header_end;
    rust_case("trunc-section-header", &r.data[..h as usize + 7], true, &["truncated"], h).await;
    qemu_case("trunc-section-header", &r.data[..h as usize + 7], true).await;
}

#[tokio::test]
async fn truncated_after_a_section_footer() {
    let r = recorded();
    let f = r.layout.start_footer_end;
    rust_case(
        "trunc-after-footer",
        &r.data[..f as usize],
        true,
        &["truncated", "1 more byte(s)"],
        f,
    )
    .await;
    qemu_case("trunc-after-footer", &r.data[..f as usize], true).await;
}

#[tokio::test]
async fn truncated_in_the_middle_of_a_page() {
    let r = recorded();
    let p = &r.layout.first_data_page;
    let cut = p.off + p.len / 2;
    let b = &r.data[..cut as usize];
    let need = format!("({} more byte(s) needed)", p.len - p.len / 2);
    let sec = format!("section 'ram' (id {})", r.layout.ram_id);
    rust_case("trunc-mid-page", b, true, &[&sec, "truncated", &need], p.off).await;
    qemu_case("trunc-mid-page", b, true).await;
}

#[tokio::test]
async fn truncated_just_before_eof() {
    let r = recorded();
    let l = &r.layout;
    let o = rust_case(
        "trunc-before-eof",
        &r.data[..l.eof as usize],
        true,
        &["truncated", "vmdesc"],
        l.eof,
    )
    .await;
    assert!(
        names_offset(&o.desc, l.first_full),
        "device state start {} not named: {}",
        l.first_full,
        o.desc
    );
    qemu_case("trunc-before-eof", &r.data[..l.eof as usize], true).await;
}

#[tokio::test]
async fn truncated_inside_the_vmdesc() {
    let r = recorded();
    let l = &r.layout;
    let cut = l.eof + 1 + 1 + 4 + 100;
    assert!(cut < l.len);
    rust_case("trunc-vmdesc", &r.data[..cut as usize], true, &["truncated", "vmdesc"], cut).await;
    // Informational, not an oracle: QEMU 10.0 skips the vmdesc without
    // checking it and completes; rust-dest needs it to delimit the device
    // state, so for rust-dest this is a truncated stream.
    let mut d = Dest::start(DestKind::Qemu, "trunc-vmdesc").await;
    let (q, _w) = replay_into(&mut d, &r.data[..cut as usize], true).await;
    d.finish().await;
    eprintln!("[trunc-vmdesc] QEMU (informational): {} {:?} log {:?}", q.status, q.desc, q.log);
}

#[tokio::test]
async fn ping_without_return_path() {
    let r = recorded();
    let h = r.layout.header_end;
    let b = splice(&r.data, h, 0, &[0x08, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01]);
    rust_case("ping-no-rp", &b, false, &["PING", "no return path"], h).await;
    qemu_case("ping-no-rp", &b, false).await;
}

/// What came back on the return path and how the migration ended.
#[derive(Debug)]
struct RpOutcome {
    pong: Vec<u8>,
    /// Everything after the PONG until the destination closed the socket.
    after: Vec<u8>,
    status: String,
    desc: String,
    log: String,
}

/// Open the return path (OPEN_RETURN_PATH, PING 7) right after the header,
/// check the PONG, then send `damage` (and shut down the write side if
/// `close`). Returns the offset where the damage starts and the outcome.
async fn rp_replay(kind: DestKind, name: &str, damage: &[u8], close: bool) -> (u64, RpOutcome) {
    let r = recorded();
    let h = r.layout.header_end as usize;
    let mut d = Dest::start(kind, name).await;
    let mut s = d.connect().await;
    let mut b = r.data[..h].to_vec();
    b.extend_from_slice(&[0x08, 0x00, 0x01, 0x00, 0x00]); // OPEN_RETURN_PATH
    b.extend_from_slice(&[0x08, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x07]); // PING 7
    s.write_all(&b).await.unwrap();
    let mut pong = vec![0u8; 8];
    let got = tokio::time::timeout(WAIT, s.read_exact(&mut pong)).await;
    assert!(
        matches!(got, Ok(Ok(_))),
        "{name}: no PONG from {kind} within {WAIT:?}: {got:?}\nlog:\n{}",
        d.log()
    );
    let bad_at = b.len() as u64;
    s.write_all(damage).await.unwrap();
    if close {
        s.shutdown().await.unwrap();
    }
    let mut after = Vec::new();
    let rd = tokio::time::timeout(WAIT, s.read_to_end(&mut after)).await;
    assert!(
        rd.is_ok(),
        "HANG: {name}: {kind} did not close the socket within {WAIT:?}; got {after:02x?}\nlog:\n{}",
        d.log()
    );
    let (status, desc, _) = d
        .wait_end(WAIT)
        .await
        .unwrap_or_else(|| panic!("HANG: {name}: {kind} did not fail\nlog:\n{}", d.log()));
    if kind == DestKind::Rust {
        d.check_alive(name).await;
    }
    let log = d.log();
    drop(s);
    d.finish().await;
    (bad_at, RpOutcome { pong, after, status, desc, log })
}

const PONG_7: [u8; 8] = [0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x07];
const SHUT_1: [u8; 8] = [0x00, 0x01, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01];

/// With the return path open the destination answers PING with PONG, and
/// on a failure sends SHUT(1) before closing (damage: an unknown record
/// type, socket kept open).
#[tokio::test]
async fn shut_1_when_the_return_path_is_open() {
    let (bad_at, o) = rp_replay(DestKind::Rust, "rp-shut", &[0x09, 0, 0, 0, 0], false).await;
    assert_eq!(o.pong, PONG_7, "PONG 7");
    assert_eq!(o.after, SHUT_1, "exactly SHUT(1), then EOF");
    assert_eq!(o.status, "failed");
    assert!(
        o.desc.contains("unknown section type 0x09") && names_offset(&o.desc, bad_at),
        "{}",
        o.desc
    );
    eprintln!("[rp-shut] rust-dest: PONG 7, SHUT(1), failed: {}", o.desc);
    // the oracle: what QEMU sends back in the same situation
    let (_, q) = rp_replay(DestKind::Qemu, "rp-shut", &[0x09, 0, 0, 0, 0], false).await;
    assert_eq!(q.pong, PONG_7, "QEMU PONG");
    assert!(q.status == "failed" || q.status == "exited", "QEMU: {q:?}");
    assert_eq!(q.after, SHUT_1, "QEMU sends SHUT(1) too");
    eprintln!(
        "[rp-shut] QEMU oracle: return path after PONG {:02x?}, {} ({}); QEMU log: {:?}",
        q.after,
        q.status,
        q.desc,
        q.log.lines().collect::<Vec<_>>()
    );
}

/// Same with a truncation: the source shuts down its side inside a command;
/// the return path still carries SHUT(1).
#[tokio::test]
async fn shut_1_after_a_truncation_with_the_return_path_open() {
    let (bad_at, o) =
        rp_replay(DestKind::Rust, "rp-trunc", &[0x08, 0x00, 0x02, 0x00, 0x04, 0x00], true).await;
    assert_eq!(o.pong, PONG_7, "PONG 7");
    assert_eq!(o.after, SHUT_1, "exactly SHUT(1), then EOF");
    assert_eq!(o.status, "failed");
    assert!(o.desc.contains("truncated") && names_offset(&o.desc, bad_at), "{}", o.desc);
    eprintln!("[rp-trunc] rust-dest: PONG 7, SHUT(1), failed: {}", o.desc);
}

/// Live: a real QEMU source migrates through the proxy, which flips the flag
/// byte of the first PAGE record; both sides must end `failed`.
#[tokio::test]
async fn flipped_on_the_way_from_a_live_source() {
    let r = recorded();
    let p = r.layout.first_data_page.clone();
    let flag_byte = p.off + 7;
    assert_eq!(r.data[flag_byte as usize] as u64, p.flags & 0xff);
    let t0 = Instant::now();
    let dir = tempfile::Builder::new().prefix("badin-live-").tempdir().unwrap();
    let (src, _disk) = start_source(dir.path(), "live").await.expect("source");
    let d = Dest::start(DestKind::Rust, "live-flip").await;
    let rec = dir.path().join("live.bin");
    let upstream: SocketAddr = format!("127.0.0.1:{}", d.port).parse().unwrap();
    // PAGE (0x08) -> 0x0b: PAGE|ZERO|FULL, an invalid flag combination
    let proxy =
        Proxy::start("127.0.0.1:0", upstream, ProxyPlan::new().flip(flag_byte, 0x03).record(&rec))
            .await
            .unwrap();
    src.execute("migrate", json!({"uri": proxy.uri()})).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (sv, dv) = loop {
        let sv = src.qmp.query_migrate().await.unwrap();
        let dv = d.vm.qmp.query_migrate().await.unwrap();
        let done = |v: &Value| MigrationStatus::of(v).is_terminal();
        if done(&sv) && done(&dv) {
            break (sv, dv);
        }
        assert!(
            Instant::now() < deadline,
            "no final status after 20 s: source {sv}, destination {dv}\ndestination log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let desc = dv["error-desc"].as_str().unwrap_or("");
    // the byte really was flipped, at a PAGE record of the live stream too
    let live = std::fs::read(&rec).unwrap();
    let live_word = be64_at(&live, p.off);
    assert_eq!(
        live_word & 0xfff,
        (p.flags ^ 0x03) & 0xfff,
        "live stream layout differs from the recording"
    );
    assert_eq!(MigrationStatus::of(&dv), MigrationStatus::Failed, "destination: {dv}");
    assert!(
        desc.contains("unknown flag combination 0xb") && names_offset(desc, p.off),
        "destination error-desc: {desc}"
    );
    assert_eq!(MigrationStatus::of(&sv), MigrationStatus::Failed, "source: {sv}");
    d.check_alive("live-flip").await;
    eprintln!(
        "[live-flip] source failed ({}), destination failed ({desc}) in {:?}; proxy {:?}",
        sv["error-desc"],
        t0.elapsed(),
        proxy.stats()
    );
    drop(proxy);
    let paths = vec![src.cfg.mem_path.clone()];
    src.quit().await;
    d.finish().await;
    for p in paths {
        assert!(!p.exists());
    }
}
