//! The pure wire codec for QEMU's migration stream: bytes in, records out,
//! and records back to bytes. No sockets, no threads, no clocks.
//!
//! Decoders work on a [`Cursor`] over a byte slice that knows its absolute
//! stream offset. When the slice ends inside a record they return
//! [`DecodeError::Incomplete`] and leave the cursor where the record began, so
//! an I/O layer can read more bytes and retry. Every other error names the
//! absolute byte offset and what was wrong.
//!
//! The byte layouts, and the QEMU source each rule comes from, are in the
//! project's `docs/wire-format.md`. Modules:
//! - [`consts`]: magic numbers, section types, command and flag values.
//! - [`stream`]: header, configuration, section headers/footers, EOF, vmdesc,
//!   command framing.
//! - [`command`]: typed `MIG_CMD_*` payloads.
//! - [`ramrec`]: RAM section records (MEM_SIZE, PAGE, ZERO, ...).
//! - [`rp`]: return-path messages.
//! - [`vmdesc`]: locating the trailing vmdesc JSON and splitting device
//!   sections with it.
//! - [`digest`]: page digests (xxh3), identical wherever pages are compared.
//! - [`units`]: sizes, durations, and the target page size.
//! - [`walk`]: the incremental top-level record walker (window in, records out).

pub mod command;
pub mod consts;
pub mod cursor;
pub mod digest;
pub mod ramrec;
pub mod rp;
pub mod stream;
pub mod units;
pub mod vmdesc;
pub mod walk;

pub use cursor::{Cursor, DecodeError, Encoder};
pub use units::TARGET_PAGE_SIZE;
