//! The `crossmig qemu install|list` front end: clap subcommands, progress
//! lines and the list table.

use std::time::Instant;

use anyhow::{bail, Result};

use super::{cache_dir, cached_series, check_series, install, status, Status, KNOWN_VERSIONS};

/// `crossmig qemu ...`: manage side-by-side QEMU versions.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum QemuCmd {
    /// Install (or verify) QEMU versions into the cache ($CROSSMIG_CACHE or
    /// /var/cache/crossmig): 7.2 (bookworm debs), 10.0 (host, bookworm-backports),
    /// 11.1 (Debian sid root). No versions = all of them.
    Install {
        /// Versions to install: 7.2, 10.0, 11.1 (or "all").
        versions: Vec<String>,
    },
    /// List the installed versions (verified), with firmware folders and source packages.
    List,
    /// Make the device catalogue of an installed version for rust-dest's
    /// --device-catalogue (-dump-vmstate and a probed reference source), to
    /// stdout or into rust-dest/catalogues/ with --write.
    Catalogue {
        /// Version: 7.2, 10.0 or 11.1.
        version: String,
        /// Write rust-dest/catalogues/qemu-VERSION.devices (the checked-in copy).
        #[arg(long)]
        write: bool,
    },
}

/// Run a `crossmig qemu` subcommand.
pub async fn run_qemu_cmd(cmd: QemuCmd) -> Result<()> {
    match cmd {
        QemuCmd::Catalogue { version, write } => {
            check_series(&version)?;
            let bin = crate::scenario::resolve_qemu(Some(&version))?;
            let text = super::catalogue::generate(&bin).await?;
            if write {
                let (a, b, _) = bin.version()?;
                let p = super::catalogue::checked_in_path(a, b);
                std::fs::write(&p, text)?;
                eprintln!("wrote {}", p.display());
            } else {
                print!("{text}");
            }
            Ok(())
        }
        QemuCmd::Install { versions } => {
            let versions: Vec<String> =
                if versions.is_empty() || versions.iter().any(|v| v == "all") {
                    KNOWN_VERSIONS.iter().map(|s| s.to_string()).collect()
                } else {
                    versions
                };
            for v in &versions {
                check_series(v)?;
            }
            eprintln!("crossmig qemu install: cache {}", cache_dir().display());
            let mut failed = Vec::new();
            for v in &versions {
                let t = Instant::now();
                match install(v) {
                    Ok(i) => eprintln!(
                        "[qemu {v}] ok: QEMU {} ({:.1} s){}",
                        i.manifest.qemu_version,
                        t.elapsed().as_secs_f64(),
                        i.manifest
                            .source
                            .note
                            .as_ref()
                            .map(|n| format!(" — note: {n}"))
                            .unwrap_or_default()
                    ),
                    Err(e) => {
                        eprintln!("[qemu {v}] FAILED: {e:#}");
                        failed.push(v.clone());
                    }
                }
            }
            if !failed.is_empty() {
                bail!("installing QEMU {} failed", failed.join(", "));
            }
            Ok(())
        }
        QemuCmd::List => {
            print!("{}", list_table());
            Ok(())
        }
    }
}

/// The `crossmig qemu list` table.
pub fn list_table() -> String {
    let mut rows: Vec<[String; 5]> = vec![[
        "VERSION".into(),
        "QEMU".into(),
        "INSTALLED AT (UTC)".into(),
        "BINARY".into(),
        "STATUS".into(),
    ]];
    let mut details: Vec<Vec<String>> = vec![Vec::new()];
    for s in cached_series() {
        match status(&s) {
            Status::Complete(i) => {
                let m = &i.manifest;
                rows.push([
                    s.clone(),
                    m.qemu_version.clone(),
                    if m.installed_at > 0 { fmt_utc(m.installed_at) } else { "?".into() },
                    m.binary.display().to_string(),
                    if i.recorded {
                        "ok".into()
                    } else {
                        "ok (host, not recorded: `crossmig qemu install 10.0`)".into()
                    },
                ]);
                let mut d = Vec::new();
                let fw: Vec<String> = m.data_dirs.iter().map(|p| p.display().to_string()).collect();
                d.push(format!(
                    "firmware (-L): {}",
                    if fw.is_empty() { "(built-in paths)".into() } else { fw.join(" ") }
                ));
                if let Some(l) = &m.loader {
                    d.push(format!(
                        "loader: {} --library-path {}",
                        l.ld_so.display(),
                        l.library_path.display()
                    ));
                }
                let pk: Vec<String> =
                    m.source.packages.iter().map(|p| format!("{}={}", p.name, p.version)).collect();
                d.push(format!("source: {}: {}", m.source.kind, pk.join(", ")));
                if m.install_seconds > 0.0 {
                    d.push(format!("install took {:.1} s", m.install_seconds));
                }
                if let Some(n) = &m.source.note {
                    d.push(format!("note: {n}"));
                }
                details.push(d);
            }
            st => {
                // One line in the table, the full reason below it.
                let reason = st.reason().unwrap_or_default();
                let first = reason.lines().next().unwrap_or("").to_string();
                let short = if first.chars().count() > 100 {
                    format!("{}…", first.chars().take(100).collect::<String>())
                } else {
                    first
                };
                rows.push([s.clone(), "-".into(), "-".into(), "-".into(), short]);
                details.push(if reason.contains('\n') || reason.chars().count() > 100 {
                    reason.lines().map(|l| format!("| {l}")).collect()
                } else {
                    Vec::new()
                });
            }
        }
    }
    let mut w = [0usize; 4];
    for r in &rows {
        for (i, c) in r.iter().take(4).enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = format!("cache: {}\n", cache_dir().display());
    for (r, d) in rows.iter().zip(&details) {
        out += &format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}\n",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
        for l in d {
            out += &format!("    {l}\n");
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for a Unix time.
pub fn fmt_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc() {
        assert_eq!(fmt_utc(0), "1970-01-01 00:00:00");
        assert_eq!(fmt_utc(1_700_000_000), "2023-11-14 22:13:20");
    }
}
