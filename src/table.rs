//! Tables: created from Trino `CREATE TABLE` statements, described and listed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use iceberg::spec::{
    FormatVersion, ListType, MapType, NestedField, NestedFieldRef, PrimitiveType, Schema,
    SortOrder, StructType, TableMetadata, TableMetadataBuilder, Transform, Type,
    UnboundPartitionSpec,
};

use crate::catalog::{Catalog, CatalogError, LoadedTable};
use crate::config::TableName;
use crate::ddl::{self, ColumnDef, CreateTable, DataType, DdlError, PartitionField};

/// Table properties floe sets on every table it creates.
pub const WRITE_FORMAT: (&str, &str) = ("write.format.default", "parquet");
pub const PARQUET_CODEC: (&str, &str) = ("write.parquet.compression-codec", "zstd");

/// Why a table could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{rendered}")]
    Ddl { rendered: String, error: DdlError },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("cannot build table metadata for {table}: {message}")]
    Metadata { table: String, message: String },
    #[error("table {table}: {error}")]
    Storage { table: String, error: crate::storage::StorageError },
}

/// What `create` did.
#[derive(Debug)]
pub enum Created {
    New(LoadedTable),
    /// `IF NOT EXISTS` and the table was already there; it was left unchanged.
    Existed(LoadedTable),
}

/// Creates the table a Trino `CREATE TABLE` statement describes.
pub async fn create_from_sql(catalog: &Catalog, sql: &str) -> Result<Created, TableError> {
    let stmt = ddl::parse_create_table(sql).map_err(|error| TableError::Ddl {
        rendered: error.render(sql),
        error,
    })?;
    let name = TableName::from_parts(&stmt.name);
    if stmt.if_not_exists && catalog.table_exists(&name).await? {
        return Ok(Created::Existed(catalog.load(&name).await?));
    }
    let location = match stmt.location() {
        Some(loc) => crate::config::location_uri(loc),
        None => catalog.default_location(&name),
    };
    let metadata = build_metadata(&stmt, location).map_err(|e| match e {
        BuildError::Ddl(error) => TableError::Ddl {
            rendered: error.render(sql),
            error,
        },
        BuildError::Iceberg(message) => TableError::Metadata {
            table: name.to_string(),
            message,
        },
    })?;
    // Refused now, before anything is written: an unsupported scheme, a missing bucket, rejected
    // credentials.
    // (A REST catalog chooses the location itself; `floe run` checks the table's real one.)
    if metadata.location() != crate::catalog::rest::SERVER_CHOOSES {
        catalog
            .storage()
            .check_writable(metadata.location())
            .await
            .map_err(|error| TableError::Storage { table: name.to_string(), error })?;
    }
    match catalog.create(&name, metadata).await {
        Ok(t) => Ok(Created::New(t)),
        // Lost a race with another creator: IF NOT EXISTS is satisfied all the same.
        Err(CatalogError::AlreadyExists { .. }) if stmt.if_not_exists => {
            Ok(Created::Existed(catalog.load(&name).await?))
        }
        Err(e) => Err(e.into()),
    }
}

enum BuildError {
    Ddl(DdlError),
    Iceberg(String),
}

/// The first metadata of a new table: schema, partition spec, format v2, write properties.
fn build_metadata(stmt: &CreateTable, location: String) -> Result<TableMetadata, BuildError> {
    let partitioning = stmt.partitioning().map_err(BuildError::Ddl)?;
    let schema = schema_from_columns(&stmt.columns).map_err(BuildError::Iceberg)?;
    let spec = partition_spec(&schema, &partitioning).map_err(BuildError::Iceberg)?;
    let properties = HashMap::from([
        (WRITE_FORMAT.0.to_owned(), WRITE_FORMAT.1.to_owned()),
        (PARQUET_CODEC.0.to_owned(), PARQUET_CODEC.1.to_owned()),
    ]);
    TableMetadataBuilder::new(
        schema,
        spec,
        SortOrder::unsorted_order(),
        location,
        FormatVersion::V2,
        properties,
    )
    .and_then(|b| b.build())
    .map(|r| r.metadata)
    .map_err(|e| BuildError::Iceberg(e.to_string()))
}

