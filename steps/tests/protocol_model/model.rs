//! The transitions of the MoveVShard model: which actions each state enables
//! and what each one does. One `impl` block per actor.
//!
//! Atomicity. Each data group and the metadata group is one Raft group, so
//! each is modelled as one linearizable state machine: a message is handled
//! in one step. A group's reaction to a committed decision (`Transfer` or
//! abort) is a local step enabled once the decision is in the metadata
//! group: decisions are final, so a watch, a poll or the driver's fast-path
//! command that carries it can only delay that step, and the checker already
//! tries every delay. The copy stream (BaseCopy, CatchUp, drain) ships the
//! source's changes in log order, idempotently, one change per step; a
//! change at index i never changes, so reading it at send or delivery time
//! is the same.
//!
//! Answers. Only requests travel; the requester learns the answer in the
//! step that handles its request. A late answer only lengthens the
//! requester's wait: for a client that makes the operation's interval
//! longer, which can only make a history easier to linearize, so the
//! immediate answer is the stricter check; for the driver every next step
//! is already schedulable at any later time. A lost answer is the fault
//! `HandleUnanswered`: the request takes effect, the requester is not told
//! and its retransmission stays in flight.

use stateright::semantics::register::{RegisterOp, RegisterRet};
use stateright::semantics::ConsistencyTester;
use stateright::{Model, Property};

use super::config::Config;
use super::progress::assert_progress;
use super::properties;
use super::state::*;

/// One step of the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The network delivers a message (in any order); the answer reaches
    /// the requester.
    Deliver(Message),
    /// Fault: a request is handled, answered, and a copy stays in flight (a
    /// retry sent after a premature timeout, delivered later).
    Duplicate(Message),
    /// Fault: a request is handled but its answer is lost; the requester,
    /// still waiting, retransmits it (it stays in flight).
    HandleUnanswered(Message),
    /// Fault: a message nobody waits for any more is lost. (Losing a request
    /// its sender still waits for is a delay then the identical retry.)
    Lose(Message),
    /// The driver ships the target the next change of the source's log.
    ShipChange,
    /// The driver judges the lag small enough and fences the source.
    StartCutOver,
    /// Drained: the driver proposes `Transfer` (the point of no return).
    ProposeTransfer,
    /// The drain would overrun the pause budget: retreat, or abort if no
    /// cut-over attempt is left.
    DrainOverrun,
    /// The driver crashes and restarts with a bumped epoch.
    CrashAndRestart,
    /// The driver crashes and never comes back.
    Die,
    /// The source's fence deadline passes.
    DeadlinePasses,
    /// The metadata group aborts the migration of a vanished driver.
    LeaseExpires,
    /// The source group applies the committed decision on its own.
    SourceApplyDecision,
    /// The target group applies the committed decision on its own.
    TargetApplyDecision,
    /// The ghost's time to live expires: cleanup deletes the source copy.
    CleanupGhost,
    /// A client starts its next operation, with its cached routing or after
    /// refreshing it from the metadata group.
    Invoke { client: u8, refresh_route: bool },
}

/// The model: a `Config` of bounds, guards and fixes.
pub struct ProtocolModel {
    pub config: Config,
}

impl Model for ProtocolModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State::initial()]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        self.network_actions(state, actions);
        self.driver_actions(state, actions);
        self.group_actions(state, actions);
        self.client_actions(state, actions);
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut next = last.clone();
        self.apply(&mut next, action);
        if next == *last {
            return None;
        }
        let regressed = next.metadata.route_epoch() < last.metadata.route_epoch()
            || (0..2).any(|c| next.clients[c].route_epoch < last.clients[c].route_epoch);
        next.epoch_regressed |= regressed;
        assert_progress(last, &next, &action);
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        properties::all()
    }
}

impl ProtocolModel {
    pub fn new(config: Config) -> ProtocolModel {
        ProtocolModel { config }
    }

