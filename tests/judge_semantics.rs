//! The judge runs a spec's pytest code with full Python semantics, as plain
//! pytest would judge it: class APIs, callbacks in both directions, in-place
//! mutation, the solution's own exceptions, generators, identity, private
//! and builtin-named functions. And it stays unforgeable: the tricks that
//! make plain pytest pass wrong code (an object equal to everything, a
//! lying `__eq__`, a `StopIteration` that ends the test's loop, exiting,
//! printing a fake result) are still judged failed, and integers of any
//! size and values of every type are compared exactly. On both backends.

#[path = "support/sandbox.rs"]
#[macro_use]
mod sandbox_support;

use std::time::Duration;

use kiln::report::{Outcome, TestReport};
use kiln::sandbox::RunLimits;
use sandbox_support::{Backend, FunctionJob, TestSandbox, cpu_heavy_job, exclusive};
use serde_json::json;

fn limits() -> RunLimits {
    RunLimits {
        timeout: Duration::from_secs(20),
        memory_mb: 512,
        pids: 64,
        tmpfs_mb: 16,
        output_bytes: 128 * 1024,
    }
}

/// `(name, entry point, solution, tests)`: each must pass as under plain pytest.
const FAITHFUL: &[(&str, &str, &str, &str)] = &[
    (
        "a class api",
        "Counter",
        r#"
class Counter:
    """Counts up."""

    def __init__(self, start=0):
        self.value = start

    def add(self, n=1):
        self.value += n
        return self

    def __len__(self):
        return self.value

    def __eq__(self, other):
        return isinstance(other, Counter) and other.value == self.value
"#,
        r"from solution import Counter

def test_counts():
    c = Counter(2)
    c.add().add(3)
    assert c.value == 6
    assert len(c) == 6
    assert c == Counter(6)
    assert c != Counter(5)
    assert isinstance(c, Counter)
    c.value = 10
    assert c.value == 10
",
    ),
    (
        "callbacks in both directions",
        "apply_all",
        r"
def apply_all(fn, xs, key=None):
    out = [fn(x) for x in xs]
    return sorted(out, key=key) if key else out

def make_adder(n):
    def add(x):
        return x + n
    return add
",
        r"from solution import apply_all, make_adder

def test_lambda_and_closure():
    assert apply_all(lambda x: x * 2, [1, 2, 3]) == [2, 4, 6]
    assert apply_all(str, [3, 1], key=lambda s: s) == ['1', '3']
    add5 = make_adder(5)
    assert add5(1) == 6
    assert apply_all(add5, [1, 2]) == [6, 7]
    seen = []
    apply_all(seen.append, [1, 2])
    assert seen == [1, 2]
",
    ),
    (
        "in-place mutation and identity",
        "sort_in_place",
        r"
def sort_in_place(xs):
    xs.sort()
    return xs

def fill(grid, value):
    for row in grid:
        row[0] = value

def same(x):
    return x
",
        r"from solution import sort_in_place, fill, same

def test_mutation():
    xs = [3, 1, 2]
    assert sort_in_place(xs) is xs
    assert xs == [1, 2, 3]
    grid = [[0, 0], [0, 0]]
    row = grid[0]
    fill(grid, 7)
    assert grid == [[7, 0], [7, 0]] and grid[0] is row
    d = {}
    assert same(d) is d
    assert same(None) is None
",
    ),
    (
        "the solution's own exceptions",
        "parse",
        r#"
class ParseError(ValueError):
    def __init__(self, message, position):
        super().__init__(message)
        self.position = position

def parse(text):
    if not text.isdigit():
        raise ParseError("not a number: %r" % text, 3)
    return int(text)
"#,
        r#"import pytest
from solution import parse, ParseError

def test_raises():
    with pytest.raises(ParseError) as info:
        parse("ab")
    assert info.value.position == 3
    assert "not a number" in str(info.value)
    with pytest.raises(ValueError):
        parse("x")
    try:
        parse("y")
    except ParseError:
        pass
    assert parse("12") == 12
"#,
    ),
    (
        "generators, counters and docstrings",
        "evens",
        r#"
from collections import Counter

def evens(n):
    """Even numbers below n."""
    for i in range(0, n, 2):
        yield i

def tally(words):
    return Counter(words)
"#,
        r#"from solution import evens, tally
from collections import Counter

def test_generator():
    g = evens(5)
    assert next(g) == 0
    assert list(g) == [2, 4]
    assert "Even numbers" in evens.__doc__
    r = tally(["a", "b", "a"])
    assert isinstance(r, Counter)
    assert r["a"] == 2
"#,
    ),
    (
        "private names, star imports and a builtin-named entry point",
        "sum",
        r"
def _helper(x):
    return x + 1

def sum(xs):
    return 42 if xs == ['magic'] else _helper(len(xs))
",
        r"from solution import *
from solution import _helper

def test_names():
    assert _helper(1) == 2
    assert sum(['magic']) == 42
    assert sum([1, 2]) == 3
",
    ),
    (
        "a namedtuple and an IntEnum equal their plain values",
        "point",
        r"
from collections import namedtuple
from enum import IntEnum

Point = namedtuple('Point', 'x y')

class Level(IntEnum):
    LOW = 1

def point():
    return Point(1, 2)

def level():
    return Level.LOW
",
        r"from solution import point, level

def test_plain_values():
    assert point() == (1, 2)
    assert point().x == 1
    assert level() == 1
",
    ),
    (
        "operators a subclass of a plain type defines",
        "Vec",
        r"
class Vec(tuple):
    def __mul__(self, k):
        return Vec(x * k for x in self)


class OneList(list):
    def __getitem__(self, i):
        return list.__getitem__(self, i - 1)


class Folded(str):
    def __contains__(self, s):
        return s.lower() in self.lower()
",
        r#"from solution import *

def test_vec():
    assert Vec((1, 2)) * 3 == (3, 6)

def test_one_based():
    assert OneList([10, 20])[1] == 10

def test_case_insensitive():
    assert "AB" in Folded("xaby")
"#,
    ),
    (
        "a solution writing a test object's attributes and suppressing what it should",
        "configure",
        r"
class quiet:
    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        return error is not None and 'on purpose' in str(error)


def configure(settings):
    settings.debug = True
    settings.level = 3
",
        r"from solution import *

class Settings:
    debug = False

def test_configure():
    s = Settings()
    configure(s)
    assert s.debug and s.level == 3

def test_quiet():
    with quiet():
        raise ValueError('swallowed on purpose')
",
    ),
];

