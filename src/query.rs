//! `floe query`: read-only SQL over the catalog's tables with DataFusion (the `query` feature).
//! Each table is registered as `<namespace>.<table>` at its current snapshot.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::prelude::{SessionConfig, SessionContext};
use iceberg::{NamespaceIdent, TableIdent};
use iceberg_datafusion::IcebergStaticTableProvider;

use crate::catalog::{Catalog, CatalogError};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("table {table}: {message}")]
    Table { table: String, message: String },
    #[error("{0}")]
    Sql(String),
}

/// Runs one read-only statement and returns its rows.
pub async fn query(catalog: &Catalog, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
    let default_catalog = ctx
        .catalog("datafusion")
        .expect("DataFusion always has its default catalog");
    let runtime = iceberg::Runtime::try_current().map_err(|e| QueryError::Sql(e.to_string()))?;
    for name in catalog.list_tables(None).await? {
        let loaded = catalog.load(&name).await?;
        let table_err = |e: &dyn std::fmt::Display| QueryError::Table {
            table: name.to_string(),
            message: e.to_string(),
        };
        let ident = TableIdent::new(
            NamespaceIdent::from_vec(name.namespace.clone()).map_err(|e| table_err(&e))?,
            name.name.clone(),
        );
        let table = iceberg::table::Table::builder()
            .file_io(catalog.file_io().clone())
            .metadata_location(loaded.metadata_location)
            .metadata(loaded.metadata)
            .identifier(ident)
            .readonly(true)
            .runtime(runtime.clone())
            .build()
            .map_err(|e| table_err(&e))?;
        let provider = IcebergStaticTableProvider::try_new_from_table(table)
            .await
            .map_err(|e| table_err(&e))?;
        let schema_name = name.namespace_str();
        let schema = match default_catalog.schema(&schema_name) {
            Some(s) => s,
            None => {
                let s: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
                default_catalog
                    .register_schema(&schema_name, s.clone())
                    .map_err(|e| table_err(&e))?;
                s
            }
        };
        schema
            .register_table(name.name.clone(), Arc::new(provider))
            .map_err(|e| table_err(&e))?;
    }
    let df = ctx.sql(sql).await.map_err(|e| QueryError::Sql(e.to_string()))?;
    df.collect().await.map_err(|e| QueryError::Sql(e.to_string()))
}

/// Rows as an aligned text table.
pub fn format(batches: &[RecordBatch]) -> String {
    datafusion::arrow::util::pretty::pretty_format_batches(batches)
        .map(|t| t.to_string())
        .unwrap_or_else(|e| format!("<cannot format the result: {e}>"))
}
