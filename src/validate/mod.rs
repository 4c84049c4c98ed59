//! Static validation: cheap checks before the sandbox, with exact positions
//! the repair prompt can act on.
//!
//! Every rule produces [`Diagnostic`]s (`file`, `line`, `col`, `rule`,
//! `severity`, `message`); any error fails the attempt before sandbox time is
//! spent, warnings are reported to the model without failing it. Rules work
//! on parsed structure — Python syntax trees, PEP 508 requirements, Dockerfile
//! instructions, YAML — never on raw text, so a word in a comment or string
//! cannot trigger them. Lines and columns are 1-based (columns count
//! characters); 0 means the finding is about the whole file (or line).
//!
//! Rules that read a Python syntax tree skip files with syntax errors: the
//! tree is partial there, and the syntax errors are what to fix first.
//!
//! # Rules
//!
//! | id | severity | what |
//! |---|---|---|
//! | `path-invalid` | error | absolute, `..`, `.`, empty, `.git`, control or Windows-hostile path |
//! | `path-extension` | error | a file type a project should not contain |
//! | `path-size`, `path-count` | error | a file, the answer, or the file count over its limit |
//! | `content-nul` | error | a file containing U+0000 (no text file, and no Python source, may) |
//! | `path-duplicate` | error | the same path twice, or paths equal on case-insensitive file systems |
//! | `path-conflict` | error | a path that is both a file and a directory |
//! | `python-syntax` | error | a syntax error |
//! | `python-version` | error | syntax newer than Python 3.11 |
//! | `python-nesting` | error | a syntax tree nested deeper than 1,000 levels (CPython cannot compile it either) |
//! | `missing-file` | error | `solution.py`, or a file every service needs (its app module: see [`layout`]) |
//! | `entry-point` | error | the function spec's entry point is not bound at module level |
//! | `entry-signature` | error | `async def`, or parameters the harness's calls do not fit |
//! | `name-undefined` | error (warning in tests) | a name read that no scope the read can see binds and no builtin provides, or read on import before any line binds it (ruff's F821) |
//! | `empty-body` | error | the entry point's body is only a docstring, `pass` or `...` |
//! | `import-self` | error | a module importing itself (`from solution import f` in `solution.py`) |
//! | `security-eval` | error (warning in function solutions and tests) | `eval`, `exec`, `compile` |
//! | `security-import` | error | `__import__`, `importlib.import_module` and other dynamic imports |
//! | `security-shell` | error | `os.system`, `os.popen`, `subprocess` with `shell=True` |
//! | `security-deserialize` | error | `pickle`/`marshal` loads, `shelve` |
//! | `security-ctypes` | error | importing `ctypes` |
//! | `import-not-allowed` | error (warning if optional) | outside the standard library, the answer and (services) the runtime |
//! | `import-unresolved` | error | an import of the answer's own modules that does not exist |
//! | `import-not-in-requirements` | error (warning in tests) | a service imports a package its requirements.txt does not install |
//! | `import-transitive` | warning | a service imports an allowed package only installed as a dependency |
//! | `requirements-syntax` | error | not a PEP 508 requirement |
//! | `requirements-option` | error | `-e`, `-r`, `--index-url`, `-f`, `--trusted-host`, … |
//! | `requirements-url` | error | a URL or path instead of a package name |
//! | `requirements-not-allowed` | error | a package the sandbox runtime does not provide |
//! | `requirements-transitive` | warning | a runtime package that is only a dependency of an allowed one |
//! | `requirements-unpinned` | warning | no version specifier (the sandbox tests the runtime's version) |
//! | `requirements-version` | error (warning when only the patch level differs) | specifiers that do not admit the runtime's version |
//! | `requirements-extras` | error | extras that pull in packages the runtime lacks |
//! | `requirements-duplicate` | warning | a package listed twice |
//! | `requirements-empty` | error | a service's requirements.txt lists nothing |
//! | `dockerfile-syntax` | error | unknown instruction, missing arguments, malformed exec form |
//! | `dockerfile-from` | error | no `FROM`, an instruction before it, or an unpinned base image |
//! | `dockerfile-user` | error | no `USER` in the final stage, or root |
//! | `dockerfile-secret` | error | a credential written into `ENV` or `ARG` |
//! | `dockerfile-cmd` | error | no `CMD` or `ENTRYPOINT` in the final stage |
//! | `dockerfile-health` | error | neither a `HEALTHCHECK` nor a `GET /health` route |
//! | `compose-syntax` | error | not valid YAML, or not a mapping |
//! | `compose-service` | error | no services, or a service with neither `build` nor `image` |
//! | `compose-privileged` | error | `privileged: true` |
//! | `compose-network-host` | error | `network_mode: host` |
//! | `compose-pid-host` | error | `pid: host` |
//! | `compose-docker-socket` | error | the Docker socket mounted |
//! | `compose-capabilities` | error | `cap_add` of `ALL`, `SYS_ADMIN` or similar |
//! | `compose-unconfined` | error | `security_opt` turning seccomp/AppArmor/SELinux off |
//! | `compose-secret` | warning | a credential written into `environment` |
//! | `service-app` | error | the app module does not bind `app` (or the spec's attribute), the spec's `app_module` is not in the answer, or several modules could be the app |
//! | `missing-tests` | error | a service without `tests/test_*.py` |
//! | `tests-endpoint` | error | a spec endpoint no test requests (see [`quality`] for how tests are attributed) |
//! | `conftest-hook` | error | a `pytest_*` hook in a service's `conftest.py`, or `pytest_plugins` in its test code |
//! | `route-missing` | error (warning when routes cannot all be read) | a spec endpoint or `GET /health` not declared |
//! | `route-method` | error (same) | the path is declared, but not with the spec's method |
//!
//! Besides diagnostics, [`ValidationReport::quality`] carries the
//! [`quality`] counts (type hints, docstrings, tests per endpoint).
//!
//! # Layout
//! - [`paths`]: file names and sizes.
//! - [`python`]: parsing every `.py` file, positions, shared syntax helpers.
//! - [`entry`]: the function spec's entry point and its signature.
//! - [`names`]: undefined names, empty bodies, self-imports.
//! - [`security`]: the security policy on the syntax tree.
//! - [`imports`]: the import allow-list, with [`stdlib`] (Python 3.11's
//!   module names) and [`packages`] (what the sandbox runtime installs).
//! - [`requirements`]: the PEP 508 parser and the supply-chain gate.
//! - [`dockerfile`], [`compose`]: the container files.
//! - [`routes`]: the routes a FastAPI app declares, against the spec.
//! - [`layout`]: where a service's app and packages live (src layouts,
//!   packages not named `app`, the spec's `app_module`).
//! - [`service`]: the structure a service must have; runs the service rules.
//! - [`suite`]: what a service's conftest files may do (the sealed suite).
//! - [`quality`]: the informational quality report.

