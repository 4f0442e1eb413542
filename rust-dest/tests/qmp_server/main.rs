//! Integration tests for the QMP server (`rust_dest::qmp`), driven through a
//! plain unix socket like any QMP client would.
//!
//! Modules: `client` (the test client and server), `migration` (the
//! migration-facing commands); the protocol-level tests are here.

mod client;
mod migration;
mod schema;

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::time::Duration;

use rust_dest::qmp::{self, QmpAddr, QmpEndpoint};
use rust_dest::ram::RamTable;
use rust_dest::state::{MigStatus, Shared};
use serde_json::{json, Value};

use client::{server, Client};

#[test]
fn parse_spec_forms() {
    let p = qmp::parse_spec("unix:/tmp/q.sock,server=on,wait=off").unwrap();
    assert_eq!(
        p,
        QmpAddr { endpoint: QmpEndpoint::Unix("/tmp/q.sock".into()), server: true, wait: false }
    );
    let p = qmp::parse_spec("unix:/tmp/q.sock,server,nowait").unwrap();
    assert_eq!(
        p,
        QmpAddr { endpoint: QmpEndpoint::Unix("/tmp/q.sock".into()), server: true, wait: false }
    );
    let p = qmp::parse_spec("unix:/tmp/q.sock,server").unwrap();
    assert!(p.server && p.wait);
    let p = qmp::parse_spec("unix:/tmp/a,,b.sock,server=on,wait=off").unwrap();
    assert_eq!(p.endpoint, QmpEndpoint::Unix("/tmp/a,b.sock".into()));
    let p = qmp::parse_spec("unix:/tmp/q.sock").unwrap();
    assert!(!p.server && !p.wait, "client mode by default, like QEMU");
    let p = qmp::parse_spec("unix:qmp-x,server=on,wait=off,abstract=on").unwrap();
    assert_eq!(p.endpoint, QmpEndpoint::UnixAbstract("qmp-x".into()));
    let p = qmp::parse_spec("tcp:127.0.0.1:4444,server=on,wait=off").unwrap();
    assert_eq!(p.endpoint, QmpEndpoint::Tcp { host: "127.0.0.1".into(), port: 4444 });
    let p = qmp::parse_spec("tcp:[::1]:4445,server=on,wait=off").unwrap();
    assert_eq!(p.endpoint, QmpEndpoint::Tcp { host: "::1".into(), port: 4445 });
    let p = qmp::parse_spec("tcp::4446,server=on,wait=off,nodelay=on").unwrap();
    assert_eq!(p.endpoint, QmpEndpoint::Tcp { host: "".into(), port: 4446 });

    assert!(qmp::parse_spec("stdio").is_err());
    assert!(qmp::parse_spec("pty:x").is_err());
    assert!(qmp::parse_spec("tcp:localhost,server=on").is_err());
    assert!(qmp::parse_spec("tcp:localhost:99999,server=on").is_err());
    assert!(qmp::parse_spec("unix:/tmp/q,server=maybe").is_err());
    assert!(qmp::parse_spec("unix:/tmp/q,bogus=1").unwrap_err().contains("bogus"));
    assert!(qmp::parse_spec("unix:/tmp/q,wait=off").is_err(), "wait needs server mode");
    assert!(qmp::parse_spec("unix:,server=on").is_err());
}

