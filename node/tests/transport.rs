//! The node transport over real QUIC sockets on 127.0.0.1: mutual TLS and
//! roles, framing and its failure modes, timeouts, reconnection, streams,
//! and the cluster certificate directory.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shardflow_node::certs::{write_cluster_certs, CertError, PeerIdentity, Role};
use shardflow_node::transport::wire::{ResponseHeader, ResponseHeaderV1};
use shardflow_node::transport::{
    frame, require_role, ClusterTls, Handler, RemoteError, RemoteErrorKind, ServerStream,
    Transport, TransportConfig, TransportError,
};
use tempfile::TempDir;
use tokio::sync::{Notify, Semaphore};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// How long a test waits for a condition before failing.
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
enum TestRequest {
    /// Answers who the caller is, as its certificate says.
    WhoAmI,
    /// Returns the payload.
    Echo(Vec<u8>),
    /// Node certificates only.
    NodeOnly,
    /// Blocks until the test releases it.
    Hang,
}

#[derive(Debug, Serialize, Deserialize)]
enum TestStream {
    /// Server sends `count` frames of `size_bytes`, each starting with its index.
    Download { count: u32, size_bytes: u32 },
    /// Server reads frames until the end, then answers (frames, bytes).
    Upload,
    /// Node certificates only.
    NodeOnly,
}

struct TestHandler {
    hang_started: Semaphore,
    release: Notify,
}

impl Default for TestHandler {
    fn default() -> Self {
        TestHandler {
            hang_started: Semaphore::new(0),
            release: Notify::new(),
        }
    }
}

#[async_trait]
impl Handler for TestHandler {
    async fn handle(&self, peer: PeerIdentity, request: Vec<u8>) -> Result<Vec<u8>, RemoteError> {
        let request: TestRequest = postcard::from_bytes(&request).map_err(|error| {
            RemoteError::new(RemoteErrorKind::MalformedFrame, error.to_string())
        })?;
        let answer = match request {
            TestRequest::WhoAmI => peer.to_string().into_bytes(),
            TestRequest::Echo(payload) => payload,
            TestRequest::NodeOnly => {
                require_role(&peer, &[Role::Node])?;
                b"node business".to_vec()
            }
            TestRequest::Hang => {
                let released = self.release.notified();
                self.hang_started.add_permits(1);
                released.await;
                b"released".to_vec()
            }
        };
        Ok(answer)
    }

    async fn handle_stream(
        &self,
        peer: PeerIdentity,
        request: Vec<u8>,
        stream: &mut ServerStream,
    ) -> Result<(), RemoteError> {
        let request: TestStream = postcard::from_bytes(&request).map_err(|error| {
            RemoteError::new(RemoteErrorKind::MalformedFrame, error.to_string())
        })?;
        match request {
            TestStream::Download { count, size_bytes } => {
                for index in 0..count {
                    let mut chunk = vec![0xab; size_bytes as usize];
                    chunk[..4].copy_from_slice(&index.to_be_bytes());
                    stream.send(&chunk).await?;
                }
            }
            TestStream::Upload => {
                let (mut frames, mut bytes) = (0u64, 0u64);
                while let Some(chunk) = stream.recv().await? {
                    frames += 1;
                    bytes += chunk.len() as u64;
                }
                stream.send_typed(&(frames, bytes)).await?;
            }
            TestStream::NodeOnly => require_role(&peer, &[Role::Node])?,
        }
        Ok(())
    }
}

fn encode(request: &TestRequest) -> Vec<u8> {
    postcard::to_allocvec(request).expect("test requests encode")
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn cluster_dir(nodes: &[u64]) -> Result<TempDir, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    write_cluster_certs(dir.path(), nodes)?;
    Ok(dir)
}

fn tls(dir: &Path, identity: PeerIdentity) -> Result<ClusterTls, Box<dyn std::error::Error>> {
    Ok(ClusterTls::load(dir, identity)?)
}

/// A serving node on 127.0.0.1:`port` (0: any) with its own test handler.
fn start_node(
    dir: &Path,
    node_id: u64,
    address: SocketAddr,
    config: TransportConfig,
) -> Result<(Transport, Arc<TestHandler>), Box<dyn std::error::Error>> {
    let transport = Transport::bind(address, &tls(dir, PeerIdentity::node(node_id))?, config)?;
    let handler = Arc::new(TestHandler::default());
    transport.serve(handler.clone())?;
    Ok((transport, handler))
}

