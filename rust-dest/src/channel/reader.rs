//! The buffered reader of an incoming channel (QEMU's
//! `migration/qemu-file.c` role): a window over the bytes received so far
//! with their absolute stream offset, and [`Reader::next_record`], the one
//! read → walk → read-more loop every channel uses.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::sync::Arc;

use crate::state::{Counters, Shared};
use wire::walk::{Item, Mode, Walked, Walker};
use wire::DecodeError;

/// The least a read asks for (and the window grows by) on a network
/// channel; the window starts at four of them.
pub const READ_CHUNK: usize = 1 << 20;

/// Why [`Reader::next_record`] could not deliver a record.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The channel ended inside the record at `at` (`needed` more bytes were
    /// needed); `empty` when not a single byte of it had arrived. `mode` is
    /// what the walker was reading.
    #[error("channel closed inside the record at byte offset {at} ({needed} more byte(s) needed)")]
    Truncated { at: u64, needed: usize, empty: bool, mode: Mode },
    #[error("read error at byte offset {at}: {source}")]
    Io { at: u64, source: io::Error },
    #[error("{0}")]
    Decode(DecodeError),
}

/// Buffered reader that tracks the absolute stream offset.
pub struct Reader {
    src: Box<dyn Read + Send>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Absolute offset of buf[0].
    base: u64,
    shared: Shared,
    /// A file that can be repositioned (mapped-ram) and the file offset of
    /// stream byte 0; `src` reads a duplicate sharing its position.
    seekable: Option<(Arc<File>, u64)>,
    /// Most bytes one read takes from the source ([`Reader::set_max_read`]).
    max_read: usize,
    /// The least a read asks for ([`READ_CHUNK`] unless made smaller).
    chunk: usize,
}

impl Reader {
    pub fn new(src: Box<dyn Read + Send>, shared: Shared) -> Reader {
        Reader::with_chunk(src, shared, READ_CHUNK)
    }

    /// A reader whose reads ask for at least `chunk` bytes (at least 1; the
    /// window starts at four chunks). The loader fed from memory by the fuzz
    /// targets uses small ones: no megabytes allocated and freed per run,
    /// and records span reads.
    pub fn with_chunk(src: Box<dyn Read + Send>, shared: Shared, chunk: usize) -> Reader {
        let chunk = chunk.max(1);
        Reader {
            src,
            buf: vec![0; 4 * chunk],
            start: 0,
            end: 0,
            base: 0,
            shared,
            seekable: None,
            max_read: usize::MAX,
            chunk,
        }
    }

    /// Take at most `n` bytes (at least 1) per read from the source: in
    /// postcopy the bytes buffered here but not yet loaded are a queue a
    /// requested page waits behind (`--postcopy-window`).
    pub fn set_max_read(&mut self, n: usize) {
        self.max_read = n.max(1);
    }

    /// `src` is a duplicate of `f` (same file position) whose stream starts
    /// at file offset `base`: [`Reader::seek_file`] may reposition it.
    pub fn set_seekable(&mut self, f: Arc<File>, base: u64) {
        self.seekable = Some((f, base));
    }

