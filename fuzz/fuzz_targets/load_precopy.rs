//! rust-dest's whole loader on a main channel held in memory, precopy
//! (`rust_dest::fuzzing::load_from_memory`): header, configuration, RAM
//! sections, commands, the device-state tail, EOF and the vmdesc. Checked:
//! no panic, no hang, no allocation ahead of the bytes; an error is a failed
//! migration.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rust_dest::fuzzing::load_from_memory(data, false);
});
