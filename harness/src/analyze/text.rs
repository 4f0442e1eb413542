//! The readable summary of an [`Analysis`].

use std::fmt::Write as _;

use super::pyjson::J;
use super::{Analysis, Event, EventKind};

/// The summary; with `fields`, each described device's fields too.
pub fn summary(a: &Analysis, fields: bool) -> String {
    let mut s = String::new();
    let _ = write_summary(&mut s, a, fields);
    s
}

fn write_summary(s: &mut String, a: &Analysis, fields: bool) -> std::fmt::Result {
    writeln!(s, "Inputs:")?;
    for i in &a.inputs {
        let role = serde_json::to_value(i.role).ok().and_then(|v| v.as_str().map(String::from));
        writeln!(
            s,
            "  {:<12} {:>10} bytes  {}",
            role.unwrap_or_default(),
            i.bytes,
            i.path.display()
        )?;
    }
    if let Some(h) = &a.header {
        write!(s, "Header: version {}", h.version)?;
        match &h.machine {
            Some(m) => write!(s, ", configuration: machine {m}")?,
            None => write!(s, ", no configuration section")?,
        }
        if let Some(b) = h.target_page_bits {
            write!(s, ", target page bits {b}")?;
        }
        if let Some(c) = &h.capabilities {
            write!(s, ", capabilities [{}]", c.join(", "))?;
        }
        if let Some(u) = &h.uuid {
            write!(s, ", uuid {u}")?;
        }
        writeln!(s)?;
    }
    writeln!(s, "Stream (main channel; offset, length, record):")?;
    events(s, a, &a.events, 1)?;
    if let Some(p) = &a.postcopy {
        writeln!(s, "Postcopy timeline:")?;
        let at = |o: Option<u64>| o.map_or("-".to_string(), |o| format!("{o:#010x}"));
        writeln!(s, "  POSTCOPY_ADVISE      {}", at(p.advise))?;
        let pages: u64 = p.discards.iter().map(|d| d.pages).sum();
        writeln!(
            s,
            "  POSTCOPY_RAM_DISCARD {} command(s), {pages} page(s) discarded",
            p.discards.len()
        )?;
        for d in &p.discards {
            writeln!(
                s,
                "    {:#010x} {}: {} range(s), {} page(s)",
                d.offset, d.block, d.ranges, d.pages
            )?;
        }
        if let Some((o, n)) = p.package {
            writeln!(s, "  PACKAGED             {o:#010x} ({n} bytes)")?;
        }
        writeln!(s, "  POSTCOPY_LISTEN      {}", at(p.listen))?;
        writeln!(s, "  POSTCOPY_RUN         {}", at(p.run))?;
        for r in &p.resumes {
            writeln!(s, "  POSTCOPY_RESUME      {r:#010x}")?;
        }
        writeln!(
            s,
            "  pages after LISTEN: {} on the main channel, {} on the preempt channel",
            p.main_pages_after_listen, p.preempt_pages
        )?;
        match &p.requests {
            Some(r) => writeln!(
                s,
                "  page requests (return path): {} message(s), {} page(s), {} of them sent after LISTEN",
                r.messages, r.pages, r.answered_pages
            )?,
            None => writeln!(s, "  page requests: return path not recorded")?,
        }
    }
    writeln!(s, "RAM blocks (pages of {} bytes):", wire::TARGET_PAGE_SIZE)?;
    writeln!(
        s,
        "  {:<24} {:>12} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>7} {:>10} {:>9} {:>9}",
        "block",
        "bytes",
        "pages",
        "zero",
        "xbzrle",
        "multifd",
        "preempt",
        "postcopy",
        "resent",
        "never-sent",
        "discarded",
        "requested"
    )?;
    for b in &a.blocks {
        writeln!(
            s,
            "  {:<24} {:>12} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>7} {:>10} {:>9} {:>9}",
            b.name,
            b.used_length,
            b.pages,
            b.zero_pages,
            b.xbzrle_pages,
            b.multifd_pages,
            b.preempt_pages,
            b.postcopy_pages,
            b.resent_pages,
            b.never_sent_pages,
            b.discarded_pages,
            b.requested_pages
        )?;
    }
    for m in &a.mapped_ram {
        writeln!(
            s,
            "  mapped-ram {}: header at {:#x} (version {}, page size {}), bitmap at {:#x}, pages at {:#x}: {} of {} pages present",
            m.name, m.header_offset, m.version, m.page_size, m.bitmap_offset, m.pages_offset, m.pages_present,
            m.used_length.div_ceil(m.page_size.max(1))
        )?;
    }
    let total: u64 = a.devices.iter().map(|d| d.size).sum();
    let described = a.devices.iter().filter(|d| d.fields.is_some()).count();
    writeln!(
        s,
        "Devices: {} section(s), {total} bytes of state, {described} decoded with the vmdesc{}",
        a.devices.len(),
        match a.vmdesc_len {
            Some(n) => format!(" ({n} bytes of JSON)"),
            None if a.vmdesc.is_some() => " (given with --vmdesc)".into(),
            None => " (the stream carries no vmdesc)".into(),
        }
    )?;
    for d in &a.devices {
        let inst = d.instance_id.map_or(String::new(), |i| format!(" instance {i}"));
        let ver = d.version_id.map_or(String::new(), |v| format!(" version {v}"));
        let how = match (&d.fields, &d.decode_error) {
            (Some(J::Obj(f)), _) => format!("{} field(s)", f.len()),
            (_, Some(e)) => format!("not decoded: {e}"),
            _ => "not described".into(),
        };
        writeln!(
            s,
            "  {:#010x} {} {} (id {}{inst}{ver}){}: {} bytes, {how}",
            d.offset,
            d.kind,
            d.name,
            d.section_id,
            if d.in_package { " [package]" } else { "" },
            d.size
        )?;
        if fields {
            if let Some(f) = &d.fields {
                leaves(s, f, &mut String::new())?;
            }
        }
    }
    for m in &a.multifd {
        writeln!(
            s,
            "Multifd channel {}: {} packet(s), {} SYNC, {} page(s), {} zero page(s), compression {} ({})",
            m.id, m.packets, m.syncs, m.pages, m.zero_pages,
            m.compression.as_deref().unwrap_or("none"), m.path.display()
        )?;
    }
    for r in &a.return_path {
        writeln!(
            s,
            "Return path: {} message(s): {} PONG, {} RECV_BITMAP, {} RESUME_ACK, {} SWITCHOVER_ACK, SHUT {} ({})",
            r.messages, r.pongs, r.recv_bitmaps, r.resume_acks, r.switchover_acks,
            r.shut.map_or("not sent".to_string(), |v| v.to_string()), r.path.display()
        )?;
    }
    for d in &a.damage {
        writeln!(s, "DAMAGED: {d}")?;
    }
    Ok(())
}

