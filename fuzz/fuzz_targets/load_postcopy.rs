//! rust-dest's whole loader on a main channel held in memory with the
//! `postcopy-ram` capability: ADVISE, DISCARD, PACKAGED (LISTEN, device
//! sections, RUN), pages placed through userfaultfd, END. Checked: no
//! panic, no hang, no allocation ahead of the bytes; an error is a failed
//! or paused migration.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rust_dest::fuzzing::load_from_memory(data, true);
});
