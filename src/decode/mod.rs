//! Decoding: JSON records to Arrow record batches, the way the table's schema says.
//!
//! The table's current schema decides how each record is read (DESIGN.md §5): a [`Decoder`] is
//! built from it, and its batches carry exactly the Arrow schema the iceberg crate derives from it
//! (field ids included), so they go to the Parquet writer as they are.
//!
//! One pass over each record's bytes writes values straight into column builders; there is no
//! intermediate JSON tree. A record that cannot be read is rolled back (the builders are truncated
//! to where the record started) and reported as a [`RecordError`]: it never affects its neighbours,
//! and it becomes a dead letter upstream.
//!
//! Reading rules (in short; the tests spell out every case):
//! - boolean: `true`/`false`, and the strings `"true"`/`"false"`.
//! - int, long: numbers and numeric strings; exact (`1e3` is 1000, `1.5` is an error); out of range
//!   is an error, never a wrap.
//! - float, double: numbers, numeric strings, `"NaN"`, `"Infinity"`, `"-Infinity"`.
//! - decimal(p, s): numbers or strings, read exactly (never through a float); more than `s`
//!   non-zero fraction digits or more than `p` digits in all is an error.
//! - string: a JSON string; any other value is stored as its compact JSON text.
//! - date `YYYY-MM-DD`; time `HH:MM[:SS[.fffffffff]]`; timestamps ISO-8601 (`T` or space), with an
//!   offset or `Z` and optionally a bracketed zone id as Java writes it, or an epoch number in the
//!   configured unit. Fractions beyond the column's precision are truncated (floor).
//!   A timestamptz value without offset is read in the configured zone (UTC by default); a
//!   timestamp (without zone) value with an offset is converted to UTC wall-clock time.
//! - uuid: its text form; binary and fixed: base64 (standard or URL-safe, padding optional).
//! - list: an array; map: an object whose keys are converted to the key type; struct: an object.
//! - missing or null: NULL, or an error for a required column. Fields not in the table are skipped
//!   and counted ([`Decoder::ignored_fields`]). A repeated field name: the last value wins; a
//!   repeated map key (after conversion to the key type) is an error.
//! - a record (or unnested row) that has fields but none of them, and no projection, reaches a
//!   column is a record error of kind `no-matching-fields`, not a row of NULLs: the producer and
//!   the table (or the reshaping options) disagree. `{}` is a row of NULLs (it has no fields).
//!   Columns filled from Kafka metadata do not count as matches.
//!
//! Kafka metadata (key, topic, partition, offset, timestamp and its type, named headers) can fill
//! columns of their own ([`MetadataColumn`]); the decoder sees them in the [`RawRecord`] it is
//! given, never the Kafka client.

mod build;
mod fail;
mod json;
pub mod pool;
#[cfg(test)]
mod roundtrip;
mod scalar;
#[cfg(test)]
mod tests;

use std::ops::Range;

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_schema::SchemaRef;

pub use fail::{RecordError, RecordErrorKind, RecordOrigin};
pub use scalar::EpochUnit;

use build::{Cx, Meta, StructCols};
use fail::Fail;
use json::Cursor;
use scalar::ZoneRule;

/// Where a record came from (for error messages and dead letters).
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// How field names in the JSON are written, when they differ from the table's lower_underscore
/// column names. Conversion applies to field names at every depth (not to map keys, which are data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldCase {
    /// `fieldName`
    LowerCamel,
    /// `FieldName`
    UpperCamel,
    /// `field-name`
    LowerHyphen,
    /// `FIELD_NAME`
    UpperUnderscore,
}

/// The names a field-name case is written with in the configuration, as the common names
/// (`camelCase`) and as Guava's `CaseFormat` names the replaced Flink job used (`lowerCamel`).
/// `snake_case` (the table's own convention) means no conversion.
pub const FIELD_CASE_NAMES: &str =
    "camelCase, PascalCase, kebab-case, SCREAMING_SNAKE_CASE or snake_case (no conversion)";

impl FieldCase {
    /// A configured case name: `None` for `snake_case` (names are matched as they are).
    pub fn parse_name(s: &str) -> Result<Option<FieldCase>, String> {
        match s {
            "snake_case" | "lower_underscore" | "lowerUnderscore" | "lower-underscore" => Ok(None),
            other => other.parse().map(Some),
        }
    }
}