#[test]
fn greeting_and_negotiation() {
    let s = server();
    let mut c = Client::connect(&s.sock);
    let g = c.recv();
    assert_eq!(g["QMP"]["capabilities"], json!(["oob"]));
    assert_eq!(g["QMP"]["version"], qmp::version());
    assert_eq!(g["QMP"]["version"]["qemu"], json!({"major": 10, "minor": 0, "micro": 0}));
    assert!(g["QMP"]["version"]["package"].as_str().unwrap().contains("rust-dest"));

    let (class, desc) = c.err("query-status", Value::Null);
    assert_eq!(class, "CommandNotFound");
    assert!(desc.contains("Expecting capabilities negotiation with 'qmp_capabilities'"), "{desc}");
    // Unknown commands too.
    assert_eq!(c.err("no-such", Value::Null).0, "CommandNotFound");
    // Bad capability.
    let (class, desc) = c.err("qmp_capabilities", json!({"enable": ["turbo"]}));
    assert_eq!(class, "GenericError");
    assert!(desc.contains("turbo"), "{desc}");
    let (_, desc) = c.err("qmp_capabilities", json!({"enable": "oob"}));
    assert!(desc.contains("Invalid parameter type for 'enable', expected: array"), "{desc}");

    assert_eq!(c.cmd("qmp_capabilities", Value::Null), json!({"return": {}}));
    let (class, desc) = c.err("qmp_capabilities", Value::Null);
    assert_eq!(class, "CommandNotFound");
    assert!(desc.contains("already complete"), "{desc}");
    assert_eq!(c.ok("query-version", Value::Null), qmp::version());
    let cmds = c.ok("query-commands", Value::Null);
    let names: Vec<&str> =
        cmds.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for n in [
        "qmp_capabilities",
        "query-status",
        "query-migrate",
        "migrate-incoming",
        "x-crossmig-ram-digests",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
}

#[test]
fn ids_errors_and_framing() {
    let s = server();
    let mut c = Client::ready(&s.sock);
    c.send("{\"execute\":\"query-status\",\"id\":42}\n");
    let r = c.reply();
    assert_eq!(r["id"], json!(42));
    assert!(r["return"].is_object());
    c.send("{\"execute\":\"query-status\",\"id\":\"abc\"}\n");
    assert_eq!(c.reply()["id"], json!("abc"));
    c.send("{\"execute\":\"nope\",\"id\":{\"x\":[1,2]}}\n");
    let r = c.reply();
    assert_eq!(r["id"], json!({"x": [1, 2]}));
    assert_eq!(r["error"]["class"], "CommandNotFound");
    assert_eq!(r["error"]["desc"], "The command nope has not been found");

    // Malformed JSON, then the connection still works.
    c.send("{\"execute\": nonsense}\n");
    let r = c.reply();
    assert_eq!(r["error"]["class"], "GenericError");
    assert!(r["error"]["desc"].as_str().unwrap().starts_with("JSON parse error"), "{r}");
    assert!(c.ok("query-status", Value::Null).is_object());

    // Several requests on one line, and one split over writes and lines.
    c.send("{\"execute\":\"query-status\",\"id\":1}{\"execute\":\"query-version\",\"id\":2}\n");
    assert_eq!(c.reply()["id"], json!(1));
    assert_eq!(c.reply()["id"], json!(2));
    c.send("{\"execute\":\n");
    std::thread::sleep(Duration::from_millis(50));
    c.send("  \"query-status\", \"id\": 3}\n");
    assert_eq!(c.reply()["id"], json!(3));

    // Shape errors.
    c.send("[1, 2]\n");
    assert_eq!(c.reply()["error"]["desc"], "QMP input must be a JSON object");
    c.send("{\"arguments\":{},\"id\":7}\n");
    let r = c.reply();
    assert_eq!(r["error"]["desc"], "QMP input lacks member 'execute'");
    assert_eq!(r["id"], json!(7));
    c.send("{\"execute\":\"query-status\",\"bogus\":1}\n");
    assert!(c.reply()["error"]["desc"].as_str().unwrap().contains("'bogus' is unexpected"));
    c.send("{\"execute\":\"query-status\",\"arguments\":[]}\n");
    assert!(c.reply()["error"]["desc"].as_str().unwrap().contains("must be an object"));
    c.send("{\"execute\":5}\n");
    assert!(c.reply()["error"]["desc"].as_str().unwrap().contains("must be a string"));
    // Arguments to an argument-less command.
    let (class, desc) = c.err("query-status", json!({"x": 1}));
    assert_eq!(class, "GenericError");
    assert_eq!(desc, "Parameter 'x' is unexpected");
    // exec-oob is refused until oob is negotiated.
    c.send("{\"exec-oob\":\"migrate-pause\",\"id\":\"o\"}\n");
    assert!(c.reply()["error"]["desc"].as_str().unwrap().contains("exec-oob"));
    // Still usable.
    assert_eq!(c.ok("query-status", Value::Null)["status"], "inmigrate");
}

#[test]
fn oob_negotiation() {
    let s = server();
    let mut c = Client::connect(&s.sock);
    c.recv();
    assert_eq!(c.cmd("qmp_capabilities", json!({"enable": ["oob"]})), json!({"return": {}}));
    c.send("{\"exec-oob\":\"query-status\",\"id\":\"a\"}\n");
    let r = c.reply();
    assert_eq!(r["id"], "a");
    assert!(r["error"]["desc"].as_str().unwrap().contains("does not support OOB"), "{r}");
    c.send("{\"exec-oob\":\"migrate-pause\",\"id\":\"b\"}\n");
    let r = c.reply();
    assert_eq!(r["id"], "b");
    assert_eq!(r["error"]["class"], "GenericError");
    c.send("{\"exec-oob\":\"migrate-pause\",\"execute\":\"query-status\"}\n");
    assert!(c.reply().get("error").is_some());
}

#[test]
fn capabilities_and_parameters() {
    let s = server();
    let mut c = Client::ready(&s.sock);
    let caps = c.ok("query-migrate-capabilities", Value::Null);
    let caps = caps.as_array().unwrap();
    assert_eq!(caps.len(), rust_dest::state::KNOWN_CAPABILITIES.len());
    assert!(caps.iter().all(|c| c["state"] == false));

    c.ok(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "postcopy-ram", "state": true},
                                {"capability": "postcopy-blocktime", "state": true}]}),
    );
    let caps = c.ok("query-migrate-capabilities", Value::Null);
    let on: Vec<&str> = caps
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == true)
        .map(|c| c["capability"].as_str().unwrap())
        .collect();
    assert_eq!(on, vec!["postcopy-ram", "postcopy-blocktime"]);
    assert!(s.shared.capability("postcopy-ram"));

    let (class, desc) = c.err(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "warp-drive", "state": true}]}),
    );
    assert_eq!(class, "GenericError");
    assert!(desc.contains("does not accept value 'warp-drive'"), "{desc}");
    let (_, desc) = c.err("migrate-set-capabilities", json!({"capabilities": {}}));
    assert_eq!(desc, "Invalid parameter type for 'capabilities', expected: array");
    let (_, desc) = c.err("migrate-set-capabilities", json!({}));
    assert_eq!(desc, "Parameter 'capabilities' is missing");
    let (_, desc) =
        c.err("migrate-set-capabilities", json!({"capabilities": [{"capability": "events"}]}));
    assert!(desc.contains("'capabilities[0].state' is missing"), "{desc}");
    // A failed request changes nothing (validation before applying).
    let (_, desc) = c.err(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}, {"capability": "x", "state": true}]}),
    );
    assert!(desc.contains("'x'"), "{desc}");
    assert!(!s.shared.capability("events"));

    // Parameters.
    let p = c.ok("query-migrate-parameters", Value::Null);
    assert_eq!(p["multifd-channels"], json!(2));
    c.ok(
        "migrate-set-parameters",
        json!({"multifd-channels": 4, "max-postcopy-bandwidth": 1000, "tls-creds": null}),
    );
    let p = c.ok("query-migrate-parameters", Value::Null);
    assert_eq!(p["multifd-channels"], json!(4));
    assert_eq!(p["max-postcopy-bandwidth"], json!(1000));
    assert_eq!(p["tls-creds"], json!(""));
    let (class, desc) = c.err("migrate-set-parameters", json!({"warp-factor": 9}));
    assert_eq!(class, "GenericError");
    assert_eq!(desc, "Parameter 'warp-factor' is unexpected");
    // QEMU 10.0's texts: a uint64 member given a string, ranges after types.
    let (_, desc) = c.err("migrate-set-parameters", json!({"downtime-limit": "fast"}));
    assert_eq!(desc, "Parameter 'downtime-limit' expects uint64");
    let (_, desc) = c.err("migrate-set-parameters", json!({"downtime-limit": -1}));
    assert_eq!(
        desc,
        "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"
    );
    let (_, desc) = c.err("migrate-set-parameters", json!({"multifd-channels": 256}));
    assert_eq!(desc, "Parameter 'multifd-channels' expects uint8_t");
    let (_, desc) = c.err("migrate-set-parameters", json!({"tls-creds": 1}));
    assert_eq!(desc, "Invalid parameter type for 'tls-creds', expected: StrOrNull");
    // max-bandwidth=-1 is accepted by QEMU 10.0 and reads back as 2^64-1.
    c.ok("migrate-set-parameters", json!({"max-bandwidth": -1}));
    let p = c.ok("query-migrate-parameters", Value::Null);
    assert_eq!(p["max-bandwidth"], json!(u64::MAX));
    let (_, desc) = c.err("migrate-set-parameters", json!({"multifd-channels": 0}));
    assert_eq!(desc, "Parameter 'multifd_channels' expects a value between 1 and 255");
    let (_, desc) = c.err("migrate-set-parameters", json!({"multifd-compression": "lzma"}));
    assert!(desc.contains("does not accept value 'lzma'"), "{desc}");
    c.ok("migrate-set-parameters", json!({"multifd-compression": "zstd"}));
    assert_eq!(s.shared.lock().parameters["multifd-compression"], "zstd");

    // Refused while a migration is in progress.
    s.shared.set_status(MigStatus::Active);
    let (class, desc) = c.err(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    );
    assert_eq!(class, "GenericError");
    assert!(desc.contains("migration process in progress"), "{desc}");
}

