//! `floe status`: where each pipeline of a table stands against Kafka, and how healthy the table is.
//!
//! Read-only. The table side comes from the table's current metadata (ledgers in the table
//! properties, snapshot summaries), the manifest list of its current snapshot and the entries of
//! those manifests; the Kafka side from the topics' watermarks and, for each partition that is
//! behind, the one oldest unread record (for its timestamp). Nothing is committed anywhere: no
//! table commit, no consumer-group offset, no group membership.
//!
//! The lag of a partition is measured from the ledger (DESIGN.md §1), the only truth of where a
//! pipeline stands; consumer-group offsets are not consulted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use iceberg::spec::{Operation as SnapshotOperation, Snapshot, TableMetadata};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::catalog::{Catalog, CatalogError, LoadedTable};
use crate::config::{Config, KafkaProperties, StartPosition, TableName};
use crate::ledger::{self, Ledger, TopicPartition};
use crate::maintain::{self, LiveFiles, ManifestCache};

pub use crate::ledger::SUMMARY_DEAD_LETTERS;
/// Commits and rows per minute are averaged over this window.
pub const RATE_WINDOW: Duration = Duration::from_secs(600);
/// A data file smaller than this fraction of the target file size counts as small.
pub const SMALL_FILE_DIVISOR: u64 = 4;
/// Budget of each Kafka request (metadata, watermarks, fetching the oldest unread records).
pub const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Why `floe status` could not run at all (problems with one table or with Kafka are reported in
/// the [`Report`] instead, next to what could be read).
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// What to look at.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// These tables; None: every table of the catalog.
    pub tables: Option<Vec<TableName>>,
    /// A partition lagging by more than this many records makes its pipeline "behind".
    pub max_lag: Option<u64>,
    /// Files below `target_file_size / SMALL_FILE_DIVISOR` are small.
    pub target_file_size: u64,
    /// The pipeline of this configuration, shown for its table even before its first commit.
    pub configured: Option<ConfiguredPipeline>,
    pub kafka: KafkaProperties,
    pub kafka_timeout: Duration,
}

/// The pipeline a configuration file runs.
#[derive(Debug, Clone)]
pub struct ConfiguredPipeline {
    pub name: String,
    pub table: TableName,
    pub topics: Vec<String>,
    pub start: StartPosition,
    /// The error its last `floe run` on this host stopped on, and when (ms), as `floe run` left
    /// it in the data directory; None once the pipeline started again.
    pub failed: Option<(i64, String)>,
}

impl StatusOptions {
    /// Options from the configuration: `tables` None means the configured table, or every table
    /// of the catalog when none is configured.
    pub fn from_config(config: &Config, tables: Option<Vec<TableName>>, max_lag: Option<u64>) -> StatusOptions {
        let configured_table = config.table_name().ok();
        let configured = match (config.pipeline_name(), &configured_table) {
            (Some(name), Some(table)) => Some(ConfiguredPipeline {
                name: name.to_owned(),
                table: table.clone(),
                topics: config.source.topics.clone(),
                start: config.source.start,
                failed: crate::run::read_failure(&config.data_dir, name),
            }),
            _ => None,
        };
        StatusOptions {
            tables: tables.or_else(|| configured_table.map(|t| vec![t])),
            max_lag,
            target_file_size: config.commit.target_file_size,
            configured,
            kafka: config.kafka.clone(),
            kafka_timeout: KAFKA_TIMEOUT,
        }
    }
}

/// Everything `floe status` found. Serialized as the `--json` output (its shape is documented in
/// the README: keep them in step).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub catalog: String,
    /// When the status was taken (RFC 3339, UTC).
    pub generated_at: String,
    pub max_lag: Option<u64>,
    pub tables: Vec<TableStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    pub table: String,
    pub metadata_location: Option<String>,
    /// What could not be read (the rest of the entry is what could).
    pub errors: Vec<String>,
    pub pipelines: Vec<PipelineStatus>,
    pub health: Option<Health>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PipelineStatus {
    pub name: String,
    /// Whether this is the pipeline of the configuration file used.
    pub configured: bool,
    /// Why the Kafka side is missing or incomplete (broker unreachable, topic gone).
    pub kafka_error: Option<String>,
    /// The ledger property does not parse.
    pub ledger_error: Option<String>,
    pub partitions: Vec<PartitionStatus>,
    /// Records behind, summed over the partitions; None if some partition's lag is unknown.
    pub lag: Option<u64>,
    /// The largest lag of one partition (of those known).
    pub max_partition_lag: Option<u64>,
    /// Age of the oldest unread record over all partitions, in seconds (0 when caught up).
    pub lag_seconds: Option<f64>,
    /// Some partition lags by more than `--max-lag` records.
    pub behind: bool,
    pub last_commit: Option<CommitInfo>,
    pub recent: Recent,
    /// Dead letters by kind, summed over the retained snapshots of the pipeline.
    pub dead_letters: BTreeMap<String, u64>,
    /// Rows that failed each data check (`column:check`), summed over the retained snapshots.
    pub check_failures: BTreeMap<String, u64>,
    /// The configured pipeline's last `floe run` stopped on this error (and has not started since).
    pub failed: Option<Failed>,
}

/// A pipeline that stopped on an error.
#[derive(Debug, Clone, Serialize)]
pub struct Failed {
    pub at: String,
    pub at_ms: i64,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// The next offset the pipeline reads, from the table's ledger; None: not in the ledger.
    pub ledger: Option<i64>,
    /// The topic's first retained offset (low watermark).
    pub log_start: Option<i64>,
    /// The topic's end offset (high watermark; the last stable offset under read_committed).
    pub end: Option<i64>,
    /// Records between where the pipeline reads next and the end.
    pub lag: Option<u64>,
    /// Age of the oldest unread record, in seconds (now minus its Kafka timestamp); 0 when
    /// caught up.
    pub lag_seconds: Option<f64>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CommitInfo {
    pub snapshot_id: i64,
    pub timestamp: String,
    pub timestamp_ms: i64,
    pub age_seconds: f64,
    /// Rows the commit added (`added-records`).
    pub rows: Option<u64>,
    /// The offset ranges it covers (`floe.offsets`).
    pub offsets: Option<String>,
}

/// Commits of one pipeline within [`RATE_WINDOW`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recent {
    pub window_seconds: u64,
    pub commits: u64,
    pub rows: u64,
    pub commits_per_minute: f64,
    pub rows_per_minute: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// Live data files of the current snapshot.
    pub data_files: u64,
    /// Those smaller than `small_file_threshold_bytes`.
    pub small_data_files: u64,
    pub small_file_threshold_bytes: u64,
    pub data_bytes: u64,
    pub records: u64,
    pub delete_files: u64,
    /// Manifests in the current snapshot's manifest list.
    pub manifests: u64,
    /// Snapshots in the metadata (the retained history).
    pub snapshots: u64,
    pub metadata_file_bytes: Option<u64>,
    pub maintenance: Maintenance,
}

