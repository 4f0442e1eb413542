//! QEMU 11.1: a Debian sid root (`debootstrap --variant=minbase`) with
//! `qemu-system-x86` installed inside it, run through sid's own loader.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use super::apt::{cmd, dpkg_installed, dpkg_versions, run_logged};
use super::record::{InstallSource, LoaderSpec, Manifest, PackageRef, RECORDED_PACKAGES};
use super::tree::{absolute_symlinks, remove_tree, resolve_in_root, unmount_all_under};
use super::verify::version_of;
use crate::vm::qemu::{parse_qemu_version, QemuBinary};

/// Debian mirror used for the sid root (override: `$CROSSMIG_DEBIAN_MIRROR`).
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// `/proc` and `/dev` mounted in a chroot; unmounted on drop.
struct ChrootMounts {
    mounted: Vec<PathBuf>,
}

impl ChrootMounts {
    fn mount(root: &Path, log: &Path) -> Result<ChrootMounts> {
        let mut g = ChrootMounts { mounted: Vec::new() };
        let proc_ = root.join("proc");
        let dev = root.join("dev");
        fs::create_dir_all(&proc_)?;
        fs::create_dir_all(&dev)?;
        run_logged(Command::new("mount").args(["-t", "proc", "proc"]).arg(&proc_), Some(log))?;
        g.mounted.push(proc_);
        run_logged(Command::new("mount").arg("--bind").arg("/dev").arg(&dev), Some(log))?;
        g.mounted.push(dev);
        Ok(g)
    }
}

impl Drop for ChrootMounts {
    fn drop(&mut self) {
        for m in self.mounted.drain(..).rev() {
            let ok = Command::new("umount").arg(&m).status().map(|s| s.success()).unwrap_or(false);
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&m).status();
            }
        }
    }
}

fn chroot_cmd(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("chroot");
    c.arg(root).args(args);
    c.env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .env("HOME", "/root")
        .env("DEBIAN_FRONTEND", "noninteractive");
    c
}

