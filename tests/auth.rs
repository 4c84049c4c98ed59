//! API authentication (architecture: Authentication) against real Postgres,
//! Redis and HTTP: every `/v1` route asks for a bearer token with a scope,
//! tokens are made and revoked by `kiln-dispatcher token`, `KILN_AUTH=off`
//! is refused off loopback, batches record their creator, and the `kiln`
//! CLI authenticates with `KILN_TOKEN`.

mod support;

use std::time::{Duration, Instant};

use kiln::auth::Scope;
use kiln::http::{V1Route, v1_routes};
use reqwest::Method;
use serde_json::{Value, json};
use support::{
    ADD_SCRIPT, Dispatcher, InProcessWorker, JsonClient, TestEnv, add_spec, bin, mock, store_batch, wait_for_batch,
};

const NO_LLM: &str = "http://127.0.0.1:9";

/// A revocation must reach a running dispatcher within seconds: it is what
/// an operator does when a token has leaked (`kiln::auth::CACHE_TTL` is 2 s).
const REVOCATION_DEADLINE: Duration = Duration::from_secs(3);

async fn dispatcher(env: &TestEnv) -> Dispatcher {
    Dispatcher::start(&env.settings(NO_LLM, &[("KILN_AUTH", "required")])).await
}

/// The route's path with its parameters filled in.
fn path_of(route: &V1Route, batch_id: &str, job_id: &str) -> String {
    let id = if route.path.starts_with("/v1/jobs") {
        job_id
    } else {
        batch_id
    };
    route.path.replace("{id}", id).replace("{*path}", "solution.py")
}

/// Sends `method url` with an optional `Authorization` header value.
async fn send(
    method: &Method,
    url: &str,
    authorization: Option<&str>,
    body: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = reqwest::Client::new().request(method.clone(), url);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    if *method != Method::GET {
        request = request.header("content-type", "application/json").body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, response.json().await.unwrap_or(Value::Null), headers)
}

/// A body each submit route would accept.
fn body_for(route: &V1Route) -> String {
    match (route.method.as_str(), route.path) {
        ("POST", "/v1/batches") => json!({"specs": [add_spec(0)]}).to_string(),
        ("PATCH", _) => json!({"options": {"priority": 5}}).to_string(),
        ("POST", p) if p.ends_with("/retry") && p.starts_with("/v1/batches") => {
            json!({"states": ["cancelled"]}).to_string()
        }
        _ => String::new(),
    }
}

#[tokio::test]
async fn without_a_valid_token_every_v1_endpoint_answers_401_and_the_probes_need_none() {
    let env = TestEnv::new().await;
    let d = dispatcher(&env).await;
    let created = store_batch(&env.store, json!({"specs": [add_spec(0)]})).await;
    let (batch_id, job_id) = (created.batch_id.to_string(), created.job_ids[0].to_string());
    let routes = v1_routes();
    assert!(routes.len() >= 12, "{routes:?}");
    // The route table is what the router is built from; the OpenAPI
    // document is written separately, from the handlers' annotations. Every
    // `/v1` operation the document names is in the table, so none escapes below.
    let tabled: std::collections::BTreeSet<(String, String)> = routes
        .iter()
        .map(|r| (r.method.to_string(), r.path.replace("{*", "{")))
        .collect();
    let documented: std::collections::BTreeSet<(String, String)> = kiln::http::openapi::document()["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| path.starts_with("/v1"))
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|key| {
                    ["get", "put", "post", "delete", "options", "head", "patch", "trace"].contains(&key.as_str())
                })
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    assert_eq!(documented, tabled, "the documented /v1 operations are the router's");

    let unknown = format!("Bearer kiln_{}", "0".repeat(64));
    for route in &routes {
        let url = format!("{}{}", d.url, path_of(route, &batch_id, &job_id));
        for authorization in [
            None,
            Some(unknown.as_str()),
            Some("Basic dXNlcjpwYXNz"),
            Some("Bearer "),
        ] {
            let (status, body, headers) = send(&route.method, &url, authorization, &body_for(route)).await;
            assert_eq!(status, 401, "{} {url} with {authorization:?}: {body}", route.method);
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
            assert_eq!(headers["www-authenticate"], "Bearer");
        }
    }
    assert_eq!(env.count("batches").await, 1, "a refused request wrote a batch");
    let (status, ..) = send(&Method::POST, &format!("{}/v1/jobs/{job_id}/cancel", d.url), None, "").await;
    assert_eq!(status, 401);
    assert_eq!(env.store.job(created.job_ids[0]).await.unwrap().state, "queued");

    for probe in ["/healthz", "/readyz", "/metrics"] {
        let response = reqwest::get(format!("{}{probe}", d.url)).await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{probe}");
    }
    d.stop().await;
}

