//! How a multifd channel's bytes come in. Like QEMU's `multifd_recv_thread()`
//! (`qio_channel_read_all()` for the packet, `qio_channel_readv_all()` for
//! the pages), nothing is read ahead: the initial packet and every packet
//! header are read exactly, then the payload. Uncompressed pages go from the
//! socket straight into guest RAM (one `recvmsg()` with an iovec per run of
//! consecutive pages, [`Mapping::recv_into`]); compressed payloads go into a
//! buffer reused for the whole channel. A source without a socket (a
//! recording in memory) is read into that buffer and copied.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};

use crate::channel::Sock;
use crate::mem::{Mapping, RECV_IOV_MAX};
use crate::state::{Counters, Shared};

impl AsFd for Sock {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Sock::Tcp(s) => s.as_fd(),
            Sock::Unix(s) => s.as_fd(),
        }
    }
}

/// One channel's reader.
pub(super) struct ChanReader {
    /// The channel from its first byte (the bytes read to classify it, then
    /// the socket).
    src: Box<dyn Read + Send>,
    /// The same socket, read directly for page payloads. Only used after
    /// the initial packet: by then `src` has handed on every byte it held,
    /// and since nothing is read ahead, both read the same stream in order.
    direct: Option<Sock>,
    /// Bytes read so far (the offset of the next byte).
    at: u64,
    shared: Shared,
    hdr: Vec<u8>,
    buf: Vec<u8>,
}

impl ChanReader {
    pub(super) fn new(src: Box<dyn Read + Send>, direct: Option<Sock>, shared: Shared) -> Self {
        ChanReader { src, direct, at: 0, shared, hdr: Vec::new(), buf: Vec::new() }
    }

    /// The stream offset of the next byte.
    pub(super) fn offset(&self) -> u64 {
        self.at
    }

    fn count(&mut self, n: usize) {
        self.at += n as u64;
        Counters::add(&self.shared.counters().transferred, n as u64);
    }

