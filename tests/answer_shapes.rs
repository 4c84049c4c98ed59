//! The answer-shape corpus: every HumanEval problem's canonical solution
//! (prompt + canonical solution) written in each shape a careful reader
//! would accept as an answer — JSON bare, fenced, among prose with braces of
//! its own or after reasoning, with raw newlines, with trailing commas and
//! single quotes, the seed's function format, markdown blocks labelled in several ways, an
//! "example usage" block beside (or before) the solution, a first sketch
//! replaced by a full version, extra typing imports, the entry point as a
//! method with a module-level alias — parsed through the entry the pipeline
//! uses, and checked to give the intended `solution.py`, which must pass
//! Kiln's static validation for the problem's function spec.

#[path = "support/humaneval.rs"]
mod humaneval_data;

use std::fmt::Write as _;

use humaneval_data::{HumanEval, humaneval};
use kiln::files::File;
use kiln::parse::{Expected, parse_response};
use kiln::spec::Spec;
use serde_json::json;

/// One way of writing an answer: the answer's text, and the `solution.py`
/// it means.
struct Rendered {
    answer: String,
    solution: String,
}

type Shape = fn(&HumanEval) -> Rendered;

const SHAPES: [(&str, Shape); 19] = [
    ("bare files JSON", bare_json),
    ("files JSON in a json fence with notes and prose", fenced_json),
    ("files JSON with braces in the prose before and after", braces_in_prose),
    (
        "reasoning with braces and a draft block, then bare JSON",
        reasoning_first,
    ),
    ("files JSON with raw newlines and tabs in strings", raw_newlines),
    (
        "files JSON with trailing commas and single quotes",
        trailing_commas_single_quotes,
    ),
    ("files as a map from path to content", files_by_path),
    ("seed function format", seed_format),
    ("seed function format in a fence after prose", seed_format_fenced),
    ("one python block among prose", single_block),
    ("blocks labelled by title= with a test file", labelled_blocks),
    ("block labelled as python:solution.py", colon_labelled_block),
    ("block under a heading naming the file, then an example", heading_block),
    ("block whose first line names the file", first_line_comment),
    ("solution block then an example usage block", example_after),
    ("example usage block before the solution block", example_before),
    ("a first sketch, then the full version", sketch_then_full),
    ("extra typing imports", typing_imports),
    ("entry point as a method with a module-level alias", method_alias),
];

fn code(p: &HumanEval) -> String {
    format!("{}{}", p.prompt, p.canonical_solution)
}

fn files_json(content: &str) -> serde_json::Value {
    json!({"files": [{"path": "solution.py", "content": content}], "notes": "Uses only the standard library."})
}

fn bare_json(p: &HumanEval) -> Rendered {
    let solution = code(p);
    Rendered {
        answer: files_json(&solution).to_string(),
        solution,
    }
}

fn fenced_json(p: &HumanEval) -> Rendered {
    let solution = code(p);
    let json = serde_json::to_string_pretty(&files_json(&solution)).unwrap();
    Rendered {
        answer: format!(
            "Here is the implementation of `{}`:\n\n```json\n{json}\n```\n\nIt runs in linear time; for an empty input it returns early, e.g. `{{}}` or `[]`.\n",
            p.entry_point
        ),
        solution,
    }
}

fn braces_in_prose(p: &HumanEval) -> Rendered {
    let solution = code(p);
    Rendered {
        answer: format!(
            "The answer is an object of the form {{\"files\": [...]}} as requested; a set {{1, 2}} or a dict {{k: v}} :}} would not do. It starts with {{\"files\": and lists each file:\n\n{}\n\nIf you want notes, add {{\"notes\": \"...\"}}; I kept `{{}}` out. Cheers {{",
            files_json(&solution)
        ),
        solution,
    }
}

fn reasoning_first(p: &HumanEval) -> Rendered {
    let solution = code(p);
    Rendered {
        answer: format!(
            "<think>\nThe user wants {{\"files\": [...]}}. A draft:\n```python\ndef {}(*args):\n    return {{}}\n```\nNo, a dict {{}} is wrong; {{\"path\": \"solution.py\"}} with the full code.\n</think>\n{}",
            p.entry_point,
            files_json(&solution)
        ),
        solution,
    }
}

/// A JSON string as careless models write it: quotes and backslashes
/// escaped, but newlines and tabs left raw.
fn sloppy_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' | '\t' => out.push(c),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn raw_newlines(p: &HumanEval) -> Rendered {
    // A tab in a comment, so every problem has one raw tab as well.
    let solution = format!("#\tsolution\n{}", code(p));
    Rendered {
        answer: format!(
            "{{\n  \"files\": [\n    {{\"path\": \"solution.py\", \"content\": {}}}\n  ],\n  \"notes\": \"done\"\n}}",
            sloppy_string(&solution)
        ),
        solution,
    }
}

