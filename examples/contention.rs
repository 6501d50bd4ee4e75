//! Many committers on one table: how the catalog's conditional swap holds up when N writers append
//! to the same table at once (issue 16; DESIGN.md §4, §7). Figures are in docs/benchmarks.md.
//!
//!     cargo run --release --no-default-features --example contention -- \
//!         POSTGRES_URI DATA_DIR [--committers 1,2,4,8,16] [--seconds 20] [--rows 10]
//!         [--backoff floe|linear|at-once] [--interval 0s]
//!
//! What is real: each committer is what one `floe run` process is to the table. It has its own
//! connection pool to the PostgreSQL catalog and its own `CommitEngine` (floe's commit loop:
//! load, ledger check, manifest, manifest list, metadata file, conditional swap, and on a lost
//! swap the backoff, reload and check again), its own pipeline name and its own ledger partition;
//! before each commit it writes a small real Parquet data file (`write::write_data_files`,
//! `--rows` rows), as the loader does. All committers append to one fresh table per run, on
//! local disk.
//!
//! What is simulated: the committers are tasks of one process (on the same cores) instead of
//! separate processes, and there is no Kafka: the offsets are made up (`--rows` per commit).
//!
//! With `--interval 0s` (the default) every committer commits back to back: the table's ceiling.
//! With `--interval 1s` each commits at most once a second, as a loader with `commit.interval =
//! "1s"` does under steady load (each committer starts at a random phase of the interval).
//!
//! Reported per committer count: commits, commits/s, conflicts (swaps lost) per successful
//! commit, commit latency p50/p99/max (one `CommitEngine::commit` call, retries included),
//! commits that gave up after too many conflicts (retried at once, as a loader would), the CPU
//! the process used per successful commit (conflicts cost CPU: each lost attempt built manifests
//! and metadata for nothing), and the table's metadata file size at the end. Every run is checked afterwards: the table holds exactly
//! the rows committed, and each committer's ledger entry is where its commits left it.
//!
//! `--backoff` picks the engine's conflict backoff: `floe` ([`ConflictBackoff::DEFAULT`]),
//! `linear` (the policy before it, [`ConflictBackoff::LINEAR_200MS`]) or `at-once` (no wait).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{Int64Array, RecordBatch, StringArray};
use floe::catalog::Catalog;
use floe::commit::{Append, AppendOutcome, CommitEngine, CommitError, ConflictBackoff};
use floe::config::{CatalogUri, TableName};
use floe::ledger::{Ledger, OffsetRange, TopicPartition};
use rand::Rng;

struct Args {
    pg: String,
    dir: std::path::PathBuf,
    committers: Vec<usize>,
    seconds: u64,
    rows: i64,
    backoff: (String, ConflictBackoff),
    interval: Duration,
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "{problem}\nusage: contention POSTGRES_URI DATA_DIR [--committers 1,2,4,8,16] [--seconds 20] [--rows 10] \
         [--backoff floe|linear|at-once] [--interval 0s]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut positional = Vec::new();
    let mut args = Args {
        pg: String::new(),
        dir: Default::default(),
        committers: vec![1, 2, 4, 8, 16],
        seconds: 20,
        rows: 10,
        backoff: ("floe".into(), ConflictBackoff::DEFAULT),
        interval: Duration::ZERO,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| usage(&format!("{name} needs a value")));
        match a.as_str() {
            "--committers" => {
                args.committers = value("--committers")
                    .split(',')
                    .map(|n| n.trim().parse().unwrap_or_else(|_| usage(&format!("--committers: {n:?} is not a number"))))
                    .collect()
            }
            "--seconds" => args.seconds = value("--seconds").parse().unwrap_or_else(|_| usage("--seconds: not a number")),
            "--rows" => args.rows = value("--rows").parse().unwrap_or_else(|_| usage("--rows: not a number")),
            "--interval" => {
                let v = value("--interval");
                args.interval = humantime::parse_duration(&v).unwrap_or_else(|e| usage(&format!("--interval {v:?}: {e}")))
            }
            "--backoff" => {
                let v = value("--backoff");
                let policy = match v.as_str() {
                    "floe" => ConflictBackoff::DEFAULT,
                    "linear" => ConflictBackoff::LINEAR_200MS,
                    "at-once" => ConflictBackoff::AT_ONCE,
                    other => usage(&format!("--backoff {other:?}: use floe, linear or at-once")),
                };
                args.backoff = (v, policy);
            }
            flag if flag.starts_with("--") => usage(&format!("unknown option {flag}")),
            _ => positional.push(a),
        }
    }
    let [pg, dir] = &positional[..] else { usage("expected POSTGRES_URI and DATA_DIR") };
    args.pg = pg.clone();
    args.dir = std::path::absolute(dir).expect("a usable path");
    if args.committers.is_empty() || args.committers.contains(&0) || args.rows < 1 || args.seconds == 0 {
        usage("committers, rows and seconds must be at least 1");
    }
    args
}

