//! The Kafka source: plans micro-batches and fetches exactly the planned
//! ranges.
//!
//! Guarantees:
//! - Offsets belong to sluice's checkpoint, not to Kafka: partitions are
//!   assigned explicitly and nothing is auto-committed.
//! - A plan is a set of half-open ranges per partition, fixed before the sink
//!   runs; fetching delivers every record inside them and nothing outside,
//!   partition by partition in plan order, never an offset twice (a record
//!   read past a range's end is kept for the next batch; gaps from
//!   compaction or transaction markers are passed over using the consumer
//!   position).
//! - Where a partition starts is decided once and then follows from the
//!   checkpoint: at the pipeline's first plan, `starting_offsets` picks the
//!   oldest retained record or the high watermark; a partition that appears
//!   later (added to the topic) starts at its oldest retained record. Every
//!   later plan starts where the previous one ended. The topics' partitions
//!   are looked up again at every plan.
//! - A position the topic no longer agrees with is an error naming the
//!   partition and the offsets, unless `on_data_loss = skip`: offsets
//!   deleted by retention (the position is below the low watermark, at plan
//!   time or when a fetch finds its first record past the planned start),
//!   or offsets that went backwards (the position is past the high
//!   watermark: the topic was recreated or truncated). It is never skipped
//!   silently; with `skip`, the plan continues from the oldest retained
//!   record and a warning names what was skipped.
//!
//! ```text
//!  plan(previous ends) ─► watermarks per partition ─► ranges (≤ max_records in all)
//!  fetch(ranges) ─► new partition: split its queue, assign at start
//!                  ─► positioned elsewhere: seek to start (else read on)
//!                  ─► drain queues in plan order ─► chunk ─► … ─► every range complete
//! ```

pub(crate) mod read_ahead;
pub(crate) mod records;
pub mod security;

use crate::source::records::{ChunkBuilder, Fill, OwnedRecord, RecordSource, SourceError, SourceRange};
use crate::source::security::{Properties, Secret, SecurityContext, Secrets};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A topic partition.
type Partition = (String, i32);

/// Times a high watermark below the checkpoint's position is asked again,
/// 200 ms apart, before it counts as offsets gone backwards.
const BACKWARDS_CONFIRMATIONS: u32 = 5;

/// Where a partition without a checkpointed position starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartingOffsets {
    /// The oldest retained record.
    #[default]
    Earliest,
    /// Only records produced from now on.
    Latest,
}

/// What to do when the topic no longer holds the records where the
/// checkpoint stands: deleted by retention, or a recreated topic whose
/// offsets went backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDataLoss {
    /// Stop with an error naming the partition and the offsets.
    #[default]
    Fail,
    /// Continue from the partition's oldest retained record, with a warning.
    Skip,
}

/// The `[source]` table of a pipeline config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Topics to read, every partition of each.
    pub topics: Vec<String>,
    /// Most records in one batch, over all partitions.
    #[serde(default = "default_max_records")]
    pub max_records_per_batch: u64,
    /// Rough cap on the bytes of one batch. Kafka offsets carry no sizes, so
    /// the planner turns this into a record count using the average record
    /// size of the previous batch.
    #[serde(default)]
    pub max_bytes_per_batch: Option<u64>,
    /// Where partitions without a checkpointed position start.
    #[serde(default)]
    pub starting_offsets: StartingOffsets,
    /// What to do about offsets deleted by retention.
    #[serde(default)]
    pub on_data_loss: OnDataLoss,
    /// How long a fetch may go without progress before it fails, in ms.
    #[serde(default = "default_fetch_timeout_ms")]
    pub fetch_timeout_ms: u64,
    /// librdkafka properties, passed through (they override sluice's).
    #[serde(default)]
    pub properties: Properties,
    /// librdkafka properties whose values are secrets, read from the
    /// environment or a file when a client is made (see `security`).
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
}

fn default_max_records() -> u64 {
    100_000
}

fn default_fetch_timeout_ms() -> u64 {
    30_000
}

