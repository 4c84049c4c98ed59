//! Fault points for tests, compiled only with the `fault-injection` feature
//! (never a default): they let a test make a worker die or panic exactly
//! while it works on one job's model-controlled data, to check how crashes
//! are detected and blamed.
//!
//! Each point is armed by a variable naming a marker, and trips where the
//! worker first meets the marker: in the model's answer while it validates
//! it, or in a sandbox run's output (what the model's code printed) while it
//! reads the run's report:
//! - `KILN_FAULT_ABORT_MARKER`: the worker process aborts (a poison job);
//! - `KILN_FAULT_PANIC_MARKER`: the job's pipeline panics.

use std::sync::OnceLock;

use crate::sandbox::RunOutput;

fn marker(var: &'static str, cell: &'static OnceLock<Option<String>>) -> Option<&'static str> {
    cell.get_or_init(|| std::env::var(var).ok().filter(|m| !m.is_empty()))
        .as_deref()
}

static ABORT: OnceLock<Option<String>> = OnceLock::new();
static PANIC: OnceLock<Option<String>> = OnceLock::new();

fn trip(data: &[&[u8]], while_doing: &str) {
    let carries = |m: &str| data.iter().any(|d| d.windows(m.len()).any(|w| w == m.as_bytes()));
    if marker("KILN_FAULT_ABORT_MARKER", &ABORT).is_some_and(carries) {
        eprintln!("fault injection: aborting the worker process while {while_doing}");
        std::process::abort();
    }
    assert!(
        !marker("KILN_FAULT_PANIC_MARKER", &PANIC).is_some_and(carries),
        "fault injection: the panic marker, while {while_doing}"
    );
}

/// Called as the worker starts validating a model's answer.
pub fn while_validating(answer: &str) {
    trip(&[answer.as_bytes()], "validating a poisoned answer");
}

/// Called as the worker starts reading a sandbox run's report.
pub fn while_reporting(output: &RunOutput) {
    trip(
        &[&output.stdout, &output.stdout_tail, &output.stderr],
        "reading a poisoned sandbox report",
    );
}
