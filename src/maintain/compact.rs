//! Compaction: bin-packs each partition's small data files into files near the target size and
//! merges manifests, committed as one `replace` snapshot (DESIGN.md §6).
//!
//! Only data files of the table's current partition spec are compacted, and never files that
//! delete files may apply to (rewriting them from Parquet alone would bring deleted rows back);
//! the commit validates both again on the exact base (see [`super::rewrite`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use arrow_array::RecordBatch;
use futures::TryStreamExt;
use iceberg::io::FileIO;
use iceberg::scan::FileScanTask;

use crate::progress::Progress;
use iceberg::spec::{DataFileFormat, TableMetadata};

use super::rewrite::{Group, MANIFEST_TARGET_SIZE, Rewrite, RewriteOutcome, Task, merge_bins};
use super::{LiveFile, LiveFiles, ManifestCache, MaintainError, human_bytes};
use crate::commit::{CommitEngine, CommitError};

/// How to compact.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Files are packed into outputs of about this size; files of at least 3/4 of it are left alone.
    pub target_file_size: u64,
    /// Only partitions that received data files within this period (None: all partitions).
    pub since: Option<Duration>,
    /// Plan and print, change nothing.
    pub dry_run: bool,
}

/// A data file the planner may pick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: String,
    pub size: u64,
    /// Files are only packed with files of the same partition.
    pub partition: String,
}

/// One planned output: files of one partition to rewrite together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedGroup {
    pub partition: String,
    pub files: Vec<String>,
    pub bytes: u64,
}

/// Files below this share of the target are "small".
fn small_limit(target: u64) -> u64 {
    target / 4 * 3
}

/// Packs each partition's small files, largest first, into bins of at most `target` bytes
/// (first fit decreasing). A bin of one file is left out: rewriting it alone gains nothing.
pub fn plan(candidates: &[Candidate], target: u64) -> Vec<PlannedGroup> {
    let mut by_partition: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for c in candidates.iter().filter(|c| c.size < small_limit(target)) {
        by_partition.entry(&c.partition).or_default().push(c);
    }
    let mut groups = Vec::new();
    for (partition, mut files) in by_partition {
        files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
        let mut bins: Vec<PlannedGroup> = Vec::new();
        for f in files {
            match bins.iter_mut().find(|b| b.bytes + f.size <= target) {
                Some(b) => {
                    b.bytes += f.size;
                    b.files.push(f.path.clone());
                }
                None => bins.push(PlannedGroup {
                    partition: partition.to_owned(),
                    files: vec![f.path.clone()],
                    bytes: f.size,
                }),
            }
        }
        groups.extend(bins.into_iter().filter(|b| b.files.len() > 1));
    }
    groups
}

