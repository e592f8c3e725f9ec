//! Validates an OpenAPI 3.1 document offline, for the tests of the server's `/openapi.json`.
//!
//! Include it from a test file with `#[path = "common/openapi.rs"] mod openapi;`.
//!
//! [`validate`] returns every problem it finds (an empty list means the document is valid):
//!
//! 1. JSON Schema validation against the OpenAPI Initiative's OAS 3.1 schema (iteration
//!    2022-10-07), vendored with the OAS 3.1 dialect and vocabulary meta-schemas under
//!    `tests/fixtures/openapi/` (see the README there). Every `$ref` those schemas make is
//!    registered from the vendored files or is one of the JSON Schema 2020-12 meta-schemas
//!    that the `jsonschema` crate ships, and the retriever refuses anything else, so nothing is
//!    ever fetched. The entry point is [`SCHEMA_BASE`], the OAS "schema-base" wrapper: it
//!    binds the `meta` dynamic anchor to the OAS 3.1 dialect, so the plain schema's
//!    `"$dynamicRef": "#meta"` makes every Schema Object in the document be validated as a
//!    JSON Schema 2020-12 schema too (the plain schema alone accepts any object there).
//!    Format assertions are on (`uri`, `uri-reference`, `email`, `regex`, ...).
//! 2. What a JSON Schema cannot express: every local `$ref` (and `discriminator.mapping`
//!    entry) resolves; every templated path parameter `{x}` is declared as an `in: path`
//!    parameter for each operation of its path (on the path item or the operation) and every
//!    declared path parameter appears in the template; parameters are unique by `(name, in)`;
//!    no two path templates are the same up to parameter names; `operationId`s are unique;
//!    security requirements name schemes declared in `components/securitySchemes`.
//!
//! [`operations`] lists the document's `(METHOD, path)` pairs to compare with the server's
//! routes.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use jsonschema::{Draft, Resource, Retrieve, Uri, Validator};
use serde_json::{json, Value};

/// `$id` of the vendored `schema.json` (the OAS 3.1 document schema).
pub const SCHEMA_ID: &str = "https://spec.openapis.org/oas/3.1/schema/2022-10-07";
/// `$id` of the vendored `dialect-base.json` (the OAS 3.1 Schema Object dialect).
pub const DIALECT_ID: &str = "https://spec.openapis.org/oas/3.1/dialect/base";
/// `$id` of the vendored `meta-base.json` (the OAS base vocabulary meta-schema).
pub const META_ID: &str = "https://spec.openapis.org/oas/3.1/meta/base";

const SCHEMA_JSON: &str = include_str!("../fixtures/openapi/schema.json");
const DIALECT_JSON: &str = include_str!("../fixtures/openapi/dialect-base.json");
const META_JSON: &str = include_str!("../fixtures/openapi/meta-base.json");

/// The OAS 3.1 "schema-base": the document schema, with Schema Objects held to the OAS dialect.
///
/// Its content is that of the OpenAPI Initiative's `schema-base` for iteration 2022-10-07
/// (none of the registry packages that carry the 2022-10-07 schema carries its schema-base,
/// see the fixtures README), under a `urn:` id of this project's so that it does not pose as
/// the published file. The dynamic anchor `meta` here is the outermost one in the dynamic
/// scope when validation enters `schema.json` through the `$ref`, so the `$dynamicRef` of
/// `schema.json` lands here, and from here on the OAS dialect (JSON Schema 2020-12 plus the
/// OAS base vocabulary).
///
/// One difference of form: the published file's two `"$ref": "#/$defs/dialect"` are written
/// absolute here. They mean the same (no `$id` lies between them and the root), but
/// `jsonschema` 0.33 resolves a relative `$ref` inside a subschema reached through a
/// `$dynamicRef` against the base URI of the resource the `$dynamicRef` was in
/// (`schema.json`), not of the one it landed in, and fails to compile with
/// "Pointer '/$defs/dialect' does not exist".
pub fn schema_base() -> Value {
    json!({
        "$id": SCHEMA_BASE,
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": "OpenAPI 3.1.x documents using the OpenAPI JSON Schema dialect (the OAS schema-base, 2022-10-07)",
        "$ref": SCHEMA_ID,
        "properties": {
            "jsonSchemaDialect": { "$ref": format!("{SCHEMA_BASE}#/$defs/dialect") }
        },
        "$defs": {
            "dialect": { "const": DIALECT_ID },
            "schema": {
                "$dynamicAnchor": "meta",
                "$ref": DIALECT_ID,
                "properties": {
                    "$schema": { "$ref": format!("{SCHEMA_BASE}#/$defs/dialect") }
                }
            }
        }
    })
}

