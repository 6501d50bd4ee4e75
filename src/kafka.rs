//! Kafka clients built from the configuration's librdkafka properties.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use crate::config::KafkaProperties;

/// Kafka problems, named with the thing that failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka configuration: {0}")]
    Config(String),
    #[error(
        "cannot reach Kafka at {brokers} within {timeout:?}: {message}; check `bootstrap.servers` \
         and that the broker is running"
    )]
    Unreachable {
        brokers: String,
        timeout: Duration,
        message: String,
    },
    #[error("kafka topic {topic}: {message}")]
    Topic { topic: String, message: String },
    #[error("producing to {topic}: {message}")]
    Produce { topic: String, message: String },
}

/// Properties only a consumer understands; librdkafka warns when a producer is given them.
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "fetch.wait.max.ms",
    "isolation.level",
];

/// A client configuration with every user property; librdkafka validates names and values when
/// the client is created.
pub fn client_config(props: &KafkaProperties) -> ClientConfig {
    let mut cc = ClientConfig::new();
    for (k, v) in props.iter() {
        cc.set(k, v);
    }
    cc
}

/// The client configuration for a producer: the user's properties without consumer-only ones.
pub fn producer_config(props: &KafkaProperties) -> ClientConfig {
    let mut cc = ClientConfig::new();
    for (k, v) in props.iter() {
        if !CONSUMER_ONLY.contains(&k) {
            cc.set(k, v);
        }
    }
    cc
}

/// Bootstrap servers as configured (for messages).
pub fn brokers(props: &KafkaProperties) -> String {
    props
        .get("bootstrap.servers")
        .or_else(|| props.get("metadata.broker.list"))
        .unwrap_or("<bootstrap.servers not set>")
        .to_owned()
}

/// Fails unless a broker answers a metadata request within `timeout`. Also rejects unknown or
/// malformed librdkafka properties, since building the client checks them.
pub async fn check_reachable(props: &KafkaProperties, timeout: Duration) -> Result<(), KafkaError> {
    if props.get("bootstrap.servers").is_none() && props.get("metadata.broker.list").is_none() {
        return Err(KafkaError::Config(
            "`bootstrap.servers` is not set: add it under [kafka] in the config file (or pass --brokers)".into(),
        ));
    }
    let consumer: BaseConsumer = client_config(props)
        .create()
        .map_err(|e| KafkaError::Config(e.to_string()))?;
    let brokers = brokers(props);
    tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, timeout).map(|_| ()))
        .await
        .map_err(|e| KafkaError::Config(format!("metadata task failed: {e}")))?
        .map_err(|e| KafkaError::Unreachable {
            brokers,
            timeout,
            message: e.to_string(),
        })
}

/// Creates `topic` with `partitions` partitions (replication factor 1 unless the broker has more)
/// if it does not exist. Returns whether it was created.
pub async fn ensure_topic(
    props: &KafkaProperties,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<bool, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = producer_config(props)
        .create()
        .map_err(|e| KafkaError::Config(e.to_string()))?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| KafkaError::Topic {
            topic: topic.to_owned(),
            message: e.to_string(),
        })?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(false),
        Some(Err((_, code))) => Err(KafkaError::Topic {
            topic: topic.to_owned(),
            message: format!("cannot create: {code}"),
        }),
        None => Err(KafkaError::Topic {
            topic: topic.to_owned(),
            message: "the broker returned no result for topic creation".into(),
        }),
    }
}
