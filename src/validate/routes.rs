//! Static route conformance: which `METHOD /path` pairs the FastAPI app
//! declares, read from the syntax tree of the answer's non-test modules, and
//! whether every spec endpoint (and `GET /health`) is among them.
//!
//! Understood: `FastAPI()` and `APIRouter(prefix=…)` objects (module-level or
//! inside an app factory), route decorators (`@app.get(path)`, `.post`, …,
//! `@router.api_route(path, methods=[…])`), `add_api_route`, and
//! `include_router(router, prefix=…)` chains across modules, with imports
//! (aliased, relative, re-exported) followed to the object they name. Paths
//! may be literals, module constants or concatenations of them.
//!
//! Paths are compared the way the sandbox compares the app's OpenAPI with
//! the spec (trailing `/` dropped, every `{param}` segment alike), so the
//! static verdict agrees with the dynamic one. When anything that adds routes
//! cannot be read statically (a computed path, a router from a loop), the
//! analysis is uncertain and a missing endpoint is only a warning.

use std::collections::{BTreeSet, HashMap};

use ruff_python_ast::visitor::{self, Visitor};
use ruff_python_ast::{Expr, ExprFString, FStringPart, InterpolatedStringElement, Operator, Stmt};
use ruff_text_size::Ranged;

use crate::report::{Diagnostic, Severity};
use crate::spec::ServiceSpec;

use super::imports::{self, Binding};
use super::python::{Module, string_value};

const APP_CLASSES: [&str; 2] = ["fastapi.FastAPI", "fastapi.applications.FastAPI"];
const ROUTER_CLASSES: [&str; 2] = ["fastapi.APIRouter", "fastapi.routing.APIRouter"];
const METHOD_DECORATORS: [&str; 8] = ["get", "post", "put", "patch", "delete", "head", "options", "trace"];

/// Where something was declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: String,
    pub line: u32,
    pub col: u32,
}

/// One served `METHOD path`, as the app's OpenAPI would list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: String,
    pub path: String,
    pub place: Place,
}

/// The routes the app declares.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    pub routes: Vec<Route>,
    /// True when at least one app was found and every route and router
    /// inclusion on the way to it could be read statically.
    pub certain: bool,
    /// True when some `FastAPI()` object was found at all.
    pub found_app: bool,
    /// Where the app module creates its app, for findings about the app as
    /// a whole.
    pub app_place: Option<Place>,
}

impl Analysis {
    /// The declared routes with the same path shape as `path`.
    fn with_shape(&self, path: &str) -> Vec<&Route> {
        let want = shape(path);
        self.routes.iter().filter(|r| shape(&r.path) == want).collect()
    }

    /// True when `GET /health` is declared, or might be (uncertain analysis
    /// or no app found).
    pub fn may_serve_health(&self) -> bool {
        !self.certain || self.with_shape("/health").iter().any(|r| r.method == "GET")
    }
}

