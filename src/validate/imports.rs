//! The import allow-list, read from the syntax tree of every module.
//!
//! An import is allowed when it names the answer's own modules (absolute or
//! relative, and they must exist), the Python 3.11 standard library, or — for
//! services only — a package the sandbox runtime installs. A service's
//! third-party imports must also be installed by its own `requirements.txt`
//! (the supply-chain gate); function solutions may use the standard library
//! only, as their prompt says.
//!
//! Imports that cannot run on Python 3.11 (`if sys.version_info < (3, 11):`)
//! or never run (`if TYPE_CHECKING:`) are not judged; optional imports (in a
//! `try` that catches `ImportError`, or its fallback handler) are reported as
//! warnings, since the code works without them.
//!
//! [`bindings`] is the other reading of the same statements: which names
//! they bind to which modules, for the checks that follow a name to what it
//! stands for (routes, security).

use std::collections::BTreeSet;

use ruff_python_ast::visitor::{self, Visitor};
use ruff_python_ast::{CmpOp, ExceptHandler, Expr, Number, Stmt, StmtImportFrom};
use ruff_text_size::{Ranged, TextRange};

use crate::report::{Diagnostic, Severity};

use super::layout::module_name;
use super::python::Module;
use super::{packages, stdlib};

/// The Python version the sandbox runs, for `sys.version_info` tests.
const PYTHON: (i64, i64) = (3, 11);

/// One imported module, as written.
#[derive(Debug, Clone)]
pub struct Import {
    /// The dotted module name (`None` for `from . import x`).
    pub module: Option<String>,
    /// `from . import x` → `["x"]`: what a from-import takes from the module.
    pub names: Vec<String>,
    /// Leading dots of a relative import.
    pub level: u32,
    /// Where the module name is written.
    pub range: TextRange,
    /// In a `try` that handles `ImportError`, or its handler.
    pub optional: bool,
}

impl Import {
    /// The first component of an absolute import.
    pub fn top(&self) -> Option<&str> {
        (self.level == 0)
            .then(|| self.module.as_deref().and_then(|m| m.split('.').next()))
            .flatten()
    }
}

/// Every import a module can execute on Python 3.11, function bodies included.
pub fn collect(module: &Module<'_>) -> Vec<Import> {
    let mut out = Vec::new();
    walk(module.body(), false, &mut out);
    out
}

fn walk(body: &[Stmt], optional: bool, out: &mut Vec<Import>) {
    for stmt in body {
        match stmt {
            Stmt::Import(i) => out.extend(i.names.iter().map(|a| Import {
                module: Some(a.name.to_string()),
                names: Vec::new(),
                level: 0,
                range: a.name.range(),
                optional,
            })),
            Stmt::ImportFrom(i) => out.push(Import {
                module: i.module.as_ref().map(ToString::to_string),
                names: i.names.iter().map(|a| a.name.to_string()).collect(),
                level: i.level,
                range: i.module.as_ref().map_or(i.range, Ranged::range),
                optional,
            }),
            Stmt::FunctionDef(f) => walk(&f.body, optional, out),
            Stmt::ClassDef(c) => walk(&c.body, optional, out),
            Stmt::If(s) => {
                let mut clauses = std::iter::once((Some(&*s.test), &s.body))
                    .chain(s.elif_else_clauses.iter().map(|c| (c.test.as_ref(), &c.body)));
                // The first clause known to run on 3.11 is the last one that can.
                for (test, body) in clauses.by_ref() {
                    match test.map(evaluate) {
                        Some(Some(false)) => {}
                        Some(Some(true)) | None => {
                            walk(body, optional, out);
                            break;
                        }
                        Some(None) => walk(body, optional, out),
                    }
                }
            }
            Stmt::Try(s) => {
                let handles_import_error = s.handlers.iter().any(|h| {
                    let ExceptHandler::ExceptHandler(h) = h;
                    h.type_.as_deref().is_none_or(catches_import_error)
                });
                walk(&s.body, optional || handles_import_error, out);
                for handler in &s.handlers {
                    let ExceptHandler::ExceptHandler(h) = handler;
                    walk(&h.body, optional || handles_import_error, out);
                }
                walk(&s.orelse, optional, out);
                walk(&s.finalbody, optional, out);
            }
            Stmt::With(s) => walk(&s.body, optional, out),
            Stmt::For(s) => {
                walk(&s.body, optional, out);
                walk(&s.orelse, optional, out);
            }
            Stmt::While(s) => {
                walk(&s.body, optional, out);
                walk(&s.orelse, optional, out);
            }
            Stmt::Match(s) => {
                for case in &s.cases {
                    walk(&case.body, optional, out);
                }
            }
            _ => {}
        }
    }
}

