//! Fault points for tests, compiled only with the `fault-injection` feature
//! (never a default): they let a test make a worker die or panic exactly
//! while it works on one job, to check how crashes are detected and blamed.
//!
//! Each point is armed by a variable naming a marker; an answer from the
//! model that contains the marker trips it while the worker validates it:
//! - `KILN_FAULT_ABORT_MARKER`: the worker process aborts (a poison job);
//! - `KILN_FAULT_PANIC_MARKER`: the job's pipeline panics.

use std::sync::OnceLock;

fn marker(var: &'static str, cell: &'static OnceLock<Option<String>>) -> Option<&'static str> {
    cell.get_or_init(|| std::env::var(var).ok().filter(|m| !m.is_empty()))
        .as_deref()
}

/// Called as the worker starts validating a model's answer.
pub fn while_validating(answer: &str) {
    static ABORT: OnceLock<Option<String>> = OnceLock::new();
    static PANIC: OnceLock<Option<String>> = OnceLock::new();
    if marker("KILN_FAULT_ABORT_MARKER", &ABORT).is_some_and(|m| answer.contains(m)) {
        eprintln!("fault injection: aborting the worker process while validating a poisoned answer");
        std::process::abort();
    }
    assert!(
        !marker("KILN_FAULT_PANIC_MARKER", &PANIC).is_some_and(|m| answer.contains(m)),
        "fault injection: the answer carries the panic marker"
    );
}
