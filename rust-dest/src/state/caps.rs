//! Migration capabilities (QEMU's `MigrationCapability`, 10.x names): the
//! enum, its wire/QMP names, and the capability set kept in the shared state.

/// One migration capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    Xbzrle,
    RdmaPinAll,
    AutoConverge,
    ZeroBlocks,
    Events,
    PostcopyRam,
    XColo,
    ReleaseRam,
    ReturnPath,
    PauseBeforeSwitchover,
    Multifd,
    DirtyBitmaps,
    PostcopyBlocktime,
    LateBlockActivate,
    XIgnoreShared,
    ValidateUuid,
    BackgroundSnapshot,
    ZeroCopySend,
    PostcopyPreempt,
    SwitchoverAck,
    DirtyLimit,
    MappedRam,
    /// QEMU's legacy `compress` (zlib per page on the main channel): only up
    /// to 9.0, so not in [`Capability::ALL`]; see [`compress_exists`].
    Compress,
}

impl Capability {
    /// Every capability rust-dest knows, in QEMU's order (what
    /// `query-migrate-capabilities` lists).
    pub const ALL: [Capability; 22] = [
        Capability::Xbzrle,
        Capability::RdmaPinAll,
        Capability::AutoConverge,
        Capability::ZeroBlocks,
        Capability::Events,
        Capability::PostcopyRam,
        Capability::XColo,
        Capability::ReleaseRam,
        Capability::ReturnPath,
        Capability::PauseBeforeSwitchover,
        Capability::Multifd,
        Capability::DirtyBitmaps,
        Capability::PostcopyBlocktime,
        Capability::LateBlockActivate,
        Capability::XIgnoreShared,
        Capability::ValidateUuid,
        Capability::BackgroundSnapshot,
        Capability::ZeroCopySend,
        Capability::PostcopyPreempt,
        Capability::SwitchoverAck,
        Capability::DirtyLimit,
        Capability::MappedRam,
    ];

