//! Typed `MIG_CMD_*` payloads: parse a [`RawCommand`] with QEMU's length rules
//! (`migration/savevm.c: loadvm_process_command()`), and build payloads,
//! including deliberately malformed ones for the synthetic source.
//!
//! ```text
//! 08  be16 cmd  be16 len  payload
//!  1 OPEN_RETURN_PATH  len 0
//!  2 PING              len 4   be32 value (answered by PONG)
//!  3 POSTCOPY_ADVISE   len 0 | 16: be64 ram_pagesize_summary, be64 target_page_size
//!  4 POSTCOPY_LISTEN   len 0
//!  5 POSTCOPY_RUN      len 0
//!  6 POSTCOPY_RAM_DISCARD  u8 0, counted block name, u8 0, { be64 start, be64 length }*
//!  7 PACKAGED          len 4   be32 L, then L bytes of embedded stream (not counted in len)
//!  8 ENABLE_COLO       len 0
//!  9 POSTCOPY_RESUME   len 0
//! 10 RECV_BITMAP       counted block name
//! 11 SWITCHOVER_START  len 0   (QEMU 10.0 and later)
//! ```
//!
//! # Postcopy sequence
//!
//! A postcopy migration, as the destination sees it (source side
//! `migration/migration.c: postcopy_start()`):
//!
//! 1. Precopy as usual, with `POSTCOPY_ADVISE` before the first section.
//! 2. At switchover: [`SWITCHOVER_START`](Command::SwitchoverStart) (10.0+),
//!    END sections of live handlers that cannot do postcopy, any number of
//!    `POSTCOPY_RAM_DISCARD`s (at most 12 ranges each), `PING(2)`.
//! 3. `PACKAGED` whose blob holds `POSTCOPY_LISTEN`, the device FULL sections,
//!    `PING(3)`, `PING(0x42)` (10.2+, so 11.1) and `POSTCOPY_RUN`. At LISTEN the
//!    destination starts reading the main channel after the blob; at RUN the
//!    guest starts.
//! 4. `PING(4)`, then PART sections of `ram` carrying pages (requested ones
//!    first; with postcopy-preempt, requested pages arrive on the preempt
//!    channel), the END section of `ram`, EOF. The destination answers
//!    `SHUT(0)` on the return path (see [`crate::rp`]).
//!
//! The destination's postcopy state moves NONE → ADVISE (ADVISE) → DISCARD
//! (first discard) → LISTENING (LISTEN) → RUNNING (RUN) → END (final EOF);
//! a command in any other state fails the load.
//!
//! Recovery after the main channel breaks in RUNNING: the source connects a new
//! main channel without a header, sends one `RECV_BITMAP(block)` per RAMBlock
//! (each answered by a return-path RECV_BITMAP plus the received bitmap), then
//! `POSTCOPY_RESUME`, answered by `RESUME_ACK(1)`; the destination then
//! re-sends its outstanding page requests.
//!
//! Per-command rules, the state machine and version differences:
//! `docs/wire-format.md`, sections 6 and 8.

use super::consts::*;
use super::cursor::{DecodeError, Encoder, Result};
use super::stream::RawCommand;

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    OpenReturnPath,
    Ping(u32),
    /// `None` for the 0-length (dirty-bitmaps only) variant.
    PostcopyAdvise(Option<Advise>),
    PostcopyListen,
    PostcopyRun,
    PostcopyRamDiscard(Discard),
    /// Length of the blob that follows the command.
    Packaged(u32),
    EnableColo,
    PostcopyResume,
    RecvBitmap(String),
    SwitchoverStart,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advise {
    pub ram_pagesize_summary: u64,
    pub target_page_size: u64,
}

/// A RAM discard command: byte ranges (start, length) within one RAMBlock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discard {
    pub block: String,
    pub ranges: Vec<(u64, u64)>,
}

