//! The end of a precopy stream (QEMU's `qemu_loadvm_state()` after the
//! iterative phase, `migration/savevm.c`): the device-state tail, EOF, and
//! the vmdesc, which QEMU reads only to discard it.
//!
//! QEMU's destination never fails for the vmdesc: with `suppress-vmdesc` it
//! does not read past EOF; otherwise it reads one byte, and if that is
//! `0x06` the be32 length and that many bytes, ignoring a stream that ends
//! (right after EOF, or inside the vmdesc) and a byte other than `0x06`
//! (it only logs "Expected vmdescription section"). rust-dest does not model
//! devices, so it finds EOF by delimiting the device sections through their
//! footers ([`wire::tail::parse_tail`]) and uses the vmdesc when one is
//! complete (docs/wire-format.md §5.4).

use super::{LoadError, Loader};
use crate::channel::Reader;
use wire::consts::QEMU_VM_VMDESCRIPTION;
use wire::tail::{parse_tail, AfterEof};
use wire::vmdesc;
use wire::vmdesc::check::Checked;

/// What a vmdesc may hold at most before rust-dest stops keeping its bytes
/// (it still reads them all, as QEMU does).
const MAX_VMDESC_KEPT: usize = 16 << 20;

impl Loader {
    /// Precopy final phase, from the first FULL section on: buffer the tail
    /// until a parse through EOF is certain, keep the device sections,
    /// complete.
    pub(super) fn device_tail(&mut self, r: &mut Reader) -> Result<(), LoadError> {
        let tail_base = r.offset();
        if !self.cfg.section_footers {
            // Old machine types (pc-i440fx-2.3 and older): nothing bounds a
            // section but the device model that reads it.
            return Err(LoadError::unsupported(tail_base, format!(
                "device state at byte offset {tail_base} cannot be delimited: the machine type sends no section footers (send-section-footer=off) and rust-dest does not model devices"
            )));
        }
        let mut tail: Vec<u8> = Vec::new();
        let mut closed = false;
        loop {
            let n = {
                let (w, _) = r.window();
                tail.extend_from_slice(w);
                w.len()
            };
            r.consume(n);
            if self.finish_tail(&tail, tail_base, closed)? {
                return self.complete();
            }
            if tail.len() > self.cfg.max_device_state {
                return Err(LoadError::unsupported(
                    tail_base,
                    format!(
                        "device state starting at byte offset {tail_base} exceeds {} bytes before its end (EOF) could be found",
                        self.cfg.max_device_state
                    ),
                ));
            }
            let at = r.offset();
            if closed {
                return Err(LoadError::TruncatedDeviceState { at, start: tail_base });
            }
            match r.fill(1) {
                Ok(true) => {}
                Ok(false) => closed = true,
                Err(source) => return Err(LoadError::Io { at, source }),
            }
        }
    }

    /// Keep the device sections of `tail` if its end is certain: a vmdesc
    /// that describes them, else the footer parse through EOF once what
    /// follows EOF is what QEMU would have read (a complete vmdesc, nothing
    /// with `suppress-vmdesc`, anything once the stream has ended).
    fn finish_tail(&mut self, tail: &[u8], base: u64, closed: bool) -> Result<bool, LoadError> {
        if let Some((eof_pos, json)) = vmdesc::find_vmdesc_tail(tail) {
            if let Ok(secs) = vmdesc::split_with_vmdesc(&tail[..eof_pos], base, &json) {
                for s in &secs {
                    // The catalogue's version checks first (QEMU checks the
                    // header before the fields), then what QEMU's device
                    // code would refuse that the vmdesc shows
                    // (docs/differential-fuzz.md).
                    self.keep_device(tail, s, base, false)?;
                    match vmdesc::check::check_section(tail, s, base) {
                        Checked::Ok => {}
                        Checked::Failed(e) => return Err(LoadError::DeviceCheck(e)),
                        Checked::Undescribed(why) => tracing::warn!(
                            "device section {:?}: the vmdesc does not add up ({why}); its fields are not checked",
                            s.idstr
                        ),
                    }
                }
                self.shared.lock().vmdesc = Some(json);
                return Ok(true);
            }
            // A footer marker exactly where the vmdesc ends a section, naming
            // another section: QEMU fails there (differential fuzzing,
            // docs/differential-fuzz.md).
            if let Some(m) = vmdesc::footer_mismatch(&tail[..eof_pos], base, &json) {
                return Err(LoadError::Decode(wire::DecodeError::invalid(m.at, m.to_string())));
            }
        }
        let Some(p) = parse_tail(tail) else { return Ok(false) };
        let certain = match p.after {
            AfterEof::Vmdesc { .. } => true,
            AfterEof::Nothing => closed || self.cfg.suppress_vmdesc,
            // Other bytes after an EOF, when the same bytes also parse as
            // whole sections up to the end: the EOF is a footer-like pattern
            // and 0x00 inside device data and the real EOF never came (QEMU,
            // parsing the device, reports a truncated stream).
            AfterEof::Other(_) if p.sections_reach_end => false,
            AfterEof::VmdescPartial { .. } | AfterEof::Other(_) => closed,
        };
        if !certain {
            return Ok(false);
        }
        let eof_at = base + p.eof_pos as u64;
        match &p.after {
            _ if self.cfg.suppress_vmdesc => {}
            AfterEof::Nothing => {
                tracing::warn!("stream ended right after EOF (byte offset {eof_at}): no vmdesc")
            }
            AfterEof::Vmdesc { json: None, .. } => {
                tracing::warn!("the vmdesc after EOF (byte offset {eof_at}) is not JSON; ignored")
            }
            AfterEof::VmdescPartial { declared, have } => tracing::warn!(
                "stream ended inside the vmdesc after EOF (byte offset {eof_at}): {have} of {} byte(s)",
                declared.map_or("?".into(), |d| d.to_string())
            ),
            AfterEof::Other(b) => tracing::warn!(
                "expected a vmdesc (0x06) after EOF (byte offset {eof_at}), found {b:#04x}; ignored"
            ),
            AfterEof::Vmdesc { json: Some(_), .. } => {}
        }
        for &(start, end) in &p.sections {
            // The parse found these bounds; split_exact only reads them.
            match vmdesc::split_exact(tail, start, end, base) {
                Ok((s, _)) => self.keep_device(tail, &s, base, false)?,
                Err(e) => tracing::warn!("device section at byte offset {start}: {e}"),
            }
        }
        if let AfterEof::Vmdesc { json: Some(v), .. } = p.after {
            if !self.cfg.suppress_vmdesc {
                self.shared.lock().vmdesc = Some(v);
            }
        }
        Ok(true)
    }

