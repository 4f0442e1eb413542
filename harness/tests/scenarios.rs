//! The conformance suite: every variant of every scenario in `scenarios/`
//! as one test named `scenario[axis=value,...]`, run through libtest-mimic
//! (usual filters, `--list`, `--exact`, `--skip`, `--test-threads`).
//!
//! A failing variant is run once more only when its first failure matches a
//! known QEMU bug (`harness::scenario::known_bugs`, written down in
//! `docs/qemu-bugs.md` with its reproducer); any other first failure fails
//! the test. Every retry is printed as `RETRY: ...` when it happens, listed
//! again after the test summary, and recorded in the variant's JSON report
//! (`retry`) and in `retries.json`.
//! Variants that need a QEMU build that is not installed are ignored, except
//! under CI (`CI=true`), where they fail and say what to install. Variants
//! needing huge pages the machine cannot provide are ignored, also under CI.
//! `CROSSMIG_REPORT_DIR=DIR` writes one JSON report per variant.

use std::path::PathBuf;
use std::sync::Mutex;

use harness::scenario::known_bugs::known_bug;
use harness::scenario::outcome::Retry;

use libtest_mimic::{Arguments, Failed, Trial};

/// Every retry of this run, listed after the test summary.
static RETRIES: Mutex<Vec<Retry>> = Mutex::new(Vec::new());

fn main() {
    let args = Arguments::from_args();
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios"));
    let files = harness::scenario::find_files(&[dir]).expect("reading scenarios/");
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let report_dir = std::env::var_os("CROSSMIG_REPORT_DIR").map(PathBuf::from);
    let mut trials = Vec::new();
    for f in files {
        match harness::scenario::load(&f) {
            Err(e) => {
                let name = format!("{}[load]", f.file_stem().unwrap().to_string_lossy());
                trials.push(Trial::test(name, move || Err(Failed::from(e.to_string()))));
            }
            Ok(variants) => {
                for v in variants {
                    let kind = match v.spec.kind() {
                        harness::scenario::Kind::Migration => "migration",
                        harness::scenario::Kind::Stream => "stream",
                    };
                    let missing = harness::scenario::missing_prerequisite(&v);
                    // Hardware this machine lacks (huge pages) skips the
                    // variant even under CI: nothing to install.
                    let lacks = harness::scenario::machine_lacks(&v);
                    let ignored = (missing.is_some() && !ci) || lacks.is_some();
                    let missing = missing.or(lacks);
                    let rd = report_dir.clone();
                    let t = Trial::test(v.name(), move || {
                        if let Some(m) = missing {
                            return Err(Failed::from(format!("cannot run here: {m}")));
                        }
                        let run = || {
                            let rt = tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()
                                .unwrap();
                            rt.block_on(harness::scenario::run_variant(&v))
                        };
                        let mut out = run();
                        if !out.ok {
                            // Only a known QEMU bug earns a second run.
                            if let Some(bug) = known_bug(&v, &out) {
                                let first = out.error.clone().unwrap_or_default();
                                out = run();
                                let r = Retry {
                                    variant: out.name.clone(),
                                    known_bug: format!("docs/qemu-bugs.md#{}", bug.anchor),
                                    first_error: first,
                                    passed_on_retry: out.ok,
                                };
                                eprintln!(
                                    "RETRY: {} (known QEMU bug {}): first error: {}; retry {}",
                                    r.variant,
                                    r.known_bug,
                                    r.first_error,
                                    if r.passed_on_retry { "passed" } else { "failed" }
                                );
                                out.retry = Some(r.clone());
                                RETRIES.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                            }
                        }
                        if let Some(d) = rd {
                            let _ = std::fs::create_dir_all(&d);
                            let p = d.join(format!("{}.json", out.name.replace(['/', ' '], "_")));
                            let _ = std::fs::write(
                                p,
                                serde_json::to_vec_pretty(&out).unwrap_or_default(),
                            );
                        }
                        if out.ok {
                            Ok(())
                        } else {
                            let steps: Vec<String> = out
                                .steps
                                .iter()
                                .map(|s| {
                                    format!(
                                        "  [{}] {} ({} ms) {}",
                                        if s.ok { "ok" } else { "FAIL" },
                                        s.step,
                                        s.ms,
                                        s.detail
                                    )
                                })
                                .collect();
                            Err(Failed::from(format!(
                                "{}\n{}",
                                out.error.unwrap_or_default(),
                                steps.join("\n")
                            )))
                        }
                    })
                    .with_kind(kind)
                    .with_ignored_flag(ignored);
                    trials.push(t);
                }
            }
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    let retries = std::mem::take(&mut *RETRIES.lock().unwrap_or_else(|e| e.into_inner()));
    eprintln!("retries: {} (only for known QEMU bugs, docs/qemu-bugs.md)", retries.len());
    for r in &retries {
        eprintln!(
            "  {} -> {}: {} on retry; first error: {}",
            r.variant,
            r.known_bug,
            if r.passed_on_retry { "passed" } else { "failed" },
            r.first_error.lines().next().unwrap_or("")
        );
    }
    if let Some(d) = report_dir {
        let _ = std::fs::create_dir_all(&d);
        let _ = std::fs::write(
            d.join("retries.json"),
            serde_json::to_vec_pretty(&retries).unwrap_or_default(),
        );
    }
    conclusion.exit();
}
