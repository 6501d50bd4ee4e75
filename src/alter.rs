//! `floe table alter`: Trino `ALTER TABLE` statements as schema commits through the commit engine.
//!
//! Columns keep their field ids across renames and type widenings (that is what lets a running
//! loader and every reader keep the data); new fields get ids above the table's `last-column-id`,
//! nested ones included (DESIGN.md §8).

use std::sync::Arc;

use iceberg::io::FileIO;
use iceberg::spec::{NestedField, NestedFieldRef, PrimitiveType, Schema, StructType, TableMetadataBuilder, Type};

use crate::catalog::LoadedTable;
use crate::commit::{Check, CommitError, Operation, Staged};
use crate::ddl::{AlterAction, PropertyValue};

/// One ALTER TABLE statement as an operation.
pub struct Alter {
    pub action: AlterAction,
    /// What the check decided, for the outcome message.
    description: String,
}

impl Alter {
    pub fn new(action: AlterAction) -> Self {
        Alter {
            action,
            description: String::new(),
        }
    }
}

/// Ok(what changed) or Err(why it was refused); a no-op under IF [NOT] EXISTS is Ok.
pub type AlterOutcome = Result<String, String>;

impl Operation for Alter {
    type Outcome = AlterOutcome;

    fn check(&mut self, base: &LoadedTable) -> Result<Check<AlterOutcome>, CommitError> {
        match plan(&self.action, base) {
            Ok(Plan::Change(description)) => {
                self.description = description;
                Ok(Check::Proceed)
            }
            Ok(Plan::Nothing(why)) => Ok(Check::Stop(Ok(why))),
            Err(refused) => Ok(Check::Stop(Err(refused))),
        }
    }

    async fn build(&mut self, base: &LoadedTable, _: &FileIO) -> Result<Staged, CommitError> {
        let invalid = |message: String| CommitError::Invalid {
            table: base.name.to_string(),
            message,
        };
        let m = &base.metadata;
        let builder = TableMetadataBuilder::new_from_metadata(m.clone(), Some(base.metadata_location.clone()));
        let builder = match &self.action {
            AlterAction::SetProperties(props) => {
                let mut builder = builder;
                for (key, value) in props {
                    if key == "partitioning" {
                        let columns = columns_of(m.current_schema());
                        let fields = crate::ddl::parse_partitioning(value, &columns).map_err(|e| invalid(e.to_string()))?;
                        let spec = crate::table::partition_spec(m.current_schema(), &fields).map_err(invalid)?;
                        builder = builder.add_default_partition_spec(spec).map_err(|e| invalid(e.to_string()))?;
                    }
                }
                builder
            }
            action => {
                let schema = new_schema(action, m.current_schema(), m.last_column_id()).map_err(invalid)?;
                builder.add_current_schema(schema).map_err(|e| invalid(e.to_string()))?
            }
        };
        let metadata = builder.build().map_err(|e| invalid(e.to_string()))?.metadata;
        Ok(Staged {
            metadata,
            attempt_files: Vec::new(),
            // A schema or partitioning change leaves the branches and tags as they are.
            refs: Some(base.refs().clone()),
        })
    }

    fn committed(&mut self, new: &LoadedTable, _: u32) -> AlterOutcome {
        Ok(format!(
            "{} (schema {}, spec {})",
            self.description,
            new.metadata.current_schema_id(),
            new.metadata.default_partition_spec_id()
        ))
    }
}

enum Plan {
    Change(String),
    Nothing(String),
}

