//! Failpoints in the engine (the `fail` crate, 0.5), compiled in only with
//! the `failpoints` feature: the test build turns it on, release builds
//! carry none (the macro below then expands to nothing).
//!
//! The journal writer evaluates, around every journal append:
//!
//! - `workflow.append.before` / `workflow.append.after` — once per append
//!   (before it is sent; after it is durable, before status is published);
//! - `workflow.append.before:<Event>` and, for an event about a step,
//!   `workflow.append.before:<Event>:<step>` — once per event of the append
//!   (`<Event>` is [`Event::name`](crate::Event::name), e.g.
//!   `workflow.append.after:PointOfNoReturn:CutOver`); the same with
//!   `after`.
//!
//! Nothing here configures a failpoint: the process does (`fail::cfg`, or
//! `shardflow_steps::failpoint::setup_from_env` in `shardflow node`), so
//! this crate stays free of I/O.

/// Evaluates failpoint `$name` (`&str`); with `events = ITER` also the
/// per-event names (see the module doc). Nothing without the feature.
macro_rules! failpoint {
    ($name:expr) => {
        #[cfg(feature = "failpoints")]
        {
            fail::fail_point!($name);
        }
    };
    ($name:expr, events = $events:expr) => {
        #[cfg(feature = "failpoints")]
        {
            $crate::failpoint::append($name, $events);
        }
    };
}
pub(crate) use failpoint;

/// The append failpoints: `name` once, then `name:<Event>[:<step>]` per event.
#[cfg(feature = "failpoints")]
pub(crate) fn append<'a>(name: &str, events: impl IntoIterator<Item = &'a crate::Event>) {
    fail::fail_point!(name);
    for event in events {
        let kind = format!("{name}:{}", event.name());
        fail::fail_point!(&kind);
        if let Some(step) = event.step() {
            fail::fail_point!(&format!("{kind}:{step}"));
        }
    }
}
