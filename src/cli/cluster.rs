//! `shardflow cluster bootstrap|add-node|remove-node|status`.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use shardflow::node::client::{ClientConfig, ClientError, NodeReport};

use super::args::ClusterArgs;
use super::status::ClusterView;
use super::{parse, run_with_config, with_client, CliError, Output};

/// How many data groups a bootstrap creates, of how many replicas.
pub struct Layout {
    pub groups: u64,
    pub replicas: u64,
}

/// Bootstraps the cluster of `specs` (`N=HOST:PORT`), then waits until
/// every group has a leader and owns its vShards, all within `timeout_secs`
/// (a spinner on stderr meanwhile, when it is a terminal).
pub fn bootstrap(
    specs: &[String],
    layout: Layout,
    certs: &Path,
    timeout_secs: u64,
    json: bool,
) -> Result<Output, CliError> {
    let Layout { groups, replicas } = layout;
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
        let spinner = spinner("bootstrapping, then waiting until every group is ready");
        let ready = async {
            client.bootstrap(nodes, groups, replicas).await?;
            client
                .wait_ready(timeout.saturating_sub(started.elapsed()))
                .await
        }
        .await;
        if let Some(spinner) = spinner {
            spinner.finish_and_clear();
        }
        ready?;
        let took = started.elapsed();
        if json {
            return Ok(Output::Json(json!({
                "nodes": count,
                "groups": groups,
                "replicas": replicas,
                "ready_after_ms": took.as_millis() as u64,
            })));
        }
        Ok(Output::Text(format!(
            "bootstrapped {count} nodes, {groups} data groups of {replicas} replicas; ready after {:.1}s",
            took.as_secs_f64()
        )))
    })
}

/// A spinner on stderr with `message`, only when stderr is a terminal.
fn spinner(message: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let spinner = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {msg}") {
        spinner.set_style(style);
    }
    spinner.set_message(message.to_string());
    spinner.enable_steady_tick(Duration::from_millis(120));
    Some(spinner)
}

/// Registers the node of `spec` (`N=HOST:PORT`).
pub fn add_node(spec: &str, args: &ClusterArgs, json: bool) -> Result<Output, CliError> {
    let (id, addr) = parse::node_spec(spec)?;
    with_client(args, |client| async move {
        client.add_node(id, &addr).await?;
        Ok(match json {
            true => Output::Json(json!({ "node": id, "addr": addr, "registered": true })),
            false => Output::Text(format!("node {id} registered at {addr}")),
        })
    })
}

/// Forgets node `id`.
pub fn remove_node(id: u64, args: &ClusterArgs, json: bool) -> Result<Output, CliError> {
    with_client(args, |client| async move {
        client.remove_node(id).await?;
        Ok(match json {
            true => Output::Json(json!({ "node": id, "removed": true })),
            false => Output::Text(format!("node {id} removed")),
        })
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
