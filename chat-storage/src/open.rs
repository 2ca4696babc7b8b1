//! Opening the stores a server is configured with, from URLs.
//!
//! | URL | store |
//! | --- | --- |
//! | `sqlite` | SQLite file `<data_dir>/chat.db` |
//! | `sqlite:///abs/path.db` | SQLite file `/abs/path.db` |
//! | `sqlite://relative/path.db` | SQLite file `relative/path.db`, relative to the working directory |
//! | `sqlite?commit_delay=1ms` | any SQLite form with options: `commit_delay` (`0`, `<n>us`, `<n>ms`, at most `50ms`; default 5ms) |
//! | `mysql://user:pass@host:port/db` | MySQL / MariaDB (feature `mysql`); metadata and/or messages |
//! | `cassandra://host1,host2:9042/keyspace?…` | Cassandra (feature `cassandra`); messages only |
//!
//! When the metadata and the messages name the same SQLite file (or the same MySQL URL) they
//! share one store instance: for SQLite that means one writer thread for the file, which is
//! what keeps its group commit (and its seq allocation) in one place.

use chat_core::{Error, MessageStore, MetadataStore, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the stores live, as URLs (see the module docs for the forms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Users, sessions, chats and memberships: `sqlite…` or `mysql://…`.
    pub metadata: String,
    /// Read replicas of a `mysql://` metadata store (reads that may lag go there). Must be empty
    /// for other metadata stores.
    pub metadata_replicas: Vec<String>,
    /// Messages: `sqlite…`, `mysql://…` or `cassandra://…`.
    pub messages: String,
    /// Where `sqlite` (without a path) keeps its file.
    pub data_dir: PathBuf,
}

impl StoreConfig {
    /// The embedded default: everything in `<data_dir>/chat.db`.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            metadata: "sqlite".to_owned(),
            metadata_replicas: Vec::new(),
            messages: "sqlite".to_owned(),
            data_dir: data_dir.into(),
        }
    }

    /// Checks the URLs' syntax (and the replica rule) without opening or connecting to
    /// anything: the part of [`open`] that reads operator input, on its own so that it can be
    /// fuzzed and run before a server starts. Errors are `InvalidArgument`, as from [`open`].
    pub fn check(&self) -> Result<()> {
        let metadata = parse(&self.metadata, &self.data_dir)?;
        parse(&self.messages, &self.data_dir)?;
        for replica in &self.metadata_replicas {
            // Logged forms of a replica URL must not leak its password either.
            let _ = redact(replica);
        }
        if !self.metadata_replicas.is_empty() && !matches!(metadata, StoreUrl::Mysql(_)) {
            return Err(Error::InvalidArgument(
                "metadata replicas need a mysql:// metadata store".to_owned(),
            ));
        }
        Ok(())
    }
}

/// The opened stores, type-erased so the server does not care which backend it got.
#[derive(Clone)]
pub struct Stores {
    /// Users, sessions, chats and memberships.
    pub metadata: Arc<dyn MetadataStore>,
    /// Messages.
    pub messages: Arc<dyn MessageStore>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

/// A parsed store URL.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StoreUrl {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A MySQL URL, as given (the mysql module parses it).
    Mysql(String),
    /// A Cassandra URL, as given (the cassandra module parses it).
    Cassandra(String),
}

/// The store URL with any password replaced (`mysql://chat:***@host/db`), for errors, logs and
/// reports. Malformed URLs that carry credentials in odd places are masked too.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) if is_scheme(scheme) => (format!("{scheme}://"), rest),
        _ => (String::new(), url),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if path.contains('@') || (scheme.is_empty() && rest.contains('@')) {
        // Malformed (found by fuzzing: `mysql:/user:pw@host/db`): the credentials are not where
        // a URL keeps them, so everything before the last '@' goes.
        let host = url.rsplit_once('@').map_or("", |(_, h)| h);
        return format!("{scheme}***@{host}");
    }
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// Whether `s` looks like a URL scheme (RFC 3986: a letter, then letters, digits, `+`, `-`,
/// `.`), so it can be echoed in an error without echoing anything else.
fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Parses one store URL; `sqlite` alone means `<data_dir>/chat.db`.
fn parse(url: &str, data_dir: &Path) -> Result<StoreUrl> {
    parse_with_options(url, data_dir).map(|(url, _)| url)
}