impl Command {
    pub fn code(&self) -> u16 {
        match self {
            Command::OpenReturnPath => MIG_CMD_OPEN_RETURN_PATH,
            Command::Ping(_) => MIG_CMD_PING,
            Command::PostcopyAdvise(_) => MIG_CMD_POSTCOPY_ADVISE,
            Command::PostcopyListen => MIG_CMD_POSTCOPY_LISTEN,
            Command::PostcopyRun => MIG_CMD_POSTCOPY_RUN,
            Command::PostcopyRamDiscard(_) => MIG_CMD_POSTCOPY_RAM_DISCARD,
            Command::Packaged(_) => MIG_CMD_PACKAGED,
            Command::EnableColo => MIG_CMD_ENABLE_COLO,
            Command::PostcopyResume => MIG_CMD_POSTCOPY_RESUME,
            Command::RecvBitmap(_) => MIG_CMD_RECV_BITMAP,
            Command::SwitchoverStart => MIG_CMD_SWITCHOVER_START,
        }
    }

    pub fn name(&self) -> &'static str {
        command_name(self.code())
    }

    /// Parse a framed command, applying QEMU's checks (unknown command,
    /// fixed-length mismatch, payload structure).
    pub fn parse(rc: &RawCommand) -> Result<Command> {
        let off = rc.payload_offset;
        // The command header starts 4 bytes before the payload (type byte 5 before).
        let hdr = off.saturating_sub(5);
        if rc.cmd == MIG_CMD_INVALID || rc.cmd >= MIG_CMD_MAX {
            return Err(DecodeError::invalid(
                hdr,
                format!("unknown migration command {} (len {})", rc.cmd, rc.payload.len()),
            ));
        }
        let name = command_name(rc.cmd);
        if let Some(fixed) = command_fixed_len(rc.cmd) {
            if rc.payload.len() != fixed as usize {
                return Err(DecodeError::invalid(
                    hdr,
                    format!(
                        "command {name}: length {} does not match the expected {fixed}",
                        rc.payload.len()
                    ),
                ));
            }
        }
        let p = rc.payload;
        let be32 = |b: &[u8]| u32::from_be_bytes(b[..4].try_into().unwrap());
        let be64 = |b: &[u8]| u64::from_be_bytes(b[..8].try_into().unwrap());
        Ok(match rc.cmd {
            MIG_CMD_OPEN_RETURN_PATH => Command::OpenReturnPath,
            MIG_CMD_PING => Command::Ping(be32(p)),
            MIG_CMD_POSTCOPY_ADVISE => match p.len() {
                0 => Command::PostcopyAdvise(None),
                16 => Command::PostcopyAdvise(Some(Advise {
                    ram_pagesize_summary: be64(p),
                    target_page_size: be64(&p[8..]),
                })),
                n => {
                    return Err(DecodeError::invalid(
                        hdr,
                        format!("command POSTCOPY_ADVISE: invalid length {n} (expected 0 or 16)"),
                    ))
                }
            },
            MIG_CMD_POSTCOPY_LISTEN => Command::PostcopyListen,
            MIG_CMD_POSTCOPY_RUN => Command::PostcopyRun,
            MIG_CMD_POSTCOPY_RAM_DISCARD => Command::PostcopyRamDiscard(parse_discard(p, off)?),
            MIG_CMD_PACKAGED => Command::Packaged(be32(p)),
            MIG_CMD_ENABLE_COLO => Command::EnableColo,
            MIG_CMD_POSTCOPY_RESUME => Command::PostcopyResume,
            MIG_CMD_RECV_BITMAP => {
                if p.is_empty() || p[0] as usize + 1 != p.len() {
                    return Err(DecodeError::invalid(
                        hdr,
                        format!(
                            "command RECV_BITMAP: length {} does not match its block name length",
                            p.len()
                        ),
                    ));
                }
                let s = std::str::from_utf8(&p[1..]).map_err(|_| {
                    DecodeError::invalid(off + 1, "command RECV_BITMAP: block name is not UTF-8")
                })?;
                Command::RecvBitmap(s.to_string())
            }
            MIG_CMD_SWITCHOVER_START => Command::SwitchoverStart,
            _ => unreachable!("checked above"),
        })
    }

    /// Encode the payload of a well-formed command.
    pub fn payload(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        match self {
            Command::Ping(v) => {
                e.be32(*v);
            }
            Command::PostcopyAdvise(Some(a)) => {
                e.be64(a.ram_pagesize_summary).be64(a.target_page_size);
            }
            Command::PostcopyRamDiscard(d) => {
                return discard_payload(
                    POSTCOPY_RAM_DISCARD_VERSION,
                    d.block.as_bytes(),
                    Some(0),
                    &d.ranges,
                )
            }
            Command::Packaged(l) => {
                e.be32(*l);
            }
            Command::RecvBitmap(b) => {
                e.counted(b.as_bytes());
            }
            _ => {}
        }
        e.finish()
    }

    /// Encode the whole command record (0x08, cmd, len, payload).
    pub fn encode(&self, e: &mut Encoder) {
        super::stream::encode_command(e, self.code(), &self.payload());
    }
}

