//! Big-endian byte cursor (decoding) and encoder, with absolute stream offsets.
//!
//! A [`Cursor`] reads from a slice whose first byte sits at a known absolute
//! offset of the stream, so every error can name where in the whole stream it
//! happened. Each read takes the offset where the enclosing *record* began: if
//! the slice ends early the error is [`DecodeError::Incomplete`] with that
//! offset and the number of bytes still missing, which is what an I/O layer
//! needs to read more and retry the whole record. Malformed input is
//! [`DecodeError::Invalid`] with the offset of the offending field.
//!
//! An [`Encoder`] appends big-endian integers and counted strings (one length
//! byte, then the bytes, no NUL) to a `Vec<u8>`.

use std::fmt;

/// A decoding error. `Incomplete` means "not enough bytes yet"; everything
/// else is a protocol violation located at an absolute stream offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// At least `needed` more bytes are required to decode the record that
    /// starts at `at`.
    Incomplete { at: u64, needed: usize },
    /// Malformed input.
    Invalid { offset: u64, what: String },
}

impl DecodeError {
    pub fn invalid(offset: u64, what: impl Into<String>) -> DecodeError {
        DecodeError::Invalid { offset, what: what.into() }
    }
    pub fn is_incomplete(&self) -> bool {
        matches!(self, DecodeError::Incomplete { .. })
    }
    /// Prefix the message with a context (e.g. the section being parsed).
    pub fn context(self, ctx: &str) -> DecodeError {
        match self {
            DecodeError::Invalid { offset, what } => {
                DecodeError::Invalid { offset, what: format!("{ctx}: {what}") }
            }
            other => other,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Incomplete { at, needed } => {
                write!(
                    f,
                    "stream truncated: record at byte offset {at} needs {needed} more byte(s)"
                )
            }
            DecodeError::Invalid { offset, what } => write!(f, "{what} (at byte offset {offset})"),
        }
    }
}

impl std::error::Error for DecodeError {}

pub type Result<T> = std::result::Result<T, DecodeError>;

/// A read position in a byte slice whose first byte sits at absolute stream
/// offset `base`.
#[derive(Clone, Copy, Debug)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8], base: u64) -> Cursor<'a> {
        Cursor { buf, pos: 0, base }
    }
    /// Absolute offset of the next byte.
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn set_pos(&mut self, pos: usize) {
        self.pos = pos;
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
    fn need(&self, n: usize, start: u64) -> Result<()> {
        if self.remaining() < n {
            Err(DecodeError::Incomplete { at: start, needed: n - self.remaining() })
        } else {
            Ok(())
        }
    }
    /// Take `n` bytes. `start` is the offset where the enclosing record began
    /// (reported with Incomplete).
    pub fn bytes(&mut self, n: usize, start: u64) -> Result<&'a [u8]> {
        self.need(n, start)?;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self, start: u64) -> Result<u8> {
        Ok(self.bytes(1, start)?[0])
    }
    pub fn peek_u8(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }
    pub fn be16(&mut self, start: u64) -> Result<u16> {
        let b = self.bytes(2, start)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub fn be32(&mut self, start: u64) -> Result<u32> {
        let b = self.bytes(4, start)?;
        Ok(u32::from_be_bytes(b.try_into().unwrap()))
    }
    pub fn be64(&mut self, start: u64) -> Result<u64> {
        let b = self.bytes(8, start)?;
        Ok(u64::from_be_bytes(b.try_into().unwrap()))
    }
    /// A counted string (u8 length, bytes, no NUL), as raw bytes.
    pub fn counted(&mut self, start: u64) -> Result<&'a [u8]> {
        let n = self.u8(start)? as usize;
        self.bytes(n, start)
    }
    /// A counted string that must be UTF-8 (RAMBlock and section names are ASCII).
    pub fn counted_str(&mut self, start: u64, what: &str) -> Result<&'a str> {
        let off = self.offset();
        let b = self.counted(start)?;
        std::str::from_utf8(b)
            .map_err(|_| DecodeError::invalid(off, format!("{what} is not valid UTF-8: {b:02x?}")))
    }
}

/// Big-endian encoder (infallible; builds a Vec).
#[derive(Default, Debug, Clone)]
pub struct Encoder {
    pub buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder { buf: Vec::new() }
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn be16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn be32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn be64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    /// Counted string; panics if longer than 255 bytes (a programming error).
    pub fn counted(&mut self, s: &[u8]) -> &mut Self {
        assert!(s.len() <= 255, "counted string longer than 255 bytes");
        self.buf.push(s.len() as u8);
        self.buf.extend_from_slice(s);
        self
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_reports_start() {
        let b = [0u8, 1, 2];
        let mut c = Cursor::new(&b, 100);
        assert_eq!(c.be16(100).unwrap(), 1);
        let e = c.be32(100).unwrap_err();
        assert_eq!(e, DecodeError::Incomplete { at: 100, needed: 3 });
        assert_eq!(c.offset(), 102);
    }
}
