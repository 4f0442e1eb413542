//! Device state (QEMU's `vmstate_load` for non-RAM sections): rust-dest keeps
//! the bytes of every FULL section, delimited with the vmdesc that follows
//! EOF in precopy, or by the package parse in postcopy.

use serde_json::Value;

use super::{LoadError, Loader};
use crate::channel::{ReadError, Reader};
use crate::globalstate;
use crate::postcopy::PcState;
use crate::state::DeviceSection;
use wire::vmdesc;
use wire::walk::{Item, Walker};

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
                globalstate::parse(&data)
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

    /// Precopy final phase: buffer everything until `EOF 0x06 len JSON`.
    pub(super) fn device_tail(&mut self, r: &mut Reader) -> Result<(), LoadError> {
        if self.cfg.suppress_vmdesc {
            let at = r.offset();
            return Err(LoadError::unsupported(at, format!(
                "device state at byte offset {at} cannot be delimited with suppress-vmdesc=on (rust-dest needs the vmdesc)"
            )));
        }
        let tail_base = r.offset();
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let n = {
                let (w, _) = r.window();
                tail.extend_from_slice(w);
                w.len()
            };
            r.consume(n);
            if tail.len() > self.cfg.max_device_state {
                return Err(LoadError::unsupported(
                    tail_base,
                    format!(
                        "device state starting at byte offset {tail_base} exceeds {} bytes without a vmdesc",
                        self.cfg.max_device_state
                    ),
                ));
            }
            if let Some((eof_pos, json)) = vmdesc::find_vmdesc_tail(&tail) {
                let secs = vmdesc::split_with_vmdesc(&tail[..eof_pos], tail_base, &json)?;
                for s in &secs {
                    self.keep_device(&tail, s, tail_base, false)?;
                }
                self.shared.lock().vmdesc = Some(json);
                return self.complete();
            }
            let at = r.offset();
            match r.fill(1) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(LoadError::TruncatedDeviceState { at, start: tail_base });
                }
                Err(source) => return Err(LoadError::Io { at, source }),
            }
        }
    }

    /// After the top-level EOF: END in postcopy; the vmdesc in precopy.
    pub(super) fn finish_after_eof(
        &mut self,
        r: &mut Reader,
        w: &mut Walker,
    ) -> Result<(), LoadError> {
        if self.placing {
            self.set_pc_state(crate::postcopy::PcState::End);
            self.placing = false;
            return self.complete();
        }
        if !self.cfg.suppress_vmdesc {
            let rec = r.next_record(w, |item, _, _| match item {
                Item::VmDesc(j) => Ok::<_, ReadError>((Some(j.to_vec()), true)),
                _ => Ok((None, true)),
            });
            match rec {
                Ok(Some(Some(j))) => {
                    let v: Value = serde_json::from_slice(&j).map_err(LoadError::VmdescJson)?;
                    self.shared.lock().vmdesc = Some(v);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("no vmdesc after EOF: {e}"),
            }
        }
        self.complete()
    }
}