impl std::str::FromStr for FieldCase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "camelCase" | "lowerCamel" | "lower-camel" => Ok(Self::LowerCamel),
            "PascalCase" | "UpperCamel" | "upper-camel" => Ok(Self::UpperCamel),
            "kebab-case" | "lower-hyphen" => Ok(Self::LowerHyphen),
            "SCREAMING_SNAKE_CASE" | "UPPER_UNDERSCORE" | "upper-underscore" => {
                Ok(Self::UpperUnderscore)
            }
            _ => Err(format!(
                "unknown field-name case {s:?}; use {FIELD_CASE_NAMES}"
            )),
        }
    }
}

/// Who set a Kafka record's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    /// The producer (Kafka's `CreateTime`).
    CreateTime,
    /// The broker, when the record was appended (`LogAppendTime`).
    LogAppendTime,
}

impl TimestampType {
    /// The name Kafka's Java client gives it, stored in a `timestamp_type` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateTime => "CreateTime",
            Self::LogAppendTime => "LogAppendTime",
        }
    }
}

/// One Kafka record as the decoder sees it: bytes and coordinates, not the client's types.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    /// `None` for a tombstone (read as JSON `null`: not an object).
    pub value: Option<&'a [u8]>,
    /// Milliseconds since the epoch, and who set them.
    pub timestamp: Option<(TimestampType, i64)>,
    /// In the order the record carries them; a name may repeat.
    pub headers: &'a [(String, Option<Vec<u8>>)],
}

impl RawRecord<'_> {
    fn origin(&self) -> Origin<'_> {
        Origin {
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
        }
    }

    /// The value of the last header called `name` (Kafka's `lastHeader`).
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// Kafka record metadata a column can be filled with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataField {
    /// The record key: text in a string column (it must be UTF-8), bytes in a binary column.
    Key,
    Topic,
    /// An int or long column.
    Partition,
    /// A long column.
    Offset,
    /// A timestamp (UTC wall-clock time), timestamptz, or long (epoch milliseconds) column.
    Timestamp,
    /// A string column: `CreateTime` or `LogAppendTime`.
    TimestampType,
    /// The last header of this name: text (UTF-8) in a string column, bytes in a binary column.
    Header(String),
}

impl std::fmt::Display for MetadataField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Key => f.write_str("the record key"),
            Self::Topic => f.write_str("the topic"),
            Self::Partition => f.write_str("the partition"),
            Self::Offset => f.write_str("the offset"),
            Self::Timestamp => f.write_str("the record timestamp"),
            Self::TimestampType => f.write_str("the record timestamp's type"),
            Self::Header(h) => write!(f, "header {h:?}"),
        }
    }
}

impl MetadataField {
    /// The column types it can be stored in, said for an error message.
    fn allowed(&self) -> &'static str {
        match self {
            Self::Key | Self::Header(_) => {
                "string (VARCHAR: as UTF-8 text) or binary (VARBINARY: as bytes)"
            }
            Self::Topic | Self::TimestampType => "string (VARCHAR)",
            Self::Partition => "int or long (INTEGER or BIGINT)",
            Self::Offset => "long (BIGINT)",
            Self::Timestamp => {
                "timestamptz, timestamp (UTC wall-clock time) or long (epoch milliseconds)"
            }
        }
    }

    fn fits(&self, t: &iceberg::spec::Type) -> bool {
        use iceberg::spec::{PrimitiveType as P, Type};
        let Type::Primitive(p) = t else { return false };
        match self {
            Self::Key | Self::Header(_) => matches!(p, P::String | P::Binary),
            Self::Topic | Self::TimestampType => matches!(p, P::String),
            Self::Partition => matches!(p, P::Int | P::Long),
            Self::Offset => matches!(p, P::Long),
            Self::Timestamp => matches!(
                p,
                P::Timestamp | P::Timestamptz | P::TimestampNs | P::TimestamptzNs | P::Long
            ),
        }
    }
}

/// A top-level column filled from the Kafka record's metadata instead of its JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataColumn {
    /// The column name (exactly as in the table).
    pub column: String,
    pub field: MetadataField,
}

