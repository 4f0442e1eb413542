//! The rust-dest binary started the way management stacks start QEMU: the
//! QMP monitor on an inherited listening socket (`-chardev socket,fd=N` +
//! `-mon mode=control`), and lines that must be refused at start-up with
//! QEMU's kind of message rather than run uncontrollable.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_rust-dest");

fn refused(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{args:?} should be refused");
    String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().to_string()
}

#[test]
fn refused_like_qemu() {
    assert_eq!(refused(&["-bogus"]), "rust-dest: -bogus: invalid option");
    assert!(refused(&["-incoming", "defer"])
        .starts_with("rust-dest: -incoming defer needs a QMP monitor"));
    assert_eq!(
        refused(&["-mon", "chardev=nope,mode=control", "-incoming", "defer"]),
        "rust-dest: -mon chardev=nope,mode=control: chardev \"nope\" not found"
    );
    assert_eq!(
        refused(&[
            "-object",
            r#"{"qom-type":"memory-backend-ram","id":"m"}"#,
            "-incoming",
            "tcp:127.0.0.1:0"
        ]),
        r#"rust-dest: -object {"qom-type":"memory-backend-ram","id":"m"}: Parameter 'size' is missing"#
    );
    assert_eq!(
        refused(&["-machine", "q35,memory-backend=nope", "-incoming", "tcp:127.0.0.1:0"]),
        "rust-dest: Memory backend 'nope' not found"
    );
}

#[test]
fn monitor_on_an_inherited_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mon.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let fd = listener.as_raw_fd();
    // Inherited across exec, as a management stack passes it.
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
    let mut child = Command::new(BIN)
        .args(["-name", "guest=fdvm,debug-threads=on", "-chardev"])
        .arg(format!("socket,id=charmonitor,fd={fd},server=on,wait=off"))
        .args(["-mon", "chardev=charmonitor,id=monitor,mode=control", "-incoming", "defer", "-S"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(listener);
    let s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut recv = || {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        serde_json::from_str::<Value>(&l).unwrap()
    };
    assert!(recv()["QMP"]["version"]["qemu"].is_object());
    for (cmd, want) in [
        ("qmp_capabilities", json!({})),
        ("query-name", json!({"name": "fdvm"})),
        ("query-status", json!({"status": "inmigrate", "running": false})),
        ("quit", json!({})),
    ] {
        writeln!(w, "{}", json!({ "execute": cmd })).unwrap();
        assert_eq!(recv()["return"], want, "{cmd}");
    }
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}");
}
