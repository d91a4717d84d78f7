//! shardflow-store: everything shardflow keeps on disk, in redb.
//!
//! - [`RedbJournal`]: the durable workflow journal (the `Journal` trait of
//!   `shardflow-workflow`), one fsynced redb transaction per append.
//!
//! **Architecture invariant:** this crate exposes byte-level, redb-shaped
//! storage; it knows the journal's envelope (to verify it) but nothing of
//! Raft or QUIC. `shardflow-node` adapts it to openraft's traits.

pub mod instance_record;
pub mod raft_store;
pub mod redb_journal;

pub use raft_store::{GroupStore, RaftStore, RaftStoreError};
pub use redb_journal::{JournalOptions, RedbJournal};
