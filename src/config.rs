//! The configuration file: one typed tree, read once, validated before anything starts.
//!
//! The file is TOML. Before it is deserialized, `${NAME}` in any string value is replaced by the
//! environment variable `NAME` (a lookup function is passed in: library code never reads the
//! environment itself), so secrets can stay out of the file. `$${` writes a literal `${`.
//! Values that may hold secrets (Kafka passwords and keys, the password in a catalog URI) are
//! redacted wherever the configuration is printed or logged.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything that can be wrong with a configuration file, said so that the user can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: String, message: String },
    #[error(
        "config file {path}: `{key}` refers to environment variable {var}, which is not set; \
         export it or write the value into the file"
    )]
    MissingEnv {
        path: String,
        key: String,
        var: String,
    },
    #[error("config file {path}: {message}")]
    Invalid { path: String, message: String },
}

/// The whole configuration of a floe process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory for the embedded catalog (SQLite) and the local warehouse.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Name of the pipeline whose ledger this process keeps; defaults to the Kafka `group.id`.
    /// (With `[[pipeline]]` blocks, each block's `name`; see [`crate::pipelines`].)
    pub pipeline: Option<String>,
    /// With several `[[pipeline]]` blocks: what a pipeline's permanent error does to the others.
    #[serde(default)]
    pub on_pipeline_failure: OnPipelineFailure,
    /// The `[[pipeline]]` blocks, each resolved into a whole single-pipeline configuration (the
    /// top-level sections are its defaults). Empty: this configuration is the one pipeline.
    #[serde(skip)]
    pub pipelines: Vec<Config>,
    #[serde(default)]
    pub catalog: CatalogConfig,
    /// librdkafka properties, passed through as written (`bootstrap.servers`, `security.protocol`,
    /// `sasl.*`, `ssl.*`, ...).
    #[serde(default)]
    pub kafka: KafkaProperties,
    #[serde(default)]
    pub source: SourceConfig,
    pub table: Option<TableConfig>,
    #[serde(default)]
    pub commit: CommitConfig,
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    #[serde(default)]
    pub schema: SchemaConfig,
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
    /// How records are reshaped and read: unnesting, projections, field-name case, time zone and
    /// epoch unit.
    #[serde(default)]
    pub decode: DecodeConfig,
    /// Kafka record metadata stored in columns.
    #[serde(default)]
    pub metadata: MetadataConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// Data checks on the committed rows (`[[checks]]`, one table per check).
    #[serde(default)]
    pub checks: Vec<CheckConfig>,
    /// Object storage settings (S3, GCS, ADLS) for table files.
    #[serde(default)]
    pub storage: StorageConfig,
    /// AWS settings shared by S3, Glue and Secrets Manager.
    #[serde(default)]
    pub aws: AwsConfig,
}

/// `on_pipeline_failure`: what a permanent error of one pipeline does to the other pipelines of
/// the process.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnPipelineFailure {
    /// The others go on; the failed one is reported (ERROR log, `/ready`, `/status.json`) and
    /// the process exits non-zero when it ends.
    #[default]
    Continue,
    /// Every pipeline commits what it buffered and stops; the process exits non-zero.
    Stop,
}

/// `[decode]`: how a record's JSON value becomes a row. Without the section, the whole value is
/// the row, field names are matched as they are, offset-less timestamps are UTC and epoch numbers
/// are milliseconds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    /// A JSON pointer (RFC 6901) to the object that holds the row, e.g. `"/data"` for a
    /// CloudEvents envelope or `"/payload/after"` for Debezium.
    pub unnest: Option<String>,
    /// Column = JSON pointer into the original record (before unnesting): the column takes the
    /// value there instead of the field of its name.
    #[serde(default)]
    pub projections: BTreeMap<String, String>,
    /// How the producer writes field names: camelCase, PascalCase, kebab-case,
    /// SCREAMING_SNAKE_CASE, or snake_case (the table's convention, the default: no conversion).
    pub field_case: Option<String>,
    /// Match field names to columns ignoring ASCII case, when the exact name does not match.
    #[serde(default)]
    pub case_insensitive: bool,
    /// The IANA time zone of timestamptz values written without an offset (default "UTC").
    pub timestamp_zone: Option<String>,
    /// The unit of numbers in timestamp columns: seconds, millis (the default), micros, nanos.
    pub epoch_unit: Option<String>,
}

impl DecodeConfig {
    fn validate(&self) -> Result<(), String> {
        self.options(&MetadataConfig::default()).map(|_| ())
    }

    /// The decoder's options, with every name checked (columns are checked against the table when
    /// the decoder is built).
    pub fn options(&self, metadata: &MetadataConfig) -> Result<crate::decode::DecodeOptions, String> {
        use crate::decode::{EpochUnit, FieldCase, Projection};
        let pointer = |key: &str, p: &str| {
            if p.is_empty() || p.starts_with('/') {
                Ok(())
            } else {
                Err(format!(
                    "{key} = {p:?} is not a JSON pointer: write it with a leading '/', e.g. \"/{p}\" (RFC 6901)"
                ))
            }
        };
        if let Some(u) = &self.unnest {
            pointer("decode.unnest", u)?;
        }
        let mut projections = Vec::new();
        for (column, p) in &self.projections {
            pointer(&format!("decode.projections.{column}"), p)?;
            projections.push(Projection { column: column.clone(), pointer: p.clone() });
        }
        let field_case = match &self.field_case {
            None => None,
            Some(c) => FieldCase::parse_name(c).map_err(|e| format!("decode.field_case = {c:?}: {e}"))?,
        };
        let timestamp_zone = match self.timestamp_zone.as_deref() {
            None => None,
            Some(z) => Some(z.parse::<chrono_tz::Tz>().map_err(|_| {
                format!(
                    "decode.timestamp_zone = {z:?} is not a time zone; use an IANA zone name such as \
                     \"Europe/Berlin\", \"America/New_York\" or \"UTC\""
                )
            })?),
        };
        let epoch_unit = match &self.epoch_unit {
            None => EpochUnit::default(),
            Some(u) => u.parse().map_err(|e| format!("decode.epoch_unit = {u:?}: {e}"))?,
        };
        Ok(crate::decode::DecodeOptions {
            unnest: self.unnest.clone().filter(|u| !u.is_empty()),
            projections,
            field_case,
            case_insensitive: self.case_insensitive,
            timestamp_zone,
            epoch_unit,
            metadata: metadata.columns(),
        })
    }
}

/// `[metadata]`: which Kafka record metadata goes to which column (`key = "kafka_key"`), and
/// `[metadata.headers]`: header name = column.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataConfig {
    /// The record key: UTF-8 text in a string column, bytes in a binary column.
    pub key: Option<String>,
    pub topic: Option<String>,
    pub partition: Option<String>,
    pub offset: Option<String>,
    /// The record timestamp: a timestamptz, timestamp or long (epoch milliseconds) column.
    pub timestamp: Option<String>,
    /// `CreateTime` or `LogAppendTime`: a string column.
    pub timestamp_type: Option<String>,
    /// Header name = column (the last header of that name; NULL when absent).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl MetadataConfig {
    /// The decoder's metadata columns.
    pub fn columns(&self) -> Vec<crate::decode::MetadataColumn> {
        use crate::decode::{MetadataColumn, MetadataField as F};
        let mut out = Vec::new();
        for (field, column) in [
            (F::Key, &self.key),
            (F::Topic, &self.topic),
            (F::Partition, &self.partition),
            (F::Offset, &self.offset),
            (F::Timestamp, &self.timestamp),
            (F::TimestampType, &self.timestamp_type),
        ] {
            if let Some(column) = column {
                out.push(MetadataColumn { column: column.clone(), field });
            }
        }
        for (header, column) in &self.headers {
            out.push(MetadataColumn { column: column.clone(), field: F::Header(header.clone()) });
        }
        out
    }

    /// The config key that maps `field` (for error messages).
    pub fn key_of(field: &crate::decode::MetadataField) -> String {
        use crate::decode::MetadataField as F;
        match field {
            F::Key => "metadata.key".into(),
            F::Topic => "metadata.topic".into(),
            F::Partition => "metadata.partition".into(),
            F::Offset => "metadata.offset".into(),
            F::Timestamp => "metadata.timestamp".into(),
            F::TimestampType => "metadata.timestamp_type".into(),
            F::Header(h) => format!("metadata.headers.{}", toml_key(h)),
        }
    }

    fn validate(&self) -> Result<(), String> {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for c in self.columns() {
            let key = MetadataConfig::key_of(&c.field);
            if c.column.trim().is_empty() {
                return Err(format!("{key} is empty; name the column it goes to"));
            }
            if let Some(first) = seen.insert(c.column.clone(), key.clone()) {
                return Err(format!(
                    "{first} and {key} both go to column {:?}; a column holds one thing",
                    c.column
                ));
            }
        }
        for h in self.headers.keys() {
            if h.is_empty() {
                return Err("metadata.headers: an empty header name".into());
            }
        }
        Ok(())
    }
}

/// A TOML key as written in a dotted path (quoted unless bare).
fn toml_key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_owned()
    } else {
        format!("{k:?}")
    }
}


/// The HTTP listener of `floe run` (`/metrics`, `/health`, `/ready`, the status page). Off unless
/// `listen` is set: several floe processes often share a host, and a default port would make the
/// second one fail.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port`, e.g. `"127.0.0.1:9100"`; port 0 picks a free port (the address is logged).
    pub listen: Option<String>,
}

/// Alerts raised by `floe run` itself (logged at ERROR and exported as metrics).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// The heartbeat: alert when no record has arrived for this long, e.g. "5m".
    #[serde(default, with = "human_duration_opt")]
    pub max_idle: Option<Duration>,
}

/// One data check on one column, evaluated on every commit's rows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// A top-level column of the table.
    pub column: String,
    /// `not_null`, `range`, `regex`, `accepted` or `max_null_rate`.
    pub check: CheckKind,
    /// range: the smallest allowed value (inclusive).
    pub min: Option<f64>,
    /// range: the largest allowed value (inclusive).
    pub max: Option<f64>,
    /// regex: values must match this pattern (Rust `regex` syntax; anchor it with `^...$` for a
    /// whole-value match).
    pub pattern: Option<String>,
    /// accepted: the allowed values (strings or integers, as the column is).
    pub values: Option<Vec<toml::Value>>,
    /// max_null_rate: the largest share of null values (0 to 1) over `window`.
    pub max_rate: Option<f64>,
    /// max_null_rate: the period the rate is computed over, e.g. "5m".
    #[serde(default, with = "human_duration_opt")]
    pub window: Option<Duration>,
    /// What a failing row does: `warn` (log, count, commit it), `dead_letter` (set it aside with
    /// kind `check-failed`), `stop` (commit nothing of the batch and exit).
    #[serde(default)]
    pub action: CheckAction,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    NotNull,
    Range,
    Regex,
    Accepted,
    MaxNullRate,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::NotNull => "not_null",
            CheckKind::Range => "range",
            CheckKind::Regex => "regex",
            CheckKind::Accepted => "accepted",
            CheckKind::MaxNullRate => "max_null_rate",
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CheckAction {
    #[default]
    Warn,
    DeadLetter,
    Stop,
}

