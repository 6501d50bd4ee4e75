//! Maintenance inside `floe run`: the `[maintenance]` tasks on their own tokio task, each its own
//! commit through the engine. Ingest never waits for them: the loader's commits race the
//! maintenance commits through the catalog's conditional swap, and whichever loses reloads and
//! redoes its commit on the winner (an append is carried over by a compaction, and vice versa).

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::compact::{CompactOptions, compact};
use super::expire::{ExpireOptions, expire_snapshots};
use super::orphans::{OrphanOptions, remove_orphans};
use super::retention::{RetentionOptions, retention};
use crate::commit::CommitEngine;
use crate::config::MaintenanceConfig;

/// The first run of a task comes after its period, but no later than this after start: a daily
/// task still runs in a process that restarts more often than daily.
const FIRST_RUN_AT_MOST: Duration = Duration::from_secs(300);

/// How long stopping waits for a task in progress before abandoning it (its files, if any, are
/// then unreferenced and remove-orphans deletes them).
const STOP_GRACE: Duration = Duration::from_secs(30);

/// A maintenance task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Compact,
    Expire,
    Retention,
    Orphans,
}

impl Kind {
    /// The task's name in metrics (`kind` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Compact => "compact",
            Kind::Expire => "expire-snapshots",
            Kind::Retention => "retention",
            Kind::Orphans => "remove-orphans",
        }
    }
}

struct Job {
    kind: Kind,
    every: Duration,
    next: Instant,
}

/// The running maintenance task.
pub struct Scheduler {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl Scheduler {
    /// Lets a task in progress finish (up to a grace period), then ends.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let abort = self.handle.abort_handle();
        if tokio::time::timeout(STOP_GRACE, self.handle).await.is_err() {
            tracing::warn!("a maintenance task did not finish in time; abandoning it");
            abort.abort();
        }
    }
}

/// Which tasks run, and when each first runs.
fn jobs(config: &MaintenanceConfig, now: Instant) -> Vec<Job> {
    let mut jobs = Vec::new();
    if !config.enabled {
        return jobs;
    }
    let mut add = |kind, every: Option<Duration>| {
        if let Some(every) = every {
            jobs.push(Job { kind, every, next: now + every.min(FIRST_RUN_AT_MOST) });
        }
    };
    add(Kind::Compact, config.compact_every);
    add(Kind::Expire, config.expire_every);
    add(Kind::Retention, config.retention_column.as_ref().and(config.retention_every()));
    add(Kind::Orphans, config.orphans_every);
    jobs
}

/// Starts the configured tasks; None when none is configured.
pub fn spawn(engine: CommitEngine, config: &MaintenanceConfig, default_target_file_size: u64) -> Option<Scheduler> {
    let mut jobs = jobs(config, Instant::now());
    if jobs.is_empty() {
        return None;
    }
    let config = config.clone();
    let (stop, mut stopped) = watch::channel(false);
    let handle = tokio::spawn(async move {
        tracing::info!(tasks = ?jobs.iter().map(|j| j.kind).collect::<Vec<_>>(), "table maintenance scheduled");
        loop {
            let Some(job) = jobs.iter_mut().min_by_key(|j| j.next) else { return };
            tokio::select! {
                biased;
                _ = stopped.changed() => return,
                () = tokio::time::sleep_until(job.next) => {}
            }
            run(&engine, &config, job.kind, default_target_file_size).await;
            job.next = Instant::now() + job.every;
            if *stopped.borrow() {
                return;
            }
        }
    });
    Some(Scheduler { stop, handle })
}

