//! The loader: `floe run`. One task owns all pipeline state (partition positions, the decoder's
//! buffered rows) and is the only one that commits; the consumer thread (`source`) feeds it records
//! and rebalance events in order.
//!
//! Exactly-once rests on three things kept here:
//! - a partition's batch covers [what the ledger said, next offset) and commits only if the ledger
//!   still says that (the fence, checked by the commit engine on the exact base metadata);
//! - the ledger advances in the same commit as the rows;
//! - after a fenced commit, every buffered record is dropped and each partition re-reads from the
//!   ledger under a new epoch; records read under an older epoch (in flight from before the seek or
//!   an earlier assignment) are dropped when they arrive.
//!
//! And one more promise (DESIGN.md §1): a partition never moves silently. A ledger outside the
//! partition's log stops the pipeline or, when configured, resumes at the log start with the gap
//! recorded in the table's history; a partition that appears while the pipeline runs starts at its
//! beginning.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use tokio::sync::mpsc;

use crate::catalog::{Catalog, CatalogError};
use crate::commit::{CommitEngine, CommitError};
use crate::committer::{Committer, Done, Sealed};
use crate::checks::Checks;
use crate::config::{CheckAction, Config, OnDataLoss, StartPosition, TableName};
use crate::deadletter::{DeadLetter, KafkaDeadLetters, RatioValve, TableDeadLetters};
use crate::retry::retrying;
use crate::decode::pool::{Outcome, Pool, MIN_CHUNK};
use crate::decode::{DecodeSetupError, Decoder, RecordError, RecordErrorKind, RecordOrigin};
use crate::ledger::{Ledger, OffsetRange, TopicPartition};
use crate::source::{self, AssignedPartition, Command, Epoch, Event, OutOfRange, Record, StartAt};
use crate::telemetry::{self, Live, PartitionLive};

/// How often the loader's timer updates its gauges, the live status and the heartbeat.
const TICK: Duration = Duration::from_secs(1);

/// Why the loader stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaError),
    #[error("table {table}: {error}")]
    Storage { table: String, error: crate::storage::StorageError },
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error("writing data files: {0}")]
    Write(#[from] crate::write::WriteError),
    #[error(
        "{error}\nThe pipeline stopped at this record: everything before it is committed, nothing \
         after it. Ways forward: configure a dead-letter destination (`[dead_letter] topic = ...` or \
         `table = ...`) so such records are set aside, fix the producer or the table schema, or skip \
         this one record with `floe skip --topic {topic} --partition {partition} --offset {offset}` \
         (recorded in the table's history) and restart."
    )]
    BadRecord {
        error: Box<RecordError>,
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error(
        "{0}\nfloe stopped without committing this batch (everything before it is committed; the \
         ledger still points at its first records). Ways forward: fix the producer and restart, or \
         change the check's action under [[checks]] (\"warn\" commits such rows, \"dead_letter\" sets \
         them aside) and restart."
    )]
    CheckFailed(String),
    #[error("the Kafka consumer thread stopped unexpectedly")]
    ConsumerGone,
    #[error("the committer task stopped unexpectedly")]
    CommitterGone,
    #[error("{}", data_loss_message(.0))]
    DataLoss(Box<DataLoss>),
    #[error(transparent)]
    DeadLetter(#[from] crate::deadletter::DeadLetterError),
    #[error(
        "{failed_pct:.1}% of the last {window} records could not be written (dead_letter.max_ratio is \
         {max_pct:.1}%): the table schema or the producer is probably wrong, so floe stopped instead of \
         draining the topic into the dead-letter destination. Nothing past the last commit was \
         written. Latest error: {last}"
    )]
    TooManyDeadLetters {
        failed_pct: f64,
        max_pct: f64,
        window: usize,
        last: Box<RecordError>,
    },
}

/// A partition whose ledger points outside its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLoss {
    pub pipeline: String,
    pub topic: String,
    pub partition: i32,
    /// The next offset floe must read (the table's ledger, or where this run had got to).
    pub needed: i64,
    /// The log's first offset and its end (next offset to be written).
    pub low: i64,
    pub high: i64,
}

impl DataLoss {
    /// What happened to the records, in words.
    fn what(&self) -> String {
        if self.needed < self.low {
            format!(
                "offsets {}..{} were deleted from the log (retention, or an administrator deleting \
                 records) before floe read them",
                self.needed,
                self.low - 1
            )
        } else {
            format!(
                "the ledger is beyond the end of the log ({}): the topic was probably deleted and \
                 recreated, so its offsets started again",
                self.high
            )
        }
    }
}

fn data_loss_message(d: &DataLoss) -> String {
    format!(
        "topic {topic} partition {partition}: pipeline {pipeline:?} must read offset {needed} next, \
         but the partition's log holds offsets {low} to {high} (end exclusive): {what}. floe stopped \
         (source.on_data_loss = \"fail\"); nothing of this partition past offset {needed} was \
         committed and the ledger is unchanged. Ways forward: accept the loss with \
         `source.on_data_loss = \"earliest\"` under [source] and restart (floe resumes at offset {low}, \
         logs the lost range and records it as `floe.gaps` in the table's history), or bring the \
         records back (produce them into the topic again) and restart.",
        topic = d.topic,
        partition = d.partition,
        pipeline = d.pipeline,
        needed = d.needed,
        low = d.low,
        high = d.high,
        what = d.what(),
    )
}

/// `pipeline`'s ledger in `table`; one that does not parse is a permanent error.
pub(crate) fn ledger_of(table: &crate::catalog::LoadedTable, pipeline: &str) -> Result<Ledger, LoadError> {
    Ledger::from_properties(table.metadata.properties(), pipeline)
        .map_err(|message| LoadError::Commit(CommitError::Invalid { table: table.name.to_string(), message }))
}

/// What a finished run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub records: u64,
    pub dead_letters: u64,
    pub commits: u64,
    pub fenced: u64,
}

/// One partition's position.
#[derive(Debug, Clone)]
struct PartitionState {
    /// Records, positions and seek confirmations of other epochs are dropped.
    epoch: Epoch,
    /// Where the batch being read starts: the ledger as it will be once the batch before it has
    /// committed (None: not in the ledger).
    expected: Option<i64>,
    /// The ledger as this process last saw it committed (None: not in the ledger).
    committed: Option<i64>,
    /// First offset buffered in the current batch.
    first: Option<i64>,
    /// Next offset to read after the buffered records.
    next: Option<i64>,
    /// The batch must commit this partition even without records: its position moved past
    /// offsets that hold none (transaction markers), or its start must be recorded.
    moved: bool,
    /// Offsets the log no longer held when this batch needed them: (needed, resumed at).
    gaps: Vec<(i64, i64)>,
    /// The log's end as the client last reported it (for lag).
    end: Option<i64>,
}

impl PartitionState {
    fn new(epoch: Epoch, expected: Option<i64>) -> Self {
        PartitionState {
            epoch,
            expected,
            committed: expected,
            first: None,
            next: expected,
            moved: false,
            gaps: Vec::new(),
            end: None,
        }
    }

    /// Whether the current batch has something to commit for this partition.
    fn pending(&self) -> bool {
        self.first.is_some() || self.moved
    }
}

/// Everything the loader needs, resolved from the configuration before anything starts.
pub struct Loader {
    config: Config,
    pipeline: String,
    engine: CommitEngine,
    live: Arc<Live>,
    checks: Checks,
}

