//! The AWS Glue Data Catalog: a Glue database per floe namespace, a Glue table per Iceberg table,
//! whose parameters point at the current metadata file, as Iceberg Java's `GlueCatalog` writes them
//! (`table_type = ICEBERG`, `metadata_location`, `previous_metadata_location`), so that Athena,
//! Trino, Spark and pyiceberg read the same tables.
//!
//! floe writes the metadata file itself (as for the SQL catalog) and swaps the pointer with its own
//! conditional commit, not the `iceberg` crate's Glue catalog (which re-applies a commit on whatever
//! it finds, and cannot write `timestamptz` columns):
//!
//! 1. `GetTable`: the table's current `metadata_location` and Glue `VersionId`. If the location is
//!    not the base's, someone committed since the base was loaded: [`Swap::Conflict`], nothing
//!    written.
//! 2. Write the next metadata file.
//! 3. `UpdateTable` with that `VersionId`. Glue applies it only if the table is still at that
//!    version, and answers `ConcurrentModificationException` otherwise: [`Swap::Conflict`] (the
//!    file is deleted). So the swap holds exactly when the table's pointer was still the base's
//!    metadata file, which holds everything the operation checked, ledger included (DESIGN.md §2).
//!
//! `UpdateTable` and `CreateTable` are sent without the SDK's automatic retries: a retried update
//! whose first attempt was applied would be refused as a concurrent modification and taken for a
//! lost race, and floe would delete the metadata file that just became current. A failed attempt
//! is instead an unknown outcome ([`CatalogError::Unavailable`]), which the commit engine resolves
//! by reloading (its operation's check recognises its own commit).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use aws_sdk_glue::config::http::HttpResponse;
use aws_sdk_glue::config::retry::RetryConfig;
use aws_sdk_glue::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_glue::types::{Column, DatabaseInput, StorageDescriptor, TableInput};
use iceberg::io::FileIO;
use iceberg::spec::{NestedFieldRef, PrimitiveType, TableMetadata, Type};
use iceberg::MetadataLocation;

use super::{CatalogError, LoadedTable, Swap};
use crate::config::{Config, TableName};
use crate::storage::Storage;

/// The Glue table parameters Iceberg engines read (Iceberg Java `BaseMetastoreTableOperations`).
pub const TABLE_TYPE: &str = "table_type";
pub const ICEBERG: &str = "ICEBERG";
pub const METADATA_LOCATION: &str = "metadata_location";
pub const PREVIOUS_METADATA_LOCATION: &str = "previous_metadata_location";
/// Glue's own table type for tables whose data it does not manage.
const EXTERNAL_TABLE: &str = "EXTERNAL_TABLE";

/// How many tables' metadata a catalog keeps parsed (as [`super::sql`]).
const RECENT_TABLES: usize = 16;

/// An AWS Glue Data Catalog, plus the file IO for its tables.
#[derive(Clone)]
pub struct GlueCatalog {
    /// For reads: with the SDK's retries (transient failures are retried with backoff).
    client: aws_sdk_glue::Client,
    /// For `CreateTable` and `UpdateTable`: one attempt each (see the module comment).
    once: aws_sdk_glue::Client,
    catalog_id: Option<String>,
    name: String,
    /// "AWS Glue (region ..., endpoint ...)", for messages.
    uri: String,
    warehouse: String,
    storage: Storage,
    recent: Arc<std::sync::Mutex<HashMap<String, (String, TableMetadata)>>>,
    /// The JSON of the snapshots its last commits wrote, reused by the next metadata file.
    json: Arc<super::metadata_json::MetadataJsonCache>,
}

impl std::fmt::Debug for GlueCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlueCatalog")
            .field("uri", &self.uri)
            .field("catalog_id", &self.catalog_id)
            .field("warehouse", &self.warehouse)
            .finish()
    }
}