pub mod compose;
pub mod dockerfile;
pub mod entry;
pub mod imports;
pub mod layout;
pub mod names;
pub mod packages;
pub mod paths;
pub mod pep508;
pub mod python;
pub mod quality;
pub mod requirements;
pub mod routes;
pub mod security;
pub mod service;
pub mod stdlib;
pub mod suite;

use crate::files::File;
use crate::report::{Diagnostic, Severity, ValidationReport};
use crate::spec::Spec;

/// Runs every rule that applies to `spec` over `files`.
pub fn validate(spec: &Spec, files: &[File]) -> ValidationReport {
    let mut diagnostics = paths::check(files);
    let source_root = match spec {
        Spec::Service(_) => layout::source_root(files),
        Spec::Function(_) => None,
    };
    let modules: Vec<python::Module<'_>> = files
        .iter()
        .filter(|f| f.path.ends_with(".py"))
        .map(|f| python::Module::parse_in(f, source_root))
        .collect();
    for module in &modules {
        diagnostics.extend(module.syntax_diagnostics());
    }
    let service = matches!(spec, Spec::Service(_));
    for file in files.iter().filter(|f| is_requirements(&f.path)) {
        diagnostics.extend(requirements::check(file));
    }
    let listed = files
        .iter()
        .find(|f| f.path == "requirements.txt")
        .map(requirements::listed_names);
    let context = imports::Context::new(&modules, if service { listed.as_deref() } else { None });
    for module in modules.iter().filter(|m| m.has_valid_syntax()) {
        diagnostics.extend(imports::check(module, &context, service));
        diagnostics.extend(security::check(module, policy(spec, module)));
        let entry_point = match spec {
            Spec::Function(f) if module.path() == "solution.py" => f.entry_point.as_deref(),
            _ => None,
        };
        diagnostics.extend(names::check(module, entry_point));
        if service {
            diagnostics.extend(suite::check(module));
        }
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
            Some(solution) => diagnostics.extend(entry::check(f, solution)),
        },
        Spec::Service(s) => diagnostics.extend(service::check(s, files, &modules)),
    }
    if !service {
        // Container files are not asked of functions, but if an answer has
        // them they must still be sound.
        for file in files {
            if is_dockerfile(&file.path) {
                diagnostics.extend(dockerfile::check(file, true));
            } else if is_compose(&file.path) {
                diagnostics.extend(compose::check(file));
            }
        }
    }
    let endpoints = match spec {
        Spec::Service(s) => Some(s.endpoints.as_slice()),
        Spec::Function(_) => None,
    };
    let measured: Vec<&python::Module<'_>> = modules.iter().filter(|m| m.has_valid_syntax()).collect();
    let quality = quality::measure(&measured, endpoints);
    // At least one test per endpoint (when there are tests at all; a
    // service without any has `missing-tests` already).
    if let Some(tests) = &quality.tests
        && service::has_tests(files)
    {
        for endpoint in &tests.untested {
            diagnostics.push(Diagnostic::error(
                "tests/",
                0,
                0,
                "tests-endpoint",
                format!(
                    "no test requests {endpoint}: every endpoint needs at least one test that calls it with its method (e.g. `client.get(\"/notes/1\")` for GET /notes/{{note_id}})"
                ),
            ));
        }
    }
    // Errors first, as the repair prompt reads them; the sort is stable, so
    // within a severity findings keep the order the rules ran in.
    diagnostics.sort_by_key(|d| d.severity);
    ValidationReport {
        quality: Some(quality.to_json()),
        ..ValidationReport::from_diagnostics(diagnostics)
    }
}

/// How strictly the security policy applies to one module. Test code runs
/// only in the sandbox and never ships, and a function solution only ever
/// runs in the sandbox, where `eval` of an expression the task asks to
/// evaluate is contained; a service is deployed, so everything is an error.
fn policy(spec: &Spec, module: &python::Module<'_>) -> security::Policy {
    if module.is_test() {
        return security::Policy {
            eval: Severity::Warning,
            other: Severity::Warning,
        };
    }
    match spec {
        Spec::Function(_) => security::Policy {
            eval: Severity::Warning,
            other: Severity::Error,
        },
        Spec::Service(_) => security::Policy {
            eval: Severity::Error,
            other: Severity::Error,
        },
    }
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `requirements.txt`, `requirements-dev.txt`, `requirements/base.txt`.
pub fn is_requirements(path: &str) -> bool {
    let name = base_name(path);
    name.ends_with(".txt") && (name.starts_with("requirements") || path.starts_with("requirements/"))
}

pub fn is_dockerfile(path: &str) -> bool {
    base_name(path) == "Dockerfile"
}

pub fn is_compose(path: &str) -> bool {
    matches!(
        base_name(path),
        "docker-compose.yml" | "docker-compose.yaml" | "compose.yml" | "compose.yaml"
    )
}
