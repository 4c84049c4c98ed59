//! What Python would only find out when the code is imported or called,
//! but the syntax tree already shows, so the sandbox is not spent on it and
//! the failure is named by its real cause:
//!
//! - `name-undefined` (error; a warning in test files, which a function
//!   spec never runs): a name read that nothing in the module binds
//!   and that is not a builtin, as ruff's F821 finds; real answers use
//!   `List` without importing it. Conservative: a name bound anywhere in the
//!   module (any scope) counts as bound, and a module with a star import or
//!   that reaches `globals()`, `locals()`, `vars()` or `exec` is not judged.
//!   Annotations Python does not evaluate are skipped (all of them under
//!   `from __future__ import annotations`; those of a function's local
//!   variables always).
//! - `empty-body` (error): the spec's entry point has a body of only a
//!   docstring, `pass` or `...` (`@overload` and `@abstractmethod` stubs
//!   excepted): the stub the spec gave, returned unfilled.
//! - `import-self` (error): a module importing itself (`from solution import
//!   add` inside `solution.py`), a circular import that fails or does nothing.

use std::collections::HashSet;

use ruff_python_ast::visitor::{self, Visitor};
use ruff_python_ast::{ExceptHandler, Expr, ExprContext, Parameter, Pattern, Stmt, TypeParam};

use ruff_text_size::Ranged;

use crate::report::{Diagnostic, Severity};

use super::python::Module;

/// Python 3.11's builtins (`dir(builtins)`), and the names every module
/// has without binding them.
#[rustfmt::skip]
const BUILTINS: &[&str] = &[
    "ArithmeticError", "AssertionError", "AttributeError", "BaseException", "BaseExceptionGroup",
    "BlockingIOError", "BrokenPipeError", "BufferError", "BytesWarning", "ChildProcessError",
    "ConnectionAbortedError", "ConnectionError", "ConnectionRefusedError", "ConnectionResetError",
    "DeprecationWarning", "EOFError", "Ellipsis", "EncodingWarning", "EnvironmentError", "Exception",
    "ExceptionGroup", "False", "FileExistsError", "FileNotFoundError", "FloatingPointError", "FutureWarning",
    "GeneratorExit", "IOError", "ImportError", "ImportWarning", "IndentationError", "IndexError",
    "InterruptedError", "IsADirectoryError", "KeyError", "KeyboardInterrupt", "LookupError", "MemoryError",
    "ModuleNotFoundError", "NameError", "None", "NotADirectoryError", "NotImplemented", "NotImplementedError",
    "OSError", "OverflowError", "PendingDeprecationWarning", "PermissionError", "ProcessLookupError",
    "RecursionError", "ReferenceError", "ResourceWarning", "RuntimeError", "RuntimeWarning",
    "StopAsyncIteration", "StopIteration", "SyntaxError", "SyntaxWarning", "SystemError", "SystemExit",
    "TabError", "TimeoutError", "True", "TypeError", "UnboundLocalError", "UnicodeDecodeError",
    "UnicodeEncodeError", "UnicodeError", "UnicodeTranslateError", "UnicodeWarning", "UserWarning",
    "ValueError", "Warning", "ZeroDivisionError", "__build_class__", "__debug__", "__doc__", "__import__",
    "__loader__", "__name__", "__package__", "__spec__", "abs", "aiter", "all", "anext", "any", "ascii",
    "bin", "bool", "breakpoint", "bytearray", "bytes", "callable", "chr", "classmethod", "compile", "complex",
    "copyright", "credits", "delattr", "dict", "dir", "divmod", "enumerate", "eval", "exec", "exit", "filter",
    "float", "format", "frozenset", "getattr", "globals", "hasattr", "hash", "help", "hex", "id", "input",
    "int", "isinstance", "issubclass", "iter", "len", "license", "list", "locals", "map", "max", "memoryview",
    "min", "next", "object", "oct", "open", "ord", "pow", "print", "property", "quit", "range", "repr",
    "reversed", "round", "set", "setattr", "slice", "sorted", "staticmethod", "str", "sum", "super", "tuple",
    "type", "vars", "zip",
    // Module attributes, and the implicit names of class bodies and methods.
    "__file__", "__builtins__", "__path__", "__annotations__", "__cached__", "__class__", "__module__",
    "__qualname__",
];

