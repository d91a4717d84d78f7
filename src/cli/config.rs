//! `shardflow node --config FILE`: a node's settings from a TOML file.
//!
//! Every key is a `shardflow node` flag without its dashes:
//!
//! ```toml
//! id = 1
//! listen = "10.0.0.1:7001"
//! data = "/var/lib/shardflow/n1"   # relative paths: from the file's directory
//! certs = "/etc/shardflow/certs"
//! max-migrations = 4
//! copy-rate = 10485760             # bytes per second
//! pause-budget-ms = 2000
//! ghost-ttl-ms = 60000
//! ```
//!
//! A flag given on the command line (or `SHARDFLOW_CERTS`) overrides the
//! file's value; a setting in neither takes its default, or is an error if
//! it has none (`id`, `listen`, `data`, `certs`). An unknown key, a value
//! of the wrong type or out of range is a one-line error naming the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::args::NodeArgs;
use super::CliError;

/// The keys a node configuration file may hold.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeFile {
    pub id: Option<u64>,
    pub listen: Option<String>,
    pub data: Option<PathBuf>,
    pub certs: Option<PathBuf>,
    pub max_migrations: Option<u32>,
    pub copy_rate: Option<u64>,
    pub pause_budget_ms: Option<u64>,
    pub ghost_ttl_ms: Option<u64>,
}

/// A node's settings, flags and file merged, defaults filled in.
#[derive(Debug, PartialEq, Eq)]
pub struct NodeSettings {
    pub id: u64,
    pub listen: String,
    pub data: PathBuf,
    pub certs: PathBuf,
    pub max_migrations: u32,
    pub copy_rate: Option<u64>,
    pub pause_budget_ms: u64,
    pub ghost_ttl_ms: u64,
}

/// Defaults of the settings that have one.
pub const DEFAULT_MAX_MIGRATIONS: u32 = 4;
pub const DEFAULT_PAUSE_BUDGET_MS: u64 = 2_000;
pub const DEFAULT_GHOST_TTL_MS: u64 = 60_000;

/// Ranges the file's values must fall in (the flags' own are checked by clap).
const MAX_MIGRATIONS: std::ops::RangeInclusive<u64> = 1..=1024;
const COPY_RATE: std::ops::RangeInclusive<u64> = 1..=u64::MAX;
const PAUSE_BUDGET_MS: std::ops::RangeInclusive<u64> = 1..=600_000;
const GHOST_TTL_MS: std::ops::RangeInclusive<u64> = 0..=86_400_000;

/// Reads and checks a configuration file; relative paths in it are taken
/// from the file's directory.
pub fn load(path: &Path) -> Result<NodeFile, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| CliError::Input(format!("config file {}: {error}", path.display())))?;
    let mut file = parse(&text)
        .map_err(|why| CliError::Input(format!("config file {}: {why}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new(""));
    for dir in [&mut file.data, &mut file.certs].into_iter().flatten() {
        if dir.is_relative() {
            *dir = base.join(&*dir);
        }
    }
    Ok(file)
}

/// Parses and range-checks a configuration; the error is one line.
pub fn parse(text: &str) -> Result<NodeFile, String> {
    let file: NodeFile = toml::from_str(text).map_err(|error| describe(text, &error))?;
    check(
        "max-migrations",
        file.max_migrations.map(u64::from),
        MAX_MIGRATIONS,
    )?;
    check("copy-rate", file.copy_rate, COPY_RATE)?;
    check("pause-budget-ms", file.pause_budget_ms, PAUSE_BUDGET_MS)?;
    check("ghost-ttl-ms", file.ghost_ttl_ms, GHOST_TTL_MS)?;
    Ok(file)
}

fn check(
    key: &str,
    value: Option<u64>,
    range: std::ops::RangeInclusive<u64>,
) -> Result<(), String> {
    match value {
        Some(value) if !range.contains(&value) => Err(format!(
            "{key} = {value} is out of range {}..={}",
            range.start(),
            range.end()
        )),
        _ => Ok(()),
    }
}

/// toml's message on one line, with the line number, saying "key" where
/// serde says "field".
fn describe(text: &str, error: &toml::de::Error) -> String {
    let message = error
        .message()
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key")
        .replace(['\n', '\r'], " ");
    match error.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {}", message.trim())
        }
        None => message.trim().to_string(),
    }
}

/// The flags over the file (if any) over the defaults.
pub fn resolve(args: NodeArgs) -> Result<NodeSettings, CliError> {
    let file = match &args.config {
        Some(path) => load(path)?,
        None => NodeFile::default(),
    };
    merge(args, file)
}

