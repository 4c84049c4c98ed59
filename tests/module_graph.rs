//! The library's module graph has no import cycles.
//!
//! Every `src/**/*.rs` file is lexed (proc-macro2: comments and strings are
//! not code) and each path it names through `crate::`, `super::` or
//! `self::` — in `use` trees, expressions, types and attribute arguments —
//! is resolved to the deepest module file it reaches. A reference from
//! module `a::b::x` to `a::c::y` is an edge between the siblings `a::b` and
//! `a::c` (at the crate's top level: `b` and `c`); a module and its own
//! submodules may refer to each other (a trait and its implementations).
//! Among the siblings of every level there must be no cycle, so each layer
//! can be read, tested and moved without the ones that depend on it.
//! Test-only code (`#[cfg(test)]`, and the fault points compiled only with
//! the test feature `fault-injection`) is left out: it may use anything.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};

type Module = Vec<String>;

/// Every module file under `src/`, by module path (`src/lib.rs` is the root,
/// `src/a/mod.rs` and `src/a.rs` are `a`, `src/a/b.rs` is `a::b`).
fn module_files(root: &Path) -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src is readable") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(root, &mut files);
    files
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(root).expect("under src").with_extension("");
            let mut module: Module = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|m| m == "mod" || m == "lib") {
                module.pop();
            }
            (module, path)
        })
        .collect()
}

fn is_path_sep(tokens: &[TokenTree], i: usize) -> bool {
    matches!((tokens.get(i), tokens.get(i + 1)),
        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
            if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':')
}

fn ident_at(tokens: &[TokenTree], i: usize) -> Option<String> {
    match tokens.get(i) {
        Some(TokenTree::Ident(ident)) => Some(ident.to_string()),
        _ => None,
    }
}

/// Whether an attribute's bracket group is a `cfg` naming `test` or the
/// `fault-injection` feature: code only tests compile.
fn is_cfg_test(group: &TokenStream) -> bool {
    fn names_test(stream: &TokenStream) -> bool {
        stream.clone().into_iter().any(|t| match t {
            TokenTree::Ident(i) => i == "test",
            TokenTree::Literal(l) => l.to_string() == "\"fault-injection\"",
            TokenTree::Group(g) => names_test(&g.stream()),
            TokenTree::Punct(_) => false,
        })
    }
    let tokens: Vec<TokenTree> = group.clone().into_iter().collect();
    matches!(tokens.first(), Some(TokenTree::Ident(i)) if i == "cfg") && names_test(group)
}

/// The paths a `use` tree names, each as its segments.
fn use_paths(tokens: &[TokenTree], prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Ident(ident) if ident == "as" => break,
            TokenTree::Ident(ident) => path.push(ident.to_string()),
            TokenTree::Punct(p) if p.as_char() == '*' => break,
            TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => {
                let inner: Vec<TokenTree> = g.stream().into_iter().collect();
                for branch in inner.split(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ',')) {
                    if !branch.is_empty() {
                        use_paths(branch, &path, out);
                    }
                }
                return;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(path);
}

/// The deepest module a path reaches from `at`, if it is a path into this
/// crate (`crate::`, `super::`, `self::`).
fn resolve(path: &[String], at: &[String], modules: &BTreeSet<Module>) -> Option<Module> {
    let mut segments = path.iter().peekable();
    let mut module: Module = match segments.peek().map(|s| s.as_str()) {
        Some("crate" | "$crate") => {
            segments.next();
            Vec::new()
        }
        Some("self") => {
            segments.next();
            at.to_vec()
        }
        Some("super") => {
            let mut m = at.to_vec();
            while segments.peek().is_some_and(|s| *s == "super") {
                segments.next();
                m.pop();
            }
            m
        }
        _ => return None,
    };
    for segment in segments {
        if segment == "self" {
            continue;
        }
        let mut deeper = module.clone();
        deeper.push(segment.clone());
        if !modules.contains(&deeper) {
            break;
        }
        module = deeper;
    }
    Some(module)
}

