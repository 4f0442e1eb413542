//! `crossmig analyze` arguments and front end.

use std::path::PathBuf;

use std::io::Write as _;

use anyhow::Result;
use clap::{Args, ValueEnum};

/// Output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The readable summary.
    #[default]
    Summary,
    /// Exactly what QEMU's scripts/analyze-migration.py prints (`-d state`, or `-d desc` with --desc).
    AnalyzeMigration,
}

#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    /// Stream files (migrate file:, exec:cat > FILE, mapped-ram), recorded channel files, or recording directories.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Summary)]
    pub format: Format,
    /// With --format analyze-migration: print the vmdesc (the script's `-d desc`).
    #[arg(long)]
    pub desc: bool,
    /// Print the whole analysis as JSON (decoded device fields included).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Summary: list every decoded device field.
    #[arg(long)]
    pub fields: bool,
    /// Write each RAMBlock as a file into DIR (with desc.json and state.json), like the script's -x.
    #[arg(long, value_name = "DIR")]
    pub extract: Option<PathBuf>,
    /// Describe devices with the vmdesc of this stream file (for streams without one, e.g. postcopy).
    #[arg(long, value_name = "FILE")]
    pub vmdesc: Option<PathBuf>,
}

/// Run `crossmig analyze`: print, then report damage on stderr. Ok(false)
/// when a channel is damaged (everything decoded before it is printed).
pub fn run(a: &AnalyzeArgs) -> Result<bool> {
    let an = super::analyze(&a.inputs, a.vmdesc.as_deref())?;
    let out = if a.json {
        format!("{}\n", serde_json::to_string_pretty(&an)?)
    } else {
        match a.format {
            Format::Summary => super::text::summary(&an, a.fields),
            Format::AnalyzeMigration if a.desc => match super::script::desc_text(&an) {
                Some(d) => d,
                None => anyhow::bail!("the stream carries no vmdesc (give one with --vmdesc FILE)"),
            },
            Format::AnalyzeMigration => super::script::state_text(&an),
        }
    };
    // A closed pipe (`| head`) ends the output quietly.
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    if let Some(dir) = &a.extract {
        for f in super::extract::extract(&an, dir)? {
            eprintln!("{}", f.display());
        }
    }
    for d in &an.damage {
        eprintln!("crossmig analyze: damaged stream: {d}");
    }
    Ok(an.damage.is_empty())
}
