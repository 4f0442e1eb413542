//! Test guest images built from `images/guest.S` by `build.rs`.
//!
//! All images are 1 MiB raw disks whose first sector is a boot sector that
//! switches to 32-bit protected mode and runs a memory workload; see
//! `images/README.md` for the details and the serial protocol.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// First guest-physical byte either workload touches (1 MiB).
pub const SWEEP_START: u64 = 1 << 20;
/// The sweep never goes past this address (100 MiB), whatever the RAM size.
pub const SWEEP_END_MAX: u64 = 100 << 20;
/// First address the fill workload writes (1 MiB).
pub const FILL_START: u64 = 1 << 20;
/// Sweep granularity: byte 0 of every page of this size is incremented.
pub const PAGE_SIZE: u64 = 4096;
/// Seed (initial xorshift32 state) of the fill workload; the first stored
/// word is the state after one xorshift step.
pub const FILL_SEED: u32 = 0x2545_f491;
/// The sweep prints `B` after this many complete passes.
pub const PASSES_PER_B: u64 = 64;
/// Multiplier of the random workload's LCG over page indices.
pub const RAND_A: u32 = 1_664_525;
/// Increment of the random workload's LCG.
pub const RAND_C: u32 = 1_013_904_223;
/// Byte offset in the image of the random workload's delay word (u32 LE):
/// busy-wait loop iterations after each page touch (0 = full speed).
pub const DELAY_OFFSET: u64 = 496;
/// Size of the built disk images.
pub const IMAGE_SIZE: u64 = 1 << 20;
/// Guest-physical address of the 16-byte info block the guest writes before
/// printing `A`: b"XMIG", mode (u32 LE), top of low RAM (u32), end (u32).
pub const INFO_ADDR: u64 = 0x500;

/// Serial byte printed once the guest is in protected mode.
pub const SERIAL_STARTED: u8 = b'A';
/// Serial byte printed by the sweep every [`PASSES_PER_B`] passes, and by
/// the random workload after every pass.
pub const SERIAL_SWEEP_TICK: u8 = b'B';
/// Serial byte printed by the fill workload when all of RAM has been written.
pub const SERIAL_FILL_DONE: u8 = b'F';

