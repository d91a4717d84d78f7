//! The node's [`Handler`]: decodes a request, checks the caller's role,
//! and dispatches: Raft RPCs and snapshot streams (node certificates),
//! proposals forwarded by peers (node), client requests (client, admin or
//! node), administration (admin), workflow requests forwarded by peers
//! (node; the admin's role was checked by the peer), migration service
//! requests (node).

use std::io::Cursor;
use std::sync::Arc;

use async_trait::async_trait;
use openraft::Snapshot;

use super::node::NodeInner;
use super::workflow_ops::{self, Origin};
use super::{admin_ops, client_ops, propose};
use crate::certs::{PeerIdentity, Role};
use crate::rpc::{
    NodeRequest, NodeRequestV1, NodeResponse, NodeResponseV1, RaftRequest, RaftResponse,
};
use crate::transport::{require_role, Handler, RemoteError, RemoteErrorKind, ServerStream};

/// The largest snapshot a node accepts on one stream.
const MAX_SNAPSHOT_BYTES: usize = 4 << 30;

pub(crate) struct NodeHandler {
    node: Arc<NodeInner>,
}

impl NodeHandler {
    pub(crate) fn new(node: Arc<NodeInner>) -> Self {
        Self { node }
    }

    async fn raft(&self, group: u64, request: RaftRequest) -> RaftResponse {
        let Some(runtime) = self.node.groups.get(group) else {
            return RaftResponse::Refused(format!(
                "group {group} does not run on node {}",
                self.node.id
            ));
        };
        match request {
            RaftRequest::AppendEntries(rpc) => match runtime.raft.append_entries(rpc).await {
                Ok(response) => RaftResponse::AppendEntries(response),
                Err(error) => RaftResponse::Refused(error.to_string()),
            },
            RaftRequest::Vote(rpc) => match runtime.raft.vote(rpc).await {
                Ok(response) => RaftResponse::Vote(response),
                Err(error) => RaftResponse::Refused(error.to_string()),
            },
        }
    }
}

fn decode(bytes: &[u8]) -> Result<NodeRequestV1, RemoteError> {
    match postcard::from_bytes::<NodeRequest>(bytes) {
        Ok(NodeRequest::V1(request)) => Ok(request),
        Err(error) => Err(RemoteError::new(
            RemoteErrorKind::MalformedFrame,
            format!("undecodable request: {error}"),
        )),
    }
}

fn encode(response: NodeResponseV1) -> Result<Vec<u8>, RemoteError> {
    postcard::to_stdvec(&NodeResponse::V1(response)).map_err(|error| {
        RemoteError::new(
            RemoteErrorKind::Handler,
            format!("cannot encode answer: {error}"),
        )
    })
}

#[async_trait]
impl Handler for NodeHandler {
    async fn handle(&self, peer: PeerIdentity, request: Vec<u8>) -> Result<Vec<u8>, RemoteError> {
        let response = match decode(&request)? {
            NodeRequestV1::Raft { group, request } => {
                require_role(&peer, &[Role::Node])?;
                NodeResponseV1::Raft(self.raft(group, request).await)
            }
            NodeRequestV1::InstallSnapshot(_) => {
                return Err(RemoteError::new(
                    RemoteErrorKind::Unsupported,
                    "snapshots travel on a stream, not a call",
                ))
            }
            NodeRequestV1::Propose { group, command } => {
                require_role(&peer, &[Role::Node])?;
                NodeResponseV1::Proposed(propose::local(&self.node, group, command).await)
            }
            NodeRequestV1::Client(request) => {
                require_role(&peer, &[Role::Client, Role::Admin, Role::Node])?;
                NodeResponseV1::Client(client_ops::handle(&self.node, request).await)
            }
            NodeRequestV1::Admin(request) => {
                require_role(&peer, &[Role::Admin])?;
                NodeResponseV1::Admin(admin_ops::handle(&self.node, request).await)
            }
            NodeRequestV1::ForwardAdmin(request) => {
                require_role(&peer, &[Role::Node])?;
                NodeResponseV1::Admin(workflow_ops::handle(&self.node, request, Origin::Peer).await)
            }
            NodeRequestV1::Migration(request) => {
                require_role(&peer, &[Role::Node])?;
                NodeResponseV1::Migration(
                    crate::migration::service::handle(&self.node, request).await,
                )
            }
        };
        encode(response)
    }

    async fn handle_stream(
        &self,
        peer: PeerIdentity,
        request: Vec<u8>,
        stream: &mut ServerStream,
    ) -> Result<(), RemoteError> {
        require_role(&peer, &[Role::Node])?;
        let NodeRequestV1::InstallSnapshot(header) = decode(&request)? else {
            return Err(RemoteError::new(
                RemoteErrorKind::Unsupported,
                "only snapshots stream",
            ));
        };
        let mut data = Vec::new();
        while let Some(chunk) = stream.recv().await? {
            if data.len() + chunk.len() > MAX_SNAPSHOT_BYTES {
                return Err(RemoteError::new(
                    RemoteErrorKind::FrameTooLarge,
                    "snapshot too large",
                ));
            }
            data.extend_from_slice(&chunk);
        }
        let outcome = match self.node.groups.get(header.group) {
            None => Err(format!(
                "group {} does not run on node {}",
                header.group, self.node.id
            )),
            Some(runtime) => {
                let snapshot = Snapshot {
                    meta: header.meta,
                    snapshot: Box::new(Cursor::new(data)),
                };
                let installed = runtime
                    .raft
                    .install_full_snapshot(header.vote, snapshot)
                    .await;
                installed.map_err(|error| error.to_string())
            }
        };
        stream
            .send(&encode(NodeResponseV1::Snapshot(outcome))?)
            .await?;
        Ok(())
    }
}
