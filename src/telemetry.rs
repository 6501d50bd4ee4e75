//! What `floe run` tells its operators while it runs: one function per event, which both logs and
//! counts (STYLE.md), and the live state behind `/health`, `/ready` and the status page.
//!
//! Metrics go through the `metrics` facade: without a recorder installed (no `[http] listen`)
//! every call here is a no-op. Labels are bounded: topic, partition, table, kind; never offsets
//! or keys. Nothing here is called per record: the loader counts per batch of records.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Metric names, in one place (the README lists them).
pub mod names {
    pub const RECORDS_READ: &str = "floe_records_read_total";
    pub const BYTES_READ: &str = "floe_bytes_read_total";
    pub const ROWS_WRITTEN: &str = "floe_rows_written_total";
    pub const BYTES_WRITTEN: &str = "floe_bytes_written_total";
    pub const COMMITS: &str = "floe_commits_total";
    pub const PAUSED: &str = "floe_consumption_paused";
    pub const PAUSES: &str = "floe_consumption_pauses_total";
    pub const COMMIT_CONFLICTS: &str = "floe_commit_conflicts_total";
    pub const COMMIT_FAILURES: &str = "floe_commit_failures_total";
    pub const FENCED_BATCHES: &str = "floe_fenced_batches_total";
    pub const DEAD_LETTERS: &str = "floe_dead_letters_total";
    pub const LAG: &str = "floe_lag_records";
    pub const BUFFERED_BYTES: &str = "floe_buffered_bytes";
    pub const ASSIGNED_PARTITIONS: &str = "floe_assigned_partitions";
    pub const COMMIT_SECONDS: &str = "floe_commit_duration_seconds";
    pub const FRESHNESS_SECONDS: &str = "floe_freshness_seconds";
    pub const MAINTENANCE_RUNS: &str = "floe_maintenance_runs_total";
    pub const MAINTENANCE_FAILURES: &str = "floe_maintenance_failures_total";
    pub const MAINTENANCE_SECONDS: &str = "floe_maintenance_duration_seconds";
    pub const IDLE: &str = "floe_idle";
    pub const IDLE_ALERTS: &str = "floe_idle_alerts_total";
    pub const CHECK_FAILURES: &str = "floe_check_failures_total";
}

/// Histogram buckets (seconds) of commit latency and freshness.
pub const SECONDS_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// HELP lines for every metric; called once the recorder is installed.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    use names::*;
    describe_counter!(RECORDS_READ, "Records read from Kafka (decoded or dead-lettered)");
    describe_counter!(BYTES_READ, Unit::Bytes, "Bytes of record values read from Kafka");
    describe_counter!(ROWS_WRITTEN, "Rows committed to the table");
    describe_counter!(BYTES_WRITTEN, Unit::Bytes, "Bytes of data files committed to the table");
    describe_counter!(COMMITS, "Batches committed (data and ledger in one snapshot)");
    describe_gauge!(PAUSED, "1 while consumption is paused because commit.max_buffered_bytes is reached");
    describe_counter!(PAUSES, "Times consumption was paused because commit.max_buffered_bytes was reached");
    describe_counter!(COMMIT_CONFLICTS, "Commit attempts that lost the catalog swap to another writer and were redone");
    describe_counter!(COMMIT_FAILURES, "Commit attempts that failed transiently and were retried");
    describe_counter!(FENCED_BATCHES, "Batches dropped because another writer had committed their offsets");
    describe_counter!(DEAD_LETTERS, "Records set aside in the dead-letter destination, by kind");
    describe_gauge!(LAG, "Records in the partition's log past the table's ledger (not yet committed)");
    describe_gauge!(BUFFERED_BYTES, Unit::Bytes, "Decoded rows held in memory for the next commit");
    describe_gauge!(ASSIGNED_PARTITIONS, "Partitions this process holds");
    describe_histogram!(COMMIT_SECONDS, Unit::Seconds, "Time from the start of a batch's commit to its snapshot being visible");
    describe_histogram!(
        FRESHNESS_SECONDS,
        Unit::Seconds,
        "Produce-to-visible: commit time minus the Kafka timestamp of the oldest record of the batch"
    );
    describe_counter!(MAINTENANCE_RUNS, "Maintenance tasks run, by kind");
    describe_counter!(MAINTENANCE_FAILURES, "Maintenance tasks that failed, by kind");
    describe_histogram!(MAINTENANCE_SECONDS, Unit::Seconds, "Duration of maintenance tasks, by kind");
    describe_gauge!(IDLE, "1 while the alerts.max_idle heartbeat alert is raised (no record for that long)");
    describe_counter!(IDLE_ALERTS, "Times the alerts.max_idle heartbeat alert was raised");
    describe_counter!(CHECK_FAILURES, "Rows that failed a data check, by check (kind = column:check)");
}