/// Validates the statement against the current table.
fn plan(action: &AlterAction, base: &LoadedTable) -> Result<Plan, String> {
    let schema = base.metadata.current_schema();
    let shown = |path: &[String]| path.join(".");
    match action {
        AlterAction::AddColumn { if_not_exists, path, not_null, .. } => {
            if find(schema.as_struct(), path).is_some() {
                return if *if_not_exists {
                    Ok(Plan::Nothing(format!("column {} already exists; nothing to do", shown(path))))
                } else {
                    Err(format!("column {} already exists", shown(path)))
                };
            }
            if *not_null {
                return Err(format!(
                    "cannot add {} as NOT NULL: rows already in the table have no value for it; add it nullable",
                    shown(path)
                ));
            }
            parent_struct(schema.as_struct(), path)?;
            Ok(Plan::Change(format!("added column {}", shown(path))))
        }
        AlterAction::DropColumn { if_exists, path } => {
            let Some(field) = find(schema.as_struct(), path) else {
                return if *if_exists {
                    Ok(Plan::Nothing(format!("column {} does not exist; nothing to do", shown(path))))
                } else {
                    Err(format!("column {} does not exist", shown(path)))
                };
            };
            let spec = base.metadata.default_partition_spec();
            if spec.fields().iter().any(|f| f.source_id == field.id) {
                return Err(format!(
                    "column {} is a partition source of the current partition spec; change the partitioning first",
                    shown(path)
                ));
            }
            if path.len() == 1 && schema.as_struct().fields().len() == 1 {
                return Err("cannot drop the only column".into());
            }
            Ok(Plan::Change(format!("dropped column {}", shown(path))))
        }
        AlterAction::RenameColumn { if_exists, path, new_name } => {
            if find(schema.as_struct(), path).is_none() {
                return if *if_exists {
                    Ok(Plan::Nothing(format!("column {} does not exist; nothing to do", shown(path))))
                } else {
                    Err(format!("column {} does not exist", shown(path)))
                };
            }
            let mut sibling = path.clone();
            *sibling.last_mut().expect("a path has a part") = new_name.clone();
            if find(schema.as_struct(), &sibling).is_some() {
                return Err(format!("column {} already exists", shown(&sibling)));
            }
            Ok(Plan::Change(format!("renamed column {} to {new_name}", shown(path))))
        }
        AlterAction::SetDataType { path, data_type } => {
            let field = find(schema.as_struct(), path).ok_or_else(|| format!("column {} does not exist", shown(path)))?;
            let mut ids = crate::table::IdAssigner::new(0);
            let to = crate::table::iceberg_type(data_type, &mut ids);
            check_promotion(&field.field_type, &to).map_err(|e| format!("column {}: {e}", shown(path)))?;
            Ok(Plan::Change(format!("changed column {} to {data_type}", shown(path))))
        }
        AlterAction::DropNotNull { path } => {
            let field = find(schema.as_struct(), path).ok_or_else(|| format!("column {} does not exist", shown(path)))?;
            if !field.required {
                return Ok(Plan::Nothing(format!("column {} is already nullable; nothing to do", shown(path))));
            }
            Ok(Plan::Change(format!("column {} is now nullable", shown(path))))
        }
        AlterAction::SetProperties(props) => {
            let mut changed = Vec::new();
            for (key, value) in props {
                match (key.as_str(), value) {
                    ("partitioning", v) => {
                        crate::ddl::parse_partitioning(v, &columns_of(schema)).map_err(|e| e.to_string())?;
                        changed.push(format!("partitioning = {v}"));
                    }
                    ("format", PropertyValue::String(s, _)) if s.eq_ignore_ascii_case("parquet") => {}
                    ("format_version", PropertyValue::Integer(2, _)) => {}
                    (k, v) => return Err(format!("property {k} = {v} cannot be set by floe (supported: partitioning; format = 'PARQUET' and format_version = 2 are the only values)")),
                }
            }
            if changed.is_empty() {
                Ok(Plan::Nothing("no property changes".into()))
            } else {
                Ok(Plan::Change(format!("set {}", changed.join(", "))))
            }
        }
    }
}

/// Iceberg's allowed type promotions.
fn check_promotion(from: &Type, to: &Type) -> Result<(), String> {
    use PrimitiveType::*;
    match (from, to) {
        (a, b) if a == b => Ok(()),
        (Type::Primitive(Int), Type::Primitive(Long)) | (Type::Primitive(Float), Type::Primitive(Double)) => Ok(()),
        (
            Type::Primitive(Decimal { precision: p1, scale: s1 }),
            Type::Primitive(Decimal { precision: p2, scale: s2 }),
        ) if s1 == s2 && p2 >= p1 => Ok(()),
        (a, b) => Err(format!(
            "cannot change {a} to {b}: Iceberg allows int -> bigint, real -> double and widening a decimal's precision"
        )),
    }
}

/// The table's columns as DDL column definitions (for partitioning checks).
fn columns_of(schema: &Schema) -> Vec<crate::ddl::ColumnDef> {
    schema
        .as_struct()
        .fields()
        .iter()
        .filter_map(|f| {
            Some(crate::ddl::ColumnDef {
                name: f.name.clone(),
                data_type: ddl_type(&f.field_type)?,
                not_null: f.required,
                comment: f.doc.clone(),
            })
        })
        .collect()
}

