//! Dead letters: records that can never be written, set aside with the reason, exactly once
//! (DESIGN.md §3).
//!
//! Dead letters are written before the table commit that moves the ledger past them. A crash in
//! between makes the batch be read again, so each destination remembers what it already holds:
//! - Kafka topic: the main commit records, per source partition, where in the dead-letter topic
//!   the dead letters of that partition's next offsets can start
//!   (`floe.dead-letters.<pipeline>.<topic>.<partition>`); before writing, floe checks the fence on
//!   the table it loaded, reads the topic from those positions and skips records whose coordinates
//!   (source topic, partition, offset) are already there. A process that writes dead letters and
//!   dies before its commit leaves them past the recorded position of their partition, where the
//!   next owner finds them.
//! - Iceberg table: it has its own ledger for the pipeline, committed with the dead-letter rows
//!   through the same commit engine and fence; records below its ledger are already in it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use base64::Engine as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use crate::catalog::Catalog;
use crate::commit::{Append, AppendOutcome, CommitEngine, CommitError};
use crate::config::{KafkaProperties, TableName};
use crate::decode::{DecodeOptions, Decoder, Origin, RecordError};
use crate::kafka::KafkaError;
use crate::ledger::{Ledger, OffsetRange, TopicPartition};
use crate::source::Record;

/// Header names of the dead-letter topic, as the seed's loader wrote them (consumers of such
/// topics keep working), plus the partition and the pipeline.
pub const H_TOPIC: &str = "loader.processing.exception.topic";
pub const H_OFFSET: &str = "loader.processing.exception.offset";
pub const H_CLASS: &str = "loader.processing.exception.class";
pub const H_MESSAGE: &str = "loader.processing.exception.message";
pub const H_STACKTRACE: &str = "loader.processing.exception.stacktrace";
pub const H_PARTITION: &str = "loader.processing.exception.partition";
pub const H_PIPELINE: &str = "loader.processing.exception.pipeline";
pub const H_COLUMN: &str = "loader.processing.exception.column";

/// Main-table property prefix: the dead-letter topic's end offsets at the pipeline's last commit.
pub const DLQ_POSITIONS_PREFIX: &str = "floe.dead-letters.";

/// The dead-letter table's columns (Trino DDL; created on demand).
pub fn table_ddl(name: &TableName) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS \"{}\".\"{}\" (
            source_topic VARCHAR, source_partition INTEGER, source_offset BIGINT,
            source_timestamp TIMESTAMP(6) WITH TIME ZONE,
            key VARBINARY, value VARBINARY, value_text VARCHAR, headers MAP(VARCHAR, VARBINARY),
            error_kind VARCHAR, error_message VARCHAR, column_path VARCHAR, pipeline VARCHAR,
            dead_lettered_at TIMESTAMP(6) WITH TIME ZONE)
        WITH (partitioning = ARRAY['day(dead_lettered_at)'])",
        name.namespace_str(),
        name.name
    )
}

/// A record that can never be written, and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub record: Record,
    pub error: RecordError,
}

impl DeadLetter {
    /// Memory the letter holds (its record's bytes), for the loader's buffer bound.
    pub fn bytes(&self) -> usize {
        let r = &self.record;
        let headers: usize = r.headers.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len)).sum();
        std::mem::size_of::<DeadLetter>()
            + r.key.as_ref().map_or(0, |k| k.len())
            + r.value.as_ref().map_or(0, |v| v.len())
            + headers
    }

    fn coordinates(&self) -> (String, i32, i64) {
        (self.record.topic.to_string(), self.record.partition, self.record.offset)
    }

    /// The cause chain, where Java had a stack trace.
    fn cause_chain(&self) -> String {
        let mut chain = format!("{}: {}", self.error.kind(), self.error);
        let mut source = std::error::Error::source(&self.error);
        while let Some(s) = source {
            chain.push_str(&format!("\ncaused by: {s}"));
            source = s.source();
        }
        chain
    }
}

/// Problems with a dead-letter destination.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead-letter topic {topic}: {message}")]
    Kafka { topic: String, message: String },
    #[error("dead-letter table: {0}")]
    Table(#[from] CommitError),
    #[error("dead-letter table {table}: {message}")]
    Setup { table: String, message: String },
}

