//! The stream walker (`wire::walk`) over arbitrary bytes, the way a network
//! reader drives it: window by window. The first byte picks the channel kind
//! (main with or without configuration, headerless recovery, bare preempt)
//! and the read size. Checked: no panic; a record is never longer than its
//! window; a window one byte short of a record asks for more instead of
//! returning something else (the walker decides nothing from bytes it does
//! not have).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::walk::{Walked, Walker};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let footers = sel & 0x10 == 0;
    let mut w = match sel & 3 {
        0 => Walker::main(true, footers),
        1 => Walker::main(false, footers),
        2 => Walker::headerless(footers),
        _ => Walker::bare(),
    };
    if sel & 0x20 != 0 {
        w.set_ignore_shared(true);
    }
    // Reads of 509 bytes up to 12 KiB: records end mid-read and span reads.
    let read = 509 + ((sel >> 6) as usize) * 4093;
    let mut pos = 0usize;
    let mut have = read.min(bytes.len());
    for _ in 0..20_000 {
        let before = w.clone();
        match w.next(&bytes[pos..have], pos as u64) {
            Ok(Walked::End) | Err(_) => return,
            Ok(Walked::Record { len, .. }) => {
                assert!(
                    pos + len <= have,
                    "record of {len} bytes at {pos} past the window end {have}"
                );
                if len > 0 {
                    let mut short = before.clone();
                    let r = short.next(&bytes[pos..pos + len - 1], pos as u64);
                    assert!(
                        matches!(r, Ok(Walked::NeedMore { .. })),
                        "window one byte short of the record at {pos} (len {len}): {r:?}"
                    );
                }
                pos += len;
                if len == 0 && have == bytes.len() {
                    return;
                }
            }
            Ok(Walked::NeedMore { at, needed }) => {
                assert!(needed > 0, "NeedMore of 0 bytes at {at}");
                if have == bytes.len() {
                    return;
                }
                have = (have + read).min(bytes.len());
            }
        }
    }
});
