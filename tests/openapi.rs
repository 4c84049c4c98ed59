//! `/openapi.json` against the code that serves it: the document is valid
//! OpenAPI 3.1 (checked with the specification's own JSON Schema, vendored
//! in `tests/data/openapi-3.1-schema.json`), describes every route of API v1
//! with its method, and every live answer of a real stack — successes and
//! errors — validates against the schema the document gives for its path,
//! method and status, with no field the document does not declare.

mod support;

use std::time::Duration;

use kiln::auth::Scope;
use reqwest::Method;
use serde_json::{Value, json};
use support::{ADD_SCRIPT, Dispatcher, InProcessWorker, TestEnv, add_spec, mock, wait_for_batch};

/// Answers `wrong_N` with a function that fails its tests and `broken_N`
/// with one that does not parse, so attempts carry test cases and
/// diagnostics.
const FAILING_SCRIPTS: &str = r#"
- name: wrong
  match: "`(?P<name>wrong_\\d+)`"
  responses:
    - files:
        - path: solution.py
          content: "def {name}(a: int, b: int) -> int:\n    \"\"\"Return a - b.\"\"\"\n    return a - b\n"
- name: broken
  match: "`(?P<name>broken_\\d+)`"
  responses:
    - files:
        - path: solution.py
          content: "def {name}(a, b)\n    return a +\n"
"#;

fn spec_named(name: &str) -> Value {
    let mut spec = add_spec(0);
    spec["entry_point"] = json!(name);
    spec
}

/// The document's `#/components` beside `schema`, every object schema
/// closed with `unevaluatedProperties: false`: a live answer may carry no
/// field the document does not declare. Members of an `allOf` (and the
/// components they name) stay open and the `allOf` itself is closed, which
/// is how JSON Schema 2020-12 closes a composition.
fn closed(doc: &Value, schema: &Value) -> Value {
    fn composed(v: &Value, names: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for m in map.get("allOf").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(name) = m["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
                        names.push(name.to_owned());
                    }
                }
                map.values().for_each(|v| composed(v, names));
            }
            Value::Array(items) => items.iter().for_each(|v| composed(v, names)),
            _ => {}
        }
    }
    fn close(v: &mut Value, open: bool) {
        match v {
            Value::Object(map) => {
                let composition = map.contains_key("allOf");
                if !open && (composition || map.contains_key("properties")) && !map.contains_key("additionalProperties")
                {
                    map.insert("unevaluatedProperties".into(), Value::Bool(false));
                }
                for (key, child) in map.iter_mut() {
                    match (key.as_str(), child) {
                        ("allOf", Value::Array(members)) => members.iter_mut().for_each(|m| close(m, true)),
                        (_, child) => close(child, false),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| close(v, false)),
            _ => {}
        }
    }
    let mut names = Vec::new();
    composed(doc, &mut names);
    let mut components = doc["components"].clone();
    for (name, schema) in components["schemas"].as_object_mut().unwrap() {
        close(schema, names.contains(name));
    }
    let mut root = schema.clone();
    close(&mut root, false);
    root["components"] = components;
    root
}

struct Checker {
    doc: Value,
    base: String,
    http: reqwest::Client,
    token: String,
    checked: Vec<String>,
}

impl Checker {
    /// The documented answer of `template` (`/v1/jobs/{id}`) for `method`
    /// and `status`.
    fn documented(&self, template: &str, method: &Method, status: u16) -> &Value {
        let op = &self.doc["paths"][template][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not in the document");
        let answer = &op["responses"][status.to_string()];
        assert!(
            answer.is_object(),
            "{method} {template} answered {status}, which the document does not list: {}",
            op["responses"]
        );
        answer
    }

    /// Sends the request and checks the answer against the document;
    /// returns its status and JSON body (Null for other media types).
    async fn check(&mut self, method: Method, template: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = response.bytes().await.unwrap();
        let answer = self.documented(template, &method, status).clone();
        let content = answer["content"].as_object().expect("documented content");
        let (media, spec) = content
            .iter()
            .find(|(media, _)| content_type.starts_with(media.as_str()))
            .unwrap_or_else(|| panic!("{method} {path}: {content_type} is not documented: {answer}"));
        if media != "application/json" {
            self.checked.push(format!("{method} {template} {status} {media}"));
            return (status, Value::Null);
        }
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        let schema = closed(&self.doc, &spec["schema"]);
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&schema)
            .unwrap_or_else(|e| panic!("{method} {template} {status}: schema does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status} does not match the document: {errors:#?}\nanswer: {value}"
        );
        self.checked.push(format!("{method} {template} {status}"));
        (status, value)
    }
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1_and_describes_every_v1_route_with_its_method_and_scope() {
    let env = TestEnv::new().await;
    let d = Dispatcher::start(&env.settings("http://127.0.0.1:9", &[("KILN_AUTH", "required")])).await;
    // No token: the document describes the API, not its data.
    let response = reqwest::get(format!("{}/openapi.json", d.url)).await.unwrap();
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    // Kept for reading and as a CI artifact.
    let saved = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("openapi.json");
    std::fs::write(&saved, serde_json::to_string_pretty(&doc).unwrap()).unwrap();

    let meta: Value = serde_json::from_str(include_str!("data/openapi-3.1-schema.json")).unwrap();
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&meta)
        .unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "not valid OpenAPI 3.1: {errors:#?}");
    // The meta-schema does find a broken document.
    let mut broken = doc.clone();
    broken["paths"]["/v1/batches"]["get"]["responses"] = json!("none");
    assert!(!validator.is_valid(&broken));

    for route in kiln::http::v1_routes() {
        let path = route.path.replace("{*", "{");
        let op = &doc["paths"][&path][route.method.as_str().to_lowercase()];
        assert!(op.is_object(), "{} {path} is not documented", route.method);
        // No v1 operation opts out of the document-wide bearer requirement.
        assert!(
            op.get("security").is_none(),
            "{} {path}: {}",
            route.method,
            op["security"]
        );
        for status in ["401", "403", "500", "503"] {
            assert!(
                op["responses"][status].is_object(),
                "{} {path} lacks {status}",
                route.method
            );
        }
    }
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    // The probes and the document itself need no token.
    for probe in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(doc["paths"][probe]["get"]["security"], json!([{}]), "{probe}");
    }
    d.stop().await;
}

