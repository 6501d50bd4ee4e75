//! Retention: removes the rows whose time column is older than a cutoff.
//!
//! A data file whose partition (a year/month/day/hour transform of the column) or whose upper
//! bound for the column lies entirely before the cutoff is dropped by metadata alone; a file whose
//! lower bound or partition starts at or after the cutoff is left alone; only the files in
//! between are read and written again without the old rows. Rows whose column is null are kept
//! (as `DELETE ... WHERE ts < cutoff` keeps them). Committed as `delete` when files are only
//! dropped, `overwrite` when some are rewritten; every file must still be live in the base.

use std::fmt;
use std::time::Duration;

use arrow_array::{Array, ArrayRef, BooleanArray, Date32Array, RecordBatch, TimestampMicrosecondArray};
use chrono::NaiveDate;
use iceberg::spec::{Literal, PrimitiveLiteral, PrimitiveType, TableMetadata, Transform, Type};

use super::compact::read_files;
use super::rewrite::{Group, Rewrite, RewriteOutcome, Task};
use super::{LiveFile, LiveFiles, ManifestCache, MaintainError};
use crate::commit::{CommitEngine, CommitError};

const MICROS_PER_DAY: i64 = 86_400_000_000;
const MICROS_PER_HOUR: i64 = 3_600_000_000;

#[derive(Debug, Clone)]
pub struct RetentionOptions {
    /// The time column (timestamp, timestamp with time zone, or date).
    pub column: String,
    /// Rows older than now minus this are removed.
    pub keep: Duration,
    /// Size of rewritten files.
    pub target_file_size: u64,
    pub dry_run: bool,
}

/// The time column, resolved against the table's current schema.
#[derive(Debug, Clone, Copy)]
pub struct TimeColumn {
    pub field_id: i32,
    pub is_date: bool,
}

impl TimeColumn {
    pub fn resolve(m: &TableMetadata, name: &str) -> Result<TimeColumn, String> {
        let field = m.current_schema().field_by_name(name).ok_or_else(|| {
            let names: Vec<&str> = m.current_schema().as_struct().fields().iter().map(|f| f.name.as_str()).collect();
            format!("retention column {name:?} is not a column of the table (columns: {})", names.join(", "))
        })?;
        let is_date = match field.field_type.as_ref() {
            Type::Primitive(PrimitiveType::Timestamp | PrimitiveType::Timestamptz) => false,
            Type::Primitive(PrimitiveType::Date) => true,
            other => {
                return Err(format!(
                    "retention column {name:?} is {other}; it must be a timestamp, timestamptz or date column"
                ));
            }
        };
        Ok(TimeColumn { field_id: field.id, is_date })
    }

    /// A bound or value of this column in microseconds since the epoch.
    fn micros(&self, literal: &PrimitiveLiteral) -> Option<i64> {
        match (self.is_date, literal) {
            (true, PrimitiveLiteral::Int(d)) => Some(*d as i64 * MICROS_PER_DAY),
            (false, PrimitiveLiteral::Long(us)) => Some(*us),
            _ => None,
        }
    }
}

/// What happens to one data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Every row is at or after the cutoff (or null).
    Keep,
    /// Every row is before the cutoff: drop the file by metadata.
    Drop,
    /// Some rows may be before the cutoff: read it.
    Rewrite,
}

