//! The requirements-file syntax pip reads (comments, `\` continuations,
//! options) and the PEP 508 grammar of each requirement (name, extras,
//! version specifiers, URL, environment markers), with the exact column of
//! every problem. Syntax only: what a generated service may list is
//! [`super::requirements`]'s business, and the runtime's own pins are read
//! with the same parser by [`super::packages`].

use crate::files::File;
use crate::report::Diagnostic;

/// One PEP 508 requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub name: String,
    pub extras: Vec<String>,
    pub specifiers: Vec<Specifier>,
    /// `name @ url`.
    pub url: Option<String>,
    /// The environment marker after `;`, as written.
    pub marker: Option<String>,
}

/// `op version`, e.g. `==` `2.1.9`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Specifier {
    pub op: String,
    pub version: String,
}

impl Requirement {
    /// The one version an `==` pin allows, if the requirement is pinned.
    pub fn pinned_version(&self) -> Option<&str> {
        match self.specifiers.as_slice() {
            [Specifier { op, version }] if op == "==" && !version.contains('*') => Some(version),
            _ => None,
        }
    }
}

/// Why a requirement does not parse: the 0-based character offset of the
/// problem in the requirement text, and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub offset: usize,
    pub message: String,
}

const COMPARISONS: [&str; 8] = ["===", "==", "!=", "~=", "<=", ">=", "<", ">"];
const MARKER_VARIABLES: [&str; 12] = [
    "python_version",
    "python_full_version",
    "os_name",
    "sys_platform",
    "platform_release",
    "platform_system",
    "platform_version",
    "platform_machine",
    "platform_python_implementation",
    "implementation_name",
    "implementation_version",
    "extra",
];