/// A Glue table as `GetTable` returns it, reduced to what floe needs.
struct GlueTable {
    metadata_location: String,
    version_id: Option<String>,
    /// Every parameter, carried over on update (other engines' and Glue's own).
    parameters: HashMap<String, String>,
    description: Option<String>,
}

impl GlueCatalog {
    /// Sets up the Glue client from `[catalog]` and `[aws]` (credentials: the standard AWS chain).
    /// Nothing is asked of Glue yet: the first call reports an unreachable endpoint or rejected
    /// credentials within seconds (the SDK's timeouts, [`crate::aws::sdk_config`]).
    pub async fn open(config: &Config) -> Result<GlueCatalog, CatalogError> {
        let c = &config.catalog;
        let mut aws = config.aws.clone();
        if c.region.is_some() {
            aws.region = c.region.clone();
        }
        let endpoint = c.endpoint.clone().or_else(|| aws.endpoint.clone());
        aws.endpoint = endpoint.clone();
        let sdk = crate::aws::sdk_config(&aws).await;
        let mut uri = format!("AWS Glue ({})", crate::aws::describe(&sdk, endpoint.as_deref()));
        if let Some(id) = &c.catalog_id {
            uri = format!("{uri}, catalog {id}");
        }
        if sdk.region().is_none() {
            return Err(CatalogError::Rejected {
                uri,
                message: "no AWS region: set catalog.region or aws.region (or AWS_REGION)".into(),
            });
        }
        let client = aws_sdk_glue::Client::new(&sdk);
        let once = aws_sdk_glue::Client::from_conf(
            aws_sdk_glue::config::Builder::from(&sdk).retry_config(RetryConfig::disabled()).build(),
        );
        Ok(GlueCatalog {
            client,
            once,
            catalog_id: c.catalog_id.clone(),
            name: config.catalog_name().to_owned(),
            uri,
            warehouse: config.warehouse().trim_end_matches('/').to_owned(),
            storage: Storage::from_config(config).await,
            recent: Arc::default(),
            json: Arc::new(super::metadata_json::MetadataJsonCache::new(16)),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn file_io(&self) -> &FileIO {
        self.storage.file_io()
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The default location of a new table: `<warehouse>/<database>.db/<table>`, as Iceberg
    /// Java's GlueCatalog makes it for a database without a location.
    pub fn default_location(&self, table: &TableName) -> String {
        format!("{}/{}.db/{}", self.warehouse, table.namespace_str(), table.name)
    }

    /// The Glue database of a namespace: Glue has one level.
    fn database(&self, namespace: &[String]) -> Result<String, CatalogError> {
        match namespace {
            [db] => Ok(db.clone()),
            _ => Err(CatalogError::Rejected {
                uri: self.uri.clone(),
                message: format!(
                    "namespace {:?} has {} levels; a Glue database is one level: name the table `database.table`",
                    namespace.join("."),
                    namespace.len()
                ),
            }),
        }
    }

    /// An SDK error as a catalog error: a service answer that will not change (bad credentials,
    /// no permission, invalid input) is `Rejected`; anything else (no connection, a timeout, an
    /// internal error, throttling) is `Unavailable`. An answer without an error code (an emulator
    /// or a proxy answering in another format) is judged by its HTTP status.
    fn failed<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        doing: &str,
        e: SdkError<E, HttpResponse>,
    ) -> CatalogError {
        match &e {
            SdkError::ServiceError(s) => {
                let status = s.raw().status().as_u16();
                let (code, message) = match s.err().code() {
                    Some(code) => (code.to_owned(), format!("{doing}: {}", describe(s.err()))),
                    None => {
                        let body = s.raw().body().bytes().map(String::from_utf8_lossy).unwrap_or_default();
                        let body: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
                        let body: String = body.chars().take(300).collect();
                        let code = match status {
                            401 | 403 => "UnrecognizedClientException",
                            _ => "",
                        };
                        (code.to_owned(), format!("{doing}: HTTP {status}: {body}"))
                    }
                };
                let transient = status >= 500
                    || status == 429
                    || (code.is_empty() && status < 400)
                    || code.contains("Internal")
                    || code.contains("Timeout")
                    || code.contains("Throttl")
                    || code.contains("ResourceNotReady")
                    || code.contains("Retryable")
                    || code == "ServiceUnavailable";
                if transient {
                    CatalogError::Unavailable { uri: self.uri.clone(), message }
                } else {
                    CatalogError::Rejected { uri: self.uri.clone(), message: format!("{message}{}", hint(&code)) }
                }
            }
            _ => CatalogError::Unavailable {
                uri: self.uri.clone(),
                message: format!("{doing}: {}", crate::aws::error_chain(&e)),
            },
        }
    }

    /// Creates the Glue database if it does not exist.
    pub async fn ensure_namespace(&self, namespace: &[String]) -> Result<(), CatalogError> {
        let db = self.database(namespace)?;
        let got = self.client.get_database().set_catalog_id(self.catalog_id.clone()).name(&db).send().await;
        match got {
            Ok(_) => return Ok(()),
            Err(SdkError::ServiceError(s)) if s.err().is_entity_not_found_exception() => {}
            Err(e) => return Err(self.failed(&format!("GetDatabase {db}"), e)),
        }
        let input = DatabaseInput::builder()
            .name(&db)
            .build()
            .map_err(|e| CatalogError::Rejected { uri: self.uri.clone(), message: e.to_string() })?;
        match self.client.create_database().set_catalog_id(self.catalog_id.clone()).database_input(input).send().await {
            Ok(_) => Ok(()),
            // Another process created it at the same moment: that is what we wanted.
            Err(SdkError::ServiceError(s)) if s.err().is_already_exists_exception() => Ok(()),
            Err(e) => Err(self.failed(&format!("CreateDatabase {db}"), e)),
        }
    }

    /// Every Glue database's name.
    async fn databases(&self) -> Result<Vec<String>, CatalogError> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .get_databases()
                .set_catalog_id(self.catalog_id.clone())
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| self.failed("GetDatabases", e))?;
            out.extend(page.database_list().iter().map(|d| d.name().to_owned()));
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// The Iceberg tables of a catalog (Glue tables with `table_type = ICEBERG`), optionally only
    /// those of one database, sorted.
    pub async fn list_tables(&self, namespace: Option<&str>) -> Result<Vec<TableName>, CatalogError> {
        let databases = match namespace {
            Some(ns) => vec![self.database(&ns.split('.').map(str::to_owned).collect::<Vec<_>>())?],
            None => self.databases().await?,
        };
        let mut names = Vec::new();
        for db in databases {
            let mut token = None;
            loop {
                let page = self
                    .client
                    .get_tables()
                    .set_catalog_id(self.catalog_id.clone())
                    .database_name(&db)
                    .set_next_token(token)
                    .send()
                    .await;
                let page = match page {
                    Ok(p) => p,
                    // A namespace that does not exist has no tables (as for the SQL catalog).
                    Err(SdkError::ServiceError(s)) if s.err().is_entity_not_found_exception() => break,
                    Err(e) => return Err(self.failed(&format!("GetTables {db}"), e)),
                };
                for t in page.table_list() {
                    let iceberg =
                        t.parameters().and_then(|p| p.get(TABLE_TYPE)).is_some_and(|v| v.eq_ignore_ascii_case(ICEBERG));
                    if iceberg {
                        names.push(TableName { namespace: vec![db.clone()], name: t.name().to_owned() });
                    }
                }
                token = page.next_token().map(str::to_owned);
                if token.is_none() {
                    break;
                }
            }
        }
        names.sort_by_key(|t| t.to_string());
        Ok(names)
    }

    /// The Glue table, if it exists; refuses a Glue table that is not an Iceberg table.
    async fn get(&self, table: &TableName) -> Result<Option<GlueTable>, CatalogError> {
        let db = self.database(&table.namespace)?;
        let got = self
            .client
            .get_table()
            .set_catalog_id(self.catalog_id.clone())
            .database_name(&db)
            .name(&table.name)
            .send()
            .await;
        let t = match got {
            Ok(out) => out.table.ok_or_else(|| CatalogError::Unavailable {
                uri: self.uri.clone(),
                message: format!("GetTable {table}: the answer holds no table"),
            })?,
            Err(SdkError::ServiceError(s)) if s.err().is_entity_not_found_exception() => return Ok(None),
            Err(e) => return Err(self.failed(&format!("GetTable {table}"), e)),
        };
        let parameters = t.parameters().cloned().unwrap_or_default();
        let kind = parameters.get(TABLE_TYPE).map(String::as_str).unwrap_or("");
        if !kind.eq_ignore_ascii_case(ICEBERG) {
            return Err(CatalogError::Unsupported {
                table: table.to_string(),
                message: format!(
                    "the Glue table in {} is not an Iceberg table (its parameter table_type is {kind:?}, not \"ICEBERG\"); \
                     floe reads and writes Iceberg tables only",
                    self.uri
                ),
            });
        }
        let metadata_location = parameters.get(METADATA_LOCATION).cloned().ok_or_else(|| CatalogError::Unsupported {
            table: table.to_string(),
            message: format!("the Glue table in {} has table_type ICEBERG but no metadata_location parameter", self.uri),
        })?;
        Ok(Some(GlueTable {
            metadata_location,
            version_id: t.version_id().map(str::to_owned),
            description: t.description().map(str::to_owned),
            parameters,
        }))
    }

    pub async fn table_exists(&self, table: &TableName) -> Result<bool, CatalogError> {
        Ok(self.get(table).await?.is_some())
    }

    fn no_such_table(&self, table: &TableName) -> CatalogError {
        CatalogError::NoSuchTable { table: table.to_string(), catalog: self.name.clone(), uri: self.uri.clone() }
    }

    fn recent(&self, table: &TableName, location: &str) -> Option<TableMetadata> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.get(&table.to_string()).filter(|(l, _)| l == location).map(|(_, m)| m.clone())
    }

    fn remember(&self, table: &TableName, location: &str, metadata: &TableMetadata) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let key = table.to_string();
        if recent.len() >= RECENT_TABLES && !recent.contains_key(&key) {
            recent.clear();
        }
        recent.insert(key, (location.to_owned(), metadata.clone()));
    }

