//! Object storage: the FileIO through which every table file (data, manifests, metadata, dead
//! letters) is read and written, chosen per location by its scheme (`file://`, `s3://`, `gs://`,
//! `abfss://`), and the checks that refuse a location floe cannot write before anything is
//! written.
//!
//! This is the iceberg crate's FileIO over OpenDAL, not a storage layer of floe's own. S3
//! credentials come from `aws-config`'s standard chain (the same one Secrets Manager and Glue
//! use), handed to OpenDAL through the crate's custom credential loader, unless static keys are
//! configured. Listing (for orphan removal) is the one thing FileIO cannot do; it uses an OpenDAL
//! operator built from the same settings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use iceberg::io::{FileIO, FileIOBuilder};
use iceberg_storage_opendal::{AwsCredential, CustomAwsCredentialLoader, OpenDalResolvingStorageFactory, ProvideCredential};

use crate::config::{Config, S3Storage, StorageConfig};

/// Why a location cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{location}: {message}")]
    Unsupported { location: String, message: String },
    /// The store answered, and the answer will not change by retrying (no bucket, no permission).
    #[error("cannot write to {location}: {message}")]
    Refused { location: String, message: String },
    /// The store could not be reached or failed; retrying may help.
    #[error("cannot reach the storage of {location}: {message}")]
    Unavailable { location: String, message: String },
}

/// Schemes the FileIO is built with, and what they are.
const SCHEMES: &[(&str, &str)] = &[
    ("file", "local file system"),
    ("s3", "Amazon S3 or an S3-compatible store"),
    ("s3a", "Amazon S3 (Hadoop name)"),
    ("s3n", "Amazon S3 (Hadoop name)"),
    ("gs", "Google Cloud Storage"),
    ("gcs", "Google Cloud Storage"),
    ("abfss", "Azure Data Lake Storage Gen2"),
    ("abfs", "Azure Data Lake Storage Gen2"),
    ("wasbs", "Azure Blob Storage"),
    ("wasb", "Azure Blob Storage"),
];

/// Whether `raw` starts with a URI scheme (`s3:`, `gs:`, ...), with or without `//`. A single
/// letter followed by ':' is not taken as a scheme.
pub fn looks_like_uri(raw: &str) -> bool {
    match raw.find(':') {
        Some(i) if i >= 2 => {
            let scheme = &raw[..i];
            scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        }
        _ => false,
    }
}

