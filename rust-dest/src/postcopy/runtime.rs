//! Postcopy at run time: userfaultfd registration, atomic page placement,
//! the fault thread that turns missing-page faults into page requests on the
//! return path (QEMU's `migration/postcopy-ram.c`), and the hand-off of the
//! runtime between the main loader and the preempt reader ([`RuntimeSlot`]).

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use userfaultfd::{Event, FeatureFlags, Uffd, UffdBuilder};

use super::hugepage::{Assembled, NonSameHostPage, TmpPage};
use super::vcpu::{blocked_on_placed, vcpu_thread, Guest, Pattern, VcpuConfig};
use crate::channel::ReturnPath;
use crate::defects::{self, Defect};
use crate::ram::{RamBlock, TARGET_PAGE_SIZE};
use crate::state::sched::{self, ThreadRunq};
use crate::state::{Counters, Shared};
use wire::rp::RpMessage;

/// Setting up userfaultfd at POSTCOPY_LISTEN failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("userfaultfd: {0}")]
    Userfaultfd(userfaultfd::Error),
    #[error("RAMBlock {name:?}: {source}")]
    Block { name: String, source: std::io::Error },
    #[error("spawning fault thread: {0}")]
    Thread(std::io::Error),
    #[error("creating the fault thread's stop pipe: {0}")]
    Pipe(std::io::Error),
}

/// Placing a received page failed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("placing page {addr:#x} of {block:?}: {source}")]
    Uffd { addr: u64, block: String, source: std::io::Error },
    /// Like QEMU: a correct source never sends a page the destination already
    /// holds (it clears the dirty bit when sending).
    #[error("page {addr:#x} of RAMBlock {block:?} arrived but is already present (placed twice)")]
    Twice { addr: u64, block: String },
    #[error(transparent)]
    NonSameHostPage(#[from] NonSameHostPage),
}

/// How long a vCPU blocked on a placed page at the end of postcopy gets to
/// move on before it counts as never woken (a woken thread needs only to be
/// scheduled once; generous for a loaded machine).
const NEVER_WOKEN_GRACE: Duration = Duration::from_secs(2);

struct Outstanding {
    /// (block index, page) → time the fault was read.
    map: HashMap<(usize, u64), Instant>,
    /// Block of the last page request (for REQ_PAGES vs REQ_PAGES_ID).
    last_block: Option<usize>,
}

struct Inner {
    shared: Shared,
    uffd: Uffd,
    blocks: Vec<Arc<RamBlock>>,
    rp: Mutex<Option<Arc<ReturnPath>>>,
    out: Mutex<Outstanding>,
    n_out: AtomicUsize,
    stop: Arc<AtomicBool>,
    /// Read end of the stop pipe: readable (hung up) once [`Inner::stop_tx`]
    /// is dropped, so the fault thread's poll returns at once on a stop
    /// instead of at its next timeout.
    stop_rx: std::io::PipeReader,
    /// Write end of the stop pipe, dropped by `stop_all`.
    stop_tx: Mutex<Option<std::io::PipeWriter>>,
    run: AtomicBool,
    /// A zeroed huge page of the largest huge page size (empty without
    /// huge pages): hugetlbfs has no UFFDIO_ZEROPAGE, so a zero huge page
    /// is copied from here, as QEMU copies `postcopy_tmp_zero_page`
    /// (`migration/postcopy-ram.c: postcopy_place_page_zero()`).
    zero_huge: Vec<u8>,
}

/// Postcopy run-time state, created at POSTCOPY_LISTEN.
pub struct PostcopyRuntime {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Per simulated vCPU: the page it is reading (see `vcpu::Guest`).
    inflight: Mutex<Vec<Arc<AtomicU64>>>,
    vcpu: VcpuConfig,
    finished: AtomicBool,
}

