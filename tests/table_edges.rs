//! Edges of the table format (issue 12) against a SQLite catalog in a temporary directory: writes
//! that fail part-way, the orphan age floor, metadata that older readers or floe itself could not
//! parse. Files are counted on disk; rows and references are read with the iceberg crate.

mod common;
use common::files_under;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arrow_array::{Int64Array, RecordBatch, StringArray};
use floe::catalog::{Catalog, CatalogError};
use floe::commit::{Append, AppendOutcome, CommitEngine};
use floe::config::{CatalogUri, TableName};
use floe::maintain::orphans::{MIN_AGE, OrphanOptions, remove_orphans};
use floe::write::MAX_STAGED_AGE;

struct Fixture {
    dir: tempfile::TempDir,
    catalog: Catalog,
}

async fn fixture(ddl: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::connect(
        CatalogUri::Sqlite(dir.path().join("catalog.db")),
        "floe",
        &format!("file://{}/warehouse", dir.path().display()),
    )
    .await
    .unwrap();
    floe::table::create_from_sql(&catalog, ddl).await.unwrap_or_else(|e| panic!("{e}"));
    Fixture { dir, catalog }
}

fn events() -> TableName {
    TableName::parse("default.events").unwrap()
}

fn table_dir(fx: &Fixture) -> PathBuf {
    fx.dir.path().join("warehouse/default/events")
}


fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect()
}

fn region_batch(m: &iceberg::spec::TableMetadata, region: &str, ids: std::ops::Range<i64>) -> RecordBatch {
    let schema = floe::write::arrow_schema(m).unwrap();
    let ids: Vec<i64> = ids.collect();
    let regions = vec![region; ids.len()];
    RecordBatch::try_new(
        schema,
        vec![Arc::new(Int64Array::from(ids)), Arc::new(StringArray::from(regions))],
    )
    .unwrap()
}

// --- a write that fails part-way leaves nothing behind ------------------------------------------

#[tokio::test]
async fn a_write_failing_part_way_deletes_the_files_it_wrote() {
    let fx = fixture("CREATE TABLE events (id BIGINT, region VARCHAR) WITH (partitioning = ARRAY['region'])").await;
    let t = fx.catalog.load(&events()).await.unwrap();
    let data = table_dir(&fx).join("data");
    // A file where partition region=c's directory must go: creating any file there fails.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("region=c"), b"in the way").unwrap();
    // Partitions are written in order of first appearance: a and b (several files each, the
    // target size being tiny) are on disk before c fails.
    let batches: Vec<RecordBatch> = ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            let first = i as i64 * 100;
            [region_batch(&t.metadata, r, first..first + 50), region_batch(&t.metadata, r, first + 50..first + 100)]
        })
        .collect();
    let io = fx.catalog.file_io();
    let err = floe::write::write_data_files(io, &t.metadata, t.metadata.current_schema(), batches.clone(), 1)
        .await
        .expect_err("the write cannot create region=c's directory");
    assert!(err.is_transient(), "storage trouble is worth retrying: {err}");
    assert_eq!(parquet_files(&data), Vec::<PathBuf>::new(), "files of the failed write are left: {err}");

    // The same write succeeds once the way is clear, and what it wrote is all there is.
    std::fs::remove_file(data.join("region=c")).unwrap();
    let files = floe::write::write_data_files(io, &t.metadata, t.metadata.current_schema(), batches, 1).await.unwrap();
    assert!(files.len() >= 8, "two files or more per partition: {}", files.len());
    let written: HashSet<PathBuf> = files.iter().map(|f| floe::maintain::local_path(f.file_path()).unwrap()).collect();
    assert_eq!(parquet_files(&data).into_iter().collect::<HashSet<_>>(), written);
}

// --- the orphan age floor -----------------------------------------------------------------------