/// A top-level column whose value is taken from elsewhere in the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    /// The column name (exactly as in the table).
    pub column: String,
    /// A JSON pointer (RFC 6901) into the original record, before any unnesting: `/meta/id`.
    pub pointer: String,
}

/// How records are reshaped and typed. `Default` reshapes nothing and reads offset-less timestamps
/// with zone as UTC and epoch numbers as milliseconds.
#[derive(Debug, Clone, Default)]
pub struct DecodeOptions {
    /// A JSON pointer to the object that holds the row (`/payload/after`); the whole record when
    /// `None`. A record where it leads nowhere, or not to an object, is a record error.
    pub unnest: Option<String>,
    /// Columns read from a pointer into the original record, overriding a field of the same name.
    pub projections: Vec<Projection>,
    /// Converts JSON field names from this convention to lower_underscore before matching.
    pub field_case: Option<FieldCase>,
    /// Matches field names to columns ignoring ASCII case (after an exact match fails).
    pub case_insensitive: bool,
    /// The zone for timestamptz values written without an offset; UTC when `None`.
    pub timestamp_zone: Option<chrono_tz::Tz>,
    /// The unit of epoch numbers in timestamp columns.
    pub epoch_unit: EpochUnit,
    /// Columns filled from the Kafka record's metadata (JSON fields of the same name are skipped).
    pub metadata: Vec<MetadataColumn>,
}

/// Why a decoder cannot be built for a schema and options. These are configuration errors: fatal.
#[derive(Debug, thiserror::Error)]
pub enum DecodeSetupError {
    #[error("column {column}: {message} cannot be decoded from JSON")]
    UnsupportedType { column: String, message: String },
    #[error("the table schema has no Arrow form: {0}")]
    Arrow(String),
    #[error("projection onto column {column:?}: the table has no such top-level column")]
    UnknownColumn { column: String },
    #[error("{field} goes to column {column:?}, which is not a top-level column of the table")]
    UnknownMetadataColumn { column: String, field: MetadataField },
    #[error("{field} goes to column {column:?} of type {found}; it can go only to a {allowed} column")]
    MetadataType {
        column: String,
        field: MetadataField,
        found: String,
        allowed: &'static str,
    },
    #[error("column {column:?} is filled twice: {first} and {second}")]
    Conflict {
        column: String,
        first: String,
        second: String,
    },
    #[error("{what} {pointer:?} is not a JSON pointer (it must be empty or start with '/')")]
    InvalidPointer { what: &'static str, pointer: String },
}

/// Decodes JSON records into Arrow record batches of one table schema.
pub struct Decoder {
    schema: SchemaRef,
    schema_id: i32,
    root: StructCols,
    cx: Cx,
    rows: usize,
    /// Unnest pointer, split into reference tokens.
    unnest: Option<Vec<String>>,
    /// (column index, pointer tokens)
    projections: Vec<(usize, Vec<String>)>,
    /// (column index, what fills it)
    metadata: Vec<(usize, MetadataField)>,
    /// `overridden[i]`: column `i` comes from a projection or from metadata.
    overridden: Vec<bool>,
    /// Whether some column is filled from the JSON value (not only from metadata): only then can a
    /// record match no column.
    value_columns: bool,
}

impl Decoder {
    /// Built from the table's current schema, matched by field id.
    pub fn new(
        schema: &iceberg::spec::Schema,
        options: DecodeOptions,
    ) -> Result<Decoder, DecodeSetupError> {
        let arrow = iceberg::arrow::schema_to_arrow_schema(schema)
            .map_err(|e| DecodeSetupError::Arrow(e.to_string()))?;
        let root = StructCols::new(schema.as_struct().fields(), arrow.fields(), "")?;
        let unnest = options
            .unnest
            .as_deref()
            .map(|p| pointer_tokens(p, "unnest pointer"))
            .transpose()?;
        let mut overridden = vec![false; root.cols.len()];
        // What fills each column other than its JSON field, for naming conflicts.
        let mut filled_by: Vec<Option<String>> = vec![None; root.cols.len()];
        let mut claim = |i: usize, by: String| match filled_by[i].take() {
            Some(first) => Err(DecodeSetupError::Conflict {
                column: root.cols[i].name.clone(),
                first,
                second: by,
            }),
            None => {
                filled_by[i] = Some(by);
                Ok(())
            }
        };
        let mut projections = Vec::new();
        for p in &options.projections {
            let i = root
                .position(&p.column)
                .ok_or_else(|| DecodeSetupError::UnknownColumn {
                    column: p.column.clone(),
                })?;
            claim(i, format!("the projection of {:?}", p.pointer))?;
            overridden[i] = true;
            projections.push((i, pointer_tokens(&p.pointer, "projection pointer")?));
        }
        let mut metadata = Vec::new();
        for m in &options.metadata {
            let unknown = || DecodeSetupError::UnknownMetadataColumn {
                column: m.column.clone(),
                field: m.field.clone(),
            };
            let i = root.position(&m.column).ok_or_else(unknown)?;
            let field = schema.field_by_name(&m.column).ok_or_else(unknown)?;
            if !m.field.fits(&field.field_type) {
                return Err(DecodeSetupError::MetadataType {
                    column: m.column.clone(),
                    field: m.field.clone(),
                    found: field.field_type.to_string(),
                    allowed: m.field.allowed(),
                });
            }
            claim(i, m.field.to_string())?;
            overridden[i] = true;
            metadata.push((i, m.field.clone()));
        }
        let value_columns = metadata.len() < root.cols.len();
        let zone = options
            .timestamp_zone
            .map_or(ZoneRule::Fixed(0), ZoneRule::Region);
        Ok(Decoder {
            schema: std::sync::Arc::new(arrow),
            schema_id: schema.schema_id(),
            root,
            cx: Cx::new(
                options.epoch_unit,
                zone,
                options.field_case,
                options.case_insensitive,
            ),
            rows: 0,
            unnest,
            projections,
            metadata,
            overridden,
            value_columns,
        })
    }

