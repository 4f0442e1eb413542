//! Build the crossmig test guests from `images/guest.S`.
//!
//! The boot sector is assembled three times (MODE=0 -> sweep.img, MODE=1 ->
//! fill.img, MODE=2 -> random.img) with GNU binutils, padded to a 1 MiB raw
//! disk image and the absolute paths are exported to the crate as
//! `CROSSMIG_SWEEP_IMG`, `CROSSMIG_FILL_IMG` and `CROSSMIG_RANDOM_IMG` (read
//! with `env!` in `src/images.rs`).
//!
//! Tools can be overridden with the env vars `CROSSMIG_AS`, `CROSSMIG_LD`
//! and `CROSSMIG_OBJCOPY`.

use std::env;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

/// SeaBIOS does not like disks smaller than this; also a nice round size.
const IMAGE_SIZE: usize = 1 << 20;
const SECTOR: usize = 512;

fn tool(var: &str, default: &str) -> String {
    println!("cargo:rerun-if-env-changed={var}");
    env::var(var).unwrap_or_else(|_| default.to_string())
}

fn run(mut cmd: Command, what: &str) {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "crossmig build: `{prog}` not found while {what}. The test guest \
             images are assembled from images/guest.S with GNU binutils \
             (as, ld, objcopy): install binutils (e.g. `apt-get install binutils`)."
        ),
        Err(e) => panic!("crossmig build: failed to run `{prog}` while {what}: {e}"),
    };
    if !out.status.success() {
        panic!(
            "crossmig build: {what} failed ({}): {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
}

fn build_image(src: &Path, out_dir: &Path, name: &str, mode: u32) -> PathBuf {
    let as_ = tool("CROSSMIG_AS", "as");
    let ld = tool("CROSSMIG_LD", "ld");
    let objcopy = tool("CROSSMIG_OBJCOPY", "objcopy");

    let obj = out_dir.join(format!("{name}.o"));
    let elf = out_dir.join(format!("{name}.elf"));
    let bin = out_dir.join(format!("{name}.bin"));
    let img = out_dir.join(format!("{name}.img"));

    let mut c = Command::new(&as_);
    c.arg("--32").arg("--defsym").arg(format!("MODE={mode}")).arg("-o").arg(&obj).arg(src);
    run(c, &format!("assembling {name} (MODE={mode})"));

    let mut c = Command::new(&ld);
    c.args(["-m", "elf_i386", "-Ttext=0x7c00", "-e", "_start", "-o"]).arg(&elf).arg(&obj);
    run(c, &format!("linking {name}"));

    // objcopy only .text so stray note sections can never end up in the image.
    let mut c = Command::new(&objcopy);
    c.args(["-O", "binary", "-j", ".text"]).arg(&elf).arg(&bin);
    run(c, &format!("extracting the {name} boot sector"));

    let mut data = fs::read(&bin).unwrap_or_else(|e| panic!("reading {}: {e}", bin.display()));
    assert_eq!(
        data.len(),
        SECTOR,
        "crossmig build: {name} boot sector is {} bytes, expected exactly {SECTOR}",
        data.len()
    );
    assert_eq!(
        &data[510..512],
        &[0x55, 0xaa],
        "crossmig build: {name} boot sector lacks the 0x55 0xAA signature"
    );
    data.resize(IMAGE_SIZE, 0);

    // Write atomically so a concurrently running test never sees a short image.
    let tmp = out_dir.join(format!("{name}.img.tmp"));
    fs::write(&tmp, &data).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    fs::rename(&tmp, &img).unwrap_or_else(|e| panic!("renaming to {}: {e}", img.display()));
    for p in [&obj, &elf] {
        let _ = fs::remove_file(p);
    }
    img
}

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let src = manifest.join("..").join("images").join("guest.S");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../images/guest.S");

    if !src.exists() {
        panic!("crossmig build: guest source not found at {}", src.display());
    }
    let src = src.canonicalize().expect("canonicalize guest.S");

    let sweep = build_image(&src, &out_dir, "sweep", 0);
    let fill = build_image(&src, &out_dir, "fill", 1);
    let random = build_image(&src, &out_dir, "random", 2);

    println!("cargo:rustc-env=CROSSMIG_SWEEP_IMG={}", sweep.display());
    println!("cargo:rustc-env=CROSSMIG_FILL_IMG={}", fill.display());
    println!("cargo:rustc-env=CROSSMIG_RANDOM_IMG={}", random.display());
}
