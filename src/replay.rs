//! Dead-letter replay: after the producer or the table was fixed (a missing column added, say),
//! the dead letters that now decode against the table's current schema are written into the
//! table, exactly once; the others stay where they are and are reported with their new reason.
//!
//! Exactly once, the way the loader does it (DESIGN.md §1, §2):
//! - The replay has a ledger of its own, per pipeline: for every source topic-partition, the source
//!   offsets whose dead letters are settled (replayed, or known not to need it), as intervals. It
//!   lives in the table property `floe.replay.<pipeline>` (a property survives snapshot expiry and
//!   other engines' commits) and is copied into the summary of the snapshot that changes it
//!   (`floe.replay.ledger`), with where the rows came from, for the table's history.
//! - It changes only in the same commit that adds the replayed rows, and that commit goes through
//!   the commit engine with a fence: the property must still be what the batch was planned on, and
//!   the table's schema and partition spec the ones its rows were written with. Otherwise nothing is
//!   committed, the batch's files are deleted and the replay plans again from what the table says.
//!   So a replay killed part-way and run again, or run twice, or two replays at once, add nothing
//!   twice; a running `floe run` on the same table only meets the replay at the catalog swap.
//! - Only dead letters below the pipeline's own ledger are replayed: a record above it has not been
//!   committed by the pipeline yet and will be read again by `floe run`, which then writes it
//!   itself if it decodes.
//! - Records are identified by their source coordinates (topic, partition, offset), so replaying
//!   from the dead-letter topic and then from the dead-letter table adds nothing twice either.
//!
//! Nothing is ever deleted from the dead-letter topic or table.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use arrow_array::{Array, ArrayRef, RecordBatch};
use futures::TryStreamExt as _;
use iceberg::io::FileIO;
use iceberg::spec::DataFile;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, CatalogError, LoadedTable};
use crate::commit::{Check, CommitEngine, CommitError, Operation, Staged};
use crate::config::{KafkaProperties, TableName};
use crate::deadletter::{H_CLASS, H_COLUMN, H_MESSAGE, H_OFFSET, H_PARTITION, H_PIPELINE, H_TOPIC};
use crate::decode::{DecodeOptions, Decoder, Origin, RecordError, RecordErrorKind};
use crate::ledger::{self, Ledger, TopicPartition};
use crate::progress::Progress;

/// Table property prefix: a pipeline's replay ledger.
pub const REPLAY_PROPERTY_PREFIX: &str = "floe.replay.";
/// Snapshot summary key: where the replayed rows came from (`topic events.dlq`).
pub const SUMMARY_REPLAY_FROM: &str = "floe.replay.from";
/// Snapshot summary key: the pipeline whose dead letters were replayed.
pub const SUMMARY_REPLAY_PIPELINE: &str = "floe.replay.pipeline";
/// Snapshot summary key: the source offsets replayed in this commit, per partition, as
/// `topic/partition:first-end` spans (end exclusive; the exact set is in the ledger).
pub const SUMMARY_REPLAY_OFFSETS: &str = "floe.replay.offsets";
/// Snapshot summary key: the replay ledger as this commit leaves it.
pub const SUMMARY_REPLAY_LEDGER: &str = "floe.replay.ledger";
/// Snapshot summary key: how many dead letters this commit replayed.
pub const SUMMARY_REPLAY_ROWS: &str = "floe.replay.rows";

/// The table property holding `pipeline`'s replay ledger.
pub fn property_key(pipeline: &str) -> String {
    format!("{REPLAY_PROPERTY_PREFIX}{pipeline}")
}

/// Why listing or replaying failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("dead-letter topic {topic}: {message}")]
    Topic { topic: String, message: String },
    #[error("dead-letter table {table}: {message}")]
    Table { table: String, message: String },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error("table {table}: {message}")]
    Invalid { table: String, message: String },
    #[error("table {table}: gave up after {attempts} attempts in a row: {last}")]
    Restarts { table: String, attempts: u32, last: String },
}

/// Where the dead letters are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterSource {
    Topic(String),
    Table(TableName),
}

impl fmt::Display for DeadLetterSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetterSource::Topic(t) => write!(f, "topic {t}"),
            DeadLetterSource::Table(t) => write!(f, "table {t}"),
        }
    }
}

/// Which dead letters a command looks at.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only records whose (source) Kafka timestamp is at or after this, in ms since the epoch.
    pub since_ms: Option<i64>,
    /// Only records dead-lettered with this kind (`wrong-type`, ...).
    pub kind: Option<RecordErrorKind>,
}

impl Filter {
    pub fn matches(&self, l: &StoredLetter) -> bool {
        self.since_ms.is_none_or(|s| l.timestamp_ms.is_some_and(|t| t >= s))
            && self.kind.is_none_or(|k| l.kind == k.as_str())
    }
}

/// Parses `--kind`: one of the record error kinds.
pub fn parse_kind(s: &str) -> Result<RecordErrorKind, String> {
    RecordErrorKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
        let names: Vec<&str> = RecordErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        format!("unknown dead-letter kind {s:?}; the kinds are {}", names.join(", "))
    })
}