/// Parses one store URL and the SQLite options it sets (`sqlite?commit_delay=1ms`,
/// `sqlite:///path.db?commit_delay=0`); the options are empty for other stores, whose URLs are
/// parsed by their own modules.
fn parse_with_options(url: &str, data_dir: &Path) -> Result<(StoreUrl, SqliteUrlOptions)> {
    let url = url.trim();
    let (base, query) = match url.split_once('?') {
        Some((base, query)) if is_sqlite(base) => (base, Some(query)),
        _ => (url, None),
    };
    let options = match query {
        Some(query) => SqliteUrlOptions::parse(query, url)?,
        None => SqliteUrlOptions::default(),
    };
    if base.eq_ignore_ascii_case("sqlite") {
        return Ok((StoreUrl::Sqlite(data_dir.join("chat.db")), options));
    }
    let Some((scheme, rest)) = base.split_once("://") else {
        return Err(Error::InvalidArgument(format!(
            "store URL {:?} is not `sqlite`, `sqlite://PATH`, `mysql://…` or `cassandra://…`",
            redact(url)
        )));
    };
    let parsed = match scheme.to_ascii_lowercase().as_str() {
        "sqlite" => {
            if rest.is_empty() || rest.ends_with('/') {
                return Err(Error::InvalidArgument(format!(
                    "sqlite URL {:?} names no file (use sqlite:///abs/path.db or \
                     sqlite://relative/path.db)",
                    redact(url)
                )));
            }
            if rest.contains('#') {
                return Err(Error::InvalidArgument(format!(
                    "sqlite URL {:?}: a fragment is not supported",
                    redact(url)
                )));
            }
            StoreUrl::Sqlite(PathBuf::from(rest))
        }
        "mysql" => StoreUrl::Mysql(url.to_owned()),
        "cassandra" => StoreUrl::Cassandra(url.to_owned()),
        // Only a plausible scheme is echoed: whatever precedes "://" may be half a password.
        other if is_scheme(other) => {
            return Err(Error::InvalidArgument(format!(
                "unknown store URL scheme {other:?}; expected sqlite, mysql or cassandra"
            )))
        }
        _ => {
            return Err(Error::InvalidArgument(format!(
                "store URL {:?} has no valid scheme; expected sqlite, mysql or cassandra",
                redact(url)
            )))
        }
    };
    Ok((parsed, options))
}

/// Whether `base` (a URL without its query) names a SQLite store.
fn is_sqlite(base: &str) -> bool {
    base.eq_ignore_ascii_case("sqlite")
        || base
            .get(..9)
            .is_some_and(|s| s.eq_ignore_ascii_case("sqlite://"))
}

/// The longest commit delay a URL may ask for: the delay is added to writes' latency, and
/// beyond a few milliseconds it buys nothing (docs/benchmarks.md, "Commit delay").
const MAX_COMMIT_DELAY: Duration = Duration::from_millis(50);

/// What a `sqlite` URL's query may set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SqliteUrlOptions {
    /// `commit_delay=…`: [`crate::sqlite::SqliteOptions::commit_delay`]; `None` keeps the
    /// default.
    commit_delay: Option<Duration>,
}

impl SqliteUrlOptions {
    /// Parses `key=value&…`; `url` is for errors.
    fn parse(query: &str, url: &str) -> Result<SqliteUrlOptions> {
        let mut options = SqliteUrlOptions::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "commit_delay" => {
                    options.commit_delay = Some(parse_delay(value).ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "sqlite URL {:?}: commit_delay {} is not a duration from 0 to 50ms \
                             (e.g. 0, 500us, 2ms)",
                            redact(url),
                            echo(value)
                        ))
                    })?)
                }
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "sqlite URL {:?}: unknown parameter {} (known: commit_delay)",
                        redact(url),
                        echo(other)
                    )))
                }
            }
        }
        Ok(options)
    }

    /// The options of one SQLite file named by two URLs: what either sets, and the two must
    /// agree where both set something.
    fn merge(self, other: SqliteUrlOptions) -> Result<SqliteUrlOptions> {
        let commit_delay = match (self.commit_delay, other.commit_delay) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::InvalidArgument(format!(
                    "the metadata and messages URLs name one SQLite file with different \
                     commit_delay values ({a:?} and {b:?}); set it once"
                )))
            }
            (a, b) => a.or(b),
        };
        Ok(SqliteUrlOptions { commit_delay })
    }
}

/// A URL parameter's key or value for an error message: quoted when it is a short word of
/// letters, digits and `_`, else only its length. The query is operator input that may carry
/// a secret (a password pasted in the wrong place), which must not reach logs.
fn echo(s: &str) -> String {
    if s.len() <= 32 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        format!("{s:?}")
    } else {
        format!("({} bytes, not shown)", s.len())
    }
}

