
pub mod images;
pub mod guestcheck;
pub mod qmp;
pub mod procs;
pub mod qemu;
