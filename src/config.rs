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
    pub pipeline: Option<String>,
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
    /// Object storage settings (S3, GCS, ADLS) for table files.
    #[serde(default)]
    pub storage: StorageConfig,
    /// AWS settings shared by S3, Glue and Secrets Manager.
    #[serde(default)]
    pub aws: AwsConfig,
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
    /// Catalog kind; only the SQL (JDBC-layout) catalog exists so far.
    #[serde(default, rename = "type")]
    pub kind: CatalogKind,
    /// `sqlite:<path>` or `postgresql://user:password@host:port/db`. Default: the SQLite file
    /// `<data_dir>/catalog.db`.
    pub uri: Option<String>,
    /// The catalog name stored in every row (Trino's `iceberg.jdbc-catalog.catalog-name`).
    pub name: Option<String>,
    /// Root of new tables' locations. Default: `<data_dir>/warehouse`.
    pub warehouse: Option<String>,
}

impl fmt::Debug for CatalogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalogConfig")
            .field("kind", &self.kind)
            .field("uri", &self.uri.as_deref().map(redact_uri))
            .field("name", &self.name)
            .field("warehouse", &self.warehouse)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CatalogKind {
    #[default]
    Sql,
}

/// What to read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(default)]
    pub topics: Vec<String>,
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
            start: StartPosition::default(),
            on_data_loss: OnDataLoss::default(),
            partition_discovery: default_partition_discovery(),
        }
    }
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
    /// Memory bound: a commit happens early once this much is buffered.
    #[serde(default = "default_max_buffered", with = "human_size")]
    pub max_buffered_bytes: u64,
    /// Data files are rolled over near this size (independent of the commit interval).
    #[serde(default = "default_target_file_size", with = "human_size")]
    pub target_file_size: u64,
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            interval: default_interval(),
            max_buffered_bytes: default_max_buffered(),
            target_file_size: default_target_file_size(),
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_max_buffered() -> u64 {
    256 << 20
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
            config.data_dir = dir.join(&config.data_dir);
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
        let mut config = Config::deserialize(value).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            message: with_suggestion(&e.to_string()),
        })?;
        for path in &i.secret_paths {
            if let Some(key) = path.strip_prefix("kafka.") {
                config.kafka.mark_secret(key);
            }
        }
        config.validate(origin)?;
        Ok(config)
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
        if let Some(uri) = &self.catalog.uri {
            CatalogUri::parse(uri).map_err(|m| invalid(format!("catalog.uri: {m}")))?;
        }
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
        if let Some(t) = &dl.table {
            TableName::parse(t).map_err(|m| invalid(format!("dead_letter.table: {m}")))?;
        }
        if let Some(topic) = &dl.topic
            && self.source.topics.contains(topic)
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
        assert_eq!(c.commit.max_buffered_bytes, 256 << 20);
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
}