/// `0`, `<n>us` or `<n>ms` (whole numbers), up to [`MAX_COMMIT_DELAY`].
fn parse_delay(value: &str) -> Option<Duration> {
    let delay = if value == "0" {
        Duration::ZERO
    } else if let Some(n) = value.strip_suffix("us") {
        Duration::from_micros(n.parse().ok()?)
    } else if let Some(n) = value.strip_suffix("ms") {
        Duration::from_millis(n.parse().ok()?)
    } else {
        return None;
    };
    (delay <= MAX_COMMIT_DELAY).then_some(delay)
}

/// The error for a backend this build leaves out.
#[allow(dead_code)] // unused when every backend feature is on
fn built_without(feature: &str) -> Error {
    Error::InvalidArgument(format!(
        "chat-storage was built without the `{feature}` feature"
    ))
}

/// A store that can be both halves, opened once and shared.
#[derive(Clone)]
struct Shared {
    /// As a metadata store.
    metadata: Arc<dyn MetadataStore>,
    /// As a message store.
    messages: Arc<dyn MessageStore>,
}

/// The identity of a parsed URL for sharing: SQLite paths made absolute, so `sqlite` and
/// `sqlite:///<data_dir>/chat.db` are one file.
fn identity(url: &StoreUrl) -> Result<StoreUrl> {
    match url {
        StoreUrl::Sqlite(p) => std::path::absolute(p)
            .map(StoreUrl::Sqlite)
            .map_err(|e| Error::InvalidArgument(format!("sqlite path {}: {e}", p.display()))),
        other => Ok(other.clone()),
    }
}

/// Opens a store that implements both traits (SQLite or MySQL).
async fn open_shared(
    url: &StoreUrl,
    sqlite: SqliteUrlOptions,
    replicas: &[String],
) -> Result<Shared> {
    match identity(url)? {
        StoreUrl::Sqlite(path) => open_sqlite(path, sqlite).await,
        StoreUrl::Mysql(url) => open_mysql(&url, replicas).await,
        StoreUrl::Cassandra(_) => Err(Error::InvalidArgument(
            "cassandra stores messages only; use sqlite or mysql:// for the metadata".to_owned(),
        )),
    }
}

/// The SQLite arm.
#[cfg(feature = "sqlite")]
async fn open_sqlite(path: PathBuf, url: SqliteUrlOptions) -> Result<Shared> {
    let mut options = crate::sqlite::SqliteOptions::default();
    if let Some(delay) = url.commit_delay {
        options.commit_delay = delay;
    }
    // Opening creates directories, may migrate the schema and fsyncs: blocking work.
    let store =
        tokio::task::spawn_blocking(move || crate::sqlite::SqliteStore::open_with(path, options))
            .await
            .map_err(|e| Error::internal("opening the sqlite store failed", e))??;
    let store = Arc::new(store);
    Ok(Shared {
        metadata: store.clone(),
        messages: store,
    })
}

/// The SQLite arm, in a build without it.
#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(_path: PathBuf, _url: SqliteUrlOptions) -> Result<Shared> {
    Err(built_without("sqlite"))
}

/// The MySQL arm: one `MysqlStore` (a primary and its replicas).
#[cfg(feature = "mysql")]
async fn open_mysql(url: &str, replicas: &[String]) -> Result<Shared> {
    let store = crate::mysql::open_from_url(url, replicas).await?;
    Ok(Shared {
        metadata: store.clone(),
        messages: store,
    })
}

/// The MySQL arm, in a build without it.
#[cfg(not(feature = "mysql"))]
async fn open_mysql(_url: &str, _replicas: &[String]) -> Result<Shared> {
    Err(built_without("mysql"))
}

/// The Cassandra arm (messages only).
#[cfg(feature = "cassandra")]
async fn open_cassandra(url: &str) -> Result<Arc<dyn MessageStore>> {
    let store = crate::cassandra::open_from_url(url).await?;
    Ok(store)
}

/// The Cassandra arm, in a build without it.
#[cfg(not(feature = "cassandra"))]
async fn open_cassandra(_url: &str) -> Result<Arc<dyn MessageStore>> {
    Err(built_without("cassandra"))
}

