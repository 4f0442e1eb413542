//! Device-state mutations: a device section duplicated, dropped, reordered
//! or with one byte flipped, in the precopy tail (FULL sections through EOF,
//! delimited by `wire::tail::parse_tail`) or inside the postcopy PACKAGED
//! blob (delimited by `wire::vmdesc::package_section_ends`); and, in the
//! package, LISTEN moved after the device state or RUN left out.

use std::ops::Range;

use wire::consts::*;
use wire::tail::parse_tail;
use wire::vmdesc::package_section_ends;

use super::mutation::Mutation;
use super::state::{Shared, State};

/// Sections never picked: their loss or change stops QEMU at once and says
/// nothing about the device-state checks.
const SKIP: &[&str] = &["globalstate", "configuration"];

/// The section a device mutation picks: the first one (after `skip`
/// others) whose data is at least `min` bytes, not in [`SKIP`].
fn pick(blob: &[u8], sections: &[Range<usize>], min: usize, skip: usize) -> Option<usize> {
    sections
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            let (name, data) = section_name_data(blob, r);
            !SKIP.contains(&name.as_str()) && data.len() >= min
        })
        .map(|(i, _)| i)
        .nth(skip)
}

/// A FULL section's idstr and data range (header: type, be32 id, counted
/// idstr, be32 instance, be32 version; footer: 5 bytes).
fn section_name_data(blob: &[u8], r: &Range<usize>) -> (String, Range<usize>) {
    let n = blob[r.start + 5] as usize;
    let name = String::from_utf8_lossy(&blob[r.start + 6..r.start + 6 + n]).into_owned();
    let d = r.start + 6 + n + 8;
    (name, d..r.end.saturating_sub(5).max(d))
}

/// Apply a device mutation to `parts` (byte ranges of `blob`, in order),
/// returning the new blob.
fn mutate_sections(
    m: Mutation,
    sh: &Shared,
    blob: &[u8],
    parts: &[Range<usize>],
    sections: &[usize],
) -> Option<Vec<u8>> {
    let secs: Vec<Range<usize>> = sections.iter().map(|&i| parts[i].clone()).collect();
    let mut order: Vec<Range<usize>> = parts.to_vec();
    let mut flip: Option<usize> = None;
    match m {
        Mutation::DuplicateDeviceSection => {
            let k = sections[pick(blob, &secs, 1, 1)?];
            order.insert(k + 1, parts[k].clone());
            sh.note(format!(
                "device section {:?} sent twice",
                section_name_data(blob, &parts[k]).0
            ));
        }
        Mutation::DropDeviceSection => {
            let k = sections[pick(blob, &secs, 1, 1)?];
            order.remove(k);
            sh.note(format!("device section {:?} left out", section_name_data(blob, &parts[k]).0));
        }
        Mutation::ReorderDeviceSections => {
            let a = pick(blob, &secs, 1, 1)?;
            let b = pick(blob, &secs, 1, 2)?;
            order.swap(sections[a], sections[b]);
            sh.note(format!(
                "device sections {:?} and {:?} swapped",
                section_name_data(blob, &secs[a]).0,
                section_name_data(blob, &secs[b]).0
            ));
        }
        Mutation::FlipDeviceByte => {
            // A plain data byte: the middle of the largest section that is
            // not the CPU (whose flags QEMU checks on load).
            let k = (0..secs.len())
                .filter(|&i| {
                    let n = section_name_data(blob, &secs[i]).0;
                    !SKIP.contains(&n.as_str()) && n != "cpu" && n != "ram"
                })
                .max_by_key(|&i| section_name_data(blob, &secs[i]).1.len())?;
            let (name, d) = section_name_data(blob, &secs[k]);
            if d.is_empty() {
                return None;
            }
            let at = d.start + d.len() / 2;
            flip = Some(at);
            sh.note(format!("device section {name:?}: data byte {} flipped", at - d.start));
        }
        _ => return None,
    }
    let mut v = Vec::with_capacity(blob.len() + 4096);
    for r in &order {
        let s = v.len();
        v.extend_from_slice(&blob[r.clone()]);
        if let Some(f) = flip.filter(|f| r.contains(f)) {
            v[s + f - r.start] ^= 0xff;
        }
    }
    Some(v)
}

