//! A progress measure that proves the model's state graph has no cycle.
//!
//! stateright checks an `eventually` property only on paths that end in a
//! state without successors; a path that closes a cycle is not reported
//! (its documentation says so). The liveness check is therefore sound only
//! if the graph is acyclic. Every transition must raise this measure: each
//! counter only grows, and either one grows or fewer messages are in flight
//! (a sender only sends when its own counter grows). A bounded measure that
//! rises on every step admits no cycle.
//! `next_state` asserts it on every transition the checker takes.

use super::model::Action;
use super::state::*;

/// The counters that never decrease, and the weight of the network.
fn measure(state: &State) -> ([u32; 9], u32) {
    let counters = [
        u32::from(state.faults_used),
        driver_rank(&state.driver),
        u32::from(state.metadata.decision != Decision::Undecided),
        u32::from(state.metadata.driver_epoch),
        source_rank(&state.source),
        target_rank(&state.target),
        client_rank(&state.clients[0]),
        client_rank(&state.clients[1]),
        u32::from(state.epoch_regressed),
    ];
    (counters, state.network.len() as u32)
}

fn driver_rank(driver: &Driver) -> u32 {
    let stage = match driver.phase {
        DriverPhase::Resuming => 0,
        DriverPhase::Reopening => 1,
        DriverPhase::Finished | DriverPhase::Dead => 255,
        phase => {
            let step = match phase {
                DriverPhase::CatchUp => 0,
                DriverPhase::Fencing => 1,
                DriverPhase::Draining { .. } => 2,
                DriverPhase::Retreating => 3,
                DriverPhase::Transferring => 4,
                _ => 5, // GivingUp
            };
            2 + u32::from(driver.attempt) * 8 + step
        }
    };
    u32::from(driver.epoch) * 256 + stage
}

fn source_rank(source: &Source) -> u32 {
    let (stage, deadline) = match source.mode {
        SourceMode::Owned => (0, 0),
        SourceMode::Fenced {
            deadline_passed, ..
        } => (0, u32::from(deadline_passed)),
        SourceMode::Ghost => (1, 0),
        SourceMode::Deleted => (2, 0),
    };
    (stage << 24)
        | (u32::from(source.fence_entries) << 16)
        | ((source.log.len() as u32) << 8)
        | deadline
}

fn target_rank(target: &Target) -> u32 {
    let mode = match target.mode {
        TargetMode::Incoming => 0,
        TargetMode::Active => 1,
        TargetMode::Dropped => 2,
    };
    (mode << 16) | (u32::from(target.applied) << 8) | target.data.applied_writes.count_ones()
}

fn client_rank(client: &Client) -> u32 {
    u32::from(client.next_op) * 16 + u32::from(client.waiting.unwrap_or(0))
}

/// Panics unless `next` is strictly further along than `last`.
pub fn assert_progress(last: &State, next: &State, action: &Action) {
    let (before, weight_before) = measure(last);
    let (after, weight_after) = measure(next);
    let monotone = before.iter().zip(&after).all(|(b, a)| a >= b);
    let advanced = after != before || weight_after < weight_before;
    assert!(
        monotone && advanced,
        "transition {action:?} does not make progress: {before:?}/{weight_before} -> \
         {after:?}/{weight_after}\nfrom {last:#?}\nto {next:#?}"
    );
}