/// Which workload a test guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    /// Increment byte 0 of every page in `[1 MiB, sweep_end)` forever.
    Sweep,
    /// Fill `[1 MiB, top of low RAM)` with xorshift32 data once, then idle.
    Fill,
    /// Increment byte 0 of every page in `[1 MiB, top of low RAM)` forever,
    /// in a pseudo-random order ([`random_order`]), the same every pass.
    Random,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::Sweep, Workload::Fill, Workload::Random];

    /// Absolute path of the 1 MiB raw disk image built by `build.rs`.
    pub fn image_path(self) -> &'static Path {
        match self {
            Workload::Sweep => Path::new(env!("CROSSMIG_SWEEP_IMG")),
            Workload::Fill => Path::new(env!("CROSSMIG_FILL_IMG")),
            Workload::Random => Path::new(env!("CROSSMIG_RANDOM_IMG")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Workload::Sweep => "sweep",
            Workload::Fill => "fill",
            Workload::Random => "random",
        }
    }

    /// The MODE value the image was assembled with (also stored in the
    /// guest's info block).
    pub fn mode(self) -> u32 {
        match self {
            Workload::Sweep => 0,
            Workload::Fill => 1,
            Workload::Random => 2,
        }
    }

    /// The serial byte that says the workload is under way (sweep and
    /// random: a completed pass; fill: all of RAM written).
    pub fn ready_marker(self) -> char {
        match self {
            Workload::Sweep | Workload::Random => SERIAL_SWEEP_TICK as char,
            Workload::Fill => SERIAL_FILL_DONE as char,
        }
    }

    /// rust-dest arguments that make its simulated vCPUs touch RAM the way
    /// this guest does (`--vcpu-pattern`, `--vcpu-range`), so that rust-dest
    /// and QEMU's destination, which runs the migrated guest, fault in the
    /// same order. Nothing when `extra` already chooses a pattern.
    pub fn rust_vcpu_args(self, ram_bytes: u64, extra: &[String]) -> Vec<String> {
        if extra.iter().any(|a| a == "--vcpu-pattern") {
            return Vec::new();
        }
        let (start, end) = self.touched_range(ram_bytes);
        let pattern = match self {
            Workload::Sweep => "sweep",
            Workload::Random => "random",
            // The fill guest idles once written, so QEMU's destination does
            // not fault at all; rust-dest keeps its default (random order over
            // all RAM) so that postcopy still serves page requests, which the
            // fill scenarios check.
            Workload::Fill => return Vec::new(),
        };
        vec![
            "--vcpu-pattern".into(),
            pattern.into(),
            "--vcpu-range".into(),
            format!("{start:#x}-{end:#x}"),
        ]
    }

    /// Guest-physical range `[start, end)` the workload touches in a guest
    /// with `ram_bytes` of RAM (q35).
    pub fn touched_range(self, ram_bytes: u64) -> (u64, u64) {
        match self {
            Workload::Sweep => (SWEEP_START, sweep_end(ram_bytes)),
            Workload::Fill => (FILL_START, fill_end(ram_bytes)),
            Workload::Random => (SWEEP_START, random_end(ram_bytes)),
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown workload {0:?} (expected \"sweep\", \"fill\" or \"random\")")]
pub struct UnknownWorkload(pub String);

impl FromStr for Workload {
    type Err = UnknownWorkload;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sweep" => Ok(Workload::Sweep),
            "fill" => Ok(Workload::Fill),
            "random" => Ok(Workload::Random),
            _ => Err(UnknownWorkload(s.to_string())),
        }
    }
}

/// RAM below 4 GiB on a QEMU q35 machine with `ram_bytes` of RAM (`-m`):
/// q35 puts everything below 4 GiB if it fits under 2.75 GiB, otherwise it
/// keeps only 2 GiB low.
pub fn q35_below_4g(ram_bytes: u64) -> u64 {
    if ram_bytes >= 0xb000_0000 {
        0x8000_0000
    } else {
        ram_bytes
    }
}

/// Top of low RAM exactly as the guest computes it from the CMOS NVRAM
/// (0x34/0x35 in 64 KiB units above 16 MiB, else 0x30/0x31 in KiB above
/// 1 MiB), rounded down to a 4 KiB page.  Assumes q35.
pub fn guest_ram_top(ram_bytes: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let low = q35_below_4g(ram_bytes);
    let top = if low > 16 * MIB {
        let units = ((low - 16 * MIB) >> 16).min(0xffff);
        16 * MIB + (units << 16)
    } else {
        let kib = (low.saturating_sub(MIB) >> 10).min(0xffff);
        MIB + (kib << 10)
    };
    top.min(0xb000_0000) & !(PAGE_SIZE - 1)
}

/// End (exclusive) of the swept range for a q35 guest with `ram_bytes` RAM:
/// `min(100 MiB, top of RAM below 4 GiB)`.
pub fn sweep_end(ram_bytes: u64) -> u64 {
    guest_ram_top(ram_bytes).min(SWEEP_END_MAX)
}

/// End (exclusive) of the filled range for a q35 guest with `ram_bytes` RAM.
pub fn fill_end(ram_bytes: u64) -> u64 {
    guest_ram_top(ram_bytes)
}

/// End (exclusive) of the random workload's range: all low RAM.
pub fn random_end(ram_bytes: u64) -> u64 {
    guest_ram_top(ram_bytes)
}

