//! Parsing what Azure actually sends: every documented sample in `tests/fixtures/azure-docs/` (copied from the shared reference) and the
//! hand-written variants in `tests/fixtures/variants/` (camelCase, versions as strings and numbers,
//! `specVersion`, batches, CloudEvents, double-encoded JSON, drift webhooks, Azure Monitor alerts) become
//! the typed payload and the signal kind they stand for; malformed known events are errors naming the field.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use mlops_relay::domain::{
    AlertCondition, DriftSource, Signal, SignalBody, SignalKind, WorkspaceRef,
};
use mlops_relay::events::{
    Envelope, EventError, EventPayload, Inbound, Schema, aml, eventgrid, lenient, relay,
};
use rstest::rstest;
use serde_json::{Value, json};

const DOCS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/azure-docs/");
const VARIANTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/variants/");

/// Every event delivery among the documentation samples; each is pinned by a test below.
const DOCS_DELIVERIES: &[&str] = &[
    "aml_dataset_drift.cloudevent.json",
    "aml_dataset_drift.eventgrid.json",
    "aml_model_deployed.cloudevent.json",
    "aml_model_deployed.eventgrid.json",
    "aml_model_registered.cloudevent.json",
    "aml_model_registered.eventgrid.json",
    "aml_run_completed.cloudevent.json",
    "aml_run_completed.eventgrid.json",
    "aml_run_status_changed.cloudevent.json",
    "aml_run_status_changed.eventgrid.json",
    "eventgrid_deadletter_event.cloudevent.json",
    "eventgrid_deadletter_event.eventgrid.json",
    "eventgrid_subscription_validation.json",
];

/// `topic`/`source` of every Azure ML docs sample: the placeholders are kept verbatim.
const DOCS_TOPIC: &str = "/subscriptions/{subscription-id}/resourceGroups/{resource-group-name}/providers/Microsoft.MachineLearningServices/workspaces/{workspace-name}";
const DOCS_EVENT_ID: &str = "831e1650-001e-001b-66ab-eeb76e069631";
const DOCS_RUN_ID: &str = "AutoML_ad912b2d-6467-4f32-a616-dbe4af6dd8fc_5";

const MLW_DEV: &str = "/subscriptions/0b1c2d3e-0000-4000-8000-000000000001/resourceGroups/rg-ml-dev/providers/Microsoft.MachineLearningServices/workspaces/mlw-dev";

/// The receive time handed to `Signal::from_inbound`; far from every event time so a fallback shows.
fn received() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, nanos: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap() + TimeDelta::nanoseconds(nanos)
}

/// 2017-06-26T18:41:00.9584103Z, the time of every Azure ML docs sample (7 fractional digits).
fn docs_time() -> DateTime<Utc> {
    utc(2017, 6, 26, 18, 41, 0, 958_410_300)
}

fn docs_workspace() -> Arc<WorkspaceRef> {
    ws(
        "{subscription-id}",
        "{resource-group-name}",
        "{workspace-name}",
    )
}

fn ws(subscription: &str, resource_group: &str, workspace: &str) -> Arc<WorkspaceRef> {
    Arc::new(WorkspaceRef {
        subscription: subscription.into(),
        resource_group: resource_group.into(),
        workspace: workspace.into(),
    })
}

fn mlw_dev() -> Arc<WorkspaceRef> {
    ws(
        "0b1c2d3e-0000-4000-8000-000000000001",
        "rg-ml-dev",
        "mlw-dev",
    )
}

fn mlw_prod() -> Arc<WorkspaceRef> {
    ws(
        "0b1c2d3e-0000-4000-8000-000000000003",
        "rg-ml-prod",
        "mlw-prod",
    )
}

fn read(dir: &str, name: &str) -> Vec<u8> {
    let path = format!("{dir}{name}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Every record of a delivery file, each of which must parse.
fn records(dir: &str, name: &str) -> Vec<Inbound> {
    Inbound::parse_delivery_bytes(&read(dir, name))
        .unwrap_or_else(|e| panic!("{name}: delivery rejected: {e}"))
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("{name}[{i}]: {e}")))
        .collect()
}

/// The single record of a one-event delivery file.
fn one(dir: &str, name: &str) -> Inbound {
    let mut all = records(dir, name);
    assert_eq!(all.len(), 1, "{name}: expected exactly one record");
    all.remove(0)
}

fn doc(name: &str) -> Inbound {
    one(DOCS_DIR, name)
}

fn variant(name: &str) -> Inbound {
    one(VARIANTS_DIR, name)
}

fn envelope(inbound: &Inbound) -> &Envelope {
    match inbound {
        Inbound::Event(env) => env,
        other => panic!("expected an event envelope, got {other:?}"),
    }
}

fn payload(inbound: &Inbound) -> EventPayload {
    envelope(inbound)
        .payload()
        .unwrap_or_else(|e| panic!("payload: {e}"))
}

fn signal(inbound: Inbound) -> Signal {
    Signal::from_inbound(inbound, received()).unwrap_or_else(|e| panic!("signal: {e}"))
}

fn schema_of(file: &str) -> Schema {
    if file.contains(".cloudevent") {
        Schema::CloudEvents
    } else {
        Schema::EventGrid
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn json_files(dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {dir}: {e}"))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect()
}

/// The first error a single-record delivery runs into, at the envelope, the payload or the signal step.
fn first_error(value: Value) -> String {
    let mut records = match Inbound::parse_delivery(value) {
        Ok(records) => records,
        Err(e) => return e.to_string(),
    };
    assert_eq!(records.len(), 1);
    match records.remove(0) {
        Err(e) => e.to_string(),
        Ok(inbound) => match Signal::from_inbound(inbound, received()) {
            Err(e) => e.to_string(),
            Ok(signal) => panic!("expected an error, got the signal {signal:?}"),
        },
    }
}

// ---------------------------------------------------------------------------------------------------------
// Documented samples
// ---------------------------------------------------------------------------------------------------------

#[test]
fn every_docs_event_delivery_is_pinned_by_a_test() {
    let on_disk: BTreeSet<String> = json_files(DOCS_DIR)
        .into_iter()
        .filter(|n| n.starts_with("aml_") || n.starts_with("eventgrid_"))
        // The handshake *response* is what we send back, not a delivery (checked below).
        .filter(|n| !n.ends_with(".response.json"))
        .collect();
    let pinned: BTreeSet<String> = DOCS_DELIVERIES.iter().map(|s| s.to_string()).collect();
    assert_eq!(on_disk, pinned);
}

#[rstest]
fn docs_azure_ml_samples_share_envelope_identity(
    #[values(
        "aml_dataset_drift",
        "aml_model_deployed",
        "aml_model_registered",
        "aml_run_completed",
        "aml_run_status_changed"
    )]
    event: &str,
    #[values("eventgrid", "cloudevent")] schema: &str,
) {
    let file = format!("{event}.{schema}.json");
    let inbound = doc(&file);
    let env = envelope(&inbound);
    assert_eq!(env.schema, schema_of(&file));
    assert_eq!(env.id, DOCS_EVENT_ID);
    assert_eq!(env.source, DOCS_TOPIC);
    assert_eq!(env.time.map(|t| t.with_timezone(&Utc)), Some(docs_time()));
    // Event Grid samples carry `"dataVersion": ""`; the CloudEvents samples have no such attribute.
    let data_version = match env.schema {
        Schema::EventGrid => Some(""),
        Schema::CloudEvents => None,
    };
    assert_eq!(env.data_version.as_deref(), data_version);
    assert_eq!(env.traceparent, None);

    let sig = signal(inbound);
    assert_eq!(sig.event_id, DOCS_EVENT_ID);
    assert_eq!(sig.time, docs_time());
    assert_eq!(sig.workspace, Some(docs_workspace()));
}

#[rstest]
fn docs_model_registered(#[values("eventgrid", "cloudevent")] schema: &str) {
    let inbound = doc(&format!("aml_model_registered.{schema}.json"));
    let env = envelope(&inbound);
    assert_eq!(env.event_type, aml::MODEL_REGISTERED);
    assert_eq!(
        env.subject.as_deref(),
        Some("models/sklearn_regression_model:20")
    );
    let EventPayload::ModelRegistered(d) = payload(&inbound) else {
        panic!("expected ModelRegistered")
    };
    assert_eq!(d.model_name, "sklearn_regression_model");
    // The docs send `"ModelVersion": 20`, a number.
    assert_eq!(d.model_version, "20");
    assert_eq!(
        d.model_tags,
        map(&[("area", "diabetes"), ("type", "regression")])
    );
    assert_eq!(d.model_properties, map(&[("type", "test")]));

    let sig = signal(inbound);
    assert_eq!(sig.kind(), SignalKind::ModelRegistered);
    assert_eq!(sig.model(), Some("sklearn_regression_model"));
    assert_eq!(sig.version(), Some("20"));
    assert_eq!(sig.event_type, aml::MODEL_REGISTERED);
    // Registrations are keyed by fact (workspace, model, version), not by event id.
    assert_eq!(
        sig.key,
        "model_registered|{workspace-name}|sklearn_regression_model:20"
    );
}

