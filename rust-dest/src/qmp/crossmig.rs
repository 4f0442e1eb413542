//! rust-dest's own `x-crossmig-*` commands: RAMBlocks, page digests, RAM
//! dumps and the kept device sections (what the harness verifies with).

use std::io;

use serde_json::{json, Value};

use super::args::{Args, QResult, QmpErr};
use crate::ram::TARGET_PAGE_SIZE;
use crate::state::Shared;
use wire::digest;

pub(super) fn ramblocks(shared: &Shared) -> Value {
    Value::Array(
        shared
            .ram()
            .blocks()
            .iter()
            .map(|b| {
                json!({
                    "name": b.name,
                    "used-length": b.used_length,
                    "page-size": b.page_size,
                    "backing": b.backing_path().map(|p| p.display().to_string()),
                    "received-pages": b.received.count(),
                })
            })
            .collect(),
    )
}

fn block_not_found(name: &str) -> QmpErr {
    QmpErr::generic(format!("RAMBlock '{name}' not found"))
}

pub(super) async fn ram_digests(shared: Shared, mut a: Args) -> QResult<Value> {
    let only = a.opt_str("block")?;
    let pages = a.opt_bool("pages")?.unwrap_or(false);
    a.finish()?;
    let blocks = match &only {
        Some(n) => vec![shared.ram().get(n).ok_or_else(|| block_not_found(n))?],
        None => shared.ram().blocks(),
    };
    let blocks = tokio::task::spawn_blocking(move || {
        blocks
            .iter()
            .map(|b| {
                let d = b.page_digests();
                let bytes: Vec<u8> = d.iter().flat_map(|x| x.to_le_bytes()).collect();
                let mut o = json!({
                    "name": b.name,
                    "used-length": b.used_length,
                    "digest": digest::to_hex(&[digest::page_digest(&bytes)]),
                });
                if pages {
                    o["page-digests"] = json!(digest::to_hex(&d));
                }
                o
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| QmpErr::generic(format!("digest computation failed: {e}")))?;
    Ok(json!({ "algorithm": digest::ALGORITHM, "page-size": TARGET_PAGE_SIZE, "blocks": blocks }))
}

pub(super) async fn dump_ramblock(shared: Shared, mut a: Args) -> QResult<Value> {
    let name = a.str("block")?;
    let file = a.str("file")?;
    a.finish()?;
    let b = shared.ram().get(&name).ok_or_else(|| block_not_found(&name))?;
    tokio::task::spawn_blocking(move || -> io::Result<u64> {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0u64;
        while off < b.used_length {
            let n = (b.used_length - off).min(buf.len() as u64) as usize;
            b.mapping.read(off as usize, &mut buf[..n]);
            f.write_all(&buf[..n])?;
            off += n as u64;
        }
        f.flush()?;
        Ok(off)
    })
    .await
    .map_err(|e| QmpErr::generic(format!("dump failed: {e}")))?
    .map(|n| json!({ "bytes": n }))
    .map_err(|e| QmpErr::generic(format!("Cannot write RAMBlock '{name}': {e}")))
}

pub(super) fn query_devices(shared: &Shared) -> Value {
    let g = shared.lock();
    let sections: Vec<Value> = g
        .devices
        .iter()
        .map(|d| {
            json!({
                "section-id": d.section_id,
                "idstr": d.idstr,
                "instance-id": d.instance_id,
                "version-id": d.version_id,
                "size": d.data.len(),
                "stream-offset": d.stream_offset,
                "in-package": d.in_package,
                "vmdesc": d.vmdesc.clone(),
            })
        })
        .collect();
    json!({ "machine": g.stream_machine, "globalstate": g.globalstate, "sections": sections })
}

fn hex(data: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        s.push(H[(b >> 4) as usize] as char);
        s.push(H[(b & 15) as usize] as char);
    }
    s
}

pub(super) fn device_data(shared: &Shared, mut a: Args) -> QResult<Value> {
    let idstr = a.str("idstr")?;
    let inst = a.opt_u64("instance-id")?;
    a.finish()?;
    let data = {
        let g = shared.lock();
        g.devices
            .iter()
            .find(|d| d.idstr == idstr && inst.is_none_or(|i| u64::from(d.instance_id) == i))
            .map(|d| d.data.clone())
    };
    match data {
        Some(d) => Ok(json!({ "data": hex(&d) })),
        None => Err(QmpErr::generic(match inst {
            Some(i) => format!("Device section '{idstr}' instance {i} not found"),
            None => format!("Device section '{idstr}' not found"),
        })),
    }
}
