//! The sample publisher against the real broker: what it sends is what a consumer reads.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use serde_json::Value;

/// Key, value, headers and partition of a consumed message.
type Consumed = (Option<Vec<u8>>, Vec<u8>, BTreeMap<String, Vec<u8>>, i32);

/// Reads every message of `topic` from the beginning until `expected` arrived or a deadline passes.
fn consume_all(topic: &str, expected: usize) -> Vec<Consumed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka())
        .set("group.id", common::unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < expected && Instant::now() < deadline {
        if let Some(msg) = consumer.poll(Duration::from_millis(200)) {
            let msg = msg.expect("no consumer error");
            let headers = msg
                .headers()
                .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect())
                .unwrap_or_default();
            out.push((
                msg.key().map(<[u8]>::to_vec),
                msg.payload().unwrap_or_default().to_vec(),
                headers,
                msg.partition(),
            ));
        }
    }
    // Anything beyond `expected` would be a duplicate: give it a moment to show up.
    let settle = Instant::now() + Duration::from_secs(1);
    while Instant::now() < settle {
        if let Some(msg) = consumer.poll(Duration::from_millis(100)) {
            let msg = msg.expect("no consumer error");
            out.push((msg.key().map(<[u8]>::to_vec), msg.payload().unwrap_or_default().to_vec(), BTreeMap::new(), msg.partition()));
        }
    }
    out
}

#[test]
fn thousand_samples_arrive_once_each_with_their_values() {
    let topic = common::unique("samples");
    let stdout = common::floe_ok(&[
        "publish-sample", "--brokers", &common::kafka(), "--topic", &topic,
        "--count", "1000", "--partitions", "3", "--spread", "2d",
    ]);
    assert!(!stdout.contains("\"id\""), "records are not printed without --print");
    let messages = consume_all(&topic, 1000);
    assert_eq!(messages.len(), 1000, "exactly 1000 messages");
    let mut seen = std::collections::BTreeSet::new();
    let mut partitions = std::collections::BTreeSet::new();
    for (key, payload, headers, partition) in &messages {
        partitions.insert(*partition);
        let v: Value = serde_json::from_slice(payload).expect("every sample is JSON");
        let id = v["id"].as_u64().expect("id");
        assert_eq!(key.as_deref(), Some(id.to_string().as_bytes()), "key is the id");
        assert_eq!(headers.get(floe::sample::HEADER_SAMPLE_ID).map(Vec::as_slice), Some(id.to_string().as_bytes()));
        assert!(seen.insert(id), "id {id} delivered twice");
        // Everything but the timestamp is a function of the id.
        let ts = chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().expect("timestamp")).expect("RFC 3339");
        assert_eq!(v, floe::sample::sample_record(id, ts), "record {id}");
    }
    assert_eq!(seen, (1..=1000).collect(), "ids 1..=1000");
    assert_eq!(partitions.len(), 3, "keys spread over the 3 partitions");
}

#[test]
fn default_publish_sends_the_seed_record_once_and_prints_it() {
    let topic = common::unique("seed");
    let stdout = common::floe_ok(&["publish-sample", "--brokers", &common::kafka(), "--topic", &topic]);
    let printed: Value = serde_json::from_str(stdout.trim()).expect("the printed record is JSON");
    let messages = consume_all(&topic, 1);
    assert_eq!(messages.len(), 1);
    let sent: Value = serde_json::from_slice(&messages[0].1).unwrap();
    assert_eq!(printed, sent);
    let ts = chrono::DateTime::parse_from_rfc3339(sent["timestamp"].as_str().unwrap()).unwrap();
    assert!((chrono::Utc::now() - ts.to_utc()).num_seconds().abs() < 120, "stamped with the current time");
    assert_eq!(sent, floe::sample::seed_record(ts));
}

#[test]
fn bad_every_mixes_in_each_kind_of_malformed_record() {
    let topic = common::unique("bad");
    common::floe_ok(&[
        "publish-sample", "--brokers", &common::kafka(), "--topic", &topic,
        "--count", "50", "--bad-every", "5",
    ]);
    let messages = consume_all(&topic, 50);
    assert_eq!(messages.len(), 50);
    let mut kinds = BTreeMap::new();
    for (key, payload, headers, _) in &messages {
        let id: u64 = std::str::from_utf8(key.as_ref().unwrap()).unwrap().parse().unwrap();
        match headers.get(floe::sample::HEADER_SAMPLE_BAD) {
            Some(kind) => {
                assert_eq!(id % 5, 0, "only every 5th record is bad");
                *kinds.entry(String::from_utf8(kind.clone()).unwrap()).or_insert(0) += 1;
            }
            None => {
                assert_ne!(id % 5, 0);
                serde_json::from_slice::<Value>(payload).expect("good records are JSON");
            }
        }
    }
    let expected: BTreeMap<String, i32> = floe::sample::BAD_KINDS.iter().map(|k| (k.to_string(), 2)).collect();
    assert_eq!(kinds, expected);
}

#[test]
fn unreachable_broker_is_a_clear_error() {
    // Port 9 (discard) on loopback: nothing listens there.
    let out = common::floe(&["publish-sample", "--brokers", "127.0.0.1:9", "--topic", "nowhere"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach Kafka at 127.0.0.1:9"), "{err}");
}

#[test]
fn unknown_librdkafka_property_is_rejected_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write_config(
        dir.path(),
        &format!("[kafka]\n\"bootstrap.servers\" = \"{}\"\n\"linger.mss\" = 5\n", common::kafka()),
    );
    let out = common::floe(&["--config", cfg.to_str().unwrap(), "publish-sample", "--topic", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("linger.mss"), "{err}");
}
