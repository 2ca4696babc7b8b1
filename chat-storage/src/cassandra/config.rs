//! [`CassandraConfig`]: where the cluster is and how the message store uses it, parsed from a
//! `cassandra://` URL.
//!
//! ```text
//! cassandra://127.0.0.1,127.0.0.2,127.0.0.3:9042/chat?replication_factor=3&consistency=quorum
//! ```
//!
//! Hosts are separated by commas; a host without a port takes the port written after the last
//! host (or 9042), because every node of one cluster listens on the same native port. The path is
//! the keyspace (default `chat`). Query parameters, all optional:
//!
//! | parameter | default | meaning |
//! | --- | --- | --- |
//! | `replication_strategy` | `SimpleStrategy` | or `NetworkTopologyStrategy` |
//! | `replication_factor` (or `replication`) | `1` | replicas of every row (in `datacenter` for NTS) |
//! | `datacenter` | `datacenter1` | the data center NTS replicates into |
//! | `consistency` | `quorum` | reads and writes: `one`, `two`, `three`, `quorum`, `all`, `local_quorum`, `local_one`, `each_quorum` |
//! | `serial` | `serial` | serial consistency of the lightweight transactions: `serial` or `local_serial` |
//! | `bucket_size` | `10000` | messages per partition; fixed when the keyspace is created |
//! | `max_in_flight` | `256` | requests this store has outstanding at once |
//! | `max_claim` | `64` | most appends of one chat claimed by one lightweight transaction (1: one LWT per message) |
//! | `request_timeout_ms` | `15000` | client-side timeout of one request |
//! | `connect_timeout_ms` | `10000` | timeout of one connection attempt |
//!
//! The replication settings only matter when the keyspace is created; the keyspace of an existing
//! deployment is never altered by a store that connects to it.

use chat_core::{Error, Result};
use scylla::frame::types::{Consistency, SerialConsistency};
use std::time::Duration;

/// Messages per partition when the URL does not say: 10 000 messages of ~100 bytes keep a
/// partition near 1 MB, far below the sizes where Cassandra partitions get slow, while a page
/// of up to 500 messages touches at most two partitions.
pub const DEFAULT_BUCKET_SIZE: i64 = 10_000;

/// The most appends one claim may carry: the chat's head row holds them until the next claim,
/// so this bounds that row (64 texts of at most 4 KiB: 256 KiB, far below Cassandra's limits).
pub const MAX_CLAIM: usize = 64;

/// The native-protocol port every node listens on unless the URL says otherwise.
pub const DEFAULT_PORT: u16 = 9042;

/// How the keyspace replicates, used only when the store creates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replication {
    /// `SimpleStrategy` with this many replicas (one data center, e.g. a test cluster).
    Simple {
        /// Replicas of every row.
        factor: u32,
    },
    /// `NetworkTopologyStrategy` with this many replicas in one named data center.
    NetworkTopology {
        /// The data center's name as the snitch reports it.
        datacenter: String,
        /// Replicas of every row in that data center.
        factor: u32,
    },
}

impl Replication {
    /// The CQL map literal of this replication, for `CREATE KEYSPACE`.
    pub(crate) fn cql(&self) -> String {
        match self {
            Replication::Simple { factor } => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {factor}}}")
            }
            Replication::NetworkTopology { datacenter, factor } => {
                format!("{{'class': 'NetworkTopologyStrategy', '{datacenter}': {factor}}}")
            }
        }
    }
}

/// Everything [`CassandraMessageStore::connect`](super::CassandraMessageStore::connect) needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CassandraConfig {
    /// Contact points as `host:port`; the driver discovers the rest of the ring from them.
    pub nodes: Vec<String>,
    /// The keyspace holding the message tables (created if missing).
    pub keyspace: String,
    /// Replication of the keyspace when this store creates it.
    pub replication: Replication,
    /// Consistency of every read and write (and of the commit phase of the LWTs).
    pub consistency: Consistency,
    /// Serial consistency of the lightweight transactions that hand out `seq`.
    pub serial_consistency: SerialConsistency,
    /// Messages per partition. `None` takes the keyspace's stored value, or
    /// [`DEFAULT_BUCKET_SIZE`] for a new keyspace; a value that differs from the stored one is an
    /// error, because it would move existing messages to other partitions.
    pub bucket_size: Option<i64>,
    /// Requests this store has in flight at once; more wait for a permit.
    pub max_in_flight: usize,
    /// Most queued appends of one chat that one lightweight transaction claims (group commit);
    /// 1 makes every message its own LWT. At most [`MAX_CLAIM`].
    pub max_claim: usize,
    /// Client-side timeout of one request.
    pub request_timeout: Duration,
    /// Timeout of one connection attempt.
    pub connect_timeout: Duration,
}

