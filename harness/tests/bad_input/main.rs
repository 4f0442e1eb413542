//! Damaged migration streams must fail cleanly: real QEMU 10.0 source, real
//! rust-dest (and a real QEMU destination as the oracle).
//!
//! Once per test binary a real precopy stream (128 MiB q35 guest running
//! the sweep workload, stopped) is migrated through the harness proxy into
//! rust-dest and recorded byte for byte. The recording is walked with
//! the codec's record walker (`wire::walk`) to find structural offsets; every test then replays a
//! damaged copy (or a synthetic prefix built from its header) into a fresh
//! destination over TCP and checks that the destination
//! * reaches `failed` (no hang: within 10 s, also when the socket is kept
//!   open after damage that needs no EOF to be detected),
//! * reports an `error-desc` naming what was wrong and `byte offset N`,
//! * sends `SHUT(1)` when the return path is open,
//! * keeps answering QMP and did not panic.
//!
//! `CROSSMIG_KEEP_STREAM=/path` keeps a copy of the recorded stream.
//!
//! Modules: `record` (the recording), `layout` (its offsets), `damage`
//! (byte edits), `dest` (one destination per case), `return_path` and `live`
//! (their cases); the header and record cases are here.

mod damage;
mod dest;
mod layout;
mod live;
mod record;
mod return_path;

use harness::vm::dest::DestKind;

use damage::{be64_at, set_be64, splice, TAIL};
use dest::{names_offset, qemu_case, qemu_case_with, replay_into, rust_case, Dest};
use record::{recorded, MEM, MIB};

// ---------------------------------------------------------------------------
// the cases

#[tokio::test]
async fn layout_of_the_recorded_stream() {
    let r = recorded();
    let l = &r.layout;
    assert_eq!(&r.data[..8], &[0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3]);
    assert!(l.machine.starts_with("pc-q35-"), "{}", l.machine);
    assert_eq!(
        l.ram_start, l.header_end,
        "ram START is the first record (no return path in plain precopy)"
    );
    assert_eq!(l.mem_size, l.ram_start + 1 + 4 + 1 + 3 + 4 + 4);
    assert_eq!(l.blocks.iter().map(|b| b.2).sum::<u64>(), l.mem_total);
    assert_eq!(l.block_len("mem0"), MEM);
    assert!(l.first_page.named);
    // QEMU 10.0 with a 10.0 machine type sends SWITCHOVER_START before END
    assert!(l.commands.iter().any(|&(_, c)| c == 11), "commands {:?}", l.commands);
    assert_eq!(r.data[l.eof as usize], 0x00);
    assert_eq!(r.data[l.eof as usize + 1], 0x06);
    assert!(l.len > 90 * MIB, "the sweep guest dirtied ~99 MiB: {} bytes", l.len);
}

#[tokio::test]
async fn bad_magic() {
    let r = recorded();
    let mut b = r.data[..TAIL].to_vec();
    b[3] ^= 0x03; // "QEVM" -> "QEVN"
    rust_case("bad-magic", &b, false, &["bad stream magic 0x5145564e"], 0).await;
    let o = qemu_case("bad-magic", &b, false).await;
    assert!(o.log.contains("Not a migration stream"), "QEMU: {o:?}");
    // QEMU's default: the destination process exits
    let o = qemu_case_with("bad-magic-exit", &b, false, true).await;
    assert_eq!(o.status, "exited", "QEMU with exit-on-error: {o:?}");
    assert!(o.log.contains("Not a migration stream"), "QEMU: {o:?}");
}

#[tokio::test]
async fn version_2() {
    let r = recorded();
    let mut b = r.data[..TAIL].to_vec();
    b[4..8].copy_from_slice(&2u32.to_be_bytes());
    rust_case("version-2", &b, false, &["stream version 2", "not supported"], 4).await;
    qemu_case("version-2", &b, false).await;
}

#[tokio::test]
async fn version_4() {
    let r = recorded();
    let mut b = r.data[..TAIL].to_vec();
    b[4..8].copy_from_slice(&4u32.to_be_bytes());
    rust_case("version-4", &b, false, &["unsupported stream version 4"], 4).await;
    qemu_case("version-4", &b, false).await;
}

#[tokio::test]
async fn unknown_section_type() {
    let r = recorded();
    let h = r.layout.header_end;
    let mut b = r.data[..h as usize + TAIL].to_vec();
    assert_eq!(b[h as usize], 0x01, "START expected after the header");
    b[h as usize] = 0x09;
    rust_case("unknown-section-type", &b, false, &["unknown section type 0x09"], h).await;
    qemu_case("unknown-section-type", &b, false).await;
}

#[tokio::test]
async fn unknown_command() {
    let r = recorded();
    let h = r.layout.header_end;
    let b = splice(&r.data, h, 0, &[0x08, 0x00, 0x63, 0x00, 0x00]);
    rust_case("unknown-command", &b, false, &["unknown migration command 99"], h).await;
    qemu_case("unknown-command", &b, false).await;
}

#[tokio::test]
async fn command_length_past_the_end() {
    let r = recorded();
    let h = r.layout.header_end as usize;
    // PING announcing 4 payload bytes, only 2 follow, then the stream ends
    let mut b = r.data[..h].to_vec();
    b.extend_from_slice(&[0x08, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00]);
    rust_case("command-past-end", &b, true, &["truncated", "2 more byte(s)"], h as u64).await;
    qemu_case("command-past-end", &b, true).await;
}

