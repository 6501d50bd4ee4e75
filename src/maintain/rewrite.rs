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
use iceberg::spec::{DataFile, FormatVersion, ManifestContentType, ManifestFile, Operation as SnapshotOperation};

use super::{LiveFiles, ManifestCache, MaintainError, SUMMARY_TASK, partition_key};
use crate::catalog::LoadedTable;
use crate::commit::{Check, CommitError, Operation, SnapshotWriter, Staged, only_deletes};
pub use crate::commit::{MANIFEST_TARGET_SIZE, merge_bins};

/// Files to remove and the files that replace them; committed together or not at all.
#[derive(Debug, Clone, Default)]
pub struct Group {
    pub remove: Vec<String>,
    pub add: Vec<DataFile>,
    /// The partition spec `add` was written (partitioned) with, at planning time. The group
    /// commits only while that is still the table's default spec, and its files are labelled
    /// with it: a partitioning change made meanwhile (day -> hour, bucket 16 -> 32) would
    /// otherwise label files with partition values of another spec.
    pub spec_id: i32,
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
    /// Groups left out because the table's default partition spec is no longer theirs.
    spec_changed: usize,
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
    /// Groups whose files were no longer live (or gained delete files) in the table, or whose
    /// partition spec is no longer the table's default (counted in `groups_spec_changed` too).
    pub groups_dropped: usize,
    pub groups_spec_changed: usize,
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
            spec_changed: 0,
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
            groups_spec_changed: self.spec_changed,
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
        let default_spec = base.metadata.default_partition_spec_id();
        let spec_ok = |g: &Group| g.add.is_empty() || g.spec_id == default_spec;
        self.spec_changed = self.groups.iter().filter(|g| !spec_ok(g)).count();
        self.accepted = self
            .groups
            .iter()
            .map(|g| {
                !g.remove.is_empty()
                    && spec_ok(g)
                    && g.remove.iter().all(|p| {
                        live.data
                            .get(p)
                            .is_some_and(|f| !(g.reads_rows && live.has_deletes(f)))
                    })
            })
            .collect();
        let dropped = self.accepted.iter().filter(|a| !**a).count();
        if self.spec_changed > 0 {
            tracing::info!(table = %base.name, groups = self.spec_changed, spec = default_spec, "the partition spec changed since the files were written; leaving those groups out (the next run rewrites them with the new spec)");
        }
        if dropped > self.spec_changed {
            tracing::info!(table = %base.name, groups = dropped - self.spec_changed, "files changed meanwhile (no longer live, or delete files added); leaving those groups out");
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
        let (staged, manifests_after) = self.build_inner(base, file_io, &live).await?;
        self.manifests_after = manifests_after;
        self.live = Some(live);
        Ok(staged)
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
    ) -> Result<(crate::commit::Staged, usize), MaintainError> {
        let m = &base.metadata;
        let table = base.name.to_string();
        let mut w = SnapshotWriter::new(base)?;

        let mut removed: HashSet<&str> = HashSet::new();
        let mut added: Vec<DataFile> = Vec::new();
        let mut added_spec = None;
        for (g, ok) in self.groups.iter().zip(&self.accepted) {
            if *ok {
                removed.extend(g.remove.iter().map(String::as_str));
                added.extend(g.add.iter().cloned());
                if !g.add.is_empty() {
                    added_spec = Some(g.spec_id);
                }
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
        // Validated: every accepted group that adds files was written with the default spec.
        let added_spec = added_spec.unwrap_or(m.default_partition_spec_id());
        let (mut added_records, mut added_size) = (0u64, 0u64);
        for f in &added {
            added_records += f.record_count();
            added_size += f.file_size_in_bytes();
            partitions.insert(partition_key(added_spec, f.partition()));
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
        if !added.is_empty() {
            new_list.push(w.write_added(file_io, added_spec, added.clone()).await?);
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
            let bin: Vec<&ManifestFile> = bins[b].iter().map(|j| &manifests[*j]).collect();
            rewritten += bin.len();
            let out = w.rewrite(file_io, &mut self.cache, &bin, &removed).await?;
            found += out.removed;
            new_list.extend(out.manifest);
        }
        if found != removed.len() {
            return Err(MaintainError::invalid(
                &table,
                format!("validated {} files to remove but found {found} of them in the manifests", removed.len()),
            ));
        }
        let manifests_after = new_list.len();

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
        let staged = w.finish(file_io, new_list, operation, summary, HashMap::new()).await?;
        Ok((staged, manifests_after))
    }
}
