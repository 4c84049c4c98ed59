//! Where a field of a spec file is written: the file read again as YAML
//! events with their line and column (JSON is YAML's flow style, so one
//! reader serves both), then a field path such as
//! `specs[2].test_cases[0].expected` walked down that tree.
//!
//! serde gives positions for syntax errors only; the spec checks name a
//! field by its path in the request body, and this turns that path back
//! into a place in the file. A path that leaves the tree (a missing field)
//! stops at the deepest node that exists: the spec or mapping that lacks it.

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Position {
    fn from(m: Marker) -> Position {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Position {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

/// One step of a field path: a mapping key or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// Splits a field path (`specs[2].input.a`, `[0].kind`) into steps. A key
/// that itself holds `.` or `[` is split too; walking then stops early,
/// at its parent, which still points near the fault.
pub fn steps(path: &str) -> Vec<Step> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            if open > 0 {
                out.push(Step::Key(rest[..open].to_owned()));
            }
            rest = &rest[open..];
            while let Some(inner) = rest.strip_prefix('[') {
                let Some(close) = inner.find(']') else { break };
                match inner[..close].parse() {
                    Ok(i) => out.push(Step::Index(i)),
                    Err(_) => out.push(Step::Key(inner[..close].to_owned())),
                }
                rest = &inner[close + 1..];
            }
        } else if !rest.is_empty() {
            out.push(Step::Key(rest.to_owned()));
        }
    }
    out
}

/// A node of the document, where it starts, and its children.
#[derive(Debug)]
pub struct Node {
    at: Position,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// A scalar or an alias: nothing to walk into.
    Leaf,
    List(Vec<Node>),
    /// Keys in the order written, each with where the key itself starts.
    Map(Vec<(String, Position, Node)>),
}

impl Node {
    /// The first document of `text`, or `None` when the YAML reader cannot
    /// read it (positions are then unknown; the problems are still named).
    pub fn parse(text: &str) -> Option<Node> {
        let mut parser = Parser::new_from_str(text);
        loop {
            match parser.next_token().ok()? {
                (Event::StreamStart | Event::DocumentStart, _) => {}
                (Event::StreamEnd, _) => return None,
                (event, mark) => return read(&mut parser, &event, mark),
            }
        }
    }

    /// [`Node::parse`] for JSON text. JSON may escape a character beyond
    /// U+FFFF as two UTF-16 surrogates (`\ud83d\ude00`, as Python writes
    /// by default), which YAML refuses; each such escape is read as
    /// `\u0020`, the same length, so every column stays where it was.
    pub fn parse_json(text: &str) -> Option<Node> {
        let mut safe = String::with_capacity(text.len());
        let mut chars = text.char_indices();
        let mut in_string = false;
        while let Some((_, c)) = chars.next() {
            safe.push(c);
            match c {
                '"' => in_string = !in_string,
                '\\' if in_string => {
                    let Some((i, escaped)) = chars.next() else { break };
                    let surrogate = text
                        .get(i + 1..i + 5)
                        .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                        .is_some_and(|unit| (0xD800..=0xDFFF).contains(&unit));
                    if escaped == 'u' && surrogate {
                        safe.push_str("u0020");
                        // The four hex digits, one byte each.
                        chars.nth(3);
                    } else {
                        safe.push(escaped);
                    }
                }
                _ => {}
            }
        }
        Node::parse(&safe)
    }

    /// Where `path` is written: a scalar value itself, a collection by its
    /// key (its content may start on the next line), or the deepest node
    /// on the way when the rest of the path is not in the file.
    pub fn locate(&self, path: &[Step]) -> Position {
        let mut node = self;
        let mut at = self.at;
        for step in path {
            let next = match (&node.kind, step) {
                (Kind::Map(entries), Step::Key(key)) => {
                    // JSON keeps the last of repeated keys (YAML refuses them).
                    entries
                        .iter()
                        .rev()
                        .find(|(k, _, _)| k == key)
                        .map(|(_, key_at, value)| {
                            let shown = if matches!(value.kind, Kind::Leaf) {
                                value.at
                            } else {
                                *key_at
                            };
                            (value, shown)
                        })
                }
                (Kind::List(items), Step::Index(i)) => items.get(*i).map(|item| (item, item.at)),
                _ => None,
            };
            match next {
                Some((child, shown)) => {
                    node = child;
                    at = shown;
                }
                None => return at,
            }
        }
        at
    }
}

