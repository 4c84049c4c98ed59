//! Where a service's code lives, in the layouts real projects use.
//!
//! - **Source root.** An answer that keeps Python files under `src/`
//!   without making `src` a package itself (no `src/__init__.py`) has a src
//!   layout: its modules there are imported without the prefix
//!   (`src/notes_api/main.py` is `notes_api.main`), and the sandbox puts
//!   `src/` on Python's path ahead of the answer's root, as an installed
//!   project or pytest's `pythonpath = ["src"]` would (the root stays on the
//!   path, so what the root can import still imports).
//! - **The app.** The spec's `service.app_module` names the module
//!   (`notes_api.main`, or `notes_api.main:application` for another
//!   attribute than `app`). Without it the module is found from the file
//!   names alone: `app.main` (Kiln's own layout); else the one `main` module
//!   of a top-level package (`notes_api/main.py`, `src/notes_api/main.py`);
//!   else a top-level `main.py`. Two candidates of the same rank are
//!   ambiguous, and the spec must name one.
//!
//! Discovery reads paths only, never syntax, so the worker builds the
//! sandbox request from it without parsing (and without the deep stack
//! parsing needs); validation then checks that the module found binds the
//! attribute ([`super::service`]).

use crate::files::File;
use crate::spec::ServiceSpec;

/// The directory of a src layout.
pub const SOURCE_ROOT: &str = "src";

/// `Some("src")` when the answer has a src layout (see the module doc).
pub fn source_root(files: &[File]) -> Option<&'static str> {
    let inside = files
        .iter()
        .any(|f| f.path.starts_with("src/") && f.path.ends_with(".py"));
    let is_package = files.iter().any(|f| f.path == "src/__init__.py");
    (inside && !is_package).then_some(SOURCE_ROOT)
}

/// The dotted module name of a `.py` path.
pub fn module_name(path: &str) -> String {
    let stem = path.strip_suffix(".py").unwrap_or(path);
    let stem = stem.strip_suffix("/__init__").unwrap_or(stem);
    stem.replace('/', ".")
}

/// True for files pytest collects or configures: anything under `tests/`,
/// `test_*.py`, `*_test.py` and `conftest.py`.
pub fn is_test_path(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    path.starts_with("tests/")
        || path.contains("/tests/")
        || name == "conftest.py"
        || (name.starts_with("test_") && name.ends_with(".py"))
        || name.ends_with("_test.py")
}

/// The dotted name Python imports `path` as, when the answer's packages
/// live under `source_root`.
pub fn module_name_in(path: &str, source_root: Option<&str>) -> String {
    let inside = source_root
        .and_then(|root| path.strip_prefix(root))
        .and_then(|rest| rest.strip_prefix('/'));
    module_name(inside.unwrap_or(path))
}

/// A uvicorn-style app reference: `module` or `module:attribute`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppTarget {
    pub module: String,
    pub attribute: String,
}

impl AppTarget {
    /// Reads `notes_api.main` or `notes_api.main:application`; `None` when
    /// a part is not a Python identifier.
    pub fn parse(text: &str) -> Option<AppTarget> {
        crate::spec::app_module_parts(text).map(|(module, attribute)| AppTarget {
            module: module.to_owned(),
            attribute: attribute.to_owned(),
        })
    }

    /// `module:attribute`, as uvicorn and the spec write it.
    pub fn shown(&self) -> String {
        format!("{}:{}", self.module, self.attribute)
    }
}

/// Where a service's app is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppLocation {
    pub target: AppTarget,
    /// The file that defines the module.
    pub path: String,
    /// `Some("src")` for a src layout.
    pub source_root: Option<&'static str>,
}

/// Why no app location could be settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotLocated {
    /// No candidate at all (no `app/main.py`, no package `main.py`).
    Missing,
    /// The spec's `app_module` names no module of the answer.
    NamedMissing(String),
    /// Several candidates of the same rank.
    Ambiguous(Vec<String>),
}

