//! floe's commit engine: every change to a table goes through one loop (DESIGN.md §2, §4):
//!
//! load the current metadata -> check the operation against exactly that metadata -> write the
//! new manifests and metadata -> swap the catalog pointer if it still points at what was loaded ->
//! on conflict, delete what was written, reload and check again.
//!
//! The check runs on the same metadata the swap is conditioned on, so a stale writer (a zombie
//! after a rebalance, a restarted process) can never commit: its fence check fails on the metadata
//! that the swap would have to replace. Operations plug in through [`Operation`]; appends with the
//! pipeline ledger are the first, replace (compaction), delete (retention) and schema changes use
//! the same loop.
//!
//! Every operation that makes a snapshot builds it with [`SnapshotWriter`]: the one place that
//! reads the parent's manifest list, writes manifests (new, rewritten or merged, entries keeping
//! their status, snapshot ids and sequence numbers), writes the manifest list and sets `main`
//! keeping the retention other engines gave it (DESIGN.md §8). After a successful swap the engine
//! deletes the metadata files that dropped out of the metadata log, as the table's
//! `write.metadata.*` properties say.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use iceberg::io::FileIO;
use iceberg::spec::{
    DataFile, FormatVersion, ManifestContentType, ManifestEntryRef, ManifestFile, ManifestList,
    ManifestListWriter, ManifestStatus, ManifestWriterBuilder, Operation as SnapshotOperation, Snapshot,
    SnapshotReference, SnapshotRetention, Summary, TableMetadata, TableMetadataBuilder,
};
use rand::Rng;

use crate::catalog::{Catalog, CatalogError, LoadedTable, RefMap, Swap};
use crate::config::TableName;
use crate::ledger::{self, FenceViolation, Ledger, OffsetRange};

/// Why a commit failed (as opposed to being rejected by its check, which is an outcome).
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("table {table}: writing {what}: {message}")]
    Io {
        table: String,
        what: &'static str,
        message: String,
    },
    #[error("table {table}: {message}")]
    Invalid { table: String, message: String },
    #[error("table {table}: gave up after {attempts} commit conflicts in a row; other writers keep winning")]
    TooManyConflicts { table: String, attempts: u32 },
}

impl CommitError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            CommitError::Catalog(e) => e.is_transient(),
            CommitError::Io { .. } | CommitError::TooManyConflicts { .. } => true,
            CommitError::Invalid { .. } => false,
        }
    }
}

/// What an operation decides after looking at the exact base metadata.
pub enum Check<R> {
    /// Go ahead and build the new metadata on this base.
    Proceed,
    /// Do not commit; the engine returns this outcome (e.g. fenced, or already committed).
    Stop(R),
}

/// New metadata built on a base, with the files written for it.
pub struct Staged {
    pub metadata: TableMetadata,
    /// Files that only this attempt references (manifests, manifest lists): deleted if the swap
    /// loses, since nothing will ever point at them.
    pub attempt_files: Vec<String>,
    /// The new metadata's branches and tags, when the operation knows them (see
    /// [`crate::catalog::Refs`]); None: the catalog works them out from the metadata.
    pub refs: Option<Arc<RefMap>>,
}

/// One kind of commit.
pub trait Operation {
    type Outcome;
    /// Told once, before the first attempt, whether the catalog's commit is conditioned on the
    /// whole base metadata, table properties included (`pins_properties`). When it is not (a
    /// REST catalog asserts snapshot ids and schema/spec ids, never a property), an operation
    /// that changes a fenced property (the ledger) must also move `main`, so that the assertion
    /// on `main`'s snapshot id pins the property's value too.
    fn prepare(&mut self, _pins_properties: bool) {}
    /// Looks at the metadata the commit would replace.
    fn check(&mut self, base: &LoadedTable) -> Result<Check<Self::Outcome>, CommitError>;
    /// Checks that must read files of `base` (its manifests, say): runs after `check` passed, on
    /// the same base, before `build`. Compaction and retention use it to validate that the files
    /// they replace are still live in exactly the metadata the swap is conditioned on.
    fn validate(
        &mut self,
        _base: &LoadedTable,
        _file_io: &FileIO,
    ) -> impl Future<Output = Result<Check<Self::Outcome>, CommitError>> + Send {
        async { Ok(Check::Proceed) }
    }
    /// Builds the new metadata on `base`.
    fn build(
        &mut self,
        base: &LoadedTable,
        file_io: &FileIO,
    ) -> impl Future<Output = Result<Staged, CommitError>> + Send;
    /// The outcome once the swap succeeded.
    fn committed(&mut self, new: &LoadedTable, attempts: u32) -> Self::Outcome;
}

/// How long the engine waits after losing the catalog swap before it tries again (DESIGN.md §7:
/// many writers on one table contend only at the swap, and back off instead of thrashing it).
///
/// After the k-th conflict in a row the wait is uniformly random in `[0, ceiling(k)]` ("full
/// jitter"): `ceiling(k) = min(cap, unit * 2^(k-1))`, where the unit is `first`, or, with
/// `per_attempt`, the longer of `first` and how long the losing attempt took (load, check,
/// build, swap). An attempt that takes 40 ms can be beaten by any writer whose attempt overlaps
/// it; waiting up to one attempt's length lets the writers that just won finish before this one
/// tries again, so N writers spread out instead of all building new metadata at once and all but
/// one throwing it away. The cap keeps a writer that lost many times from sleeping longer than a
/// commit interval; after `max_conflicts` in a row the commit fails with the transient
/// [`CommitError::TooManyConflicts`] and the caller retries it later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConflictBackoff {
    /// The ceiling of the first wait (and the smallest unit).
    pub first: Duration,
    /// No wait is longer than this.
    pub cap: Duration,
    /// Ceilings double at each conflict (else they grow by one unit each time).
    pub doubling: bool,
    /// The unit is at least the duration of the attempt that lost.
    pub per_attempt: bool,
    /// Conflicts in a row before the commit gives up (transiently).
    pub max_conflicts: u32,
}

