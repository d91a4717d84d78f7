//! Answers to client requests: writes proposed to the key's group, reads
//! served linearizably by the group's leader (read index), and the routing
//! table read linearizably from the metadata group.
//!
//! A request that reaches a follower, or a node without the group, is
//! redirected; a stale routing epoch is answered `StaleRouting`; a fenced
//! vShard is answered `Fenced`, an election in progress `Retry`.
//!
//! A vShard the group holds without serving it (fenced, a ghost, or an
//! incoming copy the routing table already names the owner of, i.e. one
//! being activated) is answered from the applied state before anything is
//! proposed ([`unserving`]): a client polling a cut-over costs a local
//! read, not a Raft round. Only refusals are answered that way.

use openraft::error::{CheckIsLeaderError, RaftError};

use super::groups::GroupRuntime;
use super::node::NodeInner;
use super::propose;
use crate::command::{Command, Rejection, Response, METADATA_GROUP};
use crate::data::VShardState;
use crate::metadata::{MetadataState, Route, FIRST_EPOCH};
use crate::raft::ReadError;
use crate::rpc::{ClientRequest, ClientResponse, ProposeError, RoutingTable};
use crate::vshard::{is_valid, vshard_of};

/// The most pairs one scan page returns.
const MAX_SCAN_PAGE: u32 = 10_000;

pub(crate) async fn handle(node: &NodeInner, request: ClientRequest) -> ClientResponse {
    match request {
        ClientRequest::Put { key, value, epoch } => {
            write(node, epoch, Command::put(key, value)).await
        }
        ClientRequest::Delete { key, epoch } => write(node, epoch, Command::delete(key)).await,
        ClientRequest::Get { key, epoch } => get(node, key, epoch).await,
        ClientRequest::ScanVShard {
            vshard,
            after,
            limit,
            epoch,
        } => scan(node, vshard, after, limit, epoch).await,
        ClientRequest::Routing => routing(node).await,
    }
}

impl From<&MetadataState> for RoutingTable {
    fn from(metadata: &MetadataState) -> Self {
        Self {
            nodes: metadata.nodes.clone(),
            groups: metadata
                .groups
                .iter()
                .map(|(group, members)| (*group, members.iter().copied().collect()))
                .collect(),
            routes: metadata.routing.clone(),
        }
    }
}

/// The local group serving `vshard`, or the answer to send instead.
async fn route(
    node: &NodeInner,
    vshard: u16,
    epoch: u64,
) -> Result<(Route, GroupRuntime), ClientResponse> {
    let mut metadata = node.metadata();
    let newer_than_cache = metadata
        .route(vshard)
        .is_some_and(|route| epoch > route.epoch);
    if newer_than_cache || !metadata.is_bootstrapped() {
        metadata = node.refresh_metadata().await.unwrap_or(metadata);
    }
    let Some(route) = metadata.route(vshard) else {
        return Err(retry(&format!(
            "node {} knows no routing yet (is the cluster bootstrapped?)",
            node.id
        )));
    };
    if epoch != 0 && epoch < route.epoch {
        return Err(ClientResponse::StaleRouting {
            vshard,
            epoch: route.epoch,
        });
    }
    match node.groups.get(route.group) {
        Some(runtime) => Ok((route, runtime)),
        None => Err(to_member(&metadata, route.group)),
    }
}

fn retry(reason: &str) -> ClientResponse {
    ClientResponse::Retry {
        reason: reason.to_string(),
    }
}

/// Redirects to a member of `group` (which redirects on to its leader).
fn to_member(metadata: &MetadataState, group: u64) -> ClientResponse {
    let member = metadata.groups.get(&group).and_then(|members| {
        members
            .iter()
            .find_map(|m| metadata.nodes.get(m).map(|addr| (*m, addr.clone())))
    });
    match member {
        Some((node, addr)) => ClientResponse::Redirect { node, addr },
        None => retry(&format!("group {group} has no reachable member")),
    }
}

fn to_leader(leader: Option<(u64, String)>, group: u64) -> ClientResponse {
    match leader {
        Some((node, addr)) => ClientResponse::Redirect { node, addr },
        None => retry(&format!("group {group} is electing a leader")),
    }
}

/// The answer of a ghost: where the vShard went, or (if this node's table
/// already knows a later move) just that the client's route is stale.
fn moved(route: Route, vshard: u16, to_group: u64, epoch: u64) -> ClientResponse {
    if route.epoch > epoch {
        return ClientResponse::StaleRouting {
            vshard,
            epoch: route.epoch,
        };
    }
    ClientResponse::Moved {
        vshard,
        group: to_group,
        epoch,
    }
}

/// The answer for a command the owner check refused.
fn refused(route: Route, vshard: u16, rejection: &Rejection) -> ClientResponse {
    match rejection {
        Rejection::Fenced { migration, .. } => ClientResponse::Fenced {
            vshard,
            migration: migration.clone(),
        },
        Rejection::Moved {
            to_group, epoch, ..
        } => moved(route, vshard, *to_group, *epoch),
        Rejection::NotOwner { .. } if route.epoch == FIRST_EPOCH => retry(&format!(
            "vShard {vshard} is being assigned to group {}",
            route.group
        )),
        Rejection::NotOwner { .. } => ClientResponse::StaleRouting {
            vshard,
            epoch: route.epoch,
        },
        other => ClientResponse::Rejected {
            reason: other.to_string(),
        },
    }
}

