//! Every check of guest memory, in one place: page digests of files and
//! destinations ([`memory`]), the test guests' own invariants ([`guest`]), and
//! RAMBlocks replayed offline from recorded wire bytes ([`stream`]).

pub mod guest;
pub mod memory;
pub mod stream;
