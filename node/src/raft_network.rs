//! openraft's network for one group, over the node's shared QUIC transport.
//!
//! One factory per group holds `(transport, group id)`; every RPC envelope
//! carries the group id so the receiving node routes it to the right `Raft`.
//! A failed connection maps to `Unreachable` (openraft backs off) rather than
//! `Network`. Full snapshots stream on one QUIC stream: a header frame, then
//! chunks of at most `SNAPSHOT_CHUNK_BYTES`.

// openraft's `RaftNetwork` trait fixes these error types (`RPCError`,
// `StreamingError`); they are large by openraft's design, not ours.
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::net::SocketAddr;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{Snapshot, Vote};

use crate::raft::{NodeAddr, TypeConfig};
use crate::rpc::{
    NodeRequest, NodeRequestV1, NodeResponse, NodeResponseV1, RaftRequest, RaftResponse,
    SnapshotHeader,
};
use crate::transport::{Transport, TransportError};

/// Bytes per data frame of a streamed snapshot.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, NodeAddr, RaftError<u64, E>>>;

/// Builds a [`GroupNetwork`] per target node.
#[derive(Clone)]
pub struct GroupNetworkFactory {
    transport: Transport,
    group: u64,
}

impl GroupNetworkFactory {
    /// The network of `group` over `transport`.
    pub fn new(transport: Transport, group: u64) -> Self {
        Self { transport, group }
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> GroupNetwork {
        GroupNetwork {
            transport: self.transport.clone(),
            group: self.group,
            target,
            addr: node.addr.parse(),
        }
    }
}

/// The connection from one group's leader (or candidate) to one peer.
pub struct GroupNetwork {
    transport: Transport,
    group: u64,
    target: u64,
    addr: Result<SocketAddr, std::net::AddrParseError>,
}

fn unreachable<E: std::error::Error>(error: impl std::fmt::Display) -> RPCError<u64, NodeAddr, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(error.to_string())))
}

fn network<E: std::error::Error>(error: impl std::fmt::Display) -> RPCError<u64, NodeAddr, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(error.to_string())))
}

impl GroupNetwork {
    fn addr<E: std::error::Error>(&self) -> Result<SocketAddr, RPCError<u64, NodeAddr, E>> {
        self.addr.clone().map_err(|error| {
            unreachable(format!("node {} has a bad address: {error}", self.target))
        })
    }

    async fn raft_call<E: std::error::Error>(
        &self,
        request: RaftRequest,
        option: &RPCOption,
    ) -> Result<RaftResponse, RPCError<u64, NodeAddr, E>> {
        let addr = self.addr()?;
        let request = NodeRequest::V1(NodeRequestV1::Raft {
            group: self.group,
            request,
        });
        let bytes = postcard::to_stdvec(&request).map_err(network)?;
        let answer = self
            .transport
            .call_with_timeout(addr, &bytes, option.hard_ttl())
            .await
            .map_err(|error| transport_error(error))?;
        match postcard::from_bytes::<NodeResponse>(&answer).map_err(network)? {
            NodeResponse::V1(NodeResponseV1::Raft(RaftResponse::Refused(reason))) => Err(
                unreachable(format!("node {} refused: {reason}", self.target)),
            ),
            NodeResponse::V1(NodeResponseV1::Raft(response)) => Ok(response),
            NodeResponse::V1(other) => Err(network(format!("unexpected answer {other:?}"))),
        }
    }
}

fn transport_error<E: std::error::Error>(error: TransportError) -> RPCError<u64, NodeAddr, E> {
    if error.is_unreachable() {
        unreachable(error)
    } else {
        network(error)
    }
}

impl RaftNetwork<TypeConfig> for GroupNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        match self
            .raft_call(RaftRequest::AppendEntries(rpc), &option)
            .await?
        {
            RaftResponse::AppendEntries(response) => Ok(response),
            other => Err(network(format!("unexpected answer {other:?}"))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        match self.raft_call(RaftRequest::Vote(rpc), &option).await? {
            RaftResponse::Vote(response) => Ok(response),
            other => Err(network(format!("unexpected answer {other:?}"))),
        }
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        // `full_snapshot` below streams whole snapshots; openraft only calls
        // this chunked RPC from the default `full_snapshot`, which we replace.
        Err(network(
            "chunked install_snapshot is not used: snapshots stream whole",
        ))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let send = self.stream_snapshot(vote, snapshot, option);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = send => result,
        }
    }
}

impl GroupNetwork {
    async fn stream_snapshot(
        &self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let unreachable_stream = |error: String| {
            StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(error)))
        };
        let addr = self
            .addr
            .clone()
            .map_err(|e| unreachable_stream(e.to_string()))?;
        let header = NodeRequest::V1(NodeRequestV1::InstallSnapshot(SnapshotHeader {
            group: self.group,
            vote,
            meta: snapshot.meta.clone(),
        }));
        let header = postcard::to_stdvec(&header).map_err(|e| unreachable_stream(e.to_string()))?;
        let mut stream = self
            .transport
            .open_stream(addr, &header)
            .await
            .map_err(|e| unreachable_stream(e.to_string()))?;
        let data = snapshot.snapshot.into_inner();
        for chunk in data.chunks(SNAPSHOT_CHUNK_BYTES) {
            stream
                .send(chunk)
                .await
                .map_err(|e| unreachable_stream(e.to_string()))?;
        }
        stream
            .finish()
            .map_err(|e| unreachable_stream(e.to_string()))?;
        let answer = stream
            .recv()
            .await
            .map_err(|e| unreachable_stream(e.to_string()))?
            .ok_or_else(|| unreachable_stream("snapshot stream closed without an answer".into()))?;
        match postcard::from_bytes::<NodeResponse>(&answer) {
            Ok(NodeResponse::V1(NodeResponseV1::Snapshot(Ok(response)))) => Ok(response),
            Ok(NodeResponse::V1(NodeResponseV1::Snapshot(Err(reason)))) => Err(unreachable_stream(
                format!("node {} refused the snapshot: {reason}", self.target),
            )),
            Ok(other) => Err(unreachable_stream(format!("unexpected answer {other:?}"))),
            Err(error) => Err(unreachable_stream(error.to_string())),
        }
    }
}
