//! `MIG_CMD_*` payloads (`wire::command`) and top-level record framing
//! (`wire::stream::decode_top`). Checked: no panic; a command that parses
//! encodes back to a payload that parses to the same command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::command::Command;
use wire::stream::{decode_top, RawCommand};
use wire::Cursor;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 2 {
        let cmd = u16::from_be_bytes([data[0], data[1]]);
        let rc = RawCommand { cmd, payload: &data[2..], payload_offset: 2 };
        if let Ok(c) = Command::parse(&rc) {
            let payload = c.payload();
            let again = RawCommand { cmd: c.code(), payload: &payload, payload_offset: 0 };
            assert_eq!(Command::parse(&again).as_ref().ok(), Some(&c), "round trip of {c:?}");
        }
    }
    let mut c = Cursor::new(data, 0);
    while c.pos() < data.len() {
        let at = c.pos();
        match decode_top(&mut c) {
            Ok(_) if c.pos() > at => {}
            _ => break,
        }
    }
});
