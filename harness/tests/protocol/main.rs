//! Differential protocol conformance: every script is played by the
//! synthetic source (`harness::synth`) into BOTH a real QEMU destination
//! (the oracle) and rust-dest. The verdict kinds (completed / failed) must
//! agree with each other and with the script's expectation; completed runs
//! must hold exactly the guest RAM the script defined. On any problem the
//! failure message shows both destinations side by side.
//!
//! Needs `cargo build -p rust-dest` first (the rust-dest binary is found
//! next to the test executable) and `qemu-system-x86_64` (TCG) on PATH.
//!
//! Modules: `case` (a case and the runner), `script` (script building blocks
//! and extra checks); the tests are here.

mod case;
mod script;

use std::sync::Arc;

use harness::synth::{
    encode_script, vmdesc_for, Expect, Page, RpMatcher, RunOpts, Step, VerdictKind, GUEST_MEM,
};
use wire::command::discard_payload;
use wire::consts::MIG_CMD_POSTCOPY_RAM_DISCARD;

use case::{layout, run_cases, Case};
use script::{
    check_failure_shut, check_ping_order, check_postcopy, check_precopy, globalstate, pc_pre_pages,
    postcopy, precopy_end, precopy_part, precopy_with, MEM0, P,
};

// ---------------------------------------------------------------------------
// Tests

/// 1. Minimal precopy: header, RAM START/PART/END, globalstate, EOF, vmdesc.
#[tokio::test]
async fn precopy_minimal() {
    let (_, l) = layout().await;
    let s = precopy_with(&l, vec![], vec![]);
    run_cases(
        "precopy",
        vec![Case::new("precopy-minimal", Expect::Completed, false, s).check(check_precopy)],
    )
    .await;
}

/// 2. Legal postcopy: advise, precopy pages, discards, package with
/// LISTEN/globalstate/PING/RUN, postcopy pages incl. the discarded ones.
#[tokio::test]
async fn postcopy_legal() {
    let s = postcopy(|pc| pc.legal = true);
    run_cases(
        "postcopy",
        vec![Case::new("postcopy-legal", Expect::Completed, true, s).check(check_postcopy)],
    )
    .await;
}

/// QEMU 10.0 (and 7.2) sometimes crash after refusing a command in the
/// package after LISTEN, the listen thread running (SIGABRT or SIGSEGV).
const PACKAGE_ERROR_CRASH: &str =
    "docs/qemu-bugs.md#intermittent-abort-after-refusing-a-second-listen-7222-1002";

/// 3. Illegal orderings of the postcopy commands.
#[tokio::test]
async fn illegal_orderings() {
    let pkg = |v: Vec<Step>| Some(v);
    let cases = vec![
        Case::new(
            "listen-without-advise",
            Expect::Failed,
            true,
            postcopy(|pc| {
                pc.advise = vec![];
                pc.discards = vec![];
            }),
        )
        .errs(&["LISTEN"], &["LISTEN"]),
        Case::new(
            "run-without-listen-in-package",
            Expect::Failed,
            true,
            postcopy(|pc| pc.package = pkg(vec![globalstate(), Step::Ping(3), Step::Run])),
        )
        .errs(&["RUN"], &["RUN"]),
        Case::new(
            "run-without-listen-top-level",
            Expect::Failed,
            true,
            postcopy(|pc| {
                pc.before_package = vec![Step::Run];
                pc.package = None;
            }),
        )
        .errs(&["RUN"], &["RUN"]),
        Case::new(
            "discard-before-advise",
            Expect::Failed,
            true,
            postcopy(|pc| {
                pc.advise = vec![];
                pc.discards = vec![Step::discard(MEM0, vec![(4 * P, 2 * P)]), Step::advise()];
            }),
        )
        .errs(&["DISCARD"], &["DISCARD"]),
        Case::new(
            "advise-twice",
            Expect::Failed,
            true,
            postcopy(|pc| pc.advise = vec![Step::advise(), Step::advise()]),
        )
        .errs(&["ADVISE"], &["ADVISE"]),
        Case::new(
            "discard-after-listen",
            Expect::Failed,
            true,
            postcopy(|pc| {
                pc.package = pkg(vec![
                    Step::Listen,
                    Step::discard(MEM0, vec![(11 * P, P)]),
                    globalstate(),
                    Step::Ping(3),
                    Step::Run,
                ])
            }),
        )
        .errs(&["DISCARD"], &["DISCARD"])
        .qemu_bug(Expect::FailedOrCrashed, PACKAGE_ERROR_CRASH),
        Case::new(
            "listen-twice",
            Expect::Failed,
            true,
            postcopy(|pc| {
                pc.package =
                    pkg(vec![Step::Listen, Step::Listen, globalstate(), Step::Ping(3), Step::Run])
            }),
        )
        .errs(&["LISTEN"], &["LISTEN"])
        .qemu_bug(Expect::FailedOrCrashed, PACKAGE_ERROR_CRASH),
    ];
    run_cases(
        "illegal-orderings",
        cases.into_iter().map(|c| c.check(check_failure_shut)).collect(),
    )
    .await;
}