fn merge(args: NodeArgs, file: NodeFile) -> Result<NodeSettings, CliError> {
    let config = args.config.clone();
    // The four without a default; each flag is named like its key.
    let missing = |key: &str| {
        let hint = (config.as_ref())
            .map(|path| format!(" (or `{key}` in {})", path.display()))
            .unwrap_or_default();
        CliError::Input(format!("--{key} is required{hint}"))
    };
    Ok(NodeSettings {
        id: args.id.or(file.id).ok_or_else(|| missing("id"))?,
        listen: (args.listen.or(file.listen)).ok_or_else(|| missing("listen"))?,
        data: args.data.or(file.data).ok_or_else(|| missing("data"))?,
        certs: (args.certs.or(file.certs)).ok_or_else(|| missing("certs"))?,
        max_migrations: (args.max_migrations.or(file.max_migrations))
            .unwrap_or(DEFAULT_MAX_MIGRATIONS),
        copy_rate: args.copy_rate.or(file.copy_rate),
        pause_budget_ms: (args.pause_budget_ms.or(file.pause_budget_ms))
            .unwrap_or(DEFAULT_PAUSE_BUDGET_MS),
        ghost_ttl_ms: (args.ghost_ttl_ms.or(file.ghost_ttl_ms)).unwrap_or(DEFAULT_GHOST_TTL_MS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> NodeArgs {
        NodeArgs {
            config: None,
            id: None,
            listen: None,
            data: None,
            certs: None,
            max_migrations: None,
            copy_rate: None,
            pause_budget_ms: None,
            ghost_ttl_ms: None,
            json: false,
        }
    }

    const FULL: &str = r#"
id = 1
listen = "10.0.0.1:7001"
data = "n1"
certs = "/etc/shardflow/certs"
max-migrations = 2
copy-rate = 1048576
pause-budget-ms = 500
ghost-ttl-ms = 0
"#;

    // Proves every key is read and relative paths follow the file.
    #[test]
    fn a_file_gives_every_setting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, FULL).expect("write");
        let file = load(&path).expect("loads");
        assert_eq!(file.data, Some(dir.path().join("n1")));
        assert_eq!(file.certs, Some(PathBuf::from("/etc/shardflow/certs")));
        let settings = merge(args(), file).expect("complete");
        assert_eq!(
            settings,
            NodeSettings {
                id: 1,
                listen: "10.0.0.1:7001".into(),
                data: dir.path().join("n1"),
                certs: "/etc/shardflow/certs".into(),
                max_migrations: 2,
                copy_rate: Some(1_048_576),
                pause_budget_ms: 500,
                ghost_ttl_ms: 0,
            }
        );
    }

    // Proves a flag beats the file and the file beats the default.
    #[test]
    fn flags_override_the_file() {
        let file =
            parse("id = 1\nlisten = \"h:1\"\ndata = \"/d\"\ncerts = \"/c\"\npause-budget-ms = 700")
                .expect("parses");
        let flags = NodeArgs {
            id: Some(9),
            max_migrations: Some(7),
            ..args()
        };
        let settings = merge(flags, file).expect("complete");
        assert_eq!((settings.id, settings.listen.as_str()), (9, "h:1"));
        assert_eq!(settings.max_migrations, 7);
        assert_eq!(settings.pause_budget_ms, 700);
        assert_eq!(settings.ghost_ttl_ms, DEFAULT_GHOST_TTL_MS);
        assert_eq!(settings.copy_rate, None);
    }

    // Proves unknown keys, wrong types and out-of-range values are one
    // line naming the key.
    #[test]
    fn bad_files_name_the_key() {
        let unknown = parse("id = 1\nmax_migrations = 3").expect_err("unknown key");
        assert!(
            unknown.starts_with("line 2: unknown key `max_migrations`"),
            "{unknown}"
        );
        assert!(!unknown.contains('\n'));
        let typed = parse("id = \"one\"").expect_err("wrong type");
        assert!(typed.starts_with("line 1: "), "{typed}");
        let range = parse("max-migrations = 0").expect_err("out of range");
        assert_eq!(range, "max-migrations = 0 is out of range 1..=1024");
        let range = parse("pause-budget-ms = 600001").expect_err("out of range");
        assert!(range.starts_with("pause-budget-ms = 600001"), "{range}");
        assert!(parse("not toml at all").is_err());
    }

    // Proves a setting in neither the flags nor the file is named.
    #[test]
    fn a_missing_setting_is_named() {
        let error = merge(args(), parse("id = 1").expect("parses"))
            .expect_err("listen missing")
            .to_string();
        assert_eq!(error, "--listen is required");
        let with_file = NodeArgs {
            config: Some("node.toml".into()),
            ..args()
        };
        let error = merge(with_file, NodeFile::default())
            .expect_err("id missing")
            .to_string();
        assert_eq!(error, "--id is required (or `id` in node.toml)");
    }
}
