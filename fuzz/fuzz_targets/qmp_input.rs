//! The QMP server's input side: JSON values split off a connection's reads
//! (syntax errors resync at the line end, the request size limit) and the
//! request-shape check. The first byte picks the read size.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let chunk = 1 + (sel as usize % 64) * 97;
    let _ = rust_dest::fuzzing::qmp_input(bytes, chunk);
});
