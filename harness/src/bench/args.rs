//! `crossmig bench` command line: the parts ([`Part`]), the clap arguments
//! ([`BenchArgs`]) and the resolved configuration ([`BenchConfig`]).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Serialize;
use wire::units::parse_size;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Precopy,
    Postcopy,
    Ingest,
    Overhead,
    /// Multifd precopy (4 channels, compression none and zstd).
    Multifd,
}

impl Part {
    pub const ALL: [Part; 5] =
        [Part::Precopy, Part::Postcopy, Part::Ingest, Part::Overhead, Part::Multifd];
    pub fn name(self) -> &'static str {
        match self {
            Part::Precopy => "precopy",
            Part::Postcopy => "postcopy",
            Part::Ingest => "ingest",
            Part::Overhead => "overhead",
            Part::Multifd => "multifd",
        }
    }
}

/// `crossmig bench`: rust-dest against QEMU's own destination, side by side
/// (A B A B, medians, min–max and rust-dest/QEMU ratios).
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Short run: 1 GiB guest instead of 2 GiB, postcopy with half the
    /// guest RAM; still 3 repetitions per side (medians need them).
    #[arg(long)]
    pub quick: bool,
    /// Repetitions per destination (default 3; at least 3 gives a median).
    #[arg(long)]
    pub reps: Option<u32>,
    /// Guest RAM for precopy, multifd and ingest (default 2G, or 1G with --quick).
    #[arg(long, value_parser = parse_size)]
    pub mem: Option<u64>,
    /// Guest RAM for postcopy (default: --mem, or half of it with --quick).
    #[arg(long, value_parser = parse_size)]
    pub postcopy_mem: Option<u64>,
    /// Output directory (bench.json, bench.html).
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// QEMU for the sources and the QEMU destination: a provisioned version
    /// (e.g. 11.1, whose destination reports its own postcopy latency) or a
    /// binary path (default: $CROSSMIG_QEMU or qemu-system-x86_64 on PATH).
    #[arg(long)]
    pub qemu: Option<String>,
    /// rust-dest binary (default: $CROSSMIG_RUST_DEST, else next to this
    /// executable). Use a release build for meaningful numbers.
    #[arg(long)]
    pub rust_dest: Option<PathBuf>,
    /// Run only these parts (repeatable or comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// Machine type for every VM.
    #[arg(long, default_value = "q35")]
    pub machine: String,
    /// Size of the buffer copied for the memcpy reference rate.
    #[arg(long, value_parser = parse_size, default_value = "1G")]
    pub memcpy_size: u64,
    /// Keep every process log (and QEMU/rust-dest traces) in OUT/logs.
    #[arg(long)]
    pub keep_logs: bool,
    /// Postcopy: every combination of access pattern (sweep, random),
    /// postcopy-preempt (off, on) and postcopy bandwidth (uncapped, capped
    /// at 64 MiB/s), plus random order on 2 MiB huge pages (hugetlbfs on
    /// both sides; skipped where the machine has none) with and without
    /// preempt, instead of the two patterns uncapped without preempt.
    #[arg(long)]
    pub postcopy_matrix: bool,
}

#[derive(clap::Parser)]
#[command(name = "crossmig-bench")]
struct BenchCli {
    #[command(flatten)]
    args: BenchArgs,
}

/// Parse bench arguments (without the program name), e.g. for tests.
pub fn parse_args<I, T>(args: I) -> std::result::Result<BenchArgs, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    use clap::Parser;
    let mut v: Vec<OsString> = vec!["crossmig-bench".into()];
    v.extend(args.into_iter().map(Into::into));
    BenchCli::try_parse_from(v).map(|c| c.args)
}

/// Resolved configuration.
#[derive(Clone, Debug, Serialize)]
pub struct BenchConfig {
    pub quick: bool,
    pub reps: u32,
    pub mem_bytes: u64,
    pub postcopy_mem_bytes: u64,
    pub parts: Vec<Part>,
    pub machine: String,
    pub memcpy_bytes: u64,
    pub out: PathBuf,
    pub postcopy_matrix: bool,
}

impl BenchConfig {
    pub fn from_args(a: &BenchArgs) -> Result<BenchConfig> {
        let mem = a.mem.unwrap_or(if a.quick { GIB } else { 2 * GIB });
        if mem < 32 * MIB || !mem.is_multiple_of(MIB) {
            bail!("--mem must be a whole number of MiB, at least 32M");
        }
        let pc = a.postcopy_mem.unwrap_or(if a.quick { (mem / 2).max(64 * MIB) } else { mem });
        if pc < 32 * MIB || !pc.is_multiple_of(MIB) {
            bail!("--postcopy-mem must be a whole number of MiB, at least 32M");
        }
        let mut parts = if a.only.is_empty() { Part::ALL.to_vec() } else { a.only.clone() };
        parts.sort();
        parts.dedup();
        let reps = a.reps.unwrap_or(3);
        if reps == 0 {
            bail!("--reps must be at least 1");
        }
        Ok(BenchConfig {
            quick: a.quick,
            reps,
            mem_bytes: mem,
            postcopy_mem_bytes: pc,
            parts,
            machine: a.machine.clone(),
            memcpy_bytes: a.memcpy_size.max(MIB),
            out: a.out.clone(),
            postcopy_matrix: a.postcopy_matrix,
        })
    }
    pub fn has(&self, p: Part) -> bool {
        self.parts.contains(&p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let a = parse_args([
            "--quick",
            "--only",
            "precopy,ingest",
            "--only",
            "overhead",
            "--mem",
            "256M",
        ])
        .unwrap();
        let c = BenchConfig::from_args(&a).unwrap();
        assert_eq!(c.parts, vec![Part::Precopy, Part::Ingest, Part::Overhead]);
        assert_eq!((c.reps, c.mem_bytes, c.postcopy_mem_bytes), (3, 256 << 20, 128 << 20));
        assert!(!c.postcopy_matrix);
        let c = BenchConfig::from_args(&parse_args(Vec::<String>::new()).unwrap()).unwrap();
        assert_eq!((c.reps, c.mem_bytes, c.parts.len()), (3, 2 << 30, 5));
        let c = BenchConfig::from_args(&parse_args(["--only", "multifd"]).unwrap()).unwrap();
        assert_eq!(c.parts, vec![Part::Multifd]);
        assert_eq!(c.out, PathBuf::from("bench-out"));
    }
}