/// This process's static group membership (`group.instance.id`): a process restarted after a
/// crash rejoins as the member it was and gets its partitions back at once, instead of waiting
/// for the dead member's session to time out. The id is derived from the pipeline, the host, the
/// data directory and the first free slot of that directory, so that several processes on one
/// host get different ids and a restarted one gets its predecessor's. The slot's lock is held as
/// long as this value lives (the kernel releases it when a process dies).
pub struct Membership {
    pub instance_id: String,
    /// Whether the id was derived (not configured).
    pub derived: bool,
    _lock: Option<std::fs::File>,
}

/// Slots tried per pipeline, host and data directory.
const MAX_INSTANCE_SLOTS: usize = 64;

impl Membership {
    /// The configured `group.instance.id`, or a derived one.
    pub fn claim(config: &Config, pipeline: &str) -> Result<Membership, LoadError> {
        if let Some(id) = config.kafka.get("group.instance.id") {
            return Ok(Membership {
                instance_id: id.to_owned(),
                derived: false,
                _lock: None,
            });
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let dir = config.data_dir.join("instances");
        std::fs::create_dir_all(&dir).map_err(|e| {
            LoadError::Config(format!(
                "cannot create {} (for this process's group membership lock): {e}; check data_dir",
                dir.display()
            ))
        })?;
        let place = std::fs::canonicalize(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
        let place_hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            place.hash(&mut h);
            h.finish() & 0xffff_ffff
        };
        let safe: String = pipeline
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
            .collect();
        for slot in 0..MAX_INSTANCE_SLOTS {
            let path = dir.join(format!("{safe}.{slot}.lock"));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| LoadError::Config(format!("cannot open {}: {e}", path.display())))?;
            match file.try_lock() {
                Ok(()) => {
                    return Ok(Membership {
                        instance_id: format!("floe-{safe}-{host}-{place_hash:08x}-{slot}"),
                        derived: true,
                        _lock: Some(file),
                    });
                }
                Err(std::fs::TryLockError::WouldBlock) => continue,
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(LoadError::Config(format!("cannot lock {}: {e}", path.display())));
                }
            }
        }
        Err(LoadError::Config(format!(
            "{MAX_INSTANCE_SLOTS} floe processes of pipeline {pipeline:?} already run with data_dir {}; \
             set kafka \"group.instance.id\" yourself to run more",
            config.data_dir.display()
        )))
    }
}

impl Loader {
    /// Validates the configuration against the real world: the table exists, the broker answers.
    pub async fn prepare(config: Config) -> Result<Loader, LoadError> {
        let pipeline = config
            .pipeline_name()
            .ok_or_else(|| {
                LoadError::Config(
                    "no pipeline name: set `pipeline = \"...\"` or kafka \"group.id\" in the config file".into(),
                )
            })?
            .to_owned();
        if config.kafka.get("group.id").is_none() {
            return Err(LoadError::Config(
                "kafka \"group.id\" is not set: floe consumes as a consumer group (add it under [kafka])".into(),
            ));
        }
        if config.source.subscription().is_empty() {
            return Err(LoadError::Config(
                "no topics: set `topics = [\"...\"]` (or `topic_pattern = \"...\"`) under [source] in the config file".into(),
            ));
        }
        let table: TableName = config.table_name().map_err(LoadError::Config)?;
        let catalog = Catalog::open(&config).await?;
        // Fails with "table ... does not exist ... create it with `floe table create`".
        let loaded = match catalog.load(&table).await {
            Ok(t) => t,
            Err(e) => {
                // Storage that failed to give the metadata file: say why (credentials, bucket)
                // rather than the store's raw answer.
                if let CatalogError::Metadata { location, .. } = &e
                    && let Some((root, _)) = location.rsplit_once("/metadata/")
                    && let Err(error) = catalog.storage().check_writable(root).await
                {
                    return Err(LoadError::Storage { table: table.to_string(), error });
                }
                return Err(e.into());
            }
        };
        // A table floe cannot append to (format v1, v3) is refused now, before any file is written.
        crate::table::check_writable(&loaded.metadata)
            .map_err(|message| CatalogError::Unsupported { table: table.to_string(), message })?;
        // Storage that cannot be written is refused before anything is read or written.
        catalog
            .storage()
            .check_writable(loaded.metadata.location())
            .await
            .map_err(|error| LoadError::Storage { table: table.to_string(), error })?;
        // The reshaping and metadata columns must fit the table: checked now, before any record.
        build_decoder(loaded.metadata.current_schema(), &config, &table).map_err(LoadError::Config)?;
        let checks = Checks::compile(&config.checks, loaded.metadata.current_schema())
            .map_err(|m| LoadError::Config(format!("{m} (table {table})")))?;
        crate::kafka::check_reachable(&config.kafka, Duration::from_secs(10)).await?;
        let live = Arc::new(Live::new(&pipeline, &table.to_string(), &config.source.subscription()));
        Ok(Loader {
            engine: CommitEngine::new(catalog, table),
            pipeline,
            config,
            live,
            checks,
        })
    }

    /// The pipeline's name (its ledger's key).
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// The table it writes.
    pub fn table(&self) -> &TableName {
        self.engine.table()
    }

    /// The live state that the HTTP listener serves.
    pub fn live(&self) -> Arc<Live> {
        self.live.clone()
    }

