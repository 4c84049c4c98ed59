//! The service judge against broken services whose own tests say they work.
//!
//! Each case starts from the demo's notes service (examples/) and breaks it
//! in a way its own test suite hides: handlers that answer 500 or raise
//! `NotImplementedError` under tests that accept anything, expect the error
//! or assert nothing; fixtures that monkeypatch the test client, swap the
//! app's routes, override a broken dependency or set up state only the tests
//! have; conftest hooks that rewrite reports or deselect tests; ini files
//! that deselect; a suite that rewrites the app on disk. Every broken
//! service must be judged failed on both backends, by the sandbox alone and
//! for the reason named (a `kiln: METHOD path` case, Kiln's own requests to
//! a fresh app process, or the sealed suite); the same service fixed must
//! pass validation and the sandbox. Static rules that also catch a case
//! (`conftest-hook`, `tests-endpoint`) are asserted with it.
//!
//! Runs the harness directly through the library's `Sandbox` API.

#[path = "support/sandbox.rs"]
#[macro_use]
mod sandbox_support;

use std::fmt::Write as _;
use std::time::Duration;

use futures::StreamExt;
use kiln::files::File;
use kiln::report::{Outcome, Severity, TestReport, ValidationReport};
use kiln::sandbox::{RunLimits, harness};
use kiln::spec::Spec;
use sandbox_support::{Backend, TestSandbox, failing, notes_service};
use serde_json::Value;

fn limits() -> RunLimits {
    RunLimits {
        timeout: Duration::from_secs(60),
        memory_mb: 512,
        pids: 128,
        tmpfs_mb: 64,
        output_bytes: 256 * 1024,
    }
}

fn demo_file(path: &str) -> String {
    notes_service()
        .1
        .into_iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("the demo has {path}"))
        .content
}

/// The demo's app/main.py with each `(from, to)` replaced (each must occur).
fn main_with(changes: &[(&str, &str)]) -> String {
    let mut main = demo_file("app/main.py");
    for (from, to) in changes {
        assert!(main.contains(from), "app/main.py has {from:?}");
        main = main.replacen(from, to, 1);
    }
    main
}

const CREATE_BODY: &str = "    note = Note(title=payload.title, body=payload.body)\n    session.add(note)\n    session.commit()\n    session.refresh(note)\n    return note\n";
const GET_BODY: &str = "    \"\"\"One note by id.\"\"\"\n    return _find(session, note_id)\n";
const DELETE_BODY: &str = "    \"\"\"Delete one note by id.\"\"\"\n    session.delete(_find(session, note_id))\n";
const LIST_BODY: &str =
    "    return list(session.scalars(select(Note).order_by(Note.created_at.desc(), Note.id.desc())))\n";

