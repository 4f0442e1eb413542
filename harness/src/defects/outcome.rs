//! What running a catalogue entry yields ([`RunOutcome`] per destination,
//! [`DefectResult`] per entry), how the catalogue is run ([`RunConfig`]),
//! and where the seeded-defects rust-dest comes from
//! ([`defect_rust_dest`]); shared by the live runner (`runner.rs`) and the
//! stream-scenario runner (`stream.rs`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::catalogue::Defect;

/// Name of the verdict when a migration does not complete.
pub const NOT_COMPLETED: &str = "migration completes";

/// What one migration with the defect showed.
#[derive(Clone, Debug, Serialize)]
pub struct RunOutcome {
    /// The migration completed on both sides.
    pub completed: bool,
    /// Names of the checks that failed (or [`NOT_COMPLETED`]).
    pub failed: Vec<String>,
    /// The guest invariant held on the destination (None: not completed,
    /// or no guest).
    pub invariant_ok: Option<bool>,
    /// A guest ran (false: a stream scenario, whose memory only the
    /// script's model judges).
    pub guest: bool,
    /// What the mutation changed (source side); empty = not injected.
    pub applied: Vec<String>,
    /// Every failing check's detail, or the error.
    pub detail: String,
    pub ms: u64,
}

impl RunOutcome {
    /// Caught by crossmig: any check failed, or the migration did not complete.
    pub fn caught(&self) -> bool {
        !self.failed.is_empty()
    }
    /// Caught by the guest invariant alone.
    pub fn invariant_caught(&self) -> bool {
        !self.completed || self.invariant_ok == Some(false)
    }
}

/// One catalogue entry's result.
#[derive(Clone, Debug, Serialize)]
pub struct DefectResult {
    pub defect: Defect,
    /// Into rust-dest (both sides).
    pub rust: Option<RunOutcome>,
    /// Into QEMU's destination (source side only).
    pub qemu: Option<RunOutcome>,
    /// The defect could not be run (not injected, build failed, ...).
    pub error: Option<String>,
}

impl DefectResult {
    /// crossmig caught it everywhere it ran, and it was injected.
    pub fn crossmig_caught(&self) -> bool {
        self.error.is_none()
            && self.rust.as_ref().is_some_and(|r| r.caught())
            && self.qemu.as_ref().is_none_or(|r| r.caught())
    }
}

/// How to run the catalogue.
#[derive(Clone, Debug, Default)]
pub struct RunConfig {
    /// The seeded-defects rust-dest (default: built on demand, see [`defect_rust_dest`]).
    pub defect_rust_dest: Option<PathBuf>,
    /// Migrations run at once by [`run_all`] (0 and 1: one at a time).
    pub jobs: usize,
}

/// The default `--jobs`: the available cores, at most 4 (each migration
/// runs a source and a destination process).
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4)
}

/// The seeded-defects rust-dest: `$CROSSMIG_DEFECT_RUST_DEST`, else
/// `target/defects/debug/rust-dest`, built when missing with
/// `cargo build -p rust-dest --features seeded-defects --target-dir target/defects`.
pub fn defect_rust_dest() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CROSSMIG_DEFECT_RUST_DEST").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?;
    let bin = root.join("target/defects/debug/rust-dest");
    if !bin.exists() {
        let out = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
            .current_dir(root)
            .args(["build", "-p", "rust-dest", "--features", "seeded-defects"])
            .args(["--target-dir", "target/defects"])
            .output()
            .context("running cargo build for the seeded-defects rust-dest")?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last: Vec<&str> = err.lines().rev().take(6).collect();
            bail!(
                "building rust-dest with --features seeded-defects failed: {}",
                last.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
    }
    Ok(bin)
}

/// The seeded-defects rust-dest a destination-side defect runs
/// (`--defect-rust-dest`/`$CROSSMIG_DEFECT_RUST_DEST`, else built on demand).
pub fn seeded_binary(cfg: &RunConfig) -> Result<std::path::PathBuf> {
    let bin = match &cfg.defect_rust_dest {
        Some(p) => p.clone(),
        None => defect_rust_dest()?,
    };
    if !bin.exists() {
        bail!("seeded-defects rust-dest {} does not exist", bin.display());
    }
    Ok(bin)
}
