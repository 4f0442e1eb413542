//! The `save-restore` step: the source saves to a file (`migrate
//! file:PATH`, with whatever capabilities the scenario set, e.g.
//! `mapped-ram` and `multifd`), then the destination loads it
//! (`migrate-incoming file:PATH`). QEMU's destination needs the same
//! capabilities set before `migrate-incoming` (`migration/file.c`,
//! `migration/savevm.c` configuration check); the scenario's
//! `[capabilities]` set them on both sides.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::drive::session::{Migration, Side};
use crate::qmp::{MigrationStatus, StatusWait};
use crate::vm::procs::{unique_name, PathGuard};

pub(super) async fn save_restore(
    m: &mut Migration,
    files: &mut Vec<PathGuard>,
    dir: Option<&str>,
    limit: Duration,
) -> Result<String> {
    let dir = dir.map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("{}.mig", unique_name("crossmig-save")));
    let guard = PathGuard::new(&path);
    let uri = format!("file:{}", path.display());
    let t = Instant::now();
    m.start(&uri).await?;
    let done = StatusWait::until([MigrationStatus::Completed]);
    m.wait_until(Side::Source, Some(&done), None, limit).await.context("source saving to file")?;
    let saved = t.elapsed();
    let meta = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?;
    files.push(guard);
    m.incoming(&uri).await?;
    Ok(format!(
        "saved to {} ({} bytes apparent, {} bytes allocated) in {} ms; migrate-incoming sent",
        path.display(),
        meta.len(),
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512,
        saved.as_millis()
    ))
}