impl PostcopyRuntime {
    /// Register every RAMBlock with a new userfaultfd and start the fault
    /// thread. Received pages stay; missing ones fault from now on.
    pub fn start(
        shared: Shared,
        rp: Option<Arc<ReturnPath>>,
        vcpu: VcpuConfig,
    ) -> Result<PostcopyRuntime, StartError> {
        let blocks = shared.ram().blocks();
        let needs_shmem = blocks.iter().any(|b| b.backing_path().is_some() && !b.is_huge());
        let huge = blocks.iter().filter(|b| b.is_huge()).map(|b| b.page_size).max().unwrap_or(0);
        let mut builder = UffdBuilder::new();
        builder.close_on_exec(true).non_blocking(true).user_mode_only(true);
        let mut features = FeatureFlags::empty();
        if needs_shmem {
            features |= FeatureFlags::MISSING_SHMEM;
        }
        if huge > 0 {
            // QEMU's `ufd_check_and_apply()`: huge pages need this feature.
            features |= FeatureFlags::MISSING_HUGETLBFS;
        }
        if !features.is_empty() {
            builder.require_features(features);
        }
        let uffd = builder.create().map_err(StartError::Userfaultfd)?;
        for b in &blocks {
            // Pages not yet received must fault: drop whatever is mapped
            // there (fresh memory reads as zero but may be populated).
            let err = |source| StartError::Block { name: b.name.clone(), source };
            drop_missing(b).map_err(err)?;
            b.mapping.uffd_register(&uffd).map_err(err)?;
        }
        let (stop_rx, stop_tx) = std::io::pipe().map_err(StartError::Pipe)?;
        let inner = Arc::new(Inner {
            shared,
            uffd,
            blocks,
            rp: Mutex::new(rp),
            out: Mutex::new(Outstanding { map: HashMap::new(), last_block: None }),
            n_out: AtomicUsize::new(0),
            stop: Arc::new(AtomicBool::new(false)),
            stop_rx,
            stop_tx: Mutex::new(Some(stop_tx)),
            run: AtomicBool::new(false),
            zero_huge: vec![0u8; huge as usize],
        });
        let i2 = inner.clone();
        let h = std::thread::Builder::new()
            .name("postcopy-fault".into())
            .spawn(move || fault_thread(i2))
            .map_err(StartError::Thread)?;
        Ok(PostcopyRuntime {
            inner,
            threads: Mutex::new(vec![h]),
            inflight: Mutex::new(Vec::new()),
            vcpu,
            finished: AtomicBool::new(false),
        })
    }

    fn block_index(&self, b: &RamBlock) -> usize {
        self.inner.blocks.iter().position(|x| std::ptr::eq(x.as_ref(), b)).unwrap_or(usize::MAX)
    }

    /// Take the target page at `addr` (`None` = zero page) of a channel
    /// whose huge page under assembly is `tmp`: placed at once in a block
    /// of target-size pages, once its huge page is complete otherwise.
    pub fn place(
        &self,
        tmp: &mut TmpPage,
        b: &Arc<RamBlock>,
        addr: u64,
        data: Option<&[u8]>,
    ) -> Result<(), PlaceError> {
        if !b.is_huge() {
            return self.place_whole(b, addr, data);
        }
        match tmp.add(&b.name, b.page_size, addr, data)? {
            Assembled::Partial => Ok(()),
            Assembled::Whole { offset, data } => self.place_whole(b, offset, data),
        }
    }

    /// Place a whole page of the block atomically (`None` = zero page),
    /// mark its target pages received, and account for the fault it may
    /// answer.
    fn place_whole(&self, b: &RamBlock, addr: u64, data: Option<&[u8]>) -> Result<(), PlaceError> {
        let page = addr / TARGET_PAGE_SIZE;
        let received = Instant::now();
        let (uffd, at) = (&self.inner.uffd, addr as usize);
        let wake = !defects::active(Defect::NeverWake);
        let len = if b.is_huge() { b.page_size } else { TARGET_PAGE_SIZE };
        let placed = match data {
            Some(d) => b.mapping.uffd_copy_wake(uffd, at, d, wake),
            None if b.is_huge() => {
                b.mapping.uffd_copy_wake(uffd, at, &self.inner.zero_huge[..len as usize], wake)
            }
            None => b.mapping.uffd_zero_wake(uffd, at, len as usize, wake),
        }
        .map_err(|source| PlaceError::Uffd { addr, block: b.name.clone(), source })?;
        if !placed {
            return Err(PlaceError::Twice { addr, block: b.name.clone() });
        }
        b.set_received(addr, len);
        let c = self.inner.shared.counters();
        if self.inner.n_out.load(Ordering::Acquire) > 0 {
            let bi = self.block_index(b);
            let t = {
                let mut o = self.inner.out.lock().unwrap();
                let t = o.map.remove(&(bi, page));
                self.inner.n_out.store(o.map.len(), Ordering::Release);
                t
            };
            if let Some(t0) = t {
                let now = Instant::now();
                self.inner.shared.fault_stats().placed((bi, page), received, now);
                let us = now.saturating_duration_since(t0).as_micros() as u64;
                Counters::add(&c.pages_placed_requested, 1);
                Counters::add(&c.fault_latency_us_total, us);
                self.inner.shared.lock().fault_latencies_us.push(us);
                // Per-fault record for latency histograms (`crossmig bench`);
                // off unless enabled with `--log info,fault_latency=trace`.
                tracing::trace!(target: "fault_latency", "fault-latency-us={us} block={bi} page={page:#x}");
                return Ok(());
            }
        }
        Counters::add(&c.pages_placed_stream, 1);
        Ok(())
    }

