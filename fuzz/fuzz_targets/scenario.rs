//! The harness's scenario file parser (`harness::scenario::file::load_str`):
//! TOML, axes and their expansion, `${axis}` substitution, the typed spec.
//! Checked: no panic; an error names the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = harness::scenario::file::load_str(Path::new("fuzz.toml"), text) {
        assert_eq!(e.file, Path::new("fuzz.toml"));
    }
});
