//! [`ClientConfig`] (seeds, deadlines, backoff, scan bounds) and
//! [`load_certs`], which picks the certificate a tool presents.

use std::path::Path;
use std::time::Duration;

use crate::certs::{PeerIdentity, CA_CERT_FILE};
use crate::transport::ClusterTls;

use super::error::ClientError;

/// Client settings. [`ClientConfig::new`] gives the defaults for `seeds`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Node addresses (`HOST:PORT`) to start from; the routing table names
    /// the others.
    pub seeds: Vec<String>,
    /// Total deadline of one call, retries and redirects included.
    pub request_timeout: Duration,
    /// Bound on one attempt (one request to one node).
    pub attempt_timeout: Duration,
    /// Bound on connecting to a node (part of an attempt): how long a dead
    /// node delays a call.
    pub connect_timeout: Duration,
    /// How long a node that could not be reached is tried last.
    pub suspect_for: Duration,
    /// Bound on asking one node its status: a down node is reported as
    /// unreachable after this.
    pub status_timeout: Duration,
    /// First backoff before a retry; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Largest backoff between two attempts.
    pub backoff_max: Duration,
    /// The fixed wait before asking again about a vShard that a migration
    /// has fenced (no backoff: the fence lasts one cut-over, a bounded write
    /// pause, and a short poll sees its end within this much).
    pub fenced_poll: Duration,
    /// Redirects followed in a row before backing off (a leader change in
    /// flight can bounce a request between two nodes).
    pub max_redirects: u32,
    /// Pairs asked for per scan page.
    pub scan_page_pairs: u32,
    /// vShards scanned at once by `scan_all` / `count_all`.
    pub scan_concurrency: usize,
}

impl ClientConfig {
    /// The defaults: 10 s per call, 3 s per attempt, 1 s to connect, an
    /// unreachable node tried last for 5 s, 2 s per status query, backoff
    /// 25 ms..1 s, a fenced vShard asked again every 2 ms, 8 redirects,
    /// pages of 512 pairs, 16 vShards scanned at once.
    pub fn new(seeds: Vec<String>) -> Self {
        ClientConfig {
            seeds,
            request_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
            suspect_for: Duration::from_secs(5),
            status_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
            fenced_poll: Duration::from_millis(2),
            max_redirects: 8,
            scan_page_pairs: 512,
            scan_concurrency: 16,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        let problem = if self.seeds.is_empty() {
            return Err(ClientError::NoSeeds);
        } else if [
            self.request_timeout,
            self.attempt_timeout,
            self.connect_timeout,
            self.fenced_poll,
        ]
        .iter()
        .any(Duration::is_zero)
        {
            "every timeout and fenced_poll must be positive"
        } else if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            "backoff_initial must be positive and at most backoff_max"
        } else if self.scan_page_pairs == 0 || self.scan_concurrency == 0 {
            "scan_page_pairs and scan_concurrency must be positive"
        } else {
            return Ok(());
        };
        Err(ClientError::InvalidRequest(problem.to_string()))
    }
}

/// Loads the certificate a tool presents from `dir`: the admin certificate
/// when the directory holds `admin.pem`, otherwise the client certificate.
/// Either way `ca.pem` is the trust root.
pub fn load_certs(dir: &Path) -> Result<ClusterTls, ClientError> {
    let missing = |reason: String| ClientError::Certificates {
        dir: dir.to_path_buf(),
        reason,
    };
    if !dir.is_dir() {
        return Err(missing("no such directory".to_string()));
    }
    if !dir.join(CA_CERT_FILE).is_file() {
        return Err(missing(format!(
            "{CA_CERT_FILE} is missing (create certificates with `shardflow cluster certs`)"
        )));
    }
    let admin = PeerIdentity::admin();
    let identity = if dir.join(format!("{}.pem", admin.file_stem())).is_file() {
        admin
    } else {
        PeerIdentity::client()
    };
    let stem = identity.file_stem();
    for file in [format!("{stem}.pem"), format!("{stem}.key")] {
        if !dir.join(&file).is_file() {
            return Err(missing(format!("{file} is missing")));
        }
    }
    ClusterTls::load(dir, identity).map_err(|error| ClientError::certificates(dir, &error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{write_cluster_certs, Role};

    #[test]
    fn defaults_are_valid_and_seeds_are_required() {
        assert!(ClientConfig::new(vec!["127.0.0.1:1".into()])
            .validate()
            .is_ok());
        assert!(matches!(
            ClientConfig::new(Vec::new()).validate(),
            Err(ClientError::NoSeeds)
        ));
    }

    #[test]
    fn admin_certificate_wins_else_client() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        write_cluster_certs(dir.path(), &[1])?;
        assert_eq!(load_certs(dir.path())?.identity().role(), Role::Admin);
        std::fs::remove_file(dir.path().join("admin.pem"))?;
        assert_eq!(load_certs(dir.path())?.identity().role(), Role::Client);
        std::fs::remove_file(dir.path().join("client.key"))?;
        let error = load_certs(dir.path()).err().map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.ends_with("client.key is missing")),
            "{error:?}"
        );
        Ok(())
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let error = load_certs(Path::new("/nonexistent/shardflow-certs"))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("certificates in /nonexistent/shardflow-certs: no such directory")
        );
    }
}
