//! A seeded fuzz of the HTTP API against a live dispatcher: at least 10,000
//! generated requests (every field of a batch replaced by values of every
//! type, NUL and invalid UTF-8, extreme numbers, deep nesting, odd
//! `Idempotency-Key`s, every route of the router with odd ids and query
//! strings, slow and truncated bodies). Asserts every request answered, no
//! 5xx, no request left hanging, no row written by a rejected request, and
//! the dispatcher still healthy at the end; prints the answers per route
//! and status. A second test sends the same kind of requests with generated
//! `Authorization` headers to a dispatcher that asks for tokens.
//! `KILN_FUZZ_SEED` replays a run.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::{Dispatcher, TestEnv, add_spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REQUESTS: usize = 10_000;
const RAW_CONNECTIONS: usize = 60;

/// Raw JSON number literals no `serde_json::Value` can hold as written.
const NUMBERS: [&str; 22] = [
    "0",
    "-0",
    "-1",
    "1.5",
    "1e300",
    "-1e300",
    "1e-400",
    "1e400",
    "2147483648",
    "-2147483649",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "1000000000001",
    "123456789012345678901234567890123456789012345678901234567890",
    "0.1",
    "3",
    "901",
    "1001",
];

fn string(rng: &mut StdRng) -> Value {
    let s = match rng.random_range(0..12) {
        0 => String::new(),
        1 => "\0".to_owned(),
        2 => format!("a\0{}", "b".repeat(rng.random_range(0..50))),
        3 => "x".repeat(rng.random_range(100..300_000)),
        4 => "\u{202E}evil\u{2066}".to_owned(),
        5 => "line\nbreak\r\t".to_owned(),
        6 => "GET".to_owned(),
        7 => "/path with spaces".to_owned(),
        8 => "def f(:\n".to_owned(),
        9 => "😀\u{FFFF}\u{10FFFF}".to_owned(),
        10 => "function".to_owned(),
        _ => "add_0".to_owned(),
    };
    Value::String(s)
}

/// A random value; numbers are placeholders replaced by raw literals.
fn value(rng: &mut StdRng, depth: usize) -> Value {
    match rng.random_range(0..9) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 | 3 => json!(format!("__NUM{}__", rng.random_range(0..NUMBERS.len()))),
        4 | 5 => string(rng),
        6 if depth < 3 => Value::Array((0..rng.random_range(0..4)).map(|_| value(rng, depth + 1)).collect()),
        7 if depth < 3 => {
            let mut map = serde_json::Map::new();
            for _ in 0..rng.random_range(0..4) {
                let key = match string(rng) {
                    Value::String(s) => s.chars().take(20).collect(),
                    _ => unreachable!(),
                };
                map.insert(key, value(rng, depth + 1));
            }
            Value::Object(map)
        }
        _ => json!(rng.random_range(-5_i64..5)),
    }
}

/// A batch the API accepts, with every field a batch can have present in
/// some of them, so that each one is a place a mutation can land.
fn valid_batch(rng: &mut StdRng) -> Value {
    let mut specs: Vec<Value> = (0..rng.random_range(1..4)).map(add_spec).collect();
    if rng.random_bool(0.5) {
        specs[0]["prompt"] = json!("def add_0(a: int, b: int) -> int:\n    \"\"\"Sum.\"\"\"\n");
        specs[0]["input_types"] = json!({"a": "int", "b": "int"});
        specs[0]["output_type"] = json!("int");
        specs[0]["constraints"] = json!(["no imports"]);
        specs[0]["test_code"] = json!("from solution import add_0\n\n\ndef test_add():\n    assert add_0(1, 2) == 3\n");
    }
    if rng.random_bool(0.3) {
        specs.push(
            json!({"kind": "service", "service_name": "notes", "description": "Notes.",
            "endpoints": [{"method": "GET", "path": "/notes", "description": "list"}],
            "database_tables": [{"name": "notes", "columns": ["id"]}],
            "external_apis": [{"name": "mail"}], "authentication": {"kind": "none"},
            "rate_limiting": {"per_minute": 60}, "caching": {"ttl_s": 5}}),
        );
    }
    let mut options = json!({"max_attempts": 2, "budget_tokens": 1000, "cache": true, "priority": 5,
                             "timeout_s": 30});
    // One model, or a ladder of them; not both.
    if rng.random_bool(0.5) {
        options["model"] = json!("m");
    } else {
        options["models"] = json!(["m", "n"]);
    }
    json!({"name": "fuzz", "specs": specs, "options": options})
}