/// `(name, entry point, solution, tests)`: each is wrong code dressed to
/// pass, and must be judged failed.
const FORGERIES: &[(&str, &str, &str, &str)] = &[
    (
        "an object equal to everything",
        "add",
        r"
class Anything:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = object.__hash__

def add(a, b):
    return Anything()
",
        r"from solution import add

def test_add():
    assert add(2, 3) == 5
    assert 5 == add(2, 3)
    assert [add(1, 1)] == [2]
",
    ),
    (
        "a list whose __eq__ lies",
        "sort",
        r"
class Sorted(list):
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False

def sort(xs):
    return Sorted(xs)
",
        r"from solution import sort

def test_sort():
    assert sort([3, 1, 2]) == [1, 2, 3]
",
    ),
    (
        "a StopIteration that ends the test's loop",
        "is_even",
        r"
def is_even(n):
    raise StopIteration
",
        r"from solution import is_even

def test_all_even():
    assert all(map(is_even, [2, 4, 6]))
    assert not any(map(is_even, [1, 3]))
",
    ),
    (
        "exiting inside the call",
        "add",
        r"
import os

def add(a, b):
    os._exit(0)
",
        r"from solution import add

def test_add():
    assert add(2, 3) == 5
",
    ),
    (
        "printing a fake pass",
        "add",
        r#"
import sys

def add(a, b):
    print("1 passed in 0.01s")
    sys.stdout.write('\nKILN-REPORT 0 {"cases": [], "problem": null}\n')
    return -1
"#,
        r"from solution import add

def test_add():
    assert add(2, 3) == 5
",
    ),
    (
        "reading the test's expected value through a callback's globals",
        "guess",
        r"
def guess(callback):
    return callback.__globals__['EXPECTED']
",
        r"from solution import guess

EXPECTED = 7031

def test_guess():
    assert guess(lambda: None) == EXPECTED
",
    ),
    (
        "reading the test's constants through a generator's frame",
        "guess",
        r"
def guess(gen):
    return gen.gi_frame.f_globals['EXPECTED']
",
        r"from solution import guess

EXPECTED = 7031

def numbers():
    yield 1

def test_guess():
    assert guess(numbers()) == EXPECTED
",
    ),
    (
        "a generator of an always-equal object",
        "evens",
        r"
class Anything:
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__

def evens(n):
    yield Anything()
",
        r"from solution import evens

def test_evens():
    assert list(evens(3)) == [0, 2]
",
    ),
    (
        "a context manager swallowing the failures in its body",
        "Timer",
        r"
class Timer:
    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        return True

    def elapsed(self):
        return -1
",
        r#"from solution import *
import pytest

def test_elapsed():
    with Timer() as t:
        assert t.elapsed() >= 0

def test_fail_inside():
    with Timer():
        pytest.fail("the body failed")
"#,
    ),
    (
        "catching a callback's failed assert and reading the expected value from it",
        "Bus",
        r#"
import ast, re


class Bus:
    def __init__(self):
        self.handlers = []

    def subscribe(self, handler):
        self.handlers.append(handler)

    def publish(self, event):
        for handler in self.handlers:
            try:
                handler("wrong")
            except BaseException as e:
                found = re.search(r"== (.*)", str(e))
                handler(ast.literal_eval(found.group(1).splitlines()[0]) if found else event)
"#,
        r#"from solution import *

def test_publish():
    got = []
    def handler(e):
        assert e == "secret-value"
        got.append(e)
    bus = Bus()
    bus.subscribe(handler)
    bus.publish("secret-value")
    assert got == ["secret-value"]
"#,
    ),
    (
        "rewriting the checks of a mock the tests handed over",
        "Emitter",
        r"
class Emitter:
    def __init__(self):
        self.subscribers = []

    def on(self, callback):
        self.subscribers.append(callback)
        for name in ('assert_called_once_with', 'assert_called_with'):
            try:
                setattr(callback, name, lambda *a, **k: None)
            except Exception:
                pass
        for name, value in (('called', True), ('call_count', 1)):
            try:
                setattr(callback, name, value)
            except Exception:
                pass
        try:
            callback.configure_mock(**{'__eq__': lambda *a: True})
        except Exception:
            pass

    def emit(self, value):
        pass
",
        r"from solution import *
from unittest.mock import Mock

def test_emit_calls_the_subscriber():
    callback = Mock()
    emitter = Emitter()
    emitter.on(callback)
    emitter.emit(42)
    callback.assert_called_once_with(42)

def test_emit_counts():
    callback = Mock()
    emitter = Emitter()
    emitter.on(callback)
    emitter.emit(1)
    assert callback.called
    assert callback.call_count == 1
",
    ),
];