#[tokio::test]
async fn a_read_only_token_reads_everything_and_every_change_is_403() {
    let env = TestEnv::new().await;
    let d = dispatcher(&env).await;
    let created = store_batch(&env.store, json!({"specs": [add_spec(0)]})).await;
    let (batch_id, job_id) = (created.batch_id.to_string(), created.job_ids[0].to_string());
    let bearer = format!("Bearer {}", env.token(Scope::Read).await);

    for route in v1_routes() {
        let url = format!("{}{}", d.url, path_of(&route, &batch_id, &job_id));
        let (status, body, _) = send(&route.method, &url, Some(&bearer), &body_for(&route)).await;
        // Decided here, not read from the route table, so that a route
        // declared with too small a scope fails this test.
        if route.method == Method::GET {
            // The job has no result yet: its artifacts and files are 404.
            let expected = if route.path.contains("/artifacts") || route.path.contains("/files/") {
                404
            } else {
                200
            };
            assert_eq!(status, expected, "{} {url}: {body}", route.method);
        } else {
            assert_eq!(status, 403, "{} {url}: {body}", route.method);
            assert_eq!(body["error"]["code"], "forbidden");
            assert!(
                body["error"]["message"].as_str().unwrap().contains("scope is read"),
                "{body}"
            );
        }
    }
    assert_eq!(env.count("batches").await, 1, "a read token created a batch");
    assert_eq!(env.store.job(created.job_ids[0]).await.unwrap().state, "queued");
    d.stop().await;
}

#[tokio::test]
async fn submit_and_admin_tokens_can_submit_change_cancel_and_retry() {
    let env = TestEnv::new().await;
    let d = dispatcher(&env).await;
    for scope in [Scope::Submit, Scope::Admin] {
        let token = env.token(scope).await;
        let client = JsonClient::with_token(&d.url, &token).unwrap();
        let created = client
            .submit(&json!({"specs": [add_spec(0), add_spec(1)]}), None)
            .await
            .unwrap();
        let batch_id = created["batch_id"].as_str().unwrap();
        let job_id = created["job_ids"][0].as_str().unwrap();

        let (status, body, _) = send(
            &Method::PATCH,
            &format!("{}/v1/batches/{batch_id}", d.url),
            Some(&format!("Bearer {token}")),
            &json!({"options": {"priority": 7}}).to_string(),
        )
        .await;
        assert_eq!(
            (status, &body["options"]["priority"]),
            (200, &json!(7)),
            "{scope}: {body}"
        );
        assert_eq!(client.cancel_job(job_id).await.unwrap()["cancelled"], 1, "{scope}");
        assert_eq!(client.retry_job(job_id).await.unwrap()["requeued"], 1, "{scope}");
        assert_eq!(client.cancel_batch(batch_id).await.unwrap()["cancelled"], 2, "{scope}");
        let retried = client.retry_batch(batch_id, &["cancelled".to_owned()]).await.unwrap();
        assert_eq!(retried["requeued"], 2, "{scope}");
        assert_eq!(client.batch(batch_id).await.unwrap()["counts"]["queued"], 2, "{scope}");
    }
    d.stop().await;
}

