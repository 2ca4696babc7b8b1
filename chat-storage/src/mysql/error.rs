//! Mapping MySQL / MariaDB failures onto the contract's [`Error`].
//!
//! Inside the module every database step returns a [`Failure`], which keeps the driver's error
//! so that callers can react to specific server codes (a duplicate key on the dedupe index, a
//! deadlock worth retrying) before it is turned into the contract's error at the trait boundary
//! by [`Failure::into_error`]: anything that means "the database is not answering" (connection
//! refused or lost, server shutting down, timeouts, too many connections, a read-only primary)
//! becomes [`Error::Unavailable`]; a duplicate key becomes `Conflict`; a foreign key failure
//! `NotFound`; everything else (a query or schema bug) `Internal`.

use chat_core::Error;
use mysql_async::{DriverError, Error as MyError};

/// MySQL / MariaDB server error codes this module reacts to.
pub(crate) mod code {
    /// ER_DUP_ENTRY: a UNIQUE or PRIMARY KEY violation.
    pub const DUP_ENTRY: u16 = 1062;
    /// ER_NO_REFERENCED_ROW_2: a foreign key points at a row that does not exist.
    pub const NO_REFERENCED_ROW: u16 = 1452;
    /// ER_NO_REFERENCED_ROW (old form of the same).
    pub const NO_REFERENCED_ROW_OLD: u16 = 1216;
    /// ER_ROW_IS_REFERENCED_2: a delete would orphan rows.
    pub const ROW_IS_REFERENCED: u16 = 1451;
    /// ER_LOCK_DEADLOCK: the transaction was chosen as a deadlock victim; safe to run again.
    pub const LOCK_DEADLOCK: u16 = 1213;
    /// ER_LOCK_WAIT_TIMEOUT: `innodb_lock_wait_timeout` expired; safe to run again.
    pub const LOCK_WAIT_TIMEOUT: u16 = 1205;
}

/// Server codes that mean the server cannot serve right now (or this connection cannot), as
/// opposed to a bug in a query: shutting down, killed or lost connections, resource limits,
/// read-only mode (a primary that was demoted), access problems after a misconfiguration.
const UNAVAILABLE_CODES: &[u16] = &[
    1040, // ER_CON_COUNT_ERROR: too many connections
    1041, // ER_OUT_OF_RESOURCES
    1044, // ER_DBACCESS_DENIED_ERROR
    1045, // ER_ACCESS_DENIED_ERROR
    1049, // ER_BAD_DB_ERROR: the database is gone
    1053, // ER_SERVER_SHUTDOWN
    1077, // ER_NORMAL_SHUTDOWN
    1078, // ER_GOT_SIGNAL
    1079, // ER_SHUTDOWN_COMPLETE
    1152, // ER_ABORTING_CONNECTION
    1153, // ER_NET_PACKET_TOO_LARGE
    1158, 1159, 1160, 1161, // ER_NET_* read/write errors and timeouts
    1203, // ER_TOO_MANY_USER_CONNECTIONS
    1205, // ER_LOCK_WAIT_TIMEOUT (after our retries)
    1213, // ER_LOCK_DEADLOCK (after our retries)
    1226, // ER_USER_LIMIT_REACHED
    1290, // ER_OPTION_PREVENTS_STATEMENT: --read-only
    1317, // ER_QUERY_INTERRUPTED
    1836, // ER_READ_ONLY_MODE
    1792, // ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
    1927, // ER_CONNECTION_KILLED
    2002, 2003, 2006, 2013, // client-side codes some servers echo: cannot connect, gone away
    4031, // ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
];

/// Why a database step failed, before it becomes the contract's [`Error`].
#[derive(Debug)]
pub(crate) enum Failure {
    /// The driver or the server said no.
    Db(MyError),
    /// The step did not finish in time (`what` names the step).
    Timeout(&'static str),
    /// A domain answer decided inside a transaction (NotFound, InvalidArgument, ...).
    Domain(Error),
}

impl From<MyError> for Failure {
    fn from(e: MyError) -> Self {
        Failure::Db(e)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Domain(e)
    }
}

/// The server error code of `e`, if the server sent one.
pub(crate) fn server_code(e: &MyError) -> Option<u16> {
    match e {
        MyError::Server(s) => Some(s.code),
        _ => None,
    }
}

impl Failure {
    /// Whether running the whole transaction again may succeed: InnoDB deadlocks and lock-wait
    /// timeouts roll the transaction back, so a retry starts clean.
    pub(crate) fn is_retryable_lock(&self) -> bool {
        matches!(self, Failure::Db(e)
            if matches!(server_code(e), Some(code::LOCK_DEADLOCK | code::LOCK_WAIT_TIMEOUT)))
    }

