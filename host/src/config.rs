//! The pipeline config file (`pipeline.toml`): what to read, which sink to
//! run, where the checkpoint and the tables live, and the limits.
//!
//! Every table rejects unknown keys, and every error names the key it is
//! about (`source.max_records_per_batch`, `tables[1].keys`), the file and
//! the line, so a typo is found before anything runs. Relative paths are
//! resolved against the directory of the config file, not the working
//! directory, so `sluice run` behaves the same from anywhere.

use crate::checkpoint::retention::RetentionConfig;
use crate::commit::TableConfig;
use crate::limits::Limits;
use crate::source::SourceConfig;
use crate::storage::{Location, StorageOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A whole pipeline config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The `[pipeline]` table.
    pub pipeline: PipelineSection,
    /// The `[source]` table.
    pub source: SourceConfig,
    /// The `[[tables]]` the sink may write.
    pub tables: Vec<TableConfig>,
    /// The `[limits]` of every batch (all optional).
    #[serde(default)]
    pub limits: Limits,
    /// How much checkpoint history is kept (all optional).
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Where poison records go and the search's bounds
    /// (`pipeline.on_poison = "quarantine"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<crate::pipeline::quarantine::QuarantineConfig>,
}

/// `pipeline.on_poison`: what a batch failing deterministically does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnPoison {
    /// Stop the pipeline (retrying cannot help): the operator fixes the sink.
    #[default]
    Stop,
    /// Find the records it fails on, set them aside in the quarantine
    /// table, and commit the rest (see `pipeline::quarantine`).
    Quarantine,
}

/// How the pipeline decides when to plan the next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Run forever: plan a batch every `trigger_interval_ms` when records
    /// are waiting, as fast as batches finish when behind.
    #[default]
    Continuous,
    /// Process what is in the topics when the run starts, then stop.
    AvailableNow,
}

/// The `[pipeline]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Names the pipeline: the Delta `txn` app id and the seed of the sink's
    /// random numbers. Changing it makes a different pipeline.
    pub id: String,
    /// The sink component (`.wasm`).
    pub component: PathBuf,
    /// The checkpoint (offset log and commit log): a local directory or an
    /// object-store URL (`s3://bucket/prefix`, `az://…`, `gs://…`).
    pub checkpoint: Location,
    /// Object-store options for the checkpoint and every table (a table's
    /// own `storage_options` override them), as delta-rs takes them. Never
    /// serialised: they may hold secrets.
    #[serde(default, skip_serializing)]
    pub storage_options: StorageOptions,
    /// Whether a checkpoint on local disk is acceptable with tables in
    /// object storage (`"local-ok"`), or refused (`"strict"`, the default).
    #[serde(default)]
    pub checkpoint_durability: CheckpointDurability,
    /// How long the lease on a remote checkpoint lasts unrenewed: a standby
    /// takes over within about this long of the owner's death.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Where batch scratch directories go (default: `<checkpoint>/scratch`,
    /// or `<temp>/sluice/<id>/scratch` for a remote checkpoint).
    #[serde(default)]
    pub scratch: Option<PathBuf>,
    /// Where compiled components are cached (default: `<checkpoint>/cache`,
    /// or `<temp>/sluice/<id>/cache` for a remote checkpoint).
    #[serde(default)]
    pub cache: Option<PathBuf>,
    /// When to plan batches.
    #[serde(default)]
    pub trigger: Trigger,
    /// Minimum time between batch starts when caught up, in ms.
    #[serde(default = "default_trigger_interval_ms")]
    pub trigger_interval_ms: u64,
    /// Attempts per batch before the pipeline stops (retryable failures only).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry, in ms; doubles per retry up to 30 s.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Write Prometheus-format metrics to this file after every batch.
    #[serde(default)]
    pub metrics_file: Option<PathBuf>,
    /// Serve `/metrics`, `/healthz` and `/readyz` over HTTP here
    /// (`127.0.0.1:9464`, `0.0.0.0:9464`; port 0 picks one).
    #[serde(default)]
    pub metrics_addr: Option<String>,
    /// `/readyz` fails when the batch loop has not turned for this long.
    #[serde(default = "default_ready_within_ms")]
    pub ready_within_ms: u64,
    /// What a batch that fails deterministically does: `"stop"` (default)
    /// or `"quarantine"`.
    #[serde(default)]
    pub on_poison: OnPoison,
}

