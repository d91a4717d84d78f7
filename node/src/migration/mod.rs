//! The node-side services the migration workflows (`steps/`) call, and the
//! reactors that finish a decided migration without its driver (DESIGN §4,
//! "Once decided, a migration finishes without its driver").
//!
//! [`MigrationApi`] is a cheap clonable handle ([`Node::migration_api`]):
//!
//! - [`MigrationApi::propose`] — a command to a group's leader, wherever it
//!   runs. Callers put the workflow's idempotency key and attempt in the
//!   command; a rejection comes back as an `Ok(Response)` carrying it (the
//!   command was decided), a transport or leadership failure as an error.
//! - [`MigrationApi::metadata`] — the metadata read linearizably (group 0's
//!   leader, read index).
//! - Source reads — [`export_chunk`](MigrationApi::export_chunk),
//!   [`changes_after`](MigrationApi::changes_after),
//!   [`digest`](MigrationApi::digest), [`fence_index`](MigrationApi::fence_index),
//!   [`vshard_status`](MigrationApi::vshard_status) — served by the group's
//!   leader after a read index.
//! - Replica moves, on the group's leader —
//!   [`ensure_group`](MigrationApi::ensure_group) (on the new node, before
//!   `add_learner`), [`add_learner`](MigrationApi::add_learner),
//!   [`replication`](MigrationApi::replication),
//!   [`change_membership`](MigrationApi::change_membership),
//!   [`remove_learner`](MigrationApi::remove_learner).
//!
//! Every remote call finds the group's leader (cached per group, redirects
//! followed, members tried in turn, bounded backoff) until its deadline;
//! failures are typed [`MigrationError`]s with
//! [`MigrationError::is_retryable`].
//!
//! **Leadership transfer.** openraft 0.9 has no API to hand leadership to a
//! chosen node. A MoveReplica that removes the group's leader does it by
//! joint consensus (`change_membership` with `retain = false`): the old
//! leader commits the new configuration, then steps down, and the remaining
//! voters elect a new leader. [`MigrationApi::replication`] tells the
//! caller who leads.
//!
//! **Nodes outside group 0.** A node whose group-0 replica was never
//! initialized (it only holds replicas moved to it) learns the metadata
//! from the members of its data groups: the reactor loop fetches it from
//! group 0's leader through them and adopts it (forward only), so the node
//! routes clients and reacts like any other. Drive migrations from nodes of
//! the metadata group, though: their view is the freshest. A learner's group is
//! started by [`MigrationApi::ensure_group`], and the node's reconcile loop
//! keeps it running while the group's leader does not name the node yet
//! (until `add_learner` commits), for
//! [`ensure_group_grace`](crate::server::MigrationTimings::ensure_group_grace)
//! after the last `EnsureGroup`; past it, a replica the leader excludes is
//! stopped (an abandoned move). After a restart the node starts it again
//! from `DATA/groups`, without that grace (it lives in memory): a
//! MoveReplica's CatchUp re-sends `EnsureGroup`, which restores it, and
//! starts the replica again if reconcile stopped it.

pub mod launcher;
pub mod reactor;
pub(crate) mod service;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::command::{Command, Rejection, Response, METADATA_GROUP};
use crate::metadata::MetadataState;
use crate::raft::{ChangesPage, DigestAt, ExportChunk};
use crate::rpc::{
    MigrationRequest, MigrationResponse, NodeRequest, NodeRequestV1, NodeResponse, NodeResponseV1,
    ProposeError, ReplicationStatus,
};
use crate::server::node::NodeInner;
use crate::server::propose;

pub use crate::rpc::VShardStatus;

/// The most hops (redirects, member turns) one call makes.
const MAX_HOPS: u32 = 32;

/// Why a migration service call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    /// No leader answered before the deadline (election, unreachable
    /// nodes, a membership change in progress). Retryable.
    #[error("group {group}: no answer before the deadline: {reason}")]
    Unavailable { group: u64, reason: String },
    /// The group is unknown to this node's metadata. Retryable (the
    /// metadata may lag), but usually a caller bug.
    #[error("group {group} is unknown here")]
    UnknownGroup { group: u64 },
    /// The state machine refused the read. Terminal for this call.
    #[error("group {group} refused: {rejection}")]
    Rejected { group: u64, rejection: Rejection },
    /// The recorded changes asked for no longer exist (trimmed, not
    /// tracked). Terminal: the copy cannot continue from this cursor.
    #[error("group {group}: {reason}")]
    ChangesUnavailable { group: u64, reason: String },
    /// Failed for good (an invalid membership change, a protocol error).
    #[error("group {group}: {reason}")]
    Failed { group: u64, reason: String },
}

