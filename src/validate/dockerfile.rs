//! `Dockerfile`: parsed the way BuildKit reads it — parser directives
//! (`# escape=`), line continuations (comment lines inside a continuation
//! are dropped), case-insensitive instructions, heredocs, JSON (exec) and
//! shell forms — then checked for what a deployable image needs: a pinned
//! base, a non-root user, no baked-in secrets, a start command and a health
//! check.
//!
//! The rules judge the final stage (everything after the last `FROM`),
//! because that is the image that runs. Values built from build arguments
//! (`$VERSION`) are resolved from `ARG` defaults where possible and otherwise
//! given the benefit of the doubt.

use std::collections::HashMap;

use crate::files::File;
use crate::report::Diagnostic;

const INSTRUCTIONS: [&str; 18] = [
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "MAINTAINER",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
];

/// One instruction, continuations joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Upper case.
    pub keyword: String,
    /// Everything after the keyword, continuations joined with nothing
    /// between them (as BuildKit does), heredoc bodies appended after `\n`.
    pub args: String,
    pub line: u32,
    pub col: u32,
    /// Column of the first character of `args` on `line`.
    pub args_col: u32,
}

impl Instruction {
    /// The exec form's arguments, when `args` is a JSON array of strings.
    pub fn exec_form(&self) -> Option<Vec<String>> {
        let text = self.args.trim();
        text.starts_with('[')
            .then(|| serde_json::from_str::<Vec<String>>(text).ok())
            .flatten()
    }

    /// Whitespace-separated words of the first line of `args`, each with
    /// its column.
    fn words(&self) -> Vec<(&str, u32)> {
        let first = self.args.lines().next().unwrap_or("");
        let mut out = Vec::new();
        let mut start = None;
        for (i, c) in first.char_indices().chain(std::iter::once((first.len(), ' '))) {
            match (c.is_whitespace(), start) {
                (false, None) => start = Some(i),
                (true, Some(s)) => {
                    let col = self.args_col + first[..s].chars().count() as u32;
                    out.push((&first[s..i], col));
                    start = None;
                }
                _ => {}
            }
        }
        out
    }
}

/// Splits a Dockerfile into instructions; unknown instructions are errors.
pub fn parse(path: &str, content: &str) -> (Vec<Instruction>, Vec<Diagnostic>) {
    let lines: Vec<&str> = content.lines().collect();
    let mut escape = '\\';
    let mut first = 0;
    // Parser directives: `# key=value` lines before anything else.
    for line in &lines {
        let Some(directive) = line.trim().strip_prefix('#') else {
            break;
        };
        let Some((key, value)) = directive.split_once('=') else {
            break;
        };
        let key = key.trim().to_ascii_lowercase();
        if !key.chars().all(|c| c.is_ascii_alphanumeric()) || key.is_empty() {
            break;
        }
        if key == "escape" && value.trim() == "`" {
            escape = '`';
        }
        first += 1;
    }
    let mut out = Vec::new();
    let mut diagnostics = Vec::new();
    let mut i = first;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            i += 1;
            continue;
        }
        let number = i as u32 + 1;
        let col = (line.chars().count() - trimmed.chars().count()) as u32 + 1;
        let mut logical = String::new();
        let mut current = trimmed;
        loop {
            let body = current.trim_end();
            if let Some(stripped) = body.strip_suffix(escape) {
                logical.push_str(stripped);
                i += 1;
                // Comment and blank lines inside a continuation are skipped.
                while i < lines.len() && {
                    let t = lines[i].trim_start();
                    t.starts_with('#') || t.is_empty()
                } {
                    i += 1;
                }
                match lines.get(i) {
                    Some(next) => current = next,
                    None => break,
                }
            } else {
                logical.push_str(current);
                i += 1;
                break;
            }
        }
        let keyword_len = logical.find(char::is_whitespace).unwrap_or(logical.len());
        let keyword = logical[..keyword_len].to_ascii_uppercase();
        let rest = &logical[keyword_len..];
        let args_offset = rest.len() - rest.trim_start().len();
        let mut args = rest.trim().to_owned();
        for terminator in heredoc_terminators(&args) {
            while i < lines.len() {
                let body = lines[i];
                i += 1;
                args.push('\n');
                args.push_str(body);
                if body.trim() == terminator {
                    break;
                }
            }
        }
        if !INSTRUCTIONS.contains(&keyword.as_str()) {
            diagnostics.push(Diagnostic::error(
                path,
                number,
                col,
                "dockerfile-syntax",
                format!("unknown instruction `{}`", &logical[..keyword_len]),
            ));
            continue;
        }
        let args_col = col + logical[..keyword_len + args_offset].chars().count() as u32;
        if args.is_empty() {
            diagnostics.push(Diagnostic::error(
                path,
                number,
                col,
                "dockerfile-syntax",
                format!("`{keyword}` needs arguments"),
            ));
            continue;
        }
        out.push(Instruction {
            keyword,
            args,
            line: number,
            col,
            args_col,
        });
    }
    (out, diagnostics)
}

