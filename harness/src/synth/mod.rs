//! A synthetic migration SOURCE: plays scripted protocol sequences into a
//! destination under test (a real QEMU or rust-dest), keeps a model of the
//! guest RAM it sent, and judges the destination's verdict.
//!
//! * [`layout`]: the RAMBlock list and machine type a *real* q35 source with
//!   the harness's standard configuration announces (a real QEMU destination
//!   rejects unknown blocks and wrong lengths), learned at run time from a
//!   real QEMU source ([`probe_layout`], cached per process by
//!   [`source_layout`]).
//! * [`page`]: one page of guest RAM as the source sends it ([`Page`]).
//! * [`multifd`]: elements of the multifd channels ([`MultifdStep`]: open
//!   channel k, initial packet, RAM and SYNC packets), encoded with
//!   `wire::multifd`.
//! * [`step`]: one scripted protocol element ([`Step`]), encoded with the
//!   `wire` crate.
//! * [`player`]: connect, write the steps in order (flushing each), read the
//!   return path concurrently, answer page requests from the RAM model
//!   ([`crate::verify::model::RamModel`]).
//! * [`verdict`]: how the destination ended ([`await_verdict`]).
//! * [`differential`]: one script against one destination ([`run_script`]) or
//!   against QEMU and rust-dest at once, compared in one place
//!   ([`Differential::problems`]).
//! * [`solo`]: one script against rust-dest with its simulated vCPUs
//!   running (page requests served from the model), judged against the
//!   model alone ([`Solo::problems`]).
//!
//! Dependencies point one way: layout, page ← multifd ← step ← player ←
//! differential, and verdict ← differential ← solo.

pub mod differential;
pub mod layout;
pub mod multifd;
pub mod page;
pub mod player;
pub mod solo;
pub mod step;
pub mod verdict;

// The RAM model's home is verify/ (with its check); the source writes it.
pub use crate::verify::model::{content_bytes, Content, RamModel};
pub use differential::{
    differential, differential_parts, run_script, DestRun, Differential, Expect, Expectation,
    Observed, Problem, RunOpts,
};
pub use layout::{
    decode_layout, probe_layout, source_layout, BlockInfo, SourceLayout, GUEST_MEM, PAGE_SIZE,
    QEMU_10_0_Q35_128M_BLOCKS, QEMU_10_0_Q35_MACHINE,
};
pub use multifd::{layout_for_version, Compressors, Corruption, MultifdStep};
pub use player::{play, play_with, PlayResult, EXPECT_TIMEOUT};
pub use solo::{solo, Solo, NO_ORACLE};
pub use step::{
    encode_script, globalstate_data, model_of, pattern_pages, vmdesc_for, EncodeError, Page,
    RpMatcher, Step, FIRST_DEVICE_SECTION_ID, RAM_SECTION_ID,
};
pub use verdict::{await_verdict, log_error_lines, log_lines, strip_ansi, Verdict, VerdictKind};
