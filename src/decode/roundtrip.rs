//! Property test: random schemas and random values, written as JSON, decode to the same values.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int32Type, Int64Type,
    Time64MicrosecondType, TimestampMicrosecondType,
};
use arrow_array::{Array, ArrayRef};
use base64::Engine as _;
use iceberg::spec::{ListType, MapType, NestedField, PrimitiveType, Schema, StructType, Type};
use proptest::prelude::*;

use super::tests::ORIGIN;
use super::*;

/// A column type, before field ids are assigned.
#[derive(Debug, Clone)]
enum T {
    Bool,
    Int,
    Long,
    Float,
    Double,
    Dec(u8, u8),
    Str,
    Date,
    Time,
    Ts,
    Tstz,
    Uuid,
    Bin,
    List(Box<T>),
    Map(Box<T>, Box<T>),
    Struct(Vec<T>),
}

/// A value of a `T`.
#[derive(Debug, Clone)]
enum V {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Dec(i128),
    Str(String),
    /// Days since the epoch.
    Date(i32),
    /// Microseconds since midnight.
    Time(i64),
    /// Microseconds; for timestamptz also the offset (minutes) to write it with.
    Ts(i64, i32),
    Uuid([u8; 16]),
    Bin(Vec<u8>),
    List(Vec<V>),
    Map(Vec<(V, V)>),
    Struct(Vec<V>),
}

fn key_type() -> impl Strategy<Value = T> {
    prop_oneof![
        Just(T::Str),
        Just(T::Int),
        Just(T::Long),
        Just(T::Date),
        Just(T::Uuid),
        Just(T::Bool)
    ]
}

fn primitive() -> impl Strategy<Value = T> {
    prop_oneof![
        Just(T::Bool),
        Just(T::Int),
        Just(T::Long),
        Just(T::Float),
        Just(T::Double),
        (1u8..=38)
            .prop_flat_map(|p| (Just(p), 0..=p))
            .prop_map(|(p, s)| T::Dec(p, s)),
        Just(T::Str),
        Just(T::Date),
        Just(T::Time),
        Just(T::Ts),
        Just(T::Tstz),
        Just(T::Uuid),
        Just(T::Bin),
    ]
}

fn column_type() -> impl Strategy<Value = T> {
    primitive().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|t| T::List(Box::new(t))),
            (key_type(), inner.clone()).prop_map(|(k, v)| T::Map(Box::new(k), Box::new(v))),
            prop::collection::vec(inner, 1..4).prop_map(T::Struct),
        ]
    })
}

const MICROS_MIN: i64 = -62_135_596_800_000_000; // 0001-01-01T00:00:00Z
const MICROS_MAX: i64 = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999Z

fn value(t: &T, nullable: bool) -> BoxedStrategy<V> {
    let v: BoxedStrategy<V> = match t {
        T::Bool => any::<bool>().prop_map(V::Bool).boxed(),
        T::Int => any::<i32>().prop_map(V::Int).boxed(),
        T::Long => any::<i64>().prop_map(V::Long).boxed(),
        T::Float => any::<f32>().prop_map(V::Float).boxed(),
        T::Double => any::<f64>().prop_map(V::Double).boxed(),
        T::Dec(p, _) => {
            let max = 10i128.pow(*p as u32) - 1;
            (-max..=max).prop_map(V::Dec).boxed()
        }
        T::Str => any::<String>().prop_map(V::Str).boxed(),
        T::Date => (-719_162i32..=2_932_896).prop_map(V::Date).boxed(),
        T::Time => (0i64..86_400_000_000).prop_map(V::Time).boxed(),
        T::Ts => (MICROS_MIN + 86_400_000_000..MICROS_MAX - 86_400_000_000)
            .prop_map(|m| V::Ts(m, 0))
            .boxed(),
        T::Tstz => (
            MICROS_MIN + 86_400_000_000..MICROS_MAX - 86_400_000_000,
            -72i32..=72,
        )
            .prop_map(|(m, q)| V::Ts(m, q * 15))
            .boxed(),
        T::Uuid => any::<[u8; 16]>().prop_map(V::Uuid).boxed(),
        T::Bin => prop::collection::vec(any::<u8>(), 0..20)
            .prop_map(V::Bin)
            .boxed(),
        T::List(e) => prop::collection::vec(value(e, true), 0..4)
            .prop_map(V::List)
            .boxed(),
        T::Map(k, v) => {
            let (k, v) = ((**k).clone(), (**v).clone());
            prop::collection::vec((value(&k, false), value(&v, true)), 0..4)
                .prop_map(move |entries| {
                    // JSON keys must be unique (a repeated key would overwrite).
                    let mut seen = std::collections::HashSet::new();
                    V::Map(
                        entries
                            .into_iter()
                            .filter(|(key, _)| seen.insert(key_text(&k, key)))
                            .collect(),
                    )
                })
                .boxed()
        }
        T::Struct(fields) => fields
            .iter()
            .map(|f| value(f, true))
            .collect::<Vec<_>>()
            .prop_map(V::Struct)
            .boxed(),
    };
    if nullable {
        prop_oneof![1 => Just(V::Null), 5 => v].boxed()
    } else {
        v
    }
}

