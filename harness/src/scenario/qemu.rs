//! Which QEMU binaries and machine type a variant uses, and whether they are
//! installed here.

use anyhow::{bail, Context, Result};

use super::file::{plain, Variant};
use crate::vm::qemu::QemuBinary;

/// Resolve a `qemu` setting: none/"system" → the host QEMU (or
/// `$CROSSMIG_QEMU`), a version series → the provisioned build, else a path.
pub fn resolve_qemu(spec: Option<&str>) -> Result<QemuBinary> {
    match spec {
        None | Some("system") => QemuBinary::system(),
        Some(v) if v.chars().next().is_some_and(|c| c.is_ascii_digit()) && !v.contains('/') => {
            if let Ok(sys) = QemuBinary::system() {
                if let Ok(got) = sys.version() {
                    if crate::provision::series_matches(v, got) {
                        return Ok(sys);
                    }
                }
            }
            crate::provision::binary(v).with_context(|| {
                format!("QEMU {v} is not installed (run `crossmig qemu install {v}`)")
            })
        }
        Some(p) => {
            let b = QemuBinary::new(p);
            if !b.path.exists() {
                bail!("QEMU binary {p} does not exist");
            }
            Ok(b)
        }
    }
}

/// The source QEMU of a variant: `source.qemu`, else the `qemu` axis.
pub fn source_qemu(v: &Variant) -> Option<String> {
    v.spec.source.qemu.clone().or_else(|| v.value("qemu").map(plain))
}

/// A machine type both binaries agree on: the oldest versioned q35 type
/// when the versions differ or 7.2 is involved, else the `q35` alias.
pub fn common_machine(a: &QemuBinary, b: &QemuBinary) -> String {
    let (va, vb) = (a.version().ok(), b.version().ok());
    match (va, vb) {
        (Some(x), Some(y)) => {
            let old = x.min(y);
            if x != y || (old.0, old.1) == (7, 2) {
                format!("pc-q35-{}.{}", old.0, old.1)
            } else {
                "q35".into()
            }
        }
        _ => "q35".into(),
    }
}

/// Why a variant cannot run here (a QEMU it names is missing), if so.
pub fn missing_prerequisite(v: &Variant) -> Option<String> {
    let src = source_qemu(v);
    for q in [src.as_deref(), v.spec.dest.qemu.as_deref()] {
        if let Err(e) = resolve_qemu(q) {
            return Some(format!("{e:#}"));
        }
    }
    None
}

/// Why this machine cannot run the variant whatever is installed (huge
/// pages it cannot provide), or `None`. Such variants are skipped, also
/// under CI.
pub fn machine_lacks(v: &Variant) -> Option<String> {
    let hp = v.spec.source.hugepages?;
    // Source and destination each back all of guest RAM.
    let pages = 2 * v.spec.source.memory / hp;
    crate::vm::hugepages::unavailable(hp, pages)
}
