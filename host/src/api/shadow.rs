//! Shadow runs: `POST /v1/plugins/{name}/shadow` runs a candidate version of
//! a plugin (inside the tenant's current chain) over the raw inputs of the
//! tenant's last N stored events and reports how the result would differ
//! from what was stored. Nothing is stored. What it reads is bounded in
//! bytes (32 MiB of the newest events), the run is charged to the tenant's
//! byte rate and bound of events per request, and the diffs' events are
//! shown within [`ANSWER_BYTES`] (the rest counted).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::views::AuditEvent;
use super::{parse_object_or_default, require, within_bytes, ApiError, AppState, ANSWER_BYTES};
use crate::auth::Principal;
use crate::event::{COLUMN_ATTRIBUTES, CORE_FIELDS};
use crate::pipeline::{Disposition, Input};
use crate::store::EventWithRaw;

/// Most stored events one shadow run looks at.
const MAX_EVENTS: usize = 10_000;
/// Most differences listed in the answer (all are counted).
const MAX_DIFFS: usize = 50;

#[derive(serde::Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Shadow {
    /// Candidate version (default: the newest uploaded).
    #[serde(default, deserialize_with = "crate::whole::option")]
    version: Option<u32>,
    /// How many of the last stored events to replay (default 100).
    #[schema(minimum = 1, maximum = 10000)]
    #[serde(default, deserialize_with = "crate::whole::option")]
    events: Option<usize>,
}

/// Fields that differ between runs by nature (or are the tenant's own) and
/// are not compared; the payload is compared separately.
const NOT_COMPARED: [&str; 5] = ["id", "created_at", "received_at", "tenant", "event_payload"];

/// The comparable part of an event: the listing's fields (scalars as text,
/// since stored columns are typed and plugin attributes are strings) and
/// the payload; not `id`, times or lineage, which differ by nature.
fn comparable(event: &Value) -> Value {
    let mut map = serde_json::Map::new();
    let compared = CORE_FIELDS.iter().filter(|k| !NOT_COMPARED.contains(k)).chain(COLUMN_ATTRIBUTES.iter());
    for key in compared {
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

/// Order a group's events so fan-out copies compare regardless of order.
fn sort_group(events: &mut [Value]) {
    events.sort_by_key(|e| e.to_string());
}

#[utoipa::path(
    post,
    path = "/v1/plugins/{name}/shadow",
    tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    request_body(content = Shadow, description = "Optional"),
    responses((status = 200, body = Object), super::openapi::ApiErrors)
)]
pub async fn shadow(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    require(&principal, "plugins:read")?;
    let request: Shadow = parse_object_or_default(&body)?;
    let n = request.events.unwrap_or(100);
    if !(1..=MAX_EVENTS).contains(&n) {
        return Err(ApiError::field(
            vec!["body".into(), "events".into()],
            format!("Input should be between 1 and {MAX_EVENTS}"),
            "value_error",
        ));
    }
    // A shadow run takes one of the tenant's analyst slots, like a query or
    // an export, and its host-side work (grouping, re-normalizing,
    // comparing) runs on a blocking thread, not the request threads
    // (RELIABILITY.md, F36: four loops raised another tenant's p99 to 572 ms).
    let _slot = state.store.analyst_slot(&principal.space())?;
    let (chain, version) = state.pipeline.candidate_chain(&principal.tenant, &name, request.version).await?;
    let recent = state.store.recent_with_raw(principal.space(), n).await?;
    let space = principal.space();
    let prepared = tokio::task::spawn_blocking(move || prepare(&space, recent))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let Prepared { inputs, owner, stored, unsupported, read } = prepared;
    let output = state.pipeline.dry_run_chain(&principal.tenant, chain, inputs).await?;
    let inputs = stored.len();
    let compared = tokio::task::spawn_blocking(move || compare(&stored, &owner, &output))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let Compared { unchanged, changed, dropped, rejected, failed, diffs } = compared;
    Ok(Json(json!({
        "plugin": name,
        "candidate_version": version,
        "events": read,
        "inputs": inputs,
        "unchanged": unchanged,
        "changed": changed,
        "dropped": dropped,
        "rejected": rejected,
        "failed": failed,
        "unsupported": unsupported,
        "diffs": diffs,
    })))
}

