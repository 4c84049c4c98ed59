//! Turning the model's answer into files.
//!
//! Kiln asks for `{"files": [{"path", "content"}], "notes"?}`, but real models
//! drift, so three shapes are accepted, tried in this order:
//! 1. that JSON object (also inside a ```json fence or surrounded by prose);
//! 2. the seed function format `{"function_name", "source_code", "imports"}`,
//!    which becomes `solution.py`;
//! 3. markdown with fenced blocks labelled by path (```` ```python app/main.py ````,
//!    or a `app/main.py` heading line just before the fence); for a function
//!    spec a single unlabelled Python block is `solution.py`.
//!
//! Anything else is the model's failure, reported with what was expected.

use serde::Deserialize;
use serde_json::Value;

use crate::files::File;
use crate::spec::SpecKind;

/// Why an answer could not be turned into files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

const EXPECTED: &str = r#"expected a JSON object {"files": [{"path": "...", "content": "..."}]}"#;

/// Extracts the files from an answer.
pub fn parse_response(content: &str, kind: SpecKind) -> Result<Vec<File>, ParseError> {
    let trimmed = content.trim();
    if trimmed.is_empty() {
        return Err(ParseError(format!("the answer was empty; {EXPECTED}")));
    }
    let mut json_error = None;
    for candidate in json_candidates(trimmed) {
        match serde_json::from_str::<Value>(candidate) {
            Ok(value) => match from_json(value) {
                Ok(files) => return finish(files),
                Err(e) => json_error = Some(e),
            },
            Err(e) if json_error.is_none() => {
                json_error = Some(ParseError(format!(
                    "invalid JSON at line {} column {}: {e}",
                    e.line(),
                    e.column()
                )));
            }
            Err(_) => {}
        }
    }
    let blocks = fenced_blocks(trimmed);
    let labelled: Vec<File> = blocks
        .iter()
        .filter_map(|b| b.path.as_ref().map(|p| File::new(p.clone(), b.body.clone())))
        .collect();
    if !labelled.is_empty() {
        return finish(labelled);
    }
    let python: Vec<&Block> = blocks
        .iter()
        .filter(|b| matches!(b.lang.as_str(), "python" | "py" | ""))
        .collect();
    if kind == SpecKind::Function && python.len() == 1 {
        return finish(vec![File::new("solution.py", python[0].body.clone())]);
    }
    Err(json_error.unwrap_or_else(|| ParseError(format!("no files found in the answer; {EXPECTED}"))))
}

/// Where JSON may be: the whole answer, a ```json fence, or the outermost braces.
fn json_candidates(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    if text.starts_with('{') {
        out.push(text);
    }
    for block in fenced_ranges(text) {
        let body = text[block.0..block.1].trim();
        if body.starts_with('{') {
            out.push(body);
        }
    }
    if let (Some(start), Some(end)) = (text.find('{'), text.rfind('}'))
        && start < end
    {
        out.push(&text[start..=end]);
    }
    out
}

#[derive(Deserialize)]
struct FilesAnswer {
    files: Vec<FileEntry>,
}

#[derive(Deserialize)]
struct FileEntry {
    path: String,
    content: String,
}

