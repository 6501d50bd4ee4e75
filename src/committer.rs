//! The committer: the second half of the loader. It takes sealed batches from the reader one at a
//! time and, while the reader goes on reading and decoding the next one, checks the fence, encodes
//! Parquet (off the async runtime, one thread per table partition up to the configured workers),
//! writes the batch's dead letters and commits rows and ledger in one snapshot.
//!
//! Order is the reader's business: it seals a batch only when the committer is idle, so batches
//! commit strictly in order and each one's expected start is the end of the one before (DESIGN.md
//! §7). A fenced batch comes back as [`Done::Fenced`], and the reader drops what it read after it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::catalog::LoadedTable;
use crate::commit::{Append, AppendOutcome, CommitEngine};
use crate::deadletter::{DeadLetter, KafkaDeadLetters, TableDeadLetters};
use crate::ledger::{FenceViolation, Ledger, OffsetRange};
use crate::loader::LoadError;
use crate::retry::{Backoff, retrying};
use crate::telemetry::{self, Live};
use crate::write::StagedFiles;

/// A batch the reader is done with: its rows, its dead letters, and the offsets it covers.
pub(crate) struct Sealed {
    pub ranges: Vec<OffsetRange>,
    /// `floe.gaps` entries (data loss the batch records).
    pub gaps: Vec<String>,
    pub batch: Vec<RecordBatch>,
    /// The schema the rows were read with.
    pub schema: iceberg::spec::SchemaRef,
    pub letters: Vec<DeadLetter>,
    pub check_summary: Option<String>,
    pub oldest_ms: Option<i64>,
    pub newest_ms: Option<i64>,
    /// When the reader sealed it (commit latency is counted from here).
    pub sealed_at: Instant,
}

impl Sealed {
    /// Memory the batch holds while it waits for its commit.
    pub fn bytes(&self) -> usize {
        self.batch.iter().map(RecordBatch::get_array_memory_size).sum::<usize>() + self.letters.iter().map(DeadLetter::bytes).sum::<usize>()
    }
}

/// What became of a sealed batch.
pub(crate) enum Done {
    /// Rows and ledger are in the table; `table` is the metadata the commit made (the reader
    /// follows its schema).
    Committed { ranges: Vec<OffsetRange>, table: Box<LoadedTable> },
    /// Another writer owns (some of) the batch's offsets: nothing of it was committed and its
    /// files are deleted. `metadata` is the table as the fence was found on.
    Fenced {
        ranges: Vec<OffsetRange>,
        violations: Vec<FenceViolation>,
        ledger: Ledger,
        table: Box<LoadedTable>,
    },
}

/// What the committer needs, all of it its own.
pub(crate) struct Committer {
    pub engine: CommitEngine,
    pub pipeline: String,
    pub live: Arc<Live>,
    pub table_label: String,
    pub target_file_size: u64,
    pub workers: usize,
    pub dlq_topic: Option<KafkaDeadLetters>,
    pub dlq_table: Option<TableDeadLetters>,
}

