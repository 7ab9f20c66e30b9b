//! Sluice's customer-prefix transform written as an Extism plugin would be:
//! the events arrive as JSON (Extism passes bytes; JSON through serde is
//! what its PDK offers for structured data), the same record as Sluice's
//! WIT `event`, and one outcome per event goes back.

use extism_pdk::{plugin_fn, FnResult, Json};
use serde::{Deserialize, Serialize};

/// The WIT `event` record of `sluice:plugin@0.1.0`, field for field.
#[derive(Serialize, Deserialize)]
pub struct Event {
    id: String,
    tenant: String,
    family: String,
    name: String,
    group: String,
    status: String,
    source: String,
    occurred_at: i64,
    received_at: i64,
    actor_type: String,
    actor_id: Option<String>,
    user_id: Option<i64>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    session_id: Option<String>,
    attributes: Vec<(String, String)>,
    payload: String,
}

/// The WIT `outcome` (only `keep` is used by this transform).
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Keep(Vec<Event>),
}

const PREFIX: &str = "customer.";

#[plugin_fn]
pub fn process(Json(events): Json<Vec<Event>>) -> FnResult<Json<Vec<Outcome>>> {
    Ok(Json(
        events
            .into_iter()
            .map(|mut event| {
                if !event.name.starts_with(PREFIX) {
                    event.name = format!("{PREFIX}{}", event.name);
                }
                Outcome::Keep(vec![event])
            })
            .collect(),
    ))
}
