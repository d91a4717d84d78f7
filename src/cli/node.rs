//! `shardflow node`: runs one node until SIGTERM or SIGINT (ctrl-c), then
//! shuts it down cleanly.
//!
//! Installs the migration workflows (`steps::launcher`) before resuming
//! the journal. Prints exactly one line on stdout, `node N listening on
//! ADDR` (with `--json`, `{"node": N, "listening": "ADDR"}`), once the node
//! serves and has resumed every unfinished workflow of its journal
//! (scripts and tests wait for it); logs go to stderr through tracing,
//! filtered by `RUST_LOG` (default `info`).
//!
//! Settings come from the flags, then `--config FILE` (see `config`), then
//! the defaults.

use tokio::signal::unix::{signal, SignalKind};

use std::time::Duration;

use shardflow::node::server::{MigrationLimits, Node, NodeConfig};

use super::args::NodeArgs;
use super::{config, parse, runtime, CliError, Output};

pub fn run(args: NodeArgs) -> Result<Output, CliError> {
    shardflow::steps::failpoint::setup_from_env(); // FAILPOINTS, SHARDFLOW_FAILPOINTS (test builds)
    let json = args.json;
    let settings = config::resolve(args)?;
    let listen = parse::listen_addr(&settings.listen)?;
    if !settings.certs.is_dir() {
        return Err(CliError::Input(format!(
            "certificate directory {} does not exist (create it with `shardflow cluster certs`)",
            settings.certs.display()
        )));
    }
    std::fs::create_dir_all(&settings.data).map_err(|source| CliError::Io {
        what: "create the data directory",
        source,
    })?;
    let mut config = NodeConfig::new(settings.id, listen, settings.data, settings.certs);
    config.limits = MigrationLimits {
        max_concurrent: settings.max_migrations,
        copy_bytes_per_sec: settings.copy_rate,
        default_pause_budget_ms: settings.pause_budget_ms,
        ..MigrationLimits::default()
    };
    config.migration.ghost_ttl = Duration::from_millis(settings.ghost_ttl_ms);
    runtime()?.block_on(serve(config, json))
}

async fn serve(config: NodeConfig, json: bool) -> Result<Output, CliError> {
    let signal_error = |source| CliError::Io {
        what: "install signal handlers",
        source,
    };
    // Installed before the node starts, so no signal is missed.
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let node = Node::start(config).await?;
    // The migration workflows, before the journal's unfinished ones resume.
    shardflow::steps::launcher::install(&node);
    // Ready only once every unfinished workflow is driven again (DESIGN §2).
    if let Err(error) = node.resume_workflows().await {
        node.shutdown().await;
        return Err(error.into());
    }
    match json {
        true => println!(
            "{}",
            serde_json::json!({ "node": node.id(), "listening": node.local_addr().to_string() })
        ),
        false => println!("node {} listening on {}", node.id(), node.local_addr()),
    }
    let received = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(signal = received, node = node.id(), "shutting down");
    node.shutdown().await;
    tracing::info!(node = node.id(), "stopped");
    Ok(Output::Nothing)
}
