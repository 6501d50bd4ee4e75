//! Column builders, one per schema node, and the decoding of JSON values straight into them.
//!
//! Invariant: between records, every top-level builder holds exactly `rows` values, and a struct's
//! children hold as many values as the struct. A failed record is undone by truncating the
//! top-level builders to `rows`, which cascades down (list and map children to the offset where the
//! first removed entry started, struct children to the struct's length).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int32Type, Int64Type,
    Time64MicrosecondType, TimestampMicrosecondType, TimestampNanosecondType,
};
use arrow_array::{
    ArrayRef, BooleanArray, FixedSizeBinaryArray, LargeBinaryArray, ListArray, MapArray,
    PrimitiveArray, StringArray, StructArray,
};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, FieldRef, Fields};
use base64::Engine as _;
use iceberg::spec::{NestedField, PrimitiveType, Type};

use super::fail::{Fail, RecordErrorKind, truncated};
use super::json::{Cursor, MAX_DEPTH, RawStr, unescape_into, utf8};
use super::scalar::{self, Bad, EpochUnit, TsRules, WRONG, ZoneCache, ZoneRule, wrong};
use super::{DecodeSetupError, FieldCase};

/// Longest excerpt of an offending value shown in an error.
const SHOWN_VALUE_CHARS: usize = 80;

pub(crate) struct Col {
    /// The field name (or `element`, `key`, `value`), for error paths.
    pub name: String,
    pub nullable: bool,
    /// Said in errors: "expected {expected}, got ...".
    expected: String,
    validity: Validity,
    data: Data,
    field: FieldRef,
}

enum Data {
    Bool(Vec<bool>),
    Int(Vec<i32>),
    Long(Vec<i64>),
    Float(Vec<f32>),
    Double(Vec<f64>),
    Decimal {
        v: Vec<i128>,
        precision: u8,
        scale: i8,
    },
    Date(Vec<i32>),
    Time(Vec<i64>),
    Timestamp {
        v: Vec<i64>,
        tz: bool,
        nanos: bool,
    },
    String {
        offsets: Vec<i32>,
        data: Vec<u8>,
    },
    Uuid(Vec<u8>),
    Fixed {
        width: usize,
        data: Vec<u8>,
    },
    Binary {
        offsets: Vec<i64>,
        data: Vec<u8>,
    },
    List {
        offsets: Vec<i32>,
        elem: Box<Col>,
    },
    Map {
        offsets: Vec<i32>,
        key: Box<Col>,
        value: Box<Col>,
        entries: FieldRef,
    },
    Struct(StructCols),
}

/// The children of a struct (or of the row), with name lookup and per-object bookkeeping.
pub(crate) struct StructCols {
    pub cols: Vec<Col>,
    fields: Fields,
    index: NameIndex,
    /// `seen[i] == stamp` when child `i` got a value in the object being decoded.
    seen: Vec<u32>,
    stamp: u32,
}

/// Options the decoding functions need, and scratch space reused across records.
pub(crate) struct Cx {
    pub scratch: Vec<u8>,
    key_buf: Vec<u8>,
    zones: ZoneCache,
    pub epoch_unit: EpochUnit,
    pub default_zone: ZoneRule,
    pub field_case: Option<FieldCase>,
    pub case_insensitive: bool,
    pub ignored: u64,
    /// Of `ignored`, the fields of the row itself (not of a nested object).
    pub ignored_top: u64,
}

impl Cx {
    pub fn new(
        epoch_unit: EpochUnit,
        default_zone: ZoneRule,
        field_case: Option<FieldCase>,
        case_insensitive: bool,
    ) -> Cx {
        Cx {
            scratch: Vec::new(),
            key_buf: Vec::new(),
            zones: ZoneCache::default(),
            epoch_unit,
            default_zone,
            field_case,
            case_insensitive,
            ignored: 0,
            ignored_top: 0,
        }
    }
}

// ---- construction -------------------------------------------------------------------------------

impl Col {
    pub fn new(ice: &NestedField, arrow: &FieldRef, path: &str) -> Result<Col, DecodeSetupError> {
        let unsupported = |what: &str| DecodeSetupError::UnsupportedType {
            column: path.to_owned(),
            message: what.to_owned(),
        };
        let (data, expected) = match (ice.field_type.as_ref(), arrow.data_type()) {
            (Type::Primitive(p), _) => {
                primitive(p).ok_or_else(|| unsupported(&format!("type {p}")))?
            }
            (Type::List(l), DataType::List(elem_field)) => {
                let elem = Col::new(&l.element_field, elem_field, &format!("{path}[]"))?;
                (
                    Data::List {
                        offsets: vec![0],
                        elem: Box::new(elem),
                    },
                    "a JSON array".to_owned(),
                )
            }
            (Type::Map(m), DataType::Map(entries, _)) => {
                let DataType::Struct(kv) = entries.data_type() else {
                    return Err(unsupported("map entries are not a struct"));
                };
                if !matches!(m.key_field.field_type.as_ref(), Type::Primitive(_)) {
                    return Err(unsupported("map keys must be of a primitive type"));
                }
                let key = Col::new(&m.key_field, &kv[0], &format!("{path}{{}}"))?;
                let value = Col::new(&m.value_field, &kv[1], &format!("{path}{{}}"))?;
                (
                    Data::Map {
                        offsets: vec![0],
                        key: Box::new(key),
                        value: Box::new(value),
                        entries: entries.clone(),
                    },
                    "a JSON object (map)".to_owned(),
                )
            }
            (Type::Struct(s), DataType::Struct(fields)) => (
                Data::Struct(StructCols::new(s.fields(), fields, path)?),
                "a JSON object".to_owned(),
            ),
            (ty, dt) => {
                return Err(unsupported(&format!(
                    "Iceberg type {ty} does not match Arrow type {dt}"
                )));
            }
        };
        Ok(Col {
            name: ice.name.clone(),
            nullable: !ice.required,
            expected,
            validity: Validity::default(),
            data,
            field: arrow.clone(),
        })
    }
}

