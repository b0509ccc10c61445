//! Azure Machine Learning event payloads (`data` of `Microsoft.MachineLearningServices.*` events).
//!
//! Field names follow the Event Grid spec ([event schema](https://learn.microsoft.com/azure/event-grid/event-schema-machine-learning)).
//! The documentation samples use PascalCase for ModelRegistered, ModelDeployed and DatasetDriftDetected;
//! live deliveries use camelCase and send `modelVersion` as a string. Every field accepts both casings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::lenient::{opt_f64, opt_string_or_number, string_map, string_or_number};

/// Event type of [`ModelRegistered`].
pub const MODEL_REGISTERED: &str = "Microsoft.MachineLearningServices.ModelRegistered";
/// Event type of [`ModelDeployed`].
pub const MODEL_DEPLOYED: &str = "Microsoft.MachineLearningServices.ModelDeployed";
/// Event type of [`RunCompleted`].
pub const RUN_COMPLETED: &str = "Microsoft.MachineLearningServices.RunCompleted";
/// Event type of [`RunStatusChanged`].
pub const RUN_STATUS_CHANGED: &str = "Microsoft.MachineLearningServices.RunStatusChanged";
/// Event type of [`DatasetDriftDetected`].
pub const DATASET_DRIFT_DETECTED: &str = "Microsoft.MachineLearningServices.DatasetDriftDetected";

/// Run tag that Azure ML model monitoring (v2) sets on a monitor run whose thresholds were breached
/// (reference §3.4). Its value names the signal, e.g. `fraud_monitor_data_drift has failed due to ...`.
pub const MONITOR_BREACH_TAG: &str = "azureml_modelmonitor_threshold_breached";

/// A model version was registered in a workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelRegistered {
    /// Registered model name.
    #[serde(alias = "ModelName")]
    pub model_name: String,
    /// Version, a number in the docs and a string live.
    #[serde(alias = "ModelVersion", deserialize_with = "string_or_number")]
    pub model_version: String,
    /// Model tags (champion/challenger metrics usually live here).
    #[serde(alias = "ModelTags", default, deserialize_with = "string_map")]
    pub model_tags: BTreeMap<String, String>,
    /// Model properties.
    #[serde(alias = "ModelProperties", default, deserialize_with = "string_map")]
    pub model_properties: BTreeMap<String, String>,
}

/// A (v1) service was deployed with one or more models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeployed {
    /// Deployed service name.
    #[serde(alias = "ServiceName")]
    pub service_name: String,
    /// Compute type, e.g. `ACI` or `AKS`.
    #[serde(alias = "ServiceComputeType", default)]
    pub service_compute_type: Option<String>,
    /// Comma-separated `name:version` list.
    #[serde(alias = "ModelIds", default)]
    pub model_ids: String,
    /// Service tags.
    #[serde(alias = "ServiceTags", default, deserialize_with = "string_map")]
    pub service_tags: BTreeMap<String, String>,
    /// Service properties.
    #[serde(alias = "ServiceProperties", default, deserialize_with = "string_map")]
    pub service_properties: BTreeMap<String, String>,
}

impl ModelDeployed {
    /// The `name:version` pairs of `modelIds`; entries without a version keep `None`.
    pub fn models(&self) -> Vec<(String, Option<String>)> {
        self.model_ids
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|id| match id.rsplit_once(':') {
                Some((name, version)) => (name.to_string(), Some(version.to_string())),
                None => (id.to_string(), None),
            })
            .collect()
    }
}

/// A run (job) completed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunCompleted {
    /// Experiment id.
    #[serde(alias = "ExperimentId", default)]
    pub experiment_id: Option<String>,
    /// Experiment name.
    #[serde(alias = "ExperimentName", default)]
    pub experiment_name: Option<String>,
    /// Run id (the job name for v2 jobs).
    #[serde(alias = "RunId")]
    pub run_id: String,
    /// Run type, nullable.
    #[serde(alias = "RunType", default)]
    pub run_type: Option<String>,
    /// Run tags.
    #[serde(alias = "RunTags", default, deserialize_with = "string_map")]
    pub run_tags: BTreeMap<String, String>,
    /// Run properties.
    #[serde(alias = "RunProperties", default, deserialize_with = "string_map")]
    pub run_properties: BTreeMap<String, String>,
}

/// A run changed status (documented as raised on failure; compare statuses case-insensitively).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStatusChanged {
    /// The run fields shared with [`RunCompleted`].
    #[serde(flatten)]
    pub run: RunCompleted,
    /// New status, e.g. `failed`, `Running`.
    #[serde(alias = "RunStatus")]
    pub run_status: String,
}

/// Legacy (v1 dataset monitor) data drift; retired 2025-09-01 but still accepted as input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatasetDriftDetected {
    /// Monitor id.
    #[serde(alias = "DataDriftId", default)]
    pub data_drift_id: Option<String>,
    /// Monitor name; the policy maps it to a model.
    #[serde(alias = "DataDriftName")]
    pub data_drift_name: String,
    /// Monitor run id.
    #[serde(alias = "RunId", default)]
    pub run_id: Option<String>,
    /// Baseline dataset id.
    #[serde(alias = "BaseDatasetId", default)]
    pub base_dataset_id: Option<String>,
    /// Target dataset id.
    #[serde(alias = "TargetDatasetId", default)]
    pub target_dataset_id: Option<String>,
    /// Drift magnitude, 0..1.
    #[serde(alias = "DriftCoefficient", deserialize_with = "opt_f64", default)]
    pub drift_coefficient: Option<f64>,
    /// Window start.
    #[serde(
        alias = "StartTime",
        default,
        deserialize_with = "opt_string_or_number"
    )]
    pub start_time: Option<String>,
    /// Window end.
    #[serde(alias = "EndTime", default, deserialize_with = "opt_string_or_number")]
    pub end_time: Option<String>,
}