/// What one committer saw.
#[derive(Default)]
struct Tally {
    commits: u64,
    conflicts: u64,
    gave_up: u64,
    latencies: Vec<Duration>,
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let uri = CatalogUri::parse(&args.pg).unwrap_or_else(|e| usage(&format!("POSTGRES_URI: {e}")));
    if !matches!(uri, CatalogUri::Postgres(_)) {
        usage("POSTGRES_URI: the benchmark is for the PostgreSQL catalog (postgresql://...)");
    }
    // A catalog name of its own: runs never see each other's tables.
    let catalog_name = format!("contention_{}", uuid::Uuid::now_v7().simple());
    let warehouse = format!("file://{}/warehouse", args.dir.display());
    println!(
        "contention: catalog {catalog_name} on {}, warehouse {warehouse}, {} s per run, {} rows per commit, \
         backoff {} ({:?}), interval {:?}",
        floe::config::redact_uri(&args.pg),
        args.seconds,
        args.rows,
        args.backoff.0,
        args.backoff.1,
        args.interval
    );
    println!(
        "{:>10} {:>8} {:>9} {:>10} {:>11} {:>8} {:>8} {:>8} {:>8} {:>12} {:>12}",
        "committers", "commits", "commits/s", "conflicts", "conf/commit", "p50 ms", "p99 ms", "max ms", "gave up", "CPU ms/commit", "metadata B"
    );
    for &n in &args.committers {
        run(&args, &uri, &catalog_name, &warehouse, n).await;
    }
}

async fn run(args: &Args, uri: &CatalogUri, catalog_name: &str, warehouse: &str, n: usize) {
    let setup = Catalog::connect(uri.clone(), catalog_name, warehouse).await.unwrap_or_else(|e| panic!("{e}"));
    let table = format!("contention.n{n}_{}", args.backoff.0.replace('-', "_"));
    floe::table::create_from_sql(&setup, &format!("CREATE TABLE {table} (id BIGINT, committer BIGINT, payload VARCHAR)"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let name = TableName::parse(&table).unwrap();
    let cpu_before = cpu_seconds();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for i in 0..n {
        // Its own catalog: its own connection pool and metadata cache, as a separate process has.
        let catalog = Catalog::connect(uri.clone(), catalog_name, warehouse).await.unwrap_or_else(|e| panic!("{e}"));
        let engine = CommitEngine::new(catalog, name.clone()).with_conflict_backoff(args.backoff.1);
        let (rows, interval) = (args.rows, args.interval);
        tasks.push(tokio::spawn(async move { committer(engine, i, rows, interval, start, deadline).await }));
    }
    let mut tallies = Vec::new();
    for t in tasks {
        tallies.push(t.await.expect("committer task"));
    }
    let elapsed = start.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    let mut latencies: Vec<Duration> = tallies.iter().flat_map(|t| t.latencies.iter().copied()).collect();
    latencies.sort();
    let commits: u64 = tallies.iter().map(|t| t.commits).sum();
    let conflicts: u64 = tallies.iter().map(|t| t.conflicts).sum();
    let gave_up: u64 = tallies.iter().map(|t| t.gave_up).sum();
    let q = |p: f64| {
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1].as_secs_f64() * 1000.0
    };
    let loaded = setup.load(&name).await.unwrap_or_else(|e| panic!("{e}"));
    verify(&loaded, &tallies, args.rows);
    let metadata_bytes = floe::maintain::local_path(&loaded.metadata_location)
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "{:>10} {:>8} {:>9.1} {:>10} {:>11.2} {:>8.1} {:>8.1} {:>8.1} {:>8} {:>12.1} {:>12}",
        n,
        commits,
        commits as f64 / elapsed.as_secs_f64(),
        conflicts,
        conflicts as f64 / commits.max(1) as f64,
        q(0.5),
        q(0.99),
        q(1.0),
        gave_up,
        cpu * 1000.0 / commits.max(1) as f64,
        metadata_bytes
    );
}

