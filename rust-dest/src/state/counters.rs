//! Counters updated on the data path without taking the state lock
//! (what `query-migrate` reports as `ram` and `x-crossmig` statistics).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters updated on the data path without taking the state lock.
#[derive(Default, Debug)]
pub struct Counters {
    /// Bytes read from the main channel (and other channels).
    pub transferred: AtomicU64,
    /// Full pages written (PAGE records).
    pub normal_pages: AtomicU64,
    /// ZERO records.
    pub zero_pages: AtomicU64,
    /// RAM section iterations seen (START/PART/END "ram" sections).
    pub ram_sections: AtomicU64,
    /// PINGs answered.
    pub pings: AtomicU64,
    // --- postcopy ---
    pub discard_commands: AtomicU64,
    pub discarded_pages: AtomicU64,
    pub faults: AtomicU64,
    pub page_requests: AtomicU64,
    pub pages_placed_stream: AtomicU64,
    pub pages_placed_requested: AtomicU64,
    /// Faults on pages already received as zero and never written
    /// (resolved locally with a zero page, no request).
    pub zero_pages_on_fault: AtomicU64,
    /// Pages received on the postcopy-preempt channel.
    pub preempt_pages: AtomicU64,
    /// Sum of fault-to-placement latencies in microseconds.
    pub fault_latency_us_total: AtomicU64,
    /// Simulated vCPUs still blocked at the end of postcopy on a page that
    /// had been placed: a faulting thread that was never woken.
    pub vcpus_never_woken: AtomicU64,
    // --- multifd ---
    /// Bytes read from the multifd channels (initial packets, headers,
    /// payloads): QEMU's `multifd-bytes` as 8.0+ sources count it (7.2
    /// sources leave out the 64-byte initial packets).
    pub multifd_bytes: AtomicU64,
}

/// One multifd channel's statistics (`x-crossmig` `multifd-channels`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MultifdChannelStats {
    pub id: u8,
    /// Every byte read, the initial packet included.
    pub bytes: u64,
    pub packets: u64,
    pub normal_pages: u64,
    pub zero_pages: u64,
    pub syncs: u64,
    /// Bytes of compressed payload (0 without compression).
    pub compressed_bytes: u64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
