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

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use iceberg::io::FileIO;
use iceberg::spec::{
    DataFile, FormatVersion, ManifestFile, ManifestList, ManifestListWriter, ManifestWriterBuilder,
    Operation as SnapshotOperation, Snapshot, SnapshotReference, SnapshotRetention, Summary,
    TableMetadata, TableMetadataBuilder,
};
use rand::Rng;

use crate::catalog::{Catalog, CatalogError, LoadedTable, Swap};
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
}

/// One kind of commit.
pub trait Operation {
    type Outcome;
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

/// Runs operations against one table.
#[derive(Clone, Debug)]
pub struct CommitEngine {
    catalog: Catalog,
    table: TableName,
    max_conflicts: u32,
}

impl CommitEngine {
    pub fn new(catalog: Catalog, table: TableName) -> Self {
        CommitEngine {
            catalog,
            table,
            max_conflicts: 50,
        }
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
        let mut conflicts = 0;
        loop {
            let base = self.catalog.load(&self.table).await?;
            if let Check::Stop(outcome) = op.check(&base)? {
                return Ok(outcome);
            }
            if let Check::Stop(outcome) = op.validate(&base, self.catalog.file_io()).await? {
                return Ok(outcome);
            }
            let staged = op.build(&base, self.catalog.file_io()).await?;
            let swap = self.catalog.swap(&base, &staged.metadata).await;
            match swap {
                Ok((location, Swap::Done)) => {
                    let new = LoadedTable {
                        name: self.table.clone(),
                        metadata_location: location,
                        metadata: staged.metadata,
                    };
                    return Ok(op.committed(&new, conflicts + 1));
                }
                Ok((_, Swap::Conflict)) => {
                    crate::write::delete_files(self.catalog.file_io(), staged.attempt_files).await;
                    conflicts += 1;
                    tracing::debug!(table = %self.table, conflicts, "commit conflict; reloading and checking again");
                    if conflicts >= self.max_conflicts {
                        return Err(CommitError::TooManyConflicts {
                            table: self.table.to_string(),
                            attempts: conflicts,
                        });
                    }
                    // A little jitter so that two writers racing in lockstep drift apart.
                    let ms = rand::rng().random_range(0..(10 * conflicts.min(20) as u64 + 1));
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                // The outcome is unknown: the attempt's files stay (they may be referenced now).
                // The caller retries, and the operation's check recognises its own commit.
                Err(e) => return Err(e.into()),
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

impl Operation for Append {
    type Outcome = AppendOutcome;

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
        if self.files.is_empty() && self.summary.is_empty() {
            // Offsets advanced without rows (e.g. every record dead-lettered): a property-only
            // commit, no snapshot.
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
            });
        }
        let mut extra = HashMap::from([
            (ledger::SUMMARY_PIPELINE.to_owned(), self.pipeline.clone()),
            (ledger::SUMMARY_OFFSETS.to_owned(), ledger::ranges_summary(&self.ranges)),
            (ledger::SUMMARY_COMMIT_ID.to_owned(), self.commit_id.clone()),
        ]);
        extra.insert("floe.version".to_owned(), env!("CARGO_PKG_VERSION").to_owned());
        extra.extend(self.summary.clone());
        let (metadata, attempt_files) = build_snapshot(
            base,
            file_io,
            SnapshotOperation::Append,
            self.files.clone(),
            self.spec_id,
            extra,
            props,
        )
        .await?;
        Ok(Staged {
            metadata,
            attempt_files,
        })
    }

    fn committed(&mut self, new: &LoadedTable, attempts: u32) -> AppendOutcome {
        AppendOutcome::Committed {
            snapshot_id: (!self.files.is_empty() || !self.summary.is_empty())
                .then(|| new.metadata.current_snapshot().map(|s| s.snapshot_id()))
                .flatten(),
            metadata_location: new.metadata_location.clone(),
            attempts,
            ledger: self.new_ledger.take().unwrap_or_default(),
        }
    }
}

/// Writes a manifest for `files`, a manifest list carrying every manifest of the current snapshot
/// over unchanged (DESIGN.md §8), and returns the metadata with the new snapshot as `main`.
pub async fn build_snapshot(
    base: &LoadedTable,
    file_io: &FileIO,
    operation: SnapshotOperation,
    files: Vec<DataFile>,
    spec_id: i32,
    summary_extra: HashMap<String, String>,
    properties: HashMap<String, String>,
) -> Result<(TableMetadata, Vec<String>), CommitError> {
    let m = &base.metadata;
    let table = base.name.to_string();
    let io = |what: &'static str| {
        let table = table.clone();
        move |e: iceberg::Error| CommitError::Io {
            table: table.clone(),
            what,
            message: e.to_string(),
        }
    };
    if m.format_version() == FormatVersion::V1 {
        return Err(CommitError::Invalid {
            table,
            message: "format v1 tables are not supported; upgrade the table to format v2".into(),
        });
    }
    let snapshot_id = new_snapshot_id(m);
    let parent = m.current_snapshot().cloned();
    let sequence_number = m.last_sequence_number() + 1;
    let meta_dir = format!("{}/metadata", m.location());
    let attempt = uuid::Uuid::now_v7();
    let mut attempt_files = Vec::new();

    let (mut added_records, mut added_size) = (0u64, 0u64);
    let mut partitions = std::collections::HashSet::new();
    let added_files = files.len() as u64;
    let mut manifests: Vec<ManifestFile> = Vec::new();
    for f in &files {
        added_records += f.record_count();
        added_size += f.file_size_in_bytes();
        partitions.insert(format!("{:?}", f.partition()));
    }
    if !files.is_empty() {
        let manifest_path = format!("{meta_dir}/{attempt}-m0.avro");
        attempt_files.push(manifest_path.clone());
        manifests.push(
            write_manifest(m, file_io, &manifest_path, spec_id, snapshot_id, sequence_number, files)
                .await
                .map_err(io("manifest"))?,
        );
    }
    // The manifest list: the new manifest, then the parent's manifests exactly as they are.
    if let Some(parent) = &parent {
        let bytes = file_io
            .new_input(parent.manifest_list())
            .map_err(io("manifest list"))?
            .read()
            .await
            .map_err(io("manifest list"))?;
        let list = ManifestList::parse_with_version(&bytes, m.format_version()).map_err(|e| {
            CommitError::Invalid {
                table: table.clone(),
                message: format!(
                    "cannot decode manifest list {} of snapshot {}: {e}",
                    parent.manifest_list(),
                    parent.snapshot_id()
                ),
            }
        })?;
        manifests.extend(list.consume_entries());
    }
    let list_path = format!("{meta_dir}/snap-{snapshot_id}-1-{attempt}.avro");
    let out = file_io.new_output(&list_path).map_err(io("manifest list"))?;
    let mut list_writer = ManifestListWriter::v2(
        out.writer().await.map_err(io("manifest list"))?,
        snapshot_id,
        parent.as_ref().map(|p| p.snapshot_id()),
        sequence_number,
    );
    list_writer
        .add_manifests(manifests.into_iter())
        .map_err(io("manifest list"))?;
    attempt_files.push(list_path.clone());
    list_writer.close().await.map_err(io("manifest list"))?;

    let mut summary = summary_extra;
    let prev = parent.as_ref().map(|p| &p.summary().additional_properties);
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

    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(parent.as_ref().map(|p| p.snapshot_id()))
        .with_sequence_number(sequence_number)
        .with_timestamp_ms(chrono::Utc::now().timestamp_millis().max(m.last_updated_ms() + 1))
        .with_manifest_list(list_path)
        .with_summary(Summary {
            operation,
            additional_properties: summary,
        })
        .with_schema_id(m.current_schema_id())
        .build();
    let invalid = |e: iceberg::Error| CommitError::Invalid {
        table: table.clone(),
        message: e.to_string(),
    };
    let metadata = TableMetadataBuilder::new_from_metadata(m.clone(), Some(base.metadata_location.clone()))
        .add_snapshot(snapshot)
        .and_then(|b| {
            b.set_ref(
                "main",
                SnapshotReference::new(
                    snapshot_id,
                    SnapshotRetention::Branch {
                        min_snapshots_to_keep: None,
                        max_snapshot_age_ms: None,
                        max_ref_age_ms: None,
                    },
                ),
            )
        })
        .and_then(|b| b.set_properties(properties))
        .and_then(|b| b.build())
        .map_err(invalid)?
        .metadata;
    Ok((metadata, attempt_files))
}

/// Writes one manifest of ADDED entries for `files` at `path`.
async fn write_manifest(
    m: &TableMetadata,
    file_io: &FileIO,
    path: &str,
    spec_id: i32,
    snapshot_id: i64,
    sequence_number: i64,
    files: Vec<DataFile>,
) -> Result<ManifestFile, iceberg::Error> {
    // The spec the files were partitioned by, which may no longer be the default one if the
    // partitioning changed while they were written (a manifest holds files of one spec).
    let spec = m.partition_spec_by_id(spec_id).ok_or_else(|| {
        iceberg::Error::new(
            iceberg::ErrorKind::DataInvalid,
            format!("partition spec {spec_id} of the written files is not in the table"),
        )
    })?;
    let output = file_io.new_output(path)?;
    let mut writer = ManifestWriterBuilder::new(
        output,
        Some(snapshot_id),
        m.current_schema().clone(),
        spec.as_ref().clone(),
    )
    .build_v2_data();
    for f in files {
        writer.add_file(f, sequence_number)?;
    }
    writer.write_manifest_file().await
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
        let (metadata, attempt_files) =
            build_snapshot(
                base,
                file_io,
                SnapshotOperation::Append,
                Vec::new(),
                base.metadata.default_partition_spec_id(),
                summary,
                props,
            )
            .await?;
        Ok(Staged { metadata, attempt_files })
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
