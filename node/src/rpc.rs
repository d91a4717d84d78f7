//! The node's wire protocol: every request one node, admin or client sends
//! to a node, and every answer, as versioned enums (postcard; variants only
//! ever appended, STACK.md).
//!
//! Raft RPCs carry the group id, so all groups share one endpoint. Full
//! snapshots do not travel as one request: they stream over one QUIC stream
//! ([`SnapshotHeader`] then data chunks), see `raft_network.rs`.

use std::collections::BTreeMap;

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::{SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};

use shardflow_workflow::{Envelope, Event, InstanceSummary, WorkflowId, WorkflowState};

pub use crate::migration::launcher::{ReplicaMove, VShardMove};

use crate::command::{Command, Response};
use crate::metadata::Route;
use crate::raft::{NodeAddr, TypeConfig};

/// A Raft RPC for one group.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
}

/// The answer to a [`RaftRequest`]; `Err` carries openraft's error text.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftResponse {
    AppendEntries(AppendEntriesResponse<u64>),
    Vote(VoteResponse<u64>),
    /// The group refused or failed the RPC (e.g. it does not run here yet).
    Refused(String),
}

/// The first frame of a streamed full snapshot; data chunks follow.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub group: u64,
    pub vote: Vote<u64>,
    pub meta: SnapshotMeta<u64, NodeAddr>,
}

/// Everything a peer may ask a node.
#[derive(Debug, Serialize, Deserialize)]
pub enum NodeRequest {
    V1(NodeRequestV1),
}

/// Version 1 of the requests.
#[derive(Debug, Serialize, Deserialize)]
pub enum NodeRequestV1 {
    /// Node certificates only.
    Raft { group: u64, request: RaftRequest },
    /// Node certificates only: opens a snapshot stream.
    InstallSnapshot(SnapshotHeader),
    /// Node certificates only: propose `command` to `group` through this
    /// node (answered `NotLeader` if it does not lead the group).
    Propose { group: u64, command: Command },
    /// Client or admin certificates.
    Client(ClientRequest),
    /// Admin certificates only.
    Admin(AdminRequest),
    /// Node certificates only: an admin request about a workflow this node
    /// drives, forwarded by the node an admin asked (which checked the
    /// admin's role). Answered here or refused; never forwarded again.
    ForwardAdmin(AdminRequest),
    /// Node certificates only: a migration service request.
    Migration(MigrationRequest),
}

/// Key-value and routing requests. `epoch` is the routing epoch of the
/// key's vShard in the client's cached table (0 if it has none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        epoch: u64,
    },
    Delete {
        key: Vec<u8>,
        epoch: u64,
    },
    /// A linearizable read (served by the group's leader after a read index).
    Get {
        key: Vec<u8>,
        epoch: u64,
    },
    /// Up to `limit` pairs of `vshard` in key order after `after`.
    ScanVShard {
        vshard: u16,
        after: Option<Vec<u8>>,
        limit: u32,
        epoch: u64,
    },
    /// The routing table, read linearizably from the metadata group.
    Routing,
}

/// The answer to a [`ClientRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// The write was applied.
    Done,
    /// The value of a key (`None`: absent).
    Value(Option<Vec<u8>>),
    /// A page of a scan; `more` says whether to ask again after the last key.
    Scan {
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        more: bool,
    },
    Routing(RoutingTable),
    /// Ask that node instead: it leads (or is a member of) the group.
    Redirect {
        node: u64,
        addr: String,
    },
    /// The client's route for `vshard` is stale; the node knows `epoch`.
    StaleRouting {
        vshard: u16,
        epoch: u64,
    },
    /// Try again shortly (a fenced vShard, an election in progress).
    Retry {
        reason: String,
    },
    /// Refused; retrying will not help.
    Rejected {
        reason: String,
    },
    /// A migration's cut-over has fenced the vShard: ask the same node
    /// again shortly (the fence lasts one bounded cut-over; no backoff).
    Fenced {
        vshard: u16,
        migration: String,
    },
    /// The vShard moved away: `group` owns it from routing epoch `epoch`
    /// (the old owner's ghost knows where it went, so the client can
    /// update that one route instead of fetching the whole table).
    Moved {
        vshard: u16,
        group: u64,
        epoch: u64,
    },
}

/// The cluster's routing table as clients cache it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTable {
    /// Node id -> address.
    pub nodes: BTreeMap<u64, String>,
    /// Group id -> member node ids (group 0 included).
    pub groups: BTreeMap<u64, Vec<u64>>,
    /// vShard -> route (1024 entries once bootstrapped).
    pub routes: Vec<Route>,
}