/// The committer's end of the pipeline, owned by the reader.
pub(crate) struct Handle {
    batches: mpsc::Sender<Sealed>,
    results: mpsc::Receiver<Result<Done, LoadError>>,
    /// Memory of the batch in flight (None: the committer is idle).
    in_flight: Option<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Committer {
    /// Starts the committer task.
    pub fn spawn(self) -> Handle {
        // One batch in flight at most: while it commits, the next one accumulates in the reader,
        // so a slow commit is followed by one larger commit, not by a queue.
        let (batches, mut inbox) = mpsc::channel::<Sealed>(1);
        let (outcomes, results) = mpsc::channel(1);
        let mut committer = self;
        // The task logs within the reader's span (with several pipelines: which one).
        let task = tokio::spawn(
            async move {
                while let Some(sealed) = inbox.recv().await {
                    let result = committer.commit(sealed).await;
                    let failed = result.is_err();
                    if outcomes.send(result).await.is_err() || failed {
                        break;
                    }
                }
            }
            .in_current_span(),
        );
        Handle { batches, results, in_flight: None, task }
    }

    /// Checks the fence, writes the files and dead letters, and commits, retrying what fails
    /// transiently for as long as it takes.
    async fn commit(&mut self, s: Sealed) -> Result<Done, LoadError> {
        let Sealed { ranges, gaps, mut batch, schema, letters, check_summary, oldest_ms, newest_ms, sealed_at } = s;
        let rows: usize = batch.iter().map(RecordBatch::num_rows).sum();
        let table = retrying!("loading the table", self.engine.load());
        // The fence, checked before anything is written for this batch: a writer that lost its
        // partitions writes neither data files nor dead letters (DESIGN.md §3). The commit checks
        // it again on the exact base it swaps.
        let ledger = self.ledger_of(&table)?;
        let violations = ledger.check(&ranges);
        if !violations.is_empty() {
            return Ok(Done::Fenced { ranges, violations, ledger, table: Box::new(table) });
        }
        let mut staged = if rows > 0 {
            retrying!("writing data files", self.write(&table, &schema, &mut batch))
        } else {
            StagedFiles { files: Vec::new(), written_at: Instant::now() }
        };
        let spec_id = table.metadata.default_partition_spec_id();
        let mut append = Append::new(self.pipeline.clone(), ranges.clone(), staged.files.clone(), spec_id);
        if !gaps.is_empty() {
            append.summary.insert(crate::ledger::SUMMARY_GAPS.to_owned(), gaps.join(","));
        }
        if let Some(text) = check_summary {
            append.summary.insert(crate::ledger::SUMMARY_CHECKS.to_owned(), text);
        }
        let mut letter_kinds: BTreeMap<String, u64> = BTreeMap::new();
        for l in &letters {
            *letter_kinds.entry(l.error.kind().as_str().to_owned()).or_default() += 1;
        }
        if !letters.is_empty() {
            let text: Vec<String> = letter_kinds.iter().map(|(k, n)| format!("{k}={n}")).collect();
            append.summary.insert(crate::ledger::SUMMARY_DEAD_LETTERS.to_owned(), text.join(","));
            // Dead letters are written before the commit that moves the ledger past them.
            if let Some(dlq) = &self.dlq_table {
                let go_on = retrying!("writing dead letters to the table", dlq.write(&letters, &ranges));
                if !go_on {
                    // The dead-letter table's own fence says another writer owns these offsets.
                    return self.fenced_on_reload(ranges, staged.paths()).await;
                }
            }
            if let Some(dlq) = &self.dlq_topic {
                let engine = &self.engine;
                let pipeline = &self.pipeline;
                let sent = retrying!(
                    "writing dead letters to the topic",
                    dlq.write(&letters, &ranges, table.metadata.properties(), async || match engine.load().await {
                        Ok(now) => Ledger::from_properties(now.metadata.properties(), pipeline)
                            .is_ok_and(|l| l.check(&ranges).is_empty()),
                        // Unknown: go on; the commit checks the fence on its exact base anyway.
                        Err(_) => true,
                    })
                );
                match sent {
                    Some(positions) => append.properties.extend(positions),
                    None => return self.fenced_on_reload(ranges, staged.paths()).await,
                }
            }
        }
        // The first attempt commits on the metadata the fence was just checked on; a conflict
        // reloads. Files staged longer than write::MAX_STAGED_AGE (a long catalog outage) are
        // written again before the next attempt: remove-orphans may delete unreferenced files
        // older than 4x that (DESIGN.md §4), and a commit must never land pointing at deleted files.
        let mut base = Some(table);
        let mut superseded: Vec<String> = Vec::new();
        let mut backoff = Backoff::new("committing");
        let (outcome, made) = loop {
            if !staged.files.is_empty() && staged.is_stale() {
                let now = retrying!("loading the table", self.engine.load());
                let fresh = retrying!("writing data files again", self.write(&now, &schema, &mut batch));
                tracing::warn!(
                    seconds = staged.age().as_secs(),
                    files = fresh.files.len(),
                    "the commit has been retried for longer than data files may stay staged; wrote them again"
                );
                superseded.extend(staged.paths());
                append.files = fresh.files.clone();
                append.spec_id = now.metadata.default_partition_spec_id();
                staged = fresh;
                base = Some(now);
            }
            match self.engine.commit_on(&mut append, base.take()).await {
                Ok(o) => {
                    backoff.recovered();
                    break o;
                }
                Err(e) if e.is_transient() => {
                    telemetry::commit_failing(&self.live, &self.table_label, &e);
                    backoff.wait(&e).await
                }
                Err(e) => return Err(e.into()),
            }
        };
        let file_io = self.engine.catalog().file_io();
        match &outcome {
            // Recognised as an earlier attempt of this batch that landed: which file set it used is
            // not known here, so nothing is deleted (remove-orphans collects the other set).
            AppendOutcome::Committed { attempts: 0, .. } => {}
            _ => crate::write::delete_files(file_io, superseded).await,
        }
        match outcome {
            AppendOutcome::Committed { snapshot_id, attempts, .. } => {
                telemetry::batch_committed(
                    &self.live,
                    &telemetry::Committed {
                        table: &self.table_label,
                        rows: rows as u64,
                        files: staged.files.len(),
                        bytes: staged.files.iter().map(|f| f.file_size_in_bytes()).sum(),
                        snapshot_id,
                        schema_id: schema.schema_id(),
                        attempts,
                        duration: sealed_at.elapsed(),
                        oldest_ms,
                        newest_ms,
                        dead_letters: &letter_kinds,
                    },
                );
                let table = match made {
                    Some(t) => t,
                    None => Box::new(retrying!("loading the table", self.engine.load())),
                };
                Ok(Done::Committed { ranges, table })
            }
            AppendOutcome::Fenced { violations, ledger } => {
                crate::write::delete_files(file_io, staged.paths()).await;
                let table = Box::new(retrying!("loading the table", self.engine.load()));
                Ok(Done::Fenced { ranges, violations, ledger, table })
            }
        }
    }

    /// Encodes and writes the batch's data files. Parquet encoding is CPU work: it runs on
    /// threads of its own (one per table partition, at most `workers` at once), not on the
    /// async runtime's.
    async fn write(
        &self,
        table: &LoadedTable,
        schema: &iceberg::spec::SchemaRef,
        batch: &mut Vec<RecordBatch>,
    ) -> Result<StagedFiles, crate::write::WriteError> {
        crate::write::write_staged(
            self.engine.catalog().file_io(),
            &table.metadata,
            schema,
            batch,
            self.target_file_size,
            self.workers,
        )
        .await
    }

    /// A dead-letter destination reported that another writer owns the batch's offsets: reload
    /// the table and report the batch as fenced on what it says now.
    async fn fenced_on_reload(&mut self, ranges: Vec<OffsetRange>, written: Vec<String>) -> Result<Done, LoadError> {
        crate::write::delete_files(self.engine.catalog().file_io(), written).await;
        let table = retrying!("loading the table", self.engine.load());
        let ledger = self.ledger_of(&table)?;
        let violations = ledger.check(&ranges);
        Ok(Done::Fenced { ranges, violations, ledger, table: Box::new(table) })
    }

    fn ledger_of(&self, table: &LoadedTable) -> Result<Ledger, LoadError> {
        crate::loader::ledger_of(table, &self.pipeline)
    }
}

impl Handle {
    /// Whether a batch is being committed.
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Memory held by the batch in flight.
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight.unwrap_or(0)
    }

    /// Hands a batch over. Only called while idle, so it never waits.
    pub async fn send(&mut self, sealed: Sealed) -> Result<(), LoadError> {
        debug_assert!(self.in_flight.is_none(), "one batch in flight at most");
        self.in_flight = Some(sealed.bytes());
        self.batches.send(sealed).await.map_err(|_| LoadError::CommitterGone)
    }

    /// The outcome of the batch in flight (cancel-safe: use it in `select!`). Never resolves while
    /// idle.
    pub async fn next(&mut self) -> Result<Done, LoadError> {
        if self.in_flight.is_none() {
            return std::future::pending().await;
        }
        let result = self.results.recv().await.unwrap_or(Err(LoadError::CommitterGone));
        self.in_flight = None;
        result
    }

    /// Stops the task once it is idle.
    pub async fn stop(self) {
        drop(self.batches);
        let _ = self.task.await;
    }
}