#[tokio::test]
async fn a_batch_records_the_token_that_created_it() {
    let env = TestEnv::new().await;
    let d = dispatcher(&env).await;
    let issued = kiln::auth::issue(&env.store, Scope::Submit, Some("nightly ci"))
        .await
        .unwrap();
    let client = JsonClient::with_token(&d.url, &issued.token).unwrap();
    let created = client.submit(&json!({"specs": [add_spec(0)]}), None).await.unwrap();
    let batch = client.batch(created["batch_id"].as_str().unwrap()).await.unwrap();
    assert_eq!(
        batch["created_by"],
        json!({"token_id": issued.record.id, "name": "nightly ci"}),
        "{batch}"
    );
    d.stop().await;

    // Without authentication nobody is recorded.
    let open = Dispatcher::start(&env.settings(NO_LLM, &[("KILN_AUTH", "off")])).await;
    let created = open
        .client
        .submit(&json!({"specs": [add_spec(1)]}), None)
        .await
        .unwrap();
    let batch = open.client.batch(created["batch_id"].as_str().unwrap()).await.unwrap();
    assert!(batch["created_by"].is_null(), "{batch}");
    open.stop().await;
}

#[tokio::test]
async fn a_revoked_token_is_refused_within_the_cache_lifetime() {
    let env = TestEnv::new().await;
    let d = dispatcher(&env).await;
    let issued = kiln::auth::issue(&env.store, Scope::Submit, None).await.unwrap();
    let client = JsonClient::with_token(&d.url, &issued.token).unwrap();
    let created = client.submit(&json!({"specs": [add_spec(0)]}), None).await.unwrap();
    let batch_id = created["batch_id"].as_str().unwrap();
    client.batch(batch_id).await.unwrap();

    let revoked_at = Instant::now();
    env.store.revoke_token(issued.record.id).await.unwrap();
    let refused = loop {
        match client.batch(batch_id).await {
            Ok(_) => {
                assert!(
                    revoked_at.elapsed() < REVOCATION_DEADLINE,
                    "still accepted {:?} after revocation",
                    revoked_at.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => break e,
        }
    };
    assert!(refused.to_string().starts_with("HTTP 401 unauthorized"), "{refused}");
    d.stop().await;
}

#[tokio::test]
async fn auth_off_on_a_non_loopback_address_refuses_to_start() {
    let env = TestEnv::new().await;
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let settings = env.settings(NO_LLM, &[("KILN_AUTH", "off"), ("KILN_HTTP_ADDR", addr)]);
        let Err(e) = kiln::dispatcher::Dispatcher::build(&settings).await else {
            panic!("the dispatcher started with KILN_AUTH=off on {addr}");
        };
        let message = e.to_string();
        assert!(message.contains("KILN_AUTH=off") && message.contains(addr), "{message}");
    }

    // The binary says so and exits.
    let output = tokio::process::Command::new(bin("kiln-dispatcher"))
        .envs(env.vars(NO_LLM, &[("KILN_AUTH", "off"), ("KILN_HTTP_ADDR", "0.0.0.0:0")]))
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("the dispatcher exits")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("KILN_AUTH=off") && stderr.contains("KILN_HTTP_ADDR is 0.0.0.0:0"),
        "{stderr}"
    );
}

/// Runs `kiln-dispatcher token ARGS` in the test's database.
async fn token_command(env: &TestEnv, args: &[&str]) -> std::process::Output {
    let output = tokio::process::Command::new(bin("kiln-dispatcher"))
        .arg("token")
        .args(args)
        .envs(env.vars(NO_LLM, &[]))
        .output();
    tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("the token command exits without serving")
        .unwrap()
}