impl CheckAction {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckAction::Warn => "warn",
            CheckAction::DeadLetter => "dead_letter",
            CheckAction::Stop => "stop",
        }
    }
}

impl CheckConfig {
    /// The check's name in logs, metrics and the table's history: `column:check`.
    pub fn name(&self) -> String {
        format!("{}:{}", self.column, self.check.as_str())
    }

    /// Checks what can be checked without the table: the parameters fit the kind.
    fn validate(&self, i: usize, has_dead_letters: bool) -> Result<(), String> {
        let at = format!("checks[{i}] ({})", self.name());
        let only = |allowed: &[&str]| -> Result<(), String> {
            let given: Vec<&str> = [
                ("min", self.min.is_some()),
                ("max", self.max.is_some()),
                ("pattern", self.pattern.is_some()),
                ("values", self.values.is_some()),
                ("max_rate", self.max_rate.is_some()),
                ("window", self.window.is_some()),
            ]
            .iter()
            .filter(|(k, set)| *set && !allowed.contains(k))
            .map(|(k, _)| *k)
            .collect();
            if given.is_empty() {
                Ok(())
            } else {
                Err(format!("{at}: `{}` does not apply to check = \"{}\"", given.join("`, `"), self.check.as_str()))
            }
        };
        if self.column.trim().is_empty() {
            return Err(format!("checks[{i}]: `column` is empty; name a top-level column of the table"));
        }
        match self.check {
            CheckKind::NotNull => only(&[])?,
            CheckKind::Range => {
                only(&["min", "max"])?;
                match (self.min, self.max) {
                    (None, None) => return Err(format!("{at}: give `min`, `max` or both")),
                    (Some(lo), Some(hi)) if lo > hi => return Err(format!("{at}: min = {lo} is above max = {hi}")),
                    _ => {}
                }
            }
            CheckKind::Regex => {
                only(&["pattern"])?;
                let Some(p) = &self.pattern else { return Err(format!("{at}: give the `pattern`")) };
                regex::Regex::new(p).map_err(|e| format!("{at}: pattern {p:?} does not compile: {e}"))?;
            }
            CheckKind::Accepted => {
                only(&["values"])?;
                match &self.values {
                    None => return Err(format!("{at}: give the accepted `values`, e.g. values = [\"a\", \"b\"]")),
                    Some(v) if v.is_empty() => return Err(format!("{at}: `values` is empty: nothing would pass")),
                    Some(v) => {
                        if let Some(bad) = v.iter().find(|x| !(x.is_str() || x.is_integer())) {
                            return Err(format!("{at}: accepted value {bad} is neither a string nor an integer"));
                        }
                    }
                }
            }
            CheckKind::MaxNullRate => {
                only(&["max_rate", "window"])?;
                match self.max_rate {
                    Some(r) if (0.0..=1.0).contains(&r) => {}
                    Some(r) => return Err(format!("{at}: max_rate = {r} must be between 0 and 1 (e.g. 0.05 for 5%)")),
                    None => return Err(format!("{at}: give `max_rate`, e.g. max_rate = 0.05")),
                }
                if self.window.is_some_and(|w| w < Duration::from_secs(1)) {
                    return Err(format!("{at}: window must be at least \"1s\""));
                }
                if self.action == CheckAction::DeadLetter {
                    return Err(format!(
                        "{at}: action = \"dead_letter\" does not apply to a rate (no single row fails); use \"warn\" or \"stop\""
                    ));
                }
            }
        }
        if self.action == CheckAction::DeadLetter && !has_dead_letters {
            return Err(format!(
                "{at}: action = \"dead_letter\" needs a dead-letter destination: add `[dead_letter]` with `topic = ...` or `table = ...`"
            ));
        }
        Ok(())
    }
}


/// AWS settings shared by every AWS client floe makes (S3 storage, Secrets Manager). Credentials
/// come from the standard AWS chain (environment, shared config/credentials files with `profile`,
/// web identity, ECS or EC2 instance role) unless static keys are given under `[storage.s3]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// e.g. "eu-west-1"; unset: the chain's (`AWS_REGION`, the profile's `region`).
    pub region: Option<String>,
    /// A named profile of the shared config files (`~/.aws/config`, `~/.aws/credentials`).
    pub profile: Option<String>,
    /// One endpoint for every AWS API (an emulator, a VPC endpoint); each service's own setting wins.
    pub endpoint: Option<String>,
}

/// Settings of the object stores table files live on, chosen by each location's scheme:
/// `s3://` (also `s3a://`, `s3n://`), `gs://`, `abfss://` / `wasbs://`; `file://` (or a plain path)
/// is the local file system.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default)]
    pub s3: S3Storage,
    #[serde(default)]
    pub gcs: GcsStorage,
    #[serde(default)]
    pub adls: AdlsStorage,
}

/// `[storage.s3]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct S3Storage {
    /// S3-compatible endpoint, e.g. "http://127.0.0.1:9000"; default: `aws.endpoint`, else AWS S3.
    pub endpoint: Option<String>,
    /// Default: `aws.region`, else the credential chain's region.
    pub region: Option<String>,
    /// `http://endpoint/bucket/key` instead of `http://bucket.endpoint/key` (most S3-compatible stores).
    #[serde(default)]
    pub path_style_access: bool,
    /// Static keys instead of the credential chain (use `${ENV}` or a secret reference).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<crate::secrets::Secret>,
    pub session_token: Option<crate::secrets::Secret>,
}

/// `[storage.gcs]` (the iceberg crate's `gcs.*` FileIO properties).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GcsStorage {
    /// Service account key JSON (the content, not a path).
    pub credentials_json: Option<crate::secrets::Secret>,
    /// An OAuth2 access token.
    pub token: Option<crate::secrets::Secret>,
    /// Endpoint, e.g. an emulator's "http://127.0.0.1:4443".
    pub endpoint: Option<String>,
    pub project_id: Option<String>,
}

/// `[storage.adls]` (the iceberg crate's `adls.*` FileIO properties).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AdlsStorage {
    pub account_name: Option<String>,
    pub account_key: Option<crate::secrets::Secret>,
    pub sas_token: Option<crate::secrets::Secret>,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<crate::secrets::Secret>,
    pub authority_host: Option<String>,
}

/// How the loader treats the table's schema.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    /// Add top-level fields that records carry but the table lacks as nullable columns, with a
    /// type inferred from the value. Off by default: the table is the definition of the data.
    #[serde(default)]
    pub auto_evolve: bool,
    /// At most this many columns are added by auto_evolve over a run.
    #[serde(default = "default_max_new_columns")]
    pub max_new_columns: usize,
}

impl Default for SchemaConfig {
    fn default() -> Self {
        SchemaConfig {
            auto_evolve: false,
            max_new_columns: default_max_new_columns(),
        }
    }
}

fn default_max_new_columns() -> usize {
    20
}

/// Table maintenance inside `floe run`, on by default: compaction, snapshot expiry and orphan
/// removal run with the defaults below without any `[maintenance]` section. Each task is turned
/// off with `<task>_every = "off"`, all of them with `enabled = false`. Retention runs only when
/// `retention_column` and `retention_keep` are set (daily unless `retention_every` says).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Run any maintenance at all inside `floe run`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Compact small files (and merge manifests) this often, e.g. "5m"; "off" to never.
    #[serde(default = "default_compact_every", with = "human_duration_or_off")]
    pub compact_every: Option<Duration>,
    /// Only compact partitions written within this period, e.g. "2d".
    #[serde(default, with = "human_duration_opt")]
    pub compact_since: Option<Duration>,
    /// Size of compacted files. Default: `commit.target_file_size`.
    #[serde(default, with = "human_size_opt")]
    pub target_file_size: Option<u64>,
    /// Expire old snapshots this often, e.g. "1d"; "off" to never.
    #[serde(default = "default_expire_every", with = "human_duration_or_off")]
    pub expire_every: Option<Duration>,
    /// Snapshots older than this are expired. Unset: the table's
    /// `history.expire.max-snapshot-age-ms`, else 1 hour. A branch's own retention wins.
    #[serde(default, with = "human_duration_opt")]
    pub expire_older_than: Option<Duration>,
    /// Keep at least this many of each branch's latest snapshots. Unset: the table's
    /// `history.expire.min-snapshots-to-keep`, else 1. A branch's own retention wins.
    #[serde(default)]
    pub retain_last: Option<usize>,
    /// The time column whose old rows retention removes.
    pub retention_column: Option<String>,
    /// Rows older than this are removed, e.g. "30d".
    #[serde(default, with = "human_duration_opt")]
    pub retention_keep: Option<Duration>,
    #[serde(default, with = "human_duration_opt")]
    pub retention_every: Option<Duration>,
    /// Delete unreferenced files this often, e.g. "1d"; "off" to never.
    #[serde(default = "default_orphans_every", with = "human_duration_or_off")]
    pub orphans_every: Option<Duration>,
    #[serde(default = "default_orphans_older_than", with = "human_duration")]
    pub orphans_older_than: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            enabled: true,
            compact_every: default_compact_every(),
            compact_since: None,
            target_file_size: None,
            expire_every: default_expire_every(),
            expire_older_than: None,
            retain_last: None,
            retention_column: None,
            retention_keep: None,
            retention_every: None,
            orphans_every: default_orphans_every(),
            orphans_older_than: default_orphans_older_than(),
        }
    }
}

impl MaintenanceConfig {
    /// Every task off (what `enabled = false` means).
    pub fn off() -> Self {
        MaintenanceConfig {
            enabled: false,
            compact_every: None,
            expire_every: None,
            orphans_every: None,
            ..Default::default()
        }
    }

    /// How often retention runs when it is configured.
    pub fn retention_every(&self) -> Option<Duration> {
        self.retention_keep
            .map(|_| self.retention_every.unwrap_or(Duration::from_secs(86_400)))
    }