#[derive(Debug, Clone, Serialize)]
pub struct Maintenance {
    pub compaction: TaskRun,
    pub retention: TaskRun,
    pub expire_snapshots: TaskRun,
    pub remove_orphans: TaskRun,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// The snapshot of its last run is in the retained history.
    Ran,
    /// No snapshot of it in the retained history (never ran, or its snapshots expired).
    NotInHistory,
    /// The task leaves no snapshot, so the table cannot tell.
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskRun {
    pub state: RunState,
    pub snapshot_id: Option<i64>,
    pub timestamp: Option<String>,
    pub timestamp_ms: Option<i64>,
    pub age_seconds: Option<f64>,
    /// `floe` or `another engine` (e.g. Trino's OPTIMIZE or DELETE).
    pub by: Option<String>,
    pub note: Option<String>,
}

impl TaskRun {
    fn unknown(note: impl Into<String>) -> TaskRun {
        TaskRun {
            state: RunState::Unknown,
            snapshot_id: None,
            timestamp: None,
            timestamp_ms: None,
            age_seconds: None,
            by: None,
            note: Some(note.into()),
        }
    }
}

/// What the exit status says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Everything read, nothing behind.
    Ok,
    /// Some pipeline lags by more than `--max-lag` records on some partition.
    Behind,
    /// Something could not be read (a table, a ledger, Kafka); nothing known to be behind.
    Incomplete,
    /// The configured pipeline's last run stopped on an error.
    Failed,
}

impl Report {
    pub fn verdict(&self) -> Verdict {
        let pipelines = || self.tables.iter().flat_map(|t| t.pipelines.iter());
        if pipelines().any(|p| p.failed.is_some()) {
            return Verdict::Failed;
        }
        if pipelines().any(|p| p.behind) {
            return Verdict::Behind;
        }
        let incomplete = self.tables.iter().any(|t| !t.errors.is_empty())
            || pipelines().any(|p| p.kafka_error.is_some() || p.ledger_error.is_some());
        if incomplete { Verdict::Incomplete } else { Verdict::Ok }
    }

    /// One line per pipeline over `--max-lag`: which partition lags most.
    pub fn behind_summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in &self.tables {
            for p in t.pipelines.iter().filter(|p| p.behind) {
                let worst = p.partitions.iter().filter(|x| x.lag.is_some()).max_by_key(|x| x.lag);
                if let Some(w) = worst {
                    out.push(format!(
                        "table {}: pipeline {:?} is {} records behind on {}/{} (--max-lag {})",
                        t.table,
                        p.name,
                        w.lag.unwrap_or_default(),
                        w.topic,
                        w.partition,
                        self.max_lag.unwrap_or_default()
                    ));
                }
            }
        }
        out
    }

    /// One line per pipeline whose last run stopped on an error.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in &self.tables {
            for p in &t.pipelines {
                if let Some(f) = &p.failed {
                    out.push(format!("pipeline {:?} (table {}) stopped on an error at {}: {}", p.name, t.table, f.at, f.error));
                }
            }
        }
        out
    }

    /// What could not be read, one line per problem (an unreachable broker once, with the
    /// pipelines it concerns).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut kafka: Vec<(String, Vec<String>)> = Vec::new();
        for t in &self.tables {
            out.extend(t.errors.iter().map(|e| format!("table {}: {e}", t.table)));
            for p in &t.pipelines {
                if let Some(e) = &p.ledger_error {
                    out.push(format!("table {}: pipeline {:?}: {e}", t.table, p.name));
                }
                if let Some(e) = &p.kafka_error {
                    let who = format!("pipeline {:?} of table {}", p.name, t.table);
                    match kafka.iter_mut().find(|(m, _)| m == e) {
                        Some((_, whom)) => whom.push(who),
                        None => kafka.push((e.clone(), vec![who])),
                    }
                }
            }
        }
        out.extend(kafka.into_iter().map(|(e, whom)| format!("{e} (for {})", whom.join(", "))));
        out
    }
}

/// Takes the status of the tables `opts` names.
pub async fn status(catalog: &Catalog, opts: &StatusOptions) -> Result<Report, StatusError> {
    let tables = match &opts.tables {
        Some(t) => t.clone(),
        None => catalog.list_tables(None).await?,
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut report = Report {
        catalog: catalog.name().to_owned(),
        generated_at: rfc3339(now_ms),
        max_lag: opts.max_lag,
        tables: Vec::new(),
    };
    for name in &tables {
        report.tables.push(table_side(catalog, name, opts, now_ms).await);
    }
    kafka_side(&mut report, opts, now_ms).await;
    Ok(report)
}

/// Everything the table itself says: pipelines with their ledgers and commits, and its health.
async fn table_side(catalog: &Catalog, name: &TableName, opts: &StatusOptions, now_ms: i64) -> TableStatus {
    let mut status = TableStatus {
        table: name.to_string(),
        metadata_location: None,
        errors: Vec::new(),
        pipelines: Vec::new(),
        health: None,
    };
    let table = match catalog.load(name).await {
        Ok(t) => t,
        Err(e) => {
            status.errors.push(e.to_string());
            return status;
        }
    };
    status.metadata_location = Some(table.metadata_location.clone());
    let configured = opts.configured.as_ref().filter(|c| &c.table == name);
    status.pipelines = pipelines(&table.metadata, configured, now_ms);
    match health(catalog, &table, opts.target_file_size, now_ms).await {
        Ok(h) => status.health = Some(h),
        Err(e) => status.errors.push(e),
    }
    status
}

/// The pipelines of a table with what the table says about them; partitions hold only the ledger
/// until [`kafka_side`] fills in the rest.
pub fn pipelines(m: &TableMetadata, configured: Option<&ConfiguredPipeline>, now_ms: i64) -> Vec<PipelineStatus> {
    let mut ledgers = ledger::all_ledgers(m.properties());
    if let Some(c) = configured {
        ledgers.entry(c.name.clone()).or_insert_with(|| Ok(Ledger::default()));
    }
    let mut out = Vec::new();
    for (name, ledger) in ledgers {
        let (ledger, ledger_error) = match ledger {
            Ok(l) => (l, None),
            Err(e) => (Ledger::default(), Some(e)),
        };
        let mut partitions: Vec<PartitionStatus> = ledger
            .entries()
            .map(|(tp, next)| PartitionStatus {
                topic: tp.topic,
                partition: tp.partition,
                ledger: Some(next),
                log_start: None,
                end: None,
                lag: None,
                lag_seconds: None,
                note: None,
            })
            .collect();
        let is_configured = configured.is_some_and(|c| c.name == name);
        if let Some(c) = configured.filter(|_| is_configured) {
            // Configured topics the pipeline has not committed yet; their partitions come from Kafka.
            for topic in &c.topics {
                if !partitions.iter().any(|p| &p.topic == topic) {
                    partitions.push(PartitionStatus {
                        topic: topic.clone(),
                        partition: -1,
                        ledger: None,
                        log_start: None,
                        end: None,
                        lag: None,
                        lag_seconds: None,
                        note: None,
                    });
                }
            }
        }
        let snapshots: Vec<&Snapshot> = m
            .snapshots()
            .map(|s| s.as_ref())
            .filter(|s| summary(s, ledger::SUMMARY_PIPELINE) == Some(name.as_str()))
            .collect();
        out.push(PipelineStatus {
            configured: is_configured,
            kafka_error: None,
            ledger_error,
            partitions,
            lag: None,
            max_partition_lag: None,
            lag_seconds: None,
            behind: false,
            last_commit: last_commit(&snapshots, now_ms),
            recent: recent(&snapshots, now_ms),
            dead_letters: dead_letters(&snapshots),
            check_failures: summed(&snapshots, crate::ledger::SUMMARY_CHECKS),
            failed: configured
                .filter(|_| is_configured)
                .and_then(|c| c.failed.clone())
                .map(|(at_ms, error)| Failed { at: rfc3339(at_ms), at_ms, error }),
            name,
        });
    }
    out
}

fn summary<'a>(s: &'a Snapshot, key: &str) -> Option<&'a str> {
    s.summary().additional_properties.get(key).map(String::as_str)
}

