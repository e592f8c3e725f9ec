//! The OpenAPI 3.1 validator in `common/openapi.rs` accepts a valid document and rejects each
//! kind of broken one with a message that says what is wrong. Runs offline: the OAS schemas
//! are vendored under `tests/fixtures/openapi/`.

#[path = "common/openapi.rs"]
mod openapi;

use serde_json::{json, Value};

/// A small but realistic OpenAPI 3.1 document, shaped like what utoipa 5 emits for an
/// image-to-video job API.
fn valid_doc() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "ltx-i2v",
            "description": "Image-to-video inference server",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
            "version": "0.1.0"
        },
        "servers": [{ "url": "/" }],
        "paths": {
            "/health": {
                "get": {
                    "tags": ["meta"],
                    "operationId": "health",
                    "responses": {
                        "200": {
                            "description": "The server is up",
                            "content": {
                                "application/json": {
                                    "schema": { "$ref": "#/components/schemas/Health" }
                                }
                            }
                        }
                    }
                }
            },
            "/v1/jobs": {
                "post": {
                    "tags": ["jobs"],
                    "summary": "Submit an image-to-video job",
                    "operationId": "create_job",
                    "requestBody": {
                        "required": true,
                        "content": {
                            "multipart/form-data": {
                                "schema": { "$ref": "#/components/schemas/JobForm" },
                                "encoding": {
                                    "image": { "contentType": "image/png, image/jpeg, image/webp" }
                                }
                            },
                            "application/json": {
                                "schema": { "$ref": "#/components/schemas/JobRequest" },
                                "examples": {
                                    "minimal": {
                                        "summary": "Just a prompt and an image",
                                        "value": {
                                            "prompt": "a cat turns its head",
                                            "image": "iVBORw0KGgo=",
                                            "$ref": "literal data, not a reference"
                                        }
                                    }
                                }
                            }
                        }
                    },
                    "responses": {
                        "202": {
                            "description": "Accepted",
                            "headers": {
                                "Location": {
                                    "description": "Where to poll the job",
                                    "schema": { "type": "string" }
                                }
                            },
                            "content": {
                                "application/json": {
                                    "schema": { "$ref": "#/components/schemas/Job" }
                                }
                            }
                        },
                        "400": { "$ref": "#/components/responses/BadRequest" },
                        "429": {
                            "description": "Too many queued jobs",
                            "content": {
                                "application/json": {
                                    "schema": { "$ref": "#/components/schemas/Error" }
                                }
                            }
                        }
                    }
                }
            },
            "/v1/jobs/{id}": {
                "parameters": [{ "$ref": "#/components/parameters/JobId" }],
                "get": {
                    "tags": ["jobs"],
                    "operationId": "get_job",
                    "responses": {
                        "200": {
                            "description": "The job",
                            "content": {
                                "application/json": {
                                    "schema": { "$ref": "#/components/schemas/Job" }
                                }
                            }
                        },
                        "404": { "$ref": "#/components/responses/NotFound" }
                    }
                },
                "delete": {
                    "tags": ["jobs"],
                    "operationId": "cancel_job",
                    "responses": {
                        "204": { "description": "Cancelled" },
                        "404": { "$ref": "#/components/responses/NotFound" }
                    }
                }
            },
            "/v1/jobs/{id}/video": {
                "get": {
                    "tags": ["jobs"],
                    "operationId": "get_job_video",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": true,
                            "schema": { "type": "string", "format": "uuid" }
                        },
                        {
                            "name": "download",
                            "in": "query",
                            "required": false,
                            "schema": { "type": ["boolean", "null"] }
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The MP4",
                            "content": {
                                "video/mp4": {
                                    "schema": { "type": "string", "contentMediaType": "video/mp4" }
                                }
                            }
                        },
                        "404": { "$ref": "#/components/responses/NotFound" },
                        "409": {
                            "description": "The job has not finished",
                            "content": {
                                "application/json": {
                                    "schema": { "$ref": "#/components/schemas/Error" }
                                }
                            }
                        }
                    }
                }
            }
        },
        "components": {
            "schemas": {
                "Health": {
                    "type": "object",
                    "required": ["status"],
                    "properties": { "status": { "type": "string", "const": "ok" } }
                },
                "JobForm": {
                    "type": "object",
                    "required": ["image", "prompt"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "contentMediaType": "application/octet-stream",
                            "description": "The first frame"
                        },
                        "prompt": { "type": "string", "minLength": 1 },
                        "num_frames": {
                            "type": ["integer", "null"],
                            "format": "int32",
                            "minimum": 9,
                            "maximum": 257
                        }
                    }
                },
                "JobRequest": {
                    "type": "object",
                    "required": ["image", "prompt"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "contentEncoding": "base64",
                            "description": "The first frame, base64"
                        },
                        "prompt": { "type": "string", "minLength": 1 },
                        "seed": { "type": ["integer", "null"], "format": "int64", "minimum": 0 }
                    },
                    "additionalProperties": false
                },
                "Job": {
                    "type": "object",
                    "required": ["id", "status"],
                    "properties": {
                        "id": { "type": "string", "format": "uuid" },
                        "status": { "$ref": "#/components/schemas/JobStatus" },
                        "progress": { "type": "number", "minimum": 0, "maximum": 1 },
                        "error": {
                            "oneOf": [{ "type": "null" }, { "$ref": "#/components/schemas/Error" }]
                        }
                    },
                    "example": { "id": "x", "status": "queued", "$ref": "also data" }
                },
                "JobStatus": {
                    "type": "string",
                    "enum": ["queued", "running", "done", "failed", "cancelled"]
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": { "error": { "type": "string" } }
                }
            },
            "responses": {
                "NotFound": {
                    "description": "No such job",
                    "content": {
                        "application/json": {
                            "schema": { "$ref": "#/components/schemas/Error" }
                        }
                    }
                },
                "BadRequest": {
                    "description": "The request is malformed",
                    "content": {
                        "application/json": {
                            "schema": { "$ref": "#/components/schemas/Error" }
                        }
                    }
                }
            },
            "parameters": {
                "JobId": {
                    "name": "id",
                    "in": "path",
                    "required": true,
                    "description": "The job's id",
                    "schema": { "type": "string", "format": "uuid" }
                }
            }
        },
        "tags": [
            { "name": "jobs", "description": "Image-to-video jobs" },
            { "name": "meta" }
        ]
    })
}

