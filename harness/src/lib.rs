
pub mod images;
pub mod guestcheck;
pub mod qmp;
pub mod procs;
pub mod qemu;
pub mod dest;
pub mod memcheck;
pub mod migrate;
pub mod proxy;
pub mod provision;
pub mod synth;
pub mod streamcheck;
pub mod scenario;
pub mod bench;
pub mod sys;
