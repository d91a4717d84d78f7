//! Cluster administration: bootstrap, add and remove nodes, each node's
//! status, and waiting until a bootstrapped cluster is ready.
//!
//! Admin requests go to any node (the node forwards a metadata change to the
//! metadata group's leader); they need the admin certificate. Status is asked
//! of every node the client knows, in parallel; a node that does not answer
//! is reported as unreachable, never fatal.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::command::METADATA_GROUP;
use crate::rpc::{
    AdminRequest, AdminResponse, NodeRequestV1, NodeResponseV1, NodeStatus, RoutingTable,
};

use super::error::ClientError;
use super::outcome::{classify_admin, Outcome};
use super::ready::readiness;
use super::request::{check_addr, Plan, Prepared};
use super::retry::{Backoff, Budget};
use super::routing::{dedup_by_addr, Peer, RouteCache};
use super::Client;

/// Rounds of status queries: the seeds, then the nodes their views name,
/// then any named by those.
const STATUS_ROUNDS: usize = 3;

/// One node's answer to a status query.
#[derive(Debug)]
pub struct NodeReport {
    /// The node's id, when known (from its answer or the routing table).
    pub node: Option<u64>,
    /// The address asked.
    pub addr: String,
    /// Its view, or why it could not be had (unreachable...).
    pub status: Result<NodeStatus, ClientError>,
}

/// Who an admin request goes to.
pub(super) enum Targets {
    /// Any node: the given ones first, then every node the client knows.
    Any(Vec<Peer>),
    /// This node only.
    One(Peer),
}

/// An admin request and the answer it expects.
pub(super) struct AdminPlan<F> {
    request: AdminRequest,
    targets: Targets,
    expect: F,
    /// An attempt ended without an answer after it may have been delivered.
    ambiguous: bool,
}

impl<F> AdminPlan<F> {
    pub(super) fn new(request: AdminRequest, targets: Targets, expect: F) -> Self {
        AdminPlan {
            request,
            targets,
            expect,
            ambiguous: false,
        }
    }
}

impl<T, F> Plan for AdminPlan<F>
where
    T: Send,
    F: Fn(AdminResponse) -> Result<T, Box<AdminResponse>> + Send,
{
    type Answer = T;

    fn prepare(&self, cache: &RouteCache) -> Result<Prepared, ClientError> {
        let candidates = match &self.targets {
            Targets::One(peer) => vec![peer.clone()],
            Targets::Any(first) => {
                let mut peers = first.clone();
                peers.extend(cache.all_nodes());
                cache.suspects_last(dedup_by_addr(peers), Instant::now())
            }
        };
        Ok(Prepared {
            group: None,
            request: NodeRequestV1::Admin(self.request.clone()),
            candidates,
            generation: cache.generation(),
        })
    }

    fn classify(&self, peer: &Peer, response: NodeResponseV1) -> Outcome<T> {
        classify_admin(peer, response, &self.expect)
    }

    fn unanswered(&mut self) {
        self.ambiguous = true;
    }

    fn patient(&self) -> bool {
        // Reads answer at once; changes may wait for a commit or a journal append.
        !matches!(
            self.request,
            AdminRequest::Status
                | AdminRequest::WorkflowList { .. }
                | AdminRequest::WorkflowShow { .. }
        )
    }
}

pub(super) fn expect_done(response: AdminResponse) -> Result<(), Box<AdminResponse>> {
    match response {
        AdminResponse::Done => Ok(()),
        other => Err(Box::new(other)),
    }
}

fn expect_status(response: AdminResponse) -> Result<NodeStatus, Box<AdminResponse>> {
    match response {
        AdminResponse::Status(status) => Ok(status),
        other => Err(Box::new(other)),
    }
}