fn primitive(p: &PrimitiveType) -> Option<(Data, String)> {
    Some(match p {
        PrimitiveType::Boolean => (Data::Bool(Vec::new()), "a boolean".into()),
        PrimitiveType::Int => (Data::Int(Vec::new()), "an int (32-bit integer)".into()),
        PrimitiveType::Long => (Data::Long(Vec::new()), "a long (64-bit integer)".into()),
        PrimitiveType::Float => (Data::Float(Vec::new()), "a float".into()),
        PrimitiveType::Double => (Data::Double(Vec::new()), "a double".into()),
        PrimitiveType::Decimal { precision, scale } => (
            Data::Decimal {
                v: Vec::new(),
                precision: u8::try_from(*precision).ok().filter(|p| *p <= 38)?,
                scale: i8::try_from(*scale).ok()?,
            },
            format!("a decimal({precision}, {scale})"),
        ),
        PrimitiveType::Date => (Data::Date(Vec::new()), "a date (YYYY-MM-DD)".into()),
        PrimitiveType::Time => (Data::Time(Vec::new()), "a time (HH:MM:SS[.ffffff])".into()),
        PrimitiveType::Timestamp | PrimitiveType::TimestampNs => (
            Data::Timestamp {
                v: Vec::new(),
                tz: false,
                nanos: *p == PrimitiveType::TimestampNs,
            },
            "a timestamp (ISO-8601 date-time, or epoch number)".into(),
        ),
        PrimitiveType::Timestamptz | PrimitiveType::TimestamptzNs => (
            Data::Timestamp {
                v: Vec::new(),
                tz: true,
                nanos: *p == PrimitiveType::TimestamptzNs,
            },
            "a timestamp with time zone (ISO-8601 date-time, or epoch number)".into(),
        ),
        PrimitiveType::String => (
            Data::String {
                offsets: vec![0],
                data: Vec::new(),
            },
            "a string".into(),
        ),
        PrimitiveType::Uuid => (Data::Uuid(Vec::new()), "a UUID".into()),
        PrimitiveType::Fixed(n) => (
            Data::Fixed {
                width: usize::try_from(*n)
                    .ok()
                    .filter(|n| i32::try_from(*n).is_ok())?,
                data: Vec::new(),
            },
            format!("base64 of exactly {n} bytes"),
        ),
        PrimitiveType::Binary => (
            Data::Binary {
                offsets: vec![0],
                data: Vec::new(),
            },
            "base64 binary".into(),
        ),
    })
}

impl StructCols {
    pub fn new(
        ice: &[Arc<NestedField>],
        arrow: &Fields,
        path: &str,
    ) -> Result<StructCols, DecodeSetupError> {
        let cols = ice
            .iter()
            .zip(arrow.iter())
            .map(|(f, a)| {
                let p = if path.is_empty() {
                    f.name.clone()
                } else {
                    format!("{path}.{}", f.name)
                };
                Col::new(f, a, &p)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let index = NameIndex::new(cols.iter().map(|c| c.name.as_str()));
        Ok(StructCols {
            seen: vec![0; cols.len()],
            cols,
            fields: arrow.clone(),
            index,
            stamp: 0,
        })
    }

    /// Index of the column with this exact name.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.exact.get(name.as_bytes()).copied()
    }

    /// Starts an object: no child has a value yet.
    pub fn begin(&mut self) {
        self.index.begin();
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.seen.fill(0);
            self.stamp = 1;
        }
    }

    pub fn mark_seen(&mut self, i: usize) {
        self.seen[i] = self.stamp;
    }

    /// Whether some child got a value in the current object.
    pub fn seen_any(&self) -> bool {
        self.seen.contains(&self.stamp)
    }

    /// How many children got a value in the current object.
    pub fn seen_count(&self) -> usize {
        self.seen.iter().filter(|s| **s == self.stamp).count()
    }

