//! shardflow-steps: the migration workflows (MoveVShard, MoveReplica), one
//! file per step with its compensation beside it. Built in the migrations
//! issue; the protocol model that checks MoveVShard lives in `tests/`.
