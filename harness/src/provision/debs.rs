//! QEMU 7.2: bookworm's own .debs (`apt-get download`), unpacked with
//! `dpkg -x` into `qemu-7.2/root`, run with the host's libraries.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

use super::apt::{
    cmd, dpkg_installed, is_upstream_series, ldd_missing, lib_depends, pick_version, run_logged,
};
use super::record::{InstallSource, Manifest, PackageRef};
use super::tree::{absolute_symlinks, remove_tree};
use super::verify::version_of;
use crate::vm::qemu::QemuBinary;

pub(super) fn install_bookworm_72(dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<Manifest> {
    let log = dir.join("install.log");
    let _ = fs::remove_file(&log);
    let root = dir.join("root");
    let debs = dir.join("debs");
    remove_tree(&root)?;
    remove_tree(&debs)?;
    fs::create_dir_all(&debs)?;

    let is72 = |v: &str| is_upstream_series(v, "7.2");
    let any = |_: &str| true;
    type Want<'a> = (&'a str, &'a dyn Fn(&str) -> bool);
    let wants: [Want; 5] = [
        ("qemu-system-x86", &is72),
        ("qemu-system-common", &is72),
        ("qemu-system-data", &is72),
        ("seabios", &any),
        ("ipxe-qemu", &any),
    ];
    progress("looking up bookworm package versions (apt-cache madison)");
    let resolve = || -> Result<Vec<PackageRef>> {
        let mut v = Vec::new();
        for (name, want) in &wants {
            if let Some(version) = pick_version(name, *want)? {
                v.push(PackageRef { name: name.to_string(), version });
            }
        }
        Ok(v)
    };
    let mut pkgs = resolve()?;
    if pkgs.len() < wants.len() {
        progress("not all found in the apt lists: apt-get update");
        run_logged(&mut cmd("apt-get", &["update"]), Some(&log))?;
        pkgs = resolve()?;
    }
    if pkgs.len() < wants.len() {
        let missing: Vec<&str> =
            wants.iter().map(|w| w.0).filter(|n| !pkgs.iter().any(|p| p.name == *n)).collect();
        bail!("no bookworm version of {missing:?} in the host's apt sources (`apt-cache madison`)");
    }
    let specs: Vec<String> = pkgs.iter().map(|p| format!("{}={}", p.name, p.version)).collect();
    progress(&format!("apt-get download {}", specs.join(" ")));
    let mut c = cmd("apt-get", &["download"]);
    c.args(&specs).current_dir(&debs);
    run_logged(&mut c, Some(&log))?;

    progress(&format!("unpacking into {} (dpkg -x)", root.display()));
    fs::create_dir_all(&root)?;
    let mut files: Vec<PathBuf> = fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    files.sort();
    if files.len() != pkgs.len() {
        bail!("expected {} .deb files in {}, found {files:?}", pkgs.len(), debs.display());
    }
    for f in &files {
        let mut c = Command::new("dpkg");
        c.arg("-x").arg(f).arg(&root);
        run_logged(&mut c, Some(&log))?;
    }
    let binary = root.join("usr/bin/qemu-system-x86_64");
    if !binary.is_file() {
        bail!("{} not found after unpacking", binary.display());
    }

    // Its libraries come from the host (bookworm sonames): install missing ones.
    let missing = ldd_missing(&binary, Some(&log))?;
    if !missing.is_empty() {
        let deb = files.iter().find(|f| {
            f.file_name().is_some_and(|n| n.to_string_lossy().starts_with("qemu-system-x86_"))
        });
        let libs = match deb {
            Some(d) => lib_depends(d)?,
            None => Vec::new(),
        };
        let absent: Vec<String> = libs.into_iter().filter(|l| !dpkg_installed(l)).collect();
        progress(&format!(
            "host lacks {missing:?}: apt-get install --no-install-recommends {}",
            absent.join(" ")
        ));
        if !absent.is_empty() {
            let mut c = cmd("apt-get", &["install", "-y", "--no-install-recommends"]);
            c.args(&absent);
            run_logged(&mut c, Some(&log))?;
        }
        let still = ldd_missing(&binary, Some(&log))?;
        if !still.is_empty() {
            bail!("{} still cannot find {still:?}", binary.display());
        }
    }
    let _ = remove_tree(&debs);

    // seabios and ipxe first: if a file in usr/share/qemu is an absolute
    // symlink it would otherwise resolve to the host's copy.
    let data_dirs: Vec<PathBuf> = ["usr/share/seabios", "usr/lib/ipxe/qemu", "usr/share/qemu"]
        .iter()
        .map(|d| root.join(d))
        .filter(|d| d.is_dir())
        .collect();
    let bin = QemuBinary { path: binary.clone(), data_dirs: data_dirs.clone(), loader: None };
    let (qemu_version, version_line) = version_of(&bin)?;
    let abs = absolute_symlinks(&data_dirs);
    Ok(Manifest {
        series: "7.2".into(),
        qemu_version,
        version_line,
        binary,
        data_dirs,
        loader: None,
        source: InstallSource {
            kind: "bookworm debs (apt-get download + dpkg -x); host libraries".into(),
            packages: pkgs,
            note: (!abs.is_empty())
                .then(|| format!("absolute symlinks in firmware folders: {}", abs.join(", "))),
        },
        installed_at: 0,
        install_seconds: 0.0,
    })
}
