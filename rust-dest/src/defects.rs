//! Seeded destination-side defects (issue 13): deliberate bugs, each modelled
//! on a real class of QEMU migration bug, that prove crossmig's checks catch
//! what a broken destination does. They exist only in a build with the cargo
//! feature `seeded-defects`; one is chosen at start-up with the environment
//! variable `CROSSMIG_DEFECT=<name>` (`harness/defects/dest.toml` lists them
//! with the bug class each stands for; `docs/seeded-defects.md`).
//!
//! Without the feature, [`active`] is a `const fn` returning `false`, so
//! every defect branch is dead code the compiler drops, and
//! `CROSSMIG_DEFECT` is ignored with a warning on stderr ([`init`]): a normal
//! binary always behaves correctly, whatever its environment says.

/// The environment variable naming the defect to activate.
pub const ENV: &str = "CROSSMIG_DEFECT";

/// One seeded defect (its `CROSSMIG_DEFECT` name is [`Defect::name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defect {
    /// POSTCOPY_RAM_DISCARD is accepted but not applied: the stale page stays.
    SkipDiscard,
    /// A discard range is applied one host page too long (received data lost).
    DiscardOverrun,
    /// Precopy: the last target page of each 2 MiB region is written at the
    /// start of that region (host-page vs target-page offset arithmetic).
    HugepageOffset,
    /// A ZERO record for a page received before does not clear it.
    ZeroKeepsStale,
    /// A multifd packet's zero-page list is ignored (precopy).
    MultifdDropZeroList,
    /// A CONTINUE record resolves to the first RAMBlock, not the last one named.
    ContinueFirstBlock,
    /// Postcopy placement never wakes the thread that faulted on the page.
    NeverWake,
    /// One page request (the 8th) is accounted for but never reaches the source.
    LosePageRequest,
    /// After a recovery, the received bitmap is sent shifted by one page.
    RecvBitmapShift,
    /// A load error while postcopy runs reports `completed` instead of pausing.
    ErrorReportsCompleted,
    /// The guest is started at the end of precopy although `-S` was given.
    IgnoreStartPaused,
    /// The 3rd full page read on the postcopy-preempt channel is never placed.
    PreemptDropPage,
    /// The 3rd multifd packet with pages (precopy) is written one page
    /// higher than its offsets say.
    MultifdOffsetShift,
    /// POSTCOPY_RUN leaves the guest paused although it was to run
    /// (autostart, or `cont` during the incoming migration).
    RunStaysPaused,
}

impl Defect {
    /// Every defect, in catalogue order.
    pub const ALL: [Defect; 14] = [
        Defect::SkipDiscard,
        Defect::DiscardOverrun,
        Defect::HugepageOffset,
        Defect::ZeroKeepsStale,
        Defect::MultifdDropZeroList,
        Defect::ContinueFirstBlock,
        Defect::NeverWake,
        Defect::LosePageRequest,
        Defect::RecvBitmapShift,
        Defect::ErrorReportsCompleted,
        Defect::IgnoreStartPaused,
        Defect::PreemptDropPage,
        Defect::MultifdOffsetShift,
        Defect::RunStaysPaused,
    ];

    /// The `CROSSMIG_DEFECT` value.
    pub const fn name(self) -> &'static str {
        match self {
            Defect::SkipDiscard => "skip-discard",
            Defect::DiscardOverrun => "discard-overrun",
            Defect::HugepageOffset => "hugepage-offset",
            Defect::ZeroKeepsStale => "zero-keeps-stale",
            Defect::MultifdDropZeroList => "multifd-drop-zero-list",
            Defect::ContinueFirstBlock => "continue-first-block",
            Defect::NeverWake => "never-wake",
            Defect::LosePageRequest => "lose-page-request",
            Defect::RecvBitmapShift => "recv-bitmap-shift",
            Defect::ErrorReportsCompleted => "error-reports-completed",
            Defect::IgnoreStartPaused => "ignore-start-paused",
            Defect::PreemptDropPage => "preempt-drop-page",
            Defect::MultifdOffsetShift => "multifd-offset-shift",
            Defect::RunStaysPaused => "run-stays-paused",
        }
    }

    /// Parse a `CROSSMIG_DEFECT` value.
    pub fn from_name(s: &str) -> Option<Defect> {
        Defect::ALL.into_iter().find(|d| d.name() == s)
    }
}