/// Records read from one partition, counted once per batch handed over by the consumer.
pub fn records_read(topic: &str, partition: i32, records: u64, bytes: u64) {
    let labels = [("topic", topic.to_owned()), ("partition", partition.to_string())];
    metrics::counter!(names::RECORDS_READ, &labels).increment(records);
    metrics::counter!(names::BYTES_READ, &labels).increment(bytes);
}

/// A batch that reached the table.
pub struct Committed<'a> {
    pub table: &'a str,
    pub rows: u64,
    pub files: usize,
    pub bytes: u64,
    pub snapshot_id: Option<i64>,
    /// The schema the batch's rows were read and written with.
    pub schema_id: i32,
    pub attempts: u32,
    pub duration: Duration,
    /// Kafka timestamp (ms) of the batch's oldest and newest record, when they carry one.
    pub oldest_ms: Option<i64>,
    pub newest_ms: Option<i64>,
    pub dead_letters: &'a BTreeMap<String, u64>,
}

/// Consumption paused (buffers full) or resumed.
pub fn consumption_paused(table: &str, paused: bool) {
    metrics::gauge!(names::PAUSED, "table" => table.to_owned()).set(if paused { 1.0 } else { 0.0 });
    if paused {
        metrics::counter!(names::PAUSES, "table" => table.to_owned()).increment(1);
    }
}

/// One committed batch: logs it, counts it, and adds it to the status page's history.
pub fn batch_committed(live: &Live, c: &Committed<'_>) {
    let now_ms = now_ms();
    let freshness = c.oldest_ms.map(|t| (now_ms - t).max(0) as f64 / 1000.0);
    tracing::info!(
        rows = c.rows,
        files = c.files,
        snapshot = ?c.snapshot_id,
        schema = c.schema_id,
        attempts = c.attempts,
        millis = c.duration.as_millis() as u64,
        freshness_s = ?freshness,
        "batch committed"
    );
    let table = [("table", c.table.to_owned())];
    metrics::counter!(names::COMMITS, &table).increment(1);
    metrics::counter!(names::ROWS_WRITTEN, &table).increment(c.rows);
    metrics::counter!(names::BYTES_WRITTEN, &table).increment(c.bytes);
    metrics::histogram!(names::COMMIT_SECONDS, &table).record(c.duration.as_secs_f64());
    if let Some(f) = freshness {
        metrics::histogram!(names::FRESHNESS_SECONDS, &table).record(f);
    }
    for (kind, n) in c.dead_letters {
        metrics::counter!(names::DEAD_LETTERS, "table" => c.table.to_owned(), "kind" => kind.clone()).increment(*n);
    }
    live.committed(c, now_ms, freshness);
}

/// A commit attempt failed and is being retried (the backoff logs it); `/ready` says not ready
/// until a commit succeeds.
pub fn commit_failing(live: &Live, table: &str, error: &dyn std::fmt::Display) {
    metrics::counter!(names::COMMIT_FAILURES, "table" => table.to_owned()).increment(1);
    live.lock().commit_error = Some(error.to_string());
}