/// The Kafka source failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KafkaSourceError {
    /// The client could not be created or the cluster could not be reached.
    #[error("kafka ({bootstrap}): {what}")]
    Connect {
        /// `bootstrap.servers`.
        bootstrap: String,
        /// What failed.
        what: String,
    },
    /// A configured topic does not exist.
    #[error("kafka: topic `{0}` does not exist (check source.topics)")]
    NoSuchTopic(String),
    /// Retention deleted records that the plan needs.
    #[error(
        "kafka: {topic}/{partition}: offsets {start}..{low_watermark} were deleted by retention before \
         sluice read them; set source.on_data_loss = \"skip\" to continue from offset {low_watermark} \
         and accept the loss"
    )]
    RetentionGap {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The planned start.
        start: i64,
        /// The oldest retained offset.
        low_watermark: i64,
    },
    /// The checkpoint's position is past the end of the partition: its
    /// offsets went backwards (the topic was recreated or truncated).
    #[error(
        "kafka: {topic}/{partition}: the checkpoint's position {position} is past the end of the partition, which \
         now holds offsets {low}..{high}: the topic was recreated or truncated, so its offsets went backwards. \
         Continuing at {position} would skip the new records below it. Restore the topic, or set \
         source.on_data_loss = \"skip\" to read the partition again from offset {low} and accept that the old \
         log's records from {position} on are lost"
    )]
    OffsetsWentBackwards {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Where the checkpoint says the partition continues.
        position: i64,
        /// The oldest retained offset.
        low: i64,
        /// The high watermark.
        high: i64,
    },
    /// A broker request failed.
    #[error("kafka: {0}")]
    Request(String),
    /// A secret of `source.secrets` cannot be read.
    #[error("kafka: {0}")]
    Secret(String),
    /// TLS or SASL failed: the config (or the broker's certificate) must
    /// change; waiting does not help.
    #[error("kafka ({bootstrap}): {what}")]
    Security {
        /// `bootstrap.servers`.
        bootstrap: String,
        /// What failed and the property to fix.
        what: String,
    },
}

impl KafkaSourceError {
    /// Whether trying again later may succeed (a broker restart, a timeout),
    /// as opposed to a fact that waiting does not change.
    pub fn transient(&self) -> bool {
        matches!(self, KafkaSourceError::Connect { .. } | KafkaSourceError::Request(_))
    }
}

/// A connected source: the consumer and the partitions of the topics.
pub struct KafkaSource {
    config: SourceConfig,
    consumer: Arc<BaseConsumer<SecurityContext>>,
    /// A second client, for watermarks only. On the fetching consumer's
    /// connection a ListOffsets request waits behind the broker's long-poll
    /// Fetch (up to `fetch.wait.max.ms`), which made planning a batch cost
    /// 100 ms or more while partitions were being prefetched.
    watermarks: BaseConsumer<SecurityContext>,
    /// The topics' partitions, in plan order: looked up at every plan, and
    /// only ever added to (a partition briefly missing from an answer, say
    /// while a leader moves, is still read).
    partitions: Mutex<Vec<Partition>>,
    /// High watermarks seen by the last plan (for lag, at no extra cost).
    last_highs: Mutex<BTreeMap<(String, i32), i64>>,
    /// The partitions fetched so far: their queues and positions.
    cursors: Arc<Mutex<BTreeMap<Partition, Cursor>>>,
}

impl KafkaSource {
    /// Create the consumer and look up every partition of the topics.
    pub fn connect(config: SourceConfig) -> Result<Self, KafkaSourceError> {
        let connect_err = |what: String| KafkaSourceError::Connect { bootstrap: config.bootstrap_servers.clone(), what };
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            // A planned offset that is gone by the time it is fetched is an
            // error, never a silent jump to the end or the start.
            .set("auto.offset.reset", "error")
            // A fetch still waiting at the broker when a batch re-assigns
            // partitions delays the next batch by up to this much.
            .set("fetch.wait.max.ms", "100")
            // Each partition has its own queue (see `fetch`), so this bounds
            // the prefetch per partition (librdkafka's default is 64 MB).
            .set("queued.max.messages.kbytes", "4096")
            // A partition whose prefetch is full is looked at again after
            // this long; librdkafka's 1 s default stalled batches that had
            // drained a queue in the meantime.
            .set("fetch.queue.backoff.ms", "20")
            .set("group.id", "sluice");
        for (k, v) in config.properties.iter() {
            client.set(k, v);
        }
        let (secret_pairs, secrets) = Secrets::resolve(&config.secrets, &config.properties).map_err(KafkaSourceError::Secret)?;
        for (k, v) in &secret_pairs {
            client.set(k, v);
        }
        let redact = |what: String| secrets.redact(&what);
        let context = SecurityContext::default();
        let consumer: BaseConsumer<SecurityContext> =
            client.create_with_context(context.clone()).map_err(|e| connect_err(redact(e.to_string())))?;
        let watermarks: BaseConsumer<SecurityContext> =
            client.create_with_context(context.clone()).map_err(|e| connect_err(redact(e.to_string())))?;
        let timeout = Duration::from_millis(config.fetch_timeout_ms);
        let mut partitions = Vec::new();
        for topic in &config.topics {
            let metadata = fetch_metadata(&consumer, &context, topic, timeout).map_err(|e| match e {
                Err(failure) => KafkaSourceError::Security {
                    bootstrap: config.bootstrap_servers.clone(),
                    what: redact(security::explain(&failure, &config.properties, &config.bootstrap_servers)),
                },
                Ok(e) => connect_err(redact(format!("cannot fetch metadata of topic `{topic}`: {e}"))),
            })?;
            match topic_partitions(&metadata, topic) {
                Some(ids) if !ids.is_empty() => partitions.extend(ids.into_iter().map(|p| (topic.clone(), p))),
                _ => return Err(KafkaSourceError::NoSuchTopic(topic.clone())),
            }
        }
        Ok(Self {
            config,
            consumer: Arc::new(consumer),
            watermarks,
            partitions: Mutex::new(partitions),
            last_highs: Default::default(),
            cursors: Default::default(),
        })
    }

