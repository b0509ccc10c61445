//! Azure ML control-plane requests (reference §4), built from ledger entries. Pure: the client in
//! [`client`] sends them. Every job and deployment is tagged with its provenance — trigger event id,
//! decision id, action id and `traceparent` — so event → decision → message → job → model → deployment can
//! be followed from either end.

pub mod client;

use serde_json::{Map, Value, json};

use crate::policy::ActionParams;
use crate::ports::LedgerEntry;

/// ARM API version used for workspaces, jobs, endpoints and deployments (stable, reference §4).
pub const API_VERSION: &str = "2024-10-01";

/// Default ARM endpoint.
pub const ARM: &str = "https://management.azure.com";

/// Token scope for the control plane.
pub const SCOPE: &str = "https://management.azure.com/.default";

/// Where a workspace lives in ARM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// Subscription id.
    pub subscription: String,
    /// Resource group.
    pub resource_group: String,
    /// Workspace name.
    pub name: String,
}

impl Workspace {
    /// Parses a workspace's ARM resource id, `/subscriptions/{s}/resourceGroups/{g}/providers/
    /// Microsoft.MachineLearningServices/workspaces/{name}` (ARM's segment names are case-insensitive).
    pub fn from_id(id: &str) -> Result<Workspace, String> {
        let parts: Vec<&str> = id.trim().trim_matches('/').split('/').collect();
        match parts.as_slice() {
            [s, sub, g, group, p, ns, w, name]
                if s.eq_ignore_ascii_case("subscriptions")
                    && g.eq_ignore_ascii_case("resourceGroups")
                    && p.eq_ignore_ascii_case("providers")
                    && ns.eq_ignore_ascii_case("Microsoft.MachineLearningServices")
                    && w.eq_ignore_ascii_case("workspaces")
                    && [sub, group, name].iter().all(|v| !v.is_empty()) =>
            {
                Ok(Workspace {
                    subscription: sub.to_string(),
                    resource_group: group.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(format!(
                "`{id}` is not an Azure ML workspace resource id (/subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.MachineLearningServices/workspaces/<name>)"
            )),
        }
    }

    /// `/subscriptions/…/workspaces/{name}`.
    pub fn id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.MachineLearningServices/workspaces/{}",
            self.subscription, self.resource_group, self.name
        )
    }
}

/// A request to ARM: method, path below the ARM endpoint (with `api-version`), and JSON body.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ArmRequest {
    /// `PUT`, `GET` or `POST`.
    pub method: &'static str,
    /// Path and query, e.g. `/subscriptions/…/jobs/{name}?api-version=2024-10-01`.
    pub path: String,
    /// Body, when there is one.
    pub body: Option<Value>,
}

/// The job name for a retrain action: derived from the action id, so a retried submission names the same
/// job instead of starting a second one (Azure ML refuses to PUT a submitted job again; the worker then
/// reads the job it has).
pub fn job_name(action_id: &str) -> String {
    format!("mlops-relay-{action_id}")
}

/// Provenance tags carried by every job and deployment.
pub fn provenance(entry: &LedgerEntry) -> Map<String, Value> {
    let mut tags = Map::new();
    tags.insert("mlops-relay.event_id".into(), json!(entry.event_id));
    tags.insert("mlops-relay.decision_id".into(), json!(entry.decision_id));
    tags.insert(
        "mlops-relay.action_id".into(),
        json!(entry.action.action_id),
    );
    if let Some(model) = &entry.action.model {
        tags.insert("mlops-relay.model".into(), json!(model));
    }
    if let Some(tp) = &entry.traceparent {
        tags.insert("traceparent".into(), json!(tp));
    }
    tags
}

/// `PUT …/jobs/{name}`: a single-node pipeline job wrapping the policy's registered pipeline component,
/// inputs from the policy and the trigger (reference §4.1).
pub fn submit_job(entry: &LedgerEntry, ws: &Workspace) -> Result<ArmRequest, String> {
    let ActionParams::Retrain {
        pipeline,
        experiment,
        compute,
        inputs,
        ..
    } = &entry.action.params
    else {
        return Err(format!("{} is not a retrain", entry.action.action_id));
    };
    let name = job_name(entry.action.action_id.as_str());
    let literal = |v: &str| json!({ "jobInputType": "literal", "value": v });
    let job_inputs: Map<String, Value> = inputs
        .iter()
        .map(|(k, v)| (k.clone(), literal(v)))
        .collect();
    let node_inputs: Map<String, Value> =
        inputs.keys().map(|k| (k.clone(), json!({ "job_input_type": "literal", "value": format!("${{{{parent.inputs.{k}}}}}") }))).collect();
    let compute_id = compute.as_ref().map(|c| {
        if c.starts_with('/') {
            c.clone()
        } else {
            format!("{}/computes/{c}", ws.id())
        }
    });
    let mut properties = json!({
        "jobType": "Pipeline",
        "displayName": format!("retrain {}", entry.action.model.as_deref().unwrap_or("")).trim().to_string(),
        "experimentName": experiment,
        "inputs": job_inputs,
        "jobs": { "train": { "type": "pipeline", "componentId": pipeline, "inputs": node_inputs } },
        "tags": provenance(entry),
    });
    if let Some(c) = compute_id {
        properties["computeId"] = json!(c);
        properties["settings"] = json!({ "default_compute": c });
    }
    Ok(ArmRequest {
        method: "PUT",
        path: format!("{}/jobs/{name}?api-version={API_VERSION}", ws.id()),
        body: Some(json!({ "properties": properties })),
    })
}