    fn validate(&self) -> Result<(), String> {
        for (key, v) in [
            ("compact_every", self.compact_every),
            ("compact_since", self.compact_since),
            ("expire_every", self.expire_every),
            ("retention_keep", self.retention_keep),
            ("retention_every", self.retention_every),
            ("orphans_every", self.orphans_every),
        ] {
            if v.is_some_and(|d| d < Duration::from_secs(1)) {
                return Err(format!("maintenance.{key} must be at least \"1s\" (or \"off\")"));
            }
        }
        if self.retain_last == Some(0) {
            return Err("maintenance.retain_last must be at least 1 (the current snapshot is always kept)".into());
        }
        crate::maintain::orphans::check_age(self.orphans_older_than, "maintenance.orphans_older_than")?;
        if self.target_file_size.is_some_and(|s| s < 1 << 20) {
            return Err("maintenance.target_file_size is below 1MiB; typical values are 64MiB to 512MiB".into());
        }
        match (&self.retention_column, self.retention_keep) {
            (Some(_), None) => Err("maintenance.retention_column is set but retention_keep is not; add e.g. `retention_keep = \"30d\"`".into()),
            (None, Some(_)) => Err("maintenance.retention_keep is set but retention_column is not; name the time column, e.g. `retention_column = \"timestamp\"`".into()),
            (None, None) if self.retention_every.is_some() => {
                Err("maintenance.retention_every is set but retention_column and retention_keep are not".into())
            }
            _ => Ok(()),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_compact_every() -> Option<Duration> {
    Some(Duration::from_secs(600))
}
fn default_expire_every() -> Option<Duration> {
    Some(Duration::from_secs(600))
}
fn default_orphans_every() -> Option<Duration> {
    Some(Duration::from_secs(86_400))
}
fn default_orphans_older_than() -> Duration {
    Duration::from_secs(3 * 86_400)
}

/// Where records that can never be written go. With neither a topic nor a table, the first such
/// record stops the pipeline (everything before it committed, nothing after it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// A Kafka topic: the original key, value, headers and timestamp, plus headers saying where
    /// the record came from and why it failed.
    pub topic: Option<String>,
    /// An Iceberg table (`namespace.table`), created on demand.
    pub table: Option<String>,
    /// Stop instead of dead-lettering when more than this share of the last `window` records
    /// failed (a wrong schema or a broken producer would otherwise drain the topic).
    pub max_ratio: Option<f64>,
    #[serde(default = "default_ratio_window")]
    pub window: usize,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            topic: None,
            table: None,
            max_ratio: None,
            window: default_ratio_window(),
        }
    }
}

fn default_ratio_window() -> usize {
    1000
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("floe-data")
}

/// Where table metadata lives.
#[derive(Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// Catalog kind: `sql` (default: SQLite or PostgreSQL in the JDBC layout), `rest` (an
    /// Iceberg REST catalog) or `glue` (AWS Glue Data Catalog).
    #[serde(default, rename = "type")]
    pub kind: CatalogKind,
    /// SQL: `sqlite:<path>` or `postgresql://user:password@host:port/db`. Default: the SQLite
    /// file `<data_dir>/catalog.db`. REST: the catalog's base URI, `http(s)://host:port[/path]`
    /// (required).
    pub uri: Option<String>,
    /// The catalog name stored in every row (Trino's `iceberg.jdbc-catalog.catalog-name`).
    pub name: Option<String>,
    /// SQL and Glue: root of new tables' locations. Default: `<data_dir>/warehouse`. REST: the
    /// warehouse the server is asked for (`GET /v1/config?warehouse=`); the server chooses locations.
    pub warehouse: Option<String>,
    /// Glue: the Data Catalog's id (an AWS account id). Default: the caller's account.
    pub catalog_id: Option<String>,
    /// Glue: the Glue API endpoint (an emulator, a VPC endpoint). Default: `aws.endpoint`, else AWS.
    pub endpoint: Option<String>,
    /// Glue: the region of the Data Catalog. Default: `aws.region`, else the credential chain's.
    pub region: Option<String>,
    /// REST: a bearer token sent with every request.
    pub token: Option<String>,
    /// REST: OAuth2 client credentials, `client_id:client_secret`, exchanged for a token
    /// (client-credentials grant) at `oauth2_server_uri`.
    pub credential: Option<String>,
    /// REST: the OAuth2 token endpoint. Default: `<uri>/v1/oauth/tokens`.
    pub oauth2_server_uri: Option<String>,
    /// REST: the OAuth2 scope asked for. Default: `catalog`.
    pub scope: Option<String>,
    /// REST: extra HTTP headers sent with every request (e.g. `X-Iceberg-Access-Delegation`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl fmt::Debug for CatalogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "***");
        f.debug_struct("CatalogConfig")
            .field("kind", &self.kind)
            .field("uri", &self.uri.as_deref().map(redact_uri))
            .field("name", &self.name)
            .field("warehouse", &self.warehouse)
            .field("catalog_id", &self.catalog_id)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("token", &redacted(&self.token))
            .field("credential", &redacted(&self.credential))
            .field("oauth2_server_uri", &self.oauth2_server_uri)
            .field("scope", &self.scope)
            // Header values may carry credentials too.
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CatalogKind {
    #[default]
    Sql,
    Rest,
    Glue,
}

impl CatalogConfig {
    /// Checks the keys that depend on the catalog kind.
    fn validate(&self) -> Result<(), String> {
        let rest_only = [
            ("token", self.token.is_some()),
            ("credential", self.credential.is_some()),
            ("oauth2_server_uri", self.oauth2_server_uri.is_some()),
            ("scope", self.scope.is_some()),
            ("headers", !self.headers.is_empty()),
        ];
        let glue_only = [
            ("catalog_id", self.catalog_id.is_some()),
            ("endpoint", self.endpoint.is_some()),
            ("region", self.region.is_some()),
        ];
        if self.kind != CatalogKind::Glue
            && let Some((key, _)) = glue_only.iter().find(|(_, set)| *set)
        {
            return Err(format!(
                "catalog.{key} applies only to an AWS Glue catalog; set `type = \"glue\"` under [catalog] or remove it"
            ));
        }
        match self.kind {
            CatalogKind::Sql | CatalogKind::Glue => {
                if let Some((key, _)) = rest_only.iter().find(|(_, set)| *set) {
                    return Err(format!(
                        "catalog.{key} applies only to a REST catalog; set `type = \"rest\"` under [catalog] or remove it"
                    ));
                }
                if self.kind == CatalogKind::Sql
                    && let Some(uri) = &self.uri
                {
                    CatalogUri::parse(uri).map_err(|m| format!("catalog.uri: {m}"))?;
                }
                if self.kind == CatalogKind::Glue {
                    if self.uri.is_some() {
                        return Err("catalog.uri does not apply to an AWS Glue catalog; an emulator or VPC endpoint \
                                    goes in catalog.endpoint (or aws.endpoint)"
                            .into());
                    }
                    if let Some(e) = &self.endpoint {
                        rest_url("catalog.endpoint", e)?;
                    }
                    if let Some(id) = &self.catalog_id
                        && (id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()))
                    {
                        return Err(format!(
                            "catalog.catalog_id = {id:?}: a Glue Data Catalog id is an AWS account id (12 digits); \
                             leave it out for the caller's account"
                        ));
                    }
                }
            }
            CatalogKind::Rest => {
                let uri = self.uri.as_deref().ok_or(
                    "catalog.uri is required for a REST catalog: the catalog's base URI, e.g. \"http://127.0.0.1:8181\"",
                )?;
                rest_url("catalog.uri", uri)?;
                if let Some(uri) = &self.oauth2_server_uri {
                    rest_url("catalog.oauth2_server_uri", uri)?;
                }
                if self.token.is_some() && self.credential.is_some() {
                    return Err("catalog.token and catalog.credential are both set; use one (a token, or OAuth2 client credentials)".into());
                }
                if let Some(c) = &self.credential
                    && !c.split_once(':').is_some_and(|(id, secret)| !id.is_empty() && !secret.is_empty())
                {
                    return Err("catalog.credential must be `client_id:client_secret` (the value is not shown)".into());
                }
                if self.scope.is_some() && self.credential.is_none() {
                    return Err("catalog.scope is only used with catalog.credential (OAuth2 client credentials)".into());
                }
                for (name, value) in &self.headers {
                    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        return Err(format!("catalog.headers: {name:?} is not a valid HTTP header name"));
                    }
                    if reqwest::header::HeaderValue::from_str(value).is_err() {
                        return Err(format!("catalog.headers.{name}: the value is not a valid HTTP header value"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks that `uri` is an absolute http(s) URL.
fn rest_url(key: &str, uri: &str) -> Result<(), String> {
    match url::Url::parse(uri) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
        Ok(_) => Err(format!("{key} = {:?} must be an http:// or https:// URL", redact_uri(uri))),
        Err(e) => Err(format!("{key} = {:?}: {e}", redact_uri(uri))),
    }
}

/// What to read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(default)]
    pub topics: Vec<String>,
    /// A regular expression: every topic whose whole name matches is read too, including topics
    /// created later (found within `partition_discovery`).
    pub topic_pattern: Option<String>,
    /// Where a partition starts when neither the table's ledger nor the consumer group knows it,
    /// for the partitions present when the pipeline first starts. A partition that appears later
    /// (added to a topic the pipeline already reads) always starts at its beginning.
    #[serde(default)]
    pub start: StartPosition,
    /// What to do when the ledger points outside the partition's log (retention deleted records
    /// floe had not read yet, or the topic was recreated): stop (default) or resume at the log's
    /// start, recording the lost range in the table's history.
    #[serde(default)]
    pub on_data_loss: OnDataLoss,
    /// How often the topics' partitions are looked up, so that partitions added to a topic are
    /// read within this long (librdkafka's `topic.metadata.refresh.interval.ms`).
    #[serde(default = "default_partition_discovery", with = "human_duration")]
    pub partition_discovery: Duration,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            topics: Vec::new(),
            topic_pattern: None,
            start: StartPosition::default(),
            on_data_loss: OnDataLoss::default(),
            partition_discovery: default_partition_discovery(),
        }
    }
}

impl SourceConfig {
    /// What the consumer subscribes to: the topics, and the pattern as librdkafka spells a regex
    /// subscription (a leading `^`; anchored at the end too, so the whole name must match).
    pub fn subscription(&self) -> Vec<String> {
        let mut out = self.topics.clone();
        if let Some(p) = &self.topic_pattern {
            out.push(subscription_regex(p));
        }
        out
    }

    /// Whether `topic` is one this source reads (a listed topic, or one the pattern matches).
    pub fn reads(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| t == topic) || self.pattern().is_some_and(|re| re.is_match(topic))
    }

    /// The compiled pattern (validated when the file was read).
    pub fn pattern(&self) -> Option<regex::Regex> {
        self.topic_pattern.as_deref().and_then(|p| regex::Regex::new(&subscription_regex(p)).ok())
    }
}

/// A topic pattern is a POSIX extended regular expression (what librdkafka matches with); the
/// Perl-style classes and groups that Rust's regex would accept but POSIX does not are refused
/// here rather than silently matching nothing in the consumer.
fn check_topic_pattern(p: &str) -> Result<(), String> {
    if p.trim().is_empty() {
        return Err("the pattern is empty; write a regular expression such as \"orders\\\\..*\"".into());
    }
    for (perl, posix) in [("\\d", "[0-9]"), ("\\w", "[[:alnum:]_]"), ("\\s", "[[:space:]]"), ("(?", "(...)"), ("\\b", "^ or $")] {
        if p.contains(perl) {
            return Err(format!(
                "`{perl}` is not POSIX extended regular expression syntax, which librdkafka matches topics with; \
                 write {posix} instead"
            ));
        }
    }
    regex::Regex::new(&subscription_regex(p)).map_err(|e| format!("not a regular expression: {e}"))?;
    Ok(())
}

/// `p` anchored at both ends, with librdkafka's leading `^` (which marks a regex subscription).
fn subscription_regex(p: &str) -> String {
    let body = p.strip_prefix('^').unwrap_or(p);
    let body = body.strip_suffix('$').unwrap_or(body);
    format!("^({body})$")
}

fn default_partition_discovery() -> Duration {
    Duration::from_secs(30)
}

/// `source.on_data_loss` (after Spark's `failOnDataLoss`, true by default).
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnDataLoss {
    /// Stop with an error naming the partition, the ledger offset and the log's bounds.
    #[default]
    Fail,
    /// Log an ERROR, resume at the log's first offset and record the gap (`floe.gaps`).
    Earliest,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StartPosition {
    #[default]
    Earliest,
    Latest,
}

/// Which table to write.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `namespace.table`, or `table` for the namespace `default`.
    pub name: String,
}

/// When to commit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitConfig {
    /// Freshness: a commit happens at least this often while data is buffered.
    #[serde(default = "default_interval", with = "human_duration")]
    pub interval: Duration,
    /// Memory bound: rows and dead letters buffered plus the batch being committed. A batch is
    /// committed early at half of it; consumption pauses at all of it.
    #[serde(default = "default_max_buffered", with = "human_size")]
    pub max_buffered_bytes: u64,
    /// Data files are rolled over near this size (independent of the commit interval).
    #[serde(default = "default_target_file_size", with = "human_size")]
    pub target_file_size: u64,
    /// Threads that decode a run of records, and that encode a batch's table partitions, at
    /// once. Default: the cores available.
    #[serde(default)]
    pub workers: Option<usize>,
}

