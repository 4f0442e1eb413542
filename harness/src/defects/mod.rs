//! Seeded defects: a catalogue of migration bugs, each modelled on a real
//! QEMU bug class, injected either on the source side (a mutating proxy
//! between a real QEMU source and the destination: [`proxy`], [`channel`],
//! [`ram`], [`device`]) or in a rust-dest built with the `seeded-defects`
//! feature; [`runner`] runs each into rust-dest and QEMU's destination and
//! records which check caught it (`crossmig defects`); destination-side
//! defects only a stream script shows play their scenario ([`stream`]).

pub mod catalogue;
pub mod channel;
pub mod cli;
mod device;
pub mod mutation;
pub mod outcome;
pub mod proxy;
mod ram;
pub mod runner;
mod state;
pub mod stream;
pub mod table;

#[cfg(test)]
mod tests;