impl Client {
    /// Creates the cluster: the metadata group over `nodes` (`(id,
    /// HOST:PORT)`) and `groups` data groups of `replicas` members each.
    /// Returns once the metadata is committed; see [`Client::wait_ready`].
    /// Refused (`Rejected`) on a cluster already bootstrapped.
    pub async fn bootstrap(
        &self,
        nodes: Vec<(u64, String)>,
        groups: u64,
        replicas: u64,
    ) -> Result<(), ClientError> {
        check_bootstrap(&nodes, groups, replicas)?;
        let peers = nodes
            .iter()
            .map(|(id, addr)| Peer::new(Some(*id), addr.clone()))
            .collect();
        let request = AdminRequest::Bootstrap {
            nodes: nodes.clone(),
            groups,
            replicas,
        };
        let mut plan = AdminPlan::new(request, Targets::Any(peers), expect_done);
        match self.drive(&mut plan, self.budget()).await {
            Err(ClientError::Rejected { reason }) if plan.ambiguous => {
                // Our first attempt may have bootstrapped the cluster and
                // lost its answer: accept exactly our layout, nothing else.
                match self.routing().await {
                    Ok(table) if is_layout(&table, &nodes, groups, replicas) => Ok(()),
                    _ => Err(ClientError::Rejected { reason }),
                }
            }
            other => other,
        }
    }

    /// Registers node `id` at `addr` (a node started later). A repeat with
    /// the same address is a no-op.
    pub async fn add_node(&self, id: u64, addr: &str) -> Result<(), ClientError> {
        check_addr(addr)?;
        let request = AdminRequest::AddNode {
            id,
            addr: addr.to_string(),
        };
        self.admin_any(request).await
    }

    /// Forgets node `id`; refused while it is a member of any group.
    pub async fn remove_node(&self, id: u64) -> Result<(), ClientError> {
        self.admin_any(AdminRequest::RemoveNode { id }).await
    }

    /// The view of the node at `addr`, within `timeout`.
    pub async fn status(&self, addr: &str, timeout: Duration) -> Result<NodeStatus, ClientError> {
        check_addr(addr)?;
        let peer = self.cache_peer(addr);
        let mut plan = AdminPlan::new(AdminRequest::Status, Targets::One(peer), expect_status);
        self.drive(&mut plan, Budget::new(Instant::now(), timeout))
            .await
    }

    /// Every node's view: the seeds and every node their views name, asked
    /// in parallel, each within [`ClientConfig::status_timeout`](super::ClientConfig).
    /// Sorted by node id; a node that does not answer is reported with its
    /// error.
    pub async fn status_all(&self) -> Vec<NodeReport> {
        self.status_all_within(self.inner.config.status_timeout)
            .await
    }

    /// Waits until every group has a leader and every vShard is owned by
    /// its group (polling [`Client::status_all`]), for at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClientError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let config = &self.inner.config;
        let mut backoff = Backoff::new(config.backoff_initial * 2, config.backoff_max / 2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reports = self
                .status_all_within(left.min(config.status_timeout))
                .await;
            let waiting = match readiness(&reports) {
                Ok(()) => return Ok(()),
                Err(waiting) => waiting,
            };
            let delay = backoff.next_delay();
            if Instant::now() + delay >= deadline {
                return Err(ClientError::NotReady {
                    after: started.elapsed(),
                    waiting,
                });
            }
            tokio::time::sleep(delay).await;
        }
    }

    async fn admin_any(&self, request: AdminRequest) -> Result<(), ClientError> {
        let mut plan = AdminPlan::new(request, Targets::Any(Vec::new()), expect_done);
        self.drive(&mut plan, self.budget()).await
    }

    async fn status_all_within(&self, timeout: Duration) -> Vec<NodeReport> {
        let mut reports: Vec<NodeReport> = Vec::new();
        let mut asked: BTreeSet<String> = BTreeSet::new();
        let mut to_ask = self.cache().all_nodes();
        for _ in 0..STATUS_ROUNDS {
            to_ask.retain(|peer| asked.insert(peer.addr.clone()));
            if to_ask.is_empty() {
                break;
            }
            let answered = self.ask_status(std::mem::take(&mut to_ask), timeout).await;
            to_ask = named_nodes(&answered);
            reports.extend(answered);
        }
        reports.sort_by(|a, b| (a.node, &a.addr).cmp(&(b.node, &b.addr)));
        reports
    }

    async fn ask_status(&self, peers: Vec<Peer>, timeout: Duration) -> Vec<NodeReport> {
        let mut tasks = JoinSet::new();
        for peer in peers {
            let client = self.clone();
            tasks.spawn(async move {
                let status = client.status(&peer.addr, timeout).await;
                let node = status.as_ref().map(|s| s.node).ok().or(peer.node);
                NodeReport {
                    node,
                    addr: peer.addr,
                    status,
                }
            });
        }
        let mut reports = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(report) => reports.push(report),
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => {}
            }
        }
        reports
    }

    fn cache_peer(&self, addr: &str) -> Peer {
        self.cache()
            .all_nodes()
            .into_iter()
            .find(|peer| peer.addr == addr)
            .unwrap_or_else(|| Peer::new(None, addr))
    }
}

