//! The structure a generated FastAPI service must have before it is worth
//! sandbox time — its files, its `app`, its tests — and the service-only
//! rules that need the whole answer: routes against the spec, and the
//! container files (whose health rule is also met by a `GET /health` route).

use crate::files::File;
use crate::report::Diagnostic;
use crate::spec::ServiceSpec;

use super::python::Module;
use super::{compose, dockerfile, is_compose, is_dockerfile, routes};

/// Files every service answer must contain.
const REQUIRED: [(&str, &str); 4] = [
    ("app/main.py", "the FastAPI application (`app = FastAPI(...)`)"),
    ("requirements.txt", "the pinned dependencies"),
    ("Dockerfile", "the container image"),
    ("docker-compose.yml", "the compose file"),
];

pub fn check(spec: &ServiceSpec, files: &[File], modules: &[Module<'_>]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
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
    if let Some(main) = modules.iter().find(|m| m.path() == "app/main.py")
        && main.has_valid_syntax()
        && !main.binds("app")
    {
        out.push(Diagnostic::error(
            "app/main.py",
            0,
            0,
            "service-app",
            "app/main.py does not define `app` at module level",
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
    let analysis = routes::analyse(modules);
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