/// Refuses a location whose scheme floe has no storage for, or that is not a well-formed URI
/// (`s3:/bucket` instead of `s3://bucket`, a bucket missing).
pub fn check_scheme(location: &str) -> Result<(), String> {
    let url = url::Url::parse(location).map_err(|e| format!("{location:?} is not a valid location URI: {e}"))?;
    let scheme = url.scheme();
    if !SCHEMES.iter().any(|(s, _)| *s == scheme) {
        let known: Vec<&str> = SCHEMES.iter().map(|(s, _)| *s).collect();
        return Err(format!(
            "{location:?}: floe has no storage for the scheme \"{scheme}\"; use one of {}:// (or a local path)",
            known.join("://, ")
        ));
    }
    if scheme != "file" {
        if !location[scheme.len() + 1..].starts_with("//") {
            return Err(format!("{location:?} is not a valid location: write {scheme}://<bucket>/<prefix>"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{location:?} names no bucket: write {scheme}://<bucket>/<prefix>"));
        }
    }
    Ok(())
}

/// The storage of a catalog's tables: the FileIO, plus what listing needs.
#[derive(Clone)]
pub struct Storage {
    file_io: FileIO,
    s3: Option<S3Settings>,
}

/// S3 settings resolved once (endpoint, region, path style, credentials).
#[derive(Clone)]
struct S3Settings {
    endpoint: Option<String>,
    region: String,
    path_style: bool,
    credentials: AwsChain,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("s3_endpoint", &self.s3.as_ref().map(|s| s.endpoint.clone()))
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// Local files only (tests, and catalogs whose tables are all local).
    ///
    /// Through the iceberg crate's own local file system, not OpenDAL's: OpenDAL retries an
    /// operation that fails with "not a directory" as temporary (for seconds, with backoff), which
    /// a failed local write's clean-up then waits out on every attempt.
    pub fn local() -> Storage {
        Storage { file_io: FileIOBuilder::new(Arc::new(iceberg::io::LocalFsStorageFactory)).build(), s3: None }
    }

    /// Storage for every scheme, with the configuration's `[storage]` and `[aws]` settings.
    pub async fn from_config(config: &Config) -> Storage {
        let warehouse = config.warehouse();
        if crate::maintain::local_path(&warehouse).is_some() && !object_store_configured(config) {
            // A local warehouse and no object-store settings: tables are local files.
            return Storage::local();
        }
        let uses_s3 = ["s3://", "s3a://", "s3n://"].iter().any(|p| warehouse.starts_with(p));
        Storage::new(&config.storage, &config.aws, uses_s3).await
    }

    /// `uses_s3`: the warehouse is on S3, so the region is resolved now (through the AWS chain if
    /// it is not configured). Otherwise nothing AWS is loaded until a table on S3 is touched: a
    /// local-only setup never waits for the chain's instance-metadata lookups.
    pub async fn new(storage: &StorageConfig, aws: &crate::config::AwsConfig, uses_s3: bool) -> Storage {
        let s3 = &storage.s3;
        let endpoint = s3.endpoint.clone().or_else(|| aws.endpoint.clone());
        let mut region = s3.region.clone().or_else(|| aws.region.clone());
        if region.is_none() && uses_s3 {
            region = crate::aws::sdk_config(aws).await.region().map(|r| r.to_string());
        }
        let region = region.unwrap_or_else(|| "us-east-1".to_owned());
        let credentials = AwsChain::new(s3, aws);
        let mut props: HashMap<String, String> = HashMap::new();
        if let Some(e) = &endpoint {
            props.insert(iceberg::io::S3_ENDPOINT.into(), e.clone());
        }
        props.insert(iceberg::io::S3_REGION.into(), region.clone());
        props.insert(iceberg::io::S3_PATH_STYLE_ACCESS.into(), s3.path_style_access.to_string());
        // Only the loader below supplies credentials: OpenDAL's own chain would read the
        // environment again on every operation.
        props.insert(iceberg::io::S3_DISABLE_CONFIG_LOAD.into(), "true".into());
        props.insert(iceberg::io::S3_DISABLE_EC2_METADATA.into(), "true".into());
        let g = &storage.gcs;
        let mut put = |key: &str, value: Option<&str>| {
            if let Some(v) = value {
                props.insert(key.to_owned(), v.to_owned());
            }
        };
        put(iceberg::io::GCS_CREDENTIALS_JSON, g.credentials_json.as_ref().map(|s| s.expose()));
        put(iceberg::io::GCS_TOKEN, g.token.as_ref().map(|s| s.expose()));
        put(iceberg::io::GCS_SERVICE_PATH, g.endpoint.as_deref());
        put(iceberg::io::GCS_PROJECT_ID, g.project_id.as_deref());
        let a = &storage.adls;
        put(iceberg::io::ADLS_ACCOUNT_NAME, a.account_name.as_deref());
        put(iceberg::io::ADLS_ACCOUNT_KEY, a.account_key.as_ref().map(|s| s.expose()));
        put(iceberg::io::ADLS_SAS_TOKEN, a.sas_token.as_ref().map(|s| s.expose()));
        put(iceberg::io::ADLS_TENANT_ID, a.tenant_id.as_deref());
        put(iceberg::io::ADLS_CLIENT_ID, a.client_id.as_deref());
        put(iceberg::io::ADLS_CLIENT_SECRET, a.client_secret.as_ref().map(|s| s.expose()));
        put(iceberg::io::ADLS_AUTHORITY_HOST, a.authority_host.as_deref());
        let factory =
            OpenDalResolvingStorageFactory::new().with_s3_credential_loader(CustomAwsCredentialLoader::new(credentials.clone()));
        let file_io = FileIOBuilder::new(Arc::new(factory)).with_props(props).build();
        Storage {
            file_io,
            s3: Some(S3Settings {
                endpoint,
                region,
                path_style: s3.path_style_access,
                credentials,
            }),
        }
    }

    pub fn file_io(&self) -> &FileIO {
        &self.file_io
    }

    /// Proves that files can be written under `location` (a table's root) before anything is:
    /// the scheme is supported, the bucket exists, the credentials are accepted and allow writing.
    /// A probe file is written and deleted at once.
    pub async fn check_writable(&self, location: &str) -> Result<(), StorageError> {
        check_scheme(location).map_err(|message| StorageError::Unsupported {
            location: location.to_owned(),
            message,
        })?;
        let probe = format!("{}/metadata/.floe-write-check-{}", location.trim_end_matches('/'), uuid::Uuid::new_v4());
        let attempt = async {
            let out = self.file_io.new_output(&probe)?;
            out.write(bytes::Bytes::from_static(b"floe write check")).await?;
            self.file_io.delete(&probe).await
        };
        match tokio::time::timeout(Duration::from_secs(20), attempt).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(classify(location, &e, self.s3.as_ref())),
            Err(_) => Err(StorageError::Unavailable {
                location: location.to_owned(),
                message: format!("no answer within 20s{}", self.endpoint_note(location)),
            }),
        }
    }

    fn endpoint_note(&self, location: &str) -> String {
        match (&self.s3, location.starts_with("s3")) {
            (Some(s3), true) => format!(
                " (S3 endpoint {}, region {}; `[storage.s3]` endpoint/region)",
                s3.endpoint.as_deref().unwrap_or("AWS"),
                s3.region
            ),
            _ => String::new(),
        }
    }

    /// Every file under `prefix` (a directory location) with its modification time.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, SystemTime)>, StorageError> {
        let prefix = prefix.trim_end_matches('/');
        if let Some(dir) = crate::maintain::local_path(prefix) {
            let files = tokio::task::spawn_blocking(move || walk(&dir))
                .await
                .map_err(|e| StorageError::Unavailable { location: prefix.to_owned(), message: e.to_string() })?
                .map_err(|e| StorageError::Unavailable { location: prefix.to_owned(), message: e.to_string() })?;
            return Ok(files
                .into_iter()
                .map(|(p, t)| (format!("file://{}", p.display()), t))
                .collect());
        }
        let url = url::Url::parse(prefix).map_err(|e| StorageError::Unsupported {
            location: prefix.to_owned(),
            message: e.to_string(),
        })?;
        let (Some(s3), "s3" | "s3a" | "s3n") = (&self.s3, url.scheme()) else {
            return Err(StorageError::Unsupported {
                location: prefix.to_owned(),
                message: "floe lists file:// and s3:// locations only (orphan removal); other schemes are read and written, not listed".into(),
            });
        };
        let bucket = url.host_str().unwrap_or_default();
        let root = format!("{}://{}/", url.scheme(), bucket);
        let key_prefix = format!("{}/", url.path().trim_matches('/'));
        let mut builder = opendal::services::S3::default().bucket(bucket).region(&s3.region);
        if let Some(e) = &s3.endpoint {
            builder = builder.endpoint(e);
        }
        if !s3.path_style {
            builder = builder.enable_virtual_host_style();
        }
        builder = builder
            .disable_config_load()
            .disable_ec2_metadata()
            .credential_provider_chain(reqsign_core::ProvideCredentialChain::new().push(s3.credentials.clone()));
        let failed = |e: opendal::Error| StorageError::Unavailable { location: prefix.to_owned(), message: e.to_string() };
        let op = opendal::Operator::new(builder).map_err(failed)?.finish();
        let entries = match op.list_with(&key_prefix).recursive(true).await {
            Ok(entries) => entries,
            // Some S3-compatible stores (moto) check the signature of a listing against a
            // differently encoded query when the prefix contains '/', which AWS accepts. Then the
            // prefix's first segment (no '/') is listed and the result narrowed here.
            Err(e) if e.to_string().contains("SignatureDoesNotMatch") && key_prefix.contains('/') => {
                let first = key_prefix.split('/').next().unwrap_or_default().to_owned();
                tracing::debug!(prefix = %key_prefix, listed = %first, "the store refused the listing's signature; listing a wider prefix");
                let wide = op.list_with(&first).recursive(true).await.map_err(failed)?;
                wide.into_iter().filter(|e| e.path().starts_with(&key_prefix)).collect()
            }
            Err(e) => return Err(failed(e)),
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            if !e.metadata().is_file() {
                continue;
            }
            let modified = match e.metadata().last_modified() {
                Some(t) => t.into(),
                // Not said by the listing: ask, so no file is taken as older than it is.
                None => match op.stat(e.path()).await.map_err(failed)?.last_modified() {
                    Some(t) => t.into(),
                    None => SystemTime::now(),
                },
            };
            out.push((format!("{root}{}", e.path()), modified));
        }
        Ok(out)
    }
}

