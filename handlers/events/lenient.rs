//! Decoding helpers for values whose JSON type varies between documentation samples and live deliveries.
//!
//! Azure sends `modelVersion` as a number in the docs and as a string live; the Functions host wraps strings
//! in one or two extra layers of JSON encoding (reference §1.2). These helpers accept every variant seen and
//! normalise it once, at the edge.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Peels JSON-in-a-string layers: `"\"{\\\"a\\\":1}\""` → `{"a":1}`. Stops after three rounds or at the first
/// string that is not itself JSON, so a plain string such as `"hello"` comes back unchanged.
///
/// ```
/// use mlops_relay::events::lenient::decode_nested;
/// use serde_json::json;
///
/// // What the Functions host sends for a string binding: JSON text inside a JSON string.
/// let wire = json!("{\"modelName\":\"fraud\"}");
/// assert_eq!(decode_nested(wire), json!({"modelName": "fraud"}));
/// assert_eq!(decode_nested(json!("fraud")), json!("fraud"));
/// ```
pub fn decode_nested(mut value: Value) -> Value {
    for _ in 0..3 {
        let Value::String(text) = &value else { break };
        let trimmed = text.trim_start();
        // Only strings that look like JSON text are re-parsed: "42" stays the string "42".
        if !(trimmed.starts_with('{') || trimmed.starts_with('[') || trimmed.starts_with('"')) {
            break;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(inner) => value = inner,
            Err(_) => break,
        }
    }
    value
}

/// A number or a numeric string (`0.83`, `"0.83"`, `"20"`) as `f64`.
pub fn as_f64(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|v| v.is_finite()),
        _ => None,
    }
}

/// A string or a number rendered as text, as model versions and tag values arrive either way.
pub fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// [`as_text`] taking the value, so that a string is moved rather than copied.
fn into_text(value: Value) -> Result<String, Value> {
    match value {
        Value::String(s) => Ok(s),
        other => as_text(&other).ok_or(other),
    }
}

/// Serde adapter: a required string that may arrive as a JSON number.
pub fn string_or_number<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    into_text(Value::deserialize(de)?).map_err(|value| {
        serde::de::Error::custom(format!("expected a string or a number, found {value}"))
    })
}

/// Serde adapter: an optional string that may arrive as a number or `null`.
pub fn opt_string_or_number<'de, D: Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(de)? {
        Value::Null => Ok(None),
        value => into_text(value).map(Some).map_err(|value| {
            serde::de::Error::custom(format!("expected a string or a number, found {value}"))
        }),
    }
}

/// Serde adapter: an optional float that may arrive as a numeric string or `null`.
pub fn opt_f64<'de, D: Deserializer<'de>>(de: D) -> Result<Option<f64>, D::Error> {
    match Value::deserialize(de)? {
        Value::Null => Ok(None),
        value => as_f64(&value)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("expected a number, found {value}"))),
    }
}

/// Serde adapter: a string map (tags, properties) whose values may be numbers, booleans or `null`.
/// Nested objects are kept as their JSON text so nothing is silently dropped.
pub fn string_map<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    de.deserialize_any(StringMapVisitor)
}

/// An object of tags is read entry by entry, without a `Value` of the whole object; anything else (a
/// double-encoded object, `null`, a wrong type) goes through [`string_map_from_value`].
struct StringMapVisitor;

impl<'de> serde::de::Visitor<'de> for StringMapVisitor {
    type Value = std::collections::BTreeMap<String, String>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object of tags")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = std::collections::BTreeMap::new();
        // As a `Value` object would: the last of repeated keys wins, then `null` entries are left out.
        while let Some(key) = map.next_key::<String>()? {
            match map.next_value::<Value>()? {
                Value::Null => {
                    out.remove(&key);
                }
                v => {
                    let text = into_text(v).unwrap_or_else(|v| v.to_string());
                    out.insert(key, text);
                }
            }
        }
        Ok(out)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let value = Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        string_map_from_value(value)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        string_map_from_value(Value::String(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        string_map_from_value(Value::String(v))
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        string_map_from_value(Value::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        string_map_from_value(Value::Number(v.into()))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        string_map_from_value(Value::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        string_map_from_value(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        string_map_from_value(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        string_map_from_value(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_any(self)
    }
}

fn string_map_from_value<E: serde::de::Error>(
    value: Value,
) -> Result<std::collections::BTreeMap<String, String>, E> {
    let value = decode_nested(value);
    match value {
        Value::Null => Ok(Default::default()),
        Value::Object(map) => Ok(map
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| {
                let text = as_text(&v).unwrap_or_else(|| v.to_string());
                (k, text)
            })
            .collect()),
        other => Err(serde::de::Error::custom(format!(
            "expected an object of tags, found {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn double_encoded_object_is_peeled_twice() {
        let once = serde_json::to_string(&json!({"a": 1})).unwrap();
        let twice = serde_json::to_string(&once).unwrap();
        assert_eq!(decode_nested(Value::String(twice)), json!({"a": 1}));
    }

    #[test]
    fn plain_and_numeric_strings_stay_strings() {
        assert_eq!(decode_nested(json!("hello")), json!("hello"));
        assert_eq!(decode_nested(json!("42")), json!("42"));
        assert_eq!(decode_nested(json!("\"hello\"")), json!("hello"));
    }

    #[test]
    fn tags_read_from_text_are_the_tags_read_from_a_value() {
        for text in [
            r#"{"a":"x","b":2,"c":true,"d":null,"e":{"f":1},"g":[1,"2"],"h":0.751}"#,
            r#"{"a":"x","a":null}"#,
            r#"{"a":null,"a":"y"}"#,
            r#"{"a":"x","a":"z"}"#,
            r#""{\"a\":1,\"b\":null}""#,
            r#""\"{\\\"a\\\":1}\"""#,
            "null",
            "[1]",
            "3",
            "-3",
            "1.5",
            "true",
            r#""text""#,
            "{}",
        ] {
            let direct = string_map(&mut serde_json::Deserializer::from_str(text));
            let value: Value = serde_json::from_str(text).unwrap();
            let via_value = string_map(&value);
            match (direct, via_value) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
                (Err(a), Err(b)) => {
                    assert!(
                        a.to_string().starts_with(&b.to_string()),
                        "{text}: {a} / {b}"
                    )
                }
                (a, b) => panic!("{text}: {a:?} / {b:?}"),
            }
        }
    }

    #[test]
    fn numbers_arrive_as_numbers_or_strings() {
        assert_eq!(as_f64(&json!("0.83")), Some(0.83));
        assert_eq!(as_f64(&json!(20)), Some(20.0));
        assert_eq!(as_f64(&json!("NaN")), None);
        assert_eq!(as_text(&json!(20)).as_deref(), Some("20"));
    }
}