/// Where a precopy PAGE record for `addr` is written: `addr`, except under
/// [`Defect::HugepageOffset`], where the last target page of each 2 MiB
/// region goes to the start of that region.
#[inline(always)]
pub fn precopy_page_offset(addr: u64) -> u64 {
    const HUGE: u64 = 2 << 20;
    if active(Defect::HugepageOffset) && addr % HUGE == HUGE - 4096 {
        addr & !(HUGE - 1)
    } else {
        addr
    }
}

/// Under [`Defect::RecvBitmapShift`]: a little-endian bitmap (bit `i` of
/// byte `i / 8`) shifted up by one bit, so page `i + 1` reads as received
/// when page `i` was.
pub fn shift_bitmap_le(bytes: &mut [u8]) {
    let mut carry = 0u8;
    for b in bytes.iter_mut() {
        let out = *b >> 7;
        *b = (*b << 1) | carry;
        carry = out;
    }
}

/// `CROSSMIG_DEFECT` names no defect of this build.
#[derive(Debug, thiserror::Error)]
#[error("{ENV}={given:?} names no seeded defect (known: {})", known_names())]
pub struct UnknownDefect {
    pub given: String,
}

fn known_names() -> String {
    Defect::ALL.iter().map(|d| d.name()).collect::<Vec<_>>().join(", ")
}

/// What [`init`] found in the environment.
#[derive(Debug, PartialEq, Eq)]
pub enum Startup {
    /// `CROSSMIG_DEFECT` is unset or empty.
    None,
    /// A normal build: the variable is set but ignored.
    Ignored(String),
    /// A `seeded-defects` build with this defect active.
    Active(Defect),
}

#[cfg(feature = "seeded-defects")]
mod imp {
    use super::{Defect, Startup, UnknownDefect, ENV};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static ACTIVE: OnceLock<Option<Defect>> = OnceLock::new();
    static EVENTS: AtomicU64 = AtomicU64::new(0);

    pub fn init() -> Result<Startup, UnknownDefect> {
        let v = std::env::var(ENV).unwrap_or_default();
        let d = if v.is_empty() {
            None
        } else {
            Some(Defect::from_name(&v).ok_or(UnknownDefect { given: v })?)
        };
        let _ = ACTIVE.set(d);
        Ok(d.map_or(Startup::None, Startup::Active))
    }

    pub fn active(d: Defect) -> bool {
        ACTIVE.get().copied().flatten() == Some(d)
    }

    pub fn nth(d: Defect, n: u64) -> bool {
        active(d) && EVENTS.fetch_add(1, Ordering::Relaxed) + 1 == n
    }
}

#[cfg(feature = "seeded-defects")]
pub use imp::{active, init, nth};

/// Without `seeded-defects`: no defect is ever active.
#[cfg(not(feature = "seeded-defects"))]
#[inline(always)]
pub const fn active(_: Defect) -> bool {
    false
}

/// Without `seeded-defects`: never.
#[cfg(not(feature = "seeded-defects"))]
#[inline(always)]
pub const fn nth(_: Defect, _: u64) -> bool {
    false
}

/// Without `seeded-defects`: `CROSSMIG_DEFECT` is reported as ignored.
#[cfg(not(feature = "seeded-defects"))]
pub fn init() -> Result<Startup, UnknownDefect> {
    match std::env::var(ENV) {
        Ok(v) if !v.is_empty() => Ok(Startup::Ignored(v)),
        _ => Ok(Startup::None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for d in Defect::ALL {
            assert_eq!(Defect::from_name(d.name()), Some(d));
        }
        let mut n: Vec<_> = Defect::ALL.iter().map(|d| d.name()).collect();
        n.sort();
        n.dedup();
        assert_eq!(n.len(), Defect::ALL.len());
        assert_eq!(Defect::from_name("nope"), None);
    }

    #[test]
    fn bitmap_shift_moves_each_bit_up_one_page() {
        let mut b = [0b1000_0001u8, 0b0000_0001];
        shift_bitmap_le(&mut b);
        assert_eq!(b, [0b0000_0010, 0b0000_0011]);
    }

    #[cfg(not(feature = "seeded-defects"))]
    #[test]
    fn a_normal_build_has_no_active_defect() {
        assert_eq!(precopy_page_offset((2 << 20) - 4096), (2 << 20) - 4096);
        for d in Defect::ALL {
            assert!(!active(d));
            assert!(!nth(d, 1));
        }
    }
}
