//! Adapters: one module per outside system, each implementing a port of [`crate::ports`].

pub mod blob;
pub mod dry_run;
pub mod servicebus;
pub mod sqlite;
pub mod workers;
