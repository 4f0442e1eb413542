//! Integration tests for the QMP server (`rust_dest::qmp`), driven through a
//! plain unix socket like any QMP client would.

use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rust_dest::qmp::{self, QmpAddr, QmpEndpoint};
use rust_dest::ram::RamTable;
use rust_dest::state::{DeviceSection, MigStatus, PcState, RunState, Shared};
use serde_json::{json, Value};
use wire::digest;

mod qmp_common;
use qmp_common::{server, Client};

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
    let (_, desc) = c.err("migrate-set-parameters", json!({"downtime-limit": "fast"}));
    assert!(desc.contains("Invalid parameter type for 'downtime-limit'"), "{desc}");
    let (_, desc) = c.err("migrate-set-parameters", json!({"multifd-channels": 0}));
    assert!(desc.contains("multifd-channels"), "{desc}");
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
fn status_events_and_run_state() {
    let s = server();
    // A client that never negotiates gets no events.
    let mut quiet = Client::connect(&s.sock);
    quiet.recv();
    let mut c = Client::ready(&s.sock);
    let st = c.ok("query-status", Value::Null);
    assert_eq!(st, json!({"status": "inmigrate", "running": false, "singlestep": false}));
    assert_eq!(c.ok("query-migrate", Value::Null), json!({}));

    s.shared.set_status(MigStatus::Setup);
    let ev = c.event("MIGRATION");
    assert_eq!(ev["data"], json!({"status": "setup"}));
    assert!(ev["timestamp"]["seconds"].as_u64().unwrap() > 1_600_000_000, "{ev}");
    assert!(ev["timestamp"]["microseconds"].as_u64().unwrap() < 1_000_000);

    // `cont` during incoming migration: autostart, no state change.
    {
        s.shared.lock().start_paused = true;
    }
    c.ok("cont", Value::Null);
    assert!(!s.shared.lock().start_paused);
    assert_eq!(c.ok("query-status", Value::Null)["status"], "inmigrate");

    s.shared.set_status(MigStatus::Active);
    assert_eq!(c.event("MIGRATION")["data"]["status"], "active");
    let m = c.ok("query-migrate", Value::Null);
    assert_eq!(m["status"], "active");
    assert_eq!(m["ram"]["page-size"], 4096);
    assert!(m["x-crossmig"]["fault-latency-us"].is_object());

    s.shared.set_status(MigStatus::Completed);
    s.shared.set_run_state(RunState::Paused);
    assert_eq!(c.event("MIGRATION")["data"]["status"], "completed");
    let m = c.ok("query-migrate", Value::Null);
    assert_eq!(m["status"], "completed");
    assert!(m["total-time"].is_u64());
    c.ok("cont", Value::Null);
    let ev = c.event("RESUME");
    assert!(ev.get("data").is_none(), "QEMU's RESUME has no data: {ev}");
    assert_eq!(
        c.ok("query-status", Value::Null),
        json!({"status": "running", "running": true, "singlestep": false})
    );
    c.ok("stop", Value::Null);
    c.event("STOP");
    assert_eq!(c.ok("query-status", Value::Null)["status"], "paused");

    // The un-negotiated client saw nothing.
    quiet.wr.set_nonblocking(true).unwrap();
    let mut l = String::new();
    assert!(quiet.rd.read_line(&mut l).is_err(), "got {l:?}");
}

#[test]
fn cont_after_failure_errors() {
    let s = server();
    let mut c = Client::ready(&s.sock);
    s.shared.fail("stream broke".into());
    let (class, desc) = c.err("cont", Value::Null);
    assert_eq!(class, "GenericError");
    assert!(desc.contains("migration failed"), "{desc}");
    let m = c.ok("query-migrate", Value::Null);
    assert_eq!(m["status"], "failed");
    assert_eq!(m["error-desc"], "stream broke");
}

