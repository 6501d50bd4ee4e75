//! Snapshot expiry: removes old snapshots from the metadata, then deletes the manifest lists,
//! manifests, data and statistics files that no kept snapshot can reach.
//!
//! Never expired: the current snapshot, any snapshot a branch or tag points at, the last
//! `retain_last` snapshots of every branch (or the branch's own `min-snapshots-to-keep`, if
//! larger), and anything newer than the cutoff. Table properties, and with them every pipeline's
//! ledger, are carried over unchanged (DESIGN.md §1).
//!
//! Files are deleted only after the commit, and only if unreachable from every snapshot of the
//! committed metadata. Commits that land later only reference files reachable from the current
//! snapshot (or new ones), so they cannot need a deleted file.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use iceberg::io::FileIO;
use iceberg::spec::{SnapshotRef, SnapshotReference, SnapshotRetention, TableMetadata, TableMetadataBuilder};

use super::{ManifestCache, MaintainError};
use crate::catalog::LoadedTable;
use crate::commit::{Check, CommitEngine, CommitError, Operation, Staged};

#[derive(Debug, Clone)]
pub struct ExpireOptions {
    /// Snapshots older than this may go.
    pub older_than: Duration,
    /// Always keep at least this many of each branch's latest snapshots (at least 1).
    pub retain_last: usize,
    pub dry_run: bool,
}

/// The snapshots to expire, oldest first.
pub fn select(
    m: &TableMetadata,
    refs: &HashMap<String, SnapshotReference>,
    cutoff_ms: i64,
    retain_last: usize,
) -> Vec<i64> {
    let mut keep: HashSet<i64> = HashSet::new();
    keep.extend(m.current_snapshot_id());
    for r in refs.values() {
        keep.insert(r.snapshot_id);
        if let SnapshotRetention::Branch { min_snapshots_to_keep, .. } = &r.retention {
            let n = retain_last.max(min_snapshots_to_keep.unwrap_or(1).max(1) as usize);
            let mut at = m.snapshot_by_id(r.snapshot_id);
            for _ in 0..n {
                let Some(s) = at else { break };
                keep.insert(s.snapshot_id());
                at = s.parent_snapshot_id().and_then(|p| m.snapshot_by_id(p));
            }
        }
    }
    let mut expired: Vec<(i64, i64)> = m
        .snapshots()
        .filter(|s| s.timestamp_ms() < cutoff_ms && !keep.contains(&s.snapshot_id()))
        .map(|s| (s.timestamp_ms(), s.snapshot_id()))
        .collect();
    expired.sort();
    expired.into_iter().map(|(_, id)| id).collect()
}

/// The commit removing snapshots from the metadata.
struct Expire {
    cutoff_ms: i64,
    retain_last: usize,
    removed: Vec<SnapshotRef>,
}

/// What the metadata commit did.
struct Expired {
    removed: Vec<SnapshotRef>,
    metadata: Option<TableMetadata>,
}

impl Operation for Expire {
    type Outcome = Expired;

    fn check(&mut self, base: &LoadedTable) -> Result<Check<Expired>, CommitError> {
        let m = &base.metadata;
        let ids = select(m, &super::refs(m), self.cutoff_ms, self.retain_last);
        self.removed = ids.iter().filter_map(|id| m.snapshot_by_id(*id).cloned()).collect();
        if self.removed.is_empty() {
            return Ok(Check::Stop(Expired { removed: Vec::new(), metadata: None }));
        }
        Ok(Check::Proceed)
    }

    async fn build(&mut self, base: &LoadedTable, _: &FileIO) -> Result<Staged, CommitError> {
        let ids: Vec<i64> = self.removed.iter().map(|s| s.snapshot_id()).collect();
        let mut b = TableMetadataBuilder::new_from_metadata(base.metadata.clone(), Some(base.metadata_location.clone()))
            .remove_snapshots(&ids);
        for id in &ids {
            b = b.remove_statistics(*id).remove_partition_statistics(*id);
        }
        let metadata = b
            .build()
            .map_err(|e| CommitError::Invalid { table: base.name.to_string(), message: e.to_string() })?
            .metadata;
        Ok(Staged { metadata, attempt_files: Vec::new() })
    }

    fn committed(&mut self, new: &LoadedTable, _: u32) -> Expired {
        Expired {
            removed: std::mem::take(&mut self.removed),
            metadata: Some(new.metadata.clone()),
        }
    }
}