fn trailing_commas_single_quotes(p: &HumanEval) -> Rendered {
    let solution = code(p);
    Rendered {
        answer: format!(
            "{{'files': [{{'path': 'solution.py', 'content': {},}},], 'notes': 'ok',}}",
            serde_json::to_string(&solution).unwrap()
        ),
        solution,
    }
}

fn files_by_path(p: &HumanEval) -> Rendered {
    let solution = code(p);
    Rendered {
        answer: json!({"files": {"solution.py": solution}}).to_string(),
        solution,
    }
}

/// The import lines of `code` and the rest, as the seed format splits them.
fn split_imports(code: &str) -> (Vec<String>, String) {
    let (imports, body): (Vec<&str>, Vec<&str>) = code
        .split_inclusive('\n')
        .partition(|l| l.starts_with("import ") || l.starts_with("from "));
    (imports.iter().map(|l| l.trim().to_owned()).collect(), body.concat())
}

fn seed(p: &HumanEval) -> (serde_json::Value, String) {
    let (imports, body) = split_imports(&code(p));
    let solution = if imports.is_empty() {
        format!("{}\n", body.trim_end())
    } else {
        format!("{}\n\n{}\n", imports.join("\n"), body.trim_end())
    };
    (
        json!({"function_name": p.entry_point, "source_code": body, "imports": imports}),
        solution,
    )
}

fn seed_format(p: &HumanEval) -> Rendered {
    let (value, solution) = seed(p);
    Rendered {
        answer: value.to_string(),
        solution,
    }
}

fn seed_format_fenced(p: &HumanEval) -> Rendered {
    let (value, solution) = seed(p);
    Rendered {
        answer: format!(
            "Sure! Below is the function in the format {{function_name, source_code, imports}}:\n\n```json\n{}\n```\n",
            serde_json::to_string_pretty(&value).unwrap()
        ),
        solution,
    }
}

fn single_block(p: &HumanEval) -> Rendered {
    let solution = code(p);
    Rendered {
        answer: format!("Here's a solution:\n\n```python\n{solution}```\n\nThe loop visits each element once."),
        solution,
    }
}

fn test_file(p: &HumanEval) -> String {
    format!(
        "from solution import {0}\n\n{1}\n\ndef test_check():\n    check({0})\n",
        p.entry_point, p.test
    )
}

fn labelled_blocks(p: &HumanEval) -> Rendered {
    let solution = code(p);
    Rendered {
        answer: format!(
            "```python title=\"solution.py\"\n{solution}```\n\n```python title=\"test_solution.py\"\n{}```\n",
            test_file(p)
        ),
        solution,
    }
}

fn colon_labelled_block(p: &HumanEval) -> Rendered {
    let solution = code(p);
    Rendered {
        answer: format!("```python:solution.py\n{solution}```\n"),
        solution,
    }
}

/// The first call of the candidate in the problem's checks, as an example
/// of calling the entry point.
fn example_call(p: &HumanEval) -> String {
    let Some(start) = p.test.find("candidate(") else {
        return format!("help({})", p.entry_point);
    };
    let mut depth = 0;
    let mut quote = None;
    let bytes = p.test.as_bytes();
    let open = start + "candidate".len();
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        match (quote, b) {
            (Some(q), _) if b == q && bytes[i - 1] != b'\\' => quote = None,
            (None, b'\'' | b'"') => quote = Some(b),
            (None, b'(' | b'[' | b'{') => depth += 1,
            (None, b')' | b']' | b'}') => {
                depth -= 1;
                if depth == 0 {
                    return format!("{}{}", p.entry_point, &p.test[open..=i]);
                }
            }
            // Inside a string, or an ordinary character.
            _ => {}
        }
    }
    format!("help({})", p.entry_point)
}

fn example_block(p: &HumanEval) -> String {
    format!(
        "```python\nfrom solution import {0}\n\nresult = {1}\nprint(result)\n```\n",
        p.entry_point,
        example_call(p)
    )
}

fn heading_block(p: &HumanEval) -> Rendered {
    let solution = code(p);
    Rendered {
        answer: format!(
            "## Solution\n\n### `solution.py`\n\n```python\n{solution}```\n\n### Example usage\n\n{}",
            example_block(p)
        ),
        solution,
    }
}

fn first_line_comment(p: &HumanEval) -> Rendered {
    let solution = format!("# file: solution.py\n{}", code(p));
    Rendered {
        answer: format!("```python\n{solution}```\n"),
        solution,
    }
}

fn example_after(p: &HumanEval) -> Rendered {
    let solution = code(p);
    Rendered {
        answer: format!(
            "Here is the solution:\n\n```python\n{solution}```\n\nExample usage:\n\n{}\nThis prints the result.",
            example_block(p)
        ),
        solution,
    }
}