#[test]
fn postcopy_stats() {
    use rust_dest::state::Counters;
    let s = server();
    let mut c = Client::ready(&s.sock);
    c.ok(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "postcopy-blocktime", "state": true}]}),
    );
    s.shared.set_status(MigStatus::PostcopyActive);
    let k = s.shared.counters();
    Counters::add(&k.faults, 4);
    Counters::add(&k.fault_latency_us_total, 10_000);
    Counters::add(&k.normal_pages, 3);
    Counters::add(&k.zero_pages, 5);
    {
        let mut g = s.shared.lock();
        g.fault_latencies_us = vec![1000, 2000, 3000, 4000];
        g.postcopy_state = PcState::Running;
    }
    let m = c.ok("query-migrate", Value::Null);
    assert_eq!(m["postcopy-blocktime"], 10);
    assert_eq!(m["postcopy-latency"], 2_500_000);
    assert_eq!(m["ram"]["normal"], 3);
    assert_eq!(m["ram"]["normal-bytes"], 3 * 4096);
    assert_eq!(m["ram"]["duplicate"], 5);
    let x = &m["x-crossmig"];
    assert_eq!(x["postcopy-state"], "running");
    assert_eq!(x["faults"], 4);
    assert_eq!(x["fault-latency-us"], json!({"count": 4, "p50": 2000, "p99": 4000, "max": 4000}));
}

#[test]
fn ram_digests_dump_and_blocks() {
    let s = server();
    let mut c = Client::ready(&s.sock);
    let b = s.shared.ram().add("pc.ram", 1 << 20, 4096).unwrap();
    let page: Vec<u8> = (0..4096).map(|i| (i % 251) as u8).collect();
    b.mapping.write(3 * 4096, &page);
    b.received.set(3);

    // Expected digests computed locally.
    let zero = vec![0u8; 4096];
    let per: Vec<u64> = (0..256)
        .map(|i| if i == 3 { digest::page_digest(&page) } else { digest::page_digest(&zero) })
        .collect();
    let bytes: Vec<u8> = per.iter().flat_map(|d| d.to_le_bytes()).collect();
    let whole = digest::to_hex(&[digest::page_digest(&bytes)]);

    let r = c.ok("x-crossmig-ram-digests", Value::Null);
    assert_eq!(r["algorithm"], digest::ALGORITHM);
    assert_eq!(r["page-size"], 4096);
    let blk = &r["blocks"][0];
    assert_eq!(blk["name"], "pc.ram");
    assert_eq!(blk["used-length"], 1 << 20);
    assert_eq!(blk["digest"], whole);
    assert!(blk.get("page-digests").is_none());

    let r = c.ok("x-crossmig-ram-digests", json!({"block": "pc.ram", "pages": true}));
    let pd = r["blocks"][0]["page-digests"].as_str().unwrap();
    assert_eq!(digest::from_hex(pd).unwrap(), per);

    let (class, desc) = c.err("x-crossmig-ram-digests", json!({"block": "nope"}));
    assert_eq!(class, "GenericError");
    assert!(desc.contains("nope"), "{desc}");

    let rb = c.ok("x-crossmig-query-ramblocks", Value::Null);
    assert_eq!(
        rb,
        json!([{"name": "pc.ram", "used-length": 1 << 20, "page-size": 4096, "backing": null, "received-pages": 1}])
    );

    let out = s._dir.path().join("dump.bin");
    let r =
        c.ok("x-crossmig-dump-ramblock", json!({"block": "pc.ram", "file": out.to_str().unwrap()}));
    assert_eq!(r, json!({"bytes": 1 << 20}));
    let data = std::fs::read(&out).unwrap();
    assert_eq!(data.len(), 1 << 20);
    assert_eq!(&data[3 * 4096..4 * 4096], &page[..]);
    assert!(data[..3 * 4096].iter().all(|&x| x == 0));
    assert!(c
        .err("x-crossmig-dump-ramblock", json!({"block": "pc.ram"}))
        .1
        .contains("'file' is missing"));
}

#[test]
fn devices() {
    let s = server();
    let mut c = Client::ready(&s.sock);
    {
        let mut g = s.shared.lock();
        g.stream_machine = Some("pc-q35-10.0".into());
        g.globalstate = Some("running".into());
        g.devices.push(DeviceSection {
            section_id: 2,
            idstr: "timer".into(),
            instance_id: 0,
            version_id: 2,
            data: vec![0xde, 0xad, 0x01],
            stream_offset: 1234,
            in_package: false,
            vmdesc: Some(json!({"name": "timer"})),
        });
    }
    let d = c.ok("x-crossmig-query-devices", Value::Null);
    assert_eq!(d["machine"], "pc-q35-10.0");
    assert_eq!(d["globalstate"], "running");
    assert_eq!(
        d["sections"],
        json!([{"section-id": 2, "idstr": "timer", "instance-id": 0, "version-id": 2, "size": 3,
                "stream-offset": 1234, "in-package": false, "vmdesc": {"name": "timer"}}])
    );
    assert_eq!(
        c.ok("x-crossmig-device-data", json!({"idstr": "timer", "instance-id": 0})),
        json!({"data": "dead01"})
    );
    assert_eq!(
        c.err("x-crossmig-device-data", json!({"idstr": "timer", "instance-id": 1})).0,
        "GenericError"
    );
}