    fn apply(&self, state: &mut State, action: Action) {
        match action {
            Action::Deliver(message) => {
                state.network.remove(&message);
                self.handle(state, message, true);
            }
            Action::Duplicate(message) => {
                state.faults_used += 1;
                self.handle(state, message, true);
            }
            Action::HandleUnanswered(message) => {
                state.faults_used += 1;
                self.handle(state, message, false);
            }
            Action::Lose(message) => {
                state.faults_used += 1;
                state.network.remove(&message);
            }
            Action::ShipChange => ship_change(state),
            Action::StartCutOver => {
                state.driver.phase = DriverPhase::Fencing;
                let id = state.driver.fence_id();
                state.network.insert(Message::Fence { id });
            }
            Action::ProposeTransfer => self.propose_transfer(state),
            Action::DrainOverrun => self.drain_overrun(state),
            Action::CrashAndRestart => restart_driver(state),
            Action::Die => state.driver.phase = DriverPhase::Dead,
            Action::DeadlinePasses => self.deadline_passes(state),
            Action::LeaseExpires => state.metadata.decision = Decision::Aborted,
            Action::SourceApplyDecision => source_apply_decision(state),
            Action::TargetApplyDecision => target_apply_decision(state),
            Action::CleanupGhost => {
                state.source.mode = SourceMode::Deleted;
                state.source.log.clear();
            }
            Action::Invoke {
                client,
                refresh_route,
            } => self.invoke(state, client, refresh_route),
        }
    }

    /// Hands a message to its recipient and, if `answered`, the answer to
    /// the requester if it still waits for it (an answer to an abandoned
    /// attempt arrives on an abandoned stream: it is dropped).
    fn handle(&self, state: &mut State, message: Message, answered: bool) {
        let answered = answered && self.request_awaited(state, &message);
        let reply = match message {
            Message::Fence { id } => self.source_on_fence(state, id),
            Message::Unfence { up_to } => self.source_on_unfence(state, up_to),
            Message::Command { command, epoch } => self.metadata_on_command(state, command, epoch),
            Message::AbortRequest => {
                if state.metadata.decision == Decision::Undecided {
                    state.metadata.decision = Decision::Aborted;
                }
                return;
            }
            Message::Activate => {
                if state.target.mode == TargetMode::Incoming {
                    state.target.mode = TargetMode::Active;
                }
                return;
            }
            Message::Request { client, op, to } => self.group_on_request(state, client, op, to),
        };
        if !answered {
            return;
        }
        match reply {
            Reply::Client { client, op, answer } => self.client_on_reply(state, client, op, answer),
            _ => driver_on_reply(state, reply),
        }
    }
}

// ---------------------------------------------------------------- network

impl ProtocolModel {
    fn network_actions(&self, state: &State, actions: &mut Vec<Action>) {
        let faults_left = state.faults_used < self.config.fault_budget;
        for message in &state.network {
            actions.push(Action::Deliver(*message));
            if !faults_left {
                continue;
            }
            actions.push(Action::Duplicate(*message));
            if self.request_awaited(state, message) {
                actions.push(Action::HandleUnanswered(*message));
            } else {
                actions.push(Action::Lose(*message));
            }
        }
    }

    /// Whether the sender of this request still waits for its answer (and
    /// would therefore send it again if it were lost).
    fn request_awaited(&self, state: &State, message: &Message) -> bool {
        let driver = &state.driver;
        match *message {
            Message::Fence { id } => {
                driver.phase == DriverPhase::Fencing && driver.fence_id() == id
            }
            Message::Unfence { up_to } => unfence_awaited(driver, up_to),
            Message::Command { command, epoch } => {
                driver.epoch == epoch && driver.phase == phase_awaiting(command)
            }
            Message::AbortRequest => {
                let deadline_passed = matches!(
                    state.source.mode,
                    SourceMode::Fenced {
                        deadline_passed: true,
                        ..
                    }
                );
                deadline_passed && state.metadata.decision == Decision::Undecided
            }
            Message::Activate => false,
            Message::Request { client, op, to } => {
                let c = &state.clients[client as usize];
                c.waiting.is_some() && c.next_op == op && c.route() == to
            }
        }
    }
}

fn unfence_awaited(driver: &Driver, up_to: FenceId) -> bool {
    match driver.phase {
        DriverPhase::Retreating => driver.fence_id() == up_to,
        DriverPhase::Reopening => driver.reopen_bound() == up_to,
        _ => false,
    }
}

