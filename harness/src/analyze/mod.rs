//! `crossmig analyze`: read a migration stream at rest and say what is in
//! it. Inputs are a file written by `migrate file:` or `exec:cat > FILE`, a
//! mapped-ram file, or the harness's recordings of a live migration (every
//! connection: main, multifd, preempt, recovery, and the return path when
//! recorded), given as files or as the directory holding them.
//!
//! One pass over each channel with the `wire` decoders fills an
//! [`Analysis`]: the header and configuration, every section and command in
//! stream order with byte offsets, the postcopy timeline, RAM per block and
//! the device sections (decoded field by field when a vmdesc describes
//! them). A decode error stops that channel and is kept as a [`Damage`] with
//! its offset; everything decoded before it stays. Front ends: [`text`]
//! (the summary), `--json`, [`script`] (the output of QEMU's
//! `scripts/analyze-migration.py`), [`extract`] (RAMBlocks as files).

pub mod channels;
pub mod cli;
pub mod extract;
pub mod input;
mod mainch;
mod mapped_ram;
pub mod pyjson;
mod ram;
pub mod script;
pub mod text;
pub mod vmstate;

use std::path::PathBuf;

use serde::Serialize;

use pyjson::J;
pub use ram::BlockStats;

/// Which connection of a migration a recorded file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Starts with the stream header.
    Main,
    /// A postcopy recovery main channel (starts with a command).
    Recovery,
    /// A multifd channel (starts with the multifd magic).
    Multifd,
    /// Bare RAM records: the postcopy-preempt channel.
    Preempt,
    /// Destination → source bytes of a recorded connection.
    ReturnPath,
}

/// One input file.
#[derive(Clone, Debug, Serialize)]
pub struct Input {
    pub path: PathBuf,
    pub role: Role,
    pub bytes: u64,
}

/// Where decoding of a channel stopped, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Damage {
    pub path: PathBuf,
    pub offset: u64,
    /// What was expected there (or what was wrong).
    pub expected: String,
}

impl Damage {
    pub fn from_decode(path: &std::path::Path, e: &wire::DecodeError) -> Damage {
        let (offset, expected) = match e {
            wire::DecodeError::Incomplete { at, needed } => (
                *at,
                format!(
                    "the data ends inside the record starting here ({needed} more byte(s) needed)"
                ),
            ),
            wire::DecodeError::Invalid { offset, what } => (*offset, what.clone()),
        };
        Damage { path: path.to_path_buf(), offset, expected }
    }
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: at byte offset {}: {}", self.path.display(), self.offset, self.expected)
    }
}

/// The stream header and its configuration section.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HeaderInfo {
    pub version: u32,
    pub machine: Option<String>,
    pub target_page_bits: Option<u32>,
    pub capabilities: Option<Vec<String>>,
    pub uuid: Option<String>,
}

/// RAM records inside one RAM section (START, PART or END) up to its EOS.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RamChunk {
    pub mem_size_blocks: usize,
    pub pages: u64,
    pub zero_pages: u64,
    pub xbzrle_pages: u64,
    pub multifd_flushes: u64,
}

/// One top-level record of a main channel.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum EventKind {
    /// A new channel continues the stream (postcopy recovery); offsets
    /// after it count from that file's start.
    Channel {
        path: PathBuf,
    },
    Header {
        version: u32,
    },
    Section {
        kind: &'static str,
        section_id: u32,
        name: String,
        instance_id: Option<u32>,
        version_id: Option<u32>,
        ram: Option<RamChunk>,
    },
    /// A device section: index into [`Analysis::devices`].
    Device {
        index: usize,
    },
    Command {
        name: String,
        detail: Option<String>,
    },
    Package {
        len: u32,
        events: Vec<Event>,
    },
    Eof,
    Vmdesc {
        len: u64,
    },
}

/// A record with its byte range in its channel.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub offset: u64,
    pub len: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// A device section and its data.
#[derive(Clone, Debug, Serialize)]
pub struct Device {
    pub kind: &'static str,
    pub section_id: u32,
    pub name: String,
    pub instance_id: Option<u32>,
    pub version_id: Option<u32>,
    /// Offset of the section header in its channel.
    pub offset: u64,
    /// Bytes of device data (between header and footer).
    pub size: u64,
    pub in_package: bool,
    /// The fields, decoded with the vmdesc.
    pub fields: Option<J>,
    /// Why the vmdesc did not decode it (the section was then delimited by
    /// its footer).
    pub decode_error: Option<String>,
    #[serde(skip)]
    pub data: Vec<u8>,
}

/// A discard command at switchover.
#[derive(Clone, Debug, Serialize)]
pub struct DiscardInfo {
    pub offset: u64,
    pub block: String,
    pub ranges: usize,
    pub pages: u64,
}