/// Parses `--since`: an RFC 3339 time (`2026-12-01T10:00:00Z`) or a duration before now (`2h`).
pub fn parse_since(s: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_ms - d.as_millis() as i64);
    }
    Err(format!(
        "--since {s:?} is neither an RFC 3339 time (2026-12-01T10:00:00Z) nor a duration before now (2h, 3d)"
    ))
}

/// One dead letter as its destination holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The source record's Kafka timestamp (ms).
    pub timestamp_ms: Option<i64>,
    #[serde(skip)]
    pub value: Option<Vec<u8>>,
    /// The kind it was dead-lettered with.
    pub kind: String,
    pub column: String,
    pub message: String,
    /// When it was dead-lettered (the table has it; the topic keeps the source timestamp).
    pub dead_lettered_at_ms: Option<i64>,
    /// Where it is: `events.dlq/0:17`, or the table's name.
    pub location: String,
}

impl StoredLetter {
    fn tp(&self) -> TopicPartition {
        TopicPartition::new(&*self.topic, self.partition)
    }

    /// The first characters of the value, printable.
    pub fn preview(&self, max: usize) -> String {
        match &self.value {
            None => "(null)".to_owned(),
            Some(v) => {
                let text = String::from_utf8_lossy(v);
                let mut out: String = text.chars().take(max).map(|c| if c.is_control() { ' ' } else { c }).collect();
                if text.chars().count() > max {
                    out.push('…');
                }
                out
            }
        }
    }
}

// --- the replay ledger --------------------------------------------------------------------------

/// Per source topic-partition, the source offsets whose dead letters are settled, as sorted,
/// disjoint, non-adjacent `[start, end)` intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReplayLedger(BTreeMap<String, BTreeMap<i32, Vec<[i64; 2]>>>);

impl ReplayLedger {
    /// Reads `pipeline`'s replay ledger; a property that does not parse is an error (guessing
    /// would risk duplicates).
    pub fn from_properties(props: &HashMap<String, String>, pipeline: &str) -> Result<ReplayLedger, String> {
        match props.get(&property_key(pipeline)) {
            None => Ok(ReplayLedger::default()),
            Some(text) => serde_json::from_str(text).map_err(|e| {
                format!("table property {} does not hold a valid floe replay ledger ({e}): {text:?}", property_key(pipeline))
            }),
        }
    }

    pub fn to_property(&self) -> String {
        serde_json::to_string(self).expect("a replay ledger always serializes")
    }

    fn intervals(&self, tp: &TopicPartition) -> &[[i64; 2]] {
        self.0.get(&tp.topic).and_then(|p| p.get(&tp.partition)).map_or(&[], Vec::as_slice)
    }

    pub fn contains(&self, tp: &TopicPartition, offset: i64) -> bool {
        let iv = self.intervals(tp);
        let i = iv.partition_point(|[start, _]| *start <= offset);
        i > 0 && offset < iv[i - 1][1]
    }

    /// Adds intervals to one partition's set, keeping it sorted, disjoint and merged.
    fn add(&mut self, tp: &TopicPartition, more: impl IntoIterator<Item = [i64; 2]>) {
        let entry = self.0.entry(tp.topic.clone()).or_default().entry(tp.partition).or_default();
        let mut all: Vec<[i64; 2]> = entry.drain(..).chain(more).filter(|[a, b]| a < b).collect();
        all.sort_unstable();
        let mut merged: Vec<[i64; 2]> = Vec::with_capacity(all.len());
        for [a, b] in all {
            match merged.last_mut() {
                Some(last) if a <= last[1] => last[1] = last[1].max(b),
                _ => merged.push([a, b]),
            }
        }
        *entry = merged;
    }

    /// Settles `replayed` offsets of one partition, and every offset below `bound` that is not one
    /// of the `unsettled` dead letters (offsets that are not dead letters never need a replay; below
    /// the pipeline's ledger every dead letter is already in the destination). `unsettled` must
    /// be below `bound` and outside the set.
    pub fn settle(&mut self, tp: &TopicPartition, replayed: &[i64], unsettled: &[i64], bound: i64) {
        let mut holes: Vec<i64> = unsettled.to_vec();
        holes.sort_unstable();
        let mut gaps = Vec::with_capacity(holes.len() + 1);
        let mut at = 0;
        for h in holes {
            gaps.push([at, h]);
            at = h + 1;
        }
        gaps.push([at, bound]);
        self.add(tp, replayed.iter().map(|o| [*o, o + 1]).chain(gaps));
    }
}

// --- reading the destinations -------------------------------------------------------------------

