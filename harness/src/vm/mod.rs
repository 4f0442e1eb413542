//! Processes under test: the one QEMU launcher ([`qemu`]), the destinations
//! it or rust-dest provides ([`dest`]), and process/file guards that always
//! clean up ([`procs`]).

pub mod dest;
pub mod procs;
pub mod qemu;
