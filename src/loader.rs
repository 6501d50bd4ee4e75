//! The loader: `floe run`. One task owns all pipeline state (partition positions, the decoder's
//! buffered rows) and is the only one that commits; the consumer thread (`source`) feeds it records
//! and rebalance events in order.
//!
//! Exactly-once rests on three things kept here:
//! - a partition's batch covers [what the ledger said, next offset) and commits only if the ledger
//!   still says that (the fence, checked by the commit engine on the exact base metadata);
//! - the ledger advances in the same commit as the rows;
//! - after a fenced commit, every buffered record is dropped and each partition re-reads from the
//!   ledger; records already in flight from before the seek are ignored until the seek is confirmed.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::catalog::{Catalog, CatalogError};
use crate::commit::{Append, AppendOutcome, CommitEngine, CommitError};
use crate::config::{Config, StartPosition, TableName};
use crate::deadletter::{DeadLetter, KafkaDeadLetters, RatioValve, TableDeadLetters};
use crate::decode::{DecodeOptions, Decoder, Origin, RecordError};
use crate::ledger::{Ledger, OffsetRange, TopicPartition};
use crate::source::{self, Command, Event, Record, StartAt};

/// Why the loader stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaError),
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
    #[error("the Kafka consumer thread stopped unexpectedly")]
    ConsumerGone,
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
    /// What the ledger said when this batch started reading (None: not in the ledger).
    expected: Option<i64>,
    /// First offset buffered in the current batch.
    first: Option<i64>,
    /// Next offset to read after the buffered records.
    next: Option<i64>,
    /// A seek was requested; records are ignored until it is confirmed.
    awaiting_seek: bool,
}

impl PartitionState {
    fn new(expected: Option<i64>) -> Self {
        PartitionState {
            expected,
            first: None,
            next: expected,
            awaiting_seek: false,
        }
    }
}

/// Everything the loader needs, resolved from the configuration before anything starts.
pub struct Loader {
    config: Config,
    pipeline: String,
    engine: CommitEngine,
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
        if config.source.topics.is_empty() {
            return Err(LoadError::Config(
                "no topics: set `topics = [\"...\"]` under [source] in the config file".into(),
            ));
        }
        let table: TableName = config.table_name().map_err(LoadError::Config)?;
        let catalog = Catalog::open(&config).await?;
        // Fails with "table ... does not exist ... create it with `floe table create`".
        let loaded = catalog.load(&table).await?;
        // A table floe cannot append to (format v1, v3) is refused now, before any file is written.
        crate::table::check_writable(&loaded.metadata)
            .map_err(|message| CatalogError::Unsupported { table: table.to_string(), message })?;
        crate::kafka::check_reachable(&config.kafka, Duration::from_secs(10)).await?;
        Ok(Loader {
            engine: CommitEngine::new(catalog, table),
            pipeline,
            config,
        })
    }

    /// Runs until `shutdown` resolves (then commits what is buffered and returns) or a permanent
    /// error occurs.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<RunReport, LoadError> {
        let (tx, mut events) = mpsc::channel(16);
        let (commands, consumer) = source::spawn(
            crate::kafka::client_config(&self.config.kafka),
            self.config.source.topics.clone(),
            tx,
        )
        .map_err(|e| LoadError::Config(format!("creating the Kafka consumer: {e}")))?;
        let table = self.engine.load().await?;
        let decoder = Decoder::new(table.metadata.current_schema(), DecodeOptions::default())
            .map_err(|e| LoadError::Config(e.to_string()))?;
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
        let mut state = State {
            engine: self.engine,
            pipeline: self.pipeline,
            start: self.config.source.start,
            interval: self.config.commit.interval,
            max_buffered: self.config.commit.max_buffered_bytes as usize,
            target_file_size: self.config.commit.target_file_size,
            decoder,
            decoder_schema: table.metadata.current_schema().clone(),
            partitions: BTreeMap::new(),
            commands,
            report: RunReport::default(),
            last_commit: Instant::now(),
            kafka_trouble: None,
            dead_letters: Vec::new(),
            dlq_topic,
            dlq_table,
            valve,
            max_ratio: dl.max_ratio,
            evolve_budget: if self.config.schema.auto_evolve { self.config.schema.max_new_columns } else { 0 },
            evolve_limit_logged: false,
        };
        tracing::info!(pipeline = %state.pipeline, table = %state.engine.table(), topics = ?self.config.source.topics, "loader started");
        let result = state.main_loop(&mut events, shutdown).await;
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
        match &result {
            Ok(r) => tracing::info!(records = r.records, commits = r.commits, "loader stopped"),
            Err(e) => tracing::error!(error = %e, "loader stopped on an error"),
        }
        result
    }
}