fn events(s: &mut String, a: &Analysis, evs: &[Event], depth: usize) -> std::fmt::Result {
    let pad = "  ".repeat(depth);
    let mut i = 0;
    while i < evs.len() {
        let e = &evs[i];
        match &e.kind {
            EventKind::Section { kind, section_id, name, instance_id, version_id, ram } => {
                // Consecutive RAM sections of one kind: one line.
                let same = |x: &Event| {
                    matches!(&x.kind, EventKind::Section { kind: k, section_id: id, ram: Some(r), .. }
                        if k == kind && id == section_id && r.mem_size_blocks == 0)
                };
                let j = if ram.is_some() {
                    i + 1 + evs[i + 1..].iter().take_while(|x| same(x)).count()
                } else {
                    i + 1
                };
                let (mut pages, mut zero, mut xb, mut fl, mut blocks) = (0, 0, 0, 0, 0);
                for x in &evs[i..j] {
                    if let EventKind::Section { ram: Some(r), .. } = &x.kind {
                        pages += r.pages;
                        zero += r.zero_pages;
                        xb += r.xbzrle_pages;
                        fl += r.multifd_flushes;
                        blocks += r.mem_size_blocks;
                    }
                }
                let end = evs[j - 1].offset + evs[j - 1].len;
                let n = j - i;
                let times = if n > 1 { format!(" x{n}") } else { String::new() };
                let iv = match (instance_id, version_id) {
                    (Some(i), Some(v)) => format!(", instance {i}, version {v}"),
                    _ => String::new(),
                };
                write!(
                    s,
                    "{pad}{:#010x} {:>9} {kind}{times} {name} (id {section_id}{iv})",
                    e.offset,
                    end - e.offset
                )?;
                if ram.is_some() {
                    if blocks > 0 {
                        write!(s, ": MEM_SIZE {blocks} block(s)")?;
                    }
                    write!(s, ": {pages} page(s), {zero} zero page(s)")?;
                    if xb > 0 {
                        write!(s, ", {xb} XBZRLE")?;
                    }
                    if fl > 0 {
                        write!(s, ", {fl} MULTIFD_FLUSH")?;
                    }
                }
                writeln!(s)?;
                i = j;
                continue;
            }
            EventKind::Channel { path } => writeln!(
                s,
                "{pad}-- recovery channel {} (offsets from its start):",
                path.display()
            )?,
            EventKind::Header { version } => writeln!(
                s,
                "{pad}{:#010x} {:>9} header (QEVM, version {version})",
                e.offset, e.len
            )?,
            EventKind::Device { index } => {
                let d = &a.devices[*index];
                writeln!(
                    s,
                    "{pad}{:#010x} {:>9} {} {} (id {}): {} bytes of device state",
                    e.offset, e.len, d.kind, d.name, d.section_id, d.size
                )?
            }
            EventKind::Command { name, detail } => match detail {
                Some(d) => writeln!(s, "{pad}{:#010x} {:>9} command {name}: {d}", e.offset, e.len)?,
                None => writeln!(s, "{pad}{:#010x} {:>9} command {name}", e.offset, e.len)?,
            },
            EventKind::Package { len, events: inner } => {
                writeln!(s, "{pad}{:#010x} {:>9} PACKAGED blob ({len} bytes):", e.offset, e.len)?;
                events(s, a, inner, depth + 1)?;
            }
            EventKind::Eof => writeln!(s, "{pad}{:#010x} {:>9} EOF", e.offset, e.len)?,
            EventKind::Vmdesc { len } => {
                writeln!(s, "{pad}{:#010x} {:>9} vmdesc ({len} bytes of JSON)", e.offset, e.len)?
            }
        }
        i += 1;
    }
    Ok(())
}

/// Decoded fields as `path = value` lines.
fn leaves(s: &mut String, v: &J, path: &mut String) -> std::fmt::Result {
    match v {
        J::Obj(m) => {
            for (k, x) in m {
                let n = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                leaves(s, x, path)?;
                path.truncate(n);
            }
        }
        J::Arr(a) => {
            for (i, x) in a.iter().enumerate() {
                let n = path.len();
                let _ = write!(path, "[{i}]");
                leaves(s, x, path)?;
                path.truncate(n);
            }
        }
        J::Str(t) => writeln!(s, "      {path} = {t}")?,
        other => {
            writeln!(s, "      {path} = {}", serde_json::to_string(other).unwrap_or_default())?
        }
    }
    Ok(())
}