async fn run(engine: &CommitEngine, config: &MaintenanceConfig, kind: Kind, default_target: u64) {
    let table = engine.table().to_string();
    let started = std::time::Instant::now();
    let result = run_task(engine, config, kind, default_target).await;
    crate::telemetry::maintenance_ran(&table, kind.as_str(), started.elapsed(), result.is_ok());
    match result {
        Ok(summary) => tracing::info!(task = ?kind, table = %table, "{}", summary.trim_end().replace('\n', "; ")),
        Err(e) if e.is_transient() => tracing::warn!(task = ?kind, table = %table, error = %e, "maintenance task failed; it runs again at its next time"),
        Err(e) => tracing::error!(task = ?kind, table = %table, error = %e, "maintenance task failed; fix the cause, it runs again at its next time"),
    }
}

/// Runs one task once as the scheduler does, with `config`'s settings; returns its report.
pub async fn run_task(
    engine: &CommitEngine,
    config: &MaintenanceConfig,
    kind: Kind,
    default_target: u64,
) -> Result<String, super::MaintainError> {
    match kind {
        Kind::Compact => compact(
            engine,
            &CompactOptions {
                target_file_size: config.target_file_size.unwrap_or(default_target),
                since: config.compact_since,
                dry_run: false,
            },
        )
        .await
        .map(|r| r.to_string()),
        Kind::Expire => expire_snapshots(
            engine,
            &ExpireOptions { older_than: config.expire_older_than, retain_last: config.retain_last, dry_run: false },
            // Unset: the table's history.expire.* properties, else floe's defaults.
        )
        .await
        .map(|r| r.to_string()),
        Kind::Retention => {
            let (Some(column), Some(keep)) = (&config.retention_column, config.retention_keep) else {
                return Ok("retention is not configured".into());
            };
            retention(
                engine,
                &RetentionOptions {
                    column: column.clone(),
                    keep,
                    target_file_size: config.target_file_size.unwrap_or(default_target),
                    dry_run: false,
                },
            )
            .await
            .map(|r| r.to_string())
        }
        Kind::Orphans => remove_orphans(engine, &OrphanOptions { older_than: config.orphans_older_than, dry_run: false })
            .await
            .map(|r| r.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_tasks_run_and_early_enough() {
        let now = Instant::now();
        let c = MaintenanceConfig {
            compact_every: Some(Duration::from_secs(60)),
            expire_every: Some(Duration::from_secs(86_400)),
            ..Default::default()
        };
        let c = MaintenanceConfig { orphans_every: None, ..c };
        let j = jobs(&c, now);
        assert_eq!(j.iter().map(|j| j.kind).collect::<Vec<_>>(), vec![Kind::Compact, Kind::Expire]);
        assert_eq!(j[0].next, now + Duration::from_secs(60));
        assert_eq!(j[1].next, now + FIRST_RUN_AT_MOST);
        // By default compaction, expiry and orphan removal run; `enabled = false` stops all.
        let d = jobs(&MaintenanceConfig::default(), now);
        assert_eq!(d.iter().map(|j| j.kind).collect::<Vec<_>>(), vec![Kind::Compact, Kind::Expire, Kind::Orphans]);
        assert!(jobs(&MaintenanceConfig { enabled: false, ..Default::default() }, now).is_empty());
        assert!(jobs(&MaintenanceConfig::off(), now).is_empty());
    }

    #[tokio::test]
    async fn stop_ends_the_scheduler_without_running_anything() {
        // An engine whose catalog is never touched: the first run is minutes away.
        let dir = tempfile::tempdir().unwrap();
        let catalog = crate::catalog::Catalog::connect(
            crate::config::CatalogUri::Sqlite(dir.path().join("c.db")),
            "t",
            &format!("file://{}", dir.path().display()),
        )
        .await
        .unwrap();
        let engine = CommitEngine::new(catalog, crate::config::TableName::parse("a.b").unwrap());
        let c = MaintenanceConfig { compact_every: Some(Duration::from_secs(60)), ..Default::default() };
        let s = spawn(engine, &c, 1 << 20).expect("one task");
        // The first run is a minute away: stopping returns at once.
        tokio::time::timeout(Duration::from_secs(5), s.stop()).await.expect("stopped promptly");
    }
}
