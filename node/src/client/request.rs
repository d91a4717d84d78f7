//! The request loop shared by every call: pick a node, send, classify the
//! answer ([`super::outcome`]), then answer, follow a redirect, refresh the
//! routing table, poll a fenced vShard, or back off and retry — within one
//! time budget.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

use crate::command::METADATA_GROUP;
use crate::metadata::Route;
use crate::rpc::{
    ClientRequest, ClientResponse, NodeRequest, NodeRequestV1, NodeResponse, NodeResponseV1,
    RoutingTable,
};
use crate::transport::TransportError;

use super::error::ClientError;
use super::outcome::{classify_client, classify_transport, Outcome};
use super::retry::{Backoff, Budget};
use super::routing::{Peer, RouteCache};
use super::Client;

/// One attempt's request, built from the cache as it is now.
pub(crate) struct Prepared {
    /// The group the request is for (its leader hint is updated); `None`
    /// for requests about one node or about no group.
    pub(crate) group: Option<u64>,
    pub(crate) request: NodeRequestV1,
    /// Whom to ask, best first.
    pub(crate) candidates: Vec<Peer>,
    /// The cache generation the request was built from.
    pub(crate) generation: u64,
}

/// What a call needs from the loop: how to build its request and what the
/// answer means.
pub(crate) trait Plan: Send {
    type Answer: Send;
    /// The request for the next attempt.
    fn prepare(&self, cache: &RouteCache) -> Result<Prepared, ClientError>;
    /// What `peer`'s answer means.
    fn classify(&self, peer: &Peer, response: NodeResponseV1) -> Outcome<Self::Answer>;
    /// An attempt ended without an answer after the request may have been
    /// delivered (a timeout, a lost connection).
    fn unanswered(&mut self) {}
    /// The node may take long to answer (an admin change waits for a
    /// commit, perhaps an election): one attempt may use the whole budget
    /// rather than `attempt_timeout`, so it is not abandoned and resent.
    fn patient(&self) -> bool {
        false
    }
}

/// Where the next attempt goes.
#[derive(Default)]
struct Aim {
    /// A node named by a redirect or asked to be retried.
    next: Option<Peer>,
    /// Redirects followed in a row.
    redirects: u32,
    /// Addresses that failed during this call; skipped until every
    /// candidate has failed, then tried again.
    failed: Vec<String>,
}

impl Aim {
    fn pick(&mut self, candidates: &[Peer]) -> Option<Peer> {
        if let Some(next) = self.next.take() {
            return Some(next);
        }
        let untried = |peer: &&Peer| !self.failed.contains(&peer.addr);
        if let Some(peer) = candidates.iter().find(untried) {
            return Some(peer.clone());
        }
        self.failed.clear();
        candidates.first().cloned()
    }
}

/// How the loop continues after an outcome that is not final.
enum Then {
    Now,
    AfterBackoff,
    /// After the fixed fenced poll (a migration's cut-over in progress).
    AfterPoll,
}

impl Client {
    /// A fresh budget of one call.
    pub(crate) fn budget(&self) -> Budget {
        Budget::new(Instant::now(), self.inner.config.request_timeout)
    }

    /// Runs `plan` until it is answered, fails, or `budget` runs out.
    pub(crate) async fn drive<P: Plan>(
        &self,
        plan: &mut P,
        mut budget: Budget,
    ) -> Result<P::Answer, ClientError> {
        let config = &self.inner.config;
        let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        let mut aim = Aim::default();
        let per_attempt = if plan.patient() {
            config.request_timeout
        } else {
            config.attempt_timeout
        };
        loop {
            let prepared = plan.prepare(&self.cache())?;
            let Some(peer) = aim.pick(&prepared.candidates) else {
                return Err(ClientError::NoSeeds);
            };
            let Some(timeout) = budget.attempt_timeout(Instant::now(), per_attempt) else {
                return Err(budget.exhausted(Instant::now()));
            };
            let sent = self.send(&peer, prepared.request, timeout).await;
            // Only a failure after the request went out leaves its fate open.
            let maybe_delivered = matches!(sent, Err(SendError::Transport(_)));
            let outcome = match sent {
                Ok(response) => plan.classify(&peer, response),
                Err(SendError::Transport(error)) => classify_transport(error),
                Err(SendError::Unreachable(reason)) => Outcome::Elsewhere(reason),
            };
            if maybe_delivered && matches!(outcome, Outcome::Elsewhere(_)) {
                plan.unanswered();
            }
            let context = Context {
                group: prepared.group,
                generation: prepared.generation,
                peer,
            };
            let then = match self.react(outcome, &context, &mut aim, &mut budget).await? {
                Reaction::Done(answer) => return Ok(answer),
                Reaction::Continue(then) => then,
            };
            let delay = match then {
                Then::Now => continue,
                Then::AfterBackoff => backoff.next_delay(),
                Then::AfterPoll => config.fenced_poll,
            };
            match budget.sleep_before_retry(Instant::now(), delay) {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return Err(budget.exhausted(Instant::now())),
            }
        }
    }

