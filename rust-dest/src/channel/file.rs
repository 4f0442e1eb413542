//! The file of a `file:` migration, as the loader reaches it (mapped-ram
//! reads pages at their offsets in it).

use std::path::PathBuf;

/// The file of a `file:` (or `file:/dev/fdset/N`) migration as the loader
/// can reach it through `Session::incoming_file` (`super::session`): a seekable file and the
/// offset at which the stream starts. The main channel reads a clone of
/// `file` positioned at `offset`; random access (mapped-ram) uses
/// `FileExt::read_at` on `file` with absolute file offsets.
#[derive(Debug)]
pub struct IncomingFile {
    pub file: std::fs::File,
    pub offset: u64,
    /// The path as given (`/dev/fdset/N` for a descriptor set).
    pub path: PathBuf,
}

impl IncomingFile {
    pub fn try_clone(&self) -> std::io::Result<IncomingFile> {
        Ok(IncomingFile {
            file: self.file.try_clone()?,
            offset: self.offset,
            path: self.path.clone(),
        })
    }
}