/// Every dead letter of `pipeline` in `source`, ordered by source coordinates, each once.
pub async fn read_letters(
    catalog: &Catalog,
    kafka: &KafkaProperties,
    source: &DeadLetterSource,
    pipeline: &str,
) -> Result<Vec<StoredLetter>, ReplayError> {
    let mut letters = match source {
        DeadLetterSource::Topic(t) => read_topic(kafka, t, pipeline).await?,
        DeadLetterSource::Table(t) => read_table(catalog, t, pipeline).await?,
    };
    letters.sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    letters.dedup_by(|a, b| (&a.topic, a.partition, a.offset) == (&b.topic, b.partition, b.offset));
    Ok(letters)
}

async fn read_topic(kafka: &KafkaProperties, topic: &str, pipeline: &str) -> Result<Vec<StoredLetter>, ReplayError> {
    let err = |message: String| ReplayError::Topic { topic: topic.to_owned(), message };
    let bounds = crate::deadletter::topic_bounds(kafka, topic).await.map_err(err)?;
    if bounds.is_empty() {
        return Err(err("the topic does not exist (check `[dead_letter] topic` and the brokers)".into()));
    }
    let mut tpl = TopicPartitionList::new();
    for (p, (low, high)) in &bounds {
        if low < high {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*low)).map_err(|e| err(e.to_string()))?;
        }
    }
    if tpl.count() == 0 {
        return Ok(Vec::new());
    }
    let mut cc = crate::kafka::client_config(kafka);
    cc.set("group.id", format!("floe-dead-letter-replay-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest");
    cc.remove("group.instance.id");
    let consumer: BaseConsumer = cc.create().map_err(|e| err(e.to_string()))?;
    consumer.assign(&tpl).map_err(|e| err(e.to_string()))?;
    let (topic, pipeline) = (topic.to_owned(), pipeline.to_owned());
    tokio::task::spawn_blocking(move || {
        let err = |message: String| ReplayError::Topic { topic: topic.clone(), message };
        let mut at: HashMap<i32, i64> = bounds.iter().map(|(p, (low, _))| (*p, *low)).collect();
        let mut out = Vec::new();
        let mut last_progress = std::time::Instant::now();
        while bounds.iter().any(|(p, (_, high))| at[p] < *high) {
            if last_progress.elapsed() > Duration::from_secs(60) {
                return Err(err(format!("no record read for 60 s (at {at:?}, end offsets {bounds:?})")));
            }
            let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
            let m = m.map_err(|e| err(e.to_string()))?;
            last_progress = std::time::Instant::now();
            at.insert(m.partition(), m.offset() + 1);
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
            let (Some(t), Some(p), Some(o)) = (h(H_TOPIC), h(H_PARTITION), h(H_OFFSET)) else { continue };
            let (Ok(p), Ok(o)) = (p.parse(), o.parse()) else {
                return Err(err(format!(
                    "record {}:{} has coordinate headers {H_PARTITION}={p:?}, {H_OFFSET}={o:?} that are not numbers",
                    m.partition(),
                    m.offset()
                )));
            };
            out.push(StoredLetter {
                topic: t,
                partition: p,
                offset: o,
                timestamp_ms: m.timestamp().to_millis(),
                value: m.payload().map(<[u8]>::to_vec),
                kind: h(H_CLASS).unwrap_or_default(),
                column: h(H_COLUMN).unwrap_or_default(),
                message: h(H_MESSAGE).unwrap_or_default(),
                dead_lettered_at_ms: None,
                location: format!("{topic}/{}:{}", m.partition(), m.offset()),
            });
        }
        Ok(out)
    })
    .await
    .map_err(|e| err(e.to_string()))?
}

async fn read_table(catalog: &Catalog, name: &TableName, pipeline: &str) -> Result<Vec<StoredLetter>, ReplayError> {
    let err = |message: String| ReplayError::Table { table: name.to_string(), message };
    let loaded = catalog.load(name).await?;
    let batches = scan_table(catalog.file_io(), loaded).await.map_err(err)?;
    let mut out = Vec::new();
    for b in &batches {
        let col = |n: &str| b.column_by_name(n).cloned().ok_or_else(|| err(format!("has no column {n:?}; is it a floe dead-letter table?")));
        let (topic, partition, offset) = (col("source_topic")?, col("source_partition")?, col("source_offset")?);
        let (ts, value, kind) = (col("source_timestamp")?, col("value")?, col("error_kind")?);
        let (message, column, pipe, at) = (col("error_message")?, col("column_path")?, col("pipeline")?, col("dead_lettered_at")?);
        for i in 0..b.num_rows() {
            if str_at(&pipe, i).as_deref() != Some(pipeline) {
                continue;
            }
            let (Some(t), Some(p), Some(o)) = (str_at(&topic, i), int_at(&partition, i), int_at(&offset, i)) else {
                return Err(err(format!("a row of pipeline {pipeline} has no source coordinates")));
            };
            out.push(StoredLetter {
                topic: t,
                partition: p as i32,
                offset: o,
                timestamp_ms: int_at(&ts, i).map(|us| us.div_euclid(1000)),
                value: bin_at(&value, i),
                kind: str_at(&kind, i).unwrap_or_default(),
                column: str_at(&column, i).unwrap_or_default(),
                message: str_at(&message, i).unwrap_or_default(),
                dead_lettered_at_ms: int_at(&at, i).map(|us| us.div_euclid(1000)),
                location: name.to_string(),
            });
        }
    }
    Ok(out)
}

