//! The shardflow client: keys, scans, routing and cluster administration
//! over mutual-TLS QUIC, for applications, tools and tests.
//!
//! A [`Client`] starts from seed addresses, loads the routing table
//! (`ClientRequest::Routing`, read linearizably through the metadata group's
//! leader) and caches it, together with the node that last answered for each
//! group, so most requests take one hop to the group's leader.
//!
//! **Retry and redirect contract.** Every call runs within one total
//! deadline ([`ClientConfig::request_timeout`], 10 s by default), each
//! attempt within [`ClientConfig::attempt_timeout`]:
//! - `Redirect{node, addr}` is followed at once (the node becomes the
//!   group's leader hint), up to [`ClientConfig::max_redirects`] in a row;
//!   beyond that the client backs off before following the next one.
//! - `StaleRouting` refreshes the routing table (one refresh at a time per
//!   client) and retries, at once if the table changed, else after a backoff.
//! - `Retry{reason}` (an election, a fenced vShard) backs off and asks the
//!   same node again; a timeout, a lost connection or an unavailable server
//!   backs off and asks the next candidate (leader hint, the group's
//!   members, the seeds). Backoff is exponential with jitter, bounded by
//!   [`ClientConfig::backoff_max`].
//! - `Rejected`, a refused certificate role, a refused TLS handshake and an
//!   undecodable answer end the call at once with a typed [`ClientError`].
//! - When the deadline passes: [`ClientError::Unavailable`], naming the last
//!   cause seen.
//!
//! **Writes are at-least-once from the client's view.** A write whose answer
//! was lost (a timeout, a broken connection) may have been applied; the
//! client retries it. That is safe here: `Put` of the same value and
//! `Delete` are idempotent, so applying one twice leaves the state it
//! leaves once. (As with any retried write, a retried `Put` may land after a
//! concurrent writer's later `Put` of the same key.) Admin calls follow the
//! same rule: a repeated `AddNode` is a no-op, and a bootstrap whose first
//! answer was lost is recognized when the cluster then reports exactly the
//! requested layout.
//!
//! Reads (`get`, scans) are linearizable: served by the group's leader after
//! a read index.
//!
//! Workflow administration (`workflow_list|show|watch|cancel|resume`) rides
//! the same admin request loop; a workflow request sent to any node reaches
//! the node driving it (the node forwards it).

mod admin;
mod config;
mod error;
#[cfg(test)]
mod live_tests;
mod migrate;
mod outcome;
mod ready;
mod request;
mod retry;
mod routing;
mod scan;
mod workflow;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use admin::NodeReport;
pub use config::{load_certs, ClientConfig};
pub use error::ClientError;
pub use ready::{newest_routing, readiness};
pub use request::check_addr;
pub use scan::Pairs;
pub use workflow::{NodeFailure, WorkflowDetail, WorkflowListing};

use crate::certs::PeerIdentity;
use crate::command::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::rpc::{ClientRequest, ClientResponse, NodeRequestV1, NodeResponseV1, RoutingTable};
use crate::transport::{ClusterTls, Transport, TransportConfig};
use crate::vshard::{vshard_of, VSHARDS};

use outcome::{classify_client, Outcome};
use request::{Plan, Prepared};
use routing::{Peer, RouteCache};

/// A cheap, cloneable handle on a client endpoint and its routing cache.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    config: ClientConfig,
    /// The client endpoint is IPv6 (every seed is an IPv6 literal).
    bind_v6: bool,
    cache: Mutex<RouteCache>,
    /// Serializes routing refreshes.
    refresh: tokio::sync::Mutex<()>,
}