#[tokio::test]
async fn token_create_prints_a_token_that_works_and_the_database_holds_only_its_hash() {
    let env = TestEnv::new().await;
    let out = token_command(&env, &["create", "--scope", "read", "--name", "dashboard"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} in {stdout}"))
            .to_owned()
    };
    let (id, token) = (field("id"), field("token"));
    assert_eq!(field("scope"), "read");
    assert!(token.starts_with("kiln_") && token.len() == 69, "{token}");

    // Postgres has the hash, and the token appears nowhere in the table.
    let (stored, hits): (String, i64) = sqlx::query_as(
        "SELECT (SELECT token_sha256 FROM api_tokens WHERE id = $1::uuid), \
                (SELECT count(*) FROM api_tokens t WHERE row_to_json(t)::text LIKE '%' || $2 || '%')",
    )
    .bind(&id)
    .bind(&token)
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!(stored, kiln::auth::hash(&token));
    assert_eq!(hits, 0);

    // The printed token reads but cannot submit.
    let d = dispatcher(&env).await;
    let created = store_batch(&env.store, json!({"specs": [add_spec(0)]})).await;
    let client = JsonClient::with_token(&d.url, &token).unwrap();
    client.batch(&created.batch_id.to_string()).await.unwrap();
    let refused = client.submit(&json!({"specs": [add_spec(1)]}), None).await.unwrap_err();
    assert!(refused.to_string().starts_with("HTTP 403 forbidden"), "{refused}");

    // `token revoke` ends it; `token list` shows it revoked.
    let out = token_command(&env, &["revoke", &id]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = token_command(&env, &["list"]).await;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&id) && listed.contains("revoked"), "{listed}");
    assert!(!listed.contains(&token), "{listed}");
    let revoked_at = Instant::now();
    while client.batch(&created.batch_id.to_string()).await.is_ok() {
        assert!(revoked_at.elapsed() < REVOCATION_DEADLINE, "revoked token still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = token_command(&env, &["revoke", &uuid::Uuid::new_v4().to_string()]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token not found"));
    d.stop().await;
}

#[tokio::test]
async fn the_cli_with_kiln_token_submits_waits_and_downloads_end_to_end() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[("KILN_AUTH", "required")]);
    let d = Dispatcher::start(&settings).await;
    let w = InProcessWorker::start(&settings).await;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("auth-cli-{}", env.queue));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("add.json");
    std::fs::write(&spec, add_spec(3).to_string()).unwrap();
    let submit_token = env.token(Scope::Submit).await;
    let read_token = env.token(Scope::Read).await;

    let kiln = |token: Option<&str>, args: &[&str]| {
        let mut command = tokio::process::Command::new(bin("kiln"));
        command.env("KILN_URL", &d.url).env_remove("KILN_TOKEN").args(args);
        if let Some(t) = token {
            command.env("KILN_TOKEN", t);
        }
        async move {
            tokio::time::timeout(Duration::from_secs(120), command.output())
                .await
                .expect("kiln exits")
                .unwrap()
        }
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    let out = kiln(Some(&submit_token), &["submit", spec.to_str().unwrap(), "--wait"]).await;
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let stdout = text(&out.stdout);
    let batch_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("submitted batch "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_owned();
    let reader = JsonClient::with_token(&d.url, &read_token).unwrap();
    let batch = wait_for_batch(&reader, &batch_id, Duration::from_secs(5)).await;
    assert_eq!(batch["state"], "succeeded", "{batch}");

    let out = kiln(Some(&read_token), &["jobs", &batch_id]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let job_id = text(&out.stdout).split_whitespace().next().unwrap().to_owned();
    let files = dir.join("out");
    let out = kiln(Some(&read_token), &["download", &job_id, files.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        std::fs::read_to_string(files.join("solution.py"))
            .unwrap()
            .contains("def add_3"),
        "{}",
        text(&out.stdout)
    );

    let out = kiln(None, &["status", &batch_id]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("HTTP 401 unauthorized"),
        "{}",
        text(&out.stderr)
    );
    let out = kiln(Some(&read_token), &["submit", spec.to_str().unwrap()]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("HTTP 403 forbidden"),
        "{}",
        text(&out.stderr)
    );

    std::fs::remove_dir_all(&dir).unwrap();
    w.stop().await;
    d.stop().await;
}
