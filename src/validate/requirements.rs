//! `requirements.txt`: the supply-chain gate. Each line is read the way pip
//! reads it and each requirement parsed by the PEP 508 grammar
//! ([`super::pep508`]), so a finding points at the exact column.
//!
//! A generated service may only depend on what the sandbox runtime provides,
//! at versions that admit the runtime's: every requirement is named in the
//! runtime's allow-list, its specifiers must admit the runtime's version
//! (`==` it exactly, or a range such as `>=0.110` or `~=2.14` that contains
//! it; a pin differing only in patch level, or no specifier at all, is a
//! warning: the sandbox tests the runtime's version, which a deployment may
//! not install), and it is fetched from the default index (no URLs, no index
//! or find-links options, no includes, no editable installs).

use std::collections::HashMap;

use crate::files::File;
use crate::report::{Diagnostic, Severity};

use super::packages::{self, VersionFit};
use super::pep508::{Requirement, read};

/// Checks a requirements file against the sandbox runtime.
pub fn check(file: &File) -> Vec<Diagnostic> {
    let parsed = read(file);
    let path = file.path.as_str();
    let mut out = parsed.diagnostics;
    let mut seen: HashMap<String, u32> = HashMap::new();
    for (r, line, col) in &parsed.requirements {
        let name = packages::normalize(&r.name);
        let shown = requirement_shown(r);
        if let Some(earlier) = seen.insert(name.clone(), *line) {
            out.push(Diagnostic::warning(
                path,
                *line,
                *col,
                "requirements-duplicate",
                format!("`{}` is already listed on line {earlier}", r.name),
            ));
        }
        if let Some(url) = &r.url {
            out.push(Diagnostic::error(
                path,
                *line,
                *col,
                "requirements-url",
                format!(
                    "`{}` installs from {url}; packages come only from the default index, pinned with `==`",
                    r.name
                ),
            ));
            continue;
        }
        let allowed = packages::allowed_version(&name);
        let locked = packages::locked_version(&name);
        match (allowed, locked) {
            (Some(_), _) => {}
            (None, Some(_)) => out.push(Diagnostic::warning(
                path,
                *line,
                *col,
                "requirements-transitive",
                format!(
                    "`{}` is in the runtime only as a dependency of {}; list that instead",
                    r.name,
                    packages::dependents(&name).join(" or ")
                ),
            )),
            (None, None) => {
                out.push(Diagnostic::error(
                    path,
                    *line,
                    *col,
                    "requirements-not-allowed",
                    format!(
                        "`{}` is not provided by the sandbox runtime; allowed packages: {}",
                        r.name,
                        packages::allowed_names().join(", ")
                    ),
                ));
                continue;
            }
        }
        let want = allowed.or(locked).unwrap_or_default();
        if let Some((severity, rule, message)) = version_finding(r, &shown, want) {
            out.push(Diagnostic::new(severity, path, *line, *col, rule, message));
        }
        let unavailable: Vec<&String> = r
            .extras
            .iter()
            .filter(|e| !packages::extra_is_provided(&name, e))
            .collect();
        if !unavailable.is_empty() {
            out.push(Diagnostic::error(
                path,
                *line,
                *col,
                "requirements-extras",
                format!(
                    "extras [{}] of `{}` pull in packages the sandbox runtime does not provide; drop them",
                    unavailable.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", "),
                    r.name
                ),
            ));
        }
    }
    out
}

/// What `r`'s version specifiers say about the runtime's version `want`.
/// The sandbox runs `want` whatever the file says; the file matters for a
/// deployment, so what admits `want` passes, and what only risks drifting
/// from it is a warning.
fn version_finding(r: &Requirement, shown: &str, want: &str) -> Option<(Severity, &'static str, String)> {
    let name = &r.name;
    let (severity, rule, message) = match packages::version_fit(&r.specifiers, want) {
        VersionFit::Pinned | VersionFit::InRange => return None,
        VersionFit::Unpinned => (
            Severity::Warning,
            "requirements-unpinned",
            format!(
                "`{shown}` is not pinned; the sandbox tests it with {want}, pin `{name}=={want}` so a deployment installs the same"
            ),
        ),
        VersionFit::PatchLevel => (
            Severity::Warning,
            "requirements-version",
            format!(
                "`{shown}` differs from the sandbox runtime's {name} {want} only in patch level; it is tested with {want}"
            ),
        ),
        VersionFit::Conflict => (
            Severity::Error,
            "requirements-version",
            format!(
                "`{shown}` does not admit the sandbox runtime's {name} {want}; write `{name}=={want}` (or a range that includes it)"
            ),
        ),
    };
    Some((severity, rule, message))
}

fn requirement_shown(r: &Requirement) -> String {
    let specifiers: Vec<String> = r.specifiers.iter().map(|s| format!("{}{}", s.op, s.version)).collect();
    format!("{}{}", r.name, specifiers.join(","))
}

/// The normalised names a requirements file lists (parseable lines only).
pub fn listed_names(file: &File) -> Vec<String> {
    read(file)
        .requirements
        .iter()
        .map(|(r, _, _)| packages::normalize(&r.name))
        .collect()
}
