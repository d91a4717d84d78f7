//! shardflow-steps: the migration workflows (MoveVShard, MoveReplica), one
//! file per step with its compensation beside it; the launcher that wires
//! them into a node; and the progress figures read from their state. The
//! protocol model that checks MoveVShard lives in `tests/`.

pub mod failpoint;
pub mod launcher;
pub mod move_replica;
pub mod move_vshard;
pub mod progress;

pub use move_replica::{MoveReplica, MoveReplicaInput};
pub use move_vshard::{register, MoveVShard, MoveVShardInput};
