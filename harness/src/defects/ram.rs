//! RAM-record mutations: pages dropped, moved, zeroed, swapped, re-sent
//! stale or misdirected, a lost EOS, CONTINUE across a block change, a short
//! MEM_SIZE, a dropped discard range. Each picks one target page of the
//! guest's RAM (`mem0`, above the first MiB, so the firmware's pages are left
//! alone) and reports what it changed through [`Shared::note`].

use wire::command::discard_payload;
use wire::consts::*;
use wire::ramrec::{BlockRef, RamRecord};
use wire::units::TARGET_PAGE_SIZE;

use super::mutation::Mutation;
use super::state::{build_ram, emit_ram, ram_parts, Shared, State};

/// The guest RAM block of the test VMs (`-object memory-backend-file,id=mem0`).
const GUEST_BLOCK: &str = "mem0";
/// Pages below this are left alone (firmware, boot code).
const LOW: u64 = 1 << 20;
const PAGE: u64 = TARGET_PAGE_SIZE;

fn guest_page(st: &State, addr: u64) -> bool {
    st.src_block.as_deref() == Some(GUEST_BLOCK)
        && addr >= LOW
        && st.sizes.get(GUEST_BLOCK).is_some_and(|&s| addr + 2 * PAGE <= s)
}

pub(super) fn on_ram(
    m: Mutation,
    st: &mut State,
    sh: &Shared,
    r: &RamRecord,
    raw: &[u8],
    out: &mut Vec<u8>,
) {
    let prev_block = st.src_block.clone();
    let addr = match r {
        RamRecord::Page { addr, block, .. }
        | RamRecord::Zero { addr, block, .. }
        | RamRecord::Xbzrle { addr, block, .. }
        | RamRecord::CompressPage { addr, block, .. } => {
            if let BlockRef::Named(n) = block {
                st.src_block = Some((*n).to_string());
            }
            Some(*addr)
        }
        RamRecord::MemSize { blocks, .. } => {
            for b in blocks {
                st.sizes.insert(b.name.clone(), b.used_length);
            }
            if m == Mutation::MemSizeShort && !st.done {
                if let Some(b) = blocks.iter().find(|b| b.name == GUEST_BLOCK) {
                    st.done = true;
                    sh.note(format!(
                        "MEM_SIZE: {GUEST_BLOCK} announced as {:#x} instead of {:#x}",
                        b.used_length - PAGE,
                        b.used_length
                    ));
                    out.extend_from_slice(&mem_size_short(raw, b.used_length));
                    return;
                }
            }
            None
        }
        // The proxy walks socket streams: never mapped-ram (file only).
        RamRecord::MappedRamSize { .. } | RamRecord::MappedRamBlock { .. } => None,
        RamRecord::Eos => {
            st.eos += 1;
            // The third EOS: one of the iterative sections.
            if m == Mutation::DropRamEos && !st.done && st.eos == 3 {
                st.done = true;
                sh.note("the EOS of the third RAM section left out".into());
                return;
            }
            None
        }
        RamRecord::MultifdFlush => None,
    };
    let Some(addr) = addr else {
        out.extend_from_slice(raw);
        return;
    };
    let data = match r {
        RamRecord::Page { data, .. } => Some(*data),
        _ => None,
    };
    let guest = guest_page(st, addr);
    match m {
        Mutation::StaleRedirtiedPage if guest => {
            if st.target == Some(addr) {
                return; // every re-send of the target dropped
            }
            if st.target.is_none() && st.seen.contains(&addr) {
                st.target = Some(addr);
                sh.note(format!(
                    "{GUEST_BLOCK}@{addr:#x}: re-sent page dropped (and every later re-send)"
                ));
                return;
            }
            st.seen.insert(addr);
        }
        Mutation::ShiftPage if guest && !st.done && nonzero(data) => {
            st.done = true;
            sh.note(format!("{GUEST_BLOCK}@{addr:#x}: page placed at {:#x}", addr - PAGE));
            let (word, name, body) = ram_parts(raw);
            emit_ram(st, &build_ram(word - PAGE, name, body), out);
            return;
        }
        Mutation::PageToZero if guest && !st.done && nonzero(data) => {
            st.done = true;
            sh.note(format!("{GUEST_BLOCK}@{addr:#x}: non-zero page sent as a ZERO record"));
            let (word, name, _) = ram_parts(raw);
            let w = (word & !RAM_SAVE_FLAG_PAGE) | RAM_SAVE_FLAG_ZERO;
            emit_ram(st, &build_ram(w, name, &[0]), out);
            return;
        }
        Mutation::SwapPages if !st.done && data.is_some() => {
            if let Some(h) = st.held.take() {
                let (hw, hn, hbody) = ram_parts(&h);
                let (w, n, body) = ram_parts(raw);
                if hbody != body && st.src_block == prev_block {
                    st.done = true;
                    sh.note(format!(
                        "{}: pages {:#x} and {addr:#x} swapped",
                        st.src_block.as_deref().unwrap_or("?"),
                        hw & !0xfff
                    ));
                    emit_ram(st, &build_ram(hw, hn, body), out);
                    emit_ram(st, &build_ram(w, n, hbody), out);
                    return;
                }
                emit_ram(st, &h, out);
            }
            // Any page of the guest's RAM (low memory too: its pages differ).
            if st.src_block.as_deref() == Some(GUEST_BLOCK) {
                st.held = Some(raw.to_vec());
                return;
            }
        }
        Mutation::StalePageAfterRun if st.src_block.as_deref() == Some(GUEST_BLOCK) => {
            if !st.run_seen {
                if let Some(d) = data {
                    st.old.insert(addr, d.to_vec());
                }
            } else if !st.done {
                if let (Some(d), Some(o)) = (data, st.old.get(&addr).cloned()) {
                    if o != d {
                        st.done = true;
                        sh.note(format!("{GUEST_BLOCK}@{addr:#x}: sent again after RUN with its precopy content"));
                        emit_ram(st, raw, out);
                        let (w, n, _) = ram_parts(raw);
                        emit_ram(st, &build_ram(w, n, &o), out);
                        return;
                    }
                }
            }
        }
        Mutation::WrongPageAnswer if st.run_seen && !st.done && data.is_some() => {
            let asked = {
                let q = sh.requested.lock().unwrap_or_else(|e| e.into_inner());
                q.iter().any(|(b, s)| {
                    *s == addr && b.as_deref().is_none_or(|b| Some(b) == st.src_block.as_deref())
                })
            };
            if asked && guest {
                st.done = true;
                sh.note(format!(
                    "{GUEST_BLOCK}@{addr:#x}: requested page answered at {:#x}",
                    addr + PAGE
                ));
                let (word, name, body) = ram_parts(raw);
                emit_ram(st, &build_ram(word + PAGE, name, body), out);
                return;
            }
        }
        Mutation::ContinueAcrossBlock if !st.done && prev_block.is_some() => {
            let (word, name, body) = ram_parts(raw);
            let fits = prev_block.as_ref().and_then(|b| st.sizes.get(b)).is_some_and(|&s| addr < s);
            if name.is_some() && st.src_block != prev_block && fits && st.dst_block == prev_block {
                st.done = true;
                sh.note(format!(
                    "{}@{addr:#x}: sent with CONTINUE right after a page of {}",
                    st.src_block.as_deref().unwrap_or("?"),
                    prev_block.as_deref().unwrap_or("?")
                ));
                // The destination keeps its old block: placed there.
                out.extend_from_slice(&build_ram(word, None, body));
                return;
            }
        }
        _ => {}
    }
    emit_ram(st, raw, out);
}

