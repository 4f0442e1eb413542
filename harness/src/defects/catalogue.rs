//! The defect catalogue: `harness/defects/source.toml` (mutating proxy) and
//! `harness/defects/dest.toml` (rust-dest's `seeded-defects` build), one
//! `[[defect]]` table per defect, parsed into [`Defect`] and checked once.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::mutation::{Mutation, UnknownMutation};

/// Where a defect is injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The defect proxy between a real QEMU source and the destination.
    Source,
    /// rust-dest built with `--features seeded-defects`, `CROSSMIG_DEFECT=<inject>`.
    Dest,
}

/// The migration a defect runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationKind {
    Precopy,
    Postcopy,
    PostcopyPreempt,
    PostcopyRecovery,
    Multifd,
}

impl MigrationKind {
    pub fn name(self) -> &'static str {
        match self {
            MigrationKind::Precopy => "precopy",
            MigrationKind::Postcopy => "postcopy",
            MigrationKind::PostcopyPreempt => "postcopy-preempt",
            MigrationKind::PostcopyRecovery => "postcopy-recovery",
            MigrationKind::Multifd => "multifd",
        }
    }
}

fn default_qemu() -> String {
    "10.0".into()
}

/// One catalogue entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defect {
    /// Unique, kebab-case.
    pub name: String,
    pub side: Side,
    /// The mutation (source) or the `CROSSMIG_DEFECT` value (dest).
    pub inject: String,
    /// The class of real QEMU migration bug it stands for.
    pub class: String,
    /// QEMU commit or bug report ("" when none is known).
    pub reference: String,
    pub migration: MigrationKind,
    /// Source QEMU version (default "10.0").
    #[serde(default = "default_qemu")]
    pub qemu: String,
    /// Part of the fast subset run by `cargo test`.
    #[serde(default)]
    pub fast: bool,
    /// Destination side only: instead of a live migration, play this stream
    /// scenario (`scenarios/<scenario>.toml`, its variant for `qemu`) through
    /// the synthetic source into the defect build and QEMU's destination
    /// (the oracle); `migration` then names the kind of stream it plays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<String>,
}

impl Defect {
    /// The source-side mutation (side = "source").
    pub fn mutation(&self) -> Result<Mutation, UnknownMutation> {
        self.inject.parse()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defect: Vec<Defect>,
}

/// A catalogue file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{path}: defect {name:?}: {what}")]
    Invalid { path: PathBuf, name: String, what: String },
    #[error("defect {0:?} is in the catalogue twice")]
    Duplicate(String),
}

/// The catalogue files: `<dir>/source.toml` and `<dir>/dest.toml` (each optional).
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("defects")
}

/// The stream scenarios folder (`scenarios/` of the workspace).
pub fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

/// Load one file and check every entry.
pub fn load_file(path: &Path) -> Result<Vec<Defect>, CatalogueError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| CatalogueError::Read { path: path.into(), source })?;
    let f: File = toml::from_str(&text)
        .map_err(|source| CatalogueError::Parse { path: path.into(), source })?;
    for d in &f.defect {
        let bad = |what: String| CatalogueError::Invalid {
            path: path.into(),
            name: d.name.clone(),
            what,
        };
        if d.name.is_empty()
            || !d.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(bad("name must be kebab-case".into()));
        }
        if d.side == Side::Source {
            d.mutation().map_err(|e| bad(e.to_string()))?;
        }
        if let Some(sc) = &d.scenario {
            if d.side != Side::Dest {
                return Err(bad(
                    "a scenario runs a destination-side defect only (side = \"dest\")".into(),
                ));
            }
            let f = scenarios_dir().join(format!("{sc}.toml"));
            if !sc.starts_with("stream-") || !f.is_file() {
                return Err(bad(format!("scenario {sc:?}: no stream scenario {}", f.display())));
            }
        }
        if d.inject.is_empty() || d.class.is_empty() {
            return Err(bad("inject and class must not be empty".into()));
        }
    }
    Ok(f.defect)
}

/// Load every catalogue file of `dir` that exists (source.toml, dest.toml).
pub fn load_dir(dir: &Path) -> Result<Vec<Defect>, CatalogueError> {
    let mut all: Vec<Defect> = Vec::new();
    for f in ["source.toml", "dest.toml"] {
        let p = dir.join(f);
        if p.exists() {
            for d in load_file(&p)? {
                if all.iter().any(|x| x.name == d.name) {
                    return Err(CatalogueError::Duplicate(d.name));
                }
                all.push(d);
            }
        }
    }
    Ok(all)
}