    /// Applies one outcome to the cache and the aim.
    async fn react<T>(
        &self,
        outcome: Outcome<T>,
        context: &Context,
        aim: &mut Aim,
        budget: &mut Budget,
    ) -> Result<Reaction<T>, ClientError> {
        let Context {
            group,
            generation,
            peer,
        } = context;
        let then = match outcome {
            Outcome::Answer(answer) => {
                match group {
                    Some(group) => self.cache().answered(*group, peer),
                    None => self.cache().reachable(peer),
                }
                return Ok(Reaction::Done(answer));
            }
            Outcome::Fail(error) => return Err(error),
            Outcome::Redirect(to) => {
                budget.note(format!("{} redirected to node {}", peer.addr, to.addr));
                if let Some(group) = group {
                    self.cache().leader_hint(*group, &to);
                }
                aim.next = Some(to);
                aim.redirects += 1;
                if aim.redirects <= self.inner.config.max_redirects {
                    Then::Now
                } else {
                    aim.redirects = 0;
                    Then::AfterBackoff
                }
            }
            Outcome::Moved {
                vshard,
                group: to,
                epoch,
            } if self.cache().moved(vshard, Route { group: to, epoch }) => {
                budget.note(format!(
                    "{}: vShard {vshard} moved to group {to} (epoch {epoch})",
                    peer.addr
                ));
                Then::Now
            }
            Outcome::Moved { vshard, epoch, .. } | Outcome::Stale { vshard, epoch } => {
                budget.note(format!(
                    "{} holds a newer route for vShard {vshard} (epoch {epoch})",
                    peer.addr
                ));
                self.refresh_routing(*generation, budget.clone()).await?;
                // A changed table: retry at once; the same table: the node
                // is behind (or ahead of the metadata leader's answer), wait.
                if self.cache().generation() != *generation {
                    Then::Now
                } else {
                    Then::AfterBackoff
                }
            }
            Outcome::Retry(reason) => {
                budget.note(reason);
                aim.next = Some(peer.clone());
                Then::AfterBackoff
            }
            Outcome::Fenced(reason) => {
                budget.note(reason);
                aim.next = Some(peer.clone());
                Then::AfterPoll
            }
            Outcome::Elsewhere(reason) => {
                budget.note(reason);
                self.cache().unreachable(*group, peer);
                aim.failed.push(peer.addr.clone());
                aim.redirects = 0;
                Then::AfterBackoff
            }
        };
        Ok(Reaction::Continue(then))
    }

    /// Fetches the routing table from the metadata group and installs it,
    /// unless another caller installed one since `seen_generation`. One
    /// refresh runs at a time.
    pub(crate) fn refresh_routing(
        &self,
        seen_generation: u64,
        budget: Budget,
    ) -> Pin<Box<dyn Future<Output = Result<(), ClientError>> + Send + '_>> {
        Box::pin(async move {
            let _one_at_a_time = self.inner.refresh.lock().await;
            if self.cache().generation() != seen_generation {
                return Ok(());
            }
            let table = self.drive(&mut RoutingPlan, budget).await?;
            self.cache().install(table);
            Ok(())
        })
    }

    /// Loads the routing table if the client has none yet.
    pub(crate) async fn ensure_routing(&self) -> Result<(), ClientError> {
        let generation = {
            let cache = self.cache();
            if cache.table().is_some_and(|table| !table.routes.is_empty()) {
                return Ok(());
            }
            cache.generation()
        };
        self.refresh_routing(generation, self.budget()).await
    }

    /// One attempt: `request` to `peer`, bounded by `timeout`.
    async fn send(
        &self,
        peer: &Peer,
        request: NodeRequestV1,
        timeout: Duration,
    ) -> Result<NodeResponseV1, SendError> {
        let started = Instant::now();
        let addr = resolve(&peer.addr, self.inner.bind_v6)
            .await
            .map_err(SendError::Unreachable)?;
        // Dial (or reuse the pooled connection) within the connect timeout:
        // a dead node is detected in that time, not in a whole attempt.
        let connect_timeout = self.inner.config.connect_timeout.min(timeout);
        let transport = &self.inner.transport;
        match tokio::time::timeout(connect_timeout, transport.connection(addr)).await {
            Ok(Ok(_)) => {}
            // Nothing was sent: the next node can be asked with no doubt.
            Ok(Err(
                error @ (TransportError::Timeout { .. } | TransportError::ConnectionLost { .. }),
            )) => return Err(SendError::Unreachable(error.to_string())),
            Ok(Err(error)) => return Err(SendError::Transport(error)),
            Err(_) => {
                return Err(SendError::Unreachable(format!(
                    "cannot connect to {addr} within {:.1}s",
                    connect_timeout.as_secs_f64()
                )))
            }
        }
        let timeout = timeout.saturating_sub(started.elapsed());
        let bytes = postcard::to_allocvec(&NodeRequest::V1(request))
            .map_err(|source| TransportError::Encode { peer: addr, source })?;
        let answer = self
            .inner
            .transport
            .call_with_timeout(addr, &bytes, timeout)
            .await?;
        let NodeResponse::V1(response) = postcard::from_bytes(&answer)
            .map_err(|source| TransportError::Decode { peer: addr, source })?;
        Ok(response)
    }
}