fn start_client(
    dir: &Path,
    identity: PeerIdentity,
    config: TransportConfig,
) -> Result<Transport, Box<dyn std::error::Error>> {
    Ok(Transport::client(
        localhost(),
        &tls(dir, identity)?,
        config,
    )?)
}

/// Retries `attempt` until it yields `Some`, failing after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Binds a node on `address`, retrying while the old socket is released.
async fn restart_node(
    dir: &Path,
    node_id: u64,
    address: SocketAddr,
) -> (Transport, Arc<TestHandler>) {
    eventually("the port to be free again", || async {
        start_node(dir, node_id, address, TransportConfig::default()).ok()
    })
    .await
}

#[tokio::test]
async fn request_response_round_trip_between_two_nodes() -> TestResult {
    // Proves two nodes each serve and dial on one endpoint, and each sees the other's identity.
    let dir = cluster_dir(&[1, 2])?;
    let (node_1, _) = start_node(dir.path(), 1, localhost(), TransportConfig::default())?;
    let (node_2, _) = start_node(dir.path(), 2, localhost(), TransportConfig::default())?;
    let (address_1, address_2) = (node_1.local_addr()?, node_2.local_addr()?);
    assert_ne!(address_2.port(), 0);

    let seen_by_2 = node_1
        .call(address_2, &encode(&TestRequest::WhoAmI))
        .await?;
    assert_eq!(seen_by_2, b"node 1");
    let seen_by_1 = node_2
        .call(address_1, &encode(&TestRequest::WhoAmI))
        .await?;
    assert_eq!(seen_by_1, b"node 2");

    let payload: Vec<u8> = (0..1_000_000u32).map(|index| index as u8).collect();
    let echoed = node_1
        .call(address_2, &encode(&TestRequest::Echo(payload.clone())))
        .await?;
    assert_eq!(echoed, payload);
    let typed: String = node_1
        .call_typed(
            address_2,
            &TestRequest::Echo(postcard::to_allocvec("typed")?),
        )
        .await?;
    assert_eq!(typed, "typed");
    node_1.shutdown().await;
    node_2.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn certificates_from_another_ca_are_refused_both_ways() -> TestResult {
    // Proves a client signed by another CA is refused by a node, and a node signed by another CA is refused by a dialer.
    let dir = cluster_dir(&[1])?;
    let foreign = cluster_dir(&[1])?;
    let (node, _) = start_node(dir.path(), 1, localhost(), TransportConfig::default())?;
    let address = node.local_addr()?;

    let intruder = start_client(
        foreign.path(),
        PeerIdentity::client(),
        TransportConfig::default(),
    )?;
    let refused = intruder.call(address, &encode(&TestRequest::WhoAmI)).await;
    match refused {
        Err(TransportError::Handshake { peer, reason }) => {
            assert_eq!(peer, address);
            assert!(reason.contains("certificate"), "{reason}");
        }
        other => panic!("expected a refused handshake, got {other:?}"),
    }

    let (foreign_node, _) = start_node(foreign.path(), 1, localhost(), TransportConfig::default())?;
    let client = start_client(
        dir.path(),
        PeerIdentity::client(),
        TransportConfig::default(),
    )?;
    let refused = client
        .call(foreign_node.local_addr()?, &encode(&TestRequest::WhoAmI))
        .await;
    assert!(
        matches!(refused, Err(TransportError::Handshake { .. })),
        "{refused:?}"
    );
    Ok(())
}

#[tokio::test]
async fn node_only_requests_refuse_client_and_admin_certificates() -> TestResult {
    // Proves require_role reaches the caller as a typed permission denied, for calls and streams, while nodes pass.
    let dir = cluster_dir(&[1, 2])?;
    let (node, _) = start_node(dir.path(), 1, localhost(), TransportConfig::default())?;
    let address = node.local_addr()?;

    for identity in [PeerIdentity::client(), PeerIdentity::admin()] {
        let caller = start_client(dir.path(), identity, TransportConfig::default())?;
        let denied = caller.call(address, &encode(&TestRequest::NodeOnly)).await;
        match &denied {
            Err(error) if error.is_permission_denied() => {
                assert!(error.to_string().contains("permission denied"), "{error}");
            }
            other => panic!("expected permission denied for {identity}, got {other:?}"),
        }
        let who = caller.call(address, &encode(&TestRequest::WhoAmI)).await?;
        assert_eq!(who, identity.to_string().as_bytes());

        let opening = postcard::to_allocvec(&TestStream::NodeOnly)?;
        let mut stream = caller.open_stream(address, &opening).await?;
        stream.finish()?;
        let denied = stream.recv().await;
        assert!(
            matches!(&denied, Err(error) if error.is_permission_denied()),
            "{denied:?}"
        );

        // An upload the server refuses: sending fails once the server stops
        // reading, with the server's reason rather than a bare "stopped".
        let mut upload = caller.open_stream(address, &opening).await?;
        let chunk = vec![0u8; 16 * 1024];
        let mut refused = None;
        for _ in 0..10_000 {
            if let Err(error) = upload.send(&chunk).await {
                refused = Some(error);
                break;
            }
        }
        assert!(
            matches!(&refused, Some(error) if error.is_permission_denied()),
            "{refused:?}"
        );
    }

    let (peer, _) = start_node(dir.path(), 2, localhost(), TransportConfig::default())?;
    let allowed = peer.call(address, &encode(&TestRequest::NodeOnly)).await?;
    assert_eq!(allowed, b"node business");
    Ok(())
}

/// Sends raw `bytes` on a new stream of `connection` and returns the error
/// the server answered.
async fn raw_request(
    connection: &quinn::Connection,
    bytes: &[u8],
) -> Result<RemoteError, Box<dyn std::error::Error>> {
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(bytes).await?;
    let _ = send.finish();
    let frame = frame::read_frame(&mut recv, frame::DEFAULT_MAX_FRAME_BYTES)
        .await?
        .ok_or("no response frame")?;
    let (header, _): (ResponseHeader, &[u8]) = postcard::take_from_bytes(&frame)?;
    match header {
        ResponseHeader::V1(ResponseHeaderV1::Err(error)) => Ok(error),
        other => Err(format!("expected an error response, got {other:?}").into()),
    }
}

#[tokio::test]
async fn malformed_and_oversized_frames_get_errors_and_the_connection_survives() -> TestResult {
    // Proves garbage, truncated and oversized frames are answered with typed errors on their stream while the same connection keeps serving.
    let dir = cluster_dir(&[1])?;
    let server_config = TransportConfig {
        max_frame_bytes: 1024,
        ..TransportConfig::default()
    };
    let (node, _) = start_node(dir.path(), 1, localhost(), server_config)?;
    let address = node.local_addr()?;
    let client = start_client(
        dir.path(),
        PeerIdentity::client(),
        TransportConfig::default(),
    )?;
    let connection = client.connection(address).await?;

    let mut garbage = 8u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 8]);
    let error = raw_request(&connection, &garbage).await?;
    assert_eq!(error.kind, RemoteErrorKind::MalformedFrame, "{error}");

    let error = raw_request(&connection, &[0, 0]).await?;
    assert_eq!(error.kind, RemoteErrorKind::MalformedFrame, "{error}");

    let mut oversized = u32::MAX.to_be_bytes().to_vec();
    oversized.extend_from_slice(&[0; 64]);
    let error = raw_request(&connection, &oversized).await?;
    assert_eq!(error.kind, RemoteErrorKind::FrameTooLarge, "{error}");

    let too_big = client
        .call(address, &encode(&TestRequest::Echo(vec![7; 4096])))
        .await;
    assert_eq!(
        too_big.as_ref().err().and_then(TransportError::remote_kind),
        Some(RemoteErrorKind::FrameTooLarge),
        "{too_big:?}"
    );

    let who = client.call(address, &encode(&TestRequest::WhoAmI)).await?;
    assert_eq!(who, b"client");
    let still_pooled = client.connection(address).await?;
    assert_eq!(still_pooled.stable_id(), connection.stable_id());
    assert!(connection.close_reason().is_none());
    Ok(())
}

