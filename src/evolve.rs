//! Opt-in `auto_evolve`: top-level JSON fields the table does not have become nullable columns,
//! with a type inferred from the value. Off by default: the table is the definition of the data.

use iceberg::spec::Schema;
use serde_json::Value;

use crate::ddl::DataType;

/// A column to add: its name and inferred type.
#[derive(Debug, Clone, PartialEq)]
pub struct NewColumn {
    pub name: String,
    pub data_type: DataType,
}

/// Top-level fields of `record` (a JSON object: the row, after unnesting) that `schema` lacks and
/// whose type can be inferred. `column_name` turns a field name into the column name it matches
/// (the configured field-name case). Column names must be lower-case identifiers
/// (`[a-z_][a-z0-9_]*`), the form every engine reads back unchanged; others are left alone (and
/// keep being ignored and counted).
pub fn new_columns(record: &[u8], schema: &Schema, column_name: &dyn Fn(&str) -> String) -> Vec<NewColumn> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(record) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (field, value) in fields {
        let name = column_name(&field);
        if schema.field_by_name(&name).is_some() || !is_plain_identifier(&name) {
            continue;
        }
        if let Some(data_type) = infer(&value) {
            out.push(NewColumn { name, data_type });
        }
    }
    out
}

fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// BIGINT for integers, DOUBLE for other numbers, BOOLEAN, VARCHAR for strings and for objects
/// (stored as their JSON text), ARRAY of the elements' common type. Nulls and empty arrays say
/// nothing about the type: no column yet.
fn infer(value: &Value) -> Option<DataType> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(_) => DataType::Boolean,
        Value::Number(n) if n.is_i64() || n.is_u64() => DataType::Bigint,
        Value::Number(_) => DataType::Double,
        Value::String(_) | Value::Object(_) => DataType::Varchar,
        Value::Array(items) => {
            let mut element: Option<DataType> = None;
            for item in items {
                let Some(t) = infer(item) else { continue };
                element = Some(match (element, t) {
                    (None, t) => t,
                    (Some(a), b) if a == b => a,
                    (Some(DataType::Bigint), DataType::Double) | (Some(DataType::Double), DataType::Bigint) => {
                        DataType::Double
                    }
                    _ => DataType::Varchar,
                });
            }
            DataType::Array(Box::new(element?))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        let stmt = crate::ddl::parse_create_table("CREATE TABLE t (id BIGINT, name VARCHAR)").unwrap();
        crate::table::schema_from_columns(&stmt.columns).unwrap()
    }

    #[test]
    fn infers_types_of_new_top_level_fields() {
        let got = new_columns(
            br#"{"id": 1, "name": "x", "n": 5, "f": 1.5, "b": true, "s": "t", "o": {"a": 1},
                "ints": [1, 2], "mixed": [1, 2.5], "strs": ["a", 1], "none": null, "empty": [],
                "CamelCase": 1, "9lives": 1}"#,
            &schema(),
            &|f: &str| f.to_owned(),
        );
        let by_name: std::collections::HashMap<_, _> = got.into_iter().map(|c| (c.name, c.data_type)).collect();
        assert_eq!(by_name.len(), 8, "{by_name:?}");
        assert_eq!(by_name["n"], DataType::Bigint);
        assert_eq!(by_name["f"], DataType::Double);
        assert_eq!(by_name["b"], DataType::Boolean);
        assert_eq!(by_name["s"], DataType::Varchar);
        assert_eq!(by_name["o"], DataType::Varchar);
        assert_eq!(by_name["ints"], DataType::Array(Box::new(DataType::Bigint)));
        assert_eq!(by_name["mixed"], DataType::Array(Box::new(DataType::Double)));
        assert_eq!(by_name["strs"], DataType::Array(Box::new(DataType::Varchar)));
        assert!(!by_name.contains_key("none") && !by_name.contains_key("empty"));
        assert!(!by_name.contains_key("CamelCase") && !by_name.contains_key("9lives"));
    }

    #[test]
    fn nothing_for_known_fields_or_non_objects() {
        let same = |f: &str| f.to_owned();
        assert!(new_columns(br#"{"id": 1, "name": "x"}"#, &schema(), &same).is_empty());
        assert!(new_columns(b"[1, 2]", &schema(), &same).is_empty());
        assert!(new_columns(b"not json", &schema(), &same).is_empty());
        // Named as the decoder matches them: with camelCase producers, `newField` is `new_field`.
        let camel = |f: &str| if f == "newField" { "new_field".to_owned() } else { f.to_owned() };
        let got = new_columns(br#"{"id": 1, "newField": 2}"#, &schema(), &camel);
        assert_eq!(got, vec![NewColumn { name: "new_field".into(), data_type: DataType::Bigint }]);
    }
}
