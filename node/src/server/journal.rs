//! The node's workflow journal: the redb journal in `DATA/journal.redb`,
//! behind a handle the node can close.
//!
//! **Why closable:** the engine (and whoever the layer above hands it to)
//! keeps the journal alive as long as any clone of it lives, but a node that
//! shuts down must release the file, so the same data directory can be
//! opened again (a restart in the same process, a tool). [`NodeJournal::close`]
//! waits for the operations in flight, then drops the redb handle; later
//! operations fail with a storage error instead of touching the file.

use std::path::Path;

use async_trait::async_trait;
use shardflow_store::{JournalOptions, RedbJournal};
use shardflow_workflow::{InstanceSummary, Journal, JournalError, SealedEvent, WorkflowId};
use tokio::sync::RwLock;

use super::node::NodeError;

/// The journal file inside a node's data directory.
pub const JOURNAL_FILE: &str = "journal.redb";

/// The node's journal; closed when the node shuts down.
pub(crate) struct NodeJournal {
    inner: RwLock<Option<RedbJournal>>,
}

impl NodeJournal {
    /// Opens (or creates) `DATA/journal.redb`, verifying every instance; a
    /// journal that does not verify is an error naming the file.
    pub(crate) async fn open(data_dir: &Path, options: JournalOptions) -> Result<Self, NodeError> {
        let path = data_dir.join(JOURNAL_FILE);
        let opening = path.clone();
        let opened = tokio::task::spawn_blocking(move || RedbJournal::open_with(opening, options))
            .await
            .map_err(|error| journal_error(&path, &error.to_string()))?
            .map_err(|error| journal_error(&path, &error.to_string()))?;
        Ok(Self {
            inner: RwLock::new(Some(opened)),
        })
    }

    /// Waits for the operations in flight, then releases the file.
    pub(crate) async fn close(&self) {
        self.inner.write().await.take();
    }
}

/// The error for a journal that cannot be opened, naming the file once.
fn journal_error(path: &Path, reason: &str) -> NodeError {
    let shown = path.display().to_string();
    let reason = reason
        .strip_prefix(&format!("{shown}: "))
        .unwrap_or(reason)
        .to_string();
    NodeError::Journal {
        path: shown,
        reason,
    }
}

fn closed() -> JournalError {
    JournalError::Storage {
        doing: "using the journal".into(),
        source: Box::new(std::io::Error::other("the node has shut down")),
    }
}

#[async_trait]
impl Journal for NodeJournal {
    async fn append(
        &self,
        id: WorkflowId,
        expected_next_seq: u64,
        events: Vec<SealedEvent>,
    ) -> Result<(), JournalError> {
        let guard = self.inner.read().await;
        let journal = guard.as_ref().ok_or_else(closed)?;
        journal.append(id, expected_next_seq, events).await
    }

    async fn read(&self, id: WorkflowId) -> Result<Vec<SealedEvent>, JournalError> {
        let guard = self.inner.read().await;
        guard.as_ref().ok_or_else(closed)?.read(id).await
    }

    async fn list(&self, include_ended: bool) -> Result<Vec<InstanceSummary>, JournalError> {
        let guard = self.inner.read().await;
        guard.as_ref().ok_or_else(closed)?.list(include_ended).await
    }

    async fn max_serial(&self, node: u64) -> Result<u64, JournalError> {
        let guard = self.inner.read().await;
        guard.as_ref().ok_or_else(closed)?.max_serial(node).await
    }

    async fn prune_ended(&self, before_ms: u64) -> Result<u64, JournalError> {
        let guard = self.inner.read().await;
        guard
            .as_ref()
            .ok_or_else(closed)?
            .prune_ended(before_ms)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a garbage journal file is refused with an error naming it once,
    // and a closed journal refuses operations instead of touching the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_file_is_named_and_closed_journal_refuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(JOURNAL_FILE), b"not a journal at all").expect("write");
        let error = NodeJournal::open(dir.path(), JournalOptions::default())
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let path = dir.path().join(JOURNAL_FILE).display().to_string();
        assert!(error.starts_with("workflow journal "), "{error}");
        assert_eq!(error.matches(&path).count(), 1, "{error}");

        let fresh = tempfile::tempdir().expect("tempdir");
        let journal = NodeJournal::open(fresh.path(), JournalOptions::default())
            .await
            .expect("open");
        assert!(journal.list(true).await.expect("list").is_empty());
        journal.close().await;
        let refused = journal.list(true).await.err().map(|e| e.to_string());
        assert!(
            refused.as_deref().is_some_and(|e| e.contains("shut down")),
            "{refused:?}"
        );
        let again = NodeJournal::open(fresh.path(), JournalOptions::default()).await;
        assert!(again.is_ok(), "the file was released");
    }
}
