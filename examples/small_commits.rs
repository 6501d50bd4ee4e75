//! Makes a table the way a loader with a short commit interval does: many small commits, each a
//! few rows plus the pipeline ledger, without Kafka. Used by bench/maintain.py.
//!
//!     cargo run --example small_commits -- DATA_DIR COMMITS ROWS_PER_COMMIT
//!
//! The table is `default.events` in DATA_DIR's SQLite catalog (`DATA_DIR/catalog.db`, warehouse
//! `DATA_DIR/warehouse`, the layout `floe --data-dir DATA_DIR` uses). Commit k is stamped k seconds
//! after the first, so COMMITS = 3600 is an hour of 1 s commits.

use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::DataType;
use floe::catalog::Catalog;
use floe::commit::{Append, AppendOutcome, CommitEngine};
use floe::config::{CatalogUri, TableName};
use floe::ledger::{OffsetRange, TopicPartition};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, commits, rows] = &args[..] else {
        eprintln!("usage: small_commits DATA_DIR COMMITS ROWS_PER_COMMIT");
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
    let started = std::time::Instant::now();
    for c in 0..commits {
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
        match engine.commit(&mut Append::new("bench", vec![range], files, t.metadata.default_partition_spec_id())).await.expect("commit") {
            AppendOutcome::Committed { .. } => {}
            AppendOutcome::Fenced { violations, .. } => panic!("fenced: {violations:?}"),
        }
        if (c + 1) % 500 == 0 {
            eprintln!("{} commits in {:.0}s", c + 1, started.elapsed().as_secs_f64());
        }
    }
}
