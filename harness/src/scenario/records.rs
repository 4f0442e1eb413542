//! Records of stream scenarios: `[[records]]` tables → synthetic-source steps.

use serde::Deserialize;

use crate::synth::{Content, Corruption, MultifdStep, Page, RpMatcher, Step};
use wire::multifd::Compression;
use wire::units::TARGET_PAGE_SIZE as PAGE_SIZE;

#[derive(Clone, Debug, Deserialize)]
#[serde(
    tag = "op",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case",
    deny_unknown_fields
)]
pub enum Record {
    /// Magic, version 3, configuration (machine defaults to the real source's).
    Header {
        machine: Option<String>,
    },
    OpenReturnPath {},
    Ping {
        value: u32,
    },
    /// POSTCOPY_ADVISE (defaults: 4096, 4096).
    Advise {
        summary: Option<u64>,
        tps: Option<u64>,
    },
    /// POSTCOPY_ADVISE with a raw payload (hex).
    AdviseRaw {
        bytes: String,
    },
    /// POSTCOPY_RAM_DISCARD: ranges of [start, length] in bytes.
    Discard {
        block: String,
        ranges: Vec<[u64; 2]>,
        version: Option<u8>,
        /// The byte after the name; `false` omits it.
        terminator: Option<toml::Value>,
    },
    Listen {},
    Run {},
    /// PACKAGED with nested `[[records.inner]]`; `declared-length` overrides the length field.
    Packaged {
        #[serde(default)]
        inner: Vec<toml::Table>,
        declared_length: Option<u32>,
    },
    /// START section "ram" with every block of the source layout.
    RamStart {},
    /// PART section "ram" with pages: "BLOCK:FIRST-LAST@VERSION" or "BLOCK:N@zero".
    RamPart {
        pages: Vec<String>,
    },
    RamEnd {
        #[serde(default)]
        pages: Vec<String>,
    },
    /// PART section "ram" with COMPRESS_PAGE records (legacy `compress`,
    /// QEMU 7.2); `corrupt` = "garbage" or "short" damages every one.
    RamCompressed {
        pages: Vec<String>,
        corrupt: Option<String>,
    },
    /// A correct globalstate FULL section.
    Globalstate {
        runstate: Option<String>,
    },
    /// A FULL section with raw data (hex).
    Device {
        idstr: String,
        instance: Option<u32>,
        version: Option<u32>,
        data: String,
        /// The instance id the `vmdesc` record gives this section.
        vmdesc_instance: Option<u32>,
    },
    SwitchoverStart {},
    Eof {},
    /// The vmdesc JSON for the device sections of this script (computed);
    /// `cut`: only the record's first N bytes.
    Vmdesc {
        cut: Option<usize>,
    },
    /// Any command number with a raw payload (hex).
    Command {
        cmd: u16,
        payload: Option<String>,
    },
    Raw {
        bytes: String,
    },
    /// Wait for a return-path message: "pong:N", "pong", "shut:N", "shut", "page-request", "any".
    ExpectRp {
        message: String,
    },
    /// From here until EOF, answer page requests from the script's model.
    ServePageRequests {},
    Sleep {
        ms: u64,
    },
    /// Open multifd channel `channel` (a new connection to the destination).
    MultifdConnect {
        channel: u8,
    },
    /// The initial packet on `channel`: `magic`, `version`, `uuid` (32 hex
    /// digits) and `id` (default: the channel number) override the good values.
    MultifdInit {
        channel: u8,
        magic: Option<u32>,
        version: Option<u32>,
        uuid: Option<String>,
        id: Option<u8>,
    },
    /// A RAM packet on `channel` with pages (same syntax as `ram-part`, one
    /// block; `@zero` pages are the packet's zero pages), then their contents.
    MultifdRam {
        channel: u8,
        pages: Vec<String>,
        #[serde(default)]
        sync: bool,
        normal_pages: Option<u32>,
        pages_alloc: Option<u32>,
        #[serde(default)]
        packet_num: u64,
        /// "zlib" or "zstd": compress the normal pages on the channel's stream.
        compression: Option<String>,
        /// "garbage" or "short": damage the compressed payload.
        corrupt: Option<String>,
    },
    /// A sync packet on `channel` (SYNC, no pages).
    MultifdSync {
        channel: u8,
        #[serde(default)]
        packet_num: u64,
    },
    /// A PART section "ram" holding only MULTIFD_FLUSH (main channel).
    MultifdFlush {},
}