impl ConflictBackoff {
    /// floe's policy.
    pub const DEFAULT: ConflictBackoff = ConflictBackoff {
        first: Duration::from_millis(10),
        cap: Duration::from_secs(1),
        doubling: true,
        per_attempt: true,
        max_conflicts: 50,
    };
    /// floe's policy until December 2026 (up to 10 ms more per conflict, at most 200 ms), kept so
    /// that the contention benchmark (`examples/contention.rs`) can compare against it.
    pub const LINEAR_200MS: ConflictBackoff = ConflictBackoff {
        first: Duration::from_millis(10),
        cap: Duration::from_millis(200),
        doubling: false,
        per_attempt: false,
        max_conflicts: 50,
    };
    /// Retry at once: the stampede baseline of the contention benchmark.
    pub const AT_ONCE: ConflictBackoff = ConflictBackoff {
        first: Duration::ZERO,
        cap: Duration::ZERO,
        doubling: false,
        per_attempt: false,
        max_conflicts: 50,
    };

    /// The longest wait after the `conflicts`-th conflict in a row (1 for the first), when the
    /// attempt that lost took `attempt`.
    pub fn ceiling(&self, conflicts: u32, attempt: Duration) -> Duration {
        let unit = if self.per_attempt { self.first.max(attempt) } else { self.first };
        let steps = conflicts.max(1);
        let grown = if self.doubling {
            unit.saturating_mul(1u32 << (steps - 1).min(20))
        } else {
            unit.saturating_mul(steps)
        };
        grown.min(self.cap)
    }

    /// The wait after the `conflicts`-th conflict in a row: uniformly random up to the ceiling.
    pub fn delay(&self, conflicts: u32, attempt: Duration, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(conflicts, attempt);
        if ceiling.is_zero() {
            return Duration::ZERO;
        }
        Duration::from_micros(rng.random_range(0..=ceiling.as_micros() as u64))
    }
}

impl Default for ConflictBackoff {
    fn default() -> Self {
        ConflictBackoff::DEFAULT
    }
}

/// Runs operations against one table.
#[derive(Clone, Debug)]
pub struct CommitEngine {
    catalog: Catalog,
    table: TableName,
    backoff: ConflictBackoff,
    /// Whether metadata files that drop out of the metadata log are deleted when the table's
    /// `write.metadata.delete-after-commit.enabled` does not say.
    delete_old_metadata: bool,
}

impl CommitEngine {
    pub fn new(catalog: Catalog, table: TableName) -> Self {
        CommitEngine {
            catalog,
            table,
            backoff: ConflictBackoff::DEFAULT,
            delete_old_metadata: true,
        }
    }

    /// What to do with metadata files that drop out of the metadata log (trimmed to the table's
    /// `write.metadata.previous-versions-max`, 100 by default) when the table's
    /// `write.metadata.delete-after-commit.enabled` does not say. floe's default is to delete
    /// them, so that a table committed to every second does not keep every version it ever had.
    pub fn with_delete_old_metadata(mut self, delete: bool) -> Self {
        self.delete_old_metadata = delete;
        self
    }