fn summary_u64(s: &Snapshot, key: &str) -> Option<u64> {
    summary(s, key).and_then(|v| v.parse().ok())
}

fn age_seconds(now_ms: i64, then_ms: i64) -> f64 {
    (now_ms - then_ms).max(0) as f64 / 1000.0
}

fn last_commit(snapshots: &[&Snapshot], now_ms: i64) -> Option<CommitInfo> {
    let s = snapshots.iter().max_by_key(|s| (s.timestamp_ms(), s.sequence_number()))?;
    Some(CommitInfo {
        snapshot_id: s.snapshot_id(),
        timestamp: rfc3339(s.timestamp_ms()),
        timestamp_ms: s.timestamp_ms(),
        age_seconds: age_seconds(now_ms, s.timestamp_ms()),
        rows: summary_u64(s, "added-records"),
        offsets: summary(s, ledger::SUMMARY_OFFSETS).map(str::to_owned),
    })
}

/// Commits and rows of the pipeline's snapshots within [`RATE_WINDOW`] before `now_ms`.
pub fn recent(snapshots: &[&Snapshot], now_ms: i64) -> Recent {
    let window_ms = RATE_WINDOW.as_millis() as i64;
    let (mut commits, mut rows) = (0u64, 0u64);
    for s in snapshots.iter().filter(|s| now_ms - s.timestamp_ms() <= window_ms) {
        commits += 1;
        rows += summary_u64(s, "added-records").unwrap_or(0);
    }
    let minutes = RATE_WINDOW.as_secs_f64() / 60.0;
    Recent {
        window_seconds: RATE_WINDOW.as_secs(),
        commits,
        rows,
        commits_per_minute: commits as f64 / minutes,
        rows_per_minute: rows as f64 / minutes,
    }
}

/// Dead letters by kind over the snapshots' `floe.dead-letters` summaries. An entry that does not
/// read as `kind=count` is counted under its own text, so that it shows rather than vanishes.
pub fn dead_letters(snapshots: &[&Snapshot]) -> BTreeMap<String, u64> {
    summed(snapshots, SUMMARY_DEAD_LETTERS)
}

/// A `name=count,...` summary key added up over the snapshots.
fn summed(snapshots: &[&Snapshot], key: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for value in snapshots.iter().filter_map(|s| summary(s, key)) {
        for (kind, n) in parse_dead_letters(value) {
            *out.entry(kind).or_insert(0) += n;
        }
    }
    out
}

/// `not-json=2,wrong-type=1` -> [("not-json", 2), ("wrong-type", 1)].
pub fn parse_dead_letters(value: &str) -> Vec<(String, u64)> {
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| match part.split_once('=') {
            Some((kind, n)) if n.trim().parse::<u64>().is_ok() => {
                (kind.trim().to_owned(), n.trim().parse().expect("checked"))
            }
            _ => (format!("unreadable entry {part:?}"), 1),
        })
        .collect()
}

/// The last run of each maintenance task that leaves a trace in the retained snapshots.
pub fn maintenance(m: &TableMetadata, now_ms: i64) -> Maintenance {
    let newest = |ops: &[SnapshotOperation], floe_task: &str| -> TaskRun {
        let s = m
            .snapshots()
            .filter(|s| ops.contains(&s.summary().operation))
            .max_by_key(|s| (s.timestamp_ms(), s.sequence_number()));
        match s {
            Some(s) => TaskRun {
                state: RunState::Ran,
                snapshot_id: Some(s.snapshot_id()),
                timestamp: Some(rfc3339(s.timestamp_ms())),
                timestamp_ms: Some(s.timestamp_ms()),
                age_seconds: Some(age_seconds(now_ms, s.timestamp_ms())),
                by: Some(
                    if summary(s, maintain::SUMMARY_TASK) == Some(floe_task) { "floe" } else { "another engine" }
                        .to_owned(),
                ),
                note: Some(format!("a `{}` snapshot", s.summary().operation.as_str())),
            },
            None => TaskRun {
                state: RunState::NotInHistory,
                snapshot_id: None,
                timestamp: None,
                timestamp_ms: None,
                age_seconds: None,
                by: None,
                note: Some("no such snapshot in the retained history".into()),
            },
        }
    };
    // Expiry leaves no snapshot, but a history whose oldest snapshot has lost its parent was
    // expired at some point after that snapshot was made.
    let oldest = m.snapshots().min_by_key(|s| (s.timestamp_ms(), s.sequence_number()));
    let expired_after = oldest
        .filter(|s| s.parent_snapshot_id().is_some_and(|p| m.snapshot_by_id(p).is_none()))
        .map(|s| s.timestamp_ms());
    let mut expire = TaskRun::unknown("snapshot expiry leaves no snapshot");
    if let Some(ms) = expired_after {
        expire.note = Some(format!(
            "snapshot expiry leaves no snapshot; the history was expired at some time after {} (the \
             oldest retained snapshot's parent is gone)",
            rfc3339(ms)
        ));
    }
    Maintenance {
        compaction: newest(&[SnapshotOperation::Replace], "compact"),
        retention: newest(&[SnapshotOperation::Delete, SnapshotOperation::Overwrite], "retention"),
        expire_snapshots: expire,
        remove_orphans: TaskRun::unknown("removing orphan files leaves no trace in the table"),
    }
}

