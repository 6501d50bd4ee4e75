//! The sample publisher: records of the seed's shape, for demos, tests and benchmarks.
//!
//! Values are a pure function of the record's id (and the timestamp passed in), so a test can
//! recompute exactly what was sent for any id.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use rdkafka::ClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde_json::{Value, json};

use crate::config::KafkaProperties;
use crate::kafka::{self, KafkaError};

/// Header carrying the record's id on every sample record (bad ones included).
pub const HEADER_SAMPLE_ID: &str = "floe.sample.id";
/// Header naming the kind of a deliberately malformed record.
pub const HEADER_SAMPLE_BAD: &str = "floe.sample.bad";

/// The ways `--bad-every` breaks a record, in the order they are used.
pub const BAD_KINDS: &[&str] = &[
    "not-json",
    "wrong-type",
    "missing-required",
    "out-of-range",
    "invalid-utf8",
];

/// How a sample record is written, for testing floe's `[decode]` options against the producers
/// it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// The seed's own field names (snake_case).
    #[default]
    Seed,
    /// Field names in camelCase (`stringMap`), as Java producers write them; map keys are data
    /// and stay as they are. Read with `[decode] field_case = "camelCase"`.
    Camel,
    /// The record as the `data` of a CloudEvents 1.0 structured-mode JSON envelope, whose `id`
    /// is `sample-<id>`. Read with `[decode] unnest = "/data"` (and projections of `/id`,
    /// `/type`, `/source`, `/time` for the envelope's attributes).
    CloudEvents,
}

/// The names of the shapes, for help texts and errors.
pub const SHAPE_NAMES: &str = "seed, camel or cloudevents";

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "seed" => Ok(Shape::Seed),
            "camel" | "camelCase" => Ok(Shape::Camel),
            "cloudevents" | "cloud-events" => Ok(Shape::CloudEvents),
            _ => Err(format!("unknown record shape {s:?}; use {SHAPE_NAMES}")),
        }
    }
}

/// The CloudEvents `source` and `type` of the sample envelope.
pub const CLOUDEVENTS_SOURCE: &str = "/floe/publish-sample";
pub const CLOUDEVENTS_TYPE: &str = "io.floe.sample.v1";

/// `record` (of the seed's shape) written in `shape`.
pub fn shaped(record: Value, shape: Shape, id: u64, ts: DateTime<FixedOffset>) -> Value {
    match shape {
        Shape::Seed => record,
        Shape::Camel => camel_keys(record, 0),
        Shape::CloudEvents => json!({
            "specversion": "1.0",
            "id": format!("sample-{id}"),
            "source": CLOUDEVENTS_SOURCE,
            "type": CLOUDEVENTS_TYPE,
            "time": ts.with_timezone(&Utc).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "datacontenttype": "application/json",
            "data": record,
        }),
    }
}

/// snake_case field names to camelCase, in the record and its nested objects; the map
/// `string_map`'s keys are data and stay.
fn camel_keys(v: Value, depth: usize) -> Value {
    match v {
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| {
                    let v = if k == "string_map" && depth == 0 { v } else { camel_keys(v, depth + 1) };
                    (snake_to_camel(&k), v)
                })
                .collect(),
        ),
        other => other,
    }
}

fn snake_to_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// What to send.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub topic: String,
    /// Number of records; 1 by default.
    pub count: u64,
    /// Records per second; unlimited when `None`.
    pub rate: Option<f64>,
    /// Every K-th record (K, 2K, ...) is malformed.
    pub bad_every: Option<u64>,
    /// Id of the first record; the rest count up from it.
    pub first_id: u64,
    /// Timestamps are spread evenly over this period before `now` (all `now` when zero).
    pub spread: Duration,
    /// Print every record sent (as JSON lines) instead of a progress line.
    pub print: bool,
    /// How good records are written.
    pub shape: Shape,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            topic: String::new(),
            count: 1,
            rate: None,
            bad_every: None,
            first_id: 1,
            spread: Duration::ZERO,
            print: false,
            shape: Shape::Seed,
        }
    }
}