pub(super) fn install_sid(
    dir: &Path,
    progress: &mut dyn FnMut(&str),
    allow_reuse: bool,
) -> Result<Manifest> {
    let log = dir.join("install.log");
    let root = dir.join("root");
    let bootstrapped = dir.join(".debootstrap-done");
    // Leftovers of an interrupted run: unmount before anything else.
    unmount_all_under(dir)?;

    if !dpkg_installed("debootstrap") {
        progress("apt-get install debootstrap (host)");
        if run_logged(
            &mut cmd("apt-get", &["install", "-y", "--no-install-recommends", "debootstrap"]),
            Some(&log),
        )
        .is_err()
        {
            run_logged(&mut cmd("apt-get", &["update"]), Some(&log))?;
            run_logged(
                &mut cmd("apt-get", &["install", "-y", "--no-install-recommends", "debootstrap"]),
                Some(&log),
            )?;
        }
    }

    let mirror = std::env::var("CROSSMIG_DEBIAN_MIRROR")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_MIRROR.into());
    if allow_reuse && bootstrapped.is_file() && root.join("usr/bin/apt-get").is_file() {
        progress(&format!("reusing the bootstrapped sid root {}", root.display()));
    } else {
        let _ = fs::remove_file(&bootstrapped);
        remove_tree(&root)?;
        progress(&format!("debootstrap --variant=minbase sid {} {mirror}", root.display()));
        let t = Instant::now();
        let mut c = cmd("debootstrap", &["--variant=minbase", "sid"]);
        c.arg(&root).arg(&mirror);
        let r = run_logged(&mut c, Some(&log));
        // debootstrap mounts /proc and /sys in the target itself: make sure
        // nothing is left mounted, whatever happened.
        unmount_all_under(dir)?;
        r?;
        File::create(&bootstrapped)?;
        progress(&format!("debootstrap done in {:.1} s", t.elapsed().as_secs_f64()));
    }

    // No services started by maintainer scripts; name resolution as the host.
    let prc = root.join("usr/sbin/policy-rc.d");
    fs::write(&prc, "#!/bin/sh\nexit 101\n")?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&prc, fs::Permissions::from_mode(0o755))?;
    }
    if let Ok(rc) = fs::read("/etc/resolv.conf") {
        let dst = root.join("etc/resolv.conf");
        let _ = fs::remove_file(&dst);
        fs::write(&dst, rc)?;
    }

    {
        let mounts = ChrootMounts::mount(&root, &log)?;
        progress("apt-get update inside the sid root");
        run_logged(
            &mut chroot_cmd(
                &root,
                &["apt-get", "-o", "Acquire::Check-Valid-Until=false", "update"],
            ),
            Some(&log),
        )?;
        progress("apt-get install --no-install-recommends qemu-system-x86 inside the sid root");
        let t = Instant::now();
        run_logged(
            &mut chroot_cmd(
                &root,
                &[
                    "apt-get",
                    "-o",
                    "Acquire::Check-Valid-Until=false",
                    "install",
                    "-y",
                    "--no-install-recommends",
                    "qemu-system-x86",
                ],
            ),
            Some(&log),
        )?;
        progress(&format!("installed inside the root in {:.1} s", t.elapsed().as_secs_f64()));
        let _ = run_logged(&mut chroot_cmd(&root, &["apt-get", "clean"]), Some(&log));
        drop(mounts);
    }
    unmount_all_under(dir)?;

    let binary = root.join("usr/bin/qemu-system-x86_64");
    if !binary.is_file() {
        bail!("{} not found after installing qemu-system-x86 in the sid root", binary.display());
    }
    let ld_so = resolve_in_root(&root, &root.join("usr/lib64/ld-linux-x86-64.so.2"))
        .context("sid's dynamic loader")?;
    let library_path = root.join("usr/lib/x86_64-linux-gnu");
    // Every library must come from the root, none from the host.
    let out = run_logged(
        Command::new(&ld_so).arg("--list").arg("--library-path").arg(&library_path).arg(&binary),
        Some(&log),
    )?;
    let root_c = root.canonicalize()?;
    let mut outside = Vec::new();
    for l in out.lines() {
        if l.contains("not found") {
            outside.push(l.trim().to_string());
            continue;
        }
        if let Some(p) = l.split("=>").nth(1).and_then(|r| r.split_whitespace().next()) {
            let pc = Path::new(p).canonicalize().unwrap_or_else(|_| PathBuf::from(p));
            if p.starts_with('/') && !pc.starts_with(&root_c) {
                outside.push(l.trim().to_string());
            }
        }
    }
    if !outside.is_empty() {
        bail!("sid's QEMU would load libraries from outside its root: {outside:?}");
    }

    let data_dirs: Vec<PathBuf> = ["usr/share/seabios", "usr/lib/ipxe/qemu", "usr/share/qemu"]
        .iter()
        .map(|d| root.join(d))
        .filter(|d| d.is_dir())
        .collect();
    let bin = QemuBinary {
        path: binary.clone(),
        data_dirs: data_dirs.clone(),
        loader: Some((ld_so.clone(), library_path.clone())),
    };
    let (qemu_version, version_line) = version_of(&bin)?;
    let parsed = parse_qemu_version(&format!("version {qemu_version}")).unwrap_or_default();
    if parsed.0 != 11 {
        bail!("Debian sid ships QEMU {qemu_version}, not 11.x ({version_line})");
    }
    let mut notes = Vec::new();
    if parsed.1 != 1 {
        notes
            .push(format!("sid ships QEMU {qemu_version}, accepted for series 11.1 (any 11.x is)"));
    }
    let abs = absolute_symlinks(&data_dirs);
    if !abs.is_empty() {
        notes.push(format!("absolute symlinks in firmware folders: {}", abs.join(", ")));
    }
    let mut want: Vec<&str> = RECORDED_PACKAGES.to_vec();
    want.push("libc6");
    let vs = dpkg_versions(Some(&root.join("var/lib/dpkg")), &want);
    Ok(Manifest {
        series: "11.1".into(),
        qemu_version,
        version_line,
        binary,
        data_dirs,
        loader: Some(LoaderSpec { ld_so, library_path }),
        source: InstallSource {
            kind: format!("debian sid root (debootstrap --variant=minbase, {mirror}), run through sid's ld.so"),
            packages: vs.into_iter().map(|(name, version)| PackageRef { name, version }).collect(),
            note: (!notes.is_empty()).then(|| notes.join("; ")),
        },
        installed_at: 0,
        install_seconds: 0.0,
    })
}