impl CassandraConfig {
    /// A config for one cluster and keyspace with every other setting at its default.
    pub fn new(nodes: Vec<String>, keyspace: impl Into<String>) -> Self {
        CassandraConfig {
            nodes,
            keyspace: keyspace.into(),
            replication: Replication::Simple { factor: 1 },
            consistency: Consistency::Quorum,
            serial_consistency: SerialConsistency::Serial,
            bucket_size: None,
            max_in_flight: 256,
            max_claim: 64,
            request_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Parses a `cassandra://` URL (see the module doc). Anything malformed is
    /// [`Error::InvalidArgument`] naming the problem.
    pub fn from_url(url: &str) -> Result<Self> {
        let bad = |why: &str| Error::InvalidArgument(format!("cassandra URL: {why}"));
        let rest = url
            .strip_prefix("cassandra://")
            .ok_or_else(|| bad("must start with cassandra://"))?;
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.split_once('/') {
            Some((a, p)) => (a, p),
            None => (before_query, ""),
        };
        let nodes = parse_hosts(authority).map_err(|why| bad(&why))?;
        let keyspace = if path.is_empty() { "chat" } else { path };
        validate_keyspace(keyspace).map_err(|why| bad(&why))?;
        let mut config = CassandraConfig::new(nodes, keyspace);

        let mut strategy = "SimpleStrategy".to_owned();
        let mut factor: u32 = 1;
        let mut datacenter = "datacenter1".to_owned();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad(&format!("parameter '{pair}' has no value")))?;
            match key {
                "replication_strategy" => strategy = value.to_owned(),
                "replication_factor" | "replication" => {
                    factor = value
                        .parse()
                        .ok()
                        .filter(|f| (1..=15).contains(f))
                        .ok_or_else(|| bad("replication_factor must be 1..=15"))?;
                }
                "datacenter" => {
                    if value.is_empty()
                        || !value
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        return Err(bad("datacenter must be letters, digits, '_' or '-'"));
                    }
                    datacenter = value.to_owned();
                }
                "consistency" => {
                    config.consistency = parse_consistency(value)
                        .ok_or_else(|| bad(&format!("unknown consistency '{value}'")))?;
                }
                "serial" | "serial_consistency" => {
                    config.serial_consistency = match value.to_ascii_lowercase().as_str() {
                        "serial" => SerialConsistency::Serial,
                        "local_serial" => SerialConsistency::LocalSerial,
                        _ => return Err(bad(&format!("unknown serial consistency '{value}'"))),
                    };
                }
                "bucket_size" => {
                    config.bucket_size = Some(
                        value
                            .parse()
                            .ok()
                            .filter(|b| (1..=1_000_000_000).contains(b))
                            .ok_or_else(|| bad("bucket_size must be 1..=1000000000"))?,
                    );
                }
                "max_in_flight" => {
                    config.max_in_flight = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=65_536).contains(n))
                        .ok_or_else(|| bad("max_in_flight must be 1..=65536"))?;
                }
                "max_claim" => {
                    config.max_claim = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_CLAIM).contains(n))
                        .ok_or_else(|| bad("max_claim must be 1..=64"))?;
                }
                "request_timeout_ms" => {
                    config.request_timeout = parse_millis(value)
                        .ok_or_else(|| bad("request_timeout_ms must be 1..=600000"))?;
                }
                "connect_timeout_ms" => {
                    config.connect_timeout = parse_millis(value)
                        .ok_or_else(|| bad("connect_timeout_ms must be 1..=600000"))?;
                }
                other => return Err(bad(&format!("unknown parameter '{other}'"))),
            }
        }
        config.replication = match strategy.as_str() {
            "SimpleStrategy" | "simple" => Replication::Simple { factor },
            "NetworkTopologyStrategy" | "network_topology" => {
                Replication::NetworkTopology { datacenter, factor }
            }
            other => return Err(bad(&format!("unknown replication_strategy '{other}'"))),
        };
        Ok(config)
    }
}

/// Splits `h1,h2:9042` into `["h1:9042", "h2:9042"]`; `[::1]:9042` style IPv6 is accepted.
fn parse_hosts(authority: &str) -> Result<Vec<String>, String> {
    if authority.is_empty() {
        return Err("no hosts".to_owned());
    }
    let mut hosts: Vec<(String, Option<u16>)> = Vec::new();
    for part in authority.split(',') {
        let (host, port) = split_host_port(part)?;
        hosts.push((host, port));
    }
    // A host without a port takes the last port written, so `h1,h2,h3:9042` means all on 9042.
    let default_port = hosts
        .iter()
        .rev()
        .find_map(|(_, p)| *p)
        .unwrap_or(DEFAULT_PORT);
    Ok(hosts
        .into_iter()
        .map(|(h, p)| format!("{h}:{}", p.unwrap_or(default_port)))
        .collect())
}

/// One `host[:port]` (or `[v6]:port`).
fn split_host_port(part: &str) -> Result<(String, Option<u16>), String> {
    let bad_port = |p: &str| format!("bad port '{p}'");
    if let Some(rest) = part.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in '{part}'"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse::<u16>().map_err(|_| bad_port(p))?),
            None if after.is_empty() => None,
            None => return Err(format!("bad host '{part}'")),
        };
        return Ok((format!("[{host}]"), port));
    }
    let (host, port) = match part.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| bad_port(p))?)),
        None => (part, None),
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return Err(format!("bad host '{part}'"));
    }
    if port == Some(0) {
        return Err(bad_port("0"));
    }
    Ok((host.to_owned(), port))
}

