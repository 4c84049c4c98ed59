//! A typed client of the HTTP API v1, used by the `kiln` CLI and the demo,
//! plus loading spec files (JSON or YAML; a file or a directory). Every
//! answer is read into its view ([`crate::views`]), the type the dispatcher
//! serialised it from.
//!
//! With a token ([`Client::with_token`]; the CLI reads `KILN_TOKEN`) every
//! request carries `Authorization: Bearer <token>`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::domain::ReviewDecision;
use crate::views::{
    AttemptView, BatchPage, BatchReport, BatchView, Cancelled, CreatedBatch, ErrorBody, JobPage, JobSummary, JobView,
    Rejudged, Requeued, WorkerList,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the dispatcher at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("HTTP {status} {code}: {message}")]
    Api { status: u16, code: String, message: String },
    #[error("the API token cannot be sent in an HTTP header (it should look like kiln_ and 64 hex digits)")]
    BadToken,
    #[error("{path}: {message}")]
    SpecFile { path: PathBuf, message: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Filters of [`Client::batches`] (`GET /v1/batches`).
#[derive(Debug, Clone, Default)]
pub struct BatchListQuery {
    pub state: Option<String>,
    pub name: Option<String>,
    /// RFC 3339.
    pub created_after: Option<String>,
    /// RFC 3339.
    pub created_before: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client that sends no token (for a dispatcher with `KILN_AUTH=off`).
    pub fn new(base: &str) -> Client {
        Client::build(base, reqwest::header::HeaderMap::new())
    }

    /// A client that authenticates every request with `token`.
    pub fn with_token(base: &str, token: &str) -> Result<Client, ClientError> {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| ClientError::BadToken)?;
        // Keeps the token out of reqwest's debug output.
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        Ok(Client::build(base, headers))
    }

    fn build(base: &str, headers: reqwest::header::HeaderMap) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_mins(2))
                .default_headers(headers)
                .build()
                .expect("a default HTTP client builds"),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            message: crate::telemetry::error_chain(&e),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        // A proxy in front of the dispatcher may answer without our body.
        let (code, message) = match response.json::<ErrorBody>().await {
            Ok(body) => (body.error.code, body.error.message),
            Err(_) => ("unknown".to_owned(), "(no message)".to_owned()),
        };
        Err(ClientError::Api { status, code, message })
    }

    async fn json<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T, ClientError> {
        let response = self.send(request).await?;
        response.json().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            message: format!("unreadable answer: {e}"),
        })
    }

    /// `POST /v1/batches`. The body stays JSON: it is a spec file's content
    /// as written (see [`load_batch`]), which the dispatcher validates.
    pub async fn submit(&self, batch: &Value, idempotency_key: Option<&str>) -> Result<CreatedBatch, ClientError> {
        let mut request = self.http.post(format!("{}/v1/batches", self.base)).json(batch);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        self.json(request).await
    }

    pub async fn batch(&self, id: &str) -> Result<BatchView, ClientError> {
        self.json(self.http.get(format!("{}/v1/batches/{id}", self.base))).await
    }

    /// `GET /v1/batches/{id}/report`.
    pub async fn report(&self, id: &str) -> Result<BatchReport, ClientError> {
        self.json(self.http.get(format!("{}/v1/batches/{id}/report", self.base)))
            .await
    }

    /// Every job of a batch (following cursors), optionally of one state.
    pub async fn all_jobs(&self, id: &str, state: Option<&str>) -> Result<Vec<JobSummary>, ClientError> {
        let mut jobs = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query = vec![("limit", "1000".to_owned())];
            if let Some(s) = state {
                query.push(("state", s.to_owned()));
            }
            if let Some(c) = &cursor {
                query.push(("cursor", c.clone()));
            }
            let page: JobPage = self
                .json(
                    self.http
                        .get(format!("{}/v1/batches/{id}/jobs", self.base))
                        .query(&query),
                )
                .await?;
            jobs.extend(page.jobs);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(jobs),
            }
        }
    }

    /// Up to `limit` batches matching `query`, newest first (following
    /// cursors).
    pub async fn batches(&self, query: &BatchListQuery, limit: usize) -> Result<Vec<BatchView>, ClientError> {
        let mut batches = Vec::new();
        let mut cursor: Option<String> = None;
        while batches.len() < limit {
            let page_size = (limit - batches.len()).min(1000);
            let mut params = vec![("limit", page_size.to_string())];
            for (key, value) in [
                ("state", &query.state),
                ("name", &query.name),
                ("created_after", &query.created_after),
                ("created_before", &query.created_before),
            ] {
                if let Some(v) = value {
                    params.push((key, v.clone()));
                }
            }
            if let Some(c) = &cursor {
                params.push(("cursor", c.clone()));
            }
            let page: BatchPage = self
                .json(self.http.get(format!("{}/v1/batches", self.base)).query(&params))
                .await?;
            batches.extend(page.batches);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        batches.truncate(limit);
        Ok(batches)
    }

    /// `GET /v1/workers`.
    pub async fn workers(&self) -> Result<WorkerList, ClientError> {
        self.json(self.http.get(format!("{}/v1/workers", self.base))).await
    }

    pub async fn job(&self, id: &str) -> Result<JobView, ClientError> {
        self.json(self.http.get(format!("{}/v1/jobs/{id}", self.base))).await
    }

    pub async fn attempts(&self, id: &str) -> Result<Vec<AttemptView>, ClientError> {
        self.json(self.http.get(format!("{}/v1/jobs/{id}/attempts", self.base)))
            .await
    }

    pub async fn retry_batch(&self, id: &str, states: &[String]) -> Result<Requeued, ClientError> {
        self.json(
            self.http
                .post(format!("{}/v1/batches/{id}/retry", self.base))
                .json(&json!({ "states": states })),
        )
        .await
    }

    pub async fn retry_job(&self, id: &str) -> Result<Requeued, ClientError> {
        self.json(self.http.post(format!("{}/v1/jobs/{id}/retry", self.base)))
            .await
    }

    pub async fn rejudge_batch(&self, id: &str, states: &[String]) -> Result<Rejudged, ClientError> {
        self.json(
            self.http
                .post(format!("{}/v1/batches/{id}/rejudge", self.base))
                .json(&json!({ "states": states })),
        )
        .await
    }

    pub async fn rejudge_job(&self, id: &str) -> Result<Rejudged, ClientError> {
        self.json(self.http.post(format!("{}/v1/jobs/{id}/rejudge", self.base)))
            .await
    }

    pub async fn cancel_batch(&self, id: &str) -> Result<Cancelled, ClientError> {
        self.json(self.http.post(format!("{}/v1/batches/{id}/cancel", self.base)))
            .await
    }

    pub async fn cancel_job(&self, id: &str) -> Result<Cancelled, ClientError> {
        self.json(self.http.post(format!("{}/v1/jobs/{id}/cancel", self.base)))
            .await
    }

    /// `POST /v1/jobs/{id}/review`: the job as the decision left it.
    pub async fn review(
        &self,
        id: &str,
        decision: ReviewDecision,
        comment: Option<&str>,
    ) -> Result<JobView, ClientError> {
        let mut body = json!({ "decision": decision });
        if let Some(c) = comment {
            body["comment"] = c.into();
        }
        self.json(self.http.post(format!("{}/v1/jobs/{id}/review", self.base)).json(&body))
            .await
    }

    /// `GET /v1/jobs/{id}/artifacts` with `query`: a tar.gz of files.
    async fn archive(&self, id: &str, query: &[(&str, String)]) -> Result<Vec<u8>, ClientError> {
        let request = self
            .http
            .get(format!("{}/v1/jobs/{id}/artifacts", self.base))
            .query(query);
        let bytes = self
            .send(request)
            .await?
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                message: e.to_string(),
            })?;
        Ok(bytes.to_vec())
    }

    /// The files of attempt `attempt` of a job's run `run` (default: its
    /// current run) as `(path, text)`, by path. Text that is not UTF-8 is
    /// read lossily; paths the API leaves out of archives (`../x`) are
    /// not among them.
    pub async fn attempt_files(
        &self,
        id: &str,
        run: Option<i32>,
        attempt: i32,
    ) -> Result<Vec<(String, String)>, ClientError> {
        let mut query = vec![("attempt", attempt.to_string())];
        if let Some(r) = run {
            query.push(("run", r.to_string()));
        }
        let bytes = self.archive(id, &query).await?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let mut files = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.to_string_lossy().into_owned();
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content)?;
            files.push((path, String::from_utf8_lossy(&content).into_owned()));
        }
        files.sort();
        Ok(files)
    }

    /// Downloads a job's result files and unpacks them into `dir`.
    pub async fn download(&self, id: &str, dir: &Path) -> Result<Vec<PathBuf>, ClientError> {
        let bytes = self.archive(id, &[]).await?;
        std::fs::create_dir_all(dir)?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let mut written = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.into_owned();
            // `unpack_in` refuses paths that would land outside `dir`.
            if entry.unpack_in(dir)? {
                written.push(dir.join(path));
            }
        }
        Ok(written)
    }
}

