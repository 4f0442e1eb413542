//! The scenario engine: scenario files (see `scenarios/README.md`) expanded
//! into variants and run against real QEMU.
//!
//! - `kind = "migration"`: a real QEMU source with a test guest, a
//!   destination (rust-dest or QEMU), and a list of steps (migrate, waits,
//!   postcopy switch, stop/cont, parameters, cancel, faults through the
//!   harness's proxy, pause/recover, expectations, memory checks).
//! - `kind = "stream"`: a scripted record sequence from the synthetic source,
//!   played into a real QEMU destination (the oracle) *and* rust-dest; both
//!   verdicts must match the expectation and each other.
//!
//! Parsing goes one way: [`file`] (text, axes, variants) → [`spec`] (the
//! typed spec, parsed once) → [`steps`] / [`records`]. Running: [`run`] →
//! [`migration`] (→ [`exec`]) or [`stream`].

pub mod cases;
pub mod exec;
pub mod expect;
pub mod file;
pub mod known_bugs;
pub mod migration;
pub mod outcome;
pub mod qemu;
pub mod records;
pub mod run;
pub mod runner;
pub mod spec;
#[cfg(test)]
mod spec_tests;
pub mod steps;
pub mod stream;
pub mod subst;

use std::path::{Path, PathBuf};

pub use file::{find_files, load, FileError, Variant};
pub use outcome::{Outcome, StepResult};
pub use qemu::{common_machine, machine_lacks, missing_prerequisite, resolve_qemu, source_qemu};
pub use run::run_variant;
pub use spec::{Kind, Spec, DEFAULT_TIMEOUT};

/// Load every variant of every file; load errors are returned per file.
pub fn load_all(files: &[PathBuf]) -> Vec<Result<Vec<Variant>, FileError>> {
    files.iter().map(|f| load(Path::new(f))).collect()
}
