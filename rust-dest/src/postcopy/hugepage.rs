//! Assembling a huge page from its target pages before it is placed
//! (QEMU's `PostcopyTmpPage`, `migration/ram.c: ram_load_postcopy()`).
//!
//! Postcopy places whole pages of a RAMBlock atomically; on hugetlbfs a
//! page is a huge page (2 MiB or 1 GiB) while the stream carries target
//! pages (4 KiB). The source sends every target page of a huge page in one
//! run on one channel (`migration/ram.c: ram_save_host_page()`), so each
//! channel collects them in its own buffer, [`TmpPage`], and the huge page is
//! placed once its last target page arrived. A page of another huge page
//! before that is an error, as in QEMU ("Non-same host page"). Pure: no
//! memory is mapped here; [`super::runtime`] places what this returns.

use crate::ram::TARGET_PAGE_SIZE;

/// A target page of another huge page arrived before the current one was
/// complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("page {addr:#x} of RAMBlock {block:?} arrived while huge page {cur_offset:#x} of RAMBlock {cur_block:?} was incomplete ({got} of {want} target pages): the source must send a huge page in one run")]
pub struct NonSameHostPage {
    pub block: String,
    pub addr: u64,
    pub cur_block: String,
    pub cur_offset: u64,
    pub got: u64,
    pub want: u64,
}

/// What a target page completed.
#[derive(Debug, PartialEq, Eq)]
pub enum Assembled<'a> {
    /// More target pages of this huge page are to come.
    Partial,
    /// The huge page at `offset` is complete: its bytes, or `None` when
    /// every target page was a zero page.
    Whole { offset: u64, data: Option<&'a [u8]> },
}

/// One channel's huge page under assembly.
#[derive(Default)]
pub struct TmpPage {
    buf: Vec<u8>,
    /// (block, offset of the huge page) while one is being assembled.
    cur: Option<(String, u64)>,
    target_pages: u64,
    all_zero: bool,
}

impl TmpPage {
    /// Forget a partly assembled huge page (connection lost: its target
    /// pages were never marked received, so they come again).
    pub fn reset(&mut self) {
        self.cur = None;
        self.target_pages = 0;
        self.all_zero = true;
    }

    /// Whether a huge page is partly assembled.
    pub fn is_partial(&self) -> bool {
        self.cur.is_some()
    }

