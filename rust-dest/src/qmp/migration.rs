//! Migration commands: `query-migrate`, capabilities, parameters,
//! `migrate-incoming` (with QAPI `MigrationChannel` lists).

use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::args::{invalid_type, list_elem, Args, QResult, QmpErr};
use crate::ram::TARGET_PAGE_SIZE;
use crate::state::{
    compress_exists, machine_version, Capability, ComboError, ListenAddr, MigStatus, Shared,
    KNOWN_CAPABILITIES,
};

/// A listener as a QAPI `SocketAddress` (for `socket-address`).
fn socket_address(addr: &ListenAddr) -> Option<Value> {
    match addr {
        ListenAddr::Inet(a) => Some(
            json!({ "type": "inet", "host": a.ip().to_string(), "port": a.port().to_string() }),
        ),
        ListenAddr::Unix(p) => Some(json!({ "type": "unix", "path": p.display().to_string() })),
        ListenAddr::NoSocket => None,
    }
}

pub(super) fn percentiles(lat: &[u64]) -> Value {
    if lat.is_empty() {
        return json!({ "count": 0, "p50": 0, "p99": 0, "max": 0 });
    }
    let mut v = lat.to_vec();
    v.sort_unstable();
    // Nearest-rank percentile.
    let pick = |p: u64| -> u64 {
        let n = v.len() as u64;
        let rank = (p * n).div_ceil(100).max(1);
        v[(rank - 1) as usize]
    };
    json!({ "count": v.len(), "p50": pick(50), "p99": pick(99), "max": v[v.len() - 1] })
}

pub(super) fn query_migrate(shared: &Shared) -> Value {
    use crate::state::Counters as C;
    let c = shared.counters();
    // Taken before the state lock (never hold both).
    let ram_total = shared.ram().total();
    let g = shared.lock();
    let mut out = Map::new();
    // QEMU drops the listening addresses once the incoming side is done.
    if let Some(sa) = g.incoming.as_ref().and_then(socket_address) {
        if !g.status.is_terminal() {
            out.insert("socket-address".into(), json!([sa]));
        }
    }
    if g.status == MigStatus::None && g.started_at.is_none() {
        return Value::Object(out);
    }
    out.insert("status".into(), json!(g.status.as_str()));
    if let Some(e) = &g.error_desc {
        out.insert("error-desc".into(), json!(e));
    }
    let elapsed = g
        .started_at
        .map(|s| g.finished_at.unwrap_or_else(Instant::now).saturating_duration_since(s));
    if let Some(d) = elapsed {
        out.insert("total-time".into(), json!(d.as_millis() as u64));
    }
    let transferred = C::get(&c.transferred);
    let normal = C::get(&c.normal_pages);
    let secs = elapsed.map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let mbps = if secs > 0.0 { transferred as f64 * 8.0 / secs / 1e6 } else { 0.0 };
    out.insert(
        "ram".into(),
        json!({
            "transferred": transferred,
            "remaining": 0,
            "total": ram_total,
            "duplicate": C::get(&c.zero_pages),
            "normal": normal,
            "normal-bytes": normal * TARGET_PAGE_SIZE,
            "dirty-pages-rate": 0,
            "mbps": mbps,
            "dirty-sync-count": C::get(&c.ram_sections),
            "postcopy-requests": C::get(&c.page_requests),
            "page-size": TARGET_PAGE_SIZE,
            "multifd-bytes": C::get(&c.multifd_bytes),
            "pages-per-second": 0,
            "precopy-bytes": transferred,
            "downtime-bytes": 0,
            "postcopy-bytes": 0,
            "dirty-sync-missed-zero-copy": 0,
        }),
    );
    let faults = C::get(&c.faults);
    if faults > 0 && g.capabilities.get(Capability::PostcopyBlocktime) {
        // QEMU's definitions (`qapi/migration.json`): blocktime = time all
        // vCPUs waited at once (ms), latencies of remote faults (ns).
        for (k, v) in shared.fault_stats().qmp_members() {
            out.insert(k.into(), v);
        }
    }
    out.insert(
        "x-crossmig".into(),
        json!({
            "postcopy-state": g.postcopy_state.name(),
            "faults": faults,
            "page-requests": C::get(&c.page_requests),
            "pages-placed-stream": C::get(&c.pages_placed_stream),
            "pages-placed-requested": C::get(&c.pages_placed_requested),
            "zero-pages-on-fault": C::get(&c.zero_pages_on_fault),
            "preempt-pages": C::get(&c.preempt_pages),
            "discard-commands": C::get(&c.discard_commands),
            "discarded-pages": C::get(&c.discarded_pages),
            "pings": C::get(&c.pings),
            "fault-latency-us": percentiles(&g.fault_latencies_us),
            "vcpus-never-woken": C::get(&c.vcpus_never_woken),
            "fault-stages-us": shared.fault_stats().stages_json(),
            "multifd-channels": g.multifd_channels.values().map(|m| json!({
                "id": m.id,
                "bytes": m.bytes,
                "packets": m.packets,
                "normal-pages": m.normal_pages,
                "zero-pages": m.zero_pages,
                "syncs": m.syncs,
                "compressed-bytes": m.compressed_bytes,
            })).collect::<Vec<_>>(),
        }),
    );
    Value::Object(out)
}