pub fn hex(s: &str) -> Result<Vec<u8>, String> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if let Some(c) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("hex string {s:?}: {c:?} is not a hex digit"));
    }
    if !s.len().is_multiple_of(2) {
        return Err(format!("hex string {s:?} has an odd number of digits"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| format!("bad hex {s:?}")))
        .collect()
}

/// Bytes a counted string (RAMBlock and section names) can hold.
pub const MAX_COUNTED: usize = 255;
/// Pages one page spec may name (4 GiB of 4 KiB pages).
pub const MAX_PAGE_RANGE: u64 = 1 << 20;
/// Bytes a command's payload can hold (its length field is 16 bits).
pub const MAX_COMMAND_PAYLOAD: usize = u16::MAX as usize;
/// Bytes of globalstate's run-state buffer (QEMU `migration/global_state.c`).
pub const RUNSTATE_BUFFER: usize = 32;
/// The longest `sleep` (one day).
pub const MAX_SLEEP_MS: u64 = 86_400_000;

/// `what` must fit a counted string (u8 length).
fn counted(what: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_COUNTED {
        return Err(format!("{what} is {} bytes, at most {MAX_COUNTED} fit", s.len()));
    }
    Ok(())
}

/// `what` must fit a command's 16-bit length.
fn payload(what: &str, p: Vec<u8>) -> Result<Vec<u8>, String> {
    if p.len() > MAX_COMMAND_PAYLOAD {
        return Err(format!("{what} is {} bytes, at most {MAX_COMMAND_PAYLOAD} fit", p.len()));
    }
    Ok(p)
}

/// Parse "BLOCK:FIRST-LAST@VERSION", "BLOCK:N@VERSION", "BLOCK:N@zero" or
/// "BLOCK:N@fill=0x5a" (a ZERO record with that fill byte).
pub fn pages(spec: &str) -> Result<Vec<Page>, String> {
    let (block, rest) = spec
        .rsplit_once(':')
        .ok_or_else(|| format!("page spec {spec:?}: expected BLOCK:RANGE@VERSION"))?;
    let (range, ver) = rest
        .split_once('@')
        .ok_or_else(|| format!("page spec {spec:?}: missing @VERSION or @zero"))?;
    let (a, b) = match range.split_once('-') {
        Some((a, b)) => (a, b),
        None => (range, range),
    };
    let a: u64 = a.parse().map_err(|_| format!("page spec {spec:?}: bad page index {a:?}"))?;
    let b: u64 = b.parse().map_err(|_| format!("page spec {spec:?}: bad page index {b:?}"))?;
    if b < a {
        return Err(format!("page spec {spec:?}: empty range"));
    }
    counted(&format!("page spec {spec:?}: block name"), block)?;
    if b > u64::MAX / PAGE_SIZE {
        return Err(format!("page spec {spec:?}: page {b} is beyond any address"));
    }
    if b - a >= MAX_PAGE_RANGE {
        return Err(format!("page spec {spec:?}: more than {MAX_PAGE_RANGE} pages"));
    }
    (a..=b)
        .map(|i| {
            if ver == "zero" {
                Ok(Page::zero(block, i))
            } else if let Some(f) = ver.strip_prefix("fill=") {
                let v = match f.strip_prefix("0x") {
                    Some(h) => u8::from_str_radix(h, 16),
                    None => f.parse::<u8>(),
                };
                v.map(|v| Page { block: block.into(), index: i, content: Content::Fill(v) })
                    .map_err(|_| format!("page spec {spec:?}: fill must be 0-255 (or 0xNN)"))
            } else {
                ver.parse::<u8>()
                    .map(|v| Page::pattern(block, i, v))
                    .map_err(|_| format!("page spec {spec:?}: version must be 0-255 or zero"))
            }
        })
        .collect::<Result<Vec<_>, _>>()
}

pub fn parse_record(t: &toml::Table) -> Result<Step, String> {
    let r =
        Record::deserialize(toml::Value::Table(t.clone())).map_err(|e| e.message().to_string())?;
    to_step(r)
}

