//! The commit that replaces data files with others (compaction: `replace`; retention: `delete`
//! or `overwrite`) and merges manifests, through the commit engine.
//!
//! Validation, on the exact base of every attempt: each group of files to remove is committed
//! only if every one of its files is still live there (someone else may have compacted or deleted
//! them meanwhile), and, when the group's rows were read back from Parquet, if no delete file can
//! apply to them (they would come back to life). A group that fails is dropped, not retried; its
//! new files are left for the caller to delete. Files appended meanwhile are carried over.
//!
//! Rewritten manifests keep every live entry's snapshot id and data and file sequence numbers
//! (status EXISTING); a removed file becomes DELETED with this snapshot's id and its original
//! sequence numbers. DELETED entries of earlier snapshots are dropped, as Iceberg's own manifest
//! merge does: a delete is information about the snapshot that made it, and such an entry is never
//! turned back into a live one (DESIGN.md §8).

use std::collections::{BTreeSet, HashMap, HashSet};

use iceberg::io::FileIO;
use iceberg::spec::{
    DataFile, FormatVersion, ManifestContentType, ManifestFile, ManifestListWriter, ManifestStatus,
    ManifestWriterBuilder, Operation as SnapshotOperation, Snapshot, SnapshotReference,
    SnapshotRetention, Summary, TableMetadataBuilder,
};

use super::{LiveFiles, ManifestCache, MaintainError, SUMMARY_TASK, partition_key};
use crate::catalog::LoadedTable;
use crate::commit::{Check, CommitError, Operation, Staged, new_snapshot_id};

/// Iceberg's default target size of a merged manifest (`commit.manifest.target-size-bytes`).
pub const MANIFEST_TARGET_SIZE: u64 = 8 << 20;

/// Files to remove and the files that replace them; committed together or not at all.
#[derive(Debug, Clone, Default)]
pub struct Group {
    pub remove: Vec<String>,
    pub add: Vec<DataFile>,
    /// The new files were made by reading the removed files' rows: delete files that apply to
    /// them forbid the commit (a dropped file's deletes do not matter).
    pub reads_rows: bool,
}

/// Which maintenance task is committing, deciding the snapshot operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// `replace`: the same rows in other files (compaction, manifest merge).
    Compact,
    /// `delete` when files are only dropped, `overwrite` when some are rewritten.
    Retention,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::Compact => "compact",
            Task::Retention => "retention",
        }
    }
}

/// The operation.
pub struct Rewrite {
    task: Task,
    groups: Vec<Group>,
    merge_manifests: bool,
    manifest_target_size: u64,
    cache: ManifestCache,
    live: Option<LiveFiles>,
    accepted: Vec<bool>,
    manifests_before: usize,
    manifests_after: usize,
}

/// What a rewrite did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewriteOutcome {
    /// The new snapshot; None when nothing was committed.
    pub snapshot_id: Option<i64>,
    pub operation: Option<String>,
    pub groups_committed: usize,
    /// Groups whose files were no longer live (or gained delete files) in the table.
    pub groups_dropped: usize,
    pub files_removed: usize,
    pub files_added: usize,
    pub manifests_before: usize,
    pub manifests_after: usize,
    pub attempts: u32,
    /// Files written for groups that were not committed: nothing references them.
    pub unreferenced: Vec<String>,
}

impl Rewrite {
    pub fn new(task: Task, groups: Vec<Group>, merge_manifests: bool) -> Self {
        Rewrite {
            task,
            groups,
            merge_manifests,
            manifest_target_size: MANIFEST_TARGET_SIZE,
            cache: ManifestCache::default(),
            live: None,
            accepted: Vec::new(),
            manifests_before: 0,
            manifests_after: 0,
        }
    }

    /// Reuses manifests already read (planning read them on a base this commit will likely see).
    pub fn with_cache(mut self, cache: ManifestCache) -> Self {
        self.cache = cache;
        self
    }

    pub fn with_manifest_target_size(mut self, bytes: u64) -> Self {
        self.manifest_target_size = bytes.max(1);
        self
    }

    fn outcome(&self, snapshot_id: Option<i64>, operation: Option<String>, attempts: u32) -> RewriteOutcome {
        let committed = snapshot_id.is_some();
        let mut out = RewriteOutcome {
            snapshot_id,
            operation,
            attempts,
            manifests_before: self.manifests_before,
            manifests_after: if committed { self.manifests_after } else { self.manifests_before },
            ..Default::default()
        };
        for (i, g) in self.groups.iter().enumerate() {
            if committed && self.accepted.get(i).copied().unwrap_or(false) {
                out.groups_committed += 1;
                out.files_removed += g.remove.len();
                out.files_added += g.add.len();
            } else {
                out.groups_dropped += 1;
                out.unreferenced.extend(g.add.iter().map(|f| f.file_path().to_owned()));
            }
        }
        out
    }
}

