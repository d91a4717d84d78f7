//! The client's cache: the routing table, and per group the node that last
//! answered for it (its leader, as far as the client knows).
//!
//! Pure (no I/O): the request loop tells it what happened (an answer, a
//! redirect, an unreachable node, a fresh table) and asks it whom to try.
//! Guarantees: a table is only replaced by one at least as new (no vShard's
//! epoch goes back); candidates never repeat an address; a node that could
//! not be reached is tried last for a while (`suspect_for`), so one dead
//! node costs one connect timeout, not one per request.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::command::METADATA_GROUP;
use crate::metadata::Route;
use crate::rpc::RoutingTable;
use crate::vshard::VSHARDS;

use super::error::ClientError;

/// A node to send a request to: its address, and its id when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) node: Option<u64>,
    pub(crate) addr: String,
}

impl Peer {
    pub(crate) fn new(node: Option<u64>, addr: impl Into<String>) -> Self {
        Peer {
            node,
            addr: addr.into(),
        }
    }
}

/// The routing table and leader hints of one client.
#[derive(Debug, Default)]
pub(crate) struct RouteCache {
    table: Option<RoutingTable>,
    /// Raised each time a table is installed (lets concurrent callers see
    /// that someone else already refreshed).
    generation: u64,
    leaders: BTreeMap<u64, Peer>,
    seeds: Vec<String>,
    /// Addresses that could not be reached, until when they are tried last.
    suspects: BTreeMap<String, Instant>,
    suspect_for: Duration,
}