    /// Every (topic, partition) the source reads, in plan order (as of the
    /// last plan).
    pub fn partitions(&self) -> Vec<Partition> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Look the topics' partitions up again, adding any new ones (partitions
    /// added to a topic while the pipeline runs), in plan order: topics in
    /// config order, partitions by id. One metadata request per topic. Best
    /// effort: a topic whose metadata cannot be had now keeps the partitions
    /// known, and the watermark requests that follow say what is wrong.
    fn refresh_partitions(&self) -> Vec<Partition> {
        let timeout = Duration::from_millis(self.config.fetch_timeout_ms);
        let mut known = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        let mut grown = false;
        for topic in &self.config.topics {
            let Ok(metadata) = self.watermarks.fetch_metadata(Some(topic), timeout) else { continue };
            for id in topic_partitions(&metadata, topic).unwrap_or_default() {
                if !known.iter().any(|(t, p)| t == topic && *p == id) {
                    known.push((topic.clone(), id));
                    grown = true;
                }
            }
        }
        if grown {
            let order = |t: &String| self.config.topics.iter().position(|c| c == t);
            known.sort_by(|a, b| (order(&a.0), a.1).cmp(&(order(&b.0), b.1)));
        }
        known.clone()
    }

    /// Whether a plan from `previous_ends` fixes where partitions start in
    /// a way a later plan could not repeat, so it must be recorded even when
    /// it holds no records: the first plan of a pipeline starting at
    /// `latest`, since the high watermark moves on. (A start at the oldest
    /// retained record is the same for any later plan that finds nothing
    /// was deleted meanwhile.)
    pub fn plan_fixes_start(&self, previous_ends: &BTreeMap<Partition, i64>) -> bool {
        self.config.starting_offsets == StartingOffsets::Latest && previous_ends.is_empty()
    }

    /// Plan the next batch: for each partition, a range from where the
    /// previous batch ended (`previous_ends`), up to the high watermark, with
    /// at most `max_records_per_batch` records in all, shared fairly.
    pub fn plan(&self, previous_ends: &BTreeMap<(String, i32), i64>) -> Result<Vec<SourceRange>, KafkaSourceError> {
        self.plan_up_to(previous_ends, self.config.max_records_per_batch, None)
    }

    /// Like [`plan`](Self::plan), with at most `max_records` records and,
    /// per partition, no offset at or past `until` (the "available now"
    /// mode's snapshot of the high watermarks).
    pub fn plan_up_to(
        &self,
        previous_ends: &BTreeMap<(String, i32), i64>,
        max_records: u64,
        until: Option<&BTreeMap<(String, i32), i64>>,
    ) -> Result<Vec<SourceRange>, KafkaSourceError> {
        let partitions = self.refresh_partitions();
        let mut spans = Vec::with_capacity(partitions.len());
        let mut highs = BTreeMap::new();
        let all = self.all_watermarks(&partitions)?;
        // `starting_offsets` is for the pipeline's first plan only; a
        // partition without a position after that is new and starts at its
        // oldest record, so none of its records is skipped.
        let first_plan = previous_ends.is_empty();
        for (topic, partition) in &partitions {
            let (low, high) = all[&(topic.clone(), *partition)];
            highs.insert((topic.clone(), *partition), high);
            let start = match previous_ends.get(&(topic.clone(), *partition)) {
                Some(&end) => self.continue_at(topic, *partition, end, low, high)?,
                None if first_plan && self.config.starting_offsets == StartingOffsets::Latest => high,
                None => low,
            };
            let high = until.map_or(high, |u| u.get(&(topic.clone(), *partition)).map_or(start, |&u| high.min(u)));
            spans.push((topic.clone(), *partition, start, high.max(start)));
        }
        let available: Vec<u64> = spans.iter().map(|&(_, _, start, high)| (high - start) as u64).collect();
        let takes = share_fairly(&available, max_records);
        *self.last_highs.lock().unwrap_or_else(|e| e.into_inner()) = highs;
        Ok(spans
            .into_iter()
            .zip(takes)
            .map(|((topic, partition, start, _), take)| SourceRange { topic, partition, start, end: start + take as i64 })
            .collect())
    }