/// Parses one PEP 508 requirement (`name[extras] specifiers ; marker` or
/// `name[extras] @ url ; marker`).
pub fn parse(text: &str) -> Result<Requirement, SyntaxError> {
    let mut p = Parser {
        chars: text.chars().collect(),
        at: 0,
    };
    p.skip_ws();
    let name = p.identifier().ok_or_else(|| p.error("expected a package name"))?;
    p.skip_ws();
    let mut extras = Vec::new();
    if p.eat('[') {
        p.skip_ws();
        if !p.eat(']') {
            loop {
                p.skip_ws();
                extras.push(p.identifier().ok_or_else(|| p.error("expected an extra name"))?);
                p.skip_ws();
                if p.eat(']') {
                    break;
                }
                if !p.eat(',') {
                    return Err(p.error("expected `,` or `]` in the extras"));
                }
            }
        }
        p.skip_ws();
    }
    let mut requirement = Requirement {
        name,
        extras,
        specifiers: Vec::new(),
        url: None,
        marker: None,
    };
    if p.eat('@') {
        p.skip_ws();
        let start = p.at;
        while p.peek().is_some_and(|c| !c.is_whitespace()) {
            p.at += 1;
        }
        if p.at == start {
            return Err(p.error("expected a URL after `@`"));
        }
        requirement.url = Some(p.chars[start..p.at].iter().collect());
        let before = p.at;
        p.skip_ws();
        if p.peek() == Some(';') && p.at == before {
            return Err(p.error("a URL requirement needs a space before `;`"));
        }
    } else {
        let parenthesised = p.eat('(');
        if parenthesised || p.comparison_ahead() {
            loop {
                p.skip_ws();
                requirement.specifiers.push(p.specifier()?);
                p.skip_ws();
                if !p.eat(',') {
                    break;
                }
            }
            if parenthesised && !p.eat(')') {
                return Err(p.error("expected `)` to close the version specifiers"));
            }
            p.skip_ws();
        }
    }
    if p.eat(';') {
        p.skip_ws();
        let start = p.at;
        p.marker_or()?;
        p.skip_ws();
        requirement.marker = Some(p.chars[start..p.at].iter().collect::<String>().trim().to_owned());
    }
    if let Some(c) = p.peek() {
        return Err(p.error(&format!("unexpected `{c}`")));
    }
    Ok(requirement)
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn rest_starts_with(&self, s: &str) -> bool {
        s.chars()
            .enumerate()
            .all(|(i, c)| self.chars.get(self.at + i) == Some(&c))
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c == ' ' || c == '\t') {
            self.at += 1;
        }
    }

    fn error(&self, message: &str) -> SyntaxError {
        let found = match self.peek() {
            Some(c) => format!(", found `{c}`"),
            None => ", found the end of the line".to_owned(),
        };
        SyntaxError {
            offset: self.at,
            message: if message.starts_with("unexpected") {
                message.to_owned()
            } else {
                format!("{message}{found}")
            },
        }
    }

    /// PEP 508 identifier: letters and digits, with `.`, `-`, `_` inside.
    fn identifier(&mut self) -> Option<String> {
        let start = self.at;
        if !self.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            self.at += 1;
        }
        while !self.chars[self.at - 1].is_ascii_alphanumeric() {
            self.at -= 1;
        }
        Some(self.chars[start..self.at].iter().collect())
    }

    fn comparison_ahead(&self) -> bool {
        COMPARISONS.iter().any(|op| self.rest_starts_with(op))
    }

    fn comparison(&mut self) -> Option<&'static str> {
        let op = COMPARISONS.iter().find(|op| self.rest_starts_with(op))?;
        self.at += op.chars().count();
        Some(op)
    }

    fn specifier(&mut self) -> Result<Specifier, SyntaxError> {
        let op = self
            .comparison()
            .ok_or_else(|| self.error("expected a version comparison (`==`, `>=`, …)"))?;
        self.skip_ws();
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '*' | '+' | '!' | '-' | '_'))
        {
            self.at += 1;
        }
        if self.at == start {
            return Err(self.error(&format!("expected a version after `{op}`")));
        }
        Ok(Specifier {
            op: op.to_owned(),
            version: self.chars[start..self.at].iter().collect(),
        })
    }

    fn marker_or(&mut self) -> Result<(), SyntaxError> {
        self.marker_and()?;
        while self.keyword("or") {
            self.marker_and()?;
        }
        Ok(())
    }

    fn marker_and(&mut self) -> Result<(), SyntaxError> {
        self.marker_expr()?;
        while self.keyword("and") {
            self.marker_expr()?;
        }
        Ok(())
    }

    /// Consumes `word` (surrounded by whitespace or brackets) if it is next.
    fn keyword(&mut self, word: &str) -> bool {
        let save = self.at;
        self.skip_ws();
        if self.rest_starts_with(word) {
            let after = self.chars.get(self.at + word.len()).copied();
            if after.is_none_or(|c| c == ' ' || c == '\t' || c == '(' || c == '\'' || c == '"') {
                self.at += word.len();
                return true;
            }
        }
        self.at = save;
        false
    }

    fn marker_expr(&mut self) -> Result<(), SyntaxError> {
        self.skip_ws();
        if self.eat('(') {
            self.marker_or()?;
            self.skip_ws();
            if !self.eat(')') {
                return Err(self.error("expected `)` in the marker"));
            }
            return Ok(());
        }
        self.marker_value()?;
        self.skip_ws();
        if self.comparison().is_none() && !self.keyword("in") && !(self.keyword("not") && self.keyword("in")) {
            return Err(self.error("expected a marker operator (`==`, `<`, `in`, …)"));
        }
        self.skip_ws();
        self.marker_value()
    }

    fn marker_value(&mut self) -> Result<(), SyntaxError> {
        if let Some(quote) = self.peek().filter(|c| *c == '"' || *c == '\'') {
            self.at += 1;
            while self.peek().is_some_and(|c| c != quote) {
                self.at += 1;
            }
            if !self.eat(quote) {
                return Err(self.error("unterminated string in the marker"));
            }
            return Ok(());
        }
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            self.at += 1;
        }
        let word: String = self.chars[start..self.at].iter().collect();
        if word.is_empty() {
            return Err(self.error("expected a marker variable or a quoted string"));
        }
        if !MARKER_VARIABLES.contains(&word.as_str()) {
            self.at = start;
            return Err(SyntaxError {
                offset: start,
                message: format!(
                    "unknown marker variable `{word}`; expected one of {}",
                    MARKER_VARIABLES.join(", ")
                ),
            });
        }
        Ok(())
    }
}

/// A requirements file split into logical lines: the requirement text with
/// comments and continuations resolved, plus where each character came from.
struct Line {
    text: String,
    /// For each char of `text`: its 1-based (line, column) in the file.
    origin: Vec<(u32, u32)>,
}

