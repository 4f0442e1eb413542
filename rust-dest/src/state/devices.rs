//! Device sections kept from the stream (FULL sections of non-RAM handlers).

use serde_json::Value;

/// One device section kept from the stream (FULL sections of non-RAM
/// handlers), with its vmdesc layout when the stream carried one.
#[derive(Clone, Debug)]
pub struct DeviceSection {
    pub section_id: u32,
    pub idstr: String,
    pub instance_id: u32,
    pub version_id: u32,
    /// The device data bytes (between header and footer).
    pub data: Vec<u8>,
    /// Byte offset of the section header in the main stream (or inside the
    /// PACKAGED blob, see `in_package`).
    pub stream_offset: u64,
    pub in_package: bool,
    /// The vmdesc JSON entry describing this section, if known.
    pub vmdesc: Option<Value>,
}