    /// Decodes the members of an object (the cursor is at `{`) into the children, `len` being the
    /// number of values each child held before this object. Children flagged in `overridden` are
    /// skipped (their value comes from elsewhere).
    pub fn members(
        &mut self,
        cur: &mut Cursor,
        cx: &mut Cx,
        depth: usize,
        len: usize,
        overridden: &[bool],
    ) -> Result<(), Box<Fail>> {
        cur.i += 1;
        if cur.peek()? == b'}' {
            cur.i += 1;
            return Ok(());
        }
        loop {
            if cur.peek()? != b'"' {
                return Err(cur.syntax("expected a string key"));
            }
            let at = cur.i;
            let key = cur.string()?;
            cur.eat(b':', "':'")?;
            match self.index.lookup(key, cx, at)? {
                Some(i) if !overridden.get(i).copied().unwrap_or(false) => {
                    // A repeated key: the last value wins, as in most JSON readers.
                    if self.seen[i] == self.stamp {
                        self.cols[i].truncate(len);
                    }
                    self.seen[i] = self.stamp;
                    let col = &mut self.cols[i];
                    if let Err(e) = decode(col, cur, cx, depth + 1) {
                        return Err(e.within(col.name.clone()));
                    }
                }
                Some(_) => cur.skip(None, depth + 1)?,
                None => {
                    cx.ignored += 1;
                    if depth == 0 {
                        cx.ignored_top += 1;
                    }
                    cur.skip(None, depth + 1)?;
                }
            }
            if !cur.next_or_close(b'}')? {
                return Ok(());
            }
        }
    }

    /// Fills the children that got no value with nulls; a required one is an error.
    pub fn finish_object(&mut self) -> Result<(), Box<Fail>> {
        for (i, col) in self.cols.iter_mut().enumerate() {
            if self.seen[i] != self.stamp {
                if !col.nullable {
                    return Err(Fail::new(
                        RecordErrorKind::MissingRequired,
                        "required column is missing".to_owned(),
                    )
                    .within(col.name.clone()));
                }
                col.append_null();
            }
        }
        Ok(())
    }

    pub fn truncate(&mut self, len: usize) {
        for c in &mut self.cols {
            c.truncate(len);
        }
    }

    pub fn finish(&mut self) -> Vec<ArrayRef> {
        self.cols.iter_mut().map(Col::finish).collect()
    }

    pub fn buffered_bytes(&self) -> usize {
        self.cols.iter().map(Col::buffered_bytes).sum()
    }
}

// ---- field names --------------------------------------------------------------------------------

/// Finds a child by JSON key. Producers write keys in the same order every time, so the index
/// learns which key followed which in the last object and tries that first (one comparison); then
/// a hash lookup; then the configured case rules.
struct NameIndex {
    names: Vec<Box<[u8]>>,
    exact: HashMap<Box<[u8]>, usize, BuildNameHasher>,
    /// Lower-cased names, for case-insensitive matching.
    folded: HashMap<Box<[u8]>, usize, BuildNameHasher>,
    /// `follow[i]`: the child whose key came after child `i`'s last time; `follow[n]`: the first.
    follow: Vec<usize>,
    /// The child matched last in the current object (`n` at its start).
    prev: usize,
}

/// A fast hash for the short keys of a fixed table. Hash flooding is no concern: the tables are
/// built once from the schema and never grow, so crafted keys can at worst cost a few comparisons.
#[derive(Default, Clone, Copy)]
struct NameHasher(u64);

impl std::hash::Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Byte equality, inlined: keys are short, and a call to `memcmp` cost more than the comparison.
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

type BuildNameHasher = std::hash::BuildHasherDefault<NameHasher>;

impl NameIndex {
    fn new<'n>(names: impl Iterator<Item = &'n str>) -> NameIndex {
        let names: Vec<Box<[u8]>> = names.map(|n| n.as_bytes().into()).collect();
        let mut exact = HashMap::default();
        let mut folded = HashMap::default();
        for (i, n) in names.iter().enumerate() {
            exact.entry(n.clone()).or_insert(i);
            folded
                .entry(n.to_ascii_lowercase().into_boxed_slice())
                .or_insert(i);
        }
        let n = names.len();
        NameIndex {
            follow: (0..=n).map(|i| if i == n { 0 } else { i + 1 }).collect(),
            prev: n,
            names,
            exact,
            folded,
        }
    }

    fn begin(&mut self) {
        self.prev = self.names.len();
    }

    #[inline]
    fn lookup(&mut self, key: RawStr, cx: &mut Cx, at: usize) -> Result<Option<usize>, Box<Fail>> {
        let k: &[u8] = if key.escaped {
            cx.key_buf.clear();
            unescape_into(key.raw, &mut cx.key_buf, at)?;
            &cx.key_buf
        } else {
            key.raw
        };
        let guess = self.follow[self.prev];
        if let Some(n) = self.names.get(guess)
            && same(n, k)
        {
            self.prev = guess;
            return Ok(Some(guess));
        }
        let found = self.exact.get(k).copied().or_else(|| {
            let mut buf = Vec::new();
            let mut k = k;
            if let Some(case) = cx.field_case {
                case.to_lower_underscore(k, &mut buf);
                if let Some(&i) = self.exact.get(buf.as_slice()) {
                    return Some(i);
                }
                k = &buf;
            }
            if cx.case_insensitive {
                let folded = k.to_ascii_lowercase();
                return self.folded.get(folded.as_slice()).copied();
            }
            None
        });
        // Unknown keys leave the chain as it was, so known keys around them keep their order.
        if let Some(i) = found {
            self.follow[self.prev] = i;
            self.prev = i;
        }
        Ok(found)
    }
}

