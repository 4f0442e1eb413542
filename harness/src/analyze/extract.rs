//! `--extract DIR`: every RAMBlock as a file named after the block (what
//! `analyze-migration.py -x` writes), plus `desc.json` and `state.json`.
//! Streams and recordings are replayed with the harness's own replay
//! (`verify::stream::Replay`: main, multifd, recovery and preempt
//! channels); mapped-ram files are read from their page areas.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{mapped_ram, Analysis, Role};
use crate::verify::stream::Replay;

/// Write the blocks; returns the files written.
pub fn extract(a: &Analysis, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let mut put = |name: &str, data: &[u8]| -> Result<()> {
        let rel = name.trim_start_matches('/');
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
        written.push(p);
        Ok(())
    };
    if let Some(d) = super::script::desc_text(a) {
        put("desc.json", d.trim_end().as_bytes())?;
    }
    if !a.mapped_ram.is_empty() {
        let main = a.inputs.iter().find(|i| i.role == Role::Main).context("no main channel")?;
        let bytes = std::fs::read(&main.path)?;
        for b in &a.mapped_ram {
            let mut buf = vec![0u8; b.used_length as usize];
            for (i, page) in mapped_ram::pages(&bytes, b) {
                let o = i * b.page_size as usize;
                let n = page.len().min(buf.len().saturating_sub(o));
                buf[o..o + n].copy_from_slice(&page[..n]);
            }
            put(&b.name, &buf)?;
        }
    } else {
        let files: Vec<PathBuf> = a
            .inputs
            .iter()
            .filter(|i| i.role != Role::ReturnPath)
            .map(|i| i.path.clone())
            .collect();
        let r = Replay::from_recordings(&files).context("replaying the stream for --extract")?;
        for b in &a.blocks {
            if let Some(data) = r.blocks.get(&b.name) {
                put(&b.name, data)?;
            }
        }
    }
    put("state.json", super::script::state(a).to_python().as_bytes())?;
    Ok(written)
}