/// The values of one sample record, a pure function of its id: what [`sample_record`] and
/// [`write_sample_record`] both write.
struct SampleValues {
    h: u64,
    /// The length of the record's lists and map.
    n: usize,
}

impl SampleValues {
    const STRINGS: [&'static str; 6] = ["a", "b", "c", "ünï", "\"q\"", "x y"];

    fn of(id: u64) -> Self {
        let h = mix(id);
        SampleValues { h, n: (h % 5) as usize }
    }
    fn bool(&self) -> bool {
        self.h & 1 == 0
    }
    fn floating(&self) -> f64 {
        (self.h % 10_000) as f64 / 100.0
    }
    fn bools(&self, i: usize) -> bool {
        (self.h >> i) & 1 == 1
    }
    fn floatings(&self, i: usize) -> f64 {
        ((self.h >> (8 * i)) % 1000) as f64 / 100.0
    }
    fn integers(&self, i: usize) -> i64 {
        ((self.h >> (4 * i)) % 100_000) as i64 - 50_000
    }
    fn strings(&self, i: usize) -> &'static str {
        Self::STRINGS[(self.h as usize + i) % Self::STRINGS.len()]
    }
    /// The number in the map's `i`-th value, `v<number>` (its key is `k<i>`).
    fn map_value(&self, i: usize) -> u64 {
        (self.h >> i) % 97
    }
    /// The number in `nested.key`, `key <number>`.
    fn nested_key(&self) -> u64 {
        self.h % 1000
    }
}

/// A good sample record of the seed's shape, plus an `id` field.
pub fn sample_record(id: u64, ts: DateTime<FixedOffset>) -> Value {
    let v = SampleValues::of(id);
    json!({
        "id": id,
        "bool": v.bool(),
        "floating": v.floating(),
        "integer": id,
        "string": format!("value {id}"),
        "bools": (0..v.n).map(|i| v.bools(i)).collect::<Vec<_>>(),
        "floatings": (0..v.n).map(|i| v.floatings(i)).collect::<Vec<_>>(),
        "integers": (0..v.n).map(|i| v.integers(i)).collect::<Vec<_>>(),
        "strings": (0..v.n).map(|i| v.strings(i)).collect::<Vec<_>>(),
        "string_map": (0..v.n).map(|i| (format!("k{i}"), Value::from(format!("v{}", v.map_value(i))))).collect::<serde_json::Map<String, Value>>(),
        "nested": {"key": format!("key {}", v.nested_key()), "value": id as i64},
        "timestamp": ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
    })
}

/// The text of [`sample_record`]`(id, ts)`, byte for byte, appended to `out` without building a
/// `Value` first: the publisher's own cost per record, which bounds the rate a benchmark on this
/// machine's few cores can produce at (about a third of what building the value costs).
pub fn write_sample_record(out: &mut Vec<u8>, id: u64, ts: DateTime<FixedOffset>) {
    use std::io::Write as _;
    let v = SampleValues::of(id);
    let list = |out: &mut Vec<u8>, item: &mut dyn FnMut(&mut Vec<u8>, usize)| {
        out.push(b'[');
        for i in 0..v.n {
            if i > 0 {
                out.push(b',');
            }
            item(out, i);
        }
        out.push(b']');
    };
    // serde_json's map keeps keys sorted: the fields in that order.
    let _ = write!(out, "{{\"bool\":{},\"bools\":", v.bool());
    list(out, &mut |out, i| json(out, v.bools(i)));
    out.extend_from_slice(b",\"floating\":");
    json(out, v.floating());
    out.extend_from_slice(b",\"floatings\":");
    list(out, &mut |out, i| json(out, v.floatings(i)));
    let _ = write!(out, ",\"id\":{id},\"integer\":{id},\"integers\":");
    list(out, &mut |out, i| json(out, v.integers(i)));
    let _ = write!(
        out,
        ",\"nested\":{{\"key\":\"key {}\",\"value\":{id}}},\"string\":\"value {id}\",\"string_map\":{{",
        v.nested_key()
    );
    for i in 0..v.n {
        let _ = write!(out, "{}\"k{i}\":\"v{}\"", if i > 0 { "," } else { "" }, v.map_value(i));
    }
    out.extend_from_slice(b"},\"strings\":");
    list(out, &mut |out, i| json(out, v.strings(i)));
    let _ = write!(out, ",\"timestamp\":\"{}\"}}", ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, false));
}