async fn health(catalog: &Catalog, table: &LoadedTable, target_file_size: u64, now_ms: i64) -> Result<Health, String> {
    let io = catalog.file_io();
    let live = LiveFiles::read(&mut ManifestCache::default(), io, table)
        .await
        .map_err(|e| e.to_string())?;
    let threshold = target_file_size / SMALL_FILE_DIVISOR;
    let sizes = || live.data.values().map(|f| f.entry.file_size_in_bytes());
    let metadata_file_bytes = match io.new_input(&table.metadata_location) {
        Ok(input) => input.metadata().await.ok().map(|m| m.size),
        Err(_) => None,
    };
    Ok(Health {
        data_files: live.data.len() as u64,
        small_data_files: sizes().filter(|s| *s < threshold).count() as u64,
        small_file_threshold_bytes: threshold,
        data_bytes: sizes().sum(),
        records: live.data.values().map(|f| f.entry.record_count()).sum(),
        delete_files: live.delete_files,
        manifests: live.manifests.len() as u64,
        snapshots: table.metadata.snapshots().count() as u64,
        metadata_file_bytes,
        maintenance: maintenance(&table.metadata, now_ms),
    })
}

// --- Kafka ------------------------------------------------------------------------------------

/// A topic's partitions: partition -> (low, high) watermarks.
type Watermarks = BTreeMap<i32, (i64, i64)>;

/// Fills in every pipeline's partitions from Kafka: end offsets, lag, age of the oldest unread
/// record; then which pipelines are behind.
async fn kafka_side(report: &mut Report, opts: &StatusOptions, now_ms: i64) {
    let topics: BTreeSet<String> = report
        .tables
        .iter()
        .flat_map(|t| t.pipelines.iter())
        .flat_map(|p| p.partitions.iter().map(|x| x.topic.clone()))
        .collect();
    if topics.is_empty() {
        finish(report, opts.max_lag);
        return;
    }
    let (props, timeout) = (opts.kafka.clone(), opts.kafka_timeout);
    let topics: Vec<String> = topics.into_iter().collect();
    let marks = tokio::task::spawn_blocking(move || watermarks(&props, &topics, timeout))
        .await
        .unwrap_or_else(|e| Err(format!("the Kafka task failed: {e}")));
    let starts: HashMap<String, StartPosition> = opts
        .configured
        .iter()
        .map(|c| (c.name.clone(), c.start))
        .collect();
    for t in &mut report.tables {
        for p in &mut t.pipelines {
            let start = starts.get(&p.name).copied().unwrap_or(StartPosition::Earliest);
            match &marks {
                Ok(marks) => apply_watermarks(p, marks, start),
                Err(e) => {
                    p.kafka_error = Some(e.clone());
                    p.partitions.retain(|x| x.partition >= 0);
                }
            }
        }
    }
    if marks.is_err() {
        finish(report, opts.max_lag);
        return;
    }
    // The oldest unread record of each partition that is behind, read once per position.
    let wanted: BTreeSet<(TopicPartition, i64)> = report
        .tables
        .iter()
        .flat_map(|t| t.pipelines.iter())
        .flat_map(|p| p.partitions.iter())
        .filter_map(|x| unread_position(x).map(|o| (TopicPartition::new(x.topic.clone(), x.partition), o)))
        .collect();
    let (props, timeout) = (opts.kafka.clone(), opts.kafka_timeout);
    let stamps = tokio::task::spawn_blocking(move || timestamps(&props, wanted, timeout))
        .await
        .unwrap_or_else(|e| Err(format!("the Kafka task failed: {e}")));
    for p in report.tables.iter_mut().flat_map(|t| t.pipelines.iter_mut()) {
        for x in &mut p.partitions {
            match (x.lag, unread_position(x), &stamps) {
                (Some(0), _, _) => x.lag_seconds = Some(0.0),
                (_, Some(o), Ok(stamps)) => {
                    let tp = TopicPartition::new(x.topic.clone(), x.partition);
                    match stamps.get(&(tp, o)) {
                        Some(ts) => x.lag_seconds = Some(age_seconds(now_ms, *ts)),
                        None => append_note(
                            x,
                            format!(
                                "no readable record from offset {o} within {:?} (aborted transactions only?)",
                                opts.kafka_timeout
                            ),
                        ),
                    }
                }
                (_, Some(_), Err(e)) => {
                    p.kafka_error.get_or_insert_with(|| format!("reading the oldest unread records: {e}"));
                }
                _ => {}
            }
        }
    }
    finish(report, opts.max_lag);
}

/// Where the oldest unread record of a lagging partition is.
fn unread_position(x: &PartitionStatus) -> Option<i64> {
    match (x.lag, x.ledger, x.log_start) {
        (Some(lag), Some(l), Some(low)) if lag > 0 => Some(l.max(low)),
        (Some(lag), None, Some(low)) if lag > 0 => Some(low),
        _ => None,
    }
}

fn append_note(x: &mut PartitionStatus, note: String) {
    x.note = Some(match x.note.take() {
        Some(n) => format!("{n}; {note}"),
        None => note,
    });
}

/// Totals and the `--max-lag` verdict of every pipeline.
fn finish(report: &mut Report, max_lag: Option<u64>) {
    for p in report.tables.iter_mut().flat_map(|t| t.pipelines.iter_mut()) {
        let lags: Vec<Option<u64>> = p.partitions.iter().map(|x| x.lag).collect();
        p.lag = if p.kafka_error.is_none() && !lags.is_empty() && lags.iter().all(Option::is_some) {
            Some(lags.iter().flatten().sum())
        } else if lags.is_empty() && p.kafka_error.is_none() {
            Some(0)
        } else {
            None
        };
        p.max_partition_lag = lags.iter().flatten().max().copied();
        p.lag_seconds = p
            .partitions
            .iter()
            .filter_map(|x| x.lag_seconds)
            .fold(None, |acc: Option<f64>, s| Some(acc.map_or(s, |a| a.max(s))));
        p.behind = max_lag.is_some_and(|m| lags.iter().flatten().any(|l| *l > m));
    }
}

