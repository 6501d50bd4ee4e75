//! The SQL catalog: a database table that records each table's current metadata file, and the
//! conditional swap of that pointer.
//!
//! It keeps the database layout of Java's `JdbcCatalog` (schema version V1, with
//! `iceberg_type`), which Trino's `iceberg.catalog.type=jdbc` and pyiceberg's `SqlCatalog` read
//! and write too, so they can all share one catalog. A catalog made by older Iceberg Java (V0,
//! without `iceberg_type`) is used as it is; `floe catalog migrate` upgrades it. floe talks to the
//! database itself rather than through the `iceberg` crate's catalog, because its commit engine
//! needs the bare conditional swap ("set metadata_location to B where it is still A") on exactly
//! the metadata it checked; the crate's `update_table` reloads the table and re-applies the
//! commit on whatever it finds.

use std::sync::Arc;
use std::time::Duration;

use iceberg::io::FileIO;
use iceberg::spec::TableMetadata;
use iceberg::MetadataLocation;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

use super::{CatalogError, LoadedTable, RefMap, Refs, Swap};
use crate::config::{CatalogUri, Config, TableName};
use crate::storage::Storage;

const TABLES: &str = "iceberg_tables";
const NAMESPACE_PROPERTIES: &str = "iceberg_namespace_properties";
/// `iceberg_type` value of a table row (Java's JdbcCatalog V1 schema; views use `VIEW`).
const TABLE_RECORD_TYPE: &str = "TABLE";

/// The database layout of Java's JdbcCatalog that a catalog uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Iceberg Java before 1.5: `iceberg_tables` has no `iceberg_type` column (every row is a
    /// table). Read and written as it is; `floe catalog migrate` adds the column.
    V0,
    /// `iceberg_tables.iceberg_type` tells tables (`TABLE`, or NULL in rows from V0) from views.
    V1,
}

/// A table's metadata as this catalog last committed it: its location, the metadata, its refs.
type Recent = (String, TableMetadata, Arc<RefMap>);

/// A SQL catalog (SQLite or PostgreSQL) in the JDBC layout, plus the file IO for its warehouse.
#[derive(Clone)]
pub struct SqlCatalog {
    pool: AnyPool,
    name: String,
    uri: CatalogUri,
    warehouse: String,
    storage: Storage,
    dollar_params: bool,
    layout: Layout,
    /// The metadata this catalog last committed for each table, with its location (see
    /// [`SqlCatalog::load`]).
    recent: Arc<std::sync::Mutex<std::collections::HashMap<String, Recent>>>,
    /// The JSON of the snapshots of the metadata this catalog last wrote for each table, reused
    /// by its next commit (see [`super::metadata_json`]).
    json: Arc<super::metadata_json::MetadataJsonCache>,
}

/// How many tables' metadata a catalog keeps parsed (a loader has its table and perhaps a
/// dead-letter table; more is only `floe status` or `floe query` over many tables, which then
/// read some metadata files again).
const RECENT_TABLES: usize = 16;

impl std::fmt::Debug for SqlCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlCatalog")
            .field("name", &self.name)
            .field("uri", &self.uri)
            .field("warehouse", &self.warehouse)
            .field("layout", &self.layout)
            .finish()
    }
}

impl SqlCatalog {
    /// Connects to the configured catalog and creates its two tables if they are missing.
    pub async fn open(config: &Config) -> Result<SqlCatalog, CatalogError> {
        let storage = Storage::from_config(config).await;
        Self::connect_with(config.catalog_uri(), config.catalog_name(), &config.warehouse(), storage).await
    }

    /// A catalog whose tables are on local storage.
    pub async fn connect(uri: CatalogUri, name: &str, warehouse: &str) -> Result<SqlCatalog, CatalogError> {
        Self::connect_with(uri, name, warehouse, Storage::local()).await
    }

