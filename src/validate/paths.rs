//! File names and sizes. A generated path ends up on users' disks (artifacts
//! are downloaded and unpacked) and inside the sandbox, so it must be
//! relative, normalised and unsurprising.

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
const ALLOWED_EXTENSIONS: [&str; 14] = [
    "py", "txt", "md", "toml", "cfg", "ini", "yml", "yaml", "json", "sql", "env", "example", "sh", "pyi",
];
const ALLOWED_NAMES: [&str; 5] = ["Dockerfile", "Makefile", ".dockerignore", ".gitignore", "py.typed"];

pub fn check(files: &[File]) -> Vec<Diagnostic> {
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
    let mut seen: HashMap<String, &str> = HashMap::new();
    for file in files {
        if let Some(problem) = path_problem(&file.path) {
            out.push(Diagnostic::error(display(&file.path), 0, 0, "path-invalid", problem));
            continue;
        }
        if file.content.len() > MAX_FILE_BYTES {
            out.push(Diagnostic::error(
                &file.path,
                0,
                0,
                "path-size",
                format!("{} bytes, more than the limit of {MAX_FILE_BYTES}", file.content.len()),
            ));
        }
        let name = file.path.rsplit('/').next().unwrap_or(&file.path);
        let extension_ok = ALLOWED_NAMES.contains(&name)
            || name
                .rsplit_once('.')
                .is_some_and(|(_, ext)| ALLOWED_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()));
        if !extension_ok {
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
        if let Some(earlier) = seen.insert(file.path.to_lowercase(), &file.path) {
            let message = if earlier == file.path {
                "appears twice in the answer".to_owned()
            } else {
                format!("collides with `{earlier}` on case-insensitive file systems")
            };
            out.push(Diagnostic::error(&file.path, 0, 0, "path-duplicate", message));
        }
    }
    out
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
            _ if part.starts_with('-') => return Some(format!("component `{part}` starts with `-`")),
            _ => {}
        }
    }
    None
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
    fn unknown_extensions_and_case_collisions_are_refused() {
        assert_eq!(rules(&["app/lib.so"]), ["path-extension"]);
        assert_eq!(rules(&["App.py", "app.py"]), ["path-duplicate"]);
    }
}