    /// Where a partition continues after a batch that ended at `end`,
    /// given its watermarks now: at `end` if the topic still agrees, else
    /// per `on_data_loss` (an error, or the oldest retained record).
    fn continue_at(&self, topic: &str, partition: i32, end: i64, low: i64, high: i64) -> Result<i64, KafkaSourceError> {
        let disagreement = if end < low {
            KafkaSourceError::RetentionGap { topic: topic.to_owned(), partition, start: end, low_watermark: low }
        } else if end > high {
            match self.confirm_backwards(topic, partition, end)? {
                Some((low, high)) => KafkaSourceError::OffsetsWentBackwards { topic: topic.to_owned(), partition, position: end, low, high },
                None => return Ok(end),
            }
        } else {
            return Ok(end);
        };
        match self.config.on_data_loss {
            OnDataLoss::Fail => Err(disagreement),
            OnDataLoss::Skip => {
                eprintln!("sluice: warning: {topic}/{partition}: continuing from offset {low} (source.on_data_loss = \"skip\"): {disagreement}");
                Ok(low)
            }
        }
    }

    /// A high watermark below where the last batch ended can be a moment's
    /// lag (a new partition leader whose high watermark has not caught up
    /// yet) rather than a recreated topic: ask again a few times over about
    /// a second, and return the watermarks only if it stays below.
    fn confirm_backwards(&self, topic: &str, partition: i32, end: i64) -> Result<Option<(i64, i64)>, KafkaSourceError> {
        let timeout = Duration::from_millis(self.config.fetch_timeout_ms);
        let mut last = None;
        for _ in 0..BACKWARDS_CONFIRMATIONS {
            std::thread::sleep(Duration::from_millis(200));
            let (low, high) = self
                .watermarks
                .fetch_watermarks(topic, partition, timeout)
                .map_err(|e| KafkaSourceError::Request(format!("watermarks of {topic}/{partition}: {e}")))?;
            if high >= end {
                return Ok(None);
            }
            last = Some((low, high));
        }
        Ok(last)
    }

    /// The high watermark of every partition.
    pub fn high_watermarks(&self) -> Result<BTreeMap<(String, i32), i64>, KafkaSourceError> {
        let partitions = self.refresh_partitions();
        Ok(self.all_watermarks(&partitions)?.into_iter().map(|(k, (_, high))| (k, high)).collect())
    }

    /// The (low, high) watermarks of `partitions`, in two ListOffsets
    /// requests per broker rather than two per partition: with many
    /// partitions, asking one by one dominated the cost of planning a batch.
    fn all_watermarks(&self, partitions: &[Partition]) -> Result<BTreeMap<Partition, (i64, i64)>, KafkaSourceError> {
        let timeout = Duration::from_millis(self.config.fetch_timeout_ms);
        let ask = |which: Offset, what: &str| -> Result<BTreeMap<(String, i32), i64>, KafkaSourceError> {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in partitions {
                tpl.add_partition_offset(t, *p, which).map_err(|e| KafkaSourceError::Request(e.to_string()))?;
            }
            let answer = self
                .watermarks
                .offsets_for_times(tpl, timeout)
                .map_err(|e| KafkaSourceError::Request(format!("{what} watermarks: {e}")))?;
            let mut out = BTreeMap::new();
            for e in answer.elements() {
                let offset = match (e.error(), e.offset().to_raw()) {
                    (Ok(()), Some(o)) if o >= 0 => o,
                    (Err(err), _) => {
                        return Err(KafkaSourceError::Request(format!("{what} watermark of {}/{}: {err}", e.topic(), e.partition())));
                    }
                    (_, o) => {
                        return Err(KafkaSourceError::Request(format!(
                            "{what} watermark of {}/{}: no offset ({o:?})",
                            e.topic(),
                            e.partition()
                        )));
                    }
                };
                out.insert((e.topic().to_owned(), e.partition()), offset);
            }
            Ok(out)
        };
        let lows = ask(Offset::Beginning, "low")?;
        let highs = ask(Offset::End, "high")?;
        partitions
            .iter()
            .map(|k| {
                let missing = || KafkaSourceError::Request(format!("no watermarks for {}/{}", k.0, k.1));
                Ok((k.clone(), (*lows.get(k).ok_or_else(missing)?, *highs.get(k).ok_or_else(missing)?)))
            })
            .collect()
    }

