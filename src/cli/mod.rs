//! The commands behind `shardflow`: each takes its parsed arguments and
//! returns what to print ([`Output`]) or a [`CliError`], which `main` prints
//! as one line. Table formatting lives in `table`, the merged cluster view in
//! `status`, argument values in `parse`, workflow operations in `workflow`,
//! migration submission and its progress bar in `migrate`.

pub mod args;
mod bench;
mod certs;
mod cluster;
mod config;
mod demo;
mod journal;
mod kv;
mod migrate;
mod node;
mod parse;
mod status;
mod table;
mod workflow;

use std::future::Future;
use std::time::Duration;

use shardflow::audit::AuditError;
use shardflow::node::certs::CertError;
use shardflow::node::client::{Client, ClientConfig, ClientError};
use shardflow::node::server::NodeError;

use args::{ClusterArgs, ClusterCommand, Command, KvCommand};

/// How long a finished command waits for its connections to close.
const CLIENT_CLOSE_TIMEOUT: Duration = Duration::from_millis(300);

/// What a successful command prints on stdout.
pub enum Output {
    /// Nothing.
    Nothing,
    /// Text, printed with a final newline.
    Text(String),
    /// A JSON document, pretty-printed.
    Json(serde_json::Value),
    /// Raw bytes (a value), printed with a final newline.
    Bytes(Vec<u8>),
}

/// Why a command failed; displayed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("bench: {0}")]
    Bench(#[from] shardflow::bench::BenchError),
    #[error(transparent)]
    Demo(#[from] shardflow::demo::DemoError),
    /// `shardflow demo` ran, and a check failed.
    #[error("the demo did not verify: {0}")]
    NotVerified(String),
    /// A bad argument value (malformed address, vShard out of range...).
    #[error("{0}")]
    Input(String),
    /// `kv get` of an absent key.
    #[error("key {0:?} not found")]
    NotFound(String),
    /// A local system call failed.
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// `workflow watch` of a workflow that settled other than `Completed`.
    #[error("workflow {id} ended {phase}{reason}")]
    NotCompleted {
        id: String,
        phase: &'static str,
        /// `": why"`, or empty.
        reason: String,
    },
}

/// Runs one command.
pub fn run(command: Command) -> Result<Output, CliError> {
    match command {
        Command::Node(args) => node::run(args),
        Command::Cluster(command) => run_cluster(command),
        Command::Kv(command) => run_kv(command),
        Command::VshardOf { key, json } => kv::vshard_of(&key, json),
        Command::Journal(command) => journal::run(command),
        Command::Workflow(command) => workflow::run(command),
        Command::Migrate(command) => migrate::run(command),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
    }
}

fn run_cluster(command: ClusterCommand) -> Result<Output, CliError> {
    match command {
        ClusterCommand::Certs { out, nodes, json } => certs::run(&out, &nodes, json),
        ClusterCommand::Bootstrap {
            nodes,
            groups,
            replicas,
            certs,
            timeout_secs,
            json,
        } => cluster::bootstrap(
            &nodes,
            cluster::Layout { groups, replicas },
            &certs,
            timeout_secs,
            json,
        ),
        ClusterCommand::AddNode {
            node,
            cluster,
            json,
        } => cluster::add_node(&node, &cluster, json),
        ClusterCommand::RemoveNode { id, cluster, json } => {
            cluster::remove_node(id, &cluster, json)
        }
        ClusterCommand::Status { cluster, json } => cluster::status(&cluster, json),
    }
}

fn run_kv(command: KvCommand) -> Result<Output, CliError> {
    match command {
        KvCommand::Put {
            key,
            value,
            cluster,
            json,
        } => kv::put(&key, &value, &cluster, json),
        KvCommand::Get { key, cluster, json } => kv::get(&key, &cluster, json),
        KvCommand::Delete { key, cluster, json } => kv::delete(&key, &cluster, json),
        KvCommand::Scan {
            vshard,
            count,
            cluster,
            json,
        } => kv::scan(vshard, count, &cluster, json),
    }
}

/// Logs to stderr: `shardflow node` filtered by `RUST_LOG` (default
/// `info`); other commands only when `RUST_LOG` is set, so their stderr
/// stays one line on error.
pub fn init_logging(command: &Command) {
    use tracing_subscriber::EnvFilter;
    let filter = match (command, EnvFilter::try_from_default_env()) {
        (_, Ok(filter)) => filter,
        (Command::Node(_), Err(_)) => EnvFilter::new("info"),
        (_, Err(_)) => return,
    };
    // Fails only if a subscriber is already set: keep that one.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// A tokio runtime for one command.
fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| CliError::Io {
            what: "start the async runtime",
            source,
        })
}

/// Runs `work` with a client for `args` (checked before any network use),
/// then closes the client's connections.
fn with_client<T, F, Fut>(args: &ClusterArgs, work: F) -> Result<T, CliError>
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<T, CliError>>,
{
    let seeds = parse::cluster_list(&args.cluster)?;
    let mut config = ClientConfig::new(seeds);
    config.request_timeout = Duration::from_secs(args.timeout_secs);
    config.attempt_timeout = config.attempt_timeout.min(config.request_timeout);
    config.status_timeout = config.status_timeout.min(config.request_timeout);
    run_with_config(&args.certs, config, work)
}

fn run_with_config<T, F, Fut>(
    certs: &std::path::Path,
    config: ClientConfig,
    work: F,
) -> Result<T, CliError>
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<T, CliError>>,
{
    let tls = shardflow::node::client::load_certs(certs)?;
    runtime()?.block_on(async {
        let client = Client::new(&tls, config)?;
        let result = work(client.clone()).await;
        // Lets the close reach the nodes; a slow drain is not our problem.
        let _ = tokio::time::timeout(CLIENT_CLOSE_TIMEOUT, client.shutdown()).await;
        result
    })
}
