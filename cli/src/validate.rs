//! `kiln validate`: checks spec files offline, exactly as `kiln submit`
//! and the dispatcher would read them, and names the file, line and column
//! of each problem.
//!
//! The files are read by the client's own loader (`kiln::client`: the same
//! JSON/YAML choice and the same merging of a directory into one batch),
//! and the batch body goes through the dispatcher's checks of `POST
//! /v1/batches` (`kiln::spec`), under the dispatcher's default limits.
//! Those checks stop at the first fault, so each spec is also checked on
//! its own: every broken spec is listed, not only the first. A problem's
//! field path (`specs[2].kind`) is then traced back to the file the spec
//! came from and to its place in that file ([`crate::positions`]).

use std::fmt;
use std::io::Read as _;
use std::path::Path;

use kiln::client::{BatchParts, ClientError, SpecFormat, SpecsFrom, parse_spec_file, spec_files};
use kiln::config::{DEFAULT_MAX_BODY_MB, DEFAULT_MAX_SPEC_KB, DEFAULT_MAX_SPECS};
use kiln::spec::{BatchRequest, FieldError, Limits, canonical_numbers, find_nul};
use serde_json::{Value, json};

use crate::positions::{Node, Position, Step, steps};
use crate::{Output, Usage};

/// `kiln validate PATH`: reads the file, directory or standard input
/// (`-`), checks it and prints the verdict: problems as
/// `file:line:column: field: message` lines on standard error (text), or
/// `{"valid", "specs", "problems"}` (json), or a problem per line (jsonl),
/// on standard output. Problems are a usage error (exit code 2), as a
/// spec file `kiln submit` refuses is.
pub fn run(path: &Path, output: Output) -> anyhow::Result<()> {
    let sources = read(path)?;
    let verdict = check(&sources);
    let shown = if path.as_os_str() == "-" {
        "<stdin>".to_owned()
    } else {
        path.display().to_string()
    };
    match output {
        Output::Text if verdict.problems.is_empty() => match verdict.specs {
            1 => println!("{shown}: valid, 1 spec"),
            n => println!("{shown}: valid, {n} specs"),
        },
        Output::Text => verdict.problems.iter().for_each(|p| eprintln!("{p}")),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "valid": verdict.problems.is_empty(),
                "specs": verdict.specs,
                "problems": verdict.problems.iter().map(Problem::to_json).collect::<Vec<_>>(),
            }))
            .unwrap_or_default()
        ),
        Output::Jsonl => verdict.problems.iter().for_each(|p| println!("{}", p.to_json())),
    }
    match verdict.problems.len() {
        0 => Ok(()),
        1 => Err(Usage(format!("{shown}: 1 problem")).into()),
        n => Err(Usage(format!("{shown}: {n} problems")).into()),
    }
}

/// The spec files `path` stands for, read as `kiln submit` reads them.
fn read(path: &Path) -> anyhow::Result<Vec<Source>> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Usage(format!("reading specs from standard input: {e}")))?;
        let format = SpecFormat::of_text(&text);
        return Ok(vec![Source {
            name: "<stdin>".into(),
            text,
            format,
        }]);
    }
    spec_files(path)?
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).map_err(|e| ClientError::SpecFile {
                path: file.clone(),
                message: e.to_string(),
            })?;
            Ok(Source {
                name: file.display().to_string(),
                format: SpecFormat::of_path(&file),
                text,
            })
        })
        .collect()
}

/// One spec file's text and how to read it.
pub struct Source {
    /// As the user named it (`-` is shown as `<stdin>`).
    pub name: String,
    pub text: String,
    pub format: SpecFormat,
}

/// One thing wrong with the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// Where, when known (always for syntax errors; for other problems
    /// when the file could be read again with positions).
    pub at: Option<Position>,
    /// The field at fault as a path in the batch body, as the API names it.
    pub field: Option<String>,
    pub message: String,
}

impl Problem {
    pub fn to_json(&self) -> Value {
        json!({
            "file": self.file,
            "line": self.at.map(|p| p.line),
            "column": self.at.map(|p| p.column),
            "field": self.field,
            "message": self.message,
        })
    }
}

/// `file:line:column: field: message`, as compilers write it, so editors
/// and terminals link to the place.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file)?;
        if let Some(at) = self.at {
            write!(f, "{}:{}:", at.line, at.column)?;
        }
        if let Some(field) = &self.field {
            write!(f, " {field}:")?;
        }
        write!(f, " {}", self.message)
    }
}

/// What the files hold: how many specs, and every problem found.
#[derive(Debug)]
pub struct Verdict {
    pub specs: usize,
    pub problems: Vec<Problem>,
}

