//! What the sandbox runtime provides: the distributions of
//! `sandbox/requirements.lock` (all importable), the subset of
//! `sandbox/requirements.txt` a generated `requirements.txt` may list, the
//! import names each distribution installs and what it depends on.
//!
//! Versions come from the two files themselves (embedded at build time), so
//! they cannot drift from the runtime; the import names and dependencies are
//! read off the installed runtime's metadata (`top_level`/`RECORD` and
//! `Requires-Dist` for Python 3.11 on Linux) into [`RUNTIME`], and a test
//! fails when the lock file gains or loses a distribution the table does not
//! describe.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use crate::files::File;

/// The direct requirements: what generated services may list.
const REQUIREMENTS: &str = include_str!("../../sandbox/requirements.txt");
/// Every distribution installed in the runtime, pinned.
const LOCK: &str = include_str!("../../sandbox/requirements.lock");

/// One installed distribution: its normalised name, the top-level modules it
/// installs, and the distributions it requires on Python 3.11 / Linux.
pub struct Distribution {
    pub name: &'static str,
    pub imports: &'static [&'static str],
    pub requires: &'static [&'static str],
}

/// The runtime's distributions (see the module doc for where this comes from).
pub const RUNTIME: [Distribution; 34] = [
    dist("annotated-doc", &["annotated_doc"], &[]),
    dist("annotated-types", &["annotated_types"], &[]),
    dist("anyio", &["anyio"], &["idna", "typing-extensions"]),
    dist("bcrypt", &["bcrypt"], &[]),
    dist("cachetools", &["cachetools"], &[]),
    dist("certifi", &["certifi"], &[]),
    dist("click", &["click"], &[]),
    dist("dnspython", &["dns"], &[]),
    dist("email-validator", &["email_validator"], &["dnspython", "idna"]),
    dist(
        "fastapi",
        &["fastapi"],
        &[
            "starlette",
            "anyio",
            "pydantic",
            "typing-extensions",
            "typing-inspection",
            "annotated-doc",
            "opentelemetry-api",
        ],
    ),
    dist("h11", &["h11"], &[]),
    dist("httpcore", &["httpcore"], &["certifi", "h11"]),
    dist("httpx", &["httpx"], &["anyio", "certifi", "httpcore", "idna"]),
    dist("idna", &["idna"], &[]),
    dist("iniconfig", &["iniconfig"], &[]),
    dist("opentelemetry-api", &["opentelemetry"], &["typing-extensions"]),
    dist("packaging", &["packaging"], &[]),
    dist("pluggy", &["pluggy"], &[]),
    dist(
        "pydantic",
        &["pydantic"],
        &[
            "annotated-types",
            "pydantic-core",
            "typing-extensions",
            "typing-inspection",
        ],
    ),
    dist(
        "pydantic-settings",
        &["pydantic_settings"],
        &["pydantic", "python-dotenv", "typing-extensions", "typing-inspection"],
    ),
    dist("pydantic-core", &["pydantic_core"], &["typing-extensions"]),
    dist("pygments", &["pygments"], &[]),
    dist("pyjwt", &["jwt"], &[]),
    dist(
        "pytest",
        &["pytest", "_pytest", "py"],
        &["iniconfig", "packaging", "pluggy", "pygments"],
    ),
    dist("pytest-asyncio", &["pytest_asyncio"], &["pytest", "typing-extensions"]),
    dist("python-dotenv", &["dotenv"], &[]),
    dist("python-multipart", &["multipart", "python_multipart"], &[]),
    dist("respx", &["respx"], &["httpx"]),
    dist("sqlalchemy", &["sqlalchemy"], &["typing-extensions"]),
    dist("starlette", &["starlette"], &["anyio", "typing-extensions"]),
    dist("tenacity", &["tenacity"], &[]),
    dist("typing-inspection", &["typing_inspection"], &["typing-extensions"]),
    dist("typing-extensions", &["typing_extensions"], &[]),
    dist("uvicorn", &["uvicorn"], &["click", "h11"]),
];

const fn dist(name: &'static str, imports: &'static [&'static str], requires: &'static [&'static str]) -> Distribution {
    Distribution {
        name,
        imports,
        requires,
    }
}

/// Extras whose extra dependencies the runtime has (`pydantic[email]` needs
/// email-validator, which is installed); any other extra pulls in packages
/// from outside the runtime.
const PROVIDED_EXTRAS: [(&str, &str); 3] = [("pydantic", "email"), ("pydantic", "timezone"), ("httpcore", "asyncio")];

/// PEP 503 normalisation: lower case, runs of `-`, `_`, `.` become `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut separator = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            separator = true;
        } else {
            if separator && !out.is_empty() {
                out.push('-');
            }
            separator = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

struct Pins {
    allowed: BTreeMap<String, String>,
    locked: BTreeMap<String, String>,
}

static PINS: LazyLock<Pins> = LazyLock::new(|| Pins {
    allowed: pins(REQUIREMENTS),
    locked: pins(LOCK),
});

fn pins(content: &str) -> BTreeMap<String, String> {
    let file = File::new("requirements.txt", content);
    super::pep508::read(&file)
        .requirements
        .into_iter()
        .filter_map(|(r, _, _)| {
            let version = r.pinned_version()?.to_owned();
            Some((normalize(&r.name), version))
        })
        .collect()
}

/// The version a generated `requirements.txt` must pin `name` (normalised)
/// to, when it may list it at all.
pub fn allowed_version(name: &str) -> Option<&'static str> {
    PINS.allowed.get(name).map(String::as_str)
}

/// The version installed in the runtime, for any distribution it has.
pub fn locked_version(name: &str) -> Option<&'static str> {
    PINS.locked.get(name).map(String::as_str)
}