#[derive(Deserialize)]
struct SeedFunctionAnswer {
    #[allow(dead_code)]
    function_name: String,
    source_code: String,
    #[serde(default)]
    imports: Imports,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Imports {
    #[default]
    None,
    List(Vec<String>),
    Text(String),
}

fn from_json(value: Value) -> Result<Vec<File>, ParseError> {
    if value.get("files").is_some() {
        let answer: FilesAnswer = serde_path_to_error::deserialize(value)
            .map_err(|e| ParseError(format!("{} at `{}`; {EXPECTED}", e.inner(), e.path())))?;
        return Ok(answer.files.into_iter().map(|f| File::new(f.path, f.content)).collect());
    }
    if value.get("source_code").is_some() {
        let answer: SeedFunctionAnswer = serde_path_to_error::deserialize(value)
            .map_err(|e| ParseError(format!("{} at `{}` in the function format", e.inner(), e.path())))?;
        let imports = match answer.imports {
            Imports::None => String::new(),
            Imports::List(lines) => lines
                .iter()
                .map(|l| l.trim())
                .filter(|l| !l.is_empty())
                .map(|l| {
                    if l.starts_with("import ") || l.starts_with("from ") {
                        l.to_owned()
                    } else {
                        format!("import {l}")
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Imports::Text(text) => text.trim().to_owned(),
        };
        let body = answer.source_code.trim_end();
        let content = if imports.is_empty() {
            format!("{body}\n")
        } else {
            format!("{imports}\n\n{body}\n")
        };
        return Ok(vec![File::new("solution.py", content)]);
    }
    let keys: Vec<String> = value
        .as_object()
        .map(|o| o.keys().map(|k| format!("`{k}`")).collect())
        .unwrap_or_default();
    Err(ParseError(format!(
        "the JSON answer has no `files` (found {}); {EXPECTED}",
        if keys.is_empty() {
            "no object".to_owned()
        } else {
            keys.join(", ")
        }
    )))
}

fn finish(files: Vec<File>) -> Result<Vec<File>, ParseError> {
    if files.is_empty() {
        return Err(ParseError(format!("the answer lists no files; {EXPECTED}")));
    }
    Ok(files
        .into_iter()
        .map(|f| File::new(f.path.trim().trim_start_matches("./").to_owned(), f.content))
        .collect())
}

struct Block {
    lang: String,
    path: Option<String>,
    body: String,
}

/// Byte ranges of the bodies of ``` fenced blocks.
fn fenced_ranges(text: &str) -> Vec<(usize, usize)> {
    fenced(text).into_iter().map(|(_, _, range)| range).collect()
}

/// (info string, line before the fence, body range) of every fenced block.
fn fenced(text: &str) -> Vec<(String, String, (usize, usize))> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut previous_line = "";
    let mut open: Option<(String, String, usize)> = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        match &open {
            None if trimmed.starts_with("```") => {
                open = Some((
                    trimmed[3..].trim().to_owned(),
                    previous_line.trim().to_owned(),
                    offset + line.len(),
                ));
            }
            Some((info, before, start)) if trimmed == "```" => {
                out.push((info.clone(), before.clone(), (*start, offset)));
                open = None;
            }
            _ => {}
        }
        if !trimmed.is_empty() {
            previous_line = line;
        }
        offset += line.len();
    }
    out
}

fn fenced_blocks(text: &str) -> Vec<Block> {
    fenced(text)
        .into_iter()
        .map(|(info, before, (start, end))| {
            let mut words = info.split_whitespace();
            let first = words.next().unwrap_or("").to_owned();
            let (lang, path) = if looks_like_path(&first) {
                (String::new(), Some(first))
            } else {
                let labelled = words
                    .map(|w| {
                        w.trim_start_matches("title=")
                            .trim_start_matches("path=")
                            .trim_matches('"')
                    })
                    .find(|w| looks_like_path(w))
                    .map(str::to_owned);
                (first.to_ascii_lowercase(), labelled.or_else(|| heading_path(&before)))
            };
            Block {
                lang,
                path,
                body: text[start..end].to_owned(),
            }
        })
        .collect()
}

/// A path named on the line before a fence: `### app/main.py`, `**app/main.py**`,
/// `` `app/main.py`: ``, `File: app/main.py`.
fn heading_path(line: &str) -> Option<String> {
    let cleaned = line
        .trim_start_matches('#')
        .trim()
        .trim_start_matches("File:")
        .trim_start_matches("file:")
        .trim()
        .trim_matches(|c| c == '*' || c == '`' || c == ':' || c == ' ');
    looks_like_path(cleaned).then(|| cleaned.to_owned())
}

fn looks_like_path(s: &str) -> bool {
    let known_names = ["Dockerfile", "requirements.txt", "docker-compose.yml", "Makefile"];
    !s.is_empty()
        && !s.contains(char::is_whitespace)
        && (known_names.contains(&s.rsplit('/').next().unwrap_or(s))
            || s.rsplit_once('.').is_some_and(|(stem, ext)| {
                !stem.is_empty() && !ext.is_empty() && ext.chars().all(|c| c.is_ascii_alphanumeric())
            }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_json_object_is_parsed() {
        let files = parse_response(
            r#"{"files": [{"path": "solution.py", "content": "def f():\n    return 1\n"}], "notes": "x"}"#,
            SpecKind::Function,
        )
        .unwrap();
        assert_eq!(files, vec![File::new("solution.py", "def f():\n    return 1\n")]);
    }

    #[test]
    fn json_inside_a_fence_or_prose_is_found() {
        let answer =
            "Here you go:\n```json\n{\"files\": [{\"path\": \"./a.py\", \"content\": \"x = 1\\n\"}]}\n```\nEnjoy.";
        assert_eq!(
            parse_response(answer, SpecKind::Service).unwrap(),
            vec![File::new("a.py", "x = 1\n")]
        );
    }

    #[test]
    fn the_seed_function_format_becomes_solution_py() {
        let answer = r#"{"function_name": "f", "source_code": "def f(x):\n    return math.sqrt(x)", "imports": ["math", "from typing import List"]}"#;
        let files = parse_response(answer, SpecKind::Function).unwrap();
        assert_eq!(files[0].path, "solution.py");
        assert_eq!(
            files[0].content,
            "import math\nfrom typing import List\n\ndef f(x):\n    return math.sqrt(x)\n"
        );
    }

    #[test]
    fn markdown_blocks_labelled_by_path_are_files() {
        let answer = "### app/main.py\n```python\nfrom fastapi import FastAPI\napp = FastAPI()\n```\n\n```text requirements.txt\nfastapi==0.165.0\n```\n\n```Dockerfile\nFROM python:3.11-slim\n```\n";
        let files = parse_response(answer, SpecKind::Service).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["app/main.py", "requirements.txt", "Dockerfile"]);
        assert_eq!(files[0].content, "from fastapi import FastAPI\napp = FastAPI()\n");
    }

    #[test]
    fn a_single_python_block_is_the_solution_of_a_function_spec() {
        let answer = "Sure!\n```python\ndef f():\n    return 2\n```";
        assert_eq!(
            parse_response(answer, SpecKind::Function).unwrap()[0].path,
            "solution.py"
        );
        assert!(parse_response(answer, SpecKind::Service).is_err());
    }

    #[test]
    fn unparseable_answers_say_what_was_expected() {
        let e = parse_response("I cannot help with that.", SpecKind::Function).unwrap_err();
        assert!(e.0.contains(r#"expected a JSON object {"files""#), "{e}");
        let e = parse_response(r#"{"code": "x"}"#, SpecKind::Function).unwrap_err();
        assert!(e.0.contains("has no `files` (found `code`)"), "{e}");
        let e = parse_response(r#"{"files": [{"path": "a.py"}]}"#, SpecKind::Function).unwrap_err();
        assert!(e.0.contains("missing field `content`"), "{e}");
        let e = parse_response(r#"{"files": [{"path": "a.py", "content": "x"#, SpecKind::Function).unwrap_err();
        assert!(e.0.contains("invalid JSON"), "{e}");
        assert!(
            parse_response("  ", SpecKind::Function)
                .unwrap_err()
                .0
                .contains("empty")
        );
    }
}