    /// How conflicts are retried (floe's default: [`ConflictBackoff::DEFAULT`]).
    pub fn with_conflict_backoff(mut self, backoff: ConflictBackoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn table(&self) -> &TableName {
        &self.table
    }

    pub async fn load(&self) -> Result<LoadedTable, CatalogError> {
        self.catalog.load(&self.table).await
    }

    /// The loop: load, check, build, swap; on conflict clean up and go again.
    pub async fn commit<O: Operation + Send>(&self, op: &mut O) -> Result<O::Outcome, CommitError> {
        self.commit_on(op, None).await.map(|(outcome, _)| outcome)
    }

    /// [`commit`](Self::commit), with the first attempt made on `base` when given (metadata the
    /// caller loaded a moment ago: a conflict reloads), and the metadata the swap made returned
    /// when this call made one.
    pub async fn commit_on<O: Operation + Send>(
        &self,
        op: &mut O,
        base: Option<LoadedTable>,
    ) -> Result<(O::Outcome, Option<Box<LoadedTable>>), CommitError> {
        let mut conflicts = 0;
        let mut given = base;
        op.prepare(self.catalog.pins_properties());
        loop {
            let attempt_started = std::time::Instant::now();
            let base = match given.take() {
                Some(b) => b,
                None => self.catalog.load(&self.table).await?,
            };
            if let Check::Stop(outcome) = op.check(&base)? {
                return Ok((outcome, None));
            }
            if let Check::Stop(outcome) = op.validate(&base, self.catalog.file_io()).await? {
                return Ok((outcome, None));
            }
            let staged = op.build(&base, self.catalog.file_io()).await?;
            let swap = self.catalog.commit(&base, staged.metadata, staged.refs).await;
            match swap {
                Ok(Swap::Done(new)) => {
                    self.delete_dropped_metadata(&base, &new).await;
                    let outcome = op.committed(&new, conflicts + 1);
                    return Ok((outcome, Some(new)));
                }
                Ok(Swap::Conflict) => {
                    let attempt = attempt_started.elapsed();
                    crate::write::delete_files(self.catalog.file_io(), staged.attempt_files).await;
                    conflicts += 1;
                    crate::telemetry::commit_conflict(&self.table.to_string(), conflicts);
                    if conflicts >= self.backoff.max_conflicts {
                        return Err(CommitError::TooManyConflicts {
                            table: self.table.to_string(),
                            attempts: conflicts,
                        });
                    }
                    let wait = self.backoff.delay(conflicts, attempt, &mut rand::rng());
                    tokio::time::sleep(wait).await;
                }
                // The outcome is unknown: the attempt's files stay (they may be referenced now).
                // The caller retries, and the operation's check recognises its own commit.
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl CommitEngine {
    /// After a successful swap: deletes the metadata files that the new metadata's log no longer
    /// names, when the table (or floe's default) says so. Only files the base's log named, or
    /// the base itself, are candidates: nothing another writer may still be committing from.
    async fn delete_dropped_metadata(&self, base: &LoadedTable, new: &LoadedTable) {
        if !deletes_old_metadata(&new.metadata, self.delete_old_metadata) {
            return;
        }
        let kept: HashSet<&str> = new
            .metadata
            .metadata_log()
            .iter()
            .map(|l| l.metadata_file.as_str())
            .chain([new.metadata_location.as_str()])
            .collect();
        let dropped: Vec<String> = base
            .metadata
            .metadata_log()
            .iter()
            .map(|l| l.metadata_file.as_str())
            .chain([base.metadata_location.as_str()])
            .filter(|f| !kept.contains(f))
            .map(str::to_owned)
            .collect();
        if !dropped.is_empty() {
            tracing::debug!(table = %self.table, files = dropped.len(), "deleting metadata files dropped from the metadata log");
            for path in dropped {
                if let Err(e) = self.catalog.file_io().delete(&path).await {
                    tracing::warn!(table = %self.table, file = %path, error = %e, "could not delete an old metadata file; remove-orphans will");
                }
            }
        }
    }
}

/// Appends data files and advances a pipeline's ledger in one snapshot.
pub struct Append {
    pub pipeline: String,
    pub ranges: Vec<OffsetRange>,
    pub files: Vec<DataFile>,
    /// The partition spec the files were written with.
    pub spec_id: i32,
    /// Unique per batch: recognises this batch's own commit after an unknown swap outcome.
    pub commit_id: String,
    /// Other table properties written in the same commit (e.g. dead-letter topic positions).
    pub properties: HashMap<String, String>,
    /// Extra snapshot summary entries (e.g. `floe.gaps`). A batch with some always makes a
    /// snapshot, even without files, so that what they say stays in the table's history.
    pub summary: HashMap<String, String>,
    /// Filled by `build`: the ledger this append writes.
    new_ledger: Option<Ledger>,
    /// Whether an append without files still makes a (ledger-only) snapshot: set by `prepare`
    /// when the catalog's commit does not pin table properties, so that the ledger never
    /// changes without `main` moving.
    ledger_snapshot: bool,
}

impl Append {
    pub fn new(pipeline: impl Into<String>, ranges: Vec<OffsetRange>, files: Vec<DataFile>, spec_id: i32) -> Self {
        Append {
            pipeline: pipeline.into(),
            ranges,
            files,
            spec_id,
            commit_id: uuid::Uuid::now_v7().to_string(),
            properties: HashMap::new(),
            summary: HashMap::new(),
            new_ledger: None,
            ledger_snapshot: false,
        }
    }
}

/// What happened to an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The data and the ledger are in the table.
    Committed {
        snapshot_id: Option<i64>,
        metadata_location: String,
        attempts: u32,
        ledger: Ledger,
    },
    /// Someone else committed (part of) these offsets first: nothing was committed; the caller
    /// deletes its data files and re-reads from the ledger.
    Fenced {
        violations: Vec<FenceViolation>,
        ledger: Ledger,
    },
}

impl Append {
    /// Whether this append makes a snapshot (else it is a property-only commit).
    fn makes_snapshot(&self) -> bool {
        !self.files.is_empty() || !self.summary.is_empty() || self.ledger_snapshot
    }
}

impl Operation for Append {
    type Outcome = AppendOutcome;

    fn prepare(&mut self, pins_properties: bool) {
        self.ledger_snapshot = !pins_properties;
    }

    fn check(&mut self, base: &LoadedTable) -> Result<Check<AppendOutcome>, CommitError> {
        let ledger = Ledger::from_properties(base.metadata.properties(), &self.pipeline).map_err(|message| {
            CommitError::Invalid {
                table: base.name.to_string(),
                message,
            }
        })?;
        let violations = ledger.check(&self.ranges);
        if violations.is_empty() {
            return Ok(Check::Proceed);
        }
        // An earlier attempt of this very batch may have landed although its swap reported an
        // error (connection lost after the database applied it). Then it is done, not fenced.
        let ours = base.metadata.snapshots().any(|s| {
            s.summary().additional_properties.get(ledger::SUMMARY_COMMIT_ID) == Some(&self.commit_id)
        });
        if ours {
            return Ok(Check::Stop(AppendOutcome::Committed {
                snapshot_id: base.metadata.current_snapshot().map(|s| s.snapshot_id()),
                metadata_location: base.metadata_location.clone(),
                attempts: 0,
                ledger,
            }));
        }
        Ok(Check::Stop(AppendOutcome::Fenced { violations, ledger }))
    }

    async fn build(&mut self, base: &LoadedTable, file_io: &FileIO) -> Result<Staged, CommitError> {
        let ledger = Ledger::from_properties(base.metadata.properties(), &self.pipeline)
            .expect("checked in check()")
            .advanced(&self.ranges);
        let mut props = self.properties.clone();
        props.insert(ledger::property_key(&self.pipeline), ledger.to_property());
        let table = base.name.to_string();
        self.new_ledger = Some(ledger);
        if !self.makes_snapshot() {
            // Offsets advanced without rows (e.g. every record dead-lettered): a property-only
            // commit, no snapshot (only where the catalog's swap pins the properties).
            let metadata = TableMetadataBuilder::new_from_metadata(
                base.metadata.clone(),
                Some(base.metadata_location.clone()),
            )
            .set_properties(std::mem::take(&mut props))
            .and_then(|b| b.build())
            .map_err(|e| CommitError::Invalid {
                table,
                message: e.to_string(),
            })?
            .metadata;
            return Ok(Staged {
                metadata,
                attempt_files: Vec::new(),
                refs: Some(base.refs().clone()),
            });
        }
        let mut summary = HashMap::from([
            (ledger::SUMMARY_PIPELINE.to_owned(), self.pipeline.clone()),
            (ledger::SUMMARY_OFFSETS.to_owned(), ledger::ranges_summary(&self.ranges)),
            (ledger::SUMMARY_COMMIT_ID.to_owned(), self.commit_id.clone()),
        ]);
        summary.insert("floe.version".to_owned(), env!("CARGO_PKG_VERSION").to_owned());
        summary.extend(self.summary.clone());
        append_snapshot(base, file_io, self.files.clone(), self.spec_id, summary, props).await
    }

    fn committed(&mut self, new: &LoadedTable, attempts: u32) -> AppendOutcome {
        AppendOutcome::Committed {
            snapshot_id: self
                .makes_snapshot()
                .then(|| new.metadata.current_snapshot().map(|s| s.snapshot_id()))
                .flatten(),
            metadata_location: new.metadata_location.clone(),
            attempts,
            ledger: self.new_ledger.take().unwrap_or_default(),
        }
    }
}

/// An `append` snapshot of `files` (possibly none: a ledger-only snapshot) on `main`: the new
/// manifest first, then the parent's manifests carried over, merged as the table's
/// `commit.manifest-merge.*` properties say; totals in the summary from the parent's.
pub(crate) async fn append_snapshot(
    base: &LoadedTable,
    file_io: &FileIO,
    files: Vec<DataFile>,
    spec_id: i32,
    mut summary: HashMap<String, String>,
    properties: HashMap<String, String>,
) -> Result<Staged, CommitError> {
    let table = base.name.to_string();
    let policy = MergePolicy::of(&base.metadata, &table)?;
    let mut w = SnapshotWriter::new(base)?;
    let (mut added_records, mut added_size) = (0u64, 0u64);
    let mut partitions = HashSet::new();
    let added_files = files.len() as u64;
    for f in &files {
        added_records += f.record_count();
        added_size += f.file_size_in_bytes();
        partitions.insert(format!("{:?}", f.partition()));
    }
    let mut cache = ManifestCache::default();
    let parent = w.parent_manifests(file_io, &mut cache).await?;
    let mut manifests = Vec::with_capacity(parent.len() + 1);
    if !files.is_empty() {
        manifests.push(w.write_added(file_io, spec_id, files).await?);
    }
    manifests.extend(w.carry(file_io, &mut cache, &parent, policy).await?);

    let prev = base.metadata.current_snapshot().map(|p| &p.summary().additional_properties);
    let total = |key: &str, added: u64| -> Option<String> {
        match prev {
            None => Some(added.to_string()),
            Some(p) => p.get(key).and_then(|v| v.parse::<u64>().ok()).map(|v| (v + added).to_string()),
        }
    };
    summary.insert("added-data-files".into(), added_files.to_string());
    summary.insert("added-records".into(), added_records.to_string());
    summary.insert("added-files-size".into(), added_size.to_string());
    summary.insert("changed-partition-count".into(), partitions.len().to_string());
    for (key, added) in [
        ("total-data-files", added_files),
        ("total-records", added_records),
        ("total-files-size", added_size),
        ("total-delete-files", 0),
        ("total-position-deletes", 0),
        ("total-equality-deletes", 0),
    ] {
        if let Some(v) = total(key, added) {
            summary.insert(key.into(), v);
        }
    }
    w.finish(file_io, manifests, SnapshotOperation::Append, summary, properties).await
}

/// Table property: merge small manifests on append (Iceberg's default: true).
pub const PROP_MERGE_ENABLED: &str = "commit.manifest-merge.enabled";
/// Table property: how many manifests of one partition spec there must be before an append
/// merges them (Iceberg's default: 100).
pub const PROP_MERGE_MIN_COUNT: &str = "commit.manifest.min-count-to-merge";
/// Table property: the size merged manifests are packed to (Iceberg's default: 8 MiB).
pub const PROP_MANIFEST_TARGET_SIZE: &str = "commit.manifest.target-size-bytes";
/// Table property: delete the metadata files that drop out of the metadata log after a commit.
pub const PROP_DELETE_AFTER_COMMIT: &str = "write.metadata.delete-after-commit.enabled";

/// Iceberg's default `commit.manifest.target-size-bytes`.
pub const MANIFEST_TARGET_SIZE: u64 = 8 << 20;
/// Iceberg's default `commit.manifest.min-count-to-merge`.
pub const MERGE_MIN_COUNT: usize = 100;

/// A table property parsed, or an error naming the property, its value and what to do.
fn property<T: std::str::FromStr>(m: &TableMetadata, table: &str, key: &str, expected: &str) -> Result<Option<T>, CommitError> {
    match m.properties().get(key) {
        None => Ok(None),
        Some(v) => v.trim().parse::<T>().map(Some).map_err(|_| CommitError::Invalid {
            table: table.to_owned(),
            message: format!("table property {key} = {v:?} is not {expected}; set it to {expected} or remove it"),
        }),
    }
}

/// How appends merge the manifests they carry over (Iceberg's `commit.manifest-merge.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergePolicy {
    pub enabled: bool,
    /// Manifests of one spec are merged once there are at least this many.
    pub min_count: usize,
    pub target_size: u64,
}

impl MergePolicy {
    /// The table's properties, with Iceberg's defaults for those it does not set.
    pub fn of(m: &TableMetadata, table: &str) -> Result<MergePolicy, CommitError> {
        Ok(MergePolicy {
            enabled: property(m, table, PROP_MERGE_ENABLED, "true or false")?.unwrap_or(true),
            min_count: property::<usize>(m, table, PROP_MERGE_MIN_COUNT, "a whole number")?
                .unwrap_or(MERGE_MIN_COUNT)
                .max(2),
            target_size: property::<u64>(m, table, PROP_MANIFEST_TARGET_SIZE, "a size in bytes")?
                .unwrap_or(MANIFEST_TARGET_SIZE)
                .max(1),
        })
    }
}

/// Whether the metadata files that drop out of the metadata log are deleted after a commit: the
/// table's `write.metadata.delete-after-commit.enabled`, or `default` when it does not say.
pub fn deletes_old_metadata(m: &TableMetadata, default: bool) -> bool {
    m.properties()
        .get(PROP_DELETE_AFTER_COMMIT)
        .map(|v| v.trim().eq_ignore_ascii_case("true"))
        .unwrap_or(default)
}

/// Data manifests packed, per partition spec and in list order, into bins of at most `target`
/// bytes; indexes into `manifests`. Delete manifests are never packed.
pub fn merge_bins(manifests: &[ManifestFile], target: u64) -> Vec<Vec<usize>> {
    let mut by_spec: std::collections::BTreeMap<i32, Vec<usize>> = std::collections::BTreeMap::new();
    for (i, mf) in manifests.iter().enumerate() {
        if mf.content == ManifestContentType::Data {
            by_spec.entry(mf.partition_spec_id).or_default().push(i);
        }
    }
    let mut bins = Vec::new();
    for (_, idx) in by_spec {
        let mut bin: Vec<usize> = Vec::new();
        let mut size = 0u64;
        for i in idx {
            let len = manifests[i].manifest_length.max(0) as u64;
            if !bin.is_empty() && size + len > target {
                bins.push(std::mem::take(&mut bin));
                size = 0;
            }
            bin.push(i);
            size += len;
        }
        if !bin.is_empty() {
            bins.push(bin);
        }
    }
    bins
}

/// A data manifest of an earlier snapshot that lists no live file, only deletes: a merge drops
/// it (the deletes stay recorded in the snapshot that made them).
pub fn only_deletes(mf: &ManifestFile) -> bool {
    mf.content == ManifestContentType::Data && mf.added_files_count == Some(0) && mf.existing_files_count == Some(0)
}

/// Reads a snapshot's manifest list exactly: a list floe cannot decode stops the commit (or the
/// maintenance task) with an error, it is never skipped (DESIGN.md §8).
pub async fn read_manifest_list(
    io: &FileIO,
    m: &TableMetadata,
    table: &str,
    snapshot: &Snapshot,
) -> Result<Vec<ManifestFile>, CommitError> {
    let path = snapshot.manifest_list();
    let read = |e: iceberg::Error| CommitError::Io {
        table: table.to_owned(),
        what: "manifest list",
        message: format!("reading {path}: {e}"),
    };
    let bytes = io.new_input(path).map_err(read)?.read().await.map_err(read)?;
    let list = ManifestList::parse_with_version(&bytes, m.format_version()).map_err(|e| CommitError::Invalid {
        table: table.to_owned(),
        message: format!(
            "cannot decode manifest list {path} of snapshot {}: {e}; stopping rather than skipping it",
            snapshot.snapshot_id()
        ),
    })?;
    Ok(list.consume_entries().into_iter().collect())
}

/// Reads a manifest's entries (with inherited snapshot ids and sequence numbers filled in),
/// without keeping them anywhere.
pub async fn read_manifest(io: &FileIO, table: &str, manifest: &ManifestFile) -> Result<Vec<ManifestEntryRef>, CommitError> {
    let loaded = manifest.load_manifest(io).await.map_err(|e| CommitError::Invalid {
        table: table.to_owned(),
        message: format!("cannot read manifest {}: {e}; stopping rather than skipping it", manifest.manifest_path),
    })?;
    Ok(loaded.into_parts().0)
}

/// Manifests and manifest lists read once: Iceberg never changes a file after writing it, so a
/// path always has the same content. Kept across the attempts of one commit, a retry after a
/// conflict reads only what the winning writer added.
#[derive(Default)]
pub struct ManifestCache {
    lists: HashMap<String, Arc<Vec<ManifestFile>>>,
    manifests: HashMap<String, Arc<Vec<ManifestEntryRef>>>,
}

impl ManifestCache {
    /// The manifests a snapshot's manifest list names.
    pub async fn list(
        &mut self,
        io: &FileIO,
        m: &TableMetadata,
        table: &str,
        snapshot: &Snapshot,
    ) -> Result<Arc<Vec<ManifestFile>>, CommitError> {
        let path = snapshot.manifest_list();
        if let Some(l) = self.lists.get(path) {
            return Ok(l.clone());
        }
        let list = Arc::new(read_manifest_list(io, m, table, snapshot).await?);
        self.lists.insert(path.to_owned(), list.clone());
        Ok(list)
    }

    /// The entries of one manifest, with inherited snapshot ids and sequence numbers filled in.
    pub async fn entries(
        &mut self,
        io: &FileIO,
        table: &str,
        manifest: &ManifestFile,
    ) -> Result<Arc<Vec<ManifestEntryRef>>, CommitError> {
        if let Some(e) = self.manifests.get(&manifest.manifest_path) {
            return Ok(e.clone());
        }
        let entries = Arc::new(read_manifest(io, table, manifest).await?);
        self.manifests.insert(manifest.manifest_path.clone(), entries.clone());
        Ok(entries)
    }
}

/// A manifest written by [`SnapshotWriter::rewrite`].
pub struct Rewritten {
    /// None when every entry of the merged manifests was dropped (only old deletes).
    pub manifest: Option<ManifestFile>,
    /// How many of the files to remove were found (and marked DELETED).
    pub removed: usize,
}

/// The one way floe builds a snapshot on `main` (every operation uses it: append, skip,
/// compaction, retention): reads the parent's manifest list, writes the new manifests, carries
/// every other manifest over as it is, or merges manifests keeping each entry's status, snapshot
/// id and sequence numbers (DESIGN.md §8), writes the manifest list, and makes the snapshot
/// `main`'s head, keeping the branch's retention settings that other engines set.
pub struct SnapshotWriter<'a> {
    base: &'a LoadedTable,
    snapshot_id: i64,
    sequence_number: i64,
    attempt: uuid::Uuid,
    written: usize,
    attempt_files: Vec<String>,
}

impl<'a> SnapshotWriter<'a> {
    pub fn new(base: &'a LoadedTable) -> Result<SnapshotWriter<'a>, CommitError> {
        let m = &base.metadata;
        if m.format_version() == FormatVersion::V1 {
            return Err(CommitError::Invalid {
                table: base.name.to_string(),
                message: "format v1 tables are not supported; upgrade the table to format v2".into(),
            });
        }
        Ok(SnapshotWriter {
            base,
            snapshot_id: new_snapshot_id(m),
            sequence_number: m.last_sequence_number() + 1,
            attempt: uuid::Uuid::now_v7(),
            written: 0,
            attempt_files: Vec::new(),
        })
    }

    pub fn snapshot_id(&self) -> i64 {
        self.snapshot_id
    }

    fn table(&self) -> String {
        self.base.name.to_string()
    }

    fn io_error(&self, what: &'static str, path: &str) -> impl Fn(iceberg::Error) -> CommitError + use<> {
        let (table, path) = (self.table(), path.to_owned());
        move |e| CommitError::Io {
            table: table.clone(),
            what,
            message: format!("{path}: {e}"),
        }
    }

    fn next_manifest_path(&mut self) -> String {
        let path = format!("{}/metadata/{}-m{}.avro", self.base.metadata.location(), self.attempt, self.written);
        self.written += 1;
        self.attempt_files.push(path.clone());
        path
    }

    /// A writer of one data manifest of this snapshot at `path`, for files of `spec`.
    fn data_manifest_writer(
        &self,
        io: &FileIO,
        path: &str,
        spec: &iceberg::spec::PartitionSpecRef,
    ) -> Result<iceberg::spec::ManifestWriter, CommitError> {
        let out = io.new_output(path).map_err(self.io_error("manifest", path))?;
        Ok(ManifestWriterBuilder::new(
            out,
            Some(self.snapshot_id),
            self.base.metadata.current_schema().clone(),
            spec.as_ref().clone(),
        )
        .build_v2_data())
    }

    fn spec(&self, spec_id: i32, whose: &str) -> Result<iceberg::spec::PartitionSpecRef, CommitError> {
        self.base.metadata.partition_spec_by_id(spec_id).cloned().ok_or_else(|| CommitError::Invalid {
            table: self.table(),
            message: format!("{whose} names partition spec {spec_id}, which the table does not have"),
        })
    }

    /// The manifests of the parent (main's current snapshot), exactly as its list names them.
    pub async fn parent_manifests(&self, io: &FileIO, cache: &mut ManifestCache) -> Result<Arc<Vec<ManifestFile>>, CommitError> {
        match self.base.metadata.current_snapshot() {
            Some(parent) => cache.list(io, &self.base.metadata, &self.table(), parent).await,
            None => Ok(Arc::new(Vec::new())),
        }
    }

    /// Writes one manifest of ADDED entries for `files`, labelled with the partition spec they
    /// were written with (which may no longer be the default one: a manifest holds one spec).
    pub async fn write_added(&mut self, io: &FileIO, spec_id: i32, files: Vec<DataFile>) -> Result<ManifestFile, CommitError> {
        let spec = self.spec(spec_id, "the written data files' label")?;
        let path = self.next_manifest_path();
        let err = self.io_error("manifest", &path);
        let mut w = self.data_manifest_writer(io, &path, &spec)?;
        for f in files {
            w.add_file(f, self.sequence_number).map_err(&err)?;
        }
        w.write_manifest_file().await.map_err(err)
    }

    /// Rewrites data manifests of one partition spec as one manifest of this snapshot. Live
    /// entries become EXISTING with their own snapshot id and data and file sequence numbers;
    /// those in `remove` become DELETED with this snapshot's id and their original sequence
    /// numbers; DELETED entries of earlier snapshots are dropped, as Iceberg's manifest merge
    /// does, and never turned back into live ones.
    pub async fn rewrite(
        &mut self,
        io: &FileIO,
        cache: &mut ManifestCache,
        bin: &[&ManifestFile],
        remove: &HashSet<&str>,
    ) -> Result<Rewritten, CommitError> {
        let table = self.table();
        let Some(first) = bin.first() else {
            return Ok(Rewritten { manifest: None, removed: 0 });
        };
        if let Some(other) = bin.iter().find(|mf| mf.partition_spec_id != first.partition_spec_id || mf.content != ManifestContentType::Data) {
            return Err(CommitError::Invalid {
                table,
                message: format!(
                    "cannot merge manifest {} with {}: different partition specs or content",
                    other.manifest_path, first.manifest_path
                ),
            });
        }
        let spec = self.spec(first.partition_spec_id, &format!("manifest {}", first.manifest_path))?;
        let path = self.next_manifest_path();
        let err = self.io_error("manifest", &path);
        let mut w = self.data_manifest_writer(io, &path, &spec)?;
        let (mut written, mut removed) = (0usize, 0usize);
        for mf in bin {
            let entries = cache.entries(io, &table, mf).await?;
            for e in entries.iter() {
                if e.status() == ManifestStatus::Deleted {
                    continue;
                }
                let seq = e.sequence_number().ok_or_else(|| CommitError::Invalid {
                    table: table.clone(),
                    message: format!("manifest {} lists {} without a sequence number", mf.manifest_path, e.file_path()),
                })?;
                let file_seq = e.file_sequence_number.or(Some(seq));
                let df = e.data_file().clone();
                if remove.contains(e.file_path()) {
                    removed += 1;
                    w.add_delete_file(df, seq, file_seq).map_err(&err)?;
                } else {
                    let added_by = e.snapshot_id().unwrap_or(mf.added_snapshot_id);
                    w.add_existing_file(df, added_by, seq, file_seq).map_err(&err)?;
                }
                written += 1;
            }
        }
        let manifest = w.write_manifest_file().await.map_err(err)?;
        Ok(Rewritten { manifest: (written > 0).then_some(manifest), removed })
    }

    /// The parent's manifests for an append's new list: as they are, or, once a partition spec
    /// has at least `policy.min_count` data manifests, merged into manifests of about
    /// `policy.target_size` (Iceberg's `commit.manifest-merge.enabled`). Merged manifests take
    /// the place of the first manifest of their bin, so the list keeps its order.
    pub async fn carry(
        &mut self,
        io: &FileIO,
        cache: &mut ManifestCache,
        parent: &[ManifestFile],
        policy: MergePolicy,
    ) -> Result<Vec<ManifestFile>, CommitError> {
        let mut per_spec: HashMap<i32, usize> = HashMap::new();
        for mf in parent.iter().filter(|mf| mf.content == ManifestContentType::Data) {
            *per_spec.entry(mf.partition_spec_id).or_default() += 1;
        }
        let merging = |spec: i32| policy.enabled && per_spec.get(&spec).is_some_and(|n| *n >= policy.min_count);
        if !parent.iter().any(|mf| mf.content == ManifestContentType::Data && merging(mf.partition_spec_id)) {
            return Ok(parent.to_vec());
        }
        let dead: Vec<bool> = parent
            .iter()
            .map(|mf| merging(mf.partition_spec_id) && only_deletes(mf))
            .collect();
        let mut bin_of: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut in_bin = vec![false; parent.len()];
        for mut bin in merge_bins(parent, policy.target_size) {
            bin.retain(|i| !dead[*i]);
            if bin.len() < 2 || !merging(parent[bin[0]].partition_spec_id) {
                continue;
            }
            for i in &bin {
                in_bin[*i] = true;
            }
            bin_of.insert(bin[0], bin);
        }
        let mut out = Vec::new();
        let none = HashSet::new();
        for (i, mf) in parent.iter().enumerate() {
            if dead[i] {
                continue;
            }
            if !in_bin[i] {
                out.push(mf.clone());
                continue;
            }
            if let Some(bin) = bin_of.get(&i) {
                let bin: Vec<&ManifestFile> = bin.iter().map(|j| &parent[*j]).collect();
                out.extend(self.rewrite(io, cache, &bin, &none).await?.manifest);
            }
        }
        Ok(out)
    }

    /// Writes the manifest list of `manifests` and returns the new metadata, with this snapshot
    /// as `main`'s head (its retention settings kept) and `properties` set.
    pub async fn finish(
        mut self,
        io: &FileIO,
        manifests: Vec<ManifestFile>,
        operation: SnapshotOperation,
        summary: HashMap<String, String>,
        properties: HashMap<String, String>,
    ) -> Result<Staged, CommitError> {
        let base = self.base;
        let m = &base.metadata;
        let table = self.table();
        let parent_id = m.current_snapshot_id();
        let list_path = format!("{}/metadata/snap-{}-1-{}.avro", m.location(), self.snapshot_id, self.attempt);
        let err = self.io_error("manifest list", &list_path);
        let out = io.new_output(&list_path).map_err(&err)?;
        let mut list_writer =
            ManifestListWriter::v2(out.writer().await.map_err(&err)?, self.snapshot_id, parent_id, self.sequence_number);
        list_writer.add_manifests(manifests.into_iter()).map_err(&err)?;
        self.attempt_files.push(list_path.clone());
        list_writer.close().await.map_err(&err)?;

        let snapshot = Snapshot::builder()
            .with_snapshot_id(self.snapshot_id)
            .with_parent_snapshot_id(parent_id)
            .with_sequence_number(self.sequence_number)
            .with_timestamp_ms(chrono::Utc::now().timestamp_millis().max(m.last_updated_ms() + 1))
            .with_manifest_list(list_path)
            .with_summary(Summary {
                operation,
                additional_properties: summary,
            })
            .with_schema_id(m.current_schema_id())
            .build();
        // `main` keeps the retention other engines gave it (min-snapshots-to-keep,
        // max-snapshot-age-ms, max-ref-age-ms): floe only moves its head (DESIGN.md §8). The
        // builder's `set_branch_snapshot` copies the branch's reference with only its snapshot id
        // changed (a table without `main` gets one without retention settings), and refuses a
        // `main` that is a tag.
        let snapshot_id = snapshot.snapshot_id();
        let metadata = TableMetadataBuilder::new_from_metadata(m.clone(), Some(base.metadata_location.clone()))
            .set_branch_snapshot(snapshot, MAIN)
            .and_then(|b| b.set_properties(properties))
            .and_then(|b| b.build())
            .map_err(|e| CommitError::Invalid {
                table,
                message: e.to_string(),
            })?
            .metadata;
        // The same change to the refs as the builder's: `main` moved, its retention kept.
        let mut refs = RefMap::clone(base.refs());
        refs.entry(MAIN.to_owned())
            .and_modify(|r| r.snapshot_id = snapshot_id)
            .or_insert_with(|| SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)));
        Ok(Staged {
            metadata,
            attempt_files: self.attempt_files,
            refs: Some(Arc::new(refs)),
        })
    }
}

/// The branch every engine reads by default.
pub const MAIN: &str = "main";

/// The table's branches and tags. (The iceberg crate keeps them private; they are read from the
/// metadata's serialized form, which is exactly what the metadata file holds.)
pub fn refs(m: &TableMetadata) -> HashMap<String, SnapshotReference> {
    refs_only::read(m).unwrap_or_else(|| {
        // Format v1 metadata without refs: main is the current snapshot.
        m.current_snapshot_id()
            .map(|id| {
                HashMap::from([(
                    MAIN.to_owned(),
                    SnapshotReference::new(id, SnapshotRetention::branch(None, None, None)),
                )])
            })
            .unwrap_or_default()
    })
}


/// Skips one record the pipeline is stopped at: moves the ledger from `offset` to `offset + 1`
/// in a snapshot with no files, so the decision stays in the table's history
/// (`floe.skipped`, `floe.skip-reason` in the summary).
pub struct Skip {
    pub pipeline: String,
    pub tp: crate::ledger::TopicPartition,
    pub offset: i64,
    pub reason: String,
}

impl Operation for Skip {
    type Outcome = Result<String, String>;

