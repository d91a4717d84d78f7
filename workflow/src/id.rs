//! Workflow identity.
//!
//! A [`WorkflowId`] names the node that drives the instance and a serial that
//! is unique within that node's journal, so any node can tell where to send a
//! `show`, `watch` or `cancel` for it. Its text form is `wf-<node>-<serial>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The identity of one workflow instance: the driving node and a per-node serial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkflowId {
    /// The node whose journal holds the instance and whose engine drives it.
    pub node: u64,
    /// Unique among the instances of that node's journal.
    pub serial: u64,
}

impl WorkflowId {
    /// Builds an id from its parts.
    pub fn new(node: u64, serial: u64) -> Self {
        Self { node, serial }
    }
}

impl fmt::Display for WorkflowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wf-{}-{}", self.node, self.serial)
    }
}

/// A string that is not of the form `wf-<node>-<serial>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid workflow id {0:?}: expected wf-<node>-<serial>, e.g. wf-1-7")]
pub struct InvalidWorkflowId(pub String);

impl FromStr for WorkflowId {
    type Err = InvalidWorkflowId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidWorkflowId(text.to_string());
        let rest = text.strip_prefix("wf-").ok_or_else(invalid)?;
        let (node, serial) = rest.split_once('-').ok_or_else(invalid)?;
        Ok(Self {
            node: node.parse().map_err(|_| invalid())?,
            serial: serial.parse().map_err(|_| invalid())?,
        })
    }
}

/// The idempotency key of a step: stable across attempts and restarts.
///
/// Every external effect a step causes (a Raft command, a file write) carries
/// it, so the receiver can return the first result instead of acting twice.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IdempotencyKey {
    /// The workflow instance.
    pub workflow: WorkflowId,
    /// The step's name within the workflow definition.
    pub step: String,
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.workflow, self.step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the text form round-trips and malformed ids are refused.
    #[test]
    fn id_text_round_trip_and_rejects_garbage() {
        let id = WorkflowId::new(3, 42);
        assert_eq!(id.to_string(), "wf-3-42");
        assert_eq!("wf-3-42".parse::<WorkflowId>(), Ok(id));
        for bad in ["", "wf-", "wf-3", "x-3-4", "wf-a-4", "wf-3-4-5", "wf--4"] {
            assert!(bad.parse::<WorkflowId>().is_err(), "{bad} accepted");
        }
    }
}
