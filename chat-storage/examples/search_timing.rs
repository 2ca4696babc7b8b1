//! Search on SQLite at scale: append throughput with the search index maintained in the same
//! transaction, then `MessageStore::search` latency for a user in many chats, by how common the
//! words are. Not a test: it prints numbers (and checks a sample of answers against the
//! reference, `SearchQuery::matches`).
//!
//! Run with (or `scripts/bench.sh search [ARGS]`):
//! ```text
//! cargo run --release -p chat-storage --features sqlite,testing --example search_timing
//! ```
//! Optional arguments: `CHATS MESSAGES USER_CHATS SEARCHES` (defaults 200 1000 50 300): `CHATS`
//! chats of `MESSAGES` messages each (5 to 15 words from a vocabulary of 5,000 words with a Zipf
//! distribution, so `w0` is in about a tenth of the messages and `w4000` in a few), appended by
//! 64 tasks at once through the store (group commit); then `SEARCHES` searches of each kind by a
//! user in `USER_CHATS` of the chats, one after another, first page of 50: p50 / p99 / max.
//!
//! The append cost of the index is the difference to the same appends on the commit before
//! search (`scripts/bench.sh writes-store` on both commits, e.g. with `BENCH_LOADGEN`).
//!
//! `SEARCH_TIMING_DB=PATH` keeps the database at `PATH` instead of a temporary directory; when
//! `PATH` already exists its messages are searched as they are (no appends), so the searches of
//! a 10-million-message run can be repeated, on a quiet machine, without seeding again.

#[cfg(all(feature = "sqlite", feature = "testing"))]
mod timing {
    use chat_core::{ChatId, MessageStore, NewMessage, SearchQuery, UserId};
    use chat_storage::sqlite::SqliteStore;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::time::{Duration, Instant};

    /// Makes one query of a kind.
    type MakeQuery = Box<dyn Fn(&mut StdRng) -> String>;

    /// Words in the vocabulary.
    const VOCABULARY: usize = 5_000;

    /// What the command line asks for.
    struct Params {
        chats: usize,
        messages: usize,
        user_chats: usize,
        searches: usize,
    }

    fn params() -> Params {
        let args: Vec<usize> = std::env::args()
            .skip(1)
            .map(|a| a.parse().expect("arguments are numbers"))
            .collect();
        let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
        Params {
            chats: arg(0, 200),
            messages: arg(1, 1000),
            user_chats: arg(2, 50),
            searches: arg(3, 300),
        }
    }

    /// A word index with a Zipf(1) distribution over the vocabulary.
    fn zipf(rng: &mut StdRng, cdf: &[f64]) -> usize {
        let x: f64 = rng.gen();
        cdf.partition_point(|&c| c < x).min(cdf.len() - 1)
    }

    /// p50, p99 and max of `d`, in ms.
    fn summary(mut d: Vec<Duration>) -> String {
        d.sort_unstable();
        let at = |q: f64| d[((d.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
        format!(
            "p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            at(0.5),
            at(0.99),
            at(1.0)
        )
    }

    pub async fn run() {
        let p = params();
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, reuse) = match std::env::var_os("SEARCH_TIMING_DB") {
            Some(p) => {
                let p = std::path::PathBuf::from(p);
                let exists = p.exists();
                (p, exists)
            }
            None => (dir.path().join("search.db"), false),
        };
        let store = SqliteStore::open(&path).expect("open sqlite");
        let weights: Vec<f64> = (0..VOCABULARY).map(|i| 1.0 / (i as f64 + 1.0)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf: Vec<f64> = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();

        if reuse {
            println!("appends: none, searching {} as it is", path.display());
        } else {
            append_all(&store, &p, &cdf).await;
        }
        search_all(&store, &p).await;
        store.close().await.expect("close");
    }

    /// Appends `chats * messages` messages: 64 tasks, each its share of every chat's messages.
    async fn append_all(store: &SqliteStore, p: &Params, cdf: &[f64]) {
        let n = p.chats * p.messages;
        let tasks = 64;
        let started = Instant::now();
        let mut handles = Vec::new();
        for t in 0..tasks {
            let store = store.clone();
            let cdf = cdf.to_vec();
            let chats = p.chats;
            handles.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(t as u64);
                let mut lat = Vec::new();
                for i in (t..n).step_by(tasks) {
                    let words = rng.gen_range(5..=15);
                    let text: Vec<String> = (0..words)
                        .map(|_| format!("w{}", zipf(&mut rng, &cdf)))
                        .collect();
                    let at = Instant::now();
                    store
                        .append(NewMessage {
                            reply_to_seq: None,
                            chat_id: ChatId((i % chats) as i64 + 1),
                            sender_id: UserId(1),
                            msg_text: text.join(" "),
                            sent_at: 1_700_000_000_000 + i as i64,
                            timestamp: None,
                            client_msg_id: None,
                        })
                        .await
                        .expect("append");
                    lat.push(at.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::with_capacity(n);
        for h in handles {
            lat.extend(h.await.expect("append task"));
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "appends: {n} in {secs:.1} s = {:.0}/s (64 concurrent)  latency {}",
            n as f64 / secs,
            summary(lat)
        );
    }

    /// The searches by a user in `user_chats` of the chats, by kind of query.
    async fn search_all(store: &SqliteStore, p: &Params) {
        let mut rng = StdRng::seed_from_u64(99);
        let mut mine: Vec<ChatId> = (1..=p.chats as i64).map(ChatId).collect();
        for i in (1..mine.len()).rev() {
            mine.swap(i, rng.gen_range(0..=i));
        }
        mine.truncate(p.user_chats);
        let kinds: [(&str, MakeQuery); 5] = [
            (
                "common word (w0..w9)",
                Box::new(|r| format!("w{}", r.gen_range(0..10))),
            ),
            (
                "medium word (w100..w199)",
                Box::new(|r| format!("w{}", r.gen_range(100..200))),
            ),
            (
                "rare word (w3000..w4999)",
                Box::new(|r| format!("w{}", r.gen_range(3000..5000))),
            ),
            (
                "two common words",
                Box::new(|r| format!("W{} w{}", r.gen_range(0..10), r.gen_range(10..30))),
            ),
            (
                "common + rare word",
                Box::new(|r| format!("w{} w{}", r.gen_range(0..10), r.gen_range(3000..5000))),
            ),
        ];
        for (name, make) in &kinds {
            let mut lat = Vec::with_capacity(p.searches);
            let mut hits = 0usize;
            for i in 0..p.searches {
                let query = SearchQuery::parse(&make(&mut rng)).expect("query");
                let at = Instant::now();
                let found = store.search(&mine, &query, None, 50).await.expect("search");
                lat.push(at.elapsed());
                hits += found.len();
                if i % 50 == 0 {
                    assert!(found.iter().all(|m| query.matches(&m.msg_text)));
                }
            }
            println!(
                "search {name:<26} {}  ({:.1} results/page)",
                summary(lat),
                hits as f64 / p.searches as f64
            );
        }
    }
}

#[cfg(all(feature = "sqlite", feature = "testing"))]
fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(timing::run());
}

#[cfg(not(all(feature = "sqlite", feature = "testing")))]
fn main() {
    eprintln!("needs --features sqlite,testing");
}
