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
        }
    }

    /// The capability with QEMU name `s`.
    pub fn parse(s: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.name() == s)
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
}
