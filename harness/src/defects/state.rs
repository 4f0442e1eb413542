//! What the mutations of one connection share: the state they remember
//! while the stream passes ([`State`]), what every connection of a proxy
//! shares ([`Shared`]: page requests, what was changed), and RAM records
//! split and rebuilt, emitted so that the destination's view of the current
//! RAMBlock stays right.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use wire::consts::*;

/// State shared by the directions of every connection of one proxy.
#[derive(Debug, Default)]
pub struct Shared {
    /// Pages the destination requested on the return path: (block, start).
    pub requested: Mutex<VecDeque<(Option<String>, u64)>>,
    /// What the mutation did, in words (empty: it found nothing to change).
    pub applied: Mutex<Vec<String>>,
}

impl Shared {
    pub fn note(&self, what: String) {
        tracing::info!("defect proxy: {what}");
        self.applied.lock().unwrap_or_else(|e| e.into_inner()).push(what);
    }
    pub fn applied(&self) -> Vec<String> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the mutations remember while the stream passes.
#[derive(Debug, Default)]
pub struct State {
    /// Block of the last record naming one, as the source sent it.
    pub src_block: Option<String>,
    /// Block the destination believes current (after our changes).
    pub dst_block: Option<String>,
    /// RAMBlock lengths from MEM_SIZE.
    pub sizes: HashMap<String, u64>,
    /// Guest pages (mem0 offsets) sent so far.
    pub seen: HashSet<u64>,
    /// The page a mutation picked.
    pub target: Option<u64>,
    /// The mutation was applied (once-only mutations stop here).
    pub done: bool,
    /// POSTCOPY_RUN has passed.
    pub run_seen: bool,
    /// EOS records seen.
    pub eos: u32,
    /// A held RAM record (raw bytes) waiting for its swap partner.
    pub held: Option<Vec<u8>>,
    /// A held PACKAGED command waiting for its blob.
    pub pkg_cmd: Option<Vec<u8>>,
    /// The precopy device-state tail, buffered from its first section.
    pub tail: Option<Vec<u8>>,
    /// Precopy content of guest pages (for [`Mutation::StalePageAfterRun`]).
    pub old: HashMap<u64, Vec<u8>>,
}

/// A RAM record split: the flags word, the block name (None with CONTINUE), the body.
pub fn ram_parts(raw: &[u8]) -> (u64, Option<&[u8]>, &[u8]) {
    let word = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
    let flags = word & 0xfff;
    if flags & RAM_SAVE_FLAG_CONTINUE != 0
        || flags & (RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_XBZRLE) == 0
    {
        return (word, None, &raw[8..]);
    }
    let n = raw[8] as usize;
    (word, Some(&raw[9..9 + n]), &raw[9 + n..])
}

/// A RAM record from its parts.
pub fn build_ram(word: u64, name: Option<&[u8]>, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + body.len() + name.map_or(0, |n| n.len()));
    let word = match name {
        Some(_) => word & !RAM_SAVE_FLAG_CONTINUE,
        None => word | RAM_SAVE_FLAG_CONTINUE,
    };
    v.extend_from_slice(&word.to_be_bytes());
    if let Some(n) = name {
        v.push(n.len() as u8);
        v.extend_from_slice(n);
    }
    v.extend_from_slice(body);
    v
}

/// Emit a page-like RAM record so that the destination places it in the
/// block the source meant: a CONTINUE record gets the block name back when
/// the destination's current block differs.
pub fn emit_ram(st: &mut State, raw: &[u8], out: &mut Vec<u8>) {
    let (word, name, body) = ram_parts(raw);
    let pagey = word & (RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_XBZRLE) != 0;
    if !pagey {
        out.extend_from_slice(raw);
        return;
    }
    match name {
        Some(n) => {
            st.dst_block = Some(String::from_utf8_lossy(n).into_owned());
            out.extend_from_slice(raw);
        }
        None if st.dst_block != st.src_block => {
            let n = st.src_block.clone().unwrap_or_default();
            out.extend_from_slice(&build_ram(word, Some(n.as_bytes()), body));
            st.dst_block = st.src_block.clone();
        }
        None => out.extend_from_slice(raw),
    }
}
