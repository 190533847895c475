//! The operators' error helpers, in one place.

use flow_engine::operator::OperatorError;

/// An error a retry cannot mend (a bad key, a missing column, a malformed file): the message as
/// given.
pub(crate) fn fatal(msg: impl Into<String>) -> OperatorError {
    OperatorError::Fatal(msg.into())
}