    /// Runs until `shutdown` resolves (then commits what is buffered and returns) or a permanent
    /// error occurs.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<RunReport, LoadError> {
        let membership = Membership::claim(&self.config, &self.pipeline)?;
        let mut client = crate::kafka::client_config(&self.config.kafka);
        client.set("group.instance.id", &membership.instance_id);
        client.set(
            "topic.metadata.refresh.interval.ms",
            self.config.source.partition_discovery.as_millis().to_string(),
        );
        let session_timeout = self
            .config
            .kafka
            .iter()
            .find(|(k, _)| *k == "session.timeout.ms")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(45));
        // Up to four runs of records (2,048 each at most) wait for the reader.
        let (tx, mut events) = mpsc::channel(4);
        let (commands, consumer) = source::spawn(client, self.config.source.subscription(), tx)
            .map_err(|e| LoadError::Config(format!("creating the Kafka consumer: {e}")))?;
        tracing::info!(
            group = self.config.kafka.get("group.id").unwrap_or_default(),
            instance = %membership.instance_id,
            derived = membership.derived,
            "joining the consumer group as a static member"
        );
        let table = self.engine.load().await?;
        let decoder = build_decoder(table.metadata.current_schema(), &self.config, self.engine.table())
            .map_err(LoadError::Config)?;
        let dl = &self.config.dead_letter;
        let dlq_topic = match &dl.topic {
            Some(topic) => {
                // Create it if missing; where floe may not create topics, it must exist already.
                if let Err(e) = crate::kafka::ensure_topic(&self.config.kafka, topic, 1, 1).await {
                    tracing::warn!(topic = %topic, error = %e, "could not create the dead-letter topic; it must exist");
                }
                Some(KafkaDeadLetters::new(&self.config.kafka, topic, &self.pipeline)?)
            }
            None => None,
        };
        let dlq_table = match &dl.table {
            Some(name) => Some(
                TableDeadLetters::open(
                    self.engine.catalog(),
                    TableName::parse(name).map_err(LoadError::Config)?,
                    &self.pipeline,
                    self.config.commit.target_file_size,
                )
                .await?,
            ),
            None => None,
        };
        let valve = dl.max_ratio.map(|r| RatioValve::new(r, dl.window));
        // Table maintenance on its own task; its commits race ours through the catalog swap.
        let maintenance = crate::maintain::schedule::spawn(
            self.engine.clone(),
            &self.config.maintenance,
            self.config.commit.target_file_size,
        );
        let table_label = self.engine.table().to_string();
        let committer = Committer {
            engine: self.engine.clone(),
            pipeline: self.pipeline.clone(),
            live: self.live.clone(),
            table_label: table_label.clone(),
            target_file_size: self.config.commit.target_file_size,
            workers: self.config.commit.workers(),
            dlq_topic,
            dlq_table,
        }
        .spawn();
        let mut state = State {
            live: self.live,
            table_label,
            max_idle: self.config.alerts.max_idle,
            last_record: Instant::now(),
            idle_alerted: false,
            batch_oldest_ms: None,
            batch_newest_ms: None,
            checks: self.checks,
            row_origins: Vec::new(),
            row_records: Vec::new(),
            engine: self.engine,
            pipeline: self.pipeline,
            start: self.config.source.start,
            on_data_loss: self.config.source.on_data_loss,
            next_epoch: 1,
            started_topics: BTreeSet::new(),
            by_pattern: self.config.source.topic_pattern.is_some(),
            session_timeout,
            waiting_since: Some(Instant::now()),
            waiting_logged: None,
            interval: self.config.commit.interval,
            max_buffered: self.config.commit.max_buffered_bytes as usize,
            decoder,
            pool: None,
            decode_workers: self.config.commit.workers(),
            fragments: Vec::new(),
            fragment_bytes: 0,
            decoder_schema: table.metadata.current_schema().clone(),
            partitions: BTreeMap::new(),
            commands,
            report: RunReport::default(),
            last_commit: Instant::now(),
            kafka_trouble: None,
            dead_letters: Vec::new(),
            dead_letter_bytes: 0,
            has_destination: dl.topic.is_some() || dl.table.is_some(),
            committer,
            paused: false,
            valve,
            max_ratio: dl.max_ratio,
            evolve_budget: if self.config.schema.auto_evolve { self.config.schema.max_new_columns } else { 0 },
            evolve_limit_logged: false,
            reshaping: Reshaping {
                decode: self.config.decode.clone(),
                metadata: self.config.metadata.clone(),
            },
        };
        tracing::info!(pipeline = %state.pipeline, table = %state.engine.table(), topics = ?self.config.source.subscription(), "loader started");
        let result = state.main_loop(&mut events, shutdown).await;
        state.committer.stop().await;
        if let Some(m) = maintenance {
            m.stop().await;
        }
        // Leave the group; keep answering the consumer's callbacks until it is gone.
        let _ = state.commands.send(Command::Stop);
        while let Some(ev) = events.recv().await {
            match ev {
                Event::Revoked { done, .. } => {
                    let _ = done.send(());
                }
                Event::Assigned { reply, .. } => drop(reply),
                _ => {}
            }
        }
        let _ = consumer.join();
        drop(membership);
        match &result {
            Ok(r) => tracing::info!(records = r.records, commits = r.commits, "loader stopped"),
            Err(e) => tracing::error!(error = %e, "loader stopped on an error"),
        }
        result
    }
}

struct State {
    live: Arc<Live>,
    /// The table's name, as metrics label it.
    table_label: String,
    /// `alerts.max_idle`: the heartbeat.
    max_idle: Option<Duration>,
    /// When the last record arrived (or the loader started).
    last_record: Instant,
    idle_alerted: bool,
    /// Kafka timestamps (ms) of the current batch's oldest and newest record, for freshness.
    batch_oldest_ms: Option<i64>,
    batch_newest_ms: Option<i64>,
    /// `[[checks]]`, evaluated on each batch before it is written.
    checks: Checks,
    /// With checks: where each buffered row came from (row i of the decoder's batch).
    row_origins: Vec<(Arc<str>, i32, i64)>,
    /// With a dead_letter check: each buffered row's record, to set it aside.
    row_records: Vec<Record>,
    engine: CommitEngine,
    pipeline: String,
    start: StartPosition,
    on_data_loss: OnDataLoss,
    /// The next partition epoch to hand out (0 is never used: the consumer tags records of
    /// partitions it does not know with it).
    next_epoch: Epoch,
    /// Topics this run has been assigned partitions of: a partition of these that the ledger does
    /// not know appeared while the pipeline runs, and starts at its beginning.
    started_topics: BTreeSet<String>,
    /// The subscription has a topic pattern: a topic the pipeline has not read yet, once it has
    /// started, was created (or first matched) while it runs, and starts at its beginning.
    by_pattern: bool,
    /// `session.timeout.ms`, for saying how long a wait for partitions may take.
    session_timeout: Duration,
    /// Since when this process holds no partition (None: it holds some).
    waiting_since: Option<Instant>,
    waiting_logged: Option<Instant>,
    interval: Duration,
    max_buffered: usize,
    decoder: Decoder,
    /// Decoders for `commit.workers` threads, for the current schema (built when first needed).
    pool: Option<Pool>,
    decode_workers: usize,
    /// Rows decoded by the pool, in record order, before the decoder's own rows.
    fragments: Vec<RecordBatch>,
    fragment_bytes: usize,
    /// The schema the decoder reads with (the table's, as of the last commit).
    decoder_schema: iceberg::spec::SchemaRef,
    partitions: BTreeMap<TopicPartition, PartitionState>,
    commands: std::sync::mpsc::Sender<Command>,
    report: RunReport,
    last_commit: Instant,
    /// When Kafka started failing (logged once per episode).
    kafka_trouble: Option<Instant>,
    /// Records of the current batch that can never be written, and the memory they hold (with
    /// the records a `dead_letter` check keeps until the commit).
    dead_letters: Vec<DeadLetter>,
    dead_letter_bytes: usize,
    /// Whether dead letters have somewhere to go (else a bad record stops the pipeline).
    has_destination: bool,
    /// The committer task: the batch in flight, and the way to hand it the next one.
    committer: crate::committer::Handle,
    /// Whether consumption is paused because the buffers are full.
    paused: bool,
    valve: Option<RatioValve>,
    max_ratio: Option<f64>,
    /// Columns auto_evolve may still add (0: off or used up).
    evolve_budget: usize,
    evolve_limit_logged: bool,
    /// How records are reshaped (the decoder is rebuilt with it when the schema changes).
    reshaping: Reshaping,
}

/// The `[decode]` and `[metadata]` configuration the decoder is built from.
struct Reshaping {
    decode: crate::config::DecodeConfig,
    metadata: crate::config::MetadataConfig,
}

/// Whether two topic names are the same (the consumer hands out one `Arc` per topic, so this is
/// mostly a pointer comparison).
fn same_topic(a: &str, b: &str) -> bool {
    std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len() || a == b
}

/// A decoder for `schema` with the configured reshaping and metadata columns, or an error naming
/// the configuration key, its value and what the table has instead.
fn build_decoder(schema: &iceberg::spec::SchemaRef, config: &Config, table: &TableName) -> Result<Decoder, String> {
    decoder_for(schema, &config.decode, &config.metadata, table)
}

