//! Turning the model's answer into files.
//!
//! Kiln asks for `{"files": [{"path", "content"}], "notes"?}`, but real models
//! drift, so the parser reads an answer the way a careful person would, in
//! this order:
//! 1. A JSON object anywhere in the answer: bare, in a ```` ```json ```` fence,
//!    or among prose that has braces of its own. Objects are found by a
//!    balanced, string-aware scan from each `{` that can start one, and tried
//!    in order until one is an accepted shape: `files` as a list of
//!    `{"path", "content"}` (or a map from path to content), or the seed
//!    function format `{"function_name", "source_code", "imports"}`, which
//!    becomes `solution.py`. Every candidate is first decoded strictly; only
//!    when none is accepted are they decoded again after repairing common
//!    slips (`relax`): raw newlines, tabs and invalid escapes inside
//!    strings, trailing commas, single- or triple-quoted strings.
//! 2. Markdown fenced blocks labelled by path: in the info string
//!    (```` ```python app/main.py ````, `title="…"`, `python:app/main.py`),
//!    on the line before the fence (`### app/main.py`, `**File:
//!    app/main.py**`, ``Create `app/main.py`:``), or as the block's first line
//!    (`# file: app/main.py`). Each such block is a file.
//! 3. For a function spec without a labelled `solution.py`: among the
//!    unlabelled Python blocks, the last one that defines the entry point at
//!    module level is `solution.py` (so an "example usage" block that only
//!    calls the function never replaces the solution); a lone Python block is
//!    `solution.py` whatever it defines, so validation can say what it lacks.
//!
//! Anything else is the model's failure, reported with what was expected.
//!
//! The parser is total and linear in the answer's length: it never panics,
//! makes at most `MAX_UNCLOSED_SCANS` scans that run to the answer's end,
//! decodes at most `MAX_CANDIDATES` objects and `BUDGET` times the answer's
//! bytes per pass, and parses at most `MAX_CANDIDATES` Python blocks, so a
//! hostile megabyte of `{` or of fences is rejected quickly.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::Value;

use crate::files::File;
use crate::spec::Spec;
use crate::validate::python::Module;

/// Why an answer could not be turned into files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// What the answer is for, as far as parsing needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected<'a> {
    /// A function spec: `solution.py`, which should define `entry_point`
    /// when the spec names one.
    Function { entry_point: Option<&'a str> },
    /// A service spec: a project of several files.
    Service,
}

impl<'a> From<&'a Spec> for Expected<'a> {
    fn from(spec: &'a Spec) -> Expected<'a> {
        match spec {
            Spec::Function(f) => Expected::Function {
                entry_point: f.entry_point.as_deref(),
            },
            Spec::Service(_) => Expected::Service,
        }
    }
}

const EXPECTED: &str = r#"expected a JSON object {"files": [{"path": "...", "content": "..."}]}"#;

/// Scans from a `{` that reach the end of the answer unclosed; each is
/// linear in the answer's length. (Closed scans cover disjoint spans, so
/// together they are linear too.)
const MAX_UNCLOSED_SCANS: usize = 4;
/// JSON objects decoded per pass, outermost first.
const MAX_CANDIDATES: usize = 64;
/// Candidates repaired and decoded again by the lenient pass.
const MAX_LENIENT: usize = 16;
/// Bytes decoded per pass, in multiples of the answer's length.
const BUDGET: usize = 4;

/// Extracts the files from an answer.
pub fn parse_response(content: &str, expected: Expected<'_>) -> Result<Vec<File>, ParseError> {
    let trimmed = content.trim();
    if trimmed.is_empty() {
        return Err(ParseError(format!("the answer was empty; {EXPECTED}")));
    }
    let mut errors = Errors::default();
    if let Some(files) = from_json_objects(trimmed, &mut errors) {
        return finish(files);
    }
    let blocks = fenced_blocks(trimmed);
    let mut files: Vec<File> = blocks
        .iter()
        .filter_map(|b| b.path.as_ref().map(|p| File::new(p.clone(), b.body.clone())))
        .collect();
    if let Expected::Function { entry_point } = expected
        && !files.iter().any(|f| clean_path(&f.path) == "solution.py")
    {
        let python: Vec<&Block> = blocks.iter().filter(|b| b.path.is_none() && b.is_python()).collect();
        match solution_block(&python, entry_point) {
            Ok(Some(body)) => files.push(File::new("solution.py", body)),
            Err(e) if files.is_empty() => errors.blocks = Some(e),
            // Labelled files without solution.py: validation says what is missing.
            Ok(None) | Err(_) => {}
        }
    }
    if !files.is_empty() {
        return finish(files);
    }
    Err(errors.best())
}

