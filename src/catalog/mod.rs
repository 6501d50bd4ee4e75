//! The catalog seam: where each table's current metadata is recorded, and the one atomic,
//! conditional commit that makes new metadata current (DESIGN.md §4: the only synchronisation
//! between floe processes, maintenance and other engines).
//!
//! Every catalog floe talks to is one variant of [`Catalog`], in its own file beside this one:
//!
//! - [`sql`]: a SQL database (SQLite, PostgreSQL) in the layout of Java's `JdbcCatalog`. floe
//!   writes the next metadata file itself and swaps the pointer "where it is still the base".
//! - [`rest`]: an Iceberg REST catalog. The server writes the metadata file itself, from the
//!   updates floe sends and only if the requirements floe sends still hold; the requirements pin
//!   the base the operation's check ran on (see `rest.rs` and docs/exactly-once.md).
//! - [`glue`]: the AWS Glue Data Catalog. floe writes the metadata file and updates the Glue
//!   table's `metadata_location` with the Glue `VersionId` at which it was still the base's.
//!
//! A new catalog is a new file with a type that can load, create and `commit(base, new)`, and one
//! more arm in each `match` below. The commit engine (`commit.rs`) and everything above it only
//! see [`Catalog`], [`LoadedTable`] and [`Swap`].

pub mod glue;
pub mod metadata_json;
pub mod rest;
pub mod sql;

use std::collections::HashMap;
use std::sync::Arc;

use iceberg::compression::CompressionCodec;
use iceberg::io::{FileIO, FileIOBuilder, LocalFsStorageFactory};
use iceberg::spec::{SnapshotReference, TableMetadata};
use iceberg::MetadataLocation;

use crate::config::{CatalogKind, CatalogUri, Config, TableName};

pub use glue::GlueCatalog;
pub use rest::RestCatalog;
pub use sql::{Layout, SqlCatalog};

/// What went wrong talking to the catalog, classified so callers can act on it.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog could not be reached or answered with an error; retrying may help. For a
    /// commit this means its outcome is unknown: the caller reloads and its operation's check
    /// recognises its own commit (the snapshot's `floe.commit-id`).
    #[error("catalog {uri}: {message}")]
    Unavailable { uri: String, message: String },
    /// The catalog refused the request and will refuse it again (bad credentials, no permission,
    /// a request it cannot handle): an operator must act.
    #[error("catalog {uri}: {message}")]
    Rejected { uri: String, message: String },
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
    /// floe refuses to write metadata it could not read back, or a change the catalog cannot be
    /// told safely.
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

/// The outcome of a conditional commit. Losing the race is a normal outcome, not an error.
#[derive(Debug, Clone)]
pub enum Swap {
    /// The new metadata is now current: the table as the catalog now has it (for a REST catalog,
    /// the metadata the server wrote, which may differ from what floe built in what the server
    /// adds: timestamps, the metadata log).
    Done(Box<LoadedTable>),
    /// Someone else committed first: the base is no longer current. Nothing was changed.
    Conflict,
}

/// A table as loaded: its current metadata and where that metadata lives.
#[derive(Debug, Clone)]
pub struct LoadedTable {
    pub name: TableName,
    pub metadata_location: String,
    pub metadata: TableMetadata,
    /// The metadata's branches and tags (see [`LoadedTable::refs`]).
    pub refs: Refs,
}

/// A table's branches and tags, by name.
pub type RefMap = HashMap<String, SnapshotReference>;

/// The branches and tags of a [`LoadedTable`]'s metadata: known when floe built that metadata
/// itself, else worked out on first use. (The iceberg crate keeps them private; working them out
/// goes through the crate's serialization, which copies every snapshot: a cost that grows with
/// the table's history, which a commit should not pay every time.)
#[derive(Clone, Default)]
pub struct Refs(std::sync::OnceLock<Arc<RefMap>>);

