//! How a migration travels besides `tcp:`: over a unix socket (live, see
//! [`Migration::unix`]), or saved by the source and restored into the
//! destination (`file:PATH[,offset=N]`, `fd:NAME` passed with `getfd`,
//! `file:/dev/fdset/N` passed with `add-fd`, `exec:`). A save completes on
//! the source first; the destination then restores the same bytes, and the
//! usual checks (statuses, page-by-page RAM) follow.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::drive::session::{Migration, Side};
use crate::qmp::{MigrationStatus, StatusWait};
use crate::vm::procs::{unique_name, PathGuard};
use crate::vm::qemu::QemuVm;

/// How long a source may take to save its state.
pub const SAVE_TIMEOUT: Duration = Duration::from_secs(120);

/// One transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Unix,
    /// `file:PATH[,offset=N]`.
    File,
    /// `fd:NAME`: a pipe's end passed with `getfd`, the harness copying
    /// between the pipe and the file (QEMU 11 refuses `fd:` of a file).
    Fd,
    /// `file:/dev/fdset/N[,offset=N]`, the descriptor passed with `add-fd`.
    Fdset,
    /// Source `exec:cat > PATH`, destination `exec:cat PATH`.
    Exec,
}

impl Transport {
    pub const NAMES: [&'static str; 6] = ["tcp", "unix", "file", "fd", "fdset", "exec"];

    pub fn parse(s: &str) -> Result<Transport, String> {
        Ok(match s {
            "tcp" => Transport::Tcp,
            "unix" => Transport::Unix,
            "file" => Transport::File,
            "fd" => Transport::Fd,
            "fdset" => Transport::Fdset,
            "exec" => Transport::Exec,
            _ => {
                return Err(format!(
                    "unknown transport {s:?}, expected one of {}",
                    Transport::NAMES.join(", ")
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        Transport::NAMES[self as usize]
    }

    /// Through a saved stream (not live).
    pub fn saves(self) -> bool {
        !matches!(self, Transport::Tcp | Transport::Unix)
    }

    /// Takes QEMU's `,offset=N`.
    fn has_offset(self) -> bool {
        matches!(self, Transport::File | Transport::Fdset)
    }
}

/// A save/restore plan (`migrate` step keys `transport`, `save`, `offset`,
/// `channels`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaveRestore {
    /// How the source writes the stream.
    pub save: Transport,
    /// How the destination reads it.
    pub restore: Transport,
    /// Where the stream starts in the file.
    pub offset: u64,
    /// Give the destination QMP `channels` instead of `uri`.
    pub channels: bool,
}

impl SaveRestore {
    /// Check the combination (validation, before anything runs).
    pub fn new(
        save: Transport,
        restore: Transport,
        offset: u64,
        channels: bool,
    ) -> Result<Self, String> {
        if !save.saves() || !restore.saves() {
            return Err(format!(
                "`save` {:?} and `transport` {:?} must both be file, fd, fdset or exec",
                save.name(),
                restore.name()
            ));
        }
        if offset != 0 && !(save.has_offset() && restore.has_offset()) {
            return Err("`offset` needs file or fdset on both sides".into());
        }
        if channels && !matches!(restore, Transport::File | Transport::Exec | Transport::Fd) {
            return Err("`channels` is written for file, fd and exec".into());
        }
        Ok(SaveRestore { save, restore, offset, channels })
    }

    fn offset_suffix(&self) -> String {
        if self.offset != 0 {
            format!(",offset={}", self.offset)
        } else {
            String::new()
        }
    }
}

/// Save the source's state to a new file, wait until the source completed,
/// then restore it into the destination. Returns a detail line.
pub async fn save_restore(m: &mut Migration, p: &SaveRestore) -> Result<String> {
    let path = std::env::temp_dir().join(format!("{}.mig", unique_name("save")));
    m.guards.push(PathGuard::new(&path));
    let (uri, copier) = save(&m.src, p, &path).await?;
    m.reset_clock();
    m.execute(Side::Source, "migrate", json!({ "uri": uri })).await?;
    let done =
        StatusWait::until([MigrationStatus::Completed]).failing_on([MigrationStatus::Failed]);
    m.wait_status(Side::Source, &done, SAVE_TIMEOUT).await.context("source saving")?;
    if let Some(c) = copier {
        // The source closes its end when it completes: the copy ends.
        tokio::time::timeout(SAVE_TIMEOUT, c)
            .await
            .context("copying the saved stream out of the pipe: timed out")??
            .context("copying the saved stream out of the pipe")?;
    }
    let len = std::fs::metadata(&path).map(|md| md.len()).unwrap_or(0);
    let args = restore(&m.dst, p, &path).await?;
    m.dst
        .execute("migrate-incoming", args.clone())
        .await
        .context("destination migrate-incoming")?;
    Ok(format!("source → {uri} ({len} bytes); destination ← {args}"))
}

/// A blocking copy between a pipe and the saved file.
type Copier = tokio::task::JoinHandle<std::io::Result<u64>>;

fn copy_in_background(
    mut from: impl Read + Send + 'static,
    mut to: impl Write + Send + 'static,
) -> Copier {
    tokio::task::spawn_blocking(move || std::io::copy(&mut from, &mut to))
}

/// Prepare the source's side (files, descriptors); returns its URI and,
/// for a pipe, the copy into the file.
async fn save(src: &QemuVm, p: &SaveRestore, path: &Path) -> Result<(String, Option<Copier>)> {
    let shown = path.display();
    if p.save == Transport::Fd {
        let (r, w) = nix::unistd::pipe()?;
        let f = std::fs::File::create(path)?;
        pass_fd(src, "getfd", json!({ "fdname": "crossmig-save" }), &w).await?;
        drop(w);
        let copier = copy_in_background(std::fs::File::from(r), f);
        return Ok(("fd:crossmig-save".into(), Some(copier)));
    }
    Ok((
        match p.save {
            Transport::File => format!("file:{shown}{}", p.offset_suffix()),
            Transport::Exec => format!("exec:cat > {shown}"),
            Transport::Fdset => {
                let f = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
                let info = pass_fd(src, "add-fd", json!({ "opaque": "crossmig save" }), &f).await?;
                format!("file:/dev/fdset/{}{}", fdset_id(&info)?, p.offset_suffix())
            }
            Transport::Fd | Transport::Tcp | Transport::Unix => {
                bail!("{} does not save to a file", p.save.name())
            }
        },
        None,
    ))
}

/// Prepare the destination's side; returns the `migrate-incoming` arguments.
async fn restore(dst: &QemuVm, p: &SaveRestore, path: &Path) -> Result<Value> {
    let shown = path.display().to_string();
    let (uri, addr) = match p.restore {
        Transport::File => (
            format!("file:{shown}{}", p.offset_suffix()),
            json!({ "transport": "file", "filename": shown, "offset": p.offset }),
        ),
        Transport::Exec => {
            let cmd = format!("cat {shown}");
            (format!("exec:{cmd}"), json!({ "transport": "exec", "args": ["/bin/sh", "-c", cmd] }))
        }
        Transport::Fd => {
            let (r, w) = nix::unistd::pipe()?;
            pass_fd(dst, "getfd", json!({ "fdname": "crossmig-restore" }), &r).await?;
            drop(r);
            // Ends on its own: at the file's end, or when the destination
            // closes the pipe.
            drop(copy_in_background(std::fs::File::open(path)?, std::fs::File::from(w)));
            (
                "fd:crossmig-restore".to_string(),
                json!({ "transport": "socket", "type": "fd", "str": "crossmig-restore" }),
            )
        }
        Transport::Fdset => {
            let f = std::fs::File::open(path)?;
            let info = pass_fd(dst, "add-fd", json!({ "opaque": "crossmig restore" }), &f).await?;
            let uri = format!("file:/dev/fdset/{}{}", fdset_id(&info)?, p.offset_suffix());
            (uri, Value::Null)
        }
        Transport::Tcp | Transport::Unix => bail!("{} does not restore", p.restore.name()),
    };
    Ok(if p.channels {
        json!({ "channels": [{ "channel-type": "main", "addr": addr }] })
    } else {
        json!({ "uri": uri })
    })
}

/// Run `cmd` with `f`'s descriptor attached.
async fn pass_fd(vm: &QemuVm, cmd: &str, args: Value, f: &impl AsFd) -> Result<Value> {
    vm.qmp
        .execute_with_fd(cmd, args, f.as_fd())
        .await
        .with_context(|| format!("{cmd} (SCM_RIGHTS)"))
}

fn fdset_id(info: &Value) -> Result<i64> {
    info["fdset-id"].as_i64().with_context(|| format!("add-fd returned no fdset-id: {info}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations() {
        use Transport::*;
        assert!(SaveRestore::new(File, Fd, 0, false).is_ok());
        assert!(SaveRestore::new(Fdset, File, 4096, true).is_ok());
        assert!(SaveRestore::new(Exec, File, 4096, false).is_err());
        assert!(SaveRestore::new(Tcp, File, 0, false).is_err());
        assert!(SaveRestore::new(File, Fdset, 0, true).is_err());
        assert_eq!(Transport::parse("fdset"), Ok(Fdset));
        assert!(Transport::parse("rdma").unwrap_err().contains("expected one of tcp, unix"));
        assert_eq!(Exec.name(), "exec");
    }
}