#[test]
fn migrate_incoming() {
    let s = server();
    let uris = Arc::new(Mutex::new(Vec::<String>::new()));
    let u2 = uris.clone();
    s.shared.set_incoming_starter(Box::new(move |uri| {
        if uri.contains("bad") {
            return Err(format!("Failed to bind {uri}"));
        }
        u2.lock().unwrap().push(uri.to_string());
        Ok(())
    }));
    let mut c = Client::ready(&s.sock);
    assert_eq!(c.err("migrate-incoming", json!({})).0, "GenericError");
    let (_, desc) = c.err("migrate-incoming", json!({"uri": 5}));
    assert_eq!(desc, "Invalid parameter type for 'uri', expected: string");
    let (_, desc) = c.err("migrate-incoming", json!({"uri": "tcp:bad:1"}));
    assert_eq!(desc, "Failed to bind tcp:bad:1");
    assert!(!s.shared.lock().incoming_started);

    c.ok("migrate-incoming", json!({"uri": "tcp:127.0.0.1:4444"}));
    assert_eq!(*uris.lock().unwrap(), vec!["tcp:127.0.0.1:4444".to_string()]);
    assert!(s.shared.lock().incoming_started);
    let (class, desc) = c.err("migrate-incoming", json!({"uri": "tcp:127.0.0.1:4445"}));
    assert_eq!(class, "GenericError");
    assert!(desc.contains("already been started"), "{desc}");
    assert_eq!(uris.lock().unwrap().len(), 1);
    let m = c.ok("query-migrate", Value::Null);
    assert_eq!(m["socket-address"], json!([{"type": "inet", "host": "127.0.0.1", "port": "4444"}]));
}

#[test]
fn migrate_incoming_channels() {
    let s = server();
    let uris = Arc::new(Mutex::new(Vec::<String>::new()));
    let u2 = uris.clone();
    s.shared.set_incoming_starter(Box::new(move |uri| {
        u2.lock().unwrap().push(uri.to_string());
        Ok(())
    }));
    let mut c = Client::ready(&s.sock);
    let (_, desc) = c.err(
        "migrate-incoming",
        json!({"channels": [{"channel-type": "main", "addr": {"transport": "socket", "type": "carrier-pigeon"}}]}),
    );
    assert!(desc.contains("channels[0].addr.type"), "{desc}");
    let (_, desc) = c.err("migrate-incoming", json!({"uri": "tcp:a:1", "channels": []}));
    assert!(desc.contains("mutually exclusive"), "{desc}");
    c.ok(
        "migrate-incoming",
        json!({"channels": [{"channel-type": "main",
               "addr": {"transport": "socket", "type": "unix", "path": "/tmp/mig.sock"}}]}),
    );
    assert_eq!(*uris.lock().unwrap(), vec!["unix:/tmp/mig.sock".to_string()]);

    let s = server();
    let u3 = uris.clone();
    s.shared.set_incoming_starter(Box::new(move |uri| {
        u3.lock().unwrap().push(uri.to_string());
        Ok(())
    }));
    let mut c = Client::ready(&s.sock);
    c.ok(
        "migrate-incoming",
        json!({"channels": [{"channel-type": "main",
               "addr": {"transport": "socket", "type": "inet", "host": "::1", "port": "4000"}}]}),
    );
    assert_eq!(uris.lock().unwrap()[1], "tcp:[::1]:4000");
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
    // Both receive events.
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
    let _b = s.shared.ram().add("big", 256 << 20, 4096).unwrap();
    let mut a = Client::ready(&s.sock);
    let mut b = Client::ready(&s.sock);
    a.send("{\"execute\":\"x-crossmig-ram-digests\",\"id\":\"d\"}\n");
    // b is answered while a's digest runs (or after; either way it works).
    assert_eq!(b.ok("query-status", Value::Null)["status"], "inmigrate");
    let r = a.reply();
    assert_eq!(r["id"], "d");
    assert_eq!(r["return"]["blocks"][0]["name"], "big");
}