    /// Swap the return path page requests go out on (None while postcopy
    /// is paused or recovering, until POSTCOPY_RESUME).
    pub fn set_rp(&self, rp: Option<Arc<ReturnPath>>) {
        *self.inner.rp.lock().unwrap() = rp;
        if self.inner.rp.lock().unwrap().is_none() {
            self.inner.out.lock().unwrap().last_block = None;
        }
    }

    /// After POSTCOPY_RESUME: request every still-missing page again (the
    /// first request names its block).
    pub fn resend_outstanding(&self) {
        let rp = self.inner.rp.lock().unwrap().clone();
        let Some(rp) = rp else { return };
        let mut o = self.inner.out.lock().unwrap();
        o.last_block = None;
        let mut keys: Vec<(usize, u64)> = o.map.keys().copied().collect();
        keys.sort();
        let mut sent = 0u64;
        for (bi, page) in keys {
            let b = &self.inner.blocks[bi];
            if b.received.get(page) {
                continue;
            }
            let m = request(&mut o, bi, b, page * TARGET_PAGE_SIZE);
            if rp.send(&m).is_ok() {
                self.inner.shared.fault_stats().requested((bi, page), Instant::now(), 0);
                sent += 1;
            }
        }
        Counters::add(&self.inner.shared.counters().page_requests, sent);
        tracing::info!("postcopy resumed: re-requested {sent} page(s)");
    }

    /// POSTCOPY_RUN: start the simulated vCPUs.
    pub fn run(&self) {
        self.inner.run.store(true, Ordering::Release);
        if self.vcpu.pattern == Pattern::None {
            self.inner.shared.fault_stats().start(0);
            return;
        }
        self.inner.shared.fault_stats().start(self.vcpu.threads.max(1));
        let mut th = self.threads.lock().unwrap();
        for i in 0..self.vcpu.threads.max(1) {
            let inflight = Arc::new(AtomicU64::new(0));
            self.inflight.lock().unwrap().push(inflight.clone());
            let guest = Guest {
                shared: self.inner.shared.clone(),
                blocks: self.inner.blocks.clone(),
                stop: self.inner.stop.clone(),
                inflight,
            };
            let cfg = self.vcpu.clone();
            if let Ok(h) = std::thread::Builder::new()
                .name(format!("vcpu{i}"))
                .spawn(move || vcpu_thread(guest, cfg, i))
            {
                th.push(h);
            }
        }
    }

    /// Postcopy ended (EOF): count the vCPUs blocked on a placed page (never
    /// woken: `x-crossmig` `vcpus-never-woken`), stop threads and unregister
    /// RAM.
    pub fn finish(&self) {
        if !self.finished.load(Ordering::Acquire) {
            let inflight = self.inflight.lock().unwrap().clone();
            let n = blocked_on_placed(&self.inner.blocks, &inflight, NEVER_WOKEN_GRACE);
            if n > 0 {
                tracing::warn!("{n} vCPU(s) still blocked on a placed page at the end of postcopy (never woken)");
                Counters::add(&self.inner.shared.counters().vcpus_never_woken, n as u64);
            }
        }
        self.stop_all();
    }

    /// Migration failed: the same teardown.
    pub fn shutdown(&self) {
        self.stop_all();
    }

    fn stop_all(&self) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.stop.store(true, Ordering::Release);
        // Wake the fault thread now (its poll sees the pipe hang up).
        drop(self.inner.stop_tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        // Unregistering wakes any thread blocked on a missing page.
        for b in &self.inner.blocks {
            let _ = b.mapping.uffd_unregister(&self.inner.uffd);
        }
        let hs: Vec<_> = std::mem::take(&mut *self.threads.lock().unwrap());
        for h in hs {
            let _ = h.join();
        }
    }
}