impl Line {
    fn position(&self, offset: usize) -> (u32, u32) {
        self.origin
            .get(offset)
            .or(self.origin.last())
            .copied()
            .unwrap_or((0, 0))
    }
}

fn logical_lines(content: &str) -> Vec<Line> {
    let mut out = Vec::new();
    let mut current = Line {
        text: String::new(),
        origin: Vec::new(),
    };
    for (i, raw) in content.lines().enumerate() {
        let number = i as u32 + 1;
        let chars: Vec<char> = raw.chars().collect();
        // pip: a comment starts at `#` at the line start or after whitespace.
        let end = (0..chars.len())
            .find(|&k| chars[k] == '#' && (k == 0 || chars[k - 1].is_whitespace()))
            .unwrap_or(chars.len());
        let mut kept = &chars[..end];
        let continued = end == chars.len() && kept.last() == Some(&'\\');
        if continued {
            kept = &kept[..kept.len() - 1];
        }
        for (k, c) in kept.iter().enumerate() {
            current.text.push(*c);
            current.origin.push((number, k as u32 + 1));
        }
        if !continued {
            out.push(std::mem::replace(
                &mut current,
                Line {
                    text: String::new(),
                    origin: Vec::new(),
                },
            ));
        }
    }
    if !current.text.is_empty() {
        out.push(current);
    }
    out
}

/// Options pip accepts in a requirements file that change nothing about
/// where packages come from.
const HARMLESS_OPTIONS: [&str; 3] = ["--require-hashes", "--only-binary", "--prefer-binary"];

