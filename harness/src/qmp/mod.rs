//! Async QMP client (tokio): the connection, commands and events
//! ([`client`]), migration commands and waits ([`migration`]), and QEMU's
//! migration status and run state as types ([`status`]).

pub mod client;
pub mod migration;
pub mod status;

pub use client::{Qmp, QmpError, QmpEvent, DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_RETRY};
pub use migration::{error_desc, PassProgress, StatusWait};
pub use status::{MigrationStatus, RunState};