/// 4. Malformed POSTCOPY_RAM_DISCARD payloads (in the legal position).
#[tokio::test]
async fn malformed_discard() {
    let bad = |d: Step| postcopy(move |pc| pc.discards = vec![d]);
    let mut long = discard_payload(0, MEM0.as_bytes(), Some(0), &[(4 * P, P)]);
    long.extend_from_slice(&[0u8; 8]);
    let cases = vec![
        Case::new(
            "discard-version-1",
            Expect::Failed,
            true,
            bad(Step::Discard {
                block: MEM0.into(),
                ranges: vec![(4 * P, P)],
                version: 1,
                terminator: Some(0),
            }),
        )
        .errs(&["version"], &["version"]),
        Case::new(
            "discard-missing-nul",
            Expect::Failed,
            true,
            bad(Step::Discard {
                block: MEM0.into(),
                ranges: vec![(4 * P, P)],
                version: 0,
                terminator: None,
            }),
        )
        .errs(&["length"], &["multiple of 16", "NUL"]),
        Case::new(
            "discard-length-not-16n",
            Expect::Failed,
            true,
            bad(Step::Command { cmd: MIG_CMD_POSTCOPY_RAM_DISCARD, payload: long }),
        )
        .errs(&["length"], &["multiple of 16"]),
        Case::new(
            "discard-unknown-block",
            Expect::Failed,
            true,
            bad(Step::discard("nosuchblock", vec![(0, P)])),
        )
        .errs(&["nosuchblock"], &["nosuchblock"]),
        Case::new(
            "discard-beyond-block",
            Expect::Failed,
            true,
            bad(Step::discard(MEM0, vec![(GUEST_MEM - P, 2 * P)])),
        )
        .errs(&["overrun", "mem0"], &["outside"]),
        Case::new(
            "discard-misaligned-start",
            Expect::Failed,
            true,
            bad(Step::discard(MEM0, vec![(0x800, P)])),
        )
        .errs(&["unaligned", "align"], &["aligned"]),
    ];
    run_cases(
        "malformed-discard",
        cases.into_iter().map(|c| c.check(check_failure_shut)).collect(),
    )
    .await;
}

/// 5. ADVISE whose page sizes do not match the destination's.
#[tokio::test]
async fn advise_page_size_mismatch() {
    let cases = vec![
        Case::new(
            "advise-summary-2m",
            Expect::Failed,
            true,
            postcopy(|pc| pc.advise = vec![Step::Advise { summary: 0x201000, tps: P }]),
        )
        .errs(&["page size"], &["page size"]),
        Case::new(
            "advise-tps-1k",
            Expect::Failed,
            true,
            postcopy(|pc| pc.advise = vec![Step::Advise { summary: P, tps: 1024 }]),
        )
        .errs(&["target page size"], &["target page size"]),
        // Not in the brief's list, same family: a 0-byte (dirty-bitmaps only)
        // ADVISE while postcopy-ram is on, and a 16-byte one while it is off.
        Case::new(
            "advise-len0",
            Expect::Failed,
            true,
            postcopy(|pc| pc.advise = vec![Step::AdviseRaw(vec![])]),
        )
        .errs(&["0 byte advise"], &["without page sizes"]),
        Case::new("advise-without-capability", Expect::Failed, false, postcopy(|_| {}))
            .errs(&["postcopy is disabled"], &["not enabled"]),
    ];
    run_cases("advise-mismatch", cases.into_iter().map(|c| c.check(check_failure_shut)).collect())
        .await;
}