fn phase_awaiting(command: MetaCommand) -> DriverPhase {
    match command {
        MetaCommand::Transfer => DriverPhase::Transferring,
        MetaCommand::Abort => DriverPhase::GivingUp,
        MetaCommand::Resume => DriverPhase::Resuming,
    }
}

// ----------------------------------------------------------------- driver

impl ProtocolModel {
    fn driver_actions(&self, state: &State, actions: &mut Vec<Action>) {
        let driver = &state.driver;
        if !driver.is_live() {
            return;
        }
        if driver.epoch < self.config.max_driver_epoch {
            actions.push(Action::CrashAndRestart);
        }
        actions.push(Action::Die);
        match driver.phase {
            DriverPhase::CatchUp => {
                if can_ship(state, u8::MAX) {
                    actions.push(Action::ShipChange);
                }
                actions.push(Action::StartCutOver);
            }
            DriverPhase::Draining { fence_index } => {
                if can_ship(state, fence_index) {
                    actions.push(Action::ShipChange);
                }
                if self.drained(state, fence_index) {
                    actions.push(Action::ProposeTransfer);
                }
                actions.push(Action::DrainOverrun);
            }
            _ => {}
        }
    }

    /// Guard (e): the target applied exactly the changes before the fence.
    fn drained(&self, state: &State, fence_index: u8) -> bool {
        if self.config.guards.exact_drain {
            state.target.applied == fence_index
        } else {
            state.target.applied + 1 >= fence_index
        }
    }

    fn propose_transfer(&self, state: &mut State) {
        let epoch = state.driver.epoch;
        state.driver.phase = DriverPhase::Transferring;
        state.network.insert(Message::Command {
            command: MetaCommand::Transfer,
            epoch,
        });
        if !self.config.guards.activate_after_transfer {
            state.network.insert(Message::Activate);
        }
    }

    fn drain_overrun(&self, state: &mut State) {
        let driver = &mut state.driver;
        if driver.attempt + 1 < self.config.max_cutover_attempts {
            driver.phase = DriverPhase::Retreating;
            let up_to = driver.fence_id();
            state.network.insert(Message::Unfence { up_to });
        } else {
            give_up(state);
        }
    }
}

/// Whether the driver can ship the target another change below `limit`.
fn can_ship(state: &State, limit: u8) -> bool {
    let source_has_data = matches!(
        state.source.mode,
        SourceMode::Owned | SourceMode::Fenced { .. }
    );
    let applied = state.target.applied;
    state.target.mode == TargetMode::Incoming
        && source_has_data
        && (applied as usize) < state.source.log.len()
        && applied < limit
}

fn ship_change(state: &mut State) {
    let value = state.source.log[state.target.applied as usize];
    state.target.data.apply(value);
    state.target.applied += 1;
}

fn give_up(state: &mut State) {
    state.driver.phase = DriverPhase::GivingUp;
    let epoch = state.driver.epoch;
    state.network.insert(Message::Command {
        command: MetaCommand::Abort,
        epoch,
    });
}

/// Resume: bump the epoch (journaled) and ask the metadata group for the
/// decision with a command carrying it, which fences out every older driver.
fn restart_driver(state: &mut State) {
    let driver = &mut state.driver;
    driver.epoch += 1;
    driver.attempt = 0;
    driver.phase = DriverPhase::Resuming;
    let epoch = driver.epoch;
    state.network.insert(Message::Command {
        command: MetaCommand::Resume,
        epoch,
    });
}