#[tokio::test]
async fn calls_to_an_unresponsive_peer_time_out_with_a_typed_error() -> TestResult {
    // Proves a peer that never answers yields TransportError::Timeout naming the peer, within the configured bound.
    let dir = cluster_dir(&[1])?;
    let silent = std::net::UdpSocket::bind(localhost())?;
    let silent_address = silent.local_addr()?;
    let call_timeout = Duration::from_millis(300);
    let client = start_client(
        dir.path(),
        PeerIdentity::client(),
        TransportConfig {
            call_timeout,
            ..TransportConfig::default()
        },
    )?;

    let started = Instant::now();
    let result = client
        .call(silent_address, &encode(&TestRequest::WhoAmI))
        .await;
    match &result {
        Err(error @ TransportError::Timeout { peer, elapsed }) => {
            assert_eq!(*peer, silent_address);
            assert!(*elapsed >= call_timeout, "{elapsed:?}");
            assert!(error.is_unreachable());
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < DEADLINE);
    Ok(())
}

#[tokio::test]
async fn a_slow_request_does_not_stall_others_on_the_same_connection() -> TestResult {
    // Proves each stream is served in its own task: a hung handler times out its own call only.
    let dir = cluster_dir(&[1])?;
    let (node, handler) = start_node(dir.path(), 1, localhost(), TransportConfig::default())?;
    let address = node.local_addr()?;
    let client = start_client(
        dir.path(),
        PeerIdentity::client(),
        TransportConfig::default(),
    )?;

    let slow = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .call_with_timeout(address, &encode(&TestRequest::Hang), Duration::from_secs(1))
                .await
        })
    };
    let _started = tokio::time::timeout(DEADLINE, handler.hang_started.acquire()).await??;
    for _ in 0..10 {
        let who = client.call(address, &encode(&TestRequest::WhoAmI)).await?;
        assert_eq!(who, b"client");
    }
    let slow = slow.await?;
    assert!(
        matches!(slow, Err(TransportError::Timeout { peer, .. }) if peer == address),
        "{slow:?}"
    );
    handler.release.notify_waiters();
    Ok(())
}

