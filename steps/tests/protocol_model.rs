//! A model of the MoveVShard migration protocol (DESIGN §4), checked with
//! stateright over every reachable state of a small configuration.
//!
//! Actors: the driver (it may crash at any point and restart with a bumped
//! epoch, or die for good), the source group, the target group, the
//! metadata group, and two clients running a bounded program of writes and
//! reads on the moving vShard with stale or freshly refreshed routing. Each
//! Raft group is one linearizable state machine. Messages travel in an
//! unordered set: any in-flight message may be delivered next; a bounded
//! number of faults may lose a message or deliver a duplicate later.
//!
//! The protocol: the driver catches the target up, fences the source at
//! index f (the fence carries a deadline and an id), drains exactly to f,
//! and proposes `Transfer` to the metadata group, which orders it against
//! the abort the source requests once its deadline passes (first commit
//! wins) and refuses stale driver epochs. The groups apply the committed
//! decision on their own: on `Transfer` the target activates and the source
//! becomes a ghost that redirects, then is cleaned up; on abort the source
//! unfences and the target drops its copy. A restarted driver first commits
//! its new epoch (`Resume`), then rolls forward or unfences and catches up.
//!
//! Checked: invariants 1 (no acknowledged write lost), 2 (one writer),
//! 3 (routing epoch monotone), 6 (linearizable reads, stateright's
//! `LinearizabilityTester` over a `Register`) in every state, and 7 (every
//! run ends decided with the vShard writable) as an `eventually` property on
//! an acyclic state graph (asserted on every transition, see `progress.rs`).
//! One test per guard removes it and expects a counterexample; two tests
//! undo the fixes the checker showed DESIGN §4 needs. docs/protocol-model.md
//! explains the model and its results.
//!
//! `SHARDFLOW_MODEL_DEPTH=large cargo test --release -p shardflow-steps
//! --test protocol_model -- --nocapture` runs the larger exploration.

// A test crate root resolves `mod` paths beside itself, hence `#[path]`.
#[path = "protocol_model/config.rs"]
mod config;
#[path = "protocol_model/model.rs"]
mod model;
#[path = "protocol_model/progress.rs"]
mod progress;
#[path = "protocol_model/properties.rs"]
mod properties;
#[path = "protocol_model/state.rs"]
mod state;

use std::collections::BTreeSet;
use std::time::Instant;

use stateright::{Checker, HasDiscoveries, Model};

use config::{Config, Fixes, Guards};
use model::ProtocolModel;
use properties::*;

/// Explores every reachable state (depth first: little memory), or, when
/// `expected` names a property, breadth first until its counterexample
/// (the shortest one). Prints the state count and duration.
fn explore(
    name: &str,
    config: Config,
    expected: Option<&'static str>,
) -> Box<dyn Checker<ProtocolModel>> {
    let threads = if config::large_requested() {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        1
    };
    let start = Instant::now();
    let builder = ProtocolModel::new(config).checker().threads(threads);
    let checker: Box<dyn Checker<ProtocolModel>> = match expected {
        None => Box::new(builder.spawn_dfs().join()),
        Some(property) => Box::new(
            builder
                .finish_when(HasDiscoveries::AnyOf(BTreeSet::from([property])))
                .spawn_bfs()
                .join(),
        ),
    };
    println!(
        "{name}: {} states ({} unique), depth {}, {:.2} s",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        start.elapsed().as_secs_f64()
    );
    checker
}

/// Asserts the checker found a counterexample to `property` and prints it.
fn assert_counterexample(checker: &dyn Checker<ProtocolModel>, property: &'static str) {
    let path = checker
        .discovery(property)
        .unwrap_or_else(|| panic!("expected a counterexample to \"{property}\", found none"));
    println!("counterexample to \"{property}\":");
    for action in path.into_actions() {
        println!("  {action:?}");
    }
}

fn with_guards(guards: Guards) -> Config {
    Config {
        guards,
        ..Config::clients_ci()
    }
}