/// Where the batch's specs, name and options came from.
struct Origins {
    /// Per spec of the batch: its file and its path in that file.
    specs: Vec<(usize, Vec<Step>)>,
    /// The file whose `name` the batch took (the first that has one).
    name: Option<usize>,
    /// The file that gave the options.
    options: Option<usize>,
    /// The file of each `specs` list, when the batch came from one file.
    single: Option<(usize, SpecsFrom)>,
}

/// Checks the files as one batch, as `kiln submit` would send them.
pub fn check(sources: &[Source]) -> Verdict {
    let trees: Vec<Option<Node>> = sources
        .iter()
        .map(|s| match s.format {
            SpecFormat::Json => Node::parse_json(&s.text),
            SpecFormat::Yaml => Node::parse(&s.text),
        })
        .collect();
    let place = |file: usize, path: &[Step], field: Option<String>, message: String| Problem {
        file: sources[file].name.clone(),
        at: trees[file].as_ref().map(|t| t.locate(path)),
        field,
        message,
    };
    let mut problems = Vec::new();
    let mut parts = BatchParts::default();
    let mut origins = Origins {
        specs: Vec::new(),
        name: None,
        options: None,
        single: None,
    };
    for (i, source) in sources.iter().enumerate() {
        let value = match parse_spec_file(&source.text, source.format) {
            Ok(value) => value,
            Err(e) => {
                problems.push(Problem {
                    file: source.name.clone(),
                    at: e.line.zip(e.column).map(|(line, column)| Position { line, column }),
                    field: None,
                    message: without_position(&e.message),
                });
                continue;
            }
        };
        // Where absorbing may go wrong: `specs` that is no list, or options
        // given a second time.
        let blame = match &value {
            Value::Object(map) if map.get("specs").is_some_and(|s| !s.is_array()) => "specs",
            Value::Object(map) if map.contains_key("specs") && map.contains_key("options") => "options",
            _ => "",
        };
        let has = |key: &str| matches!(&value, Value::Object(m) if m.contains_key("specs") && m.contains_key(key));
        let (has_name, has_options) = (has("name"), has("options"));
        match parts.absorb(value, Path::new(&source.name)) {
            Ok(from) => {
                let prefix = |j: usize| match from {
                    SpecsFrom::List(_) => vec![Step::Index(j)],
                    SpecsFrom::Batch(_) => vec![Step::Key("specs".into()), Step::Index(j)],
                    SpecsFrom::One => Vec::new(),
                };
                let n = match from {
                    SpecsFrom::List(n) | SpecsFrom::Batch(n) => n,
                    SpecsFrom::One => 1,
                };
                origins.specs.extend((0..n).map(|j| (i, prefix(j))));
                if has_name {
                    origins.name.get_or_insert(i);
                }
                if has_options {
                    origins.options = Some(i);
                }
                origins.single = (sources.len() == 1).then_some((i, from));
            }
            Err(ClientError::SpecFile { message, .. }) => {
                problems.push(place(i, &steps(blame), None, message));
            }
            Err(other) => problems.push(place(i, &[], None, other.to_string())),
        }
    }
    let files_read = problems.is_empty();
    let body = parts.into_body();
    let specs = body["specs"].as_array().map_or(0, Vec::len);
    for e in request_problems(&body, files_read) {
        let (file, path) = origins.trace(&e.field);
        problems.push(place(file, &path, Some(e.field), e.message));
    }
    Verdict { specs, problems }
}

impl Origins {
    /// The file and the path in it of a field of the batch body.
    fn trace(&self, field: &str) -> (usize, Vec<Step>) {
        let mut path = steps(field);
        let root = |file: usize| (file, Vec::new());
        match path.first() {
            Some(Step::Key(k)) if k == "specs" => match path.get(1) {
                Some(Step::Index(i)) if *i < self.specs.len() => {
                    let (file, prefix) = self.specs[*i].clone();
                    let mut at = prefix;
                    at.extend(path.drain(2..));
                    (file, at)
                }
                _ => match self.single {
                    Some((file, SpecsFrom::Batch(_))) => (file, path),
                    Some((file, _)) => root(file),
                    None => root(0),
                },
            },
            Some(Step::Key(k)) if k == "name" => self.name.map_or_else(|| root(0), |file| (file, path)),
            Some(Step::Key(k)) if k == "options" => self.options.map_or_else(|| root(0), |file| (file, path)),
            _ => root(0),
        }
    }
}

