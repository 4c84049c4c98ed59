//! Shared set-up for the sandbox suites (`tests/sandbox_hostile.rs`,
//! `tests/humaneval.rs`, `benches/sandbox.rs`): either backend behind one
//! constructor, function jobs through the real harness, the demo's notes
//! service, and a check that runs left nothing behind on the host.
//!
//! The docker backend's tests need an engine at the default socket and the
//! `kiln-sandbox` image (`scripts/ensure-docker` provides both); without them
//! they fail, saying so, rather than being skipped.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptionsBuilder};
use kiln::files::File;
use kiln::report::TestReport;
use kiln::sandbox::docker::DockerSandbox;
use kiln::sandbox::process::ProcessSandbox;
use kiln::sandbox::{RunLimits, Sandbox, harness};
use kiln::spec::Spec;
use serde_json::{Value, json};

/// The demo's notes service (spec and scripted answer, from `examples/`),
/// as the demo's worker judges it.
pub fn notes_service() -> (Spec, Vec<File>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let specs: Vec<Value> = serde_yaml_ng::from_str(&read("specs/services.yaml")).expect("the demo's services");
    let spec = specs
        .into_iter()
        .find(|s| s["service_name"] == "notes-service")
        .expect("the notes service spec");
    let script: Value = serde_yaml_ng::from_str(&read("mock-llm/notes-service.yaml")).expect("its answer");
    let files = serde_json::from_value(script["responses"][0]["files"].clone()).expect("its files");
    (serde_json::from_value(spec).expect("a valid spec"), files)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Process,
    Docker,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Process => "process",
            Backend::Docker => "docker",
        }
    }
}

pub fn runtime() -> String {
    std::env::var("KILN_SANDBOX_RUNTIME").unwrap_or_else(|_| "/opt/kiln/sandbox".into())
}

pub fn image() -> String {
    std::env::var("KILN_SANDBOX_IMAGE").unwrap_or_else(|_| "kiln-sandbox:latest".into())
}

/// One sandbox instance of either backend.
pub struct TestSandbox {
    pub backend: Backend,
    sandbox: Arc<dyn Sandbox>,
    process: Option<Arc<ProcessSandbox>>,
    docker: Option<Arc<DockerSandbox>>,
}

