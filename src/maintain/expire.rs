//! Snapshot expiry: removes old snapshots (and refs past their age) from the metadata, then
//! deletes the manifest lists, manifests, data and statistics files that no kept snapshot can
//! reach.
//!
//! What is kept follows Iceberg's rules, so that floe honours what Trino, Spark or pyiceberg set
//! (DESIGN.md §8):
//! - a branch or tag older than its `max-ref-age-ms` (default: the table's
//!   `history.expire.max-ref-age-ms`, else forever) is removed, except `main`;
//! - every kept tag keeps its snapshot; every kept branch keeps its ancestors while fewer than its
//!   `min-snapshots-to-keep` are kept or they are younger than its `max-snapshot-age-ms` (each
//!   defaulting to the table's `history.expire.min-snapshots-to-keep` /
//!   `history.expire.max-snapshot-age-ms`, which an explicit `retain_last` / `older_than`
//!   overrides, as Java's `expireOlderThan` / `retainLast` do);
//! - a snapshot no kept ref reaches is kept while younger than the default age.
//!
//! Table properties, and with them every pipeline's ledger, are carried over unchanged
//! (DESIGN.md §1). Files are deleted only after the commit, and only if unreachable from every
//! snapshot of the committed metadata. Commits that land later only reference files reachable
//! from the current snapshot (or new ones), so they cannot need a deleted file. Manifests are
//! read one at a time and only their paths kept, never all entries at once.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use iceberg::io::FileIO;
use iceberg::spec::{SnapshotRef, SnapshotReference, SnapshotRetention, TableMetadata, TableMetadataBuilder};

use super::{ManifestCache, MaintainError};
use crate::catalog::LoadedTable;
use crate::commit::{Check, CommitEngine, CommitError, MAIN, Operation, Staged};

/// Table property: the default age past which snapshots may be expired.
pub const PROP_MAX_SNAPSHOT_AGE_MS: &str = "history.expire.max-snapshot-age-ms";
/// Table property: the default number of each branch's latest snapshots always kept.
pub const PROP_MIN_SNAPSHOTS_TO_KEEP: &str = "history.expire.min-snapshots-to-keep";
/// Table property: the default age past which branches and tags (but `main`) are removed.
pub const PROP_MAX_REF_AGE_MS: &str = "history.expire.max-ref-age-ms";

/// The snapshot age floe expires at when neither the caller nor the table says: an hour of
/// time travel, while the metadata of a table committed to every second stays small.
pub const DEFAULT_MAX_SNAPSHOT_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct ExpireOptions {
    /// Snapshots older than this may go. Overrides the table's
    /// `history.expire.max-snapshot-age-ms`; None: that property, else
    /// [`DEFAULT_MAX_SNAPSHOT_AGE`]. A branch's own `max-snapshot-age-ms` wins over both.
    pub older_than: Option<Duration>,
    /// Keep at least this many of each branch's latest snapshots. Overrides the table's
    /// `history.expire.min-snapshots-to-keep`; None: that property, else 1. A branch's own
    /// `min-snapshots-to-keep` wins over both.
    pub retain_last: Option<usize>,
    pub dry_run: bool,
}

/// The defaults every ref falls back to, resolved against the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub now_ms: i64,
    /// Snapshots older than this (ms since the epoch) may go.
    pub cutoff_ms: i64,
    pub min_snapshots: usize,
    /// Refs older than this (ms) are removed; None: never.
    pub max_ref_age_ms: Option<i64>,
}