/// The table's current snapshot as Arrow batches (the iceberg crate's scan, deletes applied).
async fn scan_table(io: &FileIO, loaded: LoadedTable) -> Result<Vec<RecordBatch>, String> {
    if loaded.metadata.current_snapshot().is_none() {
        return Ok(Vec::new());
    }
    let ident = iceberg::TableIdent::new(
        iceberg::NamespaceIdent::from_vec(loaded.name.namespace.clone()).map_err(|e| e.to_string())?,
        loaded.name.name.clone(),
    );
    let runtime = iceberg::Runtime::try_current().map_err(|e| e.to_string())?;
    let table = iceberg::table::Table::builder()
        .file_io(io.clone())
        .metadata_location(loaded.metadata_location)
        .metadata(loaded.metadata)
        .identifier(ident)
        .readonly(true)
        .runtime(runtime)
        .build()
        .map_err(|e| e.to_string())?;
    let scan = table.scan().select_all().build().map_err(|e| e.to_string())?;
    let stream = scan.to_arrow().await.map_err(|e| e.to_string())?;
    stream.try_collect().await.map_err(|e| e.to_string())
}

fn str_at(a: &ArrayRef, i: usize) -> Option<String> {
    use arrow_array::cast::AsArray;
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        arrow_schema::DataType::Utf8 => Some(a.as_string::<i32>().value(i).to_owned()),
        arrow_schema::DataType::LargeUtf8 => Some(a.as_string::<i64>().value(i).to_owned()),
        arrow_schema::DataType::Utf8View => Some(a.as_string_view().value(i).to_owned()),
        _ => None,
    }
}

fn bin_at(a: &ArrayRef, i: usize) -> Option<Vec<u8>> {
    use arrow_array::cast::AsArray;
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        arrow_schema::DataType::Binary => Some(a.as_binary::<i32>().value(i).to_vec()),
        arrow_schema::DataType::LargeBinary => Some(a.as_binary::<i64>().value(i).to_vec()),
        arrow_schema::DataType::BinaryView => Some(a.as_binary_view().value(i).to_vec()),
        _ => None,
    }
}

fn int_at(a: &ArrayRef, i: usize) -> Option<i64> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        arrow_schema::DataType::Int32 => Some(a.as_primitive::<Int32Type>().value(i) as i64),
        arrow_schema::DataType::Int64 => Some(a.as_primitive::<Int64Type>().value(i)),
        arrow_schema::DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, _) => {
            Some(a.as_primitive::<TimestampMicrosecondType>().value(i))
        }
        _ => None,
    }
}

// --- what each dead letter is now ---------------------------------------------------------------

/// A dead letter against the table as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum State {
    /// Already written into the table by an earlier replay.
    Replayed,
    /// Decodes against the current schema: a replay would write it.
    Decodes,
    /// Still fails, for this reason.
    Fails { now_kind: String, now_column: String, now_reason: String },
    /// Past the pipeline's ledger: `floe run` reads it again (and writes it if it decodes).
    Uncommitted,
}

/// What the table says: the pipeline's ledger (how far dead letters are final) and the replay's.
struct TableView {
    base: LoadedTable,
    main: Ledger,
    replay: ReplayLedger,
    replay_raw: Option<String>,
}

fn view(base: LoadedTable, pipeline: &str) -> Result<TableView, ReplayError> {
    let invalid = |message: String| ReplayError::Invalid { table: base.name.to_string(), message };
    let props = base.metadata.properties();
    let main = Ledger::from_properties(props, pipeline).map_err(invalid)?;
    let replay = ReplayLedger::from_properties(props, pipeline).map_err(invalid)?;
    let replay_raw = props.get(&property_key(pipeline)).cloned();
    Ok(TableView { base, main, replay, replay_raw })
}

impl TableView {
    /// Below the pipeline's ledger, the dead letters of a partition are final.
    fn bound(&self, tp: &TopicPartition) -> i64 {
        self.main.get(tp).unwrap_or(0)
    }
}

/// What to list or replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub pipeline: String,
    pub source: DeadLetterSource,
    pub filter: Filter,
    /// Dead letters per commit.
    pub batch_size: usize,
    pub kafka: KafkaProperties,
    pub target_file_size: u64,
}

/// `floe dead-letters list`.
#[derive(Debug, Serialize)]
pub struct ListReport {
    pub table: String,
    pub pipeline: String,
    pub source: String,
    pub schema_id: i32,
    pub counts: BTreeMap<&'static str, u64>,
    pub letters: Vec<Listed>,
}

