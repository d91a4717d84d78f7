//! The per-instance row of the redb journal: what `list` shows without a
//! replay, and the chain head that lets `read` catch an altered last event.
//!
//! Persisted, so versioned: `InstanceRecord::V1` only ever gains siblings.

use serde::{Deserialize, Serialize};
use shardflow_workflow::envelope::Hash;
use shardflow_workflow::{InstanceSummary, SealedEvent, WorkflowId};

/// The persisted row, versioned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceRecord {
    V1(InstanceRecordV1),
}

/// Version 1 of the row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecordV1 {
    pub kind: String,
    pub next_seq: u64,
    pub head: Hash,
    pub last_event: String,
    pub ended: bool,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl InstanceRecordV1 {
    /// The row of a new instance, before its first event is folded in.
    pub fn empty(at_ms: u64) -> Self {
        Self {
            kind: String::new(),
            next_seq: 0,
            head: [0; 32],
            last_event: String::new(),
            ended: false,
            created_at_ms: at_ms,
            updated_at_ms: at_ms,
        }
    }

    /// Folds an appended event into the row.
    pub fn absorb(&mut self, event: &SealedEvent) {
        let body = event.envelope.body();
        if let shardflow_workflow::Event::Submitted { kind, .. } = body {
            self.kind = kind.clone();
        }
        self.next_seq = event.seq() + 1;
        self.head = event.hash;
        self.last_event = body.name().to_string();
        self.ended |= body.is_terminal();
        self.updated_at_ms = event.envelope.current().at_ms;
    }

    /// The summary `Journal::list` returns.
    pub fn summary(&self, id: WorkflowId) -> InstanceSummary {
        InstanceSummary {
            id,
            kind: self.kind.clone(),
            events: self.next_seq,
            last_event: self.last_event.clone(),
            ended: self.ended,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        }
    }
}

impl InstanceRecord {
    /// Encodes the row.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("postcard encodes plain data")
    }

    /// Decodes a row, refusing trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<InstanceRecordV1, String> {
        let (record, rest) =
            postcard::take_from_bytes::<InstanceRecord>(bytes).map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err(format!("{} trailing bytes", rest.len()));
        }
        match record {
            InstanceRecord::V1(v1) => Ok(v1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins the shipped encoding of the instance row.
    #[test]
    fn golden_bytes_of_instance_record_v1() {
        let record = InstanceRecord::V1(InstanceRecordV1 {
            kind: "k".into(),
            next_seq: 2,
            head: [1; 32],
            last_event: "e".into(),
            ended: true,
            created_at_ms: 3,
            updated_at_ms: 4,
        });
        let hex: String = record.encode().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, format!("00016b02{}016501", "01".repeat(32)) + "0304");
        assert_eq!(
            InstanceRecord::decode(&record.encode()),
            Ok(match record {
                InstanceRecord::V1(v) => v,
            })
        );
        assert!(InstanceRecord::decode(&[0x05]).is_err());
    }
}