    /// Loads a table's current metadata. The location is asked of Glue every time; the file is
    /// parsed unless it is the one this catalog committed last (metadata files never change, see
    /// [`super::sql::SqlCatalog::load`]).
    pub async fn load(&self, table: &TableName) -> Result<LoadedTable, CatalogError> {
        let t = self.get(table).await?.ok_or_else(|| self.no_such_table(table))?;
        let location = t.metadata_location;
        if let Some(metadata) = self.recent(table, &location) {
            return Ok(LoadedTable::new(table.clone(), location, metadata));
        }
        let metadata = super::read_metadata(self.file_io(), table, &location).await?;
        Ok(LoadedTable::new(table.clone(), location, metadata))
    }

    /// Writes the table's first metadata file and creates the Glue table pointing at it.
    pub async fn create(&self, table: &TableName, metadata: TableMetadata) -> Result<LoadedTable, CatalogError> {
        self.ensure_namespace(&table.namespace).await?;
        if self.table_exists(table).await? {
            return Err(self.already_exists(table));
        }
        let db = self.database(&table.namespace)?;
        let location = MetadataLocation::new_with_metadata(metadata.location(), &metadata);
        let refs = crate::commit::refs(&metadata);
        super::write_metadata(self.file_io(), table, &metadata, &refs, &location, &self.json).await?;
        let location = location.to_string();
        let parameters = HashMap::from([
            (TABLE_TYPE.to_owned(), ICEBERG.to_owned()),
            (METADATA_LOCATION.to_owned(), location.clone()),
        ]);
        let input = self.table_input(table, &metadata, parameters, None)?;
        let created = self
            .once
            .create_table()
            .set_catalog_id(self.catalog_id.clone())
            .database_name(&db)
            .table_input(input)
            .send()
            .await;
        match created {
            Ok(_) => Ok(LoadedTable::new(table.clone(), location, metadata)),
            Err(SdkError::ServiceError(s)) if s.err().is_already_exists_exception() => {
                // Another creator won: nobody will ever reference the file we wrote.
                let _ = self.file_io().delete(&location).await;
                Err(self.already_exists(table))
            }
            Err(e) => {
                let e = self.failed(&format!("CreateTable {table}"), e);
                // Refused: the table was not created and the file is nobody's. Otherwise the
                // outcome is unknown and the file stays (it may be the new table's).
                if !e.is_transient() {
                    let _ = self.file_io().delete(&location).await;
                }
                Err(e)
            }
        }
    }