#[rstest]
fn docs_model_deployed(#[values("eventgrid", "cloudevent")] schema: &str) {
    let inbound = doc(&format!("aml_model_deployed.{schema}.json"));
    assert_eq!(envelope(&inbound).event_type, aml::MODEL_DEPLOYED);
    assert_eq!(
        envelope(&inbound).subject.as_deref(),
        Some("endpoints/my-sklearn-service")
    );
    let EventPayload::ModelDeployed(d) = payload(&inbound) else {
        panic!("expected ModelDeployed")
    };
    assert_eq!(d.service_name, "my-sklearn-service");
    assert_eq!(d.service_compute_type.as_deref(), Some("ACI"));
    let expected_models = vec![
        (
            "sklearn_regression_model".to_string(),
            Some("1".to_string()),
        ),
        (
            "sklearn_regression_model".to_string(),
            Some("2".to_string()),
        ),
    ];
    assert_eq!(d.models(), expected_models);
    assert_eq!(
        d.service_tags,
        map(&[("area", "diabetes"), ("type", "regression")])
    );
    assert_eq!(d.service_properties, map(&[("type", "test")]));

    let sig = signal(inbound);
    assert_eq!(sig.kind(), SignalKind::ModelDeployed);
    assert_eq!(sig.model(), Some("sklearn_regression_model"));
    assert_eq!(sig.version(), Some("1"));
    let SignalBody::ModelDeployed {
        models,
        environment,
        service,
        smoke_test_passed,
        detail,
    } = &sig.body
    else {
        panic!("expected a ModelDeployed body, got {:?}", sig.body)
    };
    assert_eq!(models, &expected_models);
    assert_eq!(environment, &None);
    assert_eq!(service.as_deref(), Some("my-sklearn-service"));
    assert_eq!(smoke_test_passed, &None);
    assert_eq!(detail, &None);
}

#[rstest]
fn docs_run_completed(#[values("eventgrid", "cloudevent")] schema: &str) {
    let inbound = doc(&format!("aml_run_completed.{schema}.json"));
    assert_eq!(envelope(&inbound).event_type, aml::RUN_COMPLETED);
    let EventPayload::RunCompleted(d) = payload(&inbound) else {
        panic!("expected RunCompleted")
    };
    assert_eq!(d.run_id, DOCS_RUN_ID);
    assert_eq!(
        d.experiment_id.as_deref(),
        Some("0fa9dfaa-cba3-4fa7-b590-23e48548f5c1")
    );
    assert_eq!(
        d.experiment_name.as_deref(),
        Some("automl-local-regression")
    );
    assert_eq!(d.run_type, None, "`runType: null`");
    assert!(d.run_tags.is_empty());
    assert_eq!(d.run_properties.len(), 13);
    assert_eq!(d.run_properties["model_name"], "AutoMLad912b2d65");
    assert_eq!(d.run_properties["training_percent"], "100");
    // A property whose value is JSON text stays text: only the map itself is decoded.
    assert!(
        d.run_properties["pipeline_spec"].starts_with("{\"objects\": [{\"class_name\""),
        "{}",
        d.run_properties["pipeline_spec"]
    );

    let sig = signal(inbound);
    assert_eq!(sig.kind(), SignalKind::RunCompleted);
    let SignalBody::RunCompleted { run } = &sig.body else {
        panic!("expected a RunCompleted body, got {:?}", sig.body)
    };
    assert_eq!(run.run_id, DOCS_RUN_ID);
    assert_eq!(run.experiment.as_deref(), Some("automl-local-regression"));
    // The model is taken from run *tags*; AutoML's `model_name` *property* is not a registered model.
    assert_eq!(run.model, None);
    assert_eq!(sig.model(), None);
    assert_eq!(
        sig.key,
        format!(
            "{}|{}|{DOCS_EVENT_ID}",
            aml::RUN_COMPLETED,
            DOCS_TOPIC.to_ascii_lowercase()
        )
    );
}

#[rstest]
fn docs_run_status_changed_failed_is_run_failed(#[values("eventgrid", "cloudevent")] schema: &str) {
    let inbound = doc(&format!("aml_run_status_changed.{schema}.json"));
    assert_eq!(envelope(&inbound).event_type, aml::RUN_STATUS_CHANGED);
    let EventPayload::RunStatusChanged(d) = payload(&inbound) else {
        panic!("expected RunStatusChanged")
    };
    assert_eq!(d.run_status, "failed");
    assert_eq!(d.run.run_id, DOCS_RUN_ID);
    assert_eq!(
        d.run.experiment_name.as_deref(),
        Some("automl-local-regression")
    );
    assert_eq!(d.run.run_properties["run_algorithm"], "LassoLars");
    assert!(!d.run.run_tags.contains_key(aml::MONITOR_BREACH_TAG));

    let sig = signal(inbound);
    assert_eq!(sig.kind(), SignalKind::RunFailed);
    let SignalBody::RunFailed { run, status } = &sig.body else {
        panic!("expected a RunFailed body, got {:?}", sig.body)
    };
    assert_eq!(status, "failed");
    assert_eq!(run.run_id, DOCS_RUN_ID);
}

#[rstest]
fn docs_dataset_drift_is_legacy_monitor_drift(#[values("eventgrid", "cloudevent")] schema: &str) {
    let inbound = doc(&format!("aml_dataset_drift.{schema}.json"));
    let env = envelope(&inbound);
    assert_eq!(env.event_type, aml::DATASET_DRIFT_DETECTED);
    assert_eq!(env.subject.as_deref(), Some("datadrifts/{}/runs/{}"));
    let EventPayload::DatasetDriftDetected(d) = payload(&inbound) else {
        panic!("expected DatasetDriftDetected")
    };
    assert_eq!(d.data_drift_name, "myDriftMonitor");
    assert_eq!(
        d.data_drift_id.as_deref(),
        Some("01d29aa4-e6a4-470a-9ef3-66660d21f8ef")
    );
    assert_eq!(
        d.run_id.as_deref(),
        Some("01d29aa4-e6a4-470a-9ef3-66660d21f8ef_1571590300380")
    );
    assert_eq!(
        d.base_dataset_id.as_deref(),
        Some("3c56d136-0f64-4657-a0e8-5162089a88a3")
    );
    assert_eq!(
        d.target_dataset_id.as_deref(),
        Some("d7e74d2e-c972-4266-b5fb-6c9c182d2a74")
    );
    assert_eq!(d.drift_coefficient, Some(0.835_034_906_847_920_8));
    assert_eq!(d.start_time.as_deref(), Some("2019-07-04T00:00:00+00:00"));
    assert_eq!(d.end_time.as_deref(), Some("2019-07-05T00:00:00+00:00"));

    let sig = signal(inbound);
    assert_eq!(sig.kind(), SignalKind::Drift);
    let SignalBody::Drift(drift) = &sig.body else {
        panic!("expected a Drift body, got {:?}", sig.body)
    };
    assert_eq!(drift.source, DriftSource::DatasetMonitor);
    assert_eq!(drift.monitor.as_deref(), Some("myDriftMonitor"));
    assert_eq!(drift.model, None, "the policy maps the monitor to a model");
    assert_eq!(drift.metric.as_deref(), Some("drift_coefficient"));
    assert_eq!(drift.value, Some(0.835_034_906_847_920_8));
    assert_eq!(
        drift.window,
        Some((
            "2019-07-04T00:00:00+00:00".to_string(),
            "2019-07-05T00:00:00+00:00".to_string()
        ))
    );
}

#[test]
fn docs_subscription_validation_yields_the_code_to_echo() {
    let inbound = doc("eventgrid_subscription_validation.json");
    let env = envelope(&inbound);
    assert_eq!(env.schema, Schema::EventGrid);
    assert_eq!(env.event_type, eventgrid::SUBSCRIPTION_VALIDATION);
    assert_eq!(env.id, "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66");
    assert_eq!(
        env.source,
        "/subscriptions/xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
    );
    assert_eq!(env.data_version.as_deref(), Some("1"));
    assert_eq!(
        env.time.map(|t| t.with_timezone(&Utc)),
        Some(utc(2018, 1, 25, 22, 12, 19, 455_681_100))
    );
    let EventPayload::SubscriptionValidation(v) = payload(&inbound) else {
        panic!("expected SubscriptionValidation")
    };
    assert_eq!(v.validation_code, "512d38b6-c7b8-40c8-89fe-f46f9e9622b6");
    assert_eq!(
        v.validation_url.as_deref(),
        Some(
            "https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/estest/validate?id=512d38b6-c7b8-40c8-89fe-f46f9e9622b6&t=2018-04-26T20:30:54.4538837Z&apiVersion=2018-05-01-preview&token=1A1A1A1A"
        )
    );

    // The documented response echoes exactly this code.
    let response: Value = serde_json::from_slice(&read(
        DOCS_DIR,
        "eventgrid_subscription_validation.response.json",
    ))
    .unwrap();
    assert_eq!(response, json!({ "validationResponse": v.validation_code }));

    let sig = signal(inbound);
    assert_eq!(sig.kind(), SignalKind::Ignored);
    assert_eq!(
        sig.workspace, None,
        "a bare subscription is not a workspace"
    );
    let SignalBody::Ignored { reason } = &sig.body else {
        panic!("expected an Ignored body, got {:?}", sig.body)
    };
    assert!(reason.contains("validation"), "{reason}");
}

