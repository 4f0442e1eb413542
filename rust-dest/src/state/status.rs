//! Migration status, run state and the postcopy incoming state, as QEMU
//! names them (`qapi/migration.json`, `qapi/run-state.json`,
//! `migration/postcopy-ram.h`).

/// QEMU's `MigrationStatus` values that an incoming side can be in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigStatus {
    None,
    Setup,
    Active,
    PostcopyActive,
    PostcopyPaused,
    PostcopyRecover,
    Completed,
    Failed,
}

impl MigStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MigStatus::None => "none",
            MigStatus::Setup => "setup",
            MigStatus::Active => "active",
            MigStatus::PostcopyActive => "postcopy-active",
            MigStatus::PostcopyPaused => "postcopy-paused",
            MigStatus::PostcopyRecover => "postcopy-recover",
            MigStatus::Completed => "completed",
            MigStatus::Failed => "failed",
        }
    }
    pub fn is_terminal(self) -> bool {
        matches!(self, MigStatus::Completed | MigStatus::Failed)
    }
}

/// QEMU's `RunState` as reported by `query-status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Waiting for / receiving an incoming migration.
    InMigrate,
    /// Migration done, `-S` given (or `stop` issued).
    Paused,
    /// The simulated vCPUs run.
    Running,
    /// Migration failed; the VM cannot run.
    PostMigrate,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::InMigrate => "inmigrate",
            RunState::Paused => "paused",
            RunState::Running => "running",
            RunState::PostMigrate => "postmigrate",
        }
    }
}

/// The postcopy incoming state (QEMU's `PostcopyState`):
/// NONE → ADVISE → DISCARD → LISTENING → RUNNING → END. Which command is
/// legal in which state is decided in `postcopy::rules`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PcState {
    None,
    Advise,
    Discard,
    Listening,
    Running,
    End,
}

impl PcState {
    pub const ALL: [PcState; 6] = [
        PcState::None,
        PcState::Advise,
        PcState::Discard,
        PcState::Listening,
        PcState::Running,
        PcState::End,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PcState::None => "none",
            PcState::Advise => "advise",
            PcState::Discard => "discard",
            PcState::Listening => "listening",
            PcState::Running => "running",
            PcState::End => "end",
        }
    }
}

impl std::fmt::Display for PcState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
