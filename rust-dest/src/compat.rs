//! Rules that differ between QEMU versions: rust-dest behaves as the QEMU
//! version it is told to (`--compat-version`, else the version of the
//! `-machine` type, else the newest it knows). [`QemuVersion::has`] is the one
//! place that answers "does version X have rule Y".
//!
//! Each rule was observed on the real 7.2.22, 10.0.2 and 11.1.3 destinations
//! (`scenarios/stream-switchover-start.toml`, `stream-zero-fill.toml`,
//! `stream-device-*.toml`); the version where a rule changed between 7.2 and
//! 10.0 comes from QEMU's history and is not verified on a binary (see
//! `docs/wire-format.md`, "Rules that differ between versions").

use std::fmt;
use std::str::FromStr;

/// A QEMU release series, `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QemuVersion {
    pub major: u16,
    pub minor: u16,
}

/// A rule of the incoming side that not every QEMU version has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// `MIG_CMD_SWITCHOVER_START` (0xb) exists (`migration/savevm.c`, 10.0);
    /// before, command 0xb is "unknown" and fails the load.
    SwitchoverStartCommand,
    /// A ZERO record's fill byte must be 0 ("Found a zero page with value",
    /// `migration/ram.c`, from 9.0); before, the page is filled with it.
    ZeroFillMustBeZero,
    /// Load errors name the stream as "savevm" ("Unknown savevm section or
    /// instance", "savevm: unsupported version"); 11.1 dropped the word.
    SavevmInMessages,
    /// "too old for local minimum version_id  1" with two spaces (a typo
    /// fixed by 11.1).
    TooOldDoubleSpace,
    /// globalstate's run-state buffer is 32 bytes, its last forced to NUL
    /// (`migration/global_state.c`, 9.0, from QEMU's history; observed on
    /// 10.0 and 11.1); before, 100 bytes.
    RunstateBuffer32,
    /// `fd:` of a descriptor that is neither a socket nor a pipe is refused
    /// ("fd: migration to a file is not supported", `migration/fd.c`;
    /// observed on 11.1, only a deprecation warning in 10.2's source).
    FdFileRefused,
}

impl Rule {
    /// The first version that has the rule (`None`: every version before
    /// the one given does, later ones don't; see [`QemuVersion::has`]).
    fn since(self) -> Since {
        match self {
            Rule::SwitchoverStartCommand => Since::From(QemuVersion::new(10, 0)),
            Rule::ZeroFillMustBeZero => Since::From(QemuVersion::new(9, 0)),
            Rule::SavevmInMessages => Since::Until(QemuVersion::new(11, 1)),
            Rule::TooOldDoubleSpace => Since::Until(QemuVersion::new(11, 1)),
            Rule::RunstateBuffer32 => Since::From(QemuVersion::new(9, 0)),
            Rule::FdFileRefused => Since::From(QemuVersion::new(11, 0)),
        }
    }
}

enum Since {
    /// From this version on.
    From(QemuVersion),
    /// Before this version.
    Until(QemuVersion),
}

/// Why a version string does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid QEMU version {0:?} (expected MAJOR.MINOR, e.g. 7.2 or 10.0)")]
pub struct VersionError(pub String);

impl QemuVersion {
    /// The newest version whose rules rust-dest knows (the default for an
    /// unversioned machine type such as `q35`).
    pub const NEWEST: QemuVersion = QemuVersion::new(11, 1);

    pub const fn new(major: u16, minor: u16) -> QemuVersion {
        QemuVersion { major, minor }
    }

    /// Does this version have `rule`?
    pub fn has(self, rule: Rule) -> bool {
        match rule.since() {
            Since::From(v) => self >= v,
            Since::Until(v) => self < v,
        }
    }

    /// The version of a versioned machine type (`pc-q35-7.2`,
    /// `pc-i440fx-10.0`, `pc-7.2`); `None` for aliases (`q35`, `pc`) and
    /// other names.
    pub fn of_machine(machine: &str) -> Option<QemuVersion> {
        let (_, v) = machine.rsplit_once('-')?;
        v.parse().ok()
    }

    /// The version rust-dest follows: `explicit`, else the machine type's,
    /// else [`QemuVersion::NEWEST`].
    pub fn resolve(explicit: Option<QemuVersion>, machine: Option<&str>) -> QemuVersion {
        explicit.or_else(|| machine.and_then(QemuVersion::of_machine)).unwrap_or(Self::NEWEST)
    }
}

impl FromStr for QemuVersion {
    type Err = VersionError;
    /// `MAJOR.MINOR` (a `.MICRO` suffix is accepted and ignored).
    fn from_str(s: &str) -> Result<QemuVersion, VersionError> {
        let bad = || VersionError(s.to_string());
        let mut it = s.split('.');
        let major = it.next().and_then(|m| m.parse::<u16>().ok()).ok_or_else(bad)?;
        let minor = it.next().and_then(|m| m.parse::<u16>().ok()).ok_or_else(bad)?;
        match it.next() {
            None => {}
            Some(micro) if micro.parse::<u16>().is_ok() && it.next().is_none() => {}
            Some(_) => return Err(bad()),
        }
        Ok(QemuVersion { major, minor })
    }
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> QemuVersion {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(v("7.2"), QemuVersion::new(7, 2));
        assert_eq!(v("10.0.2"), QemuVersion::new(10, 0));
        assert_eq!(v("11.1").to_string(), "11.1");
        for bad in ["", "7", "7.", "x.2", "7.2.x", "7.2.1.0", "-1.0"] {
            assert!(bad.parse::<QemuVersion>().is_err(), "{bad:?}");
        }
        assert!(v("7.2") < v("10.0") && v("10.0") < v("11.1"));
    }

    #[test]
    fn machine_types() {
        assert_eq!(QemuVersion::of_machine("pc-q35-7.2"), Some(v("7.2")));
        assert_eq!(QemuVersion::of_machine("pc-i440fx-10.0"), Some(v("10.0")));
        assert_eq!(QemuVersion::of_machine("pc-7.2"), Some(v("7.2")));
        assert_eq!(QemuVersion::of_machine("q35"), None);
        assert_eq!(QemuVersion::of_machine("pc"), None);
        assert_eq!(QemuVersion::resolve(None, Some("pc-q35-7.2")), v("7.2"));
        assert_eq!(QemuVersion::resolve(None, Some("q35")), QemuVersion::NEWEST);
        assert_eq!(QemuVersion::resolve(None, None), QemuVersion::NEWEST);
        assert_eq!(QemuVersion::resolve(Some(v("10.0")), Some("pc-q35-7.2")), v("10.0"));
    }

    /// What the real destinations did (see the module doc).
    #[test]
    fn rules_per_verified_version() {
        let (old, mid, new) = (v("7.2"), v("10.0"), v("11.1"));
        assert!(!old.has(Rule::SwitchoverStartCommand));
        assert!(mid.has(Rule::SwitchoverStartCommand) && new.has(Rule::SwitchoverStartCommand));
        assert!(!old.has(Rule::ZeroFillMustBeZero));
        assert!(mid.has(Rule::ZeroFillMustBeZero) && new.has(Rule::ZeroFillMustBeZero));
        assert!(old.has(Rule::SavevmInMessages) && mid.has(Rule::SavevmInMessages));
        assert!(!new.has(Rule::SavevmInMessages));
        assert!(mid.has(Rule::TooOldDoubleSpace) && !new.has(Rule::TooOldDoubleSpace));
    }
}
