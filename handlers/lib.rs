//! mlops-relay: event-driven MLOps automation for Azure.
//!
//! Azure ML events, schedules, drift reports and approvals come in; each becomes a [`domain::Signal`];
//! [`policy::decide`] turns it into actions (approval requests, deployments, retrains, pages) with a reason for
//! everything that fired or was held back. The decision core (`events`, `domain`, `policy`) does no I/O and
//! reads no clock; `replay` runs it over recorded history with no side effects.

pub mod adapters;
#[allow(unsafe_code)]
pub mod alloc;
pub mod approvals;
pub mod azureml;
pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod executor;
pub mod functions;
pub mod host;
pub mod notify;
pub mod package;
pub mod policy;
pub mod ports;
pub mod replay;
pub mod runtime;
pub mod startup;
pub mod telemetry;
