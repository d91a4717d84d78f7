//! Property tests of frame decoding (the proptest side of the cargo-fuzz
//! target `fuzz/fuzz_targets/frame_decode.rs`): no input panics a decoder
//! or a node; a bad frame gets a typed error.
//!
//! - The decoders a frame body goes through — the request and response
//!   headers (`transport::wire`, split off the payload with
//!   `postcard::take_from_bytes` as `decode_header` does) and the node
//!   protocol's `NodeRequest` / `NodeResponse` payloads — on random bytes
//!   and on mutated valid encodings: `Ok` or a typed `postcard::Error`,
//!   never a panic; what decodes re-encodes to a value that decodes the
//!   same.
//! - A real node (QUIC on loopback, its real request handler) fed raw
//!   stream bytes — random, and mutated valid frames (length prefix, header,
//!   request): every stream is answered with a well-formed response frame
//!   (the handler's answer or a typed `RemoteError`), the connection
//!   survives, and the node still serves a valid request afterwards.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use shardflow_node::certs::{write_cluster_certs, PeerIdentity};
use shardflow_node::rpc::{
    AdminRequest, ClientRequest, ClientResponse, NodeRequest, NodeRequestV1, NodeResponse,
    NodeResponseV1,
};
use shardflow_node::server::{Node, NodeConfig};
use shardflow_node::transport::wire::{
    RemoteError, RemoteErrorKind, RequestHeader, RequestHeaderV1, ResponseHeader, ResponseHeaderV1,
};
use shardflow_node::transport::{frame, ClusterTls, Transport, TransportConfig};

/// One edit of a byte string.
#[derive(Clone, Debug)]
enum Mutation {
    /// XOR the byte at (index mod len) with a non-zero mask.
    Flip(usize, u8),
    /// Overwrite the byte at (index mod len).
    Set(usize, u8),
    /// Insert a byte at (index mod (len + 1)).
    Insert(usize, u8),
    /// Remove the byte at (index mod len).
    Remove(usize),
    /// Keep the first (index mod (len + 1)) bytes.
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, m)| Mutation::Flip(i, m)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        let len = bytes.len();
        match *mutation {
            Mutation::Flip(i, mask) if len > 0 => bytes[i % len] ^= mask,
            Mutation::Set(i, byte) if len > 0 => bytes[i % len] = byte,
            Mutation::Insert(i, byte) => bytes.insert(i % (len + 1), byte),
            Mutation::Remove(i) if len > 0 => {
                bytes.remove(i % len);
            }
            Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
            _ => {}
        }
    }
    bytes
}

/// Valid requests of every certificate class, encoded.
fn sample_requests() -> Vec<NodeRequest> {
    let client = |request| NodeRequest::V1(NodeRequestV1::Client(request));
    vec![
        client(ClientRequest::Put {
            key: b"key-000001".to_vec(),
            value: vec![7; 40],
            epoch: 3,
        }),
        client(ClientRequest::Get {
            key: b"k".to_vec(),
            epoch: 0,
        }),
        client(ClientRequest::Delete {
            key: b"gone".to_vec(),
            epoch: 1,
        }),
        client(ClientRequest::ScanVShard {
            vshard: 1023,
            after: Some(b"after".to_vec()),
            limit: 100,
            epoch: 2,
        }),
        NodeRequest::V1(NodeRequestV1::Admin(AdminRequest::Status)),
        NodeRequest::V1(NodeRequestV1::Admin(AdminRequest::AddNode {
            id: 9,
            addr: "127.0.0.1:7009".into(),
        })),
    ]
}

fn sample_responses() -> Vec<NodeResponse> {
    let client = |response| NodeResponse::V1(NodeResponseV1::Client(response));
    vec![
        client(ClientResponse::Done),
        client(ClientResponse::Value(Some(b"v".to_vec()))),
        client(ClientResponse::Scan {
            pairs: vec![(b"a".to_vec(), b"1".to_vec())],
            more: true,
        }),
        client(ClientResponse::Redirect {
            node: 2,
            addr: "127.0.0.1:7002".into(),
        }),
        client(ClientResponse::StaleRouting {
            vshard: 17,
            epoch: 4,
        }),
        client(ClientResponse::Retry {
            reason: "electing".into(),
        }),
        client(ClientResponse::Fenced {
            vshard: 17,
            migration: "1-4".into(),
        }),
    ]
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("plain data encodes")
}

