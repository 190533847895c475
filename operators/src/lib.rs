//! flow's built-in operators. The engine knows them only through
//! [`flow_engine::operator::Operator`]; [`registry`] names every built-in one.

pub mod shell;

use std::sync::Arc;

use flow_engine::operator::Registry;

/// Every built-in operator.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(shell::Shell));
    r
}