/// Cluster administration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Creates the metadata group over `nodes` and `groups` data groups of
    /// `replicas` members each, the 1024 vShards spread evenly.
    Bootstrap {
        nodes: Vec<(u64, String)>,
        groups: u64,
        replicas: u64,
    },
    AddNode {
        id: u64,
        addr: String,
    },
    RemoveNode {
        id: u64,
    },
    /// This node's view of itself and its groups.
    Status,
    /// The workflows this node drives (`Workflows`); the ended ones too
    /// with `include_ended`. Answered by the node asked, never forwarded.
    WorkflowList {
        include_ended: bool,
    },
    /// One workflow's state and its events from `from_seq` on, at most
    /// [`MAX_SHOW_EVENTS`] of them (`Workflow`); ask again from the next
    /// seq while `state.next_seq` says more exist.
    WorkflowShow {
        id: WorkflowId,
        from_seq: u64,
    },
    /// Journals a cancel request (honoured before the point of no return).
    WorkflowCancel {
        id: WorkflowId,
        by: String,
    },
    /// Drives a `Paused` workflow again, with fresh retry budgets.
    WorkflowResume {
        id: WorkflowId,
        by: String,
    },
    /// Starts a MoveVShard workflow on the node asked (`Submitted`).
    MigrateVShard(VShardMove),
    /// Starts a MoveReplica workflow on the node asked (`Submitted`).
    MigrateReplica(ReplicaMove),
}

/// The most events one `WorkflowShow` answer carries.
pub const MAX_SHOW_EVENTS: usize = 2_048;

impl AdminRequest {
    /// The workflow the request is about; its id names the node driving it,
    /// the node that must answer.
    pub fn workflow(&self) -> Option<WorkflowId> {
        match self {
            AdminRequest::WorkflowShow { id, .. }
            | AdminRequest::WorkflowCancel { id, .. }
            | AdminRequest::WorkflowResume { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// Whether it is one of the workflow requests.
    pub fn is_workflow(&self) -> bool {
        matches!(self, AdminRequest::WorkflowList { .. }) || self.workflow().is_some()
    }
}

/// The answer to an [`AdminRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminResponse {
    Done,
    Status(NodeStatus),
    Retry {
        reason: String,
    },
    Rejected {
        reason: String,
    },
    /// The answer to `WorkflowList`: the answering node and its workflows.
    Workflows {
        node: u64,
        workflows: Vec<WorkflowSummary>,
    },
    /// The answer to `WorkflowShow`.
    Workflow(Box<WorkflowPage>),
    /// The answer to `MigrateVShard` / `MigrateReplica`: the workflow
    /// journaled and started (its id names the node driving it).
    Submitted {
        id: WorkflowId,
    },
}

/// One workflow as `WorkflowList` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowSummary {
    /// What the journal keeps about it.
    pub instance: InstanceSummary,
    /// Its phase label (`Running`, `Compensating`, `Paused`, `Completed`,
    /// `Aborted`).
    pub phase: String,
    /// The step in flight, or the next one to run or compensate.
    pub step: Option<String>,
}

/// A workflow's state and a run of its events, as `WorkflowShow` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowPage {
    /// The fold of every event journaled when the page was read.
    pub state: WorkflowState,
    /// Consecutive events from the asked seq (possibly none).
    pub events: Vec<WorkflowEvent>,
}

/// One journaled event, without its hash-chain bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowEvent {
    pub seq: u64,
    /// When it was journaled (ms since the Unix epoch).
    pub at_ms: u64,
    /// The node that journaled it.
    pub node: u64,
    pub event: Event,
}

impl From<&Envelope> for WorkflowEvent {
    fn from(envelope: &Envelope) -> Self {
        let at = envelope.current();
        WorkflowEvent {
            seq: at.seq,
            at_ms: at.at_ms,
            node: at.node,
            event: at.body.clone(),
        }
    }
}

/// One node's view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: u64,
    pub addr: String,
    /// The metadata as this node's replica of group 0 has applied it.
    pub routing: RoutingTable,
    pub groups: Vec<LocalGroupStatus>,
}

/// One group as seen by one of its members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalGroupStatus {
    pub group: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// vShards this replica holds as `Owned`.
    pub owned_vshards: u32,
}

/// Why a `Propose` did not apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProposeError {
    /// This node does not lead the group; the leader, if known.
    NotLeader { leader: Option<(u64, String)> },
    /// The group does not run on this node.
    UnknownGroup { group: u64 },
    /// Raft failed (shutting down, storage error).
    Failed(String),
}

/// Everything a node answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum NodeResponse {
    V1(NodeResponseV1),
}

/// Version 1 of the answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum NodeResponseV1 {
    Raft(RaftResponse),
    Snapshot(Result<openraft::raft::SnapshotResponse<u64>, String>),
    Proposed(Result<Response, ProposeError>),
    Client(ClientResponse),
    Admin(AdminResponse),
    Migration(MigrationResponse),
}

