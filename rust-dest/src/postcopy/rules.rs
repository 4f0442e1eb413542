//! The postcopy incoming state machine (pure): which postcopy command is
//! legal in which state, following QEMU's rules (`migration/savevm.c`,
//! `loadvm_postcopy_handle_*`).
//!
//! States ([`PcState`]): NONE → ADVISE → DISCARD → LISTENING → RUNNING → END.

pub use crate::state::PcState;
use wire::command::{Advise, Command};

/// A postcopy command refused by the rules.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{cmd} received in postcopy state {state} (not allowed there)")]
    NotAllowed { cmd: &'static str, state: PcState },
    #[error("POSTCOPY_ADVISE without page sizes (dirty-bitmaps only) but postcopy-ram is enabled on the destination")]
    AdviseWithoutSizes,
    #[error("POSTCOPY_ADVISE for postcopy-ram but the postcopy-ram capability is not enabled on the destination")]
    AdviseWithoutCapability,
    #[error("POSTCOPY_ADVISE: source RAM page size summary {source_size:#x} does not match the destination's {dest:#x} (its RAMBlocks' page sizes)")]
    PageSizeSummary { source_size: u64, dest: u64 },
    #[error("POSTCOPY_ADVISE: source target page size {source_size:#x} does not match destination target page size {dest:#x}")]
    TargetPageSize { source_size: u64, dest: u64 },
}

/// What the destination must do after a legal transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// ADVISE accepted: postcopy RAM structures may be prepared.
    Advised,
    /// A discard; `first` when it is the first one (ADVISE → DISCARD).
    Discard { first: bool },
    /// LISTEN: register RAM with userfaultfd, start the fault thread.
    /// `discarded` is false when no discard command preceded it.
    Listen { discarded: bool },
    /// RUN: the guest may start.
    Run,
    /// Not a postcopy state command.
    None,
}

/// Local facts the ADVISE check compares against.
#[derive(Clone, Copy, Debug)]
pub struct Local {
    /// postcopy-ram capability on this side.
    pub postcopy_ram: bool,
    /// The OR of the page sizes of this side's RAMBlocks (QEMU's
    /// `ram_pagesize_summary()`, `migration/ram.c`): the host page size,
    /// with the huge page size of each hugetlbfs backend ORed in.
    pub ram_pagesize_summary: u64,
    pub target_page_size: u64,
}

