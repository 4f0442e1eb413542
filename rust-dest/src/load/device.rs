//! Device state (QEMU's `vmstate_load` for non-RAM sections): rust-dest keeps
//! the bytes of every FULL section, delimited in precopy by the tail parse
//! (`tail.rs`: footers through EOF, the vmdesc when there is one), or by the
//! package parse in postcopy.

use super::{LoadError, Loader};
use crate::globalstate;
use crate::postcopy::PcState;
use crate::state::DeviceSection;
use wire::vmdesc;

impl Loader {
    pub(super) fn keep_device(
        &mut self,
        buf: &[u8],
        s: &vmdesc::SplitSection,
        base: u64,
        in_package: bool,
    ) -> Result<(), LoadError> {
        let at = base + s.header_pos as u64;
        // What QEMU's destination refuses (docs/device-catalogue.md).
        if let Some(d) = &self.cfg.devices {
            d.check(&s.idstr, s.instance_id, s.version_id, self.cfg.compat)
                .map_err(|source| LoadError::Device { at, source })?;
        }
        let data = buf[s.data.clone()].to_vec();
        let runstate = match s.idstr.as_str() {
            "globalstate" => Some(
                globalstate::parse(&data, self.runstate_buffer())
                    .map_err(|source| LoadError::GlobalState { at, source })?,
            ),
            _ => None,
        };
        let mut g = self.shared.lock();
        if let Some(rs) = runstate {
            g.globalstate = Some(rs.name().to_string());
        }
        g.devices.push(DeviceSection {
            section_id: s.section_id,
            idstr: s.idstr.clone(),
            instance_id: s.instance_id,
            version_id: s.version_id,
            data,
            stream_offset: base + s.header_pos as u64,
            in_package,
            vmdesc: s.vmdesc.clone(),
        });
        Ok(())
    }

    /// Bytes of globalstate's run-state buffer for the version rust-dest
    /// behaves as.
    fn runstate_buffer(&self) -> usize {
        if self.cfg.compat.has(crate::compat::Rule::RunstateBuffer32) {
            32
        } else {
            100
        }
    }

    /// QEMU enters the received run state at the end of a precopy migration;
    /// one it cannot enter from `inmigrate` is an error here (QEMU aborts).
    /// After postcopy ran, QEMU does not use it (observed: a `debug` run state
    /// in the package completes on 7.2, 10.0 and 11.1).
    pub(super) fn check_final_runstate(&self) -> Result<(), LoadError> {
        if matches!(self.pc_state, PcState::Running | PcState::End) {
            return Ok(());
        }
        let (gs, at) = {
            let g = self.shared.lock();
            let at = g.devices.iter().rev().find(|d| d.idstr == "globalstate");
            (g.globalstate.clone(), at.map_or(0, |d| d.stream_offset))
        };
        match gs.as_deref().map(str::parse::<globalstate::GuestRunState>) {
            Some(Ok(rs)) => {
                globalstate::check_final(rs).map_err(|source| LoadError::GlobalState { at, source })
            }
            _ => Ok(()),
        }
    }
}
