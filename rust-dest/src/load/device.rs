//! Device state (QEMU's `vmstate_load` for non-RAM sections): rust-dest keeps
//! the bytes of every FULL section, delimited in precopy by the tail parse
//! (`tail.rs`: footers through EOF, the vmdesc when there is one), or by the
//! package parse in postcopy.

use super::Loader;
use crate::state::DeviceSection;
use wire::vmdesc;

impl Loader {
    pub(super) fn keep_device(
        &mut self,
        buf: &[u8],
        s: &vmdesc::SplitSection,
        base: u64,
        in_package: bool,
    ) {
        let data = buf[s.data.clone()].to_vec();
        let mut g = self.shared.lock();
        if s.idstr == "globalstate" && data.len() >= 4 {
            let n = u32::from_be_bytes(data[..4].try_into().expect("4 bytes")) as usize;
            let rs = &data[4..data.len().min(4 + 100)];
            let end = rs.iter().position(|&b| b == 0).unwrap_or(rs.len()).min(n);
            g.globalstate = Some(String::from_utf8_lossy(&rs[..end]).into_owned());
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
    }
}
