//! The OpenAPI 3.1 description of the API, served at `/openapi.json`.
//!
//! Generated from the code: each handler carries its `#[utoipa::path]`
//! (method, path, parameters, answers) and every body is a Rust type deriving
//! `ToSchema`, the same type the handler serialises. `tests/openapi.rs`
//! checks that every route of [`super::v1_routes`] is described with its
//! method and that live answers validate against the document.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use axum::Json;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::batches::{self, BatchRequestBody};
use super::{jobs, ops, overview};
use crate::spec::{Options, Spec};
use crate::views::{ErrorBody, ErrorDetail};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "an API token (`kiln_` and 64 hex digits) from `kiln-dispatcher token create`",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Kiln API",
        description = "Batches of code specs turned into generated, validated, sandbox-tested code. \
                       Every /v1 route needs `Authorization: Bearer <token>` (scope read for GET, \
                       admin for review decisions, submit for the rest) unless the dispatcher runs \
                       with KILN_AUTH=off."
    ),
    paths(
        overview::list, batches::create, batches::status, batches::update, batches::jobs,
        batches::report, batches::retry, batches::rejudge, batches::cancel, jobs::status, jobs::attempts,
        jobs::artifacts, jobs::file, jobs::retry, jobs::rejudge, jobs::cancel, jobs::review, overview::workers,
        ops::healthz, ops::readyz,
        ops::metrics, openapi_json,
    ),
    components(schemas(ErrorBody, ErrorDetail, BatchRequestBody, Spec, Options)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "batches", description = "create, follow, list, retry, re-judge and cancel batches"),
        (name = "jobs", description = "one job: status, attempts and why they failed, files"),
        (name = "workers", description = "the live worker processes"),
        (name = "operations", description = "probes, metrics and this document; no token"),
    )
)]
pub struct ApiDoc;

/// The document as JSON, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
        close_composed_objects(&mut doc);
        doc
    })
}

/// The JSON Schema (2020-12) of a spec file as `kiln submit` reads it: one
/// spec, a list of specs, or a batch object (`{"name"?, "specs",
/// "options"?}`). Cut from this document's component schemas, so it says
/// what the API accepts and cannot drift from it.
pub fn spec_file_schema() -> Value {
    fn rebase(v: &mut Value) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get_mut("$ref")
                    && let Some(name) = r.strip_prefix("#/components/schemas/")
                {
                    *r = format!("#/$defs/{name}");
                }
                map.values_mut().for_each(rebase);
            }
            Value::Array(items) => items.iter_mut().for_each(rebase),
            _ => {}
        }
    }
    let mut defs = document()["components"]["schemas"].clone();
    rebase(&mut defs);
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Kiln spec file",
        "description": "One spec, a list of specs, or a batch: {\"name\"?, \"specs\", \"options\"?}",
        "anyOf": [
            {"$ref": "#/$defs/Spec"},
            {"type": "array", "items": {"$ref": "#/$defs/Spec"}},
            {"$ref": "#/$defs/BatchRequestBody"}
        ],
        "$defs": defs,
    })
}

/// A type with `#[serde(deny_unknown_fields)]` gets `additionalProperties:
/// false`, which only sees its own properties: combined in an `allOf` with
/// the `kind` tag of [`Spec`], it would refuse `kind` itself, so the
/// document would reject every real spec. JSON Schema 2020-12 (OpenAPI
/// 3.1's) closes a composition with `unevaluatedProperties: false` on the
/// `allOf`, which sees the properties of all its members: the closing moves
/// there.
fn close_composed_objects(doc: &mut Value) {
    fn composed_refs(v: &Value, found: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::Array(members)) = map.get("allOf") {
                    for m in members {
                        if let Some(name) = m["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
                            found.insert(name.to_owned());
                        }
                    }
                }
                map.values().for_each(|v| composed_refs(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| composed_refs(v, found)),
            _ => {}
        }
    }
    fn close_all_of(v: &mut Value, closed: &BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                let composes_closed = map.get("allOf").and_then(Value::as_array).is_some_and(|members| {
                    members.iter().any(|m| {
                        m["$ref"]
                            .as_str()
                            .and_then(|r| r.strip_prefix("#/components/schemas/"))
                            .is_some_and(|name| closed.contains(name))
                    })
                });
                if composes_closed {
                    map.insert("unevaluatedProperties".into(), Value::Bool(false));
                }
                map.values_mut().for_each(|v| close_all_of(v, closed));
            }
            Value::Array(items) => items.iter_mut().for_each(|v| close_all_of(v, closed)),
            _ => {}
        }
    }
    let mut composed = BTreeSet::new();
    composed_refs(doc, &mut composed);
    let mut closed = BTreeSet::new();
    if let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) {
        for name in &composed {
            if let Some(Value::Object(schema)) = schemas.get_mut(name)
                && schema.get("additionalProperties") == Some(&Value::Bool(false))
            {
                schema.remove("additionalProperties");
                closed.insert(name.clone());
            }
        }
    }
    close_all_of(doc, &closed);
}

/// `GET /openapi.json`: this document. No token: it describes the API, not
/// its data.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Json(document()))
}