/// The problems of `doc`, asserting there is at least one that contains every fragment.
fn assert_rejected(doc: &Value, fragments: &[&str]) -> Vec<String> {
    let problems = openapi::validate(doc);
    assert!(
        problems
            .iter()
            .any(|p| fragments.iter().all(|f| p.contains(f))),
        "expected a problem containing {fragments:?}, got {problems:#?}"
    );
    problems
}

#[test]
fn vendored_schemas_are_the_2022_10_07_iteration() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/openapi");
    for (file, id) in [
        ("schema.json", openapi::SCHEMA_ID),
        ("dialect-base.json", openapi::DIALECT_ID),
        ("meta-base.json", openapi::META_ID),
    ] {
        let text = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
        let schema: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(schema["$id"], id, "{file}");
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{file}"
        );
    }
}

#[test]
fn accepts_a_valid_document() {
    openapi::assert_valid(&valid_doc());
}

#[test]
fn operations_lists_method_and_path() {
    let ops = openapi::operations(&valid_doc());
    let expected: Vec<(String, String)> = [
        ("DELETE", "/v1/jobs/{id}"),
        ("GET", "/health"),
        ("GET", "/v1/jobs/{id}"),
        ("GET", "/v1/jobs/{id}/video"),
        ("POST", "/v1/jobs"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(ops.into_iter().collect::<Vec<_>>(), expected);
}

#[test]
fn rejects_missing_info() {
    let mut doc = valid_doc();
    doc.as_object_mut().unwrap().remove("info");
    assert_rejected(&doc, &["\"info\" is a required property"]);
}

#[test]
fn rejects_info_without_title() {
    let mut doc = valid_doc();
    doc["info"].as_object_mut().unwrap().remove("title");
    assert_rejected(&doc, &["/info", "\"title\" is a required property"]);
}

#[test]
fn rejects_a_response_without_description() {
    let mut doc = valid_doc();
    doc["paths"]["/v1/jobs/{id}"]["delete"]["responses"]["204"] = json!({});
    let problems = assert_rejected(
        &doc,
        &[
            "/paths/~1v1~1jobs~1{id}/delete/responses/204",
            "\"description\" is a required property",
        ],
    );
    // Not also "Unevaluated properties are not allowed ('delete' was unexpected)" and the
    // like for every enclosing object: those echoes are dropped.
    assert_eq!(problems.len(), 1, "{problems:#?}");
}

#[test]
fn rejects_a_component_response_without_description() {
    let mut doc = valid_doc();
    doc["components"]["responses"]["NotFound"]
        .as_object_mut()
        .unwrap()
        .remove("description");
    assert_rejected(
        &doc,
        &[
            "/components/responses/NotFound",
            "\"description\" is a required property",
        ],
    );
}

#[test]
fn rejects_a_dangling_ref() {
    let mut doc = valid_doc();
    doc["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] =
        json!({ "$ref": "#/components/schemas/Nope" });
    assert_rejected(
        &doc,
        &[
            "dangling $ref \"#/components/schemas/Nope\"",
            "/paths/~1health/get/responses/200/content/application~1json/schema",
        ],
    );
}

#[test]
fn rejects_a_dangling_ref_in_a_nested_schema_and_in_a_parameter_list() {
    let mut doc = valid_doc();
    doc["components"]["schemas"]["Job"]["properties"]["error"]["oneOf"][1] =
        json!({ "$ref": "#/components/schemas/Eror" });
    doc["paths"]["/v1/jobs/{id}"]["parameters"][0] =
        json!({ "$ref": "#/components/parameters/JobID" });
    let problems = assert_rejected(&doc, &["dangling $ref \"#/components/schemas/Eror\""]);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("dangling $ref \"#/components/parameters/JobID\"")),
        "{problems:#?}"
    );
}

#[test]
fn rejects_a_non_local_ref() {
    let mut doc = valid_doc();
    doc["components"]["schemas"]["Error"] = json!({ "$ref": "https://example.com/error.json" });
    assert_rejected(&doc, &["is not a local reference"]);
}

#[test]
fn refs_in_example_data_are_not_references() {
    // valid_doc has "$ref" keys inside an `example` and an Example Object's `value`.
    let doc = valid_doc();
    assert_eq!(
        doc["components"]["schemas"]["Job"]["example"]["$ref"],
        "also data"
    );
    openapi::assert_valid(&doc);
}

#[test]
fn rejects_an_undeclared_path_parameter() {
    let mut doc = valid_doc();
    doc["paths"]["/v1/jobs/{id}/frames/{frame}"] = json!({
        "get": {
            "operationId": "get_frame",
            "parameters": [{ "$ref": "#/components/parameters/JobId" }],
            "responses": { "200": { "description": "A PNG" } }
        }
    });
    assert_rejected(
        &doc,
        &[
            "GET /v1/jobs/{id}/frames/{frame}",
            "template parameter {frame} is not declared",
        ],
    );
}

#[test]
fn rejects_a_path_parameter_declared_on_only_one_operation_of_the_path() {
    let mut doc = valid_doc();
    // Move the path-item-level `{id}` onto GET only: DELETE no longer declares it.
    let item = doc["paths"]["/v1/jobs/{id}"].as_object_mut().unwrap();
    let params = item.remove("parameters").unwrap();
    item["get"]["parameters"] = params;
    let problems = assert_rejected(
        &doc,
        &[
            "DELETE /v1/jobs/{id}",
            "template parameter {id} is not declared",
        ],
    );
    assert!(
        !problems.iter().any(|p| p.contains("GET /v1/jobs/{id}:")),
        "{problems:#?}"
    );
}

#[test]
fn rejects_a_path_parameter_that_is_not_in_the_template() {
    let mut doc = valid_doc();
    doc["paths"]["/health"]["get"]["parameters"] = json!([{
        "name": "id",
        "in": "path",
        "required": true,
        "schema": { "type": "string" }
    }]);
    assert_rejected(
        &doc,
        &[
            "GET /health",
            "declares path parameter \"id\", which is not in the path template",
        ],
    );
}

#[test]
fn rejects_a_path_parameter_that_is_not_required() {
    // The OAS schema itself requires `required: true` on `in: path` parameters.
    let mut doc = valid_doc();
    doc["components"]["parameters"]["JobId"]["required"] = json!(false);
    assert_rejected(&doc, &["/components/parameters/JobId"]);
}

#[test]
fn rejects_the_same_template_twice() {
    let mut doc = valid_doc();
    doc["paths"]["/v1/jobs/{job}"] = json!({
        "parameters": [{ "name": "job", "in": "path", "required": true, "schema": { "type": "string" } }],
        "put": { "responses": { "200": { "description": "ok" } } }
    });
    assert_rejected(&doc, &["are the same template up to parameter names"]);
}

#[test]
fn rejects_a_wrong_openapi_type() {
    let mut doc = valid_doc();
    doc["openapi"] = json!(3.1);
    assert_rejected(&doc, &["at /openapi:", "is not of type \"string\""]);
}

#[test]
fn rejects_an_openapi_version_other_than_3_1() {
    let mut doc = valid_doc();
    doc["openapi"] = json!("3.0.3");
    assert_rejected(&doc, &["at /openapi:", "\"3.0.3\" does not match"]);
}

#[test]
fn rejects_a_duplicate_operation_id() {
    let mut doc = valid_doc();
    doc["paths"]["/v1/jobs/{id}"]["delete"]["operationId"] = json!("get_job");
    assert_rejected(
        &doc,
        &[
            "duplicate operationId \"get_job\"",
            "GET /v1/jobs/{id}",
            "DELETE /v1/jobs/{id}",
        ],
    );
}

#[test]
fn rejects_an_unknown_field_of_an_operation() {
    let mut doc = valid_doc();
    doc["paths"]["/health"]["get"]["respones"] = json!({});
    assert_rejected(&doc, &["/paths/~1health/get", "respones"]);
}

#[test]
fn formats_are_asserted() {
    let mut doc = valid_doc();
    doc["components"]["schemas"]["Job"]["properties"]["id"]["pattern"] = json!("(unclosed");
    assert_rejected(
        &doc,
        &[
            "/components/schemas/Job/properties/id/pattern",
            "is not a \"regex\"",
        ],
    );

    let mut doc = valid_doc();
    doc["info"]["license"] = json!({ "name": "Apache-2.0", "url": "not a uri" });
    assert_rejected(&doc, &["/info/license/url", "is not a \"uri\""]);
}

#[test]
fn schema_objects_use_the_oas_dialect() {
    let mut doc = valid_doc();
    doc["components"]["schemas"]["Job"]["$schema"] =
        json!("http://json-schema.org/draft-07/schema#");
    assert_rejected(
        &doc,
        &[
            "/components/schemas/Job/$schema",
            "dialect/base\" was expected",
        ],
    );
}

#[test]
fn rejects_a_security_requirement_naming_an_undeclared_scheme() {
    let mut doc = valid_doc();
    doc["security"] = json!([{ "bearer": [] }]);
    assert_rejected(&doc, &["requires scheme \"bearer\""]);
    doc["components"]["securitySchemes"] =
        json!({ "bearer": { "type": "http", "scheme": "bearer" } });
    openapi::assert_valid(&doc);
}

/// The plain OAS 3.1 schema accepts any object as a Schema Object; the schema-base entry
/// point re-binds `$dynamicAnchor: meta` so the plain schema's `$dynamicRef: "#meta"` holds
/// Schema Objects to the OAS dialect (JSON Schema 2020-12 + OAS base vocabulary). This checks
/// that `jsonschema` resolves the `$dynamicRef` dynamically, across the vendored resources.
#[test]
fn schema_objects_are_validated_through_dynamic_ref() {
    let mut doc = valid_doc();
    doc["components"]["schemas"]["Health"]["type"] = json!("strnig");
    assert!(
        openapi::schema_errors_with(openapi::plain_validator(), &doc).is_empty(),
        "the plain schema should not look inside Schema Objects"
    );
    assert_rejected(&doc, &["/components/schemas/Health/type"]);

    // Nested: the 2020-12 meta-schema's own `$dynamicRef`s land back on the OAS dialect.
    let mut doc = valid_doc();
    doc["components"]["schemas"]["Job"]["properties"]["progress"]["minimum"] = json!("zero");
    assert_rejected(
        &doc,
        &[
            "/components/schemas/Job/properties/progress/minimum",
            "is not of type \"number\"",
        ],
    );

    // In a media type's schema, and `required` must be an array of unique strings.
    let mut doc = valid_doc();
    doc["paths"]["/v1/jobs/{id}/video"]["get"]["responses"]["200"]["content"]["video/mp4"]
        ["schema"]["required"] = json!("id");
    assert_rejected(&doc, &["/content/video~1mp4/schema/required"]);
}

#[test]
fn schema_objects_are_held_to_the_oas_base_vocabulary() {
    let mut doc = valid_doc();
    doc["components"]["schemas"]["Job"]["discriminator"] = json!({ "mapping": {} });
    assert_rejected(
        &doc,
        &[
            "/components/schemas/Job/discriminator",
            "\"propertyName\" is a required property",
        ],
    );

    let mut doc = valid_doc();
    doc["components"]["schemas"]["Job"]["discriminator"] = json!({
        "propertyName": "status",
        "mapping": { "done": "#/components/schemas/Done" }
    });
    assert_rejected(&doc, &["discriminator/mapping/done", "dangling $ref"]);
}

#[test]
fn rejects_a_non_object_document_and_a_document_without_paths_or_components() {
    assert!(!openapi::validate(&json!([])).is_empty());
    let doc = json!({ "openapi": "3.1.0", "info": { "title": "t", "version": "1" } });
    assert!(!openapi::validate(&doc).is_empty());
}

#[test]
fn template_names_parses_path_templates() {
    assert_eq!(
        openapi::template_names("/a/{x}/b/{y}.mp4").unwrap(),
        ["x", "y"]
    );
    assert!(openapi::template_names("/a").unwrap().is_empty());
    assert!(openapi::template_names("/a/{x").is_err());
    assert!(openapi::template_names("/a/x}").is_err());
    assert!(openapi::template_names("/a/{}").is_err());
}