fn driver_on_reply(state: &mut State, reply: Reply) {
    let driver = &mut state.driver;
    match (driver.phase, reply) {
        (DriverPhase::Fencing, Reply::FenceOk { id, fence_index }) if id == driver.fence_id() => {
            driver.phase = DriverPhase::Draining { fence_index };
        }
        (DriverPhase::Fencing, Reply::FenceRefused { id }) if id == driver.fence_id() => {
            give_up(state);
        }
        (DriverPhase::Retreating | DriverPhase::Reopening, Reply::UnfenceOk { up_to })
            if unfence_awaited(driver, up_to) =>
        {
            if driver.phase == DriverPhase::Retreating {
                driver.attempt += 1;
            }
            driver.phase = DriverPhase::CatchUp;
        }
        (
            phase,
            Reply::Command {
                command,
                epoch,
                answer,
            },
        ) if epoch == driver.epoch && phase == phase_awaiting(command) => {
            if answer == MetaAnswer::Undecided {
                // Only `Resume` is answered "undecided": unfence what an
                // older incarnation may have fenced, then catch up again.
                driver.phase = DriverPhase::Reopening;
                let up_to = driver.reopen_bound();
                state.network.insert(Message::Unfence { up_to });
            } else {
                driver.phase = DriverPhase::Finished;
            }
        }
        _ => {} // An answer for an earlier attempt or incarnation: ignored.
    }
}

// ----------------------------------------------------------------- groups

impl ProtocolModel {
    fn group_actions(&self, state: &State, actions: &mut Vec<Action>) {
        let decision = state.metadata.decision;
        if let SourceMode::Fenced {
            deadline_passed: false,
            ..
        } = state.source.mode
        {
            actions.push(Action::DeadlinePasses);
        }
        let lease_may_expire =
            self.config.lease_expires_anytime || state.driver.phase == DriverPhase::Dead;
        if self.config.fixes.lock_lease && decision == Decision::Undecided && lease_may_expire {
            actions.push(Action::LeaseExpires);
        }
        if source_reacts_to(state) {
            actions.push(Action::SourceApplyDecision);
        }
        if decision != Decision::Undecided && state.target.mode == TargetMode::Incoming {
            actions.push(Action::TargetApplyDecision);
        }
        if state.source.mode == SourceMode::Ghost {
            actions.push(Action::CleanupGhost);
        }
    }

    /// Guard (a): past the deadline the source asks for an abort; it stays
    /// fenced until the abort commits.
    fn deadline_passes(&self, state: &mut State) {
        if let SourceMode::Fenced {
            deadline_passed, ..
        } = &mut state.source.mode
        {
            *deadline_passed = true;
        }
        if state.metadata.decision == Decision::Undecided {
            state.network.insert(Message::AbortRequest);
        }
        if !self.config.guards.unfence_after_abort {
            state.source.mode = SourceMode::Owned;
            state.source.fence_entries += 1;
        }
    }

    fn source_on_fence(&self, state: &mut State, id: FenceId) -> Reply {
        let checked = self.config.fixes.fence_ids_checked;
        let source = &mut state.source;
        let stale = checked && id <= source.lifted_up_to;
        match source.mode {
            _ if source.closed || stale => Reply::FenceRefused { id },
            SourceMode::Ghost | SourceMode::Deleted => Reply::FenceRefused { id },
            SourceMode::Owned => {
                let fence_index = source.log.len() as u8;
                source.mode = SourceMode::Fenced {
                    id,
                    fence_index,
                    deadline_passed: false,
                };
                source.fence_entries += 1;
                Reply::FenceOk { id, fence_index }
            }
            SourceMode::Fenced {
                id: current,
                fence_index,
                ..
            } => {
                if checked && id < current {
                    Reply::FenceRefused { id }
                } else {
                    if checked && id > current {
                        // A newer driver or attempt takes the fence over,
                        // with a fresh deadline.
                        source.mode = SourceMode::Fenced {
                            id,
                            fence_index,
                            deadline_passed: false,
                        };
                        source.fence_entries += 1;
                    }
                    Reply::FenceOk { id, fence_index }
                }
            }
        }
    }

    fn source_on_unfence(&self, state: &mut State, up_to: FenceId) -> Reply {
        let checked = self.config.fixes.fence_ids_checked;
        let source = &mut state.source;
        let mut changed = false;
        if checked && up_to > source.lifted_up_to {
            source.lifted_up_to = up_to;
            changed = true;
        }
        if let SourceMode::Fenced { id, .. } = source.mode {
            if !checked || id <= up_to {
                source.mode = SourceMode::Owned;
                changed = true;
            }
        }
        if changed {
            source.fence_entries += 1;
        }
        Reply::UnfenceOk { up_to }
    }

