//! Subcommands of `sluice`. The edge of the program: errors become messages
//! and exit codes here (0 ok, 1 the batch failed, 2 bad usage or input).

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use sluice::tools::exec::{ExecReport, read_records, write_log_line};
use sluice::config::PipelineConfig;
use sluice::tools::demo::DemoOptions;
use sluice::pipeline::{BatchReport, Event, Pipeline, Stopped};
use sluice::tools::reconcile::ReconcileOptions;
use sluice::tools::replay::ReplayOptions;
use sluice::tools::status::Status;
use sluice::{BatchSpec, Limits, RuntimeBuilder, VecSource};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Run untrusted foreachBatch sinks as WebAssembly components, exactly once")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: Kafka → sink → Delta, exactly once.
    Run(RunArgs),
    /// Show a pipeline's last batch, offsets, lag and table versions.
    Status(StatusArgs),
    /// Run one recorded batch again as a dry run and compare its output.
    Replay(ReplayArgs),
    /// Look at one batch: show what is recorded, or export it to a bundle.
    #[command(subcommand)]
    Batch(BatchCommand),
    /// Check that every source record reached the tables once (for cron).
    Reconcile(ReconcileArgs),
    /// Repair the checkpoint: `rebuild` it from the tables' Delta logs.
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Maintain the tables now: log checkpoint and cleanup, compaction, VACUUM.
    Maintain(ConfigArgs),
    /// Poison records set aside by `pipeline.on_poison = "quarantine"`.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Run the example upsert sink on an embedded Kafka into a local Delta table.
    Demo(DemoArgs),
    /// Run one batch of a sink over records from a JSONL file, without Kafka.
    Exec(ExecArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The pipeline config (see the README's config reference).
    config: PathBuf,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The pipeline config.
    config: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// The pipeline config (optional with --bundle).
    config: Option<PathBuf>,
    /// The batch to replay (optional with --bundle).
    #[arg(long)]
    batch: Option<u64>,
    /// Run this component instead of the one the batch was planned with
    /// (e.g. a new version, to see what it would change).
    #[arg(long)]
    component: Option<PathBuf>,
    /// Take the batch from a bundle (`sluice batch export`) instead of the
    /// checkpoint and Kafka.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Differing rows to list per table.
    #[arg(long, default_value_t = 10)]
    max_rows: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum BatchCommand {
    /// Show a batch's ranges, commit, attempts, errors and sink logs.
    Show(BatchShowArgs),
    /// Write a batch (records, plan, commit record, component) to a bundle
    /// that replays anywhere, without Kafka.
    Export(BatchExportArgs),
}

#[derive(clap::Args)]
struct BatchShowArgs {
    /// The batch.
    batch: u64,
    /// The pipeline config.
    #[arg(long, short, default_value = "pipeline.toml")]
    config: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct BatchExportArgs {
    /// The batch.
    batch: u64,
    /// The bundle file to write.
    #[arg(long, short)]
    output: PathBuf,
    /// The pipeline config.
    #[arg(long, short, default_value = "pipeline.toml")]
    config: PathBuf,
    /// Leave the component out (replaying then needs --component).
    #[arg(long)]
    without_component: bool,
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// Re-process the records a batch set aside, once the sink is fixed:
    /// through a new batch, exactly once; they are marked released in the
    /// quarantine table. A second release of the batch does nothing.
    Release(QuarantineReleaseArgs),
}

#[derive(clap::Args)]
struct QuarantineReleaseArgs {
    /// The pipeline config.
    config: PathBuf,
    /// The batch whose records to release.
    #[arg(long)]
    batch: u64,
    /// The (fixed) sink component to release them with; the pipeline's
    /// `component` by default.
    #[arg(long)]
    component: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CheckpointCommand {
    /// Rebuild a lost or damaged checkpoint from the tables' Delta logs
    /// (the old logs are kept aside); `sluice run` then continues exactly
    /// where the tables are.
    Rebuild(ConfigArgs),
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// The pipeline config.
    config: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ReconcileArgs {
    /// The pipeline config.
    config: PathBuf,
    /// Count source records in Kafka only for the last K batches.
    #[arg(long, value_name = "K")]
    last: Option<u64>,
    /// Do not read Kafka (checkpoint and tables only).
    #[arg(long)]
    skip_source: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Where the config, checkpoint, table and metrics go (replaced if a
    /// previous demo made it).
    #[arg(long, default_value = "sluice-demo")]
    dir: PathBuf,
    /// Order records to produce.
    #[arg(long, default_value_t = 10_000)]
    records: usize,
    /// Distinct orders among them (each gets several status updates).
    #[arg(long, default_value_t = 2_500)]
    orders: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 2_000)]
    batch_records: u64,
    /// The sink component (default: the example built with sluice).
    #[arg(long)]
    component: Option<PathBuf>,
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
    /// Tables the sink may stage to (comma-separated), upserts on any keys.
    /// Default: any table.
    #[arg(long, value_delimiter = ',')]
    tables: Option<Vec<String>>,
    /// A table and its key columns, `TABLE=KEY[,KEY…]` (repeatable), as
    /// `[[tables]] keys` declares them: upserts to it must use exactly
    /// these keys. `TABLE=` declares a table without keys (appends only).
    #[arg(long = "keys", value_name = "TABLE=KEYS")]
    keys: Vec<String>,
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
        Command::Run(args) => run(args),
        Command::Status(args) => status(args),
        Command::Replay(args) => replay(args),
        Command::Batch(BatchCommand::Show(args)) => batch_show(args),
        Command::Batch(BatchCommand::Export(args)) => batch_export(args),
        Command::Reconcile(args) => reconcile(args),
        Command::Checkpoint(CheckpointCommand::Rebuild(args)) => checkpoint_rebuild(args),
        Command::Quarantine(QuarantineCommand::Release(args)) => quarantine_release(args),
        Command::Maintain(args) => maintain(args),
        Command::Demo(args) => demo(args),
        Command::Exec(args) => exec(args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let config = PipelineConfig::load(&args.config)?;
    let id = config.pipeline.id.clone();
    let checkpoint = config.pipeline.checkpoint.clone();
    // Served from the start, so a standby can be scraped (and is not ready).
    let published = match &config.pipeline.metrics_addr {
        Some(addr) => {
            let ready_within = std::time::Duration::from_millis(config.pipeline.ready_within_ms);
            let p = sluice::pipeline::metrics::endpoint::start(addr, ready_within)
                .map_err(|e| anyhow::anyhow!("config {}: {e}", args.config.display()))?;
            eprintln!("sluice: pipeline {id}: metrics on http://{}/metrics (and /healthz, /readyz)", p.addr);
            Some(p)
        }
        None => None,
    };
    let mut on_standby = |event: sluice::checkpoint::lease::Standby<'_>| match event {
        sluice::checkpoint::lease::Standby::Waiting(l) => {
            if let Some(p) = &published {
                p.set_state(false, &format!("standby: {} holds the lease (epoch {})", l.owner, l.epoch));
            }
            eprintln!(
                "sluice: standby: checkpoint {checkpoint} is held by {} (lease epoch {}, {} ms); taking over if it is \
                 released or not renewed for {} ms",
                l.owner, l.epoch, l.lease_ms, l.lease_ms
            )
        }
        sluice::checkpoint::lease::Standby::Took(epoch) => {
            eprintln!("sluice: took the lease on checkpoint {checkpoint} (epoch {epoch})")
        }
    };
    let opened = Pipeline::open_as_standby(config, args.config.display().to_string(), &mut on_standby);
    let mut pipeline = match opened {
        Ok(p) => p,
        Err(e) => {
            if let Some(p) = &published {
                p.set_state(false, "failed to start");
            }
            return Ok(failed(&e));
        }
    };
    stop_on_signals(pipeline.stop_flag())?;
    if let Some(epoch) = pipeline.epoch() {
        eprintln!("sluice: pipeline {id}: owner of checkpoint {checkpoint} (lease epoch {epoch})");
    }
    if let Some(p) = &published {
        pipeline.publish_to(p.clone());
        p.set_state(true, "owner, running");
    }
    eprintln!(
        "sluice: pipeline {id}: running component {}",
        &pipeline.component_digest()[..16]
    );
    let result = pipeline.run(|e| report_event(e, ""));
    if let Some(p) = &published {
        p.set_state(false, if result.is_ok() { "stopped" } else { "stopped on an error" });
    }
    match result {
        Ok(summary) => {
            let last = summary.last_committed.map_or("none".to_owned(), |b| b.to_string());
            match summary.stopped {
                Stopped::CaughtUp => eprintln!("sluice: caught up: {} batch(es) this run, last committed batch {last}", summary.batches),
                Stopped::Requested => eprintln!("sluice: stopped on request; last committed batch {last}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(failed(&e)),
    }
}

/// Print a pipeline error. Exit code 4: this process lost its lease (another
/// owns the pipeline now; a supervisor may start it again as a standby);
/// 2: the config breaks a rule (as for config errors found on loading);
/// 1: any other failure.
fn failed(e: &sluice::pipeline::PipelineError) -> ExitCode {
    eprintln!("error: {e}");
    if e.lost_lease() {
        return ExitCode::from(4);
    }
    if matches!(e, sluice::pipeline::PipelineError::Config { .. }) {
        return ExitCode::from(2);
    }
    if let sluice::pipeline::PipelineError::BatchFailed { failure, .. } = e {
        if let Some(dir) = &failure.kept_scratch {
            eprintln!("  /staging of the last attempt kept at {}", dir.display());
        }
        let mut log = String::new();
        for line in failure.log.iter().rev().take(20).rev() {
            let _ = write_log_line(&mut log, line);
        }
        if !log.is_empty() {
            eprint!("  last log lines:\n{log}");
        }
    }
    ExitCode::from(1)
}

/// SIGINT/SIGTERM: the first finishes the current batch and stops; a second
/// exits at once (safe too: the checkpoint re-runs the batch).
fn stop_on_signals(stop: Arc<AtomicBool>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())?;
        signal_hook::flag::register(signal, stop.clone())?;
    }
    Ok(())
}

/// Progress to stdout, one line per batch; retries to stderr.
fn report_event(event: &Event, indent: &str) {
    match event {
        Event::Committed(r) => println!("{indent}{}", progress_line(r)),
        Event::Healed { batch_id, tables, records } => {
            let tables: Vec<String> = tables.iter().map(|(t, v)| format!("{t}@v{v}")).collect();
            println!(
                "{indent}batch {batch_id}: healed: the table(s) had lost it; re-run from its plan ({records} records), \
                 identical output committed again  [{}]",
                tables.join(" ")
            );
        }
        Event::Maintained { batch_id, steps } => {
            for m in steps {
                println!("{indent}maintenance after batch {batch_id}: table {}: {}: {} ({} ms)", m.table, m.step, m.detail, m.ms);
            }
        }
        Event::Quarantined { batch_id, excluded, runs } => {
            // Never silent: one line per record set aside.
            let how = if *runs == 0 { "as decided before".to_owned() } else { format!("found in {runs} extra sink runs") };
            for e in excluded {
                println!("{indent}batch {batch_id}: QUARANTINED {}/{}@{} ({how}): {}", e.topic, e.partition, e.offset, e.error);
            }
        }
        Event::Retrying { batch_id, attempt, max_attempts, error, backoff } => {
            let what = batch_id.map_or("planning".to_owned(), |b| format!("batch {b}"));
            eprintln!(
                "{indent}sluice: {what}: attempt {attempt}/{max_attempts} failed: {error}; retrying in {} ms",
                backoff.as_millis()
            );
        }
    }
}

fn progress_line(r: &BatchReport) -> String {
    let tables: Vec<String> = r.table_versions.iter().map(|(t, v)| format!("{t}@v{v}")).collect();
    if r.already_committed {
        return format!("batch {}: already committed before a restart, sink not run  [{}]", r.batch_id, tables.join(" "));
    }
    let retries = if r.attempts > 1 { format!(", {} attempts", r.attempts) } else { String::new() };
    format!(
        "batch {}: {} records, {:.1} KiB in {} ms (sink {} ms, commit {} ms{retries})  [{}]",
        r.batch_id,
        r.records,
        r.bytes as f64 / 1024.0,
        r.total.as_millis(),
        r.sink.as_millis(),
        r.commit.as_millis(),
        tables.join(" ")
    )
}

fn status(args: StatusArgs) -> Result<ExitCode> {
    let config = PipelineConfig::load(&args.config)?;
    let status = Status::gather(&config);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{status}");
    }
    Ok(if status.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Exit 0 when the replay is identical to the commit, 1 when it differs or
/// the sink failed, 2 when it could not run.
fn replay(args: ReplayArgs) -> Result<ExitCode> {
    let config = args.config.as_deref().map(PipelineConfig::load).transpose()?;
    let options = ReplayOptions {
        batch: args.batch,
        component: args.component,
        bundle: args.bundle,
        max_diff_rows: args.max_rows,
        cache_dir: Some(default_cache_dir()),
    };
    let report = sluice::tools::replay::replay(config.as_ref(), &options)?;
    print_report(&report, args.json)?;
    Ok(if report.identical { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn print_report(report: &(impl serde::Serialize + std::fmt::Display), json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

fn batch_show(args: BatchShowArgs) -> Result<ExitCode> {
    let config = PipelineConfig::load(&args.config)?;
    let Some(info) = sluice::tools::batch_show::show(&config, args.batch)? else {
        let first_kept = sluice::checkpoint::Checkpoint::open_read_only_at(&config.checkpoint_place())
            .ok()
            .and_then(|cp| cp.first_retained_plan().ok().flatten());
        if let Some(first_kept) = first_kept.filter(|&f| args.batch < f) {
            bail!("batch {} is no longer in the checkpoint: plans before batch {first_kept} were pruned (retention.batches)", args.batch);
        }
        bail!("batch {} is not in the checkpoint's offset log: it was never planned", args.batch);
    };
    print_report(&info, args.json)?;
    Ok(ExitCode::SUCCESS)
}

fn batch_export(args: BatchExportArgs) -> Result<ExitCode> {
    let config = PipelineConfig::load(&args.config)?;
    let m = sluice::tools::export::export(&config, args.batch, &args.output, !args.without_component)?;
    let committed = m.committed.as_ref().map_or("not committed".to_owned(), |c| format!("committed output {}", &c.output_digest[..16]));
    let component = if m.component.is_some() { "with its component" } else { "without its component" };
    println!(
        "batch {} → {}: {} records, {committed}, {component} ({})",
        m.batch.batch_id,
        args.output.display(),
        m.record_count,
        &m.component_digest[..16]
    );
    println!("replay it anywhere with: sluice replay --bundle {}", args.output.display());
    Ok(ExitCode::SUCCESS)
}

/// Exit 0 when rebuilt, 1 when the tables disagree or lack what is needed
/// (nothing changed then).
/// Exit 0 when every step ran, 1 when one failed.
fn maintain(args: ConfigArgs) -> Result<ExitCode> {
    let config = PipelineConfig::load(&args.config)?;
    let report = sluice::tools::maintain::maintain(&config)?;
    print_report(&report, args.json)?;
    Ok(if report.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn quarantine_release(args: QuarantineReleaseArgs) -> Result<ExitCode> {
    let mut config = PipelineConfig::load(&args.config)?;
    if let Some(component) = &args.component {
        config.pipeline.component = component.clone();
    }
    let mut pipeline = match Pipeline::open(config, args.config.display().to_string()) {
        Ok(p) => p,
        Err(e) => return Ok(failed(&e)),
    };
    stop_on_signals(pipeline.stop_flag())?;
    match pipeline.release(args.batch, |e| report_event(e, "")) {
        Ok(sluice::pipeline::Released::Done { in_batch, records }) => {
            println!("released {records} record(s) of batch {} in batch {in_batch}", args.batch);
            Ok(ExitCode::SUCCESS)
        }
        Ok(sluice::pipeline::Released::Already { in_batch, records }) => {
            println!("the {records} record(s) of batch {} were released in batch {in_batch} before: nothing to do", args.batch);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(failed(&e)),
    }
}

fn checkpoint_rebuild(args: ConfigArgs) -> Result<ExitCode> {
    let config = PipelineConfig::load(&args.config)?;
    match sluice::checkpoint::rebuild::rebuild(&config) {
        Ok(report) => {
            print_report(&report, args.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (sluice::checkpoint::rebuild::RebuildError::TablesDisagree { .. } | sluice::checkpoint::rebuild::RebuildError::Incomplete(_))) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

/// Exit 0 when everything reconciles, 1 on any discrepancy, 3 when nothing
/// is wrong but some checks could not be made (Kafka down, say).
fn reconcile(args: ReconcileArgs) -> Result<ExitCode> {
    let config = PipelineConfig::load(&args.config)?;
    let options = ReconcileOptions { last: args.last, skip_source: args.skip_source };
    let report = sluice::tools::reconcile::reconcile(&config, &options)?;
    print_report(&report, args.json)?;
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else if report.findings.is_empty() {
        ExitCode::from(3)
    } else {
        ExitCode::from(1)
    })
}

fn demo(args: DemoArgs) -> Result<ExitCode> {
    let component =
        args.component.unwrap_or_else(|| PathBuf::from(env!("SLUICE_GUEST_DIR")).join("orders_upsert.wasm"));
    if !component.exists() {
        bail!("{} not found: build the example sink first (`make demo` does)", component.display());
    }
    let options = DemoOptions {
        dir: args.dir,
        records: args.records,
        orders: args.orders,
        batch_records: args.batch_records,
        component,
    };
    let partitions = sluice::tools::demo::partitions_for(options.records, options.orders);
    println!("sluice demo: {} order records for {} orders on an embedded Kafka ({partitions} partitions)", options.records, options.orders);
    let summary = match sluice::tools::demo::run(&options, |e| report_event(e, "  ")) {
        Ok(s) => s,
        Err(sluice::tools::demo::DemoError::Pipeline(e)) => return Ok(failed(&e)),
        Err(e) => return Err(e.into()),
    };
    let version = summary.run.table_versions.get("orders").map_or("?".to_owned(), |v| v.to_string());
    println!(
        "\ndone: {} batches, {} records → {} rows in table `orders` (version {version}), one per order: {} distinct, {} with their latest status",
        summary.run.batches, summary.run.records, summary.rows, summary.distinct_orders, summary.latest_status_rows
    );
    println!("  table:   {}", summary.table.display());
    println!("  config:  {}", summary.config.display());
    println!("  metrics: {}", summary.metrics.display());
    println!("  the exact config ran with `sluice run`; `sluice status {}` shows its checkpoint and table", summary.config.display());
    println!(
        "  look closer: `sluice batch show 2 -c {0}`, `sluice reconcile {0} --skip-source` \
         (the embedded Kafka is gone now: see docs/guides/debugging.md for replaying against a real one)",
        summary.config.display()
    );
    let exact = summary.rows == options.orders.min(options.records) as u64 && summary.latest_status_rows == summary.rows;
    Ok(if exact { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn exec(args: ExecArgs) -> Result<ExitCode> {
    // It names the batch's scratch directory.
    if let Err(e) = sluice::config::check_pipeline_id(&args.pipeline_id) {
        bail!("--pipeline-id: {e}");
    }
    let limits = parse_limits(&args.limits)?;
    let records = read_records(&args.records)?;
    let scratch = args.scratch_dir.unwrap_or_else(|| std::env::temp_dir().join("sluice-scratch"));
    let mut builder = RuntimeBuilder::new(scratch).with_limits(limits).with_cache_dir(args.cache_dir.unwrap_or_else(default_cache_dir));
    if let Some(tables) = args.tables {
        builder = builder.with_tables(tables);
    }
    let mut keyed = Vec::new();
    for k in &args.keys {
        let Some((table, keys)) = k.split_once('=') else { bail!("--keys {k}: expected TABLE=KEY[,KEY…], e.g. orders=order_id") };
        let keys = keys.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect();
        keyed.push((table.trim().to_owned(), keys));
    }
    if !keyed.is_empty() {
        builder = builder.with_keyed_tables(keyed);
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
