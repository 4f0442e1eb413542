//! Postcopy on the incoming side: the legality rules ([`rules`], pure), the
//! run-time machinery ([`runtime`]: userfaultfd placement, fault thread) and
//! the simulated vCPUs ([`vcpu`]).

pub mod hugepage;
pub mod rules;
pub mod runtime;
pub mod vcpu;

pub use hugepage::TmpPage;
pub use rules::{Action, Local, PcState, RuleError};
pub use runtime::{PlaceError, PostcopyRuntime, RuntimeSlot, StartError};
pub use vcpu::{Pattern, VcpuConfig};
