//! The scenario engine's own verdicts against real QEMU (every provisioned
//! version, the implicit `qemu` axis), for scenarios that must *fail*, which
//! the suite in `scenarios/` cannot hold (issue 18):
//!
//! * bug 2: with an idle guest, precopy completes on its own; a later
//!   `start-postcopy` is accepted by QEMU but switches nothing. The variant
//!   must fail ("postcopy never ran") unless the step says
//!   `precopy-may-win = true`.
//!
//! Run: `cargo build -p rust-dest && cargo test -p harness --test scenario_engine -- --nocapture`

use std::path::Path;

use harness::scenario::{file::load_str, run_variant, Outcome};

async fn run_all(name: &str, text: &str) -> Vec<(String, Outcome)> {
    let variants = load_str(Path::new(name), text).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    for v in variants {
        let o = run_variant(&v).await;
        println!("{}: ok={} error={:?}", o.name, o.ok, o.error);
        out.push((v.name(), o));
    }
    out
}

const NEVER_RAN: &str = r#"
name = "postcopy-never-ran"
timeout = "90s"

[axes]
dest = ["rust", "qemu"]
may-win = [false, true]

[capabilities]
postcopy-ram = true

[source]
workload = "fill"

[dest]
kind = "${dest}"

[[steps]]
do = "migrate"

[[steps]]
do = "wait"
status = "completed"

[[steps]]
do = "start-postcopy"
precopy-may-win = "${may-win}"

[[steps]]
do = "check-memory"
"#;

#[tokio::test]
async fn postcopy_that_never_ran_fails() {
    let outs = run_all("postcopy-never-ran.toml", NEVER_RAN).await;
    assert!(!outs.is_empty());
    for (name, o) in outs {
        if name.contains("may-win=true") {
            assert!(o.ok, "{name}: {:?}", o.error);
        } else {
            assert!(!o.ok, "{name} passed although postcopy never ran");
            let e = o.error.unwrap_or_default();
            assert!(e.contains("postcopy never ran"), "{name}: {e}");
            // Every real step passed; only the implied check failed.
            let last = o.steps.last().unwrap();
            assert!(o.steps.iter().rev().skip(1).all(|s| s.ok), "{name}: {:?}", o.steps);
            assert!(last.step.starts_with("postcopy ran"), "{name}: {last:?}");
        }
    }
}
