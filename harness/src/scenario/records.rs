//! Records of stream scenarios: `[[records]]` tables → synthetic-source steps.

use serde::Deserialize;

use crate::synth::{Corruption, MultifdStep, Page, RpMatcher, Step};
use wire::multifd::Compression;

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
    },
    SwitchoverStart {},
    Eof {},
    /// The vmdesc JSON for the device sections of this script (computed).
    Vmdesc {},
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
    if !s.len().is_multiple_of(2) {
        return Err(format!("hex string {s:?} has an odd number of digits"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| format!("bad hex {s:?}")))
        .collect()
}

/// Parse "BLOCK:FIRST-LAST@VERSION", "BLOCK:N@VERSION" or "BLOCK:N@zero".
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
    (a..=b)
        .map(|i| {
            if ver == "zero" {
                Ok(Page::zero(block, i))
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
        Record::AdviseRaw { bytes } => Step::AdviseRaw(hex(&bytes)?),
        Record::Discard { block, ranges, version, terminator } => {
            let terminator = match terminator {
                None => Some(0),
                Some(toml::Value::Boolean(false)) => None,
                Some(toml::Value::Integer(i)) if (0..=255).contains(&i) => Some(i as u8),
                Some(o) => {
                    return Err(format!("discard: terminator must be a byte or false, not {o}"))
                }
            };
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
            Step::globalstate(runstate.as_deref().unwrap_or("running"))
        }
        Record::Device { idstr, instance, version, data } => Step::DeviceFull {
            idstr,
            instance: instance.unwrap_or(0),
            version: version.unwrap_or(1),
            data: hex(&data)?,
        },
        Record::SwitchoverStart {} => Step::SwitchoverStart,
        Record::Eof {} => Step::Eof,
        Record::Vmdesc {} => Step::Vmdesc(serde_json::Value::Null),
        Record::Command { cmd, payload } => {
            Step::Command { cmd, payload: hex(payload.as_deref().unwrap_or(""))? }
        }
        Record::Raw { bytes } => Step::Raw(hex(&bytes)?),
        Record::ExpectRp { message } => Step::ExpectRp(matcher(&message)?),
        Record::ServePageRequests {} => Step::ServePageRequests,
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
            let compression = match compression.as_deref() {
                None | Some("none") => Compression::None,
                Some("zlib") => Compression::Zlib,
                Some("zstd") => Compression::Zstd,
                Some(o) => {
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
}
