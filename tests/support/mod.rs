//! Shared set-up for integration tests: every test gets its own Postgres
//! database and its own queue namespace on the real local servers, a real
//! mock-LLM HTTP server, and real dispatchers and workers (in-process or as
//! processes of the built binaries).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::client::{Client, ClientError};
use kiln::config::Settings;
use kiln::store::Store;
use kiln_mock_llm::{MockServer, ScriptFile};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub fn postgres_base() -> String {
    std::env::var("KILN_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn redis_url() -> String {
    std::env::var("KILN_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn sandbox_runtime() -> String {
    std::env::var("KILN_SANDBOX_RUNTIME").unwrap_or_else(|_| "/opt/kiln/sandbox".into())
}

/// An isolated database and queue namespace, removed when dropped.
pub struct TestEnv {
    pub db_name: String,
    pub db_url: String,
    pub queue: String,
    pub store: Store,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("kiln_test_{}", &id[..12]);
        let db_url = format!("{}/{db_name}", postgres_base());
        let store = Store::connect(&db_url, 8).await.expect("test database");
        TestEnv {
            db_name,
            db_url,
            queue: format!("kiln-test-{}", &id[..12]),
            store,
        }
    }

    /// The `KILN_…` variables of a process in this environment. The
    /// dispatcher listens on loopback without asking for tokens
    /// (`KILN_AUTH=off`) unless a test asks for `required`.
    pub fn vars(&self, llm_base_url: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = [
            ("KILN_DATABASE_URL", self.db_url.as_str()),
            ("KILN_REDIS_URL", &redis_url()),
            ("KILN_QUEUE", &self.queue),
            ("KILN_HTTP_ADDR", "127.0.0.1:0"),
            ("KILN_AUTH", "off"),
            ("KILN_LLM_BASE_URL", llm_base_url),
            ("KILN_LLM_MODEL", "mock-model"),
            ("KILN_SANDBOX_RUNTIME", &sandbox_runtime()),
            ("KILN_LEASE_TTL_S", "10"),
            ("KILN_FEEDER_TICK_MS", "100"),
            ("KILN_LLM_BACKOFF_MS", "50"),
            ("KILN_LLM_BACKOFF_MAX_MS", "500"),
            ("KILN_SANDBOX_BACKOFF_MS", "50"),
            ("KILN_SANDBOX_BACKOFF_MAX_MS", "500"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in extra {
            vars.retain(|(name, _)| name != k);
            vars.push(((*k).to_owned(), (*v).to_owned()));
        }
        vars
    }

    pub fn settings(&self, llm_base_url: &str, extra: &[(&str, &str)]) -> Settings {
        Settings::from_vars(self.vars(llm_base_url, extra)).expect("test settings")
    }

    /// A new API token of `scope` in this environment's database.
    pub async fn token(&self, scope: kiln::auth::Scope) -> String {
        kiln::auth::issue(&self.store, scope, Some(&format!("test {scope}")))
            .await
            .expect("token issued")
            .token
    }

    pub async fn count(&self, table: &str) -> i64 {
        // Table names come from the tests themselves, not from input.
        sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(self.store.pool())
            .await
            .unwrap()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let db_name = self.db_name.clone();
        let queue = self.queue.clone();
        // Clean up on a private runtime (the test's may be blocked in this
        // drop), so a failing test still leaves nothing behind. The test's
        // own pool is not touched: FORCE ends its connections server-side.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(admin) = sqlx::PgPool::connect(&format!("{}/postgres", postgres_base())).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                }
                if let Ok(client) = redis::Client::open(redis_url())
                    && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("{queue}:*"))
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default();
                    if !keys.is_empty() {
                        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
                    }
                }
            });
        })
        .join();
    }
}

/// A mock LLM serving scripts given as YAML (a list of scripts).
pub async fn mock(yaml: &str) -> MockServer {
    let scripts: Vec<ScriptFile> = serde_yaml_ng::from_str(yaml).expect("test scripts parse");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    MockServer::start(listener, scripts).expect("mock starts")
}

/// A mock LLM serving the demo's scripted answers (`examples/mock-llm`).
pub async fn demo_mock() -> MockServer {
    let scripts = kiln_mock_llm::load_scripts(std::path::Path::new("examples/mock-llm")).expect("demo scripts load");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    MockServer::start(listener, scripts).expect("mock starts")
}

