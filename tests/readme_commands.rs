//! The README, run as a new user would: its walkthrough against real node
//! processes on loopback (certificates, three nodes — one from a TOML
//! config file — bootstrap, keys, a vShard migration, workflows, a fourth
//! node and a replica move, the audit of a stopped node's journal), and
//! `shardflow demo` as a process. The walkthrough then checks that every
//! `shardflow` command the README shows is one it ran, so the README
//! cannot rot.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::Instant;

use support::{cli_env, sigterm, spawn_node_args, spawn_with};

/// Commands that have subcommands: their path is two words.
const FAMILIES: [&str; 5] = ["cluster", "kv", "workflow", "migrate", "journal"];

/// `["kv", "put", "k", ..]` -> `"kv put"`; `["node", "--id", ..]` -> `"node"`.
fn command_path<S: AsRef<str>>(args: &[S]) -> String {
    let words: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    match words.as_slice() {
        [family, sub, ..] if FAMILIES.contains(family) => format!("{family} {sub}"),
        [top, ..] => top.to_string(),
        [] => String::new(),
    }
}

/// The `shardflow` commands the README's code blocks show (also `cargo run
/// --release -- CMD`), as command paths.
fn readme_commands() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let mut in_block = false;
    let mut commands = BTreeSet::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        let line = line.trim();
        let rest = line
            .strip_prefix("shardflow ")
            .or_else(|| line.strip_prefix("cargo run --release -- "));
        if let (true, Some(rest)) = (in_block, rest) {
            let words: Vec<&str> = rest.split_whitespace().collect();
            commands.insert(command_path(&words));
        }
    }
    commands
}

/// Runs the CLI, remembering which commands ran.
struct Walkthrough {
    ran: BTreeSet<String>,
    env: Vec<(String, String)>,
}

