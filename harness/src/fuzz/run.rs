//! Running mutants against both destinations (the stream-scenario
//! differential runner, [`crate::synth::differential_parts`], with the
//! mutant as one raw step) and the per-region agreement report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Args;
use serde::Serialize;

use super::{mutate, regions, Change, Region, Span};
use crate::scenario::qemu::resolve_qemu;
use crate::synth::{differential_parts, DestRun, Observed, RunOpts, SourceLayout, Step};

pub use super::RECORDED_MEM;

#[derive(Args, Debug, Clone)]
pub struct FuzzArgs {
    /// Mutants per QEMU version, spread over the regions and the recorded streams (precopy, postcopy, multifd).
    #[arg(long, default_value_t = 24)]
    pub count: u64,
    /// Seed: the same seed gives the same mutants.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Only this region: framing, ram-header, ram-data, device, postcopy, multifd.
    #[arg(long)]
    pub region: Option<Region>,
    /// QEMU versions (comma-separated); each version's recordings go to a destination of the same version.
    #[arg(long, default_value = "10.0,11.1", value_delimiter = ',')]
    pub qemu: Vec<String>,
    /// Directory of recorded streams (qemu-VERSION-precopy.bin, qemu-VERSION-postcopy.bin, qemu-VERSION-multifd2.json and its channels).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../wire/tests/streams"))]
    pub streams: PathBuf,
    /// Only the precopy, the postcopy or the multifd recording (precopy, postcopy, multifd).
    #[arg(long)]
    pub mode: Option<String>,
    /// Where the mutants that disagree are saved.
    #[arg(long, default_value = "fuzz-out")]
    pub out: PathBuf,
    /// Seconds to wait for a destination's verdict after the last byte.
    #[arg(long, default_value_t = 8)]
    pub verdict_timeout: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Feed this saved mutant (with --qemu ONE_VERSION --mode precopy|postcopy|multifd) to both destinations and print the verdicts.
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,
}

/// One mutant's run.
#[derive(Clone, Debug, Serialize)]
pub struct Case {
    pub qemu: String,
    pub stream: String,
    pub region: Region,
    pub index: u64,
    pub seed: u64,
    pub span: Span,
    pub change: Change,
    pub qemu_verdict: String,
    pub rust_verdict: String,
    pub qemu_error: String,
    pub rust_error: String,
    pub agree: bool,
    /// QEMU's process crashed where rust-dest failed cleanly: counted as
    /// agreement (the stream is rejected), the crash being the known QEMU
    /// bug of docs/qemu-bugs.md (an intermittent abort after a load error in
    /// the postcopy package); listed in the table.
    pub qemu_crashed: bool,
    /// QEMU's monitor stopped answering (stuck) where rust-dest failed on a
    /// multifd channel: the known QEMU bug of docs/multifd.md ("a failed or
    /// closed channel hangs the sync point"). Counted as agreement (both
    /// reject the stream; QEMU by hanging) and listed in the table.
    pub qemu_hung: bool,
    /// The mutant file (disagreements only).
    pub saved: Option<PathBuf>,
}

/// Counts of one region.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Tally {
    pub mutants: u64,
    pub agree: u64,
    pub disagree: u64,
    pub both_completed: u64,
    pub both_failed: u64,
    pub qemu_crashed: u64,
    pub qemu_hung: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub seed: u64,
    pub seconds: f64,
    pub regions: BTreeMap<Region, Tally>,
    pub cases: Vec<Case>,
}

impl Report {
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<11} {:>7} {:>6} {:>9} {:>14} {:>11} {:>12} {:>9}\n",
            "REGION",
            "MUTANTS",
            "AGREE",
            "DISAGREE",
            "BOTH-COMPLETED",
            "BOTH-FAILED",
            "QEMU-CRASHED",
            "QEMU-HUNG"
        );
        let mut t = Tally::default();
        for (r, x) in &self.regions {
            s += &format!(
                "{:<11} {:>7} {:>6} {:>9} {:>14} {:>11} {:>12} {:>9}\n",
                r.as_str(),
                x.mutants,
                x.agree,
                x.disagree,
                x.both_completed,
                x.both_failed,
                x.qemu_crashed,
                x.qemu_hung
            );
            t.mutants += x.mutants;
            t.agree += x.agree;
            t.disagree += x.disagree;
        }
        s += &format!(
            "{:<11} {:>7} {:>6} {:>9}   ({:.0} s, seed {})\n",
            "total", t.mutants, t.agree, t.disagree, self.seconds, self.seed
        );
        s
    }
}