    fn check(&mut self, base: &LoadedTable) -> Result<Check<Self::Outcome>, CommitError> {
        let ledger = Ledger::from_properties(base.metadata.properties(), &self.pipeline).map_err(|message| {
            CommitError::Invalid { table: base.name.to_string(), message }
        })?;
        match ledger.get(&self.tp) {
            Some(at) if at == self.offset => Ok(Check::Proceed),
            None => Ok(Check::Stop(Err(format!(
                "pipeline {:?} has no ledger entry for {}: floe skip only skips the record a stopped \
                 pipeline is waiting at (a pipeline that stops on a bad record records where it stopped)",
                self.pipeline, self.tp
            )))),
            Some(at) => Ok(Check::Stop(Err(format!(
                "pipeline {:?} is at offset {at} of {}, not at {}: floe skip only skips the record a \
                 stopped pipeline is waiting at",
                self.pipeline, self.tp, self.offset
            )))),
        }
    }

    async fn build(&mut self, base: &LoadedTable, file_io: &FileIO) -> Result<Staged, CommitError> {
        let mut ledger = Ledger::from_properties(base.metadata.properties(), &self.pipeline).unwrap_or_default();
        ledger.set(&self.tp, self.offset + 1);
        let props = HashMap::from([(ledger::property_key(&self.pipeline), ledger.to_property())]);
        let summary = HashMap::from([
            (ledger::SUMMARY_PIPELINE.to_owned(), self.pipeline.clone()),
            ("floe.skipped".to_owned(), format!("{}:{}", self.tp, self.offset)),
            ("floe.skip-reason".to_owned(), self.reason.clone()),
        ]);
        append_snapshot(base, file_io, Vec::new(), base.metadata.default_partition_spec_id(), summary, props).await
    }

