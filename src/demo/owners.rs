//! The demo's ownership check: every node agrees on the routing table, and
//! every replica of every data group holds as `Owned` exactly the vShards
//! the table gives its group, so each vShard has one owner.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use shardflow_node::client::{Client, NodeReport};
use shardflow_node::command::METADATA_GROUP;
use shardflow_node::rpc::{NodeStatus, RoutingTable};
use shardflow_node::vshard::VSHARDS;
use tokio::time::Instant;

/// What the ownership check found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OwnerCheck {
    /// Nodes of the routing table, and how many answered.
    pub nodes: usize,
    pub nodes_answered: usize,
    /// Every answering node reported the same routing table.
    pub routing_agreed: bool,
    /// Routes in the table.
    pub vshards: usize,
    /// Per data group: the vShards the table gives it.
    pub vshards_per_group: BTreeMap<u64, usize>,
    /// vShards with exactly one owning group, by every replica's count.
    pub vshards_with_one_owner: usize,
    /// What disagreed, if anything.
    pub problems: Vec<String>,
}

impl OwnerCheck {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Asks every node until the check passes or `timeout` has passed (nodes
/// converge on the metadata and reconcile their replicas on their own
/// schedule); returns the last check.
pub async fn check_until(client: &Client, timeout: Duration) -> OwnerCheck {
    let deadline = Instant::now() + timeout;
    loop {
        let check = check(&client.status_all().await);
        if check.ok() || Instant::now() >= deadline {
            return check;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks one round of reports.
pub fn check(reports: &[NodeReport]) -> OwnerCheck {
    let mut problems = Vec::new();
    let statuses: Vec<&NodeStatus> = reports
        .iter()
        .filter_map(|report| report.status.as_ref().ok())
        .collect();
    for report in reports {
        if let Err(error) = &report.status {
            problems.push(format!("node at {} did not answer: {error}", report.addr));
        }
    }
    let Some(table) = statuses.first().map(|status| &status.routing) else {
        problems.push("no node answered".to_string());
        return OwnerCheck {
            problems,
            ..OwnerCheck::default()
        };
    };
    let routing_agreed = statuses.iter().all(|status| status.routing == *table);
    if !routing_agreed {
        problems.push("the nodes' routing tables differ".to_string());
    }
    for id in table.nodes.keys() {
        if !statuses.iter().any(|status| status.node == *id) {
            problems.push(format!("node {id} gave no status"));
        }
    }
    if table.routes.len() != usize::from(VSHARDS) {
        problems.push(format!(
            "the routing table has {} routes, not {VSHARDS}",
            table.routes.len()
        ));
    }
    let per_group = vshards_per_group(table);
    let mut wrong_groups = 0usize;
    for (&group, members) in table.groups.iter().filter(|(g, _)| **g != METADATA_GROUP) {
        let expected = per_group.get(&group).copied().unwrap_or(0);
        let mut wrong = false;
        for status in &statuses {
            let replica = status.groups.iter().find(|g| g.group == group);
            let member = members.contains(&status.node);
            match replica {
                Some(_) if !member => {
                    wrong = true;
                    problems.push(format!(
                        "node {} still runs a replica of group {group}, no longer a member",
                        status.node
                    ));
                }
                Some(local) if local.owned_vshards as usize != expected => {
                    wrong = true;
                    problems.push(format!(
                        "node {}'s replica of group {group} owns {} vShards, the table gives it {expected}",
                        status.node, local.owned_vshards
                    ));
                }
                None if member => {
                    wrong = true;
                    problems.push(format!(
                        "node {} is a member of group {group} without a replica",
                        status.node
                    ));
                }
                _ => {}
            }
        }
        if wrong {
            wrong_groups += expected;
        }
    }
    let vshards = table.routes.len();
    OwnerCheck {
        nodes: table.nodes.len(),
        nodes_answered: statuses.len(),
        routing_agreed,
        vshards,
        vshards_with_one_owner: vshards.saturating_sub(wrong_groups),
        vshards_per_group: per_group,
        problems,
    }
}

fn vshards_per_group(table: &RoutingTable) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for route in &table.routes {
        *counts.entry(route.group).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardflow_node::metadata::Route;
    use shardflow_node::rpc::LocalGroupStatus;

    fn table() -> RoutingTable {
        RoutingTable {
            nodes: (1..=2).map(|n| (n, format!("127.0.0.1:700{n}"))).collect(),
            groups: [(0, vec![1, 2]), (1, vec![1, 2]), (2, vec![1, 2])]
                .into_iter()
                .collect(),
            routes: (0..VSHARDS)
                .map(|v| Route {
                    group: if v < 500 { 1 } else { 2 },
                    epoch: 1,
                })
                .collect(),
        }
    }

    fn local(group: u64, owned: u32) -> LocalGroupStatus {
        LocalGroupStatus {
            group,
            leader: Some(1),
            term: 1,
            last_applied: Some(1),
            voters: vec![1, 2],
            learners: Vec::new(),
            owned_vshards: owned,
        }
    }

    fn report(node: u64, groups: Vec<LocalGroupStatus>, routing: RoutingTable) -> NodeReport {
        NodeReport {
            node: Some(node),
            addr: format!("127.0.0.1:700{node}"),
            status: Ok(NodeStatus {
                node,
                addr: format!("127.0.0.1:700{node}"),
                routing,
                groups,
            }),
        }
    }

    #[test]
    fn agreeing_nodes_with_matching_owners_pass() {
        let groups = || vec![local(0, 0), local(1, 500), local(2, 524)];
        let check = check(&[report(1, groups(), table()), report(2, groups(), table())]);
        assert!(check.ok(), "{:?}", check.problems);
        assert_eq!(check.vshards_with_one_owner, 1024);
        assert_eq!(check.vshards_per_group.get(&2), Some(&524));
    }

    #[test]
    fn a_second_owner_or_a_different_table_is_found() {
        let mut newer = table();
        newer.routes[0] = Route { group: 2, epoch: 2 };
        let check = check(&[
            report(1, vec![local(1, 500), local(2, 524)], table()),
            report(2, vec![local(1, 500), local(2, 525)], newer),
        ]);
        assert!(!check.routing_agreed);
        assert!(check.problems.iter().any(|p| p.contains("owns 525")));
        assert!(check.vshards_with_one_owner < 1024);
    }
}