impl TestSandbox {
    /// `pool` is the number of runs (or containers) prepared ahead.
    pub async fn new(backend: Backend, limits: &RunLimits, pool: usize) -> TestSandbox {
        match backend {
            Backend::Process => {
                let process = ProcessSandbox::with_pool(Path::new(&runtime()), pool)
                    .unwrap_or_else(|e| panic!("the process backend is unusable (run scripts/ensure-services): {e}"));
                let process = Arc::new(process);
                TestSandbox {
                    backend,
                    sandbox: process.clone(),
                    process: Some(process),
                    docker: None,
                }
            }
            Backend::Docker => {
                let docker = DockerSandbox::connect(&image(), limits, pool)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "the docker backend's tests need a Docker engine at /var/run/docker.sock and the {} image; \
                         run scripts/ensure-docker ({e})",
                            image()
                        )
                    });
                let docker = Arc::new(docker);
                TestSandbox {
                    backend,
                    sandbox: docker.clone(),
                    process: None,
                    docker: Some(docker),
                }
            }
        }
    }

    pub fn sandbox(&self) -> &dyn Sandbox {
        self.sandbox.as_ref()
    }

    /// Runs a function job through the real harness.
    pub async fn function_job(&self, job: &FunctionJob, limits: &RunLimits) -> TestReport {
        self.judge(&job.spec(), &job.files(), limits).await
    }

    /// Judges `files` against `spec` through the real harness; a sandbox
    /// fault fails the test.
    pub async fn judge(&self, spec: &Spec, files: &[File], limits: &RunLimits) -> TestReport {
        harness::run_tests(self.sandbox(), spec, files, limits)
            .await
            .unwrap_or_else(|e| panic!("{} sandbox fault: {e}", self.backend.name()))
    }

    /// Stops the instance and waits until everything it created is gone;
    /// returns what is left on the host (nothing, when all is well).
    pub async fn shutdown_and_find_leftovers(self, marker: &str) -> Vec<String> {
        if let Some(process) = &self.process {
            process.shutdown().await;
        }
        let instance = match &self.docker {
            Some(docker) => {
                docker.shutdown().await;
                Some(docker.instance().to_owned())
            }
            None => None,
        };
        drop(self);
        // The kernel tears a sandbox down asynchronously: give it a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = leftovers(marker, instance.as_deref()).await;
            if found.is_empty() || Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A function spec and its solution.
#[derive(Debug, Clone)]
pub struct FunctionJob {
    pub entry_point: String,
    pub solution: String,
    /// `(input, expected)`.
    pub cases: Vec<(Value, Value)>,
    pub test_code: Option<String>,
}

impl FunctionJob {
    pub fn spec(&self) -> Spec {
        let mut spec = json!({
            "kind": "function",
            "task_description": format!("Implement {}.", self.entry_point),
            "entry_point": self.entry_point,
        });
        if !self.cases.is_empty() {
            spec["test_cases"] = self
                .cases
                .iter()
                .map(|(input, expected)| json!({"input": input, "expected": expected}))
                .collect();
        }
        if let Some(code) = &self.test_code {
            spec["test_code"] = code.clone().into();
        }
        serde_json::from_value(spec).expect("a valid function spec")
    }

    pub fn files(&self) -> Vec<File> {
        vec![File::new("solution.py", self.solution.clone())]
    }
}

/// The cases of a report that did not pass, each with its outcome and the
/// start of its message: what a failed assertion shows.
pub fn failing(report: &TestReport) -> Vec<String> {
    report
        .cases
        .iter()
        .filter(|c| c.outcome != kiln::report::Outcome::Passed)
        .map(|c| {
            format!(
                "{} ({}): {}",
                c.name,
                c.outcome.as_str(),
                c.message.chars().take(600).collect::<String>()
            )
        })
        .collect()
}

/// A correct job: what every sandbox must still pass after hostile ones.
pub fn normal_job() -> FunctionJob {
    FunctionJob {
        entry_point: "add".into(),
        solution: "def add(a, b):\n    return a + b\n".into(),
        cases: vec![(json!([2, 3]), json!(5)), (json!({"a": -1, "b": 1}), json!(0))],
        test_code: Some("from solution import *\n\ndef test_add():\n    assert add(2, 3) == 5\n".into()),
    }
}

/// A correct solution that needs about 2.5 s of CPU in one call (12 sieves
/// of Eratosthenes up to 3 million, measured with the sandbox runtime's
/// Python on this project's 2-core machine): what a verdict under load is
/// tested with.
pub fn cpu_heavy_job() -> FunctionJob {
    FunctionJob {
        entry_point: "count_primes".into(),
        solution: r"
def count_primes(n):
    count = 0
    for _ in range(12):
        sieve = [True] * n
        count = 0
        for i in range(2, n):
            if sieve[i]:
                count += 1
                for j in range(i * i, n, i):
                    sieve[j] = False
    return count
"
        .into(),
        cases: Vec::new(),
        test_code: Some(
            r"from solution import count_primes

def test_count():
    assert count_primes(3_000_000) == 216816
"
            .into(),
        ),
    }
}

/// Serialises the suites that check the host for leftovers (a run of one
/// test would otherwise be another's leftover), across test threads and
/// across test processes (nextest runs each test in its own).
pub async fn exclusive() -> std::fs::File {
    tokio::task::spawn_blocking(|| {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("kiln-sandbox-suites.lock"))
            .expect("the suites' lock file");
        file.lock().expect("locking the suites' lock file");
        file
    })
    .await
    .expect("the lock task")
}

