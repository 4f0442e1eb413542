//! A sans-I/O codec for QEMU's live-migration stream: bytes in, records out,
//! and records back to bytes. No sockets, no threads, no clocks.
//!
//! It covers what a migration destination reads and a source writes on the
//! main channel (header, configuration, sections, commands, RAM records,
//! EOF, the vmdesc JSON), what the destination writes back on the return
//! path, and the postcopy-preempt channel's bare RAM records. It has been
//! checked against QEMU 7.2, 10.0 and 11.1 sources and destinations. The
//! full reference, with the QEMU source file and function behind every rule,
//! is the repository's `docs/wire-format.md`.
//!
//! # Decoding model
//!
//! Decoders work on a [`Cursor`] over a byte slice that knows the absolute
//! stream offset of its first byte. When the slice ends inside a record they
//! return [`DecodeError::Incomplete`] and leave the cursor where the record
//! began, so an I/O layer can read more bytes and retry. Every other error is
//! [`DecodeError::Invalid`], naming the absolute byte offset and what was
//! wrong. Encoders append to an [`Encoder`]; they are infallible and can also
//! build deliberately malformed input (for negative tests).
//!
//! All integers are big-endian; a "counted string" is one length byte and
//! that many bytes, without NUL.
//!
//! # The stream at a glance
//!
//! ```text
//! main channel (source → destination)
//!   "QEVM" be32 3 [07 be32 len machine-name {05 subsection}*]      stream::decode_header
//!   { 01|04 be32 id, name, be32 instance, be32 version, data, 7e be32 id   START / FULL
//!   | 02|03 be32 id, data, 7e be32 id                                 PART / END
//!   | 08 be16 cmd, be16 len, payload                                  command::Command
//!   }*
//!   00                                                                EOF
//!   [06 be32 len JSON]                                                vmdesc (precopy, optional)
//!
//! "ram" section data: records until EOS                               ramrec
//!   be64 addr|flags [counted block name unless CONTINUE] body
//!
//! return path (destination → source): be16 type, be16 len, payload    rp
//! ```
//!
//! A postcopy migration is precopy plus: `POSTCOPY_ADVISE` near the start,
//! `POSTCOPY_RAM_DISCARD` commands at switchover, then `PACKAGED` carrying
//! `LISTEN`, the device sections, `PING`s and `RUN`; afterwards RAM pages
//! flow on the main (and preempt) channel while the destination requests
//! missing pages with `REQ_PAGES(_ID)` on the return path, until the final
//! `EOF` and the destination's `SHUT(0)`. See [`command`] for the sequence
//! and the recovery exchange.
//!
//! # Modules
//!
//! - [`consts`]: magic numbers, section types, command, flag and message values.
//! - [`cursor`]: [`Cursor`], [`DecodeError`], [`Encoder`].
//! - [`stream`]: header, configuration, section headers and footers, EOF,
//!   vmdesc record, command framing.
//! - [`command`]: typed `MIG_CMD_*` payloads and the postcopy sequence.
//! - [`ramrec`]: RAM section records (MEM_SIZE, PAGE, ZERO, XBZRLE, EOS, ...).
//! - [`rp`]: return-path messages and the received-bitmap data.
//! - [`vmdesc`]: delimiting device sections with the vmdesc JSON or the
//!   PACKAGED blob's footers.
//! - [`tail`]: the end of a precopy stream: device sections delimited by
//!   footers through EOF, and what follows EOF (the optional vmdesc).
//! - [`digest`]: page digests (xxh3), identical wherever pages are compared.
//! - [`multifd`]: multifd channels' initial packet and RAM packet headers.
//! - [`units`]: sizes, durations, and the target page size.
//! - [`walk`]: the incremental top-level record walker (window in, records out).
//!
//! # Example
//!
//! Build a small precopy stream with the encoders, then walk it back the way
//! a destination does:
//!
//! ```
//! use wire::ramrec::{decode_ram_record, encode_ram_record, BlockEntry, RamContext, RamRecord};
//! use wire::stream::{
//!     decode_footer, decode_header, decode_top, encode_eof, encode_footer, encode_header,
//!     encode_section_open, Configuration, Header, SectionKind, TopRecord,
//! };
//! use wire::{Cursor, DecodeError, Encoder};
//!
//! # fn main() -> Result<(), DecodeError> {
//! let ctx = RamContext::x86();
//! let mut e = Encoder::new();
//! let cfg = Configuration { machine: "pc-q35-10.0".into(), ..Default::default() };
//! encode_header(&mut e, &Header { version: 3, configuration: Some(cfg) });
//! encode_section_open(&mut e, SectionKind::Start, 2, "ram", 0, 4);
//! let block = BlockEntry { name: "pc.ram".into(), used_length: 0x2000, page_size: None, gpa: None };
//! encode_ram_record(&mut e, &RamRecord::MemSize { total: 0x2000, blocks: vec![block] }, &ctx);
//! encode_ram_record(&mut e, &RamRecord::Eos, &ctx);
//! encode_footer(&mut e, 2);
//! encode_eof(&mut e);
//! let bytes = e.finish();
//!
//! // A truncated buffer asks for more bytes and leaves the cursor in place.
//! let mut short = Cursor::new(&bytes[..10], 0);
//! assert!(matches!(decode_header(&mut short, true), Err(DecodeError::Incomplete { at: 0, .. })));
//! assert_eq!(short.offset(), 0);
//!
//! let mut c = Cursor::new(&bytes, 0);
//! let header = decode_header(&mut c, true)?;
//! assert_eq!(header.configuration.unwrap().machine, "pc-q35-10.0");
//! let mut blocks = Vec::new();
//! loop {
//!     match decode_top(&mut c)? {
//!         TopRecord::SectionOpen { section_id, idstr: "ram", .. } => {
//!             loop {
//!                 match decode_ram_record(&mut c, &ctx)? {
//!                     RamRecord::MemSize { blocks: b, .. } => blocks = b,
//!                     RamRecord::Eos => break,
//!                     _ => {}
//!                 }
//!             }
//!             decode_footer(&mut c, section_id)?;
//!         }
//!         TopRecord::Eof => break,
//!         other => panic!("unexpected {other:?}"),
//!     }
//! }
//! assert_eq!(blocks[0].name, "pc.ram");
//! assert_eq!(c.remaining(), 0);
//! # Ok(())
//! # }
//! ```

pub mod command;
pub mod consts;
pub mod cursor;
pub mod digest;
pub mod mapped_ram;
pub mod multifd;
pub mod ramrec;
pub mod rp;
pub mod stream;
pub mod tail;
pub mod units;
pub mod vmdesc;
pub mod walk;

pub use cursor::{Cursor, DecodeError, Encoder};
pub use units::TARGET_PAGE_SIZE;