/// The live files compaction may touch: current spec, no delete files, in a recently written
/// partition when `since` is given.
fn candidates(m: &TableMetadata, live: &LiveFiles, since: Option<Duration>, now_ms: i64) -> Vec<Candidate> {
    let spec = m.default_partition_spec_id();
    let eligible: Vec<&LiveFile> = live
        .data
        .values()
        .filter(|f| f.spec_id == spec && !live.has_deletes(f))
        .collect();
    let touched: Option<std::collections::HashSet<String>> = since.map(|since| {
        let cutoff = now_ms - since.as_millis() as i64;
        eligible
            .iter()
            .filter(|f| {
                f.entry
                    .snapshot_id()
                    .and_then(|id| m.snapshot_by_id(id))
                    .is_some_and(|s| s.timestamp_ms() >= cutoff)
            })
            .map(|f| f.partition_key())
            .collect()
    });
    let mut out: Vec<Candidate> = eligible
        .into_iter()
        .map(|f| Candidate {
            path: f.path().to_owned(),
            size: f.entry.file_size_in_bytes(),
            partition: f.partition_key(),
        })
        .filter(|c| touched.as_ref().is_none_or(|t| t.contains(&c.partition)))
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// What compaction did or, with `dry_run`, would do.
#[derive(Debug, Clone, Default)]
pub struct CompactReport {
    pub table: String,
    pub dry_run: bool,
    pub data_files_before: usize,
    pub groups: Vec<PlannedGroup>,
    pub manifests_before: usize,
    /// Manifests left after merging (planned, for a dry run).
    pub manifests_after: usize,
    pub outcome: Option<RewriteOutcome>,
}

impl fmt::Display for CompactReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files: usize = self.groups.iter().map(|g| g.files.len()).sum();
        let bytes: u64 = self.groups.iter().map(|g| g.bytes).sum();
        let partitions: std::collections::BTreeSet<&str> = self.groups.iter().map(|g| g.partition.as_str()).collect();
        let verb = if self.dry_run { "would rewrite" } else { "rewrote" };
        writeln!(
            f,
            "table {}: {} data files; {verb} {files} small files ({}) in {} partitions into {} groups",
            self.table,
            self.data_files_before,
            human_bytes(bytes),
            partitions.len(),
            self.groups.len()
        )?;
        if self.dry_run {
            for g in &self.groups {
                writeln!(f, "  partition {}: {} files, {}", g.partition, g.files.len(), human_bytes(g.bytes))?;
            }
            writeln!(f, "would merge {} manifests into {}", self.manifests_before, self.manifests_after)?;
            return Ok(());
        }
        match &self.outcome {
            Some(o) if o.snapshot_id.is_some() => writeln!(
                f,
                "committed snapshot {} ({}): removed {} files, added {}; manifests {} -> {}; {} groups left out \
                 because their files changed meanwhile; {} attempts",
                o.snapshot_id.unwrap_or_default(),
                o.operation.as_deref().unwrap_or("?"),
                o.files_removed,
                o.files_added,
                o.manifests_before,
                o.manifests_after,
                o.groups_dropped,
                o.attempts
            ),
            Some(o) => writeln!(f, "nothing committed ({} groups' files changed meanwhile)", o.groups_dropped),
            None => writeln!(f, "nothing to do"),
        }
    }
}

/// Compacts the engine's table.
pub async fn compact(engine: &CommitEngine, opts: &CompactOptions) -> Result<CompactReport, MaintainError> {
    compact_with_progress(engine, opts, &Progress::hidden()).await
}

/// [`compact`], counting the partitions rewritten in `progress`.
pub async fn compact_with_progress(engine: &CommitEngine, opts: &CompactOptions, progress: &Progress) -> Result<CompactReport, MaintainError> {
    let result = match prepare_with_progress(engine, opts, progress).await? {
        Prepared::Done(report) => Ok(report),
        Prepared::Commit(planned) => planned.commit(engine).await,
    };
    progress.finish();
    result
}

/// A compaction planned and written, not committed yet.
pub struct Planned {
    report: CompactReport,
    groups: Vec<Group>,
    cache: ManifestCache,
}

impl Planned {
    /// The planned groups, each with the partition spec its new files were written with.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// Commits through the engine; groups whose files changed meanwhile, or whose partition
    /// spec is no longer the table's default, are left out and their new files deleted.
    pub async fn commit(self, engine: &CommitEngine) -> Result<CompactReport, MaintainError> {
        let Planned { mut report, groups, cache } = self;
        let io = engine.catalog().file_io();
        let written: Vec<String> = groups.iter().flat_map(|g| g.add.iter().map(|f| f.file_path().to_owned())).collect();
        let mut op = Rewrite::new(Task::Compact, groups, true).with_cache(cache);
        match engine.commit(&mut op).await {
            Ok(outcome) => {
                crate::write::delete_files(io, outcome.unreferenced.clone()).await;
                report.manifests_after = outcome.manifests_after;
                report.outcome = Some(outcome);
                Ok(report)
            }
            // The swap's outcome is unknown: the files may be referenced now (remove-orphans
            // deletes them later if not).
            Err(e @ CommitError::Catalog(_)) => Err(e.into()),
            Err(e) => {
                crate::write::delete_files(io, written).await;
                Err(e.into())
            }
        }
    }
}

