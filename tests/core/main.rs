//! All integration tests in one binary (one link step on a 2-core machine).

mod azureml;
mod blob;
mod browser;
mod cli;
mod decide;
mod e2e;
mod events;
mod helpers;
mod notify;
mod package;
mod processes;
mod properties;
mod runtime;
mod servicebus;
mod store;
