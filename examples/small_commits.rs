//! Makes a table the way a loader with a short commit interval does: many small commits, each a
//! few rows plus the pipeline ledger, through the real commit engine, without Kafka. Used by
//! bench/maintain.py, and on its own as the "day at one commit per second" benchmark.
//!
//!     cargo run --release --example small_commits -- DATA_DIR COMMITS ROWS_PER_COMMIT [--maintain]
//!
//! The table is `default.events` in DATA_DIR's SQLite catalog (`DATA_DIR/catalog.db`, warehouse
//! `DATA_DIR/warehouse`, the layout `floe --data-dir DATA_DIR` uses).
//!
//! What is real: every commit is floe's own `CommitEngine::commit` of an `Append` (ledger check,
//! manifest, manifest list, manifest merge, metadata file, the conditional swap in the SQLite
//! catalog, deletion of metadata files that leave the metadata log), on local files, with its
//! data file written by `write::write_data_files` first. With `--maintain`, the maintenance tasks
//! are floe's own (`maintain::schedule::run_task` with the settings of `floe run` without a
//! `[maintenance]` section), run in-process on their own task, and their commits race the
//! appends through the catalog swap exactly as in `floe run`. Snapshot and metadata-log
//! timestamps are wall-clock time.
//!
//! What is simulated: the clock, at one second per commit. The commits are made back to back, not
//! one a second, so that a day (COMMITS = 86400) takes minutes instead of a day; "a second" is
//! "one commit". On that clock:
//! - the rows of commit k are stamped k seconds after the first commit's;
//! - each maintenance task first runs after min(period, 5 min) and then every period after its
//!   previous run ended, as `floe run`'s scheduler does, counted in commits (compaction and expiry
//!   every 600, orphan removal every 86,400);
//! - snapshot expiry's age (1 h: the table sets no `history.expire.max-snapshot-age-ms`) is
//!   passed as the wall-clock time the last 3,600 commits took, so it removes the snapshots
//!   more than 3,600 commits old (give or take the one in flight), as the real default would at one commit a second;
//! - orphan removal's age floor (3 days) is not scaled: no file is old enough on either clock in
//!   the first day, so it lists the warehouse and deletes nothing, as it would in a real first day.
//!
//! A maintenance task that takes d seconds of wall-clock time sees d / (time per commit) commits
//! go by instead of d: harsher than the real thing, since more appends race each of its commits.
//!
//! The report gives, per window of 1,000 commits: commit latency (the engine's `commit`: load,
//! check, build, swap, including retries after losing the swap to a maintenance commit), the
//! commits that needed more than one attempt, the rest of the loop (the loader's own load of the
//! table and the data file write), and the metadata at the end of the window: metadata.json
//! bytes, metadata files kept, manifests in the current manifest list, snapshots, live data files,
//! files and bytes under the warehouse. The last lines compare the start, middle and end windows.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use arrow_array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::DataType;
use floe::catalog::Catalog;
use floe::commit::{Append, AppendOutcome, CommitEngine};
use floe::config::{CatalogUri, Config, MaintenanceConfig, TableName};
use floe::ledger::{OffsetRange, TopicPartition};
use floe::maintain::schedule::{Kind, run_task};