/// `<<EOF`, `<<-EOF`, `<<"EOF"` markers of a heredoc, in order.
fn heredoc_terminators(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = args;
    while let Some(at) = rest.find("<<") {
        let after = rest[at + 2..].trim_start_matches('-');
        let quoted = after.starts_with(['"', '\'']);
        let word: String = after
            .trim_start_matches(['"', '\''])
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !word.is_empty() && (quoted || word.chars().next().is_some_and(|c| c.is_ascii_uppercase())) {
            out.push(word);
        }
        rest = &rest[at + 2..];
    }
    out
}

/// True for names that hold credentials (and not metadata about them, such
/// as `ACCESS_TOKEN_EXPIRE_MINUTES` or `SECRET_KEY_FILE`).
pub fn is_secret_name(name: &str) -> bool {
    const SECRET: [&str; 10] = [
        "PASSWORD",
        "PASSWD",
        "PASSPHRASE",
        "SECRET",
        "TOKEN",
        "API_KEY",
        "APIKEY",
        "PRIVATE_KEY",
        "ACCESS_KEY",
        "CREDENTIAL",
    ];
    const METADATA: [&str; 21] = [
        "EXPIRE",
        "EXPIRY",
        "TTL",
        "LIFETIME",
        "TIMEOUT",
        "LENGTH",
        "ALGORITHM",
        "HEADER",
        "_URL",
        "_URI",
        "ENDPOINT",
        "_NAME",
        "_TYPE",
        "PREFIX",
        "_FILE",
        "_PATH",
        "_DIR",
        "ENABLED",
        "MINUTES",
        "SECONDS",
        "HOURS",
    ];
    let upper = name.to_ascii_uppercase();
    SECRET.iter().any(|s| upper.contains(s)) && !METADATA.iter().any(|m| upper.contains(m))
}

/// True for a value written out literally (not `$VAR`, not empty, not a
/// number or a boolean, which no credential is).
pub fn is_literal_secret(value: &str) -> bool {
    let v = value.trim().trim_matches(['"', '\'']).trim();
    !(v.is_empty()
        || v.starts_with('$')
        || v.chars().all(|c| c.is_ascii_digit())
        || ["true", "false", "yes", "no", "none", "null"].contains(&v.to_ascii_lowercase().as_str()))
}

/// `KEY=value` pairs of `ENV`/`ARG`/`LABEL` arguments (or the legacy
/// `ENV KEY value`), with shell-style quoting.
fn assignments(args: &str, legacy_allowed: bool) -> Vec<(String, String)> {
    let first_word = args.split_whitespace().next().unwrap_or("");
    if legacy_allowed && !first_word.contains('=') {
        let value = args[first_word.len()..].trim();
        return vec![(first_word.to_owned(), value.to_owned())];
    }
    let mut out = Vec::new();
    let mut chars = args.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut word = String::new();
        let mut quote = None;
        while let Some(&c) = chars.peek() {
            match quote {
                Some(q) if c == q => quote = None,
                None if c == '"' || c == '\'' => quote = Some(c),
                None if c.is_whitespace() => break,
                None if c == '\\' => {
                    chars.next();
                    if let Some(&escaped) = chars.peek() {
                        word.push(escaped);
                    }
                }
                Some(_) | None => word.push(c),
            }
            chars.next();
        }
        if word.is_empty() {
            break;
        }
        match word.split_once('=') {
            Some((k, v)) => out.push((k.to_owned(), v.to_owned())),
            None => out.push((word, String::new())),
        }
    }
    out
}

/// Checks a Dockerfile; `health_route` says whether the app serves
/// `GET /health` (or may, when routes could not be read), which satisfies
/// the health rule as well as a `HEALTHCHECK` does.
pub fn check(file: &File, health_route: bool) -> Vec<Diagnostic> {
    let path = file.path.as_str();
    let (instructions, mut out) = parse(path, &file.content);
    let Some(last_from) = instructions.iter().rposition(|i| i.keyword == "FROM") else {
        out.push(Diagnostic::error(
            path,
            0,
            0,
            "dockerfile-from",
            "no `FROM` instruction; start with `FROM python:3.11-slim`",
        ));
        return out;
    };
    let build_args = build_args(&instructions);
    check_base_images(path, &instructions, &build_args, &mut out);
    for i in &instructions {
        check_instruction(path, i, &mut out);
    }
    check_final_stage(
        path,
        &instructions[last_from + 1..],
        &build_args,
        health_route,
        &mut out,
    );
    out
}