// ---- decoding -----------------------------------------------------------------------------------

/// A scalar as found in the JSON.
enum Tok<'x> {
    Str(&'x str),
    Num(&'x str),
    Bool(bool),
    /// An object or array, as its text.
    Composite(&'x str),
}

impl Tok<'_> {
    fn shown(&self) -> String {
        match self {
            Tok::Str(s) => format!("{:?}", truncated(s, SHOWN_VALUE_CHARS)),
            Tok::Num(s) | Tok::Composite(s) => truncated(s, SHOWN_VALUE_CHARS),
            Tok::Bool(b) => b.to_string(),
        }
    }
}

fn bad_value(expected: &str, tok: &Tok, bad: Bad) -> Box<Fail> {
    let mut message = format!("expected {expected}, got {}", tok.shown());
    if let Some(detail) = bad.detail {
        message.push_str(" (");
        message.push_str(detail);
        message.push(')');
    }
    Fail::new(bad.kind, message)
}

fn wrong_json(expected: &str, cur: &mut Cursor, depth: usize) -> Box<Fail> {
    let start = cur.i;
    if let Err(e) = cur.skip(None, depth) {
        return e;
    }
    bad_value(expected, &Tok::Composite(utf8(&cur.b[start..cur.i])), WRONG)
}

/// Decodes one JSON value into `col` (appending exactly one value), or fails having appended
/// nothing the caller's truncation will not undo.
pub(crate) fn decode(
    col: &mut Col,
    cur: &mut Cursor,
    cx: &mut Cx,
    depth: usize,
) -> Result<(), Box<Fail>> {
    if depth > MAX_DEPTH {
        return Err(cur.syntax("nested too deeply"));
    }
    let c = cur.peek()?;
    if c == b'n' {
        cur.literal(b"null")?;
        if !col.nullable {
            return Err(Fail::new(
                RecordErrorKind::MissingRequired,
                "null for a required column".to_owned(),
            ));
        }
        col.append_null();
        return Ok(());
    }
    let Col {
        expected,
        validity,
        data,
        ..
    } = col;
    match data {
        Data::String { offsets, data } => {
            match c {
                b'"' => {
                    let at = cur.i;
                    let s = cur.string()?;
                    if s.escaped {
                        unescape_into(s.raw, data, at)?;
                    } else {
                        data.extend_from_slice(s.raw);
                    }
                }
                // Any other JSON value is stored as its compact JSON text.
                b'{' | b'[' => cur.skip(Some(data), depth)?,
                b't' => {
                    cur.literal(b"true")?;
                    data.extend_from_slice(b"true");
                }
                b'f' => {
                    cur.literal(b"false")?;
                    data.extend_from_slice(b"false");
                }
                _ => data.extend_from_slice(cur.number()?.as_bytes()),
            }
            offsets.push(offset32(data.len())?);
        }
        Data::List { offsets, elem } => {
            if c != b'[' {
                return Err(wrong_json(expected, cur, depth));
            }
            cur.i += 1;
            if cur.peek()? == b']' {
                cur.i += 1;
            } else {
                let mut n = 0usize;
                loop {
                    if let Err(e) = decode(elem, cur, cx, depth + 1) {
                        return Err(e.within(format!("[{n}]")));
                    }
                    n += 1;
                    if !cur.next_or_close(b']')? {
                        break;
                    }
                }
            }
            offsets.push(offset32(elem.len())?);
        }
        Data::Map {
            offsets,
            key,
            value,
            ..
        } => {
            if c != b'{' {
                return Err(wrong_json(expected, cur, depth));
            }
            cur.i += 1;
            if cur.peek()? == b'}' {
                cur.i += 1;
            } else {
                loop {
                    if cur.peek()? != b'"' {
                        return Err(cur.syntax("expected a string key"));
                    }
                    let at = cur.i;
                    let k = cur.string()?;
                    let text = k.text(&mut cx.scratch, at)?;
                    let ts = cx_ts(&mut cx.zones, cx.epoch_unit, cx.default_zone);
                    if let Err(e) = put_scalar_data(&mut key.data, &Tok::Str(text), ts) {
                        let seg = format!("[{:?}]", truncated(text, SHOWN_VALUE_CHARS));
                        return Err(bad_value(&key.expected, &Tok::Str(text), e)
                            .within("key")
                            .within(seg));
                    }
                    key.validity.append(true);
                    let first = *offsets.last().expect("offsets start with 0") as usize;
                    let this = key.len() - 1;
                    // Small maps are checked key by key; large ones once, at the end.
                    if this - first <= SMALL_MAP && key.data.repeats_key(first, this) {
                        return Err(duplicate_key(text));
                    }
                    cur.eat(b':', "':'")?;
                    if let Err(e) = decode(value, cur, cx, depth + 1) {
                        let text = k.text(&mut cx.scratch, at).unwrap_or_default();
                        return Err(e.within(format!("[{:?}]", truncated(text, SHOWN_VALUE_CHARS))));
                    }
                    if !cur.next_or_close(b'}')? {
                        break;
                    }
                }
            }
            let first = *offsets.last().expect("offsets start with 0") as usize;
            if key.len() - first > SMALL_MAP + 1
                && let Some(i) = key.data.any_repeated_key(first, key.len())
            {
                let mut buf = [0; 16];
                let shown = String::from_utf8_lossy(key.data.key_bytes(i, &mut buf)).into_owned();
                return Err(duplicate_key(&shown));
            }
            offsets.push(offset32(key.len())?);
        }
        Data::Struct(s) => {
            if c != b'{' {
                return Err(wrong_json(expected, cur, depth));
            }
            let len = validity.len();
            s.begin();
            s.members(cur, cx, depth, len, &[])?;
            s.finish_object()?;
        }
        _ => {
            let tok = match c {
                b'"' => {
                    let at = cur.i;
                    Tok::Str(cur.string()?.text(&mut cx.scratch, at)?)
                }
                b't' => {
                    cur.literal(b"true")?;
                    Tok::Bool(true)
                }
                b'f' => {
                    cur.literal(b"false")?;
                    Tok::Bool(false)
                }
                b'{' | b'[' => return Err(wrong_json(expected, cur, depth)),
                _ => Tok::Num(cur.number()?),
            };
            let ts = TsCx {
                zones: &mut cx.zones,
                epoch_unit: cx.epoch_unit,
                default_zone: cx.default_zone,
            };
            if let Err(e) = put_scalar_data(data, &tok, ts) {
                return Err(bad_value(expected, &tok, e));
            }
        }
    }
    validity.append(true);
    Ok(())
}

struct TsCx<'z> {
    zones: &'z mut ZoneCache,
    epoch_unit: EpochUnit,
    default_zone: ZoneRule,
}