/// A commit attempt lost the catalog swap and is redone on the new table state.
pub fn commit_conflict(table: &str, conflicts: u32) {
    tracing::debug!(table, conflicts, "commit conflict; reloading and checking again");
    metrics::counter!(names::COMMIT_CONFLICTS, "table" => table.to_owned()).increment(1);
}

/// A batch was dropped: another writer committed its offsets first.
pub fn batch_fenced(live: &Live, table: &str, violations: &[String]) {
    tracing::warn!(
        ?violations,
        "batch fenced: another writer committed these offsets; dropping it and re-reading from the table's ledger"
    );
    metrics::counter!(names::FENCED_BATCHES, "table" => table.to_owned()).increment(1);
    live.lock().fenced += 1;
}

/// A maintenance task ran (its own report is logged by the scheduler).
pub fn maintenance_ran(table: &str, kind: &str, duration: Duration, ok: bool) {
    let labels = [("table", table.to_owned()), ("kind", kind.to_owned())];
    metrics::counter!(names::MAINTENANCE_RUNS, &labels).increment(1);
    if !ok {
        metrics::counter!(names::MAINTENANCE_FAILURES, &labels).increment(1);
    }
    metrics::histogram!(names::MAINTENANCE_SECONDS, &labels).record(duration.as_secs_f64());
}

/// Partitions taken away from this process: it owes them no lag any more (their new owner
/// reports theirs under its own instance).
pub fn partitions_revoked(partitions: &[crate::ledger::TopicPartition]) {
    for tp in partitions {
        metrics::gauge!(names::LAG, "topic" => tp.topic.clone(), "partition" => tp.partition.to_string()).set(0.0);
    }
}

/// The heartbeat alert: no record has arrived for `alerts.max_idle`.
pub fn idle_alert(live: &Live, table: &str, idle: Duration, max_idle: Duration) {
    tracing::error!(
        table,
        idle_s = idle.as_secs(),
        max_idle_s = max_idle.as_secs(),
        "no record has arrived for {} (alerts.max_idle = {}): check the producers and the topics",
        humantime::format_duration(Duration::from_secs(idle.as_secs())),
        humantime::format_duration(max_idle)
    );
    metrics::counter!(names::IDLE_ALERTS, "table" => table.to_owned()).increment(1);
    metrics::gauge!(names::IDLE, "table" => table.to_owned()).set(1.0);
    live.lock().idle_alert_since_ms = Some(now_ms() - idle.as_millis() as i64);
}

/// Records arrive again after a heartbeat alert.
pub fn idle_cleared(live: &Live, table: &str, idle: Duration) {
    tracing::info!(
        table,
        idle_s = idle.as_secs(),
        "records are arriving again after {} without any; heartbeat alert cleared",
        humantime::format_duration(Duration::from_secs(idle.as_secs()))
    );
    metrics::gauge!(names::IDLE, "table" => table.to_owned()).set(0.0);
    live.lock().idle_alert_since_ms = None;
}

/// Rows of a batch failed a data check.
pub fn check_failed(live: &Live, table: &str, check: &str, action: &str, rows: u64, example: &str) {
    match action {
        "stop" => tracing::error!(table, check, rows, action, "data check failed: {example}"),
        _ => tracing::warn!(table, check, rows, action, "data check failed: {example}"),
    }
    metrics::counter!(names::CHECK_FAILURES, "table" => table.to_owned(), "kind" => check.to_owned()).increment(rows);
    let mut s = live.lock();
    *s.check_failures.entry(check.to_owned()).or_default() += rows;
    s.last_check_failure = Some(format!("{check}: {example}"));
}

