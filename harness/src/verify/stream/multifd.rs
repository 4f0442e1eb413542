//! Recorded multifd channels for the replay: each decoded with
//! `wire::multifd` (payloads decompressed, one zlib/zstd stream per
//! channel) up to a given SYNC packet (docs/multifd.md §6), its pages
//! applied as they are decoded (nothing decompressed is kept).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};

use wire::multifd::{Compression, InitPacket, MultifdError, PacketFormat, PacketLayout, RamPacket};
use wire::Cursor;

/// Does a recorded connection start like a multifd channel?
pub fn is_multifd(b: &[u8]) -> bool {
    b.starts_with(&wire::consts::MULTIFD_MAGIC.to_be_bytes())
}

/// The 9.0 layout reads 7.2's packets too (their zero_pages is 0).
const FMT: PacketFormat = PacketFormat { layout: PacketLayout::V9, page_size: TPS as u32 };

/// Bytes of one target page (x86).
const TPS: usize = 4096;

/// One recorded multifd channel, applied epoch by epoch: epoch `k` is the
/// packets after the channel's `k`-th SYNC packet, up to and including the
/// next one.
pub struct Channel {
    pub id: u8,
    bytes: Vec<u8>,
    /// Where the next packet starts.
    pos: usize,
    /// SYNC packets applied so far.
    syncs: usize,
    /// The channel's compression, known from its first packet with pages.
    comp: Option<(Compression, Decompressor)>,
    /// The recording ended (possibly inside a packet: a cut connection).
    done: bool,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("bytes", &self.bytes.len())
            .field("pos", &self.pos)
            .field("syncs", &self.syncs)
            .finish()
    }
}

impl Channel {
    /// Check the initial packet; packets are decoded by [`Channel::apply`].
    pub fn decode(bytes: Vec<u8>) -> Result<Channel> {
        let mut c = Cursor::new(&bytes, 0);
        let init = InitPacket::decode(&mut c).map_err(|e| anyhow!("replay multifd: {e}"))?;
        let pos = c.pos();
        Ok(Channel { id: init.id, bytes, pos, syncs: 0, comp: None, done: false })
    }

    /// SYNC packets applied so far.
    pub fn syncs(&self) -> usize {
        self.syncs
    }

    /// Apply the packets of every epoch before `upto` (all with `None`) to
    /// `blocks`; returns the (normal, zero) pages applied.
    pub fn apply(
        &mut self,
        upto: Option<usize>,
        blocks: &mut BTreeMap<String, Vec<u8>>,
    ) -> Result<(u64, u64)> {
        let id = self.id;
        let (mut normal, mut zero) = (0, 0);
        while !self.done && upto.is_none_or(|u| self.syncs < u) {
            let mut c = Cursor::new(&self.bytes[self.pos..], self.pos as u64);
            if c.remaining() == 0 {
                self.done = true;
                break;
            }
            let at = c.offset();
            let p = match RamPacket::decode(&mut c, &FMT) {
                Ok(p) => p,
                Err(MultifdError::Incomplete { .. }) => {
                    self.done = true;
                    break;
                }
                Err(e) => bail!("replay multifd channel {id}: {e}"),
            };
            if self.comp.is_none() && p.normal_pages > 0 {
                let m = p.compression(&FMT, at).map_err(|e| anyhow!("channel {id}: {e}"))?;
                let d = Decompressor::new(m).with_context(|| format!("channel {id}"))?;
                self.comp = Some((m, d));
            }
            let method = self.comp.as_ref().map_or(Compression::None, |x| x.0);
            let len = p
                .payload_len(&FMT, method, at)
                .map_err(|e| anyhow!("replay multifd channel {id}: {e}"))?;
            let start = c.pos();
            if c.remaining() < len {
                self.done = true; // cut inside the payload
                break;
            }
            let raw = &self.bytes[self.pos + start..][..len];
            self.pos += start + len;
            let owned;
            let data = match self.comp.as_mut() {
                Some((_, d)) if p.normal_pages > 0 && !matches!(d, Decompressor::None) => {
                    owned = d.decompress(raw, p.normal_pages as usize * TPS).map_err(|e| {
                        anyhow!("replay multifd channel {id} (packet at byte offset {at}): {e}")
                    })?;
                    &owned[..]
                }
                _ => raw,
            };
            if !p.offsets.is_empty() {
                let b = blocks.get_mut(&p.ramblock).ok_or_else(|| {
                    anyhow!(
                        "replay multifd channel {id}: page for unknown block {:?} at {at}",
                        p.ramblock
                    )
                })?;
                p.check_offsets(&FMT, b.len() as u64, at)
                    .map_err(|e| anyhow!("replay multifd channel {id}: {e}"))?;
                for (i, &off) in p.normal_offsets().iter().enumerate() {
                    b[off as usize..][..TPS].copy_from_slice(&data[i * TPS..][..TPS]);
                    normal += 1;
                }
                for &off in p.zero_offsets() {
                    b[off as usize..][..TPS].fill(0);
                    zero += 1;
                }
            }
            if p.is_sync() {
                self.syncs += 1;
            }
        }
        Ok((normal, zero))
    }
}