fn cx_ts(zones: &mut ZoneCache, epoch_unit: EpochUnit, default_zone: ZoneRule) -> TsCx<'_> {
    TsCx {
        zones,
        epoch_unit,
        default_zone,
    }
}

fn offset32(len: usize) -> Result<i32, Box<Fail>> {
    i32::try_from(len).map_err(|_| {
        Fail::new(
            RecordErrorKind::OutOfRange,
            "a column holds more than 2 GiB in one batch; lower the buffer size".to_owned(),
        )
    })
}

/// Converts a scalar and appends it to a primitive column's values (not its validity).
#[inline]
fn put_scalar_data(data: &mut Data, tok: &Tok, ts: TsCx) -> Result<(), Bad> {
    match (data, tok) {
        (Data::Bool(v), Tok::Bool(b)) => v.push(*b),
        (Data::Bool(v), Tok::Str(s)) => v.push(scalar::boolean(s)?),
        (Data::Int(v), Tok::Num(s) | Tok::Str(s)) => v.push(scalar::int(s)?),
        (Data::Long(v), Tok::Num(s) | Tok::Str(s)) => v.push(scalar::long(s)?),
        (Data::Float(v), Tok::Num(s)) => v.push(scalar::float(s, false)?),
        (Data::Float(v), Tok::Str(s)) => v.push(scalar::float(s, true)?),
        (Data::Double(v), Tok::Num(s)) => v.push(scalar::double(s, false)?),
        (Data::Double(v), Tok::Str(s)) => v.push(scalar::double(s, true)?),
        (
            Data::Decimal {
                v,
                precision,
                scale,
            },
            Tok::Num(s) | Tok::Str(s),
        ) => v.push(scalar::decimal(s, *precision, *scale)?),
        (Data::Date(v), Tok::Str(s)) => v.push(scalar::date(s)?),
        (Data::Time(v), Tok::Str(s)) => v.push(scalar::time(s)?),
        (Data::Timestamp { v, tz, nanos }, Tok::Num(s) | Tok::Str(s)) => {
            let rules = TsRules {
                tz: *tz,
                nanos: *nanos,
                epoch_unit: ts.epoch_unit,
                default_zone: ts.default_zone,
            };
            let is_num = matches!(tok, Tok::Num(_)) || scalar::is_epoch_text(s);
            v.push(if is_num {
                scalar::timestamp_epoch(s, rules)?
            } else {
                scalar::timestamp_text(s, rules, ts.zones)?
            });
        }
        (Data::String { offsets, data }, tok) => {
            match tok {
                Tok::Str(s) | Tok::Num(s) | Tok::Composite(s) => {
                    data.extend_from_slice(s.as_bytes())
                }
                Tok::Bool(b) => data.extend_from_slice(if *b { b"true" } else { b"false" }),
            }
            offsets.push(
                i32::try_from(data.len()).map_err(|_| scalar::out_of_range("batch too large"))?,
            );
        }
        (Data::Uuid(v), Tok::Str(s)) => {
            let u =
                uuid::Uuid::try_parse(s).map_err(|_| wrong("expected 8-4-4-4-12 hex digits"))?;
            v.extend_from_slice(u.as_bytes());
        }
        (Data::Fixed { width, data }, Tok::Str(s)) => {
            let before = data.len();
            base64_into(s, data)?;
            if data.len() - before != *width {
                data.truncate(before);
                return Err(wrong("wrong length"));
            }
        }
        (Data::Binary { offsets, data }, Tok::Str(s)) => {
            base64_into(s, data)?;
            offsets.push(data.len() as i64);
        }
        _ => return Err(WRONG),
    }
    Ok(())
}