/// Build a discard payload, allowing malformed variants: any version byte,
/// any name, an optional terminator (None = omit it).
pub fn discard_payload(
    version: u8,
    block: &[u8],
    terminator: Option<u8>,
    ranges: &[(u64, u64)],
) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u8(version).counted(block);
    if let Some(t) = terminator {
        e.u8(t);
    }
    for (s, l) in ranges {
        e.be64(*s).be64(*l);
    }
    e.finish()
}

fn parse_discard(p: &[u8], off: u64) -> Result<Discard> {
    let what = "command POSTCOPY_RAM_DISCARD";
    if p.len() < 3 {
        return Err(DecodeError::invalid(
            off,
            format!("{what}: payload of {} bytes is too short", p.len()),
        ));
    }
    if p[0] != POSTCOPY_RAM_DISCARD_VERSION {
        return Err(DecodeError::invalid(
            off,
            format!("{what}: unsupported version {} (expected 0)", p[0]),
        ));
    }
    let n = p[1] as usize;
    if 2 + n + 1 > p.len() {
        return Err(DecodeError::invalid(
            off + 1,
            format!("{what}: block name length {n} runs past the payload ({} bytes)", p.len()),
        ));
    }
    let name = std::str::from_utf8(&p[2..2 + n])
        .map_err(|_| DecodeError::invalid(off + 2, format!("{what}: block name is not UTF-8")))?;
    if p[2 + n] != 0 {
        return Err(DecodeError::invalid(
            off + 2 + n as u64,
            format!(
                "{what}: block name {name:?} is not followed by a NUL terminator (found {:#04x})",
                p[2 + n]
            ),
        ));
    }
    let rest = &p[3 + n..];
    if !rest.len().is_multiple_of(16) {
        return Err(DecodeError::invalid(
            off + 3 + n as u64,
            format!("{what}: range list of {} bytes is not a multiple of 16", rest.len()),
        ));
    }
    let ranges = rest
        .chunks(16)
        .map(|c| {
            (
                u64::from_be_bytes(c[..8].try_into().unwrap()),
                u64::from_be_bytes(c[8..].try_into().unwrap()),
            )
        })
        .collect();
    Ok(Discard { block: name.to_string(), ranges })
}

#[cfg(test)]
mod tests {
    use super::super::cursor::Cursor;
    use super::super::stream::{decode_top, TopRecord};
    use super::*;