impl Drop for PostcopyRuntime {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Discard pages that were never received so they fault once registered,
/// in the block's pages: a huge page with a target page missing is dropped
/// whole and all of it counts as missing (a correct source never leaves
/// one half sent: it sends and discards whole huge pages,
/// `migration/ram.c: postcopy_chunk_hostpages_pass()`).
fn drop_missing(b: &RamBlock) -> std::io::Result<()> {
    let per = b.target_pages_per_page();
    if per == 1 {
        // Target-size pages: each run of missing pages, found a bitmap
        // word at a time (a 64 GiB guest has 16 million pages).
        let n = b.pages();
        let mut p = 0;
        while let Some(s) = b.received.next_with(false, p, n) {
            let e = b.received.next_with(true, s, n).unwrap_or(n);
            b.mapping
                .discard((s * TARGET_PAGE_SIZE) as usize, ((e - s) * TARGET_PAGE_SIZE) as usize)?;
            p = e;
        }
        return Ok(());
    }
    let n = b.pages() / per;
    let complete = |hp: u64| (hp * per..(hp + 1) * per).all(|p| b.received.get(p));
    let mut hp = 0;
    while hp < n {
        if complete(hp) {
            hp += 1;
            continue;
        }
        let s = hp;
        while hp < n && !complete(hp) {
            for p in hp * per..(hp + 1) * per {
                b.received.clear(p);
            }
            hp += 1;
        }
        b.mapping.discard((s * b.page_size) as usize, ((hp - s) * b.page_size) as usize)?;
    }
    Ok(())
}

fn fault_thread(inner: Arc<Inner>) {
    let mut buf = userfaultfd::EventBuffer::new(64);
    let runq = ThreadRunq::for_current_thread();
    while !inner.stop.load(Ordering::Acquire) {
        let faults = {
            use nix::poll::{PollFd, PollFlags, PollTimeout};
            let mut fds = [
                PollFd::new(inner.uffd.as_fd(), PollFlags::POLLIN),
                PollFd::new(inner.stop_rx.as_fd(), PollFlags::POLLIN),
            ];
            let ready = nix::poll::poll(&mut fds, PollTimeout::from(50u16)).unwrap_or(0);
            ready > 0 && fds[0].revents().is_some_and(|r| !r.is_empty())
        };
        if !faults {
            continue;
        }
        let events: Vec<_> = match inner.uffd.read_events(&mut buf) {
            Ok(it) => it.filter_map(|e| e.ok()).collect(),
            Err(e) => {
                tracing::warn!("userfaultfd read: {e}");
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        for ev in events {
            if let Event::Pagefault { addr, .. } = ev {
                handle_fault(&inner, &runq, addr as usize);
            }
        }
    }
}

fn handle_fault(inner: &Inner, runq: &ThreadRunq, addr: usize) {
    let Some((bi, b)) = inner.blocks.iter().enumerate().find(|(_, b)| {
        addr >= b.mapping.host_addr() && addr < b.mapping.host_addr() + b.mapping.len()
    }) else {
        tracing::warn!("fault at {addr:#x} outside guest RAM");
        return;
    };
    let c = inner.shared.counters();
    Counters::add(&c.faults, 1);
    // The whole page of the block is requested and placed (QEMU's
    // `postcopy_ram_fault_thread()` rounds down to `qemu_ram_pagesize()`).
    let ps = if b.is_huge() { b.page_size } else { TARGET_PAGE_SIZE };
    let off = (addr - b.mapping.host_addr()) as u64 & !(ps - 1);
    let page = off / TARGET_PAGE_SIZE;
    if b.received.get(page) {
        // Received but not present: a zero page that precopy never had to
        // write (fresh memory), or a page placed while this fault was
        // queued. Place zeros; EEXIST means it is there, so just wake.
        resolve_present_or_zero(inner, b, off);
        return;
    }
    // Read before the fault's timestamp and again after the request's, so
    // the profile's own cost stays outside the timed stage.
    let runq0 = runq.wait_ns();
    let msg = {
        let mut o = inner.out.lock().unwrap();
        if o.map.contains_key(&(bi, page)) {
            return;
        }
        let now = Instant::now();
        o.map.insert((bi, page), now);
        inner.shared.fault_stats().read((bi, page), now);
        inner.n_out.store(o.map.len(), Ordering::Release);
        // The page may have landed between the check and the insert.
        if b.received.get(page) {
            o.map.remove(&(bi, page));
            inner.n_out.store(o.map.len(), Ordering::Release);
            drop(o);
            resolve_present_or_zero(inner, b, off);
            return;
        }
        if inner.rp.lock().unwrap().is_none() {
            // Paused: keep the request; it is sent after POSTCOPY_RESUME.
            return;
        }
        request(&mut o, bi, b, off)
    };
    if defects::nth(Defect::LosePageRequest, 8) {
        // Seeded defect: accounted for as sent, never written.
        Counters::add(&c.page_requests, 1);
        return;
    }
    let rp = inner.rp.lock().unwrap().clone();
    if let Some(rp) = &rp {
        if let Err(e) = rp.send(&msg) {
            // The request stays outstanding (re-sent after a recovery). A
            // return path that cannot be written (closed, or blocked for
            // `RP_WRITE_TIMEOUT`) is a lost connection: pause, as a read
            // error on the main channel would, rather than leave the
            // faulting reader waiting on a request never sent.
            tracing::warn!("return path: page request failed: {e}; pausing");
            if let Err(p) = inner.shared.pause() {
                tracing::warn!("cannot pause after the failed page request: {p}");
            }
        } else {
            let at = Instant::now();
            let waited = sched::delta_us(runq0, runq.wait_ns());
            inner.shared.fault_stats().requested((bi, page), at, waited);
            Counters::add(&c.page_requests, 1);
        }
    }
}

/// A page request for the whole page of `b` at `off` (a huge page on
/// hugetlbfs: `migration/postcopy-ram.c: postcopy_request_page()`).
fn request(o: &mut Outstanding, bi: usize, b: &RamBlock, off: u64) -> RpMessage {
    let len = if b.is_huge() { b.page_size } else { TARGET_PAGE_SIZE } as u32;
    let m = if o.last_block == Some(bi) {
        RpMessage::ReqPages { start: off, len }
    } else {
        RpMessage::ReqPagesId { start: off, len, block: b.name.clone() }
    };
    o.last_block = Some(bi);
    m
}

fn resolve_present_or_zero(inner: &Inner, b: &RamBlock, off: u64) {
    let len = if b.is_huge() { b.page_size } else { TARGET_PAGE_SIZE } as usize;
    let wake = !defects::active(Defect::NeverWake);
    let r = if b.is_huge() {
        b.mapping.uffd_copy_wake(&inner.uffd, off as usize, &inner.zero_huge[..len], wake)
    } else {
        b.mapping.uffd_zero_wake(&inner.uffd, off as usize, len, wake)
    };
    match r {
        Ok(true) => Counters::add(&inner.shared.counters().zero_pages_on_fault, 1),
        Ok(false) if defects::active(Defect::NeverWake) => {}
        Ok(false) => {
            let _ = b.mapping.uffd_wake(&inner.uffd, off as usize, len);
        }
        Err(_) if inner.stop.load(Ordering::Acquire) => {
            // Postcopy ended while this fault was queued: RAM is no longer
            // registered (ENOENT), and unregistering woke the reader.
        }
        Err(e) => {
            // Not registered any more without the runtime stopping cannot
            // happen; wake the reader so it retries rather than waits.
            tracing::error!(
                "resolving fault at {off:#x} of {:?}: {e}; waking the faulting thread",
                b.name
            );
            let _ = b.mapping.uffd_wake(&inner.uffd, off as usize, len);
        }
    }
}

/// The postcopy runtime of one session, handed from the main loader (which
/// creates it at LISTEN) to the preempt reader (which waits for it).
#[derive(Default)]
pub struct RuntimeSlot {
    st: Mutex<(Option<Arc<PostcopyRuntime>>, bool)>,
    cv: Condvar,
}

impl RuntimeSlot {
    pub fn set(&self, rt: Option<Arc<PostcopyRuntime>>) {
        self.st.lock().unwrap_or_else(|e| e.into_inner()).0 = rt;
        self.cv.notify_all();
    }

    /// The session ended: waiters get `None`.
    pub fn end(&self) {
        self.st.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.cv.notify_all();
    }

    /// Wait until the runtime exists (LISTEN); `None` once the session ended.
    pub fn wait(&self) -> Option<Arc<PostcopyRuntime>> {
        let mut g = self.st.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(rt) = &g.0 {
                return Some(rt.clone());
            }
            if g.1 {
                return None;
            }
            g = self
                .cv
                .wait_timeout(g, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