/// Apply `cmd` in `state`. Returns the new state and the action, or the
/// rule that refused it.
pub fn step(state: PcState, cmd: &Command, local: &Local) -> Result<(PcState, Action), RuleError> {
    let bad = |cmd: &'static str| Err(RuleError::NotAllowed { cmd, state });
    match cmd {
        Command::PostcopyAdvise(adv) => {
            if state != PcState::None {
                return bad("POSTCOPY_ADVISE");
            }
            match adv {
                None => {
                    if local.postcopy_ram {
                        return Err(RuleError::AdviseWithoutSizes);
                    }
                }
                Some(Advise { ram_pagesize_summary, target_page_size }) => {
                    if !local.postcopy_ram {
                        return Err(RuleError::AdviseWithoutCapability);
                    }
                    if *ram_pagesize_summary != local.ram_pagesize_summary {
                        return Err(RuleError::PageSizeSummary {
                            source_size: *ram_pagesize_summary,
                            dest: local.ram_pagesize_summary,
                        });
                    }
                    if *target_page_size != local.target_page_size {
                        return Err(RuleError::TargetPageSize {
                            source_size: *target_page_size,
                            dest: local.target_page_size,
                        });
                    }
                }
            }
            Ok((PcState::Advise, Action::Advised))
        }
        Command::PostcopyRamDiscard(_) => match state {
            PcState::Advise => Ok((PcState::Discard, Action::Discard { first: true })),
            PcState::Discard => Ok((PcState::Discard, Action::Discard { first: false })),
            _ => bad("POSTCOPY_RAM_DISCARD"),
        },
        Command::PostcopyListen => match state {
            // QEMU (verified on 10.0.2 and 11.1.3 destinations, and in 10.0's
            // source) does the first-discard preparation here, which sets the
            // state to DISCARD *after* LISTEN set LISTENING: the state ends as
            // DISCARD and a following RUN is refused. We keep that verdict.
            PcState::Advise => Ok((PcState::Discard, Action::Listen { discarded: false })),
            PcState::Discard => Ok((PcState::Listening, Action::Listen { discarded: true })),
            _ => bad("POSTCOPY_LISTEN"),
        },
        Command::PostcopyRun => match state {
            PcState::Listening => Ok((PcState::Running, Action::Run)),
            _ => bad("POSTCOPY_RUN"),
        },
        _ => Ok((state, Action::None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::command::Discard;

    const L: Local =
        Local { postcopy_ram: true, ram_pagesize_summary: 4096, target_page_size: 4096 };

    fn cmds() -> Vec<(&'static str, Command)> {
        vec![
            (
                "advise",
                Command::PostcopyAdvise(Some(Advise {
                    ram_pagesize_summary: 4096,
                    target_page_size: 4096,
                })),
            ),
            (
                "discard",
                Command::PostcopyRamDiscard(Discard { block: "pc.ram".into(), ranges: vec![] }),
            ),
            ("listen", Command::PostcopyListen),
            ("run", Command::PostcopyRun),
        ]
    }

    /// Every (state, command) pair against the table in QEMU's rules.
    #[test]
    fn full_table() {
        use PcState::*;
        let expect = |s: PcState, c: &str| -> Option<PcState> {
            match (s, c) {
                (None, "advise") => Some(Advise),
                (Advise, "discard") | (Discard, "discard") => Some(Discard),
                // QEMU quirk: LISTEN straight after ADVISE leaves DISCARD.
                (Advise, "listen") => Some(Discard),
                (Discard, "listen") => Some(Listening),
                (Listening, "run") => Some(Running),
                _ => Option::None,
            }
        };
        for s in PcState::ALL {
            for (n, c) in cmds() {
                let r = step(s, &c, &L);
                match expect(s, n) {
                    Some(ns) => assert_eq!(r.unwrap().0, ns, "{s:?} {n}"),
                    Option::None => {
                        let e = r.unwrap_err().to_string();
                        assert!(e.contains(s.name()), "{e}");
                        assert!(e.contains("POSTCOPY_"), "{e}");
                    }
                }
            }
        }
    }

    #[test]
    fn advise_checks() {
        let c = Command::PostcopyAdvise(Some(Advise {
            ram_pagesize_summary: 0x201000,
            target_page_size: 4096,
        }));
        let e = step(PcState::None, &c, &L).unwrap_err().to_string();
        assert!(e.contains("0x201000") && e.contains("0x1000"), "{e}");
        // A destination with a 2 MiB hugetlbfs backend has that summary.
        let huge = Local { ram_pagesize_summary: 0x201000, ..L };
        assert_eq!(step(PcState::None, &c, &huge).unwrap().0, PcState::Advise);
        let small = cmds()[0].1.clone();
        assert!(matches!(
            step(PcState::None, &small, &huge),
            Err(RuleError::PageSizeSummary { source_size: 0x1000, dest: 0x201000 })
        ));
        let c = Command::PostcopyAdvise(Some(Advise {
            ram_pagesize_summary: 4096,
            target_page_size: 1024,
        }));
        let e = step(PcState::None, &c, &L).unwrap_err().to_string();
        assert!(e.contains("target page size 0x400"), "{e}");
        assert!(step(PcState::None, &Command::PostcopyAdvise(None), &L).is_err());
        let l2 = Local { postcopy_ram: false, ..L };
        assert!(step(PcState::None, &Command::PostcopyAdvise(None), &l2).is_ok());
        assert!(step(PcState::None, &cmds()[0].1, &l2).is_err());
    }

    #[test]
    fn listen_reports_discards() {
        assert_eq!(
            step(PcState::Advise, &Command::PostcopyListen, &L).unwrap().1,
            Action::Listen { discarded: false }
        );
        assert_eq!(
            step(PcState::Discard, &Command::PostcopyListen, &L).unwrap().1,
            Action::Listen { discarded: true }
        );
        assert_eq!(
            step(PcState::Advise, &cmds()[1].1, &L).unwrap().1,
            Action::Discard { first: true }
        );
    }
}