#[test]
fn docs_dead_letter_event_grid_record_is_an_unknown_type_not_an_error() {
    let inbound = doc("eventgrid_deadletter_event.eventgrid.json");
    let env = envelope(&inbound);
    assert_eq!(env.schema, Schema::EventGrid);
    assert_eq!(env.event_type, "Microsoft.Storage.BlobCreated");
    assert_eq!(env.id, "93902694-901e-008f-6f95-7153a806873c");
    assert_eq!(
        env.subject.as_deref(),
        Some("/blobServices/default/containers/deadletter/blobs/myBlobFile.txt")
    );
    assert_eq!(
        env.time.map(|t| t.with_timezone(&Utc)),
        Some(utc(2020, 8, 13, 17, 18, 13, 164_726_200))
    );
    assert_eq!(env.data["api"], "PutBlob", "data is kept for the record");
    assert_eq!(payload(&inbound), EventPayload::Unknown);

    let sig = signal(inbound);
    assert_eq!(sig.kind(), SignalKind::Ignored);
    assert_eq!(sig.workspace, None, "a storage account is not a workspace");
    let SignalBody::Ignored { reason } = &sig.body else {
        panic!("expected an Ignored body, got {:?}", sig.body)
    };
    assert!(reason.contains("Microsoft.Storage.BlobCreated"), "{reason}");
}

#[test]
fn docs_dead_letter_cloudevent_record_is_an_unknown_type_not_an_error() {
    let inbound = doc("eventgrid_deadletter_event.cloudevent.json");
    let env = envelope(&inbound);
    assert_eq!(env.schema, Schema::CloudEvents);
    assert_eq!(env.event_type, "fooEventType");
    assert_eq!(env.id, "caee971c-3ca0-4254-8f99-1395b394588e");
    assert_eq!(env.source, "mysource");
    assert_eq!(env.data, json!({"prop1": "value1", "prop2": 5}));
    assert_eq!(payload(&inbound), EventPayload::Unknown);
    let sig = signal(inbound);
    assert_eq!(sig.kind(), SignalKind::Ignored);
    assert_eq!(sig.time, received(), "the record has no `time`");
}

/// The same docs event with every `data` key's first letter flipped (PascalCase ↔ camelCase).
fn flip_data_key_case(mut event: Value) -> Value {
    let data = event["data"].as_object().unwrap().clone();
    let flipped = data
        .into_iter()
        .map(|(k, v)| {
            let mut chars = k.chars();
            let first = chars.next().unwrap();
            let first = if first.is_uppercase() {
                first.to_ascii_lowercase()
            } else {
                first.to_ascii_uppercase()
            };
            (format!("{first}{}", chars.as_str()), v)
        })
        .collect();
    event["data"] = Value::Object(flipped);
    event
}

#[rstest]
#[case::model_registered_pascal_to_camel("aml_model_registered.eventgrid.json", "modelName")]
#[case::model_deployed_pascal_to_camel("aml_model_deployed.eventgrid.json", "serviceName")]
#[case::dataset_drift_pascal_to_camel("aml_dataset_drift.cloudevent.json", "dataDriftName")]
#[case::run_completed_camel_to_pascal("aml_run_completed.eventgrid.json", "RunId")]
#[case::run_status_changed_camel_to_pascal("aml_run_status_changed.cloudevent.json", "RunStatus")]
fn docs_payload_is_the_same_in_either_data_casing(#[case] file: &str, #[case] flipped_key: &str) {
    let original: Value = serde_json::from_slice(&read(DOCS_DIR, file)).unwrap();
    let original = original[0].clone();
    let flipped = flip_data_key_case(original.clone());
    assert!(flipped["data"].get(flipped_key).is_some(), "{flipped}");

    let as_sent = Envelope::from_value(original).unwrap().payload().unwrap();
    let recased = Envelope::from_value(flipped).unwrap().payload().unwrap();
    assert_eq!(recased, as_sent);
    assert_ne!(as_sent, EventPayload::Unknown);
}

// ---------------------------------------------------------------------------------------------------------
// Hand-written variants
// ---------------------------------------------------------------------------------------------------------

/// Every variant file, with how many records it holds and the signal kinds they become, in order.
const VARIANTS: &[(&str, &[SignalKind])] = &[
    (
        "batch.mixed.cloudevents.json",
        &[
            SignalKind::ModelDeployed,
            SignalKind::Drift,
            SignalKind::Ignored,
            SignalKind::Approval,
        ],
    ),
    (
        "batch.mixed.eventgrid.json",
        &[
            SignalKind::ModelRegistered,
            SignalKind::RunCompleted,
            SignalKind::RunFailed,
            SignalKind::Ignored,
            SignalKind::Ignored,
        ],
    ),
    (
        "delivery.double_encoded.eventgrid.json",
        &[SignalKind::ModelRegistered],
    ),
    ("drift_webhook.json", &[SignalKind::Drift]),
    ("drift_webhook.strings.json", &[SignalKind::Drift]),
    (
        "model_registered.camel.eventgrid.json",
        &[SignalKind::ModelRegistered],
    ),
    (
        "model_registered.data_base64.cloudevent.json",
        &[SignalKind::ModelRegistered],
    ),
    (
        "model_registered.double_encoded_data.eventgrid.json",
        &[SignalKind::ModelRegistered],
    ),
    (
        "model_registered.number_version.cloudevent.json",
        &[SignalKind::ModelRegistered],
    ),
    (
        "model_registered.specVersion.cloudevent.json",
        &[SignalKind::ModelRegistered],
    ),
    ("monitor_alert.fired.json", &[SignalKind::InfraAlert]),
    ("monitor_alert.resolved.json", &[SignalKind::InfraAlert]),
    (
        "run_status_changed.failed.eventgrid.json",
        &[SignalKind::RunFailed],
    ),
    (
        "run_status_changed.monitor_breach.eventgrid.json",
        &[SignalKind::Drift],
    ),
    (
        "run_status_changed.monitor_breach.pascal.cloudevent.json",
        &[SignalKind::Drift],
    ),
    (
        "run_status_changed.running.eventgrid.json",
        &[SignalKind::RunStatusChanged],
    ),
    ("unknown_type.eventgrid.json", &[SignalKind::Ignored]),
];

#[test]
fn every_variant_file_parses_into_the_expected_signal_kinds() {
    let listed: BTreeSet<String> = VARIANTS.iter().map(|(f, _)| f.to_string()).collect();
    assert_eq!(
        json_files(VARIANTS_DIR),
        listed,
        "variant files and table differ"
    );
    for (file, kinds) in VARIANTS {
        let got: Vec<SignalKind> = records(VARIANTS_DIR, file)
            .into_iter()
            .map(|r| signal(r).kind())
            .collect();
        assert_eq!(&got, kinds, "{file}");
    }
}

#[rstest]
#[case::camel_string_version(
    "model_registered.camel.eventgrid.json",
    "sklearn_regression_model",
    "3"
)]
#[case::camel_number_version("model_registered.number_version.cloudevent.json", "fraud", "3")]
#[case::spec_version_capital_v("model_registered.specVersion.cloudevent.json", "fraud", "4")]
#[case::data_base64("model_registered.data_base64.cloudevent.json", "fraud", "5")]
#[case::double_encoded_data("model_registered.double_encoded_data.eventgrid.json", "fraud", "6")]
#[case::double_encoded_delivery("delivery.double_encoded.eventgrid.json", "fraud", "7")]
fn model_registered_variants_give_name_and_version_as_text(
    #[case] file: &str,
    #[case] model: &str,
    #[case] version: &str,
) {
    let inbound = variant(file);
    let env = envelope(&inbound);
    assert_eq!(env.schema, schema_of(file));
    assert_eq!(env.event_type, aml::MODEL_REGISTERED);
    assert_eq!(
        env.subject.as_deref(),
        Some(format!("models/{model}:{version}").as_str())
    );
    let EventPayload::ModelRegistered(d) = payload(&inbound) else {
        panic!("expected ModelRegistered")
    };
    assert_eq!(d.model_name, model);
    assert_eq!(d.model_version, version);

    let sig = signal(inbound);
    assert_eq!(sig.kind(), SignalKind::ModelRegistered);
    assert_eq!(sig.model(), Some(model));
    assert_eq!(sig.version(), Some(version));
    let workspace = sig.workspace.clone().expect("workspace from topic/source");
    assert_eq!(
        sig.key,
        format!("model_registered|{}|{model}:{version}", workspace.workspace)
    );
}