/// The loader's gauges and live status: set from its timer, and at once when partitions are
/// assigned or revoked.
pub fn loader_state(live: &Live, table: &str, buffered_bytes: usize, partitions: &[PartitionLive]) {
    metrics::gauge!(names::BUFFERED_BYTES, "table" => table.to_owned()).set(buffered_bytes as f64);
    metrics::gauge!(names::ASSIGNED_PARTITIONS, "table" => table.to_owned()).set(partitions.len() as f64);
    for p in partitions {
        if let Some(lag) = p.lag() {
            metrics::gauge!(names::LAG, "topic" => p.topic.clone(), "partition" => p.partition.to_string()).set(lag as f64);
        }
    }
    let mut s = live.lock();
    s.last_turn = Instant::now();
    s.buffered_bytes = buffered_bytes as u64;
    s.partitions = partitions.to_vec();
}

/// One assigned partition as the status page shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionLive {
    pub topic: String,
    pub partition: i32,
    /// The table's ledger: the next offset to commit (None: never committed).
    pub committed: Option<i64>,
    /// Where this process started reading it, when the ledger did not know it.
    pub start: Option<i64>,
    /// The next offset this process reads.
    pub read: Option<i64>,
    /// The log's end (last stable offset), from the client's statistics.
    pub end: Option<i64>,
}

impl PartitionLive {
    /// Records in the log not yet in the table.
    pub fn lag(&self) -> Option<u64> {
        let from = self.committed.or(self.start)?;
        Some(self.end?.saturating_sub(from).max(0) as u64)
    }
}

/// How long the loader's loop may go without turning before `/health` says 503.
pub const STALL_AFTER: Duration = Duration::from_secs(60);
/// The status page's history: 10-second buckets over the last hour.
pub const BUCKET: Duration = Duration::from_secs(10);
pub const BUCKETS: usize = 360;
/// Recent commits kept for the status page.
pub const RECENT_COMMITS: usize = 20;

/// The live state of one `floe run`, shared with the HTTP listener.
pub struct Live {
    state: Mutex<LiveState>,
}

