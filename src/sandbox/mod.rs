//! Running untrusted code (invariant 8): only ever inside a sandbox, and
//! judged only from evidence the code cannot forge.
//!
//! A [`Sandbox`] runs the runtime's Python with arguments and stdin in a fresh,
//! isolated environment under [`RunLimits`], and returns what came out. The
//! [`harness`] decides what runs (the trusted checker in `sandbox/harness.py`)
//! and turns its authenticated report into a [`crate::report::TestReport`].
//!
//! Both backends give the same guarantees, which the hostile-input suite
//! (`tests/sandbox_hostile.rs`) checks against each: no network, a read-only
//! system and runtime, a size-limited writable `/work` and `/tmp`, no
//! capabilities and no way to gain any, an unprivileged user (65534), an
//! environment that holds nothing of the worker's, limits on memory,
//! processes, file size and open files, a wall clock after which every
//! process of the run is killed, and output kept only up to a cap. Nothing
//! of a run outlives it: its processes are gone when `run_python` returns
//! (moments after, when its future is dropped), and its cgroups or its
//! container (with the container's mounts) are removed right after, in the
//! background.
//!
//! # Layout
//! - [`process`]: bubblewrap, one process tree per run (the default).
//! - [`cgroup`]: per-run cgroups for the process backend (memory, pids).
//! - [`docker`]: a container per run through the Docker Engine API, taken
//!   from a small pool of started, never-used containers.
//! - [`harness`]: the request, the report, and comparing test-case results.

pub mod cgroup;
pub mod docker;
pub mod harness;
pub mod process;

use std::collections::VecDeque;
use std::time::Duration;

use futures::future::BoxFuture;

/// Resource limits of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
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

impl RunLimits {
    pub fn from_settings(s: &crate::config::SandboxSettings) -> RunLimits {
        RunLimits {
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
    /// The first `output_bytes` of stdout.
    pub stdout: Vec<u8>,
    /// When stdout was longer: its last `output_bytes` (after those in
    /// `stdout`), where the harness's report is even if the code under test
    /// flooded the stream first.
    pub stdout_tail: Vec<u8>,
    /// The first `output_bytes` of stderr.
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

impl SandboxError {
    /// The fault's class as recorded on the attempt (`sandbox_faults`).
    pub fn class(&self) -> &'static str {
        match self {
            SandboxError::Unavailable(_) => "unavailable",
            SandboxError::Harness(_) => "harness",
        }
    }
}

/// The configured backend, ready to run.
pub async fn build(settings: &crate::config::SandboxSettings) -> Result<std::sync::Arc<dyn Sandbox>, SandboxError> {
    Ok(match settings.kind {
        crate::config::SandboxKind::Process => {
            let sandbox = process::ProcessSandbox::with_pool(&settings.runtime, settings.slots)?;
            // A worker's first jobs should not wait for the servers to warm up.
            sandbox.prewarm();
            std::sync::Arc::new(sandbox)
        }
        crate::config::SandboxKind::Docker => std::sync::Arc::new(
            docker::DockerSandbox::connect(&settings.image, &RunLimits::from_settings(settings), settings.slots)
                .await?,
        ),
    })
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
        limits: &'a RunLimits,
    ) -> BoxFuture<'a, Result<RunOutput, SandboxError>>;

    /// Runs the trusted harness ([`harness::HARNESS`]) with `request` on
    /// stdin. `hint` names the role the run starts with (`c` test cases,
    /// `t` pytest, `-` anything else), so a backend that keeps warm
    /// interpreters can fork that role before the request arrives. By
    /// default, a cold run of the harness.
    fn run_harness<'a>(
        &'a self,
        request: Vec<u8>,
        _hint: &'a str,
        limits: &'a RunLimits,
    ) -> BoxFuture<'a, Result<RunOutput, SandboxError>> {
        Box::pin(async move { self.run_python(&harness::harness_args(), request, limits).await })
    }

    /// Waits, up to `within`, until what the backend keeps ready ahead of
    /// runs is ready (the process backend's warm servers), so that a worker
    /// takes its first jobs warm rather than spending their time on it.
    /// False when it is not ready in time or could not be made ready (the
    /// runs then start it themselves). By default ready at once.
    fn warmed(&self, _within: Duration) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }

    /// Discards what the backend prepared ahead (ready processes or
    /// containers) and waits until it is gone, so a stopping worker leaves
    /// nothing behind. Runs started after this fail as unavailable or start
    /// unprepared, depending on the backend.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// A sandbox whose runs proceed at most `slots` at once; the rest wait for
/// a slot before their run (and its wall clock) starts. A worker holds many
/// jobs that mostly wait for the model; bounding their sandbox runs by the
/// machine's cores keeps the CPU from being oversubscribed, so a run's time
/// does not depend on how many jobs the worker holds.
pub struct Slots {
    inner: std::sync::Arc<dyn Sandbox>,
    permits: tokio::sync::Semaphore,
}

impl Slots {
    pub fn new(inner: std::sync::Arc<dyn Sandbox>, slots: usize) -> Slots {
        Slots {
            inner,
            permits: tokio::sync::Semaphore::new(slots.max(1)),
        }
    }
}

impl Slots {
    /// Waits for a free slot; held until the permit is dropped.
    async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, SandboxError> {
        self.permits
            .acquire()
            .await
            .map_err(|_| SandboxError::Unavailable("the sandbox is shutting down".into()))
    }
}

