//! `GET /api/openapi.yaml`: the OpenAPI 3.1 description of the REST API (`docs/openapi.yaml`),
//! compiled into the binary so the served document always matches the running server.

use hyper::StatusCode;

use crate::http::response::{HttpResponse, bytes};

/// The text of `docs/openapi.yaml`.
pub const OPENAPI_YAML: &str = include_str!("../../../docs/openapi.yaml");

/// `GET /api/openapi.yaml`: 200, `application/yaml`, no authentication.
pub fn openapi() -> HttpResponse {
    bytes(StatusCode::OK, "application/yaml", OPENAPI_YAML)
}
