//! The Azure Functions custom-handler protocol (reference §1): the host POSTs `{Data, Metadata}` to
//! `/{FunctionName}` and expects `{Outputs, Logs, ReturnValue}` with a 2xx status; any other status fails the
//! invocation (Service Bus redelivers, Event Grid retries the batch).
//!
//! Values arrive encoded by the host's `GetHttpScriptInvocationContextValue`: strings as JSON-encoded JSON
//! (once or twice), integers and booleans as strings, the Event Grid `data` also under `Metadata.data`, and
//! null values omitted. Everything is decoded here, once.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::events::lenient::{as_f64, decode_nested};

/// The host's request for a non-HTTP trigger.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InvocationRequest {
    /// One entry per input binding, keyed by the binding `name` in function.json.
    #[serde(rename = "Data", alias = "data", default)]
    pub data: Map<String, Value>,
    /// Trigger metadata plus `sys`.
    #[serde(rename = "Metadata", alias = "metadata", default)]
    pub metadata: Map<String, Value>,
}

impl InvocationRequest {
    /// A binding's value, decoded (JSON-in-a-string layers peeled).
    pub fn binding(&self, name: &str) -> Option<Value> {
        lookup(&self.data, name)
            .map(|v| from_base64_json(decode_nested(v.clone())))
            .filter(|v| !v.is_null())
    }

    /// A metadata value, decoded; keys are matched case-insensitively (`MessageId`, `messageId`).
    pub fn meta(&self, key: &str) -> Option<Value> {
        lookup(&self.metadata, key)
            .map(|v| decode_nested(v.clone()))
            .filter(|v| !v.is_null())
    }

    /// A metadata value as text.
    pub fn meta_text(&self, key: &str) -> Option<String> {
        self.meta(key)
            .and_then(|v| crate::events::lenient::as_text(&v))
    }

    /// A metadata value as an integer (`4` or `"4"`).
    pub fn meta_u64(&self, key: &str) -> Option<u64> {
        self.meta(key)
            .and_then(|v| as_f64(&v))
            .filter(|v| *v >= 0.0)
            .map(|v| v as u64)
    }

    /// The Event Grid event of an eventGridTrigger: the binding value, with `data` filled from `Metadata.data`
    /// when the binding value lacks it (the most reliable copy of the payload, reference §1.2).
    pub fn event_grid_event(&self, binding: &str) -> Option<Value> {
        let mut event = self.binding(binding)?;
        if let (Value::Object(obj), Some(data)) = (&mut event, self.meta("data")) {
            let has =
                obj.get("data").is_some_and(|d| !d.is_null()) || obj.contains_key("data_base64");
            if !has {
                obj.insert("data".into(), data);
            }
        }
        Some(event)
    }
}

/// A binding the host bound as `byte[]` arrives as base64 (reference §1.2: the host picks the first of
/// `byte[]`, `JObject`, `JArray`, `string` a trigger converts to, which for Event Grid is inferred, not seen).
/// A string left after decoding that is base64 of a JSON object or array is read as that JSON; a binding
/// of ours is never such a string otherwise.
fn from_base64_json(value: Value) -> Value {
    use base64::Engine as _;
    if let Value::String(text) = &value
        && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text.trim())
        && let Ok(inner) = serde_json::from_slice::<Value>(&bytes)
        && (inner.is_object() || inner.is_array())
    {
        return decode_nested(inner);
    }
    value
}

fn lookup<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// The handler's answer to the host.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InvocationResponse {
    /// Output bindings by name (none of ours: we send to Service Bus ourselves to set MessageId/SessionId).
    #[serde(rename = "Outputs")]
    pub outputs: Map<String, Value>,
    /// Lines written to the invocation log (Application Insights).
    #[serde(rename = "Logs")]
    pub logs: Vec<String>,
    /// Value of a `$return` binding.
    #[serde(rename = "ReturnValue")]
    pub return_value: Value,
}

impl InvocationResponse {
    /// A response with log lines.
    pub fn logs(logs: Vec<String>) -> Self {
        InvocationResponse {
            logs,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_binding_that_arrives_as_base64_is_read_as_its_json() {
        use base64::Engine as _;
        let event = json!({"id": "1", "eventType": "X", "data": {"a": 1}});
        let b64 = base64::engine::general_purpose::STANDARD.encode(event.to_string());
        let req: InvocationRequest =
            serde_json::from_value(json!({ "Data": {"event": b64, "text": "aGVsbG8="} })).unwrap();
        assert_eq!(req.binding("event").unwrap(), event);
        assert_eq!(
            req.binding("text").unwrap(),
            json!("aGVsbG8="),
            "base64 of something that is not JSON stays as it came"
        );
    }

    #[test]
    fn double_encoded_bindings_and_string_numbers_are_decoded() {
        let event = json!({"id": "1", "eventType": "X", "data": {"a": 1}});
        let once = serde_json::to_string(&event).unwrap();
        let twice = serde_json::to_string(&once).unwrap();
        let req: InvocationRequest = serde_json::from_value(json!({
            "Data": {"event": twice},
            "Metadata": {"DeliveryCount": "4", "messageId": "\"m-1\"", "sys": {"MethodName": "AmlEvents"}}
        }))
        .unwrap();
        assert_eq!(req.binding("event").unwrap(), event);
        assert_eq!(req.meta_u64("deliveryCount"), Some(4));
        assert_eq!(req.meta_text("MessageId").as_deref(), Some("m-1"));
    }

    #[test]
    fn event_grid_data_is_taken_from_metadata_when_the_binding_lacks_it() {
        let req: InvocationRequest = serde_json::from_value(json!({
            "Data": {"event": {"id": "1", "eventType": "X"}},
            "Metadata": {"data": "{\"modelName\":\"m\"}"}
        }))
        .unwrap();
        assert_eq!(
            req.event_grid_event("event").unwrap()["data"],
            json!({"modelName": "m"})
        );
    }
}