/// Records a run in [`crate::metrics`] by backend and outcome.
fn count_run(backend: &'static str, result: &Result<RunOutput, SandboxError>, took: Duration) {
    let outcome = match result {
        Err(_) => "fault",
        Ok(out) if out.timed_out => "timed_out",
        Ok(out) if out.oom_killed => "oom_killed",
        Ok(out) if out.signal.is_some() => "signalled",
        Ok(out) if out.exit_code == Some(0) => "passed",
        Ok(_) => "exited",
    };
    let labels = crate::metrics::SandboxLabels { backend, outcome };
    let m = &*crate::metrics::METRICS;
    m.sandbox_runs.get_or_create(&labels).inc();
    m.sandbox_run_seconds.get_or_create(&labels).observe(took.as_secs_f64());
}

impl Sandbox for Slots {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn run_python<'a>(
        &'a self,
        args: &'a [String],
        stdin: Vec<u8>,
        limits: &'a RunLimits,
    ) -> BoxFuture<'a, Result<RunOutput, SandboxError>> {
        Box::pin(async move {
            let _slot = self.slot().await?;
            let started = std::time::Instant::now();
            let result = self.inner.run_python(args, stdin, limits).await;
            count_run(self.inner.name(), &result, started.elapsed());
            result
        })
    }

    fn run_harness<'a>(
        &'a self,
        request: Vec<u8>,
        hint: &'a str,
        limits: &'a RunLimits,
    ) -> BoxFuture<'a, Result<RunOutput, SandboxError>> {
        Box::pin(async move {
            let _slot = self.slot().await?;
            let started = std::time::Instant::now();
            let result = self.inner.run_harness(request, hint, limits).await;
            count_run(self.inner.name(), &result, started.elapsed());
            result
        })
    }

    fn warmed(&self, within: Duration) -> BoxFuture<'_, bool> {
        self.inner.warmed(within)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.permits.close();
        self.inner.shutdown()
    }
}

/// Whether `name` (of a cgroup, a directory) is `<prefix><pid>-…` and
/// process `pid` is gone: how the process backend recognises what a worker
/// that died left behind.
pub(crate) fn left_by_dead_process(name: &std::ffi::OsStr, prefix: &str) -> bool {
    name.to_str()
        .and_then(|n| n.strip_prefix(prefix))
        .and_then(|n| n.split('-').next())
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Keeps the head of a stream and, optionally, its tail: the first `cap`
/// bytes and the last `cap` bytes after them; everything between is counted
/// and dropped, so memory stays bounded however much a run prints.
#[derive(Debug)]
pub(crate) struct OutputCapture {
    cap: usize,
    keep_tail: bool,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    dropped: u64,
}

impl OutputCapture {
    pub(crate) fn new(cap: usize, keep_tail: bool) -> OutputCapture {
        OutputCapture {
            cap,
            keep_tail,
            head: Vec::new(),
            tail: VecDeque::new(),
            dropped: 0,
        }
    }

    pub(crate) fn push(&mut self, mut bytes: &[u8]) {
        let room = self.cap.saturating_sub(self.head.len());
        let (into_head, rest) = bytes.split_at(room.min(bytes.len()));
        self.head.extend_from_slice(into_head);
        bytes = rest;
        if bytes.is_empty() {
            return;
        }
        if !self.keep_tail {
            self.dropped += bytes.len() as u64;
            return;
        }
        if bytes.len() >= self.cap {
            self.dropped += (self.tail.len() + bytes.len() - self.cap) as u64;
            self.tail.clear();
            bytes = &bytes[bytes.len() - self.cap..];
        }
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.cap);
        self.tail.drain(..overflow);
        self.dropped += overflow as u64;
        self.tail.extend(bytes);
    }

    /// More came than was kept (in the head, or in head and tail).
    pub(crate) fn truncated(&self) -> bool {
        self.dropped > 0 || !self.tail.is_empty()
    }

    /// `(head, tail, truncated)`.
    pub(crate) fn finish(self) -> (Vec<u8>, Vec<u8>, bool) {
        let truncated = self.truncated();
        (self.head, self.tail.into(), truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::OutputCapture;

    #[test]
    fn a_capture_keeps_the_head_and_the_tail_of_a_flood() {
        let mut c = OutputCapture::new(4, true);
        c.push(b"KILN");
        for _ in 0..1000 {
            c.push(b"noise noise ");
        }
        c.push(b"RE");
        c.push(b"PORT");
        let (head, tail, truncated) = c.finish();
        assert_eq!(
            (head.as_slice(), tail.as_slice(), truncated),
            (&b"KILN"[..], &b"PORT"[..], true)
        );
    }

    #[test]
    fn a_capture_without_a_tail_drops_what_is_over_the_cap() {
        let mut c = OutputCapture::new(3, false);
        c.push(b"ab");
        assert!(!c.truncated());
        c.push(b"cdef");
        let (head, tail, truncated) = c.finish();
        assert_eq!((head.as_slice(), tail.len(), truncated), (&b"abc"[..], 0, true));
    }

    #[test]
    fn output_that_fits_is_kept_whole() {
        let mut c = OutputCapture::new(8, true);
        c.push(b"12345678");
        let (head, tail, truncated) = c.finish();
        assert_eq!((head.as_slice(), tail.len(), truncated), (&b"12345678"[..], 0, false));
    }
}