    fn already_exists(&self, table: &TableName) -> CatalogError {
        CatalogError::AlreadyExists { table: table.to_string(), catalog: self.name.clone() }
    }

    /// The Glue table input for `metadata`: the Iceberg parameters, the table location and the
    /// columns of every schema (the current one's marked current), as Iceberg Java's
    /// `IcebergToGlueConverter` writes them, so Athena and the Glue console show the schema.
    fn table_input(
        &self,
        table: &TableName,
        metadata: &TableMetadata,
        parameters: HashMap<String, String>,
        description: Option<String>,
    ) -> Result<TableInput, CatalogError> {
        let invalid = |e: &dyn std::fmt::Display| CatalogError::Unsupported {
            table: table.to_string(),
            message: format!("cannot describe the table to Glue: {e}"),
        };
        let description = metadata.properties().get("comment").cloned().or(description);
        let storage = StorageDescriptor::builder()
            .location(metadata.location())
            .set_columns(Some(columns(metadata).map_err(|e| invalid(&e))?))
            .build();
        TableInput::builder()
            .name(&table.name)
            .table_type(EXTERNAL_TABLE)
            .set_description(description)
            .set_parameters(Some(parameters))
            .storage_descriptor(storage)
            .build()
            .map_err(|e| invalid(&e))
    }