/// One value as serde_json writes it (its float format, its escapes).
fn json(out: &mut Vec<u8>, value: impl serde::Serialize) {
    serde_json::to_writer(out, &value).expect("writing to a Vec");
}

/// The seed's record exactly as the seed shows it, stamped with `ts`.
pub fn seed_record(ts: DateTime<FixedOffset>) -> Value {
    json!({
        "bool": true, "floating": 0.01, "integer": 1, "string": "value",
        "bools": [true, false, true], "floatings": [0.01, 0.02, 0.03], "integers": [1, 2, 3],
        "strings": ["a", "b", "c"], "string_map": {"k1": "v1", "k2": "v2"},
        "nested": {"key": "key name", "value": 1},
        "timestamp": ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
    })
}

/// A malformed record of the given kind (an index into [`BAD_KINDS`]), as raw bytes.
pub fn bad_record(id: u64, kind: usize, ts: DateTime<FixedOffset>) -> Vec<u8> {
    let mut good = sample_record(id, ts);
    match BAD_KINDS[kind % BAD_KINDS.len()] {
        "not-json" => format!("{{\"id\": {id}, \"bool\": tru").into_bytes(),
        "wrong-type" => {
            good["integer"] = json!("not a number");
            good.to_string().into_bytes()
        }
        "missing-required" => {
            good.as_object_mut().expect("sample is an object").remove("id");
            good.to_string().into_bytes()
        }
        "out-of-range" => {
            good["integer"] = json!(1e30);
            good.to_string().into_bytes()
        }
        _ => {
            // Valid JSON structure around bytes that are not UTF-8.
            let mut bytes = format!("{{\"id\": {id}, \"string\": \"").into_bytes();
            bytes.extend_from_slice(&[0xff, 0xfe, 0xc3]);
            bytes.extend_from_slice(b"\"}");
            bytes
        }
    }
}