/// Primitive Iceberg types in DDL terms (enough for partition transform checks).
fn ddl_type(ty: &Type) -> Option<crate::ddl::DataType> {
    use crate::ddl::DataType as D;
    Some(match ty {
        Type::Primitive(p) => match p {
            PrimitiveType::Boolean => D::Boolean,
            PrimitiveType::Int => D::Integer,
            PrimitiveType::Long => D::Bigint,
            PrimitiveType::Float => D::Real,
            PrimitiveType::Double => D::Double,
            PrimitiveType::Decimal { precision, scale } => D::Decimal { precision: *precision, scale: *scale },
            PrimitiveType::Date => D::Date,
            PrimitiveType::Time => D::Time,
            PrimitiveType::Timestamp | PrimitiveType::TimestampNs => D::Timestamp,
            PrimitiveType::Timestamptz | PrimitiveType::TimestamptzNs => D::TimestampTz,
            PrimitiveType::String => D::Varchar,
            PrimitiveType::Uuid => D::Uuid,
            PrimitiveType::Fixed(_) | PrimitiveType::Binary => D::Varbinary,
        },
        _ => return None,
    })
}

fn find<'a>(st: &'a StructType, path: &[String]) -> Option<&'a NestedFieldRef> {
    let (first, rest) = path.split_first()?;
    let field = st.fields().iter().find(|f| f.name.eq_ignore_ascii_case(first))?;
    if rest.is_empty() {
        return Some(field);
    }
    match field.field_type.as_ref() {
        Type::Struct(inner) => find(inner, rest),
        _ => None,
    }
}

fn parent_struct<'a>(st: &'a StructType, path: &[String]) -> Result<&'a StructType, String> {
    let parent = &path[..path.len() - 1];
    if parent.is_empty() {
        return Ok(st);
    }
    match find(st, parent).map(|f| f.field_type.as_ref()) {
        Some(Type::Struct(inner)) => Ok(inner),
        Some(_) => Err(format!("{} is not a ROW column", parent.join("."))),
        None => Err(format!("column {} does not exist", parent.join("."))),
    }
}

/// The schema after a column change.
fn new_schema(action: &AlterAction, schema: &Schema, last_column_id: i32) -> Result<Schema, String> {
    let mut ids = crate::table::IdAssigner::new(last_column_id + 1);
    let fields = rewrite(schema.as_struct(), action, &mut ids, 0)?;
    Schema::builder()
        .with_fields(fields)
        .with_identifier_field_ids(schema.identifier_field_ids())
        .build()
        .map_err(|e| e.to_string())
}

