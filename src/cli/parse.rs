//! Argument values clap cannot check: node specs, address lists, vShard
//! numbers, workflow ids. Every refusal is one line naming the bad value and the expected
//! form, before anything is sent or written.

use std::net::{SocketAddr, ToSocketAddrs};

use shardflow::node::client::{check_addr, check_vshard};
use shardflow::workflow::id::InvalidWorkflowId;
use shardflow::workflow::WorkflowId;

use super::CliError;

/// `N=HOST:PORT` -> `(N, "HOST:PORT")`.
pub fn node_spec(spec: &str) -> Result<(u64, String), CliError> {
    let invalid = |why: String| {
        CliError::Input(format!(
            "invalid node {spec:?}: {why} (expected N=HOST:PORT, e.g. 1=127.0.0.1:7001)"
        ))
    };
    let (id, addr) = spec
        .split_once('=')
        .ok_or_else(|| invalid("no '='".to_string()))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| invalid(format!("{id:?} is not a node id")))?;
    check_addr(addr).map_err(|error| invalid(error.to_string()))?;
    Ok((id, addr.to_string()))
}

/// `HOST:PORT[,HOST:PORT..]` -> the addresses.
pub fn cluster_list(list: &str) -> Result<Vec<String>, CliError> {
    let addrs: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|addr| !addr.is_empty())
        .map(str::to_string)
        .collect();
    if addrs.is_empty() {
        return Err(CliError::Input(
            "--cluster is empty (expected HOST:PORT[,HOST:PORT..])".to_string(),
        ));
    }
    for addr in &addrs {
        check_addr(addr).map_err(|error| CliError::Input(format!("--cluster: {error}")))?;
    }
    Ok(addrs)
}

/// A workflow id, `wf-<node>-<serial>`.
pub fn workflow_id(id: &str) -> Result<WorkflowId, CliError> {
    id.trim()
        .parse()
        .map_err(|error: InvalidWorkflowId| CliError::Input(error.to_string()))
}

/// A vShard number, checked against the 1024 vShards.
pub fn vshard(vshard: u64) -> Result<u16, CliError> {
    Ok(check_vshard(vshard)?)
}

/// A listen address, `HOST:PORT` (a name resolves to its first address).
pub fn listen_addr(listen: &str) -> Result<SocketAddr, CliError> {
    let invalid = |why: String| CliError::Input(format!("invalid --listen {listen:?}: {why}"));
    check_addr(listen)
        .or_else(|error| match listen.rsplit_once(':') {
            // Port 0 is fine to listen on (the OS picks one).
            Some((host, "0")) if !host.is_empty() => Ok(()),
            _ => Err(error),
        })
        .map_err(|error| invalid(error.to_string()))?;
    listen
        .to_socket_addrs()
        .map_err(|error| invalid(error.to_string()))?
        .next()
        .ok_or_else(|| invalid("resolves to no address".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_specs() {
        assert_eq!(
            node_spec("1=127.0.0.1:7001").ok(),
            Some((1, "127.0.0.1:7001".to_string()))
        );
        for bad in ["1", "x=127.0.0.1:7001", "1=127.0.0.1", "1=:7001", "=h:1"] {
            let error = node_spec(bad).err().map(|e| e.to_string());
            assert!(
                error
                    .as_deref()
                    .is_some_and(|e| e.contains("expected N=HOST:PORT")),
                "{bad}: {error:?}"
            );
        }
    }

    #[test]
    fn cluster_lists() {
        assert_eq!(
            cluster_list("a:1, b:2,").ok(),
            Some(vec!["a:1".to_string(), "b:2".to_string()])
        );
        assert!(cluster_list(" , ").is_err());
        assert!(cluster_list("a:1,b").is_err());
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            listen_addr("127.0.0.1:0").ok(),
            Some(SocketAddr::from(([127, 0, 0, 1], 0)))
        );
        assert!(listen_addr("127.0.0.1").is_err());
        assert!(listen_addr("127.0.0.1:x").is_err());
    }

    #[test]
    fn vshards() {
        assert_eq!(vshard(1023).ok(), Some(1023));
        assert!(vshard(1024).is_err());
    }
}