/// Reads specs from a file or a directory of files (`.json`, `.yaml`,
/// `.yml`, sorted by name) into a batch body. A file may hold one spec, a
/// list of specs, or a batch object (`{"name"?, "specs", "options"?}`).
pub fn load_batch(path: &Path) -> Result<Value, ClientError> {
    let mut batch = BatchParts::default();
    for file in spec_files(path)? {
        let text = std::fs::read_to_string(&file)?;
        let value = parse_spec_file(&text, SpecFormat::of_path(&file)).map_err(|e| ClientError::SpecFile {
            path: file.clone(),
            message: e.message,
        })?;
        batch.absorb(value, &file)?;
    }
    Ok(batch.into_body())
}

/// The spec files `path` stands for: itself, or a directory's `.json`,
/// `.yaml` and `.yml` files sorted by name (not its subdirectories).
pub fn spec_files(path: &Path) -> Result<Vec<PathBuf>, ClientError> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ClientError::SpecFile {
            path: path.to_owned(),
            message: "no .json, .yaml or .yml files in this directory".into(),
        });
    }
    Ok(files)
}

/// Reads one spec file's text that came without a name (`kiln submit -`
/// reads standard input): JSON when it starts with `{` or `[`, else YAML.
/// `source` names it in errors.
pub fn parse_batch_text(text: &str, source: &str) -> Result<Value, ClientError> {
    let path = PathBuf::from(source);
    let value = parse_spec_file(text, SpecFormat::of_text(text)).map_err(|e| ClientError::SpecFile {
        path: path.clone(),
        message: e.message,
    })?;
    let mut batch = BatchParts::default();
    batch.absorb(value, &path)?;
    Ok(batch.into_body())
}

