//! The quality report stored with each attempt (`ValidationReport.quality`):
//! counts read off the syntax tree, informational unless a gate is
//! configured elsewhere.
//!
//! - Type hints: annotated parameters and return values over all of them, in
//!   public functions and methods (`self`/`cls` excluded, `__init__` needs no
//!   return annotation).
//! - Docstrings: public modules, classes and functions with a docstring over
//!   all of them (magic methods such as `__init__` are not counted; empty
//!   modules such as a bare `__init__.py` neither).
//! - Tests per endpoint (services): every `test*` function under `tests/` is
//!   attributed to the endpoints whose path a string in it names — to the
//!   endpoint of that method only when the string is the path argument of a
//!   `client.get(…)`-style call. f-string interpolations match any segment.
//!   What the module-level fixtures and helpers it uses (by parameter or by
//!   name, transitively, from any test module or conftest) name counts as
//!   its own.
//!
//! Test code is excluded from the first two counts: test functions are
//! named for behaviour, not documented as API.

use std::collections::{HashMap, HashSet};

use ruff_python_ast::visitor::{self, Visitor};
use ruff_python_ast::{Expr, Operator, Stmt, StmtFunctionDef};
use ruff_text_size::{Ranged, TextRange};
use serde::Serialize;

use crate::spec::Endpoint;

use super::python::{Module, docstring};
use super::routes::{fstring_text, static_string};

/// Stands for an f-string interpolation in a path template.
const HOLE: char = '\u{0}';
const CLIENT_METHODS: [&str; 7] = ["get", "post", "put", "patch", "delete", "head", "options"];

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Coverage {
    pub covered: u32,
    pub total: u32,
    /// `covered / total`, absent when there is nothing to count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
}

impl Coverage {
    fn add(&mut self, covered: bool) {
        self.total += 1;
        self.covered += u32::from(covered);
    }