/// The defaults of the `ARG`s before the first `FROM`: what a `FROM` or
/// `USER` that names a build argument resolves to.
fn build_args(instructions: &[Instruction]) -> HashMap<String, String> {
    let mut build_args = HashMap::new();
    for arg in instructions.iter().take_while(|i| i.keyword != "FROM") {
        if arg.keyword == "ARG" {
            for (k, v) in assignments(&arg.args, false) {
                build_args.insert(k, v);
            }
        }
    }
    build_args
}

/// Only `ARG` before the first `FROM`, and every base image pinned (a
/// stage built earlier in the file, `scratch` and unresolved build
/// arguments excepted).
fn check_base_images(
    path: &str,
    instructions: &[Instruction],
    build_args: &HashMap<String, String>,
    out: &mut Vec<Diagnostic>,
) {
    if let Some(early) = instructions
        .iter()
        .take_while(|i| i.keyword != "FROM")
        .find(|i| i.keyword != "ARG")
    {
        out.push(Diagnostic::error(
            path,
            early.line,
            early.col,
            "dockerfile-from",
            format!("`{}` before the first `FROM`; only `ARG` may come first", early.keyword),
        ));
    }
    let mut stages: Vec<String> = Vec::new();
    for from in instructions.iter().filter(|i| i.keyword == "FROM") {
        let words: Vec<(&str, u32)> = from.words().into_iter().filter(|(w, _)| !w.starts_with("--")).collect();
        let Some(&(image, col)) = words.first() else { continue };
        if let [_, (as_kw, _), (name, _), ..] = words.as_slice()
            && as_kw.eq_ignore_ascii_case("as")
        {
            stages.push(name.to_ascii_lowercase());
        }
        let image = substitute(image, build_args);
        if image.contains('$') || image == "scratch" || stages.contains(&image.to_ascii_lowercase()) {
            continue;
        }
        if let Some(problem) = unpinned(&image) {
            out.push(Diagnostic::error(path, from.line, col, "dockerfile-from", problem));
        }
    }
}

/// The rules on one instruction of any stage: no secret baked in by `ENV`
/// or `ARG`, and no exec form that is not JSON (Docker would run it
/// through a shell).
fn check_instruction(path: &str, i: &Instruction, out: &mut Vec<Diagnostic>) {
    if i.keyword == "ENV" || i.keyword == "ARG" {
        for (name, value) in assignments(&i.args, i.keyword == "ENV") {
            if is_secret_name(&name) && is_literal_secret(&value) {
                out.push(Diagnostic::error(
                    path,
                    i.line,
                    i.col,
                    "dockerfile-secret",
                    format!(
                        "`{} {name}` bakes a secret into the image; pass it at run time (environment or a secret mount)",
                        i.keyword
                    ),
                ));
            }
        }
    }
    let looks_exec = i
        .args
        .trim_start()
        .strip_prefix('[')
        .is_some_and(|r| r.trim_start().starts_with(['"', '\'']));
    if matches!(i.keyword.as_str(), "CMD" | "ENTRYPOINT" | "RUN" | "SHELL") && looks_exec && i.exec_form().is_none() {
        out.push(Diagnostic::error(
            path,
            i.line,
            i.args_col,
            "dockerfile-syntax",
            format!(
                "`{}` looks like the exec form but is not a JSON array of strings (use double quotes), so Docker would run it through a shell",
                i.keyword
            ),
        ));
    }
}

/// What the image that runs (the final stage) needs: a non-root user, a
/// start command and a health check (or a health route).
fn check_final_stage(
    path: &str,
    stage: &[Instruction],
    build_args: &HashMap<String, String>,
    health_route: bool,
    out: &mut Vec<Diagnostic>,
) {
    match stage.iter().rev().find(|i| i.keyword == "USER") {
        None => out.push(Diagnostic::error(
            path,
            0,
            0,
            "dockerfile-user",
            "the image runs as root: add a non-root `USER` after the last `FROM` (e.g. `RUN useradd --system app` then `USER app`)",
        )),
        Some(user) => {
            let name = user.args.split_whitespace().next().unwrap_or("");
            let name = substitute(name, build_args);
            let account = name.split(':').next().unwrap_or("");
            if account == "root" || account == "0" {
                out.push(Diagnostic::error(
                    path,
                    user.line,
                    user.col,
                    "dockerfile-user",
                    format!("`USER {name}` runs the image as root; switch to a non-root user"),
                ));
            }
        }
    }
    if !stage.iter().any(|i| i.keyword == "CMD" || i.keyword == "ENTRYPOINT") {
        out.push(Diagnostic::error(
            path,
            0,
            0,
            "dockerfile-cmd",
            "no `CMD` or `ENTRYPOINT` in the final stage; start the app, e.g. `CMD [\"uvicorn\", \"app.main:app\", \"--host\", \"0.0.0.0\", \"--port\", \"8000\"]`",
        ));
    }
    let healthcheck = stage
        .iter()
        .rev()
        .find(|i| i.keyword == "HEALTHCHECK")
        .is_some_and(|h| !h.args.trim().eq_ignore_ascii_case("none"));
    if !healthcheck && !health_route {
        out.push(Diagnostic::error(
            path,
            0,
            0,
            "dockerfile-health",
            "no health check: add a `HEALTHCHECK` instruction or serve `GET /health`",
        ));
    }
}

