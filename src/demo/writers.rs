//! The demo's load and its live writers. Every write is retried with the
//! same value until the cluster acknowledges it, and recorded in the
//! [`Ledger`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shardflow_node::client::Client;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::ledger::{value, Ledger};
use super::DemoError;

/// How long one key may stay unacknowledged before the demo gives up.
const WRITE_GIVE_UP: Duration = Duration::from_secs(60);

/// The demo's key number `i`.
pub fn key(i: u64) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

/// Writes `value` to `key` until acknowledged, recording it; gives up after
/// [`WRITE_GIVE_UP`], or when `stop` says so between tries (then `false`).
async fn put_until_acked(
    client: &Client,
    ledger: &Ledger,
    key: &[u8],
    seq: u64,
    pad: usize,
    stop: Option<&watch::Receiver<Mode>>,
) -> Result<bool, DemoError> {
    let value = value(seq, pad);
    ledger.sending(key, seq);
    let started = Instant::now();
    loop {
        match client.put(key, &value).await {
            Ok(()) => {
                ledger.acked(key, seq);
                return Ok(true);
            }
            Err(error) if started.elapsed() >= WRITE_GIVE_UP => {
                return Err(DemoError::Write {
                    key: String::from_utf8_lossy(key).into_owned(),
                    error: Box::new(error),
                })
            }
            Err(error) => {
                tracing::debug!(%error, "write not acknowledged, retrying");
                if stop.is_some_and(|mode| *mode.borrow() == Mode::Stop) {
                    return Ok(false);
                }
            }
        }
    }
}

/// Loads keys `0..total` (value seq 1) with `concurrency` writers in
/// flight; `done` counts the acknowledged ones as they come.
pub async fn load(
    client: &Client,
    ledger: &Arc<Ledger>,
    total: u64,
    concurrency: usize,
    pad: usize,
    done: &Arc<AtomicU64>,
) -> Result<(), DemoError> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (client, ledger) = (client.clone(), Arc::clone(ledger));
        let (next, done) = (Arc::clone(&next), Arc::clone(done));
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok(());
                }
                put_until_acked(&client, &ledger, &key(i), 1, pad, None).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    join_all(tasks).await
}

/// Waits for every task; the first error (or panic) wins.
async fn join_all(mut tasks: JoinSet<Result<(), DemoError>>) -> Result<(), DemoError> {
    let mut first = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let outcome = match joined {
            Ok(outcome) => outcome,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(DemoError::Stopped("a writer was cancelled")),
        };
        if first.is_ok() {
            if let Err(error) = outcome {
                tasks.abort_all();
                first = Err(error);
            }
        }
    }
    first
}

/// How hard the live writers push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every writer runs: the moving vShard takes a write load large enough
    /// that CatchUp has a backlog to work through.
    Heavy,
    /// One writer on the moving vShard and the background writers.
    Light,
    /// Finish the write in flight and stop.
    Stop,
}

/// The live writers: on the moving vShard (one always, the others only in
/// [`Mode::Heavy`]) and on keys elsewhere.
pub struct LiveWriters {
    mode: watch::Sender<Mode>,
    tasks: JoinSet<Result<(), DemoError>>,
    /// The slowest acknowledged write to the moving vShard, retries
    /// included (what a client saw of the cut-over), in microseconds.
    worst_moving_us: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
    /// Keys each writer owns (no key has two writers).
    pub moving_keys: usize,
}

/// One live writer's keys and role.
struct WriterPlan {
    keys: Vec<Vec<u8>>,
    /// Runs only in heavy mode.
    heavy_only: bool,
    /// Writes the moving vShard (its latencies are recorded).
    moving: bool,
}

