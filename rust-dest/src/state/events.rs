//! Asynchronous events (`MIGRATION`, `STOP`, `RESUME`, ...) passed from the
//! loader to the QMP server.

use serde_json::Value;

/// Something the QMP server should emit as an asynchronous event.
#[derive(Clone, Debug)]
pub struct Event {
    /// QMP event name, e.g. `MIGRATION`, `STOP`, `RESUME`.
    pub name: &'static str,
    /// The `data` member.
    pub data: Value,
}
