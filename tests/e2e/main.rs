//! End-to-end tests of the real `flow` binary, on SQLite and PostgreSQL.
//!
//! One test binary for the whole project (see `ui/Cargo.toml`), so the link happens once.

mod harness;

mod alerts;
mod api;
mod api_server;
mod architecture;
mod authoring;
mod backfills;
mod browser;
mod cli;
mod daemon;
mod datasets;
mod deploy;
mod emr;
mod experiments;
mod heavy;
mod in_process;
mod jepsen;
mod ml;
mod models;
mod outage;
mod pages;
mod private_pg;
mod ready;
mod remote_logs;
mod retention;
mod run;
mod schedulers;
mod schemathesis;
mod security;
mod telemetry;
mod tokens;
mod trigger_dag;
mod validate;
mod versions;
mod wakeups;
mod warehouse;
mod workers;
