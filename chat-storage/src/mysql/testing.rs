//! Test support for the MySQL store (features `testing` + `mysql`): a fresh, uniquely named
//! database per test, so tests run in parallel against one shared server.
//!
//! Used by this crate's MySQL tests and by the server's end-to-end harness; both read the
//! server's base URL from `CHAT_TEST_MYSQL_URL` (see `scripts/mariadb.sh env`).

use super::error::db_error;
use super::{check_database_name, parse_url};
use chat_core::{Error, Result};
use mysql_async::prelude::Queryable;
use mysql_async::OptsBuilder;
use std::time::Duration;

/// The environment variable holding the primary's base URL for tests.
pub const PRIMARY_URL_ENV: &str = "CHAT_TEST_MYSQL_URL";
/// The environment variable holding the replica's base URL for tests.
pub const REPLICA_URL_ENV: &str = "CHAT_TEST_MYSQL_REPLICA_URL";

/// How long creating or dropping a test database may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The base URL in the environment variable `var`, or an error that says how to start MariaDB.
/// Tests call this and fail (never skip) when it is missing.
pub fn url_from_env(var: &str) -> Result<String> {
    std::env::var(var).map_err(|_| Error::Unavailable {
        message: format!(
            "{var} is not set: start MariaDB with `scripts/mariadb.sh start` and run \
                 `eval \"$(scripts/mariadb.sh env)\"` before the MySQL tests"
        ),
        source: None,
    })
}

/// Creates a database with a unique name (`chat_test_<random>`) on the server of `base_url`
/// and returns `base_url` pointing at it (any database in `base_url` is replaced, query
/// parameters are kept). The database is empty: the store migrates it when it opens.
pub async fn fresh_database(base_url: &str) -> Result<String> {
    use rand::Rng;
    let suffix: u64 = rand::thread_rng().gen();
    let name = format!("chat_test_{suffix:016x}");
    let opts = parse_url(base_url)?;
    let builder = OptsBuilder::from_opts(opts)
        .db_name(None::<String>)
        .prefer_socket(false);
    let sql = format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin");
    run_one(builder, &sql, "create test database").await?;
    with_database(base_url, &name)
}

/// Creates a user that may only read and write the rows of the database `url` points at
/// (`SELECT, INSERT, UPDATE, DELETE`: no DDL, no other database), as a server is meant to run
/// once its schema is migrated, and returns `url` with that user's name and password. Run it
/// with a `url` whose user may create users (the test server's `chat` user).
pub async fn least_privilege_user(url: &str) -> Result<String> {
    use rand::Rng;
    let opts = parse_url(url)?;
    let Some(db) = opts.db_name().map(str::to_owned) else {
        return Err(Error::InvalidArgument(format!("no database in {url}")));
    };
    check_database_name(&db)?;
    let mut rng = rand::thread_rng();
    let user = format!("app_{:012x}", rng.gen::<u64>() & 0xffff_ffff_ffff);
    let password = format!("{:032x}", rng.gen::<u128>());
    let builder = OptsBuilder::from_opts(opts.clone())
        .db_name(None::<String>)
        .prefer_socket(false);
    for host in ["127.0.0.1", "localhost"] {
        let create = format!("CREATE USER '{user}'@'{host}' IDENTIFIED BY '{password}'");
        run_one(builder.clone(), &create, "create a least-privilege user").await?;
        let grant =
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON `{db}`.* TO '{user}'@'{host}'");
        run_one(builder.clone(), &grant, "grant a least-privilege user").await?;
    }
    let query = url
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    Ok(format!(
        "mysql://{user}:{password}@{}:{}/{db}{query}",
        opts.ip_or_hostname(),
        opts.tcp_port()
    ))
}

/// Drops the database a URL from [`fresh_database`] points at (tests may clean up; leftover
/// databases are harmless).
pub async fn drop_database(url: &str) -> Result<()> {
    let opts = parse_url(url)?;
    let Some(name) = opts.db_name().map(str::to_owned) else {
        return Err(Error::InvalidArgument(format!("no database in {url}")));
    };
    check_database_name(&name)?;
    let builder = OptsBuilder::from_opts(opts)
        .db_name(None::<String>)
        .prefer_socket(false);
    run_one(
        builder,
        &format!("DROP DATABASE IF EXISTS `{name}`"),
        "drop test database",
    )
    .await
}

/// `url` with its database (path) replaced by `database`.
pub fn with_database(url: &str, database: &str) -> Result<String> {
    check_database_name(database)?;
    let (without_query, query) = match url.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (url, None),
    };
    let scheme_end = without_query
        .find("://")
        .map(|i| i + 3)
        .ok_or_else(|| Error::InvalidArgument(format!("not a mysql:// URL: {url}")))?;
    let host_end = without_query[scheme_end..]
        .find('/')
        .map_or(without_query.len(), |i| scheme_end + i);
    let mut out = format!("{}/{database}", &without_query[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// Connects with `builder`, runs `sql`, disconnects.
async fn run_one(builder: OptsBuilder, sql: &str, what: &str) -> Result<()> {
    let work = async {
        let mut conn = mysql_async::Conn::new(builder).await?;
        conn.query_drop(sql).await?;
        conn.disconnect().await
    };
    match tokio::time::timeout(TIMEOUT, work).await {
        Ok(r) => r.map_err(|e| db_error(what, e)),
        Err(_) => Err(Error::Unavailable {
            message: format!("mysql: {what} timed out"),
            source: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_and_query_kept() {
        assert_eq!(
            with_database("mysql://u:p@127.0.0.1:3307", "x").unwrap(),
            "mysql://u:p@127.0.0.1:3307/x"
        );
        assert_eq!(
            with_database("mysql://u:p@h:1/old?pool_max=3", "new_1").unwrap(),
            "mysql://u:p@h:1/new_1?pool_max=3"
        );
        assert!(with_database("mysql://h/x", "bad-name").is_err());
        assert!(with_database("nonsense", "x").is_err());
    }
}