    /// Writes `metadata` as the table's next metadata file and points the Glue table at it if, and
    /// only if, the Glue table still points at `base`'s file (see the module comment).
    pub async fn commit(
        &self,
        base: &LoadedTable,
        metadata: TableMetadata,
        refs: Option<Arc<super::RefMap>>,
    ) -> Result<Swap, CatalogError> {
        let table = &base.name;
        let Some(current) = self.get(table).await? else {
            return Ok(Swap::Conflict);
        };
        if current.metadata_location != base.metadata_location {
            return Ok(Swap::Conflict);
        }
        let version_id = current.version_id.clone().ok_or_else(|| CatalogError::Rejected {
            uri: self.uri.clone(),
            message: format!(
                "GetTable {table}: the answer has no VersionId, which floe's conditional commit needs (a Glue \
                 API that does not version tables cannot be committed to safely)"
            ),
        })?;
        let db = self.database(&table.namespace)?;
        let next = super::next_metadata_location(base, &metadata)?;
        let refs = refs.unwrap_or_else(|| Arc::new(crate::commit::refs(&metadata)));
        super::write_metadata(self.file_io(), table, &metadata, &refs, &next, &self.json).await?;
        let next = next.to_string();
        let mut parameters = current.parameters;
        parameters.insert(TABLE_TYPE.to_owned(), ICEBERG.to_owned());
        parameters.insert(METADATA_LOCATION.to_owned(), next.clone());
        parameters.insert(PREVIOUS_METADATA_LOCATION.to_owned(), base.metadata_location.clone());
        let input = self.table_input(table, &metadata, parameters, current.description)?;
        let updated = self
            .once
            .update_table()
            .set_catalog_id(self.catalog_id.clone())
            .database_name(&db)
            .table_input(input)
            .version_id(&version_id)
            // Glue keeps every earlier version of the table unless told not to; each commit would
            // add one, and the account's version limit would be reached within days of one-second
            // commits. The metadata files keep the history.
            .skip_archive(true)
            .send()
            .await;
        match updated {
            Ok(_) => {
                self.remember(table, &next, &metadata);
                Ok(Swap::Done(Box::new(LoadedTable {
                    name: table.clone(),
                    metadata_location: next,
                    metadata,
                    refs: super::Refs::known(refs),
                })))
            }
            Err(SdkError::ServiceError(s))
                if s.err().is_concurrent_modification_exception() || s.err().is_entity_not_found_exception() =>
            {
                // Refused: the table moved past that version (or was dropped). Nothing references the file.
                let _ = self.file_io().delete(&next).await;
                Ok(Swap::Conflict)
            }
            Err(e) => {
                let e = self.failed(&format!("UpdateTable {table}"), e);
                if !e.is_transient() {
                    // Refused outright (permissions, invalid input): not applied.
                    let _ = self.file_io().delete(&next).await;
                }
                // Otherwise the outcome is unknown and the file must stay: the caller reloads.
                Err(e)
            }
        }
    }
}