impl Refs {
    /// Refs known to be those of the metadata they go with.
    pub fn known(refs: Arc<RefMap>) -> Refs {
        Refs(std::sync::OnceLock::from(refs))
    }
}

impl std::fmt::Debug for Refs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.get() {
            Some(r) => r.fmt(f),
            None => f.write_str("(not worked out yet)"),
        }
    }
}

impl LoadedTable {
    pub fn new(name: TableName, metadata_location: String, metadata: TableMetadata) -> LoadedTable {
        LoadedTable { name, metadata_location, metadata, refs: Refs::default() }
    }

    /// The metadata's branches and tags.
    pub fn refs(&self) -> &Arc<RefMap> {
        self.refs.0.get_or_init(|| Arc::new(crate::commit::refs(&self.metadata)))
    }
}

/// One catalog, whichever kind the configuration names.
#[derive(Clone, Debug)]
pub enum Catalog {
    Sql(Box<SqlCatalog>),
    Rest(RestCatalog),
    Glue(Box<GlueCatalog>),
}

impl Catalog {
    /// Connects to the configured catalog (`[catalog] type`, SQL by default).
    pub async fn open(config: &Config) -> Result<Catalog, CatalogError> {
        match config.catalog.kind {
            CatalogKind::Sql => Ok(Catalog::Sql(Box::new(SqlCatalog::open(config).await?))),
            CatalogKind::Rest => Ok(Catalog::Rest(RestCatalog::open(config).await?)),
            CatalogKind::Glue => Ok(Catalog::Glue(Box::new(GlueCatalog::open(config).await?))),
        }
    }

    /// Connects to a SQL catalog (SQLite or PostgreSQL) directly.
    pub async fn connect(uri: CatalogUri, name: &str, warehouse: &str) -> Result<Catalog, CatalogError> {
        Ok(Catalog::Sql(Box::new(SqlCatalog::connect(uri, name, warehouse).await?)))
    }

    /// The catalog's name (the SQL catalog's `catalog_name`, the REST catalog's warehouse, the
    /// configured `[catalog] name` for Glue).
    pub fn name(&self) -> &str {
        match self {
            Catalog::Sql(c) => c.name(),
            Catalog::Rest(c) => c.name(),
            Catalog::Glue(c) => c.name(),
        }
    }

    /// Where the catalog is, for messages (passwords redacted).
    pub fn uri(&self) -> String {
        match self {
            Catalog::Sql(c) => c.uri().to_string(),
            Catalog::Rest(c) => c.uri().to_string(),
            Catalog::Glue(c) => c.uri().to_string(),
        }
    }

    /// The file IO for the tables' data, manifests and metadata files.
    pub fn file_io(&self) -> &FileIO {
        match self {
            Catalog::Sql(c) => c.file_io(),
            Catalog::Rest(c) => c.file_io(),
            Catalog::Glue(c) => c.file_io(),
        }
    }

    /// The object store the tables' files are on, with its checks (see [`crate::storage`]).
    pub fn storage(&self) -> &crate::storage::Storage {
        match self {
            Catalog::Sql(c) => c.storage(),
            Catalog::Rest(c) => c.storage(),
            Catalog::Glue(c) => c.storage(),
        }
    }

    /// Whether a commit is conditioned on the whole base metadata (table properties included).
    /// A SQL catalog swaps whole metadata files, so it is. A REST catalog's requirements cannot
    /// assert a property, so a commit that changes floe's ledger must also move `main` (whose
    /// snapshot id the requirements do assert): see [`crate::commit::Operation::prepare`].
    pub fn pins_properties(&self) -> bool {
        match self {
            Catalog::Sql(_) | Catalog::Glue(_) => true,
            Catalog::Rest(_) => false,
        }
    }

    /// The default location of a new table.
    pub fn default_location(&self, table: &TableName) -> String {
        match self {
            Catalog::Sql(c) => c.default_location(table),
            Catalog::Rest(c) => c.default_location(table),
            Catalog::Glue(c) => c.default_location(table),
        }
    }