/// The verdict in comparable terms: stuck in any status is one class.
fn class(d: &DestRun) -> (String, String) {
    let o = d.observed();
    let c = match &o {
        Observed::Stuck(_) => format!("stuck ({o})"),
        _ => o.to_string(),
    };
    (c, d.verdict.error().to_string())
}

fn agree(q: &str, r: &str) -> bool {
    q == r || (q.starts_with("stuck") && r.starts_with("stuck")) || qemu_crash(q, r)
}

/// QEMU's monitor hung where rust-dest failed a multifd channel (see
/// [`Case::qemu_hung`]): QEMU's `query-migrate` timed out.
fn qemu_hung(q: &DestRun, r: &DestRun) -> bool {
    let (qv, qe) = class(q);
    let (rv, re) = class(r);
    qv.starts_with("stuck")
        && qe.contains("timed out")
        && rv == "failed"
        && re.contains("multifd channel")
}

/// QEMU crashed where rust-dest failed (see [`Case::qemu_crashed`]).
fn qemu_crash(q: &str, r: &str) -> bool {
    q == "crashed" && r == "failed"
}

/// Feed `bytes` to a QEMU destination and rust-dest at once.
pub async fn run_bytes(
    version: &str,
    bytes: Vec<u8>,
    postcopy: bool,
    verdict_timeout: Duration,
    tag: &str,
) -> Result<(DestRun, DestRun)> {
    let qemu = resolve_qemu(Some(version))?;
    let opts = RunOpts {
        postcopy_ram: postcopy,
        check_memory: false,
        guest_mem: Some(RECORDED_MEM),
        verdict_timeout,
        ..RunOpts::default()
    };
    // The layout only serves encoding steps; a raw step needs none.
    let layout = SourceLayout::qemu_10_0_q35_128m();
    let dir = tempfile::Builder::new().prefix("crossmig-fuzz-").tempdir()?;
    let (q, r) =
        differential_parts(tag, &qemu, &layout, &[Step::Raw(bytes)], &opts, dir.path()).await;
    Ok((q?, r?))
}

/// Run the mutants; `progress` gets one line per case.
pub async fn fuzz(a: &FuzzArgs, mut progress: impl FnMut(&Case)) -> Result<Report> {
    let t0 = Instant::now();
    let mut rep = Report { seed: a.seed, ..Default::default() };
    let modes: Vec<&str> = match a.mode.as_deref() {
        Some(m) => vec![m],
        None => vec!["precopy", "postcopy", "multifd"],
    };
    for v in &a.qemu {
        // (mode, original bytes, spans, the multifd recording in multifd mode)
        let mut streams = Vec::new();
        for m in &modes {
            if *m == "multifd" {
                let rec = super::multifd::load(&a.streams, v)?;
                let (b, spans) = (rec.joined.clone(), rec.spans.clone());
                streams.push((*m, b, spans, Some(rec)));
                continue;
            }
            let p = a.streams.join(format!("qemu-{v}-{m}.bin"));
            let b = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            let spans = regions(&p, &b)?;
            streams.push((*m, b, spans, None));
        }
        // Round robin over (stream, region) pairs that exist.
        let mut slots = Vec::new();
        for (si, (_, _, spans, _)) in streams.iter().enumerate() {
            for r in Region::ALL {
                if a.region.is_none_or(|x| x == r) && spans.iter().any(|s| s.region == r) {
                    slots.push((si, r));
                }
            }
        }
        anyhow::ensure!(!slots.is_empty(), "no stream of QEMU {v} has the region asked for");
        for index in 0..a.count {
            let (si, region) = slots[(index % slots.len() as u64) as usize];
            let (mode, orig, spans, rec) = &streams[si];
            let m = mutate(orig, spans, region, a.seed, index).expect("slot has spans");
            let tag = format!("fz{index}");
            let timeout = Duration::from_secs(a.verdict_timeout);
            let (q, r) = match rec {
                Some(rec) => {
                    let chans = rec.split(&m.bytes);
                    super::multifd::run_multifd(v, rec.main.clone(), chans, timeout, &tag).await?
                }
                None => run_bytes(v, m.bytes.clone(), *mode == "postcopy", timeout, &tag).await?,
            };
            let ((qv, qe), (rv, re)) = (class(&q), class(&r));
            let hung = qemu_hung(&q, &r);
            let ok = agree(&qv, &rv) || hung;
            let mut case = Case {
                qemu: v.clone(),
                stream: match mode {
                    &"multifd" => format!("qemu-{v}-multifd2 (ch1+ch2)"),
                    _ => format!("qemu-{v}-{mode}.bin"),
                },
                region,
                index,
                seed: a.seed,
                span: m.span,
                change: m.change,
                qemu_verdict: qv.clone(),
                rust_verdict: rv.clone(),
                qemu_error: qe,
                rust_error: re,
                agree: ok,
                qemu_crashed: qemu_crash(&qv, &rv),
                qemu_hung: hung,
                saved: None,
            };
            if !ok {
                std::fs::create_dir_all(&a.out)?;
                let f = a.out.join(format!(
                    "seed{}-{}-{mode}-{}-{index}.bin",
                    a.seed,
                    v,
                    region.as_str()
                ));
                std::fs::write(&f, &m.bytes)?;
                case.saved = Some(f);
            }
            let t = rep.regions.entry(region).or_default();
            t.mutants += 1;
            if ok {
                t.agree += 1;
            } else {
                t.disagree += 1;
            }
            t.both_completed += u64::from(qv == "completed" && rv == "completed");
            t.both_failed += u64::from(qv == "failed" && rv == "failed");
            t.qemu_crashed += u64::from(case.qemu_crashed);
            t.qemu_hung += u64::from(case.qemu_hung);
            progress(&case);
            rep.cases.push(case);
        }
    }
    rep.seconds = t0.elapsed().as_secs_f64();
    Ok(rep)
}

