//! Workflow administration: list the workflows of every node, show one,
//! watch it until it settles, cancel it, resume it.
//!
//! A workflow id names the node that drives it; `show`, `cancel` and
//! `resume` go to any node (the request loop's candidates, with its retries
//! and deadline), and that node forwards them to the driving one. `list`
//! asks every node of the routing table in parallel, each within
//! [`ClientConfig::status_timeout`](super::ClientConfig); a node that does
//! not answer is reported beside the list, never fatal unless none answers.

use std::time::Duration;

use shardflow_workflow::{WorkflowId, WorkflowState};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::rpc::{AdminRequest, AdminResponse, WorkflowEvent, WorkflowPage, WorkflowSummary};

use super::admin::{expect_done, AdminPlan, Targets};
use super::error::ClientError;
use super::retry::{Backoff, Budget};
use super::routing::Peer;
use super::Client;

/// The shortest pause between two polls of a watched workflow.
const WATCH_POLL_MIN: Duration = Duration::from_millis(50);
/// The longest pause between two polls of a watched workflow.
const WATCH_POLL_MAX: Duration = Duration::from_secs(1);

/// The workflows of the cluster, as [`Client::workflow_list`] gathers them.
#[derive(Debug)]
pub struct WorkflowListing {
    /// Every workflow the answering nodes reported, ordered by id.
    pub workflows: Vec<WorkflowSummary>,
    /// The nodes that did not answer, and why.
    pub unreachable: Vec<NodeFailure>,
}

/// A node that did not answer.
#[derive(Debug)]
pub struct NodeFailure {
    /// Its id, when the routing table names it.
    pub node: Option<u64>,
    /// The address asked.
    pub addr: String,
    pub error: ClientError,
}

/// One workflow, as [`Client::workflow_show`] returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowDetail {
    /// The fold of `events`.
    pub state: WorkflowState,
    /// Every event, in seq order.
    pub events: Vec<WorkflowEvent>,
}

fn expect_list(response: AdminResponse) -> Result<Vec<WorkflowSummary>, Box<AdminResponse>> {
    match response {
        AdminResponse::Workflows { workflows, .. } => Ok(workflows),
        other => Err(Box::new(other)),
    }
}

fn expect_page(response: AdminResponse) -> Result<WorkflowPage, Box<AdminResponse>> {
    match response {
        AdminResponse::Workflow(page) => Ok(*page),
        other => Err(Box::new(other)),
    }
}

impl Client {
    /// The workflows of every node of the routing table (with the ended
    /// ones if `include_ended`). Nodes that do not answer are listed in
    /// `unreachable`; fails only if no node answers.
    pub async fn workflow_list(&self, include_ended: bool) -> Result<WorkflowListing, ClientError> {
        self.ensure_routing().await?;
        let peers = self.routing_nodes();
        let timeout = self.inner.config.status_timeout;
        let mut tasks = JoinSet::new();
        for peer in peers {
            let client = self.clone();
            tasks.spawn(async move {
                let answer = client.list_on(&peer, include_ended, timeout).await;
                (peer, answer)
            });
        }
        let mut listing = WorkflowListing {
            workflows: Vec::new(),
            unreachable: Vec::new(),
        };
        let mut answered = 0;
        while let Some(joined) = tasks.join_next().await {
            let (peer, answer) = match joined {
                Ok(done) => done,
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => return Err(ClientError::Cancelled),
            };
            match answer {
                Ok(workflows) => {
                    answered += 1;
                    listing.workflows.extend(workflows);
                }
                Err(error) => listing.unreachable.push(NodeFailure {
                    node: peer.node,
                    addr: peer.addr,
                    error,
                }),
            }
        }
        settle_listing(listing, answered)
    }

    /// One workflow: its state and every event. Sent to any node; the node
    /// forwards it to the one driving the workflow.
    pub async fn workflow_show(&self, id: WorkflowId) -> Result<WorkflowDetail, ClientError> {
        let mut events: Vec<WorkflowEvent> = Vec::new();
        loop {
            let page = self
                .workflow_page(id, events.len() as u64, self.budget())
                .await?;
            let more = !page.events.is_empty();
            events.extend(page.events);
            if !more || events.len() as u64 >= page.state.next_seq {
                return Ok(WorkflowDetail {
                    state: page.state,
                    events,
                });
            }
        }
    }

    /// Journals a request to cancel `id`, made by `by`: honoured at the
    /// next step boundary (or inside a long step) before the point of no
    /// return, ignored after it. Refused if the workflow already ended.
    pub async fn workflow_cancel(&self, id: WorkflowId, by: &str) -> Result<(), ClientError> {
        let request = AdminRequest::WorkflowCancel {
            id,
            by: by.to_string(),
        };
        self.workflow_change(request).await
    }

    /// Drives a `Paused` workflow again, with fresh retry budgets (the
    /// operator's decision, journaled with `by`). Refused unless paused.
    pub async fn workflow_resume(&self, id: WorkflowId, by: &str) -> Result<(), ClientError> {
        let request = AdminRequest::WorkflowResume {
            id,
            by: by.to_string(),
        };
        self.workflow_change(request).await
    }

