//! [`MappedRamError`]: why a mapped-ram block could not be loaded (kept
//! apart so `load::error` can name it without an import cycle).

use wire::mapped_ram::LayoutError;

/// Why a mapped-ram block could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum MappedRamError {
    #[error("{0}")]
    Layout(#[from] LayoutError),
    /// QEMU: "Error reading dirty bitmap".
    #[error("Error reading dirty bitmap of block {block} ({len:#x} bytes at file offset {offset:#x}): {source}")]
    Bitmap { block: String, offset: u64, len: u64, source: std::io::Error },
    /// QEMU: "(%s) failed to read page %x from file offset %x".
    #[error("({block}) failed to read page {addr:#x} from file offset {offset:#x}: {what}")]
    Pages { block: String, addr: u64, offset: u64, what: String },
    #[error("mapped-ram: cannot open multifd file channel {channel}{}: {source}", if *.direct { " with O_DIRECT" } else { "" })]
    Open { channel: usize, direct: bool, source: std::io::Error },
    #[error(
        "mapped-ram: block {block} has page size {page_size:#x}: hugepage blocks are not supported"
    )]
    Hugepage { block: String, page_size: u64 },
    /// QEMU's `ram_load_precopy()`: flags not valid with mapped-ram.
    #[error("Unexpected RAM flags: {0}")]
    UnexpectedFlags(u64),
    #[error("the mapped-ram capability is on, but the main channel is not a file")]
    NotAFile,
    #[error("mapped-ram: a multifd reader thread ended early")]
    ReaderLost,
}