async fn write(node: &NodeInner, epoch: u64, command: Command) -> ClientResponse {
    if let Err(error) = command.check_limits() {
        return ClientResponse::Rejected {
            reason: error.to_string(),
        };
    }
    let Some(vshard) = command_vshard(&command) else {
        return ClientResponse::Rejected {
            reason: "not a key-value command".into(),
        };
    };
    let (route, runtime) = match route(node, vshard, epoch).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    if let Some(answer) = unserving(&runtime, route, vshard).await {
        return answer;
    }
    match propose::local(node, route.group, command).await {
        Ok(response) => answer(route, vshard, &response),
        Err(ProposeError::NotLeader { leader }) => to_leader(leader, route.group),
        Err(error) => retry(&format!("{error:?}")),
    }
}

/// The refusal for a vShard this group holds without serving it, read from
/// the applied state; `None` to go on as usual (it serves it, or a read
/// failed: the apply's own owner check still decides).
async fn unserving(runtime: &GroupRuntime, route: Route, vshard: u16) -> Option<ClientResponse> {
    let state = runtime.state_machine.unserving_state(vshard).await.ok()??;
    match state {
        VShardState::Fenced { migration } => Some(ClientResponse::Fenced { vshard, migration }),
        VShardState::Moved { to_group, epoch } => Some(moved(route, vshard, to_group, epoch)),
        // `Transfer` committed (the table names this group) and `Activate`
        // is on its way: a moment, like a fence.
        VShardState::Incoming { migration } if route.group == runtime.state_machine.group() => {
            Some(ClientResponse::Fenced { vshard, migration })
        }
        VShardState::Incoming { .. } | VShardState::Owned => None,
    }
}

fn command_vshard(command: &Command) -> Option<u16> {
    let crate::command::Command::V1(v1) = command;
    match &v1.op {
        crate::command::Op::Data(crate::command::DataOp::Put { key, .. })
        | crate::command::Op::Data(crate::command::DataOp::Delete { key, .. }) => {
            Some(vshard_of(key))
        }
        _ => None,
    }
}

fn answer(route: Route, vshard: u16, response: &Response) -> ClientResponse {
    match response.rejection() {
        None => ClientResponse::Done,
        Some(rejection) => refused(route, vshard, rejection),
    }
}

/// Waits for a read index on the group's leader; `Err` is the answer to send.
async fn read_index(runtime: &GroupRuntime, group: u64) -> Result<(), ClientResponse> {
    match runtime.ensure_linearizable().await {
        Ok(_) => Ok(()),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
            let leader = forward.leader_id.zip(forward.leader_node.map(|n| n.addr));
            Err(to_leader(leader, group))
        }
        Err(error) => Err(retry(&error.to_string())),
    }
}

fn read_failed(route: Route, vshard: u16, error: ReadError) -> ClientResponse {
    match error {
        ReadError::Rejected(rejection) => refused(route, vshard, &rejection),
        ReadError::Storage(error) => retry(&error.to_string()),
    }
}

async fn get(node: &NodeInner, key: Vec<u8>, epoch: u64) -> ClientResponse {
    let vshard = vshard_of(&key);
    let (route, runtime) = match self::route(node, vshard, epoch).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    if let Some(answer) = unserving(&runtime, route, vshard).await {
        return answer;
    }
    if let Err(answer) = read_index(&runtime, route.group).await {
        return answer;
    }
    match runtime.state_machine.get(key).await {
        Ok(value) => ClientResponse::Value(value),
        Err(error) => read_failed(route, vshard, error),
    }
}

async fn scan(
    node: &NodeInner,
    vshard: u16,
    after: Option<Vec<u8>>,
    limit: u32,
    epoch: u64,
) -> ClientResponse {
    if !is_valid(vshard) {
        return ClientResponse::Rejected {
            reason: format!("vShard {vshard} does not exist (there are 1024: 0 to 1023)"),
        };
    }
    let (route, runtime) = match self::route(node, vshard, epoch).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    if let Err(answer) = read_index(&runtime, route.group).await {
        return answer;
    }
    let limit = limit.clamp(1, MAX_SCAN_PAGE) as usize;
    match runtime
        .state_machine
        .scan_vshard(vshard, after, limit + 1)
        .await
    {
        Ok(mut pairs) => {
            let more = pairs.len() > limit;
            pairs.truncate(limit);
            ClientResponse::Scan { pairs, more }
        }
        Err(error) => read_failed(route, vshard, error),
    }
}

async fn routing(node: &NodeInner) -> ClientResponse {
    let Some(group0) = node.groups.get(METADATA_GROUP) else {
        return to_member(&node.metadata(), METADATA_GROUP);
    };
    if let Err(answer) = read_index(&group0, METADATA_GROUP).await {
        return answer;
    }
    match node.refresh_metadata().await {
        Ok(metadata) if metadata.is_bootstrapped() => {
            ClientResponse::Routing(RoutingTable::from(&*metadata))
        }
        Ok(_) => retry("the cluster is not bootstrapped yet"),
        Err(error) => retry(&error.to_string()),
    }
}
