//! The docker backend: one fresh container per run, through the Docker
//! Engine API (bollard, over the default socket).
//!
//! Every container runs the sandbox image (`scripts/build-sandbox-image` or
//! `sandbox/Dockerfile`: the pinned runtime at the same path as the process
//! backend's) as user 65534 with all capabilities dropped,
//! `no-new-privileges`, no network, a read-only root, size-limited
//! `noexec` tmpfs at `/work` and `/tmp`, memory equal to memory+swap, one
//! CPU, a pids limit, rlimits (open files, file size, CPU seconds, core
//! dumps), the run's own command as pid 1 (no init: the harness is pid 1),
//! its own cgroup namespace and capped logs.
//! Nothing of the worker's environment enters it.
//!
//! # Per-run cost
//! Creating and starting a container costs a few hundred milliseconds, so a
//! small pool of containers is kept created, attached and started ahead of
//! use, each waiting in a tiny launcher ([`LAUNCHER`]) that reads one header
//! from stdin (the run's command line and CPU-seconds limit) and execs it. A
//! container serves exactly one run and is removed after it: nothing of one
//! run can meet the next. What stays on the run's path is writing stdin,
//! reading the attach stream and one wait call; removal and refilling
//! happen in the background. When the pool is empty (a burst, or limits the
//! pool was not made for) a run makes its own container.
//!
//! # Invariants
//! - Input (the harness's request) goes in on stdin; output comes out only
//!   through the attach stream, kept up to `output_bytes` per stream (stdout
//!   also keeps its tail, for the harness's report). No file is ever copied
//!   out of a container, so no symlink in one can be followed.
//! - Every container is removed: after its run, on timeout (a forced remove
//!   kills it first), on error, and when the run's future is dropped (a
//!   guard removes it from a background task). Containers carry labels
//!   naming their owner (host, pid, process start time); `connect`, and every
//!   running sandbox once a minute, remove those whose owner is gone, which
//!   is what cleans up after a worker that was killed outright (its pooled
//!   containers exit when their stdin closes; a running one would otherwise
//!   run until its harness ends). [`Sandbox::shutdown`] removes the
//!   pool and waits for every removal.
//! - A run's wall clock starts when the run asks for a container; when it
//!   ends the container is removed whatever it is doing.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigCgroupnsModeEnum, HostConfigLogConfig, ResourcesUlimits,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions, WaitContainerOptionsBuilder,
};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{OutputCapture, RunLimits, RunOutput, Sandbox, SandboxError};

/// The runtime's interpreter inside the image (the process backend mounts
/// its runtime at the same path).
pub const PYTHON: &str = "/opt/kiln/sandbox/bin/python3";

/// What a pooled container runs until it is used: reads a length-prefixed
/// JSON header from stdin (the run's CPU-seconds limit and command line),
/// byte-exact so the rest of stdin is left for the command, sets the limit
/// (hard and soft) and execs the command. Exits quietly when stdin closes
/// first (the worker went away). Runs with `-I -S`: nothing from the
/// environment or the file system is imported before the header arrives.
const LAUNCHER: &str = "import os,json,resource,struct
def read(n):
    b=b''
    while len(b)<n:
        c=os.read(0,n-len(b))
        if not c: os._exit(0)
        b+=c
    return b
run=json.loads(read(struct.unpack('>I',read(4))[0]))
resource.setrlimit(resource.RLIMIT_CPU,(run['cpu'],run['cpu']))
os.execv(run['argv'][0],run['argv'])";

/// Label on every container Kiln creates.
const LABEL: &str = "org.kiln.sandbox";
/// `host:pid:start-time` of the process that created the container.
const LABEL_OWNER: &str = "org.kiln.sandbox.owner";
/// The [`DockerSandbox`] instance that created the container.
const LABEL_INSTANCE: &str = "org.kiln.sandbox.instance";

/// How often a running worker looks for containers of dead workers (besides
/// at `connect`): a worker killed outright leaves its runs' containers
/// running until their harness ends.
const ORPHAN_SWEEP: Duration = Duration::from_secs(60);

/// CPUs per run, in units of 10⁻⁹ CPUs.
const NANO_CPUS: i64 = 1_000_000_000;
/// Log driver settings: output is read over the attach stream, so the log
/// only needs to exist, not to hold much.
const LOG_MAX_SIZE: &str = "64k";