/// A frame body: the request header, then the payload.
fn request_body(request: &NodeRequest) -> Vec<u8> {
    let mut body = encode(&RequestHeader::V1(RequestHeaderV1::Call));
    body.extend_from_slice(&encode(request));
    body
}

/// A whole frame: the big-endian length, then the body.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// Every decoder a frame body meets, on `bytes`: never a panic; a value
/// that decodes re-encodes to one that decodes equal.
fn decode_everything(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok((header, rest)) = postcard::take_from_bytes::<RequestHeader>(bytes) {
        prop_assert!(rest.len() <= bytes.len());
        let again: RequestHeader = postcard::from_bytes(&encode(&header)).expect("re-decodes");
        prop_assert_eq!(again, header);
        let _ = postcard::from_bytes::<NodeRequest>(rest);
    }
    if let Ok((header, rest)) = postcard::take_from_bytes::<ResponseHeader>(bytes) {
        prop_assert!(rest.len() <= bytes.len());
        let again: ResponseHeader = postcard::from_bytes(&encode(&header)).expect("re-decodes");
        prop_assert_eq!(again, header);
        let _ = postcard::from_bytes::<NodeResponse>(rest);
    }
    if let Ok(request) = postcard::from_bytes::<NodeRequest>(bytes) {
        // No PartialEq on the protocol types: compare canonical encodings.
        let canonical = encode(&request);
        let again: NodeRequest = postcard::from_bytes(&canonical).expect("re-decodes");
        prop_assert_eq!(encode(&again), canonical);
    }
    if let Ok(response) = postcard::from_bytes::<NodeResponse>(bytes) {
        // No PartialEq on the protocol types: compare canonical encodings.
        let canonical = encode(&response);
        let again: NodeResponse = postcard::from_bytes(&canonical).expect("re-decodes");
        prop_assert_eq!(encode(&again), canonical);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    // Proves random bytes never panic the header and payload decoders.
    #[test]
    fn random_bytes_never_panic_the_decoders(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        decode_everything(&bytes)?;
    }

    // Proves mutated valid bodies (request and response headers with
    // their payloads) never panic the decoders.
    #[test]
    fn mutated_valid_bodies_never_panic_the_decoders(
        pick in any::<prop::sample::Index>(),
        response in any::<bool>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let body = if response {
            let responses = sample_responses();
            let mut body = encode(&ResponseHeader::V1(ResponseHeaderV1::Ok));
            body.extend_from_slice(&encode(&responses[pick.index(responses.len())]));
            body
        } else {
            let requests = sample_requests();
            request_body(&requests[pick.index(requests.len())])
        };
        decode_everything(&mutate(body, &mutations))?;
    }
}

// Proves an error response header round-trips with its kind and message,
// the shape a refused frame is answered with.
#[test]
fn error_headers_decode_with_their_kind() {
    let error = RemoteError::new(RemoteErrorKind::MalformedFrame, "undecodable");
    let body = encode(&ResponseHeader::V1(ResponseHeaderV1::Err(error.clone())));
    let (header, rest) = postcard::take_from_bytes::<ResponseHeader>(&body).expect("decodes");
    assert_eq!(header, ResponseHeader::V1(ResponseHeaderV1::Err(error)));
    assert!(rest.is_empty());
}

// ---------------------------------------------------------------------------
// A real node fed raw stream bytes.

/// A node (not bootstrapped: no request it is sent changes a cluster) and
/// a client-certificate connection to it.
struct Target {
    runtime: tokio::runtime::Runtime,
    node: Node,
    client: Transport,
    connection: quinn::Connection,
    _dir: tempfile::TempDir,
}

fn target() -> Target {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    write_cluster_certs(&certs, &[1]).expect("certs");
    let (node, client, connection) = runtime.block_on(async {
        let config = NodeConfig::new(
            1,
            "127.0.0.1:0".parse().expect("addr"),
            dir.path().join("data"),
            certs.clone(),
        );
        let node = Node::start(config).await.expect("node starts");
        let tls = ClusterTls::load(&certs, PeerIdentity::client()).expect("client tls");
        let client = Transport::client(
            "127.0.0.1:0".parse().expect("addr"),
            &tls,
            TransportConfig::default(),
        )
        .expect("client transport");
        let connection = client
            .connection(node.local_addr())
            .await
            .expect("connects");
        (node, client, connection)
    });
    Target {
        runtime,
        node,
        client,
        connection,
        _dir: dir,
    }
}

/// How long one raw stream may take to be answered.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Sends `bytes` as a whole stream and reads the node's answer: a
/// well-formed response frame — the handler's answer, or a typed error.
async fn answer_to(
    connection: &quinn::Connection,
    bytes: &[u8],
) -> Result<Result<Vec<u8>, RemoteError>, String> {
    let (mut send, mut recv) = connection
        .open_bi()
        .await
        .map_err(|e| format!("open: {e}"))?;
    // The node may stop reading (an oversized frame): a write error is
    // not a failure, the answer is.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let read = frame::read_frame(&mut recv, frame::DEFAULT_MAX_FRAME_BYTES);
    let frame = tokio::time::timeout(ANSWER_WITHIN, read)
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| format!("reading the answer: {e}"))?
        .ok_or("the stream ended without an answer")?;
    let (header, payload) = postcard::take_from_bytes::<ResponseHeader>(&frame)
        .map_err(|e| format!("the answer's header does not decode: {e}"))?;
    Ok(match header {
        ResponseHeader::V1(ResponseHeaderV1::Ok) => Ok(payload.to_vec()),
        ResponseHeader::V1(ResponseHeaderV1::Err(error)) => Err(error),
    })
}

