//! The properties checked in every reachable state: DESIGN §5 invariants 1,
//! 2, 3, 6 and 7, plus `sometimes` properties that show the interesting
//! outcomes are reachable (so the `always` ones are not vacuous).

use stateright::Property;

use super::model::ProtocolModel;
use super::state::*;

pub const ONE_WRITER: &str = "at most one group accepts writes (invariant 2)";
pub const NO_LOST_WRITE: &str = "no acknowledged write is lost (invariant 1)";
pub const LINEARIZABLE: &str = "reads are linearizable (invariant 6)";
pub const EPOCH_MONOTONE: &str = "routing epoch never decreases (invariant 3)";
pub const ENDS_WRITABLE: &str = "migration ends decided, vShard writable (invariant 7)";

pub fn all() -> Vec<Property<ProtocolModel>> {
    vec![
        Property::always(ONE_WRITER, |_, s: &State| one_writer(s)),
        Property::always(NO_LOST_WRITE, |_, s: &State| no_lost_write(s)),
        Property::always(LINEARIZABLE, |_, s: &State| linearizable(s)),
        Property::always(EPOCH_MONOTONE, |_, s: &State| epoch_monotone(s)),
        Property::eventually(ENDS_WRITABLE, |_, s: &State| settled(s)),
        Property::sometimes("a migration completes", |_, s: &State| {
            settled(s) && s.metadata.decision == Decision::Transferred
        }),
        Property::sometimes("a migration aborts", |_, s: &State| {
            settled(s) && s.metadata.decision == Decision::Aborted
        }),
        Property::sometimes(
            "a write taken during catch-up is served by the target",
            |_, s: &State| s.target.mode == TargetMode::Active && s.target.applied > 0,
        ),
        Property::sometimes("a client learns the new route", |_, s: &State| {
            s.clients
                .iter()
                .any(|c| c.route_epoch == EPOCH_AFTER_TRANSFER)
        }),
        Property::sometimes(
            "a restarted driver completes the migration",
            |_, s: &State| {
                s.metadata.driver_epoch > 1 && s.metadata.decision == Decision::Transferred
            },
        ),
    ]
}

/// Invariant 2: the source serving (owned) and the target serving (active)
/// never hold at once.
fn one_writer(state: &State) -> bool {
    !(state.source.mode == SourceMode::Owned && state.target.mode == TargetMode::Active)
}

/// Invariant 1: every copy that serves clients holds every acknowledged write.
fn no_lost_write(state: &State) -> bool {
    let acknowledged = state.acknowledged;
    let holds_all = |data: Data| data.applied_writes & acknowledged == acknowledged;
    let source_ok = state.source.mode != SourceMode::Owned || holds_all(state.source.data());
    let target_ok = state.target.mode != TargetMode::Active || holds_all(state.target.data);
    source_ok && target_ok
}

/// Invariant 6: some order of the operations, consistent with real time
/// and with a register, explains every answer the clients received.
fn linearizable(state: &State) -> bool {
    state.history.serialized_history().is_some()
}

/// Invariant 3: no transition lowered a routing epoch (metadata or client
/// cache), and no client believes an epoch the metadata group never committed.
fn epoch_monotone(state: &State) -> bool {
    let committed = state.metadata.route_epoch();
    !state.epoch_regressed && state.clients.iter().all(|c| c.route_epoch <= committed)
}

/// Invariant 7's end state, stable once reached: decided, the decided owner
/// serves, the other copy is gone (cleanup ran, or the incoming copy was
/// dropped and the source applied the abort).
pub fn settled(state: &State) -> bool {
    match state.metadata.decision {
        Decision::Undecided => false,
        Decision::Transferred => {
            state.target.mode == TargetMode::Active && state.source.mode == SourceMode::Deleted
        }
        Decision::Aborted => {
            state.source.mode == SourceMode::Owned
                && state.source.closed
                && state.target.mode == TargetMode::Dropped
        }
    }
}