/// What expiry did or, with `dry_run`, would do.
#[derive(Debug, Clone, Default)]
pub struct ExpireReport {
    pub table: String,
    pub dry_run: bool,
    pub snapshots_before: usize,
    pub expired: Vec<i64>,
    pub manifest_lists: Vec<String>,
    pub manifests: Vec<String>,
    pub data_files: Vec<String>,
    pub other_files: Vec<String>,
    /// Files that could not be deleted (left for remove-orphans).
    pub failed: usize,
}

impl fmt::Display for ExpireReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (verb, del) = if self.dry_run { ("would expire", "would delete") } else { ("expired", "deleted") };
        writeln!(
            f,
            "table {}: {verb} {} of {} snapshots; {del} {} manifest lists, {} manifests, {} data files, {} statistics files",
            self.table,
            self.expired.len(),
            self.snapshots_before,
            self.manifest_lists.len(),
            self.manifests.len(),
            self.data_files.len(),
            self.other_files.len()
        )?;
        if self.dry_run {
            for id in &self.expired {
                writeln!(f, "  snapshot {id}")?;
            }
            for p in self.manifest_lists.iter().chain(&self.manifests).chain(&self.data_files).chain(&self.other_files) {
                writeln!(f, "  {p}")?;
            }
        }
        if self.failed > 0 {
            writeln!(f, "{} files could not be deleted; remove-orphans will retry", self.failed)?;
        }
        Ok(())
    }
}

/// Expires snapshots of the engine's table and deletes what only they reached.
pub async fn expire_snapshots(engine: &CommitEngine, opts: &ExpireOptions) -> Result<ExpireReport, MaintainError> {
    let cutoff_ms = super::now_ms() - opts.older_than.as_millis() as i64;
    let retain_last = opts.retain_last.max(1);
    let io = engine.catalog().file_io();
    let table = engine.load().await?;
    let mut report = ExpireReport {
        table: table.name.to_string(),
        dry_run: opts.dry_run,
        snapshots_before: table.metadata.snapshots().len(),
        ..Default::default()
    };
    let (removed, kept_metadata) = if opts.dry_run {
        let m = &table.metadata;
        let ids = select(m, &super::refs(m), cutoff_ms, retain_last);
        let removed: Vec<SnapshotRef> = ids.iter().filter_map(|id| m.snapshot_by_id(*id).cloned()).collect();
        (removed, m.clone())
    } else {
        let mut op = Expire { cutoff_ms, retain_last, removed: Vec::new() };
        let out = engine.commit(&mut op).await?;
        match out.metadata {
            Some(m) => (out.removed, m),
            None => return Ok(report),
        }
    };
    report.expired = removed.iter().map(|s| s.snapshot_id()).collect();
    let removed_ids: HashSet<i64> = report.expired.iter().copied().collect();
    let kept: Vec<SnapshotRef> = kept_metadata
        .snapshots()
        .filter(|s| !removed_ids.contains(&s.snapshot_id()))
        .cloned()
        .collect();
    let name = table.name.to_string();
    let mut cache = ManifestCache::default();
    let reachable = Reach::of(&mut cache, io, &kept_metadata, &name, &kept, false).await?;
    let gone = Reach::of(&mut cache, io, &table.metadata, &name, &removed, true).await?;
    let unreachable = |gone: &HashSet<String>, kept: &HashSet<String>| {
        let mut v: Vec<String> = gone.difference(kept).cloned().collect();
        v.sort();
        v
    };
    report.manifest_lists = unreachable(&gone.lists, &reachable.lists);
    report.manifests = unreachable(&gone.manifests, &reachable.manifests);
    report.data_files = unreachable(&gone.files, &reachable.files);
    // Statistics files of the removed snapshots (the base metadata still lists them).
    let kept_stats: HashSet<String> = kept_metadata
        .statistics_iter()
        .map(|s| s.statistics_path.clone())
        .chain(kept_metadata.partition_statistics_iter().map(|s| s.statistics_path.clone()))
        .collect();
    report.other_files = removed
        .iter()
        .flat_map(|s| {
            let id = s.snapshot_id();
            table
                .metadata
                .statistics_for_snapshot(id)
                .map(|x| x.statistics_path.clone())
                .into_iter()
                .chain(table.metadata.partition_statistics_for_snapshot(id).map(|x| x.statistics_path.clone()))
        })
        .filter(|p| !kept_stats.contains(p))
        .collect();
    if opts.dry_run {
        return Ok(report);
    }
    // Data files first, manifest lists last: a crash in between leaves files that nothing
    // references, which remove-orphans finds, rather than references to missing files.
    for path in report
        .data_files
        .iter()
        .chain(&report.other_files)
        .chain(&report.manifests)
        .chain(&report.manifest_lists)
    {
        if let Err(e) = io.delete(path).await {
            tracing::warn!(file = %path, error = %e, "could not delete an expired file; remove-orphans will");
            report.failed += 1;
        }
    }
    tracing::info!(table = %name, snapshots = report.expired.len(), data_files = report.data_files.len(), manifests = report.manifests.len(), "snapshots expired");
    Ok(report)
}

