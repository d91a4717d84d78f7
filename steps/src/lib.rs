//! shardflow-steps: the migration workflows (MoveVShard, MoveReplica), one
//! file per step with its compensation beside it. The protocol model that
//! checks MoveVShard lives in `tests/`.

pub mod move_vshard;

pub use move_vshard::{register, MoveVShard, MoveVShardInput};
