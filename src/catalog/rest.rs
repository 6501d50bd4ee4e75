//! An Iceberg REST catalog (the Iceberg REST OpenAPI spec: Polaris, Lakekeeper, Unity, S3
//! Tables, Nessie, Apache Iceberg's own server).
//!
//! Unlike the SQL catalog, a REST catalog writes the metadata file itself: a commit sends
//! *updates* (add this snapshot, set `main` to it, set these properties) and *requirements*
//! (assertions on the current metadata) and the server applies the updates only if every
//! requirement holds, atomically. floe's commit engine builds the full new metadata as for any
//! catalog; [`changes`] turns the difference base -> new into updates, and pins the base with
//! requirements:
//!
//! - `assert-table-uuid`: the same table (not one dropped and recreated under the name);
//! - `assert-ref-snapshot-id` for `main` = the base's: every commit that adds data, replaces or
//!   deletes files moves `main`, so no such commit can have happened since the base;
//! - `assert-ref-snapshot-id` for every other branch or tag the commit changes;
//! - `assert-current-schema-id`, `assert-last-assigned-field-id`, `assert-default-spec-id`,
//!   `assert-last-assigned-partition-id`, `assert-default-sort-order-id`: no schema, partition
//!   spec or sort order change since the base (the data files were written for the base's).
//!
//! No requirement can assert a table property, and the ledger is one (DESIGN.md §1). So floe never
//! sends a change of a fenced property (`floe.ledger.*`, `floe.dead-letters.*`) without moving
//! `main` in the same commit: the commit engine tells its operations that the catalog does not pin
//! properties ([`super::Catalog::pins_properties`]) and an append then always makes a snapshot,
//! and [`changes`] refuses any other such commit. Since the ledger only ever changes together
//! with `main`, "main is still at the base's snapshot" implies "the ledger is still the base's",
//! which is what the fence checked. docs/exactly-once.md says the same for operators.
//!
//! A 409 answer to a commit is a lost race ([`Swap::Conflict`]); a 5xx answer or a broken
//! connection leaves the outcome unknown ([`CatalogError::Unavailable`]), which the commit engine
//! resolves as for the SQL catalog: reload, and the operation's check recognises its own commit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iceberg::io::FileIO;
use iceberg::spec::{TableMetadata, UnboundPartitionSpec};
use iceberg::{TableRequirement, TableUpdate};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{CatalogError, LoadedTable, Swap};
use crate::commit::MAIN;
use crate::config::{Config, TableName};

/// Table properties that only ever change together with `main` (see the module comment).
pub const FENCED_PROPERTY_PREFIXES: [&str; 2] =
    [crate::ledger::LEDGER_PROPERTY_PREFIX, crate::deadletter::DLQ_POSITIONS_PREFIX];

/// The location given to floe's table builder for a new table whose `CREATE TABLE` names none.
/// It is never sent: the server chooses the location.
pub const SERVER_CHOOSES: &str = "floe-rest:/server-chooses";

/// How long to wait for a TCP connection: an unreachable catalog is reported within seconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one request may take in all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How requests are authenticated.
enum Auth {
    None,
    /// A bearer token from the configuration.
    Token(String),
    /// OAuth2 client credentials, exchanged for a token that is cached until shortly before it
    /// expires.
    ClientCredentials {
        token_uri: String,
        client_id: String,
        client_secret: String,
        scope: String,
        cached: tokio::sync::Mutex<Option<(String, Option<Instant>)>>,
    },
}

struct Inner {
    http: reqwest::Client,
    /// The base URI, without a trailing slash.
    uri: String,
    /// `v1/<prefix>/` or `v1/`, as the server's configuration says.
    base_path: String,
    name: String,
    auth: Auth,
    headers: reqwest::header::HeaderMap,
    storage: crate::storage::Storage,
}

/// A REST catalog client.
#[derive(Clone)]
pub struct RestCatalog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RestCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestCatalog")
            .field("uri", &self.inner.uri)
            .field("base_path", &self.inner.base_path)
            .field("name", &self.inner.name)
            .finish()
    }
}

