//! Test guest images built from `images/guest.S` by `build.rs`.
//!
//! Both images are 1 MiB raw disks whose first sector is a boot sector that
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
/// Size of the built disk images.
pub const IMAGE_SIZE: u64 = 1 << 20;
/// Guest-physical address of the 16-byte info block the guest writes before
/// printing `A`: b"XMIG", mode (u32 LE), top of low RAM (u32), end (u32).
pub const INFO_ADDR: u64 = 0x500;

/// Serial byte printed once the guest is in protected mode.
pub const SERIAL_STARTED: u8 = b'A';
/// Serial byte printed by the sweep every [`PASSES_PER_B`] passes.
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
}

impl Workload {
    pub const ALL: [Workload; 2] = [Workload::Sweep, Workload::Fill];

    /// Absolute path of the 1 MiB raw disk image built by `build.rs`.
    pub fn image_path(self) -> &'static Path {
        match self {
            Workload::Sweep => Path::new(env!("CROSSMIG_SWEEP_IMG")),
            Workload::Fill => Path::new(env!("CROSSMIG_FILL_IMG")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Workload::Sweep => "sweep",
            Workload::Fill => "fill",
        }
    }

    /// The MODE value the image was assembled with (also stored in the
    /// guest's info block).
    pub fn mode(self) -> u32 {
        match self {
            Workload::Sweep => 0,
            Workload::Fill => 1,
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown workload {0:?} (expected \"sweep\" or \"fill\")")]
pub struct UnknownWorkload(pub String);

impl FromStr for Workload {
    type Err = UnknownWorkload;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sweep" => Ok(Workload::Sweep),
            "fill" => Ok(Workload::Fill),
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
