//! Runs share nothing: whatever one run leaves behind (files in the work
//! dir, `/tmp` and `/dev/shm`, a daemon, a System V shared memory segment,
//! an environment variable, its data in memory) is not there for the next
//! run on the same warm sandbox, nor for a run going on at the same time.
//! On both backends.

#[path = "support/sandbox.rs"]
#[macro_use]
mod sandbox_support;

use std::time::Duration;

use kiln::report::{Outcome, TestReport};
use kiln::sandbox::RunLimits;
use sandbox_support::{Backend, FunctionJob, TestSandbox, exclusive};
use serde_json::json;

fn limits() -> RunLimits {
    RunLimits {
        timeout: Duration::from_secs(30),
        memory_mb: 512,
        pids: 64,
        tmpfs_mb: 16,
        output_bytes: 256 * 1024,
    }
}

/// A run that leaves everything it can behind, each piece carrying
/// `secret`, and then stays for `linger_s` seconds in its test: judged by
/// test cases and a pytest `test_code`, or by the `test_code` alone (a run
/// of another kind, which the process backend forks from another warm
/// server).
fn leaver(secret: &str, linger_s: u32, pytest_only: bool) -> FunctionJob {
    let solution = format!(
        r#"
import ctypes, os, time

SECRET = "{secret}"
for d in ("/work", "/tmp", "/dev/shm"):
    with open(os.path.join(d, "left-behind.txt"), "w") as f:
        f.write(SECRET)
os.environ["KILN_LEFT_BEHIND"] = SECRET

libc = ctypes.CDLL(None, use_errno=True)
libc.shmget.restype = ctypes.c_int
libc.shmat.restype = ctypes.c_void_p
segment = libc.shmget(0x4B494C4E, 4096, 0o1666)
if segment >= 0:
    address = libc.shmat(segment, None, 0)
    ctypes.memmove(address, SECRET.encode(), len(SECRET))

# A daemon in its own session, named so the next run can look for it;
# the import waits until it has its name.
named_r, named_w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        libc.prctl(15, b"kiln-left-behind", 0, 0, 0)
        os.write(named_w, b"!")
        time.sleep(600)
    os._exit(0)
os.read(named_r, 1)

def leave():
    time.sleep({linger_s})
    return len(SECRET)
"#
    );
    FunctionJob {
        entry_point: "leave".into(),
        solution,
        cases: if pytest_only {
            Vec::new()
        } else {
            vec![(json!([]), json!(secret.len()))]
        },
        test_code: Some("from solution import leave\n\ndef test_leave():\n    assert leave() > 0\n".into()),
    }
}

/// A run that looks for what `leaver(secret)` leaves and returns what it
/// found (nothing, when runs are isolated). The secret is given in two
/// halves that are never joined, so the search cannot find itself.
fn looker(secret: &str, through_pytest: bool) -> FunctionJob {
    let (head, tail) = secret.split_at(secret.len() / 2);
    let solution = format!(
        r#"
import ctypes, os

HEAD, TAIL = "{head}".encode(), "{tail}".encode()

def in_memory():
    """Whether this process's memory (a copy of whatever it was forked
    from) holds the secret."""
    with open("/proc/self/maps") as f:
        regions = [line.split() for line in f]
    with open("/proc/self/mem", "rb", buffering=0) as mem:
        for fields in regions:
            if not fields[1].startswith("r") or (len(fields) > 5 and fields[5].startswith("[v")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
            at = data.find(HEAD)
            while at >= 0:
                if data[at + len(HEAD):at + len(HEAD) + len(TAIL)] == TAIL:
                    return True
                at = data.find(HEAD, at + 1)
    return False

def look():
    found = []
    for d in ("/work", "/tmp", "/dev/shm"):
        for root, _, files in os.walk(d):
            found += [os.path.join(root, f) for f in files if f == "left-behind.txt"]
    if "KILN_LEFT_BEHIND" in os.environ:
        found.append("environment")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/comm" % pid) as f:
                if f.read().strip().startswith("kiln-left"):
                    found.append("process " + pid)
        except OSError:
            pass
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.shmget(0x4B494C4E, 0, 0) >= 0:
        found.append("shared memory segment")
    if in_memory():
        found.append("the secret in memory")
    return found
"#
    );
    let (cases, test_code) = if through_pytest {
        (
            Vec::new(),
            Some("from solution import look\n\ndef test_look():\n    assert look() == []\n".to_owned()),
        )
    } else {
        (vec![(json!([]), json!([]))], None)
    };
    FunctionJob {
        entry_point: "look".into(),
        solution,
        cases,
        test_code,
    }
}

fn describe(report: &TestReport) -> String {
    format!(
        "problem {:?}; {:#?}",
        report.problem,
        report
            .cases
            .iter()
            .filter(|c| c.outcome != Outcome::Passed)
            .collect::<Vec<_>>()
    )
}

fn secret(n: u32) -> String {
    format!("KILN-SECRET-{n}-{}", uuid::Uuid::new_v4().simple())
}

/// With one slot, every run after the first meets the sandbox the earlier
/// one of its kind used (on the process backend, the warm server of its
/// kind: test cases, or pytest).
async fn a_run_sees_nothing_an_earlier_run_left_behind(backend: Backend) {
    let _lock = exclusive().await;
    let limits = limits();
    let sandbox = TestSandbox::new(backend, &limits, 1).await;
    // The control: within one run, the look finds every piece left.
    let own = secret(0);
    let mut both = looker(&own, false);
    both.solution = format!("{}\n{}", leaver(&own, 0, false).solution, both.solution);
    let control = sandbox.function_job(&both, &limits).await;
    let seen = describe(&control);
    for piece in [
        "/work/left-behind.txt",
        "/tmp/left-behind.txt",
        "/dev/shm/left-behind.txt",
        "environment",
        "process ",
        "shared memory segment",
        "the secret in memory",
    ] {
        assert!(seen.contains(piece), "the look misses {piece:?} in its own run: {seen}");
    }
    for (n, through_pytest) in [(1, false), (2, true)] {
        let secret = secret(n);
        let left = sandbox.function_job(&leaver(&secret, 0, through_pytest), &limits).await;
        assert!(left.all_passed(), "the leaving run itself: {}", describe(&left));
        let looked = sandbox.function_job(&looker(&secret, through_pytest), &limits).await;
        assert!(
            looked.all_passed(),
            "the next run found what the earlier one left: {}",
            describe(&looked)
        );
    }
}

/// Two slots: one run lingers with everything left behind while another
/// looks for it.
async fn a_run_sees_nothing_of_a_run_going_on_at_the_same_time(backend: Backend) {
    let _lock = exclusive().await;
    let limits = limits();
    let sandbox = TestSandbox::new(backend, &limits, 2).await;
    let secret = secret(3);
    let leaver = leaver(&secret, 8, true);
    let leaving = sandbox.function_job(&leaver, &limits);
    let looking = async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        sandbox.function_job(&looker(&secret, true), &limits).await
    };
    let (left, looked) = tokio::join!(leaving, looking);
    assert!(left.all_passed(), "the leaving run itself: {}", describe(&left));
    assert!(
        looked.all_passed(),
        "a concurrent run found what the other left: {}",
        describe(&looked)
    );
}

for_both_backends!(
    a_run_sees_nothing_an_earlier_run_left_behind,
    a_run_sees_nothing_of_a_run_going_on_at_the_same_time,
);