/// "Code: message" of a service error.
fn describe(e: &impl ProvideErrorMetadata) -> String {
    match (e.code(), e.message()) {
        (Some(code), Some(m)) => format!("{code}: {m}"),
        (Some(code), None) => code.to_owned(),
        (None, Some(m)) => m.to_owned(),
        (None, None) => "an error without code or message".to_owned(),
    }
}

/// What to do about a refusal, by its code.
fn hint(code: &str) -> &'static str {
    match code {
        "UnrecognizedClientException" | "InvalidClientTokenId" | "InvalidSignatureException"
        | "SignatureDoesNotMatch" | "ExpiredTokenException" => {
            " (the AWS credentials were not accepted: check the credential chain, aws.profile or AWS_ACCESS_KEY_ID)"
        }
        "AccessDeniedException" => " (the credentials lack a Glue permission: glue:GetTable, glue:CreateTable, glue:UpdateTable, glue:GetDatabase, glue:CreateDatabase, glue:GetTables, glue:GetDatabases)",
        _ => "",
    }
}

/// The Glue columns of a table: the current schema's fields, then those of earlier schemas that
/// are no longer current (by name, each once), with the parameters Iceberg Java sets.
fn columns(metadata: &TableMetadata) -> Result<Vec<Column>, String> {
    let current = metadata.current_schema();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut add = |field: &NestedFieldRef, is_current: bool| -> Result<(), String> {
        if !seen.insert(field.name.clone()) {
            return Ok(());
        }
        let parameters = HashMap::from([
            ("iceberg.field.id".to_owned(), field.id.to_string()),
            ("iceberg.field.optional".to_owned(), (!field.required).to_string()),
            ("iceberg.field.current".to_owned(), is_current.to_string()),
        ]);
        out.push(
            Column::builder()
                .name(&field.name)
                .r#type(glue_type(&field.field_type))
                .set_comment(field.doc.clone())
                .set_parameters(Some(parameters))
                .build()
                .map_err(|e| e.to_string())?,
        );
        Ok(())
    };
    for field in current.as_struct().fields() {
        add(field, true)?;
    }
    let mut older: Vec<_> = metadata.schemas_iter().filter(|s| s.schema_id() != current.schema_id()).collect();
    older.sort_by_key(|s| std::cmp::Reverse(s.schema_id()));
    for schema in older {
        for field in schema.as_struct().fields() {
            add(field, false)?;
        }
    }
    Ok(out)
}