type OutputStream = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;
type InputSink = Pin<Box<dyn AsyncWrite + Send>>;

/// The container-level limits a pooled container was created with; a run
/// with other limits gets a container made for it. (The CPU-seconds limit
/// follows the run's timeout, which batches choose, so the launcher sets it
/// per run instead.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    memory_mb: u64,
    pids: u64,
    tmpfs_mb: u64,
}

impl Shape {
    fn of(limits: &RunLimits) -> Shape {
        Shape {
            memory_mb: limits.memory_mb,
            pids: limits.pids,
            tmpfs_mb: limits.tmpfs_mb,
        }
    }
}

pub struct DockerSandbox {
    inner: Arc<Inner>,
    /// Cancelled when the sandbox is dropped or shut down: the pool task
    /// then removes what it holds and stops.
    stop: CancellationToken,
}

struct Inner {
    docker: Docker,
    image: String,
    /// Value of [`LABEL_INSTANCE`] on this instance's containers.
    instance: String,
    /// Value of [`LABEL_OWNER`] on this instance's containers.
    owner: String,
    /// Warm containers kept ready.
    pool_size: usize,
    pool: Mutex<Pool>,
    /// Wakes the pool task after a container was taken or the shape changed.
    refill: Notify,
    /// Background removals and the pool task, so shutdown can wait for them.
    tasks: TaskTracker,
    /// Where background work is spawned, also from `Drop`.
    runtime: tokio::runtime::Handle,
}

struct Pool {
    shape: Shape,
    warm: VecDeque<Warm>,
}

/// A created, attached and started container waiting in the launcher.
struct Warm {
    guard: ContainerGuard,
    output: OutputStream,
    input: InputSink,
}

/// Removes its container (forcibly: killing it first) when dropped, from a
/// background task, unless the runtime is gone (then the owner label lets
/// the next `connect` remove it).
struct ContainerGuard {
    id: String,
    docker: Docker,
    tasks: TaskTracker,
    runtime: tokio::runtime::Handle,
}

impl ContainerGuard {
    /// Kills and removes the container now, rather than in the background.
    async fn remove_now(mut self) {
        let id = std::mem::take(&mut self.id);
        remove(&self.docker, &id).await;
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if self.id.is_empty() {
            return;
        }
        let docker = self.docker.clone();
        let id = std::mem::take(&mut self.id);
        self.tasks
            .spawn_on(async move { remove(&docker, &id).await }, &self.runtime);
    }
}