#[test]
fn sdk_captured_camel_case_registration_keeps_workspace_and_data_version() {
    let inbound = variant("model_registered.camel.eventgrid.json");
    let env = envelope(&inbound);
    assert_eq!(env.data_version.as_deref(), Some("2"));
    let EventPayload::ModelRegistered(d) = payload(&inbound) else {
        panic!("expected ModelRegistered")
    };
    assert_eq!(
        d.model_tags,
        map(&[("area", "diabetes"), ("type", "regression")])
    );
    assert_eq!(d.model_properties, map(&[("area", "test")]));

    let sig = signal(inbound);
    assert_eq!(
        sig.workspace,
        Some(ws(
            "a5fe3bc5-98f0-4c84-affc-a589f54d9b23",
            "jenns",
            "jenns-canary"
        ))
    );
    // `+00:00` offset and 7 fractional digits.
    assert_eq!(sig.time, utc(2019, 10, 17, 22, 23, 57, 535_005_400));
    assert_eq!(
        sig.key,
        "model_registered|jenns-canary|sklearn_regression_model:3"
    );
}

#[test]
fn version_as_string_and_as_number_is_the_same_registration() {
    let event = |version: Value| {
        json!({
            "topic": MLW_DEV,
            "eventType": aml::MODEL_REGISTERED,
            "id": format!("id-{version}"),
            "eventTime": "2026-03-02T09:00:00Z",
            "data": { "modelName": "fraud", "modelVersion": version },
        })
    };
    let as_number = Inbound::from_value(event(json!(3))).unwrap();
    let as_string = Inbound::from_value(event(json!("3"))).unwrap();
    assert_eq!(payload(&as_number), payload(&as_string));
    let (a, b) = (signal(as_number), signal(as_string));
    assert_ne!(a.event_id, b.event_id);
    // Same fact under two event ids: one deduplication key.
    assert_eq!(a.key, b.key);
    assert_eq!(a.key, "model_registered|mlw-dev|fraud:3");
}

#[test]
fn a_traceparent_that_is_not_one_is_dropped_on_both_paths() {
    let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for (value, kept) in [
        (good.to_string(), true),
        ("x".repeat(40_000), false),
        (format!("{good}\n"), false),
        (
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".into(),
            false,
        ),
        (
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01".into(),
            false,
        ),
    ] {
        let event = json!({
            "specversion": "1.0", "type": aml::MODEL_REGISTERED, "source": MLW_DEV, "id": "t-1",
            "traceparent": value, "data": { "modelName": "fraud", "modelVersion": "3" },
        });
        let lenient = signal(Inbound::from_value(event.clone()).unwrap()).traceparent;
        let text = event.to_string();
        let fast = mlops_relay::events::fast::parse_object(&text)
            .map(|r| Signal::from_fast(r, received()).unwrap().traceparent);
        assert_eq!(lenient.is_some(), kept, "{value:.60}");
        if let Some(fast) = fast {
            assert_eq!(fast, lenient, "{value:.60}");
        }
    }
}

#[test]
fn cloudevent_single_object_keeps_traceparent_and_normalises_tag_values() {
    let inbound = variant("model_registered.number_version.cloudevent.json");
    let env = envelope(&inbound);
    assert_eq!(env.id, "5f0e5a36-3c7e-4f55-9d8e-0d9a2c1c7a01");
    assert_eq!(env.source, MLW_DEV);
    assert_eq!(env.data_version, None);
    let EventPayload::ModelRegistered(d) = payload(&inbound) else {
        panic!("expected ModelRegistered")
    };
    // Numbers and booleans become text, `null` is dropped, nested objects are kept as JSON text.
    assert_eq!(
        d.model_tags,
        map(&[
            ("approved", "false"),
            ("auc", "0.91"),
            ("stage", "candidate")
        ])
    );
    assert_eq!(
        d.model_properties,
        map(&[
            ("flavors", r#"{"sklearn":"1.5.0"}"#),
            ("mlflow.runId", "silly_lamp_7k2")
        ])
    );

    let sig = signal(inbound);
    assert_eq!(
        sig.traceparent.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(sig.workspace, Some(mlw_dev()));
    assert_eq!(sig.time, utc(2026, 3, 2, 9, 15, 4, 123_456_700));
}

#[test]
fn spec_version_with_capital_v_is_a_cloudevent() {
    let inbound = variant("model_registered.specVersion.cloudevent.json");
    assert_eq!(envelope(&inbound).schema, Schema::CloudEvents);
    assert_eq!(
        signal(inbound).time,
        utc(2026, 3, 2, 10, 0, 0, 0),
        "`time` is read as the CloudEvents attribute"
    );
}

#[test]
fn data_base64_is_decoded_into_data() {
    let inbound = variant("model_registered.data_base64.cloudevent.json");
    assert_eq!(
        envelope(&inbound).data,
        json!({"modelName": "fraud", "modelVersion": "5", "modelTags": {"stage": "candidate"}})
    );
    let EventPayload::ModelRegistered(d) = payload(&inbound) else {
        panic!("expected ModelRegistered")
    };
    assert_eq!(d.model_tags, map(&[("stage", "candidate")]));
    assert!(d.model_properties.is_empty());
}

#[test]
fn double_encoded_data_and_tags_are_peeled() {
    let raw: Value = serde_json::from_slice(&read(
        VARIANTS_DIR,
        "model_registered.double_encoded_data.eventgrid.json",
    ))
    .unwrap();
    assert!(raw[0]["data"].is_string(), "the fixture really is encoded");

    let inbound = variant("model_registered.double_encoded_data.eventgrid.json");
    assert!(envelope(&inbound).data.is_object());
    let EventPayload::ModelRegistered(d) = payload(&inbound) else {
        panic!("expected ModelRegistered")
    };
    assert_eq!(
        d.model_tags,
        map(&[("auc", "0.93"), ("stage", "candidate")])
    );
    assert_eq!(signal(inbound).time, utc(2026, 3, 2, 12, 0, 0, 500_000_000));
}

#[test]
fn double_encoded_delivery_is_peeled_down_to_the_array() {
    let body = read(VARIANTS_DIR, "delivery.double_encoded.eventgrid.json");
    let raw: Value = serde_json::from_slice(&body).unwrap();
    assert!(raw.is_string(), "the fixture is a JSON string");
    assert!(
        lenient::decode_nested(raw.clone()).is_array(),
        "two layers of JSON text around the array"
    );
    let sig = signal(variant("delivery.double_encoded.eventgrid.json"));
    assert_eq!(sig.event_id, "a1b2c3d4-0000-4000-8000-000000000007");
    assert_eq!(sig.workspace, Some(mlw_dev()));
}

#[test]
fn event_grid_batch_with_mixed_types_keeps_order_and_types() {
    let all = records(VARIANTS_DIR, "batch.mixed.eventgrid.json");
    let ids: Vec<&str> = all.iter().map(|r| envelope(r).id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "batch-eg-1",
            "batch-eg-2",
            "batch-eg-3",
            "batch-eg-4",
            "batch-eg-5"
        ]
    );
    assert!(all.iter().all(|r| envelope(r).schema == Schema::EventGrid));

    let payloads: Vec<EventPayload> = all.iter().map(payload).collect();
    assert!(matches!(
        &payloads[0],
        EventPayload::ModelRegistered(d) if d.model_name == "fraud" && d.model_version == "8"
            && d.model_tags == map(&[("auc", "0.94")])
    ));
    assert!(matches!(&payloads[1], EventPayload::RunCompleted(d) if d.run_id == "calm_fig_r2d2"));
    assert!(matches!(
        &payloads[2],
        EventPayload::RunStatusChanged(d) if d.run.run_id == "calm_fig_r2d3" && d.run_status == "NotResponding"
    ));
    assert_eq!(payloads[3], EventPayload::Unknown);
    assert_eq!(payloads[4], EventPayload::SubscriptionDeleted);

    let signals: Vec<Signal> = all.into_iter().map(signal).collect();
    let SignalBody::RunCompleted { run } = &signals[1].body else {
        panic!("expected a RunCompleted body, got {:?}", signals[1].body)
    };
    assert_eq!(
        run.model.as_deref(),
        Some("fraud"),
        "from the `model` run tag"
    );
    assert_eq!(run.experiment.as_deref(), Some("fraud-train"));
    let SignalBody::RunFailed { status, .. } = &signals[2].body else {
        panic!("expected a RunFailed body, got {:?}", signals[2].body)
    };
    assert_eq!(status, "NotResponding");
    assert_eq!(signals[3].workspace, None);
    let SignalBody::Ignored { reason } = &signals[4].body else {
        panic!("expected an Ignored body, got {:?}", signals[4].body)
    };
    assert!(reason.contains("deleted"), "{reason}");
    assert!(
        signals
            .iter()
            .filter(|s| s
                .event_type
                .starts_with("Microsoft.MachineLearningServices."))
            .all(|s| s.workspace == Some(mlw_dev()))
    );
}

#[test]
fn cloudevents_batch_with_mixed_types_keeps_order_and_types() {
    let all = records(VARIANTS_DIR, "batch.mixed.cloudevents.json");
    assert_eq!(all.len(), 4);
    assert!(
        all.iter()
            .all(|r| envelope(r).schema == Schema::CloudEvents)
    );
    let types: Vec<&str> = all
        .iter()
        .map(|r| envelope(r).event_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            aml::MODEL_DEPLOYED,
            aml::DATASET_DRIFT_DETECTED,
            "Microsoft.MachineLearningServices.ModelMonitorAlert",
            "MlopsRelay.ApprovalDecided",
        ]
    );
    assert_eq!(payload(&all[2]), EventPayload::Unknown);
    let EventPayload::ModelDeployed(deployed) = payload(&all[0]) else {
        panic!("expected ModelDeployed")
    };
    assert_eq!(deployed.service_compute_type.as_deref(), Some("AKS"));
    let EventPayload::ApprovalDecided(approval) = payload(&all[3]) else {
        panic!("expected ApprovalDecided")
    };
    assert_eq!(approval.version, "8", "a number on the wire");

    let signals: Vec<Signal> = all.into_iter().map(signal).collect();
    let SignalBody::ModelDeployed {
        models, service, ..
    } = &signals[0].body
    else {
        panic!("expected a ModelDeployed body, got {:?}", signals[0].body)
    };
    assert_eq!(
        models,
        &vec![
            ("fraud".to_string(), Some("8".to_string())),
            ("fraud-preprocess".to_string(), None)
        ]
    );
    assert_eq!(service.as_deref(), Some("fraud-svc"));
    assert_eq!(signals[0].workspace, Some(mlw_prod()));

    let SignalBody::Drift(drift) = &signals[1].body else {
        panic!("expected a Drift body, got {:?}", signals[1].body)
    };
    assert_eq!(drift.source, DriftSource::DatasetMonitor);
    assert_eq!(drift.monitor.as_deref(), Some("fraud_monitor"));
    assert_eq!(
        drift.value,
        Some(0.61),
        "`driftCoefficient` sent as a string"
    );

    let SignalBody::Approval {
        model,
        version,
        environment,
        approver,
        approve,
        comment,
    } = &signals[3].body
    else {
        panic!("expected an Approval body, got {:?}", signals[3].body)
    };
    assert_eq!(
        (model.as_str(), version.as_str(), environment.as_str()),
        ("fraud", "8", "staging")
    );
    assert_eq!(approver, "Lead@X.io");
    assert!(*approve, "`Approved` counts as approve");
    assert_eq!(comment.as_deref(), Some("champion beaten on auc"));
    assert_eq!(signals[3].key, "approval|fraud:8|staging|lead@x.io|approve");
    assert_eq!(signals[3].workspace, None);
}