/// `$NAME` and `${NAME}` replaced by build-argument defaults.
fn substitute(text: &str, args: &HashMap<String, String>) -> String {
    let mut out = text.to_owned();
    for (k, v) in args {
        if v.is_empty() {
            continue;
        }
        out = out.replace(&format!("${{{k}}}"), v).replace(&format!("${k}"), v);
    }
    out
}

/// Why an image reference is not pinned, if it is not.
fn unpinned(image: &str) -> Option<String> {
    if image.contains('@') {
        return None;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        None => Some(format!(
            "`{image}` has no tag, which means `latest`; pin a version, e.g. `python:3.11-slim`"
        )),
        Some((_, "latest")) => Some(format!(
            "`{image}` is not pinned; use a version tag such as `python:3.11-slim` or a digest"
        )),
        Some((_, "")) => Some(format!("`{image}` has an empty tag")),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_comments_and_case_are_handled() {
        let content = "# syntax=docker/dockerfile:1\nfrom python:3.11-slim AS base\nRUN apt-get update \\\n  # a comment inside\n  && apt-get install -y curl\nrun echo hi\n";
        let (instructions, diagnostics) = parse("Dockerfile", content);
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        let summary: Vec<(&str, u32)> = instructions.iter().map(|i| (i.keyword.as_str(), i.line)).collect();
        assert_eq!(summary, [("FROM", 2), ("RUN", 3), ("RUN", 6)]);
        assert_eq!(instructions[1].args, "apt-get update   && apt-get install -y curl");
    }

    #[test]
    fn the_escape_directive_changes_the_continuation_character() {
        let content = "# escape=`\nFROM python:3.11-slim\nRUN echo a `\n  b\n";
        let (instructions, _) = parse("Dockerfile", content);
        assert_eq!(instructions[1].args, "echo a   b");
    }

    #[test]
    fn heredocs_are_part_of_their_instruction() {
        let content = "FROM python:3.11-slim\nRUN <<EOF\nFROM nothing\nEOF\nUSER app\n";
        let (instructions, _) = parse("Dockerfile", content);
        let keywords: Vec<&str> = instructions.iter().map(|i| i.keyword.as_str()).collect();
        assert_eq!(keywords, ["FROM", "RUN", "USER"]);
    }

    #[test]
    fn exec_and_shell_forms_are_told_apart() {
        let (i, _) = parse(
            "Dockerfile",
            "CMD [\"uvicorn\", \"app.main:app\"]\nCMD uvicorn app.main:app\n",
        );
        assert_eq!(
            i[0].exec_form(),
            Some(vec!["uvicorn".to_owned(), "app.main:app".to_owned()])
        );
        assert_eq!(i[1].exec_form(), None);
    }

    #[test]
    fn secret_names_exclude_their_metadata() {
        assert!(is_secret_name("DB_PASSWORD"));
        assert!(is_secret_name("jwt_secret_key"));
        assert!(!is_secret_name("ACCESS_TOKEN_EXPIRE_MINUTES"));
        assert!(!is_secret_name("SECRET_KEY_FILE"));
        assert!(!is_secret_name("DATABASE_URL"));
        assert!(is_literal_secret("hunter2"));
        assert!(!is_literal_secret("${DB_PASSWORD}"));
        assert!(!is_literal_secret("\"\""));
    }

    #[test]
    fn build_arguments_resolve_in_from() {
        let file = File::new(
            "Dockerfile",
            "ARG PY=3.11-slim\nFROM python:${PY}\nUSER app\nHEALTHCHECK CMD true\nCMD [\"x\"]\n",
        );
        assert!(check(&file, false).is_empty());
        let file = File::new(
            "Dockerfile",
            "ARG TAG=latest\nFROM python:$TAG\nUSER app\nHEALTHCHECK CMD true\nCMD [\"x\"]\n",
        );
        let d = check(&file, false);
        assert_eq!((d[0].rule.as_str(), d[0].line, d[0].col), ("dockerfile-from", 2, 6));
    }
}
