//! `docker-compose.yml`: parsed as YAML (merge keys applied), then checked
//! for a defined service and for settings that hand the container the host:
//! privileged mode, the host's network or process namespace, the Docker
//! socket, dangerous capabilities, disabled confinement — plus credentials
//! written into `environment`.
//!
//! serde_yaml_ng's values carry no positions, so findings are placed by
//! following the key path through the indentation of the text (block style,
//! which is what compose files use); a setting that cannot be placed that
//! way (flow style) is reported at its service, or at line 0.

use serde_yaml_ng::{Mapping, Value};

use crate::files::File;
use crate::report::Diagnostic;

use super::dockerfile::{is_literal_secret, is_secret_name};

/// Capabilities that amount to root on the host.
const DANGEROUS_CAPABILITIES: [&str; 5] = ["ALL", "SYS_ADMIN", "SYS_MODULE", "SYS_PTRACE", "DAC_READ_SEARCH"];

/// Checks a compose file.
pub fn check(file: &File) -> Vec<Diagnostic> {
    let path = file.path.as_str();
    let text = file.content.as_str();
    let root = match parse(path, text) {
        Ok(root) => root,
        Err(problem) => return vec![problem],
    };
    let services = match services(&root, path, text) {
        Ok(services) => services,
        Err(problem) => return vec![problem],
    };
    let mut out = Vec::new();
    for (name, settings) in services {
        let name = key_text(name);
        Service {
            path,
            text,
            name: &name,
        }
        .check(settings, &mut out);
    }
    out
}

/// The file as YAML with merge keys applied, or why it is not that.
fn parse(path: &str, text: &str) -> Result<Value, Diagnostic> {
    let mut root: Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let (line, col) = e.location().map_or((0, 0), |l| (l.line() as u32, l.column() as u32));
        Diagnostic::error(path, line, col, "compose-syntax", format!("invalid YAML: {e}"))
    })?;
    root.apply_merge()
        .map_err(|e| Diagnostic::error(path, 0, 0, "compose-syntax", format!("invalid merge key: {e}")))?;
    Ok(root)
}

/// The non-empty `services` mapping, or why there is none.
fn services<'v>(root: &'v Value, path: &str, text: &str) -> Result<&'v Mapping, Diagnostic> {
    let Some(top) = root.as_mapping() else {
        return Err(Diagnostic::error(
            path,
            1,
            1,
            "compose-syntax",
            "the compose file must be a mapping with a `services` key",
        ));
    };
    match top.get("services") {
        Some(Value::Mapping(m)) if !m.is_empty() => Ok(m),
        Some(_) => {
            let (line, col) = locate(text, &["services"]);
            Err(Diagnostic::error(
                path,
                line,
                col,
                "compose-service",
                "`services` must map each service name to its settings",
            ))
        }
        None => Err(Diagnostic::error(
            path,
            0,
            0,
            "compose-service",
            "no `services`: define the service, e.g. `services: {app: {build: .}}`",
        )),
    }
}

/// One service of the file: what its findings are placed and named by.
struct Service<'a> {
    path: &'a str,
    text: &'a str,
    name: &'a str,
}

