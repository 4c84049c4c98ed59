//! Running untrusted code (invariant 8): only ever inside a sandbox, and
//! judged only from evidence the code cannot forge.
//!
//! A [`Sandbox`] runs the runtime's Python with arguments and stdin in a fresh,
//! isolated environment under [`Limits`], and returns what came out. The
//! [`harness`] decides what runs (the trusted checker in `sandbox/harness.py`)
//! and turns its authenticated report into a [`crate::report::TestReport`].
//!
//! # Layout
//! - [`process`]: bubblewrap, one process tree per run (the default).
//! - [`cgroup`]: per-run cgroups for the process backend (memory, pids).
//! - [`harness`]: the request, the report, and comparing test-case results.

pub mod cgroup;
pub mod harness;
pub mod process;

use std::time::Duration;

use futures::future::BoxFuture;

/// Resource limits of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall clock; the whole process tree is killed after it.
    pub timeout: Duration,
    pub memory_mb: u64,
    /// Processes and threads.
    pub pids: u64,
    /// Size of the writable work dir (and of `/tmp`).
    pub tmpfs_mb: u64,
    /// Bytes kept per output stream; the rest is discarded.
    pub output_bytes: usize,
}

impl Limits {
    pub fn from_settings(s: &crate::config::SandboxSettings) -> Limits {
        Limits {
            timeout: s.timeout,
            memory_mb: s.memory_mb,
            pids: s.pids,
            tmpfs_mb: s.tmpfs_mb,
            output_bytes: (s.output_kb * 1024) as usize,
        }
    }
}

/// What came out of a run.
#[derive(Debug, Clone, Default)]
pub struct RunOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Killed at the wall-clock limit.
    pub timed_out: bool,
    /// The memory limit was hit (where the backend can tell).
    pub oom_killed: bool,
    /// More output than `output_bytes` was produced and discarded.
    pub truncated: bool,
    pub duration: Duration,
}

/// The sandbox could not do its job; nothing is known about the code.
/// Retried under its own limit, never spending an attempt (invariant 5).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox unavailable: {0}")]
    Unavailable(String),
    #[error("sandbox harness failed: {0}")]
    Harness(String),
}

/// A place where untrusted code can run.
pub trait Sandbox: Send + Sync {
    /// `process` or `docker`.
    fn name(&self) -> &'static str;

    /// Runs the sandbox runtime's `python3` with `args`, feeding `stdin`.
    fn run_python<'a>(
        &'a self,
        args: &'a [String],
        stdin: Vec<u8>,
        limits: &'a Limits,
    ) -> BoxFuture<'a, Result<RunOutput, SandboxError>>;
}