    /// The high watermarks seen by the last plan.
    pub fn last_high_watermarks(&self) -> BTreeMap<(String, i32), i64> {
        self.last_highs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Tell the consumer group where the pipeline is, so standard lag tools
    /// work. Advisory only: sluice resumes from its checkpoint, never from
    /// these offsets, so a failure here is not an error worth stopping for.
    pub fn commit_advisory(&self, ranges: &[SourceRange]) -> Result<(), KafkaSourceError> {
        let mut tpl = TopicPartitionList::new();
        for r in ranges.iter().filter(|r| r.end > r.start) {
            tpl.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.end))
                .map_err(|e| KafkaSourceError::Request(e.to_string()))?;
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        self.consumer
            .commit(&tpl, rdkafka::consumer::CommitMode::Async)
            .map_err(|e| KafkaSourceError::Request(format!("advisory offset commit: {e}")))
    }

    /// Every record of `ranges`, in memory. Several ranges may be in one
    /// partition (a release batch names single offsets): each partition is
    /// read once over the span of its ranges, and only the records inside
    /// a range are kept. A fetch takes one range per partition.
    pub fn read_ranges(&self, ranges: &[SourceRange]) -> Result<Vec<OwnedRecord>, String> {
        let mut spans: Vec<SourceRange> = Vec::new();
        for r in ranges {
            match spans.iter_mut().find(|s| s.topic == r.topic && s.partition == r.partition) {
                Some(s) => {
                    s.start = s.start.min(r.start);
                    s.end = s.end.max(r.end);
                }
                None => spans.push(r.clone()),
            }
        }
        let fetch = self.fetch(&spans).map_err(|e| e.to_string())?;
        let records = records::read_all(fetch, &spans).map_err(|e| e.to_string())?;
        if spans.len() == ranges.len() {
            return Ok(records);
        }
        let inside = |o: &OwnedRecord| ranges.iter().any(|r| r.topic == o.topic && r.partition == o.partition && (r.start..r.end).contains(&o.offset));
        Ok(records.into_iter().filter(inside).collect())
    }

    /// A record source delivering exactly `ranges`, partition by partition
    /// in plan order, so a batch's records arrive in the same order on every
    /// run, retry and replay (interleaving partitions as the broker answers
    /// would make the output order, and its digest, depend on timing).
    ///
    /// Every partition has its own librdkafka queue, split off before the
    /// partition is first assigned: librdkafka prefetches all partitions at
    /// once in the background (bounded per partition by
    /// `queued.max.messages.kbytes`), and the fetch drains one queue at a
    /// time in plan order, so nothing is copied or held to restore the
    /// order. Partitions stay assigned and positioned across batches: a range
    /// starting where the queue already stands (the previous batch's end) is
    /// read on from what was prefetched, and only a range starting elsewhere
    /// (a retry, a restart, a replay) is sought, which drops what was
    /// prefetched. Re-positioning every partition at every batch discarded
    /// the prefetched data and cost most of the fetch time.
    pub fn fetch(&self, ranges: &[SourceRange]) -> Result<KafkaFetch, KafkaSourceError> {
        let request = |what: &'static str| move |e: rdkafka::error::KafkaError| KafkaSourceError::Request(format!("{what}: {e}"));
        let mut cursors = self.cursors.lock().unwrap_or_else(|e| e.into_inner());
        let (mut add, mut seek) = (TopicPartitionList::new(), TopicPartitionList::new());
        let mut order = VecDeque::new();
        for r in ranges.iter().filter(|r| r.end > r.start) {
            let key = (r.topic.clone(), r.partition);
            match cursors.get(&key) {
                Some(cursor) if cursor.stands_at(r.start) => {}
                Some(_) => seek.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.start)).map_err(request("plan"))?,
                None => {
                    // Split before assigning: librdkafka then never routes
                    // this partition's messages to the consumer queue.
                    let queue = self.consumer.split_partition_queue(&r.topic, r.partition).ok_or_else(|| {
                        KafkaSourceError::Request(format!("cannot open a queue for {}/{}", r.topic, r.partition))
                    })?;
                    cursors.insert(key.clone(), Cursor { queue, next: None, carried: None });
                    add.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.start)).map_err(request("plan"))?;
                }
            }
            order.push_back(Planned { key, start: r.start, end: r.end });
        }
        if add.count() > 0 {
            self.consumer.incremental_assign(&add).map_err(request("assign"))?;
            position(&mut cursors, &add);
        }
        if seek.count() > 0 {
            // Until the seek is confirmed, a cursor's position is unknown.
            for e in seek.elements() {
                if let Some(cursor) = cursors.get_mut(&(e.topic().to_owned(), e.partition())) {
                    cursor.forget();
                }
            }
            let timeout = Duration::from_millis(self.config.fetch_timeout_ms);
            let result = self.consumer.seek_partitions(seek, timeout).map_err(request("seek"))?;
            if let Some(e) = result.elements().iter().find_map(|e| e.error().err().map(|err| (e.topic().to_owned(), e.partition(), err))) {
                return Err(KafkaSourceError::Request(format!("seek {}/{}: {}", e.0, e.1, e.2)));
            }
            position(&mut cursors, &result);
        }
        drop(cursors);
        Ok(KafkaFetch {
            consumer: self.consumer.clone(),
            cursors: self.cursors.clone(),
            order,
            timeout: Duration::from_millis(self.config.fetch_timeout_ms),
            on_data_loss: self.config.on_data_loss,
        })
    }
}

