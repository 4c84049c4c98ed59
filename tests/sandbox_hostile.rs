//! Hostile code against both sandbox backends, through the real harness.
//!
//! Every case is a function job whose tests the hostile solution would pass
//! only if containment or judging failed: a fork bomb "passes" when it made
//! thousands of processes, a leak when it returns the planted secret, a
//! forged report when Kiln believes it. Each must be judged failed with no
//! case passed, within the wall clock; the same sandbox instance must then
//! pass a normal job; and nothing may be left on the host (processes,
//! cgroups, containers, mounts, files).
//!
//! The tests are generated for each backend (`process::…`, `docker::…`)
//! and take a machine-wide lock, so one run's sandbox is never mistaken for
//! another's leftovers.

#[path = "support/sandbox.rs"]
#[macro_use]
mod sandbox_support;

use std::path::Path;
use std::time::{Duration, Instant};

use kiln::report::TestReport;
use kiln::sandbox::RunLimits;
use sandbox_support::{Backend, FunctionJob, TestSandbox, exclusive, marker, normal_job, notes_service};
use serde_json::{Value, json};

fn limits() -> RunLimits {
    RunLimits {
        timeout: Duration::from_secs(8),
        memory_mb: 256,
        pids: 64,
        tmpfs_mb: 16,
        output_bytes: 64 * 1024,
    }
}

/// Runs `job` (built with this run's marker) on a fresh sandbox of
/// `backend` and checks the common guarantees; returns the report and the
/// marker for checks of its own.
async fn judged_failed(backend: Backend, job: impl FnOnce(&str) -> FunctionJob) -> (TestReport, String) {
    let _lock = exclusive().await;
    let marker = marker();
    let job = job(&marker);
    compiles(&job.solution);
    if let Some(tests) = &job.test_code {
        compiles(tests);
    }
    let limits = limits();
    let sandbox = TestSandbox::new(backend, &limits, 1).await;
    let started = Instant::now();
    let report = sandbox.function_job(&job, &limits).await;
    let took = started.elapsed();
    assert!(
        report.passed == 0 && !report.all_passed(),
        "a hostile job must be judged failed with no case passed: {report:#?}"
    );
    assert!(
        took < limits.timeout + Duration::from_secs(5),
        "the run took {took:?}, past its {:?} wall clock",
        limits.timeout
    );
    let normal = sandbox.function_job(&normal_job(), &limits).await;
    assert!(
        normal.all_passed(),
        "after a hostile job the same sandbox must pass a normal one: {normal:#?}"
    );
    let left = sandbox.shutdown_and_find_leftovers(&marker).await;
    assert!(left.is_empty(), "left on the host after the run: {left:#?}");
    (report, marker)
}

