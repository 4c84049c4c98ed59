//! The deployment files as written: `docker-compose.yml` gives the Kiln
//! roles the whole `.env` and the model key to workers only, every role runs
//! as the image's unprivileged user, and the `Dockerfile` caches the
//! dependencies, ends each runtime stage as that user and passes Kiln's own
//! checkers of model-written deployments.
//!
//! What the containers see is worked out as docker compose does: the
//! image's `ENV`, under `env_file`, under the service's `environment` with
//! `${...}` filled from `.env`; then loaded with [`Settings::from_vars`], the
//! function the binaries start with. Building and running the image is
//! `scripts/check-image` (too slow for the suite).

use std::collections::BTreeMap;
use std::path::Path;

use kiln::config::{AuthMode, SandboxKind, Settings};
use kiln::files::File;
use kiln::validate::dockerfile::{self, Instruction};
use secrecy::ExposeSecret;
use serde_yaml_ng::{Mapping, Value};

/// The image's `kiln` user, which every Kiln role runs as.
const IMAGE_USER: &str = "10001:10001";
/// The services that run Kiln's binaries.
const ROLES: [&str; 3] = ["dispatcher", "mock-llm", "worker"];
/// The stages whose image runs: where the binaries are installed.
const RUNTIME_STAGES: [&str; 2] = ["prebuilt", "runtime"];

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn compose() -> Value {
    let mut root: Value = serde_yaml_ng::from_str(&read("docker-compose.yml")).unwrap();
    root.apply_merge().unwrap();
    root
}

fn services(root: &Value) -> BTreeMap<String, Mapping> {
    root["services"]
        .as_mapping()
        .expect("services is a mapping")
        .iter()
        .map(|(name, service)| {
            let service = service.as_mapping().expect("a service is a mapping").clone();
            (name.as_str().unwrap().to_owned(), service)
        })
        .collect()
}

/// The services whose command is one of Kiln's binaries.
fn roles(services: &BTreeMap<String, Mapping>) -> BTreeMap<String, Mapping> {
    services
        .iter()
        .filter(|(_, s)| {
            s.get("command")
                .and_then(|c| c[0].as_str())
                .is_some_and(|program| program.starts_with("kiln-"))
        })
        .map(|(name, s)| (name.clone(), s.clone()))
        .collect()
}

/// The files of `env_file`, each with whether compose requires it.
fn env_files(service: &Mapping) -> Vec<(String, bool)> {
    let entry = |v: &Value| match v {
        Value::String(path) => (path.clone(), true),
        Value::Mapping(m) => (
            m["path"].as_str().unwrap().to_owned(),
            m.get("required").is_none_or(|r| r.as_bool().unwrap()),
        ),
        other => panic!("env_file entry {other:?}"),
    };
    match service.get("env_file") {
        None => Vec::new(),
        Some(Value::Sequence(files)) => files.iter().map(entry).collect(),
        Some(one) => vec![entry(one)],
    }
}

fn environment(service: &Mapping) -> BTreeMap<String, String> {
    let Some(env) = service.get("environment") else {
        return BTreeMap::new();
    };
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("environment value {other:?}"),
    };
    env.as_mapping()
        .expect("environment is written as a mapping")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), text(v)))
        .collect()
}

