//! The client-side oracle of DESIGN §5: writers record every acknowledged
//! write, readers check each read against what was acknowledged before it
//! began, and the final checks compare the cluster with the record.
//!
//! A value is `"<seq>:<padding>"`, its seq growing per key. A writer never
//! moves past a write until it is acknowledged (it retries the same key and
//! value), so after it stops, each key's value must be exactly its last
//! acknowledged one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardflow::node::client::Client;
use shardflow::node::vshard::vshard_of;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// `count` keys of `vshard` (`prefix-N` for growing N).
pub fn keys_of(prefix: &str, vshard: u16, count: usize) -> Vec<Vec<u8>> {
    (0u64..)
        .map(|i| format!("{prefix}-{i}").into_bytes())
        .filter(|key| vshard_of(key) == vshard)
        .take(count)
        .collect()
}

pub fn value(seq: u64, pad: usize) -> Vec<u8> {
    let mut value = format!("{seq}:").into_bytes();
    value.resize(value.len() + pad, b'x');
    value
}

fn seq_of(value: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(value);
    let digits = text.split(':').next().unwrap_or_default();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("value {text:?} is not one the oracle wrote"))
}

/// What was acknowledged, per key, and counters.
#[derive(Default)]
pub struct Oracle {
    acked: Mutex<BTreeMap<Vec<u8>, u64>>,
    /// The highest seq ever sent per key (acknowledged or not).
    sent: Mutex<BTreeMap<Vec<u8>, u64>>,
    pub writes: AtomicU64,
    pub reads: AtomicU64,
    stop: AtomicBool,
}

impl Oracle {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Writes `keys` (values of `pad` bytes) until acknowledged, recording each.
    pub async fn load(&self, client: &Client, keys: &[Vec<u8>], pad: usize) {
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in keys.chunks(keys.len().div_ceil(16).max(1)) {
            let (client, chunk) = (client.clone(), chunk.to_vec());
            tasks.spawn(async move {
                for key in chunk {
                    put_until_acked(&client, &key, &value(1, pad)).await;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("load task");
        }
        let mut acked = self.acked.lock().unwrap();
        let mut sent = self.sent.lock().unwrap();
        for key in keys {
            acked.insert(key.clone(), 1);
            sent.insert(key.clone(), 1);
        }
    }

    /// A writer over `keys`, round robin, until [`Oracle::stop`].
    pub fn spawn_writer(self: &Arc<Self>, client: Client, keys: Vec<Vec<u8>>) -> JoinHandle<()> {
        let oracle = Arc::clone(self);
        tokio::spawn(async move {
            let mut i = 0usize;
            while !oracle.stop.load(Ordering::SeqCst) {
                let key = &keys[i % keys.len()];
                i += 1;
                let seq = {
                    let mut sent = oracle.sent.lock().unwrap();
                    let seq = sent.get(key).copied().unwrap_or(0) + 1;
                    sent.insert(key.clone(), seq);
                    seq
                };
                put_until_acked(&client, key, &value(seq, 8)).await;
                oracle.acked.lock().unwrap().insert(key.clone(), seq);
                oracle.writes.fetch_add(1, Ordering::Relaxed);
            }
        })
    }

    /// A reader over `keys` checking invariant 6 on every read: never a
    /// value older than one acknowledged before the read began, never one
    /// that was not written.
    pub fn spawn_reader(self: &Arc<Self>, client: Client, keys: Vec<Vec<u8>>) -> JoinHandle<()> {
        let oracle = Arc::clone(self);
        tokio::spawn(async move {
            let mut i = 0usize;
            while !oracle.stop.load(Ordering::SeqCst) {
                let key = &keys[(i * 7) % keys.len()];
                i += 1;
                let floor = oracle.acked.lock().unwrap().get(key).copied();
                let Ok(got) = client.get(key).await else {
                    continue; // unavailable for a moment: not a read
                };
                let ceiling = oracle.sent.lock().unwrap().get(key).copied();
                let seq = got.as_deref().map(seq_of);
                if let Some(floor) = floor {
                    assert!(
                        seq.is_some_and(|s| s >= floor),
                        "stale read of {}: got seq {seq:?}, seq {floor} was acknowledged \
                         before the read began (invariant 6)",
                        String::from_utf8_lossy(key)
                    );
                }
                assert!(
                    seq <= ceiling,
                    "read of {} returned seq {seq:?}, never written (highest sent {ceiling:?})",
                    String::from_utf8_lossy(key)
                );
                oracle.reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Invariant 1: every key reads back its last acknowledged value.
    pub async fn check_all_readable(&self, client: &Client) {
        let acked = self.acked.lock().unwrap().clone();
        for (key, seq) in &acked {
            let got = get_until_answered(client, key).await;
            assert_eq!(
                got.as_deref().map(seq_of),
                Some(*seq),
                "key {} lost its last acknowledged write (invariant 1)",
                String::from_utf8_lossy(key)
            );
        }
    }

    /// Invariant 5: a scan of `vshard` has each of its keys exactly once,
    /// with its last acknowledged value, and nothing else.
    pub async fn check_scan(&self, client: &Client, vshard: u16) {
        let pairs = client.scan_vshard(vshard).await.expect("scan");
        let mut seen: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for (key, value) in &pairs {
            let again = seen.insert(key.clone(), seq_of(value));
            assert!(
                again.is_none(),
                "scan of vShard {vshard} returned {} twice (invariant 5)",
                String::from_utf8_lossy(key)
            );
        }
        let expected: BTreeMap<Vec<u8>, u64> = (self.acked.lock().unwrap().iter())
            .filter(|(key, _)| vshard_of(key) == vshard)
            .map(|(k, s)| (k.clone(), *s))
            .collect();
        assert_eq!(
            seen.len(),
            expected.len(),
            "scan of vShard {vshard}: {} keys, {} acknowledged (invariant 5)",
            seen.len(),
            expected.len()
        );
        assert!(
            seen == expected,
            "scan of vShard {vshard} differs from the record"
        );
    }
}

async fn put_until_acked(client: &Client, key: &[u8], value: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.put(key, value).await {
            Ok(()) => return,
            Err(error) => assert!(
                Instant::now() < deadline,
                "write of {} never acknowledged: {error}",
                String::from_utf8_lossy(key)
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get_until_answered(client: &Client, key: &[u8]) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.get(key).await {
            Ok(value) => return value,
            Err(error) => assert!(
                Instant::now() < deadline,
                "read of {} never answered: {error}",
                String::from_utf8_lossy(key)
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