/// One channel's decompression state: one stream for the whole migration,
/// flushed at the end of every packet (`migration/multifd-zlib.c`,
/// `migration/multifd-zstd.c`).
enum Decompressor {
    None,
    Zlib(Box<flate2::Decompress>),
    Zstd(Box<zstd::stream::raw::Decoder<'static>>),
}

impl Decompressor {
    fn new(c: Compression) -> Result<Decompressor> {
        Ok(match c {
            Compression::None => Decompressor::None,
            Compression::Zlib => Decompressor::Zlib(Box::new(flate2::Decompress::new(true))),
            Compression::Zstd => Decompressor::Zstd(Box::new(zstd::stream::raw::Decoder::new()?)),
            other => bail!("replay: multifd compression {} is not covered", other.name()),
        })
    }

    /// Decompress one payload to exactly `want` bytes, consuming all input.
    fn decompress(&mut self, input: &[u8], want: usize) -> Result<Vec<u8>> {
        // One spare byte lets the trailing flush marker be consumed.
        let mut out = vec![0u8; want + 1];
        let (used, got) = match self {
            Decompressor::None => return Ok(input.to_vec()),
            Decompressor::Zlib(d) => {
                let (mut ip, mut op) = (0usize, 0usize);
                loop {
                    let (i0, o0) = (d.total_in(), d.total_out());
                    d.decompress(&input[ip..], &mut out[op..], flate2::FlushDecompress::Sync)?;
                    let (di, dout) = ((d.total_in() - i0) as usize, (d.total_out() - o0) as usize);
                    ip += di;
                    op += dout;
                    if (di == 0 && dout == 0) || (ip == input.len() && op == out.len()) {
                        break (ip, op);
                    }
                }
            }
            Decompressor::Zstd(d) => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                let mut inb = InBuffer::around(input);
                let mut outb = OutBuffer::around(&mut out[..]);
                loop {
                    let before = (inb.pos(), outb.pos());
                    d.run(&mut inb, &mut outb)?;
                    if (inb.pos(), outb.pos()) == before {
                        break;
                    }
                }
                (inb.pos(), outb.pos())
            }
        };
        if got != want || used != input.len() {
            bail!(
                "{} payload bytes decompressed to {got} bytes (expected {want}), {} left unused",
                input.len(),
                input.len() - used
            );
        }
        out.truncate(want);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Replay;
    use super::*;
    use std::io::Write;
    use wire::ramrec::{encode_ram_record, BlockEntry, BlockRef, RamContext, RamRecord};
    use wire::stream::*;
    use wire::Encoder;

    /// Main channel: MEM_SIZE (4 pages of "a"), then RAM sections whose
    /// records are given; `flush` puts a MULTIFD_FLUSH before each EOS.
    fn main_channel(sections: &[Vec<(u64, u8)>], flush: bool) -> Vec<u8> {
        let ctx = RamContext::x86();
        let mut e = Encoder::new();
        let configuration =
            Some(Configuration { machine: "pc-q35-10.0".into(), ..Default::default() });
        encode_header(&mut e, &Header { version: 3, configuration });
        for (i, recs) in sections.iter().enumerate() {
            if i == 0 {
                encode_section_open(&mut e, SectionKind::Start, 2, "ram", 0, 4);
                let blocks = vec![BlockEntry {
                    name: "a".into(),
                    used_length: 4 * 4096,
                    page_size: None,
                    gpa: None,
                }];
                encode_ram_record(&mut e, &RamRecord::MemSize { total: 4 * 4096, blocks }, &ctx);
            } else {
                encode_section_cont(&mut e, SectionKind::Part, 2);
            }
            for &(addr, v) in recs {
                let data = vec![v; 4096];
                let block = BlockRef::Named("a");
                encode_ram_record(&mut e, &RamRecord::Page { addr, block, data: &data }, &ctx);
            }
            if flush {
                encode_ram_record(&mut e, &RamRecord::MultifdFlush, &ctx);
            }
            encode_ram_record(&mut e, &RamRecord::Eos, &ctx);
            encode_footer(&mut e, 2);
        }
        encode_eof(&mut e);
        e.buf
    }

