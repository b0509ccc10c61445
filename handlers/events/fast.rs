//! A fast path for the common shapes of one JSON Lines record: read straight from the text, without first
//! building a `serde_json::Value` of the whole record.
//!
//! The lenient path ([`Inbound::parse_delivery`](super::Inbound::parse_delivery) and
//! [`Envelope::payload`](super::Envelope::payload)) stays the reference. The fast path answers only when a
//! record is plainly well-formed: no PascalCase envelope fields, no `data_base64`, no double-encoded record or
//! `data`, no `null` at the top level, no duplicate keys, and no error anywhere. Anything else returns `None`
//! and the caller takes the lenient path, which also words the errors. When the fast path answers, its
//! records are the ones the lenient path would produce (tests compare the two over every fixture).
//!
//! How: a first pass reads the envelope fields and takes `data` as its text (serde_json's `RawValue`, so the
//! bytes of `data` are checked once and not copied); a second pass deserialises only that text,
//! into the real payload type of the event type found in the first pass (the same `serde` derives and
//! lenient adapters as the lenient path). Drift reports and alerts are deserialised into their real types.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, FixedOffset};

use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use serde_json::{Number, Value};

use super::drift::DriftWindow;
use super::lenient::{opt_f64, opt_string_or_number, string_map};
use super::{
    Envelope, EventPayload, Schema, aml, drift::DriftReport, eventgrid, monitor::CommonAlert,
    parse_time, relay,
};

/// One record read by the fast path: an event with its payload already typed, or a drift report or alert.
#[derive(Debug, Clone, PartialEq)]
pub enum FastRecord<'a> {
    /// An Event Grid event or a CloudEvent, with its payload.
    Event(FastEnvelope<'a>, EventPayload),
    /// A drift report from the drift webhook.
    Drift(DriftReport),
    /// An Azure Monitor alert.
    Alert(CommonAlert),
}

/// An event's envelope as the fast path reads it. The id and trace context, which a signal keeps as they are,
/// are owned; the rest borrow from the line, so that no copy of them is made: a signal reads the source only
/// for its workspace and key, keeps a known event type as a `'static` name, and never reads the subject or
/// the data version.
#[derive(Debug, Clone, PartialEq)]
pub struct FastEnvelope<'a> {
    /// See [`Envelope::schema`].
    pub schema: Schema,
    /// See [`Envelope::id`].
    pub id: String,
    /// See [`Envelope::source`].
    pub source: Cow<'a, str>,
    /// See [`Envelope::subject`].
    pub subject: Option<Cow<'a, str>>,
    /// See [`Envelope::event_type`].
    pub event_type: Cow<'a, str>,
    /// See [`Envelope::time`].
    pub time: Option<DateTime<FixedOffset>>,
    /// See [`Envelope::data_version`].
    pub data_version: Option<Cow<'a, str>>,
    /// See [`Envelope::traceparent`].
    pub traceparent: Option<String>,
}

impl FastEnvelope<'_> {
    /// The envelope the lenient path reads from the same text, with `data` left `Null` (the fast path types
    /// the payload instead of keeping it).
    pub fn to_envelope(&self) -> Envelope {
        Envelope {
            schema: self.schema,
            id: self.id.clone(),
            source: self.source.to_string(),
            subject: self.subject.as_deref().map(str::to_string),
            event_type: self.event_type.to_string(),
            time: self.time,
            data_version: self.data_version.as_deref().map(str::to_string),
            traceparent: self.traceparent.clone(),
            data: Value::Null,
        }
    }
}

/// Reads one line of JSON Lines (an object, or an array of objects as Event Grid batches them). `None`: not
/// a plain, valid record; use the lenient path.
pub fn parse_line(line: &str) -> Option<Vec<FastRecord<'_>>> {
    if is_object_line(line) {
        return parse_object(line).map(|r| vec![r]);
    }
    let text = line.trim_start_matches(is_json_ws);
    if text.starts_with('[') {
        return split_array(text)?.into_iter().map(parse_object).collect();
    }
    None
}

