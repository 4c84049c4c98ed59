//! File names and sizes. A generated path ends up on users' disks (artifacts
//! are downloaded and unpacked) and inside the sandbox, so it must be
//! relative, normalised and unsurprising: no `..`, `.` or empty components,
//! no absolute or drive paths, no control characters or backslashes, no
//! `.git` directory (unpacking into a checkout would plant hooks), no names
//! Windows cannot create, no two paths that are one file on a
//! case-insensitive file system, and no path that is both a file and a
//! directory. Findings are about whole files, so their line is 0.

use std::collections::HashMap;

use crate::files::File;
use crate::report::Diagnostic;

/// Most files one answer may contain.
pub const MAX_FILES: usize = 64;
/// Largest single file, bytes.
pub const MAX_FILE_BYTES: usize = 512 * 1024;
/// Largest answer in total, bytes.
pub const MAX_TOTAL_BYTES: usize = 4 * 1024 * 1024;

/// Extensions (and exact names) a generated project may contain.
/// Text a service plausibly ships: code, configuration, templates (an
/// Alembic `script.py.mako`, HTML pages), data, documentation
/// (`README.rst`) and the lock files of Python's package managers
/// (`poetry.lock`, `uv.lock`, pip-tools' `requirements.in`). None of these is
/// executed by Kiln: they are kept as the project wrote them.
const ALLOWED_EXTENSIONS: [&str; 21] = [
    "py", "txt", "md", "rst", "toml", "cfg", "ini", "yml", "yaml", "json", "lock", "in", "sql", "env", "example", "sh",
    "pyi", "html", "css", "csv", "mako",
];
const ALLOWED_NAMES: [&str; 17] = [
    "Dockerfile",
    "Makefile",
    "Procfile",
    "Pipfile",
    ".dockerignore",
    ".gitignore",
    ".gitattributes",
    ".coveragerc",
    "py.typed",
    "README",
    "LICENSE",
    "NOTICE",
    "AUTHORS",
    "CHANGELOG",
    ".flake8",
    ".editorconfig",
    ".python-version",
];

pub fn check(files: &[File]) -> Vec<Diagnostic> {
    let mut out = answer_limits(files);
    let directories = directories(files);
    let mut seen: HashMap<String, &str> = HashMap::new();
    for file in files {
        if let Some(problem) = path_problem(&file.path) {
            out.push(Diagnostic::error(display(&file.path), 0, 0, "path-invalid", problem));
            continue;
        }
        out.extend(content_findings(file));
        if !type_allowed(&file.path) {
            out.push(Diagnostic::error(
                &file.path,
                0,
                0,
                "path-extension",
                format!(
                    "file type not allowed; allowed: .{} and {}",
                    ALLOWED_EXTENSIONS.join(", ."),
                    ALLOWED_NAMES.join(", ")
                ),
            ));
        }
        out.extend(collisions(file, &directories, &mut seen));
    }
    out
}

/// The limits on the answer as a whole: how many files, how many bytes.
fn answer_limits(files: &[File]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if files.len() > MAX_FILES {
        out.push(Diagnostic::error(
            "",
            0,
            0,
            "path-count",
            format!("{} files, more than the limit of {MAX_FILES}", files.len()),
        ));
    }
    let total: usize = files.iter().map(|f| f.content.len()).sum();
    if total > MAX_TOTAL_BYTES {
        out.push(Diagnostic::error(
            "",
            0,
            0,
            "path-size",
            format!("{total} bytes in all, more than the limit of {MAX_TOTAL_BYTES}"),
        ));
    }
    out
}

/// Every directory the valid paths make, by its lower-case spelling, with
/// the spelling first seen.
fn directories(files: &[File]) -> HashMap<String, String> {
    let mut directories = HashMap::new();
    for file in files.iter().filter(|f| path_problem(&f.path).is_none()) {
        let parts: Vec<&str> = file.path.split('/').collect();
        for depth in 1..parts.len() {
            let dir = parts[..depth].join("/");
            directories.entry(dir.to_lowercase()).or_insert(dir);
        }
    }
    directories
}