/// `GET …/onlineEndpoints/{endpoint}`: read before deploying (location, auth mode, traffic).
pub fn get_endpoint(ws: &Workspace, endpoint: &str) -> ArmRequest {
    ArmRequest {
        method: "GET",
        path: format!(
            "{}/onlineEndpoints/{endpoint}?api-version={API_VERSION}",
            ws.id()
        ),
        body: None,
    }
}

/// `PUT …/onlineEndpoints/{endpoint}/deployments/{deployment}` referencing the model by its registry id, so
/// staging and production run the very same artefact (reference §4.2).
pub fn deploy(entry: &LedgerEntry, ws: &Workspace, location: &str) -> Result<ArmRequest, String> {
    let ActionParams::Deploy {
        registry_model_id,
        endpoint,
        deployment,
        instance_type,
        instance_count,
        environment,
        ..
    } = &entry.action.params
    else {
        return Err(format!("{} is not a deployment", entry.action.action_id));
    };
    let mut tags = provenance(entry);
    tags.insert("mlops-relay.environment".into(), json!(environment));
    let body = json!({
        "location": location,
        "sku": { "name": "Default", "capacity": instance_count },
        "properties": {
            "endpointComputeType": "Managed",
            "model": registry_model_id,
            "instanceType": instance_type,
            "scaleSettings": { "scaleType": "Default" },
            "appInsightsEnabled": true,
        },
        "tags": tags,
    });
    Ok(ArmRequest {
        method: "PUT",
        path: format!(
            "{}/onlineEndpoints/{endpoint}/deployments/{deployment}?api-version={API_VERSION}",
            ws.id()
        ),
        body: Some(body),
    })
}

/// Re-`PUT` of the endpoint as read, with `traffic` set: all to `deployment` (reference §4.2: PATCH does
/// not cover traffic).
pub fn shift_traffic(
    ws: &Workspace,
    endpoint: &str,
    current: &Value,
    traffic: &[(&str, u32)],
) -> ArmRequest {
    let mut body = json!({
        "location": current["location"],
        "identity": current.get("identity").cloned().unwrap_or(json!({ "type": "SystemAssigned" })),
        "properties": { "authMode": current["properties"]["authMode"].as_str().unwrap_or("AMLToken") },
    });
    if let Some(tags) = current.get("tags") {
        body["tags"] = tags.clone();
    }
    let map: Map<String, Value> = traffic
        .iter()
        .map(|(d, p)| (d.to_string(), json!(p)))
        .collect();
    body["properties"]["traffic"] = Value::Object(map);
    ArmRequest {
        method: "PUT",
        path: format!(
            "{}/onlineEndpoints/{endpoint}?api-version={API_VERSION}",
            ws.id()
        ),
        body: Some(body),
    }
}

/// State of a long-running operation (`Azure-AsyncOperation` body `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationStatus {
    /// Still going.
    Running,
    /// Done.
    Succeeded,
    /// Failed or canceled.
    Failed,
}

/// Reads an `Azure-AsyncOperation` poll body.
pub fn operation_status(body: &Value) -> OperationStatus {
    match body["status"]
        .as_str()
        .unwrap_or("")
        .to_ascii_lowercase()
        .as_str()
    {
        "succeeded" => OperationStatus::Succeeded,
        "failed" | "canceled" | "cancelled" => OperationStatus::Failed,
        _ => OperationStatus::Running,
    }
}

/// `POST …/onlineEndpoints/{endpoint}/listKeys` (key auth) or `…/token` (AML token auth): the credential
/// the smoke test scores with.
pub fn scoring_credential(ws: &Workspace, endpoint: &str, auth_mode: &str) -> ArmRequest {
    let op = if auth_mode.eq_ignore_ascii_case("Key") {
        "listKeys"
    } else {
        "token"
    };
    ArmRequest {
        method: "POST",
        path: format!(
            "{}/onlineEndpoints/{endpoint}/{op}?api-version={API_VERSION}",
            ws.id()
        ),
        body: None,
    }
}

/// The bearer value in a `listKeys` or `token` answer.
pub fn scoring_secret(body: &Value) -> Option<String> {
    body["primaryKey"]
        .as_str()
        .or(body["accessToken"].as_str())
        .map(str::to_string)
}

/// The event a deployment reports back, decided next: a passing smoke test opens the next gate. Its id is
/// derived from the action, so a redelivered deployment reports once.
pub fn deployment_completed(
    entry: &LedgerEntry,
    endpoint: &str,
    smoke_test: &str,
    detail: &str,
    time: chrono::DateTime<chrono::Utc>,
) -> Value {
    let (environment, model, version) = match &entry.action.params {
        ActionParams::Deploy { environment, .. } => (
            environment.clone(),
            entry.action.model.clone(),
            entry.action.version.clone(),
        ),
        _ => (String::new(), None, None),
    };
    json!({
        "specversion": "1.0",
        "type": crate::events::relay::DEPLOYMENT_COMPLETED,
        "source": "mlops-relay/deploy-worker",
        "id": format!("deployed-{}", entry.action.action_id),
        "time": time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "traceparent": entry.traceparent,
        "data": { "model": model, "version": version, "environment": environment, "endpoint": endpoint, "smokeTest": smoke_test, "detail": detail },
    })
}