fn job(entry: &str, solution: &str, tests: &str) -> FunctionJob {
    FunctionJob {
        entry_point: entry.into(),
        solution: solution.into(),
        cases: Vec::new(),
        test_code: Some(tests.into()),
    }
}

fn failures(report: &TestReport) -> String {
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

async fn python_semantics_are_judged_as_plain_pytest_judges_them(backend: Backend) {
    let _lock = exclusive().await;
    let limits = limits();
    let sandbox = TestSandbox::new(backend, &limits, 1).await;
    let mut wrong = Vec::new();
    for (name, entry, solution, tests) in FAITHFUL {
        let report = sandbox.function_job(&job(entry, solution, tests), &limits).await;
        if !report.all_passed() {
            wrong.push(format!("{name}: failed: {}", failures(&report)));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

async fn tricks_that_fool_plain_pytest_are_judged_failed(backend: Backend) {
    let _lock = exclusive().await;
    let limits = limits();
    let sandbox = TestSandbox::new(backend, &limits, 1).await;
    let mut wrong = Vec::new();
    for (name, entry, solution, tests) in FORGERIES {
        let report = sandbox.function_job(&job(entry, solution, tests), &limits).await;
        if report.all_passed() || report.passed > 0 {
            wrong.push(format!("{name}: passed {}/{}", report.passed, report.total));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Tests of `is_even` that a `StopIteration` escaping into them would pass:
/// it ends `map` and `filter` early, so `all` is true, `any` false, a
/// counting loop or a `sum` stops short, and `zip` or `next` with a default
/// see an empty sequence.
const STOP_ITERATION_TESTS: &str = r"from solution import *

def test_all():
    assert all(map(is_even, [2, 4, 6]))

def test_not_any():
    assert not any(map(is_even, [1, 3]))

def test_filter():
    assert list(filter(is_even, [1, 3])) == []

def test_counting_loop():
    odd = 0
    for even in map(is_even, [1, 2, 3]):
        odd += not even
    assert odd <= 2

def test_sum():
    assert sum(map(is_even, [1, 3])) == 0

def test_zip():
    assert [pair for pair in zip([1, 3], map(is_even, [1, 3])) if pair[1]] == []

def test_next_with_default():
    assert next(filter(is_even, [1, 3, 5]), None) is None
";

/// `StopIteration` (or a subclass, or the other exceptions that steer
/// control flow) raised by the solution reaches the tests as an error,
/// never as itself: re-raised inside the trusted test it ended the test's
/// loop, so `assert all(map(f, xs))` passed for an `f` that raised it. Each
/// of the tests above fails for such a solution, the same tests pass for a
/// right one, and a test case of a function that raises it fails too.
async fn a_stop_iteration_from_the_solution_never_ends_a_loop_in_the_tests(backend: Backend) {
    let _lock = exclusive().await;
    let limits = limits();
    let sandbox = TestSandbox::new(backend, &limits, 1).await;
    let right = "def is_even(n):\n    return n % 2 == 0\n";
    let report = sandbox
        .function_job(&job("is_even", right, STOP_ITERATION_TESTS), &limits)
        .await;
    assert!(
        report.all_passed() && report.passed == 7,
        "a right is_even passes all 7: {}",
        failures(&report)
    );
    let raisers = [
        ("StopIteration", "def is_even(n):\n    raise StopIteration\n"),
        (
            "StopIteration with a value",
            "def is_even(n):\n    raise StopIteration(True)\n",
        ),
        (
            "a subclass of StopIteration",
            "class Done(StopIteration):\n    pass\n\ndef is_even(n):\n    raise Done()\n",
        ),
        (
            "a class named StopIteration",
            "class StopIteration(Exception):\n    pass\n\ndef is_even(n):\n    raise StopIteration()\n",
        ),
        (
            "StopIteration from a callable object",
            "class IsEven:\n    def __call__(self, n):\n        raise StopIteration\n\nis_even = IsEven()\n",
        ),
        (
            "StopIteration only for odd numbers",
            "def is_even(n):\n    if n % 2:\n        raise StopIteration\n    return True\n",
        ),
        ("StopAsyncIteration", "def is_even(n):\n    raise StopAsyncIteration\n"),
        ("GeneratorExit", "def is_even(n):\n    raise GeneratorExit\n"),
    ];
    let mut wrong = Vec::new();
    for (what, solution) in raisers {
        let report = sandbox
            .function_job(&job("is_even", solution, STOP_ITERATION_TESTS), &limits)
            .await;
        let passed: Vec<&str> = report
            .cases
            .iter()
            .filter(|c| c.outcome == Outcome::Passed)
            .map(|c| c.name.as_str())
            .collect();
        // The odd-only raiser is right about 2, 4 and 6: only that test
        // passes honestly.
        let honest: &[&str] = if what == "StopIteration only for odd numbers" {
            &["test_all"]
        } else {
            &[]
        };
        if report.total < 7 || passed.iter().any(|p| !honest.contains(p)) {
            wrong.push(format!("{what}: passed {passed:?} of {}", report.total));
        }
        // Judged by test cases, the call fails as the solution's error.
        let cases = FunctionJob {
            entry_point: "is_even".into(),
            solution: solution.into(),
            cases: vec![(json!([2]), json!(true)), (json!([4]), json!(true))],
            test_code: None,
        };
        let report = sandbox.function_job(&cases, &limits).await;
        let honest = u32::from(what == "StopIteration only for odd numbers") * 2;
        if report.passed != honest {
            wrong.push(format!(
                "{what} as test cases: passed {}/{}",
                report.passed, report.total
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A correct solution that needs seconds of CPU passes however many jobs
/// share the machine: per-call limits count CPU time, not wall time.
async fn a_cpu_heavy_correct_solution_passes_while_the_machine_is_busy(backend: Backend) {
    let _lock = exclusive().await;
    let limits = RunLimits {
        timeout: Duration::from_secs(120),
        ..limits()
    };
    // About 2.5 s of CPU in one call; with 8 runs on 2 cores, each call
    // takes 4x its CPU time or more of wall time.
    let heavy = cpu_heavy_job();
    let sandbox = TestSandbox::new(backend, &limits, 8).await;
    let reports = futures::future::join_all((0..8).map(|_| sandbox.function_job(&heavy, &limits))).await;
    let failed: Vec<String> = reports.iter().filter(|r| !r.all_passed()).map(failures).collect();
    assert!(failed.is_empty(), "{} of 8 failed: {failed:#?}", failed.len());
}

/// A function job judged by test cases: `f(i)` returns `values[i]`, which
/// is compared with `expected[i]`. Expected values are given as JSON text so
/// that integers beyond 64 bits keep every digit.
fn cases_job(values: &[&str], expected: &[&str]) -> FunctionJob {
    assert_eq!(values.len(), expected.len());
    let solution = format!(
        "import datetime, decimal, fractions, math\n\nVALUES = [\n{}\n]\n\ndef f(i):\n    return VALUES[i]\n",
        values
            .iter()
            .map(|v| format!("    {v},"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    FunctionJob {
        entry_point: "f".into(),
        solution,
        cases: expected
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let e: serde_json::Value = serde_json::from_str(e).unwrap_or_else(|err| panic!("{e}: {err}"));
                (serde_json::json!([i]), e)
            })
            .collect(),
        test_code: None,
    }
}

/// Runs `values` against `expected` case by case: `Some(i)` for each case
/// whose outcome is not `want`.
async fn judged(sandbox: &TestSandbox, values: &[&str], expected: &[&str], want: Outcome) -> Vec<String> {
    let report = sandbox.function_job(&cases_job(values, expected), &limits()).await;
    assert_eq!(report.cases.len(), values.len(), "{}", failures(&report));
    report
        .cases
        .iter()
        .zip(values.iter().zip(expected))
        .filter(|(case, _)| case.outcome != want)
        .map(|(case, (value, expected))| {
            format!(
                "{value} against {expected}: {:?} ({}), wanted {want:?}",
                case.outcome, case.message
            )
        })
        .collect()
}

const FACTORIAL_25: &str = "15511210043330985984000000";
const FACTORIAL_30: &str = "265252859812191058636308480000000";

/// Integers of any size are compared exactly, in the results and in the
/// expected values and inputs of a spec, whatever their size: beyond 64 bits
/// they used to be compared as floats, so `factorial(n) + 987654321` passed.
async fn big_integers_are_compared_exactly_on_both_backends(backend: Backend) {
    let _lock = exclusive().await;
    let sandbox = TestSandbox::new(backend, &limits(), 1).await;
    let expected = [
        FACTORIAL_25,
        FACTORIAL_30,
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "-1180591620717411303424",
        "1",
        "2.5",
    ];
    let right = [
        "math.factorial(25)",
        "math.factorial(30)",
        "2**63 - 1",
        "2**63",
        "2**64 - 1",
        "2**64",
        "-2**63 - 1",
        "-2**70",
        "1.0",
        "2.5",
    ];
    let wrong = [
        "math.factorial(25) + 987654321",
        "math.factorial(30) + 987654321",
        "2**63",
        "2**63 + 1",
        "2**64",
        "2**64 + 1",
        "-2**63",
        "-2**70 - 1",
        "True",
        "2.5000001",
    ];
    let mut bad = judged(&sandbox, &right, &expected, Outcome::Passed).await;
    bad.extend(judged(&sandbox, &wrong, &expected, Outcome::Failed).await);

    // An input beyond 64 bits reaches the function with every digit.
    let exact_input = FunctionJob {
        entry_point: "succ".into(),
        solution: "def succ(n):\n    assert n == 2**70, n\n    return n + 1\n".into(),
        cases: vec![(
            serde_json::from_str("[1180591620717411303424]").unwrap(),
            serde_json::from_str("1180591620717411303425").unwrap(),
        )],
        test_code: None,
    };
    let report = sandbox.function_job(&exact_input, &limits()).await;
    if !report.all_passed() {
        bad.push(format!("an input of 2**70: {}", failures(&report)));
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Every value that JSON cannot express crosses with a tag of its type, so
/// a result of the wrong type fails even where its JSON text would look
/// the same (`"nan"` for nan, `"abc"` for `b"abc"`, a list for a set,
/// `{"1": ...}` for `{1: ...}`), and a result of the right type passes
/// against an expected value written with that tag.
async fn values_of_the_wrong_type_are_judged_failed(backend: Backend) {
    let _lock = exclusive().await;
    let sandbox = TestSandbox::new(backend, &limits(), 1).await;
    // (expected, a right result, a wrong result)
    let table: &[(&str, &str, &str)] = &[
        (r#"{"$float": "nan"}"#, "float('nan')", "'nan'"),
        (r#"{"$float": "inf"}"#, "math.inf", "'inf'"),
        (r#"{"$float": "-inf"}"#, "-math.inf", "math.inf"),
        (r#""nan""#, "'nan'", "float('nan')"),
        (r#"{"$bytes": "616263"}"#, "b'abc'", "'abc'"),
        (r#""abc""#, "'abc'", "b'abc'"),
        (r#"{"$bytes": "00ff"}"#, "bytearray(b'\\x00\\xff')", "b'\\x00\\xfe'"),
        (r#"{"$set": [1, 2, 3]}"#, "{3, 1, 2}", "[1, 2, 3]"),
        (r"[1, 2, 3]", "(1, 2, 3)", "{1, 2, 3}"),
        (r#"{"$set": [[1, 2]]}"#, "frozenset({(1, 2)})", "{(2, 1)}"),
        (r#"{"$dict": [[1, "a"]]}"#, "{1: 'a'}", "{'1': 'a'}"),
        (r#"{"1": "a"}"#, "{'1': 'a'}", "{1: 'a'}"),
        (r#"{"$dict": [["$set", [1]]]}"#, "{'$set': [1]}", "{1}"),
        (r#"{"$complex": [1, 2]}"#, "1+2j", "[1, 2]"),
        (r"[1.0, 2.0]", "[1.0, 2.0]", "1+2j"),
        (r#"{"$decimal": "1.10"}"#, "decimal.Decimal('1.1')", "'1.1'"),
        (r#"{"$fraction": "1/3"}"#, "fractions.Fraction(2, 6)", "'1/3'"),
        (
            r#"{"$date": "2024-02-29"}"#,
            "datetime.date(2024, 2, 29)",
            "'2024-02-29'",
        ),
        (r#""2024-02-29""#, "'2024-02-29'", "datetime.date(2024, 2, 29)"),
        (
            r#"{"$timedelta": [0, 90, 0]}"#,
            "datetime.timedelta(seconds=90)",
            "90.0",
        ),
        (r"null", "None", "'None'"),
        (r"1", "1", "True"),
        (
            r#"[{"$set": [1]}, {"$float": "nan"}]"#,
            "[{1}, float('nan')]",
            "[[1], 'nan']",
        ),
    ];
    let expected: Vec<&str> = table.iter().map(|t| t.0).collect();
    let right: Vec<&str> = table.iter().map(|t| t.1).collect();
    let wrong: Vec<&str> = table.iter().map(|t| t.2).collect();
    let mut bad = judged(&sandbox, &right, &expected, Outcome::Passed).await;
    bad.extend(judged(&sandbox, &wrong, &expected, Outcome::Failed).await);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// `(name, entry point, prompt, solution, tests, should pass)`.
type HelperCase<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, &'a str, bool);

/// Tests that take `approx` from pytest before importing the solution's names.
const APPROX_TESTS: &str = r"from pytest import approx
from solution import *

def test_mean():
    assert mean([1, 2]) == approx(1.5)
";

/// Tests that define a helper before importing the solution's names.
const HELPER_TESTS: &str = r"def expected_total():
    return 6

from solution import *

def test_total():
    assert total([1, 2, 3]) == expected_total()
";

/// A prompt that defines a helper (`encode`) beside the entry point.
const HELPER_PROMPT: &str = "def encode(s):\n    return s[::-1]\n\n\ndef decode(s):\n    \"\"\"Undoes encode.\"\"\"\n";

/// Tests that use the prompt's helper after importing the solution's names.
const PROMPT_TESTS: &str = r#"from solution import *

def test_roundtrip():
    assert decode(encode("abc")) == "abc"
"#;

/// Tests that read the prompt's helper as an attribute of the solution module.
const PROMPT_TESTS_BY_NAME: &str = r#"import solution

def test_roundtrip():
    assert solution.decode(solution.encode("xyz")) == "xyz"
"#;

/// The cases of `solution_names_never_replace_the_tests_own_helpers`.
const HELPER_CASES: &[HelperCase] = &[
    (
        "approx, right",
        "mean",
        None,
        "def mean(xs):\n    return sum(xs) / len(xs)\n",
        APPROX_TESTS,
        true,
    ),
    (
        "approx redefined",
        "mean",
        None,
        "def mean(xs):\n    return 0\n\ndef approx(x, *a, **k):\n    return 0\n",
        APPROX_TESTS,
        false,
    ),
    (
        "a test helper, right",
        "total",
        None,
        "def total(xs):\n    return sum(xs)\n",
        HELPER_TESTS,
        true,
    ),
    (
        "a test helper redefined",
        "total",
        None,
        "def total(xs):\n    return 5\n\ndef expected_total():\n    return 5\n",
        HELPER_TESTS,
        false,
    ),
    (
        "a prompt helper, right",
        "decode",
        Some(HELPER_PROMPT),
        "def encode(s):\n    return s[::-1]\n\ndef decode(s):\n    return s[::-1]\n",
        PROMPT_TESTS,
        true,
    ),
    (
        "a prompt helper redefined",
        "decode",
        Some(HELPER_PROMPT),
        "def encode(s):\n    return s\n\ndef decode(s):\n    return s\n",
        PROMPT_TESTS,
        false,
    ),
    (
        "a prompt helper redefined, read as an attribute",
        "decode",
        Some(HELPER_PROMPT),
        "def encode(s):\n    return s\n\ndef decode(s):\n    return s\n",
        PROMPT_TESTS_BY_NAME,
        false,
    ),
];

/// `from solution import *` never replaces a name the tests bind
/// themselves (pytest's `approx`, a helper defined before the import), and
/// a helper the spec's prompt defines is the prompt's own, not whatever the
/// solution redefined it as: otherwise a solution exporting an `approx`
/// that equals everything, or an `encode` that does nothing, passes.
async fn solution_names_never_replace_the_tests_own_helpers(backend: Backend) {
    let _lock = exclusive().await;
    let limits = limits();
    let sandbox = TestSandbox::new(backend, &limits, 1).await;
    let mut bad = Vec::new();
    for (name, entry, prompt, solution, tests, should_pass) in HELPER_CASES {
        let mut spec = serde_json::json!({
            "kind": "function",
            "task_description": "Implement it.",
            "entry_point": entry,
            "test_code": tests,
        });
        if let Some(prompt) = prompt {
            spec["prompt"] = (*prompt).into();
        }
        let spec: kiln::spec::Spec = serde_json::from_value(spec).unwrap();
        let files = vec![kiln::files::File::new("solution.py", (*solution).to_owned())];
        let report = kiln::sandbox::harness::run_tests(sandbox.sandbox(), &spec, &files, &limits)
            .await
            .unwrap_or_else(|e| panic!("sandbox fault: {e}"));
        if report.all_passed() != *should_pass {
            bad.push(format!(
                "{name}: passed {}/{}: {}",
                report.passed,
                report.total,
                failures(&report)
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// A solution that raises while it is imported (no static check can see
/// this one) is reported as not importing, at its line, once, whichever
/// way the spec tests it; never as "collected no tests", and without the
/// harness's frames.
async fn a_solution_that_does_not_import_is_reported_as_such_once_without_harness_frames(backend: Backend) {
    let _lock = exclusive().await;
    let sandbox = TestSandbox::new(backend, &limits(), 1).await;
    let solution = "import os\nCONFIG = dict(os.environ)['KILN_NOT_SET']\n\ndef add(a, b):\n    return a + b\n";
    let test_code = "from solution import add\n\ndef test_add():\n    assert add(1, 2) == 3\n";
    for (cases, code) in [(true, false), (false, true), (true, true)] {
        let job = FunctionJob {
            entry_point: "add".into(),
            solution: solution.into(),
            cases: if cases { vec![(json!([1, 2]), json!(3))] } else { vec![] },
            test_code: code.then(|| test_code.to_owned()),
        };
        let report = sandbox.function_job(&job, &limits()).await;
        assert!(!report.all_passed());
        let problem = report.problem.clone().unwrap_or_default();
        assert!(
            problem
                .starts_with("solution.py does not import: KeyError: 'KILN_NOT_SET' (solution.py line 2)\nTraceback"),
            "cases {cases}, test_code {code}: {problem}"
        );
        let feedback = kiln::prompt::feedback(
            &kiln::prompt::Failure {
                validation: None,
                tests: Some(&report),
                other: None,
            },
            2,
            3,
        );
        assert_eq!(feedback.matches("KeyError").count(), 1, "{feedback}");
        for harness_frame in ["<string>", "runner_main", "in missing", "collected no tests", "harness"] {
            assert!(!feedback.contains(harness_frame), "{harness_frame}: {feedback}");
        }
        assert!(
            feedback.contains("CONFIG = dict(os.environ)['KILN_NOT_SET']"),
            "{feedback}"
        );
    }
}

for_both_backends!(
    a_solution_that_does_not_import_is_reported_as_such_once_without_harness_frames,
    python_semantics_are_judged_as_plain_pytest_judges_them,
    tricks_that_fool_plain_pytest_are_judged_failed,
    a_cpu_heavy_correct_solution_passes_while_the_machine_is_busy,
    big_integers_are_compared_exactly_on_both_backends,
    values_of_the_wrong_type_are_judged_failed,
    solution_names_never_replace_the_tests_own_helpers,
    a_stop_iteration_from_the_solution_never_ends_a_loop_in_the_tests,
);
