//! `query-qmp-schema` against what the server really does: the commands it
//! lists are exactly the ones it dispatches (and `query-commands` lists),
//! every type it names exists, example arguments for every command validate
//! against the published argument type and are accepted by the server, a
//! member outside the schema is refused, and query replies validate against
//! the published return types. The validator here reads only the
//! SchemaInfo JSON (QEMU's `qapi/introspect.json` semantics).

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Value};

use crate::client::{server, Client};

struct Schema(HashMap<String, Value>);

impl Schema {
    fn get(&self, name: &str) -> &Value {
        self.0.get(name).unwrap_or_else(|| panic!("type {name} is not in the schema"))
    }

    /// Does `v` match type `ty`? `Err` says where not.
    fn check(&self, v: &Value, ty: &str, path: &str) -> Result<(), String> {
        let t = self.get(ty);
        let bad = || Err(format!("{path}: {v} is not a {ty} ({t})"));
        match t["meta-type"].as_str().unwrap() {
            "builtin" => {
                let ok = match t["json-type"].as_str().unwrap() {
                    "string" => v.is_string(),
                    "int" => v.is_i64() || v.is_u64(),
                    "number" => v.is_number(),
                    "boolean" => v.is_boolean(),
                    "null" => v.is_null(),
                    "value" => true,
                    j => panic!("unknown json-type {j}"),
                };
                if ok {
                    Ok(())
                } else {
                    bad()
                }
            }
            "enum" => match v.as_str() {
                Some(s) if t["values"].as_array().unwrap().contains(&json!(s)) => Ok(()),
                _ => bad(),
            },
            "array" => match v.as_array() {
                Some(a) => a.iter().enumerate().try_for_each(|(i, x)| {
                    self.check(x, t["element-type"].as_str().unwrap(), &format!("{path}[{i}]"))
                }),
                None => bad(),
            },
            "alternate" => {
                let ms = t["members"].as_array().unwrap();
                if ms.iter().any(|m| self.check(v, m["type"].as_str().unwrap(), path).is_ok()) {
                    Ok(())
                } else {
                    bad()
                }
            }
            "object" => {
                let Some(o) = v.as_object() else { return bad() };
                let ms = t["members"].as_array().unwrap();
                for m in ms {
                    let n = m["name"].as_str().unwrap();
                    match o.get(n) {
                        None if m.get("default").is_some() => {}
                        None => return Err(format!("{path}.{n} is required by {ty}")),
                        Some(x) => {
                            self.check(x, m["type"].as_str().unwrap(), &format!("{path}.{n}"))?
                        }
                    }
                }
                match o.keys().find(|k| !ms.iter().any(|m| m["name"] == **k)) {
                    Some(k) => Err(format!("{path}.{k} is not a member of {ty}")),
                    None => Ok(()),
                }
            }
            m => panic!("meta-type {m} unexpected"),
        }
    }
}

/// Valid arguments for every command rust-dest dispatches. Commands that
/// change state run last, in an order where each is legal.
fn examples() -> Vec<(&'static str, Value)> {
    vec![
        ("qmp_capabilities", json!({})),
        ("query-version", json!({})),
        ("query-commands", json!({})),
        ("query-qmp-schema", json!({})),
        ("query-status", json!({})),
        ("query-name", json!({})),
        ("query-uuid", json!({})),
        ("query-kvm", json!({})),
        ("query-cpus-fast", json!({})),
        ("query-machines", json!({"compat-props": false})),
        ("query-target", json!({})),
        ("human-monitor-command", json!({"command-line": "info status", "cpu-index": 0})),
        ("query-migrate", json!({})),
        ("query-migrate-capabilities", json!({})),
        ("query-migrate-parameters", json!({})),
        ("x-crossmig-query-ramblocks", json!({})),
        ("x-crossmig-query-devices", json!({})),
        ("x-crossmig-ram-digests", json!({"pages": false})),
        ("x-crossmig-dump-ramblock", json!({"block": "nope", "file": "/nonexistent/x"})),
        ("x-crossmig-device-data", json!({"idstr": "nope", "instance-id": 0})),
        (
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "events", "state": true}]}),
        ),
        (
            "migrate-set-parameters",
            json!({"max-bandwidth": -1, "tls-creds": null, "multifd-compression": "zstd",
                   "downtime-limit": 300, "multifd-channels": 4, "direct-io": false}),
        ),
        ("getfd", json!({"fdname": "nope"})),
        ("closefd", json!({"fdname": "nope"})),
        ("add-fd", json!({"fdset-id": 3, "opaque": "x"})),
        ("remove-fd", json!({"fdset-id": 3, "fd": 5})),
        ("query-fdsets", json!({})),
        ("migrate-pause", json!({})),
        ("migrate-recover", json!({"uri": "tcp:127.0.0.1:1"})),
        ("stop", json!({})),
        ("cont", json!({})),
        ("migrate-incoming", json!({"uri": "tcp:127.0.0.1:0", "exit-on-error": false})),
        ("quit", json!({})),
    ]
}