/// A path as the sandbox compares paths: no trailing `/`, every `{…}`
/// segment replaced by `{}`.
pub fn shape(path: &str) -> String {
    path.trim_end_matches('/')
        .split('/')
        .map(|part| {
            if part.starts_with('{') && part.ends_with('}') {
                "{}"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    App,
    /// A router and its own prefix (`None` when not static).
    Router(Option<String>),
}

/// A route declared on an object, before prefixes are applied.
#[derive(Debug, Clone)]
struct Declared {
    owner: String,
    methods: Vec<String>,
    path: String,
    place: Place,
}

/// `parent.include_router(child, prefix=…)`.
#[derive(Debug, Clone)]
struct Inclusion {
    parent: String,
    child: Option<String>,
    prefix: Option<String>,
}

/// Parent object → the objects included into it, each with the prefix of
/// the inclusion (`None` when either is not static).
type Inclusions = HashMap<String, Vec<(Option<String>, Option<String>)>>;

/// What one module says about names, objects and routes.
#[derive(Default)]
struct Facts {
    /// Local name → qualified name.
    imports: HashMap<String, String>,
    /// Module-level string constants.
    constants: HashMap<String, String>,
    /// Objects created in the module: qualified name → kind, place.
    objects: Vec<(String, Kind, Place)>,
    declared: Vec<Declared>,
    inclusions: Vec<Inclusion>,
    /// Something added routes in a way that cannot be read statically.
    uncertain: bool,
}

/// Reads the routes of every non-test module; `app_module` is the module
/// holding the service's app (`app.main`), for where findings about the
/// app as a whole point.
pub fn analyse(modules: &[Module<'_>], app_module: &str) -> Analysis {
    // A module that does not parse may declare anything; judge nothing.
    if modules.iter().any(|m| !m.is_test() && !m.has_valid_syntax()) {
        return Analysis::default();
    }
    let sources: Vec<&Module<'_>> = modules.iter().filter(|m| !m.is_test()).collect();
    let module_names: BTreeSet<String> = sources.iter().map(|m| m.name()).collect();
    let mut facts: HashMap<String, Facts> = HashMap::new();
    for m in &sources {
        facts.insert(m.name(), first_pass(m));
    }
    let objects: HashMap<String, (Kind, Place)> = facts
        .values()
        .flat_map(|f| f.objects.iter().map(|(q, k, p)| (q.clone(), (k.clone(), p.clone()))))
        .collect();
    for m in &sources {
        let name = m.name();
        let f = facts.get_mut(&name).expect("facts exist for every module");
        second_pass(m, f, &objects);
    }
    let canonical = |q: &str| canonical(q, &facts, &module_names, &objects);
    let mut uncertain = facts.values().any(|f| f.uncertain);
    let mut declared: HashMap<String, Vec<&Declared>> = HashMap::new();
    let mut included: Inclusions = HashMap::new();
    for f in facts.values() {
        for d in &f.declared {
            match canonical(&d.owner) {
                Some(owner) => declared.entry(owner).or_default().push(d),
                None => uncertain = true,
            }
        }
        for i in &f.inclusions {
            let Some(parent) = canonical(&i.parent) else {
                // Routes included into something we cannot identify may
                // still end up in the app.
                uncertain = true;
                continue;
            };
            let child = i.child.as_deref().and_then(canonical);
            included.entry(parent).or_default().push((child, i.prefix.clone()));
        }
    }
    let graph = Graph {
        objects: &objects,
        declared: &declared,
        included: &included,
    };
    let mut routes = Vec::new();
    let apps: Vec<&String> = objects
        .iter()
        .filter(|(_, (k, _))| *k == Kind::App)
        .map(|(q, _)| q)
        .collect();
    for app in &apps {
        uncertain |= !graph.expand(app, "", &mut Vec::new(), &mut routes);
    }
    let app_place = objects
        .iter()
        .filter(|(q, (k, _))| *k == Kind::App && q.strip_prefix(app_module).is_some_and(|rest| rest.starts_with('.')))
        .map(|(_, (_, p))| p.clone())
        .min_by_key(|p| p.line);
    Analysis {
        routes,
        certain: !apps.is_empty() && !uncertain,
        found_app: !apps.is_empty(),
        app_place,
    }
}

/// Objects, the routes declared on them and the routers included into
/// them: everything needed to compute an app's full paths.
struct Graph<'g> {
    objects: &'g HashMap<String, (Kind, Place)>,
    declared: &'g HashMap<String, Vec<&'g Declared>>,
    included: &'g Inclusions,
}

impl Graph<'_> {
    /// Adds the routes `object` serves under `prefix`; false when some of
    /// them cannot be known (a computed prefix or an unknown router).
    fn expand(&self, object: &str, prefix: &str, stack: &mut Vec<String>, routes: &mut Vec<Route>) -> bool {
        // Inclusion cycles cannot happen at run time (FastAPI copies routes
        // when including); the guard only keeps a bad answer from looping.
        if stack.iter().any(|s| s == object) || stack.len() > 16 {
            return true;
        }
        let own = match self.objects.get(object) {
            Some((Kind::Router(Some(p)), _)) => p.as_str(),
            Some((Kind::Router(None), _)) => return false,
            _ => "",
        };
        let base = format!("{prefix}{own}");
        for d in self.declared.get(object).into_iter().flatten() {
            for method in &d.methods {
                routes.push(Route {
                    method: method.clone(),
                    path: format!("{base}{}", d.path),
                    place: d.place.clone(),
                });
            }
        }
        let mut known = true;
        stack.push(object.to_owned());
        for (child, extra) in self.included.get(object).into_iter().flatten() {
            match (child, extra) {
                (Some(child), Some(extra)) => known &= self.expand(child, &format!("{base}{extra}"), stack, routes),
                _ => known = false,
            }
        }
        stack.pop();
        known
    }
}

/// Follows a qualified name through re-exports to the object it names.
fn canonical(
    qualified: &str,
    facts: &HashMap<String, Facts>,
    modules: &BTreeSet<String>,
    objects: &HashMap<String, (Kind, Place)>,
) -> Option<String> {
    let mut q = qualified.to_owned();
    for _ in 0..8 {
        if objects.contains_key(&q) {
            return Some(q);
        }
        let (module, name) = q.rsplit_once('.')?;
        if !modules.contains(module) {
            return None;
        }
        q.clone_from(facts.get(module)?.imports.get(name)?);
    }
    None
}

/// Imports, constants and the objects the module creates.
fn first_pass(module: &Module<'_>) -> Facts {
    let mut facts = Facts::default();
    let name = module.name();
    let package = module.package();
    for binding in imports::bindings(module.body(), Some(&package)) {
        // A star import binds names this pass cannot list.
        if let Binding::Name { local, target } = binding {
            facts.imports.insert(local, target);
        }
    }
    for stmt in module.body() {
        let (target, value) = match stmt {
            Stmt::Assign(a) if a.targets.len() == 1 => (&a.targets[0], &*a.value),
            Stmt::AnnAssign(a) if a.value.is_some() => (&*a.target, a.value.as_deref().expect("checked")),
            _ => continue,
        };
        if let Some(t) = target.as_name_expr()
            && let Some(text) = static_string(value, &facts.constants)
        {
            facts.constants.insert(t.id.to_string(), text);
        }
    }
    let mut creations = Creations {
        module,
        name: &name,
        facts: &mut facts,
    };
    creations.visit_body(module.body());
    facts
}

/// Resolves a name or attribute chain to a qualified name. Objects the
/// module creates win over imports of the same name, as the later binding
/// does at run time in every app seen in practice (`import app.db` then
/// `app = FastAPI()`).
fn resolve(expr: &Expr, module: &str, facts: &Facts, objects: &HashMap<String, (Kind, Place)>) -> Option<String> {
    match expr {
        Expr::Name(n) => {
            let local = format!("{module}.{}", n.id);
            if objects.contains_key(&local) || facts.objects.iter().any(|(q, _, _)| *q == local) {
                return Some(local);
            }
            Some(facts.imports.get(n.id.as_str()).cloned().unwrap_or(local))
        }
        Expr::Attribute(a) => resolve(&a.value, module, facts, objects).map(|b| format!("{b}.{}", a.attr)),
        _ => None,
    }
}

/// A string known without running the code.
pub(super) fn static_string(expr: &Expr, constants: &HashMap<String, String>) -> Option<String> {
    match expr {
        Expr::StringLiteral(_) => string_value(expr).map(ToOwned::to_owned),
        Expr::Name(n) => constants.get(n.id.as_str()).cloned(),
        Expr::BinOp(b) if b.op == Operator::Add => {
            Some(static_string(&b.left, constants)? + &static_string(&b.right, constants)?)
        }
        Expr::FString(f) => fstring_text(f, constants, None),
        _ => None,
    }
}

/// The text of an f-string, each interpolation replaced by its
/// [`static_string`] or, when it has none, by `hole`; `None` when one has
/// none and there is no `hole`.
pub(super) fn fstring_text(f: &ExprFString, constants: &HashMap<String, String>, hole: Option<char>) -> Option<String> {
    let mut out = String::new();
    for part in &f.value {
        match part {
            FStringPart::Literal(l) => out.push_str(l.as_str()),
            FStringPart::FString(fs) => {
                for element in &fs.elements {
                    match element {
                        InterpolatedStringElement::Literal(l) => out.push_str(&l.value),
                        InterpolatedStringElement::Interpolation(i) => match static_string(&i.expression, constants) {
                            Some(known) => out.push_str(&known),
                            None => out.push(hole?),
                        },
                    }
                }
            }
        }
    }
    Some(out)
}

fn place(module: &Module<'_>, node: &impl Ranged) -> Place {
    let (line, col) = module.position(node.start());
    Place {
        file: module.path().to_owned(),
        line,
        col,
    }
}

/// `x = FastAPI(…)` / `x = APIRouter(prefix=…)`, anywhere in the module.
struct Creations<'c, 'm> {
    module: &'c Module<'m>,
    name: &'c str,
    facts: &'c mut Facts,
}

impl<'a> Visitor<'a> for Creations<'_, '_> {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        let assignment = match stmt {
            Stmt::Assign(a) if a.targets.len() == 1 => Some((&a.targets[0], &*a.value)),
            Stmt::AnnAssign(a) => a.value.as_deref().map(|v| (&*a.target, v)),
            _ => None,
        };
        if let Some((target, Expr::Call(call))) = assignment
            && let Some(t) = target.as_name_expr()
            && let Some(class) = resolve(&call.func, self.name, self.facts, &HashMap::new())
        {
            let kind = if APP_CLASSES.contains(&class.as_str()) {
                Some(Kind::App)
            } else if ROUTER_CLASSES.contains(&class.as_str()) {
                let prefix = match call.arguments.find_keyword("prefix") {
                    None => Some(String::new()),
                    Some(k) => static_string(&k.value, &self.facts.constants),
                };
                Some(Kind::Router(prefix))
            } else {
                None
            };
            if let Some(kind) = kind {
                let at = place(self.module, stmt);
                self.facts.objects.push((format!("{}.{}", self.name, t.id), kind, at));
            }
        }
        visitor::walk_stmt(self, stmt);
    }
}

fn second_pass(module: &Module<'_>, facts: &mut Facts, objects: &HashMap<String, (Kind, Place)>) {
    let name = module.name();
    let mut reader = Declarations {
        module,
        name: &name,
        objects,
        facts: std::mem::take(facts),
    };
    reader.visit_body(module.body());
    *facts = reader.facts;
}

/// Route decorators, `add_api_route` and `include_router` calls.
struct Declarations<'c, 'm> {
    module: &'c Module<'m>,
    name: &'c str,
    objects: &'c HashMap<String, (Kind, Place)>,
    facts: Facts,
}

impl Declarations<'_, '_> {
    fn owner(&self, expr: &Expr) -> Option<String> {
        resolve(expr, self.name, &self.facts, self.objects)
    }

    fn path_argument(&self, call: &ruff_python_ast::ExprCall) -> Option<String> {
        let arg = call.arguments.find_argument_value("path", 0)?;
        static_string(arg, &self.facts.constants)
    }

    /// `methods=[…]`; `["GET"]` when absent, `None` when not static.
    fn methods_argument(&self, call: &ruff_python_ast::ExprCall) -> Option<Vec<String>> {
        let Some(keyword) = call.arguments.find_keyword("methods") else {
            return Some(vec!["GET".into()]);
        };
        let items: &[Expr] = match &keyword.value {
            Expr::List(l) => &l.elts,
            Expr::Tuple(t) => &t.elts,
            Expr::Set(s) => &s.elts,
            _ => return None,
        };
        items
            .iter()
            .map(|e| static_string(e, &self.facts.constants).map(|m| m.to_ascii_uppercase()))
            .collect()
    }

    fn declare(&mut self, owner: &Expr, methods: Option<Vec<String>>, call: &ruff_python_ast::ExprCall, at: Place) {
        let path = self.path_argument(call);
        // FastAPI route paths start with `/` (or are empty under a prefixed
        // router); anything else (`@mock.patch("app.x")`) is not a route.
        if path.as_deref().is_some_and(|p| !p.is_empty() && !p.starts_with('/')) {
            return;
        }
        let owner_name = self.owner(owner);
        let known_owner = owner_name.as_deref().is_some_and(|o| self.objects.contains_key(o));
        match (owner_name, path, methods) {
            (Some(owner), Some(path), Some(methods)) if known_owner || self.re_export_candidate(&owner) => {
                self.facts.declared.push(Declared {
                    owner,
                    methods,
                    path,
                    place: at,
                });
            }
            (_, None, _) if !known_owner => {}
            _ => self.facts.uncertain = true,
        }
    }

    /// An owner that is not an object created anywhere may still be one
    /// imported through another module; [`canonical`] decides later.
    fn re_export_candidate(&self, owner: &str) -> bool {
        !owner.starts_with(&format!("{}.", self.name)) || self.facts.imports.values().any(|v| v == owner)
    }
}

impl<'a> Visitor<'a> for Declarations<'_, '_> {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        if let Stmt::FunctionDef(f) = stmt {
            for decorator in &f.decorator_list {
                let Expr::Call(call) = &decorator.expression else {
                    continue;
                };
                let Expr::Attribute(attr) = &*call.func else { continue };
                let method = attr.attr.as_str();
                let methods = if METHOD_DECORATORS.contains(&method) {
                    Some(vec![method.to_ascii_uppercase()])
                } else if method == "api_route" {
                    self.methods_argument(call)
                } else {
                    continue;
                };
                let at = place(self.module, decorator);
                self.declare(&attr.value, methods, call, at);
            }
        }
        visitor::walk_stmt(self, stmt);
    }

    fn visit_expr(&mut self, expr: &'a Expr) {
        if let Expr::Call(call) = expr
            && let Expr::Attribute(attr) = &*call.func
        {
            match attr.attr.as_str() {
                "add_api_route" => {
                    let methods = self.methods_argument(call);
                    let at = place(self.module, expr);
                    self.declare(&attr.value, methods, call, at);
                }
                "include_router" => {
                    if let Some(parent) = self.owner(&attr.value) {
                        let child = call
                            .arguments
                            .find_argument_value("router", 0)
                            .and_then(|c| self.owner(c));
                        let prefix = match call.arguments.find_keyword("prefix") {
                            None => Some(String::new()),
                            Some(k) => static_string(&k.value, &self.facts.constants),
                        };
                        self.facts.inclusions.push(Inclusion { parent, child, prefix });
                    } else {
                        self.facts.uncertain = true;
                    }
                }
                _ => {}
            }
        }
        visitor::walk_expr(self, expr);
    }
}