    /// The Arrow schema of the batches it produces: `iceberg::arrow::schema_to_arrow_schema` of the
    /// table schema, field-id metadata included.
    pub fn arrow_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The id of the Iceberg schema this decoder reads by (to notice a schema change).
    pub fn schema_id(&self) -> i32 {
        self.schema_id
    }

    /// Decodes one record's JSON value (no Kafka metadata) and appends it. On error nothing of
    /// this record is kept.
    pub fn append(&mut self, value: &[u8], origin: &Origin) -> Result<(), RecordError> {
        self.append_record(&RawRecord {
            topic: origin.topic,
            partition: origin.partition,
            offset: origin.offset,
            key: None,
            value: Some(value),
            timestamp: None,
            headers: &[],
        })
    }

    /// Decodes one Kafka record (its value, and the metadata columns from the rest) and appends
    /// it. On error nothing of this record is kept.
    pub fn append_record(&mut self, record: &RawRecord) -> Result<(), RecordError> {
        let (ignored, ignored_top) = (self.cx.ignored, self.cx.ignored_top);
        let value = record.value.unwrap_or(b"null");
        match self.append_row(value, record) {
            Ok(()) => {
                self.rows += 1;
                Ok(())
            }
            Err(fail) => {
                self.root.truncate(self.rows);
                self.cx.ignored = ignored;
                self.cx.ignored_top = ignored_top;
                Err(fail.into_record_error(&record.origin()))
            }
        }
    }