/// One service: the demo with files replaced (`Some`) or removed (`None`).
type Patch = Vec<(&'static str, Option<String>)>;

fn service(patch: &Patch) -> Vec<File> {
    let mut files = notes_service().1;
    for (path, content) in patch {
        files.retain(|f| f.path != *path);
        if let Some(content) = content {
            files.push(File::new(*path, content.clone()));
        }
    }
    files
}

struct Case {
    name: &'static str,
    broken: Patch,
    /// A failing case whose name starts with this must be in the report.
    fails: &'static str,
    /// A static rule that also refuses the broken answer (an error).
    rule: Option<&'static str>,
    fixed: Patch,
}

/// Tests that accept whatever the endpoints answer, 500 included.
const PERMISSIVE_TESTS: &str = r#"from fastapi.testclient import TestClient

from app.main import app

client = TestClient(app, raise_server_exceptions=False)


def test_health():
    assert client.get("/health").status_code == 200


def test_create_note():
    assert client.post("/notes", json={"title": "t"}).status_code in (201, 500)


def test_list_notes():
    assert client.get("/notes").status_code in (200, 500)


def test_get_note():
    assert client.get("/notes/1").status_code in (200, 404, 500)


def test_delete_note():
    url = "/notes/1"
    assert url
"#;

/// The demo's own tests: they check real behaviour.
fn demo_tests() -> String {
    demo_file("tests/test_notes.py")
}

/// Tests that match the canned answers of `CANNED_CLIENT`.
const SIMPLE_TESTS: &str = r#"import pytest
from fastapi.testclient import TestClient

from app.main import app


@pytest.fixture()
def client():
    with TestClient(app) as c:
        yield c


def test_health(client):
    assert client.get("/health").json() == {"status": "ok"}


def test_create_note(client):
    response = client.post("/notes", json={"title": "t"})
    assert response.status_code == 201
    assert response.json()["title"] == "t"


def test_list_notes(client):
    assert client.get("/notes").status_code == 200


def test_get_missing_note(client):
    assert client.get("/notes/999").status_code == 404


def test_delete_missing_note(client):
    assert client.delete("/notes/999").status_code == 404
"#;

const CANNED_CLIENT: &str = r#"import httpx
import pytest
from fastapi.testclient import TestClient

NOTE = {"id": 1, "title": "t", "body": "", "created_at": "2024-01-01T00:00:00"}
CANNED = {
    ("GET", "/health"): (200, {"status": "ok"}),
    ("GET", "/notes"): (200, [NOTE]),
    ("POST", "/notes"): (201, NOTE),
    ("GET", "/notes/999"): (404, {"detail": "not found"}),
    ("DELETE", "/notes/999"): (404, {"detail": "not found"}),
}


@pytest.fixture(autouse=True)
def canned(monkeypatch):
    def request(self, method, url, **kwargs):
        path = httpx.URL(str(url)).path
        status, body = CANNED.get((method.upper(), path), (200, NOTE))
        return httpx.Response(status, json=body, request=httpx.Request(method, "http://testserver" + path))

    monkeypatch.setattr(TestClient, "request", request)
"#;

const SWAPPED_ROUTES: &str = r#"import pytest
from fastapi import status

from app import main


def create_note(payload: main.NoteIn):
    return {"id": 1, "title": payload.title, "body": payload.body, "created_at": "2024-01-01T00:00:00"}


@pytest.fixture(autouse=True)
def working_routes():
    saved = list(main.app.router.routes)
    main.app.router.routes[:] = [
        r for r in saved if not (getattr(r, "path", "") == "/notes" and "POST" in getattr(r, "methods", set()))
    ]
    main.app.add_api_route("/notes", create_note, methods=["POST"], status_code=status.HTTP_201_CREATED)
    yield
    main.app.router.routes[:] = saved
"#;

const OVERRIDDEN_DEPENDENCY: &str = r"import pytest

from app.db import SessionLocal
from app.main import app, get_session


def working_session():
    session = SessionLocal()
    try:
        yield session
    finally:
        session.close()


@pytest.fixture(autouse=True)
def override():
    app.dependency_overrides[get_session] = working_session
    yield
    app.dependency_overrides.clear()
";

const FORGING_HOOK: &str = r#"import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    report.outcome = "passed"
    report.longrepr = None
    return report
"#;

const DESELECTING_HOOK: &str = r#"def pytest_collection_modifyitems(config, items):
    items[:] = [item for item in items if "health" in item.name]
"#;

/// A plugin registered from a fixture, its hook named at run time, so no
/// static rule sees it.
const REGISTERED_FORGER: &str = r#"import pytest


def _makereport(self, item, call):
    report = yield
    report.outcome = "passed"
    report.longrepr = None
    return report


class Forger:
    pass


setattr(Forger, "pytest_" + "runtest_makereport", pytest.hookimpl(wrapper=True)(_makereport))


@pytest.fixture(autouse=True, scope="session")
def forge(request):
    request.config.pluginmanager.register(Forger(), "forger")
"#;

const HEALTH_ONLY_TESTS: &str = r#"from fastapi.testclient import TestClient

from app.main import app


def test_health():
    assert TestClient(app).get("/health").status_code == 200
"#;

fn hex(text: &str) -> String {
    text.bytes().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// A conftest that rewrites app/main.py on disk to the demo's working app
/// before the tests import it.
fn rewriting_conftest() -> String {
    format!(
        "import pathlib\n\nMAIN = pathlib.Path(__file__).resolve().parent.parent / \"app\" / \"main.py\"\nMAIN.write_text(bytes.fromhex(\"{}\").decode())\n",
        hex(&demo_file("app/main.py"))
    )
}

/// A conftest that plants a package `app/main/` (which Python imports in
/// preference to `app/main.py`) holding the demo's working app, in a
/// directory it then makes undeletable.
fn shadowing_conftest() -> String {
    format!(
        "import os\nimport pathlib\n\nSHADOW = pathlib.Path(__file__).resolve().parent.parent / \"app\" / \"main\"\nSHADOW.mkdir(exist_ok=True)\n(SHADOW / \"__init__.py\").write_text(bytes.fromhex(\"{}\").decode())\nos.chmod(SHADOW, 0o500)\n",
        hex(&demo_file("app/main.py"))
    )
}

/// Every case: a broken service and the same service fixed.
fn cases() -> Vec<Case> {
    let fixed = || ("app/main.py", Some(demo_file("app/main.py")));
    [
        errors_the_tests_accept(),
        wrong_answers_the_tests_miss(),
        fixtures_that_stand_in_for_the_app(),
        suites_that_rewrite_the_app(),
        forged_reports(),
        suites_that_run_too_little(),
    ]
    .into_iter()
    .flatten()
    .map(|mut c| {
        // Every fix includes the working app.
        if !c.fixed.iter().any(|(p, _)| *p == "app/main.py") {
            c.fixed.push(fixed());
        }
        c
    })
    .collect()
}

/// A handler body that raises `what`.
fn raise(what: &str) -> String {
    format!("    raise {what}\n")
}

/// The app with a create handler that always raises.
fn broken_create() -> String {
    main_with(&[(CREATE_BODY, &raise("RuntimeError(\"database offline\")"))])
}

/// Handlers that fail under tests that accept, expect or ignore the failure.
fn errors_the_tests_accept() -> Vec<Case> {
    vec![
        Case {
            name: "an endpoint that always answers 500, with tests that accept it",
            broken: vec![
                (
                    "app/main.py",
                    Some(main_with(&[(
                        CREATE_BODY,
                        "    from fastapi.responses import JSONResponse\n\n    return JSONResponse({\"detail\": \"later\"}, status_code=500)\n",
                    )])),
                ),
                ("tests/test_notes.py", Some(String::from(PERMISSIVE_TESTS))),
            ],
            fails: "kiln: POST /notes",
            rule: None,
            fixed: vec![("tests/test_notes.py", Some(String::from(PERMISSIVE_TESTS)))],
        },
        Case {
            name: "a NotImplementedError handler whose test expects the error",
            broken: vec![
                (
                    "app/main.py",
                    Some(main_with(&[(GET_BODY, "    \"\"\"One note by id.\"\"\"\n    raise NotImplementedError(\"get_note\")\n")])),
                ),
                (
                    "tests/test_notes.py",
                    Some(demo_tests().replace(
                        "    created = client.post(\"/notes\", json={\"title\": \"t\", \"body\": \"b\"}).json()\n    assert client.get(f\"/notes/{created['id']}\").json()[\"body\"] == \"b\"\n",
                        "    with pytest.raises(NotImplementedError):\n        client.get(\"/notes/1\")\n",
                    )),
                ),
            ],
            fails: "kiln: GET /notes/{note_id}",
            rule: None,
            fixed: vec![],
        },
        Case {
            name: "a NotImplementedError handler whose test asserts True",
            broken: vec![
                ("app/main.py", Some(main_with(&[(DELETE_BODY, "    \"\"\"Delete one note by id.\"\"\"\n    raise NotImplementedError\n")]))),
                ("tests/test_notes.py", Some(String::from(PERMISSIVE_TESTS))),
            ],
            fails: "kiln: DELETE /notes/{note_id}",
            rule: None,
            fixed: vec![("tests/test_notes.py", Some(String::from(PERMISSIVE_TESTS)))],
        },
        Case {
            name: "a NotImplementedError handler whose test calls it and asserts nothing",
            broken: vec![
                ("app/main.py", Some(main_with(&[(LIST_BODY, &raise("NotImplementedError"))]))),
                (
                    "tests/test_notes.py",
                    Some(PERMISSIVE_TESTS.replace(
                        "    assert client.get(\"/notes\").status_code in (200, 500)\n",
                        "    client.get(\"/notes\")\n",
                    )),
                ),
            ],
            fails: "kiln: GET /notes",
            rule: None,
            fixed: vec![(
                "tests/test_notes.py",
                Some(PERMISSIVE_TESTS.replace(
                    "    assert client.get(\"/notes\").status_code in (200, 500)\n",
                    "    client.get(\"/notes\")\n",
                )),
            )],
        },
        Case {
            name: "a create endpoint that always answers 400, with a test that expects it",
            broken: vec![
                (
                    "app/main.py",
                    Some(main_with(&[(CREATE_BODY, &raise("HTTPException(status_code=400, detail=\"invalid note\")"))])),
                ),
                (
                    "tests/test_notes.py",
                    Some(SIMPLE_TESTS.replace(
                        "    assert response.status_code == 201\n    assert response.json()[\"title\"] == \"t\"\n",
                        "    assert response.status_code == 400\n",
                    )),
                ),
            ],
            fails: "kiln: POST /notes",
            rule: None,
            fixed: vec![("tests/test_notes.py", Some(String::from(SIMPLE_TESTS)))],
        },
    ]
}

/// Handlers that answer wrongly where the suite does not look, or
/// accepts anything.
fn wrong_answers_the_tests_miss() -> Vec<Case> {
    vec![
        Case {
            name: "a read endpoint that answers 404 for notes that exist",
            broken: vec![
                (
                    "app/main.py",
                    Some(main_with(&[(GET_BODY, &raise("HTTPException(status_code=404, detail=\"not found\")"))])),
                ),
                ("tests/test_notes.py", Some(String::from(PERMISSIVE_TESTS))),
            ],
            fails: "kiln: GET /notes/{note_id}",
            rule: None,
            fixed: vec![("tests/test_notes.py", Some(String::from(PERMISSIVE_TESTS)))],
        },
        Case {
            name: "a read endpoint that answers 500 for a missing note, untested",
            broken: vec![
                (
                    "app/main.py",
                    Some(main_with(&[(GET_BODY, "    \"\"\"One note by id.\"\"\"\n    return session.get(Note, note_id)\n")])),
                ),
                (
                    "tests/test_notes.py",
                    Some(demo_tests().replace(
                        "def test_get_missing_note_is_404(client: TestClient) -> None:\n    assert client.get(\"/notes/999\").status_code == 404\n",
                        "",
                    )),
                ),
            ],
            fails: "kiln: GET /notes/{note_id}",
            rule: None,
            fixed: vec![],
        },
        Case {
            name: "a delete endpoint that kills the app process",
            broken: vec![
                (
                    "app/main.py",
                    Some(main_with(&[(
                        DELETE_BODY,
                        "    \"\"\"Delete one note by id.\"\"\"\n    import os\n\n    os._exit(3)\n",
                    )])),
                ),
                ("tests/test_notes.py", Some(String::from(PERMISSIVE_TESTS))),
            ],
            fails: "kiln: DELETE /notes/{note_id}",
            rule: None,
            fixed: vec![("tests/test_notes.py", Some(String::from(PERMISSIVE_TESTS)))],
        },
        Case {
            name: "a read endpoint that bypasses its response model with a placeholder JSONResponse",
            broken: vec![
                (
                    "app/main.py",
                    Some(main_with(&[(
                        GET_BODY,
                        "    \"\"\"One note by id.\"\"\"\n    from fastapi.responses import JSONResponse\n\n    return JSONResponse({\"todo\": True})\n",
                    )])),
                ),
                ("tests/test_notes.py", Some(String::from(PERMISSIVE_TESTS))),
            ],
            fails: "kiln: GET /notes/{note_id}",
            rule: None,
            fixed: vec![("tests/test_notes.py", Some(String::from(PERMISSIVE_TESTS)))],
        },
        Case {
            name: "a list endpoint whose answers break its response model, with tests that accept a 500",
            broken: vec![
                (
                    "app/main.py",
                    Some(main_with(&[(
                        LIST_BODY,
                        "    return [{\"title\": n.title} for n in session.scalars(select(Note))]\n",
                    )])),
                ),
                ("tests/test_notes.py", Some(String::from(PERMISSIVE_TESTS))),
            ],
            fails: "kiln: GET /notes",
            rule: None,
            fixed: vec![("tests/test_notes.py", Some(String::from(PERMISSIVE_TESTS)))],
        },
    ]
}

/// Fixtures that make a broken app look working: a patched client, a
/// swapped route or dependency, state or routes only the tests set up.
fn fixtures_that_stand_in_for_the_app() -> Vec<Case> {
    vec![
        Case {
            name: "an autouse fixture that monkeypatches TestClient.request",
            broken: vec![
                (
                    "app/main.py",
                    Some(main_with(&[
                        (CREATE_BODY, &raise("NotImplementedError")),
                        (LIST_BODY, &raise("NotImplementedError")),
                        (GET_BODY, &raise("NotImplementedError")),
                        (DELETE_BODY, &raise("NotImplementedError")),
                    ])),
                ),
                ("tests/conftest.py", Some(String::from(CANNED_CLIENT))),
                ("tests/test_notes.py", Some(String::from(SIMPLE_TESTS))),
            ],
            fails: "kiln: POST /notes",
            rule: None,
            fixed: vec![
                ("tests/conftest.py", Some(String::from(CANNED_CLIENT))),
                ("tests/test_notes.py", Some(String::from(SIMPLE_TESTS))),
            ],
        },
        Case {
            name: "a fixture that swaps the app's route for a working double",
            broken: vec![
                ("app/main.py", Some(broken_create())),
                ("tests/conftest.py", Some(String::from(SWAPPED_ROUTES))),
                ("tests/test_notes.py", Some(String::from(SIMPLE_TESTS))),
            ],
            fails: "kiln: POST /notes",
            rule: None,
            fixed: vec![
                ("tests/conftest.py", Some(String::from(SWAPPED_ROUTES))),
                ("tests/test_notes.py", Some(String::from(SIMPLE_TESTS))),
            ],
        },
        Case {
            name: "an always-raising dependency hidden by app.dependency_overrides",
            broken: vec![
                (
                    "app/main.py",
                    Some(main_with(&[(
                        "    session = SessionLocal()\n    try:",
                        "    raise RuntimeError(\"no database configured\")\n    session = SessionLocal()\n    try:",
                    )])),
                ),
                ("tests/conftest.py", Some(String::from(OVERRIDDEN_DEPENDENCY))),
            ],
            fails: "kiln: GET /notes",
            rule: None,
            fixed: vec![("tests/conftest.py", Some(String::from(OVERRIDDEN_DEPENDENCY)))],
        },
        Case {
            name: "tables that only the tests create",
            broken: vec![(
                "app/main.py",
                Some(main_with(&[("Base.metadata.create_all(engine)\n", "")])),
            )],
            fails: "kiln: POST /notes",
            rule: None,
            fixed: vec![],
        },
        Case {
            name: "a route the app lacks, added by a test fixture",
            broken: vec![
                (
                    "app/main.py",
                    Some(main_with(&[(
                        "@app.delete(\"/notes/{note_id}\", status_code=status.HTTP_204_NO_CONTENT)\n",
                        "",
                    )])),
                ),
                (
                    "tests/conftest.py",
                    Some(String::from(
                        "import pytest\nfrom fastapi import status\n\nfrom app import main\n\n\n@pytest.fixture(autouse=True)\ndef delete_route():\n    main.app.add_api_route(\"/notes/{note_id}\", main.delete_note, methods=[\"DELETE\"], status_code=status.HTTP_204_NO_CONTENT)\n",
                    )),
                ),
            ],
            fails: "kiln: DELETE /notes/{note_id}",
            rule: Some("route-method"),
            fixed: vec![],
        },
    ]
}

/// Suites that rewrite or shadow the app on disk, so that a fresh app
/// process would run a working one.
fn suites_that_rewrite_the_app() -> Vec<Case> {
    vec![
        Case {
            name: "a suite that rewrites the app on disk to a working one",
            broken: vec![
                ("app/main.py", Some(broken_create())),
                ("tests/conftest.py", Some(rewriting_conftest())),
            ],
            fails: "kiln: POST /notes",
            rule: None,
            fixed: vec![("tests/conftest.py", Some(rewriting_conftest()))],
        },
        Case {
            name: "a suite that plants an undeletable package shadowing app.main",
            broken: vec![
                ("app/main.py", Some(broken_create())),
                ("tests/conftest.py", Some(shadowing_conftest())),
            ],
            fails: "kiln: POST /notes",
            rule: None,
            fixed: vec![("tests/conftest.py", Some(shadowing_conftest()))],
        },
    ]
}

/// Plugins that rewrite pytest's reports to passed, however they are loaded.
fn forged_reports() -> Vec<Case> {
    vec![
        Case {
            name: "a conftest hook that rewrites every report to passed",
            broken: vec![
                ("app/main.py", Some(broken_create())),
                ("tests/conftest.py", Some(String::from(FORGING_HOOK))),
            ],
            fails: "tests: tests/test_notes.py::test_create_note",
            rule: Some("conftest-hook"),
            fixed: vec![],
        },
        Case {
            name: "a root conftest naming a forging plugin in pytest_plugins",
            broken: vec![
                ("app/main.py", Some(broken_create())),
                (
                    "conftest.py",
                    Some(String::from("pytest_plugins = [\"tests.forge\"]\n")),
                ),
                ("tests/forge.py", Some(String::from(FORGING_HOOK))),
            ],
            fails: "tests: tests/test_notes.py::test_create_note",
            rule: Some("conftest-hook"),
            fixed: vec![],
        },
        Case {
            name: "a fixture that registers a forging plugin",
            broken: vec![
                ("app/main.py", Some(broken_create())),
                ("tests/conftest.py", Some(String::from(REGISTERED_FORGER))),
            ],
            fails: "tests: tests/test_notes.py::test_create_note",
            rule: None,
            fixed: vec![],
        },
    ]
}

/// Suites that never run the failing code: deselected by a hook or an
/// ini file, skipped, or testing /health alone.
fn suites_that_run_too_little() -> Vec<Case> {
    vec![
        Case {
            name: "a conftest hook that deselects every test but the health test",
            broken: vec![
                (
                    "app/main.py",
                    Some(main_with(&[(GET_BODY, &raise("NotImplementedError"))])),
                ),
                ("tests/conftest.py", Some(String::from(DESELECTING_HOOK))),
            ],
            fails: "tests: tests/test_notes.py::test_get_note",
            rule: Some("conftest-hook"),
            fixed: vec![],
        },
        Case {
            name: "a pytest.ini whose addopts deselect all but the health test",
            broken: vec![
                (
                    "app/main.py",
                    Some(main_with(&[(GET_BODY, &raise("NotImplementedError"))])),
                ),
                ("pytest.ini", Some(String::from("[pytest]\naddopts = -k health\n"))),
            ],
            fails: "tests: tests/test_notes.py::test_get_note",
            rule: None,
            fixed: vec![("pytest.ini", Some(String::from("[pytest]\naddopts = -k health\n")))],
        },
        Case {
            name: "pyproject.toml pytest options that deselect the failing test",
            broken: vec![
                (
                    "app/main.py",
                    Some(main_with(&[(DELETE_BODY, &raise("NotImplementedError"))])),
                ),
                (
                    "pyproject.toml",
                    Some(String::from(
                        "[tool.pytest.ini_options]\naddopts = \"-k 'not delete'\"\n",
                    )),
                ),
            ],
            fails: "tests: tests/test_notes.py::test_delete_note",
            rule: None,
            fixed: vec![(
                "pyproject.toml",
                Some(String::from(
                    "[tool.pytest.ini_options]\naddopts = \"-k 'not delete'\"\n",
                )),
            )],
        },
        Case {
            name: "a suite whose every test is skipped",
            broken: vec![
                (
                    "app/main.py",
                    Some(main_with(&[(LIST_BODY, &raise("NotImplementedError"))])),
                ),
                (
                    "tests/test_notes.py",
                    Some(demo_tests().replace(
                        "from app.main import app\n",
                        "from app.main import app\n\npytestmark = pytest.mark.skip(reason=\"flaky\")\n",
                    )),
                ),
            ],
            fails: "kiln: GET /notes",
            rule: None,
            fixed: vec![],
        },
        Case {
            name: "a suite that only tests /health",
            broken: vec![
                (
                    "app/main.py",
                    Some(main_with(&[(LIST_BODY, &raise("NotImplementedError"))])),
                ),
                ("tests/test_notes.py", Some(String::from(HEALTH_ONLY_TESTS))),
            ],
            fails: "kiln: GET /notes",
            rule: Some("tests-endpoint"),
            fixed: vec![],
        },
    ]
}

async fn the_demo_service_passes_with_kilns_own_requests(backend: Backend) {
    let (spec, files) = notes_service();
    let sandbox = TestSandbox::new(backend, &limits(), 1).await;
    let report = sandbox.judge(&spec, &files, &limits()).await;
    assert!(report.all_passed(), "{:#?}\n{}", failing(&report), report.output);
    let names: Vec<&str> = report.cases.iter().map(|c| c.name.as_str()).collect();
    for name in [
        "kiln: GET /notes",
        "kiln: POST /notes",
        "kiln: GET /notes/{note_id}",
        "kiln: DELETE /notes/{note_id}",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
}

async fn broken_services_fail_and_fixed_ones_pass(backend: Backend) {
    let (spec, _) = notes_service();
    let sandbox = TestSandbox::new(backend, &limits(), 2).await;
    let cases = cases();
    let mut problems = Vec::new();
    for (i, broken, files, report) in judge_every_answer(&sandbox, &spec, &cases).await {
        let case = &cases[i];
        let validation = kiln::validate::validate(&spec, &files);
        if broken {
            problems.extend(problems_of_broken(case, &report, &validation));
        } else {
            problems.extend(problems_of_fixed(case, &report, &validation));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

/// Every case's broken and fixed answers with their reports, as (case
/// index, broken, files, report). Each distinct answer is judged once (many
/// fixes are the demo itself), two at a time.
async fn judge_every_answer(
    sandbox: &TestSandbox,
    spec: &Spec,
    cases: &[Case],
) -> Vec<(usize, bool, Vec<File>, TestReport)> {
    let key = |files: &[File]| {
        let mut parts: Vec<String> = files.iter().map(|f| format!("{}\0{}", f.path, f.content)).collect();
        parts.sort();
        parts.join("\0\0")
    };
    let mut runs: Vec<(Vec<File>, String)> = Vec::new();
    for c in cases {
        runs.push((service(&c.broken), String::new()));
        let fixed = service(&c.fixed);
        let k = key(&fixed);
        if !runs.iter().any(|(_, seen)| *seen == k) {
            runs.push((fixed, k));
        }
    }
    let judged: Vec<(Vec<File>, TestReport)> = futures::stream::iter(runs)
        .map(|(files, _)| async move {
            let report = sandbox.judge(spec, &files, &limits()).await;
            (files, report)
        })
        .buffered(2)
        .collect()
        .await;
    let report_of = |files: &[File]| {
        judged
            .iter()
            .find(|(f, _)| key(f) == key(files))
            .map(|(_, r)| r.clone())
            .expect("every answer was judged")
    };
    cases
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            [true, false].map(|broken| {
                let files = service(if broken { &c.broken } else { &c.fixed });
                let report = report_of(&files);
                (i, broken, files, report)
            })
        })
        .collect()
}

/// The static errors of a validation report, by rule.
fn error_rules(validation: &ValidationReport) -> Vec<&str> {
    validation
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.rule.as_str())
        .collect()
}

/// What is wrong with a broken answer's verdicts: it must be judged failing
/// for the case's reason, and refused by exactly the case's static rule.
fn problems_of_broken(case: &Case, report: &TestReport, validation: &ValidationReport) -> Vec<String> {
    let mut problems = Vec::new();
    eprintln!("{}:\n  {}", case.name, failing(report).join("\n  "));
    let named = report
        .cases
        .iter()
        .any(|c| c.outcome != Outcome::Passed && c.name.starts_with(case.fails));
    if report.all_passed() || !named {
        problems.push(format!(
            "{}: broken, judged {} without a failing {:?}: {:#?}",
            case.name,
            if report.all_passed() { "passing" } else { "failing" },
            case.fails,
            failing(report)
        ));
    }
    let expected: Vec<&str> = case.rule.into_iter().collect();
    let mut found = error_rules(validation);
    found.dedup();
    if found != expected {
        problems.push(format!(
            "{}: broken, static errors {found:?}, expected {expected:?}",
            case.name
        ));
    }
    problems
}

/// What is wrong with a fixed answer's verdicts: it must pass the sandbox
/// and validation.
fn problems_of_fixed(case: &Case, report: &TestReport, validation: &ValidationReport) -> Vec<String> {
    let mut problems = Vec::new();
    if !report.all_passed() {
        problems.push(format!(
            "{}: fixed, judged failing: {:#?}\n{:?}\n{}",
            case.name,
            failing(report),
            report.problem,
            report.output
        ));
    }
    if !error_rules(validation).is_empty() {
        problems.push(format!(
            "{}: fixed, static errors {:?}",
            case.name, validation.diagnostics
        ));
    }
    problems
}

/// The notes service with an API key on every notes endpoint, its tests
/// sending the key.
fn keyed_service() -> Vec<File> {
    let mut main = main_with(&[
        (
            "from fastapi import Depends, FastAPI, HTTPException, Response, status\n",
            "from fastapi import Depends, FastAPI, Header, HTTPException, Response, status\n",
        ),
        (
            "app = FastAPI(title=\"notes-service\", version=\"1.0.0\")\n",
            "app = FastAPI(title=\"notes-service\", version=\"1.0.0\")\n\n\ndef require_key(x_api_key: str = Header(default=\"\")) -> None:\n    \"\"\"Only callers with the service's key.\"\"\"\n    if x_api_key != \"secret\":\n        raise HTTPException(status_code=401, detail=\"missing or wrong API key\")\n",
        ),
    ]);
    for route in [
        "@app.get(\"/notes\", response_model=list[NoteOut]",
        "@app.post(\"/notes\", response_model=NoteOut, status_code=status.HTTP_201_CREATED",
        "@app.get(\"/notes/{note_id}\", response_model=NoteOut",
        "@app.delete(\"/notes/{note_id}\", status_code=status.HTTP_204_NO_CONTENT",
    ] {
        assert!(main.contains(route), "{route}");
        main = main.replacen(route, &format!("{route}, dependencies=[Depends(require_key)]"), 1);
    }
    let tests = demo_tests().replace(
        "    with TestClient(app) as c:\n",
        "    with TestClient(app, headers={\"X-API-Key\": \"secret\"}) as c:\n",
    );
    service(&vec![("app/main.py", Some(main)), ("tests/test_notes.py", Some(tests))])
}

/// The notes service with `GET /quote` from an external API, which answers
/// 502 when the API is unreachable (`caught`) or lets the error out.
fn quoting_service(caught: bool) -> Vec<File> {
    let handler = if caught {
        "    try:\n        return {\"quote\": fetch_quote()}\n    except httpx.HTTPError as e:\n        raise HTTPException(status_code=502, detail=\"the quotes API is unreachable\") from e\n"
    } else {
        "    return {\"quote\": fetch_quote()}\n"
    };
    let main = format!(
        "{}\n\nQUOTES_URL = \"https://quotes.example.com/random\"\n\n\ndef fetch_quote() -> str:\n    \"\"\"A quote from the quotes API.\"\"\"\n    return str(httpx.get(QUOTES_URL, timeout=2).json()[\"quote\"])\n\n\n@app.get(\"/quote\")\ndef quote() -> dict[str, str]:\n    \"\"\"A quote to head the notes with.\"\"\"\n{handler}",
        main_with(&[(
            "from datetime import datetime\n",
            "from datetime import datetime\n\nimport httpx\n"
        )])
    );
    let tests = format!(
        "{}\n\ndef test_quote(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:\n    monkeypatch.setattr(\"app.main.fetch_quote\", lambda: \"carpe diem\")\n    assert client.get(\"/quote\").json() == {{\"quote\": \"carpe diem\"}}\n",
        demo_tests()
    );
    service(&vec![("app/main.py", Some(main)), ("tests/test_notes.py", Some(tests))])
}

/// The notes service limited to three requests a minute per client, the
/// limit reset between tests.
fn limited_service() -> Vec<File> {
    let main = main_with(&[
        (
            "from fastapi import Depends, FastAPI, HTTPException, Response, status\n",
            "from fastapi import Depends, FastAPI, HTTPException, Request, Response, status\n",
        ),
        (
            "app = FastAPI(title=\"notes-service\", version=\"1.0.0\")\n",
            "app = FastAPI(title=\"notes-service\", version=\"1.0.0\")\nSEEN: dict[str, int] = {}\nLIMIT = 3\n\n\ndef limit(request: Request) -> None:\n    \"\"\"At most LIMIT requests per client (the window is the process).\"\"\"\n    who = request.client.host if request.client else \"local\"\n    SEEN[who] = SEEN.get(who, 0) + 1\n    if SEEN[who] > LIMIT:\n        raise HTTPException(status_code=429, detail=\"too many requests\")\n",
        ),
        (
            "def list_notes(session: Session = Depends(get_session)) -> list[Note]:",
            "def list_notes(session: Session = Depends(get_session), _: None = Depends(limit)) -> list[Note]:",
        ),
        (
            "def create_note(payload: NoteIn, session: Session = Depends(get_session)) -> Note:",
            "def create_note(payload: NoteIn, session: Session = Depends(get_session), _: None = Depends(limit)) -> Note:",
        ),
        (
            "def get_note(note_id: int, session: Session = Depends(get_session)) -> Note:",
            "def get_note(note_id: int, session: Session = Depends(get_session), _: None = Depends(limit)) -> Note:",
        ),
        (
            "def delete_note(note_id: int, session: Session = Depends(get_session)) -> Response:",
            "def delete_note(note_id: int, session: Session = Depends(get_session), _: None = Depends(limit)) -> Response:",
        ),
    ]);
    let tests = demo_tests()
        .replace(
            "    Base.metadata.drop_all(engine)\n",
            "    SEEN.clear()\n    Base.metadata.drop_all(engine)\n",
        )
        .replace("from app.main import app\n", "from app.main import SEEN, app\n");
    service(&vec![("app/main.py", Some(main)), ("tests/test_notes.py", Some(tests))])
}

async fn probes_allow_what_the_spec_says_kiln_cannot_provide_and_nothing_more(backend: Backend) {
    let (spec, _) = notes_service();
    let spec_with = |change: &dyn Fn(&mut Value)| {
        let mut value = serde_json::to_value(&spec).expect("a spec serialises");
        change(&mut value);
        serde_json::from_value::<Spec>(value).expect("a valid spec")
    };
    let keyed = spec_with(&|v| v["authentication"] = "An API key in the X-API-Key header.".into());
    let quoting = spec_with(&|v| {
        v["endpoints"].as_array_mut().expect("endpoints").push(
            serde_json::json!({"method": "GET", "path": "/quote", "description": "A quote from the quotes API."}),
        );
        v["external_apis"] = serde_json::json!(["the quotes API at quotes.example.com"]);
    });
    let limited = spec_with(&|v| v["rate_limiting"] = "3 requests a minute per client.".into());
    let runs = [
        ("a rate limit the spec asks for", &limited, limited_service(), None),
        (
            "a rate limit the spec does not ask for",
            &spec,
            limited_service(),
            Some("kiln: DELETE /notes/{note_id}"),
        ),
        ("an API key the spec asks for", &keyed, keyed_service(), None),
        (
            "an API key the spec does not ask for",
            &spec,
            keyed_service(),
            Some("kiln: GET /notes"),
        ),
        (
            "an unreachable external API answered with 502",
            &quoting,
            quoting_service(true),
            None,
        ),
        (
            "an unreachable external API answered with 500",
            &quoting,
            quoting_service(false),
            Some("kiln: GET /quote"),
        ),
    ];
    let sandbox = TestSandbox::new(backend, &limits(), 1).await;
    let mut problems = Vec::new();
    for (name, spec, files, fails) in runs {
        let errors: Vec<String> = kiln::validate::validate(spec, &files)
            .diagnostics
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| format!("{d:?}"))
            .collect();
        if !errors.is_empty() {
            problems.push(format!("{name}: static errors {errors:#?}"));
        }
        let report = sandbox.judge(spec, &files, &limits()).await;
        let failed = !report.all_passed()
            && fails.is_none_or(|f| report.cases.iter().any(|c| c.outcome != Outcome::Passed && c.name == f));
        if failed != fails.is_some() {
            problems.push(format!("{name}: expected {fails:?}, got {:#?}", failing(&report)));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// A correct service whose request models use what generated services
/// commonly use (bounds, patterns, enums, dates, e-mail addresses, nested
/// models, lists, UUID ids, a required query parameter, a partial update):
/// Kiln's requests must be valid for all of it.
const ITEMS_MAIN: &str = r#""""Items: a small inventory kept in memory."""

import enum
import uuid
from datetime import date

from fastapi import FastAPI, HTTPException, Query, Response, status
from pydantic import BaseModel, EmailStr, Field

app = FastAPI(title="items", version="1.0.0")


class Kind(str, enum.Enum):
    """What an item is."""

    tool = "tool"
    part = "part"


class Owner(BaseModel):
    """Who is responsible for an item."""

    email: EmailStr
    name: str | None = None


class ItemIn(BaseModel):
    """An item as clients submit it."""

    name: str = Field(min_length=3, max_length=20, pattern=r"^[a-z]+$")
    price: float = Field(gt=0, le=1000)
    quantity: int = Field(ge=1, le=10)
    kind: Kind
    tags: list[str] = Field(min_length=1)
    due: date
    owner: Owner
    note: str | None = None


class ItemPatch(BaseModel):
    """Fields to change."""

    price: float | None = Field(default=None, gt=0)
    quantity: int | None = Field(default=None, ge=1, le=10)


class ItemOut(ItemIn):
    """A stored item."""

    id: uuid.UUID


ITEMS: dict[uuid.UUID, ItemOut] = {}


@app.get("/health")
def health() -> dict[str, str]:
    """Liveness probe."""
    return {"status": "ok"}


@app.post("/items", response_model=ItemOut, status_code=status.HTTP_201_CREATED)
def create_item(item: ItemIn) -> ItemOut:
    """Store an item."""
    stored = ItemOut(id=uuid.uuid4(), **item.model_dump())
    ITEMS[stored.id] = stored
    return stored


@app.get("/items", response_model=list[ItemOut])
def list_items(kind: Kind = Query(...)) -> list[ItemOut]:
    """Items of one kind."""
    return [i for i in ITEMS.values() if i.kind == kind]


def _find(item_id: uuid.UUID) -> ItemOut:
    """The item, or a 404."""
    if item_id not in ITEMS:
        raise HTTPException(status_code=404, detail="no such item")
    return ITEMS[item_id]


@app.get("/items/{item_id}", response_model=ItemOut)
def get_item(item_id: uuid.UUID) -> ItemOut:
    """One item."""
    return _find(item_id)


@app.patch("/items/{item_id}", response_model=ItemOut)
def patch_item(item_id: uuid.UUID, patch: ItemPatch) -> ItemOut:
    """Change an item's price or quantity."""
    item = _find(item_id).model_copy(update=patch.model_dump(exclude_none=True))
    ITEMS[item_id] = item
    return item


@app.delete("/items/{item_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_item(item_id: uuid.UUID) -> Response:
    """Remove an item."""
    _find(item_id)
    del ITEMS[item_id]
    return Response(status_code=status.HTTP_204_NO_CONTENT)
"#;

const ITEMS_TESTS: &str = r#"from fastapi.testclient import TestClient

from app.main import app

client = TestClient(app)
ITEM = {
    "name": "hammer",
    "price": 9.5,
    "quantity": 2,
    "kind": "tool",
    "tags": ["steel"],
    "due": "2030-01-01",
    "owner": {"email": "ann@example.com"},
}


def test_health():
    assert client.get("/health").json() == {"status": "ok"}


def test_create_and_list():
    created = client.post("/items", json=ITEM)
    assert created.status_code == 201
    assert created.json()["id"] in [i["id"] for i in client.get("/items", params={"kind": "tool"}).json()]


def test_create_rejects_a_bad_name():
    assert client.post("/items", json={**ITEM, "name": "Hammer!"}).status_code == 422


async def test_list_from_an_async_client():
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        assert (await c.get("/items", params={"kind": "part"})).json() == []


def test_get_patch_delete():
    item_id = client.post("/items", json=ITEM).json()["id"]
    assert client.get(f"/items/{item_id}").json()["name"] == "hammer"
    assert client.patch(f"/items/{item_id}", json={"quantity": 3}).json()["quantity"] == 3
    assert client.delete(f"/items/{item_id}").status_code == 204
    assert client.get(f"/items/{item_id}").status_code == 404
"#;

fn items_service() -> (Spec, Vec<File>) {
    let spec = serde_json::json!({
        "kind": "service",
        "service_name": "items",
        "description": "An inventory of items.",
        "endpoints": [
            {"method": "POST", "path": "/items", "description": "Create an item."},
            {"method": "GET", "path": "/items", "description": "List items of one kind."},
            {"method": "GET", "path": "/items/{item_id}", "description": "One item."},
            {"method": "PATCH", "path": "/items/{item_id}", "description": "Change price or quantity."},
            {"method": "DELETE", "path": "/items/{item_id}", "description": "Remove an item."},
        ],
    });
    let mut files: Vec<File> = notes_service()
        .1
        .into_iter()
        .filter(|f| !f.path.starts_with("app/") && !f.path.starts_with("tests/"))
        .collect();
    files.extend([
        File::new("app/__init__.py", "\"\"\"Items service.\"\"\"\n"),
        File::new("app/main.py", ITEMS_MAIN),
        File::new("tests/__init__.py", ""),
        File::new("tests/test_items.py", ITEMS_TESTS),
        // The one ini setting honoured: the async test runs without a marker.
        File::new("pyproject.toml", "[tool.pytest.ini_options]\nasyncio_mode = \"auto\"\n"),
    ]);
    for f in &mut files {
        if f.path == "requirements.txt" {
            f.content.push_str("email-validator==2.4.0\n");
        }
    }
    (serde_json::from_value(spec).expect("a valid spec"), files)
}

async fn a_service_with_rich_request_models_passes_kilns_requests(backend: Backend) {
    let (spec, files) = items_service();
    let errors: Vec<String> = kiln::validate::validate(&spec, &files)
        .diagnostics
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| format!("{d:?}"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let sandbox = TestSandbox::new(backend, &limits(), 1).await;
    let report = sandbox.judge(&spec, &files, &limits()).await;
    assert!(report.all_passed(), "{:#?}\n{}", failing(&report), report.output);
    let probed = report.cases.iter().filter(|c| c.name.starts_with("kiln: ")).count();
    assert_eq!(probed, 5, "{:#?}", report.cases);
    assert!(
        report
            .cases
            .iter()
            .all(|c| !c.name.starts_with("kiln: ") || c.message.is_empty()),
        "every endpoint got a 2xx, none passed by an exception: {:#?}",
        report.cases
    );
}

async fn a_suite_that_hangs_still_leaves_kiln_time_for_its_own_requests(backend: Backend) {
    let (spec, _) = notes_service();
    let files = service(&vec![
        (
            "app/main.py",
            Some(main_with(&[(
                CREATE_BODY,
                "    raise RuntimeError(\"database offline\")\n",
            )])),
        ),
        (
            "tests/test_hang.py",
            Some("import time\n\n\ndef test_wait_for_the_database():\n    time.sleep(3600)\n".to_owned()),
        ),
    ]);
    let limits = RunLimits {
        timeout: Duration::from_secs(15),
        ..limits()
    };
    let sandbox = TestSandbox::new(backend, &limits, 1).await;
    let report = harness::run_tests(sandbox.sandbox(), &spec, &files, &limits)
        .await
        .expect("the run");
    assert!(
        report.problem.as_deref().is_some_and(|p| p.contains("time ran out")),
        "{:?}",
        report.problem
    );
    let create = report
        .cases
        .iter()
        .find(|c| c.name == "kiln: POST /notes")
        .expect("POST /notes was probed");
    assert!(
        create.outcome == Outcome::Failed && create.message.contains("answered 500"),
        "{create:?}"
    );
}

for_both_backends!(
    a_suite_that_hangs_still_leaves_kiln_time_for_its_own_requests,
    a_service_with_rich_request_models_passes_kilns_requests,
    probes_allow_what_the_spec_says_kiln_cannot_provide_and_nothing_more,
    the_demo_service_passes_with_kilns_own_requests,
    broken_services_fail_and_fixed_ones_pass,
);
