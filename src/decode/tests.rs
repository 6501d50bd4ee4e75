use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int32Type, Int64Type,
    Time64MicrosecondType, TimestampMicrosecondType, TimestampNanosecondType,
};
use arrow_array::{Array, RecordBatch};
use chrono::{DateTime, Datelike, FixedOffset, NaiveDate};
use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};

use super::*;

const SEED: &str = "CREATE TABLE test_table (
   bool BOOLEAN, floating DOUBLE, integer BIGINT, string VARCHAR,
   bools ARRAY(BOOLEAN), floatings ARRAY(DOUBLE), integers ARRAY(BIGINT), strings ARRAY(VARCHAR),
   string_map MAP(VARCHAR, VARCHAR), nested ROW(key VARCHAR, value BIGINT),
   timestamp TIMESTAMP(6) WITH TIME ZONE)
WITH (format = 'PARQUET', partitioning = ARRAY['day(timestamp)']);";

pub(crate) const ORIGIN: Origin<'static> = Origin {
    topic: "events",
    partition: 3,
    offset: 1812,
};

pub(crate) fn schema_of(columns: &str) -> Schema {
    let sql = format!("CREATE TABLE t ({columns})");
    let stmt =
        crate::ddl::parse_create_table(&sql).unwrap_or_else(|e| panic!("{}", e.render(&sql)));
    crate::table::schema_from_columns(&stmt.columns).unwrap()
}

fn seed_schema() -> Schema {
    let mut stmt = crate::ddl::parse_create_table(SEED).unwrap();
    let id = crate::ddl::parse_create_table("CREATE TABLE x (id BIGINT)").unwrap();
    stmt.columns.extend(id.columns);
    crate::table::schema_from_columns(&stmt.columns).unwrap()
}

fn decoder(columns: &str) -> Decoder {
    Decoder::new(&schema_of(columns), DecodeOptions::default()).unwrap()
}

fn decoder_with(columns: &str, options: DecodeOptions) -> Decoder {
    Decoder::new(&schema_of(columns), options).unwrap()
}

/// Decodes each record (all must succeed) and returns the batch.
fn batch(dec: &mut Decoder, records: &[&str]) -> RecordBatch {
    for r in records {
        if let Err(e) = dec.append(r.as_bytes(), &ORIGIN) {
            panic!("{r}: {e}");
        }
    }
    dec.finish()
}

/// Decodes one record of a one-column table `c` that must fail; returns the error.
fn fails(columns: &str, record: &str) -> RecordError {
    let mut dec = decoder(columns);
    let err = dec
        .append(record.as_bytes(), &ORIGIN)
        .expect_err(&format!("{record} should fail for {columns}"));
    assert_eq!(dec.len(), 0);
    err
}

fn one(columns: &str, record: &str) -> RecordBatch {
    batch(&mut decoder(columns), &[record])
}

fn ts(s: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(s).unwrap()
}

// ---- the seed -----------------------------------------------------------------------------------

#[test]
fn arrow_schema_is_the_iceberg_crates() {
    let schema = seed_schema();
    let dec = Decoder::new(&schema, DecodeOptions::default()).unwrap();
    let expected = iceberg::arrow::schema_to_arrow_schema(&schema).unwrap();
    assert_eq!(*dec.arrow_schema(), expected);
    assert_eq!(dec.schema_id(), schema.schema_id());
    let mut dec = dec;
    assert_eq!(*dec.finish().schema(), expected);
}