    /// The part of a record's value that holds the row: the object the unnest pointer names, or
    /// the whole value. `None` when the pointer leads nowhere or the value is not JSON.
    pub fn row_of<'v>(&self, value: &'v [u8]) -> Option<&'v [u8]> {
        match &self.unnest {
            None => Some(value),
            Some(tokens) => locate(value, tokens).ok().flatten().map(|r| &value[r]),
        }
    }

    /// A JSON field name as the column name it is matched to (after the field-name case
    /// conversion), for auto_evolve naming new columns.
    pub fn column_name_of(&self, field: &str) -> String {
        match self.cx.field_case {
            None => field.to_owned(),
            Some(case) => {
                let mut out = Vec::new();
                case.to_lower_underscore(field.as_bytes(), &mut out);
                String::from_utf8(out).unwrap_or_else(|_| field.to_owned())
            }
        }
    }

    fn append_row(&mut self, value: &[u8], record: &RawRecord) -> Result<(), Box<Fail>> {
        // UTF-8 is checked by the reader, in strings (the only place JSON allows non-ASCII).
        let mut cur = Cursor::new(value);
        if self.unnest.is_none() && self.projections.is_empty() {
            if cur.peek()? != b'{' {
                return Err(not_an_object(&mut cur, "the record"));
            }
            let start = cur.i;
            self.root.begin();
            self.root
                .members(&mut cur, &mut self.cx, 0, self.rows, &self.overridden)?;
            cur.end()?;
            if self.value_columns && !self.root.seen_any() {
                no_matching_fields(value, start)?;
            }
            return self.finish_row(record);
        }
        // Reshaping: check the whole record first, then read the parts the pointers name.
        cur.skip(None, 0)?;
        cur.end()?;
        let row = match &self.unnest {
            None => 0..value.len(),
            Some(tokens) => locate(value, tokens)?.ok_or_else(|| {
                Fail::new(
                    RecordErrorKind::NotAnObject,
                    format!(
                        "the unnest pointer {} leads nowhere in this record",
                        pointer_text(tokens)
                    ),
                )
            })?,
        };
        self.root.begin();
        let mut projected = false;
        for (i, tokens) in &self.projections {
            let col = &mut self.root.cols[*i];
            match locate(value, tokens)? {
                Some(range) => {
                    let mut sub = Cursor {
                        b: &value[..range.end],
                        i: range.start,
                    };
                    if let Err(e) = build::decode(col, &mut sub, &mut self.cx, 1) {
                        return Err(e.within(col.name.clone()));
                    }
                    projected = true;
                }
                None if col.nullable => col.append_null(),
                None => {
                    return Err(Fail::new(
                        RecordErrorKind::MissingRequired,
                        format!(
                            "required column is missing: {} leads nowhere",
                            pointer_text(tokens)
                        ),
                    )
                    .within(col.name.clone()));
                }
            }
            self.root.mark_seen(*i);
        }
        let mut sub = Cursor {
            b: &value[..row.end],
            i: row.start,
        };
        if sub.peek()? != b'{' {
            return Err(not_an_object(&mut sub, "the unnested row"));
        }
        let start = sub.i;
        let before = self.root.seen_count();
        self.root
            .members(&mut sub, &mut self.cx, 0, self.rows, &self.overridden)?;
        if self.value_columns && !projected && self.root.seen_count() == before {
            no_matching_fields(&value[..row.end], start)?;
        }
        self.finish_row(record)
    }

    /// Fills the metadata columns and the missing ones.
    fn finish_row(&mut self, record: &RawRecord) -> Result<(), Box<Fail>> {
        for (i, field) in &self.metadata {
            let col = &mut self.root.cols[*i];
            let value = match field {
                MetadataField::Key => record.key.map_or(Meta::Null, Meta::Bytes),
                MetadataField::Topic => Meta::Bytes(record.topic.as_bytes()),
                MetadataField::Partition => Meta::Long(i64::from(record.partition)),
                MetadataField::Offset => Meta::Long(record.offset),
                MetadataField::Timestamp => record.timestamp.map_or(Meta::Null, |(_, ms)| Meta::Millis(ms)),
                MetadataField::TimestampType => record
                    .timestamp
                    .map_or(Meta::Null, |(t, _)| Meta::Bytes(t.as_str().as_bytes())),
                MetadataField::Header(name) => record.header(name).map_or(Meta::Null, Meta::Bytes),
            };
            if let Err(e) = col.put_meta(value, field) {
                return Err(e.within(col.name.clone()));
            }
            self.root.mark_seen(*i);
        }
        self.root.finish_object()
    }

    /// Removes the last appended row (the loader reads a record again after adding columns).
    pub fn pop_last(&mut self) {
        if self.rows > 0 {
            self.rows -= 1;
            self.root.truncate(self.rows);
        }
    }

    /// Rows appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Approximate memory held by the buffered rows. Walks the column builders: O(columns).
    pub fn buffered_bytes(&self) -> usize {
        self.root.buffered_bytes()
    }

    /// JSON fields not in the table, skipped since this decoder was made (never reset).
    pub fn ignored_fields(&self) -> u64 {
        self.cx.ignored
    }

    /// Of [`ignored_fields`](Self::ignored_fields), those that were fields of a row itself, not
    /// of an object nested in it (only these can become new columns).
    pub fn ignored_top_level_fields(&self) -> u64 {
        self.cx.ignored_top
    }

    /// Takes the rows appended so far as one record batch and resets.
    pub fn finish(&mut self) -> RecordBatch {
        let columns = self.root.finish();
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        self.rows = 0;
        RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)
            .expect("the builders produce arrays of the schema's exact types")
    }
}