/// The body of the block that is the solution, among unlabelled Python
/// blocks: the last that defines the entry point, else a lone block.
fn solution_block(python: &[&Block], entry_point: Option<&str>) -> Result<Option<String>, String> {
    match python {
        [] => Ok(None),
        [only] => Ok(Some(only.body.clone())),
        several => {
            // Each block costs a Python parse: a block that does not even
            // mention the name is skipped unparsed, and at most
            // `MAX_CANDIDATES` are parsed.
            let mut parses = 0;
            let defines = |b: &&&Block| {
                if entry_point.is_some_and(|name| !b.body.contains(name)) || parses >= MAX_CANDIDATES {
                    return false;
                }
                parses += 1;
                let file = File::new("solution.py", b.body.clone());
                let module = Module::parse(&file);
                match entry_point {
                    Some(name) => module.defines(name),
                    // Without a name, a block that defines any function or
                    // class is a solution, one that only calls is an example.
                    None => module
                        .body()
                        .iter()
                        .any(|s| s.is_function_def_stmt() || s.is_class_def_stmt()),
                }
            };
            match several.iter().rev().find(defines) {
                Some(block) => Ok(Some(block.body.clone())),
                None => Err(format!(
                    "the answer has {} Python blocks and none defines {} at module level; put the whole solution in one block, or {EXPECTED}",
                    several.len(),
                    entry_point.map_or_else(|| "a function".to_owned(), |n| format!("`{n}`")),
                )),
            }
        }
    }
}

/// The diagnostics worth reporting when nothing was accepted, most telling
/// first.
#[derive(Default)]
struct Errors {
    /// An object with `files` or `source_code` that has the wrong shape.
    shape: Option<String>,
    /// Invalid JSON in a candidate that names `files` or `source_code`.
    answer_syntax: Option<String>,
    /// Several Python blocks, none of them the solution.
    blocks: Option<String>,
    /// A JSON object with none of the accepted keys.
    keys: Option<String>,
    /// Invalid JSON elsewhere.
    other_syntax: Option<String>,
}

impl Errors {
    fn best(self) -> ParseError {
        ParseError(
            self.shape
                .or(self.answer_syntax)
                .or(self.blocks)
                .or(self.keys)
                .or(self.other_syntax)
                .unwrap_or_else(|| format!("no files found in the answer; {EXPECTED}")),
        )
    }
}

/// Tries every JSON object candidate strictly, then leniently.
///
/// Each pass decodes at most [`BUDGET`] times the answer's length, so deeply
/// nested candidates (each nearly the whole answer) cost linear time.
fn from_json_objects(text: &str, errors: &mut Errors) -> Option<Vec<File>> {
    let candidates = object_spans(text);
    let within = |budget: &mut usize, &&(start, end): &&(usize, usize)| {
        let fits = end - start <= *budget;
        *budget = budget.saturating_sub(end - start);
        fits
    };
    let mut budget = BUDGET.saturating_mul(text.len());
    for &(start, end) in candidates.iter().take_while(|c| within(&mut budget, c)) {
        let candidate = &text[start..end];
        match serde_json::from_str::<Value>(candidate) {
            Ok(value) => match accepted(value) {
                Ok(files) => return Some(files),
                Err(Rejected::Shape(e)) => {
                    errors.shape.get_or_insert(e);
                }
                Err(Rejected::Keys(e)) => {
                    errors.keys.get_or_insert(e);
                }
            },
            Err(e) => {
                let (line, column) = position(text, start, e.line(), e.column());
                let message = format!("invalid JSON at line {line} column {column}: {e}");
                if names_an_answer(candidate) {
                    errors.answer_syntax.get_or_insert(message);
                } else {
                    errors.other_syntax.get_or_insert(message);
                }
            }
        }
    }
    let mut budget = BUDGET.saturating_mul(text.len());
    for &(start, end) in candidates
        .iter()
        .take(MAX_LENIENT)
        .take_while(|c| within(&mut budget, c))
    {
        if let Some(repaired) = relax(&text[start..end])
            && let Ok(value) = serde_json::from_str::<Value>(&repaired)
        {
            match accepted(value) {
                Ok(files) => return Some(files),
                // Once repaired, its shape is what is wrong with it.
                Err(Rejected::Shape(e)) => errors.shape = errors.shape.take().or(Some(e)),
                Err(Rejected::Keys(_)) => {}
            }
        }
    }
    None
}