    /// After a top-level EOF: END in postcopy; in precopy the vmdesc, read
    /// and kept (when it is JSON) but never required, as in QEMU.
    pub(super) fn finish_after_eof(&mut self, r: &mut Reader) -> Result<(), LoadError> {
        if self.placing {
            self.set_pc_state(crate::postcopy::PcState::End);
            self.placing = false;
            return self.complete();
        }
        if !self.cfg.suppress_vmdesc {
            let eof_at = r.offset().saturating_sub(1);
            match read_vmdesc(r) {
                Ok(Some(json)) => match serde_json::from_slice(&json) {
                    Ok(v) => self.shared.lock().vmdesc = Some(v),
                    Err(e) => tracing::warn!(
                        "the vmdesc after EOF (byte offset {eof_at}) is not JSON ({e}); ignored"
                    ),
                },
                Ok(None) => {}
                Err(why) => tracing::warn!("after EOF (byte offset {eof_at}): {why}"),
            }
        }
        self.complete()
    }
}

/// At least `n` bytes in the reader's window; false if the stream ends first.
fn ensure(r: &mut Reader, n: usize) -> std::io::Result<bool> {
    while r.window().0.len() < n {
        if !r.fill(n - r.window().0.len())? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Read what follows EOF the way QEMU does: one byte; if it is `0x06`, the
/// be32 length and that many bytes (kept up to [`MAX_VMDESC_KEPT`]).
/// `Ok(None)`: the vmdesc was too large to keep. `Err`: why there is no
/// vmdesc (not an error of the migration).
fn read_vmdesc(r: &mut Reader) -> Result<Option<Vec<u8>>, String> {
    let io = |e: std::io::Error| format!("read error where the vmdesc would be: {e}");
    if !ensure(r, 1).map_err(io)? {
        return Err("the stream ended right after EOF: no vmdesc".into());
    }
    let t = r.window().0[0];
    if t != QEMU_VM_VMDESCRIPTION {
        return Err(format!("expected a vmdesc (0x06), found {t:#04x}; ignored"));
    }
    if !ensure(r, 5).map_err(io)? {
        return Err("the stream ended inside the vmdesc length".into());
    }
    let len = u32::from_be_bytes(r.window().0[1..5].try_into().expect("4 bytes")) as usize;
    r.consume(5);
    let mut kept = Vec::new();
    let mut left = len;
    while left > 0 {
        if r.window().0.is_empty() && !r.fill(1).map_err(io)? {
            return Err(format!(
                "the stream ended inside the vmdesc ({} of {len} bytes)",
                len - left
            ));
        }
        let n = r.window().0.len().min(left);
        if kept.len() + n <= MAX_VMDESC_KEPT {
            kept.extend_from_slice(&r.window().0[..n]);
        }
        r.consume(n);
        left -= n;
    }
    Ok((len <= MAX_VMDESC_KEPT).then_some(kept))
}

#[cfg(test)]
mod tests;