fn example_before(p: &HumanEval) -> Rendered {
    let solution = code(p);
    Rendered {
        answer: format!(
            "You will call it like this:\n\n{}\nAnd here is the implementation:\n\n```py\n{solution}```\n",
            example_block(p)
        ),
        solution,
    }
}

fn sketch_then_full(p: &HumanEval) -> Rendered {
    let solution = code(p);
    Rendered {
        answer: format!(
            "A first sketch:\n\n```python\ndef {}(*args):\n    raise NotImplementedError\n```\n\nThe full version:\n\n```python\n{solution}```\n",
            p.entry_point
        ),
        solution,
    }
}

fn typing_imports(p: &HumanEval) -> Rendered {
    let solution = format!(
        "from __future__ import annotations\n\nimport typing\nfrom typing import Any, Dict, Iterable, List, Optional, Tuple, Union\n{}",
        code(p)
    );
    Rendered {
        answer: format!("```python\n{solution}```"),
        solution,
    }
}

/// The solution with the entry point moved into a class as a method, bound
/// at module level by an alias (helpers and imports stay where they were).
fn method_alias(p: &HumanEval) -> Rendered {
    let code = code(p);
    let entry = &p.entry_point;
    let at = code
        .find(&format!("\ndef {entry}("))
        .map(|i| i + 1)
        .or_else(|| code.starts_with(&format!("def {entry}(")).then_some(0))
        .expect("the entry point is a top-level def");
    let def = &code[at..];
    let with_self = if def.starts_with(&format!("def {entry}()")) {
        def.replacen(&format!("def {entry}("), &format!("def {entry}(self"), 1)
    } else {
        def.replacen(&format!("def {entry}("), &format!("def {entry}(self, "), 1)
    };
    let method: String = with_self
        .split_inclusive('\n')
        .map(|l| {
            if l.trim().is_empty() {
                l.to_owned()
            } else {
                format!("    {l}")
            }
        })
        .collect();
    let solution = format!(
        "{}class Solution:\n{method}\n\n{entry} = Solution().{entry}\n",
        &code[..at]
    );
    Rendered {
        answer: files_json(&solution).to_string(),
        solution,
    }
}

fn spec(p: &HumanEval) -> Spec {
    Spec::from_value(
        json!({
            "kind": "function",
            "task_description": format!("Complete the function of {}.", p.task_id),
            "prompt": p.prompt,
            "entry_point": p.entry_point,
            "test_code": format!("from solution import *\n\n{}\n\ndef test_check():\n    check({})\n", p.test, p.entry_point),
        }),
        "spec",
    )
    .expect("a HumanEval problem is a valid function spec")
}

/// What went wrong with one rendering, or `None` when it parsed to the
/// intended solution and passed validation.
fn judge(spec: &Spec, rendered: &Rendered) -> Option<String> {
    let files: Vec<File> = match parse_response(&rendered.answer, Expected::from(spec)) {
        Ok(files) => files,
        Err(e) => return Some(format!("not parsed: {e}")),
    };
    let Some(solution) = files.iter().find(|f| f.path == "solution.py") else {
        return Some(format!(
            "no solution.py among {:?}",
            files.iter().map(|f| &f.path).collect::<Vec<_>>()
        ));
    };
    if solution.content.trim_end() != rendered.solution.trim_end() {
        return Some(format!(
            "solution.py is not the intended code:\n--- got\n{}\n--- intended\n{}",
            solution.content, rendered.solution
        ));
    }
    let report = kiln::validate::validate(spec, &files);
    if !report.ok {
        let errors: Vec<String> = report
            .errors()
            .map(|d| format!("{} [{}] {}", d.location(), d.rule, d.message))
            .collect();
        return Some(format!("validation failed: {}", errors.join("; ")));
    }
    None
}

#[test]
fn every_humaneval_solution_parses_and_validates_in_every_answer_shape() {
    let problems = humaneval();
    assert_eq!(problems.len(), 164, "HumanEval has 164 problems");
    let specs: Vec<Spec> = problems.iter().map(spec).collect();
    let mut failures = Vec::new();
    for (name, shape) in SHAPES {
        let mut passed = 0;
        for (problem, spec) in problems.iter().zip(&specs) {
            match judge(spec, &shape(problem)) {
                None => passed += 1,
                Some(why) => failures.push(format!("{name} / {}: {why}", problem.task_id)),
            }
        }
        eprintln!("{passed:>3}/{} {name}", problems.len());
    }
    let total = SHAPES.len() * problems.len();
    eprintln!(
        "{}/{total} answers parsed to the intended, valid solution.py",
        total - failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} failed; the first ones:\n{}",
        failures.len(),
        failures.iter().take(8).cloned().collect::<Vec<_>>().join("\n\n")
    );
}
