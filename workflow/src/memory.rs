//! An in-memory [`Journal`], for the engine's own tests and for examples.
//!
//! It keeps the same contract as the redb journal (atomic appends, expected
//! seq, chain check, event cap, verified reads); only durability differs:
//! everything is gone with the process.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::envelope::{genesis_hash, Hash, SealedEvent};
use crate::id::WorkflowId;
use crate::journal::{InstanceSummary, Journal, JournalError};
use crate::verify::verify;

#[derive(Default)]
struct Instance {
    records: Vec<Vec<u8>>,
    summary: Option<InstanceSummary>,
    head: Option<Hash>,
}

/// A journal held in memory.
pub struct MemoryJournal {
    max_events: u64,
    instances: Mutex<BTreeMap<WorkflowId, Instance>>,
}

impl MemoryJournal {
    /// An empty journal that refuses more than `max_events` per instance.
    pub fn new(max_events: u64) -> Self {
        Self {
            max_events,
            instances: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<WorkflowId, Instance>> {
        // A panic while holding the lock cannot leave an instance half
        // appended (appends mutate only after every check), so recover.
        self.instances
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for MemoryJournal {
    fn default() -> Self {
        Self::new(100_000)
    }
}

#[async_trait]
impl Journal for MemoryJournal {
    async fn append(
        &self,
        id: WorkflowId,
        expected_next_seq: u64,
        events: Vec<SealedEvent>,
    ) -> Result<(), JournalError> {
        let mut instances = self.lock();
        let instance = instances.entry(id).or_default();
        let actual = instance.records.len() as u64;
        check_append(
            id,
            expected_next_seq,
            actual,
            instance.head,
            &events,
            self.max_events,
        )?;
        for event in &events {
            let body = event.envelope.body();
            let at_ms = event.envelope.current().at_ms;
            let summary = instance.summary.get_or_insert_with(|| InstanceSummary {
                id,
                kind: String::new(),
                events: 0,
                last_event: String::new(),
                ended: false,
                created_at_ms: at_ms,
                updated_at_ms: at_ms,
            });
            if let crate::event::Event::Submitted { kind, .. } = body {
                summary.kind = kind.clone();
            }
            summary.events += 1;
            summary.last_event = body.name().to_string();
            summary.ended |= body.is_terminal();
            summary.updated_at_ms = at_ms;
            instance.head = Some(event.hash);
            instance.records.push(event.bytes.clone());
        }
        Ok(())
    }

    async fn read(&self, id: WorkflowId) -> Result<Vec<SealedEvent>, JournalError> {
        let (records, head) = {
            let instances = self.lock();
            let instance = instances
                .get(&id)
                .filter(|instance| !instance.records.is_empty())
                .ok_or(JournalError::UnknownInstance(id))?;
            (instance.records.clone(), instance.head)
        };
        let records = (0u64..).zip(records).collect();
        Ok(verify(id, records, head)?.events)
    }

    async fn list(&self, include_ended: bool) -> Result<Vec<InstanceSummary>, JournalError> {
        Ok(self
            .lock()
            .values()
            .filter_map(|instance| instance.summary.clone())
            .filter(|summary| include_ended || !summary.ended)
            .collect())
    }

    async fn max_serial(&self, node: u64) -> Result<u64, JournalError> {
        Ok(self
            .lock()
            .keys()
            .filter(|id| id.node == node)
            .map(|id| id.serial)
            .max()
            .unwrap_or(0))
    }

    async fn prune_ended(&self, before_ms: u64) -> Result<u64, JournalError> {
        let mut instances = self.lock();
        let before = instances.len();
        instances.retain(|_, instance| {
            !instance
                .summary
                .as_ref()
                .is_some_and(|s| s.ended && s.updated_at_ms < before_ms)
        });
        Ok((before - instances.len()) as u64)
    }
}

/// The checks every journal makes before an append (shared with the redb
/// journal so both refuse exactly the same appends).
pub fn check_append(
    id: WorkflowId,
    expected_next_seq: u64,
    actual_next_seq: u64,
    head: Option<Hash>,
    events: &[SealedEvent],
    max_events: u64,
) -> Result<(), JournalError> {
    if expected_next_seq != actual_next_seq {
        return Err(JournalError::SeqConflict {
            id,
            expected: expected_next_seq,
            actual: actual_next_seq,
        });
    }
    if actual_next_seq + events.len() as u64 > max_events {
        return Err(JournalError::EventCap {
            id,
            cap: max_events,
        });
    }
    let mut previous = head.unwrap_or_else(|| genesis_hash(id));
    for (seq, event) in (expected_next_seq..).zip(events) {
        let chained = event.envelope.current().prev_hash == previous;
        if event.seq() != seq || !chained {
            return Err(JournalError::ChainMismatch { id, seq });
        }
        previous = event.hash;
    }
    Ok(())
}
