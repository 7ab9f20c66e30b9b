//! Test plugin: returns output the host must refuse or cap. `config.mode`:
//! - `oversized`: a payload of `config.bytes` (default 4 MiB) bytes;
//! - `malformed`: a payload that is not JSON;
//! - `fanout`: `config.copies` (default 100000) copies of each event;
//! - `twins`: each event kept twice under the same id;
//! - `tenant`: the event moved to tenant `config.tenant`;
//! - `count`: one outcome too many for the batch;
//! - `reject`: each event rejected with a code, message and field of
//!   `config.bytes` bytes each (default 4096), different for every event.
//!
//! It uses the raw bindings, not the SDK's safe types, to say what the SDK
//! would never let a plugin say.

use sluice_sdk::bindings::exports::sluice::plugin::handler::Guest;
use sluice_sdk::bindings::sluice::plugin::types::{Event, Outcome, Rejection};

struct Hostile;

thread_local! {
    static CONFIG: std::cell::RefCell<serde_json::Value> = const { std::cell::RefCell::new(serde_json::Value::Null) };
}

fn config(key: &str) -> serde_json::Value {
    CONFIG.with(|c| c.borrow()[key].clone())
}

impl Guest for Hostile {
    fn init(config: String) -> Result<(), String> {
        let value: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        CONFIG.with(|c| *c.borrow_mut() = value);
        Ok(())
    }

    fn process(events: Vec<Event>) -> Vec<Outcome> {
        let mode = config("mode").as_str().unwrap_or("oversized").to_string();
        let mut outcomes: Vec<Outcome> = events
            .into_iter()
            .map(|mut event| match mode.as_str() {
                "malformed" => {
                    event.payload = "{not json".into();
                    Outcome::Keep(vec![event])
                }
                "fanout" => {
                    let copies = config("copies").as_u64().unwrap_or(100_000) as usize;
                    let fan = (0..copies).map(|i| Event { id: format!("{}-{i}", event.id), ..event.clone() }).collect();
                    Outcome::Keep(fan)
                }
                "twins" => Outcome::Keep(vec![event.clone(), event]),
                "tenant" => {
                    event.tenant = config("tenant").as_str().unwrap_or("other").to_string();
                    Outcome::Keep(vec![event])
                }
                "count" => Outcome::Keep(vec![event]),
                "reject" => {
                    let bytes = config("bytes").as_u64().unwrap_or(4096) as usize;
                    let long = |what: &str| {
                        let unit = format!("{what}-{}-", event.id);
                        unit.repeat(bytes / unit.len() + 1)[..bytes].to_string()
                    };
                    Outcome::Reject(Rejection { code: long("c"), message: long("m"), field: Some(long("f")) })
                }
                _ => {
                    let bytes = config("bytes").as_u64().unwrap_or(4 << 20) as usize;
                    event.payload = format!("\"{}\"", "x".repeat(bytes));
                    Outcome::Keep(vec![event])
                }
            })
            .collect();
        if mode == "count" {
            outcomes.push(Outcome::Drop("one too many".into()));
        }
        outcomes
    }
}

sluice_sdk::bindings::__export_handler!(Hostile);