impl DeadLetterError {
    pub fn is_transient(&self) -> bool {
        match self {
            DeadLetterError::Kafka { .. } => true,
            DeadLetterError::Table(e) => e.is_transient(),
            DeadLetterError::Setup { .. } => false,
        }
    }
}

impl From<KafkaError> for DeadLetterError {
    fn from(e: KafkaError) -> Self {
        DeadLetterError::Kafka {
            topic: String::new(),
            message: e.to_string(),
        }
    }
}

/// The dead-letter topic.
pub struct KafkaDeadLetters {
    topic: String,
    pipeline: String,
    props: KafkaProperties,
    producer: FutureProducer,
}

/// Offsets in the dead-letter topic, per dead-letter partition.
pub type Positions = BTreeMap<i32, i64>;

/// A dead letter found in the topic: the source record's coordinates and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    source: (String, i32, i64),
    partition: i32,
    offset: i64,
}

impl KafkaDeadLetters {
    pub fn new(props: &KafkaProperties, topic: &str, pipeline: &str) -> Result<Self, DeadLetterError> {
        let mut cc = crate::kafka::producer_config(props);
        cc.set("enable.idempotence", "true");
        let producer = cc.create().map_err(|e| DeadLetterError::Kafka {
            topic: topic.to_owned(),
            message: e.to_string(),
        })?;
        Ok(KafkaDeadLetters {
            topic: topic.to_owned(),
            pipeline: pipeline.to_owned(),
            props: props.clone(),
            producer,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The main-table property holding, for one source partition, where in the dead-letter topic
    /// a scan must start to see every dead letter of that partition past its ledger offset. One
    /// property per source partition, so processes that own different partitions never overwrite
    /// each other's positions (DESIGN.md §3).
    pub fn positions_key(&self, tp: &TopicPartition) -> String {
        format!("{DLQ_POSITIONS_PREFIX}{}.{}.{}", self.pipeline, tp.topic, tp.partition)
    }

    /// Before positions were kept per source partition: one property per pipeline.
    fn legacy_positions_key(&self) -> String {
        format!("{DLQ_POSITIONS_PREFIX}{}", self.pipeline)
    }

    fn err(&self, message: impl ToString) -> DeadLetterError {
        DeadLetterError::Kafka {
            topic: self.topic.clone(),
            message: message.to_string(),
        }
    }

    /// Writes the batch's dead letters that the topic does not hold yet and returns the main-table
    /// properties to commit with the batch: for every source partition of `ranges`, the new scan
    /// position. `props` are the main table's properties the batch's fence was checked on.
    /// `still_ours` checks the batch's fence once more right before anything is sent (after the
    /// read-back, which takes a while): `None` means it failed and nothing was written.
    pub async fn write(
        &self,
        letters: &[DeadLetter],
        ranges: &[OffsetRange],
        props: &HashMap<String, String>,
        still_ours: impl AsyncFnOnce() -> bool,
    ) -> Result<Option<HashMap<String, String>>, DeadLetterError> {
        let bounds = self.bounds().await?;
        let legacy = positions_from(props, &self.legacy_positions_key());
        let since: Vec<Positions> = ranges
            .iter()
            .map(|r| {
                props
                    .get(&self.positions_key(&r.tp))
                    .and_then(|v| serde_json::from_str(v).ok())
                    .unwrap_or_else(|| legacy.clone())
            })
            .collect();
        // Scan from the earliest position any of the batch's partitions needs, but never below
        // what the topic still holds (retention may have removed older dead letters).
        let mut scan: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
        for (p, (low, high)) in &bounds {
            let from = since.iter().map(|s| s.get(p).copied().unwrap_or(0)).min().unwrap_or(0);
            scan.insert(*p, (from.clamp(*low, *high), *high));
        }
        let found = self.scan(&scan).await?;
        let present: HashSet<&(String, i32, i64)> = found.iter().map(|f| &f.source).collect();
        let todo: Vec<&DeadLetter> = letters.iter().filter(|l| !present.contains(&l.coordinates())).collect();
        if !todo.is_empty() && !still_ours().await {
            return Ok(None);
        }
        // Enqueued all at once (idempotence keeps their order), then every acknowledgement awaited.
        let sends = todo.iter().map(|letter| {
            let r = &letter.record;
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len() + 8);
            for (k, v) in &r.headers {
                headers = headers.insert(Header { key: k, value: v.as_deref() });
            }
            for (key, value) in [
                (H_TOPIC, r.topic.to_string()),
                (H_PARTITION, r.partition.to_string()),
                (H_OFFSET, r.offset.to_string()),
                (H_CLASS, letter.error.kind().as_str().to_owned()),
                (H_MESSAGE, letter.error.to_string()),
                (H_STACKTRACE, letter.cause_chain()),
                (H_COLUMN, letter.error.column().to_owned()),
                (H_PIPELINE, self.pipeline.clone()),
            ] {
                headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
            if let Some(k) = &r.key {
                record = record.key(&k[..]);
            }
            if let Some(v) = &r.value {
                record = record.payload(&v[..]);
            }
            if let Some(ts) = r.timestamp {
                record = record.timestamp(ts);
            }
            self.producer.send(record, Duration::from_secs(60))
        });
        let acks = futures::future::try_join_all(sends).await.map_err(|(e, _)| self.err(e))?;
        let written = todo.len();
        if written > 0 {
            tracing::info!(topic = %self.topic, written, skipped = letters.len() - written, "dead letters written");
        }
        // Where the topic ends now, as far as this batch knows.
        let mut after: Positions = scan.iter().map(|(p, (_, high))| (*p, *high)).collect();
        for delivery in &acks {
            let (p, o) = (delivery.partition, delivery.offset);
            let e = after.entry(p).or_insert(0);
            *e = (*e).max(o + 1);
        }
        // A source partition's next scan starts past everything seen, except dead letters of its
        // offsets beyond this batch (a crashed process read further): those must be seen again.
        let mut out = HashMap::new();
        for r in ranges {
            let mut next = after.clone();
            for f in &found {
                if f.source.0 == r.tp.topic && f.source.1 == r.tp.partition && f.source.2 >= r.end {
                    let e = next.entry(f.partition).or_insert(f.offset);
                    *e = (*e).min(f.offset);
                }
            }
            out.insert(self.positions_key(&r.tp), serde_json::to_string(&next).expect("positions serialize"));
        }
        Ok(Some(out))
    }

    /// This pipeline's dead letters in the topic within `scan` (per partition: from, end).
    async fn scan(&self, scan: &BTreeMap<i32, (i64, i64)>) -> Result<Vec<Found>, DeadLetterError> {
        let mut tpl = TopicPartitionList::new();
        let mut remaining = 0i64;
        for (p, (from, end)) in scan {
            if from < end {
                tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*from))
                    .map_err(|e| self.err(e))?;
                remaining += end - from;
            }
        }
        if remaining == 0 {
            return Ok(Vec::new());
        }
        let mut cc = crate::kafka::client_config(&self.props);
        cc.set("group.id", format!("floe-dead-letter-scan-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // Records removed by retention while scanning: go on from what is left.
            .set("auto.offset.reset", "earliest");
        cc.remove("group.instance.id");
        let consumer: BaseConsumer = cc.create().map_err(|e| self.err(e))?;
        consumer.assign(&tpl).map_err(|e| self.err(e))?;
        let pipeline = self.pipeline.clone();
        let topic = self.topic.clone();
        let mut positions: HashMap<i32, i64> = scan.iter().map(|(p, (from, _))| (*p, *from)).collect();
        let ends: HashMap<i32, i64> = scan.iter().map(|(p, (_, end))| (*p, *end)).collect();
        tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while ends.iter().any(|(p, end)| positions[p] < *end) {
                if std::time::Instant::now() > deadline {
                    return Err(DeadLetterError::Kafka {
                        topic,
                        message: format!("timed out reading back the dead-letter topic (at {positions:?}, ends {ends:?})"),
                    });
                }
                let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
                let m = m.map_err(|e| DeadLetterError::Kafka { topic: topic.clone(), message: e.to_string() })?;
                positions.insert(m.partition(), m.offset() + 1);
                let h = |name: &str| -> Option<String> {
                    m.headers()?
                        .iter()
                        .find(|h| h.key == name)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                };
                if h(H_PIPELINE).as_deref() != Some(pipeline.as_str()) {
                    continue;
                }
                if let (Some(t), Some(p), Some(o)) = (h(H_TOPIC), h(H_PARTITION), h(H_OFFSET))
                    && let (Ok(p), Ok(o)) = (p.parse(), o.parse())
                {
                    found.push(Found {
                        source: (t, p, o),
                        partition: m.partition(),
                        offset: m.offset(),
                    });
                }
            }
            Ok(found)
        })
        .await
        .map_err(|e| self.err(e))?
    }

    /// The topic's partitions with their first and next offsets.
    async fn bounds(&self) -> Result<BTreeMap<i32, (i64, i64)>, DeadLetterError> {
        topic_bounds(&self.props, &self.topic).await.map_err(|e| self.err(e))
    }
}

/// A topic's partitions with their first and next offsets.
pub async fn topic_bounds(props: &KafkaProperties, topic: &str) -> Result<BTreeMap<i32, (i64, i64)>, String> {
    let mut cc = crate::kafka::client_config(props);
    cc.remove("group.instance.id");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = cc.create().map_err(|e| e.to_string())?;
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        let mut out = BTreeMap::new();
        for t in md.topics() {
            for p in t.partitions() {
                let bounds = consumer
                    .fetch_watermarks(&topic, p.id(), Duration::from_secs(10))
                    .map_err(|e| e.to_string())?;
                out.insert(p.id(), bounds);
            }
        }
        Ok::<_, String>(out)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Reads recorded positions from the main table's properties.
pub fn positions_from(props: &HashMap<String, String>, key: &str) -> Positions {
    props
        .get(key)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

/// The dead-letter table.
pub struct TableDeadLetters {
    engine: CommitEngine,
    pipeline: String,
    target_file_size: u64,
}

impl TableDeadLetters {
    /// Opens the table, creating it if it does not exist.
    pub async fn open(catalog: &Catalog, name: TableName, pipeline: &str, target_file_size: u64) -> Result<Self, DeadLetterError> {
        let setup = |message: String| DeadLetterError::Setup {
            table: name.to_string(),
            message,
        };
        crate::table::create_from_sql(catalog, &table_ddl(&name))
            .await
            .map_err(|e| setup(e.to_string()))?;
        // A dead-letter table another engine made must be one floe can append to, before any
        // record depends on it.
        let loaded = catalog.load(&name).await.map_err(|e| setup(e.to_string()))?;
        crate::table::check_writable(&loaded.metadata).map_err(setup)?;
        catalog
            .storage()
            .check_writable(loaded.metadata.location())
            .await
            .map_err(|e| setup(e.to_string()))?;
        Ok(TableDeadLetters {
            engine: CommitEngine::new(catalog.clone(), name),
            pipeline: pipeline.to_owned(),
            target_file_size,
        })
    }

    /// Appends the dead letters this table does not hold yet, advancing its own ledger for the
    /// batch's ranges in the same commit. Returns whether the batch may go on (false: another
    /// writer owns these offsets; the main commit will be fenced too).
    pub async fn write(&self, letters: &[DeadLetter], ranges: &[OffsetRange]) -> Result<bool, DeadLetterError> {
        let table = self.engine.load().await.map_err(CommitError::from)?;
        let ledger = Ledger::from_properties(table.metadata.properties(), &self.pipeline).map_err(|message| {
            DeadLetterError::Setup {
                table: self.engine.table().to_string(),
                message,
            }
        })?;
        // This table's ranges: from where its own ledger stands to the batch's end.
        let mut dl_ranges = Vec::new();
        for r in ranges {
            let has = ledger.get(&r.tp);
            if has.is_some_and(|h| h >= r.end) {
                continue;
            }
            dl_ranges.push(OffsetRange {
                tp: r.tp.clone(),
                expected: has,
                first: has.unwrap_or(r.first).max(r.first),
                end: r.end,
            });
        }
        let todo: Vec<&DeadLetter> = letters
            .iter()
            .filter(|l| {
                let tp = TopicPartition::new(&*l.record.topic, l.record.partition);
                ledger.get(&tp).is_none_or(|h| l.record.offset >= h)
            })
            .collect();
        if todo.is_empty() {
            return Ok(true);
        }
        let mut decoder = Decoder::new(table.metadata.current_schema(), DecodeOptions::default()).map_err(|e| {
            DeadLetterError::Setup {
                table: self.engine.table().to_string(),
                message: e.to_string(),
            }
        })?;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let b64 = base64::engine::general_purpose::STANDARD;
        for l in &todo {
            let r = &l.record;
            let row = json!({
                "source_topic": &*r.topic,
                "source_partition": r.partition,
                "source_offset": r.offset,
                "source_timestamp": r.timestamp.and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
                "key": r.key.as_ref().map(|k| b64.encode(k)),
                "value": r.value.as_ref().map(|v| b64.encode(v)),
                "value_text": r.value.as_ref().and_then(|v| std::str::from_utf8(v).ok()),
                "headers": r.headers.iter().map(|(k, v)| (k.clone(), json!(v.as_ref().map(|v| b64.encode(v))))).collect::<serde_json::Map<_, _>>(),
                "error_kind": l.error.kind().as_str(),
                "error_message": l.error.to_string(),
                "column_path": l.error.column(),
                "pipeline": &self.pipeline,
                "dead_lettered_at": &now,
            });
            let text = row.to_string();
            decoder
                .append(text.as_bytes(), &Origin { topic: &r.topic, partition: r.partition, offset: r.offset })
                .map_err(|e| DeadLetterError::Setup {
                    table: self.engine.table().to_string(),
                    message: format!("the dead-letter row does not fit the table: {e}"),
                })?;
        }
        let batch = decoder.finish();
        let files = crate::write::write_data_files(
            self.engine.catalog().file_io(),
            &table.metadata,
            table.metadata.current_schema(),
            vec![batch],
            self.target_file_size,
        )
        .await
        .map_err(|e| DeadLetterError::Setup {
            table: self.engine.table().to_string(),
            message: e.to_string(),
        })?;
        let paths: Vec<String> = files.iter().map(|f| f.file_path().to_owned()).collect();
        let mut append = Append::new(self.pipeline.clone(), dl_ranges, files, table.metadata.default_partition_spec_id());
        match self.engine.commit(&mut append).await {
            Ok(AppendOutcome::Committed { .. }) => {
                tracing::info!(table = %self.engine.table(), rows = todo.len(), "dead letters committed");
                Ok(true)
            }
            Ok(AppendOutcome::Fenced { .. }) => {
                crate::write::delete_files(self.engine.catalog().file_io(), paths).await;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The optional valve: if more than `max_ratio` of the last `window` records failed, the schema or
/// the producer is probably wrong and draining the topic into the dead-letter queue would be worse
/// than stopping.
#[derive(Debug)]
pub struct RatioValve {
    max_ratio: f64,
    window: Vec<bool>,
    next: usize,
    filled: bool,
    failures: usize,
}

impl RatioValve {
    pub fn new(max_ratio: f64, window: usize) -> Self {
        RatioValve {
            max_ratio,
            window: vec![false; window.max(1)],
            next: 0,
            filled: false,
            failures: 0,
        }
    }

    /// Records one outcome; returns the failure ratio if the valve trips.
    pub fn observe(&mut self, failed: bool) -> Option<f64> {
        if self.window[self.next] {
            self.failures -= 1;
        }
        self.window[self.next] = failed;
        if failed {
            self.failures += 1;
        }
        self.next += 1;
        if self.next == self.window.len() {
            self.next = 0;
            self.filled = true;
        }
        let seen = if self.filled { self.window.len() } else { self.next };
        let ratio = self.failures as f64 / seen as f64;
        (self.filled && ratio > self.max_ratio).then_some(ratio)
    }

    pub fn window(&self) -> usize {
        self.window.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valve_trips_only_over_a_full_window() {
        let mut v = RatioValve::new(0.5, 4);
        assert_eq!(v.observe(true), None, "not a full window yet");
        assert_eq!(v.observe(true), None);
        assert_eq!(v.observe(true), None);
        assert_eq!(v.observe(false), Some(0.75));
        let mut v = RatioValve::new(0.5, 4);
        for _ in 0..100 {
            assert_eq!(v.observe(false), None);
        }
        assert_eq!(v.observe(true), None);
        assert_eq!(v.observe(true), None);
        assert_eq!(v.observe(true), Some(0.75));
        // Old failures leave the window.
        let mut v = RatioValve::new(0.5, 4);
        for f in [true, true, true, false, false, false, false] {
            v.observe(f);
        }
        assert_eq!(v.failures, 0);
    }

    #[test]
    fn ddl_parses_and_builds_a_schema() {
        let sql = table_ddl(&TableName::parse("default.dlq").unwrap());
        let stmt = crate::ddl::parse_create_table(&sql).unwrap();
        crate::table::schema_from_columns(&stmt.columns).unwrap();
    }
}
