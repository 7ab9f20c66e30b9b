//! Sluice's customer-prefix transform written as an Extism plugin would be:
//! the events arrive as JSON (Extism passes bytes; JSON through serde is
//! what its PDK offers for structured data), the same record as Sluice's
//! WIT `event`, and one outcome per event goes back.

use extism_pdk::{plugin_fn, FnResult, Json};
use extism_record::{Event, Outcome};

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