fn names_an_answer(candidate: &str) -> bool {
    ["files", "source_code"]
        .iter()
        .any(|k| candidate.contains(&format!("\"{k}\"")) || candidate.contains(&format!("'{k}'")))
}

/// Line and column in `text` of a serde position inside the candidate
/// starting at byte `start`.
fn position(text: &str, start: usize, line: usize, column: usize) -> (usize, usize) {
    let before = &text[..start];
    let lines_before = before.matches('\n').count();
    if line == 1 {
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (lines_before + 1, before[line_start..].chars().count() + column)
    } else {
        (lines_before + line, column)
    }
}

/// Byte spans of the JSON objects the answer may hold, outermost first, in
/// order of their start, at most [`MAX_CANDIDATES`].
///
/// A scan starts at a `{` followed by a quote (the start of a key) and
/// tracks strings, so braces inside strings do not count; every `}` closes
/// the innermost open `{` and yields one span, and the scan ends when the
/// first brace closes. A scan that reaches the end unclosed yields the rest
/// of the answer once (a truncated object, so its error can be reported),
/// and the next scan starts just after it, since the `{` it began at may
/// have been prose; at most [`MAX_UNCLOSED_SCANS`] such scans are made.
fn object_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut unclosed = 0;
    let mut from = 0;
    while unclosed < MAX_UNCLOSED_SCANS {
        let Some(start) = next_object_start(bytes, from) else {
            break;
        };
        let mut stack = vec![start];
        let mut in_string = false;
        let mut escaped = false;
        let mut closed_at = None;
        let mut i = start + 1;
        while i < bytes.len() {
            let b = bytes[i];
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
            } else if b == b'"' {
                in_string = true;
            } else if b == b'{' {
                stack.push(i);
            } else if b == b'}' {
                if let Some(open) = stack.pop() {
                    spans.push((open, i + 1));
                }
                if stack.is_empty() {
                    closed_at = Some(i + 1);
                    break;
                }
            }
            i += 1;
        }
        if let Some(end) = closed_at {
            from = end;
        } else {
            if unclosed == 0 {
                spans.push((start, bytes.len()));
            }
            unclosed += 1;
            from = start + 1;
        }
    }
    spans.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    spans.dedup();
    spans.truncate(MAX_CANDIDATES);
    spans
}