fn not_an_object(cur: &mut Cursor, what: &str) -> Box<Fail> {
    let start = cur.i;
    if let Err(e) = cur.skip(None, 0) {
        return e;
    }
    let text = json::utf8(&cur.b[start..cur.i]);
    Fail::new(
        RecordErrorKind::NotAnObject,
        format!("{what} is not a JSON object: {}", fail::truncated(text, 80)),
    )
}

/// Field names shown when a record matches no column.
const SHOWN_FIELD_NAMES: usize = 5;

/// The error for an object (at `start` in `b`, valid JSON) none of whose fields is a column, or
/// `Ok` when it has no fields at all (`{}` is a row of NULLs).
fn no_matching_fields(b: &[u8], start: usize) -> Result<(), Box<Fail>> {
    let mut cur = Cursor { b, i: start + 1 };
    let mut scratch = Vec::new();
    let mut names = Vec::new();
    let mut total = 0usize;
    if cur.peek()? != b'}' {
        loop {
            cur.peek()?;
            let at = cur.i;
            let key = cur.string()?;
            if names.len() < SHOWN_FIELD_NAMES {
                names.push(format!("{:?}", fail::truncated(key.text(&mut scratch, at)?, 40)));
            }
            total += 1;
            cur.eat(b':', "':'")?;
            cur.skip(None, 1)?;
            if !cur.next_or_close(b'}')? {
                break;
            }
        }
    }
    if total == 0 {
        return Ok(());
    }
    let more = if total > names.len() {
        format!(" and {} more", total - names.len())
    } else {
        String::new()
    };
    Err(Fail::new(
        RecordErrorKind::NoMatchingFields,
        format!(
            "no field of the record matches a column of the table (its fields: {}{more}); the \
             producer writes another shape than the table has: check the table's columns and the \
             [decode] options (field_case, unnest, projections)",
            names.join(", ")
        ),
    ))
}

/// Splits an RFC 6901 JSON pointer into its unescaped reference tokens.
fn pointer_tokens(pointer: &str, what: &'static str) -> Result<Vec<String>, DecodeSetupError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(DecodeSetupError::InvalidPointer {
            what,
            pointer: pointer.to_owned(),
        });
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn pointer_text(tokens: &[String]) -> String {
    tokens
        .iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// The byte range of the value a JSON pointer names, if it exists. The record is valid JSON.
fn locate(b: &[u8], tokens: &[String]) -> Result<Option<Range<usize>>, Box<Fail>> {
    let mut cur = Cursor::new(b);
    let mut scratch = Vec::new();
    'tokens: for token in tokens {
        match cur.peek()? {
            b'{' => {
                cur.i += 1;
                if cur.peek()? == b'}' {
                    return Ok(None);
                }
                loop {
                    if cur.peek()? != b'"' {
                        return Err(cur.syntax("expected a string key"));
                    }
                    let at = cur.i;
                    let key = cur.string()?;
                    cur.eat(b':', "':'")?;
                    if key.text(&mut scratch, at)? == token {
                        continue 'tokens;
                    }
                    cur.skip(None, 1)?;
                    if !cur.next_or_close(b'}')? {
                        return Ok(None);
                    }
                }
            }
            b'[' => {
                let Ok(index) = token.parse::<usize>() else {
                    return Ok(None);
                };
                cur.i += 1;
                if cur.peek()? == b']' {
                    return Ok(None);
                }
                for _ in 0..index {
                    cur.skip(None, 1)?;
                    if !cur.next_or_close(b']')? {
                        return Ok(None);
                    }
                }
            }
            _ => return Ok(None),
        }
    }
    cur.ws();
    let start = cur.i;
    cur.skip(None, 0)?;
    Ok(Some(start..cur.i))
}
