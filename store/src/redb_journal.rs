//! The durable workflow journal, in one redb file.
//!
//! Tables: `journal_meta` (format header) and `journal_events` keyed by
//! `(node, serial, seq)` holding each event's exact encoded bytes. Each
//! instance's [`InstanceRecord`] (summary and chain head) sits in the same
//! table right after its events, at `(node, serial, ROW_SEQ)` with
//! `ROW_SEQ = u64::MAX` (format 2). Beside its instance's newest events it
//! usually shares their leaf page, so an append rewrites one table's pages,
//! not two. Format 1 files (the row in a table of its own,
//! `journal_instances` keyed `(node, serial)`) are still read and appended
//! to in their own layout; a file keeps the format it was created with.
//!
//! **Invariants:**
//! - One append = one redb write transaction committed with
//!   `Durability::Immediate` (fsync): all its events and the instance row
//!   land together or not at all.
//! - An append is checked (expected seq, hash chain, event cap) inside the
//!   same transaction that writes it, so two writers cannot both succeed.
//! - A file that is not a shardflow journal, a journal of a newer format, or
//!   an instance whose events do not verify is refused with a typed error
//!   naming the path, or the instance and seq. Nothing is skipped silently.
//!
//! redb calls block, so the async `Journal` methods run them off the async
//! executor: in `block_in_place` on a multi-threaded runtime, on tokio's
//! blocking pool otherwise.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use shardflow_workflow::memory::check_append;
use shardflow_workflow::verify::{verify, Verified};
use shardflow_workflow::{InstanceSummary, Journal, JournalError, SealedEvent, WorkflowId};

use crate::instance_record::{InstanceRecord, InstanceRecordV1};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("journal_meta");
const EVENTS: TableDefinition<(u64, u64, u64), &[u8]> = TableDefinition::new("journal_events");
/// Format 1 only: the instance rows, keyed `(node, serial)`.
const INSTANCES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("journal_instances");

const FORMAT_KEY: &str = "format";
const FORMAT_MAGIC: &[u8] = b"shardflow-journal";
/// The journal file format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 2;
/// In format 2, the `seq` under which an instance's row is kept in
/// `journal_events`. No event takes it: an event's seq is below its
/// instance's event count, which the event cap bounds far below `u64::MAX`.
pub const ROW_SEQ: u64 = u64::MAX;

/// Where a file keeps its instance rows, from its format version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// Format 1: rows in `journal_instances`.
    RowTable,
    /// Format 2: rows in `journal_events` at `(node, serial, ROW_SEQ)`.
    RowBesideEvents,
}

impl Layout {
    fn of(version: u32) -> Self {
        match version {
            0 | 1 => Self::RowTable,
            _ => Self::RowBesideEvents,
        }
    }
}

/// The keys of one instance's events (its row excluded).
fn event_range(id: WorkflowId) -> std::ops::Range<(u64, u64, u64)> {
    (id.node, id.serial, 0)..(id.node, id.serial, ROW_SEQ)
}

/// How a journal is opened.
#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// The most events one instance may hold.
    pub max_events: u64,
    /// Verify every instance's hash chain and replay rules when opening.
    pub verify_on_open: bool,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self {
            max_events: 100_000,
            verify_on_open: true,
        }
    }
}

/// The redb-backed journal. Cheap to clone.
#[derive(Clone)]
pub struct RedbJournal {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    max_events: u64,
    layout: Layout,
}

fn storage(doing: impl Into<String>) -> impl FnOnce(redb::Error) -> JournalError {
    let doing = doing.into();
    move |error| JournalError::Storage {
        doing,
        source: Box::new(error),
    }
}

fn corrupt_row(id: WorkflowId, reason: String) -> JournalError {
    JournalError::Corrupt(shardflow_workflow::VerifyError {
        id,
        seq: 0,
        problem: shardflow_workflow::Problem::Undecodable(format!("instance row: {reason}")),
    })
}