    fn committed(&mut self, new: &LoadedTable, _: u32) -> Self::Outcome {
        Ok(format!(
            "skipped {} offset {} for pipeline {:?}; recorded in snapshot {}",
            self.tp,
            self.offset,
            self.pipeline,
            new.metadata.current_snapshot().map(|s| s.snapshot_id()).unwrap_or_default()
        ))
    }
}

/// A positive snapshot id no snapshot of the table has.
pub(crate) fn new_snapshot_id(m: &TableMetadata) -> i64 {
    let mut rng = rand::rng();
    loop {
        let id = rng.random_range(1..i64::MAX);
        if m.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

/// Reads only the `refs` of a table's metadata through its serialized form, without building the
/// whole serialized tree (a commit on a table with thousands of snapshots would otherwise pay for
/// a second serialization of all of them).
mod refs_only {
    use std::collections::HashMap;

    use iceberg::spec::{SnapshotReference, TableMetadata};
    use serde::ser::{self, Impossible, Serialize};

    #[derive(Debug)]
    struct Stop(String);

    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Stop {}

    impl ser::Error for Stop {
        fn custom<T: std::fmt::Display>(msg: T) -> Self {
            Stop(msg.to_string())
        }
    }

    /// The `refs` of `m`; None when the metadata has none (format v1).
    pub fn read(m: &TableMetadata) -> Option<HashMap<String, SnapshotReference>> {
        let mut found = None;
        m.serialize(Top { found: &mut found }).ok()?;
        found.and_then(|v| serde_json::from_value(v).ok())
    }

    struct Top<'a> {
        found: &'a mut Option<serde_json::Value>,
    }

    struct Fields<'a> {
        found: &'a mut Option<serde_json::Value>,
        next_is_refs: bool,
    }

    impl Fields<'_> {
        fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Stop> {
            if key == "refs" {
                *self.found = Some(serde_json::to_value(value).map_err(|e| Stop(e.to_string()))?);
            }
            Ok(())
        }
    }

