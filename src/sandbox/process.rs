//! The process backend: one bubblewrap sandbox per run.
//!
//! Each run gets new user, pid, network, ipc, uts and cgroup namespaces, and
//! may create no further user namespace (`--disable-userns`: no nested
//! `unshare`); the system (`/usr`) and the Python runtime read-only; a
//! synthetic `/etc`; size-limited tmpfs as `/work`, `/tmp` and `/dev/shm`;
//! everything else read-only, the sandbox's root included (bubblewrap's root
//! is a tmpfs that would otherwise be writable without a size limit); a
//! cleared environment; no capabilities; `--die-with-parent` so a dying
//! worker takes its sandboxes with it. Limits: a per-run cgroup (memory,
//! pids) where one can be made, rlimits always (open files, file size, CPU
//! seconds, core dumps), and a wall clock after which the whole tree is
//! killed.
//!
//! When the worker runs as root, the run is started as `nobody` (65534,
//! supplementary groups cleared) so that even the host sees the sandbox as
//! an unprivileged user. A run starts as one shell that waits for a go line
//! on stdin: the worker first moves it into the run's cgroups, so nothing it
//! starts is ever outside them. Because that move is slow on cgroup v1, a
//! few such shells are kept ready ([`Zygote`]); each serves one run.
//!
//! Nothing of a run outlives `run_python`: after a normal exit the pid
//! namespace is empty; after the wall clock, an error or a dropped future
//! the run is killed, reaped and its cgroups killed and removed. Cgroups
//! and `/etc` directories left by a worker that died are removed by the
//! next one.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::cgroup::{Cgroups, RunGroup};
use super::{OutputCapture, RunLimits, RunOutput, Sandbox, SandboxError};

/// The unprivileged uid/gid a run starts as when Kiln runs as root.
const NOBODY: u32 = 65534;

/// Exit code of the run's shell when it gets no go line or cannot set the
/// rlimits.
const PREPARE_FAILED: i32 = 111;

/// Runs prepared ahead (see [`Zygote`]) and warm servers (see [`Server`])
/// when the worker does not say.
const DEFAULT_POOL: usize = 4;

/// Size of a server sandbox's own `/work`, `/tmp` and `/dev/shm`; each run
/// mounts fresh ones of its own size over them.
const SERVER_TMPFS_MB: u64 = 8;

/// Numbers the runs of this process, for their cgroups' names: one counter
/// for every sandbox in the process, so that their groups never collide.
static RUNS: AtomicU64 = AtomicU64::new(0);

/// The part of a run's shell that waits for the go line and applies the
/// limits it carries: file size (in dash's 512-byte blocks), CPU seconds,
/// and, without cgroups, address space (KiB) and processes (`-` for none).
/// Hard and soft limits are both set, so the run cannot raise them.
/// Builtins only: the shell costs one exec.
const PREPARE: &str = r#"read -r fsize cpu vmem nproc || exit 111
ulimit -n 512 && ulimit -c 0 && ulimit -f "$fsize" && ulimit -t "$cpu" || exit 111
if [ "$vmem" != - ]; then ulimit -v "$vmem" && ulimit -p "$nproc" || exit 111; fi
exec "$@""#;

#[derive(Debug)]
pub struct ProcessSandbox {
    inner: Arc<Inner>,
    /// Cancelled on drop: the pool task stops and discards what it holds.
    stop: CancellationToken,
}

#[derive(Debug)]
struct Inner {
    /// The Python virtual environment mounted read-only into every run.
    runtime: PathBuf,
    /// Host directories the runtime's interpreter needs besides `/usr`
    /// (for example a pyenv prefix the venv was built from).
    extra_ro: Vec<PathBuf>,
    /// The synthetic `/etc` (passwd, group, hosts) mounted read-only.
    etc: PathBuf,
    cgroups: Option<Cgroups>,
    /// Start runs as `nobody` (we are root).
    drop_to_nobody: bool,
    pool_size: usize,
    pool: Mutex<Pool>,
    /// Wakes the zygote pool's task after a run took a zygote.
    refill: Notify,
    /// Wakes the servers' task after a run took or returned a server. Not
    /// `refill`: a `notify_one` shared by two waiting tasks wakes either,
    /// and a prewarm that woke the zygote task left the servers unstarted.
    refill_servers: Notify,
    /// Warm harness servers ready for a run ([`Server`]).
    servers: Mutex<Servers>,
}

