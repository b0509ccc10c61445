//! Arbitrary bytes as an inbound delivery: the envelope parser, the lenient decoders and the signal
//! normaliser must return errors, never panic (`cargo +nightly fuzz run envelope`).

#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

use mlops_relay::domain::Signal;
use mlops_relay::events::{Envelope, Inbound, fast, lenient, parse_time};
use mlops_relay::replay::Ordered;

fuzz_target!(|data: &[u8]| {
    let received_at = DateTime::<Utc>::UNIX_EPOCH;

    // The webhook path: bytes → delivery → records → signals.
    if let Ok(records) = Inbound::parse_delivery_bytes(data) {
        for inbound in records.into_iter().flatten() {
            let _ = Signal::from_inbound(inbound, received_at);
        }
    }

    // The same through a `Value`, one parser at a time.
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        let _ = lenient::as_f64(&value);
        let _ = lenient::as_text(&value);
        let _ = lenient::decode_nested(value.clone());
        if let Ok(envelope) = Envelope::from_value(value.clone()) {
            let _ = envelope.payload();
        }
        if let Ok(inbound) = Inbound::from_value(value.clone()) {
            let _ = Signal::from_inbound(inbound, received_at);
        }
        // The replay path (records → signals in the reorder buffer).
        let mut ordered = Ordered::new(2);
        let _ = ordered.push_record(value);
        while ordered.pop(true).is_some() {}
    }

    // As text: the Functions host delivers JSON inside JSON strings, which decode_nested peels.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_time(text, "time");
        let peeled = lenient::decode_nested(Value::String(text.to_owned()));
        if let Ok(records) = Inbound::parse_delivery(peeled) {
            for inbound in records.into_iter().flatten() {
                let _ = Signal::from_inbound(inbound, received_at);
            }
        }
    }

    // The replay fast path: whenever it reads a line, it reads the signals the lenient path reads.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(records) = fast::parse_line(text) {
            let fast: Vec<_> = records
                .into_iter()
                .map(|r| Signal::from_fast(r, received_at).map_err(|e| e.to_string()))
                .collect();
            let value: Value = serde_json::from_str(text).expect("the fast path read invalid JSON");
            let lenient: Vec<_> = Inbound::parse_delivery(value)
                .expect("the fast path read a non-delivery")
                .into_iter()
                .map(|r| {
                    r.map_err(|e| e.to_string())
                        .and_then(|i| Signal::from_inbound(i, received_at).map_err(|e| e.to_string()))
                })
                .collect();
            assert_eq!(fast, lenient);
        }
    }

    // The serde adapters used for fields whose JSON type varies.
    let _ = lenient::string_or_number(&mut serde_json::Deserializer::from_slice(data));
    let _ = lenient::opt_string_or_number(&mut serde_json::Deserializer::from_slice(data));
    let _ = lenient::opt_f64(&mut serde_json::Deserializer::from_slice(data));
    let _ = lenient::string_map(&mut serde_json::Deserializer::from_slice(data));
});
