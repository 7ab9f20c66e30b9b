//! Dry runs: `POST /v1/plugins/{name}/test` and `POST /v1/pipeline/test` run
//! sample events through one plugin or the whole chain and report outcomes,
//! output events, plugin logs, and time and fuel per plugin. Nothing is
//! stored and plugin health is not touched. The output events shown are
//! bounded in bytes ([`ANSWER_BYTES`]; `events_omitted` counts the rest), and
//! what the run made is charged to the tenant's byte rate.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::families::generic::to_event;
use super::{disposition_json, parse_object, require, within_bytes, ApiError, AppState, FieldError, ANSWER_BYTES};
use crate::auth::Principal;
use crate::event::{now_micros, rfc3339};
use crate::pipeline::{Input, RunOutput};

/// Most sample events per dry run.
const MAX_SAMPLES: usize = 1_000;

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DryRun {
    /// Sample events in the generic ingest shape.
    #[schema(value_type = Vec<Object>, min_items = 1, max_items = 1000)]
    events: Vec<Value>,
    /// Run them as if they came through this family (default `generic`).
    family: Option<String>,
}

fn inputs(tenant: &str, body: &[u8]) -> Result<Vec<Input>, ApiError> {
    let request: DryRun = parse_object(body)?;
    if request.events.is_empty() || request.events.len() > MAX_SAMPLES {
        return Err(ApiError::field(
            vec!["body".into(), "events".into()],
            format!("Give 1..{MAX_SAMPLES} events"),
            "value_error",
        ));
    }
    let received_at = now_micros();
    let mut errors: Vec<FieldError> = Vec::new();
    let mut inputs = Vec::new();
    for (i, raw) in request.events.iter().enumerate() {
        let text = raw.to_string();
        match to_event(tenant, i, &text, received_at) {
            Ok(mut event) => {
                if let Some(family) = &request.family {
                    event.family = family.clone();
                }
                inputs.push(Input { event, raw: text.into() });
            }
            Err(mut e) => {
                for err in &mut e {
                    err.loc.insert(1, "events".into());
                }
                errors.append(&mut e);
            }
        }
    }
    if errors.is_empty() {
        Ok(inputs)
    } else {
        Err(ApiError::Validation(errors))
    }
}

fn report(output: RunOutput) -> Json<Value> {
    let results: Vec<Value> =
        output.dispositions.iter().enumerate().map(|(index, d)| disposition_json(d, "index", index.into())).collect();
    // Built one by one while they fit: the rest are only counted.
    let mut left = ANSWER_BYTES;
    let (events, omitted) = within_bytes(
        output.batch.events.iter().map(|s| {
            let mut v = s.event.to_json();
            v["lineage"] = serde_json::to_value(&*s.lineage).unwrap_or(Value::Null);
            v
        }),
        &mut left,
    );
    let logs: Vec<Value> = output
        .batch
        .logs
        .iter()
        .map(|l| json!({"plugin": l.plugin, "level": l.level, "message": l.message, "fields": l.fields}))
        .collect();
    let runs: Vec<Value> = output
        .batch
        .runs
        .iter()
        .map(|r| {
            json!({
                "plugin": r.plugin, "version": r.plugin_version, "started_at": rfc3339(r.started_at),
                "events_in": r.events_in, "events_out": r.events_out, "dropped": r.dropped,
                "rejected": r.rejected, "fault": r.fault, "elapsed_us": r.elapsed_us, "fuel": r.fuel,
            })
        })
        .collect();
    Json(json!({ "results": results, "events": events, "events_omitted": omitted, "logs": logs, "runs": runs }))
}

/// Dry run of sample events through one plugin (even a disabled one):
/// outcomes, output events, logs, time and fuel. Nothing is stored.
#[utoipa::path(
    post,
    path = "/v1/plugins/{name}/test",
    tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    request_body = DryRun,
    responses((status = 200, body = Object), super::openapi::ApiErrors)
)]
pub async fn plugin(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    require(&principal, "plugins:read")?;
    let inputs = inputs(&principal.space(), &body)?;
    Ok(report(state.pipeline.dry_run(&principal.tenant, Some(&name), inputs).await?))
}

/// Dry run of sample events through the tenant's live chain.
#[utoipa::path(
    post,
    path = "/v1/pipeline/test",
    tag = "plugins",
    request_body = DryRun,
    responses((status = 200, body = Object), super::openapi::ApiErrors)
)]
pub async fn pipeline(
    State(state): State<AppState>,
    principal: Principal,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    require(&principal, "plugins:read")?;
    let inputs = inputs(&principal.space(), &body)?;
    Ok(report(state.pipeline.dry_run(&principal.tenant, None, inputs).await?))
}