fn nonzero(data: Option<&[u8]>) -> bool {
    data.is_some_and(|d| d.iter().any(|&b| b != 0))
}

/// The MEM_SIZE record with the guest block's length one page shorter (the
/// total too, so the record stays self-consistent).
fn mem_size_short(raw: &[u8], len: u64) -> Vec<u8> {
    let mut v = raw.to_vec();
    let word = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
    let total = (word & !0xfff) - PAGE;
    v[..8].copy_from_slice(&(total | (word & 0xfff)).to_be_bytes());
    let want = len.to_be_bytes();
    let mut p = 8;
    while p < v.len() {
        let n = v[p] as usize;
        let lp = p + 1 + n;
        if lp + 8 > v.len() {
            break;
        }
        if &v[p + 1..lp] == GUEST_BLOCK.as_bytes() && v[lp..lp + 8] == want {
            v[lp..lp + 8].copy_from_slice(&(len - PAGE).to_be_bytes());
            break;
        }
        p = lp + 8;
    }
    v
}

/// POSTCOPY_RAM_DISCARD with its first range left out (the command dropped
/// when that was its only range).
pub(super) fn drop_discard(
    st: &mut State,
    sh: &Shared,
    payload: &[u8],
    raw: &[u8],
    out: &mut Vec<u8>,
) {
    let n = payload.get(1).copied().unwrap_or(0) as usize;
    let name = payload.get(2..2 + n).unwrap_or_default();
    // Version, counted name, a terminating 0 byte, then (start, length) pairs.
    let ranges: Vec<(u64, u64)> = payload
        .get(3 + n..)
        .unwrap_or_default()
        .chunks_exact(16)
        .map(|c| {
            (
                u64::from_be_bytes(c[..8].try_into().expect("8")),
                u64::from_be_bytes(c[8..].try_into().expect("8")),
            )
        })
        .collect();
    if name != GUEST_BLOCK.as_bytes() || ranges.is_empty() {
        out.extend_from_slice(raw);
        return;
    }
    st.done = true;
    sh.note(format!(
        "discard of {GUEST_BLOCK} range {:#x}+{:#x} dropped ({} range(s) left in the command)",
        ranges[0].0,
        ranges[0].1,
        ranges.len() - 1
    ));
    if ranges.len() == 1 {
        return;
    }
    let p = discard_payload(payload[0], name, Some(0), &ranges[1..]);
    out.push(QEMU_VM_COMMAND);
    out.extend_from_slice(&MIG_CMD_POSTCOPY_RAM_DISCARD.to_be_bytes());
    out.extend_from_slice(&(p.len() as u16).to_be_bytes());
    out.extend_from_slice(&p);
}