/// Manifests to merge: data manifests of one spec, packed in list order into bins of at most
/// `target` bytes. Returns bins of indexes into `manifests`; delete manifests are never merged.
pub fn merge_bins(manifests: &[ManifestFile], target: u64) -> Vec<Vec<usize>> {
    let mut by_spec: std::collections::BTreeMap<i32, Vec<usize>> = Default::default();
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
fn only_deletes(mf: &ManifestFile) -> bool {
    mf.content == ManifestContentType::Data
        && mf.added_files_count == Some(0)
        && mf.existing_files_count == Some(0)
}

/// Whether merging would leave fewer manifests than there are.
fn merge_reduces(manifests: &[ManifestFile], target: u64) -> bool {
    manifests.iter().any(only_deletes) || merge_bins(manifests, target).iter().any(|b| b.len() > 1)
}

impl Operation for Rewrite {
    type Outcome = RewriteOutcome;

    fn check(&mut self, base: &LoadedTable) -> Result<Check<RewriteOutcome>, CommitError> {
        if base.metadata.format_version() != FormatVersion::V2 {
            return Err(CommitError::Invalid {
                table: base.name.to_string(),
                message: format!(
                    "table maintenance supports format v2 tables; this one is v{}",
                    base.metadata.format_version() as u8
                ),
            });
        }
        Ok(Check::Proceed)
    }

    async fn validate(&mut self, base: &LoadedTable, file_io: &FileIO) -> Result<Check<RewriteOutcome>, CommitError> {
        let live = LiveFiles::read(&mut self.cache, file_io, base).await?;
        self.accepted = self
            .groups
            .iter()
            .map(|g| {
                !g.remove.is_empty()
                    && g.remove.iter().all(|p| {
                        live.data
                            .get(p)
                            .is_some_and(|f| !(g.reads_rows && live.has_deletes(f)))
                    })
            })
            .collect();
        let dropped = self.accepted.iter().filter(|a| !**a).count();
        if dropped > 0 {
            tracing::info!(table = %base.name, groups = dropped, "files changed meanwhile (no longer live, or delete files added); leaving those groups out");
        }
        self.manifests_before = live.manifests.len();
        let merge = self.merge_manifests && merge_reduces(&live.manifests, self.manifest_target_size);
        let any = self.accepted.iter().any(|a| *a);
        self.live = Some(live);
        if !any && !merge {
            return Ok(Check::Stop(self.outcome(None, None, 0)));
        }
        Ok(Check::Proceed)
    }

    async fn build(&mut self, base: &LoadedTable, file_io: &FileIO) -> Result<Staged, CommitError> {
        let live = match self.live.take() {
            Some(l) => l,
            None => LiveFiles::read(&mut self.cache, file_io, base).await?,
        };
        let (metadata, attempt_files, manifests_after) = self.build_inner(base, file_io, &live).await?;
        self.manifests_after = manifests_after;
        self.live = Some(live);
        Ok(Staged { metadata, attempt_files })
    }

    fn committed(&mut self, new: &LoadedTable, attempts: u32) -> RewriteOutcome {
        let s = new.metadata.current_snapshot();
        self.outcome(
            s.map(|s| s.snapshot_id()),
            s.map(|s| s.summary().operation.as_str().to_owned()),
            attempts,
        )
    }
}

impl Rewrite {
    async fn build_inner(
        &mut self,
        base: &LoadedTable,
        file_io: &FileIO,
        live: &LiveFiles,
    ) -> Result<(iceberg::spec::TableMetadata, Vec<String>, usize), MaintainError> {
        let m = &base.metadata;
        let table = base.name.to_string();
        let io = |what: &'static str, path: &str| {
            let (table, path) = (table.clone(), path.to_owned());
            move |e: iceberg::Error| MaintainError::io(&table, what, &path, e)
        };
        let snapshot_id = new_snapshot_id(m);
        let parent = m.current_snapshot().cloned();
        let sequence_number = m.last_sequence_number() + 1;
        let meta_dir = format!("{}/metadata", m.location());
        let attempt = uuid::Uuid::now_v7();
        let mut attempt_files = Vec::new();

        let mut removed: HashSet<&str> = HashSet::new();
        let mut added: Vec<DataFile> = Vec::new();
        for (g, ok) in self.groups.iter().zip(&self.accepted) {
            if *ok {
                removed.extend(g.remove.iter().map(String::as_str));
                added.extend(g.add.iter().cloned());
            }
        }
        let mut partitions: BTreeSet<String> = BTreeSet::new();
        let (mut removed_records, mut removed_size) = (0u64, 0u64);
        for p in &removed {
            let f = &live.data[*p];
            removed_records += f.entry.record_count();
            removed_size += f.entry.file_size_in_bytes();
            partitions.insert(f.partition_key());
        }
        let default_spec = m.default_partition_spec();
        let (mut added_records, mut added_size) = (0u64, 0u64);
        for f in &added {
            added_records += f.record_count();
            added_size += f.file_size_in_bytes();
            partitions.insert(partition_key(default_spec.spec_id(), f.partition()));
        }

        // Which manifests are rewritten: with merging, every bin of more than one manifest; in any
        // case every manifest that lists a removed file.
        let manifests = &live.manifests;
        let mut lists_removed = vec![false; manifests.len()];
        for (i, mf) in manifests.iter().enumerate() {
            if mf.content != ManifestContentType::Data || removed.is_empty() {
                continue;
            }
            let entries = self.cache.entries(file_io, &table, mf).await?;
            lists_removed[i] = entries.iter().any(|e| e.is_alive() && removed.contains(e.file_path()));
        }
        let dead: Vec<bool> = manifests.iter().map(|mf| self.merge_manifests && only_deletes(mf)).collect();
        let mut bins: Vec<Vec<usize>> = if self.merge_manifests {
            merge_bins(manifests, self.manifest_target_size)
                .into_iter()
                .map(|mut b| {
                    b.retain(|i| !dead[*i]);
                    b
                })
                .filter(|b| !b.is_empty() && (b.len() > 1 || lists_removed[b[0]]))
                .collect()
        } else {
            (0..manifests.len()).filter(|i| lists_removed[*i]).map(|i| vec![i]).collect()
        };
        bins.sort_by_key(|b| b[0]);
        let mut bin_at: HashMap<usize, usize> = HashMap::new();
        let mut in_bin = vec![false; manifests.len()];
        for (b, bin) in bins.iter().enumerate() {
            bin_at.insert(bin[0], b);
            for i in bin {
                in_bin[*i] = true;
            }
        }

        let mut new_list: Vec<ManifestFile> = Vec::new();
        let mut n = 0;
        let next_path = |n: &mut usize| {
            *n += 1;
            format!("{meta_dir}/{attempt}-m{}.avro", *n - 1)
        };
        if !added.is_empty() {
            let path = next_path(&mut n);
            let out = file_io.new_output(&path).map_err(io("writing manifest", &path))?;
            let mut w = ManifestWriterBuilder::new(
                out,
                Some(snapshot_id),
                m.current_schema().clone(),
                default_spec.as_ref().clone(),
            )
            .build_v2_data();
            for f in added.iter().cloned() {
                w.add_file(f, sequence_number).map_err(io("writing manifest", &path))?;
            }
            attempt_files.push(path.clone());
            new_list.push(w.write_manifest_file().await.map_err(io("writing manifest", &path))?);
        }
        let mut found = 0usize;
        let mut rewritten = 0usize;
        for (i, mf) in manifests.iter().enumerate() {
            if dead[i] {
                rewritten += 1;
                continue;
            }
            if !in_bin[i] {
                new_list.push(mf.clone());
                continue;
            }
            let Some(&b) = bin_at.get(&i) else { continue };
            let bin = &bins[b];
            let spec = m.partition_spec_by_id(mf.partition_spec_id).ok_or_else(|| {
                MaintainError::invalid(
                    &table,
                    format!("manifest {} names partition spec {}, which the table does not have", mf.manifest_path, mf.partition_spec_id),
                )
            })?;
            let path = next_path(&mut n);
            let out = file_io.new_output(&path).map_err(io("writing manifest", &path))?;
            let mut w = ManifestWriterBuilder::new(out, Some(snapshot_id), m.current_schema().clone(), spec.as_ref().clone())
                .build_v2_data();
            let mut entries_written = 0usize;
            for j in bin {
                rewritten += 1;
                let entries = self.cache.entries(file_io, &table, &manifests[*j]).await?;
                for e in entries.iter() {
                    if e.status() == ManifestStatus::Deleted {
                        continue;
                    }
                    let seq = e.sequence_number().ok_or_else(|| {
                        MaintainError::invalid(&table, format!("manifest {} lists {} without a sequence number", manifests[*j].manifest_path, e.file_path()))
                    })?;
                    let file_seq = e.file_sequence_number.or(Some(seq));
                    let df = e.data_file().clone();
                    if removed.contains(e.file_path()) {
                        found += 1;
                        w.add_delete_file(df, seq, file_seq).map_err(io("writing manifest", &path))?;
                    } else {
                        let added_by = e.snapshot_id().unwrap_or(manifests[*j].added_snapshot_id);
                        w.add_existing_file(df, added_by, seq, file_seq).map_err(io("writing manifest", &path))?;
                    }
                    entries_written += 1;
                }
            }
            attempt_files.push(path.clone());
            let written = w.write_manifest_file().await.map_err(io("writing manifest", &path))?;
            if entries_written > 0 {
                new_list.push(written);
            }
        }
        if found != removed.len() {
            return Err(MaintainError::invalid(
                &table,
                format!("validated {} files to remove but found {found} of them in the manifests", removed.len()),
            ));
        }

        let list_path = format!("{meta_dir}/snap-{snapshot_id}-1-{attempt}.avro");
        let out = file_io.new_output(&list_path).map_err(io("writing manifest list", &list_path))?;
        let mut list_writer = ManifestListWriter::v2(
            out.writer().await.map_err(io("writing manifest list", &list_path))?,
            snapshot_id,
            parent.as_ref().map(|p| p.snapshot_id()),
            sequence_number,
        );
        let manifests_after = new_list.len();
        list_writer
            .add_manifests(new_list.into_iter())
            .map_err(io("writing manifest list", &list_path))?;
        attempt_files.push(list_path.clone());
        list_writer.close().await.map_err(io("writing manifest list", &list_path))?;

        let operation = match self.task {
            Task::Compact => SnapshotOperation::Replace,
            Task::Retention if added.is_empty() => SnapshotOperation::Delete,
            Task::Retention => SnapshotOperation::Overwrite,
        };
        let live_records: u64 = live.data.values().map(|f| f.entry.record_count()).sum();
        let live_size: u64 = live.data.values().map(|f| f.entry.file_size_in_bytes()).sum();
        let mut summary: HashMap<String, String> = HashMap::new();
        let mut put = |k: &str, v: u64| {
            summary.insert(k.to_owned(), v.to_string());
        };
        if !added.is_empty() {
            put("added-data-files", added.len() as u64);
            put("added-records", added_records);
            put("added-files-size", added_size);
        }
        if !removed.is_empty() {
            put("deleted-data-files", removed.len() as u64);
            put("deleted-records", removed_records);
            put("removed-files-size", removed_size);
        }
        put("changed-partition-count", partitions.len() as u64);
        put("total-data-files", (live.data.len() - removed.len() + added.len()) as u64);
        put("total-records", live_records - removed_records + added_records);
        put("total-files-size", live_size - removed_size + added_size);
        put("total-delete-files", live.delete_files);
        put("total-position-deletes", live.position_deletes);
        put("total-equality-deletes", live.equality_deletes);
        put("manifests-created", (manifests_after + rewritten).saturating_sub(manifests.len()) as u64);
        put("manifests-kept", (manifests.len() - rewritten) as u64);
        put("manifests-replaced", rewritten as u64);
        summary.insert(SUMMARY_TASK.to_owned(), self.task.name().to_owned());
        summary.insert("floe.version".to_owned(), env!("CARGO_PKG_VERSION").to_owned());

        let snapshot = Snapshot::builder()
            .with_snapshot_id(snapshot_id)
            .with_parent_snapshot_id(parent.as_ref().map(|p| p.snapshot_id()))
            .with_sequence_number(sequence_number)
            .with_timestamp_ms(super::now_ms().max(m.last_updated_ms() + 1))
            .with_manifest_list(list_path)
            .with_summary(Summary {
                operation,
                additional_properties: summary,
            })
            .with_schema_id(m.current_schema_id())
            .build();
        let metadata = TableMetadataBuilder::new_from_metadata(m.clone(), Some(base.metadata_location.clone()))
            .add_snapshot(snapshot)
            .and_then(|b| {
                // The branch keeps its retention settings.
                let retention = super::refs(m).remove("main").map(|r| r.retention).unwrap_or(
                    SnapshotRetention::Branch {
                        min_snapshots_to_keep: None,
                        max_snapshot_age_ms: None,
                        max_ref_age_ms: None,
                    },
                );
                b.set_ref("main", SnapshotReference::new(snapshot_id, retention))
            })
            .and_then(|b| b.build())
            .map_err(|e| MaintainError::invalid(&table, e.to_string()))?
            .metadata;
        Ok((metadata, attempt_files, manifests_after))
    }
}
