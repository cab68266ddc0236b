//! `docs/openapi.yaml` against the router: every row of `callsignal::http::ROUTES` is documented,
//! every documented operation is served, every `$ref` resolves, and `GET /api/openapi.yaml`
//! serves the file byte for byte. (Response shapes are checked by schemathesis in `.ci/run`.)

use std::collections::BTreeSet;

use callsignal::http::ROUTES;
use serde_norway::Value;

use crate::helpers::{Backend, spawn_app};

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn spec_text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
    std::fs::read_to_string(path).expect("docs/openapi.yaml is readable")
}

fn spec() -> Value {
    serde_norway::from_str(&spec_text()).expect("docs/openapi.yaml is valid YAML")
}

/// Every `(METHOD, path template)` the document describes.
fn documented(spec: &Value) -> BTreeSet<(String, String)> {
    let paths = spec["paths"].as_mapping().expect("`paths` is a mapping");
    let mut ops = BTreeSet::new();
    for (path, item) in paths {
        let path = path.as_str().expect("path keys are strings");
        let item = item.as_mapping().expect("path items are mappings");
        for key in item.keys().filter_map(Value::as_str) {
            if HTTP_METHODS.contains(&key) {
                ops.insert((key.to_ascii_uppercase(), path.to_owned()));
            }
        }
    }
    ops
}

fn served() -> BTreeSet<(String, String)> {
    ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect()
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let spec = spec();
    assert_eq!(spec["openapi"].as_str(), Some("3.1.0"));
    let documented = documented(&spec);
    let served = served();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from docs/openapi.yaml: {undocumented:?}"
    );
    let phantom: Vec<_> = documented.difference(&served).collect();
    assert!(
        phantom.is_empty(),
        "documented but not in ROUTES: {phantom:?}"
    );
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                if k.as_str() == Some("$ref") {
                    out.push(v.as_str().expect("$ref is a string").to_owned());
                } else {
                    refs(v, out);
                }
            }
        }
        Value::Sequence(s) => s.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves_and_every_error_response_names_its_codes() {
    let spec = spec();
    let mut all = Vec::new();
    refs(&spec, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        let pointer = r
            .strip_prefix("#/")
            .unwrap_or_else(|| panic!("external $ref {r}"));
        let target = pointer
            .split('/')
            .try_fold(&spec, |node, key| node.get(key))
            .unwrap_or_else(|| panic!("dangling $ref {r}"));
        assert!(!target.is_null(), "$ref {r} points at null");
    }
    // Each error schema pins the codes it may carry: `const` or `enum` on `error.code`.
    let schemas = spec["components"]["schemas"].as_mapping().expect("schemas");
    for (name, schema) in schemas {
        let name = name.as_str().expect("name");
        // `Error` is the envelope the others refine.
        if name.ends_with("Error") && name != "Error" {
            let code = &schema["allOf"][1]["properties"]["error"]["properties"]["code"];
            assert!(
                code.get("const").is_some() || code.get("enum").is_some(),
                "{name} does not list its codes"
            );
        }
    }
}

/// `path` with each `{…}` segment replaced by a (random, unknown) UUID.
fn instantiate(path: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    path.split('/')
        .map(|s| if s.starts_with('{') { id.as_str() } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served() {
    let app = spawn_app(Backend::Sqlite).await;
    for (method, path) in documented(&spec()) {
        let url = app.url(&instantiate(&path));
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let r = app.http.request(m, &url).send().await.expect("request");
        let status = r.status().as_u16();
        assert!(
            status != 404 && status != 405,
            "{method} {path} is documented but answered {status}"
        );
    }
    // And the converse is what the router does with what it does not serve.
    let r = app
        .http
        .patch(app.url("/api/me"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 405);
    // A GET route serves HEAD too (RFC 9110 §9.3.2), and says so.
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    let r = app
        .http
        .get(app.url(&instantiate("/api/sessions/{id}")))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "DELETE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_is_the_file() {
    let app = spawn_app(Backend::Sqlite).await;
    let r = app.get("/api/openapi.yaml", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/yaml");
    assert_eq!(r.text().await.expect("body"), spec_text());
}