/// A request and the status it must be answered with: method, the path
/// template the document lists it under, the path sent, and its body.
type Expectation = (Method, &'static str, String, Option<Value>, u16);

/// Listing and reading batches, the batch `b` (`/v1/batches/{id}`) and its
/// jobs, with bad ids and queries; and a change to the batch's options.
fn batch_requests(b: &str) -> Vec<Expectation> {
    vec![
        (Method::GET, "/v1/batches", "/v1/batches".to_owned(), None, 200),
        (
            Method::GET,
            "/v1/batches",
            "/v1/batches?state=failed&limit=1".to_owned(),
            None,
            200,
        ),
        (
            Method::GET,
            "/v1/batches",
            "/v1/batches?state=nope".to_owned(),
            None,
            400,
        ),
        (
            Method::POST,
            "/v1/batches",
            "/v1/batches".to_owned(),
            Some(json!({"specs": "x"})),
            400,
        ),
        (Method::GET, "/v1/batches/{id}", b.to_owned(), None, 200),
        (
            Method::GET,
            "/v1/batches/{id}",
            format!("/v1/batches/{}", uuid::Uuid::new_v4()),
            None,
            404,
        ),
        (Method::GET, "/v1/batches/{id}", "/v1/batches/x".to_owned(), None, 400),
        (
            Method::PATCH,
            "/v1/batches/{id}",
            b.to_owned(),
            Some(json!({"options": {"budget_tokens": 100_000}})),
            200,
        ),
        (Method::GET, "/v1/batches/{id}/jobs", format!("{b}/jobs"), None, 200),
        (Method::GET, "/v1/batches/{id}/report", format!("{b}/report"), None, 200),
        (
            Method::GET,
            "/v1/batches/{id}/report",
            format!("/v1/batches/{}/report", uuid::Uuid::new_v4()),
            None,
            404,
        ),
        (
            Method::GET,
            "/v1/batches/{id}/report",
            "/v1/batches/x/report".to_owned(),
            None,
            400,
        ),
        (
            Method::GET,
            "/v1/batches/{id}/jobs",
            format!("{b}/jobs?state=failed&limit=1"),
            None,
            200,
        ),
    ]
}

/// Reading the jobs (a success, a test failure and a validation failure),
/// their attempts, artifacts and files; retrying a succeeded job.
fn job_requests(jobs: &[String]) -> Vec<Expectation> {
    vec![
        (Method::GET, "/v1/jobs/{id}", format!("/v1/jobs/{}", jobs[0]), None, 200),
        (Method::GET, "/v1/jobs/{id}", format!("/v1/jobs/{}", jobs[1]), None, 200),
        (
            Method::GET,
            "/v1/jobs/{id}/attempts",
            format!("/v1/jobs/{}/attempts", jobs[0]),
            None,
            200,
        ),
        (
            Method::GET,
            "/v1/jobs/{id}/attempts",
            format!("/v1/jobs/{}/attempts?full=true", jobs[1]),
            None,
            200,
        ),
        (
            Method::GET,
            "/v1/jobs/{id}/attempts",
            format!("/v1/jobs/{}/attempts", jobs[2]),
            None,
            200,
        ),
        (
            Method::GET,
            "/v1/jobs/{id}/artifacts",
            format!("/v1/jobs/{}/artifacts", jobs[0]),
            None,
            200,
        ),
        (
            Method::GET,
            "/v1/jobs/{id}/artifacts",
            format!("/v1/jobs/{}/artifacts", jobs[1]),
            None,
            404,
        ),
        (
            Method::GET,
            "/v1/jobs/{id}/files/{path}",
            format!("/v1/jobs/{}/files/solution.py", jobs[0]),
            None,
            200,
        ),
        (
            Method::GET,
            "/v1/jobs/{id}/files/{path}",
            format!("/v1/jobs/{}/files/nope.py", jobs[0]),
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/jobs/{id}/retry",
            format!("/v1/jobs/{}/retry", jobs[0]),
            None,
            409,
        ),
    ]
}

/// The workers, the probes and the document itself.
fn probe_requests() -> Vec<Expectation> {
    vec![
        (Method::GET, "/v1/workers", "/v1/workers".to_owned(), None, 200),
        (Method::GET, "/healthz", "/healthz".to_owned(), None, 200),
        (Method::GET, "/readyz", "/readyz".to_owned(), None, 200),
        (Method::GET, "/metrics", "/metrics".to_owned(), None, 200),
        (Method::GET, "/openapi.json", "/openapi.json".to_owned(), None, 200),
    ]
}

/// The failed jobs' attempts carry what the dashboard and CLI show: the
/// failing test cases, the diagnostics.
async fn check_failed_attempts_carry_their_reports(c: &mut Checker, jobs: &[String]) {
    let (_, wrong) = c
        .check(
            Method::GET,
            "/v1/jobs/{id}/attempts",
            &format!("/v1/jobs/{}/attempts", jobs[1]),
            None,
        )
        .await;
    assert!(
        wrong[0]["tests"]["cases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["outcome"] == "failed"),
        "{wrong}"
    );
    let (_, broken) = c
        .check(
            Method::GET,
            "/v1/jobs/{id}/attempts",
            &format!("/v1/jobs/{}/attempts", jobs[2]),
            None,
        )
        .await;
    assert!(
        !broken[0]["validation"]["diagnostics"].as_array().unwrap().is_empty(),
        "{broken}"
    );
}

/// The check would see a field the document does not declare, nested too.
async fn check_undeclared_fields_are_caught(c: &mut Checker, jobs: &[String]) {
    let (_, job) = c
        .check(Method::GET, "/v1/jobs/{id}", &format!("/v1/jobs/{}", jobs[0]), None)
        .await;
    let schema = closed(
        &c.doc,
        &c.documented("/v1/jobs/{id}", &Method::GET, 200)["content"]["application/json"]["schema"],
    );
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&schema)
        .unwrap();
    assert!(validator.is_valid(&job));
    for pointer in ["", "/result", "/spec", "/spec/test_cases/0"] {
        let mut surplus = job.clone();
        surplus.pointer_mut(pointer).unwrap()["surplus"] = json!(1);
        assert!(
            !validator.is_valid(&surplus),
            "an undeclared field at {pointer:?} passed"
        );
    }
}

/// The verbs that change state: retrying and cancelling a job, then its
/// batch; a retry of states that do not exist is refused; re-judging a job
/// and the batch, and of states that are not finished, refused.
async fn check_state_changes(c: &mut Checker, b: &str, jobs: &[String]) {
    let (status, _) = c
        .check(
            Method::POST,
            "/v1/jobs/{id}/retry",
            &format!("/v1/jobs/{}/retry", jobs[1]),
            None,
        )
        .await;
    assert_eq!(status, 202);
    let (status, _) = c
        .check(
            Method::POST,
            "/v1/jobs/{id}/cancel",
            &format!("/v1/jobs/{}/cancel", jobs[1]),
            None,
        )
        .await;
    assert_eq!(status, 202);
    let (status, _) = c
        .check(
            Method::POST,
            "/v1/batches/{id}/retry",
            &format!("{b}/retry"),
            Some(json!({"states": ["cancelled"]})),
        )
        .await;
    assert_eq!(status, 202);
    let (status, _) = c
        .check(Method::POST, "/v1/batches/{id}/cancel", &format!("{b}/cancel"), None)
        .await;
    assert_eq!(status, 202);
    let (status, _) = c
        .check(
            Method::POST,
            "/v1/batches/{id}/retry",
            &format!("{b}/retry"),
            Some(json!({"states": ["done"]})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = c
        .check(
            Method::POST,
            "/v1/jobs/{id}/rejudge",
            &format!("/v1/jobs/{}/rejudge", jobs[0]),
            None,
        )
        .await;
    assert_eq!(status, 202);
    // The replay's attempt, naming its source, is documented too.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, job) = c
            .check(Method::GET, "/v1/jobs/{id}", &format!("/v1/jobs/{}", jobs[0]), None)
            .await;
        if job["state"] == "succeeded" && job["run"] == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the re-judge never ended: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, attempts) = c
        .check(
            Method::GET,
            "/v1/jobs/{id}/attempts",
            &format!("/v1/jobs/{}/attempts", jobs[0]),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(attempts[1]["rejudged_from"], json!({"run": 1, "n": 1}), "{attempts}");
    let (status, _) = c
        .check(
            Method::POST,
            "/v1/batches/{id}/rejudge",
            &format!("{b}/rejudge"),
            Some(json!({"states": ["failed", "cancelled"]})),
        )
        .await;
    assert_eq!(status, 202);
    let (status, _) = c
        .check(
            Method::POST,
            "/v1/batches/{id}/rejudge",
            &format!("{b}/rejudge"),
            Some(json!({"states": ["queued"]})),
        )
        .await;
    assert_eq!(status, 400);
}

/// Authentication's answers are documented too: a wrong token, and a read
/// token's change.
async fn check_authentication(c: &mut Checker, env: &TestEnv, b: &str) {
    c.token = "kiln_wrong".into();
    let (status, _) = c.check(Method::GET, "/v1/batches", "/v1/batches", None).await;
    assert_eq!(status, 401);
    c.token = env.token(Scope::Read).await;
    let (status, _) = c
        .check(Method::POST, "/v1/batches/{id}/cancel", &format!("{b}/cancel"), None)
        .await;
    assert_eq!(status, 403);
}

/// A review batch (`options.review`): its job awaiting review, and the
/// answers of a review: a submit token's 403, a bad decision's 400, the
/// decided job, and a second decision's 409.
async fn check_review(c: &mut Checker, env: &TestEnv, client: &support::JsonClient) {
    let body = json!({"specs": [add_spec(2)], "options": {"review": true}});
    let (status, created) = c.check(Method::POST, "/v1/batches", "/v1/batches", Some(body)).await;
    assert_eq!(status, 201);
    let batch = created["batch_id"].as_str().unwrap().to_owned();
    let job = created["job_ids"][0].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while client.batch(&batch).await.unwrap()["state"] != "awaiting_review" {
        assert!(std::time::Instant::now() < deadline, "the job never awaited review");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = c
        .check(Method::GET, "/v1/batches/{id}", &format!("/v1/batches/{batch}"), None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = c
        .check(Method::GET, "/v1/jobs/{id}", &format!("/v1/jobs/{job}"), None)
        .await;
    assert_eq!(status, 200);
    let path = format!("/v1/jobs/{job}/review");
    let template = "/v1/jobs/{id}/review";
    let approve = json!({"decision": "approve", "comment": "fine"});
    let (status, _) = c.check(Method::POST, template, &path, Some(approve.clone())).await;
    assert_eq!(status, 403, "a submit token decided");
    let submit = std::mem::replace(&mut c.token, env.token(Scope::Admin).await);
    let (status, _) = c
        .check(Method::POST, template, &path, Some(json!({"decision": "perhaps"})))
        .await;
    assert_eq!(status, 400);
    let (status, _) = c.check(Method::POST, template, &path, Some(approve.clone())).await;
    assert_eq!(status, 200);
    let (status, _) = c.check(Method::POST, template, &path, Some(approve)).await;
    assert_eq!(status, 409);
    c.token = submit;
}

#[tokio::test]
async fn every_endpoints_live_answers_validate_against_the_document() {
    let env = TestEnv::new().await;
    let llm = mock(&format!("{ADD_SCRIPT}{FAILING_SCRIPTS}")).await;
    let settings = env.settings(&llm.base_url(), &[("KILN_AUTH", "required")]);
    let d = Dispatcher::start(&settings).await;
    let worker = InProcessWorker::start(&settings).await;
    let doc: Value = reqwest::get(format!("{}/openapi.json", d.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut c = Checker {
        doc,
        base: d.url.clone(),
        http: reqwest::Client::new(),
        token: env.token(Scope::Submit).await,
        checked: Vec::new(),
    };

    // A batch with a success, a test failure and a validation failure.
    let body = json!({"name": "openapi", "specs": [add_spec(1), spec_named("wrong_1"), spec_named("broken_1")],
                      "options": {"max_attempts": 1}});
    let (status, created) = c.check(Method::POST, "/v1/batches", "/v1/batches", Some(body)).await;
    assert_eq!(status, 201);
    let batch = created["batch_id"].as_str().unwrap().to_owned();
    let jobs: Vec<String> = support::job_ids(&created);
    let (status, _) = c.check(Method::GET, "/v1/workers", "/v1/workers", None).await;
    assert_eq!(status, 200);
    let client = support::JsonClient::with_token(&d.url, &c.token).unwrap();
    wait_for_batch(&client, &batch, Duration::from_secs(120)).await;

    let b = format!("/v1/batches/{batch}");
    let requests = [batch_requests(&b), job_requests(&jobs), probe_requests()];
    for (method, template, path, body, expected) in requests.into_iter().flatten() {
        let (status, body) = c.check(method.clone(), template, &path, body).await;
        assert_eq!(status, expected, "{method} {path}: {body}");
    }
    check_failed_attempts_carry_their_reports(&mut c, &jobs).await;
    check_undeclared_fields_are_caught(&mut c, &jobs).await;
    check_review(&mut c, &env, &client).await;
    // Verbs that change state, last.
    check_state_changes(&mut c, &b, &jobs).await;
    check_authentication(&mut c, &env, &b).await;

    // Every v1 route was exercised.
    for route in kiln::http::v1_routes() {
        let key = format!("{} {} ", route.method, route.path.replace("{*", "{"));
        assert!(c.checked.iter().any(|k| k.starts_with(&key)), "{key}was not checked");
    }
    println!("{} answers checked against the document", c.checked.len());
    worker.stop().await;
    d.stop().await;
}
