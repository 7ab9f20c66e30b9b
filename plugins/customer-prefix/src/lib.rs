//! Prefix the names of customer-created events, as the session-audit API
//! promises: "Customer created events will be prepended with `customer.`".
//!
//! Config (all optional):
//! - `prefix` (default `"customer."`): what to put in front of the name.
//! - `match` (default `{}`: every event the installation sees): field name ->
//!   list of accepted values, e.g. `{"family": ["session-audit"]}`. An event is
//!   customer-created when every listed field has one of its values.
//!
//! A name that already starts with the prefix is left alone, so replays and
//! chains that run twice never double-prefix.

use serde_json::Value;
use sluice_sdk::{export_plugin, Event, Outcome, Plugin};

struct CustomerPrefix {
    prefix: String,
    rules: Vec<(String, Vec<Value>)>,
}

impl Plugin for CustomerPrefix {
    fn init(config: Value) -> Result<Self, String> {
        let prefix = match config.get("prefix") {
            None => "customer.".to_string(),
            Some(Value::String(p)) if !p.is_empty() => p.clone(),
            Some(_) => return Err("config.prefix must be a non-empty string".into()),
        };
        let mut rules = Vec::new();
        match config.get("match") {
            None => {}
            Some(Value::Object(map)) => {
                for (field, values) in map {
                    let values =
                        values.as_array().ok_or_else(|| format!("config.match.{field} must be a list of values"))?;
                    rules.push((field.clone(), values.clone()));
                }
            }
            Some(_) => return Err("config.match must be an object".into()),
        }
        Ok(CustomerPrefix { prefix, rules })
    }

    fn process(&mut self, mut event: Event) -> Outcome {
        let customer_created = self
            .rules
            .iter()
            .all(|(field, accepted)| event.field(field).is_some_and(|value| accepted.contains(&value)));
        if customer_created && !event.name.starts_with(&self.prefix) {
            event.name = format!("{}{}", self.prefix, event.name);
        }
        Outcome::keep(event)
    }
}

export_plugin!(CustomerPrefix);