impl RouteCache {
    pub(crate) fn new(seeds: Vec<String>, suspect_for: Duration) -> Self {
        RouteCache {
            seeds,
            suspect_for,
            ..RouteCache::default()
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn table(&self) -> Option<&RoutingTable> {
        self.table.as_ref()
    }

    /// Installs `table` unless it equals the cached one or is older (some
    /// vShard's epoch lower); the generation changes exactly when the
    /// table does. Leader hints for nodes no longer members of
    /// their group are dropped. Returns whether it was installed.
    pub(crate) fn install(&mut self, table: RoutingTable) -> bool {
        if let Some(current) = &self.table {
            if *current == table || is_older(&table, current) {
                return false;
            }
        }
        self.leaders.retain(|group, peer| {
            let members = table.groups.get(group);
            peer.node
                .is_some_and(|node| members.is_some_and(|m| m.contains(&node)))
        });
        self.table = Some(table);
        self.generation += 1;
        true
    }

    /// Takes a ghost's word that `vshard` moved to `route` (its group and
    /// epoch): updates that one route if it is newer than the cached one
    /// and the table knows the group's members. The generation changes
    /// exactly when the route does. Returns whether it did; if not, the
    /// caller refreshes the whole table.
    pub(crate) fn moved(&mut self, vshard: u16, route: Route) -> bool {
        let Some(table) = &mut self.table else {
            return false;
        };
        if !table.groups.contains_key(&route.group) {
            return false;
        }
        match table.routes.get_mut(usize::from(vshard)) {
            Some(cached) if cached.epoch < route.epoch => {
                *cached = route;
                self.generation += 1;
                true
            }
            _ => false,
        }
    }

    /// The route of `vshard` in the cached table.
    pub(crate) fn route(&self, vshard: u16) -> Result<Route, ClientError> {
        let table = self.table.as_ref().ok_or(ClientError::NotBootstrapped)?;
        if table.routes.len() != usize::from(VSHARDS) {
            return Err(ClientError::NotBootstrapped);
        }
        table
            .routes
            .get(usize::from(vshard))
            .copied()
            .ok_or(ClientError::InvalidVShard {
                vshard: u64::from(vshard),
            })
    }

    /// Whom to ask for `group`, best first: the cached leader, the group's
    /// members, then (for the metadata group) every known node, then the
    /// seeds; suspects last. Never empty while there are seeds; no address
    /// twice.
    pub(crate) fn candidates(&self, group: u64) -> Vec<Peer> {
        self.candidates_at(group, Instant::now())
    }

    fn candidates_at(&self, group: u64, now: Instant) -> Vec<Peer> {
        let mut peers: Vec<Peer> = self.leaders.get(&group).cloned().into_iter().collect();
        if let Some(table) = &self.table {
            let members = table.groups.get(&group).cloned().unwrap_or_default();
            let others = (group == METADATA_GROUP).then(|| table.nodes.keys().copied());
            for node in members.into_iter().chain(others.into_iter().flatten()) {
                if let Some(addr) = table.nodes.get(&node) {
                    peers.push(Peer::new(Some(node), addr.clone()));
                }
            }
        }
        peers.extend(self.seeds.iter().map(|seed| self.peer_at(seed)));
        self.suspects_last(dedup_by_addr(peers), now)
    }

    /// Every node the client knows of (table nodes, then seeds; suspects
    /// last), once each.
    pub(crate) fn all_nodes(&self) -> Vec<Peer> {
        let known = self.table.iter().flat_map(|table| {
            table
                .nodes
                .iter()
                .map(|(&node, addr)| Peer::new(Some(node), addr.clone()))
        });
        let seeds = self.seeds.iter().map(|seed| self.peer_at(seed));
        self.suspects_last(dedup_by_addr(known.chain(seeds).collect()), Instant::now())
    }

    /// Moves the peers suspected at `now` to the end, keeping both orders.
    pub(crate) fn suspects_last(&self, peers: Vec<Peer>, now: Instant) -> Vec<Peer> {
        let suspected = |peer: &Peer| self.suspects.get(&peer.addr).is_some_and(|&t| t > now);
        let (later, first): (Vec<Peer>, Vec<Peer>) = peers.into_iter().partition(suspected);
        first.into_iter().chain(later).collect()
    }

    /// `peer` answered for `group`: ask it first next time.
    pub(crate) fn answered(&mut self, group: u64, peer: &Peer) {
        self.reachable(peer);
        self.leader_hint(group, peer);
    }

    /// `peer` answered: no longer a suspect.
    pub(crate) fn reachable(&mut self, peer: &Peer) {
        self.suspects.remove(&peer.addr);
    }

    /// `peer` is said to lead (or serve) `group`: ask it first next time.
    pub(crate) fn leader_hint(&mut self, group: u64, peer: &Peer) {
        let peer = match peer.node {
            Some(_) => peer.clone(),
            None => self.peer_at(&peer.addr),
        };
        self.leaders.insert(group, peer);
    }

    /// `peer` could not be reached: try it last for a while, and stop
    /// preferring it for `group`.
    pub(crate) fn unreachable(&mut self, group: Option<u64>, peer: &Peer) {
        self.unreachable_at(group, peer, Instant::now());
    }

    fn unreachable_at(&mut self, group: Option<u64>, peer: &Peer, now: Instant) {
        self.suspects
            .insert(peer.addr.clone(), now + self.suspect_for);
        let leads = |group: &u64| self.leaders.get(group).is_some_and(|l| l.addr == peer.addr);
        if let Some(group) = group.filter(leads) {
            self.leaders.remove(&group);
        }
    }

    /// The peer at `addr`, with its node id if the table names it.
    fn peer_at(&self, addr: &str) -> Peer {
        let node = self.table.as_ref().and_then(|table| {
            table
                .nodes
                .iter()
                .find(|(_, known)| known.as_str() == addr)
                .map(|(&node, _)| node)
        });
        Peer::new(node, addr)
    }
}

/// `candidate` is older than `current`: some vShard's epoch is lower, or it
/// has fewer routes (a table from before bootstrap).
fn is_older(candidate: &RoutingTable, current: &RoutingTable) -> bool {
    candidate.routes.len() < current.routes.len()
        || candidate
            .routes
            .iter()
            .zip(&current.routes)
            .any(|(new, old)| new.epoch < old.epoch)
}

pub(crate) fn dedup_by_addr(peers: Vec<Peer>) -> Vec<Peer> {
    let mut unique: Vec<Peer> = Vec::with_capacity(peers.len());
    for peer in peers {
        if !unique.iter().any(|seen| seen.addr == peer.addr) {
            unique.push(peer);
        }
    }
    unique
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Three nodes, group 0 on all, groups 1 and 2 on two nodes each,
    /// vShards alternating between groups 1 and 2 at `epoch`.
    pub(crate) fn table(epoch: u64) -> RoutingTable {
        RoutingTable {
            nodes: (1..=3).map(|n| (n, format!("10.0.0.{n}:7000"))).collect(),
            groups: [(0, vec![1, 2, 3]), (1, vec![1, 2]), (2, vec![2, 3])]
                .into_iter()
                .collect(),
            routes: (0..VSHARDS)
                .map(|v| Route {
                    group: 1 + u64::from(v % 2),
                    epoch,
                })
                .collect(),
        }
    }

    const SUSPECT: Duration = Duration::from_secs(5);

    fn addrs(peers: &[Peer]) -> Vec<&str> {
        peers.iter().map(|p| p.addr.as_str()).collect()
    }

    #[test]
    fn without_a_table_only_seeds_are_candidates() {
        let cache = RouteCache::new(vec!["a:1".into(), "b:2".into(), "a:1".into()], SUSPECT);
        assert_eq!(addrs(&cache.candidates(1)), ["a:1", "b:2"]);
        assert!(matches!(cache.route(3), Err(ClientError::NotBootstrapped)));
    }

    #[test]
    fn leader_first_then_members_then_seeds() {
        let mut cache = RouteCache::new(vec!["10.0.0.1:7000".into(), "seed:9".into()], SUSPECT);
        assert!(cache.install(table(1)));
        assert_eq!(
            addrs(&cache.candidates(2)),
            ["10.0.0.2:7000", "10.0.0.3:7000", "10.0.0.1:7000", "seed:9"]
        );
        cache.answered(2, &Peer::new(None, "10.0.0.3:7000"));
        assert_eq!(cache.candidates(2)[0], Peer::new(Some(3), "10.0.0.3:7000"));
        cache.unreachable(Some(2), &Peer::new(Some(3), "10.0.0.3:7000"));
        assert_eq!(
            addrs(&cache.candidates(2)),
            ["10.0.0.2:7000", "10.0.0.1:7000", "seed:9", "10.0.0.3:7000"]
        );
        assert_eq!(cache.route(5).ok(), Some(Route { group: 2, epoch: 1 }));
    }

    #[test]
    fn an_older_table_is_ignored_and_stale_leaders_dropped() {
        let mut cache = RouteCache::new(vec!["seed:9".into()], SUSPECT);
        assert!(cache.install(table(2)));
        cache.answered(1, &Peer::new(Some(1), "10.0.0.1:7000"));
        assert!(!cache.install(table(1)));
        assert!(!cache.install(table(2)));
        assert_eq!(cache.generation(), 1);
        let mut moved = table(3);
        moved.groups.insert(1, vec![2, 3]);
        assert!(cache.install(moved));
        assert_eq!(cache.generation(), 2);
        assert_eq!(cache.candidates(1)[0].addr, "10.0.0.2:7000");
    }

    #[test]
    fn a_ghosts_answer_moves_one_route_forward_only() {
        let mut cache = RouteCache::new(vec!["seed:9".into()], SUSPECT);
        let to = |group, epoch| Route { group, epoch };
        assert!(!cache.moved(4, to(2, 3)), "no table yet");
        assert!(cache.install(table(2)));
        assert!(cache.moved(4, to(2, 3)));
        assert_eq!(cache.generation(), 2);
        assert_eq!(cache.route(4).ok(), Some(to(2, 3)));
        assert_eq!(cache.route(6).ok(), Some(to(1, 2)), "other routes stay");
        assert!(!cache.moved(4, to(1, 3)), "not newer");
        assert!(!cache.moved(4, to(1, 2)), "older");
        assert!(!cache.moved(6, to(9, 5)), "a group the table does not know");
        assert_eq!(cache.generation(), 2);
        // A full table older in that one vShard is not installed over it.
        assert!(!cache.install(table(2)));
        assert_eq!(cache.route(4).ok(), Some(to(2, 3)));
    }

    #[test]
    fn suspects_are_tried_last_until_they_expire_or_answer() {
        let mut cache = RouteCache::new(vec!["a:1".into(), "b:1".into(), "c:1".into()], SUSPECT);
        let now = Instant::now();
        cache.unreachable_at(None, &Peer::new(None, "a:1"), now);
        assert_eq!(addrs(&cache.candidates_at(7, now)), ["b:1", "c:1", "a:1"]);
        let later = now + SUSPECT + Duration::from_millis(1);
        assert_eq!(addrs(&cache.candidates_at(7, later)), ["a:1", "b:1", "c:1"]);
        cache.unreachable_at(None, &Peer::new(None, "b:1"), now);
        cache.answered(7, &Peer::new(None, "b:1"));
        assert_eq!(addrs(&cache.candidates_at(7, now)), ["b:1", "c:1", "a:1"]);
    }

    #[test]
    fn all_nodes_lists_table_nodes_and_seeds_once() {
        let mut cache = RouteCache::new(vec!["10.0.0.2:7000".into(), "seed:9".into()], SUSPECT);
        cache.install(table(1));
        let all = cache.all_nodes();
        assert_eq!(
            addrs(&all),
            ["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000", "seed:9"]
        );
        assert_eq!(all[3].node, None);
    }
}
