//! The migration-facing QMP surface: status, events and run state,
//! postcopy stats, RAM digests, devices, `migrate-incoming`.

use std::io::BufRead;
use std::sync::{Arc, Mutex};

use rust_dest::state::{DeviceSection, ListenAddr, MigStatus, PcState, RunState};
use serde_json::{json, Value};
use wire::digest;

use crate::client::{server, Client};

#[test]
fn status_events_and_run_state() {
    let s = server();
    // A client that never negotiates gets no events.
    let mut quiet = Client::connect(&s.sock);
    quiet.recv();
    let mut c = Client::ready(&s.sock);
    let st = c.ok("query-status", Value::Null);
    assert_eq!(st, json!({"status": "inmigrate", "running": false}));
    assert_eq!(c.ok("query-migrate", Value::Null), json!({}));

    // Without the `events` capability, no MIGRATION event (as QEMU 10.0's
    // destination): the next event seen is the one after it is set.
    s.shared.set_status(MigStatus::Setup);
    c.ok(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    );
    s.shared.set_status(MigStatus::Active);
    assert_eq!(c.event("MIGRATION")["data"]["status"], "active");
    s.shared.lock().status = MigStatus::None;
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
    assert_eq!(c.ok("query-status", Value::Null), json!({"status": "running", "running": true}));
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
    // One simulated vCPU waits 10 ms for a page it requested (QEMU's
    // definitions: blocktime = all vCPUs blocked, latency of remote faults).
    let (st, t) = (s.shared.fault_stats(), std::time::Instant::now());
    let ms = |n: u64| t + std::time::Duration::from_millis(n);
    st.start(1);
    st.vcpu_blocked(t);
    st.read((0, 7), t);
    st.requested((0, 7), ms(1), 0);
    st.placed((0, 7), ms(2), ms(2));
    st.vcpu_woken(0, (0, 7), t, ms(10), 0);
    let m = c.ok("query-migrate", Value::Null);
    assert_eq!(m["postcopy-blocktime"], 10);
    assert_eq!(m["postcopy-vcpu-blocktime"], json!([10]));
    assert_eq!(m["postcopy-latency"], 10_000_000);
    assert_eq!(m["x-crossmig"]["fault-stages-us"]["count"], 1);
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
    let b = s.shared.ram().add("pc.ram", 1 << 20).unwrap();
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
        Ok(ListenAddr::Inet("127.0.0.1:4444".parse().unwrap()))
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
        Ok(ListenAddr::Unix("/tmp/mig.sock".into()))
    }));
    let mut c = Client::ready(&s.sock);
    let (_, desc) = c.err(
        "migrate-incoming",
        json!({"channels": [{"channel-type": "main", "addr": {"transport": "socket", "type": "carrier-pigeon"}}]}),
    );
    // QEMU 10.0's enum visitor names the member alone (observed).
    assert_eq!(desc, "Parameter 'type' does not accept value 'carrier-pigeon'");
    let (_, desc) = c.err(
        "migrate-incoming",
        json!({"channels": [{"channel-type": "main", "addr": {"transport": "socket", "type": "inet", "host": "x"}}]}),
    );
    assert_eq!(desc, "Parameter 'channels[0].addr.port' is missing");
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
        Ok(ListenAddr::Inet("[::1]:4000".parse().unwrap()))
    }));
    let mut c = Client::ready(&s.sock);
    c.ok(
        "migrate-incoming",
        json!({"channels": [{"channel-type": "main",
               "addr": {"transport": "socket", "type": "inet", "host": "::1", "port": "4000"}}]}),
    );
    assert_eq!(uris.lock().unwrap()[1], "tcp:[::1]:4000");
}