#[test]
fn seed_record_and_a_thousand_samples() {
    let schema = seed_schema();
    let mut dec = Decoder::new(&schema, DecodeOptions::default()).unwrap();
    let when = ts("2022-07-26T00:41:48.046773-07:00");
    let seed = crate::sample::seed_record(when).to_string();
    dec.append(seed.as_bytes(), &ORIGIN).unwrap();
    let samples: Vec<serde_json::Value> = (1..=1000)
        .map(|id| crate::sample::sample_record(id, when))
        .collect();
    for s in &samples {
        dec.append(s.to_string().as_bytes(), &ORIGIN).unwrap();
    }
    assert_eq!(dec.len(), 1001);
    assert!(dec.buffered_bytes() > 1001 * 50);
    assert_eq!(dec.ignored_fields(), 0);
    let b = dec.finish();
    assert!(dec.is_empty());
    assert_eq!(b.num_rows(), 1001);
    let col = |name: &str| b.column_by_name(name).unwrap().clone();

    // The seed row.
    assert!(col("bool").as_boolean().value(0));
    assert_eq!(col("floating").as_primitive::<Float64Type>().value(0), 0.01);
    assert_eq!(col("integer").as_primitive::<Int64Type>().value(0), 1);
    assert_eq!(col("string").as_string::<i32>().value(0), "value");
    assert!(col("id").is_null(0));
    let micros = when.timestamp_micros();
    assert_eq!(
        col("timestamp")
            .as_primitive::<TimestampMicrosecondType>()
            .value(0),
        micros
    );
    let strings = col("strings");
    let strings = strings.as_list::<i32>().value(0);
    let strings: Vec<&str> = strings
        .as_string::<i32>()
        .iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(strings, ["a", "b", "c"]);
    let map = col("string_map");
    let map = map.as_map();
    let entries = map.value(0);
    let keys: Vec<_> = entries
        .column(0)
        .as_string::<i32>()
        .iter()
        .map(Option::unwrap)
        .collect();
    let values: Vec<_> = entries
        .column(1)
        .as_string::<i32>()
        .iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(keys, ["k1", "k2"]);
    assert_eq!(values, ["v1", "v2"]);
    let nested = col("nested");
    let nested = nested.as_struct();
    assert_eq!(nested.column(0).as_string::<i32>().value(0), "key name");
    assert_eq!(nested.column(1).as_primitive::<Int64Type>().value(0), 1);

    // Every sample row, against the JSON it came from.
    for (i, s) in samples.iter().enumerate() {
        let r = i + 1;
        assert_eq!(
            col("id").as_primitive::<Int64Type>().value(r),
            s["id"].as_i64().unwrap()
        );
        assert_eq!(
            col("bool").as_boolean().value(r),
            s["bool"].as_bool().unwrap()
        );
        assert_eq!(
            col("floating").as_primitive::<Float64Type>().value(r),
            s["floating"].as_f64().unwrap()
        );
        assert_eq!(
            col("integer").as_primitive::<Int64Type>().value(r),
            s["integer"].as_i64().unwrap()
        );
        assert_eq!(
            col("string").as_string::<i32>().value(r),
            s["string"].as_str().unwrap()
        );
        let bools = col("bools");
        let bools = bools.as_list::<i32>().value(r);
        let expected: Vec<bool> = s["bools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_bool().unwrap())
            .collect();
        assert_eq!(
            bools
                .as_boolean()
                .iter()
                .map(Option::unwrap)
                .collect::<Vec<_>>(),
            expected
        );
        let fl = col("floatings");
        let fl = fl.as_list::<i32>().value(r);
        let expected: Vec<f64> = s["floatings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(fl.as_primitive::<Float64Type>().values().to_vec(), expected);
        let ints = col("integers");
        let ints = ints.as_list::<i32>().value(r);
        let expected: Vec<i64> = s["integers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(ints.as_primitive::<Int64Type>().values().to_vec(), expected);
        let strs = col("strings");
        let strs = strs.as_list::<i32>().value(r);
        let expected: Vec<&str> = s["strings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            strs.as_string::<i32>()
                .iter()
                .map(Option::unwrap)
                .collect::<Vec<_>>(),
            expected
        );
        let map = col("string_map");
        let entries = map.as_map().value(r);
        let obj = s["string_map"].as_object().unwrap();
        assert_eq!(entries.len(), obj.len());
        for (j, (k, v)) in obj.iter().enumerate() {
            assert_eq!(entries.column(0).as_string::<i32>().value(j), k);
            assert_eq!(
                entries.column(1).as_string::<i32>().value(j),
                v.as_str().unwrap()
            );
        }
        let nested = col("nested");
        let nested = nested.as_struct();
        assert_eq!(
            nested.column(0).as_string::<i32>().value(r),
            s["nested"]["key"].as_str().unwrap()
        );
        assert_eq!(
            nested.column(1).as_primitive::<Int64Type>().value(r),
            s["nested"]["value"].as_i64().unwrap()
        );
        assert_eq!(
            col("timestamp")
                .as_primitive::<TimestampMicrosecondType>()
                .value(r),
            micros
        );
    }
}

#[test]
fn bad_sample_records_are_isolated_and_classified() {
    let mut dec = Decoder::new(&seed_schema_with_required_id(), DecodeOptions::default()).unwrap();
    let when = ts("2022-07-26T00:41:48.046773-07:00");
    let expected = [
        RecordErrorKind::NotJson,
        RecordErrorKind::WrongType,
        RecordErrorKind::MissingRequired,
        RecordErrorKind::OutOfRange,
        RecordErrorKind::InvalidUtf8,
    ];
    for (kind, want) in expected.iter().enumerate() {
        let good = crate::sample::sample_record(kind as u64 * 2, when).to_string();
        dec.append(good.as_bytes(), &ORIGIN).unwrap();
        let bad = crate::sample::bad_record(kind as u64 * 2 + 1, kind, when);
        let err = dec.append(&bad, &ORIGIN).unwrap_err();
        assert_eq!(err.kind(), *want, "{err}");
        assert_eq!(err.kind().as_str(), crate::sample::BAD_KINDS[kind]);
        assert!(
            err.to_string()
                .ends_with("(topic events, partition 3, offset 1812)"),
            "{err}"
        );
    }
    let b = dec.finish();
    assert_eq!(b.num_rows(), 5);
    let ids = b
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    assert_eq!(ids, [0, 2, 4, 6, 8]);
}

fn seed_schema_with_required_id() -> Schema {
    let mut stmt = crate::ddl::parse_create_table(SEED).unwrap();
    let id = crate::ddl::parse_create_table("CREATE TABLE x (id BIGINT NOT NULL)").unwrap();
    stmt.columns.extend(id.columns);
    crate::table::schema_from_columns(&stmt.columns).unwrap()
}

// ---- errors -------------------------------------------------------------------------------------

#[test]
fn error_messages_name_column_expectation_value_and_origin() {
    let e = fails("ts TIMESTAMP(6) WITH TIME ZONE", r#"{"ts": "yesterday"}"#);
    assert_eq!(e.kind(), RecordErrorKind::WrongType);
    assert_eq!(e.column(), "ts");
    assert_eq!(e.origin().topic, "events");
    assert_eq!(e.origin().partition, 3);
    assert_eq!(e.origin().offset, 1812);
    let text = e.to_string();
    assert!(
        text.starts_with("column \"ts\": expected a timestamp with time zone"),
        "{text}"
    );
    assert!(text.contains("got \"yesterday\""), "{text}");
    assert!(
        text.ends_with("(topic events, partition 3, offset 1812)"),
        "{text}"
    );

    let e = fails(
        "n ROW(a ARRAY(MAP(VARCHAR, INTEGER)))",
        r#"{"n": {"a": [{}, {"x": 1, "y": "z"}]}}"#,
    );
    assert_eq!(e.column(), r#"n.a[1]["y"]"#);
    assert_eq!(e.kind(), RecordErrorKind::WrongType);

    let long = "x".repeat(1000);
    let e = fails("i INTEGER", &format!(r#"{{"i": "{long}"}}"#));
    assert!(e.message().len() < 200, "{}", e.message());
    assert!(e.message().contains("(1000 bytes)"), "{}", e.message());

    let e = fails("i INTEGER", r#"{"i": [1, 2]}"#);
    assert_eq!(e.message(), "expected an int (32-bit integer), got [1, 2]");
}

#[test]
fn not_json_not_utf8_not_an_object() {
    for bad in [
        "",
        "   ",
        "{",
        r#"{"a": 1,}"#,
        r#"{"a" 1}"#,
        "{} x",
        r#"{"a": tru}"#,
        r#"{"a": "\x"}"#,
        "{\"a\": \"\u{1}\"}",
        r#"{"a": 01}"#,
        r#"{"a": 1.}"#,
        r#"{"a": -}"#,
        r#"{"a": "\ud800"}"#,
    ] {
        let e = fails("a VARCHAR", bad);
        assert_eq!(e.kind(), RecordErrorKind::NotJson, "{bad:?}: {e}");
        assert_eq!(e.column(), "");
    }
    // Syntax errors in fields the table does not have are still errors.
    assert_eq!(
        fails("a VARCHAR", r#"{"b": [1, }"#).kind(),
        RecordErrorKind::NotJson
    );
    for bad in ["[1]", "1", "\"x\"", "null"] {
        assert_eq!(
            fails("a VARCHAR", bad).kind(),
            RecordErrorKind::NotAnObject,
            "{bad}"
        );
    }
    let mut dec = decoder("a VARCHAR");
    let e = dec.append(b"{\"a\": \"\xff\"}", &ORIGIN).unwrap_err();
    assert_eq!(e.kind(), RecordErrorKind::InvalidUtf8);
    // Deep nesting is refused, not a stack overflow.
    let deep = format!("{{\"b\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(fails("a VARCHAR", &deep).kind(), RecordErrorKind::NotJson);
}

#[test]
fn a_failed_record_leaves_no_trace() {
    let cols = "a BIGINT, l ARRAY(ROW(x VARCHAR, m MAP(VARCHAR, ARRAY(INTEGER)))), s VARCHAR";
    let mut dec = decoder(cols);
    let good = r#"{"a": 1, "l": [{"x": "p", "m": {"k": [1, 2]}}], "s": "ok"}"#;
    // Fails deep inside, after much of the record was written.
    let bad = r#"{"a": 2, "l": [{"x": "q", "m": {"k": [3]}}, {"x": "r", "m": {"k": [4, "five"]}}], "s": "no"}"#;
    let bad_late = r#"{"a": 3, "l": [], "s": "no", "extra": 1} trailing"#;
    dec.append(good.as_bytes(), &ORIGIN).unwrap();
    assert_eq!(
        dec.append(bad.as_bytes(), &ORIGIN).unwrap_err().column(),
        r#"l[1].m["k"][1]"#
    );
    assert!(dec.append(bad_late.as_bytes(), &ORIGIN).is_err());
    dec.append(good.as_bytes(), &ORIGIN).unwrap();
    assert_eq!(dec.ignored_fields(), 0);
    let b = dec.finish();
    let mut single = decoder(cols);
    let expected = batch(&mut single, &[good, good]);
    assert_eq!(b, expected);
}

// ---- null, missing, extra -----------------------------------------------------------------------

#[test]
fn missing_and_null_are_null_unless_required() {
    let b = one(
        "a BIGINT, b VARCHAR, c ARRAY(INTEGER), d ROW(x INTEGER), e MAP(VARCHAR, INTEGER)",
        r#"{"b": null}"#,
    );
    for c in b.columns() {
        assert!(c.is_null(0));
    }
    let e = fails("a BIGINT NOT NULL, b VARCHAR", r#"{"b": "x"}"#);
    assert_eq!(
        (e.kind(), e.column()),
        (RecordErrorKind::MissingRequired, "a")
    );
    let e = fails("a BIGINT NOT NULL", r#"{"a": null}"#);
    assert_eq!(
        (e.kind(), e.column()),
        (RecordErrorKind::MissingRequired, "a")
    );
    // A required column's value is fine.
    let b = one("a BIGINT NOT NULL", r#"{"a": 5}"#);
    assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), 5);
}

#[test]
fn extra_fields_are_ignored_and_counted() {
    let mut dec = decoder("a BIGINT, n ROW(x INTEGER)");
    let b = batch(
        &mut dec,
        &[
            r#"{"z": {"deep": [1, {"q": null}]}, "a": 1, "n": {"x": 2, "y": 3}, "w": "s"}"#,
            r#"{"a": 2}"#,
        ],
    );
    assert_eq!(dec.ignored_fields(), 3);
    // `z` and `w` are fields of the row; `y` is one of the nested object `n`.
    assert_eq!(dec.ignored_top_level_fields(), 2);
    assert_eq!(
        b.column(0).as_primitive::<Int64Type>().values().to_vec(),
        [1, 2]
    );
    // Counting does not reset with finish.
    batch(&mut dec, &[r#"{"b": 1, "a": 3}"#]);
    assert_eq!(dec.ignored_fields(), 4);
    assert_eq!(dec.ignored_top_level_fields(), 3);
    batch(&mut dec, &[r#"{"a": 4, "n": {"x": 1, "extra": true}}"#]);
    assert_eq!((dec.ignored_fields(), dec.ignored_top_level_fields()), (5, 3));
}

#[test]
fn repeated_keys_last_wins() {
    let b = one(
        "a BIGINT, n ROW(x VARCHAR, y INTEGER), s VARCHAR",
        r#"{"a": 1, "n": {"x": "p", "x": "q"}, "a": 2, "s": "t"}"#,
    );
    assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), 2);
    let n = b.column(1).as_struct();
    assert_eq!(n.column(0).as_string::<i32>().value(0), "q");
    assert!(n.column(1).is_null(0));
    assert_eq!(b.column(2).as_string::<i32>().value(0), "t");
}

// ---- primitives ---------------------------------------------------------------------------------

fn ints(columns: &str, records: &[&str]) -> Vec<i64> {
    let b = batch(&mut decoder(columns), records);
    let c = b.column(0);
    match c.data_type() {
        arrow_schema::DataType::Int32 => c
            .as_primitive::<Int32Type>()
            .values()
            .iter()
            .map(|&v| v as i64)
            .collect(),
        _ => c.as_primitive::<Int64Type>().values().to_vec(),
    }
}

#[test]
fn booleans() {
    let b = batch(
        &mut decoder("b BOOLEAN"),
        &[
            r#"{"b": true}"#,
            r#"{"b": false}"#,
            r#"{"b": "true"}"#,
            r#"{"b": "false"}"#,
        ],
    );
    let v: Vec<_> = b
        .column(0)
        .as_boolean()
        .iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(v, [true, false, true, false]);
    for bad in ["1", "\"yes\"", "[]", "{}"] {
        assert_eq!(
            fails("b BOOLEAN", &format!(r#"{{"b": {bad}}}"#)).kind(),
            RecordErrorKind::WrongType,
            "{bad}"
        );
    }
}

#[test]
fn ints_and_longs_are_exact() {
    let recs = [
        r#"{"i": 0}"#,
        r#"{"i": -2147483648}"#,
        r#"{"i": 2147483647}"#,
        r#"{"i": "42"}"#,
        r#"{"i": "-7"}"#,
        r#"{"i": 1e3}"#,
        r#"{"i": 1.0}"#,
        r#"{"i": 12.50e1}"#,
        r#"{"i": -0}"#,
    ];
    assert_eq!(
        ints("i INTEGER", &recs),
        [0, -2147483648, 2147483647, 42, -7, 1000, 1, 125, 0]
    );
    let recs = [
        r#"{"l": -9223372036854775808}"#,
        r#"{"l": 9223372036854775807}"#,
        r#"{"l": "9223372036854775807"}"#,
        r#"{"l": 123456789012345678}"#,
        r#"{"l": 1234567890123456789}"#,
        r#"{"l": 9.2e18}"#,
    ];
    assert_eq!(
        ints("l BIGINT", &recs),
        [
            i64::MIN,
            i64::MAX,
            i64::MAX,
            123456789012345678,
            1234567890123456789,
            9_200_000_000_000_000_000
        ]
    );
    for (cols, v) in [
        ("i INTEGER", "2147483648"),
        ("i INTEGER", "-2147483649"),
        ("i INTEGER", "1e10"),
        ("i BIGINT", "9223372036854775808"),
        ("i BIGINT", "-9223372036854775809"),
        ("i BIGINT", "1e30"),
        ("i BIGINT", "1e1000000"),
        ("i BIGINT", "123456789012345678901234567890123456789012"),
    ] {
        let e = fails(cols, &format!(r#"{{"i": {v}}}"#));
        assert_eq!(e.kind(), RecordErrorKind::OutOfRange, "{cols} {v}: {e}");
    }
    for v in [
        "1.5", "\"1.5\"", "\"abc\"", "\"\"", "\" 1\"", "true", "1e-1",
    ] {
        let e = fails("i BIGINT", &format!(r#"{{"i": {v}}}"#));
        assert_eq!(e.kind(), RecordErrorKind::WrongType, "{v}: {e}");
    }
}

#[test]
fn floats_and_doubles() {
    let b = batch(
        &mut decoder("d DOUBLE, f REAL"),
        &[
            r#"{"d": 0.1, "f": 0.1}"#,
            r#"{"d": "NaN", "f": "NaN"}"#,
            r#"{"d": "Infinity", "f": "-Infinity"}"#,
            r#"{"d": "-2.5e-3", "f": "3"}"#,
            r#"{"d": 1.7976931348623157e308, "f": 3.4028235e38}"#,
            r#"{"d": 5e-324, "f": -0.0}"#,
            r#"{"d": 12345678901234567890, "f": 1}"#,
        ],
    );
    let d = b.column(0).as_primitive::<Float64Type>().values();
    let f = b.column(1).as_primitive::<Float32Type>().values();
    assert_eq!(d[0], 0.1);
    assert_eq!(f[0], 0.1f32);
    assert!(d[1].is_nan() && f[1].is_nan());
    assert_eq!((d[2], f[2]), (f64::INFINITY, f32::NEG_INFINITY));
    assert_eq!((d[3], f[3]), (-0.0025, 3.0));
    assert_eq!((d[4], f[4]), (f64::MAX, f32::MAX));
    assert_eq!(d[5], 5e-324);
    assert!(f[5] == 0.0 && f[5].is_sign_negative());
    assert_eq!(d[6], 12345678901234567890.0);
    assert_eq!(
        fails("d DOUBLE", r#"{"d": 1e400}"#).kind(),
        RecordErrorKind::OutOfRange
    );
    assert_eq!(
        fails("f REAL", r#"{"f": 1e39}"#).kind(),
        RecordErrorKind::OutOfRange
    );
    for v in ["\"inf\"", "\"nan\"", "\"1x\"", "true", "[]"] {
        assert_eq!(
            fails("d DOUBLE", &format!(r#"{{"d": {v}}}"#)).kind(),
            RecordErrorKind::WrongType,
            "{v}"
        );
    }
}

#[test]
fn decimals_are_exact() {
    let recs = [
        r#"{"d": 123.45}"#,
        r#"{"d": "123.45"}"#,
        r#"{"d": -0.01}"#,
        r#"{"d": 12.3}"#,
        r#"{"d": 7}"#,
        r#"{"d": 1.2e2}"#,
        r#"{"d": 999.99}"#,
        r#"{"d": "-999.99"}"#,
        r#"{"d": 1.50000}"#,
        r#"{"d": 0.1}"#,
    ];
    let b = batch(&mut decoder("d DECIMAL(5, 2)"), &recs);
    let d = b.column(0).as_primitive::<Decimal128Type>();
    assert_eq!(d.precision(), 5);
    assert_eq!(d.scale(), 2);
    assert_eq!(
        d.values().to_vec(),
        [12345, 12345, -1, 1230, 700, 12000, 99999, -99999, 150, 10]
    );
    for v in ["123.456", "1000", "1000.00", "\"0.001\"", "1e3"] {
        let e = fails("d DECIMAL(5, 2)", &format!(r#"{{"d": {v}}}"#));
        assert_eq!(e.kind(), RecordErrorKind::OutOfRange, "{v}: {e}");
    }
    assert_eq!(
        fails("d DECIMAL(5, 2)", r#"{"d": "1,5"}"#).kind(),
        RecordErrorKind::WrongType
    );
    // 38 digits, beyond what a double can hold exactly.
    let max = "9".repeat(38);
    let b = one("d DECIMAL(38, 0)", &format!(r#"{{"d": {max}}}"#));
    assert_eq!(
        b.column(0).as_primitive::<Decimal128Type>().value(0),
        max.parse::<i128>().unwrap()
    );
    let b = one(
        "d DECIMAL(38, 10)",
        r#"{"d": "-1234567890123456789012345678.0123456789"}"#,
    );
    assert_eq!(
        b.column(0).as_primitive::<Decimal128Type>().value(0),
        -12345678901234567890123456780123456789
    );
    assert_eq!(
        fails("d DECIMAL(38, 0)", &format!(r#"{{"d": 1{max}}}"#)).kind(),
        RecordErrorKind::OutOfRange
    );
}

#[test]
fn strings_keep_unicode_escapes_and_other_json_as_text() {
    let recs = [
        r#"{"s": "plain"}"#,
        r#"{"s": "ünï €"}"#,
        r#"{"s": "q\"b\\s\/n\nt\tu\u00e9\ud83d\ude00"}"#,
        r#"{"s": ""}"#,
        r#"{"s": 12.50}"#,
        r#"{"s": true}"#,
        r#"{"s": { "a" : [1, 2 , {"b": null}], "c\n": "d" } }"#,
        r#"{"s": []}"#,
    ];
    let b = batch(&mut decoder("s VARCHAR"), &recs);
    let s: Vec<_> = b
        .column(0)
        .as_string::<i32>()
        .iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(
        s,
        [
            "plain",
            "ünï €",
            "q\"b\\s/n\nt\tué😀",
            "",
            "12.50",
            "true",
            r#"{"a":[1,2,{"b":null}],"c\n":"d"}"#,
            "[]"
        ]
    );
}

#[test]
fn dates_including_leap_days_and_extremes() {
    let recs = [
        r#"{"d": "1970-01-01"}"#,
        r#"{"d": "2024-02-29"}"#,
        r#"{"d": "2000-02-29"}"#,
        r#"{"d": "0001-01-01"}"#,
        r#"{"d": "9999-12-31"}"#,
        r#"{"d": "1969-12-31"}"#,
    ];
    let b = batch(&mut decoder("d DATE"), &recs);
    let days = |y, m, d| {
        (NaiveDate::from_ymd_opt(y, m, d).unwrap() - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
            .num_days() as i32
    };
    assert_eq!(
        b.column(0).as_primitive::<Date32Type>().values().to_vec(),
        [
            0,
            days(2024, 2, 29),
            days(2000, 2, 29),
            days(1, 1, 1),
            days(9999, 12, 31),
            -1
        ]
    );
    for v in [
        "2023-02-29",
        "1900-02-29",
        "2024-13-01",
        "2024-04-31",
        "2024-4-1",
        "24-01-01",
        "2024-01-01T00:00:00",
        "20240101",
    ] {
        let e = fails("d DATE", &format!(r#"{{"d": "{v}"}}"#));
        assert_eq!(e.kind(), RecordErrorKind::WrongType, "{v}");
    }
    assert_eq!(
        fails("d DATE", r#"{"d": 19000}"#).kind(),
        RecordErrorKind::WrongType
    );
}

#[test]
fn times_keep_microseconds() {
    let recs = [
        r#"{"t": "00:00:00"}"#,
        r#"{"t": "23:59:59.999999"}"#,
        r#"{"t": "12:34:56.5"}"#,
        r#"{"t": "12:34"}"#,
        r#"{"t": "01:02:03.123456789"}"#,
    ];
    let b = batch(&mut decoder("t TIME(6)"), &recs);
    assert_eq!(
        b.column(0)
            .as_primitive::<Time64MicrosecondType>()
            .values()
            .to_vec(),
        [
            0,
            86_399_999_999,
            45_296_500_000,
            45_240_000_000,
            3_723_123_456
        ]
    );
    for v in [
        "24:00:00",
        "23:60:00",
        "23:59:60",
        "1:02:03",
        "12:34:56.",
        "12:34:56.1234567890",
        "12:34:56Z",
    ] {
        assert_eq!(
            fails("t TIME(6)", &format!(r#"{{"t": "{v}"}}"#)).kind(),
            RecordErrorKind::WrongType,
            "{v}"
        );
    }
}

fn micros(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros()
}

#[test]
fn local_timestamps() {
    let recs = [
        r#"{"t": "2022-07-26T00:41:48.046773"}"#,
        r#"{"t": "2022-07-26 00:41:48"}"#,
        r#"{"t": "2022-07-26T00:41:48.046773-07:00"}"#,
        r#"{"t": 1658796108046}"#,
        r#"{"t": "1969-12-31T23:59:59.999999"}"#,
    ];
    let b = batch(&mut decoder("t TIMESTAMP(6)"), &recs);
    let t = b.column(0).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(
        t.data_type(),
        &arrow_schema::DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, None)
    );
    assert_eq!(
        t.values().to_vec(),
        [
            micros("2022-07-26T00:41:48.046773Z"),
            micros("2022-07-26T00:41:48Z"),
            micros("2022-07-26T07:41:48.046773Z"),
            1_658_796_108_046_000,
            -1
        ]
    );
}

#[test]
fn timestamps_with_zone() {
    let recs = [
        r#"{"t": "2022-07-26T00:41:48.046773-07:00"}"#,
        r#"{"t": "2022-07-26T07:41:48.046773Z"}"#,
        r#"{"t": "2022-07-26T00:41:48.046773-07:00[America/Los_Angeles]"}"#,
        r#"{"t": "2022-07-26T00:41:48.046773[America/Los_Angeles]"}"#,
        r#"{"t": "2022-07-26T07:41:48.046773"}"#,
        r#"{"t": "2022-07-26T07:41:48.046773+0000"}"#,
        r#"{"t": "2022-07-26T12:41:48.046773+05"}"#,
        r#"{"t": "2022-07-26T07:41:48.046773Z[UTC]"}"#,
        r#"{"t": "2022-07-26T07:41:48.046773z"}"#,
        r#"{"t": "2022-07-26t07:41:48.046773Z"}"#,
    ];
    let b = batch(&mut decoder("t TIMESTAMP(6) WITH TIME ZONE"), &recs);
    let t = b.column(0).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(
        t.data_type(),
        &arrow_schema::DataType::Timestamp(
            arrow_schema::TimeUnit::Microsecond,
            Some("+00:00".into())
        )
    );
    let want = micros("2022-07-26T07:41:48.046773Z");
    assert!(t.values().iter().all(|&v| v == want), "{:?}", t.values());
    for v in [
        "\"2022-07-26T00:41:48[Not/AZone]\"",
        "\"2022-07-26T00:41:48+25:00\"",
        "\"2022-07-26T00:41:48 x\"",
        "true",
    ] {
        assert_eq!(
            fails("t TIMESTAMP(6) WITH TIME ZONE", &format!(r#"{{"t": {v}}}"#)).kind(),
            RecordErrorKind::WrongType,
            "{v}"
        );
    }
}

#[test]
fn zone_ids_across_daylight_saving_changes() {
    let cases = [
        // Winter and summer offsets of the same zone.
        ("2022-01-15T12:00:00[Europe/Berlin]", "2022-01-15T11:00:00Z"),
        ("2022-07-15T12:00:00[Europe/Berlin]", "2022-07-15T10:00:00Z"),
        // Spring forward: 02:30 does not exist in Los Angeles; moved later by the gap (Java's rule).
        (
            "2022-03-13T02:30:00[America/Los_Angeles]",
            "2022-03-13T10:30:00Z",
        ),
        // Fall back: 01:30 happens twice; the earlier instant (Java's rule).
        (
            "2022-11-06T01:30:00[America/Los_Angeles]",
            "2022-11-06T08:30:00Z",
        ),
        // An explicit offset picks the later one.
        (
            "2022-11-06T01:30:00-08:00[America/Los_Angeles]",
            "2022-11-06T09:30:00Z",
        ),
        (
            "2022-11-06T01:30:00-07:00[America/Los_Angeles]",
            "2022-11-06T08:30:00Z",
        ),
        // Southern hemisphere.
        (
            "2022-04-03T02:30:00[Australia/Sydney]",
            "2022-04-02T15:30:00Z",
        ),
        ("2022-07-26T12:00:00[UTC+02:00]", "2022-07-26T10:00:00Z"),
    ];
    let records: Vec<String> = cases
        .iter()
        .map(|(v, _)| format!(r#"{{"t": "{v}"}}"#))
        .collect();
    let records: Vec<&str> = records.iter().map(String::as_str).collect();
    let b = batch(&mut decoder("t TIMESTAMP(6) WITH TIME ZONE"), &records);
    let got = b
        .column(0)
        .as_primitive::<TimestampMicrosecondType>()
        .values()
        .to_vec();
    let want: Vec<i64> = cases.iter().map(|(_, w)| micros(w)).collect();
    assert_eq!(got, want);
}

#[test]
fn offsetless_timestamptz_uses_the_configured_zone() {
    let options = DecodeOptions {
        timestamp_zone: Some(chrono_tz::America::New_York),
        ..DecodeOptions::default()
    };
    let mut dec = decoder_with("t TIMESTAMP(6) WITH TIME ZONE, l TIMESTAMP(6)", options);
    let b = batch(
        &mut dec,
        &[
            r#"{"t": "2022-07-26T00:00:00", "l": "2022-07-26T00:00:00"}"#,
            r#"{"t": "2022-01-26T00:00:00.000001", "l": "2022-01-26T00:00:00"}"#,
            r#"{"t": "2022-07-26T00:00:00Z"}"#,
        ],
    );
    let t = b
        .column(0)
        .as_primitive::<TimestampMicrosecondType>()
        .values()
        .to_vec();
    assert_eq!(
        t,
        [
            micros("2022-07-26T04:00:00Z"),
            micros("2022-01-26T05:00:00.000001Z"),
            micros("2022-07-26T00:00:00Z")
        ]
    );
    // The zone is only for instants: a local timestamp stays as written.
    let l = b.column(1).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(l.value(0), micros("2022-07-26T00:00:00Z"));
}

#[test]
fn epoch_numbers_in_the_configured_unit() {
    let at = micros("2022-07-26T07:41:48.046773Z");
    for (unit, value, want) in [
        (EpochUnit::Seconds, "1658821308", at / 1_000_000 * 1_000_000),
        (EpochUnit::Seconds, "1658821308.046773", at),
        (EpochUnit::Millis, "1658821308046", at / 1000 * 1000),
        (EpochUnit::Millis, "\"1658821308046\"", at / 1000 * 1000),
        (EpochUnit::Micros, "1658821308046773", at),
        (EpochUnit::Nanos, "1658821308046773999", at),
        (EpochUnit::Millis, "-1", -1000),
        (EpochUnit::Nanos, "-1", -1),
        (EpochUnit::Micros, "0", 0),
    ] {
        let options = DecodeOptions {
            epoch_unit: unit,
            ..DecodeOptions::default()
        };
        let b = batch(
            &mut decoder_with("t TIMESTAMP(6) WITH TIME ZONE", options),
            &[&format!(r#"{{"t": {value}}}"#)],
        );
        assert_eq!(
            b.column(0)
                .as_primitive::<TimestampMicrosecondType>()
                .value(0),
            want,
            "{unit:?} {value}"
        );
    }
    assert_eq!(
        fails("t TIMESTAMP(6) WITH TIME ZONE", r#"{"t": 1e30}"#).kind(),
        RecordErrorKind::OutOfRange
    );
}

#[test]
fn uuids_binary_and_fixed() {
    let b = batch(
        &mut decoder("u UUID, b VARBINARY"),
        &[
            r#"{"u": "f79c3e09-677c-4bbd-a479-3f349cb785e7", "b": "aGVsbG8="}"#,
            r#"{"u": "F79C3E09-677C-4BBD-A479-3F349CB785E7", "b": "aGVsbG8"}"#,
            r#"{"b": ""}"#,
            r#"{"b": "-_8="}"#,
        ],
    );
    let u = b.column(0).as_fixed_size_binary();
    let want = uuid::Uuid::parse_str("f79c3e09-677c-4bbd-a479-3f349cb785e7").unwrap();
    assert_eq!(u.value(0), want.as_bytes());
    assert_eq!(u.value(1), want.as_bytes());
    assert!(u.is_null(2));
    let bin = b.column(1).as_binary::<i64>();
    assert_eq!(bin.value(0), b"hello");
    assert_eq!(bin.value(1), b"hello");
    assert_eq!(bin.value(2), b"");
    assert_eq!(bin.value(3), [0xfb, 0xff]);
    assert_eq!(
        fails("u UUID", r#"{"u": "f79c3e09"}"#).kind(),
        RecordErrorKind::WrongType
    );
    assert_eq!(
        fails("b VARBINARY", r#"{"b": "!!"}"#).kind(),
        RecordErrorKind::WrongType
    );
    assert_eq!(
        fails("b VARBINARY", r#"{"b": [1]}"#).kind(),
        RecordErrorKind::WrongType
    );

    // Trino cannot create fixed(n); other engines can.
    let schema = Schema::builder()
        .with_fields(vec![Arc::new(NestedField::optional(
            1,
            "f",
            Type::Primitive(PrimitiveType::Fixed(3)),
        ))])
        .build()
        .unwrap();
    let mut dec = Decoder::new(&schema, DecodeOptions::default()).unwrap();
    dec.append(br#"{"f": "AQID"}"#, &ORIGIN).unwrap();
    let e = dec.append(br#"{"f": "AQIDBA=="}"#, &ORIGIN).unwrap_err();
    assert_eq!(e.kind(), RecordErrorKind::WrongType);
    dec.append(br#"{}"#, &ORIGIN).unwrap();
    let b = dec.finish();
    let f = b.column(0).as_fixed_size_binary();
    assert_eq!(f.value(0), [1, 2, 3]);
    assert!(f.is_null(1));
}

#[test]
fn nanosecond_timestamps() {
    let schema = Schema::builder()
        .with_fields(vec![
            Arc::new(NestedField::optional(
                1,
                "n",
                Type::Primitive(PrimitiveType::TimestamptzNs),
            )),
            Arc::new(NestedField::optional(
                2,
                "l",
                Type::Primitive(PrimitiveType::TimestampNs),
            )),
        ])
        .build()
        .unwrap();
    let mut dec = Decoder::new(&schema, DecodeOptions::default()).unwrap();
    dec.append(
        br#"{"n": "2022-07-26T00:41:48.046773123-07:00", "l": "1970-01-01T00:00:00.000000001"}"#,
        &ORIGIN,
    )
    .unwrap();
    let b = dec.finish();
    let n = b.column(0).as_primitive::<TimestampNanosecondType>();
    assert_eq!(
        n.value(0),
        micros("2022-07-26T07:41:48.046773Z") * 1000 + 123
    );
    assert_eq!(
        b.column(1)
            .as_primitive::<TimestampNanosecondType>()
            .value(0),
        1
    );
}

// ---- nested -------------------------------------------------------------------------------------

#[test]
fn lists_maps_and_structs_nest() {
    let cols = "l ARRAY(ARRAY(INTEGER)), m MAP(INTEGER, ARRAY(VARCHAR)), r ROW(a ROW(b ROW(c BIGINT)), d ARRAY(ROW(e DATE)))";
    let recs = [
        r#"{"l": [[1, 2], [], null, [3]], "m": {"1": ["x"], "-2": [], "3": null}, "r": {"a": {"b": {"c": 9}}, "d": [{"e": "2024-02-29"}, null, {}]}}"#,
        r#"{"l": [], "m": {}, "r": {"a": {"b": null}, "d": []}}"#,
        r#"{"l": [[null]], "r": {}}"#,
    ];
    let b = batch(&mut decoder(cols), &recs);
    let l = b.column(0).as_list::<i32>();
    let row0 = l.value(0);
    let row0 = row0.as_list::<i32>();
    assert_eq!(row0.len(), 4);
    assert_eq!(
        row0.value(0).as_primitive::<Int32Type>().values().to_vec(),
        [1, 2]
    );
    assert_eq!(row0.value(1).len(), 0);
    assert!(row0.is_null(2));
    assert_eq!(l.value(1).len(), 0);
    assert!(!l.is_null(1));
    let row2 = l.value(2);
    assert!(row2.as_list::<i32>().value(0).is_null(0));

    let m = b.column(1).as_map();
    let e = m.value(0);
    assert_eq!(
        e.column(0).as_primitive::<Int32Type>().values().to_vec(),
        [1, -2, 3]
    );
    assert!(e.column(1).is_null(2));
    assert_eq!(m.value(1).len(), 0);
    assert!(!m.is_null(1));
    assert!(m.is_null(2));

    let r = b.column(2).as_struct();
    let c = r
        .column(0)
        .as_struct()
        .column(0)
        .as_struct()
        .column(0)
        .as_primitive::<Int64Type>();
    assert_eq!(c.value(0), 9);
    assert!(r.column(0).as_struct().column(0).is_null(1));
    assert!(r.column(0).is_null(2));
    let d = r.column(1).as_list::<i32>().value(0);
    let d = d.as_struct();
    assert_eq!(d.len(), 3);
    assert!(d.is_null(1));
    assert!(!d.is_null(2) && d.column(0).is_null(2));

    let e = fails("m MAP(INTEGER, VARCHAR)", r#"{"m": {"x": "y"}}"#);
    assert_eq!(
        (e.kind(), e.column()),
        (RecordErrorKind::WrongType, r#"m["x"].key"#)
    );
    assert_eq!(
        fails("l ARRAY(INTEGER)", r#"{"l": {"a": 1}}"#).kind(),
        RecordErrorKind::WrongType
    );
    assert_eq!(
        fails("r ROW(a INTEGER)", r#"{"r": [1]}"#).kind(),
        RecordErrorKind::WrongType
    );
    assert_eq!(
        fails("m MAP(VARCHAR, INTEGER)", r#"{"m": [1]}"#).kind(),
        RecordErrorKind::WrongType
    );
}

#[test]
fn deep_nesting() {
    let depth = 40;
    let ty = (0..depth).fold("BIGINT".to_owned(), |t, _| format!("ARRAY({t})"));
    let value = format!("{}7{}", "[".repeat(depth), "]".repeat(depth));
    let b = one(&format!("a {ty}"), &format!(r#"{{"a": {value}}}"#));
    let mut arr = b.column(0).clone();
    for _ in 0..depth {
        arr = arr.as_list::<i32>().value(0);
    }
    assert_eq!(arr.as_primitive::<Int64Type>().value(0), 7);

    let ty = (0..depth).fold("BIGINT".to_owned(), |t, _| format!("ROW(x {t})"));
    let value = (0..depth).fold("7".to_owned(), |v, _| format!(r#"{{"x": {v}}}"#));
    let b = one(&format!("a {ty}"), &format!(r#"{{"a": {value}}}"#));
    let mut arr = b.column(0).clone();
    for _ in 0..depth {
        arr = arr.as_struct().column(0).clone();
    }
    assert_eq!(arr.as_primitive::<Int64Type>().value(0), 7);
}

#[test]
fn finish_resets_and_batches_are_independent() {
    let mut dec = decoder("s VARCHAR, l ARRAY(VARCHAR)");
    let a = batch(&mut dec, &[r#"{"s": "a", "l": ["x"]}"#]);
    // Nothing is held after finishing but the first offset of each variable-length column.
    assert!(dec.buffered_bytes() <= 16, "{} bytes held after finish", dec.buffered_bytes());
    let b = batch(&mut dec, &[r#"{"s": "b", "l": ["y", "z"]}"#]);
    assert_eq!(a.column(0).as_string::<i32>().value(0), "a");
    assert_eq!(b.column(0).as_string::<i32>().value(0), "b");
    assert_eq!(b.column(1).as_list::<i32>().value(0).len(), 2);
    let empty = dec.finish();
    assert_eq!(empty.num_rows(), 0);
    assert_eq!(empty.schema(), dec.arrow_schema());
}

#[test]
fn setup_errors() {
    let schema = schema_of("a BIGINT");
    let bad_projection = DecodeOptions {
        projections: vec![Projection {
            column: "b".into(),
            pointer: "/x".into(),
        }],
        ..DecodeOptions::default()
    };
    assert!(matches!(
        Decoder::new(&schema, bad_projection),
        Err(DecodeSetupError::UnknownColumn { .. })
    ));
    let bad_pointer = DecodeOptions {
        unnest: Some("payload".into()),
        ..DecodeOptions::default()
    };
    assert!(matches!(
        Decoder::new(&schema, bad_pointer),
        Err(DecodeSetupError::InvalidPointer { .. })
    ));
}

#[test]
fn days_from_civil_agrees_with_chrono() {
    // days_from_civil against chrono over a wide range, leap years included.
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    let mut d = NaiveDate::from_ymd_opt(1, 1, 1).unwrap();
    while d.year() < 10_000 {
        assert_eq!(
            scalar::days_from_civil(d.year() as i64, d.month(), d.day()),
            (d - epoch).num_days()
        );
        d += chrono::Duration::days(97);
    }
}

#[test]
fn keys_in_any_order_with_unknown_keys_between() {
    let mut dec = decoder("a BIGINT, b VARCHAR, c BOOLEAN");
    let recs = [
        r#"{"a": 1, "b": "x", "c": true}"#,
        r#"{"c": false, "b": "y", "a": 2}"#,
        r#"{"b": "z", "zz": 0, "a": 3, "c": true}"#,
        r#"{"c": true, "a": 4}"#,
        r#"{"c": false, "b": "w", "a": 5}"#,
    ];
    let b = batch(&mut dec, &recs);
    assert_eq!(
        b.column(0).as_primitive::<Int64Type>().values().to_vec(),
        [1, 2, 3, 4, 5]
    );
    let s: Vec<_> = b.column(1).as_string::<i32>().iter().collect();
    assert_eq!(s, [Some("x"), Some("y"), Some("z"), None, Some("w")]);
    let c: Vec<_> = b
        .column(2)
        .as_boolean()
        .iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(c, [true, false, true, true, false]);
}

#[test]
fn utf8_is_checked_in_every_string() {
    let bad: [&[u8]; 4] = [
        b"{\"a\": \"\xff\"}",
        b"{\"zz\": \"ok \xc3\"}",
        b"{\"\xe2\x82\": 1}",
        b"{\"a\": \"\xed\xa0\x80\"}",
    ];
    for record in bad {
        let mut dec = decoder("a VARCHAR");
        let e = dec.append(record, &ORIGIN).unwrap_err();
        assert_eq!(e.kind(), RecordErrorKind::InvalidUtf8, "{record:?}: {e}");
    }
    let e = decoder("a VARCHAR")
        .append(b"{\"a\": \xff}", &ORIGIN)
        .unwrap_err();
    assert_eq!(e.kind(), RecordErrorKind::NotJson);
    let mut dec = decoder("a VARCHAR, b ARRAY(VARCHAR)");
    dec.append(
        "{\"a\": \"é€😀 long enough to need several words\", \"b\": [\"ünï\"]}".as_bytes(),
        &ORIGIN,
    )
    .unwrap();
    let b = dec.finish();
    assert_eq!(
        b.column(0).as_string::<i32>().value(0),
        "é€😀 long enough to need several words"
    );
}

// ---- reshaping ----------------------------------------------------------------------------------

fn options(f: impl FnOnce(&mut DecodeOptions)) -> DecodeOptions {
    let mut o = DecodeOptions::default();
    f(&mut o);
    o
}

fn projection(column: &str, pointer: &str) -> Projection {
    Projection {
        column: column.into(),
        pointer: pointer.into(),
    }
}

#[test]
fn unnest_reads_the_row_from_a_pointer() {
    let opts = options(|o| o.unnest = Some("/payload/after".into()));
    let mut dec = decoder_with("id BIGINT, name VARCHAR", opts);
    let b = batch(
        &mut dec,
        &[
            r#"{"op": "c", "payload": {"before": null, "after": {"id": 1, "name": "a"}}}"#,
            r#"{"payload": {"after": {"name": "b", "id": 2, "other": true}}, "ts": 5}"#,
        ],
    );
    assert_eq!(
        b.column(0).as_primitive::<Int64Type>().values().to_vec(),
        [1, 2]
    );
    assert_eq!(b.column(1).as_string::<i32>().value(1), "b");
    assert_eq!(dec.ignored_fields(), 1);
    // Where the pointer leads nowhere, or not to an object: a record error.
    let e = dec
        .append(br#"{"payload": {"before": {}}}"#, &ORIGIN)
        .unwrap_err();
    assert_eq!(e.kind(), RecordErrorKind::NotAnObject);
    assert!(e.message().contains("/payload/after"), "{e}");
    let e = dec
        .append(br#"{"payload": {"after": [1]}}"#, &ORIGIN)
        .unwrap_err();
    assert_eq!(e.kind(), RecordErrorKind::NotAnObject);
    // The rest of the record must still be JSON.
    let e = dec
        .append(br#"{"payload": {"after": {"id": 3}}, "x": tru}"#, &ORIGIN)
        .unwrap_err();
    assert_eq!(e.kind(), RecordErrorKind::NotJson);
    assert_eq!(dec.len(), 0);

    // Array indexes and escaped tokens (RFC 6901).
    let opts = options(|o| o.unnest = Some("/a~1b/1/c~0d".into()));
    let b = one_with("x INTEGER", opts, r#"{"a/b": [{}, {"c~d": {"x": 7}}]}"#);
    assert_eq!(b.column(0).as_primitive::<Int32Type>().value(0), 7);
}

fn one_with(columns: &str, opts: DecodeOptions, record: &str) -> RecordBatch {
    batch(&mut decoder_with(columns, opts), &[record])
}

#[test]
fn projections_take_columns_from_anywhere_in_the_original_record() {
    let opts = options(|o| {
        o.unnest = Some("/after".into());
        o.projections = vec![
            projection("ts", "/source/ts_ms"),
            projection("name", "/after/full/name"),
            projection("tags", "/meta/tags"),
        ];
    });
    let mut dec = decoder_with(
        "id BIGINT, name VARCHAR, ts TIMESTAMP(6) WITH TIME ZONE, tags ARRAY(VARCHAR)",
        opts,
    );
    let b = batch(
        &mut dec,
        &[
            r#"{"after": {"id": 1, "name": "ignored", "full": {"name": "Ada"}}, "source": {"ts_ms": 1000}, "meta": {"tags": ["x"]}}"#,
            r#"{"after": {"id": 2}, "source": {}}"#,
        ],
    );
    assert_eq!(
        b.column(0).as_primitive::<Int64Type>().values().to_vec(),
        [1, 2]
    );
    let name = b.column(1).as_string::<i32>();
    assert_eq!(name.value(0), "Ada");
    assert!(name.is_null(1));
    let ts = b.column(2).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(ts.value(0), 1_000_000);
    assert!(ts.is_null(1));
    assert_eq!(b.column(3).as_list::<i32>().value(0).len(), 1);
    assert!(b.column(3).is_null(1));
    // `full` is not a column; `name` inside the row is overridden, not ignored.
    assert_eq!(dec.ignored_fields(), 1);

    // A projected value of the wrong type names the column.
    let e = dec
        .append(
            br#"{"after": {"id": 3}, "source": {"ts_ms": "soon"}}"#,
            &ORIGIN,
        )
        .unwrap_err();
    assert_eq!((e.kind(), e.column()), (RecordErrorKind::WrongType, "ts"));

    // A required projected column that is missing.
    let opts = options(|o| o.projections = vec![projection("id", "/key/id")]);
    let mut dec = decoder_with("id BIGINT NOT NULL", opts);
    let e = dec.append(br#"{"id": 5}"#, &ORIGIN).unwrap_err();
    assert_eq!(
        (e.kind(), e.column()),
        (RecordErrorKind::MissingRequired, "id")
    );
    dec.append(br#"{"key": {"id": 6}}"#, &ORIGIN).unwrap();
    assert_eq!(
        dec.finish().column(0).as_primitive::<Int64Type>().value(0),
        6
    );
}

#[test]
fn field_names_are_converted_to_lower_underscore_at_every_depth() {
    let cols = "user_id BIGINT, http_status INTEGER, address ROW(zip_code VARCHAR, street_name VARCHAR), \
                items ARRAY(ROW(item_count INTEGER)), attrs MAP(VARCHAR, ROW(attr_value VARCHAR))";
    let cases = [
        (
            FieldCase::LowerCamel,
            r#"{"userId": 1, "httpStatus": 200, "address": {"zipCode": "z", "streetName": "s"}, "items": [{"itemCount": 2}], "attrs": {"KeepMe": {"attrValue": "v"}}}"#,
        ),
        (
            FieldCase::UpperCamel,
            r#"{"UserId": 1, "HttpStatus": 200, "Address": {"ZipCode": "z", "StreetName": "s"}, "Items": [{"ItemCount": 2}], "Attrs": {"KeepMe": {"AttrValue": "v"}}}"#,
        ),
        (
            FieldCase::LowerHyphen,
            r#"{"user-id": 1, "http-status": 200, "address": {"zip-code": "z", "street-name": "s"}, "items": [{"item-count": 2}], "attrs": {"KeepMe": {"attr-value": "v"}}}"#,
        ),
        (
            FieldCase::UpperUnderscore,
            r#"{"USER_ID": 1, "HTTP_STATUS": 200, "ADDRESS": {"ZIP_CODE": "z", "STREET_NAME": "s"}, "ITEMS": [{"ITEM_COUNT": 2}], "ATTRS": {"KeepMe": {"ATTR_VALUE": "v"}}}"#,
        ),
    ];
    for (case, record) in cases {
        let mut dec = decoder_with(cols, options(|o| o.field_case = Some(case)));
        let b = batch(&mut dec, &[record]);
        assert_eq!(dec.ignored_fields(), 0, "{case:?}");
        assert_eq!(
            b.column(0).as_primitive::<Int64Type>().value(0),
            1,
            "{case:?}"
        );
        assert_eq!(
            b.column(1).as_primitive::<Int32Type>().value(0),
            200,
            "{case:?}"
        );
        let address = b.column(2).as_struct();
        assert_eq!(
            address.column(0).as_string::<i32>().value(0),
            "z",
            "{case:?}"
        );
        assert_eq!(
            address.column(1).as_string::<i32>().value(0),
            "s",
            "{case:?}"
        );
        let items = b.column(3).as_list::<i32>().value(0);
        assert_eq!(
            items
                .as_struct()
                .column(0)
                .as_primitive::<Int32Type>()
                .value(0),
            2,
            "{case:?}"
        );
        // Map keys are data: never converted.
        let attrs = b.column(4).as_map().value(0);
        assert_eq!(
            attrs.column(0).as_string::<i32>().value(0),
            "KeepMe",
            "{case:?}"
        );
        assert_eq!(
            attrs
                .column(1)
                .as_struct()
                .column(0)
                .as_string::<i32>()
                .value(0),
            "v",
            "{case:?}"
        );
    }
    // Guava's rule: in camel case every capital starts a word.
    let mut out = Vec::new();
    FieldCase::UpperCamel.to_lower_underscore(b"HTTPServer", &mut out);
    assert_eq!(out, b"h_t_t_p_server");
    assert_eq!("lowerCamel".parse::<FieldCase>(), Ok(FieldCase::LowerCamel));
    assert!("snake".parse::<FieldCase>().is_err());
    for (name, case) in [
        ("camelCase", Some(FieldCase::LowerCamel)),
        ("PascalCase", Some(FieldCase::UpperCamel)),
        ("kebab-case", Some(FieldCase::LowerHyphen)),
        ("SCREAMING_SNAKE_CASE", Some(FieldCase::UpperUnderscore)),
        ("snake_case", None),
    ] {
        assert_eq!(FieldCase::parse_name(name), Ok(case), "{name}");
    }
    let e = FieldCase::parse_name("Camel").unwrap_err();
    assert!(e.contains("\"Camel\"") && e.contains("camelCase"), "{e}");
}

#[test]
fn case_insensitive_matching() {
    let cols = "user_id BIGINT, nested ROW(inner_value VARCHAR)";
    let record = r#"{"User_ID": 1, "NESTED": {"Inner_Value": "v"}}"#;
    // Off by default: no field matches, so the record is an error, not a row of NULLs.
    let mut dec = decoder(cols);
    let e = dec.append(record.as_bytes(), &ORIGIN).unwrap_err();
    assert_eq!(e.kind(), RecordErrorKind::NoMatchingFields);
    assert_eq!(dec.ignored_fields(), 0, "a failed record leaves the count as it was");
    let mut dec = decoder_with(cols, options(|o| o.case_insensitive = true));
    let b = batch(&mut dec, &[record]);
    assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), 1);
    assert_eq!(
        b.column(1)
            .as_struct()
            .column(0)
            .as_string::<i32>()
            .value(0),
        "v"
    );
    // Together with case conversion: `UserID` -> `user_i_d` matches nothing, `userId` -> `user_id`.
    let mut dec = decoder_with(
        cols,
        options(|o| {
            o.case_insensitive = true;
            o.field_case = Some(FieldCase::LowerCamel);
        }),
    );
    let b = batch(
        &mut dec,
        &[r#"{"userId": 1, "Nested": {"innerValue": "v"}}"#],
    );
    assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), 1);
    assert_eq!(
        b.column(1)
            .as_struct()
            .column(0)
            .as_string::<i32>()
            .value(0),
        "v"
    );
}

// ---- the writer accepts the batches --------------------------------------------------------------

#[test]
fn batches_round_trip_through_parquet() {
    let cols = "b BOOLEAN, i INTEGER, l BIGINT, f REAL, d DOUBLE, dec DECIMAL(10, 3), s VARCHAR, bin VARBINARY, \
                dt DATE, t TIME(6), ts TIMESTAMP(6), tz TIMESTAMP(6) WITH TIME ZONE, u UUID, \
                arr ARRAY(ROW(x INTEGER, y ARRAY(VARCHAR))), m MAP(VARCHAR, MAP(INTEGER, DOUBLE)), r ROW(a ROW(b BIGINT))";
    let mut dec = decoder(cols);
    let b = batch(
        &mut dec,
        &[
            r#"{"b": true, "i": 1, "l": 2, "f": 1.5, "d": 2.5, "dec": "1.234", "s": "x", "bin": "AAE=", "dt": "2024-02-29",
                "t": "01:02:03.000004", "ts": "2022-07-26T00:41:48.046773", "tz": "2022-07-26T00:41:48.046773-07:00[America/Los_Angeles]",
                "u": "f79c3e09-677c-4bbd-a479-3f349cb785e7", "arr": [{"x": 1, "y": ["p", null]}, null, {}],
                "m": {"k": {"1": 0.5}, "e": {}, "n": null}, "r": {"a": {"b": 3}}}"#,
            r#"{}"#,
            r#"{"arr": [], "m": {}, "r": {"a": null}}"#,
        ],
    );
    let file = tempfile::tempfile().unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file.try_clone().unwrap(), b.schema(), None).unwrap();
    writer.write(&b).unwrap();
    writer.close().unwrap();
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024).unwrap();
    let back: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    assert_eq!(back.len(), 1);
    for (i, (a, z)) in b.columns().iter().zip(back[0].columns()).enumerate() {
        assert_eq!(
            a.to_data(),
            z.to_data(),
            "column {}",
            b.schema().field(i).name()
        );
    }
}

#[test]
fn map_keys_must_be_unique_after_conversion() {
    let e = fails(
        "m MAP(VARCHAR, INTEGER)",
        r#"{"m": {"a": 1, "b": 2, "a": 3}}"#,
    );
    assert_eq!((e.kind(), e.column()), (RecordErrorKind::WrongType, "m"));
    assert!(e.message().contains("duplicate map key \"a\""), "{e}");
    // "1" and "01" are the same int.
    assert_eq!(
        fails("m MAP(INTEGER, INTEGER)", r#"{"m": {"1": 1, "01": 2}}"#).kind(),
        RecordErrorKind::WrongType
    );
    // Large maps are checked too; the same keys in different maps are fine.
    let big: Vec<String> = (0..100).map(|i| format!("\"k{i}\": {i}")).collect();
    let mut dup = big.clone();
    dup.push("\"k7\": 0".into());
    let e = fails(
        "m MAP(VARCHAR, INTEGER)",
        &format!(r#"{{"m": {{{}}}}}"#, dup.join(", ")),
    );
    assert!(e.message().contains("\"k7\""), "{e}");
    let b = batch(
        &mut decoder("m MAP(VARCHAR, INTEGER), n MAP(VARCHAR, MAP(VARCHAR, INTEGER))"),
        &[
            &format!(
                r#"{{"m": {{{}}}, "n": {{"a": {{"a": 1}}, "b": {{"a": 2}}}}}}"#,
                big.join(", ")
            ),
            r#"{"m": {"k1": 1}}"#,
        ],
    );
    assert_eq!(b.column(0).as_map().value(0).len(), 100);
}

#[test]
fn a_decoder_can_move_to_another_thread() {
    fn send<T: Send>(_: &T) {}
    let dec = decoder("a BIGINT");
    send(&dec);
    let e = fails("a BIGINT", "x");
    send(&e);
    let _: &(dyn std::error::Error + Send + Sync) = &e;
}


// ---- records that match no column ------------------------------------------------------------------

#[test]
fn a_record_matching_no_column_is_an_error_not_a_row_of_nulls() {
    let mut dec = decoder("id BIGINT, string_map MAP(VARCHAR, VARCHAR)");
    let e = dec
        .append(
            br#"{"specversion": "1.0", "type": "t", "source": "/s", "subject": "x", "time": "now", "data": {"id": 1}, "extra": 2}"#,
            &ORIGIN,
        )
        .unwrap_err();
    assert_eq!(e.kind(), RecordErrorKind::NoMatchingFields);
    assert_eq!(e.kind().as_str(), "no-matching-fields");
    let shown = e.to_string();
    for needle in [
        r#""specversion", "type", "source", "subject", "time" and 2 more"#,
        "topic events, partition 3, offset 1812",
        "field_case",
    ] {
        assert!(shown.contains(needle), "{needle:?} missing: {shown}");
    }
    // camelCase without the case option: `stringMap` matches nothing.
    let e = dec.append(br#"{"stringMap": {"k": "v"}}"#, &ORIGIN).unwrap_err();
    assert_eq!(e.kind(), RecordErrorKind::NoMatchingFields);
    assert!(e.message().contains(r#""stringMap""#), "{e}");
    // One matching field is enough, even when null; `{}` has no fields and is a row of NULLs.
    dec.append(br#"{"x": 1, "id": null}"#, &ORIGIN).unwrap();
    dec.append(br#"{}"#, &ORIGIN).unwrap();
    assert_eq!(dec.finish().num_rows(), 2);
}

#[test]
fn no_matching_fields_after_unnesting_and_with_projections() {
    let opts = options(|o| {
        o.unnest = Some("/data".into());
        o.projections = vec![projection("event_id", "/id")];
    });
    let mut dec = decoder_with("event_id VARCHAR, a BIGINT", opts);
    // The projection found a value: the record matched.
    dec.append(br#"{"id": "e1", "data": {"zz": 1}}"#, &ORIGIN).unwrap();
    // Neither the projection nor the row's fields match.
    let e = dec.append(br#"{"other": "e1", "data": {"zz": 1, "yy": 2}}"#, &ORIGIN).unwrap_err();
    assert_eq!(e.kind(), RecordErrorKind::NoMatchingFields);
    assert!(e.message().contains(r#"its fields: "zz", "yy")"#), "the unnested row's fields: {e}");
    let opts = options(|o| o.unnest = Some("/data".into()));
    let mut dec = decoder_with("a BIGINT", opts);
    dec.append(br#"{"data": {"a": 1}}"#, &ORIGIN).unwrap();
    let e = dec.append(br#"{"data": {"b": 1}}"#, &ORIGIN).unwrap_err();
    assert_eq!(e.kind(), RecordErrorKind::NoMatchingFields);
    assert_eq!(dec.finish().num_rows(), 1);
}

// ---- Kafka metadata columns --------------------------------------------------------------------------

fn meta(column: &str, field: MetadataField) -> MetadataColumn {
    MetadataColumn { column: column.into(), field }
}

fn all_metadata() -> Vec<MetadataColumn> {
    vec![
        meta("k", MetadataField::Key),
        meta("kb", MetadataField::Key),
        meta("t", MetadataField::Topic),
        meta("p", MetadataField::Partition),
        meta("o", MetadataField::Offset),
        meta("ts", MetadataField::Timestamp),
        meta("ts_ms", MetadataField::Timestamp),
        meta("tt", MetadataField::TimestampType),
        meta("trace", MetadataField::Header("trace-id".into())),
        meta("raw", MetadataField::Header("bin".into())),
    ]
}

const META_COLUMNS: &str = "a BIGINT, k VARCHAR, kb VARBINARY, t VARCHAR, p INTEGER, o BIGINT, \
    ts TIMESTAMP(6) WITH TIME ZONE, ts_ms BIGINT, tt VARCHAR, trace VARCHAR, raw VARBINARY";

#[test]
fn metadata_columns_take_the_records_metadata() {
    let mut dec = decoder_with(META_COLUMNS, options(|o| o.metadata = all_metadata()));
    let headers = vec![
        ("trace-id".to_owned(), Some(b"first".to_vec())),
        ("bin".to_owned(), Some(vec![0xff, 0x00])),
        ("trace-id".to_owned(), Some(b"last".to_vec())),
    ];
    let record = RawRecord {
        topic: "orders",
        partition: 7,
        offset: 123_456_789_012,
        key: Some(b"key-1"),
        // A JSON field named like a metadata column does not override it.
        value: Some(br#"{"a": 1, "t": "from the value"}"#),
        timestamp: Some((TimestampType::LogAppendTime, 1_700_000_000_123)),
        headers: &headers,
    };
    dec.append_record(&record).unwrap();
    let bare = RawRecord {
        key: None,
        timestamp: None,
        headers: &[],
        value: Some(br#"{"a": 2}"#),
        ..record
    };
    dec.append_record(&bare).unwrap();
    let b = dec.finish();
    let col = |name: &str| b.column_by_name(name).unwrap().clone();
    assert_eq!(col("a").as_primitive::<Int64Type>().values().to_vec(), [1, 2]);
    assert_eq!(col("k").as_string::<i32>().value(0), "key-1");
    assert!(col("k").is_null(1));
    assert_eq!(col("kb").as_binary::<i64>().value(0), b"key-1");
    assert_eq!(col("t").as_string::<i32>().value(0), "orders");
    assert_eq!(col("t").as_string::<i32>().value(1), "orders");
    assert_eq!(col("p").as_primitive::<Int32Type>().value(0), 7);
    assert_eq!(col("o").as_primitive::<Int64Type>().value(0), 123_456_789_012);
    assert_eq!(col("ts").as_primitive::<TimestampMicrosecondType>().value(0), 1_700_000_000_123_000);
    assert!(col("ts").is_null(1));
    assert_eq!(col("ts_ms").as_primitive::<Int64Type>().value(0), 1_700_000_000_123);
    assert_eq!(col("tt").as_string::<i32>().value(0), "LogAppendTime");
    assert!(col("tt").is_null(1));
    assert_eq!(col("trace").as_string::<i32>().value(0), "last", "the last header of a name wins");
    assert_eq!(col("raw").as_binary::<i64>().value(0), [0xff, 0x00]);
    assert!(col("trace").is_null(1) && col("raw").is_null(1));
}

#[test]
fn metadata_values_that_do_not_fit_are_record_errors() {
    let mut dec = decoder_with(
        "a BIGINT, k VARCHAR NOT NULL",
        options(|o| o.metadata = vec![meta("k", MetadataField::Key)]),
    );
    let mut record = RawRecord {
        topic: "orders",
        partition: 0,
        offset: 5,
        key: Some(&[0xff, 0xfe]),
        value: Some(br#"{"a": 1}"#),
        timestamp: None,
        headers: &[],
    };
    let e = dec.append_record(&record).unwrap_err();
    assert_eq!(e.kind(), RecordErrorKind::InvalidUtf8);
    assert_eq!(e.column(), "k");
    assert!(e.message().contains("binary (VARBINARY)"), "{e}");
    record.key = None;
    let e = dec.append_record(&record).unwrap_err();
    assert_eq!(e.kind(), RecordErrorKind::MissingRequired);
    assert!(e.to_string().contains("the record key is absent"), "{e}");
    assert_eq!(dec.len(), 0);
}

#[test]
fn a_table_of_metadata_columns_only_takes_every_object() {
    let mut dec = decoder_with(
        "t VARCHAR, o BIGINT",
        options(|o| o.metadata = vec![meta("t", MetadataField::Topic), meta("o", MetadataField::Offset)]),
    );
    dec.append(br#"{"anything": 1}"#, &ORIGIN).unwrap();
    assert_eq!(dec.finish().num_rows(), 1);
}

#[test]
fn metadata_setup_errors() {
    let bad = |columns: &str, metadata: Vec<MetadataColumn>, projections: Vec<Projection>| {
        Decoder::new(&schema_of(columns), options(|o| {
            o.metadata = metadata;
            o.projections = projections;
        }))
        .err()
        .expect("should be refused")
        .to_string()
    };
    let e = bad("a BIGINT", vec![meta("kafka_key", MetadataField::Key)], vec![]);
    assert!(e.contains("the record key goes to column \"kafka_key\", which is not a top-level column"), "{e}");
    let e = bad("a BIGINT, o INTEGER", vec![meta("o", MetadataField::Offset)], vec![]);
    assert!(e.contains("the offset goes to column \"o\" of type int; it can go only to a long (BIGINT) column"), "{e}");
    let e = bad("a BIGINT, k DOUBLE", vec![meta("k", MetadataField::Key)], vec![]);
    assert!(e.contains("string (VARCHAR: as UTF-8 text) or binary"), "{e}");
    let e = bad("a BIGINT, ts DATE", vec![meta("ts", MetadataField::Timestamp)], vec![]);
    assert!(e.contains("timestamptz, timestamp"), "{e}");
    let e = bad("a BIGINT, n ROW(x INTEGER)", vec![meta("n", MetadataField::Topic)], vec![]);
    assert!(e.contains("it can go only to a string (VARCHAR) column"), "{e}");
    let e = bad(
        "a BIGINT, k VARCHAR",
        vec![meta("k", MetadataField::Key)],
        vec![projection("k", "/key")],
    );
    assert!(e.contains("column \"k\" is filled twice: the projection of \"/key\" and the record key"), "{e}");
}

// ---- the pool ------------------------------------------------------------------------------------

#[test]
fn the_pool_decodes_in_record_order_and_reports_every_record() {
    let columns = "id BIGINT, name VARCHAR";
    let values: Vec<String> = (0..2000)
        .map(|i| match i % 97 {
            13 => format!("{{\"id\": \"not a number {i}\"}}"),
            29 => format!("{{\"id\": {i}, \"extra\": 1}}"),
            _ => format!("{{\"id\": {i}, \"name\": \"n{i}\"}}"),
        })
        .collect();
    let raws: Vec<RawRecord> = values
        .iter()
        .enumerate()
        .map(|(i, v)| RawRecord {
            topic: "t",
            partition: 0,
            offset: i as i64,
            key: None,
            value: Some(v.as_bytes()),
            timestamp: None,
            headers: &[],
        })
        .collect();
    let mut pool = pool::Pool::new(vec![decoder(columns), decoder(columns), decoder(columns)]);
    let chunks = pool.decode(&raws);
    assert_eq!(chunks.len(), 3, "2000 records make three chunks of at least {}", pool::MIN_CHUNK);
    // The same records decoded one by one on one decoder.
    let mut one_by_one = decoder(columns);
    let mut expected_failed = Vec::new();
    let mut expected_new = Vec::new();
    for r in &raws {
        let before = one_by_one.ignored_top_level_fields();
        match one_by_one.append_record(r) {
            Ok(()) => expected_new.push(one_by_one.ignored_top_level_fields() > before),
            Err(e) => expected_failed.push(e.origin().offset),
        }
    }
    let expected = one_by_one.finish();
    let mut failed = Vec::new();
    let mut new = Vec::new();
    let mut offset = 0i64;
    for c in &chunks {
        for o in &c.outcomes {
            match o {
                pool::Outcome::Row { new_top_level_fields } => new.push(*new_top_level_fields),
                pool::Outcome::Failed(e) => {
                    assert_eq!(e.origin().offset, offset, "outcomes come in record order");
                    failed.push(offset);
                }
            }
            offset += 1;
        }
    }
    assert_eq!(offset, 2000, "one outcome per record");
    assert!(!failed.is_empty(), "some records failed");
    assert_eq!(failed, expected_failed);
    assert_eq!(new, expected_new);
    assert!(new.iter().any(|n| *n), "some records had a field the table lacks");
    let rows: Vec<RecordBatch> = chunks.iter().map(|c| c.rows.clone()).collect();
    let all = arrow_select::concat::concat_batches(&rows[0].schema(), &rows).unwrap();
    assert_eq!(all, expected, "the chunks' rows are the rows one decoder makes, in order");
    // The rows of a chunk up to a record: those of the records before it.
    let second = &chunks[1];
    let cut = second.rows_before(100);
    let failed_before = second.outcomes[..100].iter().filter(|o| matches!(o, pool::Outcome::Failed(_))).count();
    assert_eq!(cut.num_rows(), 100 - failed_before);
    assert_eq!(cut, second.rows.slice(0, 100 - failed_before));
}