/// What a run may have left on the host: processes (marked with `marker`,
/// running as 65534 under this test process, or in a cgroup of a run of
/// this process or of a container that no longer exists), this process's
/// run cgroups, the instance's containers, and mounts of removed containers
/// or of sandboxes.
pub async fn leftovers(marker: &str, docker_instance: Option<&str>) -> Vec<String> {
    let mut found = Vec::new();
    let me = std::process::id();
    let run_prefix = format!("run-{me}-");
    let live_containers = match docker_instance {
        Some(_) => Some(live_containers().await),
        None => None,
    };
    for pid in pids() {
        if pid == me {
            continue;
        }
        let read = |file: &str| std::fs::read(format!("/proc/{pid}/{file}")).unwrap_or_default();
        let comm = String::from_utf8_lossy(&read("comm")).trim().to_owned();
        let cmdline = String::from_utf8_lossy(&read("cmdline")).replace('\0', " ");
        let status = String::from_utf8_lossy(&read("status")).into_owned();
        let cgroup = String::from_utf8_lossy(&read("cgroup")).into_owned();
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        let describe = || {
            format!(
                "process {pid} ({comm}) uid {uid:?}: {}",
                cmdline.chars().take(120).collect::<String>()
            )
        };
        if comm.contains(marker) || cmdline.contains(marker) {
            found.push(format!("marked {}", describe()));
            continue;
        }
        if uid != Some(65534) {
            continue;
        }
        if descends_from(pid, me) {
            found.push(format!("sandbox {}", describe()));
        } else if cgroup.contains(&run_prefix) {
            found.push(format!("in a run cgroup: {}", describe()));
        } else if let Some(live) = &live_containers
            && let Some(id) = docker_id(&cgroup)
            && !live.iter().any(|c| c.starts_with(&id) || id.starts_with(c.as_str()))
        {
            found.push(format!("in removed container {id}: {}", describe()));
        }
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        for group in std::fs::read_dir(hierarchy.path().join("kiln"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if group.file_name().to_string_lossy().starts_with(&run_prefix) {
                found.push(format!("cgroup {}", group.path().display()));
            }
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let point = line.split(' ').nth(4).unwrap_or("");
        if point.contains(marker) || point.contains("bwrap") || point.contains("kiln-sandbox") {
            found.push(format!("mount {point}"));
        }
    }
    if let (Some(instance), Some(live)) = (docker_instance, &live_containers) {
        found.extend(instance_containers(instance).await);
        found.extend(orphaned_docker_mounts(&mountinfo, live).await);
    }
    found
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect()
}

fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let Some(parent) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            return false;
        };
        if parent == ancestor {
            return true;
        }
        if parent <= 1 {
            return false;
        }
        pid = parent;
    }
    false
}

/// The container id in a `/proc/<pid>/cgroup` listing, if any.
fn docker_id(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.rsplit(':').next()?;
        let id = path.split("docker/").nth(1).or_else(|| path.split("docker-").nth(1))?;
        let id: String = id.chars().take_while(char::is_ascii_hexdigit).collect();
        (id.len() >= 12).then_some(id)
    })
}

fn docker() -> Docker {
    Docker::connect_with_socket_defaults().expect("a docker client")
}