/// Lays a pipeline's partitions over the topics' watermarks: every partition of its topics,
/// whether or not the ledger has it yet.
pub fn apply_watermarks(
    p: &mut PipelineStatus,
    marks: &BTreeMap<String, Result<Watermarks, String>>,
    start: StartPosition,
) {
    let mut by_topic: BTreeMap<String, Vec<PartitionStatus>> = BTreeMap::new();
    for x in p.partitions.drain(..) {
        by_topic.entry(x.topic.clone()).or_default().push(x);
    }
    let mut errors = Vec::new();
    for (topic, mut known) in by_topic {
        // A placeholder (partition -1) stands for a configured topic absent from the ledger.
        known.retain(|x| x.partition >= 0);
        let committed = !known.is_empty();
        let topic_marks = match marks.get(&topic) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                errors.push(format!("topic {topic}: {e}"));
                p.partitions.extend(known);
                continue;
            }
            None => {
                errors.push(format!("topic {topic}: not asked"));
                p.partitions.extend(known);
                continue;
            }
        };
        for &partition in topic_marks.keys() {
            if !known.iter().any(|x| x.partition == partition) {
                known.push(PartitionStatus {
                    topic: topic.clone(),
                    partition,
                    ledger: None,
                    log_start: None,
                    end: None,
                    lag: None,
                    lag_seconds: None,
                    note: None,
                });
            }
        }
        known.sort_by_key(|x| x.partition);
        for x in &mut known {
            let Some(&(low, high)) = topic_marks.get(&x.partition) else {
                x.note = Some(format!(
                    "partition {} is not in the topic (deleted or recreated with fewer partitions?)",
                    x.partition
                ));
                continue;
            };
            x.log_start = Some(low);
            x.end = Some(high);
            match x.ledger {
                Some(l) if l > high => {
                    x.note = Some(format!(
                        "the ledger ({l}) is past the topic's end ({high}): the topic was recreated or \
                         truncated; floe run stops here rather than reset silently"
                    ));
                }
                Some(l) => {
                    x.lag = Some((high - l) as u64);
                    if l < low {
                        x.note = Some(format!(
                            "offsets {l}..{low} were deleted by the topic's retention before the pipeline \
                             read them"
                        ));
                    }
                }
                // A new partition of a topic the pipeline reads starts at its beginning
                // (DESIGN.md §1); `start` applies only before the pipeline's first commit.
                None if committed || start == StartPosition::Earliest => {
                    x.lag = Some((high - low) as u64);
                    x.note = Some("not in the ledger yet: the pipeline starts it at the log start".into());
                }
                None => {
                    x.note = Some("not in the ledger yet: the pipeline starts at the end (start = \"latest\")".into());
                }
            }
        }
        p.partitions.extend(known);
    }
    if !errors.is_empty() {
        p.kafka_error = Some(errors.join("; "));
    }
}

/// The librdkafka configuration of the status reader: the user's properties (security, brokers),
/// never joining a group, committing or creating anything.
fn reader_config(props: &KafkaProperties) -> rdkafka::ClientConfig {
    let mut cc = crate::kafka::client_config(props);
    cc.remove("group.instance.id");
    if cc.get("group.id").is_none() {
        cc.set("group.id", "floe-status");
    }
    cc.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("allow.auto.create.topics", "false")
        // The oldest record still there when the ledger points below the log start.
        .set("auto.offset.reset", "earliest")
        // One record per partition is wanted: keep the prefetch small.
        .set("max.partition.fetch.bytes", "65536")
        .set("queued.min.messages", "1");
    cc
}

/// The watermarks of each topic. Err: the cluster could not be asked at all.
fn watermarks(
    props: &KafkaProperties,
    topics: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, Result<Watermarks, String>>, String> {
    if props.get("bootstrap.servers").is_none() && props.get("metadata.broker.list").is_none() {
        return Err("`bootstrap.servers` is not set under [kafka] in the config file".into());
    }
    let brokers = crate::kafka::brokers(props);
    let consumer: BaseConsumer = reader_config(props)
        .create()
        .map_err(|e| format!("kafka configuration: {e}"))?;
    let mut out = BTreeMap::new();
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), timeout).map_err(|e| {
            format!("cannot reach Kafka at {brokers} within {timeout:?}: {e}; check `bootstrap.servers` and the broker")
        })?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            out.insert(topic.clone(), Err("the broker returned no metadata for it".into()));
            continue;
        };
        if let Some(e) = t.error() {
            let e = rdkafka::error::RDKafkaErrorCode::from(e);
            out.insert(topic.clone(), Err(format!("{e} (deleted, or not readable with these credentials?)")));
            continue;
        }
        let mut marks = Watermarks::new();
        let mut failed = None;
        for p in t.partitions() {
            match consumer.fetch_watermarks(topic, p.id(), timeout) {
                Ok(w) => {
                    marks.insert(p.id(), w);
                }
                Err(e) => {
                    failed = Some(format!("watermarks of partition {}: {e}", p.id()));
                    break;
                }
            }
        }
        out.insert(topic.clone(), failed.map_or(Ok(marks), Err));
    }
    Ok(out)
}

/// The timestamp (ms) of the first readable record at or after each position. Positions of one
/// partition are read in separate rounds (one assignment holds a partition once).
fn timestamps(
    props: &KafkaProperties,
    wanted: BTreeSet<(TopicPartition, i64)>,
    timeout: Duration,
) -> Result<HashMap<(TopicPartition, i64), i64>, String> {
    let mut out = HashMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    let mut rounds: Vec<BTreeMap<TopicPartition, i64>> = Vec::new();
    for (tp, offset) in wanted {
        match rounds.iter_mut().find(|r| !r.contains_key(&tp)) {
            Some(r) => {
                r.insert(tp, offset);
            }
            None => rounds.push(BTreeMap::from([(tp, offset)])),
        }
    }
    let consumer: BaseConsumer = reader_config(props)
        .create()
        .map_err(|e| format!("kafka configuration: {e}"))?;
    for round in rounds {
        let mut tpl = TopicPartitionList::new();
        for (tp, offset) in &round {
            tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset))
                .map_err(|e| format!("{tp} at {offset}: {e}"))?;
        }
        consumer.assign(&tpl).map_err(|e| format!("assigning partitions: {e}"))?;
        let mut pending: BTreeMap<TopicPartition, i64> = round;
        let deadline = Instant::now() + timeout;
        let mut last_error = None;
        while !pending.is_empty() && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(e)) => last_error = Some(e.to_string()),
                Some(Ok(m)) => {
                    let tp = TopicPartition::new(m.topic(), m.partition());
                    if let Some(&offset) = pending.get(&tp)
                        && m.offset() >= offset
                    {
                        pending.remove(&tp);
                        if let Some(ts) = m.timestamp().to_millis() {
                            out.insert((tp, offset), ts);
                        }
                    }
                }
            }
        }
        if !pending.is_empty()
            && let Some(e) = last_error
        {
            tracing::debug!(error = %e, pending = pending.len(), "reading the oldest unread records");
        }
    }
    Ok(out)
}

