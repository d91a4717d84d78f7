//! Failpoints in the migration steps (the `fail` crate, 0.5), compiled in
//! only with the `failpoints` feature: the test build turns it on, release
//! builds carry none (the macro then expands to nothing), and
//! [`setup_from_env`] configures them in a `shardflow node` process.
//!
//! # Names
//!
//! MoveVShard (evaluated by the node driving the migration):
//! - `vshard.propose.before` / `vshard.propose.after` — around every Raft
//!   proposal a step makes (lease renewals and change trims included), and
//!   the same with `:<step>/<what>` naming the proposal, taken from its
//!   idempotency key without the workflow id and numbers
//!   (`vshard.propose.before:CutOver/fence`, `…:CutOver/transfer`,
//!   `…:BaseCopy/chunk`, `…:Lock`, `…:CatchUp/renew`, `…:Abort`);
//! - `vshard.copy.between-chunks` — after a chunk's checkpoint, before the
//!   next chunk is read;
//! - `vshard.cutover.fenced` — the fence is applied, the drain not begun;
//! - `vshard.cutover.transferred` — `Transfer` committed and answered, its
//!   `PointOfNoReturn` not yet journaled.
//!
//! MoveReplica:
//! - `replica.propose.before` / `replica.propose.after` (and `:<step>`…) —
//!   around the metadata proposals (`Record`);
//! - `replica.membership.before` / `replica.membership.after` and
//!   `:<call>` — around the Raft membership changes a step asks for
//!   (`add_learner`, `change_membership`, `remove_learner`).
//!
//! The engine's journal writer adds `workflow.append.{before,after}[…]`
//! (see `shardflow_workflow`'s failpoint module).
//!
//! # Configuration (environment of the process)
//!
//! - `FAILPOINTS` — the `fail` crate's own syntax, `name=actions;…`
//!   (`panic`, `sleep(ms)`, `print`, `pause`, `return`, `N*off->…`). A
//!   panic inside a step is caught by the engine (a terminal failure of the
//!   attempt), so it does not crash the process.
//! - `SHARDFLOW_FAILPOINTS` — `name[#N]=abort|hold;…`: at the `N`th hit
//!   (default 1, counted per name since the process started) of `name`:
//!   - `abort` — write the marker, then `std::process::abort()`: the process
//!     dies there, as under SIGKILL (no destructor, no flush);
//!   - `hold` — write the marker, then block the hitting thread until the
//!     release file exists (at most 5 minutes), so a test can SIGKILL
//!     *another* process while this one stands exactly at the failpoint.
//! - `SHARDFLOW_FAILPOINT_DIR` — where markers go (required by `hold`):
//!   `<name>.hit` (holding the pid and hit number; `name` with every
//!   character other than `[A-Za-z0-9.-]` replaced by `_`) and the release
//!   file `<name>.go` that the test creates.

/// Evaluates failpoint `$name` (`&str`); with `key = KEY` also
/// `$name:<label of KEY>`, with `call = "what"` also `$name:what` (see the
/// module doc). Nothing without the feature.
macro_rules! failpoint {
    ($name:expr) => {
        #[cfg(feature = "failpoints")]
        {
            fail::fail_point!($name);
        }
    };
    ($name:literal, call = $call:literal) => {
        #[cfg(feature = "failpoints")]
        {
            fail::fail_point!($name);
            fail::fail_point!(concat!($name, ":", $call));
        }
    };
    ($name:expr, key = $key:expr) => {
        #[cfg(feature = "failpoints")]
        {
            $crate::failpoint::keyed($name, &$key);
        }
    };
}
pub(crate) use failpoint;

/// `name`, then `name:<label>` for an idempotency key.
#[cfg(feature = "failpoints")]
pub(crate) fn keyed(name: &str, key: &str) {
    fail::fail_point!(name);
    fail::fail_point!(&format!("{name}:{}", label(key)));
}

/// What a command key names, without the workflow id and the numbers:
/// `wf-1-3/CutOver/fence/1/2` → `CutOver/fence`.
#[cfg(any(feature = "failpoints", test))]
fn label(key: &str) -> String {
    let words: Vec<&str> = (key.split('/').skip(1))
        .filter(|word| !word.is_empty() && !word.bytes().all(|b| b.is_ascii_digit()))
        .take(2)
        .collect();
    words.join("/")
}

/// The environment variable of the `abort` / `hold` actions.
pub const ENV_ACTIONS: &str = "SHARDFLOW_FAILPOINTS";
/// The environment variable naming the marker directory.
pub const ENV_DIR: &str = "SHARDFLOW_FAILPOINT_DIR";

/// The marker file a failpoint writes when its action fires.
pub fn hit_file(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{}.hit", file_stem(name)))
}

/// The file that releases a `hold`.
pub fn release_file(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{}.go", file_stem(name)))
}

fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Configures the failpoints from `FAILPOINTS` and `SHARDFLOW_FAILPOINTS`
/// (module doc). Call once, early, in a process (`shardflow node` does).
/// Without the `failpoints` feature it only warns on stderr if either
/// variable is set.
///
/// # Panics
///
/// On a malformed configuration (a crash test must not silently run
/// without its failpoint).
pub fn setup_from_env() {
    #[cfg(feature = "failpoints")]
    enabled::setup();
    #[cfg(not(feature = "failpoints"))]
    for var in ["FAILPOINTS", ENV_ACTIONS] {
        if std::env::var_os(var).is_some() {
            eprintln!(
                "warning: {var} is set but this build has no failpoints (feature `failpoints`)"
            );
        }
    }
}

#[cfg(feature = "failpoints")]
mod enabled {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use super::{hit_file, release_file, ENV_ACTIONS, ENV_DIR};

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Action {
        Abort,
        Hold,
    }

    /// How long a `hold` waits for its release file at most.
    const HOLD_AT_MOST: Duration = Duration::from_secs(300);

    pub(super) fn setup() {
        if let Ok(spec) = std::env::var("FAILPOINTS") {
            for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
                let (name, actions) = entry
                    .split_once('=')
                    .unwrap_or_else(|| panic!("FAILPOINTS: {entry:?} is not name=actions"));
                fail::cfg(name.trim(), actions.trim())
                    .unwrap_or_else(|e| panic!("FAILPOINTS: {entry:?}: {e}"));
            }
        }
        let Ok(spec) = std::env::var(ENV_ACTIONS) else {
            return;
        };
        let dir = std::env::var_os(ENV_DIR).map(PathBuf::from);
        let mut by_name: BTreeMap<String, Vec<(u64, Action)>> = BTreeMap::new();
        for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (point, action) = entry
                .split_once('=')
                .unwrap_or_else(|| panic!("{ENV_ACTIONS}: {entry:?} is not name[#N]=action"));
            let (name, nth) = match point.rsplit_once('#') {
                Some((name, nth)) => (
                    name,
                    nth.parse::<u64>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .unwrap_or_else(|| panic!("{ENV_ACTIONS}: bad hit number in {entry:?}")),
                ),
                None => (point, 1),
            };
            let action = match action.trim() {
                "abort" => Action::Abort,
                "hold" => Action::Hold,
                other => panic!("{ENV_ACTIONS}: unknown action {other:?} (abort or hold)"),
            };
            if action == Action::Hold && dir.is_none() {
                panic!("{ENV_ACTIONS}: hold needs {ENV_DIR}");
            }
            by_name
                .entry(name.trim().to_string())
                .or_default()
                .push((nth, action));
        }
        // Tests read this line to know the process armed them (a binary
        // built without the feature prints a warning instead).
        eprintln!("failpoints armed: {spec}");
        for (name, actions) in by_name {
            let hits = AtomicU64::new(0);
            let dir = dir.clone();
            let point = name.clone();
            fail::cfg_callback(name, move || {
                let hit = hits.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some(&(_, action)) = actions.iter().find(|(nth, _)| *nth == hit) {
                    fire(&point, hit, action, dir.as_deref());
                }
            })
            .unwrap_or_else(|e| panic!("{ENV_ACTIONS}: {e}"));
        }
    }

    fn fire(name: &str, hit: u64, action: Action, dir: Option<&std::path::Path>) {
        eprintln!("failpoint {name} hit {hit}: {action:?}");
        if let Some(dir) = dir {
            let marker = format!("{} {hit}\n", std::process::id());
            // Written whole, then renamed: a reader never sees half of it.
            let path = hit_file(dir, name);
            let partial = path.with_extension("partial");
            let written =
                std::fs::write(&partial, marker).and_then(|()| std::fs::rename(&partial, &path));
            if let Err(error) = written {
                eprintln!("failpoint {name}: cannot write {}: {error}", path.display());
            }
        }
        match action {
            Action::Abort => std::process::abort(),
            Action::Hold => {
                let Some(dir) = dir else { return };
                let release = release_file(dir, name);
                let started = Instant::now();
                while !release.exists() {
                    if started.elapsed() > HOLD_AT_MOST {
                        eprintln!("failpoint {name}: never released; going on");
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a key's label drops the workflow id and the numbers.
    #[test]
    fn labels_name_the_step_and_the_proposal() {
        assert_eq!(label("wf-1-3/CutOver/fence/1/2"), "CutOver/fence");
        assert_eq!(label("wf-1-3/BaseCopy/chunk/7"), "BaseCopy/chunk");
        assert_eq!(label("wf-1-3/Lock/2"), "Lock");
        assert_eq!(label("wf-1-3/Abort"), "Abort");
        assert_eq!(
            label("wf-2-1/CutOver/cutover-catchup/1/1/3"),
            "CutOver/cutover-catchup"
        );
        assert_eq!(
            file_stem("vshard.propose.before:CutOver/fence"),
            "vshard.propose.before_CutOver_fence"
        );
    }
}
