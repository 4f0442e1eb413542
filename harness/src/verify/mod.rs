//! Every check of guest memory, in one place: page digests of files and
//! destinations ([`memory`]), the test guests' own invariants ([`guest`]),
//! RAMBlocks replayed offline from recorded wire bytes ([`stream`]), the RAM
//! model of a synthetic source's script checked against a destination
//! ([`model`]), rust-dest's postcopy demand paging ([`postcopy`]), and the
//! [`Check`](report::Check) they all produce ([`report`]).

pub mod devices;
pub mod guest;
pub mod limits;
pub mod memory;
pub mod model;
pub mod postcopy;
pub mod report;
pub mod stream;

pub use report::Check;
