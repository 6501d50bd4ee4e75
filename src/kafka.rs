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
    /// The broker was reached but refused the login or the TLS handshake: retrying will not help.
    #[error("{0}")]
    Security(String),
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
/// malformed librdkafka properties, since building the client checks them. A rejected SASL login
/// or a failed TLS handshake is reported as soon as librdkafka says so (it would otherwise retry
/// forever), naming the broker, the security protocol and the mechanism.
pub async fn check_reachable(props: &KafkaProperties, timeout: Duration) -> Result<(), KafkaError> {
    if props.get("bootstrap.servers").is_none() && props.get("metadata.broker.list").is_none() {
        return Err(KafkaError::Config(
            "`bootstrap.servers` is not set: add it under [kafka] in the config file (or pass --brokers)".into(),
        ));
    }
    let probe = Probe::default();
    let consumer: BaseConsumer<Probe> = client_config(props)
        .create_with_context(probe)
        .map_err(|e| KafkaError::Config(e.to_string()))?;
    let brokers = brokers(props);
    let security = Security::of(props);
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let step = deadline.saturating_duration_since(std::time::Instant::now()).min(Duration::from_millis(500));
            let outcome = consumer.fetch_metadata(None, step.max(Duration::from_millis(1)));
            // Error events are delivered by polling.
            let _ = consumer.poll(Duration::ZERO);
            if let Some(message) = consumer.context().security_error() {
                return Err(KafkaError::Security(security.explain(&brokers, &message)));
            }
            match outcome {
                Ok(_) => return Ok(()),
                Err(e) if std::time::Instant::now() >= deadline => {
                    let seen = consumer.context().last_error();
                    return Err(KafkaError::Unreachable {
                        brokers,
                        timeout,
                        message: match seen {
                            Some(seen) => format!("{e} ({seen})"),
                            None => e.to_string(),
                        },
                    });
                }
                Err(_) => {}
            }
        }
    })
    .await
    .map_err(|e| KafkaError::Config(format!("metadata task failed: {e}")))?
}

/// The client's security settings, for messages.
struct Security {
    protocol: String,
    mechanism: Option<String>,
    username: Option<String>,
}

impl Security {
    fn of(props: &KafkaProperties) -> Security {
        let protocol = props.get("security.protocol").unwrap_or("plaintext").to_ascii_uppercase();
        let sasl = protocol.starts_with("SASL");
        Security {
            mechanism: sasl.then(|| props.get("sasl.mechanisms").or_else(|| props.get("sasl.mechanism")).unwrap_or("GSSAPI").to_owned()),
            username: props.get("sasl.username").map(str::to_owned).filter(|_| sasl),
            protocol,
        }
    }

    fn explain(&self, brokers: &str, message: &str) -> String {
        let lower = message.to_ascii_lowercase();
        let how = match &self.mechanism {
            Some(m) => format!("security.protocol {}, sasl.mechanism {m}", self.protocol),
            None => format!("security.protocol {}", self.protocol),
        };
        // The broker's address itself says "sasl_ssl://": look at what failed, not where.
        if lower.contains("sasl authentication") || lower.contains("authentication failed") {
            let user = self.username.as_deref().map(|u| format!(" of user {u:?}")).unwrap_or_default();
            format!(
                "Kafka at {brokers} rejected the SASL login{user} ({how}): {message}; check `sasl.username` and \
                 `sasl.password` (and that the broker has that user for this mechanism)"
            )
        } else if lower.contains("certificate") || lower.contains("ssl") || lower.contains("tls") {
            format!(
                "TLS with Kafka at {brokers} failed ({how}): {message}; check `ssl.ca.location` (the CA that \
                 signed the broker's certificate) and, for mutual TLS, `ssl.certificate.location` and `ssl.key.location`"
            )
        } else {
            format!("Kafka at {brokers} refused the connection ({how}): {message}")
        }
    }
}

/// A client context that remembers librdkafka's error events (instead of only logging them), so a
/// failed login or handshake can be reported as such.
#[derive(Default)]
struct Probe {
    security: std::sync::Mutex<Option<String>>,
    last: std::sync::Mutex<Option<String>>,
}

impl Probe {
    fn security_error(&self) -> Option<String> {
        self.security.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn last_error(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl rdkafka::client::ClientContext for Probe {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        let security = matches!(
            code,
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL | RDKafkaErrorCode::SaslAuthenticationFailed)
        ) || ["SSL handshake failed", "SASL authentication error", "SSL routines", "certificate verify failed"]
            .iter()
            .any(|needle| reason.contains(needle));
        tracing::debug!(error = %error, reason, "librdkafka error event while checking the brokers");
        if security {
            *self.security.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
    }
}

impl rdkafka::consumer::ConsumerContext for Probe {}

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
