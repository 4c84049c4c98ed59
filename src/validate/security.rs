//! The security policy, checked on the syntax tree: code from strings
//! (`eval`, `exec`, `compile`), dynamic imports (`__import__`, `importlib`),
//! shell commands (`os.system`, `os.popen`, `subprocess` with `shell=True`),
//! unsafe deserialisation (`pickle`, `marshal`, `shelve`) and native code
//! (`ctypes`).
//!
//! Names are resolved the way Python binds them, not matched as text: every
//! import (`import subprocess as sp`, `from os import system as run`, star
//! imports of the modules concerned) and every plain alias assignment
//! (`run = os.system`) is followed, a builtin counts only when the module
//! does not bind that name itself, and `getattr(os, "system")` is the same
//! as `os.system`. So a word in a comment, string or docstring never
//! triggers a rule, and a renamed import always does. Type annotations are
//! not uses and are skipped.

use std::collections::{HashMap, HashSet};

use ruff_python_ast::visitor::{self, Visitor};
use ruff_python_ast::{ExceptHandler, Expr, ExprContext, Parameter, Stmt};
use ruff_text_size::Ranged;

use crate::report::{Diagnostic, Severity};

use super::imports::{self, Binding};
use super::python::{Module, string_value};

/// How strictly each rule is enforced for one module.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `security-eval`.
    pub eval: Severity,
    /// Every other rule.
    pub other: Severity,
}

/// Qualified names that are dangerous to use at all: name, rule, why.
const DANGEROUS: [(&str, &str, &str); 27] = [
    (
        "builtins.eval",
        "security-eval",
        "runs a string as code; parse the input instead (`ast.literal_eval`, `json.loads`, explicit arithmetic)",
    ),
    (
        "builtins.exec",
        "security-eval",
        "runs a string as code; call the code directly",
    ),
    (
        "builtins.compile",
        "security-eval",
        "turns a string into code; call the code directly",
    ),
    (
        "builtins.__import__",
        "security-import",
        "imports a module chosen at run time; use a plain `import` statement",
    ),
    (
        "importlib.import_module",
        "security-import",
        "imports a module chosen at run time; use a plain `import` statement",
    ),
    (
        "importlib.__import__",
        "security-import",
        "imports a module chosen at run time; use a plain `import` statement",
    ),
    (
        "importlib.reload",
        "security-import",
        "re-executes a module at run time; use plain imports",
    ),
    (
        "importlib.util.spec_from_file_location",
        "security-import",
        "loads code from a file path; use a plain `import` statement",
    ),
    (
        "importlib.util.module_from_spec",
        "security-import",
        "creates a module from a loader at run time; use a plain `import` statement",
    ),
    (
        "importlib.machinery.SourceFileLoader",
        "security-import",
        "loads code from a file path; use a plain `import` statement",
    ),
    (
        "imp.load_source",
        "security-import",
        "loads code from a file path; use a plain `import` statement",
    ),
    (
        "imp.load_module",
        "security-import",
        "loads code at run time; use a plain `import` statement",
    ),
    (
        "runpy.run_path",
        "security-import",
        "runs code from a file path; use a plain `import` statement",
    ),
    (
        "runpy.run_module",
        "security-import",
        "runs a module chosen at run time; use a plain `import` statement",
    ),
    (
        "os.system",
        "security-shell",
        "runs a shell command; generated code must not start processes",
    ),
    (
        "os.popen",
        "security-shell",
        "runs a shell command; generated code must not start processes",
    ),
    (
        "posix.system",
        "security-shell",
        "runs a shell command; generated code must not start processes",
    ),
    (
        "subprocess.getoutput",
        "security-shell",
        "runs a shell command; generated code must not start processes",
    ),
    (
        "subprocess.getstatusoutput",
        "security-shell",
        "runs a shell command; generated code must not start processes",
    ),
    (
        "asyncio.create_subprocess_shell",
        "security-shell",
        "runs a shell command; generated code must not start processes",
    ),
    (
        "pickle.loads",
        "security-deserialize",
        "can run arbitrary code hidden in the data; use `json`",
    ),
    (
        "pickle.load",
        "security-deserialize",
        "can run arbitrary code hidden in the data; use `json`",
    ),
    (
        "pickle.Unpickler",
        "security-deserialize",
        "can run arbitrary code hidden in the data; use `json`",
    ),
    (
        "_pickle.loads",
        "security-deserialize",
        "can run arbitrary code hidden in the data; use `json`",
    ),
    (
        "marshal.loads",
        "security-deserialize",
        "can crash or subvert the interpreter on crafted data; use `json`",
    ),
    (
        "marshal.load",
        "security-deserialize",
        "can crash or subvert the interpreter on crafted data; use `json`",
    ),
    (
        "shelve.open",
        "security-deserialize",
        "stores and loads values with pickle, which can run arbitrary code; use `json` or `sqlite3`",
    ),
];

