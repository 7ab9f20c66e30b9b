//! The HTTP edge: routes, the one error type, and the extractors that turn
//! requests into typed input (or into the endpoint's error shape).
//!
//! Every handler fails with one [`ApiError`], answered in its family's
//! dialect ([`dialect`]): the FastAPI shapes of the listing document (002)
//! for the `/v1/...` endpoints (`{"detail": [{"loc", "msg", "type"}]}` for
//! invalid input (422) and `{"detail": "message"}` otherwise), and the
//! session-audit, google.rpc and logs shapes of documents 000, 003 and 004.

mod audit;
mod bodies;
mod dialect;
mod dry_run;
mod export;
mod families;
mod idempotency;
mod ingest;
mod openapi;
mod plugins;
mod query;
mod retention;
mod shadow;
mod tenants;
mod tokens;
mod validate;
mod views;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Auth, Principal, ADMIN_SCOPE};
use crate::config::Settings;
use crate::pipeline::{Mode, Pipeline, PluginError};
use crate::store::{Backend, StoreError};

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Backend>,
    pub pipeline: Arc<Pipeline>,
    pub auth: Arc<Auth>,
    pub settings: Arc<Settings>,
    /// The ingest steps every family shares.
    pub ingest: Arc<crate::ingest::Ingest>,
}

/// One entry of a 422 `detail` list.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Where the input broke: `"body"`, `"query"` or `"header"`, then keys
    /// and indexes.
    #[schema(value_type = Vec<Value>)]
    pub loc: Vec<Value>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl FieldError {
    pub fn new(loc: Vec<Value>, msg: impl Into<String>, kind: &str) -> FieldError {
        FieldError { loc, msg: msg.into(), kind: kind.to_string() }
    }
}

/// Every error a handler returns.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid input")]
    Validation(Vec<FieldError>),
    #[error("not authenticated")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(String),
    /// The caller has too much running already, or is over a rate (429
    /// with `Retry-After`: whole seconds until a retry can succeed).
    #[error("{0}")]
    TooManyRequests(String, u64),
    /// The space has used up a quota (429, no `Retry-After`: it lasts until
    /// midnight UTC or until data is removed).
    #[error("quota exceeded for {metric}")]
    QuotaExceeded { metric: &'static str, quotas: Vec<crate::store::QuotaUse> },
    #[error("{0}")]
    BadGateway(String),
    /// Input a family answers with 400 rather than FastAPI's 422 (audit
    /// logs, logs): a message and the fields it is about, if any.
    #[error("{message}")]
    BadRequest { message: String, fields: Vec<FieldError> },
    /// A refusal with its own code word (a plugin's rejection code, such as
    /// session audit's `session_not_found`).
    #[error("{message}")]
    Coded { status: StatusCode, code: String, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn field(loc: Vec<Value>, msg: impl Into<String>, kind: &str) -> ApiError {
        ApiError::Validation(vec![FieldError::new(loc, msg, kind)])
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        <dialect::FastApi as dialect::Dialect>::render(self)
    }
}

/// Set `Retry-After` to `secs` (at least 1).
pub fn retry_after(response: &mut Response, secs: u64) {
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
}

/// Whole seconds, rounded up, of a wait.
fn ceil_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Overloaded => ApiError::Unavailable("the store is overloaded; retry later".into()),
            e @ StoreError::OutOfMemory(_) => {
                tracing::warn!(error = %e, "store out of memory");
                ApiError::Unavailable("the store is short of memory; retry later".into())
            }
            StoreError::Busy(message) => ApiError::TooManyRequests(message, 1),
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::BadCursor => {
                ApiError::field(vec!["query".into(), "cursor".into()], "Invalid cursor", "value_error")
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<PluginError> for ApiError {
    fn from(e: PluginError) -> Self {
        match e {
            PluginError::Upload(u) => ApiError::field(vec!["body".into()], u.to_string(), "invalid_plugin"),
            PluginError::NotFound(name) => ApiError::NotFound(format!("plugin not found: {name}")),
            PluginError::Invalid(field, msg) => {
                let loc = std::iter::once("body".into()).chain(field.split('.').map(Value::from)).collect();
                ApiError::field(loc, msg, "value_error")
            }
            PluginError::Store(s) => s.into(),
            // The host's fault, not the plugin's: retryable, in every
            // family's own 503 dialect (each maps `Unavailable`).
            e @ PluginError::Unavailable { .. } => ApiError::Unavailable(e.to_string()),
            e @ PluginError::TooManyEvents { .. } => ApiError::PayloadTooLarge(e.to_string()),
            mut e @ (PluginError::RateLimited { .. }
            | PluginError::PluginTimeExceeded { .. }
            | PluginError::ByteRateLimited { .. }
            | PluginError::PluginWorkersBusy { .. }) => {
                let secs = e.retry_after().map_or(1, |wait| ceil_secs(*wait));
                ApiError::TooManyRequests(e.to_string(), secs)
            }
            PluginError::QuotaExceeded { metric, quotas } => ApiError::QuotaExceeded { metric, quotas },
            PluginError::Host(m) => ApiError::Internal(m),
        }
    }
}

/// The caller, from `Authorization: Bearer <token>` or `X-API-Key: <token>`.
impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        // Found already by the body budget's middleware.
        if let Some(principal) = parts.extensions.get::<Principal>().cloned() {
            return Ok(principal);
        }
        let secret = credential(&parts.headers).ok_or(ApiError::Unauthorized)?;
        state.auth.authenticate(secret).await?.ok_or(ApiError::Unauthorized)
    }
}

