//! When is a bootstrapped cluster ready? Pure: decided from the nodes'
//! status reports, so it is tested without a cluster.
//!
//! Ready means: some node reports a bootstrapped routing table (1024
//! routes); every group in it (the metadata group included) has a leader in
//! some member's view; and every data group owns, on some replica, every
//! vShard the table routes to it.

use crate::command::METADATA_GROUP;
use crate::rpc::{NodeStatus, RoutingTable};
use crate::vshard::VSHARDS;

use super::admin::NodeReport;

/// `Ok` when the cluster is ready, else what it is still waiting for (one
/// line).
pub fn readiness(reports: &[NodeReport]) -> Result<(), String> {
    let statuses: Vec<&NodeStatus> = reports
        .iter()
        .filter_map(|report| report.status.as_ref().ok())
        .collect();
    let routing = newest_routing(&statuses)
        .filter(|table| table.routes.len() == usize::from(VSHARDS))
        .ok_or_else(|| "no node reports a bootstrapped routing table yet".to_string())?;
    for &group in routing.groups.keys() {
        let views: Vec<_> = statuses
            .iter()
            .flat_map(|status| status.groups.iter())
            .filter(|local| local.group == group)
            .collect();
        if !views.iter().any(|local| local.leader.is_some()) {
            return Err(format!("group {group} has no leader yet"));
        }
        if group == METADATA_GROUP {
            continue;
        }
        let routed = routing.routes.iter().filter(|r| r.group == group).count();
        let owned = views.iter().map(|l| l.owned_vshards).max().unwrap_or(0);
        if (owned as usize) < routed {
            return Err(format!(
                "group {group} owns {owned} of its {routed} vShards"
            ));
        }
    }
    Ok(())
}

/// The most advanced routing table among the views: the most routes, then
/// the highest sum of epochs.
pub fn newest_routing<'a>(statuses: &[&'a NodeStatus]) -> Option<&'a RoutingTable> {
    statuses
        .iter()
        .map(|status| &status.routing)
        .max_by_key(|table| {
            let epochs: u64 = table.routes.iter().map(|r| r.epoch).sum();
            (table.routes.len(), epochs)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientError;
    use crate::rpc::LocalGroupStatus;

    fn local(group: u64, leader: Option<u64>, owned: u32) -> LocalGroupStatus {
        LocalGroupStatus {
            group,
            leader,
            term: 1,
            last_applied: Some(3),
            voters: vec![1, 2],
            learners: Vec::new(),
            owned_vshards: owned,
        }
    }

    fn report(node: u64, routing: RoutingTable, groups: Vec<LocalGroupStatus>) -> NodeReport {
        let addr = format!("10.0.0.{node}:7000");
        NodeReport {
            node: Some(node),
            addr: addr.clone(),
            status: Ok(NodeStatus {
                node,
                addr,
                routing,
                groups,
            }),
        }
    }

    fn down(node: u64) -> NodeReport {
        NodeReport {
            node: Some(node),
            addr: format!("10.0.0.{node}:7000"),
            status: Err(ClientError::NoSeeds),
        }
    }

    #[test]
    fn waits_for_bootstrap_leaders_and_ownership() {
        let table = crate::client::routing::tests::table(1);
        let empty = RoutingTable::default();
        let not_bootstrapped = [report(1, empty, Vec::new())];
        assert_eq!(
            readiness(&not_bootstrapped),
            Err("no node reports a bootstrapped routing table yet".into())
        );
        let no_leader = [report(
            1,
            table.clone(),
            vec![local(0, Some(1), 0), local(1, None, 0)],
        )];
        assert_eq!(
            readiness(&no_leader),
            Err("group 1 has no leader yet".into())
        );
        let partly_owned = [
            report(
                1,
                table.clone(),
                vec![local(0, Some(1), 0), local(1, Some(1), 512)],
            ),
            report(
                2,
                table.clone(),
                vec![local(0, Some(1), 0), local(2, Some(2), 100)],
            ),
        ];
        assert_eq!(
            readiness(&partly_owned),
            Err("group 2 owns 100 of its 512 vShards".into())
        );
        let ready = [
            report(
                1,
                table.clone(),
                vec![local(0, Some(1), 0), local(1, Some(1), 512)],
            ),
            report(2, RoutingTable::default(), vec![local(2, Some(2), 512)]),
            down(3),
        ];
        assert_eq!(readiness(&ready), Ok(()));
    }
}
