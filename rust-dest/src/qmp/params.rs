//! `migrate-set-parameters`: arguments already checked against
//! `MigrateSetParameters` (types, `uint8`/`uint32` bounds, negatives wrapped
//! for `uint64`), then QEMU 10.0's range checks with its texts
//! (`migration/options.c`, `migrate_params_check()`; observed on the binary:
//! `max-bandwidth=-1` is accepted and reads back as 2^64-1).

use serde_json::{json, Map, Value};

use super::args::{Args, QResult, QmpErr};
use super::schema::as_wrapped_u64;
use crate::state::{compress_exists, machine_version, Shared};

/// The parameters of QEMU's legacy `compress` capability (9.0 and older).
const COMPRESS_PARAMS: [&str; 4] =
    ["compress-level", "compress-threads", "decompress-threads", "compress-wait-thread"];

/// The check QEMU applies to one integer parameter.
enum Range {
    /// `lo..=hi`, and the text when outside.
    In(u64, u64, &'static str),
    /// A power of two no less than the target page size.
    PowerOfTwoPage(&'static str),
}

fn range(name: &str) -> Option<Range> {
    use Range::In;
    Some(match name {
        "announce-initial" => {
            In(0, 100_000, "'announce_initial' expects a value between 0 and 100000")
        }
        "announce-max" => In(0, 100_000, "'announce_max' expects a value between 0 and 100000"),
        "announce-rounds" => In(0, 1000, "'announce_rounds' expects a value between 0 and 1000"),
        "announce-step" => In(1, 10_000, "'announce_step' expects a value between 0 and 10000"),
        "throttle-trigger-threshold" => {
            In(1, 100, "'throttle_trigger_threshold' expects an integer in the range of 1 to 100")
        }
        "cpu-throttle-initial" => {
            In(1, 99, "'cpu_throttle_initial' expects an integer in the range of 1 to 99")
        }
        "cpu-throttle-increment" => {
            In(1, 99, "'cpu_throttle_increment' expects an integer in the range of 1 to 99")
        }
        "downtime-limit" => In(
            0,
            2_000_000,
            "'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms",
        ),
        "multifd-channels" => In(1, 255, "'multifd_channels' expects a value between 1 and 255"),
        "multifd-zlib-level" => In(0, 9, "'multifd_zlib_level' expects a value between 0 and 9"),
        "multifd-qatzip-level" => {
            In(1, 9, "'multifd_qatzip_level' expects a value between 1 and 9")
        }
        "multifd-zstd-level" => In(0, 20, "'multifd_zstd_level' expects a value between 0 and 20"),
        "x-vcpu-dirty-limit-period" => {
            In(1, 1000, "'x-vcpu-dirty-limit-period' expects a value between 1 and 1000")
        }
        "vcpu-dirty-limit" => In(1, u64::MAX, "'vcpu_dirty_limit' must be greater than 1 MB/s"),
        // 7.2's `migrate_params_check()`.
        "compress-level" => In(0, 9, "'compress_level' expects a value between 0 and 9"),
        "compress-threads" => In(1, 255, "'compress_threads' expects a value between 1 and 255"),
        "decompress-threads" => {
            In(1, 255, "'decompress_threads' expects a value between 1 and 255")
        }
        "xbzrle-cache-size" => Range::PowerOfTwoPage(
            "'xbzrle_cache_size' expects a power of two no less than the target page size",
        ),
        _ => return None,
    })
}

pub(super) fn set_parameters(shared: &Shared, a: Args) -> QResult<Value> {
    let mut g = shared.lock();
    let legacy_compress = compress_exists(g.machine.as_deref().and_then(machine_version));
    let mut updates = Map::new();
    for (k, v) in a.map {
        if !legacy_compress && COMPRESS_PARAMS.contains(&k.as_str()) {
            return Err(QmpErr::generic(format!("Parameter '{k}' is unexpected")));
        }
        let v = match (&v, g.parameters.get(&k)) {
            // StrOrNull: null means "".
            (Value::Null, _) => json!(""),
            (Value::Number(_), _) => json!(as_wrapped_u64(&v).unwrap_or_default()),
            _ => v,
        };
        updates.insert(k, v);
    }
    let merged = |k: &str, u: &Map<String, Value>| u.get(k).or(g.parameters.get(k)).cloned();
    for (k, v) in &updates {
        let Some(x) = v.as_u64() else { continue };
        let bad = match range(k) {
            Some(Range::In(lo, hi, text)) => (x < lo || x > hi).then_some(text),
            Some(Range::PowerOfTwoPage(text)) => {
                (!x.is_power_of_two() || x < crate::ram::TARGET_PAGE_SIZE).then_some(text)
            }
            None if k == "max-cpu-throttle" => {
                let initial =
                    merged("cpu-throttle-initial", &updates).and_then(|v| v.as_u64()).unwrap_or(20);
                (x < initial || x > 99).then_some(
                    "'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99",
                )
            }
            None => None,
        };
        if let Some(text) = bad {
            return Err(QmpErr::generic(format!("Parameter {text}")));
        }
    }
    for (k, v) in updates {
        g.parameters.insert(k, v);
    }
    Ok(json!({}))
}