#[test]
fn unknown_event_type_without_data_is_recognised_and_ignored() {
    let inbound = variant("unknown_type.eventgrid.json");
    let env = envelope(&inbound);
    assert_eq!(
        env.event_type,
        "Microsoft.MachineLearningServices.ComputeScaled"
    );
    assert_eq!(env.data, Value::Null);
    assert_eq!(env.payload(), Ok(EventPayload::Unknown));

    let sig = signal(inbound);
    assert_eq!(sig.kind(), SignalKind::Ignored);
    assert_eq!(sig.workspace, Some(mlw_dev()));
    assert_eq!(sig.model(), None);
    let SignalBody::Ignored { reason } = &sig.body else {
        panic!("expected an Ignored body, got {:?}", sig.body)
    };
    assert!(
        reason.contains("Microsoft.MachineLearningServices.ComputeScaled"),
        "{reason}"
    );
}

#[rstest]
#[case::event_grid_camel_case(
    "run_status_changed.monitor_breach.eventgrid.json",
    "credit_card_fraud_monitor_data_drift",
    None,
    "Failed"
)]
#[case::cloudevents_pascal_case(
    "run_status_changed.monitor_breach.pascal.cloudevent.json",
    "fraud_monitor_prediction_drift",
    Some("fraud"),
    "failed"
)]
fn monitor_v2_threshold_breach_is_model_monitor_drift(
    #[case] file: &str,
    #[case] signal_name: &str,
    #[case] model: Option<&str>,
    #[case] status: &str,
) {
    let inbound = variant(file);
    assert_eq!(envelope(&inbound).schema, schema_of(file));
    let EventPayload::RunStatusChanged(d) = payload(&inbound) else {
        panic!("expected RunStatusChanged")
    };
    assert_eq!(d.run_status, status);
    let breach = &d.run.run_tags[aml::MONITOR_BREACH_TAG];
    assert!(breach.starts_with(signal_name), "{breach}");
    assert!(breach.contains("has failed due to one or more features violating metric thresholds"));

    let sig = signal(inbound);
    assert_eq!(sig.kind(), SignalKind::Drift, "a breach, not a run failure");
    assert_eq!(sig.workspace, Some(mlw_prod()));
    let SignalBody::Drift(drift) = &sig.body else {
        panic!("expected a Drift body, got {:?}", sig.body)
    };
    assert_eq!(drift.source, DriftSource::ModelMonitor);
    assert_eq!(drift.monitor.as_deref(), Some(signal_name));
    assert_eq!(drift.model.as_deref(), model);
    assert_eq!(drift.value, None, "the monitor only says `breached`");
    assert_eq!(drift.threshold, None);
    assert_eq!(drift.metric, None);
}

#[test]
fn every_status_change_of_a_breached_monitor_run_is_one_breach() {
    let event = |id: &str, status: &str| {
        let tags = json!({ aml::MONITOR_BREACH_TAG: "fraud_monitor_data_drift has failed due to one or more features violating metric thresholds" });
        signal(
            Inbound::from_value(json!({
                "topic": MLW_DEV, "eventType": aml::RUN_STATUS_CHANGED, "id": id,
                "data": { "runId": "fraud_monitor-2026-03-02", "runStatus": status, "runTags": tags },
            }))
            .unwrap(),
        )
    };
    let (finalizing, failed) = (event("e-1", "Finalizing"), event("e-2", "Failed"));
    assert_eq!(finalizing.kind(), SignalKind::Drift);
    assert_eq!(finalizing.key, failed.key, "one fact, one decision");
    assert!(
        failed.key.ends_with("|breach:fraud_monitor-2026-03-02"),
        "{}",
        failed.key
    );
}

#[test]
fn monitor_breach_tag_inside_double_encoded_run_tags_is_still_drift() {
    let tags = json!({ aml::MONITOR_BREACH_TAG: "fraud_monitor_data_quality has failed due to one or more features violating metric thresholds", "model": 7 });
    let data =
        json!({ "RunId": "fraud_monitor-1", "RunStatus": "Failed", "RunTags": tags.to_string() });
    let inbound = Inbound::from_value(json!({
        "topic": MLW_DEV,
        "eventType": aml::RUN_STATUS_CHANGED,
        "id": "enc-1",
        "data": data.to_string(),
    }))
    .unwrap();
    let sig = signal(inbound);
    let SignalBody::Drift(drift) = &sig.body else {
        panic!("expected a Drift body, got {:?}", sig.body)
    };
    assert_eq!(drift.source, DriftSource::ModelMonitor);
    assert_eq!(drift.monitor.as_deref(), Some("fraud_monitor_data_quality"));
    assert_eq!(
        drift.model.as_deref(),
        Some("7"),
        "a numeric tag value becomes text"
    );
}

#[test]
fn run_status_changed_failed_is_run_failed_with_model_from_tags() {
    let inbound = variant("run_status_changed.failed.eventgrid.json");
    let sig = signal(inbound);
    assert_eq!(sig.kind(), SignalKind::RunFailed);
    assert_eq!(sig.model(), Some("fraud"));
    assert_eq!(sig.workspace, Some(mlw_dev()));
    assert_eq!(sig.time, utc(2026, 3, 2, 14, 5, 0, 0));
    let SignalBody::RunFailed { run, status } = &sig.body else {
        panic!("expected a RunFailed body, got {:?}", sig.body)
    };
    assert_eq!(status, "Failed");
    assert_eq!(run.run_id, "bright_pear_q8x1");
    assert_eq!(run.experiment.as_deref(), Some("fraud-train"));
    assert_eq!(
        run.tags,
        map(&[("mlops-relay.model", "fraud"), ("retrain_reason", "drift")])
    );
}