/// A migration service request, node certificates only (`NodeRequestV1::Migration`).
///
/// Source reads and replica moves are answered by the group's **leader**
/// (after a read index for the reads); any other node answers `Redirect`
/// to the leader it knows, or to a member of the group. `EnsureGroup` is
/// answered by the node asked. See `crate::migration`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationRequest {
    /// The metadata, read linearizably on group 0's leader.
    Metadata,
    /// One chunk of a vShard's base copy (`StateMachineStore::export_chunk`).
    ExportChunk {
        group: u64,
        vshard: u16,
        after_key: Option<Vec<u8>>,
        max_pairs: u32,
        max_bytes: u32,
    },
    /// Recorded changes after a log index (`StateMachineStore::changes_after`).
    ChangesAfter {
        group: u64,
        vshard: u16,
        after_index: u64,
        limit: u32,
    },
    /// The vShard's digest (`StateMachineStore::vshard_digest`).
    Digest { group: u64, vshard: u16 },
    /// The vShard's fence index, if fenced (`StateMachineStore::fence_index`).
    FenceIndex { group: u64, vshard: u16 },
    /// The vShard's state and migration record in the group.
    VShardStatus { group: u64, vshard: u16 },
    /// Starts the group's (uninitialized) Raft on the node asked, so the
    /// leader can replicate to it once it is a learner.
    EnsureGroup { group: u64 },
    /// openraft `add_learner(node, addr, blocking = false)` on the leader.
    AddLearner { group: u64, node: u64, addr: String },
    /// The leader's committed index and each replica's matched index.
    Replication { group: u64 },
    /// Joint consensus to exactly these voters (`retain = false`).
    ChangeMembership {
        group: u64,
        voters: std::collections::BTreeSet<u64>,
    },
    /// Removes a learner (`ChangeMembers::RemoveNodes`).
    RemoveLearner { group: u64, node: u64 },
    /// Group 0's leader offers its metadata (applied at `applied_index`) to
    /// a node outside group 0, which adopts it if newer: how a node that
    /// joined and holds no replica yet learns the routing table and its
    /// peers. Answered `Done`.
    OfferMetadata {
        applied_index: u64,
        metadata: Box<crate::metadata::MetadataState>,
    },
}

/// A chunk of a base copy on the wire (`crate::raft::ExportChunk`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireExportChunk {
    pub migration: String,
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
    pub applied_index: u64,
    pub more: bool,
}

/// A page of recorded changes on the wire (`crate::raft::ChangesPage`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireChangesPage {
    pub migration: String,
    pub changes: Vec<(u64, crate::command::Change)>,
    pub applied_index: u64,
}

/// A digest on the wire (`crate::raft::DigestAt`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireDigestAt {
    pub state: Option<crate::data::VShardState>,
    pub digest: crate::data::VShardDigest,
    pub applied_index: u64,
}

/// A vShard as one group's leader holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VShardStatus {
    pub state: Option<crate::data::VShardState>,
    pub migration: Option<crate::data::VShardMigration>,
    /// The applied index both were read at (after a read index).
    pub applied_index: u64,
}

/// A group's replication as its leader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationStatus {
    /// The leader that answered.
    pub leader: u64,
    /// The leader's committed index (its read index when it answered).
    pub committed: Option<u64>,
    /// Node -> the highest log index known replicated there (leader included).
    pub matched: BTreeMap<u64, Option<u64>>,
    /// The voters of the effective membership (both halves while joint).
    pub voters: Vec<u64>,
    /// The learners of the effective membership.
    pub learners: Vec<u64>,
    /// Whether the effective membership is a joint configuration.
    pub joint: bool,
    /// The log index of the effective membership's entry.
    pub membership_index: Option<u64>,
}

/// The answer to a [`MigrationRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationResponse {
    Done,
    /// The metadata at group 0's applied index `applied_index`.
    Metadata {
        applied_index: u64,
        metadata: Box<crate::metadata::MetadataState>,
    },
    Chunk(WireExportChunk),
    Changes(WireChangesPage),
    Digest(WireDigestAt),
    FenceIndex(Option<u64>),
    VShardStatus(Box<VShardStatus>),
    Replication(ReplicationStatus),
    /// Ask that node: it leads (or is a member of) the group.
    Redirect {
        node: u64,
        addr: String,
    },
    /// Try again shortly (an election, a membership change in progress).
    Retry {
        reason: String,
    },
    /// The state machine refused the read; retrying will not help.
    Rejected(crate::command::Rejection),
    /// The recorded changes asked for are not available (trimmed, never
    /// recorded, not tracked): terminal for this cursor.
    ChangesUnavailable {
        reason: String,
    },
    /// Failed for good (an invalid membership change, storage).
    Failed {
        reason: String,
    },
}