/// Runs `cases` raw streams from `strategy` against one node; after each,
/// the connection must be alive; at the end a valid request is served.
fn feed_the_node(strategy: impl Strategy<Value = Vec<u8>>, cases: u32) {
    let target = target();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&strategy, |bytes| {
        let answer = target
            .runtime
            .block_on(answer_to(&target.connection, &bytes))
            .map_err(TestCaseError::fail)?;
        if let Err(error) = &answer {
            // A typed refusal says what was wrong.
            prop_assert!(!error.message.is_empty(), "{:?}", error);
        }
        prop_assert!(
            target.connection.close_reason().is_none(),
            "the connection died: {:?}",
            target.connection.close_reason()
        );
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    // The node still serves: a valid request gets the node's answer.
    let status = NodeRequest::V1(NodeRequestV1::Client(ClientRequest::Get {
        key: b"k".to_vec(),
        epoch: 0,
    }));
    let answer = target
        .runtime
        .block_on(
            target
                .client
                .call_typed::<_, NodeResponse>(target.node.local_addr(), &status),
        )
        .expect("a valid request is answered");
    assert!(
        matches!(answer, NodeResponse::V1(NodeResponseV1::Client(_))),
        "{answer:?}"
    );
    let Target {
        runtime,
        node,
        client,
        ..
    } = target;
    runtime.block_on(async {
        client.shutdown().await;
        node.shutdown().await;
    });
}

// Proves random stream bytes (garbage, short, length prefixes of any size,
// with or without a plausible header) get a typed answer from a real node,
// and neither the connection nor the node dies.
#[test]
fn a_node_answers_random_streams_with_typed_errors() {
    let random = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        // A plausible length prefix and body.
        prop::collection::vec(any::<u8>(), 0..200).prop_map(|body| framed(&body)),
        // Any length prefix (up to u32::MAX) over a short body.
        (any::<u32>(), prop::collection::vec(any::<u8>(), 0..32)).prop_map(|(length, body)| {
            let mut bytes = length.to_be_bytes().to_vec();
            bytes.extend_from_slice(&body);
            bytes
        }),
    ];
    feed_the_node(random, 256);
}

// Proves mutated valid request frames (prefix, header and node request)
// get the node's answer or a typed error, and neither the connection nor
// the node dies.
#[test]
fn a_node_answers_mutated_frames_with_typed_answers() {
    let requests: Vec<Vec<u8>> = (sample_requests().iter())
        .map(|request| framed(&request_body(request)))
        .collect();
    let mutated = (
        prop::sample::select(requests),
        prop::collection::vec(mutation(), 1..5),
    )
        .prop_map(|(frame, mutations)| mutate(frame, &mutations));
    feed_the_node(mutated, 256);
}