impl MigrationError {
    /// Whether the same call may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            MigrationError::Unavailable { .. } | MigrationError::UnknownGroup { .. } => true,
            MigrationError::Rejected { rejection, .. } => rejection.is_retryable(),
            MigrationError::ChangesUnavailable { .. } | MigrationError::Failed { .. } => false,
        }
    }
}

/// The migration service handle of one node. Cheap to clone; clones share
/// the leader cache.
#[derive(Clone)]
pub struct MigrationApi {
    node: Arc<NodeInner>,
    /// Group -> the address that last answered as its leader.
    leaders: Arc<Mutex<BTreeMap<u64, String>>>,
    /// Node -> the group-0 index of the last metadata it took from this
    /// node (as group 0's leader), or an offer in flight (`u64::MAX`).
    offered: Arc<Mutex<BTreeMap<u64, u64>>>,
}

/// How long one metadata offer may take.
const OFFER_DEADLINE: Duration = Duration::from_secs(1);

/// The milliseconds since the Unix epoch on this node's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl MigrationApi {
    pub(crate) fn new(node: Arc<NodeInner>) -> Self {
        Self {
            node,
            leaders: Arc::new(Mutex::new(BTreeMap::new())),
            offered: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// On group 0's leader: offers the metadata to every node outside
    /// group 0 that has not taken this version yet (in the background, one
    /// offer per node at a time). Without it a node that joined holds no
    /// replica, so no peer, and never learns the routing table.
    pub(crate) fn offer_metadata(&self) {
        let (index, metadata) = self.node.metadata_at();
        let group0 = metadata.groups.get(&METADATA_GROUP);
        for (&id, addr) in &metadata.nodes {
            if id == self.node.id || group0.is_some_and(|members| members.contains(&id)) {
                continue;
            }
            {
                let mut offered = self.offered.lock().unwrap_or_else(|p| p.into_inner());
                let last = offered.get(&id).copied().unwrap_or(0);
                if last == u64::MAX || last >= index {
                    continue;
                }
                offered.insert(id, u64::MAX);
            }
            let (api, addr, metadata) = (self.clone(), addr.clone(), Arc::clone(&metadata));
            tokio::spawn(async move {
                let offer = MigrationRequest::OfferMetadata {
                    applied_index: index,
                    metadata: Box::new((*metadata).clone()),
                };
                let taken = matches!(
                    api.remote(&addr, &offer, Instant::now() + OFFER_DEADLINE)
                        .await,
                    Ok(MigrationResponse::Done)
                );
                let mut offered = api.offered.lock().unwrap_or_else(|p| p.into_inner());
                offered.insert(id, if taken { index } else { 0 });
            });
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node.id
    }

    /// The milliseconds since the Unix epoch on this node's clock: the
    /// `now_ms` of metadata commands.
    pub fn now_ms(&self) -> u64 {
        now_ms()
    }

    /// Proposes `command` to `group` through its leader, wherever it runs,
    /// until `deadline`. A state-machine rejection is an `Ok` response
    /// carrying it (see [`Response::rejection`]); retry a retryable error
    /// with the same idempotency key.
    pub async fn propose(
        &self,
        group: u64,
        command: Command,
        deadline: Instant,
    ) -> Result<Response, MigrationError> {
        if let Err(error) = command.check_limits() {
            return Err(MigrationError::Failed {
                group,
                reason: error.to_string(),
            });
        }
        match propose::anywhere(&self.node, group, command, deadline).await {
            Ok(response) => Ok(response),
            Err(ProposeError::UnknownGroup { group }) => {
                Err(MigrationError::UnknownGroup { group })
            }
            Err(error) => Err(MigrationError::Unavailable {
                group,
                reason: format!("{error:?}"),
            }),
        }
    }

    /// The metadata, read linearizably on group 0's leader.
    pub async fn metadata(&self, deadline: Instant) -> Result<MetadataState, MigrationError> {
        match self
            .call(METADATA_GROUP, MigrationRequest::Metadata, deadline)
            .await?
        {
            MigrationResponse::Metadata { metadata, .. } => Ok(*metadata),
            other => Err(unexpected(METADATA_GROUP, &other)),
        }
    }

    /// On a node whose group-0 replica was never initialized (it holds
    /// only replicas moved to it), fetches the metadata from a peer named
    /// in a local group's membership and adopts it, so the node routes
    /// clients and runs its reactors. Whether it adopted one.
    pub(crate) async fn adopt_metadata_from_peers(&self, deadline: Instant) -> bool {
        let mut peers: Vec<String> = Vec::new();
        for (group, runtime) in self.node.groups.all() {
            if group == METADATA_GROUP {
                continue;
            }
            let membership = runtime.raft.metrics().borrow().membership_config.clone();
            for (id, addr) in membership.membership().nodes() {
                if *id != self.node.id && !peers.contains(&addr.addr) {
                    peers.push(addr.addr.clone());
                }
            }
        }
        // A node holding no replica any more asks the nodes it last heard of.
        peers.extend(self.node.known_peer_addrs());
        for peer in peers {
            let mut addr = peer;
            for _ in 0..3 {
                match self
                    .remote(&addr, &MigrationRequest::Metadata, deadline)
                    .await
                {
                    Ok(MigrationResponse::Metadata {
                        applied_index,
                        metadata,
                    }) => {
                        self.node.adopt_metadata(applied_index, *metadata);
                        return true;
                    }
                    Ok(MigrationResponse::Redirect { addr: next, .. }) if next != addr => {
                        addr = next;
                    }
                    _ => break,
                }
            }
        }
        false
    }

    /// Up to `max_pairs` pairs (about `max_bytes`, at least one pair) of
    /// `vshard` after `after_key`, read on the source group's leader: one
    /// chunk of a base copy (`StateMachineStore::export_chunk`; refused
    /// unless the vShard is tracked for a migration there).
    pub async fn export_chunk(
        &self,
        group: u64,
        vshard: u16,
        after_key: Option<Vec<u8>>,
        max_pairs: u32,
        max_bytes: u32,
        deadline: Instant,
    ) -> Result<ExportChunk, MigrationError> {
        let request = MigrationRequest::ExportChunk {
            group,
            vshard,
            after_key,
            max_pairs,
            max_bytes,
        };
        match self.call(group, request, deadline).await? {
            MigrationResponse::Chunk(chunk) => Ok(ExportChunk {
                migration: chunk.migration,
                pairs: chunk.pairs,
                applied_index: chunk.applied_index,
                more: chunk.more,
            }),
            other => Err(unexpected(group, &other)),
        }
    }

    /// Up to `limit` changes recorded for `vshard` after `after_index`, read
    /// on the source group's leader (`StateMachineStore::changes_after`).
    pub async fn changes_after(
        &self,
        group: u64,
        vshard: u16,
        after_index: u64,
        limit: u32,
        deadline: Instant,
    ) -> Result<ChangesPage, MigrationError> {
        let request = MigrationRequest::ChangesAfter {
            group,
            vshard,
            after_index,
            limit,
        };
        match self.call(group, request, deadline).await? {
            MigrationResponse::Changes(page) => Ok(ChangesPage {
                migration: page.migration,
                changes: page.changes,
                applied_index: page.applied_index,
            }),
            other => Err(unexpected(group, &other)),
        }
    }

    /// The digest of `vshard` in `group` (any state), on its leader.
    pub async fn digest(
        &self,
        group: u64,
        vshard: u16,
        deadline: Instant,
    ) -> Result<DigestAt, MigrationError> {
        match self
            .call(group, MigrationRequest::Digest { group, vshard }, deadline)
            .await?
        {
            MigrationResponse::Digest(at) => Ok(DigestAt {
                state: at.state,
                digest: at.digest,
                applied_index: at.applied_index,
            }),
            other => Err(unexpected(group, &other)),
        }
    }

    /// The log index of `vshard`'s fence in `group`, if it is fenced there.
    pub async fn fence_index(
        &self,
        group: u64,
        vshard: u16,
        deadline: Instant,
    ) -> Result<Option<u64>, MigrationError> {
        let request = MigrationRequest::FenceIndex { group, vshard };
        match self.call(group, request, deadline).await? {
            MigrationResponse::FenceIndex(index) => Ok(index),
            other => Err(unexpected(group, &other)),
        }
    }

    /// `vshard`'s state and migration record in `group`, on its leader.
    pub async fn vshard_status(
        &self,
        group: u64,
        vshard: u16,
        deadline: Instant,
    ) -> Result<VShardStatus, MigrationError> {
        let request = MigrationRequest::VShardStatus { group, vshard };
        match self.call(group, request, deadline).await? {
            MigrationResponse::VShardStatus(status) => Ok(*status),
            other => Err(unexpected(group, &other)),
        }
    }

    /// Starts `group`'s Raft, uninitialized, on `node` (the node a replica
    /// moves to), so its leader can replicate to it once it is a learner.
    /// Idempotent. Call it before [`MigrationApi::add_learner`].
    pub async fn ensure_group(
        &self,
        group: u64,
        node: u64,
        addr: &str,
        deadline: Instant,
    ) -> Result<(), MigrationError> {
        let request = MigrationRequest::EnsureGroup { group };
        let mut last = String::from("no attempt before the deadline");
        for hop in 0..MAX_HOPS {
            if Instant::now() >= deadline {
                break;
            }
            let answer = if node == self.node.id {
                service::handle(&self.node, request.clone()).await
            } else {
                match self.remote(addr, &request, deadline).await {
                    Ok(answer) => answer,
                    Err(reason) => MigrationResponse::Retry { reason },
                }
            };
            match answer {
                MigrationResponse::Done => return Ok(()),
                MigrationResponse::Retry { reason } => last = reason,
                other => return Err(terminal(group, other)),
            }
            backoff(hop, deadline).await;
        }
        Err(MigrationError::Unavailable {
            group,
            reason: format!("node {node}: {last}"),
        })
    }

    /// Adds `node` at `addr` as a learner of `group` (openraft
    /// `add_learner`, non-blocking: it does **not** mean caught up; watch
    /// [`MigrationApi::replication`]). Idempotent.
    pub async fn add_learner(
        &self,
        group: u64,
        node: u64,
        addr: String,
        deadline: Instant,
    ) -> Result<(), MigrationError> {
        let request = MigrationRequest::AddLearner { group, node, addr };
        self.call_done(group, request, deadline).await
    }

    /// The group's replication as its leader sees it: the committed index
    /// (its read index) and the matched index of every replica. A learner
    /// has caught up once its matched index reaches a committed index
    /// read before.
    pub async fn replication(
        &self,
        group: u64,
        deadline: Instant,
    ) -> Result<ReplicationStatus, MigrationError> {
        match self
            .call(group, MigrationRequest::Replication { group }, deadline)
            .await?
        {
            MigrationResponse::Replication(status) => Ok(status),
            other => Err(unexpected(group, &other)),
        }
    }

    /// Node -> matched index, and the leader's committed index.
    pub async fn replication_matched(
        &self,
        group: u64,
        deadline: Instant,
    ) -> Result<(BTreeMap<u64, Option<u64>>, Option<u64>), MigrationError> {
        let status = self.replication(group, deadline).await?;
        Ok((status.matched, status.committed))
    }

    /// Makes `voters` the group's voters by joint consensus; voters not in
    /// the set leave the group (`retain = false`). Every new voter must be
    /// a learner already. Idempotent once done.
    pub async fn change_membership(
        &self,
        group: u64,
        voters: BTreeSet<u64>,
        deadline: Instant,
    ) -> Result<(), MigrationError> {
        let request = MigrationRequest::ChangeMembership { group, voters };
        self.call_done(group, request, deadline).await
    }

    /// Removes the learner `node` from `group` (compensation of
    /// `add_learner`). A node that is no member is fine; a voter is refused.
    pub async fn remove_learner(
        &self,
        group: u64,
        node: u64,
        deadline: Instant,
    ) -> Result<(), MigrationError> {
        let request = MigrationRequest::RemoveLearner { group, node };
        self.call_done(group, request, deadline).await
    }

    async fn call_done(
        &self,
        group: u64,
        request: MigrationRequest,
        deadline: Instant,
    ) -> Result<(), MigrationError> {
        match self.call(group, request, deadline).await? {
            MigrationResponse::Done => Ok(()),
            other => Err(unexpected(group, &other)),
        }
    }

    /// Sends `request` to `group`'s leader: the cached one first, else this
    /// node, else the members in turn; follows redirects; retries `Retry`
    /// and transport failures with backoff until `deadline`. Returns the
    /// first answer that is neither a redirect nor a retry.
    async fn call(
        &self,
        group: u64,
        request: MigrationRequest,
        deadline: Instant,
    ) -> Result<MigrationResponse, MigrationError> {
        let mut target = self.cached_leader(group);
        let mut member_turn = 0usize;
        // The local replica is asked once per call: a replica that lost
        // track of the leader (removed from the group, partitioned) would
        // answer `Retry` forever, so later hops go to the members.
        let mut local_tried = false;
        let mut last = String::from("no attempt before the deadline");
        for hop in 0..MAX_HOPS {
            if Instant::now() >= deadline {
                break;
            }
            let local = target.is_none() && !local_tried && self.node.groups.get(group).is_some();
            local_tried |= local;
            let (answer, asked) = if local {
                let answer = service::handle(&self.node, request.clone()).await;
                (answer, self.node.addr.to_string())
            } else {
                let addr = match &target {
                    Some(addr) => addr.clone(),
                    None => match self.member_addr(group, &mut member_turn) {
                        Some(addr) => addr,
                        None if local_tried => {
                            // This node is the only member known: ask it again.
                            local_tried = false;
                            backoff(hop, deadline).await;
                            continue;
                        }
                        None => return Err(MigrationError::UnknownGroup { group }),
                    },
                };
                let answer = match self.remote(&addr, &request, deadline).await {
                    Ok(answer) => answer,
                    Err(reason) => MigrationResponse::Retry { reason },
                };
                (answer, addr)
            };
            match answer {
                MigrationResponse::Redirect { addr, .. } if addr != asked => {
                    target = Some(addr);
                    if hop >= 4 {
                        // Leadership is moving: let it settle.
                        backoff(hop - 4, deadline).await;
                    }
                    continue;
                }
                MigrationResponse::Redirect { node, .. } => {
                    last = format!("node {node} redirected to itself");
                    target = None;
                    self.forget_leader(group);
                }
                MigrationResponse::Retry { reason } => {
                    last = reason;
                    target = None;
                    self.forget_leader(group);
                }
                answer => {
                    match answer {
                        MigrationResponse::Rejected(_)
                        | MigrationResponse::ChangesUnavailable { .. }
                        | MigrationResponse::Failed { .. } => {}
                        _ => self.remember_leader(group, asked),
                    }
                    return Ok(answer);
                }
            }
            backoff(hop, deadline).await;
        }
        Err(MigrationError::Unavailable {
            group,
            reason: last,
        })
    }

    async fn remote(
        &self,
        addr: &str,
        request: &MigrationRequest,
        deadline: Instant,
    ) -> Result<MigrationResponse, String> {
        let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        let request = NodeRequest::V1(NodeRequestV1::Migration(request.clone()));
        let remaining = deadline.saturating_duration_since(Instant::now());
        let sent = self
            .node
            .transport
            .call_typed::<_, NodeResponse>(addr, &request);
        match tokio::time::timeout(remaining, sent).await {
            Err(_) => Err(format!("{addr}: timed out")),
            Ok(Err(error)) => Err(format!("{addr}: {error}")),
            Ok(Ok(NodeResponse::V1(NodeResponseV1::Migration(answer)))) => Ok(answer),
            Ok(Ok(other)) => Err(format!("{addr}: unexpected answer {other:?}")),
        }
    }

    fn member_addr(&self, group: u64, turn: &mut usize) -> Option<String> {
        let metadata = self.node.metadata();
        let members: Vec<u64> = (metadata.groups.get(&group)?.iter())
            .copied()
            .filter(|m| *m != self.node.id)
            .collect();
        if members.is_empty() {
            return None;
        }
        let member = members[*turn % members.len()];
        *turn += 1;
        metadata.nodes.get(&member).cloned()
    }

    fn cached_leader(&self, group: u64) -> Option<String> {
        let cache = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(&group).cloned()
    }

    fn remember_leader(&self, group: u64, addr: String) {
        let mut cache = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(group, addr);
    }

    fn forget_leader(&self, group: u64) {
        let mut cache = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        cache.remove(&group);
    }
}

async fn backoff(hop: u32, deadline: Instant) {
    let pause = Duration::from_millis(20u64 << hop.min(4));
    tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
}

fn terminal(group: u64, answer: MigrationResponse) -> MigrationError {
    unexpected(group, &answer)
}

/// The error for an answer of the wrong kind (terminal answers included).
fn unexpected(group: u64, answer: &MigrationResponse) -> MigrationError {
    match answer {
        MigrationResponse::Rejected(rejection) => MigrationError::Rejected {
            group,
            rejection: rejection.clone(),
        },
        MigrationResponse::ChangesUnavailable { reason } => MigrationError::ChangesUnavailable {
            group,
            reason: reason.clone(),
        },
        MigrationResponse::Failed { reason } => MigrationError::Failed {
            group,
            reason: reason.clone(),
        },
        other => MigrationError::Failed {
            group,
            reason: format!("unexpected answer {other:?}"),
        },
    }
}