/// The `$id` of [`schema_base`].
pub const SCHEMA_BASE: &str = "urn:ltx-i2v:test:oas-3.1-schema-base-2022-10-07";

/// HTTP methods that are fields of a Path Item Object, lowercase as they appear there.
pub const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Longest a single message from the JSON Schema validator is kept (they quote instances).
const MAX_MESSAGE: usize = 400;

/// Refuses every retrieval: all that the vendored schemas reference is registered up front.
struct Offline;

impl Retrieve for Offline {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!(
            "{} is not vendored under tests/fixtures/openapi and nothing is fetched at test time",
            uri.as_str()
        )
        .into())
    }
}

fn parse(name: &str, text: &str) -> Value {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("tests/fixtures/openapi/{name} is not JSON: {e}"))
}

fn resource(name: &str, text: &str) -> Resource {
    Resource::from_contents(parse(name, text))
        .unwrap_or_else(|e| panic!("tests/fixtures/openapi/{name} is not a schema resource: {e}"))
}

fn build(entry: &Value) -> Validator {
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .with_retriever(Offline)
        .with_resources(
            [
                (SCHEMA_ID, resource("schema.json", SCHEMA_JSON)),
                (DIALECT_ID, resource("dialect-base.json", DIALECT_JSON)),
                (META_ID, resource("meta-base.json", META_JSON)),
            ]
            .into_iter(),
        )
        .build(entry)
        .unwrap_or_else(|e| panic!("the vendored OAS 3.1 schemas do not compile: {e}"))
}

/// The validator of the full check: [`schema_base`], Schema Objects held to the OAS dialect.
pub fn validator() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| build(&schema_base()))
}

/// The plain OAS 3.1 schema, which leaves Schema Objects unchecked (any object or boolean).
/// Only there for the tests that show the difference [`validator`] makes.
pub fn plain_validator() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| build(&json!({ "$ref": SCHEMA_ID })))
}

/// JSON Schema problems only, each `schema: at <instance path>: <message>`.
///
/// A failing subschema yields no annotations, so an error deep in the document also makes
/// every enclosing `unevaluatedProperties: false` fail ("Unevaluated properties are not
/// allowed ('paths' was unexpected)", then the same for each level down). Those echoes are
/// left out when each property they name has an error of its own underneath; an
/// `unevaluatedProperties` error that stands alone (an unknown field) is kept.
pub fn schema_errors_with(validator: &Validator, doc: &Value) -> Vec<String> {
    let errors: Vec<(String, Option<Vec<String>>, String)> = validator
        .iter_errors(doc)
        .map(|e| {
            let unexpected = match &e.kind {
                ValidationErrorKind::UnevaluatedProperties { unexpected } => {
                    Some(unexpected.clone())
                }
                _ => None,
            };
            (
                e.instance_path.as_str().to_string(),
                unexpected,
                e.to_string(),
            )
        })
        .collect();
    let has_error_under = |prefix: &str| {
        errors
            .iter()
            .any(|(p, _, _)| p == prefix || p.starts_with(&format!("{prefix}/")))
    };
    errors
        .iter()
        .filter(|(at, unexpected, _)| match unexpected {
            Some(props) => !props
                .iter()
                .all(|prop| has_error_under(&format!("{at}/{}", escape(prop)))),
            None => true,
        })
        .map(|(at, _, msg)| {
            let mut msg = msg.clone();
            if msg.len() > MAX_MESSAGE {
                let mut cut = MAX_MESSAGE;
                while !msg.is_char_boundary(cut) {
                    cut -= 1;
                }
                msg.truncate(cut);
                msg.push_str("...");
            }
            format!("schema: at {}: {msg}", if at.is_empty() { "/" } else { at })
        })
        .collect()
}

/// A JSON pointer reference token: `~` as `~0`, `/` as `~1`.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Every problem with `doc` as an OpenAPI 3.1 document; empty when it is valid.
pub fn validate(doc: &Value) -> Vec<String> {
    let mut problems = schema_errors_with(validator(), doc);
    if !doc.is_object() {
        return problems;
    }
    check_refs(doc, doc, &mut Vec::new(), &mut problems);
    check_path_parameters(doc, &mut problems);
    check_operation_ids(doc, &mut problems);
    check_security(doc, &mut problems);
    problems
}

