//! The catalog: where each table's current metadata file is recorded, and the atomic swap that
//! makes a new metadata file current.
//!
//! The SQL catalog keeps the database layout of Java's `JdbcCatalog` (schema version V1, with
//! `iceberg_type`), which Trino's `iceberg.catalog.type=jdbc` and pyiceberg's `SqlCatalog` read
//! and write too, so they can all share one catalog. A catalog made by older Iceberg Java (V0,
//! without `iceberg_type`) is used as it is; `floe catalog migrate` upgrades it. floe talks to the
//! database itself rather than through the `iceberg` crate's catalog, because its commit engine needs the bare conditional swap
//! ("set metadata_location to B where it is still A") on exactly the metadata it checked; the
//! crate's `update_table` reloads the table and re-applies the commit on whatever it finds.

use std::time::Duration;

use iceberg::io::FileIO;
use iceberg::compression::CompressionCodec;
use iceberg::spec::TableMetadata;
use iceberg::MetadataLocation;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

use crate::config::{CatalogUri, Config, TableName};
use crate::storage::Storage;

const TABLES: &str = "iceberg_tables";
const NAMESPACE_PROPERTIES: &str = "iceberg_namespace_properties";
/// `iceberg_type` value of a table row (Java's JdbcCatalog V1 schema; views use `VIEW`).
const TABLE_RECORD_TYPE: &str = "TABLE";

/// What went wrong talking to the catalog, classified so callers can act on it.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The database could not be reached or answered with an error; retrying may help.
    #[error("catalog {uri}: {message}")]
    Unavailable { uri: String, message: String },
    #[error("table {table} does not exist in catalog {catalog:?} ({uri}); create it with `floe table create`")]
    NoSuchTable {
        table: String,
        catalog: String,
        uri: String,
    },
    #[error("table {table} already exists in catalog {catalog:?}")]
    AlreadyExists { table: String, catalog: String },
    /// Reading or writing a metadata file failed.
    #[error("table {table}: metadata file {location}: {message}")]
    Metadata {
        table: String,
        location: String,
        message: String,
    },
    /// The metadata file was read but cannot be parsed: reading it again will not help.
    #[error(
        "table {table}: metadata file {location} cannot be parsed by floe: {message}; other tables are not \
         affected, and engines that read this table (Trino, Spark) can drop or repair it"
    )]
    Unreadable {
        table: String,
        location: String,
        message: String,
    },
    /// floe refuses to write metadata it could not read back.
    #[error("table {table}: {message}")]
    Unsupported { table: String, message: String },
}

impl CatalogError {
    /// Whether the same call may succeed later (network, database restart, storage hiccup).
    /// Metadata that cannot be parsed, or that floe refuses to write, is permanent.
    pub fn is_transient(&self) -> bool {
        matches!(self, CatalogError::Unavailable { .. } | CatalogError::Metadata { .. })
    }
}

/// The outcome of a conditional swap. Losing the race is a normal outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    /// The new metadata file is now current.
    Done,
    /// Someone else committed first: the current location is no longer the expected one.
    Conflict,
}

/// A table as loaded: its current metadata and where that metadata lives.
#[derive(Debug, Clone)]
pub struct LoadedTable {
    pub name: TableName,
    pub metadata_location: String,
    pub metadata: TableMetadata,
}

/// The database layout of Java's JdbcCatalog that a catalog uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Iceberg Java before 1.5: `iceberg_tables` has no `iceberg_type` column (every row is a
    /// table). Read and written as it is; `floe catalog migrate` adds the column.
    V0,
    /// `iceberg_tables.iceberg_type` tells tables (`TABLE`, or NULL in rows from V0) from views.
    V1,
}

/// A SQL catalog (SQLite or PostgreSQL) in the JDBC layout, plus the file IO for its warehouse.
#[derive(Clone)]
pub struct Catalog {
    pool: AnyPool,
    name: String,
    uri: CatalogUri,
    warehouse: String,
    storage: Storage,
    dollar_params: bool,
    layout: Layout,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("name", &self.name)
            .field("uri", &self.uri)
            .field("warehouse", &self.warehouse)
            .field("layout", &self.layout)
            .finish()
    }
}

impl Catalog {
    /// Connects to the configured catalog and creates its two tables if they are missing.
    pub async fn open(config: &Config) -> Result<Catalog, CatalogError> {
        let storage = Storage::from_config(config).await;
        Self::connect_with(config.catalog_uri(), config.catalog_name(), &config.warehouse(), storage).await
    }