async fn remove(docker: &Docker, id: &str) {
    let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
    // 404: already gone; anything else is retried once after a pause (the
    // engine refuses removal while a kill is still in progress).
    for attempt in 0..2 {
        match docker.remove_container(id, Some(options.clone())).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => return,
            Err(e) if attempt == 1 => {
                tracing::warn!(container = id, error = %e, "could not remove a sandbox container");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

impl DockerSandbox {
    /// Connects to the engine at the default socket (or `DOCKER_HOST`),
    /// checks the image, removes containers left by dead workers on this
    /// host, and starts keeping `pool_size` containers ready for runs with
    /// `limits`.
    pub async fn connect(image: &str, limits: &RunLimits, pool_size: usize) -> Result<DockerSandbox, SandboxError> {
        let unavailable =
            |what: &str, e: &dyn std::fmt::Display| SandboxError::Unavailable(format!("docker: {what}: {e}"));
        let docker = Docker::connect_with_socket_defaults().map_err(|e| unavailable("connecting", &e))?;
        let docker = docker.negotiate_version().await.map_err(|e| {
            unavailable(
                "no engine answers at the default socket (/var/run/docker.sock; start one with scripts/ensure-docker)",
                &e,
            )
        })?;
        docker.inspect_image(image).await.map_err(|e| {
            unavailable(
                &format!("image {image} is missing (build it with scripts/build-sandbox-image)"),
                &e,
            )
        })?;
        let owner = owner_of(std::process::id())
            .ok_or_else(|| SandboxError::Unavailable("docker: cannot read this process's start time".into()))?;
        let inner = Arc::new(Inner {
            docker,
            image: image.to_owned(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            owner,
            pool_size,
            pool: Mutex::new(Pool {
                shape: Shape::of(limits),
                warm: VecDeque::new(),
            }),
            refill: Notify::new(),
            tasks: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
        });
        inner.remove_orphans().await?;
        let stop = CancellationToken::new();
        inner.tasks.spawn(Arc::clone(&inner).keep_pool(stop.clone()));
        Ok(DockerSandbox { inner, stop })
    }

    /// The label value that marks this instance's containers
    /// (`org.kiln.sandbox.instance`), for tests that check nothing is left.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    async fn run(&self, args: &[String], stdin: Vec<u8>, limits: &RunLimits) -> Result<RunOutput, SandboxError> {
        if self.stop.is_cancelled() {
            return Err(SandboxError::Unavailable("docker: the sandbox is shut down".into()));
        }
        let started = Instant::now();
        let warm = match self.inner.take(Shape::of(limits)) {
            Some(warm) => warm,
            None => self.inner.create(Shape::of(limits)).await?,
        };
        let Warm { guard, output, input } = warm;
        let mut command_line = Vec::with_capacity(args.len() + 1);
        command_line.push(PYTHON.to_owned());
        command_line.extend(args.iter().cloned());
        let header = serde_json::json!({"argv": command_line, "cpu": limits.timeout.as_secs() + 5});
        let header = serde_json::to_vec(&header).expect("headers serialise");
        let mut payload = Vec::with_capacity(4 + header.len() + stdin.len());
        payload.extend_from_slice(&(header.len() as u32).to_be_bytes());
        payload.extend_from_slice(&header);
        payload.extend_from_slice(&stdin);

        let mut stdout = OutputCapture::new(limits.output_bytes, true);
        let mut stderr = OutputCapture::new(limits.output_bytes, false);
        let remaining = limits.timeout.saturating_sub(started.elapsed());
        let streamed = tokio::time::timeout(remaining, async {
            // Written alongside the reading: a run that prints before it has
            // read all its input must not deadlock against us.
            let writer = write_input(input, payload);
            let reader = read_output(output, &mut stdout, &mut stderr);
            let ((), read) = tokio::join!(writer, reader);
            read
        })
        .await;
        let (exit, timed_out) = match streamed {
            Err(_) => (None, true),
            Ok(Err(e)) => {
                return Err(SandboxError::Unavailable(format!(
                    "docker: reading the run's output: {e}"
                )));
            }
            Ok(Ok(())) => {
                let left = limits
                    .timeout
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_secs(1));
                match tokio::time::timeout(left, self.inner.exit_code(&guard.id)).await {
                    Ok(code) => (Some(code?), false),
                    Err(_) => (None, true),
                }
            }
        };
        let oom_killed = match exit {
            Some(code) if code != 0 => self.inner.oom_killed(&guard.id).await,
            _ => false,
        };
        if timed_out {
            // Whatever the run still does stops before we return.
            guard.remove_now().await;
        } else {
            // It has exited; removing it need not delay the result.
            drop(guard);
        }
        let (stdout, stdout_tail, out_truncated) = stdout.finish();
        let (stderr, _, err_truncated) = stderr.finish();
        // Docker reports 128 + n when pid 1 died of signal n.
        let (exit_code, signal) = match exit {
            None => (None, Some(9)),
            Some(code) if (129..=192).contains(&code) => (None, Some((code - 128) as i32)),
            Some(code) => (Some(code as i32), None),
        };
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

impl Inner {
    /// A warm container of `shape`, if one is ready; asks for a refill.
    fn take(&self, shape: Shape) -> Option<Warm> {
        let (warm, stale) = {
            let mut pool = self.pool.lock().expect("pool lock");
            let stale = if pool.shape == shape {
                VecDeque::new()
            } else {
                pool.shape = shape;
                std::mem::take(&mut pool.warm)
            };
            (pool.warm.pop_front(), stale)
        };
        // Dropped outside the lock: each drop spawns a removal.
        drop(stale);
        self.refill.notify_one();
        warm
    }

    /// Keeps the pool full until `stop`, then empties it. While idle, also
    /// removes now and then what dead workers on this host left running.
    async fn keep_pool(self: Arc<Inner>, stop: CancellationToken) {
        let mut failures = 0u32;
        let mut sweep = tokio::time::interval(ORPHAN_SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (shape, missing) = {
                let pool = self.pool.lock().expect("pool lock");
                (pool.shape, self.pool_size.saturating_sub(pool.warm.len()))
            };
            if missing == 0 {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = self.refill.notified() => continue,
                    _ = sweep.tick() => {
                        if let Err(e) = self.remove_orphans().await {
                            tracing::warn!(error = %e, "could not look for dead workers' containers");
                        }
                        continue;
                    }
                }
            }
            let made = tokio::select! {
                () = stop.cancelled() => break,
                made = futures::future::join_all((0..missing).map(|_| self.create(shape))) => made,
            };
            let (failed, unwanted) = {
                let mut pool = self.pool.lock().expect("pool lock");
                let mut unwanted = Vec::new();
                for warm in made {
                    match warm {
                        Ok(warm) if pool.shape == shape && pool.warm.len() < self.pool_size => {
                            pool.warm.push_back(warm);
                        }
                        Ok(warm) => unwanted.push(warm),
                        Err(e) => {
                            failures += 1;
                            if failures == 1 || failures.is_power_of_two() {
                                tracing::warn!(error = %e, failures, "could not prepare a sandbox container");
                            }
                        }
                    }
                }
                (pool.warm.len() < self.pool_size && pool.shape == shape, unwanted)
            };
            drop(unwanted);
            if failed {
                // The engine is struggling (or gone): runs still make their
                // own containers; retry the pool gently.
                let pause = Duration::from_millis(250 * u64::from(failures.min(20)));
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            } else {
                failures = 0;
            }
        }
        let drained = std::mem::take(&mut self.pool.lock().expect("pool lock").warm);
        drop(drained);
    }

    /// Creates, attaches and starts a container waiting in the launcher.
    async fn create(&self, shape: Shape) -> Result<Warm, SandboxError> {
        let docker = &self.docker;
        let failed = |what: &str, e: bollard::errors::Error| SandboxError::Unavailable(format!("docker: {what}: {e}"));
        let id = docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                self.config(shape),
            )
            .await
            .map_err(|e| failed("creating a container", e))?
            .id;
        // From here on the container exists: the guard removes it on any
        // early return, and when this future is dropped.
        let guard = ContainerGuard {
            id,
            docker: docker.clone(),
            tasks: self.tasks.clone(),
            runtime: self.runtime.clone(),
        };
        // Attached before the start, so no output can be missed.
        let options = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let attached = docker
            .attach_container(&guard.id, Some(options))
            .await
            .map_err(|e| failed("attaching to a container", e))?;
        docker
            .start_container(&guard.id, None::<StartContainerOptions>)
            .await
            .map_err(|e| failed("starting a container", e))?;
        Ok(Warm {
            guard,
            output: attached.output,
            input: attached.input,
        })
    }

    fn config(&self, shape: Shape) -> ContainerCreateBody {
        let memory = (shape.memory_mb * 1024 * 1024) as i64;
        let tmpfs_bytes = shape.tmpfs_mb * 1024 * 1024;
        let tmpfs_options = format!("rw,nosuid,nodev,noexec,size={tmpfs_bytes},mode=1777");
        let ulimit = |name: &str, value: u64| ResourcesUlimits {
            name: Some(name.to_owned()),
            soft: Some(value as i64),
            hard: Some(value as i64),
        };
        ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some([PYTHON, "-I", "-S", "-c", LAUNCHER].map(String::from).to_vec()),
            user: Some("65534:65534".into()),
            working_dir: Some("/work".into()),
            hostname: Some("sandbox".into()),
            env: Some(
                [
                    "PATH=/usr/bin:/bin",
                    "HOME=/work",
                    "LANG=C.UTF-8",
                    "TMPDIR=/tmp",
                    "PYTHONDONTWRITEBYTECODE=1",
                ]
                .map(String::from)
                .to_vec(),
            ),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(true),
            // The container's stdin closes when we close ours (and when the
            // worker dies: a pooled container then exits by itself).
            stdin_once: Some(true),
            tty: Some(false),
            network_disabled: Some(true),
            labels: Some(HashMap::from([
                (LABEL.to_owned(), "1".to_owned()),
                (LABEL_OWNER.to_owned(), self.owner.clone()),
                (LABEL_INSTANCE.to_owned(), self.instance.clone()),
            ])),
            host_config: Some(HostConfig {
                memory: Some(memory),
                // Equal to memory: no swap to outlive the limit in.
                memory_swap: Some(memory),
                nano_cpus: Some(NANO_CPUS),
                pids_limit: Some(shape.pids as i64),
                network_mode: Some("none".into()),
                readonly_rootfs: Some(true),
                tmpfs: Some(HashMap::from([
                    ("/work".to_owned(), tmpfs_options.clone()),
                    ("/tmp".to_owned(), tmpfs_options),
                ])),
                shm_size: Some(tmpfs_bytes as i64),
                ipc_mode: Some("private".into()),
                cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                // No init: the harness itself is pid 1, so nothing the run's code
                // could take over sits above it.
                init: Some(false),
                privileged: Some(false),
                ulimits: Some(vec![
                    ulimit("nofile", 512),
                    ulimit("fsize", tmpfs_bytes),
                    ulimit("core", 0),
                ]),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: Some(HashMap::from([
                        ("max-size".to_owned(), LOG_MAX_SIZE.to_owned()),
                        ("max-file".to_owned(), "1".to_owned()),
                    ])),
                }),
                auto_remove: Some(false),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        }
    }

    /// The exit code of a container whose output has ended.
    async fn exit_code(&self, id: &str) -> Result<i64, SandboxError> {
        let options = WaitContainerOptionsBuilder::default().condition("not-running").build();
        let mut wait = std::pin::pin!(self.docker.wait_container(id, Some(options)));
        match wait.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(SandboxError::Unavailable(format!(
                "docker: waiting for a container: {e}"
            ))),
            None => Err(SandboxError::Unavailable(
                "docker: the wait for a container ended without a status".into(),
            )),
        }
    }

    async fn oom_killed(&self, id: &str) -> bool {
        self.docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.oom_killed)
            .unwrap_or(false)
    }

    /// Removes Kiln's containers on this host whose owner process is gone.
    async fn remove_orphans(&self) -> Result<(), SandboxError> {
        let filters = HashMap::from([("label".to_owned(), vec![LABEL.to_owned()])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| SandboxError::Unavailable(format!("docker: listing containers: {e}")))?;
        let host = hostname();
        for container in containers {
            let Some(owner) = container.labels.as_ref().and_then(|l| l.get(LABEL_OWNER)) else {
                continue;
            };
            let mut parts = owner.splitn(3, ':');
            let (Some(owner_host), Some(pid)) = (parts.next(), parts.next().and_then(|p| p.parse::<u32>().ok())) else {
                continue;
            };
            if owner_host == host
                && owner_of(pid).as_deref() != Some(owner.as_str())
                && let Some(id) = container.id
            {
                remove(&self.docker, &id).await;
            }
        }
        Ok(())
    }
}

