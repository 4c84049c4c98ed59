//! The web dashboard in a real headless browser (Debian's chromium, driven
//! through chromedriver's WebDriver protocol) on a live stack: a dispatcher
//! that asks for tokens, a worker and a scripted model. It signs in with
//! `/?token=T` (and checks the token left the address bar), lists the
//! batch, opens it (pass rate per attempt, failure reasons by code), opens
//! the repaired job (attempt 1's diagnostics, attempt 2 passed, the changes
//! between them), opens the failed job (its test cases, expected vs got)
//! and retries it from the
//! page, lists the workers, and signs in through the form; and on a review
//! batch, shows the jobs awaiting review and decides them with the job
//! page's Approve and Reject buttons. Screenshots of each page land in
//! `target/screenshots/` (CI keeps them as artifacts).
//!
//! Without chromium and chromium-driver the test fails, saying how to
//! install them: it never passes by skipping.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use kiln::auth::Scope;
use serde_json::{Value, json};
use support::{ADD_SCRIPT, Dispatcher, InProcessWorker, TestEnv, add_spec, mock, wait_for_batch};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// `fix_N`: a first answer that does not parse, then a correct one (a
/// repaired job). `wrong_N`: a function that fails its tests, every time.
const SCRIPTS: &str = r#"
- name: fix
  match: "`(?P<name>fix_\\d+)`"
  responses:
    - files:
        - path: solution.py
          content: "def {name}(a, b)\n    return a +\n"
    - files:
        - path: solution.py
          content: "def {name}(a: int, b: int) -> int:\n    \"\"\"Return a + b.\"\"\"\n    return a + b\n"
- name: wrong
  match: "`(?P<name>wrong_\\d+)`"
  responses:
    - files:
        - path: solution.py
          content: "def {name}(a: int, b: int) -> int:\n    \"\"\"Return a - b.\"\"\"\n    return a - b\n"
"#;

fn spec_named(name: &str) -> Value {
    let mut spec = add_spec(0);
    spec["entry_point"] = json!(name);
    spec
}

/// The id in a WebDriver element reference.
fn element_id(found: &Value, css: &str) -> String {
    found["element-6066-11e4-a52e-4f735466cecf"]
        .as_str()
        .unwrap_or_else(|| panic!("{css}: no element in {found}"))
        .to_owned()
}

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
    http: reqwest::Client,
    session: String,
    shots: PathBuf,
}

