//! Whole numbers from JSON as pydantic and JSON Schema read them: `5` and
//! `5.0` are the same integer, `5.5` is not one. For `deserialize_with` on
//! integer fields of request bodies (`whole::option` for optional ones).

use serde::de::{Deserializer, Error, Visitor};

struct Whole;

impl Visitor<'_> for Whole {
    type Value = i64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a valid integer")
    }

    fn visit_i64<E: Error>(self, n: i64) -> Result<i64, E> {
        Ok(n)
    }

    fn visit_u64<E: Error>(self, n: u64) -> Result<i64, E> {
        i64::try_from(n).map_err(|_| E::custom(format!("{n} is too large")))
    }

    fn visit_f64<E: Error>(self, n: f64) -> Result<i64, E> {
        // 2^63 is exactly representable; every whole f64 below it fits.
        if n.fract() == 0.0 && n >= -(2f64.powi(63)) && n < 2f64.powi(63) {
            Ok(n as i64)
        } else if n.is_finite() && n.fract() == 0.0 {
            Err(E::custom(format!("{n} is too large")))
        } else {
            Err(E::custom("Input should be a valid integer, got a number with a fractional part"))
        }
    }
}

fn within<T: TryFrom<i64>, E: Error>(n: i64) -> Result<T, E> {
    T::try_from(n).map_err(|_| E::custom(format!("{n} is out of range")))
}

/// A whole number into `T`.
///
/// # Errors
///
/// When the value is not a whole number or does not fit `T`.
pub fn deserialize<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<T, D::Error> {
    within(d.deserialize_any(Whole)?)
}

/// An optional whole number (`null` or absent: `None`; use with
/// `#[serde(default)]`).
///
/// # Errors
///
/// As [`deserialize`].
pub fn option<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<Option<T>, D::Error> {
    #[derive(serde::Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "deserialize")] i64);
    match <Option<Wrapped> as serde::Deserialize>::deserialize(d)? {
        Some(Wrapped(n)) => within(n).map(Some),
        None => Ok(None),
    }
}

/// An optional list of whole numbers.
///
/// # Errors
///
/// As [`deserialize`], for any item.
pub fn option_list<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<Option<Vec<T>>, D::Error> {
    #[derive(serde::Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "deserialize")] i64);
    match <Option<Vec<Wrapped>> as serde::Deserialize>::deserialize(d)? {
        Some(items) => items.into_iter().map(|Wrapped(n)| within(n)).collect::<Result<Vec<T>, _>>().map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Body {
        #[serde(default, deserialize_with = "super::option")]
        days: Option<u32>,
    }

    fn days(json: &str) -> Result<Option<u32>, String> {
        serde_json::from_str::<Body>(json).map(|b| b.days).map_err(|e| e.to_string())
    }

    #[test]
    fn whole_floats_are_integers_and_fractions_are_not() {
        assert_eq!(days(r#"{"days": 5681}"#), Ok(Some(5681)));
        assert_eq!(days(r#"{"days": 5681.0}"#), Ok(Some(5681)));
        assert_eq!(days(r#"{"days": null}"#), Ok(None));
        assert_eq!(days("{}"), Ok(None));
        assert!(days(r#"{"days": 5681.5}"#).is_err_and(|e| e.contains("fractional part")));
        assert!(days(r#"{"days": -1}"#).is_err_and(|e| e.contains("out of range")));
        assert!(days(r#"{"days": 1e300}"#).is_err_and(|e| e.contains("too large")));
        assert!(days(r#"{"days": "5"}"#).is_err());
    }
}