// ---- schema -------------------------------------------------------------------------------------

fn iceberg_type(t: &T, next_id: &mut i32) -> Type {
    let mut id = || {
        *next_id += 1;
        *next_id
    };
    match t {
        T::Bool => Type::Primitive(PrimitiveType::Boolean),
        T::Int => Type::Primitive(PrimitiveType::Int),
        T::Long => Type::Primitive(PrimitiveType::Long),
        T::Float => Type::Primitive(PrimitiveType::Float),
        T::Double => Type::Primitive(PrimitiveType::Double),
        T::Dec(p, s) => Type::Primitive(PrimitiveType::Decimal {
            precision: *p as u32,
            scale: *s as u32,
        }),
        T::Str => Type::Primitive(PrimitiveType::String),
        T::Date => Type::Primitive(PrimitiveType::Date),
        T::Time => Type::Primitive(PrimitiveType::Time),
        T::Ts => Type::Primitive(PrimitiveType::Timestamp),
        T::Tstz => Type::Primitive(PrimitiveType::Timestamptz),
        T::Uuid => Type::Primitive(PrimitiveType::Uuid),
        T::Bin => Type::Primitive(PrimitiveType::Binary),
        T::List(e) => {
            let eid = id();
            let et = iceberg_type(e, next_id);
            Type::List(ListType::new(Arc::new(NestedField::list_element(
                eid, et, false,
            ))))
        }
        T::Map(k, v) => {
            let (kid, vid) = (id(), id());
            let kt = iceberg_type(k, next_id);
            let vt = iceberg_type(v, next_id);
            Type::Map(MapType::new(
                Arc::new(NestedField::map_key_element(kid, kt)),
                Arc::new(NestedField::map_value_element(vid, vt, false)),
            ))
        }
        T::Struct(fields) => {
            let ids: Vec<i32> = fields.iter().map(|_| id()).collect();
            Type::Struct(StructType::new(
                fields
                    .iter()
                    .zip(ids)
                    .enumerate()
                    .map(|(i, (f, fid))| {
                        Arc::new(NestedField::optional(
                            fid,
                            format!("f{i}"),
                            iceberg_type(f, next_id),
                        ))
                    })
                    .collect(),
            ))
        }
    }
}

fn schema(columns: &[T]) -> Schema {
    let mut next_id = columns.len() as i32;
    let fields: Vec<_> = columns
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Arc::new(NestedField::optional(
                i as i32 + 1,
                format!("c{i}"),
                iceberg_type(t, &mut next_id),
            ))
        })
        .collect();
    Schema::builder().with_fields(fields).build().unwrap()
}

// ---- JSON ---------------------------------------------------------------------------------------

fn decimal_text(v: i128, scale: u8) -> String {
    let digits = v.unsigned_abs().to_string();
    let sign = if v < 0 { "-" } else { "" };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let s = scale as usize;
    let padded = format!("{digits:0>width$}", width = s + 1);
    let (int, frac) = padded.split_at(padded.len() - s);
    format!("{sign}{int}.{frac}")
}