/// Every (referenced path, module it is written in) of a token stream.
fn references(tokens: TokenStream, at: &Module, out: &mut Vec<(Vec<String>, Module)>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Punct(p) if p.as_char() == '#' => {
                let attribute = match tokens.get(i + 1) {
                    Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Bracket => g.stream(),
                    _ => {
                        i += 1;
                        continue;
                    }
                };
                if is_cfg_test(&attribute) {
                    // Skip the attribute and the item it guards: up to its
                    // body (a brace group) or its closing `;`.
                    i += 2;
                    while i < tokens.len() {
                        match &tokens[i] {
                            TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => break,
                            TokenTree::Punct(p) if p.as_char() == ';' => break,
                            _ => i += 1,
                        }
                    }
                    i += 1;
                    continue;
                }
                references(attribute, at, out);
                i += 2;
            }
            TokenTree::Ident(ident) if ident == "use" => {
                let end = (i..tokens.len())
                    .find(|&j| matches!(&tokens[j], TokenTree::Punct(p) if p.as_char() == ';'))
                    .unwrap_or(tokens.len());
                let mut paths = Vec::new();
                use_paths(&tokens[i + 1..end], &[], &mut paths);
                out.extend(paths.into_iter().map(|p| (p, at.clone())));
                i = end + 1;
            }
            TokenTree::Ident(ident) if ident == "mod" => {
                if let (Some(name), Some(TokenTree::Group(body))) = (ident_at(&tokens, i + 1), tokens.get(i + 2))
                    && body.delimiter() == Delimiter::Brace
                {
                    let mut inner = at.clone();
                    inner.push(name);
                    references(body.stream(), &inner, out);
                    i += 3;
                } else {
                    i += 1;
                }
            }
            TokenTree::Ident(ident)
                if ["crate", "super", "self"].contains(&ident.to_string().as_str()) && is_path_sep(&tokens, i + 1) =>
            {
                let mut path = vec![ident.to_string()];
                let mut j = i + 1;
                while is_path_sep(&tokens, j)
                    && let Some(next) = ident_at(&tokens, j + 2)
                {
                    path.push(next);
                    j += 3;
                }
                out.push((path, at.clone()));
                i = j;
            }
            TokenTree::Group(g) => {
                references(g.stream(), at, out);
                i += 1;
            }
            _ => i += 1,
        }
    }
}

/// Sibling edges (`from` → `to`, both children of one parent) with the
/// references that make each one, as `file: path`.
type Edges = BTreeMap<(Module, Module), Vec<String>>;

fn sibling_edges(root: &Path) -> Edges {
    let files = module_files(root);
    let modules: BTreeSet<Module> = files.keys().cloned().collect();
    let mut edges = Edges::new();
    for (module, path) in &files {
        let source = std::fs::read_to_string(path).expect("readable source");
        let tokens: TokenStream = source
            .parse()
            .unwrap_or_else(|e| panic!("{} does not lex: {e:?}", path.display()));
        let mut found = Vec::new();
        references(tokens, module, &mut found);
        for (reference, at) in found {
            let Some(target) = resolve(&reference, &at, &modules) else {
                continue;
            };
            let common = module.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == module.len() || common == target.len() {
                // A module and its own ancestors or descendants.
                continue;
            }
            let evidence = format!(
                "{}: {}",
                path.strip_prefix(root.parent().unwrap()).unwrap().display(),
                reference.join("::")
            );
            edges
                .entry((module[..=common].to_vec(), target[..=common].to_vec()))
                .or_default()
                .push(evidence);
        }
    }
    edges
}

/// One shortest cycle through each strongly connected group of siblings.
fn cycles(edges: &Edges) -> Vec<Vec<Module>> {
    let mut next: BTreeMap<&Module, Vec<&Module>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    let mut reported: BTreeSet<Module> = BTreeSet::new();
    let mut found = Vec::new();
    for start in next.keys() {
        if reported.contains(*start) {
            continue;
        }
        // Breadth-first from `start` back to itself: the shortest cycle.
        let mut parent: BTreeMap<&Module, &Module> = BTreeMap::new();
        let mut queue = VecDeque::from([*start]);
        let mut closing = None;
        while let Some(node) = queue.pop_front() {
            for &to in next.get(node).map(Vec::as_slice).unwrap_or_default() {
                if to == *start {
                    closing = Some(node);
                    break;
                }
                if !parent.contains_key(to) {
                    parent.insert(to, node);
                    queue.push_back(to);
                }
            }
            if closing.is_some() {
                break;
            }
        }
        if let Some(mut node) = closing {
            let mut cycle = vec![(*start).clone()];
            while node != *start {
                cycle.push(node.clone());
                node = parent[node];
            }
            cycle.push((*start).clone());
            cycle.reverse();
            reported.extend(cycle.iter().cloned());
            found.push(cycle);
        }
    }
    found
}