/// Opens the configured stores. Metadata and messages on the same SQLite file or the same MySQL
/// URL share one store.
///
/// Errors: a malformed URL, a backend this build leaves out, Cassandra as the metadata store, or
/// replicas for a non-MySQL metadata store are `InvalidArgument`; a database that cannot be
/// opened or reached is `Unavailable`.
pub async fn open(config: &StoreConfig) -> Result<Stores> {
    let (metadata_url, metadata_options) = parse_with_options(&config.metadata, &config.data_dir)?;
    let (messages_url, messages_options) = parse_with_options(&config.messages, &config.data_dir)?;
    let shared = identity(&messages_url)? == identity(&metadata_url)?;
    let metadata_options = if shared {
        metadata_options.merge(messages_options)?
    } else {
        metadata_options
    };
    if !config.metadata_replicas.is_empty() && !matches!(metadata_url, StoreUrl::Mysql(_)) {
        return Err(Error::InvalidArgument(
            "metadata replicas need a mysql:// metadata store".to_owned(),
        ));
    }
    let metadata = open_shared(&metadata_url, metadata_options, &config.metadata_replicas).await?;
    let messages: Arc<dyn MessageStore> = match &messages_url {
        StoreUrl::Cassandra(url) => open_cassandra(url).await?,
        _ if shared => Arc::clone(&metadata.messages),
        other => open_shared(other, messages_options, &[]).await?.messages,
    };
    tracing::info!(
        metadata = %redact(&config.metadata),
        messages = %redact(&config.messages),
        "stores open"
    );
    Ok(Stores {
        metadata: metadata.metadata,
        messages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/data")
    }

    #[test]
    fn sqlite_urls() {
        assert_eq!(
            parse("sqlite", &dir()).unwrap(),
            StoreUrl::Sqlite("/data/chat.db".into())
        );
        assert_eq!(
            parse(" SQLite ", &dir()).unwrap(),
            StoreUrl::Sqlite("/data/chat.db".into())
        );
        assert_eq!(
            parse("sqlite:///var/lib/chat/x.db", &dir()).unwrap(),
            StoreUrl::Sqlite("/var/lib/chat/x.db".into())
        );
        assert_eq!(
            parse("sqlite://rel/x.db", &dir()).unwrap(),
            StoreUrl::Sqlite("rel/x.db".into())
        );
        for bad in [
            "sqlite://",
            "sqlite:///",
            "sqlite://dir/",
            "sqlite://x.db?mode=ro",
            "sqlite://x.db#frag",
            "sqlite?commit_delay=",
            "sqlite?commit_delay=2",
            "sqlite?commit_delay=51ms",
            "sqlite?commit_delay=-1ms",
            "sqlite?commit_delay=1s",
        ] {
            assert!(
                matches!(parse(bad, &dir()), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn sqlite_parameters_never_echo_what_could_be_a_secret() {
        for url in [
            "sqlite?user:hunter2secret@host=1",
            "sqlite?commit_delay=hunter2secret:x@y",
            "sqlite://#\0`x://%t?sec0,\"e%\":10@d\0e=f?amlt",
        ] {
            let err = parse(url, &dir()).unwrap_err().to_string();
            assert!(
                !err.contains("hunter2secret") && !err.contains("sec0"),
                "{err}"
            );
        }
        let err = parse("sqlite?commit_dela=1ms", &dir())
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"commit_dela\""), "{err}");
    }

    #[test]
    fn sqlite_commit_delay() {
        let delay = |url: &str| parse_with_options(url, &dir()).unwrap().1.commit_delay;
        assert_eq!(delay("sqlite"), None);
        assert_eq!(delay("sqlite?commit_delay=0"), Some(Duration::ZERO));
        assert_eq!(
            delay("SQLite?commit_delay=500us"),
            Some(Duration::from_micros(500))
        );
        assert_eq!(
            delay("sqlite:///var/x.db?commit_delay=2ms"),
            Some(Duration::from_millis(2))
        );
        assert_eq!(
            parse("sqlite?commit_delay=1ms", &dir()).unwrap(),
            StoreUrl::Sqlite("/data/chat.db".into())
        );
        let one = |ms| SqliteUrlOptions {
            commit_delay: Some(Duration::from_millis(ms)),
        };
        let unset = SqliteUrlOptions::default();
        assert_eq!(one(1).merge(unset).unwrap(), one(1));
        assert_eq!(unset.merge(one(1)).unwrap(), one(1));
        assert_eq!(one(1).merge(one(1)).unwrap(), one(1));
        assert!(matches!(
            one(1).merge(one(2)),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn other_schemes() {
        let my = "mysql://chat:secret@127.0.0.1:3306/chat";
        assert_eq!(parse(my, &dir()).unwrap(), StoreUrl::Mysql(my.to_owned()));
        let cs = "cassandra://127.0.0.1,127.0.0.2:9042/chat?replication=3";
        assert_eq!(
            parse(cs, &dir()).unwrap(),
            StoreUrl::Cassandra(cs.to_owned())
        );
        for bad in ["", "postgres://x/y", "chat.db", "redis://localhost"] {
            assert!(
                matches!(parse(bad, &dir()), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn errors_never_show_passwords() {
        assert_eq!(
            redact("mysql://chat:secret@127.0.0.1:3306/chat"),
            "mysql://chat:***@127.0.0.1:3306/chat"
        );
        assert_eq!(redact("mysql://h:1/db"), "mysql://h:1/db");
        assert_eq!(redact("sqlite"), "sqlite");
        // Found by fuzzing: credentials outside the authority are masked too.
        assert_eq!(redact("mysql:/chat:secret@db/chat"), "***@db/chat");
        assert_eq!(redact("x:secret@h@y://u:pw@db"), "***@db");
        let e = parse("mysr:secret@r@\0://u:pw@db/chat", &dir()).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = parse("mysql:/chat:secret@db/chat", &dir()).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = parse("sqlite://u:secret@h/", &dir()).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let err = parse("bogus://u:hunter2@h/db", &dir()).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        let err = parse("u:hunter2@h/db", &dir()).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[cfg(feature = "sqlite")]
    /// The data pointer of an `Arc`, to tell whether two trait objects are one store.
    fn addr<T: ?Sized>(a: &Arc<T>) -> *const () {
        Arc::as_ptr(a).cast::<()>()
    }

    #[tokio::test]
    async fn cassandra_cannot_hold_metadata() {
        let mut config = StoreConfig::embedded("/nonexistent");
        config.metadata = "cassandra://127.0.0.1:9042/chat".to_owned();
        assert!(matches!(
            open(&config).await,
            Err(Error::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn replicas_need_mysql() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::embedded(tmp.path());
        config.metadata_replicas = vec!["mysql://r:1/db".to_owned()];
        assert!(matches!(
            open(&config).await,
            Err(Error::InvalidArgument(_))
        ));
    }

    #[cfg(not(feature = "mysql"))]
    #[tokio::test]
    async fn mysql_without_the_feature_is_invalid_argument() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::embedded(tmp.path());
        config.metadata = "mysql://u:p@127.0.0.1:1/db".to_owned();
        match open(&config).await {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("`mysql`"), "{m}"),
            other => panic!("expected InvalidArgument, got {:?}", other.map(|_| ())),
        }
    }

    #[cfg(not(feature = "cassandra"))]
    #[tokio::test]
    async fn cassandra_without_the_feature_is_invalid_argument() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::embedded(tmp.path());
        config.messages = "cassandra://127.0.0.1:9042/chat".to_owned();
        match open(&config).await {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("`cassandra`"), "{m}"),
            other => panic!("expected InvalidArgument, got {:?}", other.map(|_| ())),
        }
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_sqlite_file_is_one_shared_store() {
        use chat_core::{ChatId, FetchQuery, NewMessage, UserId};
        let tmp = tempfile::tempdir().unwrap();
        let stores = open(&StoreConfig::embedded(tmp.path().join("data")))
            .await
            .unwrap();
        assert_eq!(addr(&stores.metadata), addr(&stores.messages));
        assert!(tmp.path().join("data/chat.db").exists());

        // The same file named two ways is still one store.
        let explicit = format!("sqlite://{}", tmp.path().join("data/chat.db").display());
        let mut config = StoreConfig::embedded(tmp.path().join("data"));
        config.messages = explicit;
        let same = open(&config).await.unwrap();
        assert_eq!(addr(&same.metadata), addr(&same.messages));

        // Another file is another store, and both work.
        let mut config = StoreConfig::embedded(tmp.path().join("data"));
        config.messages = format!("sqlite://{}", tmp.path().join("msgs/m.db").display());
        let split = open(&config).await.unwrap();
        assert_ne!(addr(&split.metadata), addr(&split.messages));
        let appended = split
            .messages
            .append(NewMessage {
                reply_to_seq: None,
                chat_id: ChatId(1),
                sender_id: UserId(1),
                msg_text: "hi".to_owned(),
                sent_at: 1,
                timestamp: None,
                client_msg_id: None,
            })
            .await
            .unwrap();
        assert_eq!(appended.message.seq.get(), 1);
        assert!(tmp.path().join("msgs/m.db").exists());
        let page = split
            .messages
            .fetch(ChatId(1), FetchQuery::Latest { limit: 5 })
            .await
            .unwrap();
        assert_eq!(page.len(), 1);
        split.metadata.health().await.unwrap();
    }
}