#[test]
fn run_status_changed_running_is_a_plain_status_change() {
    let sig = signal(variant("run_status_changed.running.eventgrid.json"));
    assert_eq!(sig.kind(), SignalKind::RunStatusChanged);
    assert_eq!(sig.model(), Some("fraud"), "from the `model_name` run tag");
    let SignalBody::RunStatusChanged { run, status } = &sig.body else {
        panic!("expected a RunStatusChanged body, got {:?}", sig.body)
    };
    assert_eq!(status, "Running");
    assert_eq!(run.run_id, "bright_pear_q8x2");
}

#[rstest]
#[case::lower("failed", SignalKind::RunFailed)]
#[case::upper("FAILED", SignalKind::RunFailed)]
#[case::not_responding("NotResponding", SignalKind::RunFailed)]
#[case::completed("Completed", SignalKind::RunStatusChanged)]
#[case::canceled("Canceled", SignalKind::RunStatusChanged)]
#[case::queued("Queued", SignalKind::RunStatusChanged)]
fn run_status_is_compared_case_insensitively(#[case] status: &str, #[case] kind: SignalKind) {
    let inbound = Inbound::from_value(json!({
        "topic": MLW_DEV,
        "eventType": aml::RUN_STATUS_CHANGED,
        "id": "rs-1",
        "data": { "runId": "job-1", "runStatus": status },
    }))
    .unwrap();
    let sig = signal(inbound);
    assert_eq!(sig.kind(), kind);
    assert_eq!(
        sig.time,
        received(),
        "no eventTime: the receive time stands in"
    );
}

#[test]
fn drift_webhook_documented_example() {
    let inbound = variant("drift_webhook.json");
    let Inbound::Drift(report) = &inbound else {
        panic!("expected a drift report, got {inbound:?}")
    };
    assert_eq!(report.id.as_deref(), Some("evt-42"));
    assert_eq!(report.model, "fraud");
    assert_eq!(report.version.as_deref(), Some("7"));
    assert_eq!(report.metric, "psi");
    assert_eq!(report.value, Some(0.42));
    assert_eq!(report.threshold, Some(0.2));

    let sig = signal(inbound);
    assert_eq!(sig.kind(), SignalKind::Drift);
    assert_eq!(sig.event_type, "drift_webhook");
    assert_eq!(sig.event_id, "evt-42");
    assert_eq!(sig.key, "drift_webhook|evidently|evt-42");
    assert_eq!(sig.time, utc(2026, 11, 2, 0, 5, 0, 0));
    assert_eq!(sig.workspace, None);
    let SignalBody::Drift(drift) = &sig.body else {
        panic!("expected a Drift body, got {:?}", sig.body)
    };
    assert_eq!(drift.source, DriftSource::Webhook);
    assert_eq!(drift.model.as_deref(), Some("fraud"));
    assert_eq!(drift.version.as_deref(), Some("7"));
    assert_eq!(drift.monitor.as_deref(), Some("fraud_feature_drift"));
    assert_eq!(drift.metric.as_deref(), Some("psi"));
    assert_eq!(drift.value, Some(0.42));
    assert_eq!(drift.threshold, Some(0.2));
    assert_eq!(
        drift.window,
        Some((
            "2026-11-01T00:00:00Z".to_string(),
            "2026-11-02T00:00:00Z".to_string()
        ))
    );
}

#[test]
fn drift_webhook_numbers_as_strings_and_no_id() {
    let sig = signal(variant("drift_webhook.strings.json"));
    let SignalBody::Drift(drift) = &sig.body else {
        panic!("expected a Drift body, got {:?}", sig.body)
    };
    assert_eq!(drift.value, Some(0.35), "`\" 0.35 \"` with spaces");
    assert_eq!(drift.threshold, Some(0.3));
    assert_eq!(drift.version.as_deref(), Some("7"), "a number on the wire");
    assert_eq!(drift.metric.as_deref(), Some("jensen_shannon"));
    assert_eq!(drift.monitor, None);
    assert_eq!(drift.window, None, "a window without an end is no window");
    assert_eq!(
        sig.time,
        received(),
        "no `time`: the receive time stands in"
    );
    // No sender id: a content-derived id, stable across redeliveries.
    assert_eq!(sig.event_id.len(), 32);
    assert!(sig.event_id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(sig.key, format!("drift_webhook|nannyml|{}", sig.event_id));
    let again = signal(variant("drift_webhook.strings.json"));
    assert_eq!(again.event_id, sig.event_id);
}

#[test]
fn drift_webhook_double_encoded_body_is_peeled() {
    let body = json!({"model": "fraud", "metric": "psi", "value": "0.5"}).to_string();
    let twice = serde_json::to_string(&body).unwrap();
    let mut all = Inbound::parse_delivery_bytes(twice.as_bytes()).unwrap();
    let Ok(Inbound::Drift(report)) = all.remove(0) else {
        panic!("expected a drift report")
    };
    assert_eq!(report.value, Some(0.5));
}

#[test]
fn azure_monitor_fired_alert_is_infra_alert() {
    let inbound = variant("monitor_alert.fired.json");
    let Inbound::Alert(alert) = &inbound else {
        panic!("expected an alert, got {inbound:?}")
    };
    assert_eq!(alert.schema_id, "azureMonitorCommonAlertSchema");
    assert_eq!(alert.data.essentials.signal_type.as_deref(), Some("Metric"));
    assert_eq!(
        alert.data.alert_context["condition"]["allOf"][0]["metricName"],
        "RequestLatency_P95"
    );

    let sig = signal(inbound);
    assert_eq!(sig.kind(), SignalKind::InfraAlert);
    assert_eq!(sig.event_type, "azure_monitor_alert");
    assert_eq!(sig.time, utc(2026, 3, 7, 2, 14, 31, 721_639_800));
    assert_eq!(
        sig.workspace,
        Some(mlw_prod()),
        "from the lowercase target resource id"
    );
    let SignalBody::InfraAlert {
        alert_id,
        rule,
        severity,
        condition,
        targets,
        description,
    } = &sig.body
    else {
        panic!("expected an InfraAlert body, got {:?}", sig.body)
    };
    assert!(alert_id.ends_with("/alerts/b9569717-bc32-442f-add5-83a997729330"));
    assert_eq!(sig.key, format!("alert|{alert_id}|fired"));
    assert_eq!(rule, "fraud-endpoint-latency-p95");
    assert_eq!(severity, "Sev1");
    assert_eq!(*condition, AlertCondition::Fired);
    assert_eq!(targets.len(), 1);
    assert!(targets[0].ends_with("/onlineendpoints/fraud"));
    assert_eq!(
        description.as_deref(),
        Some("p95 request latency above 500 ms for 5 minutes")
    );
}

#[test]
fn azure_monitor_resolved_alert_is_the_same_alert_at_its_resolve_time() {
    let fired = signal(variant("monitor_alert.fired.json"));
    let resolved = signal(variant("monitor_alert.resolved.json"));
    assert_eq!(resolved.kind(), SignalKind::InfraAlert);
    assert_eq!(resolved.event_id, fired.event_id);
    assert_ne!(resolved.key, fired.key);
    assert!(resolved.key.ends_with("|resolved"), "{}", resolved.key);
    assert_eq!(resolved.time, utc(2026, 3, 7, 2, 44, 31, 123_456_700));
    assert!(matches!(
        resolved.body,
        SignalBody::InfraAlert {
            condition: AlertCondition::Resolved,
            ..
        }
    ));
}

// ---------------------------------------------------------------------------------------------------------
// Malformed input: errors name the field
// ---------------------------------------------------------------------------------------------------------

fn eg(event_type: &str, data: Value) -> Value {
    json!([{
        "topic": MLW_DEV,
        "subject": "x",
        "eventType": event_type,
        "eventTime": "2026-03-02T09:00:00Z",
        "id": "bad-1",
        "data": data,
        "dataVersion": "2",
        "metadataVersion": "1",
    }])
}

fn ce(event_type: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "type": event_type,
        "source": MLW_DEV,
        "id": "bad-2",
        "time": "2026-03-02T09:00:00Z",
        "data": data,
    })
}

fn alert(essentials: Value) -> Value {
    json!({ "schemaId": "azureMonitorCommonAlertSchema", "data": { "essentials": essentials } })
}

