//! Return-path messages (destination → source, on the main socket's reverse
//! direction): encode them as a destination does, decode them as a source does
//! (`migration/migration.c: migrate_send_rp_message()`,
//! `source_return_path_thread()`).
//!
//! ```text
//! be16 type  be16 len (<= 512)  payload
//! 1 SHUT          len 4       be32 0 = success, else failure; the last message
//! 2 PONG          len 4       be32 value from PING
//! 3 REQ_PAGES_ID  len 13+n    be64 start, be32 length, counted block name
//! 4 REQ_PAGES     len 12      be64 start, be32 length (block of the previous request)
//! 5 RECV_BITMAP   len 1+n     counted block name, then outside the message:
//!                             be64 size, size bytes of bitmap (LE 64-bit words),
//!                             be64 0x0123456789abcdef
//! 6 RESUME_ACK    len 4       be32 1
//! 7 SWITCHOVER_ACK len 0      (QEMU 8.1 and later)
//! ```
//!
//! A source with a return path reports `completed` only after SHUT; page
//! requests (postcopy) name their block the first time and whenever it changes;
//! the RECV_BITMAP reply's bitmap has one bit per target page, set when the
//! destination has the page (`migration/ram.c: ramblock_recv_bitmap_send()`).
//! Details: `docs/wire-format.md`, sections 8 and 9.

