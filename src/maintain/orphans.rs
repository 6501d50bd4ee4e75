//! Orphan files: files under the table's `data/` and `metadata/` directories that no metadata
//! references (left by crashed writers, lost commit attempts, metadata files dropped from the
//! log), found by listing the storage itself.
//!
//! Referenced, and never deleted: the current metadata file and every file of its metadata log;
//! every snapshot's manifest list, every manifest those list, every file any manifest entry names
//! (deleted entries too), statistics files. A writer's files are unreferenced until its commit
//! lands, so only files older than the threshold (by modification time) are deleted; the threshold
//! cannot be below [`MIN_AGE`], four times the age after which floe's own writers stop using staged
//! files ([`crate::write::MAX_STAGED_AGE`]). Other engines' in-flight writes are protected by the
//! threshold alone (docs/maintenance.md).

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime};

use super::expire::Reach;
use super::{ManifestCache, MaintainError, local_path};
use crate::commit::CommitEngine;
use crate::write::MAX_STAGED_AGE;

/// The youngest an orphan may be: four times [`MAX_STAGED_AGE`], the oldest staged files a floe
/// commit still swaps in (older ones are written again). The margin covers the swap itself and
/// the difference between the writer's clock and the storage's modification times.
pub const MIN_AGE: Duration = Duration::from_secs(4 * MAX_STAGED_AGE.as_secs());

/// Refuses an orphan age below [`MIN_AGE`], saying why; `what` names where the value came from.
pub fn check_age(older_than: Duration, what: &str) -> Result<(), String> {
    if older_than >= MIN_AGE {
        return Ok(());
    }
    Err(format!(
        "{what} = {} is too short: files staged by a commit that is still retrying are unreferenced until it \
         lands, and floe's writers keep staged files for up to {} before writing them again; orphan removal \
         must stay 4x behind that: use at least {} (typical: 3d)",
        humantime::format_duration(older_than),
        humantime::format_duration(MAX_STAGED_AGE),
        humantime::format_duration(MIN_AGE)
    ))
}

#[derive(Debug, Clone)]
pub struct OrphanOptions {
    pub older_than: Duration,
    pub dry_run: bool,
}

/// What remove-orphans did or, with `dry_run`, would do.
#[derive(Debug, Clone, Default)]
pub struct OrphanReport {
    pub table: String,
    pub dry_run: bool,
    /// Files listed under data/ and metadata/.
    pub listed: usize,
    /// Unreferenced files old enough to delete.
    pub orphans: Vec<String>,
    /// Unreferenced files younger than the threshold (left alone).
    pub too_young: usize,
    pub failed: usize,
}

impl fmt::Display for OrphanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run { "would delete" } else { "deleted" };
        writeln!(
            f,
            "table {}: {} files listed; {verb} {} unreferenced files; {} unreferenced files are younger than the threshold",
            self.table,
            self.listed,
            self.orphans.len() - self.failed,
            self.too_young
        )?;
        if self.dry_run {
            for p in &self.orphans {
                writeln!(f, "  {p}")?;
            }
        }
        if self.failed > 0 {
            writeln!(f, "{} files could not be deleted", self.failed)?;
        }
        Ok(())
    }
}

/// Deletes unreferenced files older than the threshold under the engine's table.
pub async fn remove_orphans(engine: &CommitEngine, opts: &OrphanOptions) -> Result<OrphanReport, MaintainError> {
    remove_orphans_with_progress(engine, opts, &crate::progress::Progress::hidden()).await
}

/// [`remove_orphans`], counting the orphan files deleted in `progress`.
pub async fn remove_orphans_with_progress(
    engine: &CommitEngine,
    opts: &OrphanOptions,
    progress: &crate::progress::Progress,
) -> Result<OrphanReport, MaintainError> {
    let result = remove_orphans_inner(engine, opts, progress).await;
    progress.finish();
    result
}

async fn remove_orphans_inner(
    engine: &CommitEngine,
    opts: &OrphanOptions,
    progress: &crate::progress::Progress,
) -> Result<OrphanReport, MaintainError> {
    let table = engine.load().await?;
    let name = table.name.to_string();
    check_age(opts.older_than, "remove-orphans --older-than").map_err(|m| MaintainError::invalid(&name, m))?;
    let m = &table.metadata;
    let root = m.location().trim_end_matches('/').to_owned();
    let storage = engine.catalog().storage();
    let bare_root = !root.contains(':');
    // Listed first, references read after: a file committed in between is then referenced.
    let cutoff = SystemTime::now() - opts.older_than;
    let mut listed: Vec<(String, SystemTime)> = Vec::new();
    for dir in ["data", "metadata"] {
        let out = storage
            .list(&format!("{root}/{dir}"))
            .await
            .map_err(|e| MaintainError::io(&name, "listing", m.location(), e))?;
        // Reported (and deleted) in the spelling of the table's own location: a table at a bare
        // local path gets bare paths back, not the `file://` URIs the store lists.
        listed.extend(out.into_iter().map(|(path, mtime)| match path.strip_prefix("file://") {
            Some(bare) if bare_root => (bare.to_owned(), mtime),
            _ => (path, mtime),
        }));
    }
    let table = engine.load().await?;
    let m = &table.metadata;
    let io = engine.catalog().file_io();
    let mut referenced: HashSet<String> = HashSet::new();
    let mut add = |loc: &str| {
        referenced.insert(normalize(loc));
    };
    add(&table.metadata_location);
    for entry in m.metadata_log() {
        add(&entry.metadata_file);
    }
    for s in m.statistics_iter() {
        add(&s.statistics_path);
    }
    for s in m.partition_statistics_iter() {
        add(&s.statistics_path);
    }
    let snapshots: Vec<_> = m.snapshots().cloned().collect();
    let mut cache = ManifestCache::default();
    let reach = Reach::of(&mut cache, io, m, &name, &snapshots, true).await?;
    for p in reach.lists.iter().chain(&reach.manifests).chain(&reach.files) {
        add(p);
    }
    let mut report = OrphanReport { table: name.clone(), dry_run: opts.dry_run, listed: listed.len(), ..Default::default() };
    for (path, mtime) in listed {
        if referenced.contains(&normalize(&path)) || path.ends_with("/version-hint.text") {
            continue;
        }
        if mtime > cutoff {
            report.too_young += 1;
            continue;
        }
        report.orphans.push(path);
    }
    report.orphans.sort();
    if !opts.dry_run {
        progress.set_total(report.orphans.len() as u64);
        for p in &report.orphans {
            if let Err(e) = io.delete(p).await {
                tracing::warn!(file = %p, error = %e, "could not delete an orphan file");
                report.failed += 1;
            }
            progress.inc(1);
        }
        tracing::info!(table = %name, deleted = report.orphans.len() - report.failed, "orphan files removed");
    }
    Ok(report)
}

/// One spelling per file: `file:/a` and `file:///a` are the same local file; `s3a://` and
/// `s3n://` name the same object as `s3://`.
fn normalize(location: &str) -> String {
    if let Some(p) = local_path(location) {
        return format!("file://{}", p.display());
    }
    for alias in ["s3a://", "s3n://"] {
        if let Some(rest) = location.strip_prefix(alias) {
            return format!("s3://{rest}");
        }
    }
    location.to_owned()
}