/// Every spec endpoint, and `GET /health`, must be declared.
pub fn check(spec: &ServiceSpec, analysis: &Analysis) -> Vec<Diagnostic> {
    if !analysis.found_app {
        return Vec::new();
    }
    let severity = if analysis.certain {
        Severity::Error
    } else {
        Severity::Warning
    };
    let hedge = if analysis.certain {
        ""
    } else {
        " (as far as the routes can be read statically)"
    };
    let mut wanted: Vec<(String, String, bool)> = spec
        .endpoints
        .iter()
        .map(|e| (e.method.clone(), e.path.clone(), false))
        .collect();
    if !wanted.iter().any(|(m, p, _)| m == "GET" && shape(p) == "/health") {
        wanted.push(("GET".into(), "/health".into(), true));
    }
    let app = analysis.app_place.clone().unwrap_or(Place {
        file: "app/main.py".into(),
        line: 0,
        col: 0,
    });
    let mut out = Vec::new();
    for (method, path, implicit) in wanted {
        let same_path = analysis.with_shape(&path);
        if same_path.iter().any(|r| r.method == method) {
            continue;
        }
        let why = if implicit {
            "every service must answer it with 200 `{\"status\": \"ok\"}`"
        } else {
            "the spec requires it"
        };
        match same_path.first() {
            None => out.push(Diagnostic::new(
                severity,
                &app.file,
                app.line,
                app.col,
                "route-missing",
                format!(
                    "`{method} {path}` is not declared{hedge}; {why}: add `@app.{}(\"{path}\")` or an equivalent router route",
                    method.to_ascii_lowercase()
                ),
            )),
            Some(first) => {
                let mut methods: Vec<&str> = same_path.iter().map(|r| r.method.as_str()).collect();
                methods.sort_unstable();
                methods.dedup();
                out.push(Diagnostic::new(
                    severity,
                    &first.place.file,
                    first.place.line,
                    first.place.col,
                    "route-method",
                    format!(
                        "`{path}` is declared for {} but not for {method}{hedge}; {why}",
                        methods.join(", ")
                    ),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::File;

    fn routes(files: &[(&str, &str)]) -> (Vec<(String, String)>, bool) {
        let files: Vec<File> = files.iter().map(|(p, c)| File::new(*p, *c)).collect();
        let modules: Vec<Module<'_>> = files.iter().map(Module::parse).collect();
        let a = analyse(&modules, "app.main");
        let mut r: Vec<(String, String)> = a.routes.into_iter().map(|r| (r.method, r.path)).collect();
        r.sort();
        (r, a.certain)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect()
    }

    #[test]
    fn routers_and_prefixes_compose_across_modules() {
        let files = [
            (
                "app/main.py",
                "from fastapi import FastAPI\nfrom app.routers import notes\nfrom .routers.tags import router as tags_router\nAPI = '/api'\napp = FastAPI()\napp.include_router(notes.router, prefix=API)\napp.include_router(tags_router)\n@app.get('/health')\ndef health():\n    return {}\n",
            ),
            ("app/routers/__init__.py", ""),
            (
                "app/routers/notes.py",
                "from fastapi import APIRouter\nrouter = APIRouter(prefix='/notes')\n@router.get('')\ndef list_notes():\n    return []\n@router.api_route('/{note_id}', methods=['GET', 'delete'])\ndef one(note_id: int):\n    return {}\n",
            ),
            (
                "app/routers/tags.py",
                "import fastapi\nrouter = fastapi.APIRouter()\nrouter.add_api_route('/tags', lambda: [], methods=['POST'])\n",
            ),
        ];
        let (found, certain) = routes(&files);
        assert!(certain);
        assert_eq!(
            found,
            pairs(&[
                ("DELETE", "/api/notes/{note_id}"),
                ("GET", "/api/notes"),
                ("GET", "/api/notes/{note_id}"),
                ("GET", "/health"),
                ("POST", "/tags"),
            ])
        );
    }

    #[test]
    fn an_app_factory_is_understood() {
        let files = [(
            "app/main.py",
            "from fastapi import FastAPI\ndef create_app() -> FastAPI:\n    app = FastAPI()\n    @app.post('/items')\n    def create():\n        return {}\n    return app\napp = create_app()\n",
        )];
        let (found, certain) = routes(&files);
        assert!(certain);
        assert_eq!(found, pairs(&[("POST", "/items")]));
    }

    #[test]
    fn a_computed_path_makes_the_analysis_uncertain() {
        let files = [(
            "app/main.py",
            "import os\nfrom fastapi import FastAPI\napp = FastAPI()\n@app.get(os.environ['P'])\ndef f():\n    return {}\n",
        )];
        assert!(!routes(&files).1);
    }

    #[test]
    fn other_decorators_named_like_methods_are_ignored() {
        let files = [(
            "app/main.py",
            "from unittest import mock\nfrom fastapi import FastAPI\napp = FastAPI()\n@mock.patch('app.x')\ndef f():\n    return {}\n",
        )];
        assert!(routes(&files).1);
    }

    #[test]
    fn shapes_ignore_parameter_names_and_trailing_slashes() {
        assert_eq!(shape("/notes/{id}/"), shape("/notes/{note_id}"));
        assert_ne!(shape("/notes/{id}"), shape("/notes"));
    }
}