impl Service<'_> {
    /// Every finding on the service's `settings`, in the order of the rules.
    fn check(&self, settings: &Value, out: &mut Vec<Diagnostic>) {
        let name = self.name;
        let Some(settings) = settings.as_mapping() else {
            out.push(self.error_at(
                &[],
                "compose-service",
                format!("service `{name}` must be a mapping of settings"),
            ));
            return;
        };
        if settings.get("image").is_none() && settings.get("build").is_none() {
            out.push(self.error_at(
                &[],
                "compose-service",
                format!("service `{name}` has neither `build` nor `image`"),
            ));
        }
        self.check_host_sharing(settings, out);
        self.check_socket_mounts(settings, out);
        self.check_confinement(settings, out);
        self.check_environment(settings, out);
    }

    /// Privileged mode and the host's network or process namespace.
    fn check_host_sharing(&self, settings: &Mapping, out: &mut Vec<Diagnostic>) {
        let name = self.name;
        if settings.get("privileged").is_some_and(is_true) {
            out.push(self.error_at(
                &["privileged"],
                "compose-privileged",
                format!(
                    "service `{name}` is privileged, which gives it the host's devices and kernel; remove `privileged: true`"
                ),
            ));
        }
        if settings.get("network_mode").and_then(Value::as_str) == Some("host") {
            out.push(self.error_at(
                &["network_mode"],
                "compose-network-host",
                format!("service `{name}` shares the host's network; publish ports with `ports:` instead"),
            ));
        }
        if settings.get("pid").and_then(Value::as_str) == Some("host") {
            out.push(self.error_at(
                &["pid"],
                "compose-pid-host",
                format!("service `{name}` shares the host's process namespace; remove `pid: host`"),
            ));
        }
    }

    /// The Docker socket in `volumes`, in short or long syntax.
    fn check_socket_mounts(&self, settings: &Mapping, out: &mut Vec<Diagnostic>) {
        let name = self.name;
        for volume in settings
            .get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let mounts_socket = match volume {
                Value::String(s) => s.split(':').any(is_docker_socket),
                Value::Mapping(m) => ["source", "target"]
                    .iter()
                    .any(|k| m.get(*k).and_then(Value::as_str).is_some_and(is_docker_socket)),
                _ => false,
            };
            if mounts_socket {
                let (line, col) = self.item("volumes", "docker.sock");
                out.push(Diagnostic::error(
                    self.path,
                    line,
                    col,
                    "compose-docker-socket",
                    format!("service `{name}` mounts the Docker socket, which controls the host; remove the mount"),
                ));
            }
        }
    }

    /// Dangerous capabilities added, and confinement (seccomp, AppArmor,
    /// SELinux labels) turned off.
    fn check_confinement(&self, settings: &Mapping, out: &mut Vec<Diagnostic>) {
        let name = self.name;
        for cap in settings
            .get("cap_add")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let Some(cap) = cap.as_str() else { continue };
            let bare = cap.trim().to_ascii_uppercase();
            let bare = bare.strip_prefix("CAP_").unwrap_or(&bare);
            if DANGEROUS_CAPABILITIES.contains(&bare) {
                let (line, col) = self.item("cap_add", cap);
                out.push(Diagnostic::error(
                    self.path,
                    line,
                    col,
                    "compose-capabilities",
                    format!("service `{name}` adds capability `{cap}`, which amounts to root on the host"),
                ));
            }
        }
        for opt in settings
            .get("security_opt")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let Some(opt) = opt.as_str() else { continue };
            let normal = opt.replace('=', ":").to_ascii_lowercase();
            if normal.ends_with(":unconfined") || normal == "label:disable" {
                let (line, col) = self.item("security_opt", opt);
                out.push(Diagnostic::error(
                    self.path,
                    line,
                    col,
                    "compose-unconfined",
                    format!("service `{name}` turns off confinement with `{opt}`"),
                ));
            }
        }
    }

    /// Credentials written into `environment`.
    fn check_environment(&self, settings: &Mapping, out: &mut Vec<Diagnostic>) {
        let name = self.name;
        for (key, value) in environment(settings.get("environment")) {
            if is_secret_name(&key) && is_literal_secret(&value) {
                let (line, col) = self.item("environment", &key);
                out.push(Diagnostic::warning(
                    self.path,
                    line,
                    col,
                    "compose-secret",
                    format!("service `{name}` writes the secret `{key}` into the compose file; use `{key}: ${{{key}}}` and set it outside"),
                ));
            }
        }
    }

    /// An error at `keys` under the service, or at the service itself when
    /// they cannot be placed (flow style).
    fn error_at(&self, keys: &[&str], rule: &str, message: String) -> Diagnostic {
        let mut full = vec!["services", self.name];
        full.extend_from_slice(keys);
        let (line, col) = match locate(self.text, &full) {
            (0, _) => locate(self.text, &["services", self.name]),
            found => found,
        };
        Diagnostic::error(self.path, line, col, rule, message)
    }

    /// The position of the entry of the service's `list` that contains
    /// `needle`.
    fn item(&self, list: &str, needle: &str) -> (u32, u32) {
        locate_item(self.text, &["services", self.name, list], needle)
    }
}

fn is_true(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

fn is_docker_socket(path: &str) -> bool {
    path.trim().ends_with("docker.sock")
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other).unwrap_or_default().trim().to_owned(),
    }
}