    pub async fn connect_with(
        uri: CatalogUri,
        name: &str,
        warehouse: &str,
        storage: Storage,
    ) -> Result<SqlCatalog, CatalogError> {
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
        Ok(SqlCatalog {
            pool,
            name: name.to_owned(),
            uri,
            warehouse: warehouse.trim_end_matches('/').to_owned(),
            storage,
            dollar_params,
            layout,
            recent: Arc::default(),
            json: Arc::new(super::metadata_json::MetadataJsonCache::new(RECENT_TABLES)),
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

    /// The metadata kept for `table` if it is that of `location`.
    fn recent(&self, table: &TableName, location: &str) -> Option<(TableMetadata, Arc<RefMap>)> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.get(&table.to_string()).filter(|(l, ..)| l == location).map(|(_, m, r)| (m.clone(), r.clone()))
    }

    /// Keeps `metadata`, just committed, as `table`'s metadata at `location`.
    fn remember(&self, table: &TableName, location: &str, metadata: &TableMetadata, refs: &Arc<RefMap>) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let key = table.to_string();
        if recent.len() >= RECENT_TABLES && !recent.contains_key(&key) {
            recent.clear();
        }
        recent.insert(key, (location.to_owned(), metadata.clone(), refs.clone()));
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
    ///
    /// The current location is always asked of the database; the metadata file is read and
    /// parsed unless that location is the one this catalog itself committed last for the table
    /// (see [`SqlCatalog::commit`]): then the metadata it wrote there is used as it is. A metadata
    /// file is never changed once written and its name is never reused (DESIGN.md §8), so that is
    /// exactly what reading the file would give, and a check against it is a check against the
    /// metadata the swap is conditioned on (DESIGN.md §2). This keeps a one-second loader from
    /// parsing, at every commit, a metadata file of megabytes that it wrote a second ago.
    pub async fn load(&self, table: &TableName) -> Result<LoadedTable, CatalogError> {
        let location = self
            .current_location(table)
            .await?
            .ok_or_else(|| CatalogError::NoSuchTable {
                table: table.to_string(),
                catalog: self.name.clone(),
                uri: self.uri.to_string(),
            })?;
        if let Some((metadata, refs)) = self.recent(table, &location) {
            return Ok(LoadedTable { name: table.clone(), metadata_location: location, metadata, refs: Refs::known(refs) });
        }
        let metadata = super::read_metadata(self.file_io(), table, &location).await?;
        Ok(LoadedTable::new(table.clone(), location, metadata))
    }

    /// Registers a new table whose first metadata is `metadata`.
    pub async fn create(&self, table: &TableName, metadata: TableMetadata) -> Result<LoadedTable, CatalogError> {
        self.ensure_namespace(&table.namespace).await?;
        if self.table_exists(table).await? {
            return Err(self.already_exists(table));
        }
        let location = MetadataLocation::new_with_metadata(metadata.location(), &metadata);
        let refs = crate::commit::refs(&metadata);
        super::write_metadata(self.file_io(), table, &metadata, &refs, &location, &self.json).await?;
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
            Ok(_) => Ok(LoadedTable { name: table.clone(), metadata_location: location, metadata, refs: Refs::known(Arc::new(refs)) }),
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
    /// the current metadata file is still `base`'s: the file holds everything (ledger
    /// properties included), so the swap pins exactly the base the check ran on. On conflict the
    /// written file is deleted, since nothing references it.
    ///
    /// `refs` are the branches and tags of `metadata` when the caller knows them (it built the
    /// metadata); else they are worked out from it. (Debug builds check the caller's.)
    pub async fn commit(&self, base: &LoadedTable, metadata: TableMetadata, refs: Option<Arc<RefMap>>) -> Result<Swap, CatalogError> {
        let table = &base.name;
        let refs = refs.unwrap_or_else(|| Arc::new(crate::commit::refs(&metadata)));
        debug_assert_eq!(*refs, crate::commit::refs(&metadata), "the refs given for the new metadata of {table}");
        let next = super::next_metadata_location(base, &metadata)?;
        super::write_metadata(self.file_io(), table, &metadata, &refs, &next, &self.json).await?;
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
            Ok(r) if r.rows_affected() == 1 => {
                self.remember(table, &next, &metadata, &refs);
                Ok(Swap::Done(Box::new(LoadedTable {
                    name: table.clone(),
                    metadata_location: next,
                    metadata,
                    refs: Refs::known(refs),
                })))
            }
            Ok(_) => {
                let _ = self.file_io().delete(&next).await;
                Ok(Swap::Conflict)
            }
            // The outcome is unknown (the update may have been applied before the connection
            // broke), so the file must stay: the caller reloads and finds out.
            Err(e) => Err(self.unavailable(e)),
        }
    }
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