/// The next `{` at or after `from` that is followed, after whitespace, by a
/// quote: the only way a non-empty JSON object (or its common slips) starts.
fn next_object_start(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < bytes.len() {
        let offset = bytes[i..].iter().position(|&b| b == b'{')?;
        let at = i + offset;
        let next = bytes[at + 1..].iter().find(|b| !b.is_ascii_whitespace());
        if matches!(next, Some(b'"' | b'\'')) {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

/// Repairs the JSON slips models commonly make, or `None` when there is
/// nothing to repair: raw control characters (newlines, tabs) and invalid
/// escapes (`\s` of a regex) inside strings, trailing commas, and strings in
/// single quotes or Python triple quotes.
fn relax(text: &str) -> Option<String> {
    #[derive(PartialEq)]
    enum In {
        Code,
        Double,
        Single,
        Triple,
    }
    let mut out = String::with_capacity(text.len() + text.len() / 16);
    let mut changed = false;
    let mut state = In::Code;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let rest = &text[i..];
        match state {
            In::Code => match c {
                '"' if rest.starts_with("\"\"\"") => {
                    out.push('"');
                    chars.next();
                    chars.next();
                    state = In::Triple;
                    changed = true;
                }
                '"' => {
                    out.push('"');
                    state = In::Double;
                }
                '\'' => {
                    out.push('"');
                    state = In::Single;
                    changed = true;
                }
                ',' if rest[1..].trim_start().starts_with(['}', ']']) => changed = true,
                _ => out.push(c),
            },
            In::Double | In::Single => match c {
                '\\' => {
                    let next = chars.peek().map(|&(_, n)| n);
                    match next {
                        Some('\'') if state == In::Single => {
                            out.push('\'');
                            chars.next();
                        }
                        Some('"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't') => {
                            out.push('\\');
                            out.push(next.unwrap_or_default());
                            chars.next();
                        }
                        Some('u') if rest.get(2..6).is_some_and(|h| h.chars().all(|d| d.is_ascii_hexdigit())) => {
                            out.push('\\');
                        }
                        // Anything else was meant literally.
                        _ => {
                            out.push_str("\\\\");
                            changed = true;
                        }
                    }
                }
                '"' if state == In::Double => {
                    out.push('"');
                    state = In::Code;
                }
                '\'' if state == In::Single => {
                    out.push('"');
                    state = In::Code;
                }
                '"' => out.push_str("\\\""),
                _ => changed |= push_string_char(&mut out, c),
            },
            In::Triple => match c {
                '"' if rest.starts_with("\"\"\"") => {
                    out.push('"');
                    chars.next();
                    chars.next();
                    state = In::Code;
                }
                '"' => out.push_str("\\\""),
                // Code in triple quotes is meant as written.
                '\\' => out.push_str("\\\\"),
                _ => {
                    push_string_char(&mut out, c);
                }
            },
        }
    }
    changed.then_some(out)
}

/// Pushes a character of a JSON string, escaping control characters; true
/// when it had to.
fn push_string_char(out: &mut String, c: char) -> bool {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if u32::from(c) < 0x20 => {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        }
        c => {
            out.push(c);
            return false;
        }
    }
    true
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

/// Why a decoded JSON value is not an answer.
enum Rejected {
    /// It has an answer's key but not its shape.
    Shape(String),
    /// It has none of an answer's keys.
    Keys(String),
}

fn accepted(value: Value) -> Result<Vec<File>, Rejected> {
    if let Some(files) = value.get("files") {
        // `{"files": {"app/main.py": "…"}}` is a common drift.
        let files: Vec<File> = if files.is_object() {
            let by_path: BTreeMap<String, String> = serde_path_to_error::deserialize(files)
                .map_err(|e| Rejected::Shape(format!("{} at `files.{}`; {EXPECTED}", e.inner(), e.path())))?;
            by_path
                .into_iter()
                .map(|(path, content)| File::new(path, content))
                .collect()
        } else {
            let answer: FilesAnswer = serde_path_to_error::deserialize(value)
                .map_err(|e| Rejected::Shape(format!("{} at `{}`; {EXPECTED}", e.inner(), e.path())))?;
            answer.files.into_iter().map(|f| File::new(f.path, f.content)).collect()
        };
        // An empty list is more likely the format quoted in prose than the
        // answer, so the search goes on.
        if files.is_empty() {
            return Err(Rejected::Shape(format!("the answer lists no files; {EXPECTED}")));
        }
        return Ok(files);
    }
    if value.get("source_code").is_some() {
        let answer: SeedFunctionAnswer = serde_path_to_error::deserialize(value)
            .map_err(|e| Rejected::Shape(format!("{} at `{}` in the function format", e.inner(), e.path())))?;
        return Ok(vec![File::new("solution.py", seed_source(answer))]);
    }
    let keys: Vec<String> = value
        .as_object()
        .map(|o| o.keys().map(|k| format!("`{k}`")).collect())
        .unwrap_or_default();
    Err(Rejected::Keys(format!(
        "the JSON answer has no `files` (found {}); {EXPECTED}",
        if keys.is_empty() {
            "no object".to_owned()
        } else {
            keys.join(", ")
        }
    )))
}

fn seed_source(answer: SeedFunctionAnswer) -> String {
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
    if imports.is_empty() {
        format!("{body}\n")
    } else {
        format!("{imports}\n\n{body}\n")
    }
}

fn clean_path(path: &str) -> &str {
    path.trim().trim_start_matches("./")
}

fn finish(files: Vec<File>) -> Result<Vec<File>, ParseError> {
    if files.is_empty() {
        return Err(ParseError(format!("the answer lists no files; {EXPECTED}")));
    }
    Ok(files
        .into_iter()
        .map(|f| File::new(clean_path(&f.path).to_owned(), f.content))
        .collect())
}

struct Block {
    lang: String,
    path: Option<String>,
    body: String,
}

impl Block {
    fn is_python(&self) -> bool {
        matches!(self.lang.as_str(), "python" | "py" | "python3" | "")
    }
}

/// (info string, line before the fence, body) of every fenced block. A
/// fence is three or more backticks or tildes, closed by a line of at least
/// as many of the same character.
fn fenced(text: &str) -> Vec<(&str, &str, &str)> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut previous_line = "";
    let mut open: Option<(&str, usize, &str, &str, usize)> = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        match open {
            None => {
                if let Some((fence, info)) = fence_start(trimmed) {
                    open = Some((fence, fence.len(), info, previous_line.trim(), offset + line.len()));
                }
            }
            Some((fence, length, info, before, start)) => {
                let closes = trimmed.len() >= length && trimmed.chars().all(|c| fence.starts_with(c));
                if closes {
                    out.push((info, before, &text[start..offset]));
                    open = None;
                }
            }
        }
        if !trimmed.is_empty() {
            previous_line = line;
        }
        offset += line.len();
    }
    out
}

