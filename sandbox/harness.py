"""Kiln's sandbox harness: the trusted side of every sandbox run.

Started as `python -I -B -c <source>` inside the sandbox (the source packed
into a one-line bootstrap, src/sandbox/harness.rs), with a JSON
request on stdin. It never runs the code under test in its own process:

* checker (no role argument): reads the request, makes itself non-dumpable
  (so same-uid processes cannot open its /proc files, memory or pipes, nor
  ptrace it), writes the files, starts the other roles, and prints the one
  report line `KILN-REPORT <nonce> <json>`. The nonce arrives on stdin and
  never leaves this process, so nothing else can print a report that Kiln
  would accept.
* runner: imports the candidate module and answers call requests over a pipe
  with encoded return values; it never sees expected values or verdicts.
* tests: runs the spec's pytest code against a proxy `solution` module whose
  functions call the runner; verdicts are made here, outside the candidate's
  process. The test module is compiled from the source the checker holds,
  never read back from the writable work dir, and pytest reads no conftest,
  ini file or cache, so nothing the candidate writes reaches it. On a warm
  server with pytest prepared the checker runs the tests itself
  (`tests_here`); else a tests process of its own, sent the source over a
  pipe.
* server / svctests: import a generated service and serve it on a Unix
  socket / run its own test suite (sealed: no ini file, conftest hooks or
  plugins of the answer's). After the suite, the checker itself sends
  requests to every spec endpoint of a fresh server started from the
  files as sent (`probe_service`): that, not the suite, is Kiln's evidence
  about the service's behaviour.

Invariants the verdict rests on:

* The checker is the sandbox's pid 1 (bubblewrap `--as-pid-1`; a container
  without an init), so no process outside the harness's control sits above
  the run: nothing of the candidate's can take pid 1 over, and pid 1 is
  exempt from the kill(-1) below only because it is the checker itself.
* No untrusted process can ptrace, read or write another process's memory:
  before any other role starts, the checker installs a seccomp filter
  (`confine`) that every process of the run inherits and cannot remove,
  denying ptrace, process_vm_*, kcmp, pidfd_getfd, the keyring calls and
  other kernel surface no test needs. Trusted roles are also non-dumpable.
* No untrusted process is alive while a trusted one starts or reports: the
  checker kills every other process in the sandbox (kill(-1)) between stages
  and before it writes the report, so a daemon the candidate left behind
  cannot interleave bytes with the report or meet the next stage. The report
  line starts with a newline for the same reason.
* Anything that goes wrong after the candidate's code first ran is reported
  as the run's `problem` (the attempt fails), never as a harness error (which
  Kiln retries as an infrastructure fault): the candidate cannot turn its
  own failure into a retry.
* Messages from untrusted processes are size-limited and decoded into plain
  data only; a malformed one is the candidate's failure.

Values cross process boundaries in a small tagged JSON encoding, never with
pickle: decoding must not execute anything.
"""

import ast
import base64
import builtins
import ctypes
import functools
import io
import json
import math
import operator
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback

WORK = "/work" if os.path.isdir("/work") else os.getcwd()
SRC_DIR = os.path.join(WORK, "src")
KILN_DIR = os.path.join(WORK, ".kiln")
TESTS_DIR = os.path.join(KILN_DIR, "tests")
TEST_FILE = os.path.join(TESTS_DIR, "test_spec.py")
SERVICE_SOCKET = os.path.join(KILN_DIR, "app.sock")
PROBE_SOCKET = os.path.join(KILN_DIR, "probe.sock")
# Prefix of what the probe stage moved out of the way (`move_away`).
PROBE_MOVED = "kiln-moved"
MAX_MESSAGE = 16 * 1024 * 1024
MAX_DEPTH = 200
# pytest-asyncio warns on every run unless its loop scope is set.
PYTEST_QUIET = ["-o", "asyncio_default_fixture_loop_scope=function"]
# Faker's pytest plugin (an entry point every pytest run would load: Faker
# comes with factory-boy and polyfactory) only provides a `faker` fixture,
# and importing it doubles pytest's start-up in a cold run. `Faker()` works.
PYTEST_LEAN = ["-p", "no:faker"]
# pytest reads nothing from the writable work dir: no conftest.py, no ini
# file (-c /dev/null), no cache, and test modules are not put on sys.path.
PYTEST_SEALED = [
    "-p", "no:cacheprovider", "--noconftest", "-c", os.devnull, "--import-mode=importlib",
]
# Names a star import from the proxy never binds in a test module: builtins
# (an exported `abs` or `len` would rewrite the test's assertions), pytest's
# collection prefixes (an exported `test_x` would be collected as a test),
# xunit hooks, and module-level pytest settings.
NOT_EXPORTED = frozenset(dir(builtins)) | {"pytest", "pytestmark", "pytest_plugins"}
NOT_EXPORTED_PREFIXES = ("test", "setup", "teardown")

# Set once a process that runs the candidate's code has been started; from
# then on a failure is the candidate's doing, not the harness's.
UNTRUSTED_STARTED = False


class CandidateFault(Exception):
    """Something the candidate's code did broke the run."""


# The C library's calls and the seccomp program are prepared once per
# process (`functools.cache`), and a warm server prepares them before its
# first fork (`warm_up`): building them (ctypes' function and structure
# types, the filter's instructions) cost each process of a run ~4 ms and
# ~500 copied pages, twice a run. The forked processes only call them.


@functools.cache
def libc():
    """The C library, with argument types for the calls that pass pointers."""
    lib = ctypes.CDLL(None, use_errno=True)
    lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    lib.unshare.argtypes = [ctypes.c_int]
    lib.capset.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    return lib


def set_dumpable(dumpable):
    """PR_SET_DUMPABLE. Non-dumpable: /proc/<pid>/{fd,mem,environ} become
    inaccessible and ptrace is refused to same-uid processes."""
    if libc().prctl(4, int(dumpable), None, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, %d) failed" % dumpable)


def set_nondumpable():
    """Without this the verdict could be forged, so failing to set it is a
    harness error."""
    set_dumpable(False)


# System calls no untrusted process may make, by architecture: (audit
# architecture, {name: number}). ptrace and process_vm_* would let the code
# under test read or rewrite a trusted process (the forged-verdict attack);
# kcmp and pidfd_getfd reach into other processes' files; the keyring calls
# reach keyrings shared beyond the run; perf, bpf, userfaultfd and io_uring
# are kernel attack surface no test needs; the namespace and mount calls are
# refused anyway and are denied for defence in depth.
DENIED_SYSCALLS = {
    "x86_64": (0xC000003E, {
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
        "pidfd_getfd": 438, "process_madvise": 440, "add_key": 248, "request_key": 249,
        "keyctl": 250, "perf_event_open": 298, "bpf": 321, "userfaultfd": 323,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
        "chroot": 161,
    }),
    "aarch64": (0xC00000B7, {
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
        "pidfd_getfd": 438, "process_madvise": 440, "add_key": 217, "request_key": 218,
        "keyctl": 219, "perf_event_open": 241, "bpf": 280, "userfaultfd": 282,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41,
        "chroot": 51,
    }),
}


class HarnessFault(Exception):
    """The harness could not set up a run; nothing of the candidate ran."""


# clone() creating namespaces is refused like unshare(); clone3() passes its
# flags in memory a filter cannot read, so it answers ENOSYS and the C
# library falls back to clone(). (Both as Docker's default profile does.)
CLONE_CALLS = {"x86_64": (56, 435), "aarch64": (220, 435)}
CLONE_NEW_NAMESPACES = 0x7E020000


@functools.cache
def seccomp_program():
    """The filter `confine` installs: the `struct sock_fprog` prctl takes,
    and the instructions it points to (kept alive beside it). HarnessFault
    on an architecture without a table."""
    machine = os.uname().machine
    if machine not in DENIED_SYSCALLS:
        raise HarnessFault("no seccomp table for architecture %s" % machine)
    arch, denied = DENIED_SYSCALLS[machine]
    clone, clone3 = CLONE_CALLS[machine]
    ld_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    kill_process, allow = 0x80000000, 0x7FFF0000
    eperm, enosys = 0x00050000 | 1, 0x00050000 | 38
    # (code, jump-if-true label, jump-if-false label, k); labels resolve below.
    program = [(ld_abs, None, None, 4), (jeq, None, "kill", arch), (ld_abs, None, None, 0)]
    if machine == "x86_64":
        # The x32 ABI numbers the same calls from 0x40000000 up.
        program.append((jge, "eperm", None, 0x40000000))
    program.append((jeq, "enosys", None, clone3))
    program.append((jeq, "clone", None, clone))
    for nr in sorted(set(denied.values())):
        program.append((jeq, "eperm", None, nr))
    program.append((ret, None, None, allow))
    labels = {"clone": len(program)}
    # args[0] (the flags), low 32 bits on both little-endian architectures.
    program += [(ld_abs, None, None, 16), (jset, "eperm", None, CLONE_NEW_NAMESPACES), (ret, None, None, allow)]
    for label, action in (("eperm", eperm), ("enosys", enosys), ("kill", kill_process)):
        labels[label] = len(program)
        program.append((ret, None, None, action))
    resolved = []
    for i, (code, jt, jf, k) in enumerate(program):
        offset = lambda label: 0 if label is None else labels[label] - i - 1  # noqa: E731
        resolved.append((code, offset(jt), offset(jf), k))

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    filters = (SockFilter * len(resolved))(*[SockFilter(*insn) for insn in resolved])
    return SockFprog(len(resolved), filters), filters


def confine():
    """Installs a seccomp filter that makes every call in DENIED_SYSCALLS
    (and clone() with a namespace flag) fail with EPERM, for this process
    and all it will start, after setting no_new_privs (which an unprivileged
    filter requires and which keeps any exec from regaining privileges).
    Called before any untrusted code runs; the filter cannot be removed."""
    program, _ = seccomp_program()
    lib = libc()
    if lib.prctl(38, 1, None, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise HarnessFault("prctl(PR_SET_NO_NEW_PRIVS) failed: errno %d" % ctypes.get_errno())
    if lib.prctl(22, 2, ctypes.addressof(program), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        raise HarnessFault("installing the seccomp filter failed: errno %d" % ctypes.get_errno())


def kill_all_others(spare=()):
    """SIGKILLs every other process in the sandbox's pid namespace (the
    kernel exempts pid 1 and the caller) and reaps our own children, until
    nothing is left to signal. Zombies of pid 1 may linger briefly, hence the
    bounded loop. `spare`: pids of roles forked before the run (`Prefork`)
    still waiting for their stage; everything else is killed one by one."""
    if spare:
        return kill_all_but(set(spare) | {os.getpid()})
    for _ in range(400):
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        reap_children()
        time.sleep(0.005)


def reap_children():
    """Reaps every child of ours that has exited, without waiting."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_all_but(keep):
    for _ in range(400):
        others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in keep]
        if not others:
            return
        for pid in others:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        reap_children()
        time.sleep(0.005)


def my_source():
    """This file's source, from our own command line (we run with -c)."""
    with open("/proc/self/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    return argv[argv.index(b"-c") + 1].decode()


def spawn(role, *extra, pass_fds=(), cwd=None, untrusted=True):
    """Starts a harness role in its own session, output captured."""
    global UNTRUSTED_STARTED
    if untrusted:
        UNTRUSTED_STARTED = True
    return subprocess.Popen(
        child_argv(role, *extra),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        pass_fds=pass_fds,
        cwd=cwd or WORK,
        env=child_env(),
        start_new_session=True,
    )


def child_argv(role, *extra):
    # -I: isolated (no PYTHON* variables, no user site, no cwd on sys.path);
    # -B: no .pyc writes; -u: unbuffered, so what the code printed survives
    # the kill at the end of the run.
    return [sys.executable, "-I", "-B", "-u", "-c", my_source(), role, *extra]


def child_env():
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": WORK,
        "LANG": "C.UTF-8",
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }


class Forked:
    """A role started by fork rather than exec (see `fork_role`), with the
    part of Popen's interface the harness uses."""

    def __init__(self, pid, stdout_fd):
        self.pid = pid
        self.stdout = os.fdopen(stdout_fd, "rb", buffering=0)
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -9
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self):
        if self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                self.returncode = -9
        return self.returncode


def fork_role(main, keep_fds):
    """Starts `main()` in a forked child, in its own session, with stdin
    from /dev/null, stdout and stderr into a pipe (returned as the role's
    output) and no other inherited descriptor but `keep_fds`. A fork costs a
    millisecond where a fresh interpreter importing pytest costs hundreds;
    it is only ever done from a process that has not read the run's request
    (`Prefork`), so the child's copy of memory holds nothing of the run."""
    out_r, out_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            keep = set(keep_fds) | {0, 1, 2}
            for fd in [int(f) for f in os.listdir("/proc/self/fd")]:
                if fd not in keep:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            os.environ.clear()
            os.environ.update(child_env())
            main()
        except BaseException:  # noqa: BLE001 - the role's failure is its output
            traceback.print_exc()
            code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(out_w)
    return Forked(pid, out_r)


class Prefork:
    """Roles forked by the checker before it reads the run's request, so that
    what they fork from holds nothing of it (the test code and its expected
    values above all). `hint` (from the warm server's run header) says which
    the run will start with: `c`: test cases first (a runner for the
    checker's own use); `t`: pytest only (a runner for the tests the
    checker runs itself, or without a prepared pytest a tests process, which
    forks its runner before it reads its own configuration). A run whose
    request does not match the hint, or that needs a role again, starts it
    by exec."""

    def __init__(self, hint):
        # `t` on a warm server with pytest prepared: the checker runs pytest
        # itself (`tests_here`), so only the runner is forked ahead.
        here = hint == "t" and PREPARED_PYTEST is not None
        self.runner = prefork_runner() if hint == "c" or here else None
        self.tests = prefork_tests() if hint == "t" and not here else None
        # `s`: a service, whose app server and own test suite both start
        # once told to (`prefork_waiting`).
        # Their start message says where the app is (`start_waiting`).
        self.server = prefork_waiting(lambda fd, app: server_main(fd, SERVICE_SOCKET, app)) if hint == "s" else None
        self.svctests = prefork_waiting(svctests_main) if hint == "s" else None
        # The fresh app Kiln probes after the suite (`probe_service`).
        self.probed = prefork_waiting(lambda fd, app: server_main(fd, PROBE_SOCKET, app)) if hint == "s" else None

    def take_server(self):
        server, self.server = self.server, None
        return self.started(server)

    def take_probed(self):
        probed, self.probed = self.probed, None
        return self.started(probed)

    def take_svctests(self):
        svctests, self.svctests = self.svctests, None
        return self.started(svctests)

    def waiting(self):
        """Pids of roles still waiting for their stage."""
        roles = (self.runner, self.tests, self.server, self.svctests, self.probed)
        return [role[0].pid for role in roles if role is not None]

    def take_runner(self):
        runner, self.runner = self.runner, None
        return self.started(runner)

    def take_tests(self):
        tests, self.tests = self.tests, None
        return self.started(tests)

    @staticmethod
    def started(role):
        """A preforked role runs the candidate's code once it is used."""
        global UNTRUSTED_STARTED
        if role is not None:
            UNTRUSTED_STARTED = True
        return role


def prefork_runner():
    """A runner waiting for its start message: (process, request fd, reply fd)."""
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    proc = fork_role(lambda: runner_main(req_r, resp_w, forked=True), (req_r, resp_w))
    os.close(req_r)
    os.close(resp_w)
    return proc, req_w, resp_r


def prefork_waiting(main):
    """A role that waits for its start message, then confines itself and
    runs `main(fd, app)` with the write end of a pipe to us and where the
    service's app is (`APP_DEFAULT`'s form): (process, start fd, read end of
    that pipe). Untrusted roles only."""
    start_r, start_w = os.pipe()
    out_r, out_w = os.pipe()

    def role():
        message = await_start(start_r)
        if message:
            os.close(start_r)
            main(out_w, message.get("app") or APP_DEFAULT)

    proc = fork_role(role, (start_r, out_w))
    os.close(start_r)
    os.close(out_w)
    return proc, start_w, out_r


def await_start(fd):
    """In a role forked before the run (`Prefork`): waits for the start
    message on `fd`, then installs the seccomp filter (the role was forked
    before the checker installed it) and becomes dumpable again, as a fresh
    process is, so the candidate's code may read its own /proc/self files.
    The start message (a dict, so true), or None when the run ends without
    starting it."""
    try:
        message = recv(fd)
        if message.get("start") is not True:
            return None
    except (EOFError, ValueError, AttributeError):
        return None
    confine()
    libc().prctl(4, 1, None, 0, 0)  # PR_SET_DUMPABLE
    return message


def start_waiting(role, app=None):
    """Tells a `prefork_waiting` role to start, with where the service's app
    is: (process, its pipe's read end)."""
    proc, start_w, out_r = role
    try:
        send(start_w, {"start": True, "app": app})
    except OSError:
        pass  # gone already; what it does not send says so
    os.close(start_w)
    return proc, out_r


def prefork_tests():
    """A tests process waiting for its configuration: (process, config fd, result fd)."""
    config_r, config_w = os.pipe()
    result_r, result_w = os.pipe()
    proc = fork_role(lambda: tests_main(config_r, result_w, forked=True), (config_r, result_w))
    os.close(config_r)
    os.close(result_w)
    return proc, config_w, result_r


# ---------------------------------------------------------------- values across the boundary
#
# The code under test runs in the runner process; the tests (and their
# verdicts) run in a trusted process. Values cross in a small tagged JSON
# encoding, never with pickle: decoding must not execute anything.
#
# * Plain data (numbers, strings, bytes, the builtin containers and a few
#   exact standard-library types) crosses by value. Comparisons of plain
#   data happen in the trusted process with trusted code, so an answer is
#   right only if its value is.
# * Anything else (instances of the solution's classes, functions,
#   generators, classes) stays where it lives and crosses as a handle: the
#   other side gets a proxy whose attribute reads, calls, operators and
#   iteration are requests to the owner. Handles go both ways: a lambda a
#   test passes to the solution is called back in the trusted process.
# * Containers a test passes in are tracked by reference: what the
#   solution did to them in place is copied back into the test's own
#   objects after the call, and the same object handed back is the test's
#   object again (`is` holds).

import collections
import datetime
import decimal
import fractions

PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset)
# Exact standard-library types that cross by value (by name, never by
# importing a name the other side sent).
STDLIB_TYPES = {
    "Counter": collections.Counter,
    "OrderedDict": collections.OrderedDict,
    "defaultdict": collections.defaultdict,
    "deque": collections.deque,
    "Decimal": decimal.Decimal,
    "Fraction": fractions.Fraction,
    "date": datetime.date,
    "datetime": datetime.datetime,
    "time": datetime.time,
    "timedelta": datetime.timedelta,
}
STDLIB_NAMES = {v: k for k, v in STDLIB_TYPES.items()}
FACTORIES = {"int": int, "float": float, "list": list, "set": set, "dict": dict, "str": str, "tuple": tuple}
MUTABLE_TYPES = (list, dict, set, bytearray, collections.deque, collections.Counter, collections.OrderedDict, collections.defaultdict)