/// Everything some snapshots reach.
#[derive(Default)]
pub(crate) struct Reach {
    pub lists: HashSet<String>,
    pub manifests: HashSet<String>,
    pub files: HashSet<String>,
}

impl Reach {
    /// `all_entries`: also files of DELETED entries (candidates for deletion); otherwise only live
    /// files (what a reader of these snapshots can need).
    pub(crate) async fn of(
        cache: &mut ManifestCache,
        io: &FileIO,
        m: &TableMetadata,
        table: &str,
        snapshots: &[SnapshotRef],
        all_entries: bool,
    ) -> Result<Reach, MaintainError> {
        let mut reach = Reach::default();
        let mut manifests = Vec::new();
        for s in snapshots {
            reach.lists.insert(s.manifest_list().to_owned());
            for mf in ManifestCache::list_once(io, m, table, s).await? {
                if !reach.manifests.contains(&mf.manifest_path) {
                    reach.manifests.insert(mf.manifest_path.clone());
                    manifests.push(mf);
                }
            }
        }
        for mf in &manifests {
            for e in cache.entries(io, table, mf).await?.iter() {
                if all_entries || e.is_alive() {
                    reach.files.insert(e.file_path().to_owned());
                }
            }
        }
        Ok(reach)
    }
}

#[cfg(test)]
mod tests {
    use iceberg::spec::{Operation as Op, Snapshot, Summary};

    use super::*;

    fn metadata(chain: &[(i64, i64)]) -> TableMetadata {
        // (id, timestamp) in order; each the parent of the next; the last is main.
        let schema = iceberg::spec::Schema::builder().build().unwrap();
        let mut b = TableMetadataBuilder::new(
            schema,
            iceberg::spec::UnboundPartitionSpec::builder().build(),
            iceberg::spec::SortOrder::unsorted_order(),
            "file:///tmp/t".into(),
            iceberg::spec::FormatVersion::V2,
            HashMap::new(),
        )
        .unwrap();
        let mut parent = None;
        for (i, (id, ts)) in chain.iter().enumerate() {
            let s = Snapshot::builder()
                .with_snapshot_id(*id)
                .with_parent_snapshot_id(parent)
                .with_sequence_number(i as i64 + 1)
                .with_timestamp_ms(*ts)
                .with_manifest_list(format!("file:///tmp/t/metadata/snap-{id}.avro"))
                .with_summary(Summary { operation: Op::Append, additional_properties: HashMap::new() })
                .with_schema_id(0)
                .build();
            b = b.set_branch_snapshot(s, "main").unwrap();
            parent = Some(*id);
        }
        b.build().unwrap().metadata
    }

    #[test]
    fn keeps_current_recent_and_last_n() {
        let now = 1_000_000_000_000;
        let m = metadata(&[(1, now - 100), (2, now - 90), (3, now - 80), (4, now - 5), (5, now - 1)]);
        let refs = crate::maintain::refs(&m);
        assert_eq!(refs["main"].snapshot_id, 5);
        // Cutoff now-10: 1..3 are old; retain 2 keeps 5 and 4 anyway.
        assert_eq!(select(&m, &refs, now - 10, 2), vec![1, 2, 3]);
        // Retain 4: keeps 2..5.
        assert_eq!(select(&m, &refs, now - 10, 4), vec![1]);
        // Cutoff in the future: all but the current one (retain 1).
        assert_eq!(select(&m, &refs, now + 10, 1), vec![1, 2, 3, 4]);
        // A tag keeps its snapshot.
        let mut refs = refs;
        refs.insert("t".into(), SnapshotReference::new(2, SnapshotRetention::Tag { max_ref_age_ms: None }));
        assert_eq!(select(&m, &refs, now + 10, 1), vec![1, 3, 4]);
    }
}