impl CommitConfig {
    /// `workers`, or the number of cores this process may use.
    pub fn workers(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
            .max(1)
    }
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            interval: default_interval(),
            max_buffered_bytes: default_max_buffered(),
            target_file_size: default_target_file_size(),
            workers: None,
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}
/// With the consumer's bounded prefetch (source.rs) this keeps the peak RSS of a loader reading a
/// large backlog under 256 MiB (docs/benchmarks.md).
fn default_max_buffered() -> u64 {
    64 << 20
}
fn default_target_file_size() -> u64 {
    128 << 20
}

/// Default catalog name, also what Trino's JDBC catalog must be told.
pub const DEFAULT_CATALOG_NAME: &str = "floe";
/// Namespace used for unqualified table names.
pub const DEFAULT_NAMESPACE: &str = "default";

impl Config {
    /// Reads and validates a configuration file. `env` looks up environment variables for
    /// `${NAME}` interpolation.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::load_with_secrets(path, env, &crate::secrets::Resolved::new())
    }

    /// [`Config::load`] with the secrets the file references already fetched.
    pub fn load_with_secrets(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        secrets: &crate::secrets::Resolved,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse_with_secrets(&text, &path.display().to_string(), env, secrets)?;
        // Relative paths in the file are relative to the file, not to wherever floe was started.
        if config.data_dir.is_relative()
            && let Some(dir) = path.parent()
        {
            let dir = dir.join(&config.data_dir);
            config.set_data_dir(dir);
        }
        Ok(config)
    }

    /// The configuration used when no file is given: everything at its default.
    pub fn defaults() -> Config {
        Config::parse("", "<defaults>", &|_| None).expect("the empty configuration is valid")
    }

    /// Parses configuration text; `origin` names it in errors. A secret reference is an error
    /// here: files with references are read by [`crate::secrets::load_config`].
    pub fn parse(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let empty = crate::secrets::Resolved::new();
        let config = Config::parse_with_secrets(text, origin, env, &empty)?;
        Ok(config)
    }

    /// Parses configuration text with the secrets its references name already fetched.
    pub fn parse_with_secrets(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
        secrets: &crate::secrets::Resolved,
    ) -> Result<Config, ConfigError> {
        let mut value = parse_toml(text, origin)?;
        let mut i = Interpolation { origin, env, secrets: Some(secrets), found: Vec::new(), secret_paths: Vec::new() };
        i.table(&mut value, "")?;
        // `[[pipeline]]` blocks are resolved on the TOML tree (each over the top-level defaults);
        // what remains is the top level.
        let blocks = crate::pipelines::take_blocks(&mut value, origin)?;
        let mut config = Config::deserialize(value.clone()).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            message: with_suggestion(&e.to_string()),
        })?;
        for path in &i.secret_paths {
            if let Some(key) = path.strip_prefix("kafka.") {
                config.kafka.mark_secret(key);
            }
        }
        config.validate(origin)?;
        if let Some(blocks) = blocks {
            config.pipelines = crate::pipelines::resolve(&value, &blocks, origin, &i.secret_paths)?;
        }
        Ok(config)
    }

    /// Deserializes one resolved `[[pipeline]]` block (the top level merged with the block) and
    /// validates it as a whole configuration; `at` names the block in errors.
    pub(crate) fn from_block(value: toml::Table, origin: &str, at: &str) -> Result<Config, ConfigError> {
        let config = Config::deserialize(value).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            message: format!("{at}: {}", with_suggestion(&e.to_string())),
        })?;
        config.validate(origin).map_err(|e| match e {
            ConfigError::Invalid { path, message } => ConfigError::Invalid { path, message: format!("{at}: {message}") },
            other => other,
        })?;
        Ok(config)
    }

    /// Sets the data directory, also of every `[[pipeline]]` block (they share it).
    pub fn set_data_dir(&mut self, dir: PathBuf) {
        for p in &mut self.pipelines {
            p.data_dir = dir.clone();
        }
        self.data_dir = dir;
    }

    /// Every pipeline this configuration runs: its `[[pipeline]]` blocks, or itself.
    pub fn runs(&self) -> Vec<Config> {
        if self.pipelines.is_empty() { vec![self.clone()] } else { self.pipelines.clone() }
    }

    /// The names of the `[[pipeline]]` blocks (empty without blocks).
    pub fn pipeline_names(&self) -> Vec<String> {
        self.pipelines.iter().filter_map(|p| p.pipeline.clone()).collect()
    }

    /// The configuration of one pipeline, as `--pipeline NAME` selects it. Without a name, the
    /// only pipeline; several blocks and no name is an error listing the names.
    pub fn select(&self, name: Option<&str>) -> Result<Config, String> {
        if self.pipelines.is_empty() {
            return match (name, self.pipeline_name()) {
                (None, _) => Ok(self.clone()),
                (Some(n), Some(own)) if n == own => Ok(self.clone()),
                (Some(n), own) => Err(format!(
                    "--pipeline {n:?}: this config has no [[pipeline]] blocks; its one pipeline is {}; drop \
                     --pipeline or give that name",
                    own.map(|o| format!("{o:?}")).unwrap_or_else(|| "unnamed (no `pipeline` or kafka \"group.id\")".into())
                )),
            };
        }
        let names = self.pipeline_names();
        let list = names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ");
        match name {
            Some(n) => self
                .pipelines
                .iter()
                .find(|p| p.pipeline.as_deref() == Some(n))
                .cloned()
                .ok_or_else(|| format!("--pipeline {n:?}: the config has no such [[pipeline]] block; its pipelines are {list}")),
            None if self.pipelines.len() == 1 => Ok(self.pipelines[0].clone()),
            None => Err(format!(
                "the config has {} pipelines ({list}); choose one with --pipeline NAME",
                self.pipelines.len()
            )),
        }
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        };
        if self.commit.interval < Duration::from_millis(100) {
            return Err(invalid(format!(
                "commit.interval = {:?} is too short; use at least \"100ms\" (typical: \"5s\")",
                self.commit.interval
            )));
        }
        if let Some(w) = self.commit.workers
            && !(1..=256).contains(&w)
        {
            return Err(invalid(format!(
                "commit.workers = {w}: use 1 to 256 decoding and encoding threads (default: the cores available)"
            )));
        }
        if self.source.partition_discovery < Duration::from_secs(1) {
            return Err(invalid(format!(
                "source.partition_discovery = {:?} is too short; use at least \"1s\" (default \"30s\")",
                self.source.partition_discovery
            )));
        }
        if self.commit.target_file_size < 1 << 20 {
            return Err(invalid(format!(
                "commit.target_file_size = {} bytes is below 1MiB; typical values are 64MiB to 512MiB",
                self.commit.target_file_size
            )));
        }
        if self.commit.max_buffered_bytes < 1 << 20 {
            return Err(invalid(format!(
                "commit.max_buffered_bytes = {} bytes is below 1MiB",
                self.commit.max_buffered_bytes
            )));
        }
        self.catalog.validate().map_err(invalid)?;
        if let Some(w) = &self.catalog.warehouse {
            crate::storage::check_scheme(&location_uri(w)).map_err(|m| invalid(format!("catalog.warehouse: {m}")))?;
        }
        if let Some(name) = &self.catalog.name
            && name.trim().is_empty()
        {
            return Err(invalid("catalog.name must not be empty".into()));
        }
        if let Some(table) = &self.table {
            TableName::parse(&table.name).map_err(|m| invalid(format!("table.name: {m}")))?;
        }
        for topic in &self.source.topics {
            if topic.is_empty() || topic.chars().any(|c| !(c.is_ascii_alphanumeric() || "._-".contains(c))) {
                return Err(invalid(format!(
                    "source.topics: {topic:?} is not a valid Kafka topic name (letters, digits, '.', '_', '-')"
                )));
            }
        }
        if let Some(p) = &self.source.topic_pattern {
            check_topic_pattern(p).map_err(|m| invalid(format!("source.topic_pattern = {p:?}: {m}")))?;
        }
        self.kafka.validate().map_err(invalid)?;
        let dl = &self.dead_letter;
        if let Some(r) = dl.max_ratio
            && !(r > 0.0 && r <= 1.0)
        {
            return Err(invalid(format!(
                "dead_letter.max_ratio = {r} must be above 0 and at most 1 (e.g. 0.05 for 5%)"
            )));
        }
        if dl.window == 0 {
            return Err(invalid("dead_letter.window must be at least 1".into()));
        }
        self.maintenance.validate().map_err(invalid)?;
        self.decode.validate().map_err(invalid)?;
        self.metadata.validate().map_err(invalid)?;
        for column in self.decode.projections.keys() {
            if let Some(m) = self.metadata.columns().into_iter().find(|m| &m.column == column) {
                return Err(invalid(format!(
                    "decode.projections.{} and {} both fill column {column:?}; a column holds one thing",
                    toml_key(column),
                    MetadataConfig::key_of(&m.field)
                )));
            }
        }
        if let Some(listen) = &self.http.listen {
            parse_listen(listen).map_err(|m| invalid(format!("http.listen: {m}")))?;
        }
        if self.alerts.max_idle.is_some_and(|d| d < Duration::from_secs(1)) {
            return Err(invalid("alerts.max_idle must be at least \"1s\"".into()));
        }
        let has_dead_letters = dl.topic.is_some() || dl.table.is_some();
        for (i, c) in self.checks.iter().enumerate() {
            c.validate(i, has_dead_letters).map_err(invalid)?;
        }
        if let Some(t) = &dl.table {
            TableName::parse(t).map_err(|m| invalid(format!("dead_letter.table: {m}")))?;
        }
        if let Some(topic) = &dl.topic
            && self.source.reads(topic)
        {
            return Err(invalid(format!(
                "dead_letter.topic {topic:?} is also a source topic: dead letters would be read again"
            )));
        }
        Ok(())
    }

    /// The catalog name, defaulted.
    pub fn catalog_name(&self) -> &str {
        self.catalog.name.as_deref().unwrap_or(DEFAULT_CATALOG_NAME)
    }

    /// The catalog database, defaulted to the SQLite file in the data directory.
    pub fn catalog_uri(&self) -> CatalogUri {
        match &self.catalog.uri {
            Some(uri) => CatalogUri::parse(uri).expect("validated when loaded"),
            None => CatalogUri::Sqlite(self.data_dir.join("catalog.db")),
        }
    }

    /// The warehouse root as a URI (`file:///abs/path` for local directories).
    pub fn warehouse(&self) -> String {
        let raw = match &self.catalog.warehouse {
            Some(w) => w.clone(),
            None => self.data_dir.join("warehouse").display().to_string(),
        };
        location_uri(&raw)
    }

    /// The pipeline name: explicit, else the consumer group id.
    pub fn pipeline_name(&self) -> Option<&str> {
        self.pipeline.as_deref().or_else(|| self.kafka.get("group.id"))
    }

    /// The configured table, or an error telling how to configure one.
    pub fn table_name(&self) -> Result<TableName, String> {
        match &self.table {
            Some(t) => TableName::parse(&t.name),
            None => Err("no table configured: add `[table]` with `name = \"namespace.table\"` to the config file".into()),
        }
    }
}