async fn live_containers() -> HashSet<String> {
    let docker = docker().negotiate_version().await.expect("the docker engine answers");
    let options = ListContainersOptionsBuilder::default().all(true).build();
    docker
        .list_containers(Some(options))
        .await
        .expect("listing containers")
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

async fn instance_containers(instance: &str) -> Vec<String> {
    let docker = docker().negotiate_version().await.expect("the docker engine answers");
    let filters = std::collections::HashMap::from([(
        "label".to_owned(),
        vec![format!("org.kiln.sandbox.instance={instance}")],
    )]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(options))
        .await
        .expect("listing containers")
        .into_iter()
        .map(|c| format!("container {} ({:?})", c.id.unwrap_or_default(), c.state))
        .collect()
}

/// Docker's mounts (container files, overlay roots) that belong to no
/// existing container.
async fn orphaned_docker_mounts(mountinfo: &str, live: &HashSet<String>) -> Vec<String> {
    let docker = docker().negotiate_version().await.expect("the docker engine answers");
    let mut merged_dirs = HashSet::new();
    for id in live {
        if let Ok(c) = docker.inspect_container(id, None::<InspectContainerOptions>).await
            && let Some(dir) = c.graph_driver.and_then(|g| g.data.get("MergedDir").cloned())
        {
            merged_dirs.insert(dir);
        }
    }
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let point = line.split(' ').nth(4).unwrap_or("");
        if let Some(rest) = point.strip_prefix("/var/lib/docker/containers/") {
            let id = rest.split('/').next().unwrap_or("");
            if !live.contains(id) {
                found.push(format!("mount {point} of removed container"));
            }
        } else if point.starts_with("/var/lib/docker/overlay2/")
            && point.ends_with("/merged")
            && !merged_dirs.contains(point)
        {
            found.push(format!("mount {point} of no container"));
        }
    }
    found
}

/// A marker 15 characters long, the most a process name holds, so hostile
/// code can name its processes with it.
pub fn marker() -> String {
    format!("kh{}", &uuid::Uuid::new_v4().simple().to_string()[..13])
}

#[path = "humaneval.rs"]
mod humaneval_data;
// Not every binary that includes this file reads HumanEval.
#[allow(unused_imports)]
pub use humaneval_data::{HumanEval, humaneval};

/// HumanEval jobs in flight at once (the machine's two cores, doubled: a
/// job waits on process start-up part of the time).
pub const HUMANEVAL_PARALLEL: usize = 4;

/// Limits of a HumanEval run: roomy, so only a wrong answer fails one.
pub fn humaneval_limits() -> RunLimits {
    RunLimits {
        timeout: Duration::from_secs(60),
        memory_mb: 512,
        pids: 128,
        tmpfs_mb: 64,
        output_bytes: 256 * 1024,
    }
}

/// Wraps the entry point so that every result it returns is changed
/// (a bool flipped, a number moved, a sequence lengthened), which the
/// problem's own checks must notice.
const PERTURB: &str = r#"

def _kiln_perturb(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 1.5
    if isinstance(value, str):
        return value + "~"
    if isinstance(value, list):
        return value + [None]
    if isinstance(value, tuple):
        return value + (None,)
    if isinstance(value, dict):
        return {**value, "~": None}
    if value is None:
        return 0
    return None


_kiln_original = ENTRY_POINT


def ENTRY_POINT(*args, **kwargs):
    return _kiln_perturb(_kiln_original(*args, **kwargs))
"#;

impl HumanEval {
    /// The problem as a function job: `solution.py` is the prompt and the
    /// canonical solution (perturbed when `wrong`); the tests are the
    /// problem's `check` run by pytest against the entry point.
    pub fn job(&self, wrong: bool) -> FunctionJob {
        let mut solution = format!("{}{}", self.prompt, self.canonical_solution);
        if wrong {
            solution.push_str(&PERTURB.replace("ENTRY_POINT", &self.entry_point));
        }
        FunctionJob {
            entry_point: self.entry_point.clone(),
            solution,
            cases: Vec::new(),
            test_code: Some(format!(
                "from solution import *\n\n{}\n\ndef test_check():\n    check({})\n",
                self.test, self.entry_point
            )),
        }
    }
}

/// Runs each named `async fn(Backend)` of the including test file as a
/// test on each backend, as `process::name` and `docker::name`.
#[allow(unused_macros)]
macro_rules! for_both_backends {
    ($($name:ident),* $(,)?) => {
        mod process {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::Process).await;
                }
            )*
        }
        mod docker {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::Docker).await;
                }
            )*
        }
    };
}
