//! The `globalstate` device section (QEMU's `migration/global_state.c`): the
//! run state the source's guest was in, which the destination enters at the
//! end of the migration when it is not a running one.
//!
//! QEMU's post-load hook reads the name up to its first NUL (the `size` field
//! is not used) and refuses a name that is not a `RunState` ("invalid
//! parameter value: NAME", also for the empty name). At the end of a precopy
//! migration it switches from `inmigrate` to that state (not after postcopy,
//! `scenarios/stream-globalstate-debug-postcopy.toml`); a state its
//! transition table does not allow from `inmigrate` (`debug`, `save-vm`,
//! `restore-vm`) makes every tested QEMU abort ("invalid runstate transition",
//! docs/qemu-bugs.md). rust-dest refuses those cleanly instead.

use std::fmt;
use std::str::FromStr;

/// QEMU's QAPI `RunState` (`qapi/run-state.json`), the same 16 names on 7.2,
/// 10.0 and 11.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestRunState {
    Debug,
    Inmigrate,
    InternalError,
    IoError,
    Paused,
    Postmigrate,
    Prelaunch,
    FinishMigrate,
    RestoreVm,
    Running,
    SaveVm,
    Shutdown,
    Suspended,
    Watchdog,
    GuestPanicked,
    Colo,
}

const ALL: [GuestRunState; 16] = [
    GuestRunState::Debug,
    GuestRunState::Inmigrate,
    GuestRunState::InternalError,
    GuestRunState::IoError,
    GuestRunState::Paused,
    GuestRunState::Postmigrate,
    GuestRunState::Prelaunch,
    GuestRunState::FinishMigrate,
    GuestRunState::RestoreVm,
    GuestRunState::Running,
    GuestRunState::SaveVm,
    GuestRunState::Shutdown,
    GuestRunState::Suspended,
    GuestRunState::Watchdog,
    GuestRunState::GuestPanicked,
    GuestRunState::Colo,
];

impl GuestRunState {
    /// The QAPI name.
    pub fn name(self) -> &'static str {
        match self {
            GuestRunState::Debug => "debug",
            GuestRunState::Inmigrate => "inmigrate",
            GuestRunState::InternalError => "internal-error",
            GuestRunState::IoError => "io-error",
            GuestRunState::Paused => "paused",
            GuestRunState::Postmigrate => "postmigrate",
            GuestRunState::Prelaunch => "prelaunch",
            GuestRunState::FinishMigrate => "finish-migrate",
            GuestRunState::RestoreVm => "restore-vm",
            GuestRunState::Running => "running",
            GuestRunState::SaveVm => "save-vm",
            GuestRunState::Shutdown => "shutdown",
            GuestRunState::Suspended => "suspended",
            GuestRunState::Watchdog => "watchdog",
            GuestRunState::GuestPanicked => "guest-panicked",
            GuestRunState::Colo => "colo",
        }
    }

    /// Can a destination switch from `inmigrate` to this state at the end of
    /// the migration (QEMU's run-state transition table, `system/runstate.c`;
    /// staying in `inmigrate` is no transition)?
    pub fn enterable_from_inmigrate(self) -> bool {
        !matches!(self, GuestRunState::Debug | GuestRunState::SaveVm | GuestRunState::RestoreVm)
    }
}

impl FromStr for GuestRunState {
    type Err = ();
    fn from_str(s: &str) -> Result<GuestRunState, ()> {
        ALL.into_iter().find(|r| r.name() == s).ok_or(())
    }
}

impl fmt::Display for GuestRunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a `globalstate` section is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GlobalStateError {
    /// Shorter than the size field and one byte of name.
    #[error("globalstate section of {0} byte(s): too short for a run state")]
    TooShort(usize),
    /// Not a `RunState` name (QEMU's own text after the colon).
    #[error("globalstate: invalid parameter value: {0}")]
    InvalidRunState(String),
    /// A valid name QEMU cannot enter from `inmigrate` (QEMU aborts).
    #[error("globalstate: invalid runstate transition: 'inmigrate' -> '{0}' (the run state received cannot be entered at the end of an incoming migration; QEMU aborts here, docs/qemu-bugs.md)")]
    Transition(GuestRunState),
}