/// `host:port` of `http.listen`, resolved without a DNS lookup (an IP address or `localhost`).
pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    let fix = "write host:port, e.g. \"127.0.0.1:9100\" (\"127.0.0.1:0\" for any free port, \"0.0.0.0:9100\" for all interfaces)";
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        return Ok(a);
    }
    match s.rsplit_once(':') {
        Some(("localhost", port)) => port
            .parse::<u16>()
            .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p)))
            .map_err(|_| format!("{s:?}: port {port:?} is not a number from 0 to 65535; {fix}")),
        _ => Err(format!("{s:?} is not an address; {fix}")),
    }
}

/// Turns a local path into a `file://` URI (made absolute); leaves URIs with a scheme alone.
pub fn location_uri(raw: &str) -> String {
    if raw.contains("://") || crate::storage::looks_like_uri(raw) {
        return raw.trim_end_matches('/').to_owned();
    }
    let path = Path::new(raw);
    let abs = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir().map(|d| d.join(path)).unwrap_or_else(|_| path.to_owned())
    };
    format!("file://{}", normalize(&abs).display())
}

/// Removes `.` and `..` components without touching the file system (the directory may not exist yet).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// A parsed catalog database URI.
#[derive(Clone, PartialEq, Eq)]
pub enum CatalogUri {
    Sqlite(PathBuf),
    Postgres(String),
}

impl CatalogUri {
    pub fn parse(uri: &str) -> Result<CatalogUri, String> {
        if let Some(rest) = uri.strip_prefix("sqlite:") {
            let path = rest.trim_start_matches("//");
            if path.is_empty() {
                return Err(format!("{uri:?} names no file; write sqlite:<path to the database file>"));
            }
            return Ok(CatalogUri::Sqlite(PathBuf::from(path)));
        }
        if uri.starts_with("postgresql://") || uri.starts_with("postgres://") {
            url::Url::parse(uri).map_err(|e| format!("{}: {e}", redact_uri(uri)))?;
            return Ok(CatalogUri::Postgres(uri.to_owned()));
        }
        Err(format!(
            "{:?} is not supported; use sqlite:<path> or postgresql://user:password@host:port/database",
            redact_uri(uri)
        ))
    }

    /// The URI sqlx connects to.
    pub fn connect_string(&self) -> String {
        match self {
            CatalogUri::Sqlite(path) => format!("sqlite://{}?mode=rwc", path.display()),
            CatalogUri::Postgres(uri) => uri.clone(),
        }
    }
}

impl fmt::Display for CatalogUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CatalogUri::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            CatalogUri::Postgres(uri) => f.write_str(&redact_uri(uri)),
        }
    }
}

impl fmt::Debug for CatalogUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Replaces the password in `scheme://user:password@host` with `***`, also in URIs that do not
/// parse (those end up in error messages).
pub fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &uri[authority_start..];
    let Some(at) = rest.rfind('@') else {
        return uri.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &uri[..authority_start],
            &rest[..colon],
            &rest[at..]
        ),
        None => uri.to_owned(),
    }
}

/// A table identifier: namespace parts and a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub namespace: Vec<String>,
    pub name: String,
}

impl TableName {
    /// `ns.table`, `a.b.table` or `table` (namespace `default`).
    pub fn parse(s: &str) -> Result<TableName, String> {
        let parts: Vec<&str> = s.split('.').collect();
        if parts.iter().any(|p| p.trim().is_empty()) {
            return Err(format!("{s:?} is not a table name; write `namespace.table` or `table`"));
        }
        let (name, namespace) = parts.split_last().expect("split yields at least one part");
        let namespace = if namespace.is_empty() {
            vec![DEFAULT_NAMESPACE.to_owned()]
        } else {
            namespace.iter().map(|p| p.to_string()).collect()
        };
        Ok(TableName {
            namespace,
            name: name.to_string(),
        })
    }

    pub fn from_parts(parts: &[String]) -> TableName {
        match parts.split_last() {
            Some((name, ns)) if !ns.is_empty() => TableName {
                namespace: ns.to_vec(),
                name: name.clone(),
            },
            Some((name, _)) => TableName {
                namespace: vec![DEFAULT_NAMESPACE.to_owned()],
                name: name.clone(),
            },
            None => TableName {
                namespace: vec![DEFAULT_NAMESPACE.to_owned()],
                name: String::new(),
            },
        }
    }

    pub fn namespace_str(&self) -> String {
        self.namespace.join(".")
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.namespace_str(), self.name)
    }
}

/// librdkafka client properties as the user wrote them. Printing them redacts secrets.
/// The second field holds the keys whose value came from a secret reference.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct KafkaProperties(BTreeMap<String, KafkaValue>, #[serde(skip)] std::collections::BTreeSet<String>);

/// librdkafka accepts strings; TOML users will also write numbers and booleans.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
enum KafkaValue {
    Str(String),
    Int(i64),
    Bool(bool),
    Float(f64),
}

impl KafkaValue {
    fn as_string(&self) -> String {
        match self {
            KafkaValue::Str(s) => s.clone(),
            KafkaValue::Int(i) => i.to_string(),
            KafkaValue::Bool(b) => b.to_string(),
            KafkaValue::Float(f) => f.to_string(),
        }
    }
}

/// Properties that floe manages itself: setting them would break exactly-once.
const MANAGED_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    (
        "enable.auto.commit",
        "floe commits consumer offsets itself, after each table commit",
    ),
    (
        "enable.auto.offset.store",
        "floe stores offsets itself, after each table commit",
    ),
    (
        "auto.offset.reset",
        "floe never lets the client jump to another offset silently; use `source.start = \"earliest\"` \
         or `\"latest\"` for new partitions and `source.on_data_loss` for a ledger outside the log",
    ),
    (
        "topic.metadata.refresh.interval.ms",
        "use `source.partition_discovery = \"30s\"` (how soon partitions added to a topic are read)",
    ),
];

impl KafkaProperties {
    /// A property's value as a string.
    pub fn get(&self, key: &str) -> Option<&str> {
        match self.0.get(key) {
            Some(KafkaValue::Str(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    /// All properties with their values as librdkafka wants them.
    pub fn iter(&self) -> impl Iterator<Item = (&str, String)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_string()))
    }

    /// Redacts a property whose value came from a secret, whatever its name.
    pub fn mark_secret(&mut self, key: &str) {
        self.1.insert(key.to_owned());
    }

    /// Sets a property (used for command-line overrides such as `--brokers`).
    pub fn set(&mut self, key: &str, value: &str) {
        self.0.insert(key.to_owned(), KafkaValue::Str(value.to_owned()));
    }

    fn validate(&self) -> Result<(), String> {
        for (key, why) in MANAGED_KAFKA_PROPERTIES {
            if self.0.contains_key(*key) {
                return Err(format!("kafka.\"{key}\" cannot be set: {why}"));
            }
        }
        if let Some(level) = self.0.get("isolation.level").map(KafkaValue::as_string)
            && level != "read_committed"
        {
            return Err(format!(
                "kafka.\"isolation.level\" = {level:?} cannot be used: floe reads only committed records \
                 (read_committed), so that records of aborted transactions never reach the table; remove \
                 the property"
            ));
        }
        if self.0.keys().any(|k| k.trim().is_empty()) {
            return Err("kafka: an empty property name".into());
        }
        // Names and values are checked by librdkafka itself when the client is built
        // (`kafka::client_config`), before anything starts.
        Ok(())
    }

    /// Whether a property's value must never be shown.
    pub fn is_secret(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        ["password", "secret", "sasl.jaas.config", "key.pem", "ssl.key", "token", "credential"]
            .iter()
            .any(|s| k.contains(s))
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in &self.0 {
            if KafkaProperties::is_secret(k) || self.1.contains(k) {
                map.entry(k, &"***");
            } else {
                map.entry(k, &v.as_string());
            }
        }
        map.finish()
    }
}

/// What `${...}` is replaced with: environment variables, and (once fetched) secrets.
struct Interpolation<'a> {
    origin: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// None: secret references are collected into `found` and left in place.
    secrets: Option<&'a crate::secrets::Resolved>,
    found: Vec<crate::secrets::SecretRef>,
    /// Keys (dotted paths) whose value received a secret.
    secret_paths: Vec<String>,
}