/// Assigns field ids depth-first in declaration order: top-level columns first get 1..=n, the way
/// Trino numbers them, then nested fields.
pub(crate) struct IdAssigner {
    next: i32,
}

impl IdAssigner {
    pub(crate) fn new(first: i32) -> Self {
        IdAssigner { next: first }
    }

    pub(crate) fn take(&mut self) -> i32 {
        let id = self.next;
        self.next += 1;
        id
    }
}

/// The Iceberg schema for a column list.
pub fn schema_from_columns(columns: &[ColumnDef]) -> Result<Schema, String> {
    let mut ids = IdAssigner::new(1);
    let top_ids: Vec<i32> = columns.iter().map(|_| ids.take()).collect();
    let fields: Vec<NestedFieldRef> = columns
        .iter()
        .zip(top_ids)
        .map(|(col, id)| {
            let ty = iceberg_type(&col.data_type, &mut ids);
            let mut field = NestedField::new(id, &col.name, ty, col.not_null);
            if let Some(doc) = &col.comment {
                field = field.with_doc(doc);
            }
            Arc::new(field)
        })
        .collect();
    Schema::builder()
        .with_fields(fields)
        .build()
        .map_err(|e| e.to_string())
}

/// Maps a Trino type to Iceberg the way Trino's Iceberg connector does. Nested fields are
/// optional (Trino cannot declare them NOT NULL); map keys are required (Iceberg demands it).
pub(crate) fn iceberg_type(ty: &DataType, ids: &mut IdAssigner) -> Type {
    match ty {
        DataType::Boolean => Type::Primitive(PrimitiveType::Boolean),
        DataType::Integer => Type::Primitive(PrimitiveType::Int),
        DataType::Bigint => Type::Primitive(PrimitiveType::Long),
        DataType::Real => Type::Primitive(PrimitiveType::Float),
        DataType::Double => Type::Primitive(PrimitiveType::Double),
        DataType::Decimal { precision, scale } => Type::Primitive(PrimitiveType::Decimal {
            precision: *precision,
            scale: *scale,
        }),
        DataType::Varchar => Type::Primitive(PrimitiveType::String),
        DataType::Varbinary => Type::Primitive(PrimitiveType::Binary),
        DataType::Date => Type::Primitive(PrimitiveType::Date),
        DataType::Time => Type::Primitive(PrimitiveType::Time),
        DataType::Timestamp => Type::Primitive(PrimitiveType::Timestamp),
        DataType::TimestampTz => Type::Primitive(PrimitiveType::Timestamptz),
        DataType::Uuid => Type::Primitive(PrimitiveType::Uuid),
        DataType::Array(element) => {
            let id = ids.take();
            let element = iceberg_type(element, ids);
            Type::List(ListType::new(Arc::new(NestedField::list_element(id, element, false))))
        }
        DataType::Map(key, value) => {
            let key_id = ids.take();
            let value_id = ids.take();
            let key = iceberg_type(key, ids);
            let value = iceberg_type(value, ids);
            Type::Map(MapType::new(
                Arc::new(NestedField::map_key_element(key_id, key)),
                Arc::new(NestedField::map_value_element(value_id, value, false)),
            ))
        }
        DataType::Row(fields) => {
            let field_ids: Vec<i32> = fields.iter().map(|_| ids.take()).collect();
            let nested = fields
                .iter()
                .zip(field_ids)
                .map(|(f, id)| Arc::new(NestedField::optional(id, &f.name, iceberg_type(&f.data_type, ids))))
                .collect();
            Type::Struct(StructType::new(nested))
        }
    }
}