/// Every place a value can go in a batch body: (parent path, key or index).
fn slots(v: &Value, at: &mut Vec<Vec<PathPart>>, prefix: &[PathPart]) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let mut p = prefix.to_vec();
                p.push(PathPart::Key(k.clone()));
                at.push(p.clone());
                slots(child, at, &p);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let mut p = prefix.to_vec();
                p.push(PathPart::Index(i));
                at.push(p.clone());
                slots(child, at, &p);
            }
        }
        _ => {}
    }
}

#[derive(Clone)]
enum PathPart {
    Key(String),
    Index(usize),
}

/// The value at `path`, unless an earlier mutation replaced a parent.
fn slot<'v>(root: &'v mut Value, path: &[PathPart]) -> Option<&'v mut Value> {
    path.iter().try_fold(root, |v, part| match part {
        PathPart::Key(k) => v.get_mut(k.as_str()),
        PathPart::Index(i) => v.get_mut(*i),
    })
}

/// The JSON text of a value, placeholders replaced by raw number literals.
fn render(v: &Value) -> Vec<u8> {
    let mut text = v.to_string();
    for (i, n) in NUMBERS.iter().enumerate().rev() {
        text = text.replace(&format!("\"__NUM{i}__\""), n);
    }
    text.into_bytes()
}

/// A mutated batch body.
fn batch_body(rng: &mut StdRng) -> Vec<u8> {
    let mut body = valid_batch(rng);
    let mut all = Vec::new();
    slots(&body, &mut all, &[]);
    let mutations = match rng.random_range(0..10) {
        0 => 0,
        1..=6 => 1,
        _ => rng.random_range(2..5),
    };
    for _ in 0..mutations {
        let path = &all[rng.random_range(0..all.len())];
        let replacement = value(rng, 0);
        if let Some(target) = slot(&mut body, path) {
            *target = replacement;
        }
    }
    if rng.random_bool(0.05) {
        body["unexpected"] = value(rng, 0);
    }
    let mut bytes = render(&body);
    match rng.random_range(0..40) {
        // Invalid UTF-8 inside a string.
        0 => {
            if let Some(at) = bytes.iter().position(|b| *b == b'"') {
                bytes.insert(at + 1, 0xff);
                bytes.insert(at + 2, 0xc3);
            }
        }
        // A raw NUL byte, truncated JSON, a lone surrogate escape.
        1 => bytes.insert(bytes.len() / 2, 0),
        2 => bytes.truncate(bytes.len() / 2),
        3 => bytes = br#"{"name": "\ud800", "specs": []}"#.to_vec(),
        // Nesting past the JSON parser's depth limit.
        4 => {
            let depth = rng.random_range(100..2_000);
            bytes = format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
        }
        _ => {}
    }
    bytes
}

fn odd_id(rng: &mut StdRng, known: &[String]) -> String {
    match rng.random_range(0..6) {
        0 if !known.is_empty() => known[rng.random_range(0..known.len())].clone(),
        1 => "not-a-uuid".to_owned(),
        2 => "%00".to_owned(),
        3 => "%FF%FE".to_owned(),
        4 => uuid::Uuid::new_v4().to_string(),
        _ => "x".repeat(rng.random_range(1..3000)),
    }
}

