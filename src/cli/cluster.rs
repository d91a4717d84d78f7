//! `shardflow cluster bootstrap|add-node|remove-node|status`.

use std::path::Path;
use std::time::{Duration, Instant};

use shardflow::node::client::{ClientConfig, ClientError, NodeReport};

use super::args::ClusterArgs;
use super::status::ClusterView;
use super::{parse, run_with_config, with_client, CliError, Output};

/// Bootstraps the cluster of `specs` (`N=HOST:PORT`), then waits until
/// every group has a leader and owns its vShards, all within `timeout_secs`.
pub fn bootstrap(
    specs: &[String],
    groups: u64,
    replicas: u64,
    certs: &Path,
    timeout_secs: u64,
) -> Result<Output, CliError> {
    let nodes = specs
        .iter()
        .map(|spec| parse::node_spec(spec))
        .collect::<Result<Vec<_>, _>>()?;
    let timeout = Duration::from_secs(timeout_secs);
    let mut config = ClientConfig::new(nodes.iter().map(|(_, addr)| addr.clone()).collect());
    config.request_timeout = timeout;
    config.attempt_timeout = config.attempt_timeout.min(timeout);
    let count = nodes.len();
    run_with_config(certs, config, |client| async move {
        let started = Instant::now();
        client.bootstrap(nodes, groups, replicas).await?;
        client
            .wait_ready(timeout.saturating_sub(started.elapsed()))
            .await?;
        Ok(Output::Text(format!(
            "bootstrapped {count} nodes, {groups} data groups of {replicas} replicas; ready after {:.1}s",
            started.elapsed().as_secs_f64()
        )))
    })
}

/// Registers the node of `spec` (`N=HOST:PORT`).
pub fn add_node(spec: &str, args: &ClusterArgs) -> Result<Output, CliError> {
    let (id, addr) = parse::node_spec(spec)?;
    with_client(args, |client| async move {
        client.add_node(id, &addr).await?;
        Ok(Output::Text(format!("node {id} registered at {addr}")))
    })
}

/// Forgets node `id`.
pub fn remove_node(id: u64, args: &ClusterArgs) -> Result<Output, CliError> {
    with_client(args, |client| async move {
        client.remove_node(id).await?;
        Ok(Output::Text(format!("node {id} removed")))
    })
}

/// Every node's view, merged; fails only if no node answers.
pub fn status(args: &ClusterArgs, json: bool) -> Result<Output, CliError> {
    let reports = with_client(args, |client| async move { Ok(client.status_all().await) })?;
    let reports = some_answer(reports)?;
    let view = ClusterView::build(&reports);
    if json {
        return Ok(Output::Json(serde_json::to_value(&view)?));
    }
    Ok(Output::Text(view.render()))
}

/// The reports, unless no node answered: then the reason, a refused
/// certificate first (asking again will not help).
fn some_answer(reports: Vec<NodeReport>) -> Result<Vec<NodeReport>, CliError> {
    if reports.iter().any(|report| report.status.is_ok()) {
        return Ok(reports);
    }
    let mut errors: Vec<ClientError> = reports
        .into_iter()
        .filter_map(|report| report.status.err())
        .collect();
    let denied = errors
        .iter()
        .position(|error| matches!(error, ClientError::PermissionDenied(_)));
    match denied {
        Some(index) => Err(errors.swap_remove(index).into()),
        None => Err(CliError::Input(format!(
            "no node answered: {}",
            errors
                .first()
                .map_or_else(|| "no node to ask".to_string(), ToString::to_string)
        ))),
    }
}
