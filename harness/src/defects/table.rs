//! The defects table: one row per catalogue entry with where it is
//! injected, the bug class, and what caught it in each column (a)–(d) (see
//! `runner.rs`), as text and as JSON, with the totals per column.

use serde::Serialize;

use super::catalogue::Side;
use super::runner::{DefectResult, RunOutcome};

/// One cell: caught by which check, missed, or not run.
fn cell(o: Option<&RunOutcome>) -> String {
    match o {
        None => "-".into(),
        Some(o) if o.caught() => format!("caught: {}", o.failed.join(", ")),
        Some(_) => "MISSED".into(),
    }
}

fn alone(o: Option<&RunOutcome>) -> String {
    match o {
        None => "-".into(),
        Some(o) if !o.completed => "fails".into(),
        Some(_) => "completes silently".into(),
    }
}

fn invariant(o: Option<&RunOutcome>) -> String {
    match o {
        None => "-".into(),
        Some(o) if !o.completed => "caught (no completion)".into(),
        Some(o) if o.invariant_ok == Some(false) => "caught (invariant broken)".into(),
        // A stream script has no guest: nothing but the model sees memory.
        Some(o) if !o.guest => "missed (no guest: completes)".into(),
        Some(_) => "missed".into(),
    }
}

/// The row of one result.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub side: String,
    pub class: String,
    /// QEMU commit or bug report of the class ("" when none is known).
    pub reference: String,
    pub a_crossmig_rust_dest: String,
    pub b_crossmig_qemu_dest: String,
    pub c_qemu_dest_alone: String,
    pub d_invariant_only: String,
    pub error: Option<String>,
}

pub fn row(r: &DefectResult) -> Row {
    // (d) on the run into QEMU's destination where there is one.
    let inv = if r.defect.side == Side::Source { r.qemu.as_ref() } else { r.rust.as_ref() };
    Row {
        name: r.defect.name.clone(),
        side: format!("{:?}", r.defect.side).to_lowercase(),
        class: r.defect.class.clone(),
        reference: r.defect.reference.clone(),
        a_crossmig_rust_dest: cell(r.rust.as_ref()),
        b_crossmig_qemu_dest: cell(r.qemu.as_ref()),
        c_qemu_dest_alone: alone(r.qemu.as_ref()),
        d_invariant_only: invariant(inv),
        error: r.error.clone(),
    }
}

/// Totals: defects run, caught by crossmig (a and b where run), failed by
/// QEMU's destination alone, caught by the invariant alone.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub defects: usize,
    pub crossmig: usize,
    pub qemu_runs: usize,
    pub qemu_alone: usize,
    pub invariant_only: usize,
}

pub fn totals(rs: &[DefectResult]) -> Totals {
    let mut t = Totals { defects: rs.len(), ..Totals::default() };
    for r in rs {
        t.crossmig += usize::from(r.crossmig_caught());
        if let Some(q) = &r.qemu {
            t.qemu_runs += 1;
            t.qemu_alone += usize::from(!q.completed);
        }
        let inv = if r.defect.side == Side::Source { r.qemu.as_ref() } else { r.rust.as_ref() };
        t.invariant_only += usize::from(inv.is_some_and(|o| o.invariant_caught()));
    }
    t
}

/// The table as Markdown (what the README shows).
pub fn markdown(rs: &[DefectResult]) -> String {
    let mut s = String::from(
        "| defect | injected | bug class | (a) crossmig vs rust-dest | (b) crossmig vs QEMU dest | (c) QEMU dest alone | (d) guest invariant only |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rs {
        let w = row(r);
        let err = w.error.as_deref().map(|e| format!(" **error: {e}**")).unwrap_or_default();
        let class = match w.reference.as_str() {
            "" => w.class.clone(),
            r => format!("{} ({r})", w.class),
        };
        s += &format!(
            "| {}{err} | {} | {} | {} | {} | {} | {} |\n",
            w.name,
            w.side,
            class,
            w.a_crossmig_rust_dest,
            w.b_crossmig_qemu_dest,
            w.c_qemu_dest_alone,
            w.d_invariant_only
        );
    }
    let t = totals(rs);
    s += &format!(
        "\ncrossmig caught {}/{}; QEMU's destination alone failed {}/{} of the runs into it (source-side defects; a destination-side defect lives in rust-dest only); the guest invariant alone caught {}/{}.\n",
        t.crossmig, t.defects, t.qemu_alone, t.qemu_runs, t.invariant_only, t.defects
    );
    s
}

/// The JSON report.
#[derive(Serialize)]
pub struct Report<'a> {
    pub rows: Vec<Row>,
    pub totals: Totals,
    pub results: &'a [DefectResult],
}