/// What [`prepare`] came to.
pub enum Prepared {
    /// Nothing to commit (a dry run, or nothing to do): the report says what would be done.
    Done(CompactReport),
    Commit(Planned),
}

/// Plans compaction on the current table and writes the compacted files.
pub async fn prepare(engine: &CommitEngine, opts: &CompactOptions) -> Result<Prepared, MaintainError> {
    prepare_with_progress(engine, opts, &Progress::hidden()).await
}

async fn prepare_with_progress(engine: &CommitEngine, opts: &CompactOptions, progress: &Progress) -> Result<Prepared, MaintainError> {
    let table = engine.load().await?;
    let name = table.name.to_string();
    let io = engine.catalog().file_io();
    let mut cache = ManifestCache::default();
    let live = LiveFiles::read(&mut cache, io, &table).await?;
    let candidates = candidates(&table.metadata, &live, opts.since, super::now_ms());
    let groups = plan(&candidates, opts.target_file_size);
    let bins = merge_bins(&live.manifests, MANIFEST_TARGET_SIZE);
    let report = CompactReport {
        table: name.clone(),
        dry_run: opts.dry_run,
        data_files_before: live.data.len(),
        groups: groups.clone(),
        manifests_before: live.manifests.len(),
        manifests_after: live.manifests.len() - bins.iter().map(|b| b.len() - 1).sum::<usize>(),
        outcome: None,
    };
    let merge_needed = bins.iter().any(|b| b.len() > 1);
    if opts.dry_run || (groups.is_empty() && !merge_needed) {
        return Ok(Prepared::Done(report));
    }
    // The compacted files are partitioned by the spec of this plan (candidates are files of
    // the default spec); the commit checks that it is still the default.
    let spec_id = table.metadata.default_partition_spec_id();
    let mut rewrite_groups = Vec::with_capacity(groups.len());
    let mut written: Vec<String> = Vec::new();
    progress.set_total(groups.len() as u64);
    for g in &groups {
        let files: Vec<&LiveFile> = g.files.iter().map(|p| &live.data[p]).collect();
        let result = async {
            let batches = read_files(io, &name, &table.metadata, &files).await?;
            crate::write::write_data_files(io, &table.metadata, table.metadata.current_schema(), batches, opts.target_file_size)
                .await
                .map_err(MaintainError::from)
        }
        .await;
        let add = match result {
            Ok(add) => add,
            Err(e) => {
                crate::write::delete_files(io, written).await;
                return Err(e);
            }
        };
        written.extend(add.iter().map(|f| f.file_path().to_owned()));
        let rows_in: u64 = files.iter().map(|f| f.entry.record_count()).sum();
        let rows_out: u64 = add.iter().map(|f| f.record_count()).sum();
        if rows_in != rows_out {
            crate::write::delete_files(io, written).await;
            return Err(MaintainError::invalid(
                &name,
                format!("compacting partition {} read {rows_out} rows from files whose manifests say {rows_in}; nothing committed", g.partition),
            ));
        }
        rewrite_groups.push(Group {
            remove: g.files.clone(),
            add,
            spec_id,
            reads_rows: true,
        });
        progress.inc(1);
    }
    drop(live);
    Ok(Prepared::Commit(Planned { report, groups: rewrite_groups, cache }))
}

