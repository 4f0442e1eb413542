//! Parsing tests of the per-variant keys (no QEMU): `expect-error`,
//! `[[expect]]` with `when`, the destination's end expectations and
//! `[dest.vcpus]`, `[source] hugepages`, from scenario text to the typed spec.

use std::path::Path;
use std::time::Duration;

use super::file::{load_str, Variant};
use super::spec::Body;
use crate::qmp::RunState;

const AXES: &str = "[axes]\nqemu = [\"7.2\", \"10.0\", \"11.1\"]\n";

fn load(text: &str) -> Result<Vec<Variant>, String> {
    load_str(Path::new("t.toml"), text).map_err(|e| e.to_string())
}

fn variant<'a>(v: &'a [Variant], q: &str) -> &'a Variant {
    v.iter().find(|x| x.name().contains(&format!("qemu={q}"))).unwrap()
}

#[test]
fn expect_error_resolves_per_version() {
    let f = format!(
        "{AXES}[[steps]]\ndo = \"migrate\"\n[[steps]]\ndo = \"cancel\"\n\
         expect-error = [{{ when = {{ qemu = [\"10.0\", \"11.1\"] }}, error = \"cannot cancel\" }}]\n"
    );
    let v = load(&f).unwrap();
    for (q, refused) in [("7.2", false), ("10.0", true), ("11.1", true)] {
        let Body::Migration { steps } = &variant(&v, q).spec.body else { panic!() };
        assert!(steps[0].expect_error.is_none());
        assert_eq!(steps[1].expect_error.is_some(), refused, "{q}");
    }
    let bad = f.replace("when = { qemu", "when = { qmeu");
    let e = load(&bad).unwrap_err();
    assert!(e.starts_with("t.toml:5: steps[1]:") && e.contains("qmeu"), "{e}");
    let bad = f.replace("cannot cancel", "(");
    assert!(load(&bad).unwrap_err().contains("bad regex"));
}

#[test]
fn migration_expect_is_about_the_destination() {
    let f = format!(
        "{AXES}[[steps]]\ndo = \"migrate\"\n[[expect]]\nrun-state = \"paused\"\nmax-rss = \"512M\"\n\
         [[expect]]\nwhen = {{ qemu = \"7.2\" }}\nrun-state = \"postmigrate\"\nmax-time = \"5s\"\n"
    );
    let v = load(&f).unwrap();
    let e = &variant(&v, "7.2").spec.dest_expect;
    assert_eq!(e.run_state, Some(RunState::Postmigrate));
    assert_eq!(e.max_rss, Some(512 << 20));
    assert_eq!(e.max_time, Some(Duration::from_secs(5)));
    let e = &variant(&v, "11.1").spec.dest_expect;
    assert_eq!(e.run_state, Some(RunState::Paused));
    assert_eq!(e.max_time, None);
    let bad = f.replace("max-rss = \"512M\"", "verdict = \"completed\"");
    let e = load(&bad).unwrap_err();
    assert!(e.starts_with("t.toml:5:") && e.contains("verdict") && e.contains("stream"), "{e}");
    let bad = f.replace("\"postmigrate\"", "\"postmigrated\"");
    assert!(load(&bad).unwrap_err().contains("postmigrated"));
}

const STREAM: &str = "kind = \"stream\"\n[[records]]\nop = \"header\"\n";

#[test]
fn stream_expect_entries_per_variant() {
    let f = format!(
        "{STREAM}{AXES}[[expect]]\nverdict = \"failed\"\nerror = \"x\"\nrust-max-rss = \"64M\"\n\
         [[expect]]\nwhen = {{ qemu = \"7.2\" }}\nverdict = \"completed\"\nqemu-run-state = \"paused\"\n"
    );
    let v = load(&f).unwrap();
    let exp = |q| match &variant(&v, q).spec.body {
        Body::Stream { expect, .. } => expect.clone(),
        _ => panic!(),
    };
    let e = exp("7.2");
    assert_eq!(e.verdict, crate::synth::Expect::Completed);
    assert_eq!(e.qemu.run_state, Some(RunState::Paused));
    assert_eq!(e.rust.run_state, None);
    assert_eq!(e.rust.max_rss, Some(64 << 20));
    assert_eq!(e.qemu.max_rss, None);
    assert_eq!(exp("10.0").verdict, crate::synth::Expect::Failed);
    // An entry for some variants only leaves the others without a verdict.
    let partial =
        format!("{STREAM}{AXES}[[expect]]\nwhen = {{ qemu = \"7.2\" }}\nverdict = \"failed\"\n");
    let e = load(&partial).unwrap_err();
    assert!(e.contains("no [[expect]] entry applies") && e.contains("qemu=10.0"), "{e}");
}

