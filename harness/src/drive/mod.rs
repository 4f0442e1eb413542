//! Driving a migration: the verified-migration flow ([`migrate`]) and the
//! harness's TCP proxy that records or damages what passes ([`proxy`]).

pub mod console;
pub mod migrate;
pub mod proxy;
