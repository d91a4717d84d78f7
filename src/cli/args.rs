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
    after_help = "Example: the whole story in one process, verified\n  \
        shardflow demo\n\
        Example: a local 3-node cluster\n  \
        shardflow cluster certs --out certs --nodes 1,2,3\n  \
        shardflow node --id 1 --listen 127.0.0.1:7001 --data n1 --certs certs   (and nodes 2, 3)\n  \
        shardflow cluster bootstrap --node 1=127.0.0.1:7001 --node 2=127.0.0.1:7002 \
        --node 3=127.0.0.1:7003 --groups 3 --replicas 3 --certs certs\n  \
        shardflow kv put hello world --cluster 127.0.0.1:7001 --certs certs\n\n\
        Environment: SHARDFLOW_CLUSTER (--cluster), SHARDFLOW_CERTS (--certs), \
        RUST_LOG (log filter; logs go to stderr)\n\
        Exit codes: 0 success; 1 the operation failed (a bad value, refused, \
        unavailable, not found, not completed, not verified), with one line \
        `error: ...` on stderr; 2 the command line is malformed"
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
    #[command(
        after_help = "Example: shardflow node --id 1 --listen 127.0.0.1:7001 --data /var/lib/shardflow/n1 --certs ./certs\n  (or: shardflow node --config /etc/shardflow/node.toml)"
    )]
    Node(NodeArgs),
    /// Cluster administration: certificates, bootstrap, membership, status.
    #[command(
        after_help = "Example: shardflow cluster status --cluster 127.0.0.1:7001 --certs ./certs"
    )]
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Write, read, delete and scan keys.
    #[command(
        after_help = "Example: shardflow kv get user:1 --cluster 127.0.0.1:7001 --certs ./certs"
    )]
    #[command(subcommand)]
    Kv(KvCommand),
    /// Print the vShard (0..1024) a key belongs to; no cluster needed.
    #[command(after_help = "Example: shardflow vshard-of user:1")]
    VshardOf {
        /// The key.
        key: String,
        /// Print JSON instead of the bare number.
        #[arg(long)]
        json: bool,
    },
    /// Operate the workflows (migrations) of a running cluster.
    ///
    /// List, show, watch, cancel, resume. Any node answers for any workflow.
    #[command(
        after_help = "Example: shardflow workflow list --cluster 127.0.0.1:7001 --certs ./certs"
    )]
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Start a migration: a vShard to another group, a replica to another node.
    ///
    /// Prints the workflow id; with --wait, shows its progress and exits 0
    /// only if it completes.
    #[command(
        after_help = "Example: shardflow migrate vshard 17 --to-group 2 --wait --cluster 127.0.0.1:7001 --certs ./certs"
    )]
    #[command(subcommand)]
    Migrate(MigrateCommand),
    /// Audit a stopped node's workflow journal (no cluster needed).
    #[command(after_help = "Example: shardflow journal verify --data /var/lib/shardflow/n1")]
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Run the whole story in one process and verify it (about a minute).
    ///
    /// A 3-node cluster (real QUIC and redb) with 4 data groups, 100,000
    /// keys loaded, a vShard moved under live writes while the node driving
    /// it is stopped and restarted in CatchUp, a replica moved to a 4th
    /// node, then the audit timelines and a verification summary
    /// (acknowledged writes, keys lost, duplicates, owners per vShard,
    /// write pause).
    ///
    /// Exits 0 only if everything verified; the last line starts with
    /// `verified:`. Takes about a minute in a release build.
    #[command(
        after_help = "Example: cargo run --release -- demo   (or: shardflow demo --keys 20000 --data ./demo-data)"
    )]
    Demo(DemoArgs),
    /// Measure this machine's limits and a 3-node loopback cluster against them.
    ///
    /// In one run, on a cluster it starts in this process: write latency
    /// and throughput, raw QUIC and bare redb rates, vShard migrations
    /// under load (the write pause a client sees, the copy rate,
    /// foreground throughput), the engine's step overhead and replay rate,
    /// and a driver restart; the ratios against the targets. Progress on
    /// stderr. Build with --release; a default run takes a few minutes.
    #[command(after_help = "Example: shardflow bench --json --keys 10000 --value-bytes 1000")]
    Bench(BenchArgs),
}

