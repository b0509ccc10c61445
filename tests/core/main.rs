//! All integration tests in one binary (one link step on a 2-core machine).

mod cli;
mod decide;
mod events;
mod helpers;
mod processes;
mod properties;
mod runtime;
mod store;