/// One line per case; a disagreement with its reproducer.
pub fn case_line(c: &Case) -> String {
    let head = format!(
        "[{} {} #{}] {:<10} {} ({}): qemu {}, rust-dest {}",
        c.qemu,
        c.stream,
        c.index,
        c.region.as_str(),
        c.change,
        c.span.what,
        c.qemu_verdict,
        c.rust_verdict
    );
    if c.qemu_hung {
        return format!("{head} (QEMU hung at a multifd sync point: known bug, docs/multifd.md)");
    }
    if c.agree {
        return head;
    }
    format!(
        "{head}\n  DISAGREEMENT (seed {}, mutant {}): reproduce with `crossmig fuzz --qemu {} --mode {} --replay {}`\n  qemu: {}\n  rust-dest: {}",
        c.seed,
        c.index,
        c.qemu,
        ["postcopy", "multifd"].into_iter().find(|m| c.stream.contains(m)).unwrap_or("precopy"),
        c.saved.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default(),
        c.qemu_error.lines().next().unwrap_or(""),
        c.rust_error.lines().next().unwrap_or(""),
    )
}

/// `crossmig fuzz`: Ok(false) when any mutant disagreed.
pub async fn run_cli(a: &FuzzArgs) -> Result<bool> {
    if let Some(f) = &a.replay {
        let b = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let v = a.qemu.first().context("--qemu names no version")?;
        let t = Duration::from_secs(a.verdict_timeout);
        let (q, r) = match a.mode.as_deref() {
            Some("multifd") => {
                let rec = super::multifd::load(&a.streams, v)?;
                anyhow::ensure!(
                    b.len() == rec.joined.len(),
                    "{}: {} bytes, the multifd channels of qemu-{v}-multifd2 have {}",
                    f.display(),
                    b.len(),
                    rec.joined.len()
                );
                super::multifd::run_multifd(v, rec.main.clone(), rec.split(&b), t, "fzr").await?
            }
            m => run_bytes(v, b, m == Some("postcopy"), t, "fzr").await?,
        };
        let ((qv, qe), (rv, re)) = (class(&q), class(&r));
        println!("qemu {v}: {qv} {qe}\nrust-dest: {rv} {re}");
        if qemu_hung(&q, &r) {
            println!("(QEMU hung at a multifd sync point: the known bug of docs/multifd.md)");
        }
        return Ok(agree(&qv, &rv) || qemu_hung(&q, &r));
    }
    let quiet = a.json;
    let rep = fuzz(a, |c| {
        if !quiet || !c.agree {
            eprintln!("{}", case_line(c));
        }
    })
    .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        print!("{}", rep.table());
    }
    Ok(rep.cases.iter().all(|c| c.agree))
}
