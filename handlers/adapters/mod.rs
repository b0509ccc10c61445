//! Adapters: one module per outside system, each implementing a port of [`crate::ports`].

pub mod dry_run;
pub mod sqlite;
