//! Real `shardflow node` processes on loopback for the multi-process
//! tests: spawn one (and read back the address it bound), run the CLI,
//! SIGKILL or SIGTERM a node, and an acknowledged-writes oracle.

#![allow(dead_code)] // each test file uses its own part

pub mod oracle;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_shardflow");

/// A node process; killed if the test panics.
pub struct NodeProcess {
    pub id: u64,
    pub addr: String,
    pub data: PathBuf,
    /// The extra `shardflow node` flags it was started with.
    pub flags: Vec<String>,
    child: Option<Child>,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts node `id` and waits for its `node N listening on ADDR` line.
pub fn spawn(id: u64, listen: &str, data: &Path, certs: &Path) -> NodeProcess {
    spawn_with(id, listen, data, certs, &[])
}

/// Like [`spawn`], with extra `shardflow node` flags.
pub fn spawn_with(
    id: u64,
    listen: &str,
    data: &Path,
    certs: &Path,
    flags: &[String],
) -> NodeProcess {
    spawn_opts(id, listen, data, certs, flags, &SpawnOpts::default())
}

impl NodeProcess {
    /// Starts the node again on its address, data and flags.
    pub fn restart(&mut self, certs: &Path) {
        assert!(self.child.is_none(), "node {} still runs", self.id);
        let again = spawn_with(self.id, &self.addr, &self.data, certs, &self.flags);
        *self = again;
    }
}

/// Runs the CLI; panics unless it succeeds; returns stdout.
pub fn run_cli(args: &[&str]) -> String {
    let output = cli(args);
    assert!(
        output.status.success(),
        "shardflow {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs the CLI and returns whatever it did.
pub fn cli(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("cli runs")
}

pub fn sigkill(node: &mut NodeProcess) {
    let mut child = node.child.take().expect("running");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

/// SIGTERM, then wait (bounded) for the clean exit.
pub fn sigterm(node: &mut NodeProcess) {
    let mut child = node.child.take().expect("running");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(exit) = child.try_wait().expect("try_wait") {
            assert!(exit.success(), "node {} exited with {exit}", node.id);
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {} did not stop",
            node.id
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Certificates for `ids`, nodes 1..=`count` started with `flags`, and a
/// bootstrap of `groups` data groups of 3 replicas.
pub fn start_cluster(
    dir: &Path,
    ids: &str,
    count: u64,
    groups: u64,
    flags: &[String],
) -> (PathBuf, Vec<NodeProcess>) {
    start_cluster_opts(dir, ids, count, groups, flags, |_| SpawnOpts::default())
}

// ---------------------------------------------------------------------------
// Added for the crash matrix and the soak (tests/crash/): nodes started with
// an environment (failpoints) and their stderr kept in a file, processes
// that may die on their own (a failpoint's `abort`).

/// How [`spawn_opts`] starts a node beyond [`spawn_with`].
#[derive(Clone, Debug, Default)]
pub struct SpawnOpts {
    /// Extra environment variables (e.g. `SHARDFLOW_FAILPOINTS`).
    pub env: Vec<(String, String)>,
    /// Append the node's stderr (its logs, `RUST_LOG=warn`) to this file.
    pub stderr_log: Option<PathBuf>,
}

/// Like [`spawn_with`], with an environment and a stderr log file.
pub fn spawn_opts(
    id: u64,
    listen: &str,
    data: &Path,
    certs: &Path,
    flags: &[String],
    opts: &SpawnOpts,
) -> NodeProcess {
    try_spawn_opts(id, listen, data, certs, flags, opts)
        .unwrap_or_else(|| panic!("node {id} did not start"))
}

/// Like [`spawn_opts`]; `None` if the process ended before it was ready
/// (e.g. a failpoint armed to abort fired while it resumed its workflows).
pub fn try_spawn_opts(
    id: u64,
    listen: &str,
    data: &Path,
    certs: &Path,
    flags: &[String],
    opts: &SpawnOpts,
) -> Option<NodeProcess> {
    let stderr = match &opts.stderr_log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("stderr log opens"),
        ),
        None => Stdio::null(),
    };
    let mut child = Command::new(BIN)
        .args(["node", "--id", &id.to_string(), "--listen", listen])
        .arg("--data")
        .arg(data)
        .arg("--certs")
        .arg(certs)
        .args(flags)
        .env("RUST_LOG", "warn")
        .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("node process starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let prefix = format!("node {id} listening on ");
    let Some(addr) = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix(&prefix).map(str::to_string))
    else {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    };
    std::thread::spawn(move || lines.for_each(drop));
    Some(NodeProcess {
        id,
        addr,
        data: data.to_path_buf(),
        flags: flags.to_vec(),
        child: Some(child),
    })
}

impl NodeProcess {
    /// Whether the process runs (not killed, not exited on its own).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// Waits (bounded) for the process to exit on its own and reaps it;
    /// `None` if it still runs at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Like [`NodeProcess::restart`], with [`SpawnOpts`] (the environment
    /// is not inherited from the first start). False if the process ended
    /// before it was ready (it stays stopped).
    pub fn restart_opts(&mut self, certs: &Path, opts: &SpawnOpts) -> bool {
        assert!(self.child.is_none(), "node {} still runs", self.id);
        match try_spawn_opts(self.id, &self.addr, &self.data, certs, &self.flags, opts) {
            Some(again) => {
                *self = again;
                true
            }
            None => false,
        }
    }
}

/// Like [`start_cluster`], each node started with `opts(id)`.
pub fn start_cluster_opts(
    dir: &Path,
    ids: &str,
    count: u64,
    groups: u64,
    flags: &[String],
    opts: impl Fn(u64) -> SpawnOpts,
) -> (PathBuf, Vec<NodeProcess>) {
    let certs = dir.join("certs");
    let certs_arg = certs.to_str().expect("utf-8");
    run_cli(&["cluster", "certs", "--out", certs_arg, "--nodes", ids]);
    let nodes: Vec<NodeProcess> = (1..=count)
        .map(|id| {
            let data = dir.join(format!("n{id}"));
            spawn_opts(id, "127.0.0.1:0", &data, &certs, flags, &opts(id))
        })
        .collect();
    let node_args: Vec<String> = nodes
        .iter()
        .take(3)
        .map(|n| format!("{}={}", n.id, n.addr))
        .collect();
    let groups = groups.to_string();
    let mut bootstrap = vec![
        "cluster",
        "bootstrap",
        "--groups",
        &groups,
        "--replicas",
        "3",
        "--certs",
        certs_arg,
    ];
    for arg in &node_args {
        bootstrap.extend(["--node", arg]);
    }
    run_cli(&bootstrap);
    (certs, nodes)
}

// ---------------------------------------------------------------------------
// Added for the README walkthrough (tests/readme_commands.rs): a node started
// from exactly the arguments given (e.g. `--config FILE`), and the CLI run
// with an environment.

/// Starts `shardflow node ARGS` (e.g. `--config FILE`) and waits for node
/// `id`'s listening line. `data` is recorded, and `args` kept as its flags,
/// so [`NodeProcess::restart`] starts it again with them (its address and
/// data given as flags, which override the file's).
pub fn spawn_node_args(id: u64, args: &[String], data: &Path) -> NodeProcess {
    let mut child = Command::new(BIN)
        .arg("node")
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("SHARDFLOW_CERTS")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node process starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let prefix = format!("node {id} listening on ");
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix(&prefix).map(str::to_string))
        .unwrap_or_else(|| panic!("node {id} did not start with {args:?}"));
    std::thread::spawn(move || lines.for_each(drop));
    NodeProcess {
        id,
        addr,
        data: data.to_path_buf(),
        flags: args.to_vec(),
        child: Some(child),
    }
}

/// Runs the CLI with extra environment variables and returns whatever it did.
pub fn cli_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("cli runs")
}