/// The Glue (Hive) type name of an Iceberg type, as Iceberg Java's `IcebergToGlueConverter`
/// names it. Every Iceberg type has one: both timestamps are `timestamp` (Glue has no zoned
/// timestamp; Athena and Trino read the Iceberg schema for the zone), time and uuid are `string`.
pub fn glue_type(t: &Type) -> String {
    match t {
        Type::Primitive(p) => match p {
            PrimitiveType::Boolean => "boolean".into(),
            PrimitiveType::Int => "int".into(),
            PrimitiveType::Long => "bigint".into(),
            PrimitiveType::Float => "float".into(),
            PrimitiveType::Double => "double".into(),
            PrimitiveType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            PrimitiveType::Date => "date".into(),
            PrimitiveType::Time | PrimitiveType::String | PrimitiveType::Uuid => "string".into(),
            PrimitiveType::Timestamp
            | PrimitiveType::Timestamptz
            | PrimitiveType::TimestampNs
            | PrimitiveType::TimestamptzNs => "timestamp".into(),
            PrimitiveType::Fixed(_) | PrimitiveType::Binary => "binary".into(),
        },
        Type::Struct(s) => {
            let fields: Vec<String> =
                s.fields().iter().map(|f| format!("{}:{}", f.name, glue_type(&f.field_type))).collect();
            format!("struct<{}>", fields.join(","))
        }
        Type::List(l) => format!("array<{}>", glue_type(&l.element_field.field_type)),
        Type::Map(m) => format!("map<{},{}>", glue_type(&m.key_field.field_type), glue_type(&m.value_field.field_type)),
    }
}

#[cfg(test)]
mod tests {
    use iceberg::spec::{ListType, MapType, NestedField, StructType};

    use super::*;

    #[test]
    fn glue_types_of_every_iceberg_type() {
        let p = |t| Type::Primitive(t);
        let cases = [
            (p(PrimitiveType::Boolean), "boolean"),
            (p(PrimitiveType::Int), "int"),
            (p(PrimitiveType::Long), "bigint"),
            (p(PrimitiveType::Float), "float"),
            (p(PrimitiveType::Double), "double"),
            (p(PrimitiveType::Decimal { precision: 38, scale: 9 }), "decimal(38,9)"),
            (p(PrimitiveType::Date), "date"),
            (p(PrimitiveType::Time), "string"),
            (p(PrimitiveType::Timestamp), "timestamp"),
            (p(PrimitiveType::Timestamptz), "timestamp"),
            (p(PrimitiveType::TimestampNs), "timestamp"),
            (p(PrimitiveType::TimestamptzNs), "timestamp"),
            (p(PrimitiveType::String), "string"),
            (p(PrimitiveType::Uuid), "string"),
            (p(PrimitiveType::Fixed(16)), "binary"),
            (p(PrimitiveType::Binary), "binary"),
        ];
        for (t, want) in cases {
            assert_eq!(glue_type(&t), want, "{t:?}");
        }
        let nested = Type::Struct(StructType::new(vec![
            NestedField::optional(2, "key", p(PrimitiveType::String)).into(),
            NestedField::optional(
                3,
                "tags",
                Type::List(ListType::new(NestedField::list_element(4, p(PrimitiveType::Timestamptz), false).into())),
            )
            .into(),
            NestedField::optional(
                5,
                "m",
                Type::Map(MapType::new(
                    NestedField::map_key_element(6, p(PrimitiveType::String)).into(),
                    NestedField::map_value_element(7, p(PrimitiveType::Long), false).into(),
                )),
            )
            .into(),
        ]));
        assert_eq!(glue_type(&nested), "struct<key:string,tags:array<timestamp>,m:map<string,bigint>>");
    }
}
