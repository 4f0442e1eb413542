//! The vmdesc JSON and device-section delimiting (`wire::vmdesc`,
//! `wire::tail`): the tail parse through EOF, the vmdesc found at the end of
//! a tail, splitting by a vmdesc, by footers and the PACKAGED blob's parse.
//! Input: a be16 JSON length, the JSON, then the device-state bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::{tail, vmdesc};

fuzz_target!(|data: &[u8]| {
    let _ = tail::parse_tail(data);
    let _ = vmdesc::package_section_ends(data);
    let _ = vmdesc::split_one_by_footer(data, 0, 0);
    if let Some((eof, json)) = vmdesc::find_vmdesc_tail(data) {
        let _ = vmdesc::split_with_vmdesc(&data[..eof], 0, &json);
    }
    if data.len() < 2 {
        return;
    }
    let n = (u16::from_be_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (json, rest) = data[2..].split_at(n);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) {
        let _ = vmdesc::described_size(&v);
        if let Ok(secs) = vmdesc::split_with_vmdesc(rest, 0, &v) {
            for s in secs {
                let _ = s;
            }
        }
    }
});