/// The names a generated `requirements.txt` may list, sorted.
pub fn allowed_names() -> Vec<&'static str> {
    PINS.allowed.keys().map(String::as_str).collect()
}

/// The listable distributions that depend (directly or not) on `name`.
pub fn dependents(name: &str) -> Vec<&'static str> {
    allowed_names()
        .into_iter()
        .filter(|a| *a != name && closure(&[(*a).to_owned()]).contains(name))
        .collect()
}

/// The distribution installing the top-level module `top`.
pub fn distribution_of(top: &str) -> Option<&'static Distribution> {
    RUNTIME.iter().find(|d| d.imports.contains(&top))
}

/// Every distribution `listed` installs, dependencies included.
pub fn closure(listed: &[String]) -> BTreeSet<&'static str> {
    let mut out = BTreeSet::new();
    let mut queue: Vec<&str> = listed.iter().map(String::as_str).collect();
    while let Some(name) = queue.pop() {
        if let Some(d) = RUNTIME.iter().find(|d| d.name == name)
            && out.insert(d.name)
        {
            queue.extend(d.requires.iter().copied());
        }
    }
    out
}

pub fn extra_is_provided(name: &str, extra: &str) -> bool {
    let extra = normalize(extra);
    PROVIDED_EXTRAS.iter().any(|(n, e)| *n == name && *e == extra)
}

/// Version equality as pip sees it for plain release numbers: `2.1` ==
/// `2.1.0`, `v1.0` == `1.0`; anything else compares case-insensitively.
pub fn same_version(a: &str, b: &str) -> bool {
    fn release(v: &str) -> Option<Vec<u64>> {
        let v = v.strip_prefix(['v', 'V']).unwrap_or(v);
        let mut parts: Vec<u64> = v.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
        while parts.len() > 1 && parts.last() == Some(&0) {
            parts.pop();
        }
        Some(parts)
    }
    match (release(a), release(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a.eq_ignore_ascii_case(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_describes_exactly_the_locked_distributions() {
        let table: BTreeSet<&str> = RUNTIME.iter().map(|d| d.name).collect();
        let locked: BTreeSet<&str> = PINS.locked.keys().map(String::as_str).collect();
        assert_eq!(table, locked);
        for d in &RUNTIME {
            for r in d.requires {
                assert!(table.contains(r), "{} requires unknown {r}", d.name);
            }
        }
        for name in PINS.allowed.keys() {
            assert!(table.contains(name.as_str()), "{name} is allowed but not locked");
        }
    }

    #[test]
    fn distribution_names_map_to_their_import_names() {
        for (import, dist) in [
            ("jwt", "pyjwt"),
            ("email_validator", "email-validator"),
            ("multipart", "python-multipart"),
            ("python_multipart", "python-multipart"),
            ("pydantic_settings", "pydantic-settings"),
            ("sqlalchemy", "sqlalchemy"),
            ("typing_extensions", "typing-extensions"),
            ("annotated_types", "annotated-types"),
            ("starlette", "starlette"),
            ("dotenv", "python-dotenv"),
            ("dns", "dnspython"),
        ] {
            assert_eq!(distribution_of(import).map(|d| d.name), Some(dist), "{import}");
        }
        assert!(distribution_of("requests").is_none());
    }

    #[test]
    fn normalisation_and_versions_follow_pip() {
        assert_eq!(normalize("Typing_Extensions"), "typing-extensions");
        assert_eq!(normalize("PyJWT"), "pyjwt");
        assert_eq!(normalize("a.-_b"), "a-b");
        assert!(same_version("2.1", "2.1.0"));
        assert!(!same_version("2.1.1", "2.1"));
        assert_eq!(allowed_version("fastapi"), Some("0.165.0"));
        assert_eq!(allowed_version("starlette"), None);
        assert_eq!(locked_version("starlette"), Some("1.10.0"));
    }

    #[test]
    fn dependencies_are_followed_transitively() {
        let installed = closure(&["fastapi".to_owned()]);
        for d in ["starlette", "anyio", "idna", "pydantic-core", "typing-extensions"] {
            assert!(installed.contains(d), "{d}");
        }
        assert!(!installed.contains("httpx"));
        assert_eq!(dependents("starlette"), ["fastapi"]);
    }
}
