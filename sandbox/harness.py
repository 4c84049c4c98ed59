"""Kiln's sandbox harness: the trusted side of every sandbox run.

Started as `python -I -B -c <this source>` inside the sandbox, with a JSON
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
  process. The test module is compiled from the source the checker sent over
  a pipe, never read back from the writable work dir, and pytest reads no
  conftest, ini file or cache, so nothing the candidate writes reaches it.
* server / svctests: import a generated service and serve it on a Unix
  socket / run its own test suite.

Invariants the verdict rests on:

* No untrusted process is alive while a trusted one starts or reports: the
  checker kills every other process in the sandbox (kill(-1); the sandbox's
  init, pid 1, is exempt) between stages and before it writes the report, so
  a daemon the candidate left behind can neither ptrace a trusted process in
  the moment before it becomes non-dumpable, nor interleave bytes with the
  report. The report line starts with a newline for the same reason.
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
import json
import math
import os
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
MAX_MESSAGE = 16 * 1024 * 1024
MAX_DEPTH = 200
# pytest-asyncio warns on every run unless its loop scope is set.
PYTEST_QUIET = ["-o", "asyncio_default_fixture_loop_scope=function"]
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


def set_nondumpable():
    """PR_SET_DUMPABLE=0: /proc/<pid>/{fd,mem,environ} become inaccessible
    and ptrace is refused to same-uid processes. Without it the verdict could
    be forged, so failing to set it is a harness error."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def kill_all_others():
    """SIGKILLs every other process in the sandbox's pid namespace (the
    kernel exempts pid 1 and the caller) and reaps our own children, until
    nothing is left to signal. Zombies of pid 1 may linger briefly, hence the
    bounded loop."""
    for _ in range(400):
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
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


# ---------------------------------------------------------------- encoding


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