/// CPU time (user + system) this process has used, in seconds (Linux: /proc/self/stat).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = fields.get(11..13).map(|f| f.iter().filter_map(|t| t.parse::<f64>().ok()).sum()).unwrap_or(0.0);
    // Linux reports in USER_HZ, 100 per second on every architecture floe runs on.
    ticks / 100.0
}

async fn committer(engine: CommitEngine, i: usize, rows: i64, interval: Duration, start: Instant, deadline: Instant) -> Tally {
    let pipeline = format!("committer-{i}");
    let tp = TopicPartition::new("contention", i as i32);
    let mut tally = Tally::default();
    let t = engine.load().await.unwrap_or_else(|e| panic!("{e}"));
    let schema = floe::write::arrow_schema(&t.metadata).unwrap();
    let phase = if interval.is_zero() {
        Duration::ZERO
    } else {
        interval.mul_f64(rand::rng().random_range(0.0..1.0))
    };
    let mut next_at = start + phase;
    let mut offset = 0i64;
    while Instant::now() < deadline {
        if !interval.is_zero() {
            tokio::time::sleep_until(next_at.into()).await;
            next_at += interval;
            if Instant::now() >= deadline {
                break;
            }
        }
        let ids: Vec<i64> = (offset..offset + rows).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids.clone())),
                Arc::new(Int64Array::from(vec![i as i64; rows as usize])),
                Arc::new(StringArray::from(ids.iter().map(|id| format!("committer {i} row {id}")).collect::<Vec<_>>())),
            ],
        )
        .unwrap();
        let files = floe::write::write_data_files(engine.catalog().file_io(), &t.metadata, t.metadata.current_schema(), vec![batch], 128 << 20)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let range = OffsetRange { tp: tp.clone(), expected: (offset > 0).then_some(offset), first: offset, end: offset + rows };
        let mut append = Append::new(pipeline.clone(), vec![range], files, t.metadata.default_partition_spec_id());
        let began = Instant::now();
        loop {
            match engine.commit(&mut append).await {
                Ok(AppendOutcome::Committed { attempts, .. }) => {
                    tally.conflicts += u64::from(attempts.saturating_sub(1));
                    break;
                }
                Ok(AppendOutcome::Fenced { violations, .. }) => panic!("committer {i} fenced: {violations:?}"),
                Err(CommitError::TooManyConflicts { attempts, .. }) => {
                    // What the loader does: the same batch again (its check recognises a commit
                    // that landed); the conflicts count all the same.
                    tally.conflicts += u64::from(attempts);
                    tally.gave_up += 1;
                }
                Err(e) => panic!("committer {i}: {e}"),
            }
        }
        tally.latencies.push(began.elapsed());
        tally.commits += 1;
        offset += rows;
    }
    tally
}

/// The table holds exactly what was committed: every committer's rows, and its ledger entry at
/// the end of its last commit.
fn verify(loaded: &floe::catalog::LoadedTable, tallies: &[Tally], rows: i64) {
    let m = &loaded.metadata;
    let total: u64 = tallies.iter().map(|t| t.commits).sum();
    let records: u64 = m
        .current_snapshot()
        .and_then(|s| s.summary().additional_properties.get("total-records"))
        .map(|v| v.parse().expect("total-records"))
        .unwrap_or(0);
    assert_eq!(records, total * rows as u64, "the table holds {records} rows, {total} commits of {rows} were made");
    for (i, t) in tallies.iter().enumerate() {
        let ledger = Ledger::from_properties(m.properties(), &format!("committer-{i}")).expect("ledger");
        let at = ledger.get(&TopicPartition::new("contention", i as i32)).unwrap_or(0);
        assert_eq!(at, t.commits as i64 * rows, "committer {i}: ledger at {at} after {} commits", t.commits);
    }
}