/// The fence (its run of backticks or tildes) and info string of a line
/// that opens a fenced block.
fn fence_start(line: &str) -> Option<(&str, &str)> {
    let c = line.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let length = line.len() - line.trim_start_matches(c).len();
    (length >= 3).then(|| (&line[..length], line[length..].trim()))
}

fn fenced_blocks(text: &str) -> Vec<Block> {
    fenced(text)
        .into_iter()
        .map(|(info, before, body)| {
            let (lang, labelled) = info_label(info);
            let path = labelled
                .or_else(|| heading_path(before))
                .or_else(|| first_line_path(body));
            Block {
                lang,
                path,
                body: body.to_owned(),
            }
        })
        .collect()
}

/// The language and path an info string names: `python`, `app/main.py`,
/// `python app/main.py`, `python title="app/main.py"`, `python:app/main.py`.
fn info_label(info: &str) -> (String, Option<String>) {
    let mut words = info.split_whitespace();
    let first = words.next().unwrap_or("");
    if let Some((lang, path)) = first.split_once(':')
        && looks_like_path(path)
    {
        return (lang.to_ascii_lowercase(), Some(path.to_owned()));
    }
    if looks_like_path(first) {
        return (String::new(), Some(first.to_owned()));
    }
    let labelled = words
        .map(|w| {
            let value = w.split_once('=').map_or(w, |(key, value)| {
                if matches!(key, "title" | "path" | "file" | "filename") {
                    value
                } else {
                    ""
                }
            });
            value.trim_matches(|c| c == '"' || c == '\'')
        })
        .find(|w| looks_like_path(w))
        .map(str::to_owned);
    (first.to_ascii_lowercase(), labelled)
}

/// A path named on the line before a fence: `### app/main.py`, `**app/main.py**`,
/// `` `app/main.py`: ``, `File: app/main.py`, `2. **File: `app/main.py`**`, or
/// a sentence ending in a colon that names one file, ``Create `app/main.py`:``.
fn heading_path(line: &str) -> Option<String> {
    let mut cleaned = line.trim().trim_start_matches('#').trim();
    cleaned = cleaned.trim_start_matches(['-', '*', '+']).trim_start();
    if let Some((number, rest)) = cleaned.split_once(['.', ')'])
        && !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit())
    {
        cleaned = rest.trim_start();
    }
    let strip = |s: &str| -> String {
        let mut s = s
            .trim()
            .trim_matches(|c| c == '*' || c == '_' || c == '`' || c == ':')
            .trim()
            .to_owned();
        for prefix in ["file:", "filename:", "path:", "file "] {
            if s.len() > prefix.len() && s.get(..prefix.len()).is_some_and(|h| h.eq_ignore_ascii_case(prefix)) {
                s = s[prefix.len()..].to_owned();
                break;
            }
        }
        s.trim()
            .trim_matches(|c| c == '*' || c == '_' || c == '`' || c == ':')
            .trim()
            .to_owned()
    };
    let whole = strip(cleaned);
    if looks_like_path(&whole) {
        return Some(whole);
    }
    if !line.trim_end().ends_with(':') && !line.trim_start().starts_with('#') {
        return None;
    }
    let quoted: Vec<&str> = line.split('`').skip(1).step_by(2).filter(|w| known_file(w)).collect();
    match quoted.as_slice() {
        [one] => Some((*one).to_owned()),
        _ => None,
    }
}

