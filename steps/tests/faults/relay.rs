//! A UDP relay for fault injection between in-process nodes, no mocks: the
//! real QUIC traffic of a node passes through it, and a test cuts and heals
//! it per sender.
//!
//! The relay listens on its own address (advertise it in the metadata as
//! the node's address, so peers reach the node through it) and forwards
//! each sender's datagrams to the node through a socket of its own for that
//! sender, so the node's replies find their way back. A cut sender's
//! datagrams are dropped both ways; a QUIC connection survives a short cut
//! (it retransmits) and dies once the cut outlasts the idle timeout.
//!
//! The relay also counts, per sender, the QUIC v1 *Initial* packets it saw
//! (a long header of type Initial starts every new handshake), forwarded or
//! dropped: a test tells "the peer dials a new connection" from them.
//!
//! Dropping the [`Relay`] stops it.

#![allow(dead_code)] // each test file uses its own part of the helper

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::UdpSocket;
use tokio::task::{JoinHandle, JoinSet};

/// Which senders pass: every sender but the exceptions, or only them.
#[derive(Debug)]
struct Rules {
    pass_by_default: bool,
    exceptions: HashSet<SocketAddr>,
}

impl Rules {
    fn passes(&self, from: SocketAddr) -> bool {
        self.pass_by_default != self.exceptions.contains(&from)
    }
}

/// What the relay saw of one sender.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Datagrams forwarded (both ways).
    pub forwarded: u64,
    /// Datagrams dropped by a cut (both ways).
    pub dropped: u64,
    /// QUIC Initial packets from the sender, forwarded or not.
    pub initials_seen: u64,
    /// QUIC Initial packets from the sender that were forwarded.
    pub initials_forwarded: u64,
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    rules: Mutex<Rules>,
    stats: Mutex<HashMap<SocketAddr, SenderStats>>,
}

impl Shared {
    fn rules(&self) -> MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> MutexGuard<'_, HashMap<SocketAddr, SenderStats>> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a datagram of `from`'s flow passes now; counts it.
    fn admit(&self, from: SocketAddr, datagram: &[u8], inbound: bool) -> bool {
        // The node's own datagrams to its own address always pass.
        let passes = from == self.target || self.rules().passes(from);
        let mut stats = self.stats();
        let entry = stats.entry(from).or_default();
        if passes {
            entry.forwarded += 1;
        } else {
            entry.dropped += 1;
        }
        if inbound && is_quic_initial(datagram) {
            entry.initials_seen += 1;
            if passes {
                entry.initials_forwarded += 1;
            }
        }
        passes
    }
}

/// Whether a datagram starts with a QUIC v1 Initial packet: long header
/// (bit 7), fixed bit (bit 6), type 0 (bits 5-4), version 1.
pub fn is_quic_initial(datagram: &[u8]) -> bool {
    datagram.len() >= 5 && datagram[0] & 0xf0 == 0xc0 && datagram[1..5] == [0, 0, 0, 1]
}

/// A running relay in front of one address.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts a relay on a fresh loopback port in front of `target`; every
    /// sender passes until a rule says otherwise.
    pub async fn start(target: SocketAddr) -> std::io::Result<Relay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            rules: Mutex::new(Rules {
                pass_by_default: true,
                exceptions: HashSet::new(),
            }),
            stats: Mutex::new(HashMap::new()),
        });
        let task = tokio::spawn(serve(front, Arc::clone(&shared)));
        Ok(Relay { addr, shared, task })
    }

    /// The relay's own address: advertise it as the node's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Drops `sender`'s datagrams (and the replies to it) from now on.
    pub fn cut(&self, sender: SocketAddr) {
        let mut rules = self.shared.rules();
        if rules.pass_by_default {
            rules.exceptions.insert(sender);
        } else {
            rules.exceptions.remove(&sender);
        }
    }

    /// Lets `sender` pass again.
    pub fn heal(&self, sender: SocketAddr) {
        let mut rules = self.shared.rules();
        if rules.pass_by_default {
            rules.exceptions.remove(&sender);
        } else {
            rules.exceptions.insert(sender);
        }
    }

    /// Drops every sender (the target's own datagrams excepted).
    pub fn cut_all(&self) {
        let mut rules = self.shared.rules();
        rules.pass_by_default = false;
        rules.exceptions.clear();
    }

    /// Passes only `senders` (and the target's own datagrams).
    pub fn pass_only(&self, senders: impl IntoIterator<Item = SocketAddr>) {
        let mut rules = self.shared.rules();
        rules.pass_by_default = false;
        rules.exceptions = senders.into_iter().collect();
    }

    /// Every sender passes again.
    pub fn heal_all(&self) {
        let mut rules = self.shared.rules();
        rules.pass_by_default = true;
        rules.exceptions.clear();
    }

    /// What the relay saw of `sender` so far.
    pub fn stats(&self, sender: SocketAddr) -> SenderStats {
        self.shared
            .stats()
            .get(&sender)
            .copied()
            .unwrap_or_default()
    }
}

impl Relay {
    /// Stops the relay now (dropping it does too).
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Aborting the front task drops its set of reply tasks, which
        // aborts them too.
        self.task.abort();
    }
}

/// The front loop: each sender gets its own socket towards the target, and
/// a task relaying the target's replies back to it.
async fn serve(front: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut towards: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut replies = JoinSet::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((len, from)) = front.recv_from(&mut buf).await else {
            // An ICMP error surfaced on the socket: keep serving.
            continue;
        };
        let datagram = &buf[..len];
        if !shared.admit(from, datagram, true) {
            continue;
        }
        let socket = match towards.get(&from) {
            Some(socket) => Arc::clone(socket),
            None => {
                let Ok(socket) = open_towards(shared.target).await else {
                    continue;
                };
                let socket = Arc::new(socket);
                replies.spawn(relay_replies(
                    Arc::clone(&socket),
                    Arc::clone(&front),
                    from,
                    Arc::clone(&shared),
                ));
                towards.insert(from, Arc::clone(&socket));
                socket
            }
        };
        let _ = socket.send(datagram).await;
    }
}

async fn open_towards(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(target).await?;
    Ok(socket)
}

/// Relays the target's datagrams for `sender` back to it, unless cut.
async fn relay_replies(
    socket: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    sender: SocketAddr,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok(len) = socket.recv(&mut buf).await else {
            continue;
        };
        if shared.admit(sender, &buf[..len], false) {
            let _ = front.send_to(&buf[..len], sender).await;
        }
    }
}
