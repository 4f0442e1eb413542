//! One differential case (a script, its expectation, extra checks) and the
//! runner playing a group of them into QEMU and rust-dest side by side.

use std::sync::Arc;
use std::time::Instant;

use harness::synth::{
    source_layout, Differential, Expect, Expectation, RunOpts, SourceLayout, Step, VerdictKind,
    GUEST_MEM, QEMU_10_0_Q35_128M_BLOCKS, QEMU_10_0_Q35_MACHINE,
};
use harness::vm::qemu::QemuBinary;

/// At most this many cases (each = one QEMU + one rust-dest) at once,
/// across all tests of this binary (2 CPU cores).
pub static IN_FLIGHT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(3);

pub type Check = fn(&Differential) -> Vec<String>;

pub struct Case {
    pub name: &'static str,
    pub script: Vec<Step>,
    pub expect: Expect,
    /// Set `postcopy-ram` on the destination before `migrate-incoming`.
    pub postcopy: bool,
    /// The failure text must contain one of these (case-insensitive); empty = any.
    pub qemu_err: &'static [&'static str],
    pub rust_err: &'static [&'static str],
    pub check: Option<Check>,
    /// Let the guest run after RUN (QMP `cont` before `migrate-incoming`).
    pub autostart: bool,
    /// Announce a different RAMBlock list than the real source's.
    pub layout: Option<fn(&SourceLayout) -> SourceLayout>,
    /// What QEMU's destination does instead of `expect` because of a QEMU
    /// bug, and the bug's `docs/qemu-bugs.md` reference.
    pub qemu_bug: Option<(Expect, &'static str)>,
}

impl Case {
    pub fn new(name: &'static str, expect: Expect, postcopy: bool, script: Vec<Step>) -> Case {
        Case {
            name,
            script,
            expect,
            postcopy,
            qemu_err: &[],
            rust_err: &[],
            check: None,
            autostart: false,
            layout: None,
            qemu_bug: None,
        }
    }
    /// QEMU's destination may end `verdict` instead because of the written
    /// down QEMU bug `doc` (no disagreement is reported then).
    pub fn qemu_bug(mut self, verdict: Expect, doc: &'static str) -> Case {
        self.qemu_bug = Some((verdict, doc));
        self
    }
    pub fn errs(mut self, qemu: &'static [&'static str], rust: &'static [&'static str]) -> Case {
        self.qemu_err = qemu;
        self.rust_err = rust;
        self
    }
    pub fn check(mut self, c: Check) -> Case {
        self.check = Some(c);
        self
    }
    pub fn autostart(mut self) -> Case {
        self.autostart = true;
        self
    }
    pub fn layout(mut self, f: fn(&SourceLayout) -> SourceLayout) -> Case {
        self.layout = Some(f);
        self
    }
}

fn expectation(case: &Case) -> Expectation {
    let mut e = Expectation::from(case.expect);
    if let Some((v, doc)) = case.qemu_bug {
        e.qemu_verdict = Some(v);
        e.qemu_bug = Some(doc.into());
    }
    e
}

pub async fn layout() -> (QemuBinary, Arc<SourceLayout>) {
    let qemu = QemuBinary::system().expect("qemu-system-x86_64");
    let l = source_layout(&qemu, GUEST_MEM).await.expect("probing the source layout");
    // The probed layout must be what QEMU 10.0 is known to announce for this
    // configuration (a newer QEMU may legitimately differ: then update the table).
    let (maj, min, _) = qemu.version().unwrap();
    if (maj, min) == (10, 0) {
        let want: Vec<(String, u64)> =
            QEMU_10_0_Q35_128M_BLOCKS.iter().map(|(n, l)| (n.to_string(), *l)).collect();
        let got: Vec<(String, u64)> =
            l.blocks.iter().map(|b| (b.name.clone(), b.used_length)).collect();
        assert_eq!(got, want, "probed RAMBlocks differ from the QEMU 10.0 table: {}", l.describe());
        assert_eq!(l.machine, QEMU_10_0_Q35_MACHINE);
    }
    assert!(
        l.globalstate_desc.is_some(),
        "the probe stream had no globalstate vmdesc entry: {}",
        l.describe()
    );
    (qemu, l)
}

pub fn contains_any(text: &str, pats: &[&str]) -> bool {
    pats.is_empty() || pats.iter().any(|p| text.to_lowercase().contains(&p.to_lowercase()))
}

pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// Run every case (concurrently, bounded by [`IN_FLIGHT`]) on both
/// destinations and fail with a side-by-side report of every problem.
pub async fn run_cases(group: &str, cases: Vec<Case>) {
    let t0 = Instant::now();
    let (qemu, layout) = layout().await;
    let dir =
        Arc::new(tempfile::Builder::new().prefix(&format!("protocol-{group}-")).tempdir().unwrap());
    let mut set = tokio::task::JoinSet::new();
    for (i, case) in cases.into_iter().enumerate() {
        let (qemu, layout, dir) = (qemu.clone(), layout.clone(), dir.clone());
        set.spawn(async move {
            let _permit = IN_FLIGHT.acquire().await.unwrap();
            let opts = RunOpts {
                postcopy_ram: case.postcopy,
                autostart: case.autostart,
                ..RunOpts::default()
            };
            let layout = match case.layout {
                Some(f) => Arc::new(f(&layout)),
                None => layout,
            };
            let d = harness::synth::differential(
                case.name,
                &qemu,
                &layout,
                &case.script,
                expectation(&case),
                &opts,
                dir.path(),
            )
            .await
            .unwrap_or_else(|e| panic!("case '{}': {e:#}", case.name));
            (i, case, d)
        });
    }
    let mut results = Vec::new();
    while let Some(r) = set.join_next().await {
        results.push(r.expect("case task panicked"));
    }
    results.sort_by_key(|r| r.0);

    let mut report = String::new();
    let mut failed = Vec::new();
    for (_, case, d) in &results {
        let mut problems: Vec<String> = d.problems().iter().map(ToString::to_string).collect();
        for (run, pats) in [(&d.qemu, case.qemu_err), (&d.rust, case.rust_err)] {
            if case.expect == Expect::Failed
                && run.verdict.kind() == VerdictKind::Failed
                && !contains_any(run.verdict.error(), pats)
            {
                problems.push(format!("{}: failed, but not with one of {pats:?}", run.kind.name()));
            }
            if case.expect == Expect::Completed
                && run.verdict.kind() == VerdictKind::Completed
                && run.memory.is_none()
            {
                problems.push(format!("{}: memory was not checked", run.kind.name()));
            }
            // Cleanup: no process, RAM file or QMP socket left behind.
            if pid_alive(run.pid) {
                problems.push(format!(
                    "{}: destination pid {} still alive",
                    run.kind.name(),
                    run.pid
                ));
            }
            for p in &run.paths {
                if p.exists() {
                    problems.push(format!("{}: {} left behind", run.kind.name(), p.display()));
                }
            }
        }
        if let Some(c) = case.check {
            problems.extend(c(d));
        }
        report += &format!("{}\n", d.side_by_side());
        if !problems.is_empty() {
            report += &format!("  PROBLEMS:\n    {}\n", problems.join("\n    "));
            failed.push(case.name);
        }
    }
    eprintln!(
        "=== {group}: {} case(s) in {:.1}s ===\n{report}",
        results.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "{group}: failing cases {failed:?}\n{report}");
}