impl Walkthrough {
    fn run(&mut self, args: &[&str]) -> Output {
        self.ran.insert(command_path(args));
        let env: Vec<(&str, &str)> = (self.env.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        cli_env(args, &env)
    }

    /// Runs `args`; must succeed; returns stdout.
    fn ok(&mut self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "shardflow {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `args`; must fail with exit 1 and one `error:` line; returns it.
    fn fails(&mut self, args: &[&str]) -> String {
        let output = self.run(args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        stderr.trim_end().to_string()
    }
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The workflow id in `text` (`wf-N-S`).
fn workflow_id(text: &str) -> String {
    text.split_whitespace()
        .find(|word| word.starts_with("wf-"))
        .map(|word| word.trim_end_matches(':').to_string())
        .unwrap_or_else(|| panic!("no workflow id in {text:?}"))
}

// Proves the README's walkthrough works as written and that every
// `shardflow` command the README shows is exercised.
#[test]
fn the_readme_walkthrough_runs() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let mut sf = Walkthrough {
        ran: BTreeSet::new(),
        env: Vec::new(),
    };

    // 1. Certificates.
    let out = sf.ok(&[
        "cluster",
        "certs",
        "--out",
        utf8(&certs),
        "--nodes",
        "1,2,3",
    ]);
    assert!(out.starts_with("created a new cluster CA"), "{out}");

    // 2. Nodes: two from flags, one from a TOML file (relative paths from
    // the file's directory). A short ghost TTL keeps the migration short.
    let flags = vec!["--ghost-ttl-ms".to_string(), "300".to_string()];
    let mut nodes = vec![
        spawn_with(1, "127.0.0.1:0", &dir.path().join("n1"), &certs, &flags),
        spawn_with(2, "127.0.0.1:0", &dir.path().join("n2"), &certs, &flags),
    ];
    let config = dir.path().join("node3.toml");
    std::fs::write(
        &config,
        "id = 3\nlisten = \"127.0.0.1:0\"\ndata = \"n3\"\ncerts = \"certs\"\n\
         max-migrations = 4\npause-budget-ms = 2000\nghost-ttl-ms = 300\n",
    )
    .expect("write the config");
    let config_args = vec!["--config".to_string(), utf8(&config).to_string()];
    nodes.push(spawn_node_args(3, &config_args, &dir.path().join("n3")));
    sf.ran.insert("node".to_string());
    assert!(dir.path().join("n3").join("journal.redb").is_file());

    // 3. Bootstrap.
    let specs: Vec<String> = nodes
        .iter()
        .map(|n| format!("{}={}", n.id, n.addr))
        .collect();
    let mut bootstrap = vec!["cluster", "bootstrap"];
    for spec in &specs {
        bootstrap.extend(["--node", spec]);
    }
    bootstrap.extend(["--groups", "3", "--replicas", "3", "--certs", utf8(&certs)]);
    let out = sf.ok(&bootstrap);
    assert!(
        out.starts_with("bootstrapped 3 nodes, 3 data groups of 3 replicas"),
        "{out}"
    );

    // 4. Keys, with the cluster and certificates from the environment.
    sf.env = vec![
        (
            "SHARDFLOW_CLUSTER".into(),
            format!("{},{}", nodes[0].addr, nodes[1].addr),
        ),
        ("SHARDFLOW_CERTS".into(), utf8(&certs).to_string()),
    ];
    assert_eq!(sf.ok(&["kv", "put", "hello", "world"]).trim(), "ok");
    assert_eq!(sf.ok(&["kv", "get", "hello"]).trim(), "world");
    assert_eq!(sf.ok(&["kv", "delete", "hello"]).trim(), "ok");
    assert_eq!(
        sf.fails(&["kv", "get", "hello"]),
        "error: key \"hello\" not found"
    );
    let vshard: u64 = sf
        .ok(&["vshard-of", "hello"])
        .trim()
        .parse()
        .expect("a number");
    sf.ok(&["kv", "put", "hello", "world"]);
    for i in 0..20 {
        let key = format!("user:{i}");
        sf.ok(&["kv", "put", &key, "x", "--json"]);
    }
    assert_eq!(sf.ok(&["kv", "scan", "--count"]).trim(), "21");
    let scan: serde_json::Value =
        serde_json::from_str(&sf.ok(&["kv", "scan", "--vshard", &vshard.to_string(), "--json"]))
            .expect("scan JSON");
    assert!(scan["pairs"]
        .as_array()
        .is_some_and(|pairs| pairs.iter().any(|p| p["key"] == "hello")));
    let status = sf.ok(&["cluster", "status"]);
    assert!(status.contains("GROUP  LEADER  TERM"), "{status}");

    // 5. Migrate hello's vShard away from its group (the bootstrap gives
    // vShard v to group 1 + v * groups / 1024).
    let owner = 1 + vshard * 3 / 1024;
    let to_group = owner % 3 + 1;
    let out = sf.ok(&[
        "migrate",
        "vshard",
        &vshard.to_string(),
        "--to-group",
        &to_group.to_string(),
        "--wait",
    ]);
    assert!(out.contains("Completed in"), "{out}");
    assert!(out.contains("write pause"), "{out}");
    let moved = workflow_id(&out);
    let status = sf.ok(&["cluster", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    let target = status["groups"]
        .as_array()
        .and_then(|groups| groups.iter().find(|g| g["group"] == to_group))
        .expect("the target group");
    assert_eq!(target["epoch_max"], 2, "{target}");
    assert_eq!(sf.ok(&["kv", "get", "hello"]).trim(), "world");

    // 6. Workflows.
    let list = sf.ok(&["workflow", "list", "--all"]);
    assert!(
        list.contains(&moved) && list.contains("MoveVShard"),
        "{list}"
    );
    let show = sf.ok(&["workflow", "show", &moved]);
    for step in ["Lock", "BaseCopy", "CatchUp", "CutOver", "Cleanup"] {
        assert!(show.contains(step), "{show}");
    }
    let watched = sf.ok(&["workflow", "watch", &moved]);
    assert!(watched.contains(&format!("{moved} Completed")), "{watched}");
    assert!(sf
        .fails(&["workflow", "cancel", &moved])
        .contains("refused"));
    assert!(sf
        .fails(&["workflow", "resume", &moved])
        .contains("refused"));

    // A replica: node 4 from the same CA, registered, then the move.
    let out = sf.ok(&["cluster", "certs", "--out", utf8(&certs), "--nodes", "4"]);
    assert!(out.starts_with("using the existing cluster CA"), "{out}");
    nodes.push(spawn_with(
        4,
        "127.0.0.1:0",
        &dir.path().join("n4"),
        &certs,
        &flags,
    ));
    let spec = format!("4={}", nodes[3].addr);
    sf.ok(&["cluster", "add-node", &spec]);
    let out = sf.ok(&[
        "migrate", "replica", "--group", "1", "--from", "3", "--to", "4", "--wait",
    ]);
    assert!(out.contains("Completed in"), "{out}");
    let replica = workflow_id(&out);
    let line = sf.fails(&["cluster", "remove-node", "3"]);
    assert!(line.contains("refused"), "{line}");
    let status: serde_json::Value =
        serde_json::from_str(&sf.ok(&["cluster", "status", "--json"])).expect("status JSON");
    let group1 = status["groups"]
        .as_array()
        .and_then(|groups| groups.iter().find(|g| g["group"] == 1))
        .expect("group 1");
    assert_eq!(group1["members"], serde_json::json!([1, 2, 4]), "{group1}");

    // 7. Audit the journal of the node that drove the migrations, stopped.
    let driver: usize = moved
        .split('-')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("wf-N-S");
    sigterm(&mut nodes[driver - 1]);
    let data = dir.path().join(format!("n{driver}"));
    let out = sf.ok(&["journal", "verify", "--data", utf8(&data)]);
    assert!(out.starts_with("ok: "), "{out}");
    let out = sf.ok(&[
        "journal",
        "replay",
        "--data",
        utf8(&data),
        "--workflow",
        &moved,
    ]);
    assert!(
        out.contains("MoveVShard") && out.contains("Completed"),
        "{out}"
    );
    if replica.starts_with(&format!("wf-{driver}-")) {
        let out = sf.ok(&[
            "journal",
            "replay",
            "--data",
            utf8(&data),
            "--workflow",
            &replica,
        ]);
        assert!(out.contains("MoveReplica"), "{out}");
    }
    // `demo` runs in its own test.
    sf.ran.insert("demo".to_string());

    let missing: Vec<_> = readme_commands().difference(&sf.ran).cloned().collect();
    assert!(
        missing.is_empty(),
        "README commands no test ran: {missing:?} (ran {:?})",
        sf.ran
    );
    eprintln!("walkthrough took {:.1}s", started.elapsed().as_secs_f64());
}

// Proves `shardflow demo` runs as a process and verifies: exit 0, the
// audit timelines and the summary printed, its last line `verified: ...`.
#[test]
fn the_demo_verifies() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("demo");
    let output = cli_env(&["demo", "--keys", "2000", "--data", utf8(&data)], &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("verified: "), "{stdout}");
    assert!(
        last.contains(" 0 keys lost, 0 duplicates, 1024 of 1024 vShards with one owner"),
        "{last}"
    );
    for expected in [
        "MoveVShard",
        "MoveReplica",
        "stopping node",
        "driver restart",
    ] {
        assert!(stdout.contains(expected), "{expected}: {stdout}");
    }
    // --data keeps the nodes' data: the journals audit offline.
    let journals = (1..=4)
        .map(|n| data.join(format!("node-{n}")))
        .filter(|d| d.join("journal.redb").is_file())
        .count();
    assert_eq!(journals, 4);
    // A second run refuses the now non-empty directory, changing nothing.
    let again = cli_env(&["demo", "--keys", "10", "--data", utf8(&data)], &[]);
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("not empty"), "{stderr}");
    eprintln!("demo took {:.1}s", started.elapsed().as_secs_f64());
}

// Proves a node's TOML file is checked before anything starts: an unknown
// key is one line naming it (exit 1), and a missing setting is named.
#[test]
fn a_node_config_file_is_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "id = 1\nlisten = \"127.0.0.1:0\"\nmax_migrations = 3\n",
    )
    .expect("write");
    let output = cli_env(&["node", "--config", utf8(&config)], &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("line 3: unknown key `max_migrations`"),
        "{stderr}"
    );
    std::fs::write(&config, "id = 1\nlisten = \"127.0.0.1:0\"\n").expect("write");
    let output = cli_env(&["node", "--config", utf8(&config)], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--data is required (or `data` in"),
        "{stderr}"
    );
    assert!(!dir.path().join("n1").exists());
}
