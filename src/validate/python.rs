//! Python sources: parsed once with Ruff's parser (error-recovering, so every
//! syntax error of a file is reported, each with its line and column), then
//! shared by the rules that read the syntax tree.
//!
//! Positions are 1-based lines and 1-based columns counted in characters, the
//! way editors and the model count them.
//!
//! # Nesting
//! The model controls how deep a syntax tree is, and every rule (and the
//! tree's own drop) recurses over it. Three bounds keep that total:
//! - a file over [`paths::MAX_FILE_BYTES`](super::paths::MAX_FILE_BYTES) is
//!   not parsed at all (it is already a `path-size` error), so no tree is
//!   deeper than that many levels;
//! - a tree nested deeper than [`MAX_NESTING`] is a `python-nesting` error
//!   and counts as invalid syntax, so no rule walks it;
//! - parsing, the rules and the drop run on a thread whose stack holds the
//!   deepest tree a file within the size limit can produce
//!   ([`crate::validate::check_answer`]).

use ruff_python_ast::visitor::source_order::{SourceOrderVisitor, TraversalSignal};
use ruff_python_ast::{AnyNodeRef, Expr, ModModule, PythonVersion, Stmt};
use ruff_python_parser::{Mode, ParseOptions, Parsed};
use ruff_source_file::LineIndex;
use ruff_text_size::{Ranged, TextSize};

use super::layout::{is_test_path, module_name_in};
use crate::files::File;
use crate::report::{Diagnostic, Severity};

/// The Python the sandbox runs; syntax newer than this is an error.
pub const TARGET: PythonVersion = PythonVersion::PY311;

/// Deepest syntax tree the rules read. CPython 3.11 itself stops compiling
/// between 2,000 and 3,000 levels; real code stays far below this.
pub const MAX_NESTING: usize = 1_000;

/// A parsed `.py` file.
pub struct Module<'a> {
    file: &'a File,
    parsed: Parsed<ModModule>,
    index: LineIndex,
    /// False for a file over the size limit, left unparsed.
    parsed_fully: bool,
    /// Where the tree first nests deeper than [`MAX_NESTING`].
    too_deep: Option<TextSize>,
    /// The dotted name Python imports it as (see [`Module::name`]).
    name: String,
}