#[test]
fn stream_vcpus() {
    let f = format!(
        "{STREAM}{AXES}[dest.vcpus]\npattern = \"sweep\"\nrate = 1000\n\
         [expect]\nverdict = \"completed\"\nmin-page-requests = 1\n"
    );
    let v = load(&f).unwrap();
    let vc = variant(&v, "10.0").spec.dest.vcpus.clone().unwrap();
    assert_eq!(
        vc.args(),
        ["--vcpu-pattern", "sweep", "--vcpu-threads", "1", "--vcpu-rate", "1000"]
    );
    let e = load(&f.replace("\"sweep\"", "\"zigzag\"")).unwrap_err();
    assert!(e.starts_with("t.toml:") && e.contains("zigzag"), "{e}");
    let no_vcpus = f.replace("[dest.vcpus]\npattern = \"sweep\"\nrate = 1000\n", "");
    assert!(load(&no_vcpus).unwrap_err().contains("min-page-requests needs [dest.vcpus]"));
    let migration =
        format!("{AXES}[[steps]]\ndo = \"migrate\"\n[dest.vcpus]\npattern = \"sweep\"\n");
    assert!(load(&migration).unwrap_err().contains("dest.vcpus belongs to kind = \"stream\""));
}

#[test]
fn step_when_names_axes() {
    let f = format!("{AXES}[[steps]]\ndo = \"migrate\"\nwhen = {{ dest = \"rust\" }}\n");
    let e = load(&f).unwrap_err();
    assert!(e.starts_with("t.toml:3: steps[0]:") && e.contains("`dest`"), "{e}");
    assert!(load(&f.replace("dest = \"rust\"", "qemu = \"7.2\"")).is_ok());
}

#[test]
fn source_hugepages() {
    let f = format!(
        "{AXES}[source]\nmemory = \"256M\"\nhugepages = \"2M\"\n[[steps]]\ndo = \"migrate\"\n"
    );
    let v = load(&f).unwrap();
    assert_eq!(variant(&v, "10.0").spec.source.hugepages, Some(2 << 20));
    assert!(load(&format!("{AXES}[[steps]]\ndo = \"migrate\"\n")).unwrap()[0]
        .spec
        .source
        .hugepages
        .is_none());
    let e = load(&f.replace("\"2M\"", "\"3M\"")).unwrap_err();
    assert!(e.contains("hugepages") && e.contains("not a huge page size"), "{e}");
    let e = load(&f.replace("\"2M\"", "\"1G\"")).unwrap_err();
    assert!(e.contains("not a multiple of source.hugepages"), "{e}");
}

#[test]
fn dest_rust_args_only_for_rust_dest() {
    let f = "[axes]\ndest = [\"rust\", \"qemu\"]\n[dest]\nkind = \"${dest}\"\n\
             args = [\"-name\", \"x\"]\nrust-args = [\"--vcpu-rate\", \"20\"]\n\
             [[steps]]\ndo = \"migrate\"\n";
    let v = load(f).unwrap();
    let args = |d: &str| {
        let x = v.iter().find(|x| x.name().contains(&format!("dest={d}"))).unwrap();
        x.spec.dest.args.clone()
    };
    assert_eq!(args("rust"), ["-name", "x", "--vcpu-rate", "20"]);
    assert_eq!(args("qemu"), ["-name", "x"]);
}

/// A regex nesting deeper than `cases::PATTERN_NEST_LIMIT` is refused at
/// once (the fuzzed pattern behind it took 0.2 s to compile per variant).
#[test]
fn deeply_nested_regexes_are_refused() {
    let nested = |d: usize| format!("(?i){}x{}", "(?:a|".repeat(d), ")".repeat(d));
    let file =
        |re: &str| format!("{STREAM}{AXES}[[expect]]\nverdict = \"failed\"\nerror = '{re}'\n");
    // A group with alternatives counts two levels.
    let ok = load(&file(&nested(4))).expect("4 groups deep");
    assert_eq!(ok.len(), 3);
    let t0 = std::time::Instant::now();
    let e = load(&file(&nested(9))).unwrap_err();
    assert!(e.contains("bad regex") && e.contains("nested"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(1));
}
