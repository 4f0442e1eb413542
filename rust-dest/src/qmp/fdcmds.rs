//! `getfd`, `closefd`, `add-fd`, `remove-fd`, `query-fdsets` (QEMU's
//! `monitor/fds.c`): the descriptor comes with the command over the QMP
//! unix socket ([`super::fdpass`]), the tables live in
//! [`crate::channel::fds`].

use serde_json::{json, Value};

use super::args::{Args, QResult, QmpErr};
use super::fdpass::take_passed_fd;
use crate::channel::fds::{self, FdError};
use crate::state::Shared;

fn err(e: FdError) -> QmpErr {
    QmpErr::generic(e.to_string())
}

fn int(a: &mut Args, key: &str) -> Option<i64> {
    a.take(key).and_then(|v| v.as_i64())
}

pub(super) fn getfd(_: &Shared, mut a: Args) -> QResult<Value> {
    let name = a.str("fdname")?;
    a.finish()?;
    let fd = take_passed_fd().ok_or_else(|| err(FdError::NoneSupplied))?;
    fds::getfd(&name, fd).map_err(err)?;
    Ok(json!({}))
}

pub(super) fn closefd(_: &Shared, mut a: Args) -> QResult<Value> {
    let name = a.str("fdname")?;
    a.finish()?;
    fds::closefd(&name).map_err(err)?;
    Ok(json!({}))
}

pub(super) fn add_fd(_: &Shared, mut a: Args) -> QResult<Value> {
    let set = int(&mut a, "fdset-id");
    let opaque = a.opt_str("opaque")?;
    a.finish()?;
    let fd = take_passed_fd().ok_or_else(|| err(FdError::NoneSupplied))?;
    fds::add_fd(set, opaque, fd).map_err(err)
}

pub(super) fn remove_fd(_: &Shared, mut a: Args) -> QResult<Value> {
    let set = int(&mut a, "fdset-id").unwrap_or(-1);
    let fd = int(&mut a, "fd");
    a.finish()?;
    fds::remove_fd(set, fd).map_err(err)?;
    Ok(json!({}))
}

pub(super) fn query_fdsets(_: &Shared, a: Args) -> QResult<Value> {
    a.finish()?;
    Ok(fds::query_fdsets())
}