fn date_text(days: i32) -> String {
    (chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Duration::days(days as i64))
        .format("%Y-%m-%d")
        .to_string()
}

fn time_text(micros: i64) -> String {
    let s = micros / 1_000_000;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        micros % 1_000_000
    )
}

fn timestamp_text(micros: i64, offset_minutes: i32, with_offset: bool) -> String {
    let local = micros + offset_minutes as i64 * 60_000_000;
    let days = local.div_euclid(86_400_000_000);
    let rest = local.rem_euclid(86_400_000_000);
    let mut s = format!("{}T{}", date_text(days as i32), time_text(rest));
    if with_offset {
        if offset_minutes == 0 {
            s.push('Z');
        } else {
            let a = offset_minutes.abs();
            s.push_str(&format!(
                "{}{:02}:{:02}",
                if offset_minutes < 0 { '-' } else { '+' },
                a / 60,
                a % 60
            ));
        }
    }
    s
}

/// The text of a map key (JSON keys are strings).
fn key_text(t: &T, v: &V) -> String {
    match (t, v) {
        (T::Str, V::Str(s)) => s.clone(),
        (_, V::Int(i)) => i.to_string(),
        (_, V::Long(i)) => i.to_string(),
        (_, V::Date(d)) => date_text(*d),
        (_, V::Uuid(u)) => uuid::Uuid::from_bytes(*u).to_string(),
        (_, V::Bool(b)) => b.to_string(),
        _ => unreachable!("keys are of key types: {t:?} {v:?}"),
    }
}

fn json_float(f: f64) -> String {
    if f.is_nan() {
        "\"NaN\"".into()
    } else if f.is_infinite() {
        if f > 0.0 {
            "\"Infinity\""
        } else {
            "\"-Infinity\""
        }
        .into()
    } else {
        serde_json::Value::from(f).to_string()
    }
}

fn render(t: &T, v: &V, out: &mut String) {
    let quoted = |s: &str| serde_json::to_string(s).unwrap();
    match (t, v) {
        (_, V::Null) => out.push_str("null"),
        (_, V::Bool(b)) => out.push_str(&b.to_string()),
        (_, V::Int(i)) => out.push_str(&i.to_string()),
        (_, V::Long(i)) => out.push_str(&i.to_string()),
        (_, V::Float(f)) => out.push_str(&json_float(*f as f64)),
        (_, V::Double(f)) => out.push_str(&json_float(*f)),
        (T::Dec(_, s), V::Dec(d)) => out.push_str(&decimal_text(*d, *s)),
        (_, V::Str(s)) => out.push_str(&quoted(s)),
        (_, V::Date(d)) => out.push_str(&quoted(&date_text(*d))),
        (_, V::Time(m)) => out.push_str(&quoted(&time_text(*m))),
        (T::Tstz, V::Ts(m, off)) => out.push_str(&quoted(&timestamp_text(*m, *off, true))),
        (_, V::Ts(m, _)) => out.push_str(&quoted(&timestamp_text(*m, 0, false))),
        (_, V::Uuid(u)) => out.push_str(&quoted(&uuid::Uuid::from_bytes(*u).to_string())),
        (_, V::Bin(b)) => out.push_str(&quoted(
            &base64::engine::general_purpose::STANDARD.encode(b),
        )),
        (T::List(e), V::List(items)) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render(e, item, out);
            }
            out.push(']');
        }
        (T::Map(kt, vt), V::Map(entries)) => {
            out.push('{');
            for (i, (k, val)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&quoted(&key_text(kt, k)));
                out.push(':');
                render(vt, val, out);
            }
            out.push('}');
        }
        (T::Struct(fields), V::Struct(values)) => render_object(fields, values, "f", out),
        _ => unreachable!("value does not match type: {t:?} {v:?}"),
    }
}