// --- the human form ---------------------------------------------------------------------------

/// `ms` since the epoch as RFC 3339 UTC, to the millisecond.
fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms since the epoch"))
}

/// A duration in seconds as "4s", "3m 12s", "2h 5m", "3d 4h".
pub fn human_age(secs: f64) -> String {
    if secs <= 0.0 {
        return "0s".to_owned();
    }
    if secs < 10.0 {
        return format!("{secs:.1}s");
    }
    let s = secs as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

fn opt<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Rows of cells as aligned text: the first and last columns left-aligned, the others right-aligned.
fn aligned(rows: &[Vec<String>], indent: &str) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = indent.to_owned();
        for (c, cell) in r.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c == 0 || c == cols - 1 {
                line.push_str(cell);
                if c != cols - 1 {
                    line.push_str(&" ".repeat(pad));
                }
            } else {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
            if c != cols - 1 {
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tables.is_empty() {
            writeln!(f, "catalog {:?} has no tables", self.catalog)?;
        }
        for (i, t) in self.tables.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{t}")?;
        }
        Ok(())
    }
}

impl fmt::Display for TableStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table {}", self.table)?;
        for e in &self.errors {
            writeln!(f, "  error: {e}")?;
        }
        if self.pipelines.is_empty() && self.metadata_location.is_some() {
            writeln!(f, "  no pipeline has committed to this table")?;
        }
        for p in &self.pipelines {
            write!(f, "{p}")?;
        }
        if let Some(h) = &self.health {
            write!(f, "{h}")?;
        }
        Ok(())
    }
}

impl fmt::Display for PipelineStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.configured { " (this config's pipeline)" } else { "" };
        let behind = if self.behind { "  BEHIND --max-lag" } else { "" };
        writeln!(f, "  pipeline {}{mark}{behind}", self.name)?;
        if let Some(x) = &self.failed {
            writeln!(f, "    FAILED: its last `floe run` stopped on an error at {}: {}", x.at, x.error)?;
        }
        if let Some(e) = &self.ledger_error {
            writeln!(f, "    ledger unreadable: {e}")?;
        }
        if let Some(e) = &self.kafka_error {
            writeln!(f, "    kafka: {e}")?;
        }
        if !self.partitions.is_empty() {
            let mut rows = vec![["partition", "ledger", "end", "lag", "oldest unread", "note"].map(str::to_owned).to_vec()];
            for x in &self.partitions {
                let part = if x.partition < 0 { format!("{}/?", x.topic) } else { format!("{}/{}", x.topic, x.partition) };
                rows.push(vec![
                    part,
                    opt(x.ledger),
                    opt(x.end),
                    opt(x.lag),
                    x.lag_seconds.map_or_else(|| "-".to_owned(), human_age),
                    x.note.clone().unwrap_or_default(),
                ]);
            }
            f.write_str(&aligned(&rows, "    "))?;
        }
        let lag = match (self.lag, self.lag_seconds) {
            (Some(0), _) => "0 records: caught up".to_owned(),
            (Some(l), Some(s)) => format!("{l} records, oldest unread record {} old", human_age(s)),
            (Some(l), None) => format!("{l} records"),
            (None, _) => "unknown".to_owned(),
        };
        let mut rows = vec![vec!["lag".to_owned(), lag]];
        rows.push(vec![
            "last commit".to_owned(),
            match &self.last_commit {
                Some(c) => format!(
                    "{} ago: snapshot {} at {}, {} rows",
                    human_age(c.age_seconds),
                    c.snapshot_id,
                    c.timestamp,
                    opt(c.rows)
                ),
                None => "none in the retained history".to_owned(),
            },
        ]);
        let r = &self.recent;
        rows.push(vec![
            format!("last {} min", r.window_seconds / 60),
            format!(
                "{} ({:.1}/min), {} rows ({:.1}/min)",
                plural(r.commits, "commit"),
                r.commits_per_minute,
                r.rows,
                r.rows_per_minute
            ),
        ]);
        rows.push(vec![
            "dead letters".to_owned(),
            if self.dead_letters.is_empty() {
                "none in the retained history".to_owned()
            } else {
                self.dead_letters.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
            },
        ]);
        if !self.check_failures.is_empty() {
            rows.push(vec![
                "failed checks".to_owned(),
                self.check_failures.iter().map(|(k, n)| format!("{k} {n} rows")).collect::<Vec<_>>().join(", "),
            ]);
        }
        f.write_str(&aligned(&rows, "    "))
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  health")?;
        let run = |t: &TaskRun| match t.state {
            RunState::Ran => format!(
                "{} ago: snapshot {} at {}, by {}",
                t.age_seconds.map_or_else(|| "?".to_owned(), human_age),
                opt(t.snapshot_id),
                t.timestamp.clone().unwrap_or_default(),
                t.by.clone().unwrap_or_default()
            ),
            RunState::NotInHistory => "not in the retained history".to_owned(),
            RunState::Unknown => format!("unknown: {}", t.note.clone().unwrap_or_default()),
        };
        let m = &self.maintenance;
        let rows = vec![
            vec![
                "data files".to_owned(),
                format!(
                    "{} ({} small, under {}), {} rows, {}; {} delete files",
                    self.data_files,
                    self.small_data_files,
                    maintain::human_bytes(self.small_file_threshold_bytes),
                    self.records,
                    maintain::human_bytes(self.data_bytes),
                    self.delete_files
                ),
            ],
            vec!["manifests".to_owned(), self.manifests.to_string()],
            vec!["snapshots".to_owned(), self.snapshots.to_string()],
            vec![
                "metadata file".to_owned(),
                self.metadata_file_bytes.map_or_else(|| "size unknown".to_owned(), maintain::human_bytes),
            ],
            vec!["compaction".to_owned(), run(&m.compaction)],
            vec!["retention".to_owned(), run(&m.retention)],
            vec!["snapshot expiry".to_owned(), run(&m.expire_snapshots)],
            vec!["orphan removal".to_owned(), run(&m.remove_orphans)],
        ];
        f.write_str(&aligned(&rows, "    "))
    }
}

