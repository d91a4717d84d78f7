//! The data state machine's logic, pure (no redb, no async): vShard states,
//! the owner check, and what each data command does.
//!
//! [`apply`] reads through a small [`DataView`] and returns either the
//! mutations to write or a [`Rejection`]; the Raft layer writes the
//! mutations in the same transaction as the rest of the batch.
//!
//! **Invariants:**
//! - The owner check happens here, at apply: a write to a vShard this group
//!   does not hold as `Owned` is rejected (`NotOwner`, `Fenced`, `Moved`),
//!   and the decision depends only on the replicated state and the command,
//!   so every replica decides the same.
//! - A key is only ever filed under `vshard_of(key)`: a command naming
//!   another vShard is rejected, so scans and migrations of a vShard see
//!   every key that hashes to it.
//! - A rejected command writes nothing.

use std::collections::BTreeMap;
use std::convert::Infallible;

use serde::{Deserialize, Serialize};

use crate::command::{DataOp, Rejection};
use crate::vshard::{is_valid, vshard_of};

/// What a data group holds of one vShard (DESIGN §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VShardState {
    /// Serves reads and writes.
    Owned,
    /// Being filled by a migration; invisible to clients.
    Incoming { migration: String },
    /// Fenced by a migration: rejects reads and writes with a retryable error.
    Fenced { migration: String },
    /// Moved away: a ghost that redirects to the new owner.
    Moved { to_group: u64, epoch: u64 },
}

/// The persisted encoding of a vShard's state, versioned. Append only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VShardRecord {
    V1(VShardState),
}

impl From<VShardRecord> for VShardState {
    fn from(record: VShardRecord) -> Self {
        let VShardRecord::V1(state) = record;
        state
    }
}

/// Whether this group serves reads and writes of `vshard`, whose state here
/// is `state`; the rejection a client gets otherwise.
pub fn check_serving(vshard: u16, state: Option<&VShardState>) -> Result<(), Rejection> {
    match state {
        Some(VShardState::Owned) => Ok(()),
        None | Some(VShardState::Incoming { .. }) => Err(Rejection::NotOwner { vshard }),
        Some(VShardState::Fenced { migration }) => Err(Rejection::Fenced {
            vshard,
            migration: migration.clone(),
        }),
        Some(VShardState::Moved { to_group, epoch }) => Err(Rejection::Moved {
            vshard,
            to_group: *to_group,
            epoch: *epoch,
        }),
    }
}

/// Checks that `vshard` exists and that `key` hashes to it.
pub fn check_key(vshard: u16, key: &[u8]) -> Result<(), Rejection> {
    if !is_valid(vshard) {
        return Err(Rejection::InvalidVShard { vshard });
    }
    let expected = vshard_of(key);
    if expected != vshard {
        return Err(Rejection::WrongVShard { vshard, expected });
    }
    Ok(())
}

/// The reads the data logic needs from the state machine.
pub trait DataView {
    type Error;
    /// The state of `vshard` in this group, if it has one.
    fn vshard_state(&self, vshard: u16) -> Result<Option<VShardState>, Self::Error>;
}

/// An in-memory view, for tests and tools.
impl DataView for BTreeMap<u16, VShardState> {
    type Error = Infallible;
    fn vshard_state(&self, vshard: u16) -> Result<Option<VShardState>, Infallible> {
        Ok(self.get(&vshard).cloned())
    }
}

/// One write a data command makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataMutation<'a> {
    SetVShard {
        vshard: u16,
        state: VShardState,
    },
    Put {
        vshard: u16,
        key: &'a [u8],
        value: &'a [u8],
    },
    Delete {
        vshard: u16,
        key: &'a [u8],
    },
}

/// What applying a data command decided: writes, or a refusal.
pub type Decision<'a> = Result<Vec<DataMutation<'a>>, Rejection>;

/// Decides what `op` does given the state `view` shows.
pub fn apply<'a, V: DataView>(view: &V, op: &'a DataOp) -> Result<Decision<'a>, V::Error> {
    match op {
        DataOp::Put { vshard, key, value } => {
            let decision = check_write(view, *vshard, key)?;
            Ok(decision.map(|()| {
                vec![DataMutation::Put {
                    vshard: *vshard,
                    key,
                    value,
                }]
            }))
        }
        DataOp::Delete { vshard, key } => {
            let decision = check_write(view, *vshard, key)?;
            Ok(decision.map(|()| {
                vec![DataMutation::Delete {
                    vshard: *vshard,
                    key,
                }]
            }))
        }
        DataOp::AssignVShards { vshards } => assign(view, vshards),
    }
}

fn check_write<V: DataView>(
    view: &V,
    vshard: u16,
    key: &[u8],
) -> Result<Result<(), Rejection>, V::Error> {
    if let Err(rejection) = check_key(vshard, key) {
        return Ok(Err(rejection));
    }
    let state = view.vshard_state(vshard)?;
    Ok(check_serving(vshard, state.as_ref()))
}