/// A hostile solution that does not even compile would be judged failed
/// for the wrong reason.
fn compiles(solution: &str) {
    let mut child = std::process::Command::new(format!("{}/bin/python3", sandbox_support::runtime()))
        .args(["-I", "-c", "import ast, sys; ast.parse(sys.stdin.read())"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the runtime's python");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), solution.as_bytes())
        .expect("writing the solution");
    let out = child.wait_with_output().expect("the syntax check");
    assert!(
        out.status.success(),
        "the hostile solution does not compile: {}\n{solution}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn job(
    entry_point: &str,
    solution: &str,
    marker: &str,
    cases: Vec<(Value, Value)>,
    test_code: Option<&str>,
) -> FunctionJob {
    FunctionJob {
        entry_point: entry_point.into(),
        solution: solution.replace("MARKER", marker),
        cases,
        test_code: test_code.map(str::to_owned),
    }
}

/// Sets the calling process's name to the marker, so the host check finds
/// it if it survives. Prepended to solutions that start processes.
const NAME_SELF: &str = r"import ctypes as _ctypes


def _name_self():
    _ctypes.CDLL(None).prctl(15, b'MARKER', 0, 0, 0)
";

/// Tests of a wrong `add`: the judging attacks below must not make it pass.
const WRONG_ADD_TESTS: &str = r"from solution import *


def test_add():
    assert add(2, 3) == 5
";

fn wrong_add_cases() -> Vec<(Value, Value)> {
    vec![(json!([2, 3]), json!(5)), (json!([10, 4]), json!(14))]
}

/// The attack did not stop the wrong `add` from being imported and judged
/// on its answers (so the verdict is not failed for some other reason).
fn judged_on_its_answers(report: &TestReport) {
    assert!(
        report.cases.iter().any(|c| c.message.contains("expected 5, got -1")),
        "the wrong add was judged on its answers: {report:#?}"
    );
}

// ---------------------------------------------------------------- containment

const FORK_BOMB: &str = r"
import os, time


def escaped():
    made = 0
    for _ in range(5000):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            _name_self()
            while True:
                try:
                    os.fork()
                except OSError:
                    time.sleep(0.01)
        made += 1
    return made >= 5000
";

const ESCAPED_TESTS: &str = r"from solution import *


def test_escaped():
    assert escaped()
";

async fn a_fork_bomb_is_contained_and_judged_failed(backend: Backend) {
    let solution = format!("{NAME_SELF}{FORK_BOMB}");
    judged_failed(backend, |m| {
        job(
            "escaped",
            &solution,
            m,
            vec![(json!([]), json!(true))],
            Some(ESCAPED_TESTS),
        )
    })
    .await;
}

const THREAD_BOMB: &str = r"
import threading, time


def escaped():
    _name_self()
    made = 0
    try:
        for _ in range(10000):
            threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
            made += 1
    except RuntimeError:
        pass
    return made >= 10000
";

async fn a_thread_bomb_is_contained_and_judged_failed(backend: Backend) {
    let solution = format!("{NAME_SELF}{THREAD_BOMB}");
    judged_failed(backend, |m| {
        job("escaped", &solution, m, vec![(json!([]), json!(true))], None)
    })
    .await;
}

/// Each block is written, so it is resident, not just reserved.
const MEMORY_BOMB: &str = r"
def escaped():
    held = []
    for _ in range(64):
        held.append(b'\x01' * (64 << 20))
    return sum(map(len, held)) >= (4 << 30)
";

async fn a_memory_bomb_is_contained_and_judged_failed(backend: Backend) {
    judged_failed(backend, |m| {
        job(
            "escaped",
            MEMORY_BOMB,
            m,
            vec![(json!([]), json!(true))],
            Some(ESCAPED_TESTS),
        )
    })
    .await;
}

const CPU_SPIN: &str = r"
import os


def spin():
    for _ in range(3):
        if os.fork() == 0:
            _name_self()
            while True:
                pass
    while True:
        pass
";

async fn a_cpu_spin_is_stopped_and_judged_failed(backend: Backend) {
    let solution = format!("{NAME_SELF}{CPU_SPIN}");
    judged_failed(backend, |m| {
        job("spin", &solution, m, vec![(json!([]), json!(1))], None)
    })
    .await;
}

const SLEEPER: &str = r"
import signal, time

for _sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(_sig, signal.SIG_IGN)
_name_self()


def slow():
    time.sleep(3600)
    return 1
";

async fn sleeping_past_the_timeout_is_stopped_and_judged_failed(backend: Backend) {
    let solution = format!("{NAME_SELF}{SLEEPER}");
    let (report, _) = judged_failed(backend, |m| {
        job(
            "slow",
            &solution,
            m,
            vec![(json!([]), json!(1))],
            Some("from solution import *\n\n\ndef test_slow():\n    assert slow() == 1\n"),
        )
    })
    .await;
    assert!(
        report.cases.iter().any(|c| c.message.contains("did not return")) || report.problem.is_some(),
        "the verdict says why: {report:#?}"
    );
}

/// The daemon escapes the runner's session and keeps trying to forge a
/// report and to rewrite the test file while the later stages run.
const DAEMON: &str = r#"
import os, time

FORGED = '\nKILN-REPORT 00000000000000000000000000000000 {"cases": [{"name": "case_0", "value": 5}], "pytest": null, "problem": null, "output": ""}\n'


def _daemon():
    if os.fork() != 0:
        return
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    _name_self()
    while True:
        for path in ('/proc/1/fd/1', '/proc/%d/fd/1' % os.getppid()):
            try:
                with open(path, 'w') as out:
                    out.write(FORGED)
            except OSError:
                pass
        try:
            with open('/work/.kiln/tests/test_spec.py', 'w') as out:
                out.write('def test_add():\n    pass\n')
        except OSError:
            pass
        time.sleep(0.02)


_daemon()


def add(a, b):
    return a - b
"#;

async fn a_setsid_daemon_does_not_outlive_the_run(backend: Backend) {
    let solution = format!("{NAME_SELF}{DAEMON}");
    let (report, _) = judged_failed(backend, |m| {
        job("add", &solution, m, wrong_add_cases(), Some(WRONG_ADD_TESTS))
    })
    .await;
    judged_on_its_answers(&report);
}

const SHOUT: &str = r"
import sys


def shout():
    chunk = 'x' * (1 << 20)
    for _ in range(1024):
        sys.stdout.write(chunk)
    sys.stdout.flush()
    return 0
";

async fn a_gigabyte_of_stdout_is_capped_and_judged_failed(backend: Backend) {
    let (report, _) = judged_failed(backend, |m| job("shout", SHOUT, m, vec![(json!([]), json!(1))], None)).await;
    assert!(
        report.output.len() <= limits().output_bytes,
        "the kept output is capped: {} bytes",
        report.output.len()
    );
    assert!(
        report.output.contains("discarded"),
        "the cut is visible: {}",
        &report.output[..200]
    );
}

/// Files of 8 MiB, each under the file-size limit, so only the size of the
/// file system can stop them.
const FILL: &str = r"
import os


def filled(where):
    written = 0
    chunk = b'\0' * (1 << 20)
    try:
        for n in range(8):
            with open(os.path.join(where, 'MARKER-%d' % n), 'wb') as out:
                for _ in range(8):
                    out.write(chunk)
                    out.flush()
                    written += len(chunk)
    except OSError:
        pass
    return written >= (64 << 20)
";

async fn filling_tmp_is_contained_and_judged_failed(backend: Backend) {
    let places = ["/tmp", "/work", "/dev/shm"];
    let (_, marker) = judged_failed(backend, |m| {
        job(
            "filled",
            FILL,
            m,
            places.iter().map(|p| (json!(p), json!(true))).collect(),
            None,
        )
    })
    .await;
    for place in places {
        for n in 0..8 {
            let file = Path::new(place).join(format!("{marker}-{n}"));
            assert!(!file.exists(), "a file reached the host's {place}");
        }
    }
}

const WRITE_ANYWHERE: &str = r"
import os


def wrote(where):
    try:
        with open(os.path.join(where, 'MARKER'), 'w') as out:
            out.write('escaped')
        return True
    except OSError:
        return False
";

async fn writing_outside_the_work_dir_is_refused_and_judged_failed(backend: Backend) {
    let places = [
        "/",
        "/usr/lib",
        "/opt/kiln/sandbox/bin",
        "/opt/kiln/sandbox/lib/python3.11/site-packages",
        "/etc",
        "/root",
        "/home",
        "/var/tmp",
        "/dev",
        "/run",
        "/sys/fs/cgroup",
        "/proc",
    ];
    let (_, marker) = judged_failed(backend, |m| {
        job(
            "wrote",
            WRITE_ANYWHERE,
            m,
            places.iter().map(|p| (json!(p), json!(true))).collect(),
            None,
        )
    })
    .await;
    for place in places {
        assert!(
            !Path::new(place).join(&marker).exists(),
            "a file reached the host's {place}"
        );
    }
}

const READ: &str = r"
def read(path):
    with open(path, 'rb') as f:
        return f.read().decode('utf-8', 'replace')
";

async fn reading_etc_shadow_is_refused_and_judged_failed(backend: Backend) {
    let shadow = std::fs::read_to_string("/etc/shadow").expect("the test runs as root and reads /etc/shadow");
    judged_failed(backend, |m| {
        job(
            "read",
            READ,
            m,
            vec![
                (json!("/etc/shadow"), json!(shadow)),
                (json!("/proc/1/root/etc/shadow"), json!(shadow)),
            ],
            None,
        )
    })
    .await;
}

async fn reading_proc_1_environ_and_the_workers_environ_is_refused_and_judged_failed(backend: Backend) {
    // The host's pid 1 when this process may read it (it may not, in some
    // containers), and this process's own: what a sandbox must never see.
    let read = |path: &str| std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned());
    let own = read("/proc/self/environ").expect("this process's environment");
    let init = read("/proc/1/environ").unwrap_or_else(|_| own.clone());
    let me = format!("/proc/{}/environ", std::process::id());
    judged_failed(backend, |m| {
        job(
            "read",
            READ,
            m,
            vec![
                (json!("/proc/1/environ"), json!(init)),
                (json!(me), json!(own)),
                (json!("/proc/self/environ"), json!(own)),
            ],
            None,
        )
    })
    .await;
}

const NETWORK: &str = r"
import socket


def _tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def reached(channel):
    if channel == 'tcp':
        return any(_tcp(h, p) for h, p in (('1.1.1.1', 443), ('8.8.8.8', 53), ('151.101.0.223', 443)))
    if channel == 'udp':
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        query = b'\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04pypi\x03org\x00\x00\x01\x00\x01'
        try:
            s.sendto(query, ('8.8.8.8', 53))
            return len(s.recvfrom(512)[0]) > 0
        except OSError:
            return False
    if channel == 'dns':
        try:
            return len(socket.getaddrinfo('pypi.org', 443)) > 0
        except OSError:
            return False
    if channel == 'metadata':
        try:
            c = socket.create_connection(('169.254.169.254', 80), timeout=2)
            c.sendall(b'GET /latest/meta-data/ HTTP/1.0\r\n\r\n')
            return len(c.recv(100)) > 0
        except OSError:
            return False
    if channel == 'host-loopback':
        return any(_tcp('127.0.0.1', p) for p in (5432, 6379, 8080, 2375))
    if channel == 'docker-bridge':
        return any(_tcp('172.17.0.1', p) for p in (5432, 6379, 22, 2375))
    if channel == 'docker-socket':
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect('/var/run/docker.sock')
            return True
        except OSError:
            return False
    raise ValueError(channel)
";

async fn the_network_is_unreachable_and_judged_failed(backend: Backend) {
    let channels = [
        "tcp",
        "udp",
        "dns",
        "metadata",
        "host-loopback",
        "docker-bridge",
        "docker-socket",
    ];
    judged_failed(backend, |m| {
        job(
            "reached",
            NETWORK,
            m,
            channels.iter().map(|c| (json!(c), json!(true))).collect(),
            None,
        )
    })
    .await;
}

const UNSHARE: &str = r"
import ctypes, os, subprocess

FLAGS = {'user': 0x10000000, 'mount': 0x00020000, 'net': 0x40000000, 'pid': 0x20000000, 'user+mount': 0x10020000}


def unshared(kind):
    if kind == 'binary':
        try:
            return subprocess.run(['unshare', '-r', '-n', 'true'], capture_output=True, timeout=5).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False
    pid = os.fork()
    if pid == 0:
        os._exit(0 if ctypes.CDLL(None, use_errno=True).unshare(FLAGS[kind]) == 0 else 1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
";

async fn nested_unshare_is_refused_and_judged_failed(backend: Backend) {
    let kinds = ["user", "mount", "net", "pid", "user+mount", "binary"];
    judged_failed(backend, |m| {
        job(
            "unshared",
            UNSHARE,
            m,
            kinds.iter().map(|k| (json!(k), json!(true))).collect(),
            None,
        )
    })
    .await;
}

const CLONE_USERNS: &str = r"
import ctypes, os, platform, struct

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
CLONE, CLONE3 = {'x86_64': (56, 435), 'aarch64': (220, 435)}[platform.machine()]
NEWUSER, SIGCHLD = 0x10000000, 17


def made(kind):
    if kind == 'clone':
        pid = libc.syscall(CLONE, NEWUSER | SIGCHLD, 0, 0, 0, 0)
    else:
        # struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls
        args = ctypes.create_string_buffer(struct.pack('8Q', NEWUSER, 0, 0, 0, SIGCHLD, 0, 0, 0))
        pid = libc.syscall(CLONE3, args, 64)
    if pid == 0:
        os._exit(0)
    if pid < 0:
        return False
    os.waitpid(pid, 0)
    return True
";

/// `unshare` is not the only way into a new user namespace: clone() and
/// clone3() with CLONE_NEWUSER are refused too (the job passes only if
/// every attempt was).
async fn a_user_namespace_cannot_be_made_with_clone_or_clone3(backend: Backend) {
    let _lock = exclusive().await;
    let limits = limits();
    let sandbox = TestSandbox::new(backend, &limits, 1).await;
    let job = job(
        "made",
        CLONE_USERNS,
        "",
        vec![(json!("clone"), json!(false)), (json!("clone3"), json!(false))],
        None,
    );
    let report = sandbox.function_job(&job, &limits).await;
    assert!(report.all_passed(), "a user namespace was made: {report:#?}");
}

const FLOOD: &str = r"
import os

b = b'x' * (1 << 20)
for _ in range(1024):
    os.write(1, b)
os.write(1, b'\nEND-OF-FLOOD\n')
";

async fn a_gigabyte_written_straight_to_the_sandboxs_stdout_is_capped(backend: Backend) {
    // Below the harness: the backend itself keeps only the cap (and the
    // tail), however much comes, and keeps draining so the run can finish.
    let _lock = exclusive().await;
    let limits = RunLimits {
        timeout: Duration::from_secs(60),
        ..limits()
    };
    let sandbox = TestSandbox::new(backend, &limits, 1).await;
    let args = ["-I", "-c", FLOOD].map(String::from);
    let out = sandbox
        .sandbox()
        .run_python(&args, Vec::new(), &limits)
        .await
        .expect("the run");
    assert!(!out.timed_out, "draining a gigabyte took the whole minute");
    assert_eq!(out.exit_code, Some(0), "{:?}", String::from_utf8_lossy(&out.stderr));
    assert!(out.truncated);
    assert_eq!(out.stdout.len(), limits.output_bytes);
    assert!(out.stdout_tail.len() <= limits.output_bytes);
    assert!(out.stdout_tail.ends_with(b"\nEND-OF-FLOOD\n"), "the tail keeps the end");
    let left = sandbox.shutdown_and_find_leftovers("no-marker-here").await;
    assert!(left.is_empty(), "left on the host: {left:#?}");
}

const LINGER: &str = r"
import ctypes, os, time

for _ in range(3):
    if os.fork() == 0:
        os.setsid()
        break
ctypes.CDLL(None).prctl(15, b'MARKER', 0, 0, 0)
time.sleep(3600)
";

async fn a_cancelled_run_leaves_nothing_behind(backend: Backend) {
    // The worker drops a run's future when a job is cancelled or its lease
    // is lost; the run must go with it.
    let _lock = exclusive().await;
    let marker = marker();
    let limits = limits();
    let sandbox = TestSandbox::new(backend, &limits, 1).await;
    let args = ["-I", "-c", &LINGER.replace("MARKER", &marker)].map(String::from);
    let mut run = sandbox.sandbox().run_python(&args, Vec::new(), &limits);
    let started = Instant::now();
    let named = format!("({marker})");
    let mut seen = Vec::new();
    // Generous: on a loaded machine a container can take seconds to start.
    while seen.len() < 4 && started.elapsed() < Duration::from_secs(20) {
        tokio::select! {
            out = &mut run => panic!("the run ended by itself: {out:?}"),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        seen = sandbox_support::leftovers(&marker, None).await;
        seen.retain(|p| p.contains(&named));
    }
    assert_eq!(
        seen.len(),
        4,
        "the run's four processes were running (and found): {seen:#?}"
    );
    drop(run);
    let left = sandbox.shutdown_and_find_leftovers(&marker).await;
    assert!(left.is_empty(), "left on the host after cancelling: {left:#?}");
}

/// A pid no process has (the kernel's largest is 4194304).
fn dead_pid() -> u32 {
    (4_000_000..4_194_304)
        .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        .expect("a free pid")
}

async fn what_a_dead_worker_left_is_removed_when_a_sandbox_starts(backend: Backend) {
    // A worker killed outright cannot clean up; the next one on the host
    // removes what it left (run cgroups, containers).
    let _lock = exclusive().await;
    let pid = dead_pid();
    match backend {
        Backend::Process => {
            let parents: Vec<_> = ["memory", "pids", "unified"]
                .iter()
                .map(|h| Path::new("/sys/fs/cgroup").join(h).join("kiln"))
                .filter(|p| p.is_dir())
                .collect();
            assert!(
                !parents.is_empty(),
                "this machine kind has writable cgroups for the sandbox"
            );
            let stale: Vec<_> = parents.iter().map(|p| p.join(format!("run-{pid}-7"))).collect();
            for dir in &stale {
                std::fs::create_dir(dir).expect("a stale run cgroup");
            }
            let etc = std::env::temp_dir().join(format!("kiln-sandbox-etc-{pid}-stale"));
            std::fs::create_dir(&etc).expect("a stale sandbox /etc");
            let sandbox = TestSandbox::new(backend, &limits(), 0).await;
            for dir in stale.iter().chain([&etc]) {
                assert!(!dir.exists(), "{} was removed", dir.display());
            }
            let left = sandbox.shutdown_and_find_leftovers("no-marker-here").await;
            assert!(left.is_empty(), "left on the host: {left:#?}");
        }
        Backend::Docker => {
            let docker = bollard::Docker::connect_with_socket_defaults()
                .expect("a docker client")
                .negotiate_version()
                .await
                .expect("the docker engine answers");
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("the hostname");
            let labels = std::collections::HashMap::from([
                ("org.kiln.sandbox".to_owned(), "1".to_owned()),
                ("org.kiln.sandbox.owner".to_owned(), format!("{}:{pid}:1", host.trim())),
                ("org.kiln.sandbox.instance".to_owned(), "a-dead-worker".to_owned()),
            ]);
            let config = bollard::models::ContainerCreateBody {
                image: Some(sandbox_support::image()),
                cmd: Some(["sleep", "3600"].map(String::from).to_vec()),
                labels: Some(labels),
                host_config: Some(bollard::models::HostConfig {
                    network_mode: Some("none".into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let id = docker
                .create_container(None::<bollard::query_parameters::CreateContainerOptions>, config)
                .await
                .expect("a stale container")
                .id;
            docker
                .start_container(&id, None::<bollard::query_parameters::StartContainerOptions>)
                .await
                .expect("starting it");
            let sandbox = TestSandbox::new(backend, &limits(), 0).await;
            let gone = docker
                .inspect_container(&id, None::<bollard::query_parameters::InspectContainerOptions>)
                .await
                .is_err();
            assert!(gone, "the dead worker's container {id} was removed");
            let left = sandbox.shutdown_and_find_leftovers("no-marker-here").await;
            assert!(left.is_empty(), "left on the host: {left:#?}");
        }
    }
}

// ---------------------------------------------------------------- judging

const EXIT_EARLY: &str = r"
import os


def add(a, b):
    return a - b


os._exit(0)
";

async fn exiting_before_the_tests_is_judged_failed(backend: Backend) {
    judged_failed(backend, |m| {
        job("add", EXIT_EARLY, m, wrong_add_cases(), Some(WRONG_ADD_TESTS))
    })
    .await;
}

const FAKE_OUTPUT: &str = r#"
import os, sys

FAKE = (
    '\nKILN-READY\nKILN-REPORT 0123456789abcdef0123456789abcdef {"cases": [{"name": "case_0", "value": 5}, {"name": "case_1", "value": 14}], '
    '"pytest": {"collected": ["test_spec.py::test_add"], "results": [{"name": "test_add", "outcome": "passed", "message": "", "when": "call"}], "exit_code": 0}, '
    '"problem": null, "output": ""}\n' + '===== 1 passed in 0.01s =====\nPASSED\n' * 3
)


def _shout():
    sys.stdout.write(FAKE)
    sys.stderr.write(FAKE)
    sys.stdout.flush()
    for path in ('/proc/1/fd/1', '/proc/1/fd/2', '/dev/stdout', '/proc/%d/fd/1' % os.getppid()):
        try:
            with open(path, 'w') as out:
                out.write(FAKE)
        except OSError:
            pass


_shout()


def add(a, b):
    _shout()
    return a - b
"#;

async fn printing_fake_pass_output_is_judged_failed(backend: Backend) {
    let (report, _) = judged_failed(backend, |m| {
        job("add", FAKE_OUTPUT, m, wrong_add_cases(), Some(WRONG_ADD_TESTS))
    })
    .await;
    judged_on_its_answers(&report);
}

const EXIT_IN_TEST: &str = r"
import os, sys


def add(a, b):
    sys.exit(0)


def sub(a, b):
    os._exit(0)
";

async fn sys_exit_inside_a_test_is_judged_failed(backend: Backend) {
    let tests = "from solution import *\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n\
                 def test_sub():\n    assert sub(3, 2) == 1\n";
    judged_failed(backend, |m| job("add", EXIT_IN_TEST, m, wrong_add_cases(), Some(tests))).await;
}

/// Plugins, ini files and forged tests wherever pytest might look, pytest
/// patched in the candidate's own process, and exported names that would
/// rewrite the tests' assertions if a star import bound them.
const PATCH_PYTEST: &str = r#"
import os

CONFTEST = (
    'import pytest\n'
    '@pytest.hookimpl(hookwrapper=True)\n'
    'def pytest_runtest_makereport(item, call):\n'
    '    outcome = yield\n'
    '    report = outcome.get_result()\n'
    '    report.outcome = "passed"\n'
    '    report.longrepr = None\n'
)
INI = '[pytest]\naddopts = -p no:python\npython_files = *.py\n'
FORGED = 'def test_add():\n    pass\n'


def _tamper():
    import pytest, _pytest.reports
    _pytest.reports.TestReport.passed = property(lambda self: True)
    pytest.main = lambda *a, **k: 0
    files = {
        'conftest.py': CONFTEST,
        'pytest.ini': INI,
        'tox.ini': INI,
        'setup.cfg': INI.replace('[pytest]', '[tool:pytest]'),
        'pyproject.toml': '[tool.pytest.ini_options]\naddopts = "-p no:python"\n',
        'test_forged.py': FORGED,
        'sitecustomize.py': CONFTEST,
        'json.py': 'raise SystemExit(0)\n',
        'pytest.py': 'raise SystemExit(0)\n',
    }
    # Not /work/src: that is where this module itself imports from.
    for d in ('/work', '/work/.kiln', '/work/.kiln/tests', '/tmp'):
        for name, text in files.items():
            try:
                with open(os.path.join(d, name), 'w') as out:
                    out.write(text)
            except OSError:
                pass
    try:
        with open('/work/.kiln/tests/test_spec.py', 'w') as out:
            out.write(FORGED)
    except OSError:
        pass


_tamper()


def add(a, b):
    return a - b


def abs(x):
    return 0


def len(x):
    return 1


def isinstance(*a):
    return True


def test_forged():
    return None


def setup_module(module=None):
    return None


pytestmark = []
"#;

async fn monkeypatching_pytest_is_judged_failed(backend: Backend) {
    let tests = "from solution import *\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n\
                 def test_close():\n    assert abs(add(0.1, 0.2) - 0.3) < 1e-9\n\n\n\
                 def test_length():\n    assert len([add(1, 1)]) == 1 and add(1, 1) == 2\n";
    let (report, _) = judged_failed(backend, |m| job("add", PATCH_PYTEST, m, wrong_add_cases(), Some(tests))).await;
    judged_on_its_answers(&report);
    let names: Vec<&str> = report.cases.iter().map(|c| c.name.as_str()).collect();
    for name in ["test_add", "test_close", "test_length"] {
        assert!(names.contains(&name), "the spec's own {name} ran: {report:#?}");
    }
    assert!(
        !names.iter().any(|n| n.contains("forged")),
        "no forged test ran: {names:?}"
    );
}

const KILL_ALL: &str = r"
import os, signal


def add(a, b):
    return a - b


os.kill(-1, signal.SIGKILL)
";

async fn killing_every_other_process_is_judged_failed(backend: Backend) {
    judged_failed(backend, |m| {
        job("add", KILL_ALL, m, wrong_add_cases(), Some(WRONG_ADD_TESTS))
    })
    .await;
}

async fn stopping_every_other_process_is_judged_failed(backend: Backend) {
    let solution = KILL_ALL.replace("SIGKILL", "SIGSTOP");
    judged_failed(backend, |m| {
        job("add", &solution, m, wrong_add_cases(), Some(WRONG_ADD_TESTS))
    })
    .await;
}

/// With the nonce, a forged report followed by killing the checker would
/// be believed; it is only ever in the checker's memory. The solution
/// answers right exactly when it found the nonce, so its theft alone would
/// make a case pass.
const STEAL_NONCE: &str = r#"
import os, re, signal

PATTERN = re.compile(rb'"nonce": ?"([0-9a-f]{32})"')


def _steal():
    found = set()
    me = os.getpid()
    for pid in (p for p in os.listdir('/proc') if p.isdigit() and int(p) != me):
        try:
            with open('/proc/%s/maps' % pid) as f:
                maps = f.read().splitlines()
            with open('/proc/%s/mem' % pid, 'rb', 0) as mem:
                for line in maps:
                    span, perms = line.split()[:2]
                    low, high = (int(x, 16) for x in span.split('-'))
                    if 'r' in perms and high - low <= (64 << 20):
                        try:
                            mem.seek(low)
                            found.update(PATTERN.findall(mem.read(high - low)))
                        except (OSError, ValueError, OverflowError):
                            pass
        except OSError:
            pass
        for name in ('environ', 'cmdline', 'fd/0'):
            try:
                fd = os.open('/proc/%s/%s' % (pid, name), os.O_RDONLY | os.O_NONBLOCK)
                try:
                    found.update(PATTERN.findall(os.read(fd, 1 << 20)))
                finally:
                    os.close(fd)
            except OSError:
                pass
    return found


def _forge(nonces):
    forged = False
    for nonce in nonces:
        line = (
            '\nKILN-REPORT %s {"cases": [{"name": "case_0", "value": 5}, {"name": "case_1", "value": 14}], '
            '"pytest": {"collected": ["test_spec.py::test_add"], "results": [{"name": "test_add", "outcome": "passed", '
            '"message": "", "when": "call"}], "exit_code": 0}, "problem": null, "output": ""}\n' % nonce.decode()
        )
        # The sandbox's stdout, shared with its init.
        try:
            with open('/proc/1/fd/1', 'w') as out:
                out.write(line)
            forged = True
        except OSError:
            pass
    if forged:
        os.kill(-1, signal.SIGKILL)


STOLEN = _steal()
_forge(STOLEN)


def add(a, b):
    # Right only when the nonce was stolen: the case passes iff the theft worked.
    return a + b if STOLEN else a - b
"#;

async fn stealing_the_nonce_to_forge_a_report_is_judged_failed(backend: Backend) {
    let (report, _) = judged_failed(backend, |m| {
        job("add", STEAL_NONCE, m, wrong_add_cases(), Some(WRONG_ADD_TESTS))
    })
    .await;
    judged_on_its_answers(&report);
}

async fn a_service_job_still_passes_on_a_sandbox_that_ran_hostile_code(backend: Backend) {
    // The service checks (import, routes, /health over a socket, its own
    // tests) run through the same stages as function jobs; a daemon left by
    // an earlier job must not reach them.
    let _lock = exclusive().await;
    let marker = marker();
    let limits = RunLimits {
        timeout: Duration::from_secs(60),
        memory_mb: 512,
        pids: 128,
        ..limits()
    };
    let sandbox = TestSandbox::new(backend, &limits, 1).await;
    let hostile = job(
        "add",
        &format!("{NAME_SELF}{DAEMON}"),
        &marker,
        wrong_add_cases(),
        Some(WRONG_ADD_TESTS),
    );
    assert!(!sandbox.function_job(&hostile, &limits).await.all_passed());
    let (spec, files) = notes_service();
    let report = kiln::sandbox::harness::run_tests(sandbox.sandbox(), &spec, &files, &limits)
        .await
        .expect("the service run");
    assert!(report.all_passed(), "the notes service passes: {report:#?}");
    let names: Vec<&str> = report.cases.iter().map(|c| c.name.as_str()).collect();
    for name in ["import app.main", "route DELETE /notes/{note_id}", "GET /health"] {
        assert!(names.contains(&name), "{name} was checked: {names:?}");
    }
    assert!(
        names.iter().any(|n| n.starts_with("tests: ")),
        "its own tests ran: {names:?}"
    );
    let left = sandbox.shutdown_and_find_leftovers(&marker).await;
    assert!(left.is_empty(), "left on the host: {left:#?}");
}

// ---------------------------------------------------------------- secrets

/// The secret's variable in the worker. The test plants it by running
/// itself again as a child process that has it (setting it in this process
/// would need `unsafe` `set_var`, which the workspace forbids).
const SECRET_VAR: &str = "KILN_LLM_API_KEY";

async fn the_workers_environment_stays_unreadable(backend: Backend) {
    match std::env::var(SECRET_VAR) {
        Ok(secret) if secret.starts_with("sk-planted-") => secret_stays_unreadable(backend, &secret).await,
        _ => {
            let secret = format!("sk-planted-{}", uuid::Uuid::new_v4().simple());
            let name = format!("{}::the_workers_environment_stays_unreadable", backend.name());
            let output = tokio::process::Command::new(std::env::current_exe().expect("the test binary"))
                .args(["--exact", &name, "--nocapture", "--test-threads=1"])
                .env(SECRET_VAR, &secret)
                .output()
                .await
                .expect("running the test again with the secret planted");
            let text = format!(
                "{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(output.status.success(), "with the secret planted:\n{text}");
            assert!(text.contains("1 passed"), "the planted run ran:\n{text}");
        }
    }
}

const LEAK: &str = r"
import os, re


def leak():
    seen = [repr(dict(os.environ))]
    pids = [p for p in os.listdir('/proc') if p.isdigit()]
    paths = ['/proc/self/environ', '/proc/1/environ']
    paths += ['/proc/%s/%s' % (p, n) for p in pids for n in ('environ', 'cmdline')]
    for path in paths:
        try:
            with open(path, 'rb') as f:
                seen.append(f.read().decode('latin-1'))
        except OSError:
            pass
    found = re.findall(r'sk-planted-[0-9a-f]+', '\n'.join(seen))
    return found[0] if found else ''
";

async fn secret_stays_unreadable(backend: Backend, secret: &str) {
    // test_code runs inside the sandbox, so it names only the prefix; the
    // secret itself is a test case's expected value, which never goes in.
    let tests = "from solution import *\n\n\ndef test_leak():\n    assert leak().startswith('sk-planted-')\n";
    let (report, _) = judged_failed(backend, |m| {
        job("leak", LEAK, m, vec![(json!([]), json!(secret))], Some(tests))
    })
    .await;
    // Kiln itself names the expected value in the case's message; the code
    // under test must not have produced it.
    assert!(
        report
            .cases
            .iter()
            .all(|c| !c.message.contains(&format!("got \"{secret}\""))),
        "the secret came back from the sandbox: {report:#?}"
    );
    assert!(!report.output.contains(secret), "the secret is in the run's output");
}

// ---------------------------------------------------------------- other processes

/// The forged-verdict attack of the outside review: code under test
/// ptrace-attached the sandbox's pid 1 (then bubblewrap's init or Docker's,
/// dumpable and of the same uid), made it exec its own program, which
/// escaped `kill(-1)` and rewrote the trusted pytest process's output. Each
/// step needs one of these calls; every one must be refused, against pid 1
/// and every other process of the run, trusted or not; so must
/// `process_vm_writev` and copying a descriptor with `pidfd_getfd`.
const TRACE_OTHERS: &str = r"
import ctypes, os

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.syscall.restype = ctypes.c_long
PTRACE_ATTACH, PTRACE_SEIZE, PTRACE_DETACH = 16, 0x4206, 17


class IoVec(ctypes.Structure):
    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]


def _harness(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return b'KILN-REPORT' in f.read()
    except OSError:
        return False


def _reached():
    me = os.getpid()
    found = []
    for pid in sorted({1} | {int(p) for p in os.listdir('/proc') if p.isdigit()}):
        if pid == me:
            continue
        if pid != 1 and _harness(pid):
            TRUSTED.append(pid)
        for request in (PTRACE_ATTACH, PTRACE_SEIZE):
            if libc.ptrace(request, pid, None, None) == 0:
                found.append('ptrace %d of pid %d' % (request, pid))
                libc.ptrace(PTRACE_DETACH, pid, None, None)
        buf = ctypes.create_string_buffer(8)
        local = IoVec(ctypes.cast(buf, ctypes.c_void_p), 8)
        remote = IoVec(ctypes.c_void_p(0x400000), 8)
        # process_vm_readv: EPERM when refused, EFAULT when allowed.
        if libc.syscall(310, pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) >= 0 or ctypes.get_errno() not in (1, 3):
            found.append('process_vm_readv of pid %d' % pid)
        # process_vm_writev to page 0, never mapped: EFAULT when allowed.
        nowhere = IoVec(ctypes.c_void_p(8), 8)
        if libc.syscall(311, pid, ctypes.byref(local), 1, ctypes.byref(nowhere), 1, 0) >= 0 or ctypes.get_errno() not in (1, 3):
            found.append('process_vm_writev of pid %d' % pid)
        # pidfd_getfd: a copy of another process's descriptor (its pipes).
        pidfd = libc.syscall(434, pid, 0)
        if pidfd >= 0:
            for fd in range(8):
                stolen = libc.syscall(438, pidfd, fd, 0)
                if stolen >= 0:
                    found.append('pidfd_getfd of fd %d of pid %d' % (fd, pid))
                    os.close(stolen)
            os.close(pidfd)
    if not _harness(1):
        found.append('pid 1 is not the harness')
    return found


# Harness processes other than pid 1 that were probed: the trusted tests
# process is the parent of the pytest stage's runner.
TRUSTED = []
REACHED = _reached()


def escaped():
    return True if REACHED else 'reached nothing; probed pid 1 and %d other trusted' % len(TRUSTED)
";

/// `ESCAPED_TESTS` for an `escaped` that says what it saw when it did not
/// escape (a string, which is true too).
const ESCAPED_IS_TRUE_TESTS: &str = "from solution import *\n\n\ndef test_escaped():\n    assert escaped() is True\n";

async fn ptracing_pid_1_and_every_other_process_is_refused_and_judged_failed(backend: Backend) {
    let (report, _) = judged_failed(backend, |m| {
        job(
            "escaped",
            TRACE_OTHERS,
            m,
            vec![(json!([]), json!(true))],
            Some(ESCAPED_IS_TRUE_TESTS),
        )
    })
    .await;
    // Judged on what it found, in the runner of the test cases (where the
    // checker, pid 1, is the one trusted process) and in the runner of the
    // pytest stage (where the trusted tests process is alive too).
    let message = |name: &str| {
        report
            .cases
            .iter()
            .find(|c| c.name == name)
            .map_or_else(|| panic!("no {name}: {report:#?}"), |c| c.message.clone())
    };
    assert!(
        message("case_0").contains("reached nothing; probed pid 1 and 0 other trusted"),
        "{report:#?}"
    );
    assert!(
        message("test_escaped").contains("reached nothing; probed pid 1 and 1 other trusted"),
        "{report:#?}"
    );
}

/// The forged-verdict attack's first step, performed for real: the
/// candidate of the test-cases stage ptrace-attaches pid 1 and makes it
/// exec a loop of its own, which the checker's `kill(-1)` between stages
/// cannot reach (the kernel exempts pid 1), so it lived on into the pytest
/// stage. (The injection itself, execve through `PTRACE_SETREGS` at a
/// process blocked in a syscall, works against a same-uid process on this
/// kernel.) A double-forked daemon tries the plain way. The runner of the
/// pytest stage reports what still beats; today the attach is refused and
/// nothing of stage 1 survives.
const PID_1_TAKEOVER: &str = r#"
import ctypes, os, struct, sys, time

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PEEKTEXT, POKETEXT, POKEDATA, GETREGS, SETREGS, ATTACH, DETACH = 1, 4, 5, 12, 13, 16, 17


class Regs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_ulonglong) for n in (
        'r15', 'r14', 'r13', 'r12', 'rbp', 'rbx', 'r11', 'r10', 'r9', 'r8', 'rax', 'rcx', 'rdx', 'rsi',
        'rdi', 'orig_rax', 'rip', 'cs', 'eflags', 'rsp', 'ss', 'fs_base', 'gs_base', 'ds', 'es', 'fs', 'gs')]


def heartbeat(path):
    return ("import ctypes, time\nctypes.CDLL(None).prctl(15, b'MARKER', 0, 0, 0)\nwhile True:\n"
            "    with open(%r, 'w') as f:\n        f.write(repr(time.time()))\n    time.sleep(0.02)\n" % path)


def take_over(pid, beat):
    """The review's attack: ptrace-attach `pid` and make it exec a loop that
    writes `beat` every 20 ms. Returns what happened."""
    if libc.ptrace(ATTACH, pid, None, None) != 0:
        return 'attach refused (errno %d)' % ctypes.get_errno()
    os.waitpid(pid, 0x40000000)  # __WALL
    regs = Regs()
    if libc.ptrace(GETREGS, pid, None, ctypes.byref(regs)) != 0:
        libc.ptrace(DETACH, pid, None, None)
        return 'getregs refused (errno %d)' % ctypes.get_errno()
    args = [sys.executable.encode() + b'\0', b'-c\0', heartbeat(beat).encode() + b'\0']
    size = sum(len(a) for a in args)
    sp = (regs.rsp - 8192 - size - 64) & ~0xf
    blob, ptrs = b'', []
    for a in args:
        ptrs.append(sp + len(blob))
        blob += a
    blob = blob.ljust((len(blob) + 7) & ~7, b'\0')
    argv = sp + len(blob)
    blob += struct.pack('<4Q', ptrs[0], ptrs[1], ptrs[2], 0)
    for off in range(0, len(blob), 8):
        word = struct.unpack_from('<Q', blob, off)[0]
        libc.ptrace(POKEDATA, pid, ctypes.c_void_p(sp + off), ctypes.c_void_p(word))
    text = libc.ptrace(PEEKTEXT, pid, ctypes.c_void_p(regs.rip), None)
    libc.ptrace(POKETEXT, pid, ctypes.c_void_p(regs.rip),
                ctypes.c_void_p(((text & ~0xffff) | 0x050f) & 0xffffffffffffffff))  # syscall
    regs.rax, regs.rdi, regs.rsi, regs.rdx = 59, ptrs[0], argv, 0  # execve
    regs.orig_rax, regs.rsp = 0xffffffffffffffff, sp  # no syscall restart
    libc.ptrace(SETREGS, pid, None, ctypes.byref(regs))
    libc.ptrace(DETACH, pid, None, None)
    return 'took over pid %d' % pid


def alive(beat):
    """Whether something still writes `beat`."""
    try:
        before = os.stat(beat).st_mtime_ns
    except OSError:
        return False
    time.sleep(0.3)
    try:
        return os.stat(beat).st_mtime_ns != before
    except OSError:
        return False


def daemon(beat):
    """The same loop, in a double-forked process of its own session."""
    if os.fork() != 0:
        return
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    os.execv(sys.executable, [sys.executable, '-c', heartbeat(beat)])


STAGE = '/tmp/kiln-stage-MARKER'
BEATS = {'pid 1': '/tmp/kiln-beat-pid1-MARKER', 'a daemon': '/tmp/kiln-beat-daemon-MARKER'}
if not os.path.exists(STAGE):
    # The test cases' runner: plant the survivors.
    open(STAGE, 'w').close()
    SEEN = 'stage 1: ' + take_over(1, BEATS['pid 1'])
    daemon(BEATS['a daemon'])
    SURVIVORS = []
else:
    # The runner of the spec's tests: is anything of stage 1 still running?
    SURVIVORS = [who for who, beat in BEATS.items() if alive(beat)]
    SEEN = 'stage 2: survivors %s' % SURVIVORS


def escaped():
    return True if SURVIVORS else SEEN
"#;

async fn taking_over_pid_1_to_survive_kill_minus_1_between_stages_is_refused_and_judged_failed(backend: Backend) {
    let (report, _) = judged_failed(backend, |m| {
        job(
            "escaped",
            PID_1_TAKEOVER,
            m,
            vec![(json!([]), json!(true))],
            Some(ESCAPED_IS_TRUE_TESTS),
        )
    })
    .await;
    // Both stages ran the probe: the first was refused pid 1, the second
    // found nothing of the first alive.
    let messages: Vec<&str> = report.cases.iter().map(|c| c.message.as_str()).collect();
    assert!(
        messages.iter().any(|m| m.contains("stage 1: attach refused")),
        "{report:#?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("stage 2: survivors []")),
        "{report:#?}"
    );
}

/// Kernel keyrings are not namespaced by the run: a key one run added
/// appeared in a concurrent run's `/proc/keys`. The keyring calls are
/// refused outright.
const KEYRINGS: &str = r"
import ctypes

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
KEY_SPEC_USER_KEYRING, KEY_SPEC_SESSION_KEYRING = -4, -3


def escaped():
    added = libc.syscall(248, b'user', b'kiln-MARKER', b'left for the next run', 21, KEY_SPEC_USER_KEYRING)
    joined = libc.syscall(250, 1, None)  # KEYCTL_JOIN_SESSION_KEYRING
    found = libc.syscall(250, 0, KEY_SPEC_SESSION_KEYRING, 1)  # KEYCTL_GET_KEYRING_ID, create
    return added >= 0 or joined >= 0 or found >= 0
";

async fn the_kernel_keyrings_are_out_of_reach_and_judged_failed(backend: Backend) {
    let (report, _) = judged_failed(backend, |m| {
        job(
            "escaped",
            KEYRINGS,
            m,
            vec![(json!([]), json!(true))],
            Some(ESCAPED_TESTS),
        )
    })
    .await;
    assert!(
        report
            .cases
            .iter()
            .any(|c| c.message.contains("expected True, got False")),
        "the probe ran and reached no keyring: {report:#?}"
    );
}

// ------------------------------------- forging through the tests' proxies

/// Reads the expected values out of the spec's test source, if any copy of
/// it is within the runner's reach.
const READ_TEST_FILE: &str = r#"
import os, re


def add(a, b):
    for root, _, names in os.walk("/work"):
        for name in names:
            try:
                with open(os.path.join(root, name)) as f:
                    found = re.search(r"add\(%r, %r\) == (-?\d+)" % (a, b), f.read())
            except OSError:
                continue
            if found:
                return int(found.group(1))
    return a - b
"#;

async fn reading_the_test_file_for_its_expected_values_is_judged_failed(backend: Backend) {
    let tests = "from solution import *\n\n\ndef test_add():\n    assert add(2, 3) == 5\n    assert add(10, 1) == 11\n";
    judged_failed(backend, |m| job("add", READ_TEST_FILE, m, vec![], Some(tests))).await;
}

/// Makes the runner answer every call with the reply that ends an
/// iteration: `all(map(is_prime, ...))` would stop at once and be true.
const STOP_EVERY_CALL: &str = r#"
import __main__

_serve = __main__.Peer.serve


def _stop(self, req):
    if req.get("op") == "call":
        return {"stop": True}
    return _serve(self, req)


__main__.Peer.serve = _stop


def is_prime(n):
    return False
"#;

async fn a_stop_reply_to_a_call_cannot_end_the_tests_iteration_early(backend: Backend) {
    let tests = "from solution import *\n\n\ndef test_primes():\n    assert all(map(is_prime, [2, 3, 5, 7]))\n    \
                 assert not any(map(is_prime, [4, 6, 8]))\n";
    judged_failed(backend, |m| job("is_prime", STOP_EVERY_CALL, m, vec![], Some(tests))).await;
}

/// Exports a `__builtins__` whose `abs` and `all` always say yes: every test
/// function defined after `from solution import *` would look its builtins
/// up there.
const EXPORT_BUILTINS: &str = r#"
import builtins, __main__

__all__ = ["mean_absolute_deviation", "__builtins__", "@py_builtins"]


class _Yes:
    def __getitem__(self, name):
        if name in ("abs", "all", "any"):
            return lambda *a: 0 if name == "abs" else True
        return getattr(builtins, name)


kiln_yes = _Yes()
_send = __main__.send


def _send_names(fd, obj):
    if isinstance(obj, dict) and isinstance(obj.get("names"), dict):
        obj["names"]["__builtins__"] = obj["names"]["@py_builtins"] = obj["names"]["kiln_yes"]
    return _send(fd, obj)


__main__.send = _send_names


def mean_absolute_deviation(numbers):
    return 12345.0
"#;

async fn exporting_builtins_to_the_tests_is_judged_failed(backend: Backend) {
    let tests = "from solution import *\n\n\ndef test_mad():\n    \
                 assert abs(mean_absolute_deviation([1.0, 2.0, 3.0]) - 2.0 / 3.0) < 1e-6\n    assert all([False])\n";
    judged_failed(backend, |m| {
        job("mean_absolute_deviation", EXPORT_BUILTINS, m, vec![], Some(tests))
    })
    .await;
}

/// Asks the trusted side to divide two of the runner's own values, so that
/// the exception it raises there comes back as a handle; then formats a
/// string through that handle's traceback, up to the checker's frames (the
/// nonce, the request with the tests' expected values).
const FORMAT_THE_CHECKERS_FRAMES: &str = r#"
import decimal, sys


def answer(x):
    frame = sys._getframe()
    while frame is not None and not (frame.f_code.co_name == "serve" and "self" in frame.f_locals):
        frame = frame.f_back
    if frame is None:
        return -1
    peer = frame.f_locals["self"]
    try:
        peer.result("truediv", decimal.Decimal(1), decimal.Decimal(0))
    except Exception as e:
        remote = e.__dict__.get("_kiln_remote")
    else:
        remote = None
    if remote is None:
        return -2
    seen = []
    for k in range(80):
        path = "0.__traceback__.tb_frame" + ".f_back" * k
        try:
            seen.append(peer.result("getattr", "{%s.f_code.co_name}" % path, name="format")(remote))
            if seen[-1] == "checker_main":
                return peer.result("getattr", "{%s.f_locals[request]}" % path, name="format")(remote)
        except Exception:
            break
    return "frames: %r" % seen
"#;

async fn reading_the_checkers_frames_through_a_trusted_exception_is_refused_and_judged_failed(backend: Backend) {
    let tests = "from solution import *\n\n\ndef test_answer():\n    assert answer(1) == 42\n";
    let (report, _) = judged_failed(backend, |m| {
        job("answer", FORMAT_THE_CHECKERS_FRAMES, m, vec![], Some(tests))
    })
    .await;
    let text = format!("{report:?}");
    assert!(
        text.contains("assert -2 == 42") && !text.contains("frames:") && !text.contains("nonce"),
        "the runner reached a trusted exception: {report:#?}"
    );
}

// ---------------------------------------------------------------- both backends

for_both_backends!(
    a_user_namespace_cannot_be_made_with_clone_or_clone3,
    a_fork_bomb_is_contained_and_judged_failed,
    a_thread_bomb_is_contained_and_judged_failed,
    a_memory_bomb_is_contained_and_judged_failed,
    a_cpu_spin_is_stopped_and_judged_failed,
    sleeping_past_the_timeout_is_stopped_and_judged_failed,
    a_setsid_daemon_does_not_outlive_the_run,
    a_gigabyte_of_stdout_is_capped_and_judged_failed,
    a_gigabyte_written_straight_to_the_sandboxs_stdout_is_capped,
    a_cancelled_run_leaves_nothing_behind,
    what_a_dead_worker_left_is_removed_when_a_sandbox_starts,
    a_service_job_still_passes_on_a_sandbox_that_ran_hostile_code,
    filling_tmp_is_contained_and_judged_failed,
    writing_outside_the_work_dir_is_refused_and_judged_failed,
    reading_etc_shadow_is_refused_and_judged_failed,
    reading_proc_1_environ_and_the_workers_environ_is_refused_and_judged_failed,
    the_workers_environment_stays_unreadable,
    the_network_is_unreachable_and_judged_failed,
    nested_unshare_is_refused_and_judged_failed,
    exiting_before_the_tests_is_judged_failed,
    printing_fake_pass_output_is_judged_failed,
    sys_exit_inside_a_test_is_judged_failed,
    monkeypatching_pytest_is_judged_failed,
    killing_every_other_process_is_judged_failed,
    stopping_every_other_process_is_judged_failed,
    stealing_the_nonce_to_forge_a_report_is_judged_failed,
    ptracing_pid_1_and_every_other_process_is_refused_and_judged_failed,
    taking_over_pid_1_to_survive_kill_minus_1_between_stages_is_refused_and_judged_failed,
    the_kernel_keyrings_are_out_of_reach_and_judged_failed,
    reading_the_test_file_for_its_expected_values_is_judged_failed,
    a_stop_reply_to_a_call_cannot_end_the_tests_iteration_early,
    exporting_builtins_to_the_tests_is_judged_failed,
    reading_the_checkers_frames_through_a_trusted_exception_is_refused_and_judged_failed,
);
