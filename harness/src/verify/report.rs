//! The result of one check: a name, pass or fail, and a detail line. Every
//! verification in `verify/` produces [`Check`]s; flows collect them.

use std::fmt;

use serde::Serialize;

/// One named check of a summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    pub fn new(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
        Check { name: name.into(), ok, detail: detail.into() }
    }

    /// A check that only reports (always passes).
    pub fn info(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(name, true, detail)
    }
}

impl fmt::Display for Check {
    /// `[ ok ] name: detail` or `[FAIL] name: detail`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}", if self.ok { " ok " } else { "FAIL" }, self.name, self.detail)
    }
}

/// Whether every check passed.
pub fn all_ok(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display() {
        assert_eq!(Check::new("a", false, "b").to_string(), "[FAIL] a: b");
        assert_eq!(Check::info("a", "b").to_string(), "[ ok ] a: b");
        assert!(all_ok(&[Check::info("x", "")]));
    }
}
