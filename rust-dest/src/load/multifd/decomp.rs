//! Per-channel decompression of multifd payloads: one zlib or zstd stream
//! per channel for the whole migration, flushed (never finished) at the end
//! of every packet (`migration/multifd-zlib.c`, `migration/multifd-zstd.c`;
//! docs/multifd.md section 7).

use wire::multifd::Compression;

/// Why a payload could not be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    #[error("multifd: {method} decompression failed: {msg}")]
    Failed { method: &'static str, msg: String },
    #[error(
        "multifd: {method} payload of {input} bytes decompressed to {got} bytes, expected {want}"
    )]
    Length { method: &'static str, input: usize, got: usize, want: usize },
    #[error("multifd: {method} payload of {input} bytes: {left} byte(s) left unused")]
    Trailing { method: &'static str, input: usize, left: usize },
    #[error("multifd: compression {0} is not supported by rust-dest")]
    Unsupported(&'static str),
}

/// One channel's decompression state.
pub enum Decompressor {
    None,
    Zlib(Box<flate2::Decompress>),
    Zstd(Box<zstd::stream::raw::Decoder<'static>>),
}

impl Decompressor {
    pub fn new(c: Compression) -> Result<Decompressor, DecompressError> {
        Ok(match c {
            Compression::None => Decompressor::None,
            Compression::Zlib => Decompressor::Zlib(Box::new(flate2::Decompress::new(true))),
            Compression::Zstd => {
                let d = zstd::stream::raw::Decoder::new()
                    .map_err(|e| DecompressError::Failed { method: "zstd", msg: e.to_string() })?;
                Decompressor::Zstd(Box::new(d))
            }
            other => return Err(DecompressError::Unsupported(other.name())),
        })
    }

    /// Decompress one packet's payload into exactly `want` bytes (a new
    /// buffer; the receive path uses [`Decompressor::decompress_into`]).
    pub fn decompress(&mut self, input: &[u8], want: usize) -> Result<Vec<u8>, DecompressError> {
        if let Decompressor::None = self {
            return Ok(input.to_vec());
        }
        let mut out = vec![0u8; want];
        self.decompress_into(input, &mut out)?;
        Ok(out)
    }

    /// Decompress one packet's payload into exactly `out.len()` bytes of
    /// `out` (guest RAM or a reused buffer: nothing is allocated). All of
    /// `input` must be used: after `out` is full the stream is run into one
    /// byte of slack so that the flush marker ending the payload is
    /// consumed too (it produces no output; any output there is an error).
    pub fn decompress_into(&mut self, input: &[u8], out: &mut [u8]) -> Result<(), DecompressError> {
        let want = out.len();
        let mut slack = [0u8; 1];
        let (method, used, got) = match self {
            Decompressor::None => {
                if input.len() != want {
                    let (input, got) = (input.len(), input.len());
                    return Err(DecompressError::Length { method: "none", input, got, want });
                }
                out.copy_from_slice(input);
                return Ok(());
            }
            Decompressor::Zlib(d) => {
                let mut ip = 0usize;
                let mut got = 0usize;
                for buf in [&mut out[..], &mut slack[..]] {
                    let mut op = 0usize;
                    loop {
                        let (i0, o0) = (d.total_in(), d.total_out());
                        d.decompress(&input[ip..], &mut buf[op..], flate2::FlushDecompress::Sync)
                            .map_err(|e| DecompressError::Failed {
                            method: "zlib",
                            msg: e.to_string(),
                        })?;
                        let (di, dout) =
                            ((d.total_in() - i0) as usize, (d.total_out() - o0) as usize);
                        ip += di;
                        op += dout;
                        if (di == 0 && dout == 0) || ip == input.len() || op == buf.len() {
                            break;
                        }
                    }
                    got += op;
                    if op < buf.len() {
                        break;
                    }
                }
                ("zlib", ip, got)
            }
            Decompressor::Zstd(d) => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                let mut inb = InBuffer::around(input);
                let mut got = 0usize;
                for buf in [&mut out[..], &mut slack[..]] {
                    let len = buf.len();
                    let mut outb = OutBuffer::around(buf);
                    loop {
                        let before = (inb.pos(), outb.pos());
                        d.run(&mut inb, &mut outb).map_err(|e| DecompressError::Failed {
                            method: "zstd",
                            msg: e.to_string(),
                        })?;
                        if (inb.pos(), outb.pos()) == before {
                            break;
                        }
                    }
                    got += outb.pos();
                    if outb.pos() < len {
                        break;
                    }
                }
                ("zstd", inb.pos(), got)
            }
        };
        if got != want {
            return Err(DecompressError::Length { method, input: input.len(), got, want });
        }
        if used != input.len() {
            return Err(DecompressError::Trailing {
                method,
                input: input.len(),
                left: input.len() - used,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn zlib_stream_across_packets() {
        let mut c = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut payloads = Vec::new();
        let mut last = 0;
        for b in 0..3u8 {
            c.write_all(&[b; 8192]).unwrap();
            c.flush().unwrap();
            let all = c.get_ref();
            payloads.push(all[last..].to_vec());
            last = all.len();
        }
        let mut d = Decompressor::new(Compression::Zlib).unwrap();
        for (b, p) in payloads.iter().enumerate() {
            assert_eq!(d.decompress(p, 8192).unwrap(), vec![b as u8; 8192]);
        }
        let mut d = Decompressor::new(Compression::Zlib).unwrap();
        let e = d.decompress(&payloads[0], 4096).unwrap_err();
        assert!(matches!(e, DecompressError::Length { got: 4097, .. }), "{e}");
        let mut d = Decompressor::new(Compression::Zlib).unwrap();
        assert!(d.decompress(&[0xff; 16], 4096).is_err());
    }

    #[test]
    fn zstd_stream_across_packets() {
        let mut c = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        let mut payloads = Vec::new();
        let mut last = 0;
        for b in 0..3u8 {
            c.write_all(&[b; 8192]).unwrap();
            c.flush().unwrap();
            let all = c.get_ref();
            payloads.push(all[last..].to_vec());
            last = all.len();
        }
        let mut d = Decompressor::new(Compression::Zstd).unwrap();
        for (b, p) in payloads.iter().enumerate() {
            assert_eq!(d.decompress(p, 8192).unwrap(), vec![b as u8; 8192]);
        }
    }
}