/// Standard base64, padded or not; the URL-safe alphabet is accepted too.
fn base64_into(s: &str, out: &mut Vec<u8>) -> Result<(), Bad> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const CONFIG: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, CONFIG);
    let before = out.len();
    if STANDARD.decode_vec(s, out).is_ok() {
        return Ok(());
    }
    out.truncate(before);
    if URL_SAFE.decode_vec(s, out).is_ok() {
        return Ok(());
    }
    out.truncate(before);
    Err(wrong("not base64"))
}

// ---- map keys -----------------------------------------------------------------------------------

/// Maps up to this many entries check each new key against the earlier ones as it comes.
const SMALL_MAP: usize = 32;

fn duplicate_key(text: &str) -> Box<Fail> {
    Fail::new(
        RecordErrorKind::WrongType,
        format!(
            "duplicate map key {:?} (Iceberg maps have unique keys)",
            truncated(text, SHOWN_VALUE_CHARS)
        ),
    )
}

impl Data {
    /// The stored value at `i` as bytes, for comparing map keys (after conversion to the key type,
    /// so `"1"` and `"01"` are the same int key).
    fn key_bytes<'s>(&'s self, i: usize, buf: &'s mut [u8; 16]) -> &'s [u8] {
        fn put<'b>(buf: &'b mut [u8; 16], bytes: &[u8]) -> &'b [u8] {
            buf[..bytes.len()].copy_from_slice(bytes);
            &buf[..bytes.len()]
        }
        match self {
            Data::Bool(v) => put(buf, &[u8::from(v[i])]),
            Data::Int(v) | Data::Date(v) => put(buf, &v[i].to_le_bytes()),
            Data::Long(v) | Data::Time(v) | Data::Timestamp { v, .. } => {
                put(buf, &v[i].to_le_bytes())
            }
            Data::Float(v) => put(buf, &v[i].to_bits().to_le_bytes()),
            Data::Double(v) => put(buf, &v[i].to_bits().to_le_bytes()),
            Data::Decimal { v, .. } => put(buf, &v[i].to_le_bytes()),
            Data::String { offsets, data } => &data[offsets[i] as usize..offsets[i + 1] as usize],
            Data::Binary { offsets, data } => &data[offsets[i] as usize..offsets[i + 1] as usize],
            Data::Uuid(v) => &v[i * 16..i * 16 + 16],
            Data::Fixed { width, data } => &data[i * width..(i + 1) * width],
            // Map keys are primitive (checked when the decoder is built).
            Data::List { .. } | Data::Map { .. } | Data::Struct(_) => &[],
        }
    }

    /// Whether the key at `this` equals one in `first..this`.
    fn repeats_key(&self, first: usize, this: usize) -> bool {
        let (mut a, mut b) = ([0; 16], [0; 16]);
        let new = self.key_bytes(this, &mut a);
        (first..this).any(|j| self.key_bytes(j, &mut b) == new)
    }

    /// Some key in `first..end` that appears twice.
    fn any_repeated_key(&self, first: usize, end: usize) -> Option<usize> {
        let mut keys: Vec<(Vec<u8>, usize)> = (first..end)
            .map(|i| (self.key_bytes(i, &mut [0; 16]).to_vec(), i))
            .collect();
        keys.sort_unstable();
        keys.windows(2).find(|w| w[0].0 == w[1].0).map(|w| w[1].1)
    }
}

// ---- bookkeeping -------------------------------------------------------------------------------

/// Which values are valid (not null). One byte per value while building (appending is the hot
/// path); packed into bits only for a batch that has nulls at all.
#[derive(Default)]
struct Validity {
    valid: Vec<bool>,
    nulls: usize,
}

impl Validity {
    #[inline]
    fn append(&mut self, valid: bool) {
        self.valid.push(valid);
        self.nulls += usize::from(!valid);
    }

    /// Memory held (one byte per value until finished).
    fn capacity(&self) -> usize {
        self.valid.capacity()
    }

    fn len(&self) -> usize {
        self.valid.len()
    }

    fn truncate(&mut self, len: usize) {
        if len < self.valid.len() {
            self.nulls -= self.valid[len..].iter().filter(|v| !**v).count();
            self.valid.truncate(len);
        }
    }

    fn finish(&mut self) -> Option<NullBuffer> {
        let valid = std::mem::take(&mut self.valid);
        (std::mem::take(&mut self.nulls) > 0).then(|| NullBuffer::from(valid))
    }
}

// ---- metadata values ---------------------------------------------------------------------------

/// A Kafka metadata value for a column (whose type was checked to fit when the decoder was built).
pub(crate) enum Meta<'a> {
    Null,
    /// Text for a string column (must be UTF-8), bytes for a binary one.
    Bytes(&'a [u8]),
    Long(i64),
    /// Epoch milliseconds.
    Millis(i64),
}