impl RestCatalog {
    /// Connects: reads the server's configuration (`GET /v1/config`), which says the path prefix
    /// of every other endpoint. Fails within seconds when the server cannot be reached.
    pub async fn open(config: &Config) -> Result<RestCatalog, CatalogError> {
        let c = &config.catalog;
        let uri = c.uri.as_deref().expect("validated: a REST catalog has a uri").trim_end_matches('/').to_owned();
        let rejected = |message: String| CatalogError::Rejected { uri: uri.clone(), message };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| rejected(format!("cannot set up the HTTP client: {e}")))?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &c.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("validated");
            let mut value = reqwest::header::HeaderValue::from_str(v).expect("validated");
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let auth = match (&c.token, &c.credential) {
            (Some(token), _) => Auth::Token(token.clone()),
            (None, Some(credential)) => {
                let (id, secret) = credential.split_once(':').expect("validated: client_id:client_secret");
                Auth::ClientCredentials {
                    token_uri: c.oauth2_server_uri.clone().unwrap_or_else(|| format!("{uri}/v1/oauth/tokens")),
                    client_id: id.to_owned(),
                    client_secret: secret.to_owned(),
                    scope: c.scope.clone().unwrap_or_else(|| "catalog".to_owned()),
                    cached: tokio::sync::Mutex::new(None),
                }
            }
            (None, None) => Auth::None,
        };
        let mut catalog = RestCatalog {
            inner: Arc::new(Inner {
                http,
                uri: uri.clone(),
                base_path: "v1/".to_owned(),
                name: config.catalog_name().to_owned(),
                auth,
                headers,
                storage: crate::storage::Storage::from_config(config).await,
            }),
        };
        let mut path = "v1/config".to_owned();
        if let Some(w) = &c.warehouse {
            path = format!("{path}?warehouse={}", encode(w));
        }
        let server = catalog.call(Method::GET, &path, None).await?;
        let server = match server {
            (StatusCode::OK, body) => body,
            (status, body) => return Err(catalog.refused("reading the catalog configuration (GET /v1/config)", status, &body)),
        };
        // `overrides` win over the client's settings, `defaults` only fill in: only `prefix` matters here.
        let prefix = ["overrides", "defaults"]
            .iter()
            .find_map(|k| server.get(k).and_then(|m| m.get("prefix")).and_then(Value::as_str))
            .map(str::to_owned);
        if let Some(prefix) = prefix.filter(|p| !p.is_empty()) {
            let inner = Arc::get_mut(&mut catalog.inner).expect("not shared yet");
            inner.base_path = format!("v1/{}/", prefix.trim_matches('/'));
        }
        Ok(catalog)
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn uri(&self) -> &str {
        &self.inner.uri
    }

    pub fn file_io(&self) -> &FileIO {
        self.inner.storage.file_io()
    }

    pub fn storage(&self) -> &crate::storage::Storage {
        &self.inner.storage
    }

    /// The server chooses new tables' locations (under its warehouse).
    pub fn default_location(&self, _table: &TableName) -> String {
        SERVER_CHOOSES.to_owned()
    }

    fn namespace_path(&self, namespace: &[String]) -> String {
        // Namespace levels are joined by the unit separator (0x1F), as the spec says.
        format!("{}namespaces/{}", self.inner.base_path, encode(&namespace.join("\u{1f}")))
    }

    fn table_path(&self, table: &TableName) -> String {
        format!("{}/tables/{}", self.namespace_path(&table.namespace), encode(&table.name))
    }