fn odd_query(rng: &mut StdRng) -> String {
    let names = [
        "limit",
        "cursor",
        "state",
        "full",
        "run",
        "attempt",
        "name",
        "created_after",
        "created_before",
    ];
    let values = [
        "0",
        "-1",
        "1001",
        "9223372036854775808",
        "%00",
        "abc",
        "true",
        "1",
        "queued",
        "%FF",
        "1e300",
        "",
        "2026-01-31T12:00:00Z",
        "9999-12-31T23:59:59%2B99:00",
        "%C3%28",
        "a%00b",
    ];
    (0..rng.random_range(0..4))
        .map(|_| {
            format!(
                "{}={}",
                names[rng.random_range(0..names.len())],
                values[rng.random_range(0..values.len())]
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// An `Idempotency-Key` header for a batch, or none: valid keys (repeated,
/// so some are replays or conflicts), empty, too long, and bytes beyond
/// ASCII.
fn idempotency_key(rng: &mut StdRng) -> Option<Vec<u8>> {
    match rng.random_range(0..20) {
        0 | 1 => Some(format!("key-{}", rng.random_range(0..5)).into_bytes()),
        2 => Some(Vec::new()),
        3 => Some("k".repeat(rng.random_range(150..400)).into_bytes()),
        4 => Some(vec![b'k', 0xff, 0xfe, b' ', b'\t']),
        _ => None,
    }
}

/// The routes of API v1 the generated requests reach, in `request`'s
/// order; checked against the router's own list.
const FUZZED_ROUTES: [(&str, &str); 18] = [
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches/{id}"),
    ("PATCH", "/v1/batches/{id}"),
    ("GET", "/v1/batches/{id}/jobs"),
    ("POST", "/v1/batches/{id}/retry"),
    ("POST", "/v1/batches/{id}/cancel"),
    ("GET", "/v1/jobs/{id}"),
    ("GET", "/v1/jobs/{id}/attempts"),
    ("GET", "/v1/jobs/{id}/artifacts"),
    ("GET", "/v1/jobs/{id}/files/{*path}"),
    ("POST", "/v1/jobs/{id}/cancel"),
    ("POST", "/v1/jobs/{id}/retry"),
    ("GET", "/v1/batches"),
    ("GET", "/v1/workers"),
    ("POST", "/v1/batches/{id}/rejudge"),
    ("POST", "/v1/jobs/{id}/rejudge"),
    ("GET", "/v1/batches/{id}/report"),
    ("POST", "/v1/jobs/{id}/review"),
];

/// One generated request.
struct Request {
    method: reqwest::Method,
    /// Path and query.
    path: String,
    body: Vec<u8>,
    idempotency_key: Option<Vec<u8>>,
    /// Index of its route in `FUZZED_ROUTES` (none for a method no route has).
    route: Option<usize>,
}

fn request(rng: &mut StdRng, known_batches: &[String], known_jobs: &[String]) -> Request {
    use reqwest::Method;
    let q = odd_query(rng);
    let b = odd_id(rng, known_batches);
    let j = odd_id(rng, known_jobs);
    let patch_body = json!({"options": {
        "budget_tokens": format!("__NUM{}__", rng.random_range(0..NUMBERS.len())),
        "priority": format!("__NUM{}__", rng.random_range(0..NUMBERS.len())),
    }});
    let arm = rng.random_range(0..28);
    let (method, path, body) = match arm {
        0..=9 => (Method::POST, "/v1/batches".into(), batch_body(rng)),
        10 => (Method::GET, format!("/v1/batches/{b}?{q}"), Vec::new()),
        11 => (Method::PATCH, format!("/v1/batches/{b}"), render(&patch_body)),
        12 => (Method::GET, format!("/v1/batches/{b}/jobs?{q}"), Vec::new()),
        13 => (
            Method::POST,
            format!("/v1/batches/{b}/retry"),
            render(&json!({"states": [if rng.random_bool(0.5) {
                json!(["failed", "cancelled", "succeeded", "queued"][rng.random_range(0..4)])
            } else {
                value(rng, 1)
            }]})),
        ),
        14 => (Method::POST, format!("/v1/batches/{b}/cancel"), render(&value(rng, 0))),
        15 => (Method::GET, format!("/v1/jobs/{j}?{q}"), Vec::new()),
        16 => (Method::GET, format!("/v1/jobs/{j}/attempts?{q}"), Vec::new()),
        17 => (Method::GET, format!("/v1/jobs/{j}/artifacts?{q}"), Vec::new()),
        18 => (Method::GET, format!("/v1/jobs/{j}/files/..%2F%00a.py?{q}"), Vec::new()),
        19 => (Method::POST, format!("/v1/jobs/{j}/cancel"), Vec::new()),
        20 => (Method::POST, format!("/v1/jobs/{j}/retry"), render(&value(rng, 0))),
        21 => (Method::GET, format!("/v1/batches?{q}"), Vec::new()),
        22 => (Method::GET, format!("/v1/workers?{q}"), Vec::new()),
        23 => (
            Method::POST,
            format!("/v1/batches/{b}/rejudge"),
            render(&json!({"states": [if rng.random_bool(0.5) {
                json!(["failed", "cancelled", "succeeded", "running"][rng.random_range(0..4)])
            } else {
                value(rng, 1)
            }]})),
        ),
        24 => (Method::POST, format!("/v1/jobs/{j}/rejudge"), render(&value(rng, 0))),
        25 => (Method::GET, format!("/v1/batches/{b}/report?{q}"), Vec::new()),
        26 => (
            Method::POST,
            format!("/v1/jobs/{j}/review"),
            render(&if rng.random_bool(0.5) {
                let decision = ["approve", "reject", "maybe"][rng.random_range(0..3)];
                json!({"decision": decision, "comment": value(rng, 0)})
            } else {
                value(rng, 1)
            }),
        ),
        // No route has this method.
        _ => (Method::DELETE, format!("/v1/batches/{b}"), render(&value(rng, 0))),
    };
    let route = match arm {
        0..=9 => Some(0),
        10..=26 => Some(arm - 9),
        _ => None,
    };
    let idempotency_key = if route == Some(0) { idempotency_key(rng) } else { None };
    Request {
        method,
        path,
        body,
        idempotency_key,
        route,
    }
}

/// A raw connection that sends part of a body and then stalls, or closes
/// its write side early. Returns the status line, if any answer came.
async fn raw_body(addr: &str, rng: &mut StdRng) -> Option<String> {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let promised = rng.random_range(10..100_000);
    let sent = "{\"specs\": [".to_owned();
    let head = format!(
        "POST /v1/batches HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {promised}\r\n\r\n{sent}"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    if rng.random_bool(0.5) {
        // Truncated: the client gives up on the body.
        let _ = conn.shutdown().await;
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), conn.read_to_end(&mut answer))
        .await
        .expect("a stalled body was not dropped")
        .ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().map(str::to_owned)
}

/// `KILN_FUZZ_SEED`, else the test's own seed.
fn seed(default: u64) -> u64 {
    std::env::var("KILN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The rows of batches and jobs, to compare before and after.
async fn rows(env: &TestEnv) -> (i64, i64) {
    (env.count("batches").await, env.count("jobs").await)
}

/// What the API answered, counted by `K`, and the batches it created.
struct Tally<K> {
    answers: Mutex<BTreeMap<K, usize>>,
    /// Batches the API created (a replay answers 201 with the same id): id → jobs.
    created: Mutex<HashMap<String, usize>>,
}

impl<K: Ord + Clone> Tally<K> {
    fn new() -> Self {
        Tally {
            answers: Mutex::new(BTreeMap::new()),
            created: Mutex::new(HashMap::new()),
        }
    }

    fn answered(&self, key: K) {
        *self.answers.lock().unwrap().entry(key).or_default() += 1;
    }

    fn created(&self, batch_id: String, jobs: usize) {
        self.created.lock().unwrap().insert(batch_id, jobs);
    }

    fn answers(&self) -> BTreeMap<K, usize> {
        self.answers.lock().unwrap().clone()
    }

    /// The rows the created batches account for: (batches, jobs).
    fn created_rows(&self) -> (i64, i64) {
        let created = self.created.lock().unwrap();
        (created.len() as i64, created.values().sum::<usize>() as i64)
    }
}

/// Sends a request built by `attempt`. A refused request's body is not
/// read, so the server closes that connection, and a pooled connection the
/// server closed as it was reused fails without the request being read:
/// such a failure is sent once more. A timeout is a hang, and is not retried.
async fn send<F, Fut>(attempt: F) -> reqwest::Result<reqwest::Response>
where
    F: Fn() -> Fut,
    Fut: Future<Output = reqwest::Result<reqwest::Response>>,
{
    match attempt().await {
        Err(e) if !e.is_timeout() => attempt().await,
        other => other,
    }
}

/// A route added to the API is fuzzed too, or this fails.
fn assert_every_route_is_fuzzed() {
    let fuzzed: HashSet<(String, String)> = FUZZED_ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let routed: HashSet<(String, String)> = kiln::http::v1_routes()
        .into_iter()
        .map(|r| (r.method.to_string(), r.path.to_owned()))
        .collect();
    assert_eq!(fuzzed, routed, "the fuzzed routes are the router's");
}

/// A couple of real batches, so ids that exist are fuzzed too: their ids
/// and their jobs' ids.
async fn real_batches(d: &Dispatcher) -> (Vec<String>, Vec<String>) {
    let mut batches = Vec::new();
    let mut jobs = Vec::new();
    for _ in 0..2 {
        let created = d.client.submit(&json!({"specs": [add_spec(0)]}), None).await.unwrap();
        batches.push(created["batch_id"].as_str().unwrap().to_owned());
        jobs.extend(
            created["job_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j.as_str().unwrap().to_owned()),
        );
    }
    (batches, jobs)
}

/// Sends the `i`th fuzzed request and tallies its answer; says what went
/// wrong if it got no answer or a 5xx.
async fn send_fuzzed(
    client: &reqwest::Client,
    base: &str,
    i: usize,
    r: Request,
    tally: &Tally<(Option<usize>, u16)>,
) -> Option<String> {
    let url = format!("{base}{}", r.path);
    let Request {
        method,
        path,
        body,
        idempotency_key,
        route,
    } = r;
    let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    let response = send(|| {
        let mut request = client
            .request(method.clone(), &url)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(key) = &idempotency_key {
            let key = reqwest::header::HeaderValue::from_bytes(key).expect("a header value");
            request = request.header("idempotency-key", key);
        }
        request.send()
    })
    .await;
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            let path = &path[..path.len().min(200)];
            return Some(format!("#{i} {method} {path}: no answer ({e:?}) for {shown}"));
        }
    };
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    tally.answered((route, status.as_u16()));
    if route == Some(0) && status.as_u16() == 201 {
        let v: Value = serde_json::from_str(&text).unwrap();
        let jobs = v["job_ids"].as_array().unwrap().len();
        tally.created(v["batch_id"].as_str().unwrap().to_owned(), jobs);
    }
    status
        .is_server_error()
        .then(|| format!("#{i} {method} {path} → {status} {text} for {shown}"))
}

/// Every route was reached often enough to mean something; prints the
/// answers per route and per status.
fn assert_every_route_was_reached(seed: u64, answers: &BTreeMap<(Option<usize>, u16), usize>) {
    let mut per_route = vec![(0, 0); FUZZED_ROUTES.len()];
    for ((route, status), n) in answers {
        if let Some(r) = route {
            per_route[*r].0 += n;
            if (200..300).contains(status) {
                per_route[*r].1 += n;
            }
        }
    }
    for ((method, path), (sent, accepted)) in FUZZED_ROUTES.iter().zip(&per_route) {
        eprintln!("{method} {path}: {sent} requests, {accepted} answered 2xx");
        assert!(
            *sent >= 100,
            "seed {seed}: {method} {path} was reached only {sent} times"
        );
    }
    let mut statuses = BTreeMap::<u16, usize>::new();
    for ((_, status), n) in answers {
        *statuses.entry(*status).or_default() += n;
    }
    let answered: usize = answers.values().sum();
    eprintln!("seed {seed}: {answered} requests answered, by status: {statuses:?}");
}

/// Slow and truncated bodies on raw connections: dropped, or answered
/// without a 5xx.
async fn assert_stalled_bodies_get_no_5xx(seed: u64, base: &str) {
    let addr = base.trim_start_matches("http://").to_owned();
    let raw: Vec<Option<String>> = futures::stream::iter(0..RAW_CONNECTIONS)
        .map(|i| {
            let addr = addr.clone();
            let mut rng = StdRng::seed_from_u64(seed ^ i as u64);
            async move { raw_body(&addr, &mut rng).await }
        })
        .buffer_unordered(RAW_CONNECTIONS)
        .collect()
        .await;
    for line in raw.iter().flatten() {
        assert!(!line.contains(" 5"), "seed {seed}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_fuzzed_requests_get_no_5xx_no_hang_and_write_nothing_when_rejected() {
    let seed = seed(0x6b69_6c6e);
    assert_every_route_is_fuzzed();
    let env = TestEnv::new().await;
    let d = Dispatcher::start(&env.settings(
        "http://127.0.0.1:9",
        &[("KILN_HTTP_BODY_TIMEOUT_S", "2"), ("KILN_MAX_BODY_MB", "1")],
    ))
    .await;
    let (batches, jobs) = real_batches(&d).await;
    let before = rows(&env).await;

    let mut rng = StdRng::seed_from_u64(seed);
    let requests: Vec<Request> = (0..REQUESTS).map(|_| request(&mut rng, &batches, &jobs)).collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    // (route, status) of every answer.
    let tally = Tally::new();
    let failures: Vec<String> = futures::stream::iter(requests.into_iter().enumerate())
        .map(|(i, r)| send_fuzzed(&client, &d.url, i, r, &tally))
        .buffer_unordered(16)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "seed {seed}: {} failures, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let answers = tally.answers();
    let answered: usize = answers.values().sum();
    assert_eq!(answered, REQUESTS, "seed {seed}: every request was answered");
    assert_every_route_was_reached(seed, &answers);
    assert_stalled_bodies_get_no_5xx(seed, &d.url).await;

    let after = rows(&env).await;
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        tally.created_rows(),
        "seed {seed}: rows written beyond the accepted requests"
    );
    let health = reqwest::get(format!("{}/healthz", d.url)).await.unwrap();
    assert_eq!(health.status(), 200, "the dispatcher is alive");
    d.stop().await;
}

/// Who an `Authorization` header claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Claim {
    /// No header, a malformed one, or a token that is unknown or revoked.
    Nobody,
    Read,
    Submit,
}

/// A generated `Authorization` header (raw bytes) and who it claims to be.
fn authorization(rng: &mut StdRng, read: &str, submit: &str, revoked: &str) -> (Option<Vec<u8>>, Claim) {
    let hex: String = (0..64)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).expect("a hex digit"))
        .collect();
    let (value, claim) = match rng.random_range(0..16) {
        0 => (None, Claim::Nobody),
        1 => (Some(format!("Bearer kiln_{hex}")), Claim::Nobody),
        2 => (Some(format!("Bearer kiln_{}", &hex[1..])), Claim::Nobody),
        3 => (
            Some(format!("Bearer {}", "k".repeat(rng.random_range(1..20_000)))),
            Claim::Nobody,
        ),
        4 => (Some(format!("Bearer {revoked}")), Claim::Nobody),
        5 => (Some(format!("Basic {read}")), Claim::Nobody),
        6 => (Some(format!("Bearer{read}")), Claim::Nobody),
        7 => (Some("Bearer ".to_owned()), Claim::Nobody),
        8 => (Some(format!("Bearer {read}x")), Claim::Nobody),
        9 => {
            let mut bytes = format!("Bearer {read}").into_bytes();
            bytes.insert(rng.random_range(7..bytes.len()), 0xff);
            return (Some(bytes), Claim::Nobody);
        }
        10 | 11 => (Some(format!("Bearer {read}")), Claim::Read),
        12 => (Some(format!("bearer   {read} ")), Claim::Read),
        _ => (Some(format!("Bearer {submit}")), Claim::Submit),
    };
    (value.map(String::into_bytes), claim)
}

/// The statuses a request may get for who it claims to be, when that
/// alone decides (`None`: the route's own answer, never 401 or 403).
fn statuses_for(claim: Claim, route: Option<usize>, method: &reqwest::Method) -> Option<&'static [u16]> {
    // Routes only an admin may call (review decisions), by the router's table.
    let admin_only = route.is_some_and(|r| {
        let (m, p) = FUZZED_ROUTES[r];
        kiln::http::v1_routes()
            .iter()
            .any(|v| v.method.as_str() == m && v.path == p && v.scope == kiln::auth::Scope::Admin)
    });
    match (claim, route) {
        // No route has the method: the same 405 for everyone.
        (_, None) => Some(&[405]),
        (Claim::Nobody, Some(_)) => Some(&[401]),
        (Claim::Read, Some(_)) if *method != reqwest::Method::GET => Some(&[403]),
        (Claim::Submit, Some(_)) if admin_only => Some(&[403]),
        _ => None,
    }
}

/// Sends the `i`th request with its generated `Authorization` header and
/// tallies its answer; says what went wrong if it got no answer, a 5xx, or
/// a status its claim does not call for.
async fn send_with_token(
    client: &reqwest::Client,
    base: &str,
    i: usize,
    (r, header, claim): (Request, Option<Vec<u8>>, Claim),
    tally: &Tally<(Claim, u16)>,
) -> Option<String> {
    let url = format!("{base}{}", r.path);
    let shown: String = String::from_utf8_lossy(header.as_deref().unwrap_or_default())
        .chars()
        .take(80)
        .collect();
    let what = format!(
        "#{i} {} {} as {claim:?} ({shown:?})",
        r.method,
        &r.path[..r.path.len().min(120)]
    );
    let response = send(|| {
        let mut request = client
            .request(r.method.clone(), &url)
            .header("content-type", "application/json")
            .body(r.body.clone());
        if let Some(value) = &header {
            request = request.header(
                "authorization",
                reqwest::header::HeaderValue::from_bytes(value).expect("a header value"),
            );
        }
        request.send()
    })
    .await;
    let response = match response {
        Ok(response) => response,
        Err(e) => return Some(format!("{what}: no answer ({e})")),
    };
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    tally.answered((claim, status));
    if status == 201 {
        let v: Value = serde_json::from_str(&text).unwrap();
        let jobs = v["job_ids"].as_array().map_or(0, Vec::len);
        tally.created(v["batch_id"].as_str().unwrap_or_default().to_owned(), jobs);
    }
    let expected = statuses_for(claim, r.route, &r.method);
    let wrong = status >= 500
        || expected.is_some_and(|e| !e.contains(&status))
        || (expected.is_none() && (status == 401 || status == 403));
    wrong.then(|| format!("{what}: {status} {}", &text[..text.len().min(300)]))
}

/// The generated requests again, against a dispatcher that asks for
/// tokens, each with a generated `Authorization` header: no or a bad token
/// is 401 on every route, a read token's change is 403, and nothing but a
/// submit token's accepted batch writes a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_requests_with_fuzzed_tokens_get_401_or_403_by_scope_and_never_a_5xx() {
    const AUTH_REQUESTS: usize = 2_000;
    let seed = seed(0x6175_7468);
    let env = TestEnv::new().await;
    let d = Dispatcher::start(&env.settings(
        "http://127.0.0.1:9",
        &[
            ("KILN_AUTH", "required"),
            ("KILN_HTTP_BODY_TIMEOUT_S", "2"),
            ("KILN_MAX_BODY_MB", "1"),
        ],
    ))
    .await;
    let read = env.token(kiln::auth::Scope::Read).await;
    let submit = env.token(kiln::auth::Scope::Submit).await;
    let revoked = kiln::auth::issue(&env.store, kiln::auth::Scope::Admin, None)
        .await
        .unwrap();
    env.store.revoke_token(revoked.record.id).await.unwrap();
    let created = support::JsonClient::with_token(&d.url, &submit)
        .unwrap()
        .submit(&json!({"specs": [add_spec(0)]}), None)
        .await
        .unwrap();
    let batches = vec![created["batch_id"].as_str().unwrap().to_owned()];
    let jobs = vec![created["job_ids"][0].as_str().unwrap().to_owned()];
    let before = rows(&env).await;

    let mut rng = StdRng::seed_from_u64(seed);
    let requests: Vec<(Request, Option<Vec<u8>>, Claim)> = (0..AUTH_REQUESTS)
        .map(|_| {
            let r = request(&mut rng, &batches, &jobs);
            let (header, claim) = authorization(&mut rng, &read, &submit, &revoked.token);
            (r, header, claim)
        })
        .collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let tally = Tally::new();
    let failures: Vec<String> = futures::stream::iter(requests.into_iter().enumerate())
        .map(|(i, authorized)| send_with_token(&client, &d.url, i, authorized, &tally))
        .buffer_unordered(16)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "seed {seed}: {} failures, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let answers = tally.answers();
    eprintln!("seed {seed}: {AUTH_REQUESTS} requests, by claim and status: {answers:?}");
    assert_eq!(answers.values().sum::<usize>(), AUTH_REQUESTS);
    let after = rows(&env).await;
    let accepted = tally.created_rows();
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        accepted,
        "seed {seed}: rows written beyond a submit token's accepted batches"
    );
    assert!(accepted.0 > 0, "seed {seed}: no batch was accepted at all");
    d.stop().await;
}