    fn roundtrip(c: Command) {
        let mut e = Encoder::new();
        c.encode(&mut e);
        let mut cur = Cursor::new(&e.buf, 0);
        match decode_top(&mut cur).unwrap() {
            TopRecord::Command(rc) => assert_eq!(Command::parse(&rc).unwrap(), c),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn all_commands_roundtrip() {
        for c in [
            Command::OpenReturnPath,
            Command::Ping(0x42),
            Command::PostcopyAdvise(None),
            Command::PostcopyAdvise(Some(Advise {
                ram_pagesize_summary: 4096,
                target_page_size: 4096,
            })),
            Command::PostcopyListen,
            Command::PostcopyRun,
            Command::PostcopyRamDiscard(Discard {
                block: "pc.ram".into(),
                ranges: vec![(0, 4096), (8192, 65536)],
            }),
            Command::Packaged(1234),
            Command::EnableColo,
            Command::PostcopyResume,
            Command::RecvBitmap("mem0".into()),
            Command::SwitchoverStart,
        ] {
            roundtrip(c);
        }
    }

    #[test]
    fn spec_advise_example() {
        // docs/wire-format.md §11: 08 00 03 00 10 + two be64 4096.
        let b = [8u8, 0, 3, 0, 0x10, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x10, 0];
        let mut cur = Cursor::new(&b, 0);
        let TopRecord::Command(rc) = decode_top(&mut cur).unwrap() else { panic!() };
        assert_eq!(
            Command::parse(&rc).unwrap(),
            Command::PostcopyAdvise(Some(Advise {
                ram_pagesize_summary: 4096,
                target_page_size: 4096
            }))
        );
    }

    fn parse_raw(cmd: u16, payload: &[u8]) -> Result<Command> {
        Command::parse(&RawCommand { cmd, payload, payload_offset: 100 })
    }

    #[test]
    fn command_errors() {
        assert!(parse_raw(0, &[]).unwrap_err().to_string().contains("unknown migration command 0"));
        assert!(parse_raw(12, &[])
            .unwrap_err()
            .to_string()
            .contains("unknown migration command 12"));
        let e = parse_raw(MIG_CMD_PING, &[0, 0, 1]).unwrap_err().to_string();
        assert!(e.contains("PING: length 3 does not match the expected 4"), "{e}");
        assert!(parse_raw(MIG_CMD_POSTCOPY_ADVISE, &[0; 8])
            .unwrap_err()
            .to_string()
            .contains("expected 0 or 16"));
        assert!(parse_raw(MIG_CMD_RECV_BITMAP, &[5, b'a']).is_err());
    }

    /// Every fixed-length command (QEMU's `mig_cmd_args[]`) refuses any
    /// other length, one byte short or long and the largest a be16 holds.
    #[test]
    fn fixed_length_commands_refuse_any_other_length() {
        for cmd in 1..MIG_CMD_MAX {
            let Some(fixed) = command_fixed_len(cmd) else { continue };
            let fixed = fixed as usize;
            for len in [fixed.wrapping_sub(1), fixed + 1, u16::MAX as usize] {
                if len > u16::MAX as usize {
                    continue;
                }
                let e = parse_raw(cmd, &vec![0; len]).unwrap_err().to_string();
                let want = format!("length {len} does not match the expected {fixed}");
                assert!(e.contains(&want), "{}: {e}", command_name(cmd));
            }
        }
    }

    #[test]
    fn discard_errors() {
        let ok = discard_payload(0, b"pc.ram", Some(0), &[(0, 4096)]);
        assert!(parse_raw(MIG_CMD_POSTCOPY_RAM_DISCARD, &ok).is_ok());
        let e = parse_raw(
            MIG_CMD_POSTCOPY_RAM_DISCARD,
            &discard_payload(1, b"pc.ram", Some(0), &[(0, 4096)]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unsupported version 1"), "{e}");
        // Missing terminator: the first range byte is taken as the terminator
        // (as QEMU does), so the error depends on that byte.
        let e = parse_raw(
            MIG_CMD_POSTCOPY_RAM_DISCARD,
            &discard_payload(0, b"pc.ram", None, &[(0, 4096)]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a multiple of 16"), "{e}");
        let e = parse_raw(
            MIG_CMD_POSTCOPY_RAM_DISCARD,
            &discard_payload(0, b"pc.ram", None, &[(1 << 60, 4096)]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("NUL terminator"), "{e}");
        let mut bad = ok.clone();
        bad.push(0);
        let e = parse_raw(MIG_CMD_POSTCOPY_RAM_DISCARD, &bad).unwrap_err();
        assert!(e.to_string().contains("not a multiple of 16"), "{e}");
        let e = parse_raw(MIG_CMD_POSTCOPY_RAM_DISCARD, &[0, 200, b'x', 0]).unwrap_err();
        assert!(e.to_string().contains("runs past"), "{e}");
    }
}