/// The one token a request presents, or `None`. Ambiguous credentials are
/// refused rather than one of them picked silently: two `Authorization` or
/// two `X-API-Key` headers, or both headers when they do not carry the same
/// bearer token (a proxy or client library adding its own header would
/// otherwise decide who the caller is).
fn credential(headers: &HeaderMap) -> Option<&str> {
    // `Some(None)`: present but unusable (not UTF-8, not a bearer token).
    let only = |name: &str| -> Result<Option<Option<&str>>, ()> {
        let mut values = headers.get_all(name).iter();
        let first = values.next().map(|v| v.to_str().ok().map(str::trim));
        if values.next().is_some() {
            return Err(());
        }
        Ok(first)
    };
    let authorization = only(header::AUTHORIZATION.as_str()).ok()?;
    let key = only("x-api-key").ok()?;
    let bearer = authorization
        .map(|v| v.and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))).map(str::trim));
    let secret = match (bearer, key) {
        (Some(bearer), Some(key)) if bearer == key => bearer,
        (Some(_), Some(_)) => None,
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => None,
    };
    secret.filter(|s| !s.is_empty())
}

/// Scopes that guard nothing but writes to what a tenant's live and test
/// spaces share: its plugin chain (`plugins:write`: upload, PATCH, DELETE,
/// rollback) and its settings and tenants (`admin`: retention, quotas,
/// tenant creation). A test-mode token may hold them (to read, and to mint
/// test tokens that hold them) but never use them: test traffic must not
/// change live behaviour.
const SHARED_WRITE_SCOPES: [&str; 2] = ["plugins:write", ADMIN_SCOPE];

/// Refuse the call unless the caller holds `scope`, and, for a scope that
/// writes what the live space shares ([`SHARED_WRITE_SCOPES`]), unless the
/// caller is live. Checked here, once, so no handler can forget it.
///
/// # Errors
///
/// [`ApiError::Forbidden`] naming the missing scope, or saying that a
/// test-mode token cannot change the live configuration.
pub fn require(principal: &Principal, scope: &str) -> Result<(), ApiError> {
    if !principal.has(scope) {
        return Err(ApiError::Forbidden(format!("missing scope: {scope}")));
    }
    if principal.is_test() && SHARED_WRITE_SCOPES.contains(&scope) {
        return Err(ApiError::Forbidden(
            "a test-mode token cannot change what the live space shares (plugins, retention, quotas, tenants); \
             use a live token"
                .into(),
        ));
    }
    Ok(())
}

/// How the caller's events run through the tenant's chain: a test space's
/// exactly as live ones, except that plugin faults there never count toward
/// a plugin's health (so test traffic cannot auto-disable a live plugin).
pub fn run_mode(principal: &Principal) -> Mode {
    if principal.is_test() {
        Mode::Test
    } else {
        Mode::Live
    }
}

/// Parse a JSON body, turning every failure into a 422 naming where it broke.
pub fn parse_json<'de, T: serde::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let mut loc: Vec<Value> = vec!["body".into()];
        for segment in e.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => loc.push((*index).into()),
                serde_path_to_error::Segment::Map { key } => loc.push(key.clone().into()),
                serde_path_to_error::Segment::Enum { variant } => loc.push(variant.clone().into()),
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        let inner = e.into_inner();
        let kind = if inner.is_syntax() || inner.is_eof() { "json_invalid" } else { "value_error" };
        ApiError::field(loc, inner.to_string(), kind)
    })?;
    // Nothing but whitespace may follow the document.
    de.end().map_err(|e| ApiError::field(vec!["body".into()], e.to_string(), "json_invalid"))?;
    Ok(value)
}

/// Like [`parse_json`], for a body that is one JSON object: serde would
/// also read a struct from an array of its fields in order (`[]` was taken
/// for `{}`), which pydantic's models refuse.
pub fn parse_object<'de, T: serde::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => parse_json(bytes),
        Some(_) => Err(ApiError::field(
            vec!["body".into()],
            "Input should be a valid dictionary or object to extract fields from",
            "model_attributes_type",
        )),
    }
}

/// Like [`parse_object`], but an empty body means the type's default.
pub fn parse_object_or_default<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        Ok(T::default())
    } else {
        parse_object(bytes)
    }
}

/// What became of one input, as the API reports it: the disposition with
/// the input's position (`key`: `index` or `dead_letter_id`).
pub fn disposition_json(d: &crate::pipeline::Disposition, key: &str, position: Value) -> Value {
    let mut v = serde_json::to_value(d).unwrap_or(Value::Null);
    v[key] = position;
    v
}