#[derive(Debug, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub letter: StoredLetter,
    pub timestamp: Option<String>,
    pub dead_lettered_at: Option<String>,
    pub value_preview: String,
    #[serde(flatten)]
    pub state: State,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Replayed => "replayed",
            State::Decodes => "decodes",
            State::Fails { .. } => "fails",
            State::Uncommitted => "uncommitted",
        }
    }
}

fn rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Lists the dead letters that match the filter, each with what it is against the table now.
pub async fn list(engine: &CommitEngine, opts: &ReplayOptions) -> Result<ListReport, ReplayError> {
    let table = view(engine.load().await?, &opts.pipeline)?;
    let letters = read_letters(engine.catalog(), &opts.kafka, &opts.source, &opts.pipeline).await?;
    let schema = table.base.metadata.current_schema().clone();
    let mut decoder = new_decoder(&table.base, &schema)?;
    let mut counts: BTreeMap<&'static str, u64> =
        ["replayed", "decodes", "fails", "uncommitted"].into_iter().map(|k| (k, 0)).collect();
    let mut out = Vec::new();
    for l in letters.into_iter().filter(|l| opts.filter.matches(l)) {
        let tp = l.tp();
        let state = if table.replay.contains(&tp, l.offset) {
            State::Replayed
        } else if l.offset >= table.bound(&tp) {
            State::Uncommitted
        } else {
            match decode(&mut decoder, &l) {
                Ok(()) => State::Decodes,
                Err(e) => fails(&e),
            }
        };
        if decoder.len() >= 1024 {
            // Only the verdicts matter here; the rows are dropped.
            let _ = decoder.finish();
        }
        *counts.entry(state.name()).or_default() += 1;
        out.push(Listed {
            timestamp: l.timestamp_ms.and_then(rfc3339),
            dead_lettered_at: l.dead_lettered_at_ms.and_then(rfc3339),
            value_preview: l.preview(60),
            letter: l,
            state,
        });
    }
    Ok(ListReport {
        table: engine.table().to_string(),
        pipeline: opts.pipeline.clone(),
        source: opts.source.to_string(),
        schema_id: schema.schema_id(),
        counts,
        letters: out,
    })
}

fn fails(e: &RecordError) -> State {
    State::Fails {
        now_kind: e.kind().as_str().to_owned(),
        now_column: e.column().to_owned(),
        now_reason: e.to_string(),
    }
}

fn new_decoder(base: &LoadedTable, schema: &iceberg::spec::Schema) -> Result<Decoder, ReplayError> {
    // The loader's decode options, so a replayed record becomes the row `floe run` would make.
    Decoder::new(schema, DecodeOptions::default())
        .map_err(|e| ReplayError::Invalid { table: base.name.to_string(), message: e.to_string() })
}

fn decode(decoder: &mut Decoder, l: &StoredLetter) -> Result<(), RecordError> {
    let origin = Origin { topic: &l.topic, partition: l.partition, offset: l.offset };
    decoder.append(l.value.as_deref().unwrap_or(b"null"), &origin)
}

impl fmt::Display for ListReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |k: &str| self.counts.get(k).copied().unwrap_or(0);
        writeln!(
            f,
            "{} dead letters of pipeline {} in {} for table {} (schema {}): {} decode now, {} still fail, {} replayed, {} not committed by the pipeline yet",
            self.letters.len(),
            self.pipeline,
            self.source,
            self.table,
            self.schema_id,
            c("decodes"),
            c("fails"),
            c("replayed"),
            c("uncommitted"),
        )?;
        if self.letters.is_empty() {
            return Ok(());
        }
        let source = |l: &Listed| format!("{}/{}:{}", l.letter.topic, l.letter.partition, l.letter.offset);
        let w = self.letters.iter().map(|l| source(l).len()).max().unwrap_or(6).max(6);
        writeln!(f, "{:<w$}  {:<16}  {:<24}  {:<11}  REASON  |  VALUE", "SOURCE", "KIND", "TIME", "STATE")?;
        for l in &self.letters {
            let now = match &l.state {
                State::Fails { now_reason, .. } => format!("now: {now_reason}"),
                State::Decodes => "decodes now".to_owned(),
                State::Replayed => "in the table".to_owned(),
                State::Uncommitted => "floe run reads it again".to_owned(),
            };
            writeln!(
                f,
                "{:<w$}  {:<16}  {:<24}  {:<11}  {}  |  {}  |  {}",
                source(l),
                l.letter.kind,
                l.timestamp.as_deref().unwrap_or("-"),
                l.state.name(),
                l.letter.message,
                now,
                l.value_preview
            )?;
        }
        Ok(())
    }
}

// --- replaying ----------------------------------------------------------------------------------