/// The partition spec; field names follow Trino's (`ts_day`, `id_bucket`, `s_trunc`, `col`).
pub(crate) fn partition_spec(schema: &Schema, fields: &[PartitionField]) -> Result<UnboundPartitionSpec, String> {
    let mut builder = UnboundPartitionSpec::builder().with_spec_id(0);
    for f in fields {
        let source = schema
            .field_by_name(&f.column)
            .ok_or_else(|| format!("partition column {:?} is not a column", f.column))?;
        let (transform, name) = match f.transform {
            ddl::Transform::Identity => (Transform::Identity, f.column.clone()),
            ddl::Transform::Year => (Transform::Year, format!("{}_year", f.column)),
            ddl::Transform::Month => (Transform::Month, format!("{}_month", f.column)),
            ddl::Transform::Day => (Transform::Day, format!("{}_day", f.column)),
            ddl::Transform::Hour => (Transform::Hour, format!("{}_hour", f.column)),
            ddl::Transform::Bucket(n) => (Transform::Bucket(n), format!("{}_bucket", f.column)),
            ddl::Transform::Truncate(w) => (Transform::Truncate(w), format!("{}_trunc", f.column)),
        };
        builder = builder
            .add_partition_field(source.id, name, transform)
            .map_err(|e| e.to_string())?;
    }
    Ok(builder.build())
}

/// JSON containers a type opens in the table's metadata beneath the field holding it (see
/// [`ddl::MAX_TYPE_JSON_DEPTH`]).
pub fn type_json_depth(ty: &Type) -> usize {
    match ty {
        Type::Primitive(_) => 0,
        Type::Struct(s) => {
            ddl::ROW_JSON_DEPTH + s.fields().iter().map(|f| type_json_depth(&f.field_type)).max().unwrap_or(0)
        }
        Type::List(l) => 1 + type_json_depth(&l.element_field.field_type),
        Type::Map(m) => 1 + type_json_depth(&m.key_field.field_type).max(type_json_depth(&m.value_field.field_type)),
    }
}

/// Whether floe can parse this metadata once written: no column of any schema nests deeper than
/// its JSON parser goes. Checked before every metadata file floe writes.
pub fn check_readable(metadata: &TableMetadata) -> Result<(), String> {
    for schema in metadata.schemas_iter() {
        for field in schema.as_struct().fields() {
            let depth = type_json_depth(&field.field_type);
            if depth > ddl::MAX_TYPE_JSON_DEPTH {
                return Err(format!(
                    "column {:?} (schema {}) nests its type {depth} JSON levels deep, more than the {} that floe \
                     can read back from table metadata (at most 40 nested ROWs); the metadata was not written",
                    field.name,
                    schema.schema_id(),
                    ddl::MAX_TYPE_JSON_DEPTH
                ));
            }
        }
    }
    Ok(())
}

/// Whether floe may append to this table. Checked when `floe run` starts, before anything is
/// read or written: floe writes format v2 only. A v1 table has no sequence numbers and keeps the
/// spec in another form; a v3 table needs row lineage (`first-row-id` on every snapshot and data
/// file, `next-row-id`), which floe does not write yet.
pub fn check_writable(metadata: &TableMetadata) -> Result<(), String> {
    match metadata.format_version() {
        FormatVersion::V2 => Ok(()),
        FormatVersion::V1 => Err(
            "the table is Iceberg format v1; floe writes format v2 tables only. Upgrade it (pyiceberg \
             `table.transaction().upgrade_table_version(2)`, Spark `ALTER TABLE ... SET TBLPROPERTIES \
             ('format-version'='2')`) or create a v2 table with `floe table create`"
                .into(),
        ),
        other => Err(format!(
            "the table is Iceberg format v{}; floe writes format v2 tables only (v3 row lineage, \
             first-row-id and next-row-id, is not written by floe yet). Load into a v2 table (`floe table create` \
             makes one)",
            other as u8
        )),
    }
}

