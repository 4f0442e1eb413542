//! QEMU's migration status (`MigrationStatus` in `qapi/migration.json`) and
//! run state (`RunState` in `qapi/run-state.json`) as types.
//!
//! Both keep values this harness does not know yet (`Other`), so a newer
//! QEMU never breaks parsing; comparisons are against the known variants.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

/// The `status` of `query-migrate` and of the `MIGRATION` event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum MigrationStatus {
    #[default]
    None,
    Setup,
    Cancelling,
    Cancelled,
    Active,
    PostcopyDevice,
    PostcopyActive,
    PostcopyPaused,
    PostcopyRecoverSetup,
    PostcopyRecover,
    Completed,
    Failed,
    Colo,
    PreSwitchover,
    Device,
    WaitUnplug,
    /// A value this harness does not know (a newer QEMU).
    Other(String),
}

const NAMES: &[(&str, MigrationStatus)] = &[
    ("none", MigrationStatus::None),
    ("setup", MigrationStatus::Setup),
    ("cancelling", MigrationStatus::Cancelling),
    ("cancelled", MigrationStatus::Cancelled),
    ("active", MigrationStatus::Active),
    ("postcopy-device", MigrationStatus::PostcopyDevice),
    ("postcopy-active", MigrationStatus::PostcopyActive),
    ("postcopy-paused", MigrationStatus::PostcopyPaused),
    ("postcopy-recover-setup", MigrationStatus::PostcopyRecoverSetup),
    ("postcopy-recover", MigrationStatus::PostcopyRecover),
    ("completed", MigrationStatus::Completed),
    ("failed", MigrationStatus::Failed),
    ("colo", MigrationStatus::Colo),
    ("pre-switchover", MigrationStatus::PreSwitchover),
    ("device", MigrationStatus::Device),
    ("wait-unplug", MigrationStatus::WaitUnplug),
];

impl MigrationStatus {
    /// QEMU's spelling.
    pub fn as_str(&self) -> &str {
        if let MigrationStatus::Other(s) = self {
            return s;
        }
        NAMES.iter().find(|(_, v)| v == self).map(|(n, _)| *n).unwrap_or("?")
    }

    /// `status` of a `query-migrate` reply (or a MIGRATION event's data);
    /// `none` when the field is missing, as QEMU reports before any migration.
    pub fn of(v: &Value) -> MigrationStatus {
        v.get("status").and_then(Value::as_str).map(MigrationStatus::from).unwrap_or_default()
    }

    /// A status the migration does not leave by itself.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
        )
    }

    /// Any postcopy phase (device, active, paused, recovering).
    pub fn is_postcopy(&self) -> bool {
        matches!(
            self,
            MigrationStatus::PostcopyDevice
                | MigrationStatus::PostcopyActive
                | MigrationStatus::PostcopyPaused
                | MigrationStatus::PostcopyRecoverSetup
                | MigrationStatus::PostcopyRecover
        )
    }
}

impl From<&str> for MigrationStatus {
    fn from(s: &str) -> Self {
        NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| MigrationStatus::Other(s.to_owned()))
    }
}

impl FromStr for MigrationStatus {
    type Err = String;
    /// Strict parse for user input (scenario files, CLI): unknown names are errors.
    fn from_str(s: &str) -> Result<Self, String> {
        match MigrationStatus::from(s) {
            MigrationStatus::Other(_) => Err(format!(
                "unknown migration status {s:?} (one of: {})",
                NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            )),
            st => Ok(st),
        }
    }
}

impl fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl serde::Serialize for MigrationStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for MigrationStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl PartialEq<&str> for MigrationStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The run state of `query-status` (`running`, `paused`, `postmigrate`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RunState {
    Running,
    Paused,
    Postmigrate,
    Inmigrate,
    Prelaunch,
    FinishMigrate,
    Shutdown,
    InternalError,
    IoError,
    Restore,
    Suspended,
    Watchdog,
    GuestPanicked,
    Colo,
    Debug,
    SaveVm,
    /// A value this harness does not know.
    Other(String),
}

const RUN_NAMES: &[(&str, RunState)] = &[
    ("running", RunState::Running),
    ("paused", RunState::Paused),
    ("postmigrate", RunState::Postmigrate),
    ("inmigrate", RunState::Inmigrate),
    ("prelaunch", RunState::Prelaunch),
    ("finish-migrate", RunState::FinishMigrate),
    ("shutdown", RunState::Shutdown),
    ("internal-error", RunState::InternalError),
    ("io-error", RunState::IoError),
    ("restore-vm", RunState::Restore),
    ("suspended", RunState::Suspended),
    ("watchdog", RunState::Watchdog),
    ("guest-panicked", RunState::GuestPanicked),
    ("colo", RunState::Colo),
    ("debug", RunState::Debug),
    ("save-vm", RunState::SaveVm),
];

impl RunState {
    /// QEMU's spelling.
    pub fn as_str(&self) -> &str {
        if let RunState::Other(s) = self {
            return s;
        }
        RUN_NAMES.iter().find(|(_, v)| v == self).map(|(n, _)| *n).unwrap_or("?")
    }
}

impl From<&str> for RunState {
    fn from(s: &str) -> Self {
        RUN_NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| RunState::Other(s.to_owned()))
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl serde::Serialize for RunState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl PartialEq<&str> for RunState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_and_unknown() {
        for (n, v) in NAMES {
            assert_eq!(MigrationStatus::from(*n), *v);
            assert_eq!(v.as_str(), *n);
            assert_eq!(n.parse::<MigrationStatus>().unwrap(), *v);
        }
        assert_eq!(MigrationStatus::from("x-new"), MigrationStatus::Other("x-new".into()));
        assert!("x-new".parse::<MigrationStatus>().is_err());
        assert_eq!(MigrationStatus::of(&json!({})), MigrationStatus::None);
        assert_eq!(
            MigrationStatus::of(&json!({"status": "completed"})),
            MigrationStatus::Completed
        );
        assert!(MigrationStatus::Failed.is_terminal());
        assert!(!MigrationStatus::PostcopyPaused.is_terminal());
        assert!(MigrationStatus::PostcopyPaused.is_postcopy());
        for (n, v) in RUN_NAMES {
            assert_eq!(RunState::from(*n), *v);
            assert_eq!(v.as_str(), *n);
        }
    }
}
