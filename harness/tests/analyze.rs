//! `crossmig analyze` on real streams recorded from QEMU 7.2, 10.0 and 11.1
//! (`wire/tests/streams/`, see its README): precopy, postcopy and multifd
//! recordings, damaged copies of them, and the comparison with QEMU's own
//! `scripts/analyze-migration.py` byte for byte. No QEMU runs here.
//!
//! The script comes from QEMU's source tarball (`ci/fetch-analyze-migration.sh`
//! puts it in `$CROSSMIG_QEMU_SRC/<version>/`, default
//! `/var/cache/crossmig/qemu-src`). Without it the comparisons are skipped
//! with a message, unless `CROSSMIG_REQUIRE_ANALYZE_SCRIPT=1` (CI), where a
//! missing script fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::analyze::{analyze, Role};

const VERSIONS: [&str; 3] = ["7.2", "10.0", "11.1"];

fn streams() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../wire/tests/streams")
}

fn stream(name: &str) -> PathBuf {
    streams().join(name)
}

fn crossmig(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crossmig")).arg("analyze").args(args).output().unwrap()
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

/// The script of the QEMU version that wrote a stream (10.2's for 11.1,
/// whose source is not downloadable).
fn script(stream_version: &str) -> Option<PathBuf> {
    let v = if stream_version == "11.1" { "10.2" } else { stream_version };
    let dir = std::env::var_os("CROSSMIG_QEMU_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/crossmig/qemu-src"));
    let p = dir.join(v).join("analyze-migration.py");
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("CROSSMIG_REQUIRE_ANALYZE_SCRIPT").is_some() {
        panic!("{} is missing: run ci/fetch-analyze-migration.sh", p.display());
    }
    eprintln!(
        "SKIP: {} not found (run ci/fetch-analyze-migration.sh to fetch QEMU's script)",
        p.display()
    );
    None
}

fn run_script(script: &Path, args: &[&std::ffi::OsStr], cwd: &Path) -> Output {
    Command::new("python3").arg(script).args(args).current_dir(cwd).output().unwrap()
}

#[test]
fn analyze_migration_format_equals_the_script() {
    let tmp = tempfile::tempdir().unwrap();
    for v in VERSIONS {
        let Some(sc) = script(v) else { return };
        // Precopy, and the main channel of a multifd migration (which the
        // script reads without seeing the multifd channels' pages).
        for name in [format!("qemu-{v}-precopy.bin"), format!("qemu-{v}-multifd2.ch0.bin")] {
            let f = stream(&name);
            for (flag, ours) in [("state", None), ("desc", Some("--desc"))] {
                let want =
                    run_script(&sc, &[os("-f"), f.as_os_str(), os("-d"), os(flag)], tmp.path());
                assert!(
                    want.status.success(),
                    "script on {name}: {}",
                    String::from_utf8_lossy(&want.stderr)
                );
                let mut args = vec![os("--format"), os("analyze-migration"), f.as_os_str()];
                args.extend(ours.map(os));
                let got = crossmig(&args);
                assert!(got.status.success(), "{name}: {}", String::from_utf8_lossy(&got.stderr));
                assert!(
                    got.stdout == want.stdout,
                    "{name} -d {flag}: output differs from the script's"
                );
            }
        }
    }
}

#[test]
fn extract_equals_the_script() {
    for v in VERSIONS {
        let Some(sc) = script(v) else { return };
        let f = stream(&format!("qemu-{v}-precopy.bin"));
        let theirs = tempfile::tempdir().unwrap();
        let out = run_script(&sc, &[os("-f"), f.as_os_str(), os("-x")], theirs.path());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let ours = tempfile::tempdir().unwrap();
        let got = crossmig(&[os("--extract"), ours.path().as_os_str(), f.as_os_str()]);
        assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
        let a = analyze(std::slice::from_ref(&f), None).unwrap();
        let mut names: Vec<String> = a.blocks.iter().map(|b| b.name.clone()).collect();
        names.extend(["desc.json".into(), "state.json".into()]);
        for n in names {
            let rel = n.trim_start_matches('/');
            let x = std::fs::read(theirs.path().join(rel)).unwrap();
            let y = std::fs::read(ours.path().join(rel)).unwrap();
            assert!(x == y, "{v}: extracted {n} differs from the script's");
        }
    }
}

