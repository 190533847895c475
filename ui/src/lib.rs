//! flow's delivery layer: the `flow` command line, the HTTP server (REST API and web pages) and
//! the shapes they print, over the engine (`flow_engine`) and the operators (`flow_operators`).
//!
//! The server is a library so that tests and other binaries can start it in-process:
//! [`state::AppState`] is what every handler shares, [`server::router`] joins the API
//! ([`api`], JSON, documented by OpenAPI) and the pages ([`web`], HTML), and [`server::serve`]
//! runs it. `api` and `web` both build on `state`, `ops` (the operations both offer) and
//! `render` (the JSON shapes), never on each other. See docs/ARCHITECTURE.md.

pub mod api;
pub mod backfill;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod context;
mod daemons;
pub mod experiments;
pub mod ops;
mod progress;
pub mod render;
mod retention;
pub mod server;
pub mod state;
mod task_test;
pub mod telemetry;
mod tokens;
pub mod web;