/// Keyspace names go into DDL text, so only Cassandra's unquoted identifiers are accepted.
pub(crate) fn validate_keyspace(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "keyspace '{name}' must be 1..=48 letters, digits or '_', starting with a letter"
        ))
    }
}

/// A consistency level by its CQL name, any case.
fn parse_consistency(s: &str) -> Option<Consistency> {
    Some(match s.to_ascii_lowercase().as_str() {
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        _ => return None,
    })
}

/// Milliseconds in `1..=600000`.
fn parse_millis(s: &str) -> Option<Duration> {
    s.parse::<u64>()
        .ok()
        .filter(|ms| (1..=600_000).contains(ms))
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_url_takes_defaults() {
        let c = CassandraConfig::from_url("cassandra://127.0.0.1").unwrap();
        assert_eq!(c.nodes, vec!["127.0.0.1:9042"]);
        assert_eq!(c.keyspace, "chat");
        assert_eq!(c.replication, Replication::Simple { factor: 1 });
        assert_eq!(c.consistency, Consistency::Quorum);
        assert_eq!(c.serial_consistency, SerialConsistency::Serial);
        assert_eq!(c.bucket_size, None);
        assert_eq!(c.max_in_flight, 256);
    }

    #[test]
    fn full_url() {
        let c = CassandraConfig::from_url(
            "cassandra://127.0.0.1,127.0.0.2,127.0.0.3:9043/msgs?replication_factor=3\
             &consistency=LOCAL_QUORUM&serial=local_serial&bucket_size=500&max_in_flight=8\
             &request_timeout_ms=2000&connect_timeout_ms=1000&max_claim=1",
        )
        .unwrap();
        assert_eq!(
            c.nodes,
            vec!["127.0.0.1:9043", "127.0.0.2:9043", "127.0.0.3:9043"]
        );
        assert_eq!(c.keyspace, "msgs");
        assert_eq!(c.replication, Replication::Simple { factor: 3 });
        assert_eq!(c.consistency, Consistency::LocalQuorum);
        assert_eq!(c.serial_consistency, SerialConsistency::LocalSerial);
        assert_eq!(c.bucket_size, Some(500));
        assert_eq!(c.max_in_flight, 8);
        assert_eq!(c.max_claim, 1);
        assert_eq!(c.request_timeout, Duration::from_millis(2000));
        assert_eq!(c.connect_timeout, Duration::from_millis(1000));
    }

    #[test]
    fn per_host_ports_ipv6_and_network_topology() {
        let c = CassandraConfig::from_url(
            "cassandra://a.example:9000,[::1]:9001,b/ks_1?replication_strategy=NetworkTopologyStrategy\
             &datacenter=dc-east&replication_factor=2",
        )
        .unwrap();
        assert_eq!(c.nodes, vec!["a.example:9000", "[::1]:9001", "b:9001"]);
        assert_eq!(
            c.replication,
            Replication::NetworkTopology {
                datacenter: "dc-east".into(),
                factor: 2
            }
        );
        assert_eq!(
            c.replication.cql(),
            "{'class': 'NetworkTopologyStrategy', 'dc-east': 2}"
        );
        assert_eq!(
            Replication::Simple { factor: 3 }.cql(),
            "{'class': 'SimpleStrategy', 'replication_factor': 3}"
        );
    }

    #[test]
    fn bad_urls_are_invalid_argument() {
        for url in [
            "",
            "mysql://x/y",
            "cassandra://",
            "cassandra:///ks",
            "cassandra://h:notaport/ks",
            "cassandra://h:0/ks",
            "cassandra://h:70000/ks",
            "cassandra://h/1starts_with_digit",
            "cassandra://h/has-dash",
            "cassandra://h/ks;DROP",
            "cassandra://h/ks?replication_factor=0",
            "cassandra://h/ks?replication_factor=x",
            "cassandra://h/ks?consistency=serial",
            "cassandra://h/ks?serial=quorum",
            "cassandra://h/ks?bucket_size=0",
            "cassandra://h/ks?bucket_size=-5",
            "cassandra://h/ks?max_in_flight=0",
            "cassandra://h/ks?max_claim=0",
            "cassandra://h/ks?max_claim=65",
            "cassandra://h/ks?request_timeout_ms=0",
            "cassandra://h/ks?nonsense=1",
            "cassandra://h/ks?novalue",
            "cassandra://h/ks?replication_strategy=Other",
            "cassandra://h/ks?datacenter=a'b",
            "cassandra://[::1/ks",
            "cassandra://h h/ks",
        ] {
            match CassandraConfig::from_url(url) {
                Err(Error::InvalidArgument(_)) => {}
                other => panic!("{url:?} gave {other:?}"),
            }
        }
        let long = format!("cassandra://h/{}", "k".repeat(49));
        assert!(CassandraConfig::from_url(&long).is_err());
    }
}