/// `query-migrate-capabilities`: every known capability and its state.
/// With a machine type of QEMU 9.0 or older, `compress` too (second, as
/// 7.2 lists it).
pub(super) fn query_capabilities(shared: &Shared) -> Value {
    let g = shared.lock();
    let mut caps = Capability::ALL.to_vec();
    if compress_exists(g.machine.as_deref().and_then(machine_version)) {
        caps.insert(1, Capability::Compress);
    }
    Value::Array(
        caps.iter()
            .map(|c| json!({ "capability": c.name(), "state": g.capabilities.get(*c) }))
            .collect(),
    )
}

pub(super) fn set_capabilities(shared: &Shared, mut a: Args) -> QResult<Value> {
    let list = a.array("capabilities")?;
    let mut changes = Vec::with_capacity(list.len());
    // `compress` only exists for machine types of QEMU 9.0 and older.
    let mut known = KNOWN_CAPABILITIES.to_vec();
    if compress_exists(shared.lock().machine.as_deref().and_then(machine_version)) {
        known.push(Capability::Compress.name());
    }
    for (i, v) in list.into_iter().enumerate() {
        let mut e = list_elem(&a, "capabilities", i, v)?;
        let name = e.enum_str("capability", &known)?;
        let cap = Capability::parse(&name).expect("a known capability");
        let state = e.bool("state")?;
        e.finish()?;
        changes.push((cap, state));
    }
    a.finish()?;
    let mut g = shared.lock();
    if !matches!(g.status, MigStatus::None | MigStatus::Setup) {
        return Err(QmpErr::generic("There's a migration process in progress"));
    }
    let mut caps = g.capabilities;
    for (cap, state) in changes {
        caps.set(cap, state);
    }
    // With a versioned machine type, refuse what that QEMU version refuses;
    // an alias (`q35`) accepts every combination.
    let version = g.machine.as_deref().and_then(machine_version);
    if let Some(v) = version {
        ComboError::check_postcopy(&caps, v).map_err(|e| QmpErr::generic(e.to_string()))?;
    }
    let on = |c: Capability| caps.get(c);
    if on(Capability::PostcopyPreempt) && !on(Capability::PostcopyRam) {
        return Err(QmpErr::generic("Postcopy preempt requires postcopy-ram"));
    }
    if on(Capability::SwitchoverAck) && !on(Capability::ReturnPath) {
        return Err(QmpErr::generic(
            "Capability 'switchover-ack' requires capability 'return-path'",
        ));
    }
    if let Some(v) = version {
        ComboError::check_multifd(&caps, v).map_err(|e| QmpErr::generic(e.to_string()))?;
    }
    g.capabilities = caps;
    Ok(json!({}))
}

/// Serializes `migrate-incoming` across clients (QEMU runs commands under
/// its big lock; without this, two clients could both start a listener).
static INCOMING_LOCK: Mutex<()> = Mutex::new(());