/// The partition ids of `topic` in a metadata answer, sorted; `None` if the
/// answer has no usable entry for it. Partitions the broker reports with an
/// error or without a leader (right after they were added) cannot be read
/// yet: they are left for a later look.
/// The metadata of `topic`, asked for in short rounds until `timeout`, so a
/// TLS or SASL failure (reported by `context` meanwhile) ends the wait at
/// once: `Err(Err(failure))`; other errors `Err(Ok(e))`, as at the timeout.
fn fetch_metadata(
    consumer: &BaseConsumer<SecurityContext>,
    context: &SecurityContext,
    topic: &str,
    timeout: Duration,
) -> Result<rdkafka::metadata::Metadata, Result<rdkafka::error::KafkaError, String>> {
    let deadline = Instant::now() + timeout;
    loop {
        let round = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(500));
        let result = consumer.fetch_metadata(Some(topic), round);
        // Log lines and error events are delivered when the client is
        // polled (nothing is assigned yet: no record can come).
        let _ = consumer.poll(Duration::ZERO);
        if let Some(failure) = context.failure() {
            return Err(Err(failure));
        }
        match result {
            Ok(metadata) => return Ok(metadata),
            Err(e) if Instant::now() >= deadline => return Err(Ok(e)),
            Err(_) => {}
        }
    }
}

fn topic_partitions(metadata: &rdkafka::metadata::Metadata, topic: &str) -> Option<Vec<i32>> {
    let t = metadata.topics().iter().find(|t| t.name() == topic).filter(|t| t.error().is_none())?;
    let mut ids: Vec<i32> = t.partitions().iter().filter(|p| p.error().is_none() && p.leader() >= 0).map(|p| p.id()).collect();
    ids.sort_unstable();
    Some(ids)
}

/// Record that the partitions of `tpl` now deliver from their offsets.
fn position(cursors: &mut BTreeMap<Partition, Cursor>, tpl: &TopicPartitionList) {
    for e in tpl.elements() {
        if let (Some(cursor), Some(offset)) = (cursors.get_mut(&(e.topic().to_owned(), e.partition())), e.offset().to_raw()) {
            cursor.next = Some(offset);
            cursor.carried = None;
        }
    }
}

/// One partition's queue and where it stands, kept across batches.
struct Cursor {
    queue: PartitionQueue<SecurityContext>,
    /// Every offset below this has been taken from the queue, and the queue
    /// delivers the first record at or above it next. `None`: unknown (not
    /// yet positioned, or a seek is under way).
    next: Option<i64>,
    /// The first record taken past a batch's end (there are no records
    /// between `next` and it): the next batch starts with it.
    carried: Option<OwnedRecord>,
}

impl Cursor {
    /// Whether the next record the queue gives is the first one at or
    /// above `start`, so a batch starting there needs no seek.
    fn stands_at(&self, start: i64) -> bool {
        match (self.next, &self.carried) {
            (Some(next), None) => next == start,
            (Some(next), Some(carried)) => (next..=carried.offset).contains(&start),
            (None, _) => false,
        }
    }

    fn forget(&mut self) {
        self.next = None;
        self.carried = None;
    }
}