/// `(METHOD, path)` for each operation under `paths`, the method uppercase.
pub fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        for (path, item) in paths {
            let item = deref(doc, item);
            for m in METHODS {
                if item.get(m).is_some() {
                    out.insert((m.to_ascii_uppercase(), path.clone()));
                }
            }
        }
    }
    out
}

/// Panics with every problem, one a line, unless `doc` is a valid OpenAPI 3.1 document.
pub fn assert_valid(doc: &Value) {
    let problems = validate(doc);
    assert!(
        problems.is_empty(),
        "the OpenAPI document has {} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

// ---- references ---------------------------------------------------------------------------

/// Resolves a local JSON pointer reference (`#`, `#/a/b~1c`, percent-encoded or not).
pub fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    let fragment = reference.strip_prefix('#')?;
    if fragment.is_empty() {
        return Some(doc);
    }
    if !fragment.starts_with('/') {
        return None; // a plain-name anchor; OpenAPI documents don't define those
    }
    doc.pointer(&percent_decode(fragment)?)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Follows `$ref`s from `v` until an object without one (or a dangling/looping reference,
/// which then comes back as is: [`check_refs`] reports those).
fn deref<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    for _ in 0..32 {
        match v
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| resolve(doc, r))
        {
            Some(target) => v = target,
            None => return v,
        }
    }
    v
}

/// Keys whose object value maps names to things: a key inside one is a name, not a keyword.
const NAME_MAPS: [&str; 5] = [
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
];

fn pointer(path: &[String]) -> String {
    if path.is_empty() {
        return "/".into();
    }
    path.iter().map(|s| format!("/{}", escape(s))).collect()
}

/// Reports every `$ref` string (and `discriminator.mapping` value that is a local pointer)
/// that does not resolve. Literal values (`example`, `default`, `const`, `enum`, a
/// schema's `examples` array, an Example Object's `value`) are not walked: a `$ref` there
/// is data.
fn check_refs(doc: &Value, v: &Value, path: &mut Vec<String>, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            let names = path.last().is_some_and(|k| NAME_MAPS.contains(&k.as_str()));
            let in_examples_map = path.len() >= 2 && path[path.len() - 2] == "examples" && !names;
            for (k, child) in map {
                if !names {
                    let literal = matches!(k.as_str(), "example" | "default" | "const" | "enum")
                        || (k == "examples" && child.is_array())
                        || (k == "value" && in_examples_map);
                    if literal {
                        continue;
                    }
                    if k == "$ref" {
                        if let Some(r) = child.as_str() {
                            check_ref(doc, r, &pointer(path), out);
                        }
                        continue;
                    }
                    if k == "mapping" && path.last().is_some_and(|p| p == "discriminator") {
                        for (name, target) in child.as_object().into_iter().flatten() {
                            if let Some(t) = target.as_str().filter(|t| t.starts_with('#')) {
                                let at = format!("{}/mapping/{name}", pointer(path));
                                check_ref(doc, t, &at, out);
                            }
                        }
                        continue;
                    }
                }
                path.push(k.clone());
                check_refs(doc, child, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(i.to_string());
                check_refs(doc, child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn check_ref(doc: &Value, r: &str, at: &str, out: &mut Vec<String>) {
    if !r.starts_with('#') {
        out.push(format!(
            "$ref: at {at}: {r:?} is not a local reference (only `#/...` pointers into this \
             document can be resolved offline)"
        ));
    } else if resolve(doc, r).is_none() {
        out.push(format!(
            "$ref: at {at}: dangling $ref {r:?}: nothing at that pointer"
        ));
    }
}

// ---- path parameters ----------------------------------------------------------------------

/// The `{name}`s of a path template, in order, or a description of why it is malformed.
pub fn template_names(path: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err("has a '}' without a '{'".into());
        }
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or("has a '{' without a '}'")?;
        let name = &after[..close];
        if name.is_empty() || name.contains('{') {
            return Err(format!("has a malformed template expression {{{name}}}"));
        }
        names.push(name.to_string());
        rest = &after[close + 1..];
    }
    Ok(names)
}

/// `(name, in) -> parameter` of a `parameters` list, references followed; duplicates reported.
fn parameters<'a>(
    doc: &'a Value,
    list: Option<&'a Value>,
    at: &str,
    out: &mut Vec<String>,
) -> BTreeMap<(String, String), &'a Value> {
    let mut found = BTreeMap::new();
    for p in list.and_then(Value::as_array).into_iter().flatten() {
        let p = deref(doc, p);
        let (Some(name), Some(loc)) = (
            p.get("name").and_then(Value::as_str),
            p.get("in").and_then(Value::as_str),
        ) else {
            continue; // the schema reports it
        };
        if found
            .insert((name.to_string(), loc.to_string()), p)
            .is_some()
        {
            out.push(format!(
                "parameters: at {at}: parameter {name:?} in {loc:?} is listed more than once"
            ));
        }
    }
    found
}

fn path_names(params: &BTreeMap<(String, String), &Value>) -> BTreeSet<String> {
    params
        .keys()
        .filter(|(_, loc)| loc == "path")
        .map(|(name, _)| name.clone())
        .collect()
}

fn check_path_parameters(doc: &Value, out: &mut Vec<String>) {
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return;
    };
    let mut shapes: BTreeMap<String, &str> = BTreeMap::new();
    for (path, item) in paths {
        let names = match template_names(path) {
            Ok(names) => names,
            Err(why) => {
                out.push(format!("paths: {path:?} {why}"));
                continue;
            }
        };
        let template: BTreeSet<String> = names.iter().cloned().collect();
        if template.len() != names.len() {
            out.push(format!(
                "paths: {path:?} uses a template name more than once"
            ));
        }
        let mut shape = path.clone();
        for n in &names {
            shape = shape.replacen(&format!("{{{n}}}"), "{}", 1);
        }
        if let Some(other) = shapes.insert(shape, path) {
            out.push(format!(
                "paths: {other:?} and {path:?} are the same template up to parameter names"
            ));
        }

        let item = deref(doc, item);
        let at = format!("/paths/{}", escape(path));
        let common = parameters(
            doc,
            item.get("parameters"),
            &format!("{at}/parameters"),
            out,
        );
        let mut operated = false;
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            operated = true;
            let op_at = format!("{at}/{m}");
            let mut effective = common.clone();
            effective.extend(parameters(
                doc,
                op.get("parameters"),
                &format!("{op_at}/parameters"),
                out,
            ));
            let declared = path_names(&effective);
            let method = m.to_ascii_uppercase();
            for n in template.difference(&declared) {
                out.push(format!(
                    "path parameter: {method} {path}: template parameter {{{n}}} is not \
                     declared as an `in: path` parameter (on the path item or the operation)"
                ));
            }
            for n in declared.difference(&template) {
                out.push(format!(
                    "path parameter: {method} {path}: declares path parameter {n:?}, which is \
                     not in the path template"
                ));
            }
        }
        if !operated {
            for n in path_names(&common).difference(&template) {
                out.push(format!(
                    "path parameter: {path}: declares path parameter {n:?}, which is not in the \
                     path template"
                ));
            }
        }
    }
}