/// An iceberg/OpenDAL error as something the user can act on.
fn classify(location: &str, e: &iceberg::Error, s3: Option<&S3Settings>) -> StorageError {
    let text = format!("{e:#}");
    let lower = text.to_ascii_lowercase();
    let where_ = match (s3, location.starts_with("s3")) {
        (Some(s3), true) => format!(
            " (S3 endpoint {}, region {})",
            s3.endpoint.as_deref().unwrap_or("AWS"),
            s3.region
        ),
        _ => String::new(),
    };
    let refused = |message: String| StorageError::Refused { location: location.to_owned(), message };
    if lower.contains("nosuchbucket") || lower.contains("specified bucket does not exist") {
        let bucket = url::Url::parse(location).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
        return refused(format!("the bucket {bucket:?} does not exist{where_}; create it or fix the location"));
    }
    if lower.contains("invalidaccesskeyid") || lower.contains("signaturedoesnotmatch") || lower.contains("invalidtoken")
        || lower.contains("expiredtoken")
    {
        return refused(format!(
            "the credentials were rejected{where_}: {}; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, `aws.profile` or the instance role",
            short(&text)
        ));
    }
    if lower.contains("accessdenied") || lower.contains("permissiondenied") || lower.contains("permission denied") {
        return refused(format!("access denied{where_}: {}; the credentials need write access to it", short(&text)));
    }
    if lower.contains("no valid credential") || lower.contains("credential") && lower.contains("load") {
        return refused(format!(
            "no AWS credentials found{where_}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, `aws.profile`, or run with a role: {}",
            short(&text)
        ));
    }
    StorageError::Unavailable { location: location.to_owned(), message: format!("{}{where_}", short(&text)) }
}

