//! Mapping SQLite errors onto the contract's [`Error`]: constraint violations the trait
//! documents become `Conflict` / `NotFound`; anything else the database says is `Unavailable`
//! (with the driver's error kept as the source for logs), so the server answers 503, never 500.

use chat_core::Error;
use rusqlite::ffi;

/// Which constraint a failed statement violated, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A UNIQUE or PRIMARY KEY constraint.
    Unique,
    /// A FOREIGN KEY constraint.
    ForeignKey,
}

/// The constraint `e` reports, if it is a constraint violation of a kind we map.
pub(crate) fn violation(e: &rusqlite::Error) -> Option<Violation> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => match f.extended_code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                Some(Violation::Unique)
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => Some(Violation::ForeignKey),
            _ => None,
        },
        _ => None,
    }
}

/// A database error while doing `what`, as the contract's error.
///
/// Errors that mean our own code and the stored data disagree (a column of an unexpected type)
/// are `Internal`; everything else (I/O, a full disk, a lock held too long, a corrupt file) is
/// `Unavailable`, which a client may retry.
pub(crate) fn db_error(what: &str, e: rusqlite::Error) -> Error {
    match e {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::InvalidColumnIndex(_)
        | rusqlite::Error::InvalidColumnName(_) => {
            Error::internal(format!("sqlite: {what}: unexpected stored data"), e)
        }
        e => Error::unavailable(format!("sqlite: {what}"), e),
    }
}

/// A closure for `map_err` that turns a database error while doing `what` into [`Error`].
pub(crate) fn db(what: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| db_error(what, e)
}

/// The error every caller gets when the writer thread is gone (it only stops when the store is
/// closed, or if it died).
pub(crate) fn writer_gone() -> Error {
    Error::Unavailable {
        message: "sqlite: the writer thread has stopped".to_owned(),
        source: None,
    }
}
