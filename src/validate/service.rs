//! The structure a generated FastAPI service must have before it is worth
//! sandbox time — its files, its `app`, its tests — and the service-only
//! rules that need the whole answer: routes against the spec, and the
//! container files (whose health rule is also met by a `GET /health` route).

use crate::files::File;
use crate::report::Diagnostic;
use crate::spec::ServiceSpec;

use super::layout::{self, NotLocated};
use super::python::Module;
use super::{compose, dockerfile, is_compose, is_dockerfile, routes};

/// Files every service answer must contain, besides its app module
/// ([`layout::locate`]).
const REQUIRED: [(&str, &str); 3] = [
    ("requirements.txt", "the pinned dependencies"),
    ("Dockerfile", "the container image"),
    ("docker-compose.yml", "the compose file"),
];

pub fn check(spec: &ServiceSpec, files: &[File], modules: &[Module<'_>]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let app = layout::locate(spec, files);
    if let Err(problem) = &app {
        out.push(not_located(problem));
    }
    for (path, what) in REQUIRED {
        if !files.iter().any(|f| f.path == path) {
            out.push(Diagnostic::error(
                path,
                0,
                0,
                "missing-file",
                format!("missing {path}: {what}"),
            ));
        }
    }
    if let Ok(app) = &app
        && let Some(main) = modules.iter().find(|m| m.path() == app.path)
        && main.has_valid_syntax()
        && !main.binds(&app.target.attribute)
    {
        out.push(Diagnostic::error(
            &app.path,
            0,
            0,
            "service-app",
            format!(
                "{} does not define `{}` at module level",
                app.path, app.target.attribute
            ),
        ));
    }
    if let Some(req) = files.iter().find(|f| f.path == "requirements.txt")
        && req
            .content
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        out.push(Diagnostic::error(
            "requirements.txt",
            0,
            0,
            "requirements-empty",
            "requirements.txt lists no packages",
        ));
    }
    if !has_tests(files) {
        out.push(Diagnostic::error(
            "tests/",
            0,
            0,
            "missing-tests",
            "no tests: add pytest files named tests/test_*.py with at least one test per endpoint",
        ));
    }
    let app_module = app.as_ref().map_or("app.main", |a| a.target.module.as_str());
    let analysis = routes::analyse(modules, app_module);
    out.extend(routes::check(spec, &analysis));
    for file in files {
        if is_dockerfile(&file.path) {
            out.extend(dockerfile::check(file, analysis.may_serve_health()));
        } else if is_compose(&file.path) {
            out.extend(compose::check(file));
        }
    }
    out
}

/// The finding for an app that could not be located.
fn not_located(problem: &NotLocated) -> Diagnostic {
    match problem {
        NotLocated::Missing => Diagnostic::error(
            "app/main.py",
            0,
            0,
            "missing-file",
            "missing app/main.py: the FastAPI application (`app = FastAPI(...)`); a project of another layout keeps it in `<package>/main.py` (`src/<package>/main.py` in a src layout), or the spec names its module in `service.app_module`",
        ),
        NotLocated::NamedMissing(named) => Diagnostic::error(
            "",
            0,
            0,
            "service-app",
            format!("the spec's `service.app_module` is `{named}`, but the answer has no such module"),
        ),
        NotLocated::Ambiguous(candidates) => Diagnostic::error(
            "",
            0,
            0,
            "service-app",
            format!(
                "several modules could hold the app ({}); keep one, or the spec names it in `service.app_module`",
                candidates.join(", ")
            ),
        ),
    }
}

/// Whether the answer has pytest files named `tests/test_*.py`.
pub fn has_tests(files: &[File]) -> bool {
    files.iter().any(|f| {
        f.path.starts_with("tests/")
            && f.path
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with("test_") && n.ends_with(".py"))
    })
}
