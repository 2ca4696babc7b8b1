//! Mapping the driver's errors onto [`chat_core::Error`].
//!
//! A node that is down, a timeout, too few replicas alive, a lost connection: all of these are
//! [`Error::Unavailable`] (the server answers 503 and the client retries). Errors that a retry
//! cannot fix because the statement itself is wrong (syntax, invalid query, a type mismatch while
//! binding) are bugs and become [`Error::Internal`].

use chat_core::Error;
use scylla::errors::{DbError, ExecutionError, NewSessionError, PrepareError, RequestAttemptError};

/// A failed request, with what it was doing.
pub(crate) fn execution(context: &str, err: ExecutionError) -> Error {
    let is_bug = match &err {
        ExecutionError::BadQuery(_) => true,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => matches!(
            db,
            DbError::SyntaxError
                | DbError::Invalid
                | DbError::Unauthorized
                | DbError::ConfigError
                | DbError::AlreadyExists { .. }
        ),
        ExecutionError::LastAttemptError(
            RequestAttemptError::SerializationError(_)
            | RequestAttemptError::CqlRequestSerialization(_),
        ) => true,
        _ => false,
    };
    if is_bug {
        Error::internal(format!("cassandra: {context}"), err)
    } else {
        Error::unavailable(format!("cassandra: {context}"), err)
    }
}

/// A statement that could not be prepared. Preparation happens at connect, so a failure there
/// is usually an unreachable cluster; a rejected statement is a bug.
pub(crate) fn prepare(context: &str, err: PrepareError) -> Error {
    let is_bug = matches!(
        &err,
        PrepareError::AllAttemptsFailed { first_attempt }
            if matches!(first_attempt, RequestAttemptError::DbError(DbError::SyntaxError | DbError::Invalid, _))
    );
    if is_bug {
        Error::internal(format!("cassandra: preparing {context}"), err)
    } else {
        Error::unavailable(format!("cassandra: preparing {context}"), err)
    }
}

/// The session could not be opened: the cluster is not reachable.
pub(crate) fn session(err: NewSessionError) -> Error {
    Error::unavailable("cassandra: cannot connect to the cluster", err)
}

/// A response that should have had rows did not, or its rows did not have the expected types:
/// the schema and the code disagree.
pub(crate) fn rows(context: &str, err: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::internal(format!("cassandra: decoding {context}"), err)
}

/// A row that decoded but breaks an invariant (a missing column, a negative seq).
pub(crate) fn bad_row(what: impl Into<String>) -> Error {
    Error::Internal {
        message: format!("cassandra: {}", what.into()),
        source: None,
    }
}
