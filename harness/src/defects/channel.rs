//! The sans-I/O mutator of one source→destination connection: bytes in,
//! (changed) bytes out. It walks the stream with `wire::walk::Walker` as it
//! passes, hands every record to the mutation (`ram.rs`, `device.rs`), and
//! keeps the destination's view of the current RAMBlock right: a record with
//! CONTINUE that would follow a dropped or moved record naming another block
//! gets its block name back (only [`Mutation::ContinueAcrossBlock`] breaks
//! that on purpose).
//!
//! What it cannot parse (a multifd or preempt channel it was not built for,
//! an unknown record) it forwards untouched from there on.

use std::sync::Arc;

use wire::consts::*;
use wire::stream::{SectionKind, TopRecord};
use wire::walk::{Item, Walked, Walker};

use super::mutation::Mutation;
pub use super::state::Shared;
use super::state::{emit_ram, State};
use super::{device, ram};

/// One connection's mutator.
pub struct ChannelMutator {
    m: Mutation,
    walker: Walker,
    buf: Vec<u8>,
    base: u64,
    /// Forward everything untouched from here on.
    pass: bool,
    st: State,
    shared: Arc<Shared>,
}

impl ChannelMutator {
    /// The main channel (header first).
    pub fn main(m: Mutation, shared: Arc<Shared>) -> ChannelMutator {
        Self::with(m, Walker::main(true, true), shared)
    }
    /// The postcopy-preempt channel (bare RAM records).
    pub fn preempt(m: Mutation, shared: Arc<Shared>) -> ChannelMutator {
        Self::with(m, Walker::bare(), shared)
    }
    /// A connection left alone.
    pub fn passthrough(m: Mutation, shared: Arc<Shared>) -> ChannelMutator {
        let mut c = Self::with(m, Walker::bare(), shared);
        c.pass = true;
        c
    }
    fn with(m: Mutation, walker: Walker, shared: Arc<Shared>) -> ChannelMutator {
        ChannelMutator {
            m,
            walker,
            buf: Vec::new(),
            base: 0,
            pass: false,
            st: State::default(),
            shared,
        }
    }

    /// Feed bytes from the source; what the destination gets is appended to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.pass {
            out.extend_from_slice(input);
            return;
        }
        if let Some(t) = self.st.tail.as_mut() {
            t.extend_from_slice(input);
            device::try_tail(self.m, &mut self.st, &self.shared, out, false);
            self.pass = self.st.tail.is_none();
            return;
        }
        self.buf.extend_from_slice(input);
        let ChannelMutator { m, walker, buf, base, pass, st, shared } = self;
        let mut pos = 0usize;
        loop {
            match walker.next(&buf[pos..], *base + pos as u64) {
                Ok(Walked::Record { item, len, .. }) => {
                    let raw = &buf[pos..pos + len];
                    if let Item::Top(TopRecord::SectionOpen { kind: SectionKind::Full, .. }) = item
                    {
                        // The precopy device state: FULL sections through EOF.
                        if m.on_tail() {
                            flush_held(st, out);
                            st.tail = Some(buf[pos..].to_vec());
                            pos = buf.len();
                            device::try_tail(*m, st, shared, out, false);
                            *pass = st.tail.is_none();
                        } else {
                            out.extend_from_slice(&buf[pos..]);
                            pos = buf.len();
                            *pass = true;
                        }
                        break;
                    }
                    on_item(*m, st, shared, &item, raw, out);
                    pos += len;
                }
                Ok(Walked::NeedMore { .. }) => break,
                Ok(Walked::End) | Err(_) => {
                    flush_held(st, out);
                    out.extend_from_slice(&buf[pos..]);
                    pos = buf.len();
                    *pass = true;
                    break;
                }
            }
        }
        buf.drain(..pos);
        *base += pos as u64;
    }

    /// The source closed its side: whatever is still held goes out.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.st.tail.is_some() {
            device::try_tail(self.m, &mut self.st, &self.shared, out, true);
        }
        flush_held(&mut self.st, out);
        if let Some(c) = self.st.pkg_cmd.take() {
            out.extend_from_slice(&c);
        }
        out.append(&mut self.buf);
    }
}

fn flush_held(st: &mut State, out: &mut Vec<u8>) {
    if let Some(h) = st.held.take() {
        emit_ram(st, &h, out);
    }
}

fn on_item(m: Mutation, st: &mut State, sh: &Shared, item: &Item, raw: &[u8], out: &mut Vec<u8>) {
    match item {
        Item::Ram(r) => ram::on_ram(m, st, sh, r, raw, out),
        Item::Top(TopRecord::Command(rc)) => {
            flush_held(st, out);
            match rc.cmd {
                MIG_CMD_POSTCOPY_RUN => st.run_seen = true,
                MIG_CMD_PACKAGED if m.on_package() => {
                    st.pkg_cmd = Some(raw.to_vec());
                    return;
                }
                MIG_CMD_POSTCOPY_RAM_DISCARD if m == Mutation::DropDiscardRange && !st.done => {
                    ram::drop_discard(st, sh, rc.payload, raw, out);
                    return;
                }
                _ => {}
            }
            out.extend_from_slice(raw);
        }
        Item::Package(blob) => {
            // The package ends with RUN: what follows is the postcopy phase.
            st.run_seen = true;
            match st.pkg_cmd.take() {
                Some(cmd) => device::mutate_package(m, st, sh, &cmd, blob, out),
                None => out.extend_from_slice(raw),
            }
        }
        Item::Footer { .. } | Item::Top(_) => {
            flush_held(st, out);
            out.extend_from_slice(raw);
        }
        _ => out.extend_from_slice(raw),
    }
}