def encode(value, depth=0):
    if depth > MAX_DEPTH:
        return {"$o": ["RecursionError", "value nested too deeply"]}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return {"$f": repr(value)}
        return value
    if isinstance(value, list):
        return [encode(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return {"$t": [encode(v, depth + 1) for v in value]}
    if isinstance(value, (set, frozenset)):
        tag = "$s" if isinstance(value, set) else "$fs"
        return {tag: [encode(v, depth + 1) for v in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: encode(v, depth + 1) for k, v in value.items()}
        return {"$d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if isinstance(value, (bytes, bytearray)):
        return {"$b": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, complex):
        return {"$c": [value.real, value.imag]}
    if hasattr(value, "__next__") and hasattr(value, "__iter__"):
        items = []
        for i, item in enumerate(value):
            if i >= 100000:
                break
            items.append(encode(item, depth + 1))
        return items
    return {"$o": [type(value).__name__, repr(value)[:200]]}


def decode(value, depth=0):
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if isinstance(value, list):
        return [decode(v, depth + 1) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            (tag, inner), = value.items()
            if tag == "$t":
                return tuple(decode(v, depth + 1) for v in inner)
            if tag == "$s":
                return set(decode(v, depth + 1) for v in inner)
            if tag == "$fs":
                return frozenset(decode(v, depth + 1) for v in inner)
            if tag == "$d":
                return {decode(k, depth + 1): decode(v, depth + 1) for k, v in inner}
            if tag == "$b":
                return base64.b64decode(inner)
            if tag == "$c":
                return complex(inner[0], inner[1])
            if tag == "$f":
                return float(inner)
            if tag == "$o":
                return Opaque(str(inner[0]), str(inner[1]))
        return {k: decode(v, depth + 1) for k, v in value.items()}
    return value


def normalise(value, depth=0):
    """Plain JSON for comparison with expected values (tuples as lists)."""
    if depth > MAX_DEPTH:
        return "<too deep>"
    if isinstance(value, Opaque):
        return {"$unrepresentable": value.type_name, "repr": value.text}
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return [normalise(v, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [normalise(v, depth + 1) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, dict):
        return {str(k): normalise(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, complex):
        return [value.real, value.imag]
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


# ---------------------------------------------------------------- runner role


def prefer_oom_kill():
    """Makes this process (and what it starts) the memory-limit killer's
    first choice, ahead of the trusted roles."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def runner_main(req_fd, resp_fd):
    """Imports the candidate and serves calls. Runs untrusted code."""
    prefer_oom_kill()
    sys.path.insert(0, SRC_DIR)
    os.chdir(SRC_DIR)
    try:
        import solution  # noqa: F401
    except BaseException as e:  # noqa: BLE001 - report anything, even SystemExit
        send(resp_fd, {"import_error": "".join(traceback.format_exception(type(e), e, e.__traceback__))[-4000:]})
        return
    module = sys.modules["solution"]
    names = {}
    for name in getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]:
        value = getattr(module, name, None)
        if isinstance(value, type(sys)):
            continue
        if callable(value):
            names[name] = {"kind": "class" if isinstance(value, type) else "function"}
        else:
            names[name] = {"kind": "value", "value": encode(value)}
    send(resp_fd, {"ready": True, "names": names})
    while True:
        try:
            request = recv(req_fd)
        except EOFError:
            return
        try:
            fn = getattr(module, request["fn"])
            args = decode(request.get("args", []))
            kwargs = decode(request.get("kwargs", {}))
            result = fn(*args, **kwargs)
            reply = {"ok": encode(result)}
        except BaseException as e:  # noqa: BLE001 - SystemExit inside the function is a failure too
            reply = {
                "exc": {
                    "type": type(e).__name__,
                    "message": str(e)[:2000],
                    "trace": "".join(traceback.format_exception(type(e), e, e.__traceback__))[-3000:],
                }
            }
        try:
            send(resp_fd, reply)
        except (TypeError, ValueError) as e:
            send(resp_fd, {"exc": {"type": "TypeError", "message": "result cannot be encoded: %s" % e, "trace": ""}})


class Candidate:
    """The checker's or test process's handle on a runner process."""

    def __init__(self, output_limit, deadline):
        self.output_limit = output_limit
        self.deadline = deadline
        self.proc = None
        self.outputs = []
        self.names = {}
        self.import_error = None
        self.start()

    def start(self):
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        try:
            self.proc = spawn("runner", str(req_r), str(resp_w), pass_fds=(req_r, resp_w), cwd=SRC_DIR)
        finally:
            os.close(req_r)
            os.close(resp_w)
        self.req_w, self.resp_r = req_w, resp_r
        self.outputs.append(Capture(self.proc.stdout, self.output_limit))
        try:
            hello = recv(self.resp_r, self.deadline)
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
        if not isinstance(names, dict) or not all(isinstance(n, str) and isinstance(i, dict) for n, i in names.items()):
            self.import_error = "the solution process sent a malformed list of names"
            self.stop()
            return
        self.names = names

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
        for fd in (self.req_w, self.resp_r):
            try:
                os.close(fd)
            except OSError:
                pass
        return code

    def call(self, fn, args, kwargs, timeout):
        if not self.alive() and self.import_error is None:
            self.start()
        if self.import_error is not None:
            raise RuntimeError(self.import_error)
        try:
            send(self.req_w, {"fn": fn, "args": encode(list(args)), "kwargs": encode(dict(kwargs))})
            reply = recv(self.resp_r, min(time.monotonic() + timeout, self.deadline))
        except TimeoutError:
            self.stop()
            raise TimeoutError("%s(...) did not return within %ss" % (fn, timeout)) from None
        except (EOFError, BrokenPipeError):
            code = self.stop()
            raise RuntimeError("the solution process exited (code %s) while running %s" % (code, fn)) from None
        except ValueError as e:
            # The stream is out of step after a bad message: start afresh.
            self.stop()
            raise RuntimeError("%s(...) answered with an unusable message: %s" % (fn, e)) from None
        if not ("ok" in reply or isinstance(reply.get("exc"), dict)):
            self.stop()
            raise RuntimeError("%s(...) answered with an unusable message" % fn)
        return reply

    def output(self):
        return "".join(c.text() for c in self.outputs)


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


def proxy_module(candidate, timeout):
    """The `solution` the tests import: a module whose functions call the
    runner and whose values are plain data decoded from it."""
    import types

    def remote(name):
        def call(*args, **kwargs):
            reply = candidate.call(name, args, kwargs, timeout)
            if "ok" in reply:
                return decode(reply["ok"])
            exc = reply["exc"]
            type_name, message = str(exc.get("type")), str(exc.get("message"))[:2000]
            builtin = getattr(builtins, type_name, None)
            if isinstance(builtin, type) and issubclass(builtin, Exception) and builtin.__module__ == "builtins":
                try:
                    error = builtin(message)
                except Exception:  # noqa: BLE001 - exceptions whose constructors want more
                    error = None
                if error is not None:
                    raise error
            raise RuntimeError("%s: %s\n%s" % (type_name, message, str(exc.get("trace", ""))[-3000:]))

        call.__name__ = name
        call.__qualname__ = name
        return call

    proxy = types.ModuleType("solution")
    exported = []
    for name, info in candidate.names.items():
        if name.startswith("__") and name.endswith("__"):
            continue
        kind = info.get("kind")
        if kind == "function":
            setattr(proxy, name, remote(name))
        elif kind == "value":
            try:
                setattr(proxy, name, decode(info.get("value")))
            except (ValueError, TypeError, KeyError, IndexError, RecursionError):
                setattr(proxy, name, Opaque("value", name))
        else:
            setattr(proxy, name, Opaque("class", name))
        if not name.startswith("_") and name not in NOT_EXPORTED and not name.lower().startswith(NOT_EXPORTED_PREFIXES):
            exported.append(name)
    proxy.__all__ = exported

    def missing(name):
        if candidate.import_error:
            raise ImportError(candidate.import_error)
        raise AttributeError("solution has no attribute %r" % name)

    proxy.__getattr__ = missing
    return proxy


def tests_main(config_fd, result_fd):
    """Runs the spec's pytest code against a proxy of the candidate (trusted
    side). The test source arrives over a pipe from the checker."""
    set_nondumpable()
    config = recv(config_fd, time.monotonic() + 60)
    os.close(config_fd)
    source = config["test_code"]
    import pytest

    candidate = Candidate(config["output_limit"], config["deadline"])
    sys.modules["solution"] = proxy_module(candidate, config["call_timeout_s"])

    class SpecModule(pytest.Module):
        """The spec's test module, compiled from the source sent by the
        checker; the file on disk only gives pytest a path to collect."""

        def _getobj(self):
            if str(self.path) != TEST_FILE:
                raise self.CollectError("%s is not the spec's test file" % self.path)
            try:
                return load_test_module(source, self.config)
            except SyntaxError as e:
                raise self.CollectError("test_code does not compile: %s" % e) from None

    class Sealed:
        @pytest.hookimpl(tryfirst=True)
        def pytest_pycollect_makemodule(self, module_path, parent):
            return SpecModule.from_parent(parent, path=module_path)

    results = []
    collected = []
    os.chdir(TESTS_DIR)
    exit_code = pytest.main(
        [TEST_FILE, "-q", "--no-header", "--rootdir", TESTS_DIR, "-o", "python_files=test_*.py"]
        + PYTEST_SEALED
        + PYTEST_QUIET,
        plugins=[Sealed(), pytest_recorder(results, collected, True)],
    )
    # Stopped first: its output pipe closes only when it is gone.
    candidate.stop()
    send(result_fd, {"collected": collected, "results": results, "exit_code": int(exit_code), "output": candidate.output()})
    os._exit(0)


# ---------------------------------------------------------------- service roles


def server_main(info_fd, socket_path):
    """Imports the generated app and serves it on a Unix socket (untrusted)."""
    prefer_oom_kill()
    sys.path.insert(0, SRC_DIR)
    os.chdir(SRC_DIR)
    try:
        from app.main import app
        spec = app.openapi()
    except BaseException as e:  # noqa: BLE001
        send(info_fd, {"import_error": "".join(traceback.format_exception(type(e), e, e.__traceback__))[-4000:]})
        return
    send(info_fd, {"ready": True, "openapi": spec})
    import uvicorn

    uvicorn.run(app, uds=socket_path, log_level="warning", lifespan="on")


def svctests_main(result_fd):
    """Runs the generated service's own test suite (its code is untrusted,
    and so are these results: they are the model's claims about its code)."""
    prefer_oom_kill()
    sys.path.insert(0, SRC_DIR)
    os.chdir(SRC_DIR)
    import pytest

    results = []
    collected = []
    exit_code = pytest.main(
        ["tests", "-q", "-p", "no:cacheprovider", "--no-header"] + PYTEST_QUIET,
        plugins=[pytest_recorder(results, collected, False)],
    )
    send(result_fd, {"collected": collected, "results": results, "exit_code": int(exit_code)})
    os._exit(0)


def uds_get(socket_path, path, timeout):
    import http.client
    import socket

    class Connection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(socket_path)

    conn = Connection("localhost", timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read(1 << 20)
    finally:
        conn.close()


def check_service(request, deadline):
    """Import, routes, /health and the service's own tests."""
    limit = capture_limit(request)
    cases = []
    outputs = []
    socket_path = os.path.join(KILN_DIR, "app.sock")
    info_r, info_w = os.pipe()
    try:
        server = spawn("server", str(info_w), socket_path, pass_fds=(info_w,), cwd=SRC_DIR)
    finally:
        os.close(info_w)
    outputs.append(Capture(server.stdout, limit))
    problem = None
    try:
        try:
            info = recv(info_r, min(deadline, time.monotonic() + 60))
        except (EOFError, TimeoutError, ValueError) as e:
            info = {"import_error": "the app process ended before importing app.main (%s)" % type(e).__name__}
        if "import_error" in info:
            cases.append({"name": "import app.main", "outcome": "failed", "message": str(info["import_error"])[-4000:]})
            problem = "the app does not import"
        else:
            cases.append({"name": "import app.main", "outcome": "passed", "message": ""})
            ready = False
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
                except ValueError:
                    pass
            cases.extend(route_cases(request["endpoints"], openapi))
            if not ready:
                cases.append({"name": "GET /health", "outcome": "failed", "message": "the app did not start serving"})
            else:
                try:
                    status, body = uds_get(socket_path, "/health", 10)
                    ok = status == 200
                    message = "" if ok else "GET /health answered %d: %s" % (status, body[:300].decode("utf-8", "replace"))
                except OSError as e:
                    ok, message = False, "GET /health failed: %s" % e
                cases.append({"name": "GET /health", "outcome": "passed" if ok else "failed", "message": message})
    finally:
        try:
            os.killpg(server.pid, 9)
        except OSError:
            pass
        server.wait()
        os.close(info_r)
        kill_all_others()

    if problem is None:
        result_r, result_w = os.pipe()
        try:
            tests = spawn("svctests", str(result_w), pass_fds=(result_w,), cwd=SRC_DIR)
        finally:
            os.close(result_w)
        outputs.append(Capture(tests.stdout, limit))
        try:
            suite = recv(result_r, deadline)
        except (EOFError, TimeoutError, ValueError) as e:
            suite = None
            problem = "the service's test suite ended without results (%s)" % type(e).__name__
        finally:
            try:
                os.killpg(tests.pid, 9)
            except OSError:
                pass
            tests.wait()
            os.close(result_r)
        if suite is not None:
            results = suite.get("results")
            if not isinstance(results, list) or not isinstance(suite.get("collected"), list):
                raise CandidateFault("the service's test suite sent malformed results")
            for r in results:
                cases.append({"name": "tests: " + str(r["name"]), "outcome": r["outcome"], "message": str(r["message"])})
            if not suite["collected"]:
                problem = "the service's test suite collected no tests"
            elif len([r for r in results if r["when"] == "call"]) < len(suite["collected"]):
                problem = "only %d of %d collected tests of the service ran" % (
                    len([r for r in results if r["when"] == "call"]),
                    len(suite["collected"]),
                )
            return {"cases": cases, "problem": problem, "collected": len(suite["collected"]), "output": "".join(o.text() for o in outputs)}
    return {"cases": cases, "problem": problem, "collected": 0, "output": "".join(o.text() for o in outputs)}


def route_cases(endpoints, openapi):
    """Every spec endpoint must be in the app's OpenAPI with its method."""
    paths = openapi.get("paths", {}) if isinstance(openapi, dict) else {}
    if not isinstance(paths, dict):
        paths = {}

    def shape(path):
        parts = []
        for part in path.rstrip("/").split("/"):
            parts.append("{}" if part.startswith("{") and part.endswith("}") else part)
        return "/".join(parts)

    served = {}
    for path, ops in paths.items():
        if isinstance(ops, dict):
            served.setdefault(shape(str(path)), set()).update(str(m).upper() for m in ops)
    cases = []
    for e in endpoints:
        name = "route %s %s" % (e["method"], e["path"])
        methods = served.get(shape(e["path"]))
        if methods is None:
            cases.append({"name": name, "outcome": "failed", "message": "the app serves no path %s" % e["path"]})
        elif e["method"] not in methods:
            cases.append({"name": name, "outcome": "failed", "message": "%s is served for %s, not %s" % (e["path"], ", ".join(sorted(methods)), e["method"])})
        else:
            cases.append({"name": name, "outcome": "passed", "message": ""})
    return cases


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


def check_function(request, deadline):
    fn = request["function"]
    limit = capture_limit(request)
    cases = []
    problem = None
    outputs = []
    if fn.get("cases"):
        candidate = Candidate(limit, deadline)
        for i, case in enumerate(fn["cases"]):
            name = "case_%d" % i
            if candidate.import_error:
                cases.append({"name": name, "error": candidate.import_error})
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                problem = "the run's time ran out after %d of %d test cases" % (i, len(fn["cases"]))
                break
            args, kwargs = case_arguments(case["input"])
            try:
                reply = candidate.call(fn["entry_point"], args, kwargs, min(fn["call_timeout_s"], remaining))
            except (RuntimeError, TimeoutError) as e:
                cases.append({"name": name, "error": str(e)})
                continue
            if "ok" in reply:
                try:
                    cases.append({"name": name, "value": normalise(decode(reply["ok"]))})
                except (ValueError, TypeError, KeyError, IndexError, RecursionError) as e:
                    cases.append({"name": name, "error": "undecodable result: %s" % type(e).__name__})
            else:
                exc = reply["exc"]
                cases.append({"name": name, "error": "%s: %s" % (str(exc.get("type"))[:200], str(exc.get("message"))[:2000])})
        candidate.stop()
        outputs.append(candidate.output())
        # Whatever the candidate left running must not meet the tests process.
        kill_all_others()
    pytest_results = None
    if fn.get("test_code"):
        config_r, config_w = os.pipe()
        result_r, result_w = os.pipe()
        try:
            tests = spawn("tests", str(config_r), str(result_w), pass_fds=(config_r, result_w))
        finally:
            os.close(config_r)
            os.close(result_w)
        capture = Capture(tests.stdout, limit)
        try:
            send(config_w, {
                "test_code": fn["test_code"],
                "output_limit": limit,
                "call_timeout_s": fn["call_timeout_s"],
                "deadline": deadline,
            })
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
    return {"cases": cases, "pytest": pytest_results, "problem": problem, "output": "".join(outputs)}


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


def checker_main():
    raw = sys.stdin.buffer.read()
    sys.stdin.close()
    set_nondumpable()
    request = json.loads(raw)
    nonce = request.pop("nonce")
    # Nothing of the candidate has run yet: Kiln treats a run without this
    # line as an infrastructure failure, one with it as the code's own doing.
    sys.stdout.write("KILN-READY\n")
    sys.stdout.flush()
    started = time.monotonic()
    deadline = started + request["timeout_s"]
    try:
        for d in (SRC_DIR, KILN_DIR, TESTS_DIR):
            os.makedirs(d, exist_ok=True)
        write_files(request["files"], SRC_DIR)
        if request["mode"] == "function":
            if request["function"].get("test_code"):
                # Only a path for pytest to collect: the tests process
                # compiles the source it is sent, not this file.
                with open(TEST_FILE, "w", encoding="utf-8") as out:
                    out.write(request["function"]["test_code"])
            report = check_function(request, deadline)
        elif request["mode"] == "service":
            report = check_service(request, deadline)
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
    line = "\nKILN-REPORT %s %s\n" % (nonce, fit_report(report, request["output_limit"]))
    sys.stdout.flush()
    write_all(1, line.encode())
    os._exit(0)


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else "checker"
    if role == "checker":
        checker_main()
    elif role == "runner":
        runner_main(int(sys.argv[2]), int(sys.argv[3]))
    elif role == "tests":
        tests_main(int(sys.argv[2]), int(sys.argv[3]))
    elif role == "server":
        server_main(int(sys.argv[2]), sys.argv[3])
    elif role == "svctests":
        svctests_main(int(sys.argv[2]))