/// The dispatcher's checks of the body `kiln submit` would send: its size,
/// its text (NUL characters, numbers), then the batch and every spec.
/// Batch-level checks (options, name, the number of specs) run only when
/// every file was read, since a batch missing a file's specs would be
/// judged wrongly.
fn request_problems(body: &Value, files_read: bool) -> Vec<FieldError> {
    let limits = Limits {
        max_specs: DEFAULT_MAX_SPECS,
        max_spec_bytes: DEFAULT_MAX_SPEC_KB * 1024,
    };
    // The body as it travels: JSON text read back as the dispatcher reads it.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let max_body = DEFAULT_MAX_BODY_MB * 1024 * 1024;
    if bytes.len() > max_body {
        return vec![FieldError::new(
            "body",
            format!("larger than the limit of {max_body} bytes"),
        )];
    }
    let Ok(mut body) = serde_json::from_slice::<Value>(&bytes) else {
        return Vec::new();
    };
    if let Some(field) = find_nul(&body) {
        return vec![FieldError::new(field, "contains the NUL character (U+0000)")];
    }
    if let Err(e) = canonical_numbers(&mut body) {
        return vec![e];
    }
    let mut found = Vec::new();
    // Each spec alone, in a batch of one, so every broken spec is named;
    // its path is moved from `specs[0]` back to its own index.
    for (i, spec) in body["specs"].as_array().into_iter().flatten().enumerate() {
        if let Err(e) = BatchRequest::from_value(json!({ "specs": [spec] }), limits) {
            let field = match e.field.strip_prefix("specs[0]") {
                Some(rest) => format!("specs[{i}]{rest}"),
                None => e.field,
            };
            found.push(FieldError::new(field, e.message));
        }
    }
    if files_read && let Err(e) = BatchRequest::from_value(body, limits) {
        // Its first fault may be a spec's, already listed.
        if !found.contains(&e) {
            found.insert(0, e);
        }
    }
    found
}

/// A parser's message without the ` at line L column C` it holds (the
/// position is shown in front): serde_json ends with it, libyaml puts it
/// before its context (`… at line 8 column 4, while parsing a block
/// collection`).
fn without_position(message: &str) -> String {
    let mut from = 0;
    while let Some(found) = message[from..].find(" at line ") {
        let start = from + found;
        let rest = &message[start + " at line ".len()..];
        let line_digits = rest.chars().take_while(char::is_ascii_digit).count();
        if line_digits > 0
            && let Some(after) = rest[line_digits..].strip_prefix(" column ")
        {
            let column_digits = after.chars().take_while(char::is_ascii_digit).count();
            if column_digits > 0 {
                return format!("{}{}", &message[..start], &after[column_digits..]);
            }
        }
        from = start + 1;
    }
    message.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(name: &str, text: &str) -> Source {
        Source {
            name: name.into(),
            text: text.into(),
            format: SpecFormat::Yaml,
        }
    }

    const GOOD: &str =
        "kind: function\ntask_description: add\nentry_point: add\ntest_cases:\n  - input: [1, 2]\n    expected: 3\n";

    #[test]
    fn every_broken_spec_is_named_not_only_the_first() {
        let text = "- kind: fastapi\n- kind: function\n  task_description: add\n  entry_point: add\n  test_cases: []\n- kind: lambda\n";
        let verdict = check(&[yaml("s.yaml", text)]);
        let lines: Vec<String> = verdict.problems.iter().map(ToString::to_string).collect();
        assert_eq!(verdict.specs, 3);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(
            lines[0].starts_with("s.yaml:1:9: specs[0].kind: unknown kind \"fastapi\""),
            "{lines:#?}"
        );
        assert!(lines[1].starts_with("s.yaml:5:3: specs[1].test_cases:"), "{lines:#?}");
        assert!(lines[2].starts_with("s.yaml:6:9: specs[2].kind:"), "{lines:#?}");
    }

    #[test]
    fn a_problem_is_traced_to_the_file_of_a_directory_that_holds_it() {
        let second = "name: b\noptions:\n  max_attempts: 0\nspecs:\n  - kind: function\n";
        let verdict = check(&[yaml("a.yaml", GOOD), yaml("b.yaml", second)]);
        let lines: Vec<String> = verdict.problems.iter().map(ToString::to_string).collect();
        assert!(
            lines
                .iter()
                .any(|l| l == "b.yaml:3:17: options.max_attempts: must be between 1 and 20"),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l == "b.yaml:5:5: specs[1].task_description: missing field"),
            "{lines:#?}"
        );
    }

    #[test]
    fn a_position_is_taken_off_the_end_of_a_parsers_message_only() {
        assert_eq!(without_position("expected value at line 3 column 7"), "expected value");
        assert_eq!(
            without_position(
                "did not find expected '-' indicator at line 8 column 4, while parsing a block collection"
            ),
            "did not find expected '-' indicator, while parsing a block collection"
        );
        assert_eq!(without_position("it is at line end"), "it is at line end");
    }
}