    fn finish(mut self) -> Coverage {
        self.ratio =
            (self.total > 0).then(|| (f64::from(self.covered) / f64::from(self.total) * 1000.0).round() / 1000.0);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointTests {
    pub method: String,
    pub path: String,
    pub tests: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tests {
    /// Test functions found under `tests/`.
    pub functions: u32,
    pub endpoints: Vec<EndpointTests>,
    /// `METHOD path` of every endpoint no test names.
    pub untested: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quality {
    pub type_hints: Coverage,
    pub docstrings: Coverage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tests: Option<Tests>,
}

impl Quality {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("the quality report serialises")
    }
}

/// Measures the answer's modules; `endpoints` is `Some` for services.
pub fn measure(modules: &[&Module<'_>], endpoints: Option<&[Endpoint]>) -> Quality {
    let mut hints = Coverage::default();
    let mut docs = Coverage::default();
    for m in modules.iter().filter(|m| !m.is_test()) {
        if !m.body().is_empty() {
            docs.add(docstring(m.body()).is_some());
        }
        count_body(m.body(), false, &mut hints, &mut docs);
    }
    Quality {
        type_hints: hints.finish(),
        docstrings: docs.finish(),
        tests: endpoints.map(|e| tests(modules, e)),
    }
}

fn is_public(name: &str) -> bool {
    !name.starts_with('_') || is_magic(name)
}

fn is_magic(name: &str) -> bool {
    name.len() > 4 && name.starts_with("__") && name.ends_with("__")
}

fn count_body(body: &[Stmt], in_class: bool, hints: &mut Coverage, docs: &mut Coverage) {
    for stmt in body {
        match stmt {
            Stmt::FunctionDef(f) if is_public(f.name.as_str()) => {
                count_function(f, in_class, hints);
                if !is_magic(f.name.as_str()) {
                    docs.add(docstring(&f.body).is_some());
                }
            }
            Stmt::ClassDef(c) if is_public(c.name.as_str()) => {
                docs.add(docstring(&c.body).is_some());
                count_body(&c.body, true, hints, docs);
            }
            Stmt::If(s) => {
                count_body(&s.body, in_class, hints, docs);
                for clause in &s.elif_else_clauses {
                    count_body(&clause.body, in_class, hints, docs);
                }
            }
            Stmt::Try(s) => {
                count_body(&s.body, in_class, hints, docs);
                count_body(&s.orelse, in_class, hints, docs);
            }
            _ => {}
        }
    }
}

fn count_function(f: &StmtFunctionDef, in_class: bool, hints: &mut Coverage) {
    let is_static = f
        .decorator_list
        .iter()
        .any(|d| matches!(&d.expression, Expr::Name(n) if n.id.as_str() == "staticmethod"));
    let skip_first = in_class && !is_static;
    let p = &f.parameters;
    let mut annotations: Vec<bool> = p
        .posonlyargs
        .iter()
        .chain(&p.args)
        .chain(&p.kwonlyargs)
        .map(|a| a.annotation().is_some())
        .collect();
    if skip_first && !(p.posonlyargs.is_empty() && p.args.is_empty()) {
        annotations.remove(0);
    }
    annotations.extend(p.vararg.iter().chain(&p.kwarg).map(|a| a.annotation.is_some()));
    for annotated in annotations {
        hints.add(annotated);
    }
    if f.name.as_str() != "__init__" {
        hints.add(f.returns.is_some());
    }
}

/// A path named in a test, and the HTTP method it is requested with when
/// known.
#[derive(Clone)]
struct Mention {
    method: Option<String>,
    path: String,
}

fn tests(modules: &[&Module<'_>], endpoints: &[Endpoint]) -> Tests {
    let mut counts = vec![0u32; endpoints.len()];
    let mut functions = 0;
    let in_tests =
        |m: &&&Module<'_>| m.path().starts_with("tests/") || m.path().contains("/tests/") || m.path() == "conftest.py";
    // Fixtures and helpers (module-level functions of the test code that
    // are not tests), by name: a test requests what they request, as a
    // test that takes a `created_note` fixture posts the note.
    let mut helpers: HashMap<String, (Vec<Mention>, HashSet<String>)> = HashMap::new();
    for m in modules.iter().filter(in_tests) {
        let constants = constants(m.body());
        for stmt in m.body() {
            if let Stmt::FunctionDef(f) = stmt
                && !f.name.as_str().starts_with("test")
            {
                helpers
                    .entry(f.name.to_string())
                    .or_insert_with(|| (mentions(f, &constants), names_used(f)));
            }
        }
    }
    for m in modules
        .iter()
        .filter(|m| m.path().starts_with("tests/") || m.path().contains("/tests/"))
    {
        let constants = constants(m.body());
        for f in test_functions(m.body()) {
            functions += 1;
            let mut mentions = mentions(f, &constants);
            let mut seen = HashSet::new();
            let mut pending: Vec<String> = names_used(f).into_iter().collect();
            while let Some(name) = pending.pop() {
                if let Some((requested, used)) = helpers.get(&name)
                    && seen.insert(name)
                {
                    mentions.extend(requested.iter().cloned());
                    pending.extend(used.iter().cloned());
                }
            }
            for (i, e) in endpoints.iter().enumerate() {
                let named = mentions.iter().any(|mention| {
                    mention
                        .method
                        .as_deref()
                        .is_none_or(|m| m.eq_ignore_ascii_case(&e.method))
                        && path_matches(&e.path, &mention.path)
                });
                counts[i] += u32::from(named);
            }
        }
    }
    let endpoints: Vec<EndpointTests> = endpoints
        .iter()
        .zip(counts)
        .map(|(e, tests)| EndpointTests {
            method: e.method.clone(),
            path: e.path.clone(),
            tests,
        })
        .collect();
    Tests {
        functions,
        untested: endpoints
            .iter()
            .filter(|e| e.tests == 0)
            .map(|e| format!("{} {}", e.method, e.path))
            .collect(),
        endpoints,
    }
}

/// The names a function reads (its body's names and its parameters,
/// which pytest fills with fixtures of those names).
fn names_used(f: &StmtFunctionDef) -> HashSet<String> {
    struct Names(HashSet<String>);
    impl<'a> Visitor<'a> for Names {
        fn visit_expr(&mut self, expr: &'a Expr) {
            if let Expr::Name(n) = expr {
                self.0.insert(n.id.to_string());
            }
            visitor::walk_expr(self, expr);
        }
    }
    let mut names = Names(f.parameters.iter().map(|p| p.name().to_string()).collect());
    names.visit_body(&f.body);
    names.0
}

fn test_functions(body: &[Stmt]) -> Vec<&StmtFunctionDef> {
    let mut out = Vec::new();
    for stmt in body {
        match stmt {
            Stmt::FunctionDef(f) if f.name.as_str().starts_with("test") => out.push(f),
            Stmt::ClassDef(c) if c.name.as_str().starts_with("Test") => out.extend(test_functions(&c.body)),
            _ => {}
        }
    }
    out
}

fn mentions(f: &StmtFunctionDef, constants: &HashMap<String, String>) -> Vec<Mention> {
    let mut collector = Mentions {
        constants,
        out: Vec::new(),
        claimed: HashSet::new(),
    };
    collector.visit_body(&f.body);
    collector.out
}

/// Module-level string constants (`BASE_URL = "/notes"`), which tests
/// often build their paths from.
fn constants(body: &[Stmt]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for stmt in body {
        let (target, value) = match stmt {
            Stmt::Assign(a) if a.targets.len() == 1 => (&a.targets[0], &*a.value),
            Stmt::AnnAssign(a) => match a.value.as_deref() {
                Some(v) => (&*a.target, v),
                None => continue,
            },
            _ => continue,
        };
        if let Some(name) = target.as_name_expr()
            && let Some(text) = static_string(value, &out)
        {
            out.insert(name.id.to_string(), text);
        }
    }
    out
}

struct Mentions<'c> {
    constants: &'c HashMap<String, String>,
    out: Vec<Mention>,
    /// Expressions already taken as a call's path argument.
    claimed: HashSet<TextRange>,
}

impl<'a> Visitor<'a> for Mentions<'_> {
    fn visit_expr(&mut self, expr: &'a Expr) {
        match expr {
            Expr::Call(call) => {
                if let Expr::Attribute(attr) = &*call.func
                    && CLIENT_METHODS.contains(&attr.attr.as_str())
                    && let Some(first) = call.arguments.find_argument_value("url", 0)
                    && let Some(path) = template(first, self.constants)
                {
                    self.claimed.insert(first.range());
                    self.out.push(Mention {
                        method: Some(attr.attr.to_string()),
                        path,
                    });
                }
            }
            Expr::StringLiteral(_) | Expr::FString(_) | Expr::BinOp(_) if !self.claimed.contains(&expr.range()) => {
                if let Some(path) = template(expr, self.constants) {
                    self.out.push(Mention { method: None, path });
                    return;
                }
            }
            _ => {}
        }
        visitor::walk_expr(self, expr);
    }
}

/// The text of a string expression — a literal, an f-string, a constant or
/// a concatenation of these — with every part that is not known statically
/// replaced by [`HOLE`]. `None` for expressions that are not strings.
fn template(expr: &Expr, constants: &HashMap<String, String>) -> Option<String> {
    match expr {
        Expr::StringLiteral(s) => Some(s.value.to_str().to_owned()),
        Expr::Name(n) => constants.get(n.id.as_str()).cloned(),
        Expr::BinOp(b) if b.op == Operator::Add => {
            let left = template(&b.left, constants);
            let right = template(&b.right, constants);
            if left.is_none() && right.is_none() {
                return None;
            }
            Some(left.unwrap_or_else(|| HOLE.into()) + &right.unwrap_or_else(|| HOLE.into()))
        }
        Expr::FString(f) => fstring_text(f, constants, Some(HOLE)),
        _ => None,
    }
}

/// One element of a path pattern: a literal character, or a `{param}`
/// segment (one or more characters other than `/`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Piece {
    Char(char),
    Param,
}

/// True when the string `text` (a URL or path, possibly with [`HOLE`]s that
/// stand for any text) can name the endpoint path `pattern`. Query strings
/// and the origin of absolute URLs are ignored, so are trailing slashes; a
/// text with no literal letter or digit names nothing (a bare `f"{url}/"`
/// could be any endpoint).
fn path_matches(pattern: &str, text: &str) -> bool {
    let text = text.trim();
    let without_origin = match text.find("://") {
        Some(at) => {
            let rest = &text[at + 3..];
            rest.find('/').map_or("/", |slash| &rest[slash..])
        }
        None => text,
    };
    let path = without_origin.split(['?', '#']).next().unwrap_or("");
    if !(path.starts_with('/') || path.starts_with(HOLE)) || !path.chars().any(char::is_alphanumeric) {
        return false;
    }
    let path: Vec<char> = path.trim_end_matches('/').chars().collect();
    let mut pieces = Vec::new();
    for (i, segment) in pattern.trim_end_matches('/').split('/').enumerate() {
        if i > 0 {
            pieces.push(Piece::Char('/'));
        }
        if segment.starts_with('{') && segment.ends_with('}') {
            pieces.push(Piece::Param);
        } else {
            pieces.extend(segment.chars().map(Piece::Char));
        }
    }
    // Reachable (piece, character) states; a hole may stand for any run of
    // pieces, a param for one or more non-`/` characters.
    let mut seen = HashSet::new();
    let mut stack = vec![(0usize, 0usize)];
    while let Some(state) = stack.pop() {
        if !seen.insert(state) {
            continue;
        }
        let (i, j) = state;
        if i == pieces.len() && j == path.len() {
            return true;
        }
        let next_char = path.get(j).copied();
        if next_char == Some(HOLE) {
            stack.push((i, j + 1));
            if i < pieces.len() {
                stack.push((i + 1, j));
            }
            continue;
        }
        match (pieces.get(i), next_char) {
            (Some(Piece::Param), Some(c)) if c != '/' => {
                stack.push((i, j + 1));
                stack.push((i + 1, j + 1));
            }
            (Some(Piece::Char(p)), Some(c)) if *p == c => stack.push((i + 1, j + 1)),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::File;

    fn endpoint(method: &str, path: &str) -> Endpoint {
        Endpoint {
            method: method.into(),
            path: path.into(),
            description: String::new(),
        }
    }

    #[test]
    fn paths_match_literal_templated_and_absolute_mentions() {
        assert!(path_matches("/notes/{note_id}", "/notes/999"));
        assert!(path_matches("/notes/{note_id}", "/notes/\u{0}"));
        assert!(path_matches("/notes", "http://testserver/notes?limit=2"));
        assert!(!path_matches("/notes", "/notes/1"));
        assert!(!path_matches("/notes/{id}", "/notes/"));
        assert!(!path_matches("/notes", "notes"));
        assert!(path_matches("/notes/{note_id}", "\u{0}/notes/\u{0}"));
        assert!(path_matches("/api/notes/{id}", "\u{0}/notes/7"));
        assert!(!path_matches("/notes", "\u{0}/"), "a bare hole names nothing");
        assert!(!path_matches("/notes/{id}/tags", "/notes/1"));
    }

    #[test]
    fn test_paths_built_from_module_constants_are_resolved() {
        let test = File::new(
            "tests/test_api.py",
            "BASE = '/notes'\n\ndef test_list(client):\n    assert client.get(BASE + '/').status_code == 200\n\ndef test_one(client):\n    assert client.delete(f'{BASE}/{1}').status_code == 204\n",
        );
        let endpoints = [endpoint("GET", "/notes"), endpoint("DELETE", "/notes/{id}")];
        let q = measure(&[&Module::parse(&test)], Some(&endpoints));
        let counts: Vec<u32> = q.tests.unwrap().endpoints.iter().map(|e| e.tests).collect();
        assert_eq!(counts, [1, 1]);
    }

    #[test]
    fn a_test_requests_what_its_fixtures_and_helpers_request() {
        let conftest = File::new(
            "tests/conftest.py",
            "import pytest\n\n@pytest.fixture\ndef created(client):\n    return client.post('/notes', json={'title': 't'}).json()\n",
        );
        let test = File::new(
            "tests/test_api.py",
            "def remove(client, note_id):\n    return client.delete(f'/notes/{note_id}')\n\ndef helper_of_nothing():\n    return client.put('/notes/1')\n\ndef test_get(client, created):\n    assert client.get(f\"/notes/{created['id']}\").status_code == 200\n\ndef test_delete(client, created):\n    assert remove(client, created['id']).status_code == 204\n",
        );
        let endpoints = [
            endpoint("POST", "/notes"),
            endpoint("GET", "/notes/{note_id}"),
            endpoint("DELETE", "/notes/{note_id}"),
            endpoint("PUT", "/notes/{note_id}"),
        ];
        let q = measure(&[&Module::parse(&conftest), &Module::parse(&test)], Some(&endpoints));
        let t = q.tests.unwrap();
        let counts: Vec<u32> = t.endpoints.iter().map(|e| e.tests).collect();
        assert_eq!(counts, [2, 1, 1, 0]);
        assert_eq!(t.functions, 2);
    }

    #[test]
    fn coverage_counts_public_api_only() {
        let file = File::new(
            "app/x.py",
            "\"\"\"Doc.\"\"\"\nclass A:\n    \"\"\"A.\"\"\"\n    def __init__(self, x: int):\n        self.x = x\n    def get(self) -> int:\n        return self.x\n    def _hidden(self, y):\n        return y\ndef f(a: int, b) -> int:\n    \"\"\"F.\"\"\"\n    return a\n",
        );
        let q = measure(&[&Module::parse(&file)], None);
        // __init__: x (1/1); get: return (1/1); f: a, b, return (2/3).
        assert_eq!((q.type_hints.covered, q.type_hints.total), (4, 5));
        // module, A, get (no docstring), f.
        assert_eq!((q.docstrings.covered, q.docstrings.total), (3, 4));
        assert_eq!(q.type_hints.ratio, Some(0.8));
    }

    #[test]
    fn tests_are_attributed_to_the_endpoints_they_request() {
        let test = File::new(
            "tests/test_api.py",
            "def test_create(client):\n    assert client.post('/notes', json={}).status_code == 201\n\ndef test_get(client):\n    note_id = 1\n    assert client.get(f'/notes/{note_id}').status_code == 200\n\ndef helper():\n    return '/notes'\n\nclass TestList:\n    def test_list(self, client):\n        url = '/notes'\n        assert client.get(url).status_code == 200\n",
        );
        let endpoints = [
            endpoint("GET", "/notes"),
            endpoint("POST", "/notes"),
            endpoint("GET", "/notes/{note_id}"),
            endpoint("DELETE", "/notes/{note_id}"),
        ];
        let q = measure(&[&Module::parse(&test)], Some(&endpoints));
        let t = q.tests.unwrap();
        assert_eq!(t.functions, 3);
        let counts: Vec<u32> = t.endpoints.iter().map(|e| e.tests).collect();
        assert_eq!(counts, [1, 2, 1, 0]);
        assert_eq!(t.untested, ["DELETE /notes/{note_id}"]);
    }
}