/// An object; null members are sometimes left out (missing and null mean the same).
fn render_object(types: &[T], values: &[V], prefix: &str, out: &mut String) {
    out.push('{');
    let mut first = true;
    for (i, (t, v)) in types.iter().zip(values).enumerate() {
        if matches!(v, V::Null) && i % 2 == 0 {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&format!("\"{prefix}{i}\": "));
        render(t, v, out);
    }
    out.push('}');
}

// ---- checking -----------------------------------------------------------------------------------

fn check(t: &T, arr: &ArrayRef, i: usize, v: &V) {
    if let V::Null = v {
        assert!(arr.is_null(i), "expected null at {i} in {arr:?}");
        return;
    }
    assert!(arr.is_valid(i), "unexpected null at {i}, wanted {v:?}");
    match (t, v) {
        (_, V::Bool(b)) => assert_eq!(arr.as_boolean().value(i), *b),
        (_, V::Int(x)) => assert_eq!(arr.as_primitive::<Int32Type>().value(i), *x),
        (_, V::Long(x)) => assert_eq!(arr.as_primitive::<Int64Type>().value(i), *x),
        (_, V::Float(x)) => {
            let got = arr.as_primitive::<Float32Type>().value(i);
            assert!(got == *x || (got.is_nan() && x.is_nan()), "{got} != {x}");
        }
        (_, V::Double(x)) => {
            let got = arr.as_primitive::<Float64Type>().value(i);
            assert!(got == *x || (got.is_nan() && x.is_nan()), "{got} != {x}");
        }
        (_, V::Dec(x)) => assert_eq!(arr.as_primitive::<Decimal128Type>().value(i), *x),
        (_, V::Str(s)) => assert_eq!(arr.as_string::<i32>().value(i), s),
        (_, V::Date(d)) => assert_eq!(arr.as_primitive::<Date32Type>().value(i), *d),
        (_, V::Time(m)) => assert_eq!(arr.as_primitive::<Time64MicrosecondType>().value(i), *m),
        (_, V::Ts(m, _)) => assert_eq!(arr.as_primitive::<TimestampMicrosecondType>().value(i), *m),
        (_, V::Uuid(u)) => assert_eq!(arr.as_fixed_size_binary().value(i), u),
        (_, V::Bin(b)) => assert_eq!(arr.as_binary::<i64>().value(i), b.as_slice()),
        (T::List(e), V::List(items)) => {
            let inner = arr.as_list::<i32>().value(i);
            assert_eq!(inner.len(), items.len());
            for (j, item) in items.iter().enumerate() {
                check(e, &inner, j, item);
            }
        }
        (T::Map(kt, vt), V::Map(entries)) => {
            let inner = arr.as_map().value(i);
            assert_eq!(inner.len(), entries.len());
            for (j, (k, val)) in entries.iter().enumerate() {
                check(kt, inner.column(0), j, k);
                check(vt, inner.column(1), j, val);
            }
        }
        (T::Struct(fields), V::Struct(values)) => {
            let s = arr.as_struct();
            for (f, (ft, fv)) in fields.iter().zip(values).enumerate() {
                check(ft, s.column(f), i, fv);
            }
        }
        _ => unreachable!("value does not match type: {t:?} {v:?}"),
    }
}

fn table() -> impl Strategy<Value = (Vec<T>, Vec<Vec<V>>)> {
    prop::collection::vec(column_type(), 1..6).prop_flat_map(|types| {
        let row: Vec<BoxedStrategy<V>> = types.iter().map(|t| value(t, true)).collect();
        (Just(types), prop::collection::vec(row, 1..6))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_values_round_trip((types, rows) in table()) {
        let schema = schema(&types);
        let mut dec = Decoder::new(&schema, DecodeOptions::default()).unwrap();
        for row in &rows {
            let mut json = String::new();
            render_object(&types, row, "c", &mut json);
            if let Err(e) = dec.append(json.as_bytes(), &ORIGIN) {
                panic!("{json}: {e}");
            }
        }
        let batch = dec.finish();
        prop_assert_eq!(batch.num_rows(), rows.len());
        for (c, t) in types.iter().enumerate() {
            for (r, row) in rows.iter().enumerate() {
                check(t, batch.column(c), r, &row[c]);
            }
        }
    }
}
