//! `CROSSMIG_DEFECT` at start-up (issue 13, rust-dest/src/defects.rs): a
//! normal build ignores it with a warning and behaves correctly; a
//! `seeded-defects` build names the active defect and refuses an unknown one.

use std::process::Command;

fn run(defect: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rust-dest"))
        .arg("--version")
        .env("CROSSMIG_DEFECT", defect)
        .output()
        .expect("run rust-dest");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[cfg(not(feature = "seeded-defects"))]
#[test]
fn a_normal_build_ignores_crossmig_defect() {
    for v in ["skip-discard", "no-such-defect"] {
        let (code, err) = run(v);
        assert_eq!(code, Some(0), "{err}");
        assert!(
            err.contains(&format!("CROSSMIG_DEFECT={v} ignored"))
                && err.contains("no seeded defects"),
            "{err}"
        );
    }
    let (code, err) = run("");
    assert_eq!(code, Some(0));
    assert!(err.is_empty(), "{err}");
}

#[cfg(feature = "seeded-defects")]
#[test]
fn a_defect_build_names_the_defect_and_refuses_unknown_ones() {
    let (code, err) = run("skip-discard");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("SEEDED DEFECT ACTIVE: skip-discard"), "{err}");
    let (code, err) = run("no-such-defect");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("CROSSMIG_DEFECT=\"no-such-defect\" names no seeded defect")
            && err.contains("never-wake"),
        "{err}"
    );
}