/// A path named by a block's first line: `# file: app/main.py`, `# app/main.py`.
fn first_line_path(body: &str) -> Option<String> {
    let first = body.lines().next()?.trim().strip_prefix('#')?.trim();
    let named = ["file:", "filename:", "path:"]
        .iter()
        .find_map(|p| {
            first
                .get(..p.len())
                .filter(|h| h.eq_ignore_ascii_case(p))
                .map(|_| first[p.len()..].trim())
        })
        .unwrap_or(first);
    known_file(named).then(|| named.to_owned())
}

/// A path with an extension or name a project file has, so that a dotted
/// word (`math.sqrt`) is not taken for one.
fn known_file(s: &str) -> bool {
    const EXTENSIONS: [&str; 14] = [
        "py", "txt", "toml", "cfg", "ini", "yml", "yaml", "json", "md", "sh", "sql", "html", "css", "env",
    ];
    looks_like_path(s) && (is_known_name(s) || s.rsplit_once('.').is_some_and(|(_, ext)| EXTENSIONS.contains(&ext)))
}

fn is_known_name(s: &str) -> bool {
    let known_names = ["Dockerfile", "requirements.txt", "docker-compose.yml", "Makefile"];
    known_names.contains(&s.rsplit('/').next().unwrap_or(s))
}

fn looks_like_path(s: &str) -> bool {
    !s.is_empty()
        && !s.contains(|c: char| c.is_whitespace() || c == ':')
        && (is_known_name(s)
            || s.rsplit_once('.').is_some_and(|(stem, ext)| {
                !stem.is_empty() && !ext.is_empty() && ext.chars().all(|c| c.is_ascii_alphanumeric())
            }))
}
#[cfg(test)]
mod tests {
    use super::*;

    const FUNCTION: Expected<'static> = Expected::Function { entry_point: Some("f") };

    #[test]
    fn the_files_json_object_is_parsed() {
        let files = parse_response(
            r#"{"files": [{"path": "solution.py", "content": "def f():\n    return 1\n"}], "notes": "x"}"#,
            FUNCTION,
        )
        .unwrap();
        assert_eq!(files, vec![File::new("solution.py", "def f():\n    return 1\n")]);
    }

    #[test]
    fn json_inside_a_fence_or_prose_is_found() {
        let answer =
            "Here you go:\n```json\n{\"files\": [{\"path\": \"./a.py\", \"content\": \"x = 1\\n\"}]}\n```\nEnjoy.";
        assert_eq!(
            parse_response(answer, Expected::Service).unwrap(),
            vec![File::new("a.py", "x = 1\n")]
        );
    }

    #[test]
    fn the_seed_function_format_becomes_solution_py() {
        let answer = r#"{"function_name": "f", "source_code": "def f(x):\n    return math.sqrt(x)", "imports": ["math", "from typing import List"]}"#;
        let files = parse_response(answer, FUNCTION).unwrap();
        assert_eq!(files[0].path, "solution.py");
        assert_eq!(
            files[0].content,
            "import math\nfrom typing import List\n\ndef f(x):\n    return math.sqrt(x)\n"
        );
    }

