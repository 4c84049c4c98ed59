//! The sealed test suite of a service: what its conftest files may do.
//!
//! The sandbox runs a service's own pytest suite with the answer's ini
//! files ignored and the `pytest_*` hooks of its conftest files removed
//! (`sandbox/harness.py`, `seal_plugin_manager`): conftest files provide
//! fixtures only. A hook there, or a `pytest_plugins` naming modules to
//! load as plugins, would be silently ignored, so it is refused here with
//! the reason — a model that writes one learns why its suite behaves
//! otherwise than it meant.

use ruff_python_ast::visitor::{self, Visitor};
use ruff_python_ast::{Expr, Stmt, StmtFunctionDef};

use crate::report::Diagnostic;

use super::python::{Module, module_level};

const RULE: &str = "conftest-hook";

/// `conftest-hook` findings of one module.
pub fn check(module: &Module<'_>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let is_conftest = module.path().rsplit('/').next() == Some("conftest.py");
    if is_conftest {
        let mut hooks = Hooks(Vec::new());
        hooks.visit_body(module.body());
        for f in hooks.0 {
            out.push(module.error_at(
                f,
                RULE,
                format!(
                    "conftest.py may define fixtures only: Kiln ignores the pytest hook `{}` (hooks could change which tests run or how they are reported); remove it",
                    f.name
                ),
            ));
        }
    }
    if is_conftest || module.is_test() {
        for stmt in module_level(module.body()) {
            let targets: Vec<&Expr> = match stmt {
                Stmt::Assign(a) => a.targets.iter().collect(),
                Stmt::AnnAssign(a) => vec![&*a.target],
                Stmt::AugAssign(a) => vec![&*a.target],
                _ => continue,
            };
            if targets
                .iter()
                .any(|t| t.as_name_expr().is_some_and(|n| n.id.as_str() == "pytest_plugins"))
            {
                out.push(module.error_at(
                    stmt,
                    RULE,
                    "`pytest_plugins` is not honoured: Kiln loads no plugin from the answer; import fixtures from a module instead",
                ));
            }
        }
    }
    out
}

/// Every function named `pytest_*`, at any depth (methods of a plugin
/// class included).
struct Hooks<'a>(Vec<&'a StmtFunctionDef>);

impl<'a> Visitor<'a> for Hooks<'a> {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        if let Stmt::FunctionDef(f) = stmt
            && f.name.as_str().starts_with("pytest_")
        {
            self.0.push(f);
        }
        visitor::walk_stmt(self, stmt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::File;

    fn findings(path: &str, source: &str) -> Vec<(u32, String)> {
        let file = File::new(path, source);
        check(&Module::parse(&file))
            .into_iter()
            .map(|d| (d.line, d.rule))
            .collect()
    }

    #[test]
    fn hooks_in_a_conftest_are_refused_and_fixtures_are_not() {
        let source = "import pytest\n\n@pytest.fixture\ndef client():\n    return 1\n\ndef pytest_collection_modifyitems(items):\n    items[:] = []\n\nclass Plugin:\n    def pytest_runtest_makereport(self, item, call):\n        pass\n";
        assert_eq!(
            findings("tests/conftest.py", source),
            [(7, RULE.to_owned()), (11, RULE.to_owned())]
        );
        assert!(
            findings(
                "tests/conftest.py",
                "import pytest\n\n@pytest.fixture\ndef client():\n    return 1\n"
            )
            .is_empty()
        );
    }

    #[test]
    fn pytest_plugins_is_refused_in_conftest_and_test_modules() {
        assert_eq!(
            findings("conftest.py", "pytest_plugins = ['tests.forge']\n"),
            [(1, RULE.to_owned())]
        );
        assert_eq!(
            findings("tests/test_x.py", "pytest_plugins = ['tests.forge']\n"),
            [(1, RULE.to_owned())]
        );
        assert!(findings("tests/helpers.py", "def pytest_configure(config):\n    pass\n").is_empty());
        assert!(findings("app/main.py", "pytest_plugins = []\n").is_empty());
    }
}
