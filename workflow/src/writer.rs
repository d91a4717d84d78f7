//! The single writer of one instance's journal while it is driven.
//!
//! It holds the instance's state — the fold of its durable events plus the
//! events staged since the last flush — the durable seq and chain head, and
//! flushes staged events (with whatever must be durable now) in one atomic,
//! durable append. Status and progress are published only after an append
//! succeeds, when nothing is staged, so nothing is ever reported that the
//! journal does not hold.
//!
//! **Invariants:** every event is checked against the replay rules before it
//! is sealed (the engine never journals an event its own replay would
//! refuse); appends name the expected seq; on a seq conflict the writer
//! reloads, and stops with `Superseded` if a newer driver epoch appeared.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, watch};

use crate::envelope::{genesis_hash, Envelope, EnvelopeV1, Hash, SealedEvent, ENGINE_VERSION};
use crate::error::EngineError;
use crate::event::Event;
use crate::failpoint::failpoint;
use crate::id::WorkflowId;
use crate::journal::{Journal, JournalError};
use crate::state::WorkflowState;
use crate::status::{Live, Progress, WorkflowStatus};
use crate::verify::verify;

/// How many times an append is rebased onto a reloaded journal after a seq
/// conflict before giving up.
const MAX_REBASES: u32 = 3;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Owns an instance's journal tail while one driver acts on it.
pub struct InstanceWriter {
    journal: Arc<dyn Journal>,
    node: u64,
    /// Durable events folded in, then the staged ones. Shared with the
    /// running attempt's context as its snapshot and copied on write only
    /// while such a snapshot is alive, so a step costs no copy of the state.
    state: Arc<WorkflowState>,
    /// The seq of the first staged event (= events durable so far).
    durable_next_seq: u64,
    /// Hash of the last durable event.
    head: Hash,
    /// Staged events, each with the time it was folded into `state` at; it
    /// is journaled with that same time, so the state the engine reports
    /// is exactly the fold of the journal (DESIGN §5.4), timestamps too.
    pending: Vec<(Event, u64)>,
    live: watch::Sender<Live>,
    progress: broadcast::Sender<Progress>,
}

impl InstanceWriter {
    /// A writer over an instance whose durable state and head are known.
    fn new(
        journal: Arc<dyn Journal>,
        node: u64,
        state: WorkflowState,
        head: Hash,
        live: watch::Sender<Live>,
        progress: broadcast::Sender<Progress>,
    ) -> Self {
        Self {
            journal,
            node,
            durable_next_seq: state.next_seq,
            state: Arc::new(state),
            head,
            pending: Vec::new(),
            live,
            progress,
        }
    }

    /// Creates an instance: journals `submitted` and the first driver epoch
    /// in one atomic append.
    pub(crate) async fn create(
        journal: Arc<dyn Journal>,
        node: u64,
        id: WorkflowId,
        submitted: Event,
        live: watch::Sender<Live>,
        progress: broadcast::Sender<Progress>,
    ) -> Result<Self, EngineError> {
        let definition_version = match &submitted {
            Event::Submitted {
                definition_version, ..
            } => *definition_version,
            _ => 0,
        };
        let first = SealedEvent::seal(Envelope::V1(EnvelopeV1 {
            seq: 0,
            at_ms: now_ms(),
            node,
            engine_version: ENGINE_VERSION,
            definition_version,
            prev_hash: genesis_hash(id),
            body: submitted,
        }));
        let state = WorkflowState::from_first(id, &first.envelope)
            .map_err(|source| EngineError::Replay { id, source })?;
        let mut writer = Self::new(journal, node, state, first.hash, live, progress);
        writer.stage(vec![Event::DriverStarted { epoch: 1 }])?;
        let mut sealed = writer.seal();
        sealed.insert(0, first);
        failpoint!(
            "workflow.append.before",
            events = sealed.iter().map(|e| e.envelope.body())
        );
        writer.journal.append(id, 0, sealed.clone()).await?;
        failpoint!(
            "workflow.append.after",
            events = sealed.iter().map(|e| e.envelope.body())
        );
        writer.durable_next_seq = 0;
        writer.commit(sealed);
        Ok(writer)
    }

    /// A writer over an existing instance, from its verified events.
    pub(crate) fn open(
        journal: Arc<dyn Journal>,
        node: u64,
        id: WorkflowId,
        events: Vec<SealedEvent>,
        live: watch::Sender<Live>,
        progress: broadcast::Sender<Progress>,
    ) -> Result<Self, EngineError> {
        let head = events
            .last()
            .map(|e| e.hash)
            .ok_or(JournalError::UnknownInstance(id))?;
        let records = events.into_iter().map(|e| (e.seq(), e.bytes)).collect();
        let verified = verify(id, records, Some(head)).map_err(JournalError::from)?;
        Ok(Self::new(
            journal,
            node,
            verified.state,
            head,
            live,
            progress,
        ))
    }

    /// The state: durable events and, between a `stage` and the next
    /// `flush`, the staged ones.
    pub fn state(&self) -> &WorkflowState {
        &self.state
    }

    /// The state as it is now, shared: the next `stage` copies it only if
    /// the snapshot is still held then.
    pub(crate) fn snapshot(&self) -> Arc<WorkflowState> {
        Arc::clone(&self.state)
    }