/// What `shardflow bench` measures with.
#[derive(Args)]
pub struct BenchArgs {
    /// Print the fifteen figures as one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Keys in the vShard that moves (and in the bare redb ingest).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub value_bytes: u64,
    /// Migrations under live writes (the write-pause and copy figures);
    /// a fifth as many (1 to 4) run under the concurrent writers.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    pub migrations: u64,
    /// Sequential single writes timed; the concurrent run makes 16 times
    /// as many.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub writes: u64,
    /// Concurrent writers (throughput and foreground load).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_024))]
    pub writers: u64,
    /// Journal events folded for the replay rate.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(4..=100_000_000))]
    pub replay_events: u64,
    /// Limit the base copy to this many bytes per second on every node, as
    /// `shardflow node --copy-rate` does (default: unlimited).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub copy_rate: Option<u64>,
    /// Base-copy chunks a migration ingests at once (default: the
    /// workflow's, 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub ingest_window: Option<u32>,
    /// Where to put the cluster's files (a fresh directory inside it,
    /// removed at the end; default: the system's temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Where the nodes keep their data (created; must be empty). Kept
    /// afterwards, for `shardflow journal replay`. Default: a temporary
    /// directory, deleted at the end.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Keys to load before the migrations.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub keys: u64,
    /// Print the report as JSON (the narrative goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct NodeArgs {
    /// Read the settings from this TOML file; its keys are the flags'
    /// names (`id`, `listen`, `data`, `certs`, `max-migrations`,
    /// `copy-rate`, `pause-budget-ms`, `ghost-ttl-ms`). Flags given here
    /// override its values; an unknown key is an error.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's id (its certificate is node-ID.pem in --certs).
    #[arg(long, required_unless_present = "config")]
    pub id: Option<u64>,
    /// Address to listen on (UDP), HOST:PORT.
    #[arg(long, required_unless_present = "config")]
    pub listen: Option<String>,
    /// Data directory (Raft logs, state machines, journal); created if missing.
    #[arg(long, required_unless_present = "config")]
    pub data: Option<PathBuf>,
    /// Certificate directory (ca.pem, node-ID.pem, node-ID.key).
    #[arg(long, env = "SHARDFLOW_CERTS", required_unless_present = "config")]
    pub certs: Option<PathBuf>,
    /// Live vShard migrations allowed at once; a submission beyond it is
    /// refused [default: 4].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_migrations: Option<u32>,
    /// Base-copy rate limit of the migrations this node drives, in bytes per
    /// second [default: unlimited].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub copy_rate: Option<u64>,
    /// Write-pause budget of a `migrate vshard` that names none, in ms
    /// [default: 2000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub pause_budget_ms: Option<u64>,
    /// How long the source keeps a moved vShard's copy (forwarding stale
    /// requests) before deleting it, in ms [default: 60000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub ghost_ttl_ms: Option<u64>,
    /// Print the ready line as JSON, {"node": N, "listening": "ADDR"}.
    #[arg(long)]
    pub json: bool,
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
    #[command(after_help = "Example: shardflow cluster certs --out ./certs --nodes 1,2,3")]
    Certs {
        /// Directory to write to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Node ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<u64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create the metadata group and the data groups, then wait until ready.
    ///
    /// Spreads the 1024 vShards evenly over --groups data groups of
    /// --replicas members each. Refused on a cluster already bootstrapped.
    #[command(
        after_help = "Example: shardflow cluster bootstrap --node 1=127.0.0.1:7001 --node 2=127.0.0.1:7002 --node 3=127.0.0.1:7003 --groups 3 --replicas 3 --certs ./certs"
    )]
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
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Register a node started after the bootstrap, so replicas can move to it.
    #[command(
        after_help = "Example: shardflow cluster add-node 4=127.0.0.1:7004 --cluster 127.0.0.1:7001 --certs ./certs"
    )]
    AddNode {
        /// The node, N=HOST:PORT.
        node: String,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Forget a node; refused while it still holds a replica.
    #[command(
        after_help = "Example: shardflow cluster remove-node 4 --cluster 127.0.0.1:7001 --certs ./certs"
    )]
    RemoveNode {
        /// The node id.
        id: u64,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show nodes, groups (leader, members, vShards, epochs), merged from every node's view.
    #[command(
        after_help = "Example: shardflow cluster status --cluster 127.0.0.1:7001 --certs ./certs --json"
    )]
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
    #[command(
        after_help = "Example: shardflow kv put user:1 alice --cluster 127.0.0.1:7001 --certs ./certs"
    )]
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the value of KEY (linearizable read); exit 1 if it is absent.
    #[command(
        after_help = "Example: shardflow kv get user:1 --cluster 127.0.0.1:7001 --certs ./certs"
    )]
    Get {
        key: String,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON ({"key", "value", "encoding"}).
        #[arg(long)]
        json: bool,
    },
    /// Delete KEY (deleting an absent key succeeds).
    #[command(
        after_help = "Example: shardflow kv delete user:1 --cluster 127.0.0.1:7001 --certs ./certs"
    )]
    Delete {
        key: String,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print every key and value, of one vShard or of all; or only count them.
    ///
    /// Output is one `KEY<TAB>VALUE` line per pair (non-UTF-8 bytes as 0x..
    /// hex), in vShard order then key order.
    #[command(
        after_help = "Example: shardflow kv scan --vshard 174 --cluster 127.0.0.1:7001 --certs ./certs"
    )]
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
    #[command(after_help = "Example: shardflow journal replay --data /var/lib/shardflow/node-1")]
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
    #[command(after_help = "Example: shardflow journal verify --data /var/lib/shardflow/node-1")]
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
    #[command(
        after_help = "Example: shardflow workflow list --all --cluster 127.0.0.1:7001 --certs ./certs"
    )]
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
    #[command(
        after_help = "Example: shardflow workflow show wf-2-7 --cluster 127.0.0.1:7001 --certs ./certs"
    )]
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
    #[command(
        after_help = "Example: shardflow workflow watch wf-2-7 --cluster 127.0.0.1:7001 --certs ./certs"
    )]
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
    #[command(
        after_help = "Example: shardflow workflow cancel wf-2-7 --cluster 127.0.0.1:7001 --certs ./certs"
    )]
    Cancel {
        /// The workflow id, wf-<node>-<serial>.
        id: String,
        /// Who asks, journaled with the request (default: $USER).
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON ({"id", "requested", "by"}) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Drive a Paused workflow again, with fresh retry budgets. Refused
    /// unless it is paused.
    #[command(
        after_help = "Example: shardflow workflow resume wf-2-7 --cluster 127.0.0.1:7001 --certs ./certs"
    )]
    Resume {
        /// The workflow id, wf-<node>-<serial>.
        id: String,
        /// Who asks, journaled with the request (default: $USER).
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON ({"id", "requested", "by"}) instead of text.
        #[arg(long)]
        json: bool,
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
    #[command(
        after_help = "Example: shardflow migrate vshard 17 --to-group 2 --pause-budget-ms 500 --wait --cluster 127.0.0.1:7001 --certs ./certs"
    )]
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
    #[command(
        after_help = "Example: shardflow migrate replica --group 1 --from 3 --to 4 --wait --cluster 127.0.0.1:7001 --certs ./certs"
    )]
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command and subcommand, as its path of names.
    fn every_command(command: &clap::Command, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(path.clone());
        for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
            let mut next = path.clone();
            next.push(sub.get_name().to_string());
            every_command(sub, next, out);
        }
    }

    // Proves every command's --help says what it does and gives an example
    // that starts with `shardflow` (or `cargo run`), so none is forgotten.
    #[test]
    fn every_help_has_an_example() {
        let mut root = Cli::command();
        root.build();
        let mut paths = Vec::new();
        every_command(&root, Vec::new(), &mut paths);
        assert!(paths.len() > 20, "{paths:?}");
        let mut missing = Vec::new();
        for path in paths {
            let mut command = &mut root;
            for name in &path {
                command = command
                    .find_subcommand_mut(name)
                    .unwrap_or_else(|| panic!("{name} in {path:?}"));
            }
            let about = command.get_about().map(ToString::to_string);
            assert!(
                about.is_some_and(|a| !a.is_empty()),
                "{path:?} says nothing"
            );
            let help = command.render_long_help().to_string();
            // The example: the rest of the `Example:` line, or the next line.
            let example = help.split_once("Example").map(|(_, rest)| {
                let mut lines = rest.lines();
                let first = lines.next().unwrap_or_default();
                let first = first.trim_start_matches([':', ' ']).trim_start();
                let text = match first.is_empty() || !first.contains("shardflow") {
                    true => lines.next().unwrap_or_default().trim_start(),
                    false => first,
                };
                text.to_string()
            });
            if !example.is_some_and(|e| e.starts_with("shardflow ") || e.starts_with("cargo run")) {
                missing.push(path.join(" "));
            }
        }
        assert!(missing.is_empty(), "--help without an example: {missing:?}");
    }

    // Proves the top-level help documents the exit codes.
    #[test]
    fn exit_codes_are_documented() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes: 0 success; 1 "), "{help}");
        assert!(help.contains("2 the command line is malformed"), "{help}");
    }
}