/// Where a name that models use without importing usually comes from.
const USUAL_HOMES: &[(&str, &str)] = &[
    ("List", "from typing import List"),
    ("Dict", "from typing import Dict"),
    ("Set", "from typing import Set"),
    ("FrozenSet", "from typing import FrozenSet"),
    ("Tuple", "from typing import Tuple"),
    ("Optional", "from typing import Optional"),
    ("Union", "from typing import Union"),
    ("Any", "from typing import Any"),
    ("Callable", "from typing import Callable"),
    ("Iterable", "from typing import Iterable"),
    ("Iterator", "from typing import Iterator"),
    ("Sequence", "from typing import Sequence"),
    ("Mapping", "from typing import Mapping"),
    ("Generator", "from typing import Generator"),
    ("TypeVar", "from typing import TypeVar"),
    ("DefaultDict", "from typing import DefaultDict"),
    ("Deque", "from typing import Deque"),
    ("Counter", "from collections import Counter"),
    ("defaultdict", "from collections import defaultdict"),
    ("deque", "from collections import deque"),
    ("OrderedDict", "from collections import OrderedDict"),
    ("namedtuple", "from collections import namedtuple"),
    ("reduce", "from functools import reduce"),
    ("lru_cache", "from functools import lru_cache"),
    ("cache", "from functools import cache"),
    ("dataclass", "from dataclasses import dataclass"),
    ("Enum", "from enum import Enum"),
    ("Decimal", "from decimal import Decimal"),
    ("Fraction", "from fractions import Fraction"),
    ("heappush", "from heapq import heappush"),
    ("heappop", "from heapq import heappop"),
    ("sqrt", "from math import sqrt"),
    ("gcd", "from math import gcd"),
    ("inf", "from math import inf"),
    ("permutations", "from itertools import permutations"),
    ("combinations", "from itertools import combinations"),
    ("product", "from itertools import product"),
    ("accumulate", "from itertools import accumulate"),
    ("chain", "from itertools import chain"),
];

/// Checks `module`; `entry_point` is the function spec's entry point when
/// `module` is its `solution.py`.
pub fn check(module: &Module<'_>, entry_point: Option<&str>) -> Vec<Diagnostic> {
    let mut out = self_imports(module);
    out.extend(empty_bodies(module, entry_point));
    out.extend(undefined(module));
    out
}

fn undefined(module: &Module<'_>) -> Vec<Diagnostic> {
    let mut bindings = Bindings::default();
    bindings.visit_body(module.body());
    if bindings.dynamic {
        return Vec::new();
    }
    let future_annotations = module.body().iter().any(|s| {
        matches!(s, Stmt::ImportFrom(i) if i.module.as_ref().is_some_and(|m| m.as_str() == "__future__")
            && i.names.iter().any(|a| a.name.as_str() == "annotations"))
    });
    let mut reads = Reads {
        bound: &bindings.names,
        future_annotations,
        in_function: 0,
        found: Vec::new(),
    };
    reads.visit_body(module.body());
    let mut reported = HashSet::new();
    let mut found = reads.found;
    found.extend(read_before_binding(
        module.body(),
        &bindings.globals,
        future_annotations,
    ));
    found.sort_by_key(|e| e.range().start());
    found
        .into_iter()
        .filter(|e| reported.insert(e.as_name_expr().map(|n| n.id.to_string())))
        .map(|e| {
            let name = e.as_name_expr().map(|n| n.id.as_str()).unwrap_or_default();
            let hint = USUAL_HOMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, import)| format!("; add `{import}`"))
                .or_else(|| super::stdlib::contains(name).then(|| format!("; add `import {name}`")))
                .unwrap_or_else(|| "; define or import it".to_owned());
            let severity = if module.is_test() {
                Severity::Warning
            } else {
                Severity::Error
            };
            let message = if bindings.names.contains(name) {
                format!(
                    "`{name}` is read when {} is imported, before any statement binds it: a NameError; \
                     define it before this line, or move the code that reads it into a function",
                    module.path()
                )
            } else {
                format!("`{name}` is not defined anywhere in {}{hint}", module.path())
            };
            module.at(e, severity, "name-undefined", message)
        })
        .collect()
}

