//! Three real `shardflow node` processes on loopback: bootstrap with the
//! CLI, write 1,000 keys, SIGKILL one node, keep writing, restart it on its
//! own data directory and check it caught up from its own redb with nothing
//! lost; then stop all three cleanly, restart them and read everything back.

mod support;

use std::time::Duration;

use shardflow::node::client::{Client, ClientConfig, ClientError};
use support::{run_cli, sigkill, sigterm, spawn, start_cluster, NodeProcess};
use tokio::time::Instant;

fn key(i: u32) -> Vec<u8> {
    format!("user-{i:06}").into_bytes()
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}").into_bytes()
}

/// Writes `range` with 16 writes in flight; every write must be acknowledged.
async fn write_range(client: &Client, range: std::ops::Range<u32>) {
    let mut in_flight: tokio::task::JoinSet<Result<(), ClientError>> = tokio::task::JoinSet::new();
    for i in range {
        if in_flight.len() == 16 {
            let done = in_flight.join_next().await.expect("a write in flight");
            done.expect("write task").expect("acknowledged write");
        }
        let client = client.clone();
        in_flight.spawn(async move { client.put(&key(i), &value(i)).await });
    }
    while let Some(done) = in_flight.join_next().await {
        done.expect("write task").expect("acknowledged write");
    }
}

async fn read_all(client: &Client, count: u32) {
    for i in 0..count {
        let got = client.get(&key(i)).await.expect("read");
        assert_eq!(got, Some(value(i)), "key {i} lost");
    }
}

/// Waits until `node` applied, in every data group, at least what the
/// others had applied when it restarted.
async fn wait_caught_up(client: &Client, node: &NodeProcess, targets: &[(u64, u64)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(status) = client.status(&node.addr, Duration::from_secs(2)).await {
            let behind: Vec<_> = targets
                .iter()
                .filter(|(group, index)| {
                    !status
                        .groups
                        .iter()
                        .any(|g| g.group == *group && g.last_applied.unwrap_or(0) >= *index)
                })
                .collect();
            if behind.is_empty() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {} never caught up",
            node.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_survive_sigkill_and_full_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (certs, mut nodes) = start_cluster(dir.path(), "1,2,3", 3, 2, &[]);
    let certs_arg = certs.to_str().expect("utf-8");

    let seeds: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let client = Client::from_certs_dir(&certs, ClientConfig::new(seeds.clone())).expect("client");
    write_range(&client, 0..1000).await;

    sigkill(&mut nodes[2]);
    write_range(&client, 1000..1300).await;
    let targets: Vec<(u64, u64)> = {
        let status = client
            .status(&nodes[0].addr, Duration::from_secs(5))
            .await
            .expect("status");
        status
            .groups
            .iter()
            .filter(|g| g.group != 0)
            .map(|g| (g.group, g.last_applied.unwrap_or(0)))
            .collect()
    };
    assert_eq!(targets.len(), 2, "node 1 holds both data groups");
    let (addr, data) = (nodes[2].addr.clone(), nodes[2].data.clone());
    nodes[2] = spawn(3, &addr, &data, &certs);
    wait_caught_up(&client, &nodes[2], &targets).await;
    read_all(&client, 1300).await;
    let cluster = seeds.join(",");
    let got = run_cli(&[
        "kv",
        "get",
        "user-001234",
        "--cluster",
        &cluster,
        "--certs",
        certs_arg,
    ]);
    assert_eq!(got.trim_end(), "value-1234");
    let count = run_cli(&[
        "kv",
        "scan",
        "--count",
        "--cluster",
        &cluster,
        "--certs",
        certs_arg,
    ]);
    assert_eq!(count.trim(), "1300");

    for node in nodes.iter_mut() {
        sigterm(node);
    }
    client.shutdown().await;
    let restarted: Vec<NodeProcess> = nodes
        .iter()
        .map(|n| spawn(n.id, &n.addr, &n.data, &certs))
        .collect();
    let client = Client::from_certs_dir(&certs, ClientConfig::new(seeds)).expect("client");
    client
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("ready after restart");
    read_all(&client, 1300).await;
    drop(restarted);
}