    /// A multifd channel: per epoch, pages (offset, value; value 0 is a
    /// zero page), each epoch ended by a SYNC packet.
    fn channel(id: u8, epochs: &[Vec<(u64, u8)>], comp: Compression) -> Vec<u8> {
        let fmt = PacketFormat::x86(PacketLayout::V9);
        let mut e = Encoder::new();
        InitPacket { uuid: [0; 16], id }.encode(&mut e);
        let mut z: Box<dyn StreamWriter> = match comp {
            Compression::Zstd => {
                Box::new(zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap())
            }
            _ => Box::new(flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast())),
        };
        let mut num = 0;
        for pages in epochs {
            let normal: Vec<_> = pages.iter().filter(|p| p.1 != 0).collect();
            let zero: Vec<_> = pages.iter().filter(|p| p.1 == 0).collect();
            let mut data: Vec<u8> = normal.iter().flat_map(|p| vec![p.1; 4096]).collect();
            if comp != Compression::None && !normal.is_empty() {
                let before = z.out().len();
                z.write_all(&data).unwrap();
                z.flush().unwrap();
                data = z.out()[before..].to_vec();
            }
            let p = RamPacket {
                flags: comp.flag(),
                pages_alloc: fmt.page_count(),
                normal_pages: normal.len() as u32,
                zero_pages: zero.len() as u32,
                next_packet_size: data.len() as u32,
                packet_num: num,
                ramblock: "a".into(),
                offsets: normal.iter().chain(&zero).map(|p| p.0).collect(),
            };
            p.encode(&mut e, &fmt);
            e.bytes(&data);
            let sync = RamPacket {
                flags: wire::multifd::FLAG_SYNC,
                packet_num: num + 1,
                ..Default::default()
            };
            sync.encode(&mut e, &fmt);
            num += 2;
        }
        e.buf
    }

    /// A compressor whose output so far can be read.
    trait StreamWriter: Write {
        fn out(&self) -> &Vec<u8>;
    }
    impl StreamWriter for flate2::write::ZlibEncoder<Vec<u8>> {
        fn out(&self) -> &Vec<u8> {
            self.get_ref()
        }
    }
    impl StreamWriter for zstd::stream::write::Encoder<'_, Vec<u8>> {
        fn out(&self) -> &Vec<u8> {
            self.get_ref()
        }
    }

    fn pages(r: &Replay) -> Vec<u8> {
        r.blocks["a"].chunks(4096).map(|p| p[0]).collect()
    }

    fn replay(main: Vec<u8>, chans: Vec<Vec<u8>>) -> Replay {
        let dir = tempfile::tempdir().unwrap();
        let mut files = vec![dir.path().join("main")];
        std::fs::write(&files[0], main).unwrap();
        for (i, c) in chans.into_iter().enumerate() {
            files.push(dir.path().join(format!("ch{i}")));
            std::fs::write(files.last().unwrap(), c).unwrap();
        }
        Replay::from_recordings(&files).unwrap()
    }

    #[test]
    fn multifd_pages_are_ordered_by_sync_points() {
        let cases =
            [(true, Compression::None), (false, Compression::Zlib), (true, Compression::Zstd)];
        for (flush, comp) in cases {
            // Epoch 0 (setup): multifd writes pages 0, 1 and 3. Epoch 1: the
            // main channel overwrites page 0. Epoch 2: multifd rewrites page
            // 1 and zeroes page 3. In file order page 0 would be 1.
            let main = main_channel(&[vec![], vec![(0, 2)], vec![]], flush);
            let ch0 = channel(0, &[vec![(0, 1), (4096, 1)], vec![], vec![(4096, 3)]], comp);
            let ch1 = channel(1, &[vec![(3 * 4096, 4)], vec![], vec![(3 * 4096, 0)]], comp);
            let r = replay(main, vec![ch0, ch1]);
            assert_eq!(pages(&r), vec![2, 3, 0, 0], "flush {flush}");
            assert_eq!((r.multifd_pages, r.multifd_zero_pages, r.pages), (4, 1, 5));
            let s = r.multifd_summary().unwrap();
            assert!(s.contains("2 multifd channel(s)") && s.contains("[3, 3]"), "{s}");
            assert!(s.contains(if flush { "3 MULTIFD_FLUSH" } else { "3 EOS" }), "{s}");
        }
    }

    #[test]
    fn pages_after_the_last_sync_and_cut_channels() {
        let main = main_channel(&[vec![(0, 2)]], true);
        let mut ch = channel(0, &[vec![], vec![(0, 5)]], Compression::None);
        // Cut inside the second epoch's SYNC packet: its pages still count.
        ch.truncate(ch.len() - 10);
        let r = replay(main, vec![ch]);
        assert_eq!(pages(&r), vec![5, 0, 0, 0]);
        // An unknown block is an error, not a silent pass.
        let fmt = PacketFormat::x86(PacketLayout::V9);
        let mut e = Encoder::new();
        InitPacket { uuid: [0; 16], id: 0 }.encode(&mut e);
        let p = RamPacket {
            pages_alloc: 128,
            zero_pages: 1,
            ramblock: "b".into(),
            offsets: vec![0],
            ..Default::default()
        };
        p.encode(&mut e, &fmt);
        let dir = tempfile::tempdir().unwrap();
        let files = [dir.path().join("m"), dir.path().join("c")];
        std::fs::write(&files[0], main_channel(&[vec![]], true)).unwrap();
        std::fs::write(&files[1], &e.buf).unwrap();
        let err = Replay::from_recordings(&files).unwrap_err().to_string();
        assert!(err.contains("unknown block \"b\""), "{err}");
    }
}