/// Functions that run a shell only when given `shell=` a true value.
const SHELL_OPTIONAL: [&str; 5] = [
    "subprocess.run",
    "subprocess.call",
    "subprocess.check_call",
    "subprocess.check_output",
    "subprocess.Popen",
];

/// Builtins the rules care about; a bare name resolves to one of these only
/// when the module does not bind it.
const BUILTINS: [&str; 4] = ["eval", "exec", "compile", "__import__"];

/// Modules whose star import brings dangerous names into scope.
const STAR_SOURCES: [&str; 6] = ["os", "subprocess", "pickle", "marshal", "importlib", "shelve"];

/// Top-level modules that give access to native code.
const NATIVE: [&str; 2] = ["ctypes", "_ctypes"];

/// Checks `module` against the policy.
pub fn check(module: &Module<'_>, policy: Policy) -> Vec<Diagnostic> {
    let mut names = Names::default();
    names.collect(module.body());
    let mut binder = Binder { bound: HashSet::new() };
    binder.visit_body(module.body());
    names.bound = binder.bound;
    names.collect_aliases(module.body());
    let mut checker = Checker {
        module,
        names: &names,
        policy,
        out: Vec::new(),
    };
    checker.visit_body(module.body());
    let mut out = checker.out;
    out.extend(native_imports(module, module.body(), policy));
    out
}

/// What each local name refers to.
#[derive(Default)]
struct Names {
    /// Local name → qualified name, from imports.
    imports: HashMap<String, String>,
    /// Local name → dangerous qualified name, from `x = os.system`.
    aliases: HashMap<String, String>,
    /// Modules star-imported.
    stars: Vec<String>,
    /// Names bound by anything other than an import (def, class,
    /// assignment, parameter, loop or `with` target, `except … as`).
    bound: HashSet<String>,
}

impl Names {
    fn collect(&mut self, body: &[Stmt]) {
        for binding in imports::bindings(body, None) {
            match binding {
                Binding::Name { local, target } => {
                    self.imports.insert(local, target);
                }
                Binding::Star { module } => {
                    if STAR_SOURCES.contains(&module.as_str()) {
                        self.stars.push(module);
                    }
                }
            }
        }
    }