fn to_step(r: Record) -> Result<Step, String> {
    Ok(match r {
        Record::Header { machine } => Step::Header { machine },
        Record::OpenReturnPath {} => Step::OpenReturnPath,
        Record::Ping { value } => Step::Ping(value),
        Record::Advise { summary, tps } => {
            Step::Advise { summary: summary.unwrap_or(4096), tps: tps.unwrap_or(4096) }
        }
        Record::AdviseRaw { bytes } => Step::AdviseRaw(payload("advise-raw: bytes", hex(&bytes)?)?),
        Record::Discard { block, ranges, version, terminator } => {
            let terminator = match terminator {
                None => Some(0),
                Some(toml::Value::Boolean(false)) => None,
                Some(toml::Value::Integer(i)) if (0..=255).contains(&i) => Some(i as u8),
                Some(o) => {
                    return Err(format!("discard: terminator must be a byte or false, not {o}"))
                }
            };
            counted("discard: block", &block)?;
            if 1 + 1 + block.len() + 1 + 16 * ranges.len() > MAX_COMMAND_PAYLOAD {
                return Err(format!("discard: {} ranges do not fit one command", ranges.len()));
            }
            Step::Discard {
                block,
                ranges: ranges.iter().map(|r| (r[0], r[1])).collect(),
                version: version.unwrap_or(0),
                terminator,
            }
        }
        Record::Listen {} => Step::Listen,
        Record::Run {} => Step::Run,
        Record::Packaged { inner, declared_length } => {
            let inner: Vec<Step> = inner
                .iter()
                .enumerate()
                .map(|(i, t)| parse_record(t).map_err(|e| format!("inner[{i}]: {e}")))
                .collect::<Result<_, _>>()?;
            match declared_length {
                Some(declared) => Step::PackagedRawLen { declared, inner },
                None => Step::Packaged(inner),
            }
        }
        Record::RamStart {} => Step::RamStart,
        Record::RamPart { pages: p } => {
            Step::RamPart(p.iter().map(|s| pages(s)).collect::<Result<Vec<_>, _>>()?.concat())
        }
        Record::RamCompressed { pages: p, corrupt } => {
            Step::RamCompressed(
                p.iter().map(|s| pages(s)).collect::<Result<Vec<_>, _>>()?.concat(),
                match corrupt.as_deref() {
                    None => None,
                    Some(c) => Some(Corruption::parse(c).ok_or_else(|| {
                        format!("ram-compressed: corrupt {c:?} (garbage or short)")
                    })?),
                },
            )
        }
        Record::RamEnd { pages: p } => {
            Step::RamEnd(p.iter().map(|s| pages(s)).collect::<Result<Vec<_>, _>>()?.concat())
        }
        Record::Globalstate { runstate } => {
            let r = runstate.as_deref().unwrap_or("running");
            if r.len() > RUNSTATE_BUFFER {
                return Err(format!(
                    "globalstate: runstate {r:?} is {} bytes, its buffer holds {RUNSTATE_BUFFER} \
                     (a {RUNSTATE_BUFFER}-byte one is sent without NUL; for other layouts use a \
                     `device` record with raw data)",
                    r.len()
                ));
            }
            Step::globalstate(r)
        }
        Record::Device { idstr, instance, version, data, vmdesc_instance } => {
            counted("device: idstr", &idstr)?;
            Step::DeviceFull {
                idstr,
                instance: instance.unwrap_or(0),
                version: version.unwrap_or(1),
                data: hex(&data)?,
                vmdesc_instance,
            }
        }
        Record::SwitchoverStart {} => Step::SwitchoverStart,
        Record::Eof {} => Step::Eof,
        Record::Vmdesc { cut } => Step::Vmdesc { desc: serde_json::Value::Null, cut },
        Record::Command { cmd, payload } => {
            let p = hex(payload.as_deref().unwrap_or(""))?;
            Step::Command { cmd, payload: self::payload("command: payload", p)? }
        }
        Record::Raw { bytes } => Step::Raw(hex(&bytes)?),
        Record::ExpectRp { message } => Step::ExpectRp(matcher(&message)?),
        Record::ServePageRequests {} => Step::ServePageRequests,
        Record::Sleep { ms } if ms > MAX_SLEEP_MS => {
            return Err(format!("sleep: ms = {ms}, at most {MAX_SLEEP_MS} (one day)"))
        }
        Record::Sleep { ms } => Step::Sleep(ms),
        Record::MultifdConnect { channel } => Step::Multifd(MultifdStep::Connect { channel }),
        Record::MultifdInit { channel, magic, version, uuid, id } => {
            let good = MultifdStep::init(channel);
            let MultifdStep::Init { magic: m0, version: v0, uuid: u0, .. } = good else {
                unreachable!("MultifdStep::init builds an Init")
            };
            let uuid = match uuid {
                None => u0,
                Some(u) => hex(&u)?
                    .try_into()
                    .map_err(|_| format!("multifd-init: uuid {u:?} is not 16 bytes"))?,
            };
            Step::Multifd(MultifdStep::Init {
                channel,
                magic: magic.unwrap_or(m0),
                version: version.unwrap_or(v0),
                uuid,
                id: id.unwrap_or(channel),
            })
        }
        Record::MultifdRam {
            channel,
            pages: p,
            sync,
            normal_pages,
            pages_alloc,
            packet_num,
            compression,
            corrupt,
        } => {
            let pages = p.iter().map(|s| pages(s)).collect::<Result<Vec<_>, _>>()?.concat();
            if pages.iter().any(|x| x.block != pages[0].block) {
                return Err("multifd-ram: all pages of a packet belong to one block".into());
            }
            if pages.len() > 128 {
                return Err(format!("multifd-ram: {} pages, a packet holds 128", pages.len()));
            }
            let compression = match compression.as_deref().map(|c| (c, Compression::from_name(c))) {
                None => Compression::None,
                Some((
                    _,
                    Some(c @ (Compression::None | Compression::Zlib | Compression::Zstd)),
                )) => c,
                Some((o, _)) => {
                    return Err(format!("multifd-ram: compression {o:?} (none, zlib or zstd)"))
                }
            };
            let corrupt = match corrupt.as_deref() {
                None => None,
                Some(c) => Some(
                    Corruption::parse(c)
                        .ok_or_else(|| format!("multifd-ram: corrupt {c:?} (garbage or short)"))?,
                ),
            };
            if corrupt.is_some() && compression == Compression::None {
                return Err("multifd-ram: corrupt needs a compression (zlib or zstd)".into());
            }
            Step::Multifd(MultifdStep::Ram {
                channel,
                pages,
                sync,
                normal_pages,
                pages_alloc,
                packet_num,
                compression,
                corrupt,
            })
        }
        Record::MultifdSync { channel, packet_num } => {
            Step::Multifd(MultifdStep::Sync { channel, packet_num })
        }
        Record::MultifdFlush {} => Step::MultifdFlush,
    })
}