#[derive(Debug, Default)]
struct Servers {
    /// Per flavour: set by its first run (or [`ProcessSandbox::prewarm`]);
    /// servers of a flavour are only kept once wanted.
    wanted: [bool; Flavour::ALL.len()],
    idle: [Vec<Server>; Flavour::ALL.len()],
    /// Taken by runs in progress.
    busy: [usize; Flavour::ALL.len()],
    /// Servers that failed to start, ever ([`Sandbox::warmed`] gives up on one).
    failed: u64,
    stopping: bool,
}

impl Servers {
    /// Servers of `flavour` in hand, idle or running a run.
    fn held(&self, flavour: Flavour) -> usize {
        self.idle[flavour.index()].len() + self.busy[flavour.index()]
    }
}

/// What a warm server has imported ahead, chosen by the kind of run it
/// serves (the run's hint). A run is two copies of its server (the checker
/// and the first role it forks), and a copy costs in proportion to the
/// server's memory: page tables copied, every page the child writes copied
/// (Python's reference counts write to most objects it touches), all of it
/// unmapped at exit. On a machine busy with
/// small jobs that was most of the sandbox's CPU, so each kind of run forks
/// the smallest server that has what it needs (`warm_up` in
/// `sandbox/harness.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// Test cases: the harness alone (~15 MB).
    Cases,
    /// A pytest `test_code`: pytest configured and its session started
    /// (~48 MB).
    Pytest,
    /// A service: pytest and the service stack (FastAPI, uvicorn, httpx,
    /// pydantic, SQLAlchemy's ORM), ~60 MB.
    Service,
}

impl Flavour {
    const ALL: [Flavour; 3] = [Flavour::Cases, Flavour::Pytest, Flavour::Service];

    /// The flavour a run with `hint` (`harness::request`) forks from. A
    /// run that needs a role its server did not import still works (the
    /// role starts by exec), only slower.
    fn for_hint(hint: &str) -> Flavour {
        match hint {
            "c" => Flavour::Cases,
            "t" => Flavour::Pytest,
            _ => Flavour::Service,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The server's argument (`FLAVOURS` in the harness).
    fn arg(self) -> &'static str {
        match self {
            Flavour::Cases => "cases",
            Flavour::Pytest => "pytest",
            Flavour::Service => "service",
        }
    }
}

/// A warm harness interpreter in a long-lived sandbox of its own (one per
/// slot and [`Flavour`]): it has imported the harness and what its runs
/// need of pytest and the runtime's packages, and forks each run into fresh
/// namespaces (see `serve_main` in
/// `sandbox/harness.py`). A run costs forks instead of interpreter starts.
/// The server is pid 1 of its sandbox, in a cgroup of its own whose limits
/// are the run's (plus what the server itself uses), and serves one run at
/// a time; a run that times out or breaks the protocol takes its server
/// with it.
#[derive(Debug)]
struct Server {
    child: Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::BufReader<tokio::process::ChildStdout>,
    group: Option<RunGroup>,
    /// Memory the warm server uses, added to each run's limit.
    base_mb: u64,
    flavour: Flavour,
}

#[derive(Debug, Default)]
struct Pool {
    /// What the ready zygotes were started for.
    key: Option<Key>,
    ready: Vec<Zygote>,
}

/// What a zygote's command line depends on: the interpreter's arguments and
/// the tmpfs size bubblewrap mounts. Everything else of a run's limits is
/// applied when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    args: Vec<String>,
    tmpfs_mb: u64,
}

/// A run prepared ahead: its shell started (as nobody) and already moved
/// into its own fresh cgroups, waiting for the go line. Moving a process
/// between cgroups is the slow part of starting a run on cgroup v1, so it
/// happens here, off the run's path. A zygote serves exactly one run.
#[derive(Debug)]
struct Zygote {
    child: Child,
    group: Option<RunGroup>,
}