impl Drop for DockerSandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Sandbox for DockerSandbox {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn run_python<'a>(
        &'a self,
        args: &'a [String],
        stdin: Vec<u8>,
        limits: &'a RunLimits,
    ) -> BoxFuture<'a, Result<RunOutput, SandboxError>> {
        Box::pin(self.run(args, stdin, limits))
    }

    /// Removes the pooled containers and waits until every container this
    /// instance created is gone. Runs after this fail as unavailable.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.stop.cancel();
            self.inner.tasks.close();
            self.inner.tasks.wait().await;
        })
    }
}

async fn write_input(mut input: InputSink, payload: Vec<u8>) {
    // A run may exit without reading its input; that is its business.
    let _ = input.write_all(&payload).await;
    let _ = input.shutdown().await;
}

async fn read_output(
    mut output: OutputStream,
    stdout: &mut OutputCapture,
    stderr: &mut OutputCapture,
) -> Result<(), bollard::errors::Error> {
    while let Some(frame) = output.next().await {
        match frame? {
            LogOutput::StdOut { message } | LogOutput::Console { message } => stdout.push(&message),
            LogOutput::StdErr { message } => stderr.push(&message),
            LogOutput::StdIn { .. } => {}
        }
    }
    Ok(())
}

/// `host:pid:start-time` of a live process, the start time telling a
/// process from a later one with the same pid.
fn owner_of(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime), counted after the parenthesised command name.
    let started = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?;
    Some(format!("{}:{pid}:{started}", hostname()))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "unknown".into(), |h| h.trim().to_owned())
}