/// A human description of a table: schema with field ids, partition spec, snapshots, properties.
pub fn describe(table: &LoadedTable) -> String {
    let m = &table.metadata;
    let mut out = String::new();
    let _ = writeln!(out, "table     {}", table.name);
    let _ = writeln!(out, "location  {}", m.location());
    let _ = writeln!(out, "metadata  {}", table.metadata_location);
    let _ = writeln!(out, "format    v{}", m.format_version() as u8);
    let _ = writeln!(out, "uuid      {}", m.uuid());
    let schema = m.current_schema();
    let _ = writeln!(out, "\nschema {} (id, name, type):", schema.schema_id());
    for field in schema.as_struct().fields() {
        describe_field(&mut out, field, 1);
    }
    let spec = m.default_partition_spec();
    let _ = writeln!(out, "\npartition spec {}:", spec.spec_id());
    if spec.fields().is_empty() {
        let _ = writeln!(out, "  (unpartitioned)");
    }
    for f in spec.fields() {
        let source = schema
            .name_by_field_id(f.source_id)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("<field {}>", f.source_id));
        let _ = writeln!(out, "  {:>4}  {}  {}({})", f.field_id, f.name, f.transform, source);
    }
    let snapshots = m.snapshots().len();
    let _ = writeln!(out, "\nsnapshots {snapshots}");
    if let Some(s) = m.current_snapshot() {
        let _ = writeln!(
            out,
            "current   {} ({}, sequence {}, {})",
            s.snapshot_id(),
            s.summary().operation.as_str(),
            s.sequence_number(),
            chrono::DateTime::from_timestamp_millis(s.timestamp_ms())
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
        );
    }
    let ledgers = crate::ledger::all_ledgers(m.properties());
    if !ledgers.is_empty() {
        let _ = writeln!(out, "\nledgers (next offset to read, per pipeline):");
        for (pipeline, ledger) in ledgers {
            match ledger {
                Ok(l) => {
                    let entries: Vec<String> = l.entries().map(|(tp, o)| format!("{tp}={o}")).collect();
                    let _ = writeln!(out, "  {pipeline}: {}", entries.join(" "));
                }
                Err(e) => {
                    let _ = writeln!(out, "  {pipeline}: unreadable: {e}");
                }
            }
        }
    }
    let mut props: Vec<_> = m.properties().iter().collect();
    props.sort();
    let _ = writeln!(out, "\nproperties:");
    for (k, v) in props {
        let _ = writeln!(out, "  {k} = {v}");
    }
    out
}

fn describe_field(out: &mut String, field: &NestedField, depth: usize) {
    let indent = "  ".repeat(depth);
    let req = if field.required { " NOT NULL" } else { "" };
    let doc = field
        .doc
        .as_deref()
        .map(|d| format!("  -- {d}"))
        .unwrap_or_default();
    let _ = writeln!(out, "{indent}{:>4}  {}  {}{req}{doc}", field.id, field.name, type_name(&field.field_type));
    match field.field_type.as_ref() {
        Type::Struct(s) => {
            for f in s.fields() {
                describe_field(out, f, depth + 1);
            }
        }
        Type::List(l) => describe_field(out, &l.element_field, depth + 1),
        Type::Map(m) => {
            describe_field(out, &m.key_field, depth + 1);
            describe_field(out, &m.value_field, depth + 1);
        }
        Type::Primitive(_) => {}
    }
}

