//! The WIT `event` record of `sluice:plugin@0.1.0`, field for field, and
//! the `outcome` the transform answers with: what the Extism peer's plugin
//! and host exchange as JSON.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub tenant: String,
    pub family: String,
    pub name: String,
    pub group: String,
    pub status: String,
    pub source: String,
    pub occurred_at: i64,
    pub received_at: i64,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub user_id: Option<i64>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub session_id: Option<String>,
    pub attributes: Vec<(String, String)>,
    pub payload: String,
}

/// The WIT `outcome` (only `keep` is used by this transform).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Keep(Vec<Event>),
}