/// A name an import statement binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// `local` stands for the dotted name `target`: `import a.b` binds `a`
    /// to `a`, `import a.b as c` binds `c` to `a.b`, `from m import x as y`
    /// binds `y` to `m.x`.
    Name { local: String, target: String },
    /// `from module import *`.
    Star { module: String },
}

/// What every import in `body` binds, at any depth, in order (a later
/// binding of a name replaces an earlier one). Relative imports are
/// resolved against `package`, the importing module's package; without one
/// they are skipped.
pub fn bindings(body: &[Stmt], package: Option<&str>) -> Vec<Binding> {
    let mut bindings = Bindings {
        package,
        out: Vec::new(),
    };
    bindings.visit_body(body);
    bindings.out
}

struct Bindings<'p> {
    package: Option<&'p str>,
    out: Vec<Binding>,
}

impl<'a> Visitor<'a> for Bindings<'_> {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        match stmt {
            Stmt::Import(i) => {
                for a in &i.names {
                    let full = a.name.as_str();
                    let (local, target) = a.asname.as_ref().map_or_else(
                        || {
                            let top = full.split('.').next().unwrap_or(full);
                            (top.to_owned(), top.to_owned())
                        },
                        |n| (n.to_string(), full.to_owned()),
                    );
                    self.out.push(Binding::Name { local, target });
                }
            }
            Stmt::ImportFrom(i) => {
                let Some(base) = from_module(i, self.package) else {
                    return;
                };
                for a in &i.names {
                    if a.name.as_str() == "*" {
                        self.out.push(Binding::Star { module: base.clone() });
                    } else {
                        self.out.push(Binding::Name {
                            local: a.asname.as_ref().unwrap_or(&a.name).to_string(),
                            target: format!("{base}.{}", a.name.as_str()),
                        });
                    }
                }
            }
            _ => visitor::walk_stmt(self, stmt),
        }
    }
}

/// The dotted name of the module a from-import reads, a relative one
/// resolved against `package`; `None` for a relative import without a
/// package or one that reaches above the top.
fn from_module(i: &StmtImportFrom, package: Option<&str>) -> Option<String> {
    if i.level == 0 {
        return i.module.as_ref().map(ToString::to_string);
    }
    let parts: Vec<&str> = package?.split('.').filter(|p| !p.is_empty()).collect();
    let up = i.level as usize - 1;
    (up <= parts.len()).then(|| {
        let mut base = parts[..parts.len() - up].join(".");
        if let Some(m) = &i.module {
            if !base.is_empty() {
                base.push('.');
            }
            base.push_str(m.as_str());
        }
        base
    })
}

fn catches_import_error(expr: &Expr) -> bool {
    let name = match expr {
        Expr::Tuple(t) => return t.elts.iter().any(catches_import_error),
        Expr::Name(n) => n.id.as_str(),
        Expr::Attribute(a) => a.attr.as_str(),
        _ => return false,
    };
    matches!(
        name,
        "ImportError" | "ModuleNotFoundError" | "Exception" | "BaseException"
    )
}

/// The value of an `if` test on Python 3.11, when it is a constant
/// `TYPE_CHECKING` or `sys.version_info` comparison; `None` otherwise.
fn evaluate(test: &Expr) -> Option<bool> {
    match test {
        Expr::Name(n) if n.id.as_str() == "TYPE_CHECKING" => Some(false),
        Expr::Attribute(a) if a.attr.as_str() == "TYPE_CHECKING" => Some(false),
        Expr::UnaryOp(u) if u.op == ruff_python_ast::UnaryOp::Not => evaluate(&u.operand).map(|v| !v),
        Expr::Compare(c) if c.ops.len() == 1 && is_version_info(&c.left) => {
            let Expr::Tuple(t) = &c.comparators[0] else { return None };
            let parts: Vec<i64> = t
                .elts
                .iter()
                .map(|e| match e {
                    Expr::NumberLiteral(n) => match &n.value {
                        Number::Int(i) => i.as_i64(),
                        _ => None,
                    },
                    _ => None,
                })
                .collect::<Option<_>>()?;
            let running = [PYTHON.0, PYTHON.1];
            let n = parts.len().min(2);
            // `sys.version_info` is (3, 11, micro, …): longer than any
            // two-part tuple it equals on a prefix, and of unknown order
            // against (3, 11, x).
            let ordering = match running[..n].cmp(&parts[..n]) {
                std::cmp::Ordering::Equal if parts.len() > 2 => return None,
                std::cmp::Ordering::Equal => std::cmp::Ordering::Greater,
                other => other,
            };
            match c.ops[0] {
                CmpOp::Lt => Some(ordering.is_lt()),
                CmpOp::LtE => Some(ordering.is_le()),
                CmpOp::Gt => Some(ordering.is_gt()),
                CmpOp::GtE => Some(ordering.is_ge()),
                _ => None,
            }
        }
        _ => None,
    }
}