    /// QEMU's name.
    pub const fn name(self) -> &'static str {
        match self {
            Capability::Xbzrle => "xbzrle",
            Capability::RdmaPinAll => "rdma-pin-all",
            Capability::AutoConverge => "auto-converge",
            Capability::ZeroBlocks => "zero-blocks",
            Capability::Events => "events",
            Capability::PostcopyRam => "postcopy-ram",
            Capability::XColo => "x-colo",
            Capability::ReleaseRam => "release-ram",
            Capability::ReturnPath => "return-path",
            Capability::PauseBeforeSwitchover => "pause-before-switchover",
            Capability::Multifd => "multifd",
            Capability::DirtyBitmaps => "dirty-bitmaps",
            Capability::PostcopyBlocktime => "postcopy-blocktime",
            Capability::LateBlockActivate => "late-block-activate",
            Capability::XIgnoreShared => "x-ignore-shared",
            Capability::ValidateUuid => "validate-uuid",
            Capability::BackgroundSnapshot => "background-snapshot",
            Capability::ZeroCopySend => "zero-copy-send",
            Capability::PostcopyPreempt => "postcopy-preempt",
            Capability::SwitchoverAck => "switchover-ack",
            Capability::DirtyLimit => "dirty-limit",
            Capability::MappedRam => "mapped-ram",
            Capability::Compress => "compress",
        }
    }

    /// The capability with QEMU name `s`.
    pub fn parse(s: &str) -> Option<Capability> {
        Capability::ALL.into_iter().chain([Capability::Compress]).find(|c| c.name() == s)
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The capabilities rust-dest knows, by name (all off by default).
pub const KNOWN_CAPABILITIES: [&str; 22] = {
    let mut out = [""; 22];
    let mut i = 0;
    while i < 22 {
        out[i] = Capability::ALL[i].name();
        i += 1;
    }
    out
};

/// A set of capability values (one bit per capability).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities(u32);

impl Capabilities {
    pub fn get(&self, c: Capability) -> bool {
        self.0 & (1 << c as u32) != 0
    }
    pub fn set(&mut self, c: Capability, on: bool) {
        if on {
            self.0 |= 1 << c as u32;
        } else {
            self.0 &= !(1 << c as u32);
        }
    }
}

/// The QEMU version `(major, minor)` of a versioned PC machine type
/// (`pc-q35-10.0`, `pc-i440fx-7.2`); `None` for aliases (`q35`, `pc`) and
/// other names.
pub fn machine_version(machine: &str) -> Option<(u32, u32)> {
    let ver = machine.strip_prefix("pc-q35-").or_else(|| machine.strip_prefix("pc-i440fx-"))?;
    let (maj, min) = ver.split_once('.')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

/// Whether the `compress` capability (and the `compress-threads`,
/// `decompress-threads`, `compress-level`, `compress-wait-thread`
/// parameters) exists for a destination of this machine type's QEMU
/// version: it was removed in 9.1 (refused as an unknown value by the 10.0
/// and 11.1 binaries, accepted by 7.2); unversioned machine types are the
/// newest.
pub fn compress_exists(version: Option<(u32, u32)>) -> bool {
    version.is_some_and(|v| v < (9, 1))
}

/// A capability combination the destination's QEMU version refuses
/// (`migration/options.c` `migrate_caps_check()`; texts verified on the
/// 7.2, 10.0 and 11.1 binaries).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ComboError {
    /// 8.1 up to 10.0 (7.2 accepts the pair, 10.1+ again).
    #[error("Postcopy is not yet compatible with multifd")]
    PostcopyMultifd,
    /// 8.2 and later.
    #[error("Multifd is not compatible with xbzrle")]
    MultifdXbzrle,
    /// While `compress` existed (up to 9.0; verified on 7.2).
    #[error("Multifd is not compatible with compress")]
    MultifdCompress,
    /// 9.0 and later (mapped-ram's first version).
    #[error("Mapped-ram migration is incompatible with xbzrle")]
    MappedRamXbzrle,
    /// 9.0 and later.
    #[error("Mapped-ram migration is incompatible with postcopy")]
    MappedRamPostcopy,
}

impl ComboError {
    /// Checks made early in QEMU (within its postcopy-ram block).
    pub fn check_postcopy(caps: &Capabilities, version: (u32, u32)) -> Result<(), ComboError> {
        let on = |c| caps.get(c);
        if on(Capability::PostcopyRam)
            && on(Capability::Multifd)
            && ((8, 1)..(10, 1)).contains(&version)
        {
            return Err(ComboError::PostcopyMultifd);
        }
        Ok(())
    }

    /// Checks made late in QEMU (after the postcopy and switchover ones).
    pub fn check_multifd(caps: &Capabilities, version: (u32, u32)) -> Result<(), ComboError> {
        if caps.get(Capability::Multifd) && caps.get(Capability::Xbzrle) && version >= (8, 2) {
            return Err(ComboError::MultifdXbzrle);
        }
        if caps.get(Capability::Multifd) && caps.get(Capability::Compress) {
            return Err(ComboError::MultifdCompress);
        }
        if caps.get(Capability::MappedRam) && version >= (9, 0) {
            if caps.get(Capability::Xbzrle) {
                return Err(ComboError::MappedRamXbzrle);
            }
            if caps.get(Capability::PostcopyRam) {
                return Err(ComboError::MappedRamPostcopy);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Capability::ALL {
            assert_eq!(Capability::parse(c.name()), Some(c));
        }
        assert_eq!(Capability::parse("warp-drive"), None);
        assert_eq!(KNOWN_CAPABILITIES[5], "postcopy-ram");
        let mut s = Capabilities::default();
        s.set(Capability::MappedRam, true);
        assert!(s.get(Capability::MappedRam) && !s.get(Capability::Xbzrle));
        s.set(Capability::MappedRam, false);
        assert_eq!(s, Capabilities::default());
    }

    #[test]
    fn machine_versions() {
        assert_eq!(machine_version("pc-q35-10.0"), Some((10, 0)));
        assert_eq!(machine_version("pc-i440fx-7.2"), Some((7, 2)));
        assert_eq!(machine_version("pc-q35-11.1"), Some((11, 1)));
        assert_eq!(machine_version("q35"), None);
        assert_eq!(machine_version("pc"), None);
        assert_eq!(machine_version("microvm"), None);
        assert_eq!(machine_version("pc-q35-x.y"), None);
    }

    #[test]
    fn combinations_follow_the_qemu_version() {
        let mut pm = Capabilities::default();
        pm.set(Capability::PostcopyRam, true);
        pm.set(Capability::Multifd, true);
        let mut xm = Capabilities::default();
        xm.set(Capability::Xbzrle, true);
        xm.set(Capability::Multifd, true);
        let pc = ComboError::check_postcopy;
        let mf = ComboError::check_multifd;
        assert_eq!(pc(&pm, (10, 0)), Err(ComboError::PostcopyMultifd));
        assert_eq!(pc(&pm, (8, 1)), Err(ComboError::PostcopyMultifd));
        assert_eq!(pc(&pm, (7, 2)), Ok(()));
        assert_eq!(pc(&pm, (11, 1)), Ok(()));
        assert_eq!(pc(&pm, (10, 1)), Ok(()));
        assert_eq!(mf(&pm, (10, 0)), Ok(()));
        assert_eq!(mf(&xm, (10, 0)), Err(ComboError::MultifdXbzrle));
        assert_eq!(mf(&xm, (11, 1)), Err(ComboError::MultifdXbzrle));
        assert_eq!(mf(&xm, (7, 2)), Ok(()));
        assert_eq!(pc(&xm, (10, 0)), Ok(()));
        assert_eq!(
            ComboError::PostcopyMultifd.to_string(),
            "Postcopy is not yet compatible with multifd"
        );
        assert_eq!(ComboError::MultifdXbzrle.to_string(), "Multifd is not compatible with xbzrle");
        let mut cm = Capabilities::default();
        cm.set(Capability::Compress, true);
        assert_eq!(mf(&cm, (7, 2)), Ok(()));
        cm.set(Capability::Multifd, true);
        assert_eq!(mf(&cm, (7, 2)), Err(ComboError::MultifdCompress));
    }

    #[test]
    fn mapped_ram_combinations() {
        let mut c = Capabilities::default();
        c.set(Capability::MappedRam, true);
        assert_eq!(ComboError::check_multifd(&c, (10, 0)), Ok(()));
        c.set(Capability::Xbzrle, true);
        assert_eq!(ComboError::check_multifd(&c, (10, 0)), Err(ComboError::MappedRamXbzrle));
        c.set(Capability::Xbzrle, false);
        c.set(Capability::PostcopyRam, true);
        assert_eq!(ComboError::check_multifd(&c, (11, 1)), Err(ComboError::MappedRamPostcopy));
    }

    #[test]
    fn compress_exists_before_9_1() {
        assert!(compress_exists(Some((7, 2))));
        assert!(compress_exists(Some((9, 0))));
        assert!(!compress_exists(Some((9, 1))));
        assert!(!compress_exists(Some((10, 0))));
        assert!(!compress_exists(None));
        assert_eq!(Capability::parse("compress"), Some(Capability::Compress));
        assert!(!KNOWN_CAPABILITIES.contains(&"compress"));
    }
}