/// The inputs a shadow run replays, from the stored events read.
struct Prepared {
    inputs: Vec<Input>,
    /// Input index → its group (in `stored`).
    owner: Vec<usize>,
    /// Per group: the comparable events stored for it.
    stored: Vec<Vec<Value>>,
    unsupported: usize,
    /// Stored events read.
    read: usize,
}

fn prepare(space: &str, recent: Vec<EventWithRaw>) -> Prepared {
    // Events that share a raw input and the time it was received came from
    // one request item (a fan-out): replay each input once and compare it
    // with all it produced. The same input sent in two requests is two
    // groups (their receipt times differ).
    let mut groups: BTreeMap<(crate::event::Raw, i64), (String, Vec<Value>)> = BTreeMap::new();
    let read = recent.len();
    for EventWithRaw { row, raw } in recent {
        let key = (raw, row.received_at);
        let family = row.family.clone();
        let event = serde_json::to_value(AuditEvent::from(row)).unwrap_or(Value::Null);
        groups.entry(key).or_insert_with(|| (family, Vec::new())).1.push(comparable(&event));
    }
    let mut inputs = Vec::new();
    let mut owner = Vec::new();
    let mut stored = Vec::new();
    let mut unsupported = 0;
    for ((raw, _), (family, before)) in groups {
        let parsed: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
        match super::families::renormalize(&family, space, &parsed, crate::event::now_micros()) {
            Some(events) if !events.is_empty() => {
                for event in events {
                    owner.push(stored.len());
                    inputs.push(Input { event, raw: raw.clone() });
                }
                stored.push(before);
            }
            _ => unsupported += 1,
        }
    }
    Prepared { inputs, owner, stored, unsupported, read }
}

/// What a shadow run found.
struct Compared {
    unchanged: usize,
    changed: usize,
    dropped: usize,
    rejected: usize,
    failed: usize,
    diffs: Vec<Value>,
}

fn compare(stored: &[Vec<Value>], owner: &[usize], output: &crate::pipeline::RunOutput) -> Compared {
    // Per group: what the candidate produced, and the worst outcome of its
    // inputs (failed > rejected > dropped > stored).
    let mut after: Vec<Vec<Value>> = vec![Vec::new(); stored.len()];
    let mut outcome: Vec<Option<&Disposition>> = vec![None; stored.len()];
    let rank = |d: &Disposition| match d {
        Disposition::Stored { .. } => 0,
        Disposition::Dropped { .. } => 1,
        Disposition::Rejected { error } if !error.plugin_failed() => 2,
        _ => 3,
    };
    let mut next = output.batch.events.iter();
    for (d, &group) in output.dispositions.iter().zip(owner) {
        if let Disposition::Stored { ids } = d {
            for _ in ids {
                if let Some(e) = next.next() {
                    after[group].push(comparable(&e.event.to_json()));
                }
            }
        }
        if outcome[group].is_none_or(|o| rank(d) > rank(o)) {
            outcome[group] = Some(d);
        }
    }
    let (mut unchanged, mut changed, mut dropped, mut rejected, mut failed) = (0, 0, 0, 0, 0);
    let mut diffs = Vec::new();
    let mut left = ANSWER_BYTES;
    for ((before, after), d) in stored.iter().zip(&mut after).zip(outcome) {
        let Some(d) = d else { continue };
        sort_group(after);
        let mut before = before.clone();
        sort_group(&mut before);
        let kind = match rank(d) {
            0 if before == *after => {
                unchanged += 1;
                continue;
            }
            0 => {
                changed += 1;
                "changed"
            }
            1 => {
                dropped += 1;
                "dropped"
            }
            2 => {
                rejected += 1;
                "rejected"
            }
            _ => {
                failed += 1;
                "failed"
            }
        };
        if diffs.len() < MAX_DIFFS {
            // Both sides shown while they fit the answer's bytes; the rest
            // of each side is counted.
            let (stored, stored_omitted) = within_bytes(before, &mut left);
            let (candidate, candidate_omitted) = within_bytes(std::mem::take(after), &mut left);
            diffs.push(json!({
                "kind": kind, "stored": stored, "stored_omitted": stored_omitted,
                "candidate": candidate, "candidate_omitted": candidate_omitted, "outcome": d,
            }));
        }
    }
    Compared { unchanged, changed, dropped, rejected, failed, diffs }
}
