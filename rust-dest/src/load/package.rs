//! The PACKAGED blob (QEMU's `loadvm_handle_cmd_packaged`): a nested stream
//! holding the device state and the postcopy LISTEN/RUN commands.

use super::{LoadError, Loader};
use wire::command::Command;
use wire::stream::{decode_top, SectionKind, TopRecord};
use wire::{vmdesc, Cursor, DecodeError};

impl Loader {
    /// Process the blob of `len` bytes at `blob_off` announced by the
    /// PACKAGED command at `off`.
    pub(super) fn packaged(
        &mut self,
        blob: &[u8],
        blob_off: u64,
        len: u32,
        off: u64,
    ) -> Result<(), LoadError> {
        let ctx = || format!("PACKAGED at byte offset {off}");
        // Where each device section ends, from the one parse of the whole
        // blob that ends with RUN (robust against footer-like device bytes).
        // With no such parse, the one where a footer names another section
        // (QEMU fails at that section).
        let (ends, mismatch) = match vmdesc::package_sections(blob, blob_off) {
            Some((e, m)) => (Some(e), m),
            None => (None, None),
        };
        let mut pos = 0usize;
        while pos < blob.len() {
            let mut c = Cursor::new(blob, blob_off);
            c.set_pos(pos);
            let rec_off = blob_off + pos as u64;
            let rec = match decode_top(&mut c) {
                Ok(r) => r,
                Err(DecodeError::Incomplete { .. }) => {
                    return Err(LoadError::protocol(rec_off, format!(
                        "record at byte offset {rec_off} runs past the end of the package (length {len})"
                    ))
                    .within(ctx()))
                }
                Err(e) => return Err(LoadError::Decode(e).within(ctx())),
            };
            match rec {
                TopRecord::SectionOpen { kind: SectionKind::Full, .. } => {
                    if let Some(m) = mismatch.as_ref().filter(|m| m.section_at == rec_off) {
                        let e = wire::DecodeError::invalid(m.at, m.to_string());
                        return Err(LoadError::Decode(e).within(ctx()));
                    }
                    let (s, next) = match ends.as_ref().and_then(|m| m.get(&pos)) {
                        Some(&end) => vmdesc::split_exact(blob, pos, end, blob_off),
                        None => vmdesc::split_one_by_footer(blob, pos, blob_off),
                    }
                    .map_err(|e| LoadError::Decode(e).within(ctx()))?;
                    self.keep_device(blob, &s, blob_off, true).map_err(|e| e.within(ctx()))?;
                    pos = next;
                }
                TopRecord::Command(rc) => {
                    let cmd =
                        Command::parse(&rc).map_err(|e| LoadError::Decode(e).within("PACKAGED"))?;
                    pos = c.pos();
                    let is_run = matches!(cmd, Command::PostcopyRun);
                    self.command(cmd, rec_off, true)?;
                    if is_run {
                        // RUN ends the package (QEMU quits all nested load
                        // loops); whatever follows inside it is not processed.
                        if pos != blob.len() {
                            tracing::warn!(
                                "PACKAGED at byte offset {off}: {} byte(s) after POSTCOPY_RUN inside the package ignored",
                                blob.len() - pos
                            );
                        }
                        return Ok(());
                    }
                }
                TopRecord::Eof => {
                    // EOF ends the current level of the stream: the package
                    // (QEMU ignores the rest of the blob and goes on with the
                    // main stream).
                    if c.pos() != blob.len() {
                        tracing::warn!(
                            "PACKAGED at byte offset {off}: {} byte(s) after EOF inside the package ignored",
                            blob.len() - c.pos()
                        );
                    }
                    return Ok(());
                }
                other => {
                    return Err(LoadError::protocol(
                        rec_off,
                        format!(
                        "unexpected record {other:?} inside the package at byte offset {rec_off}"
                    ),
                    )
                    .within(ctx()))
                }
            }
        }
        // The record loop runs until RUN or EOF; running off the end of the
        // blob is a read past its end (QEMU: I/O error).
        Err(LoadError::protocol(
            off,
            format!("the package (length {len}) ends without POSTCOPY_RUN or EOF"),
        )
        .within(ctx()))
    }
}