/// Edges known to close a cycle and not yet removed, each with the reason.
/// They are left out of the search; the test fails when one of them no
/// longer exists, so this list only shrinks.
const KNOWN: [(&str, &str, &str); 0] = [];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn name(module: &Module) -> String {
    module.join("::")
}

fn split(name: &str) -> Module {
    name.split("::").map(str::to_owned).collect()
}

#[test]
fn the_library_has_no_import_cycles_between_modules() {
    let mut edges = sibling_edges(&src());
    for (from, to, why) in KNOWN {
        let edge = (split(from), split(to));
        assert!(
            edges.remove(&edge).is_some(),
            "{from} -> {to} is gone: remove it from KNOWN ({why})"
        );
    }
    let cycles = cycles(&edges);
    let mut report = String::new();
    for cycle in &cycles {
        let _ = writeln!(
            report,
            "cycle: {}",
            cycle.iter().map(name).collect::<Vec<_>>().join(" -> ")
        );
        for pair in cycle.windows(2) {
            let evidence = &edges[&(pair[0].clone(), pair[1].clone())];
            let _ = writeln!(
                report,
                "  {} -> {}: {}",
                name(&pair[0]),
                name(&pair[1]),
                evidence.join(", ")
            );
        }
    }
    assert!(cycles.is_empty(), "import cycles between modules:\n{report}");
}

#[test]
fn the_module_graph_sees_the_references_that_exist() {
    // The check above is only as good as its reading of the source: these
    // references exist, in a `use` tree, a nested `use` group, `super::`,
    // an expression path and an attribute argument.
    let edges = sibling_edges(&src());
    let has = |from: &str, to: &str| edges.contains_key(&(split(from), split(to)));
    assert!(
        has("pipeline", "store"),
        "use crate::store::{{Lease, Store, StoreError}}"
    );
    assert!(
        has("validate::imports", "validate::stdlib"),
        "use super::{{packages, stdlib}}"
    );
    assert!(has("sandbox::process", "sandbox::cgroup"), "use super::cgroup::{{..}}");
    assert!(
        has("preflight", "sandbox"),
        "crate::sandbox::build(..) in an expression"
    );
    assert!(
        has("http", "spec"),
        "#[schema(value_type = crate::spec::Options)] and uses"
    );
    assert!(
        !edges.keys().any(|(from, to)| from.is_empty() || to.is_empty()),
        "the crate root is everyone's ancestor"
    );
}

#[test]
fn test_only_code_and_comments_make_no_edges() {
    let modules: BTreeSet<Module> = [vec!["a".into()], vec!["b".into()]].into();
    let source = r#"
        //! See [`crate::b`].
        fn f() { let s = "crate::b::x"; }
        #[cfg(feature = "fault-injection")]
        fn h() { crate::b::y(); }
        #[cfg(test)]
        mod tests { use crate::b::x; }
    "#;
    let mut found = Vec::new();
    references(source.parse().unwrap(), &vec!["a".into()], &mut found);
    assert!(
        found
            .iter()
            .all(|(p, at)| resolve(p, at, &modules) != Some(vec!["b".into()])),
        "{found:?}"
    );
    let source = "use super::b::{x, y as z}; fn g() -> crate::b::T { todo!() }";
    let mut found = Vec::new();
    references(source.parse().unwrap(), &vec!["a".into()], &mut found);
    let resolved: Vec<_> = found.iter().filter_map(|(p, at)| resolve(p, at, &modules)).collect();
    assert_eq!(resolved, vec![vec!["b".to_owned()]; 3], "{found:?}");
}
