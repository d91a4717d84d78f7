//! The cluster as `shardflow cluster status` shows it: every node's view
//! merged into one table of nodes and one of groups. Pure: built from the
//! nodes' reports, tested without a cluster.
//!
//! Merge rules: the routing table is the most advanced one any node reports
//! (most routes, then highest epochs); a group's leader and term come from
//! the member view with the highest term; its voters, learners and owned
//! vShards from the leader's own view when it answered.

use std::collections::BTreeMap;

use serde::Serialize;
use shardflow::node::client::{newest_routing, NodeReport};
use shardflow::node::command::METADATA_GROUP;
use shardflow::node::rpc::{LocalGroupStatus, NodeStatus, RoutingTable};

use super::table::{list, opt, Table};

/// The merged view.
#[derive(Debug, Serialize)]
pub struct ClusterView {
    pub bootstrapped: bool,
    pub nodes: Vec<NodeRow>,
    pub groups: Vec<GroupRow>,
}

/// One node.
#[derive(Debug, Serialize)]
pub struct NodeRow {
    pub id: Option<u64>,
    pub addr: String,
    pub reachable: bool,
    pub error: Option<String>,
    /// Groups it is a member of (per the routing table).
    pub groups: Vec<u64>,
    /// Groups it leads (per its own view).
    pub leads: Vec<u64>,
}

/// One group.
#[derive(Debug, Serialize)]
pub struct GroupRow {
    pub group: u64,
    pub leader: Option<u64>,
    pub term: u64,
    /// Members per the metadata.
    pub members: Vec<u64>,
    /// Raft voters and learners per the best view.
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// vShards the routing table gives it.
    pub vshards: usize,
    /// vShards its best view holds as owned.
    pub owned: Option<u32>,
    pub epoch_min: Option<u64>,
    pub epoch_max: Option<u64>,
}

impl ClusterView {
    pub fn build(reports: &[NodeReport]) -> Self {
        let statuses: Vec<&NodeStatus> = reports
            .iter()
            .filter_map(|report| report.status.as_ref().ok())
            .collect();
        let empty = RoutingTable::default();
        let routing = newest_routing(&statuses).unwrap_or(&empty);
        ClusterView {
            bootstrapped: !routing.routes.is_empty(),
            nodes: node_rows(reports, routing),
            groups: group_rows(&statuses, routing),
        }
    }

    /// Two aligned tables, or a note when nothing is bootstrapped.
    pub fn render(&self) -> String {
        let mut nodes = Table::new(&["NODE", "ADDR", "STATE", "GROUPS", "LEADS", "ERROR"]);
        for row in &self.nodes {
            nodes.row(vec![
                opt(row.id),
                row.addr.clone(),
                if row.reachable { "up" } else { "unreachable" }.to_string(),
                list(&row.groups),
                list(&row.leads),
                row.error.clone().unwrap_or_default(),
            ]);
        }
        if !self.bootstrapped {
            return format!("{}\n\nthe cluster is not bootstrapped", nodes.render());
        }
        let mut groups = Table::new(&[
            "GROUP", "LEADER", "TERM", "MEMBERS", "VOTERS", "LEARNERS", "VSHARDS", "OWNED",
            "EPOCHS",
        ]);
        for row in &self.groups {
            groups.row(vec![
                row.group.to_string(),
                opt(row.leader),
                row.term.to_string(),
                list(&row.members),
                list(&row.voters),
                list(&row.learners),
                vshards(row, row.vshards.to_string()),
                vshards(row, opt(row.owned)),
                epochs(row.epoch_min, row.epoch_max),
            ]);
        }
        format!("{}\n\n{}", nodes.render(), groups.render())
    }
}

/// The metadata group holds no vShards: `-` rather than `0`.
fn vshards(row: &GroupRow, text: String) -> String {
    if row.group == METADATA_GROUP {
        "-".to_string()
    } else {
        text
    }
}

fn epochs(min: Option<u64>, max: Option<u64>) -> String {
    match (min, max) {
        (Some(min), Some(max)) if min == max => min.to_string(),
        (Some(min), Some(max)) => format!("{min}..{max}"),
        _ => "-".to_string(),
    }
}

/// Every node the table names, plus any asked that it does not.
fn node_rows(reports: &[NodeReport], routing: &RoutingTable) -> Vec<NodeRow> {
    let mut rows: BTreeMap<(Option<u64>, String), NodeRow> = BTreeMap::new();
    for (&id, addr) in &routing.nodes {
        let report = reports
            .iter()
            .find(|r| r.node == Some(id) || r.addr == *addr);
        rows.insert(
            (Some(id), addr.clone()),
            node_row(Some(id), addr, report, routing),
        );
    }
    for report in reports {
        let known = rows
            .values()
            .any(|row| row.id.is_some() && row.id == report.node || row.addr == report.addr);
        if !known {
            let row = node_row(report.node, &report.addr, Some(report), routing);
            rows.insert((report.node, report.addr.clone()), row);
        }
    }
    rows.into_values().collect()
}

