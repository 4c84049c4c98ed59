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

use super::pep508::Specifier;

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
pub const RUNTIME: [Distribution; 57] = [
    dist("aiosqlite", &["aiosqlite"], &[]),
    dist("alembic", &["alembic"], &["sqlalchemy", "mako", "typing-extensions"]),
    dist("annotated-doc", &["annotated_doc"], &[]),
    dist("annotated-types", &["annotated_types"], &[]),
    dist("anyio", &["anyio"], &["idna", "typing-extensions"]),
    dist("argon2-cffi", &["argon2"], &["argon2-cffi-bindings"]),
    dist("argon2-cffi-bindings", &["_argon2_cffi_bindings"], &["cffi"]),
    dist("asyncpg", &["asyncpg"], &[]),
    dist("bcrypt", &["bcrypt"], &[]),
    dist("cachetools", &["cachetools"], &[]),
    dist("certifi", &["certifi"], &[]),
    dist("cffi", &["cffi", "_cffi_backend"], &["pycparser"]),
    dist("click", &["click"], &[]),
    dist("dnspython", &["dns"], &[]),
    dist("ecdsa", &["ecdsa"], &["six"]),
    dist("email-validator", &["email_validator"], &["dnspython", "idna"]),
    dist("factory-boy", &["factory"], &["faker"]),
    dist("faker", &["faker"], &[]),
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
    dist("freezegun", &["freezegun"], &["python-dateutil"]),
    dist("greenlet", &["greenlet"], &[]),
    dist("h11", &["h11"], &[]),
    dist("httpcore", &["httpcore"], &["certifi", "h11"]),
    dist("httpx", &["httpx"], &["anyio", "certifi", "httpcore", "idna"]),
    dist("idna", &["idna"], &[]),
    dist("iniconfig", &["iniconfig"], &[]),
    dist("mako", &["mako"], &["markupsafe"]),
    dist("markupsafe", &["markupsafe"], &[]),
    dist("opentelemetry-api", &["opentelemetry"], &["typing-extensions"]),
    dist("packaging", &["packaging"], &[]),
    dist("passlib", &["passlib"], &[]),
    dist("pluggy", &["pluggy"], &[]),
    dist("polyfactory", &["polyfactory"], &["faker", "typing-extensions"]),
    dist("pwdlib", &["pwdlib"], &[]),
    dist("pyasn1", &["pyasn1"], &[]),
    dist("pycparser", &["pycparser"], &[]),
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
    dist("pydantic-core", &["pydantic_core"], &["typing-extensions"]),
    dist(
        "pydantic-settings",
        &["pydantic_settings"],
        &["pydantic", "python-dotenv", "typing-extensions", "typing-inspection"],
    ),
    dist("pygments", &["pygments"], &[]),
    dist("pyjwt", &["jwt"], &[]),
    dist(
        "pytest",
        &["pytest", "_pytest", "py"],
        &["iniconfig", "packaging", "pluggy", "pygments"],
    ),
    dist("pytest-asyncio", &["pytest_asyncio"], &["pytest", "typing-extensions"]),
    dist("python-dateutil", &["dateutil"], &["tzdata"]),
    dist("python-dotenv", &["dotenv"], &[]),
    dist("python-jose", &["jose"], &["ecdsa", "rsa", "pyasn1"]),
    dist("python-multipart", &["multipart", "python_multipart"], &[]),
    dist("respx", &["respx"], &["httpx"]),
    dist("rsa", &["rsa"], &["pyasn1"]),
    dist("six", &["six"], &[]),
    dist("sqlalchemy", &["sqlalchemy"], &["typing-extensions"]),
    dist("starlette", &["starlette"], &["anyio", "typing-extensions"]),
    dist("tenacity", &["tenacity"], &[]),
    dist("typing-extensions", &["typing_extensions"], &[]),
    dist("typing-inspection", &["typing_inspection"], &["typing-extensions"]),
    dist("tzdata", &["tzdata"], &[]),
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
/// email-validator, `sqlalchemy[asyncio]` greenlet, both installed); any
/// other extra pulls in packages from outside the runtime.
const PROVIDED_EXTRAS: [(&str, &str); 10] = [
    ("pydantic", "email"),
    ("pydantic", "timezone"),
    ("httpcore", "asyncio"),
    ("sqlalchemy", "asyncio"),
    ("sqlalchemy", "aiosqlite"),
    ("sqlalchemy", "postgresql-asyncpg"),
    ("passlib", "bcrypt"),
    ("passlib", "argon2"),
    ("pwdlib", "argon2"),
    ("pwdlib", "bcrypt"),
];

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
    match (release(a), release(b)) {
        (Some(x), Some(y)) => compare(&x, &y).is_eq(),
        _ => a.eq_ignore_ascii_case(b),
    }
}

