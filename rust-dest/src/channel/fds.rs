//! Descriptors handed to the process (QEMU's `monitor/fds.c`): named
//! descriptors of `getfd`/`closefd` (used by `fd:NAME`) and the descriptor
//! sets of `add-fd`/`remove-fd`/`query-fdsets` (used by
//! `file:/dev/fdset/N`). The descriptors themselves arrive over the QMP
//! socket with SCM_RIGHTS (`qmp::fdpass`).
//!
//! QEMU keeps named descriptors per monitor; rust-dest keeps one table for
//! the process, so a name given on one QMP connection is seen by all.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};

use serde_json::{json, Value};

/// Why a descriptor command or lookup failed (QEMU's texts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FdError {
    #[error("No file descriptor supplied via SCM_RIGHTS")]
    NoneSupplied,
    #[error("Parameter 'fdname' expects a name not starting with a digit")]
    DigitName,
    #[error("Parameter 'fdset-id' expects a non-negative value")]
    NegativeSet,
    /// `closefd` / `remove-fd` of something that is not there.
    #[error("File descriptor named '{0}' not found")]
    NotFound(String),
    /// `fd:NAME` of a name never passed.
    #[error("File descriptor named '{0}' has not been found")]
    NoSuchName(String),
    #[error("Invalid file descriptor number '{0}'")]
    BadNumber(String),
    /// `qemu_open()` of `/dev/fdset/N`: no such set (ENOENT) or no
    /// descriptor in it opened with the wanted access mode (EACCES).
    #[error("Could not open '{path}': {}", if *.no_set { "No such file or directory" } else { "Permission denied" })]
    FdsetOpen { path: String, no_set: bool },
}

struct SetFd {
    fd: OwnedFd,
    opaque: Option<String>,
}

#[derive(Default)]
struct Store {
    named: HashMap<String, OwnedFd>,
    sets: BTreeMap<i64, Vec<SetFd>>,
}

static STORE: Mutex<Option<Store>> = Mutex::new(None);

fn store() -> MutexGuard<'static, Option<Store>> {
    STORE.lock().unwrap_or_else(|e| e.into_inner())
}

fn with<T>(f: impl FnOnce(&mut Store) -> T) -> T {
    let mut g = store();
    f(g.get_or_insert_with(Store::default))
}

/// `getfd`: keep `fd` under `name` (replacing, and closing, an older one).
pub fn getfd(name: &str, fd: OwnedFd) -> Result<(), FdError> {
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(FdError::DigitName);
    }
    with(|s| s.named.insert(name.to_string(), fd));
    Ok(())
}

/// `closefd`.
pub fn closefd(name: &str) -> Result<(), FdError> {
    with(|s| s.named.remove(name)).map(drop).ok_or_else(|| FdError::NotFound(name.to_string()))
}

/// The descriptor of `fd:NAME`: a named one (taken out of the table, as
/// QEMU's `monitor_get_fd()` does) or, for a name starting with a digit, an
/// inherited descriptor number.
pub fn take_fd_param(name: &str) -> Result<OwnedFd, FdError> {
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        let n: i32 = name.parse().map_err(|_| FdError::BadNumber(name.to_string()))?;
        return crate::mem::adopt_inherited_fd(n).map_err(|_| FdError::BadNumber(name.to_string()));
    }
    with(|s| s.named.remove(name)).ok_or_else(|| FdError::NoSuchName(name.to_string()))
}

/// `add-fd`: put `fd` in set `set` (default: the lowest unused id).
/// Returns QEMU's `AddfdInfo`.
pub fn add_fd(set: Option<i64>, opaque: Option<String>, fd: OwnedFd) -> Result<Value, FdError> {
    if set.is_some_and(|s| s < 0) {
        return Err(FdError::NegativeSet);
    }
    Ok(with(|s| {
        let id = set.unwrap_or_else(|| (0..).find(|i| !s.sets.contains_key(i)).unwrap_or(0));
        let raw = fd.as_raw_fd();
        s.sets.entry(id).or_default().push(SetFd { fd, opaque });
        json!({ "fdset-id": id, "fd": raw })
    }))
}

