//! Static validation: cheap checks before the sandbox, with exact positions
//! the repair prompt can act on.
//!
//! Every rule produces [`Diagnostic`]s (`file`, `line`, `col`, `rule`,
//! `severity`, `message`); any error fails the attempt before sandbox time is
//! spent. Rules work on parsed syntax, never on raw text, so a word in a
//! comment or string cannot trigger them.
//!
//! # Layout
//! - [`paths`]: file names and sizes (relative, normalised, allowed, unique).
//! - [`python`]: parsing every `.py` file, positions, the entry point.
//! - [`service`]: the structure a FastAPI service must have.

pub mod paths;
pub mod python;
pub mod service;

use crate::files::File;
use crate::report::{Diagnostic, ValidationReport};
use crate::spec::Spec;

/// Runs every rule that applies to `spec` over `files`.
pub fn validate(spec: &Spec, files: &[File]) -> ValidationReport {
    let mut diagnostics = paths::check(files);
    let modules: Vec<python::Module<'_>> = files
        .iter()
        .filter(|f| f.path.ends_with(".py"))
        .map(python::Module::parse)
        .collect();
    for module in &modules {
        diagnostics.extend(module.syntax_diagnostics());
    }
    match spec {
        Spec::Function(f) => match modules.iter().find(|m| m.path() == "solution.py") {
            None => diagnostics.push(Diagnostic::error(
                "solution.py",
                0,
                0,
                "missing-file",
                "the answer has no solution.py; put the implementation there",
            )),
            Some(solution) => {
                if let Some(name) = &f.entry_point {
                    diagnostics.extend(solution.check_entry_point(name));
                }
            }
        },
        Spec::Service(s) => diagnostics.extend(service::check(s, files, &modules)),
    }
    ValidationReport::from_diagnostics(diagnostics)
}
