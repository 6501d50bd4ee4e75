//! Decoding speed: floe's decoder against arrow-json's on the same records, in the same run.
//!
//! Two shapes: the seed record (with varied values, from the sample generator) and a flat record
//! of 50 columns. Records are fed one at a time, as they come from Kafka. Both decoders check
//! that the output batches are equal before anything is timed.
//!
//! Run: `cargo bench --bench decode`. Criterion reports rows/s ("elements"); a summary table with
//! rows/s and MB/s per core for both decoders is printed at the end.

use std::hint::black_box;
use std::time::Instant;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use chrono::{DateTime, FixedOffset};
use criterion::{BenchmarkId, Criterion, Throughput};
use floe::decode::{DecodeOptions, Decoder, Origin};
use iceberg::spec::Schema;

const ROWS: usize = 10_000;

const SEED: &str = "CREATE TABLE test_table (
   bool BOOLEAN, floating DOUBLE, integer BIGINT, string VARCHAR,
   bools ARRAY(BOOLEAN), floatings ARRAY(DOUBLE), integers ARRAY(BIGINT), strings ARRAY(VARCHAR),
   string_map MAP(VARCHAR, VARCHAR), nested ROW(key VARCHAR, value BIGINT),
   timestamp TIMESTAMP(6) WITH TIME ZONE, id BIGINT)";

const ORIGIN: Origin<'static> = Origin {
    topic: "bench",
    partition: 0,
    offset: 0,
};

struct Shape {
    name: &'static str,
    schema: Schema,
    records: Vec<Vec<u8>>,
}

impl Shape {
    fn bytes(&self) -> usize {
        self.records.iter().map(Vec::len).sum()
    }
}

fn schema(sql: &str) -> Schema {
    let stmt = floe::ddl::parse_create_table(sql).expect("valid DDL");
    floe::table::schema_from_columns(&stmt.columns).expect("valid schema")
}

fn seed_shape() -> Shape {
    let base: DateTime<FixedOffset> =
        DateTime::parse_from_rfc3339("2022-07-26T00:41:48.046773-07:00").expect("valid timestamp");
    let records = (0..ROWS as u64)
        .map(|id| {
            let ts = base + chrono::Duration::microseconds(id as i64 * 12_345_679);
            floe::sample::sample_record(id, ts).to_string().into_bytes()
        })
        .collect();
    Shape {
        name: "seed",
        schema: schema(SEED),
        records,
    }
}

/// 50 columns: bigint, double, varchar, boolean and timestamptz, ten of each, interleaved.
fn flat_shape() -> Shape {
    const TYPES: [&str; 5] = [
        "BIGINT",
        "DOUBLE",
        "VARCHAR",
        "BOOLEAN",
        "TIMESTAMP(6) WITH TIME ZONE",
    ];
    let columns: Vec<String> = (0..50)
        .map(|i| format!("c{i:02} {}", TYPES[i % 5]))
        .collect();
    let sql = format!("CREATE TABLE flat ({})", columns.join(", "));
    let records = (0..ROWS as u64)
        .map(|id| {
            let mut h = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555;
            let mut obj = serde_json::Map::new();
            for i in 0..50 {
                h = h.rotate_left(13).wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ id;
                let v = match i % 5 {
                    0 => serde_json::Value::from((h >> 20) as i64 - (1 << 42)),
                    1 => serde_json::Value::from((h % 1_000_000) as f64 / 1000.0),
                    2 => serde_json::Value::from(format!("text {} {}", h % 10_000, i)),
                    3 => serde_json::Value::from(h & 1 == 0),
                    _ => serde_json::Value::from(format!(
                        "2024-0{}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                        1 + h % 9,
                        1 + (h >> 8) % 28,
                        (h >> 16) % 24,
                        (h >> 24) % 60,
                        (h >> 32) % 60,
                        (h >> 40) % 1_000_000
                    )),
                };
                obj.insert(format!("c{i:02}"), v);
            }
            serde_json::Value::Object(obj).to_string().into_bytes()
        })
        .collect();
    Shape {
        name: "flat50",
        schema: schema(&sql),
        records,
    }
}