impl Policy {
    pub fn of(m: &TableMetadata, table: &str, opts: &ExpireOptions, now_ms: i64) -> Result<Policy, MaintainError> {
        let prop = |key: &str| -> Result<Option<i64>, MaintainError> {
            match m.properties().get(key) {
                None => Ok(None),
                Some(v) => match v.trim().parse::<i64>() {
                    Ok(n) if n >= 0 => Ok(Some(n)),
                    _ => Err(MaintainError::invalid(
                        table,
                        format!("table property {key} = {v:?} is not a whole number >= 0; fix or remove it (ALTER TABLE ... SET PROPERTIES)"),
                    )),
                },
            }
        };
        let max_age_ms = match opts.older_than {
            Some(d) => d.as_millis().min(i64::MAX as u128) as i64,
            None => prop(PROP_MAX_SNAPSHOT_AGE_MS)?.unwrap_or(DEFAULT_MAX_SNAPSHOT_AGE.as_millis() as i64),
        };
        let min_snapshots = match opts.retain_last {
            Some(n) => n,
            None => prop(PROP_MIN_SNAPSHOTS_TO_KEEP)?.unwrap_or(1) as usize,
        };
        Ok(Policy {
            now_ms,
            cutoff_ms: now_ms.saturating_sub(max_age_ms),
            min_snapshots: min_snapshots.max(1),
            max_ref_age_ms: prop(PROP_MAX_REF_AGE_MS)?,
        })
    }
}

/// What expiry removes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Snapshots, oldest first.
    pub snapshots: Vec<i64>,
    /// Branches and tags past their age, sorted.
    pub refs: Vec<String>,
}

/// Iceberg's expiry rules (see the module documentation) applied to `m`.
pub fn select(m: &TableMetadata, refs: &HashMap<String, SnapshotReference>, policy: &Policy) -> Selection {
    let mut removed_refs = Vec::new();
    let mut kept_refs = Vec::new();
    for (name, r) in refs {
        let Some(s) = m.snapshot_by_id(r.snapshot_id) else {
            removed_refs.push(name.clone());
            continue;
        };
        let max_age = match &r.retention {
            SnapshotRetention::Branch { max_ref_age_ms, .. } | SnapshotRetention::Tag { max_ref_age_ms } => {
                max_ref_age_ms.or(policy.max_ref_age_ms)
            }
        };
        if name != MAIN && max_age.is_some_and(|age| policy.now_ms.saturating_sub(s.timestamp_ms()) > age) {
            removed_refs.push(name.clone());
        } else {
            kept_refs.push(r);
        }
    }
    let mut keep: HashSet<i64> = HashSet::new();
    keep.extend(m.current_snapshot_id());
    let mut reached: HashSet<i64> = HashSet::new();
    for r in &kept_refs {
        keep.insert(r.snapshot_id);
        reached.insert(r.snapshot_id);
        let SnapshotRetention::Branch { min_snapshots_to_keep, max_snapshot_age_ms, .. } = &r.retention else {
            continue;
        };
        let min = min_snapshots_to_keep.map(|n| n.max(1) as usize).unwrap_or(policy.min_snapshots);
        let cutoff = max_snapshot_age_ms.map(|a| policy.now_ms.saturating_sub(a)).unwrap_or(policy.cutoff_ms);
        let mut kept = 0usize;
        let mut stopped = false;
        let mut at = m.snapshot_by_id(r.snapshot_id);
        while let Some(s) = at {
            reached.insert(s.snapshot_id());
            if !stopped && (kept < min || s.timestamp_ms() >= cutoff) {
                keep.insert(s.snapshot_id());
                kept += 1;
            } else {
                stopped = true;
            }
            at = s.parent_snapshot_id().and_then(|p| m.snapshot_by_id(p));
        }
    }
    let mut expired: Vec<(i64, i64)> = m
        .snapshots()
        .filter(|s| !keep.contains(&s.snapshot_id()))
        // A snapshot no kept ref reaches goes by the default age alone.
        .filter(|s| reached.contains(&s.snapshot_id()) || s.timestamp_ms() < policy.cutoff_ms)
        .map(|s| (s.timestamp_ms(), s.snapshot_id()))
        .collect();
    expired.sort();
    removed_refs.sort();
    Selection {
        snapshots: expired.into_iter().map(|(_, id)| id).collect(),
        refs: removed_refs,
    }
}

/// The commit removing snapshots and refs from the metadata.
struct Expire {
    opts: ExpireOptions,
    now_ms: i64,
    removed: Vec<SnapshotRef>,
    removed_refs: Vec<String>,
}