#[rstest]
#[case::registered_without_model_name(
    eg(aml::MODEL_REGISTERED, json!({"modelVersion": "3"})),
    "missing field `modelName`"
)]
#[case::registered_pascal_without_model_name(
    ce(aml::MODEL_REGISTERED, json!({"ModelVersion": 20, "ModelTags": {}})),
    "missing field `modelName`"
)]
#[case::registered_without_model_version(
    eg(aml::MODEL_REGISTERED, json!({"modelName": "fraud"})),
    "missing field `modelVersion`"
)]
#[case::registered_model_name_not_a_string(
    eg(aml::MODEL_REGISTERED, json!({"modelName": 42, "modelVersion": "3"})),
    "field `data.modelName`"
)]
#[case::registered_version_an_object(
    eg(aml::MODEL_REGISTERED, json!({"modelName": "fraud", "modelVersion": {"major": 3}})),
    "field `data.modelVersion`: expected a string or a number"
)]
#[case::registered_tags_a_list(
    eg(aml::MODEL_REGISTERED, json!({"modelName": "fraud", "modelVersion": "3", "modelTags": ["a"]})),
    "field `data.modelTags`: expected an object of tags"
)]
#[case::registered_data_not_json(
    eg(aml::MODEL_REGISTERED, json!("{\"modelName\": \"fraud\"")),
    "field `data`"
)]
#[case::deployed_without_service_name(
    eg(aml::MODEL_DEPLOYED, json!({"modelIds": "fraud:1"})),
    "missing field `serviceName`"
)]
#[case::run_completed_without_run_id(
    eg(aml::RUN_COMPLETED, json!({"experimentName": "x"})),
    "missing field `runId`"
)]
#[case::run_completed_run_id_a_list(
    eg(aml::RUN_COMPLETED, json!({"runId": ["job-1"]})),
    "field `data.runId`"
)]
#[case::run_status_changed_without_status(
    eg(aml::RUN_STATUS_CHANGED, json!({"runId": "job-1"})),
    "missing field `runStatus`"
)]
#[case::run_status_changed_without_run_id(
    ce(aml::RUN_STATUS_CHANGED, json!({"runStatus": "Failed"})),
    "missing field `runId`"
)]
#[case::dataset_drift_without_name(
    eg(aml::DATASET_DRIFT_DETECTED, json!({"driftCoefficient": 0.5})),
    "missing field `dataDriftName`"
)]
#[case::dataset_drift_coefficient_not_a_number(
    eg(aml::DATASET_DRIFT_DETECTED, json!({"dataDriftName": "m", "driftCoefficient": "high"})),
    "field `data.driftCoefficient`: expected a number"
)]
#[case::validation_without_code(
    eg(eventgrid::SUBSCRIPTION_VALIDATION, json!({"validationUrl": "https://x"})),
    "missing field `validationCode`"
)]
#[case::known_type_without_data(
    eg(aml::MODEL_REGISTERED, Value::Null),
    "missing required field `data`"
)]
#[case::approval_with_unknown_decision(
    ce(relay::APPROVAL_DECIDED, json!({"model": "fraud", "version": 3, "environment": "prod", "approver": "a@x.io", "decision": "maybe"})),
    "field `data.decision`"
)]
#[case::deployment_completed_with_unknown_smoke_test(
    ce(relay::DEPLOYMENT_COMPLETED, json!({"model": "fraud", "version": 3, "environment": "prod", "smokeTest": "flaky"})),
    "field `data.smokeTest`"
)]
#[case::event_grid_without_id(
    json!({"eventType": aml::MODEL_REGISTERED, "topic": MLW_DEV, "data": {}}),
    "missing required field `id`"
)]
#[case::event_grid_blank_id(
    json!({"eventType": aml::MODEL_REGISTERED, "id": "  ", "data": {}}),
    "missing required field `id`"
)]
#[case::event_grid_bad_time(
    json!({"eventType": aml::MODEL_REGISTERED, "id": "1", "eventTime": "yesterday"}),
    "field `eventTime`: `yesterday` is not an RFC 3339 time"
)]
#[case::event_grid_event_type_an_object(
    json!({"eventType": {"name": "x"}, "id": "1"}),
    "field `eventType`: expected a string"
)]
#[case::cloudevent_without_source(
    json!({"specversion": "1.0", "type": aml::MODEL_REGISTERED, "id": "1"}),
    "missing required field `source`"
)]
#[case::cloudevent_without_type(
    json!({"specversion": "1.0", "source": MLW_DEV, "id": "1"}),
    "missing required field `type`"
)]
#[case::cloudevent_bad_time(
    json!({"specversion": "1.0", "type": "x", "source": MLW_DEV, "id": "1", "time": 1_700_000_000}),
    "field `time`: expected a string"
)]
#[case::cloudevent_bad_base64(
    json!({"specversion": "1.0", "type": "x", "source": MLW_DEV, "id": "1", "data_base64": "not base64!"}),
    "field `data_base64`"
)]
#[case::drift_value_not_a_number(
    json!({"model": "fraud", "metric": "psi", "value": "high"}),
    "field `value`: expected a number"
)]
#[case::drift_blank_model(
    json!({"model": " ", "metric": "psi", "value": 0.4}),
    "field `model`: must not be empty"
)]
#[case::drift_bad_time(
    json!({"model": "fraud", "metric": "psi", "value": 0.4, "time": "soon"}),
    "field `time`"
)]
#[case::alert_without_rule(
    alert(json!({"alertId": "a1", "severity": "Sev1", "monitorCondition": "Fired"})),
    "missing field `alertRule`"
)]
#[case::alert_with_unknown_condition(
    alert(json!({"alertId": "a1", "alertRule": "r", "severity": "Sev1", "monitorCondition": "Acknowledged"})),
    "field `data.essentials.monitorCondition`"
)]
#[case::blank_model_name(
    eg(aml::MODEL_REGISTERED, json!({"modelName": " ", "modelVersion": "3"})),
    "field `data.modelName`: must not be empty"
)]
#[case::empty_model_version(
    eg(aml::MODEL_REGISTERED, json!({"modelName": "fraud", "modelVersion": ""})),
    "field `data.modelVersion`: must not be empty"
)]
#[case::empty_run_id(
    eg(aml::RUN_STATUS_CHANGED, json!({"runId": "", "runStatus": "Failed"})),
    "field `data.runId`: must not be empty"
)]
#[case::deployment_with_a_blank_service(
    eg(aml::MODEL_DEPLOYED, json!({"serviceName": "", "modelIds": "fraud:3"})),
    "field `data.serviceName`: must not be empty"
)]
#[case::resolved_alert_bad_resolved_time(
    alert(json!({"alertId": "a1", "alertRule": "r", "severity": "Sev1", "monitorCondition": "Resolved", "firedDateTime": "2026-11-02T01:00:00Z", "resolvedDateTime": "later"})),
    "field `data.essentials.resolvedDateTime`"
)]
fn malformed_known_records_are_errors_naming_the_field(
    #[case] delivery: Value,
    #[case] expected: &str,
) {
    let message = first_error(delivery);
    assert!(
        message.contains(expected),
        "expected the error to contain {expected:?}, got {message:?}"
    );
}

#[rstest]
#[case::run_id_a_number(json!({"runId": 42, "runStatus": "Failed"}), "runId")]
#[case::run_tags_a_number(json!({"runId": "job-1", "runStatus": "Failed", "runTags": 5}), "runTags")]
fn run_status_changed_type_errors_name_the_field(#[case] data: Value, #[case] field: &str) {
    let message = first_error(eg(aml::RUN_STATUS_CHANGED, data));
    assert!(
        message.contains(&format!("data.{field}")),
        "expected the error to name `data.{field}`, got {message:?}"
    );
}

#[test]
fn malformed_event_in_a_batch_does_not_hide_the_others() {
    let batch = json!([
        {"eventType": aml::MODEL_REGISTERED, "id": "b1", "topic": MLW_DEV, "data": {"modelVersion": "1"}},
        {"eventType": aml::MODEL_REGISTERED, "id": "b2", "topic": MLW_DEV, "data": {"modelName": "fraud", "modelVersion": "2"}},
        {"hello": "world"},
        {"eventType": "Contoso.Items.ItemReceived", "id": "b4", "data": {"itemSku": 1}},
    ]);
    let records = Inbound::parse_delivery(batch).unwrap();
    assert_eq!(records.len(), 4);
    // The envelope is fine; the payload names the missing field when it becomes a signal.
    let first = records[0].clone().unwrap();
    let err = Signal::from_inbound(first, received())
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing field `modelName`"), "{err}");
    let second = signal(records[1].clone().unwrap());
    assert_eq!(second.version(), Some("2"));
    assert_eq!(records[2], Err(EventError::Unrecognised));
    let fourth = signal(records[3].clone().unwrap());
    assert_eq!(fourth.kind(), SignalKind::Ignored);
    assert_eq!(fourth.workspace, None, "custom topics may lack `topic`");
}

#[rstest]
#[case::not_json(b"{not json".as_slice(), "not JSON")]
#[case::a_number(b"42".as_slice(), "found a number")]
#[case::null(b"null".as_slice(), "found null")]
fn deliveries_that_are_not_events_are_rejected_whole(#[case] body: &[u8], #[case] expected: &str) {
    let err = Inbound::parse_delivery_bytes(body).unwrap_err().to_string();
    assert!(err.contains(expected), "{err}");
}