/// 6. PING without a return path fails; PINGs 1..5 are answered in order.
#[tokio::test]
async fn ping_pong() {
    let (_, l) = layout().await;
    let no_rp = precopy_with(&l, vec![Step::Ping(1)], vec![]);
    let mut prefix = vec![Step::OpenReturnPath];
    prefix.extend((1..=5).map(Step::Ping));
    prefix.extend((1..=5).map(|v| Step::ExpectRp(RpMatcher::Pong(v))));
    let mut ordered = precopy_with(&l, prefix, vec![]);
    ordered.push(Step::ExpectRp(RpMatcher::Shut(0)));
    let cases = vec![
        Case::new("ping-without-return-path", Expect::Failed, false, no_rp)
            .errs(&["return path"], &["return path"]),
        Case::new("ping-pong-order", Expect::Completed, false, ordered).check(check_ping_order),
    ];
    run_cases("ping", cases).await;
}

/// 7. PACKAGED declaring more bytes than are sent before the source closes.
#[tokio::test]
async fn truncated_package() {
    let (_, l) = layout().await;
    let inner = vec![Step::Listen, globalstate(), Step::Ping(3), Step::Run];
    let real = encode_script(&l, &inner).unwrap().len() as u32;
    let s = vec![
        Step::header(),
        Step::OpenReturnPath,
        Step::Ping(1),
        Step::ExpectRp(RpMatcher::Pong(1)),
        Step::advise(),
        Step::RamStart,
        Step::RamPart(pc_pre_pages()),
        Step::Ping(2),
        Step::PackagedRawLen { declared: real + 64, inner },
        Step::Eof,
    ];
    let cases = vec![Case::new("package-truncated", Expect::Failed, true, s)
        .errs(&["CMD_PACKAGED", "Buffer receive"], &["PACKAGED"])
        .check(check_failure_shut)];
    run_cases("truncated-package", cases).await;
}

// ---------------------------------------------------------------------------
// Beyond the brief's list: edge cases where QEMU and rust-dest must agree.