    /// Continue the stream at absolute file offset `to` (a mapped-ram
    /// stream continues after each block's pages): drops what is buffered.
    pub fn seek_file(&mut self, to: u64) -> io::Result<()> {
        let Some((f, base)) = &self.seekable else {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "the channel is not seekable"));
        };
        let Some(rel) = to.checked_sub(*base) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("file offset {to:#x} lies before the stream's start {base:#x}"),
            ));
        };
        (&**f).seek(io::SeekFrom::Start(to))?;
        self.start = 0;
        self.end = 0;
        self.base = rel;
        Ok(())
    }

    /// The bytes received and not consumed, and the offset of the first.
    pub fn window(&self) -> (&[u8], u64) {
        (&self.buf[self.start..self.end], self.base + self.start as u64)
    }

    pub fn offset(&self) -> u64 {
        self.base + self.start as u64
    }

    pub fn consume(&mut self, n: usize) {
        assert!(self.start + n <= self.end);
        self.start += n;
    }

    /// Read more bytes (at least one). `need` is how many more the record
    /// being read still lacks, as the peer declared it: the window grows
    /// towards it only as bytes arrive (at most doubling per read), so a
    /// length the peer declares but never sends (a PACKAGED command of
    /// 0xFFFFFFFF bytes) allocates nothing ahead of the data. Returns false
    /// on end of stream.
    pub fn fill(&mut self, need: usize) -> io::Result<bool> {
        let avail = self.end - self.start;
        let grow = need.clamp(self.chunk, avail.max(self.chunk));
        let want_cap = avail + grow;
        if self.start > 0 && self.buf.len() - self.end < grow {
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < want_cap {
            self.buf.resize(want_cap, 0);
        }
        let lim = self.buf.len().min(self.end.saturating_add(self.max_read));
        loop {
            match self.src.read(&mut self.buf[self.end..lim]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    Counters::add(&self.shared.counters().transferred, n as u64);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The next record of the channel as walked by `w`, reading more bytes
    /// until it is complete. `f` gets the record, its offset and the walker
    /// (past the record), and returns
    /// its result and whether the record is taken (consumed); a record not
    /// taken stays in the window. `Ok(None)`: the walker expects nothing more.
    pub fn next_record<T, E: From<ReadError>>(
        &mut self,
        w: &mut Walker,
        f: impl FnOnce(Item<'_>, u64, &Walker) -> Result<(T, bool), E>,
    ) -> Result<Option<T>, E> {
        loop {
            let (win, base) = (&self.buf[self.start..self.end], self.base + self.start as u64);
            let (at, needed) = match w.next(win, base).map_err(ReadError::Decode)? {
                Walked::End => return Ok(None),
                Walked::Record { item, offset, len } => {
                    let (v, take) = f(item, offset, w)?;
                    if take {
                        self.consume(len);
                    }
                    return Ok(Some(v));
                }
                Walked::NeedMore { at, needed } => (at, needed),
            };
            match self.fill(needed) {
                Ok(true) => {}
                Ok(false) => {
                    let empty = self.start == self.end;
                    return Err(ReadError::Truncated { at, needed, empty, mode: w.mode() }.into());
                }
                Err(source) => return Err(ReadError::Io { at: self.offset(), source }.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ram::RamTable;

    /// Serves `data`, then ends (or would block forever: the test only
    /// needs the bytes it gets before the end).
    fn reader(data: Vec<u8>) -> Reader {
        let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
        Reader::new(Box::new(io::Cursor::new(data)), shared)
    }

    /// A record that declares 4 GiB and sends 100 bytes: the window grows
    /// with what arrives, never to the declared length.
    #[test]
    fn a_declared_length_allocates_nothing_ahead_of_the_bytes() {
        let mut r = reader(vec![7; 100]);
        let mut w = Walker::with_mode(Mode::Package { len: u32::MAX }, true);
        let e = r.next_record(&mut w, |_, _, _| Ok::<_, ReadError>(((), true))).unwrap_err();
        assert!(
            matches!(e, ReadError::Truncated { at: 0, needed, .. } if needed == u32::MAX as usize - 100),
            "{e:?}"
        );
        assert!(r.buf.len() <= 8 * READ_CHUNK, "window grew to {} bytes", r.buf.len());
    }

    /// A record that does arrive in full, larger than any read, is
    /// delivered whole; the window at most doubles what arrived.
    #[test]
    fn a_large_record_that_arrives_is_delivered() {
        let len = 9 * READ_CHUNK + 5;
        let mut r = reader(vec![1; len]);
        let mut w = Walker::with_mode(Mode::Package { len: len as u32 }, true);
        let got = r
            .next_record(&mut w, |item, _, _| match item {
                Item::Package(b) => Ok::<_, ReadError>((b.len(), true)),
                other => panic!("{other:?}"),
            })
            .unwrap();
        assert_eq!(got, Some(len));
        assert!(r.buf.len() <= 2 * len + READ_CHUNK, "window {} for {len}", r.buf.len());
    }
    /// In postcopy a read takes at most the window, so what is buffered
    /// but not loaded stays short; a record longer than that still
    /// arrives whole, read by read.
    #[test]
    fn max_read_bounds_each_read() {
        let mut r = reader(vec![3; 3 * READ_CHUNK]);
        r.set_max_read(4096);
        assert!(r.fill(1).unwrap());
        assert_eq!(r.window().0.len(), 4096);
        assert!(r.fill(1).unwrap());
        assert_eq!(r.window().0.len(), 8192);
        let mut w = Walker::with_mode(Mode::Package { len: 100_000 }, true);
        let got = r
            .next_record(&mut w, |item, _, _| match item {
                Item::Package(b) => Ok::<_, ReadError>((b.len(), true)),
                other => panic!("{other:?}"),
            })
            .unwrap();
        assert_eq!(got, Some(100_000));
        assert!(r.window().0.len() < 4096, "read past the record by more than one read");
    }
}
