//! The process backend: one bubblewrap sandbox per run.
//!
//! Each run gets new user, pid, network, ipc, uts and cgroup namespaces; the
//! system (`/usr`) and the Python runtime read-only; a synthetic `/etc`; a
//! size-limited tmpfs as `/work` and `/tmp`; a cleared environment; no
//! capabilities; `--die-with-parent` so a dying worker takes its sandboxes
//! with it. Limits: a per-run cgroup (memory, pids) where one can be made,
//! rlimits always (open files, file size, CPU seconds, core dumps), and a
//! wall clock after which the whole tree is killed.
//!
//! When the worker runs as root, bubblewrap is started as `nobody` (65534) so
//! that even the host sees the sandbox as an unprivileged user.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::cgroup::{Cgroups, RunGroup};
use super::{Limits, RunOutput, Sandbox, SandboxError};

/// The unprivileged uid/gid bubblewrap runs as when Kiln runs as root.
const NOBODY: u32 = 65534;

/// Exit code of the cgroup-joining shell when it cannot join.
const JOIN_FAILED: i32 = 111;

#[derive(Debug)]
pub struct ProcessSandbox {
    /// The Python virtual environment mounted read-only into every run.
    runtime: PathBuf,
    /// Host directories the runtime's interpreter needs besides `/usr`
    /// (for example a pyenv prefix the venv was built from).
    extra_ro: Vec<PathBuf>,
    /// The synthetic `/etc` (passwd, group, hosts) mounted read-only.
    etc: PathBuf,
    cgroups: Option<Cgroups>,
    /// Start bubblewrap as `nobody` (we are root).
    drop_to_nobody: bool,
    runs: AtomicU64,
}

