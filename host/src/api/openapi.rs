//! `GET /openapi.json`: the OpenAPI 3.1 description of every route, built by
//! utoipa from the handlers' `#[utoipa::path]` attributes. The router is
//! assembled from the same attributes (`utoipa_axum::routes!`), so a route
//! cannot be served without being described, or described without being
//! served. This module holds the document's frame, the `/v1` endpoints'
//! error responses (their bodies are `dialect.rs`'s types) and the schema
//! of the per-event ingest report.
//!
//! Response bodies are real types (`Serialize` + `ToSchema`: `views.rs`,
//! `dialect.rs`, beside their handlers). What stays a description only,
//! hence the `dead_code` allowances: the ingest report, which
//! `families/generic.rs` serializes straight from the run's dispositions
//! without building a tree of its own, the plugin listing (the pipeline's
//! view), and the request types beside handlers that validate a raw
//! `Value` in their document's error words.
#![allow(dead_code)]

use serde_json::Value;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use super::dialect::{HttpValidationError, Message};

/// The document's frame: info, security schemes, tags. Paths are added by
/// the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "Events through each tenant's chain of sandboxed WebAssembly plugins, stored in DuckDB. \
                       Authenticate with `Authorization: Bearer <token>` or `X-API-Key: <token>`."
    ),
    modifiers(&SecuritySchemes),
    // Referenced from inside inlined response schemas, which do not
    // register what they reference.
    components(schemas(super::FieldError, super::dialect::LogErrorDetail, super::dialect::QuotaUse)),
    security(("bearer" = []), ("api_key" = [])),
    tags(
        (name = "events", description = "Generic ingest, listing, export and SQL"),
        (name = "session-audit", description = "Document 000: session audit events"),
        (name = "iam", description = "Document 001: IAM account events"),
        (name = "auditlogs", description = "Document 003: batch audit logs"),
        (name = "logs", description = "Document 004: structured logs and quotas"),
        (name = "plugins", description = "Plugin upload, settings, versions, runs, logs and dead letters"),
        (name = "admin", description = "Tenants, tokens, retention, metrics and health"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components
            .add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))));
    }
}

