//! `shardflow bench --json` with tiny sizes: the output is one JSON object
//! with exactly the fifteen documented figures, each a finite number ≥ 0.
//! The shape only: benchmarks report, tests never assert timings.

use std::process::Command;

const FIELDS: [&str; 15] = [
    "write_p50_us",
    "write_p99_us",
    "throughput_wps",
    "quic_mb_s",
    "redb_ingest_mb_s",
    "pause_p50_us",
    "pause_p99_us",
    "pause_max_us",
    "copy_mb_s",
    "foreground_ratio",
    "pause_ratio",
    "copy_ratio",
    "step_overhead_ratio",
    "replay_events_per_s",
    "resume_ms",
];

#[test]
fn bench_json_has_exactly_the_fifteen_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_shardflow"))
        .args(["bench", "--json", "--keys", "200", "--value-bytes", "100"])
        .args(["--migrations", "2", "--writes", "20", "--writers", "8"])
        .args(["--replay-events", "1000", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run shardflow bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is one JSON document");
    let object = report.as_object().expect("a JSON object");
    let mut names: Vec<&str> = object.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut expected = FIELDS.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected);
    for (name, value) in object {
        let number = value.as_f64().unwrap_or(f64::NAN);
        assert!(
            number.is_finite() && number >= 0.0,
            "{name} = {value} is not a finite number ≥ 0"
        );
    }
    // The progress went to stderr, one line per stage (not a terminal).
    assert!(stderr.contains("bench [9/9]"), "{stderr}");
    // The bench removed what it created.
    let left = std::fs::read_dir(dir.path()).expect("read dir").count();
    assert_eq!(left, 0, "the bench left files behind");
}
