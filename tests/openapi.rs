//! `/openapi.json`: a valid OpenAPI 3.1 document (checked against the official schema, vendored
//! in tests/fixtures/openapi), listing exactly the routes the server answers.

mod common;
#[path = "common/openapi.rs"]
mod openapi;

use std::collections::BTreeSet;

use common::{request, start};

/// Every operation the server implements.
const ROUTES: [(&str, &str); 15] = [
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/system"),
    ("POST", "/v1/models/{family}/unload"),
    ("POST", "/v1/image-to-video"),
    ("POST", "/i2v"),
    ("POST", "/v1/instantid"),
    ("POST", "/instantid"),
    ("GET", "/v1/jobs/{id}"),
    ("DELETE", "/v1/jobs/{id}"),
    ("GET", "/v1/jobs/{id}/result"),
    ("HEAD", "/v1/jobs/{id}/result"),
    ("GET", "/v1/jobs/{id}/events"),
];

#[test]
fn openapi_document_validates_and_matches_the_routes() {
    let server = start("openapi", &[]);
    let a = &server.addr;
    let r = request(a, "GET", "/openapi.json", None, b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    openapi::assert_valid(&doc);

    let documented = openapi::operations(&doc);
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected, "the document and the routes differ");

    // Each documented operation reaches a handler: the fallback's "no route" never answers.
    for (method, path) in &documented {
        let concrete = path
            .replace("{id}", &"0".repeat(32))
            .replace("{family}", "nope");
        let r = request(a, method, &concrete, Some("application/json"), b"{}");
        assert_ne!(r.status, 405, "{method} {concrete}");
        if r.status == 404 && method != "HEAD" {
            let msg = r.json()["message"].as_str().unwrap().to_string();
            assert!(!msg.starts_with("no route"), "{method} {concrete}: {msg}");
        }
    }
    // And an undocumented one does not exist.
    let r = request(a, "GET", "/v1/text-to-video", None, b"");
    assert_eq!(r.status, 404);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .starts_with("no route"));

    // The request schema names the fields the server accepts, with the multipart form beside it.
    let body = &doc["paths"]["/v1/image-to-video"]["post"]["requestBody"]["content"];
    assert!(body["application/json"].is_object(), "{body}");
    assert!(body["multipart/form-data"].is_object(), "{body}");
}

/// `#/components/schemas/X` resolved in `doc` (other schemas as they are).
fn resolve<'a>(doc: &'a serde_json::Value, schema: &'a serde_json::Value) -> &'a serde_json::Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

#[test]
fn files_are_described_as_binary() {
    let server = start("openapi-binary", &[]);
    let doc = request(&server.addr, "GET", "/openapi.json", None, b"").json();
    let mut videos = 0;
    let mut forms = 0;
    let mut pngs = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let mut contents: Vec<(String, &serde_json::Value)> = Vec::new();
            if let Some(c) = op["requestBody"]["content"].as_object() {
                contents.extend(c.iter().map(|(t, m)| (format!("request {t}"), m)));
            }
            for (status, resp) in op["responses"].as_object().unwrap() {
                if let Some(c) = resp["content"].as_object() {
                    contents.extend(c.iter().map(|(t, m)| (format!("{status} {t}"), m)));
                }
            }
            for (what, media) in contents {
                let schema = resolve(&doc, &media["schema"]);
                let at = format!("{method} {path} {what}");
                // A byte body must never look like a list of numbers to a client.
                assert_ne!(schema["type"], "array", "{at}: {schema}");
                if what.ends_with("video/mp4") {
                    videos += 1;
                    assert_eq!(
                        (
                            schema["type"].as_str(),
                            schema["format"].as_str(),
                            schema["contentMediaType"].as_str()
                        ),
                        (Some("string"), Some("binary"), Some("video/mp4")),
                        "{at}: {schema}"
                    );
                }
                if what.ends_with("image/png") {
                    pngs += 1;
                    assert_eq!(
                        (
                            schema["type"].as_str(),
                            schema["format"].as_str(),
                            schema["contentMediaType"].as_str()
                        ),
                        (Some("string"), Some("binary"), Some("image/png")),
                        "{at}: {schema}"
                    );
                }
                if what.ends_with("multipart/form-data") {
                    forms += 1;
                    let props = &schema["properties"];
                    let file = if path.contains("instantid") {
                        "face_image"
                    } else {
                        "image"
                    };
                    let mut parts = vec![&props[file]];
                    if path == "/v1/instantid" {
                        parts.push(&props["pose_image"]);
                        parts.push(resolve(&doc, &props["reference_images"]["items"]));
                    }
                    for image in parts {
                        let kind = image["type"].as_array().map_or_else(
                            || image["type"].as_str().map(str::to_string),
                            // Option<…>: ["string", "null"].
                            |t| t[0].as_str().map(str::to_string),
                        );
                        assert_eq!(
                            (kind.as_deref(), image["format"].as_str()),
                            (Some("string"), Some("binary")),
                            "{at}: {image}"
                        );
                    }
                }
            }
        }
    }
    // The MP4 of `?wait=true`, of `/i2v`, and the result's 200 and 206; the PNG of
    // `/v1/instantid?wait=true`, of `/instantid` and of the result's 200 and 206; four
    // multipart forms.
    assert_eq!((videos, pngs, forms), (4, 4, 4));
}