/// `environment:` as a mapping or as a list of `KEY=value`.
fn environment(value: Option<&Value>) -> Vec<(String, String)> {
    match value {
        Some(Value::Mapping(m)) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => serde_yaml_ng::to_string(other).unwrap_or_default().trim().to_owned(),
                };
                (key_text(k), v)
            })
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| {
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Indentation and the text after it (`- ` of a sequence item skipped).
fn split_line(line: &str) -> (usize, &str) {
    let indent = line.len() - line.trim_start().len();
    (indent, line.trim_start())
}

fn is_key(content: &str, key: &str) -> bool {
    let content = content.strip_prefix("- ").unwrap_or(content);
    [format!("{key}:"), format!("\"{key}\":"), format!("'{key}':")]
        .iter()
        .any(|k| content.starts_with(k.as_str()))
}

/// The 1-based (line, column) of the last key of `path`, following block
/// indentation from the top; (0, 0) when it cannot be found.
fn locate(text: &str, path: &[&str]) -> (u32, u32) {
    block_of(text, path).map_or((0, 0), |(line, col, _)| (line as u32 + 1, col as u32 + 1))
}

/// Where the key path ends: its line index, column index and indentation.
fn block_of(text: &str, path: &[&str]) -> Option<(usize, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0;
    let mut parent: Option<usize> = None;
    let mut found = None;
    for key in path {
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(start) {
            let (indent, content) = split_line(line);
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            if parent.is_some_and(|p| indent <= p) {
                break;
            }
            if is_key(content, key) {
                let col = indent + if content.starts_with("- ") { 2 } else { 0 };
                hit = Some((i, col, col));
                break;
            }
        }
        let (i, col, key_indent) = hit?;
        start = i + 1;
        parent = Some(key_indent);
        found = Some((i, col, key_indent));
    }
    found
}

/// The position of the line in the block under `path` that contains
/// `needle` (a sequence item or a mapping entry), else of `path` itself.
fn locate_item(text: &str, path: &[&str], needle: &str) -> (u32, u32) {
    let Some((line, col, indent)) = block_of(text, path) else {
        return (0, 0);
    };
    for (i, l) in text.lines().enumerate().skip(line + 1) {
        let (item_indent, content) = split_line(l);
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        if item_indent <= indent && !content.starts_with("- ") {
            break;
        }
        if content.contains(needle) {
            let skip = if content.starts_with("- ") { 2 } else { 0 };
            return (i as u32 + 1, (item_indent + skip) as u32 + 1);
        }
    }
    // Flow style (`[a, b]`) on the key's own line.
    (line as u32 + 1, col as u32 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(content: &str) -> Vec<(String, u32, u32)> {
        check(&File::new("docker-compose.yml", content))
            .into_iter()
            .map(|d| (d.rule, d.line, d.col))
            .collect()
    }

    #[test]
    fn a_plain_service_passes() {
        assert!(found("services:\n  web:\n    build: .\n    ports:\n      - \"8000:8000\"\n").is_empty());
    }

    #[test]
    fn keys_are_located_through_the_indentation() {
        let content = "services:\n  db:\n    image: postgres:16\n  web:\n    build: .\n    privileged: true\n";
        assert_eq!(found(content), [("compose-privileged".to_owned(), 6, 5)]);
    }

    #[test]
    fn socket_mounts_are_found_in_short_and_long_syntax() {
        let short =
            "services:\n  web:\n    build: .\n    volumes:\n      - /var/run/docker.sock:/var/run/docker.sock\n";
        assert_eq!(found(short), [("compose-docker-socket".to_owned(), 5, 9)]);
        let long = "services:\n  web:\n    build: .\n    volumes:\n      - type: bind\n        source: /var/run/docker.sock\n        target: /sock\n";
        assert_eq!(found(long), [("compose-docker-socket".to_owned(), 6, 9)]);
    }

    #[test]
    fn merge_keys_are_applied_before_checking() {
        let content = "x-base: &base\n  privileged: true\nservices:\n  web:\n    <<: *base\n    build: .\n";
        assert_eq!(found(content)[0].0, "compose-privileged");
    }
}