impl ProcessSandbox {
    /// Checks that bubblewrap and the runtime are usable and prepares what
    /// every run shares.
    pub fn new(runtime: &Path) -> Result<ProcessSandbox, SandboxError> {
        let python = runtime.join("bin/python3");
        if !python.exists() {
            return Err(SandboxError::Unavailable(format!(
                "no Python runtime at {} (run scripts/setup-sandbox-runtime, or set KILN_SANDBOX_RUNTIME)",
                runtime.display()
            )));
        }
        which("bwrap").ok_or_else(|| SandboxError::Unavailable("bubblewrap (bwrap) is not installed".into()))?;
        let base_prefix = std::process::Command::new(&python)
            .args(["-I", "-c", "import sys; print(sys.base_prefix)"])
            .output()
            .map_err(|e| SandboxError::Unavailable(format!("running {}: {e}", python.display())))?;
        let base_prefix = PathBuf::from(String::from_utf8_lossy(&base_prefix.stdout).trim());
        let extra_ro = if base_prefix.starts_with("/usr") || base_prefix.as_os_str().is_empty() {
            Vec::new()
        } else {
            vec![base_prefix]
        };
        // One per instance: several sandboxes may live in one process (tests),
        // and each removes its own on drop.
        let etc = std::env::temp_dir().join(format!(
            "kiln-sandbox-etc-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&etc)
            .map_err(|e| SandboxError::Unavailable(format!("creating {}: {e}", etc.display())))?;
        for (name, content) in [
            (
                "passwd",
                "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/work:/usr/sbin/nologin\n",
            ),
            ("group", "root:x:0:\nnogroup:x:65534:\n"),
            ("hosts", "127.0.0.1 localhost\n::1 localhost\n"),
            ("nsswitch.conf", "passwd: files\ngroup: files\nhosts: files\n"),
        ] {
            std::fs::write(etc.join(name), content)
                .map_err(|e| SandboxError::Unavailable(format!("writing the sandbox /etc: {e}")))?;
        }
        let drop_to_nobody = nix::unistd::geteuid().is_root();
        if drop_to_nobody {
            which("setpriv")
                .ok_or_else(|| SandboxError::Unavailable("setpriv (util-linux) is not installed".into()))?;
        }
        Ok(ProcessSandbox {
            runtime: runtime.to_owned(),
            extra_ro,
            etc,
            cgroups: Cgroups::detect(),
            drop_to_nobody,
            runs: AtomicU64::new(0),
        })
    }

    /// Whether runs are limited by cgroups (else by rlimits only).
    pub fn has_cgroups(&self) -> bool {
        self.cgroups.is_some()
    }

    /// The full command line of one run, from the cgroup-joining shell to
    /// the interpreter.
    fn command_line(&self, args: &[String], limits: &Limits, group: Option<&RunGroup>) -> Vec<OsString> {
        let mut cmd: Vec<OsString> = Vec::new();
        if let Some(group) = group {
            // Join the run's cgroups first, then exec the rest: nothing the
            // run starts can escape the groups, and there is no race.
            cmd.extend(["/bin/sh", "-c"].map(OsString::from));
            cmd.push(
                format!(
                    r#"while [ "$1" != -- ]; do echo $$ > "$1" || exit {JOIN_FAILED}; shift; done; shift; exec "$@""#
                )
                .into(),
            );
            cmd.push("kiln-sandbox".into());
            cmd.extend(group.procs_files().into_iter().map(OsString::from));
            cmd.push("--".into());
        }
        let tmpfs_bytes = limits.tmpfs_mb * 1024 * 1024;
        cmd.push("prlimit".into());
        cmd.push(format!("--nofile={}", 512).into());
        cmd.push(format!("--fsize={tmpfs_bytes}").into());
        cmd.push("--core=0".into());
        cmd.push(format!("--cpu={}", limits.timeout.as_secs() + 5).into());
        if group.is_none() {
            // Without a cgroup: address space bounds memory (coarsely) and
            // RLIMIT_NPROC bounds processes (per uid, so only as nobody).
            cmd.push(format!("--as={}", limits.memory_mb * 1024 * 1024).into());
            cmd.push(format!("--nproc={}", limits.pids).into());
        }
        cmd.push("--".into());
        if self.drop_to_nobody {
            cmd.extend(
                [
                    "setpriv",
                    &format!("--reuid={NOBODY}"),
                    &format!("--regid={NOBODY}"),
                    "--clear-groups",
                    "--",
                ]
                .map(OsString::from),
            );
        }
        cmd.extend(self.bwrap_args(limits));
        cmd.push(self.runtime.join("bin/python3").into());
        cmd.extend(args.iter().map(OsString::from));
        cmd
    }

    fn bwrap_args(&self, limits: &Limits) -> Vec<OsString> {
        let tmpfs_bytes = (limits.tmpfs_mb * 1024 * 1024).to_string();
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
        push(&[
            "bwrap",
            "--unshare-all",
            "--unshare-user",
            "--die-with-parent",
            "--new-session",
        ]);
        push(&[
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--hostname",
            "sandbox",
            "--cap-drop",
            "ALL",
        ]);
        push(&[
            "--ro-bind",
            "/usr",
            "/usr",
            "--symlink",
            "usr/bin",
            "/bin",
            "--symlink",
            "usr/sbin",
            "/sbin",
        ]);
        push(&["--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64"]);
        push(&["--proc", "/proc", "--dev", "/dev"]);
        push(&["--perms", "1777", "--size", &tmpfs_bytes, "--tmpfs", "/work"]);
        push(&["--perms", "1777", "--size", &tmpfs_bytes, "--tmpfs", "/tmp"]);
        push(&["--chdir", "/work", "--clearenv"]);
        push(&[
            "--setenv",
            "PATH",
            "/usr/bin:/bin",
            "--setenv",
            "HOME",
            "/work",
            "--setenv",
            "LANG",
            "C.UTF-8",
        ]);
        push(&["--setenv", "TMPDIR", "/tmp", "--setenv", "PYTHONDONTWRITEBYTECODE", "1"]);
        let etc = self.etc.as_os_str();
        a.extend([OsString::from("--ro-bind"), etc.into(), "/etc".into()]);
        let runtime = self.runtime.as_os_str();
        a.extend([OsString::from("--ro-bind"), runtime.into(), runtime.into()]);
        for dir in &self.extra_ro {
            a.extend([OsString::from("--ro-bind"), dir.into(), dir.into()]);
        }
        a.push("--".into());
        a
    }

    async fn run(&self, args: &[String], stdin: Vec<u8>, limits: &Limits) -> Result<RunOutput, SandboxError> {
        let started = Instant::now();
        let group = match &self.cgroups {
            None => None,
            Some(cgroups) => {
                let name = format!(
                    "run-{}-{}",
                    std::process::id(),
                    self.runs.fetch_add(1, Ordering::Relaxed)
                );
                Some(
                    cgroups
                        .create(&name, limits.memory_mb, limits.pids)
                        .map_err(|e| SandboxError::Unavailable(format!("creating the run's cgroup: {e}")))?,
                )
            }
        };
        let command_line = self.command_line(args, limits, group.as_ref());
        let mut command = Command::new(&command_line[0]);
        command
            .args(&command_line[1..])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let mut child = command
            .spawn()
            .map_err(|e| SandboxError::Unavailable(format!("starting bubblewrap: {e}")))?;

        let mut input = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let writer = tokio::spawn(async move {
            // The sandbox may exit without reading; that is its business.
            let _ = input.write_all(&stdin).await;
            let _ = input.shutdown().await;
        });
        let out_reader = tokio::spawn(read_capped(stdout, limits.output_bytes));
        let err_reader = tokio::spawn(read_capped(stderr, limits.output_bytes));

        let (status, timed_out) = if let Ok(status) = tokio::time::timeout(limits.timeout, child.wait()).await {
            (status.ok(), false)
        } else {
            // Killing bubblewrap tears down its pid namespace; the cgroup
            // kill below catches anything that slipped out of it.
            let _ = child.start_kill();
            (child.wait().await.ok(), true)
        };
        writer.abort();
        let oom_killed = group.as_ref().is_some_and(RunGroup::oom_killed);
        if let Some(group) = group {
            // Teardown polls the kernel; keep it off the async threads.
            let _ = tokio::task::spawn_blocking(move || drop(group)).await;
        }
        let (stdout, out_truncated) = join_reader(out_reader).await;
        let (stderr, err_truncated) = join_reader(err_reader).await;

        let exit_code = status.and_then(|s| s.code());
        if exit_code == Some(JOIN_FAILED) && stdout.is_empty() {
            return Err(SandboxError::Unavailable(format!(
                "could not join the run's cgroup: {}",
                String::from_utf8_lossy(&stderr).trim()
            )));
        }
        Ok(RunOutput {
            stdout,
            stderr,
            exit_code,
            signal: status.and_then(|s| s.signal()),
            timed_out,
            oom_killed,
            truncated: out_truncated || err_truncated,
            duration: started.elapsed(),
        })
    }
}

impl Sandbox for ProcessSandbox {
    fn name(&self) -> &'static str {
        "process"
    }

    fn run_python<'a>(
        &'a self,
        args: &'a [String],
        stdin: Vec<u8>,
        limits: &'a Limits,
    ) -> BoxFuture<'a, Result<RunOutput, SandboxError>> {
        Box::pin(self.run(args, stdin, limits))
    }
}

impl Drop for ProcessSandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// Reads a stream to its end, keeping the first `cap` bytes. Draining the
/// rest keeps the writer from blocking on a full pipe.
async fn read_capped(mut stream: impl AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return (kept, truncated),
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
}

async fn join_reader(handle: tokio::task::JoinHandle<(Vec<u8>, bool)>) -> (Vec<u8>, bool) {
    // The streams close when the last process holding them is gone, which
    // the kill above guarantees; the timeout is a guard, not a path.
    match tokio::time::timeout(Duration::from_secs(5), handle).await {
        Ok(Ok(result)) => result,
        _ => (Vec::new(), true),
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