/// Reads that run when the module is imported (top-level statements,
/// decorators, default values, base classes, eager annotations) of names
/// that only a later statement binds: Python raises NameError on import,
/// as ruff's F821 also reports. Conservative: only statements that always
/// run when reached are read (not the bodies of `if`, loops, `try`, `with`
/// or classes); a name bound anywhere in an earlier statement, by a walrus
/// in the same statement, or through `global` in some function counts as
/// bound; lambda bodies and comprehension bodies are not read.
fn read_before_binding<'a>(body: &'a [Stmt], globals: &HashSet<String>, future_annotations: bool) -> Vec<&'a Expr> {
    let mut bound: HashSet<String> = globals.clone();
    let mut found = Vec::new();
    for stmt in body {
        let mut here = Bindings::default();
        here.visit_stmt(stmt);
        let mut eager = EagerReads {
            future_annotations,
            reads: Vec::new(),
            walrus: HashSet::new(),
        };
        eager.visit_top_level(stmt);
        for read in eager.reads {
            let Expr::Name(n) = read else { continue };
            let name = n.id.as_str();
            if !bound.contains(name) && !eager.walrus.contains(name) && !BUILTINS.contains(&name) {
                found.push(read);
            }
        }
        bound.extend(here.names);
    }
    found
}

/// The name reads of one top-level statement that run when it runs.
struct EagerReads<'a> {
    future_annotations: bool,
    reads: Vec<&'a Expr>,
    /// Names a walrus binds within the statement, in whatever order.
    walrus: HashSet<String>,
}

impl<'a> EagerReads<'a> {
    fn visit_top_level(&mut self, stmt: &'a Stmt) {
        match stmt {
            Stmt::Expr(_) | Stmt::Assign(_) | Stmt::Assert(_) | Stmt::Delete(_) | Stmt::Raise(_) => {
                visitor::walk_stmt(self, stmt);
            }
            // `x += 1` reads `x` first, though its target is a store.
            Stmt::AugAssign(a) => {
                if let Expr::Name(_) = &*a.target {
                    self.reads.push(&a.target);
                }
                visitor::walk_stmt(self, stmt);
            }
            Stmt::AnnAssign(a) => {
                if let Some(v) = &a.value {
                    self.visit_expr(v);
                }
                self.visit_expr(&a.target);
            }
            Stmt::FunctionDef(f) => {
                for d in &f.decorator_list {
                    self.visit_decorator(d);
                }
                for p in f.parameters.iter_non_variadic_params() {
                    if let Some(default) = &p.default {
                        self.visit_expr(default);
                    }
                }
                if !self.future_annotations && f.type_params.is_none() {
                    for p in &f.parameters {
                        if let Some(annotation) = p.annotation() {
                            self.visit_expr(annotation);
                        }
                    }
                    if let Some(r) = &f.returns {
                        self.visit_expr(r);
                    }
                }
            }
            Stmt::ClassDef(c) => {
                for d in &c.decorator_list {
                    self.visit_decorator(d);
                }
                if c.type_params.is_none()
                    && let Some(arguments) = &c.arguments
                {
                    self.visit_arguments(arguments);
                }
            }
            _ => {}
        }
    }
}

impl<'a> Visitor<'a> for EagerReads<'a> {
    fn visit_expr(&mut self, expr: &'a Expr) {
        match expr {
            Expr::Name(n) if n.ctx == ExprContext::Load => self.reads.push(expr),
            Expr::Named(n) => {
                if let Expr::Name(target) = &*n.target {
                    self.walrus.insert(target.id.to_string());
                }
                self.visit_expr(&n.value);
            }
            // A lambda's body runs when it is called; its defaults now.
            Expr::Lambda(l) => {
                if let Some(parameters) = &l.parameters {
                    for p in parameters.iter_non_variadic_params() {
                        if let Some(default) = &p.default {
                            self.visit_expr(default);
                        }
                    }
                }
            }
            // Only the first iterable is evaluated in the module's scope.
            Expr::ListComp(c) => self.visit_expr(&c.generators[0].iter),
            Expr::SetComp(c) => self.visit_expr(&c.generators[0].iter),
            Expr::DictComp(c) => self.visit_expr(&c.generators[0].iter),
            Expr::Generator(c) => self.visit_expr(&c.generators[0].iter),
            _ => visitor::walk_expr(self, expr),
        }
    }
}

/// Every name the module binds, in any scope, and whether it reaches for
/// names dynamically (then no read is judged).
#[derive(Default)]
struct Bindings {
    names: HashSet<String>,
    /// Names some function declares `global`: calling it may bind them
    /// at module level at any moment.
    globals: HashSet<String>,
    dynamic: bool,
}