/// One file's size and content: over the size limit, or holding NUL.
fn content_findings(file: &File) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if file.content.len() > MAX_FILE_BYTES {
        out.push(Diagnostic::error(
            &file.path,
            0,
            0,
            "path-size",
            format!("{} bytes, more than the limit of {MAX_FILE_BYTES}", file.content.len()),
        ));
    }
    if let Some(at) = file.content.find('\0') {
        let before = &file.content[..at];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        out.push(Diagnostic::error(
            &file.path,
            line as u32,
            col as u32,
            "content-nul",
            "the NUL character (U+0000) in a text file; Python refuses source with NUL bytes, write `\\0` instead",
        ));
    }
    out
}

/// Whether the file's name or extension is one a project may contain.
fn type_allowed(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    ALLOWED_NAMES.contains(&name)
        || name
            .rsplit_once('.')
            .is_some_and(|(_, ext)| ALLOWED_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

/// Paths that are one file (or a file and a directory) on a
/// case-insensitive file system, or that appear twice; `seen` collects the
/// files checked so far.
fn collisions<'a>(
    file: &'a File,
    directories: &HashMap<String, String>,
    seen: &mut HashMap<String, &'a str>,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let parts: Vec<&str> = file.path.split('/').collect();
    for depth in 1..parts.len() {
        let dir = parts[..depth].join("/");
        if let Some(other) = directories.get(&dir.to_lowercase())
            && *other != dir
        {
            out.push(Diagnostic::error(
                &file.path,
                0,
                0,
                "path-duplicate",
                format!("directory `{dir}/` collides with `{other}/` on case-insensitive file systems"),
            ));
            break;
        }
    }
    if let Some(dir) = directories.get(&file.path.to_lowercase()) {
        out.push(Diagnostic::error(
            &file.path,
            0,
            0,
            "path-conflict",
            format!("`{}` is a file, but other paths use `{dir}/` as a directory", file.path),
        ));
    }
    if let Some(earlier) = seen.insert(file.path.to_lowercase(), &file.path) {
        let message = if earlier == file.path {
            "appears twice in the answer".to_owned()
        } else {
            format!("collides with `{earlier}` on case-insensitive file systems")
        };
        out.push(Diagnostic::error(&file.path, 0, 0, "path-duplicate", message));
    }
    out
}

/// True when `path` may be written to a user's disk as is. Answers that
/// failed validation keep their files (for inspection), bad paths included,
/// so whatever packs stored files for download checks this first.
pub fn is_safe(path: &str) -> bool {
    path_problem(path).is_none()
}

/// Why a path is not acceptable, if it is not.
fn path_problem(path: &str) -> Option<String> {
    if path.is_empty() {
        return Some("empty path".into());
    }
    if path.chars().any(char::is_control) {
        return Some("control characters in the path".into());
    }
    if path.starts_with('/') || path.starts_with('\\') || path.get(1..3) == Some(":\\") || path.get(1..3) == Some(":/")
    {
        return Some("absolute path; use a path relative to the project root".into());
    }
    if path.contains('\\') {
        return Some("backslash in the path; use `/`".into());
    }
    if path.len() > 200 {
        return Some("path longer than 200 characters".into());
    }
    for part in path.split('/') {
        match part {
            "" => return Some("empty path component (`//` or trailing `/`)".into()),
            "." => return Some("`.` component; write the path normalised".into()),
            ".." => return Some("`..` component escapes the project".into()),
            _ if part.eq_ignore_ascii_case(".git") => {
                return Some("`.git` component; generated files must not write into a repository's metadata".into());
            }
            _ if part.starts_with('-') => return Some(format!("component `{part}` starts with `-`")),
            _ if part.ends_with('.') || part.ends_with(' ') => {
                return Some(format!(
                    "component `{part}` ends with `.` or a space, which Windows drops"
                ));
            }
            _ if part.contains([':', '*', '?', '"', '<', '>', '|']) => {
                return Some(format!(
                    "component `{part}` contains a character Windows forbids (`:*?\"<>|`)"
                ));
            }
            _ if is_reserved_on_windows(part) => {
                return Some(format!("`{part}` is a reserved device name on Windows"));
            }
            _ => {}
        }
    }
    None
}

/// `CON`, `NUL`, `COM1`, … with or without an extension.
fn is_reserved_on_windows(part: &str) -> bool {
    let stem = part.split('.').next().unwrap_or(part).to_ascii_uppercase();
    matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || (stem.len() == 4
            && (stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.as_bytes()[3].is_ascii_digit()
            && stem.as_bytes()[3] != b'0')
}

fn display(path: &str) -> String {
    path.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(paths: &[&str]) -> Vec<String> {
        let files: Vec<File> = paths.iter().map(|p| File::new(*p, "x")).collect();
        check(&files).into_iter().map(|d| d.rule).collect()
    }

    #[test]
    fn good_paths_pass() {
        assert!(
            rules(&[
                "app/main.py",
                "tests/test_app.py",
                "Dockerfile",
                "requirements.txt",
                "docker-compose.yml"
            ])
            .is_empty()
        );
    }

    #[test]
    fn escaping_absolute_and_strange_paths_are_refused() {
        for bad in [
            "../x.py",
            "a/../../x.py",
            "/etc/passwd.py",
            "C:\\x.py",
            "a//b.py",
            "./a.py",
            "a\u{7}.py",
            "a\\b.py",
        ] {
            assert_eq!(rules(&[bad]), ["path-invalid"], "{bad:?}");
        }
    }

    #[test]
    fn lock_files_and_readmes_of_real_projects_are_kept() {
        assert!(
            rules(&[
                "README",
                "README.rst",
                "poetry.lock",
                "uv.lock",
                "requirements.in",
                "alembic.ini",
                "migrations/script.py.mako",
                "CHANGELOG",
                ".coveragerc",
            ])
            .is_empty()
        );
        assert_eq!(
            rules(&["README.exe", "poetry.lock.so"]),
            ["path-extension", "path-extension"]
        );
    }

    #[test]
    fn unknown_extensions_and_case_collisions_are_refused() {
        assert_eq!(rules(&["app/lib.so"]), ["path-extension"]);
        assert_eq!(rules(&["App.py", "app.py"]), ["path-duplicate"]);
        assert_eq!(rules(&["app.py", "app.py"]), ["path-duplicate"]);
    }

    #[test]
    fn directories_that_differ_only_in_case_collide() {
        assert_eq!(rules(&["App/main.py", "app/db.py"]), ["path-duplicate"]);
        assert!(rules(&["app/main.py", "app/db.py", "tests/test_app.py"]).is_empty());
    }

    #[test]
    fn a_path_cannot_be_both_a_file_and_a_directory() {
        assert_eq!(rules(&["app", "app/main.py"]), ["path-extension", "path-conflict"]);
        assert_eq!(rules(&["app.py", "app.py/x.py"]), ["path-conflict"]);
    }

    #[test]
    fn windows_hostile_and_repository_paths_are_refused() {
        for bad in [
            ".git/hooks/pre-commit.sh",
            "app/.GIT/x.py",
            "nul.txt",
            "app/COM1.py",
            "a./b.py",
            "a:b.py",
            "x?.py",
        ] {
            assert_eq!(rules(&[bad]), ["path-invalid"], "{bad:?}");
        }
        assert!(rules(&["app/console.py", "COM0.txt", ".gitignore"]).is_empty());
    }

    #[test]
    fn count_and_size_limits_are_enforced() {
        let many: Vec<String> = (0..=MAX_FILES).map(|i| format!("m{i}.py")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(rules(&refs), ["path-count"]);
        let big = File::new("big.txt", "x".repeat(MAX_FILE_BYTES + 1));
        let d = check(&[big]);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].rule.as_str(), d[0].file.as_str()), ("path-size", "big.txt"));
        let files: Vec<File> = (0..9)
            .map(|i| File::new(format!("f{i}.txt"), "x".repeat(MAX_FILE_BYTES)))
            .collect();
        let d = check(&files);
        assert_eq!(d.iter().map(|d| d.rule.as_str()).collect::<Vec<_>>(), ["path-size"]);
        assert_eq!(d[0].file, "");
    }
}