/// Reads data files as batches of the table's current schema (columns added since a file was
/// written come back as nulls, as every reader sees them).
pub async fn read_files(
    io: &FileIO,
    table: &str,
    m: &TableMetadata,
    files: &[&LiveFile],
) -> Result<Vec<RecordBatch>, MaintainError> {
    let schema = m.current_schema().clone();
    let ids: Vec<i32> = schema.as_struct().fields().iter().map(|f| f.id).collect();
    let tasks: Vec<iceberg::Result<FileScanTask>> = files
        .iter()
        .map(|f| {
            let df = f.entry.data_file();
            Ok(FileScanTask::builder()
                .with_file_size_in_bytes(df.file_size_in_bytes())
                .with_start(0)
                .with_length(df.file_size_in_bytes())
                .with_record_count(Some(df.record_count()))
                .with_data_file_path(df.file_path().to_owned())
                .with_data_file_format(DataFileFormat::Parquet)
                .with_schema(schema.clone())
                .with_project_field_ids(ids.clone())
                .with_partition(Some(df.partition().clone()))
                .with_partition_spec(m.partition_spec_by_id(f.spec_id).cloned())
                .with_case_sensitive(true)
                .build())
        })
        .collect();
    for f in files {
        if f.entry.file_format() != DataFileFormat::Parquet {
            return Err(MaintainError::invalid(
                table,
                format!("data file {} is {:?}; only Parquet files are rewritten", f.path(), f.entry.file_format()),
            ));
        }
    }
    let read_err = |e: iceberg::Error| MaintainError::io(table, "reading data files", &files.first().map(|f| f.path().to_owned()).unwrap_or_default(), e);
    let runtime = iceberg::Runtime::try_current().map_err(read_err)?;
    let reader = iceberg::arrow::ArrowReaderBuilder::new(io.clone(), runtime)
        .with_data_file_concurrency_limit(2)
        .build();
    let stream = reader
        .read(Box::pin(futures::stream::iter(tasks)))
        .map_err(read_err)?
        .stream();
    stream.try_collect().await.map_err(read_err)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn c(path: &str, size: u64, partition: &str) -> Candidate {
        Candidate { path: path.into(), size, partition: partition.into() }
    }

    #[test]
    fn packs_small_files_per_partition() {
        let files = vec![c("a", 10, "p1"), c("b", 20, "p1"), c("c", 90, "p1"), c("d", 30, "p2"), c("e", 40, "p2"), c("f", 5, "p3")];
        let g = plan(&files, 100);
        // c is large enough (>= 75); f is alone in p3.
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].files, vec!["b", "a"]);
        assert_eq!(g[1].files, vec!["e", "d"]);
    }

    proptest! {
        /// Against the rules: every file appears at most once; a group is one partition, of at
        /// least two small files, of at most the target; every partition with two small files
        /// that fit together gets a group.
        #[test]
        fn plan_rules(sizes in prop::collection::vec((1u64..200, 0u8..4), 0..80), target in 10u64..300) {
            let files: Vec<Candidate> = sizes.iter().enumerate()
                .map(|(i, (s, p))| c(&format!("f{i}"), *s, &format!("p{p}"))).collect();
            let groups = plan(&files, target);
            let mut seen = std::collections::HashSet::new();
            for g in &groups {
                prop_assert!(g.files.len() >= 2);
                prop_assert!(g.bytes <= target);
                let mut sum = 0;
                for p in &g.files {
                    prop_assert!(seen.insert(p.clone()), "{} planned twice", p);
                    let f = files.iter().find(|f| &f.path == p).unwrap();
                    prop_assert_eq!(&f.partition, &g.partition);
                    prop_assert!(f.size < small_limit(target));
                    sum += f.size;
                }
                prop_assert_eq!(sum, g.bytes);
            }
            for part in 0u8..4 {
                let key = format!("p{part}");
                let mut small: Vec<u64> = files.iter().filter(|f| f.partition == key && f.size < small_limit(target)).map(|f| f.size).collect();
                small.sort();
                if small.len() >= 2 && small[0] + small[1] <= target {
                    prop_assert!(groups.iter().any(|g| g.partition == key), "no group for {}", key);
                }
            }
        }
    }
}
