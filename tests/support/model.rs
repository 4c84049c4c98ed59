//! A real local model server for tests: llama-cpp-python's OpenAI-compatible
//! server with SmolLM2-135M-Instruct, both installed by
//! `scripts/ensure-model` (which `scripts/test` runs; it is run here too
//! when the test is started on its own, and is quick once built).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The model's name as the server serves it (`--model_alias`).
pub const MODEL: &str = "smollm2-135m";

/// A running model server, killed when dropped.
pub struct ModelServer {
    child: Child,
    pub base_url: String,
    pub log: PathBuf,
}

/// `(python, gguf)`: from `KILN_TEST_MODEL_PYTHON` / `KILN_TEST_MODEL_GGUF`
/// when `scripts/test` exported them, else from `scripts/ensure-model`.
fn installed() -> (String, String) {
    if let (Ok(python), Ok(gguf)) = (
        std::env::var("KILN_TEST_MODEL_PYTHON"),
        std::env::var("KILN_TEST_MODEL_GGUF"),
    ) {
        return (python, gguf);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/ensure-model"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/ensure-model runs");
    assert!(out.status.success(), "scripts/ensure-model failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("scripts/ensure-model printed no {name}: {text}"))
            .to_owned()
    };
    (value("KILN_TEST_MODEL_PYTHON"), value("KILN_TEST_MODEL_GGUF"))
}

impl ModelServer {
    /// Starts the server on a free port and waits until it answers.
    pub async fn start() -> ModelServer {
        let (python, gguf) = installed();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("model-server-{port}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(python)
            .args(["-m", "llama_cpp.server", "--model", &gguf, "--model_alias", MODEL])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            // The model's training context: repair prompts carry the spec,
            // the previous answer and its diagnostics.
            .args(["--n_ctx", "8192", "--n_threads", "2", "--verbose", "false"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("the model server starts");
        let mut server = ModelServer {
            child,
            base_url: format!("http://127.0.0.1:{port}/v1"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(format!("{}/models", server.base_url)).send().await
                && r.status().is_success()
            {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "the model server exited ({status}): {}",
                    std::fs::read_to_string(&server.log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "the model server did not answer in 120 s");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
