//! Table maintenance against a SQLite catalog in a temporary directory: commits are made with the
//! library directly (data files plus a pipeline ledger, as the loader makes them), then compacted,
//! expired, trimmed by retention and swept for orphans. Rows are read back with the iceberg
//! crate's own scan, independent of floe's maintenance code.

mod common;
use common::files_under;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arrow_array::{Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::DataType;
use futures::TryStreamExt;
use floe::catalog::Catalog;
use floe::commit::{Append, AppendOutcome, CommitEngine};
use floe::config::{CatalogUri, TableName};
use floe::ledger::{Ledger, OffsetRange, TopicPartition};
use floe::maintain::compact::{CompactOptions, compact};
use floe::maintain::expire::{ExpireOptions, expire_snapshots};
use floe::maintain::orphans::{OrphanOptions, remove_orphans};
use floe::maintain::retention::{RetentionOptions, retention};
use floe::maintain::{LiveFiles, ManifestCache};

const PIPELINE: &str = "test-pipeline";
const DAY_US: i64 = 86_400_000_000;
const HOUR_US: i64 = 3_600_000_000;

struct Fixture {
    dir: tempfile::TempDir,
    engine: CommitEngine,
    /// Next Kafka offset of the fake source partition.
    offset: std::sync::atomic::AtomicI64,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::connect(
        CatalogUri::Sqlite(dir.path().join("catalog.db")),
        "floe",
        &format!("file://{}/warehouse", dir.path().display()),
    )
    .await
    .unwrap();
    floe::table::create_from_sql(
        &catalog,
        "CREATE TABLE events (id BIGINT, ts TIMESTAMP(6) WITH TIME ZONE, payload VARCHAR) \
         WITH (partitioning = ARRAY['day(ts)'])",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let engine = CommitEngine::new(catalog, TableName::parse("default.events").unwrap());
    Fixture { dir, engine, offset: 0.into() }
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Midnight (UTC) today.
fn today_us() -> i64 {
    let now = now_us();
    now - now % DAY_US
}

fn batch(m: &iceberg::spec::TableMetadata, rows: &[(i64, Option<i64>)]) -> RecordBatch {
    let schema = floe::write::arrow_schema(m).unwrap();
    let tz = match schema.field_with_name("ts").unwrap().data_type() {
        DataType::Timestamp(_, tz) => tz.clone(),
        other => panic!("ts is {other}"),
    };
    let ids = Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>());
    let ts = TimestampMicrosecondArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>()).with_timezone_opt(tz);
    let payload = StringArray::from(rows.iter().map(|r| format!("row {} {}", r.0, "x".repeat(40))).collect::<Vec<_>>());
    RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(ts), Arc::new(payload)]).unwrap()
}

/// One loader-like commit: data files and the ledger advanced by `rows.len()` offsets.
async fn append(fx: &Fixture, rows: &[(i64, Option<i64>)]) {
    let t = fx.engine.load().await.unwrap();
    let files = floe::write::write_data_files(fx.engine.catalog().file_io(), &t.metadata, t.metadata.current_schema(), vec![batch(&t.metadata, rows)], 128 << 20)
        .await
        .unwrap();
    let tp = TopicPartition::new("events", 0);
    let first = fx.offset.load(std::sync::atomic::Ordering::SeqCst);
    let end = first + rows.len() as i64;
    let range = OffsetRange { tp, expected: (first > 0).then_some(first), first, end };
    let mut op = Append::new(PIPELINE, vec![range], files, t.metadata.default_partition_spec_id());
    match fx.engine.commit(&mut op).await.unwrap() {
        AppendOutcome::Committed { .. } => fx.offset.store(end, std::sync::atomic::Ordering::SeqCst),
        AppendOutcome::Fenced { violations, .. } => panic!("fenced: {violations:?}"),
    }
}

/// Every row (id, ts) as the iceberg crate's own scan reads it, sorted.
async fn scan(fx: &Fixture) -> Vec<(i64, Option<i64>)> {
    let t = fx.engine.load().await.unwrap();
    let table = iceberg::table::Table::builder()
        .file_io(fx.engine.catalog().file_io().clone())
        .metadata_location(t.metadata_location.clone())
        .metadata(t.metadata.clone())
        .identifier(iceberg::TableIdent::from_strs(["default", "events"]).unwrap())
        .readonly(true)
        .runtime(iceberg::Runtime::try_current().unwrap())
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = table.scan().select_all().build().unwrap().to_arrow().await.unwrap().try_collect().await.unwrap();
    let mut out = Vec::new();
    for b in batches {
        let ids = b.column_by_name("id").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
        let ts = b.column_by_name("ts").unwrap().as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap().clone();
        for i in 0..b.num_rows() {
            out.push((ids.value(i), (!ts.is_null(i)).then(|| ts.value(i))));
        }
    }
    out.sort();
    out
}