/// What the metadata commit did.
struct Expired {
    removed: Vec<SnapshotRef>,
    removed_refs: Vec<String>,
    metadata: Option<TableMetadata>,
}

impl Operation for Expire {
    type Outcome = Expired;

    fn check(&mut self, base: &LoadedTable) -> Result<Check<Expired>, CommitError> {
        let m = &base.metadata;
        let policy = Policy::of(m, &base.name.to_string(), &self.opts, self.now_ms)?;
        let selection = select(m, &super::refs(m), &policy);
        self.removed = selection.snapshots.iter().filter_map(|id| m.snapshot_by_id(*id).cloned()).collect();
        self.removed_refs = selection.refs;
        if self.removed.is_empty() && self.removed_refs.is_empty() {
            return Ok(Check::Stop(Expired { removed: Vec::new(), removed_refs: Vec::new(), metadata: None }));
        }
        Ok(Check::Proceed)
    }

    async fn build(&mut self, base: &LoadedTable, _: &FileIO) -> Result<Staged, CommitError> {
        let ids: Vec<i64> = self.removed.iter().map(|s| s.snapshot_id()).collect();
        let mut b = TableMetadataBuilder::new_from_metadata(base.metadata.clone(), Some(base.metadata_location.clone()));
        for name in &self.removed_refs {
            b = b.remove_ref(name);
        }
        let mut b = b.remove_snapshots(&ids);
        for id in &ids {
            b = b.remove_statistics(*id).remove_partition_statistics(*id);
        }
        let metadata = b
            .build()
            .map_err(|e| CommitError::Invalid { table: base.name.to_string(), message: e.to_string() })?
            .metadata;
        // The same change to the refs as the builder's: the removed ones gone, and any whose
        // snapshot is gone.
        let mut refs = crate::catalog::RefMap::clone(base.refs());
        refs.retain(|name, r| !self.removed_refs.contains(name) && metadata.snapshot_by_id(r.snapshot_id).is_some());
        Ok(Staged { metadata, attempt_files: Vec::new(), refs: Some(std::sync::Arc::new(refs)) })
    }

