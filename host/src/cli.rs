//! Subcommands of `sluice`. The edge of the program: errors become messages
//! and exit codes here (0 ok, 1 the batch failed, 2 bad usage or input).

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use sluice::exec::{ExecReport, read_records, write_log_line};
use sluice::{BatchSpec, Limits, RuntimeBuilder, VecSource};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Run untrusted foreachBatch sinks as WebAssembly components, exactly once")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one batch of a sink over records from a JSONL file, without Kafka.
    Exec(ExecArgs),
}

#[derive(clap::Args)]
struct ExecArgs {
    /// The sink component (.wasm).
    #[arg(long)]
    component: PathBuf,
    /// Records, one JSON object per line (see the README for the format).
    #[arg(long)]
    records: PathBuf,
    /// The batch id: it seeds the sink's random numbers.
    #[arg(long, default_value_t = 0)]
    batch_id: u64,
    /// The pipeline id: it seeds the sink's random numbers too.
    #[arg(long, default_value = "exec")]
    pipeline_id: String,
    /// The batch's planned timestamp (ms since the epoch): the sink's clock.
    /// Default: the largest record timestamp.
    #[arg(long)]
    timestamp_ms: Option<i64>,
    /// Override a limit, e.g. `--limit fuel=1000000` (repeatable).
    #[arg(long = "limit", value_name = "KEY=VALUE")]
    limits: Vec<String>,
    /// Tables the sink may stage to (comma-separated). Default: any.
    #[arg(long, value_delimiter = ',')]
    tables: Option<Vec<String>>,
    /// Also print the staged JSON rows.
    #[arg(long)]
    rows: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Where batch scratch directories go.
    #[arg(long)]
    scratch_dir: Option<PathBuf>,
    /// Where compiled components are cached.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Exec(args) => exec(args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}

fn exec(args: ExecArgs) -> Result<ExitCode> {
    let limits = parse_limits(&args.limits)?;
    let records = read_records(&args.records)?;
    let scratch = args.scratch_dir.unwrap_or_else(|| std::env::temp_dir().join("sluice-scratch"));
    let mut builder = RuntimeBuilder::new(scratch).with_limits(limits).with_cache_dir(args.cache_dir.unwrap_or_else(default_cache_dir));
    if let Some(tables) = args.tables {
        builder = builder.with_tables(tables);
    }
    let runtime = builder.build()?;
    let sink = runtime.load(&args.component)?;
    let spec = BatchSpec {
        pipeline_id: args.pipeline_id,
        batch_id: args.batch_id,
        planned_timestamp_ms: args.timestamp_ms.unwrap_or_else(|| records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0)),
        ranges: BatchSpec::ranges_covering(&records),
    };
    match sink.run(&spec, 1, Box::new(VecSource::new(records))) {
        Ok(output) => {
            let report = ExecReport::new(&output, sink.digest(), args.rows);
            if args.json {
                let mut value = serde_json::to_value(&report)?;
                value["ok"] = true.into();
                println!("{value}");
            } else {
                print!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            if args.json {
                let value = serde_json::json!({
                    "ok": false,
                    "pipeline_id": spec.pipeline_id,
                    "batch_id": failure.batch_id,
                    "error": failure.to_string(),
                    "class": failure.error.class(),
                    "retryable": failure.error.retryable(),
                    "limit": failure.error.limit().map(|l| l.key()),
                    "kept_scratch": failure.kept_scratch,
                    "log": failure.log,
                });
                println!("{value}");
            } else {
                let mut text = format!("error: {failure}\n");
                if let Some(dir) = &failure.kept_scratch {
                    text += &format!("  /staging kept for inspection at {}\n", dir.display());
                }
                if !failure.log.is_empty() {
                    text += "  log:\n";
                }
                for line in &failure.log {
                    write_log_line(&mut text, line)?;
                }
                eprint!("{text}");
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// `KEY=VALUE` overrides on top of the default limits; unknown keys are
/// rejected with the list of valid ones.
fn parse_limits(overrides: &[String]) -> Result<Limits> {
    let mut map = serde_json::Map::new();
    for o in overrides {
        let Some((key, value)) = o.split_once('=') else { bail!("--limit {o}: expected KEY=VALUE, e.g. fuel=1000000") };
        let key = key.trim().trim_start_matches("limits.");
        let value: u64 = value.trim().parse().with_context(|| format!("--limit {o}: the value must be a whole number"))?;
        map.insert(key.to_owned(), value.into());
    }
    serde_json::from_value(map.into()).context("--limit")
}

fn default_cache_dir() -> PathBuf {
    // Host configuration, not something a sink can observe.
    let base = std::env::var_os("SLUICE_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("sluice")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/sluice")))
        .unwrap_or_else(|| std::env::temp_dir().join("sluice-cache"));
    base.join("components")
}