/// Error texts that mean the arguments themselves were refused.
fn argument_error(desc: &str) -> bool {
    ["is unexpected", "is missing", "Invalid parameter type", "does not accept value", "expects"]
        .iter()
        .any(|p| desc.contains(p))
}

#[test]
fn schema_matches_dispatch() {
    let s = server();
    let mut c = Client::ready(&s.sock);
    let list = c.ok("query-qmp-schema", Value::Null);
    let schema = Schema(
        list.as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
            .collect(),
    );
    // Every referenced type is defined.
    for e in schema.0.values() {
        for k in ["arg-type", "ret-type", "element-type"] {
            if let Some(n) = e.get(k) {
                schema.get(n.as_str().unwrap());
            }
        }
        for m in e["members"].as_array().into_iter().flatten() {
            if let Some(n) = m.get("type") {
                schema.get(n.as_str().unwrap());
            }
        }
    }
    let in_schema: BTreeSet<String> = schema
        .0
        .values()
        .filter(|e| e["meta-type"] == "command")
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    let listed: BTreeSet<String> = c
        .ok("query-commands", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(in_schema, listed, "query-qmp-schema and query-commands disagree");
    let dispatched: BTreeSet<String> =
        rust_dest::qmp::COMMANDS.iter().map(|c| c.name.to_string()).collect();
    assert_eq!(in_schema, dispatched);
    let covered: BTreeSet<String> = examples().iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(covered, dispatched, "every command needs an example here");
    let events: BTreeSet<&str> = schema
        .0
        .values()
        .filter(|e| e["meta-type"] == "event")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(events, BTreeSet::from(["MIGRATION", "STOP", "RESUME", "SHUTDOWN"]));
    // Only oob-capable commands say so.
    for e in schema.0.values().filter(|e| e.get("allow-oob").is_some()) {
        assert!(["migrate-pause", "migrate-recover"].contains(&e["name"].as_str().unwrap()));
    }

    for (name, args) in examples() {
        let cmd = schema.get(name);
        let arg_type = cmd["arg-type"].as_str().unwrap();
        schema.check(&args, arg_type, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name == "qmp_capabilities" {
            continue;
        }
        // A member outside the schema is refused by the server.
        let mut extra = args.clone();
        extra["x-not-in-schema"] = json!(1);
        assert!(schema.check(&extra, arg_type, name).is_err());
        let (_, desc) = c.err(name, extra);
        assert_eq!(desc, "Parameter 'x-not-in-schema' is unexpected", "{name}");
        // The example itself passes the server's argument checks, and a
        // successful reply matches the published return type.
        let r = c.cmd(name, args);
        if let Some(e) = r.get("error") {
            let desc = e["desc"].as_str().unwrap();
            assert!(!argument_error(desc), "{name}: arguments refused: {desc}");
        } else {
            let ret = cmd["ret-type"].as_str().unwrap();
            schema.check(&r["return"], ret, name).unwrap_or_else(|e| panic!("{name} reply: {e}"));
        }
    }
}