/// Nodes named in the answered views' routing tables.
fn named_nodes(reports: &[NodeReport]) -> Vec<Peer> {
    reports
        .iter()
        .filter_map(|report| report.status.as_ref().ok())
        .flat_map(|status| status.routing.nodes.iter())
        .map(|(&node, addr)| Peer::new(Some(node), addr.clone()))
        .collect()
}

/// Refuses a bootstrap that cannot be right before sending it.
fn check_bootstrap(nodes: &[(u64, String)], groups: u64, replicas: u64) -> Result<(), ClientError> {
    let invalid = |reason: String| Err(ClientError::InvalidRequest(reason));
    if nodes.is_empty() {
        return invalid("a bootstrap needs at least one node".to_string());
    }
    for (id, addr) in nodes {
        check_addr(addr)?;
        if nodes.iter().filter(|(other, _)| other == id).count() > 1 {
            return invalid(format!("node {id} is listed twice"));
        }
        if nodes.iter().filter(|(_, other)| other == addr).count() > 1 {
            return invalid(format!("address {addr} is listed twice"));
        }
    }
    if groups == 0 || groups > u64::from(crate::vshard::VSHARDS) {
        return invalid(format!("--groups must be in 1..=1024, not {groups}"));
    }
    if replicas == 0 || replicas > nodes.len() as u64 {
        return invalid(format!(
            "--replicas must be in 1..={} (the number of nodes), not {replicas}",
            nodes.len()
        ));
    }
    Ok(())
}

/// `table` is the layout a bootstrap of `nodes`, `groups`, `replicas` makes.
fn is_layout(table: &RoutingTable, nodes: &[(u64, String)], groups: u64, replicas: u64) -> bool {
    let same_nodes = table.nodes.len() == nodes.len()
        && nodes
            .iter()
            .all(|(id, addr)| table.nodes.get(id) == Some(addr));
    let data_groups: Vec<&Vec<u64>> = table
        .groups
        .iter()
        .filter(|(&group, _)| group != METADATA_GROUP)
        .map(|(_, members)| members)
        .collect();
    same_nodes
        && data_groups.len() as u64 == groups
        && data_groups.iter().all(|m| m.len() as u64 == replicas)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(count: u64) -> Vec<(u64, String)> {
        (1..=count)
            .map(|n| (n, format!("10.0.0.{n}:7000")))
            .collect()
    }

    #[test]
    fn bootstrap_arguments_are_checked() {
        assert!(check_bootstrap(&nodes(3), 3, 3).is_ok());
        assert!(check_bootstrap(&[], 1, 1).is_err());
        assert!(check_bootstrap(&nodes(3), 0, 1).is_err());
        assert!(check_bootstrap(&nodes(3), 2, 4).is_err());
        assert!(check_bootstrap(&nodes(3), 2, 0).is_err());
        let mut twice = nodes(2);
        twice.push((1, "10.0.0.9:7000".into()));
        assert!(check_bootstrap(&twice, 1, 1).is_err());
        let mut same_addr = nodes(2);
        same_addr.push((3, "10.0.0.1:7000".into()));
        assert!(check_bootstrap(&same_addr, 1, 1).is_err());
        assert!(check_bootstrap(&[(1, "nohost".into())], 1, 1).is_err());
    }

    #[test]
    fn layout_is_recognized_exactly() {
        let table = super::super::routing::tests::table(1);
        assert!(is_layout(&table, &nodes(3), 2, 2));
        assert!(!is_layout(&table, &nodes(3), 3, 2));
        assert!(!is_layout(&table, &nodes(3), 2, 3));
        assert!(!is_layout(&table, &nodes(2), 2, 2));
    }
}