    /// Stages events for the next flush, checking each against the replay
    /// rules now (the engine never journals an event its replay would refuse).
    pub(crate) fn stage(&mut self, events: Vec<Event>) -> Result<(), EngineError> {
        let at_ms = now_ms();
        for event in events {
            let envelope = self.envelope(self.state.next_seq, [0; 32], event.clone(), at_ms);
            Arc::make_mut(&mut self.state)
                .apply(&envelope)
                .map_err(|source| EngineError::Replay {
                    id: self.state.id,
                    source,
                })?;
            self.pending.push((event, at_ms));
        }
        Ok(())
    }

    /// Journals the staged events and `more`, atomically and durably.
    pub(crate) async fn flush(&mut self, more: Vec<Event>) -> Result<(), EngineError> {
        self.stage(more)?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut rebases = 0;
        failpoint!(
            "workflow.append.before",
            events = self.pending.iter().map(|(e, _)| e)
        );
        loop {
            let sealed = self.seal();
            let id = self.state.id;
            match self
                .journal
                .append(id, self.durable_next_seq, sealed.clone())
                .await
            {
                Ok(()) => {
                    failpoint!(
                        "workflow.append.after",
                        events = self.pending.iter().map(|(e, _)| e)
                    );
                    self.commit(sealed);
                    return Ok(());
                }
                Err(JournalError::SeqConflict { .. }) if rebases < MAX_REBASES => {
                    rebases += 1;
                    self.reload().await?;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    fn envelope(&self, seq: u64, prev_hash: Hash, body: Event, at_ms: u64) -> Envelope {
        Envelope::V1(EnvelopeV1 {
            seq,
            at_ms,
            node: self.node,
            engine_version: ENGINE_VERSION,
            definition_version: self.state.definition_version,
            prev_hash,
            body,
        })
    }

    /// Seals the staged events onto the durable head.
    fn seal(&self) -> Vec<SealedEvent> {
        let mut prev_hash = self.head;
        let mut sealed = Vec::with_capacity(self.pending.len());
        for (seq, (event, at_ms)) in (self.durable_next_seq..).zip(&self.pending) {
            let envelope = self.envelope(seq, prev_hash, event.clone(), *at_ms);
            let event = SealedEvent::seal(envelope);
            prev_hash = event.hash;
            sealed.push(event);
        }
        sealed
    }

    fn commit(&mut self, sealed: Vec<SealedEvent>) {
        self.pending.clear();
        self.durable_next_seq += sealed.len() as u64;
        debug_assert_eq!(self.durable_next_seq, self.state.next_seq);
        if let Some(last) = sealed.last() {
            self.head = last.hash;
        }
        for event in sealed {
            let envelope = event.envelope.current();
            let _no_subscriber_is_fine = self.progress.send(Progress {
                id: self.state.id,
                seq: envelope.seq,
                at_ms: envelope.at_ms,
                event: envelope.body.clone(),
            });
        }
        self.live.send_replace(Live {
            status: WorkflowStatus::from(self.state.as_ref()),
            driver_error: None,
        });
    }

    /// Re-reads the journal after another writer appended and re-stages the
    /// pending events on it; refuses to go on if that writer was a newer
    /// driver.
    async fn reload(&mut self) -> Result<(), EngineError> {
        let id = self.state.id;
        let events = self.journal.read(id).await?;
        let head = events.last().map_or(self.head, |e| e.hash);
        let records = events.into_iter().map(|e| (e.seq(), e.bytes)).collect();
        let verified = verify(id, records, None).map_err(JournalError::from)?;
        if verified.state.epoch != self.state.epoch {
            return Err(EngineError::Superseded {
                id,
                ours: self.state.epoch,
                newer: verified.state.epoch,
            });
        }
        self.head = head;
        self.durable_next_seq = verified.state.next_seq;
        self.state = Arc::new(verified.state);
        let pending = std::mem::take(&mut self.pending);
        self.stage(pending.into_iter().map(|(event, _)| event).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryJournal;

    // Proves the state is shared with a snapshot, not copied: a snapshot
    // held across a flush keeps the state it was taken at (the writer copies
    // it then), and a flush with no snapshot held changes the state in place.
    #[tokio::test]
    async fn a_snapshot_is_copied_only_while_it_is_held() {
        let id = WorkflowId::new(1, 1);
        let (live, _live) = watch::channel(crate::engine::placeholder_live(id));
        let (progress, _) = broadcast::channel(16);
        let submitted = Event::Submitted {
            kind: "k".into(),
            definition_version: 1,
            input: Vec::new(),
            plan: vec!["a".into()],
        };
        let journal = Arc::new(MemoryJournal::default());
        let mut writer = InstanceWriter::create(journal, 1, id, submitted, live, progress)
            .await
            .expect("create");
        let held = writer.snapshot();
        let started = Event::StepStarted {
            step: "a".into(),
            attempt: 1,
        };
        writer.flush(vec![started]).await.expect("flush");
        assert_eq!(
            held.next_seq, 2,
            "the snapshot is the state it was taken at"
        );
        assert_eq!(writer.state().next_seq, 3);
        drop(held);

        let shared = writer.snapshot();
        let at = Arc::as_ptr(&shared);
        drop(shared);
        let succeeded = Event::StepSucceeded {
            step: "a".into(),
            output: Vec::new(),
        };
        writer.flush(vec![succeeded]).await.expect("flush");
        assert_eq!(writer.state().next_seq, 4);
        assert_eq!(Arc::as_ptr(&writer.snapshot()), at, "changed in place");
    }
}