fn floe_decode(dec: &mut Decoder, records: &[Vec<u8>]) -> RecordBatch {
    for r in records {
        dec.append(r, &ORIGIN).expect("benchmark records are valid");
    }
    dec.finish()
}

fn arrow_json_decode(dec: &mut arrow_json::reader::Decoder, records: &[Vec<u8>]) -> RecordBatch {
    for r in records {
        dec.decode(r).expect("benchmark records are valid");
    }
    dec.flush().expect("valid").expect("rows were decoded")
}

fn arrow_json_decoder(schema: SchemaRef) -> arrow_json::reader::Decoder {
    arrow_json::ReaderBuilder::new(schema)
        .with_batch_size(ROWS)
        .build_decoder()
        .expect("arrow-json accepts the schema")
}

fn decoders(shape: &Shape) -> (Decoder, arrow_json::reader::Decoder) {
    let floe = Decoder::new(&shape.schema, DecodeOptions::default()).expect("decoder");
    let arrow = arrow_json_decoder(floe.arrow_schema());
    (floe, arrow)
}

/// Both decoders must agree before their speed means anything.
fn check_same_output(shape: &Shape) {
    let (mut floe, mut arrow) = decoders(shape);
    let a = floe_decode(&mut floe, &shape.records);
    let b = arrow_json_decode(&mut arrow, &shape.records);
    assert_eq!(a.num_rows(), b.num_rows());
    for (i, field) in a.schema().fields().iter().enumerate() {
        assert_eq!(
            a.column(i).to_data(),
            b.column(i).to_data(),
            "shape {}: column {} differs between floe and arrow-json",
            shape.name,
            field.name()
        );
    }
}

fn bench(c: &mut Criterion, shapes: &[Shape]) {
    for shape in shapes {
        check_same_output(shape);
        let mut group = c.benchmark_group(format!("decode/{}", shape.name));
        group.throughput(Throughput::Elements(shape.records.len() as u64));
        let (mut floe, mut arrow) = decoders(shape);
        group.bench_function(BenchmarkId::new("floe", ROWS), |b| {
            b.iter(|| black_box(floe_decode(&mut floe, &shape.records)))
        });
        group.bench_function(BenchmarkId::new("arrow-json", ROWS), |b| {
            b.iter(|| black_box(arrow_json_decode(&mut arrow, &shape.records)))
        });
        group.finish();
    }
}

/// The fastest of `rounds` whole-batch decodes, in seconds. The best time is the one least
/// disturbed by whatever else the machine runs; the two decoders alternate so both see the same
/// conditions.
fn best_of(rounds: usize, mut floe: impl FnMut(), mut arrow: impl FnMut()) -> (f64, f64) {
    let (mut f, mut a) = (f64::MAX, f64::MAX);
    for _ in 0..rounds {
        let start = Instant::now();
        floe();
        f = f.min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        arrow();
        a = a.min(start.elapsed().as_secs_f64());
    }
    (f, a)
}

fn summary(shapes: &[Shape]) {
    println!("\nsummary: one core, records fed one at a time, best of 30 batches of {ROWS} rows");
    println!(
        "{:<8} {:>9} {:>14} {:>10} {:>18} {:>10} {:>7}",
        "shape", "bytes/row", "floe rows/s", "floe MB/s", "arrow-json rows/s", "a-j MB/s", "ratio"
    );
    for shape in shapes {
        let (mut floe, mut arrow) = decoders(shape);
        let (f, a) = best_of(
            30,
            || {
                black_box(floe_decode(&mut floe, &shape.records));
            },
            || {
                black_box(arrow_json_decode(&mut arrow, &shape.records));
            },
        );
        let rows = shape.records.len() as f64;
        let mb = shape.bytes() as f64 / 1e6;
        println!(
            "{:<8} {:>9.0} {:>14.0} {:>10.1} {:>18.0} {:>10.1} {:>6.2}x",
            shape.name,
            shape.bytes() as f64 / rows,
            rows / f,
            mb / f,
            rows / a,
            mb / a,
            a / f
        );
    }
}

fn main() {
    let shapes = [seed_shape(), flat_shape()];
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &shapes);
    c.final_summary();
    // Only for real runs (`cargo bench`), not `cargo test --benches`.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--profile-time") {
        summary(&shapes);
    }
}
