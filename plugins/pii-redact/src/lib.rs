//! Replace personal data with a keyed hash, so analysts can still join and
//! count on a field without being able to read it.
//!
//! Config: `{"key": "SECRET", "fields": ["event_payload.email", "ip_address",
//! "actor_id"]}`. Each listed field that is present is replaced by
//! `hmac:` + the first 32 hex digits of HMAC-SHA256(key, value). Payload paths
//! start with `event_payload`; other names are `actor_id`, `resource_id`,
//! `session_id` or an attribute key (`ip_address`, `user_agent`, ...). The
//! same value under the same key always gives the same hash.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use sluice_sdk::{export_plugin, Event, Outcome, Plugin};

struct PiiRedact {
    mac: Hmac<Sha256>,
    fields: Vec<String>,
}

impl PiiRedact {
    fn hash(&self, value: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(value.as_bytes());
        format!("hmac:{}", &hex::encode(mac.finalize().into_bytes())[..32])
    }

    fn redact(&self, event: &mut Event, field: &str) {
        if let Some(path) = field.strip_prefix("event_payload.") {
            let mut slot = event.payload_mut();
            for part in path.split('.') {
                slot = match slot.get_mut(part) {
                    Some(next) => next,
                    None => return,
                };
            }
            let text = match &*slot {
                Value::Null => return,
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            *slot = Value::String(self.hash(&text));
            return;
        }
        let hashed = |s: &mut Option<String>| {
            if let Some(v) = s.as_mut() {
                *v = self.hash(v);
            }
        };
        match field {
            "actor_id" => hashed(&mut event.actor_id),
            "resource_id" => hashed(&mut event.resource_id),
            "session_id" => hashed(&mut event.session_id),
            key => {
                if let Some(value) = event.attribute(key).map(|v| self.hash(v)) {
                    event.set_attribute(key, value);
                }
            }
        }
    }
}

impl Plugin for PiiRedact {
    fn init(config: Value) -> Result<Self, String> {
        let key = config["key"].as_str().filter(|k| !k.is_empty()).ok_or("config.key must be a non-empty string")?;
        let fields = config["fields"].as_array().ok_or("config.fields must be a list of field names")?;
        let fields = fields
            .iter()
            .map(|f| f.as_str().map(str::to_string).ok_or("config.fields must hold strings"))
            .collect::<Result<_, _>>()?;
        let mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).map_err(|e| e.to_string())?;
        Ok(PiiRedact { mac, fields })
    }

    fn process(&mut self, mut event: Event) -> Outcome {
        for field in &self.fields {
            self.redact(&mut event, field);
        }
        Outcome::keep(event)
    }
}

export_plugin!(PiiRedact);
