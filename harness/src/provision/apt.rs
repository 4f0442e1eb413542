//! Running commands with a log, and the apt/dpkg look-ups every install
//! strategy shares (madison, dpkg-query, ldd, Debian version strings).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// Run a command, appending its output to `log` (if any). On failure the
/// error carries the command and the tail of its output.
pub(super) fn run_logged(cmd: &mut Command, log: Option<&Path>) -> Result<String> {
    let desc = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {desc}"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if let Some(l) = log {
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(l) {
            let _ = writeln!(f, "$ {desc}\n{text}\n[{}]", out.status);
        }
    }
    if !out.status.success() {
        let tail = &text[text.len().saturating_sub(3000)..];
        bail!("{desc} failed ({}):\n{tail}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(super) fn cmd(prog: &str, args: &[&str]) -> Command {
    let mut c = Command::new(prog);
    c.args(args).env("LC_ALL", "C").env("DEBIAN_FRONTEND", "noninteractive");
    c
}

/// `dpkg --compare-versions a gt b`.
fn dpkg_version_gt(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Candidates from `apt-cache madison` (binary packages only):
/// `(version, origin)`.
fn madison(pkg: &str) -> Result<Vec<(String, String)>> {
    let out = run_logged(&mut cmd("apt-cache", &["madison", pkg]), None)?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            (f.len() == 3 && f[0] == pkg && f[2].ends_with("Packages"))
                .then(|| (f[1].to_string(), f[2].to_string()))
        })
        .collect())
}

/// Highest version of `pkg` in the host's apt lists that is not from
/// backports and satisfies `want`.
pub(super) fn pick_version(pkg: &str, want: &dyn Fn(&str) -> bool) -> Result<Option<String>> {
    let mut best: Option<String> = None;
    for (v, origin) in madison(pkg)? {
        if origin.contains("backports") || !want(&v) {
            continue;
        }
        if best.as_ref().is_none_or(|b| dpkg_version_gt(&v, b)) {
            best = Some(v);
        }
    }
    Ok(best)
}

/// Upstream part of a Debian version: `1:7.2+dfsg-7` → `7.2+dfsg`.
fn upstream(v: &str) -> &str {
    let v = v.split_once(':').map(|x| x.1).unwrap_or(v);
    v.rsplit_once('-').map(|x| x.0).unwrap_or(v)
}

pub(super) fn is_upstream_series(v: &str, series: &str) -> bool {
    let u = upstream(v);
    u.strip_prefix(series).is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

pub(super) fn ldd_missing(binary: &Path, log: Option<&Path>) -> Result<Vec<String>> {
    let out = run_logged(Command::new("ldd").arg(binary), log)?;
    Ok(out.lines().filter(|l| l.contains("not found")).map(|l| l.trim().to_string()).collect())
}

/// `lib*` package names in a .deb's Depends.
pub(super) fn lib_depends(deb: &Path) -> Result<Vec<String>> {
    let out = run_logged(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Depends"), None)?;
    Ok(out
        .split(',')
        .filter_map(|d| d.split('|').next())
        .map(|d| d.trim().split([' ', '(', ':']).next().unwrap_or("").to_string())
        .filter(|n| n.starts_with("lib"))
        .collect())
}

pub(super) fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", pkg])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "installed")
        .unwrap_or(false)
}

/// `name → version` of installed packages in a dpkg database.
pub(super) fn dpkg_versions(admindir: Option<&Path>, pkgs: &[&str]) -> BTreeMap<String, String> {
    let mut c = Command::new("dpkg-query");
    if let Some(a) = admindir {
        c.arg(format!("--admindir={}", a.display()));
    }
    c.args(["-W", "-f=${Package}\t${Version}\t${db:Status-Status}\n"]).args(pkgs);
    let out =
        c.output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 3 && f[2] == "installed").then(|| (f[0].to_string(), f[1].to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_series() {
        assert!(is_upstream_series("1:7.2+dfsg-7+deb12u18+b3", "7.2"));
        assert!(!is_upstream_series("1:7.20+dfsg-1", "7.2"));
        assert!(!is_upstream_series("1:10.0.2+ds-2+deb13u1~bpo12+1", "7.2"));
        assert!(is_upstream_series("1:10.0.2+ds-2", "10.0"));
    }
}
