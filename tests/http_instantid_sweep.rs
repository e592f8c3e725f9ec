//! A malformed-request sweep over both InstantID routes (`POST /v1/instantid` as JSON and as
//! multipart, the replaced service's `POST /instantid`): every bad field value, body shape,
//! content type and part layout gets a 4xx with a JSON body naming the problem — never a 5xx,
//! never a queued job.

mod common;

use base64::Engine;
use common::{form, multipart_ctype, request, start, Resp};
use serde_json::{json, Value};

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    bytes
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Bad values of the fields both bodies share, as JSON values.
fn bad_fields() -> Vec<(&'static str, Value)> {
    let long = "x".repeat(2001);
    let mut v: Vec<(&'static str, Value)> =
        vec![("prompt", json!(long)), ("negative_prompt", json!(long))];
    for side in ["width", "height"] {
        for bad in [
            json!(0),
            json!(-8),
            json!(7),
            json!(63),
            json!(1544),
            json!(1e9),
        ] {
            v.push((side, bad));
        }
        v.push((side, json!(64.5)));
        v.push((side, json!("sixty-four")));
    }
    v.extend([
        ("steps", json!(0)),
        ("steps", json!(-1)),
        ("steps", json!(101)),
        ("steps", json!(2.5)),
        ("steps", json!("two")),
        ("guidance_scale", json!(-1)),
        ("guidance_scale", json!(31)),
        ("guidance_scale", json!("high")),
        ("ip_adapter_scale", json!(-0.1)),
        ("ip_adapter_scale", json!(2.1)),
        ("ip_adapter_scale", json!("x")),
        ("controlnet_conditioning_scale", json!(-0.5)),
        ("controlnet_conditioning_scale", json!(2.5)),
        ("controlnet_conditioning_scale", json!("x")),
        ("control_guidance_start", json!(-0.1)),
        ("control_guidance_start", json!(1.0)),
        ("control_guidance_start", json!("x")),
        ("control_guidance_end", json!(0.0)),
        ("control_guidance_end", json!(1.5)),
        ("scheduler", json!("PNDMScheduler")),
        ("scheduler", json!("")),
        ("seed", json!(-1)),
        ("seed", json!(1.5)),
        ("seed", json!("lucky")),
        ("unknown_field", json!(1)),
    ]);
    v
}

/// Bad image values (base64 strings, or other JSON) for an image field.
fn bad_images() -> Vec<Value> {
    let mut truncated = png(64, 48);
    truncated.truncate(truncated.len() / 2);
    vec![
        json!(""),
        json!("not base64 at all!"),
        json!(b64(b"these bytes are no image")),
        json!(b64(&truncated)),
        json!("data:image/png;base64,%%%"),
        json!(12),
        json!({"url": "x"}),
    ]
}

fn base() -> serde_json::Map<String, Value> {
    json!({"face_image": b64(&png(64, 48)), "prompt": "a portrait", "width": 64,
           "height": 48, "steps": 2, "seed": 1})
    .as_object()
    .unwrap()
    .clone()
}

/// A multipart body from a JSON body: images (base64 in JSON) as file parts, the rest as
/// text parts.
fn to_form(body: &serde_json::Map<String, Value>) -> Vec<u8> {
    let mut owned: Vec<(String, Option<&str>, Vec<u8>)> = Vec::new();
    for (k, v) in body {
        let is_image = ["face_image", "pose_image"].contains(&k.as_str());
        match (is_image, v) {
            (true, Value::String(s)) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .unwrap_or_else(|_| s.as_bytes().to_vec());
                owned.push((k.clone(), Some("img.png"), bytes));
            }
            (_, Value::String(s)) => owned.push((k.clone(), None, s.as_bytes().to_vec())),
            (_, other) => owned.push((k.clone(), None, other.to_string().into_bytes())),
        }
    }
    let parts: Vec<_> = owned
        .iter()
        .map(|(k, f, b)| (k.as_str(), *f, b.as_slice()))
        .collect();
    form(&parts)
}

struct Case {
    what: String,
    path: &'static str,
    ctype: Option<String>,
    body: Vec<u8>,
}

fn json_case(what: String, path: &'static str, body: &serde_json::Map<String, Value>) -> Case {
    Case {
        what,
        path,
        ctype: Some("application/json".into()),
        body: serde_json::to_vec(body).unwrap(),
    }
}

