//! Script building blocks (the legal precopy and postcopy streams the cases
//! vary) and the extra checks cases attach.

use harness::synth::{
    vmdesc_for, Differential, Page, RpMatcher, SourceLayout, Step, GUEST_MEM, PAGE_SIZE,
    QEMU_10_0_Q35_128M_BLOCKS,
};

pub const MEM0: &str = "mem0";
pub const P: u64 = PAGE_SIZE;

pub fn globalstate() -> Step {
    Step::globalstate("running")
}

/// Precopy pages: two blocks, CONTINUE runs, a zero page, a high page.
pub fn precopy_part() -> Vec<Page> {
    let mut p = harness::synth::pattern_pages(MEM0, 0..8, 1);
    p.push(Page::pattern(MEM0, 100, 1));
    p.push(Page::pattern("pc.bios", 0, 1));
    p.extend(harness::synth::pattern_pages(MEM0, 8..12, 1));
    p.push(Page::zero(MEM0, 12));
    p
}

pub fn precopy_end() -> Vec<Page> {
    vec![
        Page::pattern(MEM0, 2, 2),
        Page::pattern(MEM0, 3, 2),
        Page::pattern(MEM0, GUEST_MEM / P - 1, 1),
    ]
}

/// The minimal precopy stream; `prefix` goes right after the header.
pub fn precopy_with(layout: &SourceLayout, prefix: Vec<Step>, before_end: Vec<Step>) -> Vec<Step> {
    let mut s = vec![Step::header()];
    s.extend(prefix);
    s.extend([Step::RamStart, Step::RamPart(precopy_part())]);
    s.extend(before_end);
    s.extend([Step::RamEnd(precopy_end()), globalstate(), Step::Eof]);
    let vd = vmdesc_for(layout, &s);
    s.push(Step::Vmdesc { desc: vd, cut: None });
    s
}

/// The parts of the legal postcopy script that the illegal variants change.
pub struct Pc {
    pub advise: Vec<Step>,
    pub discards: Vec<Step>,
    /// Top level, between PING(2) and the package.
    pub before_package: Vec<Step>,
    /// The package contents; None = no package at all.
    pub package: Option<Vec<Step>>,
    /// Top level, right after the package (and the PONG 2/3 waits).
    pub after_package: Vec<Step>,
    /// Wait for PONG 2/3 and SHUT(0) (only for scripts expected to complete).
    pub legal: bool,
}

impl Default for Pc {
    fn default() -> Pc {
        Pc {
            advise: vec![Step::advise()],
            discards: vec![Step::discard(MEM0, vec![(4 * P, 2 * P), (10 * P, P)])],
            before_package: vec![],
            package: Some(vec![Step::Listen, globalstate(), Step::Ping(3), Step::Run]),
            after_package: vec![],
            legal: false,
        }
    }
}

pub fn pc_pre_pages() -> Vec<Page> {
    let mut p = harness::synth::pattern_pages(MEM0, 0..16, 1);
    p.push(Page::pattern("pc.bios", 0, 1));
    p.push(Page::zero(MEM0, 16));
    p
}

pub fn postcopy(f: impl FnOnce(&mut Pc)) -> Vec<Step> {
    let mut pc = Pc::default();
    f(&mut pc);
    let mut s = vec![
        Step::header(),
        Step::OpenReturnPath,
        Step::Ping(1),
        Step::ExpectRp(RpMatcher::Pong(1)),
    ];
    s.extend(pc.advise);
    s.extend([Step::RamStart, Step::RamPart(pc_pre_pages())]);
    s.extend(pc.discards);
    s.push(Step::Ping(2));
    s.extend(pc.before_package);
    if let Some(p) = pc.package {
        s.push(Step::Packaged(p));
    }
    if pc.legal {
        s.extend([Step::ExpectRp(RpMatcher::Pong(2)), Step::ExpectRp(RpMatcher::Pong(3))]);
    }
    s.extend(pc.after_package);
    // After RUN: pages never sent, and the discarded ones again (new version).
    let mut post = harness::synth::pattern_pages(MEM0, 20..28, 1);
    post.extend([Page::pattern(MEM0, 4, 2), Page::pattern(MEM0, 5, 2), Page::pattern(MEM0, 10, 2)]);
    s.push(Step::RamPart(post));
    s.push(Step::RamEnd(vec![
        Page::pattern(MEM0, 28, 1),
        Page::pattern(MEM0, GUEST_MEM / P - 1, 1),
    ]));
    s.push(Step::Eof);
    if pc.legal {
        s.push(Step::ExpectRp(RpMatcher::Shut(0)));
    }
    s
}