/// The microseconds a time-transform partition value covers: [start, end).
pub fn partition_range(transform: Transform, value: i32) -> Option<(i64, i64)> {
    let v = value as i64;
    let month_start = |months: i64| -> Option<i64> {
        let (y, m) = (1970 + months.div_euclid(12), months.rem_euclid(12) as u32 + 1);
        let d = NaiveDate::from_ymd_opt(y as i32, m, 1)?;
        Some((d - NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days() * MICROS_PER_DAY)
    };
    match transform {
        Transform::Hour => Some((v * MICROS_PER_HOUR, (v + 1) * MICROS_PER_HOUR)),
        Transform::Day => Some((v * MICROS_PER_DAY, (v + 1) * MICROS_PER_DAY)),
        Transform::Month => Some((month_start(v)?, month_start(v + 1)?)),
        Transform::Year => Some((month_start(v * 12)?, month_start((v + 1) * 12)?)),
        _ => None,
    }
}

/// Decides a file's fate from metadata alone.
pub fn classify(m: &TableMetadata, f: &LiveFile, col: TimeColumn, cutoff_us: i64) -> Fate {
    let df = f.entry.data_file();
    if let Some(spec) = m.partition_spec_by_id(f.spec_id) {
        for (pf, value) in spec.fields().iter().zip(df.partition().iter()) {
            if pf.source_id != col.field_id {
                continue;
            }
            let Some(Literal::Primitive(PrimitiveLiteral::Int(v))) = value else {
                if value.is_none() && matches!(pf.transform, Transform::Year | Transform::Month | Transform::Day | Transform::Hour | Transform::Identity) {
                    // A null partition value: every row's column is null.
                    return Fate::Keep;
                }
                continue;
            };
            let range = match pf.transform {
                Transform::Identity if col.is_date => Some((*v as i64 * MICROS_PER_DAY, (*v as i64 + 1) * MICROS_PER_DAY)),
                t => partition_range(t, *v),
            };
            if let Some((start, end)) = range {
                if end <= cutoff_us {
                    return Fate::Drop;
                }
                if start >= cutoff_us {
                    return Fate::Keep;
                }
            }
        }
    }
    let lower = df.lower_bounds().get(&col.field_id).and_then(|d| col.micros(d.literal()));
    let upper = df.upper_bounds().get(&col.field_id).and_then(|d| col.micros(d.literal()));
    let no_nulls = df.null_value_counts().get(&col.field_id) == Some(&0);
    let all_null = df.null_value_counts().get(&col.field_id) == Some(&df.record_count());
    if all_null || lower.is_some_and(|l| l >= cutoff_us) {
        return Fate::Keep;
    }
    if no_nulls && upper.is_some_and(|u| u < cutoff_us) {
        return Fate::Drop;
    }
    Fate::Rewrite
}

/// Keeps the rows at or after the cutoff, and rows where the column is null.
fn filter_batch(batch: &RecordBatch, name: &str, col: TimeColumn, cutoff_us: i64) -> Result<RecordBatch, String> {
    let column: &ArrayRef = batch
        .column_by_name(name)
        .ok_or_else(|| format!("column {name:?} missing from the data read back"))?;
    let keep: BooleanArray = if col.is_date {
        let a = column.as_any().downcast_ref::<Date32Array>().ok_or("date column is not Date32")?;
        (0..a.len())
            .map(|i| Some(a.is_null(i) || a.value(i) as i64 * MICROS_PER_DAY >= cutoff_us))
            .collect()
    } else {
        let a = column
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .ok_or("timestamp column is not in microseconds")?;
        (0..a.len()).map(|i| Some(a.is_null(i) || a.value(i) >= cutoff_us)).collect()
    };
    arrow_select::filter::filter_record_batch(batch, &keep).map_err(|e| e.to_string())
}

/// What retention did or, with `dry_run`, would do.
#[derive(Debug, Clone, Default)]
pub struct RetentionReport {
    pub table: String,
    pub dry_run: bool,
    /// The cutoff, microseconds since the epoch.
    pub cutoff_us: i64,
    /// Files dropped whole, with their row counts.
    pub dropped: Vec<(String, u64)>,
    /// Files rewritten: rows before, rows after.
    pub rewritten: Vec<(String, u64, u64)>,
    /// Straddling files left alone because delete files apply to them.
    pub skipped_with_deletes: Vec<String>,
    pub outcome: Option<RewriteOutcome>,
}

impl RetentionReport {
    pub fn rows_removed(&self) -> u64 {
        self.dropped.iter().map(|d| d.1).sum::<u64>() + self.rewritten.iter().map(|r| r.1 - r.2).sum::<u64>()
    }
}

impl fmt::Display for RetentionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cutoff = chrono::DateTime::from_timestamp_micros(self.cutoff_us).map(|t| t.to_rfc3339()).unwrap_or_default();
        let verb = if self.dry_run { "would remove" } else { "removed" };
        writeln!(
            f,
            "table {}: {verb} {} rows older than {cutoff}: {} files dropped whole, {} rewritten",
            self.table,
            self.rows_removed(),
            self.dropped.len(),
            self.rewritten.len()
        )?;
        if self.dry_run {
            for (p, n) in &self.dropped {
                writeln!(f, "  drop {p} ({n} rows)")?;
            }
            for (p, a, b) in &self.rewritten {
                writeln!(f, "  rewrite {p} ({a} -> {b} rows)")?;
            }
        }
        for p in &self.skipped_with_deletes {
            writeln!(f, "  left alone (delete files apply to it; compact it with its deletes first): {p}")?;
        }
        if let Some(o) = &self.outcome {
            match o.snapshot_id {
                Some(id) => writeln!(f, "committed snapshot {id} ({}) in {} attempts", o.operation.as_deref().unwrap_or("?"), o.attempts)?,
                None => writeln!(f, "nothing committed: the files changed meanwhile")?,
            }
            if o.groups_dropped > 0 && o.snapshot_id.is_some() {
                writeln!(f, "{} files changed meanwhile and were left for the next run", o.groups_dropped)?;
            }
        }
        Ok(())
    }
}

/// Removes rows older than the cutoff from the engine's table.
pub async fn retention(engine: &CommitEngine, opts: &RetentionOptions) -> Result<RetentionReport, MaintainError> {
    retention_with_progress(engine, opts, &crate::progress::Progress::hidden()).await
}

