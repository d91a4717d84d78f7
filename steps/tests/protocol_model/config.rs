//! The bounds of an exploration and the switches that remove one guard of the
//! protocol (the non-vacuity tests) or undo one fix (the flaw tests).

use super::state::ClientOp;

/// The guards DESIGN §4 relies on. `Guards::ALL` is the protocol as built;
/// each test that proves the model is not vacuous turns exactly one off.
#[derive(Clone, Copy, Debug)]
pub struct Guards {
    /// (a) Past its fence deadline the source asks for an abort and stays
    /// fenced until the abort commits. Off: it unfences when it asks.
    pub unfence_after_abort: bool,
    /// (b) The target activates only once `Transfer` committed. Off: the
    /// driver sends `Activate` along with its `Transfer` proposal.
    pub activate_after_transfer: bool,
    /// (c) A fenced source refuses reads. Off: it serves them.
    pub fenced_refuses_reads: bool,
    /// (d) The metadata group refuses a command carrying a stale driver
    /// epoch. Off: it accepts any epoch.
    pub stale_epoch_refused: bool,
    /// (e) The drain reaches exactly the fence index before `Transfer`. Off:
    /// the driver proposes once the target is within one change of it.
    pub exact_drain: bool,
}

impl Guards {
    pub const ALL: Guards = Guards {
        unfence_after_abort: true,
        activate_after_transfer: true,
        fenced_refuses_reads: true,
        stale_epoch_refused: true,
        exact_drain: true,
    };
}

/// The two changes to DESIGN §4 that the checker showed to be necessary.
/// `Fixes::ALL` is the corrected protocol; each flaw test undoes one.
#[derive(Clone, Copy, Debug)]
pub struct Fixes {
    /// Fences carry an id `(driver epoch, attempt)`: `Unfence{up_to}` lifts
    /// only a fence at or below `up_to`, and the source refuses a `Fence`
    /// at or below the highest id it has lifted or below the one it holds.
    /// Off (DESIGN as written): any `Unfence` lifts whatever fence is in
    /// place, and a `Fence` on a fenced source is "already fenced".
    pub fence_ids_checked: bool,
    /// The migration lock is a lease: when the driver is gone for good the
    /// metadata group commits the abort itself. Off (DESIGN as written): only
    /// a fence has a deadline, so a driver that dies before fencing strands
    /// the lock and the target's incoming copy forever.
    pub lock_lease: bool,
}

impl Fixes {
    pub const ALL: Fixes = Fixes {
        fence_ids_checked: true,
        lock_lease: true,
    };
}

/// One exploration: the bounds, the guards, the fixes.
#[derive(Clone, Debug)]
pub struct Config {
    /// The operations of the two clients, in order.
    pub programs: [Vec<ClientOp>; 2],
    /// 1: the driver never restarts; n: up to n - 1 crash-and-restart.
    pub max_driver_epoch: u8,
    /// Cut-over attempts per driver epoch (a retreat after an overrun drain
    /// starts the next attempt; after the last one the driver aborts).
    pub max_cutover_attempts: u8,
    /// Network faults per run: a lost message or a duplicated delivery.
    pub fault_budget: u8,
    /// Attempts a client makes per operation before it gives up.
    pub client_attempts: u8,
    /// The lock lease may also expire while the driver is alive (a slow
    /// driver), not only once it is dead.
    pub lease_expires_anytime: bool,
    pub guards: Guards,
    pub fixes: Fixes,
}

/// Whether `SHARDFLOW_MODEL_DEPTH=large` asks for the larger explorations.
pub fn large_requested() -> bool {
    std::env::var("SHARDFLOW_MODEL_DEPTH").as_deref() == Ok("large")
}

impl Config {
    /// CI: a writer and a reader against a driver that may crash once and
    /// restart, one network fault, a lease that expires once the driver is
    /// dead. 3.9e5 states, 12 s in a debug build.
    pub fn clients_ci() -> Config {
        Config {
            programs: [vec![ClientOp::Write(1)], vec![ClientOp::Read]],
            max_driver_epoch: 2,
            max_cutover_attempts: 1,
            fault_budget: 1,
            client_attempts: 2,
            lease_expires_anytime: false,
            guards: Guards::ALL,
            fixes: Fixes::ALL,
        }
    }

    /// Large: two clients that each write then read, and a lease that may
    /// also expire under a live (slow) driver. 1.2e7 states.
    pub fn clients_large() -> Config {
        Config {
            programs: [
                vec![ClientOp::Write(1), ClientOp::Read],
                vec![ClientOp::Write(2), ClientOp::Read],
            ],
            lease_expires_anytime: true,
            ..Config::clients_ci()
        }
    }

    /// CI: one writer against a driver that may also retreat from an
    /// overrun drain (two cut-over attempts). 2.1e5 states, 5 s debug.
    pub fn driver_ci() -> Config {
        Config {
            programs: [vec![ClientOp::Write(1)], vec![]],
            max_cutover_attempts: 2,
            ..Config::clients_ci()
        }
    }

    /// Large: a writer and a reader against a driver with two cut-over
    /// attempts per epoch and a lease that may expire at any time; once with
    /// two restarts and one fault (3.2e7 states), once with one restart and
    /// two faults (1e7 states).
    pub fn driver_large() -> Vec<Config> {
        let deep = Config {
            programs: [vec![ClientOp::Write(1)], vec![ClientOp::Read]],
            max_driver_epoch: 3,
            max_cutover_attempts: 2,
            lease_expires_anytime: true,
            ..Config::clients_ci()
        };
        let faulty = Config {
            max_driver_epoch: 2,
            fault_budget: 2,
            ..deep.clone()
        };
        vec![deep, faulty]
    }
}
