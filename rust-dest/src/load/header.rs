//! The stream header and configuration section (QEMU's
//! `migration/savevm.c` `qemu_loadvm_state_header` and the configuration
//! vmstate): machine type, capabilities, target page size.

use super::{Flow, LoadError, Loader};
use crate::channel::Reader;
use crate::ram::TARGET_PAGE_SIZE;
use crate::state::machine_version;
use wire::consts::QEMU_VM_EOF;
use wire::stream::{decode_header, Header};
use wire::Cursor;

impl Loader {
    pub(super) fn header(&mut self, hdr: &Header) -> Result<Flow, LoadError> {
        let mut flow = Flow::Continue;
        let Some(cfg) = &hdr.configuration else { return Ok(flow) };
        self.check_machine(&cfg.machine)?;
        self.shared.lock().stream_machine = Some(cfg.machine.clone());
        self.stream_machine = Some(cfg.machine.clone());
        self.check_configuration(cfg)?;
        if let Some(caps) = &cfg.capabilities {
            if caps.iter().any(|c| c == "x-ignore-shared") {
                flow = Flow::IgnoreShared;
            }
        }
        // Validated in both directions, also when the stream lists none.
        let stream_mapped = cfg.capabilities.iter().flatten().any(|c| c == "mapped-ram");
        super::mapped_ram::check_capability(
            stream_mapped,
            self.shared.has(crate::state::Capability::MappedRam),
        )?;
        if let Some(bits) = cfg.target_page_bits {
            if 1u64 << bits != TARGET_PAGE_SIZE {
                return Err(LoadError::Unsupported {
                    at: None,
                    msg: format!(
                        "configuration: target page bits {bits} do not match the destination's 12"
                    ),
                });
            }
        }
        Ok(flow)
    }

    /// The channel ended inside the header. The configuration section carries
    /// no length, so at the very end of the stream the header decoder cannot
    /// tell a complete header from one whose subsections are missing and
    /// reports a truncation at the header's start. If the bytes received form a
    /// complete header, say the stream ended there.
    pub(super) fn header_truncated(
        &self,
        r: &Reader,
        expect_cfg: bool,
        at: u64,
        needed: usize,
    ) -> LoadError {
        let (w, base) = r.window();
        let mut probe = w.to_vec();
        probe.push(QEMU_VM_EOF);
        let mut c = Cursor::new(&probe, base);
        match decode_header(&mut c, expect_cfg) {
            Ok(_) if c.pos() == w.len() => {
                LoadError::TruncatedAfterHeader { at: base + w.len() as u64 }
            }
            _ => LoadError::Truncated { at, needed },
        }
    }

    fn check_machine(&self, stream: &str) -> Result<(), LoadError> {
        let Some(local) = &self.cfg.machine else {
            return Ok(());
        };
        let family = |m: &str| -> String {
            if m == "q35" || m.starts_with("pc-q35") {
                "q35".into()
            } else if m == "pc" || m.starts_with("pc-i440fx") {
                "pc".into()
            } else {
                m.into()
            }
        };
        let versioned = local.starts_with("pc-");
        if (versioned && local != stream) || (!versioned && family(local) != family(stream)) {
            return Err(LoadError::Protocol {
                at: None,
                msg: format!("configuration: machine type received is '{stream}' but the destination was started with '{local}'"),
            });
        }
        Ok(())
    }
}

/// Whether machine type `m` (of the stream's configuration section) is
/// versioned and at least `v`.
pub(super) fn machine_at_least(m: Option<&str>, v: (u32, u32)) -> bool {
    m.and_then(machine_version).is_some_and(|mv| mv >= v)
}

/// Whether a source with machine type `m` ends the postcopy-preempt channel
/// with EOS: QEMU 7.2, and later versions for machine types up to 7.2
/// (`x-preempt-pre-7-2`; migration/migration.c,
/// `migration_completion_postcopy()`). Such a source also connects the
/// channel at setup.
pub(super) fn preempt_ends_with_eos(m: Option<&str>) -> bool {
    m.and_then(machine_version).is_some_and(|mv| mv <= (7, 2))
}

#[cfg(test)]
mod tests {
    #[test]
    fn machine_versions() {
        assert!(super::machine_at_least(Some("pc-q35-11.1"), (11, 1)));
        assert!(!super::machine_at_least(Some("pc-q35-11.0"), (11, 1)));
        assert!(!super::machine_at_least(None, (11, 1)));
        assert!(super::preempt_ends_with_eos(Some("pc-i440fx-7.2")));
        assert!(super::preempt_ends_with_eos(Some("pc-q35-7.1")));
        assert!(!super::preempt_ends_with_eos(Some("pc-q35-8.0")));
        assert!(!super::preempt_ends_with_eos(Some("q35")));
        assert!(!super::preempt_ends_with_eos(None));
    }
}