    /// Polls `id` (with backoff, 50 ms growing to 1 s between polls)
    /// and calls `on_event` once with each event, in order, until the
    /// workflow is completed, aborted or paused: returns its state then.
    /// Gives up after `timeout` ([`ClientError::WatchTimeout`]); an
    /// unavailable cluster is polled again until then.
    pub async fn workflow_watch<F>(
        &self,
        id: WorkflowId,
        timeout: Duration,
        mut on_event: F,
    ) -> Result<WorkflowState, ClientError>
    where
        F: FnMut(&WorkflowEvent) + Send,
    {
        self.workflow_follow(id, timeout, |page| {
            page.events.iter().for_each(&mut on_event)
        })
        .await
    }

    /// Like [`Client::workflow_watch`], calling `on_page` with every page
    /// polled: the state at that poll and the events new since the last
    /// one (possibly none). For progress displays that read the state.
    pub async fn workflow_follow<F>(
        &self,
        id: WorkflowId,
        timeout: Duration,
        mut on_page: F,
    ) -> Result<WorkflowState, ClientError>
    where
        F: FnMut(&WorkflowPage) + Send,
    {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut next_seq = 0u64;
        let mut phase = "unknown";
        let mut backoff = Backoff::new(WATCH_POLL_MIN, WATCH_POLL_MAX);
        loop {
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            let budget = Budget::new(now, left.min(self.inner.config.request_timeout));
            match self.workflow_page(id, next_seq, budget).await {
                Ok(page) => {
                    if !page.events.is_empty() {
                        backoff = Backoff::new(WATCH_POLL_MIN, WATCH_POLL_MAX);
                    }
                    on_page(&page);
                    if let Some(last) = page.events.last() {
                        next_seq = last.seq + 1;
                    }
                    let state = page.state;
                    phase = state.phase.label();
                    let caught_up = next_seq >= state.next_seq;
                    if caught_up && state.phase.is_settled() {
                        return Ok(state);
                    }
                    if !caught_up {
                        continue;
                    }
                }
                Err(ClientError::Unavailable { .. }) if Instant::now() < deadline => {}
                Err(error) => return Err(error),
            }
            let delay = backoff.next_delay();
            if Instant::now() + delay >= deadline {
                return Err(ClientError::WatchTimeout {
                    id: id.to_string(),
                    phase: phase.to_string(),
                    after: started.elapsed(),
                });
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// The nodes of the cached routing table, or the seeds without one.
    fn routing_nodes(&self) -> Vec<Peer> {
        let cache = self.cache();
        let named: Vec<Peer> = cache
            .table()
            .map(|table| {
                table
                    .nodes
                    .iter()
                    .map(|(&node, addr)| Peer::new(Some(node), addr.clone()))
                    .collect()
            })
            .unwrap_or_default();
        match named.is_empty() {
            true => cache.all_nodes(),
            false => named,
        }
    }

    /// The workflows of the node at `peer`.
    async fn list_on(
        &self,
        peer: &Peer,
        include_ended: bool,
        timeout: Duration,
    ) -> Result<Vec<WorkflowSummary>, ClientError> {
        let request = AdminRequest::WorkflowList { include_ended };
        let mut plan = AdminPlan::new(request, Targets::One(peer.clone()), expect_list);
        self.drive(&mut plan, Budget::new(Instant::now(), timeout))
            .await
    }

    /// One page of `id`: its state and events from `from_seq`.
    async fn workflow_page(
        &self,
        id: WorkflowId,
        from_seq: u64,
        budget: Budget,
    ) -> Result<WorkflowPage, ClientError> {
        let request = AdminRequest::WorkflowShow { id, from_seq };
        let mut plan = AdminPlan::new(request, Targets::Any(Vec::new()), expect_page);
        let page = self.drive(&mut plan, budget).await?;
        check_page(id, from_seq, page)
    }

    async fn workflow_change(&self, request: AdminRequest) -> Result<(), ClientError> {
        let mut plan = AdminPlan::new(request, Targets::Any(Vec::new()), expect_done);
        self.drive(&mut plan, self.budget()).await
    }
}

/// Refuses a page that is not about `id` or does not start at `from_seq`.
fn check_page(
    id: WorkflowId,
    from_seq: u64,
    page: WorkflowPage,
) -> Result<WorkflowPage, ClientError> {
    let consecutive = page
        .events
        .iter()
        .enumerate()
        .all(|(i, event)| event.seq == from_seq + i as u64);
    if page.state.id != id || !consecutive {
        return Err(ClientError::Protocol {
            peer: format!("the node driving {id}"),
            reason: format!("asked for {id} from seq {from_seq}, got another run of events"),
        });
    }
    Ok(page)
}

/// Orders and dedups the listing of `answered` nodes; an error if none
/// answered (a refused certificate first: asking again will not help).
fn settle_listing(
    mut listing: WorkflowListing,
    answered: usize,
) -> Result<WorkflowListing, ClientError> {
    if answered == 0 && !listing.unreachable.is_empty() {
        let index = listing
            .unreachable
            .iter()
            .position(|failure| matches!(failure.error, ClientError::PermissionDenied(_)))
            .unwrap_or(0);
        return Err(listing.unreachable.swap_remove(index).error);
    }
    listing.workflows.sort_by_key(|summary| summary.instance.id);
    listing
        .workflows
        .dedup_by_key(|summary| summary.instance.id);
    listing
        .unreachable
        .sort_by(|a, b| (a.node, &a.addr).cmp(&(b.node, &b.addr)));
    Ok(listing)
}