pub struct LiveState {
    pub pipeline: String,
    pub table: String,
    pub topics: Vec<String>,
    pub started_ms: i64,
    pub last_turn: Instant,
    pub partitions: Vec<PartitionLive>,
    pub buffered_bytes: u64,
    /// The last commit attempt's error, cleared by a successful commit.
    pub commit_error: Option<String>,
    pub rows_committed: u64,
    pub commits: u64,
    pub fenced: u64,
    pub dead_letters: BTreeMap<String, u64>,
    pub check_failures: BTreeMap<String, u64>,
    pub last_check_failure: Option<String>,
    pub idle_alert_since_ms: Option<i64>,
    pub recent: VecDeque<CommitRow>,
    /// The permanent error the pipeline stopped on (others of the process may go on).
    pub failed: Option<String>,
    /// (bucket start ms, rows, max freshness seconds).
    pub series: VecDeque<(i64, u64, Option<f64>)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CommitRow {
    pub at_ms: i64,
    pub rows: u64,
    pub files: usize,
    pub millis: u64,
    pub freshness_s: Option<f64>,
    /// As text: JavaScript numbers cannot hold every 64-bit id.
    pub snapshot_id: Option<String>,
}

impl Live {
    pub fn new(pipeline: &str, table: &str, topics: &[String]) -> Live {
        Live {
            state: Mutex::new(LiveState {
                pipeline: pipeline.to_owned(),
                table: table.to_owned(),
                topics: topics.to_vec(),
                started_ms: now_ms(),
                last_turn: Instant::now(),
                partitions: Vec::new(),
                buffered_bytes: 0,
                commit_error: None,
                rows_committed: 0,
                commits: 0,
                fenced: 0,
                dead_letters: BTreeMap::new(),
                check_failures: BTreeMap::new(),
                last_check_failure: None,
                idle_alert_since_ms: None,
                recent: VecDeque::new(),
                failed: None,
                series: VecDeque::new(),
            }),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, LiveState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn committed(&self, c: &Committed<'_>, now_ms: i64, freshness: Option<f64>) {
        let mut s = self.lock();
        s.commit_error = None;
        s.commits += 1;
        s.rows_committed += c.rows;
        for (k, n) in c.dead_letters {
            *s.dead_letters.entry(k.clone()).or_default() += n;
        }
        s.recent.push_front(CommitRow {
            at_ms: now_ms,
            rows: c.rows,
            files: c.files,
            millis: c.duration.as_millis() as u64,
            freshness_s: freshness,
            snapshot_id: c.snapshot_id.map(|id| id.to_string()),
        });
        s.recent.truncate(RECENT_COMMITS);
        let bucket = bucket_of(now_ms);
        match s.series.back_mut() {
            Some((b, rows, fresh)) if *b == bucket => {
                *rows += c.rows;
                *fresh = max_opt(*fresh, freshness);
            }
            _ => s.series.push_back((bucket, c.rows, freshness)),
        }
        while s.series.front().is_some_and(|(b, _, _)| *b <= bucket - (BUCKETS as i64) * BUCKET.as_millis() as i64) {
            s.series.pop_front();
        }
    }

    /// `/health`: Err(reason) when the loop has not turned for `STALL_AFTER`.
    pub fn health(&self) -> Result<(), String> {
        let since = self.lock().last_turn.elapsed();
        if since > STALL_AFTER {
            Err(format!("the loader's loop has not turned for {}s (limit {}s)", since.as_secs(), STALL_AFTER.as_secs()))
        } else {
            Ok(())
        }
    }

    /// Records that the pipeline stopped on a permanent error.
    pub fn fail(&self, error: &str) {
        self.lock().failed = Some(error.to_owned());
    }

    /// The pipeline's name.
    pub fn pipeline(&self) -> String {
        self.lock().pipeline.clone()
    }

    /// `/ready`: Err(reason) unless partitions are assigned and the last commit attempt did not fail.
    pub fn ready(&self) -> Result<(), String> {
        let s = self.lock();
        if let Some(e) = &s.failed {
            return Err(format!("the pipeline stopped on an error: {e}"));
        }
        if s.partitions.is_empty() {
            return Err(format!("no partition of {:?} is assigned to this process (yet)", s.topics));
        }
        if let Some(e) = &s.commit_error {
            return Err(format!("the last commit attempt failed: {e}"));
        }
        Ok(())
    }

    /// The JSON of `/status.json`.
    pub fn snapshot(&self) -> StatusJson {
        let now = now_ms();
        let health = self.health().err();
        let ready = self.ready().err();
        let s = self.lock();
        let last = bucket_of(now);
        let mut by_bucket: BTreeMap<i64, (u64, Option<f64>)> = BTreeMap::new();
        for (b, rows, f) in &s.series {
            by_bucket.insert(*b, (*rows, *f));
        }
        let step = BUCKET.as_millis() as i64;
        let series = (0..BUCKETS as i64)
            .rev()
            .map(|i| {
                let b = last - i * step;
                let (rows, fresh) = by_bucket.get(&b).copied().unwrap_or((0, None));
                SeriesPoint { t_ms: b, rows_per_s: rows as f64 / BUCKET.as_secs_f64(), freshness_s: fresh }
            })
            .collect();
        StatusJson {
            pipeline: s.pipeline.clone(),
            table: s.table.clone(),
            topics: s.topics.clone(),
            now_ms: now,
            started_ms: s.started_ms,
            healthy: health.is_none(),
            health_reason: health,
            ready: ready.is_none(),
            ready_reason: ready,
            lag: s.partitions.iter().filter_map(PartitionLive::lag).sum(),
            partitions: s
                .partitions
                .iter()
                .map(|p| PartitionJson { lag: p.lag(), live: p.clone() })
                .collect(),
            buffered_bytes: s.buffered_bytes,
            rows_committed: s.rows_committed,
            commits: s.commits,
            fenced: s.fenced,
            last_commit_ms: s.recent.front().map(|c| c.at_ms),
            freshness_s: s.recent.front().and_then(|c| c.freshness_s),
            dead_letters: s.dead_letters.clone(),
            check_failures: s.check_failures.clone(),
            last_check_failure: s.last_check_failure.clone(),
            idle_alert_since_ms: s.idle_alert_since_ms,
            failed: s.failed.clone(),
            recent_commits: s.recent.iter().cloned().collect(),
            bucket_s: BUCKET.as_secs(),
            series,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct StatusJson {
    pub pipeline: String,
    pub table: String,
    pub topics: Vec<String>,
    pub now_ms: i64,
    pub started_ms: i64,
    pub healthy: bool,
    pub health_reason: Option<String>,
    pub ready: bool,
    pub ready_reason: Option<String>,
    /// Sum of the partitions' lag.
    pub lag: u64,
    pub partitions: Vec<PartitionJson>,
    pub buffered_bytes: u64,
    /// Rows this process committed since it started.
    pub rows_committed: u64,
    pub commits: u64,
    pub fenced: u64,
    pub last_commit_ms: Option<i64>,
    /// The last commit's freshness.
    pub freshness_s: Option<f64>,
    pub dead_letters: BTreeMap<String, u64>,
    pub check_failures: BTreeMap<String, u64>,
    pub last_check_failure: Option<String>,
    pub idle_alert_since_ms: Option<i64>,
    /// The permanent error the pipeline stopped on.
    pub failed: Option<String>,
    pub recent_commits: Vec<CommitRow>,
    pub bucket_s: u64,
    pub series: Vec<SeriesPoint>,
}

/// `/status.json` of a process running several pipelines.
#[derive(Debug, Serialize)]
pub struct PipelinesJson {
    pub now_ms: i64,
    pub healthy: bool,
    pub health_reason: Option<String>,
    pub ready: bool,
    pub ready_reason: Option<String>,
    pub pipelines: Vec<StatusJson>,
}

/// `/health` of a process: every pipeline's loop turns. A pipeline that stopped on a permanent
/// error does not count (restarting the process would not cure it: it shows on `/ready`).
pub fn health_of(lives: &[std::sync::Arc<Live>]) -> Result<(), String> {
    joined(lives, |l| if l.lock().failed.is_some() { Ok(()) } else { l.health() })
}

/// `/ready` of a process: every pipeline is ready.
pub fn ready_of(lives: &[std::sync::Arc<Live>]) -> Result<(), String> {
    joined(lives, Live::ready)
}

/// The reasons of the pipelines that fail `verdict`, each named when there are several.
fn joined(lives: &[std::sync::Arc<Live>], verdict: impl Fn(&Live) -> Result<(), String>) -> Result<(), String> {
    let reasons: Vec<String> = lives
        .iter()
        .filter_map(|l| match verdict(l) {
            Ok(()) => None,
            Err(r) if lives.len() == 1 => Some(r),
            Err(r) => Some(format!("pipeline {:?}: {r}", l.pipeline())),
        })
        .collect();
    if reasons.is_empty() { Ok(()) } else { Err(reasons.join("; ")) }
}

/// The `/status.json` of several pipelines.
pub fn snapshot_of(lives: &[std::sync::Arc<Live>]) -> PipelinesJson {
    let health = health_of(lives).err();
    let ready = ready_of(lives).err();
    PipelinesJson {
        now_ms: now_ms(),
        healthy: health.is_none(),
        health_reason: health,
        ready: ready.is_none(),
        ready_reason: ready,
        pipelines: lives.iter().map(|l| l.snapshot()).collect(),
    }
}

#[derive(Debug, Serialize)]
pub struct PartitionJson {
    #[serde(flatten)]
    pub live: PartitionLive,
    pub lag: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct SeriesPoint {
    pub t_ms: i64,
    pub rows_per_s: f64,
    pub freshness_s: Option<f64>,
}

fn bucket_of(ms: i64) -> i64 {
    let step = BUCKET.as_millis() as i64;
    ms - ms.rem_euclid(step)
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(committed: Option<i64>, start: Option<i64>, end: Option<i64>) -> PartitionLive {
        PartitionLive { topic: "t".into(), partition: 0, committed, start, read: None, end }
    }

    #[test]
    fn lag_is_the_log_past_the_ledger() {
        assert_eq!(part(Some(10), None, Some(25)).lag(), Some(15));
        assert_eq!(part(None, Some(0), Some(7)).lag(), Some(7));
        assert_eq!(part(Some(10), None, None).lag(), None);
        assert_eq!(part(None, None, Some(3)).lag(), None);
        // A ledger past the end (recreated topic) is not a negative lag.
        assert_eq!(part(Some(30), None, Some(25)).lag(), Some(0));
    }

    #[test]
    fn ready_needs_partitions_and_a_commit_that_did_not_fail() {
        let live = Live::new("p", "default.t", &["t".into()]);
        assert!(live.ready().unwrap_err().contains("no partition"));
        loader_state(&live, "default.t", 0, &[part(Some(1), None, Some(1))]);
        assert!(live.ready().is_ok());
        commit_failing(&live, "default.t", &"catalog down");
        assert!(live.ready().unwrap_err().contains("catalog down"));
        let none = BTreeMap::new();
        let c = Committed {
            table: "default.t",
            rows: 5,
            files: 1,
            bytes: 100,
            snapshot_id: Some(1),
            schema_id: 0,
            attempts: 1,
            duration: Duration::from_millis(20),
            oldest_ms: Some(now_ms() - 2000),
            newest_ms: None,
            dead_letters: &none,
        };
        batch_committed(&live, &c);
        assert!(live.ready().is_ok());
        let snap = live.snapshot();
        assert_eq!(snap.rows_committed, 5);
        assert_eq!(snap.series.len(), BUCKETS);
        assert_eq!(snap.series.iter().map(|p| p.rows_per_s).sum::<f64>(), 0.5);
        assert!(snap.freshness_s.unwrap() >= 2.0);
        assert!(live.health().is_ok());
    }

    #[test]
    fn a_process_is_ready_when_every_pipeline_is_and_a_failed_one_is_named() {
        let a = std::sync::Arc::new(Live::new("a", "ns.a", &["ta".into()]));
        let b = std::sync::Arc::new(Live::new("b", "ns.b", &["tb".into()]));
        for l in [&a, &b] {
            loader_state(l, "t", 0, &[part(Some(1), None, Some(1))]);
        }
        let both = [a.clone(), b.clone()];
        assert!(ready_of(&both).is_ok() && health_of(&both).is_ok());
        b.fail("bad record at offset 7");
        let why = ready_of(&both).unwrap_err();
        assert!(why.starts_with("pipeline \"b\": the pipeline stopped on an error: bad record at offset 7"), "{why}");
        assert!(!why.contains("\"a\""), "{why}");
        // A failed pipeline's loop no longer turns; that is not the process being stuck.
        b.lock().last_turn = Instant::now() - STALL_AFTER * 2;
        assert!(health_of(&both).is_ok());
        a.lock().last_turn = Instant::now() - STALL_AFTER * 2;
        assert!(health_of(&both).unwrap_err().starts_with("pipeline \"a\": the loader's loop has not turned"));
        // One pipeline: the reason as before, without a name.
        assert!(ready_of(std::slice::from_ref(&b)).unwrap_err().starts_with("the pipeline stopped on an error"));
        let all = snapshot_of(&both);
        assert!(!all.ready && !all.healthy);
        assert_eq!(all.pipelines.iter().map(|p| p.pipeline.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(all.pipelines[1].failed.as_deref(), Some("bad record at offset 7"));
    }
}