/// How a spec file's text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecFormat {
    Json,
    Yaml,
}

impl SpecFormat {
    /// By the file's extension: `.json` is JSON, anything else YAML.
    pub fn of_path(path: &Path) -> SpecFormat {
        if path.extension().is_some_and(|e| e == "json") {
            SpecFormat::Json
        } else {
            SpecFormat::Yaml
        }
    }

    /// For text without a name: JSON when it starts with `{` or `[`.
    pub fn of_text(text: &str) -> SpecFormat {
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            SpecFormat::Json
        } else {
            SpecFormat::Yaml
        }
    }
}

/// A spec file that is not well-formed JSON or YAML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    /// The parser's message (which ends with the position, when it has one).
    pub message: String,
    /// 1-based line and column of the fault, when the parser knows them.
    pub line: Option<usize>,
    pub column: Option<usize>,
}

/// Parses one spec file's text as `format`.
pub fn parse_spec_file(text: &str, format: SpecFormat) -> Result<Value, SyntaxError> {
    match format {
        SpecFormat::Json => serde_json::from_str(text).map_err(|e| SyntaxError {
            message: e.to_string(),
            // serde_json says line 0 for faults not tied to the text.
            line: (e.line() > 0).then(|| e.line()),
            column: (e.line() > 0).then(|| e.column()),
        }),
        SpecFormat::Yaml => serde_yaml_ng::from_str(text).map_err(|e| SyntaxError {
            message: e.to_string(),
            line: e.location().map(|l| l.line()),
            column: e.location().map(|l| l.column()),
        }),
    }
}

/// Where a file's specs sit in it, as [`BatchParts::absorb`] read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecsFrom {
    /// The file is a list of this many specs.
    List(usize),
    /// The file is a batch object with this many specs under `specs`.
    Batch(usize),
    /// The file is one spec.
    One,
}

/// A batch body gathered from one or more spec files.
#[derive(Debug, Default)]
pub struct BatchParts {
    specs: Vec<Value>,
    name: Option<Value>,
    options: Option<Value>,
}

impl BatchParts {
    /// Adds a file's content: one spec, a list of specs, or a batch object.
    /// `file` names it in errors.
    pub fn absorb(&mut self, value: Value, file: &Path) -> Result<SpecsFrom, ClientError> {
        match value {
            Value::Array(items) => {
                let n = items.len();
                self.specs.extend(items);
                Ok(SpecsFrom::List(n))
            }
            Value::Object(mut map) if map.contains_key("specs") => {
                let Some(Value::Array(items)) = map.remove("specs") else {
                    return Err(ClientError::SpecFile {
                        path: file.to_owned(),
                        message: "`specs` must be a list".into(),
                    });
                };
                if let Some(o) = map.remove("options") {
                    if self.options.is_some() {
                        return Err(ClientError::SpecFile {
                            path: file.to_owned(),
                            message: "options are given in more than one file".into(),
                        });
                    }
                    self.options = Some(o);
                }
                if let Some(n) = map.remove("name") {
                    self.name.get_or_insert(n);
                }
                let n = items.len();
                self.specs.extend(items);
                Ok(SpecsFrom::Batch(n))
            }
            spec @ Value::Object(_) => {
                self.specs.push(spec);
                Ok(SpecsFrom::One)
            }
            _ => Err(ClientError::SpecFile {
                path: file.to_owned(),
                message: "expected a spec, a list of specs or a batch object".into(),
            }),
        }
    }

    /// The request body: `{"specs", "name"?, "options"?}`.
    pub fn into_body(self) -> Value {
        let mut batch = json!({ "specs": self.specs });
        if let Some(n) = self.name {
            batch["name"] = n;
        }
        if let Some(o) = self.options {
            batch["options"] = o;
        }
        batch
    }
}
