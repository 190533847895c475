//! flow's built-in operators. The engine knows them only through
//! [`flow_engine::operator::Operator`]; [`registry`] names every built-in one.

pub mod connections;
pub mod demo;
pub mod emr;
mod error;
pub mod fuzz;
pub mod http;
pub mod ml;
pub mod remote_logs;
pub mod s3;
pub mod shell;
pub mod spark;
pub mod sql;
pub mod storage;
pub mod trigger_dag;
pub mod warehouse;

use std::sync::Arc;

use flow_engine::operator::Registry;

pub use connections::Connections;

/// Every built-in operator, with the connections of `flow.toml` for those that use them.
pub fn registry(connections: Connections) -> Registry {
    let connections = Arc::new(connections);
    let mut r = Registry::new();
    r.register(Arc::new(shell::Shell));
    r.register(Arc::new(http::Http));
    r.register(Arc::new(sql::Sql::new(connections.clone())));
    r.register(Arc::new(s3::S3Put::new(connections.clone())));
    r.register(Arc::new(s3::S3Copy::new(connections.clone())));
    r.register(Arc::new(s3::S3Delete::new(connections.clone())));
    r.register(Arc::new(s3::S3Sensor::new(connections.clone())));
    r.register(Arc::new(spark::Spark::new(connections.clone())));
    r.register(Arc::new(ml::train::Train::new(connections.clone())));
    r.register(Arc::new(ml::predict::Predict::new(connections.clone())));
    r.register(Arc::new(ml::promote::Promote));
    r.register(Arc::new(demo::DemoData));
    r.register(Arc::new(trigger_dag::TriggerDag));
    r.register(Arc::new(ml::drift::Drift::new(connections.clone())));
    r.register(Arc::new(ml::experiment::Experiment::new(
        connections.clone(),
    )));
    r.register(Arc::new(warehouse::Warehouse::new(connections)));
    r
}