/// [`retention`], counting the data files looked at in `progress`.
pub async fn retention_with_progress(
    engine: &CommitEngine,
    opts: &RetentionOptions,
    progress: &crate::progress::Progress,
) -> Result<RetentionReport, MaintainError> {
    let result = retention_inner(engine, opts, progress).await;
    progress.finish();
    result
}

async fn retention_inner(
    engine: &CommitEngine,
    opts: &RetentionOptions,
    progress: &crate::progress::Progress,
) -> Result<RetentionReport, MaintainError> {
    let table = engine.load().await?;
    let name = table.name.to_string();
    let m = &table.metadata;
    let col = TimeColumn::resolve(m, &opts.column).map_err(|e| MaintainError::invalid(&name, e))?;
    let cutoff_us = (super::now_ms() - opts.keep.as_millis() as i64) * 1000;
    let io = engine.catalog().file_io();
    let mut cache = ManifestCache::default();
    let live = LiveFiles::read(&mut cache, io, &table).await?;
    let mut report = RetentionReport { table: name.clone(), dry_run: opts.dry_run, cutoff_us, ..Default::default() };
    let mut files: Vec<&LiveFile> = live.data.values().collect();
    files.sort_by(|a, b| a.path().cmp(b.path()));
    let mut groups = Vec::new();
    let mut written: Vec<String> = Vec::new();
    progress.set_total(files.len() as u64);
    for f in files {
        progress.inc(1);
        match classify(m, f, col, cutoff_us) {
            Fate::Keep => {}
            Fate::Drop => {
                report.dropped.push((f.path().to_owned(), f.entry.record_count()));
                groups.push(Group { remove: vec![f.path().to_owned()], add: Vec::new(), spec_id: m.default_partition_spec_id(), reads_rows: false });
            }
            Fate::Rewrite if live.has_deletes(f) => report.skipped_with_deletes.push(f.path().to_owned()),
            Fate::Rewrite => {
                let batches = read_files(io, &name, m, &[f]).await?;
                let before: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
                let kept: Vec<RecordBatch> = batches
                    .iter()
                    .map(|b| filter_batch(b, &opts.column, col, cutoff_us))
                    .collect::<Result<_, _>>()
                    .map_err(|e| MaintainError::invalid(&name, format!("{}: {e}", f.path())))?;
                let after: u64 = kept.iter().map(|b| b.num_rows() as u64).sum();
                if after == before {
                    continue;
                }
                if after == 0 {
                    report.dropped.push((f.path().to_owned(), before));
                    groups.push(Group { remove: vec![f.path().to_owned()], add: Vec::new(), spec_id: m.default_partition_spec_id(), reads_rows: false });
                    continue;
                }
                report.rewritten.push((f.path().to_owned(), before, after));
                if opts.dry_run {
                    continue;
                }
                let add = match crate::write::write_data_files(io, m, m.current_schema(), kept, opts.target_file_size).await {
                    Ok(add) => add,
                    Err(e) => {
                        crate::write::delete_files(io, written).await;
                        return Err(e.into());
                    }
                };
                written.extend(add.iter().map(|d| d.file_path().to_owned()));
                // Written with the spec of this plan; the commit checks it is still the default.
                groups.push(Group { remove: vec![f.path().to_owned()], add, spec_id: m.default_partition_spec_id(), reads_rows: true });
            }
        }
    }
    if opts.dry_run || groups.is_empty() {
        return Ok(report);
    }
    drop(live);
    let mut op = Rewrite::new(Task::Retention, groups, false).with_cache(cache);
    match engine.commit(&mut op).await {
        Ok(outcome) => {
            crate::write::delete_files(io, outcome.unreferenced.clone()).await;
            tracing::info!(table = %name, rows = report.rows_removed(), dropped = report.dropped.len(), rewritten = report.rewritten.len(), "retention applied");
            report.outcome = Some(outcome);
            Ok(report)
        }
        Err(e @ CommitError::Catalog(_)) => Err(e.into()),
        Err(e) => {
            crate::write::delete_files(io, written).await;
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_ranges() {
        // Day 1 is 1970-01-02.
        assert_eq!(partition_range(Transform::Day, 1), Some((MICROS_PER_DAY, 2 * MICROS_PER_DAY)));
        assert_eq!(partition_range(Transform::Hour, 2), Some((2 * MICROS_PER_HOUR, 3 * MICROS_PER_HOUR)));
        // Month 1 is February 1970: 31 days after the epoch, 28 days long.
        assert_eq!(partition_range(Transform::Month, 1), Some((31 * MICROS_PER_DAY, 59 * MICROS_PER_DAY)));
        // Year 1 is 1971.
        assert_eq!(partition_range(Transform::Year, 1), Some((365 * MICROS_PER_DAY, 730 * MICROS_PER_DAY)));
        // Before the epoch: month -1 is December 1969.
        assert_eq!(partition_range(Transform::Month, -1), Some((-31 * MICROS_PER_DAY, 0)));
        assert_eq!(partition_range(Transform::Bucket(4), 1), None);
    }
}
