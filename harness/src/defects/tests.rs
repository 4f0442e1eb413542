//! The mutator on streams recorded from real QEMU 10.0
//! (`wire/tests/streams/`), fed in odd-sized chunks: what each mutation
//! changes, and that nothing else changes.

use std::sync::Arc;

use super::channel::{ChannelMutator, Shared};
use super::mutation::Mutation;
use crate::verify::devices::sections_of_stream;

fn stream(name: &str) -> Vec<u8> {
    let p =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wire/tests/streams").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Run `m` over `input` in chunks of 997 bytes; the output and the notes.
fn mutate(m: Mutation, input: &[u8]) -> (Vec<u8>, Vec<String>) {
    let sh = Arc::new(Shared::default());
    let mut c = ChannelMutator::main(m, sh.clone());
    let mut out = Vec::new();
    for ch in input.chunks(997) {
        c.feed(ch, &mut out);
    }
    c.finish(&mut out);
    (out, sh.applied())
}

#[test]
fn nothing_changes_nothing() {
    for s in ["qemu-10.0-precopy.bin", "qemu-10.0-postcopy.bin"] {
        let b = stream(s);
        let (out, notes) = mutate(Mutation::Nothing, &b);
        assert!(out == b, "{s}: output differs from input");
        assert!(notes.is_empty());
    }
}

#[test]
fn ram_mutations_change_one_record() {
    let b = stream("qemu-10.0-precopy.bin");
    for m in [Mutation::PageToZero, Mutation::ShiftPage, Mutation::SwapPages, Mutation::DropRamEos]
    {
        let (out, notes) = mutate(m, &b);
        assert_eq!(notes.len(), 1, "{m}: {notes:?}");
        assert!(out != b, "{m}: nothing changed");
        // The device state is untouched (after a lost EOS the stream no
        // longer parses up to it).
        if m != Mutation::DropRamEos {
            assert!(
                sections_of_stream(&out).0 == sections_of_stream(&b).0,
                "{m}: device state changed"
            );
        }
    }
    let (out, _) = mutate(Mutation::PageToZero, &b);
    assert!(out.len() < b.len(), "a page record became a 1-byte ZERO record");
}

#[test]
fn device_mutations_change_the_sections() {
    let b = stream("qemu-10.0-precopy.bin");
    let (sent, vmdesc) = sections_of_stream(&b);
    assert!(sent.len() > 3 && vmdesc.is_some());
    let n = sent.len();
    let got = |m| {
        let (out, notes) = mutate(m, &b);
        assert_eq!(notes.len(), 1, "{m}: {notes:?}");
        sections_of_stream(&out).0
    };
    assert_eq!(got(Mutation::DuplicateDeviceSection).len(), n + 1);
    assert_eq!(got(Mutation::DropDeviceSection).len(), n - 1);
    let r = got(Mutation::ReorderDeviceSections);
    assert_eq!(r.len(), n);
    assert!(r != sent);
    let f = got(Mutation::FlipDeviceByte);
    let diff: usize = f
        .iter()
        .zip(&sent)
        .map(|(a, b)| a.data.iter().zip(&b.data).filter(|(x, y)| x != y).count())
        .sum();
    assert_eq!(diff, 1);
    let d = crate::verify::devices::first_difference(&sent, &f, vmdesc.as_ref(), &[])
        .expect("a difference");
    assert!(d.contains("field "), "{d}");
}

#[test]
fn postcopy_package_mutations() {
    let b = stream("qemu-10.0-postcopy.bin");
    for m in [Mutation::ListenAfterDevices, Mutation::DropPostcopyRun] {
        let (out, notes) = mutate(m, &b);
        assert_eq!(notes.len(), 1, "{m}: {notes:?}");
        assert!(out != b);
    }
    let (out, _) = mutate(Mutation::DropPostcopyRun, &b);
    assert_eq!(out.len() + 5, b.len(), "RUN (5 bytes) left out of the package");
}

#[test]
fn catalogue_files_load() {
    let all = super::catalogue::load_dir(&super::catalogue::default_dir()).expect("catalogue");
    let src: Vec<_> = all.iter().filter(|d| d.side == super::catalogue::Side::Source).collect();
    assert!(src.len() >= 14, "{} source-side defects", src.len());
    for d in &src {
        assert!(d.mutation().is_ok_and(|m| m != Mutation::Nothing), "{}", d.name);
    }
    assert!(all.iter().any(|d| d.fast));
}

#[test]
fn bad_catalogue_entries_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("source.toml");
    let entry = |inject: &str| {
        format!("[[defect]]\nname = \"x\"\nside = \"source\"\ninject = \"{inject}\"\nclass = \"c\"\nreference = \"\"\nmigration = \"precopy\"\n")
    };
    std::fs::write(&p, entry("no-such-mutation")).expect("write");
    let e = super::catalogue::load_file(&p).expect_err("unknown mutation");
    assert!(matches!(e, super::catalogue::CatalogueError::Invalid { .. }), "{e}");
    std::fs::write(&p, entry("page-to-zero").replace("precopy", "sideways")).expect("write");
    assert!(matches!(
        super::catalogue::load_file(&p),
        Err(super::catalogue::CatalogueError::Parse { .. })
    ));
}

#[test]
fn stream_scenario_entries_are_checked() {
    use super::catalogue::{default_dir, load_dir, load_file, CatalogueError};
    use super::runner::controls_for;
    let all = load_dir(&default_dir()).expect("catalogue");
    let streams: Vec<_> = all.iter().filter(|d| d.scenario.is_some()).collect();
    assert_eq!(streams.len(), 3, "stream-scenario defects");
    // One control per scenario, and one per kind of live migration.
    let c = controls_for(&all);
    for d in &streams {
        assert!(c.iter().any(|x| x.scenario == d.scenario), "no control for {}", d.name);
    }
    assert!(c.iter().any(|x| x.name == "control-postcopy-recovery"));
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("dest.toml");
    let entry = |side: &str, sc: &str| {
        format!("[[defect]]\nname = \"x\"\nside = \"{side}\"\ninject = \"zero-keeps-stale\"\nclass = \"c\"\nreference = \"\"\nmigration = \"precopy\"\nscenario = \"{sc}\"\n")
    };
    std::fs::write(&p, entry("dest", "stream-zero-after-page")).expect("write");
    load_file(&p).expect("a dest entry with a stream scenario");
    for (side, sc) in
        [("dest", "stream-no-such-file"), ("dest", "cancel"), ("source", "stream-zero-after-page")]
    {
        std::fs::write(&p, entry(side, sc)).expect("write");
        let e = load_file(&p).expect_err("refused");
        assert!(matches!(e, CatalogueError::Invalid { .. }), "{side} {sc}: {e}");
    }
}