fn decoder_for(
    schema: &iceberg::spec::SchemaRef,
    decode: &crate::config::DecodeConfig,
    metadata: &crate::config::MetadataConfig,
    table: &TableName,
) -> Result<Decoder, String> {
    let options = decode.options(metadata)?;
    Decoder::new(schema, options).map_err(|e| {
        let columns = || {
            let names: Vec<&str> = schema.as_struct().fields().iter().map(|f| f.name.as_str()).collect();
            names.join(", ")
        };
        match e {
            DecodeSetupError::UnknownColumn { column } => format!(
                "decode.projections.{column} = {:?}: table {table} has no top-level column {column:?} (its \
                 columns: {}); add the column (`floe table alter`) or project onto one it has",
                decode.projections.get(&column).map(String::as_str).unwrap_or_default(),
                columns()
            ),
            DecodeSetupError::UnknownMetadataColumn { column, field } => format!(
                "{} = {column:?}: table {table} has no top-level column {column:?} (its columns: {}); add \
                 the column (`floe table alter`) or name one it has",
                crate::config::MetadataConfig::key_of(&field),
                columns()
            ),
            DecodeSetupError::MetadataType { ref column, ref field, .. } => format!(
                "{} = {column:?} in table {table}: {e}",
                crate::config::MetadataConfig::key_of(field)
            ),
            other => format!("table {table}: {other}"),
        }
    })
}