class Opaque:
    """A value that could not cross the boundary; equal to nothing."""

    def __init__(self, type_name, text):
        self.type_name = type_name
        self.text = text

    def __eq__(self, other):
        return False

    def __hash__(self):
        return id(self)

    def __repr__(self):
        return "<%s %s>" % (self.type_name, self.text)


class Codec:
    """One side's half of the encoding: its own objects' handles (`local`),
    and proxies of the other side's (`remote`), so that the same object
    always crosses as the same handle and comes back as the same proxy."""

    def __init__(self, tag, other_tag, make_proxy):
        self.tag, self.other_tag = tag, other_tag
        self.make_proxy = make_proxy
        self.local = {}  # handle -> object (kept alive: ids are not reused)
        self.local_ids = {}  # id(object) -> handle
        self.remote = {}  # handle -> proxy
        self.names = {}  # the solution module's names, as they crossed

    def handle(self, obj):
        key = id(obj)
        h = self.local_ids.get(key)
        if h is None:
            h = len(self.local) + 1
            self.local[h] = obj
            self.local_ids[key] = h
        return h

    def encode(self, value, refs=None, track=None, depth=0):
        """`refs`: id(obj) -> ref of objects the other side owns by
        reference (sent back as {"$r": ref}); `track`: a list that mutable
        containers are registered in (sent as {"$m": ref, "v": ...})."""
        if depth > MAX_DEPTH:
            return {"$o": ["RecursionError", "value nested too deeply"]}
        if refs and id(value) in refs:
            return {"$r": refs[id(value)]}
        t = type(value)
        if value is None or t in (bool, str):
            return value
        if t is int:
            # Decimal text of an int stops at 4,300 digits; hex does not.
            return value if value.bit_length() <= 14000 else {"$i": format(value, "x")}
        if t is float:
            if math.isnan(value) or math.isinf(value):
                return {"$f": repr(value)}
            return value
        if isinstance(value, Proxy):
            return {self.other_tag: value._kiln_handle_in(self)}
        if isinstance(value, type) and "_kiln_handle" in value.__dict__:
            return {self.other_tag: self._mirror_handle(value)}
        if isinstance(value, BaseException) and "_kiln_remote" in value.__dict__:
            return self.encode(value.__dict__["_kiln_remote"])
        if t in MUTABLE_TYPES and track is not None:
            ref = len(track)
            track.append(value)
            return {"$m": ref, "v": self._encode_plain(value, refs, track, depth)}
        if t in PLAIN_TYPES or t in STDLIB_NAMES:
            return self._encode_plain(value, refs, track, depth)
        return self.encode_handle(value)

    def _encode_plain(self, value, refs, track, depth):
        t = type(value)
        enc = lambda v: self.encode(v, refs, track, depth + 1)  # noqa: E731
        if t is list:
            return [enc(v) for v in value]
        if t is tuple:
            return {"$t": [enc(v) for v in value]}
        if t is set:
            return {"$s": [enc(v) for v in value]}
        if t is frozenset:
            return {"$fs": [enc(v) for v in value]}
        if t is dict:
            if all(type(k) is str and not k.startswith("$") for k in value):
                return {k: enc(v) for k, v in value.items()}
            return {"$d": [[enc(k), enc(v)] for k, v in value.items()]}
        if t is bytes:
            return {"$b": base64.b64encode(value).decode()}
        if t is bytearray:
            return {"$ba": base64.b64encode(bytes(value)).decode()}
        if t is complex:
            return {"$c": [value.real, value.imag]}
        name = STDLIB_NAMES[t]
        if t in (collections.Counter, collections.OrderedDict):
            return {"$x": name, "v": [[enc(k), enc(v)] for k, v in value.items()]}
        if t is collections.defaultdict:
            factory = getattr(value.default_factory, "__name__", None)
            return {"$x": name, "v": [[enc(k), enc(v)] for k, v in value.items()], "f": factory if factory in FACTORIES else None}
        if t is collections.deque:
            return {"$x": name, "v": [enc(v) for v in value], "maxlen": value.maxlen}
        if t is fractions.Fraction:
            return {"$x": name, "v": [value.numerator, value.denominator]}
        if t is datetime.timedelta:
            return {"$x": name, "v": [value.days, value.seconds, value.microseconds]}
        return {"$x": name, "v": str(value) if t is decimal.Decimal else value.isoformat()}

    def _mirror_handle(self, mirror):
        for h, known in self.remote.items():
            if known is mirror:
                return h
        raise RuntimeError("this exception class lived in a solution process that has since ended")

    def encode_handle(self, value):
        h = self.handle(value)
        meta = {self.tag: h, "type": type(value).__name__}
        if isinstance(value, type):
            meta["kind"] = "exc_class" if issubclass(value, BaseException) else "class"
            meta["name"] = value.__name__
            if meta["kind"] == "exc_class":
                meta["bases"] = [
                    {"builtin": b.__name__} if b.__module__ == "builtins" else self.encode_handle(b)
                    for b in value.__bases__
                ]
        elif isinstance(value, type(sys)):
            meta["kind"] = "module"
            meta["name"] = value.__name__
            meta["own"] = os.path.realpath(str(getattr(value, "__file__", "") or "")).startswith(SRC_DIR + os.sep)
        elif hasattr(value, "__next__") and hasattr(value, "__iter__"):
            meta["kind"] = "iterator"
        elif callable(value):
            meta["kind"] = "function"
        else:
            meta["kind"] = "object"
        for attr in ("__name__", "__qualname__", "__doc__"):
            try:
                v = getattr(value, attr, None)
            except Exception:  # noqa: BLE001 - a property that raises
                v = None
            if isinstance(v, str):
                meta[attr] = v[:20000]
        return meta

    def decode(self, value, refs=None, tracked=None, depth=0):
        """`refs`: ref -> the object it stands for; `tracked` collects
        (ref, object) for {"$m"} containers."""
        if depth > MAX_DEPTH:
            raise ValueError("value nested too deeply")
        dec = lambda v: self.decode(v, refs, tracked, depth + 1)  # noqa: E731
        if isinstance(value, list):
            return [dec(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "$m" in value:
            obj = dec(value["v"])
            if tracked is not None:
                tracked.append((value["$m"], obj))
            return obj
        if "$r" in value:
            return refs[value["$r"]]
        if self.other_tag in value:
            h = value[self.other_tag]
            proxy = self.remote.get(h)
            if proxy is None:
                proxy = self.make_proxy(self, h, value)
                self.remote[h] = proxy
            return proxy
        if self.tag in value:
            return self.local[value[self.tag]]
        if "$x" in value:
            t = STDLIB_TYPES[value["$x"]]
            v = value["v"]
            if t in (collections.Counter, collections.OrderedDict):
                # From a mapping: Counter counts the items of any other iterable.
                return t(collections.OrderedDict((dec(k), dec(x)) for k, x in v))
            if t is collections.defaultdict:
                return collections.defaultdict(FACTORIES.get(value.get("f")), ((dec(k), dec(x)) for k, x in v))
            if t is collections.deque:
                return collections.deque((dec(x) for x in v), value.get("maxlen"))
            if t is fractions.Fraction:
                return fractions.Fraction(int(v[0]), int(v[1]))
            if t is datetime.timedelta:
                return datetime.timedelta(days=v[0], seconds=v[1], microseconds=v[2])
            if t is decimal.Decimal:
                return decimal.Decimal(v)
            return t.fromisoformat(v)
        if len(value) == 1:
            (tag, inner), = value.items()
            if tag == "$t":
                return tuple(dec(v) for v in inner)
            if tag == "$s":
                return set(dec(v) for v in inner)
            if tag == "$fs":
                return frozenset(dec(v) for v in inner)
            if tag == "$d":
                return {dec(k): dec(v) for k, v in inner}
            if tag == "$b":
                return base64.b64decode(inner)
            if tag == "$ba":
                return bytearray(base64.b64decode(inner))
            if tag == "$c":
                return complex(inner[0], inner[1])
            if tag == "$f":
                return float(inner)
            if tag == "$i":
                return int(inner, 16)
            if tag == "$o":
                return Opaque(str(inner[0]), str(inner[1]))
        return {k: dec(v) for k, v in value.items()}


def update_in_place(obj, new):
    """Makes the test's own container hold what the solution left in it."""
    if isinstance(obj, (list, bytearray)):
        obj[:] = new
    elif isinstance(obj, collections.deque):
        obj.clear()
        obj.extend(new)
    elif isinstance(obj, (dict, set)):
        obj.clear()
        obj.update(new)


def plain_snapshot(value, depth=0):
    """The plain value of an object of a subclass of a plain type (a
    namedtuple, an IntEnum, a list subclass), read through the builtin
    type, so its class's own `__eq__` never takes part; NO_PLAIN for
    anything else."""
    if depth > MAX_DEPTH:
        return NO_PLAIN
    t = type(value)
    if t in PLAIN_TYPES or t in STDLIB_NAMES:
        return value
    for base in (bool, int, float, complex, str, bytes, bytearray, tuple, list, frozenset, set, dict):
        if isinstance(value, base):
            if base is dict:
                return dict(dict.items(value))
            if base in (tuple, list, set, frozenset):
                return base(base.__iter__(value))
            return base(value)
    return NO_PLAIN


NO_PLAIN = object()


def normalise(value, depth=0):
    """The value as JSON for Kiln to compare with a spec's expected value
    (README, "How results are compared"). JSON's own types stay JSON, and
    a tuple is a list, as expected values cannot write tuples; every other
    type gets a one-key object naming it (`{"$set": [...]}`), so a value of
    the wrong type never looks like a right one (`"nan"` and nan, `"abc"`
    and `b"abc"`, a list and a set, `{"1": 1}` and `{1: 1}`). Integers are
    written with every digit."""
    if depth > MAX_DEPTH:
        return {"$unrepresentable": "a value nested deeper than %d levels" % MAX_DEPTH}
    if isinstance(value, Proxy):
        value = value._kiln_plain()
    if isinstance(value, Opaque):
        return {"$unrepresentable": "%s %s" % (value.type_name, value.text)}
    if value is None or type(value) in (bool, str):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        try:
            # Decimal text, which Python refuses beyond 4,300 digits.
            json.dumps(int(value))
        except ValueError:
            return {"$unrepresentable": "an int of %d bits, beyond Python's limit for decimal text" % value.bit_length()}
        return int(value)
    if isinstance(value, float):
        return normal_float(float(value))
    sub = lambda v: normalise(v, depth + 1)  # noqa: E731
    if isinstance(value, (list, tuple)):
        return [sub(v) for v in value]
    if isinstance(value, collections.deque):
        return {"$deque": [sub(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {"$set": [sub(v) for v in value]}
    if isinstance(value, dict):
        # Counter, OrderedDict and defaultdict equal the dict of their items.
        if all(type(k) is str and not k.startswith("$") for k in value):
            return {k: sub(v) for k, v in value.items()}
        return {"$dict": [[sub(k), sub(v)] for k, v in value.items()]}
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, complex):
        return {"$complex": [normal_float(value.real), normal_float(value.imag)]}
    try:
        if isinstance(value, decimal.Decimal):
            return {"$decimal": str(value)}
        if isinstance(value, fractions.Fraction):
            return {"$fraction": "%d/%d" % (value.numerator, value.denominator)}
    except ValueError:
        return {"$unrepresentable": "a %s beyond Python's limit for decimal text" % type(value).__name__}
    if isinstance(value, datetime.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, datetime.date):
        return {"$date": value.isoformat()}
    if isinstance(value, datetime.time):
        return {"$time": value.isoformat()}
    if isinstance(value, datetime.timedelta):
        return {"$timedelta": [value.days, value.seconds, value.microseconds]}
    return {"$unrepresentable": type(value).__name__}


def normal_float(value):
    """A finite float as a JSON number; nan and the infinities, which JSON
    cannot write, as `{"$float": "nan" | "inf" | "-inf"}`."""
    if math.isnan(value) or math.isinf(value):
        return {"$float": repr(value)}
    return value


# ---------------------------------------------------------------- framing


def send(fd, obj):
    data = json.dumps(obj, allow_nan=False).encode()
    os.write(fd, struct.pack(">I", len(data)))
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def read_exact(fd, n, deadline):
    chunks = []
    while n > 0:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                raise TimeoutError
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv(fd, deadline=None):
    """One message; ValueError when it is too large or not a JSON object."""
    (size,) = struct.unpack(">I", read_exact(fd, 4, deadline))
    if size > MAX_MESSAGE:
        raise ValueError("message of %d bytes is over the limit" % size)
    data = read_exact(fd, size, deadline)
    try:
        message = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ValueError("malformed message: %s" % type(e).__name__) from None
    if not isinstance(message, dict):
        raise ValueError("malformed message: not an object")
    return message


class Capture:
    """Drains a pipe in a thread, keeping the first `limit` bytes."""

    def __init__(self, stream, limit):
        self.data = bytearray()
        self.dropped = 0
        self.limit = limit
        self.thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self.thread.start()

    def _run(self, stream):
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not chunk:
                return
            room = self.limit - len(self.data)
            if room > 0:
                self.data += chunk[:room]
            self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self, wait=1.0):
        self.thread.join(wait)
        out = self.data.decode("utf-8", "replace")
        if self.dropped:
            out += "\n[... %d more bytes of output discarded]" % self.dropped
        return out


# ---------------------------------------------------------------- proxies and requests

CONTROL_FLOW = ("StopIteration", "StopAsyncIteration", "GeneratorExit", "KeyboardInterrupt", "SystemExit")


def is_test_failure(e):
    """Whether an exception is the tests failing: a failed assert, or one
    of pytest's outcomes (`pytest.fail`, `skip`, `exit`), which derive from
    BaseException, not Exception."""
    return isinstance(e, AssertionError) or (isinstance(e, BaseException) and not isinstance(e, Exception))


def _op_exit(obj, *exc):
    return obj.__exit__(*exc)


# Operations one side may ask of the other's objects. Reflected operators
# swap their operands here, so the owner always evaluates `a OP b`.
OPS = {
    "eq": lambda a, b: bool(a == b),
    "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
    "len": len, "bool": bool, "repr": repr, "str": str, "hash": hash, "iter": iter, "next": next,
    "int": int, "float": float, "index": operator.index, "neg": operator.neg, "pos": operator.pos,
    "abs": abs, "invert": operator.invert, "round": round,
    "getitem": operator.getitem, "setitem": operator.setitem, "delitem": operator.delitem,
    "contains": operator.contains, "isinstance": lambda cls, obj: isinstance(obj, cls),
    "issubclass": lambda cls, sub: issubclass(sub, cls), "enter": lambda a: a.__enter__(), "exit": _op_exit,
    "dir": lambda a: sorted(dir(a)),
}
for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and_", "or_", "xor", "lshift", "rshift"):
    _fn = getattr(operator, _name)
    OPS[_name.rstrip("_")] = _fn
    OPS["r" + _name.rstrip("_")] = (lambda f: lambda a, b: f(b, a))(_fn)


def solution_traceback(e):
    """The candidate's traceback without the harness's own frames (the
    harness runs from `-c`, so its frames are in "<string>")."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename != "<string>"]
    lines = traceback.format_list(frames) + traceback.format_exception_only(type(e), e)
    return ("Traceback (most recent call last):\n" + "".join(lines))[-3000:]


# Attributes of the trusted side's objects the solution may use: names
# without a leading underscore, except those that lead to frames, code and
# globals. A callback or generator a test passes would otherwise open the
# tests process to the solution: `callback.__globals__` holds the test's
# expected values and, through its modules, everything the process can do.
SAFE_DUNDERS = frozenset({"__name__", "__qualname__", "__doc__", "__module__"})
FRAME_ATTRIBUTES = frozenset({
    "tb_frame", "tb_next", "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await",
    "cr_origin", "ag_frame", "ag_code", "ag_await", "f_globals", "f_locals", "f_builtins", "f_back",
    "f_code", "co_consts", "co_code", "co_names",
})


# Bound methods that read or write attributes of objects by names given as
# data (`"{0.__traceback__.tb_frame}".format(x)`, a Mock's
# `configure_mock(**{"__eq__": ...})`).
NAMES_AS_DATA = frozenset({"format", "format_map", "configure_mock", "attach_mock", "mock_add_spec"})


def is_behaviour(obj, name):
    """Whether `name` is a method, property or other descriptor of `obj`'s
    class (not a plain class-level default, which an instance may shadow)."""
    import inspect

    try:
        attr = inspect.getattr_static(type(obj), name)
    except AttributeError:
        return False
    return callable(attr) or hasattr(type(attr), "__get__")


def reachable(name):
    return (
        isinstance(name, str)
        and (name in SAFE_DUNDERS or not name.startswith("_"))
        and name not in FRAME_ATTRIBUTES
        and name not in NAMES_AS_DATA
    )


class Peer:
    """One end of the request channel between the tests and the runner.
    Both ends serve requests for their own objects while they wait for a
    reply, so calls nest in both directions (a solution calling a test's
    callback, which calls the solution again)."""

    # Whether requests come from untrusted code (see `reachable`).
    guarded = False
    # The first test failure raised in a callback the untrusted side called
    # (guarded side only), raised in the test when the request returns.
    test_failure = None

    def __init__(self, codec, out_fd, in_fd):
        self.codec = codec
        self.out_fd, self.in_fd = out_fd, in_fd
        # Mirror classes of the solution's exceptions, by qualified name, so
        # they stay the same classes when the solution process restarts.
        self.mirrors = {}

    def wait(self):
        """The next message from the other side."""
        return recv(self.in_fd)

    def request(self, op, *operands, **extra):
        track = []
        message = {"req": dict(extra, op=op, operands=[self.codec.encode(o, track=track) for o in operands])}
        send(self.out_fd, message)
        while True:
            reply = self.wait()
            if "req" in reply:
                send(self.out_fd, self.serve(reply["req"]))
                continue
            for ref, new in (reply.get("mut") or {}).items():
                update_in_place(track[int(ref)], self.codec.decode(new, refs=track))
            return reply, track

    def serve(self, req):
        """Performs one request on this side's objects and returns the
        reply: the result, or the exception, and what the call did to the
        containers it was given."""
        tracked = []
        if self.guarded and not self.handed_out(req.get("operands")):
            # A request is about one of this side's objects that the other
            # side holds (a callback, an object the tests passed in). On
            # anything else, values the untrusted side sent itself, it would
            # only compute in the trusted process: `Decimal(1) / 0` there
            # raised an exception whose handle led, through `str.format`,
            # to the checker's frames.
            return {"exc": {"type": "TypeError", "message": "a request on an object the tests did not hand out", "trace": ""}}
        try:
            operands = [self.codec.decode(o, tracked=tracked) for o in req["operands"]]
        except (ValueError, TypeError, KeyError, IndexError, RecursionError) as e:
            return {"exc": {"type": "TypeError", "message": "undecodable arguments: %r" % e, "trace": ""}}
        refs = {id(obj): ref for ref, obj in tracked}
        before = {ref: self.codec._encode_plain(obj, refs, None, 0) for ref, obj in tracked}
        op = req.get("op")
        if self.guarded and op in ("getattr", "setattr", "delattr") and not reachable(req.get("name")):
            return {"exc": {"type": "AttributeError", "message": "%r is out of the solution's reach" % req.get("name"), "trace": ""}}
        if self.guarded and op in ("setattr", "delattr") and is_behaviour(operands[0], req["name"]):
            # A method or property of a test's object (a Mock's
            # `assert_called_once_with`, `called`) is the test's check.
            return {"exc": {"type": "AttributeError", "message": "%r of a test's object is read-only to the solution" % req.get("name"), "trace": ""}}
        try:
            if op == "call":
                fn, args, kwargs = operands
                result = fn(*args, **kwargs)
            elif op == "getattr":
                result = getattr(operands[0], req["name"])
            elif op == "setattr":
                result = setattr(operands[0], req["name"], operands[1])
            elif op == "delattr":
                result = delattr(operands[0], req["name"])
            elif op == "plain":
                result = plain_snapshot(operands[0])
                if result is NO_PLAIN:
                    return {"noplain": True}
            else:
                result = OPS[op](*operands)
            reply = {"ok": self.codec.encode(result, refs=refs)}
        except StopIteration:
            if op != "next":
                reply = {"exc": self.describe(RuntimeError("StopIteration raised outside iteration"))}
            else:
                reply = {"stop": True}
        except BaseException as e:  # noqa: BLE001 - SystemExit inside the code is a failure too
            if self.guarded and is_test_failure(e):
                # A test's check failed in a callback the solution called:
                # the test fails with it when the solution's side answers,
                # even if the solution catches what it gets, which is a bare
                # AssertionError (the message holds expected values).
                if self.test_failure is None:
                    self.test_failure = e
                reply = {"exc": {"type": "AssertionError", "message": "", "trace": ""}}
            else:
                reply = {"exc": self.describe(e)}
        mutated = {}
        for ref, obj in tracked:
            now = self.codec._encode_plain(obj, refs, None, 0)
            if now != before[ref]:
                mutated[ref] = now
        if mutated:
            reply["mut"] = mutated
        return reply

    def handed_out(self, operands):
        """Whether a request's subject (its first operand) is a handle of
        an object this side handed out."""
        if not isinstance(operands, list) or not operands:
            return False
        subject = operands[0]
        return (
            isinstance(subject, dict)
            and len(subject) == 1
            and isinstance(subject.get(self.codec.tag), int)
            and subject[self.codec.tag] in self.codec.local
        )

    def describe(self, e):
        t = type(e)
        exc = {"type": t.__name__, "message": str(e)[:2000], "trace": solution_traceback(e)}
        if t.__module__ != "builtins" and issubclass(t, Exception):
            exc["cls"] = self.codec.encode_handle(t)
            exc["obj"] = self.codec.encode_handle(e)
        try:
            exc["args"] = self.codec.encode(tuple(e.args))
        except Exception:  # noqa: BLE001 - arguments that cannot cross
            pass
        return exc

    def result(self, op, *operands, **extra):
        """Performs `op` on the other side and returns its result, raising
        what it raised."""
        reply, track = self.request(op, *operands, **extra)
        if self.test_failure is not None:
            failure, self.test_failure = self.test_failure, None
            raise failure
        if "ok" in reply:
            return self.codec.decode(reply["ok"], refs=track)
        if reply.get("stop"):
            if op == "next":
                raise StopIteration
            # Only `next` ends an iteration: a "stop" for a call would end
            # the test's `map()` or `all()` early.
            raise RuntimeError("the solution's side ended an iteration on a %r request" % op)
        if reply.get("noplain"):
            return NO_PLAIN
        raise self.exception(reply.get("exc") or {})

    def exception(self, exc):
        """The exception to raise for one the other side raised: the same
        builtin type, or a local mirror of the solution's own class; the
        exceptions that steer control flow (StopIteration and friends) never
        cross as themselves, so a raised one cannot end a test's loop or
        make `all()` true."""
        type_name, message = str(exc.get("type")), str(exc.get("message"))[:2000]
        trace = str(exc.get("trace", ""))[-3000:]
        try:
            args = self.codec.decode(exc["args"]) if "args" in exc else (message,)
        except (ValueError, TypeError, KeyError, IndexError, RecursionError):
            args = (message,)
        error = None
        if type_name in CONTROL_FLOW:
            error = RuntimeError("the solution raised %s%s" % (type_name, ": " + message if message else ""))
        elif "cls" in exc:
            try:
                cls = self.codec.decode(exc["cls"])
                error = cls.__new__(cls)
                error.args = tuple(args) if isinstance(args, tuple) else (message,)
                if "obj" in exc:
                    object.__setattr__(error, "_kiln_remote", self.codec.decode(exc["obj"]))
            except Exception:  # noqa: BLE001 - fall back to a plain RuntimeError
                error = None
        else:
            builtin = getattr(builtins, type_name, None)
            if isinstance(builtin, type) and issubclass(builtin, Exception) and builtin.__module__ == "builtins":
                try:
                    error = builtin(*args) if isinstance(args, tuple) else builtin(message)
                except Exception:  # noqa: BLE001 - exceptions whose constructors want more
                    error = None
        if error is None:
            error = RuntimeError("%s: %s" % (type_name, message))
        if trace:
            error.add_note("raised in solution:\n" + trace)
        return error


def make_proxy_factory(peer_ref):
    """The codec's proxy maker: a Proxy for objects, a real (mirror) class
    for the solution's exception classes so `pytest.raises` and `except`
    work with them."""

    def make(codec, h, meta):
        peer = peer_ref[0]
        if meta.get("kind") == "exc_class":
            key = str(meta.get("__qualname__") or meta.get("name"))
            if key in peer.mirrors:
                return peer.mirrors[key]
            bases = []
            for b in meta.get("bases") or []:
                if "builtin" in b:
                    base = getattr(builtins, str(b["builtin"]), None)
                    if isinstance(base, type) and issubclass(base, Exception):
                        bases.append(base)
                else:
                    base = codec.decode(b)
                    if isinstance(base, type):
                        bases.append(base)
            namespace = {"__module__": "solution", "_kiln_handle": h, "__getattr__": _mirror_getattr,
                         "__doc__": meta.get("__doc__")}
            name = str(meta.get("name") or "Error")
            try:
                mirror = type(name, tuple(bases) or (Exception,), namespace)
            except TypeError:  # an unmirrorable layout of bases
                mirror = type(name, (Exception,), namespace)
            peer.mirrors[key] = mirror
            return mirror
        return Proxy(peer, codec, h, meta)

    return make


def _mirror_getattr(self, name):
    remote = self.__dict__.get("_kiln_remote")
    if remote is None or name.startswith("__"):
        raise AttributeError(name)
    return getattr(remote, name)


class Proxy:
    """An object that lives on the other side. Attribute reads and writes,
    calls, operators and iteration are requests to its owner. Equality is
    the one exception: a proxy equals a plain value only if it is an
    instance of a plain type (a namedtuple, an IntEnum, a list subclass)
    whose plain value, compared here, equals it; the solution's own
    `__eq__` is asked only to compare two of its own objects. So an object
    that claims to equal everything equals nothing it was not built to."""

    __slots__ = ("__dict__", "__weakref__")

    def __init__(self, peer, codec, h, meta):
        d = self.__dict__
        d["_kiln_peer"], d["_kiln_codec"], d["_kiln_h"] = peer, codec, h
        d["_kiln_kind"], d["_kiln_type"], d["_kiln_path"] = meta.get("kind"), meta.get("type"), None
        for attr in ("__name__", "__qualname__", "__doc__"):
            d[attr] = meta.get(attr)
        d["__module__"] = "solution"

    def _kiln_handle_in(self, codec):
        """This object's handle in `codec`: a module-level name of the
        solution is found again in a restarted solution process; any other
        object died with the process it lived in."""
        d = self.__dict__
        if d["_kiln_codec"] is not codec:
            path = d["_kiln_path"]
            fresh = codec.decode(codec.names[path]) if path is not None and path in codec.names else None
            if not isinstance(fresh, Proxy):
                raise RuntimeError("this object lived in a solution process that has since ended")
            d["_kiln_codec"], d["_kiln_h"] = codec, fresh.__dict__["_kiln_h"]
        return d["_kiln_h"]

    def _kiln(self, op, *operands, **extra):
        return self.__dict__["_kiln_peer"].result(op, self, *operands, **extra)

    def __getattr__(self, name):
        if name.startswith("_kiln"):
            raise AttributeError(name)
        return self._kiln("getattr", name=name)

    def __setattr__(self, name, value):
        self._kiln("setattr", value, name=name)

    def __delattr__(self, name):
        self._kiln("delattr", name=name)

    def __call__(self, *args, **kwargs):
        return self.__dict__["_kiln_peer"].result("call", self, list(args), dict(kwargs))

    def __eq__(self, other):
        if isinstance(other, Proxy):
            return self._kiln("eq", other)
        plain = self._kiln("plain")
        if plain is NO_PLAIN:
            return NotImplemented
        return plain == other

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self):
        return self._kiln("hash")

    def __iter__(self):
        if self.__dict__["_kiln_kind"] == "iterator":
            return self
        return self._kiln("iter")

    def __next__(self):
        return self._kiln("next")

    def __instancecheck__(self, instance):
        return self._kiln("isinstance", instance) if isinstance(instance, Proxy) else False

    def __subclasscheck__(self, subclass):
        return self._kiln("issubclass", subclass) if isinstance(subclass, Proxy) else False

    def __exit__(self, *exc):
        # Exception types and tracebacks do not cross; the instance does,
        # unless it is the test's own failure: that one the solution's
        # context manager neither sees (its message holds expected values)
        # nor suppresses.
        raised = exc[1] if len(exc) > 1 else None
        if is_test_failure(raised):
            self._kiln("exit", None, None, None)
            return False
        return self._kiln("exit", None, raised if isinstance(raised, Exception) else None, None)

    def _kiln_plain(self):
        """The plain value for comparison with an expected value, or an
        Opaque that equals nothing."""
        plain = self._kiln("plain")
        if plain is NO_PLAIN:
            return Opaque(str(self.__dict__["_kiln_type"]), str(self._kiln("repr"))[:200])
        return plain


def _forward(op):
    def method(self, *operands):
        return self._kiln(op, *operands)

    method.__name__ = "__%s__" % op
    return method


for _op in ("lt", "le", "gt", "ge", "len", "bool", "repr", "str", "int", "float", "index", "neg", "pos",
            "abs", "invert", "round", "getitem", "setitem", "delitem", "contains", "enter", "dir"):
    setattr(Proxy, "__%s__" % _op, _forward(_op))
for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift"):
    setattr(Proxy, "__%s__" % _name, _forward(_name))
    setattr(Proxy, "__r%s__" % _name, _forward("r" + _name))


# ---------------------------------------------------------------- runner role


def prefer_oom_kill():
    """Makes this process (and what it starts) the memory-limit killer's
    first choice, ahead of the trusted roles."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def runner_main(req_fd, resp_fd, forked=False):
    """Imports the candidate and serves requests on its objects. Runs
    untrusted code; never sees expected values or verdicts. A forked runner
    (`Prefork`) waits for its start message, sent once the files are
    written, and installs the seccomp filter itself: it was forked before
    the checker installed it."""
    if forked and not await_start(req_fd):
        return
    prefer_oom_kill()
    sys.path.insert(0, SRC_DIR)
    os.chdir(SRC_DIR)
    peer_ref = []
    codec = Codec("$h", "$th", make_proxy_factory(peer_ref))
    peer = Peer(codec, resp_fd, req_fd)
    peer_ref.append(peer)
    try:
        import solution  # noqa: F401
    except BaseException as e:  # noqa: BLE001 - report anything, even SystemExit
        send(resp_fd, {"import_error": solution_traceback(e)[-4000:]})
        return
    module = sys.modules["solution"]
    names = {}
    for name, value in list(vars(module).items()):
        if name.startswith("__") and name.endswith("__") and name != "__all__":
            continue
        try:
            names[name] = codec.encode(value)
        except Exception as e:  # noqa: BLE001 - a value that cannot cross
            names[name] = {"$o": [type(value).__name__, "cannot cross: %s" % type(e).__name__]}
    send(resp_fd, {"ready": True, "names": names})
    while True:
        try:
            message = recv(req_fd)
        except EOFError:
            return
        if "req" not in message:
            return
        send(resp_fd, peer.serve(message["req"]))


class Candidate(Peer):
    """The trusted side's handle on a runner process: starts it, serves the
    runner's callbacks while waiting, and bounds every request by the CPU
    time the runner spends on it (so a verdict does not depend on how busy
    the machine is), with the run's deadline as the wall-clock backstop."""

    def __init__(self, output_limit, deadline, call_cpu_s, adopt=None):
        super().__init__(None, None, None)
        self.guarded = True
        self.output_limit = output_limit
        self.deadline = deadline
        self.call_cpu_s = call_cpu_s
        self.proc = None
        self.outputs = []
        self.names = {}
        self.import_error = None
        self.start(adopt)

    def start(self, adopt=None):
        """Starts the runner: the preforked one `adopt` names, else (and on
        every restart) a fresh interpreter."""
        if adopt is not None:
            self.proc, self.out_fd, self.in_fd = adopt
            try:
                send(self.out_fd, {"start": True})
            except OSError:
                pass  # gone already; the missing hello below says so
        else:
            req_r, req_w = os.pipe()
            resp_r, resp_w = os.pipe()
            try:
                self.proc = spawn("runner", str(req_r), str(resp_w), pass_fds=(req_r, resp_w), cwd=SRC_DIR)
            finally:
                os.close(req_r)
                os.close(resp_w)
            self.out_fd, self.in_fd = req_w, resp_r
        # Handles number the objects of one solution process only.
        self.codec = Codec("$th", "$h", make_proxy_factory([self]))
        self.outputs.append(Capture(self.proc.stdout, self.output_limit))
        try:
            hello = recv(self.in_fd, self.deadline)
        except (EOFError, TimeoutError, ValueError) as e:
            self.import_error = "the solution process ended before finishing its import (%s, exit code %s)" % (
                "time ran out" if isinstance(e, TimeoutError) else type(e).__name__,
                self.stop(),
            )
            return
        if "import_error" in hello:
            self.import_error = "importing solution failed:\n" + str(hello["import_error"])[-4000:]
            self.stop()
            return
        names = hello.get("names")
        if not isinstance(names, dict):
            self.import_error = "the solution process sent a malformed list of names"
            self.stop()
            return
        self.names = names
        self.codec.names = names

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return None
        try:
            os.killpg(self.proc.pid, 9)
        except OSError:
            pass
        code = self.proc.wait()
        for fd in (self.out_fd, self.in_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        return code

    def cpu_seconds(self):
        """CPU time the runner (all its threads) has used so far."""
        try:
            with open("/proc/%d/stat" % self.proc.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        except (OSError, IndexError, ValueError):
            return 0.0

    def wait(self):
        start_cpu = self.cpu_seconds()
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                self.stop()
                raise TimeoutError("the run's time ran out while the solution was running")
            ready, _, _ = select.select([self.in_fd], [], [], min(0.05, self.deadline - now))
            if ready:
                break
            if self.cpu_seconds() - start_cpu > self.call_cpu_s:
                self.stop()
                raise TimeoutError("the solution used more than %ss of CPU time in one call" % self.call_cpu_s)
        return recv(self.in_fd, self.deadline)

    def request(self, op, *operands, **extra):
        if not self.alive() and self.import_error is None:
            self.start()
        if self.import_error is not None:
            raise RuntimeError(self.import_error)
        try:
            reply, track = super().request(op, *operands, **extra)
        except (EOFError, BrokenPipeError):
            code = self.stop()
            raise RuntimeError("the solution process exited (code %s) while running it" % code) from None
        except ValueError as e:
            # The stream is out of step after a bad message: start afresh.
            self.stop()
            raise RuntimeError("the solution answered with an unusable message: %s" % e) from None
        if not any(k in reply for k in ("ok", "exc", "stop", "noplain")):
            self.stop()
            raise RuntimeError("the solution answered with an unusable message")
        return reply, track

    def name(self, name):
        """A name of the solution module, decoded: a proxy that finds the
        name again should the solution process restart."""
        value = self.codec.decode(self.names[name])
        if isinstance(value, Proxy):
            value.__dict__["_kiln_path"] = name
        return value

    def output(self):
        return "".join(c.text() for c in self.outputs)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- tests role


def pytest_recorder(results, collected, short_names):
    """A pytest plugin recording what was collected and each phase's result."""

    class Recorder:
        def pytest_collection_modifyitems(self, items):
            collected.extend(item.nodeid for item in items)

        def pytest_runtest_logreport(self, report):
            if report.when == "call" or report.outcome != "passed":
                outcome = "error" if report.when != "call" and report.outcome == "failed" else report.outcome
                message = "" if report.passed else str(report.longreprtext)[-3000:]
                name = report.nodeid.split("::", 1)[-1] if short_names else report.nodeid
                results.append({"name": name, "outcome": outcome, "message": message, "when": report.when})

        def pytest_collectreport(self, report):
            if report.failed:
                results.append({"name": "collection of " + report.nodeid, "outcome": "error", "message": str(report.longreprtext)[-3000:], "when": "collect"})

    return Recorder()


def load_test_module(source, config):
    """Compiles and runs the spec's test source as the module `test_spec`,
    with pytest's assertion rewriting, without reading any file."""
    import linecache
    import types

    tree = ast.parse(source, TEST_FILE)
    # `from solution import *` binds no name the tests bind themselves (an
    # imported `approx`, a helper defined above the import): the solution
    # could otherwise replace the very checks that judge it.
    solution = sys.modules.get("solution")
    exported = getattr(solution, "__all__", None)
    if isinstance(exported, list):
        own = module_bindings(tree)
        solution.__all__ = [n for n in exported if n not in own]
    try:
        from _pytest.assertion.rewrite import rewrite_asserts
    except ImportError:  # plain asserts still judge; only messages get terser
        pass
    else:
        rewrite_asserts(tree, source.encode(), TEST_FILE, config)
    code = compile(tree, TEST_FILE, "exec", dont_inherit=True)
    module = types.ModuleType("test_spec")
    module.__file__ = TEST_FILE
    sys.modules["test_spec"] = module
    # Tracebacks show the trusted source, not whatever is on disk now.
    linecache.cache[TEST_FILE] = (len(source), None, source.splitlines(True), TEST_FILE)
    exec(code, module.__dict__)
    return module


def module_bindings(tree):
    """The names a module binds at its top level, in any branch: imports
    (a star import aside), definitions, assignment and loop targets, `as`
    names, walrus targets, and `global` names of its functions."""
    names = set()

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            for inner in ast.walk(node):
                if isinstance(inner, ast.Global):
                    names.update(inner.names)
            return
        if isinstance(node, ast.Lambda):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(a.asname or a.name.split(".")[0] for a in node.names if a.name != "*")
            return
        if isinstance(node, ast.comprehension):
            # Its target is the comprehension's own; a walrus in it is not.
            for child in [node.iter] + node.ifs:
                visit(child)
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
        for child in ast.iter_child_nodes(node):
            visit(child)

    for statement in tree.body:
        visit(statement)
    return names


def is_stub(function):
    """A function the prompt leaves for the solution to write: its body is
    only a docstring, `pass`, `...` or a `raise`."""
    body = list(function.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
        body = body[1:]
    return all(
        isinstance(s, (ast.Pass, ast.Raise)) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and s.value.value is Ellipsis)
        for s in body
    )


def prompt_helpers(prompt, entry_point, solution):
    """The functions the spec's prompt defines in full besides the entry
    point (HumanEval's `poly`, `encode_cyclic`, `is_palindrome`), run here
    from the trusted prompt: a test that uses a helper the spec gave gets
    the spec's, not one the solution redefined to agree with its own wrong
    answer. Whatever else the prompt names (the entry point, stubs and
    classes left for the solution to write) resolves to the solution's."""
    import types

    if not isinstance(prompt, str) or not prompt.strip():
        return {}
    try:
        tree = ast.parse(prompt)
    except (SyntaxError, ValueError, RecursionError):
        return {}
    helpers = {
        s.name for s in tree.body
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name != entry_point and not is_stub(s)
    }
    if not helpers:
        return {}
    namespace = types.ModuleType("solution").__dict__
    try:
        exec(compile(tree, "<prompt>", "exec", dont_inherit=True), namespace)
    except Exception:  # noqa: BLE001 - a prompt that does not run gives no helpers
        return {}
    for name in module_bindings(tree) - helpers:
        if isinstance(namespace.get(name), (types.FunctionType, type)) and hasattr(solution, name):
            namespace[name] = getattr(solution, name)
    return {name: namespace[name] for name in helpers if callable(namespace.get(name))}


def exportable(name):
    """Whether a name of the candidate's module may become a name of the
    `solution` module the tests import (and, if exported, of the tests' own
    globals): not a dunder (a star-imported `__builtins__` replaces the
    builtins of every test function defined after it) and an identifier
    (`@py_builtins` is the name pytest's rewritten asserts use)."""
    return name == "__all__" or (
        isinstance(name, str) and name.isidentifier() and not (name.startswith("__") and name.endswith("__"))
    )


def proxy_module(candidate, entry_point, prompt=None):
    """The `solution` the tests import: every name of the candidate's
    module, private ones too, as plain values or proxies (real mirror
    classes for its exceptions, the real module for a standard-library
    module it imported), except the helpers the prompt defines, which are
    the prompt's own (`prompt_helpers`)."""
    import types

    proxy = types.ModuleType("solution")
    declared = None
    for name in candidate.names:
        if not exportable(name):
            continue
        if name == "__all__":
            try:
                declared = candidate.name(name)
            except (ValueError, TypeError, KeyError, IndexError, RecursionError):
                declared = None
            continue
        try:
            value = candidate.name(name)
        except (ValueError, TypeError, KeyError, IndexError, RecursionError):
            value = Opaque("value", name)
        if isinstance(value, Proxy) and value.__dict__["_kiln_kind"] == "module":
            module_name = str(value.__dict__.get("__name__") or "")
            if module_name.split(".")[0] in sys.stdlib_module_names:
                try:
                    value = __import__(module_name, fromlist=["_"])
                except ImportError:
                    pass
        setattr(proxy, name, value)
    helpers = prompt_helpers(prompt, entry_point, proxy)
    for name, value in helpers.items():
        setattr(proxy, name, value)
    if isinstance(declared, (list, tuple)) and all(isinstance(n, str) for n in declared):
        public = list(declared)
    else:
        public = [n for n in candidate.names if not n.startswith("_")]
    public += [n for n in helpers if n not in public and not n.startswith("_")]
    # What `from solution import *` binds, as plain Python would, except
    # names that would change how the tests are judged or collected: a
    # builtin's name (an exported `all` or `len` would rewrite the test's
    # own checks) unless it is the entry point the spec names, pytest's
    # collection prefixes, and module-level pytest settings.
    proxy.__all__ = [
        n for n in public
        if exportable(n)
        and hasattr(proxy, n)
        and (n not in NOT_EXPORTED or n == entry_point)
        and not n.lower().startswith(NOT_EXPORTED_PREFIXES)
    ]

    def missing(name):
        if candidate.import_error:
            raise ImportError(candidate.import_error)
        raise AttributeError("solution has no attribute %r" % name)

    proxy.__getattr__ = missing
    return proxy


# What the spec's pytest run needs to know of the run it is part of: the
# test source (sent by the checker) and where results go. Module-level so
# that a configuration prepared before the run (`PREPARED_PYTEST`) finds them.
SPEC_RUN = {"source": None, "results": [], "collected": []}
SPEC_PYTEST_ARGS = (
    [TEST_FILE, "-q", "--no-header", "--rootdir", TESTS_DIR, "-o", "python_files=test_*.py", "--capture=sys",
     "-p", "no:faulthandler"]
    + PYTEST_SEALED
    + PYTEST_QUIET
    + PYTEST_LEAN
)
# pytest configured for the spec's tests (plugins loaded and registered,
# options parsed, its session started) once by the warm server, and copied
# into each run by fork: `(config, session)`. A cold tests process runs
# `pytest.main` instead.
PREPARED_PYTEST = None


def spec_pytest_plugins():
    """The plugins of the spec's pytest run: the sealed collection of the
    test module and the recorder."""
    import pytest

    class SpecModule(pytest.Module):
        """The spec's test module, compiled from the source sent by the
        checker; the file on disk only gives pytest a path to collect."""

        def _getobj(self):
            if str(self.path) != TEST_FILE or SPEC_RUN["source"] is None:
                raise self.CollectError("%s is not the spec's test file" % self.path)
            try:
                return load_test_module(SPEC_RUN["source"], self.config)
            except SyntaxError as e:
                raise self.CollectError("test_code does not compile: %s" % e) from None

    class Sealed:
        @pytest.hookimpl(tryfirst=True)
        def pytest_pycollect_makemodule(self, module_path, parent):
            return SpecModule.from_parent(parent, path=module_path)

    return [Sealed(), pytest_recorder(SPEC_RUN["results"], SPEC_RUN["collected"], True)]


def prepare_pytest():
    """Configures pytest for the spec's tests and starts its session, short
    of collecting anything. Output capture is `sys` (in memory) and the
    faulthandler plugin is off: both would otherwise hold file descriptors
    opened here (temporary files, a copy of stderr) that every run would
    inherit."""
    global PREPARED_PYTEST
    from _pytest.config import _prepareconfig

    os.makedirs(TESTS_DIR, exist_ok=True)
    from _pytest.main import Session

    streams = sys.stdin, sys.stdout, sys.stderr
    try:
        config = _prepareconfig(list(SPEC_PYTEST_ARGS), spec_pytest_plugins())
        session = Session.from_config(config)
        session.exitstatus = 0
        config._do_configure()
        config.hook.pytest_sessionstart(session=session)
    finally:
        # Capture is set up, then suspended, but stdin stays replaced; each
        # run resumes capture during its session.
        sys.stdin, sys.stdout, sys.stderr = streams
    PREPARED_PYTEST = (config, session)


def run_prepared_pytest():
    """The rest of what `pytest.main` does, on the configuration and session
    the warm server prepared: collection, the tests, the session's end (as
    pytest's `wrap_session`; unconfiguring is left to the process's exit)."""
    import pytest
    from _pytest import timing
    from _pytest.main import ExitCode, Failed, _main

    config, session = PREPARED_PYTEST
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        from _pytest.config import create_terminal_writer

        # This run's output and clock, not the warm-up's.
        reporter._tw = create_terminal_writer(config, sys.stdout)
        if hasattr(reporter, "_session_start"):
            reporter._session_start = timing.Instant()
    try:
        session.exitstatus = _main(config, session) or 0
    except pytest.UsageError:
        session.exitstatus = ExitCode.USAGE_ERROR
    except Failed:
        session.exitstatus = ExitCode.TESTS_FAILED
    except (KeyboardInterrupt, pytest.exit.Exception):
        # Collection errors end here too (pytest's `Interrupted`); the
        # terminal summary needs the hook call to report them.
        excinfo = pytest.ExceptionInfo.from_current()
        code = getattr(excinfo.value, "returncode", None)
        session.exitstatus = code if code is not None else ExitCode.INTERRUPTED
        config.hook.pytest_keyboard_interrupt(excinfo=excinfo)
    except BaseException:  # noqa: BLE001 - as pytest: an internal error of the run
        session.exitstatus = ExitCode.INTERNAL_ERROR
        try:
            config.notify_exception(pytest.ExceptionInfo.from_current(), config.option)
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
    finally:
        try:
            config.hook.pytest_sessionfinish(session=session, exitstatus=session.exitstatus)
        except BaseException:  # noqa: BLE001 - the results are recorded already
            traceback.print_exc()
    return session.exitstatus


def tests_main(config_fd, result_fd, forked=False):
    """A tests process of its own (trusted side), for a run on a cold or
    unprepared interpreter: the test source arrives over a pipe from the
    checker. A forked tests process (`Prefork`) forks its runner before it
    reads that source, and installs the seccomp filter itself once it has."""
    set_nondumpable()
    runner = prefork_runner() if forked else None
    try:
        config = recv(config_fd, time.monotonic() + 60)
    except (EOFError, TimeoutError, ValueError):
        os._exit(0)
    os.close(config_fd)
    if forked:
        confine()
    send(result_fd, spec_tests(config, runner))
    os._exit(0)


def spec_tests(config, runner=None):
    """Runs the spec's pytest code against a proxy of the candidate (trusted
    side): `runner` preforked, or a fresh one. The results, with what the
    candidate printed as `output`."""
    import pytest

    candidate = Candidate(config["output_limit"], config["deadline"], config["call_cpu_s"], adopt=runner)
    sys.modules["solution"] = proxy_module(candidate, config["entry_point"], config.get("prompt"))
    SPEC_RUN["source"] = config["test_code"]
    os.chdir(TESTS_DIR)
    if PREPARED_PYTEST is not None:
        # Configured and started once in the warm server (`warm_up`).
        exit_code = run_prepared_pytest()
    else:
        exit_code = pytest.main(list(SPEC_PYTEST_ARGS), plugins=spec_pytest_plugins())
    results, collected = SPEC_RUN["results"], SPEC_RUN["collected"]
    # Stopped first: its output pipe closes only when it is gone.
    candidate.stop()
    # The solution's own import failure, so the report names it rather than
    # the collection errors it caused in the tests.
    return {"collected": collected, "results": results, "exit_code": int(exit_code), "output": candidate.output(),
            "import_error": candidate.import_error}


class Printed(io.TextIOBase):
    """What pytest prints when it runs inside the checker (`tests_here`),
    kept up to `limit` characters: never the checker's own stdout, which
    carries the report."""

    def __init__(self, limit):
        super().__init__()
        self.parts = []
        self.room = limit
        self.dropped = 0

    def writable(self):
        return True

    def write(self, text):
        kept = text[: max(self.room, 0)]
        self.parts.append(kept)
        self.room -= len(kept)
        self.dropped += len(text) - len(kept)
        return len(text)

    def text(self):
        out = "".join(self.parts)
        if self.dropped:
            out += "\n[... %d more characters of output discarded]" % self.dropped
        return out


def tests_here(config, runner):
    """A pytest-only run's tests in the checker itself, on a warm server
    whose pytest is prepared (`Prefork` forked the runner for it): one copy
    of the server less per run than a tests process of its own, which cost
    about 3 ms of a HumanEval run's ~40 ms. The checker is as trusted as
    that process was (non-dumpable, confined, running no candidate code:
    the candidate answers through its proxies from the runner), and as pid
    1 it cannot be signalled by the candidate. (results, what pytest
    printed)."""
    printed = Printed(config["output_limit"])
    streams = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = printed
    try:
        results = spec_tests(config, runner)
    finally:
        sys.stdout, sys.stderr = streams
        os.chdir(WORK)
    return results, printed.text()


# ---------------------------------------------------------------- service roles


# Where a service's app is when the request does not say: Kiln's own layout.
# The worker sends `app` from the answer's layout (src/validate/layout.rs):
# the module, the attribute holding the app, and the source root (`src` for
# a src layout) that goes on Python's path ahead of the answer's root.
APP_DEFAULT = {"module": "app.main", "attribute": "app", "source_root": None}


def answer_path(app):
    """Puts the answer's root, and its source root ahead of it, on Python's
    path, as an installed project (or pytest's `pythonpath`) would."""
    sys.path.insert(0, SRC_DIR)
    root = app.get("source_root")
    if isinstance(root, str) and root and "/" not in root and root not in (".", ".."):
        sys.path.insert(0, os.path.join(SRC_DIR, root))


def server_main(info_fd, socket_path, app=None):
    """Imports the generated app and serves it on a Unix socket (untrusted)."""
    prefer_oom_kill()
    app = app or APP_DEFAULT
    answer_path(app)
    os.chdir(SRC_DIR)
    try:
        import importlib

        module = importlib.import_module(str(app["module"]))
        application = getattr(module, str(app["attribute"]))
        spec = application.openapi()
    except BaseException as e:  # noqa: BLE001
        send(info_fd, {"import_error": "".join(traceback.format_exception(type(e), e, e.__traceback__))[-4000:]})
        return
    send(info_fd, {"ready": True, "openapi": spec})
    import uvicorn

    uvicorn.run(application, uds=socket_path, log_level="warning", lifespan="on")


# The service's own suite runs sealed: pytest reads no ini file of the
# answer's (-c /dev/null: no addopts, -k, deselection, python_files, plugins
# by -p), no cache, and no conftest above the answer's root; conftest files
# (and modules they name in `pytest_plugins`) give fixtures only, their
# `pytest_*` hooks are removed before pytest registers them
# (`seal_plugin_manager`). The suite remains the model's claims about its
# own code; Kiln's verdict on behaviour is `probe_service`.
SVCTESTS_ARGS = [
    "tests", "-q", "--no-header", "-p", "no:cacheprovider", "-c", os.devnull, "--rootdir", SRC_DIR,
    "--confcutdir", SRC_DIR,
] + PYTEST_QUIET + PYTEST_LEAN
# The one ini setting of the answer's that is honoured, as real projects
# need it: whether pytest-asyncio runs `async def` tests without a marker.
ASYNCIO_MODES = ("auto", "strict")


def answer_asyncio_mode():
    """`asyncio_mode` from the answer's pytest.ini, pyproject.toml,
    setup.cfg or tox.ini (first found), if it is one of ASYNCIO_MODES."""
    import configparser

    for name, section in (("pytest.ini", "pytest"), ("pyproject.toml", None), ("tox.ini", "pytest"), ("setup.cfg", "tool:pytest")):
        path = os.path.join(SRC_DIR, name)
        if not os.path.isfile(path):
            continue
        try:
            if section is None:
                import tomllib

                with open(path, "rb") as f:
                    options = tomllib.load(f).get("tool", {}).get("pytest", {}).get("ini_options", {})
                value = options.get("asyncio_mode") if isinstance(options, dict) else None
            else:
                parser = configparser.ConfigParser(interpolation=None)
                parser.read(path, encoding="utf-8")
                value = parser.get(section, "asyncio_mode", fallback=None)
        except Exception:  # noqa: BLE001 - an unreadable file sets nothing
            continue
        if isinstance(value, str) and value.strip() in ASYNCIO_MODES:
            return value.strip()
    return None


def from_answer(plugin):
    """Whether a plugin object comes from the answer's files: a module
    loaded from them, or an instance or class defined in one."""
    import types

    if isinstance(plugin, types.ModuleType):
        module = plugin
    else:
        cls = plugin if isinstance(plugin, type) else type(plugin)
        module = sys.modules.get(getattr(cls, "__module__", None) or "")
        if module is None:
            return True  # a class from nowhere: not one of the runtime's plugins
    path = getattr(module, "__file__", None)
    return isinstance(path, str) and os.path.realpath(path).startswith(SRC_DIR + os.sep)


def seal_plugin_manager(ignored):
    """Makes pytest register the answer's modules (conftest files, modules
    they name in `pytest_plugins`) without their hooks, and nothing else of
    the answer's as a plugin: fixtures keep working, while no hook can
    rewrite reports, deselect or reorder tests. Names of what was dropped
    go to `ignored`. Installed before any of the answer's code runs."""
    import types

    from _pytest.config import PytestPluginManager

    register = PytestPluginManager.register

    def sealed_register(self, plugin, name=None):
        if from_answer(plugin):
            if not isinstance(plugin, types.ModuleType):
                ignored.append("plugin %s" % type(plugin).__name__)
                return None
            for attr in [a for a in list(vars(plugin)) if a.startswith("pytest_")]:
                ignored.append("%s in %s" % (attr, os.path.relpath(str(plugin.__file__), SRC_DIR)))
                delattr(plugin, attr)
        return register(self, plugin, name)

    PytestPluginManager.register = sealed_register


def svctests_main(result_fd, app=None):
    """Runs the generated service's own test suite (its code is untrusted,
    and so are these results: they are the model's claims about its code)."""
    prefer_oom_kill()
    answer_path(app or APP_DEFAULT)
    os.chdir(SRC_DIR)
    import pytest

    results = []
    collected = []
    ignored = []
    seal_plugin_manager(ignored)
    args = list(SVCTESTS_ARGS)
    mode = answer_asyncio_mode()
    if mode is not None:
        args += ["-o", "asyncio_mode=" + mode]
    exit_code = pytest.main(args, plugins=[pytest_recorder(results, collected, False)])
    if ignored:
        print("kiln: ignored what the answer's conftest files would hook into pytest: %s" % ", ".join(sorted(set(ignored))))
    send(result_fd, {"collected": collected, "results": results, "exit_code": int(exit_code)})
    os._exit(0)


def uds_request(socket_path, method, path, timeout, body=None, headers=None):
    """One HTTP request over the app's Unix socket: (status, body bytes,
    content type), the body cut at 1 MiB."""
    import http.client
    import socket

    class Connection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(socket_path)

    conn = Connection("localhost", timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(1 << 20), response.getheader("content-type") or ""
    finally:
        conn.close()


def uds_get(socket_path, path, timeout):
    status, body, _ = uds_request(socket_path, "GET", path, timeout)
    return status, body


def start_app(forked, socket_path, app):
    """Starts an app server role (preforked, or by exec): (process, info fd)."""
    if forked is not None:
        return start_waiting(forked, app)
    info_r, info_w = os.pipe()
    try:
        server = spawn("server", str(info_w), socket_path, json.dumps(app), pass_fds=(info_w,), cwd=SRC_DIR)
    finally:
        os.close(info_w)
    return server, info_r


def await_app(server, info_r, socket_path, deadline, app):
    """Waits for a started app server: (info, serving, openapi). `info` has
    `import_error` when the app did not import."""
    try:
        info = recv(info_r, min(deadline, time.monotonic() + 60))
    except (EOFError, TimeoutError, ValueError) as e:
        return {"import_error": "the app process ended before importing %s (%s)" % (app["module"], type(e).__name__)}, False, {}
    if "import_error" in info:
        return info, False, {}
    ready = False
    status, body = None, b""
    serve_deadline = min(deadline, time.monotonic() + 30)
    while time.monotonic() < serve_deadline:
        if os.path.exists(socket_path):
            try:
                status, body = uds_get(socket_path, "/openapi.json", 5)
                ready = True
                break
            except OSError:
                pass
        if server.poll() is not None:
            break
        time.sleep(0.05)
    openapi = info.get("openapi") or {}
    if ready and status == 200:
        try:
            openapi = json.loads(body)
        except (ValueError, RecursionError):
            pass
    return info, ready, openapi if isinstance(openapi, dict) else {}


def stop_app(server, info_r, prefork):
    try:
        os.killpg(server.pid, 9)
    except OSError:
        pass
    server.wait()
    os.close(info_r)
    # Whatever the app left running must not meet the next stage; roles
    # forked before the run wait untouched.
    kill_all_others(spare=prefork.waiting())


def move_away(root, keep=()):
    """Empties `root` of everything but `keep`: each entry is first renamed
    to a random hidden name (which works whatever its permissions), so no
    path the suite used still leads to it, then deleted as far as it can be."""
    import shutil

    moved = "." + PROBE_MOVED
    for entry in os.listdir(root) if os.path.isdir(root) else ():
        if entry in keep or entry.startswith(moved):
            continue
        path = os.path.join(root, entry)
        away = os.path.join(root, "%s-%s" % (moved, os.urandom(8).hex()))
        try:
            os.rename(path, away)
        except OSError:
            continue
        if os.path.isdir(away) and not os.path.islink(away):
            shutil.rmtree(away, ignore_errors=True)
        else:
            try:
                os.unlink(away)
            except OSError:
                pass


def reset_files(request):
    """The answer's files as they were sent, in a fresh directory, and
    nothing else in the work dir, /tmp or /dev/shm: what earlier stages of
    the run wrote (the suite above all) cannot change the app Kiln probes,
    not even what the suite made undeletable (a directory without write
    permission, a symlink standing for a directory)."""
    move_away(WORK, keep=(os.path.basename(KILN_DIR),))
    for scratch in sorted({os.environ.get("TMPDIR", "/tmp"), "/tmp", "/dev/shm"}):
        move_away(scratch)
    os.makedirs(SRC_DIR)
    write_files(request["files"], SRC_DIR)
    try:
        os.unlink(PROBE_SOCKET)
    except OSError:
        pass


def check_service(request, deadline, prefork):
    """Import, routes, /health, the service's own tests, then Kiln's own
    requests to every endpoint in a fresh process of the app."""
    limit = capture_limit(request)
    app = service_app(request)
    cases = []
    outputs = []
    # Time kept for Kiln's own requests, so that a suite that hangs still
    # leaves them room (and they, not the hang, name what is broken).
    suite_deadline = deadline - min(PROBE_RESERVE_S, (deadline - time.monotonic()) * 0.15)
    server, info_r = start_app(prefork.take_server(), SERVICE_SOCKET, app)
    outputs.append(Capture(server.stdout, limit))
    problem = None
    try:
        info, ready, openapi = await_app(server, info_r, SERVICE_SOCKET, deadline, app)
        if "import_error" in info:
            cases.append({"name": "import " + app["module"], "outcome": "failed", "message": str(info["import_error"])[-4000:]})
            problem = "the app does not import"
        else:
            cases.append({"name": "import " + app["module"], "outcome": "passed", "message": ""})
            cases.extend(route_cases(request["endpoints"], openapi))
            if not ready:
                cases.append({"name": "GET /health", "outcome": "failed", "message": "the app did not start serving"})
            else:
                try:
                    status, body = uds_get(SERVICE_SOCKET, "/health", 10)
                    ok = status == 200
                    message = "" if ok else "GET /health answered %d: %s" % (status, body[:300].decode("utf-8", "replace"))
                except OSError as e:
                    ok, message = False, "GET /health failed: %s" % e
                cases.append({"name": "GET /health", "outcome": "passed" if ok else "failed", "message": message})
    finally:
        stop_app(server, info_r, prefork)
    if problem is not None:
        return {"cases": cases, "problem": problem, "collected": 0, "output": "".join(o.text() for o in outputs)}

    forked = prefork.take_svctests()
    if forked is not None:
        tests, result_r = start_waiting(forked, app)
    else:
        result_r, result_w = os.pipe()
        try:
            tests = spawn("svctests", str(result_w), json.dumps(app), pass_fds=(result_w,), cwd=SRC_DIR)
        finally:
            os.close(result_w)
    outputs.append(Capture(tests.stdout, limit))
    try:
        suite = recv(result_r, suite_deadline)
    except (EOFError, TimeoutError, ValueError) as e:
        suite = None
        problem = "the service's test suite ended without results (%s)" % (
            "time ran out" if isinstance(e, TimeoutError) else type(e).__name__
        )
    finally:
        try:
            os.killpg(tests.pid, 9)
        except OSError:
            pass
        tests.wait()
        os.close(result_r)
        kill_all_others(spare=prefork.waiting())
    suite_cases = []
    collected = 0
    if suite is not None:
        results = suite.get("results")
        if not isinstance(results, list) or not isinstance(suite.get("collected"), list):
            raise CandidateFault("the service's test suite sent malformed results")
        for r in results:
            suite_cases.append({"name": "tests: " + str(r["name"]), "outcome": r["outcome"], "message": str(r["message"])})
        collected = len(suite["collected"])
        ran = len([r for r in results if r["when"] == "call"])
        if not collected:
            problem = "the service's test suite collected no tests"
        elif ran < collected:
            problem = "only %d of %d collected tests of the service ran" % (ran, collected)

    # Kiln's own evidence, ahead of the suite's results: the repair prompt
    # reads failures in order, and these are the ones to trust.
    reset_files(request)
    server, info_r = start_app(prefork.take_probed(), PROBE_SOCKET, app)
    outputs.append(Capture(server.stdout, limit))
    try:
        info, ready, openapi = await_app(server, info_r, PROBE_SOCKET, deadline, app)
        why = None
        if time.monotonic() >= deadline:
            why = "the run's time ran out first"
        elif "import_error" in info:
            why = "the app did not import again"
        elif not ready:
            why = "the app did not start serving"
        if why is not None:
            probes = [{"name": probe_name(e), "outcome": "failed", "message": "not probed: %s" % why} for e in request["endpoints"]]
        else:
            probes = probe_service(request["endpoints"], openapi, PROBE_SOCKET, deadline, request.get("probe") or {})
    finally:
        stop_app(server, info_r, prefork)
    cases.extend(probes)
    cases.extend(suite_cases)
    return {"cases": cases, "problem": problem, "collected": collected, "output": "".join(o.text() for o in outputs)}


def service_app(request):
    """Where the request says the app is, each part checked for its type
    (the request is Kiln's own, but a malformed one must not reach
    `importlib` as anything but a string)."""
    app = request.get("app")
    if not isinstance(app, dict):
        return dict(APP_DEFAULT)
    out = dict(APP_DEFAULT)
    for key in ("module", "attribute"):
        if isinstance(app.get(key), str) and app[key]:
            out[key] = app[key]
    if isinstance(app.get("source_root"), str):
        out["source_root"] = app["source_root"]
    return out


def route_shape(path):
    """A path with every `{param}` segment as `{}`, no trailing slash."""
    parts = []
    for part in str(path).rstrip("/").split("/"):
        parts.append("{}" if part.startswith("{") and part.endswith("}") else part)
    return "/".join(parts)


def route_cases(endpoints, openapi):
    """Every spec endpoint must be in the app's OpenAPI with its method."""
    paths = openapi.get("paths", {}) if isinstance(openapi, dict) else {}
    if not isinstance(paths, dict):
        paths = {}
    served = {}
    for path, ops in paths.items():
        if isinstance(ops, dict):
            served.setdefault(route_shape(str(path)), set()).update(str(m).upper() for m in ops)
    cases = []
    for e in endpoints:
        name = "route %s %s" % (e["method"], e["path"])
        methods = served.get(route_shape(e["path"]))
        if methods is None:
            cases.append({"name": name, "outcome": "failed", "message": "the app serves no path %s" % e["path"]})
        elif e["method"] not in methods:
            cases.append({"name": name, "outcome": "failed", "message": "%s is served for %s, not %s" % (e["path"], ", ".join(sorted(methods)), e["method"])})
        else:
            cases.append({"name": name, "outcome": "passed", "message": ""})
    return cases


# ---------------------------------------------------------------- Kiln's own evidence about a service
#
# After the service's own suite, and in a fresh process of the app started
# from the files as sent (`reset_files`), the checker itself sends requests
# to every spec endpoint over the app's socket: path parameters, required
# query parameters and headers, and a JSON body generated from the app's
# OpenAPI schema (required fields first, then every field), in an order
# that creates before it reads (POST, GET, PUT, PATCH, others, DELETE), so
# ids the app handed out resolve. The verdict is made here, from statuses
# the code under test cannot rewrite: a 5xx or no answer fails the
# endpoint, and so does a 2xx whose JSON body does not fit the response
# schema the operation declares for that status (types, required fields,
# enums: an app that bypasses its response model with a JSONResponse), and
# never answering 2xx/3xx to a valid request, unless
# the only answers are a 404 for ids Kiln had to make up (nothing it
# created could be looked up), a 401/403 where the operation declares
# security or the spec asks for authentication, a 502/503/504 where the
# spec names external APIs (the sandbox has no network), a 429 where it
# asks for rate limiting, or a 4xx where
# Kiln could not satisfy the schema (a `pattern`, a non-JSON body). A
# made-up id must not bring a 5xx either.

PROBE_TIMEOUT_S = 5.0
# Most seconds of a run kept for the probes (15% of the run at most).
PROBE_RESERVE_S = 8.0
PROBE_DEPTH = 12
PROBE_SHOWN = 300
# How a service says an API it calls is unreachable (bad gateway,
# unavailable, gateway timeout): acceptable when the spec names external
# APIs, as the sandbox has no network.
UPSTREAM_STATUSES = (502, 503, 504)


def probe_name(endpoint):
    return "kiln: %s %s" % (str(endpoint["method"]).upper(), endpoint["path"])


def resolve(doc, value, hops=0):
    """`value` with `$ref`s (local JSON pointers) followed; {} when broken."""
    while isinstance(value, dict) and isinstance(value.get("$ref"), str) and hops < 32:
        ref = value["$ref"]
        if not ref.startswith("#/"):
            return {}
        target = doc
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, dict) else None
        value = target
        hops += 1
    return value if isinstance(value, dict) else {}


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def number_value(schema, integer, base):
    import math as m

    v = base
    lo, hi = schema.get("minimum"), schema.get("maximum")
    xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    step = 1 if integer else 0.5
    if is_number(lo):
        v = max(v, lo)
    if is_number(xlo):
        v = max(v, xlo + step) if v <= xlo else v
    if is_number(hi):
        v = min(v, hi)
    if is_number(xhi):
        v = min(v, xhi - step) if v >= xhi else v
    multiple = schema.get("multipleOf")
    if is_number(multiple) and multiple > 0:
        v = m.ceil(v / multiple) * multiple
    return int(m.ceil(v)) if integer else float(v)


STRING_CANDIDATES = ("kiln", "abc", "ABC", "a", "A", "1", "123", "abc123", "kiln-1", "kiln_1", "A1", "2024-01-02", "ab")


def string_value(schema, name, uncertain, made_up):
    import re

    fmt = str(schema.get("format") or "")
    lname = name.lower()
    if fmt == "email" or "email" in lname:
        v = "kiln@example.com"
    elif fmt in ("uri", "url", "iri", "uri-reference") or lname in ("url", "uri", "link", "href", "website") or lname.endswith("_url"):
        v = "https://example.com/kiln"
    elif fmt == "date-time":
        v = "2024-01-02T03:04:05Z"
    elif fmt == "date":
        v = "2024-01-02"
    elif fmt == "time":
        v = "03:04:05"
    elif fmt == "duration":
        v = "P1D"
    elif fmt == "uuid":
        v = "00000000-0000-4000-8000-000000000000" if made_up else "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
    elif fmt == "ipv4":
        v = "192.0.2.1"
    elif fmt == "ipv6":
        v = "2001:db8::1"
    else:
        v = "kiln-missing" if made_up else "kiln"
    shortest, longest = schema.get("minLength"), schema.get("maxLength")

    def fit(text):
        if isinstance(shortest, int) and len(text) < shortest:
            text += "x" * (shortest - len(text))
        if isinstance(longest, int) and len(text) > longest:
            text = text[:max(longest, 0)]
        return text

    v = fit(v)
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            rx = re.compile(pattern)
        except (re.error, RecursionError, ValueError):
            uncertain.append("a string matching %r" % pattern)
            return v
        if not rx.search(v):
            for candidate in STRING_CANDIDATES:
                candidate = fit(candidate)
                if rx.search(candidate):
                    return candidate
            uncertain.append("a string matching %r" % pattern)
    return v


def generate(doc, schema, name, full, uncertain, made_up=False, depth=0):
    """A value valid for `schema`: required properties only, or every
    property when `full`; `made_up` picks ids unlikely to exist.
    What could not be satisfied is noted in `uncertain`."""
    schema = resolve(doc, schema)
    if depth > PROBE_DEPTH:
        uncertain.append("a value nested deeper than %d levels" % PROBE_DEPTH)
        return None
    gen = lambda s, n="": generate(doc, s, n or name, full, uncertain, made_up, depth + 1)  # noqa: E731
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf"):
        options = [resolve(doc, o) for o in schema.get(key) or [] if isinstance(o, dict)]
        if options:
            usable = [o for o in options if o.get("type") != "null"] or options
            return gen(usable[0])
    if isinstance(schema.get("allOf"), list):
        merged = {"type": "object", "properties": {}, "required": []}
        for part in schema["allOf"]:
            part = resolve(doc, part)
            for k, v in part.items():
                if k == "properties" and isinstance(v, dict):
                    merged["properties"].update(v)
                elif k == "required" and isinstance(v, list):
                    merged["required"] += v
                elif k not in ("allOf",):
                    merged.setdefault(k, v)
        if len(schema["allOf"]) == 1 and not merged["properties"]:
            return gen(schema["allOf"][0])
        return gen(merged)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema or "prefixItems" in schema else "string"
    if kind == "string":
        return string_value(schema, name, uncertain, made_up)
    if kind == "integer":
        return number_value(schema, True, 424242 if made_up else 1)
    if kind == "number":
        return number_value(schema, False, 424242.5 if made_up else 1.5)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list):
            return [gen(s) for s in prefix]
        fewest = schema.get("minItems") if isinstance(schema.get("minItems"), int) else 0
        count = min(max(fewest, 1 if full else 0), 8)
        return [gen(schema.get("items") or {}) for _ in range(count)]
    if kind == "object":
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        required = [k for k in schema.get("required") or [] if isinstance(k, str)]
        keys = list(dict.fromkeys(required + (list(properties) if full else [])))
        return {k: gen(properties.get(k) or {}, k) for k in keys}
    uncertain.append("a value of type %r" % kind)
    return None


def query_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "" if value is None else str(value)


class Probe:
    """One endpoint's requests and what they showed."""

    def __init__(self, doc, endpoint, app_path, path_item, operation):
        self.doc = doc
        self.method = str(endpoint["method"]).upper()
        self.app_path = app_path
        params = {}
        for p in list(path_item.get("parameters") or []) + list(operation.get("parameters") or []):
            p = resolve(doc, p)
            if isinstance(p.get("name"), str) and p.get("in") in ("path", "query", "header", "cookie"):
                params[(p["in"], p["name"])] = p
        self.params = list(params.values())
        self.secured = bool(operation.get("security", doc.get("security")))
        self.external = False
        self.limited = False
        self.body_spec = resolve(doc, operation.get("requestBody"))
        self.operation = operation

    def path_values(self, learned, made_up):
        """Values of the path's parameters: what the app handed out for the
        collection they belong to, unless `made_up`. Returns (values, the
        endpoint that handed each out (None where made up))."""
        segments = self.app_path.split("/")
        values, sources = {}, {}
        for i, segment in enumerate(segments):
            if not (segment.startswith("{") and segment.endswith("}")):
                continue
            name = segment[1:-1].split(":")[0]
            schema = next((resolve(self.doc, p.get("schema")) for p in self.params if p["in"] == "path" and p["name"] == name), {})
            collection = route_shape("/".join(segments[:i]))
            value, source = None, None
            if not made_up:
                for key in (name, "id"):
                    known = learned.get((collection, key))
                    if known is not None and fits(schema, known[0]):
                        value, source = known
                        break
            if value is None:
                value = generate(self.doc, schema, name, False, [], made_up=True)
            values[segment], sources[name] = value, source
        return values, sources

    def build(self, values, full, uncertain):
        """(method, target, body bytes, headers, shown body value)."""
        import urllib.parse

        path = self.app_path
        for segment, value in values.items():
            path = path.replace(segment, urllib.parse.quote(query_text(value), safe=""))
        query, headers, cookies = [], {}, []
        for p in self.params:
            if p["in"] == "path" or not p.get("required"):
                continue
            value = generate(self.doc, p.get("schema") or {}, p["name"], full, uncertain)
            if p["in"] == "query":
                for v in value if isinstance(value, list) else [value]:
                    query.append((p["name"], query_text(v)))
            elif p["in"] == "header":
                headers[p["name"]] = query_text(value)
            else:
                cookies.append("%s=%s" % (p["name"], query_text(value)))
        if cookies:
            headers["Cookie"] = "; ".join(cookies)
        target = path + ("?" + urllib.parse.urlencode(query) if query else "")
        body, shown = None, None
        content = self.body_spec.get("content") if isinstance(self.body_spec.get("content"), dict) else {}
        if content:
            json_type = next((t for t in content if "json" in str(t)), None)
            if json_type is not None:
                shown = generate(self.doc, (content[json_type] or {}).get("schema") or {}, "", full, uncertain)
                body = json.dumps(shown).encode()
                headers["Content-Type"] = "application/json"
            elif "application/x-www-form-urlencoded" in content:
                shown = generate(self.doc, (content["application/x-www-form-urlencoded"] or {}).get("schema") or {}, "", full, uncertain)
                pairs = shown.items() if isinstance(shown, dict) else []
                body = urllib.parse.urlencode([(k, query_text(v)) for k, v in pairs]).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            else:
                uncertain.append("a %s body" % next(iter(content)))
        return target, body, headers, shown

    def send(self, socket_path, deadline, values, full, uncertain):
        target, body, headers, shown = self.build(values, full, uncertain)
        what = "%s %s" % (self.method, target)
        if shown is not None:
            what += " with " + clip_text(json.dumps(shown), 200)
        remaining = min(PROBE_TIMEOUT_S, deadline - time.monotonic())
        if remaining <= 0:
            return {"what": what, "status": None, "error": "time ran out before Kiln could send it", "sent": shown}
        try:
            status, data, ctype = uds_request(socket_path, self.method, target, remaining, body, headers)
        except (OSError, ValueError) as e:  # http.client's errors are OSError or HTTPException (ValueError-free)
            return {"what": what, "status": None, "error": describe_error(e, remaining), "sent": shown}
        except Exception as e:  # noqa: BLE001 - http.client.HTTPException: a malformed answer
            return {"what": what, "status": None, "error": describe_error(e, remaining), "sent": shown}
        return {"what": what, "status": status, "body": data, "type": ctype, "sent": shown}


def clip_text(text, n):
    return text if len(text) <= n else text[:n] + "…"


def describe_error(e, timeout):
    import socket

    if isinstance(e, (TimeoutError, socket.timeout)):
        return "no answer within %.1fs" % timeout
    return "no answer: %s%s" % (type(e).__name__, ": %s" % e if str(e) else "")


def fits(schema, value):
    """Whether a value the app handed out can stand for a path parameter
    of this schema."""
    kind = schema.get("type")
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.isdigit())
    if kind == "number":
        return is_number(value)
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def learn(learned, collection, value, source, depth=0):
    """Remembers the scalar fields of a JSON answer (or of what was sent)
    under the collection it belongs to, so later path parameters of that
    collection can name something that exists: top-level fields win over
    nested ones, a single object over the items of a list."""
    if depth > 1:
        return
    items = value[:20] if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, dict):
            continue
        for key, v in item.items():
            if isinstance(key, str) and isinstance(v, (int, str)) and not isinstance(v, bool):
                if depth == 0 and not isinstance(value, list):
                    learned[(collection, key)] = (v, source)
                else:
                    learned.setdefault((collection, key), (v, source))
        for v in item.values():
            if isinstance(v, (dict, list)):
                learn(learned, collection, v, source, depth + 1)


def collection_of(app_path):
    """The collection an endpoint's answers describe: its path without
    trailing parameters (`/notes/{id}` → `/notes`)."""
    parts = route_shape(app_path).split("/")
    while parts and parts[-1] == "{}":
        parts.pop()
    return "/".join(parts)


def json_type(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def type_fits(kind, value):
    actual = json_type(value)
    if kind == "number":
        return actual in ("integer", "number")
    if kind == "integer":
        return actual == "integer" or (actual == "number" and float(value).is_integer())
    return actual == kind


def schema_mismatch(doc, schema, value, where, depth=0):
    """Where a JSON value breaks a response schema (types, required
    properties, enums, recursively), or None. Formats, lengths, bounds and
    extra properties are not checked: FastAPI's own response models are
    what those are for."""
    schema = resolve(doc, schema)
    if depth > PROBE_DEPTH or not schema:
        return None
    for key in ("anyOf", "oneOf"):
        options = [o for o in schema.get(key) or [] if isinstance(o, dict)]
        if options:
            problems = [schema_mismatch(doc, o, value, where, depth + 1) for o in options]
            if all(problems):
                return problems[0]
    for part in schema.get("allOf") or []:
        problem = schema_mismatch(doc, part, value, where, depth + 1) if isinstance(part, dict) else None
        if problem:
            return problem
    kind = schema.get("type")
    kinds = [k for k in (kind if isinstance(kind, list) else [kind]) if isinstance(k, str)]
    if kinds and not any(type_fits(k, value) for k in kinds):
        return "%s is %s, not %s" % (where, json_type(value), " or ".join(kinds))
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and not any(type(value) is type(e) and value == e for e in enum):
        return "%s is %s, not one of %s" % (where, clip_text(json.dumps(value), 60), clip_text(json.dumps(enum), 120))
    if isinstance(value, dict):
        for name in schema.get("required") or []:
            if isinstance(name, str) and name not in value:
                return "%s has no %r" % (where, name)
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        for name, sub in properties.items():
            if name in value:
                problem = schema_mismatch(doc, sub, value[name], "%s.%s" % (where, name), depth + 1)
                if problem:
                    return problem
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value[:20]):
            problem = schema_mismatch(doc, schema["items"], item, "%s[%d]" % (where, i), depth + 1)
            if problem:
                return problem
    return None


def response_mismatch(probe, r):
    """Why a successful answer does not fit the JSON schema the operation
    declares for its status code, or None (no schema, not JSON, empty)."""
    responses = probe.operation.get("responses") if isinstance(probe.operation.get("responses"), dict) else {}
    declared = resolve(probe.doc, responses.get(str(r["status"])))
    content = declared.get("content") if isinstance(declared.get("content"), dict) else {}
    media = next((content[t] for t in content if "json" in str(t)), None)
    if not isinstance(media, dict) or not media.get("schema") or "json" not in r["type"] or not r["body"]:
        return None
    if len(r["body"]) >= 1 << 20:
        return None  # cut at the limit: not judged
    try:
        value = json.loads(r["body"])
    except (ValueError, RecursionError):
        return "the body is not JSON, though its content type says so"
    return schema_mismatch(probe.doc, media["schema"], value, "the body")


def probe_endpoint(probe, learned, socket_path, deadline):
    """Sends a handful of requests to one endpoint and judges them: a case."""
    uncertain = []
    has_params = "{" in probe.app_path
    values, sources = probe.path_values(learned, made_up=False)
    all_learned = has_params and all(s is not None for s in sources.values())
    tried = [probe.send(socket_path, deadline, values, False, uncertain)]
    ok = lambda r: r["status"] is not None and 200 <= r["status"] < 400  # noqa: E731
    if not ok(tried[0]) and tried[0]["status"] is not None and tried[0]["status"] < 500:
        full = probe.send(socket_path, deadline, values, True, uncertain)
        if full["what"] != tried[0]["what"]:
            tried.append(full)
    if all_learned:
        made_up, _ = probe.path_values(learned, made_up=True)
        if made_up != values:
            tried.append(probe.send(socket_path, deadline, made_up, False, uncertain))
    # An API the sandbox cannot reach may be answered as unavailable, not
    # as a server error.
    unreachable = UPSTREAM_STATUSES if probe.external else ()
    broken = [r for r in tried if r["status"] is None or (r["status"] >= 500 and r["status"] not in unreachable)]
    if broken:
        r = broken[0]
        if r["status"] is None:
            message = "%s: %s" % (r["what"], r["error"])
        else:
            message = "%s answered %d (a server error): %s" % (r["what"], r["status"], shown_body(r))
        return "failed", message
    good = [r for r in tried if ok(r)]
    for r in good:
        mismatch = response_mismatch(probe, r)
        if mismatch:
            return "failed", "%s answered %d with a body its OpenAPI response schema does not describe: %s: %s" % (
                r["what"], r["status"], mismatch, shown_body(r))
    if good:
        # What the first good request showed: the rest may be the made-up id.
        collection = collection_of(probe.app_path)
        source = "%s %s" % (probe.method, probe.app_path)
        for r in good[:1]:
            if probe.method in ("POST", "PUT", "PATCH") and r["sent"] is not None:
                learn(learned, collection, r["sent"], source)
            if "json" in r["type"]:
                try:
                    learn(learned, collection, json.loads(r["body"]), source)
                except (ValueError, RecursionError):
                    pass
        return "passed", ""
    statuses = sorted({r["status"] for r in tried})
    first = tried[0]
    if has_params and not all_learned and set(statuses) <= {404, 410}:
        return "passed", "only %s for path parameters Kiln made up (no endpoint it called handed one out)" % "/".join(map(str, statuses))
    if probe.secured and set(statuses) <= {401, 403}:
        return "passed", "answered %s: the operation declares security and Kiln has no credentials" % "/".join(map(str, statuses))
    if probe.limited and 429 in statuses and set(statuses) <= {429, 404}:
        return "passed", "answered %s: the spec asks for rate limiting, and Kiln's requests ran into it" % "/".join(map(str, statuses))
    if probe.external and set(statuses) <= set(UPSTREAM_STATUSES):
        return "passed", "answered %s: the service calls external APIs, which the sandbox cannot reach" % "/".join(map(str, statuses))
    if uncertain:
        return "passed", "answered %s, but Kiln could not generate %s" % ("/".join(map(str, statuses)), "; ".join(sorted(set(uncertain))))
    message = "never answered 2xx to a valid request: %s answered %d: %s" % (first["what"], first["status"], shown_body(first))
    if all_learned and 404 in statuses:
        origins = sorted({s for s in sources.values() if s})
        message += " (the path names what %s handed out)" % ", ".join(origins)
    return "failed", message


def shown_body(r):
    text = (r.get("body") or b"")[:PROBE_SHOWN].decode("utf-8", "replace")
    return text + ("…" if len(r.get("body") or b"") > PROBE_SHOWN else "") if text else "(empty body)"


def probe_order(pair):
    endpoint, _ = pair
    method = str(endpoint["method"]).upper()
    depth = route_shape(endpoint["path"]).count("/")
    rank = {"POST": 0, "GET": 1, "HEAD": 1, "PUT": 2, "PATCH": 3, "DELETE": 5}.get(method, 4)
    return rank, -depth if method == "DELETE" else depth


def probe_service(endpoints, openapi, socket_path, deadline, allowed):
    """Kiln's own requests to every spec endpoint: a case each, in the
    spec's order, named `kiln: METHOD path`. `allowed`: what the spec says
    Kiln cannot provide (`authentication`: credentials; `external_apis`:
    a network to reach them)."""
    paths = openapi.get("paths") if isinstance(openapi.get("paths"), dict) else {}
    by_shape = {}
    for path, item in paths.items():
        if isinstance(item, dict):
            by_shape.setdefault(route_shape(str(path)), (str(path), item))
    learned = {}
    verdicts = {}
    for i, endpoint in sorted(enumerate(endpoints), key=lambda p: probe_order((p[1], p[0]))):
        app_path, item = by_shape.get(route_shape(endpoint["path"]), (None, {}))
        operation = item.get(str(endpoint["method"]).lower())
        if app_path is None or not isinstance(operation, dict):
            verdicts[i] = ("failed", "not probed: the app's OpenAPI has no %s %s" % (str(endpoint["method"]).upper(), endpoint["path"]))
            continue
        try:
            probe = Probe(openapi, endpoint, app_path, item, operation)
            probe.secured = probe.secured or bool(allowed.get("authentication"))
            probe.external = bool(allowed.get("external_apis"))
            probe.limited = bool(allowed.get("rate_limiting"))
            verdicts[i] = probe_endpoint(probe, learned, socket_path, deadline)
        except Exception as e:  # noqa: BLE001 - an OpenAPI document Kiln cannot read; says so
            verdicts[i] = ("failed", "Kiln could not probe it from the app's OpenAPI: %s: %s" % (type(e).__name__, clip_text(str(e), 200)))
    return [{"name": probe_name(e), "outcome": verdicts[i][0], "message": verdicts[i][1]} for i, e in enumerate(endpoints)]

# ---------------------------------------------------------------- checker role


def write_files(files, root):
    for f in files:
        path = os.path.normpath(os.path.join(root, f["path"]))
        if not path.startswith(root + os.sep):
            raise ValueError("file path escapes the work dir: %r" % f["path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as out:
            out.write(f["content"])


def capture_limit(request):
    """Bytes kept of each untrusted process's output: a quarter of the run's
    output limit, so that up to three captures and the results still fit in
    the one report line."""
    return max(1024, request["output_limit"] // 4)


def check_function(request, deadline, prefork):
    fn = request["function"]
    limit = capture_limit(request)
    cases = []
    problem = None
    outputs = []
    import_error = None
    if fn.get("cases"):
        candidate = Candidate(limit, deadline, fn["call_cpu_s"], adopt=prefork.take_runner())
        for i, case in enumerate(fn["cases"]):
            name = "case_%d" % i
            if candidate.import_error:
                cases.append({"name": name, "error": candidate.import_error})
                continue
            if time.monotonic() >= deadline:
                problem = "the run's time ran out after %d of %d test cases" % (i, len(fn["cases"]))
                break
            args, kwargs = case_arguments(case["input"])
            try:
                entry = candidate.name(fn["entry_point"])
                reply, track = candidate.request("call", entry, list(args), dict(kwargs))
                if "ok" in reply:
                    cases.append({"name": name, "value": normalise(candidate.codec.decode(reply["ok"], refs=track))})
                else:
                    exc = reply.get("exc") or {}
                    cases.append({"name": name, "error": "%s: %s" % (str(exc.get("type"))[:200], str(exc.get("message"))[:2000])})
            except KeyError:
                cases.append({"name": name, "error": "solution defines no %s" % fn["entry_point"]})
            except (RuntimeError, TimeoutError) as e:
                cases.append({"name": name, "error": str(e)})
            except (ValueError, TypeError, IndexError, RecursionError) as e:
                cases.append({"name": name, "error": "undecodable result: %s" % type(e).__name__})
        candidate.stop()
        import_error = candidate.import_error
        outputs.append(candidate.output())
        # Whatever the candidate left running must not meet the tests process.
        kill_all_others()
    pytest_results = None
    runner = prefork.take_runner() if fn.get("test_code") else None
    config = {
        "test_code": fn.get("test_code"),
        "output_limit": limit,
        "call_cpu_s": fn["call_cpu_s"],
        "entry_point": fn["entry_point"],
        "prompt": fn.get("prompt"),
        "deadline": deadline,
    }
    if runner is not None:
        # Still here only for a pytest-only run on a prepared server.
        pytest_results, printed = tests_here(config, runner)
        outputs.append(str(pytest_results.pop("output", "")))
        outputs.append(printed)
    elif fn.get("test_code"):
        forked = prefork.take_tests()
        if forked is not None:
            tests, config_w, result_r = forked
        else:
            config_r, config_w = os.pipe()
            result_r, result_w = os.pipe()
            try:
                tests = spawn("tests", str(config_r), str(result_w), pass_fds=(config_r, result_w))
            finally:
                os.close(config_r)
                os.close(result_w)
        capture = Capture(tests.stdout, limit)
        try:
            send(config_w, config)
        except OSError:
            pass  # the tests process is gone; the missing results say so
        finally:
            os.close(config_w)
        try:
            pytest_results = recv(result_r, deadline)
        except (EOFError, TimeoutError, ValueError) as e:
            problem = "the pytest run ended without results (%s)" % (
                "time ran out" if isinstance(e, TimeoutError) else type(e).__name__
            )
        finally:
            try:
                os.killpg(tests.pid, 9)
            except OSError:
                pass
            tests.wait()
            os.close(result_r)
        if pytest_results is not None:
            outputs.append(str(pytest_results.pop("output", "")))
        outputs.append(capture.text())
    return {"cases": cases, "pytest": pytest_results, "problem": problem, "output": "".join(outputs),
            "import_error": import_error}


def case_arguments(value):
    """Object → keyword arguments, array → positional, else one argument."""
    if isinstance(value, dict):
        return [], value
    if isinstance(value, list):
        return value, {}
    return [value], {}


def fit_report(report, output_limit):
    """The report as JSON, small enough that the line carrying it fits in
    what Kiln keeps of stdout: the output is cut first, then messages; values
    are never cut (Kiln compares them), so when they alone are too large the
    report says so instead."""
    budget = max(2048, output_limit - 512)
    text = json.dumps(report)
    output = str(report.get("output", ""))
    while len(text) > budget and output:
        output = output[: max(0, len(output) - (len(text) - budget) - 256)]
        report["output"] = output + "\n[... output cut to fit the report]"
        text = json.dumps(report)
    if len(text) > budget:
        entries = list(report.get("cases") or [])
        if isinstance(report.get("pytest"), dict):
            entries += report["pytest"].get("results") or []
        for entry in entries:
            for key in ("message", "error"):
                if isinstance(entry.get(key), str) and len(entry[key]) > 200:
                    entry[key] = entry[key][:200] + "…"
        text = json.dumps(report)
    if len(text) > budget:
        text = json.dumps({
            "problem": "the results (%d bytes) do not fit in the sandbox's output limit (%d bytes)" % (len(text), output_limit),
            "elapsed_ms": report.get("elapsed_ms", 0),
        })
    return text


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def checker_main(hint=""):
    set_nondumpable()
    prefork = Prefork(hint)
    raw = sys.stdin.buffer.read()
    sys.stdin.close()
    request = json.loads(raw)
    nonce = request.pop("nonce")
    # Nothing of the candidate has run yet: Kiln treats a run without this
    # line as an infrastructure failure, one with it as the code's own doing.
    sys.stdout.write("KILN-READY\n")
    sys.stdout.flush()
    try:
        # Before any other process starts: every role inherits the filter.
        confine()
    except HarnessFault as e:
        report_line(nonce, {"harness_error": str(e)}, request["output_limit"])
    started = time.monotonic()
    deadline = started + request["timeout_s"]
    try:
        for d in (SRC_DIR, KILN_DIR, TESTS_DIR):
            os.makedirs(d, exist_ok=True)
        write_files(request["files"], SRC_DIR)
        if request["mode"] == "function":
            if request["function"].get("test_code"):
                # Only a path for pytest to collect: the tests compile
                # the source from the request, not this file, which the
                # runner (same user, same mounts) can read, so it holds
                # none of the test's expected values.
                with open(TEST_FILE, "w", encoding="utf-8") as out:
                    out.write("# compiled from the run's request, not from this file\n")
            report = check_function(request, deadline, prefork)
        elif request["mode"] == "service":
            report = check_service(request, deadline, prefork)
        elif request["mode"] == "probe":
            report = {"python": sys.version.split()[0]}
        else:
            raise ValueError("unknown mode %r" % request["mode"])
    except Exception as e:  # noqa: BLE001 - classified below
        if UNTRUSTED_STARTED:
            detail = str(e) if isinstance(e, CandidateFault) else traceback.format_exc()[-2000:]
            report = {"problem": "the run broke after the code under test started: %s" % detail}
        else:
            report = {"harness_error": traceback.format_exc()[-4000:]}
    kill_all_others()
    report["elapsed_ms"] = int((time.monotonic() - started) * 1000)
    report_line(nonce, report, request["output_limit"])


# ---------------------------------------------------------------- the warm server (process backend)
#
# One per sandbox slot and flavour (`FLAVOURS`): the slot's bubblewrap
# sandbox starts it as its pid 1 and it lives for many runs. It imports what
# its runs need once (`warm_up`), then for each
# run forks a child that enters fresh namespaces (user, mount, pid, ipc, net,
# uts) with fresh tmpfs over /work, /tmp and /dev/shm, and runs the checker
# there as the new pid namespace's pid 1, exactly as a cold run would. When
# that checker ends, the kernel kills everything left in its pid namespace
# and the mounts go with their namespace: nothing reaches the next run.
#
# The server never holds a run's data in memory that a later fork could
# copy: the request goes from its stdin to the child through one reused
# buffer, zeroed after each run, and so does the child's output on its way
# out, framed so that nothing the run prints can pass for the framing.
#
# Protocol on the server's stdin: a RUN_HEADER-byte ASCII header
#   RUN <request bytes> <tmpfs bytes> <file size bytes> <cpu s> <address space KiB|-> <processes|-> <hint>
# then the request. On its stdout: a frame `R` once warm, then per run `O`
# (stdout) and `E` (stderr) frames, and `X` with the run's exit code and
# signal. A frame is its tag, a 4-byte big-endian length and that many bytes.

RUN_HEADER = 128
RELAY_CHUNK = 65536
PREPARE_FAILED = 111
NEW_NAMESPACES = 0x10000000 | 0x00020000 | 0x20000000 | 0x08000000 | 0x40000000 | 0x04000000


def frame(tag, payload):
    write_all(1, tag + struct.pack(">I", len(payload)))
    if payload:
        write_all(1, payload)


def read_into(fd, buf, n):
    """Fills buf[:n] from fd; False at end of input."""
    view = memoryview(buf)[:n]
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            return False
        got += k
    return True


# What a warm server imports ahead, by the kind of run it serves (the
# run header's hint picks the server on the Rust side). Every run is two
# copies of the server (the checker, cloned, and the first role it forks),
# and a copy costs in proportion to the server's memory: the kernel copies
# its page tables, copies each page the child writes (Python's reference
# counts write to nearly every object it touches) and unmaps it all at exit. A
# server holding pytest and the service stack is ~52 MB; one holding
# neither ~15 MB, and a test-case run forks that one several times as
# cheaply.
FLAVOURS = ("cases", "pytest", "service")


def warm_up(flavour):
    """Does once what every run of `flavour` would: configures pytest for
    the spec's tests (importing it and its plugins) unless the runs are
    test cases only, and imports the service stack, if installed, for
    service runs. Then freezes what it made, so that the runs' garbage
    collections skip it and their forks share its pages."""
    import contextlib
    import io

    if flavour not in FLAVOURS:
        raise SystemExit("unknown server flavour %r" % flavour)
    # First, so that its plugins are imported by pytest itself (and can
    # have their asserts rewritten), not by the service stack below.
    if flavour != "cases":
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                prepare_pytest()
            except Exception:  # noqa: BLE001 - private pytest API; PREPARED_PYTEST stays None and runs call pytest.main
                pass
    if flavour == "service":
        # The stack most services import, and SQLAlchemy's ORM (most keep
        # their data with it): each run imports the app two or three times
        # (its suite, the app server, the fresh app Kiln probes).
        for name in ("fastapi", "uvicorn", "httpx", "pydantic", "starlette.testclient", "sqlalchemy",
                     "sqlalchemy.orm", "pydantic_settings"):
            try:
                __import__(name)
            except Exception:  # noqa: BLE001 - not in this runtime
                pass
    import gc

    # What every run's processes call (see `libc`), prepared before the
    # first fork.
    libc()
    seccomp_program()
    clone_call()
    capability_sets()
    gc.collect()
    # Compiling the harness and importing left ~7 MB of freed heap still
    # resident (the cases server: 22 MB, 15 MB after this); every fork
    # copies the page tables of what is resident and every exit unmaps it.
    if hasattr(libc(), "malloc_trim"):  # glibc's
        libc().malloc_trim(0)
    gc.freeze()


def serve_main(flavour):
    set_nondumpable()
    # As pid 1 only signals we handle reach us from inside; handle none.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    warm_up(flavour)
    if threading.active_count() != 1:
        # `clone_run` copies only the calling thread, and relies on no
        # other holding a lock the run would inherit held.
        raise SystemExit("warming up started threads: %r" % threading.enumerate())
    header = bytearray(RUN_HEADER)
    buf = bytearray(RELAY_CHUNK)
    frame(b"R", b"")
    while read_into(0, header, RUN_HEADER):
        fields = header.decode("ascii").split()
        if len(fields) != 8 or fields[0] != "RUN":
            raise SystemExit("malformed run header")
        length = int(fields[1])
        limits = [int(v) if v != "-" else None for v in fields[2:7]]
        status = serve_one(length, limits, fields[7], buf)
        buf[:] = bytes(RELAY_CHUNK)
        code = os.waitstatus_to_exitcode(status)
        frame(b"X", struct.pack(">ii", max(code, 0), max(-code, 0)))


def serve_one(length, limits, hint, buf):
    """Forks one run, relays its request in and its output out, and returns
    its wait status."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    sys.stdout.flush()
    # Ours, as the run's user namespace will map them: inside it, before
    # its map is written, they read as the overflow ids.
    ids = os.getuid(), os.getgid()
    pid = clone_run()
    if pid == 0:
        try:
            os.dup2(in_r, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
                os.close(fd)
            enter_run(limits, hint, ids)
        except BaseException:  # noqa: BLE001 - reported as the run's failure to start
            traceback.print_exc()
        os._exit(PREPARE_FAILED)
    for fd in (in_r, out_w, err_w):
        os.close(fd)
    os.set_blocking(in_w, False)
    view = memoryview(buf)
    pending = memoryview(b"")
    remaining = length
    streams = {out_r: b"O", err_r: b"E"}
    while streams or remaining or len(pending):
        readers = list(streams)
        writers = []
        if len(pending):
            writers.append(in_w)
        elif remaining:
            readers.append(0)
        ready_r, ready_w, _ = select.select(readers, writers, [])
        if ready_w:
            try:
                pending = pending[os.write(in_w, pending):]
            except BlockingIOError:
                pass
            except OSError:
                pending = memoryview(b"")  # the run stopped reading; keep draining
                in_w = close_quietly(in_w)
        for fd in ready_r:
            if fd == 0:
                half = RELAY_CHUNK // 2
                n = os.readv(0, [view[half:half + min(half, remaining)]])
                if n == 0:
                    raise SystemExit("the worker closed the request early")
                remaining -= n
                if in_w is not None:
                    pending = view[half:half + n]
                if not remaining and not len(pending):
                    in_w = close_quietly(in_w)
                continue
            n = os.readv(fd, [view[:RELAY_CHUNK // 2]])
            if n == 0:
                os.close(fd)
                del streams[fd]
            else:
                frame(streams[fd], view[:n])
        if in_w is not None and not remaining and not len(pending):
            in_w = close_quietly(in_w)
    close_quietly(in_w)
    _, status = os.waitpid(pid, 0)
    return status


def close_quietly(fd):
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
    return None


@functools.cache
def clone_call():
    """clone(2) through syscall(3), called holding the interpreter's lock
    (`PyDLL`), so that the child returns into Python as its only thread."""
    call = ctypes.PyDLL(None, use_errno=True).syscall
    call.restype = ctypes.c_long
    call.argtypes = [ctypes.c_long] * 6
    return call


def clone_run():
    """Forks the run straight into fresh namespaces (user, mount, pid, ipc,
    net, uts), as pid 1 of its pid namespace: the child's pid 0, ours the
    child's. One process where fork, unshare and a second fork (a pid
    namespace only takes its first member at a fork) made two; each costs
    a copy of the server's page tables and its exit.

    Python's own fork handlers do not run in the child: the server is a
    single thread, so no lock it inherits can be held, and what the child
    runs next forks with os.fork (which reseeds `random` in its children)."""
    clone, _ = CLONE_CALLS[os.uname().machine]
    pid = clone_call()(clone, NEW_NAMESPACES | signal.SIGCHLD, 0, 0, 0, 0)
    if pid < 0:
        raise OSError(ctypes.get_errno(), "clone")
    return pid


def enter_run(limits, hint, ids):
    """In the cloned child, pid 1 of its fresh namespaces (`clone_run`):
    limits, its user id map (`ids`: the server's uid and gid), fresh
    mounts, then the checker. Returns only by exiting."""
    tmpfs, fsize, cpu, vmem, nproc = limits
    for which, value in ((resource.RLIMIT_NOFILE, 512), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_FSIZE, fsize),
                         (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, vmem and vmem * 1024),
                         (resource.RLIMIT_NPROC, nproc)):
        if value is not None:
            resource.setrlimit(which, (value, value))
    lib = libc()
    # The run dies with its server (killed from outside).
    lib.prctl(1, int(signal.SIGKILL), None, 0, 0)  # PR_SET_PDEATHSIG
    uid, gid = ids
    # Only a dumpable process may write its own id maps. Nothing untrusted
    # runs yet; the checker makes itself non-dumpable again first thing.
    set_dumpable(True)
    for path, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (uid, uid)), ("gid_map", "%d %d 1" % (gid, gid))):
        with open("/proc/self/" + path, "w") as f:
            f.write(text)
    nosuid_nodev = 2 | 4
    for target in (b"/work", b"/tmp", b"/dev/shm"):
        if lib.mount(b"tmpfs", target, b"tmpfs", nosuid_nodev, b"size=%d,mode=1777" % tmpfs) != 0:
            raise OSError(ctypes.get_errno(), "mounting a tmpfs on %s" % target.decode())
    if lib.mount(b"proc", b"/proc", b"proc", nosuid_nodev | 8, None) != 0:
        raise OSError(ctypes.get_errno(), "mounting /proc")
    drop_capabilities()
    os.chdir(WORK)
    code = PREPARE_FAILED
    try:
        checker_main(hint)
        code = 0
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        os._exit(code)


@functools.cache
def capability_sets():
    """capset's arguments that clear every set: (header, data)."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    return Header(0x20080522, 0), (ctypes.c_uint32 * 6)()


def drop_capabilities():
    """Drops every capability the new user namespace gave us (bounding set,
    ambient, then effective/permitted/inheritable): the run starts with none."""
    lib = libc()
    for cap in range(64):
        if lib.prctl(24, cap, None, 0, 0) != 0 and ctypes.get_errno() == 22:  # PR_CAPBSET_DROP; EINVAL: no such cap
            break
    lib.prctl(47, 4, None, 0, 0)  # PR_CAP_AMBIENT, CLEAR_ALL
    header, data = capability_sets()
    if lib.capset(ctypes.byref(header), ctypes.byref(data)) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def report_line(nonce, report, output_limit):
    """Writes the one authenticated report line and ends the run."""
    line = "\nKILN-REPORT %s %s\n" % (nonce, fit_report(report, output_limit))
    sys.stdout.flush()
    write_all(1, line.encode())
    os._exit(0)


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else "checker"
    if role == "checker":
        checker_main()
    elif role == "serve":
        serve_main(sys.argv[2])
    elif role == "runner":
        runner_main(int(sys.argv[2]), int(sys.argv[3]))
    elif role == "tests":
        tests_main(int(sys.argv[2]), int(sys.argv[3]))
    elif role == "server":
        server_main(int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]))
    elif role == "svctests":
        svctests_main(int(sys.argv[2]), json.loads(sys.argv[3]))