fn matcher(s: &str) -> Result<RpMatcher, String> {
    let (k, v) = match s.split_once(':') {
        Some((k, v)) => {
            (k, Some(v.parse::<u32>().map_err(|_| format!("expect-rp: bad value in {s:?}"))?))
        }
        None => (s, None),
    };
    Ok(match (k, v) {
        ("pong", Some(v)) => RpMatcher::Pong(v),
        ("pong", None) => RpMatcher::AnyPong,
        ("shut", Some(v)) => RpMatcher::Shut(v),
        ("shut", None) => RpMatcher::AnyShut,
        ("page-request", None) => RpMatcher::PageRequest,
        ("any", None) => RpMatcher::Any,
        _ => {
            return Err(format!(
                "expect-rp: unknown message {s:?} (pong[:N], shut[:N], page-request, any)"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_specs() {
        assert_eq!(pages("mem0:3-5@2").unwrap().len(), 3);
        assert_eq!(pages("/rom@etc/acpi/tables:0@zero").unwrap()[0].block, "/rom@etc/acpi/tables");
        assert!(pages("mem0:5-3@1").is_err());
        assert!(pages("mem0:1").is_err());
        let f = pages("mem0:2-3@fill=0x5a").unwrap();
        assert_eq!(f[1].content, Content::Fill(0x5a));
        assert_eq!(pages("mem0:2@fill=7").unwrap()[0].content, Content::Fill(7));
        assert!(pages("mem0:2@fill=256").is_err() && pages("mem0:2@fill=0xzz").is_err());
    }

    #[test]
    fn records_parse() {
        let t: toml::Table = toml::from_str(
            "op = \"discard\"\nblock = \"mem0\"\nranges = [[0, 4096]]\nterminator = false",
        )
        .unwrap();
        match parse_record(&t).unwrap() {
            Step::Discard { terminator: None, ranges, .. } => assert_eq!(ranges, vec![(0, 4096)]),
            o => panic!("{o:?}"),
        }
        let t: toml::Table = toml::from_str("op = \"lisen\"").unwrap();
        assert!(parse_record(&t).unwrap_err().contains("lisen"));
        let t: toml::Table = toml::from_str("op = \"ping\"\nvalu = 1").unwrap();
        assert!(parse_record(&t).is_err());
    }

    #[test]
    fn multifd_records_parse() {
        let t: toml::Table =
            toml::from_str("op = \"multifd-init\"\nchannel = 1\nmagic = 1").unwrap();
        match parse_record(&t).unwrap() {
            Step::Multifd(MultifdStep::Init { magic: 1, version: 1, id: 1, .. }) => {}
            o => panic!("{o:?}"),
        }
        let t: toml::Table = toml::from_str(
            "op = \"multifd-ram\"\nchannel = 0\npages = [\"mem0:0-3@1\", \"mem0:4@zero\"]",
        )
        .unwrap();
        match parse_record(&t).unwrap() {
            Step::Multifd(MultifdStep::Ram { pages, sync: false, .. }) => {
                assert_eq!(pages.len(), 5)
            }
            o => panic!("{o:?}"),
        }
        let t: toml::Table = toml::from_str(
            "op = \"multifd-ram\"\nchannel = 0\npages = [\"mem0:0@1\", \"pc.bios:0@1\"]",
        )
        .unwrap();
        assert!(parse_record(&t).unwrap_err().contains("one block"));
        let t: toml::Table =
            toml::from_str("op = \"multifd-init\"\nchannel = 0\nuuid = \"00\"").unwrap();
        assert!(parse_record(&t).unwrap_err().contains("16 bytes"));
    }

    fn rec(t: &str) -> Result<Step, String> {
        parse_record(&toml::from_str(t).unwrap())
    }

    /// Values a scenario can write that once panicked the engine.
    #[test]
    fn values_that_cannot_be_encoded_are_refused() {
        let long = "r".repeat(33);
        let e = rec("op = \"globalstate\"\nruntime = 1").unwrap_err();
        assert!(e.contains("runtime"), "{e}");
        let e = rec(&format!("op = \"globalstate\"\nrunstate = \"{long}\"")).unwrap_err();
        assert!(e.contains("runstate") && e.contains("33 bytes"), "{e}");
        // 32 bytes fill the buffer without NUL: sent as written.
        let r32 = "r".repeat(32);
        match rec(&format!("op = \"globalstate\"\nrunstate = \"{r32}\"")).unwrap() {
            Step::DeviceFull { data, .. } => {
                assert_eq!(data.len(), 104);
                assert_eq!(&data[..4], &33u32.to_be_bytes());
                assert_eq!(&data[4..36], r32.as_bytes());
            }
            o => panic!("{o:?}"),
        }
        let name = "n".repeat(256);
        let e = rec(&format!("op = \"device\"\nidstr = \"{name}\"\ndata = \"\"")).unwrap_err();
        assert!(e.contains("idstr") && e.contains("256 bytes"), "{e}");
        let e = rec(&format!("op = \"discard\"\nblock = \"{name}\"\nranges = []")).unwrap_err();
        assert!(e.contains("block"), "{e}");
        let e = rec(&format!("op = \"ram-part\"\npages = [\"{name}:0@1\"]")).unwrap_err();
        assert!(e.contains("block name"), "{e}");
        let e = rec("op = \"ram-part\"\npages = [\"mem0:0-99999999999@1\"]").unwrap_err();
        assert!(e.contains("more than"), "{e}");
        let e = rec("op = \"ram-part\"\npages = [\"mem0:18446744073709551615@1\"]").unwrap_err();
        assert!(e.contains("beyond"), "{e}");
        let big = "00".repeat(65536);
        let e = rec(&format!("op = \"command\"\ncmd = 1\npayload = \"{big}\"")).unwrap_err();
        assert!(e.contains("payload") && e.contains("65536 bytes"), "{e}");
        let e = rec(&format!("op = \"advise-raw\"\nbytes = \"{big}\"")).unwrap_err();
        assert!(e.contains("advise-raw"), "{e}");
        // A non-ASCII character in hex (slicing it panicked).
        let e = rec("op = \"raw\"\nbytes = \"aéb\"").unwrap_err();
        assert!(e.contains("not a hex digit"), "{e}");
        let e = rec("op = \"sleep\"\nms = 9223372036854775807").unwrap_err();
        assert!(e.contains("sleep"), "{e}");
        let e = rec("op = \"ping\"\nvalue = 4294967296").unwrap_err();
        assert!(e.contains("4294967296") || e.contains("invalid value"), "{e}");
    }
}