/// PACKAGED framing: QEMU runs the record loop on the blob until RUN or EOF;
/// bytes after RUN/EOF are ignored, running off the end is an I/O error.
/// Also DISCARD's minimum length (20 bytes, so an empty range list is only
/// legal with a block name of 17+ bytes).
#[tokio::test]
async fn package_edge_cases() {
    let (_, l) = layout().await;
    let in_precopy = |inner: Vec<Step>| {
        let mut s = vec![
            Step::header(),
            Step::RamStart,
            Step::RamPart(precopy_part()),
            Step::RamEnd(precopy_end()),
        ];
        s.extend([
            Step::Packaged(inner),
            Step::Eof,
            Step::Vmdesc { desc: vmdesc_for(&l, &[]), cut: None },
        ]);
        s
    };
    let cases = vec![
        Case::new(
            "package-without-run",
            Expect::Failed,
            true,
            // No LISTEN inside: with it QEMU's listen thread races the failing
            // main thread and QEMU sometimes dies on an assertion instead
            // (qemu_socket_set_nonblock: `f == 0'), still a failure.
            postcopy(|pc| pc.package = Some(vec![globalstate(), Step::Ping(3)])),
        )
        .errs(&["Input/output error"], &["without POSTCOPY_RUN"])
        .check(check_failure_shut),
        Case::new("package-empty", Expect::Failed, true, postcopy(|pc| pc.package = Some(vec![])))
            .errs(&["Input/output error"], &["without POSTCOPY_RUN"])
            .check(check_failure_shut),
        Case::new(
            "package-ends-with-eof",
            Expect::Completed,
            false,
            in_precopy(vec![globalstate(), Step::Eof]),
        ),
        Case::new(
            "package-junk-after-eof",
            Expect::Completed,
            false,
            in_precopy(vec![globalstate(), Step::Eof, Step::Raw(vec![0x99; 7])]),
        ),
        Case::new(
            "package-junk-after-run",
            Expect::Completed,
            true,
            postcopy(|pc| {
                pc.legal = true;
                pc.package = Some(vec![
                    Step::Listen,
                    globalstate(),
                    Step::Ping(3),
                    Step::Run,
                    Step::Raw(vec![0x99; 9]),
                ]);
            }),
        )
        .check(check_postcopy),
        Case::new(
            "package-ping-after-run",
            Expect::Completed,
            true,
            postcopy(|pc| {
                pc.package = Some(vec![Step::Listen, globalstate(), Step::Run, Step::Ping(3)])
            }),
        )
        .check(|d| {
            // The PING after RUN is not processed: no PONG 3.
            let mut p = Vec::new();
            for r in [&d.qemu, &d.rust] {
                if let Some(play) = &r.play {
                    if play.pongs() != [1, 2] || play.shuts() != [0] {
                        p.push(format!(
                            "{}: PONGs {:?} SHUTs {:?}, expected [1, 2] and [0]",
                            r.kind.name(),
                            play.pongs(),
                            play.shuts()
                        ));
                    }
                }
            }
            p
        }),
        Case::new(
            "discard-no-ranges",
            Expect::Failed,
            true,
            postcopy(|pc| pc.discards = vec![Step::discard(MEM0, vec![])]),
        )
        .errs(&["invalid length"], &["invalid length"])
        .check(check_failure_shut),
        Case::new(
            "discard-no-ranges-long-name",
            Expect::Completed,
            true,
            postcopy(|pc| {
                pc.legal = true;
                pc.discards.push(Step::discard("/rom@etc/acpi/tables", vec![]));
            }),
        )
        .check(check_postcopy),
        Case::new(
            "precopy-switchover-start",
            Expect::Completed,
            false,
            precopy_with(&l, vec![], vec![Step::SwitchoverStart]),
        )
        .check(check_precopy),
    ];
    run_cases("package-edge", cases).await;
}

/// The RAMBlock list: a subset of the real blocks is fine for both, a wrong
/// length of the backend-file block is not.
#[tokio::test]
async fn ramblock_list() {
    let (_, l) = layout().await;
    let s = precopy_with(&l, vec![], vec![]);
    let cases = vec![
        Case::new("blocks-subset", Expect::Completed, false, s.clone()).layout(|l| {
            let mut l = l.clone();
            l.blocks.retain(|b| b.name == MEM0 || b.name == "pc.bios");
            l
        }),
        Case::new("mem0-wrong-length", Expect::Failed, false, s)
            .layout(|l| {
                let mut l = l.clone();
                l.blocks[0].used_length = 64 << 20;
                l
            })
            .errs(&["Size mismatch"], &["does not match"]),
    ];
    run_cases("ramblocks", cases).await;
}

