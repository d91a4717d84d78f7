//! The state of the MoveVShard model: one value per actor, the network, and
//! the client-side oracle (what was acknowledged, the linearizability history).
//!
//! Everything here is plain data: the transitions live in `model.rs`. Every
//! type is small and `Ord`/`Hash`, because the checker hashes every state it
//! reaches and the network is a `BTreeSet` (a message in flight twice is the
//! same message: duplicates are modelled by handling a copy and keeping it).

use std::collections::BTreeSet;

use stateright::semantics::register::Register;
use stateright::semantics::LinearizabilityTester;

/// Identifies one fence: `(driver epoch, cut-over attempt)`, ordered.
pub type FenceId = (u8, u8);

/// The routing epoch of the vShard before and after `Transfer` commits.
pub const EPOCH_BEFORE_TRANSFER: u8 = 1;
pub const EPOCH_AFTER_TRANSFER: u8 = 2;

/// The register value of the vShard before any client write.
pub const INITIAL_VALUE: u8 = 0;

/// The two data groups of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Source,
    Target,
}

/// What a client does to the moving vShard (one key, seen as a register).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientOp {
    /// Write this value (distinct per write, in 1..=7: it is also the write's
    /// idempotency key, remembered by the group that applies it).
    Write(u8),
    Read,
}

/// The register contents of one copy of the vShard, with the set of applied
/// write keys (a bit per write value) that makes a retried write idempotent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Data {
    pub value: u8,
    pub applied_writes: u8,
}

impl Data {
    /// Applies a write once: a retry of an applied write changes nothing.
    pub fn apply(&mut self, value: u8) {
        if self.applied_writes & bit(value) == 0 {
            self.value = value;
            self.applied_writes |= bit(value);
        }
    }

    /// The copy after applying these changes, in log order, from empty.
    pub fn fold(log: &[u8]) -> Data {
        let mut data = Data {
            value: INITIAL_VALUE,
            applied_writes: 0,
        };
        for value in log {
            data.apply(*value);
        }
        data
    }
}

/// The bit of a write value in a write mask.
pub fn bit(value: u8) -> u8 {
    1 << value
}

/// Where the driver is in the migration (after Lock and BaseCopy, which the
/// initial state takes as done with an empty base at index i0 = 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DriverPhase {
    /// Sent `Resume{epoch}` after a restart; waits for the metadata decision.
    Resuming,
    /// Metadata said undecided: sent `Unfence` for every older epoch's fence.
    Reopening,
    /// Streams the source's changes to the target.
    CatchUp,
    /// Sent `Fence{id}`; waits for the fence index f.
    Fencing,
    /// Streams the changes up to f; then proposes `Transfer` or gives up.
    Draining { fence_index: u8 },
    /// The drain overran its budget: sent `Unfence{id}`; then CatchUp again.
    Retreating,
    /// Sent `Transfer{epoch}`; waits for the metadata decision.
    Transferring,
    /// Sent `Abort{epoch}` (no cut-over attempt left); waits for the decision.
    GivingUp,
    /// Learned the decision (or that a newer driver exists): nothing left to do.
    Finished,
    /// Crashed and never came back.
    Dead,
}

/// The workflow driver of the migration. A restart bumps `epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Driver {
    pub epoch: u8,
    pub attempt: u8,
    pub phase: DriverPhase,
}

impl Driver {
    /// The id of the fence this driver places in its current attempt.
    pub fn fence_id(&self) -> FenceId {
        (self.epoch, self.attempt)
    }

    /// The `Unfence` bound a restarted driver sends: every fence of an older
    /// epoch, whatever its attempt.
    pub fn reopen_bound(&self) -> FenceId {
        (self.epoch - 1, u8::MAX)
    }

    pub fn is_live(&self) -> bool {
        !matches!(self.phase, DriverPhase::Finished | DriverPhase::Dead)
    }
}

/// The decision record of the migration in the metadata group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    Undecided,
    Transferred,
    Aborted,
}

/// The metadata group (group 0): routing table entry and migration registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Metadata {
    pub decision: Decision,
    /// The highest driver epoch any committed command carried.
    pub driver_epoch: u8,
}

impl Metadata {
    /// The vShard's routing epoch: bumped by the `Transfer` commit.
    pub fn route_epoch(&self) -> u8 {
        match self.decision {
            Decision::Transferred => EPOCH_AFTER_TRANSFER,
            Decision::Undecided | Decision::Aborted => EPOCH_BEFORE_TRANSFER,
        }
    }
}

/// The vShard's state in the source group's state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceMode {
    /// Serves reads and writes.
    Owned,
    /// Rejects reads and writes with a retryable error, from log index
    /// `fence_index` on (the number of changes before the fence).
    Fenced {
        id: FenceId,
        fence_index: u8,
        deadline_passed: bool,
    },
    /// Transfer committed: redirects clients to the target.
    Ghost,
    /// Cleanup ran: the copy and the ghost are gone.
    Deleted,
}