impl<'a> Visitor<'a> for Bindings {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        match stmt {
            Stmt::FunctionDef(f) => {
                self.names.insert(f.name.to_string());
            }
            Stmt::ClassDef(c) => {
                self.names.insert(c.name.to_string());
            }
            Stmt::Import(i) => {
                for a in &i.names {
                    let local = a.asname.as_ref().map_or_else(
                        || a.name.as_str().split('.').next().unwrap_or_default().to_owned(),
                        ToString::to_string,
                    );
                    self.names.insert(local);
                }
            }
            Stmt::ImportFrom(i) => {
                for a in &i.names {
                    if a.name.as_str() == "*" {
                        self.dynamic = true;
                    }
                    self.names.insert(a.asname.as_ref().unwrap_or(&a.name).to_string());
                }
            }
            Stmt::Global(g) => {
                self.names.extend(g.names.iter().map(ToString::to_string));
                self.globals.extend(g.names.iter().map(ToString::to_string));
            }
            Stmt::Nonlocal(n) => self.names.extend(n.names.iter().map(ToString::to_string)),
            _ => {}
        }
        visitor::walk_stmt(self, stmt);
    }

    fn visit_parameter(&mut self, parameter: &'a Parameter) {
        self.names.insert(parameter.name.to_string());
        visitor::walk_parameter(self, parameter);
    }

    fn visit_except_handler(&mut self, handler: &'a ExceptHandler) {
        let ExceptHandler::ExceptHandler(h) = handler;
        if let Some(name) = &h.name {
            self.names.insert(name.to_string());
        }
        visitor::walk_except_handler(self, handler);
    }

    fn visit_pattern(&mut self, pattern: &'a Pattern) {
        match pattern {
            Pattern::MatchAs(p) => self.names.extend(p.name.iter().map(ToString::to_string)),
            Pattern::MatchStar(p) => self.names.extend(p.name.iter().map(ToString::to_string)),
            Pattern::MatchMapping(p) => self.names.extend(p.rest.iter().map(ToString::to_string)),
            _ => {}
        }
        visitor::walk_pattern(self, pattern);
    }

    fn visit_type_param(&mut self, type_param: &'a TypeParam) {
        let name = match type_param {
            TypeParam::TypeVar(t) => &t.name,
            TypeParam::ParamSpec(t) => &t.name,
            TypeParam::TypeVarTuple(t) => &t.name,
        };
        self.names.insert(name.to_string());
        visitor::walk_type_param(self, type_param);
    }

    fn visit_expr(&mut self, expr: &'a Expr) {
        if let Expr::Name(n) = expr {
            match n.ctx {
                ExprContext::Store => {
                    self.names.insert(n.id.to_string());
                }
                ExprContext::Load if matches!(n.id.as_str(), "globals" | "locals" | "vars" | "exec") => {
                    self.dynamic = true;
                }
                _ => {}
            }
        }
        visitor::walk_expr(self, expr);
    }
}

/// Reads of names bound nowhere, in source order.
struct Reads<'b, 'a> {
    bound: &'b HashSet<String>,
    future_annotations: bool,
    /// Depth of function bodies: a local variable's annotation is never
    /// evaluated.
    in_function: usize,
    found: Vec<&'a Expr>,
}

impl<'a> Visitor<'a> for Reads<'_, 'a> {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        match stmt {
            Stmt::FunctionDef(f) => {
                for d in &f.decorator_list {
                    self.visit_decorator(d);
                }
                if let Some(tp) = &f.type_params {
                    self.visit_type_params(tp);
                }
                self.visit_parameters(&f.parameters);
                if let Some(r) = &f.returns {
                    self.visit_annotation(r);
                }
                self.in_function += 1;
                self.visit_body(&f.body);
                self.in_function -= 1;
            }
            Stmt::AnnAssign(a) if self.in_function > 0 => {
                self.visit_expr(&a.target);
                if let Some(v) = &a.value {
                    self.visit_expr(v);
                }
            }
            _ => visitor::walk_stmt(self, stmt),
        }
    }

    fn visit_annotation(&mut self, expr: &'a Expr) {
        if !self.future_annotations {
            visitor::walk_annotation(self, expr);
        }
    }

    fn visit_expr(&mut self, expr: &'a Expr) {
        if let Expr::Name(n) = expr
            && n.ctx == ExprContext::Load
            && !self.bound.contains(n.id.as_str())
            && !BUILTINS.contains(&n.id.as_str())
        {
            self.found.push(expr);
        }
        visitor::walk_expr(self, expr);
    }
}