/// Where the name is in the section data: after the be32 size (which QEMU
/// does not use when loading).
const NAME_AT: usize = 4;

/// The run state named by a `globalstate` section's data (QEMU's post-load
/// check, `migration/global_state.c`): up to the first NUL of a buffer of
/// `buffer` bytes (32 from 9.0, 100 before) whose last byte QEMU forces to
/// NUL, so a name without NUL is cut to `buffer - 1` bytes.
pub fn parse(data: &[u8], buffer: usize) -> Result<GuestRunState, GlobalStateError> {
    if data.len() < NAME_AT + 1 {
        return Err(GlobalStateError::TooShort(data.len()));
    }
    let buf = &data[NAME_AT..data.len().min(NAME_AT + buffer.saturating_sub(1))];
    let name = &buf[..buf.iter().position(|&b| b == 0).unwrap_or(buf.len())];
    let text = String::from_utf8_lossy(name);
    text.parse().map_err(|()| GlobalStateError::InvalidRunState(text.into_owned()))
}

/// The check QEMU makes when the migration ends: the state must be
/// enterable from `inmigrate`.
pub fn check_final(rs: GuestRunState) -> Result<(), GlobalStateError> {
    if rs.enterable_from_inmigrate() {
        Ok(())
    } else {
        Err(GlobalStateError::Transition(rs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The section as a 10.0 source writes it: size, name[32], 2 flags, 66 unused.
    fn section(name: &[u8], size: u32) -> Vec<u8> {
        let mut d = size.to_be_bytes().to_vec();
        let mut n = name.to_vec();
        n.resize(32, 0);
        d.extend_from_slice(&n);
        d.extend_from_slice(&[1, 0]);
        d.extend_from_slice(&[0; 66]);
        d
    }

    #[test]
    fn every_name_round_trips() {
        for r in ALL {
            assert_eq!(parse(&section(r.name().as_bytes(), 8), 32), Ok(r));
        }
    }

    #[test]
    fn invalid_names_are_refused_with_qemus_text() {
        for (name, shown) in [(&b"bogus"[..], "bogus"), (b"", ""), (b"Running", "Running")] {
            let e = parse(&section(name, name.len() as u32 + 1), 32).unwrap_err();
            assert_eq!(e, GlobalStateError::InvalidRunState(shown.into()));
            assert!(e.to_string().contains(&format!("invalid parameter value: {shown}")));
        }
        assert_eq!(parse(&[0, 0, 0], 32), Err(GlobalStateError::TooShort(3)));
    }

    /// A name filling the 32-byte buffer is cut to 31 bytes (observed on
    /// 10.0 and 11.1); with 7.2's 100-byte buffer it runs on into the flags.
    #[test]
    fn names_without_nul_are_cut_at_the_buffer() {
        let GlobalStateError::InvalidRunState(n) =
            parse(&section(&[b'r'; 32], 33), 32).unwrap_err()
        else {
            panic!("not an invalid name")
        };
        assert_eq!(n.len(), 31);
        let GlobalStateError::InvalidRunState(n) =
            parse(&section(&[b'r'; 32], 33), 100).unwrap_err()
        else {
            panic!("not an invalid name")
        };
        assert_eq!(n, format!("{}\u{1}", "r".repeat(32)));
        assert_eq!(parse(&[0, 0, 0, 1], 32), Err(GlobalStateError::TooShort(4)));
    }

    #[test]
    fn size_field_is_ignored_like_qemu() {
        // QEMU reads up to the NUL whatever `size` says.
        assert_eq!(parse(&section(b"paused", 0), 32), Ok(GuestRunState::Paused));
        assert_eq!(parse(&section(b"paused", 999), 32), Ok(GuestRunState::Paused));
    }

    #[test]
    fn states_not_enterable_from_inmigrate() {
        for r in ALL {
            let bad = matches!(
                r,
                GuestRunState::Debug | GuestRunState::SaveVm | GuestRunState::RestoreVm
            );
            assert_eq!(check_final(r).is_err(), bad, "{r}");
        }
        let e = check_final(GuestRunState::Debug).unwrap_err().to_string();
        assert!(e.contains("'inmigrate' -> 'debug'"), "{e}");
    }
}