/// The first 600 characters of an error (S3 error bodies can be long).
fn short(text: &str) -> String {
    let t: String = text.chars().take(600).collect();
    if t.len() < text.len() { format!("{t}...") } else { t }
}

/// S3 credentials from `aws-config` (or static keys), cached until shortly before they expire.
#[derive(Clone)]
struct AwsChain {
    source: CredentialSource,
    cache: Arc<tokio::sync::Mutex<Option<AwsCredential>>>,
}

#[derive(Clone)]
enum CredentialSource {
    Static(AwsCredential),
    /// The `aws-config` chain for these settings, loaded on first use.
    Chain(crate::config::AwsConfig, Arc<tokio::sync::OnceCell<Option<SharedCredentialsProvider>>>),
}

impl std::fmt::Debug for AwsChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AwsChain")
    }
}

impl AwsChain {
    fn new(s3: &S3Storage, aws: &crate::config::AwsConfig) -> AwsChain {
        let source = match (&s3.access_key_id, &s3.secret_access_key) {
            (Some(id), Some(secret)) => CredentialSource::Static(AwsCredential {
                access_key_id: id.clone(),
                secret_access_key: secret.expose().to_owned(),
                session_token: s3.session_token.as_ref().map(|t| t.expose().to_owned()),
                expires_in: None,
            }),
            _ => CredentialSource::Chain(aws.clone(), Arc::new(tokio::sync::OnceCell::new())),
        };
        AwsChain { source, cache: Arc::new(tokio::sync::Mutex::new(None)) }
    }
}

