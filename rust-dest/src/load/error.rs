//! [`LoadError`]: why loading an incoming stream stopped. Every variant
//! keeps the byte offset where it applies and its cause; the rendered text is
//! what `query-migrate` reports as `error-desc`.

use std::io;

use super::mapped_ram::error::MappedRamError;
use super::multifd::SyncError;
use crate::catalogue::DeviceError;
use crate::globalstate::GlobalStateError;
use crate::postcopy::{PcState, PlaceError, RuleError, StartError};
use crate::ram::RamError;
use wire::DecodeError;

/// Why loading stopped.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The source closed the channel inside a record.
    #[error("stream truncated: connection closed by the source inside the record at byte offset {at} ({needed} more byte(s) needed)")]
    Truncated { at: u64, needed: usize },
    /// The source closed the channel right after a complete stream header.
    #[error("stream truncated: connection closed by the source right after the stream header, at byte offset {at} (no section or command followed)")]
    TruncatedAfterHeader { at: u64 },
    /// The source closed the channel inside the precopy device state.
    #[error("stream truncated: connection closed by the source at byte offset {at} while reading device state (started at byte offset {start}), before its end (EOF)")]
    TruncatedDeviceState { at: u64, start: u64 },
    /// The main channel closed inside a record after the connection of
    /// multifd channel `id` was reset (`at`: where its last applied packet
    /// ended): the reset made the source give up.
    #[error("multifd channel {id}: connection reset after byte offset {at}; then {main}")]
    ChannelReset { id: u8, at: u64, main: Box<LoadError> },
    /// The main channel closed between records while postcopy places pages.
    #[error("main channel closed by the source during postcopy at byte offset {at} (postcopy state {state})")]
    ClosedDuringPostcopy { at: u64, state: PcState },
    /// The main channel closed inside a RAM section while postcopy places pages.
    #[error("main channel closed by the source during postcopy inside section 'ram' (id {section_id}) at byte offset {at}")]
    ClosedDuringPostcopyRam { at: u64, section_id: u32 },
    /// No byte on the main channel for the silence limit while postcopy
    /// places pages (`channel::session::POSTCOPY_SILENCE_LIMIT`).
    #[error("main channel silent for {secs} s during postcopy at byte offset {at}: connection presumed lost")]
    Silent { at: u64, secs: u64 },
    /// Reading the main channel failed.
    #[error("read error on the main channel at byte offset {at}: {source}")]
    Io { at: u64, source: io::Error },
    /// Malformed bytes (the decode error names its offset).
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// A postcopy command refused in the current postcopy state.
    #[error("{source} at byte offset {at}")]
    Postcopy { at: u64, source: RuleError },
    /// POSTCOPY_LISTEN could not register RAM with userfaultfd.
    #[error("POSTCOPY_LISTEN at byte offset {at}: cannot set up userfaultfd: {source}")]
    Userfaultfd { at: u64, source: StartError },
    /// Placing a page during postcopy failed.
    #[error("{0}")]
    Place(#[from] PlaceError),
    /// A RAMBlock of the MEM_SIZE list could not be created.
    #[error("MEM_SIZE at byte offset {at}: {source}")]
    Ram { at: u64, source: RamError },
    /// A RAM record names a RAMBlock the MEM_SIZE list did not announce.
    #[error("RAM record names unknown RAMBlock {name:?} at byte offset {at}")]
    UnknownBlock { at: u64, name: String },
    /// A RAM record continues a block but none was named before.
    #[error("RAM record with CONTINUE flag but no previous block at byte offset {at}")]
    NoPreviousBlock { at: u64 },
    /// A page address beyond the end of its block.
    #[error("page address {addr:#x} is outside RAMBlock {block:?} (length {len:#x}) at byte offset {at}")]
    PageOutsideBlock { at: u64, addr: u64, block: String, len: u64 },
    /// Writing to the return path failed.
    #[error("return path: sending {what}: {source}")]
    ReturnPath { what: String, source: io::Error },
    /// A well-formed record that is not allowed here (the text names it and
    /// its offset).
    #[error("{msg}")]
    Protocol { at: Option<u64>, msg: String },
    /// Valid input that rust-dest does not implement.
    #[error("{msg}")]
    Unsupported { at: Option<u64>, msg: String },
    /// The vmdesc after EOF is not JSON.
    #[error("vmdesc JSON is invalid: {0}")]
    VmdescJson(serde_json::Error),
    /// A multifd sync point on the main channel (at byte offset `at`) failed.
    #[error("multifd sync point at byte offset {at}: {source}")]
    Multifd { at: u64, source: SyncError },
    /// A device section the destination's QEMU version refuses (device
    /// catalogue).
    #[error("device section at byte offset {at}: {source}")]
    Device { at: u64, source: DeviceError },
    /// A device section's bytes break what its vmdesc description allows
    /// (`wire::vmdesc::check`: subsection markers, versions, value checks).
    #[error("{0}")]
    DeviceCheck(Box<wire::vmdesc::check::CheckError>),
    /// The `globalstate` section's run state is refused.
    #[error("{source} (section at byte offset {at})")]
    GlobalState { at: u64, source: GlobalStateError },
    /// A mapped-ram block entry (at byte offset `at`) could not be loaded.
    #[error("{source} (block entry at byte offset {at})")]
    MappedRam { at: u64, source: MappedRamError },
    /// The configuration section's capabilities or UUID are refused.
    #[error("configuration: {0}")]
    Configuration(#[from] super::config::ConfigError),
    /// `source` happened inside `context` (a section, the package, a channel).
    #[error("{context}: {source}")]
    Context { context: String, source: Box<LoadError> },
}

impl LoadError {
    pub fn protocol(at: u64, msg: impl Into<String>) -> LoadError {
        LoadError::Protocol { at: Some(at), msg: msg.into() }
    }
    pub fn unsupported(at: u64, msg: impl Into<String>) -> LoadError {
        LoadError::Unsupported { at: Some(at), msg: msg.into() }
    }
    /// Wrap in a context (`section 'ram' (id 2)`, `PACKAGED ...`).
    pub fn within(self, context: impl Into<String>) -> LoadError {
        LoadError::Context { context: context.into(), source: Box::new(self) }
    }
    /// Inside the RAM section `section_id`.
    pub fn in_ram_section(self, section_id: u32) -> LoadError {
        self.within(format!("section 'ram' (id {section_id})"))
    }
    /// The innermost error (under every context).
    pub fn root(&self) -> &LoadError {
        match self {
            LoadError::Context { source, .. } => source.root(),
            e => e,
        }
    }
    /// The byte offset the error applies to, when it has one.
    pub fn offset(&self) -> Option<u64> {
        match self.root() {
            LoadError::Truncated { at, .. }
            | LoadError::TruncatedAfterHeader { at }
            | LoadError::TruncatedDeviceState { at, .. }
            | LoadError::ClosedDuringPostcopy { at, .. }
            | LoadError::ClosedDuringPostcopyRam { at, .. }
            | LoadError::Io { at, .. }
            | LoadError::Silent { at, .. }
            | LoadError::Postcopy { at, .. }
            | LoadError::Userfaultfd { at, .. }
            | LoadError::Ram { at, .. }
            | LoadError::UnknownBlock { at, .. }
            | LoadError::NoPreviousBlock { at }
            | LoadError::PageOutsideBlock { at, .. }
            | LoadError::Multifd { at, .. }
            | LoadError::Device { at, .. }
            | LoadError::GlobalState { at, .. }
            | LoadError::MappedRam { at, .. } => Some(*at),
            LoadError::DeviceCheck(e) => Some(e.at),
            LoadError::Decode(DecodeError::Incomplete { at, .. }) => Some(*at),
            LoadError::Decode(DecodeError::Invalid { offset, .. }) => Some(*offset),
            LoadError::Protocol { at, .. } | LoadError::Unsupported { at, .. } => *at,
            _ => None,
        }
    }
    /// The source closed the channel (as opposed to sending bad bytes).
    pub fn is_truncation(&self) -> bool {
        matches!(
            self.root(),
            LoadError::Truncated { .. }
                | LoadError::TruncatedAfterHeader { .. }
                | LoadError::TruncatedDeviceState { .. }
                | LoadError::ClosedDuringPostcopy { .. }
                | LoadError::ClosedDuringPostcopyRam { .. }
        )
    }
}
