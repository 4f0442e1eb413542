//! The return path: the write half of the main connection, shared by the
//! loader and the postcopy fault thread (QEMU's `migration/savevm.c`
//! `migrate_send_rp_*`).

use std::io::{self, Write};
use std::sync::Mutex;

use wire::rp::RpMessage;

/// The return path writer; closed once the channel is given up.
pub struct ReturnPath {
    w: Mutex<Option<Box<dyn Write + Send>>>,
}

impl ReturnPath {
    pub fn new(w: Box<dyn Write + Send>) -> ReturnPath {
        ReturnPath { w: Mutex::new(Some(w)) }
    }

    pub fn send(&self, m: &RpMessage) -> io::Result<()> {
        self.send_raw(&m.to_bytes())
    }

    /// Send raw bytes (RECV_BITMAP data follows its message).
    pub fn send_raw(&self, b: &[u8]) -> io::Result<()> {
        let mut g = self.w.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_mut() {
            Some(w) => {
                w.write_all(b)?;
                w.flush()
            }
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "return path closed")),
        }
    }

    pub fn close(&self) {
        *self.w.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// A return-path sink that records everything written (for loading a
/// stream from memory in tests and tools).
#[derive(Clone, Default)]
pub struct RecordingSink(pub std::sync::Arc<Mutex<Vec<u8>>>);

impl RecordingSink {
    /// The bytes written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Write for RecordingSink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