/// `remove-fd`: one descriptor of a set, or the whole set.
pub fn remove_fd(set: i64, fd: Option<i64>) -> Result<(), FdError> {
    let name = match fd {
        Some(f) => format!("fdset-id:{set}, fd:{f}"),
        None => format!("fdset-id:{set}"),
    };
    with(|s| {
        let fds = s.sets.get_mut(&set).ok_or_else(|| FdError::NotFound(name.clone()))?;
        match fd {
            Some(f) => {
                let i = fds
                    .iter()
                    .position(|x| i64::from(x.fd.as_raw_fd()) == f)
                    .ok_or_else(|| FdError::NotFound(name.clone()))?;
                fds.remove(i);
            }
            None => fds.clear(),
        }
        if fds.is_empty() {
            s.sets.remove(&set);
        }
        Ok(())
    })
}

/// `query-fdsets`.
pub fn query_fdsets() -> Value {
    with(|s| {
        Value::Array(
            s.sets
                .iter()
                .map(|(id, fds)| {
                    let fds: Vec<Value> = fds
                        .iter()
                        .map(|f| match &f.opaque {
                            Some(o) => json!({ "fd": f.fd.as_raw_fd(), "opaque": o }),
                            None => json!({ "fd": f.fd.as_raw_fd() }),
                        })
                        .collect();
                    json!({ "fdset-id": id, "fds": fds })
                })
                .collect(),
        )
    })
}

/// `qemu_open()` of `/dev/fdset/N` for reading: a duplicate of a
/// descriptor of set N opened read-only (or read-write).
pub fn open_fdset_read(path: &str) -> Option<Result<std::fs::File, FdError>> {
    let id = path.strip_prefix("/dev/fdset/")?;
    let err = |no_set| FdError::FdsetOpen { path: path.to_string(), no_set };
    let Ok(id) = id.parse::<i64>() else { return Some(Err(err(true))) };
    Some(with(|s| {
        let fds = s.sets.get(&id).ok_or_else(|| err(true))?;
        for f in fds {
            let Ok(fl) = nix::fcntl::fcntl(f.fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL) else {
                continue;
            };
            let mode = nix::fcntl::OFlag::from_bits_truncate(fl) & nix::fcntl::OFlag::O_ACCMODE;
            if mode == nix::fcntl::OFlag::O_RDONLY {
                return f.fd.try_clone().map(std::fs::File::from).map_err(|_| err(false));
            }
        }
        Err(err(false))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
    }

    #[test]
    fn named_and_sets() {
        assert_eq!(getfd("1x", file()), Err(FdError::DigitName));
        getfd("t-named", file()).unwrap();
        assert!(take_fd_param("t-named").is_ok());
        assert_eq!(
            take_fd_param("t-named").unwrap_err().to_string(),
            "File descriptor named 't-named' has not been found"
        );
        assert_eq!(
            closefd("t-nope").unwrap_err().to_string(),
            "File descriptor named 't-nope' not found"
        );
        assert_eq!(add_fd(Some(-1), None, file()), Err(FdError::NegativeSet));
        let info = add_fd(Some(77), Some("x".into()), file()).unwrap();
        assert_eq!(info["fdset-id"], 77);
        let q = query_fdsets();
        assert!(q
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["fdset-id"] == 77 && s["fds"][0]["opaque"] == "x"));
        assert!(open_fdset_read("/dev/fdset/77").unwrap().is_ok());
        assert_eq!(
            open_fdset_read("/dev/fdset/78").unwrap().unwrap_err().to_string(),
            "Could not open '/dev/fdset/78': No such file or directory"
        );
        assert!(open_fdset_read("/tmp/x").is_none());
        assert_eq!(
            remove_fd(77, Some(-5)).unwrap_err().to_string(),
            "File descriptor named 'fdset-id:77, fd:-5' not found"
        );
        remove_fd(77, None).unwrap();
        assert!(open_fdset_read("/dev/fdset/77").unwrap().is_err());
    }
}