/// The order in which the random workload touches `pages` pages (indices
/// from 0 = [`SWEEP_START`]) in every pass: the states of the LCG
/// `x -> (RAND_A * x + RAND_C) mod 2^k` after 1, 2, ..., 2^k steps from 0,
/// where 2^k is `pages` rounded up to a power of two, skipping states that
/// are not a page. Full period (Hull–Dobell), so every page exactly once.
pub fn random_order(pages: u64) -> impl Iterator<Item = u64> {
    let mask = pages.max(1).next_power_of_two() - 1;
    let mut x: u64 = 0;
    (0..=mask).filter_map(move |_| {
        x = (x.wrapping_mul(RAND_A as u64).wrapping_add(RAND_C as u64)) & mask;
        (x < pages).then_some(x)
    })
}

/// Set the random workload's busy-wait iterations per page touch in an
/// image file (a copy of [`Workload::Random`]'s image).
pub fn patch_random_delay(image: &Path, iterations: u32) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(image)?;
    f.seek(SeekFrom::Start(DELAY_OFFSET))?;
    f.write_all(&iterations.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn parse_and_name() {
        for w in Workload::ALL {
            assert_eq!(w.name().parse::<Workload>().unwrap(), w);
            assert_eq!(w.to_string(), w.name());
        }
        assert_eq!("Sweep".parse::<Workload>().unwrap(), Workload::Sweep);
        assert!("foo".parse::<Workload>().is_err());
    }

    #[test]
    fn images_exist_and_are_bootable() {
        for w in Workload::ALL {
            let p = w.image_path();
            assert!(p.is_absolute(), "{}", p.display());
            let data = std::fs::read(p).unwrap();
            assert_eq!(data.len() as u64, IMAGE_SIZE);
            assert_eq!(&data[510..512], &[0x55, 0xaa]);
        }
        let a = std::fs::read(Workload::Sweep.image_path()).unwrap();
        let b = std::fs::read(Workload::Fill.image_path()).unwrap();
        assert_ne!(a[..512], b[..512]);
    }

    #[test]
    fn random_order_is_a_permutation_that_jumps() {
        for pages in [1u64, 2, 3, 1000, 25_344, 65_280] {
            let order: Vec<u64> = random_order(pages).collect();
            assert_eq!(order.len() as u64, pages, "{pages} pages");
            let mut seen = vec![false; pages as usize];
            for &p in &order {
                assert!(!seen[p as usize], "page {p} twice");
                seen[p as usize] = true;
            }
        }
        // Not address order: consecutive touches are far apart on average.
        let o: Vec<u64> = random_order(65_280).collect();
        let mean_jump =
            o.windows(2).map(|w| w[0].abs_diff(w[1])).sum::<u64>() / (o.len() as u64 - 1);
        assert!(mean_jump > 10_000, "mean jump {mean_jump}");
    }

    #[test]
    fn random_delay_patch_lands_on_the_delay_word() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("r.img");
        std::fs::copy(Workload::Random.image_path(), &img).unwrap();
        let before = std::fs::read(&img).unwrap();
        assert_eq!(&before[DELAY_OFFSET as usize..DELAY_OFFSET as usize + 4], &[0, 0, 0, 0]);
        patch_random_delay(&img, 0x01020304).unwrap();
        let after = std::fs::read(&img).unwrap();
        assert_eq!(&after[DELAY_OFFSET as usize..DELAY_OFFSET as usize + 4], &[4, 3, 2, 1]);
        assert_eq!(after.len(), before.len());
        assert_eq!(&after[510..512], &[0x55, 0xaa]);
    }

    #[test]
    fn ends() {
        assert_eq!(sweep_end(256 * MIB), 100 * MIB);
        assert_eq!(sweep_end(64 * MIB), 64 * MIB);
        assert_eq!(sweep_end(8 * MIB), 8 * MIB);
        assert_eq!(fill_end(1024 * MIB), 1024 * MIB);
        assert_eq!(fill_end(4096 * MIB), 2048 * MIB);
        assert_eq!(fill_end(2816 * MIB - 1), 2816 * MIB - 64 * 1024);
        assert_eq!(fill_end(100 * MIB + 1000), 100 * MIB);
    }
}
