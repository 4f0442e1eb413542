//! The other recorded connections: multifd channels (`wire::multifd`
//! packets, counted without decompressing), the postcopy-preempt channel
//! (bare RAM records) and the return path (`wire::rp` messages).

use std::path::Path;

use wire::multifd::{Compression, InitPacket, MultifdError, PacketFormat, PacketLayout, RamPacket};
use wire::ramrec::{BlockRef, RamRecord};
use wire::rp::{decode_recv_bitmap_data, decode_rp, RpMessage};
use wire::walk::{Item, Walker};
use wire::{Cursor, DecodeError};

use super::ram::{PageKind, Ram, Source};
use super::{Analysis, Damage, MultifdChannel, ReturnPath};

/// The 9.0 layout reads 7.2's packets too (their zero_pages is 0).
const FMT: PacketFormat =
    PacketFormat { layout: PacketLayout::V9, page_size: wire::TARGET_PAGE_SIZE as u32 };

fn damage_mf(path: &Path, e: &MultifdError) -> Damage {
    Damage { path: path.to_path_buf(), offset: e.at(), expected: e.to_string() }
}

/// A multifd channel: its initial packet, then RAM packets and payloads.
pub fn multifd(a: &mut Analysis, ram: &mut Ram, path: &Path, b: &[u8]) {
    let mut c = Cursor::new(b, 0);
    let init = match InitPacket::decode(&mut c) {
        Ok(i) => i,
        Err(e) => return a.damage.push(damage_mf(path, &e)),
    };
    let mut ch = MultifdChannel { path: path.to_path_buf(), id: init.id, ..Default::default() };
    let mut comp: Option<Compression> = None;
    while c.remaining() > 0 {
        let at = c.offset();
        let p = match RamPacket::decode(&mut c, &FMT) {
            Ok(p) => p,
            Err(e) => {
                a.damage.push(damage_mf(path, &e));
                break;
            }
        };
        if comp.is_none() && p.normal_pages > 0 {
            match p.compression(&FMT, at) {
                Ok(m) => comp = Some(m),
                Err(e) => {
                    a.damage.push(damage_mf(path, &e));
                    break;
                }
            }
        }
        let len = match p.payload_len(&FMT, comp.unwrap_or(Compression::None), at) {
            Ok(l) => l,
            Err(e) => {
                a.damage.push(damage_mf(path, &e));
                break;
            }
        };
        if c.remaining() < len {
            let e = DecodeError::Incomplete { at, needed: len - c.remaining() };
            a.damage.push(Damage::from_decode(path, &e));
            break;
        }
        c.set_pos(c.pos() + len);
        ch.packets += 1;
        if p.is_sync() {
            ch.syncs += 1;
        }
        for (kind, offs) in
            [(PageKind::Normal, p.normal_offsets()), (PageKind::Zero, p.zero_offsets())]
        {
            for &off in offs {
                if !ram.page(&p.ramblock, off, kind, Source::Multifd) {
                    let what = format!("page at {off:#x} of block {:?}: no such block (or beyond its end) in MEM_SIZE", p.ramblock);
                    a.damage.push(Damage { path: path.to_path_buf(), offset: at, expected: what });
                    a.multifd.push(ch);
                    return;
                }
                match kind {
                    PageKind::Zero => ch.zero_pages += 1,
                    _ => ch.pages += 1,
                }
            }
        }
    }
    ch.compression = comp.map(|m| m.name().to_string());
    a.multifd.push(ch);
}

/// The postcopy-preempt channel: bare RAM records up to EOS.
pub fn preempt(a: &mut Analysis, ram: &mut Ram, path: &Path, b: &[u8]) {
    let mut last: Option<String> = None;
    for r in Walker::bare().records(b) {
        let (off, rec) = match r {
            Ok((off, Item::Ram(rec))) => (off, rec),
            Ok(_) => continue,
            Err(e) => return a.damage.push(Damage::from_decode(path, &e)),
        };
        let (block, addr, kind) = match rec {
            RamRecord::Page { addr, block, .. } => (block, addr, PageKind::Normal),
            RamRecord::Zero { addr, block, .. } => (block, addr, PageKind::Zero),
            _ => continue,
        };
        let name = match block {
            BlockRef::Named(n) => n.to_string(),
            BlockRef::Continue => match &last {
                Some(n) => n.clone(),
                None => {
                    let e = DecodeError::invalid(off, "CONTINUE without a block named before");
                    return a.damage.push(Damage::from_decode(path, &e));
                }
            },
        };
        if !ram.page(&name, addr, kind, Source::Preempt) {
            let e =
                DecodeError::invalid(off, format!("page at {addr:#x} of unknown block {name:?}"));
            return a.damage.push(Damage::from_decode(path, &e));
        }
        last = Some(name);
    }
}

/// A recorded return path: messages, page requests, RECV_BITMAP data.
pub fn return_path(a: &mut Analysis, ram: &mut Ram, path: &Path, b: &[u8]) {
    let mut rp = ReturnPath { path: path.to_path_buf(), ..Default::default() };
    let mut c = Cursor::new(b, 0);
    let mut last: Option<String> = None;
    while c.remaining() > 0 {
        let m = match decode_rp(&mut c) {
            Ok(m) => m,
            Err(e) => {
                a.damage.push(Damage::from_decode(path, &e));
                break;
            }
        };
        rp.messages += 1;
        match m {
            RpMessage::Shut(v) => rp.shut = Some(v),
            RpMessage::Pong(_) => rp.pongs += 1,
            RpMessage::ReqPagesId { start, len, block } => {
                ram.request(&block, start, len as u64);
                last = Some(block);
            }
            RpMessage::ReqPages { start, len } => {
                let n = last.clone().unwrap_or_default();
                ram.request(&n, start, len as u64);
            }
            RpMessage::RecvBitmap { .. } => {
                rp.recv_bitmaps += 1;
                if let Err(e) = decode_recv_bitmap_data(&mut c) {
                    a.damage.push(Damage::from_decode(path, &e));
                    break;
                }
            }
            RpMessage::ResumeAck(_) => rp.resume_acks += 1,
            RpMessage::SwitchoverAck => rp.switchover_acks += 1,
        }
    }
    a.return_path.push(rp);
}