/// A parsed requirements file: each requirement with its position.
pub struct Parsed {
    pub requirements: Vec<(Requirement, u32, u32)>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Parses a requirements file, reporting lines that are not plain
/// requirements (`requirements-syntax`, `requirements-option`,
/// `requirements-url`).
pub fn read(file: &File) -> Parsed {
    let path = file.path.as_str();
    let mut requirements = Vec::new();
    let mut diagnostics = Vec::new();
    for line in logical_lines(&file.content) {
        let leading = line.text.chars().take_while(|c| c.is_whitespace()).count();
        let text = line.text.trim();
        if text.is_empty() {
            continue;
        }
        let (line_no, col) = line.position(leading);
        if text.starts_with('-') {
            let option = text.split([' ', '=', '\t']).next().unwrap_or(text);
            if HARMLESS_OPTIONS.contains(&option) {
                continue;
            }
            diagnostics.push(Diagnostic::error(
                path,
                line_no,
                col,
                "requirements-option",
                option_message(option),
            ));
            continue;
        }
        // pip allows per-requirement options after the requirement
        // (`pkg==1.0 --hash=sha256:…`); hashes are welcome, anything else is not.
        let (requirement_text, options) = split_options(text);
        for (offset, option) in options {
            if option.starts_with("--hash") {
                continue;
            }
            let (l, c) = line.position(leading + offset);
            diagnostics.push(Diagnostic::error(
                path,
                l,
                c,
                "requirements-option",
                option_message(option.split('=').next().unwrap_or(option)),
            ));
        }
        if looks_like_location(requirement_text) {
            diagnostics.push(Diagnostic::error(
                path,
                line_no,
                col,
                "requirements-url",
                format!(
                    "`{requirement_text}` installs from a URL or path; list a package name pinned with `==` from the allowed packages"
                ),
            ));
            continue;
        }
        match parse(requirement_text) {
            Ok(r) => requirements.push((r, line_no, col)),
            Err(e) => {
                let (l, c) = line.position(leading + e.offset);
                diagnostics.push(Diagnostic::error(
                    path,
                    l,
                    c,
                    "requirements-syntax",
                    format!("`{requirement_text}` is not a valid requirement: {}", e.message),
                ));
            }
        }
    }
    Parsed {
        requirements,
        diagnostics,
    }
}

fn option_message(option: &str) -> String {
    let why = match option {
        "-e" | "--editable" => "editable installs build local or remote code",
        "-r" | "--requirement" | "-c" | "--constraint" => "every requirement must be in this file",
        "-i" | "--index-url" | "--extra-index-url" | "--no-index" | "-f" | "--find-links" | "--trusted-host" => {
            "packages come only from the default index"
        }
        _ => "requirements.txt may only list pinned packages",
    };
    format!("option `{option}` is not allowed: {why}")
}

/// Splits `pkg==1 --hash=… --x` into the requirement and its trailing
/// options (with their character offsets in `text`), as pip does: the
/// requirement ends at the first whitespace-preceded `-`.
fn split_options(text: &str) -> (&str, Vec<(usize, &str)>) {
    let mut cut = None;
    let mut options = Vec::new();
    let bytes: Vec<(usize, char)> = text.char_indices().collect();
    for (k, &(byte, c)) in bytes.iter().enumerate() {
        if c == '-' && k > 0 && bytes[k - 1].1.is_whitespace() {
            let option_end = text[byte..].find(char::is_whitespace).map_or(text.len(), |e| byte + e);
            let char_offset = k;
            options.push((char_offset, &text[byte..option_end]));
            cut.get_or_insert(byte);
        }
    }
    match cut {
        Some(byte) => (text[..byte].trim_end(), options),
        None => (text, options),
    }
}

/// True for lines pip reads as a path or URL rather than a name.
fn looks_like_location(text: &str) -> bool {
    let first = text.split_whitespace().next().unwrap_or(text);
    first.contains("://")
        || first.starts_with('.')
        || first.starts_with('/')
        || first.starts_with('~')
        || first.starts_with("git+")
        || [".whl", ".tar.gz", ".zip", ".tar.bz2"]
            .iter()
            .any(|ext| first.ends_with(ext))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Vec<(String, String)> {
        parse(s)
            .unwrap()
            .specifiers
            .into_iter()
            .map(|s| (s.op, s.version))
            .collect()
    }

    #[test]
    fn names_extras_specifiers_and_markers_parse() {
        let r = parse("Foo.Bar_baz-2 [ security , tests ] (>=1.0, <2.0 ) ; python_version >= \"3.8\" and (os_name == 'posix' or extra == \"x\")").unwrap();
        assert_eq!(r.name, "Foo.Bar_baz-2");
        assert_eq!(r.extras, ["security", "tests"]);
        assert_eq!(
            spec("a>=1.0,<2.0"),
            [(">=".into(), "1.0".into()), ("<".into(), "2.0".into())]
        );
        assert_eq!(
            r.marker.as_deref(),
            Some("python_version >= \"3.8\" and (os_name == 'posix' or extra == \"x\")")
        );
        assert_eq!(parse("a==1.0").unwrap().pinned_version(), Some("1.0"));
        assert_eq!(parse("a==1.*").unwrap().pinned_version(), None);
        assert_eq!(parse("a===1.0").unwrap().pinned_version(), None);
        assert_eq!(
            parse("a ; sys_platform not in 'win32'").unwrap().marker.as_deref(),
            Some("sys_platform not in 'win32'")
        );
    }

    #[test]
    fn url_requirements_parse_with_their_url() {
        let r = parse("pip @ https://github.com/pypa/pip/archive/1.3.1.zip ; python_version >= '3'").unwrap();
        assert_eq!(r.url.as_deref(), Some("https://github.com/pypa/pip/archive/1.3.1.zip"));
        assert!(parse("pip @ https://x/y.zip; python_version >= '3'").is_err());
    }

    #[test]
    fn syntax_errors_point_at_the_offending_character() {
        let cases = [
            ("==1.0", 0),
            ("fastapi=0.1", 7),
            ("fastapi[std", 11),
            ("fastapi==", 9),
            ("fastapi==1.0 ; python_ver > '3'", 15),
            ("fastapi (==1.0", 14),
            ("a-", 1),
        ];
        for (text, offset) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.offset, offset, "{text}: {}", e.message);
        }
    }

    #[test]
    fn comments_continuations_and_hashes_are_read_like_pip() {
        let file = File::new(
            "requirements.txt",
            "# pinned\nfastapi==0.165.0  # web\n\nuvicorn\\\n==0.54.0\nhttpx==0.28.1 --hash=sha256:abc\n",
        );
        let parsed = read(&file);
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        let found: Vec<(&str, u32, u32)> = parsed
            .requirements
            .iter()
            .map(|(r, l, c)| (r.name.as_str(), *l, *c))
            .collect();
        assert_eq!(found, [("fastapi", 2, 1), ("uvicorn", 4, 1), ("httpx", 6, 1)]);
        assert_eq!(parsed.requirements[1].0.pinned_version(), Some("0.54.0"));
    }
}
