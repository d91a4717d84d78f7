//! The `shardflow` command paths that need no cluster, run as an operator
//! runs them: certificates, `vshard-of`, refusals of bad input before any
//! network use, a client giving up within its deadline, one node started
//! and stopped by SIGTERM, and `--help` texts.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shardflow::node::vshard::vshard_of;

const BIN: &str = env!("CARGO_BIN_EXE_shardflow");

/// Runs the binary with `args` and no ambient shardflow settings.
fn shardflow(args: &[&str]) -> Output {
    shardflow_command(args).output().expect("run shardflow")
}

fn shardflow_command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("SHARDFLOW_CLUSTER")
        .env_remove("SHARDFLOW_CERTS")
        .env_remove("RUST_LOG");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts exit code 1 and exactly one `error: ...` line on stderr; returns it.
fn one_line_failure(output: &Output) -> String {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr.trim_end().to_string()
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

// Proves `cluster certs` writes exactly the files, and a second run
// for a new node keeps the CA byte for byte and adds only that node.
#[test]
fn certs_are_written_then_extended_from_the_same_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("certs");
    let first = shardflow(&["cluster", "certs", "--out", utf8(&out), "--nodes", "1,2,3"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let mut expected: Vec<String> = ["ca", "admin", "client", "node-1", "node-2", "node-3"]
        .iter()
        .flat_map(|stem| [format!("{stem}.pem"), format!("{stem}.key")])
        .collect();
    expected.sort();
    assert_eq!(file_names(&out), expected);
    assert!(text(&first.stdout).starts_with("created a new cluster CA"));

    let ca_pem = std::fs::read(out.join("ca.pem")).expect("ca.pem");
    let ca_key = std::fs::read(out.join("ca.key")).expect("ca.key");
    let second = shardflow(&["cluster", "certs", "--out", utf8(&out), "--nodes", "4"]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    let stdout = text(&second.stdout);
    assert!(
        stdout.starts_with("using the existing cluster CA"),
        "{stdout}"
    );
    let wrote = |name: &str| format!("wrote {}", utf8(&out.join(name)));
    assert!(stdout.contains(&wrote("node-4.pem")), "{stdout}");
    assert!(!stdout.contains(&wrote("ca.pem")), "{stdout}");
    assert_eq!(std::fs::read(out.join("ca.pem")).expect("ca.pem"), ca_pem);
    assert_eq!(std::fs::read(out.join("ca.key")).expect("ca.key"), ca_key);
    expected.extend(["node-4.key".to_string(), "node-4.pem".to_string()]);
    expected.sort();
    assert_eq!(file_names(&out), expected);
}

// Proves `vshard-of` prints the library's stable vShard, as text and JSON.
#[test]
fn vshard_of_matches_the_library() {
    for key in ["user:1", "hello world", "", "ключ"] {
        let output = shardflow(&["vshard-of", key]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert_eq!(
            text(&output.stdout).trim(),
            vshard_of(key.as_bytes()).to_string()
        );
    }
    assert_eq!(
        text(&shardflow(&["vshard-of", "user:1"]).stdout).trim(),
        "174"
    );
    let json = shardflow(&["vshard-of", "user:1", "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(value["vshard"], 174);
    assert_eq!(value["key"], "user:1");
}

// Proves a vShard out of range is refused before certificates or network
// are touched (the certificate directory does not even exist).
#[test]
fn scan_of_an_invalid_vshard_is_refused_before_any_network() {
    let output = shardflow(&[
        "kv",
        "scan",
        "--vshard",
        "5000",
        "--cluster",
        "127.0.0.1:9",
        "--certs",
        "/nonexistent/shardflow-certs",
    ]);
    let line = one_line_failure(&output);
    assert_eq!(
        line,
        "error: vShard 5000 does not exist (vShards are 0..1024)"
    );
    assert!(output.stdout.is_empty());
}

// Proves malformed values are one-line errors (exit 1) that change nothing,
// while a malformed command line is clap's usage error (exit 2).
#[test]
fn bad_input_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = utf8(dir.path());
    let malformed = shardflow(&[
        "cluster",
        "bootstrap",
        "--node",
        "1=127.0.0.1",
        "--groups",
        "1",
        "--replicas",
        "1",
        "--certs",
        certs,
    ]);
    let line = one_line_failure(&malformed);
    assert!(line.contains("expected N=HOST:PORT"), "{line}");

    let no_certs = shardflow(&[
        "kv",
        "get",
        "k",
        "--cluster",
        "127.0.0.1:9",
        "--certs",
        certs,
    ]);
    let line = one_line_failure(&no_certs);
    assert!(line.contains("ca.pem is missing"), "{line}");
    assert!(file_names(dir.path()).is_empty(), "nothing written");

    let bad_cluster = shardflow(&["kv", "get", "k", "--cluster", "127.0.0.1", "--certs", certs]);
    assert!(one_line_failure(&bad_cluster).contains("expected HOST:PORT"));

    let usage = shardflow(&["kv", "get", "k", "--no-such-flag"]);
    assert_eq!(usage.status.code(), Some(2));
}

// Proves a client facing a port where nothing listens gives up within its
// deadline with one line, reading the cluster from SHARDFLOW_CLUSTER.
#[test]
fn get_from_a_closed_port_fails_within_the_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let made = shardflow(&["cluster", "certs", "--out", utf8(&certs), "--nodes", "1"]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let port = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.local_addr().expect("addr").port()
    };
    let started = Instant::now();
    let output = shardflow_command(&[
        "kv",
        "get",
        "k",
        "--certs",
        utf8(&certs),
        "--timeout-secs",
        "2",
    ])
    .env("SHARDFLOW_CLUSTER", format!("127.0.0.1:{port}"))
    .output()
    .expect("run shardflow");
    let elapsed = started.elapsed();
    let line = one_line_failure(&output);
    assert!(
        line.starts_with("error: cluster unavailable after"),
        "{line}"
    );
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    // The 2 s deadline, plus process start and endpoint close.
    assert!(elapsed < Duration::from_secs(6), "took {elapsed:?}");
}

/// Starts `shardflow node` (with `extra` flags), returns its first stdout
/// line once it serves, then stops it with SIGTERM and asserts it exits 0.
fn serve_and_terminate(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let made = shardflow(&["cluster", "certs", "--out", utf8(&certs), "--nodes", "7"]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let data = dir.path().join("data");
    let mut args = vec![
        "node",
        "--id",
        "7",
        "--listen",
        "127.0.0.1:0",
        "--data",
        utf8(&data),
        "--certs",
        utf8(&certs),
    ];
    args.extend(extra);
    let mut child = shardflow_command(&args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn node");
    let stdout = child.stdout.take().expect("stdout");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let line = received
        .recv_timeout(Duration::from_secs(30))
        .expect("a line within 30 s")
        .expect("utf-8 line");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let (done, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait());
    });
    let status = exited
        .recv_timeout(Duration::from_secs(30))
        .expect("exit within 30 s")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(data.is_dir());
    line
}

fn is_bound(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.port() != 0)
}

// Proves `shardflow node` prints its listening line once serving and exits
// cleanly (status 0) on SIGTERM.
#[test]
fn node_serves_until_sigterm() {
    let line = serve_and_terminate(&[]);
    let addr = line
        .strip_prefix("node 7 listening on ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    assert!(is_bound(addr), "{addr}");
}

// Proves `shardflow node --json` prints its ready line as one JSON object.
#[test]
fn node_prints_its_ready_line_as_json() {
    let line = serve_and_terminate(&["--json"]);
    let ready: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(ready["node"], 7, "{line}");
    assert!(ready["listening"].as_str().is_some_and(is_bound), "{line}");
}

/// The subcommands `--help` lists under `Commands:` (clap's own list,
/// without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| line.trim_end() != "Commands:")
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        // An entry is `  NAME  About`; a wrapped about is indented deeper.
        .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// Every command path of the binary, found by walking `--help` from the
/// top, with each one's long help (`--help`) and short help (`-h`). The
/// list comes from clap's command tree, so a new subcommand is checked
/// without touching this test.
fn every_command_help() -> Vec<(Vec<String>, String, String)> {
    let mut found = Vec::new();
    let mut queue = vec![Vec::<String>::new()];
    while let Some(path) = queue.pop() {
        assert!(path.len() <= 3, "runaway walk: {path:?}");
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let output = shardflow(&args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            text(&output.stderr)
        );
        let help = text(&output.stdout);
        for name in subcommands(&help) {
            let mut next = path.clone();
            next.push(name);
            queue.push(next);
        }
        args.pop();
        args.push("-h");
        let short = shardflow(&args);
        assert!(short.status.success(), "{args:?}: {}", text(&short.stderr));
        found.push((path, help, text(&short.stdout)));
    }
    found.sort();
    found
}

/// The example in a help text: the rest of the first `Example:` line, or
/// the line after it when that line only titles the example.
fn example(help: &str) -> Option<String> {
    let (_, rest) = help.split_once("Example")?;
    let mut lines = rest.lines();
    let first = lines.next()?.trim_start_matches([':', ' ']).trim();
    let is_command = first.starts_with("shardflow ") || first.starts_with("cargo run");
    let line = match is_command {
        true => first,
        false => lines.next()?.trim(),
    };
    Some(line.to_string())
}

// Proves every command and subcommand (walked from clap's own tree through
// `--help`) says what it does with a runnable example, shown by `-h` too,
// and that every leaf command takes --json.
#[test]
fn every_command_has_help_with_an_example_and_json() {
    let commands = every_command_help();
    let paths: Vec<String> = commands.iter().map(|(path, _, _)| path.join(" ")).collect();
    // The walk found the whole tree, not a truncated part of it.
    for expected in [
        "",
        "node",
        "cluster bootstrap",
        "kv scan",
        "vshard-of",
        "workflow cancel",
        "workflow resume",
        "migrate vshard",
        "migrate replica",
        "journal verify",
        "demo",
        "bench",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "{expected:?} not in {paths:?}"
        );
    }
    assert!(paths.len() >= 27, "{paths:?}");
    let mut missing_example = Vec::new();
    let mut missing_json = Vec::new();
    for (path, help, short) in &commands {
        let name = path.join(" ");
        // The first line says what it does.
        assert!(
            help.lines()
                .next()
                .is_some_and(|l| l.split_whitespace().count() >= 3),
            "{name:?} says nothing:\n{help}"
        );
        let runnable = example(help).is_some_and(|e| {
            e.starts_with(&format!("shardflow {name}").trim_end().to_string())
                || (path.is_empty() && e.starts_with("shardflow "))
                || (name == "demo" && e.starts_with("cargo run --release -- demo"))
        });
        // `-h` shows the same example.
        if !runnable || example(short) != example(help) {
            missing_example.push(name.clone());
        }
        let leaf = subcommands(help).is_empty();
        let takes_json = help.lines().any(|l| l.trim_start().starts_with("--json"));
        if leaf && !takes_json {
            missing_json.push(name);
        }
    }
    assert!(
        missing_example.is_empty(),
        "--help without an example of itself: {missing_example:?}"
    );
    assert!(
        missing_json.is_empty(),
        "commands without --json: {missing_json:?}"
    );
}

// Proves a malformed workflow id is refused by every workflow command
// before certificates or the network are touched (the certificate
// directory does not even exist), as one line with exit code 1.
#[test]
fn malformed_workflow_ids_are_refused_before_any_network() {
    let cluster = [
        "--cluster",
        "127.0.0.1:9",
        "--certs",
        "/nonexistent/shardflow-certs",
    ];
    for command in ["show", "watch", "cancel", "resume"] {
        for bad in ["wf-2", "2-7", "wf-x-1", "wf-1-2-3"] {
            let mut args = vec!["workflow", command, bad];
            args.extend(cluster);
            let output = shardflow(&args);
            let line = one_line_failure(&output);
            assert_eq!(
                line,
                format!(
                    "error: invalid workflow id {bad:?}: expected wf-<node>-<serial>, e.g. wf-1-7"
                ),
                "workflow {command} {bad}"
            );
            assert!(output.stdout.is_empty());
        }
    }
}