/// Capability combinations follow the QEMU version of a versioned machine
/// type (texts and class as the 7.2, 10.0 and 11.1 binaries give them); an
/// alias such as `q35` accepts them all.
#[test]
fn capability_combinations_follow_the_machine_version() {
    let caps = |names: &[&str]| {
        let l: Vec<Value> = names.iter().map(|n| json!({"capability": n, "state": true})).collect();
        json!({ "capabilities": l })
    };
    let pm = caps(&["postcopy-ram", "multifd"]);
    let xm = caps(&["xbzrle", "multifd"]);
    let all = caps(&["xbzrle", "postcopy-ram", "multifd"]);
    let pc_err = ("GenericError".to_string(), "Postcopy is not yet compatible with multifd".into());
    let xb_err = ("GenericError".to_string(), "Multifd is not compatible with xbzrle".into());
    for (machine, pm_ok, xm_ok) in [
        (Some("pc-q35-10.0"), false, false),
        (Some("pc-i440fx-10.0"), false, false),
        (Some("pc-q35-11.1"), true, false),
        (Some("pc-q35-7.2"), true, true),
        (Some("q35"), true, true),
        (None, true, true),
    ] {
        let s = server();
        s.shared.lock().machine = machine.map(String::from);
        let mut c = Client::ready(&s.sock);
        if pm_ok {
            c.ok("migrate-set-capabilities", pm.clone());
        } else {
            assert_eq!(c.err("migrate-set-capabilities", pm.clone()), pc_err, "{machine:?}");
            // Refused: nothing changed.
            let q = c.ok("query-migrate-capabilities", Value::Null);
            assert!(q.as_array().unwrap().iter().all(|c| c["state"] == false), "{machine:?}");
        }
        if xm_ok {
            c.ok("migrate-set-capabilities", xm.clone());
        } else {
            assert_eq!(c.err("migrate-set-capabilities", xm.clone()), xb_err, "{machine:?}");
        }
        // QEMU checks the postcopy pair first.
        if !pm_ok {
            assert_eq!(c.err("migrate-set-capabilities", all.clone()), pc_err, "{machine:?}");
        }
        // One at a time: the check applies to the resulting set.
        if !xm_ok {
            let s = server();
            s.shared.lock().machine = machine.map(String::from);
            let mut c = Client::ready(&s.sock);
            c.ok("migrate-set-capabilities", caps(&["multifd"]));
            assert_eq!(c.err("migrate-set-capabilities", caps(&["xbzrle"])), xb_err);
            if !pm_ok {
                assert_eq!(c.err("migrate-set-capabilities", caps(&["postcopy-ram"])), pc_err);
            }
        }
    }
}

/// The legacy `compress` capability and its parameters exist for machine
/// types of QEMU 9.0 and older (7.2 accepts them, 10.0 and 11.1 answer
/// with these errors; checked on the binaries).
#[test]
fn legacy_compress_follows_the_machine_type() {
    let compress = json!({"capabilities": [{"capability": "compress", "state": true}]});
    for (machine, exists) in [
        (None, false),
        (Some("pc-q35-10.0"), false),
        (Some("pc-q35-11.1"), false),
        (Some("pc-q35-7.2"), true),
    ] {
        let s = server();
        s.shared.lock().machine = machine.map(String::from);
        let mut c = Client::ready(&s.sock);
        let listed = c
            .ok("query-migrate-capabilities", Value::Null)
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["capability"] == "compress");
        assert_eq!(listed, exists, "{machine:?}");
        if exists {
            c.ok("migrate-set-capabilities", compress.clone());
            c.ok("migrate-set-parameters", json!({"decompress-threads": 2, "compress-level": 1}));
            let (_, desc) = c.err(
                "migrate-set-capabilities",
                json!({"capabilities": [{"capability": "multifd", "state": true}]}),
            );
            assert_eq!(desc, "Multifd is not compatible with compress");
        } else {
            // QEMU names the member 'capability'; rust-dest's path prefix
            // ('capabilities[0].') is its general QMP wording.
            let (class, desc) = c.err("migrate-set-capabilities", compress.clone());
            assert_eq!(class, "GenericError");
            assert!(desc.ends_with("capability' does not accept value 'compress'"), "{desc}");
            let (_, desc) = c.err("migrate-set-parameters", json!({"decompress-threads": 2}));
            assert_eq!(desc, "Parameter 'decompress-threads' is unexpected");
        }
    }
}