impl Interpolation<'_> {
    /// Replaces `${NAME}` in every string of the table (recursively).
    fn table(&mut self, table: &mut toml::Table, prefix: &str) -> Result<(), ConfigError> {
        for (key, value) in table.iter_mut() {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            self.value(value, &path)?;
        }
        Ok(())
    }

    fn value(&mut self, value: &mut toml::Value, path: &str) -> Result<(), ConfigError> {
        match value {
            toml::Value::String(s) => {
                *s = self.string(s, path)?;
            }
            toml::Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.value(item, &format!("{path}[{i}]"))?;
                }
            }
            toml::Value::Table(t) => self.table(t, path)?,
            _ => {}
        }
        Ok(())
    }

    /// `${NAME}` becomes the variable's value, `${aws-secretsmanager:id#field}` the secret's;
    /// `$${` stays a literal `${`.
    fn string(&mut self, s: &str, key: &str) -> Result<String, ConfigError> {
        let origin = self.origin;
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix("${") {
                out.push_str("${");
                rest = tail;
            } else if let Some(tail) = after.strip_prefix('{') {
                let end = tail.find('}').ok_or_else(|| ConfigError::Invalid {
                    path: origin.to_owned(),
                    message: format!("`{key}`: unterminated ${{...}} in {s:?}"),
                })?;
                let var = &tail[..end];
                if let Some(inner) = var.strip_prefix(crate::secrets::SECRETS_MANAGER_PREFIX) {
                    let r = crate::secrets::SecretRef::parse(inner).map_err(|m| ConfigError::Invalid {
                        path: origin.to_owned(),
                        message: format!("`{key}`: {m}"),
                    })?;
                    match self.secrets {
                        None => {
                            out.push_str("${");
                            out.push_str(var);
                            out.push('}');
                            self.found.push(r);
                        }
                        Some(resolved) => {
                            let value = resolved.get(&r).ok_or_else(|| ConfigError::Invalid {
                                path: origin.to_owned(),
                                message: format!("`{key}`: {r} was not fetched"),
                            })?;
                            out.push_str(value.expose());
                            self.secret_paths.push(key.to_owned());
                        }
                    }
                    rest = &tail[end + 1..];
                    continue;
                }
                if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(ConfigError::Invalid {
                        path: origin.to_owned(),
                        message: format!(
                            "`{key}`: ${{{var}}} is neither an environment variable name nor a secret reference \
                             (${{{}<secret id>#<field>}})",
                            crate::secrets::SECRETS_MANAGER_PREFIX
                        ),
                    });
                }
                let value = (self.env)(var).ok_or_else(|| ConfigError::MissingEnv {
                    path: origin.to_owned(),
                    key: key.to_owned(),
                    var: var.to_owned(),
                })?;
                out.push_str(&value);
                rest = &tail[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// `${NAME}` becomes the variable's value; `$${` stays a literal `${`.
pub fn interpolate_str(
    s: &str,
    key: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut i = Interpolation { origin, env, secrets: None, found: Vec::new(), secret_paths: Vec::new() };
    i.string(s, key)
}

fn parse_toml(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
        path: origin.to_owned(),
        message: e.to_string(),
    })
}

/// The secret references in a configuration text, each once.
pub fn secret_refs(text: &str, origin: &str) -> Result<Vec<crate::secrets::SecretRef>, ConfigError> {
    let mut value = parse_toml(text, origin)?;
    // Environment variables do not matter here: only where secrets are referenced.
    let any = |_: &str| Some(String::new());
    let mut i = Interpolation { origin, env: &any, secrets: None, found: Vec::new(), secret_paths: Vec::new() };
    i.table(&mut value, "")?;
    let mut found = i.found;
    found.sort();
    found.dedup();
    Ok(found)
}

/// The `[aws]` section alone (environment variables interpolated), which says how to reach
/// Secrets Manager; it may not itself reference secrets.
pub fn aws_section(text: &str, origin: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<AwsConfig, ConfigError> {
    let value = parse_toml(text, origin)?;
    let Some(aws) = value.get("aws") else {
        return Ok(AwsConfig::default());
    };
    let mut aws = aws.clone();
    let mut i = Interpolation { origin, env, secrets: None, found: Vec::new(), secret_paths: Vec::new() };
    i.value(&mut aws, "aws")?;
    if !i.found.is_empty() {
        return Err(ConfigError::Invalid {
            path: origin.to_owned(),
            message: "[aws] says how to reach AWS Secrets Manager, so it cannot reference secrets itself; use ${ENV} there".into(),
        });
    }
    AwsConfig::deserialize(aws).map_err(|e| ConfigError::Syntax {
        path: origin.to_owned(),
        message: with_suggestion(&e.to_string()),
    })
}

/// serde names an unknown field and the valid ones; add the nearest valid one.
fn with_suggestion(message: &str) -> String {
    let Some(start) = message.find("unknown field `") else {
        return message.to_owned();
    };
    let after = &message[start + "unknown field `".len()..];
    let Some(end) = after.find('`') else {
        return message.to_owned();
    };
    let unknown = &after[..end];
    let candidates: Vec<&str> = after[end + 1..]
        .split('`')
        .skip(1)
        .step_by(2)
        .collect();
    let best = candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(unknown, c), *c))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, c)) => format!("{}\ndid you mean `{c}`?", message.trim_end()),
        None => message.to_owned(),
    }
}

/// Durations written as `"5s"`, `"250ms"`, `"2m"`.
mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration ({e}); write e.g. \"5s\", \"500ms\" or \"2m\""
            ))
        })
    }
}

/// A task's period: a duration, or "off" (also "never", "none") for a task that never runs.
mod human_duration_or_off {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        if ["off", "never", "none"].contains(&s.trim().to_ascii_lowercase().as_str()) {
            return Ok(None);
        }
        humantime::parse_duration(&s).map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is neither a duration ({e}) nor \"off\"; write e.g. \"10m\", \"1d\" or \"off\""
            ))
        })
    }
}

/// Optional durations (the field is absent when not configured).
mod human_duration_opt {
    use std::time::Duration;

    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::human_duration::deserialize(d).map(Some)
    }
}

/// Optional sizes.
mod human_size_opt {
    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        super::human_size::deserialize(d).map(Some)
    }
}

