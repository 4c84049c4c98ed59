//! Python sources: parsed once with Ruff's parser (error-recovering, so every
//! syntax error of a file is reported, each with its line and column), then
//! shared by the rules that read the syntax tree.

use ruff_python_ast::{ModModule, PythonVersion, Stmt, StmtFunctionDef};
use ruff_python_parser::{Mode, ParseOptions, Parsed};
use ruff_source_file::LineIndex;
use ruff_text_size::{Ranged, TextSize};

use crate::files::File;
use crate::report::Diagnostic;

/// The Python the sandbox runs; syntax newer than this is an error.
pub const TARGET: PythonVersion = PythonVersion::PY311;

/// A parsed `.py` file.
pub struct Module<'a> {
    file: &'a File,
    parsed: Parsed<ModModule>,
    index: LineIndex,
}

impl<'a> Module<'a> {
    pub fn parse(file: &'a File) -> Module<'a> {
        let options = ParseOptions::from(Mode::Module).with_target_version(TARGET);
        let parsed = ruff_python_parser::parse_unchecked(&file.content, options)
            .try_into_module()
            .expect("Mode::Module parses to a module");
        Module {
            file,
            index: LineIndex::from_source_text(&file.content),
            parsed,
        }
    }

    pub fn path(&self) -> &str {
        &self.file.path
    }

    pub fn source(&self) -> &str {
        &self.file.content
    }

    /// The module's top-level statements (with error recovery, possibly partial).
    pub fn body(&self) -> &[Stmt] {
        &self.parsed.syntax().body
    }

    pub fn has_valid_syntax(&self) -> bool {
        self.parsed.errors().is_empty() && self.parsed.unsupported_syntax_errors().is_empty()
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn position(&self, offset: TextSize) -> (u32, u32) {
        let lc = self.index.line_column(offset, &self.file.content);
        (lc.line.get() as u32, lc.column.get() as u32)
    }

    /// An error diagnostic at a node.
    pub fn error_at(&self, node: &impl Ranged, rule: &str, message: impl Into<String>) -> Diagnostic {
        let (line, col) = self.position(node.start());
        Diagnostic::error(self.path(), line, col, rule, message)
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
        out
    }

    /// A top-level function by name.
    pub fn function(&self, name: &str) -> Option<&StmtFunctionDef> {
        self.body().iter().find_map(|s| match s {
            Stmt::FunctionDef(f) if f.name.as_str() == name => Some(f),
            _ => None,
        })
    }

    /// True when `name` is bound at module level by anything (def, class,
    /// assignment, import).
    pub fn binds(&self, name: &str) -> bool {
        self.body().iter().any(|s| match s {
            Stmt::FunctionDef(f) => f.name.as_str() == name,
            Stmt::ClassDef(c) => c.name.as_str() == name,
            Stmt::Assign(a) => a
                .targets
                .iter()
                .any(|t| t.as_name_expr().is_some_and(|n| n.id.as_str() == name)),
            Stmt::AnnAssign(a) => a.target.as_name_expr().is_some_and(|n| n.id.as_str() == name),
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

    /// The entry point must be defined at module level.
    pub fn check_entry_point(&self, name: &str) -> Vec<Diagnostic> {
        if !self.has_valid_syntax() || self.binds(name) {
            return Vec::new();
        }
        let defined: Vec<&str> = self
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
            defined.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", ")
        };
        vec![Diagnostic::error(
            self.path(),
            0,
            0,
            "entry-point",
            format!(
                "{} does not define `{name}` at module level (it defines {found})",
                self.path()
            ),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_entry_point_must_be_bound_at_module_level() {
        let file = File::new(
            "solution.py",
            "def helper():\n    def add(a, b):\n        return a + b\n",
        );
        let d = Module::parse(&file).check_entry_point("add");
        assert_eq!(d.len(), 1);
        assert!(d[0].message.contains("it defines `helper`"), "{}", d[0].message);
        let file = File::new("solution.py", "from operator import add as add\n");
        assert!(Module::parse(&file).check_entry_point("add").is_empty());
    }
}
