//! Building damaged streams: byte edits and splices of the recording.

/// Bytes kept after the damaged spot in "keep the socket open" cases.
pub const TAIL: usize = 64 * 1024;

pub fn be64_at(d: &[u8], off: u64) -> u64 {
    u64::from_be_bytes(d[off as usize..off as usize + 8].try_into().unwrap())
}

pub fn set_be64(d: &mut [u8], off: u64, v: u64) {
    d[off as usize..off as usize + 8].copy_from_slice(&v.to_be_bytes());
}

/// `data[..at] ++ insert ++ data[at + remove..]`, cut `TAIL` bytes after
/// the spliced spot (the rest is not needed to detect the damage).
pub fn splice(data: &[u8], at: u64, remove: usize, insert: &[u8]) -> Vec<u8> {
    let at = at as usize;
    let mut v = data[..at].to_vec();
    v.extend_from_slice(insert);
    let rest = &data[at + remove..];
    v.extend_from_slice(&rest[..rest.len().min(TAIL)]);
    v
}