impl<'a> Module<'a> {
    pub fn parse(file: &'a File) -> Module<'a> {
        Module::parse_in(file, None)
    }

    /// Parses `file` of an answer whose packages live under `source_root`
    /// (`src` for a src layout, see [`super::layout`]): a file there is
    /// imported without that prefix.
    pub fn parse_in(file: &'a File, source_root: Option<&str>) -> Module<'a> {
        let options = ParseOptions::from(Mode::Module).with_target_version(TARGET);
        let parsed_fully = file.content.len() <= super::paths::MAX_FILE_BYTES;
        let source = if parsed_fully { file.content.as_str() } else { "" };
        let parsed = ruff_python_parser::parse_unchecked(source, options)
            .try_into_module()
            .expect("Mode::Module parses to a module");
        let too_deep = first_too_deep(parsed.syntax());
        Module {
            file,
            index: LineIndex::from_source_text(&file.content),
            parsed,
            parsed_fully,
            too_deep,
            name: module_name_in(&file.path, source_root),
        }
    }

    pub fn path(&self) -> &str {
        &self.file.path
    }

    pub fn source(&self) -> &str {
        &self.file.content
    }

    /// The dotted name Python imports this file as (`app/routers/notes.py` →
    /// `app.routers.notes`, `app/__init__.py` → `app`).
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// The package relative imports start from: the module itself for an
    /// `__init__.py`, its parent otherwise.
    pub fn package(&self) -> String {
        let name = self.name();
        if self.path().ends_with("__init__.py") {
            name
        } else {
            name.rsplit_once('.')
                .map(|(parent, _)| parent.to_owned())
                .unwrap_or_default()
        }
    }

    /// True for pytest files: test code runs only in the sandbox and never
    /// ships, so some rules judge it more leniently.
    pub fn is_test(&self) -> bool {
        is_test_path(self.path())
    }

    /// The module's top-level statements (with error recovery, possibly partial).
    pub fn body(&self) -> &[Stmt] {
        &self.parsed.syntax().body
    }

    /// True when the rules may read the tree: it parsed without errors,
    /// within the size limit, and nests no deeper than [`MAX_NESTING`].
    pub fn has_valid_syntax(&self) -> bool {
        self.parsed_fully
            && self.too_deep.is_none()
            && self.parsed.errors().is_empty()
            && self.parsed.unsupported_syntax_errors().is_empty()
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn position(&self, offset: TextSize) -> (u32, u32) {
        let lc = self.index.line_column(offset, &self.file.content);
        (lc.line.get() as u32, lc.column.get() as u32)
    }

    /// A diagnostic at the start of a node.
    pub fn at(&self, node: &impl Ranged, severity: Severity, rule: &str, message: impl Into<String>) -> Diagnostic {
        let (line, col) = self.position(node.start());
        Diagnostic::new(severity, self.path(), line, col, rule, message)
    }

    /// An error diagnostic at the start of a node.
    pub fn error_at(&self, node: &impl Ranged, rule: &str, message: impl Into<String>) -> Diagnostic {
        self.at(node, Severity::Error, rule, message)
    }

    /// Every syntax error, and syntax the target Python does not support.
    pub fn syntax_diagnostics(&self) -> Vec<Diagnostic> {
        let mut out: Vec<Diagnostic> = self
            .parsed
            .errors()
            .iter()
            .map(|e| {
                let (line, col) = self.position(e.location.start());
                Diagnostic::error(self.path(), line, col, "python-syntax", e.error.to_string())
            })
            .collect();
        out.extend(self.parsed.unsupported_syntax_errors().iter().map(|e| {
            let (line, col) = self.position(e.range.start());
            Diagnostic::error(self.path(), line, col, "python-version", e.to_string())
        }));
        if let Some(offset) = self.too_deep {
            let (line, col) = self.position(offset);
            out.push(Diagnostic::error(
                self.path(),
                line,
                col,
                "python-nesting",
                format!(
                    "expressions or blocks nested more than {MAX_NESTING} levels deep here; \
                     CPython cannot compile this either, write it flat (a loop, a list, a helper)"
                ),
            ));
        }
        out
    }

    /// True when `name` is bound at module level by anything (def, class,
    /// assignment, import).
    pub fn binds(&self, name: &str) -> bool {
        self.defines(name)
            || module_level(self.body()).into_iter().any(|s| match s {
                Stmt::Import(i) => i.names.iter().any(|a| {
                    a.asname.as_ref().map_or_else(
                        || a.name.as_str().split('.').next() == Some(name),
                        |n| n.as_str() == name,
                    )
                }),
                Stmt::ImportFrom(i) => i
                    .names
                    .iter()
                    .any(|a| a.asname.as_ref().unwrap_or(&a.name).as_str() == name),
                _ => false,
            })
    }

    /// True when the module itself defines `name` at module level (def,
    /// class, assignment), as opposed to importing it from elsewhere.
    pub fn defines(&self, name: &str) -> bool {
        module_level(self.body()).into_iter().any(|s| match s {
            Stmt::FunctionDef(f) => f.name.as_str() == name,
            Stmt::ClassDef(c) => c.name.as_str() == name,
            Stmt::Assign(a) => a
                .targets
                .iter()
                .any(|t| t.as_name_expr().is_some_and(|n| n.id.as_str() == name)),
            Stmt::AnnAssign(a) => a.target.as_name_expr().is_some_and(|n| n.id.as_str() == name),
            _ => false,
        })
    }
}

/// The start of the first node nested deeper than [`MAX_NESTING`]. The walk
/// recurses, but never below that depth: it skips the children of any node
/// at the limit (and everything once one is found).
fn first_too_deep(module: &ModModule) -> Option<TextSize> {
    struct Depth {
        depth: usize,
        found: Option<TextSize>,
    }
    impl<'a> SourceOrderVisitor<'a> for Depth {
        fn enter_node(&mut self, node: AnyNodeRef<'a>) -> TraversalSignal {
            self.depth += 1;
            if self.found.is_some() {
                return TraversalSignal::Skip;
            }
            if self.depth > MAX_NESTING {
                self.found = Some(node.start());
                return TraversalSignal::Skip;
            }
            TraversalSignal::Traverse
        }

        fn leave_node(&mut self, _node: AnyNodeRef<'a>) {
            self.depth -= 1;
        }
    }
    let mut walk = Depth { depth: 0, found: None };
    walk.visit_body(&module.body);
    walk.found
}

/// Statements that run at module level: the body, and the bodies of
/// top-level `if`, `try`, `with`, `for` and `while` blocks (a definition under
/// `if sys.version_info >= …:` still binds a module-level name), except
/// `if __name__ == "__main__":`, which never runs on import.
pub fn module_level(body: &[Stmt]) -> Vec<&Stmt> {
    fn walk<'s>(body: &'s [Stmt], out: &mut Vec<&'s Stmt>) {
        for stmt in body {
            out.push(stmt);
            match stmt {
                Stmt::If(s) if !is_main_guard(&s.test) => {
                    walk(&s.body, out);
                    for clause in &s.elif_else_clauses {
                        walk(&clause.body, out);
                    }
                }
                Stmt::Try(s) => {
                    walk(&s.body, out);
                    for handler in &s.handlers {
                        let ruff_python_ast::ExceptHandler::ExceptHandler(h) = handler;
                        walk(&h.body, out);
                    }
                    walk(&s.orelse, out);
                    walk(&s.finalbody, out);
                }
                Stmt::With(s) => walk(&s.body, out),
                Stmt::For(s) => {
                    walk(&s.body, out);
                    walk(&s.orelse, out);
                }
                Stmt::While(s) => {
                    walk(&s.body, out);
                    walk(&s.orelse, out);
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(body, &mut out);
    out
}

/// `__name__ == "__main__"` (either way round).
fn is_main_guard(test: &Expr) -> bool {
    let Expr::Compare(c) = test else { return false };
    let mut sides = std::iter::once(&*c.left).chain(c.comparators.iter());
    let names = sides
        .clone()
        .any(|e| e.as_name_expr().is_some_and(|n| n.id.as_str() == "__name__"));
    names && sides.any(|e| string_value(e) == Some("__main__"))
}

/// The text of a plain string literal (implicit concatenation included).
pub fn string_value(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::StringLiteral(s) => Some(s.value.to_str()),
        _ => None,
    }
}

/// The first statement's string, if the body starts with a docstring.
pub fn docstring(body: &[Stmt]) -> Option<&str> {
    match body.first() {
        Some(Stmt::Expr(e)) => string_value(&e.value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::layout::module_name;

    #[test]
    fn every_syntax_error_is_reported_with_its_position() {
        let file = File::new("a.py", "def f(:\n    return 1\n\nx = (1,\n");
        let m = Module::parse(&file);
        let d = m.syntax_diagnostics();
        assert!(!d.is_empty());
        assert_eq!((d[0].line, d[0].col, d[0].rule.as_str()), (1, 7, "python-syntax"));
        assert!(d.len() >= 2, "{d:?}");
    }

    #[test]
    fn syntax_newer_than_the_sandbox_python_is_an_error() {
        let file = File::new("a.py", "type Point = tuple[float, float]\n");
        let d = Module::parse(&file).syntax_diagnostics();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].rule, "python-version");
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        let file = File::new("a.py", "x = 'é' +\n");
        let d = Module::parse(&file).syntax_diagnostics();
        assert_eq!((d[0].line, d[0].col), (1, 10), "{d:?}");
    }

    #[test]
    fn module_names_follow_pythons_import_rules() {
        assert_eq!(module_name("app/routers/notes.py"), "app.routers.notes");
        assert_eq!(module_name("app/__init__.py"), "app");
        assert_eq!(module_name("solution.py"), "solution");
        let init = File::new("app/routers/__init__.py", "");
        assert_eq!(Module::parse(&init).package(), "app.routers");
        let plain = File::new("app/routers/notes.py", "");
        assert_eq!(Module::parse(&plain).package(), "app.routers");
        let top = File::new("solution.py", "");
        assert_eq!(Module::parse(&top).package(), "");
    }
}