/// Split `budget` over partitions with `available` records each, so that no
/// partition gets more than it has and the rest is shared evenly (water
/// filling: small backlogs are served whole, big ones share what remains).
fn share_fairly(available: &[u64], budget: u64) -> Vec<u64> {
    let mut order: Vec<usize> = (0..available.len()).collect();
    order.sort_by_key(|&i| available[i]);
    let mut takes = vec![0; available.len()];
    let mut left = budget;
    for (served, &i) in order.iter().enumerate() {
        let share = left / (order.len() - served) as u64;
        takes[i] = available[i].min(share);
        left -= takes[i];
    }
    // Integer division can leave a few records unassigned: hand them out.
    for &i in order.iter().rev() {
        let extra = (available[i] - takes[i]).min(left);
        takes[i] += extra;
        left -= extra;
    }
    takes
}

/// A planned range in a fetch: its partition, start and end.
#[derive(Debug)]
struct Planned {
    key: Partition,
    start: i64,
    end: i64,
}

/// Fetches planned ranges; a [`RecordSource`] for the sink runtime.
pub struct KafkaFetch {
    consumer: Arc<BaseConsumer<SecurityContext>>,
    cursors: Arc<Mutex<BTreeMap<Partition, Cursor>>>,
    /// Ranges not yet delivered in full, in plan order.
    order: VecDeque<Planned>,
    timeout: Duration,
    on_data_loss: OnDataLoss,
}

/// What the front partition's queue gave.
enum Step {
    /// A record of the range went into the chunk.
    Delivered,
    /// The range is complete.
    Complete,
    /// Nothing arrived in time.
    Waiting,
}

