//! Migration benchmark on a 3-node loopback cluster (real QUIC, real redb,
//! the migration workflows installed as `shardflow node` installs them),
//! printed as one JSON object.
//!
//! `cargo run --release --example migration_bench [-- MIGRATIONS]`
//!
//! One vShard holding 2,000 keys of 100 bytes moves back and forth between
//! two groups MIGRATIONS times (default 10) while two writers run: one on
//! the moving vShard, one on a vShard that stays put. It reports the write
//! pause each cut-over measured and journaled (fence applied -> target
//! accepting; p50, p99, max), the stay-put writer's single-write latency
//! from the same run (p50, p99), the moving writer's worst write, the
//! duration of a migration, and the ratio of the pause p50 to the write p99.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardflow::node::certs::write_cluster_certs;
use shardflow::node::client::{Client, ClientConfig};
use shardflow::node::server::{Node, NodeConfig};
use shardflow::node::vshard::vshard_of;
use shardflow::steps::progress::progress;
use shardflow::workflow::Phase;

const KEYS: usize = 2_000;
const VALUE_BYTES: usize = 100;
const MOVING: u16 = 100;
const STAYING: u16 = 900;

async fn cluster(dir: &std::path::Path) -> (Vec<Node>, Client) {
    let certs = dir.join("certs");
    write_cluster_certs(&certs, &[1, 2, 3]).expect("certs");
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let mut config = NodeConfig::new(
            id,
            "127.0.0.1:0".parse().expect("addr"),
            dir.join(format!("n{id}")),
            certs.clone(),
        );
        config.migration.ghost_ttl = Duration::from_millis(200);
        config.migration.reactor_interval = Duration::from_millis(50);
        let node = Node::start(config).await.expect("node");
        shardflow::steps::launcher::install(&node);
        node.resume_workflows().await.expect("resume");
        nodes.push(node);
    }
    let seeds: Vec<String> = nodes.iter().map(|n| n.local_addr().to_string()).collect();
    let client = Client::from_certs_dir(&certs, ClientConfig::new(seeds)).expect("client");
    let members: Vec<(u64, String)> = nodes
        .iter()
        .map(|n| (n.id(), n.local_addr().to_string()))
        .collect();
    client.bootstrap(members, 2, 3).await.expect("bootstrap");
    client
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("ready");
    (nodes, client)
}

fn keys_of(vshard: u16, count: usize) -> Vec<Vec<u8>> {
    (0u64..)
        .map(|i| format!("key-{i}").into_bytes())
        .filter(|key| vshard_of(key) == vshard)
        .take(count)
        .collect()
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

/// Writes `keys` round robin until `stop`, recording each write's latency
/// in microseconds.
fn writer(
    client: Client,
    keys: Vec<Vec<u8>>,
    stop: Arc<AtomicBool>,
    latencies: Arc<Mutex<Vec<f64>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            client
                .put(&keys[i % keys.len()], &[9; VALUE_BYTES])
                .await
                .expect("write acknowledged");
            let took = started.elapsed().as_secs_f64() * 1e6;
            latencies.lock().expect("latencies").push(took);
            i += 1;
        }
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let migrations: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("MIGRATIONS is a number"))
        .unwrap_or(10);
    let dir = tempfile::tempdir().expect("tempdir");
    let (nodes, client) = cluster(dir.path()).await;
    let moving = keys_of(MOVING, KEYS);
    for chunk in moving.chunks(100) {
        let mut tasks = tokio::task::JoinSet::new();
        for key in chunk {
            let (client, key) = (client.clone(), key.clone());
            tasks.spawn(async move { client.put(&key, &[7; VALUE_BYTES]).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("load task").expect("load write");
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let staying_latencies = Arc::new(Mutex::new(Vec::new()));
    let moving_latencies = Arc::new(Mutex::new(Vec::new()));
    let writers = [
        writer(
            client.clone(),
            keys_of(STAYING, 100),
            Arc::clone(&stop),
            Arc::clone(&staying_latencies),
        ),
        writer(
            client.clone(),
            moving[..100].to_vec(),
            Arc::clone(&stop),
            Arc::clone(&moving_latencies),
        ),
    ];

    let mut pauses_us = Vec::new();
    let mut durations_ms = Vec::new();
    for round in 0..migrations {
        let to_group = if round % 2 == 0 { 2 } else { 1 };
        let started = Instant::now();
        let id = client
            .migrate_vshard(u32::from(MOVING), to_group, Some(2_000))
            .await
            .expect("submitted");
        let state = client
            .workflow_watch(id, Duration::from_secs(300), |_| {})
            .await
            .expect("settled");
        assert_eq!(state.phase, Phase::Completed, "{id}: {:?}", state.phase);
        durations_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let pause = progress(&state).write_pause_us.expect("a measured pause");
        pauses_us.push(pause as f64);
        eprintln!(
            "migration {}/{migrations}: {id} to group {to_group}, pause {:.1} ms",
            round + 1,
            pause as f64 / 1e3
        );
    }
    stop.store(true, Ordering::Relaxed);
    for task in writers {
        task.await.expect("writer");
    }

    let sorted = |values: &Mutex<Vec<f64>>| {
        let mut values = values.lock().expect("values").clone();
        values.sort_by(f64::total_cmp);
        values
    };
    pauses_us.sort_by(f64::total_cmp);
    durations_ms.sort_by(f64::total_cmp);
    let staying = sorted(&staying_latencies);
    let moving_writes = sorted(&moving_latencies);
    let write_p99_us = percentile(&staying, 0.99);
    let pause_p50_us = percentile(&pauses_us, 0.5);
    let report = serde_json::json!({
        "migrations": migrations,
        "vshard_keys": KEYS,
        "value_bytes": VALUE_BYTES,
        "write_pause_ms": {
            "p50": pause_p50_us / 1e3,
            "p99": percentile(&pauses_us, 0.99) / 1e3,
            "max": pauses_us.last().copied().unwrap_or(0.0) / 1e3,
        },
        "single_write_ms_staying_vshard": {
            "writes": staying.len(),
            "p50": percentile(&staying, 0.5) / 1e3,
            "p99": write_p99_us / 1e3,
        },
        "moving_vshard_writes": {
            "writes": moving_writes.len(),
            "p50_ms": percentile(&moving_writes, 0.5) / 1e3,
            "max_ms": moving_writes.last().copied().unwrap_or(0.0) / 1e3,
        },
        "migration_ms": {
            "p50": percentile(&durations_ms, 0.5),
            "max": durations_ms.last().copied().unwrap_or(0.0),
        },
        "pause_p50_over_write_p99": pause_p50_us / write_p99_us,
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    client.shutdown().await;
    for node in &nodes {
        node.shutdown().await;
    }
}