/// Most bytes of events one dry-run or shadow-run answer shows, like a
/// listing page's bound: the rest are counted, not shown (RELIABILITY.md,
/// F23, F24: a plugin padding its events made answers of 100-500 MB).
pub const ANSWER_BYTES: usize = 8 << 20;

/// The values that fit in `left` bytes (serialized), in order, and how many
/// did not; `left` is reduced by what was kept. Once one value does not fit,
/// no later one is made or kept, so what is shown is a prefix.
pub fn within_bytes<I>(values: I, left: &mut usize) -> (Vec<Value>, usize)
where
    I: IntoIterator<Item = Value>,
    I::IntoIter: ExactSizeIterator,
{
    let mut values = values.into_iter();
    let mut kept = Vec::new();
    while let Some(value) = values.next() {
        let size = serde_json::to_vec(&value).map_or(usize::MAX, |v| v.len());
        if size > *left {
            return (kept, 1 + values.len());
        }
        *left -= size;
        kept.push(value);
    }
    (kept, 0)
}

/// Liveness: no authentication, so it says nothing about the deployment.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "admin",
    security(()),
    responses((status = 200, body = Object, example = json!({"status": "ok"})))
)]
async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Prometheus text format. Metrics name every tenant and count live
/// traffic, so only the default tenant's live admin (the operator) may read
/// them; its test-mode token stays in its test space (RELIABILITY.md, F68).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "admin",
    responses((status = 200, body = String, content_type = "text/plain"), openapi::ApiErrors)
)]
async fn metrics(principal: Principal) -> Result<Response, ApiError> {
    require(&principal, "metrics:read")?;
    if principal.tenant != crate::auth::DEFAULT_TENANT || principal.is_test() {
        return Err(ApiError::Forbidden("metrics are for the operator (the default tenant's live admin)".into()));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::render()).into_response())
}

async fn not_found() -> ApiError {
    ApiError::NotFound("Not Found".into())
}

/// Every route, with the OpenAPI document that describes them. Routes are
/// registered from their handlers' `#[utoipa::path]` attributes, so what is
/// served and what is described cannot drift apart.
pub fn routes() -> (OpenApiRouter<AppState>, utoipa::openapi::OpenApi) {
    // Uploads read their body themselves, bounded by the plugin size limit.
    let uploads = OpenApiRouter::new().routes(routes!(plugins::upload)).layer(DefaultBodyLimit::disable());
    let router = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(metrics))
        .routes(routes!(families::generic::ingest))
        .routes(routes!(families::session_audit::create))
        .routes(routes!(families::iam::ingest))
        .routes(routes!(families::auditlogs::create))
        .routes(routes!(families::logs::create, families::logs::list))
        .routes(routes!(families::logs::get_quotas, families::logs::put_quotas))
        .routes(routes!(audit::list))
        .routes(routes!(audit::get_one))
        .merge(uploads)
        .routes(routes!(plugins::list))
        .routes(routes!(plugins::get_one, plugins::update, plugins::remove))
        .routes(routes!(plugins::rollback))
        .routes(routes!(dry_run::plugin))
        .routes(routes!(shadow::shadow))
        .routes(routes!(dry_run::pipeline))
        .routes(routes!(plugins::versions))
        .routes(routes!(plugins::logs))
        .routes(routes!(plugins::dead_letters))
        .routes(routes!(plugins::replay))
        .routes(routes!(tenants::create))
        .routes(routes!(tokens::create, tokens::list))
        .routes(routes!(tokens::revoke))
        .routes(routes!(query::run))
        .routes(routes!(export::export))
        .routes(routes!(retention::get, retention::put));
    let api = router.get_openapi().clone();
    (router, api)
}

/// The service: every route, `GET /openapi.json`, and the shared layers.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.max_body_bytes;
    let bodies = bodies::BodyBudget::new(
        state.settings.max_body_bytes_in_flight,
        state.settings.max_plugin_bytes.max(body_limit),
    );
    let (routes, mut api) = routes();
    api.paths.add_path_operation(
        "/openapi.json",
        vec![utoipa::openapi::HttpMethod::Get],
        utoipa::openapi::path::OperationBuilder::new()
            .tag("admin")
            .summary(Some("This document"))
            .security(utoipa::openapi::security::SecurityRequirement::default())
            .response("200", utoipa::openapi::ResponseBuilder::new().description("The OpenAPI 3.1 document")),
    );
    let mut document = serde_json::to_value(&api).expect("the OpenAPI document serializes");
    openapi::tighten(&mut document);
    if let Some(schemas) = document.pointer_mut("/components/schemas").and_then(Value::as_object_mut) {
        families::generic::describe_attributes(schemas);
    }
    let document = Arc::new(document.to_string());
    let (router, _) = routes.split_for_parts();
    router
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], document.as_str().to_owned()) }
            }),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state((state.clone(), bodies), bodies::body_budget))
        .layer(axum::middleware::from_fn(bodies::shape_too_large))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
