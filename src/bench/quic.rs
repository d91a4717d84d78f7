//! Raw QUIC stream throughput between two node endpoints: the node
//! transport (quinn, TLS 1.3 with mutual auth, node certificates of the
//! bench cluster's CA) on loopback, one framed stream
//! (`Transport::open_stream`) carrying frames of a base-copy chunk's size
//! to a handler that only counts them. One warm-up stream, then the
//! measured one; the rate counts payload bytes until the receiver's count
//! comes back.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use shardflow_node::certs::PeerIdentity;
use shardflow_node::transport::{
    ClusterTls, Handler, RemoteError, ServerStream, Transport, TransportConfig,
};

use super::stats::mb_per_s;
use super::BenchError;

/// What the stream carried.
#[derive(Clone, Debug)]
pub struct QuicFigures {
    /// Payload bytes per second (decimal MB).
    pub mb_s: f64,
    /// Payload bytes of the measured stream.
    pub bytes: u64,
}

/// Counts the bytes of every frame of a stream, then answers the count.
struct Sink;

#[async_trait]
impl Handler for Sink {
    async fn handle(&self, _: PeerIdentity, request: Vec<u8>) -> Result<Vec<u8>, RemoteError> {
        Ok(request)
    }

    async fn handle_stream(
        &self,
        _: PeerIdentity,
        _: Vec<u8>,
        stream: &mut ServerStream,
    ) -> Result<(), RemoteError> {
        let mut bytes = 0u64;
        while let Some(frame) = stream.recv().await.map_err(RemoteError::from)? {
            bytes += frame.len() as u64;
        }
        stream
            .send(&bytes.to_le_bytes())
            .await
            .map_err(RemoteError::from)
    }
}

/// Streams `bytes` (rounded up to whole frames of `frame_bytes`) from node
/// 1's certificate to node 2's, both from `certs`.
pub async fn measure(
    certs: &Path,
    bytes: u64,
    frame_bytes: usize,
) -> Result<QuicFigures, BenchError> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let sender_tls = ClusterTls::load(certs, PeerIdentity::node(1))?;
    let receiver_tls = ClusterTls::load(certs, PeerIdentity::node(2))?;
    let sender = Transport::bind(loopback, &sender_tls, TransportConfig::default())?;
    let receiver = Transport::bind(loopback, &receiver_tls, TransportConfig::default())?;
    receiver.serve(Arc::new(Sink))?;
    let peer = receiver.local_addr()?;
    let frame = vec![0x5a; frame_bytes.max(1)];
    let frames = bytes.div_ceil(frame.len() as u64).max(1);
    let measured = async {
        // Warm-up: the handshake, the congestion window.
        stream(&sender, peer, &frame, frames.div_ceil(8)).await?;
        let started = Instant::now();
        let sent = stream(&sender, peer, &frame, frames).await?;
        Ok::<_, BenchError>(QuicFigures {
            mb_s: mb_per_s(sent, started.elapsed()),
            bytes: sent,
        })
    }
    .await;
    sender.shutdown().await;
    receiver.shutdown().await;
    measured
}

/// One stream of `frames` frames; the bytes the receiver counted.
async fn stream(
    sender: &Transport,
    peer: SocketAddr,
    frame: &[u8],
    frames: u64,
) -> Result<u64, BenchError> {
    let mut stream = sender.open_stream(peer, b"bench").await?;
    for _ in 0..frames {
        stream.send(frame).await?;
    }
    stream.finish()?;
    let answer = stream.recv().await?.unwrap_or_default();
    let counted = <[u8; 8]>::try_from(answer.as_slice())
        .map(u64::from_le_bytes)
        .map_err(|_| BenchError::Measure("the receiver sent no byte count back".into()))?;
    let expected = frames * frame.len() as u64;
    if counted != expected {
        return Err(BenchError::Measure(format!(
            "the receiver counted {counted} of {expected} bytes"
        )));
    }
    Ok(counted)
}