impl RedbJournal {
    /// Opens (or creates) the journal at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        Self::open_with(path, JournalOptions::default())
    }

    /// Opens (or creates) the journal at `path`.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: JournalOptions,
    ) -> Result<Self, JournalError> {
        let path = path.as_ref().to_path_buf();
        let not_a_journal = |reason: String| JournalError::NotAJournal {
            path: path.display().to_string(),
            reason,
        };
        let db = Database::create(&path).map_err(|error| not_a_journal(error.to_string()))?;
        let mut journal = Self {
            db: Arc::new(db),
            path: Arc::new(path),
            max_events: options.max_events,
            layout: Layout::of(FORMAT_VERSION),
        };
        journal.layout = Layout::of(journal.check_format()?);
        if options.verify_on_open {
            journal.verify_all()?;
        }
        Ok(journal)
    }

    /// The file this journal lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The format version of this file (`FORMAT_VERSION` for a new one).
    pub fn format_version(&self) -> u32 {
        match self.layout {
            Layout::RowTable => 1,
            Layout::RowBesideEvents => FORMAT_VERSION,
        }
    }

    /// Checks the format header, writing it into a new, empty file; returns
    /// the file's format version.
    fn check_format(&self) -> Result<u32, JournalError> {
        let path = self.path.display().to_string();
        let read = self
            .db
            .begin_read()
            .map_err(|e| storage("reading the header")(e.into()))?;
        let tables: Vec<String> = read
            .list_tables()
            .map_err(|e| storage("listing tables")(e.into()))?
            .map(|t| t.name().to_string())
            .collect();
        if tables.is_empty() {
            drop(read);
            self.write_format()?;
            return Ok(FORMAT_VERSION);
        }
        if !tables.iter().any(|t| t == META.name()) {
            let reason = format!("it holds tables {tables:?} but no journal header");
            return Err(JournalError::NotAJournal { path, reason });
        }
        let meta = read
            .open_table(META)
            .map_err(|e| storage("opening the header")(e.into()))?;
        let header = meta
            .get(FORMAT_KEY)
            .map_err(|e| storage("reading the header")(e.into()))?;
        let Some(header) = header else {
            let reason = "the journal header is missing".to_string();
            return Err(JournalError::NotAJournal { path, reason });
        };
        let bytes = header.value();
        let version = bytes
            .strip_prefix(FORMAT_MAGIC)
            .and_then(|v| <[u8; 4]>::try_from(v).ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| JournalError::NotAJournal {
                path: path.clone(),
                reason: "the journal header has the wrong magic".into(),
            })?;
        if version > FORMAT_VERSION {
            return Err(JournalError::NewerFormat {
                path,
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        Ok(version)
    }

    fn write_format(&self) -> Result<(), JournalError> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| storage("creating the journal")(e.into()))?;
        {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| storage("creating the header")(e.into()))?;
            let mut header = FORMAT_MAGIC.to_vec();
            header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            meta.insert(FORMAT_KEY, header.as_slice())
                .map_err(|e| storage("writing the header")(e.into()))?;
            txn.open_table(EVENTS)
                .map_err(|e| storage("creating tables")(e.into()))?;
        }
        txn.commit()
            .map_err(|e| storage("creating the journal")(e.into()))
    }

    /// Verifies every instance; the first bad event is the error.
    pub fn verify_all(&self) -> Result<Vec<Verified>, JournalError> {
        let ids: Vec<WorkflowId> = self.list_sync(true)?.into_iter().map(|s| s.id).collect();
        ids.into_iter().map(|id| self.verified(id)).collect()
    }

    /// Reads and verifies one instance.
    pub fn verified(&self, id: WorkflowId) -> Result<Verified, JournalError> {
        let read = self
            .db
            .begin_read()
            .map_err(|e| storage("reading an instance")(e.into()))?;
        let events = read
            .open_table(EVENTS)
            .map_err(|e| storage("opening events")(e.into()))?;
        let row = match self.layout {
            Layout::RowBesideEvents => events
                .get((id.node, id.serial, ROW_SEQ))
                .map_err(|e| storage("reading an instance row")(e.into()))?
                .map(|row| row.value().to_vec()),
            Layout::RowTable => read
                .open_table(INSTANCES)
                .map_err(|e| storage("opening instances")(e.into()))?
                .get((id.node, id.serial))
                .map_err(|e| storage("reading an instance row")(e.into()))?
                .map(|row| row.value().to_vec()),
        };
        let row = row.ok_or(JournalError::UnknownInstance(id))?;
        let record = InstanceRecord::decode(&row).map_err(|r| corrupt_row(id, r))?;
        let range = events
            .range(event_range(id))
            .map_err(|e| storage("reading events")(e.into()))?;
        let mut records = Vec::with_capacity(record.next_seq as usize);
        for entry in range {
            let (key, value) = entry.map_err(|e| storage("reading an event")(e.into()))?;
            records.push((key.value().2, value.value().to_vec()));
        }
        Ok(verify(id, records, Some(record.head))?)
    }

    fn append_sync(
        &self,
        id: WorkflowId,
        expected: u64,
        batch: Vec<SealedEvent>,
    ) -> Result<(), JournalError> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| storage("starting an append")(e.into()))?;
        {
            let mut events = txn
                .open_table(EVENTS)
                .map_err(|e| storage("opening events")(e.into()))?;
            let mut instances = match self.layout {
                Layout::RowTable => Some(
                    txn.open_table(INSTANCES)
                        .map_err(|e| storage("opening instances")(e.into()))?,
                ),
                Layout::RowBesideEvents => None,
            };
            let key = (id.node, id.serial);
            let row_key = (id.node, id.serial, ROW_SEQ);
            let existing = match &instances {
                Some(instances) => instances
                    .get(key)
                    .map_err(|e| storage("reading an instance row")(e.into()))?
                    .map(|row| row.value().to_vec()),
                None => events
                    .get(row_key)
                    .map_err(|e| storage("reading an instance row")(e.into()))?
                    .map(|row| row.value().to_vec()),
            };
            let record = match existing {
                Some(row) => Some(InstanceRecord::decode(&row).map_err(|r| corrupt_row(id, r))?),
                None => None,
            };
            let head = record.as_ref().map(|r| r.head);
            let next = record.as_ref().map_or(0, |r| r.next_seq);
            check_append(id, expected, next, head, &batch, self.max_events)?;
            let first_at = batch.first().map_or(0, |e| e.envelope.current().at_ms);
            let mut record = record.unwrap_or_else(|| InstanceRecordV1::empty(first_at));
            for event in &batch {
                events
                    .insert((id.node, id.serial, event.seq()), event.bytes.as_slice())
                    .map_err(|e| storage("writing an event")(e.into()))?;
                record.absorb(event);
            }
            let row = InstanceRecord::V1(record).encode();
            match &mut instances {
                Some(instances) => instances.insert(key, row.as_slice()),
                None => events.insert(row_key, row.as_slice()),
            }
            .map_err(|e| storage("writing an instance row")(e.into()))?;
        }
        txn.commit()
            .map_err(|e| storage("committing an append")(e.into()))
    }

    fn list_sync(&self, include_ended: bool) -> Result<Vec<InstanceSummary>, JournalError> {
        let read = self
            .db
            .begin_read()
            .map_err(|e| storage("listing instances")(e.into()))?;
        let list_error = |e: redb::StorageError| storage("listing instances")(e.into());
        let mut rows: Vec<(WorkflowId, InstanceRecordV1)> = Vec::new();
        let mut keep = |id: WorkflowId, bytes: &[u8]| -> Result<(), JournalError> {
            let record = InstanceRecord::decode(bytes).map_err(|r| corrupt_row(id, r))?;
            rows.push((id, record));
            Ok(())
        };
        match self.layout {
            Layout::RowTable => {
                let instances = read
                    .open_table(INSTANCES)
                    .map_err(|e| storage("opening instances")(e.into()))?;
                for entry in instances.iter().map_err(list_error)? {
                    let (key, value) = entry.map_err(list_error)?;
                    let (node, serial) = key.value();
                    keep(WorkflowId::new(node, serial), value.value())?;
                }
            }
            Layout::RowBesideEvents => {
                // One seek to each instance's first key, one to its row.
                let events = read
                    .open_table(EVENTS)
                    .map_err(|e| storage("opening events")(e.into()))?;
                let mut from = Some((0, 0, 0));
                while let Some(start) = from {
                    let Some(first) = events.range(start..).map_err(list_error)?.next() else {
                        break;
                    };
                    let (node, serial, _) = first.map_err(list_error)?.0.value();
                    let id = WorkflowId::new(node, serial);
                    let row = events
                        .get((node, serial, ROW_SEQ))
                        .map_err(list_error)?
                        .ok_or_else(|| corrupt_row(id, "missing".into()))?;
                    keep(id, row.value())?;
                    from = match (serial.checked_add(1), node.checked_add(1)) {
                        (Some(serial), _) => Some((node, serial, 0)),
                        (None, Some(node)) => Some((node, 0, 0)),
                        (None, None) => None,
                    };
                }
            }
        }
        Ok(rows
            .into_iter()
            .filter(|(_, record)| include_ended || !record.ended)
            .map(|(id, record)| record.summary(id))
            .collect())
    }

    fn max_serial_sync(&self, node: u64) -> Result<u64, JournalError> {
        let read = self
            .db
            .begin_read()
            .map_err(|e| storage("reading serials")(e.into()))?;
        let serial_error = |e: redb::StorageError| storage("reading serials")(e.into());
        let last = match self.layout {
            Layout::RowTable => read
                .open_table(INSTANCES)
                .map_err(|e| storage("opening instances")(e.into()))?
                .range((node, 0)..=(node, u64::MAX))
                .map_err(serial_error)?
                .next_back()
                .transpose()
                .map_err(serial_error)?
                .map(|(key, _)| key.value().1),
            Layout::RowBesideEvents => read
                .open_table(EVENTS)
                .map_err(|e| storage("opening events")(e.into()))?
                .range((node, 0, 0)..=(node, u64::MAX, u64::MAX))
                .map_err(serial_error)?
                .next_back()
                .transpose()
                .map_err(serial_error)?
                .map(|(key, _)| key.value().1),
        };
        Ok(last.unwrap_or(0))
    }

    fn prune_sync(&self, before_ms: u64) -> Result<u64, JournalError> {
        let doomed: Vec<WorkflowId> = self
            .list_sync(true)?
            .into_iter()
            .filter(|s| s.ended && s.updated_at_ms < before_ms)
            .map(|s| s.id)
            .collect();
        let txn = self
            .db
            .begin_write()
            .map_err(|e| storage("pruning")(e.into()))?;
        {
            let mut instances = match self.layout {
                Layout::RowTable => Some(
                    txn.open_table(INSTANCES)
                        .map_err(|e| storage("pruning")(e.into()))?,
                ),
                Layout::RowBesideEvents => None,
            };
            let mut events = txn
                .open_table(EVENTS)
                .map_err(|e| storage("pruning")(e.into()))?;
            for id in &doomed {
                if let Some(instances) = instances.as_mut() {
                    instances
                        .remove((id.node, id.serial))
                        .map_err(|e| storage("pruning")(e.into()))?;
                }
                // Format 2: the range ends at the row, which goes too.
                events
                    .retain_in(
                        (id.node, id.serial, 0)..=(id.node, id.serial, u64::MAX),
                        |_, _| false,
                    )
                    .map_err(|e| storage("pruning")(e.into()))?;
            }
        }
        txn.commit()
            .map_err(|e| storage("committing a prune")(e.into()))?;
        Ok(doomed.len() as u64)
    }

    /// Runs blocking redb work off the async executor: in place on a
    /// multi-threaded runtime (the worker hands its other tasks to the rest
    /// of the pool, and the append saves a thread hand-off), on the blocking
    /// pool otherwise.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(RedbJournal) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let journal = self.clone();
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            return tokio::task::block_in_place(move || work(journal));
        }
        tokio::task::spawn_blocking(move || work(journal))
            .await
            .map_err(|error| JournalError::Storage {
                doing: "running a journal operation".into(),
                source: Box::new(error),
            })?
    }
}

#[async_trait]
impl Journal for RedbJournal {
    async fn append(
        &self,
        id: WorkflowId,
        expected: u64,
        events: Vec<SealedEvent>,
    ) -> Result<(), JournalError> {
        self.blocking(move |j| j.append_sync(id, expected, events))
            .await
    }

    async fn read(&self, id: WorkflowId) -> Result<Vec<SealedEvent>, JournalError> {
        self.blocking(move |j| j.verified(id).map(|v| v.events))
            .await
    }

    async fn list(&self, include_ended: bool) -> Result<Vec<InstanceSummary>, JournalError> {
        self.blocking(move |j| j.list_sync(include_ended)).await
    }

    async fn max_serial(&self, node: u64) -> Result<u64, JournalError> {
        self.blocking(move |j| j.max_serial_sync(node)).await
    }

    async fn prune_ended(&self, before_ms: u64) -> Result<u64, JournalError> {
        self.blocking(move |j| j.prune_sync(before_ms)).await
    }
}
