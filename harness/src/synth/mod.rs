//! A synthetic migration SOURCE: plays scripted protocol sequences into a
//! destination under test (a real QEMU or rust-dest), keeps a model of the
//! guest RAM it sent, and judges the destination's verdict.
//!
//! * [`layout`]: the RAMBlock list and machine type a *real* q35 source with
//!   the harness's standard configuration announces (a real QEMU destination
//!   rejects unknown blocks and wrong lengths), learned at run time from a
//!   real QEMU source ([`probe_layout`], cached per process by
//!   [`source_layout`]).
//! * [`step`]: one scripted protocol element ([`Step`]), encoded with the
//!   `wire` crate.
//! * [`player`]: connect, write the steps in order (flushing each), read the
//!   return path concurrently, answer page requests from the RAM model
//!   ([`crate::verify::model::RamModel`]).
//! * [`verdict`]: how the destination ended ([`await_verdict`]).
//! * [`differential`]: one script against one destination ([`run_script`]) or
//!   against QEMU and rust-dest at once, compared in one place
//!   ([`Differential::problems`]).
//!
//! Dependencies point one way: layout ← step ← player ← differential, and
//! verdict ← differential.

pub mod differential;
pub mod layout;
pub mod player;
pub mod step;
pub mod verdict;

use std::time::Duration;

pub use crate::verify::model::{
    check_memory, check_pages, content_bytes, Content, Expected, MemCheck, PageState, RamModel,
};
pub use differential::{
    differential, run_script, DestRun, Differential, Expect, Expectation, Observed, Problem,
    RunOpts,
};
pub use layout::{
    decode_layout, probe_layout, source_layout, BlockInfo, SourceLayout, QEMU_10_0_Q35_128M_BLOCKS,
    QEMU_10_0_Q35_MACHINE,
};
pub use player::{play, PlayResult};
pub use step::{
    encode_script, globalstate_data, model_of, pattern_pages, vmdesc_for, EncodeError, Page,
    RpMatcher, Step,
};
pub use verdict::{await_verdict, log_error_lines, log_lines, strip_ansi, Verdict, VerdictKind};

/// Target page size (x86-64).
pub const PAGE_SIZE: u64 = wire::units::TARGET_PAGE_SIZE;
/// Guest RAM of the standard synthetic-source configuration.
pub const GUEST_MEM: u64 = 128 << 20;
/// Section id the synthetic source uses for "ram" (any id is legal; a real
/// QEMU 10.0 q35 source happens to use 1).
pub const RAM_SECTION_ID: u32 = 2;
/// Longest wait of one [`Step::ExpectRp`] (also bounded by the play timeout).
pub const EXPECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First section id for FULL device sections.
pub const FIRST_DEVICE_SECTION_ID: u32 = 0x20;
