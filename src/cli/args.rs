//! The command line, as clap parses it. Only syntax lives here (which
//! flags, which types); what the values mean is checked by the commands, so
//! a bad value is a one-line error with exit code 1, and only a malformed
//! command line exits 2.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use shardflow::workflow::WorkflowId;

/// shardflow: durable, journaled data migrations inside a live multi-Raft
/// cluster.
#[derive(Parser)]
#[command(
    name = "shardflow",
    version,
    about = "Durable, journaled data migrations inside a live multi-Raft cluster",
    after_help = "Example: a local 3-node cluster\n  \
        shardflow cluster certs --out certs --nodes 1,2,3\n  \
        shardflow node --id 1 --listen 127.0.0.1:7001 --data n1 --certs certs   (and nodes 2, 3)\n  \
        shardflow cluster bootstrap --node 1=127.0.0.1:7001 --node 2=127.0.0.1:7002 \
        --node 3=127.0.0.1:7003 --groups 3 --replicas 3 --certs certs\n  \
        shardflow kv put hello world --cluster 127.0.0.1:7001 --certs certs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run one cluster node until SIGTERM or ctrl-c, then shut it down cleanly.
    ///
    /// Prints `node N listening on ADDR` once serving; logs go to stderr
    /// (RUST_LOG, default info). Restarted with the same --data, the node
    /// rejoins with its data.
    ///
    /// Example: shardflow node --id 1 --listen 127.0.0.1:7001 --data /var/lib/shardflow/n1 --certs ./certs
    Node(NodeArgs),
    /// Cluster administration: certificates, bootstrap, membership, status.
    ///
    /// Example: shardflow cluster status --cluster 127.0.0.1:7001 --certs ./certs
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Write, read, delete and scan keys.
    ///
    /// Example: shardflow kv get user:1 --cluster 127.0.0.1:7001 --certs ./certs
    #[command(subcommand)]
    Kv(KvCommand),
    /// Print the vShard (0..1024) a key belongs to; no cluster needed.
    ///
    /// Example: shardflow vshard-of user:1
    VshardOf {
        /// The key.
        key: String,
        /// Print JSON instead of the bare number.
        #[arg(long)]
        json: bool,
    },
    /// Operate the workflows (migrations) of a running cluster: list, show,
    /// watch, cancel, resume. Any node answers for any workflow.
    ///
    /// Example: shardflow workflow list --cluster 127.0.0.1:7001 --certs ./certs
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Start a migration: move a vShard to another group, or a group's
    /// replica to another node. Prints the workflow id; with --wait, shows
    /// its progress and exits 0 only if it completes.
    ///
    /// Example: shardflow migrate vshard 17 --to-group 2 --wait --cluster 127.0.0.1:7001 --certs ./certs
    #[command(subcommand)]
    Migrate(MigrateCommand),
    /// Audit a stopped node's workflow journal (no cluster needed).
    ///
    /// Example: shardflow journal verify --data /var/lib/shardflow/n1
    #[command(subcommand)]
    Journal(JournalCommand),
}

#[derive(Args)]
pub struct NodeArgs {
    /// This node's id (its certificate is node-ID.pem in --certs).
    #[arg(long)]
    pub id: u64,
    /// Address to listen on (UDP), HOST:PORT.
    #[arg(long)]
    pub listen: String,
    /// Data directory (Raft logs, state machines, journal); created if missing.
    #[arg(long)]
    pub data: PathBuf,
    /// Certificate directory (ca.pem, node-ID.pem, node-ID.key).
    #[arg(long, env = "SHARDFLOW_CERTS")]
    pub certs: PathBuf,
    /// Live vShard migrations allowed at once; a submission beyond it is refused.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_migrations: u32,
    /// Base-copy rate limit of the migrations this node drives, in bytes per
    /// second (default: unlimited).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub copy_rate: Option<u64>,
    /// Write-pause budget of a `migrate vshard` that names none, in ms.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub pause_budget_ms: u64,
    /// How long the source keeps a moved vShard's copy (forwarding stale
    /// requests) before deleting it, in ms.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub ghost_ttl_ms: u64,
}