/// The buffered precopy tail: once it is complete (vmdesc through the end
/// of the data, or the source closed: `last`), mutate and send it.
pub(super) fn try_tail(m: Mutation, st: &mut State, sh: &Shared, out: &mut Vec<u8>, last: bool) {
    let Some(tail) = st.tail.as_ref() else { return };
    let parse = parse_tail(tail);
    let complete = parse.as_ref().is_some_and(|p| p.vmdesc_ends_at(tail.len()));
    if !complete && !last {
        return;
    }
    let tail = st.tail.take().unwrap_or_default();
    // Send nothing more through the tail logic: later bytes pass untouched.
    st.tail = None;
    let Some(p) = parse.filter(|_| !st.done) else {
        out.extend_from_slice(&tail);
        return;
    };
    let mut parts: Vec<Range<usize>> = p.sections.iter().map(|&(a, b)| a..b).collect();
    let sections: Vec<usize> = (0..parts.len()).collect();
    parts.push(p.eof_pos..tail.len());
    match mutate_sections(m, sh, &tail, &parts, &sections) {
        Some(v) => {
            st.done = true;
            out.extend_from_slice(&v);
        }
        None => out.extend_from_slice(&tail),
    }
}

/// The PACKAGED blob: commands and FULL sections, mutated and re-framed.
pub(super) fn mutate_package(
    m: Mutation,
    st: &mut State,
    sh: &Shared,
    cmd: &[u8],
    blob: &[u8],
    out: &mut Vec<u8>,
) {
    let unchanged = |out: &mut Vec<u8>| {
        out.extend_from_slice(cmd);
        out.extend_from_slice(blob);
    };
    let Some(ends) = package_section_ends(blob) else { return unchanged(out) };
    // Split the blob into commands and sections.
    let mut parts: Vec<Range<usize>> = Vec::new();
    let mut sections = Vec::new();
    let (mut listen, mut run) = (None, None);
    let mut p = 0;
    while p < blob.len() {
        let end = if blob[p] == QEMU_VM_COMMAND && p + 5 <= blob.len() {
            let c = u16::from_be_bytes([blob[p + 1], blob[p + 2]]);
            let len = u16::from_be_bytes([blob[p + 3], blob[p + 4]]) as usize;
            match c {
                MIG_CMD_POSTCOPY_LISTEN => listen = Some(parts.len()),
                MIG_CMD_POSTCOPY_RUN => run = Some(parts.len()),
                _ => {}
            }
            p + 5 + len
        } else if let Some(&e) = ends.get(&p) {
            sections.push(parts.len());
            e
        } else {
            return unchanged(out);
        };
        if end > blob.len() {
            return unchanged(out);
        }
        parts.push(p..end);
        p = end;
    }
    let new = match m {
        Mutation::ListenAfterDevices => {
            let (Some(l), Some(r)) = (listen, run) else { return unchanged(out) };
            let mut order = parts.clone();
            let lr = order.remove(l);
            order.insert(r - 1, lr);
            sh.note("LISTEN moved after the device state in the package".into());
            Some(order.iter().flat_map(|r| blob[r.clone()].to_vec()).collect())
        }
        Mutation::DropPostcopyRun => {
            let Some(r) = run else { return unchanged(out) };
            sh.note("RUN left out of the package".into());
            Some(
                parts
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != r)
                    .flat_map(|(_, x)| blob[x.clone()].to_vec())
                    .collect(),
            )
        }
        _ => mutate_sections(m, sh, blob, &parts, &sections),
    };
    let Some(new) = new else { return unchanged(out) };
    st.done = true;
    out.extend_from_slice(&cmd[..cmd.len() - 4]);
    out.extend_from_slice(&(new.len() as u32).to_be_bytes());
    out.extend_from_slice(&new);
}