/// The window latency is summarised over.
const WINDOW: i64 = 1000;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (maintain, args): (bool, Vec<&String>) =
        (args.iter().any(|a| a == "--maintain"), args.iter().filter(|a| *a != "--maintain").collect());
    let [_, dir, commits, rows] = &args[..] else {
        eprintln!("usage: small_commits DATA_DIR COMMITS ROWS_PER_COMMIT [--maintain]");
        std::process::exit(2);
    };
    let dir = std::path::absolute(dir).expect("a usable path");
    let (commits, rows): (i64, i64) = (commits.parse().expect("COMMITS"), rows.parse().expect("ROWS"));
    let catalog = Catalog::connect(
        CatalogUri::Sqlite(dir.join("catalog.db")),
        "floe",
        &format!("file://{}/warehouse", dir.display()),
    )
    .await
    .expect("catalog");
    floe::table::create_from_sql(
        &catalog,
        "CREATE TABLE IF NOT EXISTS events (id BIGINT, ts TIMESTAMP(6) WITH TIME ZONE, kind VARCHAR, value DOUBLE) \
         WITH (partitioning = ARRAY['day(ts)'])",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let engine = CommitEngine::new(catalog, TableName::parse("default.events").unwrap());
    let start_us = chrono::Utc::now().timestamp_micros() - commits * 1_000_000;
    let tp = TopicPartition::new("events", 0);
    let started = Instant::now();
    let done = Arc::new(AtomicI64::new(0));
    // Real time (ms since start) at which each commit finished: the simulated clock's mapping.
    let finished_at: Arc<std::sync::Mutex<Vec<u64>>> = Arc::default();
    let maintenance = maintain.then(|| {
        let (engine, done, finished_at) = (engine.clone(), done.clone(), finished_at.clone());
        tokio::spawn(async move { maintain_loop(engine, done, finished_at, commits, started).await })
    });
    let mut window: Vec<Duration> = Vec::with_capacity(WINDOW as usize);
    let (mut retried, mut rest) = (0usize, Duration::ZERO);
    let mut rows_out: Vec<Row> = Vec::new();
    println!("{}", Row::header());
    for c in 0..commits {
        let loop_started = Instant::now();
        let t = engine.load().await.expect("load");
        let schema = floe::write::arrow_schema(&t.metadata).unwrap();
        let tz = match schema.field_with_name("ts").unwrap().data_type() {
            DataType::Timestamp(_, tz) => tz.clone(),
            _ => unreachable!(),
        };
        let ids: Vec<i64> = (c * rows..(c + 1) * rows).collect();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids.clone())),
                Arc::new(
                    TimestampMicrosecondArray::from(
                        ids.iter().map(|i| start_us + c * 1_000_000 + i % rows).collect::<Vec<_>>(),
                    )
                    .with_timezone_opt(tz),
                ),
                Arc::new(StringArray::from(ids.iter().map(|i| ["click", "view", "buy"][*i as usize % 3]).collect::<Vec<_>>())),
                Arc::new(arrow_array::Float64Array::from(ids.iter().map(|i| (*i % 1000) as f64 / 10.0).collect::<Vec<_>>())),
            ],
        )
        .unwrap();
        let files = floe::write::write_data_files(engine.catalog().file_io(), &t.metadata, t.metadata.current_schema(), vec![batch], 128 << 20)
            .await
            .expect("write");
        let first = c * rows;
        let range = OffsetRange { tp: tp.clone(), expected: (c > 0).then_some(first), first, end: first + rows };
        let commit_started = Instant::now();
        rest += commit_started - loop_started;
        match engine.commit(&mut Append::new("bench", vec![range], files, t.metadata.default_partition_spec_id())).await.expect("commit") {
            AppendOutcome::Committed { attempts, .. } => retried += usize::from(attempts > 1),
            AppendOutcome::Fenced { violations, .. } => panic!("fenced: {violations:?}"),
        }
        window.push(commit_started.elapsed());
        finished_at.lock().unwrap().push(started.elapsed().as_millis() as u64);
        done.store(c + 1, Ordering::SeqCst);
        if (c + 1) % WINDOW == 0 || c + 1 == commits {
            let mut row = Row::measure(&engine, &dir, c + 1, &mut window, started).await;
            row.retried = std::mem::take(&mut retried);
            row.rest_ms = std::mem::take(&mut rest).as_secs_f64() * 1000.0 / window.len() as f64;
            println!("{row}");
            rows_out.push(row);
            window.clear();
        }
    }
    if let Some(m) = maintenance {
        m.await.expect("maintenance task");
    }
    println!("total: {commits} commits in {:.0} s", started.elapsed().as_secs_f64());
    if rows_out.len() >= 2 {
        let (first, last) = (&rows_out[0], &rows_out[rows_out.len() - 1]);
        let middle = &rows_out[rows_out.iter().position(|r| r.commits >= commits / 2).unwrap_or(0)];
        println!("{}", Row::header());
        for (name, r) in [("start", first), ("middle", middle), ("end", last)] {
            println!("{r}  <- {name}");
        }
        println!(
            "end / start: p50 {:.2}x, p99 {:.2}x",
            last.p50_ms / first.p50_ms.max(f64::MIN_POSITIVE),
            last.p99_ms / first.p99_ms.max(f64::MIN_POSITIVE)
        );
    }
}

