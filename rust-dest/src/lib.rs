//! rust-dest: a QEMU-compatible live-migration destination.
//!
//! Modules, bottom up (dependencies point down this list, never back):
//! - [`compat`]: rules that differ between QEMU versions (`--compat-version`).
//! - [`globalstate`]: the `globalstate` section's run state, as QEMU checks it.
//! - [`catalogue`]: the device catalogue (`--device-catalogue`).
//! - [`mem`]: the only `unsafe` code (mmap, page placement, userfaultfd).
//! - [`ram`]: the RAMBlock table and received bitmaps.
//! - [`state`]: the shared status, capabilities, counters, events and kept
//!   device sections seen by QMP.
//! - [`channel`]: accepting and classifying connections, the buffered reader
//!   (QEMU's `migration/qemu-file.c`) and the return-path writer.
//! - [`postcopy`]: postcopy legality rules, userfaultfd runtime and fault
//!   thread, simulated vCPUs.
//! - [`load`]: the loader (QEMU's `migration/savevm.c` and `migration/ram.c`
//!   load side): header, sections, commands, package, RAM, device state, the
//!   preempt channel.
//! - [`qmp`]: the QMP server.
//! - [`cli`]: the QEMU-style command line.
//! - `fuzzing` (hidden): in-memory entry points for the fuzz targets in `fuzz/`.
//! - [`defects`]: seeded defects (issue 13), compiled only with the
//!   `seeded-defects` feature.
//!
//! The wire codec (bytes in, records out, and back; no I/O) is the `wire`
//! crate, shared with the harness.

pub mod catalogue;
pub mod channel;
pub mod cli;
pub mod compat;
pub mod defects;
#[doc(hidden)]
pub mod fuzzing;
pub mod globalstate;
pub mod load;
pub mod mem;
pub mod postcopy;
pub mod qmp;
pub mod ram;
pub mod state;