async fn live(fx: &Fixture) -> LiveFiles {
    let t = fx.engine.load().await.unwrap();
    LiveFiles::read(&mut ManifestCache::default(), fx.engine.catalog().file_io(), &t).await.unwrap()
}

fn table_dir(fx: &Fixture) -> PathBuf {
    fx.dir.path().join("warehouse/default/events")
}


fn local(loc: &str) -> PathBuf {
    floe::maintain::local_path(loc).unwrap()
}

fn summary(t: &floe::catalog::LoadedTable) -> HashMap<String, String> {
    t.metadata.current_snapshot().unwrap().summary().additional_properties.clone()
}

/// (snapshot id, data sequence number, file sequence number) of an entry.
type Numbers = (Option<i64>, Option<i64>, Option<i64>);

/// The numbers of every live entry, by path.
fn entry_numbers(l: &LiveFiles) -> BTreeMap<String, Numbers> {
    l.data
        .iter()
        .map(|(p, f)| (p.clone(), (f.entry.snapshot_id(), f.entry.sequence_number(), f.entry.file_sequence_number)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_after_300_commits_packs_partitions_and_keeps_every_row() {
    let fx = fixture().await;
    // Appends keep one manifest each here (the table says so), for compaction to merge.
    fx.engine
        .commit(&mut SetProperties(HashMap::from([("commit.manifest-merge.enabled".to_owned(), "false".to_owned())])))
        .await
        .unwrap();
    let base = today_us();
    // 300 one-second commits of 20 rows over 3 days.
    for c in 0..300i64 {
        let rows: Vec<_> = (0..20).map(|i| {
            let id = c * 20 + i;
            (id, Some(base - (id % 3) * DAY_US + (id % 1000) * 1_000_000))
        }).collect();
        append(&fx, &rows).await;
    }
    let before_rows = scan(&fx).await;
    assert_eq!(before_rows.len(), 6000);
    let before = live(&fx).await;
    let before_numbers = entry_numbers(&before);
    if before.data.len() != 900 {
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for f in before.data.values() {
            *per.entry(f.partition_key()).or_default() += 1;
        }
        panic!("expected one file per partition per commit: {} files: {per:#?}", before.data.len());
    }
    assert_eq!(before.manifests.len(), 300);
    let mut bytes_per_partition: BTreeMap<String, u64> = BTreeMap::new();
    for f in before.data.values() {
        *bytes_per_partition.entry(f.partition_key()).or_default() += f.entry.file_size_in_bytes();
    }
    let ledger_before = fx.engine.load().await.unwrap().metadata.properties()[&floe::ledger::property_key(PIPELINE)].clone();

    // Dry run: nothing changes.
    let target = 64 << 10;
    let t0 = fx.engine.load().await.unwrap();
    let dry = compact(&fx.engine, &CompactOptions { target_file_size: target, since: None, dry_run: true }).await.unwrap();
    assert!(dry.to_string().contains("would rewrite 900 small files"), "{dry}");
    assert_eq!(fx.engine.load().await.unwrap().metadata_location, t0.metadata_location);

    let report = compact(&fx.engine, &CompactOptions { target_file_size: target, since: Some(Duration::from_secs(2 * 86_400)), dry_run: false })
        .await
        .unwrap();
    let outcome = report.outcome.clone().expect("committed");
    assert!(outcome.snapshot_id.is_some(), "{report}");
    assert_eq!(outcome.files_removed, 900, "{report}");

    let after = live(&fx).await;
    let mut files_per_partition: BTreeMap<String, u64> = BTreeMap::new();
    for f in after.data.values() {
        *files_per_partition.entry(f.partition_key()).or_default() += 1;
    }
    for (p, bytes) in &bytes_per_partition {
        let bound = bytes.div_ceil(target) + 1;
        let n = files_per_partition[p];
        assert!(n <= bound, "partition {p}: {n} files after compaction, expected at most {bound} ({bytes} bytes, target {target})");
    }
    assert!(after.manifests.len() <= 2, "manifests merged: {}", after.manifests.len());
    assert_eq!(scan(&fx).await, before_rows, "the same rows before and after");

    // The replace snapshot's summary and the ledger.
    let t = fx.engine.load().await.unwrap();
    let s = t.metadata.current_snapshot().unwrap();
    assert_eq!(s.summary().operation.as_str(), "replace");
    let sum = summary(&t);
    assert_eq!(sum["deleted-data-files"], "900");
    assert_eq!(sum["added-data-files"], outcome.files_added.to_string());
    assert_eq!(sum["total-data-files"], after.data.len().to_string());
    assert_eq!(sum["total-records"], "6000");
    assert_eq!(sum["deleted-records"], "6000");
    assert_eq!(sum["added-records"], "6000");
    assert_eq!(t.metadata.properties()[&floe::ledger::property_key(PIPELINE)], ledger_before);

    // Appends after compaction, then a manifest-only merge: existing entries keep their numbers.
    for c in 0..5i64 {
        append(&fx, &[(10_000 + c, Some(base + c))]).await;
    }
    let numbers = entry_numbers(&live(&fx).await);
    let r = compact(&fx.engine, &CompactOptions { target_file_size: 128 << 20, since: None, dry_run: false }).await.unwrap();
    assert!(r.outcome.as_ref().and_then(|o| o.snapshot_id).is_some(), "{r}");
    let merged = live(&fx).await;
    // The 5 one-row files were compacted into one; every other entry is exactly as it was.
    for (p, n) in entry_numbers(&merged) {
        if let Some(old) = numbers.get(&p) {
            assert_eq!(&n, old, "{p} changed its numbers");
        }
    }
    assert!(before_numbers.keys().all(|p| !merged.data.contains_key(p)), "no compacted file came back");
    // The manifests that only recorded the first compaction's deletes are gone from the list.
    let current = fx.engine.load().await.unwrap().metadata.current_snapshot_id();
    for mf in &merged.manifests {
        assert!(
            mf.added_files_count != Some(0) || mf.existing_files_count != Some(0) || Some(mf.added_snapshot_id) == current,
            "{} lists only deletes of an earlier snapshot",
            mf.manifest_path
        );
    }
    assert_eq!(scan(&fx).await.len(), 6005);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_during_concurrent_appends_loses_and_duplicates_nothing() {
    let fx = Arc::new(fixture().await);
    let base = today_us();
    for c in 0..40i64 {
        let rows: Vec<_> = (0..10).map(|i| (c * 10 + i, Some(base - ((c * 10 + i) % 2) * DAY_US))).collect();
        append(&fx, &rows).await;
    }
    let writer = {
        let fx = fx.clone();
        tokio::spawn(async move {
            for c in 40..160i64 {
                let rows: Vec<_> = (0..10).map(|i| (c * 10 + i, Some(base - ((c * 10 + i) % 2) * DAY_US))).collect();
                append(&fx, &rows).await;
            }
        })
    };
    let mut compactions = 0;
    let mut dropped = 0;
    while !writer.is_finished() {
        let r = compact(&fx.engine, &CompactOptions { target_file_size: 1 << 20, since: None, dry_run: false }).await.unwrap();
        if let Some(o) = &r.outcome {
            if o.snapshot_id.is_some() {
                compactions += 1;
            }
            dropped += o.groups_dropped;
        }
    }
    writer.await.unwrap();
    compact(&fx.engine, &CompactOptions { target_file_size: 1 << 20, since: None, dry_run: false }).await.unwrap();
    assert!(compactions >= 1, "compaction never committed while appends landed");
    let ids: Vec<i64> = scan(&fx).await.into_iter().map(|r| r.0).collect();
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for id in &ids {
        *counts.entry(*id).or_default() += 1;
    }
    let missing: Vec<i64> = (0..1600).filter(|i| !counts.contains_key(i)).collect();
    let duplicated: Vec<i64> = counts.iter().filter(|(_, n)| **n > 1).map(|(i, _)| *i).collect();
    assert!(missing.is_empty(), "lost ids: {missing:?}");
    assert!(duplicated.is_empty(), "duplicated ids: {duplicated:?}");
    assert_eq!(ids.len(), 1600);
    let t = fx.engine.load().await.unwrap();
    let ledger = Ledger::from_properties(t.metadata.properties(), PIPELINE).unwrap();
    assert_eq!(ledger.get(&TopicPartition::new("events", 0)), Some(1600), "every append landed (groups dropped: {dropped})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_leaves_no_unreachable_file_and_keeps_the_ledger() {
    let fx = fixture().await;
    let base = today_us();
    for c in 0..30i64 {
        append(&fx, &[(c, Some(base - (c % 2) * DAY_US))]).await;
    }
    compact(&fx.engine, &CompactOptions { target_file_size: 1 << 20, since: None, dry_run: false }).await.unwrap();
    for c in 30..35i64 {
        append(&fx, &[(c, Some(base))]).await;
    }
    let rows = scan(&fx).await;
    let before = fx.engine.load().await.unwrap();
    let ledger = before.metadata.properties()[&floe::ledger::property_key(PIPELINE)].clone();

    let dry = expire_snapshots(&fx.engine, &ExpireOptions { older_than: Some(Duration::ZERO), retain_last: Some(2), dry_run: true }).await.unwrap();
    assert_eq!(dry.expired.len(), before.metadata.snapshots().len() - 2, "{dry}");
    assert_eq!(fx.engine.load().await.unwrap().metadata_location, before.metadata_location);

    let r = expire_snapshots(&fx.engine, &ExpireOptions { older_than: Some(Duration::ZERO), retain_last: Some(2), dry_run: false }).await.unwrap();
    assert!(!r.data_files.is_empty() && !r.manifests.is_empty(), "{r}");
    let t = fx.engine.load().await.unwrap();
    assert_eq!(t.metadata.snapshots().len(), 2);
    assert_eq!(t.metadata.properties()[&floe::ledger::property_key(PIPELINE)], ledger, "the ledger survives expiry");
    assert_eq!(scan(&fx).await, rows);

    // Every data file, manifest and manifest list on disk is reachable from a kept snapshot.
    let mut reachable: HashSet<PathBuf> = HashSet::new();
    let io = fx.engine.catalog().file_io();
    for s in t.metadata.snapshots() {
        reachable.insert(local(s.manifest_list()));
        let list = iceberg::spec::ManifestList::parse_with_version(
            &io.new_input(s.manifest_list()).unwrap().read().await.unwrap(),
            t.metadata.format_version(),
        )
        .unwrap();
        for mf in list.entries() {
            reachable.insert(local(&mf.manifest_path));
            for e in mf.load_manifest(io).await.unwrap().entries() {
                if e.is_alive() {
                    reachable.insert(local(e.file_path()));
                }
            }
        }
    }
    let unreachable: Vec<PathBuf> = files_under(&table_dir(&fx))
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".metadata.json") && !reachable.contains(p))
        .collect();
    assert!(unreachable.is_empty(), "unreachable files left: {unreachable:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_exactly_the_rows_older_than_the_cutoff() {
    let fx = fixture().await;
    let t0 = now_us();
    // Rows every hour for 5 days back, plus rows without a timestamp.
    let mut id = 0;
    for chunk in 0..12i64 {
        let mut rows = Vec::new();
        for h in (chunk * 10)..(chunk * 10 + 10) {
            rows.push((id, Some(t0 - h * HOUR_US)));
            id += 1;
        }
        rows.push((id, None));
        id += 1;
        append(&fx, &rows).await;
    }
    let per_day = |rows: &[(i64, Option<i64>)]| {
        let mut m: BTreeMap<Option<i64>, usize> = BTreeMap::new();
        for r in rows {
            *m.entry(r.1.map(|t| t.div_euclid(DAY_US))).or_default() += 1;
        }
        m
    };
    let before = scan(&fx).await;
    // Keep h.5 hours: rows h+1 or more hours old go. h is chosen so that hours h and h+1 are in
    // one append (hours 60-69) and one UTC day, so that one day-partition file straddles the cutoff
    // whatever the time of day the test runs at.
    let h = (60..69i64)
        .find(|h| (t0 - h * HOUR_US).div_euclid(DAY_US) == (t0 - (h + 1) * HOUR_US).div_euclid(DAY_US))
        .expect("nine hours hold at most one midnight");
    let keep = Duration::from_secs(h as u64 * 3600 + 1800);
    let expected: Vec<_> = before.iter().filter(|r| r.1.is_none_or(|t| t >= t0 - h * HOUR_US - HOUR_US / 2)).cloned().collect();
    let removed = 120 - (h as usize + 1);
    assert_eq!(before.len() - expected.len(), removed);
    let opts = RetentionOptions { column: "ts".into(), keep, target_file_size: 128 << 20, dry_run: true };
    let dry = retention(&fx.engine, &opts).await.unwrap();
    assert_eq!(dry.rows_removed() as usize, removed, "{dry}");
    assert_eq!(scan(&fx).await, before, "a dry run changes nothing");

    let r = retention(&fx.engine, &RetentionOptions { dry_run: false, ..opts.clone() }).await.unwrap();
    assert!(!r.dropped.is_empty() && !r.rewritten.is_empty(), "some files dropped by metadata, some rewritten: {r}");
    let after = scan(&fx).await;
    assert_eq!(after, expected);
    let (b, a) = (per_day(&before), per_day(&after));
    for (day, n) in &b {
        let kept = a.get(day).copied().unwrap_or(0);
        let want = expected.iter().filter(|r| r.1.map(|t| t.div_euclid(DAY_US)) == *day).count();
        assert_eq!(kept, want, "day {day:?}: {n} rows before");
    }
    let t = fx.engine.load().await.unwrap();
    assert_eq!(t.metadata.current_snapshot().unwrap().summary().operation.as_str(), "overwrite");
    assert_eq!(summary(&t)["total-records"], after.len().to_string());
    assert!(t.metadata.properties().contains_key(&floe::ledger::property_key(PIPELINE)));

    // Hours later, only whole files are old: a `delete` snapshot.
    let later = RetentionOptions { keep: Duration::from_secs(20 * 3600), ..opts.clone() };
    let r = retention(&fx.engine, &RetentionOptions { dry_run: false, ..later }).await.unwrap();
    let t = fx.engine.load().await.unwrap();
    let op = t.metadata.current_snapshot().unwrap().summary().operation.as_str().to_owned();
    assert!(op == "delete" || op == "overwrite", "{op}");
    if r.rewritten.is_empty() {
        assert_eq!(op, "delete");
    }
    let after = scan(&fx).await;
    assert!(after.iter().all(|r| r.1.is_none_or(|t| t >= t0 - 20 * HOUR_US - HOUR_US)));
    assert_eq!(after.iter().filter(|r| r.1.is_none()).count(), 12, "rows without a timestamp stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_orphans_deletes_only_old_unreferenced_files() {
    let fx = fixture().await;
    let base = today_us();
    for c in 0..5i64 {
        append(&fx, &[(c, Some(base))]).await;
    }
    let dir = table_dir(&fx);
    let old = SystemTime::now() - Duration::from_secs(5 * 86_400);
    // Everything real is old too: age alone must not get a file deleted.
    for p in files_under(&dir) {
        std::fs::File::options().write(true).open(&p).unwrap().set_modified(old).unwrap();
    }
    let day_dir = files_under(&dir.join("data"))[0].parent().unwrap().to_owned();
    let orphan_old = [day_dir.join("crashed-writer.parquet"), dir.join("metadata/lost-attempt-m0.avro")];
    let orphan_young = day_dir.join("in-flight.parquet");
    for p in orphan_old.iter().chain([&orphan_young]) {
        std::fs::write(p, b"not referenced").unwrap();
    }
    for p in &orphan_old {
        std::fs::File::options().write(true).open(p).unwrap().set_modified(old).unwrap();
    }
    let rows = scan(&fx).await;
    let files_before = files_under(&dir).len();

    let short = remove_orphans(&fx.engine, &OrphanOptions { older_than: Duration::from_secs(60), dry_run: false }).await;
    assert!(short.unwrap_err().to_string().contains("too short"));

    let dry = remove_orphans(&fx.engine, &OrphanOptions { older_than: Duration::from_secs(3 * 86_400), dry_run: true }).await.unwrap();
    let expected: Vec<String> = { let mut v: Vec<String> = orphan_old.iter().map(|p| format!("file://{}", p.display())).collect(); v.sort(); v };
    assert_eq!(dry.orphans, expected, "{dry}");
    assert_eq!(files_under(&dir).len(), files_before);

    let r = remove_orphans(&fx.engine, &OrphanOptions { older_than: Duration::from_secs(3 * 86_400), dry_run: false }).await.unwrap();
    assert_eq!(r.orphans.len(), 2, "{r}");
    assert_eq!(r.too_young, 1);
    assert!(orphan_old.iter().all(|p| !p.exists()));
    assert!(orphan_young.exists());
    assert_eq!(files_under(&dir).len(), files_before - 2);
    assert_eq!(scan(&fx).await, rows, "the table reads as before");
}

#[test]
fn maintain_commands_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write_config(dir.path(), &format!("data_dir = {:?}\n[table]\nname = \"default.events\"\n", dir.path()));
    let cfg = cfg.to_str().unwrap();
    common::floe_ok(&[
        "--config",
        cfg,
        "table",
        "create",
        "CREATE TABLE events (id BIGINT, ts TIMESTAMP(6) WITH TIME ZONE) WITH (partitioning = ARRAY['day(ts)'])",
    ]);
    let out = common::floe_ok(&["--config", cfg, "maintain", "compact", "--dry-run", "--target-file-size", "1MiB"]);
    assert!(out.contains("would rewrite 0 small files"), "{out}");
    let out = common::floe_ok(&["--config", cfg, "maintain", "expire-snapshots", "--older-than", "7d", "--retain-last", "3"]);
    assert!(out.contains("expired 0 of 0 snapshots"), "{out}");
    let out = common::floe_ok(&["--config", cfg, "maintain", "retention", "--column", "ts", "--keep", "30d", "--dry-run"]);
    assert!(out.contains("would remove 0 rows"), "{out}");
    let out = common::floe_ok(&["--config", cfg, "maintain", "remove-orphans", "--older-than", "3d", "--dry-run"]);
    assert!(out.contains("would delete 0 unreferenced files"), "{out}");
    let bad = common::floe(&["--config", cfg, "maintain", "retention", "--column", "id", "--keep", "30d"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("must be a timestamp"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_leaves_out_groups_whose_files_are_gone_from_the_base() {
    use floe::maintain::rewrite::{Group, Rewrite, Task};
    let fx = fixture().await;
    let base = today_us();
    for c in 0..4i64 {
        append(&fx, &[(c, Some(base + c))]).await;
    }
    let mut paths: Vec<String> = live(&fx).await.data.keys().cloned().collect();
    paths.sort();
    let [a, b, c, d] = &paths[..] else { panic!("{paths:?}") };
    // Someone else removes `a` (here: a retention-style drop) after our plan was made.
    let mut drop_a = Rewrite::new(Task::Retention, vec![Group { remove: vec![a.clone()], add: vec![], spec_id: 0, reads_rows: false }], false);
    let o = fx.engine.commit(&mut drop_a).await.unwrap();
    assert!(o.snapshot_id.is_some());
    assert_eq!(fx.engine.load().await.unwrap().metadata.current_snapshot().unwrap().summary().operation.as_str(), "delete");
    // Our compaction planned {a, b} -> x and {c, d} -> y on the old base.
    let t = fx.engine.load().await.unwrap();
    let io = fx.engine.catalog().file_io();
    let x = floe::write::write_data_files(io, &t.metadata, t.metadata.current_schema(), vec![batch(&t.metadata, &[(0, Some(base)), (1, Some(base + 1))])], 1 << 20).await.unwrap();
    let y = floe::write::write_data_files(io, &t.metadata, t.metadata.current_schema(), vec![batch(&t.metadata, &[(2, Some(base + 2)), (3, Some(base + 3))])], 1 << 20).await.unwrap();
    let x_path = x[0].file_path().to_owned();
    let mut compact = Rewrite::new(
        Task::Compact,
        vec![
            Group { remove: vec![a.clone(), b.clone()], add: x, spec_id: 0, reads_rows: true },
            Group { remove: vec![c.clone(), d.clone()], add: y, spec_id: 0, reads_rows: true },
        ],
        true,
    );
    let o = fx.engine.commit(&mut compact).await.unwrap();
    assert_eq!((o.groups_committed, o.groups_dropped), (1, 1), "{o:?}");
    assert_eq!(o.unreferenced, vec![x_path], "the left-out group's file is the caller's to delete");
    // a stays deleted, b stays, c and d became y: ids 1, 2, 3 once each.
    let ids: Vec<i64> = scan(&fx).await.into_iter().map(|r| r.0).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    let t = fx.engine.load().await.unwrap();
    let sum = summary(&t);
    assert_eq!((sum["deleted-data-files"].as_str(), sum["added-data-files"].as_str()), ("2", "1"));
    assert_eq!(sum["total-data-files"], "2");
    assert_eq!(sum["total-records"], "3");
}

/// Sets table properties in one commit (as another engine's `ALTER TABLE ... SET PROPERTIES`).
struct SetProperties(HashMap<String, String>);

impl floe::commit::Operation for SetProperties {
    type Outcome = ();
    fn check(&mut self, _: &floe::catalog::LoadedTable) -> Result<floe::commit::Check<()>, floe::commit::CommitError> {
        Ok(floe::commit::Check::Proceed)
    }
    async fn build(&mut self, base: &floe::catalog::LoadedTable, _: &iceberg::io::FileIO) -> Result<floe::commit::Staged, floe::commit::CommitError> {
        let metadata = iceberg::spec::TableMetadataBuilder::new_from_metadata(base.metadata.clone(), Some(base.metadata_location.clone()))
            .set_properties(self.0.clone())
            .unwrap()
            .build()
            .unwrap()
            .metadata;
        Ok(floe::commit::Staged { metadata, attempt_files: Vec::new(), refs: None })
    }
    fn committed(&mut self, _: &floe::catalog::LoadedTable, _: u32) {}
}

/// Every live data file's partition, recomputed from the rows in it with the spec its manifest
/// names, equals the value it is labelled with.
async fn assert_labels_match_data(fx: &Fixture) {
    use iceberg::spec::{Literal, PrimitiveLiteral, Transform};
    let t = fx.engine.load().await.unwrap();
    let io = fx.engine.catalog().file_io();
    let live = live(fx).await;
    assert!(!live.data.is_empty());
    for f in live.data.values() {
        let spec = t.metadata.partition_spec_by_id(f.spec_id).unwrap();
        assert_eq!(spec.fields().len(), 1);
        let unit = match spec.fields()[0].transform {
            Transform::Day => DAY_US,
            Transform::Hour => HOUR_US,
            other => panic!("unexpected transform {other}"),
        };
        let label = match f.entry.data_file().partition().iter().next().flatten() {
            Some(Literal::Primitive(PrimitiveLiteral::Int(v))) => *v as i64,
            other => panic!("{}: partition {other:?}", f.path()),
        };
        let batches = floe::maintain::compact::read_files(io, "default.events", &t.metadata, &[f]).await.unwrap();
        for b in batches {
            let ts = b.column_by_name("ts").unwrap().as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap().clone();
            for i in 0..ts.len() {
                assert_eq!(
                    ts.value(i).div_euclid(unit),
                    label,
                    "{} (spec {}, {:?}) holds a row of another partition",
                    f.path(),
                    f.spec_id,
                    spec.fields()[0].transform
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioning_change_between_planning_and_commit_of_a_compaction_refuses_the_group() {
    use floe::maintain::compact::{Prepared, prepare};
    let fx = fixture().await;
    let day = today_us() - DAY_US;
    // Rows of one day over several hours, in many small files.
    for c in 0..12i64 {
        append(&fx, &[(c, Some(day + (c % 4) * HOUR_US + c)), (100 + c, Some(day + (c % 4) * HOUR_US + 7))]).await;
    }
    let rows = scan(&fx).await;
    let opts = CompactOptions { target_file_size: 1 << 20, since: None, dry_run: false };
    let Prepared::Commit(planned) = prepare(&fx.engine, &opts).await.unwrap() else { panic!("nothing to compact") };
    let planned_groups = planned.groups().len();
    assert!(planned_groups >= 1);
    assert!(planned.groups().iter().all(|g| g.spec_id == 0), "planned with the day spec");
    let written: Vec<PathBuf> = planned.groups().iter().flat_map(|g| g.add.iter().map(|f| local(f.file_path()))).collect();
    assert!(written.iter().all(|p| p.exists()));

    // Meanwhile the partitioning changes to the same shape on the same column: day -> hour.
    let stmt = floe::ddl::parse_alter_table("ALTER TABLE events SET PROPERTIES partitioning = ARRAY['hour(ts)']").unwrap();
    let changed = fx.engine.commit(&mut floe::alter::Alter::new(stmt.action)).await.unwrap();
    assert!(changed.is_ok(), "{changed:?}");
    let t = fx.engine.load().await.unwrap();
    assert_ne!(t.metadata.default_partition_spec_id(), 0);

    let report = planned.commit(&fx.engine).await.unwrap();
    let o = report.outcome.clone().unwrap();
    assert_eq!((o.groups_committed, o.groups_spec_changed), (0, planned_groups), "{report}");
    assert!(written.iter().all(|p| !p.exists()), "the refused group's files are deleted");
    // Nothing was replaced: every row once, every file labelled by its own spec.
    assert_eq!(scan(&fx).await, rows);
    assert!(live(&fx).await.data.values().all(|f| f.spec_id == 0));
    assert_labels_match_data(&fx).await;

    // Appends under the hour spec, then a compaction planned and committed under it.
    for c in 12..18i64 {
        append(&fx, &[(c, Some(day + 5 * HOUR_US + c)), (100 + c, Some(day + 6 * HOUR_US + c))]).await;
    }
    let r = compact(&fx.engine, &opts).await.unwrap();
    let o = r.outcome.clone().unwrap();
    assert!(o.groups_committed >= 1 && o.groups_spec_changed == 0, "{r}");
    let live_now = live(&fx).await;
    let hour_spec = fx.engine.load().await.unwrap().metadata.default_partition_spec_id();
    assert_eq!(live_now.data.values().filter(|f| f.spec_id == hour_spec).count(), 2, "one file per hour after compaction");
    assert_eq!(scan(&fx).await.len(), rows.len() + 12);
    assert_labels_match_data(&fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_maintenance_keeps_files_manifests_and_metadata_bounded_over_1000_commits() {
    use floe::maintain::schedule::{Kind, run_task};
    let fx = fixture().await;
    // What `floe run` runs without a [maintenance] section.
    let config = floe::config::Config::defaults();
    let maintenance = config.maintenance.clone();
    assert!(maintenance.enabled && maintenance.compact_every.is_some() && maintenance.expire_every.is_some() && maintenance.orphans_every.is_some());
    let base = today_us();
    let io = fx.engine.catalog().file_io();
    let (mut max_files, mut max_manifests) = (0usize, 0usize);
    for c in 0..1000i64 {
        append(&fx, &[(c, Some(base - (c % 2) * DAY_US + c))]).await;
        let t = fx.engine.load().await.unwrap();
        let list = floe::commit::read_manifest_list(io, &t.metadata, "default.events", t.metadata.current_snapshot().unwrap()).await.unwrap();
        max_manifests = max_manifests.max(list.len());
        let total: usize = summary(&t)["total-data-files"].parse().unwrap();
        max_files = max_files.max(total);
        // The scheduler's period, in commits of a 1 s loader would be 600; every 100 here.
        if (c + 1) % 100 == 0 {
            for kind in [Kind::Compact, Kind::Expire, Kind::Orphans] {
                run_task(&fx.engine, &maintenance, kind, config.commit.target_file_size).await.unwrap();
            }
        }
    }
    let t = fx.engine.load().await.unwrap();
    let live_now = live(&fx).await;
    assert!(max_manifests <= 102, "at most 100 carried manifests of a spec plus the new one: {max_manifests}");
    assert!(max_files <= 104, "compaction keeps the data files bounded: at most {max_files}");
    assert!(live_now.data.len() <= 4, "{} live files right after compaction", live_now.data.len());
    // Manifests were merged keeping every file exactly once: every row reads back.
    let ids: Vec<i64> = scan(&fx).await.into_iter().map(|r| r.0).collect();
    assert_eq!(ids, (0..1000).collect::<Vec<_>>());
    assert_eq!(Ledger::from_properties(t.metadata.properties(), PIPELINE).unwrap().get(&TopicPartition::new("events", 0)), Some(1000));
    // The metadata log is trimmed to write.metadata.previous-versions-max (100) and the files
    // that drop out of it are deleted.
    assert!(t.metadata.metadata_log().len() <= 100, "{}", t.metadata.metadata_log().len());
    let metadata_files = files_under(&table_dir(&fx).join("metadata"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".metadata.json"))
        .count();
    assert!(metadata_files <= 101, "{metadata_files} metadata files kept");
    // Entries kept their snapshot ids: the manifests name only snapshots the table has had, and
    // ADDED entries only in the manifests their snapshot wrote.
    let list = floe::commit::read_manifest_list(io, &t.metadata, "default.events", t.metadata.current_snapshot().unwrap()).await.unwrap();
    for mf in &list {
        for e in floe::commit::read_manifest(io, "default.events", mf).await.unwrap() {
            if e.status() == iceberg::spec::ManifestStatus::Added {
                assert_eq!(e.snapshot_id(), Some(mf.added_snapshot_id), "{}", mf.manifest_path);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_properties_decide_manifest_merging_and_old_metadata_deletion() {
    let fx = fixture().await;
    let props = |kv: &[(&str, &str)]| SetProperties(kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    fx.engine
        .commit(&mut props(&[
            ("commit.manifest.min-count-to-merge", "5"),
            ("write.metadata.previous-versions-max", "3"),
            ("write.metadata.delete-after-commit.enabled", "false"),
        ]))
        .await
        .unwrap();
    let io = fx.engine.catalog().file_io();
    let base = today_us();
    let mut lens = Vec::new();
    for c in 0..12i64 {
        append(&fx, &[(c, Some(base + c))]).await;
        let t = fx.engine.load().await.unwrap();
        lens.push(floe::commit::read_manifest_list(io, &t.metadata, "t", t.metadata.current_snapshot().unwrap()).await.unwrap().len());
    }
    // 1..5 manifests, then the 5 carried ones merge into one (plus the new one): 2, 3, ..., 5, 2, ...
    assert_eq!(lens, vec![1, 2, 3, 4, 5, 2, 3, 4, 5, 2, 3, 4]);
    let t = fx.engine.load().await.unwrap();
    assert_eq!(t.metadata.metadata_log().len(), 3);
    let count = || files_under(&table_dir(&fx).join("metadata")).into_iter().filter(|p| p.to_string_lossy().ends_with(".metadata.json")).count();
    assert_eq!(count(), 14, "delete-after-commit disabled: every version stays");
    fx.engine.commit(&mut props(&[("write.metadata.delete-after-commit.enabled", "true")])).await.unwrap();
    append(&fx, &[(12, Some(base))]).await;
    // Only those that drop out of the log now (the rest is for remove-orphans).
    assert_eq!(count(), 16 - 2);
    let ids: Vec<i64> = scan(&fx).await.into_iter().map(|r| r.0).collect();
    assert_eq!(ids, (0..13).collect::<Vec<_>>());
    let bad = fx.engine.commit(&mut props(&[("commit.manifest.min-count-to-merge", "lots")])).await;
    assert!(bad.is_ok());
    let t = fx.engine.load().await.unwrap();
    let files = floe::write::write_data_files(io, &t.metadata, t.metadata.current_schema(), vec![batch(&t.metadata, &[(13, Some(base))])], 1 << 20).await.unwrap();
    let range = OffsetRange { tp: TopicPartition::new("events", 0), expected: Some(13), first: 13, end: 14 };
    let e = fx.engine.commit(&mut Append::new(PIPELINE, vec![range], files, 0)).await.unwrap_err().to_string();
    assert!(e.contains("commit.manifest.min-count-to-merge") && e.contains("\"lots\""), "{e}");
}
