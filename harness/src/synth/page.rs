//! One page of the synthetic source's RAM ([`Page`]): block, page index and
//! content, as RAM records and multifd packets carry it.

use crate::verify::model::{content_bytes, Content};

/// One page record of a RAM section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub block: String,
    /// Target-page index within the block.
    pub index: u64,
    pub content: Content,
}

impl Page {
    pub fn pattern(block: &str, index: u64, version: u8) -> Page {
        Page { block: block.into(), index, content: Content::Pattern(version) }
    }
    pub fn zero(block: &str, index: u64) -> Page {
        Page { block: block.into(), index, content: Content::Zero }
    }
    pub fn bytes(&self) -> Vec<u8> {
        content_bytes(&self.block, self.index, self.content)
    }
}

/// Pattern pages `range` of `block`, all with `version`.
pub fn pattern_pages(block: &str, range: std::ops::Range<u64>, version: u8) -> Vec<Page> {
    range.map(|i| Page::pattern(block, i, version)).collect()
}