#[test]
fn array_elements_that_are_not_objects_are_errors_of_their_own() {
    let records = Inbound::parse_delivery(json!([1, "plain text", ce("x", json!({}))])).unwrap();
    assert_eq!(records[0], Err(EventError::NotAnEvent("a number")));
    assert_eq!(records[1], Err(EventError::NotAnEvent("a string")));
    assert!(matches!(&records[2], Ok(Inbound::Event(env)) if env.event_type == "x"));
}

// ---------------------------------------------------------------------------------------------------------
// The replay fast path (`events::fast`) against the lenient path: whenever the fast path answers, its
// records and signals are the lenient path's; it declines (None) rather than guess.

mod fast_path {
    use super::*;
    use mlops_relay::events::fast::{FastRecord, parse_line};

    const EXAMPLES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/events/");

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
    }

    /// A record read by the lenient path, with its signal or why it has none.
    type Read = (Inbound, Result<Signal, String>);

    /// The lenient reading of `text`: records and, for each, its signal or error text.
    fn lenient(text: &str) -> Result<Vec<Read>, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Inbound::parse_delivery(value)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|r| {
                let inbound = r.map_err(|e| e.to_string())?;
                let signal = Signal::from_inbound(inbound.clone(), at()).map_err(|e| e.to_string());
                Ok((inbound, signal))
            })
            .collect()
    }

    /// Checks that the fast path agrees with the lenient one on `text`; true when it answered.
    fn agrees(text: &str) -> bool {
        let Some(fast) = parse_line(text) else {
            return false;
        };
        let lenient = lenient(text).unwrap_or_else(|e| {
            panic!("fast path accepted what the lenient path rejects ({e}): {text}")
        });
        assert_eq!(fast.len(), lenient.len(), "{text}");
        for (f, (inbound, signal)) in fast.into_iter().zip(lenient) {
            match (&f, &inbound) {
                (FastRecord::Event(env, payload), Inbound::Event(l)) => {
                    assert_eq!(Ok(payload.clone()), l.payload(), "{text}");
                    let mut l = l.clone();
                    l.data = Value::Null;
                    assert_eq!(env.to_envelope(), l, "{text}");
                }
                (FastRecord::Drift(a), Inbound::Drift(b)) => assert_eq!(a, b, "{text}"),
                (FastRecord::Alert(a), Inbound::Alert(b)) => {
                    assert_eq!(a.schema_id, b.schema_id, "{text}");
                    assert_eq!(a.data.essentials, b.data.essentials, "{text}");
                }
                _ => panic!("the two paths classify differently: {text}"),
            }
            let fast_signal = Signal::from_fast(f, at()).map_err(|e| e.to_string());
            assert_eq!(fast_signal, signal, "{text}");
        }
        true
    }

    /// Every record of every fixture and example: whole files as they are, compacted, and line by line.
    fn samples() -> Vec<(String, String)> {
        let mut out = Vec::new();
        for dir in [DOCS_DIR, VARIANTS_DIR, EXAMPLES_DIR] {
            let mut paths: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            paths.sort();
            for path in paths {
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                let text = std::fs::read_to_string(&path).unwrap();
                if name.ends_with(".jsonl") {
                    for (i, line) in text.lines().enumerate() {
                        if !line.trim().is_empty() {
                            out.push((format!("{name}:{}", i + 1), line.to_string()));
                        }
                    }
                } else if name.ends_with(".json") {
                    if let Ok(value) = serde_json::from_str::<Value>(&text) {
                        out.push((format!("{name} (compact)"), value.to_string()));
                    }
                    out.push((name, text));
                }
            }
        }
        out
    }

    #[test]
    fn every_fixture_and_example_reads_the_same_on_both_paths() {
        let samples = samples();
        let answered = samples
            .iter()
            .filter(|(name, text)| {
                let yes = agrees(text);
                if !yes {
                    eprintln!("lenient path: {name}");
                }
                yes
            })
            .count();
        // The plain ones (most of them) take the fast path; the odd casings and encodings do not have to.
        assert!(
            answered * 2 > samples.len(),
            "only {answered} of {} samples took the fast path",
            samples.len()
        );
    }

    #[test]
    fn the_fast_path_takes_the_common_live_shapes() {
        for name in [
            "model_registered.camel.eventgrid.json",
            "model_registered.number_version.cloudevent.json",
            "run_status_changed.failed.eventgrid.json",
            "drift_webhook.json",
            "drift_webhook.strings.json",
            "monitor_alert.fired.json",
            "monitor_alert.resolved.json",
            "batch.mixed.cloudevents.json",
        ] {
            let text = std::fs::read_to_string(format!("{VARIANTS_DIR}{name}")).unwrap();
            assert!(agrees(&text), "{name} should take the fast path");
        }
    }

    #[rstest]
    #[case::double_encoded_data("model_registered.double_encoded_data.eventgrid.json")]
    #[case::double_encoded_delivery("delivery.double_encoded.eventgrid.json")]
    #[case::data_base64("model_registered.data_base64.cloudevent.json")]
    #[case::spec_version_spelling("model_registered.specVersion.cloudevent.json")]
    fn odd_encodings_are_left_to_the_lenient_path(#[case] name: &str) {
        let text = std::fs::read_to_string(format!("{VARIANTS_DIR}{name}")).unwrap();
        assert!(parse_line(&text).is_none(), "{name}");
        assert!(lenient(&text).is_ok(), "{name}");
    }

    /// Variants of one record: each field removed, nulled, re-typed (number ⇄ string), re-cased, repeated;
    /// `data` double-encoded; the whole record double-encoded.
    fn mutations(value: &Value) -> Vec<String> {
        let mut out = vec![value.to_string()];
        let Value::Object(obj) = value else {
            return out;
        };
        let mut variants: Vec<Value> = Vec::new();
        let retype = |v: &Value| -> Vec<Value> {
            match v {
                Value::String(s) => {
                    let mut alts = vec![json!(null), json!(true), json!({})];
                    if let Ok(n) = s.parse::<f64>() {
                        alts.push(json!(n));
                    }
                    alts.push(json!(""));
                    alts.push(json!(format!(" {s} ")));
                    alts
                }
                Value::Number(n) => vec![json!(n.to_string()), json!(null), json!("NaN")],
                _ => vec![json!(null), json!("text"), json!(1)],
            }
        };
        let recase = |k: &str| {
            let mut c = k.chars();
            match c.next() {
                Some(f) if f.is_ascii_lowercase() => {
                    f.to_ascii_uppercase().to_string() + c.as_str()
                }
                Some(f) => f.to_ascii_lowercase().to_string() + c.as_str(),
                None => String::new(),
            }
        };
        for (k, v) in obj {
            let mut removed = obj.clone();
            removed.remove(k);
            variants.push(Value::Object(removed));
            for alt in retype(v) {
                let mut m = obj.clone();
                m.insert(k.clone(), alt);
                variants.push(Value::Object(m));
            }
            let mut m = obj.clone();
            let moved = m.remove(k).unwrap();
            m.insert(recase(k), moved);
            variants.push(Value::Object(m));
            // A repeated key, first with another value: the lenient path keeps the last one.
            out.push(format!(
                "{{{}:{},{}}}",
                json!(k),
                json!("other"),
                &value.to_string()[1..]
            ));
            if let Value::Object(inner) = v {
                for (ik, iv) in inner {
                    for alt in retype(iv) {
                        let mut m = obj.clone();
                        m[k.as_str()][ik.as_str()] = alt;
                        variants.push(Value::Object(m));
                    }
                    let mut m = obj.clone();
                    m[k.as_str()].as_object_mut().unwrap().remove(ik);
                    variants.push(Value::Object(m));
                    let mut m = obj.clone();
                    let moved = m[k.as_str()].as_object_mut().unwrap().remove(ik).unwrap();
                    m[k.as_str()][recase(ik)] = moved;
                    variants.push(Value::Object(m));
                }
                let mut m = obj.clone();
                m.insert(k.clone(), Value::String(v.to_string()));
                variants.push(Value::Object(m));
            }
        }
        out.extend(variants.iter().map(Value::to_string));
        out.push(Value::String(value.to_string()).to_string());
        out
    }

    #[test]
    fn mutated_records_read_the_same_on_both_paths_or_take_the_lenient_one() {
        let mut answered = 0;
        let mut total = 0;
        for (_, text) in samples() {
            let Ok(value) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let records = match value {
                Value::Array(items) => items,
                other => vec![other],
            };
            for record in &records {
                for variant in mutations(record) {
                    total += 1;
                    if agrees(&variant) {
                        answered += 1;
                    }
                }
            }
        }
        eprintln!("{answered} of {total} mutated records took the fast path");
        assert!(answered > 0 && answered < total, "{answered} of {total}");
    }
}
