//! Return-path messages (`wire::rp`) and the received-bitmap data. Checked:
//! no panic; a decoded message encodes back to bytes that decode to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::rp::{decode_recv_bitmap_data, decode_rp};
use wire::Cursor;

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data, 0);
    while c.pos() < data.len() {
        let at = c.pos();
        match decode_rp(&mut c) {
            Ok(m) if c.pos() > at => {
                let b = m.to_bytes();
                let mut c2 = Cursor::new(&b, 0);
                assert_eq!(decode_rp(&mut c2).ok().as_ref(), Some(&m), "round trip");
            }
            _ => break,
        }
    }
    let _ = decode_recv_bitmap_data(&mut Cursor::new(data, 0));
});
