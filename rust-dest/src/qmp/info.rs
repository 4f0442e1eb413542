//! What a management stack asks a destination about the guest: `query-name`,
//! `query-uuid`, `query-cpus-fast` (the `-smp` vCPUs, simulated), and
//! `query-machines`, from the command line; and `human-monitor-command` with
//! the `info` commands a destination is asked (`status`, `migrate`,
//! `migrate_capabilities`, `migrate_parameters`), in the text layout of
//! QEMU 10.0's HMP (`migration/migration-hmp-cmds.c`, `monitor/hmp-cmds.c`).

use serde_json::{json, Value};

use super::args::{Args, QResult};
use crate::state::{Capability, MigStatus, RunState, Shared};

pub(super) fn name(shared: &Shared) -> Value {
    match &shared.lock().guest.name {
        Some(n) => json!({ "name": n }),
        None => json!({}),
    }
}

pub(super) fn uuid(shared: &Shared) -> Value {
    let u = shared.lock().guest.uuid.unwrap_or([0; 16]);
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    let s = format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
    json!({ "UUID": s })
}

/// One entry per `-smp` vCPU. rust-dest runs no vCPU threads of its own
/// before postcopy starts: `thread-id` is the process id.
pub(super) fn cpus_fast(shared: &Shared) -> Value {
    let g = shared.lock();
    let pid = std::process::id();
    let cpus: Vec<Value> = g
        .guest
        .vcpus
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut props =
                json!({ "core-id": c.core, "thread-id": c.thread, "socket-id": c.socket });
            if g.guest.dies > 1 {
                props["die-id"] = json!(c.die);
            }
            if g.guest.modules > 1 {
                props["module-id"] = json!(c.module);
            }
            json!({ "thread-id": pid, "props": props,
                    "qom-path": format!("/machine/unattached/device[{i}]"),
                    "cpu-index": i, "target": "x86_64" })
        })
        .collect();
    Value::Array(cpus)
}

/// The machine type rust-dest was started with (an alias resolves to the
/// 10.0 type, as in QEMU 10.0).
pub(super) fn machines(shared: &Shared, mut a: Args) -> QResult<Value> {
    a.opt_bool("compat-props")?;
    a.finish()?;
    let m = shared.lock().machine.clone().unwrap_or_else(|| "q35".into());
    let (name, alias) = match m.as_str() {
        "q35" => ("pc-q35-10.0".to_string(), Some("q35")),
        "pc" => ("pc-i440fx-10.0".to_string(), Some("pc")),
        _ => (m.clone(), None),
    };
    let mut e = json!({
        "name": name, "cpu-max": if name.contains("q35") { 4096 } else { 255 },
        "hotpluggable-cpus": true, "numa-mem-supported": false, "deprecated": false,
        "default-cpu-type": "qemu64-x86_64-cpu", "default-ram-id": "pc.ram", "acpi": true,
    });
    if let Some(al) = alias {
        e["alias"] = json!(al);
    }
    Ok(json!([e]))
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn info_status(shared: &Shared) -> String {
    let g = shared.lock();
    match g.run_state {
        RunState::Running => "VM status: running".into(),
        RunState::Paused => "VM status: paused".into(),
        rs => format!("VM status: paused ({})", rs.as_str()),
    }
}

fn info_migrate(shared: &Shared) -> String {
    let mut s = String::from(
        "globals:\nstore-global-state: on\nonly-migratable: off\nsend-configuration: on\n\
         send-section-footer: on\nsend-switchover-start: on\nclear-bitmap-shift: 18",
    );
    let q = super::migration::query_migrate(shared);
    let g = shared.lock();
    if g.status != MigStatus::None {
        s += &format!("\nMigration status: {}", g.status.as_str());
        if let Some(t) = q["total-time"].as_u64() {
            s += &format!("\ntotal time: {t} ms");
        }
        if let Some(e) = &g.error_desc {
            s += &format!("\nError: {e}");
        }
    }
    s
}

fn info_capabilities(shared: &Shared) -> String {
    let g = shared.lock();
    let lines: Vec<String> = Capability::ALL
        .iter()
        .map(|c| format!("{}: {}", c.name(), on_off(g.capabilities.get(*c))))
        .collect();
    lines.join("\n")
}

/// QEMU's order and units for `info migrate_parameters`.
const PARAM_LINES: &[(&str, &str)] = &[
    ("announce-initial", " ms"),
    ("announce-max", " ms"),
    ("announce-rounds", ""),
    ("announce-step", " ms"),
    ("throttle-trigger-threshold", ""),
    ("cpu-throttle-initial", ""),
    ("cpu-throttle-increment", ""),
    ("cpu-throttle-tailslow", ""),
    ("max-cpu-throttle", ""),
    ("tls-creds", ""),
    ("tls-hostname", ""),
    ("max-bandwidth", " bytes/second"),
    ("avail-switchover-bandwidth", " bytes/second"),
    ("downtime-limit", " ms"),
    ("x-checkpoint-delay", " ms"),
    ("multifd-channels", ""),
    ("multifd-compression", ""),
    ("zero-page-detection", ""),
    ("xbzrle-cache-size", " bytes"),
    ("max-postcopy-bandwidth", ""),
    ("tls-authz", ""),
    ("x-vcpu-dirty-limit-period", " ms"),
    ("vcpu-dirty-limit", " MB/s"),
    ("mode", ""),
    ("direct-io", ""),
];

fn info_parameters(shared: &Shared) -> String {
    let g = shared.lock();
    let mut lines = Vec::new();
    for (k, unit) in PARAM_LINES {
        let v = match g.parameters.get(*k) {
            Some(Value::Bool(b)) => on_off(*b).to_string(),
            Some(Value::String(s)) if k.starts_with("tls-") => format!("'{s}'"),
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => continue,
        };
        lines.push(format!("{k}: {v}{unit}"));
    }
    lines.join("\n")
}

/// `human-monitor-command`: the HMP commands a destination is asked.
pub(super) fn hmp(shared: &Shared, mut a: Args) -> QResult<Value> {
    let line = a.str("command-line")?;
    a.opt_u64("cpu-index")?;
    a.finish()?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let out = match words.as_slice() {
        [] => String::new(),
        ["info", "status"] => info_status(shared),
        ["info", "migrate"] => info_migrate(shared),
        ["info", "migrate_capabilities"] => info_capabilities(shared),
        ["info", "migrate_parameters"] => info_parameters(shared),
        ["info", "name"] => match &shared.lock().guest.name {
            Some(n) => n.clone(),
            None => return Ok(json!("")),
        },
        ["info", "uuid"] => uuid(shared)["UUID"].as_str().unwrap_or_default().to_string(),
        _ => format!("unknown command: '{}'", line.trim()),
    };
    if out.is_empty() {
        return Ok(json!(""));
    }
    // The monitor turns each "\n" into "\r\n".
    Ok(json!(format!("{}\r\n", out.replace('\n', "\r\n"))))
}