/// What a replay did.
#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    pub table: String,
    pub source: String,
    /// Dead letters written into the table by this run.
    pub replayed: u64,
    pub commits: u64,
    /// Replayed by an earlier run.
    pub already_replayed: u64,
    /// Past the pipeline's ledger (left to `floe run`).
    pub uncommitted: u64,
    /// Not matching `--since` / `--kind`.
    pub filtered: u64,
    /// Still failing, with the new reason.
    pub still_failing: Vec<(StoredLetter, String)>,
    /// Times the replay planned again (another commit moved the ledger, the schema changed).
    pub restarts: u32,
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "replayed {} dead letters from {} into {} in {} commits; {} replayed before, {} still fail, {} not committed by the pipeline yet (floe run reads them again), {} not selected",
            self.replayed,
            self.source,
            self.table,
            self.commits,
            self.already_replayed,
            self.still_failing.len(),
            self.uncommitted,
            self.filtered
        )?;
        for (l, reason) in &self.still_failing {
            writeln!(f, "still fails: {}/{}:{} (was {}): {reason}", l.topic, l.partition, l.offset, l.kind)?;
        }
        Ok(())
    }
}

enum Pass {
    Done,
    /// The table moved under the replay: plan again.
    Again(String),
}

const MAX_RESTARTS: u32 = 20;

/// Writes the dead letters that now decode into the table, exactly once (see the module docs).
pub async fn replay(engine: &CommitEngine, opts: &ReplayOptions, progress: &Progress) -> Result<ReplayReport, ReplayError> {
    let mut report = ReplayReport {
        table: engine.table().to_string(),
        source: opts.source.to_string(),
        ..ReplayReport::default()
    };
    loop {
        match pass(engine, opts, progress, &mut report).await? {
            Pass::Done => {
                progress.finish();
                return Ok(report);
            }
            Pass::Again(why) => {
                report.restarts += 1;
                tracing::info!(table = %engine.table(), reason = %why, "replay planning again");
                if report.restarts >= MAX_RESTARTS {
                    return Err(ReplayError::Restarts { table: engine.table().to_string(), attempts: report.restarts, last: why });
                }
            }
        }
    }
}

async fn pass(engine: &CommitEngine, opts: &ReplayOptions, progress: &Progress, report: &mut ReplayReport) -> Result<Pass, ReplayError> {
    // The table first: the dead letters below its ledger are final when the destination is read.
    let mut table = view(engine.load().await?, &opts.pipeline)?;
    let letters = read_letters(engine.catalog(), &opts.kafka, &opts.source, &opts.pipeline).await?;
    let schema = table.base.metadata.current_schema().clone();
    let spec_id = table.base.metadata.default_partition_spec_id();
    let (mut already, mut uncommitted, mut filtered) = (0u64, 0u64, 0u64);
    let mut known: BTreeMap<TopicPartition, Vec<i64>> = BTreeMap::new();
    let mut todo = Vec::new();
    for l in &letters {
        let tp = l.tp();
        if l.offset >= table.bound(&tp) {
            uncommitted += 1;
            continue;
        }
        known.entry(tp.clone()).or_default().push(l.offset);
        if !opts.filter.matches(l) {
            filtered += 1;
        } else if table.replay.contains(&tp, l.offset) {
            already += 1;
        } else {
            todo.push(l);
        }
    }
    // What this run replayed in an earlier pass is in the ledger now: not "replayed before".
    report.already_replayed = already.saturating_sub(report.replayed);
    report.uncommitted = uncommitted;
    report.filtered = filtered;
    report.still_failing.clear();
    progress.restart(todo.len() as u64);
    let mut decoder = new_decoder(&table.base, &schema)?;
    let plan = Plan { known, schema, spec_id };
    let mut batch: Vec<&StoredLetter> = Vec::new();
    let mut failing = Vec::new();
    for (i, l) in todo.iter().enumerate() {
        match decode(&mut decoder, l) {
            Ok(()) => batch.push(*l),
            Err(e) => failing.push(((*l).clone(), e.to_string())),
        }
        let last = i + 1 == todo.len();
        if !batch.is_empty() && (batch.len() >= opts.batch_size.max(1) || last) {
            let rows = decoder.finish();
            let n = batch.len() as u64;
            match commit_batch(engine, opts, &mut table, &plan, std::mem::take(&mut batch), rows).await? {
                None => {
                    report.replayed += n;
                    report.commits += 1;
                }
                Some(why) => return Ok(Pass::Again(why)),
            }
        }
        progress.inc(1);
    }
    report.still_failing = failing;
    Ok(Pass::Done)
}

/// What one pass of a replay decodes with and settles against.
struct Plan {
    /// Every final dead letter per partition, selected or not: the ledger's holes.
    known: BTreeMap<TopicPartition, Vec<i64>>,
    schema: iceberg::spec::SchemaRef,
    spec_id: i32,
}

