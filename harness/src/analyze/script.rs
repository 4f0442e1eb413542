//! `--format analyze-migration`: what QEMU's `scripts/analyze-migration.py`
//! prints with `-d state` (and `-d desc`): a JSON object, indented by four
//! spaces, with one member per section in the order the stream opened them,
//! keyed `"<idstr> (<section id>)"`: RAM sections list their blocks' sizes
//! (`"section sizes"`, `0x%016x`), device sections their fields as
//! [`super::vmstate`] renders them. On streams the script cannot read
//! (postcopy, multifd, mapped-ram, no vmdesc) the output keeps that shape; a
//! device without a description is shown as its data in hex.

use super::pyjson::J;
use super::{Analysis, Event, EventKind};

/// The `-d state` object.
pub fn state(a: &Analysis) -> J {
    let mut out = Vec::new();
    add(a, &a.events, &mut out);
    J::Obj(out)
}

fn add(a: &Analysis, events: &[Event], out: &mut Vec<(String, J)>) {
    for e in events {
        match &e.kind {
            EventKind::Section {
                kind: "START" | "FULL", section_id, name, ram: Some(_), ..
            } => {
                let sizes = a
                    .blocks
                    .iter()
                    .map(|b| (b.name.clone(), J::Str(format!("0x{:016x}", b.used_length))))
                    .collect();
                let v = J::Obj(vec![("section sizes".into(), J::Obj(sizes))]);
                J::insert(out, format!("{name} ({section_id})"), v);
            }
            EventKind::Device { index } => {
                let d = &a.devices[*index];
                if d.kind != "START" && d.kind != "FULL" {
                    continue;
                }
                let v = match &d.fields {
                    Some(f) => f.clone(),
                    None => J::Str(super::vmstate::hex(&d.data)),
                };
                J::insert(out, format!("{} ({})", d.name, d.section_id), v);
            }
            EventKind::Package { events, .. } => add(a, events, out),
            _ => {}
        }
    }
}

/// The script's `-d state` output (one trailing newline, as `print`).
pub fn state_text(a: &Analysis) -> String {
    format!("{}\n", state(a).to_python())
}

/// The script's `-d desc` output: the vmdesc as it was sent, reindented.
pub fn desc_text(a: &Analysis) -> Option<String> {
    a.vmdesc.as_ref().map(|v| format!("{}\n", v.to_python()))
}