/// The errors of the `/v1` endpoints.
#[derive(IntoResponses)]
pub enum ApiErrors {
    /// Missing or invalid credentials.
    #[response(status = 401)]
    Unauthorized(#[to_schema] Message),
    /// The token lacks the scope.
    #[response(status = 403)]
    Forbidden(#[to_schema] Message),
    #[response(status = 404)]
    NotFound(#[to_schema] Message),
    /// A conflict: an existing resource, or an idempotency key in use.
    #[response(status = 409)]
    Conflict(#[to_schema] Message),
    #[response(status = 413)]
    PayloadTooLarge(#[to_schema] Message),
    #[response(status = 415)]
    UnsupportedMediaType(#[to_schema] Message),
    #[response(status = 422)]
    Invalid(#[to_schema] HttpValidationError),
    /// Over one of the tenant's rates or budgets, or its share of shared
    /// work (retry after `Retry-After` seconds), or a quota used up (no
    /// `Retry-After`).
    #[response(status = 429)]
    TooManyRequests(#[to_schema] Message),
    /// Overloaded: retry after `Retry-After` seconds.
    #[response(status = 503)]
    Unavailable(#[to_schema] Message),
}

/// What became of one input event.
#[derive(ToSchema)]
pub struct Outcome {
    /// `stored`, `dropped`, `rejected` or `dead_lettered`.
    pub status: String,
    /// The input's position in the request.
    pub index: Option<u64>,
    /// Stored ids (several after a fan-out).
    pub ids: Option<Vec<String>>,
    /// Why it was dropped or dead-lettered.
    pub reason: Option<String>,
    /// The plugin that dropped or dead-lettered it.
    pub plugin: Option<String>,
    /// A rejection: `{code, message, field, plugin}`.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    /// Present (true) when the event's id was processed before and this is
    /// the remembered result.
    pub replayed: Option<bool>,
}

/// The per-event report of an ingest request.
#[derive(ToSchema)]
pub struct IngestReport {
    pub stored: u64,
    pub dropped: u64,
    pub rejected: u64,
    pub dead_lettered: u64,
    pub results: Vec<Outcome>,
    /// Only when every event was refused: each refusal with its location.
    pub detail: Option<Vec<super::FieldError>>,
}

/// A list of objects.
#[derive(ToSchema)]
pub struct Items {
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<Value>,
}

/// What a JSON Schema validator cannot take from utoipa's output alone, so
/// that the document says exactly what the endpoints accept (schemathesis'
/// positive and negative data checks hold it to that):
/// - `format` is only an annotation in OpenAPI 3.1: `uuid` and `date-time`
///   strings get the patterns the server checks (`Uuid::parse_str`: plain,
///   hyphenated, braced or URN; RFC 3339 with an offset; days past 28 are
///   left out, since a pattern cannot know each month's length);
/// - a list of events holds 1..10,000 (the variant of an untagged enum
///   takes no attributes);
/// - a dead-letter replay is either `ids` or `all: true`;
/// - a dry run's samples are generic events;
/// - a multipart upload has only its `component` and `manifest` parts;
/// - a token's scopes are the known ones.
pub fn tighten(doc: &mut Value) {
    const HEX: &str = "[0-9a-fA-F]";
    let hyphenated = format!("{HEX}{{8}}-{HEX}{{4}}-{HEX}{{4}}-{HEX}{{4}}-{HEX}{{12}}");
    let uuid = format!("^(?:{hyphenated}|\\{{{hyphenated}\\}}|urn:uuid:{hyphenated}|{HEX}{{32}})$");
    let date_time =
        "^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\
                     (?:\\.[0-9]+)?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$";
    fn walk(value: &mut Value, uuid: &str, date_time: &str) {
        match value {
            Value::Object(map) => {
                let pattern = match map.get("format").and_then(Value::as_str) {
                    Some("uuid") => Some(uuid),
                    Some("date-time") => Some(date_time),
                    _ => None,
                };
                if let Some(pattern) = pattern {
                    map.entry("pattern").or_insert_with(|| pattern.into());
                }
                map.values_mut().for_each(|v| walk(v, uuid, date_time));
            }
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, uuid, date_time)),
            _ => {}
        }
    }
    walk(doc, &uuid, date_time);
    let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) else { return };
    for name in ["GenericEvents", "IamEvents"] {
        if let Some(variants) = schemas.get_mut(name).and_then(|s| s.get_mut("oneOf")).and_then(Value::as_array_mut) {
            for list in variants.iter_mut().filter(|v| v["type"] == "array") {
                list["minItems"] = 1.into();
                list["maxItems"] = 10_000.into();
            }
        }
    }
    if let Some(replay) = schemas.get_mut("Replay") {
        let ids = replay["properties"]["ids"]["items"].clone();
        *replay = serde_json::json!({
            "description": "Either the dead letters with these ids, or all (the oldest first).",
            "oneOf": [
                {"type": "object", "required": ["ids"], "additionalProperties": false,
                 "properties": {"ids": {"type": "array", "items": ids}, "all": {"const": false}}},
                {"type": "object", "required": ["all"], "additionalProperties": false,
                 "properties": {"all": {"const": true}}},
            ],
        });
    }
    if let Some(events) = schemas.get_mut("DryRun").and_then(|s| s.pointer_mut("/properties/events/items")) {
        *events = serde_json::json!({"$ref": "#/components/schemas/GenericEvent"});
    }
    if let Some(form) = schemas.get_mut("UploadForm") {
        form["additionalProperties"] = false.into();
    }
    if let Some(scopes) = schemas.get_mut("NewToken").and_then(|s| s.pointer_mut("/properties/scopes/items")) {
        scopes["enum"] = crate::auth::SCOPES.iter().map(|s| Value::from(*s)).collect();
    }
    if let Some(scopes) = schemas.get_mut("NewToken").and_then(|s| s.pointer_mut("/properties/scopes")) {
        scopes["uniqueItems"] = true.into();
        scopes["minItems"] = 1.into();
        scopes["maxItems"] = crate::auth::SCOPES.len().into();
    }
}