    #[test]
    fn markdown_blocks_labelled_by_path_are_files() {
        let answer = "### app/main.py\n```python\nfrom fastapi import FastAPI\napp = FastAPI()\n```\n\n```text requirements.txt\nfastapi==0.165.0\n```\n\n```Dockerfile\nFROM python:3.11-slim\n```\n";
        let files = parse_response(answer, Expected::Service).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["app/main.py", "requirements.txt", "Dockerfile"]);
        assert_eq!(files[0].content, "from fastapi import FastAPI\napp = FastAPI()\n");
    }

    #[test]
    fn a_single_python_block_is_the_solution_of_a_function_spec() {
        let answer = "Sure!\n```python\ndef f():\n    return 2\n```";
        assert_eq!(parse_response(answer, FUNCTION).unwrap()[0].path, "solution.py");
        assert!(parse_response(answer, Expected::Service).is_err());
    }

    #[test]
    fn unparseable_answers_say_what_was_expected() {
        let e = parse_response("I cannot help with that.", FUNCTION).unwrap_err();
        assert!(e.0.contains(r#"expected a JSON object {"files""#), "{e}");
        let e = parse_response(r#"{"code": "x"}"#, FUNCTION).unwrap_err();
        assert!(e.0.contains("has no `files` (found `code`)"), "{e}");
        let e = parse_response(r#"{"files": [{"path": "a.py"}]}"#, FUNCTION).unwrap_err();
        assert!(e.0.contains("missing field `content`"), "{e}");
        let e = parse_response(r#"{"files": [{"path": "a.py", "content": "x"#, FUNCTION).unwrap_err();
        assert!(e.0.contains("invalid JSON"), "{e}");
        let e = parse_response(r#"{"files": []}"#, FUNCTION).unwrap_err();
        assert!(e.0.contains("lists no files"), "{e}");
        assert!(parse_response("  ", FUNCTION).unwrap_err().0.contains("empty"));
    }

    #[test]
    fn braces_inside_json_strings_and_escaped_quotes_do_not_end_the_object() {
        let content = "d = {\"a\": {\"b\": \"}\"}}\nprint(\"\\\"{\")\n";
        let answer = format!(
            "Some prose with a brace }} first.\n{}\nDone.",
            serde_json::json!({"files": [{"path": "solution.py", "content": content}]})
        );
        let files = parse_response(&answer, FUNCTION).unwrap();
        assert_eq!(files, vec![File::new("solution.py", content)]);
    }

    #[test]
    fn json_in_a_fence_followed_by_prose_with_braces_is_found() {
        let answer = "Here:\n```json\n{\"files\": [{\"path\": \"solution.py\", \"content\": \"def f():\\n    return {}\\n\"}]}\n```\nIt returns `{}`; for sets use {1, 2} or {\"k\": 1}.";
        let files = parse_response(answer, FUNCTION).unwrap();
        assert_eq!(files[0].content, "def f():\n    return {}\n");
    }

    #[test]
    fn an_object_that_is_not_an_answer_is_skipped_for_the_next_one() {
        let answer = "Config {\"debug\": true} aside, and unlike {\"files\": []}, the answer is {\"files\": [{\"path\": \"a.py\", \"content\": \"x\"}]}";
        assert_eq!(
            parse_response(answer, Expected::Service).unwrap(),
            vec![File::new("a.py", "x")]
        );
    }

    #[test]
    fn raw_newlines_tabs_and_invalid_escapes_in_strings_are_repaired() {
        let answer = "{\"files\": [{\"path\": \"solution.py\", \"content\": \"import re\ndef f(s):\n\treturn re.split(r'\\s+', s)\n\"}]}";
        let files = parse_response(answer, FUNCTION).unwrap();
        assert_eq!(
            files[0].content,
            "import re\ndef f(s):\n\treturn re.split(r'\\s+', s)\n"
        );
    }

    #[test]
    fn trailing_commas_single_and_triple_quotes_are_repaired() {
        let answer = "{'files': [{'path': 'solution.py', 'content': \"\"\"def f():\n    return \"it's\"\n\"\"\",},],}";
        let files = parse_response(answer, FUNCTION).unwrap();
        assert_eq!(files[0].content, "def f():\n    return \"it's\"\n");
    }

    #[test]
    fn a_strictly_valid_answer_wins_over_an_earlier_one_that_needs_repair() {
        let answer = "Draft: {'files': [{'path': 'solution.py', 'content': 'draft'}]}\nFinal: {\"files\": [{\"path\": \"solution.py\", \"content\": \"final\"}]}";
        assert_eq!(parse_response(answer, FUNCTION).unwrap()[0].content, "final");
    }

    #[test]
    fn files_given_as_a_map_from_path_to_content_are_accepted() {
        let files = parse_response(
            r#"{"files": {"app/main.py": "x", "./README.md": "y"}}"#,
            Expected::Service,
        )
        .unwrap();
        assert_eq!(files, vec![File::new("README.md", "y"), File::new("app/main.py", "x")]);
    }

    #[test]
    fn the_block_that_defines_the_entry_point_is_chosen_over_an_example() {
        let answer = "```python\nfrom solution import f\nprint(f(2))\n```\nThe code:\n```python\ndef f(x):\n    return x\n```\nUsage:\n```python\nprint(f(3))\n```";
        assert_eq!(
            parse_response(answer, FUNCTION).unwrap(),
            vec![File::new("solution.py", "def f(x):\n    return x\n")]
        );
    }

    #[test]
    fn several_blocks_none_defining_the_entry_point_say_so() {
        let answer = "```python\ndef g():\n    pass\n```\n```python\nprint(g())\n```";
        let e = parse_response(answer, FUNCTION).unwrap_err();
        assert!(e.0.contains("2 Python blocks and none defines `f`"), "{e}");
    }

    #[test]
    fn paths_are_read_from_info_strings_headings_and_first_lines() {
        let answer = "```python:app/a.py\na = 1\n```\n**File: `app/b.py`**\n```python\nb = 2\n```\nCreate `app/c.py`:\n```python\nc = 3\n```\n````python\n# file: app/d.py\nd = '```'\n````\n1. app/e.py\n~~~python\ne = 5\n~~~\nCall `math.sqrt`:\n```python\nimport math\n```\n";
        let files = parse_response(answer, Expected::Service).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["app/a.py", "app/b.py", "app/c.py", "app/d.py", "app/e.py"]);
        assert_eq!(files[3].content, "# file: app/d.py\nd = '```'\n");
    }

    #[test]
    fn a_truncated_answer_reports_invalid_json_at_its_position() {
        let e = parse_response(
            "Here it is:\n{\"files\": [{\"path\": \"a.py\", \"content\": \"x = {",
            FUNCTION,
        )
        .unwrap_err();
        assert!(e.0.starts_with("invalid JSON at line 2 column"), "{e}");
        assert!(e.0.contains("EOF"), "{e}");
    }

    #[test]
    fn a_json_answer_with_the_wrong_shape_says_what_was_expected() {
        let e = parse_response("Sure {x}: {\"files\": \"solution.py\"} {}", FUNCTION).unwrap_err();
        assert!(e.0.contains("at `files`"), "{e}");
        assert!(e.0.contains(EXPECTED), "{e}");
        let e = parse_response(r#"{"function_name": "f"}"#, FUNCTION).unwrap_err();
        assert!(e.0.contains("has no `files` (found `function_name`)"), "{e}");
        let e = parse_response("{'files': [{'path': 'a.py',}]}", Expected::Service).unwrap_err();
        assert!(e.0.contains("missing field `content` at `files[0]`"), "{e}");
        let e = parse_response("{\"files\": {\"a.py\": 1}}", Expected::Service).unwrap_err();
        assert!(e.0.contains("at `files.a.py`"), "{e}");
    }

    #[test]
    fn a_megabyte_of_hostile_braces_is_rejected_quickly_without_panicking() {
        let hostile = [
            "{\"".repeat(500_000),
            "{\"a\":".repeat(200_000) + &"}".repeat(200_000),
            "{'a': [".repeat(150_000),
            "{\"a\": \"\\".repeat(250_000),
            "```\n{\"files\n".repeat(100_000),
            format!("{}{}", "é{\"".repeat(200_000), "\u{0}"),
        ];
        for answer in hostile {
            let started = std::time::Instant::now();
            let result = parse_response(&answer, FUNCTION);
            assert!(result.is_err());
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{} bytes starting {:?} took {:?}",
                answer.len(),
                &answer[..12],
                started.elapsed()
            );
        }
    }
}