/// Commits one batch; `Some(reason)` when the table moved and nothing was committed.
async fn commit_batch(
    engine: &CommitEngine,
    opts: &ReplayOptions,
    table: &mut TableView,
    plan: &Plan,
    batch: Vec<&StoredLetter>,
    rows: RecordBatch,
) -> Result<Option<String>, ReplayError> {
    let (known, schema, spec_id) = (&plan.known, &plan.schema, plan.spec_id);
    let mut per_tp: BTreeMap<TopicPartition, Vec<i64>> = BTreeMap::new();
    for l in &batch {
        per_tp.entry(l.tp()).or_default().push(l.offset);
    }
    let mut next = table.replay.clone();
    for (tp, offsets) in &per_tp {
        next.add(tp, offsets.iter().map(|o| [*o, o + 1]));
        let unsettled: Vec<i64> = known[tp].iter().copied().filter(|o| !next.contains(tp, *o)).collect();
        next.settle(tp, &[], &unsettled, table.bound(tp));
    }
    let spans: Vec<String> = per_tp
        .iter()
        .map(|(tp, o)| format!("{tp}:{}-{}", o.iter().min().expect("not empty"), o.iter().max().expect("not empty") + 1))
        .collect();
    let file_io = engine.catalog().file_io();
    let files = crate::write::write_data_files(file_io, &table.base.metadata, schema, vec![rows], opts.target_file_size)
        .await
        .map_err(|e| ReplayError::Invalid { table: engine.table().to_string(), message: e.to_string() })?;
    let paths: Vec<String> = files.iter().map(|f| f.file_path().to_owned()).collect();
    let value = next.to_property();
    let summary = HashMap::from([
        (SUMMARY_REPLAY_FROM.to_owned(), opts.source.to_string()),
        (SUMMARY_REPLAY_PIPELINE.to_owned(), opts.pipeline.clone()),
        (SUMMARY_REPLAY_OFFSETS.to_owned(), spans.join(",")),
        (SUMMARY_REPLAY_LEDGER.to_owned(), value.clone()),
        (SUMMARY_REPLAY_ROWS.to_owned(), batch.len().to_string()),
    ]);
    let mut op = ReplayCommit {
        key: property_key(&opts.pipeline),
        expected: table.replay_raw.clone(),
        value: value.clone(),
        files,
        spec_id,
        schema_id: schema.schema_id(),
        summary,
        commit_id: uuid::Uuid::now_v7().to_string(),
    };
    let mut failures = 0;
    let outcome = loop {
        match engine.commit(&mut op).await {
            Ok(o) => break o,
            // The swap's outcome may be unknown: the same operation again recognises its own
            // commit by its id.
            Err(e) if e.is_transient() && failures < 5 => {
                failures += 1;
                tracing::warn!(table = %engine.table(), error = %e, failures, "replay commit failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 << failures)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    match outcome {
        ReplayOutcome::Committed { snapshot_id } => {
            tracing::info!(
                table = %engine.table(),
                rows = batch.len(),
                snapshot = ?snapshot_id,
                offsets = %spans.join(","),
                "dead letters replayed"
            );
            table.replay = next;
            table.replay_raw = Some(value);
            Ok(None)
        }
        ReplayOutcome::Moved(why) => {
            crate::write::delete_files(file_io, paths).await;
            Ok(Some(why))
        }
    }
}

/// Appends replayed rows and moves the replay ledger, fenced on the ledger, the schema and the
/// partition spec the batch was planned with.
struct ReplayCommit {
    key: String,
    expected: Option<String>,
    value: String,
    files: Vec<DataFile>,
    spec_id: i32,
    schema_id: i32,
    summary: HashMap<String, String>,
    commit_id: String,
}

enum ReplayOutcome {
    Committed { snapshot_id: Option<i64> },
    Moved(String),
}

impl Operation for ReplayCommit {
    type Outcome = ReplayOutcome;

    fn check(&mut self, base: &LoadedTable) -> Result<Check<ReplayOutcome>, CommitError> {
        let m = &base.metadata;
        if m.properties().get(&self.key) != self.expected.as_ref() {
            // An earlier attempt of this very commit may have landed although its swap reported
            // an error.
            let ours = m
                .snapshots()
                .find(|s| s.summary().additional_properties.get(ledger::SUMMARY_COMMIT_ID) == Some(&self.commit_id));
            if let Some(s) = ours {
                return Ok(Check::Stop(ReplayOutcome::Committed { snapshot_id: Some(s.snapshot_id()) }));
            }
            return Ok(Check::Stop(ReplayOutcome::Moved(format!("another replay moved {} meanwhile", self.key))));
        }
        if m.current_schema().schema_id() != self.schema_id {
            return Ok(Check::Stop(ReplayOutcome::Moved(format!(
                "the table's schema changed (from {} to {})",
                self.schema_id,
                m.current_schema().schema_id()
            ))));
        }
        if m.default_partition_spec_id() != self.spec_id {
            return Ok(Check::Stop(ReplayOutcome::Moved("the table's partition spec changed".into())));
        }
        Ok(Check::Proceed)
    }

    async fn build(&mut self, base: &LoadedTable, file_io: &FileIO) -> Result<Staged, CommitError> {
        let mut summary = self.summary.clone();
        summary.insert(ledger::SUMMARY_COMMIT_ID.to_owned(), self.commit_id.clone());
        summary.insert("floe.version".to_owned(), env!("CARGO_PKG_VERSION").to_owned());
        let props = HashMap::from([(self.key.clone(), self.value.clone())]);
        crate::commit::append_snapshot(base, file_io, self.files.clone(), self.spec_id, summary, props).await
    }

    fn committed(&mut self, new: &LoadedTable, _attempts: u32) -> ReplayOutcome {
        ReplayOutcome::Committed { snapshot_id: new.metadata.current_snapshot().map(|s| s.snapshot_id()) }
    }
}

/// Which destination to read when the config has both (`--from`).
pub fn choose_source(topic: Option<&str>, table: Option<&str>, from: Option<&str>) -> Result<DeadLetterSource, String> {
    let table = table.map(TableName::parse).transpose().map_err(|e| format!("dead_letter.table: {e}"))?;
    match (from, topic, table) {
        (None | Some("table"), _, Some(t)) => Ok(DeadLetterSource::Table(t)),
        (None | Some("topic"), Some(t), _) => Ok(DeadLetterSource::Topic(t.to_owned())),
        (None, None, None) => Err(
            "no dead-letter destination configured: set `[dead_letter] topic` or `table` in the config file".into(),
        ),
        (Some("table"), _, None) => Err("--from table: no `[dead_letter] table` is configured".into()),
        (Some("topic"), None, _) => Err("--from topic: no `[dead_letter] topic` is configured".into()),
        (Some(other), _, _) => Err(format!("--from {other:?}: give `topic` or `table`")),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn tp() -> TopicPartition {
        TopicPartition::new("t", 0)
    }

    #[test]
    fn settle_fills_everything_below_the_bound_but_the_holes() {
        let mut l = ReplayLedger::default();
        l.settle(&tp(), &[10, 50], &[30, 70], 100);
        assert_eq!(l.intervals(&tp()), &[[0, 30], [31, 70], [71, 100]]);
        assert!(l.contains(&tp(), 10) && l.contains(&tp(), 50) && l.contains(&tp(), 99));
        assert!(!l.contains(&tp(), 30) && !l.contains(&tp(), 70) && !l.contains(&tp(), 100));
        assert!(!l.contains(&TopicPartition::new("t", 1), 10));
        // The holes replayed later: one interval.
        l.settle(&tp(), &[30, 70], &[], 120);
        assert_eq!(l.intervals(&tp()), &[[0, 120]]);
        let text = l.to_property();
        assert_eq!(text, r#"{"t":{"0":[[0,120]]}}"#);
        let props = HashMap::from([(property_key("p"), text)]);
        assert_eq!(ReplayLedger::from_properties(&props, "p").unwrap(), l);
        let broken = HashMap::from([(property_key("p"), "[".to_owned())]);
        assert!(ReplayLedger::from_properties(&broken, "p").unwrap_err().contains("floe.replay.p"));
    }

    #[test]
    fn since_and_kind_parse() {
        assert_eq!(parse_since("2026-12-01T10:00:00Z", 0).unwrap(), 1_796_119_200_000);
        assert_eq!(parse_since("2h", 10_000_000).unwrap(), 10_000_000 - 7_200_000);
        assert!(parse_since("yesterday", 0).unwrap_err().contains("yesterday"));
        assert_eq!(parse_kind("wrong-type").unwrap(), RecordErrorKind::WrongType);
        assert!(parse_kind("wrong").unwrap_err().contains("missing-required"));
    }

    #[test]
    fn source_choice() {
        assert_eq!(choose_source(Some("dlq"), Some("d.t"), None).unwrap(), DeadLetterSource::Table(TableName::parse("d.t").unwrap()));
        assert_eq!(choose_source(Some("dlq"), Some("d.t"), Some("topic")).unwrap(), DeadLetterSource::Topic("dlq".into()));
        assert!(choose_source(None, None, None).unwrap_err().contains("[dead_letter]"));
        assert!(choose_source(Some("dlq"), None, Some("table")).is_err());
    }

    proptest! {
        /// Against a model (a set of offsets): settling never loses an offset, never settles a
        /// hole, and keeps the intervals sorted, disjoint and merged.
        #[test]
        fn settle_matches_a_set(steps in prop::collection::vec((prop::collection::vec(0i64..60, 0..6), prop::collection::vec(0i64..60, 0..6), 0i64..60), 1..20)) {
            let mut l = ReplayLedger::default();
            let mut model = std::collections::BTreeSet::new();
            for (replayed, holes, bound) in steps {
                let holes: Vec<i64> = holes.into_iter().filter(|h| *h < bound && !model.contains(h) && !replayed.contains(h)).collect();
                l.settle(&tp(), &replayed, &holes, bound);
                model.extend(replayed.iter().copied());
                model.extend((0..bound).filter(|o| !holes.contains(o)));
                for o in 0..70 {
                    prop_assert_eq!(l.contains(&tp(), o), model.contains(&o), "offset {}", o);
                }
                let iv = l.intervals(&tp());
                for w in iv.windows(2) {
                    prop_assert!(w[0][1] < w[1][0], "{:?}", iv);
                }
            }
        }
    }
}