    /// Creates the namespace if it does not exist.
    pub async fn ensure_namespace(&self, namespace: &[String]) -> Result<(), CatalogError> {
        match self {
            Catalog::Sql(c) => c.ensure_namespace(namespace).await,
            Catalog::Rest(c) => c.ensure_namespace(namespace).await,
            Catalog::Glue(c) => c.ensure_namespace(namespace).await,
        }
    }

    /// All tables of this catalog, optionally only those of one namespace, sorted.
    pub async fn list_tables(&self, namespace: Option<&str>) -> Result<Vec<TableName>, CatalogError> {
        match self {
            Catalog::Sql(c) => c.list_tables(namespace).await,
            Catalog::Rest(c) => c.list_tables(namespace).await,
            Catalog::Glue(c) => c.list_tables(namespace).await,
        }
    }

    pub async fn table_exists(&self, table: &TableName) -> Result<bool, CatalogError> {
        match self {
            Catalog::Sql(c) => c.table_exists(table).await,
            Catalog::Rest(c) => c.table_exists(table).await,
            Catalog::Glue(c) => c.table_exists(table).await,
        }
    }

    /// Loads a table's current metadata.
    pub async fn load(&self, table: &TableName) -> Result<LoadedTable, CatalogError> {
        match self {
            Catalog::Sql(c) => c.load(table).await,
            Catalog::Rest(c) => c.load(table).await,
            Catalog::Glue(c) => c.load(table).await,
        }
    }

    /// Registers a new table whose first metadata is `metadata` (a REST catalog builds its own
    /// from the schema, spec, sort order, location and properties of it).
    pub async fn create(&self, table: &TableName, metadata: TableMetadata) -> Result<LoadedTable, CatalogError> {
        match self {
            Catalog::Sql(c) => c.create(table, metadata).await,
            Catalog::Rest(c) => c.create(table, metadata).await,
            Catalog::Glue(c) => c.create(table, metadata).await,
        }
    }

    /// Makes `new` (built on `base`) the table's current metadata if, and only if, the table is
    /// still at `base` as far as the operation's check is concerned. This is the only
    /// synchronisation between writers (DESIGN.md §2, §4).
    ///
    /// `Err(Unavailable)` means the outcome is unknown (the commit may have been applied before
    /// the connection broke): the caller must not delete what the commit references; it reloads
    /// and lets its operation's check find out.
    ///
    /// `refs` are `new`'s branches and tags when the caller knows them (it built `new`), else
    /// they are worked out from `new` where they are needed.
    pub async fn commit(&self, base: &LoadedTable, new: TableMetadata, refs: Option<Arc<RefMap>>) -> Result<Swap, CatalogError> {
        match self {
            Catalog::Sql(c) => c.commit(base, new, refs).await,
            Catalog::Rest(c) => c.commit(base, new).await,
            Catalog::Glue(c) => c.commit(base, new, refs).await,
        }
    }
}

/// The file IO for local warehouses (`file://` and plain paths).
pub fn local_file_io() -> FileIO {
    FileIOBuilder::new(Arc::new(LocalFsStorageFactory)).build()
}

/// The location of the metadata file that follows `base`'s, for `metadata`.
pub fn next_metadata_location(base: &LoadedTable, metadata: &TableMetadata) -> Result<MetadataLocation, CatalogError> {
    Ok(base
        .metadata_location
        .parse::<MetadataLocation>()
        .map_err(|e| CatalogError::Metadata {
            table: base.name.to_string(),
            location: base.metadata_location.clone(),
            message: format!("cannot derive the next metadata file name: {e}"),
        })?
        .with_next_version()
        .with_new_metadata(metadata))
}

