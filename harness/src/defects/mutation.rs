//! The source-side mutations the defect proxy can apply: one per seeded
//! defect, each named after what it does to the stream (the catalogue,
//! `harness/defects/source.toml`, names the QEMU bug class behind it).

use std::fmt;
use std::str::FromStr;

/// One change to the source→destination stream (see `defects/ram.rs` and
/// `defects/device.rs` for how each is applied).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mutation {
    /// Live precopy: every re-send of the first page sent twice is dropped
    /// (the destination keeps the stale first copy: a lost dirty bit).
    StaleRedirtiedPage,
    /// Postcopy: the first range of the first RAM discard command is dropped.
    DropDiscardRange,
    /// One guest page is placed one page lower (its own address left unsent).
    ShiftPage,
    /// One non-zero guest page is sent as a ZERO record.
    PageToZero,
    /// Two consecutive pages with different content swap their data.
    SwapPages,
    /// Postcopy: the answer to a page request goes to the next page's address.
    WrongPageAnswer,
    /// Postcopy: after RUN a page is sent again with its older (precopy) content.
    StalePageAfterRun,
    /// One device section of the device state is sent twice.
    DuplicateDeviceSection,
    /// One device section of the device state is left out.
    DropDeviceSection,
    /// One byte inside a device section's data is flipped.
    FlipDeviceByte,
    /// Two device sections swap places.
    ReorderDeviceSections,
    /// The end-of-section marker (EOS) of one RAM section is left out.
    DropRamEos,
    /// The first page after a block change carries CONTINUE (no block name).
    ContinueAcrossBlock,
    /// Postcopy: LISTEN is moved after the device state inside the package.
    ListenAfterDevices,
    /// One RAMBlock's length in MEM_SIZE is announced one page shorter.
    MemSizeShort,
    /// Postcopy: RUN is left out of the package (the destination never runs).
    DropPostcopyRun,
    /// Nothing changed: the control run (every check must pass).
    Nothing,
}

impl Mutation {
    pub const ALL: [Mutation; 17] = [
        Mutation::StaleRedirtiedPage,
        Mutation::DropDiscardRange,
        Mutation::ShiftPage,
        Mutation::PageToZero,
        Mutation::SwapPages,
        Mutation::WrongPageAnswer,
        Mutation::StalePageAfterRun,
        Mutation::DuplicateDeviceSection,
        Mutation::DropDeviceSection,
        Mutation::FlipDeviceByte,
        Mutation::ReorderDeviceSections,
        Mutation::DropRamEos,
        Mutation::ContinueAcrossBlock,
        Mutation::ListenAfterDevices,
        Mutation::MemSizeShort,
        Mutation::DropPostcopyRun,
        Mutation::Nothing,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mutation::StaleRedirtiedPage => "stale-redirtied-page",
            Mutation::DropDiscardRange => "drop-discard-range",
            Mutation::ShiftPage => "shift-page",
            Mutation::PageToZero => "page-to-zero",
            Mutation::SwapPages => "swap-pages",
            Mutation::WrongPageAnswer => "wrong-page-answer",
            Mutation::StalePageAfterRun => "stale-page-after-run",
            Mutation::DuplicateDeviceSection => "duplicate-device-section",
            Mutation::DropDeviceSection => "drop-device-section",
            Mutation::FlipDeviceByte => "flip-device-byte",
            Mutation::ReorderDeviceSections => "reorder-device-sections",
            Mutation::DropRamEos => "drop-ram-eos",
            Mutation::ContinueAcrossBlock => "continue-across-block",
            Mutation::ListenAfterDevices => "listen-after-devices",
            Mutation::MemSizeShort => "mem-size-short",
            Mutation::DropPostcopyRun => "drop-postcopy-run",
            Mutation::Nothing => "none",
        }
    }

    /// Changes the precopy device-state tail (FULL sections up to EOF).
    pub fn on_tail(self) -> bool {
        matches!(
            self,
            Mutation::DuplicateDeviceSection
                | Mutation::DropDeviceSection
                | Mutation::FlipDeviceByte
                | Mutation::ReorderDeviceSections
        )
    }

    /// Changes the PACKAGED blob of a postcopy switch.
    pub fn on_package(self) -> bool {
        self.on_tail() || matches!(self, Mutation::ListenAfterDevices | Mutation::DropPostcopyRun)
    }
}

impl fmt::Display for Mutation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown mutation name.
#[derive(Debug, thiserror::Error)]
#[error("unknown source-side mutation {0:?} (known: {known})", known = Mutation::ALL.map(|m| m.name()).join(", "))]
pub struct UnknownMutation(pub String);

impl FromStr for Mutation {
    type Err = UnknownMutation;
    fn from_str(s: &str) -> Result<Self, UnknownMutation> {
        Mutation::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| UnknownMutation(s.into()))
    }
}
