//! flow's engine: the domain model and everything that decides or records what runs.
//!
//! The split follows one rule: what can be pure is pure. [`dag`] turns YAML into a valid
//! [`dag::Dag`] or a list of positioned problems, [`schedule`] does calendar arithmetic,
//! [`plan`] decides every state transition from a snapshot and `now`, and [`template`] renders
//! task values. None of them touch a clock, a file or a socket, so they are tested exhaustively
//! with tables. The I/O lives at the edges: [`store`] (the metadata database, behind narrow
//! traits gathered in [`store::Store`]), [`executor`] (one try: its process, its log, its end)
//! and [`scheduler`] (the loop that ties them together). docs/ARCHITECTURE.md has the picture
//! and the import rules a test enforces.
//!
//! # Public API
//!
//! What the operators and the delivery layer (CLI, server) use, re-exported here:
//! - DAG files: [`Dag`], [`parse_dag`], [`ParseOptions`], [`Problem`];
//! - operators: [`Operator`], [`OperatorKeys`], [`TaskContext`], [`OperatorError`],
//!   [`Registry`];
//! - the scheduler: [`Engine`], [`EngineConfig`], [`EngineError`], [`Mode`], [`DagCatalog`],
//!   and run creation ([`scheduler::trigger`], [`scheduler::manual_run`],
//!   [`scheduler::backfills`]);
//! - the metadata database: [`Store`] and [`store::connect`];
//! - states: [`RunState`], [`TaskState`].
//!
//! Everything else that is `pub` is so because one of those names it, or another crate reads it
//! (the modules stay public for that); the rest is `pub(crate)`.

pub mod alerts;
pub mod dag;
pub mod executor;
pub mod keys;
pub mod log;
pub mod metrics;
pub mod notify;
pub mod operator;
pub mod plan;
pub mod schedule;
pub mod scheduler;
pub mod secrets;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod time;
pub mod yaml;

pub use dag::{Dag, ParseOptions, Problem, parse_dag};
pub use keys::OperatorKeys;
pub use operator::{Operator, OperatorError, Registry, TaskContext};
pub use scheduler::{DagCatalog, Engine, EngineConfig, EngineError, Mode};
pub use state::{RunState, TaskState};
pub use store::Store;