    fn committed(&mut self, new: &LoadedTable, _: u32) -> Expired {
        Expired {
            removed: std::mem::take(&mut self.removed),
            removed_refs: std::mem::take(&mut self.removed_refs),
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
    /// Branches and tags removed because they were older than their `max-ref-age-ms`.
    pub expired_refs: Vec<String>,
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
        if !self.expired_refs.is_empty() {
            writeln!(f, "{} refs past their max-ref-age-ms: {}", if self.dry_run { "would remove" } else { "removed" }, self.expired_refs.join(", "))?;
        }
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
    expire_with_progress(engine, opts, &crate::progress::Progress::hidden()).await
}

/// [`expire_snapshots`], counting the expired files deleted in `progress`.
pub async fn expire_with_progress(
    engine: &CommitEngine,
    opts: &ExpireOptions,
    progress: &crate::progress::Progress,
) -> Result<ExpireReport, MaintainError> {
    let result = expire_inner(engine, opts, progress).await;
    progress.finish();
    result
}

async fn expire_inner(
    engine: &CommitEngine,
    opts: &ExpireOptions,
    progress: &crate::progress::Progress,
) -> Result<ExpireReport, MaintainError> {
    let now_ms = super::now_ms();
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
        let policy = Policy::of(m, &report.table, opts, now_ms)?;
        let selection = select(m, &super::refs(m), &policy);
        let removed: Vec<SnapshotRef> = selection.snapshots.iter().filter_map(|id| m.snapshot_by_id(*id).cloned()).collect();
        report.expired_refs = selection.refs;
        (removed, m.clone())
    } else {
        let mut op = Expire { opts: opts.clone(), now_ms, removed: Vec::new(), removed_refs: Vec::new() };
        let out = engine.commit(&mut op).await?;
        report.expired_refs = out.removed_refs;
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
    progress.set_total(
        (report.data_files.len() + report.other_files.len() + report.manifests.len() + report.manifest_lists.len()) as u64,
    );
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
        progress.inc(1);
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
    /// files (what a reader of these snapshots can need). Manifest lists and manifests are read
    /// one at a time and dropped once their paths are taken: only the sets of paths are held,
    /// never every entry of the history (`_cache` is not filled for that reason).
    pub(crate) async fn of(
        _cache: &mut ManifestCache,
        io: &FileIO,
        m: &TableMetadata,
        table: &str,
        snapshots: &[SnapshotRef],
        all_entries: bool,
    ) -> Result<Reach, MaintainError> {
        let mut reach = Reach::default();
        for s in snapshots {
            reach.lists.insert(s.manifest_list().to_owned());
            for mf in crate::commit::read_manifest_list(io, m, table, s).await? {
                if !reach.manifests.insert(mf.manifest_path.clone()) {
                    continue;
                }
                for e in crate::commit::read_manifest(io, table, &mf).await? {
                    if all_entries || e.is_alive() {
                        reach.files.insert(e.file_path().to_owned());
                    }
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

    fn policy(now: i64, cutoff: i64, min: usize) -> Policy {
        Policy { now_ms: now, cutoff_ms: cutoff, min_snapshots: min, max_ref_age_ms: None }
    }

    #[test]
    fn keeps_current_recent_and_last_n() {
        let now = 1_000_000_000_000;
        let m = metadata(&[(1, now - 100), (2, now - 90), (3, now - 80), (4, now - 5), (5, now - 1)]);
        let refs = crate::maintain::refs(&m);
        assert_eq!(refs["main"].snapshot_id, 5);
        let ids = |refs: &HashMap<String, SnapshotReference>, p: Policy| select(&m, refs, &p).snapshots;
        // Cutoff now-10: 1..3 are old; retain 2 keeps 5 and 4 anyway.
        assert_eq!(ids(&refs, policy(now, now - 10, 2)), vec![1, 2, 3]);
        // Retain 4: keeps 2..5.
        assert_eq!(ids(&refs, policy(now, now - 10, 4)), vec![1]);
        // Cutoff in the future: all but the current one (retain 1).
        assert_eq!(ids(&refs, policy(now, now + 10, 1)), vec![1, 2, 3, 4]);
        // A tag keeps its snapshot.
        let mut refs = refs;
        refs.insert("t".into(), SnapshotReference::new(2, SnapshotRetention::Tag { max_ref_age_ms: None }));
        assert_eq!(ids(&refs, policy(now, now + 10, 1)), vec![1, 3, 4]);
    }

    #[test]
    fn ref_retention_overrides_the_defaults() {
        let now = 1_000_000_000_000;
        let m = metadata(&[(1, now - 100), (2, now - 90), (3, now - 80), (4, now - 5), (5, now - 1)]);
        let mut refs = crate::maintain::refs(&m);
        // main keeps 3 snapshots by its own setting, though the default says 1.
        refs.insert("main".into(), SnapshotReference::new(5, SnapshotRetention::branch(Some(3), None, None)));
        assert_eq!(select(&m, &refs, &policy(now, now + 10, 1)).snapshots, vec![1, 2]);
        // main's own max-snapshot-age (85 ms) keeps 3..5 though the default cutoff is later.
        refs.insert("main".into(), SnapshotReference::new(5, SnapshotRetention::branch(None, Some(85), None)));
        assert_eq!(select(&m, &refs, &policy(now, now + 10, 1)).snapshots, vec![1, 2]);
        // A branch at 2 keeps 2 and its ancestor 1 by its min-snapshots-to-keep.
        refs.insert("b".into(), SnapshotReference::new(2, SnapshotRetention::branch(Some(2), None, None)));
        assert_eq!(select(&m, &refs, &policy(now, now + 10, 1)).snapshots, Vec::<i64>::new());
        // A tag past its max-ref-age goes, and then its snapshot may go too; main never goes.
        refs.remove("b");
        refs.insert("old".into(), SnapshotReference::new(1, SnapshotRetention::Tag { max_ref_age_ms: Some(50) }));
        refs.insert("main".into(), SnapshotReference::new(5, SnapshotRetention::branch(None, None, Some(0))));
        let s = select(&m, &refs, &policy(now, now - 10, 1));
        assert_eq!(s.refs, vec!["old".to_owned()]);
        assert_eq!(s.snapshots, vec![1, 2, 3]);
        // The table-wide max-ref-age applies to refs without their own.
        refs.insert("old".into(), SnapshotReference::new(1, SnapshotRetention::Tag { max_ref_age_ms: None }));
        let p = Policy { max_ref_age_ms: Some(1000), ..policy(now, now - 10, 1) };
        assert_eq!(select(&m, &refs, &p).snapshots, vec![2, 3], "a young enough tag keeps 1");
        let p = Policy { max_ref_age_ms: Some(10), ..policy(now, now - 10, 1) };
        assert_eq!(select(&m, &refs, &p).refs, vec!["old".to_owned()]);
    }

    #[test]
    fn snapshots_off_every_branch_go_by_the_default_age() {
        let now = 1_000_000_000_000;
        // 1 <- 2 <- 3 (main); 9 is a young snapshot no ref reaches (a branch removed earlier).
        let mut m = metadata(&[(1, now - 100), (2, now - 90), (3, now - 1)]);
        let s = iceberg::spec::Snapshot::builder()
            .with_snapshot_id(9)
            .with_parent_snapshot_id(Some(1))
            .with_sequence_number(4)
            .with_timestamp_ms(now - 20)
            .with_manifest_list("file:///tmp/t/metadata/snap-9.avro")
            .with_summary(Summary { operation: Op::Append, additional_properties: HashMap::new() })
            .with_schema_id(0)
            .build();
        m = TableMetadataBuilder::new_from_metadata(m, None).add_snapshot(s).unwrap().build().unwrap().metadata;
        let refs = crate::maintain::refs(&m);
        assert_eq!(select(&m, &refs, &policy(now, now - 50, 1)).snapshots, vec![1, 2]);
        assert_eq!(select(&m, &refs, &policy(now, now - 10, 1)).snapshots, vec![1, 2, 9]);
    }

    #[test]
    fn policy_reads_the_table_properties_and_explicit_options_win() {
        let now = 1_000_000_000_000;
        let m = metadata(&[(1, now - 100)]);
        let with = |props: &[(&str, &str)]| {
            TableMetadataBuilder::new_from_metadata(m.clone(), None)
                .set_properties(props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
                .unwrap()
                .build()
                .unwrap()
                .metadata
        };
        let none = ExpireOptions { older_than: None, retain_last: None, dry_run: false };
        let p = Policy::of(&m, "t", &none, now).unwrap();
        assert_eq!((p.cutoff_ms, p.min_snapshots, p.max_ref_age_ms), (now - DEFAULT_MAX_SNAPSHOT_AGE.as_millis() as i64, 1, None));
        let t = with(&[(PROP_MAX_SNAPSHOT_AGE_MS, "5000"), (PROP_MIN_SNAPSHOTS_TO_KEEP, "7"), (PROP_MAX_REF_AGE_MS, "9000")]);
        let p = Policy::of(&t, "t", &none, now).unwrap();
        assert_eq!((p.cutoff_ms, p.min_snapshots, p.max_ref_age_ms), (now - 5000, 7, Some(9000)));
        let explicit = ExpireOptions { older_than: Some(Duration::from_secs(1)), retain_last: Some(2), dry_run: false };
        let p = Policy::of(&t, "t", &explicit, now).unwrap();
        assert_eq!((p.cutoff_ms, p.min_snapshots), (now - 1000, 2));
        let bad = with(&[(PROP_MIN_SNAPSHOTS_TO_KEEP, "many")]);
        let e = Policy::of(&bad, "db.t", &none, now).unwrap_err().to_string();
        assert!(e.contains("history.expire.min-snapshots-to-keep") && e.contains("\"many\""), "{e}");
    }
}
