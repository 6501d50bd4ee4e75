//! `floe query`: read-only SQL over the catalog's tables with DataFusion (the `query` feature).
//! Each table is registered as `<namespace>.<table>` at its current snapshot; only the tables a
//! statement names are loaded.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{Query, SetExpr, Statement as SqlStatement};
use datafusion::sql::TableReference;
use iceberg::{NamespaceIdent, TableIdent};
use iceberg_datafusion::IcebergStaticTableProvider;

use crate::catalog::{Catalog, CatalogError};
use crate::config::TableName;

/// DataFusion's default catalog and schema, where unqualified names resolve.
const DEFAULT_CATALOG: &str = "datafusion";
const DEFAULT_SCHEMA: &str = "public";

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("table {table}: {message}")]
    Table { table: String, message: String },
    #[error("{0}")]
    Sql(String),
    /// The statement would change something: a table, a file, the session.
    #[error(
        "floe query only reads: {statement} statements are refused. It runs SELECT, WITH, VALUES, EXPLAIN \
         (without ANALYZE of a change), SHOW and DESCRIBE; change tables with `floe table alter` or another engine"
    )]
    NotReadOnly { statement: String },
    #[error("floe query runs one statement at a time; got {count}")]
    SeveralStatements { count: usize },
}

/// Runs one read-only statement and returns its rows. A statement that is not a query is
/// refused before DataFusion sees it: DataFusion would happily drop its in-memory registration of
/// a table, create one, or `COPY` rows into a file, none of which `floe query` is for.
pub async fn query(catalog: &Catalog, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    let statement = read_only_statement(sql)?;
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
    // Only the tables the statement names are loaded, so a table floe cannot read breaks only
    // the statements about it. information_schema (SHOW TABLES, DESCRIBE's columns) lists every
    // table; there an unreadable one is left out, with a warning naming it and why.
    let references = ctx
        .state()
        .resolve_table_references(&statement)
        .map_err(|e| QueryError::Sql(e.to_string()))?;
    let everything = references.iter().any(|r| r.schema() == Some("information_schema"));
    let runtime = iceberg::Runtime::try_current().map_err(|e| QueryError::Sql(e.to_string()))?;
    for name in catalog.list_tables(None).await? {
        if !everything && !references.iter().any(|r| names(r, &name)) {
            continue;
        }
        match register(&ctx, catalog, &runtime, &name).await {
            Ok(()) => {}
            Err(e) if everything => {
                tracing::warn!(table = %name, error = %e, "table left out of the query: floe cannot read it");
            }
            Err(e) => return Err(e),
        }
    }
    let plan = ctx
        .state()
        .statement_to_plan(statement)
        .await
        .map_err(|e| QueryError::Sql(e.to_string()))?;
    // The same rule, checked again on the plan by DataFusion itself.
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| QueryError::Sql(e.to_string()))?;
    let df = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(|e| QueryError::Sql(e.to_string()))?;
    df.collect().await.map_err(|e| QueryError::Sql(e.to_string()))
}

/// Whether a table reference in the statement means this table. Tables are registered as
/// `datafusion."<namespace>".<table>`; a bare name resolves to DataFusion's default schema.
fn names(reference: &TableReference, table: &TableName) -> bool {
    let resolved = reference.clone().resolve(DEFAULT_CATALOG, DEFAULT_SCHEMA);
    resolved.catalog.as_ref() == DEFAULT_CATALOG
        && resolved.schema.as_ref() == table.namespace_str()
        && resolved.table.as_ref() == table.name
}

/// Loads one table and registers it at its current snapshot.
async fn register(
    ctx: &SessionContext,
    catalog: &Catalog,
    runtime: &iceberg::Runtime,
    name: &TableName,
) -> Result<(), QueryError> {
    let default_catalog = ctx
        .catalog(DEFAULT_CATALOG)
        .expect("DataFusion always has its default catalog");
    let loaded = catalog.load(name).await?;
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
    Ok(())
}

/// Parses `sql` as DataFusion does and returns its one statement if it only reads.
pub fn read_only_statement(sql: &str) -> Result<DfStatement, QueryError> {
    let mut statements = DFParser::parse_sql(sql).map_err(|e| QueryError::Sql(e.to_string()))?;
    if statements.len() != 1 {
        return Err(QueryError::SeveralStatements { count: statements.len() });
    }
    let statement = statements.pop_front().expect("one statement");
    match refused(&statement) {
        Some(kind) => Err(QueryError::NotReadOnly { statement: kind }),
        None => Ok(statement),
    }
}