#[test]
fn the_orphan_floor_is_four_times_the_staged_age() {
    assert!(MIN_AGE >= MAX_STAGED_AGE * 4, "{MIN_AGE:?} vs {MAX_STAGED_AGE:?}");
    let config = |age: &str| {
        floe::config::Config::parse(&format!("[maintenance]\norphans_older_than = \"{age}\"\n"), "test.toml", &|_| None)
    };
    let err = config("59m").unwrap_err().to_string();
    assert!(err.contains("too short") && err.contains("15m") && err.contains("1h"), "{err}");
    assert!(config("1h").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_removal_spares_files_a_commit_may_still_use() {
    let fx = fixture("CREATE TABLE events (id BIGINT, region VARCHAR)").await;
    let engine = CommitEngine::new(fx.catalog.clone(), events());
    let data = table_dir(&fx).join("data");
    std::fs::create_dir_all(&data).unwrap();
    let now = SystemTime::now();
    // Staged for a commit still retrying, as old as a floe commit may still use.
    let staged = data.join("staged-by-a-retrying-commit.parquet");
    // From a writer that crashed long ago.
    let crashed = data.join("crashed-writer.parquet");
    for (p, age) in [(&staged, MAX_STAGED_AGE), (&crashed, MIN_AGE + Duration::from_secs(600))] {
        std::fs::write(p, b"not referenced").unwrap();
        std::fs::File::options().write(true).open(p).unwrap().set_modified(now - age).unwrap();
    }

    let below = remove_orphans(&engine, &OrphanOptions { older_than: MIN_AGE - Duration::from_secs(1), dry_run: false })
        .await
        .expect_err("an age below the floor is refused");
    let msg = below.to_string();
    assert!(msg.contains("too short") && msg.contains("retrying") && msg.contains("at least 1h"), "{msg}");
    assert!(staged.exists() && crashed.exists(), "a refused run deletes nothing");

    let r = remove_orphans(&engine, &OrphanOptions { older_than: MIN_AGE, dry_run: false }).await.unwrap();
    // Reported in the spelling of the table's location (here `file://` URIs).
    let reported: Vec<String> = r.orphans.iter().map(|p| p.trim_start_matches("file://").to_owned()).collect();
    assert_eq!(reported, vec![crashed.display().to_string()], "{r}");
    assert_eq!(r.too_young, 1, "{r}");
    assert!(staged.exists(), "a file younger than the threshold survives");
    assert!(!crashed.exists());
}

// --- metadata other readers and floe itself can parse ------------------------------------------

#[tokio::test]
async fn an_empty_table_says_current_snapshot_id_minus_one() {
    let fx = fixture("CREATE TABLE events (id BIGINT, region VARCHAR)").await;
    let t = fx.catalog.load(&events()).await.unwrap();
    let path = floe::maintain::local_path(&t.metadata_location).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(json["current-snapshot-id"], serde_json::json!(-1), "{json}");
    assert_eq!(t.metadata.current_snapshot_id(), None, "and it reads back as no snapshot");
}

#[tokio::test]
async fn metadata_that_does_not_parse_is_a_permanent_error() {
    let fx = fixture("CREATE TABLE events (id BIGINT, region VARCHAR)").await;
    let t = fx.catalog.load(&events()).await.unwrap();
    let path = floe::maintain::local_path(&t.metadata_location).unwrap();
    // Nested 41 ROWs deep, the way another engine may write it: floe's parser stops at 128 levels.
    let mut json = std::fs::read_to_string(&path).unwrap();
    let deep = format!(
        "{}\"long\"{}",
        r#"{"type":"struct","fields":[{"id":1000,"name":"f","required":false,"type":"#.repeat(41),
        "}]}".repeat(41)
    );
    json = json.replacen(r#""type":"string""#, &format!(r#""type":{deep}"#), 1);
    std::fs::write(&path, json).unwrap();
    let err = fx.catalog.load(&events()).await.expect_err("the metadata cannot be parsed");
    assert!(matches!(err, CatalogError::Unreadable { .. }), "{err:?}");
    assert!(!err.is_transient(), "retrying cannot help: {err}");
    let msg = err.to_string();
    assert!(msg.contains("default.events") && msg.contains("recursion limit") && msg.contains("40 nested ROWs"), "{msg}");

    // A file that is not there is storage trouble, which may pass.
    std::fs::remove_file(&path).unwrap();
    let err = fx.catalog.load(&events()).await.expect_err("the file is gone");
    assert!(err.is_transient(), "{err:?}");
}

// --- the metadata a commit wrote is reused, another writer's is read -------------------------

#[tokio::test]
async fn a_catalog_reuses_what_it_committed_and_reads_what_others_did() {
    let fx = fixture("CREATE TABLE events (id BIGINT, region VARCHAR)").await;
    // A second process on the same catalog.
    let other = Catalog::connect(
        CatalogUri::Sqlite(fx.dir.path().join("catalog.db")),
        "floe",
        &format!("file://{}/warehouse", fx.dir.path().display()),
    )
    .await
    .unwrap();
    let tp = floe::ledger::TopicPartition::new("events", 0);
    let append = |catalog: &Catalog, expected: Option<i64>, end: i64| {
        let (catalog, tp) = (catalog.clone(), tp.clone());
        async move {
            let engine = CommitEngine::new(catalog.clone(), events());
            let t = engine.load().await.unwrap();
            let first = expected.unwrap_or(0);
            let batch = region_batch(&t.metadata, "a", first..end);
            let files = floe::write::write_data_files(catalog.file_io(), &t.metadata, t.metadata.current_schema(), vec![batch], 1 << 20)
                .await
                .unwrap();
            let range = floe::ledger::OffsetRange { tp, expected, first, end };
            engine.commit(&mut Append::new("p", vec![range], files, t.metadata.default_partition_spec_id())).await.unwrap()
        }
    };
    let committed = |o: &AppendOutcome| match o {
        AppendOutcome::Committed { metadata_location, .. } => metadata_location.clone(),
        AppendOutcome::Fenced { violations, .. } => panic!("fenced: {violations:?}"),
    };

    let mine = committed(&append(&fx.catalog, None, 10).await);
    // The metadata this catalog committed is used without reading the file: with the file moved
    // away, this catalog still loads the table, and the other one cannot.
    let path = floe::maintain::local_path(&mine).unwrap();
    let aside = path.with_extension("aside");
    std::fs::rename(&path, &aside).unwrap();
    let t = fx.catalog.load(&events()).await.expect("the metadata just committed is kept");
    assert_eq!(t.metadata_location, mine);
    assert_eq!(t.metadata.current_snapshot().unwrap().summary().additional_properties["total-records"], "10");
    let err = other.load(&events()).await.expect_err("another process reads the file");
    assert!(matches!(err, CatalogError::Metadata { .. }), "{err:?}");
    std::fs::rename(&aside, &path).unwrap();

    // The other process commits the next offsets; this one, still expecting offset 10, is fenced
    // on the metadata the other wrote (read from its file), not on what it committed itself.
    let theirs = committed(&append(&other, Some(10), 20).await);
    let stale = append(&fx.catalog, Some(10), 20).await;
    assert!(matches!(&stale, AppendOutcome::Fenced { violations, .. } if violations.len() == 1), "{stale:?}");
    let t = fx.catalog.load(&events()).await.unwrap();
    assert_eq!(t.metadata_location, theirs);
    // And goes on from where the other left off; a third process reading the file agrees.
    let last = committed(&append(&fx.catalog, Some(20), 30).await);
    let fresh = Catalog::connect(
        CatalogUri::Sqlite(fx.dir.path().join("catalog.db")),
        "floe",
        &format!("file://{}/warehouse", fx.dir.path().display()),
    )
    .await
    .unwrap();
    let (kept, read) = (fx.catalog.load(&events()).await.unwrap(), fresh.load(&events()).await.unwrap());
    assert_eq!((kept.metadata_location.as_str(), read.metadata_location.as_str()), (last.as_str(), last.as_str()));
    assert_eq!(kept.metadata, read.metadata, "what was kept is what the file holds");
    assert_eq!(read.metadata.current_snapshot().unwrap().summary().additional_properties["total-records"], "30");
}

// --- many committers on one table ------------------------------------------------------------

/// Eight writers, each its own catalog connection, pipeline and ledger partition (what eight `floe
/// run` processes are to one table), append at once to one table on the PostgreSQL catalog: they
/// keep losing the swap to each other, and every commit still lands exactly once, with every
/// ledger where its commits left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_committers_racing_on_one_table_all_land_once() {
    const WRITERS: i64 = 8;
    const COMMITS: i64 = 6;
    const ROWS: i64 = 5;
    let dir = tempfile::tempdir().unwrap();
    let name = common::unique("contention");
    let warehouse = format!("file://{}/warehouse", dir.path().display());
    let uri = CatalogUri::parse(&common::postgres()).unwrap();
    let setup = Catalog::connect(uri.clone(), &name, &warehouse).await.unwrap();
    floe::table::create_from_sql(&setup, "CREATE TABLE events (id BIGINT, region VARCHAR)").await.unwrap_or_else(|e| panic!("{e}"));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let catalog = Catalog::connect(uri.clone(), &name, &warehouse).await.unwrap();
        writers.push(tokio::spawn(async move {
            let engine = CommitEngine::new(catalog.clone(), events());
            let tp = floe::ledger::TopicPartition::new("events", w as i32);
            let mut conflicts = 0u32;
            for c in 0..COMMITS {
                let t = engine.load().await.unwrap();
                let (first, end) = (c * ROWS, (c + 1) * ROWS);
                let batch = region_batch(&t.metadata, &format!("w{w}"), w * 1000 + first..w * 1000 + end);
                let files = floe::write::write_data_files(catalog.file_io(), &t.metadata, t.metadata.current_schema(), vec![batch], 1 << 20)
                    .await
                    .unwrap();
                let range = floe::ledger::OffsetRange { tp: tp.clone(), expected: (c > 0).then_some(first), first, end };
                let mut append = Append::new(format!("writer-{w}"), vec![range], files, t.metadata.default_partition_spec_id());
                loop {
                    match engine.commit(&mut append).await {
                        Ok(AppendOutcome::Committed { attempts, .. }) => {
                            conflicts += attempts - 1;
                            break;
                        }
                        Ok(AppendOutcome::Fenced { violations, .. }) => panic!("writer {w} fenced: {violations:?}"),
                        // The loader's answer to a transient failure: the same batch again.
                        Err(e) if e.is_transient() => conflicts += 1,
                        Err(e) => panic!("writer {w}: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for w in writers {
        conflicts += w.await.unwrap();
    }
    let t = setup.load(&events()).await.unwrap();
    let snapshot = t.metadata.current_snapshot().unwrap();
    assert_eq!(
        snapshot.summary().additional_properties["total-records"],
        (WRITERS * COMMITS * ROWS).to_string(),
        "every commit's rows, once"
    );
    let commit_ids: HashSet<&String> =
        t.metadata.snapshots().filter_map(|s| s.summary().additional_properties.get(floe::ledger::SUMMARY_COMMIT_ID)).collect();
    assert_eq!(commit_ids.len() as i64, WRITERS * COMMITS, "one snapshot per commit");
    for w in 0..WRITERS {
        let ledger = floe::ledger::Ledger::from_properties(t.metadata.properties(), &format!("writer-{w}")).unwrap();
        assert_eq!(ledger.get(&floe::ledger::TopicPartition::new("events", w as i32)), Some(COMMITS * ROWS), "writer {w}'s ledger");
    }
    assert!(conflicts > 0, "eight writers starting together never lost a swap: the test raced nothing");
    println!("{} commits, {conflicts} conflicts", WRITERS * COMMITS);
}
