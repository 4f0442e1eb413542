//! rust-dest: a QEMU-compatible live-migration destination.
//!
//! Layers, bottom up:
//! - [`codec`]: the pure wire codec (bytes in, records out, and back; no I/O),
//!   shared with the harness's synthetic source.
//! - [`mem`]: the only `unsafe` code (mmap, page placement, userfaultfd).
//! - [`ram`]: the RAMBlock table and received bitmaps.
//! - [`incoming`]: the loader state machine over a byte stream, including the
//!   postcopy state machine and device-state keeping ([`devstate`]).
//! - [`state`]: the shared status/counters/events seen by QMP.
//! - [`qmp`]: the QMP server.
//! - [`cli`]: the QEMU-style command line.

pub mod cli;
pub mod fault;
pub mod incoming;
pub mod listen;
pub mod mem;
pub mod postcopy;
pub mod preempt;
pub mod qmp;
pub mod ram;
pub mod session;
pub mod state;