fn sha256(p: &Path) -> String {
    let o = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8(o.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

fn facts(name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(stream(name)).unwrap()).unwrap()
}

#[test]
fn postcopy_recordings() {
    for v in VERSIONS {
        let f = stream(&format!("qemu-{v}-postcopy.bin"));
        let a = analyze(std::slice::from_ref(&f), None).unwrap();
        assert!(a.damage.is_empty(), "{v}: {:?}", a.damage);
        let p = a.postcopy.as_ref().expect("a postcopy timeline");
        let (pkg, _) = p.package.unwrap();
        let (adv, listen, run) = (p.advise.unwrap(), p.listen.unwrap(), p.run.unwrap());
        assert!(
            adv < p.discards[0].offset && p.discards.last().unwrap().offset < pkg,
            "{v}: {p:?}"
        );
        assert!(pkg < listen && listen < run, "{v}: {p:?}");
        // One discard per RAMBlock, covering what precopy had not sent.
        assert_eq!(p.discards.len(), a.blocks.len(), "{v}");
        for b in &a.blocks {
            let d = p.discards.iter().find(|d| d.block == b.name).unwrap();
            assert_eq!(d.pages, b.discarded_pages);
            // Everything discarded is sent again after LISTEN, nothing is
            // missing at the end.
            assert_eq!(b.postcopy_pages, b.discarded_pages, "{v} {}", b.name);
            assert_eq!(b.never_sent_pages, 0, "{v} {}", b.name);
            assert_eq!(
                b.pages + b.zero_pages,
                b.used_length / 4096 + b.resent_pages,
                "{v} {}",
                b.name
            );
        }
        assert_eq!(
            p.main_pages_after_listen,
            a.blocks.iter().map(|b| b.postcopy_pages).sum::<u64>()
        );
        // The device state travels in the package; no vmdesc describes it.
        assert!(
            a.devices.len() > 20 && a.devices.iter().all(|d| d.in_package && d.fields.is_none())
        );
        assert!(a.vmdesc_len.is_none());
        // With the vmdesc of a precopy stream of the same QEMU, every device
        // decodes field by field.
        let pre = stream(&format!("qemu-{v}-precopy.bin"));
        let b = analyze(std::slice::from_ref(&f), Some(&pre)).unwrap();
        assert!(
            b.devices.iter().all(|d| d.fields.is_some()),
            "{v}: {:?}",
            b.devices.iter().find(|d| d.fields.is_none())
        );
        // The summary names the timeline; the script stops at the first command.
        let out = crossmig(&[f.as_os_str()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        for w in [
            "POSTCOPY_ADVISE",
            "POSTCOPY_RAM_DISCARD",
            "POSTCOPY_LISTEN",
            "POSTCOPY_RUN",
            "PACKAGED blob",
        ] {
            assert!(text.contains(w), "{v}: {w} missing in\n{text}");
        }
        let state = crossmig(&[os("--format"), os("analyze-migration"), f.as_os_str()]);
        let j: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
        assert_eq!(
            j.as_object().unwrap().len(),
            1 + a.devices.len(),
            "{v}: one member per section"
        );
        let ram = j.as_object().unwrap().iter().find(|(k, _)| k.starts_with("ram (")).unwrap().1;
        assert_eq!(ram["section sizes"]["mem0"], "0x0000000004000000", "{v}");
        if let Some(sc) = script(v) {
            let tmp = tempfile::tempdir().unwrap();
            let r = run_script(&sc, &[os("-f"), f.as_os_str(), os("-d"), os("state")], tmp.path());
            assert!(
                !r.status.success(),
                "{v}: the script was expected to fail on a postcopy stream"
            );
        }
        // Extracted RAM equals the source's.
        let dir = tempfile::tempdir().unwrap();
        harness::analyze::extract::extract(&a, dir.path()).unwrap();
        let want =
            facts(&format!("qemu-{v}-postcopy.json"))["mem0_sha256"].as_str().unwrap().to_string();
        assert_eq!(sha256(&dir.path().join("mem0")), want, "{v}");
    }
}

#[test]
fn multifd_recordings() {
    for set in
        ["qemu-7.2-multifd2", "qemu-10.0-multifd2", "qemu-10.0-multifd2-zstd", "qemu-11.1-multifd2"]
    {
        let files: Vec<PathBuf> = (0..3).map(|k| stream(&format!("{set}.ch{k}.bin"))).collect();
        let a = analyze(&files, None).unwrap();
        assert!(a.damage.is_empty(), "{set}: {:?}", a.damage);
        let roles: Vec<Role> = a.inputs.iter().map(|i| i.role).collect();
        assert_eq!(roles, [Role::Main, Role::Multifd, Role::Multifd]);
        assert_eq!(a.multifd.len(), 2);
        let mut ids: Vec<u8> = a.multifd.iter().map(|m| m.id).collect();
        ids.sort();
        assert_eq!(ids, [0, 1]);
        // Every page of every block was sent; normal pages over the
        // multifd channels, zero pages too from 9.0 on (zero-page-detection
        // multifd), on the main channel in 7.2.
        for b in &a.blocks {
            assert_eq!(b.never_sent_pages, 0, "{set} {}", b.name);
            let on_multifd = if set.contains("7.2-") { b.pages } else { b.pages + b.zero_pages };
            assert_eq!(b.multifd_pages, on_multifd, "{set} {}", b.name);
        }
        let mf: u64 = a.multifd.iter().map(|m| m.pages + m.zero_pages).sum();
        assert_eq!(mf, a.blocks.iter().map(|b| b.multifd_pages).sum::<u64>());
        if set.ends_with("zstd") {
            assert!(a.multifd.iter().all(|m| m.compression.as_deref() == Some("zstd")));
        }
        // Extracted RAM (the main channel alone has none of these pages).
        let dir = tempfile::tempdir().unwrap();
        harness::analyze::extract::extract(&a, dir.path()).unwrap();
        let want = facts(&format!("{set}.json"))["mem0_sha256"].as_str().unwrap().to_string();
        assert_eq!(sha256(&dir.path().join("mem0")), want, "{set}");
        // A directory of recordings reads the same.
        let d = tempfile::tempdir().unwrap();
        for (k, f) in files.iter().enumerate() {
            std::fs::copy(f, d.path().join(format!("t-rec0-conn{k}.bin"))).unwrap();
        }
        let b = analyze(&[d.path().to_path_buf()], None).unwrap();
        assert_eq!(b.multifd.len(), 2);
        assert_eq!(b.events.len(), a.events.len());
    }
}

#[test]
fn damaged_files_report_the_offset_and_keep_what_was_decoded() {
    let tmp = tempfile::tempdir().unwrap();
    let src = std::fs::read(stream("qemu-10.0-precopy.bin")).unwrap();
    let a = analyze(&[stream("qemu-10.0-precopy.bin")], None).unwrap();
    // Cut inside a RAM page record of the second RAM section.
    let part = &a.events[2];
    let cut = (part.offset + 100) as usize;
    let f = tmp.path().join("cut.bin");
    std::fs::write(&f, &src[..cut]).unwrap();
    let out = crossmig(&[f.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("START ram") && text.contains("MEM_SIZE 6 block(s)"), "{text}");
    assert!(err.contains("expected a RAM record of section 1"), "{err}");
    let d = analyze(std::slice::from_ref(&f), None).unwrap();
    assert_eq!(d.damage.len(), 1);
    assert!(d.damage[0].offset >= part.offset && d.damage[0].offset < cut as u64, "{:?}", d.damage);
    // An unknown section type where the next section starts.
    let mut bad = src.clone();
    bad[part.offset as usize] = 0x09;
    let f = tmp.path().join("type.bin");
    std::fs::write(&f, &bad).unwrap();
    let d = analyze(std::slice::from_ref(&f), None).unwrap();
    assert_eq!(d.damage[0].offset, part.offset);
    assert!(d.damage[0].expected.contains("unknown section type 0x09"), "{:?}", d.damage);
    assert_eq!(d.events.len(), 2, "the header and the START section stay");
    // A damaged footer of a device section: the vmdesc decodes it, the
    // footer check finds it.
    let dev = &a.devices[3];
    let foot =
        (dev.offset + (a.events.iter().find(|e| e.offset == dev.offset).unwrap().len) - 5) as usize;
    let mut bad = src.clone();
    bad[foot + 4] ^= 0x40;
    let f = tmp.path().join("footer.bin");
    std::fs::write(&f, &bad).unwrap();
    let out = crossmig(&[f.as_os_str()]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("byte offset"), "{err}");
    let d = analyze(&[f], None).unwrap();
    assert_eq!(d.devices.len(), 3, "devices before the damaged one stay: {:?}", d.damage);
    // A multifd channel cut inside a packet: the main channel and the other
    // channel are still read.
    let mut files: Vec<PathBuf> =
        (0..3).map(|k| stream(&format!("qemu-10.0-multifd2.ch{k}.bin"))).collect();
    let ch1 = std::fs::read(&files[1]).unwrap();
    let f = tmp.path().join("ch1-cut.bin");
    std::fs::write(&f, &ch1[..ch1.len() - 1000]).unwrap();
    files[1] = f.clone();
    let d = analyze(&files, None).unwrap();
    assert_eq!(d.damage.len(), 1, "{:?}", d.damage);
    assert_eq!(d.damage[0].path, f);
    assert!(d.damage[0].offset < ch1.len() as u64 - 1000, "{:?}", d.damage);
    assert_eq!(d.multifd.len(), 2);
    let intact: Vec<PathBuf> =
        (0..3).map(|k| stream(&format!("qemu-10.0-multifd2.ch{k}.bin"))).collect();
    let i = analyze(&intact, None).unwrap();
    assert_eq!(d.events.len(), i.events.len());
    assert!(
        d.multifd.iter().map(|m| m.packets).sum::<u64>()
            < i.multifd.iter().map(|m| m.packets).sum::<u64>()
    );
    // Not a stream at all.
    let f = tmp.path().join("junk.bin");
    std::fs::write(&f, b"QEVM\x00\x00\x00\x09").unwrap();
    let d = analyze(&[f], None).unwrap();
    assert!(d.damage[0].expected.contains("unsupported stream version 9"), "{:?}", d.damage);
}

#[test]
fn json_output_has_decoded_fields() {
    let f = stream("qemu-11.1-precopy.bin");
    let out = crossmig(&[os("--json"), f.as_os_str()]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let devs = j["devices"].as_array().unwrap();
    let timer = devs.iter().find(|d| d["name"] == "timer").unwrap();
    assert_eq!(timer["fields"]["cpu_clock_offset"], "0x0000000000000000");
    assert_eq!(j["header"]["machine"], "pc-q35-11.1");
    assert_eq!(j["blocks"][0]["name"], "mem0");
    assert_eq!(j["blocks"][0]["pages"], 4);
    assert_eq!(j["blocks"][0]["zero_pages"], 16380);
    // The summary with every field.
    let out = crossmig(&[os("--fields"), f.as_os_str()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("      cpu_clock_offset = 0x0000000000000000"), "{text}");
    assert!(text.contains("      env.regs[2] = 0x"), "{text}");
}