impl State {
    async fn main_loop(
        &mut self,
        events: &mut mpsc::Receiver<Event>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunReport, LoadError> {
        tokio::pin!(shutdown);
        let mut tick_at = tokio::time::Instant::now();
        loop {
            // The interval counts from when the last batch was sealed; while that batch commits,
            // the next one goes on accumulating and is sealed as soon as the committer is free.
            let deadline = tokio::time::Instant::from_std(self.last_commit + self.interval);
            let pending = self.has_pending();
            let idle = !self.committer.busy();
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    tracing::info!("shutdown requested: committing what is buffered");
                    self.flush_and_wait().await?;
                    return Ok(self.report.clone());
                }
                done = self.committer.next() => {
                    self.on_done(done?).await?;
                    self.pace();
                }
                () = tokio::time::sleep_until(tick_at) => {
                    tick_at = tokio::time::Instant::now() + TICK;
                    self.tick();
                }
                // The timer fires even when no record arrives (kafka-delta-ingest #74).
                () = tokio::time::sleep_until(deadline), if pending && idle => {
                    self.seal().await?;
                    self.pace();
                }
                () = tokio::time::sleep_until(deadline), if !pending && idle => {
                    // Idle: still notice schema changes, so the next records are read right.
                    self.last_commit = Instant::now();
                    self.log_waiting();
                    let table = retrying!("loading the table", self.engine.load());
                    self.follow_schema(&table.metadata).await?;
                }
                ev = events.recv() => {
                    let Some(ev) = ev else { return Err(LoadError::ConsumerGone) };
                    self.handle(ev).await?;
                    // While a backlog keeps the channel full, the reader never waits for it: let
                    // the committer (which may sit behind the reader on this worker thread) run.
                    tokio::task::yield_now().await;
                    // A batch is sealed early when it holds half the buffer bound, so that it and
                    // the next one fit in the bound together.
                    if !self.committer.busy() && self.buffered_bytes() >= self.max_buffered / 2 {
                        self.seal().await?;
                    }
                    self.pace();
                }
            }
        }
    }

    /// Memory held by rows and dead letters not yet handed to the committer.
    fn buffered_bytes(&self) -> usize {
        self.decoded_bytes() + self.dead_letter_bytes
    }

    /// Memory held by the rows decoded and not yet handed to the committer.
    fn decoded_bytes(&self) -> usize {
        self.decoder.buffered_bytes() + self.fragment_bytes
    }

    /// Takes every decoded row, in record order.
    fn take_rows(&mut self) -> Vec<RecordBatch> {
        let mut rows = std::mem::take(&mut self.fragments);
        self.fragment_bytes = 0;
        if !self.decoder.is_empty() {
            rows.push(self.decoder.finish());
        }
        rows
    }

    /// Pauses consumption (Kafka's pause, so the consumer keeps answering the group) while the
    /// buffered rows, dead letters and the batch in flight together reach
    /// `commit.max_buffered_bytes`; resumes once they are below three quarters of it.
    fn pace(&mut self) {
        let total = self.buffered_bytes() + self.committer.in_flight_bytes();
        if !self.paused && total >= self.max_buffered {
            self.paused = true;
            tracing::debug!(buffered = total, max = self.max_buffered, "buffers full: consumption paused");
            telemetry::consumption_paused(&self.table_label, true);
            let _ = self.commands.send(Command::Pause);
        } else if self.paused && total < self.max_buffered / 4 * 3 {
            self.paused = false;
            tracing::debug!(buffered = total, "consumption resumed");
            telemetry::consumption_paused(&self.table_label, false);
            let _ = self.commands.send(Command::Resume);
        }
    }

    /// The live status and gauges: on every tick, and as soon as partitions are assigned or
    /// revoked (so `/ready` and the status page do not wait a tick to see them).
    fn show_live(&self) {
        let partitions: Vec<PartitionLive> = self
            .partitions
            .iter()
            .map(|(tp, p)| PartitionLive {
                topic: tp.topic.clone(),
                partition: tp.partition,
                committed: p.committed,
                start: if p.committed.is_none() { p.first.or(p.next) } else { None },
                read: p.next,
                end: p.end,
            })
            .collect();
        telemetry::loader_state(&self.live, &self.table_label, self.decoded_bytes(), &partitions);
    }

    /// The loader's timer: gauges, the live status, the heartbeat alert.
    fn tick(&mut self) {
        self.show_live();
        if let Some(max_idle) = self.max_idle
            && self.waiting_since.is_none()
        {
            let idle = self.last_record.elapsed();
            if idle >= max_idle && !self.idle_alerted {
                self.idle_alerted = true;
                telemetry::idle_alert(&self.live, &self.table_label, idle, max_idle);
            }
        }
    }

    fn has_pending(&self) -> bool {
        !self.decoder.is_empty() || !self.fragments.is_empty() || self.partitions.values().any(PartitionState::pending)
    }

    /// Says what the loader waits for while the group gives it no partition: a restarted process
    /// may wait until its dead predecessor's session times out (unless it rejoined as the same
    /// static member), and an operator should not have to guess.
    fn log_waiting(&mut self) {
        let Some(since) = self.waiting_since else { return };
        let waited = since.elapsed();
        if waited < Duration::from_secs(5) || self.waiting_logged.is_some_and(|t| t.elapsed() < Duration::from_secs(15)) {
            return;
        }
        self.waiting_logged = Some(Instant::now());
        tracing::info!(
            seconds = waited.as_secs(),
            session_timeout_s = self.session_timeout.as_secs(),
            "waiting for the consumer group to assign partitions: other members may hold them all, or a \
             member that died still holds them until its session times out (session.timeout.ms)"
        );
    }

    fn new_epoch(&mut self) -> Epoch {
        let e = self.next_epoch;
        self.next_epoch += 1;
        e
    }

    async fn handle(&mut self, ev: Event) -> Result<(), LoadError> {
        match ev {
            Event::Records(records) => {
                if self.kafka_trouble.take().is_some() {
                    tracing::info!("Kafka is answering again");
                }
                if self.idle_alerted {
                    self.idle_alerted = false;
                    telemetry::idle_cleared(&self.live, &self.table_label, self.last_record.elapsed());
                }
                self.last_record = Instant::now();
                // Counted per partition once per handed-over batch, not per record.
                let mut read: Vec<(Arc<str>, i32, u64, u64)> = Vec::new();
                for r in &records {
                    let bytes = r.value.as_ref().map_or(0, |v| v.len()) as u64;
                    match read.iter_mut().find(|(t, p, _, _)| *p == r.partition && same_topic(t, &r.topic)) {
                        Some(entry) => {
                            entry.2 += 1;
                            entry.3 += bytes;
                        }
                        None => read.push((r.topic.clone(), r.partition, 1, bytes)),
                    }
                }
                for (topic, partition, n, bytes) in read {
                    telemetry::records_read(&topic, partition, n, bytes);
                }
                if self.decode_workers > 1 && records.len() >= 2 * MIN_CHUNK {
                    return self.records_in_parallel(&records).await;
                }
                // Records come in runs of one partition: its key is made once per run.
                let mut tp = TopicPartition::new("", -1);
                for r in &records {
                    if tp.partition != r.partition || !same_topic(&tp.topic, &r.topic) {
                        tp = TopicPartition::new(&*r.topic, r.partition);
                    }
                    self.record(&tp, r).await?;
                }
            }
            Event::LogEnds(ends) => {
                for (tp, end) in ends {
                    if let Some(p) = self.partitions.get_mut(&tp) {
                        p.end = Some(end);
                    }
                }
            }
            Event::Assigned { partitions, reply } => {
                let starts = self.assign(partitions).await?;
                self.show_live();
                let _ = reply.send(starts);
            }
            Event::Revoked { partitions, done } => {
                // Commit what we hold before the partitions go to someone else.
                self.flush_and_wait().await?;
                for tp in &partitions {
                    self.partitions.remove(tp);
                }
                telemetry::partitions_revoked(&partitions);
                self.show_live();
                if self.partitions.is_empty() {
                    self.waiting_since = Some(Instant::now());
                }
                tracing::info!(partitions = ?partitions.iter().map(ToString::to_string).collect::<Vec<_>>(), "partitions revoked");
                let _ = done.send(());
            }
            Event::Seeked(confirmed) => {
                for (tp, epoch) in confirmed {
                    tracing::debug!(partition = %tp, epoch, "seek made");
                }
            }
            Event::Positions(positions) => {
                for (tp, epoch, at) in positions {
                    if let Some(p) = self.partitions.get_mut(&tp)
                        && p.epoch == epoch
                        && p.next.is_none_or(|n| at > n)
                    {
                        // Every record below `at` of this epoch was handed over: what lies between
                        // holds nothing for the table (transaction markers, aborted records).
                        p.next = Some(at);
                        p.moved = true;
                    }
                }
            }
            Event::OutOfRange(found) => {
                for o in found {
                    self.out_of_range(o).await?;
                }
            }
            Event::Error(message) => {
                if self.kafka_trouble.is_none() {
                    self.kafka_trouble = Some(Instant::now());
                    tracing::warn!(error = %message, "Kafka client error; the client keeps retrying");
                } else {
                    tracing::debug!(error = %message, "Kafka client error");
                }
            }
        }
        Ok(())
    }

    /// Where each newly assigned partition starts: the table's ledger, else the group's committed
    /// offset, else the beginning for a partition that appeared while the pipeline runs, else the
    /// configured start. A numeric start outside the partition's log is data loss (DESIGN.md §1).
    async fn assign(&mut self, partitions: Vec<AssignedPartition>) -> Result<Vec<(TopicPartition, StartAt, Epoch)>, LoadError> {
        let ledger = self.ledger().await?;
        // Topics the pipeline already reads: from the ledger, or from earlier assignments of this
        // run (not this one: all partitions of one assignment are equally "present at start").
        let mut known_topics: BTreeSet<String> = ledger.entries().map(|(tp, _)| tp.topic).collect();
        known_topics.extend(self.started_topics.iter().cloned());
        // With a topic pattern, `start` applies only to the topics of the pipeline's first start.
        let started = self.by_pattern && !known_topics.is_empty();
        let mut starts = Vec::new();
        let mut lost = None;
        for a in partitions {
            let tp = a.tp;
            let epoch = self.new_epoch();
            let from_ledger = ledger.get(&tp);
            let (mut start, mut reason) = match (from_ledger, a.committed) {
                (Some(o), _) => (StartAt::Offset(o), "ledger"),
                (None, Some(c)) => (StartAt::Offset(c), "group offset"),
                (None, None) if known_topics.contains(&tp.topic) => {
                    (StartAt::Beginning, "new partition")
                }
                (None, None) if started => (StartAt::Beginning, "new topic matching source.topic_pattern"),
                (None, None) => match self.start {
                    StartPosition::Earliest => (StartAt::Beginning, "source.start"),
                    StartPosition::Latest => (StartAt::End, "source.start"),
                },
            };
            let mut state = PartitionState::new(epoch, from_ledger);
            match (start, a.watermarks) {
                (StartAt::Offset(o), Some((low, high))) if o < low || o > high => {
                    let loss = DataLoss {
                        pipeline: self.pipeline.clone(),
                        topic: tp.topic.clone(),
                        partition: tp.partition,
                        needed: o,
                        low,
                        high,
                    };
                    match self.on_data_loss {
                        OnDataLoss::Fail => {
                            lost.get_or_insert(loss);
                        }
                        OnDataLoss::Earliest => {
                            tracing::error!(
                                partition = %tp,
                                needed = o,
                                resumed_at = low,
                                "data loss: {}; resuming at the log's start (source.on_data_loss = \"earliest\"), \
                                 recorded as floe.gaps in the next snapshot",
                                loss.what()
                            );
                            state.gaps.push((o, low));
                            state.moved = true;
                            start = StartAt::Offset(low);
                            reason = "log start after data loss";
                        }
                    }
                }
                (StartAt::End, Some((_, high))) => {
                    // Pin `latest` to a number and record it with the next commit, so that a
                    // restart starts this partition where this run did, not at a later end.
                    start = StartAt::Offset(high);
                    state.moved = true;
                }
                _ => {}
            }
            if let StartAt::Offset(o) = start {
                state.next = Some(o);
            } else {
                // Unknown numeric start: the first record read (or position) sets it.
                state.next = None;
            }
            tracing::info!(partition = %tp, ?start, reason, from_ledger = from_ledger.is_some(), epoch, "partition assigned");
            self.started_topics.insert(tp.topic.clone());
            self.partitions.insert(tp.clone(), state);
            starts.push((tp, start, epoch));
        }
        if let Some(loss) = lost {
            // Commit what the other partitions hold, then stop: nothing of the lost partition
            // moves, its ledger stays where it was.
            for (tp, _, _) in &starts {
                self.partitions.remove(tp);
            }
            self.flush_and_wait().await?;
            return Err(LoadError::DataLoss(Box::new(loss)));
        }
        if !starts.is_empty() {
            if self.waiting_since.is_some() {
                // The heartbeat counts while this process holds partitions.
                self.last_record = Instant::now();
            }
            self.waiting_since = None;
            self.waiting_logged = None;
        }
        Ok(starts)
    }

    /// A partition's position turned out to be outside its log while reading (retention removed
    /// records floe had not read, or a fence's seek went to an offset that is gone).
    async fn out_of_range(&mut self, o: OutOfRange) -> Result<(), LoadError> {
        let Some(p) = self.partitions.get(&o.tp) else { return Ok(()) };
        if p.epoch != o.epoch {
            return Ok(());
        }
        let loss = DataLoss {
            pipeline: self.pipeline.clone(),
            topic: o.tp.topic.clone(),
            partition: o.tp.partition,
            needed: o.position,
            low: o.low,
            high: o.high,
        };
        match self.on_data_loss {
            OnDataLoss::Fail => {
                // What was read before the gap is fine to commit; nothing after it was read.
                self.flush_and_wait().await?;
                Err(LoadError::DataLoss(Box::new(loss)))
            }
            OnDataLoss::Earliest => {
                tracing::error!(
                    partition = %o.tp,
                    needed = o.position,
                    resumed_at = o.low,
                    "data loss: {}; resuming at the log's start (source.on_data_loss = \"earliest\"), recorded \
                     as floe.gaps in the next snapshot",
                    loss.what()
                );
                let epoch = self.new_epoch();
                let p = self.partitions.get_mut(&o.tp).expect("checked above");
                p.epoch = epoch;
                p.gaps.push((o.position, o.low));
                p.next = Some(o.low);
                p.moved = true;
                let _ = self.commands.send(Command::Seek(vec![(o.tp, o.low, epoch)]));
                Ok(())
            }
        }
    }

    async fn ledger(&self) -> Result<Ledger, LoadError> {
        let table = retrying!("loading the table", self.engine.load());
        self.ledger_of(&table)
    }

    fn ledger_of(&self, table: &crate::catalog::LoadedTable) -> Result<Ledger, LoadError> {
        ledger_of(table, &self.pipeline)
    }

    /// Whether `tp` is still read in `epoch` (a flush in between may have fenced it).
    fn live(&self, tp: &TopicPartition, epoch: Epoch) -> bool {
        self.partitions.get(tp).is_some_and(|p| p.epoch == epoch)
    }

    /// Whether `r` is to be read now: its partition is ours, in the record's epoch, and the record
    /// is not behind where that partition is read from. Otherwise it was read before an
    /// assignment or a seek of its partition, or the partition is not ours: its owner reads it.
    fn accepts(&self, tp: &TopicPartition, r: &Record) -> bool {
        self.partitions
            .get(tp)
            .is_some_and(|p| p.epoch == r.epoch && p.next.is_none_or(|n| r.offset >= n))
    }

    /// Reads one record on this task: decodes it, evolves the schema for it if it brings new
    /// fields under auto_evolve, and accounts for it.
    async fn record(&mut self, tp: &TopicPartition, r: &Record) -> Result<(), LoadError> {
        if !self.accepts(tp, r) {
            return Ok(());
        }
        let raw = r.raw();
        let ignored_before = self.decoder.ignored_top_level_fields();
        let mut outcome = self.decoder.append_record(&raw);
        // A record whose fields are all new is evolution under auto_evolve, not a dead letter.
        // Only a record with a top-level field the table lacks is parsed again to look for new
        // columns (an ignored field of a nested object can never become one).
        let unmatched = matches!(&outcome, Err(e) if e.kind() == RecordErrorKind::NoMatchingFields);
        let ignored = outcome.is_ok() && self.decoder.ignored_top_level_fields() > ignored_before;
        if self.evolve_budget > 0 && (ignored || unmatched) {
            let value = r.value.as_deref().unwrap_or(b"null");
            let new = match self.decoder.row_of(value) {
                Some(row) => crate::evolve::new_columns(row, &self.decoder_schema, &|f: &str| self.decoder.column_name_of(f)),
                None => Vec::new(),
            };
            if !new.is_empty() {
                if new.len() <= self.evolve_budget {
                    // Commit what came before under the old schema, add the columns, and read
                    // this record again so its new values land too.
                    if outcome.is_ok() {
                        self.decoder.pop_last();
                    }
                    self.flush_and_wait().await?;
                    if !self.live(tp, r.epoch) {
                        // The flush was fenced: this record is read again after the seek.
                        return Ok(());
                    }
                    self.add_columns(new, tp, r.offset).await?;
                    outcome = self.decoder.append_record(&raw);
                } else {
                    // Further new fields are ignored: no record is parsed again for them.
                    self.evolve_budget = 0;
                    if !self.evolve_limit_logged {
                        self.evolve_limit_logged = true;
                        tracing::warn!(
                            fields = ?new.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
                            "auto_evolve: schema.max_new_columns reached; further new fields are ignored"
                        );
                    }
                }
            }
        }
        let Some(error) = self.settle(tp, r, outcome)? else {
            return Ok(());
        };
        // No dead-letter destination: commit everything before this record, with the ledger
        // standing exactly at it (so `floe skip` can check it is skipping this record), then stop.
        let p = self.partitions.get_mut(tp).expect("accepted above");
        p.first.get_or_insert(r.offset);
        p.next = Some(r.offset);
        self.flush_and_wait().await?;
        if !self.live(tp, r.epoch) {
            // Fenced: another process owns these offsets; this one re-reads from the ledger.
            return Ok(());
        }
        Err(LoadError::BadRecord {
            error: Box::new(error),
            topic: r.topic.to_string(),
            partition: r.partition,
            offset: r.offset,
        })
    }

    /// Accounts for a decoded record of an accepted partition: its row (already appended) or its
    /// dead letter, the dead-letter ratio, the batch's time span, and the partition's offsets.
    /// Returns the record's error when it can be neither (no dead-letter destination): then
    /// nothing is accounted and the caller stops there.
    fn settle(&mut self, tp: &TopicPartition, r: &Record, outcome: Result<(), RecordError>) -> Result<Option<RecordError>, LoadError> {
        let max_pct = self.max_ratio.unwrap_or(1.0) * 100.0;
        if let Some(valve) = &mut self.valve
            && let Some(ratio) = valve.observe(outcome.is_err())
            && let Err(last) = &outcome
        {
            let window = valve.window();
            return Err(LoadError::TooManyDeadLetters {
                failed_pct: ratio * 100.0,
                max_pct,
                window,
                last: Box::new(last.clone()),
            });
        }
        if let Some(ts) = r.timestamp {
            self.batch_oldest_ms = Some(self.batch_oldest_ms.map_or(ts, |o| o.min(ts)));
            self.batch_newest_ms = Some(self.batch_newest_ms.map_or(ts, |o| o.max(ts)));
        }
        match outcome {
            Ok(()) => {
                self.report.records += 1;
                if !self.checks.is_empty() {
                    self.row_origins.push((r.topic.clone(), r.partition, r.offset));
                    if self.checks.dead_letters() {
                        // A slice of the batch's buffer; copied only if a check sets it aside.
                        self.dead_letter_bytes += r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len());
                        self.row_records.push(r.clone());
                    }
                }
            }
            Err(error) if self.has_destination => {
                // Set aside; its offset still advances (DESIGN.md §3).
                self.report.dead_letters += 1;
                let letter = DeadLetter { record: r.detached(), error };
                self.dead_letter_bytes += letter.bytes();
                self.dead_letters.push(letter);
            }
            Err(error) => return Ok(Some(error)),
        }
        let p = self.partitions.get_mut(tp).expect("accepted before decoding");
        p.first.get_or_insert(r.offset);
        p.next = Some(r.offset + 1);
        Ok(None)
    }

    /// Reads a run of records with the pool's decoders on `commit.workers` threads, then accounts
    /// for them here in record order. A record that needs more than accounting (new fields under
    /// auto_evolve, or a bad record with no dead-letter destination) ends the parallel part: the
    /// rows decoded from it on are dropped, and it and every record after it are read one by one
    /// on this task, as [`record`](Self::record) reads them.
    async fn records_in_parallel(&mut self, records: &[Record]) -> Result<(), LoadError> {
        // Built for the decoder's schema; `follow_schema` drops it when the schema changes.
        if self.pool.is_none() {
            let mut decoders = Vec::with_capacity(self.decode_workers);
            for _ in 0..self.decode_workers {
                decoders.push(
                    decoder_for(&self.decoder_schema, &self.reshaping.decode, &self.reshaping.metadata, self.engine.table())
                        .map_err(LoadError::Config)?,
                );
            }
            tracing::debug!(
                workers = self.decode_workers,
                schema = self.decoder_schema.schema_id(),
                "runs of records decoded in parallel from here on"
            );
            self.pool = Some(Pool::new(decoders));
        }
        // Rows stay in record order (checks rely on it): the decoder's own rows come first.
        if !self.decoder.is_empty() {
            let rows = self.decoder.finish();
            self.fragment_bytes += rows.get_array_memory_size();
            self.fragments.push(rows);
        }
        let mut keys: Vec<TopicPartition> = Vec::new();
        let mut accepted: Vec<(usize, usize)> = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            if keys.last().is_none_or(|tp| tp.partition != r.partition || !same_topic(&tp.topic, &r.topic)) {
                keys.push(TopicPartition::new(&*r.topic, r.partition));
            }
            let k = keys.len() - 1;
            if self.accepts(&keys[k], r) {
                accepted.push((i, k));
            }
        }
        let raws: Vec<_> = accepted.iter().map(|&(i, _)| records[i].raw()).collect();
        let pool = self.pool.as_mut().expect("built above");
        let chunks = crate::blocking::run(|| pool.decode(&raws));
        drop(raws);
        let mut at = 0;
        let mut rest = None;
        for chunk in &chunks {
            let n = chunk.outcomes.len();
            let mut kept = n;
            for (j, outcome) in chunk.outcomes.iter().enumerate() {
                let special = match outcome {
                    Outcome::Row { new_top_level_fields } => self.evolve_budget > 0 && *new_top_level_fields,
                    Outcome::Failed(e) => {
                        !self.has_destination || (self.evolve_budget > 0 && e.kind() == RecordErrorKind::NoMatchingFields)
                    }
                };
                if special {
                    kept = j;
                    rest = Some(at + j);
                    break;
                }
                let (i, k) = accepted[at + j];
                let result = match outcome {
                    Outcome::Row { .. } => Ok(()),
                    Outcome::Failed(e) => Err(e.clone()),
                };
                let unwritable = self.settle(&keys[k], &records[i], result)?;
                debug_assert!(unwritable.is_none(), "records without a destination are read one by one");
            }
            let rows = if kept == n { chunk.rows.clone() } else { chunk.rows_before(kept) };
            if rows.num_rows() > 0 {
                self.fragment_bytes += rows.get_array_memory_size();
                self.fragments.push(rows);
            }
            if rest.is_some() {
                break;
            }
            at += n;
        }
        drop(chunks);
        if let Some(from) = rest {
            for &(i, k) in &accepted[from..] {
                self.record(&keys[k], &records[i]).await?;
            }
        }
        Ok(())
    }

    /// Hands the buffered rows, dead letters and offsets to the committer as one batch (only while
    /// it is idle). From here on, the next batch of each partition starts where this one ends.
    /// Returns whether a batch was sealed.
    async fn seal(&mut self) -> Result<bool, LoadError> {
        debug_assert!(!self.committer.busy(), "batches are sealed one at a time");
        self.last_commit = Instant::now();
        let mut gaps = Vec::new();
        let ranges: Vec<OffsetRange> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.pending())
            .filter_map(|(tp, p)| {
                let end = p.next?;
                for (needed, resumed) in &p.gaps {
                    gaps.push(format!("{tp}:{needed}->{resumed}"));
                }
                Some(OffsetRange {
                    tp: tp.clone(),
                    expected: p.expected,
                    first: p.first.or(p.expected).unwrap_or(end),
                    end,
                })
            })
            .collect();
        if ranges.is_empty() {
            return Ok(false);
        }
        let mut batch = self.take_rows();
        let mut letters = std::mem::take(&mut self.dead_letters);
        self.dead_letter_bytes = 0;
        let check_summary = self.run_checks(&mut batch, &mut letters)?;
        for r in &ranges {
            let p = self.partitions.get_mut(&r.tp).expect("ranges come from partitions");
            p.expected = Some(r.end);
            p.first = None;
            p.moved = false;
            p.gaps.clear();
        }
        let sealed = Sealed {
            ranges,
            gaps,
            batch,
            schema: self.decoder_schema.clone(),
            letters,
            check_summary,
            oldest_ms: self.batch_oldest_ms.take(),
            newest_ms: self.batch_newest_ms.take(),
            sealed_at: Instant::now(),
        };
        self.committer.send(sealed).await?;
        Ok(true)
    }

    /// Commits everything read so far and waits until it is committed (or fenced): before
    /// partitions are given up, before a schema change, before stopping.
    async fn flush_and_wait(&mut self) -> Result<(), LoadError> {
        loop {
            if self.committer.busy() {
                let done = self.committer.next().await?;
                self.on_done(done).await?;
            } else if !(self.has_pending() && self.seal().await?) {
                break;
            }
        }
        self.pace();
        Ok(())
    }

    /// The committer finished a batch.
    async fn on_done(&mut self, done: Done) -> Result<(), LoadError> {
        match done {
            Done::Committed { ranges, table } => {
                self.report.commits += 1;
                let mut offsets = Vec::new();
                for r in &ranges {
                    if let Some(p) = self.partitions.get_mut(&r.tp) {
                        p.committed = Some(r.end);
                    }
                    offsets.push((r.tp.clone(), r.end));
                }
                let _ = self.commands.send(Command::CommitOffsets(offsets));
                self.follow_schema(&table.metadata).await
            }
            Done::Fenced { ranges, violations, ledger, table } => {
                self.fenced(&ranges, violations, ledger);
                self.follow_schema(&table.metadata).await
            }
        }
    }

    /// Evaluates the data checks on the batch about to be written: reports every failing check,
    /// sets aside the rows of `dead_letter` checks (removing them from `batch`), and stops before
    /// anything is written when a `stop` check failed. Returns the `floe.checks` summary value.
    fn run_checks(&mut self, batches: &mut Vec<RecordBatch>, letters: &mut Vec<DeadLetter>) -> Result<Option<String>, LoadError> {
        let origins = std::mem::take(&mut self.row_origins);
        let records = std::mem::take(&mut self.row_records);
        if self.checks.is_empty() || batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(None);
        }
        // Checks see the batch as one: rows in record order, as `origins` lists them.
        let one = match batches.as_slice() {
            [one] => one.clone(),
            many => arrow_select::concat::concat_batches(&many[0].schema(), many)
                .expect("batches decoded with one schema"),
        };
        *batches = vec![one];
        let batch = &mut batches[0];
        let findings = self.checks.evaluate(batch, Instant::now());
        if findings.is_empty() {
            return Ok(None);
        }
        // Rows and records line up one to one (each decoded record is one row).
        let origin_of = |row: usize| {
            origins.get(row).map(|(t, p, o)| RecordOrigin { topic: t.to_string(), partition: *p, offset: *o })
        };
        let mut stops = Vec::new();
        let mut set_aside = BTreeSet::new();
        for f in &findings {
            let example = match f.rows.first().and_then(|&r| origin_of(r)) {
                Some(o) => format!("column {:?}: {} ({o}); {} of {} rows of this batch fail", f.column, f.what, f.count, batch.num_rows()),
                None => format!("column {:?}: {}", f.column, f.what),
            };
            telemetry::check_failed(&self.live, &self.table_label, &f.name, f.action.as_str(), f.count, &example);
            match f.action {
                CheckAction::Warn => {}
                CheckAction::Stop => stops.push(format!("data check {:?} ({}) failed: {example}", f.name, f.rule)),
                CheckAction::DeadLetter => {
                    let col = batch.column_by_name(&f.column).cloned();
                    for &row in &f.rows {
                        let (Some(record), Some(origin), Some(col)) = (records.get(row), origin_of(row), &col) else { continue };
                        if !set_aside.insert(row) {
                            continue;
                        }
                        let message = format!(
                            "value {} fails data check {:?} ({})",
                            crate::checks::value_at(col, row),
                            f.name,
                            f.rule
                        );
                        letters.push(DeadLetter { record: record.detached(), error: RecordError::check_failed(&f.column, message, origin) });
                    }
                }
            }
        }
        if !stops.is_empty() {
            self.checks.undo_last();
            return Err(LoadError::CheckFailed(stops.join("\n")));
        }
        if !set_aside.is_empty() {
            letters.sort_by(|a, b| {
                let key = |l: &DeadLetter| (l.record.topic.clone(), l.record.partition, l.record.offset);
                key(a).cmp(&key(b))
            });
            *batch = crate::checks::without_rows(batch, &set_aside).expect("a mask of the batch's own length");
            self.report.dead_letters += set_aside.len() as u64;
        }
        Ok(Some(crate::checks::summary(&findings)))
    }

    /// Another writer committed (some of) the offsets of the batch in flight (`fenced`, whose files
    /// the committer deleted): drop it and everything read after it, and re-read every partition
    /// from the ledger under a new epoch, so that nothing read before the seek is used.
    fn fenced(&mut self, fenced: &[OffsetRange], violations: Vec<crate::ledger::FenceViolation>, ledger: Ledger) {
        self.report.fenced += 1;
        let described: Vec<String> =
            violations.iter().map(|v| format!("{} expected {:?} found {:?}", v.tp, v.expected, v.found)).collect();
        telemetry::batch_fenced(&self.live, &self.table_label, &described);
        // The decoded rows and the dead letters were read after the dropped batch.
        let _ = self.take_rows();
        self.dead_letters.clear();
        self.dead_letter_bytes = 0;
        self.row_origins.clear();
        self.row_records.clear();
        self.batch_oldest_ms = None;
        self.batch_newest_ms = None;
        let mut seeks = Vec::new();
        let tps: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
        for tp in tps {
            let epoch = self.new_epoch();
            let p = self.partitions.get_mut(&tp).expect("listed above");
            // Where this partition's dropped records began: the ledger if it knows the partition
            // now, else where the dropped batch (or, if it had none of this partition, the one
            // being read) started reading it.
            let dropped_from = match fenced.iter().find(|r| r.tp == tp) {
                Some(r) => r.expected.or(Some(r.first)),
                None => p.expected.or(p.first),
            };
            let resume = ledger.get(&tp).or(dropped_from);
            *p = PartitionState::new(epoch, ledger.get(&tp));
            if let Some(offset) = resume {
                p.next = Some(offset);
                seeks.push((tp.clone(), offset, epoch));
            }
        }
        let _ = self.commands.send(Command::Seek(seeks));
    }

    /// auto_evolve: adds the columns, each its own schema commit, then reads with the new schema.
    async fn add_columns(
        &mut self,
        columns: Vec<crate::evolve::NewColumn>,
        tp: &TopicPartition,
        offset: i64,
    ) -> Result<(), LoadError> {
        for c in columns {
            let mut alter = crate::alter::Alter::new(crate::ddl::AlterAction::AddColumn {
                if_not_exists: true,
                path: vec![c.name.clone()],
                data_type: c.data_type.clone(),
                not_null: false,
                comment: Some(format!("added by floe auto_evolve (first seen at {tp} offset {offset})")),
            });
            match retrying!("adding a column", self.engine.commit(&mut alter)) {
                Ok(message) => {
                    self.evolve_budget = self.evolve_budget.saturating_sub(1);
                    tracing::info!(column = %c.name, data_type = %c.data_type, partition = %tp, offset, "auto_evolve: {message}");
                }
                Err(refused) => tracing::warn!(column = %c.name, "auto_evolve: not added: {refused}"),
            }
        }
        let table = retrying!("loading the table", self.engine.load());
        self.follow_schema(&table.metadata).await
    }

    /// Picks up a schema change made by anyone (DESIGN.md §5): rows read so far were committed
    /// under the schema they were read with; from now on records are read with the new one.
    ///
    /// Called only while the committer is idle: rows already decoded are sealed first, so they
    /// are committed under the schema they were read with.
    async fn follow_schema(&mut self, metadata: &iceberg::spec::TableMetadata) -> Result<(), LoadError> {
        let current = metadata.current_schema();
        if current.schema_id() == self.decoder_schema.schema_id() && current.as_ref() == self.decoder_schema.as_ref() {
            return Ok(());
        }
        if self.has_pending() {
            self.seal().await?;
        }
        self.decoder = decoder_for(current, &self.reshaping.decode, &self.reshaping.metadata, self.engine.table())
            .map_err(|e| LoadError::Config(format!("the table's new schema cannot be read into: {e}")))?;
        self.pool = None;
        tracing::info!(
            from = self.decoder_schema.schema_id(),
            to = current.schema_id(),
            "table schema changed; reading records with the new schema from now on"
        );
        self.decoder_schema = current.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_in(dir: &std::path::Path) -> Config {
        let mut c = Config::defaults();
        c.data_dir = dir.to_owned();
        c
    }

    #[test]
    fn static_membership_ids_are_per_slot_and_come_back_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let c = config_in(dir.path());
        let a = Membership::claim(&c, "pipe/line").unwrap();
        let b = Membership::claim(&c, "pipe/line").unwrap();
        assert!(a.derived && b.derived);
        assert_ne!(a.instance_id, b.instance_id, "two live processes must not share an id");
        assert!(a.instance_id.starts_with("floe-pipe_line-") && a.instance_id.ends_with("-0"), "{}", a.instance_id);
        let first = a.instance_id.clone();
        drop(a);
        // A process restarted after the first one died takes its place in the group.
        let again = Membership::claim(&c, "pipe/line").unwrap();
        assert_eq!(again.instance_id, first);
        // Another data directory (another deployment on this host) gets other ids.
        let other = tempfile::tempdir().unwrap();
        let elsewhere = Membership::claim(&config_in(other.path()), "pipe/line").unwrap();
        assert_ne!(elsewhere.instance_id, first);
    }

    #[test]
    fn a_configured_instance_id_is_used_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config_in(dir.path());
        c.kafka.set("group.instance.id", "mine");
        let m = Membership::claim(&c, "p").unwrap();
        assert_eq!(m.instance_id, "mine");
        assert!(!m.derived);
    }

    #[test]
    fn data_loss_messages_name_everything() {
        let below = DataLoss { pipeline: "p".into(), topic: "t".into(), partition: 3, needed: 100, low: 150, high: 200 };
        let m = data_loss_message(&below);
        for needle in ["topic t partition 3", "offset 100", "150 to 200", "offsets 100..149 were deleted", "on_data_loss = \"earliest\"", "ledger is unchanged"] {
            assert!(m.contains(needle), "{needle:?} missing: {m}");
        }
        let beyond = DataLoss { high: 20, low: 0, ..below };
        assert!(data_loss_message(&beyond).contains("recreated"));
    }
}