/// The maintenance of `floe run` without a `[maintenance]` section, on the simulated clock.
async fn maintain_loop(
    engine: CommitEngine,
    done: Arc<AtomicI64>,
    finished_at: Arc<std::sync::Mutex<Vec<u64>>>,
    commits: i64,
    started: Instant,
) {
    let config = Config::defaults();
    let defaults = config.maintenance.clone();
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs() as i64);
    let mut jobs: Vec<(Kind, i64, i64)> = [
        (Kind::Compact, secs(defaults.compact_every)),
        (Kind::Expire, secs(defaults.expire_every)),
        (Kind::Orphans, secs(defaults.orphans_every)),
    ]
    .into_iter()
    .filter_map(|(k, every)| every.map(|e| (k, e, e.min(300))))
    .collect();
    let expire_age = floe::maintain::expire::DEFAULT_MAX_SNAPSHOT_AGE.as_secs() as i64;
    loop {
        let now = done.load(Ordering::SeqCst);
        if now >= commits {
            return;
        }
        let Some(job) = jobs.iter_mut().filter(|j| j.2 <= now).min_by_key(|j| j.2) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let mut cfg: MaintenanceConfig = defaults.clone();
        if job.0 == Kind::Expire {
            // An hour of simulated time is the real time the last 3,600 commits took.
            let at = finished_at.lock().unwrap();
            let since = at.len().checked_sub(expire_age as usize + 1).map(|i| at[i]).unwrap_or(0);
            cfg.expire_older_than = Some(Duration::from_millis(started.elapsed().as_millis() as u64 - since));
        }
        let t = Instant::now();
        match run_task(&engine, &cfg, job.0, config.commit.target_file_size).await {
            Ok(summary) => eprintln!(
                "[commit {now}] {:?} in {:.1}s: {}",
                job.0,
                t.elapsed().as_secs_f64(),
                summary.trim_end().replace('\n', "; ")
            ),
            Err(e) => eprintln!("[commit {now}] {:?} failed: {e}", job.0),
        }
        job.2 = done.load(Ordering::SeqCst) + job.1;
    }
}

/// One line of the report.
struct Row {
    commits: i64,
    elapsed_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Commits of the window that lost the swap at least once (to a maintenance commit).
    retried: usize,
    /// Mean time per commit spent outside `commit` (the loop's load and data file write).
    rest_ms: f64,
    metadata_json: u64,
    metadata_files: usize,
    manifests: usize,
    snapshots: usize,
    data_files: String,
    disk_files: usize,
    disk_bytes: u64,
}

impl Row {
    fn header() -> String {
        format!(
            "{:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>12} {:>9} {:>9} {:>9} {:>10} {:>10} {:>12}",
            "commits", "elapsed", "p50 ms", "p99 ms", "max ms", "retried", "rest ms", "meta.json B", "meta kept", "manifests", "snapshots", "data files", "files", "bytes"
        )
    }

    async fn measure(engine: &CommitEngine, dir: &Path, commits: i64, window: &mut [Duration], started: Instant) -> Row {
        window.sort();
        let q = |p: f64| window[((window.len() as f64 * p).ceil() as usize).clamp(1, window.len()) - 1].as_secs_f64() * 1000.0;
        let t = engine.load().await.expect("load");
        let io = engine.catalog().file_io();
        let snapshot = t.metadata.current_snapshot().expect("a snapshot");
        let manifests = floe::commit::read_manifest_list(io, &t.metadata, "default.events", snapshot).await.expect("list").len();
        let metadata_json = floe::maintain::local_path(&t.metadata_location)
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .unwrap_or(0);
        let (mut disk_files, mut disk_bytes, mut metadata_files) = (0usize, 0u64, 0usize);
        let mut stack = vec![dir.join("warehouse")];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    disk_files += 1;
                    disk_bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                    if p.to_string_lossy().ends_with(".metadata.json") {
                        metadata_files += 1;
                    }
                }
            }
        }
        Row {
            commits,
            elapsed_s: started.elapsed().as_secs_f64(),
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            max_ms: q(1.0),
            retried: 0,
            rest_ms: 0.0,
            metadata_json,
            metadata_files,
            manifests,
            snapshots: t.metadata.snapshots().len(),
            data_files: snapshot.summary().additional_properties.get("total-data-files").cloned().unwrap_or_default(),
            disk_files,
            disk_bytes,
        }
    }
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>8} {:>7.0}s {:>8.1} {:>8.1} {:>8.1} {:>7} {:>7.1} {:>12} {:>9} {:>9} {:>9} {:>10} {:>10} {:>12}",
            self.commits,
            self.elapsed_s,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.retried,
            self.rest_ms,
            self.metadata_json,
            self.metadata_files,
            self.manifests,
            self.snapshots,
            self.data_files,
            self.disk_files,
            self.disk_bytes
        )
    }
}