fn node_row(
    id: Option<u64>,
    addr: &str,
    report: Option<&NodeReport>,
    routing: &RoutingTable,
) -> NodeRow {
    let status = report.and_then(|r| r.status.as_ref().ok());
    let error = match report.map(|r| &r.status) {
        Some(Err(error)) => Some(error.to_string()),
        Some(Ok(_)) => None,
        None => Some("not asked".to_string()),
    };
    let groups = routing
        .groups
        .iter()
        .filter(|(_, members)| id.is_some_and(|id| members.contains(&id)))
        .map(|(&group, _)| group)
        .collect();
    let leads = status
        .map(|s| {
            s.groups
                .iter()
                .filter(|g| g.leader == Some(s.node))
                .map(|g| g.group)
                .collect()
        })
        .unwrap_or_default();
    NodeRow {
        id,
        addr: addr.to_string(),
        reachable: status.is_some(),
        error,
        groups,
        leads,
    }
}

fn group_rows(statuses: &[&NodeStatus], routing: &RoutingTable) -> Vec<GroupRow> {
    routing
        .groups
        .iter()
        .map(|(&group, members)| {
            let views: Vec<(u64, &LocalGroupStatus)> = statuses
                .iter()
                .flat_map(|s| s.groups.iter().map(move |g| (s.node, g)))
                .filter(|(_, g)| g.group == group)
                .collect();
            let best = views
                .iter()
                .max_by_key(|(_, g)| (g.term, g.leader.is_some()))
                .map(|(_, g)| *g);
            let leader = best.and_then(|g| g.leader);
            let leader_view = views
                .iter()
                .find(|(node, _)| Some(*node) == leader)
                .map(|(_, g)| *g)
                .or(best);
            let epochs: Vec<u64> = routing
                .routes
                .iter()
                .filter(|r| r.group == group)
                .map(|r| r.epoch)
                .collect();
            GroupRow {
                group,
                leader,
                term: best.map_or(0, |g| g.term),
                members: members.clone(),
                voters: leader_view.map(|g| g.voters.clone()).unwrap_or_default(),
                learners: leader_view.map(|g| g.learners.clone()).unwrap_or_default(),
                vshards: epochs.len(),
                owned: leader_view.map(|g| g.owned_vshards),
                epoch_min: epochs.iter().min().copied(),
                epoch_max: epochs.iter().max().copied(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardflow::node::client::ClientError;
    use shardflow::node::metadata::Route;

    fn table() -> RoutingTable {
        RoutingTable {
            nodes: (1..=3).map(|n| (n, format!("127.0.0.1:700{n}"))).collect(),
            groups: [(0, vec![1, 2, 3]), (1, vec![1, 2, 3])]
                .into_iter()
                .collect(),
            routes: (0..1024)
                .map(|v| Route {
                    group: 1,
                    epoch: if v == 0 { 2 } else { 1 },
                })
                .collect(),
        }
    }

    fn local(group: u64, leader: u64, term: u64) -> LocalGroupStatus {
        LocalGroupStatus {
            group,
            leader: Some(leader),
            term,
            last_applied: Some(5),
            voters: vec![1, 2, 3],
            learners: Vec::new(),
            owned_vshards: 1024,
        }
    }

    fn up(node: u64, groups: Vec<LocalGroupStatus>) -> NodeReport {
        NodeReport {
            node: Some(node),
            addr: format!("127.0.0.1:700{node}"),
            status: Ok(NodeStatus {
                node,
                addr: format!("127.0.0.1:700{node}"),
                routing: table(),
                groups,
            }),
        }
    }

    // Proves views merge: the leader from the highest term, a down node shown.
    #[test]
    fn views_merge_into_nodes_and_groups() {
        let reports = vec![
            up(1, vec![local(0, 1, 3), local(1, 1, 2)]),
            up(2, vec![local(0, 1, 3), local(1, 3, 1)]),
            NodeReport {
                node: Some(3),
                addr: "127.0.0.1:7003".into(),
                status: Err(ClientError::NoSeeds),
            },
        ];
        let view = ClusterView::build(&reports);
        assert!(view.bootstrapped);
        assert_eq!(view.nodes.len(), 3);
        assert_eq!(view.nodes[0].leads, vec![0, 1]);
        assert!(!view.nodes[2].reachable);
        let group1 = &view.groups[1];
        assert_eq!(
            (group1.leader, group1.term, group1.vshards),
            (Some(1), 2, 1024)
        );
        assert_eq!((group1.epoch_min, group1.epoch_max), (Some(1), Some(2)));
        let text = view.render();
        assert!(text.contains("GROUP  LEADER  TERM"), "{text}");
        assert!(text.contains("1      1       2     1,2,3"), "{text}");
        assert!(text.contains("unreachable"), "{text}");
    }

    #[test]
    fn an_unbootstrapped_cluster_says_so() {
        let report = NodeReport {
            node: Some(1),
            addr: "127.0.0.1:7001".into(),
            status: Ok(NodeStatus {
                node: 1,
                addr: "127.0.0.1:7001".into(),
                routing: RoutingTable::default(),
                groups: Vec::new(),
            }),
        };
        let view = ClusterView::build(&[report]);
        assert!(!view.bootstrapped);
        assert!(view.render().ends_with("the cluster is not bootstrapped"));
    }
}