impl Client {
    /// A client presenting `tls`'s certificate. Checks the configuration and
    /// the seed addresses; connects lazily. Must run inside a tokio runtime.
    pub fn new(tls: &ClusterTls, config: ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        config.seeds.iter().try_for_each(|seed| check_addr(seed))?;
        let bind_v6 = config
            .seeds
            .iter()
            .all(|seed| seed.parse::<SocketAddr>().is_ok_and(|addr| addr.is_ipv6()));
        let bind: SocketAddr = if bind_v6 {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let transport_config = TransportConfig {
            call_timeout: config.attempt_timeout,
            ..TransportConfig::default()
        };
        let transport =
            Transport::client(bind, tls, transport_config).map_err(ClientError::Endpoint)?;
        Ok(Client {
            inner: Arc::new(Inner {
                transport,
                bind_v6,
                cache: Mutex::new(RouteCache::new(config.seeds.clone(), config.suspect_for)),
                config,
                refresh: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// A client presenting the certificate [`load_certs`] picks in `dir`.
    pub fn from_certs_dir(dir: &Path, config: ClientConfig) -> Result<Client, ClientError> {
        Client::new(&load_certs(dir)?, config)
    }

    /// Who this client's certificate says it is.
    pub fn identity(&self) -> PeerIdentity {
        self.inner.transport.identity()
    }

    /// The settings in force.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Writes `value` under `key`.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        check_size("key", key, MAX_KEY_BYTES)?;
        check_size("value", value, MAX_VALUE_BYTES)?;
        let op = KeyOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        self.key_call(op, expect_done).await
    }

    /// Deletes `key` (deleting an absent key succeeds).
    pub async fn delete(&self, key: &[u8]) -> Result<(), ClientError> {
        check_size("key", key, MAX_KEY_BYTES)?;
        self.key_call(KeyOp::Delete { key: key.to_vec() }, expect_done)
            .await
    }

    /// The value of `key`, linearizably; `None` if absent.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        check_size("key", key, MAX_KEY_BYTES)?;
        let expect = |response| match response {
            ClientResponse::Value(value) => Ok(value),
            other => Err(other),
        };
        self.key_call(KeyOp::Get { key: key.to_vec() }, expect)
            .await
    }

    /// The routing table, fetched now from the metadata group's leader (and
    /// cached).
    pub async fn routing(&self) -> Result<RoutingTable, ClientError> {
        let generation = self.cache().generation();
        self.refresh_routing(generation, self.budget()).await?;
        self.cache()
            .table()
            .cloned()
            .ok_or(ClientError::NotBootstrapped)
    }

    /// Closes the client endpoint (peers see the close at once).
    pub async fn shutdown(&self) {
        self.inner.transport.shutdown().await;
    }

    async fn key_call<T, F>(&self, op: KeyOp, expect: F) -> Result<T, ClientError>
    where
        T: Send,
        F: Fn(ClientResponse) -> Result<T, ClientResponse> + Send,
    {
        self.ensure_routing().await?;
        self.drive(&mut KeyPlan { op, expect }, self.budget()).await
    }

    pub(crate) fn cache(&self) -> MutexGuard<'_, RouteCache> {
        // Held for short, panic-free updates only: recover if poisoned.
        self.inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Checks that `vshard` names one of the 1024 vShards.
pub fn check_vshard(vshard: u64) -> Result<u16, ClientError> {
    u16::try_from(vshard)
        .ok()
        .filter(|&v| v < VSHARDS)
        .ok_or(ClientError::InvalidVShard { vshard })
}

fn check_size(what: &'static str, bytes: &[u8], max: usize) -> Result<(), ClientError> {
    if bytes.len() > max {
        return Err(ClientError::TooLarge {
            what,
            len: bytes.len(),
            max,
        });
    }
    Ok(())
}

fn expect_done(response: ClientResponse) -> Result<(), ClientResponse> {
    match response {
        ClientResponse::Done => Ok(()),
        other => Err(other),
    }
}

/// A request about one vShard, routed to its group.
pub(crate) enum KeyOp {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
    Scan {
        vshard: u16,
        after: Option<Vec<u8>>,
        limit: u32,
    },
}

impl KeyOp {
    fn vshard(&self) -> u16 {
        match self {
            KeyOp::Put { key, .. } | KeyOp::Delete { key } | KeyOp::Get { key } => vshard_of(key),
            KeyOp::Scan { vshard, .. } => *vshard,
        }
    }

    fn request(&self, epoch: u64) -> ClientRequest {
        match self {
            KeyOp::Put { key, value } => ClientRequest::Put {
                key: key.clone(),
                value: value.clone(),
                epoch,
            },
            KeyOp::Delete { key } => ClientRequest::Delete {
                key: key.clone(),
                epoch,
            },
            KeyOp::Get { key } => ClientRequest::Get {
                key: key.clone(),
                epoch,
            },
            KeyOp::Scan {
                vshard,
                after,
                limit,
            } => ClientRequest::ScanVShard {
                vshard: *vshard,
                after: after.clone(),
                limit: *limit,
                epoch,
            },
        }
    }
}

/// A [`KeyOp`] and the answer it expects.
pub(crate) struct KeyPlan<F> {
    pub(crate) op: KeyOp,
    pub(crate) expect: F,
}

impl<T, F> Plan for KeyPlan<F>
where
    T: Send,
    F: Fn(ClientResponse) -> Result<T, ClientResponse> + Send,
{
    type Answer = T;

    fn prepare(&self, cache: &RouteCache) -> Result<Prepared, ClientError> {
        let route = cache.route(self.op.vshard())?;
        Ok(Prepared {
            group: Some(route.group),
            request: NodeRequestV1::Client(self.op.request(route.epoch)),
            candidates: cache.candidates(route.group),
            generation: cache.generation(),
        })
    }

    fn classify(&self, peer: &Peer, response: NodeResponseV1) -> Outcome<T> {
        classify_client(peer, response, &self.expect)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn vshard_numbers_are_checked() {
        assert_eq!(check_vshard(0).ok(), Some(0));
        assert_eq!(check_vshard(1023).ok(), Some(1023));
        for bad in [1024, 5000, 70_000, u64::MAX] {
            assert!(matches!(
                check_vshard(bad),
                Err(ClientError::InvalidVShard { vshard }) if vshard == bad
            ));
        }
    }

    #[test]
    fn key_requests_carry_the_route_epoch() {
        let mut cache = RouteCache::new(vec!["10.0.0.1:7000".into()], Duration::from_secs(1));
        cache.install(routing::tests::table(4));
        let plan = KeyPlan {
            op: KeyOp::Get {
                key: b"user:1".to_vec(),
            },
            expect: expect_done,
        };
        let prepared = plan.prepare(&cache).ok();
        let vshard = vshard_of(b"user:1");
        let group = 1 + u64::from(vshard % 2);
        assert!(prepared.as_ref().is_some_and(|p| p.group == Some(group)));
        assert!(matches!(
            prepared.map(|p| p.request),
            Some(NodeRequestV1::Client(ClientRequest::Get { epoch: 4, .. }))
        ));
    }

    #[test]
    fn oversized_keys_are_refused_locally() {
        let key = vec![0u8; MAX_KEY_BYTES + 1];
        assert!(matches!(
            check_size("key", &key, MAX_KEY_BYTES),
            Err(ClientError::TooLarge { what: "key", .. })
        ));
    }
}
