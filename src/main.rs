//! The `shardflow` command line. It only parses arguments, calls the
//! commands in `cli` and prints; errors reach the user as one line on
//! stderr, `error: ...`.
//!
//! Exit codes:
//! - `0` — success;
//! - `1` — the operation failed: bad argument value (malformed `N=HOST:PORT`,
//!   vShard out of range, missing certificate files), the cluster refused or
//!   was unavailable, `kv get` of an absent key, a journal that does not
//!   verify, a malformed workflow id, `workflow watch` or `migrate --wait`
//!   of a workflow that ends other than `Completed` (aborted, paused) or
//!   outlives `--max-wait-secs`, a `demo` that does not verify;
//! - `2` — the command line is malformed (unknown command or flag, missing
//!   argument, a number that is not one), reported by clap.
//!
//! The same table is in the README's CLI reference and the top-level
//! `--help`.
//!
//! Logging: `shardflow node` logs to stderr (`RUST_LOG`, default `info`);
//! other commands log only when `RUST_LOG` is set.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use cli::args::Cli;
use cli::Output;

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(&cli.command);
    let printed = cli::run(cli.command).and_then(print);
    match printed {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, whatever the error's sources contain.
            let line = error.to_string().replace(['\n', '\r'], " ");
            eprintln!("error: {line}");
            ExitCode::from(1)
        }
    }
}

fn print(output: Output) -> Result<(), cli::CliError> {
    let mut stdout = std::io::stdout().lock();
    let written = match output {
        Output::Nothing => Ok(()),
        Output::Text(text) if text.is_empty() => Ok(()),
        Output::Text(text) => writeln!(stdout, "{text}"),
        Output::Json(value) => writeln!(stdout, "{}", serde_json::to_string_pretty(&value)?),
        Output::Bytes(bytes) => stdout.write_all(&bytes).and_then(|()| writeln!(stdout)),
    };
    written
        .and_then(|()| stdout.flush())
        .map_err(|source| cli::CliError::Io {
            what: "write to stdout",
            source,
        })
}
