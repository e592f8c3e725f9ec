//! `/openapi.json`: a valid OpenAPI 3.1 document (checked against the official schema, vendored
//! in tests/fixtures/openapi), listing exactly the routes the server answers.

mod common;
#[path = "common/openapi.rs"]
mod openapi;

use std::collections::BTreeSet;

use common::{request, start};

/// Every operation the server implements.
const ROUTES: [(&str, &str); 13] = [
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/system"),
    ("POST", "/v1/models/{family}/unload"),
    ("POST", "/v1/image-to-video"),
    ("POST", "/i2v"),
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
