//! Errors of the Raft storage adapters, and how they become openraft
//! `StorageError`s (which stop the group's Raft: a storage error is fatal).
//!
//! Every blocking redb call runs through `blocking`, on tokio's blocking
//! pool, and comes back as a typed error naming the group and what it was
//! doing; a panic or cancellation of that task is an error too, never a
//! panic of the caller.

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};
use shardflow_store::RaftStoreError;

use super::records::RecordError;
use super::types::StorageError;

/// What failed in a group's Raft storage.
#[derive(Debug, thiserror::Error)]
pub enum RaftStorageError {
    /// redb failed, or refused.
    #[error(transparent)]
    Store(#[from] RaftStoreError),
    /// A stored record did not decode (or a value did not encode).
    #[error("group {group}: {source}")]
    Record {
        group: u64,
        #[source]
        source: RecordError,
    },
    /// Stored rows contradict each other or the caller.
    #[error("group {group}: {what}: {reason}")]
    Inconsistent {
        group: u64,
        what: &'static str,
        reason: String,
    },
    /// The blocking task running the redb call did not finish.
    #[error("group {group}: the storage task {doing} failed: {reason}")]
    Task {
        group: u64,
        doing: &'static str,
        reason: String,
    },
}

/// Attaches the group to a record error.
pub(crate) trait InGroup<T> {
    fn in_group(self, group: u64) -> Result<T, RaftStorageError>;
}

impl<T> InGroup<T> for Result<T, RecordError> {
    fn in_group(self, group: u64) -> Result<T, RaftStorageError> {
        self.map_err(|source| RaftStorageError::Record { group, source })
    }
}

/// Runs blocking storage work off the async executor.
pub(crate) async fn run_blocking<T, F>(
    group: u64,
    doing: &'static str,
    work: F,
) -> Result<T, RaftStorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, RaftStorageError> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) => Err(RaftStorageError::Task {
            group,
            doing,
            reason: error.to_string(),
        }),
    }
}

/// Runs blocking storage work and maps a failure to openraft's error for
/// `subject` and `verb`.
pub(crate) async fn blocking<T, F>(
    group: u64,
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    work: F,
) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, RaftStorageError> + Send + 'static,
{
    let doing = match verb {
        ErrorVerb::Read | ErrorVerb::Seek => "reading",
        ErrorVerb::Write | ErrorVerb::Delete => "writing",
    };
    run_blocking(group, doing, work)
        .await
        .map_err(|error| to_storage_error(subject, verb, &error))
}

/// Converts an error to openraft's, keeping the message and its causes.
pub(crate) fn to_storage_error(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    error: &RaftStorageError,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(error)).into()
}
