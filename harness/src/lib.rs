//! crossmig: drive real QEMU migrations into rust-dest or a QEMU destination
//! and verify guest memory page by page. See ARCHITECTURE.md for the map.

pub mod analyze;
pub mod bench;
pub mod defects;
pub mod drive;
pub mod fuzz;
pub mod images;
pub mod provision;
pub mod qmp;
pub mod scenario;
pub mod synth;
pub mod sys;
pub mod verify;
pub mod vm;