    /// Read into all of `buf` from `src`; fewer bytes only at end of stream.
    fn read_full(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match src.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    /// Read the next `n` bytes (a packet or its header) into the header
    /// buffer, [`ChanReader::header`]. Returns how many came: `n` unless
    /// the stream ended.
    pub(super) fn read_header(&mut self, n: usize) -> io::Result<usize> {
        self.hdr.resize(n, 0);
        let got = Self::read_full(&mut self.src, &mut self.hdr)?;
        self.hdr.truncate(got);
        self.count(got);
        Ok(got)
    }

    /// What the last [`ChanReader::read_header`] read.
    pub(super) fn header(&self) -> &[u8] {
        &self.hdr
    }

    /// Read the next `n` bytes (a compressed payload) into the reused
    /// buffer, [`ChanReader::payload`]. Returns how many came.
    pub(super) fn read_payload(&mut self, n: usize) -> io::Result<usize> {
        if self.buf.len() < n {
            self.buf.resize(n, 0);
        }
        let got = Self::read_full(&mut self.src, &mut self.buf[..n])?;
        self.count(got);
        Ok(got)
    }

    /// The first `n` bytes of the reused buffer (what the last
    /// [`ChanReader::read_payload`] of `n` bytes read).
    pub(super) fn payload(&self, n: usize) -> &[u8] {
        &self.buf[..n]
    }

    /// Read the next bytes of the stream into the ranges `runs`
    /// ((offset, length), in order) of `m`. Returns how many came: all
    /// unless the stream ended (the ranges are then partly written).
    pub(super) fn read_into(&mut self, m: &Mapping, runs: &[(usize, usize)]) -> io::Result<usize> {
        let total: usize = runs.iter().map(|r| r.1).sum();
        let Some(sock) = &self.direct else {
            let got = self.read_payload(total)?;
            if got == total {
                let mut at = 0;
                for &(off, len) in runs {
                    m.write(off, &self.buf[at..at + len]);
                    at += len;
                }
            }
            return Ok(got);
        };
        let mut got = 0;
        // The ranges not yet filled: `runs[i..]`, the first from `skip`.
        let (mut i, mut skip) = (0, 0);
        let mut segs = [(0usize, 0usize); RECV_IOV_MAX];
        while i < runs.len() {
            let n = (runs.len() - i).min(RECV_IOV_MAX);
            segs[..n].copy_from_slice(&runs[i..i + n]);
            segs[0].0 += skip;
            segs[0].1 -= skip;
            let r = m.recv_into(sock.as_fd(), &segs[..n])?;
            if r == 0 {
                break;
            }
            got += r;
            Counters::add(&self.shared.counters().transferred, r as u64);
            self.at += r as u64;
            // Advance past the `r` bytes received.
            let mut left = r + skip;
            while i < runs.len() && left >= runs[i].1 {
                left -= runs[i].1;
                i += 1;
            }
            skip = left;
        }
        Ok(got)
    }
}

/// Consecutive ranges of `offsets` (page offsets, `ps` bytes each) merged:
/// (offset, length) in the order given.
pub(super) fn runs(offsets: &[u64], ps: usize, out: &mut Vec<(usize, usize)>) {
    out.clear();
    for &o in offsets {
        let o = o as usize;
        match out.last_mut() {
            Some((start, len)) if *start + *len == o => *len += ps,
            _ => out.push((o, ps)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    use crate::ram::RamTable;

    #[test]
    fn runs_merge_consecutive_pages() {
        let mut v = Vec::new();
        runs(&[0, 4096, 8192, 16384, 12288, 16384], 4096, &mut v);
        assert_eq!(v, vec![(0, 12288), (16384, 4096), (12288, 8192)]);
        runs(&[], 4096, &mut v);
        assert!(v.is_empty());
    }

    /// Pages read straight from a socket land in their places, across many
    /// partial receives; the header before them is read exactly.
    #[test]
    fn direct_reads_fill_runs_from_a_socket() {
        let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
        let m = Mapping::anonymous(1 << 20).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let mut expect = vec![0u8; 1 << 20];
        let runs = [(8192usize, 3 * 4096), (0, 4096), (65536, 128 * 4096)];
        let mut data = Vec::new();
        for &(off, len) in &runs {
            for k in 0..len {
                let v = (off / 4096 * 7 + k / 4096 + k % 251) as u8;
                expect[off + k] = v;
                data.push(v);
            }
        }
        let writer = std::thread::spawn(move || {
            let mut a = a;
            a.write_all(b"HEAD").unwrap();
            // Small writes: the receiver sees many partial reads.
            for c in data.chunks(1000) {
                a.write_all(c).unwrap();
            }
            a.write_all(b"tail").unwrap();
        });
        let direct = Sock::Unix(b.try_clone().unwrap());
        let mut r = ChanReader::new(Box::new(Sock::Unix(b)), Some(direct), shared.clone());
        assert_eq!(r.read_header(4).unwrap(), 4);
        assert_eq!(r.header(), b"HEAD");
        let total: usize = runs.iter().map(|r| r.1).sum();
        assert_eq!(r.read_into(&m, &runs).unwrap(), total);
        assert_eq!(r.read_header(4).unwrap(), 4);
        assert_eq!(r.header(), b"tail");
        assert_eq!(r.read_header(4).unwrap(), 0, "end of stream");
        writer.join().unwrap();
        let mut got = vec![0u8; 1 << 20];
        m.read(0, &mut got);
        assert!(got == expect, "pages differ");
        assert_eq!(r.offset(), (total + 8) as u64);
        assert_eq!(
            shared.counters().transferred.load(std::sync::atomic::Ordering::Relaxed),
            r.offset()
        );
    }

    /// A stream that ends inside the pages: fewer bytes, no error.
    #[test]
    fn direct_read_short_at_end_of_stream() {
        let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
        let m = Mapping::anonymous(1 << 16).unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&[5u8; 5000]).unwrap();
        drop(a);
        let direct = Sock::Unix(b.try_clone().unwrap());
        let mut r = ChanReader::new(Box::new(Sock::Unix(b)), Some(direct), shared);
        assert_eq!(r.read_into(&m, &[(0, 4096), (8192, 4096)]).unwrap(), 5000);
    }
}