fn type_name(ty: &Type) -> String {
    match ty {
        Type::Primitive(p) => p.to_string(),
        Type::Struct(_) => "struct".into(),
        Type::List(_) => "list".into(),
        Type::Map(_) => "map".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table whose only column is `ty`, serialized as floe would write it and parsed back.
    fn round_trips(ty: Type) -> Result<(), String> {
        let schema = Schema::builder()
            .with_fields(vec![Arc::new(NestedField::optional(1, "c", ty))])
            .build()
            .map_err(|e| e.to_string())?;
        let metadata = TableMetadataBuilder::new(
            schema,
            UnboundPartitionSpec::builder().build(),
            SortOrder::unsorted_order(),
            "file:///tmp/t".into(),
            FormatVersion::V2,
            HashMap::new(),
        )
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?
        .metadata;
        let json = serde_json::to_vec(&metadata).unwrap();
        serde_json::from_slice::<TableMetadata>(&json).map(|_| ()).map_err(|e| e.to_string())
    }

    fn rows(levels: usize, ids: &mut i32) -> Type {
        let mut ty = Type::Primitive(PrimitiveType::Long);
        for _ in 0..levels {
            *ids += 1;
            ty = Type::Struct(StructType::new(vec![Arc::new(NestedField::optional(*ids, "f", ty))]));
        }
        ty
    }

    fn lists(levels: usize, ids: &mut i32) -> Type {
        let mut ty = Type::Primitive(PrimitiveType::Long);
        for _ in 0..levels {
            *ids += 1;
            ty = Type::List(ListType::new(Arc::new(NestedField::list_element(*ids, ty, false))));
        }
        ty
    }

    /// The depth budget is exactly the parser's: the deepest type it allows parses back, one level
    /// more does not.
    #[test]
    fn json_depth_budget_matches_the_parser() {
        let mut ids = 100;
        let ok = rows(40, &mut ids);
        assert_eq!(type_json_depth(&ok), 120);
        assert_eq!(round_trips(ok), Ok(()));
        let deep = rows(41, &mut ids);
        assert!(type_json_depth(&deep) > ddl::MAX_TYPE_JSON_DEPTH);
        assert!(round_trips(deep).unwrap_err().contains("recursion limit"));

        let ok = lists(ddl::MAX_TYPE_JSON_DEPTH, &mut ids);
        assert_eq!(type_json_depth(&ok), ddl::MAX_TYPE_JSON_DEPTH);
        assert_eq!(round_trips(ok), Ok(()));
        let deep = lists(ddl::MAX_TYPE_JSON_DEPTH + 1, &mut ids);
        assert!(round_trips(deep).unwrap_err().contains("recursion limit"));
    }

    fn create(sql: &str) -> Result<TableMetadata, String> {
        let stmt = ddl::parse_create_table(sql).map_err(|e| e.render(sql))?;
        build_metadata(&stmt, "file:///tmp/t".into()).map_err(|e| match e {
            BuildError::Ddl(e) => e.render(sql),
            BuildError::Iceberg(m) => m,
        })
    }

    fn nested_rows(levels: usize) -> String {
        format!("{}BIGINT{}", "ROW(f ".repeat(levels), ")".repeat(levels))
    }

    #[test]
    fn a_row_too_deep_to_read_back_is_refused() {
        let m = create(&format!("CREATE TABLE t (id BIGINT, deep {})", nested_rows(40))).unwrap();
        assert_eq!(check_readable(&m), Ok(()));
        let err = create(&format!("CREATE TABLE t (id BIGINT, deep {})", nested_rows(41))).unwrap_err();
        assert!(err.contains("do not fit the table's metadata") && err.contains("at most 40 nested ROWs"), "{err}");
        // ARRAY and MAP count one each: 60 ARRAYs around a ROW are fine.
        let arrays = format!("{}ROW(a BIGINT){}", "ARRAY(".repeat(60), ")".repeat(60));
        assert!(create(&format!("CREATE TABLE t (x {arrays})")).is_ok());
    }

    #[test]
    fn check_readable_catches_a_deep_schema_from_any_path() {
        let mut ids = 1;
        let schema = Schema::builder()
            .with_fields(vec![Arc::new(NestedField::optional(1, "deep", rows(41, &mut ids)))])
            .build()
            .unwrap();
        let m = TableMetadataBuilder::new(
            schema,
            UnboundPartitionSpec::builder().build(),
            SortOrder::unsorted_order(),
            "file:///tmp/t".into(),
            FormatVersion::V2,
            HashMap::new(),
        )
        .unwrap()
        .build()
        .unwrap()
        .metadata;
        let err = check_readable(&m).unwrap_err();
        assert!(err.contains("column \"deep\"") && err.contains("123 JSON levels"), "{err}");
    }

    #[test]
    fn only_format_v2_is_writable() {
        let m = create("CREATE TABLE t (id BIGINT)").unwrap();
        assert_eq!(check_writable(&m), Ok(()));
        for (version, word) in [(FormatVersion::V1, "v1"), (FormatVersion::V3, "v3")] {
            let other = TableMetadataBuilder::new(
                m.current_schema().as_ref().clone(),
                UnboundPartitionSpec::builder().build(),
                SortOrder::unsorted_order(),
                "file:///tmp/t".into(),
                version,
                HashMap::new(),
            )
            .unwrap()
            .build()
            .unwrap()
            .metadata;
            let err = check_writable(&other).unwrap_err();
            assert!(err.contains(&format!("format {word}")) && err.contains("v2 tables only"), "{err}");
        }
    }
}