fn is_version_info(expr: &Expr) -> bool {
    matches!(expr, Expr::Attribute(a) if a.attr.as_str() == "version_info"
        && a.value.as_name_expr().is_some_and(|n| n.id.as_str() == "sys"))
}

/// What the whole answer provides, for resolving imports.
pub struct Context<'a> {
    /// Dotted names of every module and package the answer's files make.
    pub local_modules: BTreeSet<String>,
    /// Top-level names of the above.
    pub local_tops: BTreeSet<String>,
    /// `Some` for services: the distributions their `requirements.txt`
    /// installs (dependencies included) and the ones it lists.
    pub requirements: Option<(BTreeSet<&'static str>, &'a [String])>,
}

impl<'a> Context<'a> {
    pub fn new(modules: &[Module<'_>], listed: Option<&'a [String]>) -> Context<'a> {
        let mut local_modules = BTreeSet::new();
        // A src layout's modules import by their name and, from the root
        // (which stays on Python's path), as `src.<name>`.
        for name in modules.iter().flat_map(|m| [m.name(), module_name(m.path())]) {
            let mut prefix = String::new();
            for part in name.split('.') {
                if !prefix.is_empty() {
                    prefix.push('.');
                }
                prefix.push_str(part);
                local_modules.insert(prefix.clone());
            }
        }
        // A directory without `__init__.py` is a namespace package, which
        // any regular package or module of the same name on the path wins
        // over: Alembic's `alembic/env.py` does not shadow `alembic`.
        let regular: BTreeSet<String> = modules
            .iter()
            .filter(|m| !m.name().contains('.'))
            .map(Module::name)
            .collect();
        let local_tops: BTreeSet<String> = local_modules
            .iter()
            .map(|m| m.split('.').next().unwrap_or(m).to_owned())
            .filter(|top| regular.contains(top) || !(stdlib::contains(top) || packages::distribution_of(top).is_some()))
            .collect();
        local_modules.retain(|m| local_tops.contains(m.split('.').next().unwrap_or(m)));
        Context {
            local_modules,
            local_tops,
            requirements: listed.map(|l| (packages::closure(l), l)),
        }
    }
}

/// Checks every import of `module`.
pub fn check(module: &Module<'_>, context: &Context<'_>, service: bool) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for import in collect(module) {
        if let Some(d) = check_one(module, &import, context, service) {
            out.push(d);
        }
    }
    out
}

fn check_one(module: &Module<'_>, import: &Import, context: &Context<'_>, service: bool) -> Option<Diagnostic> {
    let unless_optional = |severity: Severity| if import.optional { Severity::Warning } else { severity };
    if import.level > 0 {
        return check_relative(module, import, context)
            .map(|m| module.at(&import.range, Severity::Error, "import-unresolved", m));
    }
    let name = import.module.as_deref()?;
    let top = import.top()?;
    if context.local_tops.contains(top) {
        let missing = missing_local(name, context)?;
        return Some(module.at(
            &import.range,
            unless_optional(Severity::Error),
            "import-unresolved",
            format!("`{name}` cannot be imported: the answer has no module `{missing}`"),
        ));
    }
    if stdlib::contains(top) {
        return None;
    }
    let provided = packages::distribution_of(top);
    if !service {
        return Some(module.at(
            &import.range,
            unless_optional(Severity::Error),
            "import-not-allowed",
            format!("`{name}` is not in the standard library; function solutions may use only the standard library"),
        ));
    }
    let Some(dist) = provided else {
        return Some(module.at(
            &import.range,
            unless_optional(Severity::Error),
            "import-not-allowed",
            format!(
                "`{top}` is neither in the standard library nor installed in the sandbox runtime; allowed packages: {}",
                packages::allowed_names().join(", ")
            ),
        ));
    };
    let (installed, listed) = context.requirements.as_ref()?;
    let lenient = import.optional || module.is_test();
    if !installed.contains(dist.name) {
        let fix = match packages::allowed_version(dist.name) {
            Some(version) => format!("add `{}=={version}`", dist.name),
            None => format!("add {}", packages::dependents(dist.name).join(" or ")),
        };
        return Some(module.at(
            &import.range,
            if lenient { Severity::Warning } else { Severity::Error },
            "import-not-in-requirements",
            format!(
                "`{top}` comes from `{}`, which requirements.txt does not install; {fix}",
                dist.name
            ),
        ));
    }
    if let Some(version) = packages::allowed_version(dist.name)
        && !listed.iter().any(|l| l == dist.name)
    {
        return Some(module.at(
            &import.range,
            Severity::Warning,
            "import-transitive",
            format!(
                "`{top}` is installed only as a dependency of another requirement; list `{}=={version}` in requirements.txt",
                dist.name
            ),
        ));
    }
    None
}