    /// A catalog whose tables are on local storage.
    pub async fn connect(uri: CatalogUri, name: &str, warehouse: &str) -> Result<Catalog, CatalogError> {
        Self::connect_with(uri, name, warehouse, Storage::local()).await
    }

    pub async fn connect_with(
        uri: CatalogUri,
        name: &str,
        warehouse: &str,
        storage: Storage,
    ) -> Result<Catalog, CatalogError> {
        install_default_drivers();
        let unavailable = |e: &dyn std::fmt::Display| CatalogError::Unavailable {
            uri: uri.to_string(),
            message: e.to_string(),
        };
        if let CatalogUri::Sqlite(path) = &uri
            && let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| CatalogError::Unavailable {
                uri: uri.to_string(),
                message: format!("cannot create directory {}: {e}", dir.display()),
            })?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            // Short: an outage is reported (with its cause) within seconds, and retried by the caller.
            .acquire_timeout(Duration::from_secs(3))
            .connect(&uri.connect_string())
            .await
            .map_err(|e| CatalogError::Unavailable {
                uri: uri.to_string(),
                message: format!("cannot connect: {}", crate::config::redact_uri(&e.to_string())),
            })?;
        let dollar_params = matches!(uri, CatalogUri::Postgres(_));
        for ddl in [
            format!(
                "CREATE TABLE IF NOT EXISTS {TABLES} (
                    catalog_name VARCHAR(255) NOT NULL,
                    table_namespace VARCHAR(255) NOT NULL,
                    table_name VARCHAR(255) NOT NULL,
                    metadata_location VARCHAR(1000),
                    previous_metadata_location VARCHAR(1000),
                    iceberg_type VARCHAR(5),
                    PRIMARY KEY (catalog_name, table_namespace, table_name))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {NAMESPACE_PROPERTIES} (
                    catalog_name VARCHAR(255) NOT NULL,
                    namespace VARCHAR(255) NOT NULL,
                    property_key VARCHAR(255),
                    property_value VARCHAR(1000),
                    PRIMARY KEY (catalog_name, namespace, property_key))"
            ),
        ] {
            sqlx::query(&ddl).execute(&pool).await.map_err(|e| unavailable(&e))?;
        }
        let layout = detect_layout(&pool).await.map_err(|e| unavailable(&e))?;
        if layout == Layout::V0 {
            tracing::info!(
                uri = %uri,
                "catalog has the JDBC V0 layout of older Iceberg Java (no iceberg_type column); floe reads and \
                 writes it as it is, `floe catalog migrate` upgrades it"
            );
        }
        Ok(Catalog {
            pool,
            name: name.to_owned(),
            uri,
            warehouse: warehouse.trim_end_matches('/').to_owned(),
            storage,
            dollar_params,
            layout,
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Upgrades a V0 catalog to the V1 layout, as Iceberg Java does when told to
    /// (`jdbc.schema-version=V1`): adds `iceberg_type`; existing rows keep NULL, which means a
    /// table. Returns whether anything changed. Engines that read V0 keep working.
    pub async fn migrate(&mut self) -> Result<bool, CatalogError> {
        if self.layout == Layout::V1 {
            return Ok(false);
        }
        let added = sqlx::query(&format!("ALTER TABLE {TABLES} ADD COLUMN iceberg_type VARCHAR(5)"))
            .execute(&self.pool)
            .await;
        if let Err(e) = added {
            if detect_layout(&self.pool).await.map_err(|e| self.unavailable(e))? != Layout::V1 {
                return Err(self.unavailable(e));
            }
            // Someone else migrated it meanwhile: that is what was asked.
            self.layout = Layout::V1;
            return Ok(false);
        }
        self.layout = Layout::V1;
        Ok(true)
    }

    /// `AND <the row is a table>` for queries on `iceberg_tables`.
    fn only_tables(&self) -> String {
        match self.layout {
            Layout::V0 => String::new(),
            Layout::V1 => format!(" AND (iceberg_type = '{TABLE_RECORD_TYPE}' OR iceberg_type IS NULL)"),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn uri(&self) -> &CatalogUri {
        &self.uri
    }

    pub fn file_io(&self) -> &FileIO {
        self.storage.file_io()
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The default location of a new table: `<warehouse>/<namespace parts>/<table>`.
    pub fn default_location(&self, table: &TableName) -> String {
        format!("{}/{}/{}", self.warehouse, table.namespace.join("/"), table.name)
    }

    /// Rewrites `?` placeholders as `$1, $2, ...` for PostgreSQL.
    fn sql(&self, query: &str) -> String {
        if !self.dollar_params {
            return query.to_owned();
        }
        let mut out = String::with_capacity(query.len() + 8);
        let mut n = 0;
        for c in query.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> CatalogError {
        let mut message = e.to_string();
        // The pool only says that it timed out; say why no connection could be made.
        if message.contains("timed out")
            && let CatalogUri::Postgres(uri) = &self.uri
            && let Some(cause) = probe_tcp(uri)
        {
            message = format!("{message}: {cause}");
        }
        CatalogError::Unavailable {
            uri: self.uri.to_string(),
            message,
        }
    }

    /// Creates the namespace if it does not exist (the way JdbcCatalog does: an `exists` property).
    pub async fn ensure_namespace(&self, namespace: &[String]) -> Result<(), CatalogError> {
        let ns = namespace.join(".");
        let existing = sqlx::query(&self.sql(&format!(
            "SELECT 1 FROM {NAMESPACE_PROPERTIES} WHERE catalog_name = ? AND namespace = ?
             UNION SELECT 1 FROM {TABLES} WHERE catalog_name = ? AND table_namespace = ?"
        )))
        .bind(&self.name)
        .bind(&ns)
        .bind(&self.name)
        .bind(&ns)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.unavailable(e))?;
        if existing.is_some() {
            return Ok(());
        }
        let inserted = sqlx::query(&self.sql(&format!(
            "INSERT INTO {NAMESPACE_PROPERTIES} (catalog_name, namespace, property_key, property_value)
             VALUES (?, ?, 'exists', 'true')"
        )))
        .bind(&self.name)
        .bind(&ns)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(()),
            // Another process created it at the same moment: that is what we wanted.
            Err(e) if is_unique_violation(&e) => Ok(()),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// All tables of this catalog, optionally only those of one namespace, sorted.
    pub async fn list_tables(&self, namespace: Option<&str>) -> Result<Vec<TableName>, CatalogError> {
        let rows = match namespace {
            Some(ns) => sqlx::query(&self.sql(&format!(
                "SELECT table_namespace, table_name FROM {TABLES}
                 WHERE catalog_name = ? AND table_namespace = ?{}",
                self.only_tables()
            )))
            .bind(&self.name)
            .bind(ns)
            .fetch_all(&self.pool)
            .await,
            None => sqlx::query(&self.sql(&format!(
                "SELECT table_namespace, table_name FROM {TABLES}
                 WHERE catalog_name = ?{}",
                self.only_tables()
            )))
            .bind(&self.name)
            .fetch_all(&self.pool)
            .await,
        }
        .map_err(|e| self.unavailable(e))?;
        let mut names = Vec::with_capacity(rows.len());
        for row in rows {
            let ns: String = row.try_get(0).map_err(|e| self.unavailable(e))?;
            let name: String = row.try_get(1).map_err(|e| self.unavailable(e))?;
            names.push(TableName {
                namespace: ns.split('.').map(str::to_owned).collect(),
                name,
            });
        }
        names.sort_by_key(|t| t.to_string());
        Ok(names)
    }

    /// The current metadata location of a table, if it exists.
    pub async fn current_location(&self, table: &TableName) -> Result<Option<String>, CatalogError> {
        let row = sqlx::query(&self.sql(&format!(
            "SELECT metadata_location FROM {TABLES}
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?{}",
            self.only_tables()
        )))
        .bind(&self.name)
        .bind(table.namespace_str())
        .bind(&table.name)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.unavailable(e))?;
        match row {
            Some(row) => Ok(Some(row.try_get::<String, _>(0).map_err(|e| self.unavailable(e))?)),
            None => Ok(None),
        }
    }

    pub async fn table_exists(&self, table: &TableName) -> Result<bool, CatalogError> {
        Ok(self.current_location(table).await?.is_some())
    }

    /// Loads a table's current metadata.
    pub async fn load(&self, table: &TableName) -> Result<LoadedTable, CatalogError> {
        let location = self
            .current_location(table)
            .await?
            .ok_or_else(|| CatalogError::NoSuchTable {
                table: table.to_string(),
                catalog: self.name.clone(),
                uri: self.uri.to_string(),
            })?;
        let metadata = self.read_metadata(table, &location).await?;
        Ok(LoadedTable {
            name: table.clone(),
            metadata_location: location,
            metadata,
        })
    }

    /// Registers a new table whose first metadata is `metadata`.
    pub async fn create(&self, table: &TableName, metadata: TableMetadata) -> Result<LoadedTable, CatalogError> {
        self.ensure_namespace(&table.namespace).await?;
        if self.table_exists(table).await? {
            return Err(self.already_exists(table));
        }
        let location = MetadataLocation::new_with_metadata(metadata.location(), &metadata);
        self.write_metadata(table, &metadata, &location).await?;
        let location = location.to_string();
        let insert = match self.layout {
            Layout::V0 => format!(
                "INSERT INTO {TABLES}
                   (catalog_name, table_namespace, table_name, metadata_location, previous_metadata_location)
                 VALUES (?, ?, ?, ?, NULL)"
            ),
            Layout::V1 => format!(
                "INSERT INTO {TABLES}
                   (catalog_name, table_namespace, table_name, metadata_location, previous_metadata_location, iceberg_type)
                 VALUES (?, ?, ?, ?, NULL, '{TABLE_RECORD_TYPE}')"
            ),
        };
        let inserted = sqlx::query(&self.sql(&insert))
            .bind(&self.name)
            .bind(table.namespace_str())
            .bind(&table.name)
            .bind(&location)
            .execute(&self.pool)
            .await;
        match inserted {
            Ok(_) => Ok(LoadedTable {
                name: table.clone(),
                metadata_location: location,
                metadata,
            }),
            Err(e) => {
                // Nobody will ever reference the file we wrote.
                let _ = self.file_io().delete(&location).await;
                if is_unique_violation(&e) {
                    Err(self.already_exists(table))
                } else {
                    Err(self.unavailable(e))
                }
            }
        }
    }

    fn already_exists(&self, table: &TableName) -> CatalogError {
        CatalogError::AlreadyExists {
            table: table.to_string(),
            catalog: self.name.clone(),
        }
    }

    /// Writes `metadata` as the table's next metadata file and makes it current if, and only if,
    /// the current metadata is still `base`. This is the only synchronisation between writers.
    /// On conflict the written file is deleted, since nothing references it.
    pub async fn swap(
        &self,
        base: &LoadedTable,
        metadata: &TableMetadata,
    ) -> Result<(String, Swap), CatalogError> {
        let table = &base.name;
        let next = base
            .metadata_location
            .parse::<MetadataLocation>()
            .map_err(|e| CatalogError::Metadata {
                table: table.to_string(),
                location: base.metadata_location.clone(),
                message: format!("cannot derive the next metadata file name: {e}"),
            })?
            .with_next_version()
            .with_new_metadata(metadata);
        self.write_metadata(table, metadata, &next).await?;
        let next = next.to_string();
        let updated = sqlx::query(&self.sql(&format!(
            "UPDATE {TABLES} SET metadata_location = ?, previous_metadata_location = ?
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?
               AND metadata_location = ?"
        )))
        .bind(&next)
        .bind(&base.metadata_location)
        .bind(&self.name)
        .bind(table.namespace_str())
        .bind(&table.name)
        .bind(&base.metadata_location)
        .execute(&self.pool)
        .await;
        match updated {
            Ok(r) if r.rows_affected() == 1 => Ok((next, Swap::Done)),
            Ok(_) => {
                let _ = self.file_io().delete(&next).await;
                Ok((next, Swap::Conflict))
            }
            // The outcome is unknown (the update may have been applied before the connection
            // broke), so the file must stay: the caller reloads and finds out.
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// Reads and parses a metadata file. Storage trouble is transient (`Metadata`); a file that
    /// was read but does not parse is not (`Unreadable`), so nobody retries it forever.
    async fn read_metadata(&self, table: &TableName, location: &str) -> Result<TableMetadata, CatalogError> {
        let storage = |e: iceberg::Error| CatalogError::Metadata {
            table: table.to_string(),
            location: location.to_owned(),
            message: e.to_string(),
        };
        let bytes = self.file_io().new_input(location).map_err(storage)?.read().await.map_err(storage)?;
        let unreadable = |message: String| CatalogError::Unreadable {
            table: table.to_string(),
            location: location.to_owned(),
            message,
        };
        if bytes.starts_with(&[0x1F, 0x8B]) {
            // Gzip-compressed metadata (`write.metadata.compression-codec = gzip`): the crate
            // decompresses it; its only failures left are a corrupt file or one that does not parse.
            return TableMetadata::read_from(self.file_io(), location).await.map_err(|e| {
                if e.kind() == iceberg::ErrorKind::DataInvalid {
                    unreadable(e.to_string())
                } else {
                    storage(e)
                }
            });
        }
        serde_json::from_slice::<TableMetadata>(&bytes).map_err(|e| {
            let hint = if e.to_string().contains("recursion limit") {
                " (types nested deeper than floe reads: at most 40 nested ROWs)"
            } else {
                ""
            };
            unreadable(format!("{e}{hint}"))
        })
    }

    async fn write_metadata(
        &self,
        table: &TableName,
        metadata: &TableMetadata,
        location: &MetadataLocation,
    ) -> Result<(), CatalogError> {
        // A file floe could not parse again would lock floe out of the table for good.
        crate::table::check_readable(metadata).map_err(|message| CatalogError::Unsupported {
            table: table.to_string(),
            message,
        })?;
        let failed = |e: iceberg::Error| CatalogError::Metadata {
            table: table.to_string(),
            location: location.to_string(),
            message: e.to_string(),
        };
        if location.compression_codec() != CompressionCodec::None {
            // Gzip: the crate compresses (a table without snapshots then has no
            // current-snapshot-id, which only old Iceberg Java, 0.13 and before, minds).
            return metadata.write_to(self.file_io(), location).await.map_err(failed);
        }
        let json = metadata_json(metadata).map_err(|e| CatalogError::Metadata {
            table: table.to_string(),
            location: location.to_string(),
            message: format!("cannot serialize the metadata: {e}"),
        })?;
        self.file_io()
            .new_output(location.to_string())
            .map_err(failed)?
            .write(json.into())
            .await
            .map_err(failed)
    }
}

/// The metadata file's JSON. A table without a current snapshot says `"current-snapshot-id": -1`,
/// as Iceberg Java writes it: Java 0.13 cannot parse the file without the field ("Cannot parse
/// missing long current-snapshot-id"), and the crate leaves it out. Every reader maps -1 to
/// "no snapshot".
pub fn metadata_json(metadata: &TableMetadata) -> Result<Vec<u8>, serde_json::Error> {
    let json = serde_json::to_vec(metadata)?;
    if metadata.current_snapshot_id().is_some() {
        return Ok(json);
    }
    // The crate skips the field when there is no snapshot, so the key cannot be there twice.
    debug_assert_eq!(json.first(), Some(&b'{'));
    let field = br#""current-snapshot-id":-1"#;
    let mut out = Vec::with_capacity(json.len() + field.len() + 1);
    out.push(b'{');
    out.extend_from_slice(field);
    if json.len() > 2 {
        out.push(b',');
    }
    out.extend_from_slice(&json[1..]);
    Ok(out)
}

/// V1 if `iceberg_tables` has the `iceberg_type` column, else V0.
async fn detect_layout(pool: &AnyPool) -> Result<Layout, sqlx::Error> {
    match sqlx::query(&format!("SELECT iceberg_type FROM {TABLES} WHERE 1 = 0")).fetch_optional(pool).await {
        Ok(_) => Ok(Layout::V1),
        // The table is there (created above if it was not), so the column is what is missing.
        Err(sqlx::Error::Database(_)) => {
            sqlx::query(&format!("SELECT table_name FROM {TABLES} WHERE 1 = 0")).fetch_optional(pool).await?;
            Ok(Layout::V0)
        }
        Err(e) => Err(e),
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || db.code().is_some_and(|c| c == "23505" || c == "1555" || c == "2067")
        }
        _ => false,
    }
}

/// Why a TCP connection to the database server of `uri` cannot be made, if it cannot (a quick,
/// synchronous probe for error messages: "connection refused" says more than "pool timed out").
fn probe_tcp(uri: &str) -> Option<String> {
    use std::net::ToSocketAddrs;
    let url = url::Url::parse(uri).ok()?;
    let host = url.host_str()?.to_owned();
    let port = url.port().unwrap_or(5432);
    let addr = (host.as_str(), port).to_socket_addrs().ok()?.next()?;
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(_) => None,
        Err(e) => Some(format!("connecting to {host}:{port}: {e}")),
    }
}
