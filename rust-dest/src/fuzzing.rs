//! Entry points for the coverage-guided fuzz targets in `fuzz/` (not part of
//! rust-dest's interface; hidden from the docs). Each one feeds bytes from
//! memory to the same code a peer's bytes reach over a socket, and must
//! return (never panic, hang or allocate ahead of the data) whatever the
//! bytes are.

use std::sync::Arc;

use crate::channel::RecordingSink;
use crate::load::{Config, Loader};
use crate::postcopy::{Pattern, VcpuConfig};
use crate::ram::RamTable;
use crate::state::{Capability, MigStatus, Shared};

/// RAM a fuzzed stream may create (MEM_SIZE): the recorded streams of
/// `wire/tests/streams/` announce 64 MiB and a few small ROM blocks.
const FUZZ_MAX_RAM: u64 = 256 << 20;

/// Reads from memory ask for 64 KiB at a time (a socket's default is
/// 1 MiB): a run allocates no megabyte buffer (with AddressSanitizer, each
/// one freed costs a poisoning pass over its shadow), and records of the
/// seeds span reads, as on a network.
const FUZZ_READ_CHUNK: usize = 64 << 10;

/// Load `bytes` as a whole incoming main channel (precopy, or postcopy with
/// the `postcopy-ram` capability on: ADVISE, DISCARD, the PACKAGED blob,
/// LISTEN/RUN and pages placed through userfaultfd). Returns the final
/// migration status and the return-path bytes written.
pub fn load_from_memory(bytes: &[u8], postcopy: bool) -> (MigStatus, Vec<u8>) {
    let shared = Shared::new(Arc::new(RamTable::new(vec![], FUZZ_MAX_RAM)), false);
    if postcopy {
        shared.lock().capabilities.set(Capability::PostcopyRam, true);
    }
    let cfg = Config {
        vcpu: VcpuConfig { pattern: Pattern::None, threads: 1, rate: 0, range: None },
        read_chunk: FUZZ_READ_CHUNK,
        ..Config::default()
    };
    let sink = RecordingSink::default();
    let src = std::io::Cursor::new(bytes.to_vec());
    let res = Loader::new(shared.clone(), cfg, Box::new(sink.clone())).run(Box::new(src));
    let status = shared.lock().status;
    // Whatever the bytes, the loader ends in a state QMP can report, and
    // an error is always a failed (or paused) migration.
    if res.is_err() {
        assert!(
            matches!(status, MigStatus::Failed | MigStatus::PostcopyPaused),
            "error {res:?} with status {status:?}"
        );
    }
    (status, sink.bytes())
}

/// Feed `data` to the QMP server's input side (JSON splitting and the
/// request-shape check) in chunks of `chunk` bytes, as a connection's reads
/// would deliver it. Returns how many requests were well-formed.
pub fn qmp_input(data: &[u8], chunk: usize) -> usize {
    crate::qmp::parse_input(data, chunk)
}
