//! Multifd packets (`wire::multifd`): the initial packet and RAM packets in
//! both layouts, with every check the receiver applies (validate,
//! compression, payload length, offsets). The first byte picks the layout.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::multifd::{InitPacket, PacketFormat, PacketLayout, RamPacket};
use wire::Cursor;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let layout = if sel & 1 == 0 { PacketLayout::V9 } else { PacketLayout::V7 };
    let fmt = PacketFormat::x86(layout);
    let mut c = Cursor::new(bytes, 0);
    if sel & 2 != 0 {
        if let Ok(p) = InitPacket::decode(&mut c) {
            let _ = p.check(0, &[0; 16], 2);
        }
    }
    while c.pos() < bytes.len() {
        let at = c.pos();
        let Ok(p) = RamPacket::decode(&mut c, &fmt) else { break };
        if c.pos() == at {
            break;
        }
        if p.validate(&fmt, at as u64).is_ok() {
            if let Ok(comp) = p.compression(&fmt, at as u64) {
                let _ = p.payload_len(&fmt, comp, at as u64);
            }
            let _ = p.check_offsets(&fmt, 64 << 20, at as u64);
            let _ = (p.normal_offsets().len(), p.zero_offsets().len(), p.is_sync());
        }
    }
});