/// Postcopy with the guest running after RUN: both destinations fault and
/// request pages (REQ_PAGES_ID, then REQ_PAGES in the same block), which
/// the synthetic source serves from its model. QEMU's TCG vCPU starts at the
/// reset vector, i.e. in the (discarded) "pc.bios" block; rust-dest's
/// simulated vCPUs touch random pages of every block.
#[tokio::test]
async fn postcopy_page_requests() {
    let s = postcopy(|pc| {
        pc.legal = true;
        pc.after_package =
            vec![Step::ServePageRequests, Step::ExpectRp(RpMatcher::PageRequest), Step::Sleep(300)];
    });
    let case = Case::new("postcopy-page-requests", Expect::Completed, true, s).autostart().check(|d| {
        let mut p = Vec::new();
        for r in [&d.qemu, &d.rust] {
            let Some(play) = &r.play else { continue };
            if play.page_requests_served == 0 {
                p.push(format!("{}: no page request was served", r.kind.name()));
            }
            if !play.page_request_errors.is_empty() {
                p.push(format!("{}: bad page requests: {:?}", r.kind.name(), play.page_request_errors));
            }
            if play.shuts() != [0] {
                p.push(format!("{}: SHUT messages {:?}, expected [0]", r.kind.name(), play.shuts()));
            }
        }
        if let Some(play) = &d.qemu.play {
            use wire::rp::RpMessage;
            match play.rp_messages.iter().find(|m| matches!(m, RpMessage::ReqPagesId { .. })) {
                Some(RpMessage::ReqPagesId { start: 0x3f000, len: 4096, block }) if block == "pc.bios" => {}
                other => p.push(format!("qemu: first page request {other:?}, expected pc.bios 0x3f000 (reset vector)")),
            }
        }
        p
    });
    run_cases("page-requests", vec![case]).await;
}

/// Cases that once disagreed and now agree with QEMU: a ZERO record with a
/// non-zero fill fails; a page sent again after RUN although the destination
/// already holds it is a load error while postcopy runs, so both pause.
#[tokio::test]
async fn zero_fill_and_resent_page() {
    let (_, l) = layout().await;
    // Wait for the PONGs first, so QEMU has processed RUN (else its listen
    // thread may meet the page while still LISTENING and fail instead).
    let mut resend = postcopy(|pc| pc.legal = true);
    let i = resend.iter().position(|x| matches!(x, Step::RamEnd(_))).unwrap();
    // Page 1 was received in precopy and not discarded.
    resend.insert(i, Step::RamPart(vec![Page::pattern(MEM0, 1, 3)]));
    let zero_fill = precopy_with(
        &l,
        vec![],
        vec![Step::RamPart(vec![Page {
            block: MEM0.into(),
            index: 40,
            content: harness::synth::Content::Fill(0x55),
        }])],
    );
    let cases = vec![
        Case::new("zero-page-nonzero-fill", Expect::Failed, false, zero_fill)
            .errs(&["zero page"], &["fill byte"]),
        Case::new("postcopy-resend-present-page", Expect::Stuck, true, resend),
    ];
    run_cases("zero-fill-resend", cases).await;
}

/// Deliberate differences (README, "Deliberate differences from QEMU's
/// destination"): rust-dest accepts any q35 machine version for `-machine
/// q35` (one destination for every source version), and creates its
/// RAMBlocks from the stream instead of requiring them to exist. QEMU fails
/// both; rust-dest completes both. Asserted so a change is noticed.
#[tokio::test]
async fn deliberate_differences() {
    let (qemu, l) = layout().await;
    let mut older_machine = precopy_with(&l, vec![], vec![]);
    older_machine[0] = Step::Header { machine: Some("pc-q35-9.2".into()) };
    let mut extra = (*l).clone();
    extra.blocks.push(harness::synth::BlockInfo { name: "bogus".into(), used_length: 0x1000 });
    let extra = Arc::new(extra);
    let dir = tempfile::Builder::new().prefix("protocol-deliberate-").tempdir().unwrap();
    for (name, layout, script) in [
        ("older-q35-machine", l.clone(), older_machine),
        ("extra-ramblock", extra.clone(), precopy_with(&extra, vec![], vec![])),
    ] {
        let d = harness::synth::differential(
            name,
            &qemu,
            &layout,
            &script,
            Expect::Completed,
            &RunOpts::default(),
            dir.path(),
        )
        .await
        .unwrap();
        assert_eq!(d.qemu.verdict.kind(), VerdictKind::Failed, "{}", d.side_by_side());
        assert_eq!(d.rust.verdict.kind(), VerdictKind::Completed, "{}", d.side_by_side());
    }
}