#[cfg(test)]
mod tests {
    use iceberg::spec::{Summary, TableMetadataBuilder};

    use super::*;

    // In the past: the metadata builder stamps its changes with the real time.
    const NOW: i64 = 1_700_000_000_000;

    /// One snapshot: operation, seconds before NOW, summary.
    type Step<'a> = (SnapshotOperation, i64, &'a [(&'a str, &'a str)]);

    /// A chain of snapshots, each the parent of the next.
    fn metadata(chain: &[Step<'_>], props: &[(&str, &str)]) -> TableMetadata {
        let schema = iceberg::spec::Schema::builder().build().unwrap();
        let mut b = TableMetadataBuilder::new(
            schema,
            iceberg::spec::UnboundPartitionSpec::builder().build(),
            iceberg::spec::SortOrder::unsorted_order(),
            "file:///tmp/t".into(),
            iceberg::spec::FormatVersion::V2,
            props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        )
        .unwrap();
        let mut parent = None;
        for (i, (op, ago, extra)) in chain.iter().enumerate() {
            let id = i as i64 + 1;
            let s = Snapshot::builder()
                .with_snapshot_id(id)
                .with_parent_snapshot_id(parent)
                .with_sequence_number(id)
                .with_timestamp_ms(NOW - ago * 1000)
                .with_manifest_list(format!("file:///tmp/t/metadata/snap-{id}.avro"))
                .with_summary(Summary {
                    operation: op.clone(),
                    additional_properties: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                })
                .with_schema_id(0)
                .build();
            b = b.set_branch_snapshot(s, "main").unwrap();
            parent = Some(id);
        }
        b.build().unwrap().metadata
    }

    #[test]
    fn dead_letters_parse_and_add_up() {
        assert_eq!(
            parse_dead_letters("not-json=2, wrong-type=1"),
            vec![("not-json".to_owned(), 2), ("wrong-type".to_owned(), 1)]
        );
        assert_eq!(parse_dead_letters(""), vec![]);
        assert_eq!(parse_dead_letters("oops"), vec![("unreadable entry \"oops\"".to_owned(), 1)]);
        let m = metadata(
            &[
                (SnapshotOperation::Append, 50, &[("floe.pipeline", "p"), (SUMMARY_DEAD_LETTERS, "not-json=2,wrong-type=1")]),
                (SnapshotOperation::Append, 40, &[("floe.pipeline", "q"), (SUMMARY_DEAD_LETTERS, "not-json=7")]),
                (SnapshotOperation::Append, 30, &[("floe.pipeline", "p"), (SUMMARY_DEAD_LETTERS, "not-json=3")]),
            ],
            &[("floe.ledger.p", r#"{"t":{"0":5}}"#), ("floe.ledger.q", r#"{"t":{"0":9}}"#)],
        );
        let ps = pipelines(&m, None, NOW);
        assert_eq!(ps.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["p", "q"]);
        assert_eq!(ps[0].dead_letters, BTreeMap::from([("not-json".into(), 5), ("wrong-type".into(), 1)]));
        assert_eq!(ps[1].dead_letters, BTreeMap::from([("not-json".into(), 7)]));
    }

    #[test]
    fn last_commit_and_rates_count_only_the_pipelines_snapshots_in_the_window() {
        let m = metadata(
            &[
                // Outside the 10-minute window.
                (SnapshotOperation::Append, 700, &[("floe.pipeline", "p"), ("added-records", "1000")]),
                (SnapshotOperation::Append, 300, &[("floe.pipeline", "p"), ("added-records", "100")]),
                // Another writer and a compaction: not the pipeline's commits.
                (SnapshotOperation::Append, 250, &[("added-records", "5000")]),
                (SnapshotOperation::Replace, 200, &[("floe.maintenance", "compact"), ("added-records", "1100")]),
                (SnapshotOperation::Append, 60, &[("floe.pipeline", "p"), ("added-records", "50"), ("floe.offsets", "t/0:100-150")]),
            ],
            &[("floe.ledger.p", r#"{"t":{"0":150}}"#)],
        );
        let p = &pipelines(&m, None, NOW)[0];
        let c = p.last_commit.as_ref().unwrap();
        assert_eq!((c.snapshot_id, c.rows, c.age_seconds), (5, Some(50), 60.0));
        assert_eq!(c.offsets.as_deref(), Some("t/0:100-150"));
        assert_eq!((p.recent.commits, p.recent.rows), (2, 150));
        assert!((p.recent.rows_per_minute - 15.0).abs() < 1e-9);
        assert!((p.recent.commits_per_minute - 0.2).abs() < 1e-9);
        assert_eq!(p.partitions.len(), 1);
        assert_eq!(p.partitions[0].ledger, Some(150));
    }

    #[test]
    fn maintenance_runs_from_snapshot_operations() {
        let m = metadata(
            &[
                (SnapshotOperation::Append, 900, &[]),
                (SnapshotOperation::Replace, 800, &[("floe.maintenance", "compact")]),
                (SnapshotOperation::Replace, 700, &[]),
                (SnapshotOperation::Delete, 600, &[("floe.maintenance", "retention")]),
                (SnapshotOperation::Append, 10, &[]),
            ],
            &[],
        );
        let r = maintenance(&m, NOW);
        assert_eq!(r.compaction.state, RunState::Ran);
        assert_eq!(r.compaction.snapshot_id, Some(3));
        assert_eq!(r.compaction.by.as_deref(), Some("another engine"));
        assert_eq!(r.retention.snapshot_id, Some(4));
        assert_eq!(r.retention.by.as_deref(), Some("floe"));
        assert_eq!(r.retention.age_seconds, Some(600.0));
        assert_eq!(r.expire_snapshots.state, RunState::Unknown);
        assert!(!r.expire_snapshots.note.as_deref().unwrap().contains("after"));
        assert_eq!(r.remove_orphans.state, RunState::Unknown);

        // The first two snapshots expired: the oldest left has lost its parent.
        let expired = TableMetadataBuilder::new_from_metadata(m, None)
            .remove_snapshots(&[1, 2])
            .build()
            .unwrap()
            .metadata;
        let r = maintenance(&expired, NOW);
        assert!(r.expire_snapshots.note.as_deref().unwrap().contains(&rfc3339(NOW - 700_000)), "{r:?}");
        let appends_only = metadata(&[(SnapshotOperation::Append, 5, &[])], &[]);
        assert_eq!(maintenance(&appends_only, NOW).compaction.state, RunState::NotInHistory);
    }

    #[test]
    fn lag_from_ledger_and_watermarks() {
        let mut p = pipelines(
            &metadata(&[], &[("floe.ledger.p", r#"{"t":{"0":100,"1":40,"7":3},"u":{"0":20}}"#)]),
            None,
            NOW,
        )
        .remove(0);
        let marks = BTreeMap::from([
            // Partition 2 is new (not in the ledger); 7 no longer exists.
            ("t".to_owned(), Ok(BTreeMap::from([(0, (0, 150)), (1, (50, 40)), (2, (10, 30))]))),
            ("u".to_owned(), Ok(BTreeMap::from([(0, (0, 15))]))),
        ]);
        apply_watermarks(&mut p, &marks, StartPosition::Latest);
        let got: Vec<(String, i32, Option<u64>)> =
            p.partitions.iter().map(|x| (x.topic.clone(), x.partition, x.lag)).collect();
        assert_eq!(
            got,
            vec![
                ("t".into(), 0, Some(50)),
                ("t".into(), 1, Some(0)),
                // New partitions of a committed topic start at the log start, whatever `start` says.
                ("t".into(), 2, Some(20)),
                ("t".into(), 7, None),
                ("u".into(), 0, None),
            ]
        );
        assert!(p.partitions[1].note.as_deref().unwrap().contains("deleted by the topic's retention"));
        assert!(p.partitions[3].note.as_deref().unwrap().contains("not in the topic"));
        assert!(p.partitions[4].note.as_deref().unwrap().contains("past the topic's end"));
        assert_eq!(unread_position(&p.partitions[0]), Some(100));
        assert_eq!(unread_position(&p.partitions[1]), None);
        assert_eq!(unread_position(&p.partitions[2]), Some(10));

        let mut report = Report {
            catalog: "c".into(),
            generated_at: String::new(),
            max_lag: Some(30),
            tables: vec![TableStatus {
                table: "a.b".into(),
                metadata_location: None,
                errors: vec![],
                pipelines: vec![p],
                health: None,
            }],
        };
        finish(&mut report, Some(30));
        let p = &report.tables[0].pipelines[0];
        assert_eq!((p.lag, p.max_partition_lag, p.behind), (None, Some(50), true));
        assert_eq!(report.verdict(), Verdict::Behind);
        assert!(report.behind_summary()[0].contains("50 records behind on t/0"), "{:?}", report.behind_summary());
        finish(&mut report, Some(50));
        assert_eq!(report.verdict(), Verdict::Ok);
    }

    #[test]
    fn configured_pipeline_before_its_first_commit() {
        let c = ConfiguredPipeline {
            name: "new".into(),
            table: TableName::parse("a.b").unwrap(),
            topics: vec!["t".into()],
            start: StartPosition::Earliest,
            failed: None,
        };
        let mut p = pipelines(&metadata(&[], &[]), Some(&c), NOW).remove(0);
        assert!(p.configured);
        assert_eq!(p.partitions[0].partition, -1);
        let marks = BTreeMap::from([("t".to_owned(), Ok(BTreeMap::from([(0, (5, 25)), (1, (0, 0))])))]);
        apply_watermarks(&mut p, &marks, StartPosition::Earliest);
        assert_eq!(p.partitions.iter().map(|x| (x.partition, x.lag)).collect::<Vec<_>>(), [(0, Some(20)), (1, Some(0))]);

        let mut p = pipelines(&metadata(&[], &[]), Some(&c), NOW).remove(0);
        apply_watermarks(&mut p, &marks, StartPosition::Latest);
        assert_eq!(p.partitions.iter().map(|x| x.lag).collect::<Vec<_>>(), [None, None]);

        let mut p = pipelines(&metadata(&[], &[]), Some(&c), NOW).remove(0);
        let gone = BTreeMap::from([("t".to_owned(), Err("unknown topic".to_owned()))]);
        apply_watermarks(&mut p, &gone, StartPosition::Earliest);
        assert_eq!(p.kafka_error.as_deref(), Some("topic t: unknown topic"));
        assert!(p.partitions.is_empty());
    }

    #[test]
    fn human_form_is_aligned() {
        let mut p = pipelines(&metadata(&[], &[("floe.ledger.pipe", r#"{"events":{"0":5,"10":1234}}"#)]), None, NOW)
            .remove(0);
        let marks = BTreeMap::from([("events".to_owned(), Ok(BTreeMap::from([(0, (0, 5)), (10, (0, 99999))])))]);
        apply_watermarks(&mut p, &marks, StartPosition::Earliest);
        p.partitions[0].lag_seconds = Some(0.0);
        p.partitions[1].lag_seconds = Some(125.0);
        let text = p.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "  pipeline pipe");
        assert_eq!(lines[1], "    partition  ledger    end    lag  oldest unread  note");
        assert_eq!(lines[2], "    events/0        5      5      0             0s");
        assert_eq!(lines[3], "    events/10    1234  99999  98765          2m 5s");
        assert!(text.contains("last commit   none in the retained history"), "{text}");
        assert!(text.contains("last 10 min   0 commits (0.0/min), 0 rows (0.0/min)"), "{text}");
        assert_eq!(human_age(3.31), "3.3s");
        assert_eq!(human_age(7322.0), "2h 2m");
        assert_eq!(human_age(200_000.0), "2d 7h");
    }

    #[test]
    fn an_unreachable_broker_is_one_problem_and_makes_the_status_incomplete() {
        let m = metadata(&[], &[("floe.ledger.p", r#"{"t":{"0":1}}"#), ("floe.ledger.q", r#"{"t":{"0":2}}"#)]);
        let mut ps = pipelines(&m, None, NOW);
        for p in &mut ps {
            p.kafka_error = Some("cannot reach Kafka at b:9092".into());
        }
        let mut report = Report {
            catalog: "c".into(),
            generated_at: String::new(),
            max_lag: Some(0),
            tables: vec![TableStatus {
                table: "a.b".into(),
                metadata_location: None,
                errors: vec![],
                pipelines: ps,
                health: None,
            }],
        };
        finish(&mut report, Some(0));
        assert_eq!(report.verdict(), Verdict::Incomplete);
        assert_eq!(
            report.problems(),
            vec![r#"cannot reach Kafka at b:9092 (for pipeline "p" of table a.b, pipeline "q" of table a.b)"#]
        );
        assert!(report.tables[0].pipelines.iter().all(|p| p.lag.is_none() && !p.behind));
    }
}