    macro_rules! refuse {
        ($($name:ident($($arg:ty),*)),* $(,)?) => {
            $(fn $name(self, $(_: $arg),*) -> Result<(), Stop> { Err(Stop("not table metadata".into())) })*
        };
    }

    impl<'a> ser::Serializer for Top<'a> {
        type Ok = ();
        type Error = Stop;
        type SerializeSeq = Impossible<(), Stop>;
        type SerializeTuple = Impossible<(), Stop>;
        type SerializeTupleStruct = Impossible<(), Stop>;
        type SerializeTupleVariant = Impossible<(), Stop>;
        type SerializeMap = Fields<'a>;
        type SerializeStruct = Fields<'a>;
        type SerializeStructVariant = Impossible<(), Stop>;

        refuse!(
            serialize_bool(bool), serialize_i8(i8), serialize_i16(i16), serialize_i32(i32),
            serialize_i64(i64), serialize_u8(u8), serialize_u16(u16), serialize_u32(u32),
            serialize_u64(u64), serialize_f32(f32), serialize_f64(f64), serialize_char(char),
            serialize_str(&str), serialize_bytes(&[u8]), serialize_none(), serialize_unit(),
            serialize_unit_struct(&'static str), serialize_unit_variant(&'static str, u32, &'static str),
        );

        fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Stop> {
            value.serialize(self)
        }
        fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<(), Stop> {
            value.serialize(self)
        }
        fn serialize_newtype_variant<T: Serialize + ?Sized>(self, _: &'static str, _: u32, _: &'static str, value: &T) -> Result<(), Stop> {
            value.serialize(self)
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Stop> {
            Err(Stop("not table metadata".into()))
        }
        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Stop> {
            Err(Stop("not table metadata".into()))
        }
        fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, Stop> {
            Err(Stop("not table metadata".into()))
        }
        fn serialize_tuple_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Self::SerializeTupleVariant, Stop> {
            Err(Stop("not table metadata".into()))
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Fields<'a>, Stop> {
            Ok(Fields { found: self.found, next_is_refs: false })
        }
        fn serialize_struct(self, _: &'static str, _: usize) -> Result<Fields<'a>, Stop> {
            Ok(Fields { found: self.found, next_is_refs: false })
        }
        fn serialize_struct_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Self::SerializeStructVariant, Stop> {
            Err(Stop("not table metadata".into()))
        }
    }

    impl ser::SerializeMap for Fields<'_> {
        type Ok = ();
        type Error = Stop;
        fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Stop> {
            self.next_is_refs = serde_json::to_value(key).is_ok_and(|k| k == "refs");
            Ok(())
        }
        fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Stop> {
            if std::mem::take(&mut self.next_is_refs) {
                self.field("refs", value)?;
            }
            Ok(())
        }
        fn end(self) -> Result<(), Stop> {
            Ok(())
        }
    }

    impl ser::SerializeStruct for Fields<'_> {
        type Ok = ();
        type Error = Stop;
        fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Stop> {
            self.field(key, value)
        }
        fn end(self) -> Result<(), Stop> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::ConflictBackoff;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceilings_double_from_the_first_and_stop_at_the_cap() {
        let b = ConflictBackoff::DEFAULT;
        let got: Vec<Duration> = (1..=10).map(|k| b.ceiling(k, Duration::ZERO)).collect();
        let want: Vec<Duration> = [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000].map(|m| m * MS).to_vec();
        assert_eq!(got, want);
        // Far past the cap, no overflow.
        assert_eq!(b.ceiling(u32::MAX, Duration::from_secs(3600)), b.cap);
        // Conflict 0 is treated as the first.
        assert_eq!(b.ceiling(0, Duration::ZERO), 10 * MS);
    }

    #[test]
    fn the_unit_is_the_losing_attempt_when_it_took_longer() {
        let b = ConflictBackoff::DEFAULT;
        assert_eq!(b.ceiling(1, 45 * MS), 45 * MS);
        assert_eq!(b.ceiling(3, 45 * MS), 180 * MS);
        assert_eq!(b.ceiling(2, 3 * MS), 20 * MS, "a quicker attempt than `first` waits by `first`");
        let fixed = ConflictBackoff { per_attempt: false, ..b };
        assert_eq!(fixed.ceiling(3, 45 * MS), 40 * MS);
    }

    #[test]
    fn the_old_policy_grows_linearly_and_at_once_never_waits() {
        let old = ConflictBackoff::LINEAR_200MS;
        let got: Vec<Duration> = [1, 2, 3, 19, 20, 21, 50].map(|k| old.ceiling(k, 500 * MS)).to_vec();
        assert_eq!(got, [10, 20, 30, 190, 200, 200, 200].map(|m| m * MS).to_vec());
        let mut rng = StdRng::seed_from_u64(7);
        for k in 1..60 {
            assert_eq!(ConflictBackoff::AT_ONCE.delay(k, 500 * MS, &mut rng), Duration::ZERO);
        }
    }

    #[test]
    fn delays_spread_over_the_whole_range_up_to_the_ceiling() {
        let b = ConflictBackoff::DEFAULT;
        let mut rng = StdRng::seed_from_u64(16);
        for (k, attempt) in [(1, Duration::ZERO), (4, 30 * MS), (12, 5 * MS)] {
            let ceiling = b.ceiling(k, attempt);
            let waits: Vec<Duration> = (0..2000).map(|_| b.delay(k, attempt, &mut rng)).collect();
            assert!(waits.iter().all(|w| *w <= ceiling), "a wait above {ceiling:?}");
            let mean = waits.iter().sum::<Duration>() / waits.len() as u32;
            // Full jitter: uniform on [0, ceiling], so the mean is about half the ceiling and
            // both ends of the range occur (two writers that lost together retry apart).
            assert!(mean > ceiling * 45 / 100 && mean < ceiling * 55 / 100, "mean {mean:?} for ceiling {ceiling:?}");
            assert!(waits.iter().any(|w| *w < ceiling / 20), "no short wait for ceiling {ceiling:?}");
            assert!(waits.iter().any(|w| *w > ceiling * 19 / 20), "no long wait for ceiling {ceiling:?}");
        }
    }
}
