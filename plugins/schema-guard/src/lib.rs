//! Validate events against rules from the config and reject those that break
//! one, naming every failing field.
//!
//! Config: `{"rules": [RULE, ...]}` where a rule is
//! `{"field": "event_payload.email", "required": true, "enum": [...],
//!   "min_length": 1, "max_length": 254, "pattern": "^[^@]+@[^@]+$"}`.
//! `field` is a listing-API field name, an attribute key, or a payload path
//! starting with `event_payload`. Every key but `field` is optional; a rule on
//! an absent field only fails when `required` is true. Lengths count
//! characters of strings, items of arrays. `code` (default `invalid_field`)
//! is the rejection code when the rule fails first; the API maps some codes
//! to statuses (e.g. `session_not_found` to the session-audit 404).

use regex::Regex;
use serde_json::Value;
use sluice_sdk::{export_plugin, Event, Outcome, Plugin};

struct Rule {
    field: String,
    code: String,
    required: bool,
    allowed: Option<Vec<Value>>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    pattern: Option<Regex>,
}

struct SchemaGuard {
    rules: Vec<Rule>,
}

fn parse_rule(i: usize, rule: &Value) -> Result<Rule, String> {
    let at = |key: &str| format!("config.rules[{i}].{key}");
    let field = rule["field"].as_str().ok_or_else(|| format!("{} must be a string", at("field")))?;
    let length = |key: &str| match rule.get(key) {
        None => Ok(None),
        Some(v) => {
            v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| format!("{} must be a non-negative integer", at(key)))
        }
    };
    let pattern = match rule.get("pattern") {
        None => None,
        Some(Value::String(p)) => Some(Regex::new(p).map_err(|e| format!("{}: {e}", at("pattern")))?),
        Some(_) => return Err(format!("{} must be a string", at("pattern"))),
    };
    let allowed = match rule.get("enum") {
        None => None,
        Some(Value::Array(values)) => Some(values.clone()),
        Some(_) => return Err(format!("{} must be a list", at("enum"))),
    };
    let code = match rule.get("code") {
        None => "invalid_field".to_string(),
        Some(Value::String(c)) if !c.is_empty() => c.clone(),
        Some(_) => return Err(format!("{} must be a non-empty string", at("code"))),
    };
    Ok(Rule {
        field: field.to_string(),
        code,
        required: rule.get("required").and_then(Value::as_bool).unwrap_or(false),
        allowed,
        min_length: length("min_length")?,
        max_length: length("max_length")?,
        pattern,
    })
}

impl Rule {
    fn check(&self, event: &Event) -> Option<String> {
        let Some(value) = event.field(&self.field).filter(|v| !v.is_null()) else {
            return self.required.then(|| "field required".to_string());
        };
        if let Some(allowed) = &self.allowed {
            if !allowed.contains(&value) {
                return Some(format!("must be one of {}", Value::Array(allowed.clone())));
            }
        }
        let length = match &value {
            Value::String(s) => Some(s.chars().count()),
            Value::Array(items) => Some(items.len()),
            _ => None,
        };
        if let (Some(len), Some(min)) = (length, self.min_length) {
            if len < min {
                return Some(format!("length {len} is below the minimum {min}"));
            }
        }
        if let (Some(len), Some(max)) = (length, self.max_length) {
            if len > max {
                return Some(format!("length {len} is above the maximum {max}"));
            }
        }
        if let Some(pattern) = &self.pattern {
            match value.as_str() {
                Some(s) if pattern.is_match(s) => {}
                _ => return Some(format!("does not match pattern {}", pattern.as_str())),
            }
        }
        None
    }
}

impl Plugin for SchemaGuard {
    fn init(config: Value) -> Result<Self, String> {
        let rules = config["rules"].as_array().ok_or("config.rules must be a list")?;
        let rules = rules.iter().enumerate().map(|(i, r)| parse_rule(i, r)).collect::<Result<_, _>>()?;
        Ok(SchemaGuard { rules })
    }

    fn process(&mut self, event: Event) -> Outcome {
        let errors: Vec<(&Rule, String)> =
            self.rules.iter().filter_map(|rule| rule.check(&event).map(|msg| (rule, msg))).collect();
        match errors.first() {
            None => Outcome::keep(event),
            Some((first, _)) => {
                let message = errors.iter().map(|(r, m)| format!("{}: {m}", r.field)).collect::<Vec<_>>().join("; ");
                Outcome::reject_field(first.code.as_str(), first.field.as_str(), message)
            }
        }
    }
}

export_plugin!(SchemaGuard);