/// `pipeline.checkpoint_durability`: the §6.5 rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointDurability {
    /// Tables in object storage need the checkpoint in object storage too.
    #[default]
    Strict,
    /// A local checkpoint is accepted whatever the tables (its disk is
    /// known to outlive the node, or losing it is acceptable).
    LocalOk,
}

fn default_ready_within_ms() -> u64 {
    60_000
}

fn default_lease_ms() -> u64 {
    10_000
}

fn default_trigger_interval_ms() -> u64 {
    1_000
}

fn default_max_attempts() -> u32 {
    3
}

fn default_retry_backoff_ms() -> u64 {
    500
}

/// The config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is missing, unknown or mistyped.
    #[error("{}: `{key}`: {message}", location(path, *line))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted key (`source.topics`), or `(file)` for syntax errors.
        key: String,
        /// The line, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

impl PipelineConfig {
    /// Read and check `path`; relative paths in it become relative to its
    /// directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut config = Self::parse(&text).map_err(|e| e.in_file(path))?;
        config.resolve_paths(base);
        // Relative and absolute paths can name one directory only once resolved.
        config.check_table_paths().map_err(|(key, message)| ConfigError::Invalid { path: path.to_owned(), key, line: None, message })?;
        Ok(config)
    }

    /// Parse and check config text (paths are left as written).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let invalid = |key: String, line: Option<usize>, message: String| ConfigError::Invalid {
            path: PathBuf::new(),
            key,
            line,
            message,
        };
        let line_of = |span: Option<std::ops::Range<usize>>| {
            span.map(|s| text.as_bytes()[..s.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1)
        };
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| invalid("(file)".into(), line_of(e.span()), e.message().to_owned()))?;
        let config: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            invalid(if key == "." { "(top level)".into() } else { key }, line_of(inner.span()), inner.message().to_owned())
        })?;
        config.check().map_err(|(key, message)| invalid(key, None, message))?;
        Ok(config)
    }

    /// Rules serde cannot express.
    fn check(&self) -> Result<(), (String, String)> {
        let p = &self.pipeline;
        check_pipeline_id(&p.id).map_err(|message| ("pipeline.id".to_owned(), message))?;
        if p.max_attempts == 0 {
            return Err(("pipeline.max_attempts".into(), "must be at least 1".into()));
        }
        if !(100..=3_600_000).contains(&p.lease_ms) {
            return Err((
                "pipeline.lease_ms".into(),
                "must be from 100 ms to one hour".into(),
            ));
        }
        let s = &self.source;
        if s.topics.is_empty() {
            return Err(("source.topics".into(), "name at least one topic".into()));
        }
        if s.max_records_per_batch == 0 {
            return Err(("source.max_records_per_batch".into(), "must be at least 1".into()));
        }
        if let Some(key) = s.secrets.keys().find(|k| s.properties.contains_key(*k)) {
            return Err((format!("source.secrets.\"{key}\""), format!("`{key}` is also set in source.properties; set it in one place")));
        }
        if s.max_bytes_per_batch == Some(0) {
            return Err(("source.max_bytes_per_batch".into(), "must be at least 1".into()));
        }
        if self.tables.is_empty() {
            return Err(("tables".into(), "declare at least one [[tables]] entry for the sink to write".into()));
        }
        let mut names = BTreeSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            if !names.insert(&t.name) {
                return Err((format!("tables[{i}].name"), format!("table `{}` is declared twice", t.name)));
            }
            let mut columns = BTreeSet::new();
            for (j, c) in t.columns.iter().enumerate() {
                if !columns.insert(&c.name) {
                    return Err((format!("tables[{i}].columns[{j}].name"), format!("column `{}` is declared twice", c.name)));
                }
                if c.name.starts_with("__sluice") {
                    return Err((format!("tables[{i}].columns[{j}].name"), format!("`{}`: names starting with `__sluice` are the host's own", c.name)));
                }
            }
            if t.columns.is_empty() {
                return Err((format!("tables[{i}].columns"), format!("table `{}` needs at least one column", t.name)));
            }
            if let Some(k) = t.keys.iter().find(|k| !columns.contains(k)) {
                return Err((format!("tables[{i}].keys"), format!("key `{k}` is not a column of table `{}`", t.name)));
            }
            let mut partitions = BTreeSet::new();
            for p in &t.partition_by {
                let Some(c) = t.columns.iter().find(|c| &c.name == p) else {
                    return Err((format!("tables[{i}].partition_by"), format!("`{p}` is not a column of table `{}`", t.name)));
                };
                if !c.data_type.partitionable() {
                    return Err((
                        format!("tables[{i}].partition_by"),
                        format!("column `{p}` is {}: partition by a string, integer, boolean, date, timestamp or decimal column", c.data_type),
                    ));
                }
                if !partitions.insert(p) {
                    return Err((format!("tables[{i}].partition_by"), format!("`{p}` is named twice")));
                }
            }
            if partitions.len() == t.columns.len() {
                return Err((format!("tables[{i}].partition_by"), "a table needs at least one column that is not a partition column".into()));
            }
        }
        match (&self.pipeline.on_poison, &self.quarantine) {
            (OnPoison::Quarantine, None) => {
                return Err(("pipeline.on_poison".into(), "\"quarantine\" needs a [quarantine] table giving the quarantine table's `path`".into()));
            }
            (OnPoison::Stop, Some(_)) => {
                return Err(("quarantine".into(), "is used only with pipeline.on_poison = \"quarantine\"; set it, or remove [quarantine]".into()));
            }
            (_, Some(q)) => {
                if self.tables.iter().any(|t| t.name == q.table) {
                    return Err(("quarantine.table".into(), format!("`{}` is also a [[tables]] name; the quarantine table is the host's own", q.table)));
                }
                if q.max_records_per_batch == 0 || q.max_extra_runs == 0 {
                    return Err(("quarantine.max_records_per_batch".into(), "it and quarantine.max_extra_runs must be at least 1".into()));
                }
            }
            _ => {}
        }
        if self.retention.batches == 0 {
            return Err(("retention.batches".into(), "must be at least 1: a restart continues from the last committed batch's plan".into()));
        }
        self.check_table_paths()
    }

    /// Every table has a directory of its own: two tables at one path would
    /// share one Delta log (the second finds the batch already committed and
    /// silently gets no rows), and a table inside another's directory is
    /// part of that table's files (a vacuum of the outer one deletes it).
    /// Compared as written, `.` and `..` resolved, symlinks not followed.
    fn check_table_paths(&self) -> Result<(), (String, String)> {
        // The quarantine table needs a place of its own too (it is last).
        let tables = self.resolved_tables();
        let parts: Vec<(String, Vec<String>)> =
            tables.iter().map(|t| t.path.parts()).collect();
        for (i, (store_a, a)) in parts.iter().enumerate() {
            for (j, (store_b, b)) in parts.iter().enumerate().filter(|(j, _)| *j < i) {
                let (ti, tj) = (&tables[i], &tables[j]);
                let relation = if store_a != store_b {
                    continue;
                } else if a == b {
                    "the same path as"
                } else if a.starts_with(b) {
                    "a path inside that of"
                } else if b.starts_with(a) {
                    "a path containing that of"
                } else {
                    continue;
                };
                let key = |k: usize| if k < self.tables.len() { format!("tables[{k}].path") } else { "quarantine.path".to_owned() };
                return Err((
                    key(i),
                    format!(
                        "table `{}` ({}) has {relation} `{}`, table `{}` ({}); give each table a directory of its own",
                        ti.name, ti.path, key(j), tj.name, tj.path
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The §6.5 rule: tables in object storage with the checkpoint on a
    /// node's disk lose the checkpoint with the node while the tables live
    /// on. Refused unless `pipeline.checkpoint_durability = "local-ok"`.
    /// `Err` is (key, message).
    pub fn check_durability(&self) -> Result<(), (String, String)> {
        if self.pipeline.checkpoint.is_remote()
            || self.pipeline.checkpoint_durability == CheckpointDurability::LocalOk
        {
            return Ok(());
        }
        let Some((i, t)) = self
            .tables
            .iter()
            .enumerate()
            .find(|(_, t)| t.path.is_remote())
        else {
            return Ok(());
        };
        Err((
            "pipeline.checkpoint_durability".into(),
            format!(
                "table `{}` is in object storage (tables[{i}].path = {}) but the checkpoint is on local disk ({}); \
                 when this node fails, the checkpoint is lost while the tables live on. Put the checkpoint beside the \
                 tables (pipeline.checkpoint = \"{}\"), or, if this disk outlives the node, accept it with \
                 checkpoint_durability = \"local-ok\" in [pipeline]",
                t.name,
                t.path,
                self.pipeline.checkpoint,
                beside(&t.path, &self.pipeline.id),
            ),
        ))
    }

    /// Where the checkpoint is and how to reach it.
    pub fn checkpoint_place(&self) -> crate::checkpoint::Place {
        crate::checkpoint::Place {
            location: self.pipeline.checkpoint.clone(),
            options: self.pipeline.storage_options.clone(),
            local: self.cache_dir(),
            lease_ms: self.pipeline.lease_ms,
        }
    }

    /// The tables as the committer takes them: each with its effective
    /// object-store options.
    pub fn resolved_tables(&self) -> Vec<TableConfig> {
        let mut tables: Vec<TableConfig> = self
            .tables
            .iter()
            .map(|t| TableConfig {
                storage_options: self.table_options(t),
                ..t.clone()
            })
            .collect();
        // The quarantine table commits with the batch like any other.
        if let Some(q) = self.quarantine.as_ref().filter(|_| self.pipeline.on_poison == OnPoison::Quarantine) {
            tables.push(q.table_config(self.pipeline.storage_options.merged(&q.storage_options)));
        }
        tables
    }

    /// The object-store options of table `t`: the pipeline's, with the
    /// table's own on top.
    pub fn table_options(&self, t: &TableConfig) -> StorageOptions {
        self.pipeline.storage_options.merged(&t.storage_options)
    }

    /// A local directory for one of the pipeline's own needs (`scratch`,
    /// `cache`): inside a local checkpoint, or under the system's temporary
    /// directory when the checkpoint is remote.
    fn local_dir(&self, name: &str) -> PathBuf {
        match &self.pipeline.checkpoint {
            Location::Local(dir) => dir.join(name),
            Location::Remote(_) => std::env::temp_dir()
                .join("sluice")
                .join(&self.pipeline.id)
                .join(name),
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let p = &mut self.pipeline;
        resolve(&mut p.component);
        p.checkpoint.resolve(base);
        for dir in [&mut p.scratch, &mut p.cache, &mut p.metrics_file]
            .into_iter()
            .flatten()
        {
            resolve(dir);
        }
        for t in &mut self.tables {
            t.path.resolve(base);
        }
        if let Some(q) = &mut self.quarantine {
            q.path.resolve(base);
        }
    }

    /// Where batch scratch directories go.
    pub fn scratch_dir(&self) -> PathBuf {
        self.pipeline
            .scratch
            .clone()
            .unwrap_or_else(|| self.local_dir("scratch"))
    }

    /// The source config for one of this pipeline's Kafka clients. Its group
    /// id (where the advisory offsets go, and what broker tools show)
    /// defaults to `sluice-<id>` for the pipeline itself and to
    /// `sluice-<tool>-<id>` for a tool beside it, so a tool never moves the
    /// pipeline's offsets.
    pub fn source_for(&self, tool: Option<&str>) -> SourceConfig {
        let mut source = self.source.clone();
        let group = match tool {
            Some(tool) => format!("sluice-{tool}-{}", self.pipeline.id),
            None => format!("sluice-{}", self.pipeline.id),
        };
        source.properties.entry("group.id".into()).or_insert(group);
        source
    }

    /// Where compiled components are cached.
    pub fn cache_dir(&self) -> PathBuf {
        self.pipeline
            .cache
            .clone()
            .unwrap_or_else(|| self.local_dir("cache"))
    }

    /// SHA-256 of what decides a batch's output apart from its records and
    /// the component: the pipeline id (the seed), the tables' schemas, the
    /// limits (chunk sizes among them: the sink sees them), and the source
    /// properties that change which records a range delivers
    /// ([`READ_AFFECTING_PROPERTIES`], at their effective value). Recorded
    /// with each planned batch and each commit, so a replay can tell when
    /// the config changed since and a half-committed batch is never
    /// finished under another one. Paths are left out: the same pipeline
    /// checked out elsewhere has the same digest.
    pub fn digest(&self) -> String {
        let read: serde_json::Map<String, serde_json::Value> = READ_AFFECTING_PROPERTIES
            .iter()
            .map(|&(key, default)| {
                let value = self.source.properties.get(key).map_or(default, String::as_str);
                (key.to_owned(), value.into())
            })
            .collect();
        let mut tables = serde_json::to_value(&self.tables).expect("tables serialise");
        for t in tables.as_array_mut().into_iter().flatten() {
            t.as_object_mut().map(|t| t.remove("path"));
        }
        let mut decisive = serde_json::json!({
            "pipeline_id": self.pipeline.id,
            "tables": tables,
            "limits": self.limits,
            "source_properties": read,
        });
        // Setting poison records aside changes what commits; the key is
        // absent otherwise, so digests of pipelines without it stand.
        if let Some(q) = self.quarantine.as_ref().filter(|_| self.pipeline.on_poison == OnPoison::Quarantine) {
            decisive["quarantine"] = serde_json::json!({
                "table": q.table,
                "max_records_per_batch": q.max_records_per_batch,
                "max_extra_runs": q.max_extra_runs,
            });
        }
        hex::encode(Sha256::digest(decisive.to_string().as_bytes()))
    }
}

/// librdkafka properties that change which records a planned range
/// delivers, with the value sluice uses when they are not set:
/// `isolation.level` decides whether aborted transactions' records are
/// read.
pub const READ_AFFECTING_PROPERTIES: &[(&str, &str)] = &[("isolation.level", "read_committed")];

/// The longest pipeline id: it names scratch directories and Delta `txn`s.
pub const MAX_PIPELINE_ID_LEN: usize = 200;

/// Whether `id` can be a pipeline id: it seeds the sink's random numbers,
/// is the Delta `txn` app id, and becomes part of file names (scratch
/// directories), so it must be a plain, non-hidden file name wherever it
/// comes from (the config, a bundle, `sluice exec --pipeline-id`).
pub fn check_pipeline_id(id: &str) -> Result<(), String> {
    let shown: String = id.chars().take(64).collect::<String>().escape_debug().to_string();
    if id.is_empty() || id.len() > MAX_PIPELINE_ID_LEN {
        return Err(format!("`{shown}` must be 1 to {MAX_PIPELINE_ID_LEN} characters"));
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) || id.starts_with('.') {
        return Err(format!("`{shown}` must be ASCII letters, digits, `-`, `_` or `.`, and not start with `.`"));
    }
    Ok(())
}

/// A checkpoint URL beside the table at `table`, for the durability
/// error's advice: `<scheme>://<bucket>/checkpoints/<pipeline id>`.
fn beside(table: &Location, id: &str) -> String {
    match table {
        Location::Remote(url) => {
            let user = if url.username().is_empty() {
                String::new()
            } else {
                format!("{}@", url.username())
            };
            format!(
                "{}://{user}{}/checkpoints/{id}",
                url.scheme(),
                url.host_str().unwrap_or_default()
            )
        }
        Location::Local(p) => p.join("checkpoint").display().to_string(),
    }
}

/// `config FILE line N`, leaving out what is unknown.
fn location(path: &Path, line: Option<usize>) -> String {
    let mut at = "config".to_owned();
    if !path.as_os_str().is_empty() {
        at += &format!(" {}", path.display());
    }
    if let Some(line) = line {
        at += &format!(" line {line}");
    }
    at
}

impl ConfigError {
    fn in_file(self, file: &Path) -> Self {
        match self {
            ConfigError::Invalid { key, line, message, .. } => {
                ConfigError::Invalid { path: file.to_owned(), key, line, message }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[pipeline]
id = "orders"
component = "sink.wasm"
checkpoint = "state/checkpoint"

[source]
bootstrap_servers = "127.0.0.1:9092"
topics = ["orders"]

[[tables]]
name = "orders"
path = "state/orders"
keys = ["order_id"]
columns = [
  { name = "order_id", type = "string", nullable = false },
  { name = "amount_cents", type = "long" },
]

[limits]
fuel = 1000
"#;

    fn error(text: &str) -> String {
        PipelineConfig::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_good_config_parses_with_defaults() {
        let c = PipelineConfig::parse(GOOD).unwrap();
        assert_eq!(c.pipeline.max_attempts, 3);
        assert_eq!(c.pipeline.trigger, Trigger::Continuous);
        assert_eq!(c.limits.fuel, 1000);
        assert_eq!(c.limits.memory_bytes, Limits::default().memory_bytes);
        assert_eq!(c.tables[0].keys, ["order_id"]);
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let e = error(&GOOD.replace("topics = [\"orders\"]", "topics = [\"orders\"]\nmax_records_per_batch = \"lots\""));
        assert!(e.contains("`source.max_records_per_batch`") && e.contains("line 10"), "{e}");
        let e = error(&GOOD.replace("fuel = 1000", "fuell = 1000"));
        assert!(e.contains("`limits.fuell`") && e.contains("unknown field `fuell`"), "{e}");
        let e = error(&GOOD.replace("type = \"long\"", "type = \"money\""));
        assert!(e.contains("`tables[0].columns[1].type`") && e.contains("unknown type `money`"), "{e}");
        let e = error(&GOOD.replace("keys = [\"order_id\"]", "keys = [\"id\"]"));
        assert!(e.contains("`tables[0].keys`: key `id` is not a column of table `orders`"), "{e}");
        let e = error(&GOOD.replace("[source]\n", "[sauce]\n"));
        assert!(e.contains("unknown field `sauce`"), "{e}");
        let e = error("[pipeline\n");
        assert!(e.contains("`(file)`") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn two_tables_in_one_directory_are_refused_naming_both() {
        let second = "\n[[tables]]\nname = \"audit\"\npath = \"PATH\"\ncolumns = [{ name = \"id\", type = \"string\" }]\n";
        let with = |path: &str| GOOD.replace("[limits]", &format!("{}\n[limits]", second.replace("PATH", path)));
        let e = error(&with("state/./orders/"));
        assert!(
            e.contains("`tables[1].path`: table `audit` (state/./orders/) has the same path as `tables[0].path`, table `orders` (state/orders)"),
            "{e}"
        );
        let e = error(&with("state/x/../orders/audit"));
        assert!(e.contains("has a path inside that of `tables[0].path`"), "{e}");
        let e = error(&with("state"));
        assert!(e.contains("has a path containing that of `tables[0].path`"), "{e}");
        assert!(PipelineConfig::parse(&with("state/orders-audit")).is_ok(), "a common prefix is not nesting");
        // The same directory, once written relative and once absolute.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, with(&dir.path().join("state/orders").display().to_string())).unwrap();
        let e = PipelineConfig::load(&file).unwrap_err().to_string();
        assert!(e.contains("`tables[1].path`") && e.contains("has the same path as `tables[0].path`"), "{e}");
    }

    #[test]
    fn pipeline_ids_are_plain_file_names() {
        for bad in ["", "..", ".", ".hidden", "../x", "a/b", "a\\b", "é", "a b"] {
            let e = error(&GOOD.replace("id = \"orders\"", &format!("id = {bad:?}")));
            assert!(e.contains("`pipeline.id`"), "{bad:?}: {e}");
        }
        assert!(check_pipeline_id(&"x".repeat(MAX_PIPELINE_ID_LEN + 1)).is_err());
        for good in ["orders", "a.b-c_d", "v1.2"] {
            assert!(check_pipeline_id(good).is_ok(), "{good}");
        }
        let e = error(&GOOD.replace("[limits]", "[retention]\nbatches = 0\n[limits]"));
        assert!(e.contains("`retention.batches`: must be at least 1"), "{e}");
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/orders-upsert/pipeline.toml"));
        let c = PipelineConfig::load(path).unwrap();
        assert!(c.pipeline.component.ends_with("target/guests/wasm32-wasip2/release/orders_upsert.wasm"));
        assert_eq!(c.source.properties["client.id"], "sluice-orders");
        assert_eq!(c.limits, Limits::default(), "the example shows default limits");
        assert_eq!(c.tables[0].keys, ["order_id"]);
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, GOOD).unwrap();
        let c = PipelineConfig::load(&file).unwrap();
        assert_eq!(c.pipeline.component, dir.path().join("sink.wasm"));
        assert_eq!(c.tables[0].path, Location::Local(dir.path().join("state/orders")));
        assert_eq!(c.scratch_dir(), dir.path().join("state/checkpoint/scratch"));
    }

    #[test]
    fn object_store_locations_are_kept_as_urls_with_their_options_never_serialised() {
        let text = GOOD
            .replace("checkpoint = \"state/checkpoint\"", "checkpoint = \"s3://lake/cp\"\nstorage_options = { aws_secret_access_key = \"s3cr3t\" }")
            .replace("path = \"state/orders\"", "path = \"s3://lake/orders\"\nstorage_options = { aws_region = \"eu-west-1\" }");
        let c = PipelineConfig::parse(&text).unwrap();
        assert_eq!(c.pipeline.checkpoint.to_string(), "s3://lake/cp");
        let t = &c.resolved_tables()[0];
        assert_eq!(t.storage_options.0.keys().collect::<Vec<_>>(), ["aws_region", "aws_secret_access_key"], "table over pipeline");
        assert_eq!(c.scratch_dir(), std::env::temp_dir().join("sluice/orders/scratch"), "local scratch for a remote checkpoint");
        let shown = format!("{c:?} {} {}", serde_json::to_string(&c.tables).unwrap(), serde_json::to_string(&c.pipeline).unwrap());
        assert!(!shown.contains("s3cr3t"), "{shown}");
        c.check_durability().unwrap();
        let e = error(&GOOD.replace("checkpoint = \"state/checkpoint\"", "checkpoint = \"gopher://x/y\""));
        assert!(e.contains("`pipeline.checkpoint`") && e.contains("not one sluice can serve"), "{e}");
    }

    #[test]
    fn remote_tables_with_a_local_checkpoint_break_the_durability_rule_unless_accepted() {
        let text = GOOD.replace("path = \"state/orders\"", "path = \"az://lake/orders\"");
        let c = PipelineConfig::parse(&text).unwrap();
        let (key, message) = c.check_durability().unwrap_err();
        assert_eq!(key, "pipeline.checkpoint_durability");
        assert!(message.contains("(pipeline.checkpoint = \"az://lake/checkpoints/orders\")"), "{message}");
        let ok = text.replace("checkpoint = \"state/checkpoint\"", "checkpoint = \"state/checkpoint\"\ncheckpoint_durability = \"local-ok\"");
        PipelineConfig::parse(&ok).unwrap().check_durability().unwrap();
        let e = error(&text.replace("checkpoint = \"state/checkpoint\"", "checkpoint = \"state/checkpoint\"\ncheckpoint_durability = \"yolo\""));
        assert!(e.contains("`pipeline.checkpoint_durability`") && e.contains("unknown variant `yolo`"), "{e}");
    }

    #[test]
    fn the_digest_follows_what_decides_output_not_where_things_are() {
        let digest = |text: &str| PipelineConfig::parse(text).unwrap().digest();
        let base = digest(GOOD);
        assert_eq!(digest(&GOOD.replace("path = \"state/orders\"", "path = \"/elsewhere/orders\"")), base, "a checkout elsewhere");
        assert_eq!(digest(&GOOD.replace("127.0.0.1:9092", "kafka:9092")), base);
        assert_ne!(digest(&GOOD.replace("fuel = 1000", "fuel = 2000")), base, "limits");
        assert_ne!(digest(&GOOD.replace("type = \"long\"", "type = \"double\"")), base, "schema");
        assert_ne!(digest(&GOOD.replace("id = \"orders\"", "id = \"payments\"")), base, "the seed");
        let with = |props: &str| GOOD.replace("topics = [\"orders\"]", &format!("topics = [\"orders\"]\nproperties = {{ {props} }}"));
        assert_ne!(digest(&with("\"isolation.level\" = \"read_uncommitted\"")), base, "which records are read");
        assert_eq!(digest(&with("\"isolation.level\" = \"read_committed\"")), base, "the default, spelled out");
        assert_eq!(digest(&with("\"client.id\" = \"x\"")), base, "a property that reads the same records");
    }

    mod fuzz {
        //! Property tests of the config parser: arbitrary text and edits of
        //! a valid config never panic, and every refusal names a key (or
        //! `(file)` for syntax) and what is wrong. `PROPTEST_CASES` sets the
        //! cases per property (default 256).
        use super::*;
        use proptest::prelude::*;

        fn refused_by_name(text: &str) -> Result<(), TestCaseError> {
            if let Err(e) = PipelineConfig::parse(text) {
                let ConfigError::Invalid { key, message, .. } = &e else { return Err(TestCaseError::fail(format!("{e}"))) };
                prop_assert!(!key.is_empty() && !message.is_empty(), "{e}");
                prop_assert!(e.to_string().contains(&format!("`{key}`")), "{e}");
            }
            Ok(())
        }

        /// Lines a config might have, right or wrong.
        fn line() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("[pipeline]".to_owned()),
                Just("[source]".to_owned()),
                Just("[[tables]]".to_owned()),
                Just("[limits]".to_owned()),
                Just("[retention]".to_owned()),
                "[a-z_]{1,20} = -?[0-9]{1,25}",
                "[a-z_]{1,20} = \"[^\"\\\\]{0,20}\"",
                "(fuel|memory_bytes|chunk_records|batches|max_records_per_batch|id|path|keys) = (-1|0|1e400|18446744073709551616|\"\"|\\[\\]|\\{\\})",
                ".{0,40}",
            ]
        }

        proptest! {
            #[test]
            fn arbitrary_text(text in ".{0,400}") {
                refused_by_name(&text)?;
            }

            #[test]
            fn arbitrary_lines(lines in proptest::collection::vec(line(), 0..30)) {
                refused_by_name(&lines.join("\n"))?;
            }

            /// A valid config with lines replaced, removed, duplicated or cut.
            #[test]
            fn edits_of_a_valid_config(
                edits in proptest::collection::vec((any::<prop::sample::Index>(), 0..4u8, line()), 1..6),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut lines: Vec<String> = GOOD.lines().map(str::to_owned).collect();
                for (at, kind, new) in edits {
                    let i = at.index(lines.len());
                    match kind {
                        0 => lines[i] = new,
                        1 => { lines.remove(i); }
                        2 => lines.insert(i, lines[i].clone()),
                        _ => lines.insert(i, new),
                    }
                    if lines.is_empty() {
                        lines.push(String::new());
                    }
                }
                let text = lines.join("\n");
                refused_by_name(&text)?;
                let end = (0..=cut.index(text.len() + 1).min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
                refused_by_name(&text[..end])?;
            }
        }

        #[test]
        fn deep_nesting_is_a_syntax_error_not_a_stack_overflow() {
            for open in ["[", "{ a = "] {
                let text = format!("x = {}", open.repeat(100_000));
                let e = PipelineConfig::parse(&text).unwrap_err().to_string();
                assert!(e.contains("`(file)`"), "{e}");
            }
        }
    }
}
