//! The operator's views of API v1 against real Postgres and Redis: the batch
//! listing (`GET /v1/batches`: newest first, cursor pages, filters), the live
//! workers (`GET /v1/workers`), and the error envelope on every error answer
//! (404 and 405 of unknown routes, malformed queries, 5xx that say nothing
//! internal).

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use kiln::auth::Scope;
use serde_json::{Value, json};
use support::{ADD_SCRIPT, Dispatcher, InProcessWorker, TestEnv, add_spec, mock, store_batch};

/// A dispatcher that asks for tokens, and a `read` token for it: every
/// listing is a read.
async fn start(env: &TestEnv) -> (Dispatcher, String) {
    let d = Dispatcher::start(&env.settings("http://127.0.0.1:9", &[("KILN_AUTH", "required")])).await;
    (d, env.token(Scope::Read).await)
}

async fn send(method: reqwest::Method, url: &str, token: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{url}: not JSON: {text:?}"));
    (status, headers, body)
}

async fn get(url: &str, token: &str) -> (u16, Value) {
    let (status, _, body) = send(reqwest::Method::GET, url, token).await;
    (status, body)
}

/// Ids of every batch the listing gives for `query`, following cursors
/// with pages of `limit`; also the number of pages.
async fn walk(d: &Dispatcher, token: &str, query: &str, limit: usize) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/batches?limit={limit}{query}", d.url);
        if let Some(c) = &cursor {
            url = format!("{url}&cursor={c}");
        }
        let (status, page) = get(&url, token).await;
        assert_eq!(status, 200, "{url}: {page}");
        pages += 1;
        let batches = page["batches"].as_array().unwrap();
        assert!(batches.len() <= limit, "{page}");
        ids.extend(batches.iter().map(|b| b["batch_id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return (ids, pages),
        }
        assert!(pages < 100, "the listing never ends");
    }
}

fn batch_body(name: &str, specs: usize) -> Value {
    json!({"name": name, "specs": (0..specs).map(add_spec).collect::<Vec<_>>()})
}

#[tokio::test]
async fn batches_are_listed_newest_first_and_every_page_follows_the_cursor_without_gaps_or_repeats() {
    let env = TestEnv::new().await;
    let (d, token) = start(&env).await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(
            store_batch(&env.store, batch_body(&format!("nightly {i}"), 2))
                .await
                .batch_id
                .to_string(),
        );
    }
    created.reverse();
    for limit in [1, 3, 7, 50] {
        let (ids, pages) = walk(&d, &token, "", limit).await;
        assert_eq!(ids, created, "pages of {limit}");
        // A full last page still points past itself; the page after it is empty.
        assert_eq!(pages, 7 / limit + 1, "pages of {limit}");
    }
    // Each listed batch is what its own status shows.
    let (_, page) = get(&format!("{}/v1/batches", d.url), &token).await;
    for listed in page["batches"].as_array().unwrap() {
        let (_, status) = get(
            &format!("{}/v1/batches/{}", d.url, listed["batch_id"].as_str().unwrap()),
            &token,
        )
        .await;
        assert_eq!(listed, &status);
    }
    // A batch created while a client pages appears on no page it has not read yet.
    let (_, first) = get(&format!("{}/v1/batches?limit=3", d.url), &token).await;
    store_batch(&env.store, batch_body("late", 1)).await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = get(&format!("{}/v1/batches?limit=3&cursor={cursor}", d.url), &token).await;
    let second: Vec<&str> = second["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["batch_id"].as_str().unwrap())
        .collect();
    assert_eq!(second, created[3..6].iter().map(String::as_str).collect::<Vec<_>>());
    d.stop().await;
}