// ---------------------------------------------------------------------------
// Checks

pub fn check_precopy(d: &Differential) -> Vec<String> {
    let mut p = Vec::new();
    if let Some(b) = &d.rust.rust_blocks {
        let got: Vec<(String, u64)> = b.iter().map(|b| (b.name.clone(), b.used_length)).collect();
        let want: Vec<(String, u64)> =
            QEMU_10_0_Q35_128M_BLOCKS.iter().map(|(n, l)| (n.to_string(), *l)).collect();
        if got != want {
            p.push(format!(
                "rust: RAMBlocks created from the stream {got:?} != announced {want:?}"
            ));
        }
    }
    for r in [&d.qemu, &d.rust] {
        if let Some(m) = &r.memory {
            // mem0 0..12 (2, 3 re-sent), 100, the last page.
            if m.matched_defined != 14 {
                p.push(format!(
                    "{}: {} defined pages matched, expected 14",
                    r.kind.name(),
                    m.matched_defined
                ));
            }
        }
    }
    p
}

pub fn check_postcopy(d: &Differential) -> Vec<String> {
    let mut p = Vec::new();
    for r in [&d.qemu, &d.rust] {
        let Some(play) = &r.play else { continue };
        if play.pongs() != [1, 2, 3] {
            p.push(format!("{}: PONGs {:?}, expected [1, 2, 3]", r.kind.name(), play.pongs()));
        }
        if play.shuts() != [0] {
            p.push(format!("{}: SHUT messages {:?}, expected [0]", r.kind.name(), play.shuts()));
        }
        if let Some(m) = &r.memory {
            // 0..16 (4, 5, 10 re-sent), 20..28, 28, last page.
            if m.matched_defined != 16 + 8 + 2 {
                p.push(format!(
                    "{}: {} defined pages matched, expected 26",
                    r.kind.name(),
                    m.matched_defined
                ));
            }
            if m.discarded_zero != 0 {
                p.push(format!(
                    "{}: {} discarded pages never re-sent",
                    r.kind.name(),
                    m.discarded_zero
                ));
            }
        }
    }
    p
}

pub fn check_ping_order(d: &Differential) -> Vec<String> {
    let mut p = Vec::new();
    for r in [&d.qemu, &d.rust] {
        let Some(play) = &r.play else { continue };
        if play.pongs() != [1, 2, 3, 4, 5] {
            p.push(format!(
                "{}: PONGs {:?}, expected [1, 2, 3, 4, 5] in order",
                r.kind.name(),
                play.pongs()
            ));
        }
        if play.shuts() != [0] {
            p.push(format!("{}: SHUT messages {:?}, expected [0]", r.kind.name(), play.shuts()));
        }
    }
    p
}

/// Failing runs: a SHUT, if one arrives, must report the failure (non-zero).
/// rust-dest must send exactly SHUT(1) once its return path was open (it
/// answered a PING). QEMU sends SHUT(1) too, but it may never arrive: QEMU
/// exits right after writing it, with unread source data in its socket, so
/// its kernel resets the connection and drops a SHUT still held back by
/// Nagle (seen with strace: the sendmsg of `00 01 00 04 00 00 00 01`
/// happens, the source gets ECONNRESET without it).
pub fn check_failure_shut(d: &Differential) -> Vec<String> {
    let mut p = Vec::new();
    for r in [&d.qemu, &d.rust] {
        let Some(play) = &r.play else { continue };
        if play.shuts().contains(&0) {
            p.push(format!("{}: failed but sent SHUT(0) (success)", r.kind.name()));
        }
        if r.kind == harness::vm::dest::DestKind::Rust
            && !play.pongs().is_empty()
            && play.shuts() != [1]
        {
            p.push(format!(
                "rust: SHUT messages {:?} after a failure with an open return path, expected [1]",
                play.shuts()
            ));
        }
    }
    p
}
