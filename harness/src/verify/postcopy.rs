//! Checks of rust-dest's postcopy demand paging, from the final
//! `query-migrate` of both sides (added for issue 13's seeded defects):
//!
//! - every page request rust-dest says it sent reached the source: the
//!   source's `ram.postcopy-requests` counts each REQ_PAGES(_ID) message it
//!   read (`migration/ram.c: ram_save_queue_pages()`), rust-dest's
//!   `x-crossmig.page-requests` each one it wrote. Without a recovery they
//!   are equal; a recovery may lose requests written into a dying
//!   connection (rust-dest requests them again after the resume), so then
//!   the source may count fewer, never more.
//! - no simulated vCPU was left blocked on a page that had been placed
//!   (`x-crossmig.vcpus-never-woken`): the guest-visible effect of a
//!   placement that forgets to wake the faulting thread, which no memory
//!   comparison can see.

use serde_json::Value;

use super::Check;

fn at(v: &Value, path: &[&str]) -> Option<u64> {
    path.iter().fold(v, |x, p| &x[*p]).as_u64()
}

/// The demand-paging checks of one postcopy migration into rust-dest, given
/// the final `query-migrate` answers and how many recoveries happened.
pub fn rust_dest_checks(source: &Value, dest: &Value, recoveries: u32) -> Vec<Check> {
    let mut out = Vec::new();
    let src = at(source, &["ram", "postcopy-requests"]);
    let dst = at(dest, &["x-crossmig", "page-requests"]);
    out.push(match (src, dst) {
        (Some(s), Some(d)) => {
            let ok = if recoveries == 0 { s == d } else { s <= d };
            let rule = if recoveries == 0 { "equal" } else { "source <= destination after a recovery" };
            Check::new(
                "page requests reached the source",
                ok,
                format!("source read {s}, rust-dest sent {d} ({rule})"),
            )
        }
        _ => Check::new(
            "page requests reached the source",
            false,
            format!("counter missing: source ram.postcopy-requests {src:?}, rust-dest x-crossmig.page-requests {dst:?}"),
        ),
    });
    let stuck = at(dest, &["x-crossmig", "vcpus-never-woken"]);
    out.push(Check::new(
        "faulting vCPUs were woken",
        stuck == Some(0),
        match stuck {
            Some(0) => "no simulated vCPU blocked on a placed page at the end".to_string(),
            Some(n) => format!(
                "{n} simulated vCPU(s) still blocked on a page that had been placed (never woken)"
            ),
            None => "x-crossmig.vcpus-never-woken missing".to_string(),
        },
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(src: u64, dst: u64, stuck: u64) -> (Value, Value) {
        (
            json!({"ram": {"postcopy-requests": src}}),
            json!({"x-crossmig": {"page-requests": dst, "vcpus-never-woken": stuck}}),
        )
    }

    #[test]
    fn requests_must_match_without_recovery() {
        let (s, d) = q(10, 10, 0);
        assert!(rust_dest_checks(&s, &d, 0).iter().all(|c| c.ok));
        let (s, d) = q(9, 10, 0);
        let c = rust_dest_checks(&s, &d, 0);
        assert!(!c[0].ok, "{}", c[0]);
        assert!(rust_dest_checks(&s, &d, 1)[0].ok);
        let (s, d) = q(11, 10, 0);
        assert!(!rust_dest_checks(&s, &d, 1)[0].ok);
    }

    #[test]
    fn a_blocked_vcpu_fails() {
        let (s, d) = q(1, 1, 1);
        let c = rust_dest_checks(&s, &d, 0);
        assert!(!c[1].ok && c[1].detail.contains("never woken"), "{}", c[1]);
        let c = rust_dest_checks(&s, &json!({}), 0);
        assert!(c.iter().all(|c| !c.ok));
    }
}
