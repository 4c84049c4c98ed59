//! Static validation against a corpus: good and bad answers for every rule,
//! each asserting exactly which findings it produces (rule, severity, file,
//! line, column) — so a rule that stops firing, fires elsewhere or fires on
//! good code fails here. Then the real-world checks: the demo answers and
//! the 164 HumanEval canonical solutions must produce no errors, and the
//! repair prompt built from a failed report must list every error once
//! within its cap.
//!
//! Needs nothing but the library: no database, queue or sandbox.

use std::path::Path;

use kiln::files::File;
use kiln::parse::Expected;
use kiln::prompt::{FEEDBACK_CAP, Failure, feedback, repair_messages};
use kiln::report::{Diagnostic, Severity, TestCaseResult, TestReport, ValidationReport};
use kiln::spec::Spec;
use kiln::validate::validate;
use serde_json::{Value, json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The spec a function case is checked against unless it names another:
/// entry point `solve`, judged by pytest code only (so no call shapes).
fn default_function_spec() -> Value {
    json!({"kind": "function", "task_description": "Solve it.", "entry_point": "solve",
           "test_code": "from solution import solve\n"})
}

fn spec(value: Value) -> Spec {
    Spec::from_value(value, "spec").expect("corpus specs are valid")
}

fn demo_specs() -> Vec<Spec> {
    let batch = kiln::client::load_batch(&root().join("examples/specs")).expect("demo specs load");
    batch["specs"]
        .as_array()
        .expect("a batch has specs")
        .iter()
        .map(|s| spec(s.clone()))
        .collect()
}

/// Every scripted answer of the demo: (script name, answer index, files).
fn demo_answers() -> Vec<(String, usize, Vec<File>)> {
    let scripts = kiln_mock_llm::load_scripts(&root().join("examples/mock-llm")).expect("demo scripts load");
    let mut out = Vec::new();
    for script in scripts {
        for (i, response) in script.responses.iter().enumerate() {
            let (raw, kind) = if let Some(files) = &response.files {
                (json!({ "files": files }).to_string(), Expected::Service)
            } else if let Some(function) = &response.function {
                (function.to_string(), Expected::Function { entry_point: None })
            } else {
                (
                    response.content.clone().unwrap_or_default(),
                    Expected::Function { entry_point: None },
                )
            };
            let files = kiln::parse::parse_response(&raw, kind).expect("demo answers parse");
            out.push((script.name.clone(), i, files));
        }
    }
    out
}

/// The spec a demo script answers: the one whose prompt its pattern matches,
/// as the mock server decides.
fn demo_spec_for(script: &str) -> Spec {
    let scripts = kiln_mock_llm::load_scripts(&root().join("examples/mock-llm")).expect("demo scripts load");
    let pattern = &scripts
        .iter()
        .find(|s| s.name == script)
        .expect("script exists")
        .pattern;
    let regex = regex::Regex::new(pattern).expect("script patterns compile");
    demo_specs()
        .into_iter()
        .find(|s| regex.is_match(&kiln::prompt::spec_prompt(s)))
        .unwrap_or_else(|| panic!("no demo spec for {script}"))
}

fn notes_files() -> Vec<File> {
    demo_answers()
        .into_iter()
        .find(|(name, _, _)| name == "notes-service")
        .expect("the notes-service answer exists")
        .2
}

/// Every file under `dir`, with paths relative to it, in a stable order.
fn files_under(dir: &Path) -> Vec<File> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<File>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let relative = path
                    .strip_prefix(base)
                    .expect("under the base")
                    .to_string_lossy()
                    .into_owned();
                out.push(File::new(
                    relative,
                    std::fs::read_to_string(&path).expect("a text file"),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// `file:line:col severity rule`, the form the corpus states findings in.
fn render(d: &Diagnostic) -> String {
    let severity = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "info",
    };
    format!("{}:{}:{} {severity} {}", d.file, d.line, d.col, d.rule)
}

/// One corpus entry: an answer, its spec, and exactly what it must produce.
struct Case {
    name: &'static str,
    spec: Spec,
    files: Vec<File>,
    expect: Vec<String>,
    /// When set, only findings of these rules are compared (for answers
    /// that rightly trigger a cascade of other findings).
    only: Option<Vec<&'static str>>,
}

impl Case {
    /// A function answer: `solution.py` with `source`, the default spec.
    fn function(name: &'static str, source: &str) -> Case {
        Case {
            name,
            spec: spec(default_function_spec()),
            files: vec![File::new("solution.py", source)],
            expect: Vec::new(),
            only: None,
        }
    }

    /// The notes-service demo answer (which is clean), to be modified.
    fn service(name: &'static str) -> Case {
        Case {
            name,
            spec: demo_spec_for("notes-service"),
            files: notes_files(),
            expect: Vec::new(),
            only: None,
        }
    }

    /// A whole answer stored under `tests/data/validate/<dir>`, checked
    /// against the notes-service spec.
    fn service_dir(name: &'static str, dir: &str) -> Case {
        Case {
            files: files_under(&root().join("tests/data/validate").join(dir)),
            ..Case::service(name)
        }
    }

    fn spec(mut self, value: Value) -> Case {
        self.spec = spec(value);
        self
    }

    /// Adds a file, or replaces the one at `path`.
    fn file(mut self, path: &str, content: &str) -> Case {
        self.files.retain(|f| f.path != path);
        self.files.push(File::new(path, content));
        self
    }

    fn remove(mut self, path: &str) -> Case {
        let before = self.files.len();
        self.files.retain(|f| f.path != path);
        assert_ne!(before, self.files.len(), "{}: no file {path} to remove", self.name);
        self
    }

    /// Replaces every occurrence of `from` in `path`.
    fn edit(mut self, path: &str, from: &str, to: &str) -> Case {
        let name = self.name;
        let file = self
            .files
            .iter_mut()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("{name}: no file {path}"));
        assert!(file.content.contains(from), "{name}: {path} has no {from:?}");
        file.content = file.content.replace(from, to);
        self
    }

    /// Moves the file at `from` to `to`.
    fn rename(mut self, from: &str, to: &str) -> Case {
        let name = self.name;
        let file = self
            .files
            .iter_mut()
            .find(|f| f.path == from)
            .unwrap_or_else(|| panic!("{name}: no file {from}"));
        to.clone_into(&mut file.path);
        self
    }

    /// Replaces every occurrence of `from` in every Python file.
    fn replace_everywhere(mut self, from: &str, to: &str) -> Case {
        for file in self.files.iter_mut().filter(|f| f.path.ends_with(".py")) {
            file.content = file.content.replace(from, to);
        }
        self
    }

    fn expect(mut self, findings: &[&str]) -> Case {
        self.expect = findings.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    fn only(mut self, rules: &[&'static str]) -> Case {
        self.only = Some(rules.to_vec());
        self
    }

    /// The difference between what the case produces and what it expects.
    fn mismatch(&self) -> Option<String> {
        let report = validate(&self.spec, &self.files);
        let mut found: Vec<String> = report
            .diagnostics
            .iter()
            .filter(|d| self.only.as_ref().is_none_or(|rules| rules.contains(&d.rule.as_str())))
            .map(render)
            .collect();
        found.sort();
        let mut expected = self.expect.clone();
        expected.sort();
        (found != expected).then(|| {
            let details: Vec<String> = report
                .diagnostics
                .iter()
                .map(|d| format!("    {} {}", render(d), d.message))
                .collect();
            format!(
                "{}:\n  expected {expected:?}\n  found    {found:?}\n{}",
                self.name,
                details.join("\n")
            )
        })
    }
}

/// Runs cases, reporting every mismatch at once.
fn run(cases: &[Case]) {
    let failures: Vec<String> = cases.iter().filter_map(Case::mismatch).collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// The notes answer's requirements with `line` first.
fn requirements_with(line: &str) -> String {
    format!(
        "{line}\nfastapi==0.165.0\npydantic==2.14.3\nsqlalchemy==2.1.9\nuvicorn==0.54.0\nhttpx==0.28.1\npytest==9.2.0\n"
    )
}

fn python_cases() -> Vec<Case> {
    vec![
        Case::function(
            "a_valid_solution_has_no_findings",
            "\"\"\"Sum.\"\"\"\n\nfrom collections import Counter\n\n\ndef solve(a: int, b: int) -> int:\n    \"\"\"Add.\"\"\"\n    return a + b + len(Counter())\n",
        ),
        Case::function(
            "a_syntax_error_is_reported_at_its_position",
            "def solve(a, b):\n    return a +\n",
        )
        .expect(&["solution.py:2:15 error python-syntax"]),
        Case::function(
            "syntax_newer_than_python_3_11_is_reported",
            "type Pair = tuple[int, int]\n\n\ndef solve(a, b):\n    return a\n",
        )
        .expect(&["solution.py:1:1 error python-version"]),
        Case::function(
            "a_name_read_on_import_before_it_is_bound_is_flagged",
            "def solve(a, b):\n    return a\n\n\nresult = solve(x, 1)\nx = 2\n",
        )
        .expect(&["solution.py:5:16 error name-undefined"]),
        Case::function(
            "a_name_bound_nowhere_is_flagged",
            "def solve(a: List[int], b):\n    return a\n",
        )
        .expect(&["solution.py:1:14 error name-undefined"]),
        Case::function(
            "a_name_bound_later_but_read_only_when_called_is_accepted",
            "def solve(a, b):\n    return helper(a) + b\n\n\ndef helper(a):\n    return a\n",
        ),
        Case::function(
            "a_solution_importing_itself_is_flagged",
            "from solution import helper\n\n\ndef helper(a):\n    return a\n\n\ndef solve(a, b):\n    return helper(a)\n",
        )
        .expect(&["solution.py:1:1 error import-self"]),
        Case::function("a_missing_solution_file_is_reported", "")
            .file("main.py", "def solve(a):\n    return a\n")
            .remove("solution.py")
            .expect(&["solution.py:0:0 error missing-file"]),
    ]
}

/// The entry point: present, not a stub, and callable the way the spec's
/// test cases call it.
fn entry_point_cases() -> Vec<Case> {
    vec![
        Case::function(
            "an_entry_point_left_a_stub_is_flagged",
            "def solve(a, b):\n    \"\"\"Add.\"\"\"\n",
        )
        .expect(&["solution.py:1:5 error empty-body"]),
        Case::function("a_missing_entry_point_is_reported", "def other(a, b):\n    return a\n")
            .expect(&["solution.py:0:0 error entry-point"]),
        Case::function(
            "an_entry_point_bound_by_an_import_is_accepted",
            "from math import gcd as solve\n",
        ),
        Case::function(
            "an_entry_point_defined_under_a_version_check_is_accepted",
            "import sys\n\nif sys.version_info >= (3, 8):\n    def solve(a, b):\n        return a\n",
        ),
        Case::function(
            "an_async_entry_point_is_flagged",
            "async def solve(a, b):\n    return a\n",
        )
        .expect(&["solution.py:1:11 error entry-signature"]),
        Case::function(
            "parameters_missing_from_input_types_are_flagged",
            "def solve(x, y):\n    return x + y\n",
        )
        .spec(
            json!({"kind": "function", "task_description": "Add.", "entry_point": "solve",
                         "input_types": {"a": "int", "b": "int"},
                         "test_cases": [{"input": {"a": 1, "b": 2}, "expected": 3}]}),
        )
        .expect(&[
            "solution.py:1:5 error entry-signature",
            "solution.py:1:5 error entry-signature",
        ]),
        Case::function(
            "kwargs_accept_every_input_type",
            "def solve(**kwargs):\n    return sum(kwargs.values())\n",
        )
        .spec(
            json!({"kind": "function", "task_description": "Add.", "entry_point": "solve",
                         "input_types": {"a": "int", "b": "int"},
                         "test_cases": [{"input": {"a": 1, "b": 2}, "expected": 3}]}),
        ),
        Case::function(
            "a_positional_case_with_too_many_arguments_is_flagged",
            "def solve(a, b):\n    return a + b\n",
        )
        .spec(
            json!({"kind": "function", "task_description": "Add.", "entry_point": "solve",
                         "test_cases": [{"input": [1, 2, 3], "expected": 6}]}),
        )
        .expect(&["solution.py:1:5 error entry-signature"]),
        Case::function(
            "a_keyword_case_cannot_fill_a_positional_only_parameter",
            "def solve(a, /):\n    return a\n",
        )
        .spec(
            json!({"kind": "function", "task_description": "Echo.", "entry_point": "solve",
                     "test_cases": [{"input": {"a": 1}, "expected": 1}]}),
        )
        .expect(&["solution.py:1:5 error entry-signature"]),
        Case::function(
            "a_scalar_input_is_one_positional_argument",
            "def solve(n, step=1):\n    return n\n",
        )
        .spec(
            json!({"kind": "function", "task_description": "Echo.", "entry_point": "solve",
                         "test_cases": [{"input": 5, "expected": 5}, {"input": [5, 2], "expected": 5}]}),
        ),
    ]
}

fn security_cases() -> Vec<Case> {
    vec![
        Case::function("eval_in_a_function_solution_is_a_warning", "def solve(expr: str) -> int:\n    return eval(expr)\n")
            .expect(&["solution.py:2:12 warning security-eval"]),
        Case::function("an_aliased_eval_is_flagged_where_it_is_called", "run = eval\n\n\ndef solve(s):\n    return run(s)\n")
            .expect(&["solution.py:5:12 warning security-eval"]),
        Case::function("exec_is_flagged", "def solve(code):\n    exec(code)\n")
            .expect(&["solution.py:2:5 warning security-eval"]),
        Case::function(
            "builtin_compile_is_flagged_but_re_compile_is_not",
            "import re\n\n\ndef solve(src):\n    re.compile(src)\n    return compile(src, '<s>', 'eval')\n",
        )
        .expect(&["solution.py:6:12 warning security-eval"]),
        Case::function("a_word_in_a_comment_or_string_is_not_flagged", COMMENTS_AND_STRINGS),
        Case::function(
            "a_function_named_eval_shadows_the_builtin",
            "def eval(x):\n    return x\n\n\ndef solve(a):\n    return eval(a)\n",
        ),
        Case::service("eval_in_a_service_is_an_error")
            .file(
                "app/calc.py",
                "\"\"\"Calc.\"\"\"\n\n\ndef compute(expr: str) -> int:\n    \"\"\"Compute.\"\"\"\n    return eval(expr)\n",
            )
            .expect(&["app/calc.py:6:12 error security-eval"]),
        Case::function("dunder_import_is_flagged", "def solve(name):\n    return __import__(name)\n")
            .expect(&["solution.py:2:12 error security-import"]),
        Case::function(
            "import_module_is_flagged_through_an_alias",
            "from importlib import import_module as load\n\n\ndef solve(name):\n    return load(name)\n",
        )
        .expect(&["solution.py:5:12 error security-import"]),
        Case::function(
            "importlib_metadata_is_not_a_dynamic_import",
            "import importlib.metadata\n\n\ndef solve(name):\n    return importlib.metadata.version(name)\n",
        ),
        Case::service("a_dynamic_import_in_service_tests_is_a_warning")
            .file(
                "tests/test_reload.py",
                "import importlib\n\nimport app.main\n\n\ndef test_reload():\n    importlib.reload(app.main)\n",
            )
            .expect(&["tests/test_reload.py:7:5 warning security-import"]),
        Case::function("an_os_system_call_is_flagged", "import os\n\n\ndef solve(cmd):\n    return os.system(cmd)\n")
            .expect(&["solution.py:5:12 error security-shell"]),
        Case::function(
            "an_os_system_imported_under_another_name_is_flagged",
            "from os import system as run\n\n\ndef solve(cmd):\n    return run(cmd)\n",
        )
        .expect(&["solution.py:5:12 error security-shell"]),
        Case::function(
            "subprocess_with_shell_true_is_flagged_through_a_module_alias",
            "import subprocess as sp\n\n\ndef solve(cmd):\n    return sp.run(cmd, shell=True)\n",
        )
        .expect(&["solution.py:5:24 error security-shell"]),
        Case::function(
            "subprocess_without_a_shell_is_not_flagged",
            "import subprocess\n\n\ndef solve(cmd):\n    return subprocess.run([cmd], shell=False, check=True)\n",
        ),
        Case::function("os_popen_is_flagged", "import os\n\n\ndef solve(cmd):\n    return os.popen(cmd).read()\n")
            .expect(&["solution.py:5:12 error security-shell"]),
        Case::function(
            "getattr_on_os_is_the_same_as_the_attribute",
            "import os\n\n\ndef solve(cmd):\n    return getattr(os, 'system')(cmd)\n",
        )
        .expect(&["solution.py:5:12 error security-shell"]),
        Case::function("an_aliased_pickle_load_is_flagged", "import pickle as p\n\n\ndef solve(data):\n    return p.loads(data)\n")
            .expect(&["solution.py:5:12 error security-deserialize"]),
        Case::function(
            "a_pickle_function_imported_by_name_is_flagged",
            "from pickle import load\n\n\ndef solve(f):\n    return load(f)\n",
        )
        .expect(&["solution.py:5:12 error security-deserialize"]),
        Case::function("marshal_loads_is_flagged", "import marshal\n\n\ndef solve(data):\n    return marshal.loads(data)\n")
            .expect(&["solution.py:5:12 error security-deserialize"]),
        Case::function("json_loads_is_fine", "import json\n\n\ndef solve(data):\n    return json.loads(data)\n"),
        Case::function("importing_ctypes_is_flagged", "import ctypes\n\n\ndef solve(a):\n    return a\n")
            .expect(&["solution.py:1:8 error security-ctypes"]),
        Case::function("importing_from_ctypes_is_flagged", "from ctypes import CDLL\n\n\ndef solve(a):\n    return CDLL\n")
            .expect(&["solution.py:1:6 error security-ctypes"]),
    ]
}

const COMMENTS_AND_STRINGS: &str = "# never call eval() or os.system here\ndef solve(a, b):\n    \"\"\"Do not use pickle.loads, exec or __import__.\"\"\"\n    note = 'eval(a) would be unsafe; so would os.system(\"rm\")'\n    return a + b\n";

fn import_cases() -> Vec<Case> {
    vec![
        Case::function("a_third_party_import_in_a_function_is_not_allowed", "import numpy as np\n\n\ndef solve(a):\n    return np.sum(a)\n")
            .expect(&["solution.py:1:8 error import-not-allowed"]),
        Case::function("a_sandbox_package_in_a_function_is_not_allowed", "from pydantic import BaseModel\n\n\ndef solve(a):\n    return a\n")
            .expect(&["solution.py:1:6 error import-not-allowed"]),
        Case::function(
            "an_optional_import_with_a_fallback_is_a_warning",
            "try:\n    import ujson as json\nexcept ImportError:\n    import json\n\n\ndef solve(s):\n    return json.loads(s)\n",
        )
        .expect(&["solution.py:2:12 warning import-not-allowed"]),
        Case::function(
            "a_version_gated_import_is_not_judged",
            "import sys\n\nif sys.version_info < (3, 11):\n    import tomli as tomllib\nelse:\n    import tomllib\n\n\ndef solve(s):\n    return tomllib.loads(s)\n",
        ),
        Case::function(
            "a_type_checking_import_is_not_judged",
            "from __future__ import annotations\n\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    import numpy\n\n\ndef solve(a: numpy.ndarray) -> int:\n    return len(a)\n",
        ),
        Case::function(
            "a_relative_import_in_a_top_level_module_is_unresolved",
            "from .helpers import double\n\n\ndef solve(a):\n    return double(a)\n",
        )
        .expect(&["solution.py:1:7 error import-unresolved"]),
        Case::function("a_local_helper_module_is_allowed", "from helpers import double\n\n\ndef solve(a):\n    return double(a)\n")
            .file("helpers.py", "def double(a):\n    return 2 * a\n"),
        Case::service("a_service_import_missing_from_requirements_is_flagged")
            .file(
                "app/auth.py",
                "\"\"\"Tokens.\"\"\"\n\nimport jwt\n\n\ndef decode(token: str) -> dict:\n    \"\"\"Decode.\"\"\"\n    return jwt.decode(token, 'k', algorithms=['HS256'])\n",
            )
            .expect(&["app/auth.py:3:8 error import-not-in-requirements"]),
        Case::service("a_test_import_missing_from_requirements_is_a_warning")
            .file("tests/test_mock.py", "import respx\n\n\ndef test_nothing():\n    assert respx\n")
            .expect(&["tests/test_mock.py:1:8 warning import-not-in-requirements"]),
        Case::service("a_package_outside_the_runtime_is_not_allowed")
            .file("app/client.py", "\"\"\"HTTP.\"\"\"\n\nimport requests\n")
            .expect(&["app/client.py:3:8 error import-not-allowed"]),
        Case::service("a_framework_dependency_is_installed_by_its_parent")
            .file(
                "app/extra.py",
                "\"\"\"Extra.\"\"\"\n\nfrom starlette.responses import JSONResponse\nfrom typing_extensions import Annotated\n",
            ),
        Case::service("an_allowed_package_installed_only_as_a_dependency_is_a_warning")
            .file("app/extra.py", "\"\"\"Extra.\"\"\"\n\nimport anyio\n")
            .expect(&["app/extra.py:3:8 warning import-transitive"]),
        Case::service("an_import_of_a_missing_local_module_is_unresolved")
            .file("app/extra.py", "\"\"\"Extra.\"\"\"\n\nfrom app.schemas import NoteIn\n")
            .expect(&["app/extra.py:3:6 error import-unresolved"]),
        Case::service("relative_imports_resolve_against_the_package")
            .file("app/extra.py", "\"\"\"Extra.\"\"\"\n\nfrom .db import Base\nfrom . import models\n"),
    ]
}

fn requirements_cases() -> Vec<Case> {
    vec![
        Case::service("a_requirement_that_does_not_parse_is_flagged_at_its_column")
            .file("requirements.txt", &requirements_with("fastapi=0.165.0"))
            .expect(&["requirements.txt:1:8 error requirements-syntax"]),
        Case::service("an_unpinned_requirement_is_a_warning")
            .file("requirements.txt", &requirements_with("bcrypt"))
            .expect(&["requirements.txt:1:1 warning requirements-unpinned"]),
        Case::service("ranges_that_admit_the_runtimes_version_are_fine")
            .file(
                "requirements.txt",
                "bcrypt>=4
fastapi>=0.110,<1
pydantic~=2.14
sqlalchemy[asyncio]==2.1.*
uvicorn!=0.50.0
httpx==0.28.1
pytest==9.2.0
",
            )
            .expect(&[]),
        Case::service("a_wildcard_that_misses_the_runtimes_version_is_flagged")
            .file("requirements.txt", &requirements_with("bcrypt==4.*"))
            .expect(&["requirements.txt:1:1 error requirements-version"]),
        Case::service("a_pin_differing_only_in_patch_level_is_a_warning")
            .file("requirements.txt", &requirements_with("bcrypt==5.0.1"))
            .expect(&["requirements.txt:1:1 warning requirements-version"]),
        Case::service("a_range_that_excludes_the_runtimes_version_is_flagged")
            .file("requirements.txt", &requirements_with("bcrypt>=4,<5"))
            .expect(&["requirements.txt:1:1 error requirements-version"]),
        Case::service("a_package_outside_the_allow_list_is_flagged")
            .file("requirements.txt", &requirements_with("requests==2.32.3"))
            .expect(&["requirements.txt:1:1 error requirements-not-allowed"]),
        Case::service("a_version_other_than_the_runtimes_is_flagged")
            .file("requirements.txt", &requirements_with("bcrypt==4.0.1"))
            .expect(&["requirements.txt:1:1 error requirements-version"]),
        Case::service("an_index_url_option_is_flagged")
            .file("requirements.txt", &requirements_with("--index-url https://pypi.example/simple"))
            .expect(&["requirements.txt:1:1 error requirements-option"]),
        Case::service("an_editable_install_is_flagged")
            .file("requirements.txt", &requirements_with("-e git+https://github.com/x/y.git#egg=y"))
            .expect(&["requirements.txt:1:1 error requirements-option"]),
        Case::service("an_included_requirements_file_is_flagged")
            .file("requirements.txt", &requirements_with("-r other.txt"))
            .expect(&["requirements.txt:1:1 error requirements-option"]),
        Case::service("a_trusted_host_after_a_requirement_is_flagged")
            .file("requirements.txt", &requirements_with("bcrypt==5.0.0 --trusted-host evil.example"))
            .expect(&["requirements.txt:1:15 error requirements-option"]),
        Case::service("a_direct_url_requirement_is_flagged")
            .file("requirements.txt", &requirements_with("bcrypt @ https://example.com/bcrypt-5.0.0.tar.gz"))
            .expect(&["requirements.txt:1:1 error requirements-url"]),
        Case::service("a_bare_url_line_is_flagged")
            .file("requirements.txt", &requirements_with("https://example.com/pkg-1.0.tar.gz"))
            .expect(&["requirements.txt:1:1 error requirements-url"]),
        Case::service("extras_the_runtime_lacks_are_flagged")
            .file("requirements.txt", &requirements_with("tenacity[doc]==9.2.1"))
            .expect(&["requirements.txt:1:1 error requirements-extras"]),
        Case::service("a_runtime_dependency_listed_directly_is_a_warning")
            .file("requirements.txt", &requirements_with("starlette==1.10.0"))
            .expect(&["requirements.txt:1:1 warning requirements-transitive"]),
        Case::service("a_package_listed_twice_is_a_warning")
            .file("requirements.txt", &requirements_with("fastapi==0.165.0"))
            .expect(&["requirements.txt:2:1 warning requirements-duplicate"]),
        Case::service("comments_markers_extras_hashes_and_continuations_are_fine").file(
            "requirements.txt",
            "# web\nfastapi==0.165.0  # api\n\npydantic[email]==2.14.3 ; python_version >= \"3.11\"\nsqlalchemy==2.1.9 \\\n    --hash=sha256:0123\nuvicorn==0.54.0\nhttpx==0.28.1\npytest==9.2.0\nPyJWT==2.15.1\n",
        ),
        Case::service("an_empty_requirements_file_is_flagged")
            .file("requirements.txt", "# nothing yet\n")
            .only(&["requirements-empty"])
            .expect(&["requirements.txt:0:0 error requirements-empty"]),
    ]
}

const DOCKERFILE_LOWERCASE: &str = "# syntax=docker/dockerfile:1\nfrom python:3.11-slim\nworkdir /srv\ncopy requirements.txt .\nrun pip install --no-cache-dir \\\n    # pinned in requirements.txt\n    -r requirements.txt\ncopy app ./app\nrun useradd --system app\nuser app\nhealthcheck CMD python -c \"print(1)\"\ncmd [\"uvicorn\", \"app.main:app\"]\n";

fn dockerfile_cases() -> Vec<Case> {
    let health = "HEALTHCHECK --interval=30s --timeout=3s CMD python -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')\"\n";
    let cmd = "CMD [\"uvicorn\", \"app.main:app\", \"--host\", \"0.0.0.0\", \"--port\", \"8000\"]\n";
    vec![
        Case::service("a_dockerfile_without_from_is_flagged")
            .edit("Dockerfile", "FROM python:3.11-slim\n", "")
            .expect(&["Dockerfile:0:0 error dockerfile-from"]),
        Case::service("an_instruction_before_from_is_flagged")
            .edit("Dockerfile", "FROM python:3.11-slim\nWORKDIR /srv\n", "WORKDIR /srv\nFROM python:3.11-slim\n")
            .expect(&["Dockerfile:1:1 error dockerfile-from"]),
        Case::service("a_latest_base_image_is_flagged")
            .edit("Dockerfile", "FROM python:3.11-slim", "FROM python:latest")
            .expect(&["Dockerfile:1:6 error dockerfile-from"]),
        Case::service("an_untagged_base_image_is_flagged")
            .edit("Dockerfile", "FROM python:3.11-slim", "FROM python")
            .expect(&["Dockerfile:1:6 error dockerfile-from"]),
        Case::service("a_registry_port_is_not_a_tag")
            .edit("Dockerfile", "FROM python:3.11-slim", "FROM --platform=linux/amd64 registry.example:5000/python")
            .expect(&["Dockerfile:1:29 error dockerfile-from"]),
        Case::service("a_base_pinned_by_digest_passes").edit(
            "Dockerfile",
            "FROM python:3.11-slim",
            "FROM python@sha256:4f2b5e8a6a1bd3c0a6d5dbb0bd4de4c2e3b8c51a9f5c3c8d5e0e7d2f5a1b3c4d",
        ),
        Case::service("a_multi_stage_build_is_judged_by_its_final_stage").edit(
            "Dockerfile",
            "FROM python:3.11-slim\n",
            "FROM python:3.11-slim AS build\nUSER root\nRUN echo building\nFROM build\n",
        ),
        Case::service("a_missing_user_is_flagged")
            .edit("Dockerfile", "USER app\n", "")
            .expect(&["Dockerfile:0:0 error dockerfile-user"]),
        Case::service("user_root_is_flagged")
            .edit("Dockerfile", "USER app", "USER root")
            .expect(&["Dockerfile:7:1 error dockerfile-user"]),
        Case::service("user_zero_with_a_group_is_flagged")
            .edit("Dockerfile", "USER app", "USER 0:0")
            .expect(&["Dockerfile:7:1 error dockerfile-user"]),
        Case::service("a_password_in_env_is_flagged")
            .edit("Dockerfile", "WORKDIR /srv\n", "WORKDIR /srv\nENV DB_PASSWORD=hunter2\n")
            .expect(&["Dockerfile:3:1 error dockerfile-secret"]),
        Case::service("a_legacy_env_secret_is_flagged")
            .edit("Dockerfile", "WORKDIR /srv\n", "WORKDIR /srv\nenv API_TOKEN abc123\n")
            .expect(&["Dockerfile:3:1 error dockerfile-secret"]),
        Case::service("an_arg_default_secret_is_flagged")
            .edit("Dockerfile", "WORKDIR /srv\n", "WORKDIR /srv\nARG GITHUB_TOKEN=ghp_example\n")
            .expect(&["Dockerfile:3:1 error dockerfile-secret"]),
        Case::service("secret_metadata_and_references_are_not_secrets").edit(
            "Dockerfile",
            "WORKDIR /srv\n",
            "WORKDIR /srv\nENV ACCESS_TOKEN_EXPIRE_MINUTES=30 SECRET_KEY=${SECRET_KEY} PASSWORD_FILE=/run/secrets/db\nARG API_KEY\n",
        ),
        Case::service("a_missing_cmd_is_flagged")
            .edit("Dockerfile", cmd, "")
            .expect(&["Dockerfile:0:0 error dockerfile-cmd"]),
        Case::service("an_entrypoint_satisfies_the_cmd_rule").edit("Dockerfile", "CMD [", "ENTRYPOINT ["),
        Case::service("a_health_route_stands_in_for_a_healthcheck").edit("Dockerfile", health, ""),
        Case::service("no_healthcheck_and_no_health_route_is_flagged")
            .edit("Dockerfile", health, "HEALTHCHECK NONE\n")
            .edit("app/main.py", "@app.get(\"/health\")", "@app.get(\"/status\")")
            .expect(&[
                "Dockerfile:0:0 error dockerfile-health",
                "app/main.py:16:1 error route-missing",
            ]),
        Case::service("an_unknown_instruction_is_flagged")
            .edit("Dockerfile", "WORKDIR /srv\n", "WORKDIR /srv\nRUNN echo hi\n")
            .expect(&["Dockerfile:3:1 error dockerfile-syntax"]),
        Case::service("an_exec_form_with_single_quotes_is_flagged")
            .edit("Dockerfile", cmd, "CMD ['uvicorn', 'app.main:app']\n")
            .expect(&["Dockerfile:10:5 error dockerfile-syntax"]),
        Case::service("lowercase_instructions_continuations_and_comments_parse").file("Dockerfile", DOCKERFILE_LOWERCASE),
    ]
}

fn compose_cases() -> Vec<Case> {
    let compose = |name: &'static str, content: &str| Case::service(name).file("docker-compose.yml", content);
    vec![
        compose("invalid_yaml_is_flagged_at_its_position", "services:\n  notes:\n    build: .\n    ports: [\"8000:8000\"\n")
            .expect(&["docker-compose.yml:5:1 error compose-syntax"]),
        compose("a_compose_file_without_services_is_flagged", "version: \"3.9\"\n")
            .expect(&["docker-compose.yml:0:0 error compose-service"]),
        compose("a_service_without_build_or_image_is_flagged", "services:\n  notes:\n    ports:\n      - \"8000:8000\"\n")
            .expect(&["docker-compose.yml:2:3 error compose-service"]),
        compose("privileged_mode_is_flagged", "services:\n  notes:\n    build: .\n    privileged: true\n")
            .expect(&["docker-compose.yml:4:5 error compose-privileged"]),
        compose("host_networking_is_flagged", "services:\n  notes:\n    build: .\n    network_mode: host\n")
            .expect(&["docker-compose.yml:4:5 error compose-network-host"]),
        compose("the_host_pid_namespace_is_flagged", "services:\n  notes:\n    build: .\n    pid: \"host\"\n")
            .expect(&["docker-compose.yml:4:5 error compose-pid-host"]),
        compose(
            "a_docker_socket_mount_is_flagged",
            "services:\n  notes:\n    build: .\n    volumes:\n      - ./data:/data\n      - /var/run/docker.sock:/var/run/docker.sock:ro\n",
        )
        .expect(&["docker-compose.yml:6:9 error compose-docker-socket"]),
        compose(
            "a_long_syntax_socket_mount_is_flagged",
            "services:\n  notes:\n    build: .\n    volumes:\n      - type: bind\n        source: /var/run/docker.sock\n        target: /var/run/docker.sock\n",
        )
        .expect(&["docker-compose.yml:6:9 error compose-docker-socket"]),
        compose(
            "dangerous_capabilities_are_flagged",
            "services:\n  notes:\n    build: .\n    cap_add:\n      - NET_BIND_SERVICE\n      - SYS_ADMIN\n",
        )
        .expect(&["docker-compose.yml:6:9 error compose-capabilities"]),
        compose("cap_add_all_in_flow_style_is_flagged", "services:\n  notes:\n    build: .\n    cap_add: [ALL]\n")
            .expect(&["docker-compose.yml:4:5 error compose-capabilities"]),
        compose(
            "unconfined_seccomp_is_flagged",
            "services:\n  notes:\n    build: .\n    security_opt:\n      - seccomp:unconfined\n",
        )
        .expect(&["docker-compose.yml:5:9 error compose-unconfined"]),
        compose(
            "a_literal_secret_in_the_environment_is_a_warning",
            "services:\n  notes:\n    build: .\n    environment:\n      JWT_SECRET: dev-secret\n      DATABASE_URL: sqlite://\n",
        )
        .expect(&["docker-compose.yml:5:7 warning compose-secret"]),
        compose(
            "environment_references_are_not_secrets",
            "services:\n  notes:\n    image: notes:1.0\n    environment:\n      - SECRET_KEY=${SECRET_KEY}\n      - TOKEN_TTL_SECONDS=3600\n",
        ),
    ]
}

const ROUTER_MAIN: &str = "\"\"\"Notes service.\"\"\"\n\nfrom fastapi import FastAPI\n\nfrom app.routers import notes\n\napp = FastAPI()\napp.include_router(notes.router, prefix=\"/notes\")\n\n\n@app.get(\"/health\")\ndef health() -> dict[str, str]:\n    \"\"\"Liveness.\"\"\"\n    return {\"status\": \"ok\"}\n";

const ROUTER_NOTES: &str = "\"\"\"Notes routes.\"\"\"\n\nfrom fastapi import APIRouter\n\nrouter = APIRouter()\n\n\n@router.get(\"\")\ndef list_notes() -> list[dict[str, str]]:\n    \"\"\"All notes.\"\"\"\n    return []\n\n\n@router.api_route(\"/\", methods=[\"POST\"])\ndef create_note() -> dict[str, str]:\n    \"\"\"Create.\"\"\"\n    return {}\n\n\n@router.get(\"/{id}\")\ndef get_note(id: int) -> dict[str, int]:\n    \"\"\"One.\"\"\"\n    return {\"id\": id}\n\n\n@router.delete(\"/{id}\")\ndef delete_note(id: int) -> None:\n    \"\"\"Delete.\"\"\"\n";

fn route_cases() -> Vec<Case> {
    vec![
        Case::service("a_missing_spec_endpoint_is_reported_at_the_app")
            .edit("app/main.py", "\"/notes/{note_id}\"", "\"/items/{note_id}\"")
            .expect(&[
                "app/main.py:16:1 error route-missing",
                "app/main.py:16:1 error route-missing",
            ]),
        Case::service("an_endpoint_with_the_wrong_method_is_reported_at_its_path")
            .edit("app/main.py", "@app.delete(", "@app.put(")
            .expect(&["app/main.py:74:1 error route-method"]),
        Case::service("routers_with_prefixes_and_renamed_parameters_conform")
            .file("app/main.py", ROUTER_MAIN)
            .file("app/routers/__init__.py", "\"\"\"Routers.\"\"\"\n")
            .file("app/routers/notes.py", ROUTER_NOTES),
        Case::service("a_router_that_is_never_included_serves_nothing")
            .file(
                "app/main.py",
                &ROUTER_MAIN.replace(
                    "app.include_router(notes.router, prefix=\"/notes\")\n",
                    "assert notes\n",
                ),
            )
            .file("app/routers/__init__.py", "\"\"\"Routers.\"\"\"\n")
            .file("app/routers/notes.py", ROUTER_NOTES)
            .expect(&[
                "app/main.py:7:1 error route-missing",
                "app/main.py:7:1 error route-missing",
                "app/main.py:7:1 error route-missing",
                "app/main.py:7:1 error route-missing",
            ]),
        Case::service("a_computed_route_path_makes_a_missing_endpoint_a_warning")
            .edit(
                "app/main.py",
                "from collections.abc import Iterator\n",
                "import os\nfrom collections.abc import Iterator\n",
            )
            .edit(
                "app/main.py",
                "@app.delete(\"/notes/{note_id}\"",
                "@app.delete(os.environ[\"DELETE_PATH\"]",
            )
            .expect(&["app/main.py:75:1 warning route-method"]),
        Case::service_dir(
            "a_layered_service_with_settings_routers_and_a_lifespan_is_clean",
            "layered-service",
        ),
        Case::service_dir(
            "a_router_imported_through_a_package_reexport_is_followed",
            "layered-service",
        )
        .edit("app/routers/notes.py", "@router.delete(", "@router.patch(")
        .expect(&["app/routers/notes.py:37:1 error route-method"]),
        Case::service("a_missing_health_route_is_reported")
            .edit("app/main.py", "@app.get(\"/health\")", "@app.get(\"/healthz\")")
            .expect(&["app/main.py:16:1 error route-missing"]),
    ]
}

fn path_and_structure_cases() -> Vec<Case> {
    vec![
        Case::service("a_path_escaping_the_project_is_flagged")
            .file("../evil.txt", "x\n")
            .expect(&["../evil.txt:0:0 error path-invalid"]),
        Case::service("an_absolute_path_is_flagged")
            .file("/etc/cron.d/job.sh", "x\n")
            .expect(&["/etc/cron.d/job.sh:0:0 error path-invalid"]),
        Case::service("a_git_directory_is_flagged")
            .file(".git/hooks/post-checkout.sh", "x\n")
            .expect(&[".git/hooks/post-checkout.sh:0:0 error path-invalid"]),
        Case::service("a_disallowed_extension_is_flagged")
            .file("app/native.so", "x\n")
            .expect(&["app/native.so:0:0 error path-extension"]),
        Case::service("directories_that_differ_only_in_case_collide")
            .file("App/notes.md", "x\n")
            .expect(&["App/notes.md:0:0 error path-duplicate"]),
        Case::service("a_file_that_is_also_a_directory_is_flagged")
            .file("app/db.py/extra.txt", "x\n")
            .expect(&["app/db.py:0:0 error path-conflict"]),
        Case::service("a_service_without_tests_is_flagged")
            .remove("tests/test_notes.py")
            .expect(&["tests/:0:0 error missing-tests"]),
        Case::service("a_service_whose_tests_never_delete_is_flagged")
            .edit(
                "tests/test_notes.py",
                "    assert client.delete(f\"/notes/{created['id']}\").status_code == 204\n",
                "",
            )
            .edit(
                "tests/test_notes.py",
                "    assert client.delete(\"/notes/999\").status_code == 404\n",
                "    assert client.get(\"/notes/999\").status_code == 404\n",
            )
            .expect(&["tests/:0:0 error tests-endpoint"]),
        Case::service("a_fixture_that_creates_counts_for_the_tests_using_it")
            .file(
                "tests/test_fixture.py",
                "import pytest\nfrom fastapi.testclient import TestClient\n\nfrom app.main import app\n\n\n@pytest.fixture()\ndef created() -> dict:\n    return TestClient(app).post(\"/notes\", json={\"title\": \"t\"}).json()\n\n\ndef test_created_has_an_id(created: dict) -> None:\n    assert created[\"id\"]\n",
            )
            .expect(&[]),
        Case::service("a_conftest_hook_is_flagged_and_its_fixtures_are_not")
            .file(
                "tests/conftest.py",
                "import pytest\n\n\n@pytest.fixture()\ndef title() -> str:\n    return \"t\"\n\n\ndef pytest_collection_modifyitems(config, items):\n    items[:] = items[:1]\n",
            )
            .expect(&["tests/conftest.py:9:1 error conftest-hook"]),
        Case::service("pytest_plugins_in_a_test_module_is_flagged")
            .edit(
                "tests/test_notes.py",
                "from app.main import app\n",
                "from app.main import app\n\npytest_plugins = [\"tests.helpers\"]\n",
            )
            .expect(&["tests/test_notes.py:11:1 error conftest-hook"]),
        Case::service("a_service_without_a_dockerfile_is_flagged")
            .remove("Dockerfile")
            .expect(&["Dockerfile:0:0 error missing-file"]),
        Case::service("an_app_module_without_app_is_flagged")
            .edit("app/main.py", "app = FastAPI(", "application = FastAPI(")
            .edit("app/main.py", "@app.", "@application.")
            .expect(&["app/main.py:0:0 error service-app"]),
        Case::service("a_service_without_any_app_module_is_flagged")
            .remove("app/main.py")
            .expect(&[
                "app/main.py:0:0 error missing-file",
                "tests/test_notes.py:9:6 error import-unresolved",
            ]),
        Case::service("a_src_layout_with_a_package_not_named_app_is_read_as_python_imports_it")
            .rename("app/main.py", "src/notes_api/main.py")
            .rename("app/__init__.py", "src/notes_api/__init__.py")
            .rename("app/db.py", "src/notes_api/db.py")
            .rename("app/models.py", "src/notes_api/models.py")
            .replace_everywhere("from app.", "from notes_api.")
            .expect(&[]),
        Case::service("two_packages_that_could_hold_the_app_are_ambiguous")
            .file("billing/main.py", "from fastapi import FastAPI\n\napp = FastAPI()\n")
            .rename("app/main.py", "notes_api/main.py")
            .rename("app/__init__.py", "notes_api/__init__.py")
            .rename("app/db.py", "notes_api/db.py")
            .rename("app/models.py", "notes_api/models.py")
            .replace_everywhere("from app.", "from notes_api.")
            .expect(&[":0:0 error service-app"]),
        Case::service("an_alembic_directory_does_not_shadow_the_alembic_package")
            .file("alembic.ini", "[alembic]\nscript_location = alembic\n")
            .file(
                "alembic/env.py",
                "from alembic import context\n\nfrom app.db import Base\n\ntarget_metadata = Base.metadata\ncontext.configure(url=\"sqlite://\", target_metadata=target_metadata)\n",
            )
            .file("requirements.txt", &requirements_with("alembic==1.20.1"))
            .expect(&[]),
        Case::service("lock_files_and_readmes_are_kept")
            .file("poetry.lock", "[[package]]\nname = \"fastapi\"\n")
            .file("uv.lock", "version = 1\n")
            .file("README", "notes\n")
            .file("README.rst", "notes\n=====\n")
            .expect(&[]),
    ]
}

#[test]
fn every_python_case_reports_exactly_its_findings() {
    run(&python_cases());
}

#[test]
fn every_entry_point_case_reports_exactly_its_findings() {
    run(&entry_point_cases());
}

#[test]
fn every_security_case_reports_exactly_its_findings() {
    run(&security_cases());
}

#[test]
fn every_import_case_reports_exactly_its_findings() {
    run(&import_cases());
}

#[test]
fn every_requirements_case_reports_exactly_its_findings() {
    run(&requirements_cases());
}

#[test]
fn every_dockerfile_case_reports_exactly_its_findings() {
    run(&dockerfile_cases());
}

#[test]
fn every_compose_case_reports_exactly_its_findings() {
    run(&compose_cases());
}

#[test]
fn every_route_case_reports_exactly_its_findings() {
    run(&route_cases());
}

#[test]
fn every_path_and_structure_case_reports_exactly_its_findings() {
    run(&path_and_structure_cases());
}

#[test]
fn an_aliased_os_system_call_is_flagged() {
    let cases = [Case::function(
        "an_aliased_os_system_call_is_flagged",
        "from os import system as run\n\n\ndef solve(cmd):\n    return run(cmd)\n",
    )
    .expect(&["solution.py:5:12 error security-shell"])];
    run(&cases);
    let report = validate(&cases[0].spec, &cases[0].files);
    assert!(
        report.diagnostics[0].message.contains("`run` is `os.system`"),
        "{report:?}"
    );
}

#[test]
fn a_word_in_a_comment_is_not_flagged() {
    let case = Case::function("a_word_in_a_comment_is_not_flagged", COMMENTS_AND_STRINGS);
    let report = validate(&case.spec, &case.files);
    assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
    assert!(report.ok);
}

/// Every rule documented in `src/validate/mod.rs`.
const RULES: [&str; 54] = [
    "path-invalid",
    "path-extension",
    "path-size",
    "path-count",
    "path-duplicate",
    "path-conflict",
    "python-syntax",
    "python-version",
    "missing-file",
    "entry-point",
    "entry-signature",
    "security-eval",
    "security-import",
    "security-shell",
    "security-deserialize",
    "security-ctypes",
    "import-not-allowed",
    "import-unresolved",
    "import-not-in-requirements",
    "import-transitive",
    "requirements-syntax",
    "requirements-option",
    "requirements-url",
    "requirements-not-allowed",
    "requirements-transitive",
    "requirements-unpinned",
    "requirements-version",
    "requirements-extras",
    "requirements-duplicate",
    "requirements-empty",
    "dockerfile-syntax",
    "dockerfile-from",
    "dockerfile-user",
    "dockerfile-secret",
    "dockerfile-cmd",
    "dockerfile-health",
    "compose-syntax",
    "compose-service",
    "compose-privileged",
    "compose-network-host",
    "compose-pid-host",
    "compose-docker-socket",
    "compose-capabilities",
    "compose-unconfined",
    "compose-secret",
    "service-app",
    "missing-tests",
    "route-missing",
    "route-method",
    "name-undefined",
    "empty-body",
    "import-self",
    "tests-endpoint",
    "conftest-hook",
];

/// Rules whose failing cases are megabyte-sized answers, covered by the unit
/// tests of `src/validate/paths.rs` instead.
const LIMIT_RULES: [&str; 2] = ["path-size", "path-count"];

#[test]
fn the_corpus_covers_every_rule_with_at_least_sixty_cases() {
    let cases: Vec<Case> = [
        python_cases(),
        entry_point_cases(),
        security_cases(),
        import_cases(),
        requirements_cases(),
        dockerfile_cases(),
        compose_cases(),
        route_cases(),
        path_and_structure_cases(),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let clean = cases.iter().filter(|c| c.expect.is_empty()).count();
    assert!(clean >= 15, "only {clean} cases of good code");
    let exercised: std::collections::BTreeSet<&str> = cases
        .iter()
        .flat_map(|c| c.expect.iter())
        .filter_map(|e| e.rsplit(' ').next())
        .collect();
    let unexercised: Vec<&str> = RULES
        .iter()
        .copied()
        .filter(|r| !LIMIT_RULES.contains(r))
        .filter(|r| !exercised.contains(r))
        .collect();
    assert!(unexercised.is_empty(), "rules without a failing case: {unexercised:?}");
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names must be unique");
}

#[test]
fn the_demo_answers_produce_no_errors_or_warnings() {
    for (script, i, files) in demo_answers() {
        let spec = demo_spec_for(&script);
        let report = validate(&spec, &files);
        let shown: Vec<String> = report
            .diagnostics
            .iter()
            .map(|d| format!("{} {}", render(d), d.message))
            .collect();
        if script == "link-shortener" && i == 0 {
            // The demo's first link-shortener answer has a syntax error on
            // purpose; it must be reported, and nothing else.
            assert!(!report.ok);
            assert!(
                report
                    .diagnostics
                    .iter()
                    .all(|d| d.rule == "python-syntax" && d.file == "app/main.py"),
                "{shown:#?}"
            );
            assert_eq!(
                (report.diagnostics[0].line, report.diagnostics[0].col),
                (117, 31),
                "{shown:#?}"
            );
            continue;
        }
        assert!(report.ok, "{script} answer {i}: {shown:#?}");
        assert!(report.diagnostics.is_empty(), "{script} answer {i}: {shown:#?}");
    }
}

#[test]
fn the_quality_report_counts_the_notes_service() {
    let spec = demo_spec_for("notes-service");
    let report = validate(&spec, &notes_files());
    let quality = report.quality.expect("a quality report");
    let tests = &quality["tests"];
    assert_eq!(tests["functions"], 8);
    assert_eq!(tests["untested"], json!([]));
    let per_endpoint: Vec<(String, u64)> = tests["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                format!("{} {}", e["method"].as_str().unwrap(), e["path"].as_str().unwrap()),
                e["tests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        per_endpoint,
        [
            ("GET /notes".to_owned(), 1),
            ("POST /notes".to_owned(), 5),
            ("GET /notes/{note_id}".to_owned(), 3),
            ("DELETE /notes/{note_id}".to_owned(), 2),
        ]
    );
    assert_eq!(quality["docstrings"]["ratio"], 1.0, "{quality}");
    assert!(quality["type_hints"]["ratio"].as_f64().unwrap() > 0.9, "{quality}");
}

#[test]
fn the_quality_report_follows_test_paths_built_from_constants() {
    let case = Case::service_dir("layered", "layered-service");
    let quality = validate(&case.spec, &case.files).quality.expect("a quality report");
    let counts: Vec<u64> = quality["tests"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["tests"].as_u64().unwrap())
        .collect();
    // GET /notes, POST /notes, GET /notes/{note_id}, DELETE /notes/{note_id}.
    assert_eq!(counts, [1, 2, 2, 1], "{quality}");
    assert_eq!(quality["tests"]["functions"], 4);
    // `_get_or_404` is private; every public function has a docstring.
    assert_eq!(quality["docstrings"]["ratio"], 1.0, "{quality}");
}

#[path = "support/humaneval.rs"]
mod humaneval_data;
use humaneval_data::humaneval;

#[test]
fn humaneval_canonical_solutions_produce_no_errors() {
    let tasks = humaneval();
    assert_eq!(tasks.len(), 164);
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for task in &tasks {
        let spec = spec(
            json!({"kind": "function", "task_description": task.prompt, "entry_point": task.entry_point,
                               "test_code": task.test}),
        );
        let files = [File::new(
            "solution.py",
            format!("{}{}", task.prompt, task.canonical_solution),
        )];
        let report = validate(&spec, &files);
        for d in &report.diagnostics {
            let line = format!("{}: {} {}", task.task_id, render(d), d.message);
            match d.severity {
                Severity::Error => errors.push(line),
                _ => warnings.push(line),
            }
        }
    }
    assert!(errors.is_empty(), "{errors:#?}");
    // HumanEval/160 asks to evaluate an algebra expression it builds, and
    // its canonical solution does so with `eval`: in a function solution
    // (which only ever runs in the sandbox) that is a warning, not an error.
    assert_eq!(
        warnings,
        [
            "HumanEval/160: solution.py:30:12 warning security-eval `eval` runs a string as code; parse the input instead (`ast.literal_eval`, `json.loads`, explicit arithmetic)"
        ],
    );
}

#[test]
fn the_repair_prompt_lists_every_error_once_within_the_cap() {
    let mut diagnostics = Vec::new();
    for i in 1..=40 {
        diagnostics.push(Diagnostic::error(
            format!("app/module_{i}.py"),
            i,
            5,
            "python-syntax",
            format!("expected an expression after `+` (case {i})"),
        ));
    }
    // The same finding twice (a rule run twice over one file) and one
    // mistake repeated across files.
    diagnostics.push(diagnostics[0].clone());
    diagnostics.push(diagnostics[1].clone());
    for file in ["app/a.py", "app/b.py", "app/c.py"] {
        diagnostics.push(Diagnostic::error(
            file,
            3,
            8,
            "import-not-allowed",
            "`requests` is neither in the standard library nor installed in the sandbox runtime",
        ));
    }
    for i in 1..=30 {
        diagnostics.push(Diagnostic::warning(
            "app/main.py",
            100 + i,
            1,
            "import-transitive",
            format!("warning number {i}"),
        ));
    }
    let report = ValidationReport::from_diagnostics(diagnostics.clone());
    let tests = TestReport::from_cases(
        vec![TestCaseResult {
            name: "test_x".into(),
            outcome: kiln::report::Outcome::Failed,
            message: "assert 1 == 2".into(),
        }],
        1,
        "output\n".repeat(2000),
        None,
    );
    let failure = Failure {
        validation: Some(&report),
        tests: Some(&tests),
        other: None,
    };
    let text = feedback(&failure, 2, 3);
    assert!(text.len() <= FEEDBACK_CAP, "{} characters", text.len());
    let lines: Vec<&str> = text.lines().collect();
    let mut errors: Vec<&Diagnostic> = diagnostics.iter().filter(|d| d.severity == Severity::Error).collect();
    errors.dedup_by(|a, b| a == b);
    for d in errors {
        let place = format!("{}:{}:{}", d.file, d.line, d.col);
        let holding: Vec<&&str> = lines
            .iter()
            .filter(|l| l.split([' ', ',']).any(|word| word == place))
            .collect();
        assert_eq!(holding.len(), 1, "{place} appears on {} lines:\n{text}", holding.len());
        assert!(holding[0].contains(&d.message), "{place} without its message:\n{text}");
        assert_eq!(
            text.matches(d.message.as_str()).count(),
            1,
            "{} repeated:\n{text}",
            d.message
        );
    }
    let first_warning = text.find("warning number").expect("warnings fit too");
    let last_error = text.rfind("(case 40)").unwrap();
    assert!(last_error < first_warning, "errors come before warnings");

    // The same text is the last message of the repair conversation.
    let first = [kiln::llm::Message::system("system"), kiln::llm::Message::user("spec")];
    let messages = repair_messages(&first, "{\"files\": []}", &failure, 2, 3);
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[3].content, text);
}