#[tokio::test]
async fn page_address_outside_its_block() {
    let r = recorded();
    let l = &r.layout;
    let p = &l.first_data_page;
    let blen = l.block_len(&p.block);
    assert!(p.addr < blen);
    let mut b = r.data[..(p.off + p.len) as usize + TAIL].to_vec();
    set_be64(&mut b, p.off, blen | p.flags);
    let want = format!("page address {blen:#x} is outside RAMBlock {:?}", p.block);
    rust_case("page-outside-block", &b, false, &[&want], p.off).await;
    let o = qemu_case("page-outside-block", &b, false).await;
    assert!(o.log.contains("Illegal RAM offset"), "QEMU: {o:?}");
}

#[tokio::test]
async fn continue_without_previous_block() {
    let r = recorded();
    let p = &r.layout.first_page;
    assert!(p.named);
    let name_len = r.data[p.off as usize + 8] as usize;
    let word = be64_at(&r.data, p.off) | 0x20;
    // the word with CONTINUE, without the counted name
    let b = splice(&r.data, p.off, 8 + 1 + name_len, &word.to_be_bytes());
    rust_case("continue-no-block", &b, false, &["CONTINUE flag but no previous block"], p.off)
        .await;
    qemu_case("continue-no-block", &b, false).await;
}

#[tokio::test]
async fn mem_size_total_flipped() {
    let r = recorded();
    let l = &r.layout;
    // flip the top set byte of the total: the blocks overshoot it
    let total = l.mem_total;
    let top_byte = 7 - (63 - total.leading_zeros() as u64) / 8; // index in the be64
    let hi = r.data[(l.mem_size + top_byte) as usize];
    let mut b = r.data[..l.start_footer_end as usize + TAIL].to_vec();
    b[(l.mem_size + top_byte) as usize] ^= hi;
    let flipped = be64_at(&b, l.mem_size) & !0xfff;
    assert!(flipped < total);
    let mut sum = 0;
    let bad = l.blocks.iter().find(|e| {
        sum += e.2;
        sum > flipped
    });
    let (eoff, name, _) = bad.unwrap();
    let want = format!("MEM_SIZE: block {name:?}");
    rust_case("mem-size-flipped", &b, false, &[&want, "past the announced total"], *eoff).await;
    qemu_case("mem-size-flipped", &b, false).await;
}

#[tokio::test]
async fn truncated_inside_header() {
    let r = recorded();
    let b = r.data[..6].to_vec();
    rust_case("trunc-header", &b, true, &["truncated"], 0).await;
    qemu_case("trunc-header", &b, true).await;
}

#[tokio::test]
async fn truncated_after_header() {
    let r = recorded();
    let h = r.layout.header_end;
    rust_case(
        "trunc-after-header",
        &r.data[..h as usize],
        true,
        &["truncated", "right after the stream header"],
        h,
    )
    .await;
    qemu_case("trunc-after-header", &r.data[..h as usize], true).await;
}

#[tokio::test]
async fn truncated_inside_section_header() {
    let r = recorded();
    let h = r.layout.header_end;
    rust_case("trunc-section-header", &r.data[..h as usize + 7], true, &["truncated"], h).await;
    qemu_case("trunc-section-header", &r.data[..h as usize + 7], true).await;
}

#[tokio::test]
async fn truncated_after_a_section_footer() {
    let r = recorded();
    let f = r.layout.start_footer_end;
    rust_case(
        "trunc-after-footer",
        &r.data[..f as usize],
        true,
        &["truncated", "1 more byte(s)"],
        f,
    )
    .await;
    qemu_case("trunc-after-footer", &r.data[..f as usize], true).await;
}

#[tokio::test]
async fn truncated_in_the_middle_of_a_page() {
    let r = recorded();
    let p = &r.layout.first_data_page;
    let cut = p.off + p.len / 2;
    let b = &r.data[..cut as usize];
    let need = format!("({} more byte(s) needed)", p.len - p.len / 2);
    let sec = format!("section 'ram' (id {})", r.layout.ram_id);
    rust_case("trunc-mid-page", b, true, &[&sec, "truncated", &need], p.off).await;
    qemu_case("trunc-mid-page", b, true).await;
}

#[tokio::test]
async fn truncated_just_before_eof() {
    let r = recorded();
    let l = &r.layout;
    let o = rust_case(
        "trunc-before-eof",
        &r.data[..l.eof as usize],
        true,
        &["truncated", "before its end (EOF)"],
        l.eof,
    )
    .await;
    assert!(
        names_offset(&o.desc, l.first_full),
        "device state start {} not named: {}",
        l.first_full,
        o.desc
    );
    qemu_case("trunc-before-eof", &r.data[..l.eof as usize], true).await;
}

#[tokio::test]
async fn truncated_inside_the_vmdesc() {
    // The vmdesc is optional (docs/wire-format.md §5.4): QEMU skips it
    // without checking it, so a stream cut inside it completes on both.
    let r = recorded();
    let l = &r.layout;
    let cut = l.eof + 1 + 1 + 4 + 100;
    assert!(cut < l.len);
    for kind in [DestKind::Rust, DestKind::Qemu] {
        let mut d = Dest::start(kind, "trunc-vmdesc").await;
        let (o, _w) = replay_into(&mut d, &r.data[..cut as usize], true).await;
        d.finish().await;
        assert_eq!(o.status, "completed", "{kind:?}: stream cut inside the vmdesc: {o:?}");
    }
}

#[tokio::test]
async fn ping_without_return_path() {
    let r = recorded();
    let h = r.layout.header_end;
    let b = splice(&r.data, h, 0, &[0x08, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01]);
    rust_case("ping-no-rp", &b, false, &["PING", "no return path"], h).await;
    qemu_case("ping-no-rp", &b, false).await;
}