/// The source group: its vShard state, and the change table (every write
/// applied to the vShard, in log order; the data is its fold).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Source {
    pub mode: SourceMode,
    pub log: Vec<u8>,
    /// Fence-related entries applied (fence, re-fence, unfence, close): the
    /// group's own Raft index for them; only grows.
    pub fence_entries: u8,
    /// Fences with an id at or below this one were lifted: refuse them.
    pub lifted_up_to: FenceId,
    /// The source applied the abort: the migration is over, refuse fences.
    pub closed: bool,
}

impl Source {
    pub fn data(&self) -> Data {
        Data::fold(&self.log)
    }
}

/// The vShard's state in the target group's state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetMode {
    /// Being filled; invisible to clients.
    Incoming,
    /// Owns the vShard: serves reads and writes.
    Active,
    /// The abort committed: the incoming copy was dropped.
    Dropped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub mode: TargetMode,
    /// How many of the source's changes it has applied.
    pub applied: u8,
    pub data: Data,
}

/// A client: a fixed program of operations on the vShard, a routing cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    /// Index of the operation in progress (or next to start) in its program.
    pub next_op: u8,
    /// `Some(attempts sent)` while the operation is in progress.
    pub waiting: Option<u8>,
    /// The routing epoch of its cached table (1: source owns, 2: target).
    pub route_epoch: u8,
}

impl Client {
    pub fn route(&self) -> Group {
        if self.route_epoch >= EPOCH_AFTER_TRANSFER {
            Group::Target
        } else {
            Group::Source
        }
    }
}

/// Which metadata command a reply answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetaCommand {
    Transfer,
    Abort,
    Resume,
}

/// The metadata group's answer to a driver command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaAnswer {
    Undecided,
    Transferred,
    Aborted,
    StaleEpoch,
}

/// A data group's answer to a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAnswer {
    WriteOk,
    ReadOk(u8),
    /// Fenced or not yet active: try again.
    Retry,
    /// Ghost: the vShard moved to the target at this routing epoch.
    Redirect {
        epoch: u8,
    },
    /// Not here and no forwarding address: refresh the routing table.
    NotOwner,
}

/// A message in flight. Only requests travel: the answer is handed to the
/// requester when the request is handled (see `model.rs`: a late or lost
/// answer is the fault "handled, requester not told").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Message {
    /// Driver -> source.
    Fence { id: FenceId },
    /// Driver -> source: lift a fence whose id is at most `up_to`.
    Unfence { up_to: FenceId },
    /// Driver -> metadata, carrying the driver epoch.
    Command { command: MetaCommand, epoch: u8 },
    /// Source -> metadata: the fence deadline passed; abort the migration.
    AbortRequest,
    /// Driver -> target, sent with `Transfer` only when guard (b) is off.
    Activate,
    /// Client -> data group: operation `op` of the client's program.
    Request { client: u8, op: u8, to: Group },
}

/// The answer to a request, handed to whoever sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    FenceOk {
        id: FenceId,
        fence_index: u8,
    },
    FenceRefused {
        id: FenceId,
    },
    UnfenceOk {
        up_to: FenceId,
    },
    Command {
        command: MetaCommand,
        epoch: u8,
        answer: MetaAnswer,
    },
    Client {
        client: u8,
        op: u8,
        answer: ClientAnswer,
    },
}

/// One state of the whole system. (Not `Eq`: stateright's register spec is
/// only `PartialEq`.)
#[derive(Clone, Debug, PartialEq, Hash)]
pub struct State {
    pub driver: Driver,
    pub metadata: Metadata,
    pub source: Source,
    pub target: Target,
    pub clients: [Client; 2],
    pub network: BTreeSet<Message>,
    /// Client-side oracle: every operation invoked and every answer received.
    pub history: LinearizabilityTester<u8, Register<u8>>,
    /// Client-side oracle: the write values whose write was acknowledged.
    pub acknowledged: u8,
    /// Network faults (losses, duplicates) used so far.
    pub faults_used: u8,
    /// Set by the transition that lowered a routing epoch anywhere.
    pub epoch_regressed: bool,
}

impl State {
    /// After Lock and BaseCopy: the vShard is empty and owned by the source,
    /// the target holds an empty incoming copy, the first driver is catching up.
    pub fn initial() -> State {
        let client = Client {
            next_op: 0,
            waiting: None,
            route_epoch: EPOCH_BEFORE_TRANSFER,
        };
        State {
            driver: Driver {
                epoch: 1,
                attempt: 0,
                phase: DriverPhase::CatchUp,
            },
            metadata: Metadata {
                decision: Decision::Undecided,
                driver_epoch: 1,
            },
            source: Source {
                mode: SourceMode::Owned,
                log: Vec::new(),
                fence_entries: 0,
                lifted_up_to: (0, 0),
                closed: false,
            },
            target: Target {
                mode: TargetMode::Incoming,
                applied: 0,
                data: Data::default(),
            },
            clients: [client; 2],
            network: BTreeSet::new(),
            history: LinearizabilityTester::new(Register(INITIAL_VALUE)),
            acknowledged: 0,
            faults_used: 0,
            epoch_regressed: false,
        }
    }
}