    /// `name = <dangerous reference>`, followed to a fixpoint so chains
    /// (`a = os.system; b = a`) resolve too.
    fn collect_aliases(&mut self, body: &[Stmt]) {
        let mut assignments = Vec::new();
        let mut collector = AssignCollector { out: &mut assignments };
        collector.visit_body(body);
        for _ in 0..4 {
            let mut changed = false;
            for (target, value) in &assignments {
                if let Some(q) = self.resolve(value).filter(|q| is_dangerous(q))
                    && self.aliases.get(target) != Some(&q)
                {
                    self.aliases.insert(target.clone(), q);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// The qualified name an expression refers to, if it is a chain of
    /// attributes on a name whose binding is known.
    fn resolve(&self, expr: &Expr) -> Option<String> {
        match expr {
            Expr::Name(n) => {
                let id = n.id.as_str();
                if let Some(q) = self.aliases.get(id).or_else(|| self.imports.get(id)) {
                    return Some(q.clone());
                }
                if self.bound.contains(id) {
                    return None;
                }
                if id == "__builtins__" {
                    return Some("builtins".into());
                }
                if BUILTINS.contains(&id) {
                    return Some(format!("builtins.{id}"));
                }
                self.stars
                    .iter()
                    .map(|m| format!("{m}.{id}"))
                    .find(|q| is_dangerous(q) || SHELL_OPTIONAL.contains(&q.as_str()))
            }
            Expr::Attribute(a) => self.resolve(&a.value).map(|base| format!("{base}.{}", a.attr.as_str())),
            _ => None,
        }
    }
}

fn is_dangerous(q: &str) -> bool {
    DANGEROUS.iter().any(|(name, _, _)| *name == q)
}

/// Every name bound by something other than an import.
struct Binder {
    bound: HashSet<String>,
}

impl<'a> Visitor<'a> for Binder {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        match stmt {
            Stmt::FunctionDef(f) => {
                self.bound.insert(f.name.to_string());
            }
            Stmt::ClassDef(c) => {
                self.bound.insert(c.name.to_string());
            }
            _ => {}
        }
        visitor::walk_stmt(self, stmt);
    }

    fn visit_parameter(&mut self, parameter: &'a Parameter) {
        self.bound.insert(parameter.name.to_string());
        visitor::walk_parameter(self, parameter);
    }

    fn visit_except_handler(&mut self, handler: &'a ExceptHandler) {
        let ExceptHandler::ExceptHandler(h) = handler;
        if let Some(name) = &h.name {
            self.bound.insert(name.to_string());
        }
        visitor::walk_except_handler(self, handler);
    }

    fn visit_expr(&mut self, expr: &'a Expr) {
        if let Expr::Name(n) = expr
            && n.ctx == ExprContext::Store
        {
            self.bound.insert(n.id.to_string());
        }
        visitor::walk_expr(self, expr);
    }
}

/// `name = value` with a single name target, anywhere.
struct AssignCollector<'o, 'a> {
    out: &'o mut Vec<(String, &'a Expr)>,
}

impl<'a> Visitor<'a> for AssignCollector<'_, 'a> {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        if let Some((target, value)) = alias_assignment(stmt) {
            self.out.push((target.to_owned(), value));
        }
        visitor::walk_stmt(self, stmt);
    }
}

fn alias_assignment(stmt: &Stmt) -> Option<(&str, &Expr)> {
    let (target, value) = match stmt {
        Stmt::Assign(a) if a.targets.len() == 1 => (&a.targets[0], &*a.value),
        Stmt::AnnAssign(a) => (&*a.target, a.value.as_deref()?),
        _ => return None,
    };
    let name = target.as_name_expr()?;
    matches!(value, Expr::Name(_) | Expr::Attribute(_)).then_some((name.id.as_str(), value))
}

struct Checker<'c, 'm> {
    module: &'c Module<'m>,
    names: &'c Names,
    policy: Policy,
    out: Vec<Diagnostic>,
}

impl Checker<'_, '_> {
    fn report(&mut self, node: &impl Ranged, qualified: &str, rule: &str, why: &str) {
        let written = &self.module.source()[node.range()];
        let shown = qualified.strip_prefix("builtins.").unwrap_or(qualified);
        let subject = if written == shown {
            format!("`{shown}`")
        } else {
            format!("`{written}` is `{shown}`, which")
        };
        let severity = if rule == "security-eval" {
            self.policy.eval
        } else {
            self.policy.other
        };
        self.out
            .push(self.module.at(node, severity, rule, format!("{subject} {why}")));
    }

    fn check_reference(&mut self, expr: &Expr) -> bool {
        let Some(q) = self.names.resolve(expr) else {
            return false;
        };
        let Some((_, rule, why)) = DANGEROUS.iter().find(|(name, _, _)| *name == q) else {
            return false;
        };
        self.report(expr, &q, rule, why);
        true
    }
}

impl<'a> Visitor<'a> for Checker<'_, '_> {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        // `run = os.system` is reported where `run` is used, not here.
        if let Some((target, _)) = alias_assignment(stmt)
            && self.names.aliases.contains_key(target)
        {
            return;
        }
        visitor::walk_stmt(self, stmt);
    }