/// Finds the app of a service answer (see the module doc).
pub fn locate(spec: &ServiceSpec, files: &[File]) -> Result<AppLocation, NotLocated> {
    let root = source_root(files);
    let modules: Vec<(String, &str)> = files
        .iter()
        .filter(|f| f.path.ends_with(".py") && !is_test_path(&f.path))
        .map(|f| (module_name_in(&f.path, root), f.path.as_str()))
        .collect();
    let found = |target: AppTarget, path: &str| AppLocation {
        target,
        path: path.to_owned(),
        source_root: root,
    };
    if let Some(named) = &spec.app_module {
        let target = AppTarget::parse(named).ok_or_else(|| NotLocated::NamedMissing(named.clone()))?;
        // From the root a src layout's module is also `src.<module>`.
        let path = modules
            .iter()
            .find(|(m, _)| *m == target.module)
            .map(|(_, p)| *p)
            .or_else(|| {
                files
                    .iter()
                    .find(|f| f.path.ends_with(".py") && module_name(&f.path) == target.module)
                    .map(|f| f.path.as_str())
            })
            .ok_or_else(|| NotLocated::NamedMissing(named.clone()))?;
        return Ok(found(target, path));
    }
    let default = AppTarget {
        module: "app.main".into(),
        attribute: "app".into(),
    };
    if let Some((_, path)) = modules.iter().find(|(m, _)| m == "app.main") {
        return Ok(found(default, path));
    }
    let ranks: [fn(&str) -> bool; 2] = [|m| m.split('.').count() == 2 && m.ends_with(".main"), |m| m == "main"];
    for rank in ranks {
        let candidates: Vec<&(String, &str)> = modules.iter().filter(|(m, _)| rank(m)).collect();
        match candidates.as_slice() {
            [] => {}
            [(module, path)] => {
                let target = AppTarget {
                    module: module.clone(),
                    attribute: "app".into(),
                };
                return Ok(found(target, path));
            }
            several => return Err(NotLocated::Ambiguous(several.iter().map(|(m, _)| m.clone()).collect())),
        }
    }
    Err(NotLocated::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(app_module: Option<&str>) -> ServiceSpec {
        let mut value = serde_json::json!({
            "service_name": "notes",
            "description": "notes",
            "endpoints": [{"method": "GET", "path": "/notes"}],
        });
        if let Some(m) = app_module {
            value["app_module"] = m.into();
        }
        serde_json::from_value(value).expect("a service spec")
    }

    fn located(paths: &[&str], app_module: Option<&str>) -> Result<(String, String, Option<&'static str>), NotLocated> {
        let files: Vec<File> = paths.iter().map(|p| File::new(*p, "")).collect();
        locate(&spec(app_module), &files).map(|l| (l.target.shown(), l.path, l.source_root))
    }

    #[test]
    fn test_files_are_recognised_by_pytests_conventions() {
        for path in [
            "tests/test_a.py",
            "tests/helpers.py",
            "conftest.py",
            "test_x.py",
            "pkg/x_test.py",
        ] {
            assert!(is_test_path(path), "{path}");
        }
        for path in ["app/main.py", "solution.py", "app/testing_utils.py"] {
            assert!(!is_test_path(path), "{path}");
        }
    }

    #[test]
    fn kilns_own_layout_comes_first() {
        assert_eq!(
            located(&["app/main.py", "notes_api/main.py", "main.py"], None),
            Ok(("app.main:app".into(), "app/main.py".into(), None))
        );
    }

    #[test]
    fn a_package_not_named_app_and_a_src_layout_are_found() {
        assert_eq!(
            located(
                &[
                    "notes_api/__init__.py",
                    "notes_api/main.py",
                    "tests/main.py",
                    "tests/test_notes.py"
                ],
                None
            ),
            Ok(("notes_api.main:app".into(), "notes_api/main.py".into(), None))
        );
        assert_eq!(
            located(
                &[
                    "src/notes_api/__init__.py",
                    "src/notes_api/main.py",
                    "migrations/env.py"
                ],
                None
            ),
            Ok(("notes_api.main:app".into(), "src/notes_api/main.py".into(), Some("src")))
        );
        assert_eq!(
            located(&["main.py", "models.py"], None),
            Ok(("main:app".into(), "main.py".into(), None))
        );
    }

    #[test]
    fn a_src_directory_that_is_a_package_is_no_src_layout() {
        assert_eq!(
            located(&["src/__init__.py", "src/main.py"], None),
            Ok(("src.main:app".into(), "src/main.py".into(), None))
        );
        assert_eq!(module_name_in("src/notes_api/db.py", Some("src")), "notes_api.db");
        assert_eq!(module_name_in("tests/test_db.py", Some("src")), "tests.test_db");
    }

    #[test]
    fn the_spec_names_the_module_when_the_files_do_not_say() {
        assert_eq!(
            located(&["notes_api/main.py", "billing/main.py"], None),
            Err(NotLocated::Ambiguous(vec![
                "notes_api.main".into(),
                "billing.main".into()
            ]))
        );
        assert_eq!(
            located(&["notes_api/main.py", "billing/main.py"], Some("billing.main")),
            Ok(("billing.main:app".into(), "billing/main.py".into(), None))
        );
        assert_eq!(
            located(&["src/notes_api/api.py"], Some("notes_api.api:application")),
            Ok((
                "notes_api.api:application".into(),
                "src/notes_api/api.py".into(),
                Some("src")
            ))
        );
        assert_eq!(
            located(&["notes_api/api.py"], Some("notes_api.main")),
            Err(NotLocated::NamedMissing("notes_api.main".into()))
        );
        assert_eq!(located(&["notes_api/api.py"], None), Err(NotLocated::Missing));
    }
}