/// A dispatcher running in this process on a free port.
pub struct Dispatcher {
    pub url: String,
    pub client: JsonClient,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Dispatcher {
    pub async fn start(settings: &Settings) -> Dispatcher {
        let app = kiln::dispatcher::Dispatcher::build(settings)
            .await
            .expect("dispatcher builds");
        let url = format!("http://127.0.0.1:{}", app.port());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let handle = tokio::spawn(async move {
            app.run_until_stopped(stop).await.expect("dispatcher runs");
        });
        Dispatcher {
            client: JsonClient(Client::new(&url)),
            url,
            shutdown,
            handle,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.handle.await;
    }

    /// `GET /v1/jobs/{id}/attempts[?full=true]`.
    pub async fn attempts(&self, job_id: &str, full: bool) -> Vec<Value> {
        let url = format!("{}/v1/jobs/{job_id}/attempts?full={full}", self.url);
        reqwest::get(url).await.unwrap().json().await.unwrap()
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// The typed client (`kiln::client`) as the tests read it: every answer
/// is read into its view, so a field a test looks at must survive
/// `kiln::views`, then handed over as JSON, the API's wire shape that the
/// tests assert on.
#[derive(Debug, Clone)]
pub struct JsonClient(pub Client);

fn json(view: impl Serialize) -> Value {
    serde_json::to_value(view).expect("a view serialises")
}

impl JsonClient {
    pub fn new(base: &str) -> JsonClient {
        JsonClient(Client::new(base))
    }

    pub fn with_token(base: &str, token: &str) -> Result<JsonClient, ClientError> {
        Client::with_token(base, token).map(JsonClient)
    }

    pub async fn submit(&self, batch: &Value, idempotency_key: Option<&str>) -> Result<Value, ClientError> {
        self.0.submit(batch, idempotency_key).await.map(json)
    }

    pub async fn batch(&self, id: &str) -> Result<Value, ClientError> {
        self.0.batch(id).await.map(json)
    }

    pub async fn report(&self, id: &str) -> Result<Value, ClientError> {
        self.0.report(id).await.map(json)
    }

    pub async fn all_jobs(&self, id: &str, state: Option<&str>) -> Result<Vec<Value>, ClientError> {
        let jobs = self.0.all_jobs(id, state).await?;
        Ok(jobs.iter().map(json).collect())
    }

    pub async fn workers(&self) -> Result<Value, ClientError> {
        self.0.workers().await.map(json)
    }

    pub async fn job(&self, id: &str) -> Result<Value, ClientError> {
        self.0.job(id).await.map(json)
    }

    pub async fn retry_batch(&self, id: &str, states: &[String]) -> Result<Value, ClientError> {
        self.0.retry_batch(id, states).await.map(json)
    }

    pub async fn retry_job(&self, id: &str) -> Result<Value, ClientError> {
        self.0.retry_job(id).await.map(json)
    }

    pub async fn rejudge_job(&self, id: &str) -> Result<Value, ClientError> {
        self.0.rejudge_job(id).await.map(json)
    }

    pub async fn cancel_batch(&self, id: &str) -> Result<Value, ClientError> {
        self.0.cancel_batch(id).await.map(json)
    }

    pub async fn cancel_job(&self, id: &str) -> Result<Value, ClientError> {
        self.0.cancel_job(id).await.map(json)
    }

    pub async fn download(&self, id: &str, dir: &std::path::Path) -> Result<Vec<PathBuf>, ClientError> {
        self.0.download(id, dir).await
    }
}

/// Creates a batch straight in the store (no dispatcher), from a request body.
pub async fn store_batch(store: &Store, body: Value) -> kiln::views::CreatedBatch {
    let limits = kiln::spec::Limits {
        max_specs: 100_000,
        max_spec_bytes: 1_000_000,
    };
    let request = kiln::spec::BatchRequest::from_value(body, limits).unwrap();
    store
        .create_batch(kiln::store::batches::NewBatch {
            name: request.name.as_deref(),
            options: &request.options,
            specs: &request.specs,
            idempotency_key: None,
            request_sha256: "test",
            created_by: None,
        })
        .await
        .unwrap()
}

/// A worker running in this process (real Postgres, Redis, sandbox, HTTP LLM).
pub struct InProcessWorker {
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl InProcessWorker {
    pub async fn start(settings: &Settings) -> InProcessWorker {
        let worker = kiln::worker::Worker::build(settings).await.expect("worker builds");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(worker.run_until_stopped(shutdown.clone()));
        InProcessWorker { shutdown, handle }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.handle.await;
    }
}

/// A built binary of this workspace (`cargo build --workspace --bins` first).
/// The job ids of a `POST /v1/batches` answer, in the order of its specs.
pub fn job_ids(created: &Value) -> Vec<String> {
    created["job_ids"]
        .as_array()
        .expect("job_ids")
        .iter()
        .map(|j| j.as_str().expect("a job id").to_owned())
        .collect()
}

/// Runs the `kiln` CLI with `vars` set, `stdin` piped in (or none), and
/// waits for it.
pub fn run_kiln(vars: &[(&str, &str)], args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(bin("kiln"))
        .envs(vars.iter().copied())
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A child process killed when dropped; its stderr goes to `log`.
pub struct Proc(pub Child, pub PathBuf);

impl Proc {
    pub fn spawn(name: &str, vars: &[(String, String)]) -> Proc {
        let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let log_path = log_dir.join(format!("{name}-{}.log", uuid::Uuid::new_v4().simple()));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(bin(name))
            .env("KILN_LOG", "info")
            .envs(vars.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc(child, log_path)
    }

    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        self.0.wait().unwrap()
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls a batch until no job is queued or running.
pub async fn wait_for_batch(client: &JsonClient, batch_id: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let batch = client.batch(batch_id).await.expect("batch status");
        if batch["finished_at"].is_string() {
            return batch;
        }
        assert!(
            Instant::now() < deadline,
            "batch did not finish in {timeout:?}: {batch}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls until `check` holds.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn shared<T>(value: T) -> Arc<T> {
    Arc::new(value)
}

/// A function spec `add_{i}(a, b)` with test cases, answered by the
/// `add` mock script below.
pub fn add_spec(i: usize) -> Value {
    serde_json::json!({
        "kind": "function",
        "task_description": format!("Return the sum of a and b (variant {i})."),
        "entry_point": format!("add_{i}"),
        "test_cases": [
            {"input": [1, 2], "expected": 3},
            {"input": [-5, 5], "expected": 0},
            {"input": {"a": 10, "b": 32}, "expected": 42}
        ]
    })
}

/// Answers every `add_N` spec correctly on the first attempt.
pub const ADD_SCRIPT: &str = r#"
- name: add
  match: "`(?P<name>add_\\d+)`"
  responses:
    - files:
        - path: solution.py
          content: "def {name}(a: int, b: int) -> int:\n    \"\"\"Return a + b.\"\"\"\n    return a + b\n"
"#;