/// Marks `vshards` Owned; refused whole if one is invalid or migrating.
fn assign<'a, V: DataView>(view: &V, vshards: &[u16]) -> Result<Decision<'a>, V::Error> {
    let mut mutations = Vec::new();
    for &vshard in vshards {
        if !is_valid(vshard) {
            return Ok(Err(Rejection::InvalidVShard { vshard }));
        }
        match view.vshard_state(vshard)? {
            Some(VShardState::Owned) => {}
            None => mutations.push(DataMutation::SetVShard {
                vshard,
                state: VShardState::Owned,
            }),
            Some(_) => return Ok(Err(Rejection::VShardInUse { vshard })),
        }
    }
    mutations.dedup();
    Ok(Ok(mutations))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(states: &[(u16, VShardState)]) -> BTreeMap<u16, VShardState> {
        states.iter().cloned().collect()
    }

    fn key_in(vshard: u16) -> Vec<u8> {
        (0u32..)
            .map(|i| format!("k{i}").into_bytes())
            .find(|k| vshard_of(k) == vshard)
            .unwrap_or_default()
    }

    /// A Put is applied only on an Owned vShard; each other state gets its
    /// own typed rejection and no mutation.
    #[test]
    fn owner_check_per_state() {
        let key = key_in(5);
        let put = DataOp::Put {
            vshard: 5,
            key: key.clone(),
            value: b"v".to_vec(),
        };
        let cases = [
            (None, Err(Rejection::NotOwner { vshard: 5 })),
            (Some(VShardState::Owned), Ok(())),
            (
                Some(VShardState::Incoming {
                    migration: "m".into(),
                }),
                Err(Rejection::NotOwner { vshard: 5 }),
            ),
            (
                Some(VShardState::Fenced {
                    migration: "m".into(),
                }),
                Err(Rejection::Fenced {
                    vshard: 5,
                    migration: "m".into(),
                }),
            ),
            (
                Some(VShardState::Moved {
                    to_group: 2,
                    epoch: 3,
                }),
                Err(Rejection::Moved {
                    vshard: 5,
                    to_group: 2,
                    epoch: 3,
                }),
            ),
        ];
        for (state, expected) in cases {
            let states = view(&state.iter().map(|s| (5, s.clone())).collect::<Vec<_>>());
            let Ok(decision) = apply(&states, &put);
            match expected {
                Ok(()) => assert_eq!(
                    decision,
                    Ok(vec![DataMutation::Put {
                        vshard: 5,
                        key: &key,
                        value: b"v"
                    }])
                ),
                Err(rejection) => assert_eq!(decision, Err(rejection), "state {state:?}"),
            }
        }
    }

    /// A key filed under the wrong or a non-existent vShard is refused.
    #[test]
    fn key_must_hash_to_its_vshard() {
        let key = key_in(5);
        let states = view(&[(5, VShardState::Owned), (6, VShardState::Owned)]);
        let wrong = DataOp::Delete {
            vshard: 6,
            key: key.clone(),
        };
        let Ok(decision) = apply(&states, &wrong);
        assert_eq!(
            decision,
            Err(Rejection::WrongVShard {
                vshard: 6,
                expected: 5
            })
        );
        let invalid = DataOp::Delete { vshard: 1024, key };
        let Ok(decision) = apply(&states, &invalid);
        assert_eq!(decision, Err(Rejection::InvalidVShard { vshard: 1024 }));
    }

    /// Assigning marks new vShards Owned, skips owned ones, refuses whole if
    /// one is migrating.
    #[test]
    fn assign_vshards() {
        let states = view(&[(1, VShardState::Owned)]);
        let op = DataOp::AssignVShards {
            vshards: vec![0, 1, 2, 2],
        };
        let Ok(decision) = apply(&states, &op);
        let owned = |vshard| DataMutation::SetVShard {
            vshard,
            state: VShardState::Owned,
        };
        assert_eq!(decision, Ok(vec![owned(0), owned(2)]));
        let busy = view(&[(
            2,
            VShardState::Fenced {
                migration: "m".into(),
            },
        )]);
        let Ok(decision) = apply(&busy, &op);
        assert_eq!(decision, Err(Rejection::VShardInUse { vshard: 2 }));
        let op = DataOp::AssignVShards {
            vshards: vec![0, 4096],
        };
        let Ok(decision) = apply(&states, &op);
        assert_eq!(decision, Err(Rejection::InvalidVShard { vshard: 4096 }));
    }

    /// The persisted vShard state keeps its shipped encoding.
    #[test]
    fn golden_vshard_records() {
        let cases = [
            (VShardState::Owned, "0000"),
            (
                VShardState::Incoming {
                    migration: "m".into(),
                },
                "0001016d",
            ),
            (
                VShardState::Fenced {
                    migration: "m".into(),
                },
                "0002016d",
            ),
            (
                VShardState::Moved {
                    to_group: 2,
                    epoch: 300,
                },
                "000302ac02",
            ),
        ];
        for (state, expected) in cases {
            let record = VShardRecord::V1(state);
            let bytes = postcard::to_allocvec(&record).expect("encoding to a Vec cannot fail");
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, expected, "{record:?}");
            let decoded: VShardRecord = postcard::from_bytes(&bytes).expect("decodes");
            assert_eq!(decoded, record);
        }
    }
}