/// Rebuilds `st` with the change applied at `depth` of the action's path.
fn rewrite(st: &StructType, action: &AlterAction, ids: &mut crate::table::IdAssigner, depth: usize) -> Result<Vec<NestedFieldRef>, String> {
    let path = match action {
        AlterAction::AddColumn { path, .. }
        | AlterAction::DropColumn { path, .. }
        | AlterAction::RenameColumn { path, .. }
        | AlterAction::SetDataType { path, .. }
        | AlterAction::DropNotNull { path } => path,
        AlterAction::SetProperties(_) => return Ok(st.fields().to_vec()),
    };
    let last = depth + 1 == path.len();
    let mut out = Vec::with_capacity(st.fields().len() + 1);
    for f in st.fields() {
        if !f.name.eq_ignore_ascii_case(&path[depth]) {
            out.push(f.clone());
            continue;
        }
        if !last {
            let Type::Struct(inner) = f.field_type.as_ref() else {
                return Err(format!("{} is not a ROW column", path[..=depth].join(".")));
            };
            let nested = rewrite(inner, action, ids, depth + 1)?;
            let mut g = f.as_ref().clone();
            g.field_type = Box::new(Type::Struct(StructType::new(nested)));
            out.push(Arc::new(g));
            continue;
        }
        match action {
            AlterAction::DropColumn { .. } => {}
            AlterAction::RenameColumn { new_name, .. } => {
                let mut g = f.as_ref().clone();
                g.name = new_name.clone();
                out.push(Arc::new(g));
            }
            AlterAction::SetDataType { data_type, .. } => {
                let mut g = f.as_ref().clone();
                let mut scratch = crate::table::IdAssigner::new(0);
                g.field_type = Box::new(crate::table::iceberg_type(data_type, &mut scratch));
                out.push(Arc::new(g));
            }
            AlterAction::DropNotNull { .. } => {
                let mut g = f.as_ref().clone();
                g.required = false;
                out.push(Arc::new(g));
            }
            _ => out.push(f.clone()),
        }
    }
    if let AlterAction::AddColumn { data_type, comment, .. } = action
        && last
    {
        let id = ids.take();
        let ty = crate::table::iceberg_type(data_type, ids);
        let mut field = NestedField::optional(id, &path[depth], ty);
        if let Some(doc) = comment {
            field = field.with_doc(doc);
        }
        out.push(Arc::new(field));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ddl::parse_alter_table;

    fn seed() -> Schema {
        let stmt = crate::ddl::parse_create_table(
            "CREATE TABLE t (id INTEGER, price DECIMAL(10,2), r REAL, nested ROW(key VARCHAR, value BIGINT), tags ARRAY(VARCHAR))",
        )
        .unwrap();
        crate::table::schema_from_columns(&stmt.columns).unwrap()
    }

    fn apply(schema: &Schema, sql: &str) -> Result<Schema, String> {
        let stmt = parse_alter_table(sql).unwrap();
        new_schema(&stmt.action, schema, schema.highest_field_id())
    }

    #[test]
    fn add_top_level_and_nested_columns_get_fresh_ids() {
        let s = seed();
        let last = s.highest_field_id();
        let s2 = apply(&s, "ALTER TABLE t ADD COLUMN extra ROW(a BIGINT, b ARRAY(VARCHAR)) COMMENT 'new'").unwrap();
        let extra = s2.field_by_name("extra").unwrap();
        assert_eq!(extra.id, last + 1);
        assert_eq!(extra.doc.as_deref(), Some("new"));
        assert_eq!(s2.highest_field_id(), last + 4, "struct fields and the list element are numbered too");
        let s3 = apply(&s2, "ALTER TABLE t ADD COLUMN nested.more DOUBLE").unwrap();
        let more = s3.field_by_name("nested.more").unwrap();
        assert_eq!(more.id, last + 5);
        // Everything else keeps its id.
        for f in s.as_struct().fields() {
            assert_eq!(s3.field_by_name(&f.name).unwrap().id, f.id);
        }
    }

    #[test]
    fn rename_keeps_the_id_and_drop_removes_the_field() {
        let s = seed();
        let id = s.field_by_name("nested.key").unwrap().id;
        let s2 = apply(&s, "ALTER TABLE t RENAME COLUMN nested.key TO k").unwrap();
        assert_eq!(s2.field_by_name("nested.k").unwrap().id, id);
        assert!(s2.field_by_name("nested.key").is_none());
        let s3 = apply(&s2, "ALTER TABLE t DROP COLUMN r").unwrap();
        assert!(s3.field_by_name("r").is_none());
        assert_eq!(s3.as_struct().fields().len(), s.as_struct().fields().len() - 1);
    }

    #[test]
    fn widening_keeps_ids_and_other_changes_are_refused() {
        let s = seed();
        let s2 = apply(&s, "ALTER TABLE t ALTER COLUMN id SET DATA TYPE BIGINT").unwrap();
        let id = s2.field_by_name("id").unwrap();
        assert_eq!(id.id, s.field_by_name("id").unwrap().id);
        assert_eq!(*id.field_type, Type::Primitive(PrimitiveType::Long));
        let to = |sql: &str| -> Type {
            let AlterAction::SetDataType { data_type, .. } = parse_alter_table(sql).unwrap().action else { panic!() };
            crate::table::iceberg_type(&data_type, &mut crate::table::IdAssigner::new(0))
        };
        let field = |n: &str| s.field_by_name(n).unwrap().field_type.as_ref().clone();
        assert!(check_promotion(&field("r"), &to("ALTER TABLE t ALTER COLUMN r SET DATA TYPE DOUBLE")).is_ok());
        assert!(check_promotion(&field("price"), &to("ALTER TABLE t ALTER COLUMN price SET DATA TYPE DECIMAL(12,2)")).is_ok());
        let e = check_promotion(&field("price"), &to("ALTER TABLE t ALTER COLUMN price SET DATA TYPE DECIMAL(12,3)")).unwrap_err();
        assert!(e.contains("decimal"), "{e}");
        assert!(check_promotion(&field("id"), &to("ALTER TABLE t ALTER COLUMN id SET DATA TYPE VARCHAR")).is_err());
        assert!(check_promotion(&field("r"), &to("ALTER TABLE t ALTER COLUMN r SET DATA TYPE INTEGER")).is_err());
    }
}