/// SplitMix64: spreads ids into well-mixed bits so neighbouring records differ.
fn mix(id: u64) -> u64 {
    let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Counts deliveries reported by librdkafka.
#[derive(Default)]
struct DeliveryCounter {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().expect("not poisoned");
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// What was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishReport {
    pub sent: u64,
    pub bad: u64,
    pub elapsed: Duration,
}

/// Sends records to Kafka and waits until every one is acknowledged. `out` receives the printed
/// records or progress lines. Blocking: call it from a blocking context.
pub fn publish(
    props: &KafkaProperties,
    opts: &PublishOptions,
    now: DateTime<Utc>,
    out: &mut dyn std::io::Write,
    progress: &crate::progress::Progress,
) -> Result<PublishReport, KafkaError> {
    let produce_err = |message: String| KafkaError::Produce {
        topic: opts.topic.clone(),
        message,
    };
    if opts.bad_every.is_some() && opts.shape != Shape::Seed {
        // Malformed records exist only in the seed's shape; mixing them in would make kinds
        // (not-an-object vs wrong-type) depend on the shape.
        return Err(produce_err("malformed records (--bad-every) are made only in the seed shape; drop --shape or --bad-every".into()));
    }
    let mut cc = kafka::producer_config(props);
    // Retries must not duplicate: the exactly-once tests count every id.
    cc.set("enable.idempotence", "true");
    if props.get("linger.ms").is_none() {
        cc.set("linger.ms", "5");
    }
    let producer: BaseProducer<DeliveryCounter> = cc
        .create_with_context(DeliveryCounter::default())
        .map_err(|e| KafkaError::Config(e.to_string()))?;
    let start = Instant::now();
    progress.set_total(opts.count);
    let mut bad = 0;
    let offset = FixedOffset::east_opt(0).expect("zero offset is valid");
    let mut payload = Vec::with_capacity(1024);
    for i in 0..opts.count {
        let id = opts.first_id + i;
        if let Some(rate) = opts.rate {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            // Waits of a millisecond or more: a sleep per record would cost more than the record
            // at high rates; records then leave in bursts of at most a millisecond's worth.
            if due > now + Duration::from_millis(1) {
                producer.poll(due - now);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
        let ts = timestamp_for(now, i, opts.count, opts.spread).with_timezone(&offset);
        let is_bad = opts.bad_every.is_some_and(|k| k > 0 && (i + 1) % k == 0);
        payload.clear();
        let kind = if is_bad {
            let kind = (bad % BAD_KINDS.len() as u64) as usize;
            bad += 1;
            payload.extend_from_slice(&bad_record(id, kind, ts));
            Some(BAD_KINDS[kind])
        } else if opts.count == 1 && opts.bad_every.is_none() && opts.first_id == 1 {
            json(&mut payload, shaped(seed_record(ts), opts.shape, id, ts));
            None
        } else if opts.shape == Shape::Seed {
            write_sample_record(&mut payload, id, ts);
            None
        } else {
            json(&mut payload, shaped(sample_record(id, ts), opts.shape, id, ts));
            None
        };
        let key = id.to_string();
        let mut headers = OwnedHeaders::new().insert(Header {
            key: HEADER_SAMPLE_ID,
            value: Some(key.as_bytes()),
        });
        if let Some(kind) = kind {
            headers = headers.insert(Header {
                key: HEADER_SAMPLE_BAD,
                value: Some(kind.as_bytes()),
            });
        }
        let mut record = BaseRecord::to(&opts.topic)
            .key(key.as_bytes())
            .payload(&payload)
            .headers(headers)
            .timestamp(ts.timestamp_millis());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) => {
                    producer.poll(Duration::from_millis(50));
                    record = r;
                }
                Err((e, _)) => return Err(produce_err(e.to_string())),
            }
        }
        producer.poll(Duration::ZERO);
        if opts.print || opts.count == 1 {
            let _ = writeln!(out, "{}", String::from_utf8_lossy(&payload));
        }
        progress.inc(1);
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| produce_err(format!("not every record was acknowledged within 60s: {e}")))?;
    let ctx = producer.context();
    let failed = ctx.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = ctx.first_error.lock().expect("not poisoned").clone().unwrap_or_default();
        return Err(produce_err(format!("{failed} records were not delivered; first error: {first}")));
    }
    let delivered = ctx.delivered.load(Ordering::Relaxed);
    if delivered != opts.count {
        return Err(produce_err(format!(
            "{delivered} of {} records were acknowledged",
            opts.count
        )));
    }
    progress.finish();
    Ok(PublishReport {
        sent: opts.count,
        bad,
        elapsed: start.elapsed(),
    })
}

