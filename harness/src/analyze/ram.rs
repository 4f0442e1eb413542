//! RAM per block across every channel: how often each target page was sent
//! (normal, zero, XBZRLE; on the main channel, multifd channels or the
//! preempt channel), discarded, and requested on the return path.

use std::collections::HashMap;

use serde::Serialize;

use super::{Analysis, Requests};

const TPS: u64 = wire::TARGET_PAGE_SIZE;

/// Where a page was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Main,
    Multifd,
    Preempt,
}

/// What kind of page record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    Normal,
    Zero,
    Xbzrle,
}

/// One RAMBlock's counts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BlockStats {
    pub name: String,
    pub used_length: u64,
    /// Normal pages (main, multifd and preempt channels).
    pub pages: u64,
    pub zero_pages: u64,
    pub xbzrle_pages: u64,
    /// Of the above: on multifd channels, on the preempt channel, and on
    /// the main channel after POSTCOPY_LISTEN.
    pub multifd_pages: u64,
    pub preempt_pages: u64,
    pub postcopy_pages: u64,
    /// Distinct pages sent more than once.
    pub resent_pages: u64,
    /// Pages never sent at all.
    pub never_sent_pages: u64,
    pub discarded_pages: u64,
    pub requested_pages: u64,
    #[serde(skip)]
    sends: Vec<u8>,
    /// Per page: bit 0 sent after LISTEN, bit 1 requested.
    #[serde(skip)]
    flags: Vec<u8>,
}

/// The RAM tracker.
#[derive(Default)]
pub struct Ram {
    blocks: Vec<BlockStats>,
    index: HashMap<String, usize>,
    /// POSTCOPY_LISTEN was seen on the main channel.
    pub listening: bool,
    pub requests: Option<Requests>,
}

impl Ram {
    /// A block from a MEM_SIZE list (kept once).
    pub fn block(&mut self, name: &str, used_length: u64) {
        if self.index.contains_key(name) {
            return;
        }
        let n = used_length.div_ceil(TPS) as usize;
        self.index.insert(name.to_string(), self.blocks.len());
        self.blocks.push(BlockStats {
            name: name.to_string(),
            used_length,
            sends: vec![0; n],
            flags: vec![0; n],
            ..Default::default()
        });
    }

    fn get(&mut self, name: &str) -> Option<&mut BlockStats> {
        self.index.get(name).map(|&i| &mut self.blocks[i])
    }

    /// A page record; false when the block is unknown or the address is
    /// outside it.
    pub fn page(&mut self, name: &str, addr: u64, kind: PageKind, src: Source) -> bool {
        let listening = self.listening;
        let Some(b) = self.get(name) else { return false };
        let i = (addr / TPS) as usize;
        if i >= b.sends.len() {
            return false;
        }
        b.sends[i] = b.sends[i].saturating_add(1);
        match kind {
            PageKind::Normal => b.pages += 1,
            PageKind::Zero => b.zero_pages += 1,
            PageKind::Xbzrle => b.xbzrle_pages += 1,
        }
        match src {
            Source::Multifd => b.multifd_pages += 1,
            Source::Preempt => {
                b.preempt_pages += 1;
                b.flags[i] |= 1;
            }
            Source::Main if listening => {
                b.postcopy_pages += 1;
                b.flags[i] |= 1;
            }
            Source::Main => {}
        }
        true
    }

    /// Pages set by a mapped-ram bitmap.
    pub fn mapped_pages(&mut self, name: &str, present: impl Iterator<Item = usize>) {
        if let Some(b) = self.get(name) {
            for i in present {
                if i < b.sends.len() {
                    b.sends[i] = b.sends[i].saturating_add(1);
                    b.pages += 1;
                }
            }
        }
    }

    pub fn discard(&mut self, name: &str, len: u64) -> u64 {
        let pages = len.div_ceil(TPS);
        if let Some(b) = self.get(name) {
            b.discarded_pages += pages;
        }
        pages
    }

    pub fn request(&mut self, name: &str, start: u64, len: u64) {
        let r = self.requests.get_or_insert_with(Requests::default);
        r.messages += 1;
        r.pages += len.div_ceil(TPS);
        if let Some(b) = self.get(name) {
            let first = (start / TPS) as usize;
            for i in first..(first + len.div_ceil(TPS) as usize).min(b.flags.len()) {
                b.flags[i] |= 2;
                b.requested_pages += 1;
            }
        }
    }

    /// Derived counts into the analysis.
    pub fn finish(mut self, a: &mut Analysis) {
        let mut answered = 0;
        for b in &mut self.blocks {
            b.resent_pages = b.sends.iter().filter(|&&n| n > 1).count() as u64;
            b.never_sent_pages = b.sends.iter().filter(|&&n| n == 0).count() as u64;
            answered += b.flags.iter().filter(|&&f| f == 3).count() as u64;
        }
        if let Some(mut r) = self.requests.take() {
            r.answered_pages = answered;
            a.postcopy.get_or_insert_with(Default::default).requests = Some(r);
        }
        if let Some(p) = a.postcopy.as_mut() {
            p.preempt_pages = self.blocks.iter().map(|b| b.preempt_pages).sum();
        }
        a.blocks = self.blocks;
    }
}