#[test]
fn quit_replies_then_signals() {
    let s = server();
    let (tx, rx) = std::sync::mpsc::channel();
    s.shared.set_quit_sender(tx);
    let mut c = Client::ready(&s.sock);
    c.send("{\"execute\":\"quit\",\"id\":\"q\"}\n");
    assert_eq!(c.reply(), json!({"return": {}, "id": "q"}));
    rx.recv_timeout(Duration::from_secs(5)).expect("quit requested");
    let ev = c.event("SHUTDOWN");
    assert_eq!(ev["data"]["reason"], "host-qmp-quit");
}

#[test]
fn quit_then_eof_still_quits() {
    let s = server();
    let (tx, rx) = std::sync::mpsc::channel();
    s.shared.set_quit_sender(tx);
    let mut c = Client::connect(&s.sock);
    c.send("{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n");
    c.wr.shutdown(std::net::Shutdown::Write).unwrap();
    rx.recv_timeout(Duration::from_secs(5)).expect("quit requested");
}

#[test]
fn two_clients_independent() {
    let s = server();
    let mut a = Client::ready(&s.sock);
    let mut b = Client::connect(&s.sock);
    b.recv();
    // b is not negotiated yet: a's negotiation does not apply to it.
    assert_eq!(b.err("query-status", Value::Null).0, "CommandNotFound");
    assert_eq!(a.ok("query-status", Value::Null)["status"], "inmigrate");
    b.cmd("qmp_capabilities", Value::Null);
    // Both receive events (MIGRATION needs the `events` capability).
    a.ok(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    );
    s.shared.set_status(MigStatus::Setup);
    assert_eq!(a.event("MIGRATION")["data"]["status"], "setup");
    assert_eq!(b.event("MIGRATION")["data"]["status"], "setup");
    // State changes by one are seen by the other.
    a.ok("migrate-set-parameters", json!({"downtime-limit": 1234}));
    assert_eq!(b.ok("query-migrate-parameters", Value::Null)["downtime-limit"], 1234);
    // Closing one leaves the other working.
    drop(a);
    assert_eq!(b.ok("query-status", Value::Null)["status"], "inmigrate");
    let mut c = Client::ready(&s.sock);
    assert!(c.ok("query-version", Value::Null).is_object());
}

