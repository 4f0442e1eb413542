//! Driving a migration: the primitives of one migration between two VMs
//! ([`session`]), how the source reaches the destination ([`recorder`]),
//! the harness's TCP proxy that records or damages what passes ([`proxy`]),
//! unix sockets and save/restore through files, fds and exec ([`transport`]),
//! the verified-migration flow built on them ([`migrate`]) and its
//! repetition with random postcopy interruptions ([`soak`]).

pub mod console;
pub mod migrate;
pub mod proxy;
pub mod recorder;
pub mod session;
pub mod soak;
pub mod transport;