use super::consts::*;
use super::cursor::{Cursor, DecodeError, Encoder, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RpMessage {
    Shut(u32),
    Pong(u32),
    ReqPagesId {
        start: u64,
        len: u32,
        block: String,
    },
    ReqPages {
        start: u64,
        len: u32,
    },
    /// Header of a RECV_BITMAP reply; the bitmap data follows outside the
    /// message (see [`encode_recv_bitmap_data`]).
    RecvBitmap {
        block: String,
    },
    ResumeAck(u32),
    SwitchoverAck,
}

impl RpMessage {
    pub fn code(&self) -> u16 {
        match self {
            RpMessage::Shut(_) => MIG_RP_MSG_SHUT,
            RpMessage::Pong(_) => MIG_RP_MSG_PONG,
            RpMessage::ReqPagesId { .. } => MIG_RP_MSG_REQ_PAGES_ID,
            RpMessage::ReqPages { .. } => MIG_RP_MSG_REQ_PAGES,
            RpMessage::RecvBitmap { .. } => MIG_RP_MSG_RECV_BITMAP,
            RpMessage::ResumeAck(_) => MIG_RP_MSG_RESUME_ACK,
            RpMessage::SwitchoverAck => MIG_RP_MSG_SWITCHOVER_ACK,
        }
    }

    pub fn encode(&self, e: &mut Encoder) {
        let mut p = Encoder::new();
        match self {
            RpMessage::Shut(v) | RpMessage::Pong(v) | RpMessage::ResumeAck(v) => {
                p.be32(*v);
            }
            RpMessage::ReqPagesId { start, len, block } => {
                p.be64(*start).be32(*len).counted(block.as_bytes());
            }
            RpMessage::ReqPages { start, len } => {
                p.be64(*start).be32(*len);
            }
            RpMessage::RecvBitmap { block } => {
                p.counted(block.as_bytes());
            }
            RpMessage::SwitchoverAck => {}
        }
        e.be16(self.code()).be16(p.buf.len() as u16).bytes(&p.buf);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        self.encode(&mut e);
        e.finish()
    }
}

/// Decode one return-path message (what a source, e.g. the synthetic one,
/// reads). On Incomplete the cursor is unchanged.
pub fn decode_rp(c: &mut Cursor) -> Result<RpMessage> {
    let save = c.pos();
    let r = (|| {
        let start = c.offset();
        let ty = c.be16(start)?;
        let len = c.be16(start)? as usize;
        if len > 512 {
            return Err(DecodeError::invalid(
                start,
                format!("return-path message type {ty}: length {len} exceeds 512"),
            ));
        }
        let p = c.bytes(len, start)?;
        let mut pc = Cursor::new(p, start + 4);
        let fixed = |n: usize| -> Result<()> {
            if len != n {
                Err(DecodeError::invalid(
                    start,
                    format!("return-path message type {ty}: length {len}, expected {n}"),
                ))
            } else {
                Ok(())
            }
        };
        let m = match ty {
            MIG_RP_MSG_SHUT => {
                fixed(4)?;
                RpMessage::Shut(pc.be32(start)?)
            }
            MIG_RP_MSG_PONG => {
                fixed(4)?;
                RpMessage::Pong(pc.be32(start)?)
            }
            MIG_RP_MSG_REQ_PAGES_ID => {
                let s = pc.be64(start)?;
                let l = pc.be32(start)?;
                let b = pc.counted_str(start, "block name")?.to_string();
                if pc.remaining() != 0 {
                    return Err(DecodeError::invalid(start, "REQ_PAGES_ID: trailing bytes"));
                }
                RpMessage::ReqPagesId { start: s, len: l, block: b }
            }
            MIG_RP_MSG_REQ_PAGES => {
                fixed(12)?;
                RpMessage::ReqPages { start: pc.be64(start)?, len: pc.be32(start)? }
            }
            MIG_RP_MSG_RECV_BITMAP => {
                RpMessage::RecvBitmap { block: pc.counted_str(start, "block name")?.to_string() }
            }
            MIG_RP_MSG_RESUME_ACK => {
                fixed(4)?;
                RpMessage::ResumeAck(pc.be32(start)?)
            }
            MIG_RP_MSG_SWITCHOVER_ACK => {
                fixed(0)?;
                RpMessage::SwitchoverAck
            }
            _ => {
                return Err(DecodeError::invalid(
                    start,
                    format!("invalid return-path message type {ty}"),
                ))
            }
        };
        Ok(m)
    })();
    if r.is_err() {
        c.set_pos(save);
    }
    r
}

/// The raw data that follows a RECV_BITMAP reply: be64 size, the bitmap as
/// little-endian 64-bit words (padded to a multiple of 8 bytes), end marker.
pub fn encode_recv_bitmap_data(e: &mut Encoder, bitmap_le: &[u8]) {
    let mut b = bitmap_le.to_vec();
    b.resize(bitmap_le.len().div_ceil(8) * 8, 0);
    e.be64(b.len() as u64).bytes(&b).be64(RAMBLOCK_RECV_BITMAP_ENDING);
}

/// Decode the data following a RECV_BITMAP reply; returns the bitmap bytes.
pub fn decode_recv_bitmap_data<'a>(c: &mut Cursor<'a>) -> Result<&'a [u8]> {
    let save = c.pos();
    let r = (|| {
        let start = c.offset();
        let size = c.be64(start)?;
        if size > (1 << 32) {
            return Err(DecodeError::invalid(
                start,
                format!("recv bitmap: size {size} is implausible"),
            ));
        }
        let b = c.bytes(size as usize, start)?;
        let moff = c.offset();
        let end = c.be64(start)?;
        if end != RAMBLOCK_RECV_BITMAP_ENDING {
            return Err(DecodeError::invalid(
                moff,
                format!("recv bitmap: bad end marker {end:#018x}"),
            ));
        }
        Ok(b)
    })();
    if r.is_err() {
        c.set_pos(save);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_all() {
        for m in [
            RpMessage::Shut(0),
            RpMessage::Shut(1),
            RpMessage::Pong(0x42),
            RpMessage::ReqPagesId { start: 0x200000, len: 0x200000, block: "mem0".into() },
            RpMessage::ReqPages { start: 0x1000, len: 4096 },
            RpMessage::RecvBitmap { block: "pc.ram".into() },
            RpMessage::ResumeAck(1),
            RpMessage::SwitchoverAck,
        ] {
            let b = m.to_bytes();
            let mut c = Cursor::new(&b, 0);
            assert_eq!(decode_rp(&mut c).unwrap(), m);
            assert_eq!(c.remaining(), 0);
        }
    }

    #[test]
    fn spec_examples() {
        assert_eq!(RpMessage::Pong(1).to_bytes(), [0, 2, 0, 4, 0, 0, 0, 1]);
        assert_eq!(RpMessage::Shut(0).to_bytes(), [0, 1, 0, 4, 0, 0, 0, 0]);
        // docs/wire-format.md §11: hugepage request for "mem0" at 2 MiB.
        let want =
            [0u8, 3, 0, 0x11, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0x20, 0, 0, 4, b'm', b'e', b'm', b'0'];
        assert_eq!(
            RpMessage::ReqPagesId { start: 0x200000, len: 0x200000, block: "mem0".into() }
                .to_bytes(),
            want
        );
    }

    #[test]
    fn bitmap_data() {
        let mut e = Encoder::new();
        encode_recv_bitmap_data(&mut e, &[0xff, 0x01, 0x80]);
        assert_eq!(e.buf.len(), 8 + 8 + 8);
        let mut c = Cursor::new(&e.buf, 0);
        assert_eq!(decode_recv_bitmap_data(&mut c).unwrap(), &[0xff, 1, 0x80, 0, 0, 0, 0, 0]);
        let mut bad = e.buf.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(decode_recv_bitmap_data(&mut Cursor::new(&bad, 0)).is_err());
    }
}
