//! Driving a migration: the primitives of one migration between two VMs
//! ([`session`]), how the source reaches the destination ([`recorder`]),
//! the harness's TCP proxy that records or damages what passes ([`proxy`]),
//! unix sockets and save/restore through files, fds and exec ([`transport`]),
//! and the verified-migration flow built on them ([`migrate`]).

pub mod console;
pub mod migrate;
pub mod proxy;
pub mod recorder;
pub mod session;
pub mod transport;