    /// Guard (d): a command with a stale driver epoch is refused. Otherwise
    /// the first of `Transfer` and abort to commit wins; the other is told.
    fn metadata_on_command(&self, state: &mut State, command: MetaCommand, epoch: u8) -> Reply {
        let metadata = &mut state.metadata;
        let answer = if self.config.guards.stale_epoch_refused && epoch < metadata.driver_epoch {
            MetaAnswer::StaleEpoch
        } else {
            metadata.driver_epoch = metadata.driver_epoch.max(epoch);
            if metadata.decision == Decision::Undecided {
                match command {
                    MetaCommand::Transfer => metadata.decision = Decision::Transferred,
                    MetaCommand::Abort => metadata.decision = Decision::Aborted,
                    MetaCommand::Resume => {}
                }
            }
            match metadata.decision {
                Decision::Undecided => MetaAnswer::Undecided,
                Decision::Transferred => MetaAnswer::Transferred,
                Decision::Aborted => MetaAnswer::Aborted,
            }
        };
        Reply::Command {
            command,
            epoch,
            answer,
        }
    }

    /// A client operation reaches a data group; the owner check happens
    /// when it is applied. Guard (c): a fenced source refuses reads too.
    fn group_on_request(&self, state: &mut State, client: u8, op: u8, to: Group) -> Reply {
        let operation = self.config.programs[client as usize][op as usize];
        let answer = match (to, state.source.mode, state.target.mode) {
            (Group::Source, SourceMode::Owned, _) => {
                let mut data = state.source.data();
                if let ClientOp::Write(value) = operation {
                    // Appended to the change table once: a retry is a no-op.
                    if data.applied_writes & bit(value) == 0 {
                        state.source.log.push(value);
                    }
                }
                execute(&mut data, operation)
            }
            (Group::Source, SourceMode::Fenced { .. }, _) => match operation {
                ClientOp::Read if !self.config.guards.fenced_refuses_reads => {
                    ClientAnswer::ReadOk(state.source.data().value)
                }
                _ => ClientAnswer::Retry,
            },
            (Group::Source, SourceMode::Ghost, _) => ClientAnswer::Redirect {
                epoch: EPOCH_AFTER_TRANSFER,
            },
            (Group::Source, SourceMode::Deleted, _) => ClientAnswer::NotOwner,
            (Group::Target, _, TargetMode::Active) => execute(&mut state.target.data, operation),
            (Group::Target, _, TargetMode::Incoming | TargetMode::Dropped) => ClientAnswer::Retry,
        };
        Reply::Client { client, op, answer }
    }
}

fn execute(data: &mut Data, operation: ClientOp) -> ClientAnswer {
    match operation {
        ClientOp::Write(value) => {
            data.apply(value);
            ClientAnswer::WriteOk
        }
        ClientOp::Read => ClientAnswer::ReadOk(data.value),
    }
}

fn source_reacts_to(state: &State) -> bool {
    let source = &state.source;
    match state.metadata.decision {
        Decision::Undecided => false,
        Decision::Transferred => {
            matches!(source.mode, SourceMode::Owned | SourceMode::Fenced { .. })
        }
        Decision::Aborted => match source.mode {
            SourceMode::Fenced { .. } => true,
            SourceMode::Owned => !source.closed,
            SourceMode::Ghost | SourceMode::Deleted => false,
        },
    }
}

/// Transfer committed: become a ghost. Abort committed: unfence (the only
/// way a fence ends without the driver, guard (a)) and refuse later fences.
fn source_apply_decision(state: &mut State) {
    let source = &mut state.source;
    match state.metadata.decision {
        Decision::Transferred => source.mode = SourceMode::Ghost,
        Decision::Aborted => {
            source.mode = SourceMode::Owned;
            source.closed = true;
            source.fence_entries += 1;
        }
        Decision::Undecided => unreachable!("enabled only once decided"),
    }
}

