//! Checking an install: `--version` within the series, and a TCG q35 VM
//! that starts and quits over QMP.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

use super::record::Manifest;
use crate::vm::qemu::{parse_qemu_version, QemuBinary};

/// How long the TCG smoke test may take.
const SMOKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Does a `(major, minor)` reported by a binary satisfy `series`?
/// `7.2` and `10.0` must match exactly; `11.1` accepts any `11.x`.
pub fn series_matches(series: &str, got: (u32, u32, u32)) -> bool {
    let (maj, min, _) = got;
    match series {
        "11.1" => maj == 11,
        s => {
            let mut it = s.split('.').map(|x| x.parse::<u32>().ok());
            matches!((it.next().flatten(), it.next().flatten()), (Some(a), Some(b)) if a == maj && b == min)
        }
    }
}

/// Result of checking a binary: (`major.minor.micro`, first `--version` line).
pub(super) fn version_of(bin: &QemuBinary) -> Result<(String, String)> {
    let mut cmd = bin.command();
    cmd.arg("--version");
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let (a, b, c) = parse_qemu_version(&text)
        .ok_or_else(|| anyhow!("cannot parse the QEMU version from {text:?}"))?;
    Ok((format!("{a}.{b}.{c}"), text.lines().next().unwrap_or("").to_string()))
}

/// Start `-accel tcg -machine q35 -S` with QMP on stdio, ask for the run
/// state and quit. Proves the TCG accelerator (a module in some Debian
/// builds) loads and the machine's firmware is found.
pub fn smoke_test_tcg(bin: &QemuBinary) -> Result<()> {
    let mut cmd = bin.command();
    cmd.args([
        "-accel",
        "tcg",
        "-machine",
        "q35",
        "-m",
        "64M",
        "-display",
        "none",
        "-nodefaults",
        "-S",
        "-qmp",
        "stdio",
    ]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("starting {desc}"))?;
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        // QEMU reads these after its greeting; a closed pipe afterwards is fine.
        let _ = stdin.write_all(
            b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\"}\n{\"execute\":\"quit\"}\n",
        );
    }
    let mut so = child.stdout.take().expect("piped stdout");
    let mut se = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + SMOKE_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill(); // our own child, by pid
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = t_out.join().unwrap_or_default();
    let err = t_err.join().unwrap_or_default();
    let Some(status) = status else {
        bail!("TCG smoke test timed out after {SMOKE_TIMEOUT:?}: {desc}\nstdout: {out}\nstderr: {err}");
    };
    let run_state = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["return"]["status"].as_str().map(str::to_string));
    match (status.success(), run_state.as_deref()) {
        (true, Some("prelaunch")) | (true, Some("paused")) => Ok(()),
        _ => bail!(
            "TCG smoke test failed ({status}, run state {run_state:?}): {desc}\nstdout: {}\nstderr: {}",
            out.trim(),
            err.trim()
        ),
    }
}

/// Full check of a manifest: files present, `--version` in the series, TCG works.
pub(super) fn verify_manifest(series: &str, m: &Manifest) -> Result<QemuBinary> {
    if m.series != series {
        bail!("manifest is for series {:?}, not {series:?}", m.series);
    }
    if !m.binary.is_file() {
        bail!("{} is missing", m.binary.display());
    }
    if let Some(l) = &m.loader {
        for p in [&l.ld_so, &l.library_path] {
            if !p.exists() {
                bail!("{} is missing", p.display());
            }
        }
    }
    for d in &m.data_dirs {
        if !d.is_dir() {
            bail!("firmware folder {} is missing", d.display());
        }
    }
    let bin = m.qemu_binary();
    let (ver, _) = version_of(&bin)?;
    if ver != m.qemu_version {
        bail!("--version says {ver}, the manifest recorded {}", m.qemu_version);
    }
    let parsed = parse_qemu_version(&format!("version {ver}")).unwrap_or_default();
    if !series_matches(series, parsed) {
        bail!("--version says {ver}, which is not QEMU {series}");
    }
    smoke_test_tcg(&bin)?;
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_matching() {
        assert!(series_matches("7.2", (7, 2, 22)));
        assert!(!series_matches("7.2", (7, 1, 0)));
        assert!(series_matches("10.0", (10, 0, 2)));
        assert!(!series_matches("10.0", (10, 2, 0)));
        assert!(series_matches("11.1", (11, 1, 3)));
        assert!(series_matches("11.1", (11, 2, 0)));
        assert!(!series_matches("11.1", (12, 0, 0)));
    }
}