    /// The headers every request carries: the configured ones, and the token.
    async fn auth_header(&self) -> Result<Option<String>, CatalogError> {
        match &self.inner.auth {
            Auth::None => Ok(None),
            Auth::Token(t) => Ok(Some(format!("Bearer {t}"))),
            Auth::ClientCredentials { token_uri, client_id, client_secret, scope, cached } => {
                let mut cached = cached.lock().await;
                if let Some((token, expires)) = cached.as_ref()
                    && expires.is_none_or(|at| Instant::now() < at)
                {
                    return Ok(Some(format!("Bearer {token}")));
                }
                let unavailable = |e: &reqwest::Error| CatalogError::Unavailable {
                    uri: self.inner.uri.clone(),
                    message: format!("cannot reach the OAuth2 token endpoint {token_uri}: {}", error_chain(e)),
                };
                let response = self
                    .inner
                    .http
                    .post(token_uri)
                    .headers(self.inner.headers.clone())
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("client_id", client_id.as_str()),
                        ("client_secret", client_secret.as_str()),
                        ("scope", scope.as_str()),
                    ])
                    .send()
                    .await
                    .map_err(|e| unavailable(&e))?;
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                let token = body.get("access_token").and_then(Value::as_str);
                let (true, Some(token)) = (status.is_success(), token) else {
                    return Err(CatalogError::Rejected {
                        uri: self.inner.uri.clone(),
                        message: format!(
                            "the OAuth2 token endpoint {token_uri} refused client {client_id:?} (HTTP {status}): {}; \
                             check catalog.credential and catalog.scope",
                            server_message(&body)
                        ),
                    });
                };
                // Renewed a little early, so that a token never expires in the middle of a commit.
                let expires = body
                    .get("expires_in")
                    .and_then(Value::as_u64)
                    .map(|s| Instant::now() + Duration::from_secs(s.saturating_sub(30).max(1)));
                *cached = Some((token.to_owned(), expires));
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// One request; the answer's status and JSON body (Null when empty). A network failure is
    /// `Unavailable` (for a commit: outcome unknown).
    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<(StatusCode, Value), CatalogError> {
        let url = format!("{}/{path}", self.inner.uri);
        let mut request = self.inner.http.request(method.clone(), &url).headers(self.inner.headers.clone());
        if let Some(auth) = self.auth_header().await? {
            let mut value = reqwest::header::HeaderValue::from_str(&auth).map_err(|_| CatalogError::Rejected {
                uri: self.inner.uri.clone(),
                message: "the token is not a valid HTTP header value".into(),
            })?;
            value.set_sensitive(true);
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let unavailable = |e: reqwest::Error| CatalogError::Unavailable {
            uri: self.inner.uri.clone(),
            message: format!("{method} {url}: {}", error_chain(&e)),
        };
        let response = request.send().await.map_err(unavailable)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unavailable)?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, value))
    }

    /// The error for an answer that is none of the expected ones.
    fn refused(&self, what: &str, status: StatusCode, body: &Value) -> CatalogError {
        let message = format!("{what}: HTTP {status}: {}", server_message(body));
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => CatalogError::Rejected {
                uri: self.inner.uri.clone(),
                message: format!("{message}; check catalog.token or catalog.credential, and the principal's grants"),
            },
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT => {
                CatalogError::Unavailable { uri: self.inner.uri.clone(), message }
            }
            _ => CatalogError::Rejected { uri: self.inner.uri.clone(), message },
        }
    }

    fn no_such_table(&self, table: &TableName) -> CatalogError {
        CatalogError::NoSuchTable {
            table: table.to_string(),
            catalog: self.inner.name.clone(),
            uri: self.inner.uri.clone(),
        }
    }

    /// Creates the namespace if it does not exist.
    pub async fn ensure_namespace(&self, namespace: &[String]) -> Result<(), CatalogError> {
        let (status, body) = self.call(Method::GET, &self.namespace_path(namespace), None).await?;
        if status.is_success() {
            return Ok(());
        }
        if status != StatusCode::NOT_FOUND {
            return Err(self.refused(&format!("looking up namespace {}", namespace.join(".")), status, &body));
        }
        let path = format!("{}namespaces", self.inner.base_path);
        let request = json!({ "namespace": namespace, "properties": {} });
        match self.call(Method::POST, &path, Some(&request)).await? {
            (s, _) if s.is_success() => Ok(()),
            // Another process created it at the same moment: that is what we wanted.
            (StatusCode::CONFLICT, _) => Ok(()),
            (s, body) => Err(self.refused(&format!("creating namespace {}", namespace.join(".")), s, &body)),
        }
    }

    /// The namespaces under `parent` (all levels), following pages.
    async fn namespaces(&self, parent: Option<&[String]>) -> Result<Vec<Vec<String>>, CatalogError> {
        let mut out = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut query = Vec::new();
            if let Some(p) = parent {
                query.push(format!("parent={}", encode(&p.join("\u{1f}"))));
            }
            if let Some(t) = &page {
                query.push(format!("pageToken={}", encode(t)));
            }
            let mut path = format!("{}namespaces", self.inner.base_path);
            if !query.is_empty() {
                path = format!("{path}?{}", query.join("&"));
            }
            let (status, body) = self.call(Method::GET, &path, None).await?;
            if !status.is_success() {
                return Err(self.refused("listing namespaces", status, &body));
            }
            for ns in body.get("namespaces").and_then(Value::as_array).into_iter().flatten() {
                let parts: Vec<String> =
                    ns.as_array().into_iter().flatten().filter_map(|p| p.as_str().map(str::to_owned)).collect();
                if !parts.is_empty() && Some(parts.as_slice()) != parent {
                    out.push(parts);
                }
            }
            page = body.get("next-page-token").and_then(Value::as_str).map(str::to_owned);
            if page.is_none() {
                break;
            }
        }
        let mut nested = Vec::new();
        for ns in &out {
            nested.extend(Box::pin(self.namespaces(Some(ns))).await?);
        }
        out.extend(nested);
        Ok(out)
    }

    /// All tables, optionally only those of one namespace (`a.b`), sorted.
    pub async fn list_tables(&self, namespace: Option<&str>) -> Result<Vec<TableName>, CatalogError> {
        let namespaces = match namespace {
            Some(ns) => vec![ns.split('.').map(str::to_owned).collect::<Vec<_>>()],
            None => self.namespaces(None).await?,
        };
        let mut names = Vec::new();
        for ns in namespaces {
            let mut page: Option<String> = None;
            loop {
                let mut path = format!("{}/tables", self.namespace_path(&ns));
                if let Some(t) = &page {
                    path = format!("{path}?pageToken={}", encode(t));
                }
                let (status, body) = self.call(Method::GET, &path, None).await?;
                if status == StatusCode::NOT_FOUND && namespace.is_some() {
                    return Ok(Vec::new());
                }
                if !status.is_success() {
                    return Err(self.refused(&format!("listing the tables of {}", ns.join(".")), status, &body));
                }
                for id in body.get("identifiers").and_then(Value::as_array).into_iter().flatten() {
                    let namespace: Vec<String> = id
                        .get("namespace")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect();
                    if let Some(name) = id.get("name").and_then(Value::as_str) {
                        names.push(TableName { namespace, name: name.to_owned() });
                    }
                }
                page = body.get("next-page-token").and_then(Value::as_str).map(str::to_owned);
                if page.is_none() {
                    break;
                }
            }
        }
        names.sort_by_key(|t| t.to_string());
        Ok(names)
    }

    pub async fn table_exists(&self, table: &TableName) -> Result<bool, CatalogError> {
        match self.load(table).await {
            Ok(_) => Ok(true),
            Err(CatalogError::NoSuchTable { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A `LoadTableResult` (load, create and commit answers) as a [`LoadedTable`].
    fn loaded(&self, table: &TableName, body: Value) -> Result<LoadedTable, CatalogError> {
        let location = body.get("metadata-location").and_then(Value::as_str).unwrap_or_default().to_owned();
        let unreadable = |message: String| CatalogError::Unreadable {
            table: table.to_string(),
            location: if location.is_empty() { "(none given by the catalog)".into() } else { location.clone() },
            message,
        };
        let metadata = body.get("metadata").ok_or_else(|| unreadable("the catalog's answer has no `metadata`".into()))?;
        let json = serde_json::to_vec(metadata).map_err(|e| unreadable(e.to_string()))?;
        let metadata = super::parse_metadata(&json).map_err(unreadable)?;
        Ok(LoadedTable::new(table.clone(), location, metadata))
    }

    /// Loads a table's current metadata.
    pub async fn load(&self, table: &TableName) -> Result<LoadedTable, CatalogError> {
        match self.call(Method::GET, &self.table_path(table), None).await? {
            (StatusCode::OK, body) => self.loaded(table, body),
            (StatusCode::NOT_FOUND, _) => Err(self.no_such_table(table)),
            (status, body) => Err(self.refused(&format!("loading table {table}"), status, &body)),
        }
    }

    /// Creates a table with the schema, partition spec, sort order, properties and (if the
    /// `CREATE TABLE` named one) location of `metadata`; the server writes the first metadata.
    pub async fn create(&self, table: &TableName, metadata: TableMetadata) -> Result<LoadedTable, CatalogError> {
        super::check_readable(table, &metadata)?;
        self.ensure_namespace(&table.namespace).await?;
        let mut properties: BTreeMap<String, String> =
            metadata.properties().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        properties.insert("format-version".into(), (metadata.format_version() as u8).to_string());
        let spec: UnboundPartitionSpec = metadata.default_partition_spec().as_ref().clone().into_unbound();
        let mut request = json!({
            "name": table.name,
            "schema": metadata.current_schema().as_ref(),
            "partition-spec": spec,
            "write-order": metadata.default_sort_order().as_ref(),
            "properties": properties,
            "stage-create": false,
        });
        if metadata.location() != SERVER_CHOOSES {
            request["location"] = Value::String(metadata.location().to_owned());
        }
        let path = format!("{}/tables", self.namespace_path(&table.namespace));
        match self.call(Method::POST, &path, Some(&request)).await? {
            (StatusCode::OK, body) => self.loaded(table, body),
            (StatusCode::CONFLICT, _) => Err(CatalogError::AlreadyExists {
                table: table.to_string(),
                catalog: self.inner.name.clone(),
            }),
            (status, body) => Err(self.refused(&format!("creating table {table}"), status, &body)),
        }
    }

    /// Sends the difference base -> new as updates, with requirements that pin the base (see the
    /// module comment).
    pub async fn commit(&self, base: &LoadedTable, new: TableMetadata) -> Result<Swap, CatalogError> {
        let table = &base.name;
        super::check_readable(table, &new)?;
        let (requirements, updates) = changes(&base.metadata, &new).map_err(|message| CatalogError::Unsupported {
            table: table.to_string(),
            message: format!("cannot commit through the REST catalog without weakening the fence: {message}"),
        })?;
        let request = json!({
            "identifier": { "namespace": table.namespace, "name": table.name },
            "requirements": requirements,
            "updates": updates,
        });
        match self.call(Method::POST, &self.table_path(table), Some(&request)).await {
            Ok((StatusCode::OK, body)) => Ok(Swap::Done(Box::new(self.loaded(table, body)?))),
            Ok((StatusCode::CONFLICT, _)) => Ok(Swap::Conflict),
            Ok((StatusCode::NOT_FOUND, _)) => Err(self.no_such_table(table)),
            Ok((status, body)) if status.is_server_error() => Err(CatalogError::Unavailable {
                uri: self.inner.uri.clone(),
                message: format!(
                    "commit to table {table}: HTTP {status}, the outcome is unknown (it is checked on the next attempt): {}",
                    server_message(&body)
                ),
            }),
            Ok((status, body)) => Err(self.refused(&format!("commit to table {table}"), status, &body)),
            Err(CatalogError::Unavailable { uri, message }) => Err(CatalogError::Unavailable {
                uri,
                message: format!("commit to table {table}: {message}; the outcome is unknown (it is checked on the next attempt)"),
            }),
            Err(e) => Err(e),
        }
    }
}

/// The requirements and updates that turn `base` into `new` on a REST catalog, or why that
/// cannot be said safely.
pub fn changes(base: &TableMetadata, new: &TableMetadata) -> Result<(Vec<TableRequirement>, Vec<Value>), String> {
    if base.uuid() != new.uuid() {
        return Err(format!("the table uuid changed ({} -> {})", base.uuid(), new.uuid()));
    }
    let base_refs = crate::commit::refs(base);
    let new_refs = crate::commit::refs(new);
    let mut requirements = vec![
        TableRequirement::UuidMatch { uuid: base.uuid() },
        TableRequirement::RefSnapshotIdMatch {
            r#ref: MAIN.to_owned(),
            snapshot_id: base_refs.get(MAIN).map(|r| r.snapshot_id),
        },
        TableRequirement::CurrentSchemaIdMatch { current_schema_id: base.current_schema_id() },
        TableRequirement::LastAssignedFieldIdMatch { last_assigned_field_id: base.last_column_id() },
        TableRequirement::DefaultSpecIdMatch { default_spec_id: base.default_partition_spec_id() },
        TableRequirement::LastAssignedPartitionIdMatch { last_assigned_partition_id: base.last_partition_id() },
        TableRequirement::DefaultSortOrderIdMatch { default_sort_order_id: base.default_sort_order_id() },
    ];
    let mut updates: Vec<TableUpdate> = Vec::new();

    if new.format_version() != base.format_version() {
        updates.push(TableUpdate::UpgradeFormatVersion { format_version: new.format_version() });
    }
    if new.location() != base.location() {
        updates.push(TableUpdate::SetLocation { location: new.location().to_owned() });
    }

    // Schemas, specs and sort orders: the ones added, then the current/default one (-1: the last
    // one added, whatever id the server gives it).
    let base_schemas: HashSet<i32> = base.schemas_iter().map(|s| s.schema_id()).collect();
    let added_schemas: Vec<i32> =
        new.schemas_iter().map(|s| s.schema_id()).filter(|id| !base_schemas.contains(id)).collect();
    let mut sorted = added_schemas.clone();
    sorted.sort();
    for id in &sorted {
        let schema = new.schema_by_id(*id).expect("listed above");
        updates.push(TableUpdate::AddSchema { schema: schema.as_ref().clone() });
    }
    if new.current_schema_id() != base.current_schema_id() {
        let schema_id = match sorted.last() {
            Some(last) if *last == new.current_schema_id() => -1,
            _ if sorted.contains(&new.current_schema_id()) => {
                return Err("the new current schema is not the last one added".into());
            }
            _ => new.current_schema_id(),
        };
        updates.push(TableUpdate::SetCurrentSchema { schema_id });
    }
    let base_specs: HashSet<i32> = base.partition_specs_iter().map(|s| s.spec_id()).collect();
    let mut added_specs: Vec<i32> =
        new.partition_specs_iter().map(|s| s.spec_id()).filter(|id| !base_specs.contains(id)).collect();
    added_specs.sort();
    for id in &added_specs {
        let spec = new.partition_spec_by_id(*id).expect("listed above");
        updates.push(TableUpdate::AddSpec { spec: spec.as_ref().clone().into_unbound() });
    }
    if new.default_partition_spec_id() != base.default_partition_spec_id() {
        let spec_id = match added_specs.last() {
            Some(last) if *last == new.default_partition_spec_id() => -1,
            _ if added_specs.contains(&new.default_partition_spec_id()) => {
                return Err("the new default partition spec is not the last one added".into());
            }
            _ => new.default_partition_spec_id(),
        };
        updates.push(TableUpdate::SetDefaultSpec { spec_id });
    }
    let base_orders: HashSet<i64> = base.sort_orders_iter().map(|s| s.order_id).collect();
    let mut added_orders: Vec<i64> =
        new.sort_orders_iter().map(|s| s.order_id).filter(|id| !base_orders.contains(id)).collect();
    added_orders.sort();
    for id in &added_orders {
        let order = new.sort_order_by_id(*id).expect("listed above");
        updates.push(TableUpdate::AddSortOrder { sort_order: order.as_ref().clone() });
    }
    if new.default_sort_order_id() != base.default_sort_order_id() {
        let sort_order_id = match added_orders.last() {
            Some(last) if *last == new.default_sort_order_id() => -1,
            _ if added_orders.contains(&new.default_sort_order_id()) => {
                return Err("the new default sort order is not the last one added".into());
            }
            _ => new.default_sort_order_id(),
        };
        updates.push(TableUpdate::SetDefaultSortOrder { sort_order_id });
    }

    // Snapshots added (oldest first), then the refs that moved, then the snapshots removed.
    let mut added: Vec<_> = new.snapshots().filter(|s| base.snapshot_by_id(s.snapshot_id()).is_none()).collect();
    added.sort_by_key(|s| (s.sequence_number(), s.timestamp_ms()));
    for s in added {
        updates.push(TableUpdate::AddSnapshot { snapshot: s.as_ref().clone() });
    }
    let mut ref_names: Vec<&String> = base_refs.keys().chain(new_refs.keys()).collect();
    ref_names.sort();
    ref_names.dedup();
    for name in ref_names {
        let (before, after) = (base_refs.get(name), new_refs.get(name));
        if before == after {
            continue;
        }
        if name != MAIN {
            requirements.push(TableRequirement::RefSnapshotIdMatch {
                r#ref: name.clone(),
                snapshot_id: before.map(|r| r.snapshot_id),
            });
        }
        match after {
            Some(r) => updates.push(TableUpdate::SetSnapshotRef { ref_name: name.clone(), reference: r.clone() }),
            None => updates.push(TableUpdate::RemoveSnapshotRef { ref_name: name.clone() }),
        }
    }
    let removed: Vec<i64> =
        base.snapshots().map(|s| s.snapshot_id()).filter(|id| new.snapshot_by_id(*id).is_none()).collect();
    let removed_set: HashSet<i64> = removed.iter().copied().collect();
    if !removed.is_empty() {
        updates.push(TableUpdate::RemoveSnapshots { snapshot_ids: removed });
    }

    // Statistics go with their snapshots (the server drops those of removed snapshots); floe
    // never changes them otherwise.
    let stats = |m: &TableMetadata| -> Vec<String> {
        let mut v: Vec<String> = m
            .statistics_iter()
            .filter(|s| !removed_set.contains(&s.snapshot_id))
            .map(|s| format!("{}:{}", s.snapshot_id, s.statistics_path))
            .chain(
                m.partition_statistics_iter()
                    .filter(|s| !removed_set.contains(&s.snapshot_id))
                    .map(|s| format!("p{}:{}", s.snapshot_id, s.statistics_path)),
            )
            .collect();
        v.sort();
        v
    };
    if stats(base) != stats(new) {
        return Err("the commit changes table statistics files, which floe does not send to a REST catalog".into());
    }

    // Properties: set those that changed, remove those that went.
    let mut set: HashMap<String, String> = HashMap::new();
    for (k, v) in new.properties() {
        if base.properties().get(k) != Some(v) {
            set.insert(k.clone(), v.clone());
        }
    }
    let mut removals: Vec<String> =
        base.properties().keys().filter(|k| !new.properties().contains_key(*k)).cloned().collect();
    removals.sort();
    let main_moves = base_refs.get(MAIN).map(|r| r.snapshot_id) != new_refs.get(MAIN).map(|r| r.snapshot_id);
    if !main_moves
        && let Some(key) = set
            .keys()
            .chain(removals.iter())
            .find(|k| FENCED_PROPERTY_PREFIXES.iter().any(|p| k.starts_with(p)))
    {
        return Err(format!(
            "it changes the fenced property {key} without moving `main`; the requirements could not pin that \
             property's value, so a stale writer could overwrite it"
        ));
    }
    if !set.is_empty() {
        updates.push(TableUpdate::SetProperties { updates: set });
    }
    if !removals.is_empty() {
        updates.push(TableUpdate::RemoveProperties { removals });
    }

    // Specs and schemas the new metadata no longer has (expiry drops unused ones).
    let new_specs: HashSet<i32> = new.partition_specs_iter().map(|s| s.spec_id()).collect();
    let mut gone_specs: Vec<i32> = base_specs.iter().copied().filter(|id| !new_specs.contains(id)).collect();
    if !gone_specs.is_empty() {
        gone_specs.sort();
        updates.push(TableUpdate::RemovePartitionSpecs { spec_ids: gone_specs });
    }
    let new_schemas: HashSet<i32> = new.schemas_iter().map(|s| s.schema_id()).collect();
    let mut gone_schemas: Vec<i32> = base_schemas.iter().copied().filter(|id| !new_schemas.contains(id)).collect();
    if !gone_schemas.is_empty() {
        gone_schemas.sort();
        updates.push(TableUpdate::RemoveSchemas { schema_ids: gone_schemas });
    }

    let mut out = Vec::with_capacity(updates.len());
    for u in updates {
        let add_schema = matches!(u, TableUpdate::AddSchema { .. });
        let mut v = serde_json::to_value(&u).map_err(|e| format!("cannot serialize an update: {e}"))?;
        if add_schema {
            // Deprecated in the spec but still read by servers that predate its removal; without
            // it, older servers recompute the counter from the schema and lose dropped columns' ids.
            v["last-column-id"] = json!(new.last_column_id());
        }
        out.push(v);
    }
    Ok((requirements, out))
}

/// The server's error message (`{"error": {"message", "type", "code"}}`), or the body itself.
fn server_message(body: &Value) -> String {
    match body.get("error") {
        Some(e) => {
            let message = e.get("message").and_then(Value::as_str).unwrap_or("(no message)");
            match e.get("type").and_then(Value::as_str) {
                Some(t) => format!("{t}: {message}"),
                None => message.to_owned(),
            }
        }
        None => match body {
            Value::Null => "(empty answer)".to_owned(),
            Value::String(s) => s.chars().take(300).collect(),
            other => other.to_string().chars().take(300).collect(),
        },
    }
}

/// A reqwest error with its causes ("connection refused" is in the source, not the message).
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        format!("timed out ({e})")
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

/// Percent-encodes a path segment or query value (everything but unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use iceberg::spec::{
        FormatVersion, NestedField, Operation as Op, PrimitiveType, Schema, Snapshot, SortOrder, Summary,
        TableMetadataBuilder, Type, UnboundPartitionSpec,
    };

    use super::*;

    fn base() -> TableMetadata {
        let schema = Schema::builder()
            .with_fields(vec![NestedField::optional(1, "id", Type::Primitive(PrimitiveType::Long)).into()])
            .build()
            .unwrap();
        TableMetadataBuilder::new(
            schema,
            UnboundPartitionSpec::builder().build(),
            SortOrder::unsorted_order(),
            "file:///tmp/t".into(),
            FormatVersion::V2,
            HashMap::from([("keep".to_owned(), "1".to_owned()), ("gone".to_owned(), "x".to_owned())]),
        )
        .unwrap()
        .build()
        .unwrap()
        .metadata
    }

    fn snapshot(m: &TableMetadata, id: i64) -> Snapshot {
        Snapshot::builder()
            .with_snapshot_id(id)
            .with_parent_snapshot_id(m.current_snapshot_id())
            .with_sequence_number(m.last_sequence_number() + 1)
            .with_timestamp_ms(m.last_updated_ms() + 1)
            .with_manifest_list(format!("file:///tmp/t/metadata/snap-{id}.avro"))
            .with_summary(Summary { operation: Op::Append, additional_properties: HashMap::new() })
            .with_schema_id(0)
            .build()
    }

    fn actions(updates: &[Value]) -> Vec<&str> {
        updates.iter().map(|u| u["action"].as_str().unwrap()).collect()
    }

    #[test]
    fn an_append_with_the_ledger_pins_main_and_sends_only_what_changed() {
        let base = base();
        let ledger = format!("{}p", crate::ledger::LEDGER_PROPERTY_PREFIX);
        let new = TableMetadataBuilder::new_from_metadata(base.clone(), None)
            .set_branch_snapshot(snapshot(&base, 7), MAIN)
            .unwrap()
            .set_properties(HashMap::from([(ledger.clone(), "{}".to_owned())]))
            .unwrap()
            .remove_properties(&["gone".to_owned()])
            .unwrap()
            .build()
            .unwrap()
            .metadata;
        let (req, upd) = changes(&base, &new).unwrap();
        assert!(req.contains(&TableRequirement::UuidMatch { uuid: base.uuid() }));
        assert!(req.contains(&TableRequirement::RefSnapshotIdMatch { r#ref: MAIN.into(), snapshot_id: None }));
        assert!(req.contains(&TableRequirement::CurrentSchemaIdMatch { current_schema_id: 0 }));
        assert!(req.contains(&TableRequirement::LastAssignedFieldIdMatch { last_assigned_field_id: 1 }));
        assert!(req.contains(&TableRequirement::DefaultSpecIdMatch { default_spec_id: 0 }));
        assert_eq!(actions(&upd), ["add-snapshot", "set-snapshot-ref", "set-properties", "remove-properties"]);
        assert_eq!(upd[0]["snapshot"]["snapshot-id"], 7);
        assert_eq!(upd[1]["ref-name"], MAIN);
        assert_eq!(upd[1]["snapshot-id"], 7);
        assert_eq!(upd[2]["updates"], json!({ ledger: "{}" }), "only the changed key is sent");
        assert_eq!(upd[3]["removals"], json!(["gone"]));

        // The next append pins the snapshot this one made.
        let newer = TableMetadataBuilder::new_from_metadata(new.clone(), None)
            .set_branch_snapshot(snapshot(&new, 8), MAIN)
            .unwrap()
            .build()
            .unwrap()
            .metadata;
        let (req, upd) = changes(&new, &newer).unwrap();
        assert!(req.contains(&TableRequirement::RefSnapshotIdMatch { r#ref: MAIN.into(), snapshot_id: Some(7) }));
        assert_eq!(actions(&upd), ["add-snapshot", "set-snapshot-ref"]);
    }

    #[test]
    fn a_fenced_property_never_changes_without_main_moving() {
        let base = base();
        for key in [format!("{}p", crate::ledger::LEDGER_PROPERTY_PREFIX), format!("{}p.t.0", crate::deadletter::DLQ_POSITIONS_PREFIX)] {
            let new = TableMetadataBuilder::new_from_metadata(base.clone(), None)
                .set_properties(HashMap::from([(key.clone(), "{}".to_owned())]))
                .unwrap()
                .build()
                .unwrap()
                .metadata;
            let e = changes(&base, &new).unwrap_err();
            assert!(e.contains(&key) && e.contains("main"), "{e}");
        }
        // Other properties may change alone (ALTER TABLE SET PROPERTIES).
        let new = TableMetadataBuilder::new_from_metadata(base.clone(), None)
            .set_properties(HashMap::from([("commit.manifest.min-count-to-merge".to_owned(), "5".to_owned())]))
            .unwrap()
            .build()
            .unwrap()
            .metadata;
        let (_, upd) = changes(&base, &new).unwrap();
        assert_eq!(actions(&upd), ["set-properties"]);
    }

    #[test]
    fn a_schema_change_adds_the_schema_and_makes_the_last_added_current() {
        let base = base();
        let schema = Schema::builder()
            .with_schema_id(1)
            .with_fields(vec![
                NestedField::optional(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
                NestedField::optional(2, "name", Type::Primitive(PrimitiveType::String)).into(),
            ])
            .build()
            .unwrap();
        let new = TableMetadataBuilder::new_from_metadata(base.clone(), None)
            .add_current_schema(schema)
            .unwrap()
            .build()
            .unwrap()
            .metadata;
        let (req, upd) = changes(&base, &new).unwrap();
        assert!(req.contains(&TableRequirement::CurrentSchemaIdMatch { current_schema_id: 0 }));
        assert_eq!(actions(&upd), ["add-schema", "set-current-schema"]);
        assert_eq!(upd[0]["last-column-id"], 2);
        assert_eq!(upd[1]["schema-id"], -1);
    }

    #[test]
    fn expiry_removes_snapshots_and_pins_main() {
        let base = base();
        let one = TableMetadataBuilder::new_from_metadata(base.clone(), None)
            .set_branch_snapshot(snapshot(&base, 1), MAIN)
            .unwrap()
            .build()
            .unwrap()
            .metadata;
        let two = TableMetadataBuilder::new_from_metadata(one.clone(), None)
            .set_branch_snapshot(snapshot(&one, 2), MAIN)
            .unwrap()
            .build()
            .unwrap()
            .metadata;
        let expired = TableMetadataBuilder::new_from_metadata(two.clone(), None)
            .remove_snapshots(&[1])
            .build()
            .unwrap()
            .metadata;
        let (req, upd) = changes(&two, &expired).unwrap();
        assert!(req.contains(&TableRequirement::RefSnapshotIdMatch { r#ref: MAIN.into(), snapshot_id: Some(2) }));
        assert_eq!(actions(&upd), ["remove-snapshots"]);
        assert_eq!(upd[0]["snapshot-ids"], json!([1]));
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("a\u{1f}b c/d"), "a%1Fb%20c%2Fd");
        assert_eq!(encode("events_2024-01.x~"), "events_2024-01.x~");
    }
}