/// Explores each configuration fully and asserts every property on it.
fn assert_all_properties(name: &str, configs: Vec<Config>) {
    for (index, config) in configs.into_iter().enumerate() {
        let checker = explore(&format!("{name} #{index}"), config, None);
        assert!(checker.is_done(), "{name} #{index}: exploration incomplete");
        checker.assert_properties();
    }
}

#[test]
fn protocol_keeps_every_invariant_for_clients() {
    // Proves invariants 1, 2, 3, 6, 7 in every state reachable by clients racing a crashing driver.
    if config::large_requested() {
        assert_all_properties("clients (large)", vec![Config::clients_large()]);
    } else {
        assert_all_properties("clients", vec![Config::clients_ci()]);
    }
}

#[test]
fn protocol_keeps_every_invariant_through_retreats() {
    // Proves invariants 1, 2, 3, 6, 7 in every state reachable when the driver also retreats from a drain.
    if config::large_requested() {
        assert_all_properties("driver (large)", Config::driver_large());
    } else {
        assert_all_properties("driver", vec![Config::driver_ci()]);
    }
}

#[test]
fn source_unfencing_at_its_deadline_allows_two_writers() {
    // Proves guard (a) is needed: a source that unfences before its abort commits races Transfer.
    let guards = Guards {
        unfence_after_abort: false,
        ..Guards::ALL
    };
    let checker = explore("without guard (a)", with_guards(guards), Some(ONE_WRITER));
    assert_counterexample(&*checker, ONE_WRITER);
}

#[test]
fn target_activating_before_transfer_commits_allows_two_writers() {
    // Proves guard (b) is needed: a target activated before Transfer commits races the abort.
    let guards = Guards {
        activate_after_transfer: false,
        ..Guards::ALL
    };
    let checker = explore("without guard (b)", with_guards(guards), Some(ONE_WRITER));
    assert_counterexample(&*checker, ONE_WRITER);
}

#[test]
fn fenced_source_serving_reads_breaks_linearizability() {
    // Proves guard (c) is needed: a fenced source answers a stale read after the target took a write.
    let guards = Guards {
        fenced_refuses_reads: false,
        ..Guards::ALL
    };
    let checker = explore("without guard (c)", with_guards(guards), Some(LINEARIZABLE));
    assert_counterexample(&*checker, LINEARIZABLE);
}

#[test]
fn stale_driver_epoch_accepted_allows_two_writers() {
    // Proves guard (d) is needed: a dead driver's late Transfer commits after its successor unfenced.
    let guards = Guards {
        stale_epoch_refused: false,
        ..Guards::ALL
    };
    let checker = explore("without guard (d)", with_guards(guards), Some(ONE_WRITER));
    assert_counterexample(&*checker, ONE_WRITER);
}

#[test]
fn drain_short_of_the_fence_index_loses_a_write() {
    // Proves guard (e) is needed: a Transfer proposed one change short of f loses an acknowledged write.
    let guards = Guards {
        exact_drain: false,
        ..Guards::ALL
    };
    let checker = explore(
        "without guard (e)",
        with_guards(guards),
        Some(NO_LOST_WRITE),
    );
    assert_counterexample(&*checker, NO_LOST_WRITE);
}

#[test]
fn untagged_unfence_lifts_a_later_fence() {
    // Proves the fence-id fix is needed: as DESIGN §4 is written, a delayed Unfence lifts a newer fence.
    let config = Config {
        fixes: Fixes {
            fence_ids_checked: false,
            ..Fixes::ALL
        },
        ..Config::clients_ci()
    };
    let checker = explore("without fence ids", config, Some(ONE_WRITER));
    assert_counterexample(&*checker, ONE_WRITER);
}

#[test]
fn driver_dying_before_the_fence_strands_the_migration() {
    // Proves the lock-lease fix is needed: as DESIGN §4 is written, a driver dead before fencing never ends.
    let config = Config {
        fixes: Fixes {
            lock_lease: false,
            ..Fixes::ALL
        },
        ..Config::clients_ci()
    };
    let checker = explore("without a lock lease", config, Some(ENDS_WRITABLE));
    assert_counterexample(&*checker, ENDS_WRITABLE);
}