impl Driver {
    async fn start() -> Driver {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the dashboard test needs a real browser; install it with \
                 `apt-get install -y chromium chromium-driver` (.ci/run does) — package {package}"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{url}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                // Root (as in CI) needs --no-sandbox.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1000"]
            }
        }}});
        let answer: Value = http
            .post(format!("{url}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromium did not start a session: {answer}"))
            .to_owned();
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap()
            .join("screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Driver {
            child,
            url,
            http,
            session,
            shots,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.url, self.session);
        let mut request = self.http.request(method, &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        assert!(
            !answer["value"]["error"].is_string(),
            "WebDriver {path}: {}",
            answer["value"]
        );
        answer["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn js(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// The text of the first element matching `css`, or null.
    async fn text(&self, css: &str) -> Value {
        self.js(&format!(
            "const e = document.querySelector({}); return e ? e.innerText : null;",
            json!(css)
        ))
        .await
    }

    /// Waits until the element matching `css` shows all of `needles`.
    async fn wait_text(&self, css: &str, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(text) = self.text(css).await.as_str()
                && needles.iter().all(|n| text.contains(n))
            {
                return text.to_owned();
            }
            if Instant::now() > deadline {
                let page = self.js("return document.body.innerText").await;
                panic!(
                    "{css} never showed {needles:?}; the page shows:\n{}",
                    page.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element matching `css` as a user would (WebDriver's click).
    async fn click(&self, css: &str) {
        // The page redraws every few seconds; a redraw between finding and
        // clicking makes the element stale, so find it again then.
        for _ in 0..5 {
            let found = self
                .call(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            let id = element_id(&found, css);
            let url = format!("{}/session/{}/element/{id}/click", self.url, self.session);
            let answer: Value = self
                .http
                .post(&url)
                .json(&json!({}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            match answer["value"]["error"].as_str() {
                None => return,
                Some("stale element reference") => {}
                Some(other) => panic!("clicking {css}: {other}: {}", answer["value"]),
            }
        }
        panic!("{css} kept going stale");
    }

    async fn type_into(&self, css: &str, text: &str) {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = element_id(&found, css);
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) {
        // Whatever the page shows, it shows no JavaScript placeholders.
        let text = self.js("return document.body.innerText").await;
        let text = text.as_str().unwrap();
        assert!(
            !text.contains("undefined") && !text.contains("NaN") && !text.lines().any(|l| l.trim() == "null"),
            "{name} shows a placeholder:\n{text}"
        );
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(self.shots.join(format!("dashboard-{name}.png")), bytes).unwrap();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Ends the browser with the session, then the driver.
        let url = format!("{}/session/{}", self.url, self.session);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let _ = reqwest::Client::new().delete(url).send().await;
            });
        })
        .join();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A batch with a succeeded, a repaired and a failed job, run to its end,
/// and a cancelled one in a batch of its own. Returns the first batch's id
/// and its jobs' ids.
async fn submit_batches(client: &support::JsonClient) -> (String, Vec<String>) {
    let created = client
        .submit(
            &json!({"name": "browser batch", "specs": [add_spec(1), spec_named("fix_2"), spec_named("wrong_3")],
                    "options": {"max_attempts": 2}}),
            None,
        )
        .await
        .unwrap();
    let batch = created["batch_id"].as_str().unwrap().to_owned();
    let jobs: Vec<String> = support::job_ids(&created);
    let cancelled = client
        .submit(&json!({"name": "cancelled batch", "specs": [add_spec(4)]}), None)
        .await
        .unwrap();
    client
        .cancel_batch(cancelled["batch_id"].as_str().unwrap())
        .await
        .unwrap();
    let ended = wait_for_batch(client, &batch, Duration::from_secs(120)).await;
    assert_eq!(ended["counts"]["succeeded"], 2, "{ended}");
    assert_eq!(ended["counts"]["failed"], 1, "{ended}");
    (batch, jobs)
}

/// Signing in through the address lists the batches; the token then
/// leaves the address for the session's storage.
async fn sign_in_through_the_address(browser: &Driver, url: &str, token: &str) {
    browser.goto(&format!("{url}/?token={token}")).await;
    let listed = browser
        .wait_text("#batches", &["browser batch", "cancelled batch", "failed", "cancelled"])
        .await;
    assert!(listed.contains("67%"), "pass rate of 2 of 3: {listed}");
    let address = browser.js("return location.href").await;
    assert!(
        !address.as_str().unwrap().contains("token"),
        "the token stayed in the address: {address}"
    );
    assert_eq!(
        browser.js("return sessionStorage.getItem('kiln.token')").await,
        json!(token)
    );
    browser.screenshot("1-batches").await;
}

/// The page's retry button reaches the API (the job's run becomes 2), and
/// the page shows the new run.
async fn retry_from_the_page(browser: &Driver, client: &support::JsonClient, job_id: &str) {
    browser.click("button[data-action='retry']").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = client.job(job_id).await.unwrap();
        if job["run"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page's retry never reached the API: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.wait_text("#main", &["run 2"]).await;
}

/// The page's re-judge button reaches the API (a run 2 replays attempt 2's
/// answer), and the page shows the replay naming its source.
async fn rejudge_from_the_page(browser: &Driver, client: &support::JsonClient, job_id: &str) {
    browser.click("button[data-action='rejudge']").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = client.job(job_id).await.unwrap();
        if job["run"] == 2 && job["state"] == "succeeded" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page's re-judge never reached the API or never ended: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser
        .wait_text(
            "[data-attempt='2.1']",
            &["re-judged the stored answer of run 1 · attempt 2", "passed"],
        )
        .await;
}

/// Without a token the page asks for one; a wrong one is refused; the
/// right one signs in.
async fn sign_in_through_the_form(browser: &Driver, url: &str, token: &str) {
    browser.js("sessionStorage.clear(); return null").await;
    browser.goto(&format!("{url}/")).await;
    browser.wait_text("#signin", &["Sign in"]).await;
    browser.type_into("#token", "kiln_wrong").await;
    browser.click("#signin button[type='submit']").await;
    browser.wait_text("#signin", &["refused"]).await;
    browser.screenshot("6-sign-in").await;
    browser.type_into("#token", token).await;
    browser.click("#signin button[type='submit']").await;
    browser.wait_text("#batches", &["browser batch"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser_lists_the_batch_explains_the_failures_and_retries_and_rejudges_a_job() {
    let env = TestEnv::new().await;
    let llm = mock(&format!("{ADD_SCRIPT}{SCRIPTS}")).await;
    let settings = env.settings(&llm.base_url(), &[("KILN_AUTH", "required")]);
    let d = Dispatcher::start(&settings).await;
    let worker = InProcessWorker::start(&settings).await;
    let token = env.token(Scope::Submit).await;
    let client = support::JsonClient::with_token(&d.url, &token).unwrap();

    let (batch, jobs) = submit_batches(&client).await;
    let (fixed, wrong) = (&jobs[1], &jobs[2]);

    // The page needs no token (it holds no data).
    let page = reqwest::get(format!("{}/", d.url)).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );

    let browser = Driver::start().await;

    sign_in_through_the_address(&browser, &d.url, &token).await;

    // The batch: jobs by state, failure reasons by code.
    browser.click(&format!("a[href='#/batches/{batch}']")).await;
    let reasons = browser.wait_text("#reasons", &["tests_failed", "wrong_3"]).await;
    assert!(reasons.contains('1'), "{reasons}");
    browser
        .wait_text("#jobs", &["add_1", "fix_2", "wrong_3", "succeeded", "failed"])
        .await;
    // Its report: attempt 1 passed 1 of 3 jobs, attempt 2 1 of the other
    // 2, so 2 of 3 had passed by then.
    browser.wait_text("#pass-rates", &["33.3%", "50.0%", "66.7%"]).await;
    browser
        .wait_text("#per-success", &["per success", "tokens", "sandbox", "python-syntax"])
        .await;
    browser.screenshot("2-batch").await;

    // The repaired job: attempt 1's diagnostics with file:line:col, attempt 2 passed.
    browser.click(&format!("a[href='#/jobs/{fixed}']")).await;
    let first = browser
        .wait_text("[data-attempt='1.1']", &["Diagnostics", "solution.py:1:"])
        .await;
    assert!(first.contains("[python-syntax]") || first.contains("python"), "{first}");
    browser
        .wait_text("[data-attempt='1.2']", &["passed", "Tests: 3 of 3 passed"])
        .await;
    // The changes from attempt 1 to attempt 2, loaded when opened: the
    // line that did not parse became one that does.
    browser.click("[data-attempt='1.2'] details.diff summary").await;
    browser
        .wait_text(
            "[data-attempt='1.2'] details.diff",
            &[
                "solution.py (changed)",
                "- def fix_2(a, b)",
                "+ def fix_2(a: int, b: int) -> int:",
            ],
        )
        .await;
    browser.screenshot("3-repaired-job").await;
    rejudge_from_the_page(&browser, &client, fixed).await;

    // The failed job: its failing cases, expected vs got; retried from the page.
    browser.goto(&format!("{}/#/jobs/{wrong}", d.url)).await;
    let cases = browser.wait_text("[data-attempt='1.2'] .cases", &["failed"]).await;
    assert!(
        cases.contains('3') && cases.contains("-1"),
        "expected 3, got -1: {cases}"
    );
    browser.screenshot("4-failed-job").await;
    retry_from_the_page(&browser, &client, wrong).await;

    // The workers, with the jobs in their hands.
    browser.click("header a[href='#/workers']").await;
    let workers = client.workers().await.unwrap();
    let worker_id = workers["workers"][0]["worker_id"].as_str().unwrap().to_owned();
    browser.wait_text("#workers", &[&worker_id, "/16"]).await;
    browser.screenshot("5-workers").await;

    sign_in_through_the_form(&browser, &d.url, &token).await;

    drop(browser);
    worker.stop().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_jobs_awaiting_review_and_its_approve_and_reject_buttons_decide_them() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[("KILN_AUTH", "required")]);
    let d = Dispatcher::start(&settings).await;
    let worker = InProcessWorker::start(&settings).await;
    // Review decisions are an admin's.
    let token = env.token(Scope::Admin).await;
    let client = support::JsonClient::with_token(&d.url, &token).unwrap();
    let created = client
        .submit(
            &json!({"name": "review batch", "specs": [add_spec(1), add_spec(2)], "options": {"review": true}}),
            None,
        )
        .await
        .unwrap();
    let batch = created["batch_id"].as_str().unwrap().to_owned();
    let jobs: Vec<String> = support::job_ids(&created);
    let deadline = Instant::now() + Duration::from_secs(120);
    while client.batch(&batch).await.unwrap()["counts"]["awaiting_review"] != 2 {
        assert!(Instant::now() < deadline, "the jobs never awaited review");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let browser = Driver::start().await;
    browser.goto(&format!("{}/?token={token}", d.url)).await;
    browser
        .wait_text("#batches", &["review batch", "awaiting_review"])
        .await;
    browser.goto(&format!("{}/#/batches/{batch}", d.url)).await;
    browser.wait_text(".cards", &["awaiting review"]).await;
    browser.wait_text("#jobs", &["add_1", "add_2", "awaiting_review"]).await;
    browser.screenshot("7-review-batch").await;

    // Rejected with a comment from the job's page.
    browser.goto(&format!("{}/#/jobs/{}", d.url, jobs[0])).await;
    browser.wait_text("#review", &["awaits your review"]).await;
    browser.screenshot("8-job-awaiting-review").await;
    browser.type_into("#review-comment", "prefer a docstring").await;
    browser.click("button[data-action='reject']").await;
    browser
        .wait_text("#main", &["rejected_in_review: prefer a docstring"])
        .await;
    browser
        .wait_text("#reviews", &["reject", "prefer a docstring", "test admin"])
        .await;
    let job = client.job(&jobs[0]).await.unwrap();
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"]["message"], "prefer a docstring", "{job}");

    // Approved from the other job's page: the batch then ends.
    browser.goto(&format!("{}/#/jobs/{}", d.url, jobs[1])).await;
    browser.wait_text("#review", &["awaits your review"]).await;
    browser.click("button[data-action='approve']").await;
    browser.wait_text("#reviews", &["approve"]).await;
    assert_eq!(client.job(&jobs[1]).await.unwrap()["state"], "succeeded");
    let ended = wait_for_batch(&client, &batch, Duration::from_secs(10)).await;
    assert_eq!(ended["state"], "failed", "{ended}");
    browser.screenshot("9-job-approved").await;

    drop(browser);
    worker.stop().await;
    d.stop().await;
}