/// Whether `text` may hold something the serde path refuses but the fast path would not see: serde_json
/// checks a lone surrogate and nesting past its recursion limit only in the values it decodes, not in those
/// it skips (the fields a record does not read, and `data` taken as its text). Both checks are conservative
/// (a false alarm costs only the slower path) and together cost ~3% of replay's time.
///
/// One difference is left, knowingly: a number past `f64`'s range (`1e400`) in a skipped value, which the
/// serde path refuses and the fast path takes. Finding exponents in a line costs ~8% of replay's time (JSON
/// text is full of `e`, and hex ids of digits before one), for input no Azure service sends.
fn needs_the_serde_path(text: &str) -> bool {
    has_surrogate_escape(text) || may_nest_too_deep(text)
}

/// A `\uD800`–`\uDFFF` escape (half of a surrogate pair, or one alone). An escaped backslash before a `u`
/// also counts.
fn has_surrogate_escape(text: &str) -> bool {
    let b = text.as_bytes();
    memchr::memmem::find_iter(b, b"\\u").any(|i| {
        matches!(b.get(i + 2), Some(b'd' | b'D'))
            && matches!(b.get(i + 3), Some(b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F'))
    })
}

/// As many `[` and `{` (inside strings too) as serde_json's recursion limit of 128 levels.
fn may_nest_too_deep(text: &str) -> bool {
    memchr::memchr2_iter(b'[', b'{', text.as_bytes())
        .nth(RECURSION_LIMIT - 1)
        .is_some()
}

/// serde_json's recursion limit: it refuses the 128th level of nesting.
const RECURSION_LIMIT: usize = 128;

/// Whether the line's JSON starts as an object (rather than an array, or not JSON at all).
pub fn is_object_line(line: &str) -> bool {
    line.trim_start_matches(is_json_ws).starts_with('{')
}

fn is_json_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// The elements of a top-level array of objects, as text. `None` for anything but `[{...}, {...}]` (an empty
/// array included), so the array's own syntax is checked here and each element's by serde_json.
fn split_array(text: &str) -> Option<Vec<&str>> {
    let bytes = text.as_bytes();
    let skip_ws = |mut i: usize| {
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    };
    let mut out = Vec::new();
    let mut i = skip_ws(1);
    loop {
        if bytes.get(i) != Some(&b'{') {
            return None;
        }
        let start = i;
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        loop {
            let b = *bytes.get(i)?;
            i += 1;
            if in_string {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push(&text[start..i]);
        i = skip_ws(i);
        match bytes.get(i) {
            Some(b',') => i = skip_ws(i + 1),
            Some(b']') => {
                return (skip_ws(i + 1) == bytes.len()).then_some(out);
            }
            _ => return None,
        }
    }
}

/// A top-level field: absent, `null`, or a scalar (objects and arrays fail the fast path).
#[derive(Debug, Default)]
enum Field<'a> {
    #[default]
    Absent,
    Null,
    Str(Cow<'a, str>),
    Num(Number),
    Bool(bool),
}

impl<'a> Field<'a> {
    fn present(&self) -> bool {
        !matches!(self, Field::Absent)
    }

    /// `lenient::as_text`: a string, or a number or boolean as text.
    fn text(&self) -> Option<String> {
        match self {
            Field::Str(s) => Some(s.to_string()),
            Field::Num(n) => Some(n.to_string()),
            Field::Bool(b) => Some(b.to_string()),
            Field::Absent | Field::Null => None,
        }
    }

    /// [`Field::text`], borrowing from the line when it can.
    fn text_cow(&self) -> Option<Cow<'a, str>> {
        match self {
            Field::Str(s) => Some(s.clone()),
            other => other.text().map(Cow::Owned),
        }
    }

    /// The envelope's `required_string`: a non-blank string, or a number as text.
    fn required(&self) -> Option<String> {
        self.required_cow().map(Cow::into_owned)
    }

    /// [`Field::required`], borrowing from the line when it can.
    fn required_cow(&self) -> Option<Cow<'a, str>> {
        match self {
            Field::Str(s) if !s.trim().is_empty() => Some(s.clone()),
            Field::Num(n) => Some(Cow::Owned(n.to_string())),
            _ => None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Field<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Field<'a>, E> {
                Ok(Field::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field<'a>, E> {
                Ok(Field::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Field<'a>, E> {
                Ok(Field::Str(Cow::Owned(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Field<'a>, E> {
                Ok(Field::Num(v.into()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Field<'a>, E> {
                Ok(Field::Num(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Field<'a>, E> {
                Number::from_f64(v)
                    .map(Field::Num)
                    .ok_or_else(|| E::custom("not a finite number"))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Field<'a>, E> {
                Ok(Field::Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Field<'a>, E> {
                Ok(Field::Null)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A field whose content does not matter here, only whether it is there (and whether it is `null`).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum Seen {
    #[default]
    Absent,
    Null,
    Value,
}

impl<'de> Deserialize<'de> for Seen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<IgnoredAny>::deserialize(d)? {
            None => Seen::Null,
            Some(_) => Seen::Value,
        })
    }
}

/// `data` as the first pass saw it: absent, `null`, or the text of its value.
#[derive(Debug, Default, Clone, Copy)]
enum Data<'a> {
    #[default]
    Absent,
    Null,
    Value(&'a RawValue),
}

impl<'de: 'a, 'a> Deserialize<'de> for Data<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<&'a RawValue>::deserialize(d)? {
            None => Data::Null,
            Some(raw) => Data::Value(raw),
        })
    }
}

impl<'a> Data<'a> {
    fn seen(&self) -> Seen {
        match self {
            Data::Absent => Seen::Absent,
            Data::Null => Seen::Null,
            Data::Value(_) => Seen::Value,
        }
    }

    fn text(&self) -> Option<&'a str> {
        match self {
            Data::Value(raw) => Some(raw.get()),
            Data::Absent | Data::Null => None,
        }
    }
}

/// First pass: the top-level fields that decide what a record is, with `data` as text.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Head<'a> {
    #[serde(borrow)]
    specversion: Field<'a>,
    #[serde(rename = "eventType", borrow)]
    event_type: Field<'a>,
    #[serde(rename = "type", borrow)]
    kind: Field<'a>,
    #[serde(borrow)]
    source: Field<'a>,
    #[serde(borrow)]
    id: Field<'a>,
    #[serde(borrow)]
    topic: Field<'a>,
    #[serde(borrow)]
    time: Field<'a>,
    #[serde(rename = "eventTime", borrow)]
    event_time: Field<'a>,
    #[serde(borrow)]
    subject: Field<'a>,
    #[serde(rename = "dataVersion", borrow)]
    data_version: Field<'a>,
    #[serde(borrow)]
    traceparent: Field<'a>,
    #[serde(borrow)]
    data: Data<'a>,
    #[serde(rename = "schemaId")]
    schema_id: Seen,
    // Drift report fields, read here so that a report takes one pass. Those the envelope shares (`id`,
    // `source`, `time`) are fields above; the rest carry DriftReport's own types and adapters.
    #[serde(borrow)]
    model: Field<'a>,
    #[serde(borrow)]
    metric: Field<'a>,
    #[serde(deserialize_with = "opt_string_or_number")]
    version: Option<String>,
    #[serde(deserialize_with = "present_opt_f64")]
    value: Option<Option<f64>>,
    #[serde(deserialize_with = "opt_f64")]
    threshold: Option<f64>,
    window: Option<DriftWindow>,
    signal: Option<String>,
    // Spellings and encodings the lenient path handles and this one leaves to it.
    #[serde(rename = "specVersion")]
    alt_specversion: Seen,
    #[serde(rename = "EventType")]
    alt_event_type: Seen,
    #[serde(rename = "Id")]
    alt_id: Seen,
    #[serde(rename = "Topic")]
    alt_topic: Seen,
    #[serde(rename = "EventTime")]
    alt_event_time: Seen,
    #[serde(rename = "Subject")]
    alt_subject: Seen,
    #[serde(rename = "DataVersion")]
    alt_data_version: Seen,
    #[serde(rename = "Data")]
    alt_data: Seen,
    data_base64: Seen,
}

impl Head<'_> {
    /// Whether any field is one the fast path leaves to the lenient path: another spelling, base64 data, or a
    /// top-level `null` (the lenient path treats `null` as absent in some places and as present in others).
    fn unusual(&self) -> bool {
        let fields = [
            &self.specversion,
            &self.event_type,
            &self.kind,
            &self.source,
            &self.id,
            &self.topic,
            &self.time,
            &self.event_time,
            &self.subject,
            &self.data_version,
            &self.traceparent,
            &self.model,
            &self.metric,
        ];
        let seen = [self.data.seen(), self.schema_id];
        let alternatives = [
            self.alt_specversion,
            self.alt_event_type,
            self.alt_id,
            self.alt_topic,
            self.alt_event_time,
            self.alt_subject,
            self.alt_data_version,
            self.alt_data,
            self.data_base64,
        ];
        fields.iter().any(|f| matches!(f, Field::Null))
            || seen.contains(&Seen::Null)
            || alternatives.iter().any(|s| *s != Seen::Absent)
    }
}

/// Second pass: only `data` (its text, from the first pass), as `T`. Only an object: serde's derived structs
/// also take an array of their fields in order, which the serde path refuses as `data`.
fn data_as<T: DeserializeOwned>(data: Data<'_>) -> Option<T> {
    let text = data.text()?;
    if !text.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str::<T>(text).ok()
}

/// `RunStatusChanged` read in one go: the fields of [`aml::RunCompleted`] (same names, aliases and adapters)
/// and `runStatus`. Without `#[serde(flatten)]`, a repeated key is an error here as it is for `RunCompleted`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunStatusData {
    #[serde(alias = "ExperimentId", default)]
    experiment_id: Option<String>,
    #[serde(alias = "ExperimentName", default)]
    experiment_name: Option<String>,
    #[serde(alias = "RunId")]
    run_id: String,
    #[serde(alias = "RunType", default)]
    run_type: Option<String>,
    #[serde(alias = "RunTags", default, deserialize_with = "string_map")]
    run_tags: std::collections::BTreeMap<String, String>,
    #[serde(alias = "RunProperties", default, deserialize_with = "string_map")]
    run_properties: std::collections::BTreeMap<String, String>,
    #[serde(alias = "RunStatus")]
    run_status: String,
}

/// [`parse_line`] for a line that holds one object ([`is_object_line`]): its record without a list around it.
/// `None` for anything the lenient path must read.
pub fn parse_object(text: &str) -> Option<FastRecord<'_>> {
    if needs_the_serde_path(text) {
        return None;
    }
    let head: Head<'_> = serde_json::from_str(text).ok()?;
    if head.unusual() {
        return None;
    }
    // Inbound::from_value's classification (no top-level nulls, so "has" is "present").
    let cloud_without_version = head.kind.present() && head.source.present() && head.id.present();
    if head.specversion.present() || head.event_type.present() || cloud_without_version {
        return event(&head);
    }
    if head.schema_id == Seen::Value {
        return serde_json::from_str::<CommonAlert>(text)
            .ok()
            .map(FastRecord::Alert);
    }
    if head.model.present() && head.metric.present() {
        return drift_report(head).map(FastRecord::Drift);
    }
    None
}

/// A drift report from the first pass's fields, as `DriftReport`'s derive reads them: strings must be
/// strings, `value` must be there.
fn drift_report(head: Head<'_>) -> Option<DriftReport> {
    let opt_string = |f: &Field<'_>| match f {
        Field::Absent => Some(None),
        Field::Str(s) => Some(Some(s.to_string())),
        _ => None,
    };
    let string = |f: &Field<'_>| match f {
        Field::Str(s) => Some(s.to_string()),
        _ => None,
    };
    Some(DriftReport {
        id: opt_string(&head.id)?,
        model: string(&head.model)?,
        version: head.version,
        metric: string(&head.metric)?,
        value: head.value?,
        threshold: head.threshold,
        window: head.window,
        source: opt_string(&head.source)?,
        signal: head.signal,
        time: opt_string(&head.time)?,
    })
}

/// `opt_f64` that also tells a missing field (`None`) from one that is there.
fn present_opt_f64<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Option<f64>>, D::Error> {
    opt_f64(de).map(Some)
}

/// Envelope::from_value and Envelope::payload over the first pass's fields.
fn event<'a>(head: &Head<'a>) -> Option<FastRecord<'a>> {
    let cloud = head.specversion.present()
        || (!head.event_type.present() && head.kind.present() && head.source.present());
    let (schema, kind, source, time, time_field) = if cloud {
        (
            Schema::CloudEvents,
            &head.kind,
            &head.source,
            &head.time,
            "time",
        )
    } else {
        (
            Schema::EventGrid,
            &head.event_type,
            &head.topic,
            &head.event_time,
            "eventTime",
        )
    };
    let event_type = kind.required_cow()?;
    let id = head.id.required()?;
    let source = source.text_cow().unwrap_or_default();
    if cloud && source.is_empty() {
        return None;
    }
    let time = match time {
        Field::Absent => None,
        Field::Str(s) => Some(parse_time(s, time_field).ok()?),
        _ => return None,
    };
    let payload = match &*event_type {
        aml::MODEL_REGISTERED => EventPayload::ModelRegistered(data_as(head.data)?),
        aml::MODEL_DEPLOYED => EventPayload::ModelDeployed(data_as(head.data)?),
        aml::RUN_COMPLETED => EventPayload::RunCompleted(data_as(head.data)?),
        aml::RUN_STATUS_CHANGED => {
            let d: RunStatusData = data_as(head.data)?;
            EventPayload::RunStatusChanged(aml::RunStatusChanged {
                run: aml::RunCompleted {
                    experiment_id: d.experiment_id,
                    experiment_name: d.experiment_name,
                    run_id: d.run_id,
                    run_type: d.run_type,
                    run_tags: d.run_tags,
                    run_properties: d.run_properties,
                },
                run_status: d.run_status,
            })
        }
        aml::DATASET_DRIFT_DETECTED => EventPayload::DatasetDriftDetected(data_as(head.data)?),
        eventgrid::SUBSCRIPTION_VALIDATION => {
            EventPayload::SubscriptionValidation(data_as(head.data)?)
        }
        eventgrid::SUBSCRIPTION_DELETED => EventPayload::SubscriptionDeleted,
        relay::APPROVAL_DECIDED => EventPayload::ApprovalDecided(data_as(head.data)?),
        relay::DEPLOYMENT_COMPLETED => EventPayload::DeploymentCompleted(data_as(head.data)?),
        // Unknown types never look at `data` (a string there is decoded when it is JSON, kept when not).
        _ => EventPayload::Unknown,
    };
    Some(FastRecord::Event(
        FastEnvelope {
            schema,
            id,
            source,
            subject: head.subject.text_cow(),
            event_type,
            time,
            data_version: head.data_version.text_cow(),
            traceparent: super::traceparent(head.traceparent.text()),
        },
        payload,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_taken_as_its_text_past_strings_and_nesting_that_look_like_it() {
        let data = |text: &str| {
            let head: Head<'_> = serde_json::from_str(text).unwrap();
            (head.data.seen(), head.data.text().map(str::to_string))
        };
        let text = r#" { "a" : "}\"data\":{" , "b":[{"data":1},"]"], "c": -1.5e3, "data" : {"x":"]\\"} , "d":null } "#;
        assert_eq!(data(text), (Seen::Value, Some(r#"{"x":"]\\"}"#.into())));
        assert_eq!(
            data(r#"{"data":[1,{"y":2}]}"#).1.as_deref(),
            Some(r#"[1,{"y":2}]"#)
        );
        assert_eq!(
            data(r#"{"data":"{\"y\":2}"}"#).1.as_deref(),
            Some(r#""{\"y\":2}""#)
        );
        assert_eq!(data(r#"{"data":true}"#).1.as_deref(), Some("true"));
        assert_eq!(data(r#"{"other":{"data":1}}"#), (Seen::Absent, None));
        assert_eq!(data(r#"{"data":null}"#), (Seen::Null, None));
    }

    #[test]
    fn data_that_is_not_an_object_is_left_to_the_serde_path() {
        let line = |data: &str| {
            format!(
                r#"{{"id":"e-1","eventType":"Microsoft.MachineLearningServices.RunStatusChanged","subject":"experiments/x/runs/r-1","eventTime":"2026-12-01T09:00:00Z","dataVersion":"2","topic":"/subscriptions/s/resourceGroups/g/providers/Microsoft.MachineLearningServices/workspaces/w","data":{data}}}"#
            )
        };
        let object = line(
            r#"{"experimentId":"x","experimentName":"e","runId":"r-1","runType":"azureml.PipelineRun","runTags":{},"runProperties":{},"runStatus":"Failed"}"#,
        );
        assert!(parse_object(&object).is_some(), "the object is read here");
        // The same seven fields in order: a derived struct would take them; the serde path does not.
        let array = line(r#"["x","e","r-1","azureml.PipelineRun",{},{},"Failed"]"#);
        assert!(parse_object(&array).is_none());
    }

    /// A RunStatusChanged record with `extra` as the value of a field nobody reads, at the top level or in
    /// `data`.
    fn with_skipped(extra: &str, in_data: bool) -> String {
        let (data, top) = if in_data {
            (format!(",\"x\":{extra}"), String::new())
        } else {
            (String::new(), format!(",\"skipped\":{extra}"))
        };
        format!(
            r#"{{"id":"e-1","eventType":"Microsoft.MachineLearningServices.RunStatusChanged","subject":"s","eventTime":"2026-12-01T09:00:00Z","dataVersion":"2","topic":"t","data":{{"runId":"r-1","runStatus":"Failed"{data}}}{top}}}"#
        )
    }

    #[test]
    fn what_serde_refuses_in_a_skipped_value_is_left_to_the_serde_path() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let shallow = format!("{}1{}", "[".repeat(20), "]".repeat(20));
        for in_data in [false, true] {
            for value in ["\"\\ud800\"", "\"x\\uDC00\"", &deep] {
                let text = with_skipped(value, in_data);
                assert!(serde_json::from_str::<Value>(&text).is_err(), "{value:.20}");
                assert!(
                    parse_object(&text).is_none(),
                    "{value:.20} in data: {in_data}"
                );
            }
            // A valid pair is decoded alike on both paths; it goes the slow way only because the scan is cheap.
            assert!(parse_object(&with_skipped("\"\\uD83D\\uDE00\"", in_data)).is_none());
            for value in [
                "\"caf\\u00e9\"",
                "1e-400",
                "1.5e300",
                "\"9f0e4736\"",
                &shallow,
            ] {
                let text = with_skipped(value, in_data);
                assert!(serde_json::from_str::<Value>(&text).is_ok(), "{value}");
                assert!(
                    parse_object(&text).is_some(),
                    "{value:.20} in data: {in_data}"
                );
            }
            // The one difference left (see needs_the_serde_path): a number past f64's range.
            let text = with_skipped("1e400", in_data);
            assert!(serde_json::from_str::<Value>(&text).is_err());
            assert!(parse_object(&text).is_some());
        }
    }

    #[test]
    fn arrays_are_split_into_their_objects_or_declined() {
        assert_eq!(
            split_array("[ {\"a\":\"]}\"} ,{\"b\":[1]} ]\n"),
            Some(vec!["{\"a\":\"]}\"}", "{\"b\":[1]}"])
        );
        assert_eq!(split_array("[]"), None);
        assert_eq!(split_array("[{\"a\":1},]"), None);
        assert_eq!(split_array("[{\"a\":1}] x"), None);
        assert_eq!(split_array("[1]"), None);
    }
}