struct Context {
    group: Option<u64>,
    generation: u64,
    peer: Peer,
}

enum Reaction<T> {
    Done(T),
    Continue(Then),
}

/// The routing table, read linearizably through the metadata group's leader.
pub(crate) struct RoutingPlan;

impl Plan for RoutingPlan {
    type Answer = RoutingTable;

    fn prepare(&self, cache: &RouteCache) -> Result<Prepared, ClientError> {
        Ok(Prepared {
            group: Some(METADATA_GROUP),
            request: NodeRequestV1::Client(ClientRequest::Routing),
            candidates: cache.candidates(METADATA_GROUP),
            generation: cache.generation(),
        })
    }

    fn classify(&self, peer: &Peer, response: NodeResponseV1) -> Outcome<RoutingTable> {
        classify_client(peer, response, |response| match response {
            ClientResponse::Routing(table) => Ok(table),
            other => Err(other),
        })
    }
}

/// Why one attempt got no answer.
enum SendError {
    Transport(TransportError),
    /// No connection within the connect timeout, or the address did not
    /// resolve (a table may name a node whose name only resolves
    /// elsewhere): the loop tries the next node.
    Unreachable(String),
}

impl From<TransportError> for SendError {
    fn from(error: TransportError) -> Self {
        SendError::Transport(error)
    }
}

/// Resolves `HOST:PORT`, preferring the address family the client is bound
/// to.
pub(crate) async fn resolve(addr: &str, prefer_v6: bool) -> Result<SocketAddr, String> {
    if let Ok(parsed) = addr.parse::<SocketAddr>() {
        return Ok(parsed);
    }
    let found: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|error| format!("cannot resolve {addr}: {error}"))?
        .collect();
    found
        .iter()
        .find(|candidate| candidate.is_ipv6() == prefer_v6)
        .or(found.first())
        .copied()
        .ok_or_else(|| format!("{addr} resolves to no address"))
}

/// Checks that `addr` looks like `HOST:PORT` (it is resolved when used).
pub fn check_addr(addr: &str) -> Result<(), ClientError> {
    let invalid = |reason: &str| ClientError::InvalidAddress {
        addr: addr.to_string(),
        reason: reason.to_string(),
    };
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| invalid("expected HOST:PORT"))?;
    if host.is_empty() || host.trim() != host {
        return Err(invalid("expected HOST:PORT"));
    }
    match port.parse::<u16>() {
        Ok(0) => Err(invalid("port 0 is not a node's port")),
        Ok(_) => Ok(()),
        Err(_) => Err(invalid("the port is not a number in 1..65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        for good in [
            "127.0.0.1:7000",
            "localhost:1",
            "[::1]:7000",
            "node-1.example:65535",
        ] {
            assert!(check_addr(good).is_ok(), "{good}");
        }
        for bad in ["", "127.0.0.1", ":7000", "h:0", "h:65536", "h:x", " h:1"] {
            assert!(check_addr(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn literal_addresses_resolve_without_lookup() {
        assert_eq!(
            resolve("127.0.0.1:7000", false).await,
            Ok(SocketAddr::from(([127, 0, 0, 1], 7000)))
        );
        assert!(resolve("no-such-host.invalid:1", false).await.is_err());
    }

    #[test]
    fn aim_prefers_the_named_node_then_untried_ones() {
        let candidates = [Peer::new(None, "a:1"), Peer::new(None, "b:1")];
        let mut aim = Aim::default();
        assert_eq!(aim.pick(&candidates).map(|p| p.addr), Some("a:1".into()));
        aim.failed.push("a:1".into());
        assert_eq!(aim.pick(&candidates).map(|p| p.addr), Some("b:1".into()));
        aim.next = Some(Peer::new(Some(3), "c:1"));
        assert_eq!(aim.pick(&candidates).map(|p| p.addr), Some("c:1".into()));
        assert_eq!(aim.pick(&candidates).map(|p| p.addr), Some("b:1".into()));
        aim.failed.push("b:1".into());
        assert_eq!(aim.pick(&candidates).map(|p| p.addr), Some("a:1".into()));
        assert!(aim.failed.is_empty());
        assert_eq!(aim.pick(&[]), None);
    }
}