    fn visit_annotation(&mut self, _: &'a Expr) {}

    fn visit_expr(&mut self, expr: &'a Expr) {
        match expr {
            Expr::Name(n) if n.ctx == ExprContext::Load => {
                self.check_reference(expr);
            }
            // A flagged chain is not walked further: its prefix (`os` of
            // `os.system`) is not a finding of its own.
            Expr::Attribute(a) if a.ctx == ExprContext::Load && self.check_reference(expr) => return,
            Expr::Call(call) => {
                let callee = self.names.resolve(&call.func);
                if let Some(q) = callee.as_deref().filter(|q| SHELL_OPTIONAL.contains(q))
                    && let Some(shell) = call.arguments.find_keyword("shell")
                    && !is_false_literal(&shell.value)
                {
                    let written = &self.module.source()[call.func.range()];
                    let message = format!(
                        "`{written}(..., shell=…)` runs its command through the shell{}; pass an argument list without `shell=True`",
                        if written == q {
                            String::new()
                        } else {
                            format!(" (`{written}` is `{q}`)")
                        }
                    );
                    let severity = self.policy.other;
                    self.out
                        .push(self.module.at(shell, severity, "security-shell", message));
                }
                let is_getattr = call.func.as_name_expr().is_some_and(|n| n.id.as_str() == "getattr")
                    && !self.names.bound.contains("getattr")
                    && !self.names.imports.contains_key("getattr");
                if is_getattr
                    && let (Some(target), Some(attr)) = (
                        call.arguments.find_positional(0),
                        call.arguments.find_positional(1).and_then(string_value),
                    )
                    && let Some(base) = self.names.resolve(target)
                {
                    let q = format!("{base}.{attr}");
                    if let Some((_, rule, why)) = DANGEROUS.iter().find(|(name, _, _)| *name == q) {
                        self.report(expr, &q, rule, why);
                    }
                }
            }
            _ => {}
        }
        visitor::walk_expr(self, expr);
    }
}

fn is_false_literal(expr: &Expr) -> bool {
    match expr {
        Expr::BooleanLiteral(b) => !b.value,
        Expr::NoneLiteral(_) => true,
        Expr::NumberLiteral(n) => matches!(&n.value, ruff_python_ast::Number::Int(i) if i.as_u8() == Some(0)),
        _ => false,
    }
}

/// `import ctypes` and `from ctypes import …`, anywhere in the module.
fn native_imports(module: &Module<'_>, body: &[Stmt], policy: Policy) -> Vec<Diagnostic> {
    struct Finder<'c, 'm> {
        module: &'c Module<'m>,
        policy: Policy,
        out: Vec<Diagnostic>,
    }
    impl<'a> Visitor<'a> for Finder<'_, '_> {
        fn visit_stmt(&mut self, stmt: &'a Stmt) {
            let mut flag = |name: &str, node: &dyn Fn() -> ruff_text_size::TextRange| {
                let top = name.split('.').next().unwrap_or(name);
                if NATIVE.contains(&top) {
                    let range = node();
                    self.out.push(self.module.at(
                        &range,
                        self.policy.other,
                        "security-ctypes",
                        format!("`{name}` calls native code and bypasses Python's memory safety; use pure Python"),
                    ));
                }
            };
            match stmt {
                Stmt::Import(i) => {
                    for a in &i.names {
                        flag(a.name.as_str(), &|| a.name.range());
                    }
                }
                Stmt::ImportFrom(i) if i.level == 0 => {
                    if let Some(m) = &i.module {
                        flag(m.as_str(), &|| m.range());
                    }
                }
                _ => visitor::walk_stmt(self, stmt),
            }
        }
    }
    let mut finder = Finder {
        module,
        policy,
        out: Vec::new(),
    };
    finder.visit_body(body);
    finder.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::File;

    const STRICT: Policy = Policy {
        eval: Severity::Error,
        other: Severity::Error,
    };

    fn found(source: &str) -> Vec<(String, u32, u32)> {
        let file = File::new("app/x.py", source);
        check(&Module::parse(&file), STRICT)
            .into_iter()
            .map(|d| (d.rule, d.line, d.col))
            .collect()
    }

    #[test]
    fn aliases_of_every_kind_are_followed() {
        assert_eq!(
            found("from os import system as run\nrun('ls')\n"),
            [("security-shell".into(), 2, 1)]
        );
        assert_eq!(
            found("import os\nrun = os.system\nrun('ls')\n"),
            [("security-shell".into(), 3, 1)]
        );
        assert_eq!(
            found("import pickle as p\np.loads(b'')\n"),
            [("security-deserialize".into(), 2, 1)]
        );
        assert_eq!(
            found("import subprocess as sp\nsp.run('ls', shell=True)\n"),
            [("security-shell".into(), 2, 14)]
        );
        assert_eq!(
            found("from os import *\nsystem('ls')\n"),
            [("security-shell".into(), 2, 1)]
        );
        assert_eq!(
            found("import os\ngetattr(os, 'system')('ls')\n"),
            [("security-shell".into(), 2, 1)]
        );
    }

    #[test]
    fn shadowed_builtins_and_other_modules_methods_are_not_flagged() {
        assert!(found("def eval(x):\n    return x\neval('1')\n").is_empty());
        assert!(found("import re\npattern = re.compile('a+')\n").is_empty());
        assert!(found("import subprocess\nsubprocess.run(['ls'], shell=False)\n").is_empty());
        assert!(found("import json\njson.loads('{}')\n").is_empty());
        assert!(found("import pickle\ndef f(u: pickle.Unpickler) -> None:\n    return None\n").is_empty());
    }
}