impl ProcessSandbox {
    /// Checks that bubblewrap and the runtime are usable and prepares what
    /// every run shares. Inside a tokio runtime it also starts keeping a few
    /// runs prepared ahead.
    pub fn new(runtime: &Path) -> Result<ProcessSandbox, SandboxError> {
        ProcessSandbox::with_pool(runtime, DEFAULT_POOL)
    }

    /// [`ProcessSandbox::new`] keeping `pool_size` runs prepared ahead.
    pub fn with_pool(runtime: &Path, pool_size: usize) -> Result<ProcessSandbox, SandboxError> {
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
        remove_stale_etcs();
        // One per instance (an instance removes its own on drop), and fresh:
        // `create_dir` refuses a directory someone prepared in /tmp.
        let etc = std::env::temp_dir().join(format!(
            "kiln-sandbox-etc-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir(&etc).map_err(|e| SandboxError::Unavailable(format!("creating {}: {e}", etc.display())))?;
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
        let inner = Arc::new(Inner {
            runtime: runtime.to_owned(),
            extra_ro,
            etc,
            cgroups: Cgroups::detect(),
            drop_to_nobody: nix::unistd::geteuid().is_root(),
            pool_size,
            pool: Mutex::new(Pool::default()),
            refill: Notify::new(),
            refill_servers: Notify::new(),
            servers: Mutex::new(Servers::default()),
        });
        let stop = CancellationToken::new();
        if pool_size > 0
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(Arc::clone(&inner).keep_pool(stop.clone()));
            handle.spawn(Arc::clone(&inner).keep_servers(stop.clone()));
        }
        Ok(ProcessSandbox { inner, stop })
    }

    /// Starts warming the function jobs' servers now rather than at the
    /// first run, so that a worker's first jobs do not wait for them. The
    /// service servers (the largest: ~1 s of CPU each to warm) start with
    /// the worker's first service run: a worker restarted often (a crash
    /// loop, a chaos test) would otherwise spend much of its life warming
    /// servers no job of its asks for.
    pub fn prewarm(&self) {
        {
            let mut servers = self.inner.servers.lock().expect("servers lock");
            for flavour in [Flavour::Cases, Flavour::Pytest] {
                servers.wanted[flavour.index()] = true;
            }
        }
        self.inner.refill_servers.notify_one();
    }

    async fn run(&self, args: &[String], stdin: Vec<u8>, limits: &RunLimits) -> Result<RunOutput, SandboxError> {
        let started = Instant::now();
        let key = Key {
            args: args.to_vec(),
            tmpfs_mb: limits.tmpfs_mb,
        };
        // Dropping this future at any await below drops the zygote, which
        // kills and reaps the run and removes its groups.
        let mut zygote = match self.inner.take(&key) {
            Some(zygote) => zygote,
            None => self.inner.spawn_zygote(&key).await?,
        };
        let limited = zygote
            .group
            .as_ref()
            .map_or(Ok(()), |g| g.set_limits(limits.memory_mb, limits.pids));
        if let Err(e) = limited {
            zygote.discard().await;
            return Err(SandboxError::Unavailable(format!("limiting the run's cgroup: {e}")));
        }
        let go = if zygote.group.is_some() {
            format!("{} {} - -\n", limits.tmpfs_mb * 1024 * 2, limits.timeout.as_secs() + 5)
        } else {
            // Without a cgroup: address space bounds memory (coarsely) and
            // RLIMIT_NPROC bounds processes (per uid, so only as nobody).
            format!(
                "{} {} {} {}\n",
                limits.tmpfs_mb * 1024 * 2,
                limits.timeout.as_secs() + 5,
                limits.memory_mb * 1024,
                limits.pids
            )
        };

        let child = &mut zygote.child;
        let mut input = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let writer = tokio::spawn(async move {
            // The go line, then the run's own input. The sandbox may exit
            // without reading; that is its business.
            let _ = input.write_all(go.as_bytes()).await;
            let _ = input.write_all(&stdin).await;
            let _ = input.shutdown().await;
        });
        let out_reader = tokio::spawn(read_capped(stdout, OutputCapture::new(limits.output_bytes, true)));
        let err_reader = tokio::spawn(read_capped(stderr, OutputCapture::new(limits.output_bytes, false)));

        let remaining = limits.timeout.saturating_sub(started.elapsed());
        let (status, timed_out) = if let Ok(status) = tokio::time::timeout(remaining, child.wait()).await {
            (status.ok(), false)
        } else {
            // Killing bubblewrap tears down its pid namespace; the cgroup
            // kill below catches anything that slipped out of it.
            let _ = child.start_kill();
            (child.wait().await.ok(), true)
        };
        writer.abort();
        let oom_killed = zygote.group.as_ref().is_some_and(RunGroup::oom_killed);
        if let Some(group) = zygote.group.take() {
            // Teardown polls the kernel; keep it off the async threads. After
            // a normal exit the pid namespace is already empty (the kernel kills
            // and reaps the rest when pid 1 exits, before bubblewrap returns), so removing the
            // groups is bookkeeping and need not delay the result; after a
            // kill, the group kill is what guarantees nothing is left.
            let teardown = tokio::task::spawn_blocking(move || drop(group));
            if timed_out {
                let _ = teardown.await;
            }
        }
        let (stdout, stdout_tail, out_truncated) = join_reader(out_reader).await;
        let (stderr, _, err_truncated) = join_reader(err_reader).await;

        let exit_code = status.and_then(|s| s.code());
        if exit_code == Some(PREPARE_FAILED) && stdout.is_empty() {
            return Err(SandboxError::Unavailable(format!(
                "could not set the run's limits: {}",
                String::from_utf8_lossy(&stderr).trim()
            )));
        }
        Ok(RunOutput {
            stdout,
            stdout_tail,
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

/// Bytes of a run header (`RUN_HEADER` in harness.py).
const RUN_HEADER: usize = 128;

/// Processes of a server's sandbox besides the run's own: the server and
/// the run's outer process.
const SERVER_PIDS: u64 = 2;

/// How long a server may take to start and import what runs need.
const WARM_UP: Duration = Duration::from_secs(60);

/// What a warm run has produced so far; kept by the caller so that a run
/// cut off at its wall clock still shows what it printed (`KILN-READY`
/// above all, which tells a started run from one that never started).
struct Collected {
    stdout: OutputCapture,
    stderr: OutputCapture,
}

impl ProcessSandbox {
    /// A harness run on a warm server (see [`Server`]).
    async fn run_warm(&self, request: Vec<u8>, hint: &str, limits: &RunLimits) -> Result<RunOutput, SandboxError> {
        let started = Instant::now();
        let flavour = Flavour::for_hint(hint);
        let mut server = match self.inner.take_server(flavour) {
            Some(server) => server,
            None => self.inner.spawn_server(flavour).await?,
        };
        let events_before = server.group.as_ref().map(RunGroup::memory_limit_events);
        if let Some(group) = &server.group
            && let Err(e) = group.set_limits(limits.memory_mb + server.base_mb, limits.pids + SERVER_PIDS)
        {
            self.inner.release(server, false).await;
            return Err(SandboxError::Unavailable(format!("limiting the run's cgroup: {e}")));
        }
        let tmpfs_bytes = limits.tmpfs_mb * 1024 * 1024;
        let cpu = limits.timeout.as_secs() + 5;
        let (vmem, nproc) = if server.group.is_some() {
            ("-".to_owned(), "-".to_owned())
        } else {
            ((limits.memory_mb * 1024).to_string(), limits.pids.to_string())
        };
        let mut header = format!(
            "RUN {} {tmpfs_bytes} {tmpfs_bytes} {cpu} {vmem} {nproc} {hint}",
            request.len()
        )
        .into_bytes();
        header.resize(RUN_HEADER, b' ');

        let mut collected = Collected {
            stdout: OutputCapture::new(limits.output_bytes, true),
            stderr: OutputCapture::new(limits.output_bytes, false),
        };
        let remaining = limits.timeout.saturating_sub(started.elapsed());
        let Server { stdin, stdout, .. } = &mut server;
        let exchange = async {
            let write = async {
                stdin.write_all(&header).await?;
                stdin.write_all(&request).await?;
                stdin.flush().await
            };
            let (written, status) = tokio::join!(write, read_frames(stdout, &mut collected));
            written.and(status)
        };
        let outcome = tokio::time::timeout(remaining, exchange).await;
        let oom_killed = match (&server.group, events_before) {
            (Some(group), Some(before)) => group.memory_limit_events() > before,
            _ => false,
        };
        let (exit_code, signal, timed_out) = match outcome {
            Ok(Ok((code, signal))) => {
                self.inner.release(server, true).await;
                ((signal == 0).then_some(code), (signal != 0).then_some(signal), false)
            }
            Ok(Err(e)) => {
                // The server died mid-run (its sandbox was killed, or the
                // memory limit chose it): so did the run.
                tracing::debug!(error = %e, "a warm sandbox server ended during a run");
                self.inner.release(server, false).await;
                (None, Some(9), false)
            }
            Err(_) => {
                self.inner.release(server, false).await;
                (None, Some(9), true)
            }
        };
        let (stdout, stdout_tail, out_truncated) = collected.stdout.finish();
        let (stderr, _, err_truncated) = collected.stderr.finish();
        if exit_code == Some(PREPARE_FAILED) && stdout.is_empty() {
            return Err(SandboxError::Unavailable(format!(
                "could not prepare the run: {}",
                String::from_utf8_lossy(&stderr).trim()
            )));
        }
        Ok(RunOutput {
            stdout,
            stdout_tail,
            stderr,
            exit_code,
            signal,
            timed_out,
            oom_killed,
            truncated: out_truncated || err_truncated,
            duration: started.elapsed(),
        })
    }
}

/// Reads a run's frames until its exit frame: `(exit code, signal)`.
async fn read_frames(
    stdout: &mut tokio::io::BufReader<tokio::process::ChildStdout>,
    collected: &mut Collected,
) -> std::io::Result<(i32, i32)> {
    let mut head = [0u8; 5];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        stdout.read_exact(&mut head).await?;
        let mut len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        match head[0] {
            b'O' | b'E' => {
                while len > 0 {
                    let n = len.min(buf.len());
                    stdout.read_exact(&mut buf[..n]).await?;
                    let capture = if head[0] == b'O' {
                        &mut collected.stdout
                    } else {
                        &mut collected.stderr
                    };
                    capture.push(&buf[..n]);
                    len -= n;
                }
            }
            b'X' if len == 8 => {
                stdout.read_exact(&mut buf[..8]).await?;
                let code = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                let signal = i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                return Ok((code, signal));
            }
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unexpected frame {other:#x} from the sandbox server"),
                ));
            }
        }
    }
}

impl Inner {
    /// A warm server of `flavour`, if one is idle; marks the flavour wanted
    /// and asks for a refill.
    fn take_server(&self, flavour: Flavour) -> Option<Server> {
        let i = flavour.index();
        let server = {
            let mut servers = self.servers.lock().expect("servers lock");
            servers.wanted[i] = true;
            let server = servers.idle[i].pop();
            servers.busy[i] += 1;
            server
        };
        self.refill_servers.notify_one();
        server
    }

    /// Ends a run's hold on `server`: back to the idle ones when `reuse` and
    /// there is room, else killed with everything in its sandbox.
    async fn release(&self, server: Server, reuse: bool) {
        let i = server.flavour.index();
        let surplus = {
            let mut servers = self.servers.lock().expect("servers lock");
            servers.busy[i] = servers.busy[i].saturating_sub(1);
            if reuse && !servers.stopping && servers.held(server.flavour) < self.pool_size.max(1) {
                servers.idle[i].push(server);
                None
            } else {
                Some(server)
            }
        };
        self.refill_servers.notify_one();
        if let Some(server) = surplus {
            server.discard().await;
        }
    }

    /// Keeps `pool_size` servers (idle and busy together) of each flavour
    /// once it is wanted.
    async fn keep_servers(self: Arc<Inner>, stop: CancellationToken) {
        loop {
            let short = {
                let servers = self.servers.lock().expect("servers lock");
                Flavour::ALL
                    .into_iter()
                    .find(|&f| servers.wanted[f.index()] && !servers.stopping && servers.held(f) < self.pool_size)
            };
            let Some(flavour) = short else {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = self.refill_servers.notified() => continue,
                }
            };
            let made = tokio::select! {
                () = stop.cancelled() => break,
                made = self.spawn_server(flavour) => made,
            };
            match made {
                Ok(server) => {
                    let i = flavour.index();
                    let surplus = {
                        let mut servers = self.servers.lock().expect("servers lock");
                        if !servers.stopping && servers.held(flavour) < self.pool_size {
                            servers.idle[i].push(server);
                            None
                        } else {
                            Some(server)
                        }
                    };
                    if let Some(server) = surplus {
                        server.discard().await;
                    }
                }
                Err(e) => {
                    self.servers.lock().expect("servers lock").failed += 1;
                    tracing::warn!(error = %e, "could not start a warm sandbox server");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        let idle = std::mem::take(&mut self.servers.lock().expect("servers lock").idle);
        for server in idle.into_iter().flatten() {
            server.discard().await;
        }
    }

    /// Fresh cgroups for a run or a server, where the machine allows them.
    fn new_group(&self) -> Result<Option<RunGroup>, SandboxError> {
        let Some(cgroups) = &self.cgroups else {
            return Ok(None);
        };
        let name = format!("run-{}-{}", std::process::id(), RUNS.fetch_add(1, Ordering::Relaxed));
        cgroups
            .create(&name)
            .map(Some)
            .map_err(|e| SandboxError::Unavailable(format!("creating a sandbox cgroup: {e}")))
    }

    /// Starts a server of `flavour` in a sandbox and cgroup of its own and
    /// waits until it is warm.
    async fn spawn_server(&self, flavour: Flavour) -> Result<Server, SandboxError> {
        let group = self.new_group()?;
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", r#"read -r go || exit 111; exec "$@""#, "kiln-sandbox"])
            .args(self.bwrap_args(SERVER_TMPFS_MB, true))
            .arg(self.runtime.join("bin/python3"))
            .args([
                "-I",
                "-B",
                "-u",
                "-c",
                super::harness::harness_source(),
                "serve",
                flavour.arg(),
            ])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if self.drop_to_nobody {
            command.uid(NOBODY).gid(NOBODY);
        }
        let mut child = command
            .spawn()
            .map_err(|e| SandboxError::Unavailable(format!("starting a sandbox server: {e}")))?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = tokio::io::BufReader::with_capacity(64 * 1024, child.stdout.take().expect("stdout is piped"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut server = Server {
            child,
            stdin,
            stdout,
            group: None,
            base_mb: 0,
            flavour,
        };
        if let Some(group) = group {
            let Some(pid) = server.child.id() else {
                return Err(SandboxError::Unavailable("the sandbox server died at once".into()));
            };
            let joined = tokio::task::spawn_blocking(move || group.join(pid).map(|()| group)).await;
            match joined {
                Ok(Ok(group)) => server.group = Some(group),
                Ok(Err(e)) => {
                    server.discard().await;
                    return Err(SandboxError::Unavailable(format!(
                        "moving a server into its cgroup: {e}"
                    )));
                }
                Err(e) => {
                    return Err(SandboxError::Unavailable(format!(
                        "moving a server into its cgroup: {e}"
                    )));
                }
            }
        }
        // The server's own complaints (never a run's: runs are framed on stdout).
        let errors = tokio::spawn(read_capped(stderr, OutputCapture::new(16 * 1024, false)));
        let warm = async {
            server.stdin.write_all(b"go\n").await?;
            server.stdin.flush().await?;
            let mut head = [0u8; 5];
            server.stdout.read_exact(&mut head).await?;
            if head != *b"R\0\0\0\0" {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "no ready frame"));
            }
            Ok(())
        };
        match tokio::time::timeout(WARM_UP, warm).await {
            Ok(Ok(())) => {
                errors.abort();
                server.base_mb = server
                    .group
                    .as_ref()
                    .map_or(0, |g| g.memory_bytes().div_ceil(1024 * 1024));
                Ok(server)
            }
            outcome => {
                server.discard().await;
                let (said, _, _) = join_reader(errors).await;
                Err(SandboxError::Unavailable(format!(
                    "the sandbox server did not warm up ({}): {}",
                    match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("not within {}s", WARM_UP.as_secs()),
                    },
                    String::from_utf8_lossy(&said).trim()
                )))
            }
        }
    }

    /// A zygote started for `key`, if one is ready; asks for a refill.
    fn take(&self, key: &Key) -> Option<Zygote> {
        let (zygote, stale) = {
            let mut pool = self.pool.lock().expect("pool lock");
            let stale = if pool.key.as_ref() == Some(key) {
                Vec::new()
            } else {
                pool.key = Some(key.clone());
                std::mem::take(&mut pool.ready)
            };
            (pool.ready.pop(), stale)
        };
        if !stale.is_empty() {
            tokio::spawn(async move {
                for zygote in stale {
                    zygote.discard().await;
                }
            });
        }
        self.refill.notify_one();
        zygote
    }

    /// Keeps the pool full for the last key asked for, until `stop`.
    async fn keep_pool(self: Arc<Inner>, stop: CancellationToken) {
        loop {
            let wanted = {
                let pool = self.pool.lock().expect("pool lock");
                pool.key.clone().filter(|_| pool.ready.len() < self.pool_size)
            };
            let Some(key) = wanted else {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = self.refill.notified() => continue,
                }
            };
            let made = tokio::select! {
                () = stop.cancelled() => break,
                made = self.spawn_zygote(&key) => made,
            };
            match made {
                Ok(zygote) => {
                    let surplus = {
                        let mut pool = self.pool.lock().expect("pool lock");
                        if pool.key.as_ref() == Some(&key) && pool.ready.len() < self.pool_size {
                            pool.ready.push(zygote);
                            None
                        } else {
                            Some(zygote)
                        }
                    };
                    if let Some(zygote) = surplus {
                        zygote.discard().await;
                    }
                }
                Err(e) => {
                    // Runs still start their own; retry gently.
                    tracing::warn!(error = %e, "could not prepare a sandbox run");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        let ready = std::mem::take(&mut self.pool.lock().expect("pool lock").ready);
        for zygote in ready {
            zygote.discard().await;
        }
    }

    /// Starts a run's shell and moves it into fresh cgroups.
    async fn spawn_zygote(&self, key: &Key) -> Result<Zygote, SandboxError> {
        let group = self.new_group()?;
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", PREPARE, "kiln-sandbox"])
            .args(self.bwrap_args(key.tmpfs_mb, false))
            .arg(self.runtime.join("bin/python3"))
            .args(&key.args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if self.drop_to_nobody {
            // std clears the supplementary groups when it drops from root.
            command.uid(NOBODY).gid(NOBODY);
        }
        let child = command
            .spawn()
            .map_err(|e| SandboxError::Unavailable(format!("starting a sandbox shell: {e}")))?;
        let mut zygote = Zygote { child, group: None };
        let Some(group) = group else {
            return Ok(zygote);
        };
        let Some(pid) = zygote.child.id() else {
            return Err(SandboxError::Unavailable("the sandbox shell died at once".into()));
        };
        // The shell waits for the go line, so it has started nothing yet:
        // everything the run starts will be inside the groups. The write
        // blocks for an RCU grace period; keep it off the async threads.
        let joined = tokio::task::spawn_blocking(move || group.join(pid).map(|()| group)).await;
        match joined {
            Ok(Ok(group)) => {
                zygote.group = Some(group);
                Ok(zygote)
            }
            Ok(Err(e)) => {
                zygote.discard().await;
                Err(SandboxError::Unavailable(format!("moving a run into its cgroup: {e}")))
            }
            Err(e) => Err(SandboxError::Unavailable(format!("moving a run into its cgroup: {e}"))),
        }
    }

    /// `server`: the sandbox of a warm server, which creates a user
    /// namespace per run; the runs themselves cannot (their seccomp filter
    /// refuses unshare and clone with namespace flags).
    fn bwrap_args(&self, tmpfs_mb: u64, server: bool) -> Vec<OsString> {
        let tmpfs_bytes = (tmpfs_mb * 1024 * 1024).to_string();
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
        push(&["bwrap", "--unshare-all", "--unshare-user"]);
        if !server {
            push(&["--disable-userns"]);
        }
        push(&[
            "--die-with-parent",
            "--new-session",
            // The command is the namespace's pid 1, not a bubblewrap reaper
            // that the run's processes could ptrace and take over.
            "--as-pid-1",
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
        push(&["--perms", "1777", "--size", &tmpfs_bytes, "--tmpfs", "/dev/shm"]);
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
        // Last, once every mount point exists: the root and /dev are tmpfs
        // that would otherwise be writable, and without a size limit.
        a.extend(["--remount-ro", "/dev", "--remount-ro", "/", "--"].map(OsString::from));
        a
    }
}

impl Zygote {
    /// Kills the shell (or the run it became), reaps it, then removes its
    /// groups (which the kernel refuses while it is unreaped).
    async fn discard(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        if let Some(group) = self.group.take() {
            let _ = tokio::task::spawn_blocking(move || drop(group)).await;
        }
    }
}

impl Server {
    /// Kills the server's sandbox (and any run in it), reaps it, then
    /// removes its cgroup.
    async fn discard(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        if let Some(group) = self.group.take() {
            let _ = tokio::task::spawn_blocking(move || drop(group)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.start_kill();
            for _ in 0..200 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // Dropped while its process may still run (a cancelled run, the
        // sandbox gone outside a runtime): kill and reap it here, so that
        // dropping the groups next can kill the rest and remove them.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.start_kill();
            for _ in 0..200 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
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
        limits: &'a RunLimits,
    ) -> BoxFuture<'a, Result<RunOutput, SandboxError>> {
        Box::pin(self.run(args, stdin, limits))
    }

    fn run_harness<'a>(
        &'a self,
        request: Vec<u8>,
        hint: &'a str,
        limits: &'a RunLimits,
    ) -> BoxFuture<'a, Result<RunOutput, SandboxError>> {
        Box::pin(self.run_warm(request, hint, limits))
    }

    /// Waits until every wanted flavour has its servers idle and warm.
    /// Polled: it happens once, at a worker's start.
    fn warmed(&self, within: Duration) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let deadline = Instant::now() + within;
            let failed_before = self.inner.servers.lock().expect("servers lock").failed;
            loop {
                {
                    let servers = self.inner.servers.lock().expect("servers lock");
                    if servers.failed > failed_before || servers.stopping {
                        return false;
                    }
                    let ready = Flavour::ALL
                        .into_iter()
                        .all(|f| !servers.wanted[f.index()] || servers.held(f) >= self.inner.pool_size);
                    if ready {
                        return true;
                    }
                }
                if Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    }

    /// Discards the runs prepared ahead and waits until they are gone;
    /// later runs start their own.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.stop.cancel();
            let ready = std::mem::take(&mut self.inner.pool.lock().expect("pool lock").ready);
            for zygote in ready {
                zygote.discard().await;
            }
            let idle = {
                let mut servers = self.inner.servers.lock().expect("servers lock");
                servers.stopping = true;
                std::mem::take(&mut servers.idle)
            };
            for server in idle.into_iter().flatten() {
                server.discard().await;
            }
        })
    }
}

impl Drop for ProcessSandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// Reads a stream to its end into `capture`. Draining what is not kept
/// keeps the writer from blocking on a full pipe.
async fn read_capped(mut stream: impl AsyncRead + Unpin, mut capture: OutputCapture) -> (Vec<u8>, Vec<u8>, bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return capture.finish(),
            Ok(n) => capture.push(&buf[..n]),
        }
    }
}

async fn join_reader(handle: tokio::task::JoinHandle<(Vec<u8>, Vec<u8>, bool)>) -> (Vec<u8>, Vec<u8>, bool) {
    // The streams close when the last process holding them is gone, which
    // the kill above guarantees; the timeout is a guard, not a path.
    match tokio::time::timeout(Duration::from_secs(5), handle).await {
        Ok(Ok(result)) => result,
        _ => (Vec::new(), Vec::new(), true),
    }
}

/// Removes the `/etc` directories of sandboxes whose process is gone (one
/// that exited without dropping its sandbox, or was killed).
fn remove_stale_etcs() {
    for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        if super::left_by_dead_process(&entry.file_name(), "kiln-sandbox-etc-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
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