#[test]
fn events_delivered_in_order() {
    let s = server();
    let mut c = Client::ready(&s.sock);
    // Fewer than the event bus capacity: none may be dropped.
    for i in 0..1000u32 {
        s.shared.emit("X-TEST", json!({ "i": i }));
    }
    for i in 0..1000u64 {
        let ev = c.event("X-TEST");
        assert_eq!(ev["data"]["i"], i);
    }
    assert!(c.ok("query-status", Value::Null).is_object());
}

#[test]
fn stale_socket_replaced_and_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    // A stale socket from a dead process.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
    qmp::spawn(shared.clone(), &format!("unix:{},server,nowait", sock.display())).unwrap();
    let mut c = Client::ready(&sock);
    assert!(c.ok("query-status", Value::Null).is_object());

    // TCP: find a free port, then serve on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    qmp::spawn(shared, &format!("tcp:127.0.0.1:{port},server=on,wait=off")).unwrap();
    let t = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rd = BufReader::new(t.try_clone().unwrap());
    let mut l = String::new();
    rd.read_line(&mut l).unwrap();
    assert!(l.contains("\"QMP\""), "{l}");
    (&t).write_all(b"{\"execute\":\"qmp_capabilities\"}\r\n").unwrap();
    l.clear();
    rd.read_line(&mut l).unwrap();
    assert_eq!(l, "{\"return\":{}}\r\n");
}

#[test]
fn client_mode_connects_out() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("client.sock");
    let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let shared = Shared::new(Arc::new(RamTable::new(vec![], 1 << 30)), false);
    qmp::spawn(shared, &format!("unix:{}", sock.display())).unwrap();
    let (s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rd = BufReader::new(s);
    let mut line = String::new();
    rd.read_line(&mut line).unwrap();
    assert!(line.contains("\"QMP\""), "{line}");
}

#[test]
fn slow_digest_does_not_block_other_clients() {
    let s = server();
    let _b = s.shared.ram().add("big", 256 << 20).unwrap();
    let mut a = Client::ready(&s.sock);
    let mut b = Client::ready(&s.sock);
    a.send("{\"execute\":\"x-crossmig-ram-digests\",\"id\":\"d\"}\n");
    // b is answered while a's digest runs (or after; either way it works).
    assert_eq!(b.ok("query-status", Value::Null)["status"], "inmigrate");
    let r = a.reply();
    assert_eq!(r["id"], "d");
    assert_eq!(r["return"]["blocks"][0]["name"], "big");
}