/// Guard (b): the target activates only on a committed `Transfer`; on an
/// abort it drops its incoming copy (the pending cleanup Lock recorded).
fn target_apply_decision(state: &mut State) {
    let target = &mut state.target;
    match state.metadata.decision {
        Decision::Transferred => target.mode = TargetMode::Active,
        Decision::Aborted => {
            target.mode = TargetMode::Dropped;
            target.applied = 0;
            target.data = Data::default();
        }
        Decision::Undecided => unreachable!("enabled only once decided"),
    }
}

// ---------------------------------------------------------------- clients

/// The linearizability history names one "thread" per operation, so an
/// operation a client gave up on can stay in flight forever.
fn thread_id(client: u8, op: u8) -> u8 {
    client * 8 + op
}

impl ProtocolModel {
    fn client_actions(&self, state: &State, actions: &mut Vec<Action>) {
        for (index, client) in state.clients.iter().enumerate() {
            let program_len = self.config.programs[index].len() as u8;
            if client.waiting.is_some() || client.next_op >= program_len {
                continue;
            }
            let client_id = index as u8;
            actions.push(Action::Invoke {
                client: client_id,
                refresh_route: false,
            });
            if state.metadata.route_epoch() > client.route_epoch {
                actions.push(Action::Invoke {
                    client: client_id,
                    refresh_route: true,
                });
            }
        }
    }

    fn invoke(&self, state: &mut State, client: u8, refresh_route: bool) {
        let route_epoch = state.metadata.route_epoch();
        let c = &mut state.clients[client as usize];
        if refresh_route {
            c.route_epoch = c.route_epoch.max(route_epoch);
        }
        let op = c.next_op;
        c.waiting = Some(1);
        let to = c.route();
        let operation = match self.config.programs[client as usize][op as usize] {
            ClientOp::Write(value) => RegisterOp::Write(value),
            ClientOp::Read => RegisterOp::Read,
        };
        // Cannot fail: each thread id invokes exactly one operation.
        state
            .history
            .on_invoke(thread_id(client, op), operation)
            .expect("one operation per thread id");
        state.network.insert(Message::Request { client, op, to });
    }

    fn client_on_reply(&self, state: &mut State, client: u8, op: u8, answer: ClientAnswer) {
        let c = state.clients[client as usize];
        if c.waiting.is_none() || c.next_op != op {
            return; // An answer for an operation the client is done with.
        }
        let operation = self.config.programs[client as usize][op as usize];
        let ret = match answer {
            ClientAnswer::WriteOk => RegisterRet::WriteOk,
            ClientAnswer::ReadOk(value) => RegisterRet::ReadOk(value),
            ClientAnswer::Retry => return self.client_retry(state, client),
            ClientAnswer::Redirect { epoch } => {
                adopt_route(&mut state.clients[client as usize], epoch);
                return self.client_retry(state, client);
            }
            ClientAnswer::NotOwner => {
                let epoch = state.metadata.route_epoch();
                adopt_route(&mut state.clients[client as usize], epoch);
                return self.client_retry(state, client);
            }
        };
        // Cannot fail: the operation of this thread id is in flight.
        state
            .history
            .on_return(thread_id(client, op), ret)
            .expect("the operation is in flight");
        if let ClientOp::Write(value) = operation {
            state.acknowledged |= bit(value);
        }
        finish_op(&mut state.clients[client as usize]);
    }

    /// Sends the operation again (to the cached route) or gives up on it.
    fn client_retry(&self, state: &mut State, client: u8) {
        let c = &mut state.clients[client as usize];
        let attempts = c.waiting.expect("retry only while waiting");
        if attempts >= self.config.client_attempts {
            finish_op(c); // Gave up: the operation stays in flight in `history`.
            return;
        }
        c.waiting = Some(attempts + 1);
        let message = Message::Request {
            client,
            op: c.next_op,
            to: c.route(),
        };
        state.network.insert(message);
    }
}

/// A client refreshes its routing table only to a newer epoch.
fn adopt_route(client: &mut Client, epoch: u8) {
    if epoch > client.route_epoch {
        client.route_epoch = epoch;
    }
}

fn finish_op(client: &mut Client) {
    client.waiting = None;
    client.next_op += 1;
}
