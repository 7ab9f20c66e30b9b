//! Field validation with FastAPI/pydantic's error wording and types, so
//! families specified by FastAPI documents answer 422 exactly as they do.
//! Every error is collected, not just the first.

use serde_json::{Map, Value};

use super::FieldError;

/// Collects errors while reading fields of a JSON object.
#[derive(Default)]
pub struct Validator {
    pub errors: Vec<FieldError>,
}

fn at(loc: &[Value], key: &str) -> Vec<Value> {
    let mut l = loc.to_vec();
    l.push(key.into());
    l
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// pydantic's error for a string of `chars` characters outside
/// `min..=max`: its message and type.
pub fn length_error(chars: usize, min: usize, max: usize) -> Option<(String, &'static str)> {
    if chars < min {
        Some((format!("String should have at least {}", plural(min, "character")), "string_too_short"))
    } else if chars > max {
        Some((format!("String should have at most {}", plural(max, "character")), "string_too_long"))
    } else {
        None
    }
}

/// An RFC 3339 date-time, as microseconds since the epoch; or pydantic's
/// error message (type `datetime_parsing`).
pub fn date_time(text: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .map_err(|e| format!("Input should be a valid datetime, {e}"))
}

impl Validator {
    fn error(&mut self, loc: Vec<Value>, msg: impl Into<String>, kind: &str) {
        self.errors.push(FieldError::new(loc, msg, kind));
    }

    /// The value of `key`, or `None` (with a `missing` error when required).
    /// An explicit `null` counts as absent for optional fields.
    fn get<'a>(&mut self, obj: &'a Map<String, Value>, key: &str, loc: &[Value], required: bool) -> Option<&'a Value> {
        match obj.get(key) {
            Some(Value::Null) | None => {
                if required {
                    self.error(at(loc, key), "Field required", "missing");
                }
                None
            }
            Some(v) => Some(v),
        }
    }

    fn check_len(&mut self, loc: Vec<Value>, s: &str, min: usize, max: usize) -> bool {
        match length_error(s.chars().count(), min, max) {
            Some((message, kind)) => {
                self.error(loc, message, kind);
                false
            }
            None => true,
        }
    }

    /// An RFC 3339 date-time string of at most `max` characters, as
    /// microseconds since the epoch.
    pub fn date_time(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        loc: &[Value],
        required: bool,
        max: usize,
    ) -> Option<i64> {
        let text = self.string(obj, key, loc, required, 1, max)?;
        date_time(&text).map_err(|message| self.error(at(loc, key), message, "datetime_parsing")).ok()
    }

    /// A string of `min..=max` characters.
    pub fn string(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        loc: &[Value],
        required: bool,
        min: usize,
        max: usize,
    ) -> Option<String> {
        match self.get(obj, key, loc, required)? {
            Value::String(s) => self.check_len(at(loc, key), s, min, max).then(|| s.clone()),
            _ => {
                self.error(at(loc, key), "Input should be a valid string", "string_type");
                None
            }
        }
    }

    /// One of `allowed`.
    pub fn one_of(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        loc: &[Value],
        required: bool,
        allowed: &[&str],
    ) -> Option<String> {
        let value = self.get(obj, key, loc, required)?;
        match value.as_str() {
            Some(s) if allowed.contains(&s) => Some(s.to_string()),
            _ => {
                let quoted: Vec<String> = allowed.iter().map(|a| format!("'{a}'")).collect();
                let list = match quoted.split_last() {
                    Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
                    _ => quoted.join(""),
                };
                self.error(at(loc, key), format!("Input should be {list}"), "enum");
                None
            }
        }
    }

    /// A UUID in its text form.
    pub fn uuid(&mut self, obj: &Map<String, Value>, key: &str, loc: &[Value], required: bool) -> Option<String> {
        let value = self.get(obj, key, loc, required)?;
        match value.as_str().map(uuid::Uuid::parse_str) {
            Some(Ok(u)) => Some(u.to_string()),
            Some(Err(e)) => {
                self.error(at(loc, key), format!("Input should be a valid UUID, {e}"), "uuid_parsing");
                None
            }
            None => {
                self.error(at(loc, key), "UUID input should be a string, bytes or UUID object", "uuid_type");
                None
            }
        }
    }

    /// An integer within `min..=max` when given.
    pub fn integer(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        loc: &[Value],
        required: bool,
        min: Option<i64>,
        max: Option<i64>,
    ) -> Option<i64> {
        let value = self.get(obj, key, loc, required)?;
        // As pydantic reads an int: a whole float (5.0) is 5; 5.5 is not.
        let whole = value.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64);
        let Some(n) = value.as_i64().or(whole) else {
            if value.as_f64().is_some() {
                let msg = "Input should be a valid integer, got a number with a fractional part";
                self.error(at(loc, key), msg, "int_from_float");
            } else {
                self.error(at(loc, key), "Input should be a valid integer", "int_type");
            }
            return None;
        };
        if let Some(min) = min.filter(|m| n < *m) {
            self.error(at(loc, key), format!("Input should be greater than or equal to {min}"), "greater_than_equal");
            return None;
        }
        if let Some(max) = max.filter(|m| n > *m) {
            self.error(at(loc, key), format!("Input should be less than or equal to {max}"), "less_than_equal");
            return None;
        }
        Some(n)
    }

    pub fn boolean(&mut self, obj: &Map<String, Value>, key: &str, loc: &[Value]) -> Option<bool> {
        let value = self.get(obj, key, loc, false)?;
        value.as_bool().or_else(|| {
            self.error(at(loc, key), "Input should be a valid boolean", "bool_type");
            None
        })
    }

    /// A nested object.
    pub fn object<'a>(
        &mut self,
        obj: &'a Map<String, Value>,
        key: &str,
        loc: &[Value],
        required: bool,
    ) -> Option<&'a Map<String, Value>> {
        let value = self.get(obj, key, loc, required)?;
        value.as_object().or_else(|| {
            self.error(at(loc, key), "Input should be a valid dictionary", "dict_type");
            None
        })
    }

    /// An object whose values are strings of `min..=max` characters.
    pub fn string_map(&mut self, obj: &Map<String, Value>, key: &str, loc: &[Value], min: usize, max: usize) {
        if let Some(map) = self.object(obj, key, loc, false) {
            let here = at(loc, key);
            for (k, v) in map {
                match v {
                    Value::String(s) => {
                        self.check_len(at(&here, k), s, min, max);
                    }
                    _ => self.error(at(&here, k), "Input should be a valid string", "string_type"),
                }
            }
        }
    }

    /// An object whose values are numbers.
    pub fn number_map(&mut self, obj: &Map<String, Value>, key: &str, loc: &[Value]) {
        if let Some(map) = self.object(obj, key, loc, false) {
            let here = at(loc, key);
            for (k, v) in map {
                if !v.is_number() {
                    self.error(at(&here, k), "Input should be a valid number", "float_type");
                }
            }
        }
    }

    /// A list of at most `max_items` items.
    pub fn list<'a>(
        &mut self,
        obj: &'a Map<String, Value>,
        key: &str,
        loc: &[Value],
        max_items: Option<usize>,
    ) -> Option<&'a Vec<Value>> {
        let value = self.get(obj, key, loc, false)?;
        let Some(items) = value.as_array() else {
            self.error(at(loc, key), "Input should be a valid list", "list_type");
            return None;
        };
        if let Some(max) = max_items.filter(|m| items.len() > *m) {
            self.error(
                at(loc, key),
                format!("List should have at most {} after validation, not {}", plural(max, "item"), items.len()),
                "too_long",
            );
            return None;
        }
        Some(items)
    }

    /// A list of strings.
    pub fn string_list(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        loc: &[Value],
        max_items: Option<usize>,
    ) -> Vec<String> {
        let Some(items) = self.list(obj, key, loc, max_items) else {
            return Vec::new();
        };
        let here = at(loc, key);
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(s) => out.push(s.to_string()),
                None => {
                    let mut l = here.clone();
                    l.push(i.into());
                    self.error(l, "Input should be a valid string", "string_type");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integers_are_read_as_pydantic_reads_them() {
        let body = json!({"a": 5.0, "b": 5.5, "c": "5", "d": 7});
        let body = body.as_object().unwrap();
        let mut v = Validator::default();
        assert_eq!(v.integer(body, "a", &[], true, None, None), Some(5));
        assert_eq!(v.integer(body, "d", &[], true, None, None), Some(7));
        assert_eq!(v.integer(body, "b", &[], true, None, None), None);
        assert_eq!(v.integer(body, "c", &[], true, None, None), None);
        let kinds: Vec<&str> = v.errors.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["int_from_float", "int_type"]);
    }

    #[test]
    fn lengths_are_worded_and_typed_as_pydantic_does() {
        assert_eq!(length_error(0, 1, 5), Some(("String should have at least 1 character".into(), "string_too_short")));
        assert_eq!(
            length_error(1, 2, 5),
            Some(("String should have at least 2 characters".into(), "string_too_short"))
        );
        assert_eq!(length_error(6, 1, 5), Some(("String should have at most 5 characters".into(), "string_too_long")));
        assert_eq!(length_error(2, 1, 1), Some(("String should have at most 1 character".into(), "string_too_long")));
        assert_eq!(length_error(5, 1, 5), None);
        assert_eq!(length_error(1, 1, 5), None);
    }

    #[test]
    fn date_times_are_rfc3339_with_an_offset() {
        assert_eq!(date_time("1970-01-01T00:00:01Z"), Ok(1_000_000));
        assert_eq!(date_time("1970-01-01T01:00:01+01:00"), Ok(1_000_000));
        for bad in ["soon", "2030-13-01T00:00:00Z", "2030-01-01", "2030-01-01T00:00:00"] {
            assert!(date_time(bad).is_err_and(|m| m.starts_with("Input should be a valid datetime, ")), "{bad}");
        }
        let mut v = Validator::default();
        let obj = json!({"at": "later", "fine": "2030-01-01T00:00:00Z", "empty": ""});
        let obj = obj.as_object().unwrap();
        let loc = [Value::from("body")];
        assert_eq!(v.date_time(obj, "at", &loc, false, 64), None);
        assert_eq!(v.date_time(obj, "fine", &loc, false, 64), Some(1_893_456_000_000_000));
        assert_eq!(v.date_time(obj, "empty", &loc, false, 64), None);
        assert_eq!(v.date_time(obj, "absent", &loc, true, 64), None);
        let kinds: Vec<_> = v.errors.iter().map(|e| serde_json::to_value(e).unwrap()["type"].clone()).collect();
        assert_eq!(kinds, [json!("datetime_parsing"), json!("string_too_short"), json!("missing")]);
    }
}
