//! The QMP test client and an in-process QMP server for
//! `tests/qmp_server.rs`: a plain unix-socket client like any QMP client.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rust_dest::qmp;
use rust_dest::ram::RamTable;
use rust_dest::state::Shared;
use serde_json::{json, Value};

pub struct Client {
    pub rd: BufReader<UnixStream>,
    pub wr: UnixStream,
    pub events: VecDeque<Value>,
}

impl Client {
    pub fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { rd: BufReader::new(s.try_clone().unwrap()), wr: s, events: VecDeque::new() }
    }

    /// Connect, check the greeting, negotiate.
    pub fn ready(path: &Path) -> Client {
        let mut c = Client::connect(path);
        let g = c.recv();
        assert!(g.get("QMP").is_some(), "{g}");
        assert_eq!(c.cmd("qmp_capabilities", json!({})), json!({"return": {}}));
        c
    }

    pub fn send(&mut self, s: &str) {
        self.wr.write_all(s.as_bytes()).unwrap();
    }

    /// Next message of any kind.
    pub fn recv(&mut self) -> Value {
        let mut l = String::new();
        let n = self.rd.read_line(&mut l).expect("read (timeout?)");
        assert!(n > 0, "unexpected EOF");
        assert!(l.ends_with("\r\n"), "line not CRLF-terminated: {l:?}");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}"))
    }

    /// Next reply (events are stashed).
    pub fn reply(&mut self) -> Value {
        loop {
            let v = self.recv();
            if v.get("event").is_some() {
                self.events.push_back(v);
            } else {
                return v;
            }
        }
    }

    pub fn cmd(&mut self, name: &str, args: Value) -> Value {
        let req = if args.is_null() {
            json!({"execute": name})
        } else {
            json!({"execute": name, "arguments": args})
        };
        self.send(&format!("{req}\n"));
        self.reply()
    }

    pub fn ok(&mut self, name: &str, args: Value) -> Value {
        let r = self.cmd(name, args);
        r.get("return").unwrap_or_else(|| panic!("{name} failed: {r}")).clone()
    }

    pub fn err(&mut self, name: &str, args: Value) -> (String, String) {
        let r = self.cmd(name, args);
        let e = r.get("error").unwrap_or_else(|| panic!("{name} unexpectedly succeeded: {r}"));
        (e["class"].as_str().unwrap().to_string(), e["desc"].as_str().unwrap().to_string())
    }

    pub fn event(&mut self, name: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
            return self.events.remove(i).unwrap();
        }
        loop {
            let v = self.recv();
            if v["event"] == name {
                return v;
            }
            assert!(v.get("event").is_some(), "unexpected reply while waiting for {name}: {v}");
        }
    }
}

pub struct Server {
    pub shared: Shared,
    pub sock: PathBuf,
    pub _dir: tempfile::TempDir,
}

pub fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
    qmp::spawn(shared.clone(), &format!("unix:{},server=on,wait=off", sock.display())).unwrap();
    Server { shared, sock, _dir: dir }
}