/// Reads and parses a metadata file. Storage trouble is transient (`Metadata`); a file that was
/// read but does not parse is not (`Unreadable`), so nobody retries it forever.
pub async fn read_metadata(file_io: &FileIO, table: &TableName, location: &str) -> Result<TableMetadata, CatalogError> {
    let storage = |e: iceberg::Error| CatalogError::Metadata {
        table: table.to_string(),
        location: location.to_owned(),
        message: e.to_string(),
    };
    let bytes = file_io.new_input(location).map_err(storage)?.read().await.map_err(storage)?;
    if bytes.starts_with(&[0x1F, 0x8B]) {
        // Gzip-compressed metadata (`write.metadata.compression-codec = gzip`): the crate
        // decompresses it; its only failures left are a corrupt file or one that does not parse.
        return TableMetadata::read_from(file_io, location).await.map_err(|e| {
            if e.kind() == iceberg::ErrorKind::DataInvalid {
                CatalogError::Unreadable {
                    table: table.to_string(),
                    location: location.to_owned(),
                    message: e.to_string(),
                }
            } else {
                storage(e)
            }
        });
    }
    parse_metadata(&bytes).map_err(|message| CatalogError::Unreadable {
        table: table.to_string(),
        location: location.to_owned(),
        message,
    })
}

/// Parses metadata JSON (a file's, or a REST catalog's answer).
pub fn parse_metadata(json: &[u8]) -> Result<TableMetadata, String> {
    serde_json::from_slice::<TableMetadata>(json).map_err(|e| {
        let hint = if e.to_string().contains("recursion limit") {
            " (types nested deeper than floe reads: at most 40 nested ROWs)"
        } else {
            ""
        };
        format!("{e}{hint}")
    })
}

/// Writes `metadata` to `location`, refusing metadata floe could not parse again (a file floe
/// cannot read back would lock floe out of the table for good).
pub async fn write_metadata(
    file_io: &FileIO,
    table: &TableName,
    metadata: &TableMetadata,
    refs: &RefMap,
    location: &MetadataLocation,
    cache: &metadata_json::MetadataJsonCache,
) -> Result<(), CatalogError> {
    check_readable(table, metadata)?;
    let failed = |e: iceberg::Error| CatalogError::Metadata {
        table: table.to_string(),
        location: location.to_string(),
        message: e.to_string(),
    };
    if location.compression_codec() != CompressionCodec::None {
        // Gzip: the crate compresses (a table without snapshots then has no
        // current-snapshot-id, which only old Iceberg Java, 0.13 and before, minds).
        return metadata.write_to(file_io, location).await.map_err(failed);
    }
    let json = cache.json(&table.to_string(), metadata, refs).map_err(|e| CatalogError::Metadata {
        table: table.to_string(),
        location: location.to_string(),
        message: format!("cannot serialize the metadata: {e}"),
    })?;
    file_io
        .new_output(location.to_string())
        .map_err(failed)?
        .write(json.into())
        .await
        .map_err(failed)
}

/// Refuses metadata floe could not read back (see [`crate::table::check_readable`]).
pub fn check_readable(table: &TableName, metadata: &TableMetadata) -> Result<(), CatalogError> {
    crate::table::check_readable(metadata).map_err(|message| CatalogError::Unsupported {
        table: table.to_string(),
        message,
    })
}

/// The metadata file's JSON. A table without a current snapshot says `"current-snapshot-id": -1`,
/// as Iceberg Java writes it: Java 0.13 cannot parse the file without the field ("Cannot parse
/// missing long current-snapshot-id"), and the crate leaves it out. Every reader maps -1 to
/// "no snapshot". (A committing catalog uses a [`metadata_json::MetadataJsonCache`] instead, which
/// reuses the JSON of the snapshots its previous commit wrote.)
pub fn metadata_json(metadata: &TableMetadata) -> Result<Vec<u8>, serde_json::Error> {
    metadata_json::to_json(metadata, &crate::commit::refs(metadata), &mut metadata_json::SnapshotJson::default())
}

/// The crate's serialization of `metadata`, with `"current-snapshot-id": -1` when there is no
/// current snapshot (see [`metadata_json`]).
fn crate_json(metadata: &TableMetadata) -> Result<Vec<u8>, serde_json::Error> {
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