impl ProvideCredential for AwsChain {
    type Credential = AwsCredential;

    async fn provide_credential(&self, _: &reqsign_core::Context) -> reqsign_core::Result<Option<AwsCredential>> {
        use reqsign_core::SigningCredential;
        let (aws, cell) = match &self.source {
            CredentialSource::Static(c) => return Ok(Some(c.clone())),
            CredentialSource::Chain(aws, cell) => (aws, cell),
        };
        let provider = cell
            .get_or_init(|| async { crate::aws::sdk_config(aws).await.credentials_provider() })
            .await
            .as_ref()
            .ok_or_else(|| reqsign_core::Error::credential_invalid("no valid credential: the AWS configuration has no credentials provider"))?;
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_ref()
            && c.is_valid()
        {
            return Ok(Some(c.clone()));
        }
        let c = provider.provide_credentials().await.map_err(|e| {
            reqsign_core::Error::credential_invalid(format!(
                "no valid credential from the AWS credential chain: {}",
                crate::aws::error_chain(&e)
            ))
        })?;
        let expires_in = match c.expiry() {
            Some(t) => {
                let ms = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
                Some(reqsign_core::time::Timestamp::from_millisecond(ms)?)
            }
            None => None,
        };
        let cred = AwsCredential {
            access_key_id: c.access_key_id().to_owned(),
            secret_access_key: c.secret_access_key().to_owned(),
            session_token: c.session_token().map(str::to_owned),
            expires_in,
        };
        *cache = Some(cred.clone());
        Ok(Some(cred))
    }
}

/// Every regular file under `dir` with its modification time (none if `dir` does not exist).
fn walk(dir: &std::path::Path) -> std::io::Result<Vec<(std::path::PathBuf, SystemTime)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() {
                out.push((entry.path(), entry.metadata()?.modified()?));
            }
        }
    }
    Ok(out)
}

/// Whether the configuration says anything about an object store (S3, GCS, ADLS or AWS), so that
/// tables placed there by their own `LOCATION` can be reached even with a local warehouse.
fn object_store_configured(config: &Config) -> bool {
    let (s3, g, a, aws) = (&config.storage.s3, &config.storage.gcs, &config.storage.adls, &config.aws);
    s3.endpoint.is_some()
        || s3.region.is_some()
        || s3.access_key_id.is_some()
        || g.credentials_json.is_some()
        || g.token.is_some()
        || g.endpoint.is_some()
        || a.account_name.is_some()
        || aws.endpoint.is_some()
        || aws.region.is_some()
        || aws.profile.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert!(check_scheme("s3://bucket/w").is_ok());
        assert!(check_scheme("file:///tmp/w").is_ok());
        assert!(check_scheme("gs://b/w").is_ok());
        let e = check_scheme("hdfs://nn/w").unwrap_err();
        assert!(e.contains("\"hdfs\"") && e.contains("s3://"), "{e}");
        assert!(check_scheme("s3:/bucket/w").unwrap_err().contains("s3://<bucket>"));
        assert!(check_scheme("s3:///w").unwrap_err().contains("names no bucket"));
        assert!(looks_like_uri("s3:/bucket"));
        assert!(looks_like_uri("s3://bucket"));
        assert!(!looks_like_uri("/tmp/a:b"));
        assert!(!looks_like_uri("data/warehouse"));
        assert!(!looks_like_uri("C:/x"));
    }
}