/// `KEY=value` lines of a `.env` file.
fn dotenv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("not KEY=value: {l}"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

/// Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}`, filled
/// from `vars`; `Err` with the error of a required variable left unset.
fn interpolate(value: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').expect("closed ${") + at;
        let expr = &rest[at + 2..end];
        let set = |name: &str| vars.get(name).filter(|v| !v.is_empty()).cloned();
        if let Some((name, default)) = expr.split_once(":-") {
            out.push_str(&set(name).unwrap_or_else(|| default.to_owned()));
        } else if let Some((name, error)) = expr.split_once(":?") {
            out.push_str(&set(name).ok_or_else(|| format!("{name}: {error}"))?);
        } else {
            out.push_str(&set(expr).unwrap_or_default());
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One stage of the Dockerfile: its name and instructions, `FROM` first.
struct Stage {
    name: String,
    instructions: Vec<Instruction>,
}

fn stages() -> Vec<Stage> {
    let (instructions, problems) = dockerfile::parse("Dockerfile", &read("Dockerfile"));
    assert!(problems.is_empty(), "{problems:?}");
    let mut stages: Vec<Stage> = Vec::new();
    for i in instructions {
        if i.keyword == "FROM" {
            let words: Vec<&str> = i.args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, r#as, name] if r#as.eq_ignore_ascii_case("as") => (*name).to_owned(),
                _ => String::new(),
            };
            stages.push(Stage {
                name,
                instructions: vec![i],
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push(i);
        }
    }
    stages
}

fn stage<'a>(stages: &'a [Stage], name: &str) -> &'a Stage {
    stages
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no stage {name}"))
}

/// `KEY=value` pairs of the `ENV` instructions of a stage.
fn image_env(stage: &Stage) -> BTreeMap<String, String> {
    stage
        .instructions
        .iter()
        .filter(|i| i.keyword == "ENV")
        .flat_map(|i| i.args.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("ENV KEY=value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// What a role's process finds in its environment with `env` as `.env`:
/// the image's `ENV`, then `env_file`, then `environment`, each over the
/// one before.
fn container_env(role: &Mapping, env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut vars = image_env(stage(&stages(), "base"));
    for (file, _) in env_files(role) {
        assert_eq!(file, ".env", "the roles read .env, which the caller gives");
        vars.extend(env.clone());
    }
    for (k, v) in environment(role) {
        vars.insert(k, interpolate(&v, env).unwrap());
    }
    vars
}

fn settings(vars: &BTreeMap<String, String>) -> Settings {
    Settings::from_vars(vars.clone()).unwrap_or_else(|e| panic!("{e}"))
}

/// `.env.example` as a user's `.env`, with the one line compose needs.
fn example_env() -> BTreeMap<String, String> {
    let mut env = dotenv(&read(".env.example"));
    env.insert("KILN_DOCKER_GID".into(), "998".into());
    env
}

#[test]
fn every_kiln_role_reads_the_whole_env_file_and_no_other_service_does() {
    let services = services(&compose());
    let roles = roles(&services);
    assert_eq!(roles.keys().map(String::as_str).collect::<Vec<_>>(), ROLES);
    for (name, service) in &services {
        let files = env_files(service);
        if roles.contains_key(name) {
            // Optional, so the stack runs on the mock model without a .env.
            assert_eq!(files, [(".env".to_owned(), false)], "{name}");
        } else {
            assert!(files.is_empty(), "{name} is not Kiln and reads {files:?}");
        }
    }
    // A setting compose does not mention reaches the roles from .env.
    let mut env = example_env();
    env.insert("KILN_LLM_RPM".into(), "60".into());
    env.insert("KILN_LLM_MODEL".into(), "gpt-4o-mini".into());
    let worker = settings(&container_env(&roles["worker"], &env));
    assert_eq!((worker.llm.rpm, worker.llm.model.as_deref()), (60, Some("gpt-4o-mini")));
}

#[test]
fn only_workers_receive_the_model_providers_key_from_env() {
    let services = services(&compose());
    let roles = roles(&services);
    let dir = std::env::temp_dir().join(format!("kiln-deploy-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("api-key");
    std::fs::write(&key_file, "sk-from-a-file\n").unwrap();
    let with_key = {
        let mut env = example_env();
        env.insert("KILN_LLM_API_KEY".into(), "sk-from-env".into());
        env
    };
    let with_key_file = {
        let mut env = example_env();
        env.insert("KILN_LLM_API_KEY_FILE".into(), key_file.display().to_string());
        env
    };
    for (env, key) in [(&with_key, "sk-from-env"), (&with_key_file, "sk-from-a-file")] {
        for (name, role) in &roles {
            let vars = container_env(role, env);
            let received = settings(&vars).llm.api_key.map(|k| k.expose_secret().to_owned());
            if name == "worker" {
                assert_eq!(received.as_deref(), Some(key), "{name}");
            } else {
                // Blank, not absent: absent would let .env's value through.
                assert_eq!(vars["KILN_LLM_API_KEY"], "", "{name}");
                assert_eq!(vars["KILN_LLM_API_KEY_FILE"], "", "{name}");
                assert_eq!(received, None, "{name}");
            }
        }
    }
    for (name, service) in services.iter().filter(|(name, _)| !roles.contains_key(*name)) {
        assert!(
            environment(service).keys().all(|k| !k.contains("API_KEY")),
            "{name} is handed a key"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_stacks_wiring_wins_over_a_copied_env_example() {
    let roles = roles(&services(&compose()));
    // .env.example holds the binaries' defaults for one machine (loopback
    // address, process sandbox, text logs): compose's wiring wins.
    let env = example_env();
    assert_eq!(env["KILN_HTTP_ADDR"], "127.0.0.1:8080");
    let dispatcher = settings(&container_env(&roles["dispatcher"], &env));
    assert_eq!(dispatcher.http_addr.to_string(), "0.0.0.0:8080");
    assert_eq!(dispatcher.auth, AuthMode::Required);
    assert_eq!(dispatcher.database_url, "postgres://kiln:kiln@postgres:5432/kiln");
    assert_eq!(dispatcher.redis_url, "redis://redis:6379");
    assert_eq!(dispatcher.llm.base_url, "http://mock-llm:8090/v1");
    let worker = settings(&container_env(&roles["worker"], &env));
    assert_eq!(worker.sandbox.kind, SandboxKind::Docker);
    assert_eq!(worker.sandbox.image, "kiln-sandbox:latest");
    assert_eq!(worker.database_url, dispatcher.database_url);
    // Scaled workers cannot share one id from .env.
    let mut env = env;
    env.insert("KILN_WORKER_ID".into(), "w1".into());
    assert_eq!(settings(&container_env(&roles["worker"], &env)).worker.worker_id, None);
}

#[test]
fn every_kiln_role_runs_as_the_images_unprivileged_user() {
    let services = services(&compose());
    for (name, role) in roles(&services) {
        assert_eq!(role["user"].as_str(), Some(IMAGE_USER), "{name}");
        let docker_socket = role.get("volumes").and_then(Value::as_sequence).is_some_and(|v| {
            v.iter()
                .any(|m| m.as_str().is_some_and(|m| m.starts_with("/var/run/docker.sock:")))
        });
        let groups: Vec<&str> = role
            .get("group_add")
            .and_then(Value::as_sequence)
            .map(|g| g.iter().map(|g| g.as_str().unwrap()).collect())
            .unwrap_or_default();
        if name == "worker" {
            // The engine's socket through its group, which .env names.
            assert!(docker_socket);
            assert_eq!(groups.len(), 1);
            let gid = interpolate(groups[0], &example_env()).unwrap();
            assert_eq!(gid, "998");
            let err = interpolate(groups[0], &BTreeMap::new()).unwrap_err();
            assert!(err.contains("stat -c %g /var/run/docker.sock"), "{err}");
        } else {
            assert!(!docker_socket && groups.is_empty(), "{name} reaches the Docker engine");
        }
    }
    // The image's user is the one compose names.
    let stages = stages();
    let base = stage(&stages, "base");
    let useradd = base
        .instructions
        .iter()
        .find(|i| i.keyword == "RUN" && i.args.contains("useradd"))
        .expect("the base stage creates the kiln user");
    for made in [
        "groupadd --system --gid 10001 kiln",
        "useradd --system --uid 10001 --gid 10001",
    ] {
        assert!(useradd.args.contains(made), "{}", useradd.args);
    }
}

#[test]
fn each_runtime_stage_ends_as_the_unprivileged_user() {
    let stages = stages();
    let installing: Vec<&str> = stages
        .iter()
        .filter(|s| {
            s.instructions
                .iter()
                .any(|i| i.keyword == "COPY" && i.args.ends_with("/usr/local/bin/"))
        })
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(installing, RUNTIME_STAGES, "the stages that install the binaries");
    assert_eq!(stages.last().unwrap().name, "runtime", "the default target");
    for name in RUNTIME_STAGES {
        let stage = stage(&stages, name);
        let last_user = stage.instructions.iter().rposition(|i| i.keyword == "USER");
        let last_change = stage
            .instructions
            .iter()
            .rposition(|i| matches!(i.keyword.as_str(), "RUN" | "COPY" | "ADD"));
        let user = last_user.unwrap_or_else(|| panic!("{name} sets no USER"));
        assert!(user > last_change.unwrap(), "{name}: USER before the last change");
        assert_eq!(stage.instructions[user].args, IMAGE_USER, "{name}");
    }
}

#[test]
fn dependencies_compile_before_kilns_sources_are_copied() {
    let stages = stages();
    let build = stage(&stages, "build");
    let position = |what: &dyn Fn(&Instruction) -> bool| build.instructions.iter().position(what);
    let skeleton = position(&|i| i.keyword == "COPY" && i.args.starts_with("--from=skeleton")).unwrap();
    let dependencies = position(&|i| i.keyword == "RUN" && i.args.contains("cargo build")).unwrap();
    let sources = position(&|i| i.keyword == "COPY" && !i.args.starts_with("--from=")).unwrap();
    let kiln = build
        .instructions
        .iter()
        .rposition(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .unwrap();
    assert!(
        skeleton < dependencies && dependencies < sources && sources < kiln,
        "skeleton {skeleton}, dependencies {dependencies}, sources {sources}, Kiln {kiln}"
    );
    // The skeleton keeps manifests, the lock and stubs only.
    let reduce = stage(&stages, "skeleton")
        .instructions
        .iter()
        .find(|i| i.keyword == "RUN")
        .unwrap();
    for kept in ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml", "fn main() {}"] {
        assert!(reduce.args.contains(kept), "{kept}");
    }
    // Sources copied over stubs keep older times: they must be touched.
    assert!(build.instructions[kiln].args.contains("-exec touch"));
}

#[test]
fn the_prebuilt_target_needs_no_rust_image_with_the_legacy_builder() {
    // The legacy builder builds every stage up to the target, used or not.
    let stages = stages();
    let prebuilt = stages.iter().position(|s| s.name == "prebuilt").unwrap();
    for stage in &stages[..=prebuilt] {
        assert!(
            !stage.instructions[0].args.contains("RUST_IMAGE"),
            "{} comes before prebuilt and needs the Rust image",
            stage.name
        );
    }
}

#[test]
fn kilns_dockerfile_checker_finds_only_the_health_check_compose_gives_per_role() {
    let text = read("Dockerfile");
    let lines: Vec<&str> = text.lines().collect();
    let stages = stages();
    for (n, stage) in stages.iter().enumerate() {
        if !RUNTIME_STAGES.contains(&stage.name.as_str()) {
            continue;
        }
        // The checker judges the last stage: each runtime stage as if it
        // were the target.
        let end = stages
            .get(n + 1)
            .map_or(lines.len(), |next| next.instructions[0].line as usize - 1);
        let file = File::new("Dockerfile", lines[..end].join("\n"));
        let rules: Vec<String> = dockerfile::check(&file, false).into_iter().map(|d| d.rule).collect();
        // One image serves every role and only the dispatcher answers HTTP,
        // so the health check is the dispatcher's, in compose.
        assert_eq!(rules, ["dockerfile-health"], "{}", stage.name);
    }
    let services = services(&compose());
    assert!(services["dispatcher"].contains_key("healthcheck"));
}

#[test]
fn kilns_compose_checker_finds_only_the_workers_socket_and_the_private_database_password() {
    let text = read("docker-compose.yml");
    let found: Vec<(String, String)> = kiln::validate::compose::check(&File::new("docker-compose.yml", text.clone()))
        .into_iter()
        .map(|d| {
            let line = text.lines().nth(d.line as usize - 1).unwrap_or("").trim().to_owned();
            (d.rule, line)
        })
        .collect();
    // The socket is the docker backend's (see the file's header); the
    // database password is the stack's own, whose port is not published.
    assert_eq!(
        found,
        [
            ("compose-secret".to_owned(), "POSTGRES_PASSWORD: kiln".to_owned()),
            (
                "compose-docker-socket".to_owned(),
                "- /var/run/docker.sock:/var/run/docker.sock".to_owned()
            ),
        ]
    );
    let services = services(&compose());
    assert!(!services["postgres"].contains_key("ports"));
}
