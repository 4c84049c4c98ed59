//! The entry point of a function spec: bound at module level in
//! `solution.py`, a plain `def` (the harness calls it synchronously), and
//! callable the way the harness will call it — with the parameter names of
//! `input_types`, and with each test case's arguments (an object input is
//! keyword arguments, an array positional arguments, anything else one
//! positional argument).
//!
//! Signatures are only judged when they can be read exactly: a name bound by
//! an import or assignment, or a function behind a decorator that may change
//! its signature, is given the benefit of the doubt.

use std::collections::BTreeSet;

use ruff_python_ast::{Expr, Stmt, StmtFunctionDef};
use serde_json::Value;

use crate::report::Diagnostic;
use crate::spec::FunctionSpec;

use super::python::{Module, module_level};

/// Decorators that keep the signature of the function they wrap.
const TRANSPARENT_DECORATORS: [&str; 3] = ["cache", "lru_cache", "wraps"];

/// Checks the entry point of `spec` in `solution`.
pub fn check(spec: &FunctionSpec, solution: &Module<'_>) -> Vec<Diagnostic> {
    let Some(name) = spec.entry_point.as_deref() else {
        return Vec::new();
    };
    if !solution.has_valid_syntax() {
        return Vec::new();
    }
    if !solution.binds(name) {
        return vec![missing(solution, name)];
    }
    let Some(def) = last_binding_def(solution, name) else {
        return Vec::new();
    };
    if def.is_async {
        return vec![solution.error_at(
            &def.name,
            "entry-signature",
            format!("`{name}` is `async def`; the harness calls it synchronously, so make it a plain `def`"),
        )];
    }
    if !def.decorator_list.iter().all(|d| is_transparent(&d.expression)) {
        return Vec::new();
    }
    let signature = Signature::of(def);
    let mut problems: Vec<String> = Vec::new();
    if let Some(types) = &spec.input_types {
        let absent: Vec<&str> = types
            .keys()
            .map(String::as_str)
            .filter(|n| !signature.accepts_name(n))
            .collect();
        if !absent.is_empty() && !signature.varkw {
            problems.push(format!(
                "`{name}` must accept the parameters of `input_types` ({}); it has no parameter {} (its parameters: {})",
                names(types.keys().map(String::as_str)),
                names(absent.iter().copied()),
                signature.describe(),
            ));
        }
    }
    for (i, case) in spec.test_cases.iter().enumerate() {
        let problem = match &case.input {
            Value::Object(args) => signature.keyword_call_problem(args.keys().map(String::as_str)),
            Value::Array(args) => signature.positional_call_problem(args.len()),
            _ => signature.positional_call_problem(1),
        };
        if let Some(problem) = problem {
            let message = format!("test case {i} cannot call `{name}`: {problem}");
            // One finding per kind of call: ten cases with the same shape
            // are one mistake.
            if !problems.iter().any(|p| p.ends_with(&problem)) {
                problems.push(message);
            }
        }
    }
    problems
        .into_iter()
        .map(|p| solution.error_at(&def.name, "entry-signature", p))
        .collect()
}

fn missing(solution: &Module<'_>, name: &str) -> Diagnostic {
    let defined: Vec<&str> = solution
        .body()
        .iter()
        .filter_map(|s| match s {
            Stmt::FunctionDef(f) => Some(f.name.as_str()),
            _ => None,
        })
        .collect();
    let found = if defined.is_empty() {
        "no functions".to_owned()
    } else {
        names(defined.iter().copied())
    };
    Diagnostic::error(
        solution.path(),
        0,
        0,
        "entry-point",
        format!(
            "{} does not define `{name}` at module level (it defines {found})",
            solution.path()
        ),
    )
}

/// The `def` that binds `name` last at module level, if a `def` does (a
/// later assignment, import or class replaces it with something whose
/// signature cannot be read).
fn last_binding_def<'m>(solution: &'m Module<'_>, name: &str) -> Option<&'m StmtFunctionDef> {
    let mut last = None;
    for stmt in module_level(solution.body()) {
        if let Stmt::FunctionDef(f) = stmt
            && f.name.as_str() == name
        {
            last = Some(f);
        } else if rebinds(stmt, name) {
            last = None;
        }
    }
    last
}

