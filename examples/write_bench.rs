//! Write benchmark of a 3-node loopback cluster (real QUIC, real redb),
//! printed as one JSON object.
//!
//! `cargo run --release --example write_bench`
//!
//! For each storage layout — one redb file per node (every group of a node
//! serializes on one writer) and one redb file per group — it bootstraps a
//! fresh cluster of 4 data groups with 3 replicas and measures sequential
//! single-key write latency (p50/p99) and throughput with 64 concurrent
//! writers. Layouts alternate over rounds so the machine's drift hits both;
//! the ratios are per round, then the median.

use std::time::{Duration, Instant};

use shardflow::node::certs::write_cluster_certs;
use shardflow::node::client::{Client, ClientConfig};
use shardflow::node::server::{Node, NodeConfig, StoreLayout};

const SEQUENTIAL_WRITES: usize = 400;
const CONCURRENT_WRITERS: usize = 64;
const CONCURRENT_WRITES: usize = 6_400;
const ROUNDS: usize = 3;

struct Figures {
    p50_us: f64,
    p99_us: f64,
    throughput_wps: f64,
}

async fn cluster(dir: &std::path::Path, layout: StoreLayout) -> (Vec<Node>, Client) {
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
        config.layout = layout;
        nodes.push(Node::start(config).await.expect("node"));
    }
    let seeds: Vec<String> = nodes.iter().map(|n| n.local_addr().to_string()).collect();
    let client = Client::from_certs_dir(&certs, ClientConfig::new(seeds)).expect("client");
    let members: Vec<(u64, String)> = nodes
        .iter()
        .map(|n| (n.id(), n.local_addr().to_string()))
        .collect();
    client.bootstrap(members, 4, 3).await.expect("bootstrap");
    client
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("ready");
    (nodes, client)
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

async fn measure(layout: StoreLayout, round: usize) -> Figures {
    let dir = tempfile::tempdir().expect("tempdir");
    let (nodes, client) = cluster(dir.path(), layout).await;
    for i in 0..50 {
        client
            .put(format!("warm-{i}").as_bytes(), b"x")
            .await
            .expect("warm-up");
    }
    let mut latencies = Vec::with_capacity(SEQUENTIAL_WRITES);
    for i in 0..SEQUENTIAL_WRITES {
        let key = format!("seq-{round}-{i}");
        let started = Instant::now();
        client.put(key.as_bytes(), &[7; 100]).await.expect("write");
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..CONCURRENT_WRITERS {
        let client = client.clone();
        writers.spawn(async move {
            for i in 0..CONCURRENT_WRITES / CONCURRENT_WRITERS {
                let key = format!("conc-{writer}-{i}");
                client.put(key.as_bytes(), &[7; 100]).await.expect("write");
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("writer");
    }
    let throughput_wps = CONCURRENT_WRITES as f64 / started.elapsed().as_secs_f64();
    client.shutdown().await;
    for node in &nodes {
        node.shutdown().await;
    }
    Figures {
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
        throughput_wps,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

#[tokio::main]
async fn main() {
    let mut one_file = Vec::new();
    let mut per_group = Vec::new();
    for round in 0..ROUNDS {
        one_file.push(measure(StoreLayout::OneFile, round).await);
        per_group.push(measure(StoreLayout::FilePerGroup, round).await);
    }
    let pick =
        |figures: &[Figures], f: fn(&Figures) -> f64| median(figures.iter().map(f).collect());
    let ratio = |f: fn(&Figures) -> f64| {
        median(
            one_file
                .iter()
                .zip(&per_group)
                .map(|(a, b)| f(b) / f(a))
                .collect(),
        )
    };
    let report = serde_json::json!({
        "rounds": ROUNDS,
        "one_file_per_node": {
            "write_p50_us": round2(pick(&one_file, |f| f.p50_us)),
            "write_p99_us": round2(pick(&one_file, |f| f.p99_us)),
            "throughput_wps": round2(pick(&one_file, |f| f.throughput_wps)),
        },
        "one_file_per_group": {
            "write_p50_us": round2(pick(&per_group, |f| f.p50_us)),
            "write_p99_us": round2(pick(&per_group, |f| f.p99_us)),
            "throughput_wps": round2(pick(&per_group, |f| f.throughput_wps)),
        },
        "per_group_vs_one_file": {
            "write_p50_ratio": round2(ratio(|f| f.p50_us)),
            "throughput_ratio": round2(ratio(|f| f.throughput_wps)),
        },
    });
    println!("{report}");
}