    /// Whether the failure is a duplicate key.
    pub(crate) fn is_duplicate_key(&self) -> bool {
        matches!(self, Failure::Db(e) if server_code(e) == Some(code::DUP_ENTRY))
    }

    /// Whether the failure says the server (or the connection to it) is not usable, rather than
    /// a wrong query: used to mark a replica as down for a while.
    pub(crate) fn is_unavailable(&self) -> bool {
        match self {
            Failure::Timeout(_) => true,
            Failure::Db(e) => is_unavailable_db(e),
            Failure::Domain(e) => matches!(e, Error::Unavailable { .. }),
        }
    }

    /// The contract's error for this failure while doing `what`.
    pub(crate) fn into_error(self, what: &str) -> Error {
        match self {
            Failure::Domain(e) => e,
            Failure::Timeout(step) => Error::Unavailable {
                message: format!("mysql: {what}: {step} timed out"),
                source: None,
            },
            Failure::Db(e) => db_error(what, e),
        }
    }
}

/// Whether a driver error means "not answering" rather than "bad query".
fn is_unavailable_db(e: &MyError) -> bool {
    match e {
        MyError::Io(_) => true,
        MyError::Driver(d) => matches!(
            d,
            DriverError::ConnectionClosed
                | DriverError::PoolDisconnected
                | DriverError::PacketOutOfOrder
                | DriverError::UnexpectedPacket { .. }
                | DriverError::BadCompressedPacketHeader
                | DriverError::CantParseServerVersion { .. }
        ),
        MyError::Server(s) => UNAVAILABLE_CODES.contains(&s.code),
        MyError::Other(_) | MyError::Url(_) => false,
    }
}

/// A driver error while doing `what`, as the contract's error.
pub(crate) fn db_error(what: &str, e: MyError) -> Error {
    if is_unavailable_db(&e) {
        return Error::unavailable(format!("mysql: {what}"), e);
    }
    match server_code(&e) {
        Some(code::DUP_ENTRY) => Error::Conflict(format!("{what}: already exists")),
        Some(code::NO_REFERENCED_ROW | code::NO_REFERENCED_ROW_OLD | code::ROW_IS_REFERENCED) => {
            Error::NotFound(format!("{what}: a referenced row does not exist"))
        }
        _ => Error::internal(format!("mysql: {what}"), e),
    }
}

/// A row whose columns do not have the types the code expects: our schema and our code
/// disagree, which is a bug, not bad input.
pub(crate) fn bad_row(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Domain(Error::Internal {
        message: format!("mysql: {what}: unexpected stored data: {e}"),
        source: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::ErrorCode;

    fn server(code: u16) -> MyError {
        MyError::Server(mysql_async::ServerError {
            code,
            message: "x".into(),
            state: "HY000".into(),
        })
    }

    #[test]
    fn codes_map_onto_the_contract() {
        assert_eq!(db_error("w", server(1062)).code(), ErrorCode::Conflict);
        assert_eq!(db_error("w", server(1452)).code(), ErrorCode::NotFound);
        assert_eq!(db_error("w", server(1053)).code(), ErrorCode::Unavailable);
        assert_eq!(db_error("w", server(1064)).code(), ErrorCode::Internal);
        let io = MyError::Io(mysql_async::IoError::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(db_error("w", io).code(), ErrorCode::Unavailable);
        assert_eq!(
            db_error("w", MyError::Driver(DriverError::ConnectionClosed)).code(),
            ErrorCode::Unavailable
        );
        assert!(Failure::Db(server(1213)).is_retryable_lock());
        assert!(Failure::Db(server(1205)).is_retryable_lock());
        assert!(!Failure::Db(server(1062)).is_retryable_lock());
        assert_eq!(
            Failure::Timeout("acquire").into_error("w").code(),
            ErrorCode::Unavailable
        );
    }
}