/// Reads the node that `event` starts, with its children.
fn read<T: Iterator<Item = char>>(parser: &mut Parser<T>, event: &Event, mark: Marker) -> Option<Node> {
    let at = Position::from(mark);
    let kind = match event {
        Event::Scalar(..) | Event::Alias(_) => Kind::Leaf,
        Event::SequenceStart(..) => {
            let mut items = Vec::new();
            loop {
                match parser.next_token().ok()? {
                    (Event::SequenceEnd, _) => break,
                    (event, mark) => items.push(read(parser, &event, mark)?),
                }
            }
            Kind::List(items)
        }
        Event::MappingStart(..) => {
            let mut entries = Vec::new();
            loop {
                let (key, key_mark) = match parser.next_token().ok()? {
                    (Event::MappingEnd, _) => break,
                    // A complex key (a list or mapping as key) cannot be a
                    // spec field; it is read and kept under no name.
                    (Event::Scalar(text, ..), mark) => (text, mark),
                    (event, mark) => {
                        read(parser, &event, mark)?;
                        (String::new(), mark)
                    }
                };
                let (event, mark) = parser.next_token().ok()?;
                entries.push((key, Position::from(key_mark), read(parser, &event, mark)?));
            }
            // A block mapping's start event is marked after its first key
            // (at the `:`); the key itself is where people look.
            if let Some((_, first, _)) = entries.first() {
                return Some(Node {
                    at: *first,
                    kind: Kind::Map(entries),
                });
            }
            Kind::Map(entries)
        }
        _ => return None,
    };
    Some(Node { at, kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, path: &str) -> (usize, usize) {
        let p = Node::parse(text).expect("readable").locate(&steps(path));
        (p.line, p.column)
    }

    #[test]
    fn a_field_path_splits_into_keys_and_indexes() {
        assert_eq!(
            steps("specs[2].test_cases[0].expected"),
            vec![
                Step::Key("specs".into()),
                Step::Index(2),
                Step::Key("test_cases".into()),
                Step::Index(0),
                Step::Key("expected".into()),
            ]
        );
        assert_eq!(
            steps("[1][0].kind"),
            vec![Step::Index(1), Step::Index(0), Step::Key("kind".into())]
        );
        assert_eq!(steps(""), vec![]);
    }

    #[test]
    fn a_scalar_is_found_at_its_value_and_a_collection_at_its_key() {
        let text = "name: b\nspecs:\n  - kind: function\n    test_cases:\n      - input: [1, 2]\n        expected: 3\n  - kind: fastapi\n";
        assert_eq!(at(text, "specs[1].kind"), (7, 11));
        assert_eq!(at(text, "specs[0].test_cases"), (4, 5));
        assert_eq!(at(text, "specs[0].test_cases[0].expected"), (6, 19));
        assert_eq!(at(text, "specs[0].test_cases[0].input[1]"), (5, 20));
    }

    #[test]
    fn a_missing_field_points_at_the_mapping_that_lacks_it() {
        let text = "- kind: function\n- kind: service\n  service_name: x\n";
        assert_eq!(at(text, "[1].description"), (2, 3));
        assert_eq!(at(text, "[5].kind"), (1, 1));
    }

    #[test]
    fn escaped_surrogates_in_json_keep_their_columns() {
        let text = "[{\"d\": \"\\ud83d\\ude00 \\\\ud83d\", \"kind\": \"x\"}]";
        assert!(Node::parse(text).is_none(), "YAML refuses the surrogates");
        let p = Node::parse_json(text).expect("readable").locate(&steps("[0].kind"));
        assert_eq!((p.line, p.column), (1, text.find("\"x\"").unwrap() + 1));
    }

    #[test]
    fn json_text_is_read_as_flow_yaml_with_positions() {
        let text = "{\"specs\":[{\"kind\":\"function\"},\n {\"kind\":\"fastapi\",\"x\":[1,2]}]}";
        assert_eq!(at(text, "specs[1].kind"), (2, 10));
        assert_eq!(at(text, "specs[1].x[1]"), (2, 27));
    }
}