    /// Add the target page at `addr` of `block` (whose pages are
    /// `page_size` bytes): `data` is its bytes, `None` a zero page. Counts
    /// target pages like QEMU: the huge page is complete when as many have
    /// arrived as it holds.
    pub fn add(
        &mut self,
        block: &str,
        page_size: u64,
        addr: u64,
        data: Option<&[u8]>,
    ) -> Result<Assembled<'_>, NonSameHostPage> {
        let offset = addr - addr % page_size;
        match &self.cur {
            Some((b, o)) if b != block || *o != offset => {
                return Err(NonSameHostPage {
                    block: block.to_string(),
                    addr,
                    cur_block: b.clone(),
                    cur_offset: *o,
                    got: self.target_pages,
                    want: page_size / TARGET_PAGE_SIZE,
                });
            }
            Some(_) => {}
            None => {
                self.cur = Some((block.to_string(), offset));
                self.target_pages = 0;
                self.all_zero = true;
                if self.buf.len() < page_size as usize {
                    self.buf.resize(page_size as usize, 0);
                }
            }
        }
        let at = (addr - offset) as usize;
        let tps = TARGET_PAGE_SIZE as usize;
        match data {
            Some(d) => {
                self.all_zero = false;
                self.buf[at..at + tps].copy_from_slice(&d[..tps]);
            }
            None => self.buf[at..at + tps].fill(0),
        }
        self.target_pages += 1;
        if self.target_pages < page_size / TARGET_PAGE_SIZE {
            return Ok(Assembled::Partial);
        }
        let zero = self.all_zero;
        self.reset();
        Ok(Assembled::Whole {
            offset,
            data: if zero { None } else { Some(&self.buf[..page_size as usize]) },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HP: u64 = 2 << 20;
    const TPS: u64 = TARGET_PAGE_SIZE;
    const N: u64 = HP / TPS;

    fn page(i: u64) -> Vec<u8> {
        (0..TPS).map(|j| (i as u8) ^ (j as u8)).collect()
    }

    #[test]
    fn whole_huge_page_in_order() {
        let mut t = TmpPage::default();
        let base = 3 * HP;
        for i in 0..N - 1 {
            assert_eq!(
                t.add("pc.ram", HP, base + i * TPS, Some(&page(i))).unwrap(),
                Assembled::Partial
            );
        }
        assert!(t.is_partial());
        let Assembled::Whole { offset, data: Some(d) } =
            t.add("pc.ram", HP, base + (N - 1) * TPS, Some(&page(N - 1))).unwrap()
        else {
            panic!("not complete")
        };
        assert_eq!(offset, base);
        assert_eq!(d.len() as u64, HP);
        for i in 0..N {
            assert_eq!(&d[(i * TPS) as usize..((i + 1) * TPS) as usize], &page(i)[..], "page {i}");
        }
        assert!(!t.is_partial());
    }

    #[test]
    fn out_of_order_and_mixed_zero_pages() {
        let mut t = TmpPage::default();
        // A first huge page leaves non-zero bytes in the buffer.
        for i in 0..N {
            let _ = t.add("b", HP, i * TPS, Some(&[0xffu8; TPS as usize])).unwrap();
        }
        // The next one, backwards, with zero pages at odd indexes: those
        // must read zero, not the previous page's bytes.
        let mut last = None;
        for i in (0..N).rev() {
            let d = if i % 2 == 1 { None } else { Some(page(i)) };
            match t.add("b", HP, HP + i * TPS, d.as_deref()).unwrap() {
                Assembled::Partial => assert!(i > 0),
                Assembled::Whole { offset, data } => {
                    assert_eq!((i, offset), (0, HP));
                    last = data.map(|d| d.to_vec());
                }
            }
        }
        let d = last.expect("data");
        for i in 0..N {
            let s = &d[(i * TPS) as usize..((i + 1) * TPS) as usize];
            if i % 2 == 1 {
                assert!(s.iter().all(|&b| b == 0), "zero page {i}");
            } else {
                assert_eq!(s, &page(i)[..]);
            }
        }
    }

    #[test]
    fn all_zero_huge_page_has_no_data() {
        let mut t = TmpPage::default();
        for i in 0..N - 1 {
            assert_eq!(t.add("b", HP, i * TPS, None).unwrap(), Assembled::Partial);
        }
        assert_eq!(
            t.add("b", HP, (N - 1) * TPS, None).unwrap(),
            Assembled::Whole { offset: 0, data: None }
        );
    }

    #[test]
    fn another_huge_page_before_completion_is_refused() {
        let mut t = TmpPage::default();
        t.add("b", HP, HP + 5 * TPS, None).unwrap();
        let e = t.add("b", HP, 2 * HP, Some(&page(1))).unwrap_err();
        assert_eq!((e.cur_offset, e.got, e.want, e.addr), (HP, 1, N, 2 * HP));
        assert!(e.to_string().contains("in one run"), "{e}");
        // Same offset in another block is another huge page too.
        let e = t.add("c", HP, HP, None).unwrap_err();
        assert_eq!(e.cur_block, "b");
        // After a reset (connection lost) a new huge page may start.
        t.reset();
        assert_eq!(t.add("c", HP, HP, None).unwrap(), Assembled::Partial);
    }

    #[test]
    fn page_of_target_size_is_whole_at_once() {
        let mut t = TmpPage::default();
        let p = page(7);
        assert_eq!(
            t.add("b", TPS, 9 * TPS, Some(&p)).unwrap(),
            Assembled::Whole { offset: 9 * TPS, data: Some(&p[..]) }
        );
    }
}
