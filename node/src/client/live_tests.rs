//! The client against a real node: a one-node cluster in process (port 0,
//! no sleeps), through bootstrap, readiness, writes, linearizable reads,
//! paged scans, status and a refused role.

use std::error::Error;
use std::path::Path;
use std::time::Duration;

use super::{Client, ClientConfig, ClientError};
use crate::certs::write_cluster_certs;
use crate::server::{Node, NodeConfig};
use crate::vshard::vshard_of;

fn client(certs: &Path, addr: &str, tune: impl FnOnce(&mut ClientConfig)) -> Client {
    let mut config = ClientConfig::new(vec![addr.to_string()]);
    tune(&mut config);
    Client::from_certs_dir(certs, config).expect("client")
}

fn client_only_certs(certs: &Path, into: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(into)?;
    for file in ["ca.pem", "client.pem", "client.key"] {
        std::fs::copy(certs.join(file), into.join(file))?;
    }
    Ok(())
}

// Proves the client's whole path on a live node: bootstrap (and its refusal
// the second time), wait_ready, put/get/delete, paged scans, status, and a
// client certificate refused admin requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_cluster_round_trip() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    write_cluster_certs(&certs, &[1])?;
    let config = NodeConfig::new(
        1,
        "127.0.0.1:0".parse()?,
        dir.path().join("data"),
        certs.clone(),
    );
    let node = Node::start(config).await?;
    let addr = node.local_addr().to_string();

    let impatient = client(&certs, &addr, |c| {
        c.request_timeout = Duration::from_millis(600)
    });
    let early = impatient.get(b"k").await;
    assert!(
        matches!(early, Err(ClientError::Unavailable { .. })),
        "{early:?}"
    );

    let admin = client(&certs, &addr, |_| {});
    admin.bootstrap(vec![(1, addr.clone())], 2, 1).await?;
    admin.wait_ready(Duration::from_secs(30)).await?;
    let again = admin.bootstrap(vec![(1, addr.clone())], 2, 1).await;
    assert!(
        matches!(again, Err(ClientError::Rejected { .. })),
        "{again:?}"
    );

    for i in 0..40 {
        admin
            .put(
                format!("key-{i}").as_bytes(),
                format!("value-{i}").as_bytes(),
            )
            .await?;
    }
    assert_eq!(admin.get(b"key-7").await?, Some(b"value-7".to_vec()));
    admin.delete(b"key-7").await?;
    assert_eq!(admin.get(b"key-7").await?, None);
    let pairs = admin.scan_vshard(vshard_of(b"key-8")).await?;
    assert!(pairs.contains(&(b"key-8".to_vec(), b"value-8".to_vec())));
    assert_eq!(admin.count_all().await?, 39);

    let paged = client(&certs, &addr, |c| c.scan_page_pairs = 1);
    let all = paged.scan_all().await?;
    assert_eq!(all.len(), 39);
    let vshards: Vec<u16> = all.iter().map(|(key, _)| vshard_of(key)).collect();
    assert!(vshards.windows(2).all(|w| w[0] <= w[1]), "vShard order");
    assert_eq!(admin.routing().await?.routes.len(), 1024);

    let reports = admin.status_all().await;
    assert_eq!(reports.len(), 1);
    assert!(reports[0].status.as_ref().is_ok_and(|s| s.node == 1));

    let client_certs = dir.path().join("client-certs");
    client_only_certs(&certs, &client_certs)?;
    let user = client(&client_certs, &addr, |_| {});
    assert_eq!(user.get(b"key-8").await?, Some(b"value-8".to_vec()));
    let denied = user.add_node(2, "127.0.0.1:9").await;
    assert!(
        matches!(denied, Err(ClientError::PermissionDenied(_))),
        "{denied:?}"
    );

    admin.shutdown().await;
    node.shutdown().await;
    Ok(())
}