impl Col {
    pub fn put_meta(&mut self, value: Meta, what: &super::MetadataField) -> Result<(), Box<Fail>> {
        let out_of_range = || {
            Fail::new(
                RecordErrorKind::OutOfRange,
                format!("{what} does not fit the column's type"),
            )
        };
        if let Meta::Null = value {
            if !self.nullable {
                return Err(Fail::new(
                    RecordErrorKind::MissingRequired,
                    format!("required column is missing: {what} is absent in this record"),
                ));
            }
            self.append_null();
            return Ok(());
        }
        match (value, &mut self.data) {
            (Meta::Bytes(b), Data::String { offsets, data }) => {
                if std::str::from_utf8(b).is_err() {
                    return Err(Fail::new(
                        RecordErrorKind::InvalidUtf8,
                        format!(
                            "{what} is not UTF-8 text; store it in a binary (VARBINARY) column to keep its bytes"
                        ),
                    ));
                }
                data.extend_from_slice(b);
                offsets.push(i32::try_from(data.len()).map_err(|_| out_of_range())?);
            }
            (Meta::Bytes(b), Data::Binary { offsets, data }) => {
                data.extend_from_slice(b);
                offsets.push(data.len() as i64);
            }
            (Meta::Long(n), Data::Int(v)) => v.push(i32::try_from(n).map_err(|_| out_of_range())?),
            (Meta::Long(n) | Meta::Millis(n), Data::Long(v)) => v.push(n),
            (Meta::Millis(ms), Data::Timestamp { v, nanos, .. }) => {
                let per_ms = if *nanos { 1_000_000 } else { 1_000 };
                v.push(ms.checked_mul(per_ms).ok_or_else(out_of_range)?);
            }
            _ => unreachable!("metadata column types are checked when the decoder is built"),
        }
        self.validity.append(true);
        Ok(())
    }
}

// ---- appending, undoing, finishing -------------------------------------------------------------

impl Col {
    pub fn len(&self) -> usize {
        self.validity.len()
    }

    pub fn append_null(&mut self) {
        self.validity.append(false);
        match &mut self.data {
            Data::Bool(v) => v.push(false),
            Data::Int(v) | Data::Date(v) => v.push(0),
            Data::Long(v) | Data::Time(v) | Data::Timestamp { v, .. } => v.push(0),
            Data::Float(v) => v.push(0.0),
            Data::Double(v) => v.push(0.0),
            Data::Decimal { v, .. } => v.push(0),
            Data::String { offsets, .. }
            | Data::List { offsets, .. }
            | Data::Map { offsets, .. } => {
                let last = *offsets.last().expect("offsets start with 0");
                offsets.push(last);
            }
            Data::Binary { offsets, .. } => {
                let last = *offsets.last().expect("offsets start with 0");
                offsets.push(last);
            }
            Data::Uuid(v) => v.extend_from_slice(&[0; 16]),
            Data::Fixed { width, data } => data.resize(data.len() + *width, 0),
            // A null struct's children hold nulls too (masked by the struct's own null).
            Data::Struct(s) => {
                for c in &mut s.cols {
                    c.append_null();
                }
            }
        }
    }

    /// Drops every value from index `len` on. A record that failed partway may have left values in
    /// this column's children (list elements, struct fields, map entries) before its own entry was
    /// pushed, so the children are cut back even when this column has no entry past `len`.
    pub fn truncate(&mut self, len: usize) {
        self.validity.truncate(len);
        match &mut self.data {
            Data::Bool(v) => v.truncate(len),
            Data::Int(v) | Data::Date(v) => v.truncate(len),
            Data::Long(v) | Data::Time(v) | Data::Timestamp { v, .. } => v.truncate(len),
            Data::Float(v) => v.truncate(len),
            Data::Double(v) => v.truncate(len),
            Data::Decimal { v, .. } => v.truncate(len),
            Data::String { offsets, data } => {
                offsets.truncate(len + 1);
                data.truncate(offsets[len] as usize);
            }
            Data::Binary { offsets, data } => {
                offsets.truncate(len + 1);
                data.truncate(offsets[len] as usize);
            }
            Data::Uuid(v) => v.truncate(len * 16),
            Data::Fixed { width, data } => data.truncate(len * *width),
            Data::List { offsets, elem } => {
                offsets.truncate(len + 1);
                elem.truncate(offsets[len] as usize);
            }
            Data::Map {
                offsets,
                key,
                value,
                ..
            } => {
                offsets.truncate(len + 1);
                key.truncate(offsets[len] as usize);
                value.truncate(offsets[len] as usize);
            }
            Data::Struct(s) => s.truncate(len),
        }
    }

    pub fn buffered_bytes(&self) -> usize {
        let own = self.validity.capacity();
        own + match &self.data {
            Data::Bool(v) => v.capacity(),
            Data::Int(v) | Data::Date(v) => v.capacity() * 4,
            Data::Long(v) | Data::Time(v) | Data::Timestamp { v, .. } => v.capacity() * 8,
            Data::Float(v) => v.capacity() * 4,
            Data::Double(v) => v.capacity() * 8,
            Data::Decimal { v, .. } => v.capacity() * 16,
            Data::String { offsets, data } => offsets.capacity() * 4 + data.capacity(),
            Data::Binary { offsets, data } => offsets.capacity() * 8 + data.capacity(),
            Data::Uuid(v) | Data::Fixed { data: v, .. } => v.capacity(),
            Data::List { offsets, elem } => offsets.capacity() * 4 + elem.buffered_bytes(),
            Data::Map {
                offsets,
                key,
                value,
                ..
            } => offsets.capacity() * 4 + key.buffered_bytes() + value.buffered_bytes(),
            Data::Struct(s) => s.buffered_bytes(),
        }
    }

