//! Processes under test: the one QEMU launcher ([`qemu::QemuVm::launch`]
//! with [`qemu::LaunchOpts`]; rust-dest runs through it too), the
//! destinations it starts ([`dest`]), and process/file guards that always
//! clean up ([`procs`]), and huge pages for guest RAM ([`hugepages`]).

pub mod dest;
pub mod hugepages;
pub mod procs;
pub mod qemu;