/// Sizes written as `"128MiB"`, `"1GB"`, `"4096"`.
mod human_size {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(n),
            Raw::Str(s) => super::parse_size(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"128MiB"`-style sizes (KiB/MiB/GiB binary, KB/MB/GB decimal, plain bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write e.g. \"128MiB\" or \"1GiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "{s:?}: unknown size unit {other:?}; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", &|name| match name {
            "KAFKA_PASSWORD" => Some("hunter2".into()),
            "PGPASS" => Some("s3cret".into()),
            _ => None,
        })
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("config should be rejected").to_string()
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.data_dir, PathBuf::from("floe-data"));
        assert_eq!(c.catalog_name(), "floe");
        assert_eq!(c.commit.interval, Duration::from_secs(5));
        assert_eq!(c.commit.max_buffered_bytes, 64 << 20);
        assert_eq!(c.commit.target_file_size, 128 << 20);
        assert_eq!(c.source.start, StartPosition::Earliest);
        assert_eq!(c.catalog_uri(), CatalogUri::Sqlite(PathBuf::from("floe-data/catalog.db")));
        assert!(c.warehouse().starts_with("file:///"));
        assert!(c.warehouse().ends_with("/floe-data/warehouse"));
        assert!(c.table.is_none());
    }

    #[test]
    fn full_file() {
        let c = parse(
            r#"
            data_dir = "/var/lib/floe"
            pipeline = "events-loader"
            [catalog]
            type = "sql"
            uri = "postgresql://floe:${PGPASS}@127.0.0.1:5432/floe"
            name = "prod"
            warehouse = "/data/warehouse"
            [kafka]
            "bootstrap.servers" = "127.0.0.1:9092"
            "group.id" = "g1"
            "sasl.password" = "${KAFKA_PASSWORD}"
            "fetch.max.bytes" = 1048576
            "check.crcs" = true
            [source]
            topics = ["events", "more.events"]
            start = "latest"
            [table]
            name = "analytics.events"
            [commit]
            interval = "2s"
            max_buffered_bytes = "64MiB"
            target_file_size = 268435456
            "#,
        )
        .unwrap();
        assert_eq!(c.pipeline_name(), Some("events-loader"));
        assert_eq!(
            c.catalog_uri(),
            CatalogUri::Postgres("postgresql://floe:s3cret@127.0.0.1:5432/floe".into())
        );
        assert_eq!(c.catalog_name(), "prod");
        assert_eq!(c.warehouse(), "file:///data/warehouse");
        assert_eq!(c.kafka.get("sasl.password"), Some("hunter2"));
        let props: BTreeMap<_, _> = c.kafka.iter().collect();
        assert_eq!(props["fetch.max.bytes"], "1048576");
        assert_eq!(props["check.crcs"], "true");
        assert_eq!(c.source.topics, vec!["events", "more.events"]);
        assert_eq!(c.source.start, StartPosition::Latest);
        assert_eq!(
            c.table_name().unwrap(),
            TableName {
                namespace: vec!["analytics".into()],
                name: "events".into()
            }
        );
        assert_eq!(c.commit.interval, Duration::from_secs(2));
        assert_eq!(c.commit.max_buffered_bytes, 64 << 20);
        assert_eq!(c.commit.target_file_size, 256 << 20);
    }

    #[test]
    fn pipeline_defaults_to_group_id() {
        let c = parse("[kafka]\n\"group.id\" = \"grp\"\n").unwrap();
        assert_eq!(c.pipeline_name(), Some("grp"));
    }

    #[test]
    fn secrets_never_print() {
        let c = parse(
            r#"
            [catalog]
            uri = "postgresql://floe:${PGPASS}@127.0.0.1:5432/floe"
            [kafka]
            "sasl.password" = "${KAFKA_PASSWORD}"
            "sasl.username" = "alice"
            "#,
        )
        .unwrap();
        let shown = format!("{c:?} {}", c.catalog_uri());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }

    #[test]
    fn unknown_key_suggests_nearest() {
        let e = err("[commit]\nintervall = \"5s\"\n");
        assert!(e.contains("unknown field `intervall`"), "{e}");
        assert!(e.contains("did you mean `interval`?"), "{e}");
        assert!(e.contains("in `commit`"), "{e}");

        let e = err("[catalgo]\nname = \"x\"\n");
        assert!(e.contains("did you mean `catalog`?"), "{e}");

        let e = err("[table]\nnmae = \"x\"\n");
        assert!(e.contains("did you mean `name`?"), "{e}");
    }

    #[test]
    fn unknown_key_far_from_everything_gets_the_list() {
        let e = err("zzzzqqq = 1\n");
        assert!(e.contains("unknown field `zzzzqqq`"), "{e}");
        assert!(e.contains("expected one of"), "{e}");
        assert!(!e.contains("did you mean"), "{e}");
    }

    #[test]
    fn bad_duration() {
        let e = err("[commit]\ninterval = \"5 parsecs\"\n");
        assert!(e.contains("\"5 parsecs\" is not a duration"), "{e}");
        assert!(e.contains("in `commit.interval`"), "{e}");
        let e = err("[commit]\ninterval = \"10ms\"\n");
        assert!(e.contains("too short"), "{e}");
    }

    #[test]
    fn bad_size() {
        let e = err("[commit]\ntarget_file_size = \"12 parsecs\"\n");
        assert!(e.contains("unknown size unit"), "{e}");
        let e = err("[commit]\ntarget_file_size = \"1KiB\"\n");
        assert!(e.contains("below 1MiB"), "{e}");
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("5MB").unwrap(), 5_000_000);
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn bad_enum_values() {
        let e = err("[source]\nstart = \"beginning\"\n");
        assert!(e.contains("beginning"), "{e}");
        assert!(e.contains("earliest"), "{e}");
        let e = err("[catalog]\ntype = \"hive\"\n");
        assert!(e.contains("hive"), "{e}");
    }

    #[test]
    fn missing_env_var_names_key_and_variable() {
        let e = err("[kafka]\n\"sasl.password\" = \"${NOPE}\"\n");
        assert!(e.contains("NOPE"), "{e}");
        assert!(e.contains("kafka.sasl.password"), "{e}");
    }

    #[test]
    fn secret_references() {
        let text = r#"
            [aws]
            region = "eu-west-1"
            endpoint = "${AWS_EP}"
            [kafka]
            "sasl.username" = "${aws-secretsmanager:prod/kafka#apiKey}"
            "sasl.password" = "${aws-secretsmanager:prod/kafka#apiSecret}"
            "client.id" = "floe-${aws-secretsmanager:other}"
        "#;
        let refs = secret_refs(text, "t").unwrap();
        let names: Vec<String> = refs.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            names,
            ["secret \"other\"", "secret \"prod/kafka\" field \"apiKey\"", "secret \"prod/kafka\" field \"apiSecret\""]
        );
        let aws = aws_section(text, "t", &|n| (n == "AWS_EP").then(|| "http://127.0.0.1:1".into())).unwrap();
        assert_eq!(aws.endpoint.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(aws.region.as_deref(), Some("eu-west-1"));
        // Without the values, a reference is an error (the binary fetches them first).
        assert!(Config::parse(text, "t", &|_| Some("x".into())).is_err());
        let mut resolved = crate::secrets::Resolved::new();
        for (r, v) in refs.iter().zip(["o", "bob", "bob-secret"]) {
            resolved.insert(r.clone(), crate::secrets::Secret::new(v));
        }
        let c = Config::parse_with_secrets(text, "t", &|_| Some("x".into()), &resolved).unwrap();
        assert_eq!(c.kafka.get("sasl.username"), Some("bob"));
        assert_eq!(c.kafka.get("client.id"), Some("floe-o"));
        let shown = format!("{c:?}");
        assert!(!shown.contains("bob") && !shown.contains("floe-o"), "{shown}");
        let e = aws_section("[aws]\nprofile = \"${aws-secretsmanager:x}\"\n", "t", &|_| None).unwrap_err();
        assert!(e.to_string().contains("cannot reference secrets"), "{e}");
        let e = secret_refs("[kafka]\n\"a\" = \"${aws-secretsmanager:#f}\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("names no secret"), "{e}");
    }

    #[test]
    fn storage_sections_and_locations() {
        let c = parse(
            "[catalog]\nwarehouse = \"s3://bucket/w/\"\n[storage.s3]\nendpoint = \"http://127.0.0.1:9000\"\n\
             path_style_access = true\nsecret_access_key = \"${KAFKA_PASSWORD}\"\n",
        )
        .unwrap();
        assert_eq!(c.warehouse(), "s3://bucket/w");
        assert!(c.storage.s3.path_style_access);
        assert!(!format!("{c:?}").contains("hunter2"));
        let e = err("[catalog]\nwarehouse = \"s3:/bucket/w\"\n");
        assert!(e.contains("catalog.warehouse") && e.contains("s3://<bucket>"), "{e}");
        let e = err("[catalog]\nwarehouse = \"hdfs://nn/w\"\n");
        assert!(e.contains("\"hdfs\""), "{e}");
        assert!(err("[storage.s3]\npath_style = true\n").contains("path_style_access"));
    }

    #[test]
    fn interpolation_rules() {
        let env = |n: &str| (n == "A").then(|| "1".to_owned());
        assert_eq!(interpolate_str("x${A}y${A}", "k", "o", &env).unwrap(), "x1y1");
        assert_eq!(interpolate_str("$${A}", "k", "o", &env).unwrap(), "${A}");
        assert_eq!(interpolate_str("cost $5", "k", "o", &env).unwrap(), "cost $5");
        assert!(interpolate_str("${A", "k", "o", &env).is_err());
        assert!(interpolate_str("${A-B}", "k", "o", &env).is_err());
    }

    #[test]
    fn managed_kafka_properties_are_refused() {
        let e = err("[kafka]\n\"enable.auto.commit\" = true\n");
        assert!(e.contains("enable.auto.commit"), "{e}");
        assert!(e.contains("floe commits consumer offsets itself"), "{e}");
        let e = err("[kafka]\n\"auto.offset.reset\" = \"earliest\"\n");
        assert!(e.contains("source.start"), "{e}");
        assert!(e.contains("source.on_data_loss"), "{e}");
        let e = err("[kafka]\n\"isolation.level\" = \"read_uncommitted\"\n");
        assert!(e.contains("read_committed") && e.contains("aborted transactions"), "{e}");
        let e = err("[kafka]\n\"topic.metadata.refresh.interval.ms\" = 1000\n");
        assert!(e.contains("source.partition_discovery"), "{e}");
        // Saying what floe does anyway is allowed.
        let c = Config::parse("[kafka]\n\"isolation.level\" = \"read_committed\"\n", "t", &|_| None).unwrap();
        assert_eq!(c.kafka.get("isolation.level"), Some("read_committed"));
    }

    #[test]
    fn source_data_loss_and_discovery() {
        let c = Config::defaults();
        assert_eq!(c.source.on_data_loss, OnDataLoss::Fail);
        assert_eq!(c.source.partition_discovery, Duration::from_secs(30));
        let c = Config::parse(
            "[source]\non_data_loss = \"earliest\"\npartition_discovery = \"5s\"\n",
            "t",
            &|_| None,
        )
        .unwrap();
        assert_eq!(c.source.on_data_loss, OnDataLoss::Earliest);
        assert_eq!(c.source.partition_discovery, Duration::from_secs(5));
        let e = err("[source]\non_data_loss = \"latest\"\n");
        assert!(e.contains("on_data_loss") || e.contains("fail"), "{e}");
        let e = err("[source]\npartition_discovery = \"10ms\"\n");
        assert!(e.contains("partition_discovery"), "{e}");
    }

    #[test]
    fn rest_catalog_keys() {
        let c = parse(
            "[catalog]\ntype = \"rest\"\nuri = \"http://127.0.0.1:8181\"\ncredential = \"id:s3cret\"\n\
             scope = \"catalog\"\nheaders = { \"X-Tenant\" = \"t1\" }\n",
        )
        .unwrap();
        assert_eq!(c.catalog.kind, CatalogKind::Rest);
        assert_eq!(c.catalog.headers.get("X-Tenant").map(String::as_str), Some("t1"));
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("t1"), "a secret leaked: {shown}");
        let e = err("[catalog]\ntype = \"rest\"\n");
        assert!(e.contains("catalog.uri is required"), "{e}");
        let e = err("[catalog]\ntype = \"rest\"\nuri = \"sqlite:x.db\"\n");
        assert!(e.contains("http://"), "{e}");
        let e = err("[catalog]\ntype = \"rest\"\nuri = \"http://h\"\ntoken = \"t\"\ncredential = \"a:b\"\n");
        assert!(e.contains("use one"), "{e}");
        let e = err("[catalog]\ntype = \"rest\"\nuri = \"http://h\"\ncredential = \"nosecret\"\n");
        assert!(e.contains("client_id:client_secret") && !e.contains("nosecret"), "{e}");
        let e = err("[catalog]\ntoken = \"t\"\n");
        assert!(e.contains("catalog.token applies only to a REST catalog"), "{e}");
    }

    #[test]
    fn glue_catalog_keys() {
        let c = parse(
            "[catalog]\ntype = \"glue\"\nwarehouse = \"s3://lake/w\"\nregion = \"eu-west-1\"\n\
             catalog_id = \"123456789012\"\nendpoint = \"http://127.0.0.1:5000\"\n",
        )
        .unwrap();
        assert_eq!(c.catalog.kind, CatalogKind::Glue);
        assert_eq!(c.catalog.catalog_id.as_deref(), Some("123456789012"));
        assert_eq!(c.warehouse(), "s3://lake/w");
        let e = err("[catalog]\ntype = \"glue\"\nuri = \"http://h\"\n");
        assert!(e.contains("catalog.uri does not apply") && e.contains("catalog.endpoint"), "{e}");
        let e = err("[catalog]\ntype = \"glue\"\ncatalog_id = \"prod\"\n");
        assert!(e.contains("AWS account id"), "{e}");
        let e = err("[catalog]\ntype = \"glue\"\nendpoint = \"localhost:5000\"\n");
        assert!(e.contains("catalog.endpoint"), "{e}");
        let e = err("[catalog]\nregion = \"eu-west-1\"\n");
        assert!(e.contains("catalog.region applies only to an AWS Glue catalog"), "{e}");
        let e = err("[catalog]\ntype = \"glue\"\ntoken = \"t\"\n");
        assert!(e.contains("catalog.token applies only to a REST catalog"), "{e}");
    }

    #[test]
    fn bad_catalog_uri_and_table_name() {
        let e = err("[catalog]\nuri = \"mysql://x\"\n");
        assert!(e.contains("catalog.uri"), "{e}");
        assert!(e.contains("postgresql://"), "{e}");
        let e = err("[catalog]\nuri = \"postgresql://u:pw@[bad/db\"\n");
        assert!(!e.contains(":pw@"), "password leaked: {e}");
        let e = err("[table]\nname = \"a..b\"\n");
        assert!(e.contains("table.name"), "{e}");
        let e = err("[source]\ntopics = [\"bad topic\"]\n");
        assert!(e.contains("not a valid Kafka topic name"), "{e}");
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_uri("postgresql://u:pw@h:1/db"), "postgresql://u:***@h:1/db");
        assert_eq!(redact_uri("postgresql://u@h/db"), "postgresql://u@h/db");
        assert_eq!(redact_uri("postgresql://u:p@w@[bad"), "postgresql://u:***@[bad");
        assert_eq!(redact_uri("sqlite:x.db"), "sqlite:x.db");
    }

    #[test]
    fn table_names() {
        assert_eq!(TableName::parse("t").unwrap().to_string(), "default.t");
        assert_eq!(TableName::parse("a.b.t").unwrap().namespace, vec!["a", "b"]);
        assert!(TableName::parse("").is_err());
        assert!(TableName::parse("a.").is_err());
    }

    #[test]
    fn syntax_error_has_position() {
        let e = err("[commit\ninterval = 1\n");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn relative_data_dir_is_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("floe.toml");
        std::fs::write(&file, "data_dir = \"data\"\n").unwrap();
        let c = Config::load(&file, &|_| None).unwrap();
        assert_eq!(c.data_dir, dir.path().join("data"));
        let e = Config::load(&dir.path().join("missing.toml"), &|_| None).unwrap_err();
        assert!(e.to_string().contains("missing.toml"), "{e}");
    }

    #[test]
    fn maintenance_section() {
        let c = parse(
            "[maintenance]\ncompact_every = \"5m\"\ncompact_since = \"2d\"\nexpire_every = \"1d\"\n\
             retain_last = 3\nretention_column = \"timestamp\"\nretention_keep = \"30d\"\n",
        )
        .unwrap();
        let m = &c.maintenance;
        assert_eq!(m.compact_every, Some(Duration::from_secs(300)));
        assert_eq!(m.compact_since, Some(Duration::from_secs(2 * 86_400)));
        assert_eq!(m.retain_last, Some(3));
        assert_eq!(m.expire_older_than, None, "unset: the table's history.expire.max-snapshot-age-ms decides");
        assert_eq!(m.retention_every(), Some(Duration::from_secs(86_400)));
        assert_eq!(m.orphans_every, Some(Duration::from_secs(86_400)), "what is not mentioned keeps its default");
        // Healthy by default: compaction, expiry and orphan removal without a [maintenance] section.
        let d = Config::defaults().maintenance;
        assert!(d.enabled);
        assert_eq!(d.compact_every, Some(Duration::from_secs(600)));
        assert_eq!(d.expire_every, Some(Duration::from_secs(600)));
        assert_eq!(d.orphans_every, Some(Duration::from_secs(86_400)));
        assert_eq!(d.retention_every(), None);
        let off = parse("[maintenance]\ncompact_every = \"off\"\norphans_every = \"never\"\n").unwrap().maintenance;
        assert_eq!((off.compact_every, off.expire_every, off.orphans_every), (None, Some(Duration::from_secs(600)), None));
        assert!(!parse("[maintenance]\nenabled = false\n").unwrap().maintenance.enabled);
        assert!(err("[maintenance]\ncompact_every = \"sometimes\"").contains("nor \"off\""));
        assert!(err("[maintenance]\nretention_keep = \"30d\"").contains("retention_column"));
        assert!(err("[maintenance]\nretention_column = \"ts\"").contains("retention_keep"));
        assert!(err("[maintenance]\norphans_older_than = \"5m\"").contains("too short"));
        assert!(err("[maintenance]\nretain_last = 0").contains("retain_last"));
        assert!(err("[maintenance]\ncompact_evry = \"5m\"").contains("compact_every"));
    }

    #[test]
    fn decode_and_metadata_sections() {
        let c = parse(
            r#"
            [decode]
            unnest = "/data"
            field_case = "camelCase"
            case_insensitive = true
            timestamp_zone = "Europe/Berlin"
            epoch_unit = "seconds"
            [decode.projections]
            event_id = "/id"
            [metadata]
            key = "kafka_key"
            topic = "kafka_topic"
            partition = "kafka_partition"
            offset = "kafka_offset"
            timestamp = "kafka_timestamp"
            timestamp_type = "kafka_timestamp_type"
            [metadata.headers]
            traceparent = "trace_parent"
            "#,
        )
        .unwrap();
        let o = c.decode.options(&c.metadata).unwrap();
        assert_eq!(o.unnest.as_deref(), Some("/data"));
        assert_eq!(o.projections, vec![crate::decode::Projection { column: "event_id".into(), pointer: "/id".into() }]);
        assert_eq!(o.field_case, Some(crate::decode::FieldCase::LowerCamel));
        assert!(o.case_insensitive);
        assert_eq!(o.timestamp_zone, Some(chrono_tz::Europe::Berlin));
        assert_eq!(o.epoch_unit, crate::decode::EpochUnit::Seconds);
        let cols: Vec<(String, crate::decode::MetadataField)> =
            o.metadata.into_iter().map(|m| (m.column, m.field)).collect();
        use crate::decode::MetadataField as F;
        assert_eq!(
            cols,
            vec![
                ("kafka_key".into(), F::Key),
                ("kafka_topic".into(), F::Topic),
                ("kafka_partition".into(), F::Partition),
                ("kafka_offset".into(), F::Offset),
                ("kafka_timestamp".into(), F::Timestamp),
                ("kafka_timestamp_type".into(), F::TimestampType),
                ("trace_parent".into(), F::Header("traceparent".into())),
            ]
        );
        // Defaults: no reshaping, UTC, milliseconds.
        let d = Config::defaults().decode.options(&MetadataConfig::default()).unwrap();
        assert!(d.unnest.is_none() && d.projections.is_empty() && d.field_case.is_none() && d.metadata.is_empty());
        assert_eq!(d.timestamp_zone, None);
        assert_eq!(d.epoch_unit, crate::decode::EpochUnit::Millis);
        assert_eq!(parse("[decode]\nfield_case = \"snake_case\"\n").unwrap().decode.options(&MetadataConfig::default()).unwrap().field_case, None);
    }

    #[test]
    fn bad_decode_and_metadata_values_name_the_key() {
        let e = err("[decode]\nfield_case = \"camel\"\n");
        assert!(e.contains("decode.field_case = \"camel\"") && e.contains("camelCase, PascalCase"), "{e}");
        let e = err("[decode]\ntimestamp_zone = \"Europe/Berlinn\"\n");
        assert!(e.contains("decode.timestamp_zone = \"Europe/Berlinn\" is not a time zone"), "{e}");
        let e = err("[decode]\nepoch_unit = \"fortnights\"\n");
        assert!(e.contains("decode.epoch_unit = \"fortnights\"") && e.contains("millis"), "{e}");
        let e = err("[decode]\nunnest = \"data\"\n");
        assert!(e.contains("decode.unnest = \"data\" is not a JSON pointer") && e.contains("\"/data\""), "{e}");
        let e = err("[decode.projections]\nevent_id = \"id\"\n");
        assert!(e.contains("decode.projections.event_id = \"id\""), "{e}");
        let e = err("[decode]\nunest = \"/data\"\n");
        assert!(e.contains("did you mean `unnest`?"), "{e}");
        let e = err("[metadata]\nkey = \"k\"\noffset = \"k\"\n");
        assert!(e.contains("metadata.key and metadata.offset both go to column \"k\""), "{e}");
        let e = err("[metadata]\ntopik = \"t\"\n");
        assert!(e.contains("did you mean `topic`?"), "{e}");
        let e = err("[metadata]\nkey = \"k\"\n[decode.projections]\nk = \"/k\"\n");
        assert!(e.contains("decode.projections.k and metadata.key both fill column \"k\""), "{e}");
        let e = err("[metadata.headers]\n\"trace.id\" = \"\"\n");
        assert!(e.contains("metadata.headers.\"trace.id\" is empty"), "{e}");
    }

    #[test]
    fn http_alerts_and_checks() {
        let c = parse("").unwrap();
        assert!(c.http.listen.is_none(), "the listener is off by default");
        assert!(c.checks.is_empty() && c.alerts.max_idle.is_none());
        let c = parse("[http]\nlisten = \"127.0.0.1:0\"\n[alerts]\nmax_idle = \"5m\"\n").unwrap();
        assert_eq!(c.alerts.max_idle, Some(Duration::from_secs(300)));
        assert_eq!(parse_listen("localhost:9100").unwrap().port(), 9100);
        assert!(err("[http]\nlisten = \"9100\"").contains("http.listen: \"9100\" is not an address; write host:port"));
        assert!(err("[alerts]\nmax_idle = \"10ms\"").contains("alerts.max_idle"));
        let c = parse("[[checks]]\ncolumn = \"a\"\ncheck = \"range\"\nmin = 0\n").unwrap();
        assert_eq!((c.checks[0].name(), c.checks[0].action), ("a:range".to_owned(), CheckAction::Warn));
        for (text, needle) in [
            ("column = \"a\"\ncheck = \"regex\"\npattern = \"([a\"", "checks[0] (a:regex): pattern \"([a\" does not compile"),
            ("column = \"a\"\ncheck = \"range\"", "give `min`, `max` or both"),
            ("column = \"a\"\ncheck = \"range\"\nmin = 5\nmax = 1", "min = 5 is above max = 1"),
            ("column = \"a\"\ncheck = \"not_null\"\npattern = \"x\"", "`pattern` does not apply to check = \"not_null\""),
            ("column = \"a\"\ncheck = \"accepted\"\nvalues = []", "`values` is empty"),
            ("column = \"a\"\ncheck = \"accepted\"\nvalues = [1.5]", "neither a string nor an integer"),
            ("column = \"a\"\ncheck = \"max_null_rate\"\nmax_rate = 2.0", "between 0 and 1"),
            ("column = \"a\"\ncheck = \"not_null\"\naction = \"dead_letter\"", "needs a dead-letter destination"),
            ("column = \"a\"\ncheck = \"sometimes\"", "unknown variant"),
        ] {
            let e = err(&format!("[[checks]]\n{text}\n"));
            assert!(e.contains(needle), "{needle:?} missing from {e}");
        }
        let rate = "[dead_letter]\ntopic = \"dlq\"\n[[checks]]\ncolumn = \"a\"\ncheck = \"max_null_rate\"\nmax_rate = 0.1\naction = \"dead_letter\"\n";
        assert!(err(rate).contains("does not apply to a rate"));
    }
}
