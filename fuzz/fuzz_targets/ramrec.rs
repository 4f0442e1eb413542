//! RAM section records (`wire::ramrec`): MEM_SIZE, PAGE, ZERO, CONTINUE,
//! EOS, MULTIFD_FLUSH, XBZRLE, and XBZRLE decoding into a page. The first
//! byte picks `x-ignore-shared`. Checked: no panic; a failed decode leaves
//! the cursor where it was.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::ramrec::{decode_ram_record, xbzrle_decode, RamContext, RamRecord};
use wire::Cursor;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let mut ctx = RamContext::x86();
    ctx.ignore_shared = sel & 1 != 0;
    let mut c = Cursor::new(bytes, 0);
    let mut page = vec![0u8; 4096];
    while c.pos() < bytes.len() {
        let at = c.pos();
        match decode_ram_record(&mut c, &ctx) {
            Ok(RamRecord::Xbzrle { data, addr, .. }) => {
                let _ = xbzrle_decode(data, &mut page, addr);
            }
            Ok(_) if c.pos() > at => {}
            Ok(_) => break,
            Err(_) => {
                assert_eq!(c.pos(), at, "a failed decode moved the cursor");
                break;
            }
        }
    }
});
