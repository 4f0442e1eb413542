//! Device state (QEMU's `vmstate_load` for non-RAM sections): rust-dest keeps
//! the bytes of every FULL section, delimited with the vmdesc that follows
//! EOF in precopy, or by the package parse in postcopy.

use serde_json::Value;

use super::{LoadError, Loader};
use crate::channel::{ReadError, Reader};
use crate::state::DeviceSection;
use wire::vmdesc;
use wire::walk::{Item, Walker};

/// QEMU's `RunState` names (qapi/run-state.json), which a globalstate
/// section's run state must be one of.
const RUN_STATES: [&str; 16] = [
    "debug",
    "inmigrate",
    "internal-error",
    "io-error",
    "paused",
    "postmigrate",
    "prelaunch",
    "finish-migrate",
    "restore-vm",
    "running",
    "save-vm",
    "shutdown",
    "suspended",
    "watchdog",
    "guest-panicked",
    "colo",
];

/// Bytes of globalstate's run-state buffer (after the be32 size, which
/// QEMU does not use when loading).
const RUNSTATE_BUFFER: usize = 32;

/// The run state of a globalstate section's data, as QEMU's
/// `global_state_post_load()` (migration/global_state.c) reads it: up to the
/// first NUL of the 32-byte buffer, whose last byte is forced to NUL; it must
/// name a RunState. `None` when the data is too short to hold the buffer.
fn globalstate_runstate(data: &[u8]) -> Option<Result<String, String>> {
    let buf = data.get(4..4 + RUNSTATE_BUFFER)?;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(RUNSTATE_BUFFER - 1);
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    Some(if RUN_STATES.contains(&name.as_str()) { Ok(name) } else { Err(name) })
}

impl Loader {
    pub(super) fn keep_device(
        &mut self,
        buf: &[u8],
        s: &vmdesc::SplitSection,
        base: u64,
        in_package: bool,
    ) -> Result<(), LoadError> {
        let data = buf[s.data.clone()].to_vec();
        let mut g = self.shared.lock();
        if s.idstr == "globalstate" {
            match globalstate_runstate(&data) {
                Some(Ok(name)) => g.globalstate = Some(name),
                Some(Err(name)) => {
                    let at = base + s.data.start as u64 + 4;
                    return Err(LoadError::protocol(
                        at,
                        format!(
                            "invalid parameter value: {name}: error while loading state for \
                             instance {:#x} of device 'globalstate' (run state at byte offset {at})",
                            s.instance_id
                        ),
                    ));
                }
                None => {}
            }
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

#[cfg(test)]
mod tests {
    use super::globalstate_runstate;

    fn data(runstate: &[u8]) -> Vec<u8> {
        let mut d = (runstate.len() as u32 + 1).to_be_bytes().to_vec();
        let mut b = runstate.to_vec();
        b.resize(32, 0);
        d.extend_from_slice(&b);
        d.extend_from_slice(&[1, 0]);
        d.extend_from_slice(&[0; 66]);
        d
    }

    #[test]
    fn runstates_as_qemu_reads_them() {
        assert_eq!(globalstate_runstate(&data(b"running")), Some(Ok("running".into())));
        assert_eq!(globalstate_runstate(&data(b"paused")), Some(Ok("paused".into())));
        assert_eq!(globalstate_runstate(&data(b"bogus")), Some(Err("bogus".into())));
        // 32 bytes without NUL: the last one is cut (observed on 10.0 and 11.1).
        let e = globalstate_runstate(&data(&[b'r'; 32])).unwrap().unwrap_err();
        assert_eq!(e.len(), 31);
        assert_eq!(globalstate_runstate(&[0, 0, 0, 1]), None);
    }
}