/// Sets the states of a batch's jobs straight in the database, as workers
/// and cancels would leave them.
async fn set_states(env: &TestEnv, batch_id: uuid::Uuid, states: &[&str]) {
    for (position, state) in states.iter().enumerate() {
        sqlx::query(
            "UPDATE jobs SET state = $3, finished_at = CASE WHEN $3 IN ('succeeded', 'failed', 'cancelled') THEN now() END
             WHERE batch_id = $1 AND position = $2",
        )
        .bind(batch_id)
        .bind(position as i32)
        .bind(state)
        .execute(env.store.pool())
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn the_batch_listing_filters_by_state_name_and_creation_time_as_each_batch_status_shows_it() {
    let env = TestEnv::new().await;
    let (d, token) = start(&env).await;
    // One batch in each state, plus one that is running only because a
    // job of it started and went back to the queue (run 2).
    let layouts: [(&str, &[&str]); 8] = [
        ("Alpha queued", &["queued", "queued"]),
        ("alpha running", &["running", "queued"]),
        ("beta succeeded", &["succeeded", "succeeded"]),
        ("beta failed", &["succeeded", "failed"]),
        ("gamma cancelled", &["succeeded", "cancelled"]),
        ("gamma failed and cancelled", &["failed", "cancelled"]),
        // Nothing left to run, one job awaits review: not finished.
        ("epsilon awaiting review", &["awaiting_review", "failed"]),
        // Still running, whatever awaits review.
        ("epsilon running", &["awaiting_review", "running"]),
    ];
    let mut ids = Vec::new();
    for (name, states) in layouts {
        let id = store_batch(&env.store, batch_body(name, states.len())).await.batch_id;
        set_states(&env, id, states).await;
        ids.push(id.to_string());
    }
    let requeued = store_batch(&env.store, batch_body("delta requeued", 1)).await.batch_id;
    sqlx::query("UPDATE jobs SET run = 2 WHERE batch_id = $1")
        .bind(requeued)
        .execute(env.store.pool())
        .await
        .unwrap();
    ids.push(requeued.to_string());

    for state in kiln::store::batches::BATCH_STATES {
        let (listed, _) = walk(&d, &token, &format!("&state={state}"), 2).await;
        let mut expected = Vec::new();
        for id in ids.iter().rev() {
            let (_, status) = get(&format!("{}/v1/batches/{id}", d.url), &token).await;
            if status["state"] == state {
                expected.push(id.clone());
            }
        }
        assert!(!expected.is_empty(), "no batch is {state}");
        assert_eq!(listed, expected, "state={state}");
    }
    let (running, _) = walk(&d, &token, "&state=running", 10).await;
    assert_eq!(
        running.iter().collect::<BTreeSet<_>>(),
        [&ids[1], &ids[7], &ids[8]].into_iter().collect::<BTreeSet<_>>()
    );

    // The name filter is a case-insensitive substring, combined with state.
    let (alpha, _) = walk(&d, &token, "&name=ALPHA", 10).await;
    assert_eq!(alpha, vec![ids[1].clone(), ids[0].clone()]);
    let (gamma_failed, _) = walk(&d, &token, "&name=gamma&state=failed", 10).await;
    assert_eq!(gamma_failed, vec![ids[5].clone()]);
    let (none, _) = walk(&d, &token, "&name=%25", 10).await;
    assert!(none.is_empty(), "% is a character, not a wildcard: {none:?}");

    // Creation range: at or after `created_after`, strictly before `created_before`.
    let (_, third) = get(&format!("{}/v1/batches/{}", d.url, ids[2]), &token).await;
    let at = third["created_at"].as_str().unwrap();
    let encoded = at.replace('+', "%2B");
    let (after, _) = walk(&d, &token, &format!("&created_after={encoded}"), 10).await;
    assert_eq!(after, ids[2..].iter().rev().cloned().collect::<Vec<_>>());
    let (before, _) = walk(&d, &token, &format!("&created_before={encoded}"), 10).await;
    assert_eq!(before, vec![ids[1].clone(), ids[0].clone()]);
    d.stop().await;
}

#[tokio::test]
async fn a_bad_listing_parameter_is_a_400_naming_it() {
    let env = TestEnv::new().await;
    let (d, token) = start(&env).await;
    for (query, field) in [
        ("state=done", "state"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("cursor=abc", "cursor"),
        ("created_after=yesterday", "created_after"),
        ("created_before=2026-13-01T00:00:00Z", "created_before"),
        ("name=a%00b", "name"),
    ] {
        let (status, body) = get(&format!("{}/v1/batches?{query}", d.url), &token).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().starts_with(field), "{body}");
    }
    d.stop().await;
}

#[tokio::test]
async fn the_workers_listing_shows_each_live_worker_with_its_slots_and_the_jobs_in_its_hands() {
    let env = TestEnv::new().await;
    // Answers take 3 s, so the jobs stay in the worker's hands a while.
    let slow = ADD_SCRIPT.replace("- name: add\n", "- name: add\n  latency_ms: 3000\n");
    let llm = mock(&slow).await;
    let settings = env.settings(
        &llm.base_url(),
        &[("KILN_AUTH", "required"), ("KILN_WORKER_CONCURRENCY", "3")],
    );
    let d = Dispatcher::start(&settings).await;
    let token = env.token(Scope::Read).await;
    let url = format!("{}/v1/workers", d.url);
    let (status, body) = get(&url, &token).await;
    assert_eq!((status, body.clone()), (200, json!({"workers": []})));

    let worker = InProcessWorker::start(&settings).await;
    let created = store_batch(&env.store, batch_body("slow", 5)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let (_, body) = get(&url, &token).await;
        if body["workers"][0]["slots_busy"] == 3 {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never held three jobs: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let workers = seen["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{seen}");
    let w = &workers[0];
    assert_eq!(w["concurrency"], 3, "{w}");
    assert!(w["lock_missing_since"].is_null(), "{w}");
    let jobs = w["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3, "{w}");
    let batch_jobs: BTreeSet<String> = created.job_ids.iter().map(ToString::to_string).collect();
    for job in jobs {
        assert_eq!(job["batch_id"], created.batch_id.to_string());
        assert!(batch_jobs.contains(job["job_id"].as_str().unwrap()), "{job}");
        // The job's own status names the same worker as its lease holder.
        let owner: String = sqlx::query_scalar("SELECT lease_owner FROM jobs WHERE id = $1::uuid")
            .bind(job["job_id"].as_str().unwrap())
            .fetch_one(env.store.pool())
            .await
            .unwrap();
        assert_eq!(w["worker_id"], owner);
    }

    // A worker that stopped is no longer listed.
    worker.stop().await;
    let (_, body) = get(&url, &token).await;
    assert_eq!(body, json!({"workers": []}));
    d.stop().await;
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_malformed_queries_answer_with_the_error_envelope() {
    let env = TestEnv::new().await;
    let (d, token) = start(&env).await;
    let job = store_batch(&env.store, batch_body("x", 1)).await.job_ids[0];
    for path in ["/nope", "/v1/nope", "/v1/jobs", &format!("/v1/jobs/{job}/nope")] {
        let (status, _, body) = send(reqwest::Method::GET, &format!("{}{path}", d.url), &token).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "{path}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(path), "{body}");
    }
    for (method, path, allowed) in [
        (reqwest::Method::DELETE, "/v1/batches".to_owned(), "GET,POST"),
        (reqwest::Method::PUT, format!("/v1/jobs/{job}"), "GET"),
        (reqwest::Method::GET, format!("/v1/jobs/{job}/retry"), "POST"),
        (reqwest::Method::POST, "/healthz".to_owned(), "GET"),
    ] {
        let (status, headers, body) = send(method.clone(), &format!("{}{path}", d.url), &token).await;
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
        let allow = headers["allow"].to_str().unwrap().replace(' ', "");
        let mut allow: Vec<&str> = allow.split(',').filter(|m| *m != "HEAD").collect();
        allow.sort_unstable();
        assert_eq!(allow.join(","), allowed, "{method} {path}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(method.as_str()),
            "{body}"
        );
    }
    let (status, body) = get(&format!("{}/v1/jobs/{job}/attempts?full=maybe", d.url), &token).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");
    assert!(body["error"]["message"].as_str().unwrap().contains("full"), "{body}");
    d.stop().await;
}

#[tokio::test]
async fn a_server_fault_is_a_5xx_whose_body_says_nothing_internal() {
    let env = TestEnv::new().await;
    let (d, token) = start(&env).await;
    let job = store_batch(&env.store, batch_body("x", 1)).await.job_ids[0];
    let (status, _) = get(&format!("{}/v1/jobs/{job}", d.url), &token).await;
    assert_eq!(status, 200);
    // The database goes away under the running dispatcher.
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", support::postgres_base()))
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", env.db_name))
        .execute(&admin)
        .await
        .unwrap();
    for path in [
        format!("/v1/jobs/{job}"),
        "/v1/batches".to_owned(),
        "/v1/workers".to_owned(),
        "/readyz".to_owned(),
    ] {
        // The token is remembered for 2 s; after that even the token check
        // needs the database. Both must say nothing internal.
        for _ in 0..2 {
            let (status, body) = get(&format!("{}{path}", d.url), &token).await;
            assert!((500..600).contains(&status), "{path}: {status} {body}");
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or_else(|| panic!("{path}: {body}"));
            let code = body["error"]["code"].as_str().unwrap();
            assert!(["unavailable", "internal"].contains(&code), "{body}");
            let text = body.to_string();
            for secret in [env.db_name.as_str(), "postgres://", "sqlx", "5432", "database \\\""] {
                assert!(!text.contains(secret), "{path} tells {secret:?}: {text}");
            }
            assert!(!message.is_empty());
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
    d.stop().await;
}