impl KafkaFetch {
    /// Take one record of `planned` from its queue (or the carried one).
    fn step(&self, cursor: &mut Cursor, planned: &Planned, chunk: &mut ChunkBuilder) -> Result<Step, SourceError> {
        let (topic, partition) = (&planned.key.0, planned.key.1);
        let next = cursor.next.ok_or_else(|| SourceError::Failed(format!("kafka: {topic}/{partition} is not positioned")))?;
        if next >= planned.end {
            return Ok(Step::Complete);
        }
        // The first record of the range: offsets skipped before it must be
        // ones the broker still holds (transaction markers, aborted or
        // compacted records), not ones deleted since the plan.
        let first = next == planned.start;
        if let Some(carried) = &cursor.carried {
            if first && carried.offset > next {
                self.check_gap(planned, carried.offset)?;
            }
            if carried.offset >= planned.end {
                return Ok(Step::Complete); // nothing in this range but gaps
            }
            chunk.push_owned(carried)?;
            cursor.next = Some(carried.offset + 1);
            cursor.carried = None;
            return Ok(Step::Delivered);
        }
        let message = match cursor.queue.poll(Duration::from_millis(100)) {
            None => return Ok(Step::Waiting),
            Some(Err(rdkafka::error::KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::OffsetOutOfRange))) => {
                return Err(SourceError::Failed(format!(
                    "kafka: {topic}/{partition}: offset {next} of the planned range {}..{} is no longer in the topic \
                     (fetch: offset out of range): retention deleted it, or the topic was recreated, after the batch \
                     was planned; the batch cannot be read as planned",
                    planned.start, planned.end
                )));
            }
            Some(Err(e)) => return Err(SourceError::Failed(format!("kafka: fetch {topic}/{partition}: {e}"))),
            Some(Ok(m)) => m,
        };
        let offset = message.offset();
        if offset < next {
            // Already taken (never delivered twice, whatever the client does).
            return Ok(Step::Delivered);
        }
        if first && offset > next {
            self.check_gap(planned, offset)?;
        }
        if offset >= planned.end {
            // Past the end (the range ended in a gap): the next batch's.
            cursor.carried = Some(owned(&message));
            return Ok(Step::Complete);
        }
        let headers: Vec<(&str, Option<&[u8]>)> =
            message.headers().map(|h| h.iter().map(|h| (h.key, h.value)).collect()).unwrap_or_default();
        let timestamp = message.timestamp().to_millis().unwrap_or(0);
        chunk.push(topic, partition, offset, timestamp, message.key(), message.payload(), headers)?;
        cursor.next = Some(offset + 1);
        Ok(Step::Delivered)
    }

    /// The first record fetched for `planned` is at `first`, past its start.
    /// If the broker's oldest retained offset is now past the start too,
    /// retention deleted planned records after the plan: data loss, handled
    /// per `on_data_loss`. Otherwise the skipped offsets are still in the
    /// log but not visible to this consumer (transaction markers, aborted
    /// transactions under `read_committed`, compaction), as every Kafka
    /// client sees them. Asked at most once per range, and only on a gap.
    fn check_gap(&self, planned: &Planned, first: i64) -> Result<(), SourceError> {
        let (topic, partition, start) = (&planned.key.0, planned.key.1, planned.start);
        let (low, _) = self.consumer.fetch_watermarks(topic, partition, self.timeout).map_err(|e| {
            SourceError::Failed(format!("kafka: {topic}/{partition}: watermarks, after the fetch from offset {start} began at {first}: {e}"))
        })?;
        if low <= start {
            return Ok(());
        }
        let lost = format!(
            "kafka: {topic}/{partition}: offsets {start}..{} were deleted by retention after the batch was planned \
             (the fetch from offset {start} began at {first}; the oldest retained offset is {low})",
            low.min(planned.end)
        );
        match self.on_data_loss {
            OnDataLoss::Fail => Err(SourceError::Failed(format!(
                "{lost}; the batch's planned records are gone. Set source.on_data_loss = \"skip\" to run it with \
                 the records that remain and accept the loss"
            ))),
            OnDataLoss::Skip => {
                eprintln!("sluice: warning: {lost}; running the batch with the records that remain (source.on_data_loss = \"skip\")");
                Ok(())
            }
        }
    }

    /// Nothing arrived for a while: serve the consumer's own queue (client
    /// events), and see whether the partition's position passed the end of
    /// its range (its last offsets were transaction markers or compacted
    /// away), which completes it.
    fn passed_end(&self, cursor: &mut Cursor, planned: &Planned) -> Result<bool, SourceError> {
        match self.consumer.poll(Duration::ZERO) {
            None => {}
            Some(Err(e)) => return Err(SourceError::Failed(format!("kafka: fetch: {e}"))),
            // Every assigned partition has its own queue, so this is a bug
            // rather than something to deliver.
            Some(Ok(stray)) => {
                return Err(SourceError::Failed(format!(
                    "kafka: record {}/{}@{} arrived on the consumer queue",
                    stray.topic(),
                    stray.partition(),
                    stray.offset()
                )));
            }
        }
        let positions = self.consumer.position().map_err(|e| SourceError::Failed(format!("kafka: position: {e}")))?;
        let position = positions.find_partition(&planned.key.0, planned.key.1).and_then(|p| p.offset().to_raw());
        match position {
            Some(pos) if pos >= planned.end => {
                cursor.next = Some(pos);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// A copy of a message, to keep past the poll that returned it.
fn owned(message: &BorrowedMessage<'_>) -> OwnedRecord {
    OwnedRecord {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers: message
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect())
            .unwrap_or_default(),
    }
}

impl RecordSource for KafkaFetch {
    fn fill(&mut self, chunk: &mut ChunkBuilder) -> Result<Fill, SourceError> {
        let cursors = self.cursors.clone();
        let mut cursors = cursors.lock().unwrap_or_else(|e| e.into_inner());
        // Since when nothing arrived (not read per record: clocks cost).
        let mut waiting_since = None;
        while let Some(planned) = self.order.front() {
            if chunk.is_full() {
                return Ok(Fill::More);
            }
            let cursor = cursors.get_mut(&planned.key).expect("fetch opened a cursor for every planned partition");
            let step = self.step(cursor, planned, chunk)?;
            if !matches!(step, Step::Waiting) {
                waiting_since = None;
            }
            match step {
                Step::Delivered => {}
                Step::Complete => {
                    self.order.pop_front();
                }
                Step::Waiting if self.passed_end(cursor, planned)? => {
                    self.order.pop_front();
                }
                Step::Waiting if waiting_since.get_or_insert_with(Instant::now).elapsed() > self.timeout => {
                    let waiting: Vec<String> =
                        self.order.iter().map(|p| format!("{}/{} (up to offset {})", p.key.0, p.key.1, p.end)).collect();
                    return Err(SourceError::Failed(format!(
                        "kafka: no progress for {} ms fetching {}",
                        self.timeout.as_millis(),
                        waiting.join(", ")
                    )));
                }
                Step::Waiting => {}
            }
        }
        Ok(Fill::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::share_fairly;

    #[test]
    fn fair_share_serves_small_backlogs_whole_and_splits_the_rest() {
        assert_eq!(share_fairly(&[5, 100, 100], 65), [5, 30, 30]);
        assert_eq!(share_fairly(&[0, 0, 7], 100), [0, 0, 7]);
        let even = share_fairly(&[10, 10, 10], 10);
        assert_eq!(even.iter().sum::<u64>(), 10, "the whole budget is used");
        assert!(even.iter().all(|&t| (3..=4).contains(&t)), "{even:?}");
        assert!(share_fairly(&[], 10).is_empty());
    }
}
