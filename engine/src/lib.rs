//! flow's engine: the domain model and everything that decides or records what runs.
//!
//! The split follows one rule: what can be pure is pure. [`dag`] turns YAML into a valid
//! [`dag::Dag`] or a list of positioned problems, [`schedule`] does calendar arithmetic,
//! [`plan`] decides every state transition from a snapshot and `now`, and [`template`] renders
//! task values. None of them touch a clock, a file or a socket, so they are tested exhaustively
//! with tables. The I/O lives at the edges: [`store`] (the metadata database, behind the
//! [`store::Store`] trait), [`executor`] (child processes, logs) and [`scheduler`] (the loop that
//! ties them together).

pub mod dag;
pub mod executor;
pub mod keys;
pub mod log;
pub mod notify;
pub mod operator;
pub mod plan;
pub mod schedule;
pub mod scheduler;
pub mod secrets;
pub mod state;
pub mod store;
pub mod template;
pub mod time;
pub mod yaml;