    /// Takes the values as an Arrow array of exactly the field's type, and resets.
    pub fn finish(&mut self) -> ArrayRef {
        let len = self.validity.len();
        let nulls = self.validity.finish();
        let dt = self.field.data_type().clone();
        fn values<T: arrow_buffer::ArrowNativeType>(v: &mut Vec<T>) -> ScalarBuffer<T> {
            ScalarBuffer::from(std::mem::take(v))
        }
        fn offsets<O: arrow_buffer::ArrowNativeType>(v: &mut Vec<O>) -> OffsetBuffer<O> {
            let zero = v[0];
            OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(v, vec![zero])))
        }
        match &mut self.data {
            Data::Bool(v) => Arc::new(BooleanArray::new(
                BooleanBuffer::from(std::mem::take(v)),
                nulls,
            )),
            Data::Int(v) => Arc::new(PrimitiveArray::<Int32Type>::new(values(v), nulls)),
            Data::Long(v) => Arc::new(PrimitiveArray::<Int64Type>::new(values(v), nulls)),
            Data::Float(v) => Arc::new(PrimitiveArray::<Float32Type>::new(values(v), nulls)),
            Data::Double(v) => Arc::new(PrimitiveArray::<Float64Type>::new(values(v), nulls)),
            Data::Decimal { v, .. } => {
                Arc::new(PrimitiveArray::<Decimal128Type>::new(values(v), nulls).with_data_type(dt))
            }
            Data::Date(v) => Arc::new(PrimitiveArray::<Date32Type>::new(values(v), nulls)),
            Data::Time(v) => Arc::new(PrimitiveArray::<Time64MicrosecondType>::new(
                values(v),
                nulls,
            )),
            Data::Timestamp {
                v, nanos: false, ..
            } => Arc::new(
                PrimitiveArray::<TimestampMicrosecondType>::new(values(v), nulls)
                    .with_data_type(dt),
            ),
            Data::Timestamp { v, nanos: true, .. } => Arc::new(
                PrimitiveArray::<TimestampNanosecondType>::new(values(v), nulls).with_data_type(dt),
            ),
            Data::String { offsets: o, data } => Arc::new(StringArray::new(
                offsets(o),
                Buffer::from_vec(std::mem::take(data)),
                nulls,
            )),
            Data::Binary { offsets: o, data } => Arc::new(LargeBinaryArray::new(
                offsets(o),
                Buffer::from_vec(std::mem::take(data)),
                nulls,
            )),
            Data::Uuid(v) => Arc::new(FixedSizeBinaryArray::new(
                16,
                Buffer::from_vec(std::mem::take(v)),
                nulls,
            )),
            Data::Fixed { width, data } => Arc::new(FixedSizeBinaryArray::new(
                *width as i32,
                Buffer::from_vec(std::mem::take(data)),
                nulls,
            )),
            Data::List { offsets: o, elem } => {
                let field = elem.field.clone();
                Arc::new(ListArray::new(field, offsets(o), elem.finish(), nulls))
            }
            Data::Map {
                offsets: o,
                key,
                value,
                entries,
            } => {
                let DataType::Struct(kv) = entries.data_type() else {
                    unreachable!("checked when the builder was made")
                };
                let entry_len = key.len();
                let children = vec![key.finish(), value.finish()];
                let entries_array =
                    StructArray::try_new_with_length(kv.clone(), children, None, entry_len)
                        .expect("map entries match their fields");
                Arc::new(MapArray::new(
                    entries.clone(),
                    offsets(o),
                    entries_array,
                    nulls,
                    false,
                ))
            }
            Data::Struct(s) => {
                let fields = s.fields.clone();
                let children = s.finish();
                Arc::new(
                    StructArray::try_new_with_length(fields, children, nulls, len)
                        .expect("struct children match their fields"),
                )
            }
        }
    }
}

/// The case conventions field names can be converted from.
impl FieldCase {
    /// Appends `name` converted to lower_underscore onto `out` (ASCII letters only, as Guava's
    /// `CaseFormat` does: in camel case every upper-case letter starts a word).
    pub fn to_lower_underscore(self, name: &[u8], out: &mut Vec<u8>) {
        for (i, &c) in name.iter().enumerate() {
            match self {
                FieldCase::LowerCamel | FieldCase::UpperCamel => {
                    if c.is_ascii_uppercase() {
                        if i > 0 {
                            out.push(b'_');
                        }
                        out.push(c.to_ascii_lowercase());
                    } else {
                        out.push(c);
                    }
                }
                FieldCase::LowerHyphen => out.push(if c == b'-' {
                    b'_'
                } else {
                    c.to_ascii_lowercase()
                }),
                FieldCase::UpperUnderscore => out.push(c.to_ascii_lowercase()),
            }
        }
    }
}