/// Page requests read from a recorded return path.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Requests {
    pub messages: u64,
    pub pages: u64,
    /// Requested pages the recordings show sent once postcopy listened.
    pub answered_pages: u64,
}

/// The postcopy timeline of the main channel (offsets in it).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Postcopy {
    pub advise: Option<u64>,
    pub discards: Vec<DiscardInfo>,
    pub listen: Option<u64>,
    /// Offset and length of the PACKAGED blob.
    pub package: Option<(u64, u32)>,
    pub run: Option<u64>,
    pub resumes: Vec<u64>,
    /// Pages (normal + zero) on the main channel after LISTEN.
    pub main_pages_after_listen: u64,
    pub preempt_pages: u64,
    pub requests: Option<Requests>,
}

/// One multifd channel.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MultifdChannel {
    pub path: PathBuf,
    pub id: u8,
    pub packets: u64,
    pub syncs: u64,
    pub pages: u64,
    pub zero_pages: u64,
    pub compression: Option<String>,
}

/// What the return path carried.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReturnPath {
    pub path: PathBuf,
    pub messages: u64,
    pub pongs: u64,
    pub shut: Option<u32>,
    pub recv_bitmaps: u64,
    pub resume_acks: u64,
    pub switchover_acks: u64,
}

/// A mapped-ram block: its header and bitmap.
#[derive(Clone, Debug, Serialize)]
pub struct MappedRamBlock {
    pub name: String,
    pub used_length: u64,
    pub header_offset: u64,
    pub version: u32,
    pub page_size: u64,
    pub bitmap_offset: u64,
    pub pages_offset: u64,
    pub pages_present: u64,
}

/// Everything read from the inputs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Analysis {
    pub inputs: Vec<Input>,
    pub header: Option<HeaderInfo>,
    pub events: Vec<Event>,
    pub blocks: Vec<BlockStats>,
    pub devices: Vec<Device>,
    pub postcopy: Option<Postcopy>,
    pub multifd: Vec<MultifdChannel>,
    pub return_path: Vec<ReturnPath>,
    pub mapped_ram: Vec<MappedRamBlock>,
    /// Length of the vmdesc JSON, when the stream carries one.
    pub vmdesc_len: Option<u64>,
    /// Where decoding stopped, per damaged channel.
    pub damage: Vec<Damage>,
    #[serde(skip)]
    pub vmdesc: Option<J>,
}

/// Errors that stop the analysis before anything is decoded.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no input: give a stream file, recorded channel files, or a recording directory")]
    NoInput,
    #[error("{0}: no recorded channel in this directory (no non-empty *.bin file)")]
    EmptyDir(PathBuf),
    #[error("none of the inputs is a main channel (a stream starting with \"QEVM\")")]
    NoMainChannel,
    #[error("{path}: the vmdesc given with --vmdesc: {what}")]
    Vmdesc { path: PathBuf, what: String },
}

/// Analyse the given files or recording directories. `vmdesc` is an
/// optional stream whose vmdesc describes the devices (for streams that
/// carry none, e.g. postcopy).
pub fn analyze(
    paths: &[PathBuf],
    vmdesc: Option<&std::path::Path>,
) -> Result<Analysis, AnalyzeError> {
    let files = input::collect(paths)?;
    let mut a = Analysis::default();
    if let Some(p) = vmdesc {
        let b = input::read(p)?;
        let (_, raw) = mainch::vmdesc_at_end(&b).ok_or_else(|| AnalyzeError::Vmdesc {
            path: p.to_path_buf(),
            what: "no vmdesc record (EOF, 0x06, length, JSON) at the end of the file".into(),
        })?;
        a.vmdesc =
            Some(pyjson::parse(raw).map_err(|e| AnalyzeError::Vmdesc {
                path: p.to_path_buf(),
                what: e.to_string(),
            })?);
    }
    let mut ram = ram::Ram::default();
    let mut main = mainch::MainState::default();
    let mut any_main = false;
    for f in files.iter().filter(|f| matches!(f.role, Role::Main | Role::Recovery)) {
        let bytes = input::read(&f.path)?;
        any_main = true;
        mainch::walk(&mut a, &mut ram, &mut main, &f.path, &bytes, f.role == Role::Recovery);
    }
    if !any_main {
        return Err(AnalyzeError::NoMainChannel);
    }
    for f in &files {
        match f.role {
            Role::Multifd => {
                let b = input::read(&f.path)?;
                channels::multifd(&mut a, &mut ram, &f.path, &b);
            }
            Role::Preempt => {
                let b = input::read(&f.path)?;
                channels::preempt(&mut a, &mut ram, &f.path, &b);
            }
            Role::ReturnPath => {
                let b = input::read(&f.path)?;
                channels::return_path(&mut a, &mut ram, &f.path, &b);
            }
            Role::Main | Role::Recovery => {}
        }
    }
    a.inputs = files;
    ram.finish(&mut a);
    Ok(a)
}
