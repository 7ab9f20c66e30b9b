//! Shadow runs: `POST /v1/plugins/{name}/shadow` runs a candidate version of
//! a plugin (inside the tenant's current chain) over the raw inputs of the
//! tenant's last N stored events and reports how the result would differ
//! from what was stored. Nothing is stored.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::events::to_event;
use super::{parse_json_or_default, require, ApiError, AppState};
use crate::auth::Principal;
use crate::event::COLUMN_ATTRIBUTES;
use crate::pipeline::{Disposition, Input};

/// Most stored events one shadow run looks at.
const MAX_EVENTS: usize = 10_000;
/// Most differences listed in the answer (all are counted).
const MAX_DIFFS: usize = 50;

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Shadow {
    /// Candidate version (default: the newest uploaded).
    version: Option<u32>,
    /// How many of the last stored events to replay (default 100).
    events: Option<usize>,
}

/// The core fields compared (with every column attribute): the listing's,
/// less what differs by nature.
const COMPARED: [&str; 11] = [
    "family",
    "user_id",
    "actor_type",
    "actor_id",
    "source",
    "event_group",
    "event_type",
    "status",
    "resource_type",
    "resource_id",
    "session_id",
];

/// The comparable part of an event: the listing's fields (scalars as text,
/// since stored columns are typed and plugin attributes are strings) and
/// the payload; not `id`, times or lineage, which differ by nature.
fn comparable(event: &Value) -> Value {
    let mut map = serde_json::Map::new();
    for key in COMPARED.iter().chain(COLUMN_ATTRIBUTES.iter()) {
        match &event[*key] {
            Value::Null => {}
            Value::String(s) => {
                map.insert(key.to_string(), s.clone().into());
            }
            other => {
                map.insert(key.to_string(), other.to_string().into());
            }
        }
    }
    map.insert("event_payload".into(), event["event_payload"].clone());
    Value::Object(map)
}

pub async fn shadow(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    require(&principal, "plugins:read")?;
    let request: Shadow = parse_json_or_default(&body)?;
    let n = request.events.unwrap_or(100);
    if !(1..=MAX_EVENTS).contains(&n) {
        return Err(ApiError::field(
            vec!["body".into(), "events".into()],
            format!("Input should be between 1 and {MAX_EVENTS}"),
            "value_error",
        ));
    }
    let (chain, version) = state.pipeline.candidate_chain(&principal.tenant, &name, request.version).await?;
    // Events that share a raw input came from one request item (fan-out):
    // replay each input once and compare it with all it produced.
    let mut groups: BTreeMap<String, (Value, Vec<Value>)> = BTreeMap::new();
    for (event, raw) in state.store.recent_with_raw(principal.tenant.clone(), n).await? {
        groups.entry(raw.to_string()).or_insert_with(|| (raw, Vec::new())).1.push(comparable(&event));
    }
    let mut inputs = Vec::new();
    let mut stored = Vec::new();
    let mut unsupported = 0;
    for (raw, before) in groups.into_values() {
        // Only the generic family can be re-normalized from its raw input so far.
        let family = before.first().and_then(|e| e["family"].as_str()).unwrap_or("generic");
        match (family, to_event(&principal.tenant, 0, &raw, crate::event::now_micros())) {
            ("generic", Ok(event)) => {
                inputs.push(Input { event, raw: Arc::new(raw) });
                stored.push(before);
            }
            _ => unsupported += 1,
        }
    }
    let output = state.pipeline.dry_run_chain(chain, inputs).await?;
    let mut after: Vec<Vec<Value>> = vec![Vec::new(); stored.len()];
    let mut next = output.batch.events.iter();
    for (i, d) in output.dispositions.iter().enumerate() {
        if let Disposition::Stored { ids } = d {
            for _ in ids {
                if let Some(e) = next.next() {
                    after[i].push(comparable(&e.event.to_json()));
                }
            }
        }
    }
    let (mut unchanged, mut changed, mut dropped, mut rejected, mut failed) = (0, 0, 0, 0, 0);
    let mut diffs = Vec::new();
    for ((before, after), d) in stored.iter().zip(&after).zip(&output.dispositions) {
        let kind = match d {
            Disposition::Stored { .. } if before == after => {
                unchanged += 1;
                continue;
            }
            Disposition::Stored { .. } => {
                changed += 1;
                "changed"
            }
            Disposition::Dropped { .. } => {
                dropped += 1;
                "dropped"
            }
            Disposition::Rejected { error } if error.code == "plugin_failed" => {
                failed += 1;
                "failed"
            }
            Disposition::Rejected { .. } => {
                rejected += 1;
                "rejected"
            }
            Disposition::DeadLettered { .. } => {
                failed += 1;
                "failed"
            }
        };
        if diffs.len() < MAX_DIFFS {
            diffs.push(json!({"kind": kind, "stored": before, "candidate": after, "outcome": d}));
        }
    }
    Ok(Json(json!({
        "plugin": name,
        "candidate_version": version,
        "inputs": stored.len(),
        "unchanged": unchanged,
        "changed": changed,
        "dropped": dropped,
        "rejected": rejected,
        "failed": failed,
        "unsupported": unsupported,
        "diffs": diffs,
    })))
}
