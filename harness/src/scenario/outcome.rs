//! What running a variant produced: one [`StepResult`] per executed step and
//! the variant's [`Outcome`] (serialized into JSON reports).

use serde::Serialize;
use serde_json::Value;

use crate::drive::session::Sample;

/// One executed step.
#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub index: usize,
    pub step: String,
    pub ok: bool,
    pub ms: u64,
    pub detail: String,
}

/// The result of one variant.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub name: String,
    pub file: String,
    pub ok: bool,
    pub error: Option<String>,
    pub ms: u64,
    pub steps: Vec<StepResult>,
    /// `query-migrate` of both sides over time (migration scenarios).
    pub samples: Vec<Sample>,
    /// Stream scenarios: each destination's verdict and details.
    pub destinations: Vec<Value>,
}
