//! The capability and UUID checks of the configuration section (QEMU's
//! `configuration_validate_capabilities()` and `vmstate_uuid_post_load()`
//! in `migration/savevm.c`).
//!
//! - The source lists, of the capabilities QEMU validates
//!   (`should_validate_capability()`: `x-ignore-shared`, and `mapped-ram`
//!   from QEMU 9.0), those it has on; each must be on at the destination
//!   exactly when it is listed. Every mismatch is reported, the load fails.
//!   A name the destination does not know fails the load.
//! - A source with `-uuid` and `validate-uuid` sends its UUID; it must equal
//!   the destination's `-uuid`. A destination without `-uuid` only warns,
//!   a stream without the UUID is not checked.

use super::{LoadError, Loader};
use crate::state::{Capabilities, Capability, KNOWN_CAPABILITIES};
use wire::stream::Configuration;

impl Loader {
    /// The configuration section's capability list and UUID.
    pub(super) fn check_configuration(&self, cfg: &Configuration) -> Result<(), LoadError> {
        let (local, uuid) = {
            let g = self.shared.lock();
            (g.capabilities, g.guest.uuid)
        };
        check_capabilities(cfg.capabilities.as_deref().unwrap_or(&[]), &local)?;
        if let Some(u) = &cfg.uuid {
            if let Some(w) = check_uuid(u, uuid)? {
                tracing::warn!("{w}");
            }
        }
        Ok(())
    }
}

/// Why the configuration section is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Every validated capability that differs, in QEMU's words.
    #[error("{}", .0.iter().map(|(c, local)| format!(
        "Capability {} is {}, but received capability is {}",
        c.name(), on_off(*local), on_off(!*local))).collect::<Vec<_>>().join("; "))]
    CapabilityMismatch(Vec<(Capability, bool)>),
    #[error("Received unknown capability {0}")]
    UnknownCapability(String),
    #[error("UUID received is {stream} and local is {local}")]
    UuidMismatch { stream: String, local: String },
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// The capabilities the configuration section carries, in QEMU's order.
pub const VALIDATED: [Capability; 2] = [Capability::XIgnoreShared, Capability::MappedRam];

/// Check the stream's capability list against the destination's.
pub fn check_capabilities(stream: &[String], local: &Capabilities) -> Result<(), ConfigError> {
    if let Some(u) = stream.iter().find(|c| !KNOWN_CAPABILITIES.contains(&c.as_str())) {
        return Err(ConfigError::UnknownCapability(u.clone()));
    }
    let bad: Vec<(Capability, bool)> = VALIDATED
        .iter()
        .filter(|c| stream.iter().any(|s| s == c.name()) != local.get(**c))
        .map(|c| (*c, local.get(*c)))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::CapabilityMismatch(bad))
    }
}

/// Check the stream's UUID against `-uuid`. `Ok(Some(warning))` when the
/// destination has none.
pub fn check_uuid(
    stream: &[u8; 16],
    local: Option<[u8; 16]>,
) -> Result<Option<String>, ConfigError> {
    match local {
        None => {
            Ok(Some(format!("UUID is received {}, but local uuid isn't set", fmt_uuid(stream))))
        }
        Some(l) if &l == stream => Ok(None),
        Some(l) => Err(ConfigError::UuidMismatch { stream: fmt_uuid(stream), local: fmt_uuid(&l) }),
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lower case.
pub fn fmt_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities() {
        let mut local = Capabilities::default();
        assert_eq!(check_capabilities(&[], &local), Ok(()));
        let e = check_capabilities(&["x-ignore-shared".into()], &local).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Capability x-ignore-shared is off, but received capability is on"
        );
        local.set(Capability::XIgnoreShared, true);
        assert_eq!(check_capabilities(&["x-ignore-shared".into()], &local), Ok(()));
        local.set(Capability::MappedRam, true);
        let e = check_capabilities(&[], &local).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Capability x-ignore-shared is on, but received capability is off; \
             Capability mapped-ram is on, but received capability is off"
        );
        assert_eq!(
            check_capabilities(&["bogus".into()], &local),
            Err(ConfigError::UnknownCapability("bogus".into()))
        );
    }

    #[test]
    fn uuids() {
        let a = [0x11; 16];
        assert_eq!(check_uuid(&a, Some(a)), Ok(None));
        assert!(check_uuid(&a, None).unwrap().unwrap().contains("local uuid isn't set"));
        let e = check_uuid(&a, Some([0x22; 16])).unwrap_err().to_string();
        assert_eq!(
            e,
            "UUID received is 11111111-1111-1111-1111-111111111111 and local is \
             22222222-2222-2222-2222-222222222222"
        );
    }
}
