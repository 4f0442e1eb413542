//! Page digests shared by rust-dest (QMP `x-crossmig-ram-digests`) and the
//! harness (which digests the source's memory-backend file), so both sides
//! hash pages identically.

/// Name of the digest algorithm, reported over QMP.
pub const ALGORITHM: &str = "xxh3-64";

/// Digest of one page.
pub fn page_digest(page: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(page)
}

/// Digest of every `page_size` chunk of `data` (the last one may be short).
pub fn page_digests(data: &[u8], page_size: usize) -> Vec<u64> {
    data.chunks(page_size).map(page_digest).collect()
}

/// Digests as one lowercase hex string, 16 characters per page.
pub fn to_hex(d: &[u64]) -> String {
    let mut s = String::with_capacity(d.len() * 16);
    for x in d {
        use std::fmt::Write;
        let _ = write!(s, "{x:016x}");
    }
    s
}

/// Parse a string produced by [`to_hex`].
pub fn from_hex(s: &str) -> Option<Vec<u64>> {
    if !s.len().is_multiple_of(16) {
        return None;
    }
    (0..s.len() / 16).map(|i| u64::from_str_radix(&s[i * 16..i * 16 + 16], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_roundtrip() {
        let d = super::page_digests(&[1u8; 10000], 4096);
        assert_eq!(d.len(), 3);
        assert_ne!(d[0], d[2]);
        assert_eq!(super::from_hex(&super::to_hex(&d)).unwrap(), d);
    }
}