/// Where the cluster is and how to authenticate to it.
#[derive(Args)]
pub struct ClusterArgs {
    /// Node addresses to start from: HOST:PORT[,HOST:PORT..].
    #[arg(long, env = "SHARDFLOW_CLUSTER")]
    pub cluster: String,
    /// Certificate directory: presents admin.pem when present, else client.pem.
    #[arg(long, env = "SHARDFLOW_CERTS")]
    pub certs: PathBuf,
    /// Give up after this many seconds (retries and redirects included).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_secs: u64,
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Write the cluster CA and the node, admin and client certificates.
    ///
    /// Writes ca.pem, ca.key, node-N.pem, node-N.key, admin.pem, admin.key,
    /// client.pem, client.key. On a directory that already holds a CA, only
    /// the missing certificates are issued, from that CA; no file is ever
    /// overwritten.
    ///
    /// Example: shardflow cluster certs --out ./certs --nodes 1,2,3
    Certs {
        /// Directory to write to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Node ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<u64>,
    },
    /// Create the metadata group and the data groups, then wait until ready.
    ///
    /// Spreads the 1024 vShards evenly over --groups data groups of
    /// --replicas members each. Refused on a cluster already bootstrapped.
    ///
    /// Example: shardflow cluster bootstrap --node 1=127.0.0.1:7001 --node 2=127.0.0.1:7002 --node 3=127.0.0.1:7003 --groups 3 --replicas 3 --certs ./certs
    Bootstrap {
        /// A node of the new cluster, N=HOST:PORT; repeat for each node.
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
        /// Number of data groups.
        #[arg(long)]
        groups: u64,
        /// Members per data group.
        #[arg(long)]
        replicas: u64,
        /// Certificate directory holding admin.pem.
        #[arg(long, env = "SHARDFLOW_CERTS")]
        certs: PathBuf,
        /// Give up if the cluster is not ready after this many seconds.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout_secs: u64,
    },
    /// Register a node started after the bootstrap, so replicas can move to it.
    ///
    /// Example: shardflow cluster add-node 4=127.0.0.1:7004 --cluster 127.0.0.1:7001 --certs ./certs
    AddNode {
        /// The node, N=HOST:PORT.
        node: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Forget a node; refused while it still holds a replica.
    ///
    /// Example: shardflow cluster remove-node 4 --cluster 127.0.0.1:7001 --certs ./certs
    RemoveNode {
        /// The node id.
        id: u64,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Show nodes, groups (leader, members, vShards, epochs), merged from every node's view.
    ///
    /// Example: shardflow cluster status --cluster 127.0.0.1:7001 --certs ./certs --json
    Status {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum KvCommand {
    /// Write VALUE under KEY.
    ///
    /// Example: shardflow kv put user:1 alice --cluster 127.0.0.1:7001 --certs ./certs
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Print the value of KEY (linearizable read); exit 1 if it is absent.
    ///
    /// Example: shardflow kv get user:1 --cluster 127.0.0.1:7001 --certs ./certs
    Get {
        key: String,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON ({"key", "value", "encoding"}).
        #[arg(long)]
        json: bool,
    },
    /// Delete KEY (deleting an absent key succeeds).
    ///
    /// Example: shardflow kv delete user:1 --cluster 127.0.0.1:7001 --certs ./certs
    Delete {
        key: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Print every key and value, of one vShard or of all; or only count them.
    ///
    /// Output is one `KEY<TAB>VALUE` line per pair (non-UTF-8 bytes as 0x..
    /// hex), in vShard order then key order.
    ///
    /// Example: shardflow kv scan --vshard 174 --cluster 127.0.0.1:7001 --certs ./certs
    Scan {
        /// Only this vShard (0..1024).
        #[arg(long)]
        vshard: Option<u64>,
        /// Print only the number of keys.
        #[arg(long)]
        count: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum JournalCommand {
    /// Print each workflow's timeline: steps, attempts, durations, how it ended.
    ///
    /// Example: shardflow journal replay --data /var/lib/shardflow/node-1
    Replay {
        /// The node's data directory (holds journal.redb).
        #[arg(long)]
        data: PathBuf,
        /// Only this workflow (e.g. wf-1-7).
        #[arg(long)]
        workflow: Option<WorkflowId>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check every hash chain and replay rule; name the first bad event.
    ///
    /// Example: shardflow journal verify --data /var/lib/shardflow/node-1
    Verify {
        /// The node's data directory (holds journal.redb).
        #[arg(long)]
        data: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum WorkflowCommand {
    /// List the workflows of every node: running, compensating and paused
    /// ones, and with --all the ended ones too.
    ///
    /// A node that does not answer is named below the table; the command
    /// fails only if no node answers.
    ///
    /// Example: shardflow workflow list --all --cluster 127.0.0.1:7001 --certs ./certs
    List {
        /// Include completed and aborted workflows.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one workflow: its phase and steps, every event with its time,
    /// step and attempt, and the figures its steps measured (e.g. the write
    /// pause of a cut-over).
    ///
    /// Example: shardflow workflow show wf-2-7 --cluster 127.0.0.1:7001 --certs ./certs
    Show {
        /// The workflow id, wf-<node>-<serial>.
        id: String,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Print a workflow's events as they are journaled until it completes,
    /// aborts or pauses. Exits 0 only if it completes.
    ///
    /// Example: shardflow workflow watch wf-2-7 --cluster 127.0.0.1:7001 --certs ./certs
    Watch {
        /// The workflow id, wf-<node>-<serial>.
        id: String,
        /// Stop watching (exit 1) after this many seconds.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
        max_wait_secs: u64,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print one JSON object per event instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Ask a workflow to cancel. Before its point of no return it stops at
    /// the next step boundary and compensates (ends Aborted); after it, it
    /// rolls forward. Refused if it already ended.
    ///
    /// Example: shardflow workflow cancel wf-2-7 --cluster 127.0.0.1:7001 --certs ./certs
    Cancel {
        /// The workflow id, wf-<node>-<serial>.
        id: String,
        /// Who asks, journaled with the request (default: $USER).
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Drive a Paused workflow again, with fresh retry budgets. Refused
    /// unless it is paused.
    ///
    /// Example: shardflow workflow resume wf-2-7 --cluster 127.0.0.1:7001 --certs ./certs
    Resume {
        /// The workflow id, wf-<node>-<serial>.
        id: String,
        /// Who asks, journaled with the request (default: $USER).
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

#[derive(Subcommand)]
pub enum MigrateCommand {
    /// Move vShard V to group G (MoveVShard): base copy, catch-up, a fenced
    /// cut-over within the write-pause budget, then cleanup of the source.
    ///
    /// Refused, changing nothing: a vShard outside 0..1024, an unknown
    /// group, the group that owns it, a vShard already migrating, a cluster
    /// at its limit of concurrent migrations.
    ///
    /// Example: shardflow migrate vshard 17 --to-group 2 --pause-budget-ms 500 --wait --cluster 127.0.0.1:7001 --certs ./certs
    Vshard {
        /// The vShard (0..1024); `shardflow vshard-of KEY` names a key's.
        vshard: u64,
        /// The group to move it to.
        #[arg(long)]
        to_group: u64,
        /// The longest write pause allowed at cut-over, in ms (default: the
        /// node's --pause-budget-ms).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=600_000))]
        pause_budget_ms: Option<u64>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Move group G's replica from node N to node M (MoveReplica): M joins
    /// as a learner, catches up, is promoted while N leaves, and the
    /// metadata records the new members.
    ///
    /// Refused, changing nothing: an unknown group or node, N without a
    /// replica of G, M with one.
    ///
    /// Example: shardflow migrate replica --group 1 --from 3 --to 4 --wait --cluster 127.0.0.1:7001 --certs ./certs
    Replica {
        /// The group.
        #[arg(long)]
        group: u64,
        /// The node that gives its replica up.
        #[arg(long)]
        from: u64,
        /// The node that receives it (registered with `cluster add-node`).
        #[arg(long)]
        to: u64,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Whether to follow a submitted migration to its end.
#[derive(Args)]
pub struct WaitArgs {
    /// Follow the migration with a progress bar; exit 0 only if it completes.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: stop following (exit 1) after this many seconds.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub max_wait_secs: u64,
}