// ---- operationIds, security ----------------------------------------------------------------

/// Every operation object of `paths` and `webhooks`, with a label such as `GET /jobs/{id}`.
fn all_operations(doc: &Value) -> Vec<(String, &Value)> {
    let mut ops = Vec::new();
    for (section, prefix) in [("paths", ""), ("webhooks", "webhook ")] {
        for (key, item) in doc
            .get(section)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let item = deref(doc, item);
            for m in METHODS {
                if let Some(op) = item.get(m) {
                    ops.push((format!("{prefix}{} {key}", m.to_ascii_uppercase()), op));
                }
            }
        }
    }
    ops
}

fn check_operation_ids(doc: &Value, out: &mut Vec<String>) {
    let mut seen: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (label, op) in all_operations(doc) {
        if let Some(id) = op.get("operationId").and_then(Value::as_str) {
            seen.entry(id).or_default().push(label);
        }
    }
    for (id, labels) in seen {
        if labels.len() > 1 {
            out.push(format!(
                "operationId: duplicate operationId {id:?} on {}",
                labels.join(", ")
            ));
        }
    }
}

fn check_security(doc: &Value, out: &mut Vec<String>) {
    let schemes = doc
        .pointer("/components/securitySchemes")
        .and_then(Value::as_object);
    let mut requirements: Vec<(String, &Value)> = Vec::new();
    if let Some(top) = doc.get("security") {
        requirements.push(("the document".into(), top));
    }
    for (label, op) in all_operations(doc) {
        if let Some(s) = op.get("security") {
            requirements.push((label, s));
        }
    }
    for (label, list) in requirements {
        for req in list.as_array().into_iter().flatten() {
            for name in req.as_object().into_iter().flatten().map(|(k, _)| k) {
                if !schemes.is_some_and(|s| s.contains_key(name)) {
                    out.push(format!(
                        "security: {label} requires scheme {name:?}, which \
                         components/securitySchemes does not declare"
                    ));
                }
            }
        }
    }
}