fn form_case(what: String, path: &'static str, body: Vec<u8>) -> Case {
    Case {
        what,
        path,
        ctype: Some(multipart_ctype()),
        body,
    }
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let v1 = "/v1/instantid";
    for (field, value) in bad_fields() {
        let mut b = base();
        b.insert(field.into(), value.clone());
        out.push(json_case(format!("json {field}={value}"), v1, &b));
        out.push(form_case(format!("form {field}={value}"), v1, to_form(&b)));
        // The replaced service's route names steps num_inference_steps and has no
        // scheduler or guidance window.
        let service_field = match field {
            "steps" => "num_inference_steps",
            "control_guidance_start" | "control_guidance_end" | "scheduler" => continue,
            f => f,
        };
        let mut s = base();
        s.remove("steps");
        s.insert(service_field.into(), value.clone());
        out.push(form_case(
            format!("/instantid {service_field}={value}"),
            "/instantid",
            to_form(&s),
        ));
    }
    for (i, img) in bad_images().into_iter().enumerate() {
        for field in ["face_image", "pose_image"] {
            let mut b = base();
            b.insert(field.into(), img.clone());
            out.push(json_case(format!("json {field} #{i}"), v1, &b));
            if img.is_string() {
                out.push(form_case(format!("form {field} #{i}"), v1, to_form(&b)));
            }
        }
        let mut b = base();
        b.insert("reference_images".into(), json!([img]));
        out.push(json_case(format!("json reference_images [#{i}]"), v1, &b));
    }
    let good = b64(&png(64, 48));
    for (what, refs) in [
        ("a string", json!("not a list")),
        ("five images", json!(vec![good; 5])),
        ("numbers", json!([1, 2])),
    ] {
        let mut b = base();
        b.insert("reference_images".into(), refs);
        out.push(json_case(format!("json reference_images {what}"), v1, &b));
    }
    for missing in ["face_image", "prompt"] {
        let mut b = base();
        b.remove(missing);
        out.push(json_case(format!("json without {missing}"), v1, &b));
        out.push(form_case(
            format!("form without {missing}"),
            v1,
            to_form(&b),
        ));
        out.push(form_case(
            format!("/instantid without {missing}"),
            "/instantid",
            to_form(&b),
        ));
    }
    // Body shapes and content types.
    for (what, body) in [
        ("not JSON", b"{face_image:".to_vec()),
        ("an array", b"[1, 2]".to_vec()),
        ("a number", b"42".to_vec()),
        ("null", b"null".to_vec()),
        ("empty", Vec::new()),
        ("a string", b"\"face\"".to_vec()),
    ] {
        out.push(Case {
            what: format!("json body {what}"),
            path: v1,
            ctype: Some("application/json".into()),
            body,
        });
    }
    let valid = serde_json::to_vec(&base()).unwrap();
    for (path, ctype) in [
        (v1, Some("text/plain")),
        (v1, None),
        (v1, Some("application/x-www-form-urlencoded")),
        ("/instantid", Some("application/json")),
        ("/instantid", None),
    ] {
        out.push(Case {
            what: format!("{path} as {ctype:?}"),
            path,
            ctype: ctype.map(str::to_string),
            body: valid.clone(),
        });
    }
    let face = png(64, 48);
    let twice: Vec<(&str, Option<&str>, &[u8])> = vec![
        ("face_image", Some("a.png"), &face),
        ("face_image", Some("b.png"), &face),
        ("prompt", None, b"p"),
    ];
    out.push(form_case("form face_image twice".into(), v1, form(&twice)));
    out.push(form_case(
        "/instantid face_image twice".into(),
        "/instantid",
        form(&twice),
    ));
    let pose_twice: Vec<(&str, Option<&str>, &[u8])> = vec![
        ("face_image", Some("a.png"), &face),
        ("pose_image", Some("b.png"), &face),
        ("pose_image", Some("c.png"), &face),
        ("prompt", None, b"p"),
    ];
    out.push(form_case(
        "form pose_image twice".into(),
        v1,
        form(&pose_twice),
    ));
    let mut five: Vec<(&str, Option<&str>, &[u8])> =
        vec![("face_image", Some("a.png"), &face), ("prompt", None, b"p")];
    five.extend((0..5).map(|_| ("reference_images", Some("r.png"), face.as_slice())));
    out.push(form_case("form 5 reference images".into(), v1, form(&five)));
    let prompt_twice: Vec<(&str, Option<&str>, &[u8])> = vec![
        ("face_image", Some("a.png"), &face),
        ("prompt", None, b"p"),
        ("prompt", None, b"q"),
    ];
    out.push(form_case(
        "form prompt twice".into(),
        v1,
        form(&prompt_twice),
    ));
    out.push(form_case(
        "/instantid pose_image".into(),
        "/instantid",
        form(&pose_twice),
    ));
    for path in [v1, "/instantid"] {
        out.push(Case {
            what: format!("{path} multipart without a boundary"),
            path,
            ctype: Some("multipart/form-data".into()),
            body: b"--x\r\n".to_vec(),
        });
        out.push(Case {
            what: format!("{path} truncated multipart"),
            path,
            ctype: Some(multipart_ctype()),
            body: form(&twice)[..40].to_vec(),
        });
    }
    for query in ["?wait=maybe", "?nope=1"] {
        let path: &'static str = if query == "?wait=maybe" {
            "/v1/instantid?wait=maybe"
        } else {
            "/v1/instantid?nope=1"
        };
        out.push(json_case(format!("query {query}"), path, &base()));
    }
    out
}

#[test]
fn malformed_instantid_requests_get_4xx_never_a_5xx() {
    let server = start("iid-sweep", &["--queue-size", "1"]);
    let a = &server.addr;
    let cases = cases();
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    let mut wrong = Vec::new();
    for c in &cases {
        let r: Resp = request(a, "POST", c.path, c.ctype.as_deref(), &c.body);
        *by_status.entry(r.status).or_default() += 1;
        let json: Option<Value> = serde_json::from_slice(&r.body).ok();
        let named = json
            .as_ref()
            .and_then(|j| j["message"].as_str())
            .is_some_and(|m| !m.is_empty());
        if !(400..500).contains(&r.status) || !named {
            wrong.push(format!(
                "{} → {} {}",
                c.what,
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
    }
    eprintln!(
        "{} malformed InstantID requests: {by_status:?}",
        cases.len()
    );
    assert!(
        wrong.is_empty(),
        "{} case(s) not a 4xx with a message:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    let fives: usize = by_status.range(500..).map(|(_, n)| n).sum();
    assert_eq!(fives, 0);
    // Nothing was queued.
    let m = request(a, "GET", "/metrics", None, b"");
    let text = String::from_utf8_lossy(&m.body);
    let accepted = text
        .lines()
        .find_map(|l| l.strip_prefix("ltx_jobs_accepted_total{family=\"instantid\"} "))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(accepted.trim(), "0");
}
