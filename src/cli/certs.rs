//! `shardflow cluster certs`: the cluster CA and the certificates it issues.

use std::path::Path;

use shardflow::node::certs::{write_cluster_certs, ClusterCertsReport, CA_CERT_FILE};

use serde_json::json;

use super::{CliError, Output};

/// Writes the missing certificates into `out` (a CA only if none is there).
pub fn run(out: &Path, nodes: &[u64], json: bool) -> Result<Output, CliError> {
    let mut nodes = nodes.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    let report = write_cluster_certs(out, &nodes)?;
    if json {
        let paths = |paths: &[std::path::PathBuf]| -> Vec<String> {
            paths.iter().map(|p| p.display().to_string()).collect()
        };
        return Ok(Output::Json(json!({
            "dir": out.display().to_string(),
            "ca_created": report.ca_created,
            "written": paths(&report.written),
            "kept": paths(&report.kept),
        })));
    }
    Ok(Output::Text(describe(out, &report)))
}

fn describe(out: &Path, report: &ClusterCertsReport) -> String {
    let mut lines = vec![if report.ca_created {
        format!("created a new cluster CA in {}", out.display())
    } else {
        format!(
            "using the existing cluster CA {}",
            out.join(CA_CERT_FILE).display()
        )
    }];
    lines.extend(
        report
            .written
            .iter()
            .map(|p| format!("wrote {}", p.display())),
    );
    lines.extend(report.kept.iter().map(|p| format!("kept  {}", p.display())));
    lines.join("\n")
}