struct State {
    engine: CommitEngine,
    pipeline: String,
    start: StartPosition,
    interval: Duration,
    max_buffered: usize,
    target_file_size: u64,
    decoder: Decoder,
    /// The schema the decoder reads with (the table's, as of the last commit).
    decoder_schema: iceberg::spec::SchemaRef,
    partitions: BTreeMap<TopicPartition, PartitionState>,
    commands: std::sync::mpsc::Sender<Command>,
    report: RunReport,
    last_commit: Instant,
    /// When Kafka started failing (logged once per episode).
    kafka_trouble: Option<Instant>,
    /// Records of the current batch that can never be written.
    dead_letters: Vec<DeadLetter>,
    dlq_topic: Option<KafkaDeadLetters>,
    dlq_table: Option<TableDeadLetters>,
    valve: Option<RatioValve>,
    max_ratio: Option<f64>,
    /// Columns auto_evolve may still add (0: off or used up).
    evolve_budget: usize,
    evolve_limit_logged: bool,
}

impl State {
    async fn main_loop(
        &mut self,
        events: &mut mpsc::Receiver<Event>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunReport, LoadError> {
        tokio::pin!(shutdown);
        loop {
            let deadline = tokio::time::Instant::from_std(self.last_commit + self.interval);
            let pending = self.has_pending();
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    tracing::info!("shutdown requested: committing what is buffered");
                    self.flush().await?;
                    return Ok(self.report.clone());
                }
                // The timer fires even when no record arrives (kafka-delta-ingest #74).
                () = tokio::time::sleep_until(deadline), if pending => {
                    self.flush().await?;
                }
                () = tokio::time::sleep_until(deadline), if !pending => {
                    // Idle: still notice schema changes, so the next records are read right.
                    self.last_commit = Instant::now();
                    let table = retrying!("loading the table", self.engine.load());
                    self.follow_schema(&table.metadata)?;
                }
                ev = events.recv() => {
                    let Some(ev) = ev else { return Err(LoadError::ConsumerGone) };
                    self.handle(ev).await?;
                    if self.decoder.buffered_bytes() >= self.max_buffered {
                        self.flush().await?;
                    }
                }
            }
        }
    }

    fn has_pending(&self) -> bool {
        !self.decoder.is_empty() || self.partitions.values().any(|p| p.first.is_some())
    }

    async fn handle(&mut self, ev: Event) -> Result<(), LoadError> {
        match ev {
            Event::Records(records) => {
                if self.kafka_trouble.take().is_some() {
                    tracing::info!("Kafka is answering again");
                }
                for r in records {
                    self.record(r).await?;
                }
            }
            Event::Assigned { partitions, reply } => {
                let starts = self.assign(partitions).await?;
                let _ = reply.send(starts);
            }
            Event::Revoked { partitions, done } => {
                // Commit what we hold before the partitions go to someone else.
                self.flush().await?;
                for tp in &partitions {
                    self.partitions.remove(tp);
                }
                tracing::info!(partitions = ?partitions.iter().map(ToString::to_string).collect::<Vec<_>>(), "partitions revoked");
                let _ = done.send(());
            }
            Event::Seeked(tps) => {
                for tp in tps {
                    if let Some(p) = self.partitions.get_mut(&tp) {
                        p.awaiting_seek = false;
                    }
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
    /// offset, else the configured start.
    async fn assign(
        &mut self,
        partitions: Vec<(TopicPartition, Option<i64>)>,
    ) -> Result<Vec<(TopicPartition, StartAt)>, LoadError> {
        let ledger = self.ledger().await?;
        let mut starts = Vec::new();
        for (tp, committed) in partitions {
            let (expected, start) = match (ledger.get(&tp), committed) {
                (Some(o), _) => (Some(o), StartAt::Offset(o)),
                (None, Some(c)) => (None, StartAt::Offset(c)),
                (None, None) => (
                    None,
                    match self.start {
                        StartPosition::Earliest => StartAt::Beginning,
                        StartPosition::Latest => StartAt::End,
                    },
                ),
            };
            tracing::info!(partition = %tp, ?start, from_ledger = expected.is_some(), "partition assigned");
            let mut state = PartitionState::new(expected);
            if expected.is_none() {
                // Unknown numeric start: the first record read sets it.
                state.next = None;
            }
            self.partitions.insert(tp.clone(), state);
            starts.push((tp, start));
        }
        Ok(starts)
    }

    async fn ledger(&self) -> Result<Ledger, LoadError> {
        let table = retrying!("loading the table", self.engine.load());
        Ledger::from_properties(table.metadata.properties(), &self.pipeline)
            .map_err(|message| LoadError::Commit(CommitError::Invalid { table: table.name.to_string(), message }))
    }

    async fn record(&mut self, r: Record) -> Result<(), LoadError> {
        let tp = TopicPartition::new(&*r.topic, r.partition);
        let Some(p) = self.partitions.get_mut(&tp) else {
            // Not ours (revoked, or from before an assignment): it will be read by its owner.
            return Ok(());
        };
        if p.awaiting_seek || p.next.is_some_and(|n| r.offset < n) {
            return Ok(());
        }
        let origin = Origin {
            topic: &r.topic,
            partition: r.partition,
            offset: r.offset,
        };
        let value = r.value.as_deref().unwrap_or(b"null");
        let ignored_before = self.decoder.ignored_fields();
        let mut outcome = self.decoder.append(value, &origin);
        if outcome.is_ok() && self.evolve_budget > 0 && self.decoder.ignored_fields() > ignored_before {
            let new = crate::evolve::new_columns(value, &self.decoder_schema);
            if !new.is_empty() {
                if new.len() <= self.evolve_budget {
                    // Commit what came before under the old schema, add the columns, and read
                    // this record again so its new values land too.
                    self.decoder.pop_last();
                    self.flush().await?;
                    self.add_columns(new, &tp, r.offset).await?;
                    outcome = self.decoder.append(value, &origin);
                } else if !self.evolve_limit_logged {
                    self.evolve_limit_logged = true;
                    tracing::warn!(
                        fields = ?new.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
                        "auto_evolve: schema.max_new_columns reached; further new fields are ignored"
                    );
                }
            }
        }
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
        match outcome {
            Ok(()) => self.report.records += 1,
            Err(error) if self.dlq_topic.is_some() || self.dlq_table.is_some() => {
                // Set aside; its offset still advances (DESIGN.md §3).
                self.report.dead_letters += 1;
                self.dead_letters.push(DeadLetter { record: r.clone(), error });
            }
            Err(error) => {
                // No dead-letter destination: commit everything before this record, with the
                // ledger standing exactly at it (so `floe skip` can check it is skipping this
                // record), then stop.
                let p = self.partitions.get_mut(&tp).expect("checked above");
                p.first.get_or_insert(r.offset);
                p.next = Some(r.offset);
                self.flush().await?;
                return Err(LoadError::BadRecord {
                    error: Box::new(error),
                    topic: r.topic.to_string(),
                    partition: r.partition,
                    offset: r.offset,
                });
            }
        }
        let p = self.partitions.get_mut(&tp).expect("checked above");
        p.first.get_or_insert(r.offset);
        p.next = Some(r.offset + 1);
        Ok(())
    }


    /// Commits the buffered rows and the ledger in one snapshot. Retries transient failures with
    /// backoff (logged once per episode); on a fence, drops the batch and re-reads from the ledger.
    async fn flush(&mut self) -> Result<(), LoadError> {
        self.last_commit = Instant::now();
        let ranges: Vec<OffsetRange> = self
            .partitions
            .iter()
            .filter_map(|(tp, p)| {
                Some(OffsetRange {
                    tp: tp.clone(),
                    expected: p.expected,
                    first: p.first?,
                    end: p.next?,
                })
            })
            .collect();
        if ranges.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let rows = self.decoder.len();
        let batch = self.decoder.finish();
        let table = retrying!("loading the table", self.engine.load());
        let files = if batch.num_rows() > 0 {
            let file_io = self.engine.catalog().file_io();
            retrying!(
                "writing data files",
                crate::write::write_data_files(
                    file_io,
                    &table.metadata,
                    &self.decoder_schema,
                    vec![batch.clone()],
                    self.target_file_size
                )
            )
        } else {
            Vec::new()
        };
        let written: Vec<String> = files.iter().map(|f| f.file_path().to_owned()).collect();
        let spec_id = table.metadata.default_partition_spec_id();
        let mut append = Append::new(self.pipeline.clone(), ranges.clone(), files, spec_id);
        // Dead letters are written before the commit that moves the ledger past them.
        let letters = std::mem::take(&mut self.dead_letters);
        if !letters.is_empty() {
            if let Some(dlq) = &self.dlq_table {
                retrying!("writing dead letters to the table", dlq.write(&letters, &ranges));
            }
            if let Some(dlq) = &self.dlq_topic {
                let key = dlq.positions_key();
                let since = crate::deadletter::positions_from(table.metadata.properties(), &key);
                let positions = retrying!("writing dead letters to the topic", dlq.write(&letters, &since));
                append
                    .properties
                    .insert(key, serde_json::to_string(&positions).expect("positions serialize"));
            }
        }
        let outcome = retrying!("committing", self.engine.commit(&mut append));
        match outcome {
            AppendOutcome::Committed { snapshot_id, attempts, .. } => {
                self.report.commits += 1;
                let mut offsets = Vec::new();
                for r in &ranges {
                    if let Some(p) = self.partitions.get_mut(&r.tp) {
                        p.expected = Some(r.end);
                        p.first = None;
                    }
                    offsets.push((r.tp.clone(), r.end));
                }
                let _ = self.commands.send(Command::CommitOffsets(offsets));
                tracing::info!(
                    rows,
                    files = written.len(),
                    snapshot = ?snapshot_id,
                    attempts,
                    millis = started.elapsed().as_millis() as u64,
                    "batch committed"
                );
            }
            AppendOutcome::Fenced { violations, ledger } => {
                self.report.fenced += 1;
                tracing::warn!(
                    violations = ?violations.iter().map(|v| format!("{} expected {:?} found {:?}", v.tp, v.expected, v.found)).collect::<Vec<_>>(),
                    "batch fenced: another writer committed these offsets; dropping it and re-reading from the table's ledger"
                );
                crate::write::delete_files(self.engine.catalog().file_io(), written).await;
                let mut seeks = Vec::new();
                for (tp, p) in self.partitions.iter_mut() {
                    // Where this partition's dropped records began: the ledger if it knows the
                    // partition now, else where this batch started reading it.
                    let resume = ledger.get(tp).or(p.expected).or(p.first);
                    *p = PartitionState::new(ledger.get(tp));
                    if let Some(offset) = resume {
                        p.next = Some(offset);
                        p.awaiting_seek = true;
                        seeks.push((tp.clone(), offset));
                    }
                }
                let _ = self.commands.send(Command::Seek(seeks));
            }
        }
        self.follow_schema(&table.metadata)?;
        Ok(())
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
        self.follow_schema(&table.metadata)
    }

    /// Picks up a schema change made by anyone (DESIGN.md §5): rows read so far were committed
    /// under the schema they were read with; from now on records are read with the new one.
    fn follow_schema(&mut self, metadata: &iceberg::spec::TableMetadata) -> Result<(), LoadError> {
        let current = metadata.current_schema();
        if current.schema_id() == self.decoder_schema.schema_id() && current.as_ref() == self.decoder_schema.as_ref() {
            return Ok(());
        }
        self.decoder = Decoder::new(current, DecodeOptions::default())
            .map_err(|e| LoadError::Config(format!("the table's new schema cannot be read into: {e}")))?;
        tracing::info!(
            from = self.decoder_schema.schema_id(),
            to = current.schema_id(),
            "table schema changed; reading records with the new schema from now on"
        );
        self.decoder_schema = current.clone();
        Ok(())
    }
}

/// Backoff for transient failures: 100 ms doubling to 30 s, forever (a catalog or storage outage
/// must not lose data, and the fence keeps a late commit safe). The first failure of an episode is
/// logged at WARN, the recovery at INFO.
struct Backoff {
    what: &'static str,
    delay: Duration,
    failing_since: Option<Instant>,
}

impl Backoff {
    fn new(what: &'static str) -> Self {
        Backoff {
            what,
            delay: Duration::from_millis(100),
            failing_since: None,
        }
    }

    async fn wait(&mut self, error: &dyn std::fmt::Display) {
        if self.failing_since.is_none() {
            self.failing_since = Some(Instant::now());
            tracing::warn!(what = self.what, error = %error, "transient failure; retrying with backoff");
        } else {
            tracing::debug!(what = self.what, error = %error, "still failing");
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(30));
    }

    fn recovered(&self) {
        if let Some(since) = self.failing_since {
            tracing::info!(what = self.what, seconds = since.elapsed().as_secs(), "recovered");
        }
    }
}

/// Retries `f` while it fails transiently.
macro_rules! retrying {
    ($what:expr, $call:expr) => {{
        let mut backoff = Backoff::new($what);
        loop {
            match $call.await {
                Ok(v) => {
                    backoff.recovered();
                    break v;
                }
                Err(e) if e.is_transient() => backoff.wait(&e).await,
                Err(e) => return Err(e.into()),
            }
        }
    }};
}
use retrying;