/// How a requirement's version specifiers meet the version the runtime has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionFit {
    /// `==` exactly the runtime's version.
    Pinned,
    /// A range (`>=0.110`, `~=2.14`, `==2.14.*`) the runtime's version is in.
    InRange,
    /// `==` a version that differs from the runtime's only after the minor
    /// release (`2.14.9` against `2.14.3`): the same API, tested with ours.
    PatchLevel,
    /// No specifier at all.
    Unpinned,
    /// A specifier the runtime's version does not meet (or that cannot be
    /// read as a plain release number).
    Conflict,
}

/// How `specifiers` meet `runtime`, as pip would decide for plain release
/// numbers (`N(.N)*`). Pre-, post- and dev-releases and local versions are
/// not read: a specifier naming one is a [`VersionFit::Conflict`] unless it
/// is the runtime's version spelled exactly.
pub fn version_fit(specifiers: &[Specifier], runtime: &str) -> VersionFit {
    if specifiers.is_empty() {
        return VersionFit::Unpinned;
    }
    if let [Specifier { op, version }] = specifiers
        && op == "=="
        && !version.contains('*')
    {
        if same_version(version, runtime) {
            return VersionFit::Pinned;
        }
        return match (release(version), release(runtime)) {
            (Some(want), Some(have)) if want.len() >= 3 && have.len() >= 2 && want[..2] == have[..2] => {
                VersionFit::PatchLevel
            }
            _ => VersionFit::Conflict,
        };
    }
    let Some(have) = release(runtime) else {
        return VersionFit::Conflict;
    };
    if specifiers.iter().all(|s| admits(s, &have, runtime)) {
        VersionFit::InRange
    } else {
        VersionFit::Conflict
    }
}

/// Whether one specifier admits the runtime's release `have` (PEP 440,
/// release segments only).
fn admits(specifier: &Specifier, have: &[u64], runtime: &str) -> bool {
    use std::cmp::Ordering;

    let op = specifier.op.as_str();
    if op == "===" {
        return specifier.version == runtime;
    }
    if let Some(prefix) = specifier.version.strip_suffix(".*") {
        let Some(prefix) = release(prefix) else { return false };
        // The release padded with zeros to the prefix's length (`2.14` is `2.14.0.*`).
        let matches = (0..prefix.len()).all(|i| have.get(i).copied().unwrap_or(0) == prefix[i]);
        return match op {
            "==" => matches,
            "!=" => !matches,
            _ => false,
        };
    }
    let Some(want) = release(&specifier.version) else {
        return false;
    };
    let order = compare(have, &want);
    match op {
        "==" => order == Ordering::Equal,
        "!=" => order != Ordering::Equal,
        ">=" => order != Ordering::Less,
        "<=" => order != Ordering::Greater,
        ">" => order == Ordering::Greater,
        "<" => order == Ordering::Less,
        // `~=2.14.1`: `>=2.14.1, ==2.14.*`; needs two components at least.
        "~=" => {
            want.len() >= 2
                && order != Ordering::Less
                && have.len() >= want.len() - 1
                && have[..want.len() - 1] == want[..want.len() - 1]
        }
        _ => false,
    }
}

/// A plain release number's components (`v` prefix allowed, as pip does).
fn release(version: &str) -> Option<Vec<u64>> {
    let v = version.strip_prefix(['v', 'V']).unwrap_or(version);
    v.split('.').map(|p| p.parse().ok()).collect()
}

/// Release numbers compared as PEP 440 does: missing components are 0.
fn compare(a: &[u64], b: &[u64]) -> std::cmp::Ordering {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| a.get(i).copied().unwrap_or(0).cmp(&b.get(i).copied().unwrap_or(0)))
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
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

    fn fit(specifiers: &str) -> VersionFit {
        let requirement = crate::validate::pep508::parse(&format!("x{specifiers}")).expect("parses");
        version_fit(&requirement.specifiers, "2.14.3")
    }

    #[test]
    fn ranges_the_runtime_version_is_in_are_compatible() {
        assert_eq!(fit("==2.14.3"), VersionFit::Pinned);
        assert_eq!(fit("==v2.14.3.0"), VersionFit::Pinned);
        for range in [
            ">=2.0",
            ">=2.14,<3",
            "~=2.14",
            "~=2.14.1",
            "==2.14.*",
            "==2.*",
            "!=2.14.2",
            ">2.14.2",
            "<=2.14.3",
            "===2.14.3",
        ] {
            assert_eq!(fit(range), VersionFit::InRange, "{range}");
        }
        assert_eq!(fit(""), VersionFit::Unpinned);
    }

    #[test]
    fn a_pin_that_differs_only_in_patch_level_is_told_apart_from_another_release() {
        assert_eq!(fit("==2.14.9"), VersionFit::PatchLevel);
        assert_eq!(fit("==2.14.0"), VersionFit::PatchLevel);
        for other in [
            "==2.13.3",
            "==3.14.3",
            "==2.14",
            "==2.14.4rc1",
            "<2.14",
            ">=3",
            "~=2.15.0",
            "~=2",
            "==2.13.*",
            "!=2.14.*",
            "===2.14.3.0",
        ] {
            assert_eq!(fit(other), VersionFit::Conflict, "{other}");
        }
    }
}