/// Record `i` of `count` is stamped `spread * (count - 1 - i) / count` before `now`, so the last
/// one is `now`.
pub fn timestamp_for(now: DateTime<Utc>, i: u64, count: u64, spread: Duration) -> DateTime<Utc> {
    if spread.is_zero() || count <= 1 {
        return now;
    }
    let back = spread.as_micros() as f64 * (count - 1 - i) as f64 / count as f64;
    let micros = now.timestamp_micros() - back as i64;
    Utc.timestamp_micros(micros).single().unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2022-07-26T00:41:48.046773-07:00").unwrap()
    }

    #[test]
    fn seed_record_matches_the_seed() {
        let r = seed_record(ts());
        let expected: Value = serde_json::from_str(
            r#"{"bool": true, "floating": 0.01, "integer": 1, "string": "value", "bools": [true, false, true],
                "floatings": [0.01, 0.02, 0.03], "integers": [1, 2, 3], "strings": ["a", "b", "c"],
                "string_map": {"k1": "v1", "k2": "v2"}, "nested": {"key": "key name", "value": 1},
                "timestamp": "2022-07-26T00:41:48.046773-07:00"}"#,
        )
        .unwrap();
        assert_eq!(r, expected);
    }

    #[test]
    fn the_written_sample_record_is_the_values_text() {
        let mut out = Vec::new();
        for id in (0..2_000).chain([u64::MAX / 3, 1 << 40]) {
            out.clear();
            write_sample_record(&mut out, id, ts());
            assert_eq!(String::from_utf8(out.clone()).unwrap(), sample_record(id, ts()).to_string(), "id {id}");
        }
    }

    #[test]
    fn sample_records_are_deterministic_and_varied() {
        assert_eq!(sample_record(42, ts()), sample_record(42, ts()));
        let a = sample_record(1, ts());
        let b = sample_record(2, ts());
        assert_ne!(a, b);
        assert_eq!(a["id"], 1);
        assert_eq!(a["integer"], 1);
        assert_eq!(b["nested"]["value"], 2);
        // Across many ids the optional shapes vary: empty and non-empty arrays, both booleans.
        let lens: std::collections::HashSet<usize> = (0..50)
            .map(|i| sample_record(i, ts())["bools"].as_array().unwrap().len())
            .collect();
        assert!(lens.contains(&0) && lens.len() >= 4, "{lens:?}");
        let bools: std::collections::HashSet<bool> =
            (0..50).map(|i| sample_record(i, ts())["bool"].as_bool().unwrap()).collect();
        assert_eq!(bools.len(), 2);
    }

    #[test]
    fn bad_records_are_bad_in_their_own_way() {
        let not_json = bad_record(7, 0, ts());
        assert!(serde_json::from_slice::<Value>(&not_json).is_err());
        let wrong: Value = serde_json::from_slice(&bad_record(7, 1, ts())).unwrap();
        assert!(wrong["integer"].is_string());
        let missing: Value = serde_json::from_slice(&bad_record(7, 2, ts())).unwrap();
        assert!(missing.get("id").is_none());
        let big: Value = serde_json::from_slice(&bad_record(7, 3, ts())).unwrap();
        assert!(big["integer"].as_f64().unwrap() > i64::MAX as f64);
        let bytes = bad_record(7, 4, ts());
        assert!(std::str::from_utf8(&bytes).is_err());
    }

    #[test]
    fn shapes() {
        let r = sample_record(3, ts());
        let camel = shaped(r.clone(), Shape::Camel, 3, ts());
        assert_eq!(camel["stringMap"], r["string_map"], "map keys are data: unchanged");
        assert!(camel.get("string_map").is_none());
        assert_eq!(camel["nested"], r["nested"]);
        assert_eq!(snake_to_camel("a_bc_d"), "aBcD");
        let ce = shaped(r.clone(), Shape::CloudEvents, 3, ts());
        assert_eq!(ce["data"], r);
        assert_eq!(ce["id"], "sample-3");
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["time"], "2022-07-26T07:41:48.046Z");
        assert_eq!(shaped(r.clone(), Shape::Seed, 3, ts()), r);
        assert_eq!("cloudevents".parse::<Shape>(), Ok(Shape::CloudEvents));
        assert!("xml".parse::<Shape>().unwrap_err().contains("seed, camel or cloudevents"));
    }

    #[test]
    fn timestamps_spread_backwards_from_now() {
        let now = Utc.timestamp_micros(1_700_000_000_000_000).unwrap();
        let day = Duration::from_secs(86_400);
        assert_eq!(timestamp_for(now, 9, 10, day), now);
        assert_eq!(timestamp_for(now, 0, 1, day), now);
        assert_eq!(timestamp_for(now, 3, 10, Duration::ZERO), now);
        let first = timestamp_for(now, 0, 10, day);
        assert_eq!((now - first).num_seconds(), 86_400 * 9 / 10);
    }
}