/// A `MigrationChannel`'s `addr` (QAPI `MigrationAddress`) as a URI string.
fn channel_addr_uri(mut addr: Args) -> QResult<String> {
    let transport = addr.enum_str("transport", &["socket", "exec", "rdma", "file"])?;
    let host_port = |addr: &mut Args| -> QResult<String> {
        let host = addr.str("host")?;
        let port = addr.str("port")?;
        addr.ignore(&[
            "numeric",
            "to",
            "ipv4",
            "ipv6",
            "keep-alive",
            "keep-alive-count",
            "keep-alive-idle",
            "keep-alive-interval",
            "mptcp",
        ]);
        Ok(if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") })
    };
    let uri = match transport.as_str() {
        "socket" => match addr.enum_str("type", &["inet", "unix", "vsock", "fd"])?.as_str() {
            "inet" => format!("tcp:{}", host_port(&mut addr)?),
            "unix" => {
                let path = addr.str("path")?;
                if addr.opt_bool("abstract")?.unwrap_or(false) {
                    return Err(QmpErr::generic(
                        "abstract unix sockets are not supported for migration",
                    ));
                }
                addr.opt_bool("tight")?;
                format!("unix:{path}")
            }
            "vsock" => {
                let cid = addr.str("cid")?;
                let port = addr.str("port")?;
                format!("vsock:{cid}:{port}")
            }
            _ => format!("fd:{}", addr.str("str")?),
        },
        "exec" => {
            let args = addr.array("args")?;
            let mut words = Vec::with_capacity(args.len());
            for (i, w) in args.into_iter().enumerate() {
                match w {
                    Value::String(s) => words.push(s),
                    _ => {
                        return Err(invalid_type(&format!("{}[{i}]", addr.full("args")), "string"))
                    }
                }
            }
            // The URI form runs its command through `/bin/sh -c`; quoting
            // every word makes that shell run exactly this argv.
            let quoted: Vec<String> =
                words.iter().map(|w| format!("'{}'", w.replace('\'', "'\\''"))).collect();
            format!("exec:exec {}", quoted.join(" "))
        }
        "rdma" => format!("rdma:{}", host_port(&mut addr)?),
        _ => {
            let f = addr.str("filename")?;
            match addr.opt_u64("offset")? {
                Some(off) if off != 0 => format!("file:{f},offset={off}"),
                _ => format!("file:{f}"),
            }
        }
    };
    addr.finish()?;
    Ok(uri)
}

pub(super) fn migrate_incoming(shared: &Shared, mut a: Args) -> QResult<Value> {
    let uri = a.opt_str("uri")?;
    let channels = a.opt_array("channels")?;
    // Accepted; rust-dest always reports failures through query-migrate and
    // the process keeps running.
    a.opt_bool("exit-on-error")?;
    let uri = match (uri, channels) {
        (Some(_), Some(_)) => {
            return Err(QmpErr::generic(
                "'uri' and 'channels' arguments are mutually exclusive; exactly one of the two should be present",
            ))
        }
        (None, None) => {
            return Err(QmpErr::generic("Parameter 'uri' is missing (need either 'uri' or 'channels')"));
        }
        (Some(u), None) => u,
        (None, Some(chs)) => {
            let mut main = None;
            for (i, v) in chs.into_iter().enumerate() {
                let mut ch = list_elem(&a, "channels", i, v)?;
                let ty = ch.enum_str("channel-type", &["main", "cpr"])?;
                let uri = channel_addr_uri(ch.object("addr")?)?;
                ch.finish()?;
                if ty == "main" {
                    if main.is_some() {
                        return Err(QmpErr::generic("Channel list has more than one main entry"));
                    }
                    main = Some(uri);
                }
            }
            main.ok_or_else(|| QmpErr::generic("Channel list has no main entry"))?
        }
    };
    a.finish()?;
    let _serial = INCOMING_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if shared.lock().incoming_started {
        return Err(QmpErr::generic("The incoming migration has already been started"));
    }
    let addr = shared.start_incoming(&uri).map_err(QmpErr::generic)?;
    let mut g = shared.lock();
    g.incoming_started = true;
    g.incoming = Some(addr);
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentiles(&v), json!({"count":100,"p50":50,"p99":99,"max":100}));
        assert_eq!(percentiles(&[7]), json!({"count":1,"p50":7,"p99":7,"max":7}));
    }
}