/// Module-level functions whose body does nothing.
fn empty_bodies(module: &Module<'_>, entry_point: Option<&str>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for stmt in module.body() {
        let Stmt::FunctionDef(f) = stmt else { continue };
        let stub_decorator = f.decorator_list.iter().any(|d| {
            let name = match &d.expression {
                Expr::Name(n) => n.id.as_str(),
                Expr::Attribute(a) => a.attr.as_str(),
                _ => "",
            };
            matches!(name, "overload" | "abstractmethod")
        });
        if stub_decorator || !does_nothing(&f.body) {
            continue;
        }
        let name = f.name.as_str();
        if entry_point != Some(name) {
            // Elsewhere a body that does nothing can be meant (a route
            // answering 204, a hook).
            continue;
        }
        let message =
            format!("`{name}` has no implementation: its body is only a docstring, `pass` or `...`; write the code");
        out.push(module.error_at(&f.name, "empty-body", message));
    }
    out
}

/// A body of only a docstring, `pass` and `...`.
fn does_nothing(body: &[Stmt]) -> bool {
    body.iter().all(|s| match s {
        Stmt::Pass(_) => true,
        Stmt::Expr(e) => matches!(*e.value, Expr::StringLiteral(_) | Expr::EllipsisLiteral(_)),
        _ => false,
    })
}