/// True when `stmt` binds `name` by anything but a `def`.
fn rebinds(stmt: &Stmt, name: &str) -> bool {
    let is_name = |e: &Expr| e.as_name_expr().is_some_and(|n| n.id.as_str() == name);
    match stmt {
        Stmt::ClassDef(c) => c.name.as_str() == name,
        Stmt::Assign(a) => a.targets.iter().any(is_name),
        Stmt::AnnAssign(a) => a.value.is_some() && is_name(&a.target),
        Stmt::Import(i) => i
            .names
            .iter()
            .any(|a| a.asname.as_ref().unwrap_or(&a.name).as_str() == name),
        Stmt::ImportFrom(i) => i
            .names
            .iter()
            .any(|a| a.asname.as_ref().unwrap_or(&a.name).as_str() == name),
        _ => false,
    }
}

fn is_transparent(decorator: &Expr) -> bool {
    let target = match decorator {
        Expr::Call(call) => &*call.func,
        other => other,
    };
    let last = match target {
        Expr::Name(n) => n.id.as_str(),
        Expr::Attribute(a) => a.attr.as_str(),
        _ => return false,
    };
    TRANSPARENT_DECORATORS.contains(&last)
}

fn names<'n>(names: impl Iterator<Item = &'n str>) -> String {
    names.map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// What a `def` accepts, as the call-compatibility rules need it.
struct Signature {
    /// Positional parameters in order: name, has a default, positional-only.
    positional: Vec<(String, bool, bool)>,
    /// Keyword-only parameters: name, has a default.
    keyword_only: Vec<(String, bool)>,
    varargs: bool,
    varkw: bool,
}

impl Signature {
    fn of(def: &StmtFunctionDef) -> Signature {
        let p = &def.parameters;
        let positional = p
            .posonlyargs
            .iter()
            .map(|a| (a.name().to_string(), a.default.is_some(), true))
            .chain(
                p.args
                    .iter()
                    .map(|a| (a.name().to_string(), a.default.is_some(), false)),
            )
            .collect();
        Signature {
            positional,
            keyword_only: p
                .kwonlyargs
                .iter()
                .map(|a| (a.name().to_string(), a.default.is_some()))
                .collect(),
            varargs: p.vararg.is_some(),
            varkw: p.kwarg.is_some(),
        }
    }

    /// True when `name` is a parameter a caller can pass by keyword.
    fn accepts_name(&self, name: &str) -> bool {
        self.positional.iter().any(|(n, _, posonly)| n == name && !posonly)
            || self.keyword_only.iter().any(|(n, _)| n == name)
    }

    fn describe(&self) -> String {
        let mut parts: Vec<String> = self.positional.iter().map(|(n, _, _)| format!("`{n}`")).collect();
        if self.varargs {
            parts.push("`*args`".into());
        }
        parts.extend(self.keyword_only.iter().map(|(n, _)| format!("`{n}`")));
        if self.varkw {
            parts.push("`**kwargs`".into());
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }

    fn positional_call_problem(&self, given: usize) -> Option<String> {
        let required = self.positional.iter().filter(|(_, default, _)| !default).count();
        if given < required {
            return Some(format!(
                "it passes {given} positional argument{} but the function requires {required}",
                plural(given)
            ));
        }
        if given > self.positional.len() && !self.varargs {
            return Some(format!(
                "it passes {given} positional argument{} but the function accepts at most {}",
                plural(given),
                self.positional.len()
            ));
        }
        self.keyword_only.iter().find(|(_, default)| !default).map(|(n, _)| {
            format!("the function requires the keyword-only argument `{n}`, which positional calls do not pass")
        })
    }

    fn keyword_call_problem<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Option<String> {
        let keys: BTreeSet<&str> = keys.collect();
        for key in &keys {
            if self.accepts_name(key) || self.varkw {
                continue;
            }
            return Some(if self.positional.iter().any(|(n, _, posonly)| n == key && *posonly) {
                format!("it passes `{key}` by keyword but the parameter is positional-only")
            } else {
                format!("it passes `{key}` by keyword but the function has no such parameter")
            });
        }
        let unfilled = self
            .positional
            .iter()
            .map(|(n, default, posonly)| (n, *default, *posonly))
            .chain(self.keyword_only.iter().map(|(n, default)| (n, *default, false)))
            .find(|(n, default, posonly)| !default && (*posonly || !keys.contains(n.as_str())));
        unfilled.map(|(n, _, posonly)| {
            if posonly {
                format!("the function requires the positional-only argument `{n}`, which keyword calls cannot pass")
            } else {
                format!("it does not pass the required argument `{n}`")
            }
        })
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::File;
    use crate::spec::{FunctionSpec, TestCase};
    use serde_json::json;

    fn spec(inputs: &[Value]) -> FunctionSpec {
        FunctionSpec {
            task_description: "t".into(),
            entry_point: Some("f".into()),
            prompt: None,
            input_types: None,
            output_type: None,
            constraints: Vec::new(),
            test_cases: inputs
                .iter()
                .map(|i| TestCase {
                    input: i.clone(),
                    expected: json!(0),
                })
                .collect(),
            test_code: None,
        }
    }

    fn rules(spec: &FunctionSpec, source: &str) -> Vec<(String, u32, u32)> {
        let file = File::new("solution.py", source);
        check(spec, &Module::parse(&file))
            .into_iter()
            .map(|d| (d.rule, d.line, d.col))
            .collect()
    }

    #[test]
    fn the_entry_point_must_be_bound_at_module_level() {
        let s = spec(&[json!(1)]);
        let file = File::new("solution.py", "def helper():\n    def f(a):\n        return a\n");
        let d = check(&s, &Module::parse(&file));
        assert_eq!(d.len(), 1);
        assert!(d[0].message.contains("it defines `helper`"), "{}", d[0].message);
        assert!(rules(&s, "from operator import neg as f\n").is_empty());
        assert!(
            rules(
                &s,
                "import sys\nif sys.version_info >= (3, 8):\n    def f(a):\n        return a\n"
            )
            .is_empty()
        );
    }

    #[test]
    fn a_definition_under_the_main_guard_does_not_count() {
        let s = spec(&[json!(1)]);
        let source = "if __name__ == '__main__':\n    def f(a):\n        return a\n";
        assert_eq!(rules(&s, source), [("entry-point".to_owned(), 0, 0)]);
    }

    #[test]
    fn calls_that_match_the_signature_pass() {
        let s = spec(&[json!(1), json!([1, 2]), json!({"a": 1, "b": 2}), json!({"a": 1})]);
        assert!(rules(&s, "def f(a, b=0):\n    return a\n").is_empty());
        assert!(rules(&s, "def f(*args, **kwargs):\n    return 0\n").is_empty());
    }

    #[test]
    fn a_redefinition_by_assignment_is_not_judged() {
        let s = spec(&[json!([1, 2, 3])]);
        assert!(rules(&s, "def f(a):\n    return a\nf = lambda *a: 0\n").is_empty());
    }

    #[test]
    fn a_method_exposed_by_a_module_level_alias_is_the_entry_point() {
        let s = spec(&[json!([1, 2])]);
        let source = "class Solution:\n    def f(self, a, b):\n        return a + b\n\n\nf = Solution().f\n";
        assert!(rules(&s, source).is_empty());
        let unbound = "class Solution:\n    def f(self, a, b):\n        return a + b\n";
        assert_eq!(rules(&s, unbound), [("entry-point".to_owned(), 0, 0)]);
    }

    #[test]
    fn arity_and_keyword_problems_are_reported_once_per_kind() {
        let s = spec(&[json!([1, 2, 3]), json!([4, 5, 6]), json!({"c": 1})]);
        let d = rules(&s, "def f(a, b):\n    return a\n");
        assert_eq!(
            d,
            [
                ("entry-signature".to_owned(), 1, 5),
                ("entry-signature".to_owned(), 1, 5)
            ]
        );
    }
}