/// The first prefix of a local dotted name that the answer does not provide.
fn missing_local(name: &str, context: &Context<'_>) -> Option<String> {
    let mut prefix = String::new();
    for part in name.split('.') {
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(part);
        if !context.local_modules.contains(&prefix) {
            return Some(prefix);
        }
    }
    None
}

fn check_relative(module: &Module<'_>, import: &Import, context: &Context<'_>) -> Option<String> {
    let package = module.package();
    let mut parts: Vec<&str> = if package.is_empty() {
        Vec::new()
    } else {
        package.split('.').collect()
    };
    let up = import.level as usize - 1;
    if up >= parts.len() {
        return Some(format!(
            "`{}{}` reaches above the top-level package; {} is not inside a package that deep",
            ".".repeat(import.level as usize),
            import.module.as_deref().unwrap_or(""),
            module.path(),
        ));
    }
    parts.truncate(parts.len() - up);
    let base = parts.join(".");
    let target = match &import.module {
        Some(m) => format!("{base}.{m}"),
        None => base,
    };
    missing_local(&target, context).map(|missing| {
        format!(
            "`{}{}` cannot be imported: the answer has no module `{missing}`",
            ".".repeat(import.level as usize),
            import.module.as_deref().unwrap_or("")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::File;

    fn findings(files: &[(&str, &str)], listed: Option<&[&str]>) -> Vec<(String, String, Severity, u32, u32)> {
        let files: Vec<File> = files.iter().map(|(p, c)| File::new(*p, *c)).collect();
        let modules: Vec<Module<'_>> = files.iter().map(Module::parse).collect();
        let listed: Option<Vec<String>> = listed.map(|l| l.iter().map(|s| (*s).to_owned()).collect());
        let context = Context::new(&modules, listed.as_deref());
        modules
            .iter()
            .flat_map(|m| check(m, &context, listed.is_some()))
            .map(|d| (d.file, d.rule, d.severity, d.line, d.col))
            .collect()
    }

    #[test]
    fn version_gated_and_type_checking_imports_are_not_judged() {
        let source = "import sys\nfrom typing import TYPE_CHECKING\nif sys.version_info < (3, 11):\n    import tomli\nelse:\n    import tomllib\nif TYPE_CHECKING:\n    import numpy\n";
        assert!(findings(&[("solution.py", source)], None).is_empty());
    }

    #[test]
    fn version_comparisons_follow_tuple_order() {
        let judged = |test: &str| {
            let source = format!("import sys\nif {test}:\n    import numpy\n");
            !findings(&[("solution.py", &source)], None).is_empty()
        };
        assert!(!judged("sys.version_info < (3, 11)"));
        assert!(judged("sys.version_info >= (3, 11)"));
        assert!(judged("sys.version_info > (3, 11)"));
        assert!(!judged("sys.version_info <= (3, 11)"));
        assert!(!judged("sys.version_info >= (3, 12)"));
        assert!(judged("sys.version_info >= (3,)"));
        // (3, 11, 2) may or may not hold: the import is judged.
        assert!(judged("sys.version_info >= (3, 11, 2)"));
    }

    #[test]
    fn optional_imports_are_warnings() {
        let source = "try:\n    import ujson as json\nexcept ImportError:\n    import json\n";
        let f = findings(&[("solution.py", source)], None);
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].1.as_str(), f[0].2, f[0].3, f[0].4),
            ("import-not-allowed", Severity::Warning, 2, 12)
        );
    }

    #[test]
    fn relative_imports_must_resolve_inside_the_answer() {
        let files = [
            ("app/__init__.py", ""),
            (
                "app/main.py",
                "from . import db\nfrom .models import Note\nfrom .schemas import NoteIn\nfrom .. import x\n",
            ),
            ("app/db.py", ""),
            ("app/models.py", ""),
        ];
        let f = findings(&files, Some(&[]));
        let rules: Vec<(&str, u32)> = f.iter().map(|x| (x.1.as_str(), x.3)).collect();
        assert_eq!(rules, [("import-unresolved", 3), ("import-unresolved", 4)]);
    }
}