/// Imports of the module by itself, at any depth.
fn self_imports(module: &Module<'_>) -> Vec<Diagnostic> {
    struct Finder<'a> {
        name: String,
        package: String,
        found: Vec<&'a Stmt>,
    }
    impl<'a> Visitor<'a> for Finder<'a> {
        fn visit_stmt(&mut self, stmt: &'a Stmt) {
            let itself = match stmt {
                Stmt::Import(i) => i.names.iter().any(|a| a.name.as_str() == self.name),
                Stmt::ImportFrom(i) => {
                    let from = i
                        .module
                        .as_ref()
                        .map(ruff_python_ast::Identifier::as_str)
                        .unwrap_or_default();
                    let absolute = if i.level == 0 {
                        from.to_owned()
                    } else {
                        // `level` dots: the package, then up one per extra dot.
                        let mut base: Vec<&str> = self.package.split('.').filter(|p| !p.is_empty()).collect();
                        for _ in 1..i.level {
                            base.pop();
                        }
                        base.into_iter()
                            .chain((!from.is_empty()).then_some(from))
                            .collect::<Vec<_>>()
                            .join(".")
                    };
                    absolute == self.name
                        || i.names
                            .iter()
                            .any(|a| !absolute.is_empty() && format!("{absolute}.{}", a.name.as_str()) == self.name)
                        || (absolute.is_empty() && i.names.iter().any(|a| a.name.as_str() == self.name))
                }
                _ => false,
            };
            if itself {
                self.found.push(stmt);
            }
            visitor::walk_stmt(self, stmt);
        }
    }
    let mut finder = Finder {
        name: module.name(),
        package: module.package(),
        found: Vec::new(),
    };
    if finder.name.is_empty() || module.path().ends_with("__init__.py") {
        return Vec::new();
    }
    finder.visit_body(module.body());
    finder
        .found
        .into_iter()
        .map(|stmt| {
            module.error_at(
                stmt,
                "import-self",
                format!(
                    "{} imports itself (`{}`); its own names are already in scope, so remove this import",
                    module.path(),
                    module.name()
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::File;

    fn findings(path: &str, source: &str, entry: Option<&str>) -> Vec<(String, u32, u32, Severity)> {
        let file = File::new(path, source);
        let module = Module::parse(&file);
        assert!(module.has_valid_syntax(), "{source}");
        check(&module, entry)
            .into_iter()
            .map(|d| (d.rule, d.line, d.col, d.severity))
            .collect()
    }

    #[test]
    fn a_name_bound_nowhere_is_reported_at_its_first_use_with_where_it_lives() {
        let source = "def evens(xs: List[int]) -> List[int]:\n    return [x for x in xs if x % 2 == 0]\n";
        let file = File::new("solution.py", source);
        let d = check(&Module::parse(&file), Some("evens"));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].rule.as_str(), d[0].line, d[0].col), ("name-undefined", 1, 15));
        assert!(
            d[0].message.contains("add `from typing import List`"),
            "{}",
            d[0].message
        );
        let d = findings("solution.py", "def f(x):\n    return math.sqrt(x) + helper(x)\n", None);
        assert_eq!(
            d,
            vec![
                ("name-undefined".into(), 2, 12, Severity::Error),
                ("name-undefined".into(), 2, 27, Severity::Error)
            ]
        );
    }

    #[test]
    fn names_bound_in_any_way_or_not_evaluated_are_not_reported() {
        let source = r#"
from __future__ import annotations
import os.path
from collections import Counter as C
def f(a, *args, b=1, **kw) -> Later:
    global G
    G = 1
    x: Unknown = 2
    try:
        pass
    except ValueError as err:
        print(err)
    with open("x") as fh, open("y") as (g, h):
        pass
    y = [i for i in range(3) if (j := i)]
    match a:
        case {"k": v, **rest}: return v, rest
        case [first, *others]: return first, others
        case Point(x=px) as pt: return px, pt
    return os, C, lambda q: q, __name__, __file__, G, j, later_defined, Later
def later_defined(): return 1
class Later:
    def m(self): return __class__
"#;
        assert_eq!(
            findings("solution.py", source, None),
            vec![("name-undefined".into(), 19, 14, Severity::Error)]
        );
        // A star import or dynamic names: nothing is judged.
        assert!(findings("solution.py", "from math import *\ndef f(x): return sqrt(x)\n", None).is_empty());
        assert!(findings("solution.py", "globals()['g'] = 1\ndef f(): return g\n", None).is_empty());
    }

    #[test]
    fn a_name_read_on_import_before_any_statement_binds_it_is_reported() {
        // A real SmolLM2 answer: the module reads `test_reverse` on import.
        let source =
            "def reverse(s: str) -> str:\n    return s[::-1]\n\ntest_reverse = test_reverse.__name__ + \".py\"\n";
        let d = findings("solution.py", source, Some("reverse"));
        assert_eq!(d, vec![("name-undefined".into(), 4, 16, Severity::Error)]);
        let file = File::new("solution.py", source);
        let message = &check(&Module::parse(&file), None)[0].message;
        assert!(message.contains("before any statement binds it"), "{message}");
        // Decorators, defaults, bases, eager annotations and `+=` run on import.
        let source = "@app.get('/')\ndef root(limit=LIMIT) -> Item:\n    return 1\nclass B(Base): pass\ncount += 1\napp = 1\nLIMIT = 2\nclass Item: pass\nclass Base: pass\ncount = 0\n";
        let names: Vec<(u32, u32)> = findings("app/main.py", source, None)
            .iter()
            .map(|d| (d.1, d.2))
            .collect();
        assert_eq!(names, vec![(1, 2), (2, 16), (2, 26), (4, 9), (5, 1)]);
    }

    #[test]
    fn reads_that_may_not_run_on_import_or_follow_a_binding_are_not_reported() {
        let source = r"
def f():
    return later
later = 1
square = lambda x: x * factor
values = [v * factor for v in range(3)]
if later:
    print(not_yet)
try:
    print(maybe)
except NameError:
    pass
class K:
    attr = helper
(n := 3) and print(n)
def setup():
    global configured
    configured = True
print(configured)
factor = 2
maybe = not_yet = helper = 0
";
        assert_eq!(findings("solution.py", source, None), vec![]);
        let future = "from __future__ import annotations
def f(x: Node) -> Node: return x
class Node: pass
";
        assert_eq!(findings("solution.py", future, None), vec![]);
    }

    #[test]
    fn an_entry_point_of_only_a_docstring_or_pass_is_an_error_and_other_stubs_are_left_alone() {
        let source = "def add(a, b):\n    \"\"\"Add.\"\"\"\n\ndef helper():\n    pass\n\ndef real():\n    return 1\n";
        assert_eq!(
            findings("solution.py", source, Some("add")),
            vec![("empty-body".into(), 1, 5, Severity::Error)]
        );
        let stubs = "from typing import overload\n@overload\ndef f(x: int) -> int: ...\ndef f(x):\n    return x\n";
        assert!(findings("solution.py", stubs, Some("f")).is_empty());
    }

    #[test]
    fn a_module_importing_itself_is_reported_at_the_import() {
        assert_eq!(
            findings(
                "solution.py",
                "from solution import helper\ndef helper(): return 1\n",
                None
            ),
            vec![("import-self".into(), 1, 1, Severity::Error)]
        );
        assert_eq!(
            findings(
                "solution.py",
                "def f():\n    import solution\n    return solution\n",
                None
            ),
            vec![("import-self".into(), 2, 5, Severity::Error)]
        );
        assert_eq!(
            findings(
                "app/main.py",
                "from . import main\nfrom .main import x\nfrom app.main import y\nx = y = 1\n",
                None
            )
            .len(),
            3
        );
        assert!(
            findings(
                "app/main.py",
                "from . import routes\nfrom app.models import Note\n",
                None
            )
            .is_empty()
        );
    }
}