/// What kind of statement this is (`DROP TABLE`, `COPY`) if it is not a read-only one.
fn refused(statement: &DfStatement) -> Option<String> {
    match statement {
        DfStatement::Statement(s) => refused_sql(s),
        DfStatement::Explain(e) if e.analyze => refused(&e.statement),
        // A plain EXPLAIN only plans, whatever it explains.
        DfStatement::Explain(_) => None,
        DfStatement::CopyTo(_) => Some("COPY".into()),
        DfStatement::CreateExternalTable(_) => Some("CREATE EXTERNAL TABLE".into()),
        DfStatement::Reset(_) => Some("RESET".into()),
    }
}

fn refused_sql(statement: &SqlStatement) -> Option<String> {
    match statement {
        SqlStatement::Query(q) => refused_query(q).then(|| "SELECT ... INTO or a data-changing WITH".into()),
        SqlStatement::Explain { analyze: true, statement, .. } => refused_sql(statement),
        SqlStatement::Explain { .. }
        | SqlStatement::ExplainTable { .. }
        | SqlStatement::ShowFunctions { .. }
        | SqlStatement::ShowVariable { .. }
        | SqlStatement::ShowStatus { .. }
        | SqlStatement::ShowVariables { .. }
        | SqlStatement::ShowCreate { .. }
        | SqlStatement::ShowColumns { .. }
        | SqlStatement::ShowDatabases { .. }
        | SqlStatement::ShowSchemas { .. }
        | SqlStatement::ShowTables { .. }
        | SqlStatement::ShowViews { .. }
        | SqlStatement::ShowCollation { .. } => None,
        other => Some(leading_keywords(&other.to_string())),
    }
}

/// Whether a query writes: `SELECT ... INTO t` creates a table, and a body or CTE may be an
/// INSERT, UPDATE, DELETE or MERGE.
fn refused_query(q: &Query) -> bool {
    let ctes = q.with.iter().flat_map(|w| &w.cte_tables);
    ctes.into_iter().any(|c| refused_query(&c.query)) || refused_set_expr(&q.body)
}

fn refused_set_expr(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(s) => s.into.is_some(),
        SetExpr::Query(q) => refused_query(q),
        SetExpr::SetOperation { left, right, .. } => refused_set_expr(left) || refused_set_expr(right),
        SetExpr::Values(_) | SetExpr::Table(_) => false,
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => true,
    }
}

/// `DROP TABLE` of `DROP TABLE default.events`: the statement's leading keywords (at most three).
fn leading_keywords(rendered: &str) -> String {
    let words: Vec<&str> = rendered
        .split_whitespace()
        .take_while(|w| w.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .take(3)
        .collect();
    if words.is_empty() {
        rendered.split_whitespace().next().unwrap_or("this").to_owned()
    } else {
        words.join(" ")
    }
}

/// Rows as an aligned text table.
pub fn format(batches: &[RecordBatch]) -> String {
    datafusion::arrow::util::pretty::pretty_format_batches(batches)
        .map(|t| t.to_string())
        .unwrap_or_else(|e| format!("<cannot format the result: {e}>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(sql: &str) -> Result<(), String> {
        read_only_statement(sql).map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn queries_pass() {
        for sql in [
            "SELECT 1",
            "select count(*) from \"default\".events where id > 3",
            "WITH t AS (SELECT 1 AS x) SELECT x FROM t UNION ALL SELECT 2",
            "VALUES (1), (2)",
            "EXPLAIN SELECT 1",
            "EXPLAIN ANALYZE SELECT 1",
            "SHOW TABLES",
            "SHOW COLUMNS FROM \"default\".events",
            "DESCRIBE \"default\".events",
            "SELECT * FROM information_schema.tables",
        ] {
            assert_eq!(verdict(sql), Ok(()), "{sql}");
        }
    }

    #[test]
    fn changes_are_refused_with_their_kind() {
        for (sql, kind) in [
            ("DROP TABLE \"default\".events", "DROP TABLE"),
            ("drop table if exists x", "DROP TABLE IF"),
            ("INSERT INTO t VALUES (1)", "INSERT INTO"),
            ("DELETE FROM t", "DELETE FROM"),
            ("UPDATE t SET a = 1", "UPDATE"),
            ("COPY (SELECT 1) TO '/tmp/x.csv'", "COPY"),
            ("CREATE TABLE t AS SELECT 1", "CREATE TABLE"),
            ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
            ("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/tmp/x.csv'", "CREATE EXTERNAL TABLE"),
            ("SET datafusion.execution.batch_size = 1", "SET"),
            ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", "INSERT INTO"),
            ("SELECT 1 INTO t", "SELECT ... INTO"),
        ] {
            let err = verdict(sql).expect_err(sql);
            assert!(err.starts_with(&format!("floe query only reads: {kind}")), "{sql}: {err}");
        }
        assert!(verdict("SELECT 1; DROP TABLE t").unwrap_err().contains("one statement at a time; got 2"));
    }
}