impl LiveWriters {
    /// Starts `moving_writers` writers over `moving_keys` (split so each key
    /// has one writer) and `background_writers` over `background_keys`.
    pub fn start(
        client: &Client,
        ledger: &Arc<Ledger>,
        moving_keys: Vec<Vec<u8>>,
        moving_writers: usize,
        background_keys: Vec<Vec<u8>>,
        background_writers: usize,
        pad: usize,
    ) -> Self {
        let (mode, watcher) = watch::channel(Mode::Heavy);
        let worst_moving_us = Arc::new(AtomicU64::new(0));
        let writes = Arc::new(AtomicU64::new(0));
        let moving_count = moving_keys.len();
        let mut plans = split(moving_keys, moving_writers)
            .into_iter()
            .enumerate()
            .map(|(i, keys)| WriterPlan {
                keys,
                heavy_only: i > 0,
                moving: true,
            })
            .collect::<Vec<_>>();
        plans.extend(
            split(background_keys, background_writers)
                .into_iter()
                .map(|keys| WriterPlan {
                    keys,
                    heavy_only: false,
                    moving: false,
                }),
        );
        let mut tasks = JoinSet::new();
        for plan in plans.into_iter().filter(|plan| !plan.keys.is_empty()) {
            let (client, ledger) = (client.clone(), Arc::clone(ledger));
            let (watcher, worst) = (watcher.clone(), Arc::clone(&worst_moving_us));
            let writes = Arc::clone(&writes);
            tasks.spawn(async move {
                write_loop(client, ledger, plan, watcher, worst, writes, pad).await
            });
        }
        Self {
            mode,
            tasks,
            worst_moving_us,
            writes,
            moving_keys: moving_count,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        // Fails only when every writer ended: nothing to tell.
        let _ = self.mode.send(mode);
    }

    /// Live writes acknowledged so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Stops the writers (each finishes its write in flight); the first
    /// error of any writer.
    pub async fn stop(self) -> Result<LiveFigures, DemoError> {
        self.set_mode(Mode::Stop);
        join_all(self.tasks).await?;
        Ok(LiveFigures {
            writes: self.writes.load(Ordering::Relaxed),
            worst_moving_write_us: self.worst_moving_us.load(Ordering::Relaxed),
        })
    }
}

/// What the live writers did.
#[derive(Clone, Copy, Debug)]
pub struct LiveFigures {
    pub writes: u64,
    pub worst_moving_write_us: u64,
}

async fn write_loop(
    client: Client,
    ledger: Arc<Ledger>,
    plan: WriterPlan,
    mut mode: watch::Receiver<Mode>,
    worst: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
    pad: usize,
) -> Result<(), DemoError> {
    let mut seqs: Vec<u64> = plan.keys.iter().map(|k| ledger.last_acked(k)).collect();
    for i in (0..plan.keys.len()).cycle() {
        loop {
            let current = *mode.borrow_and_update();
            match current {
                Mode::Stop => return Ok(()),
                Mode::Light if plan.heavy_only => {
                    if mode.changed().await.is_err() {
                        return Ok(());
                    }
                }
                Mode::Heavy | Mode::Light => break,
            }
        }
        let seq = seqs[i] + 1;
        let started = Instant::now();
        if !put_until_acked(&client, &ledger, &plan.keys[i], seq, pad, Some(&mode)).await? {
            return Ok(());
        }
        seqs[i] = seq;
        writes.fetch_add(1, Ordering::Relaxed);
        if plan.moving {
            let took = started.elapsed().as_micros() as u64;
            worst.fetch_max(took, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// `items` dealt round robin into `parts` non-empty lists (fewer if there
/// are fewer items).
fn split(items: Vec<Vec<u8>>, parts: usize) -> Vec<Vec<Vec<u8>>> {
    let parts = parts.clamp(1, items.len().max(1));
    let mut out = vec![Vec::new(); parts];
    for (i, item) in items.into_iter().enumerate() {
        out[i % parts].push(item);
    }
    out.retain(|part| !part.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_dealt_to_one_writer_each() {
        let items: Vec<Vec<u8>> = (0..5).map(key).collect();
        let parts = split(items.clone(), 2);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], vec![key(0), key(2), key(4)]);
        assert_eq!(split(items.clone(), 9).len(), 5);
        assert!(split(Vec::new(), 3).is_empty());
        assert_eq!(key(7), b"key-000007".to_vec());
    }
}
