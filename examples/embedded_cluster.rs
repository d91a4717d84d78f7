//! A whole shardflow cluster inside an application (or a test): three real
//! nodes on loopback QUIC with their redb files in a directory, the
//! migration workflows installed, bootstrapped, and a client.
//!
//! `cargo run --example embedded_cluster`
//!
//! It writes and reads keys, stops a node and keeps writing (a majority
//! still serves), starts the node again on the same address and data, and
//! shuts everything down. `cargo test` runs the same code (see the test at
//! the bottom).

use std::error::Error;
use std::path::Path;

use shardflow::embedded::{EmbeddedCluster, EmbeddedOptions};
use shardflow::node::vshard::vshard_of;

/// What the example saw, for its test.
#[derive(Debug)]
struct Seen {
    keys: u64,
    read_back: Option<Vec<u8>>,
    written_while_down: Option<Vec<u8>>,
}

/// The example: a cluster in `dir`, used, stopped.
async fn run(dir: &Path) -> Result<Seen, Box<dyn Error>> {
    // 3 nodes, 2 data groups of 3 replicas (the defaults are 4 groups and
    // a spare certificate for a 4th node).
    let options = EmbeddedOptions {
        groups: 2,
        ..EmbeddedOptions::default()
    };
    let mut cluster = EmbeddedCluster::start(dir, options).await?;
    for id in cluster.node_ids() {
        if let Some(node) = cluster.node(id) {
            println!("node {id} listening on {}", node.local_addr());
        }
    }

    // The client presents the admin certificate of `dir/certs`.
    let client = cluster.client().clone();
    for i in 0..100 {
        let key = format!("user:{i}");
        client
            .put(key.as_bytes(), format!("name {i}").as_bytes())
            .await?;
    }
    let read_back = client.get(b"user:7").await?;
    println!(
        "user:7 (vShard {}) = {:?}",
        vshard_of(b"user:7"),
        read_back.as_deref().map(String::from_utf8_lossy)
    );

    // Stop node 2: the groups keep a majority, writes go on.
    cluster.stop_node(2).await?;
    client
        .put(b"user:7", b"written while node 2 was down")
        .await?;
    // Node 2 comes back on its address and redb files, and catches up.
    cluster.restart_node(2).await?;
    let written_while_down = client.get(b"user:7").await?;
    let keys = client.count_all().await?;
    println!(
        "{keys} keys; node 2 restarted; user:7 = {:?}",
        written_while_down.as_deref().map(String::from_utf8_lossy)
    );

    cluster.shutdown().await;
    Ok(Seen {
        keys,
        read_back,
        written_while_down,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let started = std::time::Instant::now();
    let seen = run(dir.path()).await?;
    println!("done in {:.1}s", started.elapsed().as_secs_f64());
    if seen.keys != 100 || seen.read_back.is_none() || seen.written_while_down.is_none() {
        return Err(format!("unexpected: {seen:?}").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the example runs as written: keys written and read, a write
    // acknowledged while a node was down, read back after its restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_example_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seen = run(dir.path()).await.expect("the example runs");
        assert_eq!(seen.keys, 100);
        assert_eq!(seen.read_back.as_deref(), Some(&b"name 7"[..]));
        assert_eq!(
            seen.written_while_down.as_deref(),
            Some(&b"written while node 2 was down"[..])
        );
    }
}