#[tokio::test]
async fn calls_reconnect_after_the_server_restarts_on_the_same_port() -> TestResult {
    // Proves the pool replaces a connection the peer closed: after a clean restart on the same address, calls succeed on a new connection.
    let dir = cluster_dir(&[1, 2])?;
    let (server, _) = start_node(dir.path(), 2, localhost(), TransportConfig::default())?;
    let address = server.local_addr()?;
    let (caller, _) = start_node(dir.path(), 1, localhost(), TransportConfig::default())?;
    caller.call(address, &encode(&TestRequest::WhoAmI)).await?;
    let first = caller.connection(address).await?;

    server.shutdown().await;
    drop(server);
    eventually("the caller to see the close", || async {
        first.close_reason().map(|_| ())
    })
    .await;

    let (_restarted, _) = restart_node(dir.path(), 2, address).await;
    let who = caller.call(address, &encode(&TestRequest::WhoAmI)).await?;
    assert_eq!(who, b"node 1");
    assert_ne!(
        caller.connection(address).await?.stable_id(),
        first.stable_id()
    );
    Ok(())
}

#[tokio::test]
async fn a_crashed_server_resets_stale_connections_when_it_restarts() -> TestResult {
    // Proves a node killed without closing its connections, restarted on the same address, resets its peers' stale connections at once (stateless reset), so calls recover long before the idle timeout.
    let dir = cluster_dir(&[1, 2])?;
    let crash_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let server_dir = dir.path().to_path_buf();
    let server = crash_runtime
        .spawn(async move {
            start_node(&server_dir, 2, localhost(), TransportConfig::default())
                .map(|(transport, _)| transport)
                .map_err(|error| error.to_string())
        })
        .await??;
    let address = server.local_addr()?;
    let (caller, _) = start_node(dir.path(), 1, localhost(), TransportConfig::default())?;
    caller.call(address, &encode(&TestRequest::WhoAmI)).await?;
    let stale = caller.connection(address).await?;

    // The crash: the runtime driving the server stops and its tasks are
    // dropped; only then is the handle dropped, so no close can be sent.
    tokio::task::spawn_blocking(move || crash_runtime.shutdown_timeout(DEADLINE)).await?;
    drop(server);
    let (_restarted, _) = restart_node(dir.path(), 2, address).await;

    let started = Instant::now();
    let who = eventually("a call to the restarted node", || async {
        caller
            .call(address, &encode(&TestRequest::WhoAmI))
            .await
            .ok()
    })
    .await;
    assert_eq!(who, b"node 1");
    assert_eq!(stale.close_reason(), Some(quinn::ConnectionError::Reset));
    assert!(
        started.elapsed() < caller.config().max_idle_timeout,
        "recovery took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn streams_carry_many_frames_both_ways() -> TestResult {
    // Proves one stream carries thousands of frames in order from server to client and from client to server.
    let dir = cluster_dir(&[1, 2])?;
    let (node, _) = start_node(dir.path(), 1, localhost(), TransportConfig::default())?;
    let address = node.local_addr()?;
    let (peer, _) = start_node(dir.path(), 2, localhost(), TransportConfig::default())?;

    let count = 2_000u32;
    let opening = postcard::to_allocvec(&TestStream::Download {
        count,
        size_bytes: 1024,
    })?;
    let mut download = peer.open_stream(address, &opening).await?;
    download.finish()?;
    let mut received = 0u32;
    while let Some(chunk) = download.recv().await? {
        assert_eq!(chunk.len(), 1024);
        assert_eq!(chunk[..4], received.to_be_bytes());
        received += 1;
    }
    assert_eq!(received, count);

    let mut upload = peer
        .open_stream(address, &postcard::to_allocvec(&TestStream::Upload)?)
        .await?;
    for index in 0..count {
        upload.send(&vec![index as u8; 512]).await?;
    }
    upload.finish()?;
    let totals: Option<(u64, u64)> = upload.recv_typed().await?;
    assert_eq!(totals, Some((u64::from(count), u64::from(count) * 512)));
    assert_eq!(upload.recv().await?, None);
    Ok(())
}

#[tokio::test]
async fn only_node_certificates_may_serve() -> TestResult {
    // Proves a transport holding a client or admin certificate cannot bind as a server.
    let dir = cluster_dir(&[1])?;
    for identity in [PeerIdentity::client(), PeerIdentity::admin()] {
        let refused = Transport::bind(
            localhost(),
            &tls(dir.path(), identity)?,
            TransportConfig::default(),
        );
        assert!(
            matches!(refused, Err(TransportError::NotANodeCertificate { .. })),
            "{identity}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn write_cluster_certs_twice_keeps_the_ca_and_issues_new_nodes_from_it() -> TestResult {
    // Proves a second write_cluster_certs reuses the existing CA, leaves existing files alone, and its new node certificate passes mTLS against a server loaded before it.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let first = write_cluster_certs(dir.path(), &[1, 2])?;
    assert!(first.ca_created);
    let read = |name: &str| std::fs::read(dir.path().join(name));
    let (ca_cert, ca_key, node_1_cert) = (read("ca.pem")?, read("ca.key")?, read("node-1.pem")?);
    for name in [
        "ca.key",
        "node-1.key",
        "node-2.key",
        "admin.key",
        "client.key",
    ] {
        let mode = std::fs::metadata(dir.path().join(name))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let (old_server, _) = start_node(dir.path(), 1, localhost(), TransportConfig::default())?;

    let second = write_cluster_certs(dir.path(), &[1, 3])?;
    assert!(!second.ca_created);
    assert_eq!(
        second.written,
        vec![dir.path().join("node-3.key"), dir.path().join("node-3.pem")]
    );
    assert!(second.kept.contains(&dir.path().join("node-1.pem")));
    assert_eq!(read("ca.pem")?, ca_cert);
    assert_eq!(read("ca.key")?, ca_key);
    assert_eq!(read("node-1.pem")?, node_1_cert);

    let (new_node, _) = start_node(dir.path(), 3, localhost(), TransportConfig::default())?;
    let who = new_node
        .call(old_server.local_addr()?, &encode(&TestRequest::WhoAmI))
        .await?;
    assert_eq!(who, b"node 3");

    std::fs::remove_file(dir.path().join("node-3.pem"))?;
    match write_cluster_certs(dir.path(), &[3]) {
        Err(CertError::IncompletePair { present, missing }) => {
            assert_eq!(present, dir.path().join("node-3.key"));
            assert_eq!(missing, dir.path().join("node-3.pem"));
        }
        other => panic!("expected an incomplete pair, got {other:?}"),
    }
    Ok(())
}
